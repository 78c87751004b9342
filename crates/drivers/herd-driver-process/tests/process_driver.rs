//! The process driver against real processes: each test builds an image directory with an
//! `init` shell script, runs instances from it under a unique tag and root, and kills every
//! process carrying its tag when it ends (even on failure).

mod common;

use herd_driver::{
    Driver, DriverError, Fence, InstanceSpec, ObservedPower, PowerTarget, ScriptRun, SCRIPT_OUTPUT_TAIL,
};
use herd_driver_process::ProcessDriver;
use herd_model::{sku::SkuSize, InstanceKey};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(15);

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    image: PathBuf,
    tag: String,
    driver: ProcessDriver,
}

impl Fixture {
    /// A driver under a fresh root, with an image whose `init` runs `script` (sh).
    fn new(script: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("image");
        std::fs::create_dir(&image).unwrap();
        write_init(&image, script);
        std::fs::write(image.join("from-image.txt"), "image file\n").unwrap();
        let root = tmp.path().join("instances");
        let tag = format!("test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        let driver = ProcessDriver::new(root.clone(), tag.clone()).unwrap().with_stop_grace(Duration::from_secs(2));
        Self { _tmp: tmp, root, image, tag, driver }
    }

    fn spec(&self, id: u64) -> InstanceSpec {
        let size = SkuSize { vcpus: 2, memory_mib: 1024 };
        InstanceSpec {
            model_generation: 7,
            ..common::dir_spec("web", id, &self.image, size, format!("127.128.0.{id}"))
        }
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.driver.instance_dir(&key(id))
    }

    fn work_file(&self, id: u64, name: &str) -> PathBuf {
        self.dir(id).join("work").join(name)
    }

    /// The recorded group leader of an instance.
    fn pid(&self, id: u64) -> u32 {
        common::recorded_pid(&self.dir(id)).unwrap()
    }

    /// `work/.herd/extensions/<name>/` of an instance.
    fn ext_dir(&self, id: u64, name: &str) -> PathBuf {
        self.dir(id).join("work/.herd/extensions").join(name)
    }

    async fn power(&self, id: u64) -> Option<ObservedPower> {
        self.driver.list().await.unwrap().into_iter().find(|o| o.key == key(id)).map(|o| o.power)
    }

    /// Destroys everything the driver lists and checks that nothing is left.
    async fn destroy_all(&self) {
        for o in self.driver.list().await.unwrap() {
            self.driver.destroy(&o.key, Fence::FIRST).await.unwrap();
        }
        assert!(self.driver.list().await.unwrap().is_empty());
        assert!(tagged_pids(&self.tag).is_empty(), "processes left behind");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Safety net for failed tests: no process of ours outlives the test.
        for pid in tagged_pids(&self.tag) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn key(id: u64) -> InstanceKey {
    common::key("web", id)
}

fn write_init(dir: &Path, script: &str) {
    let init = dir.join("init");
    std::fs::write(&init, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Live (non-zombie) processes whose environment carries `HERD_DRIVER_TAG=<tag>`.
fn tagged_pids(tag: &str) -> Vec<u32> {
    let needle = format!("HERD_DRIVER_TAG={tag}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| pid_alive(*pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|b| b.split(|c| *c == 0).any(|e| e == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// True if `pid` exists and is not a zombie.
fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|st| st != "Z"),
        Err(_) => false,
    }
}

/// Polls `cond` every 20 ms until it holds; fails the test after `DEADLINE` (times
/// `HERD_TEST_TIME_SCALE`).
async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let limit = herd_test_support::scaled(DEADLINE);
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The process group of a live process (field 5 of its stat).
fn pgrp(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit_once(')').unwrap().1.split_whitespace().nth(2).unwrap().parse().unwrap()
}

fn script(name: &str, files: &[(&str, &str)], command: &str, timeout: Duration) -> ScriptRun {
    ScriptRun {
        name: name.into(),
        files: files.iter().map(|(n, c)| (n.to_string(), c.as_bytes().to_vec())).collect(),
        downloads: Default::default(),
        command: command.into(),
        timeout,
        identity: format!("test-{name}"),
    }
}

async fn wait_file(path: &Path) -> String {
    wait_for(&format!("{}", path.display()), || async { path.exists() }).await;
    std::fs::read_to_string(path).unwrap()
}

#[tokio::test]
async fn ensure_starts_init_with_the_documented_environment() {
    let fx = Fixture::new(
        "env > env.tmp && mv env.tmp env.out\nhostname > hostname.tmp && mv hostname.tmp hostname.out\necho hello from init\nexec sleep 300",
    );
    let mut spec = fx.spec(5);
    spec.metadata.insert("role".into(), "frontend".into());
    spec.metadata.insert("app.tier".into(), "1".into());
    spec.custom_data = Some("#cloud-config\nsecret: x\n".into());
    fx.driver.ensure(&spec, Fence::FIRST).await.unwrap();

    let env = wait_file(&fx.work_file(5, "env.out")).await;
    let vars: BTreeMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
    let custom = fx.dir(5).join("work/.herd/custom-data");
    let expected = [
        ("HERD_INSTANCE_ID", "5"),
        ("HERD_COMPUTER_NAME", "web000005"),
        ("HOSTNAME", "web000005"),
        ("HERD_ADDRESS", "127.128.0.5"),
        ("HERD_INSTANCE_KEY", "rg/web/5"),
        ("HERD_DRIVER_TAG", fx.tag.as_str()),
        ("HERD_MODEL_GENERATION", "7"),
        ("HERD_ADMIN_USERNAME", "azureuser"),
        ("HERD_VCPUS", "2"),
        ("HERD_MEMORY_MIB", "1024"),
        ("HERD_META_ROLE", "frontend"),
        ("HERD_META_APP_TIER", "1"),
        ("HERD_CUSTOM_DATA", custom.to_str().unwrap()),
    ];
    for (k, v) in expected {
        assert_eq!(vars.get(k).copied(), Some(v), "{k} in\n{env}");
    }
    assert!(vars.contains_key("PATH"));
    assert_eq!(std::fs::read_to_string(&custom).unwrap(), "#cloud-config\nsecret: x\n");
    assert_eq!(std::fs::metadata(&custom).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(fx.work_file(5, "from-image.txt")).unwrap(), "image file\n");

    let hostname = wait_file(&fx.work_file(5, "hostname.out")).await;
    if fx.driver.sets_hostname() {
        assert_eq!(hostname.trim(), "web000005");
    } else {
        eprintln!("not root or no working unshare: hostname not checked");
    }

    // The recorded pid and start time are those of a live process whose stat has that start time.
    let recorded = common::record(&fx.dir(5)).pid.unwrap();
    let (pid, start) = (recorded.pid, recorded.start.to_string());
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    assert_eq!(fields[22 - 3], start);
    assert_eq!(common::record(&fx.dir(5)).power.unwrap().as_str(), "running");
    wait_for("console output", || async {
        std::fs::read_to_string(fx.dir(5).join("console.log")).is_ok_and(|c| c.contains("hello from init"))
    })
    .await;
    assert_eq!(fx.power(5).await, Some(ObservedPower::Running));
    fx.destroy_all().await;
}

#[tokio::test]
async fn ensure_twice_is_idempotent() {
    let fx = Fixture::new("exec sleep 300");
    fx.driver.ensure(&fx.spec(1), Fence::FIRST).await.unwrap();
    let pid = fx.pid(1);
    fx.driver.ensure(&fx.spec(1), Fence::FIRST).await.unwrap();
    assert_eq!(fx.pid(1), pid);
    assert!(pid_alive(pid));
    let list = fx.driver.list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].power, ObservedPower::Running);
    fx.destroy_all().await;
}

#[tokio::test]
async fn stop_kills_the_whole_tree_and_start_brings_it_back() {
    let fx = Fixture::new("sleep 300 &\necho $! > child.tmp && mv child.tmp child.pid\nwait");
    fx.driver.ensure(&fx.spec(2), Fence::FIRST).await.unwrap();
    let init = fx.pid(2);
    let child: u32 = wait_file(&fx.work_file(2, "child.pid")).await.trim().parse().unwrap();
    assert!(pid_alive(init) && pid_alive(child));

    fx.driver.set_power(&key(2), PowerTarget::Stopped, Fence::FIRST).await.unwrap();
    assert!(!pid_alive(init), "init survived stop");
    assert!(!pid_alive(child), "init's child survived stop");
    assert_eq!(fx.power(2).await, Some(ObservedPower::Stopped));
    assert_eq!(fx.driver.stats(&key(2)).await.unwrap(), None);
    // Stopping again is a no-op.
    fx.driver.set_power(&key(2), PowerTarget::Stopped, Fence::FIRST).await.unwrap();

    std::fs::remove_file(fx.work_file(2, "child.pid")).unwrap();
    fx.driver.set_power(&key(2), PowerTarget::Running, Fence::FIRST).await.unwrap();
    let init2 = fx.pid(2);
    assert_ne!(init2, init);
    assert!(pid_alive(init2));
    wait_file(&fx.work_file(2, "child.pid")).await;
    assert_eq!(fx.power(2).await, Some(ObservedPower::Running));
    fx.destroy_all().await;
}

#[tokio::test]
async fn stop_kills_an_init_that_ignores_sigterm_after_the_grace_period() {
    let mut fx = Fixture::new("trap '' TERM\necho ready > ready\nwhile true; do sleep 1; done");
    fx.driver =
        ProcessDriver::new(fx.root.clone(), fx.tag.clone()).unwrap().with_stop_grace(Duration::from_millis(300));
    fx.driver.ensure(&fx.spec(3), Fence::FIRST).await.unwrap();
    wait_file(&fx.work_file(3, "ready")).await;
    let init = fx.pid(3);
    let t = Instant::now();
    fx.driver.set_power(&key(3), PowerTarget::Stopped, Fence::FIRST).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300), "stopped before the grace period: {:?}", t.elapsed());
    assert!(!pid_alive(init));
    assert_eq!(fx.power(3).await, Some(ObservedPower::Stopped));
    fx.destroy_all().await;
}

