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
use herd_model::{activity::ActivityEvent, group::ResourceGroup};
use herd_state::{groups, lookup};
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
    Ok(Json(state.run(|s| Ok(groups::groups(s)?)).await?))
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
    let now = state.clock.now();
    let (written, rg) = state
        .run(move |s| {
            views::retry(&axum::http::HeaderMap::new(), || {
                Ok(groups::put_group(s, &name, req.location.clone(), req.tags.clone(), now)?)
            })
        })
        .await?;
    let code = if written == groups::Written::Created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((code, Json(rg)))
}

/// Shows a resource group.
#[utoipa::path(get, path = "/v1/resourceGroups/{group}", tag = "groups",
    params(("group" = String, Path)),
    responses((status = 200, body = ResourceGroup), (status = 404, body = ErrorBody)))]
pub async fn show(State(state): State<AppState>, Path(group): Path<String>) -> Result<Json<ResourceGroup>, ApiError> {
    let name = views::group_name(&group)?;
    Ok(Json(state.run(move |s| Ok(lookup::group(s, &name)?.value)).await?))
}

/// Deletes a resource group and everything in it (its scale sets are deleted first).
#[utoipa::path(delete, path = "/v1/resourceGroups/{group}", tag = "groups",
    params(("group" = String, Path)),
    responses((status = 202, description = "Deletion started"), (status = 404, body = ErrorBody)))]
pub async fn delete(State(state): State<AppState>, Path(group): Path<String>) -> Result<StatusCode, ApiError> {
    let name = views::group_name(&group)?;
    let now = state.clock.now();
    state.run(move |s| Ok(groups::delete_group(s, &name, now)?)).await?;
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
    let name = views::group_name(&group)?;
    let q = groups::ActivityQuery { resource: q.resource, since: q.since, limit: q.limit };
    Ok(Json(state.run(move |s| Ok(groups::activity_log(s, &name, q)?)).await?))
}
