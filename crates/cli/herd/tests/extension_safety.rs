//! Issue 13: what an extension run leaves behind, on the process driver.
//!
//! - A protected command that prints its own secret (next to `;`, `&&`, quotes, newlines and
//!   `$()`) shows it masked in the instance view, the instance list and GET, and the secret is
//!   in no row of `herd.db`, in no byte of `herd.db`/`herd.db-wal`, in the server's log nor in
//!   the instance directory (the script's stdout/stderr files are removed once captured).
//! - A run cut by `kill -9` of the server is adopted by the next server: the script is never
//!   running twice at once, and its result (exit code, output) is the one recorded.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

const SET: [&str; 4] = ["-g", "sec-rg", "-n", "web"];

/// The set every test here runs on: one instance of Herd:App:1:1.0.0, Manual upgrades.
fn create_manual_set(s: &Server) {
    let extra = words("--upgrade-policy-mode Manual --disable-overprovision");
    s.create_set("sec-rg", "web", "Herd:App:1:1.0.0", "1", &extra);
}

fn with<'a>(cmd: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    on_set(&SET, cmd, extra)
}

/// `GET` on the API with the server's token; the body.
fn api_get(s: &Server, path: &str) -> String {
    let answer = s.https_get(path, Some(&s.token()));
    let (status, body) = answer.split_once('\n').unwrap_or((&answer, ""));
    assert!(status.starts_with("HTTP/1.1 200"), "GET {path} failed: {answer:.300}");
    body.to_string()
}

/// Every text and blob of every row of every table of the SQLite store, read with rusqlite.
fn every_db_value(db: &std::path::Path) -> Vec<String> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(tables.len() > 1, "the store has tables: {tables:?}");
    let mut out = Vec::new();
    for t in tables {
        let mut st = conn.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let n = st.column_count();
        let mut rows = st.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            for i in 0..n {
                match row.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Text(b) | rusqlite::types::ValueRef::Blob(b) => {
                        out.push(String::from_utf8_lossy(b).into_owned())
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

/// Every file under `dir` (recursively) whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let bytes = std::fs::read(&p).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    hits.push(p.display().to_string());
                }
            }
        }
    }
    hits
}

#[test]
fn a_printed_secret_is_masked_everywhere_it_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_logged("process", &dir.path().join("data"), None, "debug");
    let img = image_dir(&dir.path().join("img"), "exec sleep 3600");
    s.group_with_image("sec-rg", "Herd:App:1:1.0.0", &img);
    create_manual_set(&s);
    // The command, then each way a secret sits in a shell line.
    let secrets = [
        "SEKRIT-9d2f",      // `echo V3 SEKRIT-9d2f; ...`: the `;` right after it
        "amp-5e1c7a",       // before `&&`
        "in quotes 44b1",   // single quotes
        "dq-e6a0f3",        // double quotes, output glued to other text
        "second-line-77ab", // on a line of its own (newline in the command)
        "subst-0c3d9e",     // inside `$()`
        "stderr-2b8f41",    // printed to stderr
    ];
    let command = "echo V3 SEKRIT-9d2f; echo amp-5e1c7a&&echo 'in quotes 44b1';printf 'x%sx\\n' \"dq-e6a0f3\"\n\
                   echo second-line-77ab\necho $(echo subst-0c3d9e) && echo stderr-2b8f41 >&2; echo end";
    let prot = dir.path().join("prot.json");
    std::fs::write(&prot, serde_json::json!({ "commandToExecute": command }).to_string()).unwrap();
    s.ok(&[words("vmss extension set -g sec-rg --vmss-name web --name CustomScript --publisher Microsoft.Azure.Extensions --version 2.0 --protected-settings"), vec![&format!("@{}", prot.display())]].concat());
    s.ok(&with(&["vmss", "update-instances"], &["--instance-ids", "*"]));
    let inst = wait_for("the extension to succeed", Duration::from_secs(60), || {
        let all = s.json(&with(&["vmss", "list-instances"], &[]));
        all.as_array()?
            .iter()
            .find(|i| i["pendingAction"].is_null() && i["extensions"][0]["state"] == "Succeeded")
            .cloned()
    });
    let id = inst["instanceId"].as_str().unwrap().to_string();
    let message = inst["extensions"][0]["message"].as_str().unwrap().to_string();
    assert!(message.contains("[stdout]\n***\n") && !message.contains("V3 "), "the issue's case: {message}");
    assert!(message.contains("x***x"), "masked whatever surrounds it: {message}");
    assert!(message.contains("\nend"), "short output stays readable: {message}");

    let base = "/v1/resourceGroups/sec-rg/virtualMachineScaleSets/web/virtualMachines";
    let shown = [
        s.ok(&with(&["vmss", "list-instances"], &["-o", "json"])),
        s.ok(&with(&["vmss", "get-instance-view"], &["--instance-id", &id, "-o", "json"])),
        api_get(&s, base),
        api_get(&s, &format!("{base}/{id}")),
        api_get(&s, &format!("{base}/{id}/instanceView")),
        s.ok(&["monitor", "activity-log", "list", "-g", "sec-rg"]),
    ];
    assert!(shown[4].contains("x***x"), "the instance view has the masked message: {}", shown[4]);
    // Checkpointing would move the WAL into herd.db: read both as they are now, and the rows.
    let data = &s.data_dir;
    let db = std::fs::read(data.join("herd.db")).unwrap();
    let wal = std::fs::read(data.join("herd.db-wal")).unwrap_or_default();
    assert!(!wal.is_empty(), "the store runs in WAL mode and has written to it");
    let rows = every_db_value(&data.join("herd.db"));
    let ext_dir = data.join("instances/sec-rg/web").join(&id).join("work/.herd/extensions/CustomScript");
    for secret in secrets {
        for (i, text) in shown.iter().enumerate() {
            assert!(!text.contains(secret), "output {i} shows {secret:?}: {text}");
        }
        let b = secret.as_bytes();
        assert!(!db.windows(b.len()).any(|w| w == b), "herd.db holds {secret:?}");
        assert!(!wal.windows(b.len()).any(|w| w == b), "herd.db-wal holds {secret:?}");
        assert!(!rows.iter().any(|r| r.contains(secret)), "a row of herd.db holds {secret:?}");
        assert!(!s.log_text().contains(secret), "the server logged {secret:?}");
        let hits = files_containing(data, secret);
        assert!(hits.is_empty(), "files under the data dir hold {secret:?}: {hits:?}");
    }
    for f in [".herd-stdout", ".herd-stderr", ".herd-command"] {
        assert!(!ext_dir.join(f).exists(), "{f} is removed once the run is captured");
    }
    assert!(ext_dir.is_dir(), "the extension's directory stays (its files may be needed again)");
    let _: Value = serde_json::from_str(&shown[2]).unwrap();
}

