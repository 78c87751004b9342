//! TLS end to end, on real `herd server` processes and the real CLI: HTTPS by default with the
//! cluster CA from the data dir, curl with and without the CA, a certificate from another CA
//! refused with the hint, plain HTTP only on loopback, certificate and CA rotation under load,
//! and the per-address limit on failed authentications.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl").args(args).output().expect("curl (apt-get install curl)")
}

/// The server's certificate fingerprint, as the API shows it.
fn served_fingerprint(s: &Server) -> String {
    s.json(&["server", "tls"])["certificate"]["fingerprint"].as_str().unwrap().to_string()
}

#[test]
fn a_fresh_server_is_https_and_the_cli_trusts_it_with_no_flag() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("keys").join("ca-key.pem");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    let mut s = Server::start("sim", &dir.path().join("data"), Some(SIM_CONFIG));
    assert!(s.url.starts_with("https://127.0.0.1:"), "{}", s.url);
    // The CLI finds the CA in the data dir, as it finds the token.
    assert_eq!(s.json(&["group", "list"]), serde_json::json!([]));
    let ca = s.ca_file();
    let mode = |p: &Path| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions()) & 0o777;
    assert_eq!(mode(&s.data_dir.join("tls/ca-key.pem")), 0o600, "the CA key is private");
    assert_eq!(mode(&s.data_dir.join("tls/server-key.pem")), 0o600, "the server key is private");

    // curl without the CA refuses the server (60: peer certificate cannot be authenticated);
    // with --cacert it works.
    let health = format!("{}/healthz", s.url);
    let out = curl(&["-s", "-m", "10", &health]);
    assert_eq!(out.status.code(), Some(60), "curl without the CA: {}", String::from_utf8_lossy(&out.stderr));
    let out = curl(&["-s", "-m", "10", "--cacert", ca.to_str().unwrap(), &health]);
    assert!(out.status.success(), "curl --cacert: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok");

    // `ca show` prints the bundle and the SHA-256 that openssl computes for it.
    let shown = s.json(&["server", "ca", "show", "--data-dir", s.data_dir.to_str().unwrap()]);
    let openssl = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in", ca.to_str().unwrap()])
        .output()
        .expect("openssl (apt-get install openssl)");
    let openssl = String::from_utf8_lossy(&openssl.stdout).to_string();
    assert!(openssl.trim().ends_with(shown["fingerprint"].as_str().unwrap()), "{openssl} vs {shown}");
    assert_eq!(shown["bundle"].as_str().unwrap(), std::fs::read_to_string(&ca).unwrap());

    // With --ca-key-file the key lives there (0600), not in the data dir.
    let data2 = dir.path().join("data2");
    s.kill9();
    let mut s2 = Server::start("sim", &data2, Some(SIM_CONFIG));
    s2.extra_args = vec!["--ca-key-file".into(), key.display().to_string()];
    // Stopped first: its tls controller would make a new CA in tls/ while it is removed.
    s2.kill9();
    std::fs::remove_dir_all(data2.join("tls")).unwrap();
    s2.restart();
    assert_eq!(s2.json(&["group", "list"]), serde_json::json!([]));
    assert_eq!(mode(&key), 0o600);
    assert!(!data2.join("tls/ca-key.pem").exists(), "no CA key in the data dir");
}

