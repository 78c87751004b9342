//! Autoscale end to end, with real metrics: process instances burning CPU scale a set out and
//! idle ones bring it back to the minimum; a real Redis list's length scales a set out, to zero
//! when drained, and back to one on the next item. Short windows and a 1 s cadence; every wait
//! is a condition with a deadline.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

const FAST: &str = "[autoscale]\ninterval_secs = 1\nsample_interval_secs = 1\nsource_timeout_secs = 2\n[sim]\nboot_min_ms = 5\nboot_max_ms = 30\n";

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
    s.ok(&["group", "create", "-n", "rg"]);
    s.ok(&["image", "import", "--urn", "Herd:Burn:1:1.0.0", "--dir", img.to_str().unwrap()]);
    s.ok(&[
        "vmss",
        "create",
        "-g",
        "rg",
        "-n",
        "web",
        "--image",
        "Herd:Burn:1:1.0.0",
        "--instance-count",
        "1",
        "--vm-sku",
        "Standard_B1s",
        "--disable-overprovision",
        "--quiet",
    ]);

    // Bad input is refused with the field or the token.
    let e = s.err(&[
        "monitor",
        "autoscale",
        "create",
        "-g",
        "rg",
        "--resource",
        "web",
        "--name",
        "x",
        "--min-count",
        "3",
        "--max-count",
        "2",
        "--count",
        "2",
    ]);
    assert!(e.contains("minimum") || e.contains("min"), "{e}");
    let e = s.err(&[
        "monitor",
        "autoscale",
        "create",
        "-g",
        "rg",
        "--resource",
        "nosuchset",
        "--name",
        "x",
        "--min-count",
        "1",
        "--max-count",
        "2",
        "--count",
        "1",
    ]);
    assert!(e.contains("nosuchset"), "{e}");

    s.ok(&[
        "monitor",
        "autoscale",
        "create",
        "-g",
        "rg",
        "--resource",
        "web",
        "--resource-type",
        "Microsoft.Compute/virtualMachineScaleSets",
        "--name",
        "web-autoscale",
        "--min-count",
        "1",
        "--max-count",
        "3",
        "--count",
        "1",
    ]);
    let e = s.err(&[
        "monitor",
        "autoscale",
        "rule",
        "create",
        "-g",
        "rg",
        "--autoscale-name",
        "web-autoscale",
        "--condition",
        "Percentage CPU >> 50 avg 10s",
        "--scale",
        "out",
        "1",
    ]);
    assert!(e.contains('^'), "a caret points at the bad token: {e}");
    let e = s.err(&[
        "monitor",
        "autoscale",
        "rule",
        "create",
        "-g",
        "rg",
        "--autoscale-name",
        "web-autoscale",
        "--condition",
        "Disk Queue > 5 avg 10s",
        "--scale",
        "out",
        "1",
        "--timegrain",
        "avg 1s",
    ]);
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
        "Percentage CPU > 50 avg 10s",
        "--scale",
        "out",
        "1",
        "--cooldown",
        "0.05",
        "--timegrain",
        "avg 1s",
    ]);
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
        "Percentage CPU < 20 avg 10s",
        "--scale",
        "in",
        "1",
        "--cooldown",
        "0.05",
        "--timegrain",
        "avg 1s",
    ]);
    let rules = s.json(&["monitor", "autoscale", "rule", "list", "-g", "rg", "--autoscale-name", "web-autoscale"]);
    assert_eq!(rules.as_array().unwrap().len(), 2, "{rules}");

    std::fs::write(&burn, "").unwrap();
    wait_for("a scale-out on CPU", Duration::from_secs(90), || (capacity(&s, "rg") >= 2).then_some(()));
    let metric = s.json(&["monitor", "metrics", "list", "-g", "rg", "--resource", "web", "--metric", "Percentage CPU"]);
    assert!(
        metric.as_array().unwrap().iter().any(|p| p["value"].as_f64().unwrap() > 50.0),
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
    let sim = s.json(&[
        "monitor",
        "autoscale",
        "simulate",
        "-g",
        "rg",
        "-n",
        "web-autoscale",
        "--trace",
        trace.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
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
    s.ok(&[
        "monitor",
        "autoscale",
        "profile",
        "create",
        "-g",
        "rg",
        "--autoscale-name",
        "web-autoscale",
        "-n",
        "workhours",
        "--recurrence",
        "week",
        "mon",
        "tue",
        "wed",
        "thu",
        "fri",
        "--start",
        "08:00",
        "--end",
        "18:00",
        "--timezone",
        "Europe/Prague",
        "--min-count",
        "2",
        "--max-count",
        "3",
        "--count",
        "2",
    ]);
    let profiles =
        s.json(&["monitor", "autoscale", "profile", "list", "-g", "rg", "--autoscale-name", "web-autoscale"]);
    assert_eq!(profiles.as_array().unwrap().len(), 3, "default, workhours and the profile that ends it: {profiles}");
    let e = s.err(&[
        "monitor",
        "autoscale",
        "profile",
        "create",
        "-g",
        "rg",
        "--autoscale-name",
        "web-autoscale",
        "-n",
        "x",
        "--recurrence",
        "week",
        "mon",
        "--start",
        "08:00",
        "--timezone",
        "Mars/Olympus",
        "--min-count",
        "1",
        "--max-count",
        "2",
        "--count",
        "1",
    ]);
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
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start("sim", &dir.path().join("data"), Some(FAST));
    let img = image_dir(&dir.path().join("img"), "exec sleep 3600");
    s.ok(&["group", "create", "-n", "q"]);
    s.ok(&["image", "import", "--urn", "Herd:Worker:1:1.0.0", "--dir", img.to_str().unwrap()]);
    s.ok(&[
        "vmss",
        "create",
        "-g",
        "q",
        "-n",
        "web",
        "--image",
        "Herd:Worker:1:1.0.0",
        "--instance-count",
        "0",
        "--disable-overprovision",
        "--quiet",
    ]);
    let prot = dir.path().join("prot.json");
    std::fs::write(&prot, format!("{{\"password\": \"{password}\"}}")).unwrap();
    let src = s.json(&[
        "monitor",
        "metric-source",
        "create",
        "-g",
        "q",
        "-n",
        "jobs",
        "--type",
        "redis",
        "--endpoint",
        &redis.endpoint(),
        "--key",
        "jobs",
        "--protected-settings",
        &format!("@{}", prot.display()),
    ]);
    assert!(!src.to_string().contains(password), "the password is never shown");
    s.ok(&[
        "monitor",
        "autoscale",
        "create",
        "-g",
        "q",
        "--resource",
        "web",
        "--name",
        "web-autoscale",
        "--min-count",
        "0",
        "--max-count",
        "4",
        "--count",
        "0",
    ]);
    for (cond, scale) in
        [("source/jobs > 10 max 3s", "out 2"), ("source/jobs > 0 max 3s", "to 1"), ("source/jobs == 0 max 3s", "to 0")]
    {
        s.ok(&[
            "monitor",
            "autoscale",
            "rule",
            "create",
            "-g",
            "q",
            "--autoscale-name",
            "web-autoscale",
            "--condition",
            cond,
            "--scale",
            scale,
            "--cooldown",
            "0.02",
            "--timegrain",
            "max 1s",
        ]);
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
        "monitor",
        "autoscale",
        "notification",
        "add",
        "-g",
        "q",
        "--autoscale-name",
        "web-autoscale",
        "--webhook",
        &hook_url,
        "--properties",
        "team=queue",
    ]);
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
    s.ok(&[
        "monitor",
        "metric-source",
        "create",
        "-g",
        "q",
        "-n",
        "jobs",
        "--type",
        "redis",
        "--endpoint",
        "redis://127.0.0.1:9",
        "--key",
        "jobs",
    ]);
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
