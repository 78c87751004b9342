//! Host reboot (issue 21) on the namespace rig, with real TCG VMs: after a reboot a host's VMs
//! start again only once the server's acknowledgement lists them as the host's.
//!
//! - While the server cannot answer (frozen with SIGSTOP), a rebooted host starts nothing;
//!   once it answers, every VM of the host comes back: same ids, same private IPs, on the same
//!   host, in the load balancer's rotation again.
//! - A host cut off until its VM was re-created on the other host of its zone, then rebooted
//!   (still cut) and linked again: the moved VM never starts on it (its QEMU processes are
//!   sampled over the whole return until it is Ready), and its copy is destroyed.
//!
//! Timings as in host_failure.rs: host_grace 5 s, heartbeats every second, leases of 4 s,
//! replace_after 30 s. Waits are sized for TCG boots on a loaded 2-core machine.

mod common;

use common::rig::Rig;
use common::wait_observing;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

/// What an instance's QEMU has on its command line (its directory under the host's data dir;
/// the agent's accelerator canary, also a `qemu-system`, has not).
const VM: &str = "/vms/rg/web/";

/// The guest's web server behind the load balancer's probe, started by the Custom Script
/// extension (the test guest cannot run custom data: herd sends it as MIME multipart). Nothing
/// starts it at boot, so after a VM's restart the extension runs it again (`serve`).
const WEB: &str = "mkdir -p /www && hostname > /www/index.html && busybox httpd -p 8080 -h /www";

fn config() -> String {
    "[agents]\nhost_grace_secs = 5\nheartbeat_interval_ms = 1000\nlease_secs = 4\nreplace_after_secs = 30\n\
     [qemu]\nboot_timeout_secs = 240\n"
        .to_string()
}

fn instances(r: &Rig) -> Vec<Value> {
    r.json(&["vmss", "list-instances", "-g", "rg", "-n", "web"]).as_array().cloned().unwrap_or_default()
}

fn instance(r: &Rig, id: &str) -> Value {
    instances(r).into_iter().find(|i| i["instanceId"] == id).unwrap_or(Value::Null)
}

