//! `herd bench bridged-setup`: what bridging adds to an instance's creation and deletion.
//!
//! Inside a network namespace it creates (see [`super::isolated`]), the bench starts the real
//! server on the process driver twice per run, once with `[network] mode = "bridged"` and once
//! host-local, each with a fresh data dir, and on each creates a set of N sleeper instances on a
//! subnet (the same model both times, overprovisioning off), timing the `PUT` to the set
//! converged with every instance Running, then the `DELETE` to the set gone. Runs alternate
//! which mode goes first (ABBA), so drift on a shared machine falls on both.
//!
//! The figure issue 19 sets a goal for (≤ 20 ms) is the per-instance added cost:
//! `(bridged − host-local) / N` within a run, as a median and spread over the runs. Bridging's
//! share of an instance is its namespace, veth pair, address, route, DHCP reservation and DNS
//! name (`herd-driver-process`'s `bridge.rs`, `herd-hostnet`); the host-local run pays for
//! everything else, the same way.

use super::{nic_on, put_vnet, Interrupt, Leftovers};
use crate::lb::load::Spread;
use crate::provision::wait_converged;
use crate::{Driver, Launch};
use anyhow::{bail, Result};
use herd_client::set_path;
use serde::Serialize;
use serde_json::json;
use std::time::{Duration, Instant};

/// Issue 19's goal for the added cost per instance, in milliseconds.
pub const GOAL_MS_PER_INSTANCE: f64 = 20.0;
/// The most instances a run may ask for: they all fit the bench's /16 subnet, and a run stays
/// within [`CONVERGE_TIMEOUT`].
pub const MAX_COUNT: u64 = 4000;
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(900);
const GROUP: &str = "bench";
const SET: &str = "bench";

/// What `herd bench bridged-setup` was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub count: u64,
    pub runs: u32,
    /// Set for the re-executed bench inside its namespace.
    pub inside: bool,
}

impl Options {
    /// The arguments of the re-executed bench.
    pub fn inner_args(&self) -> Vec<String> {
        ["bench", "bridged-setup", "--count", &self.count.to_string(), "--runs", &self.runs.to_string(), "--inside"]
            .into_iter()
            .map(String::from)
            .collect()
    }
}

/// Which networking a server of the bench runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Bridged,
    HostLocal,
}

impl Mode {
    fn config(self, count: u64) -> String {
        let network = match self {
            Mode::Bridged => "\n[network]\nmode = \"bridged\"\n",
            Mode::HostLocal => "",
        };
        format!("max_capacity = {}\n[provisioning]\ndriver_concurrency = 64\n{network}", count.max(1000))
    }

    /// The order of the two modes in run `run` (1-based): ABBA, so a trend hits both alike.
    pub fn order(run: u32) -> [Mode; 2] {
        if run % 2 == 1 {
            [Mode::Bridged, Mode::HostLocal]
        } else {
            [Mode::HostLocal, Mode::Bridged]
        }
    }
}

/// One mode's timings in one run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timing {
    pub converge_s: f64,
    pub delete_s: f64,
    /// CPU seconds during the create (PUT to converged): the bench process (server) itself,
    /// and the commands it ran (`ip`, `nft`, instance starts), as reaped children.
    pub create_cpu_s: (f64, f64),
    /// The same during the delete.
    pub delete_cpu_s: (f64, f64),
}

/// The summary over the runs.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub count: u64,
    pub runs: usize,
    pub bridged_converge_s: Spread,
    pub host_local_converge_s: Spread,
    pub bridged_delete_s: Spread,
    pub host_local_delete_s: Spread,
    /// `(bridged − host-local) / N` per run, in ms.
    pub added_create_ms_per_instance: Spread,
    pub added_delete_ms_per_instance: Spread,
    pub goal_ms_per_instance: f64,
    /// Whether the median added creation cost meets the goal.
    pub meets_goal: bool,
}

