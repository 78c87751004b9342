//! `herd demo`: herd's main job in one command. It plays the walkthrough (the classic
//! scale-set tutorial) end to end through the real CLI, on real VMs when QEMU and the test
//! guest are there, else on the process driver, and cleans up (or keeps it all with
//! `--keep`). The walkthrough itself lives in [`walkthrough`], shared with the acceptance
//! test, so the demo a newcomer runs is the one CI checks.
//!
//! Why a crate of its own: the demo family (this runner, the demo app `herd-todo`, the app's
//! install scripts in `images/app`) is not part of the control plane. The runner drives the
//! `herd` binary as a subprocess, exactly as a user in a terminal would, so it depends on no
//! herd crate but the driver's tag helpers (to clean up what a run left behind). Errors are
//! `anyhow` ones: the runner ends at the terminal of the user who ran it.

#![forbid(unsafe_code)]

pub mod netns;
pub mod walkthrough;

use anyhow::{bail, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use walkthrough::{Driver, Options, Resources};

const QEMU: &str = "/usr/bin/qemu-system-x86_64";

/// The repository this binary was built from (for the default test guest and app locations).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..")
}

fn first_existing(candidates: Vec<PathBuf>, marker: &str) -> Option<PathBuf> {
    candidates.into_iter().find(|p| p.join(marker).exists())
}

fn default_testguest() -> Option<PathBuf> {
    let mut c = Vec::new();
    if let Some(p) = std::env::var_os("HERD_TESTGUEST_OUT") {
        c.push(PathBuf::from(p));
    }
    c.extend([PathBuf::from("target/testguest"), repo().join("target/testguest")]);
    first_existing(c, "1.0.1/vmlinuz")
}

fn default_app() -> PathBuf {
    let mut c = Vec::new();
    if let Some(p) = std::env::var_os("HERD_APP_OUT") {
        c.push(PathBuf::from(p));
    }
    c.extend([PathBuf::from("target/guest-app-out"), repo().join("target/guest-app-out")]);
    first_existing(c.clone(), "herd-todo").unwrap_or_else(|| c[0].clone())
}

/// `herd demo`: play the walkthrough (docs/user-guide.md) end to end, printing each command and
/// what came back, checking each step, and cleaning up at the end.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// What runs the instances. Default: qemu when QEMU and a built test guest are there,
    /// else process (with a note saying why).
    #[arg(long, value_parser = ["qemu", "process"])]
    pub driver: Option<String>,
    /// Leave the server, the scale set and the database running at the end.
    #[arg(long)]
    pub keep: bool,
    /// The built test guest (images/testguest/build.sh OUT): OUT/1.0.0, OUT/1.0.1.
    /// Default: $HERD_TESTGUEST_OUT, else target/testguest when present.
    #[arg(long, value_name = "DIR")]
    pub testguest: Option<PathBuf>,
    /// The built demo app (images/app/build.sh OUT): herd-todo and the install scripts.
    /// Default: $HERD_APP_OUT, else target/guest-app-out.
    #[arg(long, value_name = "DIR")]
    pub app: Option<PathBuf>,
    /// The autoscale rules' averaging window (the walkthrough's is 5m), e.g. 1m, 90s.
    #[arg(long, default_value = "1m")]
    pub window: String,
    /// Instance networking. Default: bridged when run as root with ip, nft and dnsmasq
    /// installed (the walkthrough then runs in a network namespace of its own, and the
    /// instances get their private IPs on the subnet's bridge), else host-local.
    #[arg(long, value_parser = ["bridged", "host-local"])]
    pub network: Option<String>,
}

/// Plays the walkthrough as `args` say; on Ctrl-C tears everything down and exits 130.
pub async fn run(args: DemoArgs) -> Result<()> {
    let testguest = args.testguest.clone().or_else(default_testguest);
    let driver = match args.driver.as_deref() {
        Some("qemu") => Driver::Qemu,
        Some("process") => Driver::Process,
        Some(other) => bail!("--driver {other}: use qemu or process"),
        None => {
            let qemu = Path::new(QEMU).exists();
            let guest = testguest.as_ref().is_some_and(|t| t.join("1.0.1/vmlinuz").exists());
            if qemu && guest {
                Driver::Qemu
            } else {
                println!(
                    "note: playing the walkthrough on the process driver, because {}. For real VMs: {}",
                    if !qemu { format!("{QEMU} is not installed") } else { "no built test guest was found".into() },
                    if !qemu {
                        "apt-get install qemu-system-x86, then ./demo.sh"
                    } else {
                        "images/testguest/build.sh OUT, then herd demo --testguest OUT (./demo.sh does both)"
                    }
                );
                Driver::Process
            }
        }
    };
    let bridged = match args.network.as_deref() {
        Some("bridged") => {
            if let Some(why) = netns::unavailable() {
                bail!("--network bridged: not possible here: {why}");
            }
            true
        }
        Some(_) => false,
        None => match netns::unavailable() {
            None => true,
            Some(why) => {
                println!("note: host-local networking ({why}); bridged networking needs root with ip, nft and dnsmasq");
                false
            }
        },
    };
    let opts = Options {
        driver,
        testguest,
        app: args.app.clone().unwrap_or_else(default_app),
        window: args.window.clone(),
        keep: args.keep,
        bridged,
    };
    if walkthrough::parse_window(&opts.window).is_none() {
        bail!("--window {}: give a number and a unit, e.g. 1m, 90s, 5m", opts.window);
    }
    if opts.bridged && std::env::var_os(netns::ENV).is_none() {
        // The outer run: make the namespace, play inside it, remove it.
        let mut inner = vec!["--driver".to_string(), driver.name().to_string(), "--network".into(), "bridged".into()];
        if let Some(tg) = &opts.testguest {
            inner.extend(["--testguest".into(), tg.display().to_string()]);
        }
        inner.extend(["--app".into(), opts.app.display().to_string(), "--window".into(), opts.window.clone()]);
        if opts.keep {
            inner.push("--keep".into());
        }
        let ns = netns::Namespace::create()?;
        let code = tokio::task::spawn_blocking({
            let ns = netns::Namespace(ns.0.clone());
            move || ns.run_demo(&inner)
        });
        // Ctrl-C reaches the walkthrough too (same terminal); wait for it to clean up.
        let code = tokio::select! {
            c = code => c??,
            _ = tokio::signal::ctrl_c() => 130,
        };
        if opts.keep && code == 0 {
            println!("The namespace {} stays (--keep): enter it with  ip netns exec {} bash", ns.0, ns.0);
        } else {
            ns.remove();
        }
        if code != 0 {
            std::process::exit(code);
        }
        return Ok(());
    }
    let res: walkthrough::Shared = Arc::new(Mutex::new(Resources::default()));
    let res2 = res.clone();
    let task = tokio::task::spawn_blocking(move || walkthrough::run(&opts, &res2));
    tokio::select! {
        r = task => r?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\ninterrupted: cleaning up");
            let res = res.clone();
            // The runner may hold the lock for a moment; tear down on a blocking thread.
            let _ = tokio::task::spawn_blocking(move || res.lock().unwrap_or_else(|e| e.into_inner()).teardown(false)).await;
            std::process::exit(130);
        }
    }
}
