//! `herd bench lb` (and its hidden backend, `herd bench backend`): throughput, p99 and errors
//! through herd's load balancer and through HAProxy over the same process-driver backends, side
//! by side in alternating rounds, in several connection shapes, plus how fast a load-balancing
//! rule reaches the data plane.
//!
//! The backends sit on the loopback path (a host-local server, 127.x reach addresses) or, with
//! `--backends bridged`, on the private-IP path of issue 19 (a bridged server: each backend in
//! a namespace of its own behind a veth on the subnet's bridge, both load balancers forwarding
//! to its private IP). Given both, the bench measures one after the other in the same run and
//! compares the two paths' herd/HAProxy ratios ([`placement_comparison`]).
//!
//! - [`isolate`]: the bench's own network namespace, file limit and CPU pinning;
//! - [`budget`]: the same CPU budget for each load balancer (`--lb-cpu`), so that it is the
//!   bottleneck;
//! - [`load`]: the shapes, `wrk` and the median and spread of the rounds;
//! - [`latency`]: `wrk`'s latency histograms, pooled over the rounds (p99 over all requests);
//! - [`backend`]: the backends' minimal HTTP server.
//!
//! Output: one JSON line per round, per shape (`lb-shape`) and per placement (`lb-summary`) on
//! stdout, and a table of the shapes on stderr at the end of each placement.

pub mod backend;
pub mod budget;
pub mod isolate;
pub mod latency;
pub mod load;

pub use backend::backend;

use crate::bridged::Interrupt;
use crate::provision::{model, wait_converged};
use crate::{Bench, Driver, Launch};
use anyhow::{bail, Result};
use herd_client::set_path;
use load::{Run, Shape, Summary, WrkSetup};
use serde_json::json;
use std::time::{Duration, Instant};

/// What `herd bench lb` was asked.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seconds per `wrk` run.
    pub duration: u64,
    /// Alternating rounds per shape (each runs herd, then HAProxy).
    pub rounds: u32,
    pub shapes: Vec<Shape>,
    /// Measure in this process as it is: no namespace, no file limit, no pinning.
    pub in_place: bool,
    /// Set by the re-executed bench inside its namespace: the CPUs for the load (`taskset`
    /// list; the bench itself already runs pinned to the load balancer's CPU), if pinned.
    pub inside: Option<Option<String>>,
    /// The CPU budget of each load balancer (`--lb-cpu`), in CPUs.
    pub lb_cpu: Option<f64>,
    /// Set for the re-executed bench: the budget's cgroups (see [`budget::Budget::at`]).
    pub lb_cgroups: Option<std::path::PathBuf>,
    /// Where the backends sit, one measurement per placement in this order (empty: loopback).
    pub backends: Vec<Placement>,
}

/// Where the backends sit, and so the path both load balancers forward over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// A host-local server: each backend on a loopback reach address (127.x).
    Loopback,
    /// A bridged server (`[network] mode = "bridged"`): each backend in a network namespace of
    /// its own on a subnet's bridge, both load balancers forwarding to its private IP
    /// (issue 19). Needs root; the bridge, veths and nftables tables live in the bench's
    /// namespace.
    Bridged,
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Placement::Loopback => "loopback",
            Placement::Bridged => "bridged",
        })
    }
}

impl std::str::FromStr for Placement {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "loopback" => Ok(Placement::Loopback),
            "bridged" => Ok(Placement::Bridged),
            _ => Err(format!("backends '{s}': allowed values are loopback, bridged")),
        }
    }
}

impl Placement {
    /// The server's extra configuration.
    fn config(self) -> &'static str {
        match self {
            Placement::Loopback => "",
            Placement::Bridged => "[network]\nmode = \"bridged\"\n",
        }
    }
}

/// The private-IP path against the loopback path in one shape: each path's herd/HAProxy
/// throughput ratio, and the first over the second (issue 19's goal: within 5 %).
pub fn placement_comparison(loopback_rps_ratio: f64, bridged_rps_ratio: f64) -> serde_json::Value {
    let relative = bridged_rps_ratio / loopback_rps_ratio.max(1e-9);
    json!({"loopbackRpsRatio": loopback_rps_ratio, "bridgedRpsRatio": bridged_rps_ratio,
        "bridgedToLoopback": relative, "goal": "within 5 %", "meetsGoal": (relative - 1.0).abs() <= 0.05})
}

