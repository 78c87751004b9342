//! Scale sets: create, show, list, the generic update, scale, delete.

use crate::{
    error::{ApiError, ErrorBody},
    state::AppState,
    views::{self, ScaleRequest, ScaleSetView, UpdateRequest},
};
use axum::{
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use herd_model::{
    image::{self, Image},
    patch,
    scale_set::{ScaleSetModel, Secrets, StoredScaleSet, READ_ONLY_FIELDS},
    FieldError,
};
use herd_state::keys::{GroupKey, SetKey};
use herd_store::{Expect, Kind, Object, StoreExt, WriteOp};
use serde_json::Value;

pub(crate) fn with_etag(code: StatusCode, view: ScaleSetView) -> Response {
    let tag = HeaderValue::from_str(&view.etag).ok();
    let mut r = (code, Json(view)).into_response();
    if let Some(t) = tag {
        r.headers_mut().insert(axum::http::header::ETAG, t);
    }
    r
}

/// Checks that the model's image is in the gallery.
fn check_image(state: &AppState, model: &ScaleSetModel) -> Result<(), ApiError> {
    let field = "virtualMachineProfile.storageProfile.imageReference";
    let urn = model.virtual_machine_profile.storage_profile.image_reference.urn()?;
    let images: Vec<Image> = state.store.list_as::<Image>(Kind::Image, "")?.into_iter().map(|o| o.value).collect();
    if image::resolve(&images, &urn).is_none() {
        let mut known: Vec<String> = images.iter().map(|i| i.urn.clone()).collect();
        known.sort();
        let hint = if known.is_empty() {
            "the gallery is empty; add one with 'herd image import'".to_string()
        } else {
            format!("available: {}", known.join(", "))
        };
        return Err(ApiError::Invalid(FieldError::new(field, format!("image {urn} is not in the gallery; {hint}"))));
    }
    Ok(())
}

/// Parses, defaults and validates a model; returns it with its secrets taken out.
pub(crate) fn prepare(
    state: &AppState,
    name: &herd_model::ScaleSetName,
    body: Value,
) -> Result<(ScaleSetModel, Secrets), ApiError> {
    let mut model = ScaleSetModel::from_json(body)?;
    model.apply_defaults(name);
    model.validate(&state.validation())?;
    check_image(state, &model)?;
    check_network(state, name, &model)?;
    let repairs = model.automatic_repairs_policy.as_ref().is_some_and(|p| p.enabled);
    let rolling = model.upgrade_policy.mode == herd_model::scale_set::UpgradeMode::Rolling;
    let lbs: Vec<herd_model::network::LoadBalancer> = if rolling || repairs {
        state.store.list_as(Kind::LoadBalancer, "")?.into_iter().map(|o| o.value).collect()
    } else {
        vec![]
    };
    if repairs && !herd_model::network::has_health_source(&model, &lbs) {
        return Err(ApiError::invalid(
            "automaticRepairsPolicy.enabled",
            "automatic repairs need a health source: a load-balancer rule with a probe on the set's backend pool, \
             or virtualMachineProfile.networkProfile.healthProbe",
        ));
    }
    if rolling && !herd_model::network::has_health_source(&model, &lbs) {
        return Err(ApiError::invalid(
            "upgradePolicy.mode",
            "Rolling needs a health source: a load-balancer rule with a probe on the set's backend pool \
             ('herd network lb probe create' and 'herd network lb rule create --probe-name'), or \
             virtualMachineProfile.networkProfile.healthProbe; allowed without one: Manual, Automatic",
        ));
    }
    let secrets = model.take_secrets();
    Ok((model, secrets))
}

/// Checks that the network profile's subnet and load-balancer pools exist, and that the subnet
/// has room for the set (with its overprovisioning extras) next to the other sets using it.
fn check_network(state: &AppState, name: &herd_model::ScaleSetName, model: &ScaleSetModel) -> Result<(), ApiError> {
    use herd_model::network::{LoadBalancer, VirtualNetwork};
    let Some(ip) = model.virtual_machine_profile.network_profile.as_ref().and_then(|n| n.primary()) else {
        return Ok(());
    };
    let base = "virtualMachineProfile.networkProfile.networkInterfaceConfigurations[0].ipConfigurations[0]";
    if let Some(sub) = &ip.subnet {
        let vnets: Vec<VirtualNetwork> =
            state.store.list_as(Kind::VirtualNetwork, "")?.into_iter().map(|o| o.value).collect();
        let found = vnets.iter().flat_map(|v| v.subnets.iter()).find(|s| s.id.eq_ignore_ascii_case(&sub.id));
        let Some(found) = found else {
            return Err(ApiError::invalid(
                format!("{base}.subnet"),
                format!("subnet '{}' does not exist; create it with 'herd network vnet subnet create'", sub.id),
            ));
        };
        let others: i64 = state
            .store
            .list_as::<StoredScaleSet>(Kind::ScaleSet, "")?
            .into_iter()
            .filter(|o| o.value.name != *name)
            .filter(|o| {
                o.value
                    .model
                    .virtual_machine_profile
                    .network_profile
                    .as_ref()
                    .and_then(|n| n.primary())
                    .and_then(|p| p.subnet.as_ref())
                    .is_some_and(|s| s.id.eq_ignore_ascii_case(&sub.id))
            })
            .map(|o| o.value.model.sku.capacity)
            .sum();
        let room = found.address_prefix.size() as i64 - 5;
        let want = model.sku.capacity + (model.sku.capacity * 20 + 99) / 100 + others;
        if want > room {
            return Err(ApiError::invalid(
                "sku.capacity",
                format!("subnet {} ({}) has {room} usable addresses; {want} are needed with overprovisioning and the other sets on it", found.name, found.address_prefix),
            ));
        }
    }
    let lbs: Vec<LoadBalancer> = state.store.list_as(Kind::LoadBalancer, "")?.into_iter().map(|o| o.value).collect();
    let exists = |coll: &str, id: &str| {
        lbs.iter().any(|l| {
            l.id.len() < id.len() && id.to_ascii_lowercase().starts_with(&l.id.to_ascii_lowercase()) && {
                let rest = &id[l.id.len()..];
                let child = rest.trim_start_matches('/').split_once('/').map(|(c, n)| (c.to_string(), n.to_string()));
                child.is_some_and(|(c, n)| {
                    c.eq_ignore_ascii_case(coll)
                        && match coll {
                            "backendAddressPools" => {
                                l.backend_address_pools.iter().any(|p| p.name.eq_ignore_ascii_case(&n))
                            }
                            _ => l.inbound_nat_pools.iter().any(|p| p.name.eq_ignore_ascii_case(&n)),
                        }
                })
            }
        })
    };
    for (i, p) in ip.load_balancer_backend_address_pools.iter().enumerate() {
        if !exists("backendAddressPools", &p.id) {
            return Err(ApiError::invalid(
                format!("{base}.loadBalancerBackendAddressPools[{i}]"),
                format!("backend pool '{}' does not exist", p.id),
            ));
        }
    }
    for (i, p) in ip.load_balancer_inbound_nat_pools.iter().enumerate() {
        if !exists("inboundNatPools", &p.id) {
            return Err(ApiError::invalid(
                format!("{base}.loadBalancerInboundNatPools[{i}]"),
                format!("inbound NAT pool '{}' does not exist", p.id),
            ));
        }
    }
    Ok(())
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
    mut message: String,
    actor: herd_model::activity::Actor,
) -> Result<Object<StoredScaleSet>, ApiError> {
    let old = &cur.value;
    if model.zones != old.model.zones {
        return Err(ApiError::Invalid(FieldError::not_supported(
            "zones",
            "changing the zones of an existing scale set",
        )));
    }
    let (old_vp, new_vp) = (&old.model.virtual_machine_profile, &model.virtual_machine_profile);
    if herd_model::spot::is_spot(old_vp.priority) != herd_model::spot::is_spot(new_vp.priority) {
        return Err(ApiError::Invalid(FieldError::new(
            "virtualMachineProfile.priority",
            format!(
                "cannot change from {} to {} on an existing scale set; create a new scale set",
                old_vp.priority, new_vp.priority
            ),
        )));
    }
    if model.sku.capacity > old.model.sku.capacity && !herd_model::spot::is_spot(new_vp.priority) {
        crate::hosts::check_room(state, old, model.sku.capacity - old.model.sku.capacity)?;
    }
    let mut next = old.clone();
    let bump = old.model.vm_model_differs(&model) || !secrets.is_empty();
    if bump {
        next.model_generation += 1;
        message.push_str(&format!("; model generation {} → {}", old.model_generation, next.model_generation));
    }
    if model.sku.capacity != old.model.sku.capacity {
        message.push_str(&format!("; capacity {} → {}", old.model.sku.capacity, model.sku.capacity));
    }
    next.model = model;
    let key = old.key();
    let mut ops = vec![WriteOp::put(Kind::ScaleSet, key.clone(), &next, Expect::Revision(cur.revision))?];
    let stored: Option<Secrets> =
        state.store.get(Kind::Secret, &key)?.map(|o| state.sealer.open(&o.value)).transpose()?;
    let mut all = stored.clone().unwrap_or_default();
    for r in replaced {
        all.extension_protected_settings.remove(&r.to_ascii_lowercase());
    }
    all.merge(secrets);
    all.retain_extensions(&next.model);
    if let Some(p) = &next.model.virtual_machine_profile.extension_profile {
        p.check_commands(&all.extension_protected_settings)?;
    }
    if stored.as_ref() != Some(&all) && !(stored.is_none() && all.is_empty()) {
        ops.push(WriteOp::Put {
            kind: Kind::Secret,
            key: key.clone(),
            value: state.sealer.seal(&all)?,
            expect: Expect::Any,
        });
    }
    if bump {
        let hk = SetKey::of(old).history(next.model_generation).to_string();
        ops.push(WriteOp::put(Kind::ModelHistory, hk, &next.model, Expect::Any)?);
    }
    let mut ev = views::user_event(state, old.group.as_str(), old.name.as_str(), operation, message);
    ev.actor = actor;
    ops.push(WriteOp::Activity(ev));
    let rev = state.store.txn(ops)?;
    state.wake();
    Ok(Object { key, revision: rev, create_revision: cur.create_revision, value: next })
}

/// Lists the scale sets of a resource group.
#[utoipa::path(get, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets", tag = "scale sets",
    params(("group" = String, Path)),
    responses((status = 200, body = Vec<ScaleSetView>), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Path(group): Path<String>,
) -> Result<Json<Vec<ScaleSetView>>, ApiError> {
    views::load_group(&state, &group)?;
    let sets = state.store.list_as::<StoredScaleSet>(Kind::ScaleSet, &GroupKey::new(group.as_str()).children())?;
    Ok(Json(sets.iter().map(|s| views::set_view(&state, s)).collect::<Result<_, _>>()?))
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
pub async fn create_or_replace(
    State(state): State<AppState>,
    Path((group, name)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    let rg = views::load_group(&state, &group)?;
    if rg.value.provisioning_state == herd_model::group::GroupProvisioningState::Deleting {
        return Err(ApiError::Conflict(format!("resource group '{group}' is being deleted")));
    }
    let gname = views::group_name(&group)?;
    let sname = views::set_name(&name)?;
    let key = StoredScaleSet::store_key(&gname, &sname);
    views::retry(&headers, || put_once(&state, &group, &name, &gname, &sname, &key, &headers, body.clone()))
}

#[allow(clippy::too_many_arguments)]
fn put_once(
    state: &AppState,
    group: &str,
    name: &str,
    gname: &herd_model::GroupName,
    sname: &herd_model::ScaleSetName,
    key: &str,
    headers: &HeaderMap,
    body: Value,
) -> Result<Response, ApiError> {
    let existing = state.store.get_as::<StoredScaleSet>(Kind::ScaleSet, key)?;
    let create_only = headers.get(axum::http::header::IF_NONE_MATCH).is_some_and(|v| v == "*");
    let (model, secrets) = prepare(state, sname, body)?;
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
            let set = StoredScaleSet {
                name: sname.clone(),
                group: gname.clone(),
                model_generation: 1,
                time_created: state.clock.now(),
                deleting: false,
                model,
            };
            let msg = format!(
                "scale set created: {} x {}, image {}, upgrade policy {}",
                set.model.sku.capacity,
                set.model.sku.name,
                set.model
                    .virtual_machine_profile
                    .storage_profile
                    .image_reference
                    .urn()
                    .map(|u| u.to_string())
                    .unwrap_or_default(),
                set.model.upgrade_policy.mode
            );
            if let Some(p) = &set.model.virtual_machine_profile.extension_profile {
                p.check_commands(&secrets.extension_protected_settings)?;
            }
            if !herd_model::spot::is_spot(set.model.virtual_machine_profile.priority) {
                crate::hosts::check_room(state, &set, set.model.capacity() as i64)?;
            }
            let mut ops = vec![
                WriteOp::put(Kind::ScaleSet, key, &set, Expect::Absent)?,
                WriteOp::put(
                    Kind::ModelHistory,
                    SetKey::new(gname.clone(), sname.clone()).history(1).to_string(),
                    &set.model,
                    Expect::Any,
                )?,
            ];
            if !secrets.is_empty() {
                ops.push(WriteOp::Put {
                    kind: Kind::Secret,
                    key: key.to_string(),
                    value: state.sealer.seal(&secrets)?,
                    expect: Expect::Any,
                });
            }
            ops.push(WriteOp::Activity(views::user_event(state, group, name, "CreateScaleSet", msg)));
            let rev = state.store.txn(ops).map_err(|e| match e {
                herd_store::StoreError::Conflict { .. } => {
                    ApiError::Conflict(format!("scale set '{name}' already exists in resource group '{group}'"))
                }
                other => other.into(),
            })?;
            state.wake();
            let obj = Object { key: key.to_string(), revision: rev, create_revision: rev, value: set };
            Ok(with_etag(StatusCode::CREATED, views::set_view(state, &obj)?))
        }
    }
}

/// Shows a scale set with its instance summary.
#[utoipa::path(get, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}", tag = "scale sets",
    params(("group" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = ScaleSetView), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Path((group, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let cur = views::load_set(&state, &group, &name)?;
    Ok(with_etag(StatusCode::OK, views::set_view(&state, &cur)?))
}

/// Deletes a scale set: every instance is removed, then the set.
#[utoipa::path(delete, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}", tag = "scale sets",
    params(("group" = String, Path), ("name" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 202, description = "Deletion started"), (status = 404, body = ErrorBody),
        (status = 412, body = ErrorBody, description = "If-Match names another etag")))]
pub async fn delete(
    State(state): State<AppState>,
    Path((group, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    views::retry(&headers, || delete_once(&state, &group, &name, &headers))
}

fn delete_once(state: &AppState, group: &str, name: &str, headers: &HeaderMap) -> Result<StatusCode, ApiError> {
    let cur = views::load_set(state, group, name)?;
    views::check_if_match(headers, cur.revision)?;
    if cur.value.deleting {
        return Ok(StatusCode::ACCEPTED);
    }
    let mut next = cur.value.clone();
    next.deleting = true;
    state.store.txn(vec![
        WriteOp::put(Kind::ScaleSet, cur.key.clone(), &next, Expect::Revision(cur.revision))?,
        WriteOp::Activity(views::user_event(state, group, name, "DeleteScaleSet", "scale set deletion started".into())),
    ])?;
    state.wake();
    Ok(StatusCode::ACCEPTED)
}

/// The generic update: `--set`, `--add`, `--remove` on the model's JSON paths. All operations
/// apply or none does.
#[utoipa::path(post, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/update", tag = "scale sets",
    params(("group" = String, Path), ("name" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = UpdateRequest,
    responses((status = 200, body = ScaleSetView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 412, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Path((group, name)): Path<(String, String)>,
    headers: HeaderMap,
    Json(req): Json<UpdateRequest>,
) -> Result<Response, ApiError> {
    views::retry(&headers, || update_once(&state, &group, &name, &headers, &req))
}

fn update_once(
    state: &AppState,
    group: &str,
    name: &str,
    headers: &HeaderMap,
    req: &UpdateRequest,
) -> Result<Response, ApiError> {
    let cur = views::load_set(state, group, name)?;
    views::check_if_match(headers, cur.revision)?;
    if cur.value.deleting {
        return Err(ApiError::Conflict(format!("scale set '{name}' is being deleted")));
    }
    if req.operations.is_empty() {
        return Err(ApiError::invalid("operations", "give at least one --set, --add or --remove"));
    }
    if req.operations.len() > patch::MAX_OPERATIONS {
        return Err(ApiError::invalid(
            "operations",
            format!("{} operations given; the limit is {} per update", req.operations.len(), patch::MAX_OPERATIONS),
        ));
    }
    let doc = serde_json::to_value(&cur.value.model).map_err(|e| ApiError::Internal(e.to_string()))?;
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
    let saved = commit(state, &cur, model, secrets, "UpdateScaleSet", format!("update: {}", described.join(", ")))?;
    Ok(with_etag(StatusCode::OK, views::set_view(state, &saved)?))
}

/// Sets the capacity (0 keeps the model and removes every instance).
#[utoipa::path(post, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/scale", tag = "scale sets",
    params(("group" = String, Path), ("name" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = ScaleRequest,
    responses((status = 200, body = ScaleSetView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The set is being deleted"),
        (status = 412, body = ErrorBody, description = "If-Match names another etag")))]
pub async fn scale(
    State(state): State<AppState>,
    Path((group, name)): Path<(String, String)>,
    headers: HeaderMap,
    Json(req): Json<ScaleRequest>,
) -> Result<Response, ApiError> {
    views::retry(&headers, || scale_once(&state, &group, &name, &headers, &req))
}

fn scale_once(
    state: &AppState,
    group: &str,
    name: &str,
    headers: &HeaderMap,
    req: &ScaleRequest,
) -> Result<Response, ApiError> {
    let cur = views::load_set(state, group, name)?;
    views::check_if_match(headers, cur.revision)?;
    if cur.value.deleting {
        return Err(ApiError::Conflict(format!("scale set '{name}' is being deleted")));
    }
    let mut model = cur.value.model.clone();
    model.sku.capacity = req.capacity;
    model.validate(&state.validation())?;
    let saved = commit(state, &cur, model, Secrets::default(), "Scale", "scale requested".into())?;
    Ok(with_etag(StatusCode::OK, views::set_view(state, &saved)?))
}
