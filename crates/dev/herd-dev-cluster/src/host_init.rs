//! PID 1 of a rig host: `herd dev host-init --hostname h2`, run by `unshare --pid --fork
//! --mount-proc --uts` inside the host's network namespace.
//!
//! Why a process of its own, and not the agent as PID 1: when PID 1 of a PID namespace exits,
//! the kernel kills everything in it. A host's VMs must outlive a `kill -9` of its agent (the
//! restarted agent adopts them), as on a real machine whose init is not the agent. So this
//! init only names the host, gives it a private `/run/herd` (each host's network state, as on
//! separate machines) and a private `/run/netns` (the namespaces of its process instances,
//! which would otherwise be left as dead names in the machine's own `ip netns list`), gives it
//! a boot id of its own (see below), says `ready` on stdout, and then reaps orphans (a daemonized QEMU whose
//! agent died is re-parented here; left unreaped it would look alive to the next agent) until
//! it is killed, which takes the whole host down with it (`herd dev cluster down`, and
//! `herd dev cluster reboot`, which then starts a new init).
//!
//! # A boot id per boot
//!
//! The kernel's `/proc/sys/kernel/random/boot_id` is one for the whole machine, but herd tells
//! a reboot from a reconnect by it (the agent's Hello, the qemu driver's `boot-id` record). So
//! each init reads a fresh random UUID (`/proc/sys/kernel/random/uuid` gives a new one on every
//! read) into its private `/run/herd`, and bind-mounts it read-only over `boot_id` in its own
//! mount namespace (it has its own `/proc` from `unshare --mount-proc`). Every process of the
//! host (entered with `nsenter -m`) reads that one; a new init is a new boot.

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::io::Write;

/// The directory each host gets private (a tmpfs): herd's runtime network state.
pub const PRIVATE_RUN_DIR: &str = "/run/herd";

/// Where `ip netns` names namespaces: private to each host too.
pub const PRIVATE_NETNS_DIR: &str = "/run/netns";

/// Where the kernel publishes this boot's id.
pub const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

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
    new_boot_id()?;
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

/// Gives this host a boot id of its own (see the module docs); returns it.
fn new_boot_id() -> Result<String> {
    use nix::mount::MsFlags;
    let id = std::fs::read_to_string("/proc/sys/kernel/random/uuid").context("reading a random UUID")?;
    let id = id.trim().to_string();
    let file = std::path::Path::new(PRIVATE_RUN_DIR).join("boot_id");
    std::fs::write(&file, format!("{id}\n")).with_context(|| format!("writing {}", file.display()))?;
    nix::mount::mount(Some(&file), BOOT_ID, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .with_context(|| format!("bind-mounting {} over {BOOT_ID}", file.display()))?;
    // Read-only, as the kernel's: nothing of the host rewrites its boot id.
    nix::mount::mount(
        None::<&str>,
        BOOT_ID,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .with_context(|| format!("making {BOOT_ID} read-only"))?;
    Ok(id)
}

/// Reaps every child that has exited, without blocking.
fn reap_all() {
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}
