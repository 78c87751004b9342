//! The QEMU driver's building blocks: real VMs are herd's reason to exist.
//!
//! - [`accel`]: `auto` picks KVM only if a canary guest actually runs under it, else TCG.
//! - [`disk`]: a qcow2 overlay per instance on the image's read-only disk, and data disks.
//! - [`seed`]: the cloud-init NoCloud seed (`cidata`) as a disk image, built in Rust with no
//!   external tools, so every guest learns its hostname, users and user-data.
//! - [`qmp`]: a small client for the QEMU Machine Protocol over a Unix socket, keeping
//!   asynchronous events apart from command replies (lifecycle: powerdown, stop, quit, status).
//! - [`qga`]: a client for the QEMU guest agent on a virtio-serial channel (exec, file writes),
//!   which runs extensions inside a running VM without a reboot.
//!
//! The `Driver` implementation that ties them to the reconciler comes next.

#![forbid(unsafe_code)]

pub mod accel;
pub mod disk;
pub mod qga;
pub mod qmp;
pub mod seed;
