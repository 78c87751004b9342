//! The change feed as controllers use it: "records of these kinds changed", in commit order,
//! without polling, and never silently lossy.
//!
//! Why: the controller runtime wakes each controller when something it watches changes,
//! instead of every controller re-reading the whole store on a short timer. It needs only the
//! kinds that changed (a controller's pass reads what it needs itself: reconcilers take no
//! input), and it must learn when changes were lost so it can wake everyone.
//!
//! ```text
//!   start ──► Following(next revision) ──commit──► Changed(kinds) ──► Following
//!                    │
//!                    └─ fell below the compaction point ──► Lost ──► Following(head + 1)
//! ```
//!
//! The store's reads run on the blocking pool ([`State::run`]) and read no values.

use crate::{State, StateError};
use herd_store::StoreError;
use std::collections::BTreeSet;

pub use herd_store::Kind;

/// What the feed says next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    /// These kinds had a put or a delete since the previous event.
    Changed(BTreeSet<Kind>),
    /// The feed fell behind the store's compaction point: changes were discarded unseen, so
    /// anything may have changed. The feed continues from the newest revision.
    Lost,
}

/// The change feed of one store, from the revision it was started at.
///
/// It reads only which kinds changed ([`herd_store::Store::changed_kinds`]: no values are
/// read or decoded), on the blocking pool, after the store's head-revision channel says a
/// commit happened: a provisioning run of 12,000 instance writes costs the feed one small
/// index scan per wake, not a decode of every value written.
pub struct ChangeFeed {
    state: State,
    head: tokio::sync::watch::Receiver<u64>,
    next: u64,
}

impl ChangeFeed {
    /// A feed of the changes committed after now.
    pub async fn start(state: &State) -> Result<Self, StateError> {
        let head = state.store().subscribe();
        let now = state.run(|s| Ok(s.revision()?)).await?;
        Ok(Self { state: state.clone(), head, next: now + 1 })
    }

    /// The revision the next event starts at.
    pub fn next_revision(&self) -> u64 {
        self.next
    }

    /// The next event, waiting (on the store's commit signal, not a timer) while nothing is
    /// committed.
    pub async fn next(&mut self) -> Result<FeedEvent, StateError> {
        loop {
            // Mark the current head seen before reading, so a commit after the read wakes us.
            let head = *self.head.borrow_and_update();
            if head >= self.next {
                let from = self.next;
                match self.state.run(move |s| Ok(s.changed_kinds(from)?)).await {
                    Ok(changed) => {
                        self.next = changed.next.max(from);
                        if !changed.kinds.is_empty() {
                            return Ok(FeedEvent::Changed(changed.kinds));
                        }
                        continue;
                    }
                    Err(StateError::Store(StoreError::Compacted { requested, compacted })) => {
                        tracing::warn!(
                            requested,
                            compacted,
                            "the change feed fell behind compaction; waking every controller"
                        );
                        self.next = self.state.run(|s| Ok(s.revision()?)).await? + 1;
                        return Ok(FeedEvent::Lost);
                    }
                    Err(e) => return Err(e),
                }
            }
            self.head.changed().await.map_err(|_| StoreError::Backend(herd_store::BackendError::Closed))?;
        }
    }
}

/// Keeps the change feed short: each call discards the changes up to the head revision that
/// the call before saw, so a consumer that lags by less than one period (the server's is
/// [`herd_store::COMPACTION_INTERVAL`]) still resumes without a relist. Synchronous: run it
/// on the blocking pool.
#[derive(Debug, Default)]
pub struct Compactor {
    previous_head: std::sync::Mutex<Option<u64>>,
}

impl Compactor {
    /// Compacts to the head seen last time (nothing the first time); returns the new head.
    pub fn compact(&self, store: &dyn herd_store::Store) -> Result<u64, StateError> {
        let head = store.revision()?;
        let mut previous = self.previous_head.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = *previous {
            store.compact(p)?;
            tracing::debug!(compacted_to = p, head, "change feed compacted");
        }
        *previous = Some(head);
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_store::{Expect, SqliteStore, WriteOp};
    use std::sync::Arc;
    use std::time::Duration;

    fn put(kind: Kind, key: &str) -> WriteOp {
        WriteOp::Put { kind, key: key.into(), value: serde_json::json!({"k": key}), expect: Expect::Any }
    }

    #[tokio::test]
    async fn it_names_the_kinds_each_commit_changed_and_says_when_changes_were_lost() {
        let state = State::from(Arc::new(SqliteStore::in_memory().unwrap()));
        state.txn(vec![put(Kind::Group, "before")]).unwrap();
        let mut feed = ChangeFeed::start(&state).await.unwrap();
        // Nothing committed since the start: the feed waits.
        assert!(tokio::time::timeout(Duration::from_millis(50), feed.next()).await.is_err(), "woke with no commit");

        state.txn(vec![put(Kind::Instance, "rg/web/1"), put(Kind::ScaleSet, "rg/web")]).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), feed.next()).await.expect("a change event").unwrap();
        assert_eq!(got, FeedEvent::Changed([Kind::Instance, Kind::ScaleSet].into_iter().collect()));

        // Two commits, then a compaction past them before the feed reads: the feed says Lost,
        // then follows new commits.
        state.txn(vec![put(Kind::Image, "a")]).unwrap();
        let head = state.txn(vec![put(Kind::Image, "b")]).unwrap();
        state.compact(head + 1).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), feed.next()).await.expect("a lost event").unwrap();
        assert_eq!(got, FeedEvent::Lost);
        state.txn(vec![put(Kind::LoadBalancer, "rg/lb")]).unwrap();
        let got =
            tokio::time::timeout(Duration::from_secs(10), feed.next()).await.expect("a change after the loss").unwrap();
        assert_eq!(got, FeedEvent::Changed([Kind::LoadBalancer].into_iter().collect()));
    }

    #[test]
    fn the_compactor_discards_up_to_the_head_it_saw_the_time_before() {
        let state = State::from(Arc::new(SqliteStore::in_memory().unwrap()));
        let c = Compactor::default();
        let first = state.txn(vec![put(Kind::Group, "a")]).unwrap();
        assert_eq!(c.compact(&*state).unwrap(), first);
        assert!(state.watch(first, 10).is_ok(), "the first call compacts nothing");
        let second = state.txn(vec![put(Kind::Group, "b")]).unwrap();
        assert_eq!(c.compact(&*state).unwrap(), second);
        assert!(matches!(state.watch(first - 1, 10), Err(StoreError::Compacted { .. })));
        assert_eq!(state.watch(first, 10).unwrap().changes.len(), 2, "changes from the head seen before are kept");
    }
}
