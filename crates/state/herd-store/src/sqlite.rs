//! The embedded SQLite backend: one file under the data dir, WAL mode, ordered migrations.

use crate::quarantine::Quarantine;
use crate::watch::{Change, ChangeEvent, WatchBatch};
use crate::{
    check_txn_size, ActivityFilter, BackendError, CodecError, DiskFull, Expect, Kind, Object, Store, StoreError,
    WriteOp,
};
use herd_model::activity::ActivityEvent;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::sync::Mutex;

/// A change's row id in the `changes` table: its revision and its place in the transaction
/// (`revision * 256 + seq`). A transaction holds at most `MAX_TXN_OPS` (128) ops, so `seq`
/// fits; as a rowid, the table is one B-tree appended at its end and scanned by revision range.
fn change_id(revision: i64, seq: i64) -> i64 {
    revision * 256 + seq
}

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
pub(crate) const MIGRATIONS: &[&str] = &[
    "CREATE TABLE objects (
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        revision INTEGER NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (kind, key)
     ) WITHOUT ROWID;
     CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
     INSERT INTO meta (name, value) VALUES ('revision', 0);
     CREATE TABLE activity (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        time TEXT NOT NULL,
        resource_group TEXT NOT NULL,
        resource TEXT NOT NULL,
        body TEXT NOT NULL
     );
     CREATE INDEX activity_by_resource ON activity (resource_group, resource, seq);",
    // 2: create revisions and the change feed (see `crate::watch`). Objects from before keep
    // their last write's revision as create revision (the oldest one known), and the feed of an
    // existing store starts after its current revision: older changes were never recorded, so
    // they read as compacted.
    "ALTER TABLE objects ADD COLUMN create_revision INTEGER NOT NULL DEFAULT 0;
     UPDATE objects SET create_revision = revision;
     CREATE TABLE changes (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        create_revision INTEGER NOT NULL,
        value TEXT
     );
     INSERT INTO meta (name, value)
        SELECT 'compacted', CASE WHEN value = 0 THEN 0 ELSE value + 1 END FROM meta WHERE name = 'revision';",
];

/// The SQLite-backed [`Store`].
#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<Connection>,
    quarantine: Quarantine,
    /// The newest revision, for [`Store::subscribe`]; sent after every commit.
    head: tokio::sync::watch::Sender<u64>,
    /// The column read as an object's create revision: `create_revision`, or `revision` in a
    /// database of schema 1 opened read-only (not migrated) by `herd store check`.
    create_col: &'static str,
}

fn backend(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull => {
            StoreError::Full(DiskFull(e))
        }
        _ => StoreError::Backend(BackendError::Sqlite(e)),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and runs pending migrations.
    ///
    /// The database and its `-wal` and `-shm` files are private to the owner (mode 0600): the
    /// file is created 0600 before SQLite opens it (SQLite gives its journal files the
    /// database's mode), and existing files are narrowed to 0600.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        make_private(path)?;
        let conn = Connection::open(path).map_err(backend)?;
        let store = Self::init(conn)?;
        for suffix in ["-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            narrow(Path::new(&p))?;
        }
        Ok(store)
    }

    /// Opens an existing database read-only, for offline checks (`herd store check`). Runs no
    /// migration and changes no record (SQLite may create the empty `-wal`/`-shm` files a
    /// reader of a WAL database needs, with the database's mode).
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        if !path.is_file() {
            return Err(BackendError::NoDatabase(path.to_path_buf()).into());
        }
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(backend)?;
        Self::with_conn(conn)
    }

    /// A private in-memory store, for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory().map_err(backend)?)
    }

    fn init(mut conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL").map_err(backend)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(backend)?;
        let done: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(backend)?;
        if done > MIGRATIONS.len() {
            return Err(BackendError::SchemaTooNew { found: done, known: MIGRATIONS.len() }.into());
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
            let tx = conn.transaction().map_err(backend)?;
            tx.execute_batch(sql).map_err(backend)?;
            tx.pragma_update(None, "user_version", i + 1).map_err(backend)?;
            tx.commit().map_err(backend)?;
        }
        Self::with_conn(conn)
    }

    fn with_conn(conn: Connection) -> Result<Self, StoreError> {
        let rev = head_revision(&conn)?;
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(backend)?;
        Ok(Self {
            conn: Mutex::new(conn),
            quarantine: Quarantine::default(),
            head: tokio::sync::watch::Sender::new(rev),
            create_col: if version >= 2 { "create_revision" } else { "revision" },
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Creates `path` with mode 0600 if absent, or narrows it to 0600.
fn make_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| StoreError::from(BackendError::Io { what: path.display().to_string(), source });
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => narrow(path),
        Err(e) => Err(io(e)),
    }
}

/// Sets an existing file's mode to 0600 (nothing if it does not exist).
fn narrow(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o777 != 0o600 => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|source| BackendError::Io { what: path.display().to_string(), source }.into())
        }
        _ => Ok(()),
    }
}

