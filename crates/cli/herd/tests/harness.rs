//! The test harness itself (`tests/common`): what every other test here relies on.

mod common;

use common::*;
use std::time::Duration;

/// The block a server derives from its data dir when its config names none (the FNV-1a hash
/// in `herd server`, low 7 bits), to find two data dirs that would collide.
fn derived_block(data_dir: &std::path::Path) -> u8 {
    (herd_driver::stable_hash(data_dir.to_string_lossy().as_bytes()) as u8) % 128
}

fn reach_address(s: &Server) -> String {
    s.ok(&["group", "create", "-n", "rg"]);
    s.ok(&["image", "import", "--urn", "Herd:T:1:1.0.0", "--dir", s.data_dir.with_extension("img").to_str().unwrap()]);
    s.ok(&["vmss", "create", "-g", "rg", "-n", "web", "--image", "Herd:T:1:1.0.0", "--instance-count", "1", "--quiet"]);
    wait_for("the instance's reach address", Duration::from_secs(30), || {
        let list = s.json(&["vmss", "list-instances", "-g", "rg", "-n", "web"]);
        list[0]["reachAddress"].as_str().filter(|a| !a.is_empty()).map(str::to_string)
    })
}

/// Two servers of one test binary whose data dirs hash to the same address block still get
/// different reach addresses: parallel tests must never share instance addresses (a shared
/// one left `rolling_process` waiting for "every instance healthy" until it timed out).
#[test]
fn parallel_servers_never_share_instance_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("a0");
    let second = (1..10_000)
        .map(|i| dir.path().join(format!("b{i}")))
        .find(|p| derived_block(p) == derived_block(&first))
        .expect("two data dirs with the same derived block");
    let mut addrs = Vec::new();
    let servers: Vec<Server> = [first, second]
        .iter()
        .map(|d| {
            image_dir(&d.with_extension("img"), "exec sleep 3600");
            Server::start("sim", d, Some(SIM_CONFIG))
        })
        .collect();
    for s in &servers {
        addrs.push(reach_address(s));
    }
    assert_ne!(addrs[0], addrs[1], "two servers' first instances share a reach address");
}
