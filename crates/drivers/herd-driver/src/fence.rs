//! Fencing: the one vocabulary every driver call carries, so a stale caller cannot act.
//!
//! Why: once instances can move between hosts (the agent issues) and the control plane can
//! change leader (HA), two callers may believe they own one instance: a server that lost its
//! leadership, or a call meant for a placement that has since moved. Each call therefore carries
//! a [`Fence`] `{ term, incarnation }`, and a driver refuses a call whose term or incarnation is
//! lower than the highest it has seen for that instance.
//!
//! - [`Term`]: the control plane's leadership term. A single server is always term 1
//!   ([`Term::SINGLE_SERVER`]); the server holds it in one [`LeaderTerm`], which leader election
//!   raises later. Every call a leader makes carries its term.
//! - [`Incarnation`]: one placement of an instance (its build on one host). The reconciler writes
//!   it into the instance's record in the store *before* the driver is called for that placement,
//!   so a crash can never leave a placement the store does not know. Creation is incarnation 1;
//!   moving the instance to another host (replacement, redeploy) takes the next one. Restart,
//!   power changes, resize and reimage act on the same placement and keep it. Records written
//!   before fencing existed read as 0 ([`Incarnation::UNRECORDED`]).
//!
//! ```text
//!   call (term t, incarnation i)         highest seen (T, I), per instance
//!        │
//!        ├─ none recorded ─────────────────────────────▶ accept, record (t, i)
//!        ├─ t < T  or  i < I ──────────────────────────▶ refuse: DriverError::Fenced
//!        ├─ t = T and i = I ───────────────────────────▶ accept
//!        └─ t ≥ T and i ≥ I, one higher ───────────────▶ record (t, i), then accept
//! ```
//! A driver records the fence before it acts on it, and the record goes with the instance:
//! `destroy` removes it along with everything else the instance owns. The qemu driver keeps it
//! in the instance directory (file [`FENCE_FILE`], written atomically, so it survives a server
//! restart), the process driver in the instance's state record (synced when raised; it reads a
//! [`FENCE_FILE`] left by an older server); the sim driver keeps it in memory.
//!
//! Reads (`list`, `stats`, `console_log`) carry no fence: they change nothing, and a stale
//! reader can do no harm. Destroying an orphan (an instance the store has no record of, hence no
//! incarnation) uses [`Fence::sweep`]: it checks the term only.

use herd_model::InstanceKey;
use serde::{Deserialize, Serialize};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The control plane's leadership term. Higher terms supersede lower ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Term(pub u64);

impl Term {
    /// The term of a server that is the only control plane (no leader election).
    pub const SINGLE_SERVER: Term = Term(1);
}

impl std::fmt::Display for Term {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One placement of an instance; higher incarnations supersede lower ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Incarnation(pub u64);

impl Incarnation {
    /// What an instance record written before fencing existed carries.
    pub const UNRECORDED: Incarnation = Incarnation(0);
    /// The first placement: creation.
    pub const FIRST: Incarnation = Incarnation(1);
    /// Reserved for [`Fence::sweep`]: matches any incarnation.
    pub const ANY: Incarnation = Incarnation(u64::MAX);

    /// The incarnation of the next placement.
    pub fn next(self) -> Incarnation {
        Incarnation(self.0.saturating_add(1).min(u64::MAX - 1))
    }
}

impl std::fmt::Display for Incarnation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if *self == Self::ANY {
            f.write_str("any")
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// What a driver call carries: who is asking (term) and for which placement (incarnation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fence {
    pub term: Term,
    pub incarnation: Incarnation,
}

impl std::fmt::Display for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "term {} incarnation {}", self.term, self.incarnation)
    }
}

/// Which part of a fence a call was refused on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FencedOn {
    Term,
    Incarnation,
}

/// A call refused because the driver has seen a higher fence for the instance. Permanent:
/// repeating the call cannot succeed; the caller is stale.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "instance {key}: call refused: it carries {call}, lower in {on} than the highest this host has seen ({seen})",
    on = match self.on() { FencedOn::Term => "term", FencedOn::Incarnation => "incarnation" }
)]
pub struct Fenced {
    pub key: InstanceKey,
    /// The highest fence seen for the instance.
    pub seen: Fence,
    /// The fence the refused call carried.
    pub call: Fence,
}

impl Fenced {
    /// The part the call was refused on (the term, when both are lower).
    pub fn on(&self) -> FencedOn {
        if self.call.term < self.seen.term {
            FencedOn::Term
        } else {
            FencedOn::Incarnation
        }
    }
}

