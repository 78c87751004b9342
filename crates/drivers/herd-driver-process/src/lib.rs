//! The process driver: each instance is a process tree started from an image directory.
//!
//! An image is a directory holding an executable `init`. Creating an instance copies that
//! directory to `root/<group>/<set>/<id>/work/` (the instance's "disk") and starts `work/init`
//! there as the leader of a new process group, with stdout and stderr appended to
//! `console.log`. Stopping signals the whole group (SIGTERM, a grace period, then SIGKILL), so
//! everything `init` started goes with it. All state lives in the instance directory (see the
//! `layout` module), none in memory: a new `ProcessDriver` on the same root and tag re-adopts
//! running instances through the pid recorded in their `state` file and restarts nothing.
//!
//! # Lifecycle of one instance
//!
//! ```text
//!            ensure / reimage
//!   absent ─────────────────────▶ running ◀───────────────────────────┐
//!                                  │     │                            │ ensure, restart, reimage,
//!                       init exits │     │ set_power(Stopped |        │ set_power(Running)
//!                                  ▼     │   Deallocated)             │
//!                               failed   ▼                            │
//!                                  │   stopped / deallocated ─────────┤
//!                                  │   (work/ kept: the disk)         │
//!                                  └──────────────────────────────────┘
//!
//!   any state ── destroy ──▶ absent (process group killed, directory removed)
//! ```
//!
//! `list` reports `Running` while any process of the group lives, `Stopped` for stopped and
//! deallocated instances, and `Failed("init exited …")` when the desired power is running but
//! nothing is left (with the exit status when this server saw it, and the last line of
//! `console.log` when it is short). Processes carrying our tag whose instance directory is gone
//! are reported `Running` under the key in their environment: they are orphans, and
//! `destroy` kills them (it finds processes by their environment whenever the instance has no
//! recorded group: no directory, or a crash between spawn and recording the pid). A
//! process that left its group (`setsid`) survives `destroy` of its instance, but then shows up
//! in `list` as an orphan, and the next `destroy` kills it.
//!
//! An instance created but not yet spawned (no pid recorded, no failed start recorded) is
//! reported `Starting`.
//!
//! # Fencing
//!
//! Every acting call checks its fence (`herd_driver::fence`) under the instance's lock before it
//! does anything: a call with a lower term or incarnation than the fence in the instance's
//! `state` record is refused with `DriverError::Fenced`, and a higher one is recorded first
//! (atomically and durably: synced into both slots of the state file, so no later crash can
//! bring back the lower one). A new instance's record holds its fence from its first write,
//! before its directory appears under its name; a directory without one (created before
//! fencing) accepts the first call and records it. Directories of servers before the fence moved
//! into the record keep it in a `fence` file, read as it is and moved into the record when it
//! is next raised. `destroy` removes the record with the directory.
//!
//! # Whose instance
//!
//! The tag names the herd cluster (the server passes `herd:<cluster id>`). Every instance
//! directory records the tag of the driver that created it in its `state` file, and every process
//! carries it in `HERD_DRIVER_TAG`. A directory whose `tag` is another (or missing: created
//! before cluster ids) belongs to another cluster: `list` leaves it out, and every call that
//! would change it fails instead. So two clusters on one kernel never touch each other's
//! instances, even if their directories meet. One exception: `destroy` finishes removing a
//! directory that holds no record naming an instance (no tag, no environment, no fence: what a
//! removal cut short by a crash of a server before this one could leave; see
//! `InstanceDir::is_remnant`). `destroy` itself moves the directory to `.<id>.deleting` before
//! removing it, so a crash leaves the instance's directory whole or gone, and the next `destroy`
//! of the key removes the leftover.
//!
//! # What an instance sees
//!
//! The working directory is `work/`, stdin is `/dev/null`, and the server's environment is
//! *not* inherited (it may hold secrets); only `PATH` is passed through, `HOME` is `work/`, and:
//!
//! | variable | value |
//! |---|---|
//! | `HERD_INSTANCE_ID` | the instance id, an integer |
//! | `HERD_COMPUTER_NAME` | the computer name |
//! | `HOSTNAME` | the computer name too |
//! | `HERD_ADDRESS` | the reach address (its own loopback address such as `127.128.0.5`): bind servers here |
//! | `HERD_INSTANCE_KEY` | `group/set/id` |
//! | `HERD_DRIVER_TAG` | the driver's tag (unique per server data directory); marks our processes in `/proc` |
//! | `HERD_MODEL_GENERATION` | the scale-set model generation the instance was built from |
//! | `HERD_ADMIN_USERNAME` | the admin user name of the model |
//! | `HERD_VCPUS` | vCPUs of the size (advisory; not enforced) |
//! | `HERD_MEMORY_MIB` | memory of the size in MiB (advisory; not enforced) |
//! | `HERD_META_<KEY>` | one per `metadata` entry; key upper-cased, characters outside `[A-Z0-9_]` become `_` |
//! | `HERD_CUSTOM_DATA` | only with custom data: the absolute path of `work/.herd/custom-data` (mode 0600) holding it |
//!
//! The environment is fixed when the instance is created or reimaged (kept in its `state` file),
//! so a restart starts the instance as it was built, as a VM's disk would.
//!
//! When the server runs as root and UTS namespaces work, `init` runs in its own UTS namespace
//! with the computer name as hostname, so `hostname` inside prints it; otherwise `init` is
//! executed as it is (see [`ProcessDriver::sets_hostname`]). With a launcher
//! ([`ProcessDriver::with_launcher`], as the server runs it) the driver's **spawner** starts
//! `init`: a small single-threaded process that starts each child as `posix_spawn` does (a
//! `clone` sharing its memory until the `exec`), sets the hostname and execs `init`, so
//! no instance inherits the server's descriptors or pays for a launcher's `exec` (see the
//! `spawner` module, with its lifecycle). Without one, or when the spawner is gone, `init`
//! is started from the server, through the launcher or `unshare --uts -- /bin/sh -c 'hostname
//! "$HERD_COMPUTER_NAME" && exec ./init'`. Either way the group leader's pid is `init`'s.
//!
//! # Extension runs (`run_script`)
//!
//! This is how the Custom Script extension runs on a process instance. Only a running instance
//! runs scripts (`NotFound` if absent, `Failed("instance … is not running")` otherwise), and a
//! run holds the instance's lock, so it never overlaps a stop, restart or destroy of the same
//! instance.
//!
//! * **Files.** Everything goes to `work/.herd/extensions/<name>/`, created if needed; the
//!   extension's name and every file name must be one ordinary path component (not empty, `.`
//!   or `..`, no `/`), else the run is refused before anything is written. Each file of the run
//!   is written there with mode 0700 (so `./install.sh` works), replacing what was there; a
//!   later run of the same extension reuses the directory. The directory is also the script's
//!   working directory.
//! * **The command** may hold secrets. It is written to `.herd-command` in that directory
//!   (mode 0600, created exclusively, so a symbolic link there is replaced, never followed) and
//!   run by `/bin/sh ./.herd-runner` (which runs `/bin/sh ./.herd-command` and records its exit
//!   status in `.herd-exit`): it is never in any process's argv, nor in a log line or
//!   an error message. The file is removed when the run ends, however it ends (exit, timeout,
//!   error, or the call being abandoned; after a server crash, when the next server takes the
//!   run's result or kills it).
//! * **Output.** stdout and stderr go to `.herd-stdout` and `.herd-stderr` there (mode 0600,
//!   created anew for each run); the outcome holds the last [`herd_driver::SCRIPT_OUTPUT_TAIL`]
//!   bytes of each, and both files are removed once captured (a script may print a secret; the
//!   server keeps only the masked tails). They are files rather than
//!   pipes so that a service the script starts in the background can keep its inherited stdout
//!   and stderr (a pipe would block or `SIGPIPE` it once nobody reads), and the run ends when
//!   the script process itself exits, never waiting for its output to close. Output is not
//!   copied to `console.log`.
//! * **Environment.** Exactly the instance's (the table above: the recorded environment, `PATH`, `HOME`
//!   = `work/`, `HERD_DRIVER_TAG`, `HERD_INSTANCE_KEY`); stdin is `/dev/null`.
//! * **Part of the instance.** The script joins the instance's process group (`setpgid` to the
//!   recorded group), so whatever it starts in the background is stopped by
//!   `set_power(Stopped)`, `restart` and `destroy` like the rest of the instance, and carries
//!   the tag. When the instance has its own UTS (or network) namespace, the script is started
//!   through `nsenter --target <init> --uts [--net] --no-fork -- /bin/sh ./.herd-runner`, so
//!   `hostname` prints the computer name there too (`nsenter` execs `sh` in place: the script's
//!   pid is the one started). Without `/usr/bin/nsenter` it runs in the server's namespaces,
//!   with `HOSTNAME` and `HERD_COMPUTER_NAME` still set. An instance re-adopted from a server
//!   that ran in another session cannot be joined (`setpgid` does not cross sessions): the
//!   script then runs in a group of its own, which is killed when the script ends, so nothing
//!   it started outlives the run untracked (a warning is logged).
//! * **Across a server crash.** Each run is recorded in the instance's `script-run` file
//!   (extension name, the caller's `identity`, a nonce, then the script's pid) before the
//!   script starts, and the script is started through `.herd-runner`, which writes the
//!   command's exit status to `.herd-exit`. A new driver asked for the same name and identity
//!   adopts the run still going (waits for it until its deadline, then takes its exit status
//!   and output) or takes the result of one that ended unseen; a recorded run of another
//!   identity is killed (its script and descendants) before the new one starts. So a script
//!   never runs twice at once (see the `runs` module).
//! * **Exit.** `exit_code` is the script's exit status (as the shell reports it: `128 + n` for
//!   a command killed by signal `n`), `None` if the runner itself was killed. After
//!   `timeout`, the script and its descendants (found through parent pids in `/proc`; frozen
//!   with `SIGSTOP` until no new one appears, then `SIGKILL`ed) are killed, and the outcome is
//!   `timed_out` with `exit_code: None`. The instance's other processes are untouched. (A
//!   process the script started that already left its parent, such as a double-forked daemon,
//!   is not found; it stays with the instance as part of its group.)

