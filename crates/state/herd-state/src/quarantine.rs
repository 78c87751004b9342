//! Records in quarantine, seen per scale set: a set with a stored record that does not decode
//! (its model, its status or one of its instances) is not reconciled and shows as Failed.
//!
//! Why here: both the reconciler (which skips such a set) and the API (which shows it Failed,
//! with the reason) derive this from the store's quarantine; one definition keeps them agreeing.

use herd_store::{quarantine::Quarantined, Kind, Store};
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

/// Why a set with quarantined records is Failed, for its status and `herd vmss show`.
pub fn failure_reason(records: &[Quarantined]) -> String {
    let list: Vec<String> = records.iter().map(|q| format!("{} '{}' ({})", q.kind.as_str(), q.key, q.reason)).collect();
    format!(
        "stored record(s) cannot be decoded and are quarantined: {}; this set is not reconciled until they are repaired or deleted (see 'herd server status' and 'herd store check')",
        list.join("; ")
    )
}
