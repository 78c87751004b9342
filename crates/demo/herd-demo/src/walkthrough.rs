//! The walkthrough (`/work/shared/WALKTHROUGH.md`, the classic scale-set tutorial) played end
//! to end with the real `herd` CLI, on the `qemu` driver (real VMs from the test guest image)
//! or the `process` driver. `herd demo` and the acceptance test (`tests/walkthrough.rs`) both
//! run this one implementation, so what a newcomer sees is what CI checks.
//!
//! Why a child `herd server` and a `herd` subprocess per command: that is exactly what a user
//! does in a terminal, so each command is printed as a shell prompt (`$ herd ...`, secrets
//! masked) followed by what came back. Between commands the runner *checks* what a user would
//! see (both computer names answering through the load balancer, instances off the latest
//! model until `update-instances`, mixed v1/v2 answers, the image version after a reimage, no
//! failed request during an upgrade, capacity 3, autoscale back to 2, the TODO item surviving)
//! and fails naming the step. Every wait is a condition with a deadline; every load loop is
//! bounded in count and time; all traffic stays on 127.0.0.0/8 (and, inside VMs, 10.0.2.2,
//! QEMU's alias for the host's loopback).
//!
//! Around the walkthrough it owns: a throw-away PostgreSQL cluster (`pg-test-cluster.sh`, as
//! the `postgres` user on a loopback port) for the TODO app, a small HTTP file server on
//! 127.0.0.1 for the Custom Script's `fileUris` and the app binary, and the server's data dir.
//! [`Resources::teardown`] removes all of it (or `--keep` leaves it running).

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const GROUP: &str = "web-rg";
const SET: &str = "webscaleset";
const TODO_TITLE: &str = "buy milk (added at step 5)";
/// The cluster script, embedded so `herd demo` needs nothing but the app directory.
const PG_SCRIPT: &str = include_str!("../../../../images/app/pg-test-cluster.sh");

/// Which driver runs the instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Qemu,
    Process,
}

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Driver::Qemu => "qemu",
            Driver::Process => "process",
        }
    }
}

/// What to play.
#[derive(Debug, Clone)]
pub struct Options {
    pub driver: Driver,
    /// The built test guest (`images/testguest/build.sh OUT`): `OUT/1.0.0`, `OUT/1.0.1`.
    pub testguest: Option<PathBuf>,
    /// The built app (`images/app/build.sh OUT`): `herd-todo`, `installapp-v1.sh`, `-v2.sh`.
    pub app: PathBuf,
    /// The autoscale rules' window, e.g. `1m` (the walkthrough says 5m).
    pub window: String,
    /// Leave everything running at the end.
    pub keep: bool,
    /// Bridged networking: the demo runs inside a network namespace of its own (see
    /// `crate::netns`); instances live on the subnet's bridge with their private IPs.
    pub bridged: bool,
}

/// The walkthrough subnet's gateway (10.0.0.0/24's `.1`): where bridged instances find the
/// host (its database relay and file server).
const GATEWAY: &str = "10.0.0.1";

/// Everything the walkthrough started, so it can be torn down from the normal path or from
/// Ctrl-C.
#[derive(Default)]
pub struct Resources {
    base: Option<PathBuf>,
    data: Option<PathBuf>,
    server: Option<Child>,
    server_url: Option<String>,
    pg_dir: Option<PathBuf>,
    files_stop: Option<Arc<AtomicBool>>,
    group_created: bool,
    done: bool,
}

/// Shared between the runner and a Ctrl-C handler.
pub type Shared = Arc<Mutex<Resources>>;

impl Resources {
    /// Deletes the resource group (when `graceful` and the server is up), stops the server,
    /// kills any instance left behind, stops PostgreSQL and removes the files. Idempotent.
    pub fn teardown(&mut self, graceful: bool) {
        if self.done {
            return;
        }
        self.done = true;
        println!("\n== Cleaning up ==");
        if graceful && self.group_created {
            if let (Some(url), Some(data)) = (&self.server_url, &self.data) {
                let args = ["group", "delete", "-n", GROUP, "--yes", "--timeout", "300"];
                println!("$ herd {}", args.join(" "));
                let st = Command::new(exe())
                    .args(args)
                    .env("HERD_SERVER", url)
                    .env("HERD_DATA_DIR", data)
                    .env_remove("HERD_TOKEN")
                    .stdout(Stdio::null())
                    .status();
                if !matches!(st, Ok(s) if s.success()) {
                    println!("(the group could not be deleted cleanly; its instances are stopped below)");
                }
            }
        }
        if let Some(mut child) = self.server.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(data) = &self.data {
            for pid in leftover_pids(data) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
        if let Some(stop) = &self.files_stop {
            stop.store(true, Ordering::SeqCst);
        }
        if let Some(pg) = &self.pg_dir {
            let script = self.base.as_ref().map(|b| b.join("pg-test-cluster.sh"));
            if let Some(script) = script.filter(|s| s.exists()) {
                let _ = Command::new("sh").arg(script).arg("stop").arg(pg).output();
            }
        }
        if let Some(base) = &self.base {
            let _ = std::fs::remove_dir_all(base);
        }
        println!("Server stopped, instances and database removed, {} deleted.", show_opt(&self.base));
    }
}

fn show_opt(p: &Option<PathBuf>) -> String {
    p.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
}

/// This `herd` binary. When it is rebuilt while the walkthrough runs (`cargo build` replaces
/// the file), Linux names the running one `... (deleted)`: use the new file at the same path.
fn exe() -> PathBuf {
    let p = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("herd"));
    match p.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(s) => PathBuf::from(s),
        None => p,
    }
}

/// QEMU processes whose command line names this data dir's VMs, and process-driver instances
/// carrying this data dir's tag.
fn leftover_pids(data: &Path) -> Vec<u32> {
    let Ok(dir) = data.canonicalize() else { return vec![] };
    let vms = dir.join("vms").display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else { return vec![] };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.contains("qemu-system") && cmd.contains(&vms)
        })
        .collect();
    if let Some(tag) = herd_driver::tag::tag_of(&dir) {
        pids.extend(herd_driver_process::tagged_pids(&tag));
    }
    pids
}

/// 16 random hex digits (std only: the hasher's keys are random per process).
fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

// ---------------------------------------------------------------------------------------------
// HTTP on loopback: one request per connection, as `curl` without keep-alive.

/// Sends one request with `Connection: close`; returns the status and the body.
fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String), String> {
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.set_write_timeout(Some(Duration::from_secs(10))).ok();
    let body = body.unwrap_or("");
    let extra = if method == "POST" {
        format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len())
    } else {
        String::new()
    };
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n{body}")
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    let out = String::from_utf8_lossy(&out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", out.lines().next().unwrap_or("(empty)")))?;
    Ok((status, out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("").trim().to_string()))
}

/// GET that must answer 200.
fn get(addr: &str, path: &str) -> Result<String, String> {
    match http(addr, "GET", path, None)? {
        (200, body) => Ok(body),
        (code, body) => Err(format!("HTTP {code}: {body}")),
    }
}