// Only the spawner's process side (`spawner/serve.rs`: `clone`, `execve`) is allowed `unsafe`.
#![deny(unsafe_code)]

mod bridge;
pub mod init;
mod layout;
mod procfs;
pub mod record;
mod runs;
mod script;
mod spawn;
pub mod spawner;
mod state;

use async_trait::async_trait;
use herd_driver::host::locks::InstanceLocks;
use herd_driver::{
    Driver, DriverError, Fence, InstanceSpec, InstanceStats, ObservedInstance, PowerTarget, ScriptOutcome, ScriptRun,
    StateFile,
};
use herd_model::InstanceKey;
use layout::{InstanceDir, Power};
use nix::sys::signal::Signal;
use procfs::{ProcId, Snapshot};

pub use bridge::netns_name as bridged_netns_name;
pub use procfs::tagged_pids;
use state::State;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Child;

/// Default time between SIGTERM and SIGKILL when stopping an instance.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(3);
/// How long to wait for a group to vanish after SIGKILL before reporting an error.
const KILL_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);
/// How long a stopping group whose leader is our unreaped zombie counts as alive (see
/// `procfs::group_alive_until_reaped`).
const REAP_WAIT: Duration = Duration::from_secs(1);

/// Runs instances as local process trees. See the crate docs.
#[derive(Debug)]
pub struct ProcessDriver {
    state: State,
    stop_grace: Duration,
    set_hostname: bool,
    /// A program that sets the hostname and execs `init` (see [`ProcessDriver::with_launcher`]).
    launcher: Option<init::Launcher>,
    /// The process that starts instances for this driver (see the `spawner` module); `None`
    /// without a launcher, or when it could not be started: then instances start directly.
    spawner: Option<Arc<spawner::Spawner>>,
    /// One lock per instance, so concurrent calls on one key cannot start it twice.
    locks: InstanceLocks,
}

