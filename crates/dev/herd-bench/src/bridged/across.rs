//! `herd bench vm-net-hosts`: TCP throughput between two VMs on different hosts (their
//! segment stretched over VXLAN) against two VMs on one host (over its bridge), in one run.
//!
//! The cluster is the namespace rig (`herd-dev-cluster`): a bridged server and two agent hosts
//! in zones 1 and 2 on a fabric bridge. One set of two TCG VMs of the test guest in zone 1 (both
//! on h1) and one set of one VM in zone 2 (on h2), all on one subnet. The receiver is the first
//! VM on h1; the sender is, alternately (ABBA), the other VM on h1 (same host) and the VM on
//! h2 (across hosts), so both transfers end in the same guest. The transfer is `herd bench
//! vm-net`'s (busybox `nc` and `dd` through the guest agent, timed by the receiver's clock, all
//! blocks counted), sized by a first same-host transfer to take about `--seconds`.
//!
//! What the across side adds: the sender's host encapsulates (VXLAN, UDP), crosses the fabric
//! (a veth pair into the fabric bridge and out), and the receiver's host decapsulates, with
//! the border's nftables rules on both VXLAN ports; the vnet MTU is 1450 on both sides.

use super::vmnet::{blocks_for, transfer, Transfer, Vm, BLOCK, BOOT, CALIBRATION_BLOCKS, IMAGE_URN};
use super::{nic_on, put_vnet};
use crate::qemu::{chardev_path, marker_key, qemu_processes, Guest, QGA_CHARDEV};
use anyhow::{anyhow, bail, Context, Result};
use herd_client::{set_path, Client};
use herd_dev_cluster::{Cluster, ClusterSpec, Layout, UpOptions};
use herd_driver_qemu::qga::Qga;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

const GROUP: &str = "bench";

/// What `herd bench vm-net-hosts` was asked.
#[derive(Debug, Clone)]
pub struct Options {
    pub seconds: u64,
    pub runs: u32,
    pub sku: String,
    pub testguest: PathBuf,
}

/// Which sender a transfer used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Path {
    SameHost,
    AcrossHosts,
}

impl Path {
    /// The order in run `run` (1-based): ABBA.
    pub fn order(run: u32) -> [Path; 2] {
        if run % 2 == 1 {
            [Path::SameHost, Path::AcrossHosts]
        } else {
            [Path::AcrossHosts, Path::SameHost]
        }
    }
}

/// Takes the rig down however the benchmark ends.
struct Down(Option<Cluster>);

impl Drop for Down {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            let _ = c.down(false);
        }
    }
}

pub fn run(o: Options) -> Result<()> {
    if o.runs == 0 || o.seconds == 0 {
        bail!("--runs and --seconds must be at least 1");
    }
    let guest = Guest::find(&o.testguest)?;
    if !std::path::Path::new(herd_driver_qemu::DEFAULT_QEMU).exists() {
        bail!("{} is missing (apt-get install qemu-system-x86)", herd_driver_qemu::DEFAULT_QEMU);
    }
    let tmp = tempfile::Builder::new().prefix("herd-bench-vmh-").tempdir()?;
    let layout = Layout::plan(&ClusterSpec {
        name: format!("vmh{}", std::process::id() % 10_000),
        hosts: 2,
        zones: vec!["1".into(), "2".into()],
        racks: vec![],
        subnet: [10, 252, 0],
        data_dir: tmp.path().join("cluster"),
    })?;
    let roots = crate::qemu::toml_paths(&[&guest.kernel, &guest.initrd]);
    let up = UpOptions {
        driver: "qemu".into(),
        server_args: vec!["--accel".into(), "tcg".into()],
        server_config: format!("[qemu]\nboot_timeout_secs = 240\n\n[images]\nimport_roots = {roots}\n"),
        local_zone: None,
        timeout: Duration::from_secs(240),
    };
    eprintln!("herd bench vm-net-hosts: building the rig (server + 2 agent hosts)");
    let down = Down(Some(Cluster::up(layout, &up)?));
    let cluster = down.0.as_ref().expect("up");
    let server = cluster.layout.server().clone();
    let token = std::fs::read_to_string(server.data_dir.join("api-token")).context("the server's API token")?;
    let ca = std::fs::read_to_string(server.data_dir.join("tls/ca.pem")).context("the server's CA")?;
    let url = cluster.layout.server_url();
    let (netns, rig_dir) = (server.netns.clone(), tmp.path().join("cluster").display().to_string());
    // The API client lives on a thread inside the server's network namespace; the guest agents
    // are unix sockets in the hosts' data dirs, reachable from any namespace.
    let result = std::thread::spawn(move || -> Result<()> {
        let ns = std::fs::File::open(format!("/run/netns/{netns}"))?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).context("entering the server's namespace")?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let client = Client::with_token(&url, token.trim().to_string(), Some(&ca))?;
            measure(&client, &guest, &o, &rig_dir).await
        })
    })
    .join()
    .map_err(|_| anyhow!("the measuring thread panicked"))?;
    drop(down);
    result
}

