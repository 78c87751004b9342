//! The backend conformance suite: what every [`Store`] backend must do, as one set of checks.
//!
//! Why: the contract (compare-and-swap, all-or-nothing transactions, the transaction limits,
//! guards, the change feed and compaction) is etcd's, and SQLite meets it now; a later etcd
//! backend proves it meets the same contract by passing the same suite. Each check takes a
//! factory for a fresh, empty store and panics (with what was expected) on a violation. Enable
//! with the `conformance` feature and call [`run_all`] from a test:
//!
//! ```ignore
//! herd_store::conformance::run_all(&|| std::sync::Arc::new(MyStore::new()) as _);
//! ```

use crate::{
    chunks, ActivityFilter, Change, ChangeEvent, Expect, Kind, Store, StoreError, TxnLimit, Watcher, WriteOp,
    MAX_TXN_BYTES, MAX_TXN_OPS,
};
use herd_model::activity::{ActivityEvent, Actor};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Makes a fresh, empty store.
pub type Factory<'a> = &'a dyn Fn() -> Arc<dyn Store>;

/// Every check, each on a fresh store.
pub fn run_all(fresh: Factory<'_>) {
    compare_and_swap(fresh);
    create_revisions(fresh);
    transactions_are_all_or_nothing(fresh);
    transaction_limits(fresh);
    chunks_fit_the_limits(fresh);
    guards(fresh);
    watch_is_ordered(fresh);
    watch_resumes(fresh);
    compaction(fresh);
    watcher_wakes_on_commit(fresh);
    changed_kinds_match_the_feed(fresh);
}

/// `changed_kinds` names exactly the kinds the feed has in the range, continues past the head,
/// skips activity-only revisions, and answers `Compacted` below the compaction point.
pub fn changed_kinds_match_the_feed(fresh: Factory<'_>) {
    let s = fresh();
    let start = s.revision().unwrap() + 1;
    let nothing = s.changed_kinds(start).unwrap();
    assert!(nothing.kinds.is_empty() && nothing.next == start, "{nothing:?}");
    s.txn(vec![put(Kind::Instance, "g/s/1", json!(1), Expect::Any), put(Kind::ScaleSet, "g/s", json!(1), Expect::Any)])
        .unwrap();
    s.txn(vec![WriteOp::Activity(activity("only activity"))]).unwrap();
    let mid = s.txn(vec![put(Kind::Image, "i", json!(1), Expect::Any)]).unwrap();
    s.txn(vec![WriteOp::delete(Kind::Image, "i", Expect::Any)]).unwrap();
    let head = s.revision().unwrap();
    let all = s.changed_kinds(start).unwrap();
    assert_eq!(all.kinds, [Kind::Instance, Kind::ScaleSet, Kind::Image].into_iter().collect());
    assert_eq!(all.next, head + 1);
    let watched: std::collections::BTreeSet<Kind> =
        s.watch(start, 100).unwrap().changes.iter().map(|c| c.kind).collect();
    assert_eq!(all.kinds, watched, "the same kinds as the full feed");
    let later = s.changed_kinds(mid).unwrap();
    assert_eq!(later.kinds, [Kind::Image].into_iter().collect(), "from a revision on only");
    assert_eq!(s.changed_kinds(head + 1).unwrap().kinds.len(), 0);
    s.compact(mid).unwrap();
    assert!(matches!(s.changed_kinds(start), Err(StoreError::Compacted { .. })));
}

fn put(kind: Kind, key: &str, v: Value, expect: Expect) -> WriteOp {
    WriteOp::Put { kind, key: key.into(), value: v, expect }
}

fn activity(op: &str) -> ActivityEvent {
    ActivityEvent {
        seq: 0,
        time: chrono::Utc::now(),
        resource_group: "g".into(),
        resource: "r".into(),
        operation: op.into(),
        status: herd_model::activity::ActivityStatus::Succeeded,
        actor: Actor::User,
        message: String::new(),
    }
}

fn conflict<T: std::fmt::Debug>(r: Result<T, StoreError>, what: &str) {
    assert!(matches!(r, Err(StoreError::Conflict { .. })), "{what}: expected a Conflict, got {r:?}");
}

/// Everything the feed yields from `from` on, read in one large batch.
fn feed(s: &dyn Store, from: u64) -> Vec<Change> {
    s.watch(from, 100_000).expect("watch").changes
}

