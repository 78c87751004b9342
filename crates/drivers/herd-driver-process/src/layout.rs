//! The on-disk layout of one instance and the small files in it.
//!
//! Why: the instance directory *is* the driver's state. Nothing is kept in memory, so a new
//! server on the same root sees exactly what the old one left (re-adoption), and every write
//! that matters is atomic, so a crash leaves either the old or the new content. What the driver
//! remembers is one record in one file (`state`, see the `record` module), changed in place, so
//! an instance costs few inodes to create and none to restart.
//!
//! ```text
//! root/<group>/<set>/<id>/
//!   work/          copy of the image directory (the "disk"); cwd of init
//!   work/.herd/custom-data   spec.custom_data, when given (mode 0600)
//!   work/.herd/extensions/<name>/   an extension's files and the cwd of its script (see the
//!                  crate docs); .herd-command (mode 0600), .herd-runner, .herd-exit,
//!                  .herd-stdout and .herd-stderr (mode 0600, its output) only while it runs
//!   script-run     the extension run in progress: name, identity, nonce, script pid (see
//!                  the `runs` module), written before the script starts
//!   state          the instance's record (JSON in a two-slot file changed in place):
//!                    tag    the driver tag (it names the herd cluster) of the driver that
//!                           created it; a directory without ours is another cluster's and is
//!                           never touched
//!                    power  desired power: running | stopped | deallocated
//!                    env    the spec-derived environment, KEY/VALUE pairs
//!                    pid    pid and start time of the process group leader
//!                    exit   pid, start time and how it ended, written when init is reaped
//!                    net    the bridged-network attachment, if any
//!                    fence  the highest fence seen (see `herd_driver::fence`); written with
//!                           the record, synced when raised
//!   console.log    stdout + stderr of the instance (appended)
//!
//! root/<group>/<set>/.<id>.creating/   an instance being built, renamed to `<id>` when whole
//! root/<group>/<set>/.<id>.deleting/   an instance being removed, renamed from `<id>` first
//!
//! Servers before the state file kept `tag`, `power`, `env`, `pid`, `exit` and `net` as
//! separate files; such a directory is read as it is and migrated on its first change. Servers
//! before the fence moved into the record kept it in a `fence` file (temporary file, fsync,
//! rename): it is read while the record has none, and moves into the record when raised.
//! ```

use crate::procfs::ProcId;
use crate::record::{self, Exit, InstanceRecord};
use herd_driver::host::instance_dir;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub(crate) use herd_driver::host::instance_dir::{atomic_write, ignore_missing, remove_tree, Power};

/// Paths and file access for one instance directory.
#[derive(Debug, Clone)]
pub(crate) struct InstanceDir {
    pub dir: PathBuf,
}

impl InstanceDir {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// The record of the extension run in progress (see the `runs` module).
    pub fn script_run(&self) -> PathBuf {
        self.dir.join("script-run")
    }
    pub fn custom_data(&self) -> PathBuf {
        self.work().join(".herd").join("custom-data")
    }

    /// Where the directory goes while it is removed: `.<id>.deleting` beside it.
    fn trash(&self) -> PathBuf {
        let name = self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        self.dir.with_file_name(format!(".{name}.deleting"))
    }

    /// Removes the directory so that a crash never leaves it half removed under its name: it is
    /// renamed to `.<id>.deleting` first (which no listing reads as an instance), then removed
    /// from there; a leftover of an earlier removal cut short is removed first. So the
    /// instance's directory is whole or absent. (Removed in place, a `kill -9` in the middle
    /// could leave it without its record: read as another cluster's, it was refused by every
    /// later call, and its deletion never completed.) `Ok` if there is nothing to remove.
    pub fn remove(&self) -> io::Result<()> {
        let trash = self.trash();
        remove_tree(&trash)?;
        ignore_missing(fs::rename(&self.dir, &trash))?;
        remove_tree(&trash)
    }

    /// Whether this is what a removal cut short by a crash left, not an instance: a directory
    /// with no record at all (neither the state file nor a file of the older layout), or with a
    /// record that names nothing (no tag, no environment, no fence), as a late write of an exit
    /// status into a directory being removed (by a server before [`InstanceDir::remove`]) made
    /// one. Every instance, of any server version, has its environment recorded from its
    /// creation on, so a real instance (ours or another cluster's) is never taken for one.
    pub fn is_remnant(&self) -> bool {
        if !self.exists() || self.dir.join(herd_driver::fence::FENCE_FILE).exists() {
            return false;
        }
        record::read(&self.dir).is_ok_and(|r| r.tag.is_none() && r.env.is_empty() && r.fence.is_none())
    }

    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// The instance's record (see the `record` module); an unreadable one reads as empty
    /// (no tag: then it is nobody's and never touched).
    pub fn record(&self) -> InstanceRecord {
        record::read(&self.dir).unwrap_or_else(|e| {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read an instance's state file");
            InstanceRecord::default()
        })
    }

    /// Changes the record atomically; nothing is written if `change` changes nothing.
    pub fn edit(&self, change: impl FnMut(&mut InstanceRecord)) -> io::Result<()> {
        record::edit(&self.dir, change)
    }

    #[cfg(test)]
    pub fn read_power(&self) -> Option<Power> {
        self.record().power
    }

    pub fn write_power(&self, p: Power) -> io::Result<()> {
        self.edit(|r| r.power = Some(p))
    }

    /// The tag of the cluster that owns this instance, if recorded.
    pub fn read_tag(&self) -> Option<String> {
        self.record().tag
    }

    pub fn write_tag(&self, tag: &str) -> io::Result<()> {
        self.edit(|r| r.tag = Some(tag.to_string()))
    }

    pub fn read_pid(&self) -> Option<ProcId> {
        self.record().pid
    }

