//! A real `herd server` process for CLI tests, and helpers to run the real `herd` CLI against it.
#![allow(dead_code)]

pub mod rig;

/// `image import` of the test guest's kernel, initrd and command line (`tg`: its version
/// directory) as `urn`.
pub fn testguest_import_args(tg: &Path, urn: &str) -> Vec<String> {
    let p = |f: &str| tg.join(f).display().to_string();
    ["image", "import", "--urn", urn, "--kernel", &p("vmlinuz"), "--initrd", &p("initrd.img"), "--cmdline"]
        .into_iter()
        .map(String::from)
        .chain([format!("@{}", p("cmdline"))])
        .collect()
}

/// Keeps `child`'s stderr lines as they come (echoed as `[tag] line` when `HERD_TEST_LOG` is
/// set); the thread ends with the pipe, so joining it means every line is in.
pub fn keep_stderr(
    child: &mut Child,
    tag: &'static str,
) -> (std::sync::Arc<std::sync::Mutex<Vec<String>>>, std::thread::JoinHandle<()>) {
    let stderr = child.stderr.take().expect("stderr piped");
    let log: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let keep = log.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if std::env::var_os("HERD_TEST_LOG").is_some() {
                eprintln!("[{tag}] {line}");
            }
            keep.lock().unwrap().push(line);
        }
    });
    (log, reader)
}

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const HERD: &str = env!("CARGO_BIN_EXE_herd");

pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub data_dir: PathBuf,
    pub driver: String,
    config: Option<PathBuf>,
    /// Run the server and every CLI call inside this network namespace.
    pub netns: Option<String>,
    /// Every line the server wrote to stderr (its log), for tests that check what is logged.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// `HERD_LOG` (an env filter) for the server (default: the server's own default).
    pub rust_log: Option<String>,
    /// Extra `herd server` arguments (such as `--keep-orphans`), used from the next (re)start.
    pub extra_args: Vec<String>,
}

impl Server {
    /// Starts `herd server` on a free loopback port and waits until it listens.
    pub fn start(driver: &str, data_dir: &Path, config: Option<&str>) -> Server {
        Self::start_with(None, driver, data_dir, config)
    }

    /// Like [`start`](Self::start), inside network namespace `ns` (which must exist).
    pub fn start_in(ns: &str, driver: &str, data_dir: &Path, config: Option<&str>) -> Server {
        Self::start_with(Some(ns.to_string()), driver, data_dir, config)
    }

    /// Like [`start_in`](Self::start_in), with extra `herd server` arguments (`--accel tcg`).
    pub fn start_in_with_args(ns: &str, driver: &str, data_dir: &Path, config: Option<&str>, args: &[&str]) -> Server {
        Self::start_full(Some(ns.to_string()), driver, data_dir, config, args)
    }

    fn start_with(netns: Option<String>, driver: &str, data_dir: &Path, config: Option<&str>) -> Server {
        Self::start_full(netns, driver, data_dir, config, &[])
    }

    fn start_full(netns: Option<String>, driver: &str, data_dir: &Path, config: Option<&str>, args: &[&str]) -> Server {
        let config = with_address_block(config.unwrap_or(""));
        let config = Some({
            let p = data_dir.with_extension("toml");
            std::fs::write(&p, config).unwrap();
            p
        });
        let mut s = Server {
            child: None,
            url: String::new(),
            data_dir: data_dir.to_path_buf(),
            driver: driver.into(),
            config,
            netns,
            log: Default::default(),
            rust_log: None,
            extra_args: args.iter().map(|a| a.to_string()).collect(),
        };
        s.spawn();
        s
    }

