//! The QEMU driver: every instance is a real VM, a daemonized QEMU process with its own disks.
//!
//! All state lives in the instance directory (the `vm_dir` module lists its files), none in
//! memory that matters: a new `QemuDriver` on the same root and tag re-adopts running VMs
//! through their `pid` files and argv markers and restarts nothing. QEMU is started with `-daemonize`, so it
//! is not the server's child and survives a server crash or restart; it reports whether the VM
//! could be set up (e.g. a forwarded port already taken) before it detaches, which makes a start
//! synchronous and its errors precise.
//!
//! # Lifecycle of one instance
//!
//! ```text
//!            ensure / reimage                  guest ready (agent answers guest-ping,
//!   absent ─────────────────▶ starting ──────── or a ready line on the console) ──▶ running
//!                              │    │                                                │
//!      start failed, or QEMU   │    │ boot_timeout passed                QEMU exited │
//!      exited before ready     ▼    ▼ (reported Failed; Running if it gets ready)    │
//!                              failed ◀──────────────────────────────────────────────┘
//!                                 │
//!   starting / running ── set_power(Stopped | Deallocated) ──▶ stopped (disks kept)
//!   stopped / failed ──── ensure, set_power(Running), restart, reimage ──▶ starting
//!   any state ─────────── destroy ──▶ absent (QEMU killed, directory removed)
//! ```
//!
//! `list` reports `Starting` until the guest is ready, `Running` once it is, `Stopped` for
//! stopped and deallocated instances, and `Failed(reason)` when the desired power is running
//! but QEMU is gone (with the last line QEMU or the console printed), when the start failed, or
//! when the guest did not get ready within `boot_timeout`. A directory whose `tag` file names
//! another cluster is not listed and never changed (one without a `tag` predates cluster ids
//! and is ours). QEMU processes that carry our tag's
//! marker but have no directory are orphans: reported `Running` under their key, so the
//! reconciler destroys them.
//!
//! # Fencing
//!
//! Every acting call first checks its fence (`herd_driver::fence`) under the instance's lock:
//! one with a lower term or incarnation than the `fence` file in the instance directory records
//! is refused with `DriverError::Fenced` before anything happens, and a higher one is recorded
//! (atomically and durably) before the call acts, so the record survives a server restart. A
//! new instance's directory holds its `fence` before it appears under its name; a directory
//! without one (made before fencing) accepts the first call and records it. `destroy` removes the
//! record with the directory. `resume_after_host_reboot` is the driver's own act, not a caller's,
//! and carries no fence; on a joined host the agent calls it only for the instances the
//! server's acknowledgement lists as the host's (`resume_after_reboot`), so a VM moved away
//! while the host was down never starts again.
//!
//! # Disks and the seed
//!
//! A disk image gets a qcow2 overlay per instance (`os.qcow2`, backed by the read-only image);
//! a kernel image (direct boot) gets an empty thin OS disk of its own ([`KERNEL_OS_DISK_GB`]).
//! Data disks (`data-<lun>.qcow2`) are created when missing and survive reimages; one the spec
//! no longer names is kept on disk but not attached. The NoCloud seed carries the computer
//! name, the admin user (SSH keys, password hash), custom data and a network-config matching
//! the NIC's MAC (stable, derived from the key); its `instance-id` changes with every reimage.
//! `reimage` replaces `os.qcow2` and the seed and keeps the rest; `stop` and `start` keep all.
//!
//! # Readiness
//!
//! `list` is called every 50 ms while the reconciler is busy, so it only reads directories and
//! `/proc`. Waiting for a guest is the job of one background task per booting VM, which writes
//! the `ready` file naming the QEMU it saw ready (a new boot is a new QEMU, so readiness resets
//! by itself). With `guest_agent`, ready means the agent answers `guest-ping`; without, a line
//! on the serial console since this boot: `HERD-GUEST-READY` (herd's test guest) or
//! cloud-init's `Cloud-init v. … finished at …`. A new driver starts these tasks lazily from
//! `list` for adopted VMs that are not ready yet.
//!
//! When the image's agent is not known (`guest_agent: None`, e.g. a disk imported without
//! `--guest-agent`), the task detects it ([`Readiness::Detect`]): ready is whichever comes
//! first, the console line or an agent answer, and `guest-ping` is probed on until the boot
//! deadline (`boot_timeout` after QEMU started). The first answer is recorded in the
//! instance's `guest-agent` file and reported by [`Driver::guest_agents_answered`], so the
//! reconciler records it on the image. No answer records nothing: a slow agent is not an
//! absent one. A script on such an instance waits for the agent up to its own timeout.
//!
//! # Stopping
//!
//! The guest gets the ACPI power button (QMP `system_powerdown`) and `stop_timeout` to power
//! off (a guest that ignores the button, e.g. one still booting, costs the whole timeout); then
//! QMP `quit`, and SIGKILL if QEMU is still there. Disks are kept. `destroy` skips the button.
//!
//! # Host reboots
//!
//! The `boot-id` file records the host's boot id at each start. After a reboot, every VM whose
//! desired power is running is down; [`QemuDriver::resume_after_host_reboot`] starts those
//! that were started under another boot id (the server's own machine, at start). A joined
//! host's agent waits for the server's word instead: [`QemuDriver::down_after_host_reboot`]
//! lists them, and [`QemuDriver::resume_after_reboot`] starts those the server's first
//! acknowledgement lists (see `herd_agent::reboot`). A QEMU that died under the current boot id crashed
//! (or was killed): it stays `Failed` for the reconciler to repair.
//!
//! # Scripts (extensions)
//!
//! Through the guest agent: the files go to `/var/lib/herd/extensions/<name>/`, the command to
//! `.herd-command` there (mode 0600), and `/bin/sh ./.herd-command` runs in that directory in
//! its own session (`setsid`, so a timeout kills its whole process group). The command never
//! appears in any argv, on the host or in the guest, nor in any log; `.herd-command` is removed
//! afterwards. Output is captured by the agent until the script's stdout and stderr close:
//! background processes a script starts must not keep them open. Nothing is written to a file
//! in the guest but the files and the command.
//!
//! Across a server crash: once the agent gives the script's pid, the run is recorded in the
//! VM's `script-run` (name, identity, pid, deadline). The next `run_script` looks there first:
//! the same run (name and identity) still known to the agent is adopted (waited for until its
//! own deadline; its exit code and output taken from `guest-exec-status`); another run still
//! going is killed (its process group in the guest) before the new one starts. A pid the
//! agent does not know (the VM rebooted) means the run is gone. (The one window left: a crash
//! between `guest-exec` returning and the record being written.)
//!
//! The rule, as the adoption decides it from the record and `guest-exec-status`:
//!
//! ```text
//!  record?  agent knows pid?  same run?  still going?   ->
//!  no       -                 -          -                 start the new run
//!  yes      no                -          -                 start the new run (the old one is gone)
//!  yes      yes               yes        either            adopt: wait, take its outcome; no new run
//!  yes      yes               no         yes               kill its group, wait until reaped, start
//!  yes      yes               no         no                start the new run
//! ```
//!
//! So a cut run is either adopted or killed, never doubled, and a run is started at most once
//! per call. The record is written when the agent gives the pid, which may be before the
//! guest's shell has reached the script's first line: a run adopted then still starts exactly
//! once (the adopter waits for it), and a run killed then never runs its command at all.

use crate::accel::Accel;
use crate::command_line::{self, forwarded_ports, mac_for, marker_prefix};
use crate::disk;
use crate::procfs::{self, ProcId};
use crate::qga::{ExecStatus, GuestCommand, Qga};
use crate::qmp::Qmp;
use crate::seed::{self, SeedFiles, UserDataInput};
use crate::vm_dir::{self, remove_tree, walk, PidRecord, Power, ScriptRunRecord, VmDir, VmSpec};
use async_trait::async_trait;
use herd_driver::host::locks::InstanceLocks;
use herd_driver::{
    keep_tail, Driver, DriverError, Fence, InstanceSpec, InstanceStats, NetworkAttachment, ObservedInstance,
    ObservedPower, PowerTarget, ScriptOutcome, ScriptRun, SCRIPT_OUTPUT_TAIL,
};
use herd_hostnet::{HostNet, Reservation};
use herd_model::image::ImageSource;
use herd_model::InstanceKey;
use nix::sys::signal::Signal;
use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where QEMU usually is.
pub const DEFAULT_QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// How long a guest gets to power off after the ACPI power button.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a guest may take from QEMU's start to ready before it is reported failed.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Guest ports forwarded for every instance besides the spec's.
pub const DEFAULT_EXTRA_PORTS: &[u16] = &[80];
/// Size of the empty OS disk of a kernel-image instance (thin: it takes no space up front).
pub const KERNEL_OS_DISK_GB: u32 = 4;
/// Where a script's files go in the guest (`<dir>/<extension name>/`).
pub const GUEST_EXTENSIONS_DIR: &str = "/var/lib/herd/extensions";
/// The file in the extension directory that holds the command while it runs.
pub const GUEST_COMMAND_FILE: &str = ".herd-command";

/// Bound on QEMU setting the VM up (until the daemonizing parent exits).
const QEMU_START_TIMEOUT: Duration = Duration::from_secs(60);
const QMP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const QMP_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// After a clean power-off QEMU exits by itself; this long at most.
const EXIT_AFTER_POWEROFF: Duration = Duration::from_secs(10);
const EXIT_AFTER_QUIT: Duration = Duration::from_secs(5);
const EXIT_AFTER_KILL: Duration = Duration::from_secs(5);
/// How long a start waits for the instance's previous QEMU to finish exiting.
const PREVIOUS_EXIT_WAIT: Duration = Duration::from_secs(20);
/// How long `run_script` waits for the agent to answer (it may just have been released by the
/// readiness task).
const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one try of the agent detection probe (connect, sync, `guest-ping`).
const AGENT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on each setup step of a script run (mkdir, one file, removing the command).
/// Bound on each guest-agent call made for `stats` (connect, then the interface list): the
/// autoscaler samples every instance in turn, so a busy or silent agent must not hold it up.
const STATS_AGENT_TIMEOUT: Duration = Duration::from_secs(2);

const AGENT_STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// After killing a timed-out script, how long to wait for the agent to report it gone.
const SCRIPT_KILL_WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);
/// How often a readiness task looks at the console, and whether QEMU and the driver live.
const READY_POLL: Duration = Duration::from_millis(250);
/// Longest line quoted in a `Failed` status.
const MAX_QUOTED: usize = 200;

/// How a [`QemuDriver`] runs VMs.
#[derive(Debug, Clone, PartialEq)]
pub struct QemuConfig {
    /// The directory holding every instance directory (created if absent).
    pub root: PathBuf,
    /// Unique per server data directory; marks this driver's QEMU processes (hashed into their
    /// argv, so any string will do).
    pub tag: String,
    /// The `qemu-system-x86_64` binary.
    pub qemu: PathBuf,
    /// KVM or TCG (see [`crate::accel::auto`] to choose by a canary boot).
    pub accel: Accel,
    /// How long a guest gets to power off after the ACPI power button (then QEMU is quit).
    pub stop_timeout: Duration,
    /// How long a guest may take to get ready before `list` reports it failed.
    pub boot_timeout: Duration,
    /// Guest TCP ports forwarded for every instance, besides the spec's `forward_ports`.
    pub extra_ports: Vec<u16>,
    /// The herd executable, run as `herd metadata-relay ADDR` by QEMU for each guest
    /// connection to the metadata address; `None`: VMs get no metadata endpoint.
    pub metadata_relay: Option<PathBuf>,
    /// Where guests reach the metadata endpoint.
    pub metadata_address: crate::command_line::MetadataGuestAddress,
}

