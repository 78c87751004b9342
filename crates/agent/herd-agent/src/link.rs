//! The agent's connection to the server: dial, say Hello, heartbeat, and dial again after any
//! failure, with backoff. The server's refusal (the host was deleted, or this certificate is
//! not the host's any more) ends the agent: retrying would only be refused again.
//!
//! Image pulls dial the same server with the same identity ([`Connect`]), each on a connection
//! of its own: see [`crate::images`].

use crate::identity::Identity;
use anyhow::{anyhow, bail, Context, Result};
use herd_agent_wire::{AgentMessage, ServerMessage, PROTOCOL};
use rustls_pki_types::ServerName;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long dialling and the handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between two dials.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Where the link is, for the log and for whoever watches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    Connecting,
    /// Welcomed by the server; heartbeats flow.
    Linked,
    /// The last attempt failed; the next dial comes after the backoff.
    Backoff {
        error: String,
    },
    /// Refused by the server: the agent stops.
    Refused {
        reason: String,
    },
}

/// How a session ended.
enum Ended {
    /// The connection failed or closed: dial again.
    Lost(anyhow::Error),
    /// The server refused the host: stop.
    Refused(String),
    /// Shutdown was asked.
    Shutdown,
}

/// The agent's link, until `shutdown` turns true (Ok) or the server refuses the host (Err).
pub async fn run(
    identity: &Identity,
    data_dir: &Path,
    driver: Arc<dyn herd_driver::Driver>,
    network: Option<Arc<crate::network::HostNetwork>>,
    shutdown: watch::Receiver<bool>,
    state: watch::Sender<LinkState>,
) -> Result<()> {
    run_with_leases(identity, data_dir, driver, network, shutdown, state, Default::default(), None).await
}

/// [`run`], telling `after_reboot` of every acknowledgement: the VMs this host's reboot took
/// down start again once the server lists them (see [`crate::reboot`]).
pub async fn run_after_reboot(
    identity: &Identity,
    data_dir: &Path,
    driver: Arc<dyn herd_driver::Driver>,
    network: Option<Arc<crate::network::HostNetwork>>,
    after_reboot: Arc<crate::reboot::AfterReboot>,
    shutdown: watch::Receiver<bool>,
    state: watch::Sender<LinkState>,
) -> Result<()> {
    run_with_leases(identity, data_dir, driver, network, shutdown, state, Default::default(), Some(after_reboot)).await
}

