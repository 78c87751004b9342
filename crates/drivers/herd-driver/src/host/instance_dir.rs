//! The instance directory both host-side drivers keep: `<root>/<group>/<set>/<id>/`.
//!
//! Why: the directory is the driver's memory across server restarts, so its layout and the
//! files every driver writes the same way (`power`, `tag`) are defined once. Every write goes
//! through a temporary file and a rename ([`atomic_write`]), so a crash never leaves half a
//! file; a reader that finds a file missing or unreadable gets `None`.

use herd_model::{GroupName, InstanceId, InstanceKey, ScaleSetName};
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Desired power, as kept in the `power` file (the qemu driver) or the state file (the process
/// driver).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Power {
    Running,
    Stopped,
    Deallocated,
}

impl Power {
    pub fn as_str(self) -> &'static str {
        match self {
            Power::Running => "running",
            Power::Stopped => "stopped",
            Power::Deallocated => "deallocated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "running" => Some(Power::Running),
            "stopped" => Some(Power::Stopped),
            "deallocated" => Some(Power::Deallocated),
            _ => None,
        }
    }
}

/// `<root>/<group>/<set>/<id>`: where the instance `key` lives.
pub fn instance_path(root: &Path, key: &InstanceKey) -> PathBuf {
    root.join(key.group.as_str()).join(key.set.as_str()).join(key.id.0.to_string())
}

/// `<root>/<group>/<set>`: the directory holding the instances of `key`'s scale set, created if
/// absent. One this call creates is marked as the top of unrelated trees ([`mark_unrelated`]),
/// so the instance directories in it are spread over the file system.
pub fn ensure_set_dir(root: &Path, key: &InstanceKey) -> io::Result<PathBuf> {
    let dir = root.join(key.group.as_str()).join(key.set.as_str());
    if !dir.is_dir() {
        fs::create_dir_all(&dir)?;
        mark_unrelated(&dir);
    }
    Ok(dir)
}

/// Marks every set directory (`<root>/<group>/<set>`) already under `root` as
/// [`mark_unrelated`]: those an older server created carry no mark. Best effort, as that is.
pub fn mark_set_dirs(root: &Path) {
    let subdirs = |p: &Path| -> Vec<PathBuf> {
        fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect()
    };
    for group in subdirs(root) {
        for set in subdirs(&group) {
            mark_unrelated(&set);
        }
    }
}

/// Marks the directory `dir` as the top of directory trees unrelated to each other
/// (`FS_TOPDIR_FL`, what `chattr +T` sets); returns whether it carries the mark. Best effort:
/// file systems without the flag (tmpfs) refuse it, and nothing else changes.
///
/// Why: ext4's Orlov allocator puts a new directory in its parent's block group, and each file
/// in its directory's, so every instance of a set would share one group. On ext4 without a
/// journal a new inode is never taken from those freed in the last minute (five when the inode
/// table is dirty): each allocation scans past them, one buffer-cache lookup each. Creating a
/// thousand instances right after a thousand were deleted then scans past thousands of inodes
/// per file, and the time grows with the square of the churn. Under a top directory the
/// allocator spreads new subdirectories over the groups with the fewest directories, so each
/// instance's files land in a group of their own, with few recently freed inodes to skip.
pub fn mark_unrelated(dir: &Path) -> bool {
    use rustix::fs::{ioctl_getflags, ioctl_setflags, IFlags};
    let Ok(f) = fs::File::open(dir) else { return false };
    match ioctl_getflags(&f) {
        Ok(flags) if flags.contains(IFlags::TOPDIR) => true,
        Ok(flags) => ioctl_setflags(&f, flags | IFlags::TOPDIR).is_ok(),
        Err(_) => false,
    }
}

/// The desired power recorded in `dir`.
pub fn read_power(dir: &Path) -> Option<Power> {
    Power::parse(&fs::read_to_string(dir.join("power")).ok()?)
}

pub fn write_power(dir: &Path, p: Power) -> io::Result<()> {
    atomic_write(&dir.join("power"), format!("{}\n", p.as_str()).as_bytes())
}

/// The tag of the cluster that owns the instance in `dir`, if recorded.
pub fn read_tag(dir: &Path) -> Option<String> {
    fs::read_to_string(dir.join("tag")).ok().map(|t| t.trim_end_matches('\n').to_string())
}

pub fn write_tag(dir: &Path, tag: &str) -> io::Result<()> {
    atomic_write(&dir.join("tag"), format!("{tag}\n").as_bytes())
}

/// Every instance directory under `root`, by key. Anything that is not a valid
/// `<group>/<set>/<id>` (such as a `.N.creating` directory) is skipped.
pub fn walk(root: &Path) -> Vec<(InstanceKey, PathBuf)> {
    let subdirs = |p: &Path| -> Vec<(String, PathBuf)> {
        fs::read_dir(p)
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let e = e.ok()?;
                if !e.file_type().ok()?.is_dir() {
                    return None;
                }
                Some((e.file_name().into_string().ok()?, e.path()))
            })
            .collect()
    };
    let mut out = Vec::new();
    for (g, gp) in subdirs(root) {
        let Ok(group) = GroupName::new(g) else { continue };
        for (s, sp) in subdirs(&gp) {
            let Ok(set) = ScaleSetName::new(s) else { continue };
            for (i, ip) in subdirs(&sp) {
                let Ok(id) = i.parse::<u64>() else { continue };
                if id.to_string() != i {
                    continue;
                }
                out.push((InstanceKey { group: group.clone(), set: set.clone(), id: InstanceId(id) }, ip));
            }
        }
    }
    out
}

