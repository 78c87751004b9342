//! The server's side of the link to `herd agent`: who is connected, when each host last
//! heartbeated, and the refusal of any agent whose certificate is not the one its host was
//! given at join.
//!
//! Why liveness lives here, in memory, and not in the store: heartbeats come every two seconds
//! from every host; writing each one would make the store's write rate grow with the cluster.
//! The store holds what must survive (the host record); liveness starts from zero when the
//! server starts, which is also what the host-failure rules ask for (a restarted server must
//! not trust heartbeats it did not see).
//!
//! A session, per connection:
//!
//! ```text
//!   handshake done ──▶ Identify ──(certificate = host's, Hello ok)──▶ Live ──(read error,
//!                         │                                           │    close, deleted,
//!                         └──(refused: Refused{why}, close)            │    replaced)──▶ Gone
//!                                                                      └─ Heartbeat → Ack
//! ```
//! A newer connection of the same host replaces the older one (the agent restarted, or its
//! old connection is half-dead); the older session ends at its next message.
//!
//! **Leases** (issue 21). Each acknowledgement grants the host a lease (`[agents] lease_secs`)
//! for the instances whose records place them on it. Per host the server keeps, in memory and
//! beyond the connection's end, the last heartbeat received and the largest lease ever granted
//! ([`herd_model::host::LeaseRecord`], updated *before* the ack goes out), so a host whose link
//! drops is NotReady only after `host_grace`, and its instances are replaced only after the
//! lease bound. A host not heard since this server started counts its silence from the start.
//!
//! A connection whose first message is `Pull` instead of `Hello` is an image pull
//! ([`pull`]): authenticated the same way, served on its own connection, then closed. Each
//! session also records the largest gap between two heartbeats (what a pull must not
//! stretch) and tells its host which image digests to keep when the gallery changes, and its
//! stretch of the cluster's segments whenever that changes ([`fabric`]). A connection whose
//! first message is `Upload` or `Fetch` carries a cold move's state files ([`transfers`]).
#![forbid(unsafe_code)]

pub mod fabric;
pub mod pull;
pub mod relay;
pub mod remote;
pub mod router;
pub mod transfers;

pub use router::HostRouter;

use chrono::{DateTime, Utc};
use herd_agent_wire::{AgentMessage, CallError, DriverCall, DriverReply, ServerMessage, WireError, PROTOCOL};
use herd_driver::DriverError;
use herd_model::clock::Clock;
use herd_model::host::{HostCapacity, HostRecord, LeaseRecord, Silence, DEFAULT_LEASE_SECS, HEARTBEAT_INTERVAL_MS};
use herd_state::State;
use herd_tls::listener::AgentConnection;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A linked host silent for longer than this (three heartbeats) answers no call: calls to it
/// are abandoned (and retried by the reconciler), so one frozen agent never holds a pass.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(6);

/// The longest lease `[agents] lease_secs` allows: what a silent host is assumed to hold until
/// the hosts' records are read.
pub const MAX_LEASE_SECS: u64 = 600;

/// How long an agent has to say Hello after its handshake.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// One connected host, as the server sees it now.
#[derive(Debug, Clone, PartialEq)]
pub struct Liveness {
    pub last_heartbeat: DateTime<Utc>,
    pub connected_since: DateTime<Utc>,
    pub peer: SocketAddr,
    pub boot_id: String,
    /// The longest time between two heartbeats of this connection (from its Welcome).
    pub max_heartbeat_gap_ms: u64,
}

/// Instance keys (`group/set/id`) by the host their records place them on.
type Assigned = HashMap<String, Vec<String>>;

/// Calls waiting for their reply, by id.
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<DriverReply, CallError>>>>>;

#[derive(Debug)]
struct Session {
    live: Liveness,
    /// Which connection of the host this is; a newer one replaces it.
    generation: u64,
    /// What to send the agent (acknowledgements, calls), written by the session's writer.
    outbox: mpsc::Sender<ServerMessage>,
    pending: Pending,
}

