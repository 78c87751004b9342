//! Scale sets: create, show, list, the generic update, scale, delete.

use crate::hosts::room;
use crate::{
    error::{ApiError, ErrorBody},
    named::Named,
    state::AppState,
    views::{self, ScaleRequest, ScaleSetView, UpdateRequest},
};
use axum::{
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use herd_model::{
    patch,
    scale_set::{ScaleSetModel, Secrets, StoredScaleSet, READ_ONLY_FIELDS},
};
use herd_state::lookup::{self, LookupError};
use herd_state::model_refs;
use herd_state::scale_sets::{Ctx, ModelChange};
use herd_state::Versioned as Object;
use serde_json::Value;

pub(crate) fn with_etag(code: StatusCode, view: ScaleSetView) -> Response {
    let tag = HeaderValue::from_str(&view.etag).ok();
    let mut r = (code, Json(view)).into_response();
    if let Some(t) = tag {
        r.headers_mut().insert(axum::http::header::ETAG, t);
    }
    r
}

/// Parses, defaults and validates a model, and checks what it refers to against the stored
/// records; returns it with its secrets taken out.
pub(crate) fn prepare(
    state: &AppState,
    name: &herd_model::ScaleSetName,
    body: Value,
) -> Result<(ScaleSetModel, Secrets), ApiError> {
    let mut model = ScaleSetModel::from_json(body)?;
    model.apply_defaults(name);
    model.validate(&state.validation())?;
    model_refs::check_references(&*state.store, name, &model)?;
    model_refs::check_public_ip(&*state.store, name, &model, state.config.bridged, state.config.public_ip_pool)?;
    let secrets = model.take_secrets();
    Ok((model, secrets))
}

/// Writes a changed model: bumps the generation if the VM model changed, merges secrets, logs.
pub(crate) fn commit(
    state: &AppState,
    cur: &Object<StoredScaleSet>,
    model: ScaleSetModel,
    secrets: Secrets,
    operation: &str,
    message: String,
) -> Result<Object<StoredScaleSet>, ApiError> {
    commit_replacing(state, cur, model, secrets, &[], operation, message, herd_model::activity::Actor::User)
}

/// [`commit`], first dropping the stored protected settings of the extensions named in
/// `replaced` (an extension PUT replaces the extension whole, as `az vmss extension set` does),
/// logged as done by `actor` (a user, or the autoscaler).
#[allow(clippy::too_many_arguments)]
pub(crate) fn commit_replacing(
    state: &AppState,
    cur: &Object<StoredScaleSet>,
    model: ScaleSetModel,
    secrets: Secrets,
    replaced: &[String],
    operation: &str,
    message: String,
    actor: herd_model::activity::Actor,
) -> Result<Object<StoredScaleSet>, ApiError> {
    let room = room(state);
    let ctx = Ctx { sealer: &state.sealer, room: &room, now: state.clock.now() };
    let change = ModelChange { model, secrets, replaced, operation, message, actor };
    let saved = herd_state::scale_sets::commit_model(&*state.store, ctx, cur, change)?;
    state.wake();
    Ok(saved)
}

/// Lists the scale sets of a resource group.
#[utoipa::path(get, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets", tag = "scale sets",
    params(("group" = String, Path)),
    responses((status = 200, body = Vec<ScaleSetView>), (status = 404, body = ErrorBody)))]
pub async fn list(n: Named<String>) -> Result<Json<Vec<ScaleSetView>>, ApiError> {
    n.in_group(|st, g, _| {
        let sets = herd_state::scale_sets::scale_sets_of(&*st.store, &views::group_name(&g.value.name)?)?;
        Ok(Json(sets.iter().map(|s| views::set_view(st, s)).collect::<Result<_, _>>()?))
    })
    .await
}

/// Creates a scale set (with `If-None-Match: *`, fails if it exists) or replaces its model.
#[utoipa::path(put, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}", tag = "scale sets",
    params(("group" = String, Path), ("name" = String, Path),
        ("If-None-Match" = Option<String>, Header, description = "`*`: create only"),
        ("If-Match" = Option<String>, Header, description = "replace only at this etag")),
    request_body = ScaleSetModel,
    responses((status = 201, body = ScaleSetView), (status = 200, body = ScaleSetView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 412, body = ErrorBody, description = "If-Match names another etag, or the set does not exist")))]
