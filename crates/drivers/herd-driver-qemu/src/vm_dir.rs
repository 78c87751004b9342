//! The on-disk layout of one VM and the small files in it.
//!
//! Why: the instance directory *is* the driver's state. Nothing that matters is kept in memory,
//! so a new server on the same root sees exactly what the old one left (re-adoption), and every
//! small file is written atomically (a uniquely named temporary file, then a rename) so a crash
//! leaves either the old or the new content.
//!
//! ```text
//! root/<group>/<set>/<id>/
//!   spec.json      what starting the VM needs without the instance spec (VmSpec)
//!   tag            the driver tag (it names the herd cluster) of the driver that created it;
//!                  a directory with another tag is another cluster's and is never touched
//!   os.qcow2       OS disk: overlay on the image's disk, or an empty disk (kernel images)
//!   data-<lun>.qcow2  data disks, kept across reimage
//!   seed.img       NoCloud seed (FAT, label CIDATA), mode 0600: it may hold a password hash
//!   power          desired power: running | stopped | deallocated
//!   pid            "<pid> <starttime> <console offset>" of the current (or last) QEMU;
//!                  "0 0 <offset>" while a start is under way
//!   ready          "<pid> <starttime>" of the QEMU whose guest was seen ready
//!   boot-id        the host's boot id when QEMU was last started
//!   start-error    why the last start failed (removed by the next start)
//!   script-run     the extension run in progress (ScriptRunRecord: name, identity, the
//!                  guest-exec pid), written when the agent has started it, removed when its
//!                  result is taken; a new server adopts or kills it (see the driver docs)
//!   console.log    serial console (appended across boots)
//!   qemu.log       QEMU's own messages of its current (or last) run
//!   qemu.pid       written by QEMU (-pidfile), removed by QEMU when it exits
//!   qmp.sock       QMP socket          \  here when the path fits in a Unix socket address,
//!   qga.sock       guest-agent socket  /  else in a private short directory (see below)
//! ```

use crate::procfs::ProcId;
use herd_driver::host::instance_dir;
use herd_driver::DataDisk;
use herd_model::image::ImageSource;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::PathBuf;

/// The longest socket path QEMU and we can use (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

pub(crate) use herd_driver::host::instance_dir::{atomic_write, ignore_missing, read_tail, remove_tree, walk, Power};

/// What starting a VM needs, fixed at create and reimage time (`spec.json`). Secrets (password
/// hash, custom data) are not kept here: they are in the seed image only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VmSpec {
    pub key: String,
    pub computer_name: String,
    pub image: ImageSource,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub reach_address: std::net::Ipv4Addr,
    /// Guest TCP ports forwarded from `reach_address` (same port on both sides), sorted.
    pub ports: Vec<u16>,
    /// Whether the image runs the QEMU guest agent; `None`: not known, detected at boot (the
    /// `guest-agent` file records an answer). Older `spec.json` files hold a plain boolean.
    #[serde(default)]
    pub guest_agent: Option<bool>,
    pub data_disks: Vec<DataDisk>,
    pub mac: String,
    /// The seed's `instance-id`; new on every reimage.
    pub instance_id: String,
    /// How often the instance was reimaged (0: as created).
    pub reimage_count: u64,
    pub model_generation: u64,
    /// The instance's metadata endpoint on the host, forwarded into the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_endpoint: Option<std::net::SocketAddr>,
    /// Bridged networking: the subnet's bridge and the instance's address on it (its NIC is a
    /// TAP on that bridge). `None`: user networking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<herd_driver::NetworkAttachment>,
}

/// The `pid` file: the QEMU of the current (or last) start and where its boot begins in
/// `console.log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PidRecord {
    /// `None` while a start is under way (or after it failed before QEMU ran).
    pub id: Option<ProcId>,
    pub console_offset: u64,
}

impl PidRecord {
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split_whitespace();
        let pid: u32 = it.next()?.parse().ok()?;
        let start: u64 = it.next()?.parse().ok()?;
        let console_offset = it.next().and_then(|o| o.parse().ok()).unwrap_or(0);
        Some(Self { id: (pid != 0).then_some(ProcId { pid, start }), console_offset })
    }

    pub fn render(&self) -> String {
        let (pid, start) = self.id.map_or((0, 0), |id| (id.pid, id.start));
        format!("{pid} {start} {}\n", self.console_offset)
    }
}

/// An extension run the guest agent started: enough for the next server to find it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ScriptRunRecord {
    pub name: String,
    /// The caller's identity of the run (`ScriptRun::identity`).
    pub identity: String,
    /// The guest-exec pid (also the process group of the script in the guest).
    pub pid: i64,
    /// When it started (ms since the epoch) and how long it may run.
    pub started_ms: u64,
    pub timeout_ms: u64,
}