/// Every agent session of this server.
#[derive(Debug)]
pub struct HostLinks {
    pub(crate) state: State,
    clock: Arc<dyn Clock>,
    sessions: Mutex<HashMap<String, Session>>,
    next_generation: std::sync::atomic::AtomicU64,
    next_call: std::sync::atomic::AtomicU64,
    /// Image pulls served to each host since this server started.
    pulls: Mutex<HashMap<String, u64>>,
    heartbeat_interval_ms: u64,
    /// Where each instance's metadata endpoint listens on this server (set once the metadata
    /// service runs); what hosts relay their instances' metadata connections to.
    metadata: std::sync::OnceLock<Arc<dyn relay::MetadataEndpoints>>,
    /// Where bridged NICs and hosts' VTEPs are: what stretches segments across hosts.
    fabric: Arc<fabric::Fabric>,
    /// The lease each acknowledgement grants.
    lease: chrono::Duration,
    /// When this server started: the silence of a host not heard since counts from here.
    started: DateTime<Utc>,
    /// Per host: last heartbeat and largest lease granted, kept past the connection's end.
    heard: Mutex<HashMap<String, LeaseRecord>>,
    /// Per host: the largest lease (ms) any server granted it, as its record keeps it (None
    /// until read from the store at the start of [`HostLinks::serve`]).
    granted: Mutex<Option<HashMap<String, u64>>>,
    /// The instances each host may run (by its records), read at most once a second for all
    /// hosts' acknowledgements together.
    assigned: tokio::sync::Mutex<Option<(std::time::Instant, Arc<Assigned>)>>,
    /// Set when the reconciler moved instances to other hosts: the reading above is stale.
    assigned_stale: std::sync::atomic::AtomicBool,
    /// Cold moves' state files staged here (see [`transfers`]).
    pub(crate) transfers: transfers::Transfers,
}

/// How the link treats agents (`[agents]` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSettings {
    /// Told in the Welcome.
    pub heartbeat_interval_ms: u64,
    /// Granted in every acknowledgement.
    pub lease: chrono::Duration,
}

impl Default for LinkSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS,
            lease: chrono::Duration::seconds(DEFAULT_LEASE_SECS as i64),
        }
    }
}

impl HostLinks {
    pub fn new(state: State, clock: Arc<dyn Clock>) -> Arc<Self> {
        Self::with_heartbeat_interval(state, clock, HEARTBEAT_INTERVAL_MS)
    }

    /// Links whose agents heartbeat every `interval_ms` (told in the Welcome).
    pub fn with_heartbeat_interval(state: State, clock: Arc<dyn Clock>, interval_ms: u64) -> Arc<Self> {
        Self::with_settings(state, clock, LinkSettings { heartbeat_interval_ms: interval_ms, ..Default::default() })
    }

    /// Links with these settings.
    pub fn with_settings(state: State, clock: Arc<dyn Clock>, settings: LinkSettings) -> Arc<Self> {
        let started = clock.now();
        Arc::new(Self {
            state,
            clock,
            sessions: Mutex::new(HashMap::new()),
            next_generation: std::sync::atomic::AtomicU64::new(1),
            next_call: std::sync::atomic::AtomicU64::new(1),
            pulls: Mutex::new(HashMap::new()),
            heartbeat_interval_ms: settings.heartbeat_interval_ms,
            metadata: std::sync::OnceLock::new(),
            fabric: Arc::default(),
            lease: settings.lease,
            started,
            heard: Mutex::new(HashMap::new()),
            granted: Mutex::new(None),
            assigned: tokio::sync::Mutex::new(None),
            assigned_stale: Default::default(),
            transfers: Default::default(),
        })
    }

    fn heard(&self) -> std::sync::MutexGuard<'_, HashMap<String, LeaseRecord>> {
        self.heard.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn granted(&self) -> std::sync::MutexGuard<'_, Option<HashMap<String, u64>>> {
        self.granted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The largest lease host `name` was ever granted (by any server); until the records are
    /// read, the largest lease a server can grant, so nothing is replaced too early.
    fn ever_granted(&self, name: &str) -> chrono::Duration {
        match &*self.granted() {
            Some(m) => chrono::Duration::milliseconds(m.get(name).copied().unwrap_or(0) as i64),
            None => chrono::Duration::seconds(MAX_LEASE_SECS as i64),
        }
    }