impl Options {
    /// The arguments of the re-executed bench.
    fn inner_args(&self, load_cpus: Option<String>, cgroups: Option<&std::path::Path>) -> Vec<String> {
        let mut a: Vec<String> =
            ["bench", "lb", "--duration", &self.duration.to_string()].into_iter().map(String::from).collect();
        a.extend(["--rounds".into(), self.rounds.to_string(), "--inside".into()]);
        a.extend(load_cpus.map(|c| format!("--load-cpus={c}")));
        for s in &self.shapes {
            a.extend(["--shape".into(), s.to_string()]);
        }
        if let (Some(cpu), Some(prefix)) = (self.lb_cpu, cgroups) {
            a.extend([format!("--lb-cpu={cpu}"), format!("--lb-cgroups={}", prefix.display())]);
        }
        for p in &self.backends {
            a.extend(["--backends".into(), p.to_string()]);
        }
        a
    }
}

/// `herd bench lb`: unless `in_place`, runs itself again isolated (see [`isolate`]), which
/// then measures.
pub async fn lb_bench(launch: &dyn Launch, o: Options) -> Result<()> {
    if o.backends.contains(&Placement::Bridged) {
        if o.in_place {
            bail!("--backends bridged cannot run --in-place: bridged networking must not touch this namespace");
        }
        crate::bridged::require_root("lb --backends bridged")?;
    }
    match &o.inside {
        Some(load_cpus) => {
            let budget = o.lb_cgroups.as_deref().map(budget::Budget::at).transpose()?;
            measure(launch, &o, load_cpus.as_deref(), budget.as_ref()).await
        }
        None => {
            // The cgroups belong to this (outer) process, so they go even if the inner fails.
            let guard = o.lb_cpu.map(budget::Budget::create).transpose()?;
            let result = if o.in_place {
                measure(launch, &o, None, guard.as_ref().map(|g| &g.budget)).await
            } else {
                let cpus = isolate::Cpus::split(&isolate::allowed_cpus()?);
                isolate::reexec(
                    &o.inner_args(cpus.load_list(), guard.as_ref().map(|g| g.prefix_from_elsewhere()).as_deref()),
                )
                .await
            };
            if let Some(g) = &guard {
                let t = g.throttled();
                println!(
                    "{}",
                    json!({"bench": "lb-budget", "lbCpu": o.lb_cpu, "periodUs": budget::PERIOD_US,
                        "herd": {"periods": t[0].0, "throttled": t[0].1},
                        "haproxy": {"periods": t[1].0, "throttled": t[1].1}})
                );
            }
            result
        }
    }
}

/// Measures each backend placement in turn; with both, also prints how the private-IP path's
/// ratios compare with the loopback path's, shape by shape.
async fn measure(
    launch: &dyn Launch,
    o: &Options,
    load_cpus: Option<&str>,
    budget: Option<&budget::Budget>,
) -> Result<()> {
    let intr = &Interrupt::listen();
    let placements = if o.backends.is_empty() { vec![Placement::Loopback] } else { o.backends.clone() };
    let mut results = Vec::new();
    for &p in &placements {
        eprintln!("herd bench lb: backends on the {p} path");
        results.push((p, measure_placement(launch, o, p, (load_cpus, budget), intr).await?));
    }
    let ratios = |p: Placement| results.iter().find(|(q, _)| *q == p).map(|(_, shapes)| shapes.clone());
    if let (Some(lo), Some(br)) = (ratios(Placement::Loopback), ratios(Placement::Bridged)) {
        let shapes: Vec<serde_json::Value> = lo
            .iter()
            .zip(&br)
            .map(|(l, b)| {
                let mut v = placement_comparison(
                    l["rpsRatio"].as_f64().unwrap_or(f64::NAN),
                    b["rpsRatio"].as_f64().unwrap_or(f64::NAN),
                );
                v["shape"] = l["shape"].clone();
                v["p99"] = json!({"loopbackP99Ratio": l["p99Ratio"], "bridgedP99Ratio": b["p99Ratio"]});
                v
            })
            .collect();
        println!("{}", json!({"bench": "lb-placements", "shapes": shapes}));
    }
    Ok(())
}

