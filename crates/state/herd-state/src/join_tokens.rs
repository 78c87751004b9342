//! Join tokens in the store: created with a random secret kept only as its SHA-256, listed
//! and deleted by id, and redeemed (checked, and marked used when single-use, in one
//! compare-and-swap) by the host join that comes with `herd agent`.
//!
//! Why here: the token's checks are the model's (`herd_model::join_token`); what needs the store
//! is that a single-use token can be redeemed exactly once even when two agents race, which is
//! the store's compare-and-swap, and that etcd can meet it the same way.

use crate::records::{StateError, Store};
use chrono::{DateTime, Utc};
use herd_model::join_token::{JoinRefusal, JoinToken, JoinTokenRecord};
use herd_store::{Expect, Kind, StoreExt, WriteOp};
use sha2::{Digest, Sha256};

/// The SHA-256 of a secret, hex.
fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
    hex::encode(b)
}

/// What to create.
#[derive(Debug, Clone)]
pub struct NewToken<'a> {
    pub ttl: chrono::Duration,
    pub single_use: bool,
    pub description: &'a str,
    /// The cluster CA's SHA-256 (hex, any case, colons allowed).
    pub ca_fingerprint: &'a str,
}

/// Creates a token: its record (stored) and its text (shown once, never stored).
pub fn create(
    store: &dyn Store,
    new: &NewToken<'_>,
    now: DateTime<Utc>,
) -> Result<(JoinTokenRecord, String), StateError> {
    let token = JoinToken {
        ca_sha256: herd_model::join_token::ca_hex(new.ca_fingerprint),
        id: random_hex(8),
        secret: random_hex(16),
    };
    let record = JoinTokenRecord {
        id: token.id.clone(),
        secret_sha256: hash(&token.secret),
        created_at: now,
        expires_at: now + new.ttl,
        single_use: new.single_use,
        used_at: None,
        used_by: None,
        description: new.description.to_string(),
    };
    store.txn(vec![WriteOp::put(Kind::JoinToken, record.id.clone(), &record, Expect::Absent)?])?;
    Ok((record.view(), token.render()))
}

/// Every token, without secrets, oldest first.
pub fn list(store: &dyn Store) -> Result<Vec<JoinTokenRecord>, StateError> {
    let mut out: Vec<JoinTokenRecord> =
        store.list_as::<JoinTokenRecord>(Kind::JoinToken, "")?.into_iter().map(|o| o.value.view()).collect();
    out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
    Ok(out)
}

/// Deletes token `id`; false if there was none.
pub fn delete(store: &dyn Store, id: &str) -> Result<bool, StateError> {
    if store.get_as::<JoinTokenRecord>(Kind::JoinToken, id)?.is_none() {
        return Ok(false);
    }
    store.txn(vec![WriteOp::delete(Kind::JoinToken, id.to_string(), Expect::Any)])?;
    Ok(true)
}

/// A token that admits a join: its record (as shown), and the write that marks a single-use
/// token used, to commit in the same transaction as what the join creates.
#[derive(Debug)]
pub struct Admission {
    pub record: JoinTokenRecord,
    pub mark_used: Option<WriteOp>,
}

/// Checks `presented` for host `host` at `now` against this cluster's CA (`ca_fingerprint`)
/// and the stored record, writing nothing. A single-use token's [`Admission::mark_used`] is a
/// compare-and-swap on the record's revision: of two joins that commit it, one fails.
pub fn admit(
    store: &dyn Store,
    presented: &str,
    ca_fingerprint: &str,
    host: &str,
    now: DateTime<Utc>,
) -> Result<Result<Admission, JoinRefusal>, StateError> {
    let token = match JoinToken::parse(presented) {
        Ok(t) => t,
        Err(r) => return Ok(Err(r)),
    };
    if token.ca_sha256 != herd_model::join_token::ca_hex(ca_fingerprint) {
        return Ok(Err(JoinRefusal::OtherCluster));
    }
    let Some(obj) = store.get_as::<JoinTokenRecord>(Kind::JoinToken, &token.id)? else {
        return Ok(Err(JoinRefusal::Unknown));
    };
    let mut record = obj.value;
    if let Err(r) = record.admits(&hash(&token.secret), now) {
        return Ok(Err(r));
    }
    let mut mark_used = None;
    if record.single_use {
        record.used_at = Some(now);
        record.used_by = Some(host.to_string());
        mark_used = Some(WriteOp::put(Kind::JoinToken, record.id.clone(), &record, Expect::Revision(obj.revision))?);
    }
    Ok(Ok(Admission { record: record.view(), mark_used }))
}

