//! Health probe tests against real loopback listeners (127.95.T.x), using real time with short
//! intervals; waits poll the published status with a deadline.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herd_lb::probe::probe_once;
use herd_lb::{Health, Probe, ProbeRunner, TargetStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const PORT: u16 = 18090;
/// The bound on every wait here (times `HERD_TEST_TIME_SCALE`).
fn limit() -> Duration {
    herd_test_support::scaled(Duration::from_secs(20))
}

fn ip(t: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 95, t, host))
}

fn listen(addr: IpAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(SocketAddr::new(addr, PORT)).unwrap();
    socket.listen(128).unwrap()
}

struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An HTTP server answering every request with the status in `status`; status 0 means
/// "alternate 200 and 500 per request". Counts responses by status.
fn http_server(addr: IpAddr, status: Arc<AtomicU16>, served: Arc<[AtomicUsize; 2]>) -> Task {
    let listener = listen(addr);
    Task(tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok((mut stream, _)) = listener.accept().await {
            n += 1;
            let code = match status.load(Ordering::SeqCst) {
                0 if n % 2 == 1 => 200,
                0 => 500,
                c => c,
            };
            let served = served.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 512];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => req.extend_from_slice(&buf[..k]),
                    }
                }
                assert!(req.starts_with(b"GET /healthz HTTP/1.1\r\n"), "{}", String::from_utf8_lossy(&req));
                let reply = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = stream.write_all(reply.as_bytes()).await;
                served[usize::from(code != 200)].fetch_add(1, Ordering::SeqCst);
            });
        }
    }))
}

/// Accepts and keeps connections open until the peer closes (a real service).
fn holding_server(addr: IpAddr) -> Task {
    let listener = listen(addr);
    Task(tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    }))
}

/// Accepts and closes at once (what QEMU user networking does with no guest listener).
fn slamming_server(addr: IpAddr) -> Task {
    let listener = listen(addr);
    Task(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    }))
}

/// A runner of `probe` already watching `targets`.
fn runner<const N: usize>(probe: Probe, targets: [(&str, IpAddr); N]) -> ProbeRunner {
    let runner = ProbeRunner::new(probe).unwrap();
    runner.set_targets(targets.map(|(id, addr)| (id.to_string(), addr)));
    runner
}

fn fast(mut p: Probe, threshold: u32) -> Probe {
    p.interval = Duration::from_millis(40);
    p.timeout = Duration::from_secs(2);
    p.threshold = threshold;
    p
}

/// Waits until the status map satisfies `cond`; returns that map.
async fn wait_for(
    runner: &ProbeRunner,
    what: &str,
    cond: impl Fn(&BTreeMap<String, TargetStatus>) -> bool,
) -> BTreeMap<String, TargetStatus> {
    let mut rx = runner.subscribe();
    let deadline = Instant::now() + limit();
    loop {
        {
            let map = rx.borrow_and_update();
            if cond(&map) {
                return map.clone();
            }
        }
        // Health changes notify; counters (probes, consecutive) change silently, so also re-check
        // every few milliseconds.
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {:?}", runner.statuses());
        let _ = tokio::time::timeout(Duration::from_millis(10), rx.changed()).await;
    }
}

fn health(map: &BTreeMap<String, TargetStatus>, id: &str) -> Option<Health> {
    map.get(id).map(|s| s.health)
}

#[tokio::test]
async fn http_200_is_healthy_500_unhealthy_after_threshold_results() {
    let t = 1;
    let status = Arc::new(AtomicU16::new(200));
    let served = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let _server = http_server(ip(t, 1), status.clone(), served.clone());
    let runner = runner(fast(Probe::http(PORT, "/healthz"), 3), [("vm-1", ip(t, 1))]);
    assert_eq!(runner.statuses()["vm-1"].health, Health::Unknown);

    let map = wait_for(&runner, "healthy", |m| health(m, "vm-1") == Some(Health::Healthy)).await;
    let st = &map["vm-1"];
    assert!(st.probes >= 3 && st.consecutive >= 3, "flipped before 3 successes: {st:?}");
    assert!(served[0].load(Ordering::SeqCst) >= 3);

    status.store(500, Ordering::SeqCst);
    let map = wait_for(&runner, "unhealthy", |m| health(m, "vm-1") == Some(Health::Unhealthy)).await;
    let st = &map["vm-1"];
    assert!(st.consecutive >= 3, "flipped before 3 failures: {st:?}");
    assert!(served[1].load(Ordering::SeqCst) >= 3);
    assert_eq!(st.last_error.as_deref(), Some("http status 500"));

    status.store(200, Ordering::SeqCst);
    wait_for(&runner, "healthy again", |m| health(m, "vm-1") == Some(Health::Healthy)).await;
}

#[tokio::test]
async fn alternating_results_never_reach_the_threshold() {
    let t = 2;
    let served = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let _server = http_server(ip(t, 1), Arc::new(AtomicU16::new(0)), served);
    let runner = runner(fast(Probe::http(PORT, "/healthz"), 2), [("vm-1", ip(t, 1))]);
    let map = wait_for(&runner, "8 probes", |m| m["vm-1"].probes >= 8).await;
    assert_eq!(map["vm-1"].health, Health::Unknown, "{map:?}");
    assert_eq!(map["vm-1"].consecutive, 1);
}

