//! `images/app/installapp-v{1,2}.sh` run as herd's process driver would run a Custom Script
//! extension: `HERD_ADDRESS` set to the instance's own loopback address, `HOME` its directory,
//! the working directory the extension's (holding `herd-todo` when it was in `fileUris`), and a
//! bare environment. v1 is run with `sh` (dash here), v2 with `busybox sh` when busybox is
//! installed (the VM guest's only shell), then v1 again with `bash`.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::app::{alive, app_binary, cmdline, get, post, read};
use support::postgres::{free_port, random_hex, PgCluster};

/// `images/app/NAME`, except `installapp-v2.sh`, which is not in the repository: `build.sh`
/// writes it from `installapp-v1.sh` with its `V2_SED` expression, and so does this, into the
/// test's scratch directory.
fn script(name: &str) -> PathBuf {
    let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../images/app");
    if name != "installapp-v2.sh" {
        return app.join(name);
    }
    let build = read(&app.join("build.sh"));
    let expr =
        build.lines().find_map(|l| l.strip_prefix("V2_SED='")?.strip_suffix('\'')).expect("build.sh defines V2_SED");
    let out = Command::new("sed").arg(expr).arg(app.join("installapp-v1.sh")).output().expect("run sed");
    assert!(out.status.success(), "sed {expr}: {}", String::from_utf8_lossy(&out.stderr));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("installapp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = tempfile::NamedTempFile::new_in(&dir).unwrap();
    std::fs::write(tmp.path(), &out.stdout).unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.join(name);
    tmp.persist(&path).unwrap();
    path
}

/// A loopback address of our own in 127.0.0.0/8 (as the process driver gives each instance),
/// with a port free on it.
fn instance_address() -> (String, u16) {
    let h = u64::from_str_radix(&random_hex(), 16).unwrap();
    let ip = format!("127.{}.{}.{}", 100 + h % 100, (h >> 8) % 256, 2 + (h >> 16) % 250);
    let port = free_port(&ip);
    (ip, port)
}

/// One simulated instance: its home, its extension directory and its environment.
struct Instance {
    home: tempfile::TempDir,
    ext: tempfile::TempDir,
    ip: String,
    port: u16,
    env: Vec<(String, String)>,
}

impl Instance {
    fn new(db_port: u16, ship_binary: bool) -> Self {
        let home = tempfile::tempdir().unwrap();
        let ext = tempfile::tempdir().unwrap();
        for name in ["installapp-v1.sh", "installapp-v2.sh"] {
            std::fs::copy(script(name), ext.path().join(name)).unwrap();
        }
        if ship_binary {
            std::fs::copy(app_binary(), ext.path().join("herd-todo")).unwrap();
        }
        let (ip, port) = instance_address();
        let env = vec![
            ("PATH".to_string(), std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())),
            ("HOME".into(), home.path().display().to_string()),
            ("HERD_ADDRESS".into(), ip.clone()),
            ("HERD_COMPUTER_NAME".into(), "webscales000002".into()),
            ("HERD_INSTANCE_ID".into(), "2".into()),
            ("TODO_PORT".into(), port.to_string()),
            ("TODO_DB_PORT".into(), db_port.to_string()),
        ];
        Instance { home, ext, ip, port, env }
    }

    fn addr(&self) -> SocketAddr {
        format!("{}:{}", self.ip, self.port).parse().unwrap()
    }

    fn todo_dir(&self) -> PathBuf {
        self.home.path().join("todo")
    }

    fn app_pid(&self) -> u32 {
        read(&self.todo_dir().join("herd-todo.pid")).trim().parse().expect("a pid file")
    }

    /// Runs `shell script db user password` in the extension directory.
    fn install(&self, shell: &[&str], script: &str, pg: (&str, &str, &str), extra_env: &[(&str, &str)]) -> Output {
        let (db, user, password) = pg;
        let out = Command::new(shell[0])
            .args(&shell[1..])
            .args([script, db, user, password])
            .current_dir(self.ext.path())
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra_env.iter().copied())
            .output()
            .expect("run the install script");
        for stream in [&out.stdout, &out.stderr] {
            assert!(!String::from_utf8_lossy(stream).contains(password), "the script printed the password");
        }
        out
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Ok(pid) = read(&self.todo_dir().join("herd-todo.pid")).trim().parse::<u32>() {
            if cmdline(pid).contains("herd-todo") {
                let _ = Command::new("kill").arg(pid.to_string()).status();
            }
        }
    }
}

fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `busybox sh`: the guest's shell, so the script is tested with the shell that runs it.
fn guest_shell() -> Vec<&'static str> {
    herd_test_support::require_tool("busybox", "busybox-static");
    vec!["busybox", "sh"]
}