impl QemuConfig {
    /// The defaults: [`DEFAULT_QEMU`], TCG, [`DEFAULT_STOP_TIMEOUT`], [`DEFAULT_BOOT_TIMEOUT`],
    /// [`DEFAULT_EXTRA_PORTS`].
    pub fn new(root: PathBuf, tag: impl Into<String>) -> Self {
        Self {
            root,
            tag: tag.into(),
            qemu: PathBuf::from(DEFAULT_QEMU),
            accel: Accel::Tcg,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            extra_ports: DEFAULT_EXTRA_PORTS.to_vec(),
            metadata_relay: None,
            metadata_address: Default::default(),
        }
    }
}

/// Runs instances as QEMU VMs. See the module docs.
#[derive(Debug)]
pub struct QemuDriver {
    shared: Arc<Shared>,
    /// One lock per instance, so concurrent lifecycle calls on one key cannot interleave.
    locks: InstanceLocks,
}

/// What the driver and its readiness tasks share.
#[derive(Debug)]
struct Shared {
    cfg: QemuConfig,
    /// `herd:<tag id>:`, the argv marker prefix of our QEMU processes.
    prefix: String,
    /// Private directory for sockets whose instance directory is too long a path.
    socket_dir: PathBuf,
    /// This QEMU knows the `plugin` log item, so `-D qemu.log -d plugin` keeps its messages
    /// after it daemonized (see [`crate::command_line`]).
    runtime_log: bool,
    /// Set when the driver is dropped: readiness tasks end.
    closed: AtomicBool,
    /// Readiness tasks running, by instance and the QEMU they watch.
    watching: Mutex<HashMap<InstanceKey, ProcId>>,
    /// One lock per instance for the guest agent: it serves one client at a time (scripts,
    /// stats, the detection probe), and a long script must not hold up `destroy`.
    script_locks: InstanceLocks,
    /// Instances of images with an unknown agent whose agent answered, with their image (see
    /// [`Driver::guest_agents_answered`]).
    answered: Mutex<HashMap<InstanceKey, ImageSource>>,
}

/// How a readiness task decides that a boot is done, from what is known of the image's agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Readiness {
    /// The agent answers `guest-ping`.
    Agent,
    /// A ready line on the serial console.
    Console,
    /// The agent is not known: the console line or an agent answer, whichever comes first;
    /// the agent is probed on until the boot deadline and its first answer recorded.
    Detect,
}

impl Readiness {
    /// `agent`: the image's flag, or `Some(true)` once the agent answered on this disk.
    fn of(agent: Option<bool>) -> Self {
        match agent {
            Some(true) => Readiness::Agent,
            Some(false) => Readiness::Console,
            None => Readiness::Detect,
        }
    }
}

/// What is known of `spec`'s guest agent: the image's flag, else whether it answered on this
/// instance's disk (`Some(true)`) or not yet (`None`; never `Some(false)`).
fn agent_known(d: &VmDir, spec: &VmSpec) -> Option<bool> {
    spec.guest_agent.or_else(|| d.agent_answered(spec).then_some(true))
}

impl Drop for QemuDriver {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
    }
}

impl QemuDriver {
    /// A driver keeping instance directories under `config.root` (created if absent).
    pub fn new(config: QemuConfig) -> Result<Self, DriverError> {
        if config.tag.is_empty() {
            return Err(DriverError::Failed("the qemu driver tag must not be empty".into()));
        }
        let root = std::fs::create_dir_all(&config.root)
            .and_then(|_| config.root.canonicalize())
            .map_err(|e| DriverError::host(format!("instance root {}", config.root.display()), e))?;
        let prefix = marker_prefix(&config.tag);
        let tag_id = prefix.trim_start_matches("herd:").trim_end_matches(':').to_string();
        let socket_dir = std::env::temp_dir().join(format!("herd-qemu-{}-{tag_id}", nix::unistd::geteuid().as_raw()));
        let runtime_log = command_line::supports_plugin_log(&config.qemu);
        let cfg = QemuConfig { root, ..config };
        Ok(Self {
            shared: Arc::new(Shared {
                cfg,
                prefix,
                socket_dir,
                runtime_log,
                closed: AtomicBool::new(false),
                watching: Mutex::new(HashMap::new()),
                script_locks: InstanceLocks::default(),
                answered: Mutex::new(HashMap::new()),
            }),
            locks: InstanceLocks::default(),
        })
        .inspect(|driver| driver.shared.load_answered())
    }

    /// The configuration, with `root` made absolute.
    pub fn config(&self) -> &QemuConfig {
        &self.shared.cfg
    }

    /// Where one instance lives: `root/<group>/<set>/<id>`.
    pub fn instance_dir(&self, key: &InstanceKey) -> PathBuf {
        self.shared.vm(key).dir
    }

    /// The instance's QMP socket (one client at a time: do not hold it while the driver works).
    pub fn qmp_socket(&self, key: &InstanceKey) -> PathBuf {
        self.shared.vm(key).qmp_socket()
    }

    /// The instance's guest-agent socket (one client at a time, as for QMP).
    pub fn qga_socket(&self, key: &InstanceKey) -> PathBuf {
        self.shared.vm(key).qga_socket()
    }

    /// The pid of the instance's running QEMU, if it runs.
    pub fn pid(&self, key: &InstanceKey) -> Option<u32> {
        self.shared.live(key).map(|id| id.pid)
    }

    /// Every running QEMU process of this driver (by its argv marker), with its instance:
    /// orphans included, other servers' VMs not.
    pub fn processes(&self) -> Vec<(InstanceKey, u32)> {
        procfs::scan(&self.shared.prefix).into_iter().map(|(k, id)| (k, id.pid)).collect()
    }

    /// Starts again every VM the host's reboot took down: desired power running, QEMU not
    /// running, and started under another boot id than the current one. Returns how many were
    /// started. (A QEMU that died under the current boot id crashed; it is left `Failed`.)
    /// The server's own machine calls this at start; an agent waits for the server's word and
    /// calls [`Self::resume_after_reboot`] with the instances it lists.
    pub async fn resume_after_host_reboot(&self) -> usize {
        self.resume_after_reboot(None).await.len()
    }

