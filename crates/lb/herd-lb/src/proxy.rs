//! The per-connection hot path: one hand-written event loop per data-plane thread that accepts,
//! picks a backend, connects with fallback and splices bytes.
//!
//! Why a `mio` loop and not a task per connection on a single-threaded Tokio runtime (sessions
//! 9–10): `herd bench lb` showed herd making as many system calls per request as HAProxy, yet
//! at 10,000 keep-alive connections reaching 0.92× its requests per second with 6 % more CPU per
//! request. The difference was user-space bookkeeping per readiness event: the reactor's
//! `ScheduledIo` readiness and waker slots, waking and scheduling the connection's task, its
//! `select!` polling both directions, the timer and the drain watch on every wake. Here an
//! event goes straight to the connection it names (the token holds its slot), only the socket
//! that became ready is acted on, and a deadline is a heap entry looked at once per loop turn
//! (see `timers`). What the bench showed (docs/benchmarks.md, "Load balancer", "Session 11"):
//! CPU per request fell by 15–30 % with 64 to 9,900 keep-alive connections, to 0.76–0.94×
//! HAProxy's in every shape and run (before: 0.91–1.03×); requests per second and p99 stayed
//! at parity within the noise, because on the bench's two CPUs the load generator's CPU, not
//! the load balancer's, is the one that is saturated. Polling without blocking for a while
//! after the last event (to spare that CPU the wake-ups) did not raise throughput and cost
//! CPU, so the loop blocks as soon as it has nothing to do.
//!
//! The loop, per turn: `epoll_wait` (edge-triggered; until the earliest deadline), then for each
//! event: a command from the control side (see `engine::Command`), a listener (accept until
//! the kernel has no more, or a budget), or a connection socket (record its readiness, then
//! act); then the due deadlines; then connections that used up their budget last turn.
//!
//! Readiness is remembered per socket (`readable`, `writable`) and forgotten only when the
//! kernel says so: a read or write returns `WouldBlock`, a write is short (the send buffer is
//! full), or a read is short (the receive queue is empty) unless the peer's end of stream was
//! already signalled (then it must still be read). Edge-triggered epoll reports any later change,
//! so nothing is registered or re-armed after the first time.
//!
//! What `herd bench lb` taught earlier (kept here):
//! - a direction holds a copy buffer only between "readable" and "all written" (taken from and
//!   returned to the thread's pool, see `buffers`): with 10,000 mostly idle connections a few
//!   hot buffers serve them all;
//! - the direction that ends last does not `shutdown` its writer: the socket is closed right
//!   after, which sends the FIN anyway (one system call fewer per connection);
//! - accepted sockets inherit TCP_NODELAY from the listener (see `engine`).
//!
//! A connection's lifecycle ([`Phase`]). Every change of phase is decided in one place,
//! [`transition`]: it takes the phase and what happened ([`Input`]: the connect attempt's socket
//! reported, copying stopped, the connection's timer came due, its backend's drain deadline
//! passed) and returns the [`Step`] to take; it does no I/O and changes nothing. `Worker::step`
//! is the one place that carries a step out (connects, arms the timer, replaces the phase,
//! closes). Within `Open`, each [`Direction`] goes from `Copying` to `Ended` in `pump`.
//!
//! ```text
//!  accepted ──(over max_connections / no backend / last attempt failed)──> dropped
//!     │ first candidate (Maglev lookup)
//!     ▼
//!  Connecting{attempt k} ──refused / timed out, next candidate──> Connecting{attempt k+1}
//!     │ connected                      └──(no candidate left)──> Closed (rejected_connect_failed)
//!     ▼
//!  Open{up: Copying, down: Copying}
//!     │ one direction reads end of stream and has written everything:
//!     │ it shuts down its writer (half-close passes through)
//!     ▼
//!  Open{one Ended, other Copying}
//!     │ the other ends too / an error / idle timeout / the backend's drain deadline
//!     ▼
//!  Closed (both sockets closed; counters released; `drained` signalled if this was the last
//!          connection of a backend out of rotation)
//! ```

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token};

use crate::buffers::Buffer;
use crate::dataplane::{BackendActive, BackendState, FrontendState, Snapshot};
use crate::engine::Command;
use crate::maglev::flow_hash;
use crate::metrics::inc;
use crate::timers::Timers;