impl ProcessDriver {
    /// A driver keeping instance directories under `root` (created if absent) and marking its
    /// processes with `tag`, which must be unique per server data directory.
    pub fn new(root: PathBuf, tag: String) -> Result<Self, DriverError> {
        if tag.is_empty() || tag.contains('\0') {
            return Err(DriverError::Failed("the process driver tag must be non-empty and contain no NUL".into()));
        }
        let root = std::fs::create_dir_all(&root)
            .and_then(|_| root.canonicalize())
            .map_err(|e| DriverError::host(format!("instance root {}", root.display()), e))?;
        herd_driver::host::instance_dir::mark_set_dirs(&root);
        Ok(Self {
            state: State { root, tag },
            stop_grace: DEFAULT_STOP_GRACE,
            set_hostname: spawn::can_set_hostname(),
            launcher: None,
            spawner: None,
            locks: InstanceLocks::default(),
        })
    }

    /// Starts instances through a launcher that enters the UTS namespace and sets the hostname
    /// itself, instead of running `unshare`, `sh` and `hostname`: the small
    /// `herd-instance-init` beside `herd_exe` (the `herd` binary), else
    /// `herd_exe instance-init` (see the `init` module). Used only if it works here.
    ///
    /// The same program, in its `--spawner` mode, then runs as this driver's spawner, which
    /// starts every instance without another `exec` and without the server's descriptors (see
    /// the `spawner` module); if it cannot start, instances are started directly.
    pub fn with_launcher(mut self, herd_exe: PathBuf) -> Self {
        if let Some(l) = init::Launcher::find(&herd_exe) {
            self.set_hostname = true;
            let (program, args) = l.spawner_command();
            self.spawner = spawner::Spawner::start(program, args).map(Arc::new);
            self.launcher = Some(l);
        }
        self
    }

    /// The pid of the spawner that starts this driver's instances, if one runs (for
    /// diagnostics and tests).
    pub fn spawner_pid(&self) -> Option<u32> {
        self.spawner.as_ref()?.pid()
    }

    /// Sets the time between SIGTERM and SIGKILL when stopping (default 3 s).
    pub fn with_stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    /// The directory holding all instance directories (absolute).
    pub fn root(&self) -> &Path {
        &self.state.root
    }

    pub fn tag(&self) -> &str {
        &self.state.tag
    }

    /// Where one instance lives: `root/<group>/<set>/<id>`.
    pub fn instance_dir(&self, key: &InstanceKey) -> PathBuf {
        self.state.instance_dir(key)
    }

    /// Whether instances get their own hostname (root, and `unshare --uts` works here).
    pub fn sets_hostname(&self) -> bool {
        self.set_hostname
    }

