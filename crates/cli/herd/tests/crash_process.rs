//! Crash safety on real processes: `kill -9` of `herd server` in the middle of a 0 → 200
//! scale-out, then a restart, converges to exactly 200 running instances with no duplicate ids
//! and no orphan processes.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::time::Duration;

#[test]
fn kill_9_mid_scale_out_then_restart_converges_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s =
        Server::start("process", &data, Some("[provisioning]\nmax_in_flight_percent = 10\nmin_in_flight = 10\n"));
    let img = image_dir(&dir.path().join("img"), "exec sleep 3600");
    s.group_with_image("rg", "Herd:Sleeper:1:1.0.0", &img);
    s.ok(&words(
        "vmss create -g rg -n web --image Herd:Sleeper:1:1.0.0 --instance-count 0 --vm-sku Standard_B1s \
         --single-placement-group false --quiet",
    ));
    s.ok(&["vmss", "scale", "-g", "rg", "-n", "web", "--new-capacity", "200", "--no-wait"]);
    // Kill on observed state, not on a timer.
    let seen = wait_for("20 or more instances", Duration::from_secs(120), || {
        let n = instance_group_leaders(&data).len();
        (n >= 20).then_some(n)
    });
    // The process driver's spawner (see `herd_driver_process::spawner`) dies with its server.
    let server = s.pid().unwrap();
    let spawner = spawners_of(server);
    if nix::unistd::geteuid().is_root() {
        assert_eq!(spawner.len(), 1, "one spawner, a child of the server");
    }
    s.kill9();
    wait_for("the spawner to die with its server", Duration::from_secs(10), || {
        // Gone, or a zombie left for whoever inherited it.
        let dead = |p: &u32| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()).is_none_or(|st| st == "Z")
        };
        spawner.iter().all(dead).then_some(())
    });
    let after_kill = instance_group_leaders(&data).len();
    assert!(
        (20..200).contains(&seen) && after_kill < 200,
        "the crash happened mid-way: {seen} seen, {after_kill} after the kill"
    );

    s.restart();
    let waited = s.herd(&["vmss", "wait", "-g", "rg", "-n", "web", "--created", "--quiet", "--timeout", "300"]);
    if !waited.status.success() {
        let all = s.json(&["vmss", "list-instances", "-g", "rg", "-n", "web"]);
        let stuck: Vec<_> = all.as_array().unwrap().iter().filter(|i| i["state"] != "Running").cloned().collect();
        panic!(
            "the set did not converge: {}\nnot running: {stuck:?}\nserver log (tail): {}",
            String::from_utf8_lossy(&waited.stderr),
            s.log_text().lines().rev().take(40).collect::<Vec<_>>().join("\n")
        );
    }
    let list = s.json(&["vmss", "list-instances", "-g", "rg", "-n", "web"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 200, "exactly 200 instances");
    let ids: BTreeSet<&str> = list.iter().map(|i| i["instanceId"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 200, "no duplicate ids");
    assert!(list.iter().all(|i| i["powerState"] == "running"));
    let procs = wait_for("exactly 200 instance processes", Duration::from_secs(60), || {
        let p = instance_group_leaders(&data);
        (p.len() == 200).then_some(p)
    });
    let keys: BTreeSet<String> = procs.iter().map(|(_, k)| k.clone()).collect();
    assert_eq!(keys.len(), 200, "one process tree per instance");
    let expected: BTreeSet<String> = ids.iter().map(|id| format!("rg/web/{id}")).collect();
    assert_eq!(keys, expected, "every process belongs to a recorded instance: no orphans");

    s.ok(&["vmss", "delete", "-g", "rg", "-n", "web", "--quiet", "--timeout", "300"]);
    wait_for("no instance processes left", Duration::from_secs(60), || {
        instance_group_leaders(&data).is_empty().then_some(())
    });
}

/// `kill -9` while the server removes instance directories (a scale-in to 0), then a restart:
/// every deletion completes. A directory caught half removed (its record gone, some of its files
/// left) must not read as another cluster's, which every later call refuses to touch: the
/// instance would stay Deleting for good. Each instance's disk holds many files, so a removal
/// takes long enough to be caught in the middle.
#[test]
fn kill_9_mid_deletion_then_restart_deletes_every_instance() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Server::start("process", &data, None);
    let img = image_dir(&dir.path().join("img"), "exec sleep 3600");
    let blob = img.join("blob");
    std::fs::create_dir(&blob).unwrap();
    for i in 0..FILES_PER_DISK {
        std::fs::write(blob.join(format!("f{i}")), "x").unwrap();
    }
    s.group_with_image("rg", "Herd:Sleeper:1:1.0.0", &img);
    s.ok(&words(
        "vmss create -g rg -n web --image Herd:Sleeper:1:1.0.0 --instance-count 8 --vm-sku Standard_B1s \
         --disable-overprovision --quiet",
    ));
    let set_dir = data.join("instances/rg/web");
    let full = count_files(&set_dir);
    assert!(full > 8 * FILES_PER_DISK, "every disk holds the image's files: {full}");
    s.ok(&["vmss", "scale", "-g", "rg", "-n", "web", "--new-capacity", "0", "--no-wait"]);
    // Kill on observed state: some files of the instances are gone, not all of them.
    let left = wait_for("a removal in progress", Duration::from_secs(60), || {
        let n = count_files(&set_dir);
        (n > 0 && n < full).then_some(n)
    });
    s.kill9();
    eprintln!("killed with {left} of {full} files left");

    s.restart();
    let waited = s.herd(&["vmss", "wait", "-g", "rg", "-n", "web", "--created", "--quiet", "--timeout", "60"]);
    if !waited.status.success() {
        let all = s.json(&["vmss", "list-instances", "-g", "rg", "-n", "web"]);
        panic!(
            "the deletions did not complete: {}\ninstances: {all}\nserver log (tail): {}",
            String::from_utf8_lossy(&waited.stderr),
            s.log_text().lines().rev().take(40).collect::<Vec<_>>().join("\n")
        );
    }
    let list = s.json(&["vmss", "list-instances", "-g", "rg", "-n", "web"]);
    assert_eq!(list.as_array().unwrap().len(), 0, "every instance deleted: {list}");
    wait_for("no instance processes left", Duration::from_secs(30), || {
        instance_group_leaders(&data).is_empty().then_some(())
    });
    assert_eq!(count_files(&set_dir), 0, "nothing of the instances' disks is left");
}

