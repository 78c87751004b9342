//! Where `herd bench lb` runs, so that its figures measure the load balancers and not the
//! machine's leftovers or the load generator stealing their CPU:
//!
//! - a network namespace the bench creates and removes (`herd-bench-lb-<pid>`), with a widened
//!   `ip_local_port_range`, `tcp_tw_reuse=1` and a large `somaxconn`, so 10,000 connections and
//!   short-lived connections do not run out of ports or backlog, and the root namespace's
//!   settings are never touched;
//! - `ulimit -n 65536` for everything in it;
//! - the load balancer under test (herd's, in the bench's own process, or HAProxy) pinned to the
//!   first CPU, and `wrk` and the backends to the others.
//!
//! ```text
//!   herd bench lb ──(root)──> ip netns add; sysctls ──> ip netns exec NS sh -c 'ulimit -n 65536;
//!        │                                               exec taskset -c LB herd bench lb --inside'
//!        │                                                 └─ measures, prints JSON lines
//!        └─(not root)─> the same re-exec without the netns (sysctls stay as they are)
//!   on exit (or Ctrl-C): ip netns delete NS
//! ```

use anyhow::{bail, Context, Result};
use std::process::Stdio;
use std::time::Duration;

/// The CPUs the bench splits: one for the load balancer under test, the rest for the load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpus {
    pub lb: usize,
    /// Empty when the machine has one CPU (then nothing is pinned).
    pub load: Vec<usize>,
}

impl Cpus {
    /// Splits the CPUs this process may run on.
    pub fn split(allowed: &[usize]) -> Cpus {
        match allowed {
            [] => Cpus { lb: 0, load: vec![] },
            [lb, rest @ ..] => Cpus { lb: *lb, load: rest.to_vec() },
        }
    }

    /// The load CPUs as a `taskset -c` list, `None` when nothing is pinned.
    pub fn load_list(&self) -> Option<String> {
        (!self.load.is_empty()).then(|| self.load.iter().map(usize::to_string).collect::<Vec<_>>().join(","))
    }

    /// The load balancer's CPU as a `taskset -c` list, `None` when nothing is pinned.
    pub fn lb_list(&self) -> Option<String> {
        (!self.load.is_empty()).then(|| self.lb.to_string())
    }
}

/// The CPUs this process may run on (`/proc/self/status`, `Cpus_allowed_list`).
pub fn allowed_cpus() -> Result<Vec<usize>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .context("no Cpus_allowed_list in /proc/self/status")?;
    parse_cpu_list(list.trim())
}

fn parse_cpu_list(list: &str) -> Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>()?..=b.parse::<usize>()?),
            None => cpus.push(part.parse()?),
        }
    }
    Ok(cpus)
}

/// The sysctls set inside the bench's namespace (all of them are per namespace).
const SYSCTLS: [&str; 3] =
    ["net.ipv4.ip_local_port_range=1024 65535", "net.ipv4.tcp_tw_reuse=1", "net.core.somaxconn=65535"];

/// A network namespace the bench created (`herd-bench-<label>-<pid>`): when this value is
/// dropped, whatever still runs in it (a bench's leftovers: dnsmasq, backends) is killed and
/// the namespace deleted, which removes every interface and nftables table in it.
pub struct Netns(pub String);