    /// Like [`start`](Self::start), with the server logging at `HERD_LOG=level`.
    pub fn start_logged(driver: &str, data_dir: &Path, config: Option<&str>, level: &str) -> Server {
        let mut s = Self::start(driver, data_dir, config);
        s.rust_log = Some(level.into());
        s.restart();
        s
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// A command for `program`, wrapped in `ip netns exec` when the server lives in a namespace.
    pub fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    fn spawn(&mut self) {
        let mut cmd = self.command(HERD);
        cmd.args(["server", "--listen", "127.0.0.1:0", "--driver", &self.driver]).arg("--data-dir").arg(&self.data_dir);
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        if let Some(l) = &self.rust_log {
            cmd.env("HERD_LOG", l);
        }
        cmd.args(&self.extra_args);
        let log = self.log.clone();
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn herd server");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line.clone());
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
                if std::env::var_os("HERD_TEST_LOG").is_some() {
                    eprintln!("[server] {line}");
                }
            }
        });
        self.url =
            rx.recv_timeout(herd_test_support::scaled(Duration::from_secs(30))).expect("server announced its address");
        self.child = Some(child);
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same data dir (new port).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn herd(&self, args: &[&str]) -> Output {
        self.command(HERD)
            .args(args)
            .env("HERD_SERVER", &self.url)
            .env("HERD_DATA_DIR", &self.data_dir)
            .env_remove("HERD_TOKEN")
            .output()
            .expect("run herd")
    }

    /// `sh -c cmd` in `dir`, as a user would type it: the built `herd` first on `PATH`, pointed
    /// at this server (no token in the environment).
    pub fn shell(&self, cmd: &str, dir: &Path) -> Output {
        let bin_dir = Path::new(HERD).parent().unwrap();
        let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
        Command::new("sh")
            .args(["-c", cmd])
            .current_dir(dir)
            .env("PATH", &path)
            .env("HERD_SERVER", &self.url)
            .env("HERD_DATA_DIR", &self.data_dir)
            .env_remove("HERD_TOKEN")
            .output()
            .unwrap()
    }

    /// Runs a command that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.herd(args);
        assert!(
            out.status.success(),
            "herd {} failed:\n{}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("JSON output")
    }

    /// Runs a command that must fail; returns stderr.
    pub fn err(&self, args: &[&str]) -> String {
        let out = self.herd(args);
        assert!(
            !out.status.success(),
            "herd {} should have failed but printed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("api-token")).unwrap().trim().to_string()
    }

    /// The cluster CA bundle the server made in its data dir: what the CLI trusts.
    pub fn ca_file(&self) -> PathBuf {
        self.data_dir.join("tls").join("ca.pem")
    }

    /// An HTTP client that trusts this server's cluster CA (and nothing else), as the CLI does.
    pub fn http(&self) -> reqwest::ClientBuilder {
        herd_client::http_client(&herd_client::Trust::File(self.ca_file())).expect("the server's CA bundle")
    }

    /// A GET of `path` with curl over HTTPS (trusting the server's cluster CA, in its network
    /// namespace), with `token` if given, on a new connection: "<status line>\n<body>", or ""
    /// when curl could not talk to the server.
    pub fn https_get(&self, path: &str, token: Option<&str>) -> String {
        let mut c = self.command("curl");
        c.args(["-s", "-i", "-m", "10", "--cacert"]).arg(self.ca_file());
        if let Some(t) = token {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        let out = c.arg(format!("{}{path}", self.url)).output().expect("curl (apt-get install curl)");
        let out = String::from_utf8_lossy(&out.stdout).to_string();
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        format!("{}\n{}", head.lines().next().unwrap_or(""), body)
    }

    /// `GET /metrics` with the API token (it needs one); the body, or "" on any failure.
    pub fn metrics(&self) -> String {
        let answer = self.https_get("/metrics", Some(&self.token()));
        match answer.split_once('\n') {
            Some((status, body)) if status.starts_with("HTTP/1.1 200") => body.to_string(),
            _ => String::new(),
        }
    }
}

/// The address block (`[network] host_local_block`) of the next server this test binary
/// starts. A server left to itself derives its block from a hash of its data dir, so two of
/// the parallel tests in one binary share a block about once in 128 pairs: their instances then
/// get the same reach addresses (and public IPs) and one set never becomes healthy. Blocks
/// below 64 keep both the reach block (block % 128) and the public-IP block (block % 64)
/// distinct for the first 64 servers of a binary; the start varies with the pid so binaries run
/// side by side rarely meet either.
static NEXT_BLOCK: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// `config` with a `host_local_block` of its own, unless it names one already, and host-local
/// networking unless it names a mode (a new data dir of root defaults to bridged, which only
/// tests inside a network namespace of their own may use).
fn with_address_block(config: &str) -> String {
    let config = herd_bench::host_local_unless_set(config);
    let config = config.as_str();
    if config.contains("host_local_block") {
        return config.to_string();
    }
    let n = NEXT_BLOCK.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let block = (std::process::id() + n) % 64;
    match config.find("[network]\n") {
        Some(at) => {
            let end = at + "[network]\n".len();
            format!("{}host_local_block = {block}\n{}", &config[..end], &config[end..])
        }
        None => format!("{config}\n[network]\nhost_local_block = {block}\n"),
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        // Instances outlive their server by design; a test that failed half-way must not leave
        // them running (they would hold addresses and ports for the next test).
        kill_instances(&self.data_dir);
    }
}

/// A live process that carries the process-driver tag of a test server's data dir.
pub struct TaggedProcess {
    pub pid: u32,
    pub env: Vec<String>,
    pub cmdline: String,
}

impl TaggedProcess {
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env.iter().find_map(|v| v.strip_prefix(name)?.strip_prefix('='))
    }
}