    /// The VMs the host's reboot took down and that [`Self::resume_after_reboot`] would start
    /// again (see [`Self::resume_after_host_reboot`]).
    pub async fn down_after_host_reboot(&self) -> Vec<InstanceKey> {
        let shared = self.shared.clone();
        let current = procfs::boot_id();
        blocking(move || {
            walk(&shared.cfg.root)
                .into_iter()
                .filter(|(key, _)| !shared.vm(key).is_foreign(&shared.cfg.tag) && shared.needs_resume(key, &current))
                .map(|(key, _)| key)
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default()
    }

    /// Starts again the VMs the host's reboot took down, as [`Self::resume_after_host_reboot`],
    /// but only those of `only` when given (an agent's: the instances the server's
    /// acknowledgement lists as this host's). Idempotent: a VM that runs, or was started under
    /// this boot, is left alone. Returns the VMs started.
    pub async fn resume_after_reboot(&self, only: Option<&[InstanceKey]>) -> Vec<InstanceKey> {
        let current = procfs::boot_id();
        let candidates: Vec<InstanceKey> = self
            .down_after_host_reboot()
            .await
            .into_iter()
            .filter(|k| only.is_none_or(|only| only.contains(k)))
            .collect();
        let mut started = Vec::new();
        for key in candidates {
            let _g = self.locks.lock(&key).await;
            let (shared, k, cur) = (self.shared.clone(), key.clone(), current.clone());
            if !blocking(move || shared.needs_resume(&k, &cur)).await.unwrap_or(false) {
                continue;
            }
            let d = self.shared.vm(&key);
            match self.start(&key, &d).await {
                Ok(()) => {
                    tracing::info!(instance = %key, "started again after a host reboot");
                    started.push(key);
                }
                Err(e) => tracing::warn!(instance = %key, error = %e, "could not start again after a host reboot"),
            }
        }
        started
    }

    async fn live(&self, key: &InstanceKey) -> Result<Option<ProcId>, DriverError> {
        let (shared, key) = (self.shared.clone(), key.clone());
        blocking(move || shared.live(&key)).await
    }

    /// Creates the instance directory from `spec` if absent (built as `.<id>.creating` beside
    /// it and renamed, so a crash never leaves a half-made instance under its real name).
    /// Returns whether it already existed. An existing directory without a readable
    /// `spec.json` (not made by this driver, or damaged) is completed from `spec`.
    /// The fence check every acting call starts with, under the instance's lock (see
    /// `herd_driver::fence`): refused if lower than the instance directory's record, recorded
    /// first if higher. Another cluster's directory gets nothing written into it.
    async fn admit(&self, key: &InstanceKey, fence: Fence) -> Result<(), DriverError> {
        let (d, k, tag) = (self.shared.vm(key), key.clone(), self.shared.cfg.tag.clone());
        blocking(move || {
            if d.exists() && d.is_foreign(&tag) {
                return Ok(());
            }
            herd_driver::fence::admit_in_dir(&k, &d.dir, fence)
        })
        .await?
    }

    /// The instance's lock, once `fence` is admitted under it.
    async fn lock_admitted(
        &self,
        key: &InstanceKey,
        fence: Fence,
    ) -> Result<tokio::sync::OwnedMutexGuard<()>, DriverError> {
        let guard = self.locks.lock(key).await;
        self.admit(key, fence).await?;
        Ok(guard)
    }

    /// The instance's directory, which must exist (else `NotFound`).
    fn existing(&self, key: &InstanceKey) -> Result<VmDir, DriverError> {
        let d = self.shared.vm(key);
        if !d.exists() {
            return Err(DriverError::NotFound(key.clone()));
        }
        Ok(d)
    }

    async fn materialize(&self, spec: &InstanceSpec, fence: Fence) -> Result<bool, DriverError> {
        let key = &spec.key;
        let d = self.shared.vm(key);
        let d2 = d.clone();
        let tag = self.shared.cfg.tag.clone();
        let (exists, has_spec, foreign) =
            blocking(move || (d2.exists(), d2.read_spec().is_ok(), d2.is_foreign(&tag))).await?;
        if exists && foreign {
            return Err(DriverError::Failed(format!(
                "instance {key}: its directory {} belongs to another herd cluster (another tag); not touched",
                d.dir.display()
            )));
        }
        if exists {
            if !has_spec {
                tracing::info!(instance = %key, "completing an instance directory without spec.json");
                self.install(spec, &d, 0, false).await?;
            }
            return Ok(true);
        }
        let parent = d.dir.parent().unwrap_or(&self.shared.cfg.root).to_path_buf();
        let tmp =
            VmDir { dir: parent.join(format!(".{}.creating", key.id)), socket_fallback: d.socket_fallback.clone() };
        let (t2, tag) = (tmp.clone(), self.shared.cfg.tag.clone());
        blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&parent)?;
            remove_tree(&t2.dir)?;
            std::fs::create_dir(&t2.dir)?;
            // The seed may hold a password hash and the console whatever the guest prints.
            std::fs::set_permissions(&t2.dir, std::fs::Permissions::from_mode(0o700))?;
            t2.write_tag(&tag)?;
            // The fence is in place before the directory appears under its name.
            if fence.incarnation != herd_driver::Incarnation::ANY {
                herd_driver::fence::write_record(&t2.dir, fence)?;
            }
            Ok(())
        })
        .await?
        .map_err(|e| io_failed(key, "creating its directory", e))?;
        self.install(spec, &tmp, 0, false).await?;
        let (t2, dir) = (tmp.clone(), d.dir.clone());
        blocking(move || {
            t2.write_power(Power::Running)?;
            std::fs::rename(&t2.dir, &dir)
        })
        .await?
        .map_err(|e| io_failed(key, "creating its directory", e))?;
        tracing::debug!(instance = %key, "created");
        Ok(false)
    }

    /// Writes what `spec` needs into `d`: the OS disk (a new one when `fresh_os`, else only if
    /// missing), missing data disks, the seed and `spec.json`, in that order: `spec.json` last,
    /// so a crash part-way is completed by repeating the call.
    async fn install(
        &self,
        spec: &InstanceSpec,
        d: &VmDir,
        reimage_count: u64,
        fresh_os: bool,
    ) -> Result<(), DriverError> {
        let key = &spec.key;
        let vm = vm_spec(spec, &self.shared.cfg.extra_ports, reimage_count)?;
        if fresh_os {
            let new_os = d.file("os-new.qcow2");
            let n2 = new_os.clone();
            blocking(move || vm_dir::ignore_missing(std::fs::remove_file(n2)))
                .await?
                .map_err(|e| io_failed(key, "clearing a new OS disk", e))?;
            create_os_disk(key, &vm.image, &new_os).await?;
            let os = d.os_disk();
            blocking(move || std::fs::rename(new_os, os))
                .await?
                .map_err(|e| io_failed(key, "installing the new OS disk", e))?;
        } else {
            ensure_os_disk(key, &vm.image, &d.os_disk()).await?;
        }
        ensure_data_disks(key, &vm, d).await?;
        let files = seed_files(spec, &vm);
        let (d2, vm2) = (d.clone(), vm.clone());
        blocking(move || {
            seed::write_seed(&d2.seed(), &files)?;
            d2.write_spec(&vm2)
        })
        .await?
        .map_err(|e| io_failed(key, "writing the seed and spec.json", e))
    }

    /// Starts QEMU for the instance in `d` as `spec.json` describes it.
    async fn start(&self, key: &InstanceKey, d: &VmDir) -> Result<(), DriverError> {
        self.wait_previous_exit(key, d).await?;
        let d2 = d.clone();
        let spec = blocking(move || d2.read_spec()).await?.map_err(|e| io_failed(key, "reading spec.json", e))?;
        // A crash in the middle of a reimage may have left the OS disk missing; data disks
        // the spec names are created if missing.
        ensure_os_disk(key, &spec.image, &d.os_disk()).await?;
        ensure_data_disks(key, &spec, d).await?;
        let d2 = d.clone();
        let socket_dir = self.shared.socket_dir.clone();
        let offset = blocking(move || prepare_start(&d2, &socket_dir))
            .await?
            .map_err(|e| io_failed(key, "preparing the start", e))?;

        let tap = match &spec.network {
            Some(att) => Some(self.plug(key, &spec, att).await?),
            None => None,
        };
        let mut args = command_line::qemu_args(
            &self.shared.prefix,
            self.shared.cfg.accel,
            self.shared.runtime_log,
            &spec,
            d,
            tap.as_deref(),
        );
        // Bridged VMs reach 169.254.169.254 on their vnet natively; only user networking
        // needs the relay.
        let relayed = spec.metadata_endpoint.filter(|_| tap.is_none());
        if let (Some(relay), Some(ep)) = (&self.shared.cfg.metadata_relay, relayed) {
            command_line::add_metadata_forward(&mut args, relay, ep, self.shared.cfg.metadata_address);
        }
        let outcome = self.spawn_qemu(key, d, &args).await;
        let id = match outcome {
            Ok(id) => id,
            Err(msg) => {
                let (d2, m2) = (d.clone(), msg.clone());
                let _ = blocking(move || d2.write_start_error(&m2)).await;
                tracing::info!(instance = %key, error = %msg, "QEMU did not start");
                return Err(DriverError::Failed(msg));
            }
        };
        let d2 = d.clone();
        blocking(move || d2.write_pid(PidRecord { id: Some(id), console_offset: offset }))
            .await?
            .map_err(|e| io_failed(key, "writing the pid file", e))?;
        tracing::debug!(instance = %key, pid = id.pid, "QEMU started");
        let readiness = Readiness::of(agent_known(d, &spec));
        self.shared.watch(key, d, id, readiness, offset);
        Ok(())
    }

    /// Bridged networking: the instance's segment serves (bridge, dnsmasq) with its DHCP
    /// reservation and DNS name, and its TAP is a port of the bridge. Returns the TAP's name.
    async fn plug(&self, key: &InstanceKey, spec: &VmSpec, att: &NetworkAttachment) -> Result<String, DriverError> {
        let tap = herd_hostnet::tap_name(&self.shared.cfg.tag, &key.path());
        let net = HostNet::for_tag(&self.shared.cfg.tag);
        let (k, mac, name, att, t) =
            (key.path(), spec.mac.clone(), spec.computer_name.clone(), att.clone(), tap.clone());
        blocking(move || {
            net.attach(&att, &Reservation { owner: &k, mac: &mac, name: &name, port: &t })?;
            herd_hostnet::link::ensure_tap(&t, &att.bridge, att.mtu)
        })
        .await?
        .map_err(|e| DriverError::Failed(format!("instance {key}: bridged network: {e}")))?;
        Ok(tap)
    }

    /// Removes what [`plug`](Self::plug) made for the instance (the segment goes with its last
    /// instance). Ok if nothing is there.
    async fn unplug(&self, key: &InstanceKey) -> Result<(), DriverError> {
        let tap = herd_hostnet::tap_name(&self.shared.cfg.tag, &key.path());
        let net = HostNet::for_tag(&self.shared.cfg.tag);
        let k = key.path();
        blocking(move || {
            herd_hostnet::link::remove(&tap)?;
            net.detach(&k)
        })
        .await?
        .map_err(|e| DriverError::Failed(format!("instance {key}: bridged network: {e}")))
    }

    /// Waits (up to [`PREVIOUS_EXIT_WAIT`]) until the QEMU last recorded for the instance has
    /// exited with all its threads: one killed a moment ago may still hold its disks' locks,
    /// and a second QEMU on them would fail to start. Callers hold the instance lock, so no
    /// other QEMU can be started for it meanwhile.
    async fn wait_previous_exit(&self, key: &InstanceKey, d: &VmDir) -> Result<(), DriverError> {
        let d2 = d.clone();
        let Some(prev) = blocking(move || d2.read_pid().and_then(|r| r.id)).await? else { return Ok(()) };
        if wait_gone(prev, PREVIOUS_EXIT_WAIT).await {
            return Ok(());
        }
        Err(DriverError::Failed(format!(
            "instance {key}: its previous QEMU (pid {}) has not exited after {} s; not starting another on its disks",
            prev.pid,
            PREVIOUS_EXIT_WAIT.as_secs()
        )))
    }

    /// Runs QEMU with `args` and returns the daemon's identity, or why it did not start.
    async fn spawn_qemu(&self, key: &InstanceKey, d: &VmDir, args: &[String]) -> Result<ProcId, String> {
        let cfg = &self.shared.cfg;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.qemu_log())
            .map_err(|e| format!("instance {key}: cannot open qemu.log: {e}"))?;
        // The server's environment may hold secrets; QEMU needs none of it.
        let path = std::env::var("PATH")
            .unwrap_or_else(|_| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        let mut child = tokio::process::Command::new(&cfg.qemu)
            .args(args)
            .env_clear()
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("instance {key}: cannot run {}: {e}", cfg.qemu.display()))?;
        let status = match tokio::time::timeout(QEMU_START_TIMEOUT, child.wait()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("instance {key}: waiting for QEMU to start: {e}")),
            Err(_) => {
                let _ = child.kill().await;
                return Err(format!(
                    "instance {key}: QEMU did not finish setting up the VM within {} s",
                    QEMU_START_TIMEOUT.as_secs()
                ));
            }
        };
        let (d2, key2, prefix) = (d.clone(), key.clone(), self.shared.prefix.clone());
        if !status.success() {
            return Err(blocking(move || start_failure(&key2, &d2)).await.unwrap_or_else(|e| e.to_string()));
        }
        blocking(move || {
            let from_pidfile = std::fs::read_to_string(d2.qemu_pidfile())
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .and_then(procfs::read_stat)
                .map(|st| ProcId { pid: st.pid, start: st.starttime })
                .filter(|id| procfs::is_instance_qemu(*id, &prefix, &key2));
            from_pidfile
                .or_else(|| procfs::scan(&prefix).into_iter().find(|(k, _)| *k == key2).map(|(_, id)| id))
                .ok_or_else(|| {
                    let why = d2.last_line("qemu.log", MAX_QUOTED).or_else(|| d2.last_line("console.log", MAX_QUOTED));
                    format!(
                        "instance {key2}: QEMU exited right after starting{}",
                        why.map(|w| format!(": {w}")).unwrap_or_default()
                    )
                })
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
    }

    /// Sets the desired power to `power` and halts QEMU gracefully if it runs.
    async fn stop(&self, key: &InstanceKey, d: &VmDir, power: Power) -> Result<(), DriverError> {
        let d2 = d.clone();
        blocking(move || d2.write_power(power)).await?.map_err(|e| io_failed(key, "writing the power file", e))?;
        let Some(id) = self.live(key).await? else { return Ok(()) };
        self.halt(key, d, id, true).await?;
        tracing::debug!(instance = %key, pid = id.pid, power = power.as_str(), "stopped");
        Ok(())
    }

    /// Ends QEMU `id`: the ACPI power button first when `graceful`, then QMP `quit`, then
    /// SIGKILL.
    async fn halt(&self, key: &InstanceKey, d: &VmDir, id: ProcId, graceful: bool) -> Result<(), DriverError> {
        let sock = d.qmp_socket();
        let qmp = if sock.exists() {
            match Qmp::connect(&sock, QMP_CONNECT_TIMEOUT).await {
                Ok(q) => Some(q.with_command_timeout(QMP_COMMAND_TIMEOUT)),
                Err(e) => {
                    tracing::info!(instance = %key, error = %e, "no QMP connection; signalling QEMU instead");
                    None
                }
            }
        } else {
            None
        };
        match &qmp {
            Some(qmp) => {
                if graceful {
                    let started = Instant::now();
                    match qmp.powerdown_with_timeout(self.shared.cfg.stop_timeout).await {
                        Ok(true) if wait_gone(id, EXIT_AFTER_POWEROFF).await => {
                            tracing::debug!(instance = %key, secs = started.elapsed().as_secs_f64(), "guest powered off");
                            return Ok(());
                        }
                        Ok(_) => tracing::info!(
                            instance = %key,
                            timeout = ?self.shared.cfg.stop_timeout,
                            "guest did not power off in time; quitting QEMU"
                        ),
                        Err(e) => tracing::info!(instance = %key, error = %e, "ACPI power-off failed; quitting QEMU"),
                    }
                }
                let _ = qmp.quit().await;
            }
            None => procfs::signal(id, Signal::SIGTERM),
        }
        drop(qmp);
        if wait_gone(id, EXIT_AFTER_QUIT).await {
            return Ok(());
        }
        tracing::info!(instance = %key, pid = id.pid, "QEMU did not quit; killing it");
        procfs::signal(id, Signal::SIGKILL);
        if wait_gone(id, EXIT_AFTER_KILL).await {
            return Ok(());
        }
        Err(DriverError::Failed(format!("instance {key}: QEMU (pid {}) did not exit after SIGKILL", id.pid)))
    }

    async fn run_script_locked(&self, key: &InstanceKey, run: &ScriptRun) -> Result<ScriptOutcome, DriverError> {
        let d = self.shared.vm(key);
        let d2 = d.clone();
        let spec = blocking(move || if d2.exists() { Some(d2.read_spec()) } else { None }).await?;
        let spec = match spec {
            None => return Err(DriverError::NotFound(key.clone())),
            Some(s) => s.map_err(|e| io_failed(key, "reading spec.json", e))?,
        };
        let (d2, spec2) = (d.clone(), spec.clone());
        let known = blocking(move || agent_known(&d2, &spec2)).await?;
        if known == Some(false) {
            return Err(DriverError::Failed(format!(
                "instance {key}: the image has no guest agent (imported with --guest-agent false); scripts run \
                 through the QEMU guest agent (qemu-ga): import it with --guest-agent true, or without the flag to \
                 detect it at boot"
            )));
        }
        if self.live(key).await?.is_none() {
            return Err(DriverError::Failed(format!("instance {key} is not running; scripts need a running VM")));
        }
        let agent =
            |e: crate::qga::QgaError| DriverError::GuestAgent { key: key.clone(), source: std::sync::Arc::new(e) };
        let started = Instant::now();
        let qga = match known {
            Some(_) => Qga::wait_ready(&d.qga_socket(), AGENT_CONNECT_TIMEOUT).await.map_err(agent)?,
            // Not known yet (it may still be starting): wait for it up to the script's own timeout.
            None => match Qga::wait_ready(&d.qga_socket(), run.timeout).await {
                Ok(qga) => {
                    self.shared.record_agent(key, &d).await;
                    qga
                }
                Err(e) => {
                    return Err(DriverError::Failed(format!(
                    "instance {key}: the guest agent did not answer within the script's timeout ({} s): scripts run \
                         through the QEMU guest agent (qemu-ga); install and enable it in the image ({e})",
                    run.timeout.as_secs()
                )))
                }
            },
        };
        let timeout = run.timeout.saturating_sub(started.elapsed()).max(Duration::from_secs(1));
        let dir = format!("{GUEST_EXTENSIONS_DIR}/{}", run.name);
        let command_file = format!("{dir}/{GUEST_COMMAND_FILE}");
        // A run recorded by a previous server: the same run is adopted, another one is killed
        // first, so the script never runs twice at once.
        let d2 = d.clone();
        if let Some(rec) = blocking(move || d2.read_script_run()).await? {
            if let Some(outcome) = adopt_or_kill(&qga, key, run, &rec).await {
                let outcome = outcome.map_err(agent);
                if rec.name == run.name {
                    let _ = qga.run("rm", &["-f", command_file.as_str()], NO_ENV, None, AGENT_STEP_TIMEOUT).await;
                }
                let d2 = d.clone();
                blocking(move || d2.remove_script_run())
                    .await?
                    .map_err(|e| io_failed(key, "removing script-run", e))?;
                return outcome;
            }
            let d2 = d.clone();
            blocking(move || d2.remove_script_run()).await?.map_err(|e| io_failed(key, "removing script-run", e))?;
        }
        // Downloaded only now, for a run that starts: an adopted run needs nothing fetched.
        let files = run
            .fetch_files()
            .await
            .map_err(|m| DriverError::Failed(format!("instance {key}: extension {}: {m}", run.name)))?;
        let st = qga.run("mkdir", &["-p", dir.as_str()], NO_ENV, None, AGENT_STEP_TIMEOUT).await.map_err(agent)?;
        if !st.success() {
            return Err(DriverError::Failed(format!(
                "instance {key}: cannot create {dir} in the guest: {}",
                String::from_utf8_lossy(&keep_tail(st.stderr, 300)).trim()
            )));
        }
        for (name, content) in &files {
            // Executable, so `./script.sh` works; readable by root only (files may hold secrets).
            qga.write_file(&format!("{dir}/{name}"), content, Some(0o700)).await.map_err(agent)?;
        }
        let written = qga.write_file(&command_file, run.command.as_bytes(), Some(0o600)).await;
        let outcome = match written {
            Ok(()) => {
                let (d2, k2, name, identity) = (d.clone(), key.clone(), run.name.clone(), run.identity.clone());
                let timeout_ms = u64::try_from(run.timeout.as_millis()).unwrap_or(u64::MAX);
                let record = move |pid: i64| {
                    let rec = ScriptRunRecord { name, identity, pid, started_ms: now_ms(), timeout_ms };
                    if let Err(e) = d2.write_script_run(&rec) {
                        tracing::warn!(instance = %k2, error = %e, "cannot record the extension run");
                    }
                };
                exec_script(&qga, &dir, timeout, record).await.map_err(agent)
            }
            Err(e) => Err(agent(e)),
        };
        let d2 = d.clone();
        if let Err(e) = blocking(move || d2.remove_script_run()).await? {
            tracing::warn!(instance = %key, error = %e, "cannot remove the extension run record");
        }
        // Always try to remove the command (it may carry secrets), however the run ended.
        match qga.run("rm", &["-f", command_file.as_str()], NO_ENV, None, AGENT_STEP_TIMEOUT).await {
            Ok(st) if st.success() => {}
            Ok(st) => {
                tracing::warn!(instance = %key, exit = ?st.exitcode, "could not remove the script's command file")
            }
            Err(e) => tracing::warn!(instance = %key, error = %e, "could not remove the script's command file"),
        }
        let outcome = outcome?;
        tracing::debug!(instance = %key, extension = %run.name, exit = ?outcome.exit_code, timed_out = outcome.timed_out, "script ran");
        Ok(outcome)
    }
}

