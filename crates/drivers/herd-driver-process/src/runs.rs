//! Extension runs that outlive their server: the record of the run in progress, and how the
//! next server adopts it or kills it, so a script never runs twice at once.
//!
//! Why: a script runs for minutes, and a server may be killed (`kill -9`, a crash) while it
//! does. The script keeps running, as part of its instance; the reconciler of the next server
//! still has the run pending and asks for it again. Without a record, that second request
//! started a second copy next to the first. So every run is recorded in the instance's
//! directory *before* its script starts (the `script-run` file), and every `run_script` looks
//! at that record first:
//!
//! ```text
//!   record of a run, same extension and identity (the reconciler's fingerprint):
//!     script alive                     ──▶ adopt: wait for it (its own deadline), capture
//!                                          its exit code (`.herd-exit`) and output
//!     script gone, `.herd-exit` there  ──▶ it finished unseen: capture that result
//!     script gone, no `.herd-exit`     ──▶ it was killed (instance restarted): run anew
//!   record of another run (other extension or identity):
//!     kill its script and descendants (or, when its pid was never recorded, every process
//!     carrying its nonce), clean its files, then run anew
//! ```
//!
//! The script is started through a small runner file (`/bin/sh ./.herd-runner`), which runs
//! the command file and writes its exit status to `.herd-exit`: a server that did not start
//! the script cannot wait for it, so that file is how an adopted run's result is known. Each
//! run's processes carry `HERD_EXTENSION_RUN=<nonce>` in their environment, which finds them
//! when a crash came between starting the script and recording its pid.

use crate::layout::{atomic_write, ignore_missing, InstanceDir};
use crate::procfs::{self, ProcId, Snapshot};
use crate::script;
use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The environment variable carrying the run's nonce.
pub(crate) const RUN_ENV: &str = "HERD_EXTENSION_RUN";

/// One recorded run (the `script-run` file, `key=value` lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunRecord {
    /// The extension's name (its directory under `work/.herd/extensions/`).
    pub name: String,
    /// What ran: the caller's identity of the run (see `ScriptRun::identity`).
    pub identity: String,
    /// Unique per run; in the environment of its processes.
    pub nonce: String,
    /// The runner process, once started.
    pub script: Option<ProcId>,
    /// When it started (ms since the epoch) and how long it may run.
    pub started_ms: u64,
    pub timeout_ms: u64,
    /// It ran in a process group of its own (not the instance's): killed whole at the end.
    pub own_group: bool,
}

fn clean(s: &str) -> String {
    s.replace(['\n', '\r', '='], "_")
}

impl RunRecord {
    pub fn new(name: &str, identity: &str, timeout: Duration) -> Self {
        let now = now_ms();
        Self {
            name: name.to_string(),
            identity: clean(identity),
            nonce: format!(
                "{}-{}-{}",
                std::process::id(),
                now,
                NONCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
            script: None,
            started_ms: now,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            own_group: false,
        }
    }

    pub fn render(&self) -> String {
        let script = self.script.map_or("-".to_string(), |s| format!("{}:{}", s.pid, s.start));
        format!(
            "name={}\nidentity={}\nnonce={}\nscript={script}\nstarted_ms={}\ntimeout_ms={}\nown_group={}\n",
            self.name, self.identity, self.nonce, self.started_ms, self.timeout_ms, self.own_group
        )
    }

    pub fn parse(text: &str) -> Option<Self> {
        let get = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)?.strip_prefix('='));
        let script = match get("script")? {
            "-" => None,
            s => {
                let (pid, start) = s.split_once(':')?;
                Some(ProcId { pid: pid.parse().ok()?, start: start.parse().ok()? })
            }
        };
        Some(Self {
            name: get("name")?.to_string(),
            identity: get("identity")?.to_string(),
            nonce: get("nonce")?.to_string(),
            script,
            started_ms: get("started_ms")?.parse().ok()?,
            timeout_ms: get("timeout_ms")?.parse().ok()?,
            own_group: get("own_group")? == "true",
        })
    }

    /// Whether this record is of the run `name` / `identity`.
    pub fn is(&self, name: &str, identity: &str) -> bool {
        self.name == name && self.identity == clean(identity)
    }

    /// How long it may still run.
    pub fn remaining(&self) -> Duration {
        let end = self.started_ms.saturating_add(self.timeout_ms);
        Duration::from_millis(end.saturating_sub(now_ms()))
    }
}

static NONCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn read(d: &InstanceDir) -> Option<RunRecord> {
    RunRecord::parse(&fs::read_to_string(d.script_run()).ok()?)
}

