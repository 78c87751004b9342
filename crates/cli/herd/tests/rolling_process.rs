//! Rolling upgrades on real processes behind the load balancer (all on loopback): batches of
//! 20% under a bounded constant load lose no request; a model whose app fails its probe aborts
//! after the first batch (and, with rollbackFailedInstancesOnPolicyBreach, goes back); a canary
//! pauses after one instance until resume, and rollback reverts it; protected instances are
//! left alone.

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// An app answering `Version N from <name>` on /api/version and, unless broken, 200 on `/`
/// (the probe path). A broken one answers 500 on `/`.
fn app(version: u32, broken: bool) -> String {
    let probe_status = if broken { 500 } else { 200 };
    python_http_app(
        &format!(
            r#"        version = self.path == "/api/version"
        body = (f"Version {version} from {{NAME}}" if version else "probe").encode()
        status = 200 if version else {probe_status}"#
        ),
        "exec python3 app.py",
    )
}

const SET: [&str; 4] = ["-g", "rg", "-n", "web"];

fn with<'a>(cmd: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    on_set(&SET, cmd, extra)
}

/// A server with images 1.0.0 (v1), 1.0.1 (v2) and 1.0.2 (v2, failing its probe), a load
/// balancer with an HTTP probe on `/`, and a Rolling scale set of `count` on 1.0.0.
fn setup(dir: &std::path::Path, count: &str, policy: &str) -> (Server, String) {
    // How long an upgraded instance may stay probe-unhealthy after its boot before the upgrade
    // counts it as failed. Under `stress-ng --cpu 2` beside other builds (load 15-19 on 2
    // cores) instances took up to 7.8 s from creation to healthy, and a 5 s grace failed a good
    // canary (the upgrade went Faulted instead of Paused); 20 s is 2.5 times the worst measured.
    let grace = (20.0 * herd_test_support::time_scale()).ceil() as u64;
    let s = Server::start(
        "process",
        &dir.join("data"),
        Some(&format!("[loadbalancer]\ndrain_timeout_secs = 1\n[upgrades]\nhealth_grace_secs = {grace}\n")),
    );
    s.ok(&["group", "create", "-n", "rg"]);
    for (v, version, broken) in [("1.0.0", 1, false), ("1.0.1", 2, false), ("1.0.2", 2, true)] {
        let img = image_dir(&dir.join(format!("img-{v}")), &app(version, broken));
        s.ok(&["image", "import", "--urn", &format!("Herd:App:1:{v}"), "--dir", img.to_str().unwrap()]);
    }
    s.ok(&["network", "lb", "create", "-g", "rg", "-n", "web-lb", "--public-ip-address", "web-lb-ip"]);
    ProbedRule::default().create(&s);
    // Rolling without a health source is refused with a clear error.
    let e = s.err(&with(
        &["vmss", "create"],
        &["--image", "Herd:App:1:1.0.0", "--instance-count", "1", "--upgrade-policy-mode", "Rolling"],
    ));
    assert!(e.contains("Rolling needs a health source"), "{e}");
    s.ok(&with(
        &["vmss", "create"],
        &[
            words("--image Herd:App:1:1.0.0 --instance-count"),
            vec![count],
            words("--vm-sku Standard_B1s --lb web-lb --upgrade-policy-mode Rolling --disable-overprovision --quiet"),
        ]
        .concat(),
    ));
    if !policy.is_empty() {
        s.ok(&with(
            &["vmss", "update"],
            &["--set", &format!("upgradePolicy.rollingUpgradePolicy={policy}"), "--quiet"],
        ));
    }
    let ip =
        s.ok(&["network", "public-ip", "show", "-g", "rg", "-n", "web-lb-ip", "--query", "ipAddress", "-o", "tsv"]);
    let n: usize = count.parse().unwrap();
    // Measured with `stress-ng --cpu 2` beside five other builds on 2 cores (load 15-19), the
    // four tests of this binary in parallel: 3.6-6.1 s. 60 s is ten times that. The timeouts
    // once seen here were two parallel tests sharing instance addresses (now excluded by
    // `common::with_address_block`), not slowness.
    wait_all_healthy(&s, n, "every instance healthy", Duration::from_secs(60));
    (s, format!("http://{}:18080", ip.trim()))
}

