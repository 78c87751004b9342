//! What the host-side drivers (`herd-driver-process`, `herd-driver-qemu`) share.
//!
//! Why: both keep each instance in a directory under their root (`<group>/<set>/<id>`) whose
//! files outlive the server, and both learn whether an instance still runs from `/proc`. The
//! file formats and the `/proc` parsing are the same for both, so they live here once:
//! [`procfs`] (process identity, `stat`, sizes) and [`instance_dir`] (the directory walk, the
//! set directories that spread their instances over the disk, the desired-power and tag files,
//! crash-safe writes, log tails) and [`locks`] (one async lock
//! per instance) and [`slot_file`] (a state file updated in place, atomically, with no new
//! inode per change). Each driver keeps what is its
//! own (process groups and namespaces; QEMU markers, sockets, disks).

pub mod instance_dir;
pub mod locks;
pub mod procfs;
pub mod slot_file;