/// `Absent`, `Revision` and `Any` preconditions on puts and deletes.
pub fn compare_and_swap(fresh: Factory<'_>) {
    let s = fresh();
    let r1 = s.txn(vec![put(Kind::Group, "g", json!(1), Expect::Absent)]).unwrap();
    conflict(s.txn(vec![put(Kind::Group, "g", json!(2), Expect::Absent)]), "create over an existing key");
    let r2 = s.txn(vec![put(Kind::Group, "g", json!(2), Expect::Revision(r1))]).unwrap();
    assert!(r2 > r1, "revisions increase: {r1} then {r2}");
    conflict(s.txn(vec![put(Kind::Group, "g", json!(3), Expect::Revision(r1))]), "a stale revision");
    conflict(s.txn(vec![put(Kind::Group, "h", json!(3), Expect::Revision(r1))]), "a revision on an absent key");
    let o = s.get(Kind::Group, "g").unwrap().expect("g exists");
    assert_eq!((o.revision, o.value), (r2, json!(2)));
    let r3 = s.txn(vec![put(Kind::Group, "g", json!(4), Expect::Any)]).unwrap();
    assert_eq!(s.get(Kind::Group, "g").unwrap().unwrap().revision, r3);
    conflict(s.txn(vec![WriteOp::delete(Kind::Group, "g", Expect::Revision(r2))]), "a delete at a stale revision");
    conflict(s.txn(vec![WriteOp::delete(Kind::Group, "g", Expect::Absent)]), "a delete expecting no key");
    s.txn(vec![WriteOp::delete(Kind::Group, "g", Expect::Revision(r3))]).unwrap();
    assert!(s.get(Kind::Group, "g").unwrap().is_none());
    // Kinds are separate key spaces.
    s.txn(vec![put(Kind::Group, "k", json!(1), Expect::Absent), put(Kind::Image, "k", json!(2), Expect::Absent)])
        .unwrap();
    assert_eq!(s.list(Kind::Image, "").unwrap().len(), 1);
    assert_eq!(s.revision().unwrap(), s.get(Kind::Image, "k").unwrap().unwrap().revision);
}

/// The create revision stays across updates and is new after a delete and a re-create.
pub fn create_revisions(fresh: Factory<'_>) {
    let s = fresh();
    let c = s.txn(vec![put(Kind::Group, "g", json!(1), Expect::Absent)]).unwrap();
    let m = s.txn(vec![put(Kind::Group, "g", json!(2), Expect::Any)]).unwrap();
    let o = s.get(Kind::Group, "g").unwrap().unwrap();
    assert_eq!((o.create_revision, o.revision), (c, m), "create revision kept, mod revision moved");
    assert_eq!(s.list(Kind::Group, "").unwrap()[0].create_revision, c, "list shows the create revision");
    s.txn(vec![WriteOp::delete(Kind::Group, "g", Expect::Any)]).unwrap();
    let c2 = s.txn(vec![put(Kind::Group, "g", json!(3), Expect::Absent)]).unwrap();
    assert_eq!(s.get(Kind::Group, "g").unwrap().unwrap().create_revision, c2, "a re-created key is new");
}

/// One failing op fails the whole transaction: no write, no activity, no change, no revision.
pub fn transactions_are_all_or_nothing(fresh: Factory<'_>) {
    let s = fresh();
    s.txn(vec![put(Kind::Group, "a", json!(1), Expect::Absent), put(Kind::Group, "b", json!(1), Expect::Absent)])
        .unwrap();
    let before = s.revision().unwrap();
    let r = s.txn(vec![
        put(Kind::Instance, "x/1", json!(1), Expect::Absent),
        WriteOp::Activity(activity("op")),
        WriteOp::delete(Kind::Group, "b", Expect::Any),
        put(Kind::Group, "a", json!(2), Expect::Absent),
    ]);
    conflict(r, "the last op's precondition");
    assert!(s.get(Kind::Instance, "x/1").unwrap().is_none(), "the first put was rolled back");
    assert!(s.get(Kind::Group, "b").unwrap().is_some(), "the delete was rolled back");
    assert!(s.activity(&ActivityFilter::default()).unwrap().is_empty(), "the activity was rolled back");
    assert_eq!(s.revision().unwrap(), before, "a failed transaction takes no revision");
    assert!(feed(&*s, before + 1).is_empty(), "a failed transaction adds no change");
    // And a good multi-key transaction applies every op at one revision.
    let r = s
        .txn(vec![
            put(Kind::Instance, "x/1", json!(1), Expect::Absent),
            put(Kind::Instance, "x/2", json!(2), Expect::Absent),
            WriteOp::delete(Kind::Group, "a", Expect::Any),
        ])
        .unwrap();
    assert_eq!(s.get(Kind::Instance, "x/1").unwrap().unwrap().revision, r);
    assert_eq!(s.get(Kind::Instance, "x/2").unwrap().unwrap().revision, r);
    assert!(s.get(Kind::Group, "a").unwrap().is_none());
}

