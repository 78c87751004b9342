//! Health probes (Azure Load Balancer semantics) and a runner that probes a set of targets.
//!
//! Why it exists: pool membership follows instance health. The control plane builds one
//! [`ProbeRunner`] per LB probe, feeds it the pool's targets (instance id → reach address) and
//! watches the published [`Health`] to decide which backends are active or draining. It is
//! independent of the proxy, so the same runner can also feed automatic instance repairs.
//!
//! Semantics:
//! - **Threshold**: a target flips state only after `threshold` consecutive results of the
//!   opposite kind; the initial state is `Unknown` and flips after the first `threshold`
//!   consecutive results of one kind (either way).
//! - **Http**: healthy only on status 200 (any other status, a timeout, a reset = unhealthy).
//!   A tiny HTTP/1.1 client sends `GET path` with `Connection: close` and parses the status line.
//! - **Https**: the same request over TLS (rustls). Like Azure's, the probe does not validate
//!   the backend's certificate (self-signed is the norm behind a load balancer).
//! - **Tcp**: the handshake must succeed **and** the connection must stay open for
//!   `tcp_settle` (or the peer must send data, e.g. an SSH banner). An immediate EOF or reset
//!   counts as unhealthy, because QEMU user networking accepts connections on the host side
//!   even when nothing listens in the guest, then closes them at once.
//! - **A fresh target is probed at once**, and until its first success it is probed again
//!   every [`Probe::boot_retry`] (a tenth of the interval, 50 ms to 1 s) instead of every
//!   interval. A target is an instance boot, so this is a boot coming up: its first success is
//!   seen within a tenth of an interval of the app answering, instead of up to a whole interval
//!   later. Only one failure per interval counts toward the threshold (the first of each
//!   interval, as if probed on the interval), so a boot that never answers turns `Unhealthy`
//!   exactly when it would without the retries. After the first success the schedule is the
//!   interval, counted from that success. (Azure probes a new instance on its interval; herd
//!   does better here on purpose: a rolling upgrade's batch waits for this.)
//! - Scheduling uses Tokio time (`sleep_until`), so tests may pause it.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout, Instant};

/// What a probe speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeProtocol {
    Tcp,
    Http {
        path: String,
    },
    /// Rejected by validation until herd has a TLS client.
    Https {
        path: String,
    },
}

/// One health probe definition (Azure `probes[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub protocol: ProbeProtocol,
    pub port: u16,
    /// Time between the starts of two probes of one target (Azure `intervalInSeconds`).
    pub interval: Duration,
    /// Consecutive results needed to flip state (Azure `probeThreshold`).
    pub threshold: u32,
    /// Limit for one probe, connect included.
    pub timeout: Duration,
    /// Tcp only: how long a fresh connection must stay open to count as healthy.
    pub tcp_settle: Duration,
}

impl Probe {
    /// A Tcp probe with defaults: 15 s interval, threshold 2, 5 s timeout, 150 ms settle.
    pub fn tcp(port: u16) -> Self {
        Probe {
            protocol: ProbeProtocol::Tcp,
            port,
            interval: Duration::from_secs(15),
            threshold: 2,
            timeout: Duration::from_secs(5),
            tcp_settle: Duration::from_millis(150),
        }
    }

    /// An Http probe with the same defaults as [`Probe::tcp`].
    pub fn http(port: u16, path: impl Into<String>) -> Self {
        Probe { protocol: ProbeProtocol::Http { path: path.into() }, ..Probe::tcp(port) }
    }

    /// How soon a fresh target (a new boot) that has not answered yet is probed again: a tenth
    /// of the interval, at least 50 ms and at most 1 s (see the module docs).
    pub fn boot_retry(&self) -> Duration {
        (self.interval / 10).clamp(Duration::from_millis(50), Duration::from_secs(1)).min(self.interval)
    }