/// The token of the thread's `mio::Waker` (commands are waiting).
pub(crate) const WAKER: Token = Token(usize::MAX);
/// Set in a listener's token; the rest is its slot.
const LISTENER: usize = 1 << 62;
/// A connection socket's token: generation << 32 | slot << 2 | side.
const SIDE_BITS: usize = 2;
const SLOT_MASK: usize = (1 << 30) - 1;
const GEN_MASK: u32 = (1 << 28) - 1;
/// Sides: the client, or the server of an even or an odd connect attempt (so that an event
/// of a failed attempt's socket, still in the batch when the next attempt's socket is
/// registered, is not taken for the new one's).
const CLIENT: usize = 0;

/// Reads per direction, and accepts per listener, before other sockets get a turn.
const BUDGET: usize = 16;
const ACCEPT_BUDGET: usize = 64;
/// Pause after an accept error other than "nothing to accept" (EMFILE and friends).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

fn conn_token(slot: usize, gen: u32, side: usize) -> Token {
    Token(((gen & GEN_MASK) as usize) << 32 | slot << SIDE_BITS | side)
}

fn server_side(attempt: usize) -> usize {
    1 + (attempt & 1)
}

/// `t + d`, or a year after `t` when that overflows.
fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or_else(|| t + Duration::from_secs(365 * 24 * 3600))
}

/// Runs one data-plane thread until [`Command::Stop`] (or the engine is gone).
pub(crate) fn run(mut poll: Poll, commands: mpsc::Receiver<Command>) {
    let mut w = Worker {
        listeners: Slab::new(),
        conns: Slab::new(),
        timers: Timers::new(),
        again: Vec::new(),
        now: Instant::now(),
        commands,
    };
    let mut events = Events::with_capacity(1024);
    let mut again = Vec::new();
    loop {
        let timeout = if w.again.is_empty() {
            w.timers.next().map(|at| at.saturating_duration_since(w.now))
        } else {
            Some(Duration::ZERO)
        };
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("load balancer event loop failed: {e}");
            return;
        }
        w.now = Instant::now();
        let registry = poll.registry();
        for ev in events.iter() {
            match ev.token() {
                WAKER => {
                    if w.commands(registry) == Flow::Stop {
                        return;
                    }
                }
                Token(t) if t & LISTENER != 0 => w.accept(registry, t & !LISTENER),
                Token(t) => w.conn_event(registry, t, Some(ev)),
            }
        }
        w.expire(registry);
        std::mem::swap(&mut again, &mut w.again);
        for t in again.drain(..) {
            if t & LISTENER != 0 {
                w.accept(registry, t & !LISTENER);
            } else {
                w.conn_event(registry, t, None);
            }
        }
    }
}

#[derive(PartialEq)]
enum Flow {
    Go,
    Stop,
}

/// A slab with generations: a slot's generation changes when it is freed, so a stale token or
/// timer entry does not reach the slot's next occupant.
struct Slab<T> {
    slots: Vec<(u32, Option<T>)>,
    free: Vec<usize>,
}

impl<T> Slab<T> {
    fn new() -> Self {
        Slab { slots: Vec::new(), free: Vec::new() }
    }

    /// The slot and generation the next [`Slab::insert`] will use.
    fn vacant(&self) -> (usize, u32) {
        match self.free.last() {
            Some(&i) => (i, self.slots[i].0),
            None => (self.slots.len(), 0),
        }
    }

    fn insert(&mut self, item: T) -> (usize, u32) {
        match self.free.pop() {
            Some(i) => {
                self.slots[i].1 = Some(item);
                (i, self.slots[i].0)
            }
            None => {
                self.slots.push((0, Some(item)));
                (self.slots.len() - 1, 0)
            }
        }
    }

    fn get_mut(&mut self, slot: usize, gen: u32) -> Option<&mut T> {
        match self.slots.get_mut(slot) {
            Some((g, item)) if *g == gen => item.as_mut(),
            _ => None,
        }
    }

    /// Whatever is in `slot`, of any generation.
    fn at(&mut self, slot: usize) -> Option<&mut T> {
        self.slots.get_mut(slot)?.1.as_mut()
    }

    fn remove(&mut self, slot: usize) -> Option<T> {
        let (gen, item) = self.slots.get_mut(slot)?;
        let item = item.take()?;
        *gen = gen.wrapping_add(1) & GEN_MASK;
        self.free.push(slot);
        Some(item)
    }

    fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.slots.iter().enumerate().filter_map(|(i, (_, item))| item.as_ref().map(|t| (i, t)))
    }

    /// The slot and generation of every occupant.
    fn keys(&self) -> Vec<(usize, u32)> {
        self.slots.iter().enumerate().filter(|(_, (_, item))| item.is_some()).map(|(i, (gen, _))| (i, *gen)).collect()
    }
}