    /// Runs `f` with a copy of the state on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&State) -> T + Send + 'static,
    ) -> Result<T, DriverError> {
        let st = self.state.clone();
        blocking(move || f(&st)).await
    }

    async fn live_group(&self, key: &InstanceKey) -> Result<Option<ProcId>, DriverError> {
        let key = key.clone();
        self.blocking(move |st| st.live_group(&key)).await
    }

    async fn start(&self, d: &InstanceDir, key: &InstanceKey) -> Result<(), DriverError> {
        let (d2, k2, set_hostname) = (d.clone(), key.clone(), self.set_hostname);
        // Without a recorded pid, a crash before the new one is written is recognisable (see
        // live_group). Nothing is written when none was recorded (a first start).
        let plan = self
            .blocking(move |st| {
                st.clear_pid(&d2, &k2)?;
                Ok::<_, DriverError>(spawn::plan(&d2, &k2, &st.tag, set_hostname))
            })
            .await??;
        self.start_planned(d, key, plan).await
    }

    /// Starts the instance in `d` as `plan` says (or records why it cannot start), and records
    /// its pid. The caller has cleared the pid of any previous start.
    async fn start_planned(
        &self,
        d: &InstanceDir,
        key: &InstanceKey,
        plan: Result<spawn::Plan, String>,
    ) -> Result<(), DriverError> {
        let started = match plan {
            Ok(plan) => self.launch(plan, key).await?,
            Err(msg) => Launched::Failed(msg),
        };
        let id = match started {
            Launched::Spawned(id, exit) => {
                let d2 = d.clone();
                tokio::spawn(async move {
                    // Dropped without a status when the spawner dies first: then nothing is
                    // known of how it ends, as for an instance a previous server started.
                    if let Ok(status) = exit.await {
                        let how = spawn::describe(std::os::unix::process::ExitStatusExt::from_raw(status));
                        let _ = tokio::task::spawn_blocking(move || d2.write_exit(id, &how)).await;
                    }
                });
                id
            }
            Launched::Direct(id, child) => {
                tokio::spawn(watch(child, d.clone(), id));
                id
            }
            Launched::Adopted(id) => id,
            Launched::Failed(msg) => {
                let (d2, m2) = (d.clone(), msg.clone());
                blocking(move || {
                    let exit = layout::failed_start(&m2);
                    let _ = d2.edit(|r| {
                        r.power = Some(Power::Running);
                        r.exit = Some(exit.clone());
                    });
                })
                .await?;
                return Err(DriverError::Failed(format!("instance {key}: {msg}")));
            }
        };
        let d2 = d.clone();
        // One change of the state file for both (none at all for the power when unchanged).
        let written = blocking(move || {
            d2.edit(|r| {
                r.pid = Some(id);
                r.power = Some(Power::Running);
            })
        })
        .await?;
        if let Err(e) = written {
            procfs::signal_group(id, Signal::SIGKILL);
            return Err(io_failed(key, "recording the pid", e));
        }
        tracing::debug!(instance = %key, pid = id.pid, "started");
        Ok(())
    }

    /// Starts `plan` through the spawner when it can, else from this process.
    async fn launch(&self, plan: spawn::Plan, key: &InstanceKey) -> Result<Launched, DriverError> {
        if let (Some(sp), Some(req)) = (&self.spawner, plan.request()) {
            match sp.spawn(req).await {
                spawner::Outcome::Started { id, exit } => return Ok(Launched::Spawned(id, exit)),
                spawner::Outcome::Failed(msg) => return Ok(Launched::Failed(msg)),
                spawner::Outcome::Unavailable => {}
                spawner::Outcome::Lost => {
                    // The spawner died with the request out: it may have started init. By now
                    // each of its children has executed its program or died (see the
                    // `spawner` module), so a search by environment finds it if it runs.
                    let k = key.clone();
                    if let Some(id) = self.blocking(move |st| st.live_group(&k)).await? {
                        tracing::info!(instance = %key, pid = id.pid, "the spawner died while starting the instance; adopting the init it started");
                        return Ok(Launched::Adopted(id));
                    }
                    tracing::info!(instance = %key, "the spawner died while starting the instance; starting it directly");
                }
            }
        }
        Ok(match spawn::launch(plan, self.launcher.as_ref()) {
            Ok((id, child)) => Launched::Direct(id, child),
            Err(msg) => Launched::Failed(msg),
        })
    }

    async fn stop(&self, d: &InstanceDir, key: &InstanceKey, power: Power) -> Result<(), DriverError> {
        let d2 = d.clone();
        blocking(move || d2.write_power(power)).await?.map_err(|e| io_failed(key, "writing the power file", e))?;
        if let Some(id) = self.live_group(key).await? {
            self.terminate(id).await?;
            tracing::debug!(instance = %key, pid = id.pid, power = power.as_str(), "stopped");
        }
        Ok(())
    }

    /// SIGTERM to the group, up to the grace period for every member to exit, then SIGKILL.
    async fn terminate(&self, id: ProcId) -> Result<(), DriverError> {
        procfs::signal_group(id, Signal::SIGTERM);
        // A stopped (SIGSTOP) process acts on SIGTERM only once continued.
        procfs::signal_group(id, Signal::SIGCONT);
        if wait_gone(id, self.stop_grace).await? {
            return Ok(());
        }
        tracing::info!(pid = id.pid, "process group outlived the stop grace period; killing it");
        procfs::signal_group(id, Signal::SIGKILL);
        if wait_gone(id, KILL_WAIT).await? {
            return Ok(());
        }
        Err(DriverError::Failed(format!("process group {} did not exit after SIGKILL", id.pid)))
    }

    /// The fence check every acting call starts with (see `State::admit`).
    async fn admit(&self, key: &InstanceKey, fence: Fence) -> Result<(), DriverError> {
        let key = key.clone();
        self.blocking(move |st| st.admit(&key, fence)).await?
    }
}