/// At most `MAX_TXN_OPS` operations and `MAX_TXN_BYTES` bytes; over either, a typed error that
/// names the limit and the size, and nothing is written.
pub fn transaction_limits(fresh: Factory<'_>) {
    let s = fresh();
    let ops = |n: usize, prefix: &str| -> Vec<WriteOp> {
        (0..n).map(|i| put(Kind::Instance, &format!("{prefix}/{i:04}"), json!(i), Expect::Absent)).collect()
    };
    s.txn(ops(MAX_TXN_OPS, "full")).expect("exactly MAX_TXN_OPS operations fit");
    assert_eq!(s.list(Kind::Instance, "full/").unwrap().len(), MAX_TXN_OPS);
    let before = s.revision().unwrap();
    match s.txn(ops(MAX_TXN_OPS + 1, "over")) {
        Err(StoreError::TxnTooLarge { limit: TxnLimit::Operations, actual }) => assert_eq!(actual, MAX_TXN_OPS + 1),
        other => panic!("{} ops: expected TxnTooLarge(Operations), got {other:?}", MAX_TXN_OPS + 1),
    }
    // Activity entries and guards count as operations too.
    let mut with_activity = ops(MAX_TXN_OPS, "act");
    with_activity.push(WriteOp::Activity(activity("one too many")));
    assert!(matches!(s.txn(with_activity), Err(StoreError::TxnTooLarge { limit: TxnLimit::Operations, .. })));
    // Bytes: two values of 600 KiB are over 1 MiB together, each fits alone.
    let big = json!("x".repeat(600 * 1024));
    match s.txn(vec![
        put(Kind::Image, "a", big.clone(), Expect::Absent),
        put(Kind::Image, "b", big.clone(), Expect::Absent),
    ]) {
        Err(StoreError::TxnTooLarge { limit: TxnLimit::Bytes, actual }) => {
            assert!((2 * 600 * 1024..2 * 600 * 1024 + 100).contains(&actual), "actual size {actual}")
        }
        other => panic!("1.2 MiB: expected TxnTooLarge(Bytes), got {other:?}"),
    }
    assert_eq!(s.revision().unwrap(), before, "nothing was written by a refused transaction");
    assert!(s.list(Kind::Instance, "over/").unwrap().is_empty() && s.list(Kind::Image, "").unwrap().is_empty());
    s.txn(vec![put(Kind::Image, "a", big, Expect::Absent)]).expect("600 KiB fits");
    let e = StoreError::TxnTooLarge { limit: TxnLimit::Operations, actual: 1001 };
    assert_eq!(e.to_string(), "a transaction holds at most 128 operations; this one has 1001");
}

/// [`chunks`] splits any list of ops into transactions that each fit, in order.
pub fn chunks_fit_the_limits(fresh: Factory<'_>) {
    let s = fresh();
    let ops: Vec<WriteOp> =
        (0..1000).map(|i| put(Kind::Instance, &format!("c/{i:04}"), json!({"n": i}), Expect::Absent)).collect();
    let parts = chunks(ops, 1).unwrap();
    assert_eq!(parts.len(), 1000usize.div_ceil(MAX_TXN_OPS - 1), "fewest chunks of 127 ops");
    for p in parts {
        assert!(p.len() < MAX_TXN_OPS);
        s.txn(p).unwrap();
    }
    let all = s.list(Kind::Instance, "c/").unwrap();
    assert_eq!(all.len(), 1000);
    // Big values split by bytes.
    let big = json!("y".repeat(300 * 1024));
    let ops: Vec<WriteOp> = (0..7).map(|i| put(Kind::Image, &format!("b{i}"), big.clone(), Expect::Absent)).collect();
    let parts = chunks(ops, 0).unwrap();
    assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1], "three of 300 KiB per MiB");
    for p in parts {
        s.txn(p).unwrap();
    }
    let huge = put(Kind::Image, "huge", json!("z".repeat(MAX_TXN_BYTES)), Expect::Any);
    assert!(matches!(chunks(vec![huge], 0), Err(StoreError::TxnTooLarge { limit: TxnLimit::Bytes, .. })));
}

