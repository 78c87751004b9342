//! The spawner process itself: `herd-instance-init --spawner` (or `herd instance-init
//! --spawner`). It reads requests on its stdin (a socket to herd), starts each with `fork` and
//! `execve`, answers with the pid, and reports every child's wait status when it reaps it.
//!
//! Why `fork` by hand, and why `unsafe` here: a child needs a new UTS namespace and a hostname
//! between `fork` and `exec`, which the standard library offers only through `pre_exec` (itself
//! `unsafe`). The spawner is single-threaded and owns no locks, so its `fork` is cheap and the
//! child may run ordinary code; the child still does nothing but system calls on values built
//! before the `fork`, and ends in `execve` or `_exit`.
//!
//! At its start the spawner closes every descriptor above 2 that it inherited (herd's own are
//! close-on-exec, but whoever started herd may have left it others), moves its socket to a
//! close-on-exec descriptor and puts `/dev/null` on 0.
//!
//! A child, between `fork` and `execve`, in this order: `PR_SET_PDEATHSIG(SIGKILL)` and a check
//! that the spawner is still its parent (so a child whose spawner dies mid-start dies too,
//! before it is anything herd could miss); its own process group; the default signal mask and
//! `SIGPIPE` disposition (the spawner blocks `SIGCHLD`, and Rust ignores `SIGPIPE`); a UTS
//! namespace and the hostname, when asked; `/dev/null` as stdin and the console file as stdout
//! and stderr; the working directory; the death signal cleared and the parent checked once
//! more; `execve`. Every other descriptor of the spawner is close-on-exec, so the program
//! starts with exactly 0, 1 and 2. A failing step writes its number and `errno` to a
//! close-on-exec pipe and exits 127. The spawner does not wait for that pipe: it reads the
//! child's start time at once, goes on with the next request, and polls the pipes of the
//! children still starting beside its socket; when one closes empty (at the `execve`) it
//! answers `Started`, when it carries a step it answers `Failed` with the step and the error.
//! So it answers `Started` only for a program that was executed, and herd hears a child's
//! `Started` before its `Exited` (a child reaped while still listed as starting is answered
//! first).

#![allow(unsafe_code)]

use super::wire::{Frames, Reply, Request};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use std::ffi::{CString, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

/// Serves herd on stdin until it closes (herd ended or dropped its driver), or herd dies
/// (`PR_SET_PDEATHSIG`). The processes it started keep running either way.
pub fn serve() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herd spawner: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    close_inherited();
    let parent = nix::unistd::getppid();
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
    if nix::unistd::getppid() != parent {
        return Ok(()); // herd died before the death signal was armed
    }
    // The socket moves to a close-on-exec descriptor above 2; fd 0 becomes /dev/null.
    let sock = std::io::stdin().as_fd().try_clone_to_owned().map_err(|e| format!("stdin: {e}"))?;
    let devnull = nix::fcntl::open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| format!("/dev/null: {e}"))?;
    nix::unistd::dup2_stdin(&devnull).map_err(|e| format!("dup2: {e}"))?;
    let mut sock = UnixStream::from(sock);
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&chld), None).map_err(|e| format!("sigprocmask: {e}"))?;
    let sfd = SignalFd::with_flags(&chld, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| format!("signalfd: {e}"))?;
    let me = nix::unistd::getpid();
    send(&mut sock, &Reply::Hello { pid: me.as_raw().unsigned_abs() })?;

    let mut frames = Frames::default();
    let mut buf = vec![0u8; 64 * 1024];
    // Children forked but not yet known to have executed their program.
    let mut starting: Vec<Starting> = Vec::new();
    loop {
        let (sock_ready, chld_ready, piped) = {
            let mut fds =
                vec![PollFd::new(sock.as_fd(), PollFlags::POLLIN), PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
            fds.extend(starting.iter().map(|s| PollFd::new(s.errors.as_fd(), PollFlags::POLLIN)));
            match nix::poll::poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(format!("poll: {e}")),
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            let piped: Vec<bool> = fds[2..].iter().map(ready).collect();
            (ready(&fds[0]), ready(&fds[1]), piped)
        };
        // Children that executed their program (or failed to): answered, in the order seen.
        let mut i = 0;
        let mut ready = piped.into_iter();
        while i < starting.len() {
            if ready.next() == Some(true) {
                let s = starting.remove(i);
                send(&mut sock, &s.finish())?;
            } else {
                i += 1;
            }
        }
        if chld_ready {
            while let Ok(Some(_)) = sfd.read_signal() {}
            reap(&mut sock, &mut starting)?;
        }
        if sock_ready {
            let n = match sock.read(&mut buf) {
                Ok(0) => return Ok(()), // herd closed its end: done, children keep running
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("reading requests: {e}")),
            };
            frames.push(&buf[..n]);
            while let Some(body) = frames.next_body().map_err(|e| format!("an oversized request ({} bytes)", e.0))? {
                let req = Request::decode(&body).ok_or("a request it cannot read")?;
                match start(&req, &devnull, me) {
                    Ok(s) => starting.push(s),
                    Err(message) => send(&mut sock, &Reply::Failed { id: req.id, message })?,
                }
            }
        }
    }
}

