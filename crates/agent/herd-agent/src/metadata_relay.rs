//! This host's side of its instances' metadata: a listener where each instance looks for its
//! endpoint (`InstanceSpec::metadata_endpoint`, on the instance's reach address), whose every
//! connection is relayed to the server on a connection of its own (`herd_host_link::relay`).
//!
//! Why here and why a relay: the endpoint must be reachable from the instance, on its own
//! host, but what it serves is the server's (scheduled events, identity; see `herd_metadata`).
//! The server checks that the instance is placed on this host before it connects the bytes.
//!
//! Which listeners exist is kept in `<data-dir>/metadata-endpoints.json` (instance key →
//! address), written on every change, so a restarted agent listens again for the instances it
//! adopts (the server sends no new Ensure for an instance that is running):
//!
//! ```text
//!   Ensure/Reimage/Resize with an endpoint ──▶ listening (recorded)
//!   Destroy ──▶ closed (forgotten)
//!   agent start ──▶ listening again for every recorded instance the driver still lists
//! ```
//!
//! A bridged instance asks at 169.254.169.254 on its vnet: its listener is on its bridge's
//! gateway, at a port the kernel picks (recorded, so a restart binds the same one), and this
//! host's metadata table (`herd_hostnet::metadata`) sends the instance's requests there, told
//! apart by the bridge port they came in on.

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};

/// A connection to the server carrying one relayed metadata connection of instance `key`.
#[async_trait]
pub trait Upstream: Send + Sync {
    async fn open(&self, key: &str) -> Result<Box<dyn Duplex>, String>;
}

/// A bidirectional byte stream.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

struct Listening {
    addr: SocketAddr,
    /// A bridged instance's private address (its identity in the metadata table).
    bridged: Option<Ipv4Addr>,
    task: tokio::task::JoinHandle<()>,
}

/// One recorded listener: its address, and a bridged instance's private address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum Recorded {
    Plain(SocketAddr),
    Bridged { addr: SocketAddr, instance: Ipv4Addr },
}

/// The relays of this host's instances.
pub struct Relays {
    file: PathBuf,
    upstream: Arc<dyn Upstream>,
    open: Mutex<BTreeMap<String, Listening>>,
    /// This host's network, whose metadata table sends bridged instances to their listeners.
    net: Option<Arc<herd_hostnet::HostNet>>,
}

impl Relays {
    pub fn new(data_dir: &std::path::Path, upstream: Arc<dyn Upstream>) -> Arc<Self> {
        Self::with_network(data_dir, upstream, None)
    }

