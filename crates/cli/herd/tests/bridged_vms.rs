//! Bridged VMs for real, entirely inside a network namespace this test creates (the root
//! namespace's network is not touched): `herd server --driver qemu` with
//! `[network] mode = "bridged"`, a vnet and subnet, two TCG VMs of the test guest.
//!
//! - Each VM's NIC is a TAP on the subnet's bridge; the VMs get `.4` and `.5` by DHCP from
//!   herd's dnsmasq (the test reads its lease for each VM's MAC), with the subnet's MTU.
//! - The VMs reach each other by private IP, after resolving each other's computer names
//!   through the vnet's DNS (a Custom Script on both: an httpd, then `nslookup` and `wget` of
//!   the other); the host side reaches them on their private IPs. Each VM fetches the other's
//!   1 MiB random file over the bridge and its MD5 matches (issue 19's MTU check). Each VM
//!   reads its own name at 169.254.169.254 (metadata on the vnet, no relay).
//! - Every TAP is guarded by herd's nftables bridge table (anti-spoofing).
//! - Deleting the set leaves no TAP, bridge, dnsmasq or nftables table behind.
//!
//! Needs the test guest (`images/testguest/build.sh`; `./scripts/test.sh` builds it) and
//! dnsmasq (`dnsmasq-base`).

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(240);
const SET: [&str; 4] = ["-g", "net-rg", "-n", "web"];

/// A Custom Script for both VMs: serve the hostname on 8080, print the NIC's address and MTU,
/// then fetch each VM's name page by the address its computer name resolves to (bounded
/// retries inside the guest: the other VM may still be booting). `nc` rather than `wget`:
/// the guest's static busybox `wget` crashes looking up the `http` service (static glibc
/// cannot load NSS modules).
const SCRIPT: &str = r#"mkdir -p /tmp/www && hostname > /tmp/www/name && head -c 1048576 /dev/urandom > /tmp/www/big && httpd -p 8080 -h /tmp/www;
echo "own big $(md5sum < /tmp/www/big | cut -c1-32)";
echo "mtu $(cat /sys/class/net/eth0/mtu)"; ip -4 -o addr show eth0;
gw=$(ip -4 route show default | awk '{print $3}'); echo "gateway $gw; $(grep nameserver /etc/resolv.conf)"
i=0; m=
while [ $i -lt 10 ] && [ -z "$m" ]; do
  m=$(printf 'GET /metadata/instance/compute/name?api-version=2021-02-01&format=text HTTP/1.0\r\nMetadata: true\r\n\r\n' | nc -w 5 169.254.169.254 80 | tail -n 1)
  i=$((i + 1)); [ -z "$m" ] && sleep 1
done
echo "metadata says $m . (attempt $i)"
for n in web000000 web000001; do
  i=0; r=
  while [ $i -lt 60 ]; do
    a=$(nslookup $n $gw 2>&1 | awk '/^Address: [0-9.]+$/ {print $2}' | tail -n 1)
    [ -n "$a" ] && r=$(printf 'GET /name HTTP/1.0\r\n\r\n' | nc -w 2 $a 8080 | tail -n 1) && [ -n "$r" ] && break
    i=$((i + 1)); sleep 1
  done
  echo "peer $n at $a says $r"
  echo "peer $n big $(printf 'GET /big HTTP/1.0\r\n\r\n' | nc -w 5 $a 8080 | tail -c 1048576 | md5sum | cut -c1-32)"
done
true"#;

