//! How `herd server` serves its API: HTTPS under the cluster CA (the default), HTTPS with the
//! operator's own certificate, or plain HTTP on loopback; and the `tls` controller that renews
//! the certificate and ends a CA rotation's overlap while the server runs.
//!
//! Why here: the server owns the listener and the controllers. The certificate itself, its
//! renewal and the CA's rotation are `herd-tls`'s ([`herd_tls::ServedTls`]); the API drives
//! them through the model's [`ServerTls`] contract.

use anyhow::{bail, Result};
use herd_api::services::{PlainHttp, ServerTls};
use herd_controller_runtime::{Controller, ControllerError, Next};
use herd_model::clock::Clock;
use herd_tls::{ServedTls, TlsFiles};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How the API is served (`herd server` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// HTTPS, the certificate signed by the cluster CA in `<data-dir>/tls` (made at first
    /// start), valid for the listen address and `sans`; the CA key at `ca_key_file` if given.
    ClusterCa { sans: Vec<String>, ca_key_file: Option<PathBuf> },
    /// HTTPS with the operator's certificate chain and key (PEM files), read again by
    /// `herd server rotate-cert`.
    OperatorCertificate { cert: PathBuf, key: PathBuf },
    /// Plain HTTP (`--insecure-http`), refused on anything but a loopback address.
    InsecureHttp,
}

impl Default for Transport {
    fn default() -> Self {
        Transport::ClusterCa { sans: Vec::new(), ca_key_file: None }
    }
}

/// What the listener and the API get from [`prepare`].
pub(super) struct Prepared {
    /// The rustls configuration to serve with; `None` for plain HTTP.
    pub config: Option<Arc<rustls::ServerConfig>>,
    pub service: Arc<dyn ServerTls>,
    /// The configuration for agent connections (the cluster CA only): a client certificate of
    /// the CA required.
    pub agent_config: Option<Arc<rustls::ServerConfig>>,
    /// The controller that renews and retires (for the cluster CA only), and what wakes it.
    pub controller: Option<(Arc<TlsController>, Arc<tokio::sync::Notify>)>,
}

/// Refuses plain HTTP beyond loopback; runs before anything is opened or written.
pub(super) fn check(transport: &Transport, listen: SocketAddr) -> Result<()> {
    if *transport == Transport::InsecureHttp && !listen.ip().is_loopback() {
        bail!(
            "--insecure-http is refused on {listen}: it is not a loopback address, and the API token would cross the network in clear text. Drop --insecure-http (herd serves HTTPS under its cluster CA by default), or listen on 127.0.0.1"
        );
    }
    Ok(())
}

/// Makes or loads the TLS material for `transport` (checked by [`check`]).
pub(super) fn prepare(
    transport: &Transport,
    listen: SocketAddr,
    data_dir: &std::path::Path,
    cluster_id: &str,
    clock: Arc<dyn Clock>,
) -> Result<Prepared> {
    let tls_error =
        |what: String| move |e: herd_tls::TlsError| anyhow::anyhow!("{what}: {}", herd_model::error::chain_text(&e));
    match transport {
        Transport::InsecureHttp => {
            check(transport, listen)?;
            tracing::warn!(%listen, "serving plain HTTP (--insecure-http) on loopback: only local clients, no TLS");
            Ok(Prepared { config: None, service: Arc::new(PlainHttp), agent_config: None, controller: None })
        }
        Transport::OperatorCertificate { cert, key } => {
            let what = format!("--tls-cert {} / --tls-key {}", cert.display(), key.display());
            let served = ServedTls::operator(cert.clone(), key.clone()).map_err(tls_error(what.clone()))?;
            Ok(Prepared {
                config: Some(served.config().map_err(tls_error(what))?),
                service: Arc::new(served),
                agent_config: None,
                controller: None,
            })
        }
        Transport::ClusterCa { sans, ca_key_file } => {
            let leaf = herd_tls::server_leaf(listen, sans).map_err(anyhow::Error::msg)?;
            let files = TlsFiles::new(data_dir, ca_key_file.as_deref());
            let what = format!("TLS ({})", files.bundle_path().display());
            let served = Arc::new(ServedTls::cluster(files, leaf, cluster_id, clock).map_err(tls_error(what.clone()))?);
            let controller = Some((Arc::new(TlsController(served.clone())), served.waker()));
            let agent_config = served.agent_config().map_err(tls_error(what.clone()))?;
            Ok(Prepared {
                config: Some(served.config().map_err(tls_error(what))?),
                service: served,
                agent_config,
                controller,
            })
        }
    }
}

/// The `tls` controller: renews the server certificate before it ends and retires the old CA
/// when a rotation's overlap is over ([`ServedTls::maintain`]).
pub(super) struct TlsController(Arc<ServedTls>);

impl Controller for TlsController {
    fn name(&self) -> &'static str {
        "tls"
    }

    fn resync(&self) -> Duration {
        herd_tls::served::RESYNC
    }

    async fn reconcile(&self) -> Result<Next, ControllerError> {
        let served = self.0.clone();
        let overlap_ends = tokio::task::spawn_blocking(move || served.maintain()).await??;
        Ok(overlap_ends.map_or(Next::Idle, Next::After))
    }
}
