//! Two clusters' drivers on one instance root (the worst case of two herd servers on one
//! kernel): each lists only the instances whose directory carries its own tag, and refuses to
//! change the other's; a directory without a tag (made before cluster ids) is nobody's until
//! claimed.

mod common;

use herd_driver::{Driver, Fence, InstanceSpec, PowerTarget};
use herd_driver_process::ProcessDriver;
use herd_model::{sku::SkuSize, InstanceKey};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

fn key(id: u64) -> InstanceKey {
    common::key("web", id)
}

fn spec(image: &std::path::Path, id: u64) -> InstanceSpec {
    common::dir_spec("web", id, image, SkuSize { vcpus: 1, memory_mib: 512 }, format!("127.128.0.{}", id + 1))
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|x| x.1.split_whitespace().next().map(|st| st != "Z")))
        .unwrap_or(false)
}

#[tokio::test]
async fn a_driver_never_touches_another_clusters_instances() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("image");
    std::fs::create_dir(&image).unwrap();
    std::fs::write(image.join("init"), "#!/bin/sh\nexec sleep 3600\n").unwrap();
    std::fs::set_permissions(image.join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = tmp.path().join("instances");
    let tag = |c: &str| format!("herd:test-{}-{c}", std::process::id());
    let a = ProcessDriver::new(root.clone(), tag("a")).unwrap().with_stop_grace(Duration::from_secs(1));
    let b = ProcessDriver::new(root.clone(), tag("b")).unwrap().with_stop_grace(Duration::from_secs(1));

    a.ensure(&spec(&image, 0), Fence::FIRST).await.unwrap();
    let pid: u32 = common::recorded_pid(&a.instance_dir(&key(0))).unwrap();
    assert_eq!(common::record(&a.instance_dir(&key(0))).tag.unwrap(), tag("a"));
    assert_eq!(a.list().await.unwrap().len(), 1);
    assert!(b.list().await.unwrap().is_empty(), "b does not list a's instance");
    for (what, r) in [
        ("ensure", b.ensure(&spec(&image, 0), Fence::FIRST).await),
        ("set_power", b.set_power(&key(0), PowerTarget::Stopped, Fence::FIRST).await),
        ("restart", b.restart(&key(0), Fence::FIRST).await),
        ("destroy", b.destroy(&key(0), Fence::FIRST).await),
    ] {
        let e = r.expect_err(what).to_string();
        assert!(e.contains("another herd cluster"), "{what}: {e}");
    }
    assert!(alive(pid), "a's instance still runs");
    assert!(a.instance_dir(&key(0)).exists());

    // A directory without a tag (older than cluster ids) is nobody's until claimed.
    common::edit_record(&a.instance_dir(&key(0)), |r| r.tag = None);
    assert!(a.list().await.unwrap().is_empty() && b.list().await.unwrap().is_empty());
    assert!(a.destroy(&key(0), Fence::FIRST).await.is_err(), "an untagged directory is not destroyed");
    assert!(alive(pid));
    assert!(a.claim_unstamped(&key(0)).unwrap(), "claimed by a");
    assert!(!b.claim_unstamped(&key(0)).unwrap(), "a tagged directory is not claimed again");
    assert_eq!(a.list().await.unwrap().len(), 1);
    a.destroy(&key(0), Fence::FIRST).await.unwrap();
    assert!(!alive(pid), "destroyed by its own cluster");
}
