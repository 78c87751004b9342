//! Extension runs: placing a script's files in the instance, choosing how to start it so it is
//! part of the instance, and killing a script that overran its timeout.
//!
//! Why a module of its own: the command may carry secrets, and every step here is written so it
//! never leaves the instance's disk. It is written to a mode-0600 file and run as
//! `/bin/sh ./.herd-command` (through `.herd-runner`, which records the exit status), so no
//! argv (of `sh`, nor of `nsenter` when the instance has its own namespaces) and no error
//! message ever holds it. The async orchestration is in `lib.rs`;
//! everything here is synchronous and runs on the blocking pool.

use crate::layout::{ignore_missing, InstanceDir};
use crate::procfs::{self, ProcId, Snapshot};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The command file, in the extension's directory; removed after every run.
pub(crate) const COMMAND_FILE: &str = ".herd-command";
/// What is started: runs the command file and records its exit status in [`EXIT_FILE`], so a
/// server that did not start the script can still learn how it ended (see the `runs` module).
pub(crate) const RUNNER_FILE: &str = ".herd-runner";
/// The command's exit status, written by the runner when the command ends.
pub(crate) const EXIT_FILE: &str = ".herd-exit";
const RUNNER: &str = "/bin/sh ./.herd-command\ns=$?\necho \"$s\" > ./.herd-exit\nexit \"$s\"\n";
/// Where the script's stdout and stderr go while it runs; removed once their tails are
/// captured (the output may print a secret, and only the masked tails are kept, in the store).
pub(crate) const STDOUT_FILE: &str = ".herd-stdout";
pub(crate) const STDERR_FILE: &str = ".herd-stderr";
const NSENTER: &str = "/usr/bin/nsenter";
/// How long [`kill_tree`] waits for the killed processes to be gone.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// Checks that `name` (described as `what`) is one ordinary path component.
pub(crate) fn check_component(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(format!(
            "{what} {name:?} is not a single path component (empty names, '.', '..', '/' and NUL are refused)"
        ));
    }
    Ok(())
}

/// Checks the extension's name and file names before anything touches the instance.
pub(crate) fn check_names<'a>(name: &str, files: impl IntoIterator<Item = &'a str>) -> Result<(), String> {
    check_component("extension name", name)?;
    for file in files {
        check_component("file name", file)?;
        if [COMMAND_FILE, STDOUT_FILE, STDERR_FILE, RUNNER_FILE, EXIT_FILE].contains(&file) {
            return Err(format!("file name {file:?} is reserved for the driver"));
        }
    }
    Ok(())
}

/// The extension's directory in the instance, its stdio files and the command file.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub dir: PathBuf,
    pub stdout: fs::File,
    pub stderr: fs::File,
}

impl Prepared {
    pub fn command_file(&self) -> PathBuf {
        self.dir.join(COMMAND_FILE)
    }
}

/// `work/.herd/extensions/<name>/` of the instance in `d`.
pub(crate) fn extension_dir(d: &InstanceDir, name: &str) -> PathBuf {
    d.work().join(".herd").join("extensions").join(name)
}

/// Creates the extension's directory, writes its files (mode 0700, so `./script.sh` works), the
/// command (mode 0600) and fresh stdout/stderr files (mode 0600). Every file is created anew
/// (removed, then created exclusively), so a symbolic link left in its place by the instance is
/// replaced, never followed. Error messages name paths, never the command.
pub(crate) fn prepare(
    d: &InstanceDir,
    name: &str,
    files: &[(String, Vec<u8>)],
    command: &str,
) -> Result<Prepared, String> {
    let dir = extension_dir(d, name);
    let work = d.work();
    let mut at = work.clone();
    for part in [".herd", "extensions", name] {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("{} exists and is not a directory", shown(&work, &at))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&at).map_err(|e| format!("creating {}: {e}", shown(&work, &at)))?;
            }
            Err(e) => return Err(format!("{}: {e}", shown(&work, &at))),
        }
    }
    for (file, content) in files {
        let path = dir.join(file);
        create_fresh(&path, 0o700)
            .and_then(|mut f| f.write_all(content))
            .map_err(|e| format!("writing {}: {e}", shown(&work, &path)))?;
    }
    let exit = dir.join(EXIT_FILE);
    ignore_missing(fs::remove_file(&exit)).map_err(|e| format!("removing {}: {e}", shown(&work, &exit)))?;
    let runner = dir.join(RUNNER_FILE);
    create_fresh(&runner, 0o600)
        .and_then(|mut f| f.write_all(RUNNER.as_bytes()))
        .map_err(|e| format!("writing {}: {e}", shown(&work, &runner)))?;
    let path = dir.join(COMMAND_FILE);
    if let Err(e) = create_fresh(&path, 0o600).and_then(|mut f| f.write_all(command.as_bytes())) {
        let _ = fs::remove_file(&path);
        return Err(format!("writing {}: {e}", shown(&work, &path)));
    }
    let stdio = |file: &str| {
        let path = dir.join(file);
        create_fresh(&path, 0o600).map_err(|e| format!("creating {}: {e}", shown(&work, &path)))
    };
    match (stdio(STDOUT_FILE), stdio(STDERR_FILE)) {
        (Ok(stdout), Ok(stderr)) => Ok(Prepared { dir, stdout, stderr }),
        (Err(e), _) | (_, Err(e)) => {
            let _ = fs::remove_file(&path);
            Err(e)
        }
    }
}

