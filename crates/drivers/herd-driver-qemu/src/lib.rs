//! The QEMU driver: real VMs are herd's reason to exist.
//!
//! [`QemuDriver`] implements `herd_driver::Driver` with one daemonized QEMU per instance (see
//! the [`driver`] module for the lifecycle, readiness, stopping, host reboots and scripts). Its
//! building blocks:
//!
//! - [`accel`]: `auto` picks KVM only if a canary guest actually runs under it, else TCG.
//! - [`disk`]: a qcow2 overlay per instance on the image's read-only disk, and data disks.
//! - [`seed`]: the cloud-init NoCloud seed (`cidata`) as a disk image, built in Rust with no
//!   external tools, so every guest learns its hostname, users and user-data.
//! - [`qmp`]: a small client for the QEMU Machine Protocol over a Unix socket, keeping
//!   asynchronous events apart from command replies (lifecycle: powerdown, stop, quit, status).
//! - [`qga`]: a client for the QEMU guest agent on a virtio-serial channel (exec, file writes),
//!   which runs extensions inside a running VM without a reboot.
//! - `vm_dir` (the instance directory is the driver's state), `command_line` (QEMU's argv as a
//!   pure function, with the marker that finds our processes in `/proc`) and `procfs` (liveness,
//!   orphans, stats, and who holds a port QEMU could not forward).
//!
//! Why state on disk and QEMU daemonized: a server restart (or crash) must neither stop nor
//! lose a single VM. A new driver on the same root and tag re-adopts every VM from its
//! directory and its QEMU's argv marker, and QEMU processes whose directory is gone are
//! reported as orphans so the reconciler removes them.

#![forbid(unsafe_code)]

pub mod accel;
mod command_line;
pub mod disk;
pub mod driver;
mod procfs;
pub mod qga;
pub mod qmp;
pub mod seed;
mod vm_dir;

pub use accel::Accel;
pub use command_line::MetadataGuestAddress;
pub use driver::{
    QemuConfig, QemuDriver, DEFAULT_BOOT_TIMEOUT, DEFAULT_EXTRA_PORTS, DEFAULT_QEMU, DEFAULT_STOP_TIMEOUT,
    GUEST_COMMAND_FILE, GUEST_EXTENSIONS_DIR, KERNEL_OS_DISK_GB,
};