#[tokio::test]
async fn tcp_accept_then_close_is_unhealthy_and_open_listener_is_healthy() {
    let t = 3;
    let _slam = slamming_server(ip(t, 1));
    let _hold = holding_server(ip(t, 2));
    let runner = runner(fast(Probe::tcp(PORT), 2), [("slam", ip(t, 1)), ("hold", ip(t, 2)), ("closed", ip(t, 3))]);
    let map = wait_for(&runner, "all three decided", |m| m.values().all(|s| s.health != Health::Unknown)).await;
    assert_eq!(map["hold"].health, Health::Healthy, "{map:?}");
    assert_eq!(map["slam"].health, Health::Unhealthy, "{map:?}");
    assert_eq!(map["closed"].health, Health::Unhealthy, "{map:?}");
    let slam_err = map["slam"].last_error.as_deref().unwrap_or_default();
    assert!(slam_err.contains("right after connect"), "{slam_err}");
    let closed_err = map["closed"].last_error.as_deref().unwrap_or_default();
    assert!(closed_err.contains("connect"), "{closed_err}");
}

#[tokio::test]
async fn probe_once_reports_reasons() {
    let t = 4;
    let _hold = holding_server(ip(t, 1));
    let tcp = fast(Probe::tcp(PORT), 1);
    assert_eq!(probe_once(&tcp, ip(t, 1)).await, Ok(()));
    let err = probe_once(&tcp, ip(t, 2)).await.unwrap_err();
    assert!(err.starts_with("connect:"), "{err}");
    // An Http probe against a server that never answers times out.
    let mut http = fast(Probe::http(PORT, "/healthz"), 1);
    http.timeout = Duration::from_millis(300);
    assert_eq!(probe_once(&http, ip(t, 1)).await.unwrap_err(), "timed out after 300ms");
}

#[tokio::test]
async fn replacing_targets_keeps_the_state_of_unchanged_ones() {
    let t = 5;
    let _hold = holding_server(ip(t, 1));
    let _hold2 = holding_server(ip(t, 4));
    let runner = runner(fast(Probe::tcp(PORT), 2), [("a", ip(t, 1)), ("b", ip(t, 2)), ("moved", ip(t, 3))]);
    let before = wait_for(&runner, "a healthy, b and moved unhealthy", |m| {
        health(m, "a") == Some(Health::Healthy)
            && health(m, "b") == Some(Health::Unhealthy)
            && health(m, "moved") == Some(Health::Unhealthy)
    })
    .await;

    // New snapshot: a unchanged, b gone, moved has a new address, c is new.
    runner.set_targets([("a".to_string(), ip(t, 1)), ("moved".to_string(), ip(t, 4)), ("c".to_string(), ip(t, 1))]);
    let now = runner.statuses();
    assert_eq!(now.keys().collect::<Vec<_>>(), ["a", "c", "moved"]);
    assert_eq!(now["a"].health, Health::Healthy);
    assert!(now["a"].probes >= before["a"].probes, "a's history was reset");
    assert_eq!(now["moved"].health, Health::Unknown);
    assert_eq!(now["moved"].addr, ip(t, 4));
    assert_eq!(now["c"].health, Health::Unknown);

    wait_for(&runner, "moved and c healthy", |m| {
        health(m, "moved") == Some(Health::Healthy) && health(m, "c") == Some(Health::Healthy)
    })
    .await;
    runner.set_targets(Vec::<(String, std::net::IpAddr)>::new());
    assert!(runner.statuses().is_empty());
}

/// A TLS server with a self-signed certificate (made with the `openssl` CLI) that answers
/// `/ok` with 200 and anything else with 503.
fn tls_server(addr: IpAddr, dir: &std::path::Path) -> Task {
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=backend"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl")
        .status
        .success();
    assert!(ok, "openssl made a certificate");
    let certs = vec![CertificateDer::from_pem_file(&cert).unwrap()];
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = listen(addr);
    Task(tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut buf = vec![0u8; 2048];
                let n = tls.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let status = if req.starts_with("GET /ok ") { "200 OK" } else { "503 Unavailable" };
                let _ = tls
                    .write_all(
                        format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    }))
}

#[tokio::test]
async fn https_probe_speaks_tls_and_needs_200() {
    let dir = tempfile::tempdir().unwrap();
    let addr = ip(31, 1);
    let _server = tls_server(addr, dir.path());
    let ok = Probe { protocol: herd_lb::ProbeProtocol::Https { path: "/ok".into() }, ..Probe::tcp(PORT) };
    assert_eq!(probe_once(&ok, addr).await, Ok(()), "a self-signed backend answering 200 is healthy");
    let bad = Probe { protocol: herd_lb::ProbeProtocol::Https { path: "/other".into() }, ..Probe::tcp(PORT) };
    let err = probe_once(&bad, addr).await.unwrap_err();
    assert!(err.contains("503"), "{err}");
    let plain = Probe::http(PORT, "/ok");
    assert!(probe_once(&plain, addr).await.is_err(), "plain HTTP to a TLS port is not healthy");
}