/// The tagged processes that are copies of the test script (its `sleep 6.5`).
fn script_copies(data_dir: &std::path::Path) -> usize {
    tagged_processes(data_dir).iter().filter(|p| p.cmdline.starts_with("sleep\u{0}6.5")).count()
}

#[test]
fn a_run_cut_by_kill9_is_adopted_and_never_runs_twice() {
    let (_dir, mut s) = server_with_sleeper("process", None, "sec-rg", "Herd:App:1:1.0.0");
    create_manual_set(&s);
    let id = s.json(&with(&["vmss", "list-instances"], &[]))[0]["instanceId"].as_str().unwrap().to_string();
    let work = s.data_dir.join("instances/sec-rg/web").join(&id).join("work");
    let starts = work.join("starts");
    let command = "echo $$ >> \"$HOME/starts\"; sleep 6.5; echo finished >> \"$HOME/starts\"; echo run-output-ok";
    let settings = serde_json::json!({ "commandToExecute": command }).to_string();
    s.ok(&[words("vmss extension set -g sec-rg --vmss-name web --name CustomScript --publisher Herd.Extensions --version 2.0 --settings"), vec![&settings]].concat());
    s.ok(&with(&["vmss", "update-instances"], &["--instance-ids", "*", "--no-wait"]));
    wait_for("the script to start", Duration::from_secs(30), || {
        (std::fs::read_to_string(&starts).unwrap_or_default().lines().count() == 1 && script_copies(&s.data_dir) == 1)
            .then_some(())
    });

    // Count the copies of the script all along, from before the crash until the run is over.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (stop, data) = (stop.clone(), s.data_dir.clone());
        std::thread::spawn(move || {
            let (mut most, mut scans) = (0, 0u32);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                most = most.max(script_copies(&data));
                scans += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            (most, scans)
        })
    };
    s.kill9();
    s.restart();
    let inst = wait_for("the extension to converge after the restart", Duration::from_secs(60), || {
        let all = s.json(&with(&["vmss", "list-instances"], &[]));
        let i = all.as_array()?.iter().find(|i| i["instanceId"] == id.as_str())?.clone();
        (i["pendingAction"].is_null() && i["extensions"][0]["state"] == "Succeeded").then_some(i)
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (most, scans) = sampler.join().unwrap();
    assert!(scans > 20, "the sampler ran ({scans} scans)");
    assert_eq!(most, 1, "copies of the script seen at once (2 = the new server started a second copy)");
    let log = std::fs::read_to_string(&starts).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "started once and finished once: {log:?}");
    assert_eq!(lines[1], "finished", "{log:?}");
    let st = &inst["extensions"][0];
    assert_eq!(st["exitCode"], 0, "{st}");
    assert!(st["message"].as_str().unwrap().contains("run-output-ok"), "the adopted run's output: {st}");
    let ext_dir = work.join(".herd/extensions/CustomScript");
    for f in [".herd-stdout", ".herd-stderr", ".herd-command", ".herd-runner", ".herd-exit"] {
        assert!(!ext_dir.join(f).exists(), "{f} is removed once the adopted run is captured");
    }
    assert!(!work.parent().unwrap().join("script-run").exists(), "the run record is removed");
    assert_eq!(script_copies(&s.data_dir), 0);
}