/// Closes every descriptor above 2 that the spawner was started with. herd opens all of its own
/// close-on-exec, but whoever started herd may have left it some that are not (a build tool's
/// jobserver pipe, a supervisor's socket), and they would reach every instance.
fn close_inherited() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<i32> = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).filter(|fd| *fd > 2).collect();
    for fd in fds {
        // The directory's own descriptor is in the list but already closed: EBADF, ignored.
        let _ = nix::unistd::close(fd);
    }
}

fn send(sock: &mut UnixStream, r: &Reply) -> Result<(), String> {
    sock.write_all(&r.encode()).map_err(|e| format!("answering herd: {e}"))
}

/// Reaps every child that ended and reports each. One still starting is answered first (its
/// pipe is closed now that it is gone), so herd always hears `Started` before `Exited`; one that
/// never executed its program is answered `Failed` and not reported again.
fn reap(sock: &mut UnixStream, starting: &mut Vec<Starting>) -> Result<(), String> {
    loop {
        let (pid, status) = match nix::sys::wait::waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, (code & 0xff) << 8),
            Ok(WaitStatus::Signaled(pid, sig, core)) => (pid, sig as i32 | if core { 0x80 } else { 0 }),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(()),
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(format!("waitpid: {e}")),
        };
        if let Some(i) = starting.iter().position(|s| s.pid == pid) {
            let answer = starting.remove(i).finish();
            let failed = matches!(answer, Reply::Failed { .. });
            send(sock, &answer)?;
            if failed {
                continue;
            }
        }
        send(sock, &Reply::Exited { pid: pid.as_raw().unsigned_abs(), status })?;
    }
}

/// The steps of a child's set-up, as reported through the error pipe.
const STEPS: [&str; 8] = [
    "cannot keep the spawner as its parent",
    "cannot create its process group",
    "cannot reset its signals",
    "cannot create a UTS namespace",
    "cannot set the hostname",
    "cannot open console.log",
    "cannot redirect its output",
    "cannot start init",
];
const STEP_UTS: u8 = 3;
const STEP_HOSTNAME: u8 = 4;
const STEP_CONSOLE: u8 = 5;
const STEP_EXEC: u8 = 7;

fn cstring(s: &OsString, what: &str) -> Result<CString, String> {
    CString::new(s.clone().into_vec()).map_err(|_| format!("cannot start init: its {what} holds a NUL byte"))
}

/// Everything a child uses, built before `fork` (so the child allocates nothing).
struct Prepared {
    program: CString,
    cwd: CString,
    console: CString,
    hostname: Option<OsString>,
    _argv: Vec<CString>,
    _env: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    env_ptrs: Vec<*const libc::c_char>,
}

