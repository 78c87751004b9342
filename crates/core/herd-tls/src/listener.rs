//! A TLS listener: TCP connections in, finished TLS handshakes out.
//!
//! Why handshakes run beside the accept loop and not in it: a client that opens a connection
//! and never finishes its handshake must not hold up the next one. Each handshake runs in its
//! own task with a deadline, at most [`MAX_HANDSHAKES`] at once; the server takes connections
//! whose handshake is done.
//!
//! Agents share the port ([`TlsListener::with_agents`]): the client hello is read first, and a
//! client that asks for [`crate::agent::AGENT_ALPN`] gets the agent configuration (a client
//! certificate of the cluster CA required) and is handed to the agents' side, not to HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;

/// How long a client has to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at most; past it, new connections wait in the kernel's backlog.
pub const MAX_HANDSHAKES: usize = 1024;

/// Accepts TCP connections and hands out those whose TLS handshake succeeded.
#[derive(Debug)]
pub struct TlsListener {
    local: SocketAddr,
    done: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    acceptor: tokio::task::JoinHandle<()>,
}

/// A finished agent handshake: the stream and the peer's address.
pub type AgentConnection = (TlsStream<TcpStream>, SocketAddr);

/// What the accept loop serves: the API's configuration, and the agents' with where their
/// connections go.
#[derive(Clone)]
struct Configs {
    api: Arc<rustls::ServerConfig>,
    agents: Option<(Arc<rustls::ServerConfig>, mpsc::Sender<AgentConnection>)>,
}

impl TlsListener {
    /// Starts accepting on `tcp` with `config` (a [`crate::ServerCerts`] configuration keeps
    /// certificate rotation working for every later handshake).
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        Self::start(tcp, Configs { api: config, agents: None })
    }

    /// As [`Self::new`], and clients asking for the agent protocol get `agent_config` and are
    /// sent to `agents` once their handshake is done.
    pub fn with_agents(
        tcp: TcpListener,
        config: Arc<rustls::ServerConfig>,
        agent_config: Arc<rustls::ServerConfig>,
        agents: mpsc::Sender<AgentConnection>,
    ) -> std::io::Result<Self> {
        Self::start(tcp, Configs { api: config, agents: Some((agent_config, agents)) })
    }

    fn start(tcp: TcpListener, configs: Configs) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, done) = mpsc::channel(64);
        let acceptor = tokio::spawn(accept_loop(tcp, configs, tx));
        Ok(Self { local, done, acceptor })
    }

    /// The next connection whose handshake finished; `None` once the listener is closed.
    pub async fn accept(&mut self) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
        self.done.recv().await
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

async fn accept_loop(tcp: TcpListener, configs: Configs, done: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let (stream, peer) = match tcp.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (configs, finished) = (configs.clone(), done.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(stream, &configs)).await {
                Ok(Ok((tls, true))) => {
                    if let Some((_, agents)) = &configs.agents {
                        let _ = agents.send((tls, peer)).await;
                    }
                }
                Ok(Ok((tls, false))) => {
                    let _ = finished.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
        if done.is_closed() {
            return;
        }
    }
}

/// Reads the client hello, picks the configuration, finishes the handshake. True for an agent.
async fn handshake(stream: TcpStream, configs: &Configs) -> std::io::Result<(TlsStream<TcpStream>, bool)> {
    let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    let wants_agent =
        start.client_hello().alpn().is_some_and(|mut offered| offered.any(|p| p == crate::agent::AGENT_ALPN));
    match (&configs.agents, wants_agent) {
        (Some((agent_config, _)), true) => Ok((start.into_stream(agent_config.clone()).await?, true)),
        _ => Ok((start.into_stream(configs.api.clone()).await?, false)),
    }
}

/// `axum::serve(listener, app)` over TLS: connections are handed to axum once their handshake
/// is done, and `ConnectInfo<SocketAddr>` (axum's own, for any listener whose address is a
/// `SocketAddr`) is the client's address.
#[cfg(feature = "axum")]
impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match TlsListener::accept(self).await {
            Some(c) => c,
            // The accept loop ended (its task was aborted): nothing will come again.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
