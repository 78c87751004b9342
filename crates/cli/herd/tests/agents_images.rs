//! Images on joined hosts: an agent that cannot see the server's gallery pulls each image by
//! content digest, once, over its own TLS connection; a large pull leaves heartbeats on time;
//! a corrupted transfer is refused with nothing kept; a deleted gallery version leaves the
//! host's cache once no set uses it.
//!
//! The agent runs in a mount namespace of its own where the server's data dir (and so its
//! gallery) is an empty tmpfs: a spec path of the server's does not exist for it, so an
//! instance that runs proves the pull.

mod common;

use common::{wait_observing, Server, HERD};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `herd agent` that cannot see `hidden` (a tmpfs is mounted over it in the agent's
/// own mount namespace); killed on drop, its stderr kept.
struct HiddenAgent {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl HiddenAgent {
    fn start(args: &[&str], data_dir: &Path, hidden: &Path) -> HiddenAgent {
        let mut child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount -t tmpfs herd-test-hidden "$1" && shift && exec "$@""#)
            .arg("sh")
            .arg(hidden)
            .arg(HERD)
            .arg("agent")
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn herd agent under unshare");
        let (log, _reader) = common::keep_stderr(&mut child, "agent");
        HiddenAgent { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Whether `path` exists as the agent sees it.
    fn sees(&self, path: &Path) -> bool {
        let pid = self.child.id().to_string();
        Command::new("nsenter")
            .args(["--target", &pid, "--mount", "--", "test", "-e"])
            .arg(path)
            .status()
            .expect("nsenter")
            .success()
    }
}

impl Drop for HiddenAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CONFIG: &str = "[agents]\nhost_grace_secs = 5\nheartbeat_interval_ms = 500\n\n[[hosts]]\nname = \"local\"\nzone = \"1\"\nvcpus = 2\nmemory_mib = 4096\n";

/// A process server whose zone 2 only the joined host `h2` serves (its agent blind to the
/// server's data dir), ready.
fn cluster(dir: &Path, extra_config: &str) -> (Server, HiddenAgent, PathBuf) {
    let server_dir = dir.join("server");
    let s = Server::start("process", &server_dir, Some(&format!("{extra_config}{CONFIG}")));
    let token = s.json(&["host", "join-token", "create"])["token"].as_str().unwrap().to_string();
    let h_dir = dir.join("h2");
    let agent = HiddenAgent::start(
        &["--server", &s.url, "--join-token", &token, "--name", "h2", "--zone", "2"],
        &h_dir,
        &server_dir,
    );
    wait_observing("host h2 Ready", Duration::from_secs(60), || {
        let list = s.json(&["host", "list"]);
        let h = list.as_array().unwrap().iter().find(|h| h["name"] == "h2").cloned().unwrap_or_default();
        if h["state"] == "Ready" {
            Ok(())
        } else {
            Err(format!("{h}; agent log: {}", agent.log()))
        }
    });
    (s, agent, h_dir)
}

fn host(s: &Server) -> Value {
    s.json(&["host", "show", "h2"])
}

fn pulls(s: &Server) -> u64 {
    host(s)["imagePulls"].as_u64().unwrap()
}

/// The image's digest and its gallery path on the server.
fn image(s: &Server, urn: &str) -> (String, PathBuf) {
    let v = s.json(&["image", "show", "--urn", urn]);
    let d = v["digest"].as_str().unwrap_or_else(|| panic!("no digest: {v}")).to_string();
    assert!(d.len() == 71 && d.starts_with("sha256:") && d[7..].bytes().all(|b| b.is_ascii_hexdigit()), "{d}");
    (d, PathBuf::from(v["source"]["path"].as_str().unwrap()))
}

fn cache_dir(h_dir: &Path, digest: &str) -> PathBuf {
    h_dir.join("images").join(digest.trim_start_matches("sha256:"))
}

/// Waits until set `name`'s `count` counted instances run on h2.
fn running_on_h2(s: &Server, name: &str, count: usize, within: Duration) {
    wait_observing(&format!("{count} instance(s) of {name} running on h2"), within, || {
        let all = common::counted_instances(s, &["-g", "rg", "-n", name]);
        let ok = all.len() == count
            && all
                .iter()
                .all(|i| i["host"] == "h2" && i["powerState"] == "running" && i["provisioningState"] == "Succeeded");
        if ok {
            Ok(())
        } else {
            Err(common::instances_summary(&Value::Array(all)))
        }
    });
}

/// Deletes image `urn` once no set uses it any more (a deleted set's record may linger until
/// its instances are gone).
fn delete_image(s: &Server, urn: &str) {
    wait_observing(&format!("image {urn} deleted"), Duration::from_secs(60), || {
        let out = s.herd(&["image", "delete", "--urn", urn]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        match () {
            () if out.status.success() => Ok(()),
            () if err.contains("in use") => Err(err),
            () => panic!("image delete {urn}: {err}"),
        }
    });
}

fn leftovers(h_dir: &Path) -> Vec<String> {
    std::fs::read_dir(h_dir.join("images"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn a_host_pulls_each_image_once_refuses_a_corrupt_one_and_drops_deleted_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (s, agent, h_dir) = cluster(dir.path(), "");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../images/sample-process");
    s.group_with_image("rg", "Herd:Sample:1:1.0.0", &sample);
    let (digest, gallery) = image(&s, "Herd:Sample:1:1.0.0");
    assert!(gallery.join("init").exists() && !agent.sees(&gallery), "the agent cannot read the server's gallery");
    assert_eq!(pulls(&s), 0);

    // Two instances: one pull; the host runs them from its own copy.
    s.create_set("rg", "web", "Herd:Sample:1:1.0.0", "2", &["--zones", "2", "--no-wait"]);
    running_on_h2(&s, "web", 2, Duration::from_secs(120));
    assert_eq!(pulls(&s), 1, "two instances of one image: one pull");
    assert!(cache_dir(&h_dir, &digest).join("init").is_file());
    // A second set on the same image pulls nothing.
    s.create_set("rg", "web2", "Herd:Sample:1:1.0.0", "1", &["--zones", "2", "--no-wait"]);
    running_on_h2(&s, "web2", 1, Duration::from_secs(120));
    assert_eq!(pulls(&s), 1, "a second set on a cached image pulls nothing");

    // Another version whose gallery copy is damaged after import: the host refuses what it
    // gets, naming the image and both digests, and keeps nothing.
    let v2 = dir.path().join("v2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::copy(sample.join("init"), v2.join("init")).unwrap();
    std::fs::write(v2.join("notes.txt"), "version 2\n").unwrap();
    s.ok(&["image", "import", "--urn", "Herd:Sample:1:2.0.0", "--dir", v2.to_str().unwrap()]);
    let (digest2, gallery2) = image(&s, "Herd:Sample:1:2.0.0");
    assert_ne!(digest2, digest);
    let notes = gallery2.join("notes.txt");
    std::fs::set_permissions(&notes, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&notes, "version 2, damaged\n").unwrap();
    s.create_set("rg", "bad", "Herd:Sample:1:2.0.0", "1", &["--zones", "2", "--no-wait", "--disable-overprovision"]);
    let message = wait_observing("the damaged image refused", Duration::from_secs(120), || {
        let list = s.json(&["vmss", "list-instances", "-g", "rg", "-n", "bad"]);
        let Some(first) = list.as_array().unwrap().first() else {
            return Err(format!("no instance yet: {list}"));
        };
        let id = first["instanceId"].as_str().map_or_else(|| first["instanceId"].to_string(), str::to_string);
        let out = s.herd(&["vmss", "get-instance-view", "-g", "rg", "-n", "bad", "--instance-id", &id, "-o", "json"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        if text.contains("nothing was kept") {
            Ok(text)
        } else {
            Err(text)
        }
    });
    assert!(
        message.contains("Herd:Sample:1:2.0.0")
            && message.contains(&format!("not {digest2}"))
            && message.contains("has digest sha256:"),
        "{message}"
    );
    assert!(!cache_dir(&h_dir, &digest2).exists(), "nothing of the damaged image is kept");
    assert_eq!(leftovers(&h_dir), [digest.trim_start_matches("sha256:")], "no temporary left either");
    assert!(pulls(&s) >= 2);

    // Deleted: the sets, then a version; the host's cache follows the gallery. (The damaged
    // set's instance waits out a permanent failure's backoff, so its delete is not waited for;
    // it never had a copy.)
    s.ok(&["vmss", "delete", "-g", "rg", "-n", "bad", "--no-wait"]);
    for set in ["web", "web2"] {
        s.ok(&["vmss", "delete", "-g", "rg", "-n", set]);
    }
    assert!(cache_dir(&h_dir, &digest).is_dir(), "no instance uses it, but the gallery still has it: kept");
    delete_image(&s, "Herd:Sample:1:1.0.0");
    wait_observing("the deleted version gone from the host's cache", Duration::from_secs(30), || {
        let left = leftovers(&h_dir);
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
    assert!(agent.log().contains("image pull failed; nothing was kept"), "{}", agent.log());
}

#[test]
fn a_large_pull_leaves_heartbeats_on_time() {
    let dir = tempfile::tempdir().unwrap();
    // 1 GiB, as the issue says: the pull streams on a connection of its own, so the link's
    // heartbeats (every 500 ms) keep coming.
    let src = dir.path().join("big-src");
    std::fs::create_dir_all(&src).unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../images/sample-process");
    std::fs::copy(sample.join("init"), src.join("init")).unwrap();
    let ok = Command::new("fallocate").args(["-l", "1G"]).arg(src.join("blob")).status().unwrap().success();
    assert!(ok, "fallocate");
    let extra = format!("[images]\nimport_roots = [\"{}\"]\n\n", src.display());
    let (s, agent, h_dir) = cluster(dir.path(), &extra);
    s.ok(&["group", "create", "-n", "rg"]);
    s.ok(&["image", "import", "--urn", "Herd:Big:1:1.0.0", "--server-path", "--dir", src.to_str().unwrap()]);
    let (digest, _) = image(&s, "Herd:Big:1:1.0.0");
    let before = host(&s)["maxHeartbeatGapMs"].as_u64().unwrap();
    let started = Instant::now();
    s.create_set("rg", "big", "Herd:Big:1:1.0.0", "1", &["--zones", "2", "--no-wait", "--disable-overprovision"]);
    running_on_h2(&s, "big", 1, Duration::from_secs(120));
    let took = started.elapsed();
    let h = host(&s);
    let gap = h["maxHeartbeatGapMs"].as_u64().unwrap();
    eprintln!("1 GiB image: running on h2 after {took:?}; max heartbeat gap {gap} ms (before the pull {before} ms; interval 500 ms)");
    let pulled = agent.log().lines().find(|l| l.contains("image pulled")).map(str::to_string);
    eprintln!("agent: {pulled:?}");
    assert_eq!(h["imagePulls"], 1, "{h}");
    assert_eq!(std::fs::metadata(cache_dir(&h_dir, &digest).join("blob")).unwrap().len(), 1 << 30);
    assert!(gap < 2000, "a heartbeat came {gap} ms after the one before, during a 1 GiB pull: {h}");
}
