//! Join tokens: what `herd agent --join-token T` presents to join a host to the cluster.
//!
//! Why this shape (k3s's and kubeadm's): a token carries the SHA-256 of the cluster CA's
//! certificate, so an agent on first contact checks that the server it reached holds that CA
//! before it trusts anything, and a secret, which the server keeps only as a SHA-256 hash (a
//! copy of the store gives no usable token). Tokens expire (24 h by default) and may be
//! single-use.
//!
//! ```text
//!   herd1::<CA SHA-256, 64 hex>::<id>.<secret>
//!
//!   created ──(expires_at passes)──────────────▶ expired (refused)
//!      │
//!      └──(redeemed; single-use)──▶ used (refused) ; (redeemed; reusable)──▶ created
//!   deleted at any time: unknown (refused)
//! ```

use crate::FieldError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The token format's prefix and version.
pub const PREFIX: &str = "herd1";

/// The default lifetime, as k3s and kubeadm.
pub const DEFAULT_TTL_SECS: u64 = 24 * 3600;

/// The longest lifetime a token may have (30 days): a join token is a key to the cluster.
pub const MAX_TTL_SECS: u64 = 30 * 24 * 3600;

/// A stored join token (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JoinTokenRecord {
    /// Public part of the token (16 hex digits): how it is listed and deleted.
    pub id: String,
    /// SHA-256 of the secret, hex. Never shown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schema(ignore)]
    pub secret_sha256: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub single_use: bool,
    /// When a single-use token was redeemed, and by which host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_by: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

impl JoinTokenRecord {
    /// The record as the API shows it: everything but the secret's hash.
    pub fn view(&self) -> JoinTokenRecord {
        JoinTokenRecord { secret_sha256: String::new(), ..self.clone() }
    }

    /// Whether a presented secret whose SHA-256 is `presented_sha256` (hex) may join at `now`.
    /// The hashes are compared in constant time.
    pub fn admits(&self, presented_sha256: &str, now: DateTime<Utc>) -> Result<(), JoinRefusal> {
        if !constant_time_eq(self.secret_sha256.as_bytes(), presented_sha256.as_bytes()) {
            return Err(JoinRefusal::Forged);
        }
        if now >= self.expires_at {
            return Err(JoinRefusal::Expired { at: self.expires_at });
        }
        if self.single_use && self.used_at.is_some() {
            return Err(JoinRefusal::Used { by: self.used_by.clone().unwrap_or_default() });
        }
        Ok(())
    }
}

/// Why a join token is refused. The messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefusal {
    #[error("the join token is malformed: {0}")]
    Malformed(String),
    #[error("the join token is for another cluster (its CA fingerprint is not this server's)")]
    OtherCluster,
    #[error("the join token is unknown (deleted, or never created here)")]
    Unknown,
    #[error("the join token's secret is wrong")]
    Forged,
    #[error("the join token expired at {at}")]
    Expired { at: DateTime<Utc> },
    #[error("the join token was single-use and is used (by host '{by}')")]
    Used { by: String },
}

/// A token as presented: `herd1::<ca sha256>::<id>.<secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the cluster CA's certificate, 64 lowercase hex digits.
    pub ca_sha256: String,
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken").field("ca_sha256", &self.ca_sha256).field("id", &self.id).finish_non_exhaustive()
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl JoinToken {
    /// Parses a presented token; the error says which part is wrong (never echoing it).
    pub fn parse(s: &str) -> Result<JoinToken, JoinRefusal> {
        let bad = |why: &str| JoinRefusal::Malformed(why.to_string());
        let mut parts = s.trim().split("::");
        let (Some(prefix), Some(ca), Some(rest), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad(&format!("expected {PREFIX}::<CA SHA-256>::<id>.<secret>")));
        };
        if prefix != PREFIX {
            return Err(bad(&format!("it does not start with '{PREFIX}::'")));
        }
        let ca = ca.to_ascii_lowercase().replace(':', "");
        if !is_hex(&ca, 64) {
            return Err(bad("the CA fingerprint is not 64 hex digits"));
        }
        let (id, secret) =
            rest.split_once('.').ok_or_else(|| bad("expected <id>.<secret> after the CA fingerprint"))?;
        if !is_hex(id, 16) || !is_hex(secret, 32) {
            return Err(bad("the id must be 16 and the secret 32 hex digits"));
        }
        Ok(JoinToken { ca_sha256: ca, id: id.to_string(), secret: secret.to_string() })
    }

    /// The token's text (contains the secret: shown once, at creation).
    pub fn render(&self) -> String {
        format!("{PREFIX}::{}::{}.{}", self.ca_sha256, self.id, self.secret)
    }
}