/// Paths and file access for one instance directory.
#[derive(Debug, Clone)]
pub(crate) struct VmDir {
    pub dir: PathBuf,
    /// Where the sockets go when `dir` is too long for a socket address (see [`VmDir::socket`]).
    pub socket_fallback: PathBuf,
}

impl VmDir {
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    pub fn os_disk(&self) -> PathBuf {
        self.file("os.qcow2")
    }
    pub fn data_disk(&self, lun: u32) -> PathBuf {
        self.file(&format!("data-{lun}.qcow2"))
    }
    pub fn seed(&self) -> PathBuf {
        self.file("seed.img")
    }
    pub fn console(&self) -> PathBuf {
        self.file("console.log")
    }
    pub fn qemu_log(&self) -> PathBuf {
        self.file("qemu.log")
    }
    pub fn qemu_pidfile(&self) -> PathBuf {
        self.file("qemu.pid")
    }

    /// A socket's path: in the instance directory when that fits in a Unix socket address,
    /// else `<fallback>-<name>` in the driver's private socket directory.
    pub fn socket(&self, name: &str) -> PathBuf {
        let here = self.file(name);
        if here.as_os_str().len() <= MAX_SOCKET_PATH {
            return here;
        }
        let stem = self.socket_fallback.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        self.socket_fallback.with_file_name(format!("{stem}-{name}"))
    }
    pub fn qmp_socket(&self) -> PathBuf {
        self.socket("qmp.sock")
    }
    pub fn qga_socket(&self) -> PathBuf {
        self.socket("qga.sock")
    }

    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// The extension run in progress, if one is recorded (and readable).
    pub fn read_script_run(&self) -> Option<ScriptRunRecord> {
        serde_json::from_str(&fs::read_to_string(self.file("script-run")).ok()?).ok()
    }

    pub fn write_script_run(&self, r: &ScriptRunRecord) -> io::Result<()> {
        let text = serde_json::to_string(r).map_err(io::Error::other)?;
        atomic_write(&self.file("script-run"), format!("{text}\n").as_bytes())
    }

    pub fn remove_script_run(&self) -> io::Result<()> {
        self.remove("script-run")
    }

    pub fn read_spec(&self) -> io::Result<VmSpec> {
        let text = fs::read_to_string(self.file("spec.json"))?;
        serde_json::from_str(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("spec.json: {e}")))
    }

    pub fn write_spec(&self, spec: &VmSpec) -> io::Result<()> {
        let text = serde_json::to_string_pretty(spec).map_err(io::Error::other)?;
        atomic_write(&self.file("spec.json"), format!("{text}\n").as_bytes())
    }

    /// The tag of the cluster that created this VM (absent in directories made before
    /// cluster ids, which the driver takes as its own).
    pub fn read_tag(&self) -> Option<String> {
        instance_dir::read_tag(&self.dir)
    }

    pub fn write_tag(&self, tag: &str) -> io::Result<()> {
        instance_dir::write_tag(&self.dir, tag)
    }

    /// Whether this directory is another cluster's: it records a tag other than `tag`.
    pub fn is_foreign(&self, tag: &str) -> bool {
        self.read_tag().is_some_and(|t| t != tag)
    }

    pub fn read_power(&self) -> Option<Power> {
        instance_dir::read_power(&self.dir)
    }

    pub fn write_power(&self, p: Power) -> io::Result<()> {
        if self.read_power() == Some(p) {
            return Ok(());
        }
        instance_dir::write_power(&self.dir, p)
    }

    pub fn read_pid(&self) -> Option<PidRecord> {
        PidRecord::parse(&fs::read_to_string(self.file("pid")).ok()?)
    }

    pub fn write_pid(&self, rec: PidRecord) -> io::Result<()> {
        atomic_write(&self.file("pid"), rec.render().as_bytes())
    }

    /// The QEMU whose guest was seen ready.
    pub fn read_ready(&self) -> Option<ProcId> {
        PidRecord::parse(&fs::read_to_string(self.file("ready")).ok()?)?.id
    }

    /// Records that the guest of `id` is ready. Never creates the directory (it may have been
    /// destroyed meanwhile).
    pub fn write_ready(&self, id: ProcId) -> io::Result<()> {
        if !self.exists() {
            return Ok(());
        }
        atomic_write(&self.file("ready"), PidRecord { id: Some(id), console_offset: 0 }.render().as_bytes())
    }

    /// Whether the guest agent has answered on this instance's current OS disk: the
    /// `guest-agent` file names the seed `instance_id` it answered under (a reimage changes it,
    /// so an answer from an earlier image does not count).
    pub fn agent_answered(&self, spec: &VmSpec) -> bool {
        fs::read_to_string(self.file("guest-agent")).is_ok_and(|s| s.trim() == spec.instance_id)
    }

    /// Records that the guest agent answered on the OS disk `spec` describes. Never creates
    /// the directory.
    pub fn write_agent_answered(&self, spec: &VmSpec) -> io::Result<()> {
        if !self.exists() {
            return Ok(());
        }
        atomic_write(&self.file("guest-agent"), format!("{}\n", spec.instance_id).as_bytes())
    }

    pub fn read_boot_id(&self) -> Option<String> {
        Some(fs::read_to_string(self.file("boot-id")).ok()?.trim().to_string())
    }

    pub fn write_boot_id(&self, id: &str) -> io::Result<()> {
        atomic_write(&self.file("boot-id"), format!("{id}\n").as_bytes())
    }

    pub fn read_start_error(&self) -> Option<String> {
        Some(fs::read_to_string(self.file("start-error")).ok()?.trim().to_string())
    }

    pub fn write_start_error(&self, msg: &str) -> io::Result<()> {
        if !self.exists() {
            return Ok(());
        }
        atomic_write(&self.file("start-error"), format!("{msg}\n").as_bytes())
    }

    pub fn remove(&self, name: &str) -> io::Result<()> {
        ignore_missing(fs::remove_file(self.file(name)))
    }

    /// The last non-empty line of a log file in the directory, shortened to `max_len` bytes.
    pub fn last_line(&self, name: &str, max_len: usize) -> Option<String> {
        Some(shorten(&instance_dir::last_log_line(&self.file(name))?, max_len))
    }
}