pub async fn create_or_replace(n: Named<(String, String)>, Json(body): Json<Value>) -> Result<Response, ApiError> {
    let headers = n.headers.clone();
    n.blocking(move |st, (group, name)| {
        let rg = views::load_group(st, &group)?;
        if rg.value.provisioning_state == herd_model::group::GroupProvisioningState::Deleting {
            return Err(ApiError::Conflict(format!("resource group '{group}' is being deleted")));
        }
        let gname = views::group_name(&group)?;
        let sname = views::set_name(&name)?;
        views::retry(&headers, || put_once(st, &gname, &sname, &headers, body.clone()))
    })
    .await
}

fn put_once(
    state: &AppState,
    group: &herd_model::GroupName,
    name: &herd_model::ScaleSetName,
    headers: &HeaderMap,
    body: Value,
) -> Result<Response, ApiError> {
    let existing = match lookup::scale_set(&*state.store, group, name) {
        Ok(cur) => Some(cur),
        Err(LookupError::NoSet { .. }) => None,
        Err(LookupError::State(e)) => return Err(e.into()),
        Err(LookupError::Quarantined { source, .. }) => return Err(herd_state::StateError::from(source).into()),
        Err(e) => return Err(e.into()),
    };
    let create_only = headers.get(axum::http::header::IF_NONE_MATCH).is_some_and(|v| v == "*");
    let (model, secrets) = prepare(state, name, body)?;
    match existing {
        Some(cur) => {
            if create_only {
                return Err(ApiError::Conflict(format!(
                    "scale set '{name}' already exists in resource group '{group}'; use 'herd vmss update' to change it"
                )));
            }
            if cur.value.deleting {
                return Err(ApiError::Conflict(format!("scale set '{name}' is being deleted")));
            }
            views::check_if_match(headers, cur.revision)?;
            let saved = commit(state, &cur, model, secrets, "WriteScaleSet", "model replaced".into())?;
            Ok(with_etag(StatusCode::OK, views::set_view(state, &saved)?))
        }
        None => {
            if headers.get(axum::http::header::IF_MATCH).is_some() {
                return Err(ApiError::PreconditionFailed(format!("scale set '{name}' does not exist")));
            }
            let room = room(state);
            let ctx = Ctx { sealer: &state.sealer, room: &room, now: state.clock.now() };
            let obj = herd_state::scale_sets::create_scale_set(&*state.store, ctx, group, name, model, &secrets)?;
            state.wake();
            Ok(with_etag(StatusCode::CREATED, views::set_view(state, &obj)?))
        }
    }
}

/// Shows a scale set with its instance summary.
#[utoipa::path(get, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}", tag = "scale sets",
    params(("group" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = ScaleSetView), (status = 404, body = ErrorBody)))]
pub async fn show(n: Named<(String, String)>) -> Result<Response, ApiError> {
    n.with_set(|st, cur, _| Ok(with_etag(StatusCode::OK, views::set_view(st, &cur)?))).await
}

/// Deletes a scale set: every instance is removed, then the set.
#[utoipa::path(delete, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}", tag = "scale sets",
    params(("group" = String, Path), ("name" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 202, description = "Deletion started"), (status = 404, body = ErrorBody),
        (status = 412, body = ErrorBody, description = "If-Match names another etag")))]
pub async fn delete(n: Named<(String, String)>) -> Result<StatusCode, ApiError> {
    n.write(|st, (group, name), headers| delete_once(st, group, name, headers)).await
}

fn delete_once(state: &AppState, group: &str, name: &str, headers: &HeaderMap) -> Result<StatusCode, ApiError> {
    let cur = views::load_set(state, group, name)?;
    views::check_if_match(headers, cur.revision)?;
    if herd_state::scale_sets::delete_scale_set(&*state.store, &cur, state.clock.now())? {
        state.wake();
    }
    Ok(StatusCode::ACCEPTED)
}

