//! `GET /v1/server/status` and `GET /v1/store/check`: what an operator needs when the store
//! is in doubt.
//!
//! Why: a corrupt record is quarantined instead of stopping the server (see
//! `herd_state::admin`), and instances kept with `--keep-orphans` run unmanaged; both must
//! be visible with their keys, not only in a log line. The store check decodes every record as
//! the server would and runs the backend's own integrity check; the same function serves the
//! offline `herd store check --data-dir` against a stopped server.

use crate::{error::ApiError, state::AppState};
use axum::{extract::State, Json};
use herd_state::admin::{self, UpperDecoders};
use herd_state::{StateError, Store};
use serde::{Deserialize, Serialize};

/// The server's cluster id, quarantined records and unmanaged instances.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerStatus {
    /// The id recorded in the data dir (`cluster-id`) and in every instance of this cluster.
    pub cluster_id: String,
    pub driver: String,
    /// Records that cannot be decoded: skipped by every reader, their sets Failed.
    pub quarantined: Vec<QuarantinedRecord>,
    /// Instances kept running without a record (`herd server --keep-orphans`): never destroyed
    /// by the reconciler, not managed.
    pub unmanaged_instances: Vec<UnmanagedInstance>,
    /// Each background controller: its last run, how long it took, its last error and what it
    /// waits for (also `GET /v1/server/controllers`).
    pub controllers: Vec<ControllerStatus>,
}

pub use herd_model::controller::ControllerStatus;

pub use herd_state::admin::{QuarantinedRecord, StoreCheck};

/// One unmanaged instance.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnmanagedInstance {
    /// `group/set/id`.
    pub key: String,
    pub since: chrono::DateTime<chrono::Utc>,
}

/// The autoscaler's record types, which the state layer cannot name.
const AUTOSCALER_DECODERS: UpperDecoders = UpperDecoders {
    metric_source: |v| decode_as::<herd_state::autoscale_records::StoredSource>(v),
    autoscale_history: |v| decode_as::<herd_state::autoscale_records::SettingRuntime>(v),
};

fn decode_as<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<(), String> {
    serde_json::from_value::<T>(v).map(|_| ()).map_err(|e| e.to_string())
}

/// Checks every record of `store` and the backend's integrity (see [`admin::check`]).
pub fn check(store: &dyn Store) -> Result<StoreCheck, StateError> {
    admin::check(store, &AUTOSCALER_DECODERS)
}

/// The cluster id, quarantined records and unmanaged instances.
#[utoipa::path(get, path = "/v1/server/status", tag = "server", responses((status = 200, body = ServerStatus)))]
pub async fn status(State(state): State<AppState>) -> Result<Json<ServerStatus>, ApiError> {
    let (unmanaged, quarantined) =
        state.run(|s| Ok((admin::unmanaged_instances(s)?, admin::quarantined_records(s)))).await?;
    Ok(Json(ServerStatus {
        cluster_id: state.config.cluster_id.clone(),
        driver: state.config.driver.clone(),
        quarantined,
        unmanaged_instances: unmanaged
            .instances
            .into_iter()
            .map(|(key, since)| UnmanagedInstance { key, since })
            .collect(),
        controllers: state.controllers.snapshot(),
    }))
}

/// Each background controller of the server (reconciler, load balancer, metadata, billing,
/// autoscale, feed compaction): its phase, last run and duration, failures and last error, and
/// what it waits for.
#[utoipa::path(get, path = "/v1/server/controllers", tag = "server", responses((status = 200, body = [ControllerStatus])))]
pub async fn controllers(State(state): State<AppState>) -> Json<Vec<ControllerStatus>> {
    Json(state.controllers.snapshot())
}

/// Decodes every stored record and runs the store's integrity check (read-only; records that
/// fail are quarantined).
#[utoipa::path(get, path = "/v1/store/check", tag = "server", responses((status = 200, body = StoreCheck)))]
pub async fn store_check(State(state): State<AppState>) -> Result<Json<StoreCheck>, ApiError> {
    Ok(Json(state.run(|s| Ok(check(s)?)).await?))
}

/// Prometheus lines for the quarantine.
pub fn metrics(store: &dyn Store) -> String {
    admin::quarantine_metrics(store)
}
