//! PID 1 of a rig host: `herd dev host-init --hostname h2`, run by `unshare --pid --fork
//! --mount-proc --uts` inside the host's network namespace.
//!
//! Why a process of its own, and not the agent as PID 1: when PID 1 of a PID namespace exits,
//! the kernel kills everything in it. A host's VMs must outlive a `kill -9` of its agent (the
//! restarted agent adopts them), as on a real machine whose init is not the agent. So this
//! init only names the host, gives it a private `/run/herd` (each host's network state, as on
//! separate machines) and a private `/run/netns` (the namespaces of its process instances,
//! which would otherwise be left as dead names in the machine's own `ip netns list`), says
//! `ready` on stdout, and then reaps orphans (a daemonized QEMU whose
//! agent died is re-parented here; left unreaped it would look alive to the next agent) until
//! it is killed, which takes the whole host down with it (`herd dev cluster down`).

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::io::Write;

/// The directory each host gets private (a tmpfs): herd's runtime network state.
pub const PRIVATE_RUN_DIR: &str = "/run/herd";

/// Where `ip netns` names namespaces: private to each host too.
pub const PRIVATE_NETNS_DIR: &str = "/run/netns";

/// Sets up the host, reports `ready`, and reaps forever. Returns only on a set-up error.
pub fn run(hostname: &str) -> Result<()> {
    nix::unistd::sethostname(hostname).with_context(|| format!("setting the hostname to '{hostname}'"))?;
    for dir in [PRIVATE_RUN_DIR, PRIVATE_NETNS_DIR] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some("mode=0755"),
        )
        .with_context(|| format!("mounting a private tmpfs on {dir}"))?;
    }
    // SIGCHLD stays blocked and is taken with sigwait, so no signal handler is needed.
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    chld.thread_block().context("blocking SIGCHLD")?;
    let mut out = std::io::stdout();
    writeln!(out, "ready").and_then(|()| out.flush()).context("telling the rig this host is ready")?;
    loop {
        reap_all();
        let _ = chld.wait();
    }
}

/// Reaps every child that has exited, without blocking.
fn reap_all() {
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}
