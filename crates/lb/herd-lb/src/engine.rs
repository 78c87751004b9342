//! The data plane's own threads: one single-threaded Tokio runtime per CPU, each with its own
//! listener socket per frontend (`SO_REUSEPORT`), so a connection lives on one thread from
//! accept to close.
//!
//! Why not the server's shared multi-threaded runtime: `herd bench lb` with 1,000 and 10,000
//! connections showed herd's p99 at 2–3.5× HAProxy's while its CPU per request was within
//! 10 %. With more ready connections than a worker's local queue holds (256), the shared
//! runtime spills them to its global queue, which a worker only looks at every 61 tasks, so
//! some connections wait far longer than others. A single-threaded runtime runs ready tasks
//! in order, and a connection never moves between threads (as in HAProxy and nginx: one event
//! loop per CPU, the kernel spreading new connections over the listeners).
//!
//! ```text
//!   LoadBalancer::with_options ──> Engine::start(n) ──> n threads, each block_on(stop)
//!   apply: bind n sockets (SO_REUSEPORT when n > 1) ──> one accept loop on each thread
//!   Engine dropped ──> stop sent ──> each runtime ends, with its connections
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::dataplane::FrontendState;

/// The data-plane threads. Dropping it stops them and every connection they carry.
pub(crate) struct Engine {
    workers: Vec<Worker>,
}

struct Worker {
    handle: Handle,
    _stop: oneshot::Sender<()>,
}

impl Engine {
    /// Starts `threads` (at least one) data-plane threads.
    pub fn start(threads: usize) -> io::Result<Engine> {
        let mut workers = Vec::new();
        for i in 0..threads.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new().name(format!("herd-lb-{i}")).spawn(move || {
                let _ = runtime.block_on(stopped);
            })?;
            workers.push(Worker { handle, _stop: stop });
        }
        Ok(Engine { workers })
    }

    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Binds `addr` once per thread (sharing the port with `SO_REUSEPORT` when there is more
    /// than one) and starts an accept loop on each thread; each loop ends when its `stop`
    /// fires. Nothing runs unless every socket was bound.
    pub fn listen(&self, addr: SocketAddr, backlog: u32, state: &Arc<FrontendState>) -> io::Result<AcceptLoops> {
        let shared = self.workers.len() > 1;
        if shared {
            // A port that another process shares with SO_REUSEPORT (same user) would accept
            // our sockets into its group and split the traffic; an exclusive bind first (no
            // listen, so no connection can arrive on it) makes that "address in use", as with
            // one thread.
            drop(socket(addr, false)?);
        }
        let listeners = (0..self.workers.len()).map(|_| bind(addr, backlog, shared)).collect::<io::Result<Vec<_>>>()?;
        let mut stops = Vec::new();
        let mut tasks = Vec::new();
        for (worker, listener) in self.workers.iter().zip(listeners) {
            let (stop, stopped) = oneshot::channel();
            let state = state.clone();
            tasks.push(worker.handle.spawn(async move {
                // Registered with this thread's reactor, so its connections stay here.
                match TcpListener::from_std(listener) {
                    Ok(listener) => crate::proxy::accept_loop(listener, state, stopped).await,
                    Err(e) => tracing::error!(frontend = %state.frontend, "listener not registered: {e}"),
                }
            }));
            stops.push(stop);
        }
        Ok(AcceptLoops { stops, tasks })
    }
}

/// A frontend's accept loops, one per data-plane thread.
pub(crate) struct AcceptLoops {
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl AcceptLoops {
    /// Stops accepting (the sockets close) and waits for every loop to end; connections go on.
    pub async fn stop(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// A socket bound to `addr` (with `SO_REUSEPORT` when `shared`), not listening yet.
fn socket(addr: SocketAddr, shared: bool) -> io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener: one setsockopt per frontend
    // instead of one per connection.
    socket.set_nodelay(true)?;
    if shared {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    Ok(socket)
}

/// A listening socket, not yet registered with any runtime.
fn bind(addr: SocketAddr, backlog: u32, shared: bool) -> io::Result<std::net::TcpListener> {
    // `listen` registers with the calling runtime; `into_std` takes it back out, non-blocking.
    socket(addr, shared)?.listen(backlog)?.into_std()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LbConfig, LbError, LbOptions, LoadBalancer, RuleConfig};

    #[tokio::test]
    async fn a_port_shared_by_another_reuseport_group_is_in_use() {
        let other = bind("127.0.0.1:0".parse().unwrap(), 16, true).unwrap();
        let addr = other.local_addr().unwrap();
        let lb = LoadBalancer::with_options(LbOptions { threads: Some(2), ..LbOptions::default() });
        assert_eq!(lb.threads(), 2);
        let config = LbConfig { rules: vec![RuleConfig::new("r", addr, 80, vec![])], ..LbConfig::default() };
        match lb.apply(config.clone()).await {
            Err(LbError::Bind(f)) => assert_eq!(f[0].reason, "address in use"),
            other => panic!("expected a bind failure, got {other:?}"),
        }
        drop(other);
        lb.apply(config).await.unwrap();
        assert_eq!(lb.frontends(), vec![addr]);
    }

    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let listener = TcpListener::from_std(bind("127.0.0.1:0".parse().unwrap(), 16, false).unwrap()).unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap(), "the proxy relies on it instead of a setsockopt per connection");
        drop(client);
    }
}
