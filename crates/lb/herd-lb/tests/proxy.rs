//! End-to-end tests of the proxy on loopback addresses only.
//!
//! Each test owns a distinct address block (frontend 127.91.T.1:18080, backends 127.92.T.x:18081,
//! client sources 127.93.T.x) so tests run in parallel without port clashes. Backends answer each
//! line `L` with `<id> L`, so a client learns which backend served it.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herd_lb::{Backend, BackendStatus, Distribution, LbConfig, LbError, LoadBalancer, NatConfig, RuleConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

const FRONT_PORT: u16 = 18080;
const BACK_PORT: u16 = 18081;
/// The bound on every wait here (times `HERD_TEST_TIME_SCALE`).
fn limit() -> Duration {
    herd_test_support::scaled(Duration::from_secs(20))
}

fn ip(t: u8, block: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, block, t, host))
}

fn frontend(t: u8) -> SocketAddr {
    SocketAddr::new(ip(t, 91, 1), FRONT_PORT)
}

fn backend_ip(t: u8, host: u8) -> IpAddr {
    ip(t, 92, host)
}

/// A line-echo server tagged with an id; aborted on drop.
struct Server {
    task: JoinHandle<()>,
    accepted: Arc<AtomicUsize>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn server(id: &str, addr: IpAddr) -> Server {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(SocketAddr::new(addr, BACK_PORT)).unwrap();
    let listener = socket.listen(1024).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let id = id.to_string();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            let id = id.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if w.write_all(format!("{id} {line}\n").as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Server { task, accepted }
}

/// A client connection speaking the line protocol.
struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    async fn open(front: SocketAddr) -> io::Result<Conn> {
        Ok(Conn { stream: BufReader::new(TcpStream::connect(front).await?) })
    }

    async fn open_from(src: IpAddr, front: SocketAddr) -> io::Result<Conn> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(src, 0))?;
        Ok(Conn { stream: BufReader::new(socket.connect(front).await?) })
    }

    /// Sends a line and returns the id of the backend that answered.
    async fn ask(&mut self, line: &str) -> io::Result<String> {
        let fut = async {
            self.stream.get_mut().write_all(format!("{line}\n").as_bytes()).await?;
            let mut reply = String::new();
            if self.stream.read_line(&mut reply).await? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed by proxy"));
            }
            let (id, echoed) = reply.trim_end().split_once(' ').expect("reply format");
            assert_eq!(echoed, line);
            Ok(id.to_string())
        };
        timeout(limit(), fut).await.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no reply"))?
    }

    /// True when the proxy closes the connection within `within` (EOF or reset).
    async fn closed_within(&mut self, within: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(timeout(within, self.stream.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
    }
}

/// One request on a fresh connection; returns the backend id.
async fn request(front: SocketAddr) -> io::Result<String> {
    Conn::open(front).await?.ask("ping").await
}

/// Polls `cond` until it holds or the deadline passes.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit();
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn rule(t: u8, backends: Vec<Backend>) -> RuleConfig {
    RuleConfig::new("web", frontend(t), BACK_PORT, backends)
}

fn config(rules: Vec<RuleConfig>) -> LbConfig {
    LbConfig { rules, nat: vec![] }
}

fn backend_stats(lb: &LoadBalancer, rule: &str, id: &str) -> Option<herd_lb::BackendStats> {
    let stats = lb.stats();
    let r = stats.rules.into_iter().find(|r| r.name == rule)?;
    r.backends.into_iter().find(|b| b.id == id)
}

#[tokio::test]
async fn default_mode_spreads_new_connections_over_all_backends() {
    let t = 1;
    let _servers =
        [server("a", backend_ip(t, 1)).await, server("b", backend_ip(t, 2)).await, server("c", backend_ip(t, 3)).await];
    let lb = LoadBalancer::new();
    let backends = ["a", "b", "c"].iter().zip(1..).map(|(id, h)| Backend::new(*id, backend_ip(t, h))).collect();
    lb.apply(config(vec![rule(t, backends)])).await.unwrap();
    let mut seen = BTreeMap::<String, usize>::new();
    for _ in 0..150 {
        *seen.entry(request(frontend(t)).await.unwrap()).or_default() += 1;
    }
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), ["a", "b", "c"], "{seen:?}");
    assert!(seen.values().all(|&n| n >= 15), "very uneven: {seen:?}");
}

