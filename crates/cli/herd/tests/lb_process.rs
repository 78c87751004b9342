//! Traffic follows instance health, on real processes and real sockets (all on loopback): the
//! load balancer spreads new connections over both instances, takes an instance whose app died
//! out of rotation within interval × threshold (+ one interval) and brings it back, and a
//! scale-in under steady load loses no request.

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// The app: `/api/version` answers `Version 1 from <hostname>`; `/` answers 200. init keeps it
/// running, but waits 6 s after it dies, so a killed app stays down long enough to be noticed.
fn app() -> String {
    python_http_app(
        r#"        body = (f"Version 1 from {NAME}" if self.path == "/api/version" else "ok").encode()
        status = 200"#,
        "while true; do python3 app.py; sleep 6; done",
    )
}

fn pool(s: &Server) -> Vec<Value> {
    s.json(&["network", "lb", "address-pool", "show", "-g", "rg", "--lb-name", "web-lb", "-n", "web-lbBEPool"])
        ["members"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn in_rotation(s: &Server) -> Vec<String> {
    pool(s)
        .into_iter()
        .filter(|m| m["inRotation"] == true)
        .map(|m| m["computerName"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn traffic_follows_instance_health() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start("process", &data, Some("[loadbalancer]\ndrain_timeout_secs = 2\n"));
    let img = image_dir(&dir.path().join("img"), &app());
    s.group_with_image("rg", "Herd:App:1:1.0.0", &img);
    s.ok(&["network", "lb", "create", "-g", "rg", "-n", "web-lb", "--public-ip-address", "web-lb-ip"]);
    ProbedRule::default().create(&s);
    s.create_set("rg", "web", "Herd:App:1:1.0.0", "2", &words("--vm-sku Standard_B1s --lb web-lb"));
    s.ok(&words(
        "network lb inbound-nat-pool create -g rg --lb-name web-lb -n direct --frontend-port-range-start 50000 \
         --frontend-port-range-end 50009 --backend-port 8080",
    ));
    let lb_id = s.json(&["network", "lb", "show", "-g", "rg", "-n", "web-lb", "--query", "id"]);
    let nat_ref = format!("{{\"id\": \"{}/inboundNatPools/direct\"}}", lb_id.as_str().unwrap());
    s.ok(&[
        "vmss", "update", "-g", "rg", "-n", "web", "--add",
        "virtualMachineProfile.networkProfile.networkInterfaceConfigurations[0].ipConfigurations[0].loadBalancerInboundNatPools",
        &nat_ref, "--quiet",
    ]);
    let ip =
        s.ok(&["network", "public-ip", "show", "-g", "rg", "-n", "web-lb-ip", "--query", "ipAddress", "-o", "tsv"]);
    let frontend = format!("http://{}:18080", ip.trim());
    let names = wait_for("both instances in rotation", Duration::from_secs(60), || {
        let r = in_rotation(&s);
        (r.len() == 2).then_some(r)
    });

    // New connections reach both instances.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let body = get_ok_body(&format!("{frontend}/api/version")).expect("the frontend answers");
        seen.insert(body.trim_start_matches("Version 1 from ").to_string());
    }
    assert_eq!(
        seen.iter().cloned().collect::<Vec<_>>(),
        {
            let mut n = names.clone();
            n.sort();
            n
        },
        "answers come from both instances"
    );
    let list = s.json(&["vmss", "list-instances", "-g", "rg", "-n", "web"]);
    assert!(list.as_array().unwrap().iter().all(|i| i["health"] == "Healthy"), "health is shown per instance: {list}");

    // Inbound NAT: one frontend port per instance, in instance order.
    let nat_names: Vec<String> = (50000..50002)
        .map(|port| {
            wait_for("the NAT port to answer", Duration::from_secs(10), || {
                get_ok_body(&format!("http://{}:{port}/api/version", ip.trim())).ok()
            })
        })
        .collect();
    let mut by_id: Vec<(u64, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["instanceId"].as_str().unwrap().parse().unwrap(), i["computerName"].as_str().unwrap().to_string()))
        .collect();
    by_id.sort();
    assert_eq!(nat_names, by_id.iter().map(|(_, n)| format!("Version 1 from {n}")).collect::<Vec<_>>());

    // Kill one instance's app: it leaves rotation within interval × threshold + interval.
    let victim = &list[0];
    let key = format!("rg/web/{}", victim["instanceId"].as_str().unwrap());
    let pids: Vec<u32> = tagged_processes(&data)
        .into_iter()
        .filter(|p| p.cmdline.contains("app.py") && p.var("HERD_INSTANCE_KEY") == Some(key.as_str()))
        .map(|p| p.pid)
        .collect();
    assert_eq!(pids.len(), 1, "found the app process");
    let killed = Instant::now();
    std::process::Command::new("kill").arg("-9").arg(pids[0].to_string()).status().unwrap();
    let victim_name = victim["computerName"].as_str().unwrap().to_string();
    wait_for("the dead app to leave rotation", Duration::from_secs(10), || {
        (!in_rotation(&s).contains(&victim_name)).then_some(())
    });
    let left = killed.elapsed();
    assert!(
        left <= Duration::from_millis(3000 + 1500),
        "left rotation after {left:?}; the bound is interval × threshold + interval = 3 s (+ scheduling slack)"
    );
    for _ in 0..20 {
        let body = get_ok_body(&format!("{frontend}/api/version")).expect("the frontend keeps answering");
        assert!(!body.ends_with(&victim_name), "no new connection reaches the dead instance");
    }
    wait_for("the app to come back into rotation", Duration::from_secs(30), || {
        (in_rotation(&s).len() == 2).then_some(())
    });

    // Scale out to 4, then scale in to 2 under steady load: no request fails.
    s.ok(&["vmss", "scale", "-g", "rg", "-n", "web", "--new-capacity", "4", "--quiet"]);
    wait_for("four instances in rotation", Duration::from_secs(60), || (in_rotation(&s).len() == 4).then_some(()));
    // Bounded: at most 5,000 requests per worker and 60 s.
    let load = Load::start(&format!("{frontend}/api/version"), 4, 5000, Duration::from_secs(60));
    wait_for("load to be flowing", Duration::from_secs(10), || (load.ok() > 20).then_some(()));
    s.ok(&["vmss", "scale", "-g", "rg", "-n", "web", "--new-capacity", "2", "--no-wait"]);
    let mut drain_start = None;
    let drain_end;
    let deadline = Instant::now() + herd_test_support::scaled(Duration::from_secs(60));
    loop {
        let members = pool(&s);
        let draining = members.iter().any(|m| m["draining"] == true);
        if draining && drain_start.is_none() {
            drain_start = Some(Instant::now());
        }
        if drain_start.is_some() && !draining && members.len() == 2 {
            drain_end = Instant::now();
            break;
        }
        assert!(Instant::now() < deadline, "scale-in did not finish: {members:?}");
        // The poll interval of this sampling loop (it times the drain), not a synchronisation.
        std::thread::sleep(Duration::from_millis(50));
    }
    let (failures, completions) = load.finish();
    assert!(failures.is_empty(), "{} requests failed during scale-in, e.g. {:?}", failures.len(), failures.first());
    let (a, b) = (drain_start.unwrap(), drain_end);
    let during = completions.iter().filter(|(t, _)| *t >= a && *t <= b).count();
    assert!(during >= 50, "the load overlapped the draining: {during} requests completed while instances drained");
    s.ok(&["vmss", "wait", "-g", "rg", "-n", "web", "--created", "--quiet", "--timeout", "60"]);
    s.ok(&["vmss", "delete", "-g", "rg", "-n", "web", "--quiet"]);
    let metrics = s.metrics(); // /metrics needs the token (issue 13)
    assert!(metrics.contains("herd_lb_"), "Prometheus metrics are served: {}", &metrics[..metrics.len().min(200)]);
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

/// Deletes the test's network namespace (and with it every bridge and veth end inside it).
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn instance_netns() -> std::collections::BTreeSet<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("hn")).collect()
        })
        .unwrap_or_default()
}

