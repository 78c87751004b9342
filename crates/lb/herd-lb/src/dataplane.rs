//! [`LoadBalancer`]: turns full configuration snapshots into running listeners.
//!
//! Why it exists: the control plane thinks in desired state; this module diffs each snapshot
//! against what runs. Listeners are keyed by frontend address, so a rule that keeps its
//! frontend keeps its socket and every established connection; only its routing snapshot (an
//! `Arc` swapped under a short lock) changes. Backends are keyed by id within a frontend, so a
//! backend keeps its counters and its connections across snapshots.
//!
//! Draining: a backend that is marked draining, or that disappears from the snapshot (or whose
//! whole rule disappears), leaves the Maglev table at once, so it gets no new connections. Its
//! connections carry on until the backend's drain deadline (set once, when the backend stops
//! being active: `now + drain_timeout`), when the data-plane threads close them (each thread is
//! told of the deadline with an `engine::Command::Drain`, and checks it again when it comes
//! due). A backend that becomes active again before the deadline clears it and its connections
//! stay.
//!
//! Ending a drain early: a backend's `active_connections` counts a connection from its connect
//! attempt on (not only once it is established), so a backend out of rotation that shows zero
//! has nothing open and nothing being opened. When such a backend's last connection ends, the
//! data plane signals [`LoadBalancer::drained`], so the control plane can tell the reconciler
//! that the drain is over before its timeout.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::config::{Distribution, LbConfig, LbOptions, Route};
use crate::engine::{AcceptLoops, Control, Engine};
use crate::error::{BindFailure, LbError};
use crate::maglev::Maglev;
use crate::metrics::{get, BackendStats, BackendStatus, Counters, LbStats, RuleCounters, RuleKind, RuleStats};

/// The L4 load-balancer data plane: one TCP listener per frontend of the applied snapshot.
///
/// Dropping it stops the listeners; established connections run on until they end (or reach
/// their idle timeout).
pub struct LoadBalancer {
    options: LbOptions,
    engine: Engine,
    apply_lock: tokio::sync::Mutex<()>,
    frontends: Mutex<BTreeMap<SocketAddr, Frontend>>,
    /// Signalled when a backend out of rotation closes its last connection.
    drained: Arc<Notify>,
}

struct Frontend {
    state: Arc<FrontendState>,
    accepting: AcceptLoops,
}

/// Everything a listener and its connections share.
pub(crate) struct FrontendState {
    pub frontend: SocketAddr,
    pub options: LbOptions,
    pub counters: RuleCounters,
    /// The hot path takes this read lock once per connection to clone the `Arc`.
    pub snapshot: RwLock<Arc<Snapshot>>,
    /// Control path only (apply, stats).
    backends: Mutex<BTreeMap<String, Arc<BackendState>>>,
    /// The load balancer's [`LoadBalancer::drained`] signal.
    drained: Arc<Notify>,
    /// The data-plane threads, told when a backend's drain deadline is set.
    control: Control,
}

/// Routing state of one frontend between two applies.
pub(crate) struct Snapshot {
    pub name: String,
    pub kind: RuleKind,
    pub distribution: Distribution,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub max_connections: Option<u64>,
    /// Backends that take new connections, with their address and route, sorted by id; the
    /// table indexes into this.
    pub active: Vec<(Arc<BackendState>, SocketAddr, Route)>,
    /// `Some` when there are two or more active backends.
    pub table: Option<Arc<Maglev>>,
}

/// One backend of one frontend, alive while it is configured or has connections.
pub(crate) struct BackendState {
    pub id: String,
    pub counters: Counters,
    /// Deadline after which this backend's connections are closed; `None` while active.
    drain: Mutex<Option<Instant>>,
    meta: Mutex<(BackendStatus, SocketAddr)>,
    /// The load balancer's [`LoadBalancer::drained`] signal.
    drained: Arc<Notify>,
}

/// Backend of the desired state, after rule/NAT normalisation.
struct DesiredBackend {
    id: String,
    addr: SocketAddr,
    draining: bool,
    route: Route,
}

