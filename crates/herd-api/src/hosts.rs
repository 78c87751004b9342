//! Hosts and their capacity: what `herd host show` reads, and the up-front refusal of a Regular
//! scale-out that cannot fit even after every Spot instance is evicted.
//!
//! Why in the API and not only in the reconciler: a user who asks for more than the hosts hold
//! should hear it at once, with what is missing, instead of watching a set stay short. The
//! reconciler still arbitrates every pass (hosts can fill up between the check and the pass),
//! and reports any shortfall in the set's status.

use crate::{
    error::{ApiError, ErrorBody},
    state::{ApiConfig, AppState},
};
use axum::{extract::State, Json};
use herd_model::FieldError;
use herd_model::{instance::InstanceRecord, scale_set::StoredScaleSet, InstanceId};
use herd_state::keys::SetKey;
use herd_state::scale_sets::{Room, ScaleSetError};
use herd_state::{Records, StateError, Store};
use serde::Serialize;
use std::collections::BTreeMap;

/// One host: its capacity and what instances reserve on it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostView {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
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
    pub hosts: Vec<HostView>,
}

/// Every set and its records, as the capacity arbiter sees them.
fn holders(store: &dyn Store, config: &ApiConfig) -> Result<Vec<herd_capacity::Holder>, StateError> {
    let sets: BTreeMap<String, StoredScaleSet> = store.scale_sets()?.into_iter().map(|o| (o.key, o.value)).collect();
    let unlimited = config.hosts.is_empty();
    let mut out = Vec::new();
    for o in store.instances()? {
        let set_key = o.key.rsplit_once('/').map_or("", |(k, _)| k);
        if let Some(set) = sets.get(set_key) {
            out.extend(herd_reconciler::capacity::holder(set, &o.value, &config.skus, unlimited));
        }
    }
    Ok(out)
}

/// Lists the hosts with their capacity and what Regular and Spot instances reserve.
#[utoipa::path(get, path = "/v1/hosts", tag = "hosts",
    responses((status = 200, body = HostsView), (status = 401, body = ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<HostsView>, ApiError> {
    let config = state.config.clone();
    let holders = state.run(move |s| Ok(holders(s, &config)?)).await?;
    let hosts = herd_capacity::usage(&state.config.hosts, &holders)
        .into_iter()
        .map(|u| HostView {
            name: u.name,
            zone: u.zone,
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
    Ok(Json(HostsView { unlimited: state.config.hosts.is_empty(), hosts }))
}

/// The hosts' room for a scale-out: refuses `extra` more Regular instances of a set when the
/// hosts cannot hold them even after evicting every Spot instance; the error says what is
/// missing. Without declared hosts, room is unlimited.
pub(crate) struct HostRoom<'a>(pub &'a ApiConfig);

impl Room for HostRoom<'_> {
    fn check(&self, store: &dyn Store, set: &StoredScaleSet, extra: i64) -> Result<(), ScaleSetError> {
        let config = self.0;
        if config.hosts.is_empty() || extra <= 0 {
            return Ok(());
        }
        let holders = holders(store, config)?;
        let own: Vec<InstanceRecord> =
            store.instances_of(&SetKey::of(set))?.into_iter().map(|o| o.value).filter(|r| r.is_counted()).collect();
        let refs: Vec<&InstanceRecord> = own.iter().collect();
        let zones = herd_reconciler::plan::place(&set.model.zones, &refs, extra as usize);
        let requests: Vec<herd_capacity::Request> = zones
            .into_iter()
            .enumerate()
            .map(|(i, z)| herd_reconciler::capacity::request(set, InstanceId(u64::MAX - i as u64), z, &config.skus))
            .collect();
        herd_capacity::check_regular_room(&config.hosts, &holders, &requests).map_err(|s| {
            ScaleSetError::Invalid(FieldError::new(
                "sku.capacity",
                format!("{} more Regular instance(s) of {} do not fit on the hosts: {s}", extra, set.model.sku.name),
            ))
        })
    }
}
