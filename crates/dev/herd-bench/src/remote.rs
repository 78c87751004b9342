//! `herd bench remote`: the control plane's cost of a joined host. From the create `PUT` to the
//! VM's QEMU process existing, on a host joined with `herd agent` against the same on the
//! server's own machine, in one run.
//!
//! The cluster is the namespace rig (`herd-dev-cluster`): a server that also serves zone 1 on
//! its own machine, and one agent host in zone 2, each in its own namespaces on a fabric bridge.
//! A set of one VM (the test guest, TCG) in zone 1 lands on the server's machine, in zone 2 on
//! the agent's host; the two alternate, local first in odd rounds. The benchmark's API client
//! runs on a thread moved into the server's network namespace (nothing crosses the root
//! namespace's network); a `/proc` scan every millisecond sees every QEMU on the machine (the
//! rig's PID namespaces are all below this one's). A warm-up pair first (the host's first
//! image pull and QEMU's first start are not what is measured). The remote side adds what a
//! joined host costs: the router's store read, the call over the agent link (TLS), and the
//! agent's image cache check.

use crate::qemu::{qemu_processes, Guest};
use anyhow::{anyhow, bail, Context, Result};
use herd_client::{set_path, Client};
use herd_dev_cluster::{Cluster, ClusterSpec, Layout, UpOptions};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const GROUP: &str = "bench";
const IMAGE_URN: &str = "Herd:TestGuest:1:1.0.0";
/// The goal: remote adds less than this to the local figure.
const GOAL_MS: f64 = 50.0;
const SPAWN_DEADLINE: Duration = Duration::from_secs(120);
const PROC_POLL: Duration = Duration::from_millis(1);

/// What `herd bench remote` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub runs: u32,
    pub testguest: PathBuf,
    pub sku: String,
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

pub fn run(opts: Options) -> Result<()> {
    if opts.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let guest = Guest::find(&opts.testguest)?;
    if !std::path::Path::new(herd_driver_qemu::DEFAULT_QEMU).exists() {
        bail!("{} is missing (apt-get install qemu-system-x86)", herd_driver_qemu::DEFAULT_QEMU);
    }
    let tmp = tempfile::Builder::new().prefix("herd-bench-remote-").tempdir()?;
    let name = format!("bench{}", std::process::id() % 10_000);
    let layout = Layout::plan(&ClusterSpec {
        name,
        hosts: 1,
        zones: vec!["2".into()],
        racks: vec![],
        subnet: [10, 251, 0],
        data_dir: tmp.path().join("cluster"),
    })?;
    let roots = crate::qemu::toml_paths(&[&guest.kernel, &guest.initrd]);
    let opts_up = UpOptions {
        driver: "qemu".into(),
        server_args: vec!["--accel".into(), "tcg".into()],
        server_config: format!("[qemu]\nboot_timeout_secs = 240\n\n[images]\nimport_roots = {roots}\n"),
        local_zone: Some("1".into()),
        timeout: Duration::from_secs(240),
    };
    eprintln!("herd bench remote: building the rig (server + 1 agent host)");
    let down = Down(Some(Cluster::up(layout, &opts_up)?));
    let cluster = down.0.as_ref().expect("up");
    let server = cluster.layout.server().clone();
    let token = std::fs::read_to_string(server.data_dir.join("api-token")).context("the server's API token")?;
    let ca = std::fs::read_to_string(server.data_dir.join("tls/ca.pem")).context("the server's CA")?;
    let url = cluster.layout.server_url();
    let netns = server.netns.clone();
    // The client lives on a thread inside the server's network namespace.
    let measured = std::thread::spawn(move || -> Result<Vec<(String, f64)>> {
        let ns = std::fs::File::open(format!("/run/netns/{netns}"))?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).context("entering the server's namespace")?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let client = Client::with_token(&url, token.trim().to_string(), Some(&ca))?;
            measure(&client, &guest, &opts).await
        })
    })
    .join()
    .map_err(|_| anyhow!("the measuring thread panicked"))??;
    drop(down);
    report(&measured);
    Ok(())
}