/// Guards: the transaction applies only while the key exists with the given create revision.
pub fn guards(fresh: Factory<'_>) {
    let s = fresh();
    let guarded = |s: &dyn Store, rev: u64, v: i64| {
        s.txn(vec![WriteOp::guard(Kind::Counter, "leader", rev), put(Kind::Group, "w", json!(v), Expect::Any)])
    };
    match guarded(&*s, 1, 0) {
        Err(StoreError::GuardFailed { key, expected: 1, found: None, .. }) => assert_eq!(key, "leader"),
        other => panic!("a guard on an absent key: expected GuardFailed, got {other:?}"),
    }
    let c = s.txn(vec![put(Kind::Counter, "leader", json!("me"), Expect::Absent)]).unwrap();
    guarded(&*s, c, 1).expect("the guard holds");
    // Updating the guarded key keeps its create revision: the guard still holds.
    s.txn(vec![put(Kind::Counter, "leader", json!("me, renewed"), Expect::Any)]).unwrap();
    guarded(&*s, c, 2).expect("the guard holds after an update");
    assert_eq!(s.get(Kind::Group, "w").unwrap().unwrap().value, json!(2));
    // Lost and taken by another: the old holder's writes fail, and write nothing.
    s.txn(vec![WriteOp::delete(Kind::Counter, "leader", Expect::Any)]).unwrap();
    let c2 = s.txn(vec![put(Kind::Counter, "leader", json!("other"), Expect::Absent)]).unwrap();
    let before = s.revision().unwrap();
    match guarded(&*s, c, 3) {
        Err(StoreError::GuardFailed { expected, found, .. }) => assert_eq!((expected, found), (c, Some(c2))),
        other => panic!("a stale guard: expected GuardFailed, got {other:?}"),
    }
    assert_eq!(s.get(Kind::Group, "w").unwrap().unwrap().value, json!(2), "a failed guard writes nothing");
    assert_eq!(s.revision().unwrap(), before);
}

/// The feed holds every put and delete, in revision order and op order, with values and
/// create revisions; deletes of absent keys and activity are not in it.
pub fn watch_is_ordered(fresh: Factory<'_>) {
    let s = fresh();
    let start = s.revision().unwrap() + 1;
    let r1 = s
        .txn(vec![put(Kind::Group, "b", json!(1), Expect::Absent), put(Kind::Group, "a", json!(2), Expect::Absent)])
        .unwrap();
    let r2 = s.txn(vec![WriteOp::Activity(activity("only activity"))]).unwrap();
    let r3 = s
        .txn(vec![
            put(Kind::Group, "a", json!(3), Expect::Any),
            WriteOp::delete(Kind::Group, "b", Expect::Any),
            WriteOp::delete(Kind::Group, "never", Expect::Any),
            WriteOp::Activity(activity("x")),
        ])
        .unwrap();
    assert!(r1 < r2 && r2 < r3);
    let got = s.watch(start, 100).unwrap();
    let want = vec![
        Change {
            revision: r1,
            kind: Kind::Group,
            key: "b".into(),
            event: ChangeEvent::Put { create_revision: r1, value: json!(1) },
        },
        Change {
            revision: r1,
            kind: Kind::Group,
            key: "a".into(),
            event: ChangeEvent::Put { create_revision: r1, value: json!(2) },
        },
        Change {
            revision: r3,
            kind: Kind::Group,
            key: "a".into(),
            event: ChangeEvent::Put { create_revision: r1, value: json!(3) },
        },
        Change { revision: r3, kind: Kind::Group, key: "b".into(), event: ChangeEvent::Delete },
    ];
    assert_eq!(got.changes, want);
    assert_eq!(got.next, r3 + 1, "the batch read up to the head");
    // From a revision with no change (activity only), the feed goes on from the next one.
    assert_eq!(feed(&*s, r2), want[2..].to_vec());
    // At the head: nothing yet, and `next` stays put; past it, `next` never goes back.
    let empty = s.watch(r3 + 1, 100).unwrap();
    assert_eq!((empty.changes.len(), empty.next), (0, r3 + 1));
    assert_eq!(s.watch(r3 + 10, 100).unwrap().next, r3 + 10);
}

