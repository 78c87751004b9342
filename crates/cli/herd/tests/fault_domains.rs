//! Fault domains and zones as a user meets them: the real `herd` CLI against a sim server
//! with declared hosts in three zones (zone 1 in two racks), a fourth zone with no host.
//! `list-instances` shows each instance's fault domain and host; bad input is refused with
//! the field named and nothing created.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;

const CONFIG: &str = r#"
zones = ["1", "2", "3", "4"]

[sim]
boot_min_ms = 5
boot_max_ms = 30

[[hosts]]
name = "h1a"
zone = "1"
fault_domain = "rack-a"
vcpus = 16
memory_mib = 65536

[[hosts]]
name = "h1b"
zone = "1"
fault_domain = "rack-b"
vcpus = 16
memory_mib = 65536

[[hosts]]
name = "h2"
zone = "2"
vcpus = 16
memory_mib = 65536

[[hosts]]
name = "h3"
zone = "3"
vcpus = 16
memory_mib = 65536
"#;

fn create_args<'a>(name: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "vmss",
        "create",
        "-g",
        "fd-rg",
        "-n",
        name,
        "--image",
        "Herd:TestGuest:1:1.0.0",
        "--vm-sku",
        "Standard_B1s",
        "--disable-overprovision",
        "--admin-password",
        "correct-horse-battery",
        "--quiet",
    ];
    v.extend_from_slice(extra);
    v
}

fn instances(s: &Server, name: &str) -> Vec<Value> {
    s.json(&["vmss", "list-instances", "-g", "fd-rg", "-n", name]).as_array().unwrap().clone()
}

fn start() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start("sim", &dir.path().join("data"), Some(CONFIG));
    let img = image_dir(&dir.path().join("img"), "exec sleep 3600");
    s.ok(&["group", "create", "-n", "fd-rg", "-l", "local"]);
    s.ok(&["image", "import", "--urn", "Herd:TestGuest:1:1.0.0", "--dir", img.to_str().unwrap()]);
    (dir, s)
}

#[test]
fn fault_domains_alternate_show_in_list_instances_and_bad_counts_are_refused() {
    let (_dir, s) = start();

    // `host show` lists the declared hosts with their fault-domain labels.
    let hosts = s.json(&["host", "show"]);
    let labels: Vec<(String, Value)> = hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["name"].as_str().unwrap().to_string(), h["faultDomain"].clone()))
        .collect();
    assert_eq!(labels[0], ("h1a".to_string(), Value::from("rack-a")), "{hosts}");
    assert_eq!(labels[2], ("h2".to_string(), Value::Null), "{hosts}");

    // Two fault domains in zone 1 (the racks): instances alternate between them.
    s.ok(&create_args("web", &["--zones", "1", "--platform-fault-domain-count", "2", "--instance-count", "4"]));
    let mut list = instances(&s, "web");
    list.sort_by_key(|i| i["instanceId"].as_str().unwrap().parse::<u64>().unwrap());
    let got: Vec<(String, u64, String)> = list
        .iter()
        .map(|i| {
            (
                i["instanceId"].as_str().unwrap().to_string(),
                i["platformFaultDomain"].as_u64().unwrap(),
                i["host"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, u64, String)> =
        (0..4u64).map(|i| (i.to_string(), i % 2, if i % 2 == 0 { "h1a" } else { "h1b" }.to_string())).collect();
    assert_eq!(got, want);
    let table = s.ok(&["vmss", "list-instances", "-g", "fd-rg", "-n", "web", "-o", "table"]);
    let header = table.lines().next().unwrap();
    assert!(header.contains("FaultDomain") && header.contains("Host"), "{table}");
    let view = s.json(&["vmss", "get-instance-view", "-g", "fd-rg", "-n", "web", "--instance-id", "1"]);
    assert_eq!(view["platformFaultDomain"], 1, "{view}");

    // The count is fixed at create.
    let e = s.err(&["vmss", "update", "-g", "fd-rg", "-n", "web", "--set", "platformFaultDomainCount=1"]);
    assert!(e.contains("platformFaultDomainCount") && e.contains("cannot change from 2 to 1"), "{e}");

    // Bad input, each refused with the field named; nothing is created.
    let cases: [(&[&str], &[&str]); 4] = [
        // Zone 2 has one fault domain (h2).
        (&["--zones", "1", "2", "--platform-fault-domain-count", "2"], &["platformFaultDomainCount", "zone 2", "h2"]),
        // Zone 1 has two.
        (
            &["--zones", "1", "--platform-fault-domain-count", "3"],
            &["platformFaultDomainCount", "zone 1", "rack-a, rack-b"],
        ),
        (&["--platform-fault-domain-count", "0"], &["platformFaultDomainCount", "allowed 1 to 100"]),
        // Zone 4 has no host: with zone balance, refused.
        (
            &["--zones", "1", "4", "--zone-balance"],
            &["zones[1]", "no host that takes new instances serves zone 4", "zoneBalance"],
        ),
    ];
    for (extra, want) in cases {
        let e = s.err(&create_args("bad", extra));
        for w in want {
            assert!(e.contains(w), "{extra:?}: '{w}' not in: {e}");
        }
    }
    let sets = s.json(&["vmss", "list", "-g", "fd-rg"]);
    assert_eq!(sets.as_array().unwrap().len(), 1, "the refused creates left nothing: {sets}");

    // Maximum spreading (the default count of 1) over zones 1 to 3: 2 per zone, fault domain 0;
    // zone 1's two go to its two hosts.
    s.ok(&create_args("spread", &["--zones", "1", "2", "3", "--instance-count", "6"]));
    let list = instances(&s, "spread");
    let mut per_host: BTreeMap<String, usize> = BTreeMap::new();
    for i in &list {
        assert_eq!(i["platformFaultDomain"], 0, "{i}");
        *per_host.entry(i["host"].as_str().unwrap().to_string()).or_default() += 1;
    }
    let want: BTreeMap<String, usize> =
        [("h1a", 1), ("h1b", 1), ("h2", 2), ("h3", 2)].into_iter().map(|(h, n)| (h.to_string(), n)).collect();
    assert_eq!(per_host, want);

    // Without zone balance, zone 4's share goes to zone 1, and the set's status says so.
    s.ok(&create_args("nobal", &["--zones", "1", "4", "--instance-count", "2"]));
    let list = instances(&s, "nobal");
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|i| i["zones"][0] == "1"), "{list:?}");
    let set = s.json(&["vmss", "show", "-g", "fd-rg", "-n", "nobal"]);
    let note = set["instanceSummary"]["placementNote"]["message"].as_str().unwrap_or_default().to_string();
    assert_eq!(note, "zone 4 has no host that takes new instances; new instances go to zone 1 (zoneBalance is off)");
}