#[async_trait]
impl Driver for ProcessDriver {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn ensure(&self, spec: &InstanceSpec, fence: Fence) -> Result<(), DriverError> {
        let _g = self.locks.lock(&spec.key).await;
        let d = self.state.instance(&spec.key);
        // The fence check, the build and the start's plan in one trip to the blocking pool (a
        // new instance's plan comes from the record just written, not read back).
        let (spec2, set_hostname) = (spec.clone(), self.set_hostname);
        match self.blocking(move |st| st.prepare_ensure(&spec2, fence, set_hostname)).await?? {
            None => Ok(()),
            Some(plan) => self.start_planned(&d, &spec.key, plan).await,
        }
    }

    async fn set_power(&self, key: &InstanceKey, target: PowerTarget, fence: Fence) -> Result<(), DriverError> {
        let _g = self.locks.lock(key).await;
        let d = self.state.instance(key);
        self.admit(key, fence).await?;
        if !d.exists() {
            return Err(DriverError::NotFound(key.clone()));
        }
        match target {
            PowerTarget::Running => {
                if self.live_group(key).await?.is_none() {
                    self.start(&d, key).await?;
                }
                Ok(())
            }
            PowerTarget::Stopped => self.stop(&d, key, Power::Stopped).await,
            PowerTarget::Deallocated => self.stop(&d, key, Power::Deallocated).await,
        }
    }

    async fn restart(&self, key: &InstanceKey, fence: Fence) -> Result<(), DriverError> {
        let _g = self.locks.lock(key).await;
        let d = self.state.instance(key);
        self.admit(key, fence).await?;
        if !d.exists() {
            return Err(DriverError::NotFound(key.clone()));
        }
        self.stop(&d, key, Power::Stopped).await?;
        self.start(&d, key).await
    }

    /// The size is advisory for a process (`HERD_VCPUS`, `HERD_MEMORY_MIB`): the environment is
    /// rewritten with it and the instance restarted; `work/` is kept.
    async fn resize(&self, spec: &InstanceSpec, fence: Fence) -> Result<(), DriverError> {
        let _g = self.locks.lock(&spec.key).await;
        let d = self.state.instance(&spec.key);
        self.admit(&spec.key, fence).await?;
        if !d.exists() {
            return Err(DriverError::NotFound(spec.key.clone()));
        }
        self.stop(&d, &spec.key, Power::Stopped).await?;
        let (d2, spec2) = (d.clone(), spec.clone());
        blocking(move || {
            let custom = spec2.custom_data.as_ref().map(|_| d2.custom_data());
            d2.write_env(&spawn::spec_env(&spec2, custom.as_deref()))
                .map_err(|e| DriverError::io(&spec2.key, "writing the environment", e))
        })
        .await??;
        self.start(&d, &spec.key).await
    }

    async fn reimage(&self, spec: &InstanceSpec, fence: Fence) -> Result<(), DriverError> {
        let _g = self.locks.lock(&spec.key).await;
        let d = self.state.instance(&spec.key);
        self.admit(&spec.key, fence).await?;
        if d.exists() {
            self.stop(&d, &spec.key, Power::Stopped).await?;
            let (d2, spec2) = (d.clone(), spec.clone());
            blocking(move || {
                let image = state::image_dir(&spec2)?;
                state::image_usable(&spec2.key, &image)?;
                state::rebuild(&d2, &spec2, &image)
            })
            .await??;
            tracing::debug!(instance = %spec.key, "reimaged");
        } else {
            let spec = spec.clone();
            self.blocking(move |st| st.materialize(&spec, fence)).await??;
        }
        self.start(&d, &spec.key).await
    }