/// Reading the feed in small batches, resuming each time from `next`, yields the same changes
/// as one read, and batches end on revision boundaries.
pub fn watch_resumes(fresh: Factory<'_>) {
    let s = fresh();
    let start = s.revision().unwrap() + 1;
    for t in 0..20 {
        let ops = (0..(t % 4 + 1))
            .map(|i| put(Kind::Instance, &format!("s/{i}"), json!({"t": t, "i": i}), Expect::Any))
            .collect();
        s.txn(ops).unwrap();
    }
    let whole = feed(&*s, start);
    assert_eq!(whole.len(), (0..20).map(|t| t % 4 + 1).sum::<usize>());
    assert!(whole.windows(2).all(|w| w[0].revision <= w[1].revision), "in revision order");
    let mut got = Vec::new();
    let mut from = start;
    let mut batches = 0;
    loop {
        let b = s.watch(from, 3).unwrap();
        if b.changes.is_empty() {
            assert_eq!(b.next, s.revision().unwrap() + 1);
            break;
        }
        let last = b.changes.last().unwrap().revision;
        assert_eq!(b.next, last + 1, "resume right after the batch's last revision");
        assert!(b.changes.len() <= 3 + MAX_TXN_OPS);
        got.extend(b.changes);
        from = b.next;
        batches += 1;
    }
    assert_eq!(got, whole, "resumed batches equal one read");
    assert!(batches > 5, "small batches: {batches}");
    // A consumer that stopped after revision R resumes at R + 1 and misses nothing.
    let mid = whole[whole.len() / 2].revision;
    let rest = feed(&*s, mid + 1);
    assert_eq!(rest, whole.iter().filter(|c| c.revision > mid).cloned().collect::<Vec<_>>());
}

/// After `compact(R)`, watches from below R answer `Compacted`, from R on they work.
pub fn compaction(fresh: Factory<'_>) {
    let s = fresh();
    let mut revs = Vec::new();
    for i in 0..5 {
        revs.push(s.txn(vec![put(Kind::Group, &format!("g{i}"), json!(i), Expect::Any)]).unwrap());
    }
    let r = revs[3];
    s.compact(r).unwrap();
    assert_eq!(s.compacted().unwrap(), r);
    match s.watch(revs[1], 100) {
        Err(StoreError::Compacted { requested, compacted }) => assert_eq!((requested, compacted), (revs[1], r)),
        other => panic!("a watch below the compaction point: expected Compacted, got {other:?}"),
    }
    let kept = feed(&*s, r);
    assert_eq!(kept.iter().map(|c| c.revision).collect::<Vec<_>>(), vec![revs[3], revs[4]]);
    // Objects are untouched.
    assert_eq!(s.list(Kind::Group, "").unwrap().len(), 5);
    // Compacting lower is a no-op; into the future is refused.
    s.compact(revs[0]).unwrap();
    assert_eq!(s.compacted().unwrap(), r);
    let head = s.revision().unwrap();
    assert!(matches!(s.compact(head + 2), Err(StoreError::FutureRevision { .. })));
    s.compact(head + 1).unwrap();
    assert!(matches!(s.watch(head, 10), Err(StoreError::Compacted { .. })));
    let after = s.txn(vec![put(Kind::Group, "new", json!(1), Expect::Any)]).unwrap();
    assert_eq!(feed(&*s, head + 1).len(), 1);
    assert_eq!(feed(&*s, head + 1)[0].revision, after);
}

/// The async [`Watcher`] sleeps until a commit and then yields it; it reports `Compacted`.
pub fn watcher_wakes_on_commit(fresh: Factory<'_>) {
    let s = fresh();
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a tokio runtime");
    rt.block_on(async {
        let from = s.revision().unwrap() + 1;
        let mut w = Watcher::new(s.clone(), from).with_limit(2);
        // Nothing committed yet: next() is still waiting after a while.
        let idle = tokio::time::timeout(Duration::from_millis(50), w.next()).await;
        assert!(idle.is_err(), "next() returned with nothing committed: {idle:?}");
        // A commit from another thread wakes it.
        let writer = s.clone();
        let t = std::thread::spawn(move || {
            writer.txn(vec![WriteOp::Activity(activity("not a change"))]).unwrap();
            writer.txn(vec![put(Kind::Group, "w", json!(1), Expect::Absent)]).unwrap()
        });
        let got = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("the watcher woke within 10 s of the commit")
            .unwrap();
        let rev = t.join().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].revision, got[0].key.as_str()), (rev, "w"));
        assert_eq!(w.next_revision(), rev + 1);
        // Batches are bounded and whole revisions.
        s.txn((0..3).map(|i| put(Kind::Group, &format!("m{i}"), json!(i), Expect::Any)).collect()).unwrap();
        s.txn(vec![put(Kind::Group, "m9", json!(9), Expect::Any)]).unwrap();
        let b = w.next().await.unwrap();
        assert_eq!(b.len(), 3, "one whole revision of 3 changes even with limit 2");
        assert_eq!(w.next().await.unwrap().len(), 1);
        // Fallen behind the compaction point: Compacted.
        let mut late = Watcher::new(s.clone(), from);
        s.compact(s.revision().unwrap()).unwrap();
        assert!(matches!(late.next().await, Err(StoreError::Compacted { .. })));
    });
}