#[tokio::test]
async fn deallocate_keeps_the_disk_and_restart_reboots() {
    let fx = Fixture::new("echo boot >> boots.txt\nexec sleep 300");
    fx.driver.ensure(&fx.spec(4), Fence::FIRST).await.unwrap();
    let boots = fx.work_file(4, "boots.txt");
    wait_for("first boot", || async { std::fs::read_to_string(&boots).is_ok_and(|s| s.lines().count() == 1) }).await;
    std::fs::write(fx.work_file(4, "user-data.txt"), "kept").unwrap();

    fx.driver.set_power(&key(4), PowerTarget::Deallocated, Fence::FIRST).await.unwrap();
    assert_eq!(common::record(&fx.dir(4)).power.unwrap().as_str(), "deallocated");
    assert_eq!(fx.power(4).await, Some(ObservedPower::Stopped));
    assert_eq!(std::fs::read_to_string(fx.work_file(4, "user-data.txt")).unwrap(), "kept");

    // ensure on a deallocated instance starts it again, on the same disk.
    fx.driver.ensure(&fx.spec(4), Fence::FIRST).await.unwrap();
    wait_for("second boot", || async { std::fs::read_to_string(&boots).is_ok_and(|s| s.lines().count() == 2) }).await;
    let pid = fx.pid(4);
    fx.driver.restart(&key(4), Fence::FIRST).await.unwrap();
    assert_ne!(fx.pid(4), pid);
    assert!(!pid_alive(pid));
    wait_for("third boot", || async { std::fs::read_to_string(&boots).is_ok_and(|s| s.lines().count() == 3) }).await;
    assert_eq!(std::fs::read_to_string(fx.work_file(4, "user-data.txt")).unwrap(), "kept");
    fx.destroy_all().await;
}

