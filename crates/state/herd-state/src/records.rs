//! Typed operations per record type: the reads and compare-and-swap writes the controllers need,
//! named for what they do (`instances_of(set)`, `update_instance(..)`), never `Kind` + key.
//!
//! Why: a raw store call names a `Kind`, builds a key and picks the stored type by hand, and
//! each caller can get one of the three wrong. Here each record type has its operations once,
//! with the key from [`crate::keys`] and the type fixed, returning [`StateError`] with the
//! store's error as its source.
//!
//! [`Records`] is implemented for every [`Store`], so a handle of any shape works: the
//! [`State`] handle (what new code holds), an `Arc<dyn Store>`, or a test's `SqliteStore`.
//! Reads of one kind decode as [`herd_store::StoreExt`] does: a record that does not decode is
//! quarantined and skipped by lists. Writes are compare-and-swap on the revision read
//! ([`Expected`]), as every write in herd is.

use crate::keys::{
    AutoscaleKey, CounterKey, GroupKey, InstanceRecordKey, KeyError, ModelHistoryKey, SeriesKey, SetKey,
    SourceSecretKey, SourceSeriesKey, ALL,
};
use herd_model::activity::ActivityEvent;
use herd_model::group::ResourceGroup;
use herd_model::image::Image;
use herd_model::instance::InstanceRecord;
use herd_model::network::VirtualNetwork;
use herd_model::network::{LoadBalancer, PublicIpAddress};
use herd_model::scale_set::StoredScaleSet;
use herd_model::scale_set::{ScaleSetModel, ScaleSetStatus};
use herd_store::{Expect, Kind, StoreError, StoreExt, WriteOp};
use serde::{de::DeserializeOwned, Serialize};
use std::ops::Deref;
use std::sync::Arc;

pub use herd_store::quarantine::Quarantined;
pub use herd_store::{Object as Versioned, Store};

/// `From<StoreError>` for a module's error enum with a `State(StateError)` variant, so its
/// operations use `?` on store calls directly.
macro_rules! store_error_via_state {
    ($error:ty) => {
        impl From<herd_store::StoreError> for $error {
            fn from(e: herd_store::StoreError) -> Self {
                Self::State(e.into())
            }
        }
    };
}
pub(crate) use store_error_via_state;

/// What a typed state operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store refused or failed (a conflict, a full disk, a backend error, a record that
    /// does not decode). Its text is the store's.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored key does not have the shape of its kind.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The blocking task that ran the store call panicked or was cancelled.
    #[error("a store call on the blocking pool did not finish: {0}")]
    Task(#[source] Arc<tokio::task::JoinError>),
}

impl StateError {
    /// Someone else wrote first: re-read and try again.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StateError::Store(StoreError::Conflict { .. }))
    }
}

/// What a write expects to find where it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Nothing yet (a create).
    Absent,
    /// The record at exactly this revision (compare-and-swap).
    Revision(u64),
    /// No check: only for server-owned records with one writer (metric series, autoscale
    /// history), as the store's `Expect::Any` says.
    Any,
}

impl From<Expected> for Expect {
    fn from(e: Expected) -> Self {
        match e {
            Expected::Absent => Expect::Absent,
            Expected::Revision(r) => Expect::Revision(r),
            Expected::Any => Expect::Any,
        }
    }
}

/// The handle controllers hold: the store, seen through [`Records`] (it derefs to the store,
/// so every typed operation is a method on it).
#[derive(Clone)]
pub struct State(Arc<dyn Store>);