#[tokio::test]
async fn source_ip_mode_sticks_a_client_ip_to_one_backend() {
    let t = 2;
    let _servers =
        [server("a", backend_ip(t, 1)).await, server("b", backend_ip(t, 2)).await, server("c", backend_ip(t, 3)).await];
    let lb = LoadBalancer::new();
    let backends = ["a", "b", "c"].iter().zip(1..).map(|(id, h)| Backend::new(*id, backend_ip(t, h))).collect();
    let mut r = rule(t, backends);
    r.distribution = Distribution::SourceIp;
    lb.apply(config(vec![r])).await.unwrap();
    let mut overall = BTreeSet::new();
    for client in 1..=10u8 {
        let mut per_client = BTreeSet::new();
        for _ in 0..6 {
            let mut conn = Conn::open_from(ip(t, 93, client), frontend(t)).await.unwrap();
            per_client.insert(conn.ask("hello").await.unwrap());
        }
        assert_eq!(per_client.len(), 1, "client 127.93.{t}.{client} hit {per_client:?}");
        overall.extend(per_client);
    }
    assert!(overall.len() >= 2, "10 client IPs all on one backend: {overall:?}");
}

#[tokio::test]
async fn removed_backend_gets_no_new_connections_but_open_one_finishes() {
    let t = 3;
    let _servers = [server("a", backend_ip(t, 1)).await, server("b", backend_ip(t, 2)).await];
    let lb = LoadBalancer::new();
    let both = vec![Backend::new("a", backend_ip(t, 1)), Backend::new("b", backend_ip(t, 2))];
    lb.apply(config(vec![rule(t, both.clone())])).await.unwrap();

    let mut open = Conn::open(frontend(t)).await.unwrap();
    let victim = open.ask("first").await.unwrap();
    let survivor: Vec<Backend> = both.into_iter().filter(|b| b.id != victim).collect();
    lb.apply(config(vec![rule(t, survivor)])).await.unwrap();

    for _ in 0..30 {
        assert_ne!(request(frontend(t)).await.unwrap(), victim);
    }
    let st = backend_stats(&lb, "web", &victim).expect("removed backend with a connection is still shown");
    assert_eq!(st.status, BackendStatus::Removed);
    assert_eq!(st.active_connections, 1);
    // The old connection still works after the swap.
    assert_eq!(open.ask("second").await.unwrap(), victim);
    assert_eq!(open.ask("third").await.unwrap(), victim);
    drop(open);
    eventually("the removed backend's connection to end", || {
        backend_stats(&lb, "web", &victim).is_none_or(|b| b.active_connections == 0)
    })
    .await;
}

#[tokio::test]
async fn draining_backend_connection_is_closed_after_drain_timeout() {
    let t = 4;
    let _servers = [server("a", backend_ip(t, 1)).await, server("b", backend_ip(t, 2)).await];
    let lb = LoadBalancer::new();
    let both = vec![Backend::new("a", backend_ip(t, 1)), Backend::new("b", backend_ip(t, 2))];
    let mut r = rule(t, both.clone());
    r.drain_timeout = Some(Duration::from_millis(400));
    lb.apply(config(vec![r.clone()])).await.unwrap();

    let mut open = Conn::open(frontend(t)).await.unwrap();
    let victim = open.ask("first").await.unwrap();
    r.backends = both.into_iter().map(|b| if b.id == victim { b.draining() } else { b }).collect();
    let drain_start = Instant::now();
    lb.apply(config(vec![r])).await.unwrap();

    assert_eq!(open.ask("still served").await.unwrap(), victim);
    for _ in 0..20 {
        assert_ne!(request(frontend(t)).await.unwrap(), victim);
    }
    assert_eq!(backend_stats(&lb, "web", &victim).unwrap().status, BackendStatus::Draining);
    assert!(open.closed_within(limit()).await, "draining connection was not closed");
    let waited = drain_start.elapsed();
    assert!(waited >= Duration::from_millis(350), "closed too early: {waited:?}");
}