#[tokio::test]
async fn reimage_resets_the_work_directory() {
    let fx = Fixture::new("echo boot >> boots.txt\nexec sleep 300");
    fx.driver.ensure(&fx.spec(6), Fence::FIRST).await.unwrap();
    let boots = fx.work_file(6, "boots.txt");
    wait_for("first boot", || async { std::fs::read_to_string(&boots).is_ok_and(|s| s.lines().count() == 1) }).await;
    fx.driver.restart(&key(6), Fence::FIRST).await.unwrap();
    wait_for("second boot", || async { std::fs::read_to_string(&boots).is_ok_and(|s| s.lines().count() == 2) }).await;
    std::fs::write(fx.work_file(6, "user-data.txt"), "lost").unwrap();
    let pid = fx.pid(6);

    let mut spec = fx.spec(6);
    spec.model_generation = 8;
    fx.driver.reimage(&spec, Fence::FIRST).await.unwrap();
    assert!(!pid_alive(pid));
    assert!(!fx.work_file(6, "user-data.txt").exists());
    wait_for("boot after reimage", || async { std::fs::read_to_string(&boots).is_ok_and(|s| s.lines().count() == 1) })
        .await;
    assert!(fx.work_file(6, "from-image.txt").exists());
    let env = common::record(&fx.dir(6)).env;
    assert!(env.iter().any(|(k, v)| k == "HERD_MODEL_GENERATION" && v == "8"));
    assert_eq!(fx.power(6).await, Some(ObservedPower::Running));

    // Reimage of an absent instance creates it.
    fx.driver.reimage(&fx.spec(7), Fence::FIRST).await.unwrap();
    assert!(pid_alive(fx.pid(7)));
    fx.destroy_all().await;
}

#[tokio::test]
async fn destroy_removes_directory_and_processes() {
    let fx = Fixture::new("sleep 300 &\necho $! > child.tmp && mv child.tmp child.pid\nwait");
    fx.driver.ensure(&fx.spec(8), Fence::FIRST).await.unwrap();
    let init = fx.pid(8);
    let child: u32 = wait_file(&fx.work_file(8, "child.pid")).await.trim().parse().unwrap();
    fx.driver.destroy(&key(8), Fence::FIRST).await.unwrap();
    assert!(!fx.dir(8).exists());
    assert!(!pid_alive(init) && !pid_alive(child));
    assert_eq!(fx.power(8).await, None);
    fx.driver.destroy(&key(8), Fence::FIRST).await.unwrap();
    fx.driver.destroy(&key(9), Fence::FIRST).await.unwrap();
    assert_eq!(
        fx.driver.set_power(&key(8), PowerTarget::Running, Fence::FIRST).await,
        Err(DriverError::NotFound(key(8)))
    );
    assert_eq!(fx.driver.restart(&key(8), Fence::FIRST).await, Err(DriverError::NotFound(key(8))));
    assert_eq!(fx.driver.stats(&key(8)).await.unwrap(), None);
    fx.destroy_all().await;
}

/// A server killed while it removed an instance's directory: the directory was removed in
/// place, so the crash could leave it without its record, which every later call then read as
/// another cluster's and refused (the instance stayed Deleting for good). Now the next destroy
/// finishes such a remnant, killing what still runs of the instance; so it does for a record
/// naming nothing (a late exit-status write into a directory being removed made one), and a
/// leftover `.<id>.deleting` goes with the next destroy of its key. An instance's own directory
/// never goes through a state without its record: a destroy moves it away whole first.
#[tokio::test]
async fn a_destroy_cut_short_by_a_crash_is_finished_by_the_next() {
    let fx = Fixture::new("exec sleep 300");
    // Cut short after the record went, with the disk left and init still running.
    fx.driver.ensure(&fx.spec(30), Fence::FIRST).await.unwrap();
    let pid = fx.pid(30);
    std::fs::remove_file(fx.dir(30).join("state")).unwrap();
    assert_eq!(fx.power(30).await, None, "not listed: no tag");
    let again = ProcessDriver::new(fx.root.clone(), fx.tag.clone()).unwrap();
    again.destroy(&key(30), Fence::FIRST).await.unwrap();
    assert!(!fx.dir(30).exists(), "the remnant is removed");
    assert!(!pid_alive(pid), "its init, found by its environment, is killed");

    // A record naming nothing.
    fx.driver.ensure(&fx.spec(31), Fence::FIRST).await.unwrap();
    fx.driver.set_power(&key(31), PowerTarget::Stopped, Fence::FIRST).await.unwrap();
    common::edit_record(&fx.dir(31), |r| {
        r.tag = None;
        r.env.clear();
        r.fence = None;
        r.pid = None;
    });
    again.destroy(&key(31), Fence::FIRST).await.unwrap();
    assert!(!fx.dir(31).exists());

    // A leftover of a destroy cut short after the move.
    let trash = fx.dir(32).with_file_name(".32.deleting");
    std::fs::create_dir_all(trash.join("work")).unwrap();
    std::fs::write(trash.join("work/init"), "left").unwrap();
    again.destroy(&key(32), Fence::FIRST).await.unwrap();
    assert!(!trash.exists(), "the leftover is removed");

    // A destroy that completes leaves nothing beside the set's other instances.
    fx.driver.ensure(&fx.spec(33), Fence::FIRST).await.unwrap();
    fx.driver.destroy(&key(33), Fence::FIRST).await.unwrap();
    let set_dir = fx.dir(33).parent().unwrap().to_path_buf();
    let left: Vec<_> = std::fs::read_dir(&set_dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "nothing left in {}: {left:?}", set_dir.display());
    fx.destroy_all().await;
}

