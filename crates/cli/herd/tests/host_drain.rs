//! Drain and redeploy (issue 21) on the namespace rig, with process instances behind the
//! server's load balancer: `herd host drain` moves every instance of a host to the other host
//! of its zone with its disk (the instance's `work/` tree), its private IP and its instance id,
//! while a steady load through the frontend sees no failed request; `herd vmss redeploy` moves
//! one back. Refused with nothing changed: a redeploy with no room in the zone, and a drain of
//! the last Ready host of a zone a `zoneBalance` set uses.

mod common;

use common::rig::Rig;
use common::wait_observing;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

const CONFIG: &str =
    "[agents]\nheartbeat_interval_ms = 1000\n\n[prices.\"Standard_B1s\"]\nregular = 0.0104\nspot = 0.0031\n";

fn instances(r: &Rig, set: &str) -> Vec<Value> {
    r.json(&["vmss", "list-instances", "-g", "rg", "-n", set]).as_array().cloned().unwrap_or_default()
}

fn instance(r: &Rig, set: &str, id: &str) -> Value {
    instances(r, set).into_iter().find(|i| i["instanceId"] == id).unwrap_or(Value::Null)
}

fn host(r: &Rig, name: &str) -> Value {
    r.json(&["host", "show", name])
}

/// The `work/` directory of instance `id` of set `web` under a host's data dir (the process
/// driver spreads instance directories over subdirectories: found by walking).
fn work_dir(root: &Path, id: &str) -> Option<PathBuf> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if p.file_name().is_some_and(|n| n == "work")
                && p.parent().and_then(|q| q.file_name()).is_some_and(|n| n == id)
                && p.to_string_lossy().contains("/web/")
            {
                return Some(p);
            }
            stack.push(p);
        }
    }
    None
}