/// [`admit`], committing the single-use mark on its own: of two racing redemptions exactly
/// one succeeds.
pub fn redeem(
    store: &dyn Store,
    presented: &str,
    ca_fingerprint: &str,
    host: &str,
    now: DateTime<Utc>,
) -> Result<Result<JoinTokenRecord, JoinRefusal>, StateError> {
    let admission = match admit(store, presented, ca_fingerprint, host, now)? {
        Ok(a) => a,
        Err(r) => return Ok(Err(r)),
    };
    if let Some(put) = admission.mark_used {
        match store.txn(vec![put]) {
            Ok(_) => {}
            Err(herd_store::StoreError::Conflict { .. }) => return Ok(Err(used_meanwhile())),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Ok(admission.record))
}

/// The refusal when a single-use token was redeemed between the check and the commit.
pub fn used_meanwhile() -> JoinRefusal {
    JoinRefusal::Used { by: "another host, at the same moment".into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89";

    #[test]
    fn a_token_is_stored_hashed_redeemed_once_when_single_use_and_refused_when_forged_or_foreign() {
        let state = crate::State::in_memory().unwrap();
        let store = state.store().clone();
        let now = Utc::now();
        let new =
            NewToken { ttl: chrono::Duration::hours(24), single_use: true, description: "rack a", ca_fingerprint: CA };
        let (rec, text) = create(&*store, &new, now).unwrap();
        assert!(text.starts_with("herd1::abcdef0123456789"), "{text}");
        let stored =
            serde_json::to_string(&store.get_as::<JoinTokenRecord>(Kind::JoinToken, &rec.id).unwrap().unwrap().value)
                .unwrap();
        let secret = text.rsplit('.').next().unwrap();
        assert!(!stored.contains(secret), "the secret is not stored: {stored}");
        assert_eq!(list(&*store).unwrap(), vec![rec.clone()]);
        assert!(list(&*store).unwrap()[0].secret_sha256.is_empty(), "lists show no hash");

        let forged = format!("{}{}", &text[..text.len() - 1], if text.ends_with('0') { '1' } else { '0' });
        assert_eq!(redeem(&*store, &forged, CA, "h2", now).unwrap(), Err(JoinRefusal::Forged));
        let other_ca = CA.replace("AB", "BA");
        assert_eq!(redeem(&*store, &text, &other_ca, "h2", now).unwrap(), Err(JoinRefusal::OtherCluster));
        assert!(matches!(
            redeem(&*store, &text, CA, "h2", now + chrono::Duration::hours(25)).unwrap(),
            Err(JoinRefusal::Expired { .. })
        ));
        let used = redeem(&*store, &text, CA, "h2", now).unwrap().unwrap();
        assert_eq!(used.used_by.as_deref(), Some("h2"));
        assert_eq!(redeem(&*store, &text, CA, "h3", now).unwrap(), Err(JoinRefusal::Used { by: "h2".into() }));

        let (reusable, text2) = create(&*store, &NewToken { single_use: false, description: "", ..new }, now).unwrap();
        assert!(redeem(&*store, &text2, CA, "h4", now).unwrap().is_ok());
        assert!(redeem(&*store, &text2, CA, "h5", now).unwrap().is_ok(), "a reusable token joins many hosts");
        assert!(delete(&*store, &reusable.id).unwrap());
        assert!(!delete(&*store, &reusable.id).unwrap());
        assert_eq!(redeem(&*store, &text2, CA, "h6", now).unwrap(), Err(JoinRefusal::Unknown));
        assert!(matches!(redeem(&*store, "herd1::x", CA, "h6", now).unwrap(), Err(JoinRefusal::Malformed(_))));
    }
}