#[tokio::test]
async fn an_init_that_exits_is_reported_failed() {
    let fx = Fixture::new("echo boom happened\nexit 3");
    fx.driver.ensure(&fx.spec(10), Fence::FIRST).await.unwrap();
    wait_for("Failed with the exit status", || async {
        matches!(fx.power(10).await, Some(ObservedPower::Failed(m)) if m.contains("exit status 3"))
    })
    .await;
    let Some(ObservedPower::Failed(msg)) = fx.power(10).await else { panic!("not failed") };
    assert!(msg.starts_with("init exited"), "{msg}");
    assert!(msg.contains("boom happened"), "{msg}");
    assert_eq!(fx.driver.stats(&key(10)).await.unwrap(), None);

    // ensure restarts a failed instance.
    let pid = fx.pid(10);
    fx.driver.ensure(&fx.spec(10), Fence::FIRST).await.unwrap();
    assert_ne!(fx.pid(10), pid);
    fx.destroy_all().await;
}

#[tokio::test]
async fn an_image_without_init_is_an_error() {
    let fx = Fixture::new("exit 0");
    std::fs::remove_file(fx.image.join("init")).unwrap();
    let err = fx.driver.ensure(&fx.spec(11), Fence::FIRST).await.unwrap_err();
    assert!(matches!(&err, DriverError::Failed(m) if m.contains("init")), "{err:?}");
    assert!(!fx.dir(11).exists());
    fx.destroy_all().await;
}

#[tokio::test]
async fn a_new_driver_readopts_running_instances() {
    let fx = Fixture::new("exec sleep 300");
    fx.driver.ensure(&fx.spec(12), Fence::FIRST).await.unwrap();
    let pid = fx.pid(12);
    let again = ProcessDriver::new(fx.root.clone(), fx.tag.clone()).unwrap();
    let list = again.list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].power, ObservedPower::Running);
    again.ensure(&fx.spec(12), Fence::FIRST).await.unwrap();
    assert_eq!(fx.pid(12), pid);
    assert!(pid_alive(pid));
    again.set_power(&key(12), PowerTarget::Stopped, Fence::FIRST).await.unwrap();
    assert!(!pid_alive(pid));
    fx.destroy_all().await;
}

/// A server upgraded in place finds directories in the layout before the state file (`tag`,
/// `env`, `power`, `pid`, ... as separate files): it re-adopts their processes without a
/// restart, reads them as they are, and migrates each to the state file on its first change.
#[tokio::test]
async fn directories_of_the_older_layout_are_readopted_and_migrated() {
    let fx = Fixture::new("echo \"booted as $HERD_COMPUTER_NAME\"\nexec sleep 300");
    fx.driver.ensure(&fx.spec(13), Fence::FIRST).await.unwrap();
    fx.driver.ensure(&fx.spec(14), Fence::FIRST).await.unwrap();
    let pid = fx.pid(13);
    for id in [13, 14] {
        herd_driver_process::record::write_legacy(&fx.dir(id), &common::record(&fx.dir(id))).unwrap();
    }
    let state = fx.dir(13).join(herd_driver_process::record::STATE_FILE);
    assert!(!state.exists() && fx.dir(13).join("pid").exists() && fx.dir(13).join("tag").exists());

    let upgraded = ProcessDriver::new(fx.root.clone(), fx.tag.clone()).unwrap();
    let list = upgraded.list().await.unwrap();
    assert_eq!(list.iter().map(|o| o.power.clone()).collect::<Vec<_>>(), vec![ObservedPower::Running; 2]);
    upgraded.ensure(&fx.spec(13), Fence::FIRST).await.unwrap();
    assert_eq!(fx.pid(13), pid, "re-adopted, not restarted");
    assert!(!state.exists(), "reading changes nothing");

    // The first change migrates: one state file, the old files gone, the instance as it was.
    upgraded.set_power(&key(13), PowerTarget::Stopped, Fence::FIRST).await.unwrap();
    assert!(!pid_alive(pid));
    assert!(state.exists());
    for old in ["tag", "power", "env", "pid", "exit", "net"] {
        assert!(!fx.dir(13).join(old).exists(), "{old} is migrated");
    }
    assert_eq!(common::record(&fx.dir(13)).tag.as_deref(), Some(fx.tag.as_str()));
    upgraded.set_power(&key(13), PowerTarget::Running, Fence::FIRST).await.unwrap();
    let console = fx.dir(13).join("console.log");
    wait_for("the migrated instance to boot again with its environment", || async {
        std::fs::read_to_string(&console).is_ok_and(|c| c.matches("booted as web000013").count() == 2)
    })
    .await;
    assert_eq!(fx.power(13).await, Some(ObservedPower::Running));
    assert_eq!(fx.power(14).await, Some(ObservedPower::Running));
    fx.destroy_all().await;
}