fn row_object(key: String, revision: i64, create_revision: i64, value: String) -> Result<Object, StoreError> {
    let value = serde_json::from_str(&value).map_err(CodecError::Json)?;
    Ok(Object { key, revision: revision as u64, create_revision: create_revision as u64, value })
}

fn head_revision(conn: &Connection) -> Result<u64, StoreError> {
    let rev: i64 =
        conn.query_row("SELECT value FROM meta WHERE name = 'revision'", [], |r| r.get(0)).map_err(backend)?;
    Ok(rev as u64)
}

fn compaction_point(conn: &Connection) -> Result<u64, StoreError> {
    let rev: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE name = 'compacted'", [], |r| r.get(0))
        .optional()
        .map_err(backend)?;
    Ok(rev.unwrap_or(0) as u64)
}

/// Reads one row of the `changes` table (id, kind, key, create_revision, value).
fn row_change(r: &rusqlite::Row<'_>) -> Result<(i64, Change), StoreError> {
    let id: i64 = r.get(0).map_err(backend)?;
    let revision = id / 256;
    let kind: String = r.get(1).map_err(backend)?;
    let kind = Kind::parse(&kind).ok_or_else(|| StoreError::from(CodecError::UnknownKind(kind.clone())))?;
    let key: String = r.get(2).map_err(backend)?;
    let create_revision: i64 = r.get(3).map_err(backend)?;
    let value: Option<String> = r.get(4).map_err(backend)?;
    let event = match value {
        None => ChangeEvent::Delete,
        Some(v) => ChangeEvent::Put {
            create_revision: create_revision as u64,
            value: serde_json::from_str(&v)
                .map_err(|source| CodecError::JsonAt { what: format!("change of {key}"), source })?,
        },
    };
    Ok((id, Change { revision: revision as u64, kind, key, event }))
}

fn check(kind: Kind, key: &str, expect: Expect, found: Option<i64>) -> Result<(), StoreError> {
    let ok = match (expect, found) {
        (Expect::Any, _) => true,
        (Expect::Absent, None) => true,
        (Expect::Revision(r), Some(f)) => r == f as u64,
        _ => false,
    };
    if ok {
        return Ok(());
    }
    Err(StoreError::Conflict {
        kind: kind.as_str(),
        key: key.to_string(),
        expected: match expect {
            Expect::Any => "anything".into(),
            Expect::Absent => "no object".into(),
            Expect::Revision(r) => format!("revision {r}"),
        },
        found: found.map_or("no object".into(), |f| format!("revision {f}")),
    })
}

/// Checks a write's expectation against the key's current revision, inside the transaction.
fn precondition(
    find: &mut rusqlite::CachedStatement<'_>,
    kind: Kind,
    key: &str,
    expect: Expect,
) -> Result<(), StoreError> {
    if expect == Expect::Any {
        return Ok(());
    }
    let found: Option<i64> = find.query_row(params![kind.as_str(), key], |r| r.get(0)).optional().map_err(backend)?;
    check(kind, key, expect, found)
}

