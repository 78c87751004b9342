//! The instance root as state: creating instance directories and observing what exists.
//!
//! Why: everything here is synchronous filesystem and `/proc` work that must run on the
//! blocking pool, and it needs only the root and the tag, so it lives in a small cloneable
//! [`State`] the async driver hands to `spawn_blocking`.

use crate::layout::{check_image, copy_tree, link_tree, remove_tree, InstanceDir, Power};
use crate::procfs::{self, ProcId, Snapshot};
use crate::record::{self, InstanceRecord};
use crate::spawn;
use herd_driver::fence::{self, Admission};
use herd_driver::host::instance_dir::{self, ignore_missing};
use herd_driver::{DriverError, Fence, Incarnation, InstanceSpec, ObservedInstance, ObservedPower, StateFile};
use herd_model::{image::ImageSource, InstanceKey};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// Longest console line quoted in a `Failed` status.
const MAX_QUOTED_LINE: usize = 200;
/// The `exit` record of a start that failed before any process existed.
pub(crate) const NO_PROCESS: ProcId = ProcId { pid: 0, start: 0 };

/// What `destroy` found before stopping anything (see [`State::prepare_destroy`]).
pub(crate) struct Teardown {
    /// A group leader is recorded (else its processes are searched by their environment).
    pub recorded: bool,
    /// The recorded group, if it still runs.
    pub live: Option<ProcId>,
    /// A bridged-network attachment is recorded (its namespace is removed too).
    pub net: bool,
}

/// The instance root and the tag that marks our processes.
#[derive(Debug, Clone)]
pub(crate) struct State {
    pub root: PathBuf,
    pub tag: String,
}

impl State {
    /// Where one instance lives: `root/<group>/<set>/<id>`.
    pub fn instance_dir(&self, key: &InstanceKey) -> PathBuf {
        instance_dir::instance_path(&self.root, key)
    }

    pub fn instance(&self, key: &InstanceKey) -> InstanceDir {
        InstanceDir::new(self.instance_dir(key))
    }

    /// `Ok` unless `d` exists and belongs to another cluster: its record holds another tag, or
    /// none (it predates cluster ids). Such a directory is never touched.
    pub fn check_owned(&self, d: &InstanceDir, key: &InstanceKey) -> Result<(), DriverError> {
        if !d.exists() {
            return Ok(());
        }
        self.check_tag(d, key, d.read_tag())
    }

    /// `Ok` if `tag`, read from the record of the existing directory `d`, is ours.
    fn check_tag(&self, d: &InstanceDir, key: &InstanceKey, tag: Option<String>) -> Result<(), DriverError> {
        if tag.as_deref() == Some(self.tag.as_str()) {
            return Ok(());
        }
        Err(DriverError::Failed(format!(
            "instance {key}: its directory {} belongs to another herd cluster (tag {}, ours {}); not touched",
            d.dir.display(),
            tag.unwrap_or_else(|| "none: it predates cluster ids".into()),
            self.tag
        )))
    }

    /// The fence check every acting call starts with, under the instance's lock: another
    /// cluster's directory is refused first (nothing is written into it), then `call` is checked
    /// against the fence in the instance's record (see `herd_driver::fence`) and recorded, on
    /// disk, before the call acts if it is higher. An absent directory records nothing (the
    /// build records the fence). One read of the record serves both checks.
    ///
    /// A record of a server before the fence moved into it has none: its fence is read from the
    /// `fence` file, and moves into the record when it is next raised (the file is removed only
    /// once the record holding it is on disk; a record's fence wins over a leftover file).
    pub fn admit(&self, key: &InstanceKey, call: Fence) -> Result<(), DriverError> {
        let d = self.instance(key);
        if !d.exists() {
            return Ok(());
        }
        let rec = d.record();
        self.check_tag(&d, key, rec.tag)?;
        let seen = match rec.fence {
            Some(f) => Some(f),
            None => fence::read_record(&d.dir)
                .map_err(|e| DriverError::FenceRecord { key: key.clone(), source: std::sync::Arc::new(e) })?,
        };
        match call.admit(key, seen)? {
            Admission::Unchanged => Ok(()),
            Admission::Raise(f) => {
                let io = |e| DriverError::io(key, "recording the fence", e);
                record::edit_synced(&d.dir, |r| r.fence = Some(f)).map_err(io)?;
                ignore_missing(std::fs::remove_file(d.dir.join(fence::FENCE_FILE))).map_err(io)
            }
        }
    }