impl Netns {
    pub fn create(label: &str) -> Result<Netns> {
        let name = format!("herd-bench-{label}-{}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        let ns = Netns(name);
        run("ip", &["-n", &ns.0, "link", "set", "lo", "up"])?;
        let mut args = vec!["netns", "exec", &ns.0, "sysctl", "-q", "-w"];
        args.extend(SYSCTLS);
        run("ip", &args)?;
        Ok(ns)
    }

    /// The processes running in the namespace.
    pub fn pids(&self) -> Vec<u32> {
        let out = std::process::Command::new("ip").args(["netns", "pids", &self.0]).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        if let Err(e) = run("ip", &["netns", "delete", &self.0]) {
            eprintln!("herd bench: could not delete network namespace {}: {e:#}", self.0);
        }
    }
}

pub(crate) fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (apt-get install iproute2 procps util-linux)"))?;
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Runs `herd <inner_args>` (the bench with `--inside`) in a fresh namespace when root, else
/// in place, under `ulimit -n 65536` and pinned to the load balancer's CPU; waits for it.
pub async fn reexec(inner_args: &[String]) -> Result<()> {
    let netns = if nix::unistd::geteuid().is_root() {
        Some(Netns::create("lb")?)
    } else {
        eprintln!("herd bench lb: not root, so no namespace of its own: the machine's port range, TIME_WAIT reuse and somaxconn apply");
        None
    };
    let cpus = Cpus::split(&allowed_cpus()?);
    // The inner bench stops its server and removes its instances on Ctrl-C.
    reexec_in(netns, inner_args, cpus.lb_list().as_deref(), Duration::from_secs(60)).await
}

/// Runs `herd <inner_args>` inside `netns` (in place when `None`), under `ulimit -n 65536`,
/// pinned to `cpus` when given; waits for it, then drops the namespace (see [`Netns`]).
///
/// On Ctrl-C the terminal interrupts the inner bench too; it gets `grace` to clean up what
/// only it can name (its servers' instances and their namespaces), then is killed.
pub async fn reexec_in(netns: Option<Netns>, inner_args: &[String], cpus: Option<&str>, grace: Duration) -> Result<()> {
    let exe = std::env::current_exe()?;
    // ulimit: 65536 when allowed, else as high as the hard limit lets an unprivileged user go.
    let script = r#"ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@""#;
    let mut cmd = match &netns {
        Some(ns) => {
            let mut c = tokio::process::Command::new("ip");
            c.args(["netns", "exec", &ns.0, "sh", "-c", script, "sh"]);
            c
        }
        None => {
            let mut c = tokio::process::Command::new("sh");
            c.args(["-c", script, "sh"]);
            c
        }
    };
    if let Some(cpus) = cpus {
        cmd.args(["taskset", "-c", cpus]);
    }
    cmd.arg(&exe).args(inner_args).stdin(Stdio::null()).kill_on_drop(true);
    let mut child = cmd.spawn().context("starting the isolated bench")?;
    let status = tokio::select! {
        s = child.wait() => s?,
        _ = tokio::signal::ctrl_c() => {
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
            drop(netns);
            bail!("interrupted");
        }
    };
    drop(netns);
    if !status.success() {
        bail!("the isolated bench failed ({status})");
    }
    Ok(())
}

/// A command for `program`, run under `taskset -c cpus` when `cpus` is given.
pub fn pinned(program: &str, cpus: Option<&str>) -> tokio::process::Command {
    match cpus {
        Some(cpus) => {
            let mut c = tokio::process::Command::new("taskset");
            c.args(["-c", cpus, program]);
            c
        }
        None => tokio::process::Command::new(program),
    }
}

/// Pins every process in this network namespace whose command line contains `needle` (with
/// all its threads) to `cpus` (a `taskset -c` list). Returns how many were pinned.
pub fn pin_processes(needle: &str, cpus: &str) -> Result<usize> {
    let own_ns = std::fs::read_link("/proc/self/ns/net")?;
    let mut pinned = 0;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if pid == std::process::id() || !cmdline.contains(needle) {
            continue;
        }
        if std::fs::read_link(entry.path().join("ns/net")).ok().as_ref() != Some(&own_ns) {
            continue;
        }
        run("taskset", &["-a", "-p", "-c", cpus, &pid.to_string()])?;
        pinned += 1;
    }
    Ok(pinned)
}

/// Pins the processes of the instances of the server with data dir `data` whose command line
/// contains `needle` (with all their threads) to `cpus`, wherever they run (bridged instances
/// each have a network namespace of their own). Returns how many were pinned.
pub fn pin_instances(data: &std::path::Path, needle: &str, cpus: &str) -> Result<usize> {
    let dir = data.canonicalize()?;
    let tag = herd_driver::tag::tag_of(&dir).context("the bench server's data dir has no tag")?;
    let mut pinned = 0;
    for pid in herd_driver_process::tagged_pids(&tag) {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        if String::from_utf8_lossy(&cmdline).replace('\0', " ").contains(needle) {
            run("taskset", &["-a", "-p", "-c", cpus, &pid.to_string()])?;
            pinned += 1;
        }
    }
    Ok(pinned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_and_split_one_for_the_lb() {
        assert_eq!(parse_cpu_list("0-1").unwrap(), vec![0, 1]);
        assert_eq!(parse_cpu_list("0,2-4,7").unwrap(), vec![0, 2, 3, 4, 7]);
        let c = Cpus::split(&[0, 1]);
        assert_eq!((c.lb_list().as_deref(), c.load_list().as_deref()), (Some("0"), Some("1")));
        let c = Cpus::split(&[3, 5, 6]);
        assert_eq!((c.lb_list().as_deref(), c.load_list().as_deref()), (Some("3"), Some("5,6")));
        let one = Cpus::split(&[0]);
        assert_eq!((one.lb_list(), one.load_list()), (None, None), "one CPU: nothing pinned");
    }
}