/// The last `max` bytes of a file.
pub fn read_tail(path: &Path, max: u64) -> Option<Vec<u8>> {
    let mut f = fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(max))).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// The last non-empty line (trimmed) in the last 4 KiB of a log file.
pub fn last_log_line(path: &Path) -> Option<String> {
    let tail = read_tail(path, 4096)?;
    let text = String::from_utf8_lossy(&tail);
    Some(text.lines().rev().map(str::trim).find(|l| !l.is_empty())?.to_string())
}

/// Writes `bytes` to `path` through a uniquely named temporary file and a rename.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    atomic_write_mode(path, bytes, 0o644)
}

/// [`atomic_write`] creating the file with `mode` (the umask may only take bits away; they are
/// set explicitly).
pub fn atomic_write_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp =
        path.with_file_name(format!(".{name}.tmp-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let written = (|| {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// `Ok` for a `NotFound` error: removing what is already gone succeeds.
pub fn ignore_missing(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Removes a tree; `Ok` if it is already gone.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    ignore_missing(fs::remove_dir_all(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_and_tag_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(read_power(tmp.path()), None);
        for p in [Power::Running, Power::Stopped, Power::Deallocated] {
            write_power(tmp.path(), p).unwrap();
            assert_eq!(read_power(tmp.path()), Some(p));
        }
        assert_eq!(Power::parse("bogus"), None);
        assert_eq!(read_tag(tmp.path()), None);
        write_tag(tmp.path(), "t1").unwrap();
        assert_eq!(read_tag(tmp.path()).as_deref(), Some("t1"));
    }

    #[test]
    fn walk_finds_only_instance_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let key = InstanceKey::parse_path("rg/web/7").unwrap();
        let dir = instance_path(tmp.path(), &key);
        fs::create_dir_all(&dir).unwrap();
        fs::create_dir_all(tmp.path().join("rg/web/.8.creating")).unwrap();
        fs::create_dir_all(tmp.path().join("rg/web/08")).unwrap();
        fs::create_dir_all(tmp.path().join("rg/BAD NAME/1")).unwrap();
        fs::write(tmp.path().join("rg/web/9"), "a file").unwrap();
        assert_eq!(walk(tmp.path()), vec![(key, dir)]);
        assert!(walk(&tmp.path().join("missing")).is_empty());
    }

    #[test]
    fn set_directories_are_created_and_marked_where_the_file_system_can() {
        let tmp = tempfile::tempdir().unwrap();
        let key = InstanceKey::parse_path("rg/web/7").unwrap();
        let set = ensure_set_dir(tmp.path(), &key).unwrap();
        assert_eq!(set, tmp.path().join("rg/web"));
        assert!(set.is_dir());
        assert_eq!(ensure_set_dir(tmp.path(), &key).unwrap(), set, "an existing one is kept");
        let marked = rustix::fs::ioctl_getflags(fs::File::open(&set).unwrap())
            .is_ok_and(|f| f.contains(rustix::fs::IFlags::TOPDIR));
        assert_eq!(mark_unrelated(&set), marked, "it reports what the directory carries");
        // 0xEF53: ext4's magic (EXT4_SUPER_MAGIC).
        if rustix::fs::statfs(&set).is_ok_and(|s| s.f_type == 0xEF53) {
            assert!(marked, "ext4 takes the mark");
        }
        assert!(!mark_unrelated(&tmp.path().join("missing")));
        // One an older server made is marked when a driver starts on the root.
        let old = tmp.path().join("rg/old");
        fs::create_dir_all(&old).unwrap();
        mark_set_dirs(tmp.path());
        let flagged = |p: &Path| {
            rustix::fs::ioctl_getflags(fs::File::open(p).unwrap()).is_ok_and(|f| f.contains(rustix::fs::IFlags::TOPDIR))
        };
        assert_eq!(flagged(&old), marked);
    }

    #[test]
    fn atomic_writes_set_the_mode_and_leave_no_temporary() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("secret");
        atomic_write_mode(&p, b"x", 0o600).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        atomic_write(&p, b"y").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"y");
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
        assert!(atomic_write(&tmp.path().join("gone/file"), b"z").is_err());
    }

    #[test]
    fn last_log_lines_and_removals() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("console.log");
        assert_eq!(last_log_line(&log), None);
        fs::write(&log, "first\n  last line  \n\n").unwrap();
        assert_eq!(last_log_line(&log).as_deref(), Some("last line"));
        assert_eq!(read_tail(&log, 4).unwrap(), b"  \n\n");
        remove_tree(&tmp.path().join("missing")).unwrap();
        ignore_missing(fs::remove_file(tmp.path().join("missing"))).unwrap();
    }
}