    /// The live group of an instance. Without a recorded pid (a crash between spawn and recording
    /// it), finds the group by its environment and records it.
    pub fn live_group(&self, key: &InstanceKey) -> Option<ProcId> {
        let d = self.instance(key);
        match d.read_pid() {
            Some(id) => procfs::group_alive(id).then_some(id),
            None => {
                let (id, _) = self.tagged_leaders(&Snapshot::take(), Some(&key.path()), &HashSet::new()).pop()?;
                tracing::info!(instance = %key, pid = id.pid, "re-adopting a process whose pid was not recorded");
                let _ = d.write_pid(id);
                Some(id)
            }
        }
    }

    /// Live process-group leaders whose environment carries our tag (and `key`, if given),
    /// skipping `skip`. Only group leaders are read, which keeps the `environ` reads bounded:
    /// every instance starts as a group leader, and its children are reached through the group.
    pub fn tagged_leaders(&self, snap: &Snapshot, key: Option<&str>, skip: &HashSet<u32>) -> Vec<(ProcId, String)> {
        let me = std::process::id();
        snap.procs
            .iter()
            .filter(|p| p.is_group_leader() && !p.is_zombie() && p.pid != me && !skip.contains(&p.pid))
            .filter_map(|p| {
                let env = procfs::read_herd_env(p.pid)?;
                if env.tag.as_deref() != Some(self.tag.as_str()) {
                    return None;
                }
                let k = env.key?;
                if key.is_some_and(|want| want != k) {
                    return None;
                }
                Some((ProcId { pid: p.pid, start: p.starttime }, k))
            })
            .collect()
    }

    /// Builds the instance directory if absent (recording `fence` in it before it appears under
    /// its name, so a new instance is never without its fence). Returns the record it wrote
    /// for a new instance, `None` if the directory existed.
    pub fn materialize(&self, spec: &InstanceSpec, fence: Fence) -> Result<Option<InstanceRecord>, DriverError> {
        self.materialize_from(spec, fence, None)
    }

