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
use herd_state::placement::{self, HostRoom};
use serde::Serialize;

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

/// Lists the hosts with their capacity and what Regular and Spot instances reserve.
#[utoipa::path(get, path = "/v1/hosts", tag = "hosts",
    responses((status = 200, body = HostsView), (status = 401, body = ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<HostsView>, ApiError> {
    let config = state.config.clone();
    let usage = state.run(move |s| Ok(placement::host_usage(s, &config.hosts, &config.skus)?)).await?;
    let hosts = usage
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

/// The hosts' room for a scale-out under this server's hosts and SKUs (see
/// [`placement::HostRoom`]).
pub(crate) fn room(config: &ApiConfig) -> HostRoom<'_> {
    HostRoom { hosts: &config.hosts, skus: &config.skus }
}