/// Every process whose environment carries the process-driver tag of `data_dir`.
pub fn tagged_processes(data_dir: &Path) -> Vec<TaggedProcess> {
    // The server tags its instances with its cluster id (the data dir's `cluster-id` file).
    let Ok(id) = std::fs::read_to_string(data_dir.join("cluster-id")) else { return vec![] };
    let tag = format!("HERD_DRIVER_TAG=herd:{}", id.trim());
    let Ok(entries) = std::fs::read_dir("/proc") else { return vec![] };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let env: Vec<String> = raw.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
            env.contains(&tag).then(|| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                TaggedProcess { pid, env, cmdline: String::from_utf8_lossy(&cmd).into_owned() }
            })
        })
        .collect()
}

/// Kills every process whose environment carries the process-driver tag of `data_dir`.
pub fn kill_instances(data_dir: &Path) {
    for p in tagged_processes(data_dir) {
        let _ = Command::new("kill").args(["-9", &p.pid.to_string()]).status();
    }
}

/// Polls `f` until it returns Some, or panics after `timeout` (times `HERD_TEST_TIME_SCALE`)
/// naming `what`. Use [`wait_observing`] when the failure should show the last state seen.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    wait_observing(what, timeout, || f().ok_or_else(|| "(not recorded)".to_string()))
}

