//! A vnet stretched over hosts (issue 20, "Vnets across hosts"), on the namespace rig: a
//! bridged server and two agent hosts in zones 1 and 2, a set of two process instances of the
//! sample image on one subnet, one per host, behind a load balancer.
//!
//! - Each host's bridge of the subnet carries its gateway alone, with the anycast gateway MAC;
//!   the server's carries the probe and load-balancer sources with a MAC of its own; each has
//!   a VXLAN port with the subnet's VNI, `nolearning`, the vnet MTU (fabric 1500 − 50), and
//!   exactly the forwarding entries the server's view gives (a zero entry per peer, one per
//!   remote NIC).
//! - The instances reach each other by private IP and by computer name across hosts (1 MiB),
//!   the load
//!   balancer on the server probes both by private IP and forwards to them, and each gets its
//!   own metadata at 169.254.169.254 from its own host.
//! - Scaling in to one instance takes the emptied host out of the segment: its VXLAN port goes,
//!   and the other host's table loses the removed NIC.
//! - `down` leaves nothing.
//!
//! And on real TCG VMs of the test guest (`two_vms_on_two_hosts_…`): one VM on each host, both
//! behind the load balancer, each reaching the other by private IP (1 MiB each way, MD5
//! checked) and reading its own identity at 169.254.169.254 from its own host.

mod common;

use common::rig::Rig;
use common::{wait_for, wait_observing};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

