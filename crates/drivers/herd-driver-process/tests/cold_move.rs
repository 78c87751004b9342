//! A cold move of a process instance between two drivers (two hosts' roots): the stopped
//! instance's `work/` tree is listed by `state_files` (refused while it runs), copied as the
//! transfer copies it (bytes and modes), and `ensure_moved` on the other driver builds and
//! starts the instance on those files, not on its image.

mod common;

use herd_driver::{Driver, DriverError, Fence, Incarnation, InstanceSpec, ObservedPower, PowerTarget, Term};
use herd_driver_process::ProcessDriver;
use herd_model::sku::SkuSize;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn f(incarnation: u64) -> Fence {
    Fence::new(Term(1), Incarnation(incarnation))
}

/// An image directory whose init counts its boots in `boots.txt`.
fn image(dir: &Path, marker: &str) -> PathBuf {
    let image = dir.join(format!("image-{marker}"));
    std::fs::create_dir_all(&image).unwrap();
    let init = image.join("init");
    std::fs::write(&init, "#!/bin/sh\necho boot >> boots.txt\nexec sleep 300\n").unwrap();
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(image.join("from-image.txt"), marker).unwrap();
    image
}

fn spec(image: &Path) -> InstanceSpec {
    common::dir_spec("move", 1, image, SkuSize { vcpus: 1, memory_mib: 64 }, "127.128.1.1".into())
}

async fn wait_lines(path: &Path, n: usize) {
    let limit = herd_test_support::scaled(Duration::from_secs(15));
    let start = Instant::now();
    while !std::fs::read_to_string(path).is_ok_and(|s| s.lines().count() == n) {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {n} lines in {}", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn power(d: &ProcessDriver, spec: &InstanceSpec) -> Option<ObservedPower> {
    d.list().await.unwrap().into_iter().find(|o| o.key == spec.key).map(|o| o.power)
}

#[tokio::test]
async fn a_stopped_instance_moves_to_another_root_with_its_work_tree_and_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let tag = format!("move-{}", std::process::id());
    let a = ProcessDriver::new(tmp.path().join("a"), tag.clone()).unwrap().with_stop_grace(Duration::from_secs(2));
    let b = ProcessDriver::new(tmp.path().join("b"), tag.clone()).unwrap().with_stop_grace(Duration::from_secs(2));
    let on_a = spec(&image(tmp.path(), "image on a"));
    a.ensure(&on_a, f(1)).await.unwrap();
    let work_a = a.instance_dir(&on_a.key).join("work");
    wait_lines(&work_a.join("boots.txt"), 1).await;
    std::fs::create_dir_all(work_a.join("data/sub")).unwrap();
    std::fs::write(work_a.join("data/sub/db"), "written on a").unwrap();
    std::fs::write(work_a.join("data/tool"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(work_a.join("data/tool"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("sub/db", work_a.join("data/link")).unwrap();

    // Running: its files would change under the copy.
    let e = a.state_files(&on_a.key, f(2)).await.unwrap_err();
    assert!(matches!(&e, DriverError::Failed(m) if m.contains("is running")), "{e}");
    a.set_power(&on_a.key, PowerTarget::Stopped, f(2)).await.unwrap();
    let files = a.state_files(&on_a.key, f(2)).await.unwrap();
    let names: Vec<&str> = files.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["work/boots.txt", "work/data/sub/db", "work/data/tool", "work/from-image.txt", "work/init"]);
    let tool = files.iter().find(|s| s.name == "work/data/tool").unwrap();
    assert_eq!((tool.mode, tool.size), (0o750, 10));
    // A lower fence reads nothing; an absent instance is NotFound.
    assert!(matches!(a.state_files(&on_a.key, f(1)).await, Err(DriverError::Fenced(_))));
    let mut other = on_a.clone();
    other.key = common::key("move", 2);
    assert!(matches!(a.state_files(&other.key, f(1)).await, Err(DriverError::NotFound(_))));

    // The transfer's copy: the bytes, each file's mode, nothing else.
    let staged = tmp.path().join("staged");
    for s in &files {
        let to = staged.join(&s.name);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&s.path, &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(s.mode)).unwrap();
    }
    // The target's own copy of the image differs: the moved work tree is what runs.
    let on_b = InstanceSpec { host: Some("b".into()), ..spec(&image(tmp.path(), "image on b")) };
    b.ensure_moved(&on_b, f(3), &staged).await.unwrap();
    let work_b = b.instance_dir(&on_b.key).join("work");
    wait_lines(&work_b.join("boots.txt"), 2).await;
    assert_eq!(std::fs::read_to_string(work_b.join("data/sub/db")).unwrap(), "written on a");
    assert_eq!(std::fs::read_to_string(work_b.join("from-image.txt")).unwrap(), "image on a");
    let mode = std::fs::metadata(work_b.join("data/tool")).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o750);
    assert_eq!(power(&b, &on_b).await, Some(ObservedPower::Running));
    // The staging tree can go: the instance keeps its files.
    std::fs::remove_dir_all(&staged).unwrap();
    assert_eq!(std::fs::read_to_string(work_b.join("data/sub/db")).unwrap(), "written on a");
    // Repeated (a lost reply): as ensure, nothing is rebuilt or restarted.
    let pid = common::recorded_pid(&b.instance_dir(&on_b.key)).unwrap();
    b.ensure_moved(&on_b, f(3), &staged).await.unwrap();
    assert_eq!(common::recorded_pid(&b.instance_dir(&on_b.key)), Some(pid));
    // The source goes under the move's fence.
    a.destroy(&on_a.key, f(3)).await.unwrap();
    assert!(!a.instance_dir(&on_a.key).exists());
    b.destroy(&on_b.key, f(3)).await.unwrap();
}

#[tokio::test]
async fn a_moved_tree_without_a_runnable_init_is_refused_and_nothing_is_left() {
    let tmp = tempfile::tempdir().unwrap();
    let b = ProcessDriver::new(tmp.path().join("b"), format!("move2-{}", std::process::id())).unwrap();
    let staged = tmp.path().join("staged");
    std::fs::create_dir_all(staged.join("work")).unwrap();
    std::fs::write(staged.join("work/init"), "#!/bin/sh\n").unwrap(); // not executable
    let s = spec(&image(tmp.path(), "b"));
    let e = b.ensure_moved(&s, f(1), &staged).await.unwrap_err();
    assert!(e.to_string().contains("moved work tree"), "{e}");
    assert!(b.list().await.unwrap().is_empty());
    assert!(!b.instance_dir(&s.key).exists());
}