/// A path for messages: relative to `work/` when inside it.
fn shown(work: &Path, path: &Path) -> String {
    match path.strip_prefix(work) {
        Ok(rel) => format!("work/{}", rel.display()),
        Err(_) => path.display().to_string(),
    }
}

/// Replaces whatever is at `path` with a new, empty file of `mode` (subject to the umask).
fn create_fresh(path: &Path, mode: u32) -> io::Result<fs::File> {
    ignore_missing(fs::remove_file(path))?;
    fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path)
}

/// Removes the command file; `Ok` if the script already removed it.
pub(crate) fn remove_command(path: &Path) -> io::Result<()> {
    ignore_missing(fs::remove_file(path))
}

/// The last `max` bytes of a file (empty if it cannot be read).
pub(crate) fn read_tail(path: &Path, max: usize) -> Vec<u8> {
    let Ok(mut f) = fs::File::open(path) else { return Vec::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(len.saturating_sub(max as u64))).is_ok() {
        let _ = f.read_to_end(&mut buf);
    }
    herd_driver::keep_tail(buf, max)
}

/// The last `max` bytes of the run's stdout and stderr in `dir`; both files are removed.
pub(crate) fn take_output(dir: &Path, max: usize) -> (Vec<u8>, Vec<u8>) {
    let (out, err) = (dir.join(STDOUT_FILE), dir.join(STDERR_FILE));
    let tails = (read_tail(&out, max), read_tail(&err, max));
    for f in [&out, &err] {
        if let Err(e) = ignore_missing(fs::remove_file(f)) {
            tracing::warn!(path = %f.display(), error = %e, "cannot remove an extension's output file");
        }
    }
    tails
}

/// How the script is started so that it is part of the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement {
    /// The instance's process group, when the script can join it: it must still have a member
    /// in our session (`setpgid` cannot cross sessions; an instance adopted from a server that
    /// ran in another session cannot be joined).
    pub join_group: Option<i32>,
    /// `nsenter` into the namespaces of this process of the instance: (pid, UTS?, network?).
    /// `None` when the instance shares ours (or `nsenter` is missing).
    pub enter: Option<(u32, bool, bool)>,
}

/// Decides how to start a script in the instance whose group is `id`.
pub(crate) fn placement(id: ProcId) -> Placement {
    let snap = Snapshot::take();
    let mut members = snap.members(id);
    // The leader (init) first: its namespaces are the instance's.
    members.sort_by_key(|p| p.pid != id.pid);
    let ours = nix::unistd::getsid(None).ok().map(|s| i64::from(s.as_raw()));
    let joinable = members.iter().any(|p| p.pgrp == i64::from(id.pid) && Some(p.session) == ours && !p.is_zombie());
    let join_group = i32::try_from(id.pid).ok().filter(|_| joinable);
    let enter = members.iter().find_map(|p| {
        let uts = procfs::namespace(p.pid, "uts")?;
        let net = procfs::namespace(p.pid, "net")?;
        Some((p.pid, Some(uts) != procfs::own_namespace("uts"), Some(net) != procfs::own_namespace("net")))
    });
    let enter = enter.filter(|(_, uts, net)| *uts || *net);
    if enter.is_some() && !Path::new(NSENTER).exists() {
        tracing::warn!(pid = id.pid, "{NSENTER} is missing: the script runs outside the instance's namespaces");
        return Placement { join_group, enter: None };
    }
    Placement { join_group, enter }
}