/// A set of `count` VMs in `zone` on `subnet`, converged.
async fn put_set(c: &Client, name: &str, count: u32, zone: &str, sku: &str, subnet: &str) -> Result<()> {
    let model = json!({
        "sku": {"name": sku, "capacity": count},
        "zones": [zone],
        "overprovision": false,
        "upgradePolicy": {"mode": "Manual"},
        "virtualMachineProfile": {
            "osProfile": {"computerNamePrefix": name, "adminUsername": "bench"},
            "storageProfile": {"imageReference": {"publisher": "Herd", "offer": "TestGuest", "sku": "1", "version": "1.0.0"}},
            "networkProfile": nic_on(subnet),
        }
    });
    let path = set_path(GROUP, name);
    c.call(reqwest::Method::PUT, &path, Some(&model), &[("If-None-Match", "*")]).await?;
    crate::provision::wait_converged(c, &path, BOOT).await?;
    Ok(())
}

/// Instance `id` of set `set`: its agent socket and private IP, and the host it is on.
async fn vm(c: &Client, rig_dir: &str, set: &str, id: &str) -> Result<(Vm, String)> {
    let list = c.get(&format!("{}/virtualMachines", set_path(GROUP, set))).await?;
    let inst = list
        .as_array()
        .and_then(|a| a.iter().find(|i| i["instanceId"] == id))
        .ok_or_else(|| anyhow!("instance {set}/{id} is not listed: {list}"))?;
    let ip = inst["privateIpAddress"].as_str().ok_or_else(|| anyhow!("{set}/{id} has no private IP: {inst}"))?;
    let host = inst["host"].as_str().unwrap_or_default().to_string();
    let key = format!("{GROUP}/{set}/{id}");
    let qemus = qemu_processes(rig_dir);
    let argv = qemus
        .iter()
        .find(|(_, argv)| marker_key(argv).as_deref() == Some(key.as_str()))
        .map(|(_, a)| a)
        .ok_or_else(|| anyhow!("no QEMU process for {key}"))?;
    let qga = chardev_path(argv, QGA_CHARDEV).ok_or_else(|| anyhow!("no agent socket in {key}'s QEMU"))?;
    Qga::wait_ready(&qga, BOOT).await.map_err(|e| anyhow!("the agent of {key}: {e}"))?;
    Ok((Vm { qga, ip: ip.to_string() }, host))
}

