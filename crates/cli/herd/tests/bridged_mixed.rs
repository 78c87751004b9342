//! VMs and process instances on one vnet, entirely inside a network namespace this test
//! creates: one `herd server --driver qemu --accel tcg` in bridged mode runs a set of two TCG
//! VMs of the test guest (kernel image) and, on the same subnet, a set of three process
//! instances of the sample directory image (`images/sample-process`): the qemu driver runs
//! directory images as process instances beside its VMs (issue 19's "Two TCG VMs and several
//! process instances on one vnet").
//!
//! - The VMs, created first, get `.4` and `.5` by DHCP (dnsmasq's lease for each VM's MAC),
//!   the process instances the next three addresses.
//! - A process instance reaches a VM by private IP and by computer name (the vnet's DNS on the
//!   gateway); a VM reaches every process instance by name and by private IP (a Custom Script
//!   through the guest agent).
//! - A load balancer with the VM set as its backend pool probes the VMs by private IP, and a
//!   request through its frontend is answered by a VM.
//! - A Deny for 8080 from `VirtualNetwork` in an NSG on the VM set's NIC blocks a process
//!   instance's request to a VM (process instances still reach each other), while the probes
//!   still pass; deleting the rule restores access within a second or so.
//! - Deleting everything leaves no herd interface, namespace, dnsmasq, QEMU or nftables table.
//!
//! Needs the test guest (`images/testguest/build.sh`; `./scripts/test.sh` builds it), dnsmasq
//! (`dnsmasq-base`), busybox, nsenter and curl.

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(240);
const VMS: [&str; 4] = ["-g", "rg", "-n", "vms"];
const APPS: [&str; 4] = ["-g", "rg", "-n", "apps"];
const APP_NAMES: [&str; 3] = ["app000000", "app000001", "app000002"];

/// A Custom Script for the VMs: serve the hostname on 8080 (`/name`, and `/` for the probe),
/// then fetch each process instance's page by the address its computer name resolves to at
/// the gateway's DNS, and once straight by the first one's private IP (bounded retries inside
/// the guest). `nc` rather than `wget`: the guest's static busybox `wget` cannot look up the
/// `http` service.
const SCRIPT: &str = r#"mkdir -p /tmp/www && hostname > /tmp/www/name && cp /tmp/www/name /tmp/www/index.html && httpd -p 8080 -h /tmp/www;
gw=$(ip -4 route show default | awk '{print $3}'); echo "gateway $gw"
get() { printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 "$1" 8080 | grep -o 'Hello from [a-z0-9]*'; }
for n in app000000 app000001 app000002; do
  i=0; a=; r=
  while [ $i -lt 30 ]; do
    a=$(nslookup $n $gw 2>&1 | awk '/^Address: [0-9.]+$/ {print $2}' | tail -n 1)
    [ -n "$a" ] && r=$(get "$a") && [ -n "$r" ] && break
    i=$((i + 1)); sleep 1
  done
  echo "peer $n at $a says $r"
done
echo "direct 10.0.0.6 says $(get 10.0.0.6)"
true"#;