    /// Rejects unsupported or meaningless probes.
    pub fn validate(&self) -> Result<(), ProbeError> {
        let invalid = |m: &str| Err(ProbeError::Invalid(m.to_string()));
        match &self.protocol {
            ProbeProtocol::Http { path } | ProbeProtocol::Https { path } => {
                if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return invalid(
                        "Http(s) probe path must start with '/' and contain no spaces or control characters",
                    );
                }
            }
            ProbeProtocol::Tcp => {
                if self.tcp_settle >= self.timeout {
                    return invalid("tcp_settle must be shorter than the probe timeout");
                }
            }
        }
        if self.port == 0 {
            return invalid("probe port must not be 0");
        }
        if self.interval.is_zero() || self.timeout.is_zero() {
            return invalid("probe interval and timeout must be positive");
        }
        if self.threshold == 0 {
            return invalid("probe threshold must be at least 1");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("invalid probe: {0}")]
    Invalid(String),
}

/// Health of one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Health {
    /// Not yet `threshold` consecutive results of one kind since the target was added.
    Unknown,
    Healthy,
    Unhealthy,
}

/// The threshold state machine, separate from I/O so it can be tested on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTracker {
    pub health: Health,
    threshold: u32,
    last_ok: Option<bool>,
    run: u32,
}

impl HealthTracker {
    pub fn new(threshold: u32) -> Self {
        HealthTracker { health: Health::Unknown, threshold: threshold.max(1), last_ok: None, run: 0 }
    }

    /// Consecutive identical results so far (the current run).
    pub fn run(&self) -> u32 {
        self.run
    }

    /// Records one probe result; returns true when the health changed.
    pub fn record(&mut self, ok: bool) -> bool {
        if self.last_ok == Some(ok) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last_ok = Some(ok);
            self.run = 1;
        }
        let target = if ok { Health::Healthy } else { Health::Unhealthy };
        if self.health != target && self.run >= self.threshold {
            self.health = target;
            true
        } else {
            false
        }
    }
}

/// What the runner publishes per target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    pub addr: IpAddr,
    pub health: Health,
    /// Length of the current run of identical results.
    pub consecutive: u32,
    /// Probes completed since the target was added.
    pub probes: u64,
    /// Why the last probe failed; `None` after a success.
    pub last_error: Option<String>,
    #[serde(skip)]
    generation: u64,
}

type StatusMap = BTreeMap<String, TargetStatus>;

/// Where a probe goes and, optionally, the address it comes from. With bridged networking the
/// source is the target subnet's reserved `.2`, so network security groups tell probes apart
/// (the `AzureLoadBalancer` tag) from anything else the host sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTarget {
    pub addr: IpAddr,
    pub source: Option<IpAddr>,
}

impl From<IpAddr> for ProbeTarget {
    fn from(addr: IpAddr) -> Self {
        ProbeTarget { addr, source: None }
    }
}

struct TargetTask {
    addr: ProbeTarget,
    generation: u64,
    handle: JoinHandle<()>,
}

/// Probes every target on its own schedule and publishes their health.
///
/// The watch channel is notified when a target's [`Health`] changes or targets are added or
/// removed; the other fields (`probes`, `last_error`, ...) are updated silently and are visible
/// on the next `borrow()`. Dropping the runner stops all probing.
pub struct ProbeRunner {
    probe: Arc<Probe>,
    tx: Arc<watch::Sender<StatusMap>>,
    tasks: Mutex<HashMap<String, TargetTask>>,
    next_generation: AtomicU64,
}

impl ProbeRunner {
    /// A runner with no targets. Fails for invalid probes.
    pub fn new(probe: Probe) -> Result<Self, ProbeError> {
        probe.validate()?;
        Ok(ProbeRunner {
            probe: Arc::new(probe),
            tx: Arc::new(watch::Sender::new(BTreeMap::new())),
            tasks: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
        })
    }

    pub fn probe(&self) -> &Probe {
        &self.probe
    }

