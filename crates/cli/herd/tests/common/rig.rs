//! A `herd dev cluster` for a test: built with the real CLI, taken down (every namespace and
//! process) when dropped.

use super::{wait_observing, HERD};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

pub struct Rig {
    pub name: String,
    pub data_dir: PathBuf,
    _dir: tempfile::TempDir,
    up: bool,
}

impl Rig {
    /// `herd dev cluster up --name NAME ARGS…` in a temporary data dir, `server_config` as the
    /// extra server settings. Panics with the rig's output when it fails.
    pub fn up(name: &str, args: &[&str], server_config: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("cluster");
        let cfg = dir.path().join("extra.toml");
        std::fs::write(&cfg, server_config).unwrap();
        let out = Command::new(HERD)
            .args(["dev", "cluster", "up", "--name", name, "--data-dir"])
            .arg(&data_dir)
            .arg("--server-config")
            .arg(&cfg)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "herd dev cluster up failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Rig { name: name.into(), data_dir, _dir: dir, up: true }
    }

    /// A rig name unique to this test process and `tag` (namespaces are per kernel).
    pub fn unique(tag: &str) -> String {
        format!("{tag}{}", std::process::id() % 100_000)
    }

    fn dev(&self, args: &[&str]) -> Output {
        Command::new(HERD).args(["dev", "cluster"]).args(args).args(["--name", &self.name]).output().unwrap()
    }

