//! The data plane's own threads: one event loop per CPU (see `proxy`), each with its own
//! listener socket per frontend (`SO_REUSEPORT`), so a connection lives on one thread from
//! accept to close.
//!
//! Why threads of our own, not the server's shared multi-threaded runtime: `herd bench lb` with
//! 1,000 and 10,000 connections showed herd's p99 at 2–3.5× HAProxy's while its CPU per request
//! was within 10 %: with more ready connections than a worker's local queue holds, the shared
//! runtime spilled them to its global queue, which a worker only looks at every 61 tasks. One
//! loop per CPU that runs ready connections in order, and a connection that never moves between
//! threads, is what HAProxy and nginx do; the kernel spreads new connections over the
//! listeners. Why a hand-written `mio` loop rather than a single-threaded Tokio runtime per
//! thread (sessions 9–10): see `proxy`.
//!
//! The control side (applies, stats) runs elsewhere and talks to the loops only through
//! [`Command`]s: a channel per thread plus a `mio::Waker` that interrupts its `epoll_wait`.
//!
//! ```text
//!   LoadBalancer::with_options ──> Engine::start(n) ──> n threads, each proxy::run(poll, commands)
//!   apply: bind n sockets (SO_REUSEPORT when n > 1) ──> Command::Listen to each thread
//!   frontend gone ──> Command::Unlisten to each thread, wait for each to close its socket
//!   a backend's drain deadline set ──> Command::Drain to each thread
//!   Engine dropped ──> Command::Stop ──> each loop ends, closing its connections
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use tokio::net::TcpSocket;
use tokio::sync::oneshot;

use crate::dataplane::{BackendState, FrontendState};

/// What the control side asks of a data-plane thread.
pub(crate) enum Command {
    /// Accept on this listener (already bound and listening, non-blocking) for `state`.
    Listen { id: u64, listener: std::net::TcpListener, state: Arc<FrontendState> },
    /// Close listener `id`, then say so; its connections go on.
    Unlisten { id: u64, done: oneshot::Sender<()> },
    /// This backend's drain deadline was set: close its connections when it passes (unless it
    /// is cleared first).
    Drain(Arc<BackendState>),
    /// End the loop and every connection on it.
    Stop,
}

/// The data-plane threads. Dropping it stops them and every connection they carry.
pub(crate) struct Engine {
    control: Control,
}

/// The way to one data-plane thread.
struct Worker {
    commands: mpsc::Sender<Command>,
    waker: mio::Waker,
}

/// Sends commands to every data-plane thread; cheap to clone.
#[derive(Clone)]
pub(crate) struct Control(Arc<Vec<Worker>>);

impl Control {
    fn send(worker: &Worker, command: Command) {
        // A thread that is gone has nothing left to act on; a failed wake-up only happens when
        // its loop has ended.
        if worker.commands.send(command).is_ok() {
            let _ = worker.waker.wake();
        }
    }

    /// Tells every thread that `backend`'s drain deadline was set.
    pub fn drain(&self, backend: &Arc<BackendState>) {
        for w in self.0.iter() {
            Control::send(w, Command::Drain(backend.clone()));
        }
    }
}

impl Engine {
    /// Starts `threads` (at least one) data-plane threads.
    pub fn start(threads: usize) -> io::Result<Engine> {
        let mut workers = Vec::new();
        for i in 0..threads.max(1) {
            let poll = mio::Poll::new()?;
            let waker = mio::Waker::new(poll.registry(), crate::proxy::WAKER)?;
            let (commands, received) = mpsc::channel();
            std::thread::Builder::new()
                .name(format!("herd-lb-{i}"))
                .spawn(move || crate::proxy::run(poll, received))?;
            workers.push(Worker { commands, waker });
        }
        Ok(Engine { control: Control(Arc::new(workers)) })
    }

    pub fn threads(&self) -> usize {
        self.control.0.len()
    }

    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Binds `addr` once per thread (sharing the port with `SO_REUSEPORT` when there is more
    /// than one) and has each thread accept on its socket. Nothing runs unless every socket was
    /// bound.
    pub fn listen(&self, addr: SocketAddr, backlog: u32, state: &Arc<FrontendState>) -> io::Result<AcceptLoops> {
        static IDS: AtomicU64 = AtomicU64::new(1);
        let workers = &self.control.0;
        let shared = workers.len() > 1;
        if shared {
            // A port that another process shares with SO_REUSEPORT (same user) would accept
            // our sockets into its group and split the traffic; an exclusive bind first (no
            // listen, so no connection can arrive on it) makes that "address in use", as with
            // one thread.
            drop(socket(addr, false)?);
        }
        let listeners = (0..workers.len()).map(|_| bind(addr, backlog, shared)).collect::<io::Result<Vec<_>>>()?;
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        for (worker, listener) in workers.iter().zip(listeners) {
            Control::send(worker, Command::Listen { id, listener, state: state.clone() });
        }
        Ok(AcceptLoops { control: self.control.clone(), id })
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        for w in self.control.0.iter() {
            Control::send(w, Command::Stop);
        }
    }
}

/// A frontend's listeners, one per data-plane thread.
pub(crate) struct AcceptLoops {
    control: Control,
    id: u64,
}

impl AcceptLoops {
    /// Stops accepting (the sockets close) and waits until every thread closed its socket;
    /// connections go on.
    pub async fn stop(self) {
        let mut closed = Vec::new();
        for w in self.control.0.iter() {
            let (done, when) = oneshot::channel();
            Control::send(w, Command::Unlisten { id: self.id, done });
            closed.push(when);
        }
        for when in closed {
            let _ = when.await;
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

/// A listening socket, non-blocking, not yet registered with any event loop.
fn bind(addr: SocketAddr, backlog: u32, shared: bool) -> io::Result<std::net::TcpListener> {
    // `listen` registers with the calling runtime (`apply` runs in one); `into_std` takes it
    // back out, non-blocking.
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
        let listener =
            tokio::net::TcpListener::from_std(bind("127.0.0.1:0".parse().unwrap(), 16, false).unwrap()).unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap(), "the proxy relies on it instead of a setsockopt per connection");
        drop(client);
    }
}