/// As a user runs it: `herd server` with no flag (default data dir, 127.0.0.1:7900), then
/// `herd group list` with no flag and no HERD_* variable. In a private mount namespace (a tmpfs
/// over /var/lib, where root's default data dir is) and network namespace (its own 7900), so
/// the host's own /var/lib/herd and port are never touched.
#[test]
fn the_cli_beside_a_default_server_needs_no_flag_and_no_variable() {
    let script = format!("mount -t tmpfs tmpfs /var/lib && ip link set lo up && exec {HERD} server --driver sim");
    let mut child = Command::new("unshare")
        .args(["-m", "-n", "--propagation", "private", "sh", "-c", &script])
        .env("HERD_LOG", "warn")
        .env_remove("HERD_DATA_DIR")
        .env_remove("HERD_SERVER")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("unshare (util-linux)");
    let pid = child.id().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + herd_test_support::scaled(Duration::from_secs(30));
    let announced = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx.recv_timeout(left).expect("the default server to announce where it listens");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.to_string();
        }
    };
    assert!(announced.starts_with("https://127.0.0.1:7900 "), "{announced}");
    assert!(announced.contains("data dir /var/lib/herd"), "{announced}");
    let out = Command::new("nsenter")
        .args(["-t", &pid, "-m", "-n", HERD, "group", "list"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("nsenter (util-linux)");
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
}

#[test]
fn a_server_of_another_ca_is_refused_with_the_hint() {
    let dir = tempfile::tempdir().unwrap();
    let a = Server::start("sim", &dir.path().join("a"), Some(SIM_CONFIG));
    let b = Server::start("sim", &dir.path().join("b"), Some(SIM_CONFIG));
    // The CLI trusts a's CA (from a's data dir) but talks to b.
    let out = a
        .command(HERD)
        .args(["group", "list"])
        .env("HERD_SERVER", &b.url)
        .env("HERD_DATA_DIR", &a.data_dir)
        .env("HERD_TOKEN", b.token())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("not signed by the cluster CA this client trusts"), "{err}");
    assert!(err.contains("herd server ca show") && err.contains("--ca-file"), "{err}");
    assert!(err.contains(&a.ca_file().display().to_string()), "names the bundle it trusted: {err}");
    // Pinning b's CA with --ca-file fixes it.
    let out = a
        .command(HERD)
        .args(["group", "list", "--ca-file", b.ca_file().to_str().unwrap()])
        .env("HERD_SERVER", &b.url)
        .env("HERD_DATA_DIR", &a.data_dir)
        .env("HERD_TOKEN", b.token())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn plain_http_only_on_loopback_and_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(HERD)
        .args(["server", "--driver", "sim", "--insecure-http", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("wide"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("--insecure-http is refused on 0.0.0.0:0"), "{err}");
    assert!(!dir.path().join("wide").exists(), "nothing was written before the refusal");

    let mut s = Server::start("sim", &dir.path().join("data"), Some(SIM_CONFIG));
    s.extra_args = vec!["--insecure-http".into()];
    s.rust_log = Some("warn".into());
    s.restart();
    assert!(s.url.starts_with("http://127.0.0.1:"), "{}", s.url);
    assert!(s.log_text().contains("serving plain HTTP (--insecure-http)"), "{}", s.log_text());
    assert_eq!(s.json(&["group", "list"]), serde_json::json!([]));
    let err = s.err(&["server", "rotate-cert"]);
    assert!(err.contains("plain HTTP (--insecure-http)"), "{err}");
}

/// Runs `herd vmss list-instances` `n` times in a thread; reports each finished call on the
/// channel and returns the failures' messages.
fn list_loop(s: &Server, n: usize) -> (std::thread::JoinHandle<Vec<String>>, std::sync::mpsc::Receiver<usize>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let (url, data) = (s.url.clone(), s.data_dir.clone());
    let handle = std::thread::spawn(move || {
        let mut failures = Vec::new();
        for i in 0..n {
            let out = Command::new(HERD)
                .args(["vmss", "list-instances", "-g", "g", "-n", "s"])
                .env("HERD_SERVER", &url)
                .env("HERD_DATA_DIR", &data)
                .env_remove("HERD_TOKEN")
                .env_remove("HERD_CA_FILE")
                .output()
                .unwrap();
            if !out.status.success() {
                failures.push(String::from_utf8_lossy(&out.stderr).to_string());
            }
            let _ = tx.send(i);
        }
        failures
    });
    (handle, rx)
}

fn with_set() -> (tempfile::TempDir, Server) {
    let (d, s) = sim_with_image("g", &["1.0.0"]);
    s.ok(&[
        "vmss",
        "create",
        "-g",
        "g",
        "-n",
        "s",
        "--image",
        "Herd:TestGuest:1:1.0.0",
        "--instance-count",
        "2",
        "--admin-password",
        "correct-horse-battery",
        "--quiet",
    ]);
    (d, s)
}

#[test]
fn rotate_cert_under_a_list_loop_fails_no_call() {
    let (_d, s) = with_set();
    let before = served_fingerprint(&s);
    let (loop_done, progress) = list_loop(&s, 24);
    let mut seen = Vec::new();
    for after in [4, 10, 16] {
        // Rotate once the loop has made `after` calls, so rotations land between and during calls.
        let wait = herd_test_support::scaled(Duration::from_secs(60));
        while progress.recv_timeout(wait).expect("the list loop to make progress") + 1 < after {}
        s.ok(&["server", "rotate-cert"]);
        seen.push(served_fingerprint(&s));
    }
    let failures = loop_done.join().unwrap();
    assert!(failures.is_empty(), "{} of 24 calls failed during rotate-cert:\n{}", failures.len(), failures.join("\n"));
    seen.insert(0, before);
    seen.dedup();
    assert_eq!(seen.len(), 4, "each rotation served a new certificate: {seen:?}");
}

#[test]
fn rotate_ca_keeps_old_and_new_clients_through_the_overlap_then_drops_the_old() {
    let (d, s) = with_set();
    let old = d.path().join("old-ca.pem");
    std::fs::copy(s.ca_file(), &old).unwrap();
    let v = s.json(&["server", "rotate-ca", "--overlap", "6s"]);
    assert!(v["rotation"]["until"].is_string(), "{v}");
    // The new CA alone, as a client that fetched the new bundle would pin it.
    let bundle = std::fs::read_to_string(s.ca_file()).unwrap();
    let first_end = bundle.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----\n".len();
    let new_only = d.path().join("new-ca.pem");
    std::fs::write(&new_only, &bundle[..first_end]).unwrap();
    let list = |ca: &Path| s.herd(&["vmss", "list-instances", "-g", "g", "-n", "s", "--ca-file", ca.to_str().unwrap()]);
    // Through the overlap both clients work (the old one through the cross-signed new CA).
    for ca in [&old, &new_only] {
        let out = list(ca);
        assert!(out.status.success(), "{}: {}", ca.display(), String::from_utf8_lossy(&out.stderr));
    }
    // The overlap ends: the server retires the old CA by itself.
    wait_for("the old CA to be retired", herd_test_support::scaled(Duration::from_secs(60)), || {
        let v = s.json(&["server", "tls"]);
        v["rotation"].is_null().then_some(())
    });
    let out = list(&old);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the old CA is no longer trusted");
    assert!(err.contains("not signed by the cluster CA this client trusts"), "{err}");
    let out = list(&new_only);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The data dir's bundle, which the default client reads, holds only the new CA again.
    assert_eq!(std::fs::read_to_string(s.ca_file()).unwrap(), std::fs::read_to_string(&new_only).unwrap());
}

#[tokio::test]
async fn failed_authentications_are_limited_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start("sim", &dir.path().join("data"), Some(SIM_CONFIG));
    let url = format!("{}/v1/resourceGroups", s.url);
    let from = |ip: &str| s.http().local_address(ip.parse::<std::net::IpAddr>().ok()).build().unwrap();
    let (one, two) = (from("127.0.0.1"), from("127.0.0.2"));
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut retry_after = None;
    for _ in 0..100 {
        let r = one.get(&url).bearer_auth("not-the-token").send().await.unwrap();
        if r.status() == 429 {
            retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
        }
        *statuses.entry(r.status().as_u16()).or_default() += 1;
    }
    assert_eq!(statuses.keys().copied().collect::<Vec<_>>(), vec![401, 429], "{statuses:?}");
    // The first 20 fail as 401; then one more per second at most: most of the rest are 429.
    assert!(statuses[&429] >= 60, "{statuses:?}");
    assert!(retry_after.is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1)), "Retry-After in seconds");
    // The limited address is refused even with the right token until its budget refills;
    // another address is not affected.
    let r = one.get(&url).bearer_auth(s.token()).send().await.unwrap();
    assert_eq!(r.status(), 429, "the limited address is refused before its token is looked at");
    let r = two.get(&url).bearer_auth(s.token()).send().await.unwrap();
    assert_eq!(r.status(), 200, "another address is not affected");
    let r = two.get(&url).bearer_auth("not-the-token").send().await.unwrap();
    assert_eq!(r.status(), 401, "another address gets its own budget");
}

