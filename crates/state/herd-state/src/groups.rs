//! Resource groups: create or update one, start its deletion, read its activity log.
//!
//! Why here and not in the API: each is one atomic state change with rules of its own (a group
//! being deleted takes no new writes; deleting marks every set first, in chunks when there
//! are more than a transaction holds), and the API, the CLI's tests and later an etcd backend
//! all need those rules to hold the same way.

use crate::activity::user_event;
use crate::batch::commit_chunks_reapplying;
use crate::keys::{GroupKey, ALL};
use crate::lookup::{self, LookupError};
use crate::records::StateError;
use chrono::{DateTime, Utc};
use herd_model::activity::ActivityEvent;
use herd_model::group::{GroupProvisioningState, ResourceGroup};
use herd_model::scale_set::StoredScaleSet;
use herd_model::GroupName;
use herd_store::{ActivityFilter, Expect, Kind, Store, StoreExt, WriteOp};
use std::collections::BTreeMap;

/// Why a group operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("resource group '{0}' is being deleted")]
    Deleting(GroupName),
    /// The location is not letters, digits and '-'.
    #[error("use letters, digits and '-' (for example 'local')")]
    Location,
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error(transparent)]
    State(#[from] StateError),
}

crate::records::store_error_via_state!(GroupError);

/// What [`put_group`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Created,
    Updated,
}

/// Every resource group.
pub fn groups(store: &dyn Store) -> Result<Vec<ResourceGroup>, StateError> {
    Ok(store.list_as::<ResourceGroup>(Kind::Group, ALL)?.into_iter().map(|o| o.value).collect())
}

/// Creates group `name`, or updates its location and tags; a missing location keeps the
/// stored one (`local` for a new group). Refused while the group is being deleted.
pub fn put_group(
    store: &dyn Store,
    name: &GroupName,
    location: Option<String>,
    tags: BTreeMap<String, String>,
    now: DateTime<Utc>,
) -> Result<(Written, ResourceGroup), GroupError> {
    let existing = store.get_as::<ResourceGroup>(Kind::Group, name.as_str())?;
    if existing.as_ref().is_some_and(|e| e.value.provisioning_state == GroupProvisioningState::Deleting) {
        return Err(GroupError::Deleting(name.clone()));
    }
    let location = location.unwrap_or_else(|| existing.as_ref().map_or("local".into(), |e| e.value.location.clone()));
    if location.is_empty() || !location.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(GroupError::Location);
    }
    let rg = ResourceGroup {
        id: ResourceGroup::resource_id(name.as_str()),
        name: name.to_string(),
        location,
        tags,
        provisioning_state: GroupProvisioningState::Succeeded,
    };
    let (expect, written) = match &existing {
        Some(e) => (Expect::Revision(e.revision), Written::Updated),
        None => (Expect::Absent, Written::Created),
    };
    let verb = if written == Written::Created { "created" } else { "updated" };
    let event = user_event(now, name.as_str(), "", "WriteResourceGroup", format!("resource group {verb}"));
    store.txn(vec![WriteOp::put(Kind::Group, name.as_str(), &rg, expect)?, WriteOp::Activity(event)])?;
    Ok((written, rg))
}

/// A set's record marked for deletion, or `None` when it already is.
fn mark_deleting(s: &crate::Versioned<StoredScaleSet>) -> Result<Option<WriteOp>, StateError> {
    if s.value.deleting {
        return Ok(None);
    }
    let mut v = s.value.clone();
    v.deleting = true;
    Ok(Some(WriteOp::put(Kind::ScaleSet, s.key.clone(), &v, Expect::Revision(s.revision))?))
}

/// Starts deleting group `name`: every set in it is marked for deletion and the group is
/// marked `Deleting` (the reconciler removes it once its sets are gone), or, without sets, the
/// group is removed at once. With more sets than one transaction holds, the group and the log
/// line commit first (so no set is created in it meanwhile), then the sets in chunks; each
/// write is idempotent, so a request cut short and sent again completes it.
pub fn delete_group(store: &dyn Store, name: &GroupName, now: DateTime<Utc>) -> Result<(), GroupError> {
    let g = lookup::group(store, name)?;
    let sets = store.list_as::<StoredScaleSet>(Kind::ScaleSet, &GroupKey::new(name.as_str()).children())?;
    let mut ops = Vec::new();
    for s in &sets {
        ops.extend(mark_deleting(s)?);
    }
    if sets.is_empty() {
        ops.push(WriteOp::delete(Kind::Group, name.as_str(), Expect::Revision(g.revision)));
    } else {
        let mut rg = g.value.clone();
        rg.provisioning_state = GroupProvisioningState::Deleting;
        ops.push(WriteOp::put(Kind::Group, name.as_str(), &rg, Expect::Revision(g.revision))?);
    }
    let msg = format!("resource group deletion started ({} scale set(s) to delete)", sets.len());
    ops.push(WriteOp::Activity(user_event(now, name.as_str(), "", "DeleteResourceGroup", msg)));
    if ops.len() <= herd_store::MAX_TXN_OPS && herd_store::check_txn(&ops).is_ok() {
        store.txn(ops)?;
        return Ok(());
    }
    let n_sets = ops.len() - 2;
    let head = ops.split_off(n_sets);
    store.txn(head)?;
    commit_chunks_reapplying(store, ops, |key| -> Result<_, GroupError> {
        match store.get_as::<StoredScaleSet>(Kind::ScaleSet, key)? {
            Some(s) => Ok(mark_deleting(&s)?),
            None => Ok(None),
        }
    })
}