    /// The lease to grant host `name` now: the configured one, once the record says it was
    /// granted (written first when it grows); if that write fails, no more than was granted
    /// before.
    async fn lease_for(&self, name: &str) -> u64 {
        let want = self.lease.num_milliseconds().max(0) as u64;
        let had = self.granted().as_ref().and_then(|m| m.get(name).copied());
        if had.is_some_and(|h| h >= want) {
            return want;
        }
        let host = name.to_string();
        match self.state.run(move |s| herd_state::hosts::grant_lease(s, &host, want)).await {
            Ok(()) => {
                if let Some(m) = self.granted().as_mut() {
                    m.insert(name.to_string(), want);
                }
                want
            }
            Err(e) => {
                tracing::warn!(host = %name, error = %e, "cannot record the lease granted; granting no more than before");
                had.unwrap_or(0).min(want)
            }
        }
    }

    /// The instances (`group/set/id`) whose records place them on `host`, from a reading of
    /// the store at most a second old (every host's acknowledgements share one reading).
    async fn assigned_to(&self, host: &str) -> Vec<String> {
        let mut cache = self.assigned.lock().await;
        // Taken under the lock, so a reading made after the move was written is never dropped
        // for an older one.
        let moved = self.assigned_stale.swap(false, std::sync::atomic::Ordering::SeqCst);
        let fresh = !moved && cache.as_ref().is_some_and(|(at, _)| at.elapsed() < Duration::from_secs(1));
        if !fresh {
            let read = self
                .state
                .run(|s| {
                    let mut by_host: HashMap<String, Vec<String>> = HashMap::new();
                    for o in herd_state::Records::instances(s)? {
                        let key = o.key.parse::<herd_state::keys::InstanceRecordKey>();
                        if let (Some(h), Ok(key)) = (&o.value.host, key) {
                            by_host.entry(h.clone()).or_default().push(key.0.path());
                        }
                    }
                    Ok(by_host)
                })
                .await;
            match read {
                Ok(by_host) => *cache = Some((std::time::Instant::now(), Arc::new(by_host))),
                // The last reading is better than none; with none, nothing is listed (and the
                // host's leases are not renewed until the store answers).
                Err(e) => tracing::warn!(error = %e, "cannot read the instances' hosts for the acknowledgements"),
            }
        }
        cache.as_ref().and_then(|(_, m)| m.get(host).cloned()).unwrap_or_default()
    }

    /// The fabric: the reconciler publishes NICs to it; the server applies its own stretch.
    pub fn fabric(&self) -> &Arc<fabric::Fabric> {
        &self.fabric
    }

    /// Where instances' metadata endpoints listen: relayed connections of hosts go there. Set
    /// once; a host's relay is refused until then.
    pub fn set_metadata_endpoints(&self, endpoints: Arc<dyn relay::MetadataEndpoints>) {
        let _ = self.metadata.set(endpoints);
    }

    /// The cold moves' transfers (set their directory with [`transfers::Transfers::set_root`]).
    pub fn transfers(&self) -> &transfers::Transfers {
        &self.transfers
    }

    /// Image pulls served to host `name` since this server started.
    pub fn pulls(&self, name: &str) -> u64 {
        self.pulls.lock().unwrap_or_else(|e| e.into_inner()).get(name).copied().unwrap_or(0)
    }

