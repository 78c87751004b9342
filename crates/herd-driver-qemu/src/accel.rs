//! Choosing the accelerator: `auto` decides with a canary boot, not by the presence of
//! `/dev/kvm`. On some hosts `/dev/kvm` exists but guests hang under it (this project's CI
//! machines are such hosts), so the only honest test is to run guest code.
//!
//! The canary is a 512-byte boot sector whose code writes to QEMU's `isa-debug-exit` port;
//! QEMU then exits with status `(value << 1) | 1`. If that happens within the timeout under
//! KVM, KVM works; otherwise herd uses TCG. The answer is cached for the server's lifetime.

use std::path::Path;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

/// An accelerator QEMU can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The value the canary writes; QEMU exits with `(CANARY_VALUE << 1) | 1`.
const CANARY_VALUE: u8 = 0x21;

/// The canary boot sector: `mov al, 0x21; out 0xf4, al; cli; hlt; jmp $-1`, padded, 0x55AA.
pub fn canary_image() -> [u8; 512] {
    let mut img = [0u8; 512];
    let code = [0xB0, CANARY_VALUE, 0xE6, 0xF4, 0xFA, 0xF4, 0xEB, 0xFD];
    img[..code.len()].copy_from_slice(&code);
    img[510] = 0x55;
    img[511] = 0xAA;
    img
}

/// Boots the canary under `accel` and reports whether it ran to its exit within `timeout`.
pub async fn canary_passes(qemu: &Path, accel: Accel, dir: &Path, timeout: Duration) -> bool {
    let disk = dir.join(format!("accel-canary-{}.img", accel.as_str()));
    if std::fs::write(&disk, canary_image()).is_err() {
        return false;
    }
    let child = tokio::process::Command::new(qemu)
        .args(["-accel", accel.as_str(), "-nodefaults", "-display", "none", "-no-reboot", "-m", "16"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=ide", disk.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let Ok(mut child) = child else { return false };
    let passed = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status.code() == Some(i32::from(CANARY_VALUE) << 1 | 1),
        _ => {
            let _ = child.kill().await;
            false
        }
    };
    let _ = std::fs::remove_file(&disk);
    passed
}

/// `auto`: KVM if the canary runs under it, else TCG. Decided once per process.
pub async fn auto(qemu: &Path, dir: &Path) -> Accel {
    static CHOICE: OnceLock<Accel> = OnceLock::new();
    if let Some(a) = CHOICE.get() {
        return *a;
    }
    let kvm_usable =
        Path::new("/dev/kvm").exists() && canary_passes(qemu, Accel::Kvm, dir, Duration::from_secs(3)).await;
    let choice = if kvm_usable { Accel::Kvm } else { Accel::Tcg };
    tracing::info!(accel = choice.as_str(), "accelerator chosen by canary boot");
    *CHOICE.get_or_init(|| choice)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canary_is_a_boot_sector() {
        let img = canary_image();
        assert_eq!(&img[510..], &[0x55, 0xAA]);
        assert_eq!(&img[..4], &[0xB0, CANARY_VALUE, 0xE6, 0xF4]);
    }

    #[tokio::test]
    async fn the_canary_runs_under_tcg_and_auto_decides_within_the_timeout() {
        let q = herd_test_support::require_tool("qemu-system-x86_64", "qemu-system-x86");
        let dir = tempfile::tempdir().unwrap();
        assert!(
            canary_passes(&q, Accel::Tcg, dir.path(), herd_test_support::scaled(Duration::from_secs(20))).await,
            "TCG runs the canary to its exit"
        );
        let start = std::time::Instant::now();
        let choice = auto(&q, dir.path()).await;
        assert!(
            start.elapsed() < herd_test_support::scaled(Duration::from_secs(10)),
            "auto never waits past its canary timeout"
        );
        if !Path::new("/dev/kvm").exists() {
            assert_eq!(choice, Accel::Tcg);
        }
        assert_eq!(auto(&q, dir.path()).await, choice, "the answer is cached");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "no canary disk is left behind");
    }
}
