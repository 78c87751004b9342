//! The revisioned object store.
//!
//! Why: every piece of desired and observed state herd keeps lives here, and every write is a
//! compare-and-swap on a revision, so two writers (a user and the reconciler, or two users)
//! can never silently overwrite each other. Writes are grouped in transactions: a plan step that
//! creates 10,000 instance records is one commit, not 10,000. The [`Store`] trait hides the
//! backend: SQLite (embedded, the default) now, etcd for HA later. Revisions are global and
//! increase with every transaction, like etcd's `mod_revision`, and serve as the API's ETag.
//!
//! The contract is etcd's, so an etcd backend can meet it later (see [`conformance`], the suite
//! every backend passes):
//! - **Revisions.** Each object carries the revision of its last write (`revision`, etcd's
//!   `mod_revision`) and of the write that created it (`create_revision`).
//! - **Transactions** ([`Store::txn`]) apply every op or none and hold at most
//!   [`MAX_TXN_OPS`] operations and [`MAX_TXN_BYTES`] bytes ([`check_txn`], the one check every
//!   backend applies); a caller with more writes splits them with [`chunks`].
//! - **Guards** ([`WriteOp::Guard`]): a transaction may require a key to exist with a given
//!   create revision (etcd's `CreateRevision` compare), as a leader key is held.
//! - **Watch** ([`Store::watch`], [`Watcher`]): an ordered, resumable feed of every put and
//!   delete since a revision, which answers [`StoreError::Compacted`] below the compaction
//!   point ([`Store::compact`]). See [`watch`](mod@watch) for how controllers use it.

#![forbid(unsafe_code)]

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod quarantine;
pub mod seal;
mod sqlite;
pub mod watch;

pub use sqlite::SqliteStore;
pub use watch::{run_compaction, Change, ChangeEvent, KindsChanged, WatchBatch, Watcher, COMPACTION_INTERVAL};

use herd_model::activity::ActivityEvent;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

/// The kinds of object herd stores. Each kind is its own key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
    /// Network security groups (`group/name`).
    NetworkSecurityGroup,
    /// Join tokens for hosts (`<id>`), their secrets only as hashes.
    JoinToken,
    /// Hosts joined by `herd agent` (`<name>`): labels, reported capacity, the agent's
    /// certificate fingerprint, cordon.
    Host,
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
            Kind::NetworkSecurityGroup => "nsg",
            Kind::JoinToken => "join-token",
            Kind::Host => "host",
        }
    }

    /// Every kind, for parsing a stored name back.
    pub const ALL: [Kind; 19] = [
        Kind::Group,
        Kind::ScaleSet,
        Kind::ScaleSetStatus,
        Kind::Instance,
        Kind::Image,
        Kind::Secret,
        Kind::Counter,
        Kind::VirtualNetwork,
        Kind::PublicIp,
        Kind::LoadBalancer,
        Kind::ModelHistory,
        Kind::AutoscaleSetting,
        Kind::MetricSource,
        Kind::MetricSeries,
        Kind::AutoscaleHistory,
        Kind::Meter,
        Kind::NetworkSecurityGroup,
        Kind::JoinToken,
        Kind::Host,
    ];

    /// The kind whose [`Kind::as_str`] is `s`.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The most operations one transaction holds (etcd's `--max-txn-ops` default).
pub const MAX_TXN_OPS: usize = 128;

/// The most bytes one transaction holds, counted as [`WriteOp::size`] sums them. etcd refuses
/// requests over `--max-request-bytes` (1.5 MiB by default); 1 MiB of keys and values leaves
/// room under it for the request's framing and compares.
pub const MAX_TXN_BYTES: usize = 1024 * 1024;

