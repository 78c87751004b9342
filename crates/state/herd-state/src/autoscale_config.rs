//! Autoscale settings and named metric sources, as a user writes them: create or replace
//! (compare-and-swap), delete with what belongs to them (a setting's evaluation history, a
//! source's sealed protected settings), each with its log line in the same transaction.
//!
//! Why here: the records' types are the autoscale crates' (which depend on this one), so the
//! operations are generic over them; the keys, the kinds and what is written together are the
//! state layer's.

use crate::activity::user_event;
use crate::keys::{AutoscaleKey, SourceSecretKey};
use crate::records::{Expected, StateError, Versioned};
use chrono::{DateTime, Utc};
use herd_store::seal::Sealer;
use herd_store::{Expect, Kind, Store, StoreExt, WriteOp};
use serde::{de::DeserializeOwned, Serialize};

/// The setting as a user writes it (`herd-autoscale`'s model), named here for the API.
pub use herd_autoscale::AutoscaleSetting;

/// Which user-written record: a setting or a metric source. Both are keyed `group/name`, so
/// one reader serves each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Config {
    Setting,
    Source,
}

impl Config {
    fn kind(self) -> Kind {
        match self {
            Config::Setting => Kind::AutoscaleSetting,
            Config::Source => Kind::MetricSource,
        }
    }
}

/// Every record of `what` of group `group`.
pub fn of_group<T: DeserializeOwned>(
    store: &dyn Store,
    what: Config,
    group: &str,
) -> Result<Vec<Versioned<T>>, StateError> {
    Ok(store.list_as::<T>(what.kind(), &AutoscaleKey::group_prefix(group))?)
}

/// Record `name` of `what` of group `group`, if stored.
pub fn named<T: DeserializeOwned>(
    store: &dyn Store,
    what: Config,
    group: &str,
    name: &str,
) -> Result<Option<Versioned<T>>, StateError> {
    Ok(store.get_as::<T>(what.kind(), &AutoscaleKey::new(group, name).to_string())?)
}

/// What a write logs: the resource it is about, and the message.
pub struct Logged<'a> {
    pub resource: &'a str,
    pub message: String,
    pub now: DateTime<Utc>,
}

/// Writes setting `name` of `group` as a create or a compare-and-swap. Returns the revision.
pub fn put_setting<T: Serialize>(
    store: &dyn Store,
    (group, name): (&str, &str),
    setting: &T,
    expected: Expected,
    log: Logged<'_>,
) -> Result<u64, StateError> {
    let ev = user_event(log.now, group, log.resource, "WriteAutoscaleSetting", log.message);
    let key = AutoscaleKey::new(group, name).to_string();
    Ok(store.txn(vec![
        WriteOp::put(Kind::AutoscaleSetting, key, setting, Expect::from(expected))?,
        WriteOp::Activity(ev),
    ])?)
}

/// Deletes the setting stored as `cur` (at its revision) with its evaluation history.
pub fn delete_setting<T>(
    store: &dyn Store,
    group: &str,
    name: &str,
    cur: &Versioned<T>,
    now: DateTime<Utc>,
) -> Result<(), StateError> {
    let ev = user_event(now, group, name, "DeleteAutoscaleSetting", format!("autoscale setting '{name}' deleted"));
    store.txn(vec![
        WriteOp::delete(Kind::AutoscaleSetting, cur.key.clone(), Expect::Revision(cur.revision)),
        WriteOp::delete(Kind::AutoscaleHistory, cur.key.clone(), Expect::Any),
        WriteOp::Activity(ev),
    ])?;
    Ok(())
}