#[tokio::test]
async fn orphans_are_listed_and_destroyed() {
    let fx = Fixture::new("echo ready > ready\nexec sleep 300");
    // An instance whose directory vanished (as after a crash mid-destroy).
    fx.driver.ensure(&fx.spec(13), Fence::FIRST).await.unwrap();
    wait_file(&fx.work_file(13, "ready")).await;
    let pid = fx.pid(13);
    std::fs::remove_dir_all(fx.dir(13)).unwrap();
    // A process started outside the driver with our tag.
    let mut stray = KillOnDrop(
        std::process::Command::new("sleep")
            .arg("300")
            .env("HERD_DRIVER_TAG", &fx.tag)
            .env("HERD_INSTANCE_KEY", "rg/web/14")
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    // Another driver's process is not ours.
    let foreign = KillOnDrop(
        std::process::Command::new("sleep")
            .arg("300")
            .env("HERD_DRIVER_TAG", format!("{}-other", fx.tag))
            .env("HERD_INSTANCE_KEY", "rg/web/15")
            .process_group(0)
            .spawn()
            .unwrap(),
    );

    let list = fx.driver.list().await.unwrap();
    let keys: Vec<(u64, ObservedPower)> = list.iter().map(|o| (o.key.id.0, o.power.clone())).collect();
    assert_eq!(keys, vec![(13, ObservedPower::Running), (14, ObservedPower::Running)]);

    fx.driver.destroy(&key(13), Fence::FIRST).await.unwrap();
    assert!(!pid_alive(pid));
    fx.driver.destroy(&key(14), Fence::FIRST).await.unwrap();
    let status = stray.0.wait().unwrap();
    assert!(!status.success());
    assert!(pid_alive(foreign.0.id()));
    drop(foreign);
    fx.destroy_all().await;
}

#[tokio::test]
async fn a_process_without_pid_file_is_adopted_not_duplicated() {
    let fx = Fixture::new("echo ready > ready\nexec sleep 300");
    fx.driver.ensure(&fx.spec(16), Fence::FIRST).await.unwrap();
    let pid = fx.pid(16);
    // As if the server crashed between spawning init and writing the pid file.
    common::edit_record(&fx.dir(16), |r| r.pid = None);
    assert_eq!(fx.power(16).await, Some(ObservedPower::Running));
    fx.driver.ensure(&fx.spec(16), Fence::FIRST).await.unwrap();
    assert_eq!(fx.pid(16), pid);
    // Once booted, the instance is one process: nothing was started twice.
    wait_file(&fx.work_file(16, "ready")).await;
    assert_eq!(tagged_pids(&fx.tag), vec![pid]);
    // destroy finds it by its environment too.
    common::edit_record(&fx.dir(16), |r| r.pid = None);
    fx.driver.destroy(&key(16), Fence::FIRST).await.unwrap();
    assert!(!pid_alive(pid));
    assert!(!fx.dir(16).exists());
    fx.destroy_all().await;
}

#[tokio::test]
async fn a_process_that_left_its_group_is_caught_as_an_orphan() {
    let fx = Fixture::new("setsid sleep 300 &\necho $! > escaped.tmp && mv escaped.tmp escaped.pid\nexec sleep 300");
    fx.driver.ensure(&fx.spec(18), Fence::FIRST).await.unwrap();
    let escaped: u32 = wait_file(&fx.work_file(18, "escaped.pid")).await.trim().parse().unwrap();
    wait_for("the escaped process to lead its own session", || async {
        std::fs::read_to_string(format!("/proc/{escaped}/stat"))
            .is_ok_and(|s| s.rsplit_once(')').unwrap().1.split_whitespace().nth(2) == Some(&escaped.to_string()))
    })
    .await;
    fx.driver.destroy(&key(18), Fence::FIRST).await.unwrap();
    assert!(pid_alive(escaped));
    assert_eq!(fx.power(18).await, Some(ObservedPower::Running));
    fx.driver.destroy(&key(18), Fence::FIRST).await.unwrap();
    assert!(!pid_alive(escaped));
    assert_eq!(fx.power(18).await, None);
}

#[tokio::test]
async fn stats_report_memory_and_cpu() {
    let fx = Fixture::new("i=0\nwhile [ $i -lt 100000 ]; do i=$((i+1)); done\necho busy-done > done\nexec sleep 300");
    fx.driver.ensure(&fx.spec(17), Fence::FIRST).await.unwrap();
    wait_file(&fx.work_file(17, "done")).await;
    let stats = fx.driver.stats(&key(17)).await.unwrap().expect("stats of a running instance");
    assert!(stats.memory_bytes > 0);
    assert!(stats.cpu_seconds > 0.0, "{stats:?}");
    fx.destroy_all().await;
}

/// `list` must stay cheap at the scale one host runs. Slow (starts 1000 processes): run with
/// `cargo test -p herd-driver-process -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: starts 1000 processes; run with cargo test -p herd-driver-process -- --ignored"]
async fn list_of_1000_instances_is_fast() {
    let fx = Fixture::new("exec sleep 300");
    let t = Instant::now();
    for id in 0..1000 {
        fx.driver.ensure(&fx.spec(id), Fence::FIRST).await.unwrap();
    }
    eprintln!("1000 ensures: {:?}", t.elapsed());
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let list = fx.driver.list().await.unwrap();
        best = best.min(t.elapsed());
        assert_eq!(list.len(), 1000);
        assert!(list.iter().all(|o| o.power == ObservedPower::Running));
    }
    eprintln!("list of 1000: {best:?}");
    assert!(best < Duration::from_millis(100), "list took {best:?}");
    let t = Instant::now();
    fx.destroy_all().await;
    eprintln!("1000 destroys: {:?}", t.elapsed());
}