#[tokio::test]
async fn dead_backend_is_skipped_without_failing_clients() {
    let t = 5;
    let _live = server("live", backend_ip(t, 1)).await;
    let lb = LoadBalancer::new();
    // Nothing listens on 127.92.5.9:18081: connects are refused.
    let backends = vec![Backend::new("live", backend_ip(t, 1)), Backend::new("dead", backend_ip(t, 9))];
    lb.apply(config(vec![rule(t, backends)])).await.unwrap();
    for i in 0..60 {
        assert_eq!(request(frontend(t)).await.unwrap_or_else(|e| panic!("request {i}: {e}")), "live");
    }
    let dead = backend_stats(&lb, "web", "dead").unwrap();
    assert!(dead.failed_connects_total > 0, "no flow hashed to the dead backend first: {dead:?}");
    assert_eq!(dead.connections_total, 0);
    let stats = lb.stats();
    assert_eq!(stats.rules[0].rejected_connect_failed_total, 0);
}

#[tokio::test]
async fn connection_limit_refuses_the_excess() {
    let t = 6;
    let _server = server("a", backend_ip(t, 1)).await;
    let lb = LoadBalancer::new();
    let mut r = rule(t, vec![Backend::new("a", backend_ip(t, 1))]);
    r.max_connections = Some(2);
    lb.apply(config(vec![r])).await.unwrap();

    let mut one = Conn::open(frontend(t)).await.unwrap();
    let mut two = Conn::open(frontend(t)).await.unwrap();
    one.ask("1").await.unwrap();
    two.ask("2").await.unwrap();
    let mut three = Conn::open(frontend(t)).await.unwrap();
    assert!(three.ask("3").await.is_err(), "third connection was served beyond the limit");
    assert_eq!(lb.stats().rules[0].rejected_limit_total, 1);

    drop(one);
    eventually("a slot to free up", || lb.stats().rules[0].active_connections == 1).await;
    let mut four = Conn::open(frontend(t)).await.unwrap();
    assert_eq!(four.ask("4").await.unwrap(), "a");
    assert_eq!(two.ask("2 again").await.unwrap(), "a");
}

#[tokio::test]
async fn idle_connection_is_closed_after_idle_timeout() {
    let t = 7;
    let _server = server("a", backend_ip(t, 1)).await;
    let lb = LoadBalancer::new();
    let mut r = rule(t, vec![Backend::new("a", backend_ip(t, 1))]);
    r.idle_timeout = Duration::from_millis(300);
    lb.apply(config(vec![r])).await.unwrap();

    let mut conn = Conn::open(frontend(t)).await.unwrap();
    // Traffic every 50 ms keeps it alive for 600 ms, twice the idle timeout (the sleep paces the
    // traffic; it synchronises nothing)...
    let mut idle_from = Instant::now();
    for i in 0..12 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        conn.ask(&format!("keepalive {i}")).await.unwrap();
        idle_from = Instant::now();
    }
    // ...and silence closes it.
    assert!(conn.closed_within(limit()).await, "idle connection stayed open");
    let waited = idle_from.elapsed();
    assert!(waited >= Duration::from_millis(280), "closed after only {waited:?}");
}

#[tokio::test]
async fn busy_frontend_gives_a_clear_error_and_other_rules_still_apply() {
    let t = 8;
    let _server = server("a", backend_ip(t, 1)).await;
    let blocker = std::net::TcpListener::bind(frontend(t)).unwrap();
    let lb = LoadBalancer::new();
    let busy = RuleConfig::new("myHTTPRule", frontend(t), BACK_PORT, vec![Backend::new("a", backend_ip(t, 1))]);
    let free_front = SocketAddr::new(ip(t, 91, 2), FRONT_PORT);
    let free = RuleConfig::new("other", free_front, BACK_PORT, vec![Backend::new("a", backend_ip(t, 1))]);
    let err = lb.apply(config(vec![busy.clone(), free.clone()])).await.unwrap_err();
    assert!(matches!(err, LbError::Bind(ref f) if f.len() == 1));
    assert_eq!(err.to_string(), format!("frontend {} of rule myHTTPRule: address in use", frontend(t)));
    assert_eq!(lb.frontends(), vec![free_front]);
    assert_eq!(request(free_front).await.unwrap(), "a");

    drop(blocker);
    lb.apply(config(vec![busy, free])).await.unwrap();
    assert_eq!(request(frontend(t)).await.unwrap(), "a");

    let dup = RuleConfig::new("dup", free_front, BACK_PORT, vec![]);
    let free2 = RuleConfig::new("other", free_front, BACK_PORT, vec![]);
    assert!(matches!(lb.apply(config(vec![dup, free2])).await, Err(LbError::InvalidConfig(_))));
}