    async fn destroy(&self, key: &InstanceKey, fence: Fence) -> Result<(), DriverError> {
        let _g = self.locks.lock(key).await;
        let d = self.state.instance(key);
        // The checks, and stopping the recorded group's power, in one trip to the blocking pool.
        let k2 = key.clone();
        let teardown = self.blocking(move |st| st.prepare_destroy(&k2, fence)).await??;
        if teardown.recorded {
            if let Some(id) = teardown.live {
                self.terminate(id).await?;
            }
        } else {
            // No recorded group: an orphan whose directory is gone, or a crash between spawn
            // and recording its pid. Find its processes by their environment. (Only here:
            // the scan reads every group leader's environ, too costly for every destroy. A
            // process that escaped a recorded group shows up in `list` as an orphan later and
            // is killed by the `destroy` that follows.)
            let k = key.path();
            let strays =
                self.blocking(move |st| st.tagged_leaders(&Snapshot::take(), Some(&k), &HashSet::new())).await?;
            for (id, _) in strays {
                tracing::info!(instance = %key, pid = id.pid, "killing a process of the instance found by its environment");
                self.terminate(id).await?;
            }
        }
        if teardown.net {
            let (tag, k) = (self.state.tag.clone(), key.path());
            let ns = bridge::netns_name(&tag, &k);
            blocking(move || bridge::remove(&tag, &k, &ns)).await?.map_err(DriverError::Failed)?;
        }
        let d2 = d.clone();
        blocking(move || {
            // Moved out of its name first, so an exit watcher writing late finds no directory
            // (it never creates one) and a crash leaves no half of it (see `InstanceDir::remove`).
            // One retry covers a writer that had opened a file in it just before.
            d2.remove().or_else(|_| {
                std::thread::sleep(POLL);
                d2.remove()
            })
        })
        .await?
        .map_err(|e| io_failed(key, "removing its directory", e))?;
        self.locks.forget(key);
        tracing::debug!(instance = %key, "destroyed");
        Ok(())
    }

    async fn list(&self) -> Result<Vec<ObservedInstance>, DriverError> {
        self.blocking(|st| st.observe()).await
    }

    /// Every regular file under `work/` (`work/<path>`), with its mode; refused while the
    /// instance runs.
    async fn state_files(&self, key: &InstanceKey, fence: Fence) -> Result<Vec<StateFile>, DriverError> {
        let _g = self.locks.lock(key).await;
        let key = key.clone();
        self.blocking(move |st| st.state_files(&key, fence)).await?
    }

    /// As `ensure`, with a new instance's `work/` taken from `dir/work` (hard-linked where it
    /// can be) instead of the image.
    async fn ensure_moved(&self, spec: &InstanceSpec, fence: Fence, dir: &Path) -> Result<(), DriverError> {
        let _g = self.locks.lock(&spec.key).await;
        let d = self.state.instance(&spec.key);
        let (spec2, set_hostname, work) = (spec.clone(), self.set_hostname, dir.join("work"));
        match self.blocking(move |st| st.prepare_ensure_from(&spec2, fence, set_hostname, Some(&work))).await?? {
            None => Ok(()),
            Some(plan) => self.start_planned(&d, &spec.key, plan).await,
        }
    }

    async fn stats(&self, key: &InstanceKey) -> Result<Option<InstanceStats>, DriverError> {
        let d = self.state.instance(key);
        blocking(move || {
            let id = d.read_pid()?;
            let snap = Snapshot::take();
            let members = snap.members(id);
            if members.is_empty() {
                return None;
            }
            let ticks: u64 = members.iter().map(|p| p.utime.saturating_add(p.stime)).sum();
            let memory_bytes = members.iter().filter_map(|p| procfs::read_rss_bytes(p.pid)).sum();
            // Bridged instances have a network namespace of their own; host-local ones share
            // the host's, whose counters are not theirs (no data then).
            let net = members.iter().find_map(|p| procfs::read_own_netns_traffic(p.pid));
            Some(InstanceStats {
                cpu_seconds: ticks as f64 / procfs::clock_ticks() as f64,
                memory_bytes,
                cpu_percent: None,
                net_rx_bytes: net.map(|n| n.0),
                net_tx_bytes: net.map(|n| n.1),
            })
        })
        .await
    }