    /// Relays whose bridged instances' requests `net`'s metadata table routes.
    pub fn with_network(
        data_dir: &std::path::Path,
        upstream: Arc<dyn Upstream>,
        net: Option<Arc<herd_hostnet::HostNet>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            file: data_dir.join("metadata-endpoints.json"),
            upstream,
            open: Mutex::new(BTreeMap::new()),
            net,
        })
    }

    /// Listens on `gateway` (a port the kernel picks, or the one recorded) for the bridged
    /// instance `key` with private address `instance`, and routes its requests to
    /// 169.254.169.254 there.
    pub fn ensure_bridged(self: &Arc<Self>, key: &str, gateway: Ipv4Addr, instance: Ipv4Addr) {
        let known =
            self.lock().get(key).filter(|l| l.bridged == Some(instance) && !l.task.is_finished()).map(|l| l.addr);
        if known.is_none() {
            self.listen(key, SocketAddr::new(gateway.into(), 0), Some(instance));
        }
        self.route_bridged();
    }

    /// Writes this host's metadata table from the bridged listeners (nothing without a network).
    fn route_bridged(&self) {
        let Some(net) = &self.net else { return };
        let listeners: Vec<herd_hostnet::metadata::Listener> = self
            .lock()
            .values()
            .filter_map(|l| Some(herd_hostnet::metadata::Listener { instance: l.bridged?, port: l.addr.port() }))
            .collect();
        if let Err(e) = net.serve_metadata(&listeners) {
            tracing::warn!(error = %e, "cannot route bridged instances' metadata requests");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Listening>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Listens at `addr` for instance `key` (`group/set/id`), unless it already does there.
    /// A bind failure is logged: the instance then gets no metadata until its next Ensure.
    pub fn ensure(self: &Arc<Self>, key: &str, addr: SocketAddr) {
        {
            let open = self.lock();
            if open.get(key).is_some_and(|l| l.addr == addr && !l.task.is_finished()) {
                return;
            }
        }
        self.listen(key, addr, None);
    }

    fn listen(self: &Arc<Self>, key: &str, addr: SocketAddr, bridged: Option<Ipv4Addr>) {
        self.close(key);
        let std_listener = match std::net::TcpListener::bind(addr).and_then(|l| l.set_nonblocking(true).map(|()| l)) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(instance = %key, %addr, error = %e, "cannot listen for the instance's metadata");
                return;
            }
        };
        let listener = match tokio::net::TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(instance = %key, %addr, error = %e, "cannot listen for the instance's metadata");
                return;
            }
        };
        let addr = listener.local_addr().unwrap_or(addr);
        let upstream = self.upstream.clone();
        let k = key.to_string();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (upstream, k) = (upstream.clone(), k.clone());
                tokio::spawn(async move {
                    match upstream.open(&k).await {
                        Ok(mut up) => {
                            let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
                        }
                        Err(e) => {
                            tracing::warn!(instance = %k, error = %e, "a metadata connection could not be relayed")
                        }
                    }
                });
            }
        });
        self.lock().insert(key.to_string(), Listening { addr, bridged, task });
        self.save();
    }

    /// Stops listening for instance `key`.
    pub fn close(&self, key: &str) {
        let removed = self.lock().remove(key);
        if let Some(l) = removed {
            l.task.abort();
            self.save();
            if l.bridged.is_some() {
                self.route_bridged();
            }
        }
    }

    /// Listens again for every recorded instance in `listed` (the driver's instances, as
    /// `group/set/id`); forgets the others.
    pub fn restore(self: &Arc<Self>, listed: &[String]) {
        let recorded: BTreeMap<String, Recorded> =
            std::fs::read(&self.file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        for (key, r) in recorded {
            if listed.contains(&key) {
                match r {
                    Recorded::Plain(addr) => self.ensure(&key, addr),
                    Recorded::Bridged { addr, instance } => self.listen(&key, addr, Some(instance)),
                }
            }
        }
        self.save();
        self.route_bridged();
    }

    /// The instances listened for, and where.
    pub fn listening(&self) -> BTreeMap<String, SocketAddr> {
        self.lock().iter().map(|(k, l)| (k.clone(), l.addr)).collect()
    }

    fn save(&self) {
        let now: BTreeMap<String, Recorded> = self
            .lock()
            .iter()
            .map(|(k, l)| {
                let r = match l.bridged {
                    Some(instance) => Recorded::Bridged { addr: l.addr, instance },
                    None => Recorded::Plain(l.addr),
                };
                (k.clone(), r)
            })
            .collect();
        let tmp = self.file.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(&now)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &self.file));
        if let Err(e) = written {
            tracing::warn!(file = %self.file.display(), error = %e, "cannot record the metadata listeners");
        }
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        for (_, l) in std::mem::take(&mut *self.open.lock().unwrap_or_else(|e| e.into_inner())) {
            l.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An upstream that answers every relayed connection with its key, then echoes.
    struct Echo;

    #[async_trait]
    impl Upstream for Echo {
        async fn open(&self, key: &str) -> Result<Box<dyn Duplex>, String> {
            let (a, mut b) = tokio::io::duplex(1024);
            let key = key.to_string();
            tokio::spawn(async move {
                let _ = b.write_all(format!("{key}:").as_bytes()).await;
                let mut buf = [0u8; 64];
                while let Ok(n) = b.read(&mut buf).await {
                    if n == 0 || b.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            Ok(Box::new(a))
        }
    }

    async fn ask(addr: SocketAddr, body: &str) -> String {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(body.as_bytes()).await.unwrap();
        let mut got = [0u8; 64];
        let mut n = 0;
        while !String::from_utf8_lossy(&got[..n]).ends_with(body) {
            let more = c.read(&mut got[n..]).await.unwrap();
            assert!(more > 0, "the relay closed after {:?}", String::from_utf8_lossy(&got[..n]));
            n += more;
        }
        String::from_utf8_lossy(&got[..n]).into_owned()
    }

    /// Waits (boundedly) until nothing listens at `addr` any more: an aborted listener task
    /// lets go of its socket when the runtime next runs it.
    async fn until_closed(addr: SocketAddr) {
        for _ in 0..1000 {
            if std::net::TcpListener::bind(addr).is_ok() {
                return;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        panic!("{addr} is still listened on");
    }

    fn free_addr() -> SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
    }

    #[tokio::test]
    async fn each_instance_listens_relays_and_comes_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (free_addr(), free_addr());
        let relays = Relays::new(dir.path(), Arc::new(Echo));
        relays.ensure("rg/web/0", a);
        relays.ensure("rg/web/1", b);
        relays.ensure("rg/web/0", a); // idempotent
        assert_eq!(ask(a, "hi").await, "rg/web/0:hi");
        assert_eq!(ask(b, "yo").await, "rg/web/1:yo");
        relays.close("rg/web/1");
        until_closed(b).await;
        drop(relays);
        until_closed(a).await;
        // A new agent: only instances the driver still lists get their listener back.
        let relays = Relays::new(dir.path(), Arc::new(Echo));
        relays.restore(&["rg/web/0".to_string(), "rg/web/1".to_string()]);
        assert_eq!(relays.listening(), BTreeMap::from([("rg/web/0".to_string(), a)]));
        assert_eq!(ask(a, "again").await, "rg/web/0:again");
        drop(relays);
        until_closed(a).await;
        let relays2 = Relays::new(dir.path(), Arc::new(Echo));
        relays2.restore(&[]);
        assert!(relays2.listening().is_empty(), "an instance gone from the driver is forgotten");
    }
}
