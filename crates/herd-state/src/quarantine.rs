//! Which scale sets a quarantined record blocks.
//!
//! Why: a record that cannot be decoded is quarantined by the store and skipped by lists (see
//! `herd_store::quarantine`). When it is a set's model, its status or one of its instances, the
//! set is not reconciled and its instances are not orphans: they have a record, just not a
//! readable one. Which kinds belong to a set, and how their keys name it, is this module's.

use crate::records::{Quarantined, Store};
use herd_store::Kind;
use std::collections::BTreeMap;

/// The set key (`group/set`) a quarantined record blocks, if it belongs to a scale set: the
/// set itself, its status, or one of its instances.
pub fn quarantined_set_key(q: &Quarantined) -> Option<String> {
    match q.kind {
        Kind::ScaleSet | Kind::ScaleSetStatus => Some(q.key.clone()),
        Kind::Instance => q.key.rsplit_once('/').map(|(s, _)| s.to_string()),
        _ => None,
    }
}

/// Every scale set with a quarantined record, with those records.
pub fn quarantined_sets(store: &dyn Store) -> BTreeMap<String, Vec<Quarantined>> {
    let mut out: BTreeMap<String, Vec<Quarantined>> = BTreeMap::new();
    for q in store.quarantine().map(|q| q.list()).unwrap_or_default() {
        if let Some(set) = quarantined_set_key(&q) {
            out.entry(set).or_default().push(q);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Records;
    use herd_store::{Expect, SqliteStore, WriteOp};

    #[test]
    fn undecodable_records_block_their_set() {
        let s = SqliteStore::in_memory().unwrap();
        let bad = serde_json::json!("not a record");
        s.txn(vec![
            WriteOp::put(Kind::Instance, "rg/web/0000000001", &bad, Expect::Absent).unwrap(),
            WriteOp::put(Kind::ScaleSetStatus, "rg/api", &bad, Expect::Absent).unwrap(),
            WriteOp::put(Kind::Image, "a:b:c:1", &bad, Expect::Absent).unwrap(),
        ])
        .unwrap();
        assert!(s.instances().unwrap().is_empty());
        assert!(s.scale_set_statuses().unwrap().is_empty());
        assert!(s.images().unwrap().is_empty());
        let q = quarantined_sets(&s);
        assert_eq!(q.keys().map(String::as_str).collect::<Vec<_>>(), ["rg/api", "rg/web"], "images block no set");
        assert_eq!(q["rg/web"][0].key, "rg/web/0000000001");
    }
}