pub(crate) fn write(d: &InstanceDir, r: &RunRecord) -> io::Result<()> {
    atomic_write(&d.script_run(), r.render().as_bytes())
}

pub(crate) fn remove(d: &InstanceDir) -> io::Result<()> {
    ignore_missing(fs::remove_file(d.script_run()))
}

/// The recorded script is still running (same pid and start time, not a zombie).
pub(crate) fn alive(id: ProcId) -> bool {
    procfs::read_stat(id.pid).is_some_and(|s| s.starttime == id.start && !s.is_zombie())
}

/// The exit status the runner wrote, if it did.
pub(crate) fn exit_status(dir: &Path) -> Option<i32> {
    fs::read_to_string(dir.join(script::EXIT_FILE)).ok()?.trim().parse().ok()
}

/// What to do about a recorded run before starting `name` / `identity`.
#[derive(Debug)]
pub(crate) enum Prior {
    /// Nothing recorded (or it was cleaned up): start the run.
    Start,
    /// The same run is still going: wait for it.
    Adopt(RunRecord),
    /// The same run ended while no server watched: its exit status.
    Finished(RunRecord, i32),
}

/// Looks at the recorded run of the instance in `d` and either keeps it (same run) or kills it
/// and removes its traces. Blocking.
pub(crate) fn settle(d: &InstanceDir, name: &str, identity: &str) -> Prior {
    let Some(rec) = read(d) else { return Prior::Start };
    let dir = script::extension_dir(d, &rec.name);
    let live = rec.script.filter(|id| alive(*id));
    if rec.is(name, identity) {
        if live.is_some() {
            return Prior::Adopt(rec);
        }
        if let Some(code) = exit_status(&dir) {
            return Prior::Finished(rec, code);
        }
    }
    match (rec.script, live) {
        (_, Some(root)) => {
            tracing::warn!(extension = %rec.name, pid = root.pid, "killing an extension run left by a previous server: another run is wanted now");
            script::kill_tree(root);
            if rec.own_group {
                procfs::signal_group(root, nix::sys::signal::Signal::SIGKILL);
            }
        }
        (None, None) => kill_nonce(&rec.nonce),
        (Some(_), None) => {}
    }
    finish(d, &rec.name);
    Prior::Start
}

/// Kills every process carrying the run's nonce (a crash came before its pid was recorded).
fn kill_nonce(nonce: &str) {
    let needle = format!("{RUN_ENV}={nonce}");
    for _ in 0..3 {
        let snap = Snapshot::take();
        let mut found = false;
        for p in &snap.procs {
            let Ok(env) = fs::read(format!("/proc/{}/environ", p.pid)) else { continue };
            if env.split(|b| *b == 0).any(|e| e == needle.as_bytes()) {
                found = true;
                script::kill_tree(ProcId { pid: p.pid, start: p.starttime });
            }
        }
        if !found {
            return;
        }
    }
}

/// Removes a finished (or killed) run's traces: its command, runner, exit and output files,
/// and the record. The output is returned (tails), for an adopted run.
pub(crate) fn finish(d: &InstanceDir, name: &str) -> (Vec<u8>, Vec<u8>) {
    let dir = script::extension_dir(d, name);
    let out = script::take_output(&dir, herd_driver::SCRIPT_OUTPUT_TAIL);
    for f in [script::COMMAND_FILE, script::RUNNER_FILE, script::EXIT_FILE] {
        if let Err(e) = ignore_missing(fs::remove_file(dir.join(f))) {
            tracing::warn!(path = %dir.join(f).display(), error = %e, "cannot remove an extension run's file");
        }
    }
    if let Err(e) = remove(d) {
        tracing::warn!(path = %d.script_run().display(), error = %e, "cannot remove the extension run record");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut r = RunRecord::new("ext", "abc-def\nx=y", Duration::from_secs(5));
        assert_eq!(r.identity, "abc-def_x_y");
        assert!(r.is("ext", "abc-def\nx=y") && !r.is("ext", "other") && !r.is("other", "abc-def\nx=y"));
        assert_eq!(RunRecord::parse(&r.render()), Some(r.clone()));
        r.script = Some(ProcId { pid: 42, start: 7 });
        r.own_group = true;
        assert_eq!(RunRecord::parse(&r.render()), Some(r.clone()));
        assert!(r.remaining() <= Duration::from_secs(5));
        assert_eq!(RunRecord::parse("name=x\n"), None);
        assert_ne!(RunRecord::new("a", "b", Duration::ZERO).nonce, RunRecord::new("a", "b", Duration::ZERO).nonce);
    }
}