    /// [`State::materialize`], with `work/` taken from `moved` (the `work` tree of a cold
    /// move's state files, see [`State::state_files`]) instead of the image, when given. An
    /// existing instance is kept as it is (the moved files are not used).
    pub fn materialize_from(
        &self,
        spec: &InstanceSpec,
        fence: Fence,
        moved: Option<&Path>,
    ) -> Result<Option<InstanceRecord>, DriverError> {
        let d = self.instance(&spec.key);
        let image = image_dir(spec)?;
        self.check_owned(&d, &spec.key)?;
        if d.exists() {
            if !d.work().exists() {
                // A crash in the middle of a reimage: finish it.
                image_usable(&spec.key, &image)?;
                rebuild(&d, spec, &image)?;
            }
            return Ok(None);
        }
        match moved {
            // What was moved must be runnable as it is: no image is copied under it.
            Some(work) => check_image(work).map_err(|reason| {
                DriverError::Failed(format!(
                    "instance {}: the moved work tree {} cannot run: {reason}",
                    spec.key,
                    work.display()
                ))
            })?,
            None => image_usable(&spec.key, &image)?,
        }
        let io = |what: &str, e: std::io::Error| DriverError::io(&spec.key, what, e);
        // The set's directory spreads its instances over the file system (see `ensure_set_dir`).
        let parent =
            instance_dir::ensure_set_dir(&self.root, &spec.key).map_err(|e| io("creating its directory", e))?;
        let tmp = InstanceDir::new(parent.join(format!(".{}.creating", spec.key.id)));
        // A leftover of a build a crash cut short is cleared first (rare: tried only when there
        // is one).
        let made = match std::fs::create_dir(&tmp.dir) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                remove_tree(&tmp.dir).map_err(|e| io("clearing a half-created directory", e))?;
                std::fs::create_dir(&tmp.dir)
            }
            made => made,
        };
        made.map_err(|e| io("creating its directory", e))?;
        // Copied straight to `work/`: the whole directory is still out of sight under its
        // temporary name, so no half copy can be taken for the disk.
        match moved {
            Some(work) => link_tree(work, &tmp.work())
                .map_err(|e| io(&format!("placing the moved files {}", work.display()), e))?,
            None => copy_tree(&image, &tmp.work()).map_err(|e| io(&format!("copying image {}", image.display()), e))?,
        }
        if let Some(data) = &spec.custom_data {
            tmp.write_custom_data(&tmp.work(), data).map_err(|e| io("writing custom data", e))?;
        }
        // The record holds the fence from its first write on, so no version of it (whole on
        // disk or not) lacks it: a crash leaves the fence or an unreadable record, which
        // refuses every call. (A sweep's fence names no placement: nothing to record.)
        let mut rec = InstanceRecord {
            tag: Some(self.tag.clone()),
            power: Some(Power::Running),
            fence: (fence.incarnation != Incarnation::ANY).then_some(fence),
            ..Default::default()
        };
        set_built(&mut rec, spec, &d);
        record::create(&tmp.dir, &rec).map_err(|e| io("writing its state file", e))?;
        std::fs::rename(&tmp.dir, &d.dir).map_err(|e| io("creating its directory", e))?;
        Ok(Some(rec))
    }

    /// What `ensure` does before it starts anything, in one trip to the blocking pool: the fence
    /// check, the build of an absent instance, and the plan of its start; `None` when the
    /// instance exists and runs. The pid of a previous start is cleared before a new one (see
    /// `ProcessDriver::start`); a new instance has none.
    pub fn prepare_ensure(
        &self,
        spec: &InstanceSpec,
        fence: Fence,
        set_hostname: bool,
    ) -> Result<Option<Result<spawn::Plan, String>>, DriverError> {
        self.prepare_ensure_from(spec, fence, set_hostname, None)
    }

    /// [`State::prepare_ensure`], building a new instance's `work/` from `moved` when given
    /// (see [`State::materialize_from`]).
    pub fn prepare_ensure_from(
        &self,
        spec: &InstanceSpec,
        fence: Fence,
        set_hostname: bool,
        moved: Option<&Path>,
    ) -> Result<Option<Result<spawn::Plan, String>>, DriverError> {
        self.admit(&spec.key, fence)?;
        let d = self.instance(&spec.key);
        let rec = match self.materialize_from(spec, fence, moved)? {
            Some(built) => built,
            None => {
                if self.live_group(&spec.key).is_some() {
                    return Ok(None);
                }
                self.clear_pid(&d, &spec.key)?;
                match record::read(&d.dir) {
                    Ok(rec) => rec,
                    Err(e) => return Ok(Some(Err(format!("cannot read the instance's state file: {e}")))),
                }
            }
        };
        Ok(Some(spawn::plan_with(&d, &spec.key, &self.tag, set_hostname, rec)))
    }

    /// The files of a stopped instance's state for a cold move: every regular file under
    /// `work/` (named `work/<path>`), with its mode. Symbolic links, empty directories and
    /// special files are not state a move carries. Checks the fence first; refused while the
    /// instance runs (its files would change under the copy).
    pub fn state_files(&self, key: &InstanceKey, fence: Fence) -> Result<Vec<StateFile>, DriverError> {
        self.admit(key, fence)?;
        let d = self.instance(key);
        if !d.exists() {
            return Err(DriverError::NotFound(key.clone()));
        }
        if let Some(id) = self.live_group(key) {
            return Err(DriverError::Failed(format!(
                "instance {key} is running (pid {}): stop it before its state is copied",
                id.pid
            )));
        }
        let mut out = Vec::new();
        list_files(&d.work(), "work", &mut out).map_err(|e| DriverError::io(key, "listing its work tree", e))?;
        Ok(out)
    }

    /// Clears the recorded pid before a start, so a crash before the new one is written is
    /// recognisable (see `live_group`). Nothing is written when none was recorded.
    pub fn clear_pid(&self, d: &InstanceDir, key: &InstanceKey) -> Result<(), DriverError> {
        d.remove_pid().map_err(|e| DriverError::io(key, "clearing the recorded pid", e))
    }

    /// What `destroy` checks before it stops anything, in one trip to the blocking pool: the
    /// fence (a directory that a removal cut short left, see `InstanceDir::is_remnant`, has
    /// no record, hence no tag and no fence to check: it is let through and finished), then one
    /// read of the record for the pid and the network attachment; a recorded group's desired
    /// power is set to stopped and whether it still runs is looked up.
    pub fn prepare_destroy(&self, key: &InstanceKey, fence: Fence) -> Result<Teardown, DriverError> {
        let d = self.instance(key);
        if d.is_remnant() {
            tracing::info!(instance = %key, "finishing the removal of a directory a crash left half removed");
        } else {
            self.admit(key, fence)?;
        }
        let rec = if d.exists() { d.record() } else { InstanceRecord::default() };
        let live = rec.pid.and_then(|id| {
            let _ = d.write_power(Power::Stopped);
            procfs::group_alive(id).then_some(id)
        });
        Ok(Teardown { recorded: rec.pid.is_some(), live, net: rec.net.is_some() })
    }

    pub fn observe(&self) -> Vec<ObservedInstance> {
        let snap = Snapshot::take();
        let mut seen: BTreeMap<InstanceKey, ObservedPower> = BTreeMap::new();
        let mut down: BTreeMap<InstanceKey, (InstanceDir, Option<ProcId>, Option<Power>)> = BTreeMap::new();
        let mut claimed = HashSet::new();
        for (key, d) in walk(&self.root) {
            // One read of the record for the tag, the pid and the power.
            let rec = d.record();
            if rec.tag.as_deref() != Some(self.tag.as_str()) {
                // Another cluster's (or older than cluster ids): not listed, so never touched.
                // (Its processes carry another tag, so the scan below skips them too.)
                continue;
            }
            match rec.pid {
                Some(id) if snap.group_alive(id) => {
                    claimed.insert(id.pid);
                    seen.insert(key, ObservedPower::Running);
                }
                pid => {
                    down.insert(key, (d, pid, rec.power));
                }
            }
        }
        for (_, k) in self.tagged_leaders(&snap, None, &claimed) {
            let Some(key) = InstanceKey::parse_path(&k) else { continue };
            if seen.contains_key(&key) {
                continue;
            }
            // Listed but not recorded (a crash before its pid was recorded): it runs. Not listed and no
            // directory: an orphan. (Checked now, after the scan, so an instance created during
            // this list is never mistaken for an orphan.)
            if down.remove(&key).is_some() || !self.instance(&key).exists() {
                seen.insert(key, ObservedPower::Running);
            }
        }
        for (key, (d, pid, power)) in down {
            let power = match power {
                Some(Power::Stopped | Power::Deallocated) => ObservedPower::Stopped,
                // Started after the scan (a restart racing this list): look again, live.
                _ if d.read_pid().is_some_and(procfs::group_alive) => ObservedPower::Running,
                // Created, not yet spawned, and no failed start recorded.
                _ if pid.is_none() && d.read_exit(NO_PROCESS).is_none() => ObservedPower::Starting,
                _ => ObservedPower::Failed(failure(&d, pid)),
            };
            seen.insert(key, power);
        }
        seen.into_iter().map(|(key, power)| ObservedInstance { key, power }).collect()
    }
}

