//! Instances of a scale set: list, show, instance view, and the per-instance actions
//! (start, stop, deallocate, restart, reimage, update-instances, delete-instances).

use crate::{
    error::{ApiError, ErrorBody},
    state::AppState,
    views::{self, ActionResult, InstanceIdsRequest},
};
use axum::{
    extract::{Path, State},
    http::HeaderMap,
    Json,
};
use herd_model::health::HealthState;
use herd_model::{
    instance::{InstanceGoal, InstanceRecord, InstanceState, InstanceView, PendingAction},
    FieldError, InstanceId,
};
use herd_reconciler::executor::id_list;
use herd_state::actions::{InstanceAction, UnknownAction};
use herd_state::keys::{HealthKey, SetKey};
use herd_store::{Expect, Kind, Object, StoreExt, WriteOp};
use serde::Serialize;
use std::collections::BTreeMap;

/// One Azure-style status line of the instance view.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusEntry {
    pub code: String,
    pub level: String,
    pub display_status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub time: chrono::DateTime<chrono::Utc>,
}

/// `get-instance-view`: the instance plus its status lines.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceViewDetail {
    #[serde(flatten)]
    pub instance: InstanceView,
    pub statuses: Vec<StatusEntry>,
}

/// Lists a set's instances, including overprovisioned extras and instances being deleted
/// (their `overprovisioned`, `goal` and `deleteReason` fields say so).
#[utoipa::path(get, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/virtualMachines", tag = "instances",
    params(("group" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = Vec<InstanceView>), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Path((group, name)): Path<(String, String)>,
) -> Result<Json<Vec<InstanceView>>, ApiError> {
    let set = views::load_set(&state, &group, &name)?;
    let recs = views::load_instances(&state, &set.value)?;
    let in_place = in_place_extensions(&state, &set.value)?;
    Ok(Json(recs.iter().map(|o| with_health(&state, &set.value, &o.value, in_place)).collect()))
}

fn find(
    state: &AppState,
    group: &str,
    name: &str,
    id: &str,
) -> Result<(herd_model::scale_set::StoredScaleSet, InstanceRecord), ApiError> {
    let set = views::load_set(state, group, name)?;
    let n: u64 = id.parse().map_err(|_| {
        ApiError::Invalid(FieldError::new("instanceId", format!("'{id}' is not an instance id (a number)")))
    })?;
    let key = SetKey::of(&set.value).instance(InstanceId(n)).to_string();
    let rec = state
        .store
        .get(Kind::Instance, &key)?
        .ok_or_else(|| ApiError::NotFound(format!("instance {id} does not exist in scale set '{name}'")))?;
    let rec: InstanceRecord = serde_json::from_value(rec.value).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((set.value, rec))
}

/// The instance's view with its probe health filled in.
/// The view with the probe's health and, when not on the latest model, what `update-instances`
/// would do (`in_place`: extensions can run without a reimage).
fn with_health(
    state: &AppState,
    set: &herd_model::scale_set::StoredScaleSet,
    r: &InstanceRecord,
    in_place: bool,
) -> InstanceView {
    let mut v = r.view(set);
    v.health = state.health.get(&HealthKey::of(set, r.instance_id).to_string()).map(|h| h.health);
    if r.model_generation < set.model_generation {
        v.upgrade_action = Some(r.upgrade_action(set, in_place));
    }
    v
}

/// Shows one instance.
#[utoipa::path(get, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/virtualMachines/{id}", tag = "instances",
    params(("group" = String, Path), ("name" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = InstanceView), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Path((group, name, id)): Path<(String, String, String)>,
) -> Result<Json<InstanceView>, ApiError> {
    let (set, rec) = find(&state, &group, &name, &id)?;
    let in_place = in_place_extensions(&state, &set)?;
    Ok(Json(with_health(&state, &set, &rec, in_place)))
}

/// The instance view: provisioning and power status lines, as `az vmss get-instance-view` shows.
#[utoipa::path(get, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/virtualMachines/{id}/instanceView", tag = "instances",
    params(("group" = String, Path), ("name" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = InstanceViewDetail), (status = 404, body = ErrorBody)))]