/// [`run`], keeping the leases the server grants in `leases` (what enforces them reads it), and
/// telling `after_reboot` (if any) of every acknowledgement.
#[allow(clippy::too_many_arguments)]
pub async fn run_with_leases(
    identity: &Identity,
    data_dir: &Path,
    driver: Arc<dyn herd_driver::Driver>,
    network: Option<Arc<crate::network::HostNetwork>>,
    mut shutdown: watch::Receiver<bool>,
    state: watch::Sender<LinkState>,
    leases: Arc<std::sync::Mutex<crate::lease::Leases>>,
    after_reboot: Option<Arc<crate::reboot::AfterReboot>>,
) -> Result<()> {
    let url = crate::join::server_url(&identity.membership.server)?;
    let host = url.host_str().ok_or_else(|| anyhow!("the server URL has no host"))?.to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_string())
        .map_err(|e| anyhow!("the server's name '{host}': {e}"))?;
    let config =
        herd_tls::agent::agent_client_config(&identity.ca_bundle, &identity.certificate_pem, &identity.key_pem)
            .map_err(|e| anyhow!("the host's identity in {}: {e}", data_dir.display()))?;
    let connect =
        Connect { addr: format!("{host}:{port}"), name, connector: tokio_rustls::TlsConnector::from(Arc::new(config)) };
    let images = crate::images::ImageCache::open(data_dir.join("images"), Arc::new(connect.clone()))
        .with_context(|| format!("the image cache in {}", data_dir.join("images").display()))?;
    let relays = crate::metadata_relay::Relays::with_network(
        data_dir,
        Arc::new(connect.clone()),
        network.as_ref().map(|n| n.net().clone()),
    );
    // The metadata listeners of the instances this host already runs (adopted after a restart).
    match driver.list().await {
        Ok(listed) => relays.restore(&listed.iter().map(|o| o.key.path()).collect::<Vec<_>>()),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list this host's instances; their metadata listeners come back with their next call")
        }
    }
    let mover = Arc::new(crate::transfer::Mover::new(data_dir.join("transfers"), Box::new(connect.clone())));
    let dial = Dial {
        mover,
        relays,
        connect,
        host: identity.membership.name.clone(),
        data_dir: data_dir.to_path_buf(),
        boot_id: boot_id(),
        driver,
        images,
        network,
        leases,
        after_reboot,
    };
    let mut backoff = Duration::from_secs(1);
    loop {
        let _ = state.send(LinkState::Connecting);
        let started = Instant::now();
        match dial.session(&mut shutdown, &state).await {
            Ended::Shutdown => return Ok(()),
            Ended::Refused(reason) => {
                let _ = state.send(LinkState::Refused { reason: reason.clone() });
                bail!("the server refused host '{}': {reason}", identity.membership.name);
            }
            Ended::Lost(e) if certificate_refused(&e).is_some() => {
                let reason = certificate_refused(&e).unwrap_or_default();
                let _ = state.send(LinkState::Refused { reason: reason.clone() });
                bail!("host '{}' cannot link: {reason}", identity.membership.name);
            }
            Ended::Lost(e) => {
                // A link that lived a while starts its backoff afresh.
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_secs(1);
                }
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "the link to the server failed");
                let _ = state.send(LinkState::Backoff { error: format!("{e:#}") });
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    () = stopped(&mut shutdown) => return Ok(()),
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// How to reach the server as this host: its address, its name, and TLS with this host's
/// certificate.
#[derive(Clone)]
pub struct Connect {
    addr: String,
    name: ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

impl Connect {
    /// A new mutually authenticated connection to the server, within [`CONNECT_TIMEOUT`].
    pub(crate) async fn dial(&self) -> Result<Tls> {
        let connect = async {
            let tcp =
                tokio::net::TcpStream::connect(&self.addr).await.with_context(|| format!("dialling {}", self.addr))?;
            let _ = tcp.set_nodelay(true);
            self.connector.connect(self.name.clone(), tcp).await.with_context(|| format!("TLS with {}", self.addr))
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(r) => r,
            Err(_) => Err(anyhow!("dialling {} took more than {CONNECT_TIMEOUT:?}", self.addr)),
        }
    }
}

#[async_trait::async_trait]
impl crate::images::Origin for Connect {
    async fn open(
        &self,
        digest: &str,
    ) -> Result<(u64, Box<dyn tokio::io::AsyncRead + Send + Unpin>), crate::images::PullError> {
        use crate::images::PullError;
        let failed = |e: anyhow::Error| PullError::Failed(format!("pulling {digest} from {}: {e:#}", self.addr));
        let mut tls = self.dial().await.map_err(failed)?;
        let ask = AgentMessage::Pull { protocol: PROTOCOL, digest: digest.to_string() };
        herd_agent_wire::write(&mut tls, &ask).await.map_err(|e| failed(e.into()))?;
        match tokio::time::timeout(CONNECT_TIMEOUT, herd_agent_wire::read::<_, ServerMessage>(&mut tls)).await {
            Ok(Ok(Some(ServerMessage::PullStart { digest: d, size }))) if d == digest => Ok((size, Box::new(tls))),
            Ok(Ok(Some(ServerMessage::PullRefused { reason }) | Some(ServerMessage::Refused { reason }))) => {
                Err(PullError::Unavailable(format!("the server refused the pull: {reason}")))
            }
            Ok(Ok(Some(other))) => Err(failed(anyhow!("expected PullStart, got {other:?}"))),
            Ok(Ok(None)) => Err(failed(anyhow!("the server closed the connection"))),
            Ok(Err(e)) => Err(failed(e.into())),
            Err(_) => Err(failed(anyhow!("no answer within {CONNECT_TIMEOUT:?}"))),
        }
    }
}

#[async_trait::async_trait]
impl crate::metadata_relay::Upstream for Connect {
    async fn open(&self, key: &str) -> Result<Box<dyn crate::metadata_relay::Duplex>, String> {
        let failed = |e: anyhow::Error| format!("relaying {key}'s metadata to {}: {e:#}", self.addr);
        let mut tls = self.dial().await.map_err(failed)?;
        let ask = AgentMessage::Relay { protocol: PROTOCOL, key: key.to_string() };
        herd_agent_wire::write(&mut tls, &ask).await.map_err(|e| failed(e.into()))?;
        match tokio::time::timeout(CONNECT_TIMEOUT, herd_agent_wire::read::<_, ServerMessage>(&mut tls)).await {
            Ok(Ok(Some(ServerMessage::RelayStart))) => Ok(Box::new(tls)),
            Ok(Ok(Some(ServerMessage::RelayRefused { reason } | ServerMessage::Refused { reason }))) => {
                Err(format!("the server refused to relay {key}'s metadata: {reason}"))
            }
            Ok(Ok(Some(other))) => Err(failed(anyhow!("expected RelayStart, got {other:?}"))),
            Ok(Ok(None)) => Err(failed(anyhow!("the server closed the connection"))),
            Ok(Err(e)) => Err(failed(e.into())),
            Err(_) => Err(failed(anyhow!("no answer within {CONNECT_TIMEOUT:?}"))),
        }
    }
}

struct Dial {
    connect: Connect,
    host: String,
    data_dir: PathBuf,
    boot_id: String,
    driver: Arc<dyn herd_driver::Driver>,
    images: Arc<crate::images::ImageCache>,
    relays: Arc<crate::metadata_relay::Relays>,
    mover: Arc<crate::transfer::Mover>,
    /// Where segment descriptions go (None: this host runs no bridged instances).
    network: Option<Arc<crate::network::HostNetwork>>,
    leases: Arc<std::sync::Mutex<crate::lease::Leases>>,
    /// The VMs this host's reboot took down, waiting for the server's word.
    after_reboot: Option<Arc<crate::reboot::AfterReboot>>,
}

impl Dial {
    fn leases(&self) -> std::sync::MutexGuard<'_, crate::lease::Leases> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn session(&self, shutdown: &mut watch::Receiver<bool>, state: &watch::Sender<LinkState>) -> Ended {
        let mut tls = match self.connect.dial().await {
            Ok(t) => t,
            Err(e) => return Ended::Lost(e),
        };
        let hello = AgentMessage::Hello {
            protocol: PROTOCOL,
            name: self.host.clone(),
            agent_version: crate::VERSION.into(),
            capacity: crate::capacity::measure(&self.data_dir),
            boot_id: self.boot_id.clone(),
        };
        if let Err(e) = herd_agent_wire::write(&mut tls, &hello).await {
            return Ended::Lost(e.into());
        }
        let interval =
            match tokio::time::timeout(CONNECT_TIMEOUT, herd_agent_wire::read::<_, ServerMessage>(&mut tls)).await {
                Ok(Ok(Some(ServerMessage::Welcome { heartbeat_interval_ms }))) => {
                    Duration::from_millis(heartbeat_interval_ms.clamp(100, 60_000))
                }
                Ok(Ok(Some(ServerMessage::Refused { reason }))) => return Ended::Refused(reason),
                Ok(Ok(Some(other))) => return Ended::Lost(anyhow!("expected Welcome, got {other:?}")),
                Ok(Ok(None)) => return Ended::Lost(anyhow!("the server closed the connection before its Welcome")),
                Ok(Err(e)) => return Ended::Lost(e.into()),
                Err(_) => return Ended::Lost(anyhow!("no Welcome within {CONNECT_TIMEOUT:?}")),
            };
        tracing::info!(server = %self.connect.addr, "linked to the server");
        let _ = state.send(LinkState::Linked);
        let (mut rd, mut wr) = tokio::io::split(tls);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq = 0u64;
        self.leases().new_session();
        let mut last_ack = Instant::now();
        // Three missed acknowledgements: the connection is dead even if TCP has not noticed.
        let silence = interval * 3 + Duration::from_secs(5);
        let (frames_tx, mut frames) = tokio::sync::mpsc::channel(16);
        // Replies of calls running on this host, written by this loop (one writer).
        let (replies_tx, mut replies) = tokio::sync::mpsc::channel::<AgentMessage>(64);
        let reader = tokio::spawn(async move {
            loop {
                let r = herd_agent_wire::read::<_, ServerMessage>(&mut rd).await;
                let end = !matches!(r, Ok(Some(_)));
                if frames_tx.send(r).await.is_err() || end {
                    return;
                }
            }
        });
        let ended = loop {
            tokio::select! {
                _ = tick.tick() => {
                    if last_ack.elapsed() > silence {
                        break Ended::Lost(anyhow!("no acknowledgement from the server for {:?}", last_ack.elapsed()));
                    }
                    seq += 1;
                    let hb = AgentMessage::Heartbeat { seq, capacity: crate::capacity::measure(&self.data_dir) };
                    // The lease this heartbeat's ack grants counts from now, before it is sent.
                    self.leases().sent(seq, Instant::now());
                    if let Err(e) = herd_agent_wire::write(&mut wr, &hb).await {
                        break Ended::Lost(e.into());
                    }
                }
                Some(reply) = replies.recv() => {
                    if let Err(e) = herd_agent_wire::write(&mut wr, &reply).await {
                        break Ended::Lost(e.into());
                    }
                }
                frame = frames.recv() => match frame {
                    Some(Ok(Some(ServerMessage::Ack { seq, lease_ms, instances }))) => {
                        last_ack = Instant::now();
                        let granted = self.leases().acked(seq, Duration::from_millis(lease_ms), &instances);
                        if let Some(after) = &self.after_reboot {
                            after.acknowledged(&instances);
                        }
                        if let (Some(network), Some(until)) = (&self.network, granted.until) {
                            network.lease(instances, until);
                        }
                        if !granted.dropped.is_empty() {
                            tracing::info!(instances = ?granted.dropped, "the server no longer lists these instances for this host: their lease is not renewed");
                        }
                    }
                    Some(Ok(Some(ServerMessage::Call { id, call }))) => {
                        tracing::debug!(id, op = call.op(), "a call from the server");
                        let (driver, replies, images) = (self.driver.clone(), replies_tx.clone(), self.images.clone());
                        let (relays, mover) = (self.relays.clone(), self.mover.clone());
                        // A call runs to its end even if the connection drops meanwhile: a
                        // driver call cut half-way helps no one, and the server asks again
                        // (every call is idempotent) and gets the finished state. An image
                        // pull inside it has a connection of its own: this loop goes on.
                        tokio::spawn(async move {
                            let result = crate::calls::execute(&*driver, &images, &relays, &mover, call).await;
                            let _ = replies.send(AgentMessage::Reply { id, result }).await;
                        });
                    }
                    Some(Ok(Some(ServerMessage::Wanted { digests }))) => {
                        let images = self.images.clone();
                        tokio::spawn(async move { images.keep_only(&digests.into_iter().collect()).await });
                    }
                    Some(Ok(Some(ServerMessage::Segments { spans, security }))) => {
                        if let Some(network) = &self.network {
                            network.apply(spans, security);
                        }
                    }
                    Some(Ok(Some(ServerMessage::Refused { reason }))) => break Ended::Refused(reason),
                    Some(Ok(Some(other))) => break Ended::Lost(anyhow!("unexpected {other:?}")),
                    Some(Ok(None)) | None => break Ended::Lost(anyhow!("the server closed the connection")),
                    Some(Err(e)) => break Ended::Lost(e.into()),
                },
                () = stopped(shutdown) => break Ended::Shutdown,
            }
        };
        reader.abort();
        ended
    }
}

/// Why TLS refused the link for good, if it did: the server does not accept this host's
/// certificate (another cluster's CA, or expired), or this host does not trust the server's.
/// Retrying cannot help; the host must join again.
fn certificate_refused(e: &anyhow::Error) -> Option<String> {
    use rustls::AlertDescription as A;
    for cause in e.chain() {
        let tls = cause.downcast_ref::<rustls::Error>().or_else(|| {
            cause.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()?.downcast_ref::<rustls::Error>())
        });
        match tls {
            Some(rustls::Error::AlertReceived(
                a @ (A::BadCertificate
                | A::UnknownCA
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::CertificateRequired
                | A::AccessDenied),
            )) => {
                return Some(format!(
                    "the server does not accept this host's certificate (TLS alert {a:?}): it was not signed by this cluster's CA, or has expired; delete the data dir's identity and join again with a new token"
                ))
            }
            Some(rustls::Error::InvalidCertificate(c)) => {
                return Some(format!(
                    "the server's certificate is not signed by the CA this host trusts ({c:?}): this is not the cluster the host joined"
                ))
            }
            _ => {}
        }
    }
    None
}

/// Returns once `shutdown` turns true (the watch's guard is dropped inside, so the future
/// stays `Send`).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// This boot of the host (the kernel's boot id): tells the server a reboot from a reconnect.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}