#[test]
fn vms_and_process_instances_share_one_vnet() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "bridged networking needs root (namespaces, bridges, TAPs): run ./scripts/test.sh as root, as CI does"
    );
    assert!(
        std::path::Path::new("/usr/sbin/dnsmasq").exists(),
        "dnsmasq is missing: apt-get install dnsmasq-base (./scripts/setup.sh installs it)"
    );
    let started = Instant::now();
    herd_test_support::require_testguest("1.0.0");
    let tg = herd_test_support::testguest_dir().join("1.0.0");
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../images/sample-process");
    let ns = TestNetns::create(&format!("herdm{}", std::process::id()));
    let links_before = ns.links();
    let netns_before = instance_namespaces();

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let _vms = VmGuard(data.clone());
    let config = "[network]\nmode = \"bridged\"\n[qemu]\nboot_timeout_secs = 240\nstop_timeout_secs = 20\n";
    let s = Server::start_in_with_args(&ns.0, "qemu", &data, Some(config), &["--accel", "tcg"]);
    let _state = RemoveOnDrop(hostnet_root(&data));
    s.ok(&["group", "create", "-n", "rg"]);
    s.import_testguest_kernel(&tg, "Herd:TestGuest:1:1.0.0");
    s.ok(&["image", "import", "--urn", "Herd:Sample:1:1.0.0", "--dir", sample.to_str().unwrap()]);
    s.ok(&words("network vnet create -g rg -n vnet1 --address-prefix 10.0.0.0/16"));
    s.ok(&words("network vnet subnet create -g rg --vnet-name vnet1 -n web --address-prefixes 10.0.0.0/24"));
    s.ok(&words("network lb create -g rg -n web-lb --public-ip-address web-lb-ip"));
    ProbedRule::default().create(&s);

    // The VMs first, then the process instances on the same subnet.
    s.ok(&on_set(
        &VMS,
        &["vmss", "create"],
        &words(
            "--image Herd:TestGuest:1:1.0.0 --instance-count 2 --vm-sku Standard_B1ms --computer-name-prefix vm \
             --vnet-name vnet1 --subnet web --lb web-lb --disable-overprovision --upgrade-policy-mode Manual \
             --quiet --timeout 300",
        ),
    ));
    eprintln!("VM set created at {:.1}s", started.elapsed().as_secs_f64());
    s.ok(&on_set(
        &APPS,
        &["vmss", "create"],
        &words(
            "--image Herd:Sample:1:1.0.0 --instance-count 3 --vm-sku Standard_B1s --computer-name-prefix app \
             --vnet-name vnet1 --subnet web --disable-overprovision --quiet --timeout 120",
        ),
    ));
    eprintln!("process set created at {:.1}s", started.elapsed().as_secs_f64());
    let ips = |set: &[&str]| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = counted_instances(&s, set)
            .iter()
            .map(|i| {
                let ip = i["privateIpAddress"].as_str().unwrap().to_string();
                assert_eq!(i["reachAddress"].as_str(), Some(ip.as_str()), "bridged: reached on the private IP: {i}");
                (i["instanceId"].as_str().unwrap().to_string(), ip)
            })
            .collect();
        v.sort();
        v
    };
    let vm_ips = ips(&VMS);
    let app_ips = ips(&APPS);
    let only_ips = |v: &[(String, String)]| v.iter().map(|(_, ip)| ip.clone()).collect::<Vec<_>>();
    assert_eq!(only_ips(&vm_ips), ["10.0.0.4", "10.0.0.5"], "the VMs, created first");
    assert_eq!(only_ips(&app_ips), ["10.0.0.6", "10.0.0.7", "10.0.0.8"], "the process instances next");
    // Two TAPs (VMs), three veths (process instances) on one bridge.
    let links = ns.links();
    assert_eq!(links.iter().filter(|l| l.starts_with("ht")).count(), 2, "{links:?}");
    assert_eq!(links.iter().filter(|l| l.starts_with("hv")).count(), 3, "{links:?}");
    assert_eq!(links.iter().filter(|l| l.starts_with("hb")).count(), 1, "one subnet, one bridge: {links:?}");

    // The server says it runs both; the instance view has a guest-agent line for a VM only.
    assert_eq!(s.json(&["server", "status"])["driver"], "qemu+process");
    let agent_lines = |set: &str| -> Vec<String> {
        let view = s.json(&["vmss", "get-instance-view", "-g", "rg", "-n", set, "--instance-id", "0"]);
        let statuses = view["statuses"].as_array().cloned().unwrap_or_default();
        statuses
            .iter()
            .filter_map(|st| st["code"].as_str())
            .filter(|c| c.starts_with("GuestAgent/"))
            .map(str::to_string)
            .collect()
    };
    wait_observing("vm000000's guest agent line to say ready", Duration::from_secs(60), || {
        let lines = agent_lines("vms");
        (lines == ["GuestAgent/ready"]).then_some(()).ok_or_else(|| format!("{lines:?}"))
    });
    assert!(agent_lines("apps").is_empty(), "a process instance has no guest agent line");

    // Each VM asked DHCP and got its reservation: dnsmasq's lease for its MAC.
    wait_for("a DHCP lease for each VM's MAC", BOOT, || {
        let text =
            lease_files(&data).iter().map(|p| std::fs::read_to_string(p).unwrap_or_default()).collect::<String>();
        vm_ips
            .iter()
            .all(|(id, ip)| {
                let mac = herd_hostnet::mac_for(&format!("rg/vms/{id}"));
                text.lines()
                    .any(|l| l.split_whitespace().nth(1) == Some(mac.as_str()) && l.contains(&format!(" {ip} ")))
            })
            .then_some(())
    });

    // The VMs serve, and reach every process instance by name and private IP.
    let settings = serde_json::json!({ "commandToExecute": SCRIPT });
    s.ok(&[
        words("vmss extension set -g rg --vmss-name vms --name CustomScript --publisher Microsoft.Azure.Extensions --version 2.0 --settings"),
        vec![&settings.to_string()],
    ]
    .concat());
    s.ok(&on_set(&VMS, &["vmss", "update-instances"], &["--instance-ids", "*", "--timeout", "300"]));
    let done: Vec<Value> = wait_for("the Custom Script on both VMs", BOOT, || {
        let all = counted_instances(&s, &VMS);
        let finished = all.len() == 2
            && all.iter().all(|i| {
                i["pendingAction"].is_null()
                    && i["extensions"][0]["state"].as_str().is_some_and(|st| st != "Transitioning")
            });
        finished.then_some(all)
    });
    eprintln!("VM scripts done at {:.1}s", started.elapsed().as_secs_f64());
    for i in &done {
        let ext = &i["extensions"][0];
        let msg = ext["message"].as_str().unwrap_or_default();
        assert_eq!(ext["state"], "Succeeded", "{ext}");
        assert!(msg.contains("gateway 10.0.0.1"), "{msg}");
        for (n, (_, ip)) in APP_NAMES.iter().zip(&app_ips) {
            assert!(msg.contains(&format!("peer {n} at {ip} says Hello from {n}")), "VM to {n} by name: {msg}");
        }
        assert!(msg.contains("direct 10.0.0.6 says Hello from app000000"), "VM to a process by IP: {msg}");
    }

    // A process instance reaches each VM by private IP and by computer name.
    let app0 = pid_of("10.0.0.6");
    for (name, ip) in [("vm000000", "10.0.0.4"), ("vm000001", "10.0.0.5")] {
        let by_ip = get_from(app0, &format!("http://{ip}:8080/name"));
        assert_eq!(by_ip.as_deref().map(str::trim), Some(name), "app000000 to {ip}");
        let resolved = resolve_from(app0, name, "10.0.0.1");
        assert_eq!(resolved.as_deref(), Some(ip), "{name} resolves to its private IP in the vnet's DNS");
        let by_name = get_from(app0, &format!("http://{}:8080/name", resolved.unwrap_or_default()));
        assert_eq!(by_name.as_deref().map(str::trim), Some(name), "app000000 to {name} by its resolved address");
    }

    // The load balancer probes the VMs by private IP and forwards to them.
    wait_for("both VMs in rotation (probes on 10.0.0.4/5:8080 pass)", BOOT, || {
        (pool_in_rotation(&s, "rg", "web-lb", "web-lbBEPool") == 2).then_some(())
    });
    let frontend_ip =
        s.ok(&["network", "public-ip", "show", "-g", "rg", "-n", "web-lb-ip", "--query", "ipAddress", "-o", "tsv"]);
    let through_lb = || {
        let out = s
            .command("curl")
            .args(["-sf", "--max-time", "3", &format!("http://{}:18080/name", frontend_ip.trim())])
            .output()
            .unwrap();
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let body = wait_for("a request through the frontend answered", Duration::from_secs(30), through_lb);
    assert!(body == "vm000000" || body == "vm000001", "answered by a VM: {body}");
    let members = s.json(&words("network lb address-pool show -g rg --lb-name web-lb -n web-lbBEPool"));
    let mut addrs: Vec<String> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["reachAddress"].as_str().map(str::to_string))
        .collect();
    addrs.sort();
    assert_eq!(addrs, ["10.0.0.4", "10.0.0.5"], "the backends are the VMs' private IPs: {members}");

    // NSG on the VMs' NIC: deny 8080 from the vnet. A process instance no longer reaches a VM
    // (but still reaches another process instance), and the probes still pass.
    s.ok(&words("network nsg create -g rg -n vm-nsg"));
    s.ok(&words(
        "network nsg rule create -g rg --nsg-name vm-nsg -n no-vnet-8080 --priority 200 --access Deny \
         --protocol Tcp --source-address-prefixes VirtualNetwork --destination-port-ranges 8080",
    ));
    let nsg_id = s.json(&words("network nsg show -g rg -n vm-nsg --query id"));
    assert!(reaches(app0, "10.0.0.4"), "before the NSG, app000000 reaches vm000000");
    let probes_before = counted(&s, "defaultSecurityRules/AllowAzureLoadBalancerInBound");
    s.ok(&[
        "vmss", "update", "-g", "rg", "-n", "vms", "--set",
        &format!("virtualMachineProfile.networkProfile.networkInterfaceConfigurations[0].networkSecurityGroup={{\"id\": {nsg_id}}}"),
        "--quiet",
    ]);
    wait_for("the VM NIC's NSG to block 10.0.0.6 -> 10.0.0.4:8080", Duration::from_secs(30), || {
        (!reaches(app0, "10.0.0.4")).then_some(())
    });
    assert!(!reaches(app0, "10.0.0.5"), "and to the other VM");
    assert!(reaches(app0, "10.0.0.7"), "process instances (no NSG) still reach each other");
    wait_for("6 probe connections let in as AzureLoadBalancer", Duration::from_secs(60), || {
        (counted(&s, "defaultSecurityRules/AllowAzureLoadBalancerInBound") >= probes_before + 6).then_some(())
    });
    assert_eq!(pool_in_rotation(&s, "rg", "web-lb", "web-lbBEPool"), 2, "probes still pass: both VMs in rotation");
    assert!(counted(&s, "securityRules/no-vnet-8080") >= 1, "the Deny rule counted the blocked requests");

    // Deleting the rule restores access at once.
    let t0 = Instant::now();
    s.ok(&words("network nsg rule delete -g rg --nsg-name vm-nsg -n no-vnet-8080"));
    wait_for("access to 10.0.0.4:8080 restored after the rule's deletion", Duration::from_secs(3), || {
        reaches(app0, "10.0.0.4").then_some(())
    });
    eprintln!("rule deletion to access: {:?}", t0.elapsed());

    // Everything goes, and nothing is left.
    s.ok(&on_set(&APPS, &["vmss", "delete"], &["--quiet", "--timeout", "120"]));
    s.ok(&on_set(&VMS, &["vmss", "delete"], &["--quiet", "--timeout", "300"]));
    s.ok(&words("network lb delete -g rg -n web-lb"));
    s.ok(&words("network nsg delete -g rg -n vm-nsg"));
    assert!(qemu_pids(&data).is_empty(), "the VMs are gone");
    wait_for_no_nft_table(&s);
    assert_eq!(ns.links(), links_before, "no TAP, veth or bridge is left in the namespace");
    assert_eq!(instance_namespaces(), netns_before, "no instance namespace is left");
    let dnsmasq: Vec<u32> = ns.pids().into_iter().filter(|p| comm(*p) == "dnsmasq").collect();
    assert!(dnsmasq.is_empty(), "no dnsmasq is left: {dnsmasq:?}");
    assert!(!hostnet_root(&data).exists(), "no state is left in {}", hostnet_root(&data).display());
    eprintln!("whole test: {:.1}s", started.elapsed().as_secs_f64());
}

/// Every dnsmasq lease file of the server of `data`.
fn lease_files(data: &std::path::Path) -> Vec<std::path::PathBuf> {
    let dirs = std::fs::read_dir(hostnet_root(data)).into_iter().flatten().flatten();
    dirs.map(|d| d.path().join("leases")).filter(|p| p.is_file()).collect()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}