/// Polls `f` until it returns `Ok`, or panics after `timeout` (times `HERD_TEST_TIME_SCALE`)
/// naming `what`, how long it waited and `f`'s last `Err`: the state it last observed.
pub fn wait_observing<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let timeout = herd_test_support::scaled(timeout);
    let start = Instant::now();
    loop {
        let last = match f() {
            Ok(v) => {
                // Shown with the test's output (on failure, or with --nocapture): how long each
                // wait really took, the measurement every deadline here is sized from.
                eprintln!("waited {:.1}s for {what}", start.elapsed().as_secs_f64());
                return v;
            }
            Err(observed) => observed,
        };
        if start.elapsed() >= timeout {
            panic!(
                "timed out after {:.1}s (deadline {timeout:?}, HERD_TEST_TIME_SCALE={}) waiting for {what}; last observed:\n{last}",
                start.elapsed().as_secs_f64(),
                herd_test_support::time_scale()
            );
        }
        // The poll interval, not a synchronisation.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One line per instance of a `list-instances -o json` answer: id, power state, provisioning
/// state, health, and the last error when there is one (for timeout messages).
pub fn instances_summary(list: &Value) -> String {
    let Some(items) = list.as_array() else { return format!("not a list: {list}") };
    if items.is_empty() {
        return "no instances".into();
    }
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    items
        .iter()
        .map(|i| {
            let mut line = format!(
                "instance {}: power {}, provisioning {}, state {}, goal {}, health {}",
                s(&i["instanceId"]),
                s(&i["powerState"]),
                s(&i["provisioningState"]),
                s(&i["state"]),
                s(&i["goal"]),
                i["health"].as_str().unwrap_or("none (no probe result)")
            );
            if i["draining"] == true {
                line.push_str(", draining");
            }
            if let Some(e) = i["lastError"].as_str() {
                line.push_str(&format!(", last error: {e}"));
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes an image directory whose `init` runs `body`.
pub fn image_dir(dir: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let init = dir.join("init");
    std::fs::write(&init, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir.to_path_buf()
}

pub const SIM_CONFIG: &str = "[sim]\nboot_min_ms = 5\nboot_max_ms = 30\n";

/// A sim server (with [`SIM_CONFIG`]) in a new temporary directory, with the resource group
/// `group` and a sleeper image imported as `Herd:TestGuest:1:<version>` for each of `versions`.
pub fn sim_with_image(group: &str, versions: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start("sim", &dir.path().join("data"), Some(SIM_CONFIG));
    let img = image_dir(&dir.path().join("img"), "exec sleep 3600");
    s.ok(&["group", "create", "-n", group, "-l", "local"]);
    for v in versions {
        s.ok(&["image", "import", "--urn", &format!("Herd:TestGuest:1:{v}"), "--dir", img.to_str().unwrap()]);
    }
    (dir, s)
}

/// A small HTTP file server on loopback for extension `fileUris`: serves `files` by name until
/// dropped. Each connection is one request (Connection: close).
pub struct FileServer {
    pub base: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FileServer {
    pub fn start(files: Vec<(&str, Vec<u8>)>) -> FileServer {
        let files = files.into_iter().map(|(n, b)| (n.to_string(), b)).collect();
        let (port, stop) = herd_demo::walkthrough::start_file_server(files).unwrap();
        FileServer { base: format!("http://127.0.0.1:{port}"), stop }
    }

    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Samples every `/proc/*/cmdline` in a background thread until dropped; `seen(needle)` tells
/// whether any command line ever contained `needle`.
pub struct CmdlineSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    hits: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    samples: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl CmdlineSampler {
    pub fn start(needle: &str) -> CmdlineSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hits = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let samples = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop2, hits2, samples2, needle) =
            (stop.clone(), hits.clone(), samples.clone(), needle.as_bytes().to_vec());
        std::thread::spawn(move || {
            while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(entries) = std::fs::read_dir("/proc") {
                    for e in entries.flatten() {
                        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
                            if c.windows(needle.len()).any(|w| w == needle.as_slice()) {
                                hits2.lock().unwrap().push(String::from_utf8_lossy(&c).replace('\0', " "));
                            }
                        }
                    }
                }
                samples2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // Pacing of the sampling loop.
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        CmdlineSampler { stop, hits, samples }
    }

    /// Command lines that contained the needle (must be empty), and how many scans were made.
    pub fn finish(self) -> (Vec<String>, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        (self.hits.lock().unwrap().clone(), self.samples.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// The pids of the QEMUs a server with `data_dir` started (its VM dirs are in their argv).
pub fn qemu_pids(data_dir: &Path) -> Vec<u32> {
    let needle = data_dir.canonicalize().unwrap().join("vms").display().to_string();
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("qemu-system") && c.contains(&needle)
            })
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// A network namespace a test created: at the end its processes (servers, dnsmasq) are
/// killed and it is deleted, which removes every interface in it, and so are the instance
/// namespaces (`hn*`) plugged into it, with their processes (a failed test leaves none behind).
pub struct TestNetns(pub String, std::collections::BTreeSet<String>);

/// The bridged process instances' namespaces on the host.
pub fn instance_namespaces() -> std::collections::BTreeSet<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("hn")).collect()
        })
        .unwrap_or_default()
}

impl TestNetns {
    /// Creates `ns` with its loopback up.
    pub fn create(ns: &str) -> TestNetns {
        assert!(Command::new("ip").args(["netns", "add", ns]).status().unwrap().success(), "ip netns add {ns}");
        let guard = TestNetns(ns.to_string(), instance_namespaces());
        assert!(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]).status().unwrap().success());
        guard
    }

    /// The interfaces in the namespace, sorted.
    pub fn links(&self) -> Vec<String> {
        let out = Command::new("ip").args(["-n", &self.0, "-o", "link", "show"]).output().unwrap();
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect();
        names.sort();
        names
    }

    /// The pids of the processes in the namespace.
    pub fn pids(&self) -> Vec<u32> {
        let out = Command::new("ip").args(["netns", "pids", &self.0]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
    }
}

/// `(index, peer index)` of each veth-like link of namespace `ns` (`ip -o link`: `12: hv…@if2:`).
fn link_pairs(ns: &str) -> Vec<(u32, u32)> {
    let out = Command::new("ip").args(["-n", ns, "-o", "link", "show"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (index, rest) = l.split_once(": ")?;
            let peer = rest.split(':').next()?.split_once("@if")?.1;
            Some((index.trim().parse().ok()?, peer.parse().ok()?))
        })
        .collect()
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        // The instance namespaces of this test's servers: those whose eth0 is the peer of a
        // link in this namespace (other tests' instance namespaces, running at the same time,
        // are left alone).
        let ours: std::collections::BTreeSet<(u32, u32)> = link_pairs(&self.0).into_iter().collect();
        let mine: Vec<String> = instance_namespaces()
            .difference(&self.1)
            .filter(|ns| link_pairs(ns).iter().any(|(i, peer)| ours.contains(&(*peer, *i))))
            .cloned()
            .collect();
        for pid in self.pids() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        for ns in mine {
            let out = Command::new("ip").args(["netns", "pids", &ns]).output().unwrap();
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
            let _ = std::fs::remove_file(Path::new("/run/netns").join(&ns));
        }
    }
}

/// The directory where the server of `data_dir` keeps its bridged networks' state (see
/// `herd_hostnet`): from its driver tag, in the data dir's cluster file.
pub fn hostnet_root(data_dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(data_dir.join(herd_driver::tag::CLUSTER_ID_FILE)).unwrap();
    let (_, tag) = herd_driver::tag::parse_cluster_file(&text);
    herd_hostnet::HostNet::for_tag(&tag).root().to_path_buf()
}

/// Removes a directory at the end, even on failure (a bridged server's state under `/run`).
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills the QEMUs of a test's data dir when dropped, whatever happened.
pub struct VmGuard(pub PathBuf);

impl Drop for VmGuard {
    fn drop(&mut self) {
        // A server killed mid-spawn can still daemonize one QEMU after a first scan: keep killing
        // until three scans in a row (100 ms apart, a poll interval) find none, for at most 10 s.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut clean_scans = 0;
        while clean_scans < 3 && std::time::Instant::now() < deadline {
            let pids = qemu_pids(&self.0);
            clean_scans = if pids.is_empty() { clean_scans + 1 } else { 0 };
            for pid in pids {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A command line written as one string: `words("vmss show -g rg -n web")`, split on
/// whitespace, where an argument in single quotes keeps its spaces (`--timegrain 'avg 1s'`).
/// There is no escaping: an argument holding a single quote is passed on its own.
pub fn words(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        let (arg, after) = match rest.strip_prefix('\'') {
            Some(quoted) => quoted.split_once('\'').unwrap_or_else(|| panic!("unclosed quote in {line:?}")),
            None => rest.split_once(char::is_whitespace).unwrap_or((rest, "")),
        };
        out.push(arg);
        rest = after.trim_start();
    }
    out
}

/// `cmd`, then a scale set's `-g <group> -n <name>` (`set`), then `extra`: the shape of every
/// `vmss` command on one set.
pub fn on_set<'a>(set: &[&'a str], cmd: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = cmd.to_vec();
    v.extend_from_slice(set);
    v.extend_from_slice(extra);
    v
}

/// The instances of a set (`set` as in [`on_set`]) that count toward its capacity: not
/// overprovisioned extras, not being deleted.
pub fn counted_instances(s: &Server, set: &[&str]) -> Vec<Value> {
    let all = s.json(&on_set(set, &["vmss", "list-instances"], &[]));
    all.as_array()
        .unwrap()
        .iter()
        .filter(|i| i["overprovisioned"] == false && i["goal"] != "Deleted")
        .cloned()
        .collect()
}

impl Server {
    /// Imports the test guest in `tg` (`HERD_TESTGUEST_OUT`) as `urn`, booted from its kernel,
    /// initrd and command line (direct kernel boot: no network-config needed in the seed).
    pub fn import_testguest_kernel(&self, tg: &Path, urn: &str) {
        let args = testguest_import_args(tg, urn);
        self.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    /// Creates resource group `group` and imports the image directory `img` as `urn`.
    pub fn group_with_image(&self, group: &str, urn: &str, img: &Path) {
        self.ok(&["group", "create", "-n", group]);
        self.ok(&["image", "import", "--urn", urn, "--dir", img.to_str().unwrap()]);
    }

    /// `vmss create -g <group> -n <name> --image <urn> --instance-count <count> <extra> --quiet`.
    pub fn create_set(&self, group: &str, name: &str, urn: &str, count: &str, extra: &[&str]) -> String {
        let mut args = vec!["vmss", "create", "-g", group, "-n", name, "--image", urn, "--instance-count", count];
        args.extend_from_slice(extra);
        args.push("--quiet");
        self.ok(&args)
    }

    /// `vmss extension set -g <group> --vmss-name <set> --name <name> --publisher <publisher>
    /// --version <version> <extra>`, which must succeed; its stdout.
    pub fn set_extension(&self, on: [&str; 2], name: &str, publisher: &str, version: &str, extra: &[&str]) -> String {
        let [group, set] = on;
        let mut args = vec!["vmss", "extension", "set", "-g", group, "--vmss-name", set];
        args.extend_from_slice(&["--name", name, "--publisher", publisher, "--version", version]);
        args.extend_from_slice(extra);
        self.ok(&args)
    }
}

/// A load-balancing rule with its own HTTP health probe, as the load-balancer tests make them.
/// [`ProbedRule::default`] is the common one: on `web-lb` in `rg`, probe `webprobe` on `/` at
/// port 8080 every second with threshold 2, and rule `http` from port 18080 to 8080.
pub struct ProbedRule<'a> {
    pub group: &'a str,
    pub lb: &'a str,
    pub probe: &'a str,
    pub backend_port: &'a str,
    pub interval: &'a str,
    pub threshold: &'a str,
    pub rule: &'a str,
    pub frontend_port: &'a str,
}

impl Default for ProbedRule<'_> {
    fn default() -> Self {
        ProbedRule {
            group: "rg",
            lb: "web-lb",
            probe: "webprobe",
            backend_port: "8080",
            interval: "1",
            threshold: "2",
            rule: "http",
            frontend_port: "18080",
        }
    }
}

impl ProbedRule<'_> {
    /// Creates the probe, then the rule that uses it.
    pub fn create(&self, s: &Server) {
        let on_lb = ["-g", self.group, "--lb-name", self.lb];
        let mut probe = on_set(&on_lb, &["network", "lb", "probe", "create"], &["-n", self.probe]);
        probe.extend_from_slice(&["--protocol", "Http", "--path", "/", "--port", self.backend_port]);
        probe.extend_from_slice(&["--interval", self.interval, "--threshold", self.threshold]);
        s.ok(&probe);
        let mut rule = on_set(&on_lb, &["network", "lb", "rule", "create"], &["-n", self.rule]);
        rule.extend_from_slice(&["--frontend-port", self.frontend_port, "--backend-port", self.backend_port]);
        rule.extend_from_slice(&["--probe-name", self.probe]);
        s.ok(&rule);
    }
}

/// The process-group leaders among a test server's instance processes (see
/// [`tagged_processes`]), with their instance keys; zombies left out.
pub fn instance_group_leaders(data_dir: &Path) -> Vec<(u32, String)> {
    tagged_processes(data_dir)
        .into_iter()
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", p.pid)).unwrap_or_default();
            let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |x| x.1).split_whitespace().collect();
            fields.first() != Some(&"Z") && fields.get(2) == Some(&p.pid.to_string().as_str())
        })
        .map(|p| (p.pid, p.var("HERD_INSTANCE_KEY").unwrap_or("").to_string()))
        .collect()
}