/// Waits until `n` instances are healthy; on timeout shows each instance's power,
/// provisioning and health state, and what its app answers on `/` right now (the probe's
/// question), as the reason it is not healthy.
fn wait_all_healthy(s: &Server, n: usize, what: &str, limit: Duration) {
    wait_observing(&format!("{what} ({n} healthy)"), limit, || {
        let list = s.json(&with(&["vmss", "list-instances"], &[]));
        let healthy = list.as_array().unwrap().iter().filter(|i| i["health"] == "Healthy").count();
        if healthy == n {
            return Ok(());
        }
        let probes: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["health"] != "Healthy")
            .map(|i| {
                let addr = i["reachAddress"].as_str().unwrap_or("?");
                let answer = get_ok_body(&format!("http://{addr}:8080/")).map(|b| format!("200 {}", b.trim()));
                format!(
                    "instance {}: GET http://{addr}:8080/ -> {}",
                    i["instanceId"].as_str().unwrap_or("?"),
                    answer.unwrap_or_else(|e| e)
                )
            })
            .collect();
        Err(format!("{healthy} of {n} healthy\n{}\n{}", instances_summary(&list), probes.join("\n")))
    });
}

fn wait_state(s: &Server, want: &[&str], limit: Duration) -> Value {
    let mut seen_running = false;
    wait_observing(&format!("the rolling upgrade to reach {want:?}"), limit, || {
        let out = s.herd(&with(&["vmss", "rolling-upgrade", "get-latest"], &["-o", "json"]));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if v["state"].as_str().is_some_and(|st| want.contains(&st)) {
            return Ok(v);
        }
        let list = s.json(&with(&["vmss", "list-instances"], &[]));
        // An upgrade seen running that then finished never changes state again: fail now, not
        // at the deadline. (A finished state seen first may be the previous upgrade's.)
        let st = v["state"].as_str().unwrap_or("");
        let finished = ["Completed", "Faulted", "Cancelled", "RolledBack"].contains(&st);
        if !finished && !st.is_empty() {
            seen_running = true;
        }
        if finished && seen_running {
            panic!(
                "the rolling upgrade ended {st} while the test waited for {want:?}:\n{v}\n{}",
                instances_summary(&list)
            );
        }
        Err(format!(
            "rolling upgrade: {}\n{}",
            if v.is_null() { String::from_utf8_lossy(&out.stderr).trim().to_string() } else { v.to_string() },
            instances_summary(&list)
        ))
    })
}

fn generations(s: &Server) -> Vec<(String, u64)> {
    let list = s.json(&with(&["vmss", "list-instances"], &[]));
    list.as_array()
        .unwrap()
        .iter()
        .map(|i| (i["instanceId"].as_str().unwrap().to_string(), i["modelGeneration"].as_u64().unwrap()))
        .collect()
}

#[test]
fn a_rolling_upgrade_under_load_loses_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let (s, frontend) = setup(dir.path(), "6", "");
    // Bounded: at most 20,000 requests per worker and 120 s.
    let load = Load::start(&format!("{frontend}/api/version"), 4, 20_000, Duration::from_secs(120));
    wait_for("load to be flowing", Duration::from_secs(10), || (load.ok() > 20).then_some(()));
    s.ok(&with(
        &["vmss", "update"],
        &["--set", "virtualMachineProfile.storageProfile.imageReference.version=1.0.1", "--quiet"],
    ));
    let done = wait_state(&s, &["Completed", "Faulted", "Cancelled"], Duration::from_secs(120));
    let (failures, completions) = load.finish();
    assert_eq!(done["state"], "Completed", "{done}");
    let batches = done["batches"].as_array().unwrap();
    assert_eq!(batches.len(), 6, "20% of 6 is one instance per batch: {done}");
    assert!(batches.iter().all(|b| b["instances"].as_array().unwrap().len() == 1));
    assert!(failures.is_empty(), "{} requests failed during the upgrade, e.g. {:?}", failures.len(), failures.first());
    for (i, b) in batches.iter().enumerate() {
        let from: chrono::DateTime<chrono::Utc> = serde_json::from_value(b["startedAt"].clone()).unwrap();
        let to: chrono::DateTime<chrono::Utc> = serde_json::from_value(b["finishedAt"].clone()).unwrap();
        let during = completions.iter().filter(|(_, t)| *t >= from && *t <= to).count();
        assert!(during >= 50, "batch {i}: only {during} requests completed during it; the load must overlap");
    }
    let gens = generations(&s);
    assert!(gens.iter().all(|(_, g)| *g == 2), "every instance on the new model: {gens:?}");
    for _ in 0..10 {
        assert!(get_ok_body(&format!("{frontend}/api/version")).unwrap().starts_with("Version 2 from"));
    }
    let log = s.ok(&["monitor", "activity-log", "list", "-g", "rg", "-o", "json"]);
    assert!(log.contains("rolling upgrade to model generation 2 started (model change)"), "{log}");
    assert!(log.contains("batch 6 done"), "{log}");
}

