//! Spot on the process driver, as a user meets it: bad input refused with the field named,
//! `simulate-eviction` posting a Preempt event on that instance's own metadata endpoint (and no
//! other's), eviction on acknowledgement or after the notice, `host show`, and `vmss cost`.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

const CONFIG: &str = r#"
[[hosts]]
name = "h1"
vcpus = 4
memory_mib = 8192

[prices."Standard_B1s"]
regular = 0.0104
spot = 0.0031

[billing]
meter_interval_secs = 1
"#;

const SET: [&str; 4] = ["-g", "spot-rg", "-n", "batch"];

fn with<'a>(cmd: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    on_set(&SET, cmd, extra)
}

/// The instance's metadata URL, as its own environment has it.
fn metadata_url(s: &Server, id: &str) -> String {
    wait_for("the instance's metadata URL", Duration::from_secs(20), || {
        tagged_processes(&s.data_dir)
            .into_iter()
            .find(|p| p.var("HERD_INSTANCE_ID") == Some(id) && p.var("HERD_METADATA_URL").is_some())
            .and_then(|p| p.var("HERD_METADATA_URL").map(str::to_string))
    })
}

fn get(url: &str, metadata: bool) -> (u16, Value) {
    let mut args = vec!["-s", "-w", "\n%{http_code}"];
    if metadata {
        args.extend(["-H", "Metadata: true"]);
    }
    args.push(url);
    let out = std::process::Command::new("curl").args(&args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), serde_json::from_str(body).unwrap_or(Value::String(body.into())))
}

fn post(url: &str, body: &str) -> u16 {
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Metadata: true", "-d", body, url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).parse().unwrap()
}

fn instance(s: &Server, id: &str) -> Value {
    let all = s.json(&with(&["vmss", "list-instances"], &[]));
    all.as_array().unwrap().iter().find(|i| i["instanceId"] == id).cloned().unwrap_or(Value::Null)
}

const EVENTS: &str = "/scheduledevents?api-version=2020-07-01";

