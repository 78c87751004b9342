//! Resource groups, the activity log, and server information.

use crate::{
    error::{ApiError, ErrorBody},
    state::AppState,
    views::{self, GroupRequest, ServerInfo, SkuInfo},
};
use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    Json,
};
use herd_model::group::GroupProvisioningState;
use herd_model::{activity::ActivityEvent, group::ResourceGroup, scale_set::StoredScaleSet};
use herd_state::keys::GroupKey;
use herd_store::{ActivityFilter, Expect, Kind, StoreExt, WriteOp};
use serde::Deserialize;

/// What this server runs with: driver, zones, SKUs.
#[utoipa::path(get, path = "/v1/server", tag = "server", responses((status = 200, body = ServerInfo)))]
pub async fn server_info(State(state): State<AppState>) -> Json<ServerInfo> {
    let c = &state.config;
    Json(ServerInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        driver: c.driver.clone(),
        zones: c.zones.clone(),
        max_capacity: c.max_capacity,
        skus: c
            .skus
            .iter()
            .map(|(n, s)| SkuInfo { name: n.clone(), vcpus: s.vcpus, memory_mib: s.memory_mib })
            .collect(),
    })
}

/// Lists resource groups.
#[utoipa::path(get, path = "/v1/resourceGroups", tag = "groups", responses((status = 200, body = Vec<ResourceGroup>)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<ResourceGroup>>, ApiError> {
    Ok(Json(state.store.list_as::<ResourceGroup>(Kind::Group, "")?.into_iter().map(|o| o.value).collect()))
}

/// Creates a resource group (or updates its tags).
#[utoipa::path(put, path = "/v1/resourceGroups/{group}", tag = "groups",
    params(("group" = String, Path, description = "Resource group name")),
    request_body = GroupRequest,
    responses((status = 201, body = ResourceGroup), (status = 200, body = ResourceGroup), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The group is being deleted")))]
pub async fn create(
    State(state): State<AppState>,
    Path(group): Path<String>,
    body: Option<Json<serde_json::Value>>,
) -> Result<(StatusCode, Json<ResourceGroup>), ApiError> {
    let name = views::group_name(&group)?;
    // As in Azure, the body is required and is an object (`az group create` sends
    // `{"location": ...}`); herd has one location, so `{}` means `local`.
    let req: GroupRequest = match body.map(|b| b.0) {
        None => {
            return Err(ApiError::invalid(
                "",
                "the request needs a JSON object body, for example {\"location\": \"local\"}",
            ))
        }
        Some(v @ serde_json::Value::Object(_)) => views::from_body(v)?,
        Some(_) => {
            return Err(ApiError::invalid("", "the body must be a JSON object, for example {\"location\": \"local\"}"))
        }
    };
    views::retry(&axum::http::HeaderMap::new(), || create_once(&state, &group, &name, &req))
}

fn create_once(
    state: &AppState,
    group: &str,
    name: &herd_model::GroupName,
    req: &GroupRequest,
) -> Result<(StatusCode, Json<ResourceGroup>), ApiError> {
    let req = req.clone();
    let existing = state.store.get_as::<ResourceGroup>(Kind::Group, name.as_str())?;
    if let Some(e) = &existing {
        if e.value.provisioning_state == GroupProvisioningState::Deleting {
            return Err(ApiError::Conflict(format!("resource group '{group}' is being deleted")));
        }
    }
    let location =
        req.location.unwrap_or_else(|| existing.as_ref().map_or("local".into(), |e| e.value.location.clone()));
    if location.is_empty() || !location.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(ApiError::invalid("location", "use letters, digits and '-' (for example 'local')"));
    }
    let rg = ResourceGroup {
        id: ResourceGroup::resource_id(name.as_str()),
        name: name.to_string(),
        location,
        tags: req.tags,
        provisioning_state: GroupProvisioningState::Succeeded,
    };
    let expect = existing.as_ref().map_or(Expect::Absent, |e| Expect::Revision(e.revision));
    let verb = if existing.is_some() { "updated" } else { "created" };
    state.store.txn(vec![
        WriteOp::put(Kind::Group, name.as_str(), &rg, expect)?,
        WriteOp::Activity(views::user_event(
            state,
            name.as_str(),
            "",
            "WriteResourceGroup",
            format!("resource group {verb}"),
        )),
    ])?;
    let code = if existing.is_some() { StatusCode::OK } else { StatusCode::CREATED };
    Ok((code, Json(rg)))
}