#[tokio::test]
async fn metrics_report_sane_counters() {
    let t = 9;
    let _servers = [server("a", backend_ip(t, 1)).await, server("b", backend_ip(t, 2)).await];
    let lb = LoadBalancer::new();
    let backends = vec![Backend::new("a", backend_ip(t, 1)), Backend::new("b", backend_ip(t, 2))];
    lb.apply(config(vec![rule(t, backends)])).await.unwrap();
    let mut held = Conn::open(frontend(t)).await.unwrap();
    let held_on = held.ask("hold").await.unwrap();
    for _ in 0..20 {
        request(frontend(t)).await.unwrap();
    }
    // The 20 closed connections finish asynchronously in the proxy.
    eventually("closed connections to be counted", || lb.stats().rules[0].active_connections == 1).await;
    let stats = lb.stats();
    let r = &stats.rules[0];
    assert_eq!(r.connections_total, 21);
    let per_backend: u64 = r.backends.iter().map(|b| b.connections_total).sum();
    assert_eq!(per_backend, 21);
    // Each request sends "ping\n" (5 bytes) and gets "x ping\n" (7 bytes); the held one 5 and 7.
    assert_eq!(r.bytes_in_total, 21 * 5);
    assert_eq!(r.bytes_out_total, 21 * 7);

    let text = lb.metrics();
    assert!(text.contains("# HELP herd_lb_backend_active_connections "));
    assert!(text.contains("# TYPE herd_lb_backend_active_connections gauge"));
    assert!(text.contains("# TYPE herd_lb_rule_connections_total counter"));
    assert!(text.contains(&format!("herd_lb_backend_active_connections{{rule=\"web\",backend=\"{held_on}\"}} 1\n")));
    assert!(text.contains("herd_lb_rule_connections_total{rule=\"web\"} 21\n"));
    assert!(text.contains(&format!("herd_lb_rule_bytes_in_total{{rule=\"web\"}} {}\n", 21 * 5)));
    assert!(text.contains("herd_lb_rule_rejected_connections_total{rule=\"web\",reason=\"limit\"} 0\n"));
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<u64>().is_ok(), "bad sample line {line:?}");
    }
}

