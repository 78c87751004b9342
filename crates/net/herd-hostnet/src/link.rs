//! Bridges, TAP devices and veth pairs, made and removed with `ip` (iproute2).
//!
//! Why `ip` and not netlink from Rust: every step is idempotent ("replace", or "add" after a
//! check), an operator can read each one in the logs and re-run it by hand, and the rate is a
//! few calls per instance start. Every function here works in the network namespace the
//! server runs in (a test's namespace in tests).

use crate::NetError;
use std::net::Ipv4Addr;
use std::process::Command;

/// Runs `ip ARGS`; its stderr becomes the error.
pub fn ip(args: &[&str]) -> Result<(), NetError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetError::Command(format!("cannot run ip (install iproute2): {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Command(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
    }
}

/// Runs `commands` (each an `ip` command line without the `ip`) in one `ip -batch`, inside
/// network namespace `ns` when given: one process instead of one per command, which is most
/// of what plumbing an instance costs. Stops at the first failure; its message names the
/// command.
pub fn ip_batch(ns: Option<&str>, commands: &[String]) -> Result<(), NetError> {
    batch("ip", ns, commands)
}

/// Runs `commands` through `PROGRAM -batch -` (`ip` or `bridge`, both iproute2), inside
/// network namespace `ns` when given: one process for them all. Stops at the first failure;
/// its message names the command.
pub fn batch(program: &str, ns: Option<&str>, commands: &[String]) -> Result<(), NetError> {
    use std::io::Write;
    let mut cmd = Command::new(program);
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Command(format!("cannot run {program} (install iproute2): {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let text: String = commands.iter().map(|c| format!("{c}\n")).collect();
        stdin.write_all(text.as_bytes()).map_err(|e| NetError::Command(format!("writing to {program} -batch: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| NetError::Command(format!("{program} -batch: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        let within = ns.map(|n| format!(" in namespace {n}")).unwrap_or_default();
        Err(NetError::Command(format!(
            "{program} -batch{within} ({}): {}",
            commands.join("; "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The interfaces of the calling thread's network namespace. Read from
/// `/proc/thread-self/net/dev` rather than `/sys/class/net`: sysfs shows the namespace it was
/// mounted in, which is not this thread's in a process that entered another namespace.
pub fn interfaces() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap_or_default();
    // Two header lines, then "  name: counters...".
    text.lines().skip(2).filter_map(|l| l.split_once(':')).map(|(name, _)| name.trim().to_string()).collect()
}

/// Whether the interface `name` exists in this namespace.
pub fn exists(name: &str) -> bool {
    interfaces().iter().any(|n| n == name)
}

/// The bridge `name` exists, carries `gateway/prefix_len` and, with `service_sources` (the
/// server's bridges), the probe source (`herd_model::nsg::probe_source`, the subnet's reserved
/// `.2`: health probes come from it, so network security groups can tell them apart as
/// `AzureLoadBalancer`) and the load balancer's source (`herd_model::nsg::lb_source`, `.3`),
/// has the MAC `mac` and `mtu`, and is up. The gateway is added first, so it stays the address
/// the host sends anything else from. Hosts that only run instances (joined with `herd agent`)
/// hold the gateway alone: the sources are the server's, wherever the instances run.
pub fn ensure_bridge(
    name: &str,
    gateway: Ipv4Addr,
    prefix_len: u8,
    mtu: u16,
    mac: &str,
    service_sources: bool,
) -> Result<(), NetError> {
    if !exists(name) {
        ip(&["link", "add", name, "address", mac, "type", "bridge"])?;
    } else {
        ip(&["link", "set", "dev", name, "address", mac])?;
    }
    ip(&["addr", "replace", &format!("{gateway}/{prefix_len}"), "dev", name])?;
    let mask = herd_model::cidr::Cidr { addr: gateway, len: prefix_len }.mask();
    let subnet = herd_model::cidr::Cidr { addr: Ipv4Addr::from(u32::from(gateway) & mask), len: prefix_len };
    if service_sources {
        for reserved in
            [herd_model::nsg::probe_source(&subnet), herd_model::nsg::lb_source(&subnet)].into_iter().flatten()
        {
            ip(&["addr", "replace", &format!("{reserved}/{prefix_len}"), "dev", name])?;
        }
    }
    ip(&["link", "set", name, "mtu", &mtu.to_string(), "up"])
}

/// The persistent TAP device `name` exists, is a port of `bridge` with `mtu`, and is up.
/// QEMU opens it by name (`-netdev tap,ifname=...,script=no`); it outlives each QEMU, so a
/// restart finds it again.
pub fn ensure_tap(name: &str, bridge: &str, mtu: u16) -> Result<(), NetError> {
    if !exists(name) {
        ip(&["tuntap", "add", "dev", name, "mode", "tap"])?;
    }
    ip(&["link", "set", name, "master", bridge, "mtu", &mtu.to_string(), "up"])
}

/// Removes the interface `name`. Ok if it is absent, or if it goes away by itself while we
/// remove it (the kernel removes a veth when its peer's namespace is cleaned up, which it does
/// asynchronously after the namespace's last user goes).
pub fn remove(name: &str) -> Result<(), NetError> {
    if exists(name) {
        if let Err(e) = ip(&["link", "del", name]) {
            if exists(name) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The interfaces of this namespace whose names start with `prefix`, sorted.
pub fn list(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = interfaces().into_iter().filter(|n| n.starts_with(prefix)).collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_runs_every_command_and_names_the_one_that_failed() {
        assert!(ip_batch(None, &["link show lo".into(), "addr show dev lo".into()]).is_ok());
        let e = ip_batch(None, &["link show lo".into(), "link show no-such-if0".into()]).unwrap_err().to_string();
        assert!(e.contains("link show no-such-if0"), "{e}");
    }

    #[test]
    fn this_namespace_has_loopback() {
        assert!(exists("lo"), "{:?}", interfaces());
        assert!(!exists("no-such-if0"));
        assert_eq!(list("lo"), ["lo"]);
    }
}