impl State {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self(store)
    }

    /// A handle on a fresh in-memory SQLite store (tests, tools).
    pub fn in_memory() -> Result<Self, StateError> {
        Ok(Self(Arc::new(herd_store::SqliteStore::in_memory()?)))
    }

    /// The store underneath, for the code not yet moved onto typed operations.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.0
    }

    /// Runs `f` (typed operations on the store) on tokio's blocking pool and awaits it.
    ///
    /// Why: the store is synchronous (SQLite behind a mutex; a commit waits on fsync), and an
    /// async task that calls it directly stalls its runtime worker, and every task queued on
    /// that worker, for as long as the call takes. Every async caller (API handlers,
    /// controllers) goes through here; synchronous code (a controller's pass already on the
    /// blocking pool, tests) calls the operations directly.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StateError>
    where
        F: FnOnce(&dyn Store) -> Result<T, StateError> + Send + 'static,
        T: Send + 'static,
    {
        let store = self.0.clone();
        tokio::task::spawn_blocking(move || f(&*store)).await.map_err(|e| StateError::Task(Arc::new(e)))?
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("State")
    }
}

impl Deref for State {
    type Target = dyn Store;
    fn deref(&self) -> &(dyn Store + 'static) {
        &*self.0
    }
}

impl From<Arc<dyn Store>> for State {
    fn from(store: Arc<dyn Store>) -> Self {
        Self(store)
    }
}

impl<S: Store> From<Arc<S>> for State {
    fn from(store: Arc<S>) -> Self {
        Self(store)
    }
}

/// Typed operations on the stored records, for any [`Store`].
pub trait Records: Store {
    /// Every scale set, by key.
    fn scale_sets(&self) -> Result<Vec<Versioned<StoredScaleSet>>, StateError> {
        Ok(self.list_as(Kind::ScaleSet, ALL)?)
    }

    fn scale_set(&self, key: &SetKey) -> Result<Option<Versioned<StoredScaleSet>>, StateError> {
        Ok(self.get_as(Kind::ScaleSet, &key.to_string())?)
    }

    /// Every instance record of every set, by key (so by set, then id).
    fn instances(&self) -> Result<Vec<Versioned<InstanceRecord>>, StateError> {
        Ok(self.list_as(Kind::Instance, ALL)?)
    }

    /// One set's instance records, by id.
    fn instances_of(&self, set: &SetKey) -> Result<Vec<Versioned<InstanceRecord>>, StateError> {
        Ok(self.list_as(Kind::Instance, &set.children())?)
    }

    /// The keys of every instance record, as stored (not decoded, so a record in quarantine is
    /// still listed: its instance is not a stray).
    fn instance_keys(&self) -> Result<Vec<String>, StateError> {
        Ok(self.list(Kind::Instance, ALL)?.into_iter().map(|o| o.key).collect())
    }

    /// Every instance record decoded as `T`, a partial view of it (a few fields), by key. A
    /// record that does not decode as `T` is skipped, and not quarantined: the full record may
    /// still be fine.
    fn instance_views<T: DeserializeOwned>(&self) -> Result<Vec<Versioned<T>>, StateError> {
        Ok(self
            .list(Kind::Instance, ALL)?
            .into_iter()
            .filter_map(|o| {
                let value = T::deserialize(&o.value).ok()?;
                Some(Versioned { key: o.key, revision: o.revision, create_revision: o.create_revision, value })
            })
            .collect())
    }

    fn instance(&self, key: &InstanceRecordKey) -> Result<Option<Versioned<InstanceRecord>>, StateError> {
        Ok(self.get_as(Kind::Instance, &key.to_string())?)
    }

    /// Writes an instance record as a compare-and-swap, with `activity` in the same commit.
    /// Returns the revision written at.
    fn update_instance(
        &self,
        key: &InstanceRecordKey,
        record: &InstanceRecord,
        expected: Expected,
        activity: Option<ActivityEvent>,
    ) -> Result<u64, StateError> {
        let mut ops = vec![WriteOp::put(Kind::Instance, key.to_string(), record, expected.into())?];
        ops.extend(activity.map(WriteOp::Activity));
        Ok(self.txn(ops)?)
    }

    /// The keys of every scale set, as stored (not decoded: a set in quarantine is listed).
    fn scale_set_keys(&self) -> Result<Vec<String>, StateError> {
        Ok(self.list(Kind::ScaleSet, ALL)?.into_iter().map(|o| o.key).collect())
    }

