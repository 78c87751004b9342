//! A cold move's transfer through the server in isolation: a real store, a real cluster CA and
//! TLS listener, and two real agents (hosts `h1` and `h2`) each running a real process driver
//! under its own root. `HostRouter::relocate` moves a process instance from `h1` to `h2`: a
//! file written into its `work/` on `h1` is there on `h2`, the copy on `h1` is gone, and a
//! repeated relocate finds the move done. Then the transfer's guards, each over a real
//! connection with a host's own certificate: a file whose SHA-256 is not the recorded one is
//! refused by the fetching host, and a host fetching (or uploading) a transfer that is not its
//! own is refused by the server.

use herd_agent::identity::{Identity, Membership};
use herd_agent::link::LinkState;
use herd_agent::transfer::{Dialer, Mover, Stream};
use herd_agent_wire::TransferredFile;
use herd_driver::{Driver, Fence, Incarnation, InstanceSpec, ObservedPower, PowerTarget, StateFile, Term};
use herd_driver_process::ProcessDriver;
use herd_host_link::remote::RemoteDriver;
use herd_host_link::{HostLinks, HostRouter};
use herd_model::clock::{Clock, SystemClock};
use herd_model::host::{HostCapacity, JoinRequest};
use herd_model::image::ImageSource;
use herd_model::sku::SkuSize;
use herd_model::tls::ServerTls;
use herd_model::InstanceKey;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Polls `f` until it is `Some`, or panics naming `what` after `within`.
async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let within = herd_test_support::scaled(within);
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < within, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A joined host: its identity, its process driver's root, its agent.
struct Host {
    identity: Identity,
    root: PathBuf,
    stop: tokio::sync::watch::Sender<bool>,
    agent: tokio::task::JoinHandle<anyhow::Result<()>>,
}

struct Cluster {
    links: Arc<HostLinks>,
    router: HostRouter,
    hosts: Vec<Host>,
    dir: tempfile::TempDir,
}

/// A server side (store, CA, listener, links, router over a local process driver) and the
/// agents of hosts `h1` and `h2`, linked.
async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let state = herd_state::State::in_memory().unwrap();
    let served = herd_tls::ServedTls::cluster(
        herd_tls::TlsFiles::new(&dir.path().join("server"), None),
        herd_tls::server_leaf("127.0.0.1:7900".parse().unwrap(), &[]).unwrap(),
        "c1",
        clock.clone(),
    )
    .unwrap();
    let ca = served.status().unwrap().ca_fingerprint.unwrap();
    let store = state.store().clone();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let listener =
        herd_tls::TlsListener::with_agents(tcp, served.config().unwrap(), served.agent_config().unwrap().unwrap(), tx)
            .unwrap();
    tokio::spawn(async move {
        let mut l = listener;
        while l.accept().await.is_some() {}
    });
    let links = HostLinks::new(state, clock.clone());
    links.transfers().set_root(dir.path().join("server/transfers"));
    tokio::spawn(links.clone().serve(rx));
    let local = ProcessDriver::new(dir.path().join("local"), "move-local".into()).unwrap();
    let router = HostRouter::new(Arc::new(local), links.clone());

    let mut hosts = Vec::new();
    for name in ["h1", "h2"] {
        let new = herd_state::join_tokens::NewToken {
            ttl: chrono::Duration::hours(1),
            single_use: true,
            description: "",
            ca_fingerprint: &ca,
        };
        let (_, token) = herd_state::join_tokens::create(&*store, &new, clock.now()).unwrap();
        let key = herd_tls::agent::AgentKey::generate().unwrap();
        let req = JoinRequest {
            token,
            name: name.into(),
            zone: "1".into(),
            fault_domain: None,
            public_key_pem: key.public_pem(),
            agent_version: "test".into(),
            capacity: HostCapacity::default(),
        };
        let (_, signed) =
            herd_state::hosts::join(&*store, &req, &ca, |h, k| served.sign_agent(h, k), clock.now()).unwrap();
        let identity = Identity {
            membership: Membership {
                server: format!("https://127.0.0.1:{port}"),
                cluster_id: "c1".into(),
                name: name.into(),
                zone: "1".into(),
                fault_domain: None,
            },
            key_pem: key.private_pem(),
            certificate_pem: signed.certificate_pem,
            ca_bundle: signed.ca_bundle,
        };
        let root = dir.path().join(name).join("instances");
        let driver: Arc<dyn Driver> = Arc::new(
            ProcessDriver::new(root.clone(), format!("move-{name}-{}", std::process::id()))
                .unwrap()
                .with_stop_grace(Duration::from_secs(2)),
        );
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (state_tx, _state_rx) = tokio::sync::watch::channel(LinkState::Connecting);
        let agent_dir = dir.path().join(name).join("agent");
        std::fs::create_dir_all(&agent_dir).unwrap();
        let id2 = identity.clone();
        let agent =
            tokio::spawn(async move { herd_agent::link::run(&id2, &agent_dir, driver, None, stop_rx, state_tx).await });
        let l = links.clone();
        wait_for(&format!("host {name}'s agent to link"), Duration::from_secs(20), || {
            let l = l.clone();
            async move { l.liveness(name) }
        })
        .await;
        hosts.push(Host { identity, root, stop, agent });
    }
    Cluster { links, router, hosts, dir }
}

