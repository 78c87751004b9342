//! Bridged networking survives a crash: `kill -9` of `herd server` in the middle of creating 20
//! bridged process instances, then a restart, converges with no duplicate address (private or
//! public), every DHCP reservation naming the right MAC and address, every public IP NATed to
//! its instance's private IP, one veth and one namespace per instance, one dnsmasq; deleting the set then leaves no interface, namespace, dnsmasq, nftables table or
//! state file. Everything runs inside a network namespace this test creates.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// `MAC -> IP` of every DHCP reservation file of the server of `data`.
fn reservations(data: &std::path::Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for bridge in std::fs::read_dir(hostnet_root(data)).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(bridge.path().join("dhcp")).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(f.path()).unwrap_or_default();
            let mut it = text.trim().split(',');
            if let (Some(mac), Some(ip)) = (it.next(), it.next()) {
                assert!(out.insert(mac.to_string(), ip.to_string()).is_none(), "one reservation per MAC: {mac}");
            }
        }
    }
    out
}

/// `public IP -> private IP` of every NAT record of the server of `data`.
fn nat_records(data: &std::path::Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for f in std::fs::read_dir(hostnet_root(data).join("public")).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(f.path()).unwrap_or_default();
        let mut it = text.split_whitespace();
        if let (Some(public), Some(private)) = (it.next(), it.next()) {
            assert!(out.insert(public.to_string(), private.to_string()).is_none(), "one record per address: {public}");
        }
    }
    out
}

#[test]
fn kill_9_mid_create_of_bridged_instances_converges_and_delete_leaves_nothing() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "bridged networking needs root (namespaces, bridges): run ./scripts/test.sh as root, as CI does"
    );
    let ns = TestNetns::create(&format!("herdc{}", std::process::id()));
    let links_before = ns.links();
    let netns_before = instance_namespaces();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = "[network]\nmode = \"bridged\"\npublic_ip_pool = \"198.51.100.0/27\"\n[provisioning]\nmax_in_flight_percent = 10\nmin_in_flight = 4\n";
    let mut s = Server::start_in(&ns.0, "process", &data, Some(config));
    let _state = RemoveOnDrop(hostnet_root(&data));
    let img = image_dir(&dir.path().join("img"), "exec sleep 3600");
    s.group_with_image("rg", "Herd:Sleeper:1:1.0.0", &img);
    s.ok(&words("network vnet create -g rg -n vnet1 --address-prefix 10.0.0.0/16"));
    s.ok(&words("network vnet subnet create -g rg --vnet-name vnet1 -n web --address-prefixes 10.0.0.0/24"));
    s.ok(&words(
        "vmss create -g rg -n web --image Herd:Sleeper:1:1.0.0 --instance-count 20 --vm-sku Standard_B1s \
         --vnet-name vnet1 --subnet web --public-ip-per-vm --disable-overprovision --no-wait --quiet",
    ));
    // Kill on observed state, not on a timer.
    let seen = wait_for("4 or more running instances", Duration::from_secs(120), || {
        let n = instance_group_leaders(&data).len();
        (n >= 4).then_some(n)
    });
    s.kill9();
    let after_kill = instance_group_leaders(&data).len();
    assert!(after_kill < 20, "the crash happened mid-way: {seen} seen, {after_kill} after the kill");

    s.restart();
    let list = wait_for("20 running instances after the restart", Duration::from_secs(300), || {
        let v = s.json(&["vmss", "list-instances", "-g", "rg", "-n", "web"]);
        let all = v.as_array().cloned().unwrap_or_default();
        if let Some(f) = all.iter().find(|i| i["state"] == "Failed") {
            panic!("an instance failed after the restart: {f}");
        }
        (all.len() == 20 && all.iter().all(|i| i["state"] == "Running")).then_some(all)
    });
    assert_eq!(list.len(), 20, "exactly 20 instances");
    let mut want = BTreeMap::new();
    let mut nat = BTreeMap::new();
    for i in list {
        let ip = i["privateIpAddress"].as_str().unwrap().to_string();
        nat.insert(i["publicIpAddress"].as_str().unwrap().to_string(), ip.clone());
        assert_eq!(i["reachAddress"].as_str(), Some(ip.as_str()), "{i}");
        let mac = herd_hostnet::mac_for(&format!("rg/web/{}", i["instanceId"].as_str().unwrap()));
        want.insert(mac, ip);
    }
    let ips: BTreeSet<&String> = want.values().collect();
    assert_eq!(ips.len(), 20, "no duplicate addresses: {want:?}");
    let expected: BTreeSet<String> = (4..24).map(|n| format!("10.0.0.{n}")).collect();
    assert_eq!(ips.into_iter().cloned().collect::<BTreeSet<_>>(), expected, "the lowest 20 after the reserved ones");
    assert_eq!(reservations(&data), want, "every DHCP reservation names the instance's MAC and address, and no other");
    let publics: BTreeSet<String> = (1..21).map(|n| format!("198.51.100.{n}")).collect();
    assert_eq!(nat.keys().cloned().collect::<BTreeSet<_>>(), publics, "20 distinct public IPs, the lowest of the pool");
    assert_eq!(nat_records(&data), nat, "every public IP is NATed to its instance's private IP, and no other");
    let links = ns.links();
    assert_eq!(links.iter().filter(|l| l.starts_with("hv")).count(), 20, "one veth per instance: {links:?}");
    assert_eq!(links.iter().filter(|l| l.starts_with("hb")).count(), 1, "one bridge: {links:?}");
    assert_eq!(instance_namespaces().difference(&netns_before).count(), 20, "one namespace per instance");
    let dnsmasq = || ns.pids().into_iter().filter(|p| comm(*p) == "dnsmasq").count();
    assert_eq!(dnsmasq(), 1, "one dnsmasq for the subnet, adopted across the crash");

    s.ok(&["vmss", "delete", "-g", "rg", "-n", "web", "--quiet", "--timeout", "300"]);
    assert_eq!(ns.links(), links_before, "no veth or bridge is left");
    assert!(instance_namespaces().difference(&netns_before).next().is_none(), "no instance namespace is left");
    assert_eq!(dnsmasq(), 0, "no dnsmasq is left");
    // The metadata routes go when the metadata service closes the listeners (its controller
    // runs on that change, just after the delete returns).
    wait_observing("no nftables table left", Duration::from_secs(15), || {
        let tables = s.command("nft").args(["list", "tables"]).output().unwrap();
        let t = String::from_utf8_lossy(&tables.stdout).into_owned();
        t.is_empty().then_some(()).ok_or(t)
    });
    assert!(!hostnet_root(&data).exists(), "no state is left in {}", hostnet_root(&data).display());
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}