#[tokio::test]
async fn a_script_runs_in_the_instance_with_its_files_and_environment() {
    let fx = Fixture::new("exec sleep 300");
    fx.driver.ensure(&fx.spec(20), Fence::FIRST).await.unwrap();
    let init = fx.pid(20);
    // Started directly (no launcher here), the leader sets the hostname in its new namespace
    // and only then execs `init`, which execs `sleep`: the script must see the name, so it runs
    // once that has happened (a script started earlier could join the namespace before the
    // name is set).
    let comm = format!("/proc/{init}/comm");
    wait_for("init to exec sleep", || async { std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "sleep") })
        .await;
    let b_sh = "echo from-b >&2\ni=0\nwhile [ $i -lt 500 ]; do echo \"filler line $i\" >&2; i=$((i+1)); done\necho stderr-end >&2\n";
    let command = "cat a.txt\nsh ./b.sh\necho to-stdout\nenv > env.out\nhostname > hostname.out\n\
                   stat -c %a .herd-command > mode.out\npwd > pwd.out\ncut -d' ' -f5 /proc/$$/stat > pgrp.out\nexit 3";
    let run = script("setup", &[("a.txt", "alpha\n"), ("b.sh", b_sh)], command, herd_test_support::scaled(DEADLINE));
    let t = Instant::now();
    let out = fx.driver.run_script(&key(20), &run, Fence::FIRST).await.unwrap();
    eprintln!("script run: {:?}", t.elapsed());

    assert_eq!(out.exit_code, Some(3));
    assert!(!out.timed_out && !out.succeeded());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alpha\nto-stdout\n");
    // stderr is longer than the tail: only its last SCRIPT_OUTPUT_TAIL bytes are kept.
    assert_eq!(out.stderr.len(), SCRIPT_OUTPUT_TAIL);
    assert!(out.stderr.ends_with(b"filler line 499\nstderr-end\n"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("from-b"));

    let dir = fx.ext_dir(20, "setup");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    assert_eq!(read("a.txt"), "alpha\n");
    assert_eq!(read("b.sh"), b_sh);
    assert!(!dir.join(".herd-command").exists(), "the command file was left behind");
    assert_eq!(read("mode.out").trim(), "600");
    assert_eq!(Path::new(read("pwd.out").trim()), dir);
    assert_eq!(read("pgrp.out").trim(), init.to_string(), "the script did not join the instance's group");

    // Exactly the instance's environment: its variables, and nothing of the server's.
    let env = read("env.out");
    let vars: BTreeMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
    let home = fx.dir(20).join("work");
    for (k, v) in [
        ("HERD_COMPUTER_NAME", "web000020"),
        ("HOSTNAME", "web000020"),
        ("HERD_INSTANCE_KEY", "rg/web/20"),
        ("HERD_DRIVER_TAG", fx.tag.as_str()),
        ("HERD_ADDRESS", "127.128.0.20"),
        ("HOME", home.to_str().unwrap()),
    ] {
        assert_eq!(vars.get(k).copied(), Some(v), "{k} in\n{env}");
    }
    assert!(vars.contains_key("PATH"));
    assert!(!vars.keys().any(|k| k.starts_with("CARGO")), "the server's environment leaked:\n{env}");
    if fx.driver.sets_hostname() {
        assert_eq!(read("hostname.out").trim(), "web000020");
    } else {
        eprintln!("not root or no working unshare: hostname not checked");
    }

    // A second run of the same extension: files are replaced, the directory reused.
    let run = script("setup", &[("a.txt", "beta\n")], "cat a.txt", herd_test_support::scaled(DEADLINE));
    let out = fx.driver.run_script(&key(20), &run, Fence::FIRST).await.unwrap();
    assert!(out.succeeded());
    assert_eq!(out.stdout, b"beta\n");
    assert!(out.stderr.is_empty());
    assert!(pid_alive(init));
    fx.destroy_all().await;
}

#[tokio::test]
async fn the_command_never_appears_in_any_command_line() {
    let fx = Fixture::new("exec sleep 300");
    fx.driver.ensure(&fx.spec(21), Fence::FIRST).await.unwrap();
    let secret = format!("s3cr3t-token-{}-q7x", std::process::id());
    let command = format!("TOKEN='{secret}'\necho start\nsleep 1\necho done # {secret}\n");

    // Sample every process's command line until the run is over.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, secret) = (stop.clone(), secret.clone());
        std::thread::spawn(move || {
            let (mut rounds, mut saw_sleep, mut leaks) = (0u32, false, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                for e in std::fs::read_dir("/proc").unwrap().flatten() {
                    let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else { continue };
                    let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                    if text.contains(&secret) {
                        leaks.push(text.clone());
                    }
                    saw_sleep |= text == "sleep 1 ";
                }
                rounds += 1;
            }
            (rounds, saw_sleep, leaks)
        })
    };
    let out = fx
        .driver
        .run_script(&key(21), &script("secret", &[], &command, herd_test_support::scaled(DEADLINE)), Fence::FIRST)
        .await;
    stop.store(true, Ordering::SeqCst);
    let (rounds, saw_sleep, leaks) = sampler.join().unwrap();
    let out = out.unwrap();

    assert!(out.succeeded(), "{out:?}");
    assert_eq!(out.stdout, b"start\ndone\n");
    assert!(saw_sleep, "the sampler never saw the script's sleep ({rounds} rounds)");
    assert!(leaks.is_empty(), "the secret appeared in command lines: {leaks:?}");
    // Nor is it left on the instance's disk, nor in its console.
    let dir = fx.ext_dir(21, "secret");
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let content = std::fs::read(e.path()).unwrap();
        assert!(!String::from_utf8_lossy(&content).contains(&secret), "{} holds the secret", e.path().display());
    }
    let console = fx.driver.console_log(&key(21), 1 << 20).await.unwrap().unwrap();
    assert!(!console.contains(&secret));
    fx.destroy_all().await;
}

#[tokio::test]
async fn a_background_process_does_not_hold_the_run_and_stops_with_the_instance() {
    let fx = Fixture::new("exec sleep 300");
    fx.driver.ensure(&fx.spec(22), Fence::FIRST).await.unwrap();
    let init = fx.pid(22);
    // The background sleep inherits the script's stdout and stderr.
    let run = script("daemon", &[], "sleep 300 &\necho $! > bg.pid\necho launched\nexit 4", Duration::from_secs(60));
    let t = Instant::now();
    let out = fx.driver.run_script(&key(22), &run, Fence::FIRST).await.unwrap();
    let took = t.elapsed();
    eprintln!("script with a background process: {took:?}");
    assert!(
        took < herd_test_support::scaled(Duration::from_secs(10)),
        "the run waited for its background process: {took:?}"
    );
    assert_eq!(out.exit_code, Some(4));
    assert!(!out.timed_out);
    assert_eq!(out.stdout, b"launched\n");

    let bg: u32 = std::fs::read_to_string(fx.ext_dir(22, "daemon").join("bg.pid")).unwrap().trim().parse().unwrap();
    assert!(pid_alive(bg), "the background process died with the script");
    assert_eq!(pgrp(bg), init, "the background process is not in the instance's group");

    fx.driver.set_power(&key(22), PowerTarget::Stopped, Fence::FIRST).await.unwrap();
    assert!(!pid_alive(bg), "the background process survived stopping the instance");
    assert!(!pid_alive(init));
    fx.destroy_all().await;
}