#[test]
fn two_bridged_vms_get_their_addresses_by_dhcp_reach_each_other_by_name_and_leave_nothing() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "bridged networking needs root (namespaces, bridges, TAPs): run ./scripts/test.sh as root, as CI does"
    );
    assert!(
        std::path::Path::new("/usr/sbin/dnsmasq").exists(),
        "dnsmasq is missing: apt-get install dnsmasq-base (./scripts/setup.sh installs it)"
    );
    herd_test_support::require_testguest("1.0.0");
    let tg = herd_test_support::testguest_dir().join("1.0.0");
    let ns = TestNetns::create(&format!("herdv{}", std::process::id()));
    let links_before = ns.links();

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let _vms = VmGuard(data.clone());
    let config = "[network]\nmode = \"bridged\"\n[qemu]\nboot_timeout_secs = 240\nstop_timeout_secs = 20\n";
    let s = Server::start_in(&ns.0, "qemu", &data, Some(config));
    let _state = RemoveOnDrop(hostnet_root(&data));
    s.ok(&["group", "create", "-n", "net-rg"]);
    s.import_testguest_kernel(&tg, "Herd:TestGuest:1:1.0.0");
    s.ok(&words("network vnet create -g net-rg -n vnet1 --address-prefix 10.0.0.0/16"));
    s.ok(&words("network vnet subnet create -g net-rg --vnet-name vnet1 -n web --address-prefixes 10.0.0.0/24"));
    s.ok(&on_set(
        &SET,
        &["vmss", "create"],
        &words(
            "--image Herd:TestGuest:1:1.0.0 --instance-count 2 --vm-sku Standard_B1ms --computer-name-prefix web \
             --vnet-name vnet1 --subnet web --disable-overprovision --upgrade-policy-mode Manual --quiet --timeout 300",
        ),
    ));
    let inst = counted_instances(&s, &SET);
    assert_eq!(inst.len(), 2, "{inst:?}");
    let mut ips: Vec<(String, String)> = inst
        .iter()
        .map(|i| {
            let ip = i["privateIpAddress"].as_str().unwrap().to_string();
            assert_eq!(i["reachAddress"].as_str(), Some(ip.as_str()), "bridged: reached on the private IP: {i}");
            (i["instanceId"].as_str().unwrap().to_string(), ip)
        })
        .collect();
    ips.sort();
    assert_eq!(ips.iter().map(|(_, ip)| ip.as_str()).collect::<Vec<_>>(), ["10.0.0.4", "10.0.0.5"]);

    // One TAP per VM and the subnet's bridge, inside the test's namespace.
    let links = ns.links();
    assert_eq!(links.iter().filter(|l| l.starts_with("ht")).count(), 2, "{links:?}");
    assert_eq!(links.iter().filter(|l| l.starts_with("hb")).count(), 1, "{links:?}");
    // Their anti-spoofing table (one per server, family bridge).
    let tables = || {
        let out = s.command("nft").args(["list", "tables"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(tables().contains("table bridge herd_"), "{}", tables());

    // Each VM asked DHCP and got its reservation: dnsmasq's lease for its MAC.
    let leases = wait_for("a DHCP lease for each VM", BOOT, || {
        let text =
            lease_files(&data).iter().map(|p| std::fs::read_to_string(p).unwrap_or_default()).collect::<String>();
        let all = ips.iter().all(|(id, ip)| {
            let mac = herd_hostnet::mac_for(&format!("net-rg/web/{id}"));
            text.lines().any(|l| l.split_whitespace().nth(1) == Some(mac.as_str()) && l.contains(&format!(" {ip} ")))
        });
        all.then_some(text)
    });
    assert!(leases.contains("web000000") && leases.contains("web000001"), "{leases}");

    // The VMs reach each other by name and private IP.
    let settings = serde_json::json!({ "commandToExecute": SCRIPT });
    s.ok(&[
        words("vmss extension set -g net-rg --vmss-name web --name CustomScript --publisher Microsoft.Azure.Extensions --version 2.0 --settings"),
        vec![&settings.to_string()],
    ]
    .concat());
    s.ok(&["vmss", "update-instances", "-g", "net-rg", "-n", "web", "--instance-ids", "*", "--timeout", "300"]);
    let done: Vec<Value> = wait_for("the Custom Script on both VMs", BOOT, || {
        let all = counted_instances(&s, &SET);
        let finished = all.len() == 2
            && all.iter().all(|i| {
                i["pendingAction"].is_null()
                    && i["extensions"][0]["state"].as_str().is_some_and(|st| st != "Transitioning")
            });
        finished.then_some(all)
    });
    for i in &done {
        let ext = &i["extensions"][0];
        let msg = ext["message"].as_str().unwrap_or_default();
        assert_eq!(ext["state"], "Succeeded", "{ext}");
        assert!(msg.contains("mtu 1450"), "the subnet's MTU from DHCP (the fabric's 1500 minus VXLAN's 50): {msg}");
        assert!(msg.contains(&format!("inet {}/24", i["privateIpAddress"].as_str().unwrap())), "{msg}");
        assert!(msg.contains("peer web000000 at 10.0.0.4 says web000000"), "name, address and TCP to VM 0: {msg}");
        assert!(msg.contains("peer web000001 at 10.0.0.5 says web000001"), "name, address and TCP to VM 1: {msg}");
        let me = format!("metadata says web_{} .", i["instanceId"].as_str().unwrap_or_default());
        assert!(msg.contains(&me), "the VM reads its own identity at 169.254.169.254: {msg}");
    }
    // 1 MiB from each VM to the other over the bridge arrives whole (MTU and checksums): the
    // MD5 a VM computed of its own random file is the one its peer computed of what it got.
    let own = |m: &str| m.split("own big ").nth(1).map(|r| r[..32].to_string()).expect("the VM printed its own MD5");
    let got = |m: &str, peer: &str| {
        m.split(&format!("peer {peer} big "))
            .nth(1)
            .map(|r| r[..32].to_string())
            .expect("the VM printed the peer's MD5")
    };
    let msg = |n: usize| done[n]["extensions"][0]["message"].as_str().unwrap_or_default().to_string();
    let names: Vec<String> = done.iter().map(|i| i["computerName"].as_str().unwrap().to_string()).collect();
    const EMPTY_MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";
    assert!(own(&msg(0)) != EMPTY_MD5 && own(&msg(1)) != EMPTY_MD5, "each VM wrote its 1 MiB file");
    assert_eq!(got(&msg(1), &names[0]), own(&msg(0)), "1 MiB from {} to {}", names[0], names[1]);
    assert_eq!(got(&msg(0), &names[1]), own(&msg(1)), "1 MiB from {} to {}", names[1], names[0]);
    // The host side reaches both on their private IPs.
    for (_, ip) in &ips {
        let out = s.command("curl").args(["-s", "-f", "-m", "5", &format!("http://{ip}:8080/name")]).output().unwrap();
        assert!(out.status.success(), "curl to {ip} from the host namespace failed");
    }

    s.ok(&["vmss", "delete", "-g", "net-rg", "-n", "web", "--timeout", "300"]);
    assert!(qemu_pids(&data).is_empty(), "the VMs are gone");
    assert_eq!(ns.links(), links_before, "no TAP or bridge is left in the namespace");
    let dnsmasq: Vec<u32> = ns.pids().into_iter().filter(|p| comm(*p) == "dnsmasq").collect();
    assert!(dnsmasq.is_empty(), "no dnsmasq is left: {dnsmasq:?}");
    // The metadata routes go when the metadata service closes the listeners (its controller
    // runs on that change, just after the delete returns).
    wait_observing("no nftables table left in the namespace", Duration::from_secs(15), || {
        let t = tables();
        t.is_empty().then_some(()).ok_or(t)
    });
    assert!(!hostnet_root(&data).exists(), "no state is left in {}", hostnet_root(&data).display());
}

/// Every dnsmasq lease file of the server of `data`.
fn lease_files(data: &std::path::Path) -> Vec<std::path::PathBuf> {
    let dirs = std::fs::read_dir(hostnet_root(data)).into_iter().flatten().flatten();
    dirs.map(|d| d.path().join("leases")).filter(|p| p.is_file()).collect()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}