/// Copies the image to `target/work` of an existing instance (a reimage: through `work.new`, so
/// a crash never leaves a half copy under the real name) and writes the custom data. (A new
/// instance is copied straight into its hidden `.<id>.creating` directory: see `materialize`.)
fn install_work(target: &InstanceDir, spec: &InstanceSpec, image: &Path) -> Result<(), DriverError> {
    let io = |what: &str, e: std::io::Error| DriverError::io(&spec.key, what, e);
    let staging = target.dir.join("work.new");
    remove_tree(&staging).map_err(|e| io("clearing a half-copied image", e))?;
    copy_tree(image, &staging).map_err(|e| io(&format!("copying image {}", image.display()), e))?;
    if let Some(data) = &spec.custom_data {
        target.write_custom_data(&staging, data).map_err(|e| io("writing custom data", e))?;
    }
    remove_tree(&target.work()).map_err(|e| io("removing the old work directory", e))?;
    std::fs::rename(&staging, target.work()).map_err(|e| io("installing the work directory", e))
}

/// Sets what `spec` fixes at build time in the record of the instance living in `dir`: the
/// environment (which names paths in `dir`) and the network attachment.
fn set_built(rec: &mut InstanceRecord, spec: &InstanceSpec, dir: &InstanceDir) {
    let custom = spec.custom_data.as_ref().map(|_| dir.custom_data());
    rec.env = spawn::spec_env(spec, custom.as_deref());
    rec.net = spec.network.clone();
}