fn host_state(r: &Rig, host: &str) -> String {
    let list = r.json(&["host", "list"]);
    list.as_array()
        .and_then(|v| v.iter().find(|h| h["name"] == host))
        .map(|h| h["state"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

/// What `member`'s log says after its first `from` bytes.
fn log_since(r: &Rig, member: &str, from: usize) -> String {
    let text = std::fs::read_to_string(r.data_dir.join(format!("{member}.log"))).unwrap_or_default();
    text.get(from..).unwrap_or_default().to_string()
}

fn log_len(r: &Rig, member: &str) -> usize {
    std::fs::metadata(r.data_dir.join(format!("{member}.log"))).map(|m| m.len() as usize).unwrap_or(0)
}

/// The pids of `host`'s instance QEMUs.
fn vms(r: &Rig, host: &str) -> Vec<u32> {
    let out = r.exec(host, &["ps", "-e", "-o", "pid=,args="]);
    assert!(out.status.success(), "ps on {host}: {}", String::from_utf8_lossy(&out.stderr));
    let mut v: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("qemu-system") && l.contains(VM))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    v.sort();
    v
}

/// Runs the web server on instances `ids` (`*`: all) through the Custom Script extension;
/// `round` makes each call a new model, so the extension runs again.
fn serve(r: &Rig, ids: &str, round: u32) {
    r.custom_script(&format!("{WEB} # round {round}"), &[ids], false);
}

/// `member`'s boot id, as the rig reports it.
fn boot_id(r: &Rig, member: &str) -> String {
    let status = r.status();
    let m = status["members"].as_array().unwrap().iter().find(|m| m["name"] == member).cloned();
    m.and_then(|m| m["bootId"].as_str().map(String::from)).unwrap_or_else(|| panic!("{member}'s boot id: {status}"))
}

/// The one instance `host` holds, running (id, private IP).
fn the_instance_on(r: &Rig, host: &str) -> (String, String) {
    let on: Vec<Value> = instances(r).into_iter().filter(|i| i["host"] == host).collect();
    assert_eq!(on.len(), 1, "one instance on {host}: {on:?}");
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (s(&on[0]["instanceId"]), s(&on[0]["privateIpAddress"]))
}

#[test]
fn a_rebooted_host_starts_its_vms_only_once_the_server_lists_them_and_never_a_moved_one() {
    let tg = herd_test_support::require_testguest("1.0.0");
    let r = Rig::up(
        &Rig::unique("rb"),
        &["--hosts", "2", "--zones", "1,1", "--driver", "qemu", "--server-arg=--accel", "--server-arg=tcg"],
        &config(),
    );
    r.testguest_web(&tg, "2", &["1"], &[]);
    wait_observing("2 VMs running, one on h1 and one on h2", Duration::from_secs(420), || {
        let list = instances(&r);
        let hosts: BTreeSet<String> = list
            .iter()
            .filter(|i| i["powerState"] == "running" && i["provisioningState"] == "Succeeded")
            .filter_map(|i| i["host"].as_str().map(String::from))
            .collect();
        (hosts == BTreeSet::from(["h1".to_string(), "h2".to_string()]))
            .then_some(())
            .ok_or_else(|| common::instances_summary(&Value::Array(list)))
    });
    serve(&r, "*", 1);
    wait_observing("both VMs in rotation", Duration::from_secs(300), || {
        let now = r.in_rotation();
        (now.len() == 2).then_some(()).ok_or_else(|| format!("{now:?}"))
    });
    let (id, ip) = the_instance_on(&r, "h1");
    let qemu_before = vms(&r, "h1");
    assert_eq!(qemu_before.len(), 1, "one QEMU on h1");

    // 1. The server frozen, h1 reboots: its VM stays down while its agent cannot get an
    //    acknowledgement (sampled until the agent has given up on a dial at least once: its
    //    handshake with the frozen server times out after 10 s).
    let boot_before = boot_id(&r, "h1");
    r.signal("server", "stop");
    let from = log_len(&r, "h1");
    let boot = r.reboot("h1");
    assert_ne!(boot, boot_before, "a new boot id");
    let mut samples = 0;
    wait_observing("h1's agent to fail a dial to the frozen server", Duration::from_secs(60), || {
        let qemu = vms(&r, "h1");
        assert!(qemu.is_empty(), "a VM started on h1 before any acknowledgement: {qemu:?}");
        samples += 1;
        let log = log_since(&r, "h1", from);
        log.contains("link lost").then_some(()).ok_or_else(|| format!("{samples} samples; h1's log: {log}"))
    });
    let log = log_since(&r, "h1", from);
    assert!(
        log.contains("1 VM(s) down since this host rebooted"),
        "h1's agent saw its VM down after the reboot: {log}"
    );
    assert!(samples >= 3, "sampled h1's processes {samples} times");
    r.signal("server", "cont");

    // Acknowledged: the VM comes back on h1, same id and IP, in rotation.
    wait_observing(&format!("instance {id} running on h1 again"), Duration::from_secs(420), || {
        let i = instance(&r, &id);
        let ok = i["host"] == "h1" && i["powerState"] == "running" && i["provisioningState"] == "Succeeded";
        let qemu = vms(&r, "h1");
        (ok && qemu.len() == 1).then_some(()).ok_or_else(|| format!("{i}; QEMU on h1: {qemu:?}"))
    });
    let i = instance(&r, &id);
    assert_eq!(i["privateIpAddress"], ip.as_str(), "the same private IP: {i}");
    assert!(i["hostFailure"]["recreated"].is_null(), "not re-created elsewhere: {i}");
    let started_under =
        std::fs::read_to_string(r.member_dir("h1").join("vms/rg/web").join(&id).join("boot-id")).unwrap_or_default();
    assert_eq!(started_under.trim(), boot, "started again under h1's new boot");
    let log = log_since(&r, "h1", from);
    assert!(log.contains("listed by the server: starting them again"), "h1's agent started it on the ack: {log}");
    // Its guest booted afresh: its web server is started again, and it serves behind the load
    // balancer through h1's new network (bridge, TAP, VXLAN, lease).
    serve(&r, &id, 2);
    wait_observing("both VMs back in rotation", Duration::from_secs(300), || {
        let now = r.in_rotation();
        (now.len() == 2 && now.contains(&ip)).then_some(()).ok_or_else(|| format!("{now:?}"))
    });
    // And it answers through the load balancer's frontend, from the server's machine.
    let frontend = r.json(&["network", "public-ip", "show", "-g", "rg", "-n", "web-lb-ip"])["ipAddress"]
        .as_str()
        .unwrap()
        .to_string();
    let name = instance(&r, &id)["computerName"].as_str().unwrap_or_default().to_string();
    let mut answers = BTreeSet::new();
    wait_observing(&format!("{name} (on h1) to answer through the frontend"), Duration::from_secs(120), || {
        let out = r.exec("server", &["curl", "-sf", "--max-time", "3", &format!("http://{frontend}:18080/")]);
        answers.insert(String::from_utf8_lossy(&out.stdout).trim().to_string());
        answers.contains(&name).then_some(()).ok_or_else(|| format!("answers so far: {answers:?}"))
    });

    // 2. h1 cut off until its VM is re-created on h2; then rebooted while still cut, and
    //    linked again: the moved VM never starts on h1, and its copy there is destroyed.
    let (id, ip) = the_instance_on(&r, "h1");
    r.link("h1", false);
    r.wait_host("h1", "NotReady", Duration::from_secs(60));
    wait_observing(&format!("instance {id} re-created on h2"), Duration::from_secs(480), || {
        let i = instance(&r, &id);
        let ok = i["host"] == "h2" && i["powerState"] == "running" && i["provisioningState"] == "Succeeded";
        ok.then_some(()).ok_or_else(|| i.to_string())
    });
    assert_eq!(instance(&r, &id)["privateIpAddress"], ip.as_str());
    let from = log_len(&r, "h1");
    r.reboot("h1");
    assert_ne!(host_state(&r, "h1"), "Ready", "h1's cable stays cut across its reboot");
    r.link("h1", true);
    let mut states = Vec::new();
    wait_observing("h1 to be Ready again", Duration::from_secs(180), || {
        let qemu = vms(&r, "h1");
        assert!(qemu.is_empty(), "a VM started on h1 during its return ({states:?}): {qemu:?}");
        let s = host_state(&r, "h1");
        if states.last() != Some(&s) {
            states.push(s.clone());
        }
        (s == "Ready").then_some(()).ok_or(s)
    });
    let log = log_since(&r, "h1", from);
    assert!(log.contains("1 VM(s) down since this host rebooted"), "h1's agent saw its VM down: {log}");
    assert!(log.contains("not listed by the server (moved away): left down"), "h1's agent left it down: {log}");
    assert!(vms(&r, "h1").is_empty(), "no VM on h1");
    let i = instance(&r, &id);
    assert_eq!(i["host"], "h2", "{i}");
    assert!(i["hostFailure"]["staleCopies"].is_null(), "no copy left on record: {i}");
    let activity = r.json(&["monitor", "activity-log", "list", "-g", "rg"]).to_string();
    assert!(activity.contains("StaleCopyDestroyed"), "{activity}");
    // The copy's directory is gone from h1's disk.
    let vm_dirs = r.member_dir("h1").join("vms");
    let left: Vec<String> = walk_ids(&vm_dirs);
    assert!(!left.contains(&id), "instance {id}'s copy left on h1: {left:?}");
    assert_eq!(vms(&r, "h2").len(), 2, "h2 runs both VMs");
    r.down();
}

/// The instance ids of the VM directories under `root` (`<group>/<set>/<id>`).
fn walk_ids(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let dirs = |p: &std::path::Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(p).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect()
    };
    for g in dirs(root) {
        for s in dirs(&g) {
            for i in dirs(&s) {
                out.extend(i.file_name().and_then(|n| n.to_str()).map(String::from));
            }
        }
    }
    out
}
