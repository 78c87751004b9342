//! A scale set's extensions as their own resources (`.../virtualMachineScaleSets/{name}/extensions/{ext}`),
//! as Azure exposes them and `herd vmss extension set|list|show|delete` use them.
//!
//! Each write edits `virtualMachineProfile.extensionProfile` through the same validation and
//! commit as `update`, so it bumps the model generation, seals protected settings and logs,
//! exactly like the generic update would.

use crate::{
    error::{ApiError, ErrorBody},
    named::Named,
    scale_sets::{commit, commit_replacing, prepare},
    views,
};
use axum::{http::StatusCode, Json};
use herd_model::extension::{Extension, ExtensionProfile, ExtensionProperties};
use serde::Deserialize;

/// The body of a PUT: Azure's `{"properties": {...}}`; the name comes from the path.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtensionPut {
    pub properties: ExtensionProperties,
    /// Ignored if equal to the path's name.
    #[serde(default)]
    pub name: Option<String>,
}

/// Lists a scale set's extensions (protected settings are never returned).
#[utoipa::path(get, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/extensions", tag = "extensions",
    params(("group" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = Vec<Extension>), (status = 404, body = ErrorBody)))]
pub async fn list(n: Named<(String, String)>) -> Result<Json<Vec<Extension>>, ApiError> {
    n.with_set(|_, set, _| Ok(Json(set.value.model.extensions().to_vec()))).await
}

/// Shows one extension.
#[utoipa::path(get, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/extensions/{ext}", tag = "extensions",
    params(("group" = String, Path), ("name" = String, Path), ("ext" = String, Path)),
    responses((status = 200, body = Extension), (status = 404, body = ErrorBody)))]
pub async fn show(n: Named<(String, String, String)>) -> Result<Json<Extension>, ApiError> {
    n.with_set(|_, set, (_, name, ext)| find(set.value.model.extensions(), &ext, &name).cloned().map(Json)).await
}

fn find<'a>(all: &'a [Extension], ext: &str, set: &str) -> Result<&'a Extension, ApiError> {
    all.iter().find(|e| e.name.eq_ignore_ascii_case(ext)).ok_or_else(|| {
        let names: Vec<&str> = all.iter().map(|e| e.name.as_str()).collect();
        ApiError::NotFound(format!(
            "scale set '{set}' has no extension '{ext}'; it has: {}",
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        ))
    })
}

/// Adds or replaces an extension. Like Azure, this changes the model: with a Manual upgrade
/// policy the instances run it after `update-instances`.
#[utoipa::path(put, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/extensions/{ext}", tag = "extensions",
    params(("group" = String, Path), ("name" = String, Path), ("ext" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = ExtensionPut,
    responses((status = 201, body = Extension), (status = 200, body = Extension), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "The set is being deleted"),
        (status = 412, body = ErrorBody)))]
pub async fn put(
    n: Named<(String, String, String)>,
    Json(body): Json<serde_json::Value>,
) -> Result<(StatusCode, Json<Extension>), ApiError> {
    let body: ExtensionPut = serde_path_to_error::deserialize(body)
        .map_err(|e| ApiError::invalid(e.path().to_string(), format!("{}", e.inner())))?;
    let ext = &n.path.2;
    if body.name.as_deref().is_some_and(|n| !n.eq_ignore_ascii_case(ext)) {
        return Err(ApiError::invalid("name", format!("must match the extension name in the path ('{ext}')")));
    }
    n.write(move |state, (group, name, ext), headers| {
        let cur = views::load_set_for_change(state, headers, group, name)?;
        let mut model = cur.value.model.clone();
        let profile = model.virtual_machine_profile.extension_profile.get_or_insert_with(ExtensionProfile::default);
        let new = Extension { name: ext.clone(), properties: body.properties.clone() };
        let existed = match profile.extensions.iter_mut().find(|e| e.name.eq_ignore_ascii_case(ext)) {
            Some(slot) => {
                *slot = Extension { name: slot.name.clone(), ..new };
                true
            }
            None => {
                profile.extensions.push(new);
                false
            }
        };
        let doc = serde_json::to_value(&model).map_err(ApiError::internal)?;
        let (model, secrets) = prepare(state, &cur.value.name, doc)?;
        let verb = if existed { "replaced" } else { "added" };
        // Like `az vmss extension set`, a PUT replaces the extension whole: protected settings not
        // given again are dropped (the generic `update` keeps them).
        let saved = commit_replacing(
            state,
            &cur,
            model,
            secrets,
            std::slice::from_ref(ext),
            "WriteExtension",
            format!("extension {ext} {verb}"),
            herd_model::activity::Actor::User,
        )?;
        let out = find(saved.value.model.extensions(), ext, name)?.clone();
        Ok((if existed { StatusCode::OK } else { StatusCode::CREATED }, Json(out)))
    })
    .await
}

/// Removes an extension from the model. Instances keep what it installed, as in Azure.
#[utoipa::path(delete, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/extensions/{ext}", tag = "extensions",
    params(("group" = String, Path), ("name" = String, Path), ("ext" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 204), (status = 404, body = ErrorBody),
        (status = 412, body = ErrorBody, description = "If-Match names another etag")))]
pub async fn delete(n: Named<(String, String, String)>) -> Result<StatusCode, ApiError> {
    n.write(|state, (group, name, ext), headers| {
        let cur = views::load_set(state, group, name)?;
        views::check_if_match(headers, cur.revision)?;
        find(cur.value.model.extensions(), ext, name)?;
        let mut model = cur.value.model.clone();
        if let Some(p) = &mut model.virtual_machine_profile.extension_profile {
            p.extensions.retain(|e| !e.name.eq_ignore_ascii_case(ext));
            if p.extensions.is_empty() && p.extensions_time_budget.is_none() {
                model.virtual_machine_profile.extension_profile = None;
            }
        }
        let doc = serde_json::to_value(&model).map_err(ApiError::internal)?;
        let (model, secrets) = prepare(state, &cur.value.name, doc)?;
        commit(state, &cur, model, secrets, "DeleteExtension", format!("extension {ext} removed"))?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