async fn measure(c: &Client, guest: &Guest, o: &Options, rig_dir: &str) -> Result<()> {
    let skus = herd_model::sku::SkuTable::default();
    let (sku, _) = skus.resolve("--sku", &o.sku).map_err(|e| anyhow!("{}", e.message))?;
    c.put(&format!("/v1/resourceGroups/{GROUP}"), &json!({})).await?;
    c.put(
        &format!("/v1/images/{IMAGE_URN}"),
        &json!({"kernel": guest.kernel, "initrd": guest.initrd, "cmdline": guest.cmdline}),
    )
    .await?;
    let subnet = put_vnet(c, GROUP, "vnet", "10.0.0.0/24").await?;
    eprintln!("vm-net-hosts: starting two VMs ({sku}) on h1 and one on h2");
    put_set(c, "same", 2, "1", sku, &subnet).await?;
    put_set(c, "other", 1, "2", sku, &subnet).await?;
    let (rx, rx_host) = vm(c, rig_dir, "same", "0").await?;
    let (tx_same, same_host) = vm(c, rig_dir, "same", "1").await?;
    let (tx_across, across_host) = vm(c, rig_dir, "other", "0").await?;
    if rx_host != same_host || rx_host == across_host {
        bail!("placement: receiver on {rx_host}, same-host sender on {same_host}, other sender on {across_host}");
    }
    eprintln!("vm-net-hosts: calibrating on the same-host pair (128 MiB)");
    let cal = transfer(&[tx_same.clone(), rx.clone()], CALIBRATION_BLOCKS, Duration::from_secs(300)).await?;
    let blocks = blocks_for(o.seconds, &cal);
    eprintln!(
        "vm-net-hosts: calibration {:.0} Mbit/s; each transfer moves {} MiB",
        cal.mbit_per_s(),
        (blocks * BLOCK) >> 20
    );
    let limit = Duration::from_secs(o.seconds * 6 + 60);
    let mut pairs: Vec<(Transfer, Transfer)> = Vec::new();
    for run in 1..=o.runs {
        let (mut same, mut across) = (None, None);
        for path in Path::order(run) {
            let tx = if path == Path::SameHost { &tx_same } else { &tx_across };
            eprintln!("vm-net-hosts: run {run}/{}: {path:?}", o.runs);
            let t = transfer(&[tx.clone(), rx.clone()], blocks, limit)
                .await
                .with_context(|| format!("run {run}, {path:?}"))?;
            println!(
                "{}",
                json!({"bench": "vm-net-hosts", "run": run, "path": path, "bytes": t.bytes,
                       "guestSeconds": t.guest_seconds, "mbitPerS": t.mbit_per_s()})
            );
            match path {
                Path::SameHost => same = Some(t),
                Path::AcrossHosts => across = Some(t),
            }
        }
        if let (Some(s), Some(a)) = (same, across) {
            pairs.push((s, a));
        }
    }
    let summary = summarize(&pairs);
    println!(
        "{}",
        json!({"bench": "vm-net-hosts-summary", "sku": sku, "calibrationMbitPerS": cal.mbit_per_s(), "summary": summary})
    );
    eprintln!(
        "vm-net-hosts: same host {:.0} Mbit/s, across hosts {:.0} Mbit/s (medians); across ÷ same {:.3} (per run {:.3}–{:.3})",
        summary.same_mbit_per_s, summary.across_mbit_per_s, summary.ratio_of_medians, summary.ratio_min, summary.ratio_max
    );
    Ok(())
}

/// The runs' medians and the across ÷ same ratio.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub runs: usize,
    pub same_mbit_per_s: f64,
    pub across_mbit_per_s: f64,
    /// Median across ÷ median same.
    pub ratio_of_medians: f64,
    /// Per run, across ÷ same.
    pub ratio_median: f64,
    pub ratio_min: f64,
    pub ratio_max: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `pairs`: per run, (same host, across hosts).
pub fn summarize(pairs: &[(Transfer, Transfer)]) -> Summary {
    let same = median(pairs.iter().map(|(s, _)| s.mbit_per_s()).collect());
    let across = median(pairs.iter().map(|(_, a)| a.mbit_per_s()).collect());
    let ratios: Vec<f64> = pairs.iter().map(|(s, a)| a.mbit_per_s() / s.mbit_per_s()).collect();
    Summary {
        runs: pairs.len(),
        same_mbit_per_s: same,
        across_mbit_per_s: across,
        ratio_of_medians: across / same,
        ratio_median: median(ratios.clone()),
        ratio_min: ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratio_max: ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_is_across_over_same_and_runs_alternate() {
        let t = |mib: u64, s: f64| Transfer {
            bytes: mib << 20,
            guest_seconds: s,
            host_seconds: s,
            server_cpu_seconds: 0.0,
        };
        let s = summarize(&[(t(100, 10.0), t(100, 20.0)), (t(100, 10.0), t(100, 10.0)), (t(100, 5.0), t(100, 10.0))]);
        assert_eq!(s.runs, 3);
        assert!((s.ratio_min - 0.5).abs() < 1e-9 && (s.ratio_max - 1.0).abs() < 1e-9, "{s:?}");
        assert!((s.ratio_median - 0.5).abs() < 1e-9, "{s:?}");
        assert_eq!(Path::order(1), [Path::SameHost, Path::AcrossHosts]);
        assert_eq!(Path::order(2), [Path::AcrossHosts, Path::SameHost]);
    }
}
