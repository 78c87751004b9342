//! `herd bench qemu`: real VMs under QEMU (TCG), next to hand-run QEMU boots of the same image.
//!
//! An in-process server with the qemu driver runs herd's test guest (`images/testguest`: a
//! kernel and a busybox initramfs with the guest agent). Three measurements:
//!
//! 1. **Control-plane overhead**: from the create `PUT` returning to each VM's QEMU process
//!    existing. A thread scans `/proc` every millisecond for `qemu-system*` processes whose argv
//!    holds the server's instance root, and stops as soon as it has seen every VM of the set (so
//!    it does not compete with the booting guests for the CPUs).
//! 2. **API call → app answering** for a scale set of N (overprovisioning off): from sending the
//!    `PUT` to HTTP 200 on `http://<reachAddress>:80/` from every instance. The model carries a
//!    Custom Script extension that starts `busybox httpd` on port 80: the test guest only runs a
//!    plain `#!` script or `#cloud-config` as user-data, and herd's seed wraps `customData` in a
//!    MIME multipart document (as cloud-init expects), so on this guest an extension is how herd
//!    starts an app. The floor is N hand-run QEMUs started in parallel (same kernel, initrd,
//!    command line, vCPUs and memory as the SKU; TCG; user networking with a host forward on a
//!    free 127.64.x.y; a NoCloud seed), timed from spawn to HTTP 200, two ways: the app started
//!    by the guest's own user-data script at boot (the fastest any tool can be with this image),
//!    and the app started through the guest agent once it answers (herd's mechanism, by hand).
//! 3. **QEMU memory beyond the guest**: each QEMU's `VmRSS` after the app answers, minus the
//!    resident pages of its guest-RAM mapping (`/proc/<pid>/smaps`), and minus what the guest
//!    uses (configured memory − `MemFree` from the guest's `/proc/meminfo`, read through the
//!    guest agent). The two differ by the pages the guest touched once and freed since (the
//!    initramfs unpacking), which stay resident without a free-page-reporting balloon.
//!
//! A shared machine skews all of this, so each run also records how much CPU other processes
//! (not this one, not the run's QEMUs) used meanwhile; rounds where that stayed low are
//! summarised apart as "quiet". Each run first waits (boundedly) for the machine to calm down.
//!
//! Every wait has a deadline; all traffic goes to 127.0.0.0/8. Each set is deleted (and its
//! QEMUs awaited) after its run; on the way out, also after an error, the server is stopped,
//! every QEMU whose argv names the benchmark's temporary directory killed, and the directory
//! removed.

use crate::{Driver, Launch, ServerSpec};
use anyhow::{anyhow, bail, Context, Result};
use herd_client::{set_path, Client};
use herd_driver_qemu::qga::Qga;
use herd_driver_qemu::seed::{self, SeedFiles, UserDataInput};
use herd_model::sku::{SkuSize, SkuTable};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GROUP: &str = "bench";
const IMAGE_URN: &str = "Herd:TestGuest:1:1.0.0";
const APP_PORT: u16 = 80;
/// Starts the app in the guest: busybox httpd serving one file. Its standard streams go to
/// /dev/null so a guest-agent exec (which captures output until the streams close) returns.
const APP_CMD: &str =
    "mkdir -p /tmp/www && echo ok >/tmp/www/index.html && httpd -p 80 -h /tmp/www </dev/null >/dev/null 2>&1";
/// Bound on one VM (or set) from the API call to its app answering.
const BOOT_DEADLINE: Duration = Duration::from_secs(240);
/// Bound on the `/proc` watch for a set's QEMU processes.
const SPAWN_DEADLINE: Duration = Duration::from_secs(60);
const PROC_POLL: Duration = Duration::from_millis(1);
const ADDR_POLL: Duration = Duration::from_millis(20);
/// A new HTTP attempt this often (see [`wait_http`]); each has [`PROBE_TIMEOUT`].
const PROBE_EVERY: Duration = Duration::from_millis(25);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_PROBES: usize = 40;
const LIST_POLL: Duration = Duration::from_millis(50);
/// A run starts once all CPUs together are less busy than this over a second...
const QUIET_BUSY: f64 = 0.15;
/// ...or after this long.
const QUIET_WAIT: Duration = Duration::from_secs(120);
/// A round counts as quiet when other processes used less than this share of all CPUs during
/// each of its runs.
const QUIET_SHARE: f64 = 0.10;
/// The goal for the control-plane overhead.
const SPAWN_GOAL_MS: f64 = 100.0;

/// What `herd bench qemu` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub rounds: u32,
    pub counts: Vec<u32>,
    pub testguest: PathBuf,
    pub sku: String,
    pub json: bool,
}

/// The test guest's boot files.
#[derive(Debug, Clone)]
pub(crate) struct Guest {
    pub(crate) kernel: PathBuf,
    pub(crate) initrd: PathBuf,
    pub(crate) cmdline: String,
}

impl Guest {
    /// `dir` is the build's output (`OUT`, using `OUT/1.0.0`) or a version directory itself.
    pub(crate) fn find(dir: &Path) -> Result<Guest> {
        let d = if dir.join("vmlinuz").exists() { dir.to_path_buf() } else { dir.join("1.0.0") };
        let hint = "build the test guest first: images/testguest/build.sh OUT (then --testguest OUT)";
        let file = |name: &str| -> Result<PathBuf> {
            let p = d.join(name);
            p.canonicalize().with_context(|| format!("{}: {hint}", p.display()))
        };
        let kernel = file("vmlinuz")?;
        let initrd = file("initrd.img")?;
        let cmdline = std::fs::read_to_string(file("cmdline")?)?.trim().to_string();
        Ok(Guest { kernel, initrd, cmdline })
    }
}

/// The distinct parent directories of `files`, as a TOML array of strings.
pub(crate) fn toml_paths(files: &[&Path]) -> String {
    let mut dirs: Vec<String> =
        files.iter().filter_map(|f| f.parent()).map(|d| format!("{:?}", d.display().to_string())).collect();
    dirs.dedup();
    format!("[{}]", dirs.join(", "))
}

/// Kills every QEMU whose argv names the benchmark's directory (herd's VMs and the hand-run
/// ones), so a benchmark that fails half-way leaves no VM behind.
pub(crate) struct KillQemus(pub(crate) String);

