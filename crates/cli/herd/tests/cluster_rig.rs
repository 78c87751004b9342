//! The many-hosts issue on the namespace rig (`herd dev cluster`): a server and three agent
//! hosts, each in its own network, mount, PID and UTS namespaces on a fabric bridge. A set
//! spreads over the hosts' zones; a killed agent's instances keep running and its restarted
//! agent adopts them; a server killed in the middle of a scale-out across hosts converges
//! exactly; two clusters run side by side; `down` leaves nothing.

mod common;

use common::rig::{assert_gone, Rig};
use common::{wait_for, wait_observing, HERD};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Instances of rg/web per host, from the server's view.
fn per_host(r: &Rig) -> BTreeMap<String, usize> {
    let list = r.json(&["vmss", "list-instances", "-g", "rg", "-n", "web"]);
    let mut m = BTreeMap::new();
    for i in list.as_array().unwrap() {
        *m.entry(i["host"].as_str().unwrap_or("?").to_string()).or_default() += 1;
    }
    m
}

fn running(r: &Rig) -> (usize, Value) {
    let list = r.json(&["vmss", "list-instances", "-g", "rg", "-n", "web"]);
    let n = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["powerState"] == "running" && i["provisioningState"] == "Succeeded")
        .count();
    (n, list)
}

/// Instance directories of rg/web in a host's agent data dir.
fn instance_dirs(r: &Rig, host: &str) -> usize {
    std::fs::read_dir(r.member_dir(host).join("instances/rg/web"))
        .map(|d| d.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().parse::<u64>().is_ok()).count())
        .unwrap_or(0)
}

const APP: &str = "http.server";

/// Resource group `rg` and the sample process image as `Herd:Sample:1:1.0.0`.
fn with_sample_image(r: &Rig) {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../images/sample-process");
    r.json(&["group", "create", "-n", "rg", "-l", "local"]);
    r.json(&["image", "import", "--urn", "Herd:Sample:1:1.0.0", "--dir", sample.to_str().unwrap()]);
}