/// A steady load on `url` from inside the server's namespace: one request every 20 ms until
/// `stop` exists, at most `max_secs` and 20,000 requests. Its answer: `{"ok": n, "failed": [..]}`.
fn load(r: &Rig, url: &str, stop: &Path, max_secs: u32) -> std::thread::JoinHandle<Value> {
    const SCRIPT: &str = r#"
import json, os, sys, time, urllib.request
url, stop, deadline = sys.argv[1], sys.argv[2], time.time() + float(sys.argv[3])
ok, failed = 0, []
for _ in range(20000):
    if time.time() > deadline or os.path.exists(stop):
        break
    t = time.time()
    try:
        with urllib.request.urlopen(url, timeout=5) as a:
            a.read()
        ok += 1
    except Exception as e:
        failed.append("%.3f %s" % (t, e))
    time.sleep(0.02)
print(json.dumps({"ok": ok, "failed": failed}))
"#;
    let (name, url, stop) = (r.name.clone(), url.to_string(), stop.display().to_string());
    std::thread::spawn(move || {
        let out = std::process::Command::new(common::HERD)
            .args(["dev", "cluster", "exec", "--name", &name, "--on", "server", "--", "python3", "-c", SCRIPT])
            .args([url.as_str(), stop.as_str(), &max_secs.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the load loop failed (python3 is needed: apt-get install python3): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    })
}

/// GET `url` from the server's namespace, from the subnet's `.2` (the server's own address on
/// it: `.1` is the gateway every host answers for itself, which the VXLAN ports do not carry).
fn get(r: &Rig, url: &str) -> Result<String, String> {
    let out = r.exec("server", &["curl", "-sSf", "--max-time", "5", "--interface", "10.0.0.2", url]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("curl {url}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

#[test]
fn drain_and_redeploy_move_instances_with_their_disks_under_load_and_bad_moves_are_refused() {
    // h1 and h2 in zone 1, h3 alone in zone 2.
    let r = Rig::up(&Rig::unique("dr"), &["--hosts", "3", "--zones", "1,1,2"], CONFIG);
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../images/sample-process");
    r.json(&["group", "create", "-n", "rg", "-l", "local"]);
    r.json(&["image", "import", "--urn", "Herd:Sample:1:1.0.0", "--dir", sample.to_str().unwrap()]);
    r.subnet_and_lb();
    let create = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "vmss",
            "create",
            "-g",
            "rg",
            "-n",
            name,
            "--image",
            "Herd:Sample:1:1.0.0",
            "--instance-count",
            "2",
            "--vm-sku",
            "Standard_B1s",
            "--vnet-name",
            "vnet1",
            "--subnet",
            "web",
            "--disable-overprovision",
            "--no-wait",
        ];
        args.extend(extra);
        r.json(&args);
    };
    create("web", &["--zones", "1", "--lb", "web-lb"]);
    create("bal", &["--zones", "1", "2", "--zone-balance"]);
    create("spotty", &["--zones", "1", "--priority", "Spot", "--eviction-policy", "Delete"]);
    wait_observing("web on h1 and h2, bal on zone 1 and h3, all running", Duration::from_secs(180), || {
        let on = |set: &str| -> BTreeSet<String> {
            instances(&r, set)
                .iter()
                .filter(|i| i["powerState"] == "running")
                .filter_map(|i| i["host"].as_str().map(String::from))
                .collect()
        };
        let (web, bal, spotty) = (on("web"), on("bal"), on("spotty"));
        let zone1 = BTreeSet::from(["h1".to_string(), "h2".to_string()]);
        let ok = web == zone1 && bal.contains("h3") && bal.len() == 2 && spotty == zone1;
        ok.then_some(()).ok_or_else(|| format!("web on {web:?}, bal on {bal:?}, spotty on {spotty:?}"))
    });

    // Bad input, each refused with nothing changed.
    let e = r.err(&["host", "drain", "h3"]);
    assert!(e.contains("last Ready host of zone 2") && e.contains("bal") && e.contains("zoneBalance"), "{e}");
    assert_eq!(host(&r, "h3")["scheduling"], "Schedulable", "a refused drain cordons nothing");
    let on_h3 = instances(&r, "bal").into_iter().find(|i| i["host"] == "h3").unwrap();
    let id3 = on_h3["instanceId"].as_str().unwrap();
    let e = r.err(&["vmss", "redeploy", "-g", "rg", "-n", "bal", "--instance-ids", id3]);
    assert!(e.contains("cannot move off host h3") && e.contains("zone 2") && e.contains("instanceIds"), "{e}");
    let after = instance(&r, "bal", id3);
    assert!(after["pendingAction"].is_null() && after["host"] == "h3", "nothing changed: {after}");
    r.json(&["vmss", "delete", "-g", "rg", "-n", "bal", "--no-wait"]);

    let spot_on_h1 = instances(&r, "spotty").into_iter().find(|i| i["host"] == "h1").unwrap()["instanceId"]
        .as_str()
        .unwrap()
        .to_string();
    // A file on h1's instance's disk, read through its private IP.
    let web = instances(&r, "web");
    let moved = web.iter().find(|i| i["host"] == "h1").unwrap().clone();
    let id = moved["instanceId"].as_str().unwrap().to_string();
    let ip = moved["privateIpAddress"].as_str().unwrap().to_string();
    let work = wait_observing(&format!("instance {id}'s work dir on h1"), Duration::from_secs(30), || {
        work_dir(&r.member_dir("h1"), &id).ok_or_else(|| "not found".to_string())
    });
    let token = format!("kept-{}", std::process::id());
    std::fs::write(work.join("www/kept.txt"), &token).unwrap();
    let kept_url = format!("http://{ip}:8080/kept.txt");
    wait_observing(&format!("{kept_url} to answer (written to {})", work.display()), Duration::from_secs(60), || {
        get(&r, &kept_url).and_then(|t| (t == token).then_some(()).ok_or(t))
    });
    wait_observing("both web instances in rotation", Duration::from_secs(60), || {
        let now = r.in_rotation();
        (now.len() == 2).then_some(()).ok_or_else(|| format!("{now:?}"))
    });

    // Drain h1 under load through the frontend: no request fails.
    let frontend = r.json(&["network", "public-ip", "show", "-g", "rg", "-n", "web-lb-ip"])["ipAddress"]
        .as_str()
        .unwrap()
        .to_string();
    let stop = r.data_dir.parent().unwrap().join("stop-load");
    let loading = load(&r, &format!("http://{frontend}:18080/"), &stop, 600);
    let t0 = std::time::Instant::now();
    let drained = r.json(&["host", "drain", "h1", "--timeout", "600"]);
    let took = t0.elapsed();
    assert_eq!(drained["instances"], 0, "{drained}");
    assert!(drained["movingAway"].is_null() && drained["staleCopies"].is_null(), "drained means moved: {drained}");
    assert_eq!(drained["scheduling"], "Cordoned", "{drained}");
    let now = instance(&r, "web", &id);
    assert_eq!(now["host"], "h2", "{now}");
    assert_eq!(now["privateIpAddress"], moved["privateIpAddress"], "the same private IP: {now}");
    assert_eq!(now["computerName"], moved["computerName"]);
    assert!(now["incarnation"].as_u64() > moved["incarnation"].as_u64(), "a new incarnation: {now}");
    wait_observing(&format!("instance {id} running on h2"), Duration::from_secs(120), || {
        let i = instance(&r, "web", &id);
        (i["powerState"] == "running" && i["provisioningState"] == "Succeeded")
            .then_some(())
            .ok_or_else(|| i.to_string())
    });
    wait_observing("the token on the moved instance (its disk)", Duration::from_secs(60), || {
        get(&r, &kept_url).and_then(|t| (t == token).then_some(()).ok_or(t))
    });
    assert!(work_dir(&r.member_dir("h1"), &id).is_none(), "the copy on h1 is gone");
    wait_observing("both web instances in rotation after the drain", Duration::from_secs(60), || {
        let now = r.in_rotation();
        (now.len() == 2).then_some(()).ok_or_else(|| format!("{now:?}"))
    });
    std::fs::write(&stop, b"").unwrap();
    let result = loading.join().unwrap();
    let failed = result["failed"].as_array().unwrap();
    eprintln!(
        "drain of h1 (one process instance) took {:.1} s under load: {} requests answered, {} failed",
        took.as_secs_f64(),
        result["ok"],
        failed.len()
    );
    assert!(failed.is_empty(), "requests failed during the drain: {failed:?}");
    assert!(result["ok"].as_u64().unwrap() >= 50, "the load ran: {result}");
    let activity = r.json(&["monitor", "activity-log", "list", "-g", "rg"]).to_string();
    assert!(activity.contains("RedeployInstance") && activity.contains("drain of host h1"), "{activity}");
    // The Spot instance on h1 was evicted (Preempt, then its Delete policy), not moved.
    let spot_gone = instances(&r, "spotty");
    assert!(spot_gone.iter().all(|i| i["instanceId"] != spot_on_h1.as_str()), "evicted: {spot_gone:?}");
    assert!(activity.contains("SpotEviction") || activity.contains("Evict"), "{activity}");

    // Redeploy it back: h1 is cordoned, so zone 1 has no other host: refused.
    let e = r.err(&["vmss", "redeploy", "-g", "rg", "-n", "web", "--instance-ids", &id]);
    assert!(e.contains("cannot move off host h2") && e.contains("h1 (takes no new instances)"), "{e}");
    r.json(&["host", "uncordon", "h1"]);
    r.json(&["vmss", "redeploy", "-g", "rg", "-n", "web", "--instance-ids", &id, "--timeout", "600"]);
    let back = instance(&r, "web", &id);
    assert_eq!((back["host"].as_str(), back["powerState"].as_str()), (Some("h1"), Some("running")), "{back}");
    // Running is its process started; the app answers a moment later.
    wait_observing("the token on the instance moved back (its disk)", Duration::from_secs(60), || {
        get(&r, &kept_url).and_then(|t| (t == token).then_some(()).ok_or(t))
    });
    r.down();
}

/// A Custom Script: find the 1 GB data disk (by its size: 2,097,152 sectors), with `write` put
/// `disk-of-<hostname>` at its start, then serve the VM's name on 8080 and the disk's first
/// bytes as `/disk` (a server already running is kept).
fn vm_script(write: bool) -> String {
    let write = if write {
        "printf '%-64s' disk-of-$(hostname) | dd of=$dev bs=64 count=1 conv=fsync 2>/dev/null; sync; "
    } else {
        ""
    };
    format!(
        "for d in /sys/block/vd*; do [ \"$(cat $d/size)\" = 2097152 ] && dev=/dev/${{d##*/}}; done; \
         mkdir -p /tmp/www; hostname > /tmp/www/name; cp /tmp/www/name /tmp/www/index.html; \
         {write}dd if=$dev bs=64 count=1 2>/dev/null | tr -d '\\000 ' > /tmp/www/disk; \
         pidof httpd >/dev/null || httpd -p 8080 -h /tmp/www; echo disk $(cat /tmp/www/disk)"
    )
}

#[test]
fn draining_a_host_of_two_vms_under_load_fails_no_request_and_keeps_their_data_disks_and_ips() {
    let tg = herd_test_support::require_testguest("1.0.0");
    let r = Rig::up(
        &Rig::unique("dv"),
        &["--hosts", "2", "--zones", "1,1", "--driver", "qemu", "--server-arg=--accel", "--server-arg=tcg"],
        &format!("{CONFIG}[qemu]\nboot_timeout_secs = 240\n"),
    );
    r.testguest_web(&tg, "3", &["1"], &["--data-disk-sizes-gb", "1"]);
    let all = wait_observing("3 VMs running", Duration::from_secs(400), || {
        let list = instances(&r, "web");
        let up = list.iter().filter(|i| i["powerState"] == "running" && i["provisioningState"] == "Succeeded").count();
        (up == 3).then_some(list.clone()).ok_or_else(|| common::instances_summary(&Value::Array(list)))
    });
    // Each VM writes a token to its data disk and serves it (and its name, for the probe).
    r.custom_script(&vm_script(true), &["*"], true);
    let count = |h: &str| all.iter().filter(|i| i["host"] == h).count();
    let (drained, other) = if count("h1") == 2 { ("h1", "h2") } else { ("h2", "h1") };
    let moving: Vec<Value> = all.iter().filter(|i| i["host"] == drained).cloned().collect();
    assert_eq!(moving.len(), 2, "two VMs on one host: {all:?}");
    let mut tokens = Vec::new();
    for i in &moving {
        let id = i["instanceId"].as_str().unwrap();
        let token = format!("disk-of-{}", i["computerName"].as_str().unwrap());
        let url = format!("http://{}:8080/disk", i["privateIpAddress"].as_str().unwrap());
        wait_observing(&format!("instance {id} to serve its token"), Duration::from_secs(120), || {
            let got = get(&r, &url)?;
            (got.trim() == token).then_some(()).ok_or(got)
        });
        tokens.push((id.to_string(), url, token));
    }
    wait_observing("3 VMs in rotation", Duration::from_secs(180), || {
        let now = r.in_rotation();
        (now.len() == 3).then_some(()).ok_or_else(|| format!("{now:?}"))
    });

    // Drain the host of two under load through the frontend.
    let frontend = r.json(&["network", "public-ip", "show", "-g", "rg", "-n", "web-lb-ip"])["ipAddress"]
        .as_str()
        .unwrap()
        .to_string();
    let stop = r.data_dir.parent().unwrap().join("stop-load");
    let loading = load(&r, &format!("http://{frontend}:18080/name"), &stop, 1500);
    let t0 = std::time::Instant::now();
    let view = r.json(&["host", "drain", drained, "--timeout", "1200"]);
    let took = t0.elapsed();
    assert_eq!(view["instances"], 0, "{view}");
    assert!(view["movingAway"].is_null() && view["staleCopies"].is_null(), "drained means moved: {view}");
    for (id, _, _) in &tokens {
        let i = wait_observing(&format!("instance {id} running on {other}"), Duration::from_secs(400), || {
            let i = instance(&r, "web", id);
            (i["host"] == other && i["powerState"] == "running" && i["provisioningState"] == "Succeeded")
                .then(|| i.clone())
                .ok_or_else(|| i.to_string())
        });
        let was = moving.iter().find(|m| m["instanceId"] == id.as_str()).unwrap();
        assert_eq!(i["privateIpAddress"], was["privateIpAddress"], "the same IP: {i}");
        assert_eq!(i["computerName"], was["computerName"]);
        assert!(i["incarnation"].as_u64() > was["incarnation"].as_u64(), "a new incarnation: {i}");
    }
    assert!(r.pids(drained, "qemu-system").is_empty(), "no VM left on {drained}");
    assert_eq!(r.pids(other, "qemu-system").len(), 3, "all three on {other}");
    // The moved VMs booted again on the other host: serve again, reading what the disk holds
    // (on them only: an extension run in place drains the instance it runs on).
    r.custom_script(&vm_script(false), &tokens.iter().map(|t| t.0.as_str()).collect::<Vec<_>>(), true);
    for (id, url, token) in &tokens {
        let got =
            wait_observing(&format!("instance {id}'s data disk after the move"), Duration::from_secs(120), || {
                get(&r, url)
            });
        assert_eq!(got.trim(), token, "the data disk moved with instance {id}");
    }
    wait_observing("3 VMs in rotation after the drain", Duration::from_secs(180), || {
        let now = r.in_rotation();
        (now.len() == 3).then_some(()).ok_or_else(|| format!("{now:?}"))
    });
    std::fs::write(&stop, b"").unwrap();
    let result = loading.join().unwrap();
    let failed = result["failed"].as_array().unwrap();
    eprintln!(
        "drain of {drained} (two TCG VMs) took {:.1} s under load: {} requests answered, {} failed",
        took.as_secs_f64(),
        result["ok"],
        failed.len()
    );
    assert!(failed.is_empty(), "requests failed during the drain: {failed:?}");
    assert!(result["ok"].as_u64().unwrap() >= 100, "the load ran: {result}");
    r.down();
}
