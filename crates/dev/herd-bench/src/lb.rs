//! `herd bench lb` (and its hidden backend, `herd bench backend`): throughput and p99 through
//! herd's load balancer and through HAProxy over the same process-driver backends, side by
//! side, plus how fast a load-balancing rule reaches the data plane.

use crate::provision::{model, wait_converged};
use crate::{Bench, Driver, Launch};
use anyhow::{bail, Result};
use herd_client::set_path;
use serde_json::json;
use std::time::{Duration, Instant};

/// A minimal keep-alive HTTP/1.1 server answering every request with a short 200.
pub async fn backend(bind: std::net::SocketAddr) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(bind).await?;
    const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok";
    loop {
        let (mut sock, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = sock.set_nodelay(true);
            let mut buf = vec![0u8; 16 * 1024];
            let mut pending = 0usize;
            loop {
                let n = match sock.read(&mut buf[pending..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                pending += n;
                // Answer every complete request head in the buffer.
                let mut start = 0;
                while let Some(end) = buf[start..pending].windows(4).position(|w| w == b"\r\n\r\n") {
                    if sock.write_all(REPLY).await.is_err() {
                        return;
                    }
                    start += end + 4;
                }
                buf.copy_within(start..pending, 0);
                pending -= start;
                if pending == buf.len() {
                    return;
                }
            }
        });
    }
}

struct WrkResult {
    rps: f64,
    p99_ms: f64,
    errors: u64,
}

fn parse_wrk(out: &str) -> Result<WrkResult> {
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:").map(|v| v.trim().parse::<f64>()))
        .ok_or_else(|| anyhow::anyhow!("no Requests/sec in wrk output: {out}"))??;
    let p99 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%").map(|v| v.trim().to_string()))
        .ok_or_else(|| anyhow::anyhow!("no 99% latency in wrk output"))?;
    let p99_ms = if let Some(v) = p99.strip_suffix("us") {
        v.parse::<f64>()? / 1000.0
    } else if let Some(v) = p99.strip_suffix("ms") {
        v.parse::<f64>()?
    } else if let Some(v) = p99.strip_suffix('s') {
        v.parse::<f64>()? * 1000.0
    } else {
        bail!("unknown latency unit in '{p99}'")
    };
    let errors = out
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .map(|l| l.split(|c: char| !c.is_ascii_digit()).filter_map(|x| x.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    Ok(WrkResult { rps, p99_ms, errors })
}

async fn wrk(url: &str, duration: u64, connections: u32) -> Result<WrkResult> {
    let out = tokio::process::Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), &format!("-d{duration}s"), "--latency", url])
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("running wrk (apt-get install wrk): {e}"))?;
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