#[tokio::test]
async fn no_backends_closes_at_once_and_removed_rule_stops_listening() {
    let t = 10;
    let lb = LoadBalancer::new();
    lb.apply(config(vec![rule(t, vec![])])).await.unwrap();
    let mut conn = Conn::open(frontend(t)).await.unwrap();
    assert!(conn.closed_within(limit()).await);
    assert_eq!(lb.stats().rules[0].rejected_no_backend_total, 1);

    lb.apply(LbConfig::default()).await.unwrap();
    assert!(lb.frontends().is_empty());
    let refused = TcpStream::connect(frontend(t)).await;
    assert_eq!(refused.unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn inbound_nat_forwards_to_its_target() {
    let t = 11;
    let _a = server("vm-0", backend_ip(t, 1)).await;
    let _b = server("vm-1", backend_ip(t, 2)).await;
    let lb = LoadBalancer::new();
    let nat = |h: u8, port: u16| {
        NatConfig::new(
            format!("ssh-{h}"),
            SocketAddr::new(ip(t, 91, 1), port),
            SocketAddr::new(backend_ip(t, h), BACK_PORT),
        )
    };
    lb.apply(LbConfig { rules: vec![], nat: vec![nat(1, 50000), nat(2, 50001)] }).await.unwrap();
    assert_eq!(request(SocketAddr::new(ip(t, 91, 1), 50000)).await.unwrap(), "vm-0");
    assert_eq!(request(SocketAddr::new(ip(t, 91, 1), 50001)).await.unwrap(), "vm-1");
    let stats = lb.stats();
    assert_eq!(stats.rules.len(), 2);
    assert_eq!(stats.rules[0].kind, herd_lb::RuleKind::Nat);
}

/// 2,000 requests over 16 concurrent clients, zero failures, while the backend set is swapped
/// ten times (draining, removing and re-adding backends). Swaps are triggered by progress, so
/// they overlap the traffic by construction; the test also measures it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_with_ten_backend_swaps_has_zero_failures() {
    let t = 12;
    let servers = [server("a", backend_ip(t, 1)).await, server("b", backend_ip(t, 2)).await];
    let lb = Arc::new(LoadBalancer::new());
    let a = Backend::new("a", backend_ip(t, 1));
    let b = Backend::new("b", backend_ip(t, 2));
    let mut r = rule(t, vec![a.clone(), b.clone()]);
    r.drain_timeout = Some(Duration::from_secs(10));
    lb.apply(config(vec![r.clone()])).await.unwrap();
    let sets = [
        vec![a.clone(), b.clone().draining()],
        vec![a.clone()],
        vec![a.clone(), b.clone()],
        vec![a.clone().draining(), b.clone()],
        vec![b.clone()],
        vec![a.clone(), b.clone()],
        vec![a.clone(), b.clone().draining()],
        vec![a.clone()],
        vec![a.clone(), b.clone()],
        vec![a.clone().draining(), b.clone()],
    ];

    const TOTAL: usize = 2000;
    const WORKERS: usize = 16;
    let issued = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let run = async {
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                let (issued, done) = (issued.clone(), done.clone());
                tokio::spawn(async move {
                    let mut failures = Vec::new();
                    while issued.fetch_add(1, Ordering::Relaxed) < TOTAL {
                        if let Err(e) = request(frontend(t)).await {
                            failures.push(e.to_string());
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    failures
                })
            })
            .collect();
        let mut swapped_at = Vec::new();
        for (k, set) in sets.into_iter().enumerate() {
            let threshold = 100 + 150 * k;
            eventually("progress before the next swap", || done.load(Ordering::Relaxed) >= threshold).await;
            swapped_at.push(done.load(Ordering::Relaxed));
            let mut next = r.clone();
            next.backends = set;
            lb.apply(config(vec![next])).await.unwrap();
        }
        let mut failures = Vec::new();
        for w in workers {
            failures.extend(w.await.unwrap());
        }
        (swapped_at, failures)
    };
    let (swapped_at, failures) = timeout(Duration::from_secs(90), run).await.expect("load test exceeded 90 s");
    let elapsed = started.elapsed();
    assert!(failures.is_empty(), "{} failures, first: {:?}", failures.len(), failures.first());
    assert_eq!(done.load(Ordering::Relaxed), TOTAL);
    let overlap = swapped_at.last().unwrap() - swapped_at.first().unwrap();
    assert!(overlap >= 50, "only {overlap} requests completed between the first and last swap");
    let served: usize = servers.iter().map(|s| s.accepted.load(Ordering::Relaxed)).sum();
    assert_eq!(served, TOTAL);
    eprintln!("load: {TOTAL} requests in {elapsed:?}, {overlap} between first and last swap, swaps at {swapped_at:?}");
}

/// Half-closes pass through in both orders, and the last direction to end (which the proxy does
/// not `shutdown`, see `proxy`) still reaches its peer whole, with its end of stream.
#[tokio::test]
async fn half_closes_pass_through_whichever_side_ends_first() {
    let t = 13;
    // Host 1 answers after the client's end: it reads everything, then says how much.
    // Host 2 speaks first and ends its side at once, then reads what the client still sends.
    let (heard_tx, mut heard_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let mut tasks = Vec::new();
    for host in [1u8, 2] {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(SocketAddr::new(backend_ip(t, host), BACK_PORT)).unwrap();
        let listener = socket.listen(16).unwrap();
        let heard = heard_tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut got = Vec::new();
                if host == 1 {
                    s.read_to_end(&mut got).await.unwrap();
                    s.write_all(format!("got {}", got.len()).as_bytes()).await.unwrap();
                } else {
                    s.write_all(b"hello").await.unwrap();
                    s.shutdown().await.unwrap();
                    s.read_to_end(&mut got).await.unwrap();
                    heard.send(got).unwrap();
                }
            }
        }));
    }
    let lb = LoadBalancer::new();
    let one = |host: u8, front: u8| {
        RuleConfig::new(
            format!("r{host}"),
            SocketAddr::new(ip(t, 91, front), FRONT_PORT),
            BACK_PORT,
            vec![Backend::new("b", backend_ip(t, host))],
        )
    };
    lb.apply(config(vec![one(1, 1), one(2, 2)])).await.unwrap();

    // The client ends first: 100 KiB (several copy buffers), then its FIN.
    let body = vec![7u8; 100 * 1024];
    let mut c = TcpStream::connect(SocketAddr::new(ip(t, 91, 1), FRONT_PORT)).await.unwrap();
    c.write_all(&body).await.unwrap();
    c.shutdown().await.unwrap();
    let mut answer = String::new();
    timeout(limit(), c.read_to_string(&mut answer)).await.expect("the answer and its end of stream").unwrap();
    assert_eq!(answer, format!("got {}", body.len()));

    // The backend ends first: the client sees its FIN, then still sends, then ends too.
    let mut c = TcpStream::connect(SocketAddr::new(ip(t, 91, 2), FRONT_PORT)).await.unwrap();
    let mut greeting = Vec::new();
    timeout(limit(), c.read_to_end(&mut greeting)).await.expect("the backend's end of stream").unwrap();
    assert_eq!(greeting, b"hello");
    c.write_all(b"bye after your end").await.unwrap();
    c.shutdown().await.unwrap();
    let heard = timeout(limit(), heard_rx.recv()).await.expect("the backend reads the client's end").unwrap();
    assert_eq!(heard, b"bye after your end");
    for task in tasks {
        task.abort();
    }
}