/// What a deadline in the thread's heap is for.
enum Key {
    /// A connection's earliest deadline (see [`Conn::armed`]).
    Conn { slot: usize, gen: u32 },
    /// A backend's drain deadline: close its connections on this thread.
    Drain(Arc<BackendState>),
    /// A listener paused after an accept error.
    Accept(usize),
}

struct Listener {
    id: u64,
    socket: TcpListener,
    state: Arc<FrontendState>,
    paused: bool,
}

struct Worker {
    listeners: Slab<Listener>,
    conns: Slab<Conn>,
    timers: Timers<Key>,
    /// Tokens to act on again without waiting for an event (their budget ran out).
    again: Vec<usize>,
    /// The time of this loop turn.
    now: Instant,
    commands: mpsc::Receiver<Command>,
}

/// One socket and what the kernel last said about it.
struct Side {
    sock: TcpStream,
    /// Which side this is in the socket's token.
    side: usize,
    readable: bool,
    writable: bool,
    /// The peer's end of stream was signalled: read until `read` returns 0.
    read_closed: bool,
}

impl Side {
    fn new(sock: TcpStream, side: usize, writable: bool) -> Self {
        Side { sock, side, readable: false, writable, read_closed: false }
    }

    fn ready(&mut self, ev: &Event) {
        // An error is reported by the next read or write, so either makes the socket "ready".
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            self.readable = true;
        }
        if ev.is_read_closed() {
            self.read_closed = true;
        }
        if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
            self.writable = true;
        }
    }
}

/// A proxied connection's state; see the module doc for the diagram.
enum Phase {
    Connecting(Connecting),
    Open(Open),
    /// Only between two phases and on the way out.
    Closed,
}

struct Connecting {
    server: Side,
    /// Counts the attempt as an open connection of its backend, so a drain cannot end early
    /// under a connection being set up.
    backend: BackendActive,
    addr: SocketAddr,
    deadline: Instant,
    /// Held until connected (for the fallbacks), then dropped: old tables are not pinned for
    /// the life of a connection.
    snap: Arc<Snapshot>,
    hash: u64,
    first: usize,
    attempt: usize,
    /// The client, for admitting it to a fallback backend.
    peer: SocketAddr,
}

struct Open {
    server: Side,
    backend: BackendActive,
    /// Client to server.
    up: Direction,
    /// Server to client.
    down: Direction,
}

/// One direction of an open connection.
enum Direction {
    /// Copying; `Some` while a chunk read from the source is not all written yet.
    Copying(Option<Pending>),
    /// The source's end of stream was read and everything before it written.
    Ended,
}

struct Pending {
    buf: Buffer,
    start: usize,
    end: usize,
}

/// What [`pump`] stopped at.
enum Pumped {
    /// Waiting for the kernel (source not readable or destination not writable).
    Blocked,
    /// Read its budget; more may be ready.
    Budget,
    /// Just read the end of stream, everything written.
    Ended,
}

/// Why a proxied connection ended (for logs).
#[derive(Debug)]
enum End {
    Done,
    Error(io::Error),
    Idle,
    Drained,
}

/// What happened to a connection, as [`transition`] sees it.
enum Input<'a> {
    /// Its connect attempt's socket reported readiness: what `SO_ERROR` said, and whether the
    /// socket is writable (then the connect completed).
    ConnectReady { error: Option<io::Error>, writable: bool },
    /// Copying in both directions stopped ([`Conn::drive`]).
    Pumped(Result<Pumped, End>),
    /// Its timer came due.
    Due,
    /// The drain deadline of this backend passed.
    BackendDrained(&'a Arc<BackendState>),
}

/// What to do with a connection next; decided by [`transition`], carried out by `Worker::step`.
#[derive(Debug)]
enum Step {
    /// Nothing until the next event.
    Wait,
    /// Nothing yet, but the timer must come due by then.
    Arm(Instant),
    /// Connected: `Connecting` becomes `Open`, then copies at once.
    Open,
    /// The connect attempt failed: `Connecting` to the next candidate, or rejected when none
    /// is left.
    Retry(Failed),
    /// Its copying used up a budget: again next loop turn.
    Again,
    Close(End),
}

