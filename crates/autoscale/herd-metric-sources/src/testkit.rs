//! Throw-away real servers for tests (feature `testkit`): `redis-server`, `nats-server -js`,
//! a PostgreSQL cluster (through `images/app/pg-test-cluster.sh`), `prometheus`, and a tiny
//! HTTP server. Each listens on a free loopback port, keeps its files in a temporary
//! directory, is waited for by polling with a deadline (never a fixed sleep), and is stopped
//! and removed when dropped. Secrets go into files or stdin, not argv.
//!
//! Why it is public: the autoscaler's end-to-end tests ("100 items in a Redis list scale the
//! set out") need the same servers; they enable this feature in their dev-dependencies.
//!
//! Needs (Debian): `redis-server`, `nats-server`, `postgresql`, `prometheus`.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::nats::{Auth, Client};

/// How long a server may take to come up (times `HERD_TEST_TIME_SCALE`).
const START_DEADLINE: Duration = Duration::from_secs(60);

/// `d` stretched by `HERD_TEST_TIME_SCALE` (see herd-test-support), for tests and the servers here.
pub fn scaled(d: Duration) -> Duration {
    herd_test_support::scaled(d)
}
/// How many free ports to try when another process grabs one between choice and bind.
const PORT_TRIES: usize = 5;

/// A validated source of `kind` at `endpoint` with `settings`, sending
/// `Authorization: Bearer <token>` (the HTTP sources' tests), each request bounded by `timeout`.
pub fn bearer_source(
    kind: crate::SourceKind,
    endpoint: &str,
    settings: serde_json::Value,
    token: &str,
    timeout: Duration,
) -> Box<dyn crate::MetricSource> {
    let s = crate::SourceSpec {
        kind,
        endpoint: endpoint.into(),
        settings,
        protected: serde_json::json!({"headers": {"Authorization": format!("Bearer {token}")}}),
    };
    crate::validate(&s).unwrap();
    crate::build(&s, timeout).unwrap()
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Polls `f` until it returns `Some`, or fails after `deadline` (times `HERD_TEST_TIME_SCALE`)
/// naming `what`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = scaled(deadline);
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= end {
            return Err(format!("{what}: not within {deadline:?}"));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

fn tmpdir(prefix: &str) -> io::Result<TempDir> {
    // /tmp, not $TMPDIR: the PostgreSQL cluster's owner must be able to reach it.
    tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp")
}

fn write_private(path: &Path, text: &str) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The program's path: on PATH, or in /usr/sbin (Debian puts nats-server there).
fn which(program: &str) -> io::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(program)).find(|f| f.is_file()))
        .unwrap_or_default();
    on_path.or_else(|| Some(Path::new("/usr/sbin").join(program)).filter(|f| f.is_file())).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{program} is not installed: {}", herd_test_support::install_hint(program)),
        )
    })
}

/// A child process that is killed and reaped when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(cmd: &mut Command, log: PathBuf) -> io::Result<Self> {
        let out = fs::File::create(&log)?;
        let err = out.try_clone()?;
        let child = cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn()?;
        Ok(Self { child, log })
    }

    /// Ok while running; the log's tail once it has exited.
    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("exited ({status}):\n{}", log_tail(&self.log))),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `ready` says yes, the process dies, or the deadline passes.