    fn count_pull(&self, name: &str) {
        *self.pulls.lock().unwrap_or_else(|e| e.into_inner()).entry(name.to_string()).or_default() += 1;
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The hosts linked now, by name.
    pub fn linked(&self) -> Vec<String> {
        let mut v: Vec<String> = self.sessions().keys().cloned().collect();
        v.sort();
        v
    }

    /// How long host `name` has been silent (since its last heartbeat), if it is linked.
    pub fn silent_for(&self, name: &str) -> Option<Duration> {
        let last = self.liveness(name)?.last_heartbeat;
        Some((self.clock.now() - last).to_std().unwrap_or_default())
    }

    /// Host `name`'s session now, if connected since this server started.
    pub fn liveness(&self, name: &str) -> Option<Liveness> {
        self.sessions().get(name).map(|s| s.live.clone())
    }

    /// Serves the agent connections the TLS listener hands over, until it stops.
    pub async fn serve(self: Arc<Self>, mut agents: mpsc::Receiver<AgentConnection>) {
        // The hosts' VXLAN addresses as last recorded: a restarted server cuts no segment
        // while its hosts link again.
        match self.state.run(herd_state::hosts::list).await {
            Ok(hosts) => {
                for h in hosts {
                    if let Some(addr) = h.fabric_address {
                        self.fabric.remember(&h.name, addr);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the hosts' fabric addresses"),
        }
        // Images imported before digests existed get theirs once, off the accept loop.
        let state = self.state.clone();
        tokio::spawn(async move { pull::fill_digests(&state).await });
        // The leases granted before this server started (by it or another), per host.
        match self.state.run(herd_state::hosts::list).await {
            Ok(hosts) => *self.granted() = Some(hosts.into_iter().map(|h| (h.name, h.max_lease_ms)).collect()),
            Err(e) => tracing::warn!(error = %e, "cannot read the hosts' leases; silent hosts wait the longest lease"),
        }
        while let Some((tls, peer)) = agents.recv().await {
            let links = self.clone();
            tokio::spawn(async move {
                match links.session(tls, peer).await {
                    Ok(()) => {}
                    Err(e) => tracing::info!(%peer, error = %e, "agent connection ended"),
                }
            });
        }
    }

    async fn refuse<S>(stream: &mut S, reason: String) -> Result<(), String>
    where
        S: tokio::io::AsyncWrite + Unpin,
    {
        tracing::warn!(%reason, "agent refused");
        let _ = herd_agent_wire::write(stream, &ServerMessage::Refused { reason: reason.clone() }).await;
        Err(reason)
    }

    /// The host record the connection's certificate belongs to, or why there is none.
    async fn identify(
        &self,
        tls: &tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    ) -> Result<HostRecord, String> {
        let Some(cert) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) else {
            return Err("the agent presented no certificate".into());
        };
        let (name, fingerprint) = herd_tls::agent::agent_identity(cert).map_err(|e| e.to_string())?;
        let lookup = name.clone();
        let record = self
            .state
            .run(move |s| herd_state::hosts::get(s, &lookup))
            .await
            .map_err(|e| format!("reading host '{name}': {e}"))?;
        let Some(record) = record else {
            return Err(format!(
                "host '{name}' is not a member of this cluster (deleted, or never joined); join it again with a new token"
            ));
        };
        if record.certificate_fingerprint != fingerprint.to_string() {
            return Err(format!(
                "this certificate is not the one issued to host '{name}' at its join; delete the host and join it again"
            ));
        }
        Ok(record)
    }

    async fn session(
        self: Arc<Self>,
        mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        peer: SocketAddr,
    ) -> Result<(), String> {
        let record = match self.identify(&tls).await {
            Ok(r) => r,
            Err(why) => {
                // Not a member (deleted, or another certificate): out of every segment.
                if let Some(cert) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                    if let Ok((name, _)) = herd_tls::agent::agent_identity(cert) {
                        self.fabric.forget(&name);
                    }
                }
                return Self::refuse(&mut tls, why).await;
            }
        };
        let local = tls.get_ref().0.local_addr().map(|a| a.ip()).ok();
        let name = record.name.clone();
        let hello = tokio::time::timeout(HELLO_TIMEOUT, herd_agent_wire::read::<_, AgentMessage>(&mut tls)).await;
        if let Ok(Ok(Some(AgentMessage::Pull { protocol, digest }))) = &hello {
            if *protocol != PROTOCOL {
                let why = format!("agent protocol {protocol} is not this server's ({PROTOCOL})");
                let _ = herd_agent_wire::write(&mut tls, &ServerMessage::PullRefused { reason: why.clone() }).await;
                return Err(why);
            }
            return pull::serve(&self, &mut tls, &name, digest).await;
        }
        if let Ok(Ok(Some(AgentMessage::Relay { protocol, key }))) = &hello {
            if *protocol != PROTOCOL {
                let why = format!("agent protocol {protocol} is not this server's ({PROTOCOL})");
                let _ = herd_agent_wire::write(&mut tls, &ServerMessage::RelayRefused { reason: why.clone() }).await;
                return Err(why);
            }
            return relay::serve(&self, tls, &name, key).await;
        }
        if let Ok(Ok(Some(AgentMessage::Upload { protocol, transfer, key, files }))) = &hello {
            if *protocol != PROTOCOL {
                let why = format!("agent protocol {protocol} is not this server's ({PROTOCOL})");
                let _ = herd_agent_wire::write(&mut tls, &ServerMessage::TransferRefused { reason: why.clone() }).await;
                return Err(why);
            }
            return transfers::serve_upload(&self, &mut tls, &name, transfer, key, files).await;
        }
        if let Ok(Ok(Some(AgentMessage::Fetch { protocol, transfer, name: file }))) = &hello {
            if *protocol != PROTOCOL {
                let why = format!("agent protocol {protocol} is not this server's ({PROTOCOL})");
                let _ = herd_agent_wire::write(&mut tls, &ServerMessage::TransferRefused { reason: why.clone() }).await;
                return Err(why);
            }
            return transfers::serve_fetch(&self, &mut tls, &name, transfer, file).await;
        }
        let (capacity, version, boot_id) = match hello {
            Ok(Ok(Some(AgentMessage::Hello { protocol, name: said, agent_version, capacity, boot_id }))) => {
                if protocol != PROTOCOL {
                    return Self::refuse(
                        &mut tls,
                        format!("agent protocol {protocol} is not this server's ({PROTOCOL}); run the same herd version on both"),
                    )
                    .await;
                }
                if said != name {
                    return Self::refuse(
                        &mut tls,
                        format!("the agent says it is '{said}' but its certificate is host '{name}'"),
                    )
                    .await;
                }
                (capacity, agent_version, boot_id)
            }
            Ok(Ok(other)) => return Self::refuse(&mut tls, format!("expected Hello first, got {other:?}")).await,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("host '{name}' sent no Hello within {HELLO_TIMEOUT:?}")),
        };
        self.report(&name, capacity, Some(&version), Some(peer.ip())).await;
        herd_agent_wire::write(&mut tls, &ServerMessage::Welcome { heartbeat_interval_ms: self.heartbeat_interval_ms })
            .await
            .map_err(|e| e.to_string())?;
        let (mut rd, mut wr) = tokio::io::split(tls);
        let (outbox, mut outgoing) = mpsc::channel::<ServerMessage>(256);
        // The writer: one task owns the write half, so calls and acknowledgements never
        // interleave within a frame. A Refused is the last thing it writes.
        let writer = tokio::spawn(async move {
            while let Some(msg) = outgoing.recv().await {
                let last = matches!(msg, ServerMessage::Refused { .. });
                if herd_agent_wire::write(&mut wr, &msg).await.is_err() || last {
                    break;
                }
            }
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut wr).await;
        });
        let pending: Pending = Default::default();
        let now = self.clock.now();
        let generation = self.next_generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let session = Session {
            live: Liveness { last_heartbeat: now, connected_since: now, peer, boot_id, max_heartbeat_gap_ms: 0 },
            generation,
            outbox: outbox.clone(),
            pending: pending.clone(),
        };
        self.sessions().insert(name.clone(), session);
        tracing::info!(host = %name, %peer, "agent connected");
        if let Some(local) = local {
            self.fabric.linked(&name, peer.ip(), local);
        }
        let pusher = tokio::spawn(push_segments(self.fabric.clone(), outbox.clone(), name.clone()));
        let ended = self.live(&mut rd, &outbox, &pending, &name, generation, capacity).await;
        pusher.abort();
        let _ = pusher.await;
        // Only this connection's own session goes; a newer one stays.
        {
            let mut sessions = self.sessions();
            if sessions.get(&name).is_some_and(|s| s.generation == generation) {
                sessions.remove(&name);
            }
        }
        // Calls still waiting fail now (their senders drop), not at their timeout.
        pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
        drop(outbox);
        let _ = writer.await;
        tracing::info!(host = %name, "agent disconnected");
        ended
    }