impl Summary {
    /// `pairs`: per run, (bridged, host-local).
    pub fn of(count: u64, pairs: &[(Timing, Timing)]) -> Summary {
        let per_instance =
            |f: fn(&Timing) -> f64| Spread::of(pairs.iter().map(|(b, h)| (f(b) - f(h)) * 1000.0 / count.max(1) as f64));
        let added_create = per_instance(|t| t.converge_s);
        Summary {
            count,
            runs: pairs.len(),
            bridged_converge_s: Spread::of(pairs.iter().map(|(b, _)| b.converge_s)),
            host_local_converge_s: Spread::of(pairs.iter().map(|(_, h)| h.converge_s)),
            bridged_delete_s: Spread::of(pairs.iter().map(|(b, _)| b.delete_s)),
            host_local_delete_s: Spread::of(pairs.iter().map(|(_, h)| h.delete_s)),
            added_create_ms_per_instance: added_create,
            added_delete_ms_per_instance: per_instance(|t| t.delete_s),
            goal_ms_per_instance: GOAL_MS_PER_INSTANCE,
            meets_goal: added_create.median <= GOAL_MS_PER_INSTANCE,
        }
    }
}

/// `herd bench bridged-setup`: outside, checks and re-runs itself in a namespace of its own;
/// inside, measures and prints one JSON line per run and mode, then the summary.
pub async fn run(launch: &dyn Launch, o: Options) -> Result<()> {
    if o.count == 0 || o.count > MAX_COUNT || o.runs == 0 {
        bail!("--count must be 1 to {MAX_COUNT} and --runs at least 1");
    }
    super::require_root("bridged-setup")?;
    if !o.inside {
        return super::isolated("br", &o.inner_args()).await;
    }
    measure(launch, &o, &Interrupt::listen()).await
}

async fn measure(launch: &dyn Launch, o: &Options, intr: &Interrupt) -> Result<()> {
    let mut pairs = Vec::new();
    for run in 1..=o.runs {
        let mut bridged = None;
        let mut host_local = None;
        for mode in Mode::order(run) {
            eprintln!("bridged-setup: run {run}/{}: {} instances, {mode:?}", o.runs, o.count);
            let t = one(launch, mode, o.count, intr).await?;
            println!(
                "{}",
                json!({"bench": "bridged-setup", "run": run, "mode": mode, "count": o.count,
                    "convergeSeconds": t.converge_s, "deleteSeconds": t.delete_s,
                    "createCpuSeconds": {"server": t.create_cpu_s.0, "commands": t.create_cpu_s.1},
                    "deleteCpuSeconds": {"server": t.delete_cpu_s.0, "commands": t.delete_cpu_s.1}})
            );
            match mode {
                Mode::Bridged => bridged = Some(t),
                Mode::HostLocal => host_local = Some(t),
            }
        }
        if let (Some(b), Some(h)) = (bridged, host_local) {
            pairs.push((b, h));
        }
    }
    let mut summary = serde_json::to_value(Summary::of(o.count, &pairs))?;
    summary["bench"] = json!("bridged-setup-summary");
    println!("{summary}");
    Ok(())
}

/// One server in `mode`, a set of `count` instances created and deleted. The server is
/// stopped before its leftovers go, also after an error or Ctrl-C.
async fn one(launch: &dyn Launch, mode: Mode, count: u64, intr: &Interrupt) -> Result<Timing> {
    let dir = tempfile::Builder::new().prefix("herd-bench-br-").tempdir()?;
    let data = dir.path().join("data");
    let keys = (0..count).map(|i| format!("{GROUP}/{SET}/{i}")).collect();
    let mut server = intr.guard(crate::start_in(launch, dir.path(), Driver::Process, &mode.config(count))).await?;
    let leftovers = Leftovers { data, keys };
    let result = intr.guard(create_and_delete(&server, dir.path(), mode, count)).await;
    server.stop().await;
    drop(leftovers);
    result
}

