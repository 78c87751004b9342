//! The change feed: every put and delete, in revision order, resumable from any revision the
//! store still keeps.
//!
//! Why: controllers (issue 16's runtime) should react to the writes that concern them instead
//! of re-reading everything on a timer, and an etcd backend serves exactly this (etcd's watch).
//! The feed has etcd's semantics, so code written against SQLite keeps working on etcd:
//!
//! - Every committed put and delete of a key appears once, tagged with the revision of its
//!   transaction, in revision order and, within one revision, in the order of the ops. A
//!   transaction that only appends activity bumps the revision but adds no change.
//! - Watching from revision R yields the changes at R and after. A consumer that processed
//!   everything up to R resumes with `from_revision = R + 1` ([`WatchBatch::next`] is that).
//! - Changes below the compaction point ([`Store::compact`]) are gone: a watch that asks for
//!   them gets [`StoreError::Compacted`] and must start again from a fresh read — list what
//!   it needs (noting [`Store::revision`] first), then watch from that revision + 1. (This is
//!   kube-rs's reflector "relist".) The server compacts on its own with a retention of 5 to 10
//!   minutes, so a consumer that lags or restarts within that resumes without a relist.
//!
//! Two forms:
//! - Pull: [`Store::watch`]`(from, limit)` returns one bounded [`WatchBatch`], never waits.
//! - Async: [`Watcher`] wraps it with the store's head-revision channel
//!   ([`Store::subscribe`]): [`Watcher::next`] returns the next non-empty batch, sleeping on
//!   the channel (not polling) while nothing new is committed.
//!
//! A controller loop is, in outline:
//! ```text
//!   rev = store.revision(); state = list(..)            // initial read
//!   w = Watcher::new(store, rev + 1)
//!   loop { match w.next().await {
//!       Ok(changes)            => apply changes to state / enqueue keys
//!       Err(Compacted { .. })  => relist: rev = store.revision(); state = list(..);
//!                                 w = Watcher::new(store, rev + 1)
//!       Err(e)                 => back off, retry } }
//! ```

use crate::{Kind, Store, StoreError};
use serde_json::Value;
use std::sync::Arc;

/// One put or delete in the feed.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The revision of the transaction that made it.
    pub revision: u64,
    pub kind: Kind,
    pub key: String,
    pub event: ChangeEvent,
}

/// What happened to the key.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeEvent {
    /// Created or replaced: the value as written, and the key's create revision.
    Put { create_revision: u64, value: Value },
    /// Deleted (only keys that existed: deleting an absent key changes nothing).
    Delete,
}

/// One batch of the pull form.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchBatch {
    /// The changes, in order.
    pub changes: Vec<Change>,
    /// Where the next call continues (`from_revision` for it): past every revision this batch
    /// covered, including revisions with no change; never below the `from_revision` asked.
    pub next: u64,
}

/// What [`Store::changed_kinds`] answers: the kinds changed, and where to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindsChanged {
    /// Each kind with at least one put or delete in the range read.
    pub kinds: std::collections::BTreeSet<Kind>,
    /// Where the next call continues: past the newest revision read, never below the
    /// `from_revision` asked.
    pub next: u64,
}

/// The async form of the feed: see the module docs.
pub struct Watcher {
    store: Arc<dyn Store>,
    head: tokio::sync::watch::Receiver<u64>,
    next: u64,
    limit: usize,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").field("next", &self.next).field("limit", &self.limit).finish()
    }
}

impl Watcher {
    /// Changes per batch unless [`Watcher::with_limit`] says otherwise.
    pub const DEFAULT_LIMIT: usize = 1000;

    /// A watcher that yields the changes from `from_revision` on.
    pub fn new(store: Arc<dyn Store>, from_revision: u64) -> Self {
        let head = store.subscribe();
        Self { store, head, next: from_revision, limit: Self::DEFAULT_LIMIT }
    }

    /// At most about `limit` changes per batch (see [`Store::watch`]).
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit.max(1);
        self
    }

    /// The revision the next batch starts at.
    pub fn next_revision(&self) -> u64 {
        self.next
    }

    /// The next non-empty batch of changes, waiting for a commit while there is none.
    /// [`StoreError::Compacted`] means this watcher fell behind the compaction point: relist
    /// and make a new one. The reads are the store's own (synchronous, short: one indexed range
    /// scan of at most `limit` rows).
    pub async fn next(&mut self) -> Result<Vec<Change>, StoreError> {
        loop {
            // Mark the current head seen before reading, so a commit after the read wakes us.
            let head = *self.head.borrow_and_update();
            if head >= self.next {
                let batch = self.store.watch(self.next, self.limit)?;
                self.next = batch.next;
                if !batch.changes.is_empty() {
                    return Ok(batch.changes);
                }
                continue;
            }
            self.head.changed().await.map_err(|_| StoreError::Backend(crate::BackendError::Closed))?;
        }
    }
}

/// How often the server compacts the change feed ([`run_compaction`]).
///
/// The retention this gives is 5 to 10 minutes of changes: each tick compacts to the revision
/// the previous tick saw as newest. That is the scheme and the interval Kubernetes' API server
/// applies to etcd (`--etcd-compaction-interval=5m`): long enough for a controller that lags or
/// restarts to resume where it was, short enough that the change table stays small (it holds a
/// copy of each write's value: a 10,000-instance provisioning run writes some tens of MB of
/// changes, gone two ticks later).
pub const COMPACTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

/// Compacts `store` every `every` until `shutdown` turns true: each tick compacts to the newest
/// revision seen at the tick before (see [`COMPACTION_INTERVAL`]). Failures are logged and
/// retried at the next tick.
pub async fn run_compaction(
    store: Arc<dyn Store>,
    every: std::time::Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut previous: Option<u64> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
        let s = store.clone();
        let seen = previous;
        let r = tokio::task::spawn_blocking(move || {
            let head = s.revision()?;
            if let Some(p) = seen {
                s.compact(p)?;
            }
            Ok::<_, StoreError>(head)
        })
        .await;
        match r {
            Ok(Ok(head)) => {
                if let Some(p) = previous {
                    tracing::debug!(compacted_to = p, head, "change feed compacted");
                }
                previous = Some(head);
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "compacting the change feed failed; retrying at the next tick"),
            Err(e) => tracing::warn!(error = %e, "the compaction task panicked; retrying at the next tick"),
        }
    }
}
