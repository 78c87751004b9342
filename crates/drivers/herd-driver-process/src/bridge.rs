//! Bridged networking for process instances: each instance gets its own network namespace with
//! an `eth0` on a Linux bridge that carries its subnet, so its private IP is its reach address
//! (DESIGN.md, "Addresses"). Only as root; everything is done with `ip` (iproute2), idempotently,
//! so a start after a crash repairs whatever half-exists.
//!
//! ```text
//!   host (or the test's namespace)        instance namespace hn<hash>
//!   bridge hb<hash>  10.0.0.1/24  ◀──veth──▶  eth0 10.0.0.4/24, default via 10.0.0.1
//! ```

use herd_driver::NetworkAttachment;
use std::process::Command;

fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// The network namespace of one instance (unique per server tag and instance key).
pub(crate) fn netns_name(tag: &str, key: &str) -> String {
    format!("hn{:012x}", hash(&format!("{tag}|{key}")) & 0xffff_ffff_ffff)
}

/// The host side of the instance's veth pair (interface names are at most 15 characters).
fn veth_name(ns: &str) -> String {
    format!("hv{}", &ns[2..])
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn exists(args: &[&str]) -> bool {
    Command::new("ip").args(args).output().is_ok_and(|o| o.status.success())
}

/// Makes sure the bridge, the namespace, the veth pair and the addresses exist and are up.
pub(crate) fn ensure(att: &NetworkAttachment, ns: &str) -> Result<(), String> {
    let gw = format!("{}/{}", att.gateway, att.prefix_len);
    let addr = format!("{}/{}", att.address, att.prefix_len);
    if !exists(&["link", "show", &att.bridge]) {
        ip(&["link", "add", &att.bridge, "type", "bridge"])?;
    }
    ip(&["addr", "replace", &gw, "dev", &att.bridge])?;
    ip(&["link", "set", &att.bridge, "up"])?;
    if !std::path::Path::new("/run/netns").join(ns).exists() {
        ip(&["netns", "add", ns])?;
    }
    let veth = veth_name(ns);
    if !exists(&["link", "show", &veth]) {
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
    }
    ip(&["link", "set", &veth, "master", &att.bridge, "up"])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    ip(&["-n", ns, "addr", "replace", &addr, "dev", "eth0"])?;
    ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    ip(&["-n", ns, "route", "replace", "default", "via", &att.gateway.to_string()])?;
    Ok(())
}

/// Removes the instance's namespace (which takes its veth pair with it). Ok if absent.
pub(crate) fn remove(ns: &str) {
    if std::path::Path::new("/run/netns").join(ns).exists() {
        let _ = ip(&["netns", "del", ns]);
    }
    let veth = veth_name(ns);
    if exists(&["link", "show", &veth]) {
        let _ = ip(&["link", "del", &veth]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_linux_limits() {
        let ns = netns_name("herd:/var/lib/herd", "rg/web/12");
        assert_eq!(ns.len(), 14);
        assert!(veth_name(&ns).len() <= 15);
        assert_ne!(ns, netns_name("herd:/var/lib/herd", "rg/web/13"));
    }
}
