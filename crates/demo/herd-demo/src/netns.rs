//! The demo's own network namespace: with bridged networking the whole walkthrough (its
//! server, database, file server and every request) runs inside one, so the bridges, dnsmasq
//! and nftables tables it makes never touch the host's network, and all of it goes with the
//! namespace at the end.
//!
//! ```text
//!   herd demo (root, bridged possible)
//!     ├─ ip netns add herd-demo-<pid>; lo up
//!     ├─ ip netns exec herd-demo-<pid> herd demo ... (HERD_DEMO_NETNS set: the walkthrough)
//!     │     Ctrl-C reaches it too (same terminal); it cleans up its own resources
//!     └─ its exit: processes left in the namespace killed, namespace deleted (kept with --keep)
//! ```

use anyhow::{bail, Context, Result};
use std::process::Command;

/// Set in the walkthrough's environment when it runs inside the demo's namespace (its name).
pub const ENV: &str = "HERD_DEMO_NETNS";

/// Why bridged networking cannot be played here, or None when it can: root, and `ip`, `nft`
/// and `dnsmasq` installed.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("it needs root".into());
    }
    let missing = herd_hostnet::tools::missing();
    (!missing.is_empty()).then(|| format!("missing: {}", missing.join(", ")))
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A namespace made for the demo; [`Namespace::remove`] kills what is left in it and deletes it.
pub struct Namespace(pub String);

impl Namespace {
    /// Creates `herd-demo-<pid>` with its loopback up.
    pub fn create() -> Result<Namespace> {
        let name = format!("herd-demo-{}", std::process::id());
        println!("$ ip netns add {name}   # the walkthrough runs in a network namespace of its own");
        ip(&["netns", "add", &name])?;
        let ns = Namespace(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `herd demo ARGS` inside the namespace, with this terminal; its exit code.
    pub fn run_demo(&self, args: &[String]) -> Result<i32> {
        let exe = std::env::current_exe().context("finding the herd binary")?;
        let status = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .arg(exe)
            .arg("demo")
            .args(args)
            .env(ENV, &self.0)
            .status()
            .context("running the walkthrough in its namespace")?;
        Ok(status.code().unwrap_or(130))
    }

    /// Kills every process still in the namespace, then deletes it.
    pub fn remove(&self) {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.0]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        match ip(&["netns", "del", &self.0]) {
            Ok(()) => println!("Network namespace {} deleted.", self.0),
            Err(e) => println!("(could not delete network namespace {}: {e})", self.0),
        }
    }
}
