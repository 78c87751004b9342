//! Which names a cost request may ask about: a set that exists or was metered, a group that
//! exists or has meters.
//!
//! Why: cost is read from the stored meters, which outlive their sets (a deleted set's cost
//! stays visible), so "does not exist" for a cost request means neither a record nor a meter.

use crate::keys::{GroupKey, SetKey};
use crate::records::StateError;
use herd_store::{Kind, Store};

/// The set exists or has a meter.
pub fn set_has_cost_records(store: &dyn Store, set: &SetKey) -> Result<bool, StateError> {
    let key = set.to_string();
    Ok(store.get(Kind::ScaleSet, &key)?.is_some() || store.get(Kind::Meter, &key)?.is_some())
}

/// The group exists or has meters.
pub fn group_has_cost_records(store: &dyn Store, group: &GroupKey) -> Result<bool, StateError> {
    Ok(store.get(Kind::Group, &group.to_string())?.is_some() || !store.list(Kind::Meter, &group.children())?.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{Expected, Records};
    use crate::testkit::{group, set_name};

    #[test]
    fn a_meter_alone_keeps_a_name_known() {
        let store = crate::testkit::store();
        let key = SetKey::new(group("rg"), set_name("web"));
        assert!(!set_has_cost_records(&store, &key).unwrap());
        assert!(!group_has_cost_records(&store, &GroupKey::new("rg")).unwrap());
        store.put_meter(&key, &serde_json::json!({}), Expected::Absent).unwrap();
        assert!(set_has_cost_records(&store, &key).unwrap());
        assert!(group_has_cost_records(&store, &GroupKey::new("rg")).unwrap());
    }
}
