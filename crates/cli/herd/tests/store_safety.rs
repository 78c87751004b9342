//! Data safety of the store and the server's surface (issue 13):
//! - an emptied or deleted store never destroys running instances: the server refuses to
//!   start, `--keep-orphans` keeps them (unmanaged), `--destroy-orphans` removes them;
//! - two clusters on one kernel never touch each other's instances;
//! - one corrupt record is quarantined: its set is Failed, every other set keeps reconciling,
//!   its instance is never destroyed, and `herd store check` names it;
//! - `/metrics` needs the API token or the metrics token;
//! - the database, its WAL files and every key file are 0600, and the seal key can live
//!   outside the data dir (a missing or wrong key is a clear error at start).

mod common;

use common::*;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `herd server --driver DRIVER` on `data` with `args`, which must exit (fail) on its own; returns its
/// stderr. Panics if it is still running after 30 s (it started instead of refusing).
fn server_must_refuse(driver: &str, data: &Path, args: &[&str]) -> String {
    let mut child = Command::new(HERD)
        .args(["server", "--listen", "127.0.0.1:0", "--driver", driver])
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("herd server {args:?} did not refuse to start within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(!status.success(), "herd server must fail; stderr:\n{err}");
    err
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|x| x.1.split_whitespace().next().map(|st| st != "Z")))
        .unwrap_or(false)
}

/// The instance process-group leaders of `data`'s cluster: (pid, instance key).
fn leaders(data: &Path) -> Vec<(u32, String)> {
    let mut v = instance_group_leaders(data);
    v.sort();
    v
}

fn create_set(s: &Server, img: &Path, name: &str, count: &str) {
    if !s.ok(&["group", "list", "-o", "json"]).contains("\"rg\"") {
        s.ok(&["group", "create", "-n", "rg"]);
    }
    if !s.ok(&["image", "list", "-o", "json"]).contains("Herd:Sleeper:1:1.0.0") {
        s.ok(&["image", "import", "--urn", "Herd:Sleeper:1:1.0.0", "--dir", img.to_str().unwrap()]);
    }
    s.ok(&[
        words("vmss create -g rg -n"),
        vec![name],
        words("--image Herd:Sleeper:1:1.0.0 --instance-count"),
        vec![count],
        words("--vm-sku Standard_B1s --quiet"),
    ]
    .concat());
    s.ok(&["vmss", "wait", "-g", "rg", "-n", name, "--created", "--quiet", "--timeout", "120"]);
}

/// Removes the database and its WAL files (the WAL would otherwise bring pages back).
fn remove_wal(data: &Path) {
    for f in ["herd.db-wal", "herd.db-shm"] {
        let _ = std::fs::remove_file(data.join(f));
    }
}

/// A zero orphan grace: an instance a server counted as unrecorded would be destroyed on its
/// first pass.
const NO_ORPHAN_GRACE: &str = "[reconciler]\norphan_grace_secs = 0\norphan_max_per_hour = 100\n";

/// A new temporary directory with a sleeper image in `img/` and a process-driver server with
/// [`NO_ORPHAN_GRACE`] on `data/`.
fn process_server_without_orphan_grace() -> (tempfile::TempDir, PathBuf, Server) {
    let dir = tempfile::tempdir().unwrap();
    let img = image_dir(&dir.path().join("img"), "exec sleep 3600");
    let s = Server::start("process", &dir.path().join("data"), Some(NO_ORPHAN_GRACE));
    (dir, img, s)
}