fn text(out: std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (instance id, private IP, host) of rg/web, by id.
fn placed(r: &Rig) -> Vec<(String, String, String)> {
    let list = r.json(&["vmss", "list-instances", "-g", "rg", "-n", "web"]);
    let mut v: Vec<(String, String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["instanceId"].as_str().unwrap_or_default().to_string(),
                i["privateIpAddress"].as_str().unwrap_or_default().to_string(),
                i["host"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Whether the instance `pid` on `host` gets an HTTP answer from `to:8080` (3 s).
fn reaches_across(r: &Rig, host: &str, pid: u32, to: &str) -> bool {
    in_instance(r, host, pid, &["curl", "-s", "-o", "/dev/null", "--max-time", "3", &format!("http://{to}:8080/")])
        .status
        .success()
}

/// The pid (in `host`'s PID namespace) of the instance serving on `ip`.
fn server_pid(r: &Rig, host: &str, ip: &str) -> u32 {
    let pids = r.pids(host, &format!("--bind {ip}"));
    assert_eq!(pids.len(), 1, "one process serves {ip} on {host}: {pids:?}");
    pids[0]
}

/// `cmd` inside the network namespace of process `pid` of `host`.
fn in_instance(r: &Rig, host: &str, pid: u32, cmd: &[&str]) -> std::process::Output {
    let mut full = vec!["nsenter", "-t"];
    let p = pid.to_string();
    full.push(&p);
    full.push("-n");
    full.extend(cmd);
    r.exec(host, &full)
}

#[test]
fn a_subnet_spans_two_hosts_over_vxlan() {
    let namespaces_before = namespaces();
    let r = Rig::up(&Rig::unique("vx"), &["--hosts", "2", "--zones", "1,2"], "");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../images/sample-process");
    r.json(&["group", "create", "-n", "rg", "-l", "local"]);
    r.json(&["image", "import", "--urn", "Herd:Sample:1:1.0.0", "--dir", sample.to_str().unwrap()]);
    r.subnet_and_lb();
    r.json(&[
        "vmss",
        "create",
        "-g",
        "rg",
        "-n",
        "web",
        "--image",
        "Herd:Sample:1:1.0.0",
        "--instance-count",
        "2",
        "--vm-sku",
        "Standard_B1s",
        "--zones",
        "1",
        "2",
        "--vnet-name",
        "vnet1",
        "--subnet",
        "web",
        "--lb",
        "web-lb",
        "--disable-overprovision",
        "--no-wait",
    ]);
    wait_observing("2 instances running", Duration::from_secs(180), || {
        let list = r.json(&["vmss", "list-instances", "-g", "rg", "-n", "web"]);
        let up = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["powerState"] == "running" && i["provisioningState"] == "Succeeded")
            .count();
        if up == 2 {
            Ok(())
        } else {
            Err(common::instances_summary(&list))
        }
    });
    let p = placed(&r);
    let hosts: Vec<&str> = p.iter().map(|x| x.2.as_str()).collect();
    assert!(hosts.contains(&"h1") && hosts.contains(&"h2"), "one instance per host: {p:?}");
    let (id_a, ip_a, host_a) = p[0].clone();
    let (id_b, ip_b, host_b) = p[1].clone();

    // The hosts' and the server's stretch of the subnet.
    let bridge = {
        let links = text(r.exec(&host_a, &["ip", "-br", "link"]));
        links.split_whitespace().find(|w| w.starts_with("hb")).map(str::to_string).expect("a bridge on the host")
    };
    let port = herd_hostnet::fabric::vxlan_name(&bridge);
    let vni = herd_hostnet::fabric::vni_for(&bridge);
    wait_for("both hosts and the server stretched the subnet", Duration::from_secs(30), || {
        ["server", "h1", "h2"]
            .iter()
            .all(|m| text(r.exec(m, &["ip", "-d", "link", "show", &port])).contains(&format!("vxlan id {vni}")))
            .then_some(())
    });
    for h in ["h1", "h2"] {
        let d = text(r.exec(h, &["ip", "-d", "link", "show", &port]));
        assert!(d.contains("nolearning") && d.contains("mtu 1450"), "{h}: {d}");
        let br = text(r.exec(h, &["ip", "link", "show", &bridge]));
        assert!(br.contains(herd_hostnet::fabric::GATEWAY_MAC), "{h}'s gateway has the anycast MAC: {br}");
        let addrs = text(r.exec(h, &["ip", "-4", "-o", "addr", "show", &bridge]));
        assert!(
            addrs.contains("10.0.0.1/24") && !addrs.contains("10.0.0.2/") && !addrs.contains("10.0.0.3/"),
            "{h}: {addrs}"
        );
    }
    let server_addrs = text(r.exec("server", &["ip", "-4", "-o", "addr", "show", &bridge]));
    assert!(server_addrs.contains("10.0.0.2/24") && server_addrs.contains("10.0.0.3/24"), "{server_addrs}");
    let server_br = text(r.exec("server", &["ip", "link", "show", &bridge]));
    assert!(server_br.contains(&herd_hostnet::fabric::server_bridge_mac(&bridge)), "{server_br}");
    // h(a)'s table: a zero entry for the server and for the other host, b's NIC, the server's bridge.
    let fdb = text(r.exec(&host_a, &["bridge", "fdb", "show", "dev", &port]));
    let mac_b = herd_hostnet::mac_for(&format!("rg/web/{id_b}"));
    for want in [
        "00:00:00:00:00:00 dst 10.250.0.2".to_string(),
        format!("{mac_b} dst {}", if host_b == "h1" { "10.250.0.10" } else { "10.250.0.11" }),
        format!("{} dst 10.250.0.2", herd_hostnet::fabric::server_bridge_mac(&bridge)),
    ] {
        assert!(fdb.contains(&want), "{host_a}'s forwarding table lacks '{want}':\n{fdb}");
    }

    // Instance to instance across hosts, by private IP.
    let (pid_a, pid_b) = (server_pid(&r, &host_a, &ip_a), server_pid(&r, &host_b, &ip_b));
    for (host, pid, to, name) in
        [(&host_a, pid_a, &ip_b, format!("web00000{id_b}")), (&host_b, pid_b, &ip_a, format!("web00000{id_a}"))]
    {
        let body = wait_for(&format!("{host}'s instance reaching {to}"), Duration::from_secs(30), || {
            let out = in_instance(&r, host, pid, &["curl", "-sf", "--max-time", "3", &format!("http://{to}:8080/")]);
            out.status.success().then(|| text(out))
        });
        assert!(body.contains(&format!("Hello from {name}")), "{body}");
    }
    // By computer name too: each host's DNS for the vnet knows the other host's instances.
    for (host, pid, to, name) in
        [(&host_a, pid_a, &ip_b, format!("web00000{id_b}")), (&host_b, pid_b, &ip_a, format!("web00000{id_a}"))]
    {
        wait_for(&format!("{name} resolving to {to} on {host}"), Duration::from_secs(30), || {
            let out = in_instance(&r, host, pid, &["busybox", "nslookup", &name, "10.0.0.1"]);
            text(out).lines().any(|l| l.trim() == format!("Address: {to}")).then_some(())
        });
    }
    // 1 MiB across: a file in b's served directory, fetched from a's namespace.
    let cwd = text(r.exec(&host_b, &["readlink", &format!("/proc/{pid_b}/cwd")])).trim().to_string();
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(Path::new(&cwd).join("www/mib"), &data).unwrap();
    let want = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&data))
    };
    let got = wait_for("1 MiB from one host's instance to the other's", Duration::from_secs(30), || {
        let out = in_instance(
            &r,
            &host_a,
            pid_a,
            &["sh", "-c", &format!("curl -sf --max-time 10 http://{ip_b}:8080/mib | sha256sum | cut -d' ' -f1")],
        );
        let sum = text(out).trim().to_string();
        (sum == want).then_some(sum)
    });
    assert_eq!(got, want);

    // The load balancer on the server probes both by private IP and forwards to them.
    wait_for("both instances in rotation", Duration::from_secs(60), || (r.in_rotation().len() == 2).then_some(()));
    let frontend = r.json(&["network", "public-ip", "show", "-g", "rg", "-n", "web-lb-ip"]);
    let frontend = frontend["ipAddress"].as_str().unwrap().to_string();
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let out = r.exec("server", &["curl", "-sf", "--max-time", "3", &format!("http://{frontend}:18080/")]);
        if out.status.success() {
            let body = text(out);
            if let Some(n) = body.split("Hello from ").nth(1).and_then(|t| t.split_whitespace().next()) {
                answered.insert(n.to_string());
            }
        }
        if answered.len() == 2 {
            break;
        }
    }
    assert_eq!(answered.len(), 2, "both hosts' instances answer through the frontend: {answered:?}");

    // Each instance's metadata at 169.254.169.254, from its own host.
    for (host, pid, id) in [(&host_a, pid_a, &id_a), (&host_b, pid_b, &id_b)] {
        let doc: Value = wait_for(&format!("{host}'s instance's metadata"), Duration::from_secs(30), || {
            let out = in_instance(
                &r,
                host,
                pid,
                &[
                    "curl",
                    "-sf",
                    "--max-time",
                    "3",
                    "-H",
                    "Metadata: true",
                    "http://169.254.169.254/metadata/instance?api-version=2021-02-01",
                ],
            );
            out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
        });
        assert_eq!(doc["compute"]["name"], format!("web_{id}"), "{doc}");
    }

    // A server restart cuts no segment: b's agent frozen, the server killed and started
    // again, a links first; a's table keeps b's NIC where it is until b links again (the
    // hosts' VXLAN addresses are recorded, so the restarted server does not take b's NIC for
    // its own while b is away).
    let vtep_of = |h: &str| if h == "h1" { "10.250.0.10" } else { "10.250.0.11" };
    let entry = format!("{} dst {}", herd_hostnet::mac_for(&format!("rg/web/{id_b}")), vtep_of(&host_b));
    r.signal(&host_b, "stop");
    r.signal("server", "kill");
    r.start("server");
    r.wait_host(&host_a, "Ready", Duration::from_secs(60));
    let mut samples = 0;
    let fdb_a = || text(r.exec(&host_a, &["bridge", "fdb", "show", "dev", &herd_hostnet::fabric::vxlan_name(&bridge)]));
    // A few seconds with a linked and b frozen: the server has sent a its segments by now.
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < until {
        let fdb = fdb_a();
        assert!(
            fdb.contains(&entry),
            "{host_a} lost '{entry}' after {samples} samples while {host_b} was away:\n{fdb}"
        );
        samples += 1;
    }
    r.signal(&host_b, "cont");
    r.wait_host(&host_b, "Ready", Duration::from_secs(60));
    assert!(fdb_a().contains(&entry));
    assert!(
        reaches_across(&r, &host_a, pid_a, &ip_b),
        "still across after the restart ({samples} samples of the table)"
    );

    // Forwarding by lease: b's agent frozen, its instance keeps running, but once the lease
    // the server last granted (10 s, counted from the heartbeat b sent) has run out, the
    // kernel fences b's port with no code of ours running: a no longer reaches b, and the
    // port's allow counter stops. Continued, the next acknowledgement re-arms it.
    let lease_table = text(r.exec(&host_b, &["nft", "list", "tables"]))
        .lines()
        .find_map(|l| l.strip_prefix("table bridge ").filter(|t| t.ends_with("_lease")).map(str::to_string))
        .expect("a lease table on the host");
    let allowed = || -> u64 {
        text(r.exec(&host_b, &["nft", "list", "table", "bridge", &lease_table]))
            .lines()
            .filter(|l| l.contains("comment \"leased\""))
            .filter_map(|l| l.split("packets ").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    };
    wait_for("b reachable before the freeze", Duration::from_secs(30), || {
        reaches_across(&r, &host_a, pid_a, &ip_b).then_some(())
    });
    r.signal(&host_b, "stop");
    let frozen = std::time::Instant::now();
    wait_for(&format!("{host_b}'s port fenced once its lease ran out"), Duration::from_secs(40), || {
        (!reaches_across(&r, &host_a, pid_a, &ip_b)).then_some(())
    });
    assert!(frozen.elapsed() >= Duration::from_secs(6), "fenced only after the lease: {:?}", frozen.elapsed());
    assert_eq!(r.pids(&host_b, &format!("--bind {ip_b}")), vec![pid_b], "the instance itself keeps running");
    let counted = allowed();
    assert!(!reaches_across(&r, &host_a, pid_a, &ip_b));
    assert_eq!(allowed(), counted, "after the lease, the port's allow counter never increases");
    r.signal(&host_b, "cont");
    wait_for("b reachable again once its agent is acknowledged", Duration::from_secs(30), || {
        reaches_across(&r, &host_a, pid_a, &ip_b).then_some(())
    });

    // NSGs are enforced on each host: deny 8080 from the vnet on the set's NIC, and a's
    // instance no longer reaches b's (checked on b's host: the server is not on that path),
    // while the probes still pass; deleting the rule lets it through again.
    let reaches_b = || {
        in_instance(
            &r,
            &host_a,
            pid_a,
            &["curl", "-s", "-o", "/dev/null", "--max-time", "2", &format!("http://{ip_b}:8080/")],
        )
        .status
        .success()
    };
    r.json(&["network", "nsg", "create", "-g", "rg", "-n", "web-nsg"]);
    r.json(&[
        "network",
        "nsg",
        "rule",
        "create",
        "-g",
        "rg",
        "--nsg-name",
        "web-nsg",
        "-n",
        "no-vnet-8080",
        "--priority",
        "200",
        "--access",
        "Deny",
        "--protocol",
        "Tcp",
        "--source-address-prefixes",
        "VirtualNetwork",
        "--destination-port-ranges",
        "8080",
    ]);
    let nsg_id = r.json(&["network", "nsg", "show", "-g", "rg", "-n", "web-nsg"])["id"].clone();
    r.json(&[
        "vmss",
        "update",
        "-g",
        "rg",
        "-n",
        "web",
        "--set",
        &format!("virtualMachineProfile.networkProfile.networkInterfaceConfigurations[0].networkSecurityGroup={{\"id\": {nsg_id}}}"),
    ]);
    wait_for(&format!("the NSG on {host_b} to block {ip_a} -> {ip_b}:8080"), Duration::from_secs(30), || {
        (!reaches_b()).then_some(())
    });
    let tables = text(r.exec(&host_b, &["nft", "list", "tables"]));
    assert!(tables.lines().any(|t| t.ends_with("_nsg")), "{host_b} holds its NICs' rules: {tables}");
    wait_for("both instances still in rotation (probes pass the NSG)", Duration::from_secs(30), || {
        (r.in_rotation().len() == 2).then_some(())
    });
    r.json(&["network", "nsg", "rule", "delete", "-g", "rg", "--nsg-name", "web-nsg", "-n", "no-vnet-8080"]);
    wait_for("access restored after the rule's deletion", Duration::from_secs(30), || reaches_b().then_some(()));

    // Scale in to one: the emptied host leaves the segment.
    let keep_host = host_a.clone();
    r.json(&["vmss", "delete-instances", "-g", "rg", "-n", "web", "--instance-ids", &id_b]);
    wait_for(&format!("{host_b} out of the segment"), Duration::from_secs(60), || {
        (!text(r.exec(&host_b, &["ip", "-br", "link"])).contains(&port)).then_some(())
    });
    wait_for(&format!("{keep_host}'s table without the removed NIC"), Duration::from_secs(30), || {
        let fdb = text(r.exec(&keep_host, &["bridge", "fdb", "show", "dev", &port]));
        (!fdb.contains(&format!("{mac_b} dst"))).then_some(())
    });

    // Back to two (the new instance lands on the emptied host), then that host is deleted
    // while it still runs one: it leaves the other host's forwarding table and allow-list.
    r.json(&["vmss", "scale", "-g", "rg", "-n", "web", "--new-capacity", "2"]);
    let (new_id, _, new_host) =
        placed(&r).into_iter().find(|x| x.0 != id_a).expect("a second instance after the scale-out");
    assert_eq!(new_host, host_b, "zone balance puts it on the emptied host");
    let mac_new = herd_hostnet::mac_for(&format!("rg/web/{new_id}"));
    let vtep_b = if host_b == "h1" { "10.250.0.10" } else { "10.250.0.11" };
    wait_for(&format!("{keep_host} learning the new NIC on {host_b}"), Duration::from_secs(60), || {
        let fdb = text(r.exec(&keep_host, &["bridge", "fdb", "show", "dev", &port]));
        fdb.contains(&format!("{mac_new} dst {vtep_b}")).then_some(())
    });
    let out = r.exec("server", &["herd", "host", "delete", &host_b, "--force"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for(&format!("{keep_host}'s tables without the deleted host"), Duration::from_secs(30), || {
        let fdb = text(r.exec(&keep_host, &["bridge", "fdb", "show", "dev", &port]));
        let tables = text(r.exec(&keep_host, &["nft", "list", "ruleset"]));
        let allowed =
            tables.split("set peers").nth(1).and_then(|t| t.split('}').next()).unwrap_or_default().to_string();
        (!fdb.contains(&format!("dst {vtep_b}")) && !allowed.contains(vtep_b)).then_some(())
    });
    r.down();
    // The hosts' instance namespaces were theirs alone: none is left in this machine's list.
    assert_eq!(namespaces(), namespaces_before);
}

/// This machine's named instance network namespaces (`hn…`, the process driver's).
fn namespaces() -> Vec<String> {
    let out = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    let mut v: Vec<String> = text(out)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("hn"))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// A Custom Script for both VMs: serve the hostname and a 1 MiB random file on 8080, read the
/// VM's own name at 169.254.169.254, then fetch each VM's name and file by private IP (bounded
/// retries inside the guest: the other VM may still be starting its server).
const VM_SCRIPT: &str = r#"mkdir -p /tmp/www && hostname > /tmp/www/name && cp /tmp/www/name /tmp/www/index.html && head -c 1048576 /dev/urandom > /tmp/www/big && httpd -p 8080 -h /tmp/www;
echo "own big $(md5sum < /tmp/www/big | cut -c1-32)"; echo "mtu $(cat /sys/class/net/eth0/mtu)"
i=0; m=
while [ $i -lt 60 ] && [ -z "$m" ]; do
  m=$(printf 'GET /metadata/instance/compute/name?api-version=2021-02-01&format=text HTTP/1.0\r\nMetadata: true\r\n\r\n' | nc -w 5 169.254.169.254 80 | tail -n 1)
  i=$((i + 1)); [ -z "$m" ] && sleep 1
done
echo "metadata says $m ."
for a in 10.0.0.4 10.0.0.5; do
  i=0; r=
  while [ $i -lt 60 ]; do
    r=$(printf 'GET /name HTTP/1.0\r\n\r\n' | nc -w 2 $a 8080 | tail -n 1) && [ -n "$r" ] && break
    i=$((i + 1)); sleep 1
  done
  echo "peer $a says $r"
  echo "peer $a big $(printf 'GET /big HTTP/1.0\r\n\r\n' | nc -w 10 $a 8080 | tail -c 1048576 | md5sum | cut -c1-32)"
done
true"#;

#[test]
fn two_vms_on_two_hosts_serve_behind_the_lb_and_reach_each_other_by_private_ip() {
    let tg = herd_test_support::require_testguest("1.0.0");
    let r = Rig::up(
        &Rig::unique("vv"),
        &["--hosts", "2", "--zones", "1,2", "--driver", "qemu", "--server-arg=--accel", "--server-arg=tcg"],
        "[qemu]\nboot_timeout_secs = 240\n",
    );
    r.testguest_web(&tg, "2", &["1", "2"], &[]);
    wait_observing("2 VMs running, one per host", Duration::from_secs(300), || {
        let list = r.json(&["vmss", "list-instances", "-g", "rg", "-n", "web"]);
        let hosts: std::collections::BTreeSet<String> = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["powerState"] == "running" && i["provisioningState"] == "Succeeded")
            .filter_map(|i| i["host"].as_str().map(str::to_string))
            .collect();
        if hosts.len() == 2 {
            Ok(())
        } else {
            Err(common::instances_summary(&list))
        }
    });
    for h in ["h1", "h2"] {
        assert_eq!(r.pids(h, "qemu-system").len(), 1, "one VM on {h}");
    }
    assert!(r.pids("server", "qemu-system").is_empty(), "no VM on the server's machine");
    let p = placed(&r);
    assert_eq!(p.iter().map(|x| x.1.as_str()).collect::<Vec<_>>(), ["10.0.0.4", "10.0.0.5"], "{p:?}");

    r.custom_script(VM_SCRIPT, &["*"], false);
    let done: Vec<Value> = wait_observing("the Custom Script on both VMs", Duration::from_secs(300), || {
        let list = r.json(&["vmss", "list-instances", "-g", "rg", "-n", "web"]);
        let all = list.as_array().cloned().unwrap_or_default();
        let finished = all.len() == 2
            && all.iter().all(|i| {
                i["pendingAction"].is_null()
                    && i["extensions"][0]["state"].as_str().is_some_and(|st| st != "Transitioning")
            });
        if finished {
            Ok(all)
        } else {
            Err(common::instances_summary(&list))
        }
    });
    let msg = |n: usize| done[n]["extensions"][0]["message"].as_str().unwrap_or_default().to_string();
    let own = |m: &str| m.split("own big ").nth(1).map(|x| x[..32].to_string()).expect("the VM printed its own MD5");
    let got = |m: &str, peer: &str| {
        m.split(&format!("peer {peer} big "))
            .nth(1)
            .map(|x| x[..32].to_string())
            .expect("the VM printed the peer's MD5")
    };
    for (n, i) in done.iter().enumerate() {
        let (m, ext) = (msg(n), &i["extensions"][0]);
        assert_eq!(ext["state"], "Succeeded", "{ext}");
        assert!(m.contains("mtu 1450"), "the vnet MTU (fabric 1500 - 50): {m}");
        let id = i["instanceId"].as_str().unwrap_or_default();
        if !m.contains(&format!("metadata says web_{id} .")) {
            // What the hosts' metadata side looked like, for the failure message.
            let mut seen = String::new();
            for h in ["h1", "h2"] {
                let rec = std::fs::read_to_string(r.member_dir(h).join("metadata-endpoints.json")).unwrap_or_default();
                let nft = text(r.exec(h, &["nft", "list", "ruleset"]));
                let md: String =
                    nft.lines().skip_while(|l| !l.contains("_md {")).take(30).collect::<Vec<_>>().join("\n");
                seen.push_str(&format!("--- {h}: {rec}\n{md}\n"));
            }
            panic!("instance {id}: its own identity from its own host: {m}\n{seen}\n{i}");
        }
        assert!(m.contains("peer 10.0.0.4 says web000000") && m.contains("peer 10.0.0.5 says web000001"), "{m}");
    }
    const EMPTY_MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";
    assert!(own(&msg(0)) != EMPTY_MD5 && own(&msg(1)) != EMPTY_MD5, "each VM wrote its 1 MiB file");
    assert_eq!(got(&msg(1), "10.0.0.4"), own(&msg(0)), "1 MiB from web000000 to web000001, across hosts");
    assert_eq!(got(&msg(0), "10.0.0.5"), own(&msg(1)), "1 MiB from web000001 to web000000, across hosts");

    // The load balancer on the server: both VMs in rotation, both answer through the frontend.
    wait_for("both VMs in rotation", Duration::from_secs(120), || (r.in_rotation().len() == 2).then_some(()));
    let frontend = r.json(&["network", "public-ip", "show", "-g", "rg", "-n", "web-lb-ip"])["ipAddress"]
        .as_str()
        .unwrap()
        .to_string();
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let out = r.exec("server", &["curl", "-sf", "--max-time", "3", &format!("http://{frontend}:18080/name")]);
        if out.status.success() {
            answered.insert(text(out).trim().to_string());
        }
        if answered.len() == 2 {
            break;
        }
    }
    assert_eq!(
        answered,
        ["web000000".to_string(), "web000001".to_string()].into(),
        "both hosts' VMs answer through the frontend"
    );
    r.down();
}