#[test]
fn a_failing_model_aborts_after_the_first_batch_and_rolls_back_when_asked() {
    for rollback in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let policy = format!("{{\"rollbackFailedInstancesOnPolicyBreach\": {rollback}}}");
        let (s, _frontend) = setup(dir.path(), "5", &policy);
        let gen0 = s.json(&with(&["vmss", "show"], &[]))["modelGeneration"].as_u64().unwrap();
        s.ok(&with(
            &["vmss", "update"],
            &["--set", "virtualMachineProfile.storageProfile.imageReference.version=1.0.2", "--quiet"],
        ));
        let end = if rollback { "RolledBack" } else { "Faulted" };
        let done = wait_state(&s, &[end, "Completed"], Duration::from_secs(120));
        assert_eq!(done["state"], end, "{done}");
        assert!(done["error"].as_str().unwrap().contains("maxUnhealthyUpgradedInstancePercent"), "{done}");
        let first = &done["batches"][0]["instances"];
        assert_eq!(first.as_array().unwrap().len(), 1, "{done}");
        let list = s.json(&with(&["vmss", "list-instances"], &[]));
        let healthy = || {
            let l = s.json(&with(&["vmss", "list-instances"], &[]));
            l.as_array().unwrap().iter().filter(|i| i["health"] == "Healthy").count()
        };
        if rollback {
            // The failed instance was re-imaged back: every instance runs the old model again
            // (now as a new generation), and all are healthy.
            let gen_now = s.json(&with(&["vmss", "show"], &[]))["modelGeneration"].as_u64().unwrap();
            assert_eq!(gen_now, gen0 + 2, "the rollback is a new generation with the old model");
            assert_eq!(
                s.json(&with(&["vmss", "show"], &[]))["virtualMachineProfile"]["storageProfile"]["imageReference"]
                    ["version"],
                "1.0.0"
            );
            wait_all_healthy(&s, 5, "all healthy after the rollback", Duration::from_secs(60));
            assert!(generations(&s).iter().all(|(_, g)| *g == gen_now));
        } else {
            let on_old =
                list.as_array().unwrap().iter().filter(|i| i["modelGeneration"].as_u64() == Some(gen0)).count();
            assert_eq!(on_old, 4, "the rest stay on the old model: {list}");
            assert!(healthy() * 100 / 5 >= 80, "at least 80% stay healthy");
        }
    }
}