    /// Replaces the target set (full snapshot: id → address). Targets with the same id and
    /// address keep their state and schedule; new ones (or an id whose address changed) start
    /// `Unknown` and are probed at once; missing ones stop. Must be called within a Tokio
    /// runtime.
    pub fn set_targets<T: Into<ProbeTarget>>(&self, targets: impl IntoIterator<Item = (String, T)>) {
        let wanted: BTreeMap<String, ProbeTarget> = targets.into_iter().map(|(id, t)| (id, t.into())).collect();
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        tasks.retain(|id, t| {
            let keep = wanted.get(id) == Some(&t.addr);
            if !keep {
                t.handle.abort();
            }
            keep
        });
        let mut added = Vec::new();
        for (id, addr) in wanted {
            if !tasks.contains_key(&id) {
                added.push((id, addr, self.next_generation.fetch_add(1, Ordering::Relaxed)));
            }
        }
        self.tx.send_if_modified(|map| {
            let before = map.len();
            map.retain(|id, st| tasks.get(id).is_some_and(|t| t.generation == st.generation));
            let mut changed = map.len() != before;
            for (id, addr, generation) in &added {
                let status = TargetStatus {
                    addr: addr.addr,
                    health: Health::Unknown,
                    consecutive: 0,
                    probes: 0,
                    last_error: None,
                    generation: *generation,
                };
                map.insert(id.clone(), status);
                changed = true;
            }
            changed
        });
        for (id, addr, generation) in added {
            let handle = tokio::spawn(run_target(self.probe.clone(), id.clone(), addr, generation, self.tx.clone()));
            tasks.insert(id, TargetTask { addr, generation, handle });
        }
    }

    /// A receiver of the per-target status map.
    pub fn subscribe(&self) -> watch::Receiver<BTreeMap<String, TargetStatus>> {
        self.tx.subscribe()
    }

    /// The current status map.
    pub fn statuses(&self) -> BTreeMap<String, TargetStatus> {
        self.tx.borrow().clone()
    }
}

impl Drop for ProbeRunner {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap_or_else(PoisonError::into_inner).values() {
            t.handle.abort();
        }
    }
}

async fn run_target(
    probe: Arc<Probe>,
    id: String,
    target: ProbeTarget,
    generation: u64,
    tx: Arc<watch::Sender<StatusMap>>,
) {
    let addr = target.addr;
    let mut tracker = HealthTracker::new(probe.threshold);
    let mut schedule = Schedule::new(probe.interval, probe.boot_retry(), Instant::now());
    loop {
        sleep_until(schedule.next).await;
        let started = Instant::now();
        let result = probe_target(&probe, target).await;
        let changed = schedule.counts(started, result.is_ok()) && tracker.record(result.is_ok());
        if let Err(e) = &result {
            tracing::debug!(target_id = %id, %addr, "probe failed: {e}");
        }
        tx.send_if_modified(|map| match map.get_mut(&id) {
            Some(st) if st.generation == generation => {
                st.health = tracker.health;
                st.consecutive = tracker.run();
                st.probes += 1;
                st.last_error = result.err();
                changed
            }
            _ => false,
        });
    }
}

/// When one target is probed, and which results count toward the threshold (see the module
/// docs): a target that has never succeeded is retried every `retry` with one failure counted
/// per `interval`; once it has succeeded, every result counts and probes are `interval` apart.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Schedule {
    interval: Duration,
    retry: Duration,
    /// When the next probe starts.
    next: Instant,
    /// A failure of a target that never succeeded counts only from this instant on.
    next_counted: Instant,
    succeeded: bool,
}

impl Schedule {
    /// The first probe is due at `now`.
    fn new(interval: Duration, retry: Duration, now: Instant) -> Self {
        Schedule { interval, retry, next: now, next_counted: now, succeeded: false }
    }

    /// Takes the result of the probe that started at `started`; returns whether it counts
    /// toward the threshold, and sets the next probe's start.
    fn counts(&mut self, started: Instant, ok: bool) -> bool {
        let counts = ok || self.succeeded || started >= self.next_counted;
        if !ok && counts {
            self.next_counted = started + self.interval;
        }
        self.succeeded |= ok;
        self.next = started + if self.succeeded { self.interval } else { self.retry };
        counts
    }
}

/// Runs one probe against `ip` (the probe's port is appended). `Err` carries a short reason.
pub async fn probe_once(probe: &Probe, ip: IpAddr) -> Result<(), String> {
    probe_target(probe, ProbeTarget::from(ip)).await
}