impl Cluster {
    async fn stop(self) {
        for h in self.hosts {
            h.stop.send(true).unwrap();
            h.agent.await.unwrap().unwrap();
        }
    }
}

/// Dials the server as a host, with its certificate, as its agent does.
struct AsHost {
    addr: String,
    connector: tokio_rustls::TlsConnector,
}

impl AsHost {
    fn new(identity: &Identity) -> Self {
        let config =
            herd_tls::agent::agent_client_config(&identity.ca_bundle, &identity.certificate_pem, &identity.key_pem)
                .unwrap();
        let addr = identity.membership.server.trim_start_matches("https://").to_string();
        Self { addr, connector: tokio_rustls::TlsConnector::from(Arc::new(config)) }
    }
}

#[async_trait::async_trait]
impl Dialer for AsHost {
    async fn dial(&self) -> anyhow::Result<Box<dyn Stream>> {
        let tcp = tokio::net::TcpStream::connect(&self.addr).await?;
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        Ok(Box::new(self.connector.connect(name, tcp).await?))
    }
}

/// A directory image whose init appends a boot line to `boots.txt` and sleeps.
fn image(dir: &Path) -> PathBuf {
    let image = dir.join("image");
    std::fs::create_dir_all(&image).unwrap();
    let init = image.join("init");
    std::fs::write(&init, "#!/bin/sh\necho boot >> boots.txt\nexec sleep 300\n").unwrap();
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
    image
}

fn spec(image: &Path, host: &str) -> InstanceSpec {
    let mut s = InstanceSpec::new(
        InstanceKey::parse_path("rg/web/1").unwrap(),
        "web000001",
        ImageSource::Directory { path: image.display().to_string() },
        SkuSize { vcpus: 1, memory_mib: 64 },
        "127.0.0.1",
    );
    s.host = Some(host.into());
    s
}

fn fence(incarnation: u64) -> Fence {
    Fence::new(Term::SINGLE_SERVER, Incarnation(incarnation))
}

fn work(root: &Path, key: &InstanceKey) -> PathBuf {
    herd_driver::host::instance_dir::instance_path(root, key).join("work")
}

