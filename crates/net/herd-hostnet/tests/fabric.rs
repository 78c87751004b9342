//! A segment stretched over two hosts with VXLAN (see `herd_hostnet::fabric`), in network
//! namespaces this test creates: two hosts joined by a veth pair (the fabric), each with one
//! instance (a namespace with a veth on the host's bridge). The instances reach each other by
//! their private IPs through the hosts' VXLAN ports, with the forwarding entries the test gives
//! (nothing learned); the border table drops ARP for the gateway at the port; unstretching
//! removes the port and the table; nothing is left.

mod common;

use common::{sh, within, Namespaces};
use herd_driver::NetworkAttachment;
use herd_hostnet::fabric::{self, Span};
use herd_hostnet::{HostNet, Reservation, Role};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn try_sh(args: &[&str]) -> bool {
    Command::new(args[0]).args(&args[1..]).output().is_ok_and(|o| o.status.success())
}

const BRIDGE: &str = "hbfabrictest0";

fn attachment(address: Ipv4Addr) -> NetworkAttachment {
    NetworkAttachment {
        bridge: BRIDGE.into(),
        gateway: "10.91.0.1".parse().unwrap(),
        prefix_len: 24,
        address,
        mtu: 1450,
        vnet: "hzfabric".into(),
        outbound: false,
        public_address: None,
        public_idle_timeout_minutes: None,
    }
}