const NO_ENV: &[&str] = &[];

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A run recorded by a previous server. The same run (name and identity) still known to the
/// agent is adopted: `Some` with its outcome (waiting until its own deadline). Any other run
/// still going is killed (its process group in the guest), and `None` says to start anew;
/// so does a pid the agent does not know (the VM rebooted, or the result was already taken).
async fn adopt_or_kill(
    qga: &Qga,
    key: &InstanceKey,
    run: &ScriptRun,
    rec: &ScriptRunRecord,
) -> Option<Result<ScriptOutcome, crate::qga::QgaError>> {
    let st = qga.exec_status(rec.pid).await.ok()?;
    if rec.name == run.name && rec.identity == run.identity {
        tracing::info!(instance = %key, extension = %rec.name, pid = rec.pid, "adopting an extension run started by a previous server");
        if st.exited {
            return Some(Ok(outcome(st, false)));
        }
        let left = rec.started_ms.saturating_add(rec.timeout_ms).saturating_sub(now_ms());
        return Some(wait_script(qga, rec.pid, Duration::from_millis(left)).await);
    }
    if !st.exited {
        tracing::warn!(instance = %key, extension = %rec.name, pid = rec.pid, "killing an extension run left by a previous server: another run is wanted now");
        // The process first, then its group: a shell killed before its `setsid` has no group
        // yet (and forks nothing before it); one killed after it leaves its children in the
        // group, which the second kill ends. The other order could miss a child forked between.
        let kill = format!("kill -KILL {0} 2>/dev/null; kill -KILL -{0} 2>/dev/null; true", rec.pid);
        let _ = qga.run("/bin/sh", &["-c", kill.as_str()], NO_ENV, None, AGENT_STEP_TIMEOUT).await;
        // Reap it in the agent, so the next run starts only once it is gone.
        let until = Instant::now() + SCRIPT_KILL_WAIT;
        while Instant::now() < until {
            match qga.exec_status(rec.pid).await {
                Ok(st) if !st.exited => tokio::time::sleep(Duration::from_millis(100)).await,
                _ => break,
            }
        }
    }
    None
}

/// Runs `./.herd-command` in `dir` in its own session; on `timeout` kills its process group.
/// `started` records the guest pid as soon as the agent gives it.
async fn exec_script(
    qga: &Qga,
    dir: &str,
    timeout: Duration,
    started: impl FnOnce(i64) + Send + 'static,
) -> Result<ScriptOutcome, crate::qga::QgaError> {
    // `dir` is validated (no quotes); setsid keeps the pid (the agent's children are not group
    // leaders), so the pid is also the process group to kill on timeout.
    let wrapper = format!(
        "cd '{dir}' || exit 127\n\
         if command -v setsid >/dev/null 2>&1; then exec setsid /bin/sh ./{GUEST_COMMAND_FILE}; fi\n\
         exec /bin/sh ./{GUEST_COMMAND_FILE}"
    );
    let cmd = GuestCommand { path: "/bin/sh", args: &["-c", wrapper.as_str()], env: NO_ENV, input: None };
    let pid = qga.exec(cmd, true).await?;
    let _ = tokio::task::spawn_blocking(move || started(pid)).await;
    wait_script(qga, pid, timeout).await
}

