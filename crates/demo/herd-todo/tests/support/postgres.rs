//! A throw-away PostgreSQL cluster for tests: [`PgCluster::start`] runs
//! `images/app/pg-test-cluster.sh` (the same script demos and other tests use, so there is one
//! way to do it) in a fresh temporary directory on a free loopback port, with a
//! password-authenticated user and a database; dropping the value stops the server and removes
//! the directory.
//!
//! Reuse from another crate's tests with
//! `#[path = "../../../demo/herd-todo/tests/support/postgres.rs"] mod postgres;`.
//! Needs PostgreSQL installed (Debian: `apt-get install postgresql`); as root the server runs
//! as the `postgres` user. Traffic stays on 127.0.0.1.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The cluster script, found from this crate's manifest directory.
pub fn cluster_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../images/app/pg-test-cluster.sh")
}

/// A running test cluster. The fields are what a client needs to log in over TCP.
pub struct PgCluster {
    dir: tempfile::TempDir,
    pub host: &'static str,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub db: String,
}

impl PgCluster {
    /// Starts a cluster with user `todo`, database `todo` and a random password (with a space
    /// and a quote in it, to keep quoting honest). Panics with the script's output on failure.
    pub fn start() -> Self {
        let password = format!("pw '{}\"x", random_hex());
        let mut last_err = String::new();
        // A free port can be taken between our probe and the server's bind: try a few.
        for _ in 0..5 {
            let dir = tempfile::Builder::new().prefix("herd-pg-").tempdir().expect("temporary directory");
            let port = free_port("127.0.0.1");
            let c = PgCluster {
                dir,
                host: "127.0.0.1",
                port,
                user: "todo".into(),
                password: password.clone(),
                db: "todo".into(),
            };
            match c.run_start() {
                Ok(()) => return c,
                Err(e) => last_err = e,
            }
        }
        panic!("cannot start a PostgreSQL test cluster:\n{last_err}");
    }

    /// Stops the server (fast shutdown); the data stays for [`PgCluster::start_again`].
    pub fn stop(&self) {
        let out = Command::new("sh")
            .arg(cluster_script())
            .arg("stop")
            .arg(self.dir.path())
            .output()
            .expect("run pg-test-cluster.sh");
        assert!(out.status.success(), "stopping the cluster: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Starts the stopped server again on the same port, with the same data.
    pub fn start_again(&self) {
        if let Err(e) = self.run_start() {
            panic!("restarting the cluster: {e}");
        }
    }

    /// The cluster's directory (data, socket, `postgres.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn run_start(&self) -> Result<(), String> {
        // The password goes through stdin ("-"), not argv.
        let mut child = Command::new("sh")
            .arg(cluster_script())
            .arg("start")
            .arg(self.dir.path())
            .arg(self.port.to_string())
            .args([&self.user, "-", &self.db])
            .env_remove("PG_TEST_PASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", cluster_script().display()))?;
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{}", self.password).map_err(|e| format!("writing the password: {e}"))?;
        drop(stdin);
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = Command::new("sh").arg(cluster_script()).arg("stop").arg(self.dir.path()).output();
    }
}

/// A port that was free on `ip` a moment ago.
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()).expect("bind a free port").port()
}

/// 16 random hex digits (std only: the hasher's keys are random per process and call).
pub fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    format!("{:016x}", h.finish())
}
