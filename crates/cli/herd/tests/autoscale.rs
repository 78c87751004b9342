//! Autoscale end to end, with real metrics: process instances burning CPU scale a set out and
//! idle ones bring it back to the minimum; a real Redis list's length scales a set out, to zero
//! when drained, and back to one on the next item. Short windows and a 1 s cadence; every wait
//! is a condition with a deadline.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

const FAST: &str = "[autoscale]\ninterval_secs = 1\nsample_interval_secs = 1\nsource_timeout_secs = 2\nallow_webhooks_to = [\"127.0.0.1/32\"]\n[sim]\nboot_min_ms = 5\nboot_max_ms = 30\n";

fn capacity(s: &Server, group: &str) -> i64 {
    s.json(&["vmss", "show", "-g", group, "-n", "web"])["sku"]["capacity"].as_i64().unwrap()
}

fn history(s: &Server, group: &str) -> Vec<Value> {
    s.json(&["monitor", "autoscale", "history", "-g", group, "-n", "web-autoscale"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn cpu_burners_scale_out_and_idle_instances_scale_back_in() {
    let dir = tempfile::tempdir().unwrap();
    let burn = dir.path().join("burn");
    let s = Server::start("process", &dir.path().join("data"), Some(FAST));
    // Burns a CPU (in the shell itself, no child processes) while the flag file exists.
    let body = format!(
        "while true; do if [ -f {b} ]; then i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; else sleep 0.2; fi; done",
        b = burn.display()
    );
    let img = image_dir(&dir.path().join("img"), &body);
    s.group_with_image("rg", "Herd:Burn:1:1.0.0", &img);
    s.ok(&words(
        "vmss create -g rg -n web --image Herd:Burn:1:1.0.0 --instance-count 1 --vm-sku Standard_B1s \
         --disable-overprovision --quiet",
    ));

    // Bad input is refused with the field or the token.
    let e =
        s.err(&words("monitor autoscale create -g rg --resource web --name x --min-count 3 --max-count 2 --count 2"));
    assert!(e.contains("minimum") || e.contains("min"), "{e}");
    let e = s.err(&words(
        "monitor autoscale create -g rg --resource nosuchset --name x --min-count 1 --max-count 2 --count 1",
    ));
    assert!(e.contains("nosuchset"), "{e}");

    s.ok(&words(
        "monitor autoscale create -g rg --resource web --resource-type Microsoft.Compute/virtualMachineScaleSets \
         --name web-autoscale --min-count 1 --max-count 3 --count 1",
    ));
    let e = s.err(&words(
        "monitor autoscale rule create -g rg --autoscale-name web-autoscale --condition \
         'Percentage CPU >> 50 avg 10s' --scale out 1",
    ));
    assert!(e.contains('^'), "a caret points at the bad token: {e}");
    let e = s.err(&words(
        "monitor autoscale rule create -g rg --autoscale-name web-autoscale --condition 'Disk Queue > 5 avg 10s' \
         --scale out 1 --timegrain 'avg 1s'",
    ));
    assert!(e.contains("Disk Queue") && e.contains("Percentage CPU"), "an unknown metric names the allowed ones: {e}");
    s.ok(&[
        "monitor",
        "autoscale",
        "rule",
        "create",
        "-g",
        "rg",
        "--autoscale-name",
        "web-autoscale",
        "--condition",
        // 15 %, not 50 %: on the 2-core machine with the load average at 10-12 (the suite plus a
        // CPU hog), a burning shell got 40 % of a core (202 of 500 ticks in 5 s) and a 50 %
        // rule never fired; an idle instance measures near 0 %, so 15 % still tells them apart.
        "Percentage CPU > 15 avg 10s",
        "--scale",
        "out",
        "1",
        "--cooldown",
        "0.05",
        "--timegrain",
        "avg 1s",
    ]);
    s.ok(&words(
        "monitor autoscale rule create -g rg --autoscale-name web-autoscale --condition 'Percentage CPU < 5 avg 10s' \
         --scale in 1 --cooldown 0.05 --timegrain 'avg 1s'",
    ));
    let rules = s.json(&["monitor", "autoscale", "rule", "list", "-g", "rg", "--autoscale-name", "web-autoscale"]);
    assert_eq!(rules.as_array().unwrap().len(), 2, "{rules}");

    std::fs::write(&burn, "").unwrap();
    wait_for("a scale-out on CPU", Duration::from_secs(90), || (capacity(&s, "rg") >= 2).then_some(()));
    let metric = s.json(&["monitor", "metrics", "list", "-g", "rg", "--resource", "web", "--metric", "Percentage CPU"]);
    assert!(
        metric.as_array().unwrap().iter().any(|p| p["value"].as_f64().unwrap() > 15.0),
        "CPU was sampled high: {metric}"
    );
    std::fs::remove_file(&burn).unwrap();
    wait_for("the scale-in back to the minimum", Duration::from_secs(120), || (capacity(&s, "rg") == 1).then_some(()));
    let h = history(&s, "rg");
    assert!(h.iter().any(|e| e["decision"]["direction"] == "Increase"), "history has the scale-out");
    assert!(h.iter().any(|e| e["decision"]["direction"] == "Decrease"), "history has the scale-in");
    // What if: the same setting against a trace, with the same evaluator.
    let trace = dir.path().join("cpu.csv");
    let mut csv = String::from("time,value\n");
    for m in 0..120 {
        let v = if (30..60).contains(&m) { 95.0 } else { 5.0 };
        csv.push_str(&format!("{},{v}\n", 1_800_000_000 + m * 60));
    }
    std::fs::write(&trace, csv).unwrap();
    let svg = dir.path().join("plot.svg");
    let sim = s.json(
        &[
            words("monitor autoscale simulate -g rg -n web-autoscale --trace"),
            vec![trace.to_str().unwrap(), "--plot", svg.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(
        !sim["scaleEvents"].as_array().unwrap().is_empty(),
        "the busy half hour scales out: {}",
        sim["scaleEvents"]
    );
    assert!(
        std::fs::read_to_string(&svg).unwrap().starts_with("<svg")
            || std::fs::read_to_string(&svg).unwrap().contains("<svg")
    );
    // A workhours profile in a time zone.
    s.ok(&words(
        "monitor autoscale profile create -g rg --autoscale-name web-autoscale -n workhours --recurrence week mon tue \
         wed thu fri --start 08:00 --end 18:00 --timezone Europe/Prague --min-count 2 --max-count 3 --count 2",
    ));
    let profiles =
        s.json(&["monitor", "autoscale", "profile", "list", "-g", "rg", "--autoscale-name", "web-autoscale"]);
    assert_eq!(profiles.as_array().unwrap().len(), 3, "default, workhours and the profile that ends it: {profiles}");
    let e = s.err(&words(
        "monitor autoscale profile create -g rg --autoscale-name web-autoscale -n x --recurrence week mon --start \
         08:00 --timezone Mars/Olympus --min-count 1 --max-count 2 --count 1",
    ));
    assert!(e.contains("Mars/Olympus"), "{e}");
    let log = s.ok(&["monitor", "activity-log", "list", "-g", "rg", "-o", "json"]);
    let log: Value = serde_json::from_str(&log).unwrap();
    assert!(
        log.as_array().unwrap().iter().any(|e| e["operation"] == "Autoscale" && e["actor"] == "Autoscale"),
        "{log}"
    );
}

#[test]
fn a_redis_queue_scales_out_to_zero_and_back() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let password = "redis-pw-3f1c9a";
    let redis = rt
        .block_on(herd_metric_sources::testkit::RedisServer::start(password))
        .expect("redis-server (apt-get install redis-server)");
    let (dir, s) = server_with_sleeper("sim", Some(FAST), "q", "Herd:Worker:1:1.0.0");
    s.ok(&words(
        "vmss create -g q -n web --image Herd:Worker:1:1.0.0 --instance-count 0 --disable-overprovision --quiet",
    ));
    let prot = dir.path().join("prot.json");
    std::fs::write(&prot, format!("{{\"password\": \"{password}\"}}")).unwrap();
    let src = s.json(
        &[
            words("monitor metric-source create -g q -n jobs --type redis --endpoint"),
            vec![&redis.endpoint()],
            words("--key jobs --protected-settings"),
            vec![&format!("@{}", prot.display())],
        ]
        .concat(),
    );
    assert!(!src.to_string().contains(password), "the password is never shown");
    s.ok(&words(
        "monitor autoscale create -g q --resource web --name web-autoscale --min-count 0 --max-count 4 --count 0",
    ));
    for (cond, scale) in
        [("source/jobs > 10 max 3s", "out 2"), ("source/jobs > 0 max 3s", "to 1"), ("source/jobs == 0 max 3s", "to 0")]
    {
        s.ok(&[
            words("monitor autoscale rule create -g q --autoscale-name web-autoscale --condition"),
            vec![cond, "--scale", scale],
            words("--cooldown 0.02 --timegrain 'max 1s'"),
        ]
        .concat());
    }
    // A webhook on loopback hears about every scale action.
    let hook = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_url = format!("http://{}/scaled", hook.local_addr().unwrap());
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    {
        let heard = heard.clone();
        hook.set_nonblocking(false).unwrap();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            // Bounded: at most 50 calls.
            for stream in hook.incoming().take(50) {
                let Ok(mut st) = stream else { continue };
                let _ = st.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = vec![0u8; 16384];
                let n = st.read(&mut buf).unwrap_or(0);
                heard.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).into_owned());
                let _ = st.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
    }
    s.ok(&[
        words("monitor autoscale notification add -g q --autoscale-name web-autoscale --webhook"),
        vec![&hook_url, "--properties", "team=queue"],
    ]
    .concat());
    let push = |n: usize| {
        rt.block_on(async {
            let mut c = herd_metric_sources::redis::Connection::connect(&redis.endpoint()).await.unwrap();
            c.command(&["AUTH", password]).await.unwrap();
            for i in 0..n {
                c.command(&["RPUSH", "jobs", &format!("job-{i}")]).await.unwrap();
            }
        })
    };
    let drain = || {
        rt.block_on(async {
            let mut c = herd_metric_sources::redis::Connection::connect(&redis.endpoint()).await.unwrap();
            c.command(&["AUTH", password]).await.unwrap();
            c.command(&["DEL", "jobs"]).await.unwrap();
        })
    };
    push(100);
    wait_for("a scale-out on the queue", Duration::from_secs(60), || (capacity(&s, "q") >= 2).then_some(()));
    let call = wait_for("the webhook call", Duration::from_secs(30), || heard.lock().unwrap().first().cloned());
    assert!(call.starts_with("POST /scaled"), "{call}");
    assert!(
        call.contains("\"operation\":\"Scale\"") && call.contains("\"team\":\"queue\"") && call.contains("newCapacity"),
        "{call}"
    );
    let shown = s.json(&["monitor", "metric-source", "show", "-g", "q", "-n", "jobs"]);
    assert_eq!(shown["lastValue"], 100.0, "{shown}");
    drain();
    wait_for("the scale-in to zero", Duration::from_secs(60), || (capacity(&s, "q") == 0).then_some(()));
    push(1);
    wait_for("one item brings one instance", Duration::from_secs(60), || (capacity(&s, "q") == 1).then_some(()));
    assert!(!s.log_text().contains(password), "the password is never logged");

    // An unreachable endpoint is reported, and no decision is made on missing data.
    s.ok(&words("monitor metric-source create -g q -n jobs --type redis --endpoint redis://127.0.0.1:9 --key jobs"));
    let health = wait_for("the source's health to show the error", Duration::from_secs(30), || {
        let v = s.json(&["monitor", "metric-source", "show", "-g", "q", "-n", "jobs"]);
        v["health"].as_str().filter(|h| h.contains("refused") || h.contains("connect")).map(String::from)
    });
    assert!(!health.contains(password));
    let before = capacity(&s, "q");
    let h = wait_for("an evaluation with missing data", Duration::from_secs(30), || {
        history(&s, "q").last().filter(|e| e["decision"]["missingData"] == true).cloned()
    });
    assert_eq!(h["decision"]["newCapacity"].as_i64().unwrap(), before, "no scale decision on missing data");
}

#[test]
fn rules_go_to_the_profile_named_and_new_metrics_are_listed() {
    let (_dir, s) = server_with_sleeper("sim", Some(FAST), "rg", "Herd:Web:1:1.0.0");
    s.ok(&words("vmss create -g rg -n web --image Herd:Web:1:1.0.0 --instance-count 1 --quiet"));
    let a = |extra: &[&str]| {
        let mut v = vec!["monitor", "autoscale"];
        v.extend_from_slice(extra);
        v.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| s.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let fail = |args: Vec<String>| s.err(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let list = |profile: Option<&str>| {
        let mut v = a(&["rule", "list", "-g", "rg", "--autoscale-name", "web-autoscale"]);
        if let Some(p) = profile {
            v.extend(["--profile-name".to_string(), p.to_string()]);
        }
        let out = s.json(&v.iter().map(String::as_str).collect::<Vec<_>>());
        out.as_array().unwrap().iter().map(|r| r["condition"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    run(a(&words("create -g rg --resource web --name web-autoscale --min-count 1 --max-count 5 --count 1")));
    run(a(&words(
        "rule create -g rg --autoscale-name web-autoscale --condition 'Percentage CPU > 70 avg 5m' --scale out 1",
    )));
    run(a(&words(
        "profile create -g rg --autoscale-name web-autoscale -n workhours --recurrence week mon tue --start 08:00 \
         --end 18:00 --timezone Europe/Prague --min-count 2 --max-count 6 --count 2 --copy-rules none",
    )));

    // A rule for the workhours profile only, on a new metric.
    run(a(&words(
        "rule create -g rg --autoscale-name web-autoscale --profile-name workhours --condition \
         'LB New Connections Per Second > 50 avg 5m' --scale out 2",
    )));
    assert_eq!(list(Some("workhours")), ["LB New Connections Per Second > 50 avg 5m"]);
    assert_eq!(list(None), ["Percentage CPU > 70 avg 5m"], "the default profile is untouched");
    assert_eq!(list(Some("default")), list(None));
    // A rule added to the default profile also reaches the profile that ends the recurrence
    // (the default profile's continuation after 18:00).
    run(a(&words(
        "rule create -g rg --autoscale-name web-autoscale --condition 'Network In Total > 1000000 avg 5m' --scale out \
         1",
    )));
    let setting =
        s.json(&a(&["show", "-g", "rg", "-n", "web-autoscale"]).iter().map(String::as_str).collect::<Vec<_>>());
    let ender = setting["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str().unwrap().contains("\"for\""))
        .unwrap()
        .clone();
    assert_eq!(ender["rules"], setting["profiles"][0]["rules"], "{setting}");
    assert_eq!(ender["rules"].as_array().unwrap().len(), 2);

    // An unknown profile names the ones there are (not the hidden end-of-recurrence one).
    let e = fail(a(&["rule", "list", "-g", "rg", "--autoscale-name", "web-autoscale", "--profile-name", "nights"]));
    assert!(e.contains("nights") && e.contains("default, workhours") && !e.contains("\"for\""), "{e}");
    let e = fail(a(&words(
        "rule create -g rg --autoscale-name web-autoscale --profile-name nights --condition \
         'Percentage CPU > 70 avg 5m' --scale out 1",
    )));
    assert!(e.contains("no profile 'nights'"), "{e}");
    run(a(&words("rule delete -g rg --autoscale-name web-autoscale --profile-name workhours --index 0")));
    assert!(list(Some("workhours")).is_empty());
    assert_eq!(list(None).len(), 2, "deleting from workhours leaves the default alone");

    // The new metrics are listed, and an unknown one names them.
    let defs = s.json(&["monitor", "metrics", "list-definitions", "-g", "rg", "--resource", "web"]);
    let names: Vec<&str> = defs.as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    for m in [
        "Percentage CPU",
        "Network In Total",
        "Network Out Total",
        "LB New Connections Per Second",
        "LB Active Connections",
    ] {
        assert!(names.contains(&m), "{m} in {names:?}");
    }
    let e = s.err(&["monitor", "metrics", "list", "-g", "rg", "--resource", "web", "--metric", "Disk Queue"]);
    assert!(e.contains("Network In Total") && e.contains("LB Active Connections"), "{e}");
    let e = fail(a(&words(
        "rule create -g rg --autoscale-name web-autoscale --condition 'Disk Queue > 5 avg 5m' --scale out 1",
    )));
    assert!(e.contains("Network Out Total") && e.contains("LB New Connections Per Second"), "{e}");
    // The sim reports no network counters unless told: no data, an empty series, never zeros.
    let net = s.json(&["monitor", "metrics", "list", "-g", "rg", "--resource", "web", "--metric", "Network In Total"]);
    assert_eq!(net, serde_json::json!([]));
}

/// A web app on the instance's own address, port 8080, answering every GET with `ok`.
fn web_app() -> String {
    python_http_app("        status, body = 200, b\"ok\"", "exec python3 app.py")
}

/// One GET through the load balancer; true when it was answered.
fn hit(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(addr) = addr.parse() else { return false };
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return false };
    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
    let mut out = String::new();
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_ok()
        && s.read_to_string(&mut out).is_ok()
        && out.ends_with("ok")
}

#[test]
fn load_balancer_connections_are_metrics_that_scale_the_set() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start("process", &dir.path().join("data"), Some(FAST));
    let img = image_dir(&dir.path().join("img"), &web_app());
    s.group_with_image("rg", "Herd:Web:1:1.0.0", &img);
    s.ok(&["network", "lb", "create", "-g", "rg", "-n", "web-lb", "--public-ip-address", "web-lb-ip"]);
    s.ok(&words("network lb rule create -g rg --lb-name web-lb -n http --frontend-port 18081 --backend-port 8080"));
    s.ok(&words(
        "vmss create -g rg -n web --image Herd:Web:1:1.0.0 --instance-count 1 --vm-sku Standard_B1s --lb web-lb \
         --disable-overprovision --quiet",
    ));
    s.ok(&words(
        "monitor autoscale create -g rg --resource web --name web-autoscale --min-count 1 --max-count 2 --count 1",
    ));
    s.ok(&words(
        "monitor autoscale rule create -g rg --autoscale-name web-autoscale --condition \
         'LB New Connections Per Second > 2 avg 5s' --scale out 1 --cooldown 0.05 --timegrain 'avg 1s'",
    ));
    let ip =
        s.ok(&["network", "public-ip", "show", "-g", "rg", "-n", "web-lb-ip", "--query", "ipAddress", "-o", "tsv"]);
    let frontend = format!("{}:18081", ip.trim());

    // Steady traffic through the load balancer: the autoscaler reads the data plane's counters
    // (no driver involved) and scales out on connections per second per instance.
    let mut answered = 0;
    wait_for("a scale-out on load-balancer connections", Duration::from_secs(90), || {
        answered += (0..10).filter(|_| hit(&frontend)).count();
        (capacity(&s, "rg") >= 2).then_some(())
    });
    assert!(answered > 10, "the app answered through the load balancer");
    let metric = |m: &str| s.json(&["monitor", "metrics", "list", "-g", "rg", "--resource", "web", "--metric", m]);
    let rate = metric("LB New Connections Per Second");
    assert!(rate.as_array().unwrap().iter().any(|p| p["value"].as_f64().unwrap() > 2.0), "{rate}");
    let active = metric("LB Active Connections");
    assert!(!active.as_array().unwrap().is_empty(), "active connections are sampled: {active}");
    // Host-local process instances share the host's network namespace: herd cannot tell their
    // traffic apart, so there is no network data (not zeros).
    assert_eq!(metric("Network In Total"), serde_json::json!([]));
    let h = history(&s, "rg");
    assert!(
        h.iter().any(|e| e["decision"]["direction"] == "Increase"
            && e["decision"]["reason"].as_str().unwrap().contains("LB New Connections Per Second")),
        "history says why: {h:?}"
    );
}
