//! The `Driver` trait over a real agent link: a host joined through the state layer with a
//! certificate of a real cluster CA, a real TLS listener on 127.0.0.1 that routes the agent by
//! ALPN, the real agent loop, and the simulated driver on the agent's side (the one driver that
//! needs no host resources; it fences and reports exactly as the real ones do).

use herd_agent::identity::{Identity, Membership};
use herd_agent::link::LinkState;
use herd_driver::sim::{SimConfig, SimDriver};
use herd_driver::{Driver, DriverError, Fence, Incarnation, InstanceSpec, ObservedPower, PowerTarget, Term};
use herd_host_link::remote::RemoteDriver;
use herd_host_link::HostLinks;
use herd_model::clock::{Clock, SystemClock};
use herd_model::host::{HostCapacity, JoinRequest};
use herd_model::image::ImageSource;
use herd_model::sku::SkuSize;
use herd_model::tls::ServerTls;
use herd_model::InstanceKey;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Polls `f` until it is `Some`, or panics naming `what` after `within`.
async fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let within = herd_test_support::scaled(within);
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < within, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Cluster {
    links: Arc<HostLinks>,
    sim: Arc<SimDriver>,
    stop: tokio::sync::watch::Sender<bool>,
    agent: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

/// A server side (store, CA, listener, links) and host `h2`'s agent, linked.
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
        name: "h2".into(),
        zone: "1".into(),
        fault_domain: None,
        public_key_pem: key.public_pem(),
        agent_version: "test".into(),
        capacity: HostCapacity::default(),
    };
    let (_, signed) = herd_state::hosts::join(&*store, &req, &ca, |h, k| served.sign_agent(h, k), clock.now()).unwrap();

    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let listener =
        herd_tls::TlsListener::with_agents(tcp, served.config().unwrap(), served.agent_config().unwrap().unwrap(), tx)
            .unwrap();
    // The API side of the listener is not used here; keep it accepting.
    tokio::spawn(async move {
        let mut l = listener;
        while l.accept().await.is_some() {}
    });
    let links = HostLinks::new(state, clock);
    tokio::spawn(links.clone().serve(rx));

    let identity = Identity {
        membership: Membership {
            server: format!("https://127.0.0.1:{port}"),
            cluster_id: "c1".into(),
            name: "h2".into(),
            zone: "1".into(),
            fault_domain: None,
        },
        key_pem: key.private_pem(),
        certificate_pem: signed.certificate_pem,
        ca_bundle: signed.ca_bundle,
    };
    let sim = Arc::new(SimDriver::new(SimConfig {
        boot_min: Duration::from_millis(10),
        boot_max: Duration::from_millis(20),
        ..Default::default()
    }));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (state_tx, _state_rx) = tokio::sync::watch::channel(LinkState::Connecting);
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let driver: Arc<dyn Driver> = sim.clone();
    let agent =
        tokio::spawn(
            async move { herd_agent::link::run(&identity, &agent_dir, driver, None, stop_rx, state_tx).await },
        );
    let l = links.clone();
    wait_for("host h2's agent to link", Duration::from_secs(20), || l.liveness("h2")).await;
    Cluster { links, sim, stop, agent, _dir: dir }
}

fn key(id: u64) -> InstanceKey {
    InstanceKey::parse_path(&format!("rg/web/{id}")).unwrap()
}

fn spec(id: u64) -> InstanceSpec {
    InstanceSpec::new(
        key(id),
        &format!("web{id:06}"),
        ImageSource::Directory { path: "/images/app".into() },
        SkuSize { vcpus: 1, memory_mib: 512 },
        "127.0.0.1",
    )
}

fn fence(incarnation: u64) -> Fence {
    Fence { term: Term::SINGLE_SERVER, incarnation: Incarnation(incarnation) }
}

async fn power_of(d: &RemoteDriver, id: u64) -> Option<ObservedPower> {
    d.list().await.unwrap().into_iter().find(|o| o.key == key(id)).map(|o| o.power)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_trait_runs_on_the_hosts_agent_with_fences_and_typed_errors() {
    let c = cluster().await;
    let remote = RemoteDriver::new(c.links.clone(), "h2");

    // Ensure builds the instance on the host; list there shows it; repeated, nothing changes.
    remote.ensure(&spec(1), fence(1)).await.unwrap();
    remote.ensure(&spec(1), fence(1)).await.unwrap();
    let deadline = Instant::now() + herd_test_support::scaled(Duration::from_secs(20));
    while power_of(&remote, 1).await != Some(ObservedPower::Running) {
        assert!(Instant::now() < deadline, "instance 1 never ran on the host: {:?}", power_of(&remote, 1).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.sim.fence_of(&key(1)), Some(fence(1)), "the host's driver saw the server's fence");

    // Power, stats and the console go through too.
    remote.set_power(&key(1), PowerTarget::Stopped, fence(1)).await.unwrap();
    assert_eq!(power_of(&remote, 1).await, Some(ObservedPower::Stopped));
    assert!(remote.stats(&key(1)).await.is_ok());

    // A newer placement's fence, then a stale call: refused on the host, typed on the server.
    remote.set_power(&key(1), PowerTarget::Running, fence(2)).await.unwrap();
    let err = remote.set_power(&key(1), PowerTarget::Stopped, fence(1)).await.unwrap_err();
    match &err {
        DriverError::Fenced(f) => {
            assert_eq!((f.seen, f.call), (fence(2), fence(1)), "{err}");
        }
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert!(!err.retryable());
    // An instance the host does not have: NotFound, as locally.
    assert!(matches!(remote.restart(&key(9), fence(1)).await, Err(DriverError::NotFound(k)) if k == key(9)));

    // Several calls at once, answered in any order, each to its own caller.
    let many: Vec<_> = (10..20)
        .map(|i| {
            let r = remote.clone();
            tokio::spawn(async move { r.ensure(&spec(i), fence(1)).await })
        })
        .collect();
    for m in many {
        m.await.unwrap().unwrap();
    }
    assert_eq!(remote.list().await.unwrap().len(), 11);

    // Destroy, idempotent.
    remote.destroy(&key(1), fence(2)).await.unwrap();
    remote.destroy(&key(1), fence(2)).await.unwrap();
    assert_eq!(power_of(&remote, 1).await, None);

    // A host that is not linked: a transient failure naming it.
    let other = RemoteDriver::new(c.links.clone(), "h9");
    let err = other.list().await.unwrap_err();
    assert!(err.retryable() && err.to_string().contains("host h9 is not connected"), "{err}");

    // The agent stops: its session ends, and calls fail as transient until it is back.
    c.stop.send(true).unwrap();
    c.agent.await.unwrap().unwrap();
    let l = c.links.clone();
    wait_for("h2's session to end", Duration::from_secs(20), || l.liveness("h2").is_none().then_some(())).await;
    let err = remote.list().await.unwrap_err();
    assert!(err.retryable(), "{err}");
}