/// A stored object: its key, the revision of its last write, the revision of the write that
/// created it, and its JSON value.
#[derive(Debug, Clone, PartialEq)]
pub struct Object<T = Value> {
    pub key: String,
    /// The revision of the last write (etcd's `mod_revision`): the compare-and-swap token.
    pub revision: u64,
    /// The revision of the write that created the key (etcd's `create_revision`); a key deleted
    /// and created again gets a new one. Guards ([`WriteOp::Guard`]) compare it. Objects stored
    /// before this was recorded (a data dir from an older herd) carry their last write's
    /// revision here, the oldest one known.
    pub create_revision: u64,
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
    /// A put whose value is already encoded as JSON text ([`WriteOp::put_encoded`]): the same
    /// write as [`WriteOp::Put`], without a [`Value`] tree built only to be encoded again.
    PutText {
        kind: Kind,
        key: String,
        text: String,
        expect: Expect,
    },
    Delete {
        kind: Kind,
        key: String,
        expect: Expect,
    },
    /// Appends to the activity log in the same commit as the state change it describes.
    /// (Not a key: it is not in the [`watch`](Store::watch) feed.)
    Activity(ActivityEvent),
    /// Writes nothing: the transaction applies only if `kind`/`key` exists and was created at
    /// `create_revision` (etcd's `CreateRevision` compare), else it fails with
    /// [`StoreError::GuardFailed`]. A leader holds its leader key this way: its writes carry the
    /// key's create revision, so they fail once the key was lost and taken by another.
    Guard {
        kind: Kind,
        key: String,
        create_revision: u64,
    },
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

    /// A put encoded to JSON text at once (see [`WriteOp::PutText`]): what writers of many
    /// records use (a reconcile pass writes 10,000).
    pub fn put_encoded<T: Serialize>(
        kind: Kind,
        key: impl Into<String>,
        value: &T,
        expect: Expect,
    ) -> Result<Self, StoreError> {
        let text = serde_json::to_string(value).map_err(StoreError::encode)?;
        Ok(WriteOp::PutText { kind, key: key.into(), text, expect })
    }

    /// The kind and key a put (of either form) writes.
    pub fn put_key(&self) -> Option<(Kind, &str)> {
        match self {
            WriteOp::Put { kind, key, .. } | WriteOp::PutText { kind, key, .. } => Some((*kind, key)),
            _ => None,
        }
    }

    pub fn delete(kind: Kind, key: impl Into<String>, expect: Expect) -> Self {
        WriteOp::Delete { kind, key: key.into(), expect }
    }

    /// A guard: see [`WriteOp::Guard`].
    pub fn guard(kind: Kind, key: impl Into<String>, create_revision: u64) -> Self {
        WriteOp::Guard { kind, key: key.into(), create_revision }
    }

    /// The bytes this op counts against [`MAX_TXN_BYTES`]: its kind and key, plus its value's
    /// JSON (an activity event's JSON body). Encodes the value to count it (without keeping it).
    pub fn size(&self) -> usize {
        let (kind, key) = match self {
            WriteOp::Put { kind, key, .. }
            | WriteOp::PutText { kind, key, .. }
            | WriteOp::Delete { kind, key, .. }
            | WriteOp::Guard { kind, key, .. } => (kind.as_str().len(), key.len()),
            WriteOp::Activity(ev) => (0, ev.resource_group.len() + ev.resource.len()),
        };
        let value = match self {
            WriteOp::Put { value, .. } => json_len(value),
            WriteOp::PutText { text, .. } => text.len(),
            WriteOp::Activity(ev) => json_len(ev),
            WriteOp::Delete { .. } | WriteOp::Guard { .. } => 0,
        };
        kind + key + value
    }
}

/// At least the length of `v`'s JSON encoding, found without encoding it: a string counts 6
/// bytes per byte (the longest escape, `\u001f`), a number 24.
fn json_len_bound(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 24,
        Value::String(s) => 2 + 6 * s.len(),
        Value::Array(a) => 2 + a.iter().map(|x| json_len_bound(x) + 1).sum::<usize>(),
        Value::Object(m) => 2 + m.iter().map(|(k, x)| 4 + 6 * k.len() + json_len_bound(x)).sum::<usize>(),
    }
}