impl Drop for KillQemus {
    fn drop(&mut self) {
        for (pid, _) in qemu_processes(&self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Live `qemu-system*` processes whose argv contains `needle`, with their argv.
pub(crate) fn qemu_processes(needle: &str) -> Vec<(u32, Vec<String>)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        // `comm` is short and cheap; only QEMU's argv is read.
        match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
            Ok(c) if c.starts_with("qemu-system") => {}
            _ => continue,
        }
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let argv: Vec<String> =
            raw.split(|b| *b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect();
        if argv.iter().any(|a| a.contains(needle)) {
            out.push((pid, argv));
        }
    }
    out
}

/// The value after `flag` in `argv`.
fn arg_after<'a>(argv: &'a [String], flag: &str) -> Option<&'a str> {
    argv.windows(2).find(|w| w[0] == flag).map(|w| w[1].as_str())
}

/// The instance key (`group/set/id`) in herd's `-name herd:<tag id>:<key>` marker.
pub(crate) fn marker_key(argv: &[String]) -> Option<String> {
    arg_after(argv, "-name").and_then(|n| n.splitn(3, ':').nth(2)).map(String::from)
}

/// The path of a chardev in QEMU's argv, e.g. `socket,id=qga0,path=` → the agent socket.
pub(crate) fn chardev_path(argv: &[String], prefix: &str) -> Option<PathBuf> {
    argv.iter()
        .filter_map(|a| a.strip_prefix(prefix))
        .map(|rest| {
            // Commas inside a QEMU option value are doubled.
            let mut out = String::new();
            let mut chars = rest.chars().peekable();
            while let Some(c) = chars.next() {
                if c == ',' {
                    if chars.peek() == Some(&',') {
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(c);
            }
            PathBuf::from(out)
        })
        .next()
}

pub(crate) const QGA_CHARDEV: &str = "socket,id=qga0,path=";
const CONSOLE_CHARDEV: &str = "file,id=serial0,path=";

/// The guest's uptime when it printed `HERD-GUEST-READY` on the console (the last boot's).
fn ready_uptime(console: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(console).ok()?;
    let line = text.lines().rev().find(|l| l.contains("HERD-GUEST-READY"))?;
    line.split_whitespace().find_map(|w| w.strip_prefix("uptime="))?.parse().ok()
}

/// A thread that records when each QEMU of a set first appears in `/proc`.
struct SpawnWatch {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<HashMap<String, Instant>>,
}

impl SpawnWatch {
    /// Watches for processes whose argv contains `needle` and whose marker key starts with
    /// `key_prefix`, until `expect` were seen, [`SPAWN_DEADLINE`] passed or [`Self::finish`].
    fn start(needle: String, key_prefix: String, expect: usize) -> SpawnWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let deadline = Instant::now() + SPAWN_DEADLINE;
        let handle = std::thread::spawn(move || {
            let mut seen: HashMap<String, Instant> = HashMap::new();
            while !stop2.load(Ordering::Relaxed) && seen.len() < expect && Instant::now() < deadline {
                for (_, argv) in qemu_processes(&needle) {
                    let now = Instant::now();
                    if let Some(k) = marker_key(&argv).filter(|k| k.starts_with(&key_prefix)) {
                        seen.entry(k).or_insert(now);
                    }
                }
                std::thread::sleep(PROC_POLL);
            }
            seen
        });
        SpawnWatch { stop, handle }
    }

    fn finish(self) -> HashMap<String, Instant> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// Polls `url` until it answers 200; returns when the first 200 arrived.
///
/// Attempts overlap: a new one starts every [`PROBE_EVERY`] while earlier ones are pending.
/// Through QEMU user networking a connection made before the guest listens is accepted on the
/// host side and then hangs (the forwarded SYN is lost while the guest boots), so one attempt
/// at a time would measure in steps of the request timeout.
async fn wait_http(http: &reqwest::Client, url: String, deadline: Instant) -> Result<Instant> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let probe = |url: String| async move {
        matches!(http.get(&url).send().await, Ok(r) if r.status() == reqwest::StatusCode::OK)
    };
    let mut inflight = FuturesUnordered::new();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if Instant::now() >= deadline {
                    bail!("{url} did not answer 200 in time");
                }
                if inflight.len() < MAX_PROBES {
                    inflight.push(probe(url.clone()));
                }
            }
            Some(ok) = inflight.next(), if !inflight.is_empty() => {
                if ok {
                    return Ok(Instant::now());
                }
            }
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// `b - a` in milliseconds, negative when `b` came first.
fn signed_ms(a: Instant, b: Instant) -> f64 {
    match b.checked_duration_since(a) {
        Some(d) => d.as_secs_f64() * 1000.0,
        None => -(a.duration_since(b).as_secs_f64() * 1000.0),
    }
}

fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let pos = (s.len() - 1) as f64 * q;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

fn min_max(v: &[f64]) -> (f64, f64) {
    (v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(f64::NEG_INFINITY, f64::max))
}

/// One VM after its app answered: QEMU's memory and the guest's boot time.
#[derive(Debug, Clone, Default)]
struct AfterBoot {
    rss_kib: u64,
    guest_mib: u64,
    /// Resident pages of the guest-RAM mapping (`/proc/<pid>/smaps`: the anonymous mapping
    /// exactly the size of the guest's memory).
    guest_ram_rss_kib: Option<u64>,
    /// Resident pages of TCG's translated-code buffer (the anonymous mapping of just under 1 GiB).
    tcg_buffer_rss_kib: Option<u64>,
    /// The guest's `/proc/meminfo` (kB), when the agent answered.
    mem_total_kib: Option<u64>,
    mem_free_kib: Option<u64>,
    mem_available_kib: Option<u64>,
    /// The guest's uptime (s) at `HERD-GUEST-READY` on its console.
    ready_uptime_s: Option<f64>,
}

impl AfterBoot {
    /// RSS minus the guest memory the guest uses (configured − MemFree), in MiB.
    fn beyond_guest_used_mib(&self) -> Option<f64> {
        self.mem_free_kib.map(|free| (self.rss_kib as f64 - (self.guest_mib * 1024) as f64 + free as f64) / 1024.0)
    }

    /// RSS minus the resident guest RAM (what QEMU itself holds), in MiB.
    fn beyond_guest_ram_mib(&self) -> Option<f64> {
        self.guest_ram_rss_kib.map(|g| (self.rss_kib as f64 - g as f64) / 1024.0)
    }

    fn to_json(&self) -> Value {
        json!({
            "rssKiB": self.rss_kib, "guestMemoryMiB": self.guest_mib,
            "guestRamResidentKiB": self.guest_ram_rss_kib, "tcgBufferResidentKiB": self.tcg_buffer_rss_kib,
            "guestMemTotalKiB": self.mem_total_kib, "guestMemFreeKiB": self.mem_free_kib,
            "guestMemAvailableKiB": self.mem_available_kib,
            "beyondGuestUsedMiB": self.beyond_guest_used_mib(), "beyondGuestRamMiB": self.beyond_guest_ram_mib(),
            "guestReadyUptimeSeconds": self.ready_uptime_s,
        })
    }
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Each mapping of `smaps` text: (size kB, Rss kB, anonymous).
fn smaps_mappings(text: &str) -> Vec<(u64, u64, bool)> {
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    let kb = |l: &str| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        let is_header = first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        if is_header {
            out.push((0, 0, line.split_whitespace().nth(5).is_none()));
        } else if let Some(last) = out.last_mut() {
            if line.starts_with("Size:") {
                last.0 = kb(line);
            } else if line.starts_with("Rss:") {
                last.1 = kb(line);
            }
        }
    }
    out
}

/// (guest RAM resident, TCG code buffer resident) in kB, from `smaps` text.
fn guest_ram_and_tcg(text: &str, guest_mib: u64) -> (Option<u64>, Option<u64>) {
    let maps = smaps_mappings(text);
    let guest_kib = guest_mib * 1024;
    let ram = maps.iter().find(|(size, _, anon)| *anon && *size == guest_kib).map(|m| m.1);
    let tcg = maps
        .iter()
        .find(|(size, _, anon)| *anon && *size != guest_kib && (1024 * 1024 - 1024..=1024 * 1024).contains(size))
        .map(|m| m.1);
    (ram, tcg)
}

/// The guest's `/proc/meminfo`, through the agent.
async fn guest_meminfo(sock: &Path) -> Result<HashMap<String, u64>> {
    let qga = Qga::wait_ready(sock, Duration::from_secs(20)).await?;
    let st = qga.run("/bin/cat", &["/proc/meminfo"], &[] as &[&str], None, Duration::from_secs(10)).await?;
    if !st.success() {
        bail!("cat /proc/meminfo in the guest failed: {}", String::from_utf8_lossy(&st.stderr));
    }
    Ok(String::from_utf8_lossy(&st.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.split_whitespace().next()?.parse().ok()?))
        })
        .collect())
}