#[test]
fn simulate_eviction_posts_a_preempt_event_on_that_instance_only_then_evicts() {
    let (_dir, s) = server_with_sleeper("process", Some(CONFIG), "spot-rg", "Herd:App:1:1.0.0");
    let base = ["--image", "Herd:App:1:1.0.0", "--disable-overprovision", "--quiet"];
    let create = |extra: &[&str]| {
        let mut v = with(&["vmss", "create"], &base);
        if !extra.contains(&"--vm-sku") {
            v.extend_from_slice(&["--vm-sku", "Standard_B1s"]);
        }
        v.extend_from_slice(extra);
        v.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };

    // Bad input, each refused with the field and what is allowed; nothing is created.
    let cases: [(&[&str], &[&str]); 5] = [
        (&["--max-price", "0.5"], &["billingProfile.maxPrice", "Spot"]),
        (&["--priority", "Spot", "--eviction-policy", "Sometimes"], &["evictionPolicy", "Deallocate, Delete"]),
        (&["--terminate-notification-time", "20"], &["notBeforeTimeout", "PT5M to PT15M"]),
        (&["--priority", "Spot", "--terminate-notification-time", "5"], &["cannot be enabled on Spot"]),
        (&["--priority", "Spot", "--vm-sku", "Standard_B2s"], &["spot price", "Standard_B2s"]),
    ];
    for (extra, want) in cases {
        let args = create(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let e = s.err(&args);
        for w in want {
            assert!(e.contains(w), "{extra:?}: '{w}' not in: {e}");
        }
    }
    let sets = s.json(&["vmss", "list", "-g", "spot-rg"]);
    assert_eq!(sets.as_array().unwrap().len(), 0, "a refused create leaves nothing behind");

    // Low is accepted as Spot's older name.
    let args = create(&["--priority", "Low", "--eviction-policy", "Deallocate", "--instance-count", "2"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    s.ok(&args);
    let hosts = s.json(&["host", "show"]);
    let h1 = &hosts.as_array().unwrap()[0];
    assert_eq!(h1["name"], "h1");
    assert_eq!(h1["spotVcpus"], 2);
    assert_eq!(h1["freeVcpus"], 2);

    // Each instance has its own endpoint, which knows who is asking.
    let (u0, u1) = (metadata_url(&s, "0"), metadata_url(&s, "1"));
    assert_ne!(u0, u1);
    for u in [&u0, &u1] {
        // The endpoint opens within a sync of the record appearing.
        wait_for("the metadata endpoint to listen", Duration::from_secs(20), || {
            (get(&format!("{u}/versions"), true).0 != 0).then_some(())
        });
    }
    let (code, _) = get(&format!("{u0}{EVENTS}"), false);
    assert_eq!(code, 400, "the Metadata: true header is required, as in Azure");
    let (code, id0) = get(&format!("{u0}/instance?api-version=2021-02-01"), true);
    assert_eq!(code, 200);
    assert_eq!(id0["compute"]["name"], "batch_0");
    assert_eq!(id0["compute"]["vmScaleSetName"], "batch");

    // simulate-eviction: a Preempt event on instance 0's endpoint only.
    s.ok(&with(&["vmss", "simulate-eviction"], &["--instance-id", "0"]));
    let (_, ev0) = get(&format!("{u0}{EVENTS}"), true);
    let events = ev0["Events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{ev0}");
    assert_eq!(events[0]["EventType"], "Preempt");
    assert_eq!(events[0]["Resources"][0], "batch_0");
    let (_, ev1) = get(&format!("{u1}{EVENTS}"), true);
    assert_eq!(ev1["Events"].as_array().unwrap().len(), 0, "instance 1 sees nothing: {ev1}");
    assert!(instance(&s, "0")["scheduledEvents"][0]["eventType"] == "Preempt");

    // An acknowledgement evicts before the notice is over.
    let event_id = events[0]["EventId"].as_str().unwrap().to_string();
    assert_eq!(post(&format!("{u1}{EVENTS}"), &format!("{{\"StartRequests\":[{{\"EventId\":\"{event_id}\"}}]}}")), 400);
    assert_eq!(post(&format!("{u0}{EVENTS}"), &format!("{{\"StartRequests\":[{{\"EventId\":\"{event_id}\"}}]}}")), 200);
    let i0 = wait_for("instance 0 evicted", Duration::from_secs(60), || {
        let i = instance(&s, "0");
        (i["powerState"] == "deallocated").then_some(i)
    });
    let not_before = instance_not_before(&i0);
    let evicted_at = chrono::DateTime::parse_from_rfc3339(i0["eviction"]["at"].as_str().unwrap()).unwrap();
    assert!(evicted_at < not_before, "evicted at {evicted_at}, before the notice ended at {not_before}");
    assert_eq!(i0["eviction"]["reason"], "Simulated");
    assert_eq!(instance(&s, "1")["powerState"], "running");
    let hosts = s.json(&["host", "show"]);
    assert_eq!(hosts.as_array().unwrap()[0]["spotVcpus"], 1, "a deallocated instance frees its room");

    // Without an acknowledgement the notice runs out and the instance is evicted.
    s.ok(&with(&["vmss", "simulate-eviction"], &["--instance-id", "1"]));
    let i1 = wait_for("instance 1 evicted after its notice", Duration::from_secs(90), || {
        let i = instance(&s, "1");
        (i["powerState"] == "deallocated").then_some(i)
    });
    let not_before = instance_not_before(&i1);
    let evicted_at = chrono::DateTime::parse_from_rfc3339(i1["eviction"]["at"].as_str().unwrap()).unwrap();
    assert!(evicted_at >= not_before, "evicted at {evicted_at}, not before {not_before}");

    // simulate-eviction is for Spot sets only.
    s.ok(&words(
        "vmss create -g spot-rg -n reg --image Herd:App:1:1.0.0 --vm-sku Standard_B1s --instance-count 1 --quiet",
    ));
    let e = s.err(&["vmss", "simulate-eviction", "-g", "spot-rg", "-n", "reg", "--instance-id", "0"]);
    assert!(e.contains("only to Spot"), "{e}");

    // A Regular scale-out that cannot fit, even with every Spot instance evicted, is refused
    // up front with what is missing; the set keeps its capacity.
    let e = s.err(&["vmss", "scale", "-g", "spot-rg", "-n", "reg", "--new-capacity", "6"]);
    assert!(e.contains("sku.capacity") && e.contains("vCPU") && e.contains("h1"), "{e}");
    let reg = s.json(&["vmss", "show", "-g", "spot-rg", "-n", "reg"]);
    assert_eq!(reg["sku"]["capacity"], 1);
    s.ok(&["vmss", "scale", "-g", "spot-rg", "-n", "reg", "--new-capacity", "3", "--quiet"]);

    // The meter billed the Spot instances at the spot price.
    let cost = wait_for("metered spot time", Duration::from_secs(30), || {
        let c = s.json(&with(&["vmss", "cost"], &[]));
        let rows = c["rows"].as_array().cloned().unwrap_or_default();
        rows.iter()
            .any(|r| {
                (r["priority"] == "Spot" || r["priority"] == "Low") && r["instanceHours"].as_f64().unwrap_or(0.0) > 0.0
            })
            .then_some(c)
    });
    assert!(cost["total"]["cost"].as_f64().unwrap() > 0.0, "{cost}");
}

/// The Preempt event's not-before time, as the instance view recorded it.
fn instance_not_before(i: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    let ev = i["scheduledEvents"].as_array().and_then(|a| a.iter().find(|e| e["eventType"] == "Preempt")).cloned();
    let nb = ev.expect("the Preempt event stays on the evicted instance")["notBefore"].as_str().unwrap().to_string();
    chrono::DateTime::parse_from_rfc3339(&nb).unwrap()
}