/// Appends the regular files under `dir` to `out`, named `<prefix>/<relative path>`, in a
/// stable order (by name).
fn list_files(dir: &Path, prefix: &str, out: &mut Vec<StateFile>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut entries = std::fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let meta = std::fs::symlink_metadata(e.path())?;
        let named = format!("{prefix}/{name}");
        if meta.is_dir() {
            list_files(&e.path(), &named, out)?;
        } else if meta.is_file() {
            out.push(StateFile {
                name: named,
                path: e.path(),
                size: meta.len(),
                mode: meta.permissions().mode() & 0o7777,
            });
        }
    }
    Ok(())
}

/// Builds the instance in `d` anew from `spec` (reimage): a fresh copy of the image, and the
/// environment and network attachment recorded.
pub(crate) fn rebuild(d: &InstanceDir, spec: &InstanceSpec, image: &Path) -> Result<(), DriverError> {
    install_work(d, spec, image)?;
    d.edit(|rec| set_built(rec, spec, d)).map_err(|e| DriverError::io(&spec.key, "writing its state file", e))
}

/// The image directory of `spec`; the process driver runs directory images only.
pub(crate) fn image_dir(spec: &InstanceSpec) -> Result<PathBuf, DriverError> {
    match &spec.image {
        ImageSource::Directory { path } => Ok(PathBuf::from(path)),
        other => Err(DriverError::InvalidSpec {
            key: spec.key.clone(),
            reason: format!(
                "the process driver runs directory images only; this image is a {} image (use the qemu driver)",
                other.kind()
            ),
        }),
    }
}

/// Checks the image directory has an executable `init`. A directory that is gone altogether
/// is a missing image (`ImageUnavailable`, permanent until the image is restored); one that is
/// there but unusable stays an unclassified failure.
pub(crate) fn image_usable(key: &InstanceKey, image: &Path) -> Result<(), DriverError> {
    check_image(image).map_err(|reason| {
        if image.is_dir() {
            DriverError::Failed(reason)
        } else {
            DriverError::ImageUnavailable { key: key.clone(), reason }
        }
    })
}

/// Why an instance that should run does not: `init exited (exit status 3): <last console line>`.
fn failure(d: &InstanceDir, pid: Option<ProcId>) -> String {
    let mut msg = String::from("init exited");
    match d.read_exit(pid.unwrap_or(NO_PROCESS)) {
        Some(how) if how.starts_with("failed to start") => msg = how,
        Some(how) if !how.is_empty() => msg = format!("{msg} ({how})"),
        _ => {}
    }
    if let Some(line) = d.last_console_line(MAX_QUOTED_LINE) {
        msg = format!("{msg}: {line}");
    }
    msg
}

/// Every instance directory under `root`, by key (see [`instance_dir::walk`]).
fn walk(root: &Path) -> Vec<(InstanceKey, InstanceDir)> {
    instance_dir::walk(root).into_iter().map(|(key, dir)| (key, InstanceDir::new(dir))).collect()
}
