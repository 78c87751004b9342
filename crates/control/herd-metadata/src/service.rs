//! One listener per instance: which ones exist follows the store.

use crate::http::{self, InstanceCtx};
use herd_model::clock::Clock;
use herd_model::instance::InstanceState;
use herd_model::InstanceKey;
use herd_state::{Records, StateError, Store};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

/// How often the service re-reads the store at the latest (its controller's resync), unless
/// told otherwise.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(500);

/// The metadata listener of one instance: its address, for `addr`'s port on a reach address.
/// `None` when the reach address is not an IP address (or is empty).
pub fn addr_for(reach_address: &str, port: u16) -> Option<SocketAddr> {
    let ip: IpAddr = reach_address.trim().parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

/// What every listener's handlers share. Listener tasks hold this, never the service itself,
/// so dropping the service closes every listener (no reference cycle).
pub(crate) struct Shared {
    pub store: herd_state::State,
    pub clock: Arc<dyn Clock>,
    pub wake: Arc<Notify>,
    /// `DocumentIncarnation` per instance store key: the digest of the events last served and
    /// the number served with them.
    incarnations: Mutex<HashMap<String, Incarnation>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("clock", &self.clock).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
struct Incarnation {
    digest: u64,
    value: u64,
}

impl Shared {
    /// The `DocumentIncarnation` for an instance whose served events have `digest`, read from a
    /// record at store revision `revision`.
    ///
    /// It is the store revision at which this service first saw the current event list: store
    /// revisions only grow, and any change to the events is a write to the record, so the
    /// number grows whenever the list changes, also across server restarts (where it restarts
    /// from the record's current revision, which is never below what was served before; at
    /// worst a restart shows the same events under a higher number, which tells a guest only
    /// to look again). Nothing is stored for it.
    pub fn incarnation(&self, key: &str, digest: u64, revision: u64) -> u64 {
        let mut m = self.incarnations.lock().unwrap_or_else(|e| e.into_inner());
        match m.get_mut(key) {
            Some(i) if i.digest == digest => i.value,
            Some(i) => {
                *i = Incarnation { digest, value: revision.max(i.value + 1) };
                i.value
            }
            None => {
                let value = revision.max(1);
                m.insert(key.to_string(), Incarnation { digest, value });
                value
            }
        }
    }
}

/// Where one instance's listener lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    /// On the instance's reach address (host-local networking: a loopback address of its own).
    Reach(SocketAddr),
    /// Behind the metadata address of its vnet (bridged networking): a port of its own on the
    /// host, where the host's nftables redirect the instance's requests to 169.254.169.254:80
    /// (and only those); the identity is the instance's private address, which its bridge
    /// port's requests are tagged with (`herd_hostnet::metadata`).
    Vnet { identity: Ipv4Addr },
}

impl Endpoint {
    /// Whether the running listener `l` is this endpoint.
    fn is(&self, l: &Listener) -> bool {
        match self {
            Endpoint::Reach(a) => l.identity.is_none() && l.addr == *a,
            Endpoint::Vnet { identity } => l.identity == Some(*identity),
        }
    }

    /// What to bind: the vnet's listeners take any free port (on every address: the redirect
    /// delivers to the address of the bridge the request came in on, and the host's nftables
    /// drop anything else sent to these ports from outside the host).
    fn bind_addr(&self) -> SocketAddr {
        match self {
            Endpoint::Reach(a) => *a,
            Endpoint::Vnet { .. } => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
        }
    }

    fn identity(&self) -> Option<Ipv4Addr> {
        match self {
            Endpoint::Reach(_) => None,
            Endpoint::Vnet { identity } => Some(*identity),
        }
    }
}

/// A running listener. Dropping it stops accepting at once; open connections finish their
/// request and close.
struct Listener {
    addr: SocketAddr,
    /// For a listener on the vnet's metadata address: the instance's private address.
    identity: Option<Ipv4Addr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Listener {
    /// Stops the listener and waits until its socket is closed.
    async fn close(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

#[derive(Default)]
struct State {
    /// By instance store key.
    listeners: HashMap<String, Listener>,
    /// Instances whose listener could not be bound, and what was tried: warned about once
    /// (again only if the address changes); retried on every sync.
    failed: HashMap<String, String>,
}

/// What [`MetadataService::sync`] wants: store key → (instance, endpoint, or the reach address
/// that is not an IP address).
type Wanted = HashMap<String, (InstanceKey, Result<Endpoint, String>)>;

/// The fields of an instance record that decide its listener.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Slim {
    #[serde(default)]
    reach_address: String,
    /// Set with a subnet; equal to the reach address with bridged networking, where the
    /// address is the instance's own and not one this host can listen on.
    #[serde(default)]
    private_ip: Option<String>,
    state: InstanceState,
}

impl Slim {
    /// The instance's endpoint for listeners on `port`: none when Deallocated or without a
    /// reach address; at the vnet's metadata address when bridged (its reach address is its
    /// own private address, where no listener of this host can live); else on its reach
    /// address, or the reach address that is not an IP address.
    fn endpoint(&self, port: u16) -> Option<Result<Endpoint, String>> {
        let reach = self.reach_address.trim();
        if self.state == InstanceState::Deallocated || reach.is_empty() {
            return None;
        }
        if self.private_ip.as_deref().map(str::trim) == Some(reach) {
            return Some(reach.parse().map(|identity| Endpoint::Vnet { identity }).map_err(|_| reach.to_string()));
        }
        Some(addr_for(reach, port).map(Endpoint::Reach).ok_or_else(|| reach.to_string()))
    }
}

/// herd's instance metadata service. See the crate docs.
#[derive(Clone)]
pub struct MetadataService {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    port: u16,
    interval: Duration,
    state: tokio::sync::Mutex<State>,
    /// Told whenever a listener opens or closes (see [`MetadataService::changes`]).
    changes: Arc<Notify>,
}

impl std::fmt::Debug for MetadataService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataService").field("port", &self.inner.port).finish_non_exhaustive()
    }
}

impl MetadataService {
    /// A service that serves each instance on `(reach address, port)`. `wake` is the
    /// reconciler's: an acknowledged event wakes it. Nothing listens until [`Self::sync`].
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, wake: Arc<Notify>, port: u16) -> Self {
        Self::with_interval(store, clock, wake, port, DEFAULT_SYNC_INTERVAL)
    }

    /// As [`Self::new`], with the interval at which it syncs at the latest.
    pub fn with_interval(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        wake: Arc<Notify>,
        port: u16,
        interval: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared { store: store.into(), clock, wake, incarnations: Mutex::new(HashMap::new()) }),
                port,
                interval,
                state: tokio::sync::Mutex::new(State::default()),
                changes: Arc::new(Notify::new()),
            }),
        }
    }

    /// The port every listener uses.
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// The metadata endpoint of an instance on `reach_address` (what its `InstanceSpec` gets).
    pub fn addr_for(&self, reach_address: &str) -> Option<SocketAddr> {
        addr_for(reach_address, self.inner.port)
    }

    /// How often it syncs at the latest (the controller runtime's resync for it).
    pub fn interval(&self) -> Duration {
        self.inner.interval
    }

    /// Makes the listeners match the store: one for every instance record that has a reach
    /// address and is not Deallocated; records that are gone (or deallocated, or moved to
    /// another address) lose theirs, and their sockets are closed when this returns. A bind
    /// failure is logged once per instance and retried on the next sync; a store failure
    /// leaves the listeners as they are.
    pub async fn sync(&self) {
        let port = self.inner.port;
        let wanted = match self.inner.shared.store.run(move |s| wanted(s, port)).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "metadata endpoint: cannot read the instances; listeners unchanged");
                return;
            }
        };
        let mut st = self.inner.state.lock().await;
        let stale: Vec<String> = st
            .listeners
            .iter()
            .filter(|(k, l)| !wanted.get(*k).and_then(|(_, e)| e.as_ref().ok()).is_some_and(|e| e.is(l)))
            .map(|(k, _)| k.clone())
            .collect();
        let mut changed = !stale.is_empty();
        for k in stale {
            if let Some(l) = st.listeners.remove(&k) {
                tracing::debug!(instance = %k, addr = %l.addr, "metadata endpoint closed");
                l.close().await;
            }
        }
        for k in st.failed.keys().filter(|k| !wanted.contains_key(*k)).cloned().collect::<Vec<_>>() {
            st.failed.remove(&k);
        }
        self.inner.shared.incarnations.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| wanted.contains_key(k));
        for (k, (instance, endpoint)) in wanted {
            if st.listeners.contains_key(&k) {
                continue;
            }
            let result = match endpoint {
                Ok(e) => self.bind(&k, instance, e).await.map_err(|err| (e.bind_addr().to_string(), err.to_string())),
                Err(reach) => Err((reach.clone(), format!("reach address '{reach}' is not an IP address"))),
            };
            match result {
                Ok(l) => {
                    tracing::debug!(instance = %k, addr = %l.addr, "metadata endpoint listening");
                    st.failed.remove(&k);
                    st.listeners.insert(k, l);
                    changed = true;
                }
                Err((tried, error)) => {
                    if st.failed.get(&k) != Some(&tried) {
                        tracing::warn!(instance = %k, addr = %tried, %error, "metadata endpoint: cannot listen for this instance; it gets no scheduled events or identity until this is fixed (retrying)");
                        st.failed.insert(k, tried);
                    }
                }
            }
        }
        if changed {
            self.inner.changes.notify_one();
        }
    }

    /// Told (`notify_one`) whenever a sync opened or closed a listener: what routes requests
    /// to the vnet's listeners ([`Self::vnet_listeners`]) waits on it.
    pub fn changes(&self) -> Arc<Notify> {
        self.inner.changes.clone()
    }

    /// The listeners at the vnet's metadata address: (the instance's private address, the
    /// listener's port), sorted.
    pub async fn vnet_listeners(&self) -> Vec<(Ipv4Addr, u16)> {
        let st = self.inner.state.lock().await;
        let mut out: Vec<(Ipv4Addr, u16)> =
            st.listeners.values().filter_map(|l| Some((l.identity?, l.addr.port()))).collect();
        out.sort();
        out
    }

    /// The listening address of instance `key`'s endpoint, if it has one now (one lookup: what
    /// a joined host's relayed connection is connected to).
    pub async fn endpoint_of(&self, key: &InstanceKey) -> Option<SocketAddr> {
        let store_key = herd_state::keys::InstanceRecordKey(key.clone()).to_string();
        self.inner.state.lock().await.listeners.get(&store_key).map(|l| l.addr)
    }

    /// Every listening endpoint: instance key (`group/set/id`) → address.
    pub async fn listening(&self) -> BTreeMap<String, SocketAddr> {
        let st = self.inner.state.lock().await;
        st.listeners
            .iter()
            .map(|(k, l)| (InstanceKey::parse_path(k).map_or_else(|| k.clone(), |i| i.path()), l.addr))
            .collect()
    }

    /// Closes every listener (a later [`Self::sync`] opens them again).
    pub async fn close_all(&self) {
        let mut st = self.inner.state.lock().await;
        for (_, l) in st.listeners.drain() {
            l.close().await;
        }
        st.failed.clear();
        self.inner.changes.notify_one();
    }

    async fn bind(&self, key: &str, instance: InstanceKey, endpoint: Endpoint) -> std::io::Result<Listener> {
        let listener = tokio::net::TcpListener::bind(endpoint.bind_addr()).await?;
        let addr = listener.local_addr()?;
        let ctx = Arc::new(InstanceCtx { shared: self.inner.shared.clone(), key: key.to_string(), instance });
        let app = http::router(ctx);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let signal = async move {
                let _ = stopped.await;
            };
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(signal).await {
                tracing::warn!(%addr, error = %e, "metadata endpoint stopped");
            }
        });
        Ok(Listener { addr, identity: endpoint.identity(), stop: Some(stop), task: Some(task) })
    }
}

