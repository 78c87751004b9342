//! Instances of a scale set: list, show, instance view, and the per-instance actions
//! (start, stop, deallocate, restart, reimage, update-instances, delete-instances).

use crate::{
    error::{ApiError, ErrorBody},
    named::Named,
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
    instance::{InstanceRecord, InstanceState, InstanceView},
    FieldError, InstanceId,
};
use herd_state::actions::{InstanceAction, UnknownAction};
use herd_state::instance_actions::{self, in_place_extensions, ActionRequest};
use herd_state::keys::{HealthKey, SetKey};
use herd_state::{images, Records};
use serde::Serialize;

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
pub async fn list(n: Named<(String, String)>) -> Result<Json<Vec<InstanceView>>, ApiError> {
    n.with_set(|st, set, _| {
        let recs = st.store.instances_of(&SetKey::of(&set.value))?;
        let in_place = in_place(st, &set.value)?;
        Ok(Json(recs.iter().map(|o| with_health(st, &set.value, &o.value, in_place)).collect()))
    })
    .await
}

/// The instance id `id` of a URL (a 400 naming `instanceId` when it is no number).
pub(crate) fn instance_id(id: &str) -> Result<InstanceId, ApiError> {
    let n: u64 = id.parse().map_err(|_| {
        ApiError::Invalid(FieldError::new("instanceId", format!("'{id}' is not an instance id (a number)")))
    })?;
    Ok(InstanceId(n))
}

/// Instance `id` of `set`, as the URL names it.
fn find(state: &AppState, set: &herd_model::scale_set::StoredScaleSet, id: &str) -> Result<InstanceRecord, ApiError> {
    Ok(instance_actions::instance(&*state.store, set, instance_id(id)?, id)?)
}

/// Whether extension changes run in place on `set`'s instances.
fn in_place(state: &AppState, set: &herd_model::scale_set::StoredScaleSet) -> Result<bool, ApiError> {
    Ok(in_place_extensions(&*state.store, set, state.config.runs_vms())?)
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
    // Health recorded for an earlier boot says nothing about this one.
    v.health = state.health.get(&HealthKey::of(set, r.instance_id).to_string()).map(|h| h.of_boot(r.state_since));
    // Its host is silent past host_grace (as the reconciler marked it, or as the link knows
    // now, before the next pass marks it): what the probes last said is not known to hold.
    let silent_now = match (&state.joined, r.host.as_deref()) {
        (Some(j), Some(h)) => {
            state.heartbeats.silence(h).is_some_and(|s| s.heard && s.unreachable(state.clock.now(), j.grace))
        }
        _ => false,
    };
    if r.host_failure.unreachable_since.is_some() || silent_now {
        v.health = Some(HealthState::Unknown);
    }
    if r.model_generation < set.model_generation {
        v.upgrade_action = Some(r.upgrade_action(set, in_place));
    }
    v
}

/// Shows one instance.
#[utoipa::path(get, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/virtualMachines/{id}", tag = "instances",
    params(("group" = String, Path), ("name" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = InstanceView), (status = 404, body = ErrorBody)))]
pub async fn show(n: Named<(String, String, String)>) -> Result<Json<InstanceView>, ApiError> {
    n.with_set(|st, set, (_, _, id)| {
        let rec = find(st, &set.value, &id)?;
        let in_place = in_place(st, &set.value)?;
        Ok(Json(with_health(st, &set.value, &rec, in_place)))
    })
    .await
}

/// The instance view: provisioning and power status lines, as `az vmss get-instance-view` shows.
#[utoipa::path(get, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/virtualMachines/{id}/instanceView", tag = "instances",
    params(("group" = String, Path), ("name" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = InstanceViewDetail), (status = 404, body = ErrorBody)))]