async fn after_boot(pid: u32, sock: Option<&Path>, console: Option<&Path>, guest_mib: u64) -> AfterBoot {
    let info = match sock {
        Some(s) => guest_meminfo(s).await.map_err(|e| tracing::warn!(error = %e, "no guest meminfo")).ok(),
        None => None,
    };
    // Read after the agent call, so both describe the same moment as closely as possible.
    let rss_kib = vm_rss_kib(pid).unwrap_or(0);
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (guest_ram_rss_kib, tcg_buffer_rss_kib) = guest_ram_and_tcg(&smaps, guest_mib);
    let get = |k: &str| info.as_ref().and_then(|m| m.get(k).copied());
    AfterBoot {
        rss_kib,
        guest_mib,
        guest_ram_rss_kib,
        tcg_buffer_rss_kib,
        mem_total_kib: get("MemTotal"),
        mem_free_kib: get("MemFree"),
        mem_available_kib: get("MemAvailable"),
        ready_uptime_s: console.and_then(ready_uptime),
    }
}

/// One herd scale set of N, from the API call to every app answering.
#[derive(Debug)]
struct HerdRun {
    round: u32,
    n: u32,
    /// The machine's busy fraction (all CPUs) in the second before the run.
    busy_before: f64,
    /// CPU time of this process (the in-process server and the benchmark's own polling) from
    /// the API call until every app answered.
    cpu_s: f64,
    /// The share of all CPUs' time other processes (not this one, not the run's QEMUs) used
    /// during the run: interference from the rest of the machine.
    others_share: f64,
    put_ms: f64,
    /// PUT returned → QEMU process exists, per VM (ms); VMs never seen are missing.
    spawn_ms: Vec<f64>,
    /// PUT sent → instance state Running (guest agent answered), per VM (s).
    running_s: Vec<f64>,
    /// PUT sent → HTTP 200, per VM (s).
    app_s: Vec<f64>,
    mem: Vec<AfterBoot>,
}

/// N hand-run QEMUs started together.
#[derive(Debug)]
struct HandRun {
    round: u32,
    n: u32,
    busy_before: f64,
    /// CPU time of this process (the benchmark's polling) from spawn until every app answered.
    cpu_s: f64,
    /// The share of all CPUs' time other processes (not this one, not the run's QEMUs) used
    /// during the run: interference from the rest of the machine.
    others_share: f64,
    via: Via,
    /// Spawn → the agent answered (agent variant only), per VM (s).
    agent_s: Vec<f64>,
    /// Spawn of the first → HTTP 200, per VM (s).
    app_s: Vec<f64>,
    mem: Vec<AfterBoot>,
}

/// How a hand-run guest starts the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// A `#!` user-data script in the seed, run by the guest at boot.
    UserData,
    /// `guest-exec` through the guest agent once it answers.
    Agent,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::UserData => "user-data",
            Via::Agent => "agent",
        }
    }
}

struct Ctx {
    client: Client,
    http: reqwest::Client,
    tmp: PathBuf,
    /// The driver's instance root, as it appears in QEMU's argv.
    vms_root: String,
    guest: Guest,
    sku: String,
    size: SkuSize,
    /// The next hand-run forward address is 127.64.x.y from this counter.
    next_addr: u32,
}

impl Ctx {
    fn model(&self, n: u32) -> Value {
        json!({
            "sku": {"name": self.sku, "capacity": n},
            "overprovision": false,
            "upgradePolicy": {"mode": "Manual"},
            "virtualMachineProfile": {
                "osProfile": {"computerNamePrefix": "bq", "adminUsername": "bench"},
                "storageProfile": {"imageReference": {"publisher": "Herd", "offer": "TestGuest", "sku": "1", "version": "1.0.0"}},
                "extensionProfile": {"extensions": [{"name": "app", "properties": {
                    "publisher": "Herd.Extensions", "type": "CustomScript", "typeHandlerVersion": "2.0",
                    "settings": {"commandToExecute": APP_CMD}}}]}
            }
        })
    }

    /// A loopback address nobody listens on at the app port (outside herd's 127.128.0.0/9).
    fn free_address(&mut self) -> Result<Ipv4Addr> {
        for _ in 0..1000 {
            self.next_addr += 1;
            let a = Ipv4Addr::new(127, 64, (self.next_addr / 250) as u8, (self.next_addr % 250 + 1) as u8);
            if std::net::TcpListener::bind((a, APP_PORT)).is_ok() {
                return Ok(a);
            }
        }
        bail!("no free 127.64.x.y address for the hand-run QEMU")
    }

    async fn instances(&self, list: &str) -> Result<Vec<Value>> {
        Ok(self.client.get(list).await?.as_array().cloned().unwrap_or_default())
    }

