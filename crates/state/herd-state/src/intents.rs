//! A controller's writes as one typed batch ([`Writes`]), and the ways to commit it: whole,
//! in chunks, or as the reconciler's ordered intents.
//!
//! Why: a reconciler pass decides many writes (instance records, set statuses, a model bump, the
//! address counter, activity lines) and commits them together. Before this module it built raw
//! store ops by hand (`Kind`, key string, `Expect`) and chose their chunk order by matching on
//! them. Here each write is a named method taking its typed key, every write to a record keeps
//! its compare-and-swap ([`Expected`]), and the commit order over the transaction limit is
//! stated once ([`Writes::commit_intents`]).

use crate::keys::{CounterKey, GroupKey, ImageKey, InstanceRecordKey, ModelHistoryKey, SetKey};
use crate::records::{Expected, StateError, Store};
use herd_model::activity::ActivityEvent;
use herd_model::image::Image;
use herd_model::instance::InstanceRecord;
use herd_model::scale_set::{ScaleSetModel, ScaleSetStatus, StoredScaleSet};
use herd_store::{Expect, Kind, WriteOp};
use serde::Serialize;

/// Where a write goes in an ordered commit ([`Writes::commit_intents`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tier {
    /// Allocators and set-level records: the address counter, a set's status (with its
    /// instance-id counter), a set's model and its history.
    Allocators,
    /// Instance records, written or removed.
    Instances,
    /// Removals of sets and groups, and the activity lines.
    Last,
}

/// A batch of typed writes, committed together (see the commit methods).
#[derive(Debug, Default)]
pub struct Writes {
    ops: Vec<(Tier, WriteOp)>,
}

impl Writes {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    fn put<T: Serialize>(&mut self, tier: Tier, kind: Kind, key: String, v: &T, e: Expect) -> Result<(), StateError> {
        // Encoded once, here: the text is what the store counts and writes.
        self.ops.push((tier, WriteOp::put_encoded(kind, key, v, e)?));
        Ok(())
    }

    fn delete(&mut self, tier: Tier, kind: Kind, key: String, e: Expect) {
        self.ops.push((tier, WriteOp::delete(kind, key, e)));
    }

    /// Writes an instance record (a create with [`Expected::Absent`]).
    pub fn put_instance(
        &mut self,
        key: &InstanceRecordKey,
        record: &InstanceRecord,
        expected: Expected,
    ) -> Result<(), StateError> {
        self.put(Tier::Instances, Kind::Instance, key.to_string(), record, expected.into())
    }

    pub fn delete_instance(&mut self, key: &InstanceRecordKey, expected: Expected) {
        self.delete(Tier::Instances, Kind::Instance, key.to_string(), expected.into());
    }

    /// Writes a set's model (a generation bump), compare-and-swap on the revision read.
    pub fn put_scale_set(&mut self, key: &SetKey, set: &StoredScaleSet, expected: Expected) -> Result<(), StateError> {
        self.put(Tier::Allocators, Kind::ScaleSet, key.to_string(), set, expected.into())
    }

    /// Removes a set: its model (compare-and-swap), and its status and sealed secrets (the
    /// reconciler's and the set's own records, removed whatever their revision).
    pub fn remove_scale_set(&mut self, key: &SetKey, expected: Expected) {
        self.delete(Tier::Last, Kind::ScaleSet, key.to_string(), expected.into());
        self.delete(Tier::Last, Kind::ScaleSetStatus, key.to_string(), Expect::Any);
        self.delete(Tier::Last, Kind::Secret, key.to_string(), Expect::Any);
    }

    pub fn put_status(&mut self, key: &SetKey, status: &ScaleSetStatus, expected: Expected) -> Result<(), StateError> {
        self.put(Tier::Allocators, Kind::ScaleSetStatus, key.to_string(), status, expected.into())
    }

    /// Records the model a generation had (the set's history; written whole, one writer).
    pub fn record_model(&mut self, key: &ModelHistoryKey, model: &ScaleSetModel) -> Result<(), StateError> {
        self.put(Tier::Allocators, Kind::ModelHistory, key.to_string(), model, Expect::Any)
    }

    /// Forgets a generation's model (when its set is removed).
    pub fn forget_model(&mut self, key: &ModelHistoryKey) {
        self.delete(Tier::Last, Kind::ModelHistory, key.to_string(), Expect::Any);
    }