/// A backend whose accept queue is full drops SYNs, so a connect to it hangs: the attempt ends
/// at the connect timeout and the next backend in table order serves the client.
#[tokio::test]
async fn a_hanging_backend_times_out_and_the_next_one_serves() {
    let t = 14;
    let _live = server("live", backend_ip(t, 1)).await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(backend_ip(t, 2), BACK_PORT)).unwrap();
    let full = socket.listen(0).unwrap(); // never accepts
    let mut fillers = Vec::new();
    let hung = loop {
        assert!(fillers.len() < 16, "the backlog-0 listener kept completing handshakes");
        match timeout(Duration::from_millis(300), TcpStream::connect(SocketAddr::new(backend_ip(t, 2), BACK_PORT)))
            .await
        {
            Ok(c) => fillers.push(c.unwrap()),
            Err(_) => break true,
        }
    };
    assert!(hung);
    let connect_timeout = Duration::from_millis(250);
    let lb = LoadBalancer::with_options(herd_lb::LbOptions { connect_timeout, ..herd_lb::LbOptions::default() });
    let backends = vec![Backend::new("live", backend_ip(t, 1)), Backend::new("hang", backend_ip(t, 2))];
    lb.apply(config(vec![rule(t, backends)])).await.unwrap();
    let mut slow = None;
    for i in 0..40 {
        let started = Instant::now();
        assert_eq!(request(frontend(t)).await.unwrap_or_else(|e| panic!("request {i}: {e}")), "live");
        let took = started.elapsed();
        if took >= connect_timeout {
            slow = Some(took);
        }
        if backend_stats(&lb, "web", "hang").unwrap().failed_connects_total > 0 {
            break;
        }
    }
    let hang = backend_stats(&lb, "web", "hang").unwrap();
    assert_eq!(hang.failed_connects_total, 1, "one flow hashed to the hanging backend first: {hang:?}");
    assert_eq!(hang.active_connections, 0, "the timed-out attempt is no longer counted");
    assert!(slow.is_some(), "the request that tried the hanging backend first waited for the connect timeout");
    assert_eq!(lb.stats().rules[0].rejected_connect_failed_total, 0);
    drop(full);
}

