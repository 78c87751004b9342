//! The spawner process itself: `herd-instance-init --spawner` (or `herd instance-init
//! --spawner`). It reads requests on its stdin (a socket to herd), starts each with `clone` and
//! `execve`, answers with the pid, and reports every child's wait status when it reaps it.
//!
//! Why `clone` by hand, and why `unsafe` here: a child needs a new UTS namespace and a hostname
//! between its creation and its `exec`, which the standard library offers only through
//! `pre_exec` (itself `unsafe`, and a full `fork`). The spawner starts each child the way
//! `posix_spawn` does: `clone(CLONE_VM | CLONE_VFORK)` on a stack of its own. The child shares
//! the spawner's memory until its `execve` (or `_exit`), and the spawner is suspended until
//! then. So no page table is copied and no page is copied on write: with `fork`, copying the
//! spawner's address space for every child and the copy-on-write faults that followed were
//! three quarters of the spawner's cost (see `docs/benchmarks.md`, "Provisioning", session
//! 15). The child does nothing but system calls on values built before the `clone`, allocates
//! nothing, and ends in `execve` or `_exit`.
//!
//! At its start the spawner closes every descriptor above 2 that it inherited (herd's own are
//! close-on-exec, but whoever started herd may have left it others), moves its socket to a
//! close-on-exec descriptor and puts `/dev/null` on 0.
//!
//! A child, between `clone` and `execve`, in this order: `PR_SET_PDEATHSIG(SIGKILL)` and a check
//! that the spawner is still its parent (so a child whose spawner dies mid-start dies too,
//! before it is anything herd could miss); its own process group; the default signal mask and
//! `SIGPIPE` disposition (the spawner blocks `SIGCHLD`, and Rust ignores `SIGPIPE`); a UTS
//! namespace and the hostname, when asked; `/dev/null` as stdin and the console file as stdout
//! and stderr; the working directory; the death signal cleared and the parent checked once
//! more; `execve`. Every other descriptor of the spawner is close-on-exec, so the program
//! starts with exactly 0, 1 and 2. A failing step writes its number and `errno` into memory it
//! shares with the spawner and exits 127. When `clone` returns, the child has executed its
//! program or failed: the spawner answers `Started` or `Failed` at once (a failed child is
//! reaped then and never reported again). So it answers `Started` only for a program that was
//! executed, and herd hears a child's `Started` before its `Exited`.

#![allow(unsafe_code)]

use super::wire::{Frames, Reply, Request};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::ffi::{CString, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};

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
    // One stack for every child: a child uses it only until `clone` returns (see `start`).
    let mut stack = ChildStack::new().map_err(|e| format!("the children's stack: {e}"))?;
    loop {
        let (sock_ready, chld_ready) = {
            let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN), PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(format!("poll: {e}")),
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        if chld_ready {
            while let Ok(Some(_)) = sfd.read_signal() {}
            reap(&mut sock)?;
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
                let answer = match start(&req, &devnull, me, &mut stack) {
                    Ok((pid, start)) => Reply::Started { id: req.id, pid, start },
                    Err(message) => Reply::Failed { id: req.id, message },
                };
                send(&mut sock, &answer)?;
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

/// Reaps every child that ended and reports each. (A child that failed before its program
/// ran is reaped by `start`, so everything reaped here was answered `Started`.)
fn reap(sock: &mut UnixStream) -> Result<(), String> {
    loop {
        let (pid, status) = match nix::sys::wait::waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, (code & 0xff) << 8),
            Ok(WaitStatus::Signaled(pid, sig, core)) => (pid, sig as i32 | if core { 0x80 } else { 0 }),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(()),
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(format!("waitpid: {e}")),
        };
        send(sock, &Reply::Exited { pid: pid.as_raw().unsigned_abs(), status })?;
    }
}

/// The steps of a child's set-up, as reported to the spawner (see `ChildArgs`).
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

/// Everything a child uses, built before `clone` (so the child allocates nothing).
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

/// Why a child's set-up failed at `step` with `errno`, as a sentence.
fn failure(step: u8, errno: i32, hostname: Option<&OsString>) -> String {
    let what = STEPS.get(usize::from(step)).copied().unwrap_or("cannot start init");
    let err = std::io::Error::from_raw_os_error(errno);
    match (step, hostname) {
        (STEP_HOSTNAME, Some(h)) => format!("cannot set the hostname to '{}': {err}", h.to_string_lossy()),
        _ => format!("{what}: {err}"),
    }
}