    /// Writes a server-wide counter (compare-and-swap; [`Expected::Absent`] for its first value).
    pub fn put_counter<T: Serialize>(
        &mut self,
        key: CounterKey,
        value: &T,
        expected: Expected,
    ) -> Result<(), StateError> {
        self.put(Tier::Allocators, Kind::Counter, key.to_string(), value, expected.into())
    }

    pub fn remove_counter(&mut self, key: CounterKey, expected: Expected) {
        self.delete(Tier::Last, Kind::Counter, key.to_string(), expected.into());
    }

    pub fn put_image(&mut self, key: &ImageKey, image: &Image, expected: Expected) -> Result<(), StateError> {
        self.put(Tier::Instances, Kind::Image, key.to_string(), image, expected.into())
    }

    pub fn remove_group(&mut self, key: &GroupKey, expected: Expected) {
        self.delete(Tier::Last, Kind::Group, key.to_string(), expected.into());
    }

    /// An activity line, committed with the writes it describes.
    pub fn activity(&mut self, event: ActivityEvent) {
        self.ops.push((Tier::Last, WriteOp::Activity(event)));
    }

    /// Whether the writes fit one transaction (the store's op and byte limits).
    fn fits(&self) -> bool {
        let bytes = || self.ops.iter().map(|(_, op)| op.size()).sum();
        self.ops.len() <= herd_store::MAX_TXN_OPS && herd_store::check_txn_size(self.ops.len(), bytes()).is_ok()
    }

    fn commit_chunks(store: &dyn Store, ops: Vec<WriteOp>) -> Result<u64, StateError> {
        let mut revision = 0;
        for chunk in herd_store::chunks(ops, 0)? {
            revision = store.txn(chunk)?;
        }
        Ok(revision)
    }

    /// Commits every write in one transaction (all or nothing). Returns its revision.
    pub fn commit(self, store: &dyn Store) -> Result<u64, StateError> {
        Ok(store.txn(self.ops.into_iter().map(|(_, op)| op).collect())?)
    }

    /// Commits in one transaction when the writes fit the store's limits, else in order in
    /// chunks that each do (see [`herd_store::chunks`]): each chunk is atomic, the whole is
    /// not, so the writes must be safe to repeat (a re-read and a retry after a conflict).
    pub fn commit_in_chunks(self, store: &dyn Store) -> Result<(), StateError> {
        if self.fits() {
            return self.commit(store).map(drop);
        }
        Self::commit_chunks(store, self.ops.into_iter().map(|(_, op)| op).collect()).map(drop)
    }

