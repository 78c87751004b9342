//! The spawner: one small long-lived process per process driver that starts every instance's
//! `init` for it.
//!
//! Why: starting an instance from the server itself costs far more than the program it starts.
//! The server is big and multi-threaded, so the standard library `fork`s (or `posix_spawn`s)
//! a large address space; and every `exec` closes the server's inherited descriptors one by
//! one, about 2,400 of them with 1,000 instances (metadata listeners, tokio's pidfds), close to
//! a second of CPU per 1,000 starts. And the hostname needed a launcher program
//! (`herd-instance-init`: new UTS namespace, `sethostname`, `exec ./init`), one more `exec` per
//! instance. The spawner is tiny, single-threaded and holds a handful of descriptors: it starts
//! each child with a `clone` that shares its memory until the child's `execve` (no address space
//! to copy), the child sets the hostname itself before its one `execve`, and inherits
//! nothing of the server (its descriptors are exactly 0, 1 and 2). See `docs/benchmarks.md`,
//! "Provisioning", session 11.
//!
//! The spawner is the launcher binary in another mode (`herd-instance-init --spawner`, or
//! `herd instance-init --spawner`; see [`crate::init::Launcher`]), started once with a socket
//! as its stdin and nothing else. The messages are in [`wire`]; the process side is in `serve`
//! (the only code of this crate allowed `unsafe`, for `clone` and `execve`).
//!
//! The spawner is the parent of what it starts, so it reaps them and reports each wait status
//! (`Exited`); the driver records it as it recorded the status of its own children ("exit
//! status 3", "killed by signal 9"). Liveness is not the spawner's business: the driver watches
//! an instance through its recorded group in `/proc`, as it watches instances a previous server
//! started, so nothing depends on the spawner being there.
//!
//! # Lifecycle
//!
//! ```text
//!                  start: socketpair, spawn `--spawner`, wait for Hello (5 s)
//!   (none) ──────────────────────────────────────────────────────────────▶ serving
//!     ▲   ╲ no Hello (old binary, exec failure, timeout)                     │  │
//!     │    ╲──────────────────▶ unavailable: every start is direct ◀──┐      │  │
//!     │                                                                │      │  │
//!     │      restart (at most 3 times in 10 minutes) ◀── dead ─────────┘      │  │
//!     └──────────────────────────────────────────────────────────────── EOF ◀┘  │
//!                                 (killed, crashed: the driver reaps it, every   │
//!                                  pending start is Lost)                        │
//!                                                                                │
//!   driver dropped: its end is shut ──▶ spawner reads EOF and exits ◀────────────┘
//!   herd dies: PR_SET_PDEATHSIG kills the spawner (the thread that started it lives as long
//!   as the spawner); the instances are process groups of their own and keep running
//! ```
//!
//! A start through the spawner ends in one of four ways ([`Outcome`]): `Started` (recorded as
//! any start), `Failed` (nothing started: recorded as a failed start, as a failed direct
//! spawn is), `Unavailable` (no spawner: the driver starts `init` itself, as before the
//! spawner), or `Lost` (the spawner died while the request was out). A lost request may have
//! started the program, so the driver looks for the instance's processes by their environment
//! first and adopts them, and starts anew only when none is there. That search cannot miss a
//! child still on its way to `execve`: every child holds the spawner's socket until its
//! `execve` closes it, so the driver sees EOF only when each child has executed its program or
//! died (a child set up while its spawner dies is killed by its own death signal, cleared just
//! before `execve`).

mod serve;
pub(crate) mod wire;

pub use serve::serve;

use crate::procfs::ProcId;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use wire::{Frames, Reply, Request};

/// How long a new spawner may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How many times within [`RESTART_WINDOW`] a driver starts a new spawner after one died;
/// beyond that it starts instances directly until the window has room again (a spawner that
/// dies at once each time costs a few starts, not a loop; one that died once a week is always
/// restarted).
const MAX_RESTARTS: usize = 3;
const RESTART_WINDOW: Duration = Duration::from_secs(600);

/// The restarts within the last window. Pure: the caller says what time it is.
#[derive(Debug, Default)]
struct RestartBudget {
    recent: std::collections::VecDeque<Instant>,
}

impl RestartBudget {
    /// Whether a restart may happen at `now`; if so, it is counted.
    fn take(&mut self, now: Instant) -> bool {
        while self.recent.front().is_some_and(|t| now.saturating_duration_since(*t) >= RESTART_WINDOW) {
            self.recent.pop_front();
        }
        if self.recent.len() >= MAX_RESTARTS {
            return false;
        }
        self.recent.push_back(now);
        true
    }
}