    pub fn write_pid(&self, id: ProcId) -> io::Result<()> {
        self.edit(|r| r.pid = Some(id))
    }

    pub fn remove_pid(&self) -> io::Result<()> {
        self.edit(|r| r.pid = None)
    }

    /// How the process `id` ended, if it was recorded. `id` 0/0 records a failed spawn.
    pub fn read_exit(&self, id: ProcId) -> Option<String> {
        self.record().exit.filter(|x| x.process == id).map(|x| x.how)
    }

    /// Records how `id` ended. Never creates the directory (it may have been destroyed).
    pub fn write_exit(&self, id: ProcId, how: &str) -> io::Result<()> {
        let exit = Exit { process: id, how: how.replace('\n', " ").trim().to_string() };
        ignore_missing(self.edit(|r| r.exit = Some(exit.clone())))
    }

    pub fn read_env(&self) -> io::Result<Vec<(String, String)>> {
        Ok(record::read(&self.dir)?.env)
    }

    pub fn write_env(&self, env: &[(String, String)]) -> io::Result<()> {
        self.edit(|r| r.env = env.to_vec())
    }

    pub fn write_custom_data(&self, work: &Path, data: &str) -> io::Result<()> {
        let dir = work.join(".herd");
        fs::create_dir_all(&dir)?;
        let mut f =
            fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(dir.join("custom-data"))?;
        f.write_all(data.as_bytes())
    }

    /// The last non-empty line of `console.log`, if it is short enough to quote in a status.
    pub fn last_console_line(&self, max_len: usize) -> Option<String> {
        instance_dir::last_log_line(&self.console()).filter(|line| line.len() <= max_len)
    }
}

/// The exit record of a start that failed before any process existed.
pub(crate) fn failed_start(msg: &str) -> Exit {
    Exit { process: crate::state::NO_PROCESS, how: format!("failed to start: {}", msg.replace('\n', " ")) }
}

/// Checks that `image` is a directory holding an executable `init`.
pub(crate) fn check_image(image: &Path) -> Result<(), String> {
    let init = image.join("init");
    match fs::metadata(&init) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(_) => Err(format!("image {}: 'init' is not an executable file", image.display())),
        Err(e) => Err(format!("image {}: cannot read 'init': {e}", image.display())),
    }
}

/// Copies the tree at `src` to `dst` (which must not exist). File modes are kept (so `init` stays
/// executable) and symbolic links are copied as links; other special files are skipped.
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    place_tree(src, dst, false)
}

/// Places the tree at `src` at `dst` (which must not exist) as [`copy_tree`] does, but each
/// regular file as a hard link when both are on one file system (a moved instance's files,
/// possibly gigabytes, are not copied a second time on this host); a copy otherwise. `src` is
/// a staging tree removed afterwards, so the link leaves the instance the only name.
pub(crate) fn link_tree(src: &Path, dst: &Path) -> io::Result<()> {
    place_tree(src, dst, true)
}

/// [`copy_tree`], with regular files hard-linked where possible when `link`.
fn place_tree(src: &Path, dst: &Path, link: bool) -> io::Result<()> {
    fs::create_dir(dst)?;
    fs::set_permissions(dst, fs::metadata(src)?.permissions())?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let to = dst.join(entry.file_name());
        if ty.is_dir() {
            place_tree(&entry.path(), &to, link)?;
        } else if ty.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path())?, &to)?;
        } else if ty.is_file() && !(link && fs::hard_link(entry.path(), &to).is_ok()) {
            fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let d = InstanceDir::new(t.path().to_path_buf());
        assert_eq!(d.read_power(), None);
        d.write_power(Power::Deallocated).unwrap();
        assert_eq!(d.read_power(), Some(Power::Deallocated));
        let id = ProcId { pid: 5, start: 6 };
        d.write_pid(id).unwrap();
        assert_eq!(d.read_pid(), Some(id));
        d.remove_pid().unwrap();
        d.remove_pid().unwrap();
        assert_eq!(d.read_pid(), None);
        d.write_exit(id, "exit status 3").unwrap();
        assert_eq!(d.read_exit(id).as_deref(), Some("exit status 3"));
        assert_eq!(d.read_exit(ProcId { pid: 5, start: 7 }), None);
        let env = vec![("A".to_string(), "x=y\nz".to_string()), ("B".to_string(), String::new())];
        d.write_env(&env).unwrap();
        assert_eq!(d.read_env().unwrap(), env);
    }

    #[test]
    fn last_console_line_is_quoted_only_when_short() {
        let t = tempfile::tempdir().unwrap();
        let d = InstanceDir::new(t.path().to_path_buf());
        assert_eq!(d.last_console_line(100), None);
        fs::write(d.console(), "first\nsecond line\n\n").unwrap();
        assert_eq!(d.last_console_line(100).as_deref(), Some("second line"));
        assert_eq!(d.last_console_line(5), None);
    }

    #[test]
    fn copy_keeps_modes_and_links() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("img");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("init"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(src.join("init"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(src.join("sub/data"), "d").unwrap();
        std::os::unix::fs::symlink("sub/data", src.join("link")).unwrap();
        assert!(check_image(&src).is_ok());
        let dst = t.path().join("copy");
        copy_tree(&src, &dst).unwrap();
        assert_eq!(fs::metadata(dst.join("init")).unwrap().permissions().mode() & 0o777, 0o755);
        assert_eq!(fs::read_to_string(dst.join("link")).unwrap(), "d");
        assert!(fs::symlink_metadata(dst.join("link")).unwrap().file_type().is_symlink());
        fs::set_permissions(src.join("init"), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(check_image(&src).unwrap_err().contains("not an executable"));
        assert!(check_image(&t.path().join("none")).is_err());
    }
}