async fn power_on(d: &RemoteDriver, key: &InstanceKey) -> Option<ObservedPower> {
    d.list().await.unwrap().into_iter().find(|o| &o.key == key).map(|o| o.power)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relocate_moves_a_process_instance_and_its_files_between_two_agents() {
    let c = cluster().await;
    let image = image(c.dir.path());
    let (h1, h2) = (RemoteDriver::new(c.links.clone(), "h1"), RemoteDriver::new(c.links.clone(), "h2"));
    let on_h1 = spec(&image, "h1");
    let key = on_h1.key.clone();
    h1.ensure(&on_h1, fence(1)).await.unwrap();
    let work1 = work(&c.hosts[0].root, &key);
    wait_for("the first boot on h1", Duration::from_secs(20), || async {
        std::fs::read_to_string(work1.join("boots.txt")).ok().filter(|s| s.lines().count() == 1)
    })
    .await;
    std::fs::create_dir_all(work1.join("data")).unwrap();
    std::fs::write(work1.join("data/db"), "written on h1").unwrap();
    // Larger than one chunk of the stream, so the bytes cross several reads and writes.
    let big: Vec<u8> = (0..(3 << 20) as u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(work1.join("data/big"), &big).unwrap();

    let moved = c.router.relocate(&spec(&image, "h2"), "h1", fence(2)).await.unwrap();
    assert!(moved.source_destroyed);
    assert!(moved.bytes > big.len() as u64, "{moved:?}");
    let work2 = work(&c.hosts[1].root, &key);
    assert_eq!(std::fs::read_to_string(work2.join("data/db")).unwrap(), "written on h1");
    assert!(std::fs::read(work2.join("data/big")).unwrap() == big, "the large file arrived changed");
    wait_for("the moved instance's boot on h2", Duration::from_secs(20), || async {
        std::fs::read_to_string(work2.join("boots.txt")).ok().filter(|s| s.lines().count() == 2)
    })
    .await;
    assert_eq!(power_on(&h2, &key).await, Some(ObservedPower::Running));
    assert_eq!(power_on(&h1, &key).await, None, "the old copy is destroyed");
    assert!(!work1.exists());
    // Nothing is left staged on the server or on either host.
    let staged = |p: PathBuf| std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
    assert_eq!(staged(c.links.transfers().root().to_path_buf()), 0);
    assert_eq!(staged(c.dir.path().join("h2/agent/transfers")), 0);
    // The old host's copy refuses the older placement's calls from the move on: gone here.
    // Repeated (a lost answer): the move is found done, nothing is copied again.
    let again = c.router.relocate(&spec(&image, "h2"), "h1", fence(2)).await.unwrap();
    assert_eq!((again.bytes, again.source_destroyed), (0, true));
    // On neither host: a permanent error that says so.
    h2.destroy(&key, fence(2)).await.unwrap();
    let e = c.router.relocate(&spec(&image, "h2"), "h1", fence(3)).await.unwrap_err();
    assert!(!e.retryable() && e.to_string().contains("nothing to move"), "{e}");
    // Stopped instances move too, and a running source is stopped first: back to h1.
    h2.ensure(&spec(&image, "h2"), fence(4)).await.unwrap();
    h2.set_power(&key, PowerTarget::Stopped, fence(4)).await.unwrap();
    let back = c.router.relocate(&spec(&image, "h1"), "h2", fence(5)).await.unwrap();
    assert!(back.source_destroyed && back.bytes > 0);
    assert_eq!(power_on(&h1, &key).await, Some(ObservedPower::Running));
    h1.destroy(&key, fence(5)).await.unwrap();
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_digest_and_another_hosts_transfer_are_refused() {
    let c = cluster().await;
    let key = InstanceKey::parse_path("rg/web/7").unwrap();
    // A transfer staged on the server from its own machine, for host h2.
    let src = c.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("os.qcow2"), b"disk bytes").unwrap();
    let id = herd_host_link::transfers::transfer_id(&key, fence(1));
    c.links.transfers().open(&id, &key, None, Some("h2"));
    let file = StateFile { name: "os.qcow2".into(), path: src.join("os.qcow2"), size: 10, mode: 0o600 };
    let stored = c.links.transfers().stage_local(&id, vec![file.clone()]).await.unwrap();
    assert_eq!(stored[0].size, 10);
    assert_eq!(stored[0].sha256.len(), 64);

    let as_h1 = Mover::new(c.dir.path().join("h1-mover"), Box::new(AsHost::new(&c.hosts[0].identity)));
    let as_h2 = Mover::new(c.dir.path().join("h2-mover"), Box::new(AsHost::new(&c.hosts[1].identity)));
    // The target fetches it, checked.
    let got = as_h2.fetch(&id, &stored).await.unwrap();
    assert_eq!(std::fs::read(got.path.join("os.qcow2")).unwrap(), b"disk bytes");
    let mode = std::fs::metadata(got.path.join("os.qcow2")).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    let staged_at = got.path.clone();
    drop(got);
    assert!(!staged_at.exists(), "the staging directory goes with the call");

    // A digest that is not the recorded one: refused, and nothing is kept.
    let wrong = vec![TransferredFile { sha256: "0".repeat(64), ..stored[0].clone() }];
    let e = as_h2.fetch(&id, &wrong).await.err().expect("a wrong digest must be refused");
    assert!(format!("{e:#}").contains("SHA-256"), "{e:#}");
    assert_eq!(std::fs::read_dir(c.dir.path().join("h2-mover")).unwrap().count(), 0);

    // Another host than the target: refused by the server.
    let e = as_h1.fetch(&id, &stored).await.err().expect("h1 must not fetch h2's transfer");
    assert!(format!("{e:#}").contains("not the move's target"), "{e:#}");
    // Nor may any host upload into it (its source is the server's own machine).
    let e = as_h1.upload(&id, &key.path(), std::slice::from_ref(&file)).await.expect_err("h1 must not upload");
    assert!(format!("{e:#}").contains("not the move's source"), "{e:#}");
    // A name that leaves the transfer's directory: refused before any byte.
    let evil = vec![TransferredFile { name: "../../etc/passwd".into(), ..stored[0].clone() }];
    let e = as_h2.fetch(&id, &evil).await.err().expect("a bad name must be refused");
    assert!(format!("{e:#}").contains("'..'"), "{e:#}");
    // A closed transfer is no one's.
    c.links.transfers().close(&id).await;
    let e = as_h2.fetch(&id, &stored).await.err().expect("a closed transfer must be refused");
    assert!(format!("{e:#}").contains("no transfer"), "{e:#}");
    assert!(!c.links.transfers().dir(&id).exists());
    c.stop().await;
}

/// Not run by default (`--ignored`): the time `relocate` takes to move a process instance with
/// one file of `HERD_MOVE_MIB` MiB (default 1024) between two agents, printed as
/// `relocate: N MiB in S s (R MiB/s)`. Run it in release through `/work/quiet.sh`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_relocate_throughput() {
    let mib: usize = std::env::var("HERD_MOVE_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let c = cluster().await;
    let image = image(c.dir.path());
    let h1 = RemoteDriver::new(c.links.clone(), "h1");
    let on_h1 = spec(&image, "h1");
    h1.ensure(&on_h1, fence(1)).await.unwrap();
    h1.set_power(&on_h1.key, PowerTarget::Stopped, fence(1)).await.unwrap();
    let work1 = work(&c.hosts[0].root, &on_h1.key);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(work1.join("big")).unwrap();
        let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
        for _ in 0..mib {
            f.write_all(&block).unwrap();
        }
        f.sync_all().unwrap();
    }
    let started = Instant::now();
    let moved = c.router.relocate(&spec(&image, "h2"), "h1", fence(2)).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    let moved_mib = moved.bytes as f64 / (1 << 20) as f64;
    println!("relocate: {moved_mib:.0} MiB in {secs:.2} s ({:.0} MiB/s)", moved_mib / secs);
    assert!(moved.source_destroyed);
    RemoteDriver::new(c.links.clone(), "h2").destroy(&on_h1.key, fence(2)).await.unwrap();
    c.stop().await;
}