pub async fn instance_view(n: Named<(String, String, String)>) -> Result<Json<InstanceViewDetail>, ApiError> {
    let (rec, view, guest_agent) = n
        .with_set(|st, set, (_, _, id)| {
            let rec = find(st, &set.value, &id)?;
            let set = set.value;
            let in_place = in_place(st, &set)?;
            let view = with_health(st, &set, &rec, in_place);
            // The VM agent line needs the image's guest agent (VMs of the qemu driver only: not
            // a directory image's process instances, nor an image gone from the gallery).
            let guest_agent =
                if st.config.runs_vms() { images::guest_agent_of(&*st.store, &set.model)?.map(Some) } else { None };
            Ok((rec, view, guest_agent))
        })
        .await?;
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
    // Host failure (issue 21): its host silent, or its re-creation elsewhere.
    let hf = &rec.host_failure;
    if let Some(since) = hf.unreachable_since {
        statuses.push(StatusEntry {
            code: "HostState/notReady".into(),
            level: "Warning".into(),
            display_status: "Host not ready".into(),
            message: Some(format!(
                "host {} has not been heard from: health Unknown, out of load-balancer rotation; the instance is re-created on another host of its zone after replace_after",
                rec.host.as_deref().unwrap_or("")
            )),
            time: since,
        });
    }
    if let Some(r) = &hf.recreated {
        statuses.push(StatusEntry {
            code: "Recreated/hostFailure".into(),
            level: "Info".into(),
            display_status: "Re-created after a host failure".into(),
            message: Some(format!(
                "re-created on {} because host {} failed: a reimage (data disks started empty), same instance id and private IP, incarnation {}",
                rec.host.as_deref().unwrap_or("this server"),
                r.from_host,
                r.incarnation
            )),
            time: r.at,
        });
    }
    if let Some(m) = &rec.moving {
        statuses.push(StatusEntry {
            code: "Redeploy/inProgress".into(),
            level: "Info".into(),
            display_status: "Moving to another host".into(),
            message: Some(format!(
                "moving from host {} to host {} with its disks ({}): stopped, copied, started there",
                m.from,
                rec.host.as_deref().unwrap_or("?"),
                m.reason
            )),
            time: m.since,
        });
    }
    // The VM agent line: with the qemu driver and an image that has the guest agent, a running
    // VM is one whose agent answered (that is what readiness waits for).
    if let Some(agent) = guest_agent {
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
    n: Named<(String, String, String)>,
    axum::extract::Query(q): axum::extract::Query<BootLogQuery>,
) -> Result<String, ApiError> {
    let (state, id) = (n.state.clone(), n.path.2.clone());
    let (rec, set) = n.with_set(|st, set, (_, _, id)| Ok((find(st, &set.value, &id)?, set.value))).await?;
    let key = herd_model::InstanceKey { group: set.group.clone(), set: set.name.clone(), id: rec.instance_id };
    let max = q.tail_bytes.unwrap_or(64 << 10).min(16 << 20);
    match state.consoles.console_log(&key, max).await {
        Ok(Some(text)) => Ok(text),
        Ok(None) => Err(ApiError::NotFound(format!("instance {id} has no console log yet"))),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// The network security groups that apply at the instance's NIC (the subnet's, then the NIC
/// configuration's), each with its rules in evaluation order and its service tags expanded:
/// what the host enforces. Azure's `list-effective-nsg`.
#[utoipa::path(get, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/virtualMachines/{id}/effectiveNetworkSecurityGroups", tag = "networks",
    params(("group" = String, Path), ("name" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = herd_model::nsg::EffectiveNetworkSecurityGroups), (status = 404, body = ErrorBody)))]
pub async fn effective_nsgs(
    n: Named<(String, String, String)>,
) -> Result<Json<herd_model::nsg::EffectiveNetworkSecurityGroups>, ApiError> {
    n.with_set(|st, set, (_, _, id)| {
        let rec = find(st, &set.value, &id)?;
        let lookup = herd_state::security::Lookup::load(&*st.store)?;
        Ok(Json(herd_state::security::effective_of(&lookup, &set.value, &rec)))
    })
    .await
}

/// One instance's public IP, as `az vmss list-instance-public-ips` lists it (Azure's
/// `PublicIPAddress` under the instance's NIC, plus herd's `instanceId`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstancePublicIp {
    /// `.../virtualMachines/{id}/networkInterfaces/{nic}/ipConfigurations/{ipc}/publicIPAddresses/{name}`.
    pub id: String,
    /// The model's `publicIPAddressConfiguration.name`.
    pub name: String,
    pub resource_group: String,
    pub instance_id: String,
    pub ip_address: String,
    /// The instance's IP configuration the address is NATed to.
    pub ip_configuration: herd_model::network::SubResource,
    /// The instance's private IP in that IP configuration.
    pub private_ip_address: Option<String>,
    pub idle_timeout_in_minutes: i64,
    /// Always `Static`: the address is the instance's for its lifetime.
    #[serde(rename = "publicIPAllocationMethod")]
    pub public_ip_allocation_method: String,
    #[serde(rename = "publicIPAddressVersion")]
    pub public_ip_address_version: String,
    pub provisioning_state: String,
}

/// Lists the public IPs of a set's instances (those that have one), lowest instance id first.
#[utoipa::path(get, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/publicipaddresses", tag = "instances",
    params(("group" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = Vec<InstancePublicIp>), (status = 404, body = ErrorBody)))]