/// Files in each instance's disk (beside `init`) in [`kill_9_mid_deletion_then_restart_deletes_every_instance`].
const FILES_PER_DISK: usize = 3000;

/// Regular files under `dir` (0 if it is gone), counted as they are while they are removed.
fn count_files(dir: &std::path::Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            Ok(_) => 1,
            Err(_) => 0,
        })
        .sum()
}

/// Children of `server` running as a spawner (`--spawner` in their command line).
fn spawners_of(server: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ppid == Some(server) && cmdline.split(|b| *b == 0).any(|a| a == b"--spawner")
        })
        .collect()
}

/// What an instance sees through the server: its id, computer name, address and, as root, its
/// own hostname.
#[test]
fn process_instances_see_their_identity() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start("process", &data, None);
    let img = image_dir(
        &dir.path().join("img"),
        "echo \"$HERD_INSTANCE_ID $HERD_COMPUTER_NAME $HERD_ADDRESS $(hostname)\" > identity.tmp && mv identity.tmp identity\nexec sleep 3600",
    );
    s.group_with_image("rg", "Herd:Who:1:1.0.0", &img);
    s.ok(&words(
        "vmss create -g rg -n whoami --image Herd:Who:1:latest --instance-count 2 --vm-sku Standard_B1s --quiet",
    ));
    let list = s.json(&["vmss", "list-instances", "-g", "rg", "-n", "whoami"]);
    for i in list.as_array().unwrap() {
        let id = i["instanceId"].as_str().unwrap();
        let file = data.join("instances/rg/whoami").join(id).join("work/identity");
        let text = wait_for("the instance to write its identity", Duration::from_secs(20), || {
            std::fs::read_to_string(&file).ok()
        });
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(fields[0], id);
        assert_eq!(fields[1], i["computerName"].as_str().unwrap());
        assert_eq!(fields[2], i["reachAddress"].as_str().unwrap());
        let root = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
        if root {
            assert_eq!(fields[3], i["computerName"].as_str().unwrap(), "as root, hostname is the computer name");
        }
    }
    s.ok(&["vmss", "delete", "-g", "rg", "-n", "whoami", "--quiet"]);
    wait_for("no instance processes left", Duration::from_secs(30), || {
        instance_group_leaders(&data).is_empty().then_some(())
    });
}