    /// Heartbeats and replies until the connection ends, the host is deleted, or a newer
    /// connection of the same host replaces this one.
    async fn live<R: tokio::io::AsyncRead + Unpin>(
        &self,
        rd: &mut R,
        outbox: &mpsc::Sender<ServerMessage>,
        pending: &Pending,
        name: &str,
        generation: u64,
        mut capacity: HostCapacity,
    ) -> Result<(), String> {
        let refuse = |reason: String| async move {
            tracing::warn!(%reason, "agent refused");
            let _ = outbox.send(ServerMessage::Refused { reason: reason.clone() }).await;
            Err::<(), String>(reason)
        };
        // The gallery's digests as last told to this host.
        let mut told: Option<std::collections::BTreeSet<String>> = None;
        loop {
            let msg = match herd_agent_wire::read::<_, AgentMessage>(rd).await {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(()),
                Err(WireError::Io(e)) => return Err(e.to_string()),
                Err(e) => return refuse(e.to_string()).await,
            };
            if self.sessions().get(name).is_none_or(|s| s.generation != generation) {
                return Ok(()); // replaced
            }
            match msg {
                AgentMessage::Heartbeat { seq, capacity: now_has } => {
                    let lookup = name.to_string();
                    let still = self.state.run(move |s| herd_state::hosts::get(s, &lookup)).await;
                    if matches!(still, Ok(None)) {
                        self.fabric.forget(name);
                        return refuse(format!("host '{name}' was deleted from the cluster")).await;
                    }
                    let now = self.clock.now();
                    if let Some(s) = self.sessions().get_mut(name) {
                        let gap = (now - s.live.last_heartbeat).num_milliseconds().max(0) as u64;
                        s.live.max_heartbeat_gap_ms = s.live.max_heartbeat_gap_ms.max(gap);
                        s.live.last_heartbeat = now;
                    }
                    if now_has != capacity {
                        capacity = now_has;
                        self.report(name, capacity, None, None).await;
                    }
                    // The lease is on the books (the store's, then this server's) before it is
                    // granted.
                    let instances = self.assigned_to(name).await;
                    let lease_ms = self.lease_for(name).await;
                    {
                        let mut heard = self.heard();
                        let was = heard.get(name).copied();
                        let lease = chrono::Duration::milliseconds(lease_ms as i64);
                        heard.insert(name.to_string(), LeaseRecord::heartbeat(was, now, lease));
                    }
                    if outbox.send(ServerMessage::Ack { seq, lease_ms, instances }).await.is_err() {
                        return Err("the connection's writer stopped".into());
                    }
                    if let Some(now_wanted) = pull::wanted(&self.state).await {
                        if told.as_ref() != Some(&now_wanted) {
                            let digests = now_wanted.iter().cloned().collect();
                            if outbox.send(ServerMessage::Wanted { digests }).await.is_err() {
                                return Err("the connection's writer stopped".into());
                            }
                            told = Some(now_wanted);
                        }
                    }
                }
                AgentMessage::Reply { id, result } => {
                    let waiting = pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                    match waiting {
                        Some(tx) => {
                            let _ = tx.send(result);
                        }
                        None => tracing::debug!(host = %name, id, "a reply to a call no longer waited for"),
                    }
                }
                AgentMessage::Hello { .. } => return refuse("a second Hello on one connection".into()).await,
                AgentMessage::Pull { .. } => {
                    return refuse("a Pull on the link (pulls have their own connection)".into()).await
                }
                AgentMessage::Relay { .. } => {
                    return refuse("a Relay on the link (relays have their own connection)".into()).await
                }
                AgentMessage::Upload { .. } | AgentMessage::Fetch { .. } => {
                    return refuse("a transfer on the link (transfers have their own connections)".into()).await
                }
            }
        }
    }