/// Runs one probe against `target` (from its source address, if it has one).
pub async fn probe_target(probe: &Probe, target: ProbeTarget) -> Result<(), String> {
    let addr = SocketAddr::new(target.addr, probe.port);
    let from = target.source;
    let attempt = async {
        match &probe.protocol {
            ProbeProtocol::Tcp => tcp_probe(addr, from, probe.tcp_settle).await,
            ProbeProtocol::Http { path } => http_probe(addr, from, path).await,
            ProbeProtocol::Https { path } => https_probe(addr, from, path).await,
        }
    };
    match timeout(probe.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {:?}", probe.timeout)),
    }
}

/// Connects to `addr`, from `source` when given.
async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, String> {
    let Some(src) = source else {
        return TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"));
    };
    let sock = if src.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
        .map_err(|e| format!("socket: {e}"))?;
    sock.bind(SocketAddr::new(src, 0)).map_err(|e| format!("binding the probe source {src}: {e}"))?;
    sock.connect(addr).await.map_err(|e| format!("connect from {src}: {e}"))
}

async fn tcp_probe(addr: SocketAddr, source: Option<IpAddr>, settle: Duration) -> Result<(), String> {
    let mut stream = connect(addr, source).await?;
    let mut buf = [0u8; 64];
    match timeout(settle, stream.read(&mut buf)).await {
        Err(_) => Ok(()),             // still open and quiet: a real listener
        Ok(Ok(n)) if n > 0 => Ok(()), // a banner (e.g. SSH): a real listener
        Ok(Ok(_)) => Err("connection closed by peer right after connect".to_string()),
        Ok(Err(e)) => Err(format!("connection reset right after connect: {e}")),
    }
}

async fn http_probe(addr: SocketAddr, source: Option<IpAddr>, path: &str) -> Result<(), String> {
    let stream = connect(addr, source).await?;
    let _ = stream.set_nodelay(true);
    http_exchange(stream, addr, path).await
}

/// Accepts any server certificate: like Azure's HTTPS probes, herd checks that the backend
/// answers 200 over TLS, not who signed its certificate (backends usually have self-signed
/// ones). The handshake's signatures are still verified.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn https_probe(addr: SocketAddr, source: Option<IpAddr>, path: &str) -> Result<(), String> {
    let tcp = connect(addr, source).await?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let tls = tls_connector()?.connect(name, tcp).await.map_err(|e| format!("tls handshake: {e}"))?;
    http_exchange(tls, addr, path).await
}

/// Sends `GET path` on an established stream and succeeds only on status 200.
async fn http_exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    addr: SocketAddr,
    path: &str,
) -> Result<(), String> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: herd-probe/1\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("send request: {e}"))?;
    let mut buf = [0u8; 1024];
    let mut len = 0;
    let line_end = loop {
        if let Some(pos) = buf[..len].windows(2).position(|w| w == b"\r\n") {
            break pos;
        }
        if len == buf.len() {
            return Err("status line too long".to_string());
        }
        let n = stream.read(&mut buf[len..]).await.map_err(|e| format!("read response: {e}"))?;
        if n == 0 {
            return Err("connection closed before a status line".to_string());
        }
        len += n;
    };
    let status = parse_status_line(&buf[..line_end])?;
    if status == 200 {
        Ok(())
    } else {
        Err(format!("http status {status}"))
    }
}

