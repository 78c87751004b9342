//! The server's TLS as the API shows and drives it: how the API is served, the public parts of
//! its certificate and CA, and the operations that renew them while it serves.
//!
//! Why in the model: the API (which shows and triggers these) and `herd-tls` (which does the
//! work over the cluster CA's files) must agree on one contract without depending on each other,
//! and later `herd agent` and other replicas read the same views.

/// How the API is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub enum TlsMode {
    /// HTTPS with a certificate signed by herd's cluster CA (the default).
    ClusterCa,
    /// HTTPS with the operator's own certificate (`herd server --tls-cert/--tls-key`).
    OperatorCertificate,
    /// Plain HTTP on a loopback address (`herd server --insecure-http`).
    InsecureHttp,
}

/// The TLS material a server presents and trusts: public parts only (no key ever leaves the
/// server through the API).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsStatus {
    pub mode: TlsMode,
    /// SHA-256 of the active cluster CA's certificate (colon-separated hex, as openssl prints
    /// it); what a user on another machine pins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
    /// Every CA a client should trust now (PEM): the active one, then a retiring one while a
    /// CA rotation overlaps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// A CA rotation in its overlap: the old CA is trusted until `until`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation: Option<CaRotation>,
    /// The certificate the server presents now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateView>,
}

/// A CA rotation's overlap.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaRotation {
    pub retiring_fingerprint: String,
    pub until: chrono::DateTime<chrono::Utc>,
}

/// The server's certificate, as clients see it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateView {
    pub fingerprint: String,
    pub not_after: chrono::DateTime<chrono::Utc>,
    /// The DNS names and IP addresses it is valid for.
    pub names: Vec<String>,
}

/// Why a TLS operation was not done.
#[derive(Debug, thiserror::Error)]
pub enum TlsRefusal {
    /// The operation does not apply to how this server is served (a 409 naming why).
    #[error("{0}")]
    NotApplicable(String),
    /// The operation failed on the server (a 500; the cause is logged).
    #[error("the TLS operation failed")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The server's TLS: what it presents, and renewing it while it serves.
pub trait ServerTls: Send + Sync {
    fn status(&self) -> Result<TlsStatus, Box<dyn std::error::Error + Send + Sync>>;
    /// A new server certificate under the same CA (or the operator's files read again); the
    /// next handshake presents it, connections already open are not touched.
    fn rotate_certificate(&self) -> Result<TlsStatus, TlsRefusal>;
    /// A new cluster CA: the old one stays trusted for `overlap`, then is retired.
    fn rotate_ca(&self, overlap: std::time::Duration) -> Result<TlsStatus, TlsRefusal>;
    /// A client certificate for the agent of host `host`, signed by the cluster CA over the
    /// agent's own public key (PEM); the agent's key never reaches the server.
    fn sign_agent(&self, host: &str, public_key_pem: &str) -> Result<SignedAgent, TlsRefusal> {
        let _ = (host, public_key_pem);
        Err(TlsRefusal::NotApplicable(NO_CLUSTER_CA.into()))
    }
}

/// What an agent gets at join: its certificate and the CAs to trust.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignedAgent {
    pub certificate_pem: String,
    /// SHA-256 of the certificate (colon-separated hex): the server accepts this host's agent
    /// only with it.
    pub fingerprint: String,
    pub ca_bundle: String,
}

/// Why a server without the cluster CA takes no agents.
pub const NO_CLUSTER_CA: &str = "hosts join under the cluster CA, and this server has none (it serves plain HTTP or the operator's own certificate); start it with herd's default TLS to add hosts";

/// A server on plain HTTP (`--insecure-http`), and in-process handler tests: no TLS to show
/// or rotate.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainHttp;

impl ServerTls for PlainHttp {
    fn status(&self) -> Result<TlsStatus, Box<dyn std::error::Error + Send + Sync>> {
        Ok(TlsStatus {
            mode: TlsMode::InsecureHttp,
            ca_fingerprint: None,
            ca_bundle: None,
            rotation: None,
            certificate: None,
        })
    }

    fn rotate_certificate(&self) -> Result<TlsStatus, TlsRefusal> {
        Err(TlsRefusal::NotApplicable(PLAIN_HTTP.into()))
    }

    fn rotate_ca(&self, _overlap: std::time::Duration) -> Result<TlsStatus, TlsRefusal> {
        Err(TlsRefusal::NotApplicable(PLAIN_HTTP.into()))
    }
}

const PLAIN_HTTP: &str =
    "this server serves plain HTTP (--insecure-http): it has no certificate to rotate; restart it without --insecure-http to serve HTTPS";
