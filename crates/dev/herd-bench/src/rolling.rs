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
//!
//! Each batch is also broken down (`batchBreakdown`), from the instance list polled every
//! 20 ms during the upgrade: how long the batch's instances drained (batch start → the last
//! instance leaves the pool and its rebuild starts), were rebuilt (→ running on the new model),
//! waited for their first healthy probe (→ healthy), and herd's own gap (→ the next batch
//! starts, or the upgrade ends).

use crate::{script_image as image, start_in, Driver, Launch};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// The shape of the process run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The server's `[loadbalancer] drain_timeout_secs`.
    pub drain_timeout: u64,
    /// The HTTP probe's threshold (interval 1 s).
    pub probe_threshold: u32,
}

/// One measured rolling upgrade.
#[derive(Debug, serde::Serialize)]
pub struct RollingRun {
    pub driver: String,
    pub instances: u64,
    pub drain_timeout_s: u64,
    pub probe_threshold: u32,
    pub batches: usize,
    /// From the upgrade's start to its completion, as the server recorded them.
    pub total_s: f64,
    /// The sum of each batch's start → finish (rebuild + health wait).
    pub batch_sum_s: f64,
    /// total / batch sum: herd's overhead (1.0 = none).
    pub ratio: f64,
    /// Where each batch's time went.
    pub batch_breakdown: Vec<BatchBreakdown>,
}

/// Where one batch's time went, in seconds, each phase ending when the batch's last instance
/// ends it (see the module docs).
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchBreakdown {
    pub instances: Vec<u64>,
    pub drain_s: f64,
    pub restart_s: f64,
    pub first_healthy_s: f64,
    /// Healthy → the next batch's start (or the upgrade's end): herd's share.
    pub herd_gap_s: f64,
}

type Stamp = chrono::DateTime<chrono::Utc>;

/// One instance as the poller saw it at one moment.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    state: String,
    generation: u64,
    draining: bool,
    healthy: bool,
}

/// Every change the poller saw, by instance id.
type Timeline = std::collections::BTreeMap<u64, Vec<(Stamp, Seen)>>;

