//! A cold move of a real VM between two QEMU drivers (two hosts' roots), under TCG, booting
//! herd's test guest from its boot disk (`disk.qcow2`, see tests/driver.rs): what the guest
//! wrote to its OS disk (the overlay) and to its data disk is there after the move; the moved
//! overlay is rebased onto the target's own copy of the image; `state_files` is refused while
//! QEMU runs and names the overlay, the data disk and `spec.json`; a repeated `ensure_moved`
//! changes nothing. Every deadline is multiplied by `HERD_TEST_TIME_SCALE`; a guard kills
//! every QEMU of the test's tags when it ends.

use herd_driver::{
    DataDisk, Driver, DriverError, Fence, GuestSetup, Incarnation, InstanceSpec, ObservedPower, PowerTarget, Term,
};
use herd_driver_qemu::qga::Qga;
use herd_driver_qemu::{QemuConfig, QemuDriver};
use herd_model::image::ImageSource;
use herd_model::sku::SkuSize;
use herd_model::InstanceKey;
use herd_test_support::scaled;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(180);
/// The OS disk in the guest (the virtio disk with a partition), as in tests/driver.rs.
const FIND_OS_DISK: &str =
    "for b in /sys/block/vd*; do [ -e $b/${b##*/}1 ] && dev=/dev/${b##*/}; done; [ -b \"$dev\" ] || exit 9";
/// The data disk (serial `herd-lun-0`).
const FIND_LUN0: &str =
    "for b in /sys/block/vd*; do [ \"$(cat $b/serial 2>/dev/null)\" = herd-lun-0 ] && dev=/dev/${b##*/}; done; [ -b \"$dev\" ] || exit 9";
/// A sector of the boot disk's gap before its partition: writing it keeps the disk bootable.
const GAP_SECTOR: u64 = 100;

fn f(incarnation: u64) -> Fence {
    Fence::new(Term(1), Incarnation(incarnation))
}

/// `$HERD_TESTGUEST_OUT`, brought up to date by the cached `build.sh`.
fn testguest_out() -> PathBuf {
    let out = herd_test_support::testguest_dir();
    let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../images/testguest/build.sh");
    let built = Command::new(&build).arg(&out).stdout(Stdio::null()).stderr(Stdio::null()).status();
    let have = out.join("1.0.0/disk.qcow2").is_file();
    match built {
        Ok(s) if s.success() => {}
        _ if have => eprintln!("warning: {} failed; using the images as they are", build.display()),
        other => panic!("{} {} failed: {other:?}", build.display(), out.display()),
    }
    out
}

/// Kills every QEMU of its drivers' tags when dropped (printing their consoles' ends on failure).
struct Guard(Vec<QemuConfig>);

