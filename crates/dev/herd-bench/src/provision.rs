//! `herd bench provision` and `herd bench api`: the time from the API call to all instances
//! running (next to bare process spawns on the process driver), and the latency of
//! `list-instances` on a large set (next to a no-work round trip on the same server).
//!
//! The process driver's run has two peers, both timed over the same `count` spawns from this
//! process after the server has stopped. The goal's peer (`peerBareSpawnSeconds`,
//! `ratioToPeer`) spawns `sleep 3600`: one program per instance. The bench image's `init` is a
//! shell script that `exec`s `sleep`, so each instance runs two programs (`sh`, then `sleep`);
//! the second peer (`peerImageInitSeconds`, `ratioToImageInitPeer`) spawns that `init` exactly
//! as the image holds it, to tell herd's own share from the image's.

use crate::{Bench, Driver, Launch};
use anyhow::{bail, Result};
use herd_client::{set_path, Client};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub(crate) async fn wait_converged(client: &Client, path: &str, timeout: Duration) -> Result<Value> {
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

pub(crate) fn model(count: u64) -> Value {
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

/// `count` spawns of `sleep 3600`, each the leader of its own process group: how long the
/// spawning took. Then kills them.
async fn bare_spawns(count: u64) -> Result<Duration> {
    timed_spawns(count, || {
        let mut c = tokio::process::Command::new("sleep");
        c.arg("3600");
        c
    })
    .await
}

/// `count` spawns of the image's `init` in `image` as the image holds it (its own directory as
/// the working directory, each the leader of its own process group). Then kills them.
async fn image_init_spawns(count: u64, image: &std::path::Path) -> Result<Duration> {
    timed_spawns(count, || {
        let mut c = tokio::process::Command::new(image.join("init"));
        c.current_dir(image);
        c
    })
    .await
}

async fn timed_spawns(count: u64, command: impl Fn() -> tokio::process::Command) -> Result<Duration> {
    let start = Instant::now();
    let mut children = Vec::new();
    for _ in 0..count {
        children.push(command().process_group(0).spawn()?);
    }
    let took = start.elapsed();
    for mut c in children {
        let _ = c.kill().await;
    }
    Ok(took)
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `herd bench provision`: `runs` times, a set of `count` instances on `driver` from the API
/// call to converged, then its deletion; prints one JSON object per run.
pub async fn provision(launch: &dyn Launch, driver: Driver, count: u64, runs: u32) -> Result<()> {
    for run in 1..=runs {
        let mut b = Bench::setup(launch, driver, count).await?;
        let path = set_path("bench", "bench");
        let t = Instant::now();
        b.client.call(reqwest::Method::PUT, &path, Some(&model(count)), &[("If-None-Match", "*")]).await?;
        let v = wait_converged(&b.client, &path, Duration::from_secs(600)).await?;
        let took = t.elapsed();
        let running = v["instanceSummary"]["running"].as_u64().unwrap_or(0);
        let delete =
            crate::delete_and_wait(&b.client, &path, Duration::from_secs(600), Duration::from_millis(50), "delete")
                .await?;
        b.server.stop().await;
        let mut out = json!({
            "bench": "provision", "driver": format!("{driver:?}").to_lowercase(), "run": run, "count": count,
            "running": running, "seconds": took.as_secs_f64(), "deleteSeconds": delete.as_secs_f64(),
        });
        if driver == Driver::Process {
            let peer = bare_spawns(count).await?;
            out["peerBareSpawnSeconds"] = json!(peer.as_secs_f64());
            out["ratioToPeer"] = json!(took.as_secs_f64() / peer.as_secs_f64());
            let image_peer = image_init_spawns(count, &b.dir.path().join("image")).await?;
            out["peerImageInitSeconds"] = json!(image_peer.as_secs_f64());
            out["ratioToImageInitPeer"] = json!(took.as_secs_f64() / image_peer.as_secs_f64());
        }
        println!("{out}");
    }
    Ok(())
}

/// `herd bench api`: `requests` list-instances calls on a set of `instances` (sim driver), next
/// to as many calls of `/v1/server`; prints the latencies as JSON.
pub async fn api(launch: &dyn Launch, instances: u64, requests: u32) -> Result<()> {
    let mut b = Bench::setup(launch, Driver::Sim, instances).await?;
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