/// One host: its namespace, its host network (root `root`) and one instance namespace `inst`
/// with address `addr` and MAC `mac`, plugged into the segment.
fn plug(host: &str, root: &Path, inst: &str, addr: Ipv4Addr, mac: &str) {
    let port = format!("hv{}", &inst[inst.len() - 4..]);
    sh(&["ip", "-n", host, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", inst]);
    sh(&["ip", "-n", inst, "link", "set", "eth0", "address", mac, "mtu", "1450", "up"]);
    sh(&["ip", "-n", inst, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
    let (root, mac, owner) = (root.to_path_buf(), mac.to_string(), format!("rg/set/{inst}"));
    within(host, move || {
        let net = HostNet::new(root);
        net.set_role(Role::Host);
        net.attach(&attachment(addr), &Reservation { owner: &owner, mac: &mac, name: "i", port: &port }).unwrap();
        herd_hostnet::link::ip(&["link", "set", &port, "master", BRIDGE, "mtu", "1450", "up"]).unwrap();
    });
}

fn span_on(host: &str, root: &Path, spans: Vec<Span>) -> Vec<String> {
    let root = root.to_path_buf();
    within(host, move || {
        let net = HostNet::new(root);
        net.set_role(Role::Host);
        net.span(&spans).unwrap()
    })
}

fn span(local: Ipv4Addr, peer: Ipv4Addr, remote_mac: &str) -> Span {
    Span {
        bridge: BRIDGE.into(),
        vni: fabric::vni_for(BRIDGE),
        gateway: "10.91.0.1".parse().unwrap(),
        prefix_len: 24,
        mtu: 1450,
        vnet: "hzfabric".into(),
        outbound: false,
        local,
        peers: vec![peer],
        macs: vec![(remote_mac.into(), peer)],
        names: vec![],
    }
}

#[test]
fn instances_on_two_hosts_share_a_segment_over_vxlan_and_the_gateway_stays_local() {
    assert!(nix::unistd::geteuid().is_root(), "namespaces and nftables need root");
    let id = std::process::id() % 100_000;
    let (ha, hb, ia, ib) = (format!("hfa{id}"), format!("hfb{id}"), format!("hia{id}"), format!("hib{id}"));
    let _ns = Namespaces(vec![ia.clone(), ib.clone(), ha.clone(), hb.clone()]);
    for ns in [&ha, &hb, &ia, &ib] {
        sh(&["ip", "netns", "add", ns]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    // The fabric: one veth pair between the hosts.
    let (a_ip, b_ip): (Ipv4Addr, Ipv4Addr) = ("10.251.0.10".parse().unwrap(), "10.251.0.11".parse().unwrap());
    sh(&["ip", "-n", &ha, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &hb]);
    for (ns, ip) in [(&ha, a_ip), (&hb, b_ip)] {
        sh(&["ip", "-n", ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        sh(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (ra, rb): (PathBuf, PathBuf) = (tmp.path().join("a"), tmp.path().join("b"));
    let (mac_a, mac_b) = ("52:54:00:91:00:04", "52:54:00:91:00:05");
    let (addr_a, addr_b): (Ipv4Addr, Ipv4Addr) = ("10.91.0.4".parse().unwrap(), "10.91.0.5".parse().unwrap());
    plug(&ha, &ra, &ia, addr_a, mac_a);
    plug(&hb, &rb, &ib, addr_b, mac_b);

    // Not stretched yet: the segments are separate.
    assert!(!reaches(&ia, addr_b, 1), "reached before the span");

    let changes = span_on(&ha, &ra, vec![span(a_ip, b_ip, mac_b)]);
    assert!(changes.iter().any(|c| c.contains("stretched")), "{changes:?}");
    span_on(&hb, &rb, vec![span(b_ip, a_ip, mac_a)]);
    let port = fabric::vxlan_name(BRIDGE);
    let fdb = sh(&["bridge", "-n", &ha, "fdb", "show", "dev", &port]);
    assert!(fdb.contains(&format!("00:00:00:00:00:00 dst {b_ip}")), "{fdb}");
    assert!(fdb.contains(&format!("{mac_b} dst {b_ip}")), "{fdb}");
    let details = sh(&["ip", "-n", &ha, "-d", "link", "show", &port]);
    assert!(details.contains(&format!("vxlan id {}", fabric::vni_for(BRIDGE))), "{details}");
    assert!(details.contains("nolearning") && details.contains("mtu 1450"), "{details}");
    let bridge = sh(&["ip", "-n", &ha, "link", "show", BRIDGE]);
    assert!(bridge.contains(fabric::GATEWAY_MAC), "the anycast gateway MAC: {bridge}");
    let addrs = sh(&["ip", "-n", &ha, "-4", "addr", "show", BRIDGE]);
    assert!(
        addrs.contains("10.91.0.1/24") && !addrs.contains("10.91.0.2/") && !addrs.contains("10.91.0.3/"),
        "a host's bridge holds the gateway alone: {addrs}"
    );

    // Across hosts by private IP, both ways, with 1 MiB each way in full-size frames.
    assert!(reaches(&ia, addr_b, 10), "{ia} could not reach {addr_b} over the segment");
    assert!(reaches(&ib, addr_a, 10), "{ib} could not reach {addr_a} over the segment");
    // Each instance's gateway is its own host's: the ARP for .1 never crosses.
    assert!(gateway_answers(&ia, "10.91.0.1".parse().unwrap()), "the local gateway answers");
    let border =
        sh(&["ip", "netns", "exec", &ha, "nft", "list", "table", "bridge", &format!("{}_vx", short_table(&ra))]);
    assert!(
        border_dropped(&border, "arp daddr ip @gateways"),
        "ARP for the gateway was dropped at the port:\n{border}"
    );

    // Unchanged spans change nothing; a forwarding entry removed by hand comes back.
    assert!(span_on(&ha, &ra, vec![span(a_ip, b_ip, mac_b)]).is_empty());
    sh(&["bridge", "-n", &ha, "fdb", "del", mac_b, "dev", &port, "dst", &b_ip.to_string(), "self"]);
    let again = span_on(&ha, &ra, vec![span(a_ip, b_ip, mac_b)]);
    assert_eq!(again, vec![format!("segment {BRIDGE}: 1 forwarding entries added, 0 removed")]);

    // Unstretched: the port and the border go, the bridge stays for its instance.
    let changes = span_on(&ha, &ra, vec![]);
    assert!(changes.iter().any(|c| c.contains("no longer stretched")), "{changes:?}");
    let links = sh(&["ip", "-n", &ha, "-br", "link"]);
    assert!(!links.contains(&port) && links.contains(BRIDGE), "{links}");
    assert!(!try_sh(&[
        "ip",
        "netns",
        "exec",
        &ha,
        "nft",
        "list",
        "table",
        "bridge",
        &format!("{}_vx", short_table(&ra))
    ]));
    assert!(!reaches(&ia, addr_b, 1), "cut off");
    // A spanned segment with no instance keeps its bridge; unlisted, it goes.
    let rb2 = rb.clone();
    within(&hb, move || HostNet::new(rb2).detach(&format!("rg/set/{}", "x")).unwrap());
    let owner_b = format!("rg/set/{ib}");
    let rb3 = rb.clone();
    within(&hb, move || HostNet::new(rb3).detach(&owner_b).unwrap());
    assert!(sh(&["ip", "-n", &hb, "-br", "link"]).contains(BRIDGE), "kept while the server lists the span");
    span_on(&hb, &rb, vec![]);
    assert!(!sh(&["ip", "-n", &hb, "-br", "link"]).contains(BRIDGE), "gone with its span");
    assert!(!rb.exists() || std::fs::read_dir(&rb).unwrap().next().is_none(), "no state left on host b");
}

/// Whether a TCP connection from namespace `from` to `to` carries 1 MiB each way, tried for
/// up to `secs` seconds (a listener in `to`'s namespace echoes it).
fn reaches(from: &str, to: Ipv4Addr, secs: u64) -> bool {
    use std::io::{Read, Write};
    let to_ns = namespace_of(to);
    let listener = within(&to_ns, move || std::net::TcpListener::bind((to, 7007)).unwrap());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    let server = std::thread::spawn(move || {
        // One echo of 1 MiB, or nothing if no one comes (the listener is dropped with the test).
        listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match listener.accept() {
                Ok((mut c, _)) => {
                    c.set_nonblocking(false).unwrap();
                    let mut buf = vec![0u8; 1 << 20];
                    if c.read_exact(&mut buf).is_ok() {
                        let _ = c.write_all(&buf);
                    }
                    return;
                }
                Err(_) if std::time::Instant::now() < deadline && !stop.load(std::sync::atomic::Ordering::SeqCst) => {
                    std::thread::park_timeout(std::time::Duration::from_millis(20))
                }
                Err(_) => return,
            }
        }
    });
    let ok = within(from, move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let attempt = std::net::TcpStream::connect_timeout(&(to, 7007).into(), std::time::Duration::from_secs(1))
                .and_then(|mut c| {
                    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
                    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
                    c.write_all(&data)?;
                    let mut back = vec![0u8; data.len()];
                    c.read_exact(&mut back)?;
                    Ok(back == data)
                });
            match attempt {
                Ok(same) => return same,
                Err(_) if std::time::Instant::now() < deadline => continue,
                Err(_) => return false,
            }
        }
    });
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = server.join();
    ok
}

/// The namespace of the test's instance with address `a`.
fn namespace_of(a: Ipv4Addr) -> String {
    let id = std::process::id() % 100_000;
    if a.octets()[3] == 4 {
        format!("hia{id}")
    } else {
        format!("hib{id}")
    }
}

/// Whether a TCP connection from `from` to the gateway `gw` is answered (refused: the host's
/// own stack answered, so its ARP was resolved on the host).
fn gateway_answers(from: &str, gw: Ipv4Addr) -> bool {
    within(from, move || {
        match std::net::TcpStream::connect_timeout(&(gw, 9).into(), std::time::Duration::from_secs(3)) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        }
    })
}

/// The table name prefix of the host network under `root` (as `HostNet::new` derives it).
fn short_table(root: &Path) -> String {
    herd_hostnet::short_name("herd_", &root.display().to_string())
}

/// Whether the rule containing `rule` in `listing` counted a packet.
fn border_dropped(listing: &str, rule: &str) -> bool {
    listing
        .lines()
        .filter(|l| l.contains(rule))
        .any(|l| l.split("packets ").nth(1).and_then(|r| r.split_whitespace().next()).is_some_and(|n| n != "0"))
}
