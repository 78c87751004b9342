//! `herd bench rolling`: how much a rolling upgrade costs beyond waiting for health.
//!
//! A rolling upgrade is a sequence of batches; each batch must wait for its instances to be
//! rebuilt and proven healthy, and that wait is the floor. herd's overhead is everything else:
//! planning, the gap between one batch finishing and the next starting, bookkeeping. So the
//! figure is `total time / sum of the batches' durations` (goal ≤ 1.1), for 100 sim instances
//! and for 20 process instances behind the load balancer (HTTP probe), both in 20% batches.
//!
//! The server runs in this process; setup goes through the `herd` CLI itself (this binary),
//! pointed at it, as a user would.

use crate::{script_image as image, start_in, Driver, Launch};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// One measured rolling upgrade.
#[derive(Debug, serde::Serialize)]
pub struct RollingRun {
    pub driver: String,
    pub instances: u64,
    pub batches: usize,
    /// From the upgrade's start to its completion, as the server recorded them.
    pub total_s: f64,
    /// The sum of each batch's start → finish (rebuild + health wait).
    pub batch_sum_s: f64,
    /// total / batch sum: herd's overhead (1.0 = none).
    pub ratio: f64,
}

struct Cli {
    exe: std::path::PathBuf,
    url: String,
    token: String,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Result<String> {
        let out = std::process::Command::new(&self.exe)
            .args(args)
            .args(["--quiet"])
            .env("HERD_SERVER", &self.url)
            .env("HERD_TOKEN", &self.token)
            .output()
            .context("running herd")?;
        if !out.status.success() {
            bail!("herd {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.run(&a)?)?)
    }
}

/// Runs one rolling upgrade of `count` instances on `driver` and measures it.
pub async fn measure(launch: &dyn Launch, driver: Driver, count: u64) -> Result<RollingRun> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let config =
        "[sim]\nboot_min_ms = 50\nboot_max_ms = 200\n[loadbalancer]\ndrain_timeout_secs = 1\n[provisioning]\ndriver_concurrency = 256\n";
    let mut server = start_in(launch, dir.path(), driver, config).await?;
    let cli = Cli { exe: std::env::current_exe()?, url: server.url.clone(), token: server.token.clone() };
    // The temporary directory lives until the instances are gone (they are found by it).
    let root = dir.path().to_path_buf();
    let result = tokio::task::spawn_blocking(move || run_upgrade(&cli, &root, driver, count)).await?;
    server.stop().await;
    crate::kill_instances(&data);
    drop(dir);
    result
}

fn run_upgrade(cli: &Cli, dir: &Path, driver: Driver, count: u64) -> Result<RollingRun> {
    let set = ["-g", "bench", "-n", "roll"];
    let n = count.to_string();
    cli.run(&["group", "create", "-n", "bench"])?;
    import_images(cli, dir, driver)?;
    let mut create = vec!["vmss", "create"];
    create.extend_from_slice(&set);
    create.extend([
        "--image",
        "Herd:Bench:1:1.0.0",
        "--instance-count",
        &n,
        "--disable-overprovision",
        "--timeout",
        "600",
    ]);
    if driver == Driver::Sim {
        // No load balancer: instances are healthy once running (the planner's rule without a
        // health source); the upgrade is started by hand.
        cli.run(&create)?;
    } else {
        create_load_balancer(cli)?;
        create.extend(["--lb", "lb", "--upgrade-policy-mode", "Rolling"]);
        cli.run(&create)?;
        wait_healthy(cli, count)?;
    }
    let mut update = vec!["vmss", "update"];
    update.extend_from_slice(&set);
    update.extend(["--set", "virtualMachineProfile.storageProfile.imageReference.version=1.0.1", "--no-wait"]);
    cli.run(&update)?;
    if driver == Driver::Sim {
        let mut start = vec!["vmss", "rolling-upgrade", "start"];
        start.extend_from_slice(&set);
        cli.run(&start)?;
    }
    let done = wait_upgrade(cli, dir, &set)?;
    let ts = |v: &Value| -> Result<chrono::DateTime<chrono::Utc>> { Ok(serde_json::from_value(v.clone())?) };
    let total = (ts(&done["endedAt"])? - ts(&done["startedAt"])?).num_milliseconds() as f64 / 1000.0;
    let batches = done["batches"].as_array().cloned().unwrap_or_default();
    let mut sum = 0.0;
    for b in &batches {
        sum += (ts(&b["finishedAt"])? - ts(&b["startedAt"])?).num_milliseconds() as f64 / 1000.0;
    }
    let mut del = vec!["vmss", "delete"];
    del.extend_from_slice(&set);
    let _ = cli.run(&del);
    Ok(RollingRun {
        driver: format!("{driver:?}").to_lowercase(),
        instances: count,
        batches: batches.len(),
        total_s: total,
        batch_sum_s: sum,
        ratio: if sum > 0.0 { total / sum } else { f64::NAN },
    })
}

/// Imports `Herd:Bench:1:1.0.0` and `1.0.1`: a sleeper on the sim driver, else an HTTP server
/// answering its version.
fn import_images(cli: &Cli, dir: &Path, driver: Driver) -> Result<()> {
    let http = |v: u32| {
        format!("mkdir -p www && echo 'version {v}' > www/index.html\nexec python3 -m http.server --bind \"$HERD_ADDRESS\" --directory www 8080")
    };
    for (v, version) in [("1.0.0", 1), ("1.0.1", 2)] {
        let d = dir.join(format!("img-{v}"));
        image(&d, &if driver == Driver::Sim { "exec sleep 3600".to_string() } else { http(version) })?;
        cli.run(&["image", "import", "--urn", &format!("Herd:Bench:1:{v}"), "--dir", d.to_str().unwrap_or_default()])?;
    }
    Ok(())
}

/// The load balancer `lb` with an HTTP probe on port 8080 and a rule 18099 -> 8080.
fn create_load_balancer(cli: &Cli) -> Result<()> {
    cli.run(&["network", "lb", "create", "-g", "bench", "-n", "lb", "--public-ip-address", "lb-ip"])?;
    let create_child = |kind: &str, name: &str, rest: &[&str]| {
        let mut args = vec!["network", "lb", kind, "create", "-g", "bench", "--lb-name", "lb", "-n", name];
        args.extend_from_slice(rest);
        cli.run(&args).map(drop)
    };
    create_child(
        "probe",
        "p",
        &["--protocol", "Http", "--path", "/", "--port", "8080", "--interval", "1", "--threshold", "2"],
    )?;
    create_child("rule", "r", &["--frontend-port", "18099", "--backend-port", "8080", "--probe-name", "p"])?;
    Ok(())
}

/// Waits (up to 2 minutes) until all `count` instances are healthy.
fn wait_healthy(cli: &Cli, count: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = cli.json(&["vmss", "list-instances", "-g", "bench", "-n", "roll"])?;
        let healthy = list.as_array().map_or(0, |a| a.iter().filter(|i| i["health"] == "Healthy").count());
        if healthy as u64 == count {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {healthy} of {count} instances became healthy");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Waits (up to 15 minutes) for the latest rolling upgrade of `set` to complete; returns it.
/// A faulted or cancelled upgrade fails naming its unhealthy instances' last console lines.
fn wait_upgrade(cli: &Cli, dir: &Path, set: &[&str]) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let mut get = vec!["vmss", "rolling-upgrade", "get-latest"];
        get.extend_from_slice(set);
        if let Ok(v) = cli.json(&get) {
            match v["state"].as_str() {
                Some("Completed") => return Ok(v),
                Some("Faulted" | "Cancelled") => {
                    let mut why = String::new();
                    for b in v["batches"].as_array().into_iter().flatten() {
                        for id in b["unhealthy"].as_array().into_iter().flatten() {
                            let log = dir.join(format!("data/instances/bench/roll/{id}/console.log"));
                            let text = std::fs::read_to_string(&log).unwrap_or_default();
                            let tail: Vec<&str> = text.lines().rev().take(3).collect();
                            why.push_str(&format!("\n  instance {id}: {}", tail.join(" | ")));
                        }
                    }
                    bail!("the upgrade stopped: {}{why}", v["error"])
                }
                _ => {}
            }
        }
        if Instant::now() > deadline {
            bail!("the upgrade did not finish in 15 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
