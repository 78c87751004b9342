//! Bridged networking for process instances: each instance gets its own network namespace with
//! an `eth0` on the Linux bridge that carries its subnet, so its private IP is its reach address
//! (DESIGN.md, "Addresses"). Only as root; done with `ip` (iproute2), idempotently, so a start
//! after a crash repairs whatever half-exists.
//!
//! The bridge itself, its dnsmasq and the instance's DHCP reservation and DNS name belong to
//! `herd-hostnet`, shared with the qemu driver, so process instances and VMs on one subnet are
//! on one network and resolve each other's names. A process instance does not ask DHCP: herd
//! configures its address, MTU and route directly; its `eth0` carries the instance's stable MAC
//! (the one its reservation names), and `/etc/resolv.conf`-free programs can use the gateway,
//! which serves DNS.
//!
//! ```text
//!   host (or the test's namespace)                 instance namespace hn<hash>
//!   bridge hb<hash>  10.0.0.1/24 (+ dnsmasq)  ◀──veth──▶  eth0 10.0.0.4/24 MAC 52:54:..,
//!                                                        default via 10.0.0.1
//! ```

use herd_driver::NetworkAttachment;
use herd_hostnet::link::ip;
use herd_hostnet::{HostNet, Reservation};

/// The network namespace of one instance (unique per server tag and instance key). Public so
/// that a benchmark interrupted half-way can remove the namespaces its server made.
pub fn netns_name(tag: &str, key: &str) -> String {
    herd_hostnet::short_name("hn", &format!("{tag}|{key}"))
}

/// Where `ip netns` keeps its namespaces (each a mount of the namespace on a file).
const NETNS_DIR: &str = "/run/netns";

/// What `/run/netns/<name>` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Netns {
    /// A namespace is mounted on it (its device is nsfs, not the directory's).
    Mounted,
    Missing,
    /// A plain file: `ip netns add` was interrupted before it mounted the namespace.
    Broken,
}

fn netns_state(ns: &str) -> Netns {
    use std::os::unix::fs::MetadataExt;
    let dir = std::path::Path::new(NETNS_DIR);
    match (std::fs::metadata(dir.join(ns)), std::fs::metadata(dir)) {
        (Err(_), _) => Netns::Missing,
        (Ok(f), Ok(d)) if f.dev() == d.dev() => Netns::Broken,
        (Ok(_), _) => Netns::Mounted,
    }
}

/// The host side of the instance's veth pair (interface names are at most 15 characters).
fn veth_name(ns: &str) -> String {
    format!("hv{}", &ns[2..])
}

/// Makes sure the segment serves (bridge, dnsmasq, the instance's reservation and name), and
/// that the namespace, the veth pair, the MAC, the MTU, the address and the route exist.
pub(crate) fn ensure(tag: &str, key: &str, name: &str, att: &NetworkAttachment, ns: &str) -> Result<(), String> {
    let mac = herd_hostnet::mac_for(key);
    let veth = veth_name(ns);
    let port = Reservation { owner: key, mac: &mac, name, port: &veth };
    HostNet::for_tag(tag).attach(att, &port).map_err(|e| e.to_string())?;
    // A veth can vanish under us: when an earlier namespace of this name is deleted (a delete
    // before this create, or a crash), the kernel cleans it up asynchronously and takes the
    // veth pair with it some time later. One retry from the start covers that.
    match plumb(ns, &veth, &mac, att) {
        Err(e) if !herd_hostnet::link::exists(&veth) => {
            tracing::info!(netns = ns, veth = %veth, error = %e, "veth vanished while plumbing; once more");
            plumb(ns, &veth, &mac, att)
        }
        other => other,
    }
}

/// The namespace, the veth pair (its peer `eth0` inside the namespace), MAC, MTU, address and
/// default route.
fn plumb(ns: &str, veth: &str, mac: &str, att: &NetworkAttachment) -> Result<(), String> {
    let addr = format!("{}/{}", att.address, att.prefix_len);
    let mtu = att.mtu.to_string();
    let fresh = match netns_state(ns) {
        Netns::Mounted => false,
        Netns::Missing => {
            ip(&["netns", "add", ns]).map_err(|e| e.to_string())?;
            true
        }
        Netns::Broken => {
            // `ip netns add` creates the file, then mounts the namespace on it; a crash in
            // between leaves a plain file that no command can enter. Remove it and start over.
            tracing::info!(netns = ns, "re-creating a network namespace a crash left half-made");
            let _ = ip(&["netns", "del", ns]);
            let _ = std::fs::remove_file(std::path::Path::new(NETNS_DIR).join(ns));
            ip(&["netns", "add", ns]).map_err(|e| e.to_string())?;
            true
        }
    };
    let run = |args: &[&str]| ip(args).map_err(|e| e.to_string());
    // A veth whose peer is not this namespace's `eth0` (the namespace is new, or the peer is
    // gone) is left from an earlier namespace of this name: replace it.
    if herd_hostnet::link::exists(veth) && (fresh || ip(&["-n", ns, "link", "show", "dev", "eth0"]).is_err()) {
        herd_hostnet::link::remove(veth).map_err(|e| e.to_string())?;
    }
    if !herd_hostnet::link::exists(veth) {
        run(&["link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
    }
    run(&["link", "set", veth, "master", &att.bridge, "mtu", &mtu, "up"])?;
    // Inside the namespace, in one `ip` process (each is idempotent, so a retry repeats all).
    let inside = [
        "link set lo up".to_string(),
        format!("link set eth0 address {mac} mtu {mtu}"),
        format!("addr replace {addr} dev eth0"),
        "link set eth0 up".to_string(),
        format!("route replace default via {}", att.gateway),
    ];
    herd_hostnet::link::ip_batch(Some(ns), &inside).map_err(|e| e.to_string())?;
    Ok(())
}

/// Removes the instance's namespace (which takes its veth pair with it) and its reservation
/// (the segment goes with its last instance). Ok if absent.
pub(crate) fn remove(tag: &str, key: &str, ns: &str) -> Result<(), String> {
    if netns_state(ns) != Netns::Missing {
        let _ = ip(&["netns", "del", ns]);
        let _ = std::fs::remove_file(std::path::Path::new(NETNS_DIR).join(ns));
    }
    herd_hostnet::link::remove(&veth_name(ns)).map_err(|e| e.to_string())?;
    HostNet::for_tag(tag).detach(key).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_file_in_the_netns_directory_is_a_broken_namespace() {
        assert_eq!(netns_state("no-such-namespace-here"), Netns::Missing);
        assert!(nix::unistd::geteuid().is_root(), "namespaces need root: run ./scripts/test.sh as root, as CI does");
        let name = format!("hntest{}", std::process::id());
        std::fs::create_dir_all(NETNS_DIR).unwrap();
        std::fs::write(std::path::Path::new(NETNS_DIR).join(&name), b"").unwrap();
        assert_eq!(netns_state(&name), Netns::Broken, "what an interrupted `ip netns add` leaves");
        std::fs::remove_file(std::path::Path::new(NETNS_DIR).join(&name)).unwrap();
        ip(&["netns", "add", &name]).unwrap();
        assert_eq!(netns_state(&name), Netns::Mounted);
        ip(&["netns", "del", &name]).unwrap();
    }

    #[test]
    fn names_fit_linux_limits() {
        let ns = netns_name("herd:/var/lib/herd", "rg/web/12");
        assert_eq!(ns.len(), 14);
        assert!(veth_name(&ns).len() <= 15);
        assert_ne!(ns, netns_name("herd:/var/lib/herd", "rg/web/13"));
    }
}