/// An image `init` body serving HTTP with Python on `$HERD_ADDRESS:8080`. `respond` is the
/// body of `do_GET` (Python, indented 8 spaces) and sets `status` and `body` (bytes); `NAME`
/// holds the instance's computer name. `run` starts the app (`exec python3 app.py`).
pub fn python_http_app(respond: &str, run: &str) -> String {
    format!(
        r#"cat > app.py <<'PY'
import http.server, os
NAME = os.environ["HERD_COMPUTER_NAME"]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
{respond}
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    request_queue_size = 256
    allow_reuse_address = True
S((os.environ["HERD_ADDRESS"], 8080), H).serve_forever()
PY
{run}"#
    )
}

/// One HTTP/1.1 GET of `url` (`http://ADDR:PORT/path`) on a fresh connection: the body of a
/// 200 answer, or what went wrong.
pub fn get_ok_body(url: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let (host, path) = addr.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((addr, "/".into()));
    let mut s =
        std::net::TcpStream::connect_timeout(&host.parse().map_err(|e| format!("{e}"))?, Duration::from_secs(3))
            .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    if !out.starts_with("HTTP/1.0 200") && !out.starts_with("HTTP/1.1 200") {
        return Err(format!("bad answer: {}", out.lines().next().unwrap_or("(empty)")));
    }
    Ok(out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// When a request of a [`Load`] was answered, on both clocks.
pub type Completion = (Instant, chrono::DateTime<chrono::Utc>);

/// Steady HTTP load on `url`: `workers` threads GET it one request after another (a 200 is a
/// success) until [`Load::finish`], each for at most `max_requests` requests and `max_time`
/// (times `HERD_TEST_TIME_SCALE`). It counts successes and keeps every failure and the time of
/// every success (on both clocks: `Instant` for the test's own timing, UTC to compare with
/// the server's timestamps).
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicU64>,
    failures: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    completions: std::sync::Arc<std::sync::Mutex<Vec<Completion>>>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(url: &str, workers: usize, max_requests: usize, max_time: Duration) -> Load {
        use std::sync::atomic::Ordering;
        let load = Load {
            stop: Default::default(),
            ok: Default::default(),
            failures: Default::default(),
            completions: Default::default(),
            workers: Vec::new(),
        };
        let max_time = herd_test_support::scaled(max_time);
        let workers = (0..workers)
            .map(|_| {
                let (stop, ok, failures, completions, url) = (
                    load.stop.clone(),
                    load.ok.clone(),
                    load.failures.clone(),
                    load.completions.clone(),
                    url.to_string(),
                );
                std::thread::spawn(move || {
                    let start = Instant::now();
                    for _ in 0..max_requests {
                        if stop.load(Ordering::Relaxed) || start.elapsed() > max_time {
                            break;
                        }
                        match get_ok_body(&url) {
                            Ok(_) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                completions.lock().unwrap().push((Instant::now(), chrono::Utc::now()));
                            }
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                    }
                })
            })
            .collect();
        Load { workers, ..load }
    }

    /// Requests answered so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the workers and waits for them: the failures and the completion times.
    pub fn finish(self) -> (Vec<String>, Vec<Completion>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in self.workers {
            w.join().unwrap();
        }
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        let completions = std::mem::take(&mut *self.completions.lock().unwrap());
        (failures, completions)
    }
}

/// A temporary directory holding a server with `driver` and `config`, and in it resource group
/// `group` with the image `urn` (an image directory whose `init` sleeps).
pub fn server_with_sleeper(driver: &str, config: Option<&str>, group: &str, urn: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(driver, &dir.path().join("data"), config);
    let img = image_dir(&dir.path().join("img"), "exec sleep 3600");
    s.group_with_image(group, urn, &img);
    (dir, s)
}

/// Takes the network security group off subnet `group/vnet/subnet` (`--network-security-group ""`).
pub fn dissociate_subnet_nsg(s: &Server, group: &str, vnet: &str, subnet: &str) {
    s.ok(&[
        "network",
        "vnet",
        "subnet",
        "update",
        "-g",
        group,
        "--vnet-name",
        vnet,
        "-n",
        subnet,
        "--network-security-group",
        "",
    ]);
}

/// Waits until the server's namespace holds no nftables table (everything bridged is gone).
pub fn wait_for_no_nft_table(s: &Server) {
    wait_for("no nftables table left", Duration::from_secs(30), || {
        let out = s.command("nft").args(["list", "tables"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().is_empty().then_some(())
    });
}

/// The pid of the bridged process instance with private IP `ip` (its namespace is entered
/// through it: the server made the namespace's mount inside its own mount namespace, which
/// `ip netns exec` keeps from propagating here).
pub fn pid_of(ip: &str) -> u32 {
    let needle = format!("HERD_ADDRESS={ip}\0");
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if String::from_utf8_lossy(&env).contains(&needle) {
            return pid;
        }
    }
    panic!("no process has {needle:?} in its environment")
}

/// The body of an HTTP GET of `url` from inside the network namespace of process `pid` (2 s
/// limit), or None when nothing answers.
pub fn get_from(pid: u32, url: &str) -> Option<String> {
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "curl", "-sf", "--max-time", "2", url])
        .output()
        .expect("nsenter (util-linux) and curl are needed");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether an HTTP GET from inside the network namespace of process `pid` to `ip:8080`
/// answers (2 s limit).
pub fn reaches(pid: u32, ip: &str) -> bool {
    Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "curl", "-s", "-o", "/dev/null", "--max-time", "2"])
        .arg(format!("http://{ip}:8080/"))
        .status()
        .expect("nsenter (util-linux) and curl are needed")
        .success()
}