#[test]
fn installs_v1_then_upgrades_to_v2_like_the_process_driver() {
    let pg = PgCluster::start();
    let inst = Instance::new(pg.port, true);
    let creds = (pg.db.as_str(), pg.user.as_str(), pg.password.as_str());

    let out = inst.install(&["sh"], "installapp-v1.sh", creds, &[]);
    check(&out, "installapp-v1.sh");
    // The script returns only once the app answers: no waiting here.
    assert_eq!(get(inst.addr(), "/api/version"), (200, "Version 1 from webscales000002\n".into()));
    assert_eq!(get(inst.addr(), "/healthz"), (200, "ok\n".into()), "the app reached the database");
    let (status, body) = post(inst.addr(), "/api/todos", r#"{"title":"survives upgrades"}"#);
    assert_eq!(status, 201, "{body}");

    let v1_pid = inst.app_pid();
    let argv = cmdline(v1_pid);
    assert!(argv.contains("--app-version 1") && argv.contains(&inst.ip), "{argv}");
    assert!(!argv.contains(&pg.password), "password in argv: {argv}");
    let pw_file = inst.todo_dir().join("db-password");
    assert_eq!(read(&pw_file), format!("{}\n", pg.password));
    assert_eq!(std::fs::metadata(&pw_file).unwrap().permissions().mode() & 0o777, 0o600);

    let out = inst.install(&guest_shell(), "installapp-v2.sh", creds, &[]);
    check(&out, "installapp-v2.sh");
    assert_eq!(get(inst.addr(), "/api/version"), (200, "Version 2 from webscales000002\n".into()));
    let v2_pid = inst.app_pid();
    assert_ne!(v1_pid, v2_pid);
    assert!(!alive(v1_pid), "the v1 app was stopped");
    let (_, list) = get(inst.addr(), "/api/todos");
    assert!(list.contains("survives upgrades"), "{list}");
    assert!(!read(&inst.todo_dir().join("app.log")).contains(&pg.password));

    // And back, with bash as the walkthrough spells the command (bash exists on the host).
    let out = inst.install(&["bash"], "installapp-v1.sh", creds, &[]);
    check(&out, "bash installapp-v1.sh");
    assert_eq!(get(inst.addr(), "/api/version"), (200, "Version 1 from webscales000002\n".into()));
    assert!(!alive(v2_pid), "the v2 app was stopped");
}

#[test]
fn downloads_the_binary_when_it_was_not_shipped() {
    // A one-shot file server on loopback stands in for the host's http://10.0.2.2:8000/.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/herd-todo", server.local_addr().unwrap());
    let served = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut conn, _) = server.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap() == 1 {
            head.push(byte[0]);
        }
        let bin = std::fs::read(app_binary()).unwrap();
        let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", bin.len());
        conn.write_all(resp.as_bytes()).unwrap();
        conn.write_all(&bin).unwrap();
        String::from_utf8_lossy(&head).into_owned()
    });
    // No database at all: the install only waits for /api/version.
    let inst = Instance::new(free_port("127.0.0.1"), false);
    let out = inst.install(&["sh"], "installapp-v1.sh", ("todo", "todo", "unused"), &[("TODO_APP_URL", &url)]);
    check(&out, "installapp-v1.sh with TODO_APP_URL");
    assert!(served.join().unwrap().starts_with("GET /herd-todo HTTP/1."));
    assert_eq!(get(inst.addr(), "/api/version"), (200, "Version 1 from webscales000002\n".into()));
    assert_eq!(get(inst.addr(), "/healthz").0, 503);
}

#[test]
fn a_failed_start_exits_nonzero_with_the_log() {
    let inst = Instance::new(free_port("127.0.0.1"), true);
    // Something else holds the instance's port.
    let _squatter = TcpListener::bind(inst.addr()).unwrap();
    let out = inst.install(&["sh"], "installapp-v1.sh", ("todo", "todo", "unused"), &[]);
    assert!(!out.status.success(), "the install must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen on") && err.contains("the app exited"), "{err}");
}

#[test]
fn the_two_install_scripts_differ_only_in_the_version() {
    let v1 = read(&script("installapp-v1.sh"));
    let v2 = read(&script("installapp-v2.sh"));
    assert!(v1.contains("\nAPP_VERSION=1\n"), "installapp-v1.sh sets APP_VERSION=1");
    assert_eq!(
        v1.replace("\nAPP_VERSION=1\n", "\nAPP_VERSION=2\n"),
        v2,
        "regenerate v2 from v1 (see images/app/README.md)"
    );
    for name in ["installapp-v1.sh", "installapp-v2.sh", "pg-test-cluster.sh", "build.sh", "guest-smoke.sh"] {
        let mode = std::fs::metadata(script(name)).unwrap().permissions().mode();
        assert_ne!(mode & 0o111, 0, "{name} is executable");
    }
}
