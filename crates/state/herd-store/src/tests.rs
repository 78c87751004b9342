use super::*;
use herd_model::activity::Actor;
use serde_json::json;

fn ev(group: &str, resource: &str, op: &str) -> ActivityEvent {
    ActivityEvent {
        seq: 0,
        time: chrono::Utc::now(),
        resource_group: group.into(),
        resource: resource.into(),
        operation: op.into(),
        status: herd_model::activity::ActivityStatus::Succeeded,
        actor: Actor::User,
        message: String::new(),
    }
}

/// A store in a file `herd.db` of a new temporary directory (kept alive by the first value).
fn db_file() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("herd.db")).unwrap();
    (dir, s)
}

/// An unconditional put of a group record.
fn put(k: &str, v: serde_json::Value) -> WriteOp {
    WriteOp::Put { kind: Kind::Group, key: k.into(), value: v, expect: Expect::Any }
}

#[test]
fn compare_and_swap() {
    let s = SqliteStore::in_memory().unwrap();
    let put = |v: i64, e: Expect| WriteOp::Put { kind: Kind::Group, key: "g".into(), value: json!(v), expect: e };
    let r1 = s.txn(vec![put(1, Expect::Absent)]).unwrap();
    assert!(matches!(s.txn(vec![put(2, Expect::Absent)]), Err(StoreError::Conflict { .. })));
    let r2 = s.txn(vec![put(2, Expect::Revision(r1))]).unwrap();
    assert!(r2 > r1);
    let stale = s.txn(vec![put(3, Expect::Revision(r1))]);
    assert!(matches!(stale, Err(StoreError::Conflict { .. })), "a stale revision must conflict");
    let o = s.get(Kind::Group, "g").unwrap().unwrap();
    assert_eq!((o.revision, o.value), (r2, json!(2)));
}

#[test]
fn transactions_are_all_or_nothing() {
    let s = SqliteStore::in_memory().unwrap();
    s.txn(vec![WriteOp::Put { kind: Kind::Group, key: "a".into(), value: json!(1), expect: Expect::Absent }]).unwrap();
    let before = s.revision().unwrap();
    let r = s.txn(vec![
        WriteOp::Put { kind: Kind::Instance, key: "x/1".into(), value: json!(1), expect: Expect::Absent },
        WriteOp::Activity(ev("g", "x", "op")),
        WriteOp::Put { kind: Kind::Group, key: "a".into(), value: json!(2), expect: Expect::Absent },
    ]);
    assert!(r.is_err());
    assert!(s.get(Kind::Instance, "x/1").unwrap().is_none());
    assert!(s.activity(&ActivityFilter::default()).unwrap().is_empty());
    assert_eq!(s.revision().unwrap(), before);
}

#[test]
fn list_by_prefix_and_kind() {
    let s = SqliteStore::in_memory().unwrap();
    let ops = (0..1000)
        .map(|i| WriteOp::Put {
            kind: Kind::Instance,
            key: format!("g/s/{i:06}"),
            value: json!(i),
            expect: Expect::Absent,
        })
        .chain([WriteOp::Put { kind: Kind::Instance, key: "g/t/1".into(), value: json!(0), expect: Expect::Absent }])
        .collect();
    // Over the transaction limit: in chunks.
    for c in chunks(ops, 0).unwrap() {
        s.txn(c).unwrap();
    }
    assert_eq!(s.list(Kind::Instance, "g/s/").unwrap().len(), 1000);
    assert_eq!(s.list(Kind::Instance, "g/").unwrap().len(), 1001);
    assert!(s.list(Kind::Group, "").unwrap().is_empty());
    s.txn(vec![WriteOp::delete(Kind::Instance, "g/t/1", Expect::Any)]).unwrap();
    assert_eq!(s.list(Kind::Instance, "g/").unwrap().len(), 1000);
}

