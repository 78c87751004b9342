//! `herd-todo`: the small web app the walkthrough installs on every VM of a scale set.
//!
//! Why it exists: the walkthrough (steps 4–7) shows a scale set doing real work — a Custom Script
//! extension downloads and starts an app on every instance, a load balancer spreads requests
//! over them, and upgrades roll a new app version or a new image through the set while a TODO
//! item stays in a database *outside* the VMs. That needs an app that (1) says which version runs
//! on which instance (`/api/version` → `Version N from <computer name>`), (2) keeps state in a
//! shared PostgreSQL, and (3) runs inside herd's minimal busybox guest, which has glibc but maybe
//! not `libgcc_s`, and no Python. So it is one fully static binary (see `images/app/build.sh`)
//! with a hand-written HTTP/1.1 server on std threads and the synchronous `postgres` client: no
//! async runtime of its own, no framework, nothing to install.
//!
//! Endpoints:
//!
//! | request | answer |
//! |---|---|
//! | `GET /api/version` | `200` text `Version N from <hostname>\n`, never touches the database |
//! | `GET /api/todos` | `200` JSON `[{"id":1,"title":"…","createdAt":"…"}]` (oldest first) |
//! | `POST /api/todos` `{"title":"…"}` | `201` + the new item |
//! | `GET /api/peer/<private IP>` | `200` text: this instance's version line, then what `/api/version` of the instance at that address (same port) answered; `502` if it could not; `400` for a non-private address |
//! | `GET /healthz` | `200 ok` when the database answers, else `503` |
//! | `GET /` | a tiny HTML page: the version line and the list |
//!
//! The database password comes from `--db-password-file PATH` or the environment variable
//! `TODO_DB_PASSWORD`, never from a flag value (it would show in `/proc/<pid>/cmdline`), and it
//! is never logged. The database may be unreachable at start or go away later: the app keeps
//! serving `/api/version` and `/`, answers `503` on database endpoints and reconnects on the next
//! request (see [`db`]).

#![forbid(unsafe_code)]

mod app;
mod db;
mod http;

use clap::Parser;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Environment variable holding the database password (alternative to `--db-password-file`).
const PASSWORD_ENV: &str = "TODO_DB_PASSWORD";

/// A TODO-list web app backed by PostgreSQL (herd's walkthrough demo).
///
/// The database password is read from --db-password-file or from the environment variable
/// TODO_DB_PASSWORD; it is never accepted as a flag value.
#[derive(Debug, Parser)]
#[command(name = "herd-todo", version)]
struct Args {
    /// Address and port to serve HTTP on.
    #[arg(long, default_value = "0.0.0.0:80", value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// The version this instance reports on /api/version.
    #[arg(long, default_value_t = 1, value_name = "N")]
    app_version: u32,
    /// PostgreSQL host (an IP address is best: the static binary may not resolve names).
    #[arg(long, default_value = "127.0.0.1")]
    db_host: String,
    /// PostgreSQL port.
    #[arg(long, default_value_t = 5432)]
    db_port: u16,
    /// Database name.
    #[arg(long, default_value = "todo")]
    db_name: String,
    /// Database user.
    #[arg(long, default_value = "todo")]
    db_user: String,
    /// File holding the database password (one line; a trailing newline is ignored).
    #[arg(long, value_name = "PATH")]
    db_password_file: Option<PathBuf>,
    /// Write the process id here once listening (for install scripts that restart the app).
    #[arg(long, value_name = "PATH")]
    pid_file: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("herd-todo: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let password = read_password(args.db_password_file.as_deref())?;
    let mut config = postgres::Config::new();
    config
        .host(&args.db_host)
        .port(args.db_port)
        .dbname(&args.db_name)
        .user(&args.db_user)
        .application_name("herd-todo")
        .connect_timeout(Duration::from_secs(5))
        .tcp_user_timeout(Duration::from_secs(10))
        .keepalives_idle(Duration::from_secs(30))
        .options("-c statement_timeout=10000");
    if let Some(p) = &password {
        config.password(p.as_bytes());
    }
    let listener = TcpListener::bind(args.listen).map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener.local_addr().map_err(|e| format!("listener address: {e}"))?;
    if let Some(path) = &args.pid_file {
        write_pid_file(path).map_err(|e| format!("pid file {}: {e}", path.display()))?;
    }
    eprintln!(
        "herd-todo: version {} listening on http://{local}, database {}@{}:{}/{} ({})",
        args.app_version,
        args.db_user,
        args.db_host,
        args.db_port,
        args.db_name,
        if password.is_some() { "with a password" } else { "no password given" },
    );
    let app = Arc::new(app::App::new(args.app_version, db::Db::new(config), local.port()));
    http::serve(listener, move |req| app.handle(req));
    Ok(())
}

/// The password from `file` if given, else from [`PASSWORD_ENV`]; `None` if neither is set.
fn read_password(file: Option<&std::path::Path>) -> Result<Option<String>, String> {
    let raw = match file {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| format!("--db-password-file {}: {e}", path.display()))?
        }
        None => match std::env::var(PASSWORD_ENV) {
            Ok(v) => v,
            Err(std::env::VarError::NotPresent) => return Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => return Err(format!("{PASSWORD_ENV} is not valid UTF-8")),
        },
    };
    let pw = raw.strip_suffix('\n').map(|s| s.strip_suffix('\r').unwrap_or(s)).unwrap_or(&raw);
    Ok(Some(pw.to_string()))
}

/// Writes our pid to `path` atomically (temporary file + rename), so a reader never sees half.
fn write_pid_file(path: &std::path::Path) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_file_drops_one_trailing_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cr et\r\n").unwrap();
        assert_eq!(read_password(Some(&p)).unwrap().as_deref(), Some("s3cr et"));
        std::fs::write(&p, "x\n\n").unwrap();
        assert_eq!(read_password(Some(&p)).unwrap().as_deref(), Some("x\n"));
        let err = read_password(Some(&dir.path().join("missing"))).unwrap_err();
        assert!(err.contains("--db-password-file"), "{err}");
    }

    #[test]
    fn no_password_flag_exists() {
        let err = Args::try_parse_from(["herd-todo", "--db-password", "x"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
        let args = Args::try_parse_from(["herd-todo"]).unwrap();
        assert_eq!(args.listen, "0.0.0.0:80".parse().unwrap());
        assert_eq!((args.app_version, args.db_port), (1, 5432));
    }
}