impl Drop for Guard {
    fn drop(&mut self) {
        for cfg in &self.0 {
            let Ok(d) = QemuDriver::new(cfg.clone()) else { continue };
            if std::thread::panicking() {
                for k in d.processes().into_iter().map(|(k, _)| k) {
                    let text = std::fs::read_to_string(d.instance_dir(&k).join("console.log")).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().rev().take(25).collect();
                    eprintln!(
                        "----- {k} on {} -----\n{}",
                        cfg.root.display(),
                        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
            }
            for (_, pid) in d.processes() {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
        }
    }
}

fn spec(key: &InstanceKey, image: &Path, host: &str) -> InstanceSpec {
    InstanceSpec {
        key: key.clone(),
        computer_name: "tgmove000001".into(),
        image: ImageSource::Disk { path: image.display().to_string(), format: "qcow2".into() },
        size: SkuSize { vcpus: 1, memory_mib: 256 },
        reach_address: "127.200.9.1".into(),
        model_generation: 1,
        admin_username: "azureuser".into(),
        custom_data: None,
        metadata: BTreeMap::new(),
        network: None,
        guest: GuestSetup {
            ssh_public_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHerdTestKeyOnly test@herd".into()],
            admin_password_hash: None,
            data_disks: vec![DataDisk { lun: 0, size_gb: 1 }],
            forward_ports: Vec::new(),
            guest_agent: Some(true),
        },
        metadata_endpoint: None,
        host: Some(host.into()),
    }
}

async fn wait_running(d: &QemuDriver, k: &InstanceKey) {
    let limit = scaled(BOOT);
    let deadline = Instant::now() + limit;
    loop {
        let p = d.list().await.unwrap().into_iter().find(|o| o.key == *k).map(|o| o.power);
        assert!(!matches!(p, Some(ObservedPower::Failed(_) | ObservedPower::Stopped)), "{k}: {p:?} while booting");
        if p == Some(ObservedPower::Running) {
            return;
        }
        assert!(Instant::now() < deadline, "{k}: still {p:?} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a shell command in the guest through its agent; (exit code, stdout).
async fn guest_sh(d: &QemuDriver, k: &InstanceKey, script: &str) -> (Option<i64>, String) {
    let qga = Qga::wait_ready(&d.qga_socket(k), scaled(Duration::from_secs(30))).await.expect("guest agent");
    let st = qga.run("/bin/sh", &["-c", script], &[] as &[&str], None, scaled(Duration::from_secs(30))).await.unwrap();
    (st.exitcode, String::from_utf8_lossy(&st.stdout).into_owned())
}

fn backing_of(disk: &Path) -> String {
    let out = Command::new("qemu-img").args(["info", "-U", "--output", "json"]).arg(disk).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["backing-filename"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_vm_moves_with_its_os_overlay_and_data_disk() {
    let out = testguest_out();
    let tmp = tempfile::Builder::new().prefix("herd-qemu-move.").tempdir().unwrap();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let cfg = |host: &str| {
        let mut c =
            QemuConfig::new(tmp.path().join(host), format!("herd-test:move-{host}:{}:{nanos}", std::process::id()));
        c.stop_timeout = Duration::from_secs(60);
        c
    };
    let (ca, cb) = (cfg("a"), cfg("b"));
    let _guard = Guard(vec![ca.clone(), cb.clone()]);
    let (a, b) = (QemuDriver::new(ca).unwrap(), QemuDriver::new(cb).unwrap());
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:6.1}s] {what}", t0.elapsed().as_secs_f64());
    // Each host has its own copy of the gallery image (same content, another path).
    let image_a = out.join("1.0.0/disk.qcow2");
    let image_b = tmp.path().join("gallery-b/disk.qcow2");
    std::fs::create_dir_all(image_b.parent().unwrap()).unwrap();
    std::fs::copy(&image_a, &image_b).unwrap();
    let k = InstanceKey::parse_path("rg/move/1").unwrap();

    let on_a = spec(&k, &image_a, "a");
    a.ensure(&on_a, f(1)).await.unwrap();
    wait_running(&a, &k).await;
    step("Running on a");
    let (os_mark, data_mark) = ("herd-moved-os-marker", "herd-moved-data-marker");
    let write = format!(
        "{FIND_OS_DISK}; printf {os_mark} | dd of=$dev bs=512 seek={GAP_SECTOR} conv=sync,fsync 2>/dev/null || exit 3; \
         {FIND_LUN0}; printf {data_mark} | dd of=$dev bs=512 conv=sync,fsync 2>/dev/null"
    );
    assert_eq!(guest_sh(&a, &k, &write).await.0, Some(0), "writing both disks in the guest");

    let e = a.state_files(&k, f(2)).await.unwrap_err();
    assert!(matches!(&e, DriverError::Failed(m) if m.contains("is running")), "{e}");
    a.set_power(&k, PowerTarget::Stopped, f(2)).await.unwrap();
    step("stopped on a");
    let files = a.state_files(&k, f(2)).await.unwrap();
    let names: Vec<&str> = files.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["os.qcow2", "data-0.qcow2", "spec.json"]);
    // The transfer's copy: bytes and modes.
    let staged = tmp.path().join("staged");
    std::fs::create_dir_all(&staged).unwrap();
    for s in &files {
        std::fs::copy(&s.path, staged.join(&s.name)).unwrap();
        std::fs::set_permissions(staged.join(&s.name), std::fs::Permissions::from_mode(s.mode)).unwrap();
    }

    let on_b = spec(&k, &image_b, "b");
    b.ensure_moved(&on_b, f(2), &staged).await.unwrap();
    let os_b = b.instance_dir(&k).join("os.qcow2");
    assert_eq!(backing_of(&os_b), image_b.display().to_string(), "rebased onto b's copy of the image");
    std::fs::remove_dir_all(&staged).unwrap();
    wait_running(&b, &k).await;
    step("Running on b");
    let read = format!(
        "{FIND_OS_DISK}; dd if=$dev bs=512 skip={GAP_SECTOR} count=1 2>/dev/null | tr -d '\\000'; echo; \
         {FIND_LUN0}; dd if=$dev bs=512 count=1 2>/dev/null | tr -d '\\000'"
    );
    let (rc, said) = guest_sh(&b, &k, &read).await;
    assert_eq!((rc, said.as_str()), (Some(0), format!("{os_mark}\n{data_mark}").as_str()));
    let (_, host) = guest_sh(&b, &k, "hostname").await;
    assert_eq!(host.trim(), "tgmove000001");
    // Repeated (a lost reply): the running VM is kept.
    let pid = b.pid(&k).unwrap();
    step("checked through the agent");
    b.ensure_moved(&on_b, f(2), tmp.path()).await.unwrap();
    assert_eq!(b.pid(&k), Some(pid));
    step("the disks' contents moved");

    a.destroy(&k, f(2)).await.unwrap();
    assert!(!a.instance_dir(&k).exists());
    b.destroy(&k, f(2)).await.unwrap();
    assert!(b.processes().is_empty());
    step("destroyed on both");
}