/// `herd bench lb`: `rounds` A/B rounds of `wrk` through herd's load balancer and through
/// HAProxy over the same two backends, then how fast a new rule serves; prints JSON lines.
pub async fn lb_bench(launch: &dyn Launch, duration: u64, connections: u32, rounds: u32) -> Result<()> {
    let mut b = Bench::setup(launch, Driver::Process, 10).await?;
    let c = &b.client;
    let (lbp, path) = ("/v1/resourceGroups/bench/loadBalancers/lb", set_path("bench", "web"));
    let (ip, addrs) = backends_in_rotation(&b, lbp, &path).await?;
    let mut haproxy = start_haproxy(b.dir.path(), &addrs)?;
    let herd_url = format!("http://{ip}:18090/");
    let haproxy_url = "http://127.0.99.1:18091/".to_string();
    for u in [&herd_url, &haproxy_url] {
        let t = Instant::now();
        while reqwest::get(u.as_str()).await.is_err() {
            if t.elapsed() > Duration::from_secs(10) {
                bail!("{u} does not answer");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let ((hr, hp), (ar, ap)) = ab_rounds(&herd_url, &haproxy_url, duration, connections, rounds).await?;
    let propagation_ms = rule_propagation_ms(c, lbp, &ip).await?;
    println!(
        "{}",
        json!({"bench": "lb-summary", "rounds": rounds, "seconds": duration, "connections": connections,
        "herdRps": hr, "haproxyRps": ar, "rpsRatio": hr / ar.max(1e-9),
        "herdP99Ms": hp, "haproxyP99Ms": ap, "p99Ratio": hp / ap.max(1e-9),
        "failureDetectionSeconds": 1.0, "probeIntervalSeconds": 1, "probeThreshold": 1,
        "changeToDataPlaneMs": propagation_ms})
    );
    let _ = haproxy.kill().await;
    c.delete(&path).await?;
    let t = Instant::now();
    while c.get(&path).await.is_ok() && t.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.server.stop().await;
    Ok(())
}

/// Imports the backend image, creates the load balancer `lb` (probe on 8080, rule 18090 ->
/// 8080) and the set `web` of two backends in its pool, and waits until both are in rotation.
/// Returns the frontend IP and the backends' reach addresses.
async fn backends_in_rotation(b: &Bench, lbp: &str, path: &str) -> Result<(String, Vec<String>)> {
    let exe = std::env::current_exe()?;
    let img = b.dir.path().join("backend-image");
    crate::script_image(&img, &format!("exec {} bench backend --bind \"$HERD_ADDRESS:8080\"", exe.display()))?;
    let c = &b.client;
    herd_client::image_upload::import_directory(c, "Herd:Backend:1:1.0.0", &img, json!({})).await?;
    c.put("/v1/resourceGroups/bench/publicIPAddresses/ip", &json!({})).await?;
    let pip = herd_model::network::network_id("bench", "publicIPAddresses", "ip");
    let lbid = herd_model::network::network_id("bench", "loadBalancers", "lb");
    c.put(
        lbp,
        &json!({
            "frontendIPConfigurations": [{"name": "fe", "publicIPAddress": {"id": pip}}],
            "backendAddressPools": [{"name": "be"}],
            "probes": [{"name": "tcp", "protocol": "Tcp", "port": 8080, "intervalInSeconds": 1, "probeThreshold": 1}],
            "loadBalancingRules": [{"name": "r", "frontendPort": 18090, "backendPort": 8080,
                "frontendIPConfiguration": {"id": format!("{lbid}/frontendIPConfigurations/fe")},
                "backendAddressPool": {"id": format!("{lbid}/backendAddressPools/be")},
                "probe": {"id": format!("{lbid}/probes/tcp")}}]
        }),
    )
    .await?;
    let mut m = model(2);
    m["virtualMachineProfile"]["storageProfile"]["imageReference"]["offer"] = json!("Backend");
    m["virtualMachineProfile"]["networkProfile"] = json!({"networkInterfaceConfigurations": [{"name": "nic", "ipConfigurations": [{"name": "ip",
        "loadBalancerBackendAddressPools": [{"id": format!("{lbid}/backendAddressPools/be")}]}]}]});
    c.call(reqwest::Method::PUT, path, Some(&m), &[("If-None-Match", "*")]).await?;
    wait_converged(c, path, Duration::from_secs(120)).await?;
    let t = Instant::now();
    loop {
        let pool = c.get(&format!("{lbp}/backendAddressPools/be")).await?;
        let n = pool["members"].as_array().map_or(0, |a| a.iter().filter(|x| x["inRotation"] == true).count());
        if n == 2 {
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!("backends never came into rotation: {pool}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ip = c.get("/v1/resourceGroups/bench/publicIPAddresses/ip").await?["ipAddress"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let addrs: Vec<String> = c
        .get(&format!("{path}/virtualMachines"))
        .await?
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["reachAddress"].as_str().map(String::from)).collect())
        .unwrap_or_default();
    Ok((ip, addrs))
}

/// HAProxy on another loopback address (127.0.99.1:18091), same backends, TCP mode like
/// herd's L4 proxy; its config goes to `dir`.
fn start_haproxy(dir: &std::path::Path, addrs: &[String]) -> Result<tokio::process::Child> {
    let hcfg = dir.join("haproxy.cfg");
    let servers: String = addrs.iter().enumerate().map(|(i, a)| format!("  server s{i} {a}:8080\n")).collect();
    std::fs::write(&hcfg, format!("global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\nfrontend f\n  bind 127.0.99.1:18091\n  default_backend b\nbackend b\n  balance roundrobin\n{servers}"))?;
    tokio::process::Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&hcfg)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting haproxy (apt-get install haproxy): {e}"))
}

/// `rounds` A/B rounds of `wrk` (herd, then HAProxy), each printed as JSON; returns the
/// averages ((herd rps, herd p99 ms), (HAProxy rps, HAProxy p99 ms)).
async fn ab_rounds(
    herd_url: &str,
    haproxy_url: &str,
    duration: u64,
    connections: u32,
    rounds: u32,
) -> Result<((f64, f64), (f64, f64))> {
    let mut herd_runs = Vec::new();
    let mut ha_runs = Vec::new();
    for round in 1..=rounds {
        let h = wrk(herd_url, duration, connections).await?;
        let a = wrk(haproxy_url, duration, connections).await?;
        println!(
            "{}",
            json!({"bench": "lb", "round": round, "herdRps": h.rps, "herdP99Ms": h.p99_ms, "herdErrors": h.errors,
            "haproxyRps": a.rps, "haproxyP99Ms": a.p99_ms, "haproxyErrors": a.errors})
        );
        herd_runs.push(h);
        ha_runs.push(a);
    }
    let avg = |v: &[WrkResult], f: fn(&WrkResult) -> f64| v.iter().map(f).sum::<f64>() / v.len().max(1) as f64;
    Ok((
        (avg(&herd_runs, |r| r.rps), avg(&herd_runs, |r| r.p99_ms)),
        (avg(&ha_runs, |r| r.rps), avg(&ha_runs, |r| r.p99_ms)),
    ))
}

/// How fast a change reaches the data plane: adds a rule (frontend port 18092), returns the
/// milliseconds until its frontend on `ip` answers.
async fn rule_propagation_ms(c: &herd_client::Client, lbp: &str, ip: &str) -> Result<f64> {
    let mut lb = c.get(lbp).await?;
    let rules = lb["loadBalancingRules"].as_array_mut().ok_or_else(|| anyhow::anyhow!("no rules"))?;
    let mut extra = rules[0].clone();
    extra["name"] = json!("r2");
    extra["frontendPort"] = json!(18092);
    if let Some(o) = extra.as_object_mut() {
        o.remove("id");
    }
    let t = Instant::now();
    c.put(&format!("{lbp}/loadBalancingRules/r2"), &extra).await?;
    let url2 = format!("http://{ip}:18092/");
    while reqwest::get(url2.as_str()).await.is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            bail!("the new rule never served");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}
