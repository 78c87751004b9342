//! Request and response bodies, and the helpers that build them from stored objects.

use crate::{error::ApiError, state::AppState};
use axum::http::HeaderMap;
use herd_model::{
    activity::ActivityEvent,
    group::ResourceGroup,
    patch::PatchOp,
    scale_set::{ScaleSetModel, StoredScaleSet},
    GroupName, ScaleSetName,
};
use herd_state::lookup;
use herd_state::scale_sets::{Observed, SetProvisioningState};
use herd_state::summary::SetSummary;
use herd_state::Versioned as Object;
use serde::{Deserialize, Serialize};

/// A scale set as the API returns it: the model plus what the server owns.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleSetView {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub resource_type: String,
    pub resource_group: String,
    /// The revision, for `If-Match`.
    pub etag: String,
    /// Bumped only by changes to `virtualMachineProfile` or the SKU's size.
    pub model_generation: u64,
    /// `Creating`, `Updating`, `Succeeded`, `Failed` (creation suspended) or `Deleting`.
    #[schema(value_type = String)]
    pub provisioning_state: SetProvisioningState,
    pub time_created: chrono::DateTime<chrono::Utc>,
    #[serde(flatten)]
    pub model: ScaleSetModel,
    pub instance_summary: SetSummary,
    /// The latest rolling upgrade's state (`RollingForward`, `Paused`, `Completed`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolling_upgrade_state: Option<String>,
    /// A `rolling-upgrade` request waits for the reconciler's next pass.
    pub upgrade_request_pending: bool,
    /// Azure's `orchestrationServices`: the automatic-repairs service and its state.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub orchestration_services: Vec<OrchestrationService>,
}

/// One orchestration service of a set (`AutomaticRepairs`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrchestrationService {
    pub service_name: String,
    /// `Running`, `Suspended` or `NotRunning`.
    pub service_state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Repairs since an instance last became healthy on a fresh boot.
    pub recent_repairs: usize,
}

/// `POST .../update`: az-style generic edits.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateRequest {
    pub operations: Vec<PatchOp>,
}

/// `POST .../scale`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleRequest {
    pub capacity: i64,
}

/// Body of the instance actions: the ids, `["*"]` or absent for all.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceIdsRequest {
    /// Instance ids, or `["*"]`; leave the field out for every instance. An empty list is refused.
    #[serde(default)]
    #[schema(min_items = 1)]
    pub instance_ids: Option<Vec<String>>,
}

/// What an instance action changed.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionResult {
    pub action: String,
    /// The instances the action applies to.
    pub instance_ids: Vec<String>,
    /// Instances left alone, with why (e.g. already on the latest model).
    pub skipped: Vec<String>,
}

/// Decodes a request body, naming the path of the first bad field.
pub fn from_body<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize::<_, T>(v).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        ApiError::invalid(field, e.into_inner().to_string())
    })
}

/// `PUT /v1/resourceGroups/{g}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupRequest {
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
}

/// `PUT /v1/images/{urn}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageImportRequest {
    /// A directory on the server's host holding an executable `init` (process driver images),
    /// below a directory of `[images] import_roots`. Without roots, upload it instead
    /// (`PUT /v1/images/{urn}/files/directory` with a tar archive, then `uploaded: true`).
    #[serde(default)]
    pub directory: Option<String>,
    /// Import the files uploaded ahead with `PUT /v1/images/{urn}/files/{disk|kernel|initrd|directory}`
    /// (what `herd image import` does) instead of naming server-side paths.
    #[serde(default)]
    pub uploaded: Option<bool>,
    /// A bootable disk image (qcow2 or raw) on the server's host (qemu driver), below a
    /// directory of `[images] import_roots`.
    #[serde(default)]
    pub disk: Option<String>,
    /// A kernel for direct boot (qemu driver), with an optional initrd and command line.
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub initrd: Option<String>,
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Whether the image runs the QEMU guest agent. Absent: detected, from an initrd holding
    /// `qemu-ga` for kernel images, else when the image's VMs boot (the first answer of
    /// `guest-ping` records it; no answer records nothing).
    #[serde(default)]
    pub guest_agent: Option<bool>,
}

/// What the server runs with.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerInfo {
    pub version: String,
    pub driver: String,
    pub zones: Vec<String>,
    pub max_capacity: u64,
    pub skus: Vec<SkuInfo>,
}

/// One VM size.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SkuInfo {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
}

pub fn etag(revision: u64) -> String {
    format!("\"{revision}\"")
}

/// Honours `If-Match` (a revision in quotes, or `*`).
/// How many times a write without `If-Match` is re-applied after losing to a concurrent write.
pub const WRITE_RETRIES: usize = 5;

