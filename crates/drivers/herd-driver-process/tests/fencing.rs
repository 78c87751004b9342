//! Fencing and error kinds in the process driver: a call with a lower term or incarnation than the instance's
//! record is refused and changes nothing; equal and higher pass; the record lives in the
//! instance directory and survives a new driver object on the same root (a server restart).
//! A missing image is a permanent error.

mod common;

use herd_driver::{Driver, DriverError, Fence, Incarnation, InstanceSpec, ObservedPower, PowerTarget, ScriptRun, Term};
use herd_driver_process::ProcessDriver;
use herd_model::{image::ImageSource, sku::SkuSize, InstanceKey};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn f(term: u64, incarnation: u64) -> Fence {
    Fence::new(Term(term), Incarnation(incarnation))
}

fn key(id: u64) -> InstanceKey {
    common::key("fence", id)
}

fn spec(image: &Path, id: u64) -> InstanceSpec {
    common::dir_spec("fence", id, image, SkuSize { vcpus: 1, memory_mib: 256 }, format!("127.128.9.{id}"))
}

struct Rig {
    _tmp: tempfile::TempDir,
    image: PathBuf,
    root: PathBuf,
    tag: String,
}

impl Rig {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("image");
        std::fs::create_dir(&image).unwrap();
        let init = image.join("init");
        std::fs::write(&init, "#!/bin/sh\nexec sleep 300\n").unwrap();
        std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = tmp.path().join("instances");
        // One tag per rig: `list` also finds the tag's processes, and the tests run in parallel.
        static RIGS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = RIGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("fence-test-{}-{n}", std::process::id());
        Self { _tmp: tmp, image, root, tag }
    }

    fn driver(&self) -> ProcessDriver {
        ProcessDriver::new(self.root.clone(), self.tag.clone()).unwrap().with_stop_grace(Duration::from_secs(2))
    }

    /// A driver and instance `id`, created with `fence`.
    async fn created(&self, id: u64, fence: Fence) -> (ProcessDriver, InstanceKey) {
        let d = self.driver();
        d.ensure(&spec(&self.image, id), fence).await.unwrap();
        (d, key(id))
    }
}

