//! Quarantine of records that cannot be decoded.
//!
//! Why: one corrupt row (a disk error, a hand edit, a bug in an old version) must not stop
//! every reader. A read that meets a record it cannot decode skips it and quarantines it here
//! instead of failing: the record stays in the database untouched, is logged once at WARN,
//! counted (for `/metrics`) and listed with its key (for `herd server status`), and the
//! reconciler treats it as present (its instance is never an orphan) and leaves its scale set
//! alone, marked Failed. A record leaves quarantine when it is written or deleted through the
//! store, or at the next start (a record repaired by hand is checked afresh then).

use crate::Kind;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// One quarantined record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub kind: Kind,
    pub key: String,
    /// Why it could not be decoded (the decoder's message; never the record's content).
    pub reason: String,
    pub since: DateTime<Utc>,
}

/// The records a store could not decode. See the module docs.
#[derive(Debug, Default)]
pub struct Quarantine {
    records: Mutex<BTreeMap<(&'static str, String), Quarantined>>,
    /// Records ever quarantined since the server started (a counter for `/metrics`).
    total: AtomicU64,
}

impl Quarantine {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(&'static str, String), Quarantined>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Quarantines `kind`/`key`; logs it (once) and counts it when it is new.
    pub fn add(&self, kind: Kind, key: &str, reason: &str) {
        let mut m = self.lock();
        if m.contains_key(&(kind.as_str(), key.to_string())) {
            return;
        }
        tracing::warn!(
            kind = kind.as_str(),
            key,
            reason,
            "a stored record cannot be decoded: quarantined (left in the database, skipped by readers; its scale set is marked Failed)"
        );
        self.total.fetch_add(1, Ordering::Relaxed);
        m.insert(
            (kind.as_str(), key.to_string()),
            Quarantined { kind, key: key.to_string(), reason: reason.to_string(), since: Utc::now() },
        );
    }

    /// Releases `kind`/`key` (it was written or deleted).
    pub fn clear(&self, kind: Kind, key: &str) {
        let mut m = self.lock();
        if !m.is_empty() && m.remove(&(kind.as_str(), key.to_string())).is_some() {
            tracing::info!(
                kind = kind.as_str(),
                key,
                "a quarantined record was rewritten or deleted: out of quarantine"
            );
        }
    }

    /// Whether `kind`/`key` is quarantined.
    pub fn contains(&self, kind: Kind, key: &str) -> bool {
        let m = self.lock();
        !m.is_empty() && m.contains_key(&(kind.as_str(), key.to_string()))
    }

    /// Every quarantined record, ordered by kind and key.
    pub fn list(&self) -> Vec<Quarantined> {
        self.lock().values().cloned().collect()
    }

    /// Records ever quarantined since start.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}
