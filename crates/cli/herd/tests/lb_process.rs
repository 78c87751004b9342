//! Traffic follows instance health, on real processes and real sockets (all on loopback): the
//! load balancer spreads new connections over both instances, takes an instance whose app died
//! out of rotation within interval × threshold (+ one interval) and brings it back, and a
//! scale-in under steady load loses no request. A drain ends as soon as no connection is left,
//! with `drain_timeout_secs` as its upper bound.

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

/// Instance 0 of `rg/web`: (state, stateSince, draining).
fn instance0(s: &Server) -> (String, chrono::DateTime<chrono::Utc>, bool) {
    let list = s.json(&["vmss", "list-instances", "-g", "rg", "-n", "web"]);
    let i = list.as_array().unwrap().iter().find(|i| i["instanceId"] == "0").expect("instance 0").clone();
    let since = serde_json::from_value(i["stateSince"].clone()).expect("stateSince");
    (i["state"].as_str().unwrap_or_default().to_string(), since, i["draining"] == true)
}

/// Waits until instance 0 is healthy and in rotation; returns its boot (`stateSince`).
fn serving(s: &Server) -> chrono::DateTime<chrono::Utc> {
    wait_for("instance 0 in rotation", Duration::from_secs(60), || {
        let members = pool(s);
        let ok = members.iter().any(|m| m["inRotation"] == true);
        ok.then(|| instance0(s).1)
    })
}

/// Restarts instance 0 and waits for its next boot; returns the restart's start (the command,
/// on this machine's clock) and the new boot's `stateSince` (the server's clock: the same one).
fn restart_and_wait(s: &Server, why: &str) -> (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) {
    let old = instance0(s).1;
    let asked = chrono::Utc::now();
    s.ok(&["vmss", "restart", "-g", "rg", "-n", "web", "--instance-ids", "0", "--no-wait"]);
    let booted = wait_for(why, Duration::from_secs(60), || {
        let (state, since, _) = instance0(s);
        (state == "Running" && since > old).then_some(since)
    });
    (asked, booted)
}

/// A connection through the load balancer to instance 0 that stays open: a request whose
/// headers never end (the app waits for them). Returns once the data plane counts it.
fn hold_connection(s: &Server, frontend: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut c = std::net::TcpStream::connect(frontend).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: held\r\n").unwrap();
    let counted = "herd_lb_backend_active_connections{rule=\"web-lb/http\",backend=\"rg/web/0\"} 1\n";
    wait_for("the held connection to reach instance 0", Duration::from_secs(10), || {
        s.metrics().contains(counted).then_some(())
    });
    c
}

/// `drain_timeout_secs` is only the upper bound of a drain: a restart of an instance with no
/// connection open starts well before it; with a connection open through the load balancer it
/// waits until that connection closes; with one that never closes, the whole timeout.
#[test]
fn a_drain_ends_when_no_connection_is_left() {
    let drain = (10.0 * herd_test_support::time_scale()).ceil() as i64;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start("process", &data, Some(&format!("[loadbalancer]\ndrain_timeout_secs = {drain}\n")));
    let img = image_dir(&dir.path().join("img"), &app());
    s.group_with_image("rg", "Herd:App:1:1.0.0", &img);
    s.ok(&["network", "lb", "create", "-g", "rg", "-n", "web-lb", "--public-ip-address", "web-lb-ip"]);
    ProbedRule { threshold: "1", ..ProbedRule::default() }.create(&s);
    s.create_set("rg", "web", "Herd:App:1:1.0.0", "1", &words("--vm-sku Standard_B1s --lb web-lb"));
    let ip =
        s.ok(&["network", "public-ip", "show", "-g", "rg", "-n", "web-lb-ip", "--query", "ipAddress", "-o", "tsv"]);
    let frontend = format!("{}:18080", ip.trim());
    let secs = |from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>| {
        (to - from).num_milliseconds() as f64 / 1000.0
    };

    // 1. Nothing open: the drain ends as soon as the data plane has it out of rotation.
    serving(&s);
    let (asked, booted) = restart_and_wait(&s, "the idle instance to restart");
    let took = secs(asked, booted);
    assert!(
        took < drain as f64 / 2.0,
        "an idle instance restarted {took:.2}s after the command; drain timeout {drain}s"
    );

    // 2. A connection open: the drain lasts until it closes.
    serving(&s);
    let held = hold_connection(&s, &format!("{}:18080", ip.trim()));
    let old = instance0(&s).1;
    let asked = chrono::Utc::now();
    s.ok(&["vmss", "restart", "-g", "rg", "-n", "web", "--instance-ids", "0", "--no-wait"]);
    wait_for("instance 0 to drain", Duration::from_secs(10), || instance0(&s).2.then_some(()));
    // Two seconds of the drain, observed: the instance is not restarted under the connection.
    let watch_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < watch_until {
        let (state, since, draining) = instance0(&s);
        assert!(state == "Running" && since == old && draining, "restarted under an open connection: {state} {since}");
        // The poll interval of this observation, not a synchronisation.
        std::thread::sleep(Duration::from_millis(100));
    }
    let closed = chrono::Utc::now();
    drop(held);
    let booted = wait_for("the instance to restart once the connection closed", Duration::from_secs(60), || {
        let (state, since, _) = instance0(&s);
        (state == "Running" && since > old).then_some(since)
    });
    let (waited, after_close) = (secs(asked, booted), secs(closed, booted));
    assert!(waited >= 2.0, "the drain ended after {waited:.2}s, under an open connection");
    assert!(
        after_close < drain as f64 / 2.0,
        "the restart came {after_close:.2}s after the last connection closed; drain timeout {drain}s"
    );

    // 3. A connection that never closes: the timeout is the upper bound, and the connection is
    // closed by then.
    serving(&s);
    let mut held = hold_connection(&s, &frontend);
    let (asked, booted) = restart_and_wait(&s, "the instance to restart at the drain timeout");
    let took = secs(asked, booted);
    assert!(
        took >= drain as f64 && took < drain as f64 + 10.0,
        "with a connection never closed the restart came {took:.2}s after the command; drain timeout {drain}s"
    );
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut held, &mut buf);
    assert!(matches!(n, Ok(0) | Err(_)), "the held connection is closed once the drain is over: {n:?}");
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
