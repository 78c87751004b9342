//! Rolling upgrades (`.../rollingUpgrades/latest`, `.../rollingUpgrades/{action}`), instance
//! protection (`.../virtualMachines/{id}/protectionPolicy`) and the automatic-repairs service
//! (`.../setOrchestrationServiceState`): the requests that steer upgrades and repairs.
//!
//! A request is written into the set's status for the reconciler to act on in its next pass
//! (handlers never move instances themselves); the status is the reconciler's, so the write is
//! a compare-and-swap retried on conflict.

use crate::{
    error::{ApiError, ErrorBody},
    named::Named,
    views,
};
use axum::{
    http::{HeaderMap, StatusCode},
    Json,
};
use herd_model::{instance::ProtectionPolicy, scale_set::UpgradeRequest, upgrade::RollingUpgrade, FieldError};
use herd_state::actions::{RollingAction, UnknownAction};
use herd_state::{instance_actions, set_status};
use serde::Deserialize;

/// `rolling-upgrade start` options (herd's canary, beyond Azure).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartRequest {
    /// The first batch: `N` instances or `P%` of the capacity.
    #[serde(default)]
    pub canary: Option<String>,
    /// Pause after the canary batch until `resume` or `rollback`.
    #[serde(default)]
    pub pause: bool,
}

/// The latest rolling upgrade: state, batches, counts and the failure reason.
#[utoipa::path(get, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/rollingUpgrades/latest", tag = "rolling upgrades",
    params(("group" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = RollingUpgrade), (status = 404, body = ErrorBody)))]
pub async fn latest(n: Named<(String, String)>) -> Result<Json<RollingUpgrade>, ApiError> {
    n.with_set(|st, set, (_, name)| {
        set_status::latest_rolling_upgrade(&*st.store, &set.value)?
            .map(Json)
            .ok_or_else(|| ApiError::NotFound(format!("scale set '{name}' has had no rolling upgrade")))
    })
    .await
}

pub(crate) const ACTIONS: &[&str] = RollingAction::NAMES;

/// Asks the reconciler to start, pause, resume, cancel or roll back a rolling upgrade.
#[utoipa::path(post, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/rollingUpgrades/{action}", tag = "rolling upgrades",
    params(("group" = String, Path), ("name" = String, Path), ("action" = String, Path, description = "start, cancel, pause, resume or rollback")),
    request_body = StartRequest,
    responses((status = 202, description = "Accepted"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn action(
    n: Named<(String, String, String)>,
    body: Option<Json<StartRequest>>,
) -> Result<StatusCode, ApiError> {
    let action: RollingAction = n.path.2.parse().map_err(|e: UnknownAction| ApiError::NotFound(e.to_string()))?;
    let body = body.map(|b| b.0).unwrap_or_default();
    let (state, now) = (n.state.clone(), n.state.clock.now());
    n.with_set(move |st, set, (_, name, _)| {
        if set.value.deleting {
            return Err(ApiError::Conflict(format!("scale set '{name}' is being deleted")));
        }
        let capacity = set.value.model.sku.capacity.max(0) as u64;
        let request = match action {
            RollingAction::Start => {
                let canary = match body.canary.as_deref() {
                    None => None,
                    Some(c) => Some(parse_canary(c, capacity)?),
                };
                UpgradeRequest::Start { canary, pause: body.pause, reimage: false }
            }
            RollingAction::Cancel => UpgradeRequest::Cancel,
            RollingAction::Pause => UpgradeRequest::Pause,
            RollingAction::Resume => UpgradeRequest::Resume,
            RollingAction::Rollback => UpgradeRequest::Rollback,
        };
        set_status::request_rolling_upgrade(&*st.store, &set.value, &request, &action.to_string(), now)?;
        Ok(())
    })
    .await?;
    state.wake();
    Ok(StatusCode::ACCEPTED)
}

/// `N` or `P%` of `capacity` (at least one).
fn parse_canary(c: &str, capacity: u64) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::Invalid(FieldError::new(
            "canary",
            format!("'{c}' is not a count or a percentage; allowed: N (1 or more) or P% (1% to 100%)"),
        ))
    };
    match c.trim().strip_suffix('%') {
        Some(p) => {
            let p: u64 = p.trim().parse().map_err(|_| bad())?;
            if !(1..=100).contains(&p) {
                return Err(bad());
            }
            Ok((capacity * p / 100).max(1))
        }
        None => {
            let n: u64 = c.trim().parse().map_err(|_| bad())?;
            if n == 0 {
                return Err(bad());
            }
            Ok(n)
        }
    }
}

/// Sets an instance's protection policy (`protectFromScaleIn`, `protectFromScaleSetActions`).
#[utoipa::path(put, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/virtualMachines/{id}/protectionPolicy", tag = "instances",
    params(("group" = String, Path), ("name" = String, Path), ("id" = String, Path)),
    request_body = ProtectionPolicy,
    responses((status = 200, body = ProtectionPolicy), (status = 404, body = ErrorBody)))]
pub async fn protect(
    n: Named<(String, String, String)>,
    Json(policy): Json<ProtectionPolicy>,
) -> Result<Json<ProtectionPolicy>, ApiError> {
    let (state, now) = (n.state.clone(), n.state.clock.now());
    n.with_set(move |st, set, (_, _, id)| {
        let n = crate::instances::instance_id(&id)?;
        // The reconciler writes instance records all the time: a concurrent write is re-applied.
        views::retry(&HeaderMap::new(), || {
            Ok(instance_actions::set_protection(&*st.store, &set.value, (n, &id), &policy, now)?)
        })
    })
    .await?;
    state.wake();
    Ok(Json(policy))
}

/// `set-orchestration-service-state`: suspend or resume a set's automatic repairs.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrchestrationServiceStateRequest {
    /// `AutomaticRepairs`.
    pub service_name: String,
    /// `Suspend` or `Resume`.
    pub action: String,
}

/// Suspends or resumes automatic repairs. Resuming also clears the circuit breaker's count.
#[utoipa::path(post, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/setOrchestrationServiceState", tag = "scale sets",
    params(("group" = String, Path), ("name" = String, Path)),
    request_body = OrchestrationServiceStateRequest,
    responses((status = 200, description = "Done"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The set has automatic repairs off")))]
pub async fn orchestration_state(
    n: Named<(String, String)>,
    Json(req): Json<OrchestrationServiceStateRequest>,
) -> Result<StatusCode, ApiError> {
    if !req.service_name.eq_ignore_ascii_case("AutomaticRepairs") {
        return Err(ApiError::invalid(
            "serviceName",
            format!("'{}' is not a service herd runs; allowed: AutomaticRepairs", req.service_name),
        ));
    }
    let suspend = match req.action.to_ascii_lowercase().as_str() {
        "suspend" => true,
        "resume" => false,
        _ => {
            return Err(ApiError::invalid(
                "action",
                format!("'{}' is not allowed; allowed: Suspend, Resume", req.action),
            ))
        }
    };
    let (state, now) = (n.state.clone(), n.state.clock.now());
    n.with_set(move |st, set, (_, name)| {
            if !set.value.model.automatic_repairs_policy.as_ref().is_some_and(|p| p.enabled) {
                return Err(ApiError::Conflict(format!(
                    "scale set '{name}' has automatic repairs off; enable them with --set automaticRepairsPolicy.enabled=true"
                )));
            }
            Ok(set_status::set_repairs_suspended(&*st.store, &set.value, suspend, now)?)
        })
    .await?;
    state.wake();
    Ok(StatusCode::OK)
}