#[test]
fn a_canary_pauses_until_resumed_and_rollback_reverts_it() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _frontend) = setup(dir.path(), "5", "");
    // Protect one instance: upgrades leave it alone.
    let first = generations(&s)[4].0.clone();
    let shown =
        s.json(&with(&["vmss", "update"], &["--instance-id", &first, "--protect-from-scale-set-actions", "true"]));
    assert_eq!(shown["protectionPolicy"]["protectFromScaleSetActions"], true, "{shown}");

    for (round, finish) in [(0, "resume"), (1, "rollback")] {
        let version = if round == 0 { "1.0.1" } else { "1.0.0" };
        // Hold the automatic start: switch to Manual, change the model, then start with a canary.
        s.ok(&with(&["vmss", "update"], &["--set", "upgradePolicy.mode=Manual", "--quiet"]));
        s.ok(&with(
            &["vmss", "update"],
            &["--set", &format!("virtualMachineProfile.storageProfile.imageReference.version={version}"), "--quiet"],
        ));
        s.ok(&with(&["vmss", "rolling-upgrade", "start"], &["--canary", "1", "--pause"]));
        let paused = wait_state(&s, &["Paused"], Duration::from_secs(60));
        assert_eq!(paused["batches"].as_array().unwrap().len(), 1, "{paused}");
        assert!(paused["error"].as_str().unwrap().contains("canary"), "{paused}");
        let target = paused["targetGeneration"].as_u64().unwrap();
        let on_target = generations(&s).iter().filter(|(_, g)| *g == target).count();
        assert_eq!(on_target, 1, "only the canary moved");
        s.ok(&with(&["vmss", "rolling-upgrade", finish], &[]));
        if finish == "resume" {
            let done = wait_state(&s, &["Completed"], Duration::from_secs(90));
            let gens = generations(&s);
            let protected = gens.iter().find(|(id, _)| *id == first).unwrap().1;
            assert!(protected < target, "the protected instance is left alone: {gens:?}");
            assert_eq!(gens.iter().filter(|(_, g)| *g == target).count(), 4, "{done}");
        } else {
            let done = wait_state(&s, &["RolledBack"], Duration::from_secs(90));
            let now = s.json(&with(&["vmss", "show"], &[]))["modelGeneration"].as_u64().unwrap();
            assert_eq!(done["targetGeneration"].as_u64().unwrap(), now);
            let canary = paused["batches"][0]["instances"][0].as_u64().unwrap().to_string();
            let gens = generations(&s);
            assert_eq!(gens.iter().find(|(id, _)| *id == canary).unwrap().1, now, "the canary went back: {gens:?}");
        }
    }
    let e = s.err(&with(&["vmss", "rolling-upgrade", "start"], &["--canary", "0"]));
    assert!(e.contains("canary") && e.contains("P%"), "{e}");
    let e = s.err(&with(&["vmss", "rolling-upgrade", "resume"], &[]));
    assert!(e.contains("no paused rolling upgrade"), "{e}");
}

#[test]
fn max_surge_brings_new_instances_up_before_the_old_ones_go() {
    let dir = tempfile::tempdir().unwrap();
    let (s, frontend) = setup(dir.path(), "3", "{\"maxSurge\": true, \"maxBatchInstancePercent\": 34}");
    let before: Vec<String> = generations(&s).into_iter().map(|(id, _)| id).collect();
    s.ok(&with(
        &["vmss", "update"],
        &["--set", "virtualMachineProfile.storageProfile.imageReference.version=1.0.1", "--no-wait"],
    ));
    let mut most = 0;
    let mut fewest_healthy = usize::MAX;
    let deadline = Instant::now() + herd_test_support::scaled(Duration::from_secs(120));
    let done = loop {
        let list = s.json(&with(&["vmss", "list-instances"], &[]));
        let live: Vec<&Value> = list.as_array().unwrap().iter().filter(|i| i["goal"] != "Deleted").collect();
        most = most.max(live.len());
        fewest_healthy =
            fewest_healthy.min(list.as_array().unwrap().iter().filter(|i| i["health"] == "Healthy").count());
        assert!(get_ok_body(&format!("{frontend}/api/version")).is_ok(), "the frontend keeps answering");
        let out = s.herd(&with(&["vmss", "rolling-upgrade", "get-latest"], &["-o", "json"]));
        if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) {
            if ["Completed", "Faulted"].contains(&v["state"].as_str().unwrap_or("")) {
                break v;
            }
        }
        assert!(Instant::now() < deadline, "the surge upgrade did not finish");
        // The poll interval of this sampling loop, not a synchronisation.
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(done["state"], "Completed", "{done}");
    assert_eq!(most, 4, "one extra instance at a time (a batch of 1)");
    assert!(fewest_healthy >= 3, "never fewer healthy instances than the capacity: {fewest_healthy}");
    let after = wait_for("the old instances gone", Duration::from_secs(30), || {
        let g = generations(&s);
        (g.len() == 3).then_some(g)
    });
    assert!(
        after.iter().all(|(id, g)| *g == 2 && !before.contains(id)),
        "all new instances on the new model: {after:?}"
    );
}