pub async fn instance_view(
    State(state): State<AppState>,
    Path((group, name, id)): Path<(String, String, String)>,
) -> Result<Json<InstanceViewDetail>, ApiError> {
    let (set, rec) = find(&state, &group, &name, &id)?;
    let in_place = in_place_extensions(&state, &set)?;
    let view = with_health(&state, &set, &rec, in_place);
    let prov = view.provisioning_state.as_str();
    let failed = prov == "Failed";
    let mut statuses = vec![
        StatusEntry {
            code: format!("ProvisioningState/{}", prov.to_ascii_lowercase()),
            level: if failed { "Error".into() } else { "Info".into() },
            display_status: format!("Provisioning {}", prov.to_ascii_lowercase()),
            message: rec.last_error.clone(),
            time: rec.state_since,
        },
        StatusEntry {
            code: format!("PowerState/{}", rec.state.power_state()),
            level: "Info".into(),
            display_status: format!("VM {}", rec.state.power_state()),
            message: None,
            time: rec.state_since,
        },
    ];
    if let Some(h) = view.health {
        statuses.push(StatusEntry {
            code: format!("HealthState/{}", h.as_str().to_ascii_lowercase()),
            level: if h == HealthState::Unhealthy { "Warning".into() } else { "Info".into() },
            display_status: format!("The VM is {}", h.as_str().to_ascii_lowercase()),
            message: None,
            time: rec.state_since,
        });
    }
    // The VM agent line: with the qemu driver and an image that has the guest agent, a running
    // VM is one whose agent answered (that is what readiness waits for).
    if state.config.driver == "qemu" {
        let images: Vec<herd_model::image::Image> =
            herd_store::StoreExt::list_as(&*state.store, Kind::Image, "")?.into_iter().map(|o| o.value).collect();
        let agent = set
            .model
            .virtual_machine_profile
            .storage_profile
            .image_reference
            .urn()
            .ok()
            .and_then(|u| herd_model::image::resolve(&images, &u).map(|i| i.guest_agent));
        let (code, display, message) = match (agent, rec.state) {
            (Some(Some(true)), InstanceState::Running) => ("ready", "Ready", "the QEMU guest agent answers"),
            (Some(Some(true)), _) => ("notReady", "Not Ready", "the VM is not running"),
            (Some(None), _) => ("detecting", "Not Detected Yet", "the image did not say whether it runs the guest agent: each boot probes it until the boot deadline, and the first answer is recorded on the image; until then extension changes reimage"),
            _ => ("none", "No agent", "the image has no guest agent: readiness is the boot-complete line on the console, extension changes reimage"),
        };
        statuses.push(StatusEntry {
            code: format!("GuestAgent/{code}"),
            level: "Info".into(),
            display_status: display.into(),
            message: Some(message.into()),
            time: rec.state_since,
        });
    }
    if let Some(p) = rec.pending {
        statuses.push(StatusEntry {
            code: format!("PendingAction/{}", p.as_str().to_ascii_lowercase()),
            level: "Info".into(),
            display_status: format!("{p} pending"),
            message: None,
            time: rec.state_since,
        });
    }
    Ok(Json(InstanceViewDetail { instance: view, statuses }))
}

/// The instance's console (serial console of a VM; stdout and stderr of a process instance),
/// its last `tailBytes` bytes (default 64 KiB), as plain text.
#[utoipa::path(get, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/virtualMachines/{id}/bootLog", tag = "instances",
    params(("group" = String, Path), ("name" = String, Path), ("id" = String, Path),
        ("tailBytes" = Option<usize>, Query, description = "at most this many bytes from the end (default 65536, at most 16 MiB)")),
    responses((status = 200, body = String, content_type = "text/plain"), (status = 404, body = ErrorBody)))]
pub async fn boot_log(
    State(state): State<AppState>,
    Path((group, name, id)): Path<(String, String, String)>,
    axum::extract::Query(q): axum::extract::Query<BootLogQuery>,
) -> Result<String, ApiError> {
    let (set, rec) = find(&state, &group, &name, &id)?;
    let key = herd_model::InstanceKey { group: set.group.clone(), set: set.name.clone(), id: rec.instance_id };
    let max = q.tail_bytes.unwrap_or(64 << 10).min(16 << 20);
    match state.driver.console_log(&key, max).await {
        Ok(Some(text)) => Ok(text),
        Ok(None) => Err(ApiError::NotFound(format!("instance {id} has no console log yet"))),
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}

/// Query of [`boot_log`].
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootLogQuery {
    pub tail_bytes: Option<usize>,
}

pub(crate) const ACTIONS: &[&str] = InstanceAction::NAMES;

/// Runs an instance action on the given instances (`["*"]`, no `instanceIds` or no body: all of
/// them; an empty list is refused).
#[utoipa::path(post, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/{action}", tag = "instances",
    params(("group" = String, Path), ("name" = String, Path),
        ("action" = String, Path, description = "start, stop (powerOff), deallocate, restart, reimage, updateInstances, deleteInstances or simulateEviction (Spot only)"),
        ("If-Match" = Option<String>, Header, description = "act only at this etag of the scale set")),
    request_body = InstanceIdsRequest,
    responses((status = 202, body = ActionResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The set is being deleted"),
        (status = 412, body = ErrorBody, description = "If-Match names another etag")))]