/// A backend taken out of rotation and put back before its drain deadline keeps its
/// connections past that deadline.
#[tokio::test]
async fn a_drain_cancelled_before_its_deadline_keeps_the_connection() {
    let t = 15;
    let _servers = [server("a", backend_ip(t, 1)).await, server("b", backend_ip(t, 2)).await];
    let lb = LoadBalancer::new();
    let both = vec![Backend::new("a", backend_ip(t, 1)), Backend::new("b", backend_ip(t, 2))];
    let mut r = rule(t, both.clone());
    let drain = Duration::from_millis(300);
    r.drain_timeout = Some(drain);
    lb.apply(config(vec![r.clone()])).await.unwrap();
    let mut open = Conn::open(frontend(t)).await.unwrap();
    let victim = open.ask("first").await.unwrap();
    let mut draining = r.clone();
    draining.backends = both.iter().cloned().map(|b| if b.id == victim { b.draining() } else { b }).collect();
    lb.apply(config(vec![draining])).await.unwrap();
    assert_eq!(backend_stats(&lb, "web", &victim).unwrap().status, BackendStatus::Draining);
    lb.apply(config(vec![r])).await.unwrap();
    assert_eq!(backend_stats(&lb, "web", &victim).unwrap().status, BackendStatus::Active);
    assert!(!open.closed_within(drain * 3).await, "the connection was closed at the cancelled drain's deadline");
    assert_eq!(open.ask("still here").await.unwrap(), victim);
}

/// Megabytes both ways through small copy buffers, the client writing faster than it reads: the
/// proxy holds what a slow side cannot take yet, waits for it to become writable, and loses or
/// reorders nothing.
#[tokio::test]
async fn bulk_data_both_ways_arrives_whole_through_small_buffers() {
    let t = 16;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(SocketAddr::new(backend_ip(t, 1), BACK_PORT)).unwrap();
    let listener = socket.listen(16).unwrap();
    let echo = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let (mut r, mut w) = s.into_split();
        tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let lb = LoadBalancer::with_options(herd_lb::LbOptions { buffer_size: 4096, ..herd_lb::LbOptions::default() });
    lb.apply(config(vec![rule(t, vec![Backend::new("echo", backend_ip(t, 1))])])).await.unwrap();

    let body: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = TcpStream::connect(frontend(t)).await.unwrap().into_split();
    let write = async {
        w.write_all(&body).await.unwrap();
        w.shutdown().await.unwrap();
    };
    // The reader takes small bites, so the proxy's side towards the client fills up.
    let read = async {
        let mut back = Vec::new();
        let mut bite = [0u8; 512];
        loop {
            let n = r.read(&mut bite).await.unwrap();
            if n == 0 {
                return back;
            }
            back.extend_from_slice(&bite[..n]);
        }
    };
    let ((), back) =
        timeout(limit(), async { tokio::join!(write, read) }).await.expect("the echo and its end of stream");
    assert_eq!(back.len(), body.len());
    assert!(back == body, "bytes were lost or reordered");
    timeout(limit(), echo).await.unwrap().unwrap();
    eventually("the byte counters", || {
        let s = backend_stats(&lb, "web", "echo").unwrap();
        s.bytes_in_total == body.len() as u64 && s.bytes_out_total == body.len() as u64 && s.active_connections == 0
    })
    .await;
}

/// A backend that writes the address each connection came from, then closes.
async fn peer_reporter(addr: IpAddr) -> JoinHandle<()> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(SocketAddr::new(addr, BACK_PORT)).unwrap();
    let listener = socket.listen(64).unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            let _ = stream.write_all(format!("{}\n", peer.ip()).as_bytes()).await;
        }
    })
}

/// What a fresh connection from `src` through `front` reads: the backend's line, or None when
/// the proxy closes it without one.
async fn read_from(src: IpAddr, front: SocketAddr) -> Option<String> {
    let mut conn = Conn::open_from(src, front).await.ok()?;
    let mut line = String::new();
    match timeout(limit(), conn.stream.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => Some(line.trim().to_string()),
        _ => None,
    }
}