impl Store for SqliteStore {
    fn get(&self, kind: Kind, key: &str) -> Result<Option<Object>, StoreError> {
        let conn = self.lock();
        let row: Option<(i64, i64, String)> = conn
            .query_row(
                &format!("SELECT revision, {}, value FROM objects WHERE kind = ?1 AND key = ?2", self.create_col),
                params![kind.as_str(), key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(backend)?;
        drop(conn);
        match row.map(|(rev, created, v)| row_object(key.to_string(), rev, created, v)).transpose() {
            Err(StoreError::Codec(e)) => {
                self.quarantine.add(kind, key, &format!("not JSON: {e}"));
                let source = Box::new(e);
                Err(CodecError::Quarantined { kind: kind.as_str(), key: key.to_string(), source }.into())
            }
            other => other,
        }
    }

    fn list(&self, kind: Kind, prefix: &str) -> Result<Vec<Object>, StoreError> {
        // The texts, then each parsed: a row that is not even text was quarantined by
        // `list_text`, one whose text is not JSON is quarantined here.
        let mut out = Vec::new();
        for o in self.list_text(kind, prefix)? {
            match serde_json::from_str(&o.value) {
                Ok(value) => {
                    out.push(Object { key: o.key, revision: o.revision, create_revision: o.create_revision, value })
                }
                Err(e) => self.quarantine.add(kind, &o.key, &format!("not JSON: {}", CodecError::Json(e))),
            }
        }
        Ok(out)
    }

    fn get_text(&self, kind: Kind, key: &str) -> Result<Option<Object<String>>, StoreError> {
        let conn = self.lock();
        let row: Option<(i64, i64, Result<String, rusqlite::Error>)> = conn
            .query_row(
                &format!("SELECT revision, {}, value FROM objects WHERE kind = ?1 AND key = ?2", self.create_col),
                params![kind.as_str(), key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2))),
            )
            .optional()
            .map_err(backend)?;
        drop(conn);
        let Some((revision, created, text)) = row else { return Ok(None) };
        match text {
            Ok(value) => Ok(Some(Object {
                key: key.to_string(),
                revision: revision as u64,
                create_revision: created as u64,
                value,
            })),
            Err(e) => {
                self.quarantine.add(kind, key, &format!("not text: {e}"));
                let source = Box::new(CodecError::NotText(e));
                Err(CodecError::Quarantined { kind: kind.as_str(), key: key.to_string(), source }.into())
            }
        }
    }