    fn ok_dev(&self, args: &[&str]) -> String {
        let out = self.dev(args);
        assert!(out.status.success(), "herd dev cluster {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `cmd` inside `member`'s namespaces (`herd` is this build's binary).
    pub fn exec(&self, member: &str, cmd: &[&str]) -> Output {
        Command::new(HERD)
            .args(["dev", "cluster", "exec", "--name", &self.name, "--on", member, "--"])
            .args(cmd)
            .output()
            .unwrap()
    }

    /// `herd ARGS -o json` against the cluster's server; panics with stderr on failure.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut cmd = vec!["herd"];
        cmd.extend(args);
        cmd.extend(["-o", "json"]);
        let out = self.exec("server", &cmd);
        assert!(out.status.success(), "herd {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("herd {args:?}: {e}: {text}"))
        }
    }

    /// `herd ARGS` that must fail; its stderr.
    pub fn err(&self, args: &[&str]) -> String {
        let mut cmd = vec!["herd"];
        cmd.extend(args);
        let out = self.exec("server", &cmd);
        assert!(!out.status.success(), "herd {args:?} should fail: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.ok_dev(&["status", "-o", "json"])).unwrap()
    }

    /// Sends `signal` (kill, stop, cont) to `member`'s herd process.
    pub fn signal(&self, member: &str, signal: &str) {
        self.ok_dev(&["signal", member, "--signal", signal]);
    }

    /// Starts `member`'s herd again and waits until it serves.
    pub fn start(&self, member: &str) {
        self.ok_dev(&["start", member, "--wait"]);
    }

    /// Cuts (`up` false) or restores `member`'s cable to the fabric.
    pub fn link(&self, member: &str, up: bool) {
        self.ok_dev(&["link", "--member", member, if up { "up" } else { "down" }]);
    }

    /// Reboots host `member` (`herd dev cluster reboot`: every process of it dies, its network
    /// is made anew, a cut cable stays cut, its agent starts again); does not wait for Ready.
    /// Returns the new boot id.
    pub fn reboot(&self, member: &str) -> String {
        self.ok_dev(&["reboot", "--member", member]);
        let status = self.status();
        let m = status["members"].as_array().unwrap().iter().find(|m| m["name"] == member).cloned();
        m.and_then(|m| m["bootId"].as_str().map(String::from)).unwrap_or_else(|| panic!("{member}'s boot id: {status}"))
    }

    /// Every process of `member` (its PID namespace) whose command line contains `needle`:
    /// pids as the member sees them.
    pub fn pids(&self, member: &str, needle: &str) -> Vec<u32> {
        let out = self.exec(member, &["ps", "-e", "-o", "pid=,args="]);
        assert!(out.status.success(), "ps on {member}: {}", String::from_utf8_lossy(&out.stderr));
        let mut v: Vec<u32> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(needle) && !l.contains("ps -e"))
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        v.sort();
        v
    }

    /// In resource group `rg` (made by the caller): vnet `vnet1` (10.0.0.0/16) with subnet
    /// `web` (10.0.0.0/24), and load balancer `web-lb` (frontend `web-lb-ip`) with an HTTP
    /// probe `webprobe` on 8080 every second (threshold 2) and a rule `http` from 18080 to 8080.
    pub fn subnet_and_lb(&self) {
        let lb = ["-g", "rg", "--lb-name", "web-lb"];
        let steps: [Vec<&str>; 5] = [
            vec!["network", "vnet", "create", "-g", "rg", "-n", "vnet1", "--address-prefix", "10.0.0.0/16"],
            vec![
                "network",
                "vnet",
                "subnet",
                "create",
                "-g",
                "rg",
                "--vnet-name",
                "vnet1",
                "-n",
                "web",
                "--address-prefixes",
                "10.0.0.0/24",
            ],
            vec!["network", "lb", "create", "-g", "rg", "-n", "web-lb", "--public-ip-address", "web-lb-ip"],
            [
                &["network", "lb", "probe", "create"][..],
                &lb,
                &[
                    "-n",
                    "webprobe",
                    "--protocol",
                    "Http",
                    "--path",
                    "/",
                    "--port",
                    "8080",
                    "--interval",
                    "1",
                    "--threshold",
                    "2",
                ],
            ]
            .concat(),
            [
                &["network", "lb", "rule", "create"][..],
                &lb,
                &["-n", "http", "--frontend-port", "18080", "--backend-port", "8080", "--probe-name", "webprobe"],
            ]
            .concat(),
        ];
        for args in steps {
            self.json(&args);
        }
    }

    /// In a new resource group `rg`: the test guest `tg` imported as `Herd:TestGuest:1:1.0.0`,
    /// [`Rig::subnet_and_lb`], and scale set `web` of `count` TCG VMs (`Standard_B1ls`,
    /// Manual upgrades, no overprovisioning) in `zones`, behind `web-lb`, plus `extra`
    /// arguments; does not wait.
    pub fn testguest_web(&self, tg: &Path, count: &str, zones: &[&str], extra: &[&str]) {
        self.json(&["group", "create", "-n", "rg", "-l", "local"]);
        let import = super::testguest_import_args(tg, "Herd:TestGuest:1:1.0.0");
        self.json(&import.iter().map(String::as_str).collect::<Vec<_>>());
        self.subnet_and_lb();
        let mut args = vec![
            "vmss",
            "create",
            "-g",
            "rg",
            "-n",
            "web",
            "--image",
            "Herd:TestGuest:1:1.0.0",
            "--vm-sku",
            "Standard_B1ls",
            "--instance-count",
            count,
            "--vnet-name",
            "vnet1",
            "--subnet",
            "web",
            "--lb",
            "web-lb",
            "--upgrade-policy-mode",
            "Manual",
            "--disable-overprovision",
            "--no-wait",
            "--zones",
        ];
        args.extend(zones);
        args.extend(extra);
        self.json(&args);
    }

    /// Sets set `web`'s Custom Script to `script` and runs it on instances `ids` (`*`: all),
    /// in place; with `wait`, until the update is done (else it returns at once).
    pub fn custom_script(&self, script: &str, ids: &[&str], wait: bool) {
        let settings = serde_json::json!({ "commandToExecute": script }).to_string();
        self.json(&[
            "vmss",
            "extension",
            "set",
            "-g",
            "rg",
            "--vmss-name",
            "web",
            "--name",
            "CustomScript",
            "--publisher",
            "Microsoft.Azure.Extensions",
            "--version",
            "2.0",
            "--settings",
            &settings,
        ]);
        let mut args = vec!["vmss", "update-instances", "-g", "rg", "-n", "web"];
        args.push(if wait { "--timeout" } else { "--no-wait" });
        if wait {
            args.push("900");
        }
        args.push("--instance-ids");
        args.extend(ids);
        self.json(&args);
    }

    /// The addresses `web-lb`'s pool has in rotation.
    pub fn in_rotation(&self) -> std::collections::BTreeSet<String> {
        let pool = self.json(&[
            "network",
            "lb",
            "address-pool",
            "show",
            "-g",
            "rg",
            "--lb-name",
            "web-lb",
            "-n",
            "web-lbBEPool",
        ]);
        pool["members"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter(|m| m["inRotation"] == true)
                    .filter_map(|m| m["reachAddress"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The network namespace of `member` (under /run/netns).
    pub fn netns(&self, member: &str) -> String {
        format!("herd-{}-{member}", self.name)
    }

    /// The address of `web-lb`'s frontend (`web-lb-ip`, see [`Rig::subnet_and_lb`]).
    pub fn frontend(&self) -> String {
        let ip = self.json(&["network", "public-ip", "show", "-g", "rg", "-n", "web-lb-ip"]);
        ip["ipAddress"].as_str().expect("the frontend's address").to_string()
    }

    /// The instance keys (`group/set/id`) of the QEMU processes running on `member`, from
    /// each one's `-name herd:<tag>:<key>` marker.
    pub fn qemu_keys(&self, member: &str) -> std::collections::BTreeSet<String> {
        let out = self.exec(member, &["ps", "-e", "-ww", "-o", "args="]);
        assert!(out.status.success(), "ps on {member}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("qemu-system") || l.contains("/qemu-system"))
            .filter_map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                let name = words.windows(2).find(|w| w[0] == "-name")?[1];
                name.strip_prefix("herd:")?.split_once(':').map(|(_, key)| key.to_string())
            })
            .collect()
    }

    /// The name of `member`'s lease table (`herd_<hash>_lease`, bridge family).
    pub fn lease_table(&self, member: &str) -> String {
        let out = self.exec(member, &["nft", "list", "tables"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("table bridge ").filter(|t| t.ends_with("_lease")).map(str::to_string))
            .unwrap_or_else(|| panic!("no lease table on {member}"))
    }

    /// `member`'s lease table: the ports in the set `leased` and the packets its `leased`
    /// rules counted (both directions, every instance port).
    pub fn lease_state(&self, member: &str, table: &str) -> (Vec<String>, u64) {
        let out = self.exec(member, &["nft", "list", "table", "bridge", table]);
        assert!(out.status.success(), "nft on {member}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let allowed = text
            .lines()
            .filter(|l| l.contains("comment \"leased\""))
            .filter_map(|l| l.split("packets ").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        let elements = text.split("elements = {").nth(1).and_then(|t| t.split('}').next()).unwrap_or_default();
        let ports = elements
            .split(',')
            .filter_map(|e| e.split_whitespace().next())
            .map(|p| p.trim_matches('"').to_string())
            .filter(|p| !p.is_empty())
            .collect();
        (ports, allowed)
    }

    /// The member's data dir.
    pub fn member_dir(&self, member: &str) -> PathBuf {
        self.data_dir.join(member)
    }

    /// Waits until `host` has `state` in `herd host list`.
    pub fn wait_host(&self, host: &str, state: &str, within: Duration) {
        wait_observing(&format!("host {host} to be {state}"), within, || {
            let list = self.json(&["host", "list"]);
            let h = list.as_array().unwrap().iter().find(|h| h["name"] == host).cloned();
            match h {
                Some(h) if h["state"] == state => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
    }

    /// Takes the rig down now (and checks nothing of it is left).
    pub fn down(mut self) {
        self.up = false;
        self.ok_dev(&["down"]);
        assert_gone(&self.name, &self.data_dir);
    }
}

/// Nothing of rig `name` is left: no namespace, no state file, no data dir.
pub fn assert_gone(name: &str, data_dir: &Path) {
    let ns = String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).into_owned();
    assert!(!ns.contains(&format!("herd-{name}-")), "namespaces of {name} left: {ns}");
    assert!(!Path::new(&format!("/run/herd/dev-clusters/{name}.json")).exists());
    assert!(!data_dir.exists(), "{} is left", data_dir.display());
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The members' logs go with the data dir: show their ends first.
            for e in std::fs::read_dir(&self.data_dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    eprintln!(
                        "--- {} (last 40 lines)\n{}",
                        p.display(),
                        lines[lines.len().saturating_sub(40)..].join("\n")
                    );
                }
            }
        }
        if self.up {
            let _ = self.dev(&["down"]);
        }
    }
}