    async fn herd_run(&self, round: u32, n: u32) -> Result<HerdRun> {
        let name = format!("r{round}-n{n}");
        let path = set_path(GROUP, &name);
        let list = format!("{path}/virtualMachines");
        let watch = SpawnWatch::start(self.vms_root.clone(), format!("{GROUP}/{name}/"), n as usize);
        let meter = CpuMeter::start();
        let t0 = Instant::now();
        let put = self.client.call(reqwest::Method::PUT, &path, Some(&self.model(n)), &[("If-None-Match", "*")]).await;
        let t_put = Instant::now();
        if let Err(e) = put {
            watch.finish();
            return Err(e);
        }
        let deadline = t0 + BOOT_DEADLINE;
        let result = self.herd_wait(&list, n, t0, deadline).await;
        let set_qemus: Vec<u32> =
            qemu_processes(&format!("{}/{GROUP}/{name}/", self.vms_root)).into_iter().map(|(p, _)| p).collect();
        let (cpu_s, others_share) = meter.finish(&set_qemus);
        let spawned = watch.finish();
        let (running, apps) = result?;
        let mut spawn_ms: Vec<f64> = spawned.values().map(|t| signed_ms(t_put, *t)).collect();
        spawn_ms.sort_by(f64::total_cmp);
        if spawn_ms.len() < n as usize {
            tracing::warn!(seen = spawn_ms.len(), n, "not every QEMU was seen by the /proc watch");
        }

        // Memory, once the extension is done with the agent.
        loop {
            let inst = self.instances(&list).await?;
            let states: Vec<&str> = inst.iter().map(|i| i["extensions"][0]["state"].as_str().unwrap_or("")).collect();
            if let Some(i) = inst.iter().find(|i| i["extensions"][0]["state"] == "Failed") {
                bail!("the app extension failed: {}", i["extensions"][0]);
            }
            if states.len() == n as usize && states.iter().all(|s| *s == "Succeeded") {
                break;
            }
            if Instant::now() > deadline {
                bail!("the app extension did not finish: {states:?}");
            }
            tokio::time::sleep(LIST_POLL).await;
        }
        let mut mem = Vec::new();
        for (pid, argv) in qemu_processes(&format!("{}/{GROUP}/{name}/", self.vms_root)) {
            mem.push(
                after_boot(
                    pid,
                    chardev_path(&argv, QGA_CHARDEV).as_deref(),
                    chardev_path(&argv, CONSOLE_CHARDEV).as_deref(),
                    self.size.memory_mib,
                )
                .await,
            );
        }

        // Delete, and wait until the VMs are gone so the next run has the CPUs.
        let what = format!("deleting {name}");
        let t = Instant::now();
        crate::delete_and_wait(&self.client, &path, Duration::from_secs(120), LIST_POLL, &what).await?;
        while !qemu_processes(&format!("{}/{GROUP}/{name}/", self.vms_root)).is_empty() {
            if t.elapsed() > Duration::from_secs(120) {
                bail!("QEMU processes of {name} still run after the delete");
            }
            tokio::time::sleep(LIST_POLL).await;
        }
        Ok(HerdRun {
            round,
            n,
            busy_before: 0.0,
            cpu_s,
            others_share,
            put_ms: secs(t_put - t0) * 1000.0,
            spawn_ms,
            running_s: running.iter().map(|t| secs(*t - t0)).collect(),
            app_s: apps.iter().map(|t| secs(*t - t0)).collect(),
            mem,
        })
    }

    /// Waits for the set's instances to be Running and their apps to answer; returns when
    /// each did (Running times, answer times).
    async fn herd_wait(
        &self,
        list: &str,
        n: u32,
        t0: Instant,
        deadline: Instant,
    ) -> Result<(Vec<Instant>, Vec<Instant>)> {
        let addrs: Vec<String> = loop {
            let inst = self.instances(list).await?;
            let a: Vec<String> = inst
                .iter()
                .filter_map(|i| i["reachAddress"].as_str().filter(|s| !s.is_empty()).map(String::from))
                .collect();
            if a.len() >= n as usize {
                break a;
            }
            if Instant::now() > deadline {
                bail!("the set did not list {n} instances with addresses in time");
            }
            tokio::time::sleep(ADDR_POLL).await;
        };
        let probes = futures::future::try_join_all(
            addrs.iter().map(|a| wait_http(&self.http, format!("http://{a}:{APP_PORT}/"), deadline)),
        );
        let states = async {
            let mut running: HashMap<String, Instant> = HashMap::new();
            loop {
                let now = Instant::now();
                for i in self.instances(list).await? {
                    if i["state"] == "Running" {
                        running.entry(i["instanceId"].as_str().unwrap_or_default().to_string()).or_insert(now);
                    }
                    if i["state"] == "Failed" {
                        bail!("instance failed: {}", i);
                    }
                }
                if running.len() >= n as usize {
                    return anyhow::Ok(running.into_values().collect::<Vec<_>>());
                }
                if Instant::now() > deadline {
                    bail!("only {} of {n} instances Running after {:?}", running.len(), t0.elapsed());
                }
                tokio::time::sleep(LIST_POLL).await;
            }
        };
        let (apps, running) = tokio::try_join!(probes, states)?;
        Ok((running, apps))
    }

