//! `GET /v1/server/status` and `GET /v1/store/check`: what an operator needs when the store
//! is in doubt.
//!
//! Why: a corrupt record is quarantined instead of stopping the server (see
//! `herd_store::quarantine`), and instances kept with `--keep-orphans` run unmanaged; both must
//! be visible with their keys, not only in a log line. The store check decodes every record as
//! the server would and runs the backend's own integrity check; the same function serves the
//! offline `herd store check --data-dir` against a stopped server.

use crate::{error::ApiError, state::AppState};
use axum::{extract::State, Json};
use herd_store::{Kind, Store, StoreExt};
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
}

/// One quarantined record.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuarantinedRecord {
    /// The record's kind (`instance`, `vmss`, `vmss-status`, ...).
    pub kind: String,
    pub key: String,
    /// Why it could not be decoded.
    pub reason: String,
    pub since: chrono::DateTime<chrono::Utc>,
}

/// One unmanaged instance.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnmanagedInstance {
    /// `group/set/id`.
    pub key: String,
    pub since: chrono::DateTime<chrono::Utc>,
}

/// What `herd store check` found.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoreCheck {
    /// No problem found.
    pub ok: bool,
    /// Records read.
    pub records: u64,
    /// Records that do not decode, with the reason.
    pub undecodable: Vec<QuarantinedRecord>,
    /// Problems the backend's integrity check reported (SQLite `PRAGMA integrity_check`).
    pub integrity: Vec<String>,
}

/// Decodes `v` as the type the server reads `kind` as; `Err(reason)` if it does not.
fn decode(kind: Kind, v: serde_json::Value) -> Result<(), String> {
    use herd_model::{group, image, instance, network, scale_set};
    fn as_<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<(), String> {
        serde_json::from_value::<T>(v).map(|_| ()).map_err(|e| e.to_string())
    }
    match kind {
        Kind::Group => as_::<group::ResourceGroup>(v),
        Kind::ScaleSet => as_::<scale_set::StoredScaleSet>(v),
        Kind::ScaleSetStatus => as_::<scale_set::ScaleSetStatus>(v),
        Kind::Instance => as_::<instance::InstanceRecord>(v),
        Kind::Image => as_::<image::Image>(v),
        Kind::VirtualNetwork => as_::<network::VirtualNetwork>(v),
        Kind::PublicIp => as_::<network::PublicIpAddress>(v),
        Kind::LoadBalancer => as_::<network::LoadBalancer>(v),
        Kind::ModelHistory => as_::<scale_set::ScaleSetModel>(v),
        Kind::AutoscaleSetting => as_::<herd_autoscale::AutoscaleSetting>(v),
        Kind::Secret => match v.get("sealed") {
            Some(serde_json::Value::String(_)) => Ok(()),
            _ => Err("a secret must be a sealed value ({\"sealed\": \"...\"})".into()),
        },
        Kind::MetricSource => as_::<herd_autoscaler::runner::StoredSource>(v),
        Kind::AutoscaleHistory => as_::<herd_autoscaler::runner::SettingRuntime>(v),
        // Server-owned bookkeeping: JSON is all that is required of it here.
        Kind::Counter | Kind::MetricSeries | Kind::Meter => Ok(()),
    }
}

/// Checks every record of `store` and the backend's integrity. Records that are not JSON are
/// found through the store's quarantine (the backend skips them when listing).
pub fn check(store: &dyn Store) -> Result<StoreCheck, herd_store::StoreError> {
    let mut out = StoreCheck { integrity: store.integrity_check()?, ..Default::default() };
    for kind in &Kind::ALL {
        for o in store.list(*kind, "")? {
            out.records += 1;
            let key = o.key.clone();
            let decoded = decode(*kind, o.value);
            if decoded.is_ok() {
                // Repaired by hand since it was quarantined: readable again.
                if let Some(q) = store.quarantine() {
                    q.clear(*kind, &key);
                }
            }
            if let Err(reason) = decoded {
                if let Some(q) = store.quarantine() {
                    q.add(*kind, &o.key, &reason);
                }
                out.undecodable.push(QuarantinedRecord {
                    kind: kind.as_str().into(),
                    key: o.key,
                    reason,
                    since: chrono::Utc::now(),
                });
            }
        }
    }
    for q in store.quarantine().map(|q| q.list()).unwrap_or_default() {
        if !out.undecodable.iter().any(|u| u.kind == q.kind.as_str() && u.key == q.key) {
            out.records += u64::from(q.reason.starts_with("not JSON"));
            out.undecodable.push(quarantined(q));
        }
    }
    out.undecodable.sort_by(|a, b| (&a.kind, &a.key).cmp(&(&b.kind, &b.key)));
    out.ok = out.undecodable.is_empty() && out.integrity.is_empty();
    Ok(out)
}

fn quarantined(q: herd_store::quarantine::Quarantined) -> QuarantinedRecord {
    QuarantinedRecord { kind: q.kind.as_str().into(), key: q.key, reason: q.reason, since: q.since }
}

/// The cluster id, quarantined records and unmanaged instances.
#[utoipa::path(get, path = "/v1/server/status", tag = "server", responses((status = 200, body = ServerStatus)))]
pub async fn status(State(state): State<AppState>) -> Result<Json<ServerStatus>, ApiError> {
    // If the list itself is corrupt, it shows up among the quarantined records instead.
    let unmanaged = match state
        .store
        .get_as::<herd_reconciler::orphans::Unmanaged>(Kind::Counter, herd_reconciler::orphans::UNMANAGED_KEY)
    {
        Ok(o) => o.map(|o| o.value).unwrap_or_default(),
        Err(herd_store::StoreError::Codec(_)) => Default::default(),
        Err(e) => return Err(e.into()),
    };
    Ok(Json(ServerStatus {
        cluster_id: state.config.cluster_id.clone(),
        driver: state.config.driver.clone(),
        quarantined: state
            .store
            .quarantine()
            .map(|q| q.list())
            .unwrap_or_default()
            .into_iter()
            .map(quarantined)
            .collect(),
        unmanaged_instances: unmanaged
            .instances
            .into_iter()
            .map(|(key, since)| UnmanagedInstance { key, since })
            .collect(),
    }))
}

/// Decodes every stored record and runs the store's integrity check (read-only; records that
/// fail are quarantined).
#[utoipa::path(get, path = "/v1/store/check", tag = "server", responses((status = 200, body = StoreCheck)))]
pub async fn store_check(State(state): State<AppState>) -> Result<Json<StoreCheck>, ApiError> {
    Ok(Json(state.run(|s| Ok(check(s)?)).await?))
}

/// Prometheus lines for the quarantine.
pub fn metrics(store: &dyn Store) -> String {
    let (now, total) = store.quarantine().map_or((0, 0), |q| (q.list().len(), q.total()));
    format!(
        "# HELP herd_store_quarantined_records Stored records that cannot be decoded, skipped by readers now.\n\
         # TYPE herd_store_quarantined_records gauge\n\
         herd_store_quarantined_records {now}\n\
         # HELP herd_store_quarantined_total Records quarantined since the server started.\n\
         # TYPE herd_store_quarantined_total counter\n\
         herd_store_quarantined_total {total}\n"
    )
}