    /// Every sealed secret in the store (sets' and metric sources'), as stored: for checking
    /// that a seal key opens them.
    fn sealed_secrets(&self) -> Result<Vec<serde_json::Value>, StateError> {
        Ok(self.list(Kind::Secret, ALL)?.into_iter().map(|o| o.value).collect())
    }

    /// The keys of every quarantined instance record, as stored (such an instance has a
    /// record, just not a readable one).
    fn quarantined_instance_keys(&self) -> Vec<String> {
        let list = self.quarantine().map(|q| q.list()).unwrap_or_default();
        list.into_iter().filter(|q| q.kind == Kind::Instance).map(|q| q.key).collect()
    }

    /// Whether any record at all is in quarantine.
    fn any_quarantined(&self) -> bool {
        self.quarantine().is_some_and(|q| !q.list().is_empty())
    }

    /// Every set's reconciler status, by key.
    fn scale_set_statuses(&self) -> Result<Vec<Versioned<ScaleSetStatus>>, StateError> {
        Ok(self.list_as(Kind::ScaleSetStatus, ALL)?)
    }

    fn scale_set_status(&self, key: &SetKey) -> Result<Option<Versioned<ScaleSetStatus>>, StateError> {
        Ok(self.get_as(Kind::ScaleSetStatus, &key.to_string())?)
    }

    /// A set's secrets as stored: sealed, for the caller's sealer to open.
    fn sealed_set_secrets(&self, key: &SetKey) -> Result<Option<serde_json::Value>, StateError> {
        Ok(self.get(Kind::Secret, &key.to_string())?.map(|o| o.value))
    }

    /// The model a set had at one generation, if it is on record.
    fn model_at(&self, key: &ModelHistoryKey) -> Result<Option<Versioned<ScaleSetModel>>, StateError> {
        Ok(self.get_as(Kind::ModelHistory, &key.to_string())?)
    }

    /// The keys of every generation on record for a set.
    fn model_history_keys(&self, set: &SetKey) -> Result<Vec<ModelHistoryKey>, StateError> {
        self.list(Kind::ModelHistory, &set.children())?.into_iter().map(|o| Ok(o.key.parse()?)).collect()
    }

    /// Every image in the gallery, by key.
    fn images(&self) -> Result<Vec<Versioned<Image>>, StateError> {
        Ok(self.list_as(Kind::Image, ALL)?)
    }

    /// Every resource group.
    fn groups(&self) -> Result<Vec<Versioned<ResourceGroup>>, StateError> {
        Ok(self.list_as(Kind::Group, ALL)?)
    }

    fn virtual_networks(&self) -> Result<Vec<Versioned<VirtualNetwork>>, StateError> {
        Ok(self.list_as(Kind::VirtualNetwork, ALL)?)
    }

    /// A server-wide counter (its type is its writer's).
    fn counter<T: DeserializeOwned>(&self, key: CounterKey) -> Result<Option<Versioned<T>>, StateError> {
        Ok(self.get_as(Kind::Counter, key.as_str())?)
    }

    fn load_balancers(&self) -> Result<Vec<Versioned<LoadBalancer>>, StateError> {
        Ok(self.list_as(Kind::LoadBalancer, ALL)?)
    }

    fn public_ips(&self) -> Result<Vec<Versioned<PublicIpAddress>>, StateError> {
        Ok(self.list_as(Kind::PublicIp, ALL)?)
    }

    fn security_groups(&self) -> Result<Vec<Versioned<herd_model::nsg::NetworkSecurityGroup>>, StateError> {
        Ok(self.list_as(Kind::NetworkSecurityGroup, ALL)?)
    }

    /// Every cost meter that decodes (their type is the billing crate's); one that does not is
    /// quarantined and skipped.
    fn meters<T: DeserializeOwned>(&self) -> Result<Vec<Versioned<T>>, StateError> {
        Ok(self.list_as(Kind::Meter, ALL)?)
    }

