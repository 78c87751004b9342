//! The revisioned object store.
//!
//! Why: every piece of desired and observed state herd keeps lives here, and every write is a
//! compare-and-swap on a revision, so two writers (a user and the reconciler, or two users)
//! can never silently overwrite each other. Writes are grouped in transactions: a plan step that
//! creates 10,000 instance records is one commit, not 10,000. The [`Store`] trait hides the
//! backend: SQLite (embedded, the default) now, etcd for HA later. Revisions are global and
//! increase with every transaction, like etcd's `mod_revision`, and serve as the API's ETag.

#![forbid(unsafe_code)]

pub mod quarantine;
pub mod seal;
mod sqlite;

pub use sqlite::SqliteStore;

use herd_model::activity::ActivityEvent;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

/// The kinds of object herd stores. Each kind is its own key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Group,
    ScaleSet,
    /// Reconciler-owned status of a scale set (id counter, circuit breaker).
    ScaleSetStatus,
    Instance,
    Image,
    /// Write-only values (passwords); never returned by the API.
    Secret,
    /// Allocators and other server-wide counters.
    Counter,
    VirtualNetwork,
    PublicIp,
    LoadBalancer,
    /// Each model generation of a scale set as it was (`group/set/<generation>`), so a rolling
    /// upgrade can roll back to the generation its instances came from.
    ModelHistory,
    /// Autoscale settings (`group/name`).
    AutoscaleSetting,
    /// Named metric sources for autoscale (`group/name`); their secrets live under `Secret`.
    MetricSource,
    /// Bounded metric time series (`<series key>`), so autoscale windows survive a restart.
    MetricSeries,
    /// The last evaluations of an autoscale setting (`group/name`).
    AutoscaleHistory,
    /// The cost meter of a scale set (`group/set`): per-instance billing marks and hourly usage.
    /// Kept after the set is deleted, so costs stay reportable.
    Meter,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Group => "group",
            Kind::ScaleSet => "vmss",
            Kind::ScaleSetStatus => "vmss-status",
            Kind::Instance => "instance",
            Kind::Image => "image",
            Kind::Secret => "secret",
            Kind::Counter => "counter",
            Kind::VirtualNetwork => "vnet",
            Kind::PublicIp => "public-ip",
            Kind::LoadBalancer => "lb",
            Kind::ModelHistory => "vmss-model",
            Kind::AutoscaleSetting => "autoscale",
            Kind::MetricSource => "metric-source",
            Kind::MetricSeries => "metric-series",
            Kind::AutoscaleHistory => "autoscale-history",
            Kind::Meter => "meter",
        }
    }
}

/// A stored object: its key, the revision of its last write, and its JSON value.
#[derive(Debug, Clone, PartialEq)]
pub struct Object<T = Value> {
    pub key: String,
    pub revision: u64,
    pub value: T,
}

/// What a write expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No check (only for server-owned objects written by one writer).
    Any,
    /// The key must not exist (create).
    Absent,
    /// The key must exist at exactly this revision (compare-and-swap).
    Revision(u64),
}

/// One write in a transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    Put {
        kind: Kind,
        key: String,
        value: Value,
        expect: Expect,
    },
    Delete {
        kind: Kind,
        key: String,
        expect: Expect,
    },
    /// Appends to the activity log in the same commit as the state change it describes.
    Activity(ActivityEvent),
}

impl WriteOp {
    pub fn put<T: Serialize>(
        kind: Kind,
        key: impl Into<String>,
        value: &T,
        expect: Expect,
    ) -> Result<Self, StoreError> {
        Ok(WriteOp::Put {
            kind,
            key: key.into(),
            value: serde_json::to_value(value).map_err(StoreError::encode)?,
            expect,
        })
    }

    pub fn delete(kind: Kind, key: impl Into<String>, expect: Expect) -> Self {
        WriteOp::Delete { kind, key: key.into(), expect }
    }
}