async fn wait_ready<F, Fut>(proc_: &mut Proc, what: &str, mut ready: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = scaled(START_DEADLINE);
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    loop {
        proc_.check_alive().map_err(|e| format!("{what} {e}"))?;
        if ready().await {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(format!("{what} was not ready within {deadline:?}:\n{}", log_tail(&proc_.log)));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A server process listening on a loopback port, with its scratch directory (both kept until
/// dropped).
struct Listening {
    _proc: Proc,
    port: u16,
    _dir: TempDir,
}

/// Starts a server on a free loopback port: `spawn(dir, port)` writes its configuration and
/// starts it, `ready(port)` says whether it serves. Another process may take the port between
/// picking and binding it, so a server that does not get ready is tried again on another port
/// (up to `PORT_TRIES` times); the last failure is returned.
async fn start_on_free_port<S, R, Fut>(what: &str, dir: TempDir, mut spawn: S, ready: R) -> io::Result<Listening>
where
    S: FnMut(&Path, u16) -> io::Result<Proc>,
    R: Fn(u16) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut last = String::new();
    for _ in 0..PORT_TRIES {
        let port = free_port()?;
        let mut p = spawn(dir.path(), port)?;
        match wait_ready(&mut p, what, || ready(port)).await {
            Ok(()) => return Ok(Listening { _proc: p, port, _dir: dir }),
            Err(e) => last = e,
        }
    }
    Err(io::Error::other(last))
}

/// `redis-server` on a free loopback port, no persistence, with a password.
pub struct RedisServer(Listening);

impl RedisServer {
    /// Starts it with `requirepass password` and waits until it answers.
    pub async fn start(password: &str) -> io::Result<Self> {
        let program = which("redis-server")?;
        let quoted = serde_json::to_string(password).map_err(io::Error::other)?;
        let spawn = |dir: &Path, port: u16| {
            let conf = dir.join("redis.conf");
            write_private(
                &conf,
                &format!(
                    "port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndaemonize no\nlogfile \"\"\n\
                     dir {}\nrequirepass {quoted}\n",
                    dir.display()
                ),
            )?;
            Proc::spawn(Command::new(&program).arg(&conf), dir.join("redis.log"))
        };
        let ready = |port: u16| async move {
            // Any reply (-NOAUTH included) means it serves.
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 1];
            s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).map(|n| n == 1).unwrap_or(false)
        };
        Ok(Self(start_on_free_port("redis-server", tmpdir("herd-redis-")?, spawn, ready).await?))
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// `redis://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("redis://127.0.0.1:{}", self.0.port)
    }
}

/// `nats-server` with JetStream on a free loopback port, with optional auth.
pub struct NatsServer(Listening);

impl NatsServer {
    /// Starts it and waits until JetStream answers `$JS.API.INFO`.
    pub async fn start(auth: &Auth) -> io::Result<Self> {
        Self::start_with(auth, true).await
    }

    /// Starts it without JetStream (to test what a source says then).
    pub async fn start_without_jetstream(auth: &Auth) -> io::Result<Self> {
        Self::start_with(auth, false).await
    }

    async fn start_with(auth: &Auth, jetstream: bool) -> io::Result<Self> {
        let program = which("nats-server")?;
        let q = |s: &str| serde_json::to_string(s).map_err(io::Error::other);
        let authz = match auth {
            Auth::None => String::new(),
            Auth::Token(t) => format!("authorization {{ token: {} }}\n", q(t)?),
            Auth::UserPassword { user, password } => {
                format!("authorization {{ user: {}, password: {} }}\n", q(user)?, q(password)?)
            }
        };
        let spawn = |dir: &Path, port: u16| {
            let conf = dir.join("nats.conf");
            let js = if jetstream {
                format!("jetstream {{ store_dir: {} }}\n", q(&dir.join("js").display().to_string())?)
            } else {
                String::new()
            };
            write_private(&conf, &format!("listen: \"127.0.0.1:{port}\"\n{js}{authz}"))?;
            Proc::spawn(Command::new(&program).arg("-c").arg(&conf), dir.join("nats.log"))
        };
        let ready = |port: u16| {
            let auth = auth.clone();
            async move {
                let Ok(mut c) = Client::connect(&format!("127.0.0.1:{port}"), &auth).await else { return false };
                if !jetstream {
                    return true;
                }
                matches!(tokio::time::timeout(Duration::from_secs(2), c.request("$JS.API.INFO", b"")).await, Ok(Ok(_)))
            }
        };
        Ok(Self(start_on_free_port("nats-server", tmpdir("herd-nats-")?, spawn, ready).await?))
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// `nats://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("nats://127.0.0.1:{}", self.0.port)
    }
}

/// A throw-away PostgreSQL cluster from `images/app/pg-test-cluster.sh`, with a login role
/// (password auth over TCP) owning one database.
pub struct PostgresCluster {
    port: u16,
    user: String,
    db: String,
    dir: TempDir,
    script: PathBuf,
}

fn pg_script() -> PathBuf {
    std::env::var_os("HERD_PG_TEST_CLUSTER")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../images/app/pg-test-cluster.sh"))
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

impl PostgresCluster {
    /// Creates and starts the cluster; `password` reaches the script on stdin.
    pub fn start(user: &str, password: &str, db: &str) -> io::Result<Self> {
        let script = pg_script();
        if !script.is_file() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("{} is missing", script.display())));
        }
        let dir = tmpdir("herd-pg-")?;
        let mut last = String::new();
        for _ in 0..PORT_TRIES {
            let port = free_port()?;
            let mut child = Command::new("sh")
                .arg(&script)
                .args(["start", &dir.path().display().to_string(), &port.to_string(), user, "-", db])
                .env_remove("PG_TEST_PASSWORD")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(format!("{password}\n").as_bytes())?;
            }
            let out = child.wait_with_output()?;
            if out.status.success() {
                return Ok(Self { port, user: user.into(), db: db.into(), dir, script });
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
        }
        Err(io::Error::other(format!("pg-test-cluster.sh start failed: {last}")))
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgresql://127.0.0.1:PORT/DB`
    pub fn endpoint(&self) -> String {
        format!("postgresql://127.0.0.1:{}/{}", self.port, self.db)
    }

    /// Runs SQL as the login role over the cluster's unix socket (trusted there), stopping at
    /// the first error; returns psql's output (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> io::Result<String> {
        let sock = self.dir.path().join("sock");
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "psql"]);
            c
        } else {
            Command::new("psql")
        };
        let mut child = cmd
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&sock)
            .args(["-p", &self.port.to_string(), "-U", &self.user, "-d", &self.db])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(sql.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!("psql failed: {}", String::from_utf8_lossy(&out.stderr))));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for PostgresCluster {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .arg(&self.script)
            .args(["stop", &self.dir.path().display().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `prometheus` on a free loopback port, scraping one target every second.
pub struct PrometheusServer(Listening);

impl PrometheusServer {
    /// Starts it scraping `http://TARGET/metrics` (`target` is `host:port`) and waits until
    /// `/-/ready` answers 200.
    pub async fn start(target: &str) -> io::Result<Self> {
        let program = which("prometheus")?;
        let dir = tmpdir("herd-prometheus-")?;
        let conf = dir.path().join("prometheus.yml");
        write_private(
            &conf,
            &format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: herd-test\n    \
                 static_configs:\n      - targets: [{}]\n",
                serde_json::to_string(target).map_err(io::Error::other)?
            ),
        )?;
        let spawn = |dir: &Path, port: u16| {
            Proc::spawn(
                Command::new(&program)
                    .arg(format!("--config.file={}", conf.display()))
                    .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
                    .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                    .arg("--log.level=warn"),
                dir.join("prometheus.log"),
            )
        };
        let ready = |port: u16| async move { http_get_status(port, "/-/ready") == Some(200) };
        Ok(Self(start_on_free_port("prometheus", dir, spawn, ready).await?))
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.0.port)
    }
}

/// A blocking `GET` on loopback returning the status code.
fn http_get_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut line = String::new();
    io::BufReader::new(s).read_line(&mut line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One canned response.
#[derive(Debug, Clone)]
pub struct Canned {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

#[derive(Default)]
struct HttpState {
    routes: HashMap<String, Canned>,
    last_headers: Vec<(String, String)>,
    requests: usize,
}

/// A tiny HTTP/1.1 server on a thread: canned responses by path, `Connection: close`.
pub struct HttpServer {
    port: u16,
    state: Arc<Mutex<HttpState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Starts it; every path answers 404 until [`HttpServer::set`].
    pub fn start() -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new(HttpState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    let _ = serve_one(c, &st);
                }
            }
        });
        Ok(Self { port, state, stop, thread: Some(thread) })
    }

    /// Answers `path` (without the query string) with `status` and a JSON body.
    pub fn set(&self, path: &str, status: u16, body: impl Into<String>) {
        self.set_typed(path, status, "application/json", body);
    }

    /// Answers `path` with `status`, a content type and a body.
    pub fn set_typed(&self, path: &str, status: u16, content_type: &str, body: impl Into<String>) {
        let canned = Canned { status, content_type: content_type.into(), body: body.into() };
        if let Ok(mut s) = self.state.lock() {
            s.routes.insert(path.to_string(), canned);
        }
    }

    /// The headers of the last request, names in lower case.
    pub fn last_headers(&self) -> Vec<(String, String)> {
        self.state.lock().map(|s| s.last_headers.clone()).unwrap_or_default()
    }

    /// How many requests were served.
    pub fn requests(&self) -> usize {
        self.state.lock().map(|s| s.requests).unwrap_or(0)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn serve_one(mut c: TcpStream, state: &Mutex<HttpState>) -> io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = io::BufReader::new(c.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.trim_end().split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/").to_string();
    let canned = {
        let mut s = state.lock().map_err(|_| io::Error::other("poisoned"))?;
        s.last_headers = headers;
        s.requests += 1;
        s.routes.get(&path).cloned()
    };
    let canned = canned.unwrap_or(Canned { status: 404, content_type: "text/plain".into(), body: "not found".into() });
    let reason = match canned.status {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Status",
    };
    write!(
        c,
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        canned.status,
        canned.content_type,
        canned.body.len(),
        canned.body
    )?;
    c.flush()
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
