//! `herd bench`: measurements with a peer baseline run side by side, so numbers read as ratios.
//!
//! - `provision`: API call → all instances running, against an in-process server. With the
//!   process driver the peer is the same number of bare process spawns (what any tool must pay).
//! - `api`: latency of `list-instances` on a large set; the peer is `/healthz` on the same server
//!   (the cost of an HTTP round trip with no work).

use crate::cli::BenchCmd;
use crate::client::{set_path, Client};
use crate::server::{start, DriverKind, ServerOptions};
use anyhow::{bail, Result};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

/// Writes an image directory whose `init` just sleeps.
pub fn sleeper_image(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let init = dir.join("init");
    std::fs::write(&init, "#!/bin/sh\nexec sleep 3600\n")?;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

struct Bench {
    _dir: tempfile::TempDir,
    server: crate::server::RunningServer,
    client: Client,
}

async fn setup(driver: DriverKind, max: u64) -> Result<Bench> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("herd.toml");
    let concurrency = if driver == DriverKind::Sim { 4096 } else { 64 };
    std::fs::write(
        &config,
        format!("max_capacity = {}\n[provisioning]\ndriver_concurrency = {concurrency}\n", max.max(1000)),
    )?;
    let server = start(ServerOptions {
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".parse()?,
        driver,
        config: Some(config),
    })
    .await?;
    let client = Client::new(&server.url(), Some(server.token.clone()), None)?;
    client.put("/v1/resourceGroups/bench", &json!({})).await?;
    let img = dir.path().join("image");
    sleeper_image(&img)?;
    client.put("/v1/images/Herd:Bench:1:1.0.0", &json!({"directory": img})).await?;
    Ok(Bench { _dir: dir, server, client })
}

async fn wait_converged(client: &Client, path: &str, timeout: Duration) -> Result<Value> {
    let start = Instant::now();
    loop {
        let v = client.get(path).await?;
        if v["instanceSummary"]["converged"].as_bool() == Some(true) {
            return Ok(v);
        }
        if let Some(r) = v["instanceSummary"]["suspended"]["reason"].as_str() {
            bail!("provisioning suspended: {r}");
        }
        if start.elapsed() > timeout {
            bail!("not converged after {:?}: {}", timeout, v["instanceSummary"]);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn model(count: u64) -> Value {
    json!({
        "sku": {"name": "Standard_B1ms", "capacity": count},
        "singlePlacementGroup": count <= 100,
        "zones": ["1", "2", "3"],
        "virtualMachineProfile": {
            "osProfile": {"computerNamePrefix": "bench"},
            "storageProfile": {"imageReference": {"publisher": "Herd", "offer": "Bench", "sku": "1", "version": "latest"}}
        }
    })
}

async fn bare_spawns(count: u64) -> Result<Duration> {
    let start = Instant::now();
    let mut children = Vec::new();
    for _ in 0..count {
        children.push(tokio::process::Command::new("sleep").arg("3600").process_group(0).spawn()?);
    }
    let took = start.elapsed();
    for mut c in children {
        let _ = c.kill().await;
    }
    Ok(took)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs a benchmark and prints its result as JSON (one object per run).
pub async fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Provision { driver, count, runs } => {
            for run in 1..=runs {
                let b = setup(driver, count).await?;
                let path = set_path("bench", "bench");
                let t = Instant::now();
                b.client.call(reqwest::Method::PUT, &path, Some(&model(count)), &[("If-None-Match", "*")]).await?;
                let v = wait_converged(&b.client, &path, Duration::from_secs(600)).await?;
                let took = t.elapsed();
                let running = v["instanceSummary"]["running"].as_u64().unwrap_or(0);
                b.client.delete(&path).await?;
                let t_del = Instant::now();
                loop {
                    match b.client.get(&path).await {
                        Err(e) if crate::client::is_not_found(&e) => break,
                        _ if t_del.elapsed() > Duration::from_secs(600) => bail!("delete did not finish"),
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
                let delete = t_del.elapsed();
                b.server.stop().await;
                let mut out = json!({
                    "bench": "provision", "driver": format!("{driver:?}").to_lowercase(), "run": run, "count": count,
                    "running": running, "seconds": took.as_secs_f64(), "deleteSeconds": delete.as_secs_f64(),
                });
                if driver == DriverKind::Process {
                    let peer = bare_spawns(count).await?;
                    out["peerBareSpawnSeconds"] = json!(peer.as_secs_f64());
                    out["ratioToPeer"] = json!(took.as_secs_f64() / peer.as_secs_f64());
                }
                println!("{out}");
            }
            Ok(())
        }
        BenchCmd::Api { instances, requests } => {
            let b = setup(DriverKind::Sim, instances).await?;
            let path = set_path("bench", "bench");
            b.client.call(reqwest::Method::PUT, &path, Some(&model(instances)), &[("If-None-Match", "*")]).await?;
            wait_converged(&b.client, &path, Duration::from_secs(600)).await?;
            let list_path = format!("{path}/virtualMachines");
            let measure = |p: String| {
                let client = b.client.clone();
                async move {
                    let mut lat = Vec::new();
                    for _ in 0..requests {
                        let t = Instant::now();
                        let v = client.get(&p).await?;
                        lat.push(t.elapsed());
                        std::hint::black_box(v);
                    }
                    lat.sort();
                    anyhow::Ok(lat)
                }
            };
            let list = measure(list_path).await?;
            let peer = measure("/v1/server".into()).await?;
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!(
                "{}",
                json!({
                    "bench": "api-list-instances", "instances": instances, "requests": requests,
                    "p50Ms": ms(percentile(&list, 0.5)), "p99Ms": ms(percentile(&list, 0.99)), "maxMs": ms(*list.last().unwrap_or(&Duration::ZERO)),
                    "peerServerInfoP50Ms": ms(percentile(&peer, 0.5)), "peerServerInfoP99Ms": ms(percentile(&peer, 0.99)),
                    "p99RatioToPeer": ms(percentile(&list, 0.99)) / ms(percentile(&peer, 0.99)).max(1e-6),
                })
            );
            b.server.stop().await;
            Ok(())
        }
    }
}
