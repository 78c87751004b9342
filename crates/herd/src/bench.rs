//! `herd bench`: measurements with a peer baseline run side by side, so numbers read as ratios.
//!
//! - `provision`: API call → all instances running, against an in-process server. With the
//!   process driver the peer is the same number of bare process spawns (what any tool must pay).
//! - `api`: latency of `list-instances` on a large set; the peer is `/healthz` on the same server
//!   (the cost of an HTTP round trip with no work).
//! - `qemu`: real VMs; the peer is hand-run QEMU booting the same image (see `bench_qemu`).
//! - `autoscale`: reaction time, evaluation cost and simulation speed (see `bench_autoscale`).
//! - `rolling`: a rolling upgrade against the sum of its batches' health waits (see
//!   `bench_rolling`).

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

impl Drop for Bench {
    /// A benchmark that fails half-way must not leave instance processes behind.
    fn drop(&mut self) {
        kill_instances(&self._dir.path().join("data"));
    }
}

/// Kills every process carrying the process-driver tag of the server data dir `data`.
pub fn kill_instances(data: &std::path::Path) {
    let Ok(dir) = data.canonicalize() else { return };
    let Some(tag) = crate::cluster::tag_of(&dir) else { return };
    let tag = format!("HERD_DRIVER_TAG={tag}");
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if env.split(|b| *b == 0).any(|v| v == tag.as_bytes()) {
            let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
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
        accel: crate::cli::AccelChoice::Tcg,
        orphans: Default::default(),
        seal_key_file: None,
    })
    .await?;
    let client = Client::new(&server.url(), Some(server.token.clone()), None)?;
    client.put("/v1/resourceGroups/bench", &json!({})).await?;
    let img = dir.path().join("image");
    sleeper_image(&img)?;
    crate::image_upload::import_directory(&client, "Herd:Bench:1:1.0.0", &img, json!({})).await?;
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
                let mut b = setup(driver, count).await?;
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
        BenchCmd::Backend { bind } => backend(bind).await,
        BenchCmd::Spot(o) => {
            let report = tokio::task::spawn_blocking(move || crate::bench_spot::run(&o)).await??;
            print!("{report}");
            Ok(())
        }
        BenchCmd::Autoscale { rounds, interval } => crate::bench_autoscale::run(rounds, interval).await,
        BenchCmd::Rolling { sim, process } => {
            for (driver, count) in [(DriverKind::Sim, sim), (DriverKind::Process, process)] {
                if count > 0 {
                    let r = crate::bench_rolling::measure(driver, count).await?;
                    println!("{}", serde_json::to_string(&r)?);
                }
            }
            Ok(())
        }
        BenchCmd::Qemu { rounds, counts, testguest, sku, json } => {
            crate::bench_qemu::run(crate::bench_qemu::Options { rounds, counts, testguest, sku, json }).await
        }
        BenchCmd::Lb { duration, connections, rounds } => lb_bench(duration, connections, rounds).await,
        BenchCmd::Api { instances, requests } => {
            let mut b = setup(DriverKind::Sim, instances).await?;
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

/// A minimal keep-alive HTTP/1.1 server answering every request with a short 200.
async fn backend(bind: std::net::SocketAddr) -> Result<()> {
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

async fn lb_bench(duration: u64, connections: u32, rounds: u32) -> Result<()> {
    let mut b = setup(DriverKind::Process, 10).await?;
    let exe = std::env::current_exe()?;
    let img = b._dir.path().join("backend-image");
    std::fs::create_dir_all(&img)?;
    std::fs::write(
        img.join("init"),
        format!("#!/bin/sh\nexec {} bench backend --bind \"$HERD_ADDRESS:8080\"\n", exe.display()),
    )?;
    std::fs::set_permissions(img.join("init"), std::fs::Permissions::from_mode(0o755))?;
    let c = &b.client;
    crate::image_upload::import_directory(c, "Herd:Backend:1:1.0.0", &img, json!({})).await?;
    c.put("/v1/resourceGroups/bench/publicIPAddresses/ip", &json!({})).await?;
    let lbp = "/v1/resourceGroups/bench/loadBalancers/lb";
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
    let path = set_path("bench", "web");
    c.call(reqwest::Method::PUT, &path, Some(&m), &[("If-None-Match", "*")]).await?;
    wait_converged(c, &path, Duration::from_secs(120)).await?;
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
    // HAProxy on another loopback address, same backends, TCP mode like herd's L4 proxy.
    let hcfg = b._dir.path().join("haproxy.cfg");
    let servers: String = addrs.iter().enumerate().map(|(i, a)| format!("  server s{i} {a}:8080\n")).collect();
    std::fs::write(&hcfg, format!("global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\nfrontend f\n  bind 127.0.99.1:18091\n  default_backend b\nbackend b\n  balance roundrobin\n{servers}"))?;
    let mut haproxy = tokio::process::Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&hcfg)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting haproxy (apt-get install haproxy): {e}"))?;
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
    let mut herd_runs = Vec::new();
    let mut ha_runs = Vec::new();
    for round in 1..=rounds {
        let h = wrk(&herd_url, duration, connections).await?;
        let a = wrk(&haproxy_url, duration, connections).await?;
        println!(
            "{}",
            json!({"bench": "lb", "round": round, "herdRps": h.rps, "herdP99Ms": h.p99_ms, "herdErrors": h.errors,
            "haproxyRps": a.rps, "haproxyP99Ms": a.p99_ms, "haproxyErrors": a.errors})
        );
        herd_runs.push(h);
        ha_runs.push(a);
    }
    let avg = |v: &[WrkResult], f: fn(&WrkResult) -> f64| v.iter().map(f).sum::<f64>() / v.len().max(1) as f64;
    let (hr, hp, ar, ap) = (
        avg(&herd_runs, |r| r.rps),
        avg(&herd_runs, |r| r.p99_ms),
        avg(&ha_runs, |r| r.rps),
        avg(&ha_runs, |r| r.p99_ms),
    );
    // How fast a change reaches the data plane: add a rule, time until its frontend answers.
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
    let propagation_ms = t.elapsed().as_secs_f64() * 1000.0;
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