    /// Commits a reconcile pass's intents: one transaction when they fit the store's limits,
    /// else in chunks (10,000 creates are 79 transactions). Chunks are ordered so that every
    /// prefix of them is a state the next pass converges from, exactly as after a crash between
    /// them:
    /// - first the allocators and set-level writes (the address counter, each set's status with
    ///   its instance-id counter, a set's model bump and its history), so a committed record
    ///   never holds an id or address its counter has not passed (a lost later chunk only skips
    ///   some);
    /// - then the instance records, each a self-contained intent the next pass carries on;
    /// - last the removals of sets (after their records) and the activity lines.
    ///
    /// A chunk that fails (a conflict) fails the commit; the caller re-reads and plans again
    /// from what was committed.
    pub fn commit_intents(mut self, store: &dyn Store) -> Result<(), StateError> {
        if self.fits() {
            // One transaction: the writes in the order they were made.
            return self.commit(store).map(drop);
        }
        // Stable: writes keep their order within a tier.
        self.ops.sort_by_key(|(tier, _)| *tier);
        Self::commit_chunks(store, self.ops.into_iter().map(|(_, op)| op).collect()).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::tests::{record, set_key};
    use crate::records::{Records, State};
    use herd_model::InstanceId;

    fn state() -> State {
        State::in_memory().unwrap()
    }

    #[derive(Serialize, serde::Deserialize)]
    struct Counter {
        next: u64,
    }

    /// Intents that create instance 0 and the address counter.
    fn instance_and_counter() -> Writes {
        let mut w = Writes::new();
        w.put_instance(&set_key().instance(InstanceId(0)), &record(0), Expected::Absent).unwrap();
        w.put_counter(CounterKey::HostlocalAddress, &Counter { next: 1 }, Expected::Absent).unwrap();
        w
    }

    #[test]
    fn a_batch_is_all_or_nothing_and_each_write_is_compare_and_swap() {
        let s = state();
        let w = instance_and_counter();
        let rev = w.commit(&*s).unwrap();
        assert_eq!(s.instances_of(&set_key()).unwrap().len(), 1);

        // A stale revision on one write fails the whole batch: the other write is not applied.
        let mut w = Writes::new();
        w.put_instance(&set_key().instance(InstanceId(1)), &record(1), Expected::Absent).unwrap();
        w.put_counter(CounterKey::HostlocalAddress, &Counter { next: 2 }, Expected::Revision(rev + 5)).unwrap();
        let err = w.commit_intents(&*s).unwrap_err();
        assert!(err.is_conflict(), "{err}");
        assert_eq!(s.instances_of(&set_key()).unwrap().len(), 1, "nothing of a failed batch is applied");

        let mut w = Writes::new();
        w.delete_instance(&set_key().instance(InstanceId(0)), Expected::Revision(rev));
        w.commit_in_chunks(&*s).unwrap();
        assert!(s.instances_of(&set_key()).unwrap().is_empty());
    }

    #[test]
    fn intents_over_the_limit_commit_in_chunks_allocators_first() {
        let s = state();
        let n = herd_store::MAX_TXN_OPS as u64 * 2 + 10;
        let mut w = Writes::new();
        for id in 0..n {
            w.put_instance(&set_key().instance(InstanceId(id)), &record(id), Expected::Absent).unwrap();
        }
        // Queued last, committed first: a lost later chunk never leaves a record past its counter.
        w.put_counter(CounterKey::HostlocalAddress, &Counter { next: n }, Expected::Absent).unwrap();
        let before = s.revision().unwrap();
        w.commit_intents(&*s).unwrap();
        assert_eq!(s.instances_of(&set_key()).unwrap().len() as u64, n);
        assert_eq!(s.revision().unwrap() - before, 3, "{n} writes in three transactions");
        let feed = s.watch(before, 10).unwrap();
        let first = feed.changes.first().expect("a change");
        assert_eq!((first.kind, first.key.as_str()), (Kind::Counter, "hostlocal-address"), "the counter comes first");
    }

    #[test]
    fn intents_that_fit_commit_in_one_transaction_in_the_order_made() {
        let s = state();
        let w = instance_and_counter();
        let before = s.revision().unwrap();
        w.commit_intents(&*s).unwrap();
        assert_eq!(s.revision().unwrap() - before, 1, "one transaction");
        let kinds: Vec<Kind> = s.watch(before, 10).unwrap().changes.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [Kind::Instance, Kind::Counter], "not reordered when not chunked");
    }

    #[test]
    fn removing_a_set_removes_its_status_secrets_and_history() {
        let s = state();
        let k = set_key();
        let mut w = Writes::new();
        w.put_status(&k, &ScaleSetStatus::default(), Expected::Absent).unwrap();
        let model: ScaleSetModel = serde_json::from_value(serde_json::json!({
            "sku": {"name": "Standard_B1s", "capacity": 1},
            "virtualMachineProfile": {"storageProfile": {"imageReference": {"publisher": "a", "offer": "b", "sku": "c", "version": "1"}},
                "osProfile": {"computerNamePrefix": "web", "adminUsername": "u"}},
        }))
        .unwrap();
        w.record_model(&k.history(1), &model).unwrap();
        w.commit(&*s).unwrap();
        let mut w = Writes::new();
        for h in s.model_history_keys(&k).unwrap() {
            w.forget_model(&h);
        }
        w.remove_scale_set(&k, Expected::Any);
        w.activity(ActivityEvent {
            seq: 0,
            time: chrono::Utc::now(),
            resource_group: "rg".into(),
            resource: "web".into(),
            operation: "DeleteScaleSet".into(),
            status: herd_model::activity::ActivityStatus::Succeeded,
            actor: herd_model::activity::Actor::Reconciler,
            message: "scale set deleted".into(),
        });
        assert_eq!(w.len(), 5);
        w.commit_intents(&*s).unwrap();
        assert!(s.scale_set_status(&k).unwrap().is_none());
        assert!(s.model_history_keys(&k).unwrap().is_empty());
    }
}