/// A CA fingerprint as the TLS status shows it (`AB:CD:...`) in the token's form.
pub fn ca_hex(fingerprint: &str) -> String {
    fingerprint.to_ascii_lowercase().replace(':', "")
}

/// Validates a requested lifetime in seconds.
pub fn check_ttl(field: &str, secs: u64) -> Result<u64, FieldError> {
    if secs == 0 || secs > MAX_TTL_SECS {
        return Err(FieldError::new(
            field,
            format!("{secs} s is not allowed: a join token lives 1 s to {MAX_TTL_SECS} s (30 days)"),
        ));
    }
    Ok(secs)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> JoinToken {
        JoinToken { ca_sha256: "ab".repeat(32), id: "0123456789abcdef".into(), secret: "f".repeat(32) }
    }

    #[test]
    fn tokens_round_trip_and_bad_ones_name_the_part() {
        let t = token();
        assert_eq!(JoinToken::parse(&t.render()).unwrap(), t);
        // A fingerprint as `server tls` prints it (colon-separated, upper case) is accepted too.
        let colons = format!("herd1::{}::0123456789abcdef.{}", ["AB"; 32].join(":"), "f".repeat(32));
        assert_eq!(JoinToken::parse(&colons).unwrap().ca_sha256, "ab".repeat(32));
        let err = |s: &str| JoinToken::parse(s).unwrap_err().to_string();
        assert!(err("nope").contains("expected herd1::"), "{}", err("nope"));
        assert!(err(&t.render().replace("herd1", "k10")).contains("does not start"));
        assert!(err(&t.render().replace(".f", "f")).contains("<id>.<secret>"));
        assert!(err(&format!("herd1::{}::0123.{}", "ab".repeat(32), "f".repeat(32))).contains("16 and the secret 32"));
        assert!(!format!("{t:?}").contains(&"f".repeat(32)), "Debug hides the secret");
    }

    #[test]
    fn a_record_admits_only_its_secret_before_expiry_and_single_use_once() {
        let now = Utc::now();
        let mut r = JoinTokenRecord {
            id: "0123456789abcdef".into(),
            secret_sha256: "aa".repeat(32),
            created_at: now,
            expires_at: now + chrono::Duration::hours(1),
            single_use: true,
            used_at: None,
            used_by: None,
            description: String::new(),
        };
        assert_eq!(r.admits(&"aa".repeat(32), now), Ok(()));
        assert_eq!(r.admits(&"ab".repeat(32), now), Err(JoinRefusal::Forged));
        assert!(matches!(
            r.admits(&"aa".repeat(32), now + chrono::Duration::hours(2)),
            Err(JoinRefusal::Expired { .. })
        ));
        r.used_at = Some(now);
        r.used_by = Some("h2".into());
        assert_eq!(r.admits(&"aa".repeat(32), now), Err(JoinRefusal::Used { by: "h2".into() }));
        assert!(r.view().secret_sha256.is_empty());
        assert!(!serde_json::to_string(&r.view()).unwrap().contains("secretSha256"));
        assert!(check_ttl("expiresInSeconds", 0).is_err() && check_ttl("x", MAX_TTL_SECS + 1).is_err());
    }
}
