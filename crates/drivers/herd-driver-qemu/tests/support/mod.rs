//! Helpers the QEMU test files share (`mod support;`): the command line that boots herd's test
//! guest straight from an image directory's kernel, initrd and command line, which both the
//! client tests and the seed tests start before adding their own devices.

use std::path::Path;
use std::process::Command;

/// `qemu-system-x86_64` booting `image` (its `vmlinuz`, `initrd.img` and `cmdline`) under TCG:
/// 256 MiB, one vCPU, no display, no monitor, no reboot, the serial console written to
/// `console_log`. Callers add devices and stdio.
pub fn direct_boot(image: &Path, console_log: &Path) -> Command {
    let cmdline = std::fs::read_to_string(image.join("cmdline")).unwrap();
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-m", "256", "-smp", "1", "-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(image.join("vmlinuz"))
        .arg("-initrd")
        .arg(image.join("initrd.img"))
        .args(["-append", cmdline.trim()])
        .args(["-serial", &format!("file:{}", console_log.display())]);
    qemu
}