/// Sets up the backends in `placement`, both load balancers, then every shape's rounds;
/// prints JSON lines and returns each shape's line.
async fn measure_placement(
    launch: &dyn Launch,
    o: &Options,
    placement: Placement,
    (load_cpus, budget): (Option<&str>, Option<&budget::Budget>),
    intr: &Interrupt,
) -> Result<Vec<serde_json::Value>> {
    // A placement after the first starts in the budget the previous one entered: leave it, or
    // this placement's backends and dnsmasq (started by the server in this process) would be
    // born in herd's budget and spend it.
    if let Some(budget) = budget {
        budget::Budget::enter(&budget.home, std::process::id())?;
    }
    let mut b =
        intr.guard(Bench::setup_with(launch, Driver::Process, 10, crate::Transport::Tls, placement.config())).await?;
    let data = b.dir.path().join("data");
    // Bridged backends have namespaces of their own: removed if the bench stops half-way,
    // after the server stopped (so it creates nothing more).
    let leftovers = (placement == Placement::Bridged).then(|| crate::bridged::Leftovers {
        data: data.clone(),
        keys: (0..16).map(|i| format!("bench/web/{i}")).collect(),
    });
    let result = intr.guard(placement_rounds(&b, o, placement, &data, load_cpus, budget)).await;
    b.server.stop().await;
    drop(leftovers);
    result
}