/// Why a connect attempt failed (for logs).
#[derive(Debug)]
enum Failed {
    Error(io::Error),
    TimedOut,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Error(e) => write!(f, "connect failed: {e}"),
            Failed::TimedOut => f.write_str("connect timed out"),
        }
    }
}

/// The connection state machine: given the `phase`, what happened, the loop turn's time `now`
/// and the connection's last activity and idle timeout, the step to take. No I/O, no change.
fn transition(phase: &Phase, input: Input<'_>, now: Instant, last: Instant, idle: Duration) -> Step {
    match (phase, input) {
        (Phase::Open(_), Input::Pumped(Ok(Pumped::Budget))) => Step::Again,
        (Phase::Open(_), Input::Pumped(Ok(Pumped::Blocked | Pumped::Ended))) => Step::Wait,
        (Phase::Open(_), Input::Pumped(Err(end))) => Step::Close(end),
        (Phase::Connecting(_), Input::ConnectReady { error: Some(e), .. }) => Step::Retry(Failed::Error(e)),
        (Phase::Connecting(_), Input::ConnectReady { error: None, writable }) => {
            if writable {
                Step::Open
            } else {
                Step::Wait
            }
        }
        (Phase::Connecting(c), Input::Due) if c.deadline <= now => Step::Retry(Failed::TimedOut),
        (Phase::Connecting(c), Input::Due) => Step::Arm(c.deadline),
        (Phase::Open(o), Input::Due) => {
            let drain = o.backend.backend().drain_deadline();
            let idle_at = after(last, idle);
            if drain.is_some_and(|d| d <= now) {
                Step::Close(End::Drained)
            } else if idle_at <= now {
                Step::Close(End::Idle)
            } else {
                Step::Arm(drain.map_or(idle_at, |d| d.min(idle_at)))
            }
        }
        (Phase::Open(o), Input::BackendDrained(b)) if Arc::ptr_eq(o.backend.backend(), b) => Step::Close(End::Drained),
        // Copying results outside `Open`, connect results outside `Connecting`, another
        // backend's drain, anything in `Closed`: nothing to do.
        (_, Input::Pumped(_) | Input::ConnectReady { .. } | Input::BackendDrained(_) | Input::Due) => Step::Wait,
    }
}

/// A rule's count of one connection; dropping it takes the count back.
struct RuleActive(Arc<FrontendState>);