/// How an admitted call relates to the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Nothing to write: the record already holds this fence.
    Unchanged,
    /// The record must become this fence before the call acts.
    Raise(Fence),
}

impl Fence {
    /// Term 1, incarnation 1: a single server's first placement of an instance.
    pub const FIRST: Fence = Fence { term: Term::SINGLE_SERVER, incarnation: Incarnation::FIRST };

    pub const fn new(term: Term, incarnation: Incarnation) -> Self {
        Self { term, incarnation }
    }

    /// The fence of a call that removes an instance the store has no record of (an orphan, so
    /// no incarnation is known): checked on the term only, and it never raises the recorded
    /// incarnation.
    pub const fn sweep(term: Term) -> Self {
        Self { term, incarnation: Incarnation::ANY }
    }

    /// Checks this call's fence against the highest one seen for `key` (`None`: nothing
    /// recorded, as for an instance created before fencing: the call is accepted).
    pub fn admit(self, key: &InstanceKey, seen: Option<Fence>) -> Result<Admission, Fenced> {
        let Some(seen) = seen else {
            return Ok(if self.incarnation == Incarnation::ANY {
                Admission::Unchanged
            } else {
                Admission::Raise(self)
            });
        };
        let incarnation = if self.incarnation == Incarnation::ANY { seen.incarnation } else { self.incarnation };
        if self.term < seen.term || incarnation < seen.incarnation {
            return Err(Fenced { key: key.clone(), seen, call: self });
        }
        let next = Fence { term: self.term, incarnation };
        Ok(if next == seen { Admission::Unchanged } else { Admission::Raise(next) })
    }
}

/// The server's current leadership term, shared by everything that calls drivers. There is one
/// per server; leader election (HA) raises it. Clones share the value.
#[derive(Debug, Clone)]
pub struct LeaderTerm(Arc<AtomicU64>);

impl LeaderTerm {
    /// The term of the only server: [`Term::SINGLE_SERVER`].
    pub fn single_server() -> Self {
        Self(Arc::new(AtomicU64::new(Term::SINGLE_SERVER.0)))
    }

    pub fn current(&self) -> Term {
        Term(self.0.load(Ordering::SeqCst))
    }

    /// Raises the term to `to` (never lowers it); returns the term now in force.
    pub fn raise(&self, to: Term) -> Term {
        Term(self.0.fetch_max(to.0, Ordering::SeqCst).max(to.0))
    }

    /// The fence of a call for the placement `incarnation` under the current term.
    pub fn fence(&self, incarnation: Incarnation) -> Fence {
        Fence::new(self.current(), incarnation)
    }
}

impl Default for LeaderTerm {
    fn default() -> Self {
        Self::single_server()
    }
}

/// The file in an instance directory that holds the highest fence seen for it.
pub const FENCE_FILE: &str = "fence";

/// A fence record that exists but cannot be read. The driver refuses the call rather than
/// guess: accepting it could let a stale caller act.
#[derive(Debug, thiserror::Error)]
pub enum FenceRecordError {
    #[error("reading fence record {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("fence record {path} is malformed: {source}")]
    Malformed {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    /// A host's agent could not read its fence record (its message, as the agent sent it).
    #[error("host {host}: {message}")]
    Remote { host: String, message: String },
}

/// Reads the fence recorded in `dir` (`None` if none is).
pub fn read_record(dir: &Path) -> Result<Option<Fence>, FenceRecordError> {
    let path = dir.join(FENCE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| FenceRecordError::Malformed { path: path.display().to_string(), source }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FenceRecordError::Read { path: path.display().to_string(), source }),
    }
}