/// Shows a resource group.
#[utoipa::path(get, path = "/v1/resourceGroups/{group}", tag = "groups",
    params(("group" = String, Path)),
    responses((status = 200, body = ResourceGroup), (status = 404, body = ErrorBody)))]
pub async fn show(State(state): State<AppState>, Path(group): Path<String>) -> Result<Json<ResourceGroup>, ApiError> {
    Ok(Json(views::load_group(&state, &group)?.value))
}

/// Deletes a resource group and everything in it (its scale sets are deleted first).
#[utoipa::path(delete, path = "/v1/resourceGroups/{group}", tag = "groups",
    params(("group" = String, Path)),
    responses((status = 202, description = "Deletion started"), (status = 404, body = ErrorBody)))]
pub async fn delete(State(state): State<AppState>, Path(group): Path<String>) -> Result<StatusCode, ApiError> {
    let g = views::load_group(&state, &group)?;
    let sets = state.store.list_as::<StoredScaleSet>(Kind::ScaleSet, &GroupKey::new(group.as_str()).children())?;
    let mut ops = Vec::new();
    for s in &sets {
        if !s.value.deleting {
            let mut v = s.value.clone();
            v.deleting = true;
            ops.push(WriteOp::put(Kind::ScaleSet, s.key.clone(), &v, Expect::Revision(s.revision))?);
        }
    }
    if sets.is_empty() {
        ops.push(WriteOp::delete(Kind::Group, group.clone(), Expect::Revision(g.revision)));
    } else {
        let mut rg = g.value.clone();
        rg.provisioning_state = GroupProvisioningState::Deleting;
        ops.push(WriteOp::put(Kind::Group, group.clone(), &rg, Expect::Revision(g.revision))?);
    }
    let msg = format!("resource group deletion started ({} scale set(s) to delete)", sets.len());
    ops.push(WriteOp::Activity(views::user_event(&state, &group, "", "DeleteResourceGroup", msg)));
    if ops.len() <= herd_store::MAX_TXN_OPS && herd_store::check_txn(&ops).is_ok() {
        state.store.txn(ops)?;
    } else {
        // More scale sets than one transaction holds: the group (marked Deleting, so no set is
        // created in it meanwhile) and the activity line first, then the sets in chunks. Each
        // write is idempotent (a set already marked is left alone), so a retry of a request
        // cut short completes it; a chunk that meets a concurrent write is re-read and re-marked.
        let n_sets = ops.len() - 2;
        let head = ops.split_off(n_sets);
        state.store.txn(head)?;
        views::commit_chunks_reapplying(&state, ops, |key| {
            let Some(s) = state.store.get_as::<StoredScaleSet>(Kind::ScaleSet, key)? else { return Ok(None) };
            if s.value.deleting {
                return Ok(None);
            }
            let mut v = s.value.clone();
            v.deleting = true;
            Ok(Some(WriteOp::put(Kind::ScaleSet, key, &v, Expect::Revision(s.revision))?))
        })?;
    }
    state.wake();
    Ok(StatusCode::ACCEPTED)
}

/// Query of the activity log.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct ActivityQuery {
    /// Only events of this resource (a scale set name).
    pub resource: Option<String>,
    /// Only events at or after this time (RFC 3339).
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// At most this many, newest kept.
    pub limit: Option<usize>,
}

/// The activity log of a resource group, oldest first.
#[utoipa::path(get, path = "/v1/resourceGroups/{group}/activityLog", tag = "groups",
    params(("group" = String, Path), ActivityQuery),
    responses((status = 200, body = Vec<ActivityEvent>), (status = 404, body = ErrorBody)))]
pub async fn activity_log(
    State(state): State<AppState>,
    Path(group): Path<String>,
    Query(q): Query<ActivityQuery>,
) -> Result<Json<Vec<ActivityEvent>>, ApiError> {
    views::group_name(&group)?;
    let exists = state.store.get(Kind::Group, &group)?.is_some();
    let filter =
        ActivityFilter { resource_group: Some(group.clone()), resource: q.resource, since: q.since, limit: q.limit };
    let events = state.store.activity(&filter)?;
    if !exists && events.is_empty() {
        return Err(ApiError::NotFound(format!("resource group '{group}' does not exist")));
    }
    Ok(Json(events))
}
