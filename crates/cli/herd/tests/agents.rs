//! `herd agent` against a real server: join with a token over pinned TLS, heartbeats, host
//! states, cordon, and every refusal the many-hosts issue names (expired, used, forged token;
//! a taken name; a certificate of another CA; a deleted host).

mod common;

use common::{wait_for, wait_observing, Server, HERD};
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running `herd agent`, killed on drop; its stderr lines are kept.
struct Agent {
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    fn start(args: &[&str], data_dir: &Path) -> Agent {
        let mut child = Command::new(HERD)
            .arg("agent")
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn herd agent");
        let (log, reader) = common::keep_stderr(&mut child, "agent");
        Agent { child: Some(child), log, reader: Some(reader) }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits for the agent to exit by itself; its exit code and log.
    fn exited(&mut self, what: &str) -> (i32, String) {
        let child = self.child.as_mut().unwrap();
        let code = wait_for(what, Duration::from_secs(60), || child.try_wait().unwrap()).code().unwrap_or(-1);
        // The log thread ends with the pipe: wait for it, so every line is in.
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (code, self.log())
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// How many instance directories the agent's process driver holds for rg/web.
fn instance_dirs(agent_dir: &Path) -> usize {
    std::fs::read_dir(agent_dir.join("instances/rg/web"))
        .map(|d| d.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().parse::<u64>().is_ok()).count())
        .unwrap_or(0)
}

fn token(s: &Server, extra: &[&str]) -> String {
    let mut args = vec!["host", "join-token", "create"];
    args.extend(extra);
    s.json(&args)["token"].as_str().unwrap().to_string()
}

fn joined(s: &Server, name: &str) -> Option<Value> {
    s.json(&["host", "list"]).as_array().unwrap().iter().find(|h| h["name"] == name).cloned()
}

fn wait_state(s: &Server, name: &str, state: &str, within: Duration) -> Value {
    wait_observing(&format!("host {name} to be {state}"), within, || {
        let h = joined(s, name).ok_or_else(|| "not listed".to_string())?;
        if h["state"] == state {
            Ok(h)
        } else {
            Err(h.to_string())
        }
    })
}

#[test]
fn an_agent_joins_with_a_token_heartbeats_and_is_refused_once_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start("sim", &dir.path().join("server"), Some("[agents]\nhost_grace_secs = 5\n"));
    let once = token(&s, &["--single-use", "--description", "rack a"]);
    let a_dir = dir.path().join("h2");
    let mut a = Agent::start(
        &["--server", &s.url, "--join-token", &once, "--name", "h2", "--zone", "1", "--fault-domain", "rack-a"],
        &a_dir,
    );
    let h2 = wait_state(&s, "h2", "Ready", Duration::from_secs(60));
    assert_eq!(h2["zone"], "1");
    assert_eq!(h2["faultDomain"], "rack-a");
    assert!(h2["vcpus"].as_u64().unwrap() >= 1 && h2["memoryMib"].as_u64().unwrap() >= 256, "{h2}");
    assert_eq!(h2["agentVersion"], env!("CARGO_PKG_VERSION"));
    assert!(h2["lastHeartbeat"].is_string(), "{h2}");
    assert_eq!(h2["instances"], 0);
    // The key stayed on the host, private; the server keeps only the certificate's fingerprint.
    let key = std::fs::read_to_string(a_dir.join("agent.key")).unwrap();
    assert!(key.contains("PRIVATE KEY"));
    let db = std::fs::read(s.data_dir.join("herd.db")).unwrap_or_default();
    let body = key.lines().nth(1).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains(body), "the agent's key is not in the server's store");
    // Heartbeats keep coming.
    let first = h2["lastHeartbeat"].as_str().unwrap().to_string();
    wait_for("a later heartbeat", Duration::from_secs(30), || {
        (joined(&s, "h2")?["lastHeartbeat"].as_str()? != first).then_some(())
    });