pub async fn public_ips(n: Named<(String, String)>) -> Result<Json<Vec<InstancePublicIp>>, ApiError> {
    n.with_set(|st, set, _| {
        let set = set.value;
        let recs = st.store.instances_of(&SetKey::of(&set))?;
        let profile = set.model.virtual_machine_profile.network_profile.as_ref();
        let nic = profile.and_then(|p| p.network_interface_configurations.first());
        let (nic_name, ipc) = (nic.map_or("nic", |n| n.name.as_str()), profile.and_then(|p| p.primary()));
        let ipc_name = ipc.map_or("ipconfig", |i| i.name.as_str());
        let config = ipc.and_then(|i| i.public_ip_address_configuration.as_ref());
        let base = herd_model::scale_set::StoredScaleSet::resource_id(set.group.as_str(), set.name.as_str());
        let mut out: Vec<InstancePublicIp> = recs
            .iter()
            .filter_map(|o| {
                let r = &o.value;
                let ip = r.public_ip.clone()?;
                let ipc_id = format!(
                    "{base}/virtualMachines/{}/networkInterfaces/{nic_name}/ipConfigurations/{ipc_name}",
                    r.instance_id
                );
                let name = config.map_or_else(|| "publicIp".to_string(), |c| c.name.clone());
                Some(InstancePublicIp {
                    id: format!("{ipc_id}/publicIPAddresses/{name}"),
                    name,
                    resource_group: set.group.to_string(),
                    instance_id: r.instance_id.to_string(),
                    ip_address: ip,
                    ip_configuration: herd_model::network::SubResource { id: ipc_id },
                    private_ip_address: r.private_ip.clone(),
                    idle_timeout_in_minutes: config.map_or(4, |c| c.idle_timeout_in_minutes),
                    public_ip_allocation_method: "Static".into(),
                    public_ip_address_version: "IPv4".into(),
                    provisioning_state: "Succeeded".into(),
                })
            })
            .collect();
        out.sort_by_key(|p| p.instance_id.parse::<u64>().unwrap_or(u64::MAX));
        Ok(Json(out))
    })
    .await
}

/// Query of [`boot_log`].
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootLogQuery {
    pub tail_bytes: Option<usize>,
}

pub(crate) const ACTIONS: &[&str] = InstanceAction::NAMES;

/// A redeploy is refused, with nothing changed, unless every Regular instance it moves has
/// room on another Ready host of its zone (Spot instances are evicted instead: no room needed).
fn check_redeploy(
    st: &AppState,
    set: &herd_model::scale_set::StoredScaleSet,
    ids: Option<&[String]>,
) -> Result<(), ApiError> {
    if herd_model::spot::is_spot(set.model.virtual_machine_profile.priority) {
        return Ok(());
    }
    let records = instance_actions::chosen_records(&*st.store, set, ids)?;
    let moving: Vec<_> = records
        .into_iter()
        .filter(|r| r.pending != Some(herd_model::instance::PendingAction::Redeploy) && r.at_rest_for_move())
        .collect();
    if moving.is_empty() {
        return Ok(());
    }
    crate::hosts::room(st).check_moves(&**st.store.store(), &[(set.clone(), moving)], None)?;
    Ok(())
}

/// Runs an instance action on the given instances (`["*"]`, no `instanceIds` or no body: all of
/// them; an empty list is refused).
#[utoipa::path(post, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/{action}", tag = "instances",
    params(("group" = String, Path), ("name" = String, Path),
        ("action" = String, Path, description = "start, stop (powerOff), deallocate, restart, reimage, updateInstances, deleteInstances, simulateEviction (Spot only) or redeploy (move to another host of the zone with the disks; Spot instances are evicted)"),
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
    let req = ActionRequest {
        action,
        ids: body.and_then(|b| b.0.instance_ids),
        qemu: state.config.runs_vms(),
        now: state.clock.now(),
        reason: None,
    };
    let outcome = state
        .blocking(move |st| {
            views::retry(&headers, || {
                let set = views::load_set(st, &group, &name)?;
                views::check_if_match(&headers, set.revision)?;
                if action == InstanceAction::Redeploy {
                    check_redeploy(st, &set.value, req.ids.as_deref())?;
                }
                Ok(instance_actions::apply_instance_action(&*st.store, &set, &req)?)
            })
        })
        .await?;
    state.wake();
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(ActionResult {
            action: action.as_str().to_string(),
            instance_ids: outcome.applied.iter().map(|i| i.to_string()).collect(),
            skipped: outcome.skipped,
        }),
    ))
}