/// The generic update: `--set`, `--add`, `--remove` on the model's JSON paths. All operations
/// apply or none does.
#[utoipa::path(post, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/update", tag = "scale sets",
    params(("group" = String, Path), ("name" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = UpdateRequest,
    responses((status = 200, body = ScaleSetView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 412, body = ErrorBody)))]
pub async fn update(n: Named<(String, String)>, Json(req): Json<UpdateRequest>) -> Result<Response, ApiError> {
    change_set(n, move |st, cur| updated(st, cur, &req)).await
}

/// A change to a set's model (`update`, `scale`): `change` commits a new model built from the
/// stored set ([`views::load_set_for_change`]), re-applied on a concurrent write; the answer is
/// the set's view with its etag.
async fn change_set(
    n: Named<(String, String)>,
    change: impl Fn(&AppState, &Object<StoredScaleSet>) -> Result<Object<StoredScaleSet>, ApiError> + Send + 'static,
) -> Result<Response, ApiError> {
    n.write(move |st, (group, name), headers| {
        let cur = views::load_set_for_change(st, headers, group, name)?;
        let saved = change(st, &cur)?;
        Ok(with_etag(StatusCode::OK, views::set_view(st, &saved)?))
    })
    .await
}

/// The update's operations applied to `cur`'s model, validated and committed.
fn updated(
    state: &AppState,
    cur: &Object<StoredScaleSet>,
    req: &UpdateRequest,
) -> Result<Object<StoredScaleSet>, ApiError> {
    if req.operations.is_empty() {
        return Err(ApiError::invalid("operations", "give at least one --set, --add or --remove"));
    }
    if req.operations.len() > patch::MAX_OPERATIONS {
        return Err(ApiError::invalid(
            "operations",
            format!("{} operations given; the limit is {} per update", req.operations.len(), patch::MAX_OPERATIONS),
        ));
    }
    let doc = serde_json::to_value(&cur.value.model).map_err(ApiError::internal)?;
    let mut patched = patch::apply(&doc, &req.operations, READ_ONLY_FIELDS)?;
    // `--set tags.build=42` means the text "42" where the model wants text: as az does, a
    // value that parsed as a number or boolean becomes a string when only a string fits.
    for _ in 0..req.operations.len() {
        match ScaleSetModel::from_json(patched.clone()) {
            Err(e) if e.message.contains("expected a string") => {
                let Some(op) = req
                    .operations
                    .iter()
                    .find(|op| matches!(op, patch::PatchOp::Set { path, .. } if path.eq_ignore_ascii_case(&e.field)))
                else {
                    break;
                };
                let patch::PatchOp::Set { path, value } = op else { break };
                patched = patch::apply(
                    &patched,
                    &[patch::PatchOp::Set {
                        path: path.clone(),
                        value: serde_json::to_string(value).unwrap_or_default(),
                    }],
                    READ_ONLY_FIELDS,
                )?;
            }
            _ => break,
        }
    }
    let (model, secrets) = prepare(state, &cur.value.name, patched)?;
    let described: Vec<String> = req
        .operations
        .iter()
        .map(|op| match op {
            patch::PatchOp::Set { path, .. } => format!("set {path}"),
            patch::PatchOp::Add { path, .. } => format!("add to {path}"),
            patch::PatchOp::Remove { path, .. } => format!("remove from {path}"),
        })
        .collect();
    commit(state, cur, model, secrets, "UpdateScaleSet", format!("update: {}", described.join(", ")))
}

/// Sets the capacity (0 keeps the model and removes every instance).
#[utoipa::path(post, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/scale", tag = "scale sets",
    params(("group" = String, Path), ("name" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = ScaleRequest,
    responses((status = 200, body = ScaleSetView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The set is being deleted"),
        (status = 412, body = ErrorBody, description = "If-Match names another etag")))]
pub async fn scale(n: Named<(String, String)>, Json(req): Json<ScaleRequest>) -> Result<Response, ApiError> {
    change_set(n, move |st, cur| {
        let mut model = cur.value.model.clone();
        model.sku.capacity = req.capacity;
        model.validate(&st.validation())?;
        model_refs::check_public_ip(&*st.store, &cur.value.name, &model, st.config.bridged, st.config.public_ip_pool)?;
        commit(st, cur, model, Secrets::default(), "Scale", "scale requested".into())
    })
    .await
}
