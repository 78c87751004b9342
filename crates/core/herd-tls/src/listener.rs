//! A TLS listener: TCP connections in, finished TLS handshakes out.
//!
//! Why handshakes run beside the accept loop and not in it: a client that opens a connection
//! and never finishes its handshake must not hold up the next one. Each handshake runs in its
//! own task with a deadline, at most [`MAX_HANDSHAKES`] at once; the server takes connections
//! whose handshake is done.

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

impl TlsListener {
    /// Starts accepting on `tcp` with `config` (a [`crate::ServerCerts`] configuration keeps
    /// certificate rotation working for every later handshake).
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, done) = mpsc::channel(64);
        let acceptor = tokio::spawn(accept_loop(tcp, tokio_rustls::TlsAcceptor::from(config), tx));
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

async fn accept_loop(
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    done: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
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
        let (acceptor, finished) = (acceptor.clone(), done.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
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
