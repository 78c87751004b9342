//! The program every process instance starts through: a new UTS namespace, the hostname, then
//! `exec` of the instance's `init`.
//!
//! Why: it runs once per instance start, so its own start-up is paid a thousand times when a
//! thousand instances start. The `herd` binary provides it as `herd instance-init`, but loading
//! that 42 MB binary costs about 2.5 ms of CPU; the small `herd-instance-init` binary installed
//! beside it runs the same code in about half that (`perf stat`, beyond what `/bin/true` costs;
//! see `docs/benchmarks.md`). The driver uses the small one when it is there and works, else
//! `herd instance-init` (see [`Launcher::find`]).
//!
//! The same program runs as the driver's spawner (`--spawner`, see the `spawner` module),
//! which does all of this in the child it starts, without the extra `exec`; the launcher itself
//! then starts only what the spawner cannot (bridged instances, or any start after the
//! spawner is gone).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

/// The name of the small launcher binary, installed beside `herd`.
pub const INIT_BINARY: &str = "herd-instance-init";

/// `--hostname NAME -- PROGRAM [ARGS]` exactly: `(NAME, [PROGRAM, ARGS...])`.
pub fn parse_args(args: &[String]) -> Option<(String, Vec<String>)> {
    match args {
        [flag, hostname, sep, program @ ..] if flag == "--hostname" && sep == "--" && !program.is_empty() => {
            Some((hostname.clone(), program.to_vec()))
        }
        _ => None,
    }
}

/// Enters a new UTS namespace, sets the hostname and execs `program` (returns only on failure,
/// after saying why on stderr). Runs before any thread exists.
pub fn run(hostname: &str, program: &[String]) -> ExitCode {
    let me = "herd instance-init";
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS) {
        eprintln!("{me}: cannot create a UTS namespace: {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = nix::unistd::sethostname(hostname) {
        eprintln!("{me}: cannot set the hostname to '{hostname}': {e}");
        return ExitCode::FAILURE;
    }
    let Some((first, rest)) = program.split_first() else {
        eprintln!("{me}: no program to start");
        return ExitCode::from(127);
    };
    let err = std::process::Command::new(first).args(rest).exec();
    eprintln!("{me}: cannot start {first}: {err}");
    ExitCode::from(127)
}

/// A program that gives a child its own hostname and execs `./init`, with the arguments that
/// come before `--hostname` (none for the small binary, `instance-init` for `herd`).
#[derive(Debug, Clone)]
pub(crate) struct Launcher {
    program: PathBuf,
    prefix: Option<&'static str>,
}

impl Launcher {
    /// The small binary beside `herd_exe` if it works here, else `herd_exe instance-init` if
    /// that works; `None` if neither can set a hostname (not root, or no namespaces allowed).
    pub fn find(herd_exe: &Path) -> Option<Launcher> {
        [
            Launcher { program: herd_exe.with_file_name(INIT_BINARY), prefix: None },
            Launcher { program: herd_exe.to_path_buf(), prefix: Some("instance-init") },
        ]
        .into_iter()
        .find(Launcher::works)
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The arguments that start `program` with `hostname`.
    pub fn args(&self, hostname: &str, program: &str) -> Vec<String> {
        let mut args: Vec<String> = self.prefix.iter().map(|p| p.to_string()).collect();
        args.extend(["--hostname".into(), hostname.into(), "--".into(), program.into()]);
        args
    }

    /// The command that runs the same program as the spawner (`--spawner` is added by
    /// `Spawner::start`).
    pub fn spawner_command(&self) -> (PathBuf, Vec<String>) {
        (self.program.clone(), self.prefix.iter().map(|p| p.to_string()).collect())
    }

    /// Whether it gives a child its own hostname here (we are root and the kernel allows it).
    fn works(&self) -> bool {
        nix::unistd::geteuid().is_root()
            && self.program.is_file()
            && std::process::Command::new(&self.program)
                .args(self.args("herd-probe", "/bin/true"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each launcher passes exactly the form `parse_args` reads (its other forms are tested
    /// through `herd instance-init` in the `herd` binary).
    #[test]
    fn launchers_pass_the_form_that_is_read() {
        let small = Launcher { program: "/x/herd-instance-init".into(), prefix: None };
        let herd = Launcher { program: "/x/herd".into(), prefix: Some("instance-init") };
        let expected = ("web0".to_string(), vec!["./init".to_string()]);
        for (l, skip) in [(small, 0), (herd, 1)] {
            let a = l.args("web0", "./init");
            assert_eq!(a.len(), 4 + skip);
            assert_eq!(a.first().map(String::as_str), Some(if skip == 0 { "--hostname" } else { "instance-init" }));
            assert_eq!(parse_args(&a[skip..]), Some(expected.clone()));
        }
        assert_eq!(parse_args(&["--hostname=web0".into(), "--".into(), "./init".into()]), None);
    }
}