    /// See the crate docs, "Extension runs".
    async fn run_script(&self, key: &InstanceKey, run: &ScriptRun, fence: Fence) -> Result<ScriptOutcome, DriverError> {
        script::check_names(&run.name, run.file_names())
            .map_err(|m| DriverError::Failed(format!("instance {key}: {m}")))?;
        let _g = self.locks.lock(key).await;
        let d = self.state.instance(key);
        self.admit(key, fence).await?;
        let d2 = d.clone();
        if !blocking(move || d2.exists()).await? {
            return Err(DriverError::NotFound(key.clone()));
        }
        let Some(id) = self.live_group(key).await? else {
            return Err(DriverError::Failed(format!("instance {key} is not running")));
        };
        let fail = |m: String| DriverError::Failed(format!("instance {key}: extension {}: {m}", run.name));
        // A run recorded by a previous server: the same run is adopted (or its result taken),
        // another one is killed first. Never two copies (see the `runs` module).
        let (d2, name, identity) = (d.clone(), run.name.clone(), run.identity.clone());
        match blocking(move || runs::settle(&d2, &name, &identity)).await? {
            runs::Prior::Start => {}
            runs::Prior::Adopt(rec) => return self.adopt(key, &d, rec).await,
            runs::Prior::Finished(rec, code) => {
                tracing::info!(instance = %key, extension = %rec.name, exit_code = code, "an extension run ended while no server watched; taking its result");
                let d2 = d.clone();
                let (stdout, stderr) = blocking(move || runs::finish(&d2, &rec.name)).await?;
                return Ok(ScriptOutcome { exit_code: Some(code), timed_out: false, stdout, stderr });
            }
        }
        // The guard removes the command file however this ends, even if this call is abandoned
        // while the file is still being written (then the writer removes it: see `gone`).
        let gone = Arc::new(AtomicBool::new(false));
        let mut guard = RunGuard {
            command_file: script::extension_dir(&d, &run.name).join(script::COMMAND_FILE),
            script: None,
            gone: gone.clone(),
        };
        // Downloaded only now, for a run that starts: an adopted run needs nothing fetched.
        let files = run.fetch_files().await.map_err(fail)?;
        let (d2, name, command) = (d.clone(), run.name.clone(), run.command.clone());
        let prepared = blocking(move || {
            let prepared = script::prepare(&d2, &name, &files, &command);
            if let Ok(p) = &prepared {
                if gone.load(Ordering::SeqCst) {
                    let _ = script::remove_command(&p.command_file());
                }
            }
            prepared
        })
        .await?
        .map_err(fail)?;
        let (d2, k2, tag) = (d.clone(), key.clone(), self.state.tag.clone());
        let (env, placement) = blocking(move || (spawn::instance_env(&d2, &k2, &tag), script::placement(id))).await?;
        let mut env = env.map_err(|e| fail(format!("cannot read the instance environment: {e}")))?;
        // Recorded before the script starts, so a server killed at any point leaves a trace of it.
        let mut rec = runs::RunRecord::new(&run.name, &run.identity, run.timeout);
        rec.own_group = placement.join_group.is_none();
        env.push((runs::RUN_ENV.into(), rec.nonce.clone().into()));
        let (d2, r2) = (d.clone(), rec.clone());
        blocking(move || runs::write(&d2, &r2)).await?.map_err(|e| fail(format!("cannot record the run: {e}")))?;
        let (program, args) = script::argv(&placement);
        let mut child = tokio::process::Command::new(&program)
            .args(&args)
            .current_dir(&prepared.dir)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(prepared.stdout)
            .stderr(prepared.stderr)
            .process_group(placement.join_group.unwrap_or(0))
            .spawn()
            .map_err(|e| fail(format!("cannot start {program}: {e}")))?;
        // Not reaped until waited for, so its stat is readable even if it already exited.
        let Some(script_id) = child.id().and_then(|pid| Some(ProcId { pid, start: procfs::read_stat(pid)?.starttime }))
        else {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(fail("the script vanished at start".into()));
        };
        guard.script = Some(script_id);
        rec.script = Some(script_id);
        let d2 = d.clone();
        if let Err(e) = blocking(move || runs::write(&d2, &rec)).await? {
            // The nonce in its environment still finds it after a crash.
            tracing::warn!(instance = %key, extension = %run.name, error = %e, "cannot record the script's pid");
        }
        // Wait for the script itself, not for its output: what it started in the background
        // keeps running (and writing to the output files) after it exits.
        let (exit_code, timed_out) = match tokio::time::timeout(run.timeout, child.wait()).await {
            Ok(Ok(status)) => (status.code(), false),
            Ok(Err(e)) => return Err(fail(format!("waiting for the script: {e}"))),
            Err(_) => {
                blocking(move || script::kill_tree(script_id)).await?;
                let _ = tokio::time::timeout(KILL_WAIT, child.wait()).await;
                tracing::info!(instance = %key, extension = %run.name, timeout = ?run.timeout, "extension script timed out; killed");
                (None, true)
            }
        };
        guard.script = None;
        if placement.join_group.is_none() {
            // Ran in a group of its own: nothing of it may outlive the run untracked.
            tracing::warn!(instance = %key, extension = %run.name, "the script could not join the instance's process group (another session); its background processes were killed");
            blocking(move || procfs::signal_group(script_id, Signal::SIGKILL)).await?;
        }
        drop(guard);
        let (d2, name) = (d.clone(), run.name.clone());
        let (stdout, stderr) = blocking(move || runs::finish(&d2, &name)).await?;
        tracing::debug!(instance = %key, extension = %run.name, ?exit_code, timed_out, "extension script ran");
        Ok(ScriptOutcome { exit_code, timed_out, stdout, stderr })
    }

    async fn console_log(&self, key: &InstanceKey, max_bytes: usize) -> Result<Option<String>, DriverError> {
        let d = self.state.instance(key);
        blocking(move || {
            if !d.exists() {
                return None;
            }
            let bytes = std::fs::read(d.console()).unwrap_or_default();
            Some(String::from_utf8_lossy(&herd_driver::keep_tail(bytes, max_bytes)).into_owned())
        })
        .await
    }
}