pub async fn action(
    State(state): State<AppState>,
    Path((group, name, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Option<Json<InstanceIdsRequest>>,
) -> Result<(axum::http::StatusCode, Json<ActionResult>), ApiError> {
    let action: InstanceAction = action.parse().map_err(|e: UnknownAction| ApiError::NotFound(e.to_string()))?;
    let ids = body.and_then(|b| b.0.instance_ids);
    views::retry(&headers, || action_once(&state, &group, &name, &headers, action, ids.as_deref()))
}

/// One attempt at an instance action, on a fresh read of the set and its instances.
fn action_once(
    state: &AppState,
    group: &str,
    name: &str,
    headers: &HeaderMap,
    action: InstanceAction,
    ids: Option<&[String]>,
) -> Result<(axum::http::StatusCode, Json<ActionResult>), ApiError> {
    let set = views::load_set(state, group, name)?;
    views::check_if_match(headers, set.revision)?;
    if set.value.deleting {
        return Err(ApiError::Conflict(format!("scale set '{name}' is being deleted")));
    }
    let records = views::load_instances(state, &set.value)?;
    let live: BTreeMap<u64, &Object<InstanceRecord>> = records
        .iter()
        .filter(|o| o.value.goal != InstanceGoal::Deleted && !o.value.overprovisioned)
        .map(|o| (o.value.instance_id.0, o))
        .collect();
    let chosen: Vec<u64> = match ids {
        // As in az: leaving the ids out means every instance; an empty list is a mistake
        // (a script's empty variable), never "all".
        None => live.keys().copied().collect(),
        Some([]) => {
            return Err(ApiError::invalid(
                "instanceIds",
                "is empty; give instance ids (as list-instances shows them), [\"*\"] for all, or leave instanceIds out for all",
            ))
        }
        Some([star]) if star == "*" => live.keys().copied().collect(),
        Some(list) => {
            let mut out = Vec::new();
            let mut missing = Vec::new();
            for (i, s) in list.iter().enumerate() {
                let n: u64 = s.trim().parse().map_err(|_| {
                    ApiError::Invalid(FieldError::new(
                        format!("instanceIds[{i}]"),
                        format!("'{s}' is not an instance id; give numbers as list-instances shows them, or '*'"),
                    ))
                })?;
                if live.contains_key(&n) {
                    if !out.contains(&n) {
                        out.push(n);
                    }
                } else {
                    missing.push(InstanceId(n));
                }
            }
            if !missing.is_empty() {
                let existing: Vec<InstanceId> = live.keys().map(|k| InstanceId(*k)).collect();
                return Err(ApiError::NotFound(format!(
                    "instance(s) {} do not exist in scale set '{name}'; its instances are: {}",
                    id_list(&missing),
                    if existing.is_empty() { "none".into() } else { id_list(&existing) }
                )));
            }
            out
        }
    };

    let now = state.clock.now();
    let mut ops = Vec::new();
    let mut applied = Vec::new();
    let mut skipped = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let in_place = in_place_extensions(state, &set.value)?;
    if action == InstanceAction::SimulateEviction
        && !herd_model::spot::is_spot(set.value.model.virtual_machine_profile.priority)
    {
        return Err(ApiError::Invalid(FieldError::new(
            "virtualMachineProfile.priority",
            format!("simulate-eviction applies only to Spot (or Low) scale sets; '{name}' is Regular"),
        )));
    }
    for id in &chosen {
        let o = live[id];
        let mut r = o.value.clone();
        match apply_action(action, &mut r, &set.value, in_place, now) {
            Ok(Some(note)) => notes.push(format!("{id}: {note}")),
            Ok(None) => {}
            Err(why) => {
                skipped.push(format!("{id}: {why}"));
                continue;
            }
        }
        if r != o.value {
            ops.push(WriteOp::put(Kind::Instance, o.key.clone(), &r, Expect::Revision(o.revision))?);
        }
        applied.push(InstanceId(*id));
    }
    // The writes that close the request (the capacity, the activity line) go last.
    let n_instance_ops = ops.len();
    let mut lowered = None;

    let mut message =
        format!("{action} instance(s) {}", if applied.is_empty() { "none".into() } else { id_list(&applied) });
    if action == InstanceAction::DeleteInstances && !applied.is_empty() {
        // As in Azure, deleting instances lowers the capacity by as many.
        let mut next = set.value.clone();
        let before = next.model.sku.capacity;
        next.model.sku.capacity = (before - applied.len() as i64).max(0);
        lowered = Some(before - next.model.sku.capacity);
        if next.model.zone_balance {
            check_zone_balance(&next, &records, &applied)?;
        }
        message.push_str(&format!("; capacity {before} → {}", next.model.sku.capacity));
        ops.push(WriteOp::put(Kind::ScaleSet, set.key.clone(), &next, Expect::Revision(set.revision))?);
    }
    if !skipped.is_empty() {
        message.push_str(&format!("; skipped {}", skipped.join("; ")));
    }
    if let Some(n) = notes.first() {
        message.push_str(&format!("; {}", n.split_once(": ").map_or(n.as_str(), |(_, t)| t)));
    }
    let mut ev = views::user_event(state, group, name, &action.operation(), message);
    ev.time = now;
    ops.push(WriteOp::Activity(ev));
    if ops.len() <= herd_store::MAX_TXN_OPS && herd_store::check_txn(&ops).is_ok() {
        state.store.txn(ops)?;
    } else {
        write_in_chunks(state, action, &set.value, in_place, now, ops, n_instance_ops, lowered)?;
    }
    state.wake();
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(ActionResult {
            action: action.as_str().to_string(),
            instance_ids: applied.iter().map(|i| i.to_string()).collect(),
            skipped,
        }),
    ))
}

