//! A store wrapper that records which thread made each store call, for tests of the rule that
//! store calls never run on an async worker.
//!
//! Why: the store is synchronous, and a call made on a tokio worker stalls every task queued on
//! it (see [`crate::State::run`]). Nothing in the type system stops an async controller from
//! calling the store directly, so each controller's test runs its pass on a current-thread
//! runtime (whose only async worker is the test's own thread) over a [`CallThreads`] store, and
//! asserts that no call was made on that thread.

use crate::records::Store;
use herd_model::activity::ActivityEvent;
use herd_store::{quarantine::Quarantine, ActivityFilter, Kind, Object, StoreError, WatchBatch, WriteOp};
use std::sync::Mutex;
use std::thread::ThreadId;

/// Wraps a store and records the thread of every call that may block (reads, writes, the
/// feed); `subscribe` and `quarantine` only hand out in-memory handles and are not recorded.
pub struct CallThreads<S> {
    inner: S,
    calls: Mutex<Vec<ThreadId>>,
}

impl<S: Store> CallThreads<S> {
    pub fn new(inner: S) -> Self {
        Self { inner, calls: Mutex::new(Vec::new()) }
    }

    fn note(&self) {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).push(std::thread::current().id());
    }

    /// Calls recorded so far.
    pub fn calls(&self) -> usize {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Calls recorded on `thread`.
    pub fn calls_on(&self, thread: ThreadId) -> usize {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|t| **t == thread).count()
    }
}

impl CallThreads<herd_store::SqliteStore> {
    /// Over a fresh in-memory SQLite store.
    pub fn in_memory() -> Result<Self, crate::StateError> {
        Ok(Self::new(herd_store::SqliteStore::in_memory()?))
    }
}

impl<S: Store> Store for CallThreads<S> {
    fn get(&self, kind: Kind, key: &str) -> Result<Option<Object>, StoreError> {
        self.note();
        self.inner.get(kind, key)
    }
    fn list(&self, kind: Kind, prefix: &str) -> Result<Vec<Object>, StoreError> {
        self.note();
        self.inner.list(kind, prefix)
    }
    fn get_text(&self, kind: Kind, key: &str) -> Result<Option<Object<String>>, StoreError> {
        self.note();
        self.inner.get_text(kind, key)
    }
    fn list_text(&self, kind: Kind, prefix: &str) -> Result<Vec<Object<String>>, StoreError> {
        self.note();
        self.inner.list_text(kind, prefix)
    }
    fn txn(&self, ops: Vec<WriteOp>) -> Result<u64, StoreError> {
        self.note();
        self.inner.txn(ops)
    }
    fn revision(&self) -> Result<u64, StoreError> {
        self.note();
        self.inner.revision()
    }
    fn watch(&self, from_revision: u64, limit: usize) -> Result<WatchBatch, StoreError> {
        self.note();
        self.inner.watch(from_revision, limit)
    }
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.subscribe()
    }
    fn compact(&self, revision: u64) -> Result<(), StoreError> {
        self.note();
        self.inner.compact(revision)
    }
    fn compacted(&self) -> Result<u64, StoreError> {
        self.note();
        self.inner.compacted()
    }
    fn activity(&self, filter: &ActivityFilter) -> Result<Vec<ActivityEvent>, StoreError> {
        self.note();
        self.inner.activity(filter)
    }
    fn quarantine(&self) -> Option<&Quarantine> {
        self.inner.quarantine()
    }
    fn integrity_check(&self) -> Result<Vec<String>, StoreError> {
        self.note();
        self.inner.integrity_check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{Records, State};
    use std::sync::Arc;

    #[tokio::test]
    async fn calls_through_run_are_off_the_async_thread_and_direct_calls_are_not() {
        let store = Arc::new(CallThreads::in_memory().unwrap());
        let state = State::from(store.clone());
        let me = std::thread::current().id();
        state.run(|s| s.scale_sets()).await.unwrap();
        assert_eq!((store.calls(), store.calls_on(me)), (1, 0));
        state.scale_sets().unwrap();
        assert_eq!((store.calls(), store.calls_on(me)), (2, 1), "a direct call is seen on the async thread");
    }
}