    async fn hand_run(&mut self, round: u32, n: u32, via: Via) -> Result<HandRun> {
        let base = self.tmp.join(format!("hand-r{round}-n{n}-{}", via.name()));
        struct Vm {
            dir: PathBuf,
            addr: Ipv4Addr,
            args: Vec<String>,
        }
        let mut vms = Vec::new();
        for i in 0..n {
            let dir = base.join(i.to_string());
            std::fs::create_dir_all(&dir)?;
            let host = format!("hand{i}");
            let user_data = match via {
                Via::UserData => format!("#!/bin/sh\n{APP_CMD}\n"),
                Via::Agent => seed::user_data(&UserDataInput {
                    admin_username: "bench",
                    password_hash: None,
                    ssh_keys: &[],
                    custom_data: None,
                    hostname: &host,
                }),
            };
            let files = SeedFiles {
                meta_data: seed::meta_data(&format!("hand-{round}-{n}-{i}"), &host),
                user_data,
                network_config: None,
            };
            seed::write_seed(&dir.join("seed.img"), &files)?;
            let addr = self.free_address()?;
            let args = self.hand_args(&dir, addr);
            vms.push(Vm { dir, addr, args });
        }
        let qemu = herd_driver_qemu::DEFAULT_QEMU;
        let meter = CpuMeter::start();
        let t0 = Instant::now();
        let mut children = Vec::new();
        for vm in &vms {
            let err = std::fs::File::create(vm.dir.join("qemu.err"))?;
            let child = tokio::process::Command::new(qemu)
                .args(&vm.args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(err)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {qemu}"))?;
            children.push(child);
        }
        let deadline = t0 + BOOT_DEADLINE;
        let http = &self.http;
        let boots = futures::future::try_join_all(vms.iter().map(|vm| async move {
            let sock = vm.dir.join("qga.sock");
            let mut agent = None;
            if via == Via::Agent {
                let left = deadline.saturating_duration_since(Instant::now());
                let qga = Qga::wait_ready(&sock, left).await.map_err(|e| anyhow!("hand-run guest agent: {e}"))?;
                agent = Some(Instant::now());
                let st = qga
                    .run("/bin/sh", &["-c", APP_CMD], &[] as &[&str], None, Duration::from_secs(30))
                    .await
                    .map_err(|e| anyhow!("starting the app through the agent: {e}"))?;
                if !st.success() {
                    bail!("the app command failed in the guest: {}", String::from_utf8_lossy(&st.stderr));
                }
            }
            let app = wait_http(http, format!("http://{}:{APP_PORT}/", vm.addr), deadline).await?;
            anyhow::Ok((agent, app))
        }));
        // A QEMU that exits (a port taken, a bad argument) fails the run at once.
        let exited = async {
            loop {
                for (vm, c) in vms.iter().zip(children.iter_mut()) {
                    if let Ok(Some(st)) = c.try_wait() {
                        let why = std::fs::read_to_string(vm.dir.join("qemu.err")).unwrap_or_default();
                        return anyhow!("hand-run QEMU exited ({st}): {}", why.trim());
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        let times = tokio::select! {
            r = boots => r?,
            e = exited => return Err(e),
        };
        let pids: Vec<u32> = children.iter().filter_map(|c| c.id()).collect();
        let (cpu_s, others_share) = meter.finish(&pids);
        let mut mem = Vec::new();
        for (vm, c) in vms.iter().zip(&children) {
            if let Some(pid) = c.id() {
                mem.push(
                    after_boot(
                        pid,
                        Some(&vm.dir.join("qga.sock")),
                        Some(&vm.dir.join("console.log")),
                        self.size.memory_mib,
                    )
                    .await,
                );
            }
        }
        for mut c in children {
            let _ = c.kill().await;
        }
        let _ = std::fs::remove_dir_all(&base);
        Ok(HandRun {
            round,
            n,
            busy_before: 0.0,
            cpu_s,
            others_share,
            via,
            agent_s: times.iter().filter_map(|(a, _)| a.map(|a| secs(a - t0))).collect(),
            app_s: times.iter().map(|(_, a)| secs(*a - t0)).collect(),
            mem,
        })
    }

    /// What a person would type: the same kernel, initrd, command line, vCPUs and memory as
    /// herd's VM, TCG, the seed as a virtio disk, the agent channel, user networking with one
    /// host forward. (herd's VM also has an empty OS disk and a QMP socket.)
    fn hand_args(&self, dir: &Path, addr: Ipv4Addr) -> Vec<String> {
        let netdev = format!("user,id=net0,hostfwd=tcp:{addr}:{APP_PORT}-:{APP_PORT}");
        hand_qemu_args(&self.guest, &self.size, dir, &netdev, "virtio-net-pci,netdev=net0")
    }
}

/// A hand-run QEMU of the test guest: `guest`'s kernel, initrd and command line, `size`'s
/// vCPUs and memory, TCG, `dir/seed.img` as a virtio disk, the agent channel on
/// `dir/qga.sock`, the console in `dir/console.log`, and one NIC: `-netdev netdev -device nic`.
pub(crate) fn hand_qemu_args(guest: &Guest, size: &SkuSize, dir: &Path, netdev: &str, nic: &str) -> Vec<String> {
    let p = |name: &str| dir.join(name).display().to_string();
    let g = guest;
    [
        "-name",
        "herd-bench-hand",
        "-machine",
        "pc",
        "-accel",
        "tcg,thread=multi",
        "-smp",
        &size.vcpus.to_string(),
        "-m",
        &size.memory_mib.to_string(),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-chardev",
        &format!("file,id=serial0,path={}", p("console.log")),
        "-serial",
        "chardev:serial0",
        "-device",
        "virtio-serial-pci,id=vser0",
        "-chardev",
        &format!("socket,id=qga0,path={},server=on,wait=off", p("qga.sock")),
        "-device",
        "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
        "-drive",
        &format!("file={},if=none,id=seed,format=raw,readonly=on", p("seed.img")),
        "-device",
        "virtio-blk-pci,drive=seed",
        "-netdev",
        netdev,
        "-device",
        nic,
        "-device",
        "virtio-rng-pci",
        "-kernel",
        &g.kernel.display().to_string(),
        "-initrd",
        &g.initrd.display().to_string(),
        "-append",
        &g.cmdline,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Runs the benchmark and prints a table and a JSON summary (only the JSON with `--json`).
pub async fn run(launch: &dyn Launch, opts: Options) -> Result<()> {
    if opts.rounds == 0 || opts.counts.is_empty() || opts.counts.contains(&0) {
        bail!("--rounds and every --counts value must be at least 1");
    }
    let guest = Guest::find(&opts.testguest)?;
    let skus = SkuTable::default();
    let (sku, size) = skus.resolve("--sku", &opts.sku).map_err(|e| anyhow!("{}", e.message))?;
    let sku = sku.to_string();
    if !Path::new(herd_driver_qemu::DEFAULT_QEMU).exists() {
        bail!("{} is missing (apt-get install qemu-system-x86)", herd_driver_qemu::DEFAULT_QEMU);
    }
    let tmp = tempfile::Builder::new().prefix("herd-bench-qemu-").tempdir()?;
    let tmp_path = tmp.path().canonicalize()?;
    let _kill = KillQemus(tmp_path.display().to_string());
    let data = tmp_path.join("data");
    let config = tmp_path.join("herd.toml");
    // Up to 42 small VMs on this machine: vCPUs overcommitted as far as the bench needs.
    let host = launch.host();
    std::fs::write(
        &config,
        format!(
            "[qemu]\nboot_timeout_secs = 240\nstop_timeout_secs = 10\n\n[images]\nimport_roots = {}\n\n[[hosts]]\nname = \"bench\"\nvcpus = {}\nmemory_mib = {}\novercommit = 16.0\n",
            // The server reads the test guest's kernel and initrd where they are.
            toml_paths(&[&guest.kernel, &guest.initrd]),
            host.vcpus.max(8),
            host.memory_mib
        ),
    )?;
    let mut server =
        launch.start(ServerSpec { data_dir: data.clone(), driver: Driver::Qemu, config: Some(config) }).await?;
    let client = server.client()?;
    let http = reqwest::Client::builder().no_proxy().timeout(PROBE_TIMEOUT).pool_max_idle_per_host(0).build()?;
    let mut ctx = Ctx {
        client,
        http,
        tmp: tmp_path.clone(),
        vms_root: data.join("vms").display().to_string(),
        guest,
        sku,
        size,
        next_addr: 0,
    };
    let result = measure(&mut ctx, &opts).await;
    server.stop().await;
    let (herd, hand) = result?;
    report(&ctx, &opts, &herd, &hand);
    Ok(())
}

async fn measure(ctx: &mut Ctx, opts: &Options) -> Result<(Vec<HerdRun>, Vec<HandRun>)> {
    let g = &ctx.guest;
    ctx.client.put(&format!("/v1/resourceGroups/{GROUP}"), &json!({})).await?;
    ctx.client
        .put(&format!("/v1/images/{IMAGE_URN}"), &json!({"kernel": g.kernel, "initrd": g.initrd, "cmdline": g.cmdline}))
        .await?;
    let mut herd = Vec::new();
    let mut hand = Vec::new();
    for round in 1..=opts.rounds {
        for &n in &opts.counts {
            // herd first in odd rounds, last in even ones, so a drift in the machine's speed
            // does not always favour the same side.
            let herd_first = round % 2 == 1;
            if herd_first {
                herd.push(one_herd_run(ctx, round, n).await?);
            }
            for via in [Via::UserData, Via::Agent] {
                let busy = wait_quiet().await;
                eprintln!(
                    "round {round}, N={n}: hand-run QEMU, app via {} (machine busy {:.0} % before)",
                    via.name(),
                    busy * 100.0
                );
                let mut r = ctx.hand_run(round, n, via).await.with_context(|| format!("round {round}, hand, N={n}"))?;
                r.busy_before = busy;
                eprintln!("  all apps answer after {:.2} s", max(&r.app_s));
                hand.push(r);
            }
            if !herd_first {
                herd.push(one_herd_run(ctx, round, n).await?);
            }
        }
    }
    Ok((herd, hand))
}

async fn one_herd_run(ctx: &Ctx, round: u32, n: u32) -> Result<HerdRun> {
    let busy = wait_quiet().await;
    eprintln!("round {round}, N={n}: herd (machine busy {:.0} % before)", busy * 100.0);
    let mut h = ctx.herd_run(round, n).await.with_context(|| format!("round {round}, herd, N={n}"))?;
    h.busy_before = busy;
    eprintln!("  all apps answer after {:.2} s", max(&h.app_s));
    Ok(h)
}

/// User + system CPU time of a process so far, in seconds (`/proc/<pid>/stat`, 100 ticks/s).
fn proc_cpu_s(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let f: Vec<u64> = after.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // After the command name: state is field 3, utime 14, stime 15.
    (f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0)) as f64 / 100.0
}

/// Who used the CPUs during a run: this process (the in-process server and the benchmark's
/// polling), the run's QEMUs, and everyone else on the machine.
struct CpuMeter {
    self0: f64,
    jiffies0: Option<(u64, u64)>,
}

impl CpuMeter {
    fn start() -> CpuMeter {
        CpuMeter { self0: proc_cpu_s("self"), jiffies0: cpu_jiffies() }
    }

    /// (this process's CPU seconds, the share of all CPUs' time used by other processes than
    /// this one and `qemus`). QEMUs are counted over their whole life (they started in the run).
    fn finish(&self, qemus: &[u32]) -> (f64, f64) {
        let own = proc_cpu_s("self") - self.self0;
        let vms: f64 = qemus.iter().map(|p| proc_cpu_s(&p.to_string())).sum();
        let others = match (self.jiffies0, cpu_jiffies()) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                ((b1 - b0) as f64 / 100.0 - own - vms).max(0.0) / ((t1 - t0) as f64 / 100.0)
            }
            _ => f64::NAN,
        };
        (own, others)
    }
}

/// Busy and total jiffies of all CPUs (`/proc/stat`).
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

/// Waits (at most [`QUIET_WAIT`]) until the machine is nearly idle, so a run does not share
/// the CPUs with someone else's work; returns the busy fraction of the last second.
async fn wait_quiet() -> f64 {
    let start = Instant::now();
    let mut warned = false;
    loop {
        let a = cpu_jiffies();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let busy = match (a, cpu_jiffies()) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0) as f64 / (t1 - t0) as f64,
            _ => 0.0,
        };
        if busy < QUIET_BUSY || start.elapsed() > QUIET_WAIT {
            return busy;
        }
        if !warned {
            eprintln!("  waiting for the machine to calm down ({:.0} % busy)", busy * 100.0);
            warned = true;
        }
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn mem_summary(samples: &[&AfterBoot]) -> Value {
    let mib = |f: &dyn Fn(&AfterBoot) -> Option<f64>| -> Vec<f64> { samples.iter().filter_map(|m| f(m)).collect() };
    let rss = mib(&|m| Some(m.rss_kib as f64 / 1024.0));
    let ram = mib(&|m| m.guest_ram_rss_kib.map(|k| k as f64 / 1024.0));
    let tcg = mib(&|m| m.tcg_buffer_rss_kib.map(|k| k as f64 / 1024.0));
    let used = mib(&|m| m.mem_free_kib.map(|f| m.guest_mib as f64 - f as f64 / 1024.0));
    let beyond_used = mib(&|m| m.beyond_guest_used_mib());
    let beyond_ram = mib(&|m| m.beyond_guest_ram_mib());
    let stat = |v: &[f64]| json!({"n": v.len(), "min": min_max(v).0, "median": median(v), "max": min_max(v).1});
    json!({
        "vms": samples.len(),
        "rssMiB": stat(&rss),
        "guestRamResidentMiB": stat(&ram),
        "tcgBufferResidentMiB": stat(&tcg),
        "guestUsedMiB": stat(&used),
        "beyondGuestUsedMiB": stat(&beyond_used),
        "beyondGuestRamMiB": stat(&beyond_ram),
    })
}

/// One herd run next to the hand-run QEMUs of its round: a table row, its JSON, and (herd,
/// hand user-data, hand agent, quiet) for the medians.
fn compare_run(h: &HerdRun, n: u32, hand: &[HandRun]) -> (String, Value, (f64, f64, f64, bool)) {
    let find_hand = |round: u32, n: u32, via: Via| hand.iter().find(|h| h.round == round && h.n == n && h.via == via);
    let herd_all = max(&h.app_s);
    let ud = find_hand(h.round, n, Via::UserData).map(|r| max(&r.app_s)).unwrap_or(f64::NAN);
    let ag = find_hand(h.round, n, Via::Agent).map(|r| max(&r.app_s)).unwrap_or(f64::NAN);
    let ag_ready = find_hand(h.round, n, Via::Agent).map(|r| max(&r.agent_s)).unwrap_or(f64::NAN);
    let uptimes = |m: &[AfterBoot]| m.iter().filter_map(|x| x.ready_uptime_s).collect::<Vec<f64>>();
    let herd_up = uptimes(&h.mem);
    let same = || hand.iter().filter(|r| r.round == h.round && r.n == n);
    let hand_up: Vec<f64> = same().flat_map(|r| uptimes(&r.mem)).collect();
    let others = same().map(|r| r.others_share).fold(h.others_share, f64::max);
    let quiet = others < QUIET_SHARE;
    let row = format!(
        "{:>5} {:>2} | {:>7.1} {:>7.1} {:>7.2} {:>7.2} {:>7.2} | {:>7.2} {:>7.2} {:>7.2} {:>7.2} | {:>5.2} {:>5.2} | {:>5.0}{}",
        h.round,
        n,
        h.put_ms,
        max(&h.spawn_ms),
        median(&herd_up),
        max(&h.running_s),
        herd_all,
        median(&hand_up),
        ud,
        ag_ready,
        ag,
        herd_all / ud,
        herd_all / ag,
        others * 100.0,
        if quiet { "" } else { " noisy" }
    );
    let run = json!({
        "round": h.round, "putMs": h.put_ms, "spawnMs": h.spawn_ms, "runningSeconds": h.running_s,
        "appSeconds": h.app_s, "appAllSeconds": herd_all,
        "guestReadyUptimeSeconds": herd_up, "handGuestReadyUptimeSeconds": hand_up,
        "handUserDataAllSeconds": ud, "handAgentReadyAllSeconds": ag_ready, "handAgentAllSeconds": ag,
        "ratioToHandUserData": herd_all / ud, "ratioToHandAgent": herd_all / ag,
        "othersCpuShareMax": others, "quiet": quiet,
        "machineBusyBefore": same().map(|r| r.busy_before).fold(h.busy_before, f64::max),
        "herdProcessCpuSeconds": h.cpu_s,
        "handUserDataProcessCpuSeconds": find_hand(h.round, n, Via::UserData).map(|r| r.cpu_s),
        "handAgentProcessCpuSeconds": find_hand(h.round, n, Via::Agent).map(|r| r.cpu_s),
    });
    (row, run, (herd_all, ud, ag, quiet))
}

/// The runs with N VMs: their JSON (with the medians over all and over quiet rounds), table
/// rows and median lines.
fn compare_count(n: u32, herd: &[HerdRun], hand: &[HandRun]) -> (Value, Vec<String>, Vec<String>) {
    let (mut runs, mut rows, mut medians) = (Vec::new(), Vec::new(), Vec::new());
    // (herd, hand user-data, hand agent, quiet) per round.
    let mut triples: Vec<(f64, f64, f64, bool)> = Vec::new();
    for h in herd.iter().filter(|h| h.n == n) {
        let (row, run, triple) = compare_run(h, n, hand);
        rows.push(row);
        runs.push(run);
        triples.push(triple);
    }
    let summarize = |only_quiet: bool| {
        let t: Vec<&(f64, f64, f64, bool)> = triples.iter().filter(|t| t.3 || !only_quiet).collect();
        let col = |f: fn(&(f64, f64, f64, bool)) -> f64| median(&t.iter().map(|x| f(x)).collect::<Vec<f64>>());
        let (hm, um, am) = (col(|x| x.0), col(|x| x.1), col(|x| x.2));
        json!({
            "rounds": t.len(), "herdAppAllSecondsMedian": hm,
            "handUserDataAllSecondsMedian": um, "handAgentAllSecondsMedian": am,
            "ratioOfMediansToHandUserData": hm / um, "ratioOfMediansToHandAgent": hm / am,
            "ratioToHandUserDataMedian": col(|x| x.0 / x.1), "ratioToHandAgentMedian": col(|x| x.0 / x.2),
        })
    };
    let (all, quiet) = (summarize(false), summarize(true));
    let herd_cpu = median(&herd.iter().filter(|h| h.n == n).map(|h| h.cpu_s).collect::<Vec<_>>());
    let hand_cpu = median(&hand.iter().filter(|r| r.n == n).map(|r| r.cpu_s).collect::<Vec<_>>());
    for (label, m) in [("all rounds", &all), ("quiet rounds", &quiet)] {
        let f = |k: &str| m[k].as_f64().unwrap_or(f64::NAN);
        medians.push(format!(
            "N={n}, {label} ({}): herd {:.2} s, hand user-data {:.2} s, hand agent {:.2} s; herd/hand {:.2} (user-data), {:.2} (agent)",
            m["rounds"],
            f("herdAppAllSecondsMedian"),
            f("handUserDataAllSecondsMedian"),
            f("handAgentAllSecondsMedian"),
            f("ratioOfMediansToHandUserData"),
            f("ratioOfMediansToHandAgent"),
        ));
    }
    medians.push(format!(
        "N={n}: CPU of this process during a run (median): herd {herd_cpu:.2} s (server + polling), hand {hand_cpu:.2} s (polling)"
    ));
    let per_n = json!({
        "n": n, "runs": runs, "allRounds": all, "quietRounds": quiet,
        "herdProcessCpuSecondsMedian": herd_cpu, "handProcessCpuSecondsMedian": hand_cpu,
    });
    (per_n, rows, medians)
}

fn report(ctx: &Ctx, opts: &Options, herd: &[HerdRun], hand: &[HandRun]) {
    let spawn: Vec<f64> = herd.iter().flat_map(|h| h.spawn_ms.iter().copied()).collect();
    let expected: u32 = herd.iter().map(|h| h.n).sum();
    let (smin, smax) = min_max(&spawn);
    let (mut per_n, mut rows, mut medians) = (Vec::new(), Vec::new(), Vec::new());
    for &n in &opts.counts {
        let (json, r, m) = compare_count(n, herd, hand);
        per_n.push(json);
        rows.extend(r);
        medians.extend(m);
    }
    let herd_mem: Vec<&AfterBoot> = herd.iter().flat_map(|h| h.mem.iter()).collect();
    let hand_mem: Vec<&AfterBoot> = hand.iter().flat_map(|h| h.mem.iter()).collect();
    let summary = json!({
        "bench": "qemu", "accel": "tcg", "sku": ctx.sku, "vcpus": ctx.size.vcpus, "memoryMiB": ctx.size.memory_mib,
        "rounds": opts.rounds, "counts": opts.counts,
        "controlPlane": {
            "what": "create PUT returned -> QEMU process exists, per VM",
            "vms": spawn.len(), "expected": expected,
            "minMs": smin, "medianMs": median(&spawn), "maxMs": smax, "goalMs": SPAWN_GOAL_MS,
            "goalMet": smax < SPAWN_GOAL_MS && spawn.len() == expected as usize,
        },
        "appAnswering": per_n,
        "memory": {
            "herd": mem_summary(&herd_mem), "hand": mem_summary(&hand_mem),
            "herdVms": herd_mem.iter().map(|m| m.to_json()).collect::<Vec<_>>(),
        },
    });
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&summary).unwrap_or_default());
        return;
    }
    let table = Table { spawn: &spawn, expected, rows: &rows, medians: &medians };
    print_report(ctx, opts, &summary, &table);
}

/// What the human-readable report prints beyond the summary.
struct Table<'a> {
    /// PUT returned -> QEMU process, ms, every VM.
    spawn: &'a [f64],
    expected: u32,
    rows: &'a [String],
    medians: &'a [String],
}