#[tokio::test]
async fn a_script_that_overruns_its_timeout_is_killed_alone() {
    let fx = Fixture::new("sleep 300 &\necho $! > child.tmp && mv child.tmp child.pid\nwait");
    fx.driver.ensure(&fx.spec(23), Fence::FIRST).await.unwrap();
    let init = fx.pid(23);
    let init_child: u32 = wait_file(&fx.work_file(23, "child.pid")).await.trim().parse().unwrap();
    let run = script("slow", &[], "echo started\nsleep 30 &\necho $! > sleeper.pid\nwait", Duration::from_millis(500));
    let t = Instant::now();
    let out = fx.driver.run_script(&key(23), &run, Fence::FIRST).await.unwrap();
    let took = t.elapsed();
    eprintln!("timed-out run: {took:?}");
    assert!(out.timed_out);
    assert_eq!(out.exit_code, None);
    assert!(!out.succeeded());
    assert!(took >= Duration::from_millis(500) && took < herd_test_support::scaled(Duration::from_secs(5)), "{took:?}");
    assert_eq!(out.stdout, b"started\n");

    let dir = fx.ext_dir(23, "slow");
    let sleeper: u32 = std::fs::read_to_string(dir.join("sleeper.pid")).unwrap().trim().parse().unwrap();
    assert!(!pid_alive(sleeper), "the script's child survived the timeout");
    assert!(!dir.join(".herd-command").exists());
    // The instance itself is untouched.
    assert!(pid_alive(init) && pid_alive(init_child));
    assert_eq!(fx.power(23).await, Some(ObservedPower::Running));
    let mut left = tagged_pids(&fx.tag);
    left.sort();
    let mut expected = vec![init, init_child];
    expected.sort();
    assert_eq!(left, expected);
    fx.destroy_all().await;
}

#[tokio::test]
async fn scripts_need_a_running_instance_and_safe_names() {
    let fx = Fixture::new("exec sleep 300");
    let secret = "hunter2-secret";
    let cmd = format!("echo {secret}");
    let ok = script("ext", &[], &cmd, herd_test_support::scaled(DEADLINE));
    assert_eq!(fx.driver.run_script(&key(24), &ok, Fence::FIRST).await, Err(DriverError::NotFound(key(24))));

    fx.driver.ensure(&fx.spec(24), Fence::FIRST).await.unwrap();
    for (name, file) in [("../x", "f"), ("", "f"), ("..", "f"), ("a/b", "f"), ("ext", "../x"), ("ext", ".herd-command")]
    {
        let run = script(name, &[(file, "data")], &cmd, herd_test_support::scaled(DEADLINE));
        let err = fx.driver.run_script(&key(24), &run, Fence::FIRST).await.unwrap_err();
        let DriverError::Failed(msg) = &err else { panic!("{err:?}") };
        let bad = if name == "ext" { file } else { name };
        assert!(msg.contains(&format!("{bad:?}")), "{msg}");
        assert!(!msg.contains(secret), "{msg}");
    }
    assert!(!fx.dir(24).join("work/.herd/x").exists() && !fx.dir(24).join("work/.herd/extensions/x").exists());
    assert!(!fx.dir(24).join("work/x").exists());

    fx.driver.set_power(&key(24), PowerTarget::Stopped, Fence::FIRST).await.unwrap();
    let err = fx.driver.run_script(&key(24), &ok, Fence::FIRST).await.unwrap_err();
    assert!(matches!(&err, DriverError::Failed(m) if m.contains("not running") && !m.contains(secret)), "{err:?}");
    fx.destroy_all().await;
}

/// Starts `run` on a driver of its own (same root and tag: "the previous server") and then
/// abandons that driver without dropping anything, as `kill -9` of the server leaves it: the
/// script keeps running. Returns once the run is recorded with the script's pid.
fn start_then_crash(fx: &Fixture, id: u64, run: ScriptRun) {
    let (root, tag) = (fx.root.clone(), fx.tag.clone());
    let record = fx.dir(id).join("script-run");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let old = Arc::new(ProcessDriver::new(root, tag).unwrap());
        let o2 = old.clone();
        rt.spawn(async move {
            let _ = o2.run_script(&key(id), &run, Fence::FIRST).await;
        });
        rt.block_on(wait_for("the old driver's script to be recorded", || async {
            std::fs::read_to_string(&record)
                .is_ok_and(|r| r.lines().any(|l| l.starts_with("script=") && l != "script=-"))
        }));
        // Never dropped: no guard runs, the script is not killed, the task is never resumed.
        std::mem::forget(old);
        std::mem::forget(rt);
    })
    .join()
    .unwrap();
}