/// Runs a read-modify-write `f`. When its compare-and-swap loses to a concurrent change and the
/// request named no etag, `f` runs again on a fresh read (a patch re-applies its patch), up to
/// [`WRITE_RETRIES`] more times, then the answer is 409. A request with `If-Match: <etag>` is
/// never re-applied: the change it raced makes its etag stale, so it gets 412.
pub fn retry<T>(headers: &HeaderMap, mut f: impl FnMut() -> Result<T, ApiError>) -> Result<T, ApiError> {
    let pinned =
        headers.get(axum::http::header::IF_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim() != "*");
    let mut attempt = 0;
    loop {
        match f() {
            Err(ApiError::Changed(m)) if pinned => {
                return Err(ApiError::PreconditionFailed(format!(
                    "the resource changed after If-Match was checked ({m}); read it again"
                )))
            }
            Err(ApiError::Changed(_)) if attempt < WRITE_RETRIES => attempt += 1,
            Err(ApiError::Changed(m)) => {
                return Err(ApiError::Conflict(format!(
                    "{m} (re-applied {WRITE_RETRIES} times, each time a concurrent write came first)"
                )))
            }
            other => return other,
        }
    }
}

pub fn check_if_match(headers: &HeaderMap, revision: u64) -> Result<(), ApiError> {
    let Some(v) = headers.get(axum::http::header::IF_MATCH).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let v = v.trim();
    if v == "*" {
        return Ok(());
    }
    let wanted = v.trim_start_matches("W/").trim_matches('"');
    if wanted == revision.to_string() {
        Ok(())
    } else {
        Err(ApiError::PreconditionFailed(format!(
            "If-Match {v} does not match the current etag {}; read the resource again",
            etag(revision)
        )))
    }
}

pub fn group_name(g: &str) -> Result<GroupName, ApiError> {
    GroupName::new(g).map_err(|mut e| {
        e.field = "resourceGroup".into();
        ApiError::Invalid(e)
    })
}

pub fn set_name(n: &str) -> Result<ScaleSetName, ApiError> {
    Ok(ScaleSetName::new(n)?)
}

/// The group named in the URL (a bad name is a 400 on `resourceGroup`; a missing group 404; a
/// record in quarantine 409).
pub fn load_group(state: &AppState, g: &str) -> Result<Object<ResourceGroup>, ApiError> {
    Ok(lookup::group(&*state.store, &group_name(g)?)?)
}

/// The set named in the URL, after its group.
pub fn load_set(state: &AppState, g: &str, n: &str) -> Result<Object<StoredScaleSet>, ApiError> {
    load_group(state, g)?;
    Ok(lookup::scale_set(&*state.store, &group_name(g)?, &set_name(n)?)?)
}

/// The set a model change is written to: loaded, at the `If-Match` etag if one is given, and
/// not being deleted (409).
pub fn load_set_for_change(
    state: &AppState,
    headers: &HeaderMap,
    g: &str,
    n: &str,
) -> Result<Object<StoredScaleSet>, ApiError> {
    let cur = load_set(state, g, n)?;
    check_if_match(headers, cur.revision)?;
    if cur.value.deleting {
        return Err(ApiError::Conflict(format!("scale set '{n}' is being deleted")));
    }
    Ok(cur)
}

/// Builds the API view of a set from its stored record, status and instances.
pub fn set_view(state: &AppState, obj: &Object<StoredScaleSet>) -> Result<ScaleSetView, ApiError> {
    let set = &obj.value;
    let Observed { status, summary, provisioning_state } =
        state.observed.observe(&*state.store, obj, state.clock.now())?;
    Ok(ScaleSetView {
        id: StoredScaleSet::resource_id(set.group.as_str(), set.name.as_str()),
        name: set.name.to_string(),
        resource_type: "Microsoft.Compute/virtualMachineScaleSets".into(),
        resource_group: set.group.to_string(),
        etag: etag(obj.revision),
        model_generation: set.model_generation,
        provisioning_state,
        time_created: set.time_created,
        model: set.model.clone(),
        instance_summary: summary,
        rolling_upgrade_state: status.as_ref().and_then(|s| s.rolling_upgrade.as_ref()).map(|u| u.state.to_string()),
        upgrade_request_pending: status.as_ref().is_some_and(|s| s.upgrade_request.is_some()),
        orchestration_services: match &set.model.automatic_repairs_policy {
            Some(p) => {
                let repairs = status.as_ref().map(|s| s.repairs.clone()).unwrap_or_default();
                vec![OrchestrationService {
                    service_name: "AutomaticRepairs".into(),
                    service_state: match (&repairs.suspended, p.enabled) {
                        (_, false) => "NotRunning".into(),
                        (Some(_), true) => "Suspended".into(),
                        (None, true) => "Running".into(),
                    },
                    reason: repairs.suspended.map(|s| s.reason),
                    recent_repairs: repairs.attempts.len(),
                }]
            }
            None => vec![],
        },
    })
}

/// An activity-log entry for something a user asked for.
pub fn user_event(state: &AppState, group: &str, resource: &str, operation: &str, message: String) -> ActivityEvent {
    herd_state::activity::user_event(state.clock.now(), group, resource, operation, message)
}

/// Checks the name of a network resource taken from the URL.
pub fn check_child_name(field: &str, name: &str) -> Result<(), ApiError> {
    Ok(herd_model::network::check_child_name(field, name)?)
}
