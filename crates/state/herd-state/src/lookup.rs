//! Reading one named resource a request is about: found, missing, or unreadable.
//!
//! Why: every request on a group or a set first reads it, and the three outcomes are answered
//! differently (404, 409 for a record in quarantine, 500 for a broken store). Here they are
//! one typed error, with the texts the API has always answered, so no handler maps a store
//! error by hand.

use crate::keys::SetKey;
use crate::records::{StateError, Versioned};
use herd_model::{group::ResourceGroup, scale_set::StoredScaleSet, GroupName, ScaleSetName};
use herd_store::{Kind, Store, StoreError, StoreExt};
use serde::de::DeserializeOwned;

/// Why a named resource cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("resource group '{0}' does not exist")]
    NoGroup(GroupName),
    #[error("scale set '{set}' does not exist in resource group '{group}'")]
    NoSet { group: GroupName, set: ScaleSetName },
    /// The record is stored but does not decode: it is quarantined, and the resource with it.
    #[error(
        "{what} cannot be read: its stored record is corrupt and quarantined (see 'herd server status' and 'herd store check')"
    )]
    Quarantined {
        what: String,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

/// Reads one record; a record that does not decode is [`LookupError::Quarantined`] as `what`.
fn read<T: DeserializeOwned>(
    store: &dyn Store,
    kind: Kind,
    key: &str,
    what: impl FnOnce() -> String,
) -> Result<Option<Versioned<T>>, LookupError> {
    match store.get_as::<T>(kind, key) {
        Ok(o) => Ok(o),
        Err(source @ StoreError::Codec(_)) => Err(LookupError::Quarantined { what: what(), source }),
        Err(e) => Err(StateError::from(e).into()),
    }
}

/// The resource group `name`.
pub fn group(store: &dyn Store, name: &GroupName) -> Result<Versioned<ResourceGroup>, LookupError> {
    read(store, Kind::Group, name.as_str(), || format!("resource group '{name}'"))?
        .ok_or_else(|| LookupError::NoGroup(name.clone()))
}

/// The scale set `set` of group `group` (the group itself is not read).
pub fn scale_set(
    store: &dyn Store,
    group: &GroupName,
    set: &ScaleSetName,
) -> Result<Versioned<StoredScaleSet>, LookupError> {
    let key = SetKey::new(group.clone(), set.clone());
    read(store, Kind::ScaleSet, &key.to_string(), || format!("scale set '{set}'"))?
        .ok_or_else(|| LookupError::NoSet { group: group.clone(), set: set.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_store::{Expect, SqliteStore, WriteOp};

    #[test]
    fn missing_and_quarantined_are_told_apart() {
        let store = SqliteStore::in_memory().unwrap();
        let rg = GroupName::new("rg").unwrap();
        let err = group(&store, &rg).unwrap_err();
        assert!(matches!(err, LookupError::NoGroup(_)), "{err:?}");
        assert_eq!(err.to_string(), "resource group 'rg' does not exist");
        store
            .txn(vec![WriteOp::put(Kind::Group, "rg", &serde_json::json!("not a group"), Expect::Absent).unwrap()])
            .unwrap();
        let err = group(&store, &rg).unwrap_err();
        assert!(matches!(err, LookupError::Quarantined { .. }), "{err:?}");
        assert!(err.to_string().starts_with("resource group 'rg' cannot be read"), "{err}");
        let web = ScaleSetName::new("web").unwrap();
        let err = scale_set(&store, &rg, &web).unwrap_err();
        assert_eq!(err.to_string(), "scale set 'web' does not exist in resource group 'rg'");
    }
}
