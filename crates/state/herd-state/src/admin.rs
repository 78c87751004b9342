//! What an operator reads when the store is in doubt: records in quarantine, instances left
//! unmanaged (`--keep-orphans`), and a check that decodes every record and runs the backend's
//! own integrity check.
//!
//! Why here: a corrupt record is quarantined instead of stopping the server (see
//! `herd_store::quarantine`), and every record type is known here; the same check serves
//! `GET /v1/store/check` and the offline `herd store check --data-dir` against a stopped server.

use crate::keys::CounterKey;
use crate::records::StateError;
use chrono::{DateTime, Utc};
use herd_store::{quarantine::Quarantined, Kind, Store, StoreError, StoreExt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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

/// Instances kept running without a record at the operator's request (`--keep-orphans`):
/// listed by `herd server status`, never destroyed by the reconciler. Key: `group/set/id`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unmanaged {
    /// Each instance and when it was left unmanaged.
    pub instances: BTreeMap<String, DateTime<Utc>>,
}

/// The store key (under the counters) of the [`Unmanaged`] list.
pub const UNMANAGED_KEY: &str = CounterKey::UnmanagedInstances.as_str();

/// The unmanaged instances. If the list itself is corrupt, it shows up among the quarantined
/// records instead, and this reads as none.
pub fn unmanaged_instances(store: &dyn Store) -> Result<Unmanaged, StateError> {
    match store.get_as::<Unmanaged>(Kind::Counter, UNMANAGED_KEY) {
        Ok(o) => Ok(o.map(|o| o.value).unwrap_or_default()),
        Err(StoreError::Codec(_)) => Ok(Unmanaged::default()),
        Err(e) => Err(e.into()),
    }
}

/// Every record in quarantine now.
pub fn quarantined_records(store: &dyn Store) -> Vec<QuarantinedRecord> {
    store.quarantine().map(|q| q.list()).unwrap_or_default().into_iter().map(quarantined).collect()
}

/// How the record types defined above the state layer (the autoscaler's metric sources and
/// evaluation history) are decoded; `Err(reason)` when a value is not one.
pub struct UpperDecoders {
    pub metric_source: fn(serde_json::Value) -> Result<(), String>,
    pub autoscale_history: fn(serde_json::Value) -> Result<(), String>,
}

/// Decodes `v` as the type the server reads `kind` as; `Err(reason)` if it does not.
fn decode(kind: Kind, v: serde_json::Value, upper: &UpperDecoders) -> Result<(), String> {
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
        Kind::NetworkSecurityGroup => as_::<herd_model::nsg::NetworkSecurityGroup>(v),
        Kind::JoinToken => as_::<herd_model::join_token::JoinTokenRecord>(v),
        Kind::Host => as_::<herd_model::host::HostRecord>(v),
        Kind::ModelHistory => as_::<scale_set::ScaleSetModel>(v),
        Kind::AutoscaleSetting => as_::<herd_autoscale::AutoscaleSetting>(v),
        Kind::Secret => match v.get("sealed") {
            Some(serde_json::Value::String(_)) => Ok(()),
            _ => Err("a secret must be a sealed value ({\"sealed\": \"...\"})".into()),
        },
        Kind::MetricSource => (upper.metric_source)(v),
        Kind::AutoscaleHistory => (upper.autoscale_history)(v),
        // Server-owned bookkeeping: JSON is all that is required of it here.
        Kind::Counter | Kind::MetricSeries | Kind::Meter => Ok(()),
    }
}

/// Checks every record of `store` and the backend's integrity. Records that are not JSON are
/// found through the store's quarantine (the backend skips them when listing).
pub fn check(store: &dyn Store, upper: &UpperDecoders) -> Result<StoreCheck, StateError> {
    let mut out = StoreCheck { integrity: store.integrity_check()?, ..Default::default() };
    for kind in &Kind::ALL {
        for o in store.list(*kind, "")? {
            out.records += 1;
            let key = o.key.clone();
            let decoded = decode(*kind, o.value, upper);
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

fn quarantined(q: Quarantined) -> QuarantinedRecord {
    QuarantinedRecord { kind: q.kind.as_str().into(), key: q.key, reason: q.reason, since: q.since }
}

/// Prometheus lines for the quarantine.
pub fn quarantine_metrics(store: &dyn Store) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use herd_store::{Expect, WriteOp};

    const ANY: UpperDecoders = UpperDecoders { metric_source: |_| Ok(()), autoscale_history: |_| Ok(()) };

    #[test]
    fn check_finds_an_undecodable_record_and_a_corrupt_unmanaged_list_reads_as_none() {
        let store = crate::testkit::store();
        let clean = check(&store, &ANY).unwrap();
        assert!(clean.ok && clean.undecodable.is_empty(), "{clean:?}");
        store
            .txn(vec![WriteOp::put(Kind::Group, "rg", &serde_json::json!("not a group"), Expect::Absent).unwrap()])
            .unwrap();
        let found = check(&store, &ANY).unwrap();
        assert!(!found.ok);
        assert_eq!((found.undecodable[0].kind.as_str(), found.undecodable[0].key.as_str()), ("group", "rg"));
        assert_eq!(quarantined_records(&store).len(), 1, "the check quarantines what it cannot decode");
        store
            .txn(vec![WriteOp::put(Kind::Counter, UNMANAGED_KEY, &serde_json::json!(7), Expect::Absent).unwrap()])
            .unwrap();
        assert_eq!(unmanaged_instances(&store).unwrap(), Unmanaged::default());
        assert!(
            quarantine_metrics(&store).contains("herd_store_quarantined_records 2"),
            "{}",
            quarantine_metrics(&store)
        );
    }
}