/// What an activity-log read selects (a group's events, of one resource, since a time).
#[derive(Debug, Clone, Default)]
pub struct ActivityQuery {
    pub resource: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub limit: Option<usize>,
}

/// The activity log of group `group`, oldest first. A group that no longer exists still has
/// its log; only a group with neither is missing.
pub fn activity_log(store: &dyn Store, group: &GroupName, q: ActivityQuery) -> Result<Vec<ActivityEvent>, GroupError> {
    let exists = store.get(Kind::Group, group.as_str())?.is_some();
    let filter = ActivityFilter {
        resource_group: Some(group.to_string()),
        resource: q.resource,
        since: q.since,
        limit: q.limit,
    };
    let events = store.activity(&filter)?;
    if !exists && events.is_empty() {
        return Err(LookupError::NoGroup(group.clone()).into());
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{activity_count, group, now, store, stored_set};

    fn put_sets(store: &dyn Store, g: &str, n: usize) {
        let ops = (0..n)
            .map(|i| {
                let s = stored_set(g, &format!("s{i}"), 1);
                WriteOp::put(Kind::ScaleSet, s.key(), &s, Expect::Absent).unwrap()
            })
            .collect();
        commit_chunks_reapplying(store, ops, |_| -> Result<_, StateError> { Ok(None) }).unwrap();
    }

    #[test]
    fn put_group_creates_then_updates_keeping_the_location_and_logs_each() {
        let store = store();
        let rg = group("rg");
        let (w, g) = put_group(&store, &rg, None, BTreeMap::new(), now()).unwrap();
        assert_eq!((w, g.location.as_str()), (Written::Created, "local"));
        let tags = BTreeMap::from([("env".to_string(), "prod".to_string())]);
        let (w, g) = put_group(&store, &rg, None, tags.clone(), now()).unwrap();
        assert_eq!((w, g.location.as_str(), &g.tags), (Written::Updated, "local", &tags));
        assert_eq!(groups(&store).unwrap().len(), 1);
        assert_eq!(activity_count(&store), 2);
        let err = put_group(&store, &rg, Some("no where".into()), BTreeMap::new(), now()).unwrap_err();
        assert!(matches!(err, GroupError::Location), "{err:?}");
        assert_eq!(activity_count(&store), 2, "a refused write logs nothing");
    }

    #[test]
    fn delete_group_removes_an_empty_group_and_marks_a_full_one() {
        let store = store();
        put_group(&store, &group("empty"), None, BTreeMap::new(), now()).unwrap();
        delete_group(&store, &group("empty"), now()).unwrap();
        assert!(store.get(Kind::Group, "empty").unwrap().is_none());
        let err = delete_group(&store, &group("empty"), now()).unwrap_err();
        assert_eq!(err.to_string(), "resource group 'empty' does not exist");

        put_group(&store, &group("rg"), None, BTreeMap::new(), now()).unwrap();
        put_sets(&store, "rg", 2);
        delete_group(&store, &group("rg"), now()).unwrap();
        let rg = lookup::group(&store, &group("rg")).unwrap();
        assert_eq!(rg.value.provisioning_state, GroupProvisioningState::Deleting);
        let sets = store.list_as::<StoredScaleSet>(Kind::ScaleSet, "rg/").unwrap();
        assert!(sets.iter().all(|s| s.value.deleting), "every set is marked");
        let err = put_group(&store, &group("rg"), None, BTreeMap::new(), now()).unwrap_err();
        assert_eq!(err.to_string(), "resource group 'rg' is being deleted");
    }

    #[test]
    fn delete_group_with_more_sets_than_a_transaction_holds_marks_them_all() {
        let store = store();
        put_group(&store, &group("big"), None, BTreeMap::new(), now()).unwrap();
        let n = herd_store::MAX_TXN_OPS + 10;
        put_sets(&store, "big", n);
        delete_group(&store, &group("big"), now()).unwrap();
        let sets = store.list_as::<StoredScaleSet>(Kind::ScaleSet, "big/").unwrap();
        assert_eq!(sets.len(), n);
        assert!(sets.iter().all(|s| s.value.deleting), "every set is marked, across chunks");
        // Sent again (a request cut short), it completes without conflict.
        delete_group(&store, &group("big"), now()).unwrap();
    }

    #[test]
    fn activity_log_of_a_group_that_never_existed_is_missing() {
        let store = store();
        let err = activity_log(&store, &group("nope"), ActivityQuery::default()).unwrap_err();
        assert!(matches!(err, GroupError::Lookup(LookupError::NoGroup(_))), "{err:?}");
        put_group(&store, &group("rg"), None, BTreeMap::new(), now()).unwrap();
        delete_group(&store, &group("rg"), now()).unwrap();
        let log = activity_log(&store, &group("rg"), ActivityQuery::default()).unwrap();
        assert_eq!(log.len(), 2, "a deleted group keeps its log");
    }
}