    /// Every cost meter, for the meter that writes them. One that does not decode is listed
    /// with `None` and logged, not quarantined: its revision is kept, so it is left as it is for
    /// someone to look at.
    fn meters_or_undecodable<T: DeserializeOwned>(&self) -> Result<Vec<Versioned<Option<T>>>, StateError> {
        Ok(self
            .list(Kind::Meter, ALL)?
            .into_iter()
            .map(|o| {
                let value = match serde_json::from_value::<T>(o.value) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        tracing::warn!(key = %o.key, error = %e, "a cost meter cannot be decoded; skipping it");
                        None
                    }
                };
                Versioned { key: o.key, revision: o.revision, create_revision: o.create_revision, value }
            })
            .collect())
    }

    /// The meters of one group's sets.
    fn meters_of_group<T: DeserializeOwned>(&self, group: &GroupKey) -> Result<Vec<Versioned<T>>, StateError> {
        Ok(self.list_as(Kind::Meter, &group.children())?)
    }

    fn meter<T: DeserializeOwned>(&self, set: &SetKey) -> Result<Option<Versioned<T>>, StateError> {
        Ok(self.get_as(Kind::Meter, &set.to_string())?)
    }

    /// Writes a set's meter as a compare-and-swap.
    fn put_meter<T: Serialize>(&self, set: &SetKey, doc: &T, expected: Expected) -> Result<u64, StateError> {
        Ok(self.txn(vec![WriteOp::put(Kind::Meter, set.to_string(), doc, expected.into())?])?)
    }
}

impl<S: Store + ?Sized> Records for S {}

/// The keys a metric time series lives under: a set's metric or a named source.
pub trait MetricSeriesKey: std::fmt::Display {}
impl MetricSeriesKey for SeriesKey {}
impl MetricSeriesKey for SourceSeriesKey {}

/// Typed operations on autoscale's records (their types are the autoscale crates'; the kinds
/// and keys are here).
pub trait AutoscaleRecords: Store {
    fn autoscale_settings<T: DeserializeOwned>(&self) -> Result<Vec<Versioned<T>>, StateError> {
        Ok(self.list_as(Kind::AutoscaleSetting, ALL)?)
    }

    /// A setting's evaluation history (the runner's own record).
    fn autoscale_runtime<T: DeserializeOwned>(&self, key: &AutoscaleKey) -> Result<Option<Versioned<T>>, StateError> {
        Ok(self.get_as(Kind::AutoscaleHistory, &key.to_string())?)
    }

    fn put_autoscale_runtime<T: Serialize>(&self, key: &AutoscaleKey, runtime: &T) -> Result<u64, StateError> {
        Ok(self.txn(vec![WriteOp::put(Kind::AutoscaleHistory, key.to_string(), runtime, Expect::Any)?])?)
    }

    fn metric_sources<T: DeserializeOwned>(&self) -> Result<Vec<Versioned<T>>, StateError> {
        Ok(self.list_as(Kind::MetricSource, ALL)?)
    }

    fn update_metric_source<T: Serialize>(
        &self,
        key: &AutoscaleKey,
        source: &T,
        expected: Expected,
    ) -> Result<u64, StateError> {
        Ok(self.txn(vec![WriteOp::put(Kind::MetricSource, key.to_string(), source, expected.into())?])?)
    }

    /// A source's protected settings as stored: sealed, for the caller's sealer to open.
    fn sealed_source_secret(&self, key: &SourceSecretKey) -> Result<Option<serde_json::Value>, StateError> {
        Ok(self.get(Kind::Secret, &key.to_string())?.map(|o| o.value))
    }

    fn series<T: DeserializeOwned, K: MetricSeriesKey>(&self, key: &K) -> Result<Option<Versioned<T>>, StateError> {
        Ok(self.get_as(Kind::MetricSeries, &key.to_string())?)
    }