/// Polls the set's instances every 20 ms until `stop` is set, recording each change.
async fn watch_instances(client: herd_client::Client, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Timeline {
    let path = format!("{}/virtualMachines", herd_client::set_path("bench", "roll"));
    let mut timeline = Timeline::new();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        if let Ok(list) = client.get(&path).await {
            let now = chrono::Utc::now();
            for i in list.as_array().into_iter().flatten() {
                let Some(id) = i["instanceId"].as_str().and_then(|s| s.parse().ok()) else { continue };
                let seen = Seen {
                    state: i["state"].as_str().unwrap_or_default().to_string(),
                    generation: i["modelGeneration"].as_u64().unwrap_or(0),
                    draining: i["draining"].as_bool().unwrap_or(false),
                    healthy: i["health"] == "Healthy",
                };
                let changes = timeline.entry(id).or_default();
                if changes.last().map(|(_, s)| s) != Some(&seen) {
                    changes.push((now, seen));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    timeline
}

/// The first moment at or after `from` when instance `id` was seen as `what` says.
fn first(timeline: &Timeline, id: u64, from: Stamp, what: impl Fn(&Seen) -> bool) -> Option<Stamp> {
    timeline.get(&id)?.iter().find(|(t, s)| *t >= from && what(s)).map(|(t, _)| *t)
}

fn seconds(from: Stamp, to: Stamp) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

/// Each batch of `done` (a finished upgrade), broken down from the poller's `timeline`.
fn breakdown(done: &Value, timeline: &Timeline) -> Result<Vec<BatchBreakdown>> {
    let ts = |v: &Value| -> Result<Stamp> { Ok(serde_json::from_value(v.clone())?) };
    let target = done["targetGeneration"].as_u64().unwrap_or(0);
    let batches = done["batches"].as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for (n, b) in batches.iter().enumerate() {
        let start = ts(&b["startedAt"])?;
        let next = match batches.get(n + 1) {
            Some(next) => ts(&next["startedAt"])?,
            None => ts(&done["endedAt"])?,
        };
        let ids: Vec<u64> = b["instances"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
        // Each phase ends when the batch's last instance ends it.
        let latest = |what: &dyn Fn(u64, Stamp) -> Option<Stamp>, from: Stamp| {
            ids.iter().map(|id| what(*id, from).unwrap_or(from)).max().unwrap_or(from)
        };
        let drained = latest(
            &|id, from| first(timeline, id, from, |s| s.state != "Running" || !s.draining && s.generation == target),
            start,
        );
        let rebuilt =
            latest(&|id, from| first(timeline, id, from, |s| s.state == "Running" && s.generation == target), drained);
        // The list may still show the old boot's health for a moment after the rebuild: the
        // new boot's first healthy probe is the first healthy after it showed not healthy.
        let healthy = latest(
            &|id, from| {
                let fresh = first(timeline, id, from, |s| !s.healthy).filter(|t| *t < next).unwrap_or(from);
                first(timeline, id, fresh, |s| s.healthy && s.generation == target)
            },
            rebuilt,
        );
        out.push(BatchBreakdown {
            instances: ids,
            drain_s: seconds(start, drained),
            restart_s: seconds(drained, rebuilt),
            first_healthy_s: seconds(rebuilt, healthy),
            herd_gap_s: seconds(healthy, next),
        });
    }
    Ok(out)
}

struct Cli {
    exe: std::path::PathBuf,
    url: String,
    token: String,
    /// The server's CA bundle, as a file (`HERD_CA_FILE`); `None` on plain HTTP.
    ca_file: Option<std::path::PathBuf>,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Result<String> {
        let out = std::process::Command::new(&self.exe)
            .args(args)
            .args(["--quiet"])
            .env("HERD_SERVER", &self.url)
            .env("HERD_TOKEN", &self.token)
            .envs(self.ca_file.iter().map(|f| ("HERD_CA_FILE", f)))
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
pub async fn measure(launch: &dyn Launch, driver: Driver, count: u64, opts: &Options) -> Result<RollingRun> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let config = format!(
        "[sim]\nboot_min_ms = 50\nboot_max_ms = 200\n[loadbalancer]\ndrain_timeout_secs = {}\n[provisioning]\ndriver_concurrency = 256\n",
        opts.drain_timeout
    );
    let mut server = start_in(launch, dir.path(), driver, &config).await?;
    let ca_file = match &server.ca_bundle {
        Some(pem) => {
            let f = dir.path().join("ca.pem");
            std::fs::write(&f, pem)?;
            Some(f)
        }
        None => None,
    };
    let cli = Cli { exe: std::env::current_exe()?, url: server.url.clone(), token: server.token.clone(), ca_file };
    // The temporary directory lives until the instances are gone (they are found by it).
    let root = dir.path().to_path_buf();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = tokio::spawn(watch_instances(server.client()?, stop.clone()));
    let opts = opts.clone();
    let result = tokio::task::spawn_blocking(move || run_upgrade(&cli, &root, driver, count, &opts)).await?;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let timeline = watcher.await?;
    let result = result.and_then(|(mut run, done)| {
        run.batch_breakdown = breakdown(&done, &timeline)?;
        Ok(run)
    });
    server.stop().await;
    crate::kill_instances(&data);
    drop(dir);
    result
}

fn run_upgrade(cli: &Cli, dir: &Path, driver: Driver, count: u64, opts: &Options) -> Result<(RollingRun, Value)> {
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
        create_load_balancer(cli, opts.probe_threshold)?;
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
    let run = RollingRun {
        driver: format!("{driver:?}").to_lowercase(),
        instances: count,
        drain_timeout_s: opts.drain_timeout,
        probe_threshold: opts.probe_threshold,
        batches: batches.len(),
        total_s: total,
        batch_sum_s: sum,
        ratio: if sum > 0.0 { total / sum } else { f64::NAN },
        batch_breakdown: Vec::new(),
    };
    Ok((run, done))
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

/// The load balancer `lb` with an HTTP probe on port 8080 (interval 1 s, `threshold`) and a
/// rule 18099 -> 8080.
fn create_load_balancer(cli: &Cli, threshold: u32) -> Result<()> {
    cli.run(&["network", "lb", "create", "-g", "bench", "-n", "lb", "--public-ip-address", "lb-ip"])?;
    let create_child = |kind: &str, name: &str, rest: &[&str]| {
        let mut args = vec!["network", "lb", kind, "create", "-g", "bench", "--lb-name", "lb", "-n", name];
        args.extend_from_slice(rest);
        cli.run(&args).map(drop)
    };
    let threshold = threshold.to_string();
    let probe = ["--protocol", "Http", "--path", "/", "--port", "8080", "--interval", "1", "--threshold", &threshold];
    create_child("probe", "p", &probe)?;
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