struct Desired {
    name: String,
    kind: RuleKind,
    distribution: Distribution,
    idle_timeout: Duration,
    drain_timeout: Duration,
    max_connections: Option<u64>,
    backends: Vec<DesiredBackend>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl BackendState {
    pub(crate) fn new(id: &str, addr: SocketAddr, drained: Arc<Notify>) -> Self {
        BackendState {
            id: id.to_string(),
            counters: Counters::default(),
            drain: Mutex::new(None),
            meta: Mutex::new((BackendStatus::Active, addr)),
            drained,
        }
    }

    /// Records the backend's new status; leaving `Active` starts the drain clock (once).
    /// True when it did, so the data-plane threads must be told.
    pub(crate) fn set(&self, status: BackendStatus, addr: SocketAddr, drain_deadline: Instant) -> bool {
        *lock(&self.meta) = (status, addr);
        let mut drain = lock(&self.drain);
        if status == BackendStatus::Active {
            *drain = None;
            false
        } else if drain.is_none() {
            *drain = Some(drain_deadline);
            true
        } else {
            false
        }
    }

    /// When this backend's connections are to be closed, if it is out of rotation.
    pub(crate) fn drain_deadline(&self) -> Option<Instant> {
        *lock(&self.drain)
    }

    /// Out of rotation (draining or removed) with no connection open or being opened.
    pub(crate) fn drained(&self) -> bool {
        get(&self.counters.active) == 0 && self.drain_deadline().is_some()
    }

    /// One connection (or connect attempt) more; see [`BackendActive`].
    pub(crate) fn open(self: &Arc<Self>) -> BackendActive {
        self.counters.active.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        BackendActive(self.clone())
    }

    fn retire(&self, drain_deadline: Instant) -> bool {
        let addr = lock(&self.meta).1;
        self.set(BackendStatus::Removed, addr, drain_deadline)
    }

    fn stats(&self) -> BackendStats {
        let (status, addr) = *lock(&self.meta);
        let c = &self.counters;
        BackendStats {
            id: self.id.clone(),
            addr,
            status,
            active_connections: get(&c.active),
            connections_total: get(&c.total),
            failed_connects_total: get(&c.failed_connects),
            bytes_in_total: get(&c.bytes_in),
            bytes_out_total: get(&c.bytes_out),
        }
    }
}

/// A backend's count of one connection, from its connect attempt until it closes: dropping it
/// takes the count back and, when that leaves a backend out of rotation with nothing open,
/// signals [`LoadBalancer::drained`].
pub(crate) struct BackendActive(Arc<BackendState>);

impl BackendActive {
    pub fn backend(&self) -> &Arc<BackendState> {
        &self.0
    }
}

impl Drop for BackendActive {
    fn drop(&mut self) {
        self.0.counters.active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if self.0.drained() {
            self.0.drained.notify_one();
        }
    }
}

impl FrontendState {
    fn new(
        frontend: SocketAddr,
        options: LbOptions,
        desired: Desired,
        now: Instant,
        drained: Arc<Notify>,
        control: Control,
    ) -> Self {
        let state = FrontendState {
            frontend,
            options,
            counters: RuleCounters::default(),
            snapshot: RwLock::new(Arc::new(Snapshot {
                name: desired.name.clone(),
                kind: desired.kind,
                distribution: desired.distribution,
                idle_timeout: desired.idle_timeout,
                drain_timeout: desired.drain_timeout,
                max_connections: desired.max_connections,
                active: Vec::new(),
                table: None,
            })),
            backends: Mutex::new(BTreeMap::new()),
            drained,
            control,
        };
        state.update(desired, now);
        state
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Installs a new routing snapshot; see the module doc for the draining rules.
    fn update(&self, desired: Desired, now: Instant) {
        let old = self.load();
        let deadline = now + desired.drain_timeout;
        let mut active = Vec::new();
        {
            let mut map = lock(&self.backends);
            let wanted: HashSet<&str> = desired.backends.iter().map(|b| b.id.as_str()).collect();
            map.retain(|id, st| {
                if wanted.contains(id.as_str()) {
                    return true;
                }
                if st.retire(deadline) {
                    self.control.drain(st);
                }
                get(&st.counters.active) > 0
            });
            for b in &desired.backends {
                let st = map
                    .entry(b.id.clone())
                    .or_insert_with(|| Arc::new(BackendState::new(&b.id, b.addr, self.drained.clone())));
                let status = if b.draining { BackendStatus::Draining } else { BackendStatus::Active };
                if st.set(status, b.addr, deadline) {
                    self.control.drain(st);
                }
                if !b.draining {
                    active.push((st.clone(), b.addr, b.route.clone()));
                }
            }
        }
        active.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let same_set =
            old.active.len() == active.len() && old.active.iter().zip(&active).all(|(a, b)| a.0.id == b.0.id);
        let table = if active.len() < 2 {
            None
        } else if same_set && old.table.is_some() {
            old.table.clone()
        } else {
            let ids: Vec<&str> = active.iter().map(|(b, _, _)| b.id.as_str()).collect();
            Some(Arc::new(Maglev::new(&ids)))
        };
        let snapshot = Snapshot {
            name: desired.name,
            kind: desired.kind,
            distribution: desired.distribution,
            idle_timeout: desired.idle_timeout,
            drain_timeout: desired.drain_timeout,
            max_connections: desired.max_connections,
            active,
            table,
        };
        *self.snapshot.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(snapshot);
    }

    /// The frontend leaves the configuration: every backend starts draining.
    fn retire(&self, now: Instant) {
        let deadline = now + self.load().drain_timeout;
        for st in lock(&self.backends).values() {
            if st.retire(deadline) {
                self.control.drain(st);
            }
        }
    }

    fn stats(&self) -> RuleStats {
        let snap = self.load();
        let c = &self.counters;
        RuleStats {
            name: snap.name.clone(),
            kind: snap.kind,
            frontend: self.frontend,
            active_connections: get(&c.c.active),
            connections_total: get(&c.c.total),
            rejected_limit_total: get(&c.rejected_limit),
            rejected_no_backend_total: get(&c.rejected_no_backend),
            rejected_connect_failed_total: get(&c.rejected_connect_failed),
            rejected_denied_total: get(&c.rejected_denied),
            failed_connects_total: get(&c.c.failed_connects),
            bytes_in_total: get(&c.c.bytes_in),
            bytes_out_total: get(&c.c.bytes_out),
            backends: lock(&self.backends).values().map(|b| b.stats()).collect(),
        }
    }
}

fn bind_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::AddrInUse => "address in use".to_string(),
        io::ErrorKind::AddrNotAvailable => "address not available on this host".to_string(),
        io::ErrorKind::PermissionDenied => "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)".to_string(),
        _ => e.to_string(),
    }
}