    /// Writes series (their one writer is the sampler). Each series is its own key, written
    /// whole (`Expect::Any`): over the transaction limit (many sets) they commit in chunks, each
    /// independent of the others. Returns the last commit's revision (0 when there was nothing).
    fn put_series<T: Serialize, K: MetricSeriesKey>(&self, series: &[(K, T)]) -> Result<u64, StateError> {
        let ops = series
            .iter()
            .map(|(k, v)| WriteOp::put(Kind::MetricSeries, k.to_string(), v, Expect::Any))
            .collect::<Result<Vec<_>, _>>()?;
        let mut revision = 0;
        for chunk in herd_store::chunks(ops, 0)? {
            revision = self.txn(chunk)?;
        }
        Ok(revision)
    }

    /// Appends to the activity log on its own (an event no state change goes with).
    fn log_activity(&self, event: ActivityEvent) -> Result<u64, StateError> {
        Ok(self.txn(vec![WriteOp::Activity(event)])?)
    }
}

impl<S: Store + ?Sized> AutoscaleRecords for S {}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use herd_model::instance::{InstanceGoal, InstanceState};
    use herd_model::{GroupName, InstanceId, ScaleSetName};
    use herd_store::SqliteStore;

    pub(crate) fn set_key() -> SetKey {
        SetKey::new(GroupName::new("rg").unwrap(), ScaleSetName::new("web").unwrap())
    }

    /// A Running instance record of set `rg/web`.
    pub(crate) fn record(id: u64) -> InstanceRecord {
        serde_json::from_value(serde_json::json!({
            "instanceId": id, "computerName": format!("web{id:06}"), "modelGeneration": 1,
            "state": InstanceState::Running, "goal": InstanceGoal::Running, "reachAddress": "127.128.0.4",
            "createdAt": "2026-01-01T00:00:00Z", "stateSince": "2026-01-01T00:00:00Z",
        }))
        .unwrap()
    }

    #[test]
    fn instances_are_written_where_the_key_says_and_updates_are_compare_and_swap() {
        let state = State::from(Arc::new(SqliteStore::in_memory().unwrap()));
        let k = set_key().instance(InstanceId(7));
        let rev = state.update_instance(&k, &record(7), Expected::Absent, None).unwrap();
        // The raw key is the pinned format.
        assert!(state.get(Kind::Instance, "rg/web/0000000007").unwrap().is_some());
        let got = state.instance(&k).unwrap().unwrap();
        assert_eq!((got.revision, got.value.instance_id), (rev, InstanceId(7)));
        assert_eq!(state.instances_of(&set_key()).unwrap().len(), 1);
        let other = SetKey::new(GroupName::new("rg").unwrap(), ScaleSetName::new("we").unwrap());
        assert!(state.instances_of(&other).unwrap().is_empty(), "a set's prefix does not match a longer name");

        let stale = state.update_instance(&k, &record(7), Expected::Revision(rev + 100), None).unwrap_err();
        assert!(stale.is_conflict(), "{stale}");
        assert!(stale.to_string().starts_with("conflict on instance 'rg/web/0000000007'"), "{stale}");
        let again = state.update_instance(&k, &record(7), Expected::Absent, None).unwrap_err();
        assert!(again.is_conflict(), "a create over an existing record conflicts");
        state.update_instance(&k, &record(7), Expected::Revision(rev), None).unwrap();
    }

    #[tokio::test]
    async fn run_calls_the_store_off_the_async_thread_and_reports_a_panic_as_an_error() {
        let state = State::from(Arc::new(SqliteStore::in_memory().unwrap()));
        let caller = std::thread::current().id();
        let k = set_key().instance(InstanceId(3));
        let (rev, thread) = state
            .run(move |s| Ok((s.update_instance(&k, &record(3), Expected::Absent, None)?, std::thread::current().id())))
            .await
            .unwrap();
        assert_ne!(thread, caller, "the store call ran on the async task's own thread");
        let got = state.run(|s| s.instance(&set_key().instance(InstanceId(3)))).await.unwrap().unwrap();
        assert_eq!(got.revision, rev);
        let err = state.run(|_| -> Result<(), StateError> { panic!("boom") }).await.unwrap_err();
        assert!(matches!(err, StateError::Task(_)), "{err:?}");
    }

    #[test]
    fn raw_listings_include_records_that_do_not_decode() {
        let state = State::in_memory().unwrap();
        let bad = serde_json::json!("not a record");
        state
            .txn(vec![
                WriteOp::put(Kind::ScaleSet, "rg/web", &bad, Expect::Absent).unwrap(),
                WriteOp::put(Kind::Instance, "rg/web/0000000001", &bad, Expect::Absent).unwrap(),
                WriteOp::put(Kind::Secret, "rg/web", &serde_json::json!({"sealed": "x"}), Expect::Absent).unwrap(),
            ])
            .unwrap();
        assert_eq!(state.scale_set_keys().unwrap(), ["rg/web"]);
        assert_eq!(state.instance_keys().unwrap(), ["rg/web/0000000001"]);
        assert_eq!(state.sealed_secrets().unwrap(), [serde_json::json!({"sealed": "x"})]);
        assert!(!state.any_quarantined(), "raw listings quarantine nothing");
        assert!(state.scale_sets().unwrap().is_empty(), "a set that does not decode is skipped by the typed list");
        assert!(state.instances().unwrap().is_empty());
        assert_eq!(state.quarantined_instance_keys(), ["rg/web/0000000001"]);
        assert!(state.any_quarantined());
    }

    #[test]
    fn meters_keep_undecodable_ones_as_none() {
        let state = State::from(Arc::new(SqliteStore::in_memory().unwrap()));
        state.put_meter(&set_key(), &serde_json::json!({"n": 1}), Expected::Absent).unwrap();
        state
            .txn(vec![WriteOp::put(Kind::Meter, "rg/bad", &serde_json::json!("not a meter"), Expect::Absent).unwrap()])
            .unwrap();
        #[derive(serde::Deserialize)]
        struct Doc {
            n: u32,
        }
        let all = state.meters_or_undecodable::<Doc>().unwrap();
        assert_eq!(all.len(), 2);
        assert!(all.iter().any(|m| m.key == "rg/bad" && m.value.is_none()));
        assert_eq!(all.iter().find(|m| m.key == "rg/web").and_then(|m| m.value.as_ref()).map(|d| d.n), Some(1));
        assert_eq!(state.meter::<serde_json::Value>(&set_key()).unwrap().unwrap().value["n"], 1);
        assert_eq!(state.meters_of_group::<Doc>(&GroupKey::new("rg")).unwrap().len(), 1, "the bad one is skipped");
        assert_eq!(state.meters::<Doc>().unwrap().len(), 1, "the bad one is skipped");
    }

    #[test]
    fn series_and_autoscale_runtime_live_under_their_pinned_keys() {
        let state = State::from(Arc::new(SqliteStore::in_memory().unwrap()));
        let src = SourceSeriesKey::new("RG", "Queue");
        let vm = SeriesKey::new(set_key(), "Percentage CPU");
        state.put_series(&[(src.clone(), serde_json::json!([1]))]).unwrap();
        state.put_series(&[(vm.clone(), serde_json::json!([2]))]).unwrap();
        assert!(state.get(Kind::MetricSeries, "source/RG/queue").unwrap().is_some());
        assert!(state.get(Kind::MetricSeries, "vmss/rg/web/percentage-cpu").unwrap().is_some());
        assert_eq!(state.series::<serde_json::Value, _>(&vm).unwrap().unwrap().value, serde_json::json!([2]));
        let k = AutoscaleKey::new("RG", "Cpu");
        state.put_autoscale_runtime(&k, &serde_json::json!({"n": 3})).unwrap();
        assert!(state.get(Kind::AutoscaleHistory, "rg/cpu").unwrap().is_some());
        assert_eq!(state.autoscale_runtime::<serde_json::Value>(&k).unwrap().unwrap().value["n"], 3);
    }
}