    /// Sends `call` to host `host`'s agent and waits up to `timeout` for its reply. A host
    /// that is not connected, a connection that ends, and a reply that does not come are
    /// transient failures (the reconciler tries again); what the host's driver refused comes
    /// back as its own error.
    pub async fn call(&self, host: &str, call: DriverCall, timeout: Duration) -> Result<DriverReply, DriverError> {
        let op = call.op();
        let (outbox, pending) = match self.sessions().get(host) {
            Some(s) => (s.outbox.clone(), s.pending.clone()),
            None => {
                return Err(DriverError::Unreachable {
                    host: host.into(),
                    reason: format!("host {host} is not connected (its agent is not linked to this server)"),
                })
            }
        };
        if let Some(silent) = self.silent_for(host).filter(|s| *s > SILENCE_LIMIT) {
            return Err(DriverError::Unreachable {
                host: host.into(),
                reason: format!(
                    "host {host} has sent no heartbeat for {} s (its agent is stopped or its link is cut)",
                    silent.as_secs()
                ),
            });
        }
        let id = self.next_call.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        if outbox.send(ServerMessage::Call { id, call }).await.is_err() {
            pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            return Err(DriverError::Failed(format!("host {host}: the link closed before {op} was sent")));
        }
        // Wait for the reply, the timeout, or the host falling silent (a frozen agent or a cut
        // link keeps its connection open but sends no heartbeat): a pass must not wait on a
        // host that has stopped answering, whatever the call's own timeout.
        let abandon = |why: DriverError| {
            pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            Err(why)
        };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline, rx);
        let mut check = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                r = &mut rx => return match r {
                    Ok(Ok(reply)) => Ok(reply),
                    Ok(Err(e)) => Err(e.into_driver_error(host)),
                    Err(_) => Err(DriverError::Failed(format!("host {host}: the link closed during {op}"))),
                },
                () = &mut deadline => return abandon(DriverError::Failed(format!("host {host}: no answer to {op} within {timeout:?}"))),
                _ = check.tick() => {
                    if let Some(silent) = self.silent_for(host).filter(|s| *s > SILENCE_LIMIT) {
                        return abandon(DriverError::Unreachable {
                            host: host.into(),
                            reason: format!(
                                "host {host} has sent no heartbeat for {} s (its agent is stopped or its link is cut): {op} abandoned, to be retried",
                                silent.as_secs()
                            ),
                        });
                    }
                }
            }
        }
    }

    /// Writes what the agent reports to the host record (only what changed is written).
    async fn report(
        &self,
        name: &str,
        capacity: HostCapacity,
        version: Option<&str>,
        address: Option<std::net::IpAddr>,
    ) {
        let (name, version) = (name.to_string(), version.map(str::to_string));
        let r =
            self.state.run(move |s| herd_state::hosts::report(s, &name, capacity, version.as_deref(), address)).await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "recording a host's report failed");
        }
    }
}

