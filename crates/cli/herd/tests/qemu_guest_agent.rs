//! A disk image imported without `--guest-agent` whose guest runs the QEMU guest agent (herd's
//! test guest as a bootable disk): herd detects the agent at the first boot and records it on
//! the image version, and a Custom Script then runs in place through it, with no re-import and
//! no reboot.
//!
//! Needs the test guest (`images/testguest/build.sh`; `HERD_TESTGUEST_OUT`, default
//! `target/testguest`).

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(240);

fn testguest_disk() -> PathBuf {
    let out = std::env::var_os("HERD_TESTGUEST_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../target/testguest"));
    let disk = out.join("1.0.0/disk.qcow2");
    assert!(
        disk.is_file(),
        "the test guest's disk is missing at {}: run images/testguest/build.sh {} (or set HERD_TESTGUEST_OUT)",
        disk.display(),
        out.display()
    );
    disk
}

#[test]
fn a_disk_images_guest_agent_is_detected_at_first_boot_and_runs_the_custom_script() {
    let disk = testguest_disk();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let _guard = VmGuard(data.clone());
    let config = "[qemu]\nboot_timeout_secs = 240\nstop_timeout_secs = 20\n";
    let s = Server::start_logged("qemu", &data, Some(config), "info");
    let urn = "Herd:TestGuestDisk:1:1.0.0";
    let img = s.json(&["image", "import", "--urn", urn, "--disk", disk.to_str().unwrap()]);
    assert_eq!(img["guestAgent"], Value::Null, "not said, not known yet: {img}");

    s.ok(&["group", "create", "-n", "ga-rg"]);
    s.ok(&[words("vmss create -g ga-rg -n web --image"), vec![urn], words("--instance-count 1 --vm-sku Standard_B1ms --disable-overprovision --upgrade-policy-mode Manual --quiet --timeout 300")].concat());
    let recorded = wait_for("the guest agent to be recorded on the image", BOOT, || {
        let v = s.json(&["image", "show", "--urn", urn]);
        (v["guestAgent"] == true).then_some(v)
    });
    assert_eq!(recorded["source"]["kind"], "disk", "{recorded}");
    assert!(s.log_text().contains("guest agent detected"), "the server logs the detection");
    let pids = qemu_pids(&data);
    assert_eq!(pids.len(), 1, "one VM");

    // A Custom Script now runs in place through the detected agent: no reimage, same QEMU.
    let settings = serde_json::json!({"commandToExecute": "echo ran-through-the-agent; cat /etc/herd-image-version"});
    s.ok(&[words("vmss extension set -g ga-rg --vmss-name web --name CustomScript --publisher Microsoft.Azure.Extensions --version 2.0 --settings"), vec![&settings.to_string()]].concat());
    s.ok(&["vmss", "update-instances", "-g", "ga-rg", "-n", "web", "--instance-ids", "*", "--timeout", "300"]);
    let inst = wait_for("the Custom Script to finish", BOOT, || {
        let all = s.json(&["vmss", "list-instances", "-g", "ga-rg", "-n", "web"]);
        let i = all.as_array()?.first()?.clone();
        let state = i["extensions"][0]["state"].as_str()?.to_string();
        (state != "Transitioning" && i["pendingAction"].is_null()).then_some(i)
    });
    let ext = &inst["extensions"][0];
    assert_eq!(ext["state"], "Succeeded", "{ext}");
    let msg = ext["message"].as_str().unwrap_or_default();
    assert!(msg.contains("ran-through-the-agent") && msg.contains("1.0.0"), "{msg}");
    assert_eq!(qemu_pids(&data), pids, "the script ran in place: same QEMU, no reimage");
    let view = s.json(
        &[words("vmss get-instance-view -g ga-rg -n web --instance-id"), vec![inst["instanceId"].as_str().unwrap()]]
            .concat(),
    );
    assert!(view["statuses"].as_array().unwrap().iter().any(|st| st["code"] == "GuestAgent/ready"), "{view}");

    s.ok(&["vmss", "delete", "-g", "ga-rg", "-n", "web", "--timeout", "300"]);
    assert!(qemu_pids(&data).is_empty(), "the VM is gone");
}
