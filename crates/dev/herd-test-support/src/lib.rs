//! What every herd test agrees on, in one place (a dev-dependency of the crates whose tests
//! wait for real things, and of the `testkit` feature of herd-metric-sources):
//!
//! - **Deadlines** stretch with one knob: `HERD_TEST_TIME_SCALE`, a positive number (default
//!   one), multiplies every deadline a test polls against, so a slow or loaded machine gets
//!   more time without any test changing; [`scaled`].
//! - **The test guest** is in one place: `$HERD_TESTGUEST_OUT`, else `<repo>/target/testguest`
//!   (where `./scripts/test.sh` builds it); [`testguest_dir`].
//! - **A missing prerequisite fails** with the command that installs it, never a printed SKIP
//!   and a pass: `./scripts/test.sh` installs and builds everything; [`require_tool`],
//!   [`require_testguest`].
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The environment variable that stretches every test deadline.
pub const TIME_SCALE_VAR: &str = "HERD_TEST_TIME_SCALE";

/// The factor every test deadline is multiplied by: `HERD_TEST_TIME_SCALE`, default 1.
///
/// # Panics
/// When the variable is set to anything but a finite number greater than zero: a typo must
/// not silently run the suite with the default deadlines.
pub fn time_scale() -> f64 {
    match std::env::var(TIME_SCALE_VAR) {
        Err(_) => 1.0,
        Ok(v) => parse_scale(&v).unwrap_or_else(|e| panic!("{e}")),
    }
}

fn parse_scale(v: &str) -> Result<f64, String> {
    match v.trim().parse::<f64>() {
        Ok(f) if f.is_finite() && f > 0.0 => Ok(f),
        _ => Err(format!("{TIME_SCALE_VAR}={v:?}: expected a number greater than 0, such as 1, 1.5 or 3")),
    }
}

/// `deadline` multiplied by [`time_scale`]: use it for every deadline a test waits against.
pub fn scaled(deadline: Duration) -> Duration {
    deadline.mul_f64(time_scale())
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..").canonicalize().unwrap_or_else(|_| {
        // The source tree moved since the build: fall back to the path as built.
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..")
    })
}

/// Where the test guest build is (`images/testguest/build.sh OUT` leaves `OUT/<version>/…`):
/// `$HERD_TESTGUEST_OUT`, else `<repo>/target/testguest`.
pub fn testguest_dir() -> PathBuf {
    match std::env::var_os("HERD_TESTGUEST_OUT") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join("target/testguest"),
    }
}

/// The text every missing-prerequisite failure ends with.
pub fn install_hint(what: &str) -> String {
    format!("run ./scripts/test.sh, which installs {what} (scripts/packages.txt) and builds the test guest and the app")
}

/// The path of `program` (on `PATH` or in an sbin directory, which a test's `PATH` may lack).
///
/// # Panics
/// When it is not installed, naming the Debian `package` and the command that installs it.
pub fn require_tool(program: &str, package: &str) -> PathBuf {
    find_tool(program).unwrap_or_else(|| panic!("{program} is not installed: {}", install_hint(package)))
}

/// The path of `program` on `PATH` or in `/usr/sbin`, `/sbin`, `/usr/bin`, `/bin`.
pub fn find_tool(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The built test guest's version directory (`vmlinuz`, `initrd.img`, `cmdline`, `disk.qcow2`).
///
/// # Panics
/// When it is not built, naming where it was looked for and how to build it.
pub fn require_testguest(version: &str) -> PathBuf {
    let out = testguest_dir();
    let dir = out.join(version);
    let missing: Vec<&str> =
        ["vmlinuz", "initrd.img", "cmdline", "disk.qcow2"].into_iter().filter(|f| !dir.join(f).is_file()).collect();
    assert!(
        missing.is_empty(),
        "the test guest {version} is not built in {} (missing {}): {} (or images/testguest/build.sh {} by hand)",
        out.display(),
        missing.join(", "),
        install_hint("QEMU"),
        out.display()
    );
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_is_a_positive_number() {
        assert_eq!(parse_scale("1"), Ok(1.0));
        assert_eq!(parse_scale(" 2.5 "), Ok(2.5));
        for bad in ["0", "-1", "abc", "", "inf", "NaN"] {
            let e = parse_scale(bad).unwrap_err();
            assert!(e.contains(TIME_SCALE_VAR) && e.contains("greater than 0"), "{bad}: {e}");
        }
    }

    #[test]
    #[should_panic(expected = "no-such-tool-for-herd is not installed: run ./scripts/test.sh, which installs herd-pkg")]
    fn a_missing_tool_fails_with_the_install_hint() {
        require_tool("no-such-tool-for-herd", "herd-pkg");
    }

    #[test]
    fn the_test_guest_defaults_to_the_repos_target_dir() {
        if std::env::var_os("HERD_TESTGUEST_OUT").is_none() {
            assert_eq!(testguest_dir(), repo_root().join("target/testguest"));
        }
        assert!(repo_root().join("scripts/test.sh").is_file(), "{}", repo_root().display());
    }
}
