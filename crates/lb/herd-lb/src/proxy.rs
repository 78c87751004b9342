//! The per-connection hot path: accept, pick a backend, connect with fallback, splice bytes.
//!
//! Why it exists apart from `dataplane`: this is the code that runs per connection and per
//! chunk, so it is kept small and lock-free: one `Arc` snapshot load per connection, relaxed
//! atomic counter adds per chunk, and a single task per connection that drives both
//! directions, one timer (the connect timeout, then the idle timeout) and the drain deadline.
//!
//! What `herd bench lb` taught (see docs/benchmarks.md, "Load balancer"):
//! - a direction holds a copy buffer only between "readable" and "all written" (taken from and
//!   returned to the thread's pool, see `buffers`): with 10,000 mostly idle connections a few hot
//!   buffers serve them all, instead of 20,000 buffers (320 MiB) spread over the caches;
//! - the direction that ends last does not `shutdown` its writer: the socket is closed right
//!   after, which sends the FIN anyway (one system call fewer per connection);
//! - one timer per connection, moved from the connect deadline to the idle deadline, instead of
//!   one per connect attempt and one for idling (each registration takes the timer driver's lock,
//!   and one earlier than every other wakes the driver with a write to its eventfd).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::time::{sleep_until, Instant, Sleep};

use crate::buffers::Buffer;
use crate::dataplane::{BackendState, FrontendState, Snapshot};
use crate::maglev::flow_hash;
use crate::metrics::{inc, ActiveGuard};

/// Accepts until `stop` fires (or its sender is dropped); the listener closes when this returns.
/// Connections run in their own tasks and outlive the listener.
pub(crate) async fn accept_loop(listener: TcpListener, state: Arc<FrontendState>, mut stop: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(handle(state.clone(), stream, peer));
                }
                Err(e) => {
                    // EMFILE/ENFILE and friends: back off instead of spinning.
                    tracing::warn!(frontend = %state.frontend, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        }
    }
}

/// Why a proxied connection ended (for logs).
#[derive(Debug)]
enum End {
    Done,
    Error(io::Error),
    Idle,
    Drained,
}

async fn handle(state: Arc<FrontendState>, client: TcpStream, peer: SocketAddr) {
    let rule = &state.counters;
    inc(&rule.c.total);
    let before = rule.c.active.fetch_add(1, Ordering::Relaxed);
    let _rule_active = ActiveGuard(&rule.c.active);

    let snap = state.load();
    if snap.max_connections.is_some_and(|max| before >= max) {
        inc(&rule.rejected_limit);
        return; // dropping `client` closes it
    }
    if snap.active.is_empty() {
        inc(&rule.rejected_no_backend);
        return;
    }
    // The connection's one timer: the connect deadline first, then the idle deadline.
    let timer = tokio::time::sleep(state.options.connect_timeout);
    tokio::pin!(timer);
    let connected = connect_backend(&state, &snap, peer, timer.as_mut()).await;
    let idle_timeout = snap.idle_timeout;
    drop(snap); // do not pin old tables for the life of the connection
    let Some((backend, mut server)) = connected else {
        inc(&rule.rejected_connect_failed);
        return;
    };
    inc(&backend.counters.total);
    // Counted since the connect attempt (see `connect_one`).
    let backend_active = ActiveGuard(&backend.counters.active);
    // The client's socket has TCP_NODELAY from its listener (see `engine`).
    let _ = server.set_nodelay(true);
    let mut client = client;
    let drain = backend.drain.subscribe();
    let end = splice(&mut client, &mut server, (timer, idle_timeout), drain, &state, &backend).await;
    match end {
        End::Error(e) => tracing::trace!(%peer, backend = %backend.id, "connection ended with error: {e}"),
        other => tracing::trace!(%peer, backend = %backend.id, "connection ended: {other:?}"),
    }
    drop(backend_active);
    if backend.drained() {
        state.drained.notify_one();
    }
}

/// Connects to the flow's backend; when that fails, to the next distinct backends in table
/// order, up to `max_connect_attempts` in all. The fallbacks are listed only on a failure, so
/// the usual path allocates nothing.
/// `timer` is set to the first attempt's deadline; each fallback attempt moves it on.
async fn connect_backend(
    state: &FrontendState,
    snap: &Snapshot,
    peer: SocketAddr,
    mut timer: Pin<&mut Sleep>,
) -> Option<(Arc<BackendState>, TcpStream)> {
    let attempts = state.options.max_connect_attempts.max(1);
    let hash = flow_hash(snap.distribution, peer, state.frontend);
    let first = snap.table.as_ref().and_then(|t| t.lookup(hash)).unwrap_or(0);
    if let Some(ok) = connect_one(state, snap, first, timer.as_mut()).await {
        return Some(ok);
    }
    let fallbacks = match &snap.table {
        Some(table) if attempts > 1 => table.candidates(hash, attempts),
        _ => return None,
    };
    for i in fallbacks.into_iter().skip(1) {
        timer.as_mut().reset(Instant::now() + state.options.connect_timeout);
        if let Some(ok) = connect_one(state, snap, i, timer.as_mut()).await {
            return Some(ok);
        }
    }
    None
}

