//! Forwarding by lease (`herd_hostnet::lease`), in a network namespace this test creates: a
//! host network with two instances (namespaces with a veth on the subnet's bridge). Fenced,
//! neither reaches the other; a lease lets the pair through until it runs out, and then the
//! kernel fences them again with no renewal and no code of ours running: the allow counter
//! stops at what it was.

mod common;

use common::{sh, within, Namespaces};
use herd_driver::NetworkAttachment;
use herd_hostnet::{HostNet, Reservation, Role};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn net(root: &Path) -> HostNet {
    let n = HostNet::new(root.to_path_buf());
    n.set_role(Role::Host);
    n
}

/// Whether a TCP connection from namespace `from` to `to:7` is answered at all (refused
/// counts: the packet got there and back), within one second.
fn answered(from: &str, to: Ipv4Addr) -> bool {
    within(from, move || match std::net::TcpStream::connect_timeout(&(to, 7).into(), Duration::from_secs(1)) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
    })
}

/// The packets the `leased` rules counted.
fn leased_packets(host: &str, table: &str) -> u64 {
    let listing = sh(&["ip", "netns", "exec", host, "nft", "list", "table", "bridge", table]);
    listing
        .lines()
        .filter(|l| l.contains("comment \"leased\""))
        .filter_map(|l| l.split("packets ").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_port_forwards_only_while_its_lease_lives() {
    assert!(nix::unistd::geteuid().is_root(), "namespaces and nftables need root");
    let id = std::process::id() % 100_000;
    let (host, ia, ib) = (format!("hlh{id}"), format!("hla{id}"), format!("hlb{id}"));
    let _ns = Namespaces(vec![ia.clone(), ib.clone(), host.clone()]);
    for ns in [&host, &ia, &ib] {
        sh(&["ip", "netns", "add", ns]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root: PathBuf = tmp.path().join("h");
    let mut owners = Vec::new();
    for (inst, last) in [(&ia, 4u8), (&ib, 5u8)] {
        let port = format!("hv{last}l{id}");
        let addr = Ipv4Addr::new(10, 92, 0, last);
        let mac = format!("52:54:00:92:00:{last:02x}");
        sh(&["ip", "-n", &host, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", inst]);
        sh(&["ip", "-n", inst, "link", "set", "eth0", "address", &mac, "up"]);
        sh(&["ip", "-n", inst, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        let owner = format!("rg/set/{last}");
        owners.push(owner.clone());
        let root = root.clone();
        within(&host, move || {
            let att = NetworkAttachment {
                bridge: "hbleasetest0".into(),
                gateway: "10.92.0.1".parse().unwrap(),
                prefix_len: 24,
                address: addr,
                mtu: 1450,
                vnet: "hzlease".into(),
                outbound: false,
                public_address: None,
                public_idle_timeout_minutes: None,
            };
            let n = net(&root);
            n.attach(&att, &Reservation { owner: &owner, mac: &mac, name: "i", port: &port }).unwrap();
            herd_hostnet::link::ip(&["link", "set", &port, "master", "hbleasetest0", "up"]).unwrap();
        });
    }
    let b: Ipv4Addr = "10.92.0.5".parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !answered(&ia, b) {
        assert!(Instant::now() < deadline, "unfenced, the instances reach each other (waited 20 s)");
    }

    let r = root.clone();
    let table = within(&host, move || {
        let n = net(&r);
        assert!(n.fence_by_lease().unwrap(), "the table is written");
        assert!(!n.fence_by_lease().unwrap(), "and left as it is when present");
        n.lease_table().to_string()
    });
    assert!(!answered(&ia, b), "fenced: no lease yet");

    // A lease of 3 s for both: through, until it runs out.
    let (r, o) = (root.clone(), owners.clone());
    let leased_at = Instant::now();
    let n = within(&host, move || net(&r).renew_leases(&o, Duration::from_secs(3)).unwrap());
    assert_eq!(n, 2);
    assert!(answered(&ia, b), "leased: through");
    assert!(leased_packets(&host, &table) > 0);
    // Nobody renews: the kernel fences them (waited on, with a deadline).
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered(&ia, b) {
        assert!(Instant::now() < deadline, "still forwarding 30 s after a 3 s lease");
    }
    assert!(
        leased_at.elapsed() >= Duration::from_millis(2900),
        "not before the lease ran out: {:?}",
        leased_at.elapsed()
    );
    let counted = leased_packets(&host, &table);
    assert!(!answered(&ia, b) && !answered(&ib, "10.92.0.4".parse().unwrap()));
    assert_eq!(leased_packets(&host, &table), counted, "after the lease, the allow counter never increases");

    // A renewal of one port only: still fenced (its peer's port is not leased).
    let (r, o) = (root.clone(), vec![owners[0].clone(), "rg/set/none".to_string()]);
    assert_eq!(within(&host, move || net(&r).renew_leases(&o, Duration::from_secs(30)).unwrap()), 1);
    assert!(!answered(&ia, b), "b's port is fenced");
    let (r, o) = (root.clone(), owners.clone());
    within(&host, move || net(&r).renew_leases(&o, Duration::from_secs(30)).unwrap());
    assert!(answered(&ia, b), "both leased again");
}
