//! TLS for herd: one cluster CA, the certificates it signs, and the rustls configurations that
//! serve and trust them.
//!
//! Why a crate of its own: every link between machines (CLI → server now; agent ↔ server and
//! replica ↔ replica later) is TLS under the same cluster CA, so the CA, the file layout and the
//! trust rules live in one place that the server, the CLI and later `herd agent` share.
//!
//! - [`agent`]: the agent's key, its certificate signed at join, and both ends' configurations
//!   for the agent link (one port, chosen by ALPN).
//! - [`ca`]: the CA itself: create, load, sign a server or agent certificate, rotate.
//! - [`files`]: where the material lives in a data dir, written atomically, keys 0600.
//! - [`serve`]: a server configuration whose certificate can be replaced without a restart.
//! - [`names`]: the names and addresses the server's certificate is valid for.
//! - [`served`]: what a running server presents, its renewal and the CA's rotation, behind
//!   the model's `ServerTls` contract that the API drives.
//! - [`listener`]: TCP in, finished handshakes out, so a stalled handshake blocks nobody.
//! - [`trust`]: a client configuration that trusts the cluster CA bundle, and the hint a user
//!   gets when a server's certificate does not chain to it.
//!
//! The lifecycle of the CA, as `herd server rotate-ca` drives it:
//!
//! ```text
//!   (first start)                rotate-ca                      overlap ends
//!  ──────────────▶  Single(A)  ─────────────▶  Overlap(A→B)  ──────────────▶  Single(B)
//!                   bundle: A                  bundle: B, A                   bundle: B
//!                   chain: leaf(A)             chain: leaf(B) + B signed by A chain: leaf(B)
//! ```
//!
//! During the overlap a client that trusts only A still verifies the server (leaf → B, with B
//! cross-signed by A), and a client that has fetched the new bundle verifies it through B.
#![forbid(unsafe_code)]

pub mod agent;
pub mod ca;
pub mod files;
pub mod listener;
pub mod names;
pub mod serve;
pub mod served;
pub mod trust;

pub use ca::{ClusterCa, Fingerprint, Issued, Leaf};
pub use files::{Rotation, TlsFiles};
pub use listener::TlsListener;
pub use names::server_leaf;
pub use serve::ServerCerts;
pub use served::ServedTls;
pub use trust::{client_config, untrusted_hint};

/// What can go wrong with TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot make or sign a certificate")]
    Sign(#[from] rcgen::Error),
    #[error("{path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is not valid PEM")]
    Pem {
        what: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("TLS configuration")]
    Rustls(#[from] rustls::Error),
    #[error("cannot read rotation state {path}")]
    State {
        path: std::path::PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl TlsError {
    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid { what: what.into(), reason: reason.into() }
    }
}

/// The one crypto provider herd uses (ring), for servers and clients alike.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