/// Writes source `name` of `group` whole, with its protected settings sealed apart.
pub fn put_source<T: Serialize>(
    store: &dyn Store,
    sealer: &Sealer,
    (group, name): (&str, &str),
    source: &T,
    protected: &serde_json::Value,
    log: Logged<'_>,
) -> Result<(), StateError> {
    let ev = user_event(log.now, group, log.resource, "WriteMetricSource", log.message);
    store.txn(vec![
        WriteOp::put(Kind::MetricSource, AutoscaleKey::new(group, name).to_string(), source, Expect::Any)?,
        WriteOp::Put {
            kind: Kind::Secret,
            key: SourceSecretKey::new(group, name).to_string(),
            value: sealer.seal(protected)?,
            expect: Expect::Any,
        },
        WriteOp::Activity(ev),
    ])?;
    Ok(())
}

/// Deletes source `name` of `group` with its sealed secrets; `false` when there is none.
pub fn delete_source(store: &dyn Store, group: &str, name: &str, now: DateTime<Utc>) -> Result<bool, StateError> {
    let key = AutoscaleKey::new(group, name).to_string();
    let Some(o) = store.get(Kind::MetricSource, &key)? else { return Ok(false) };
    let ev = user_event(now, group, name, "DeleteMetricSource", format!("metric source '{name}' deleted"));
    store.txn(vec![
        WriteOp::delete(Kind::MetricSource, key, Expect::Revision(o.revision)),
        WriteOp::delete(Kind::Secret, SourceSecretKey::new(group, name).to_string(), Expect::Any),
        WriteOp::Activity(ev),
    ])?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{activity_count, now, raw, store};
    use crate::AutoscaleRecords;
    use serde_json::json;

    fn log(m: &str) -> Logged<'static> {
        Logged { resource: "web", message: m.into(), now: now() }
    }

    #[test]
    fn a_setting_is_written_compare_and_swap_and_deleted_with_its_history() {
        let store = store();
        let rev = put_setting(&store, ("RG", "Cpu"), &json!({"n": 1}), Expected::Absent, log("created")).unwrap();
        let stale = put_setting(&store, ("RG", "Cpu"), &json!({"n": 2}), Expected::Revision(rev + 5), log("x"));
        assert!(stale.unwrap_err().is_conflict());
        let cur = named::<serde_json::Value>(&store, Config::Setting, "RG", "cpu")
            .unwrap()
            .expect("keys are case-insensitive");
        assert_eq!((cur.revision, cur.value["n"].as_u64()), (rev, Some(1)));
        assert_eq!(of_group::<serde_json::Value>(&store, Config::Setting, "RG").unwrap().len(), 1);
        store.put_autoscale_runtime(&AutoscaleKey::new("RG", "Cpu"), &json!({"history": []})).unwrap();
        delete_setting(&store, "RG", "Cpu", &cur, now()).unwrap();
        assert!(named::<serde_json::Value>(&store, Config::Setting, "RG", "Cpu").unwrap().is_none());
        assert!(raw(&store, Kind::AutoscaleHistory, &cur.key).is_none(), "its history goes with it");
        assert_eq!(activity_count(&store), 2);
    }

    #[test]
    fn a_source_keeps_its_protected_settings_sealed_apart() {
        let store = store();
        let sealer = Sealer::ephemeral();
        put_source(&store, &sealer, ("RG", "Queue"), &json!({"name": "Queue"}), &json!({"password": "pw"}), log("w"))
            .unwrap();
        let sealed = store.sealed_source_secret(&SourceSecretKey::new("RG", "Queue")).unwrap().unwrap();
        assert!(!sealed.to_string().contains("pw"));
        assert_eq!(sealer.open::<serde_json::Value>(&sealed).unwrap()["password"], "pw");
        assert!(named::<serde_json::Value>(&store, Config::Source, "RG", "queue").unwrap().is_some());
        assert!(delete_source(&store, "RG", "Queue", now()).unwrap());
        assert!(store.sealed_source_secret(&SourceSecretKey::new("RG", "Queue")).unwrap().is_none());
        assert!(!delete_source(&store, "RG", "Queue", now()).unwrap(), "gone already");
    }
}