fn prepare(req: &Request) -> Result<Prepared, String> {
    let argv: Vec<CString> = req.argv.iter().map(|a| cstring(a, "arguments")).collect::<Result<_, _>>()?;
    let env: Vec<CString> = req.env.iter().map(|e| cstring(e, "environment")).collect::<Result<_, _>>()?;
    let ptrs = |v: &[CString]| v.iter().map(|c| c.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    Ok(Prepared {
        program: cstring(&req.program, "program")?,
        cwd: cstring(&req.cwd, "working directory")?,
        console: cstring(&req.console, "console path")?,
        hostname: req.hostname.clone(),
        argv_ptrs: ptrs(&argv),
        env_ptrs: ptrs(&env),
        _argv: argv,
        _env: env,
    })
}

/// A child forked for a request, until its program runs (its error pipe closes empty) or its
/// set-up fails (the pipe carries the step and `errno`).
struct Starting {
    id: u64,
    pid: Pid,
    start: u64,
    errors: OwnedFd,
    hostname: Option<OsString>,
}

impl Starting {
    /// The answer, once the pipe is readable or closed (so this does not wait for long: the
    /// child is executing its program or exiting).
    fn finish(self) -> Reply {
        let mut msg = Vec::with_capacity(5);
        let read = std::fs::File::from(self.errors).read_to_end(&mut msg);
        let (id, pid) = (self.id, self.pid.as_raw().unsigned_abs());
        if msg.is_empty() && read.is_ok() {
            return Reply::Started { id, pid, start: self.start };
        }
        // It exits at once (127) without having run anything: reaped here, never reported.
        let _ = nix::sys::wait::waitpid(self.pid, None);
        let step = msg.first().copied().unwrap_or(STEP_EXEC);
        let errno = msg.get(1..5).and_then(|b| b.try_into().ok()).map_or(0, i32::from_le_bytes);
        let what = STEPS.get(usize::from(step)).copied().unwrap_or("cannot start init");
        let err = std::io::Error::from_raw_os_error(errno);
        let message = match (step, &self.hostname) {
            (STEP_HOSTNAME, Some(h)) => format!("cannot set the hostname to '{}': {err}", h.to_string_lossy()),
            _ => format!("{what}: {err}"),
        };
        Reply::Failed { id, message }
    }
}

/// Forks the child of one request. Its start time is read at once, before anything can reap
/// it; whether its program runs is known later, from its error pipe (see [`Starting`]), so the
/// spawner forks the next request while this child sets itself up and executes.
fn start(req: &Request, devnull: &OwnedFd, me: Pid) -> Result<Starting, String> {
    let p = prepare(req)?;
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("cannot start init: pipe: {e}"))?;
    // SAFETY: this process is single-threaded (the spawner never starts a thread), so the child
    // inherits no lock held by another thread; it runs only `child`, which makes system calls
    // on values prepared above and ends in `execve` or `_exit`, never returning here.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(format!("cannot start init: fork: {e}")),
        Ok(ForkResult::Child) => {
            drop(err_r);
            let (step, errno) = child(&p, devnull, me);
            let mut msg = [0u8; 5];
            msg[0] = step;
            msg[1..].copy_from_slice(&(errno as i32).to_le_bytes());
            let _ = nix::unistd::write(&err_w, &msg);
            // SAFETY: `_exit` ends the child at once, without running the parent's exit
            // handlers or flushing its buffers (they are the spawner's, not the child's).
            unsafe { libc::_exit(127) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(err_w);
            let pid = child.as_raw().unsigned_abs();
            match crate::procfs::read_stat(pid) {
                Some(st) => {
                    Ok(Starting { id: req.id, pid: child, start: st.starttime, errors: err_r, hostname: p.hostname })
                }
                None => {
                    let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                    let _ = nix::sys::wait::waitpid(child, None);
                    Err(format!("cannot read /proc/{pid}/stat of the new init"))
                }
            }
        }
    }
}

/// The child's side: returns only on failure, with the step that failed.
fn child(p: &Prepared, devnull: &OwnedFd, spawner: Pid) -> (u8, Errno) {
    use nix::unistd::getppid;
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        return (0, e);
    }
    if getppid() != spawner {
        return (0, Errno::ESRCH);
    }
    if let Err(e) = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)) {
        return (1, e);
    }
    if let Err(e) = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None) {
        return (2, e);
    }
    // SAFETY: restoring the default disposition installs no handler.
    if let Err(e) = unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) } {
        return (2, e);
    }
    if let Some(h) = &p.hostname {
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS) {
            return (STEP_UTS, e);
        }
        if let Err(e) = nix::unistd::sethostname(h) {
            return (STEP_HOSTNAME, e);
        }
    }
    let mode = Mode::from_bits_truncate(0o666);
    let console = match nix::fcntl::open(
        p.console.as_c_str(),
        OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT | OFlag::O_CLOEXEC,
        mode,
    ) {
        Ok(fd) => fd,
        Err(e) => return (STEP_CONSOLE, e),
    };
    let redirected = nix::unistd::dup2_stdin(devnull)
        .and_then(|()| nix::unistd::dup2_stdout(&console))
        .and_then(|()| nix::unistd::dup2_stderr(&console));
    if let Err(e) = redirected {
        return (6, e);
    }
    drop(console);
    if let Err(e) = nix::unistd::chdir(p.cwd.as_c_str()) {
        return (STEP_EXEC, e);
    }
    // The program must outlive the spawner from here on.
    if let Err(e) = nix::sys::prctl::set_pdeathsig(None) {
        return (0, e);
    }
    if getppid() != spawner {
        return (0, Errno::ESRCH);
    }
    // SAFETY: both arrays are NUL-terminated arrays of pointers to NUL-terminated strings that
    // `p` owns and keeps alive; `execve` returns only on failure.
    unsafe { libc::execve(p.program.as_ptr(), p.argv_ptrs.as_ptr(), p.env_ptrs.as_ptr()) };
    (STEP_EXEC, Errno::last())
}