/// The address `name` resolves to when the network namespace of process `pid` asks the DNS
/// server at `server` (busybox `nslookup`), or None.
pub fn resolve_from(pid: u32, name: &str, server: &str) -> Option<String> {
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "busybox", "nslookup", name, server])
        .output()
        .expect("nsenter (util-linux) and busybox are needed");
    let text = String::from_utf8_lossy(&out.stdout);
    // The server's own line is `Address: 10.0.0.1:53`; the answer's has no port.
    text.lines()
        .filter_map(|l| l.strip_prefix("Address:"))
        .map(str::trim)
        .rfind(|a| !a.contains(':') && !a.contains('#') && a.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_string)
}

/// The packets counted by the rules named `comment` in the server's nftables tables, summed.
pub fn counted(s: &Server, comment: &str) -> u64 {
    let out = s.command("nft").args(["list", "ruleset"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("comment \"{comment}\"")))
        .filter_map(|l| l.split("packets ").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// How many members of backend pool `pool` of load balancer `group/lb` are in rotation.
pub fn pool_in_rotation(s: &Server, group: &str, lb: &str, pool: &str) -> usize {
    s.json(&["network", "lb", "address-pool", "show", "-g", group, "--lb-name", lb, "-n", pool])["members"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m["inRotation"] == true).count())
}