    fn list_text(&self, kind: Kind, prefix: &str) -> Result<Vec<Object<String>>, StoreError> {
        // Rows are copied out under the lock and decoded after it: decoding ten thousand
        // records takes far longer than reading them, and a writer waits for the lock.
        let rows = {
            let conn = self.lock();
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT key, revision, value, {} FROM objects WHERE kind = ?1 AND key >= ?2 ORDER BY key",
                    self.create_col
                ))
                .map_err(backend)?;
            let mut out = Vec::new();
            let mut rows = stmt.query(params![kind.as_str(), prefix]).map_err(backend)?;
            while let Some(r) = rows.next().map_err(backend)? {
                let key: String = r.get(0).map_err(backend)?;
                if !key.starts_with(prefix) {
                    break;
                }
                // A value that is not even text (a blob written by hand) is quarantined below.
                let text: Result<String, rusqlite::Error> = r.get(2);
                out.push((key, r.get::<_, i64>(1).map_err(backend)?, r.get::<_, i64>(3).map_err(backend)?, text));
            }
            out
        };
        let mut out = Vec::with_capacity(rows.len());
        for (key, revision, created, text) in rows {
            match text {
                Ok(value) => {
                    out.push(Object { key, revision: revision as u64, create_revision: created as u64, value })
                }
                Err(e) => self.quarantine.add(kind, &key, &format!("not text: {e}")),
            }
        }
        Ok(out)
    }

    fn txn(&self, ops: Vec<WriteOp>) -> Result<u64, StoreError> {
        // Encode first (outside the lock): the texts are both what the limit counts and what
        // is written.
        let mut texts: Vec<Option<String>> = Vec::with_capacity(ops.len());
        let mut bytes = 0;
        for op in &ops {
            let (text, size) = match op {
                WriteOp::Put { kind, key, value, .. } => {
                    let t = serde_json::to_string(value).map_err(CodecError::Json)?;
                    let n = kind.as_str().len() + key.len() + t.len();
                    (Some(t), n)
                }
                WriteOp::PutText { .. } => (None, op.size()),
                WriteOp::Activity(ev) => {
                    let t = serde_json::to_string(ev).map_err(CodecError::Json)?;
                    let n = ev.resource_group.len() + ev.resource.len() + t.len();
                    (Some(t), n)
                }
                WriteOp::Delete { .. } | WriteOp::Guard { .. } => (None, op.size()),
            };
            texts.push(text);
            bytes += size;
        }
        check_txn_size(ops.len(), bytes)?;
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
        let rev: i64 =
            tx.query_row("SELECT value FROM meta WHERE name = 'revision'", [], |r| r.get(0)).map_err(backend)?;
        let rev = rev + 1;
        {
            let mut find =
                tx.prepare_cached("SELECT revision FROM objects WHERE kind = ?1 AND key = ?2").map_err(backend)?;
            let mut put = tx
                .prepare_cached(
                    "INSERT INTO objects (kind, key, revision, create_revision, value) VALUES (?1, ?2, ?3, ?3, ?4)
                     ON CONFLICT (kind, key) DO UPDATE SET revision = excluded.revision, value = excluded.value
                     RETURNING create_revision",
                )
                .map_err(backend)?;
            let mut del = tx.prepare_cached("DELETE FROM objects WHERE kind = ?1 AND key = ?2").map_err(backend)?;
            let mut change = tx
                .prepare_cached(
                    "INSERT INTO changes (id, kind, key, create_revision, value) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(backend)?;
            let mut act = tx
                .prepare_cached("INSERT INTO activity (time, resource_group, resource, body) VALUES (?1, ?2, ?3, ?4)")
                .map_err(backend)?;
            let mut seq = 0i64;
            for (op, text) in ops.iter().zip(&texts) {
                match op {
                    WriteOp::Put { kind, key, expect, .. } | WriteOp::PutText { kind, key, expect, .. } => {
                        precondition(&mut find, *kind, key, *expect)?;
                        let text = match op {
                            WriteOp::PutText { text, .. } => text.as_str(),
                            _ => text.as_deref().unwrap_or_default(),
                        };
                        let created: i64 =
                            put.query_row(params![kind.as_str(), key, rev, text], |r| r.get(0)).map_err(backend)?;
                        change
                            .execute(params![change_id(rev, seq), kind.as_str(), key, created, text])
                            .map_err(backend)?;
                        seq += 1;
                        self.quarantine.clear(*kind, key);
                    }
                    WriteOp::Delete { kind, key, expect } => {
                        precondition(&mut find, *kind, key, *expect)?;
                        if del.execute(params![kind.as_str(), key]).map_err(backend)? > 0 {
                            change
                                .execute(params![change_id(rev, seq), kind.as_str(), key, 0, Option::<&str>::None])
                                .map_err(backend)?;
                            seq += 1;
                        }
                        self.quarantine.clear(*kind, key);
                    }
                    WriteOp::Activity(ev) => {
                        let body = text.as_deref().unwrap_or_default();
                        act.execute(params![ev.time.to_rfc3339(), ev.resource_group, ev.resource, body])
                            .map_err(backend)?;
                    }
                    WriteOp::Guard { kind, key, create_revision } => {
                        let found: Option<i64> = tx
                            .prepare_cached("SELECT create_revision FROM objects WHERE kind = ?1 AND key = ?2")
                            .map_err(backend)?
                            .query_row(params![kind.as_str(), key], |r| r.get(0))
                            .optional()
                            .map_err(backend)?;
                        if found != Some(*create_revision as i64) {
                            return Err(StoreError::GuardFailed {
                                kind: kind.as_str(),
                                key: key.clone(),
                                expected: *create_revision,
                                found: found.map(|f| f as u64),
                            });
                        }
                    }
                }
            }
        }
        tx.execute("UPDATE meta SET value = ?1 WHERE name = 'revision'", params![rev]).map_err(backend)?;
        tx.commit().map_err(backend)?;
        drop(conn);
        self.head.send_replace(rev as u64);
        Ok(rev as u64)
    }

    fn watch(&self, from_revision: u64, limit: usize) -> Result<WatchBatch, StoreError> {
        let limit = limit.max(1);
        let conn = self.lock();
        let compacted = compaction_point(&conn)?;
        if from_revision < compacted {
            return Err(StoreError::Compacted { requested: from_revision, compacted });
        }
        let head = head_revision(&conn)?;
        let mut changes = Vec::new();
        let mut last_id = 0;
        {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, kind, key, create_revision, value FROM changes WHERE id >= ?1 ORDER BY id LIMIT ?2",
                )
                .map_err(backend)?;
            let mut rows = stmt.query(params![change_id(from_revision as i64, 0), limit as i64]).map_err(backend)?;
            while let Some(r) = rows.next().map_err(backend)? {
                let (id, c) = row_change(r)?;
                last_id = id;
                changes.push(c);
            }
        }
        if changes.len() < limit {
            // Everything up to the head was read.
            return Ok(WatchBatch { changes, next: from_revision.max(head + 1) });
        }
        // End on a revision boundary: the rest of the last revision's changes.
        let last = changes.last().map_or(from_revision, |c| c.revision);
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, kind, key, create_revision, value FROM changes WHERE id > ?1 AND id < ?2 ORDER BY id",
            )
            .map_err(backend)?;
        let mut rows = stmt.query(params![last_id, change_id(last as i64 + 1, 0)]).map_err(backend)?;
        while let Some(r) = rows.next().map_err(backend)? {
            changes.push(row_change(r)?.1);
        }
        Ok(WatchBatch { changes, next: last + 1 })
    }

    fn changed_kinds(&self, from_revision: u64) -> Result<crate::KindsChanged, StoreError> {
        let conn = self.lock();
        let compacted = compaction_point(&conn)?;
        if from_revision < compacted {
            return Err(StoreError::Compacted { requested: from_revision, compacted });
        }
        let head = head_revision(&conn)?;
        // One column of an index range: the values (most of each row) are never read.
        let mut stmt =
            conn.prepare_cached("SELECT DISTINCT kind FROM changes WHERE id >= ?1 AND id < ?2").map_err(backend)?;
        let mut rows =
            stmt.query(params![change_id(from_revision as i64, 0), change_id(head as i64 + 1, 0)]).map_err(backend)?;
        let mut kinds = std::collections::BTreeSet::new();
        while let Some(r) = rows.next().map_err(backend)? {
            let kind: String = r.get(0).map_err(backend)?;
            kinds.insert(Kind::parse(&kind).ok_or_else(|| StoreError::from(CodecError::UnknownKind(kind.clone())))?);
        }
        Ok(crate::KindsChanged { kinds, next: from_revision.max(head + 1) })
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.head.subscribe()
    }

    fn compact(&self, revision: u64) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
        let head = head_revision(&tx)?;
        if revision > head + 1 {
            return Err(StoreError::FutureRevision { requested: revision, head });
        }
        if revision <= compaction_point(&tx)? {
            return Ok(());
        }
        tx.execute("DELETE FROM changes WHERE id < ?1", params![change_id(revision as i64, 0)]).map_err(backend)?;
        tx.execute(
            "INSERT INTO meta (name, value) VALUES ('compacted', ?1) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            params![revision as i64],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn compacted(&self) -> Result<u64, StoreError> {
        compaction_point(&self.lock())
    }

    fn quarantine(&self) -> Option<&Quarantine> {
        Some(&self.quarantine)
    }

    fn integrity_check(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare("PRAGMA integrity_check").map_err(backend)?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(backend)?;
        let mut problems = Vec::new();
        for row in rows {
            let line = row.map_err(backend)?;
            if line != "ok" {
                problems.push(line);
            }
        }
        Ok(problems)
    }

    fn revision(&self) -> Result<u64, StoreError> {
        head_revision(&self.lock())
    }

    fn activity(&self, filter: &ActivityFilter) -> Result<Vec<ActivityEvent>, StoreError> {
        let conn = self.lock();
        let mut sql = String::from("SELECT seq, body FROM activity WHERE 1 = 1");
        let mut args: Vec<String> = Vec::new();
        if let Some(g) = &filter.resource_group {
            args.push(g.clone());
            sql.push_str(&format!(" AND resource_group = ?{}", args.len()));
        }
        if let Some(r) = &filter.resource {
            args.push(r.clone());
            sql.push_str(&format!(" AND resource = ?{}", args.len()));
        }
        if let Some(s) = filter.since {
            args.push(s.to_rfc3339());
            sql.push_str(&format!(" AND time >= ?{}", args.len()));
        }
        sql.push_str(" ORDER BY seq DESC");
        if let Some(l) = filter.limit {
            sql.push_str(&format!(" LIMIT {l}"));
        }
        let mut stmt = conn.prepare(&sql).map_err(backend)?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args.iter()), |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map_err(backend)?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, body) = row.map_err(backend)?;
            let mut ev: ActivityEvent = serde_json::from_str(&body).map_err(CodecError::Json)?;
            ev.seq = seq as u64;
            out.push(ev);
        }
        out.reverse();
        Ok(out)
    }
}