/// What `action` does to one instance record, in place: `Ok` with an optional note when it
/// applies (the record may be unchanged: it already had what the action asks), `Err` with the
/// reason when the instance is skipped. Applying it twice is applying it once, so a request
/// written in chunks can be re-applied (see [`write_in_chunks`]).
fn apply_action(
    action: InstanceAction,
    r: &mut InstanceRecord,
    set: &herd_model::scale_set::StoredScaleSet,
    in_place: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<&'static str>, &'static str> {
    let mut note = None;
    match action {
        InstanceAction::Start => r.goal = InstanceGoal::Running,
        InstanceAction::Stop | InstanceAction::PowerOff => r.goal = InstanceGoal::Stopped,
        InstanceAction::Deallocate => r.goal = InstanceGoal::Deallocated,
        InstanceAction::Restart => {
            if r.state != InstanceState::Running {
                return Err("not running");
            }
            r.pending = Some(PendingAction::Restart);
        }
        InstanceAction::Reimage => r.pending = Some(PendingAction::Reimage),
        InstanceAction::UpdateInstances => {
            if r.model_generation == set.model_generation && r.pending != Some(PendingAction::Reimage) {
                return Err("already on the latest model");
            }
            if r.pending != Some(PendingAction::Reimage) {
                let action = r.upgrade_action(set, in_place);
                if action == PendingAction::Reimage && !in_place && r.upgrade_action(set, true) != action {
                    note = Some("the image has no guest agent, so the extension change is applied by a reimage");
                }
                r.pending = Some(action);
            }
        }
        InstanceAction::DeleteInstances => {
            r.goal = InstanceGoal::Deleted;
            r.delete_reason = Some("deleted by user".into());
        }
        InstanceAction::SimulateEviction => {
            use herd_model::spot::{EvictionReason, ScheduledEvent, ScheduledEventType, PREEMPT_NOTICE_SECS};
            if r.state == InstanceState::Deallocated || r.eviction.is_some() {
                return Err("already evicted or deallocated");
            }
            if r.scheduled_events.iter().any(|e| e.event_type == ScheduledEventType::Preempt) {
                return Err("already has a Preempt event");
            }
            r.scheduled_events.push(ScheduledEvent::new(
                ScheduledEventType::Preempt,
                now,
                chrono::Duration::seconds(PREEMPT_NOTICE_SECS),
                "simulated eviction (simulate-eviction)",
                Some(EvictionReason::Simulated),
            ));
        }
    }
    r.next_attempt_at = None;
    Ok(note)
}

/// Writes an instance action that is over the store's transaction limit (more than 126
/// instances) in chunks: the instance records first, each chunk atomic, and last the writes
/// that close the request (the capacity a deletion lowers, the activity line), after every
/// instance is marked. A chunk that meets a concurrent write (the reconciler moving an
/// instance on) is re-read and re-applied, up to [`views::WRITE_RETRIES`] times. The rule, in
/// docs/architecture.md ("Transaction limits"): a request over the limit is not atomic, but each
/// of its writes is idempotent, so repeating a half-applied request completes it.
#[allow(clippy::too_many_arguments)]
fn write_in_chunks(
    state: &AppState,
    action: InstanceAction,
    set: &herd_model::scale_set::StoredScaleSet,
    in_place: bool,
    now: chrono::DateTime<chrono::Utc>,
    mut ops: Vec<WriteOp>,
    n_instance_ops: usize,
    lowered: Option<i64>,
) -> Result<(), ApiError> {
    let tail = ops.split_off(n_instance_ops);
    // Re-read a record and apply the action again to it.
    views::commit_chunks_reapplying(state, ops, |key| {
        let Some(o) = state.store.get_as::<InstanceRecord>(Kind::Instance, key)? else { return Ok(None) };
        let mut r = o.value.clone();
        if apply_action(action, &mut r, set, in_place, now).is_ok() && r != o.value {
            return Ok(Some(WriteOp::put(Kind::Instance, key, &r, Expect::Revision(o.revision))?));
        }
        Ok(None)
    })?;
    // The closing writes. A deletion's capacity is a compare-and-swap on the set: if the set
    // changed meanwhile, lower the capacity as fresh read by as many.
    let mut attempt = 0;
    let mut tail = tail;
    loop {
        match state.store.txn(tail.clone()) {
            Ok(_) => return Ok(()),
            Err(herd_store::StoreError::Conflict { .. }) if attempt < views::WRITE_RETRIES && lowered.is_some() => {
                attempt += 1;
                let cur = views::load_set(state, set.group.as_str(), set.name.as_str())?;
                if cur.value.deleting {
                    return Err(ApiError::Conflict(format!("scale set '{}' is being deleted", set.name)));
                }
                let mut next = cur.value.clone();
                next.model.sku.capacity = (next.model.sku.capacity - lowered.unwrap_or(0)).max(0);
                for op in &mut tail {
                    if let WriteOp::Put { kind: Kind::ScaleSet, .. } = op {
                        *op = WriteOp::put(Kind::ScaleSet, cur.key.clone(), &next, Expect::Revision(cur.revision))?;
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether extension changes can run in place on this set's instances: every driver runs
/// scripts, but the qemu driver needs the image's guest agent to do it.
fn in_place_extensions(state: &AppState, set: &herd_model::scale_set::StoredScaleSet) -> Result<bool, ApiError> {
    if state.config.driver != "qemu" {
        return Ok(true);
    }
    let images: Vec<herd_model::image::Image> =
        herd_store::StoreExt::list_as(&*state.store, Kind::Image, "")?.into_iter().map(|o| o.value).collect();
    let urn = set.model.virtual_machine_profile.storage_profile.image_reference.urn()?;
    Ok(herd_model::image::resolve(&images, &urn).is_some_and(herd_model::image::Image::has_guest_agent))
}

/// With `zoneBalance=true`, a delete that leaves zones more than one instance apart is refused.
fn check_zone_balance(
    set: &herd_model::scale_set::StoredScaleSet,
    records: &[Object<InstanceRecord>],
    removing: &[InstanceId],
) -> Result<(), ApiError> {
    let mut counts: BTreeMap<&str, i64> = set.model.zones.iter().map(|z| (z.as_str(), 0)).collect();
    for o in records {
        let r = &o.value;
        if r.is_counted() && !removing.contains(&r.instance_id) {
            if let Some(z) = r.zone.as_deref() {
                *counts.entry(z).or_default() += 1;
            }
        }
    }
    let (min, max) = (counts.values().min().copied().unwrap_or(0), counts.values().max().copied().unwrap_or(0));
    if max - min > 1 {
        let shape: Vec<String> = counts.iter().map(|(z, c)| format!("zone {z}: {c}")).collect();
        return Err(ApiError::Invalid(FieldError::new(
            "instanceIds",
            format!("zoneBalance=true: this delete would leave zones unbalanced ({})", shape.join(", ")),
        )));
    }
    Ok(())
}