/// The instance metadata document (`/metadata/instance`) as the process `pid` of `host` (a pid
/// in that host's namespace) gets it from its own endpoint (`HERD_METADATA_URL`).
fn metadata_of(r: &Rig, host: &str, pid: u32) -> Value {
    let env = r.exec(host, &["cat", &format!("/proc/{pid}/environ")]);
    let env = String::from_utf8_lossy(&env.stdout).into_owned();
    let url = env
        .split('\0')
        .find_map(|v| v.strip_prefix("HERD_METADATA_URL="))
        .unwrap_or_else(|| panic!("no HERD_METADATA_URL in {host}'s process {pid}"))
        .to_string();
    let py = format!(
        "import urllib.request as u; r=u.Request('{url}/instance?api-version=2021-02-01', headers={{'Metadata':'true'}}); print(u.urlopen(r, timeout=20).read().decode())"
    );
    let out = r.exec(host, &["python3", "-c", &py]);
    assert!(out.status.success(), "metadata from {host}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_set_spreads_over_three_hosts_and_survives_an_agent_and_a_server_kill() {
    // A grace longer than the freeze below, so the frozen host stays Ready (placement keeps
    // its zone) and the scale-out is planned across all three hosts.
    let r = Rig::up(&Rig::unique("sp"), &["--hosts", "3", "--zones", "1,2,3"], "[agents]\nhost_grace_secs = 60\n");
    // Each host is its own machine: its hostname, its own process table (PID 1 is its init),
    // its own /run/herd, its own address on the fabric.
    for (i, h) in ["h1", "h2", "h3"].iter().enumerate() {
        let out = r.exec(h, &["hostname"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), *h);
        assert_eq!(r.pids(h, "host-init"), vec![1], "{h}'s PID 1 is its init");
        assert_eq!(r.pids(h, "herd agent").len(), 1, "{h} sees exactly its own agent");
        let mounts = String::from_utf8_lossy(&r.exec(h, &["cat", "/proc/self/mounts"]).stdout).into_owned();
        assert!(mounts.lines().any(|l| l.starts_with("tmpfs /run/herd ")), "{h}: {mounts}");
        assert!(mounts.lines().any(|l| l.starts_with("tmpfs /run/netns ")), "{h}: {mounts}");
        let addrs = String::from_utf8_lossy(&r.exec(h, &["ip", "-br", "-4", "addr"]).stdout).into_owned();
        assert!(addrs.contains(&format!("10.250.0.{}/24", 10 + i)), "{h}: {addrs}");
    }
    let status = r.status();
    assert_eq!(status["members"].as_array().unwrap().len(), 4);
    assert!(status["members"].as_array().unwrap().iter().all(|m| m["herd"] == "running"), "{status}");

    with_sample_image(&r);
    r.json(&[
        "vmss",
        "create",
        "-g",
        "rg",
        "-n",
        "web",
        "--image",
        "Herd:Sample:1:1.0.0",
        "--instance-count",
        "6",
        "--vm-sku",
        "Standard_B1s",
        "--zones",
        "1",
        "2",
        "3",
        // Without extras, which instance lands where is fixed by the zones alone (an extra on a
        // fast host may otherwise take the place of one on the frozen host below).
        "--disable-overprovision",
        "--no-wait",
    ]);
    let list = wait_observing("6 instances running", Duration::from_secs(180), || match running(&r) {
        (6, list) if list.as_array().unwrap().len() == 6 => Ok(list),
        (_, list) => Err(common::instances_summary(&list)),
    });
    // Spread: 2 per host, each instance on the host of its zone, running there (and nowhere
    // else: the server's own machine takes none).
    for i in list.as_array().unwrap() {
        let zone = i["zones"][0].as_str().unwrap();
        assert_eq!(i["host"], format!("h{zone}"), "{i}");
    }
    assert_eq!(per_host(&r), BTreeMap::from([("h1".into(), 2), ("h2".into(), 2), ("h3".into(), 2)]));
    for h in ["h1", "h2", "h3"] {
        wait_for(&format!("{h} to run exactly 2 instances"), Duration::from_secs(60), || {
            (instance_dirs(&r, h) == 2 && r.pids(h, APP).len() == 2).then_some(())
        });
    }
    assert!(r.pids("server", APP).is_empty(), "the server's machine runs no instance");

    // kill -9 h2's agent: its instances keep running; the host goes NotReady; the restarted
    // agent adopts them (the very same processes), and the host is Ready again.
    let before = r.pids("h2", APP);
    r.signal("h2", "kill");
    assert!(r.pids("h2", "herd agent").is_empty());
    assert_eq!(r.pids("h2", APP), before, "the instances outlive their agent");
    // NotReady once host_grace (60 s here) has passed since its last heartbeat.
    r.wait_host("h2", "NotReady", Duration::from_secs(150));
    assert_eq!(r.pids("h2", APP), before, "a NotReady host's instances are not touched");
    r.start("h2");
    r.wait_host("h2", "Ready", Duration::from_secs(60));
    wait_observing("6 instances running after h2's agent came back", Duration::from_secs(120), || match running(&r) {
        (6, _) => Ok(()),
        (_, list) => Err(common::instances_summary(&list)),
    });
    assert_eq!(r.pids("h2", APP), before, "adopted, not restarted");
    assert_eq!(instance_dirs(&r, "h2"), 2);
    // Its instances' metadata endpoint answers on their own host (relayed by the restarted
    // agent to the server), with each instance's own identity.
    let list = r.json(&["vmss", "list-instances", "-g", "rg", "-n", "web"]);
    let mut on_h2: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["host"] == "h2")
        .map(|i| format!("web_{}", i["instanceId"].as_str().unwrap_or_default()))
        .collect();
    let mut answered: Vec<String> = before
        .iter()
        .map(|pid| {
            let doc = metadata_of(&r, "h2", *pid);
            assert_eq!(doc["compute"]["zone"], "2", "{doc}");
            doc["compute"]["name"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    on_h2.sort();
    answered.sort();
    assert_eq!(answered, on_h2, "each instance gets its own identity");

    // kill -9 the server in the middle of a scale-out across hosts: h3's agent is frozen
    // (SIGSTOP), so the scale-out is cut off with h1 and h2 done and h3's share in flight.
    // Restarted, the server converges exactly: 30 instances, 10 per host, no duplicate and no
    // orphan on any host.
    r.signal("h3", "stop");
    r.json(&["vmss", "scale", "-g", "rg", "-n", "web", "--new-capacity", "30", "--no-wait"]);
    for h in ["h1", "h2"] {
        wait_observing(&format!("{h}'s share of the scale-out running"), Duration::from_secs(120), || {
            let n = r.pids(h, APP).len();
            if n == 10 {
                Ok(())
            } else {
                Err(format!("{n} instance processes"))
            }
        });
    }
    let (at_kill, _) = running(&r);
    assert!(at_kill < 30, "the scale-out is cut off at h3 ({at_kill} of 30 running)");
    assert_eq!(r.pids("h3", APP).len(), 2, "the frozen host started nothing");
    r.signal("server", "kill");
    r.signal("h3", "cont");
    r.start("server");
    wait_observing("30 instances running after the server's restart", Duration::from_secs(300), || match running(&r) {
        (30, list) if list.as_array().unwrap().len() == 30 => Ok(()),
        (_, list) => Err(common::instances_summary(&list)),
    });
    assert_eq!(per_host(&r), BTreeMap::from([("h1".into(), 10), ("h2".into(), 10), ("h3".into(), 10)]));
    for i in r.json(&["vmss", "list-instances", "-g", "rg", "-n", "web"]).as_array().unwrap() {
        assert_eq!(i["host"], format!("h{}", i["zones"][0].as_str().unwrap()), "each instance on its zone's host: {i}");
    }
    for h in ["h1", "h2", "h3"] {
        wait_observing(&format!("{h} to hold exactly 10 instances"), Duration::from_secs(120), || {
            let (dirs, procs) = (instance_dirs(&r, h), r.pids(h, APP).len());
            if dirs == 10 && procs == 10 {
                Ok(())
            } else {
                Err(format!("{dirs} instance dirs, {procs} processes"))
            }
        });
    }
    let data = r.data_dir.clone();
    let name = r.name.clone();
    r.down();
    assert_gone(&name, &data);
}

#[test]
fn two_clusters_run_side_by_side_and_the_rig_refuses_bad_input() {
    let a = Rig::up(&Rig::unique("ca"), &["--hosts", "1", "--zones", "1"], "");
    // The same fabric subnet: each cluster's fabric is its own namespace.
    let b = Rig::up(&Rig::unique("cb"), &["--hosts", "2", "--zones", "1", "--racks", "rack-a,rack-b"], "");
    let id = |r: &Rig| r.json(&["server", "status"])["clusterId"].as_str().unwrap().to_string();
    assert_ne!(id(&a), id(&b));
    let hosts = b.json(&["host", "list"]);
    let fds: Vec<&str> = hosts.as_array().unwrap().iter().map(|h| h["faultDomain"].as_str().unwrap()).collect();
    assert_eq!(fds, vec!["rack-a", "rack-b"]);
    assert_eq!(a.json(&["host", "list"]).as_array().unwrap().len(), 1);

    let dev = |args: &[&str]| std::process::Command::new(HERD).args(["dev", "cluster"]).args(args).output().unwrap();
    let refused = |args: &[&str], want: &str| {
        let before =
            String::from_utf8_lossy(&std::process::Command::new("ip").args(["netns", "list"]).output().unwrap().stdout)
                .into_owned();
        let out = dev(args);
        assert!(!out.status.success(), "{args:?} should fail");
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains(want), "{args:?}: {e}");
        let after =
            String::from_utf8_lossy(&std::process::Command::new("ip").args(["netns", "list"]).output().unwrap().stdout)
                .into_owned();
        assert_eq!(before, after, "{args:?} changed the namespaces");
    };
    refused(&["up", "--name", &a.name], "is already up");
    refused(&["up", "--name", "x1", "--hosts", "0"], "--hosts 0: allowed 1 to 60");
    refused(&["up", "--name", "Bad_Name"], "--name 'Bad_Name'");
    refused(&["up", "--name", "x1", "--subnet", "8.8.8.0/24"], "private network");
    refused(&["down", "--name", "nosuch1"], "no cluster 'nosuch1' is up");
    refused(&["exec", "--name", &a.name, "--on", "h7", "--", "true"], "no member 'h7'");
    a.down();
    // b is unaffected by a's removal.
    b.wait_host("h2", "Ready", Duration::from_secs(30));
    b.down();
}

#[test]
fn a_vm_on_a_joined_host_outlives_its_agent_and_the_restarted_agent_adopts_it() {
    let tg = herd_test_support::require_testguest("1.0.0");
    let r = Rig::up(
        &Rig::unique("vm"),
        &["--hosts", "1", "--zones", "1", "--driver", "qemu", "--server-arg=--accel", "--server-arg=tcg"],
        "[qemu]\nboot_timeout_secs = 240\n",
    );
    r.json(&["group", "create", "-n", "rg", "-l", "local"]);
    let import = common::testguest_import_args(&tg, "Herd:TestGuest:1:1.0.0");
    r.json(&import.iter().map(String::as_str).collect::<Vec<_>>());
    r.json(&[
        "vmss",
        "create",
        "-g",
        "rg",
        "-n",
        "web",
        "--image",
        "Herd:TestGuest:1:1.0.0",
        "--vm-sku",
        "Standard_B1ls",
        "--instance-count",
        "1",
        "--zones",
        "1",
        "--disable-overprovision",
        "--no-wait",
    ]);
    wait_observing("the VM running on h1", Duration::from_secs(300), || match running(&r) {
        (1, list) if list[0]["host"] == "h1" => Ok(()),
        (_, list) => Err(common::instances_summary(&list)),
    });
    // The VM runs on h1, under h1's agent's data dir, and nowhere else.
    let qemu = r.pids("h1", "qemu-system");
    assert_eq!(qemu.len(), 1, "one QEMU on h1");
    assert!(r.pids("server", "qemu-system").is_empty(), "no VM on the server's machine");
    let argv = String::from_utf8_lossy(&r.exec("h1", &["cat", &format!("/proc/{}/cmdline", qemu[0])]).stdout)
        .replace('\0', " ");
    assert!(argv.contains(&r.member_dir("h1").display().to_string()), "{argv}");

    // kill -9 the agent: the VM keeps running; the restarted agent adopts it, the server sees
    // it running, and it is the very same QEMU.
    r.signal("h1", "kill");
    assert_eq!(r.pids("h1", "qemu-system"), qemu, "the VM outlives its agent");
    r.start("h1");
    r.wait_host("h1", "Ready", Duration::from_secs(60));
    wait_observing("the VM running after its agent came back", Duration::from_secs(120), || match running(&r) {
        (1, _) => Ok(()),
        (_, list) => Err(common::instances_summary(&list)),
    });
    // Passes go on (a scale-out through the restarted agent takes several, each listing h1):
    // the first VM is still the very same QEMU.
    r.json(&["vmss", "scale", "-g", "rg", "-n", "web", "--new-capacity", "2", "--no-wait"]);
    wait_observing("both VMs running on h1", Duration::from_secs(300), || match running(&r) {
        (2, list) if list.as_array().unwrap().iter().all(|i| i["host"] == "h1") => Ok(()),
        (_, list) => Err(common::instances_summary(&list)),
    });
    let now = r.pids("h1", "qemu-system");
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(now.contains(&qemu[0]), "adopted, not restarted: {qemu:?} then {now:?}");
    let name = r.name.clone();
    let data = r.data_dir.clone();
    r.down();
    assert_gone(&name, &data);
    let left = std::process::Command::new("pgrep").args(["-f", &data.display().to_string()]).output().unwrap();
    assert!(left.stdout.is_empty(), "no process of the rig is left: {}", String::from_utf8_lossy(&left.stdout));
}

#[test]
fn fault_domains_alternate_over_two_racks_of_a_zone_and_a_count_beyond_them_is_refused() {
    let r = Rig::up(&Rig::unique("fd"), &["--hosts", "2", "--zones", "1", "--racks", "rack-a,rack-b"], "");
    with_sample_image(&r);
    let create = |name: &str, count: &str, domains: &str| {
        vec![
            "vmss",
            "create",
            "-g",
            "rg",
            "-n",
            name,
            "--image",
            "Herd:Sample:1:1.0.0",
            "--vm-sku",
            "Standard_B1s",
            "--instance-count",
            count,
            "--zones",
            "1",
            "--platform-fault-domain-count",
            domains,
            "--disable-overprovision",
            "--no-wait",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<String>>()
    };
    // More domains than the zone has: refused up front, naming the zone's domains; no set.
    let args = create("wide", "2", "3");
    let e = r.err(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(e.contains("platformFaultDomainCount") && e.contains("rack-a") && e.contains("rack-b"), "{e}");
    let e = r.err(&["vmss", "show", "-g", "rg", "-n", "wide"]).to_lowercase();
    assert!(e.contains("does not exist"), "{e}");

    let args = create("web", "4", "2");
    r.json(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let list = wait_observing("4 instances running", Duration::from_secs(180), || match running(&r) {
        (4, list) => Ok(list),
        (_, list) => Err(common::instances_summary(&list)),
    });
    let mut seen: Vec<(String, String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["instanceId"].as_str().unwrap_or_default().to_string(),
                i["platformFaultDomain"].to_string(),
                i["host"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    seen.sort();
    // Alternating: two per domain, each domain one rack (one host), never both on one host.
    let per_host = |h: &str| seen.iter().filter(|(_, _, host)| host == h).count();
    assert_eq!((per_host("h1"), per_host("h2")), (2, 2), "{seen:?}");
    for (_, fd, host) in &seen {
        let other = seen.iter().find(|(_, f, h)| f == fd && h != host);
        assert!(other.is_none(), "one domain is one rack: {seen:?}");
    }
    r.down();
}
