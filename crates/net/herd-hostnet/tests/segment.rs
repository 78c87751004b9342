//! A subnet segment for real, inside network namespaces this test creates (the root
//! namespace's network is not touched): the bridge with its gateway, dnsmasq handing out
//! reservations by DHCP (with the MTU as option 26) and answering the vnet's names, repair
//! after dnsmasq is killed, and nothing left once the last instance detaches.
//!
//! A "host" namespace holds the bridge and dnsmasq (this test's worker thread enters it); a
//! "client" namespace plays an instance NIC: a veth on the bridge with the reserved MAC, and
//! busybox's `udhcpc` and `nslookup`.

use herd_driver::NetworkAttachment;
use herd_hostnet::{link, HostNet, Reservation};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn output(cmd: &[&str]) -> (bool, String) {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Removes the namespaces (and with them every interface in them) at the end, even on
/// failure, after killing what runs in them (a dnsmasq of a failed run).
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let pids = Command::new("ip").args(["netns", "pids", ns]).output().map(|o| o.stdout).unwrap_or_default();
            for pid in String::from_utf8_lossy(&pids).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Listens in `inet` on 10.99.0.2:9000 for one connection, connects from `client`, and
/// returns the address the listener saw.
fn peer_seen_by(inet: &str, client: &str) -> String {
    peer_seen_at(inet, client, "10.99.0.2")
}

/// Listens in `server` on port 9000 for one connection, connects from `client` to `addr`, and
/// returns the address the listener saw.
fn peer_seen_at(server: &str, client: &str, addr: &str) -> String {
    let mut listener = Command::new("ip")
        .args(["netns", "exec", server, "python3", "-c"])
        .arg(
            "import socket,sys\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('0.0.0.0', 9000)); s.listen(1); s.settimeout(30); print('ready', flush=True)\n\
             c, a = s.accept(); c.sendall(a[0].encode()); c.close()",
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(listener.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready", "the listener in the internet namespace did not start");
    let (ok, seen) = output(&["ip", "netns", "exec", client, "busybox", "nc", "-w", "5", addr, "9000"]);
    assert!(ok, "{client} could not reach {addr}:9000 in {server}: {seen}");
    assert!(listener.wait().unwrap().success(), "the listener in {server} failed");
    seen.trim().to_string()
}

fn need(tool: &str, hint: &str) {
    assert!(std::path::Path::new(tool).exists(), "{tool} is missing: {hint} (./scripts/setup.sh installs it)");
}

#[test]
fn a_segment_serves_dhcp_and_names_survives_a_dnsmasq_kill_and_goes_with_its_last_instance() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "bridges and namespaces need root: run ./scripts/test.sh as root, as CI does"
    );
    need("/usr/sbin/dnsmasq", "apt-get install dnsmasq-base");
    need("/bin/busybox", "apt-get install busybox-static");
    let id = std::process::id();
    let (host, client, inet) = (format!("hnth{id}"), format!("hntc{id}"), format!("hnti{id}"));
    let private_client = format!("hntp{id}");
    let _ns = Namespaces(vec![client.clone(), private_client.clone(), inet.clone(), host.clone()]);
    for ns in [&host, &client, &inet, &private_client] {
        run(&["ip", "netns", "add", ns]);
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    let root = tempfile::tempdir().unwrap();
    // dnsmasq reads its files as `nobody`.
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let net_root = root.path().join("net");
    let script = root.path().join("udhcpc.sh");
    std::fs::write(&script, "#!/bin/sh\necho \"event=$1 ip=$ip mask=$mask router=$router dns=$dns mtu=$mtu\"\n")
        .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    // "The internet": a namespace behind the host's uplink that knows no route to the vnet,
    // so only a masqueraded packet gets an answer.
    run(&["ip", "-n", &host, "link", "add", "hup0", "type", "veth", "peer", "name", "eth0", "netns", &inet]);
    run(&["ip", "-n", &host, "addr", "add", "10.99.0.1/24", "dev", "hup0"]);
    run(&["ip", "-n", &host, "link", "set", "hup0", "up"]);
    run(&["ip", "-n", &inet, "addr", "add", "10.99.0.2/24", "dev", "eth0"]);
    run(&["ip", "-n", &inet, "link", "set", "eth0", "up"]);
    let (host2, client2, script) = (host.clone(), client.clone(), script.display().to_string());
    let (inet2, pclient) = (inet.clone(), private_client.clone());
    // Everything that acts on the host side runs on a thread inside the host namespace; the
    // commands it starts (ip, dnsmasq) inherit that namespace.
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{host2}")).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let net = HostNet::new(&net_root);
        let att = |last: u8| NetworkAttachment {
            bridge: "hbtest0".into(),
            gateway: "10.77.0.1".parse().unwrap(),
            prefix_len: 24,
            address: format!("10.77.0.{last}").parse().unwrap(),
            mtu: 1400,
            vnet: "hztest".into(),
            outbound: true,
            public_address: None,
            public_idle_timeout_minutes: None,
        };
        let (mac_a, mac_b) = ("52:54:00:77:00:04", "52:54:00:77:00:05");
        net.attach(&att(4), &Reservation { owner: "rg/web/0", mac: mac_a, name: "web000000", port: "hvtest0" })
            .unwrap();
        net.attach(&att(5), &Reservation { owner: "rg/web/1", mac: mac_b, name: "web000001", port: "hvtest1" })
            .unwrap();
        // Again: idempotent, same result.
        net.attach(&att(4), &Reservation { owner: "rg/web/0", mac: mac_a, name: "web000000", port: "hvtest0" })
            .unwrap();
        assert!(link::exists("hbtest0"), "the bridge exists in the host namespace");
        assert_eq!(net.bridges(), ["hbtest0"]);
        let pid = net.dnsmasq_pid("hbtest0").expect("dnsmasq serves the bridge");

        // The instance's NIC: a veth on the bridge with the reserved MAC, in the client namespace.
        run(&["ip", "link", "add", "hvtest0", "type", "veth", "peer", "name", "eth0", "netns", &client2]);
        run(&["ip", "link", "set", "hvtest0", "master", "hbtest0", "up"]);
        run(&["ip", "-n", &client2, "link", "set", "eth0", "address", mac_a, "up"]);
        let dhcp = run(&[
            "ip", "netns", "exec", &client2, "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-t", "10", "-T", "1",
            "-O", "mtu", "-s", &script,
        ]);
        assert!(
            dhcp.contains("event=bound ip=10.77.0.4 mask=24 router=10.77.0.1 dns=10.77.0.1 mtu=1400"),
            "the reserved address, the gateway as router and DNS, and the MTU (option 26): {dhcp}"
        );
        let leases = net.leases("hbtest0");
        assert!(
            leases.iter().any(|l| l.mac == mac_a && l.ip.to_string() == "10.77.0.4" && l.name == "web000000"),
            "{leases:?}"
        );
        run(&["ip", "-n", &client2, "addr", "add", "10.77.0.4/24", "dev", "eth0"]);
        let lookup = |name: &str| output(&["ip", "netns", "exec", &client2, "busybox", "nslookup", name, "10.77.0.1"]);
        let (_, b) = lookup("web000001");
        assert!(b.contains("10.77.0.5"), "instance names resolve within the vnet: {b}");

        // Anti-spoofing: the port may send only as its own MAC and address.
        let table = net.guard_table().to_string();
        run(&["nft", "list", "table", "bridge", &table]);
        let ping =
            || output(&["ip", "netns", "exec", &client2, "busybox", "ping", "-c", "1", "-W", "1", "10.77.0.1"]).0;
        assert!(ping(), "the instance reaches its gateway as itself");
        let set_ip = |ip: &str| {
            run(&["ip", "-n", &client2, "addr", "flush", "dev", "eth0"]);
            run(&["ip", "-n", &client2, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        };
        set_ip("10.77.0.5");
        assert!(!ping(), "with another instance's address, nothing passes");
        set_ip("10.77.0.4");
        run(&["ip", "-n", &client2, "link", "set", "eth0", "address", mac_b]);
        assert!(!ping(), "with another instance's MAC, nothing passes");
        run(&["ip", "-n", &client2, "link", "set", "eth0", "address", mac_a]);
        assert!(ping(), "as itself again, it passes");

        // Outbound: the instance reaches "the internet", which sees the host's address.
        run(&["ip", "-n", &client2, "route", "replace", "default", "via", "10.77.0.1"]);
        let seen = peer_seen_by(&inet2, &client2);
        assert_eq!(seen, "10.99.0.1", "the internet sees the host's address, not the instance's");
        // A private subnet (no default outbound access) reaches its gateway but not beyond.
        let private = NetworkAttachment {
            bridge: "hbtest1".into(),
            gateway: "10.78.0.1".parse().unwrap(),
            prefix_len: 24,
            address: "10.78.0.4".parse().unwrap(),
            mtu: 1500,
            vnet: "hztest".into(),
            outbound: false,
            public_address: None,
            public_idle_timeout_minutes: None,
        };
        let mac_c = "52:54:00:78:00:04";
        net.attach(&private, &Reservation { owner: "rg/db/0", mac: mac_c, name: "db000000", port: "hvtest2" }).unwrap();
        run(&["ip", "link", "add", "hvtest2", "type", "veth", "peer", "name", "eth0", "netns", &pclient]);
        run(&["ip", "link", "set", "hvtest2", "master", "hbtest1", "up"]);
        run(&["ip", "-n", &pclient, "link", "set", "eth0", "address", mac_c, "up"]);
        run(&["ip", "-n", &pclient, "addr", "add", "10.78.0.4/24", "dev", "eth0"]);
        run(&["ip", "-n", &pclient, "route", "replace", "default", "via", "10.78.0.1"]);
        let ping_from =
            |dst: &str| output(&["ip", "netns", "exec", &pclient, "busybox", "ping", "-c", "1", "-W", "1", dst]).0;
        assert!(ping_from("10.78.0.1"), "a private subnet reaches its gateway");
        assert!(!ping_from("10.99.0.2"), "a private subnet does not reach the internet");
        assert!(ping_from("10.77.0.4"), "a private subnet reaches the rest of the vnet");

        // A public IP (the operator routes the pool to the host): the instance leaves with it,
        // even from a private subnet, and the internet reaches the instance by it.
        run(&["ip", "-n", &inet2, "route", "add", "198.51.100.0/28", "via", "10.99.0.1"]);
        let with_public =
            NetworkAttachment { public_address: Some("198.51.100.5".parse().unwrap()), ..private.clone() };
        let db = Reservation { owner: "rg/db/0", mac: mac_c, name: "db000000", port: "hvtest2" };
        net.attach(&with_public, &db).unwrap();
        let nat = net.public_table().to_string();
        assert!(output(&["nft", "list", "table", "ip", &nat]).0, "the NAT table exists with a public IP");
        assert_eq!(peer_seen_by(&inet2, &pclient), "198.51.100.5", "the instance leaves with its public IP");
        assert_eq!(peer_seen_by(&inet2, &client2), "10.99.0.1", "an instance without one still leaves as the host");
        assert_eq!(
            peer_seen_at(&pclient, &inet2, "198.51.100.5"),
            "10.99.0.2",
            "the internet reaches the instance by its public IP, which sees the real source"
        );
        // The table deleted behind herd's back: repair writes it again.
        run(&["nft", "delete", "table", "ip", &nat]);
        assert!(net.repair().unwrap().iter().any(|l| l.contains(&nat)), "repair restores the NAT table");
        assert_eq!(peer_seen_by(&inet2, &pclient), "198.51.100.5", "NATed again after repair");
        // An element lost (as after a crash between the record and the table): attaching the
        // instance again puts it back.
        run(&["nft", "delete", "element", "ip", &nat, "inbound", "{ 198.51.100.5 }"]);
        net.attach(&with_public, &db).unwrap();
        assert_eq!(peer_seen_at(&pclient, &inet2, "198.51.100.5"), "10.99.0.2", "reached by it again");
        // Attached again without it (a model without a public IP): the NAT goes.
        net.attach(&private, &db).unwrap();
        assert!(!output(&["nft", "list", "table", "ip", &nat]).0, "the NAT table goes with the last public IP");
        assert!(!ping_from("10.99.0.2"), "without its public IP, the private subnet is closed again");
        net.attach(&with_public, &db).unwrap();
        net.detach("rg/db/0").unwrap();
        assert!(!link::exists("hbtest1"), "the private segment goes with its instance");
        assert!(!output(&["nft", "list", "table", "ip", &nat]).0, "the NAT table goes with its instance");
        assert_eq!(peer_seen_by(&inet2, &client2), "10.99.0.1", "the other segment keeps its outbound access");

        // dnsmasq killed: repair restarts it, and it serves the same reservations.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // Gone means a zombie or nothing (its command line empties before its sockets close).
        let exited = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |s| s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
        };
        while !exited() {
            assert!(std::time::Instant::now() < deadline, "the killed dnsmasq (pid {pid}) did not exit in 10 s");
            std::thread::yield_now();
        }
        assert_eq!(net.dnsmasq_pid("hbtest0"), None);
        let fixed = net.repair().unwrap();
        assert_eq!(fixed, ["dnsmasq for bridge hbtest0 restarted"]);
        assert!(net.dnsmasq_pid("hbtest0").is_some_and(|p| p != pid));
        let (_, b) = lookup("web000001");
        assert!(b.contains("10.77.0.5"), "served again after repair: {b}");
        assert!(net.repair().unwrap().is_empty(), "nothing to repair twice");

        // One instance leaves: its name goes, the segment stays.
        net.detach("rg/web/1").unwrap();
        let (_, b) = lookup("web000001");
        assert!(!b.contains("10.77.0.5"), "a detached instance's name no longer resolves: {b}");
        assert!(link::exists("hbtest0"));
        // The last one leaves: dnsmasq stopped, bridge gone, no files left.
        net.detach("rg/web/0").unwrap();
        net.detach("rg/web/0").unwrap();
        assert!(!link::exists("hbtest0"), "the bridge goes with its last instance");
        assert!(!output(&["nft", "list", "table", "bridge", &table]).0, "the guard table goes with the last port");
        assert!(net.bridges().is_empty());
        assert!(!net_root.exists(), "no files left under {}", net_root.display());
        let (_, ps) = output(&["pgrep", "-f", "--", &format!("--pid-file={}", net_root.display())]);
        assert!(ps.trim().is_empty(), "no dnsmasq left: {ps}");
    })
    .join()
    .unwrap();
}