/// The length of `v`'s JSON encoding, counted without building it.
fn json_len<T: Serialize + ?Sized>(v: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing to a counter cannot fail; a value that cannot encode fails later, in the txn.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// Which transaction limit a transaction broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnLimit {
    /// [`MAX_TXN_OPS`] operations.
    Operations,
    /// [`MAX_TXN_BYTES`] bytes.
    Bytes,
}

impl std::fmt::Display for TxnLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TxnLimit::Operations => write!(f, "{MAX_TXN_OPS} operations"),
            TxnLimit::Bytes => write!(f, "{MAX_TXN_BYTES} bytes"),
        }
    }
}

/// The one transaction-size check every backend applies before it writes anything: at most
/// [`MAX_TXN_OPS`] operations and [`MAX_TXN_BYTES`] bytes (`ops` operations of `bytes` bytes in
/// all, as [`WriteOp::size`] counts them).
pub fn check_txn_size(ops: usize, bytes: usize) -> Result<(), StoreError> {
    if ops > MAX_TXN_OPS {
        return Err(StoreError::TxnTooLarge { limit: TxnLimit::Operations, actual: ops });
    }
    if bytes > MAX_TXN_BYTES {
        return Err(StoreError::TxnTooLarge { limit: TxnLimit::Bytes, actual: bytes });
    }
    Ok(())
}

/// [`check_txn_size`] on a list of ops.
pub fn check_txn(ops: &[WriteOp]) -> Result<(), StoreError> {
    if ops.len() > MAX_TXN_OPS {
        return check_txn_size(ops.len(), 0);
    }
    check_txn_size(ops.len(), ops.iter().map(WriteOp::size).sum())
}

