//! Runs the `herd-todo` binary against a [`PgCluster`] and talks HTTP/1.1 to it (a minimal
//! client, one request per connection, as `curl` through the load balancer does).

use super::postgres::{free_port, PgCluster};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn app_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_herd-todo"))
}

/// Calls `f` every 20 ms until it returns `Some`, or panics after `limit` (times
/// `HERD_TEST_TIME_SCALE`) naming `what`.
pub fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let limit = herd_test_support::scaled(limit);
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One request; returns the status and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let body = body.unwrap_or("");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) =
        text.split_once("\r\n\r\n").ok_or_else(|| std::io::Error::other(format!("no head in {text:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok((status, body.to_string()))
}

/// `http` that panics on transport errors.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, None).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

pub fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    http(addr, "POST", path, Some(body)).unwrap_or_else(|e| panic!("POST http://{addr}{path}: {e}"))
}

/// How the app is given the database password.
pub enum Password {
    File,
    Env,
}

/// A running app; killed on drop.
pub struct AppProc {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl AppProc {
    /// Starts the app (version `version`, computer name `name`) on a free loopback port against
    /// `pg`, and waits until `/api/version` answers.
    pub fn start(pg: &PgCluster, version: u32, name: &str, password: Password) -> Self {
        Self::start_with(pg.port, &pg.user, &pg.password, &pg.db, version, name, password)
    }

    pub fn start_with(
        db_port: u16,
        user: &str,
        pw: &str,
        db: &str,
        version: u32,
        name: &str,
        password: Password,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let pw_file = dir.path().join("db-password");
        std::fs::write(&pw_file, format!("{pw}\n")).expect("write password file");
        let log = dir.path().join("app.log");
        // The port can be taken between our probe and the app's bind: try a few.
        for _ in 0..5 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap();
            let out = std::fs::File::create(&log).expect("log file");
            let err = out.try_clone().expect("log file");
            let mut cmd = Command::new(app_binary());
            cmd.args(["--listen", &addr.to_string(), "--app-version", &version.to_string()])
                .args(["--db-host", "127.0.0.1", "--db-port", &db_port.to_string(), "--db-name", db, "--db-user", user])
                .env("HERD_COMPUTER_NAME", name)
                .env_remove("TODO_DB_PASSWORD")
                .stdin(Stdio::null())
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err));
            match password {
                Password::File => {
                    cmd.arg("--db-password-file").arg(&pw_file);
                }
                Password::Env => {
                    cmd.env("TODO_DB_PASSWORD", pw);
                }
            }
            let mut child = cmd.spawn().expect("start herd-todo");
            let ready = wait_until("herd-todo to answer or exit", Duration::from_secs(20), || {
                if let Ok(Some(_)) = child.try_wait() {
                    return Some(false);
                }
                match http(addr, "GET", "/api/version", None) {
                    Ok((200, _)) => Some(true),
                    _ => None,
                }
            });
            if ready {
                return AppProc { child, addr, log, _dir: dir };
            }
        }
        panic!("herd-todo did not start:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AppProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The command line of `pid` with NULs as spaces.
pub fn cmdline(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).replace('\0', " ")
}

/// Whether `pid` is a live process (a zombie is not).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Reads a file, empty if missing.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