/// A background load loop through the frontend: sequential `GET /api/version` requests on
/// fresh connections from `workers` threads, each bounded by `max_requests` and `max_time`.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    completions: Arc<Mutex<Vec<Instant>>>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(frontend: &str, workers: usize, max_requests: u64, max_time: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let completions = Arc::new(Mutex::new(Vec::new()));
        let handles = (0..workers)
            .map(|_| {
                let (stop, ok, failures, completions, frontend) =
                    (stop.clone(), ok.clone(), failures.clone(), completions.clone(), frontend.to_string());
                std::thread::spawn(move || {
                    let start = Instant::now();
                    for _ in 0..max_requests {
                        if stop.load(Ordering::Relaxed) || start.elapsed() > max_time {
                            break;
                        }
                        match get(&frontend, "/api/version") {
                            Ok(_) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                completions.lock().unwrap().push(Instant::now());
                            }
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                        // A steady load, not a flood: the machine also runs the instances.
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        Load { stop, ok, failures, completions, workers: handles }
    }

    /// Stops the workers; returns (completed, completed within [from, to], failures).
    fn finish(self, from: Instant, to: Instant) -> (u64, usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            let _ = w.join();
        }
        let within = self.completions.lock().unwrap().iter().filter(|t| **t >= from && **t <= to).count();
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), within, failures)
    }
}

// ---------------------------------------------------------------------------------------------
// A tiny file server for the extension's fileUris and the app binary.

/// Serves `files` by name on 127.0.0.1 until `stop` is set; one thread per connection, one
/// request per connection. Returns the port and `stop`. (The CLI tests serve their extension
/// files with it too.)
pub fn start_file_server(files: Vec<(String, Vec<u8>)>) -> Result<(u16, Arc<AtomicBool>)> {
    start_file_server_on("127.0.0.1", files)
}

/// [`start_file_server`] on `ip` (every address, `0.0.0.0`, inside the demo's own network
/// namespace, where bridged instances reach the host at the gateway).
fn start_file_server_on(ip: &str, files: Vec<(String, Vec<u8>)>) -> Result<(u16, Arc<AtomicBool>)> {
    let files: Arc<std::collections::BTreeMap<String, Vec<u8>>> = Arc::new(files.into_iter().collect());
    let l = std::net::TcpListener::bind((ip, 0)).context("binding the file server")?;
    l.set_nonblocking(true)?;
    let port = l.local_addr()?.port();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    std::thread::spawn(move || {
        while !stop2.load(Ordering::SeqCst) {
            let Ok((mut s, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            let files = files.clone();
            std::thread::spawn(move || {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = s.set_write_timeout(Some(Duration::from_secs(60)));
                let mut buf = vec![0u8; 8192];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let path = req.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
                match files.get(&path) {
                    Some(body) => {
                        let _ =
                            write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                        let _ = s.write_all(body);
                    }
                    None => {
                        let _ = write!(s, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    }
                }
            });
        }
    });
    Ok((port, stop))
}

/// Forwards TCP connections from every address of this (the demo's own) network namespace to
/// `127.0.0.1:target` until `stop` is set: bridged instances reach the database, which listens
/// on loopback only, through it at the gateway. Returns the port. Each connection is two
/// copying threads; a connection that cannot reach the target is closed.
fn start_relay(target: u16, stop: Arc<AtomicBool>) -> Result<u16> {
    let l = std::net::TcpListener::bind(("0.0.0.0", 0)).context("binding the database relay")?;
    l.set_nonblocking(true)?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let Ok((client, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            let _ = client.set_nonblocking(false);
            let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else { continue };
            let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { continue };
            let pipe = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                })
            };
            pipe(client, server);
            pipe(s2, c2);
        }
    });
    Ok(port)
}

// ---------------------------------------------------------------------------------------------
// The runner.

struct Walk {
    driver: Driver,
    env: Vec<(String, String)>,
    /// Never printed: replaced by `****` in every echoed command and output.
    secrets: Vec<String>,
    times: Vec<(String, Duration)>,
    log_path: PathBuf,
}

/// Quotes an argument the way a person would type it in a POSIX shell.
fn shell_word(a: &str) -> String {
    if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c)) {
        a.to_string()
    } else {
        if a.contains('\'') && !a.contains(['"', '$', '`', '\\', '!']) {
            format!("\"{a}\"")
        } else {
            format!("'{}'", a.replace('\'', "'\\''"))
        }
    }
}

impl Walk {
    fn mask(&self, s: &str) -> String {
        let mut s = s.to_string();
        for secret in &self.secrets {
            s = s.replace(secret.as_str(), "****");
        }
        s
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(exe());
        c.args(args).envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str()))).env_remove("HERD_TOKEN");
        c
    }

    /// Prints `$ herd ARGS` (secrets masked), runs it, prints what came back; fails naming the
    /// command when it fails.
    fn herd(&self, args: &[&str]) -> Result<String> {
        let line = args.iter().map(|a| shell_word(a)).collect::<Vec<_>>().join(" ");
        println!("\n$ herd {}", self.mask(&line));
        let out =
            self.command(args).stdout(Stdio::piped()).stderr(Stdio::inherit()).output().context("running herd")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{}", self.mask(&text));
        let _ = std::io::stdout().flush();
        if !out.status.success() {
            bail!("`herd {}` failed ({})", self.mask(&line), out.status);
        }
        Ok(text)
    }

    /// Runs a command without printing it: the runner's own checks.
    fn quiet(&self, args: &[&str]) -> Result<String> {
        let out = self.command(args).output().context("running herd")?;
        if !out.status.success() {
            bail!(
                "`herd {}` failed: {}",
                self.mask(&args.join(" ")),
                self.mask(String::from_utf8_lossy(&out.stderr).trim())
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let out = self.quiet(&a)?;
        serde_json::from_str(&out).with_context(|| format!("`herd {}` printed no JSON", args.join(" ")))
    }

    fn note(&self, text: &str) {
        println!("\n# {}", self.mask(text));
    }

    /// Runs one step, recording its wall time; an error names the step.
    fn step(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        println!("\n==================== {name} ====================");
        let start = Instant::now();
        let r = f(self);
        let took = start.elapsed();
        self.times.push((name.to_string(), took));
        match r {
            Ok(()) => {
                println!("\n[{name}: ok, {:.1}s]", took.as_secs_f64());
                Ok(())
            }
            Err(e) => Err(e.context(format!("walkthrough {name} failed after {:.1}s", took.as_secs_f64()))),
        }
    }

    /// The set's instances that count (not overprovisioned extras, not being deleted).
    fn instances(&self) -> Result<Vec<Value>> {
        let all = self.json(&["vmss", "list-instances", "-g", GROUP, "-n", SET])?;
        Ok(all
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|i| i["goal"] != "Deleted" && i["overprovisioned"] != true)
            .collect())
    }

    fn generation(&self) -> Result<u64> {
        self.json(&["vmss", "show", "-g", GROUP, "-n", SET])?["modelGeneration"]
            .as_u64()
            .ok_or_else(|| anyhow!("vmss show has no modelGeneration"))
    }

    /// Waits until `count` instances run the latest model with their extension finished, and
    /// returns them; a failed extension is an error with its message.
    fn wait_converged(&self, count: usize, limit: Duration) -> Result<Vec<Value>> {
        let generation = self.generation()?;
        wait("every instance on the latest model with its extension done", limit, || {
            let inst = self.instances()?;
            for i in &inst {
                if i["extensions"][0]["state"] == "Failed" && i["modelGeneration"].as_u64() == Some(generation) {
                    bail!(
                        "the extension failed on instance {}: {}",
                        i["instanceId"],
                        self.mask(&i["extensions"][0]["message"].to_string())
                    );
                }
            }
            let done = inst.len() == count
                && inst.iter().all(|i| {
                    i["modelGeneration"].as_u64() == Some(generation)
                        && i["pendingAction"].is_null()
                        && i["state"] == "Running"
                        && (i["extensions"].as_array().is_none_or(|e| e.is_empty())
                            || i["extensions"][0]["state"] == "Succeeded")
                });
            Ok(done.then_some(inst))
        })
    }

    /// The `HERD-GUEST-READY ... version=V ...` line of an instance's boot log.
    fn ready_line(&self, id: &str) -> Result<String> {
        let log = self.quiet(&["vmss", "get-boot-log", "-g", GROUP, "-n", SET, "--instance-id", id])?;
        log.lines()
            .rev()
            .find_map(|l| l.find("HERD-GUEST-READY").map(|i| l[i..].trim().to_string()))
            .ok_or_else(|| anyhow!("instance {id}'s boot log has no HERD-GUEST-READY line"))
    }

    /// Shows each instance's image version the way a user would find it, and checks it.
    fn check_image_version(&self, want: &str) -> Result<()> {
        let inst = self.instances()?;
        for i in &inst {
            let id = i["instanceId"].as_str().unwrap_or_default();
            println!(
                "\n$ herd vmss get-boot-log -g {GROUP} -n {SET} --instance-id {id} | grep HERD-GUEST-READY{}",
                if self.driver == Driver::Process {
                    "   # process flavour: echoes its etc/herd-image-version"
                } else {
                    ""
                }
            );
            let line = self.ready_line(id)?;
            println!("{line}");
            if !line.split_whitespace().any(|w| w == format!("version={want}")) {
                bail!("instance {id} reports {line:?}, expected /etc/herd-image-version = {want}");
            }
        }
        Ok(())
    }
}