/// A store emptied (truncated to 0 bytes) and then deleted, with process instances running:
/// the server refuses to start, naming the count and the ways out, and every instance still
/// runs; `--keep-orphans` starts and keeps them (unmanaged, even with a zero orphan grace);
/// `--destroy-orphans` removes them. Also: `--driver process` warns that instances run as root
/// with no isolation.
#[test]
fn an_emptied_store_never_destroys_running_instances() {
    // A zero grace: if unmanaged instances were not protected, the first pass would kill them.
    let (_dir, img, mut s) = process_server_without_orphan_grace();
    let data = s.data_dir.clone();
    assert!(
        s.log_text().contains("process instances run as root on this host") && s.log_text().contains("isolate nothing"),
        "the process driver warns plainly at start; log:\n{}",
        s.log_text()
    );
    create_set(&s, &img, "web", "3");
    let before = wait_for("3 instance processes", Duration::from_secs(60), || {
        let l = leaders(&data);
        (l.len() == 3).then_some(l)
    });
    s.kill9();

    // Truncated to 0 bytes.
    remove_wal(&data);
    std::fs::OpenOptions::new().write(true).truncate(true).open(data.join("herd.db")).unwrap();
    let err = server_must_refuse("process", &data, &[]);
    for want in ["refusing to start", "3 instance(s) of this cluster", "--keep-orphans", "--destroy-orphans"] {
        assert!(err.contains(want), "the refusal names {want:?}:\n{err}");
    }
    assert!(before.iter().all(|(pid, _)| alive(*pid)), "every instance still runs after the refusal (truncated store)");

    // Deleted.
    std::fs::remove_file(data.join("herd.db")).unwrap();
    remove_wal(&data);
    let err = server_must_refuse("process", &data, &[]);
    assert!(err.contains("refusing to start") && err.contains("3 instance(s)"), "{err}");
    assert!(before.iter().all(|(pid, _)| alive(*pid)), "every instance still runs after the refusal (deleted store)");

    // --keep-orphans: starts, lists them as unmanaged, never destroys them.
    s.extra_args = vec!["--keep-orphans".into()];
    s.restart();
    let status = s.json(&["server", "status"]);
    let unmanaged: Vec<String> = status["unmanagedInstances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["key"].as_str().unwrap().to_string())
        .collect();
    let keys: Vec<String> = before.iter().map(|(_, k)| k.clone()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(unmanaged, sorted, "herd server status lists the kept instances");
    assert_eq!(status["clusterId"].as_str().unwrap().len(), 32);
    // The reconciler runs (a new set converges) and still leaves the unmanaged ones alone.
    create_set(&s, &img, "api", "1");
    assert!(before.iter().all(|(pid, _)| alive(*pid)), "unmanaged instances survive reconcile passes");
    let table = s.ok(&["server", "status", "-o", "table"]);
    assert!(table.contains("Unmanaged instances (3)") && table.contains(&keys[0]), "{table}");

    // --destroy-orphans: the unrecorded ones go, the recorded one stays.
    s.extra_args = vec!["--destroy-orphans".into()];
    s.restart();
    wait_for("the orphans destroyed", Duration::from_secs(30), || {
        before.iter().all(|(pid, _)| !alive(*pid)).then_some(())
    });
    let left = leaders(&data);
    assert_eq!(left.len(), 1, "only the recorded instance runs: {left:?}");
    assert!(left[0].1.starts_with("rg/api/"), "{left:?}");
    let status = s.json(&["server", "status"]);
    assert_eq!(status["unmanagedInstances"], serde_json::json!([]), "nothing unmanaged any more");
}

/// Two servers (two data dirs, two clusters) on one kernel: emptying one's store and
/// destroying its orphans never touches the other's instances, and the other's reconciler (with
/// a zero orphan grace) never touches the first's.
#[test]
fn two_clusters_on_one_kernel_never_touch_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let img = image_dir(&dir.path().join("img"), "exec sleep 3600");
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    let mut a = Server::start("process", &da, Some(NO_ORPHAN_GRACE));
    let b = Server::start("process", &db, Some(NO_ORPHAN_GRACE));
    assert_ne!(
        std::fs::read_to_string(da.join("cluster-id")).unwrap(),
        std::fs::read_to_string(db.join("cluster-id")).unwrap()
    );
    create_set(&a, &img, "web", "2");
    create_set(&b, &img, "web", "2");
    let a_before = wait_for("a: 2 instances", Duration::from_secs(60), || {
        let l = leaders(&da);
        (l.len() == 2).then_some(l)
    });
    let b_before = wait_for("b: 2 instances", Duration::from_secs(60), || {
        let l = leaders(&db);
        (l.len() == 2).then_some(l)
    });
    // Same keys (rg/web/N) in both clusters.
    let keys = |l: &[(u32, String)]| l.iter().map(|x| x.1.clone()).collect::<std::collections::BTreeSet<_>>();
    assert_eq!(keys(&a_before), keys(&b_before));

    a.kill9();
    remove_wal(&da);
    std::fs::OpenOptions::new().write(true).truncate(true).open(da.join("herd.db")).unwrap();
    // b keeps reconciling meanwhile: a scale-out converges, and a's instances (unrecorded in
    // b's store) are untouched.
    b.ok(&["vmss", "scale", "-g", "rg", "-n", "web", "--new-capacity", "3", "--quiet"]);
    assert!(a_before.iter().all(|(p, _)| alive(*p)), "b's reconciler left a's instances alone");

    a.extra_args = vec!["--destroy-orphans".into()];
    a.restart();
    wait_for("a's orphans destroyed", Duration::from_secs(30), || {
        a_before.iter().all(|(p, _)| !alive(*p)).then_some(())
    });
    assert!(b_before.iter().all(|(p, _)| alive(*p)), "a's --destroy-orphans left b's instances alone");
    assert_eq!(leaders(&db).len(), 3, "b runs its 3 instances");
}

/// Invalid JSON in one instance row while two sets run: the record is quarantined (status
/// names its key, `/metrics` counts it), its set is Failed with the reason, the API answers for
/// the group, the other set still scales, the instance is never destroyed (a zero orphan
/// grace would destroy it at once if it counted as unrecorded), and `herd store check` (online
/// and offline) names it.
#[test]
fn a_corrupt_record_is_quarantined_and_other_sets_keep_reconciling() {
    let (_dir, img, s) = process_server_without_orphan_grace();
    let data = s.data_dir.clone();
    create_set(&s, &img, "a", "2");
    create_set(&s, &img, "b", "1");
    create_set(&s, &img, "c", "1");
    let a0 = wait_for("rg/a/0 running", Duration::from_secs(60), || {
        leaders(&data).into_iter().find(|(_, k)| k == "rg/a/0").map(|(p, _)| p)
    });
    let c0 = wait_for("rg/c/0 running", Duration::from_secs(60), || {
        leaders(&data).into_iter().find(|(_, k)| k == "rg/c/0").map(|(p, _)| p)
    });

    let conn = rusqlite::Connection::open(data.join("herd.db")).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let n = conn
        .execute(
            "UPDATE objects SET value = '{\"instanceId\": 0, broken' WHERE kind = 'instance' AND key = 'rg/a/0000000000'",
            [],
        )
        .unwrap();
    assert_eq!(n, 1, "the row was corrupted");
    // And set c's own record: wrong shape (its instance records must not be taken for strays).
    let n =
        conn.execute("UPDATE objects SET value = '{\"name\": 42}' WHERE kind = 'vmss' AND key = 'rg/c'", []).unwrap();
    assert_eq!(n, 1, "the set record was corrupted");
    drop(conn);

    // The other set keeps reconciling.
    s.ok(&["vmss", "scale", "-g", "rg", "-n", "b", "--new-capacity", "3", "--quiet", "--timeout", "120"]);
    assert_eq!(s.json(&["vmss", "list-instances", "-g", "rg", "-n", "b"]).as_array().unwrap().len(), 3);

    // The API answers for the group and the set (no 500); the set is Failed with the reason.
    let list = s.json(&["vmss", "list", "-g", "rg"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "a and b listed (c's record is unreadable)");
    let err = s.err(&["vmss", "show", "-g", "rg", "-n", "c"]);
    assert!(err.contains("quarantined") && !err.contains("internal error"), "a clear error for c: {err}");
    let a = s.json(&["vmss", "show", "-g", "rg", "-n", "a"]);
    assert_eq!(a["provisioningState"], "Failed", "{a:#}");
    let reason = a["instanceSummary"]["suspended"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("rg/a/0000000000") && reason.contains("quarantined"),
        "the reason names the record: {reason}"
    );
    s.ok(&["vmss", "list-instances", "-g", "rg", "-n", "a"]);

    // Status and metrics.
    let status = s.json(&["server", "status"]);
    let q = status["quarantined"].as_array().unwrap();
    assert!(q.iter().any(|r| r["key"] == "rg/a/0000000000" && r["kind"] == "instance"), "{status:#}");
    let metrics = s.https_get("/metrics", Some(&s.token()));
    assert!(metrics.contains("herd_store_quarantined_records 2"), "the instance row and the set record: {metrics}");

    // Never destroyed, even with a zero orphan grace, across reconcile passes (b scaled above).
    assert!(alive(a0), "the instance of the quarantined record still runs");
    assert!(alive(c0), "the instance of the set with a quarantined record still runs");

    // herd store check: online and offline, non-zero exit, the key named.
    let out = s.herd(&["store", "check", "-o", "table"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rg/a/0000000000") && text.contains("integrity_check: ok"), "{text}");
    let out = s.herd(&["store", "check", "--data-dir", data.to_str().unwrap(), "-o", "json"]);
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["undecodable"].as_array().unwrap().iter().any(|r| r["key"] == "rg/a/0000000000"), "{v:#}");
    assert!(v["integrity"].as_array().unwrap().is_empty());
}

/// `/metrics` answers 401 (with the JSON error body) without a token or with a wrong one, and
/// 200 with the metrics token or the API token.
#[test]
fn metrics_need_the_api_token_or_the_metrics_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tok = dir.path().join("metrics-token");
    std::fs::write(&tok, "prometheus-scrape-token-0123456789\n").unwrap();
    let config = format!("{SIM_CONFIG}[metrics]\ntoken_file = \"{}\"\n", tok.display());
    let s = Server::start("sim", &data, Some(&config));
    for (token, what) in [(None, "no token"), (Some("wrong-token-wrong-token"), "a wrong token")] {
        let r = s.https_get("/metrics", token);
        assert!(r.starts_with("HTTP/1.1 401"), "{what}: {r}");
        let body: serde_json::Value = serde_json::from_str(r.split_once('\n').unwrap().1).expect("a JSON error body");
        assert_eq!(body["error"]["code"], "Unauthorized", "{what}: {body}");
    }
    let r = s.https_get("/metrics", Some("prometheus-scrape-token-0123456789"));
    assert!(r.starts_with("HTTP/1.1 200") && r.contains("herd_store_quarantined_records 0"), "metrics token: {r}");
    let r = s.https_get("/metrics", Some(&s.token()));
    assert!(r.starts_with("HTTP/1.1 200"), "API token: {r}");
    assert_eq!(mode(&data.join("secret.key")), 0o600, "the default seal key is private");
    // The metrics token opens nothing else.
    let r = s.https_get("/v1/resourceGroups", Some("prometheus-scrape-token-0123456789"));
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777
}

/// The database, its -wal and -shm, the API token and the cluster id are 0600; the seal key
/// lives outside the data dir (`[secrets] seal_key_file` and `--seal-key-file`), seals and
/// unseals there, and no secret.key appears in the data dir; a missing or wrong key with
/// sealed data present stops the start with a clear error instead of re-keying.
#[test]
fn private_files_and_a_seal_key_outside_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let key = keys.join("seal.key");
    let config = format!("{SIM_CONFIG}[secrets]\nseal_key_file = \"{}\"\n", key.display());
    let mut s = Server::start("sim", &data, Some(&config));
    s.ok(&["group", "create", "-n", "rg"]);
    let img = image_dir(&dir.path().join("img"), "exec sleep 3600");
    s.ok(&["image", "import", "--urn", "Herd:Sim:1:1.0.0", "--dir", img.to_str().unwrap()]);
    s.ok(&words(
        "vmss create -g rg -n web --image Herd:Sim:1:1.0.0 --instance-count 1 --admin-username azureuser \
         --admin-password Sup3r-Secret-Passw0rd! --quiet",
    ));
    for f in ["herd.db", "herd.db-wal", "herd.db-shm", "api-token", "cluster-id"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f} is private");
    }
    assert_eq!(mode(&key), 0o600, "the seal key is private");
    assert!(!data.join("secret.key").exists(), "no secret.key in the data dir");
    let conn = rusqlite::Connection::open(data.join("herd.db")).unwrap();
    let sealed: String = conn
        .query_row("SELECT value FROM objects WHERE kind = 'secret' AND key = 'rg/web'", [], |r| r.get(0))
        .expect("the password is stored sealed");
    assert!(sealed.contains("sealed") && !sealed.contains("Sup3r"), "{sealed}");
    drop(conn);

    // The flag works too, and the key unseals: a restart checks the sealed data opens, and a
    // change to the set re-reads the stored secrets.
    s.extra_args = vec!["--seal-key-file".into(), key.to_str().unwrap().into()];
    s.restart();
    s.ok(&["vmss", "scale", "-g", "rg", "-n", "web", "--new-capacity", "2", "--quiet"]);
    assert!(!data.join("secret.key").exists());
    s.kill9();

    // Missing key with sealed data: a clear error, and no new key made.
    let missing = keys.join("elsewhere.key");
    let err = server_must_refuse("sim", &data, &["--seal-key-file", missing.to_str().unwrap()]);
    assert!(err.contains("is missing") && err.contains("sealed secret"), "{err}");
    assert!(!missing.exists() && !data.join("secret.key").exists(), "no silent re-keying");
    // A wrong key: refused too.
    let wrong = keys.join("wrong.key");
    std::fs::write(&wrong, [7u8; 32]).unwrap();
    let err = server_must_refuse("sim", &data, &["--seal-key-file", wrong.to_str().unwrap()]);
    assert!(err.contains("does not open"), "{err}");
}
