//! The user guide's first example, run as written: `images/sample-process` imported, a scale set
//! created from it on the process driver, and its instances answering HTTP. The guide's command
//! block is read from docs/user-guide.md, so the guide and this test cannot drift apart.

mod common;

use common::*;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..").canonicalize().unwrap()
}

/// The commands of the first `sh` block under "## A first scale set", continuation lines joined.
fn first_example() -> Vec<String> {
    sh_block("docs/user-guide.md", "## A first scale set")
}

/// The commands of the first `sh` block under `heading` in `file`, continuation lines joined.
fn sh_block(file: &str, heading: &str) -> Vec<String> {
    let guide = std::fs::read_to_string(repo().join(file)).unwrap();
    let section = &guide[guide.find(heading).unwrap_or_else(|| panic!("{file} has no '{heading}'"))..];
    let block = &section[section.find("```sh\n").expect("an sh block") + 6..];
    let block = &block[..block.find("```").unwrap()];
    block.replace("\\\n", " ").lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect()
}

/// A server config with its own block of instance addresses: both tests serve port 8080 on
/// their instances' addresses, and the block a data dir hashes to may be another's.
fn block(n: u8) -> String {
    format!("[network]\nhost_local_block = {n}\n")
}

/// GET http://addr:port/ ; the body of a 200, else why not.
fn get(addr: &str, port: u16) -> Result<String, String> {
    let mut s = std::net::TcpStream::connect_timeout(
        &format!("{addr}:{port}").parse().map_err(|e| format!("{addr}: {e}"))?,
        Duration::from_secs(3),
    )
    .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    write!(s, "GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    if out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200") {
        Ok(out)
    } else {
        Err(out.lines().next().unwrap_or("no answer").to_string())
    }
}

#[test]
fn the_guides_first_example_runs_as_written_on_the_sample_image() {
    let sample = repo().join("images/sample-process/init");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sample).unwrap().permissions());
    assert!(mode & 0o111 != 0, "{} must be executable", sample.display());
    for tool in ["python3", "curl"] {
        let found = std::process::Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().unwrap();
        assert!(found.status.success(), "{tool} is missing: apt-get install {tool}");
    }

    let commands = first_example();
    assert_eq!(
        commands.first().map(String::as_str),
        Some("herd server --driver process & # listens on 127.0.0.1:7900; data dir: see below"),
        "the guide starts the server with the defaults; this test runs it on a free port and a temporary data dir"
    );
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start("process", &dir.path().join("data"), Some(&block(121)));
    let run = |cmd: &str| s.shell(cmd, &repo());
    let mut page = None;
    for cmd in &commands[1..] {
        if cmd.starts_with("curl ") {
            // The instance runs; its server may still be starting: poll the guide's own command.
            page = Some(wait_for(&format!("`{cmd}` to print the sample page"), Duration::from_secs(60), || {
                let out = run(&format!("{cmd} --fail --silent --show-error"));
                out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
            }));
            continue;
        }
        let out = run(cmd);
        assert!(
            out.status.success(),
            "the guide's `{cmd}` failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let page = page.expect("the example ends with a curl of an instance");
    assert!(page.contains("Hello from webscales"), "{page}");

    // Every instance of the set serves the page, naming itself.
    let instances = s.json(&["vmss", "list-instances", "-g", "web-rg", "-n", "webscaleset"]);
    let instances = instances.as_array().unwrap();
    assert_eq!(instances.len(), 3, "{instances:?}");
    for i in instances {
        let (addr, name) = (i["reachAddress"].as_str().unwrap(), i["computerName"].as_str().unwrap());
        let body = wait_for(&format!("{name} to answer on http://{addr}:8080/"), Duration::from_secs(60), || {
            get(addr, 8080).ok()
        });
        assert!(body.contains(&format!("Hello from {name} (instance {}", i["instanceId"].as_str().unwrap())), "{body}");
    }
}

#[test]
fn the_readmes_use_it_commands_run_as_written() {
    let commands = sh_block("README.md", "## Use it");
    assert!(commands[0].starts_with("cargo install --locked --path crates/cli/herd "), "{commands:?}");
    assert!(commands[1].starts_with("herd server --driver process &"), "{commands:?}");
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start("process", &dir.path().join("data"), Some(&block(122)));
    for cmd in &commands[2..] {
        let out = s.shell(cmd, &repo());
        assert!(
            out.status.success(),
            "the README's `{cmd}` failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let instances = s.json(&["vmss", "list-instances", "-g", "web-rg", "-n", "web"]);
    for i in instances.as_array().unwrap() {
        let (addr, name) = (i["reachAddress"].as_str().unwrap(), i["computerName"].as_str().unwrap());
        let body = wait_for(&format!("{name} to answer on http://{addr}:8080/"), Duration::from_secs(60), || {
            get(addr, 8080).ok()
        });
        assert!(body.contains(&format!("Hello from {name}")), "{body}");
    }
}
