//! The acceptance test: the whole walkthrough (`herd demo`, which plays every step of the
//! classic scale-set tutorial through the real CLI and checks what a user would see) on real
//! VMs (`qemu`, TCG here) and on the `process` driver. One implementation serves the demo and
//! this test (`crates/demo/herd-demo/src/walkthrough.rs`); here we run it as a user would and check it passed.
//!
//! Needs PostgreSQL (the TODO app's database), the demo app (`images/app/build.sh`;
//! `HERD_APP_OUT`, else built into `target/guest-app-out`) and, for qemu, QEMU and the test
//! guest (`images/testguest/build.sh`; `HERD_TESTGUEST_OUT`, else `target/testguest`):
//! `./scripts/test.sh` installs and builds all of it, and a missing piece fails the test with
//! that hint. Deadlines are multiplied by `HERD_TEST_TIME_SCALE`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The two walkthroughs run one after the other: they share the machine's two cores, and each
/// measures no-failed-request windows.
static SERIAL: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..").canonicalize().unwrap()
}

/// The static app and its install scripts, built once (cached by cargo).
fn app_out() -> PathBuf {
    if let Ok(p) = std::env::var("HERD_APP_OUT") {
        return PathBuf::from(p);
    }
    let out = repo().join("target/guest-app-out");
    let st = Command::new(repo().join("images/app/build.sh")).arg(&out).status().unwrap();
    assert!(st.success(), "images/app/build.sh failed");
    out
}

/// Runs `herd demo ARGS` with its output in a file, bounded by `limit` (times
/// `HERD_TEST_TIME_SCALE`); returns (success, output).
fn demo(args: &[&str], limit: Duration) -> (bool, String) {
    let limit = herd_test_support::scaled(limit);
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("demo.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(common::HERD)
        .arg("demo")
        .args(args)
        .env_remove("HERD_SERVER")
        .env_remove("HERD_DATA_DIR")
        .env_remove("HERD_TOKEN")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("run herd demo");
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > limit {
            // SIGINT: the demo tears down its server, instances and database.
            let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
            let deadline = Instant::now() + herd_test_support::scaled(Duration::from_secs(60));
            while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        // Polls the child's exit every 200 ms against the limit above.
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    // Shown by the harness when the test fails (and with --nocapture).
    println!("{text}");
    match status {
        Some(st) => (st.success(), text),
        None => (false, format!("{text}\n(herd demo did not finish within {}s)", limit.as_secs())),
    }
}

fn check(driver: &str, ok: bool, out: &str) {
    assert!(ok, "herd demo --driver {driver} failed:\n{}", tail(out, 60));
    assert!(out.contains(&format!("The walkthrough passed on the {driver} driver")), "{}", tail(out, 60));
    for step in
        ["step 1:", "step 2:", "step 4:", "step 5:", "step 6:", "step 7:", "step 7 (rolling", "step 8:", "step 9:"]
    {
        assert!(out.contains(step), "the output shows {step}");
    }
    assert!(out.contains("Wall time per step"), "the summary table is printed");
    assert!(out.contains("--admin-password '****'"), "the admin password is masked in the echoed command");
    assert!(out.contains("Server stopped"), "the demo cleaned up");
    // As root (CI) the demo plays on bridged networking, in a network namespace of its own.
    if nix::unistd::geteuid().is_root() {
        assert!(out.contains("$ ip netns add herd-demo-"), "the demo made its own namespace: {}", tail(out, 60));
        assert!(out.contains("step 5 (bridged): private IPs"), "the private-IP step ran");
        assert!(out.contains("fetched http://10.0.0."), "one instance fetched the other's version by private IP");
        assert!(out.contains("Network namespace herd-demo-"), "and the namespace was deleted");
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn walkthrough_on_process() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let app = app_out();
    let (ok, out) =
        demo(&["--driver", "process", "--app", app.to_str().unwrap(), "--window", "1m"], Duration::from_secs(900));
    check("process", ok, &out);
}

#[test]
fn walkthrough_on_qemu() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    herd_test_support::require_tool("qemu-system-x86_64", "qemu-system-x86");
    herd_test_support::require_testguest("1.0.1");
    let tg = herd_test_support::testguest_dir();
    let app = app_out();
    let (ok, out) = demo(
        &["--driver", "qemu", "--testguest", tg.to_str().unwrap(), "--app", app.to_str().unwrap(), "--window", "1m"],
        Duration::from_secs(1800),
    );
    check("qemu", ok, &out);
}