/// Waits for guest process `pid` up to `timeout`, then kills its process group.
async fn wait_script(qga: &Qga, pid: i64, timeout: Duration) -> Result<ScriptOutcome, crate::qga::QgaError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(50);
    loop {
        let st = qga.exec_status(pid).await?;
        if st.exited {
            return Ok(outcome(st, false));
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
    tracing::info!(pid, ?timeout, "script timed out; killing its process group in the guest");
    let kill = format!("kill -KILL -{pid} 2>/dev/null; kill -KILL {pid} 2>/dev/null; true");
    qga.run("/bin/sh", &["-c", kill.as_str()], NO_ENV, None, AGENT_STEP_TIMEOUT).await?;
    let until = Instant::now() + SCRIPT_KILL_WAIT;
    while Instant::now() < until {
        let st = qga.exec_status(pid).await?;
        if st.exited {
            return Ok(outcome(st, true));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(ScriptOutcome { exit_code: None, timed_out: true, stdout: Vec::new(), stderr: Vec::new() })
}

fn outcome(st: ExecStatus, timed_out: bool) -> ScriptOutcome {
    let exit_code =
        if timed_out || st.signal.is_some() { None } else { st.exitcode.and_then(|c| i32::try_from(c).ok()) };
    ScriptOutcome {
        exit_code,
        timed_out,
        stdout: keep_tail(st.stdout, SCRIPT_OUTPUT_TAIL),
        stderr: keep_tail(st.stderr, SCRIPT_OUTPUT_TAIL),
    }
}

impl Shared {
    /// The directory of `key`, and where its sockets go if that path is too long.
    fn vm(&self, key: &InstanceKey) -> VmDir {
        let dir = herd_driver::host::instance_dir::instance_path(&self.cfg.root, key);
        let socket_fallback = self.socket_dir.join(format!("{:016x}", herd_driver::stable_hash(key.path())));
        VmDir { dir, socket_fallback }
    }

    /// The instance's running QEMU: the recorded one if it still runs, else one found by its
    /// marker (a crash between starting QEMU and recording it).
    fn live(&self, key: &InstanceKey) -> Option<ProcId> {
        let d = self.vm(key);
        if let Some(id) = d.read_pid().and_then(|r| r.id) {
            if procfs::is_instance_qemu(id, &self.prefix, key) {
                return Some(id);
            }
        }
        procfs::scan(&self.prefix).into_iter().find(|(k, _)| k == key).map(|(_, id)| id)
    }

    fn needs_resume(&self, key: &InstanceKey, current_boot: &str) -> bool {
        let d = self.vm(key);
        d.exists()
            && d.read_power() == Some(Power::Running)
            && d.read_boot_id().is_some_and(|b| !b.is_empty() && b != current_boot)
            && self.live(key).is_none()
    }

    /// Starts a readiness task for QEMU `id` of `key` unless one runs.
    fn watch(self: &Arc<Self>, key: &InstanceKey, d: &VmDir, id: ProcId, readiness: Readiness, offset: u64) {
        {
            let mut w = self.watching.lock().unwrap_or_else(|e| e.into_inner());
            if w.get(key) == Some(&id) {
                return;
            }
            w.insert(key.clone(), id);
        }
        let (shared, key, d) = (self.clone(), key.clone(), d.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let ready = match readiness {
                Readiness::Agent => shared.wait_for_agent(&d, id).await,
                Readiness::Console => shared.wait_for_console(&d, id, offset).await,
                Readiness::Detect => shared.detect(&key, &d, id, offset, started).await,
            };
            if ready {
                shared.mark_ready(&key, &d, id, started).await;
            }
            let mut w = shared.watching.lock().unwrap_or_else(|e| e.into_inner());
            if w.get(&key) == Some(&id) {
                w.remove(&key);
            }
        });
    }

    async fn mark_ready(&self, key: &InstanceKey, d: &VmDir, id: ProcId, started: Instant) {
        let d2 = d.clone();
        let _ = blocking(move || d2.write_ready(id)).await;
        tracing::debug!(instance = %key, pid = id.pid, secs = started.elapsed().as_secs_f64(), "guest ready");
    }

    /// [`Readiness::Detect`]: marks the guest ready at the console line or the first agent
    /// answer, whichever comes first, and probes the agent until it answers or the boot
    /// deadline passes. Returns false (nothing to mark) when it marked the guest ready itself
    /// or the guest never got ready.
    async fn detect(&self, key: &InstanceKey, d: &VmDir, id: ProcId, offset: u64, started: Instant) -> bool {
        let age = procfs::age_secs(id).map_or(Duration::ZERO, Duration::from_secs_f64);
        let deadline = started + self.cfg.boot_timeout.saturating_sub(age);
        let console = self.wait_for_console(d, id, offset);
        let agent = self.probe_agent(key, d, id, deadline);
        tokio::pin!(console, agent);
        let (mut ready, mut console_done, mut agent_done) = (false, false, false);
        while !(agent_done && (ready || console_done)) {
            tokio::select! {
                r = &mut console, if !console_done => {
                    console_done = true;
                    if r && !ready {
                        ready = true;
                        self.mark_ready(key, d, id, started).await;
                    }
                }
                r = &mut agent, if !agent_done => {
                    agent_done = true;
                    if r && !ready {
                        ready = true;
                        self.mark_ready(key, d, id, started).await;
                    }
                }
            }
        }
        false
    }

    /// Probes `guest-ping` on `id`'s agent until it answers (recorded, true), the deadline
    /// passes or QEMU is gone (false). Each try holds the agent lock briefly; while a script
    /// holds it, the script waits for the agent itself and records its answer.
    async fn probe_agent(&self, key: &InstanceKey, d: &VmDir, id: ProcId, deadline: Instant) -> bool {
        let sock = d.qga_socket();
        loop {
            if self.watch_over(id) || Instant::now() >= deadline {
                return false;
            }
            if let Some(_guard) = self.script_locks.try_lock(key) {
                let left = deadline.saturating_duration_since(Instant::now()).min(AGENT_PROBE_TIMEOUT);
                if let Ok(qga) = Qga::wait_ready(&sock, left).await {
                    if qga.ping().await.is_ok() {
                        drop(qga);
                        self.record_agent(key, d).await;
                        return true;
                    }
                }
            } else {
                let d2 = d.clone();
                if blocking(move || d2.read_spec().is_ok_and(|s| d2.agent_answered(&s))).await.unwrap_or(false) {
                    return true;
                }
            }
            tokio::time::sleep(READY_POLL.max(Duration::from_secs(1))).await;
        }
    }

    /// Records that `key`'s agent answered: its `guest-agent` file, and the image it runs for
    /// [`Driver::guest_agents_answered`].
    async fn record_agent(&self, key: &InstanceKey, d: &VmDir) {
        let d2 = d.clone();
        let spec = blocking(move || {
            let spec = d2.read_spec()?;
            d2.write_agent_answered(&spec)?;
            Ok::<_, std::io::Error>(spec)
        })
        .await;
        match spec {
            Ok(Ok(spec)) => {
                tracing::info!(instance = %key, "the guest agent answered; recording it on the image");
                self.answered.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), spec.image);
            }
            Ok(Err(e)) => tracing::warn!(instance = %key, error = %e, "could not record that the guest agent answered"),
            Err(e) => tracing::warn!(instance = %key, error = %e, "could not record that the guest agent answered"),
        }
    }

    /// After a restart: the answers recorded in instance directories (images with an unknown
    /// agent only).
    fn load_answered(&self) {
        let mut answered = self.answered.lock().unwrap_or_else(|e| e.into_inner());
        for (key, _) in walk(&self.cfg.root) {
            let d = self.vm(&key);
            if let Ok(spec) = d.read_spec() {
                if spec.guest_agent.is_none() && d.agent_answered(&spec) {
                    answered.insert(key, spec.image);
                }
            }
        }
    }

    /// Whether the task watching `id` should give up: the driver is gone, or so is QEMU.
    fn watch_over(&self, id: ProcId) -> bool {
        self.closed.load(Ordering::Relaxed) || procfs::is_gone(id)
    }

    async fn wait_for_agent(&self, d: &VmDir, id: ProcId) -> bool {
        let sock = d.qga_socket();
        let answer = async {
            loop {
                // wait_ready resends its sync every second on one connection while the guest boots.
                if let Ok(qga) = Qga::wait_ready(&sock, Duration::from_secs(3600)).await {
                    if qga.ping().await.is_ok() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        let over = async {
            while !self.watch_over(id) {
                tokio::time::sleep(READY_POLL).await;
            }
        };
        tokio::select! {
            () = answer => true,
            () = over => false,
        }
    }

    async fn wait_for_console(&self, d: &VmDir, id: ProcId, offset: u64) -> bool {
        let mut pos = offset;
        let mut carry: Vec<u8> = Vec::new();
        loop {
            if self.watch_over(id) {
                return false;
            }
            let path = d.console();
            let from = pos;
            let chunk = blocking(move || read_from(&path, from, 1 << 20)).await.ok().flatten().unwrap_or_default();
            pos += chunk.len() as u64;
            carry.extend_from_slice(&chunk);
            if console_says_ready(&String::from_utf8_lossy(&carry)) {
                return true;
            }
            // Keep the end of the last line: a marker may be split across reads.
            if carry.len() > 1024 {
                carry.drain(..carry.len() - 1024);
            }
            if chunk.is_empty() {
                tokio::time::sleep(READY_POLL).await;
            }
        }
    }

    /// One observation of every instance (and orphan), plus the readiness tasks to start.
    fn observe(&self) -> (Vec<ObservedInstance>, Vec<WatchRequest>) {
        let mut procs: HashMap<InstanceKey, ProcId> = procfs::scan(&self.prefix).into_iter().collect();
        let watching = self.watching.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut out = Vec::new();
        let mut to_watch = Vec::new();
        for (key, _) in walk(&self.cfg.root) {
            let d = self.vm(&key);
            if d.is_foreign(&self.cfg.tag) {
                continue; // another cluster's VM: not listed, never touched
            }
            let desired = d.read_power();
            let stopped = matches!(desired, Some(Power::Stopped | Power::Deallocated));
            let mut live = procs.remove(&key);
            if live.is_none() && !stopped {
                // Started after the scan (a restart racing this list): look again, live.
                live = d.read_pid().and_then(|r| r.id).filter(|id| procfs::is_instance_qemu(*id, &self.prefix, &key));
            }
            let power = match live {
                Some(id) => {
                    if d.read_ready() == Some(id) {
                        ObservedPower::Running
                    } else {
                        let spec = d.read_spec().ok();
                        let readiness = Readiness::of(spec.as_ref().and_then(|s| agent_known(&d, s)));
                        if watching.get(&key) != Some(&id) {
                            let offset = d.read_pid().filter(|r| r.id == Some(id)).map_or(0, |r| r.console_offset);
                            to_watch.push((key.clone(), d.clone(), id, readiness, offset));
                        }
                        match procfs::age_secs(id) {
                            Some(age) if age > self.cfg.boot_timeout.as_secs_f64() => {
                                ObservedPower::Failed(boot_timed_out(&d, readiness, self.cfg.boot_timeout))
                            }
                            _ => ObservedPower::Starting,
                        }
                    }
                }
                None if stopped => ObservedPower::Stopped,
                None => self.down(&d),
            };
            out.push(ObservedInstance { key, power });
        }
        for (key, id) in procs {
            // Checked now, after the scan, so an instance created during this list is not
            // taken for an orphan.
            if !self.vm(&key).exists() {
                tracing::debug!(instance = %key, pid = id.pid, "orphan QEMU (no instance directory)");
                out.push(ObservedInstance { key, power: ObservedPower::Running });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        (out, to_watch)
    }

    /// The status of an instance that should run but has no QEMU.
    fn down(&self, d: &VmDir) -> ObservedPower {
        if let Some(err) = d.read_start_error() {
            return ObservedPower::Failed(err);
        }
        if d.read_spec().is_err() {
            return ObservedPower::Failed(
                "not a VM of this driver: the instance directory has no valid spec.json".into(),
            );
        }
        let rec = d.read_pid();
        if rec.is_none_or(|r| r.id.is_none()) {
            // Created, or a start under way: no QEMU yet and no failure recorded.
            return ObservedPower::Starting;
        }
        let mut msg = if d.read_boot_id().is_some_and(|b| b != procfs::boot_id()) {
            String::from("QEMU is not running: the host rebooted since it started")
        } else {
            String::from("QEMU exited")
        };
        if let Some(line) = d.last_line("qemu.log", MAX_QUOTED) {
            msg = format!("{msg}: {line}");
        } else if let Some(line) = d.last_line("console.log", MAX_QUOTED) {
            msg = format!("{msg}; last console line: {line}");
        }
        ObservedPower::Failed(msg)
    }
}

fn boot_timed_out(d: &VmDir, readiness: Readiness, timeout: Duration) -> String {
    let what = match readiness {
        Readiness::Agent => "the guest agent did not answer",
        Readiness::Console => "no ready line on the console",
        Readiness::Detect => "no ready line on the console and no answer from a guest agent",
    };
    let mut msg = format!("boot timed out: {what} within {} s", timeout.as_secs());
    if let Some(line) = d.last_line("console.log", MAX_QUOTED) {
        msg = format!("{msg}; last console line: {line}");
    }
    msg
}

/// A readiness task `list` found missing: instance, directory, QEMU, how to wait, console offset.
type WatchRequest = (InstanceKey, VmDir, ProcId, Readiness, u64);

/// Whether console output says the guest finished booting: herd's test guest's ready line, or
/// cloud-init's final message (`Cloud-init v. 23.1 finished at …`).
pub(crate) fn console_says_ready(text: &str) -> bool {
    text.contains("HERD-GUEST-READY")
        || text.lines().any(|l| l.find("Cloud-init v. ").is_some_and(|i| l[i..].contains(" finished at ")))
}

/// Up to `max` bytes of `path` from `offset` (`None` if unreadable).
fn read_from(path: &Path, offset: u64, max: u64) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// Everything before spawning QEMU: desired power, a fresh `pid` record with the console
/// offset, the boot id, an empty `qemu.log`, no stale sockets or readiness. Returns the offset.
fn prepare_start(d: &VmDir, socket_dir: &Path) -> std::io::Result<u64> {
    d.write_power(Power::Running)?;
    d.remove("start-error")?;
    d.remove("ready")?;
    let offset = std::fs::metadata(d.console()).map(|m| m.len()).unwrap_or(0);
    d.write_pid(PidRecord { id: None, console_offset: offset })?;
    d.write_boot_id(&procfs::boot_id())?;
    std::fs::write(d.qemu_log(), b"")?;
    vm_dir::ignore_missing(std::fs::remove_file(d.qemu_pidfile()))?;
    for sock in [d.qmp_socket(), d.qga_socket()] {
        if !sock.starts_with(&d.dir) {
            ensure_private_dir(socket_dir)?;
        }
        vm_dir::ignore_missing(std::fs::remove_file(&sock))?;
    }
    Ok(offset)
}

/// Creates `dir` with mode 0700 if absent and checks that it is ours and private.
fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let m = std::fs::symlink_metadata(dir)?;
    if !m.is_dir() || m.uid() != nix::unistd::geteuid().as_raw() || m.permissions().mode() & 0o077 != 0 {
        return Err(std::io::Error::other(format!(
            "socket directory {} is not a private directory of this user",
            dir.display()
        )));
    }
    Ok(())
}

/// Why QEMU did not start, from `qemu.log`: a port that could not be forwarded names the
/// address, the port and (when visible) the process holding it.
fn start_failure(key: &InstanceKey, d: &VmDir) -> String {
    let log = vm_dir::read_tail(&d.qemu_log(), 8192).unwrap_or_default();
    let log = String::from_utf8_lossy(&log);
    if let Some((addr, port)) = failed_forward(&log) {
        let holder = addr.parse().ok().and_then(|a| procfs::port_holder(a, port));
        return match holder {
            Some((pid, comm)) => format!(
                "instance {key}: cannot forward {addr}:{port} into the VM: the address is already in use by pid {pid} ({comm})"
            ),
            None => format!(
                "instance {key}: cannot forward {addr}:{port} into the VM: QEMU could not listen there \
                 (in use, or not a local address) and no process holding it is visible from here"
            ),
        };
    }
    let lines: Vec<&str> = log.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join("; ");
    if tail.is_empty() {
        format!("instance {key}: QEMU failed to start (no message in qemu.log)")
    } else {
        format!("instance {key}: QEMU failed to start: {}", vm_dir::shorten(&tail, 600))
    }
}

/// The address and port of QEMU's `Could not set up host forwarding rule 'tcp:ADDR:PORT-:GPORT'`.
pub(crate) fn failed_forward(log: &str) -> Option<(String, u16)> {
    let at = log.find("Could not set up host forwarding rule '")?;
    let rule = &log[at + "Could not set up host forwarding rule '".len()..];
    let rule = &rule[..rule.find('\'')?];
    let host = rule.strip_prefix("tcp:").or_else(|| rule.strip_prefix("udp:")).unwrap_or(rule);
    let host = host.split('-').next()?;
    let (addr, port) = host.rsplit_once(':')?;
    Some((addr.to_string(), port.parse().ok()?))
}

/// The `VmSpec` of `spec`: checks what the qemu driver cannot run, before anything is created.
fn vm_spec(spec: &InstanceSpec, extra_ports: &[u16], reimage_count: u64) -> Result<VmSpec, DriverError> {
    check_spec(spec)?;
    let key = &spec.key;
    let reach_address = spec.reach_address.parse().map_err(|_| {
        DriverError::Failed(format!(
            "instance {key}: reach address '{}' is not an IPv4 address (the qemu driver forwards ports from it)",
            spec.reach_address
        ))
    })?;
    Ok(VmSpec {
        key: key.path(),
        computer_name: spec.computer_name.clone(),
        image: spec.image.clone(),
        vcpus: spec.size.vcpus,
        memory_mib: spec.size.memory_mib,
        reach_address,
        ports: forwarded_ports(&spec.guest.forward_ports, extra_ports),
        guest_agent: spec.guest.guest_agent,
        data_disks: spec.guest.data_disks.clone(),
        mac: mac_for(key),
        instance_id: format!("herd-{}-{}-{}-{reimage_count}", key.group, key.set, key.id),
        reimage_count,
        model_generation: spec.model_generation,
        metadata_endpoint: spec.metadata_endpoint,
        network: spec.network.clone(),
    })
}

fn check_spec(spec: &InstanceSpec) -> Result<(), DriverError> {
    let key = &spec.key;
    let fail =
        |msg: String| Err(DriverError::InvalidSpec { key: key.clone(), reason: format!("instance {key}: {msg}") });
    let missing = |reason: String| Err(DriverError::ImageUnavailable { key: key.clone(), reason });
    match &spec.image {
        ImageSource::Directory { .. } => {
            return fail(
                "the qemu driver runs disk and kernel images; this image is a directory image (use the process driver)"
                    .into(),
            )
        }
        ImageSource::Disk { path, format } => {
            if !Path::new(path).is_file() {
                return missing(format!("image disk {path} does not exist"));
            }
            if format != "qcow2" && format != "raw" {
                return fail(format!("image disk format '{format}' is not supported; use qcow2 or raw"));
            }
        }
        ImageSource::Kernel { kernel, initrd, .. } => {
            for p in std::iter::once(kernel).chain(initrd) {
                if !Path::new(p).is_file() {
                    return missing(format!("image file {p} does not exist"));
                }
            }
        }
    }
    if spec.size.vcpus == 0 || spec.size.memory_mib < 16 {
        return fail(format!(
            "size of {} vCPUs and {} MiB cannot run a VM (at least 1 vCPU and 16 MiB)",
            spec.size.vcpus, spec.size.memory_mib
        ));
    }
    let mut luns: Vec<u32> = spec.guest.data_disks.iter().map(|d| d.lun).collect();
    luns.sort_unstable();
    if luns.windows(2).any(|w| w[0] == w[1]) {
        return fail("two data disks have the same LUN".into());
    }
    if let Some(d) = spec.guest.data_disks.iter().find(|d| d.size_gb == 0 || u32::try_from(d.size_gb).is_err()) {
        return fail(format!("data disk at LUN {} has an unsupported size of {} GiB", d.lun, d.size_gb));
    }
    Ok(())
}

fn seed_files(spec: &InstanceSpec, vm: &VmSpec) -> SeedFiles {
    let input = UserDataInput {
        admin_username: &spec.admin_username,
        password_hash: spec.guest.admin_password_hash.as_deref(),
        ssh_keys: &spec.guest.ssh_public_keys,
        custom_data: spec.custom_data.as_deref(),
        hostname: &spec.computer_name,
    };
    SeedFiles {
        meta_data: seed::meta_data(&vm.instance_id, &spec.computer_name),
        user_data: seed::user_data(&input),
        network_config: Some(match &vm.network {
            Some(att) => seed::network_config_static(&vm.mac, att.address, att.prefix_len, att.gateway, att.mtu),
            None => seed::network_config_dhcp_mac(&vm.mac),
        }),
    }
}

/// Creates the OS disk at `path`: an overlay on a disk image, an empty disk for a kernel image.
async fn create_os_disk(key: &InstanceKey, image: &ImageSource, path: &Path) -> Result<(), DriverError> {
    let made = match image {
        ImageSource::Disk { path: base, .. } => disk::ensure_overlay(Path::new(base), path).await,
        ImageSource::Kernel { .. } => disk::ensure_data_disk(path, KERNEL_OS_DISK_GB).await,
        ImageSource::Directory { .. } => {
            return Err(DriverError::Failed(format!("instance {key}: a directory image has no OS disk")))
        }
    };
    made.map_err(|e| DriverError::host(format!("instance {key}: OS disk"), e))
}

async fn ensure_os_disk(key: &InstanceKey, image: &ImageSource, path: &Path) -> Result<(), DriverError> {
    if path.exists() {
        return Ok(());
    }
    create_os_disk(key, image, path).await
}

async fn ensure_data_disks(key: &InstanceKey, vm: &VmSpec, d: &VmDir) -> Result<(), DriverError> {
    for dd in &vm.data_disks {
        let size = u32::try_from(dd.size_gb)
            .map_err(|_| DriverError::Failed(format!("instance {key}: data disk at LUN {} is too large", dd.lun)))?;
        disk::ensure_data_disk(&d.data_disk(dd.lun), size)
            .await
            .map_err(|e| DriverError::host(format!("instance {key}: data disk at LUN {}", dd.lun), e))?;
    }
    Ok(())
}

/// Polls until `id` is gone; `false` if it outlived `limit`.
async fn wait_gone(id: ProcId, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if procfs::is_gone(id) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// An extension or file name that is safe as one path component in the guest.
fn check_component(what: &str, s: &str, allow_dot: bool) -> Result<(), DriverError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    let bad = s.is_empty()
        || s.len() > 255
        || s == "."
        || s == ".."
        || s == GUEST_COMMAND_FILE
        || !s.chars().all(ok_char)
        || (!allow_dot && s.starts_with('.'));
    if bad {
        return Err(DriverError::Failed(format!(
            "{what} '{s}' is not allowed: use letters, digits, '.', '-' and '_'{}",
            if allow_dot { "" } else { ", not starting with '.'" }
        )));
    }
    Ok(())
}

fn io_failed(key: &InstanceKey, what: &str, e: std::io::Error) -> DriverError {
    DriverError::io(key, what, e)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, DriverError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| DriverError::Task(std::sync::Arc::new(e)))
}

/// The name of `spec.json` among a cold move's state files: it carries the instance's reimage
/// count, so the moved guest's seed keeps its instance id (cloud-init does not run its
/// first-boot steps again on the new host).
const MOVED_SPEC: &str = "spec.json";

/// Cold moves (see `Driver::state_files`, `Driver::ensure_moved`).
impl QemuDriver {
    /// The state files of the stopped instance in `d`: `os.qcow2`, every `data-<lun>.qcow2`,
    /// and `spec.json`.
    fn state_files_in(key: &InstanceKey, d: &VmDir) -> Result<Vec<herd_driver::StateFile>, DriverError> {
        let spec = d.read_spec().map_err(|e| io_failed(key, "reading spec.json", e))?;
        let mut paths = vec![d.os_disk()];
        paths.extend(spec.data_disks.iter().map(|dd| d.data_disk(dd.lun)).filter(|p| p.exists()));
        paths.push(d.file(MOVED_SPEC));
        paths
            .into_iter()
            .map(|path| {
                let meta =
                    std::fs::metadata(&path).map_err(|e| io_failed(key, &format!("reading {}", path.display()), e))?;
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                Ok(herd_driver::StateFile { name, path, size: meta.len(), mode: meta.permissions().mode() & 0o7777 })
            })
            .collect()
    }

    /// Builds the instance directory of a moved instance from `spec` and the state files in
    /// `moved`, as `materialize` builds a new one (`.<id>.creating`, tag and fence first, then
    /// renamed): the moved OS disk and data disks are put in place (hard links where they can
    /// be) before `install`, which keeps them; an OS overlay is rebased onto this host's copy
    /// of the image first.
    async fn materialize_moved(&self, spec: &InstanceSpec, fence: Fence, moved: &Path) -> Result<(), DriverError> {
        let key = &spec.key;
        let d = self.shared.vm(key);
        let os = moved.join("os.qcow2");
        if !os.is_file() {
            return Err(DriverError::Failed(format!(
                "instance {key}: the moved state in {} has no os.qcow2",
                moved.display()
            )));
        }
        // The reimage count of the moved instance (its guest's instance id); 0 if not sent.
        let reimage_count = std::fs::read(moved.join(MOVED_SPEC))
            .ok()
            .and_then(|b| serde_json::from_slice::<VmSpec>(&b).ok())
            .map_or(0, |s| s.reimage_count);
        let parent = d.dir.parent().unwrap_or(&self.shared.cfg.root).to_path_buf();
        let tmp =
            VmDir { dir: parent.join(format!(".{}.creating", key.id)), socket_fallback: d.socket_fallback.clone() };
        let luns: Vec<u32> = spec.guest.data_disks.iter().map(|dd| dd.lun).collect();
        let (t2, tag, from) = (tmp.clone(), self.shared.cfg.tag.clone(), moved.to_path_buf());
        blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&parent)?;
            remove_tree(&t2.dir)?;
            std::fs::create_dir(&t2.dir)?;
            std::fs::set_permissions(&t2.dir, std::fs::Permissions::from_mode(0o700))?;
            t2.write_tag(&tag)?;
            if fence.incarnation != herd_driver::Incarnation::ANY {
                herd_driver::fence::write_record(&t2.dir, fence)?;
            }
            place(&from.join("os.qcow2"), &t2.os_disk())?;
            // The spec's data disks that were moved; one the spec has and the move has not is
            // made empty by install, one the spec no longer has is left behind.
            for lun in luns {
                let moved = from.join(format!("data-{lun}.qcow2"));
                if moved.is_file() {
                    place(&moved, &t2.data_disk(lun))?;
                }
            }
            Ok(())
        })
        .await?
        .map_err(|e| io_failed(key, "placing its moved disks", e))?;
        if let ImageSource::Disk { path: base, .. } = &spec.image {
            disk::rebase_overlay(Path::new(base), &tmp.os_disk())
                .await
                .map_err(|e| DriverError::host(format!("instance {key}: the moved OS disk"), e))?;
        }
        self.install(spec, &tmp, reimage_count, false).await?;
        let (t2, dir) = (tmp.clone(), d.dir.clone());
        blocking(move || {
            t2.write_power(Power::Running)?;
            std::fs::rename(&t2.dir, &dir)
        })
        .await?
        .map_err(|e| io_failed(key, "creating its directory", e))?;
        tracing::debug!(instance = %key, reimage = reimage_count, "created from moved disks");
        Ok(())
    }
}