async fn measure(client: &Client, guest: &Guest, opts: &Options) -> Result<Vec<(String, f64)>> {
    client.put(&format!("/v1/resourceGroups/{GROUP}"), &json!({})).await?;
    client
        .put(
            &format!("/v1/images/{IMAGE_URN}"),
            &json!({"kernel": guest.kernel, "initrd": guest.initrd, "cmdline": guest.cmdline}),
        )
        .await?;
    let mut out = Vec::new();
    for round in 0..=opts.runs {
        let order = if round % 2 == 1 { ["local", "remote"] } else { ["remote", "local"] };
        for side in order {
            let zone = if side == "local" { "1" } else { "2" };
            let name = format!("{side}{round}");
            let ms = one(client, &name, zone, &opts.sku).await.with_context(|| format!("{side}, round {round}"))?;
            if round == 0 {
                eprintln!("  warm-up {side}: {ms:.1} ms");
            } else {
                eprintln!("  round {round} {side}: {ms:.1} ms");
                out.push((side.to_string(), ms));
            }
        }
    }
    Ok(out)
}

/// Creates a set of one VM in `zone`; milliseconds from sending the PUT to its QEMU existing.
/// Deletes the set (and waits for it) afterwards.
async fn one(client: &Client, name: &str, zone: &str, sku: &str) -> Result<f64> {
    let path = set_path(GROUP, name);
    let model = json!({
        "sku": {"name": sku, "capacity": 1},
        "zones": [zone],
        "overprovision": false,
        "upgradePolicy": {"mode": "Manual"},
        "virtualMachineProfile": {
            "osProfile": {"computerNamePrefix": "rb", "adminUsername": "bench"},
            "storageProfile": {"imageReference": {"publisher": "Herd", "offer": "TestGuest", "sku": "1", "version": "1.0.0"}}
        }
    });
    let needle = format!(":{GROUP}/{name}/");
    let t = Instant::now();
    client.call(reqwest::Method::PUT, &path, Some(&model), &[("If-None-Match", "*")]).await?;
    let ms = loop {
        if !qemu_processes(&needle).is_empty() {
            break t.elapsed().as_secs_f64() * 1000.0;
        }
        if t.elapsed() > SPAWN_DEADLINE {
            bail!("no QEMU for {GROUP}/{name} within {SPAWN_DEADLINE:?}");
        }
        tokio::time::sleep(PROC_POLL).await;
    };
    // Where it runs, as the server sees it.
    let host = wait_host(client, &path).await?;
    let want = if zone == "1" { "local" } else { "h1" };
    if host != want {
        bail!("{GROUP}/{name} was placed on '{host}', not '{want}'");
    }
    crate::delete_and_wait(client, &path, Duration::from_secs(120), Duration::from_millis(100), name).await?;
    let gone = Instant::now();
    while !qemu_processes(&needle).is_empty() {
        if gone.elapsed() > Duration::from_secs(60) {
            bail!("the QEMU of {GROUP}/{name} outlived its set");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(ms)
}

async fn wait_host(client: &Client, path: &str) -> Result<String> {
    let t = Instant::now();
    loop {
        let list: Value = client.get(&format!("{path}/virtualMachines")).await?;
        if let Some(h) = list.as_array().and_then(|a| a.first()).and_then(|i| i["host"].as_str()) {
            return Ok(h.to_string());
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!("{path}: no instance with a host within 60 s: {list}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn report(runs: &[(String, f64)]) {
    let side = |s: &str| runs.iter().filter(|(k, _)| k == s).map(|(_, v)| *v).collect::<Vec<f64>>();
    let (local, remote) = (side("local"), side("remote"));
    let (ml, mr) = (median(local.clone()), median(remote.clone()));
    let added = mr - ml;
    let summary = json!({
        "bench": "remote-create",
        "localMs": local, "remoteMs": remote,
        "localMedianMs": ml, "remoteMedianMs": mr,
        "remoteAddsMs": added, "goalMs": GOAL_MS, "goalMet": added < GOAL_MS,
    });
    eprintln!(
        "PUT → QEMU exists: local median {ml:.1} ms, remote median {mr:.1} ms; remote adds {added:.1} ms (goal < {GOAL_MS} ms: {})",
        if added < GOAL_MS { "met" } else { "not met" }
    );
    println!("{summary}");
}