#[test]
fn the_operators_own_certificate_is_served_and_read_again_by_rotate_cert() {
    let dir = tempfile::tempdir().unwrap();
    let now = time::OffsetDateTime::now_utc();
    // The operator's own CA (made here with the same library; any CA would do) and a leaf.
    let ca = herd_tls::ClusterCa::create("operator", now).unwrap();
    let leaf =
        herd_tls::Leaf::Server { names: vec!["localhost".into()], addresses: vec!["127.0.0.1".parse().unwrap()] };
    let (cert, key, ca_file) = (dir.path().join("chain.pem"), dir.path().join("key.pem"), dir.path().join("ca.pem"));
    let write = |issued: herd_tls::Issued| {
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        std::fs::write(&key, &issued.key_pem).unwrap();
    };
    write(ca.issue(&leaf, now).unwrap());
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let mut s = Server::start("sim", &dir.path().join("data"), Some(SIM_CONFIG));
    s.extra_args = vec!["--tls-cert".into(), cert.display().to_string(), "--tls-key".into(), key.display().to_string()];
    s.restart();
    let pinned = ["--ca-file", ca_file.to_str().unwrap()];
    let show = |s: &Server| s.json(&[&["server", "tls"][..], &pinned[..]].concat());
    let first = show(&s);
    assert_eq!(first["mode"], "OperatorCertificate", "{first}");
    assert!(first["caBundle"].is_null(), "no cluster CA is served: {first}");
    // The cluster CA left in the data dir is not the operator's: without --ca-file, refused.
    let err = s.err(&["group", "list"]);
    assert!(err.contains("not signed by the cluster CA this client trusts"), "{err}");
    // New files, then rotate-cert: the next connection sees the new certificate.
    write(ca.issue(&leaf, now).unwrap());
    s.ok(&[&["server", "rotate-cert"][..], &pinned[..]].concat());
    let second = show(&s);
    assert_ne!(first["certificate"]["fingerprint"], second["certificate"]["fingerprint"]);
    let err = s.err(&[&["server", "rotate-ca"][..], &pinned[..]].concat());
    assert!(err.contains("operator's certificate (--tls-cert)"), "{err}");
}