/// The program and arguments that run the command file (through the runner) in `placement`.
/// The command itself is never among them.
pub(crate) fn argv(placement: &Placement) -> (String, Vec<String>) {
    let sh = vec!["/bin/sh".to_string(), format!("./{RUNNER_FILE}")];
    match placement.enter {
        None => (sh[0].clone(), sh[1..].to_vec()),
        Some((pid, uts, net)) => {
            let mut args = vec!["--target".to_string(), pid.to_string()];
            if uts {
                args.push("--uts".into());
            }
            if net {
                args.push("--net".into());
            }
            // Without a pid namespace nsenter does not fork anyway; say so, so the script's pid
            // is the one we wait for and kill.
            args.push("--no-fork".into());
            args.push("--".into());
            args.extend(sh);
            (NSENTER.to_string(), args)
        }
    }
}

/// Kills `root` and all its descendants (found through parent pids), none of the instance's
/// other processes. The tree is frozen first (SIGSTOP, rescanned until no new process shows
/// up), so nothing forks past the kill; then every frozen process gets SIGKILL. Waits (briefly)
/// until they are gone.
pub(crate) fn kill_tree(root: ProcId) {
    let me = std::process::id();
    let mut frozen: HashMap<u32, u64> = HashMap::new();
    for _ in 0..100 {
        let snap = Snapshot::take();
        let mut new = false;
        for p in snap.descendants(root) {
            if p.pid <= 1 || p.pid == me {
                continue;
            }
            if frozen.insert(p.pid, p.starttime).is_none() {
                new = true;
                let _ = kill(Pid::from_raw(p.pid as i32), Signal::SIGSTOP);
            }
        }
        if !new {
            break;
        }
    }
    let ours = |pid: u32, start: u64| procfs::read_stat(pid).is_some_and(|s| s.starttime == start && !s.is_zombie());
    for (&pid, &start) in &frozen {
        if ours(pid, start) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
    let deadline = Instant::now() + KILL_WAIT;
    while frozen.iter().any(|(&pid, &start)| ours(pid, start)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_single_components() {
        for bad in ["", ".", "..", "../x", "a/b", "/abs", "x\0y"] {
            let err = check_component("extension name", bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        for good in ["ext", "install.sh", ".hidden", "a..b"] {
            assert!(check_component("file name", good).is_ok(), "{good}");
        }
        assert!(check_names("ext", [COMMAND_FILE]).unwrap_err().contains("reserved"));
        assert!(check_names("ext", ["ok"]).is_ok());
    }

    #[test]
    fn the_command_is_never_an_argument() {
        let (prog, args) = argv(&Placement { join_group: Some(5), enter: None });
        assert_eq!((prog.as_str(), args), ("/bin/sh", vec!["./.herd-runner".to_string()]));
        let (prog, args) = argv(&Placement { join_group: None, enter: Some((42, true, false)) });
        assert_eq!(prog, NSENTER);
        assert_eq!(args, ["--target", "42", "--uts", "--no-fork", "--", "/bin/sh", "./.herd-runner"]);
    }

    #[test]
    fn prepare_replaces_links_and_keeps_the_command_private() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let d = InstanceDir::new(t.path().to_path_buf());
        fs::create_dir(d.work()).unwrap();
        let outside = t.path().join("outside");
        fs::write(&outside, "untouched").unwrap();
        let dir = extension_dir(&d, "ext");
        fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join(COMMAND_FILE)).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("a.sh")).unwrap();

        let p = prepare(&d, "ext", &[("a.sh".into(), b"echo a\n".to_vec())], "echo secret").unwrap();
        assert_eq!(p.dir, dir);
        assert_eq!(fs::read_to_string(&outside).unwrap(), "untouched");
        assert_eq!(fs::read_to_string(dir.join("a.sh")).unwrap(), "echo a\n");
        assert_eq!(fs::read_to_string(p.command_file()).unwrap(), "echo secret");
        let mode = |f: &str| fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(COMMAND_FILE), 0o600);
        assert_eq!(mode(STDOUT_FILE), 0o600);
        assert_eq!(mode("a.sh") & 0o700, 0o700);
        remove_command(&p.command_file()).unwrap();
        remove_command(&p.command_file()).unwrap();

        // A directory in the way is an error naming the path, never the command.
        let d2 = InstanceDir::new(t.path().join("other"));
        fs::create_dir_all(d2.work().join(".herd")).unwrap();
        fs::write(d2.work().join(".herd/extensions"), "").unwrap();
        let err = prepare(&d2, "ext", &[], "echo secret").unwrap_err();
        assert!(err.contains("work/.herd/extensions") && !err.contains("secret"), "{err}");
    }

    #[test]
    fn tails_are_bounded() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("out");
        fs::write(&f, "x".repeat(10) + "end").unwrap();
        assert_eq!(read_tail(&f, 5), b"xxend".to_vec());
        assert_eq!(read_tail(&f, 100).len(), 13);
        assert!(read_tail(&t.path().join("none"), 5).is_empty());
    }
}