/// [`measure_placement`] once its server runs: the backends, HAProxy, every shape's rounds,
/// the rule propagation; deletes the set at the end.
async fn placement_rounds(
    b: &Bench,
    o: &Options,
    placement: Placement,
    data: &std::path::Path,
    load_cpus: Option<&str>,
    budget: Option<&budget::Budget>,
) -> Result<Vec<serde_json::Value>> {
    let c = &b.client;
    let subnet = match placement {
        Placement::Loopback => None,
        Placement::Bridged => Some(crate::bridged::put_vnet(c, "bench", "vnet", "10.0.0.0/24").await?),
    };
    let (lbp, path) = ("/v1/resourceGroups/bench/loadBalancers/lb", set_path("bench", "web"));
    let (ip, addrs) = backends_in_rotation(b, lbp, &path, subnet.as_deref()).await?;
    if placement == Placement::Bridged && !addrs.iter().all(|a| a.starts_with("10.0.0.")) {
        bail!("bridged backends are not reached on their private IPs (10.0.0.0/24): {addrs:?}");
    }
    let lb_cpu = match load_cpus {
        Some(load) => {
            let pinned = match placement {
                Placement::Loopback => isolate::pin_processes("bench backend", load)?,
                Placement::Bridged => isolate::pin_instances(data, "bench backend", load)?,
            };
            if pinned != addrs.len() {
                bail!("pinned {pinned} backend processes to CPUs {load}, expected {}", addrs.len());
            }
            isolate::allowed_cpus()?.first().map(usize::to_string)
        }
        None => None,
    };
    // A proxied connection holds two descriptors in the load balancer; keep 200 for the rest.
    let open_files = open_files_limit().unwrap_or(1024);
    let max_connections = (open_files.saturating_sub(200) / 2).clamp(1, 30_000) as u32;
    let mut haproxy = start_haproxy(b.dir.path(), &addrs, lb_cpu.as_deref(), max_connections)?;
    // The budget: after the backends started (they stay outside), before any round.
    if let Some(budget) = budget {
        let pid = haproxy.id().ok_or_else(|| anyhow::anyhow!("HAProxy exited at once"))?;
        budget::Budget::enter(&budget.haproxy, pid)?;
        budget::Budget::enter(&budget.herd, std::process::id())?;
    }
    let herd_url = format!("http://{ip}:18090/");
    let haproxy_url = "http://127.0.99.1:18091/".to_string();
    for u in [&herd_url, &haproxy_url] {
        let t = Instant::now();
        while reqwest::get(u.as_str()).await.is_err() {
            if t.elapsed() > Duration::from_secs(10) {
                let log = std::fs::read_to_string(b.dir.path().join("haproxy.log")).unwrap_or_default();
                bail!("{u} does not answer (HAProxy's log: {log})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!(
        "{}",
        json!({"bench": "lb-setup", "placement": placement, "backendAddresses": addrs, "lbCpu": lb_cpu, "loadCpus": load_cpus, "isolated": o.inside.is_some(),
            "lbCpuBudget": budget.and(o.lb_cpu), "budgetPeriodUs": budget.map(|_| budget::PERIOD_US),
            "openFiles": open_files, "maxConnections": max_connections, "backends": addrs.len()})
    );
    let wrk_threads = load_cpus.map_or(2, |l| l.split(',').count() as u32);
    let script = latency::write_script(b.dir.path())?;
    let mut shapes = Vec::new();
    for &requested in &o.shapes {
        let shape = Shape { connections: requested.connections.min(max_connections), ..requested };
        if shape != requested {
            eprintln!(
                "herd bench lb: shape {requested} runs as {shape}: `ulimit -n` is {open_files} here and a proxied \
                 connection holds two descriptors (raise the hard limit, which needs CAP_SYS_RESOURCE, for the full shape)"
            );
        }
        let pids = (std::process::id(), haproxy.id());
        let load = Load { threads: wrk_threads, cpus: load_cpus, budget, placement, script: &script };
        let (h, a) = ab_rounds([&herd_url, &haproxy_url], pids, shape, o, &load).await?;
        let pooled_ratio = match (h.pooled, a.pooled) {
            (Some(h), Some(a)) => Some(h.p99_ms / a.p99_ms.max(1e-9)),
            _ => None,
        };
        let line = json!({"bench": "lb-shape", "placement": placement, "shape": requested.to_string(), "connections": shape.connections,
            "keepAlive": shape.keep_alive, "rounds": o.rounds, "seconds": o.duration, "lbCpuBudget": budget.and(o.lb_cpu),
            "herd": h, "haproxy": a,
            "rpsRatio": h.rps.median / a.rps.median.max(1e-9), "p99Ratio": h.p99_ms.median / a.p99_ms.median.max(1e-9),
            "p99PooledRatio": pooled_ratio,
            "cpuPerRequestRatio": h.cpu_us_per_request.median / a.cpu_us_per_request.median.max(1e-9)});
        println!("{line}");
        shapes.push(line);
    }
    eprint!("{}", shape_table(placement, &shapes));
    let propagation_ms = rule_propagation_ms(c, lbp, &ip).await?;
    println!(
        "{}",
        json!({"bench": "lb-summary", "placement": placement, "shapes": shapes.iter().map(|s| json!({"shape": s["shape"],
            "rpsRatio": s["rpsRatio"], "p99Ratio": s["p99Ratio"], "p99PooledRatio": s["p99PooledRatio"],
            "cpuPerRequestRatio": s["cpuPerRequestRatio"]}))
            .collect::<Vec<_>>(),
        "failureDetectionSeconds": 1.0, "probeIntervalSeconds": 1, "probeThreshold": 1,
        "changeToDataPlaneMs": propagation_ms})
    );
    let _ = haproxy.kill().await;
    c.delete(&path).await?;
    let t = Instant::now();
    while c.get(&path).await.is_ok() && t.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(shapes)
}

/// The soft limit on open files (`ulimit -n`).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Imports the backend image, creates the load balancer `lb` (probe on 8080, rule 18090 ->
/// 8080) and the set `web` of two backends in its pool, and waits until both are in rotation.
/// Returns the frontend IP and the backends' reach addresses.
async fn backends_in_rotation(b: &Bench, lbp: &str, path: &str, subnet: Option<&str>) -> Result<(String, Vec<String>)> {
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
    if let Some(subnet) = subnet {
        m["virtualMachineProfile"]["networkProfile"]["networkInterfaceConfigurations"][0]["ipConfigurations"][0]
            ["subnet"] = json!({"id": subnet});
    }
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
/// herd's L4 proxy, one thread, pinned to `cpu` when given; its config goes to `dir`.
fn start_haproxy(
    dir: &std::path::Path,
    addrs: &[String],
    cpu: Option<&str>,
    maxconn: u32,
) -> Result<tokio::process::Child> {
    let hcfg = dir.join("haproxy.cfg");
    let servers: String = addrs.iter().enumerate().map(|(i, a)| format!("  server s{i} {a}:8080\n")).collect();
    std::fs::write(&hcfg, format!("global\n  maxconn {maxconn}\n  nbthread 1\ndefaults\n  mode tcp\n  maxconn {maxconn}\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\nfrontend f\n  bind 127.0.99.1:18091\n  default_backend b\nbackend b\n  balance roundrobin\n{servers}"))?;
    isolate::pinned("haproxy", cpu)
        .arg("-db")
        .arg("-f")
        .arg(&hcfg)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("haproxy.log"))?)
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting haproxy (apt-get install haproxy): {e}"))
}

/// How `wrk` runs: its threads, the CPUs it is pinned to, the budget it must leave and the
/// histogram script; and where the backends sit (for the printed lines).
struct Load<'a> {
    threads: u32,
    cpus: Option<&'a str>,
    budget: Option<&'a budget::Budget>,
    placement: Placement,
    script: &'a std::path::Path,
}

/// The `lb-shape` lines of one placement as a table for people: per shape and side the
/// median (and spread) of the rounds' throughput and p99, the p99 over all rounds' requests
/// pooled, the herd/HAProxy ratios, and the connection attempts dropped by a full accept queue
/// during herd's and HAProxy's rounds.
pub fn shape_table(placement: Placement, shapes: &[serde_json::Value]) -> String {
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let spread = |s: &serde_json::Value, scale: f64, digits: usize| {
        format!(
            "{:.d$} ({:.d$}-{:.d$})",
            f(&s["median"]) / scale,
            f(&s["min"]) / scale,
            f(&s["max"]) / scale,
            d = digits
        )
    };
    let pooled = |side: &serde_json::Value| match side["pooled"]["p99Ms"].as_f64() {
        Some(v) => format!("{v:.2}"),
        None => "-".into(),
    };
    let ratio = |v: &serde_json::Value| v.as_f64().map_or("-".into(), |r| format!("{r:.2}"));
    let mut rows = vec![[
        "SHAPE",
        "HERD KREQ/S",
        "HAPROXY KREQ/S",
        "HERD P99 MS (ROUNDS)",
        "HAPROXY P99 MS (ROUNDS)",
        "HERD P99 MS POOLED",
        "HAPROXY P99 MS POOLED",
        "RATIOS REQ/S P99 POOLED CPU",
        "LISTEN OVERFLOWS",
    ]
    .map(String::from)];
    for s in shapes {
        let (h, a) = (&s["herd"], &s["haproxy"]);
        rows.push([
            s["shape"].as_str().unwrap_or("?").to_string(),
            spread(&h["rps"], 1000.0, 1),
            spread(&a["rps"], 1000.0, 1),
            spread(&h["p99Ms"], 1.0, 2),
            spread(&a["p99Ms"], 1.0, 2),
            pooled(h),
            pooled(a),
            [&s["rpsRatio"], &s["p99Ratio"], &s["p99PooledRatio"], &s["cpuPerRequestRatio"]].map(ratio).join(" "),
            [h, a].map(|side| side["listenOverflows"].as_u64().map_or("-".into(), |n| n.to_string())).join("/"),
        ]);
    }
    let widths: Vec<usize> = (0..9).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = format!("herd bench lb, {placement} backends: median (lowest-highest) of the rounds; pooled: over all rounds' requests\n");
    for r in &rows {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `o.rounds` A/B rounds of `wrk` in `shape` (herd, then HAProxy: `urls` and the `pids` of
/// the processes that serve them), each printed as JSON; returns each side's summary.
async fn ab_rounds(
    [herd_url, haproxy_url]: [&str; 2],
    (herd_pid, haproxy_pid): (u32, Option<u32>),
    shape: Shape,
    o: &Options,
    l: &Load<'_>,
) -> Result<(Summary, Summary)> {
    let mut herd_runs: Vec<Run> = Vec::new();
    let mut ha_runs: Vec<Run> = Vec::new();
    let prefix = l.budget.map(budget::Budget::wrk_prefix).unwrap_or_default();
    let setup = WrkSetup { threads: l.threads, cpus: l.cpus, prefix: &prefix, histogram_script: Some(l.script) };
    for round in 1..=o.rounds {
        let h = load::wrk(herd_url, shape, o.duration, &setup, Some(herd_pid)).await?;
        let a = load::wrk(haproxy_url, shape, o.duration, &setup, haproxy_pid).await?;
        println!(
            "{}",
            json!({"bench": "lb", "placement": l.placement, "shape": shape.to_string(), "round": round, "herd": h, "haproxy": a})
        );
        herd_runs.push(h);
        ha_runs.push(a);
    }
    Ok((Summary::of(&herd_runs), Summary::of(&ha_runs)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placements_parse_and_name_the_allowed_values() {
        for p in [Placement::Loopback, Placement::Bridged] {
            assert_eq!(p.to_string().parse::<Placement>().unwrap(), p);
        }
        let e = "private".parse::<Placement>().unwrap_err();
        assert!(e.contains("'private'") && e.contains("loopback, bridged"), "{e}");
        assert!(Placement::Bridged.config().contains("mode = \"bridged\""));
        assert_eq!(Placement::Loopback.config(), "");
    }

    #[test]
    fn the_private_ip_path_is_compared_with_the_loopback_paths_ratio() {
        let v = placement_comparison(0.80, 0.78);
        assert!((v["bridgedToLoopback"].as_f64().unwrap() - 0.975).abs() < 1e-9);
        assert_eq!(v["meetsGoal"], true, "2.5 % apart");
        assert_eq!(placement_comparison(0.80, 0.74)["meetsGoal"], false, "7.5 % below");
        assert_eq!(placement_comparison(0.80, 0.86)["meetsGoal"], false, "7.5 % above");
    }

    #[test]
    fn the_table_shows_each_shapes_rounds_and_pooled_p99_with_the_ratios() {
        let side = |rps: f64, p99: f64, pooled: Option<f64>| {
            let mut v = json!({"rps": {"median": rps, "min": rps - 1000.0, "max": rps + 1000.0},
                "p99Ms": {"median": p99, "min": p99 / 2.0, "max": p99 * 4.0}, "listenOverflows": (p99 as u64) % 100});
            if let Some(p) = pooled {
                v["pooled"] = json!({"p99Ms": p});
            }
            v
        };
        let shapes = [
            json!({"shape": "1000", "herd": side(56_500.0, 137.0, Some(301.5)), "haproxy": side(43_300.0, 29.6, Some(312.25)),
                "rpsRatio": 1.3048, "p99Ratio": 4.628, "p99PooledRatio": 0.9656, "cpuPerRequestRatio": 0.76}),
            json!({"shape": "64:close", "herd": side(14_700.0, 7.97, None), "haproxy": side(14_200.0, 8.04, None),
                "rpsRatio": 1.034, "p99Ratio": 0.991, "p99PooledRatio": null, "cpuPerRequestRatio": 0.97}),
        ];
        let t = shape_table(Placement::Loopback, &shapes);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].contains("loopback backends"));
        assert!(lines[1].starts_with("SHAPE") && lines[1].contains("HERD P99 MS POOLED"));
        for cell in ["56.5 (55.5-57.5)", "137.00 (68.50-548.00)", "301.50", "312.25", "1.30 4.63 0.97 0.76", "37/29"] {
            assert!(lines[2].contains(cell), "{cell} in {}", lines[2]);
        }
        assert!(lines[3].contains("1.03 0.99 - 0.97"), "no histograms: no pooled figure: {}", lines[3]);
        assert!(lines[2].ends_with("37/29") && lines[3].ends_with("7/8"), "{t}");
        assert_eq!(lines[2].find("56.5"), lines[3].find("14.7"), "aligned:\n{t}");
    }

    #[test]
    fn the_inner_bench_keeps_the_placements() {
        let o = Options {
            duration: 2,
            rounds: 1,
            shapes: vec![Shape { connections: 64, keep_alive: true }],
            in_place: false,
            inside: None,
            lb_cpu: None,
            lb_cgroups: None,
            backends: vec![Placement::Loopback, Placement::Bridged],
        };
        assert_eq!(
            o.inner_args(Some("1".into()), None).join(" "),
            "bench lb --duration 2 --rounds 1 --inside --load-cpus=1 --shape 64 --backends loopback --backends bridged"
        );
    }
}