/// `s` cut to at most `max` bytes (on a character boundary), with `…` when cut.
pub(crate) fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn dir(p: &Path) -> VmDir {
        VmDir { dir: p.to_path_buf(), socket_fallback: p.join("fallback") }
    }

    #[test]
    fn a_directory_with_another_clusters_tag_is_foreign() {
        let t = tempfile::tempdir().unwrap();
        let d = dir(t.path());
        assert!(!d.is_foreign("herd:ours"), "no tag (older than cluster ids): ours");
        d.write_tag("herd:ours").unwrap();
        assert_eq!(d.read_tag().as_deref(), Some("herd:ours"));
        assert!(!d.is_foreign("herd:ours"));
        assert!(d.is_foreign("herd:theirs"));
    }

    #[test]
    fn files_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let d = dir(t.path());
        assert_eq!(d.read_power(), None);
        d.write_power(Power::Deallocated).unwrap();
        assert_eq!(d.read_power(), Some(Power::Deallocated));
        let rec = PidRecord { id: Some(ProcId { pid: 5, start: 6 }), console_offset: 77 };
        d.write_pid(rec).unwrap();
        assert_eq!(d.read_pid(), Some(rec));
        let starting = PidRecord { id: None, console_offset: 9 };
        d.write_pid(starting).unwrap();
        assert_eq!(d.read_pid(), Some(starting));
        assert_eq!(
            PidRecord::parse("12 34"),
            Some(PidRecord { id: Some(ProcId { pid: 12, start: 34 }), console_offset: 0 })
        );
        d.write_ready(ProcId { pid: 5, start: 6 }).unwrap();
        assert_eq!(d.read_ready(), Some(ProcId { pid: 5, start: 6 }));
        d.write_boot_id("abc").unwrap();
        assert_eq!(d.read_boot_id().as_deref(), Some("abc"));
        assert!(fs::read_dir(t.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains(".tmp")));
    }

    #[test]
    fn writes_into_a_removed_directory_do_not_recreate_it() {
        let t = tempfile::tempdir().unwrap();
        let gone = t.path().join("gone");
        let d = dir(&gone);
        d.write_ready(ProcId { pid: 1, start: 2 }).unwrap();
        d.write_start_error("x").unwrap();
        assert!(!gone.exists());
    }

    #[test]
    fn long_directories_put_sockets_in_the_fallback() {
        let short = dir(Path::new("/var/lib/herd/instances/g/s/1"));
        assert_eq!(short.qmp_socket(), Path::new("/var/lib/herd/instances/g/s/1/qmp.sock"));
        let long_group = "g".repeat(90);
        let long = VmDir {
            dir: Path::new("/var/lib/herd/instances").join(&long_group).join("s").join("1"),
            socket_fallback: PathBuf::from("/run/herd-qemu-x/0123456789abcdef"),
        };
        assert_eq!(long.qga_socket(), Path::new("/run/herd-qemu-x/0123456789abcdef-qga.sock"));
    }

    #[test]
    fn last_lines_are_shortened() {
        let t = tempfile::tempdir().unwrap();
        let d = dir(t.path());
        assert_eq!(d.last_line("console.log", 100), None);
        fs::write(d.console(), "first\nsecond line\n\n").unwrap();
        assert_eq!(d.last_line("console.log", 100).as_deref(), Some("second line"));
        assert_eq!(d.last_line("console.log", 6).as_deref(), Some("second…"));
        assert_eq!(shorten("ééé", 3), "é…");
    }
}