#[test]
fn activity_filters_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herd.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.txn(vec![WriteOp::Activity(ev("g1", "a", "one")), WriteOp::Activity(ev("g1", "b", "two"))]).unwrap();
        s.txn(vec![WriteOp::Activity(ev("g2", "a", "three"))]).unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let all = s.activity(&ActivityFilter::default()).unwrap();
    assert_eq!(all.iter().map(|e| e.operation.as_str()).collect::<Vec<_>>(), ["one", "two", "three"]);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    let g1a = s
        .activity(&ActivityFilter {
            resource_group: Some("g1".into()),
            resource: Some("a".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(g1a.len(), 1);
    let future = s
        .activity(&ActivityFilter {
            since: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            ..Default::default()
        })
        .unwrap();
    assert!(future.is_empty());
}

/// A record that is not JSON, and one of the wrong shape, are skipped by `list_as` and
/// quarantined (with their keys) instead of failing the read; `get_as` reports them; writing or
/// deleting releases them. Regression: one bad row used to fail every list of its kind.
#[test]
fn undecodable_records_are_quarantined_not_fatal() {
    let (dir, s) = db_file();
    let path = dir.path().join("herd.db");
    s.txn(vec![put("a", json!({"n": 1})), put("b", json!({"n": 2})), put("c", json!({"n": 3}))]).unwrap();
    // Corrupt "b" behind the store's back: not JSON. And "c": JSON of the wrong shape.
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute("UPDATE objects SET value = '{broken' WHERE key = 'b'", []).unwrap();
    raw.execute("UPDATE objects SET value = '{\"n\": \"three\"}' WHERE key = 'c'", []).unwrap();
    drop(raw);
    #[derive(serde::Deserialize)]
    struct N {
        n: u64,
    }
    let got = s.list_as::<N>(Kind::Group, "").unwrap();
    assert_eq!(got.iter().map(|o| (o.key.as_str(), o.value.n)).collect::<Vec<_>>(), vec![("a", 1)]);
    let q = s.quarantine().unwrap();
    let keys: Vec<String> = q.list().into_iter().map(|r| r.key).collect();
    assert_eq!(keys, ["b", "c"]);
    assert_eq!(q.total(), 2);
    assert!(matches!(s.get_as::<N>(Kind::Group, "b"), Err(StoreError::Codec(_))));
    assert!(matches!(s.get_as::<N>(Kind::Group, "c"), Err(StoreError::Codec(_))));
    // The errors keep their typed sources: a corrupt row's read is quarantined over the JSON error.
    let e = s.get(Kind::Group, "b").unwrap_err();
    let StoreError::Codec(CodecError::Quarantined { source, .. }) = &e else { panic!("{e:?}") };
    assert!(matches!(**source, CodecError::Json(_)), "{source:?}");
    let json = std::error::Error::source(&e).and_then(std::error::Error::source).and_then(std::error::Error::source);
    assert!(json.is_some_and(|j| j.is::<serde_json::Error>()), "the chain ends at serde_json's error: {e}");
    assert!(!e.is_transient(), "corrupt data stays corrupt");
    // Rewriting one and deleting the other releases both.
    s.txn(vec![put("b", json!({"n": 2})), WriteOp::delete(Kind::Group, "c", Expect::Any)]).unwrap();
    assert!(q.list().is_empty());
    assert_eq!(s.list_as::<N>(Kind::Group, "").unwrap().len(), 2);
    assert!(s.integrity_check().unwrap().is_empty(), "a healthy database passes PRAGMA integrity_check");
}

/// The database and its WAL files are created 0600, and an existing 0644 database is narrowed.
#[test]
fn database_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herd.db");
    std::fs::write(&path, b"").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let s = SqliteStore::open(&path).unwrap();
    s.txn(vec![WriteOp::Put { kind: Kind::Group, key: "g".into(), value: json!(1), expect: Expect::Absent }]).unwrap();
    for f in ["herd.db", "herd.db-wal", "herd.db-shm"] {
        let mode = std::fs::metadata(dir.path().join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
}

/// The conformance suite on an in-memory SQLite store.
#[test]
fn conformance_in_memory() {
    crate::conformance::run_all(&|| std::sync::Arc::new(SqliteStore::in_memory().unwrap()) as _);
}

/// The conformance suite on an on-disk SQLite store (WAL mode, as the server opens it).
#[test]
fn conformance_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicUsize::new(0);
    crate::conformance::run_all(&|| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::sync::Arc::new(SqliteStore::open(&dir.path().join(format!("herd-{i}.db"))).unwrap()) as _
    });
}

/// A data dir written by a herd before the change feed (schema version 1) opens: the schema
/// migrates, objects keep their values and get their last revision as create revision, the
/// old history reads as compacted, and new writes appear in the feed.
#[test]
fn old_data_dir_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herd.db");
    {
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute_batch(super::sqlite::MIGRATIONS[0]).unwrap();
        raw.execute_batch(
            "INSERT INTO objects (kind, key, revision, value) VALUES ('group', 'g', 3, '{\"n\":1}');
             INSERT INTO objects (kind, key, revision, value) VALUES ('instance', 'g/s/1', 7, '{\"n\":2}');
             UPDATE meta SET value = 7 WHERE name = 'revision';
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    // `herd store check` reads it read-only, unmigrated.
    let ro = SqliteStore::open_read_only(&path).unwrap();
    assert_eq!(ro.get(Kind::Group, "g").unwrap().unwrap().create_revision, 3);
    assert_eq!(ro.list(Kind::Instance, "").unwrap().len(), 1);
    drop(ro);
    let s = SqliteStore::open(&path).unwrap();
    let g = s.get(Kind::Group, "g").unwrap().unwrap();
    assert_eq!((g.revision, g.create_revision, g.value), (3, 3, json!({"n": 1})));
    assert_eq!(s.list(Kind::Instance, "").unwrap()[0].create_revision, 7);
    assert_eq!(s.revision().unwrap(), 7);
    assert_eq!(s.compacted().unwrap(), 8, "changes before the migration were never recorded");
    assert!(matches!(s.watch(1, 10), Err(StoreError::Compacted { requested: 1, compacted: 8 })));
    let r = s.txn(vec![WriteOp::put(Kind::Group, "g", &json!({"n": 5}), Expect::Revision(3)).unwrap()]).unwrap();
    assert_eq!(r, 8);
    let b = s.watch(8, 10).unwrap();
    assert_eq!(b.changes.len(), 1);
    assert_eq!(b.changes[0].event, ChangeEvent::Put { create_revision: 3, value: json!({"n": 5}) });
    drop(s);
    // And it opens again (no migration runs twice).
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.get(Kind::Group, "g").unwrap().unwrap().revision, 8);
    assert_eq!(s.watch(8, 10).unwrap().changes.len(), 1, "the feed survives a restart");
}

/// The periodic compaction compacts to the head of the tick before, and stops on shutdown.
#[test]
fn periodic_compaction_follows_the_previous_tick() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_time().build().unwrap();
    rt.block_on(async {
        let s: std::sync::Arc<dyn Store> = std::sync::Arc::new(SqliteStore::in_memory().unwrap());
        for i in 0..5 {
            s.txn(vec![WriteOp::put(Kind::Group, format!("g{i}"), &i, Expect::Any).unwrap()]).unwrap();
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(crate::run_compaction(s.clone(), std::time::Duration::from_millis(20), rx));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while s.compacted().unwrap() == 0 {
            assert!(std::time::Instant::now() < deadline, "no compaction within 10 s of 20 ms ticks");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // Compacted to the head seen one tick earlier: revision 5 is still watchable.
        assert_eq!(s.compacted().unwrap(), 5);
        assert_eq!(s.watch(5, 10).unwrap().changes.len(), 1);
        assert!(matches!(s.watch(4, 10), Err(StoreError::Compacted { requested: 4, compacted: 5 })));
        tx.send(true).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("the compaction task stops on shutdown")
            .unwrap();
    });
}

/// Which store errors a retry may cure with nothing else changed.
#[test]
fn transient_errors() {
    let sqlite = |code| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
    let conflict = StoreError::Conflict { kind: "group", key: "a".into(), expected: "1".into(), found: "2".into() };
    assert!(conflict.is_transient());
    assert!(StoreError::Compacted { requested: 1, compacted: 5 }.is_transient());
    assert!(StoreError::Backend(BackendError::Sqlite(sqlite(rusqlite::ffi::SQLITE_BUSY))).is_transient());
    assert!(StoreError::Backend(BackendError::Sqlite(sqlite(rusqlite::ffi::SQLITE_LOCKED))).is_transient());
    assert!(!StoreError::Backend(BackendError::Sqlite(sqlite(rusqlite::ffi::SQLITE_CORRUPT))).is_transient());
    let full = StoreError::Full(DiskFull(sqlite(rusqlite::ffi::SQLITE_FULL)));
    assert!(!full.is_transient(), "a full disk needs someone to free space");
    assert!(std::error::Error::source(&full).is_some_and(|e| e.is::<DiskFull>()));
    assert!(!StoreError::Backend(BackendError::Closed).is_transient());
    assert!(!StoreError::TxnTooLarge { limit: TxnLimit::Operations, actual: MAX_TXN_OPS + 1 }.is_transient());
}

/// The text reads return each value as stored, and the typed reads decode from them: the same
/// records as decoding `get`/`list`'s JSON values. A value that is not even text (a blob
/// written by hand) is quarantined and skipped by `list_text`, and refused by `get_text`.
#[test]
fn text_reads_return_the_stored_json_and_typed_reads_decode_it() {
    let (dir, s) = db_file();
    let path = dir.path().join("herd.db");
    let rev =
        s.txn(vec![put("a", json!({"n": 1, "s": "x"})), put("b", json!({"n": 2})), put("c", json!({"n": 3}))]).unwrap();
    let texts = s.list_text(Kind::Group, "").unwrap();
    let values = s.list(Kind::Group, "").unwrap();
    assert_eq!(texts.len(), 3);
    for (t, v) in texts.iter().zip(&values) {
        assert_eq!((t.key.as_str(), t.revision, t.create_revision), (v.key.as_str(), rev, rev));
        assert_eq!(serde_json::from_str::<serde_json::Value>(&t.value).unwrap(), v.value);
    }
    let a = s.get_text(Kind::Group, "a").unwrap().unwrap();
    assert_eq!(serde_json::from_str::<serde_json::Value>(&a.value).unwrap(), json!({"n": 1, "s": "x"}));
    assert!(s.get_text(Kind::Group, "zz").unwrap().is_none());
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct N {
        n: u64,
    }
    let typed: Vec<u64> = s.list_as::<N>(Kind::Group, "").unwrap().into_iter().map(|o| o.value.n).collect();
    assert_eq!(typed, [1, 2, 3]);
    assert_eq!(s.get_as::<N>(Kind::Group, "b").unwrap().unwrap().value, N { n: 2 });

    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute("UPDATE objects SET value = x'00ff' WHERE key = 'b'", []).unwrap();
    drop(raw);
    let keys: Vec<String> = s.list_text(Kind::Group, "").unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(keys, ["a", "c"], "the blob is skipped");
    assert_eq!(s.quarantine().unwrap().list().into_iter().map(|r| r.key).collect::<Vec<_>>(), ["b"]);
    assert!(matches!(s.get_text(Kind::Group, "b"), Err(StoreError::Codec(CodecError::Quarantined { .. }))));
}

/// A put encoded up front (`put_encoded`) is the same write as a put of a JSON value: the same
/// stored object, the same change in the feed, compare-and-swap on its revision, and its size
/// counted as its text's length.
#[test]
fn an_encoded_put_is_the_same_write_as_a_value_put() {
    let s = SqliteStore::in_memory().unwrap();
    let v = json!({"name": "x", "list": [1, 2], "nested": {"a": null}});
    let r1 = s.txn(vec![WriteOp::put(Kind::Group, "a", &v, Expect::Absent).unwrap()]).unwrap();
    let enc = WriteOp::put_encoded(Kind::Group, "b", &v, Expect::Absent).unwrap();
    assert_eq!(enc.size(), "group".len() + 1 + serde_json::to_string(&v).unwrap().len());
    assert_eq!(enc.put_key(), Some((Kind::Group, "b")));
    let r2 = s.txn(vec![enc]).unwrap();
    let (a, b) = (s.get(Kind::Group, "a").unwrap().unwrap(), s.get(Kind::Group, "b").unwrap().unwrap());
    assert_eq!((a.value, b.value.clone(), b.revision), (v.clone(), v.clone(), r2));
    let feed = s.watch(r2, 10).unwrap();
    assert!(matches!(&feed.changes[0].event, ChangeEvent::Put { value, .. } if *value == v));
    let stale = WriteOp::put_encoded(Kind::Group, "b", &json!(1), Expect::Revision(r1)).unwrap();
    assert!(matches!(s.txn(vec![stale]), Err(StoreError::Conflict { .. })), "compare-and-swap holds");
}