    // The single-use token is spent.
    let mut again = Agent::start(&["--server", &s.url, "--join-token", &once, "--name", "h3"], &dir.path().join("h3"));
    let (code, log) = again.exited("the second join with a single-use token to fail");
    assert_ne!(code, 0);
    assert!(log.contains("single-use and is used (by host 'h2')"), "{log}");
    // A taken name, with a reusable token: refused, and nothing changes.
    let reusable = token(&s, &[]);
    let mut taken =
        Agent::start(&["--server", &s.url, "--join-token", &reusable, "--name", "h2"], &dir.path().join("h2b"));
    let (code, log) = taken.exited("a join under a taken name to fail");
    assert_ne!(code, 0);
    assert!(log.contains("host name 'h2' is taken"), "{log}");
    // A forged secret.
    let forged = format!("{}{}", &reusable[..reusable.len() - 1], if reusable.ends_with('0') { '1' } else { '0' });
    let mut bad = Agent::start(&["--server", &s.url, "--join-token", &forged, "--name", "h4"], &dir.path().join("h4"));
    let (code, log) = bad.exited("a join with a forged token to fail");
    assert_ne!(code, 0);
    assert!(log.contains("secret is wrong"), "{log}");
    assert!(!log.contains(&forged), "the token is never printed: {log}");
    // An expired token (1 s): refused once its time has passed.
    let short = token(&s, &["--expires", "1s"]);
    let expiry = s.json(&["host", "join-token", "list"]).as_array().unwrap().last().unwrap()["expiresAt"].clone();
    let expiry: chrono::DateTime<chrono::Utc> = serde_json::from_value(expiry).unwrap();
    wait_for("the 1 s token's expiry to pass", Duration::from_secs(30), || {
        (chrono::Utc::now() > expiry + chrono::Duration::milliseconds(200)).then_some(())
    });
    let mut t = Agent::start(&["--server", &s.url, "--join-token", &short, "--name", "h5"], &dir.path().join("h5"));
    let (code, log) = t.exited("a join with an expired token to fail");
    assert_ne!(code, 0);
    assert!(log.contains("the join token expired at"), "{log}");
    assert_eq!(
        s.json(&["host", "list"]).as_array().unwrap().iter().map(|h| h["name"].as_str().unwrap()).collect::<Vec<_>>(),
        ["h2"],
        "no refused join left a host"
    );

    // Cordon and uncordon.
    assert_eq!(s.json(&["host", "cordon", "h2"])["state"], "Cordoned");
    assert_eq!(s.json(&["host", "show", "h2"])["scheduling"], "Cordoned");
    assert_eq!(s.json(&["host", "uncordon", "h2"])["state"], "Ready");
    let e = s.err(&["host", "cordon", "nope"]);
    assert!(e.contains("host 'nope' not found"), "{e}");

    // kill -9 the agent: NotReady after the grace; started again (no token), Ready again.
    a.kill9();
    wait_state(&s, "h2", "NotReady", Duration::from_secs(60));
    let mut a = Agent::start(&[], &a_dir);
    wait_state(&s, "h2", "Ready", Duration::from_secs(60));

    // Delete: the running agent is refused at its next heartbeat and stops.
    s.ok(&["host", "delete", "h2"]);
    let (code, log) = a.exited("the deleted host's agent to stop");
    assert_ne!(code, 0);
    assert!(log.contains("was deleted from the cluster"), "{log}");
    assert!(joined(&s, "h2").is_none());
    // Started again, its certificate is refused: the host is not a member.
    let mut back = Agent::start(&[], &a_dir);
    let (code, log) = back.exited("the deleted host's agent to be refused at start");
    assert_ne!(code, 0);
    assert!(log.contains("is not a member of this cluster"), "{log}");
    let e = s.err(&["host", "delete", "h2"]);
    assert!(e.contains("host 'h2' not found"), "{e}");
}

#[test]
fn a_token_of_another_cluster_and_a_certificate_of_another_ca_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = Server::start("sim", &dir.path().join("a"), None);
    let b = Server::start("sim", &dir.path().join("b"), None);
    // B's token at A: the CA it pins is not A's, so the secret is never sent.
    let b_token = token(&b, &[]);
    let mut wrong =
        Agent::start(&["--server", &a.url, "--join-token", &b_token, "--name", "h2"], &dir.path().join("x"));
    let (code, log) = wrong.exited("a join with another cluster's token to fail");
    assert_ne!(code, 0);
    assert!(log.contains("does not hold the CA the join token names"), "{log}");
    // A host joined to B, pointed at A: A's TLS refuses its certificate, and the agent stops.
    let h_dir = dir.path().join("hb");
    let mut hb = Agent::start(&["--server", &b.url, "--join-token", &b_token, "--name", "hb"], &h_dir);
    wait_state(&b, "hb", "Ready", Duration::from_secs(60));
    hb.kill9();
    let membership = h_dir.join("membership.json");
    let text = std::fs::read_to_string(&membership).unwrap().replace(&b.url, &a.url);
    std::fs::write(&membership, text).unwrap();
    let mut moved = Agent::start(&[], &h_dir);
    let (code, log) = moved.exited("an agent with another CA's certificate to stop");
    assert_ne!(code, 0);
    assert!(log.contains("certificate"), "{log}");
    assert!(a.json(&["host", "list"]).as_array().unwrap().is_empty());
    // Plain API clients are not asked for a certificate: the CLI still works against A.
    a.ok(&["group", "list"]);
}