/// Bridged networking, entirely inside a network namespace this test creates: instances live
/// in their own namespaces on a bridge carrying the subnet, are reached on their private IPs,
/// and the load balancer serves them; deleting the set removes their namespaces.
#[test]
fn bridged_instances_behind_the_load_balancer_in_a_test_namespace() {
    assert!(
        is_root(),
        "bridged networking needs root (network namespaces, bridges): run ./scripts/test.sh as root, as CI does"
    );
    let ns = format!("herdt{}", std::process::id());
    assert!(std::process::Command::new("ip").args(["netns", "add", &ns]).status().unwrap().success());
    let _guard = Netns(ns.clone());
    assert!(std::process::Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]).status().unwrap().success());
    let before = instance_netns();

    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_in(
        &ns,
        "process",
        &dir.path().join("data"),
        Some("[network]\nmode = \"bridged\"\n[loadbalancer]\ndrain_timeout_secs = 1\n"),
    );
    let img = image_dir(&dir.path().join("img"), &app());
    s.group_with_image("rg", "Herd:App:1:1.0.0", &img);
    s.ok(&["network", "vnet", "create", "-g", "rg", "-n", "mynet", "--address-prefix", "10.0.0.0/16"]);
    s.ok(&words("network vnet subnet create -g rg --vnet-name mynet -n web --address-prefixes 10.0.0.0/24"));
    s.ok(&["network", "lb", "create", "-g", "rg", "-n", "web-lb", "--public-ip-address", "web-lb-ip"]);
    ProbedRule { probe: "p", threshold: "1", frontend_port: "80", ..Default::default() }.create(&s);
    s.create_set(
        "rg",
        "web",
        "Herd:App:1:1.0.0",
        "2",
        &words("--vm-sku Standard_B1s --vnet-name mynet --subnet web --lb web-lb"),
    );
    let list = s.json(&["vmss", "list-instances", "-g", "rg", "-n", "web"]);
    for i in list.as_array().unwrap() {
        let reach = i["reachAddress"].as_str().unwrap();
        assert_eq!(Some(reach), i["privateIpAddress"].as_str(), "bridged: reached on the private IP");
        assert!(reach.starts_with("10.0.0."), "{reach}");
    }
    assert_eq!(instance_netns().difference(&before).count(), 2, "one namespace per instance");
    wait_for("both instances in rotation", Duration::from_secs(60), || (in_rotation(&s).len() == 2).then_some(()));
    let ip =
        s.ok(&["network", "public-ip", "show", "-g", "rg", "-n", "web-lb-ip", "--query", "ipAddress", "-o", "tsv"]);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let out = s
            .command("curl")
            .args(["-s", "--max-time", "5", &format!("http://{}/api/version", ip.trim())])
            .output()
            .unwrap();
        assert!(out.status.success(), "curl through the frontend failed");
        seen.insert(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    assert_eq!(seen.len(), 2, "both bridged instances answer through the load balancer: {seen:?}");
    s.ok(&["vmss", "delete", "-g", "rg", "-n", "web", "--quiet"]);
    assert!(
        instance_netns().difference(&before).next().is_none(),
        "instance namespaces are removed with the instances"
    );
}