/// Store key → (instance, listen address or the unparseable reach address), for endpoints on
/// `port`.
fn wanted(store: &dyn Store, port: u16) -> Result<Wanted, StateError> {
    let mut out = HashMap::new();
    for obj in store.instance_views::<Slim>()? {
        let Some(instance) = InstanceKey::parse_path(&obj.key) else { continue };
        if let Some(endpoint) = obj.value.endpoint(port) {
            out.insert(obj.key, (instance, endpoint));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(addr_for("127.128.0.5", 16925), Some("127.128.0.5:16925".parse().unwrap()));
        assert_eq!(addr_for(" 10.0.0.4 ", 80), Some("10.0.0.4:80".parse().unwrap()));
        assert_eq!(addr_for("::1", 80), Some("[::1]:80".parse().unwrap()));
        assert_eq!(addr_for("", 80), None);
        assert_eq!(addr_for("web-3", 80), None);
    }

    #[test]
    fn bridged_instances_listen_on_the_vnet_and_deallocated_ones_nowhere() {
        let ep = |v: serde_json::Value| serde_json::from_value::<Slim>(v).unwrap().endpoint(80);
        let reach = |a: &str| Some(Ok(Endpoint::Reach(a.parse().unwrap())));
        assert_eq!(ep(serde_json::json!({"reachAddress": "127.128.0.5", "state": "Running"})), reach("127.128.0.5:80"));
        assert_eq!(
            ep(serde_json::json!({"reachAddress": "127.128.0.5", "privateIp": "10.0.0.4", "state": "Running"})),
            reach("127.128.0.5:80"),
            "host-local with a subnet: still the reach address"
        );
        assert_eq!(
            ep(serde_json::json!({"reachAddress": "10.0.0.4", "privateIp": "10.0.0.4", "state": "Running"})),
            Some(Ok(Endpoint::Vnet { identity: Ipv4Addr::new(10, 0, 0, 4) }))
        );
        assert_eq!(ep(serde_json::json!({"reachAddress": "127.128.0.5", "state": "Deallocated"})), None);
        assert_eq!(ep(serde_json::json!({"reachAddress": "", "state": "Running"})), None);
        assert_eq!(ep(serde_json::json!({"reachAddress": "web-3", "state": "Running"})), Some(Err("web-3".into())));
    }

    #[test]
    fn incarnation_grows_with_each_change() {
        let s = Shared {
            store: herd_state::State::in_memory().unwrap(),
            clock: Arc::new(herd_model::clock::SystemClock),
            wake: Arc::new(Notify::new()),
            incarnations: Mutex::new(HashMap::new()),
        };
        assert_eq!(s.incarnation("k", 1, 0), 1, "starts at 1 at least");
        assert_eq!(s.incarnation("k", 1, 9), 1, "same events, same number, whatever else changed");
        assert_eq!(s.incarnation("k", 2, 9), 9, "the revision of the change");
        assert_eq!(s.incarnation("k", 3, 9), 10, "always grows, even if the revision did not");
        assert_eq!(s.incarnation("other", 3, 4), 4);
    }

    /// The listener sync reads the store on the blocking pool: on a current-thread runtime
    /// (this thread is its one async worker) no store call lands here.
    #[tokio::test(flavor = "current_thread")]
    async fn sync_reads_the_store_off_the_async_worker() {
        let store = Arc::new(herd_state::call_threads::CallThreads::in_memory().unwrap());
        let svc = MetadataService::new(store.clone(), Arc::new(herd_model::clock::SystemClock), Arc::default(), 0);
        let me = std::thread::current().id();
        svc.sync().await;
        svc.sync().await;
        assert_eq!(store.calls(), 2, "each sync lists the instances once");
        assert_eq!(store.calls_on(me), 0, "a sync called the store on the async worker");
        assert!(svc.listening().await.is_empty());
    }
}