/// Puts the moved file `from` at `to`: a hard link when both are on one file system (a disk
/// of gigabytes is not copied again), else a copy. The staging file is removed afterwards, so
/// the instance's name is the only one left.
fn place(from: &Path, to: &Path) -> std::io::Result<()> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to).map(|_| ())
}

#[async_trait]
impl Driver for QemuDriver {
    fn name(&self) -> &'static str {
        "qemu"
    }

    async fn ensure(&self, spec: &InstanceSpec, fence: Fence) -> Result<(), DriverError> {
        let _g = self.lock_admitted(&spec.key, fence).await?;
        check_spec(spec)?;
        let existed = self.materialize(spec, fence).await?;
        if existed && self.live(&spec.key).await?.is_some() {
            return Ok(());
        }
        self.start(&spec.key, &self.shared.vm(&spec.key)).await
    }

    async fn set_power(&self, key: &InstanceKey, target: PowerTarget, fence: Fence) -> Result<(), DriverError> {
        let _g = self.lock_admitted(key, fence).await?;
        let d = self.existing(key)?;
        match target {
            PowerTarget::Running => {
                if self.live(key).await?.is_none() {
                    self.start(key, &d).await?;
                }
                Ok(())
            }
            PowerTarget::Stopped => self.stop(key, &d, Power::Stopped).await,
            PowerTarget::Deallocated => self.stop(key, &d, Power::Deallocated).await,
        }
    }

    async fn restart(&self, key: &InstanceKey, fence: Fence) -> Result<(), DriverError> {
        let _g = self.lock_admitted(key, fence).await?;
        let d = self.existing(key)?;
        self.stop(key, &d, Power::Stopped).await?;
        self.start(key, &d).await
    }

    /// A graceful stop, the new vCPUs and memory in `spec.json`, and a start: the disks and
    /// the seed are kept (the guest sees the same instance, bigger or smaller).
    async fn resize(&self, spec: &InstanceSpec, fence: Fence) -> Result<(), DriverError> {
        let key = &spec.key;
        let _g = self.lock_admitted(key, fence).await?;
        check_spec(spec)?;
        let d = self.existing(key)?;
        self.stop(key, &d, Power::Stopped).await?;
        let io = |e: std::io::Error| io_failed(key, "spec.json", e);
        let mut vm = d.read_spec().map_err(io)?;
        vm.vcpus = spec.size.vcpus;
        vm.memory_mib = spec.size.memory_mib;
        vm.model_generation = spec.model_generation;
        d.write_spec(&vm).map_err(io)?;
        self.start(key, &d).await
    }

    async fn reimage(&self, spec: &InstanceSpec, fence: Fence) -> Result<(), DriverError> {
        let key = &spec.key;
        let _g = self.lock_admitted(key, fence).await?;
        check_spec(spec)?;
        let d = self.shared.vm(key);
        if !d.exists() {
            self.materialize(spec, fence).await?;
            return self.start(key, &d).await;
        }
        self.stop(key, &d, Power::Stopped).await?;
        let d2 = d.clone();
        let count = blocking(move || d2.read_spec().map(|s| s.reimage_count + 1).unwrap_or(1)).await?;
        self.install(spec, &d, count, true).await?;
        tracing::debug!(instance = %key, reimage = count, "reimaged");
        self.start(key, &d).await
    }

    async fn destroy(&self, key: &InstanceKey, fence: Fence) -> Result<(), DriverError> {
        let _g = self.locks.lock(key).await;
        let d = self.shared.vm(key);
        if d.exists() && d.is_foreign(&self.shared.cfg.tag) {
            return Err(DriverError::Failed(format!(
                "instance {key}: its directory {} belongs to another herd cluster (another tag); not touched",
                d.dir.display()
            )));
        }
        self.admit(key, fence).await?;
        // The recorded QEMU and any other carrying the instance's marker (an orphan, or a
        // crash between starting QEMU and recording it).
        let (shared, k, d2) = (self.shared.clone(), key.clone(), d.clone());
        let ids = blocking(move || {
            let mut ids: Vec<ProcId> =
                procfs::scan(&shared.prefix).into_iter().filter(|(pk, _)| *pk == k).map(|(_, id)| id).collect();
            if let Some(id) = d2.read_pid().and_then(|r| r.id) {
                if procfs::is_instance_qemu(id, &shared.prefix, &k) && !ids.contains(&id) {
                    ids.push(id);
                }
            }
            ids
        })
        .await?;
        for id in ids {
            tracing::debug!(instance = %key, pid = id.pid, "killing QEMU");
            self.halt(key, &d, id, false).await?;
        }
        self.unplug(key).await?;
        let d2 = d.clone();
        blocking(move || {
            // A readiness task may write into the directory while it is removed: retry.
            let mut last = Ok(());
            for _ in 0..5 {
                last = remove_tree(&d2.dir);
                if last.is_ok() {
                    break;
                }
                std::thread::sleep(POLL);
            }
            for sock in [d2.qmp_socket(), d2.qga_socket()] {
                if !sock.starts_with(&d2.dir) {
                    let _ = std::fs::remove_file(sock);
                }
            }
            // What a create that failed part-way left beside it.
            if let (Some(parent), Some(id)) = (d2.dir.parent(), d2.dir.file_name()) {
                let _ = remove_tree(&parent.join(format!(".{}.creating", id.to_string_lossy())));
            }
            last
        })
        .await?
        .map_err(|e| io_failed(key, "removing its directory", e))?;
        self.locks.forget(key);
        self.shared.answered.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        tracing::debug!(instance = %key, "destroyed");
        Ok(())
    }

    async fn list(&self) -> Result<Vec<ObservedInstance>, DriverError> {
        let shared = self.shared.clone();
        let (observed, to_watch) = blocking(move || shared.observe()).await?;
        for (key, d, id, readiness, offset) in to_watch {
            self.shared.watch(&key, &d, id, readiness, offset);
        }
        Ok(observed)
    }

    /// CPU and memory from `/proc` (the QEMU process as the host sees it). Network counters come
    /// from the guest agent (`guest-network-get-interfaces`), only when the image has one, the
    /// guest is ready and no script holds the agent (it serves one client at a time); each of
    /// those calls is bounded by [`STATS_AGENT_TIMEOUT`]. Otherwise there is no network data.
    async fn stats(&self, key: &InstanceKey) -> Result<Option<InstanceStats>, DriverError> {
        let (shared, k) = (self.shared.clone(), key.clone());
        let base = blocking(move || {
            let id = shared.live(&k)?;
            let st = procfs::read_stat(id.pid).filter(|s| s.starttime == id.start)?;
            let ticks = st.utime.saturating_add(st.stime);
            let d = shared.vm(&k);
            let agent = d.read_ready() == Some(id) && d.read_spec().is_ok_and(|s| agent_known(&d, &s) == Some(true));
            let stats = InstanceStats {
                cpu_seconds: ticks as f64 / procfs::clock_ticks() as f64,
                memory_bytes: procfs::read_rss_bytes(id.pid)?,
                cpu_percent: None,
                net_rx_bytes: None,
                net_tx_bytes: None,
            };
            Some((stats, agent.then(|| d.qga_socket())))
        })
        .await?;
        let Some((mut stats, agent)) = base else { return Ok(None) };
        if let (Some(sock), Some(_guard)) = (agent, self.shared.script_locks.try_lock(key)) {
            let traffic = match Qga::connect(&sock, STATS_AGENT_TIMEOUT).await {
                Ok(qga) => qga.with_timeout(STATS_AGENT_TIMEOUT).network_traffic().await,
                Err(e) => Err(e),
            };
            match traffic {
                Ok(Some((rx, tx))) => (stats.net_rx_bytes, stats.net_tx_bytes) = (Some(rx), Some(tx)),
                Ok(None) => {}
                Err(e) => tracing::debug!(instance = %key, error = %e, "no network counters from the guest agent"),
            }
        }
        Ok(Some(stats))
    }

    async fn run_script(&self, key: &InstanceKey, run: &ScriptRun, fence: Fence) -> Result<ScriptOutcome, DriverError> {
        check_component("extension name", &run.name, false)?;
        for name in run.file_names() {
            check_component("script file name", name, true)?;
        }
        // The fence is checked under the instance lock (which every other acting call holds),
        // released before the script lock is taken: a script may run for minutes.
        drop(self.lock_admitted(key, fence).await?);
        let _g = self.shared.script_locks.lock(key).await;
        self.run_script_locked(key, run).await
    }

    fn guest_agents_answered(&self) -> Vec<(InstanceKey, ImageSource)> {
        let answered = self.shared.answered.lock().unwrap_or_else(|e| e.into_inner());
        answered.iter().map(|(k, i)| (k.clone(), i.clone())).collect()
    }

    async fn console_log(&self, key: &InstanceKey, max_bytes: usize) -> Result<Option<String>, DriverError> {
        let d = self.shared.vm(key);
        blocking(move || {
            if !d.exists() {
                return None;
            }
            let tail = vm_dir::read_tail(&d.console(), max_bytes as u64).unwrap_or_default();
            Some(String::from_utf8_lossy(&tail).into_owned())
        })
        .await
    }

    /// `os.qcow2`, every `data-<lun>.qcow2` and `spec.json` (for the reimage count) of the
    /// stopped VM; refused while QEMU runs.
    async fn state_files(&self, key: &InstanceKey, fence: Fence) -> Result<Vec<herd_driver::StateFile>, DriverError> {
        let _g = self.lock_admitted(key, fence).await?;
        let d = self.existing(key)?;
        if let Some(id) = self.live(key).await? {
            return Err(DriverError::Failed(format!(
                "instance {key} is running (QEMU pid {}): stop it before its disks are copied",
                id.pid
            )));
        }
        let (k, d2) = (key.clone(), d.clone());
        blocking(move || Self::state_files_in(&k, &d2)).await?
    }

    /// As `ensure`, with a new instance built on the moved disks in `dir` (see
    /// `materialize_moved`); an existing instance is kept and started if stopped.
    async fn ensure_moved(&self, spec: &InstanceSpec, fence: Fence, dir: &Path) -> Result<(), DriverError> {
        let _g = self.lock_admitted(&spec.key, fence).await?;
        check_spec(spec)?;
        let d = self.shared.vm(&spec.key);
        if d.exists() {
            self.materialize(spec, fence).await?;
            if self.live(&spec.key).await?.is_some() {
                return Ok(());
            }
        } else {
            self.materialize_moved(spec, fence, dir).await?;
        }
        self.start(&spec.key, &d).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(term: u64, incarnation: u64) -> Fence {
        Fence::new(herd_driver::Term(term), herd_driver::Incarnation(incarnation))
    }

    fn fenced_with(e: DriverError, call: Fence, seen: Fence) {
        assert!(matches!(&e, DriverError::Fenced(x) if x.call == call && x.seen == seen), "{e:?}");
        assert!(!e.retryable());
        let msg = e.to_string();
        assert!(msg.contains(&call.to_string()) && msg.contains(&seen.to_string()), "{msg}");
    }

    /// No VM is needed: an instance directory with a record and no QEMU is enough to show that
    /// a lower fence is refused before anything happens, that a higher one is recorded, and that
    /// the record is read back by a new driver object on the same root.
    #[tokio::test]
    async fn lower_fences_are_refused_and_the_record_survives_a_new_driver() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = QemuConfig::new(tmp.path().join("vms"), "fence-test");
        let key = InstanceKey {
            group: herd_model::GroupName::new("rg").unwrap(),
            set: herd_model::ScaleSetName::new("vm").unwrap(),
            id: herd_model::InstanceId(4),
        };
        let d = QemuDriver::new(cfg.clone()).unwrap();
        let dir = d.instance_dir(&key);
        std::fs::create_dir_all(&dir).unwrap();
        let vm = d.shared.vm(&key);
        vm.write_tag(&cfg.tag).unwrap();
        vm.write_power(Power::Stopped).unwrap();
        herd_driver::fence::write_record(&dir, fence(2, 3)).unwrap();
        let image = ImageSource::Directory { path: "/nonexistent".into() };
        let size = herd_model::sku::SkuSize { vcpus: 1, memory_mib: 64 };
        let spec = InstanceSpec::new(key.clone(), "vm000004", image, size, "127.200.9.4");
        let run = ScriptRun {
            name: "x".into(),
            files: vec![],
            downloads: Default::default(),
            command: "true".into(),
            timeout: Duration::from_secs(1),
            identity: "x".into(),
        };
        drop(d);
        let d = QemuDriver::new(cfg.clone()).unwrap();
        for low in [fence(1, 3), fence(2, 2), fence(5, 1)] {
            // The fence is checked before the spec (this one could never build): nothing is tried.
            fenced_with(d.ensure(&spec, low).await.unwrap_err(), low, fence(2, 3));
            fenced_with(d.resize(&spec, low).await.unwrap_err(), low, fence(2, 3));
            fenced_with(d.reimage(&spec, low).await.unwrap_err(), low, fence(2, 3));
            fenced_with(d.set_power(&key, PowerTarget::Running, low).await.unwrap_err(), low, fence(2, 3));
            fenced_with(d.restart(&key, low).await.unwrap_err(), low, fence(2, 3));
            fenced_with(d.run_script(&key, &run, low).await.unwrap_err(), low, fence(2, 3));
            fenced_with(d.destroy(&key, low).await.unwrap_err(), low, fence(2, 3));
        }
        assert!(dir.is_dir() && d.pid(&key).is_none(), "a refused call changed nothing");
        // Equal passes (the spec error comes from the spec check behind the fence).
        let e = d.ensure(&spec, fence(2, 3)).await.unwrap_err();
        assert!(matches!(e, DriverError::InvalidSpec { .. }) && !e.retryable(), "{e:?}");
        // Higher passes and is recorded, durably: a new driver refuses the old fence.
        d.set_power(&key, PowerTarget::Stopped, fence(3, 3)).await.unwrap();
        assert_eq!(herd_driver::fence::read_record(&dir).unwrap(), Some(fence(3, 3)));
        drop(d);
        let d = QemuDriver::new(cfg.clone()).unwrap();
        fenced_with(d.set_power(&key, PowerTarget::Stopped, fence(2, 3)).await.unwrap_err(), fence(2, 3), fence(3, 3));
        // An orphan sweep checks the term only; destroy takes the record with the directory.
        d.destroy(&key, Fence::sweep(herd_driver::Term(3))).await.unwrap();
        assert!(!dir.exists());
        // A directory made before fencing (no record) accepts the first call and records it.
        std::fs::create_dir_all(&dir).unwrap();
        vm.write_tag(&cfg.tag).unwrap();
        vm.write_power(Power::Stopped).unwrap();
        d.set_power(&key, PowerTarget::Stopped, fence(1, 0)).await.unwrap();
        assert_eq!(herd_driver::fence::read_record(&dir).unwrap(), Some(fence(1, 0)));
        d.destroy(&key, Fence::FIRST).await.unwrap();
    }

    #[test]
    fn readiness_follows_what_is_known_of_the_agent() {
        assert_eq!(Readiness::of(Some(true)), Readiness::Agent);
        assert_eq!(Readiness::of(Some(false)), Readiness::Console, "--guest-agent false: never probed");
        assert_eq!(Readiness::of(None), Readiness::Detect);
    }

    #[test]
    fn an_agent_answer_counts_for_the_disk_it_answered_on() {
        let dir = tempfile::tempdir().unwrap();
        let d = VmDir { dir: dir.path().to_path_buf(), socket_fallback: dir.path().to_path_buf() };
        let mut spec = VmSpec {
            key: "g/s/1".into(),
            computer_name: "s000001".into(),
            image: ImageSource::Disk { path: "/img/disk.qcow2".into(), format: "qcow2".into() },
            vcpus: 1,
            memory_mib: 256,
            reach_address: "127.128.0.1".parse().unwrap(),
            ports: vec![],
            guest_agent: None,
            data_disks: vec![],
            mac: "52:54:00:00:00:01".into(),
            instance_id: "herd-g-s-1-0".into(),
            reimage_count: 0,
            model_generation: 1,
            metadata_endpoint: None,
            network: None,
        };
        assert_eq!(agent_known(&d, &spec), None, "unknown until it answers; a timeout records nothing");
        d.write_agent_answered(&spec).unwrap();
        assert_eq!(agent_known(&d, &spec), Some(true));
        assert_eq!(Readiness::of(agent_known(&d, &spec)), Readiness::Agent, "the next boot waits for it");
        spec.instance_id = "herd-g-s-1-1".into();
        assert_eq!(agent_known(&d, &spec), None, "a reimage starts over");
        spec.guest_agent = Some(false);
        assert_eq!(agent_known(&d, &spec), Some(false), "the import's answer wins");
        // An old spec.json with a plain boolean still reads.
        let old = serde_json::to_string(&spec).unwrap().replace("\"guestAgent\":false", "\"guestAgent\":true");
        assert_eq!(serde_json::from_str::<VmSpec>(&old).unwrap().guest_agent, Some(true));
    }

    #[test]
    fn ready_lines_are_recognised() {
        assert!(console_says_ready("x\nHERD-GUEST-READY hostname=a version=1\n"));
        assert!(console_says_ready(
            "[  12.3] cloud-init[512]: Cloud-init v. 23.1.2-0ubuntu0~22.04.1 finished at Mon, 01 Jan 2024 \
             00:00:00 +0000. Datasource DataSourceNoCloud [seed=/dev/vdb].  Up 12.34 seconds\n"
        ));
        assert!(!console_says_ready("Cloud-init v. 23.1 running 'modules:final' at ...\n"));
        assert!(!console_says_ready("booting\n"));
    }

    #[test]
    fn failed_forwards_name_address_and_port() {
        let log = "qemu-system-x86_64: -netdev user,id=net0,hostfwd=tcp:127.200.4.1:80-:80: \
                   Could not set up host forwarding rule 'tcp:127.200.4.1:80-:80'\n";
        assert_eq!(failed_forward(log), Some(("127.200.4.1".to_string(), 80)));
        assert_eq!(failed_forward("qemu: could not open kernel file"), None);
    }

    #[test]
    fn guest_path_components_are_checked() {
        assert!(check_component("n", "custom-script_1.0", false).is_ok());
        assert!(check_component("n", ".env", true).is_ok());
        for bad in ["", ".", "..", "a/b", "a'b", "a b", GUEST_COMMAND_FILE, ".hidden"] {
            assert!(check_component("n", bad, false).is_err(), "{bad:?}");
        }
        assert!(check_component("n", GUEST_COMMAND_FILE, true).is_err());
    }

    #[test]
    fn outcomes_keep_tails_and_codes() {
        let st = ExecStatus { exited: true, exitcode: Some(3), stdout: vec![b'x'; 10_000], ..Default::default() };
        let o = outcome(st, false);
        assert_eq!((o.exit_code, o.timed_out, o.stdout.len()), (Some(3), false, SCRIPT_OUTPUT_TAIL));
        let killed = outcome(ExecStatus { exited: true, signal: Some(9), ..Default::default() }, true);
        assert_eq!((killed.exit_code, killed.timed_out), (None, true));
    }
}