impl Default for LoadBalancer {
    fn default() -> Self {
        Self::new()
    }
}

impl LoadBalancer {
    /// A data plane with default [`LbOptions`] and nothing configured.
    pub fn new() -> Self {
        Self::with_options(LbOptions::default())
    }

    /// # Panics
    /// When the data-plane threads cannot be started (the process is out of threads or
    /// memory).
    pub fn with_options(options: LbOptions) -> Self {
        let threads = options.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let engine = Engine::start(threads).expect("starting the load balancer's data-plane threads");
        LoadBalancer {
            options,
            engine,
            apply_lock: tokio::sync::Mutex::new(()),
            frontends: Mutex::new(BTreeMap::new()),
            drained: Arc::new(Notify::new()),
        }
    }

    /// Signalled (`notify_one`) whenever a backend that is out of rotation (draining, or gone
    /// from the snapshot) closes its last connection: its drain can end before the timeout.
    /// Read [`LoadBalancer::stats`] to see which one.
    pub fn drained(&self) -> Arc<Notify> {
        self.drained.clone()
    }

    /// How many data-plane threads carry connections.
    pub fn threads(&self) -> usize {
        self.engine.threads()
    }

    pub fn options(&self) -> &LbOptions {
        &self.options
    }

    /// Makes the running data plane match `config` (a full snapshot; anything not in it is
    /// stopped). Concurrent calls are serialised.
    ///
    /// - An invalid snapshot ([`LbError::InvalidConfig`]) changes nothing.
    /// - Otherwise the apply is **per rule**: frontends that are gone are stopped first (their
    ///   connections drain), existing frontends get their new routing snapshot, new frontends
    ///   are bound. A frontend that cannot be bound is reported in [`LbError::Bind`] (e.g.
    ///   "frontend 127.64.0.1:80 of rule myHTTPRule: address in use") and its rule does not
    ///   run; every other rule is applied. Applying the same snapshot again retries the bind.
    ///   Per rule rather than all-or-nothing so one port conflict cannot freeze pool
    ///   membership (health, draining) of every other rule.
    pub async fn apply(&self, config: LbConfig) -> Result<(), LbError> {
        config.validate()?;
        let _serial = self.apply_lock.lock().await;
        let now = Instant::now();
        let default_drain = self.options.default_drain_timeout;

        let mut desired: BTreeMap<SocketAddr, Desired> = BTreeMap::new();
        for rule in config.rules {
            let backend_port = rule.backend_port;
            desired.insert(
                rule.frontend,
                Desired {
                    name: rule.name,
                    kind: RuleKind::Rule,
                    distribution: rule.distribution,
                    idle_timeout: rule.idle_timeout,
                    drain_timeout: rule.drain_timeout.unwrap_or(default_drain),
                    max_connections: rule.max_connections.map(|m| m as u64),
                    backends: rule
                        .backends
                        .into_iter()
                        .map(|b| DesiredBackend {
                            id: b.id,
                            addr: SocketAddr::new(b.addr, backend_port),
                            draining: b.draining,
                            route: b.route,
                        })
                        .collect(),
                },
            );
        }
        for nat in config.nat {
            desired.insert(
                nat.frontend,
                Desired {
                    name: nat.name,
                    kind: RuleKind::Nat,
                    distribution: Distribution::Default,
                    idle_timeout: nat.idle_timeout,
                    drain_timeout: default_drain,
                    max_connections: None,
                    backends: vec![DesiredBackend {
                        id: nat.target.to_string(),
                        addr: nat.target,
                        draining: false,
                        route: nat.route,
                    }],
                },
            );
        }

        // 1. Stop frontends that are gone (before binding, so a freed port can be reused).
        let gone: Vec<Frontend> = {
            let mut map = lock(&self.frontends);
            let keys: Vec<SocketAddr> = map.keys().filter(|k| !desired.contains_key(k)).copied().collect();
            keys.iter().filter_map(|k| map.remove(k)).collect()
        };
        for f in gone {
            f.state.retire(now);
            f.accepting.stop().await;
            tracing::info!(frontend = %f.state.frontend, "load balancer frontend stopped");
        }

        // 2. Update running frontends, bind new ones.
        let mut failures = Vec::new();
        for (addr, d) in desired {
            let running = lock(&self.frontends).get(&addr).map(|f| f.state.clone());
            if let Some(state) = running {
                state.update(d, now);
                continue;
            }
            let name = d.name.clone();
            let state = Arc::new(FrontendState::new(
                addr,
                self.options.clone(),
                d,
                now,
                self.drained.clone(),
                self.engine.control(),
            ));
            match self.engine.listen(addr, self.options.listen_backlog, &state) {
                Ok(accepting) => {
                    lock(&self.frontends).insert(addr, Frontend { state, accepting });
                    tracing::info!(frontend = %addr, rule = %name, "load balancer frontend listening");
                }
                Err(e) => {
                    let failure = BindFailure { rule: name, frontend: addr, reason: bind_reason(&e) };
                    tracing::warn!("{failure}");
                    failures.push(failure);
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(LbError::Bind(failures))
        }
    }

    /// Counters of every running rule, sorted by rule name.
    pub fn stats(&self) -> LbStats {
        let mut rules: Vec<RuleStats> = lock(&self.frontends).values().map(|f| f.state.stats()).collect();
        rules.sort_by(|a, b| a.name.cmp(&b.name));
        LbStats { rules }
    }

    /// [`LoadBalancer::stats`] in Prometheus text exposition format.
    pub fn metrics(&self) -> String {
        self.stats().to_prometheus()
    }

    /// Frontend addresses with a running listener.
    pub fn frontends(&self) -> Vec<SocketAddr> {
        lock(&self.frontends).keys().copied().collect()
    }
}
