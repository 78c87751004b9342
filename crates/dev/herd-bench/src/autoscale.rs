//! `herd bench autoscale`: how fast autoscale reacts, and what an evaluation round costs.
//!
//! - **Reaction time**: a queue metric (an HTTP JSON source served by this process, so nothing
//!   else is needed) crosses its threshold; the time until the set's capacity changes is
//!   compared with the bound the design promises: one evaluation interval plus one sample
//!   interval (the window's tail, for a `max` window that the first high sample crosses).
//! - **Evaluation cost**: one round over 100 settings × 10 rules × 1000 instances, with the
//!   engine's in-memory metrics (goal < 50 ms).
//! - **Simulate**: a 24 h trace at 1-minute grain (goal < 1 s).

use crate::{start_in, Driver, Launch};
use anyhow::{bail, Result};
use serde_json::json;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A one-number JSON endpoint on loopback: `{"depth": N}`; bounded to 100,000 requests.
fn serve_depth(depth: Arc<AtomicU64>) -> Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/queue", l.local_addr()?);
    std::thread::spawn(move || {
        for s in l.incoming().take(100_000) {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let body = format!("{{\"depth\": {}}}", depth.load(Ordering::SeqCst));
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    Ok(url)
}

/// Measures the reaction time `rounds` times with an evaluation interval of `interval_secs`.
pub async fn reaction(launch: &dyn Launch, rounds: u32, interval_secs: u64) -> Result<Vec<f64>> {
    let dir = tempfile::tempdir()?;
    let config = format!(
        "[autoscale]\ninterval_secs = {interval_secs}\nsample_interval_secs = 1\n[sim]\nboot_min_ms = 5\nboot_max_ms = 20\n"
    );
    let mut server = start_in(launch, dir.path(), Driver::Sim, &config).await?;
    let c = server.client()?;
    let depth = Arc::new(AtomicU64::new(0));
    let url = serve_depth(depth.clone())?;
    c.put("/v1/resourceGroups/b", &json!({})).await?;
    let img = dir.path().join("img");
    crate::sleeper_image(&img)?;
    herd_client::image_upload::import_directory(&c, "B:B:1:1.0.0", &img, json!({})).await?;
    let set = json!({"sku": {"name": "Standard_B1ms", "capacity": 1}, "overprovision": false,
        "virtualMachineProfile": {"osProfile": {"computerNamePrefix": "b"},
            "storageProfile": {"imageReference": {"publisher": "B", "offer": "B", "sku": "1", "version": "1.0.0"}}}});
    c.put("/v1/resourceGroups/b/virtualMachineScaleSets/q", &set).await?;
    c.put(
        "/v1/resourceGroups/b/metricSources/depth",
        &json!({"type": "http-json", "endpoint": url, "settings": {"pointer": "/depth"}}),
    )
    .await?;
    let rule = |thr: &str, dir: &str, value: &str| {
        json!({"metricTrigger": {"metricName": "source/depth", "timeGrain": "PT1S", "statistic": "Max", "timeWindow": "PT3S",
            "timeAggregation": "Maximum", "operator": if dir == "Increase" { "GreaterThan" } else { "LessThanOrEqual" }, "threshold": thr},
          "scaleAction": {"direction": dir, "type": "ExactCount", "value": value, "cooldown": "PT1S"}})
    };
    c.put(
        "/v1/resourceGroups/b/autoscaleSettings/a",
        &json!({"targetResourceUri": "/resourceGroups/b/providers/Microsoft.Compute/virtualMachineScaleSets/q",
            "profiles": [{"name": "default", "capacity": {"minimum": "1", "maximum": "2", "default": "1"},
                "rules": [rule("10", "Increase", "2"), rule("10", "Decrease", "1")]}]}),
    )
    .await?;
    let capacity = || async {
        Ok::<i64, anyhow::Error>(
            c.get("/v1/resourceGroups/b/virtualMachineScaleSets/q").await?["sku"]["capacity"].as_i64().unwrap_or(0),
        )
    };
    let mut out = Vec::new();
    for _ in 0..rounds {
        // Start from 1, the queue empty, for at least one window.
        let deadline = Instant::now() + Duration::from_secs(60);
        while capacity().await? != 1 {
            if Instant::now() > deadline {
                bail!("the set did not settle back to 1");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(4)).await;
        let t0 = Instant::now();
        depth.store(100, Ordering::SeqCst);
        loop {
            if capacity().await? == 2 {
                break;
            }
            if t0.elapsed() > Duration::from_secs(120) {
                bail!("no scale-out within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        out.push(t0.elapsed().as_secs_f64());
        depth.store(0, Ordering::SeqCst);
    }
    server.stop().await;
    Ok(out)
}

/// Runs all three and prints one JSON object.
pub async fn run(launch: &dyn Launch, rounds: u32, interval_secs: u64) -> Result<()> {
    let eval = herd_autoscale::bench::bench_evaluation(100, 10, 1000);
    let sim = herd_autoscale::bench::bench_simulate_24h();
    let reaction = reaction(launch, rounds, interval_secs).await?;
    let max = reaction.iter().copied().fold(0.0, f64::max);
    let bound = interval_secs as f64 + 1.0;
    println!(
        "{}",
        json!({
            "evaluationRoundMs (100 settings x 10 rules x 1000 instances)": eval.as_secs_f64() * 1000.0,
            "simulate24hMs": sim.as_secs_f64() * 1000.0,
            "reactionSeconds": reaction,
            "reactionBoundSeconds (interval + sample interval)": bound,
            "reactionMaxOverBound": max / bound,
        })
    );
    Ok(())
}