impl Drop for RuleActive {
    fn drop(&mut self) {
        self.0.counters.c.active.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Conn {
    // Fields drop in order: the sockets close before the counts are released.
    client: Side,
    phase: Phase,
    rule: RuleActive,
    idle: Duration,
    /// Last time bytes were read from either side (this thread's loop-turn clock).
    last: Instant,
    /// The deadline of this connection's live heap entry; entries with another deadline are
    /// stale. Only an earlier deadline pushes a new entry (activity does not).
    armed: Option<Instant>,
}

impl Conn {
    /// Makes sure a heap entry comes due no later than `at`.
    fn arm(&mut self, timers: &mut Timers<Key>, slot: usize, gen: u32, at: Instant) {
        if self.armed.is_none_or(|armed| at < armed) {
            timers.push(at, Key::Conn { slot, gen });
            self.armed = Some(at);
        }
    }

    /// Copies in both directions as far as the sockets allow; `Err` ends the connection.
    fn drive(&mut self, now: Instant) -> Result<Pumped, End> {
        let Phase::Open(open) = &mut self.phase else {
            return Ok(Pumped::Blocked);
        };
        let state = &self.rule.0;
        let size = state.options.buffer_size.max(1024);
        let rule = &state.counters.c;
        let b = &open.backend.backend().counters;
        let up = pump(
            &mut self.client,
            &mut open.server,
            &mut open.up,
            size,
            [&rule.bytes_in, &b.bytes_in],
            &mut self.last,
            now,
        );
        let up = half_close(up, &open.down, &open.server)?;
        let down = pump(
            &mut open.server,
            &mut self.client,
            &mut open.down,
            size,
            [&rule.bytes_out, &b.bytes_out],
            &mut self.last,
            now,
        );
        let down = half_close(down, &open.up, &self.client)?;
        Ok(if matches!((up, down), (Pumped::Budget, _) | (_, Pumped::Budget)) {
            Pumped::Budget
        } else {
            Pumped::Blocked
        })
    }
}

/// After a direction pumped: when it just ended, the connection is done if the other direction
/// has ended too; otherwise its destination's writer is shut down, so the peer sees the end of
/// stream while the other direction goes on.
fn half_close(pumped: io::Result<Pumped>, other: &Direction, dst: &Side) -> Result<Pumped, End> {
    match pumped {
        Err(e) => Err(End::Error(e)),
        Ok(Pumped::Ended) if matches!(other, Direction::Ended) => Err(End::Done),
        Ok(Pumped::Ended) => match dst.sock.shutdown(Shutdown::Write) {
            Ok(()) => Ok(Pumped::Blocked),
            Err(e) => Err(End::Error(e)),
        },
        Ok(p) => Ok(p),
    }
}

/// Copies from `src` to `dst` until one of them would block, the source ends, or `BUDGET`
/// reads. A buffer is held only while a chunk is in flight.
fn pump(
    src: &mut Side,
    dst: &mut Side,
    dir: &mut Direction,
    size: usize,
    bytes: [&AtomicU64; 2],
    last: &mut Instant,
    now: Instant,
) -> io::Result<Pumped> {
    let Direction::Copying(pending) = dir else {
        return Ok(Pumped::Blocked);
    };
    let mut reads = 0;
    loop {
        if let Some(p) = pending {
            if !dst.writable {
                return Ok(Pumped::Blocked);
            }
            match dst.sock.write(&p.buf.bytes()[p.start..p.end]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    p.start += n;
                    if p.start < p.end {
                        // A short write: the send buffer is full.
                        dst.writable = false;
                        return Ok(Pumped::Blocked);
                    }
                    for c in bytes {
                        c.fetch_add(p.end as u64, Ordering::Relaxed);
                    }
                    *pending = None;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    dst.writable = false;
                    return Ok(Pumped::Blocked);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if !src.readable {
            return Ok(Pumped::Blocked);
        }
        if reads == BUDGET {
            return Ok(Pumped::Budget);
        }
        reads += 1;
        let mut buf = Buffer::take(size);
        match src.sock.read(buf.bytes()) {
            Ok(0) => {
                *dir = Direction::Ended;
                return Ok(Pumped::Ended);
            }
            Ok(n) => {
                if n < size && !src.read_closed {
                    // The receive queue is empty; epoll reports the next arrival.
                    src.readable = false;
                }
                // Idle means no bytes in either direction, so a read marks activity; a slow
                // write that completes later is not new traffic.
                *last = now;
                *pending = Some(Pending { buf, start: 0, end: n });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                src.readable = false;
                return Ok(Pumped::Blocked);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The backend index of connect attempt `attempt` (0: the flow's own; then the next distinct
/// backends in table order), or `None` when there is none left. The fallbacks are listed only
/// on a failure, so the usual path allocates nothing.
fn target(snap: &Snapshot, hash: u64, first: usize, attempt: usize, max: usize) -> Option<usize> {
    if attempt == 0 {
        return Some(first);
    }
    if attempt >= max {
        return None;
    }
    snap.table.as_ref()?.candidates(hash, max).get(attempt).copied()
}

/// A non-blocking connect to `addr`, from `source` when given (bound first, any port).
fn start_connect(addr: SocketAddr, source: Option<std::net::IpAddr>) -> io::Result<TcpStream> {
    let Some(source) = source else { return TcpStream::connect(addr) };
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// Starts connect attempts from `attempt` on, until one is under way; counts each that fails
/// at once, and skips fallbacks that do not admit `peer`. `None` when no candidate is left.
#[allow(clippy::too_many_arguments)]
fn connect(
    registry: &Registry,
    now: Instant,
    state: &FrontendState,
    snap: Arc<Snapshot>,
    (hash, first, peer): (u64, usize, SocketAddr),
    mut attempt: usize,
    (slot, gen): (usize, u32),
) -> Option<Connecting> {
    let max = state.options.max_connect_attempts.max(1);
    loop {
        let i = target(&snap, hash, first, attempt, max)?;
        let (backend, addr, route) = &snap.active[i];
        if attempt > 0 && !route.admits(peer, *addr) {
            attempt += 1;
            continue;
        }
        let active = backend.open();
        let side = server_side(attempt);
        let started = start_connect(*addr, route.source).and_then(|mut sock| {
            registry.register(&mut sock, conn_token(slot, gen, side), Interest::READABLE | Interest::WRITABLE)?;
            Ok(sock)
        });
        match started {
            Ok(sock) => {
                return Some(Connecting {
                    server: Side::new(sock, side, false),
                    backend: active,
                    addr: *addr,
                    deadline: after(now, state.options.connect_timeout),
                    snap,
                    hash,
                    first,
                    attempt,
                    peer,
                })
            }
            Err(e) => {
                tracing::debug!(rule = %snap.name, backend = %backend.id, %addr, "connect failed: {e}");
                drop(active);
                connect_failed(state, backend);
                attempt += 1;
            }
        }
    }
}

fn connect_failed(state: &FrontendState, backend: &BackendState) {
    inc(&backend.counters.failed_connects);
    inc(&state.counters.c.failed_connects);
}

impl Worker {
    fn commands(&mut self, registry: &Registry) -> Flow {
        loop {
            match self.commands.try_recv() {
                Ok(Command::Listen { id, listener, state }) => {
                    let mut socket = TcpListener::from_std(listener);
                    let (slot, _) = self.listeners.vacant();
                    match registry.register(&mut socket, Token(LISTENER | slot), Interest::READABLE) {
                        Ok(()) => {
                            self.listeners.insert(Listener { id, socket, state, paused: false });
                        }
                        Err(e) => tracing::error!(frontend = %state.frontend, "listener not registered: {e}"),
                    }
                }
                Ok(Command::Unlisten { id, done }) => {
                    let found = self.listeners.iter().find(|(_, l)| l.id == id).map(|(slot, _)| slot);
                    if let Some(slot) = found {
                        self.listeners.remove(slot);
                    }
                    let _ = done.send(());
                }
                Ok(Command::Drain(backend)) => {
                    if let Some(at) = backend.drain_deadline() {
                        self.timers.push(at, Key::Drain(backend));
                    }
                }
                Ok(Command::Stop) | Err(mpsc::TryRecvError::Disconnected) => return Flow::Stop,
                Err(mpsc::TryRecvError::Empty) => return Flow::Go,
            }
        }
    }

    fn accept(&mut self, registry: &Registry, slot: usize) {
        for _ in 0..ACCEPT_BUDGET {
            let Some(l) = self.listeners.at(slot) else { return };
            if l.paused {
                return;
            }
            match l.socket.accept() {
                Ok((stream, peer)) => {
                    let state = l.state.clone();
                    self.open(registry, state, stream, peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
                Err(e) => {
                    tracing::warn!(frontend = %l.state.frontend, "accept failed: {e}");
                    l.paused = true;
                    self.timers.push(after(self.now, ACCEPT_BACKOFF), Key::Accept(slot));
                    return;
                }
            }
        }
        self.again.push(LISTENER | slot);
    }

    /// A new client connection: admission, then the first connect attempt.
    fn open(&mut self, registry: &Registry, state: Arc<FrontendState>, stream: TcpStream, peer: SocketAddr) {
        let counters = &state.counters;
        inc(&counters.c.total);
        let before = counters.c.active.fetch_add(1, Ordering::Relaxed);
        let rule = RuleActive(state);
        let state = &rule.0;
        let snap = state.load();
        if snap.max_connections.is_some_and(|max| before >= max) {
            inc(&state.counters.rejected_limit);
            return; // dropping `stream` closes it
        }
        if snap.active.is_empty() {
            inc(&state.counters.rejected_no_backend);
            return;
        }
        let hash = flow_hash(snap.distribution, peer, state.frontend);
        let first = snap.table.as_ref().and_then(|t| t.lookup(hash)).unwrap_or(0);
        // The flow's backend decides, as the NIC's NSG does in Azure (no other backend is tried).
        let (_, addr, route) = &snap.active[first];
        if !route.admits(peer, *addr) {
            inc(&state.counters.rejected_denied);
            return;
        }
        let (slot, gen) = self.conns.vacant();
        // A new socket's send buffer is empty: writable until a write says otherwise.
        let mut client = Side::new(stream, CLIENT, true);
        if let Err(e) =
            registry.register(&mut client.sock, conn_token(slot, gen, CLIENT), Interest::READABLE | Interest::WRITABLE)
        {
            tracing::warn!(frontend = %state.frontend, "connection not registered: {e}");
            return;
        }
        let idle = snap.idle_timeout;
        let Some(connecting) = connect(registry, self.now, state, snap, (hash, first, peer), 0, (slot, gen)) else {
            inc(&state.counters.rejected_connect_failed);
            return;
        };
        let deadline = connecting.deadline;
        let conn = Conn { client, phase: Phase::Connecting(connecting), rule, idle, last: self.now, armed: None };
        let (slot, gen) = self.conns.insert(conn);
        if let Some(conn) = self.conns.get_mut(slot, gen) {
            conn.arm(&mut self.timers, slot, gen, deadline);
        }
    }

    /// An event on a connection's socket (or, with `ev` `None`, its turn after a used-up budget).
    fn conn_event(&mut self, registry: &Registry, token: usize, ev: Option<&Event>) {
        let slot = (token >> SIDE_BITS) & SLOT_MASK;
        let gen = (token >> 32) as u32 & GEN_MASK;
        let side = token & ((1 << SIDE_BITS) - 1);
        let now = self.now;
        let Some(conn) = self.conns.get_mut(slot, gen) else {
            return; // closed since
        };
        let server_event = side != CLIENT;
        if let Some(ev) = ev {
            let server = match &mut conn.phase {
                Phase::Connecting(c) => &mut c.server,
                Phase::Open(o) => &mut o.server,
                Phase::Closed => return,
            };
            if side == CLIENT {
                conn.client.ready(ev);
            } else if side == server.side {
                server.ready(ev);
            } else {
                return; // an earlier attempt's socket
            }
        }
        let input = if let Phase::Connecting(c) = &conn.phase {
            if !server_event {
                return; // the client waits until the backend answers
            }
            let error = c.server.sock.take_error().unwrap_or_else(Some);
            Input::ConnectReady { error, writable: c.server.writable }
        } else {
            Input::Pumped(conn.drive(now))
        };
        self.step(registry, slot, gen, input);
    }

    /// Feeds `input` to connection `slot`'s [`transition`] and carries the step out; the only
    /// place that changes a connection's phase.
    fn step(&mut self, registry: &Registry, slot: usize, gen: u32, mut input: Input<'_>) {
        let now = self.now;
        loop {
            let Some(conn) = self.conns.get_mut(slot, gen) else { return };
            match transition(&conn.phase, input, now, conn.last, conn.idle) {
                Step::Wait => return,
                Step::Arm(at) => return conn.arm(&mut self.timers, slot, gen, at),
                Step::Again => return self.again.push(conn_token(slot, gen, CLIENT).0),
                Step::Close(end) => return self.close(slot, end),
                Step::Open => {
                    let Phase::Connecting(c) = std::mem::replace(&mut conn.phase, Phase::Closed) else { return };
                    // The client's socket has TCP_NODELAY from its listener (see `engine`).
                    let _ = c.server.sock.set_nodelay(true);
                    let backend = c.backend;
                    inc(&backend.backend().counters.total);
                    conn.last = now;
                    if let Some(drain) = backend.backend().drain_deadline() {
                        conn.arm(&mut self.timers, slot, gen, drain);
                    }
                    conn.phase = Phase::Open(Open {
                        server: c.server,
                        backend,
                        up: Direction::Copying(None),
                        down: Direction::Copying(None),
                    });
                    input = Input::Pumped(conn.drive(now));
                }
                Step::Retry(why) => {
                    let Phase::Connecting(c) = std::mem::replace(&mut conn.phase, Phase::Closed) else { return };
                    let Connecting { server, backend, snap, hash, first, attempt, addr, peer, .. } = c;
                    tracing::debug!(rule = %snap.name, backend = %backend.backend().id, %addr, "{why}");
                    drop(server);
                    let failed = backend.backend().clone();
                    drop(backend);
                    let state = &conn.rule.0;
                    connect_failed(state, &failed);
                    match connect(registry, now, state, snap, (hash, first, peer), attempt + 1, (slot, gen)) {
                        Some(next) => {
                            let deadline = next.deadline;
                            conn.phase = Phase::Connecting(next);
                            conn.arm(&mut self.timers, slot, gen, deadline);
                        }
                        None => {
                            inc(&state.counters.rejected_connect_failed);
                            self.conns.remove(slot);
                        }
                    }
                    return;
                }
            }
        }
    }

    fn close(&mut self, slot: usize, end: End) {
        if let Some(conn) = self.conns.remove(slot) {
            match end {
                End::Error(e) => tracing::trace!(frontend = %conn.rule.0.frontend, "connection ended with error: {e}"),
                other => tracing::trace!(frontend = %conn.rule.0.frontend, "connection ended: {other:?}"),
            }
        }
    }

    /// Acts on every deadline that is due.
    fn expire(&mut self, registry: &Registry) {
        let now = self.now;
        while let Some((at, key)) = self.timers.pop_due(now) {
            match key {
                Key::Conn { slot, gen } => {
                    let Some(conn) = self.conns.get_mut(slot, gen) else { continue };
                    if conn.armed != Some(at) {
                        continue; // superseded by an earlier one
                    }
                    conn.armed = None;
                    self.step(registry, slot, gen, Input::Due);
                }
                Key::Drain(backend) => match backend.drain_deadline() {
                    None => {} // back in rotation
                    Some(d) if d > now => self.timers.push(d, Key::Drain(backend)),
                    Some(_) => {
                        for (slot, gen) in self.conns.keys() {
                            self.step(registry, slot, gen, Input::BackendDrained(&backend));
                        }
                    }
                },
                Key::Accept(slot) => {
                    if let Some(l) = self.listeners.at(slot) {
                        l.paused = false;
                    }
                    self.accept(registry, slot);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::BackendStatus;

    /// An `Open` phase over a real loopback connection, to backend `b`.
    fn open_phase(b: &Arc<BackendState>) -> Phase {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        Phase::Open(Open {
            server: Side::new(TcpStream::from_std(sock), server_side(0), true),
            backend: b.open(),
            up: Direction::Copying(None),
            down: Direction::Copying(None),
        })
    }

    #[test]
    fn open_connections_copy_again_close_on_their_end_idle_and_their_own_backends_drain() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let notify = Arc::new(tokio::sync::Notify::new());
        let (b, other) =
            (Arc::new(BackendState::new("b", addr, notify.clone())), Arc::new(BackendState::new("o", addr, notify)));
        let phase = open_phase(&b);
        let (t0, idle) = (Instant::now(), Duration::from_secs(10));
        let step = |input, now| transition(&phase, input, now, t0, idle);
        assert!(matches!(step(Input::Pumped(Ok(Pumped::Budget)), t0), Step::Again));
        assert!(matches!(step(Input::Pumped(Ok(Pumped::Blocked)), t0), Step::Wait));
        assert!(matches!(step(Input::Pumped(Err(End::Done)), t0), Step::Close(End::Done)));
        assert!(matches!(step(Input::ConnectReady { error: None, writable: true }, t0), Step::Wait));
        // The timer: before the idle deadline it is re-armed for it; at it, the connection ends.
        assert!(matches!(step(Input::Due, t0 + Duration::from_secs(3)), Step::Arm(at) if at == t0 + idle));
        assert!(matches!(step(Input::Due, t0 + idle), Step::Close(End::Idle)));
        // Another backend's drain leaves it alone; its own closes it.
        assert!(matches!(step(Input::BackendDrained(&other), t0), Step::Wait));
        assert!(matches!(step(Input::BackendDrained(&b), t0), Step::Close(End::Drained)));
        // Draining: the drain deadline comes first when earlier than idle, and closes it when due.
        b.set(BackendStatus::Draining, addr, t0 + Duration::from_secs(2));
        assert!(matches!(step(Input::Due, t0), Step::Arm(at) if at == t0 + Duration::from_secs(2)));
        assert!(matches!(step(Input::Due, t0 + Duration::from_secs(2)), Step::Close(End::Drained)));
        // Nothing moves a closed connection.
        for input in [Input::Due, Input::Pumped(Ok(Pumped::Budget)), Input::BackendDrained(&b)] {
            assert!(matches!(transition(&Phase::Closed, input, t0, t0, idle), Step::Wait));
        }
    }

    #[test]
    fn a_freed_slot_gets_a_new_generation_so_stale_tokens_miss() {
        let mut slab = Slab::new();
        let (a, gen_a) = slab.insert("a");
        assert_eq!(slab.vacant(), (1, 0));
        assert_eq!(slab.remove(a), Some("a"));
        assert_eq!(slab.remove(a), None, "removing twice does nothing");
        let (slot, gen) = slab.vacant();
        assert_eq!(slot, a, "the slot is reused");
        assert_ne!(gen, gen_a);
        assert_eq!(slab.insert("b"), (slot, gen));
        assert!(slab.get_mut(a, gen_a).is_none(), "a token of the old occupant misses");
        assert_eq!(slab.get_mut(a, gen), Some(&mut "b"));
        // The generation fits its token field and wraps inside it.
        let token = conn_token(a, GEN_MASK, server_side(1)).0;
        assert_eq!((token >> SIDE_BITS) & SLOT_MASK, a);
        assert_eq!((token >> 32) as u32 & GEN_MASK, GEN_MASK);
        assert_eq!(token & LISTENER, 0);
        assert_ne!(server_side(0), server_side(1));
        assert_ne!(server_side(0), CLIENT);
    }
}
