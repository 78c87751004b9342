//! Hosts and their capacity: what `herd host show` reads, and the up-front refusal of a Regular
//! scale-out that cannot fit even after every Spot instance is evicted.
//!
//! Why in the API and not only in the reconciler: a user who asks for more than the hosts hold
//! should hear it at once, with what is missing, instead of watching a set stay short. The
//! reconciler still arbitrates every pass (hosts can fill up between the check and the pass),
//! and reports any shortfall in the set's status.

use crate::{
    error::{ApiError, ErrorBody},
    state::AppState,
};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use herd_model::host::{HostRecord, HostState, Scheduling};
use herd_state::placement::{self, HostRoom};
use serde::Serialize;
use std::collections::BTreeMap;

/// One host: its capacity and what instances reserve on it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostView {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Its fault-domain label (none: the host is a fault domain of its own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault_domain: Option<String>,
    /// vCPUs instances may reserve (the host's vCPUs times its overcommit).
    pub vcpus: u32,
    pub memory_mib: u64,
    pub overcommit: f64,
    pub regular_vcpus: u32,
    pub regular_memory_mib: u64,
    pub spot_vcpus: u32,
    pub spot_memory_mib: u64,
    pub free_vcpus: u32,
    pub free_memory_mib: u64,
    pub regular_instances: usize,
    pub spot_instances: usize,
}

/// `GET /v1/hosts`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostsView {
    /// No hosts declared (sim and process drivers by default): capacity is not limited.
    pub unlimited: bool,
    /// The hosts `[[hosts]]` declares (or this machine, for the qemu driver).
    pub hosts: Vec<HostView>,
    /// Hosts joined by `herd agent`.
    pub joined: Vec<JoinedHostView>,
}

/// A host joined by `herd agent`, with its state now.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JoinedHostView {
    pub name: String,
    pub zone: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault_domain: Option<String>,
    pub state: HostState,
    pub scheduling: Scheduling,
    /// What the agent reports.
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_free_mib: u64,
    /// What instances placed on it reserve.
    pub used_vcpus: u32,
    pub used_memory_mib: u64,
    pub instances: usize,
    pub agent_version: String,
    /// The last heartbeat this server received (none since it started: NotReady).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<chrono::DateTime<chrono::Utc>>,
    /// The longest time between two heartbeats since the host's agent connected (none: not
    /// linked now). Image pulls run on connections of their own and must not stretch it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_heartbeat_gap_ms: Option<u64>,
    /// Image pulls this server served to the host since it started.
    pub image_pulls: u64,
    /// Copies of instances moved away while it was silent, still to be destroyed on it (the
    /// host is Returning until none is left).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stale_copies: usize,
    /// Instances moving off it (drain, redeploy): placed on their new host already, their
    /// disks still being copied from this one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub moving_away: usize,
    pub joined_at: chrono::DateTime<chrono::Utc>,
    /// SHA-256 of the one agent certificate accepted for it.
    pub certificate_fingerprint: String,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Per host: the copies of moved instances still on it (see `herd_model::instance::HostFailure`),
/// and the instances moving off it (a redeploy under way: placed on their new host already).
fn stale_copies(s: &dyn herd_state::Store) -> Result<BTreeMap<String, (usize, usize)>, herd_state::StateError> {
    let mut by_host: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for o in herd_state::Records::instances(s)? {
        for c in &o.value.host_failure.stale_copies {
            by_host.entry(c.host.clone()).or_default().0 += 1;
        }
        if let Some(m) = &o.value.moving {
            by_host.entry(m.from.clone()).or_default().1 += 1;
        }
    }
    Ok(by_host)
}

/// The joined hosts with their state and what their instances reserve.
fn joined_views(
    state: &AppState,
    records: Vec<HostRecord>,
    usage: Vec<placement::HostUsage>,
    stale: &BTreeMap<String, (usize, usize)>,
) -> Vec<JoinedHostView> {
    let now = state.clock.now();
    records
        .into_iter()
        .map(|h| {
            let last = state.heartbeats.last_heartbeat(&h.name);
            let link = state.heartbeats.link_stats(&h.name);
            let used = usage.iter().find(|u| u.name == h.name);
            let (stale_copies, moving_away) = stale.get(&h.name).copied().unwrap_or((0, 0));
            // With the agent link: the full state, host failure included; without: heartbeats only.
            let host_state = match (&state.joined, state.heartbeats.silence(&h.name)) {
                (Some(j), Some(silence)) => {
                    HostState::with_failure(h.scheduling, Some(&silence), now, &j.timing(), stale_copies > 0)
                }
                _ => HostState::of(h.scheduling, last, now, state.host_grace),
            };
            JoinedHostView {
                state: host_state,
                stale_copies,
                moving_away,
                scheduling: h.scheduling,
                vcpus: h.capacity.vcpus,
                memory_mib: h.capacity.memory_mib,
                disk_free_mib: h.capacity.disk_free_mib,
                used_vcpus: used.map_or(0, |u| u.regular.vcpus + u.spot.vcpus),
                used_memory_mib: used.map_or(0, |u| u.regular.memory_mib + u.spot.memory_mib),
                instances: used.map_or(0, |u| (u.regular_instances + u.spot_instances) as usize),
                agent_version: h.agent_version,
                last_heartbeat: last,
                max_heartbeat_gap_ms: link.map(|l| l.max_heartbeat_gap_ms),
                image_pulls: link.map_or(0, |l| l.image_pulls),
                joined_at: h.joined_at,
                certificate_fingerprint: h.certificate_fingerprint,
                name: h.name,
                zone: h.zone,
                fault_domain: h.fault_domain,
            }
        })
        .collect()
}