/// How a start through the spawner ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The program runs; `exit` gets its wait status when the spawner reaps it (or is dropped
    /// if the spawner dies first).
    Started { id: ProcId, exit: oneshot::Receiver<i32> },
    /// Nothing was started, for this reason.
    Failed(String),
    /// No spawner: nothing was sent.
    Unavailable,
    /// The spawner died while the request was out: the program may or may not run.
    Lost,
}

/// The driver's handle on its spawner (and on the ones that replace it).
pub(crate) struct Spawner {
    program: PathBuf,
    args: Vec<String>,
    link: Mutex<Option<Arc<Link>>>,
    restarts: Mutex<RestartBudget>,
}

impl std::fmt::Debug for Spawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spawner").field("program", &self.program).field("pid", &self.pid()).finish()
    }
}

/// One running spawner.
struct Link {
    pid: u32,
    /// Encoded requests, written by the link's writer thread (a full socket never blocks a
    /// caller). Dropping it ends that thread, which shuts the socket: the spawner's EOF.
    requests: Mutex<mpsc::Sender<Vec<u8>>>,
    shared: Arc<Mutex<Shared>>,
    next_id: AtomicU64,
}

/// What the reader thread and the callers share.
#[derive(Default)]
struct Shared {
    alive: bool,
    pending: HashMap<u64, oneshot::Sender<Outcome>>,
    exits: HashMap<u32, oneshot::Sender<i32>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Spawner {
    /// Starts `program args... --spawner`; `None` (and a warning) if it does not say Hello.
    pub fn start(program: PathBuf, mut args: Vec<String>) -> Option<Spawner> {
        args.push("--spawner".into());
        let link = match Link::start(&program, &args) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(program = %program.display(), error = %e, "cannot start the spawner; instances are started directly");
                return None;
            }
        };
        tracing::debug!(pid = link.pid, "spawner started");
        Some(Spawner { program, args, link: Mutex::new(Some(Arc::new(link))), restarts: Mutex::default() })
    }

    /// The running spawner's pid, if one runs.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.link).as_ref().filter(|l| l.alive()).map(|l| l.pid)
    }

    /// The running link, else a new one (blocking: it starts a process) while the restart
    /// budget allows.
    fn link(&self) -> Option<Arc<Link>> {
        let mut cur = lock(&self.link);
        if let Some(l) = cur.as_ref().filter(|l| l.alive()) {
            return Some(l.clone());
        }
        if !lock(&self.restarts).take(Instant::now()) {
            return None;
        }
        *cur = None;
        match Link::start(&self.program, &self.args) {
            Ok(l) => {
                tracing::warn!(pid = l.pid, "the spawner had died; started a new one");
                *cur = Some(Arc::new(l));
                cur.clone()
            }
            Err(e) => {
                tracing::warn!(error = %e, "the spawner had died and cannot be started again; starting instances directly");
                None
            }
        }
    }

    /// Starts `req` (its `id` is set here) through the spawner.
    pub async fn spawn(self: &Arc<Self>, mut req: Request) -> Outcome {
        let fast = lock(&self.link).as_ref().filter(|l| l.alive()).cloned();
        let link = match fast {
            Some(l) => l,
            None => {
                let me = self.clone();
                match tokio::task::spawn_blocking(move || me.link()).await {
                    Ok(Some(l)) => l,
                    _ => return Outcome::Unavailable,
                }
            }
        };
        req.id = link.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut sh = lock(&link.shared);
            if !sh.alive {
                return Outcome::Unavailable;
            }
            sh.pending.insert(req.id, tx);
        }
        if lock(&link.requests).send(req.encode()).is_err() {
            // The writer is gone, so the spawner is dying: the reader drains `pending`.
            lock(&link.shared).pending.remove(&req.id);
            return Outcome::Lost;
        }
        rx.await.unwrap_or(Outcome::Lost)
    }
}

impl Link {
    fn alive(&self) -> bool {
        lock(&self.shared).alive
    }