#[test]
fn instances_placed_on_a_joined_host_run_under_its_agent() {
    let dir = tempfile::tempdir().unwrap();
    // This machine serves zone 1 only, so a set in zone 2 can only go to the joined host.
    let config =
        "[agents]\nhost_grace_secs = 5\n\n[[hosts]]\nname = \"local\"\nzone = \"1\"\nvcpus = 2\nmemory_mib = 4096\n";
    let s = Server::start("process", &dir.path().join("server"), Some(config));
    let reusable = token(&s, &[]);
    // A name of a declared host (here "local", which is reserved anyway) is refused.
    let mut named_local =
        Agent::start(&["--server", &s.url, "--join-token", &reusable, "--name", "local"], &dir.path().join("l"));
    let (code, log) = named_local.exited("an agent named 'local' to be refused");
    assert_ne!(code, 0);
    assert!(log.contains("host name 'local' is taken: a [[hosts]] entry"), "{log}");
    let h_dir = dir.path().join("h2");
    let _agent = Agent::start(&["--server", &s.url, "--join-token", &reusable, "--name", "h2", "--zone", "2"], &h_dir);
    wait_state(&s, "h2", "Ready", Duration::from_secs(60));

    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../images/sample-process");
    s.group_with_image("rg", "Herd:Sample:1:1.0.0", &sample);
    s.ok(&[
        "vmss",
        "create",
        "-g",
        "rg",
        "-n",
        "web",
        "--image",
        "Herd:Sample:1:1.0.0",
        "--instance-count",
        "2",
        "--zones",
        "2",
        "--no-wait",
    ]);
    let running = wait_observing("both instances running on h2", Duration::from_secs(120), || {
        let list = s.json(&["vmss", "list-instances", "-g", "rg", "-n", "web"]);
        let all = list.as_array().unwrap();
        let ok = all.len() == 2
            && all
                .iter()
                .all(|i| i["host"] == "h2" && i["powerState"] == "running" && i["provisioningState"] == "Succeeded");
        if ok {
            Ok(list.clone())
        } else {
            let hosts: Vec<String> = all.iter().map(|i| i["host"].to_string()).collect();
            Err(format!("{} (hosts {hosts:?})", common::instances_summary(&list)))
        }
    });
    // They run from the agent's data dir, not the server's.
    let on_agent = instance_dirs(&h_dir);
    assert!(on_agent >= 2, "the agent's instances dir has {on_agent} entries; {running}");
    assert_eq!(joined(&s, "h2").unwrap()["instances"], 2);
    // A host that runs instances is not deleted without --force.
    let e = s.err(&["host", "delete", "h2"]);
    assert!(e.contains("still runs 2 instance(s)"), "{e}");
    // Cordoned, it takes no new instance: a scale-out that only it could take is refused up
    // front, naming why, and nothing changes.
    s.ok(&["host", "cordon", "h2"]);
    let e = s.err(&["vmss", "scale", "-g", "rg", "-n", "web", "--new-capacity", "3", "--no-wait"]);
    assert!(e.contains("no host that takes new instances serves zone 2") && e.contains("cordoned"), "{e}");
    assert_eq!(common::counted_instances(&s, &["-g", "rg", "-n", "web"]).len(), 2);
    // Uncordoned, the third instance goes there too.
    s.ok(&["host", "uncordon", "h2"]);
    s.ok(&["vmss", "scale", "-g", "rg", "-n", "web", "--new-capacity", "3", "--no-wait"]);
    wait_for("a third instance running on h2", Duration::from_secs(120), || {
        let all = common::counted_instances(&s, &["-g", "rg", "-n", "web"]);
        (all.len() == 3 && all.iter().all(|i| i["host"] == "h2" && i["powerState"] == "running")).then_some(())
    });
    // Overprovisioned extras come and go; the three counted ones stay, on the agent's host.
    wait_for("exactly the three instances on the agent's host", Duration::from_secs(60), || {
        (instance_dirs(&h_dir) == 3).then_some(())
    });
    // Deleted, the set's instances are destroyed on the host, through its agent.
    s.ok(&["vmss", "delete", "-g", "rg", "-n", "web"]);
    wait_for("the agent's instances to be gone", Duration::from_secs(120), || {
        (instance_dirs(&h_dir) == 0).then_some(())
    });
}