/// A route's source is where connections to its backend come from, and its admission rules
/// (the backend NIC's inbound NSG stages) decide by the client's address and the backend port:
/// an admitted client is served, another is closed at once and counted as denied; a NAT rule
/// is guarded the same way.
#[tokio::test]
async fn a_route_connects_from_its_source_and_admits_clients_by_the_backends_rules() {
    use herd_model::nsg::{AddrSet, PortRange, Protocol, ResolvedRule};
    let t = 17;
    let _backend = peer_reporter(backend_ip(t, 1)).await;
    let cidr = |s: &str| herd_model::cidr::Cidr::parse("test", s).unwrap();
    let rule = |name: &str, allow: bool, source: AddrSet| ResolvedRule {
        name: name.into(),
        priority: 100,
        allow,
        protocol: Protocol::Tcp,
        source: vec![source],
        source_ports: vec![],
        destination: vec![AddrSet::ANY],
        destination_ports: vec![PortRange { low: BACK_PORT, high: BACK_PORT }],
    };
    // One stage: allow 127.93.17.0/28 to the backend port, deny everyone else.
    let stage = vec![
        rule("allow-clients", true, AddrSet { inside: Some(vec![cidr("127.93.17.0/28")]), except: vec![] }),
        ResolvedRule { destination_ports: vec![], ..rule("deny-all", false, AddrSet::ANY) },
    ];
    let route = herd_lb::Route { source: Some(ip(t, 94, 3)), admission: Some(Arc::new(vec![stage])) };
    let lb = LoadBalancer::new();
    let mut nat =
        NatConfig::new("nat", SocketAddr::new(ip(t, 91, 1), 50000), SocketAddr::new(backend_ip(t, 1), BACK_PORT));
    nat.route = route.clone();
    let rules = vec![RuleConfig::new(
        "web",
        frontend(t),
        BACK_PORT,
        vec![Backend::new("a", backend_ip(t, 1)).with_route(route)],
    )];
    lb.apply(LbConfig { rules, nat: vec![nat] }).await.unwrap();

    assert_eq!(read_from(ip(t, 93, 5), frontend(t)).await.as_deref(), Some("127.94.17.3"), "from the route's source");
    assert_eq!(read_from(ip(t, 93, 20), frontend(t)).await, None, "a client outside the allowed prefix is closed");
    assert_eq!(read_from(ip(t, 93, 5), SocketAddr::new(ip(t, 91, 1), 50000)).await.as_deref(), Some("127.94.17.3"));
    assert_eq!(read_from(ip(t, 93, 20), SocketAddr::new(ip(t, 91, 1), 50000)).await, None, "NAT is guarded too");
    let stats = lb.stats();
    let web = stats.rules.iter().find(|r| r.name == "web").unwrap();
    assert_eq!((web.rejected_denied_total, web.connections_total), (1, 2), "{web:?}");
    assert_eq!(web.rejected_connect_failed_total, 0);
}

#[tokio::test]
async fn a_frontend_listens_with_a_backlog_for_thousands_of_simultaneous_connects() {
    let t = 18;
    let _server = server("a", backend_ip(t, 1)).await;
    let lb = LoadBalancer::new();
    lb.apply(config(vec![rule(t, vec![Backend::new("a", backend_ip(t, 1))])])).await.unwrap();
    assert_eq!(request(frontend(t)).await.unwrap(), "a");
    // `ss -ltn` shows a listener's backlog as its Send-Q; one listener per data-plane thread.
    let filter = format!("src {} and sport = :{FRONT_PORT}", frontend(t).ip());
    let out = std::process::Command::new("ss").args(["-ltnH", &filter]).output().expect("ss (iproute2)");
    let out = String::from_utf8_lossy(&out.stdout);
    let backlogs: Vec<u32> = out.lines().filter_map(|l| l.split_whitespace().nth(2)?.parse().ok()).collect();
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap().trim().parse().unwrap();
    let expected = somaxconn.min(herd_lb::LbOptions::default().listen_backlog);
    assert!(!backlogs.is_empty() && backlogs.iter().all(|&b| b == expected), "{backlogs:?} in {out}");
    assert!(expected > 1024 || somaxconn <= 1024, "the kernel's cap {somaxconn}, herd's {expected}");
}