/// The size of the stack children run on (they make a few system calls: a few KiB would do).
const CHILD_STACK: usize = 256 * 1024;

/// The stack a child runs on from `clone` to its `execve`: mapped once and used by one child
/// at a time (`CLONE_VFORK` suspends the spawner until the child is done with it), with an
/// inaccessible page below it, so a child that overflowed it would fault instead of writing
/// over the spawner's memory.
struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    fn new() -> std::io::Result<ChildStack> {
        // SAFETY: `sysconf` only reads a constant of the system.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(4096);
        let len = CHILD_STACK + page;
        // SAFETY: a new anonymous private mapping at an address the kernel chooses: it
        // overlaps nothing of ours, and only this value refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the lowest page of the mapping just made, which nothing uses yet.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(std::io::Error::last_os_error()); // unmapped by `drop`
        }
        Ok(stack)
    }

    /// The top of the stack (it grows down), 16-byte aligned as the ABI wants: the mapping is
    /// page-aligned and its length a multiple of the page size.
    fn top(&mut self) -> *mut libc::c_void {
        self.base.cast::<u8>().wrapping_add(self.len).cast()
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; no child runs on it any more (each
        // was done with it when its `clone` returned).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// No failure recorded (a child's `step` until it fails).
const NO_FAILURE: u8 = u8::MAX;

/// What `start` shares with its child: the child reads the prepared start, and writes the
/// step that failed and its `errno` (it shares the spawner's memory until its `execve`).
struct ChildArgs<'a> {
    p: &'a Prepared,
    devnull: &'a OwnedFd,
    spawner: Pid,
    step: AtomicU8,
    errno: AtomicI32,
}

/// The child's entry point (see [`start`]).
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` that `start` passed to `clone`; it lives on `start`'s
    // stack frame, which stays put until `clone` returns, and `clone` returns only once this
    // child has executed its program or exited (`CLONE_VFORK`).
    let a = unsafe { &*arg.cast::<ChildArgs>() };
    let (step, errno) = child(a.p, a.devnull, a.spawner);
    a.errno.store(errno as i32, Ordering::SeqCst);
    a.step.store(step, Ordering::SeqCst);
    // SAFETY: `_exit` ends the child at once, without running exit handlers or flushing
    // buffers (they are the spawner's: this child shares its memory).
    unsafe { libc::_exit(127) }
}

/// Starts the child of one request: returns its pid and `/proc` start time once it has
/// executed its program, or why it could not.
fn start(req: &Request, devnull: &OwnedFd, me: Pid, stack: &mut ChildStack) -> Result<(u32, u64), String> {
    let p = prepare(req)?;
    let args = ChildArgs { p: &p, devnull, spawner: me, step: AtomicU8::new(NO_FAILURE), errno: AtomicI32::new(0) };
    let arg: *const ChildArgs = &args;
    // SAFETY: the child runs `child_main` on `stack`, which nothing else uses (one child at a
    // time: `CLONE_VFORK` suspends this process until the child executes its program or
    // exits, so `args` and `p` outlive its use of them). Sharing the memory (`CLONE_VM`) is
    // safe because the child only makes system calls on values prepared above, allocates
    // nothing, takes no lock, and ends in `execve` or `_exit`; and the spawner is
    // single-threaded, so no other thread runs while it is suspended.
    let pid = unsafe {
        libc::clone(child_main, stack.top(), libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD, arg.cast_mut().cast())
    };
    if pid < 0 {
        return Err(format!("cannot start init: clone: {}", std::io::Error::last_os_error()));
    }
    let child = Pid::from_raw(pid);
    let step = args.step.load(Ordering::SeqCst);
    if step != NO_FAILURE {
        // It exits at once (127) without having run anything: reaped here, never reported.
        let _ = nix::sys::wait::waitpid(child, None);
        return Err(failure(step, args.errno.load(Ordering::SeqCst), p.hostname.as_ref()));
    }
    let pid = pid.unsigned_abs();
    // Not reaped until `reap` waits for it, so its stat is readable even if it exited already.
    match crate::procfs::read_stat(pid) {
        Some(st) => Ok((pid, st.starttime)),
        None => {
            let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(child, None);
            Err(format!("cannot read /proc/{pid}/stat of the new init"))
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