/// Splits `ops`, in order, into the fewest consecutive transactions that each fit the limits
/// (each at most `MAX_TXN_OPS - reserve` ops, so a caller can add `reserve` ops of its own to
/// one chunk). Each chunk is atomic; the whole is not, so a caller that splits must make its
/// writes safe to repeat (see docs/architecture.md, "Transaction limits"). Fails with
/// [`StoreError::TxnTooLarge`] when one op alone is over [`MAX_TXN_BYTES`].
pub fn chunks(ops: Vec<WriteOp>, reserve: usize) -> Result<Vec<Vec<WriteOp>>, StoreError> {
    let max_ops = MAX_TXN_OPS.saturating_sub(reserve).max(1);
    let mut out = Vec::new();
    let mut cur: Vec<WriteOp> = Vec::new();
    let mut bytes = 0;
    for op in ops {
        let size = match &op {
            // An upper bound first, which needs no encoding: 10,000 records are chunked every
            // pass, and encoding them only to count would cost as much as writing them.
            WriteOp::Put { kind, key, value, .. } => {
                let bound = kind.as_str().len() + key.len() + json_len_bound(value);
                if bound <= MAX_TXN_BYTES {
                    bound
                } else {
                    op.size()
                }
            }
            _ => op.size(),
        };
        check_txn_size(1, size)?;
        if !cur.is_empty() && (cur.len() == max_ops || bytes + size > MAX_TXN_BYTES) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += size;
        cur.push(op);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
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
    Codec(#[from] CodecError),
    #[error("storage backend failed: {0}")]
    Backend(#[from] BackendError),
    /// The disk under the store is full (SQLITE_FULL). Maps to HTTP 507.
    #[error("the data dir's disk is full: {0}")]
    Full(#[from] DiskFull),
    /// A transaction over a limit (see [`check_txn`]); nothing was written. A caller bug: split
    /// the writes with [`chunks`].
    #[error("a transaction holds at most {limit}; this one has {actual}")]
    TxnTooLarge { limit: TxnLimit, actual: usize },
    /// A [`WriteOp::Guard`] did not hold; nothing was written.
    #[error("guard failed on {kind} '{key}': expected create revision {expected}, found {}", found.map_or("no object".to_string(), |f| format!("create revision {f}")))]
    GuardFailed { kind: &'static str, key: String, expected: u64, found: Option<u64> },
    /// A watch asked for changes the store no longer keeps: start again from a fresh read
    /// (list, then watch from the revision after it).
    #[error("revision {requested} is compacted: changes are kept from revision {compacted} on")]
    Compacted { requested: u64, compacted: u64 },
    /// A compaction asked for a revision not yet written.
    #[error("cannot compact to revision {requested}: the newest revision is {head}")]
    FutureRevision { requested: u64, head: u64 },
}

impl StoreError {
    fn encode(e: serde_json::Error) -> Self {
        StoreError::Codec(CodecError::Json(e))
    }

    /// Whether repeating the same operation later may succeed with nothing else changed: a
    /// conflict (re-read and retry), a busy or locked database, or a watch below the
    /// compaction point (start again from a fresh read). A full disk, undecodable data, a
    /// transaction over the limit, a failed guard or a closed store stay as they are until
    /// someone changes something.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Conflict { .. } | Self::Compacted { .. } => true,
            Self::Backend(BackendError::Sqlite(e)) => matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            Self::Backend(_)
            | Self::Codec(_)
            | Self::Full(_)
            | Self::TxnTooLarge { .. }
            | Self::GuardFailed { .. }
            | Self::FutureRevision { .. } => false,
        }
    }
}

/// Why stored data could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A value that is not (or does not decode as) the expected JSON.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// The same, naming the record (`what`: its key, or `change of KEY`).
    #[error("{what}: {source}")]
    JsonAt {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A stored value that is not even text (a blob written by hand).
    #[error("{0}")]
    NotText(#[source] rusqlite::Error),
    #[error("unknown kind '{0}' in the change feed")]
    UnknownKind(String),
    #[error("sealing failed")]
    Seal,
    #[error("a sealed secret could not be opened (wrong key or damaged data)")]
    Unseal,
    /// A corrupt record, set aside in the quarantine.
    #[error("{kind} '{key}' is corrupt (quarantined): {source}")]
    Quarantined {
        kind: &'static str,
        key: String,
        #[source]
        source: Box<CodecError>,
    },
}

/// Why the storage backend failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// A file of the store (`what` names it) could not be read, created or narrowed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no database at {}", .0.display())]
    NoDatabase(std::path::PathBuf),
    #[error("database schema version {found} is newer than this herd ({known}); upgrade herd")]
    SchemaTooNew { found: usize, known: usize },
    #[error("secret key {} is not 32 bytes", .0.display())]
    SecretKeySize(std::path::PathBuf),
    #[error("the store's revision channel closed")]
    Closed,
}

/// The backend's report that the disk under the store is full.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct DiskFull(pub rusqlite::Error);

/// A revisioned key-value store with multi-key compare-and-swap transactions.
pub trait Store: Send + Sync + 'static {
    fn get(&self, kind: Kind, key: &str) -> Result<Option<Object>, StoreError>;
    /// Every object of `kind` whose key starts with `prefix`, ordered by key.
    fn list(&self, kind: Kind, prefix: &str) -> Result<Vec<Object>, StoreError>;
    /// [`Store::get`] with the value as its stored JSON text, not decoded: what the typed reads
    /// ([`StoreExt::get_as`]) decode from, straight into their type.
    ///
    /// Why: decoding text into a [`Value`] tree and then the tree into a record allocates
    /// every field name and value twice; a reader of 10,000 instance records per reconcile
    /// pass (or per convergence poll) spent most of its time there. The default re-encodes
    /// [`Store::get`]'s value; a backend that keeps text (SQLite) returns it as it is.
    fn get_text(&self, kind: Kind, key: &str) -> Result<Option<Object<String>>, StoreError> {
        self.get(kind, key)?.map(encode_text).transpose()
    }
    /// [`Store::list`] with each value as its stored JSON text (see [`Store::get_text`]). A row
    /// that is not even text is quarantined and skipped, as [`Store::list`] does with a row
    /// that is not JSON; text that is not JSON is left to the typed read, which quarantines it.
    fn list_text(&self, kind: Kind, prefix: &str) -> Result<Vec<Object<String>>, StoreError> {
        self.list(kind, prefix)?.into_iter().map(encode_text).collect()
    }
    /// Applies every op or none. Returns the revision the transaction committed at.
    fn txn(&self, ops: Vec<WriteOp>) -> Result<u64, StoreError>;
    /// The newest revision committed.
    fn revision(&self) -> Result<u64, StoreError>;
    /// The pull form of the change feed: the puts and deletes at revisions `from_revision` and
    /// on, in revision order (and in op order within a revision), at most about `limit` of them
    /// (a batch ends on a revision boundary, so it may hold up to one revision's changes, at
    /// most [`MAX_TXN_OPS`], more). Resume with [`WatchBatch::next`]. Below the compaction
    /// point it answers [`StoreError::Compacted`]. See [`watch`](mod@watch).
    fn watch(&self, from_revision: u64, limit: usize) -> Result<WatchBatch, StoreError>;
    /// Which kinds had a put or a delete from `from_revision` up to the newest revision, and
    /// where to continue, without the changes' values: what a consumer that only needs to know
    /// *what* changed reads (the controller runtime wakes controllers by kind). Answers
    /// [`StoreError::Compacted`] below the compaction point, as [`Store::watch`] does.
    ///
    /// The default reads the feed through [`Store::watch`]; a backend that can skip the values
    /// (SQLite reads one column of an index range) should.
    fn changed_kinds(&self, from_revision: u64) -> Result<KindsChanged, StoreError> {
        let head = self.revision()?;
        let mut kinds = std::collections::BTreeSet::new();
        let mut next = from_revision;
        while next <= head {
            let batch = self.watch(next, 1000)?;
            kinds.extend(batch.changes.iter().map(|c| c.kind));
            next = batch.next.max(next + 1);
        }
        Ok(KindsChanged { kinds, next: next.max(from_revision) })
    }
    /// The newest revision committed, as a `tokio::sync::watch` channel that changes after
    /// every commit: async code waits on it instead of polling (see [`Watcher`]).
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;
    /// Discards the changes below `revision`: watches from below it answer
    /// [`StoreError::Compacted`] from then on. Compacting to or below the current compaction
    /// point does nothing; past the newest revision + 1 is [`StoreError::FutureRevision`].
    /// Objects are not touched (the store keeps only their latest version anyway).
    fn compact(&self, revision: u64) -> Result<(), StoreError>;
    /// The compaction point: the lowest revision a watch can start from.
    fn compacted(&self) -> Result<u64, StoreError>;
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
        let Some(o) = self.get_text(kind, key)? else { return Ok(None) };
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
        for o in self.list_text(kind, prefix)? {
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

/// Decodes a stored text straight into `T` (no [`Value`] tree in between).
fn decode<T: DeserializeOwned>(o: Object<String>) -> Result<Object<T>, StoreError> {
    let value = serde_json::from_str(&o.value).map_err(|source| CodecError::JsonAt { what: o.key.clone(), source })?;
    Ok(Object { key: o.key, revision: o.revision, create_revision: o.create_revision, value })
}

/// An object with its value encoded back to JSON text (the default [`Store::get_text`]).
fn encode_text(o: Object) -> Result<Object<String>, StoreError> {
    let value = serde_json::to_string(&o.value).map_err(StoreError::encode)?;
    Ok(Object { key: o.key, revision: o.revision, create_revision: o.create_revision, value })
}

#[cfg(test)]
mod tests;
