//! Committing one request's writes when they do not fit one transaction.
//!
//! Why: a transaction holds at most `herd_store::MAX_TXN_OPS` operations (etcd's limit), and a
//! request may touch more records than that (an action on every instance of a large set, the
//! deletion of a group with many sets). Such a request commits in chunks, and each chunk that
//! loses a race is rebuilt from a fresh read, so the request still applies whole.

use crate::records::StateError;
use herd_store::{Store, StoreError, WriteOp};

/// How many times a chunk that lost to a concurrent write is rebuilt and committed again.
pub const CHUNK_RETRIES: usize = 5;

/// Commits `ops` (puts of one request's records) in chunks that each fit a transaction. A chunk
/// that loses to a concurrent write is rebuilt from a fresh read: `reapply(key)` gives the write
/// for that key again, or `None` when it has nothing left to do; up to [`CHUNK_RETRIES`] times,
/// after which the store's conflict is the answer. Each write must be idempotent, so a request
/// cut short and sent again completes.
pub fn commit_chunks_reapplying<E: From<StateError>>(
    store: &dyn Store,
    ops: Vec<WriteOp>,
    reapply: impl Fn(&str) -> Result<Option<WriteOp>, E>,
) -> Result<(), E> {
    for chunk in herd_store::chunks(ops, 0).map_err(StateError::from)? {
        let keys: Vec<String> = chunk.iter().filter_map(|op| op.put_key().map(|(_, key)| key.to_string())).collect();
        let mut chunk = chunk;
        let mut attempt = 0;
        loop {
            match store.txn(chunk) {
                Ok(_) => break,
                Err(StoreError::Conflict { .. }) if attempt < CHUNK_RETRIES => {
                    attempt += 1;
                    chunk = Vec::new();
                    for key in &keys {
                        chunk.extend(reapply(key)?);
                    }
                    if chunk.is_empty() {
                        break;
                    }
                }
                Err(e) => return Err(StateError::from(e).into()),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_store::{Expect, Kind, StoreExt};
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_chunk_that_loses_a_race_is_reapplied_from_a_fresh_read() {
        let store = crate::testkit::store();
        let keys: Vec<String> = (0..200).map(|i| format!("race/{i:03}")).collect();
        let seed =
            keys.iter().map(|k| WriteOp::put(Kind::Counter, k, &json!("old"), Expect::Absent).unwrap()).collect();
        commit_chunks_reapplying(&store, seed, |_| -> Result<_, StateError> { Ok(None) }).unwrap();
        let ops: Vec<WriteOp> = keys
            .iter()
            .map(|k| {
                let o = store.get(Kind::Counter, k).unwrap().unwrap();
                WriteOp::put(Kind::Counter, k, &json!("done"), Expect::Revision(o.revision)).unwrap()
            })
            .collect();
        // A concurrent writer changes one record of the second chunk.
        store.txn(vec![WriteOp::put(Kind::Counter, "race/150", &json!("other"), Expect::Any).unwrap()]).unwrap();
        let reapplied = AtomicUsize::new(0);
        commit_chunks_reapplying(&store, ops, |key| -> Result<_, StateError> {
            reapplied.fetch_add(1, Ordering::Relaxed);
            let o = store.get_as::<serde_json::Value>(Kind::Counter, key)?.expect("the record exists");
            Ok((o.value != json!("done"))
                .then(|| WriteOp::put(Kind::Counter, key, &json!("done"), Expect::Revision(o.revision)).unwrap()))
        })
        .unwrap();
        let second = 200 - (herd_store::MAX_TXN_OPS);
        assert_eq!(reapplied.load(Ordering::Relaxed), second, "only the second chunk is read again");
        for k in &keys {
            assert_eq!(store.get(Kind::Counter, k).unwrap().unwrap().value, json!("done"), "{k}");
        }
    }
}