/// Sends host `name` its stretch of the cluster's segments now and whenever it changes, until
/// the session ends (the outbox closes, or the task is aborted).
async fn push_segments(fabric: Arc<fabric::Fabric>, outbox: mpsc::Sender<ServerMessage>, name: String) {
    let mut changes = fabric.changes();
    let mut told: Option<ServerMessage> = None;
    loop {
        if let Some(spans) = fabric.spans_for(fabric::Member::Host(&name)) {
            let now = ServerMessage::Segments { spans, security: fabric.security_for(&name) };
            if told.as_ref() != Some(&now) {
                if outbox.send(now.clone()).await.is_err() {
                    return;
                }
                told = Some(now);
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

impl herd_model::host::Heartbeats for HostLinks {
    /// The last heartbeat received since this server started, also after the connection ended.
    fn last_heartbeat(&self, name: &str) -> Option<DateTime<Utc>> {
        self.heard().get(name).map(|r| r.last_heartbeat)
    }

    fn silence(&self, name: &str) -> Option<Silence> {
        let was = self.heard().get(name).copied();
        Some(LeaseRecord::silence(was, self.started, self.lease, self.ever_granted(name)))
    }

    fn destroy_stale_copy<'a>(
        &'a self,
        name: &'a str,
        key: &'a herd_model::InstanceKey,
        term: u64,
        incarnation: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let fence = herd_driver::Fence::new(herd_driver::Term(term), herd_driver::Incarnation(incarnation));
            let call = DriverCall::Destroy { key: key.clone(), fence };
            match self.call(name, call, Duration::from_secs(120)).await {
                Ok(_) | Err(DriverError::NotFound(_)) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    fn placements_changed(&self) {
        self.assigned_stale.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn link_stats(&self, name: &str) -> Option<herd_model::host::LinkStats> {
        let live = self.liveness(name)?;
        Some(herd_model::host::LinkStats {
            max_heartbeat_gap_ms: live.max_heartbeat_gap_ms,
            image_pulls: self.pulls(name),
        })
    }
}