/// Polls `f` every 250 ms until it returns Some, or fails after `limit`.
fn wait<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) if e.to_string().contains("extension failed") => return Err(e),
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > limit {
            let why = last_err.map(|e| format!(" (last error: {e:#})")).unwrap_or_default();
            bail!("timed out after {}s waiting for {what}{why}", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The load balancer's frontend (found after step 4): `ip:port`, and its URL as a reader
/// would curl it.
#[derive(Default)]
struct Frontend {
    addr: String,
    url: String,
}

impl Frontend {
    /// Asks the frontend until every name in `want` answered (`Version N from NAME` lines are
    /// matched as given); prints the first answers as a user's repeated curl would show them.
    fn answers_until(&self, want: &[String], limit: Duration, show: usize) -> Result<Vec<String>> {
        let start = Instant::now();
        let mut seen: Vec<String> = Vec::new();
        let mut shown = 0;
        let mut last_err = String::new();
        // Bounded: at most 5,000 requests and `limit`, paced so a new instance has time to pass
        // its probe.
        for _ in 0..5000 {
            if want.iter().all(|w| seen.contains(w)) {
                return Ok(seen);
            }
            if start.elapsed() > limit {
                break;
            }
            match get(&self.addr, "/api/version") {
                Ok(body) => {
                    if shown < show && (!seen.contains(&body) || shown < 2) {
                        println!("$ curl {}/api/version\n{body}", self.url);
                        shown += 1;
                    }
                    if !seen.contains(&body) {
                        seen.push(body);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    last_err = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        bail!(
            "through the frontend {}, expected answers {want:?} within {}s; saw {seen:?}{}",
            self.addr,
            limit.as_secs(),
            if last_err.is_empty() { String::new() } else { format!(" (last error: {last_err})") }
        )
    }

    /// The TODO item added at step 5 is still listed (asked until the frontend answers).
    fn check_todo(&self) -> Result<()> {
        println!("\n$ curl {}/api/todos", self.url);
        let list = wait("the TODO list through the frontend", Duration::from_secs(30), || {
            Ok(get(&self.addr, "/api/todos").ok())
        })?;
        println!("{list}");
        if !list.contains(TODO_TITLE) {
            bail!("the TODO item added at step 5 is gone: {list}");
        }
        Ok(())
    }
}

fn kernel_image_args(tg: &Path, v: &str) -> Vec<String> {
    let d = tg.join(v);
    vec![
        "image".into(),
        "import".into(),
        "--urn".into(),
        format!("Herd:TestGuest:1:{v}"),
        "--kernel".into(),
        d.join("vmlinuz").display().to_string(),
        "--initrd".into(),
        d.join("initrd.img").display().to_string(),
        "--cmdline".into(),
        format!("@{}", d.join("cmdline").display()),
        "-o".into(),
        "table".into(),
    ]
}

/// The process flavour of the test guest: an image directory whose `init` does what the VM's
/// boot does that matters here (announces its image version on the console) and then idles.
/// The app comes later, from the Custom Script, exactly as in the VM.
fn process_image(dir: &Path, version: &str) -> Result<()> {
    std::fs::create_dir_all(dir.join("etc"))?;
    std::fs::write(dir.join("etc/herd-image-version"), format!("{version}\n"))?;
    let init = dir.join("init");
    std::fs::write(
        &init,
        "#!/bin/sh\n\
         # herd's test guest, process flavour: the VM's /etc/herd-image-version is ./etc/herd-image-version here.\n\
         echo \"HERD-GUEST-READY hostname=$(hostname 2>/dev/null || echo \"$HOSTNAME\") version=$(cat etc/herd-image-version) ip=$HERD_ADDRESS\"\n\
         exec sleep 2147483647\n",
    )?;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn check_tools(opts: &Options) -> Result<()> {
    for f in ["herd-todo", "installapp-v1.sh", "installapp-v2.sh"] {
        if !opts.app.join(f).exists() {
            bail!(
                "the demo app is missing: {} (build it with images/app/build.sh {0:?}, or pass --app DIR)",
                opts.app.join(f).display()
            );
        }
    }
    if opts.driver == Driver::Qemu {
        let tg = opts.testguest.as_ref().ok_or_else(|| anyhow!("the qemu driver needs --testguest DIR"))?;
        for v in ["1.0.0", "1.0.1"] {
            if !tg.join(v).join("vmlinuz").exists() {
                bail!(
                    "the test guest is missing at {} (build it with images/testguest/build.sh {}, or pass --testguest DIR)",
                    tg.join(v).display(),
                    tg.display()
                );
            }
        }
    }
    let has_pg = Path::new("/usr/lib/postgresql").read_dir().map(|mut d| d.next().is_some()).unwrap_or(false)
        || Command::new("sh").args(["-c", "command -v initdb"]).output().map(|o| o.status.success()).unwrap_or(false);
    if !has_pg {
        bail!("PostgreSQL is not installed: the TODO app keeps its items there (apt-get install postgresql)");
    }
    Ok(())
}

/// Plays the whole walkthrough; `res` collects what was started so that the caller (or a
/// Ctrl-C handler) can tear it down. Returns after tearing down, unless `opts.keep`.
pub fn run(opts: &Options, res: &Shared) -> Result<()> {
    check_tools(opts)?;
    let result = play(opts, res);
    let mut r = res.lock().unwrap();
    if opts.keep && result.is_ok() {
        let data = show_opt(&r.data);
        println!(
            "\nEverything keeps running (--keep). Try:\n  export HERD_SERVER={} HERD_DATA_DIR={data}\n  \
             herd vmss list-instances -g {GROUP} -n {SET} -o table\n  \
             curl http://$(herd network public-ip show -g {GROUP} -n web-lb-ip --query ipAddress -o tsv)/api/version\n\
             Files: {}. To stop: herd group delete -n {GROUP}; kill {}; sh {}/pg-test-cluster.sh stop {}",
            r.server_url.clone().unwrap_or_default(),
            show_opt(&r.base),
            r.server.as_ref().map(|c| c.id()).unwrap_or_default(),
            show_opt(&r.base),
            show_opt(&r.pg_dir),
        );
        println!("(The file server for fileUris stopped with this command: a new instance's Custom Script cannot download until you serve the files again.)");
        r.done = true;
        // The server must outlive us: forget the child handle.
        r.server.take();
        return Ok(());
    }
    r.teardown(result.is_ok());
    result
}

/// Starts the TODO app's PostgreSQL cluster below `base` on a free loopback port (retried on
/// another port if one was taken meanwhile); returns the port.
fn start_postgres(base: &Path, res: &Shared, pg_password: &str) -> Result<u16> {
    let pg_dir = base.join("pg");
    let pg_script = base.join("pg-test-cluster.sh");
    std::fs::write(&pg_script, PG_SCRIPT)?;
    let mut pg_port = 0;
    let mut last = String::new();
    res.lock().unwrap().pg_dir = Some(pg_dir.clone());
    for _ in 0..5 {
        let p = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        println!("$ sh pg-test-cluster.sh start {} {p} todo - todo   # PostgreSQL for the TODO app", pg_dir.display());
        let mut child = Command::new("sh")
            .arg(&pg_script)
            .arg("start")
            .arg(&pg_dir)
            .arg(p.to_string())
            .args(["todo", "-", "todo"])
            .env_remove("PG_TEST_PASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running pg-test-cluster.sh")?;
        if let Some(mut stdin) = child.stdin.take() {
            writeln!(stdin, "{pg_password}")?;
        }
        let out = child.wait_with_output()?;
        if out.status.success() {
            pg_port = p;
            break;
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
    }
    if pg_port == 0 {
        bail!("cannot start PostgreSQL for the TODO app: {last}");
    }
    Ok(pg_port)
}

/// Starts `herd server` as a child process (its own process group, logging to a file below
/// `base`) with the demo's short timings; returns its URL and the log's path once it listens.
fn start_server(driver: Driver, bridged: bool, res: &Shared, base: &Path, data: &Path) -> Result<(String, PathBuf)> {
    let config = base.join("herd.toml");
    let mut conf = String::from(
        "# herd demo: short timings so the walkthrough runs in minutes\n\
         [loadbalancer]\ndrain_timeout_secs = 2\n\
         [upgrades]\nhealth_grace_secs = 60\n\
         [autoscale]\ninterval_secs = 5\nsample_interval_secs = 5\n\
         # the Custom Script's files are served on loopback, which fileUris may not reach by default\n\
         [extensions]\nallow_fetch_from = [\"127.0.0.1/32\"]\n",
    );
    conf.push_str(if bridged {
        "# instances with a subnet live on its bridge, with their private IPs\n[network]\nmode = \"bridged\"\n"
    } else {
        "[network]\nmode = \"host-local\"\n"
    });
    if driver == Driver::Qemu {
        conf.push_str("[qemu]\nboot_timeout_secs = 240\nstop_timeout_secs = 10\n");
    }
    std::fs::write(&config, conf)?;
    let log_path = base.join("server.log");
    let log = std::fs::File::create(&log_path)?;
    println!(
        "$ herd server --driver {} --listen 127.0.0.1:0 --data-dir {} --config {} 2>{} &",
        driver.name(),
        data.display(),
        config.display(),
        log_path.display()
    );
    let child = Command::new(exe())
        .args(["server", "--driver", driver.name(), "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data)
        .arg("--config")
        .arg(&config)
        .env("HERD_LOG", "info")
        .env_remove("HERD_DATA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        // Its own process group: Ctrl-C in the terminal reaches `herd demo`, which cleans up.
        .process_group(0)
        .spawn()
        .context("starting herd server")?;
    res.lock().unwrap().server = Some(child);
    let url = wait("the server to listen", Duration::from_secs(60), || {
        if let Some(c) = res.lock().unwrap().server.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("herd server exited ({st}):\n{log}");
            }
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        Ok(log
            .lines()
            .find_map(|l| l.split("listening on ").nth(1))
            .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string()))
    })?;
    let url = if url.starts_with("http") { url } else { format!("http://{url}") };
    println!("$ export HERD_SERVER={url} HERD_DATA_DIR={}", data.display());
    res.lock().unwrap().server_url = Some(url.clone());
    Ok((url, log_path))
}

fn play(opts: &Options, res: &Shared) -> Result<()> {
    let root = is_root();
    // Ports below 1024 need root; otherwise the app and the load balancer use 8080.
    let port: u16 = if root { 80 } else { 8080 };
    let driver = opts.driver;

    // ---- Setup: files, database, server --------------------------------------------------
    let base = tempfile::Builder::new()
        .prefix(&format!("herd-demo-{}-", driver.name()))
        .tempdir()
        .context("creating a temporary directory")?
        .keep();
    // The postgres user must be able to reach its cluster directory below this one.
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755))?;
    let data = base.join("data");
    std::fs::create_dir_all(&data)?;
    {
        let mut r = res.lock().unwrap();
        r.base = Some(base.clone());
        r.data = Some(data.clone());
    }
    println!("== herd walkthrough on the {} driver (files in {}) ==", driver.name(), base.display());

    // PostgreSQL for the TODO app, outside the instances.
    let pg_password = format!("pg-{}", random_hex());
    let admin_password = format!("Lab-{}-Pw1!", random_hex());
    let mut pg_port = start_postgres(&base, res, &pg_password)?;

    // The Custom Script's files and the app binary, on 127.0.0.1 (on every address of the
    // demo's own namespace when bridged: instances fetch the app from the gateway).
    let files = ["installapp-v1.sh", "installapp-v2.sh", "herd-todo"]
        .iter()
        .map(|f| Ok((f.to_string(), std::fs::read(opts.app.join(f)).with_context(|| format!("reading {f}"))?)))
        .collect::<Result<Vec<_>>>()?;
    let (file_port, stop) = start_file_server_on(if opts.bridged { "0.0.0.0" } else { "127.0.0.1" }, files)?;
    res.lock().unwrap().files_stop = Some(stop.clone());
    println!("# the Custom Script's files are served on http://127.0.0.1:{file_port}/ (installapp-v1.sh, installapp-v2.sh, herd-todo)");
    if opts.bridged {
        pg_port = start_relay(pg_port, stop)?;
        println!("# bridged instances reach the database at {GATEWAY}:{pg_port} (a relay to its loopback port) and the files at {GATEWAY}:{file_port}");
    }

    let (url, log_path) = start_server(driver, opts.bridged, res, &base, &data)?;

    let mut w = Walk {
        driver,
        env: vec![("HERD_SERVER".into(), url.clone()), ("HERD_DATA_DIR".into(), data.display().to_string())],
        secrets: vec![pg_password.clone(), admin_password.clone()],
        times: Vec::new(),
        log_path: log_path.clone(),
    };

    // Both drivers' walkthroughs look the same from here; they differ in what an image is and
    // in where the guest finds the host (10.0.2.2 from a VM, 127.0.0.1 from a process).
    // With bridged networking both find it at the subnet's gateway.
    let host_from_guest = match (opts.bridged, driver) {
        (true, _) => GATEWAY,
        (false, Driver::Qemu) => "10.0.2.2",
        (false, Driver::Process) => "127.0.0.1",
    };
    let boot = if driver == Driver::Qemu { Duration::from_secs(300) } else { Duration::from_secs(60) };

    let mut tour = Tour {
        opts,
        res,
        port,
        pg_port,
        file_port,
        host_from_guest,
        boot,
        pg_password: &pg_password,
        admin_password: &admin_password,
        names: Vec::new(),
        frontend: Frontend::default(),
    };
    let result = walk(&mut w, &mut tour);
    print_times(&w.times, driver);
    result
}

fn print_times(times: &[(String, Duration)], driver: Driver) {
    println!("\n== Wall time per step ({} driver) ==", driver.name());
    let total: Duration = times.iter().map(|t| t.1).sum();
    for (name, t) in times {
        println!("{:<78} {:>7.1}s", name, t.as_secs_f64());
    }
    println!("{:<78} {:>7.1}s", "total", total.as_secs_f64());
}

/// What the walk's steps share: its settings, and what earlier steps found.
struct Tour<'a> {
    opts: &'a Options,
    res: &'a Shared,
    /// The load balancer's frontend port.
    port: u16,
    pg_port: u16,
    /// Where the Custom Script's files are served, on 127.0.0.1.
    file_port: u16,
    /// Where the guest finds the host (10.0.2.2 from a VM, 127.0.0.1 from a process).
    host_from_guest: &'a str,
    /// How long an instance may take to boot and converge.
    boot: Duration,
    pg_password: &'a str,
    admin_password: &'a str,
    /// The instances' computer names once the app is installed (step 4).
    names: Vec<String>,
    /// The load balancer's frontend (found after step 4).
    frontend: Frontend,
}

/// The walkthrough's steps in order, each timed and printed by [`Walk::step`].
fn walk(w: &mut Walk, tour: &mut Tour<'_>) -> Result<()> {
    w.step("step 0: import the test guest image (1.0.0 and 1.0.1)", |w| tour.import_images(w))?;
    w.step("step 1: resource group, virtual network, subnet", |w| tour.group_and_network(w))?;
    w.step("step 2: a scale set of 2 behind a new load balancer, Manual upgrades", |w| tour.scale_set(w))?;
    w.step("step 3: health probe and load-balancing rule", |w| tour.probe_and_rule(w))?;
    w.step("step 4: install the app with a Custom Script extension", |w| tour.install_app(w))?;
    tour.find_frontend(w)?;
    w.step("step 5: both instances answer through the load balancer; add a TODO item", |w| tour.first_answers(w))?;
    if tour.opts.bridged {
        w.step("step 5 (bridged): private IPs; one instance fetches /api/version from the other", |w| {
            tour.private_ips(w)
        })?;
    }
    w.step("step 6: version 2 on ONE instance, under load", |w| tour.one_instance_v2(w))?;
    w.step("step 7: a newer image version, update-instances '*' (reimage)", |w| tour.new_image(w))?;
    w.step("step 7 (rolling variant): Rolling policy, image move in batches under load", |w| tour.rolling_image(w))?;
    w.step("step 8: scale to 3", |w| tour.scale_to_three(w))?;
    w.step("step 9: autoscale min 2 max 10 count 3; CPU is low, so it scales in to 2", |w| tour.autoscale_in(w))?;
    w.step("finally: the TODO item from step 5 is still there; no secret leaked", |w| tour.no_secret_leaked(w))?;
    println!("\n== The walkthrough passed on the {} driver ==", tour.opts.driver.name());
    Ok(())
}

/// `cmd` on what `target` names (its flags), then `extra`.
fn args_on(cmd: &[&str], target: &[&str], extra: &[&str]) -> Vec<String> {
    cmd.iter().chain(target).chain(extra).map(|s| s.to_string()).collect()
}

/// `cmd` on the walkthrough's scale set (`-g GROUP -n SET`), then `extra`.
fn set_args(cmd: &[&str], extra: &[&str]) -> Vec<String> {
    args_on(cmd, &["-g", GROUP, "-n", SET], extra)
}

/// The flags that name the walkthrough's subnet, and its load balancer.
const SUBNET: [&str; 6] = ["-g", GROUP, "--vnet-name", "mynet", "-n", "web"];
const LB: [&str; 4] = ["-g", GROUP, "--lb-name", "web-lb"];

/// Runs `herd` with owned arguments, printed as the walkthrough prints every command.
fn herd_args(w: &Walk, args: Vec<String>) -> Result<String> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    w.herd(&a)
}

impl Tour<'_> {
    /// The Custom Script: installapp-vN.sh with the database's name, user and password.
    fn set_extension(&self, w: &Walk, v: u32) -> Result<()> {
        let (port, pg_port, file_port, host_from_guest) =
            (self.port, self.pg_port, self.file_port, self.host_from_guest);
        let pg_password = self.pg_password;
        let mut env_prefix = format!(
            "TODO_DB_HOST={host_from_guest} TODO_DB_PORT={pg_port} TODO_APP_URL=http://{host_from_guest}:{file_port}/herd-todo"
        );
        if port != 80 {
            env_prefix.push_str(&format!(" TODO_PORT={port}"));
        }
        let protected = serde_json::json!({
            "commandToExecute": format!("{env_prefix} bash installapp-v{v}.sh todo todo '{pg_password}'")
        })
        .to_string();
        let settings =
            serde_json::json!({"fileUris": [format!("http://127.0.0.1:{file_port}/installapp-v{v}.sh")]}).to_string();
        w.herd(&[
            "vmss",
            "extension",
            "set",
            "--vmss-name",
            SET,
            "--name",
            "CustomScript",
            "-g",
            GROUP,
            "--version",
            "2.0",
            "--publisher",
            "Microsoft.Azure.Extensions",
            "--protected-settings",
            &protected,
            "--settings",
            &settings,
            "-o",
            "none",
        ])?;
        Ok(())
    }

    /// The load balancer's public IP, as the frontend the later steps send requests to.
    fn find_frontend(&mut self, w: &Walk) -> Result<()> {
        let ip = w.quiet(&[
            "network",
            "public-ip",
            "show",
            "-g",
            GROUP,
            "-n",
            "web-lb-ip",
            "--query",
            "ipAddress",
            "-o",
            "tsv",
        ])?;
        let port = self.port;
        let addr = format!("{}:{port}", ip.trim());
        let url = if port == 80 { format!("http://{}", ip.trim()) } else { format!("http://{addr}") };
        self.frontend = Frontend { addr, url };
        Ok(())
    }

    /// Step 0: import the test guest image (1.0.0 and 1.0.1).
    fn import_images(&self, w: &mut Walk) -> Result<()> {
        let driver = self.opts.driver;
        let opts = self.opts;
        let res = self.res;
        match driver {
            Driver::Qemu => {
                let tg = opts.testguest.clone().unwrap_or_default();
                for v in ["1.0.0", "1.0.1"] {
                    herd_args(w, kernel_image_args(&tg, v))?;
                }
            }
            Driver::Process => {
                w.note("process driver: an image is a directory with an executable init; these two differ only in etc/herd-image-version, like the VM images");
                for v in ["1.0.0", "1.0.1"] {
                    let dir = show_opt(&res.lock().unwrap().base) + "/image-" + v;
                    process_image(Path::new(&dir), v)?;
                    w.herd(&[
                        "image",
                        "import",
                        "--urn",
                        &format!("Herd:TestGuest:1:{v}"),
                        "--dir",
                        &dir,
                        "-o",
                        "table",
                    ])?;
                }
            }
        }
        Ok(())
    }

    /// Step 1: resource group, virtual network, subnet.
    fn group_and_network(&self, w: &mut Walk) -> Result<()> {
        let res = self.res;
        w.herd(&["group", "create", "-n", GROUP, "-l", "local", "-o", "table"])?;
        res.lock().unwrap().group_created = true;
        w.herd(&[
            "network",
            "vnet",
            "create",
            "-g",
            GROUP,
            "-n",
            "mynet",
            "--address-prefix",
            "10.0.0.0/16",
            "-o",
            "table",
        ])?;
        herd_args(
            w,
            args_on(
                &["network", "vnet", "subnet", "create"],
                &SUBNET,
                &["--address-prefixes", "10.0.0.0/24", "-o", "table"],
            ),
        )?;
        Ok(())
    }

    /// Step 2: a scale set of 2 behind a new load balancer, Manual upgrades.
    fn scale_set(&self, w: &mut Walk) -> Result<()> {
        let boot = self.boot;
        let admin_password = self.admin_password;
        let subnet =
            herd_args(w, args_on(&["network", "vnet", "subnet", "show"], &SUBNET, &["--query", "id", "-o", "tsv"]))?;
        let subnet = subnet.trim().to_string();
        w.herd(&[
            "vmss",
            "create",
            "-n",
            SET,
            "-g",
            GROUP,
            "--image",
            "Herd:TestGuest:1:1.0.0",
            "--instance-count",
            "2",
            "--vm-sku",
            "Standard_B1ms",
            "--admin-username",
            "labuser",
            "--authentication-type",
            "password",
            "--admin-password",
            admin_password,
            "--public-ip-address",
            "web-lb-ip",
            "--subnet",
            &subnet,
            "--lb",
            "web-lb",
            "--upgrade-policy-mode",
            "Manual",
            "--timeout",
            &boot.as_secs().to_string(),
            "-o",
            "table",
        ])?;
        herd_args(w, set_args(&["vmss", "list-instances"], &["-o", "table"]))?;
        let inst = w.instances()?;
        if inst.len() != 2 {
            bail!("list-instances shows {} instances (not counting overprovisioned extras), expected 2", inst.len());
        }
        if let Some(i) = inst.iter().find(|i| i["latestModelApplied"] != true) {
            bail!("instance {} is not on the latest model right after create", i["instanceId"]);
        }
        w.note("2 instances, both on the latest model (any overprovisioned extras are deleted and never billed)");
        Ok(())
    }

    /// Step 3: health probe and load-balancing rule.
    fn probe_and_rule(&self, w: &mut Walk) -> Result<()> {
        let port_s = self.port.to_string();
        w.note("--interval 5 (default 15) only makes the walkthrough quicker");
        herd_args(
            w,
            args_on(
                &["network", "lb", "probe", "create"],
                &LB,
                &[
                    "--name",
                    "webprobe",
                    "--protocol",
                    "Http",
                    "--path",
                    "/",
                    "--port",
                    &port_s,
                    "--interval",
                    "5",
                    "-o",
                    "table",
                ],
            ),
        )?;
        herd_args(
            w,
            args_on(
                &["network", "lb", "rule", "create"],
                &LB,
                &[
                    "--name",
                    "myHTTPRule",
                    "--protocol",
                    "tcp",
                    "--frontend-port",
                    &port_s,
                    "--backend-port",
                    &port_s,
                    "--frontend-ip-name",
                    "loadBalancerFrontEnd",
                    "--backend-pool-name",
                    "web-lbBEPool",
                    "--probe-name",
                    "webprobe",
                    "-o",
                    "table",
                ],
            ),
        )?;
        Ok(())
    }

    /// Step 4: install the app with a Custom Script extension.
    fn install_app(&mut self, w: &mut Walk) -> Result<()> {
        let boot = self.boot;
        let pg_password = self.pg_password;
        self.set_extension(w, 1)?;
        herd_args(w, set_args(&["vmss", "list-instances"], &["-o", "table"]))?;
        let inst = w.instances()?;
        if let Some(i) = inst.iter().find(|i| i["latestModelApplied"] != false) {
            bail!(
                "Manual policy: instance {} should not be on the latest model before update-instances",
                i["instanceId"]
            );
        }
        w.note("Manual policy: nothing changed on the instances yet; they are not on the latest model");
        w.herd(&["vmss", "update-instances", "--instance-ids", "*", "-n", SET, "-g", GROUP, "-o", "none"])?;
        let inst = w.wait_converged(2, boot)?;
        herd_args(w, set_args(&["vmss", "list-instances"], &["-o", "table"]))?;
        let id = inst[0]["instanceId"].as_str().unwrap_or("0").to_string();
        herd_args(
            w,
            set_args(
                &["vmss", "get-instance-view"],
                &[
                    "--instance-id",
                    &id,
                    "--query",
                    "extensions[0].{name:name, state:state, exitCode:exitCode}",
                    "-o",
                    "table",
                ],
            ),
        )?;
        self.names = inst.iter().filter_map(|i| i["computerName"].as_str().map(String::from)).collect();
        let shown = w.quiet(&[
            "vmss",
            "extension",
            "show",
            "-g",
            GROUP,
            "--vmss-name",
            SET,
            "--name",
            "CustomScript",
            "-o",
            "json",
        ])?;
        if shown.contains(pg_password) {
            bail!("the extension's protected settings were shown back");
        }
        w.note("the protected settings (with the database password) are never shown back");
        Ok(())
    }

    /// Step 5: both instances answer through the load balancer; add a TODO item.
    fn first_answers(&self, w: &mut Walk) -> Result<()> {
        let frontend = &self.frontend;
        let names = &self.names;
        w.herd(&["network", "public-ip", "show", "-g", GROUP, "-n", "web-lb-ip", "--query", "ipAddress", "-o", "tsv"])?;
        w.note(&format!("repeated curl {}/api/version (a new connection each time)", frontend.url));
        let want: Vec<String> = names.iter().map(|n| format!("Version 1 from {n}")).collect();
        frontend.answers_until(&want, Duration::from_secs(120), 6)?;
        w.note(&format!("both computer names answered: {}", names.join(", ")));
        let body = serde_json::json!({ "title": TODO_TITLE }).to_string();
        println!("\n$ curl -H 'Content-Type: application/json' -d '{body}' {}/api/todos", frontend.url);
        let (code, answer) = http(&frontend.addr, "POST", "/api/todos", Some(&body)).map_err(|e| anyhow!("{e}"))?;
        println!("{answer}");
        if code != 201 {
            bail!("adding a TODO item answered HTTP {code}: {answer}");
        }
        println!("\n$ curl {}/api/todos", frontend.url);
        let list = get(&frontend.addr, "/api/todos").map_err(|e| anyhow!("{e}"))?;
        println!("{list}");
        if !list.contains(TODO_TITLE) {
            bail!("the TODO item is not in the list: {list}");
        }
        Ok(())
    }

    /// Step 5 (bridged): the instances' private IPs, and instance 0 fetching `/api/version`
    /// from instance 1 by its private IP (the app's `/api/peer/<ip>`), over the subnet's bridge.
    fn private_ips(&self, w: &mut Walk) -> Result<()> {
        herd_args(w, set_args(&["vmss", "list-instances"], &["-o", "table"]))?;
        let inst = w.instances()?;
        let ips: Vec<(String, String)> = inst
            .iter()
            .filter_map(|i| {
                Some((i["computerName"].as_str()?.to_string(), i["privateIpAddress"].as_str()?.to_string()))
            })
            .collect();
        let [(name0, ip0), (name1, ip1)] = &ips[..] else {
            bail!("expected two instances with private IPs, list-instances shows {ips:?}");
        };
        w.note(&format!("{name0} has {ip0}, {name1} has {ip1}: addresses of subnet 10.0.0.0/24, from its bridge"));
        let port = self.port;
        let (target, url) = (format!("{ip0}:{port}"), format!("http://{ip0}:{port}/api/peer/{ip1}"));
        println!("\n$ curl {url}");
        let answer = wait(&format!("{name0} to fetch /api/version from {ip1}"), Duration::from_secs(60), || {
            Ok(get(&target, &format!("/api/peer/{ip1}")).ok())
        })?;
        println!("{answer}");
        if !answer.contains(&format!("fetched http://{ip1}:{port}/api/version: Version"))
            || !answer.contains(name1.as_str())
        {
            bail!("{name0} did not get {name1}'s version over the vnet: {answer}");
        }
        w.note(&format!("{name0} reached {name1} on its private IP over the subnet's bridge"));
        Ok(())
    }

    /// Step 6: version 2 on ONE instance, under load.
    fn one_instance_v2(&self, w: &mut Walk) -> Result<()> {
        let boot = self.boot;
        let frontend = &self.frontend;
        self.set_extension(w, 2)?;
        let ids = herd_args(
            w,
            set_args(&["vmss", "list-instances"], &["--query", "[?!overprovisioned].instanceId", "-o", "tsv"]),
        )?;
        let id = ids
            .split_whitespace()
            .filter_map(|s| s.parse::<u64>().ok())
            .max()
            .ok_or_else(|| anyhow!("no instance ids"))?;
        let id = id.to_string();
        let inst = w.instances()?;
        let name_of = |i: &Value| i["computerName"].as_str().unwrap_or_default().to_string();
        let upgraded = inst.iter().find(|i| i["instanceId"] == id.as_str()).map(name_of).unwrap_or_default();
        let other = inst.iter().find(|i| i["instanceId"] != id.as_str()).map(name_of).unwrap_or_default();
        w.note(&format!(
            "a load loop sends requests through {} while instance {id} ({upgraded}) upgrades",
            frontend.url
        ));
        let load = Load::start(&frontend.addr, 2, 20_000, Duration::from_secs(600));
        let t0 = Instant::now();
        w.herd(&["vmss", "update-instances", "--instance-ids", &id, "-n", SET, "-g", GROUP, "-o", "none"])?;
        let gen = w.generation()?;
        wait("the upgraded instance's extension", boot, || {
            let inst = w.instances()?;
            let i = inst.iter().find(|i| i["instanceId"] == id.as_str()).cloned().unwrap_or_default();
            if i["extensions"][0]["state"] == "Failed" {
                bail!("the extension failed on instance {id}: {}", w.mask(&i["extensions"][0]["message"].to_string()));
            }
            Ok((i["modelGeneration"].as_u64() == Some(gen)
                && i["pendingAction"].is_null()
                && i["extensions"][0]["state"] == "Succeeded")
                .then_some(()))
        })?;
        let want = vec![format!("Version 2 from {upgraded}"), format!("Version 1 from {other}")];
        println!();
        frontend.answers_until(&want, Duration::from_secs(60), 6)?;
        let t1 = Instant::now();
        let (total, within, failures) = load.finish(t0, t1);
        herd_args(w, set_args(&["vmss", "list-instances"], &["-o", "table"]))?;
        w.note(&format!(
        "load during the upgrade: {within} requests completed while instance {id} upgraded ({:.1}s), {total} in all, {} failed",
        (t1 - t0).as_secs_f64(),
        failures.len()
    ));
        check_load("the upgrade of one instance", "the upgrade", " to call it proven", within, &failures)?;
        w.note("answers are now a mix of version 2 and version 1; the app never stopped answering");
        Ok(())
    }

    /// Step 7: a newer image version, update-instances '*' (reimage).
    fn new_image(&self, w: &mut Walk) -> Result<()> {
        let boot = self.boot;
        let frontend = &self.frontend;
        set_image_version(w, "1.0.1")?;
        w.herd(&["vmss", "update-instances", "--instance-ids", "*", "-n", SET, "-g", GROUP, "-o", "none"])?;
        let inst = w.wait_converged(2, boot)?;
        herd_args(w, set_args(&["vmss", "list-instances"], &["-o", "table"]))?;
        w.check_image_version("1.0.1")?;
        let want: Vec<String> =
            inst.iter().map(|i| format!("Version 2 from {}", i["computerName"].as_str().unwrap_or_default())).collect();
        println!();
        frontend.answers_until(&want, Duration::from_secs(120), 4)?;
        frontend.check_todo()?;
        Ok(())
    }

    /// Step 7 (rolling variant): Rolling policy, image move in batches under load.
    fn rolling_image(&self, w: &mut Walk) -> Result<()> {
        let boot = self.boot;
        let frontend = &self.frontend;
        w.herd(&["vmss", "update", "-n", SET, "-g", GROUP, "--set", "upgradePolicy.mode=Rolling", "-o", "none"])?;
        w.note("with a Rolling policy a model change rolls through by itself, in batches gated by the probe; the test guest has two versions, so this move goes back to 1.0.0");
        let load = Load::start(&frontend.addr, 2, 50_000, Duration::from_secs(900));
        let t0 = Instant::now();
        set_image_version(w, "1.0.0")?;
        let latest = wait("the rolling upgrade to finish", boot * 3, || {
            let v = w.json(&["vmss", "rolling-upgrade", "get-latest", "-g", GROUP, "-n", SET])?;
            match v["state"].as_str() {
                Some("Completed") => Ok(Some(v)),
                Some(s @ ("Faulted" | "Cancelled" | "Aborted" | "Failed")) => {
                    bail!("the rolling upgrade ended {s}: {v}")
                }
                _ => Ok(None),
            }
        })?;
        w.wait_converged(2, boot)?;
        let t1 = Instant::now();
        let (total, within, failures) = load.finish(t0, t1);
        herd_args(w, set_args(&["vmss", "rolling-upgrade", "get-latest"], &["-o", "table"]))?;
        let _ = latest;
        w.check_image_version("1.0.0")?;
        w.note(&format!(
            "load during the rolling upgrade: {within} requests completed in {:.1}s, {total} in all, {} failed",
            (t1 - t0).as_secs_f64(),
            failures.len()
        ));
        check_load("the rolling upgrade", "the rolling upgrade", "", within, &failures)?;
        frontend.check_todo()?;
        Ok(())
    }

    /// Step 8: scale to 3.
    fn scale_to_three(&self, w: &mut Walk) -> Result<()> {
        let boot = self.boot;
        let frontend = &self.frontend;
        w.herd(&[
            "vmss",
            "scale",
            "--new-capacity",
            "3",
            "-n",
            SET,
            "-g",
            GROUP,
            "--timeout",
            &boot.as_secs().to_string(),
            "-o",
            "none",
        ])?;
        let inst = w.wait_converged(3, boot)?;
        herd_args(w, set_args(&["vmss", "list-instances"], &["-o", "table"]))?;
        let cap = w.json(&["vmss", "show", "-g", GROUP, "-n", SET])?["sku"]["capacity"].as_u64();
        if cap != Some(3) || inst.len() != 3 {
            bail!("after scale: capacity {cap:?} and {} instances, expected 3", inst.len());
        }
        let want: Vec<String> =
            inst.iter().map(|i| format!("Version 2 from {}", i["computerName"].as_str().unwrap_or_default())).collect();
        println!();
        frontend.answers_until(&want, Duration::from_secs(120), 3)?;
        w.note("3 instances, all answering through the load balancer");
        Ok(())
    }

    /// Step 9: autoscale min 2 max 10 count 3; CPU is low, so it scales in to 2.
    fn autoscale_in(&self, w: &mut Walk) -> Result<()> {
        let window = self.opts.window.clone();
        w.note(&format!(
        "the walkthrough's window is 5m; this run uses avg {window} (--window) and the server evaluates every 5 s ([autoscale] interval_secs, sample_interval_secs)"
    ));
        w.herd(&[
            "monitor",
            "autoscale",
            "create",
            "-g",
            GROUP,
            "--resource",
            SET,
            "--resource-type",
            "Microsoft.Compute/virtualMachineScaleSets",
            "--name",
            "autoscale",
            "--min-count",
            "2",
            "--max-count",
            "10",
            "--count",
            "3",
            "-o",
            "table",
        ])?;
        let cond_in = format!("Percentage CPU < 30 avg {window}");
        let cond_out = format!("Percentage CPU > 70 avg {window}");
        for (condition, direction) in [(&cond_in, "in"), (&cond_out, "out")] {
            w.herd(&[
                "monitor",
                "autoscale",
                "rule",
                "create",
                "-g",
                GROUP,
                "--autoscale-name",
                "autoscale",
                "--condition",
                condition,
                "--scale",
                direction,
                "1",
                "-o",
                "table",
            ])?;
        }
        w.note(&format!(
        "waiting for the autoscaler: it acts once it has {window} of CPU samples (herd samples every set since it exists)..."
    ));
        let limit = parse_window(&window).unwrap_or(Duration::from_secs(300)) + Duration::from_secs(240);
        let started = Instant::now();
        let mut last_print = Instant::now();
        wait("autoscale to bring the set to 2 instances", limit, || {
            let cap = w.json(&["vmss", "show", "-g", GROUP, "-n", SET])?["sku"]["capacity"].as_u64();
            // Until the scaled-in instance is gone from list-instances, not only marked.
            let n = w.json(&["vmss", "list-instances", "-g", GROUP, "-n", SET])?.as_array().map_or(0, Vec::len);
            if last_print.elapsed() > Duration::from_secs(15) {
                println!("  ... {:.0}s: capacity {}, {n} instances", started.elapsed().as_secs_f64(), cap.unwrap_or(0));
                last_print = Instant::now();
            }
            Ok((cap == Some(2) && n == 2).then_some(()))
        })?;
        w.herd(&[
            "monitor",
            "activity-log",
            "list",
            "-g",
            GROUP,
            "--resource",
            SET,
            "--query",
            "[?operation=='Autoscale']",
            "-o",
            "table",
        ])?;
        let log = w.json(&["monitor", "activity-log", "list", "-g", GROUP, "--resource", SET])?;
        let scaled_in = log.as_array().into_iter().flatten().any(|e| {
            e["operation"] == "Autoscale" && e["message"].as_str().is_some_and(|m| m.contains("capacity 3 → 2"))
        });
        if !scaled_in {
            bail!("the activity log shows no autoscale scale-in: {log}");
        }
        herd_args(w, set_args(&["vmss", "list-instances"], &["-o", "table"]))?;
        w.note("the activity log shows the autoscale scale-in; the set runs on 2 VMs");
        Ok(())
    }

    /// Finally: the TODO item from step 5 is still there; no secret leaked.
    fn no_secret_leaked(&self, w: &mut Walk) -> Result<()> {
        let frontend = &self.frontend;
        let pg_password = self.pg_password;
        let admin_password = self.admin_password;
        frontend.check_todo()?;
        let shown = [
            w.quiet(&["vmss", "show", "-g", GROUP, "-n", SET, "-o", "json"])?,
            w.quiet(&["vmss", "list-instances", "-g", GROUP, "-n", SET, "-o", "json"])?,
            w.quiet(&["vmss", "extension", "list", "-g", GROUP, "--vmss-name", SET, "-o", "json"])?,
            w.quiet(&["monitor", "activity-log", "list", "-g", GROUP, "-o", "json"])?,
        ]
        .join("\n");
        let log = std::fs::read_to_string(&w.log_path).unwrap_or_default();
        for (what, secret) in [("the database password", pg_password), ("the admin password", admin_password)] {
            if shown.contains(secret) {
                bail!("the API showed {what}");
            }
            if log.contains(secret) {
                bail!("the server's log ({}) contains {what}", w.log_path.display());
            }
        }
        w.note("neither password appears in what the API returns or in the server's log");
        Ok(())
    }
}

/// `30s`, `1m`, `5m`, `1h` → a duration.
pub fn parse_window(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    match unit {
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        "h" => Some(Duration::from_secs(n * 3600)),
        _ => None,
    }
}

/// `herd vmss update --set ...imageReference.version=VERSION` on the walkthrough's set.
fn set_image_version(w: &Walk, version: &str) -> Result<()> {
    let set = format!("virtualMachineProfile.storageProfile.imageReference.version={version}");
    w.herd(&["vmss", "update", "-n", SET, "-g", GROUP, "--set", &set, "-o", "none"]).map(drop)
}

/// Fails unless every request of a load run `during` an upgrade succeeded and at least 50
/// completed within it (`within`; `proven` ends that message).
fn check_load(during: &str, within_what: &str, proven: &str, within: usize, failures: &[String]) -> Result<()> {
    if !failures.is_empty() {
        bail!(
            "{} requests through the frontend failed during {during}, e.g. {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
    }
    if within < 50 {
        bail!("only {within} requests completed during {within_what} (at least 50 are needed{proven})");
    }
    Ok(())
}
