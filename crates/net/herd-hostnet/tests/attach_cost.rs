//! What a public IP adds to plugging an instance in: `attach` of 100 instances on one segment,
//! with and without a public address each, alternating, three rounds, inside a network
//! namespace this test creates. A measurement (ignored by default; run it through
//! `/work/quiet.sh` or on an idle machine):
//!
//! ```sh
//! cargo test -p herd-hostnet --test attach_cost -- --ignored --nocapture
//! ```
//!
//! It fails if a public IP makes an attach cost more than the issue's bridging budget (20 ms
//! per instance): every attach rewriting the whole NAT table did (25–36 ms at 100 instances).

use herd_driver::NetworkAttachment;
use herd_hostnet::{HostNet, Reservation};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Instant;

/// Deletes the namespace at the end (with every interface and the tables in it), after killing
/// what runs in it (the segment's dnsmasq).
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let pids = Command::new("ip").args(["netns", "pids", &self.0]).output().map(|o| o.stdout).unwrap_or_default();
        for pid in String::from_utf8_lossy(&pids).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
#[ignore = "a measurement: run with --ignored on a quiet machine"]
fn a_public_ip_adds_little_to_an_attach() {
    assert!(nix::unistd::geteuid().is_root(), "namespaces and nftables need root");
    let ns = Netns(format!("hnac{}", std::process::id()));
    assert!(Command::new("ip").args(["netns", "add", &ns.0]).status().unwrap().success());
    let root = tempfile::tempdir().unwrap();
    // dnsmasq reads its files as `nobody`.
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (base, name) = (root.path().to_path_buf(), ns.0.clone());
    let results = std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let n = 100u32;
        let mut results: Vec<(bool, f64)> = Vec::new();
        for round in 0..3 {
            for public in [false, true] {
                let net = HostNet::new(base.join(format!("r{round}{public}")));
                let t0 = Instant::now();
                for i in 0..n {
                    let att = NetworkAttachment {
                        bridge: "hbcost0".into(),
                        gateway: "10.77.0.1".parse().unwrap(),
                        prefix_len: 24,
                        address: format!("10.77.0.{}", 4 + i).parse().unwrap(),
                        mtu: 1500,
                        vnet: "hzcost".into(),
                        outbound: true,
                        public_address: public.then(|| format!("198.51.100.{}", 1 + i).parse().unwrap()),
                        public_idle_timeout_minutes: None,
                    };
                    let (owner, mac, port) =
                        (format!("rg/web/{i}"), format!("52:54:00:77:00:{i:02x}"), format!("hvc{i}"));
                    let name = format!("web{i}");
                    net.attach(&att, &Reservation { owner: &owner, mac: &mac, name: &name, port: &port }).unwrap();
                }
                let per = t0.elapsed().as_secs_f64() * 1000.0 / f64::from(n);
                println!("round {round}: public={public} {per:.2} ms per attach");
                results.push((public, per));
                for i in 0..n {
                    net.detach(&format!("rg/web/{i}")).unwrap();
                }
            }
        }
        results
    })
    .join()
    .unwrap();
    let median = |public: bool| {
        let mut v: Vec<f64> = results.iter().filter(|r| r.0 == public).map(|r| r.1).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (without, with) = (median(false), median(true));
    println!("median: {without:.2} ms without a public IP, {with:.2} ms with one (+{:.2} ms)", with - without);
    assert!(with - without < 20.0, "a public IP costs {:.2} ms more per attach", with - without);
}