/// Records `fence` in `dir` atomically and durably: a uniquely named temporary file, flushed
/// to disk, renamed over the record, and the directory synced. A crash leaves the old record
/// or the new one, never a torn one.
pub fn write_record(dir: &Path, fence: Fence) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(".{FENCE_FILE}.tmp-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(&serde_json::to_vec(&fence).map_err(io::Error::other)?)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, dir.join(FENCE_FILE))?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// What the process and qemu drivers do at the start of every fenced call, under the instance's
/// lock: check `call` against the record in the instance directory `dir` and raise the record
/// if the call is higher. An absent directory (an instance not built yet) records nothing; a
/// driver that then builds it calls this again once the directory exists, before starting it.
pub fn admit_in_dir(key: &InstanceKey, dir: &Path, call: Fence) -> Result<(), crate::DriverError> {
    if !dir.is_dir() {
        return Ok(());
    }
    let seen =
        read_record(dir).map_err(|e| crate::DriverError::FenceRecord { key: key.clone(), source: Arc::new(e) })?;
    match call.admit(key, seen)? {
        Admission::Unchanged => Ok(()),
        Admission::Raise(f) => write_record(dir, f).map_err(|e| crate::DriverError::io(key, "recording the fence", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_model::{GroupName, InstanceId, ScaleSetName};

    fn key() -> InstanceKey {
        InstanceKey { group: GroupName::new("g").unwrap(), set: ScaleSetName::new("s").unwrap(), id: InstanceId(1) }
    }

    fn f(t: u64, i: u64) -> Fence {
        Fence::new(Term(t), Incarnation(i))
    }

    #[test]
    fn lower_term_or_incarnation_is_refused_equal_and_higher_pass() {
        let k = key();
        let seen = Some(f(2, 3));
        let e = f(1, 3).admit(&k, seen).unwrap_err();
        assert_eq!((e.on(), e.seen, e.call), (FencedOn::Term, f(2, 3), f(1, 3)));
        assert!(
            e.to_string().contains("term 1 incarnation 3") && e.to_string().contains("term 2 incarnation 3"),
            "{e}"
        );
        let e = f(2, 2).admit(&k, seen).unwrap_err();
        assert_eq!(e.on(), FencedOn::Incarnation);
        assert!(e.to_string().contains("lower in incarnation"), "{e}");
        // A higher term does not excuse a lower incarnation.
        assert_eq!(f(3, 2).admit(&k, seen).unwrap_err().on(), FencedOn::Incarnation);
        assert_eq!(f(2, 3).admit(&k, seen), Ok(Admission::Unchanged));
        assert_eq!(f(2, 4).admit(&k, seen), Ok(Admission::Raise(f(2, 4))));
        assert_eq!(f(5, 3).admit(&k, seen), Ok(Admission::Raise(f(5, 3))));
        assert_eq!(f(0, 0).admit(&k, None), Ok(Admission::Raise(f(0, 0))));
    }

    #[test]
    fn a_sweep_checks_the_term_only_and_records_no_incarnation() {
        let k = key();
        assert_eq!(Fence::sweep(Term(2)).admit(&k, Some(f(2, 7))), Ok(Admission::Unchanged));
        assert_eq!(Fence::sweep(Term(3)).admit(&k, Some(f(2, 7))), Ok(Admission::Raise(f(3, 7))));
        assert_eq!(Fence::sweep(Term(1)).admit(&k, Some(f(2, 7))).unwrap_err().on(), FencedOn::Term);
        assert_eq!(Fence::sweep(Term(1)).admit(&k, None), Ok(Admission::Unchanged));
    }

    #[test]
    fn the_leader_term_only_rises() {
        let t = LeaderTerm::single_server();
        let shared = t.clone();
        assert_eq!(t.current(), Term(1));
        assert_eq!(t.raise(Term(4)), Term(4));
        assert_eq!(t.raise(Term(2)), Term(4));
        assert_eq!(shared.fence(Incarnation(9)), f(4, 9));
        assert_eq!(Incarnation(1).next(), Incarnation(2));
        assert_ne!(Incarnation(u64::MAX - 1).next(), Incarnation::ANY);
    }

    #[test]
    fn records_round_trip_and_a_torn_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let k = key();
        assert_eq!(read_record(dir.path()).unwrap(), None);
        admit_in_dir(&k, dir.path(), f(1, 2)).unwrap();
        assert_eq!(read_record(dir.path()).unwrap(), Some(f(1, 2)));
        let err = admit_in_dir(&k, dir.path(), f(1, 1)).unwrap_err();
        assert!(matches!(&err, crate::DriverError::Fenced(x) if x.seen == f(1, 2)), "{err:?}");
        assert!(!err.retryable());
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(FENCE_FILE)]);
        std::fs::write(dir.path().join(FENCE_FILE), "{\"term\":").unwrap();
        let err = admit_in_dir(&k, dir.path(), f(9, 9)).unwrap_err();
        assert!(matches!(&err, crate::DriverError::FenceRecord { .. }), "{err:?}");
        // An absent directory records nothing and refuses nothing.
        admit_in_dir(&k, &dir.path().join("absent"), f(0, 0)).unwrap();
        assert!(!dir.path().join("absent").exists());
    }
}