impl Drop for Rig {
    /// Safety net for a failed test: kills the process group of every instance left.
    fn drop(&mut self) {
        let Ok(groups) = std::fs::read_dir(self.root.join("rg/fence")) else { return };
        for dir in groups.flatten() {
            if let Some(pid) = common::recorded_pid(&dir.path()).and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

async fn power(d: &ProcessDriver, k: &InstanceKey) -> Option<ObservedPower> {
    d.list().await.unwrap().into_iter().find(|o| &o.key == k).map(|o| o.power)
}

async fn wait_running(d: &ProcessDriver, k: &InstanceKey) {
    let deadline = Instant::now() + herd_test_support::scaled(Duration::from_secs(15));
    while power(d, k).await != Some(ObservedPower::Running) {
        assert!(Instant::now() < deadline, "instance {k} never reported Running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The fence in the instance's record.
fn recorded(d: &ProcessDriver, k: &InstanceKey) -> Option<Fence> {
    common::record(&d.instance_dir(k)).fence
}

fn assert_fenced(e: DriverError, call: Fence, seen: Fence) {
    match &e {
        DriverError::Fenced(x) => assert_eq!((x.call, x.seen), (call, seen)),
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert!(!e.retryable());
    let msg = e.to_string();
    assert!(msg.contains(&call.to_string()) && msg.contains(&seen.to_string()), "{msg}");
}

#[tokio::test]
async fn lower_fences_are_refused_and_the_record_survives_a_new_driver() {
    let rig = Rig::new();
    let (d, k) = rig.created(1, f(2, 3)).await;
    assert_eq!(recorded(&d, &k), Some(f(2, 3)), "the new instance's directory holds its fence");
    wait_running(&d, &k).await;
    let pid = common::recorded_pid(&d.instance_dir(&k)).unwrap();
    let run = ScriptRun {
        name: "x".into(),
        files: vec![],
        downloads: Default::default(),
        command: "touch ran".into(),
        timeout: Duration::from_secs(5),
        identity: "x1".into(),
    };

    // A new driver object on the same root: the record is read from disk.
    drop(d);
    let d = rig.driver();
    for low in [f(1, 3), f(2, 2), f(3, 1)] {
        assert_fenced(d.ensure(&spec(&rig.image, 1), low).await.unwrap_err(), low, f(2, 3));
        assert_fenced(d.set_power(&k, PowerTarget::Stopped, low).await.unwrap_err(), low, f(2, 3));
        assert_fenced(d.restart(&k, low).await.unwrap_err(), low, f(2, 3));
        assert_fenced(d.resize(&spec(&rig.image, 1), low).await.unwrap_err(), low, f(2, 3));
        assert_fenced(d.reimage(&spec(&rig.image, 1), low).await.unwrap_err(), low, f(2, 3));
        assert_fenced(d.run_script(&k, &run, low).await.unwrap_err(), low, f(2, 3));
        assert_fenced(d.destroy(&k, low).await.unwrap_err(), low, f(2, 3));
    }
    // Nothing a refused call could have done happened: same process, no script ran.
    assert_eq!(common::recorded_pid(&d.instance_dir(&k)).unwrap(), pid);
    assert_eq!(power(&d, &k).await, Some(ObservedPower::Running));
    assert!(!d.instance_dir(&k).join("work/.herd/extensions/x/ran").exists());
    assert_eq!(recorded(&d, &k), Some(f(2, 3)));

    // Equal passes and records nothing new; higher passes and is recorded before it acts.
    let outcome = d.run_script(&k, &run, f(2, 3)).await.unwrap();
    assert!(outcome.succeeded(), "{outcome:?}");
    d.set_power(&k, PowerTarget::Stopped, f(4, 3)).await.unwrap();
    assert_eq!(recorded(&d, &k), Some(f(4, 3)));
    drop(d);
    let d = rig.driver();
    assert_fenced(d.set_power(&k, PowerTarget::Running, f(2, 3)).await.unwrap_err(), f(2, 3), f(4, 3));
    d.ensure(&spec(&rig.image, 1), f(4, 5)).await.unwrap();
    assert_eq!(recorded(&d, &k), Some(f(4, 5)));
    // Destroying an orphan checks the term only.
    assert_fenced(d.destroy(&k, Fence::sweep(Term(3))).await.unwrap_err(), Fence::sweep(Term(3)), f(4, 5));
    d.destroy(&k, Fence::sweep(Term(4))).await.unwrap();
    assert!(!d.instance_dir(&k).exists());
}

#[tokio::test]
async fn an_instance_without_a_record_accepts_the_first_call() {
    let rig = Rig::new();
    let (d, k) = rig.created(2, Fence::FIRST).await;
    wait_running(&d, &k).await;
    let dir = d.instance_dir(&k);
    assert!(!dir.join(herd_driver::fence::FENCE_FILE).exists(), "the fence is in the record, not a file of its own");
    // As an instance created before fencing: no fence in the record, no fence file.
    common::edit_record(&dir, |r| r.fence = None);
    let d = rig.driver();
    d.set_power(&k, PowerTarget::Stopped, Fence::new(Term(1), Incarnation::UNRECORDED)).await.unwrap();
    assert_eq!(recorded(&d, &k), Some(Fence::new(Term(1), Incarnation::UNRECORDED)));
    d.set_power(&k, PowerTarget::Running, Fence::FIRST).await.unwrap();
    assert_eq!(recorded(&d, &k), Some(Fence::FIRST));
    // A fence file of an older server that cannot be read refuses every call rather than guess.
    common::edit_record(&dir, |r| r.fence = None);
    std::fs::write(dir.join(herd_driver::fence::FENCE_FILE), "garbage").unwrap();
    let e = d.restart(&k, Fence::FIRST).await.unwrap_err();
    assert!(matches!(e, DriverError::FenceRecord { .. }) && !e.retryable(), "{e:?}");
    std::fs::remove_file(dir.join(herd_driver::fence::FENCE_FILE)).unwrap();
    d.destroy(&k, Fence::FIRST).await.unwrap();
    assert!(d.list().await.unwrap().is_empty());
}

/// A directory of the server before the fence moved into the state record (session 9: a
/// `state` file without a fence, and a `fence` file) keeps its fence: lower calls are refused,
/// equal ones change nothing, and the first raise moves the fence into the record and removes
/// the file. A leftover file (a crash between the two) loses to the record.
#[tokio::test]
async fn a_fence_file_of_an_older_server_is_honoured_and_moved_into_the_record() {
    let rig = Rig::new();
    let (d, k) = rig.created(4, f(2, 3)).await;
    wait_running(&d, &k).await;
    let dir = d.instance_dir(&k);
    let pid = common::recorded_pid(&dir).unwrap();
    common::edit_record(&dir, |r| r.fence = None);
    herd_driver::fence::write_record(&dir, f(2, 3)).unwrap();

    let d = rig.driver();
    assert_fenced(d.set_power(&k, PowerTarget::Stopped, f(2, 2)).await.unwrap_err(), f(2, 2), f(2, 3));
    d.ensure(&spec(&rig.image, 4), f(2, 3)).await.unwrap();
    assert_eq!(common::recorded_pid(&dir), Some(pid), "re-adopted, not restarted");
    assert_eq!(recorded(&d, &k), None, "an equal fence moves nothing");
    assert!(dir.join(herd_driver::fence::FENCE_FILE).exists());

    d.set_power(&k, PowerTarget::Stopped, f(3, 3)).await.unwrap();
    assert_eq!(recorded(&d, &k), Some(f(3, 3)));
    assert!(!dir.join(herd_driver::fence::FENCE_FILE).exists(), "the file is gone once the record holds the fence");
    assert_fenced(d.set_power(&k, PowerTarget::Running, f(2, 3)).await.unwrap_err(), f(2, 3), f(3, 3));

    // A file left by a crash between the record's write and the file's removal: the record wins.
    herd_driver::fence::write_record(&dir, f(9, 9)).unwrap();
    d.set_power(&k, PowerTarget::Running, f(3, 3)).await.unwrap();
    wait_running(&d, &k).await;
    d.destroy(&k, f(3, 3)).await.unwrap();
    assert!(!dir.exists());
}

/// Error kinds the reconciler's backoff relies on: an image directory that is gone is
/// permanent; a wrong kind of image is an invalid spec; neither leaves anything behind.
#[tokio::test]
async fn a_missing_image_is_permanent() {
    let rig = Rig::new();
    let d = rig.driver();
    let gone = spec(&rig.image.join("gone"), 3);
    let e = d.ensure(&gone, Fence::FIRST).await.unwrap_err();
    assert!(matches!(&e, DriverError::ImageUnavailable { .. }) && !e.retryable(), "{e:?}");
    assert!(e.to_string().contains("init"), "{e}");
    let mut disk = spec(&rig.image, 3);
    disk.image = ImageSource::Disk { path: "/x.qcow2".into(), format: "qcow2".into() };
    let e = d.reimage(&disk, Fence::FIRST).await.unwrap_err();
    assert!(matches!(&e, DriverError::InvalidSpec { .. }) && !e.retryable(), "{e:?}");
    assert!(!d.instance_dir(&key(3)).exists());
}