/// Issue 13: after a server crash the next server must never run a second copy of a script.
/// Asked for the same run, the new driver adopts the old script (waits, takes its exit code
/// and output); asked for another run, it kills the old script before starting the new one.
#[tokio::test]
async fn a_run_left_by_a_crashed_driver_is_adopted_or_killed_never_doubled() {
    let fx = Fixture::new("exec sleep 300");
    fx.driver.ensure(&fx.spec(25), Fence::FIRST).await.unwrap();
    let starts = fx.ext_dir(25, "slow").join("starts");
    let slow = |identity: &str| ScriptRun {
        identity: identity.into(),
        ..script("slow", &[], "echo $$ >> starts\nsleep 3\necho done >> starts\necho adopted-output\nexit 5", DEADLINE)
    };
    let lines = || std::fs::read_to_string(&starts).unwrap_or_default().lines().map(String::from).collect::<Vec<_>>();

    // The run record is written when the script's process exists, which (on a loaded
    // machine) can be before the script's first line ran: wait for that line.
    let started = || async { !lines().is_empty() };

    // Same identity: adopted.
    start_then_crash(&fx, 25, slow("gen-1"));
    wait_for("the old script's first line", started).await;
    let old: u32 = lines()[0].parse().unwrap();
    assert!(pid_alive(old));
    let t = Instant::now();
    let out = fx.driver.run_script(&key(25), &slow("gen-1"), Fence::FIRST).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(10), "waited for the old run only");
    assert_eq!(out.exit_code, Some(5), "the adopted run's exit status: {out:?}");
    assert_eq!(out.stdout, b"adopted-output\n");
    assert_eq!(lines(), [old.to_string(), "done".to_string()], "started once, finished once");
    assert!(!fx.dir(25).join("script-run").exists(), "the record is removed");
    for f in [".herd-command", ".herd-runner", ".herd-exit", ".herd-stdout", ".herd-stderr"] {
        assert!(!fx.ext_dir(25, "slow").join(f).exists(), "{f} left behind");
    }

    // Another identity (the model changed while no server ran): the old run is killed first.
    std::fs::remove_file(&starts).unwrap();
    start_then_crash(&fx, 25, slow("gen-1"));
    wait_for("the old script's first line", started).await;
    let old: u32 = lines()[0].parse().unwrap();
    let quick = ScriptRun { identity: "gen-2".into(), ..script("slow", &[], "echo $$ >> starts\necho new", DEADLINE) };
    let out = fx.driver.run_script(&key(25), &quick, Fence::FIRST).await.unwrap();
    assert!(!pid_alive(old), "the old script was killed");
    assert_eq!(out.exit_code, Some(0));
    assert_eq!(out.stdout, b"new\n");
    let l = lines();
    assert_eq!(l.len(), 2, "the old run never finished, the new one ran once: {l:?}");
    assert!(!l.contains(&"done".to_string()), "{l:?}");

    // A run that ended while no driver watched: its result is taken, it does not run again.
    std::fs::remove_file(&starts).unwrap();
    let short = ScriptRun {
        identity: "gen-3".into(),
        ..script("slow", &[], "echo $$ >> starts\nsleep 0.3\necho unseen-result\nexit 2", DEADLINE)
    };
    start_then_crash(&fx, 25, short.clone());
    wait_for("the unseen run to end", || async { fx.ext_dir(25, "slow").join(".herd-exit").exists() }).await;
    let out = fx.driver.run_script(&key(25), &short, Fence::FIRST).await.unwrap();
    assert_eq!(out.exit_code, Some(2));
    assert_eq!(out.stdout, b"unseen-result\n");
    assert_eq!(lines().len(), 1, "not run again");
    fx.destroy_all().await;
}

/// An HTTP server on 127.0.0.1 that answers every request with `body`; counts the requests.
fn counting_file_server(body: &'static str) -> (String, Arc<AtomicU32>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicU32::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            h.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    (format!("http://{addr}"), hits)
}

fn downloads(files: &[(&str, &str, &str)]) -> herd_driver::Downloads {
    herd_driver::Downloads {
        files: files
            .iter()
            .map(|(name, uri, shown)| herd_driver::Download {
                name: name.to_string(),
                uri: uri.to_string(),
                shown: shown.to_string(),
            })
            .collect(),
        rules: herd_egress::fetch::FetchRules {
            timeout: Duration::from_secs(5),
            allowed: vec![herd_egress::Net::parse("127.0.0.1/32").unwrap()],
            ..Default::default()
        },
    }
}

/// Issue 20: the host downloads a run's `fileUris` when the run starts, under the run's rules;
/// a run adopted after a crash downloads nothing again, and a refused download runs nothing
/// and names the file only as the caller shows it (no query string).
#[tokio::test]
async fn downloads_come_when_a_run_starts_never_for_an_adopted_one() {
    let fx = Fixture::new("exec sleep 300");
    fx.driver.ensure(&fx.spec(27), Fence::FIRST).await.unwrap();
    let (base, hits) = counting_file_server("echo started >> starts\nsleep 3\necho from-the-download\n");
    let uri = format!("{base}/get.sh?sig=SEKRIT-1");
    let run = ScriptRun {
        identity: "gen-1".into(),
        downloads: downloads(&[("get.sh", &uri, &format!("{base}/get.sh"))]),
        ..script("dl", &[], "sh ./get.sh", DEADLINE)
    };
    start_then_crash(&fx, 27, run.clone());
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the run that started downloaded its file");
    let out = fx.driver.run_script(&key(27), &run, Fence::FIRST).await.unwrap();
    assert_eq!((out.exit_code, out.stdout.as_slice()), (Some(0), &b"from-the-download\n"[..]), "{out:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the adopted run downloaded nothing again");
    let starts = std::fs::read_to_string(fx.ext_dir(27, "dl").join("starts")).unwrap();
    assert_eq!(starts, "started\n", "the script ran once");

    // An address the rules refuse: nothing is placed, nothing runs, and the error shows the
    // file as the caller named it.
    let bad = ScriptRun {
        identity: "gen-2".into(),
        downloads: downloads(&[("x.sh", "http://127.0.0.2:9/x.sh?sig=SEKRIT-2", "http://127.0.0.2:9/x.sh")]),
        ..script("dl2", &[], "touch ran", DEADLINE)
    };
    let err = fx.driver.run_script(&key(27), &bad, Fence::FIRST).await.unwrap_err();
    let DriverError::Failed(m) = &err else { panic!("{err:?}") };
    assert!(m.contains("downloading http://127.0.0.2:9/x.sh failed: 127.0.0.2 is a loopback"), "{m}");
    assert!(m.contains("[extensions] allow_fetch_from") && !m.contains("SEKRIT"), "{m}");
    assert!(!fx.ext_dir(27, "dl2").exists(), "nothing placed, nothing ran");
    assert!(!format!("{bad:?}").contains("SEKRIT"), "a run's Debug shows no URI");
    fx.destroy_all().await;
}