    /// Spawns the spawner from a thread of its own, which then reads its answers for as long
    /// as it runs. (`PR_SET_PDEATHSIG` fires when the *thread* that started a process ends, so
    /// that thread must live exactly as long as the spawner.)
    fn start(program: &std::path::Path, args: &[String]) -> std::io::Result<Link> {
        let (ours, theirs) = UnixStream::pair()?;
        let reader = ours.try_clone()?;
        let shared = Arc::new(Mutex::new(Shared { alive: true, ..Shared::default() }));
        let (ready_tx, ready_rx) = mpsc::channel::<std::io::Result<u32>>();
        let (program, args, sh) = (program.to_path_buf(), args.to_vec(), shared.clone());
        std::thread::Builder::new()
            .name("herd-spawner".into())
            .spawn(move || read_replies(program, args, OwnedFd::from(theirs), reader, sh, ready_tx))?;
        let pid = ready_rx.recv().map_err(|_| std::io::Error::other("the spawner thread ended"))??;
        let (req_tx, req_rx) = mpsc::channel::<Vec<u8>>();
        let mut writer = ours;
        std::thread::Builder::new().name("herd-spawner-w".into()).spawn(move || {
            for frame in req_rx {
                if writer.write_all(&frame).is_err() {
                    break;
                }
            }
            let _ = writer.shutdown(Shutdown::Write);
        })?;
        Ok(Link { pid, requests: Mutex::new(req_tx), shared, next_id: AtomicU64::new(1) })
    }
}

/// The reader thread: starts the spawner, waits for its Hello (reported on `ready`), then
/// dispatches its answers until EOF; then reaps it and fails whatever was pending.
fn read_replies(
    program: PathBuf,
    args: Vec<String>,
    theirs: OwnedFd,
    mut sock: UnixStream,
    shared: Arc<Mutex<Shared>>,
    ready: mpsc::Sender<std::io::Result<u32>>,
) {
    let mut child = match std::process::Command::new(&program)
        .args(&args)
        .env_clear()
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut frames = Frames::default();
    let mut buf = vec![0u8; 64 * 1024];
    let _ = sock.set_read_timeout(Some(HELLO_TIMEOUT));
    let mut hello = false;
    loop {
        let n = match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if !hello {
                    let _ = ready.send(Err(std::io::Error::other(format!("no answer from the spawner: {e}"))));
                    let _ = child.kill();
                    hello = true; // reported
                }
                break;
            }
        };
        frames.push(&buf[..n]);
        loop {
            let body = match frames.next_body() {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!("the spawner sent an oversized frame; stopping it");
                    let _ = child.kill();
                    break;
                }
            };
            let Some(reply) = Reply::decode(&body) else {
                tracing::warn!("the spawner sent a frame it cannot read; stopping it");
                let _ = child.kill();
                break;
            };
            match reply {
                Reply::Hello { pid } if !hello => {
                    hello = true;
                    let _ = sock.set_read_timeout(None);
                    let _ = ready.send(Ok(pid));
                }
                Reply::Hello { .. } => {}
                Reply::Started { id, pid, start } => {
                    let (etx, erx) = oneshot::channel();
                    let mut sh = lock(&shared);
                    sh.exits.insert(pid, etx);
                    if let Some(p) = sh.pending.remove(&id) {
                        let _ = p.send(Outcome::Started { id: ProcId { pid, start }, exit: erx });
                    }
                }
                Reply::Failed { id, message } => {
                    if let Some(p) = lock(&shared).pending.remove(&id) {
                        let _ = p.send(Outcome::Failed(message));
                    }
                }
                Reply::Exited { pid, status } => {
                    if let Some(e) = lock(&shared).exits.remove(&pid) {
                        let _ = e.send(status);
                    }
                }
            }
        }
    }
    if !hello {
        let _ = ready.send(Err(std::io::Error::other("the spawner ended before it was ready")));
    }
    // Reaped before anything pending is failed: see the module docs (`Lost`).
    let status = child.wait();
    let mut sh = lock(&shared);
    sh.alive = false;
    let lost = sh.pending.len();
    sh.pending.clear();
    sh.exits.clear();
    drop(sh);
    if hello {
        tracing::debug!(?status, lost, "spawner ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_limited_per_window_not_per_life() {
        let mut b = RestartBudget::default();
        let t0 = Instant::now();
        assert!(b.take(t0) && b.take(t0 + Duration::from_secs(1)) && b.take(t0 + Duration::from_secs(2)));
        assert!(!b.take(t0 + Duration::from_secs(3)), "a fourth restart within the window waits");
        assert!(!b.take(t0 + RESTART_WINDOW - Duration::from_secs(1)));
        assert!(b.take(t0 + RESTART_WINDOW), "the first restart left the window");
        assert!(!b.take(t0 + RESTART_WINDOW), "and only it");
        assert!(b.take(t0 + RESTART_WINDOW * 3), "a spawner that dies once in a while is always restarted");
    }
}