/// Joined hosts as the arbiter sees them (the same capacity placement uses), to count what
/// their instances reserve.
fn specs(records: &[HostRecord]) -> Vec<herd_model::spot::HostSpec> {
    records.iter().map(|h| h.placement_spec(h.scheduling == Scheduling::Schedulable)).collect()
}

/// Lists the hosts with their capacity and what Regular and Spot instances reserve.
#[utoipa::path(get, path = "/v1/hosts", tag = "hosts",
    responses((status = 200, body = HostsView), (status = 401, body = ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<HostsView>, ApiError> {
    let config = state.config.clone();
    let (usage, joined, joined_usage, stale) = state
        .run(move |s| {
            let joined = herd_state::hosts::list(s)?;
            let joined_usage = placement::host_usage(s, &specs(&joined), &config.skus)?;
            let stale = if joined.is_empty() { BTreeMap::new() } else { stale_copies(s)? };
            Ok((placement::host_usage(s, &config.hosts, &config.skus)?, joined, joined_usage, stale))
        })
        .await?;
    let hosts = usage
        .into_iter()
        .map(|u| HostView {
            name: u.name,
            zone: u.zone,
            fault_domain: u.fault_domain,
            vcpus: u.capacity.vcpus,
            memory_mib: u.capacity.memory_mib,
            overcommit: u.overcommit,
            regular_vcpus: u.regular.vcpus,
            regular_memory_mib: u.regular.memory_mib,
            spot_vcpus: u.spot.vcpus,
            spot_memory_mib: u.spot.memory_mib,
            free_vcpus: u.free.vcpus,
            free_memory_mib: u.free.memory_mib,
            regular_instances: u.regular_instances as usize,
            spot_instances: u.spot_instances as usize,
        })
        .collect();
    let joined = joined_views(&state, joined, joined_usage, &stale);
    Ok(Json(HostsView { unlimited: state.config.hosts.is_empty(), hosts, joined }))
}

/// One joined host.
#[utoipa::path(get, path = "/v1/hosts/{name}", tag = "hosts", params(("name" = String, Path)),
    responses((status = 200, body = JoinedHostView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn show(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<JoinedHostView>, ApiError> {
    herd_model::ids::HostName::new(name.clone())?;
    Ok(Json(one(&state, name).await?))
}

async fn one(state: &AppState, name: String) -> Result<JoinedHostView, ApiError> {
    let skus = state.config.skus.clone();
    let (record, usage, stale) = state
        .run(move |s| {
            let Some(h) = herd_state::hosts::get(s, &name)? else { return Ok((Err(name), vec![], BTreeMap::new())) };
            let usage = placement::host_usage(s, &specs(std::slice::from_ref(&h)), &skus)?;
            Ok((Ok(h), usage, stale_copies(s)?))
        })
        .await?;
    let record = record.map_err(|name| ApiError::NotFound(format!("host '{name}' not found")))?;
    Ok(joined_views(state, vec![record], usage, &stale).remove(0))
}

/// What `POST /v1/hosts/{name}/{action}` does.
pub const ACTIONS: &[&str] = &["cordon", "uncordon", "drain"];

/// `POST /v1/hosts/{name}/cordon|uncordon|drain`. `drain` cordons the host and moves every
/// instance on it to another host of its zone with its disks (a redeploy each: a `Redeploy`
/// scheduled event, a load-balancer drain, stop, copy, start; Spot instances are evicted
/// instead). It is refused, with nothing changed, when an instance has no room elsewhere in
/// its zone, or when the host is the last Ready one of a zone a `zoneBalance` set uses.
#[utoipa::path(post, path = "/v1/hosts/{name}/{action}", tag = "hosts",
    params(("name" = String, Path), ("action" = String, Path, description = "cordon, uncordon or drain")),
    responses((status = 200, body = JoinedHostView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn action(
    State(state): State<AppState>,
    Path((name, action)): Path<(String, String)>,
) -> Result<Json<JoinedHostView>, ApiError> {
    herd_model::ids::HostName::new(name.clone())?;
    if action == "drain" {
        let who = name.clone();
        state.blocking(move |st| drain(st, &who)).await?;
        state.wake();
        return Ok(Json(one(&state, name).await?));
    }
    let scheduling = match action.as_str() {
        "cordon" => Scheduling::Cordoned,
        "uncordon" => Scheduling::Schedulable,
        other => {
            return Err(ApiError::invalid(
                "action",
                format!("'{other}' is not a host action; allowed values: {}", ACTIONS.join(", ")),
            ))
        }
    };
    let now = state.clock.now();
    let who = name.clone();
    state.blocking(move |s| Ok(herd_state::hosts::set_scheduling(&**s.store.store(), &who, scheduling, now)?)).await?;
    Ok(Json(one(&state, name).await?))
}

/// Drains host `name` (see [`action`]): the checks first, then the cordon, then a redeploy of
/// each set's instances there.
fn drain(st: &AppState, name: &str) -> Result<(), ApiError> {
    use herd_model::instance::InstanceGoal;
    use herd_state::actions::InstanceAction;
    use herd_state::instance_actions::{apply_instance_action, ActionRequest};
    use herd_state::Records;
    let store = st.store.store();
    let host = herd_state::hosts::get(&**store, name)?
        .ok_or_else(|| ApiError::NotFound(format!("host '{name}' not found")))?;
    let now = st.clock.now();
    let sets = store.scale_sets()?;
    let mut moves = Vec::new();
    let mut on_host: Vec<(herd_state::Versioned<herd_model::scale_set::StoredScaleSet>, Vec<String>)> = Vec::new();
    for set in &sets {
        let records: Vec<_> = store
            .instances_of(&herd_state::keys::SetKey::of(&set.value))?
            .into_iter()
            .map(|o| o.value)
            .filter(|r| r.host.as_deref() == Some(name) && r.goal != InstanceGoal::Deleted && !r.overprovisioned)
            .collect();
        if records.is_empty() {
            continue;
        }
        on_host.push((set.clone(), records.iter().map(|r| r.instance_id.to_string()).collect()));
        if !herd_model::spot::is_spot(set.value.model.virtual_machine_profile.priority) {
            let movable: Vec<_> = records.into_iter().filter(|r| r.at_rest_for_move()).collect();
            if !movable.is_empty() {
                moves.push((set.value.clone(), movable));
            }
        }
    }
    // The last Ready host of a zone a zoneBalance set uses stays.
    if let Some(joined) = st.joined.as_ref() {
        let records = herd_state::hosts::list(&**store)?;
        let ready: Vec<String> = herd_model::host::placement_hosts(&records, &*joined.heartbeats, now, joined.grace)
            .into_iter()
            .filter(|h| h.schedulable && h.name != name && h.zone.as_deref() == Some(host.zone.as_str()))
            .map(|h| h.name)
            .collect();
        let balanced: Vec<String> = sets
            .iter()
            .filter(|s| s.value.model.zone_balance && s.value.model.zones.contains(&host.zone))
            .map(|s| s.value.name.to_string())
            .collect();
        if ready.is_empty() && !balanced.is_empty() {
            return Err(ApiError::invalid(
                "name",
                format!(
                    "host '{name}' is the last Ready host of zone {zone}, and scale set(s) {} keep zone balance there (zoneBalance: true): draining it would leave the zone without a host; join or uncordon another host in zone {zone} first",
                    balanced.join(", "),
                    zone = host.zone
                ),
            ));
        }
    }
    if !moves.is_empty() {
        room(st).check_moves(&**store, &moves, Some(name))?;
    }
    herd_state::hosts::set_scheduling(&**store, name, Scheduling::Cordoned, now)?;
    for (set, ids) in on_host {
        let req = ActionRequest {
            action: InstanceAction::Redeploy,
            ids: Some(ids),
            qemu: st.config.runs_vms(),
            now,
            reason: Some(format!("drain of host {name}")),
        };
        apply_instance_action(&**store, &set, &req)?;
    }
    Ok(())
}

/// `DELETE /v1/hosts/{name}?force=true`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// Delete even while instances are placed on it.
    #[serde(default)]
    pub force: bool,
}

/// Deletes a joined host: its agent is refused from then on (and disconnected at its next
/// heartbeat). Refused while instances are placed on it, unless `force`.
#[utoipa::path(delete, path = "/v1/hosts/{name}", tag = "hosts", params(("name" = String, Path), DeleteQuery),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    herd_model::ids::HostName::new(name.clone())?;
    let now = state.clock.now();
    state.blocking(move |s| Ok(herd_state::hosts::delete(&**s.store.store(), &name, q.force, now)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The hosts' room for a scale-out under this server's hosts and SKUs (see
/// [`placement::HostRoom`]).
pub(crate) fn room(state: &AppState) -> HostRoom<'_> {
    let joined = state.joined.as_ref().map(|j| (j, state.clock.now()));
    HostRoom { hosts: &state.config.hosts, skus: &state.config.skus, joined }
}