/// Parses `HTTP/1.x NNN reason` into the status code.
fn parse_status_line(line: &[u8]) -> Result<u16, String> {
    let text = std::str::from_utf8(line).map_err(|_| "status line is not text".to_string())?;
    let mut parts = text.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(format!("malformed status line {text:?}"));
    }
    code.parse().map_err(|_| format!("malformed status line {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_needs_threshold_consecutive_results() {
        let mut t = HealthTracker::new(3);
        assert_eq!(t.health, Health::Unknown);
        // Unknown: mixed results never reach a run of 3.
        for ok in [true, true, false, false, true] {
            assert!(!t.record(ok));
        }
        assert_eq!(t.health, Health::Unknown);
        assert!(!t.record(true));
        assert!(t.record(true)); // third success in a row
        assert_eq!(t.health, Health::Healthy);
        // Two failures, a success, three failures: flips only on the last.
        for ok in [false, false, true, false, false] {
            assert!(!t.record(ok));
            assert_eq!(t.health, Health::Healthy);
        }
        assert!(t.record(false));
        assert_eq!(t.health, Health::Unhealthy);
        assert!(!t.record(false));
    }

    #[test]
    fn unknown_flips_either_way_and_threshold_one_is_immediate() {
        let mut t = HealthTracker::new(2);
        t.record(false);
        assert!(t.record(false));
        assert_eq!(t.health, Health::Unhealthy);
        let mut t = HealthTracker::new(1);
        assert!(t.record(true));
        assert!(t.record(false));
        assert_eq!(t.health, Health::Unhealthy);
    }

    #[test]
    fn a_fresh_boot_is_retried_quickly_but_fails_once_per_interval() {
        let (interval, retry) = (Duration::from_secs(1), Duration::from_millis(100));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut s = Schedule::new(interval, retry, t0);
        assert_eq!(s.next, t0, "the first probe is at once");
        // Not answering yet: retried every 100 ms; the failures at 0 and 1000 ms count, the
        // retries between them do not.
        assert!(s.counts(at(0), false));
        assert_eq!(s.next, at(100));
        assert!(!s.counts(at(100), false));
        assert!(!s.counts(at(900), false));
        assert!(s.counts(at(1000), false));
        assert_eq!(s.next, at(1100));
        // The first success counts at once, and from it on the schedule is the interval.
        assert!(s.counts(at(1100), true));
        assert_eq!(s.next, at(2100));
        assert!(s.counts(at(2100), false), "after a success every failure counts");
        assert_eq!(s.next, at(3100));
    }

    #[test]
    fn threshold_two_decides_a_fresh_boot_one_interval_after_it_answers() {
        // The app answers from 250 ms on: the probes at 0, 100, 200 ms fail (only the first
        // counts), 300 ms succeeds, 1300 ms succeeds: Healthy at 1.3 s, not after two intervals.
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(1), Duration::from_millis(100), t0);
        let mut t = HealthTracker::new(2);
        let mut healthy_at = None;
        while healthy_at.is_none() {
            let now = s.next;
            let ok = now >= t0 + Duration::from_millis(250);
            if s.counts(now, ok) && t.record(ok) && t.health == Health::Healthy {
                healthy_at = Some(now - t0);
            }
        }
        assert_eq!(healthy_at, Some(Duration::from_millis(1300)));
        assert_eq!(
            Probe { interval: Duration::from_secs(1), ..Probe::tcp(1) }.boot_retry(),
            Duration::from_millis(100)
        );
        assert_eq!(Probe { interval: Duration::from_secs(15), ..Probe::tcp(1) }.boot_retry(), Duration::from_secs(1));
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), Ok(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 500 Internal Server Error"), Ok(500));
        assert_eq!(parse_status_line(b"HTTP/1.1 204"), Ok(204));
        assert!(parse_status_line(b"SSH-2.0-OpenSSH_9").is_err());
        assert!(parse_status_line(b"HTTP/1.1 2000 OK").is_err());
    }

    #[test]
    fn validation() {
        assert!(Probe { protocol: ProbeProtocol::Https { path: "/".into() }, ..Probe::tcp(443) }.validate().is_ok());
        assert!(Probe { protocol: ProbeProtocol::Https { path: "x".into() }, ..Probe::tcp(443) }.validate().is_err());
        assert!(Probe::http(80, "health").validate().is_err());
        assert!(Probe::http(80, "/a b").validate().is_err());
        assert!(Probe::http(80, "/healthz?x=1").validate().is_ok());
        assert!(Probe { threshold: 0, ..Probe::tcp(22) }.validate().is_err());
        assert!(Probe::tcp(0).validate().is_err());
    }
}