/// Filter for reading the activity log.
#[derive(Debug, Clone, Default)]
pub struct ActivityFilter {
    pub resource_group: Option<String>,
    pub resource: Option<String>,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub limit: Option<usize>,
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A precondition failed: someone else wrote first. Maps to HTTP 409 / 412.
    #[error("conflict on {kind} '{key}': expected {expected}, found {found}")]
    Conflict { kind: &'static str, key: String, expected: String, found: String },
    #[error("stored data could not be encoded or decoded: {0}")]
    Codec(String),
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// The disk under the store is full (SQLITE_FULL or ENOSPC). Maps to HTTP 507.
    #[error("the data dir's disk is full: {0}")]
    Full(String),
}

impl StoreError {
    fn encode(e: serde_json::Error) -> Self {
        StoreError::Codec(e.to_string())
    }
}

/// A revisioned key-value store with multi-key compare-and-swap transactions.
pub trait Store: Send + Sync + 'static {
    fn get(&self, kind: Kind, key: &str) -> Result<Option<Object>, StoreError>;
    /// Every object of `kind` whose key starts with `prefix`, ordered by key.
    fn list(&self, kind: Kind, prefix: &str) -> Result<Vec<Object>, StoreError>;
    /// Applies every op or none. Returns the revision the transaction committed at.
    fn txn(&self, ops: Vec<WriteOp>) -> Result<u64, StoreError>;
    /// The newest revision committed.
    fn revision(&self) -> Result<u64, StoreError>;
    fn activity(&self, filter: &ActivityFilter) -> Result<Vec<ActivityEvent>, StoreError>;
    /// The records this store could not decode (see [`quarantine`]); `None` for a backend
    /// without quarantine, whose reads then fail on such a record.
    fn quarantine(&self) -> Option<&quarantine::Quarantine> {
        None
    }
    /// The backend's own consistency check (SQLite `PRAGMA integrity_check`): the problems
    /// found, empty when none.
    fn integrity_check(&self) -> Result<Vec<String>, StoreError> {
        Ok(vec![])
    }
}

/// Typed reads on top of any [`Store`].
pub trait StoreExt: Store {
    /// One object, decoded. A record that does not decode is quarantined (when the backend
    /// keeps a quarantine) and reported as [`StoreError::Codec`].
    fn get_as<T: DeserializeOwned>(&self, kind: Kind, key: &str) -> Result<Option<Object<T>>, StoreError> {
        let Some(o) = self.get(kind, key)? else { return Ok(None) };
        match decode(o) {
            Ok(o) => Ok(Some(o)),
            Err(e) => {
                if let Some(q) = self.quarantine() {
                    q.add(kind, key, &e.to_string());
                }
                Err(e)
            }
        }
    }

    /// Every object of `kind` under `prefix`, decoded. With a quarantine, a record that does
    /// not decode is quarantined and skipped, so one corrupt record never stops a reader;
    /// without one, it fails the read. (A record leaves quarantine when it is next written or
    /// deleted, or at the next start.)
    fn list_as<T: DeserializeOwned>(&self, kind: Kind, prefix: &str) -> Result<Vec<Object<T>>, StoreError> {
        let q = self.quarantine();
        let mut out = Vec::new();
        for o in self.list(kind, prefix)? {
            let key = o.key.clone();
            match decode(o) {
                Ok(o) => out.push(o),
                Err(e) => match q {
                    Some(q) => q.add(kind, &key, &e.to_string()),
                    None => return Err(e),
                },
            }
        }
        Ok(out)
    }
}

impl<S: Store + ?Sized> StoreExt for S {}

fn decode<T: DeserializeOwned>(o: Object) -> Result<Object<T>, StoreError> {
    let value = serde_json::from_value(o.value).map_err(|e| StoreError::Codec(format!("{}: {e}", o.key)))?;
    Ok(Object { key: o.key, revision: o.revision, value })
}

#[cfg(test)]
mod tests;
