//! `herd bench tls`: what TLS costs the API. `list-instances` on a set of 1,000 sim instances,
//! over HTTPS under the cluster CA, next to the same server on `--insecure-http`, in the same
//! run and alternating rounds, so the machine's drift hits both alike.
//!
//! Requests alternate one by one between the two servers. Two shapes: a client that keeps its connection (the steady cost: encryption of each request
//! and answer), and one that opens a new connection per request (a CLI invocation: TCP plus the
//! TLS handshake every time). The goal is p99 within 1.2× of plain HTTP.

use crate::provision::{model, percentile, wait_converged};
use crate::{Bench, Driver, Launch, Transport};
use anyhow::Result;
use herd_client::{set_path, Client};
use serde_json::json;
use std::time::{Duration, Instant};

/// One list-instances call through `client`, timed.
async fn timed(client: &Client, path: &str) -> Result<Duration> {
    let t = Instant::now();
    std::hint::black_box(client.get(path).await?);
    Ok(t.elapsed())
}

/// One server of the comparison, its set converged.
async fn prepare(launch: &dyn Launch, instances: u64, transport: Transport) -> Result<(Bench, String)> {
    let b = Bench::setup_on(launch, Driver::Sim, instances, transport).await?;
    let path = set_path("bench", "bench");
    b.client.call(reqwest::Method::PUT, &path, Some(&model(instances)), &[("If-None-Match", "*")]).await?;
    wait_converged(&b.client, &path, Duration::from_secs(600)).await?;
    Ok((b, format!("{path}/virtualMachines")))
}

/// Runs the comparison and prints one JSON object per shape.
pub async fn run(launch: &dyn Launch, instances: u64, requests: u32, rounds: u32) -> Result<()> {
    let (mut tls, path) = prepare(launch, instances, Transport::Tls).await?;
    let (mut plain, _) = prepare(launch, instances, Transport::InsecureHttp).await?;
    for (shape, fresh) in [("keep-alive", false), ("new-connection-per-request", true)] {
        let client = |b: &Bench| if fresh { b.client.one_connection_per_request() } else { Ok(b.client.clone()) };
        let (tls_client, plain_client) = (client(&tls)?, client(&plain)?);
        // A warm-up request each, so neither side pays a first connection in its samples.
        tls_client.get(&path).await?;
        plain_client.get(&path).await?;
        let (mut over_tls, mut over_plain) = (Vec::new(), Vec::new());
        // Request by request, alternating which server goes first, so the machine's drift and
        // both servers' background passes (one process) fall on both sides alike.
        for round in 0..rounds.max(1) {
            for i in 0..requests {
                if (i + round) % 2 == 0 {
                    over_tls.push(timed(&tls_client, &path).await?);
                    over_plain.push(timed(&plain_client, &path).await?);
                } else {
                    over_plain.push(timed(&plain_client, &path).await?);
                    over_tls.push(timed(&tls_client, &path).await?);
                }
            }
        }
        over_tls.sort();
        over_plain.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let (t99, p99) = (ms(percentile(&over_tls, 0.99)), ms(percentile(&over_plain, 0.99)));
        println!(
            "{}",
            json!({
                "bench": "tls-list-instances", "shape": shape, "instances": instances,
                "requests": requests * rounds.max(1), "rounds": rounds.max(1),
                "httpsP50Ms": ms(percentile(&over_tls, 0.5)), "httpsP95Ms": ms(percentile(&over_tls, 0.95)), "httpsP99Ms": t99,
                "plainHttpP50Ms": ms(percentile(&over_plain, 0.5)), "plainHttpP95Ms": ms(percentile(&over_plain, 0.95)), "plainHttpP99Ms": p99,
                "p99RatioToPlainHttp": t99 / p99.max(1e-6),
            })
        );
    }
    tls.server.stop().await;
    plain.server.stop().await;
    Ok(())
}