/// The human-readable report: control plane, the table of runs, the medians and memory.
fn print_report(ctx: &Ctx, opts: &Options, summary: &Value, t: &Table<'_>) {
    let (spawn, expected, rows, medians) = (t.spawn, t.expected, t.rows, t.medians);
    let (smin, smax) = min_max(spawn);
    println!(
        "herd bench qemu: {} ({} vCPU, {} MiB), TCG, {} round(s), N in {:?}",
        ctx.sku, ctx.size.vcpus, ctx.size.memory_mib, opts.rounds, opts.counts
    );
    println!();
    println!(
        "control plane (PUT returned -> QEMU process exists), {} of {} VMs: min {:.1} ms, median {:.1} ms, max {:.1} ms (goal < {SPAWN_GOAL_MS} ms: {})",
        spawn.len(),
        expected,
        smin,
        median(spawn),
        smax,
        if smax < SPAWN_GOAL_MS && spawn.len() == expected as usize { "met" } else { "missed" }
    );
    println!();
    println!("API call -> app answering (seconds until the last of N answers HTTP 200)");
    println!("(spawnms: PUT returned -> last QEMU process, ms; uptime: guest uptime at HERD-GUEST-READY, median;");
    println!(" running: state Running = agent answered; hand agent: agent answered / app via agent;");
    println!(
        " others: % of all CPUs' time used by other processes during the row's runs, worst run; quiet < {:.0} %)",
        QUIET_SHARE * 100.0
    );
    println!(
        "                 herd                                 | hand-run QEMU                     | herd / hand |"
    );
    println!(
        "round  N |  put ms spawnms  uptime running     app |  uptime userdata   agent app(ag) |    ud    ag | others"
    );
    for r in rows {
        println!("{r}");
    }
    println!("medians over rounds (time until all N answer; ratios are of the medians):");
    for m in medians {
        println!("  {m}");
    }
    println!();
    println!(
        "QEMU memory after the app answers, MiB, median (min-max) over VMs ({} MiB guest memory configured):",
        ctx.size.memory_mib
    );
    println!("                 RSS              guest RAM resident   TCG code buffer   guest used (mem-MemFree)   RSS - guest used   RSS - guest RAM");
    for (who, m) in [("herd", &summary["memory"]["herd"]), ("hand", &summary["memory"]["hand"])] {
        let cell = |k: &str| {
            let f = |x: &str| m[k][x].as_f64().unwrap_or(f64::NAN);
            format!("{:.0} ({:.0}-{:.0})", f("median"), f("min"), f("max"))
        };
        println!(
            "{who:<5} {:>2} VMs  {:<16} {:<20} {:<17} {:<26} {:<18} {}",
            m["vms"],
            cell("rssMiB"),
            cell("guestRamResidentMiB"),
            cell("tcgBufferResidentMiB"),
            cell("guestUsedMiB"),
            cell("beyondGuestUsedMiB"),
            cell("beyondGuestRamMiB")
        );
    }
    println!();
    println!("{summary}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn markers_and_sockets_come_out_of_the_argv() {
        let a = argv(&[
            "qemu",
            "-name",
            "herd:00ff00ff00ff00ff:bench/r1-n2/1",
            "-chardev",
            "socket,id=qmp0,path=/d/qmp.sock,server=on,wait=off",
            "-chardev",
            "socket,id=qga0,path=/d,,x/qga.sock,server=on,wait=off",
        ]);
        assert_eq!(marker_key(&a).as_deref(), Some("bench/r1-n2/1"));
        assert_eq!(chardev_path(&a, QGA_CHARDEV), Some(PathBuf::from("/d,x/qga.sock")));
        assert_eq!(chardev_path(&a, CONSOLE_CHARDEV), None);
        assert_eq!(marker_key(&argv(&["qemu"])), None);
    }

    #[test]
    fn statistics() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(min_max(&[2.0, -1.0, 5.0]), (-1.0, 5.0));
        let t = Instant::now();
        let later = t + Duration::from_millis(5);
        assert!((signed_ms(t, later) - 5.0).abs() < 1e-9);
        assert!((signed_ms(later, t) + 5.0).abs() < 1e-9);
        let m = AfterBoot {
            rss_kib: 300 * 1024,
            guest_mib: 512,
            guest_ram_rss_kib: Some(150 * 1024),
            mem_total_kib: Some(480 * 1024),
            mem_free_kib: Some(400 * 1024),
            ..Default::default()
        };
        assert_eq!(m.beyond_guest_used_mib(), Some(188.0));
        assert_eq!(m.beyond_guest_ram_mib(), Some(150.0));
    }

    #[test]
    fn guest_ram_and_the_tcg_buffer_are_found_in_smaps() {
        let smaps = "\
55df63111000-55df63518000 r--p 00000000 08:01 123 /usr/bin/qemu-system-x86_64
Size:               4124 kB
Rss:                4124 kB
7fc0e3e00000-7fc103e00000 rw-p 00000000 00:00 0 
Size:             524288 kB
KernelPageSize:        4 kB
Rss:              135168 kB
7fc104000000-7fc143fff000 rwxp 00000000 00:00 0
Size:            1048572 kB
Rss:               51200 kB
7fc14a200000-7fc14a630000 r--p 00000000 08:01 456 /tmp/tg-out/1.0.0/initrd.img
Size:               4288 kB
Rss:                4288 kB
";
        assert_eq!(guest_ram_and_tcg(smaps, 512), (Some(135168), Some(51200)));
        assert_eq!(guest_ram_and_tcg(smaps, 2048), (None, Some(51200)));
        assert_eq!(smaps_mappings(smaps).len(), 4);
    }
}