/// One connection attempt to `snap.active[i]` until `deadline` fires, counted as failed when it
/// fails.
async fn connect_one(
    state: &FrontendState,
    snap: &Snapshot,
    i: usize,
    deadline: Pin<&mut Sleep>,
) -> Option<(Arc<BackendState>, TcpStream)> {
    let (backend, addr) = &snap.active[i];
    // The attempt counts as an open connection of the backend at once: a backend taken out of
    // rotation while a connection to it is still being set up is not idle, so its drain does not
    // end early under that connection. On success the count passes to `handle`'s guard.
    backend.counters.active.fetch_add(1, Ordering::Relaxed);
    let attempt = ActiveGuard(&backend.counters.active);
    tokio::select! {
        biased;
        connected = TcpStream::connect(addr) => match connected {
            Ok(stream) => {
                std::mem::forget(attempt);
                return Some((backend.clone(), stream));
            }
            Err(e) => tracing::debug!(rule = %snap.name, backend = %backend.id, %addr, "connect failed: {e}"),
        },
        _ = deadline => tracing::debug!(rule = %snap.name, backend = %backend.id, %addr, "connect timed out"),
    }
    drop(attempt);
    if backend.drained() {
        state.drained.notify_one();
    }
    inc(&backend.counters.failed_connects);
    inc(&state.counters.c.failed_connects);
    None
}

/// Last activity, as milliseconds since `start`, shared by both directions of one connection.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

async fn splice(
    client: &mut TcpStream,
    server: &mut TcpStream,
    (mut timer, idle): (Pin<&mut Sleep>, Duration),
    drain: watch::Receiver<Option<Instant>>,
    state: &FrontendState,
    backend: &BackendState,
) -> End {
    let activity = Activity { start: Instant::now(), last_ms: AtomicU64::new(0) };
    let size = state.options.buffer_size.max(1024);
    let (client_r, mut client_w) = client.split();
    let (server_r, mut server_w) = server.split();
    let rule = &state.counters.c;
    let b = &backend.counters;
    let one_ended = AtomicBool::new(false);
    let dir = |bytes| Direction { size, activity: &activity, bytes, one_ended: &one_ended };
    let upstream = dir([&rule.bytes_in, &b.bytes_in]).pump(client_r, &mut server_w);
    let downstream = dir([&rule.bytes_out, &b.bytes_out]).pump(server_r, &mut client_w);
    let idle_timer = async {
        loop {
            let deadline = activity.last() + idle;
            if Instant::now() >= deadline {
                return;
            }
            timer.as_mut().reset(deadline);
            timer.as_mut().await;
        }
    };
    tokio::select! {
        r = async { tokio::try_join!(upstream, downstream) } => match r {
            Ok(_) => End::Done,
            Err(e) => End::Error(e),
        },
        _ = idle_timer => End::Idle,
        _ = drained(drain) => End::Drained,
    }
}

/// One direction of a proxied connection.
struct Direction<'a> {
    size: usize,
    activity: &'a Activity,
    bytes: [&'a AtomicU64; 2],
    /// Set by the first direction to reach end of stream.
    one_ended: &'a AtomicBool,
}

impl Direction<'_> {
    /// Copies until EOF or error. At EOF the writer is half-closed, unless the other direction
    /// has ended already: then both sockets are about to close, which sends the FIN.
    async fn pump(self, mut r: ReadHalf<'_>, w: &mut WriteHalf<'_>) -> io::Result<()> {
        loop {
            // Wait without a buffer; hold one only while bytes are in flight. (`poll_read_ready`
            // waits in the socket's reader slot, as the read itself would; `readable()` would
            // queue a waiter in a list, under a lock, each time.)
            std::future::poll_fn(|cx| r.as_ref().poll_read_ready(cx)).await?;
            let mut buf = Buffer::take(self.size);
            let n = r.read_buf(buf.vec()).await?;
            if n == 0 {
                if !self.one_ended.swap(true, Ordering::Relaxed) {
                    w.shutdown().await?;
                }
                return Ok(());
            }
            // Idle means no bytes in either direction, so a read marks activity; a slow write
            // that completes later is not new traffic.
            self.activity.touch();
            w.write_all(buf.vec()).await?;
            for c in self.bytes {
                c.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

/// Resolves when the backend's drain deadline (if any) passes.
async fn drained(mut rx: watch::Receiver<Option<Instant>>) {
    loop {
        let deadline = *rx.borrow_and_update();
        match deadline {
            Some(deadline) => {
                tokio::select! {
                    _ = sleep_until(deadline) => return,
                    changed = rx.changed() => if changed.is_err() {
                        sleep_until(deadline).await;
                        return;
                    },
                }
            }
            None => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}
