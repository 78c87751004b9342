//! Choosing the accelerator: `auto` decides with a canary boot, not by the presence of
//! `/dev/kvm`. On some hosts `/dev/kvm` exists but guests hang under it (this project's CI
//! machines are such hosts), so the only honest test is to run guest code.
//!
//! The canary is a 512-byte boot sector that does what every guest kernel does first: it
//! enters 32-bit protected mode, turns paging on (one identity-mapped 4 MiB page), and only
//! then writes to QEMU's `isa-debug-exit` port; QEMU exits with status `(value << 1) | 1`. If
//! that happens within the timeout under KVM, KVM works; otherwise herd uses TCG. The answer is
//! cached for the server's lifetime.
//!
//! Why paging: on hosts with a broken nested KVM (seen on this project's machines with QEMU
//! 10), a real-mode canary that only writes the port passes, but enabling paging triple-faults
//! and no kernel ever boots. A canary that stops short of paging chose KVM there and every VM
//! then hung at boot.

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

/// Where the BIOS loads a boot sector.
const BOOT_ADDR: u16 = 0x7c00;

/// The canary boot sector (16-bit real mode at 0x7c00, hand-assembled):
///
/// ```text
///   cli; xor ax,ax; mov ds,ax; lgdt [gdt_desc]
///   mov eax,cr0; or eax,1; mov cr0,eax; jmp 0x08:pm          ; protected mode
/// pm: (32-bit) mov ax,0x10; mov ds,ax; mov es,ax
///   mov dword [0x1000], 0x83                                 ; PDE 0: 4 MiB page at 0, present, rw
///   mov eax,cr4; or eax,0x10; mov cr4,eax                    ; PSE
///   mov eax,0x1000; mov cr3,eax
///   mov eax,cr0; or eax,0x80000000; mov cr0,eax; jmp $+2     ; paging on
///   mov al,CANARY_VALUE; out 0xf4,al; hlt; jmp $-1
/// gdt: null, code 0x08 (flat 4 GiB, 32-bit), data 0x10 (flat 4 GiB); gdt_desc: limit, base
/// ```
pub fn canary_image() -> [u8; 512] {
    let mut code: Vec<u8> = vec![0xFA, 0x31, 0xC0, 0x8E, 0xD8];
    let lgdt_at = code.len();
    code.extend([0x0F, 0x01, 0x16, 0, 0]); // lgdt [disp16], patched below
    code.extend([0x0F, 0x20, 0xC0, 0x66, 0x83, 0xC8, 0x01, 0x0F, 0x22, 0xC0]);
    let jmp_at = code.len();
    code.extend([0xEA, 0, 0, 0x08, 0x00]); // jmp 0x08:pm, offset patched below
    let pm = code.len();
    code.extend([0x66, 0xB8, 0x10, 0x00, 0x8E, 0xD8, 0x8E, 0xC0]);
    code.extend([0xC7, 0x05, 0x00, 0x10, 0x00, 0x00, 0x83, 0x00, 0x00, 0x00]);
    code.extend([0x0F, 0x20, 0xE0, 0x83, 0xC8, 0x10, 0x0F, 0x22, 0xE0]);
    code.extend([0xB8, 0x00, 0x10, 0x00, 0x00, 0x0F, 0x22, 0xD8]);
    code.extend([0x0F, 0x20, 0xC0, 0x0D, 0x00, 0x00, 0x00, 0x80, 0x0F, 0x22, 0xC0, 0xEB, 0x00]);
    code.extend([0xB0, CANARY_VALUE, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD]);
    while !code.len().is_multiple_of(8) {
        code.push(0x90);
    }
    let gdt = code.len();
    for descriptor in [0u64, 0x00CF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF] {
        code.extend(descriptor.to_le_bytes());
    }
    let gdt_desc = code.len();
    code.extend(23u16.to_le_bytes());
    code.extend(u32::from(BOOT_ADDR + gdt as u16).to_le_bytes());
    code[lgdt_at + 3..lgdt_at + 5].copy_from_slice(&(BOOT_ADDR + gdt_desc as u16).to_le_bytes());
    code[jmp_at + 1..jmp_at + 3].copy_from_slice(&(BOOT_ADDR + pm as u16).to_le_bytes());
    let mut img = [0u8; 512];
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
        let has = |seq: &[u8]| img.windows(seq.len()).any(|w| w == seq);
        assert!(has(&[0x0F, 0x22, 0xE0]), "sets CR4 (PSE)");
        assert!(has(&[0x0D, 0x00, 0x00, 0x00, 0x80, 0x0F, 0x22, 0xC0]), "turns paging on (CR0.PG)");
        assert!(has(&[0xB0, CANARY_VALUE, 0xE6, 0xF4]), "then writes the canary to the exit port");
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
