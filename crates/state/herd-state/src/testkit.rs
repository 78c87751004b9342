//! Fixtures the operation modules' unit tests share: an in-memory store, a time, a set.

use chrono::{DateTime, TimeZone, Utc};
use herd_model::scale_set::{ScaleSetModel, StoredScaleSet};
use herd_model::{GroupName, ScaleSetName};
use herd_store::{Kind, SqliteStore, Store, StoreExt};

pub fn store() -> SqliteStore {
    SqliteStore::in_memory().expect("in-memory store")
}

pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

pub fn group(name: &str) -> GroupName {
    GroupName::new(name).unwrap()
}

pub fn set_name(name: &str) -> ScaleSetName {
    ScaleSetName::new(name).unwrap()
}

/// A model of `capacity` instances of the image `P:O:S:1`, plus `extra` merged in.
pub fn model(capacity: i64, extra: serde_json::Value) -> ScaleSetModel {
    let mut doc = serde_json::json!({
        "sku": {"name": "Standard_B1ms", "capacity": capacity},
        "virtualMachineProfile": {
            "osProfile": {"computerNamePrefix": "web"},
            "storageProfile": {"imageReference": {"publisher": "P", "offer": "O", "sku": "S", "version": "1"}}
        }
    });
    if let (Some(d), serde_json::Value::Object(e)) = (doc.as_object_mut(), extra) {
        d.extend(e);
    }
    ScaleSetModel::from_json(doc).expect("a valid model")
}

pub fn stored_set(group_name: &str, name: &str, capacity: i64) -> StoredScaleSet {
    StoredScaleSet {
        name: set_name(name),
        group: group(group_name),
        model_generation: 1,
        time_created: now(),
        deleting: false,
        model: model(capacity, serde_json::json!({})),
    }
}

/// How many activity-log entries the store holds.
pub fn activity_count(store: &dyn Store) -> usize {
    store.activity(&Default::default()).unwrap().len()
}

/// The stored value of a record, raw.
pub fn raw(store: &dyn Store, kind: Kind, key: &str) -> Option<serde_json::Value> {
    store.get_as::<serde_json::Value>(kind, key).unwrap().map(|o| o.value)
}

/// A running instance record `id` of set `web`.
pub fn record(id: u64) -> herd_model::instance::InstanceRecord {
    serde_json::from_value(serde_json::json!({
        "instanceId": id, "computerName": format!("web{id:06}"), "modelGeneration": 1,
        "state": "Running", "goal": "Running", "reachAddress": "127.128.0.4",
        "createdAt": now(), "stateSince": now(),
    }))
    .unwrap()
}

/// Stores `set` and `n` running instances of it (ids 0..n); returns the stored set.
pub fn set_with_instances(store: &dyn Store, set: &StoredScaleSet, n: u64) -> crate::Versioned<StoredScaleSet> {
    use crate::keys::SetKey;
    use herd_store::{Expect, WriteOp};
    let key = SetKey::of(set);
    let mut ops = vec![WriteOp::put(Kind::ScaleSet, key.to_string(), set, Expect::Absent).unwrap()];
    ops.extend((0..n).map(|i| {
        WriteOp::put(Kind::Instance, key.instance(herd_model::InstanceId(i)).to_string(), &record(i), Expect::Absent)
            .unwrap()
    }));
    crate::batch::commit_chunks_reapplying(store, ops, |_| -> Result<_, crate::StateError> { Ok(None) }).unwrap();
    store.get_as::<StoredScaleSet>(Kind::ScaleSet, &key.to_string()).unwrap().unwrap()
}