async fn create_and_delete(server: &crate::Server, dir: &std::path::Path, mode: Mode, count: u64) -> Result<Timing> {
    let c = server.client()?;
    c.put(&format!("/v1/resourceGroups/{GROUP}"), &json!({})).await?;
    let img = dir.join("image");
    crate::sleeper_image(&img)?;
    herd_client::image_upload::import_directory(&c, "Herd:Bench:1:1.0.0", &img, json!({})).await?;
    let subnet = put_vnet(&c, GROUP, "vnet", "10.0.0.0/16").await?;
    let mut model = crate::provision::model(count);
    model["overprovision"] = json!(false);
    model["virtualMachineProfile"]["networkProfile"] = nic_on(&subnet);
    let path = set_path(GROUP, SET);
    let cpu0 = super::cpu_seconds();
    let t = Instant::now();
    c.call(reqwest::Method::PUT, &path, Some(&model), &[("If-None-Match", "*")]).await?;
    let v = wait_converged(&c, &path, CONVERGE_TIMEOUT).await?;
    let converge = t.elapsed();
    let cpu1 = super::cpu_seconds();
    let running = v["instanceSummary"]["running"].as_u64().unwrap_or(0);
    if running != count {
        bail!("{mode:?}: converged with {running} of {count} instances running: {}", v["instanceSummary"]);
    }
    if mode == Mode::Bridged {
        check_private_ips(&c, &path, count).await?;
    }
    let cpu2 = super::cpu_seconds();
    let delete =
        crate::delete_and_wait(&c, &path, CONVERGE_TIMEOUT, Duration::from_millis(20), "deleting the set").await?;
    let cpu3 = super::cpu_seconds();
    let diff = |a: (f64, f64), b: (f64, f64)| (b.0 - a.0, b.1 - a.1);
    Ok(Timing {
        converge_s: converge.as_secs_f64(),
        delete_s: delete.as_secs_f64(),
        create_cpu_s: diff(cpu0, cpu1),
        delete_cpu_s: diff(cpu2, cpu3),
    })
}

/// Bridged: every instance is reached on a distinct private IP of the subnet (so the run
/// measured bridged instances, not a fallback).
async fn check_private_ips(c: &herd_client::Client, path: &str, count: u64) -> Result<()> {
    let list = c.get(&format!("{path}/virtualMachines")).await?;
    let mut ips: Vec<&str> = list
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["reachAddress"].as_str().filter(|a| a.starts_with("10.0."))).collect())
        .unwrap_or_default();
    ips.sort();
    ips.dedup();
    if ips.len() as u64 != count {
        bail!("bridged: {} of {count} instances are reached on a distinct private IP", ips.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_cost_per_instance_is_the_difference_over_n_per_run() {
        let t = |c, d| Timing { converge_s: c, delete_s: d, create_cpu_s: (0.0, 0.0), delete_cpu_s: (0.0, 0.0) };
        // 200 instances: +1 s, +3 s, +2 s bridged → 5, 15, 10 ms per instance.
        let pairs = [(t(3.0, 1.0), t(2.0, 0.5)), (t(5.5, 2.0), t(2.5, 0.6)), (t(4.0, 1.5), t(2.0, 1.5))];
        let s = Summary::of(200, &pairs);
        let c = s.added_create_ms_per_instance;
        assert_eq!((c.median, c.min, c.max), (10.0, 5.0, 15.0));
        assert_eq!(s.added_delete_ms_per_instance.median, 2.5);
        assert_eq!(s.bridged_converge_s.median, 4.0);
        assert_eq!(s.host_local_converge_s.max, 2.5);
        assert!(s.meets_goal);
        let slow = Summary::of(100, &[(t(5.0, 1.0), t(2.0, 1.0))]);
        assert_eq!(slow.added_create_ms_per_instance.median, 30.0);
        assert!(!slow.meets_goal, "30 ms per instance misses the 20 ms goal");
    }

    #[test]
    fn runs_alternate_which_mode_goes_first() {
        assert_eq!(Mode::order(1), [Mode::Bridged, Mode::HostLocal]);
        assert_eq!(Mode::order(2), [Mode::HostLocal, Mode::Bridged]);
        assert_eq!(Mode::order(3), Mode::order(1));
    }

    #[test]
    fn only_the_bridged_server_is_configured_bridged() {
        assert!(Mode::Bridged.config(200).contains("[network]\nmode = \"bridged\""));
        assert!(!Mode::HostLocal.config(200).contains("bridged"));
        assert!(Mode::HostLocal.config(5000).starts_with("max_capacity = 5000\n"));
    }

    #[test]
    fn the_inner_bench_gets_the_same_options() {
        let o = Options { count: 50, runs: 2, inside: false };
        assert_eq!(o.inner_args().join(" "), "bench bridged-setup --count 50 --runs 2 --inside");
    }
}