impl ProcessDriver {
    /// Waits for a run a previous server started (until its own deadline, then kills it) and
    /// takes its result. The caller holds the instance's lock.
    async fn adopt(
        &self,
        key: &InstanceKey,
        d: &InstanceDir,
        rec: runs::RunRecord,
    ) -> Result<ScriptOutcome, DriverError> {
        let Some(root) = rec.script else {
            return Err(DriverError::Failed(format!("instance {key}: extension {}: no script to adopt", rec.name)));
        };
        tracing::info!(instance = %key, extension = %rec.name, pid = root.pid, "adopting an extension run started by a previous server");
        let deadline = Instant::now() + rec.remaining();
        let mut timed_out = false;
        while blocking(move || runs::alive(root)).await? {
            if Instant::now() >= deadline {
                blocking(move || script::kill_tree(root)).await?;
                tracing::info!(instance = %key, extension = %rec.name, "adopted extension script timed out; killed");
                timed_out = true;
                break;
            }
            tokio::time::sleep(ADOPT_POLL).await;
        }
        if rec.own_group {
            blocking(move || procfs::signal_group(root, Signal::SIGKILL)).await?;
        }
        let (d2, name) = (d.clone(), rec.name.clone());
        let (code, (stdout, stderr)) = blocking(move || {
            let code = runs::exit_status(&script::extension_dir(&d2, &name));
            (code, runs::finish(&d2, &name))
        })
        .await?;
        let exit_code = if timed_out { None } else { code };
        Ok(ScriptOutcome { exit_code, timed_out, stdout, stderr })
    }
}

/// How often an adopted run (not our child: no wait) is checked.
const ADOPT_POLL: Duration = Duration::from_millis(100);

/// Removes an extension's command file however its run ends, and kills the script (with its
/// descendants) if the run is abandoned while it still runs (the future dropped).
struct RunGuard {
    command_file: PathBuf,
    script: Option<ProcId>,
    /// Set when the guard is dropped; a `prepare` still running then removes the file itself.
    gone: Arc<AtomicBool>,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.gone.store(true, Ordering::SeqCst);
        if let Some(id) = self.script.take() {
            script::kill_tree(id);
        }
        if let Err(e) = script::remove_command(&self.command_file) {
            tracing::warn!(path = %self.command_file.display(), error = %e, "cannot remove an extension's command file");
        }
    }
}

/// How a start went.
enum Launched {
    /// Through the spawner, which reports the exit status.
    Spawned(ProcId, tokio::sync::oneshot::Receiver<i32>),
    /// From this process: the child to wait for.
    Direct(ProcId, Child),
    /// Found running after the spawner died mid-start: nobody reports its exit status.
    Adopted(ProcId),
    /// Nothing started, for this reason.
    Failed(String),
}

/// Waits for `child` (so no zombie is left) and records how it ended.
async fn watch(mut child: Child, d: InstanceDir, id: ProcId) {
    let how = match child.wait().await {
        Ok(status) => spawn::describe(status),
        Err(e) => format!("ended (status unknown: {e})"),
    };
    let _ = tokio::task::spawn_blocking(move || d.write_exit(id, &how)).await;
}

/// Polls until the group is gone; `false` if it outlived `limit`.
async fn wait_gone(id: ProcId, limit: Duration) -> Result<bool, DriverError> {
    let start = Instant::now();
    let deadline = start + limit;
    // Most groups are gone within a millisecond or two of the signal: poll fast, then back off.
    let mut pause = Duration::from_millis(1);
    loop {
        // Our own zombie leader is waited for (cheap) for a while, not forever: a child whose
        // handle was dropped is reaped later, and then the full check tells.
        let reaping = start.elapsed() < REAP_WAIT;
        let alive =
            blocking(move || if reaping { procfs::group_alive_until_reaped(id) } else { procfs::group_alive(id) })
                .await?;
        if !alive {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(POLL);
    }
}

fn io_failed(key: &InstanceKey, what: &str, e: std::io::Error) -> DriverError {
    DriverError::io(key, what, e)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, DriverError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| DriverError::Task(std::sync::Arc::new(e)))
}

impl ProcessDriver {
    /// Claims an instance directory created before cluster ids (no tag recorded) for this
    /// driver's cluster. The server calls it once, when it first gives its data dir a cluster
    /// id, for the instances its store records. Returns whether the directory was claimed; one
    /// carrying any tag is left alone.
    pub fn claim_unstamped(&self, key: &InstanceKey) -> Result<bool, DriverError> {
        let d = self.state.instance(key);
        if !d.exists() || d.read_tag().is_some() {
            return Ok(false);
        }
        d.write_tag(&self.state.tag).map_err(|e| io_failed(key, "writing its tag file", e))?;
        Ok(true)
    }
}
