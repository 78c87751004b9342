//! The store's transaction limit (128 operations, as etcd's) against the real server on the
//! simulated driver: a 1,000-instance scale-out (the reconciler's intents in chunks) and
//! actions on 1,000 instances (the API's writes in chunks) complete, and nothing is lost.

mod common;

use common::*;
use serde_json::Value;

const SET: [&str; 4] = ["-g", "rg", "-n", "big"];
const CONFIG: &str = "max_capacity = 2000\n[sim]\nboot_min_ms = 5\nboot_max_ms = 30\n";

fn with<'a>(cmd: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    on_set(&SET, cmd, extra)
}

/// The instances that count toward capacity (not overprovisioned, not being deleted).
fn counted(s: &Server) -> Vec<Value> {
    counted_instances(s, &SET)
}

fn power_counts(list: &[Value]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for i in list {
        *m.entry(i["powerState"].as_str().unwrap_or("-").to_string()).or_insert(0) += 1;
    }
    m
}

#[test]
fn thousand_instance_scale_out_and_actions_fit_the_transaction_limit() {
    let (_dir, s) = server_with_sleeper("sim", Some(CONFIG), "rg", "Herd:T:1:1.0.0");

    // Scale-out from 0 to 1,000: the reconciler's intents are ~1,000 writes in one pass.
    s.ok(&with(
        &["vmss", "create"],
        &["--image", "Herd:T:1:1.0.0", "--instance-count", "1000", "--single-placement-group", "false", "--quiet"],
    ));
    let list = counted(&s);
    assert_eq!(list.len(), 1000);
    assert_eq!(power_counts(&list).get("running"), Some(&1000), "{:?}", power_counts(&list));
    let mut ids: Vec<u64> = list.iter().map(|i| i["instanceId"].as_str().unwrap().parse().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1000, "instance ids are unique");

    // An action on all 1,000 instances: the API writes 1,000 records.
    s.ok(&with(&["vmss", "stop"], &["--quiet"]));
    let list = counted(&s);
    assert_eq!(power_counts(&list).get("stopped"), Some(&1000), "{:?}", power_counts(&list));
    s.ok(&with(&["vmss", "start"], &["--instance-ids", "*", "--quiet"]));
    assert_eq!(power_counts(&counted(&s)).get("running"), Some(&1000));
    let activity = s.ok(&["monitor", "activity-log", "list", "-g", "rg", "-o", "json"]);
    assert_eq!(activity.matches("\"Stop\"").count(), 1, "one activity line for the whole action: {activity}");

    // Delete 600 chosen instances: the capacity drops by exactly 600 and exactly those go.
    let chosen: Vec<String> = ids
        .iter()
        .step_by(5)
        .chain(ids.iter().skip(1).step_by(5))
        .chain(ids.iter().skip(2).step_by(5))
        .map(u64::to_string)
        .collect();
    assert_eq!(chosen.len(), 600);
    let mut args = vec!["--instance-ids"];
    args.extend(chosen.iter().map(String::as_str));
    args.push("--quiet");
    s.ok(&with(&["vmss", "delete-instances"], &args));
    assert_eq!(s.json(&with(&["vmss", "show"], &["--query", "sku.capacity"])), 400);
    let left = counted(&s);
    assert_eq!(left.len(), 400);
    assert!(
        left.iter().all(|i| !chosen.contains(&i["instanceId"].as_str().unwrap().to_string())),
        "a chosen instance stayed"
    );

    // And a second 1,000-instance scale-out, from 400 to 1,400, with `scale`.
    s.ok(&with(&["vmss", "scale"], &["--new-capacity", "1400", "--quiet"]));
    let list = counted(&s);
    assert_eq!(list.len(), 1400);
    assert_eq!(power_counts(&list).get("running"), Some(&1400), "{:?}", power_counts(&list));
}
