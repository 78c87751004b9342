//! The rig's executor: makes a [`Layout`] real with the kernel's own tools (`ip`, `unshare`,
//! `nsenter`), and takes it down again.
//!
//! ```text
//!   root namespace: only the `herd dev cluster` command and the holders; no link, no address
//!   ┌──────────── herd-N-fabric ─────────────┐
//!   │ fabric0 (bridge)                        │
//!   │  ├─ m-server ── eth0 herd-N-server  .2  │  herd server  (own net, mount, PID, UTS ns)
//!   │  ├─ m-h1 ────── eth0 herd-N-h1     .10  │  herd agent   (own net, mount, PID, UTS ns)
//!   │  └─ m-h2 ────── eth0 herd-N-h2     .11  │  herd agent   …
//!   └─────────────────────────────────────────┘
//! ```
//!
//! Lifecycle of a cluster (the state file under `/run/herd/dev-clusters/` exists from Up on):
//!
//! ```text
//!   (none) ──up──▶ Building ──all hosts Ready──▶ Up ──down──▶ (none)
//!                     │ any step fails
//!                     └──▶ rolled back ──▶ (none)
//! ```
//!
//! A host reboots (`reboot`) within Up: its init and everything under it die, its network is
//! made anew, a new init (a new boot id) and its agent start; the state file records the new
//! init.
//!
//! Each member's PID 1 is `herd dev host-init` (see [`crate::host_init`]); its herd process
//! (server or agent) is entered into the member's namespaces with `nsenter`, so killing the
//! agent leaves the host's instances running, and killing the init takes the whole host down.

use crate::layout::{Layout, Member, Role};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where the state of every rig cluster of this machine is kept.
pub const RUN_DIR: &str = "/run/herd/dev-clusters";

/// A cluster that is up: its layout and how it was started.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    pub layout: Layout,
    /// The server's `--driver`.
    pub driver: String,
    /// Extra `herd server` arguments (`--accel tcg`).
    #[serde(default)]
    pub server_args: Vec<String>,
    /// The `herd` binary every member runs.
    pub herd: PathBuf,
    /// PID (in the root namespace) of each member's `herd dev host-init`, by member name.
    pub inits: std::collections::BTreeMap<String, u32>,
}

/// How `up` should run.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub driver: String,
    pub server_args: Vec<String>,
    /// Appended to the server's config file.
    pub server_config: String,
    /// A zone the server's own machine serves too (none: it takes no instances).
    pub local_zone: Option<String>,
    /// How long to wait for the server to answer and for every host to be Ready.
    pub timeout: Duration,
}

/// Fails with the install hint when a tool the rig needs is missing, or when not root.
pub fn preflight() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("herd dev cluster makes network, mount and PID namespaces: run it as root");
    }
    for (tool, package) in [("ip", "iproute2"), ("unshare", "util-linux"), ("nsenter", "util-linux")] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            bail!("'{tool}' is not installed: apt-get install -y {package}");
        }
    }
    Ok(())
}

/// Runs `program args`, failing with its stderr.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let out =
        Command::new(program).args(args).stdin(Stdio::null()).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The network namespaces that exist, by name.
pub fn netns_list() -> Vec<String> {
    run("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn progress(msg: &str) {
    eprintln!("herd dev cluster: {msg}");
}

impl Cluster {
    /// The state file of cluster `name`.
    pub fn state_path(name: &str) -> PathBuf {
        Layout::state_file(Path::new(RUN_DIR), name)
    }

    /// The cluster `name` that is up, or an error saying it is not.
    pub fn load(name: &str) -> Result<Cluster> {
        crate::layout::check_name(name)?;
        let p = Self::state_path(name);
        let text = std::fs::read_to_string(&p)
            .map_err(|_| anyhow!("no cluster '{name}' is up here ({} does not exist); start one with `herd dev cluster up --name {name}`", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("reading {}", p.display()))
    }

    fn save(&self) -> Result<()> {
        std::fs::create_dir_all(RUN_DIR)?;
        let p = Self::state_path(&self.layout.name);
        let tmp = p.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, &p)?;
        Ok(())
    }

    /// Builds the cluster of `layout` and waits until its server answers and every host is
    /// Ready. On any failure, everything made so far is removed again.
    pub fn up(layout: Layout, opts: &UpOptions) -> Result<Cluster> {
        preflight()?;
        if Self::state_path(&layout.name).exists() {
            bail!(
                "cluster '{}' is already up; take it down first with `herd dev cluster down --name {}`",
                layout.name,
                layout.name
            );
        }
        let existing = netns_list();
        let ours = std::iter::once(&layout.fabric_netns).chain(layout.members.iter().map(|m| &m.netns));
        if let Some(taken) = ours.into_iter().find(|n| existing.contains(n)) {
            bail!("network namespace '{taken}' already exists (a cluster '{}' left behind?): `herd dev cluster down --name {}` removes it", layout.name, layout.name);
        }
        let herd = std::env::current_exe().context("finding the herd binary")?;
        let mut cluster = Cluster {
            layout,
            driver: opts.driver.clone(),
            server_args: opts.server_args.clone(),
            herd,
            inits: Default::default(),
        };
        // From here on the state file exists, so a `down` can always clean up after a crash.
        cluster.save()?;
        match cluster.build(opts) {
            Ok(()) => Ok(cluster),
            Err(e) => {
                progress(&format!("failed ({e:#}); removing what was built"));
                let _ = cluster.down(false);
                Err(e)
            }
        }
    }

    fn build(&mut self, opts: &UpOptions) -> Result<()> {
        let l = self.layout.clone();
        std::fs::create_dir_all(&l.data_dir).with_context(|| format!("creating {}", l.data_dir.display()))?;
        progress(&format!("fabric {} on bridge {} in {}", l.subnet, crate::layout::FABRIC_BRIDGE, l.fabric_netns));
        run("ip", &["netns", "add", &l.fabric_netns])?;
        let fab = l.fabric_netns.as_str();
        run("ip", &["-n", fab, "link", "set", "lo", "up"])?;
        run("ip", &["-n", fab, "link", "add", crate::layout::FABRIC_BRIDGE, "type", "bridge"])?;
        run("ip", &["-n", fab, "link", "set", crate::layout::FABRIC_BRIDGE, "up"])?;
        for m in &l.members {
            self.plug(m, true)?;
            std::fs::create_dir_all(&m.data_dir)?;
            let pid = self.start_init(m, opts.timeout)?;
            self.inits.insert(m.name.clone(), pid);
            self.save()?;
        }
        std::fs::write(
            l.data_dir.join("server.toml"),
            l.server_config(&opts.server_config, opts.local_zone.as_deref()),
        )?;
        let t = Instant::now();
        self.start("server")?;
        self.wait_server(opts.timeout)?;
        progress(&format!("server at {} answers ({:.1} s)", l.server_url(), t.elapsed().as_secs_f64()));
        let token =
            self.client(&["host", "join-token", "create", "--expires", "1h", "--description", "herd dev cluster"])?;
        let token = token["token"].as_str().ok_or_else(|| anyhow!("join-token create returned no token"))?.to_string();
        for m in l.hosts() {
            self.start_agent(m, Some(&token))?;
        }
        let names: Vec<String> = l.hosts().map(|m| m.name.clone()).collect();
        self.wait_hosts_ready(&names, opts.timeout)?;
        progress(&format!("{} host(s) Ready ({:.1} s)", names.len(), t.elapsed().as_secs_f64()));
        Ok(())
    }

    /// Makes `m`'s network namespace and its cable to the fabric bridge (its port `up` or
    /// left down, as a cut cable), with its address: a member's network as at power-on.
    fn plug(&self, m: &Member, up: bool) -> Result<()> {
        let fab = self.layout.fabric_netns.as_str();
        run("ip", &["netns", "add", &m.netns])?;
        run("ip", &["-n", &m.netns, "link", "set", "lo", "up"])?;
        // The cable is made inside the fabric namespace, its other end moved straight into
        // the member's: the root namespace never holds either end.
        run(
            "ip",
            &[
                "-n",
                fab,
                "link",
                "add",
                &m.port,
                "type",
                "veth",
                "peer",
                "name",
                crate::layout::MEMBER_NIC,
                "netns",
                &m.netns,
            ],
        )?;
        let state = if up { "up" } else { "down" };
        run("ip", &["-n", fab, "link", "set", &m.port, "master", crate::layout::FABRIC_BRIDGE, state])?;
        run("ip", &["-n", &m.netns, "addr", "add", &format!("{}/24", m.address), "dev", crate::layout::MEMBER_NIC])?;
        run("ip", &["-n", &m.netns, "link", "set", crate::layout::MEMBER_NIC, "up"])?;
        Ok(())
    }

    /// Starts the member's PID 1 and returns its PID in the root namespace.
    fn start_init(&self, m: &Member, timeout: Duration) -> Result<u32> {
        // Appended to: a reboot's init logs after the last boot's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.layout.data_dir.join(format!("{}.init.log", m.name)))?;
        let mut holder = Command::new("ip")
            .args([
                "netns",
                "exec",
                &m.netns,
                "unshare",
                "--pid",
                "--fork",
                "--mount-proc",
                "--uts",
                "--propagation",
                "private",
                "--",
            ])
            .arg(&self.herd)
            .args(["dev", "host-init", "--hostname", &m.name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting unshare")?;
        let stdout = holder.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line =
            rx.recv_timeout(timeout).map_err(|_| anyhow!("{}'s init did not say ready within {timeout:?}", m.name))?;
        if line.trim() != "ready" {
            let log =
                std::fs::read_to_string(self.layout.data_dir.join(format!("{}.init.log", m.name))).unwrap_or_default();
            bail!("{}'s init failed: {}", m.name, log.trim());
        }
        // `ip netns exec` became unshare; its only child is the init.
        let holder_pid = holder.id();
        let children =
            std::fs::read_to_string(format!("/proc/{holder_pid}/task/{holder_pid}/children")).unwrap_or_default();
        let pid = children.split_whitespace().next().and_then(|p| p.parse().ok());
        pid.ok_or_else(|| anyhow!("cannot find {}'s init under unshare (pid {holder_pid})", m.name))
    }

    fn init_of(&self, member: &str) -> Result<u32> {
        self.layout.member(member)?;
        let pid = *self
            .inits
            .get(member)
            .ok_or_else(|| anyhow!("member '{member}' has no init (the cluster is not fully up)"))?;
        if !is_host_init(pid) {
            bail!("{member}'s init (pid {pid}) is gone: the host is down; `herd dev cluster down` then `up` again");
        }
        Ok(pid)
    }

    /// A command entered into every namespace of `member` (net, mount, UTS, PID), with the
    /// client's environment pointing at the cluster's server.
    pub fn command_in(&self, member: &str, program: &Path, args: &[String]) -> Result<Command> {
        let pid = self.init_of(member)?;
        let mut c = Command::new("nsenter");
        c.args(["-t", &pid.to_string(), "-n", "-m", "-u", "-p", "--"]).arg(program).args(args);
        c.env("HERD_SERVER", self.layout.server_url()).env("HERD_DATA_DIR", &self.layout.server().data_dir);
        Ok(c)
    }

    /// Starts `member`'s herd process (the server, or an agent that has joined before).
    pub fn start(&self, member: &str) -> Result<()> {
        let m = self.layout.member(member)?.clone();
        match m.role {
            Role::Server => self.start_server(&m),
            Role::Agent => self.start_agent(&m, None),
        }
    }

    fn start_server(&self, m: &Member) -> Result<()> {
        if let Some(pid) = self.herd_process(&m.name)? {
            bail!("the server is already running (pid {pid})");
        }
        let mut args: Vec<String> = vec![
            "server".into(),
            "--data-dir".into(),
            m.data_dir.display().to_string(),
            "--listen".into(),
            format!("{}:{}", m.address, crate::layout::SERVER_PORT),
            "--driver".into(),
            self.driver.clone(),
            "--config".into(),
            self.layout.data_dir.join("server.toml").display().to_string(),
        ];
        args.extend(self.server_args.iter().cloned());
        self.spawn_logged(m, &args, None)
    }

    fn start_agent(&self, m: &Member, token: Option<&str>) -> Result<()> {
        if let Some(pid) = self.herd_process(&m.name)? {
            bail!("{}'s agent is already running (pid {pid})", m.name);
        }
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--server".into(),
            self.layout.server_url(),
            "--name".into(),
            m.name.clone(),
            "--zone".into(),
            m.zone.clone().unwrap_or_else(|| "1".into()),
            "--data-dir".into(),
            m.data_dir.display().to_string(),
        ];
        if let Some(fd) = &m.fault_domain {
            args.extend(["--fault-domain".into(), fd.clone()]);
        }
        self.spawn_logged(m, &args, token)
    }

    /// Spawns herd with `args` in `m`'s namespaces, detached, its output appended to
    /// `<data>/<member>.log`. A join token goes in the environment, never on the command line.
    fn spawn_logged(&self, m: &Member, args: &[String], token: Option<&str>) -> Result<()> {
        let log_path = self.layout.data_dir.join(format!("{}.log", m.name));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut c = self.command_in(&m.name, &self.herd, args)?;
        c.env_remove("HERD_DATA_DIR").env_remove("HERD_TOKEN").env_remove("HERD_JOIN_TOKEN");
        if let Some(t) = token {
            c.env("HERD_JOIN_TOKEN", t);
        }
        c.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).process_group(0);
        let mut child = c.spawn().with_context(|| format!("starting {}'s herd", m.name))?;
        // nsenter forks, and its child execs herd: wait until that happened, so the caller
        // can watch the process.
        wait_until(&format!("{}'s herd to start", m.name), Duration::from_secs(20), || {
            if let Some(status) = child.try_wait()? {
                bail!("{}'s herd exited at once ({status}): {}", m.name, tail(&log_path));
            }
            Ok(self.herd_process(&m.name)?.is_some())
        })
    }

    /// Every process in `member`'s PID namespace but its init: (pid in the root namespace,
    /// command line).
    pub fn processes(&self, member: &str) -> Result<Vec<(u32, Vec<String>)>> {
        let init = self.init_of(member)?;
        let ns = std::fs::read_link(format!("/proc/{init}/ns/pid"))?;
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            if pid == init || std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok().as_ref() != Some(&ns) {
                continue;
            }
            let cmd = cmdline(pid);
            if !cmd.is_empty() {
                out.push((pid, cmd));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The member's herd server or agent process, if it runs.
    pub fn herd_process(&self, member: &str) -> Result<Option<u32>> {
        let role = self.layout.member(member)?.role;
        let word = match role {
            Role::Server => "server",
            Role::Agent => "agent",
        };
        let herd = self.herd.display().to_string();
        Ok(self
            .processes(member)?
            .into_iter()
            .find(|(_, c)| c.first() == Some(&herd) && c.get(1).map(String::as_str) == Some(word))
            .map(|(p, _)| p))
    }

    /// Sends `signal` to `member`'s herd process (SIGKILL to crash it, SIGSTOP to freeze it).
    pub fn signal(&self, member: &str, signal: nix::sys::signal::Signal) -> Result<u32> {
        let pid = self.herd_process(member)?.ok_or_else(|| anyhow!("{member}'s herd process is not running"))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)?;
        // The `nsenter` that entered it waits for it outside the member's PID namespace, and
        // stops itself when it sees it stop: it must go on too, or it would never reap the
        // herd process (and a reboot's PID namespace could never empty).
        if signal == nix::sys::signal::Signal::SIGCONT {
            if let Some(parent) = parent_of(pid).filter(|p| cmdline(*p).first().is_some_and(|c| c.ends_with("nsenter")))
            {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(parent as i32), signal);
            }
        }
        if signal == nix::sys::signal::Signal::SIGKILL {
            wait_until(&format!("{member}'s herd (pid {pid}) to exit"), Duration::from_secs(30), || Ok(!alive(pid)))?;
        }
        Ok(pid)
    }

    /// Cuts (`up` false) or restores `member`'s cable to the fabric: its port on the fabric
    /// bridge goes down or up, inside the fabric namespace. Like a pulled cable, nothing is
    /// told: connections across it stall until their peers give up; the member's own
    /// processes and instances go on.
    pub fn link(&self, member: &str, up: bool) -> Result<()> {
        let m = self.layout.member(member)?;
        let fab = self.layout.fabric_netns.as_str();
        run("ip", &["-n", fab, "link", "set", &m.port, if up { "up" } else { "down" }])?;
        Ok(())
    }

    /// Whether `member`'s cable is plugged in (its fabric port administratively up).
    pub fn cable_up(&self, member: &str) -> Result<bool> {
        let m = self.layout.member(member)?;
        let out = run("ip", &["-n", &self.layout.fabric_netns, "-o", "link", "show", "dev", &m.port])?;
        let flags = out.split_once('<').and_then(|(_, r)| r.split_once('>')).map(|(f, _)| f).unwrap_or_default();
        Ok(flags.split(',').any(|f| f == "UP"))
    }

    /// `member`'s boot id, as its processes read it (see [`crate::host_init`]).
    pub fn boot_id(&self, member: &str) -> Result<String> {
        let init = self.init_of(member)?;
        let p = format!("/proc/{init}/root{}", crate::host_init::BOOT_ID);
        Ok(std::fs::read_to_string(&p).with_context(|| format!("reading {member}'s boot id ({p})"))?.trim().to_string())
    }

    /// Reboots host `member`, as a power cycle would: its init is killed, and the kernel kills
    /// every other process of its PID namespace with it (agent, QEMUs, process instances); its
    /// network is made anew as at power-on (its namespace and cable deleted and created again,
    /// so its bridges, TAPs and nftables tables are gone; a cut cable stays cut); then a new
    /// init starts (a new boot id, a fresh `/run/herd`) and the agent with the identity in its
    /// data dir. The data dir is the host's disk: it stays. With `wait`, until the new agent
    /// has linked and the host is Ready (the server may still show it Ready from before the
    /// reboot, so the link comes first). Returns the new boot id.
    pub fn reboot(&mut self, member: &str, wait: bool, timeout: Duration) -> Result<String> {
        let m = self.layout.member(member)?.clone();
        if m.role != Role::Agent {
            bail!("only a host reboots ('{member}' is the server: `signal server --signal kill`, then `start server`)");
        }
        let init = self.init_of(member)?;
        let t = Instant::now();
        let log = self.layout.data_dir.join(format!("{member}.log"));
        let log_from = std::fs::metadata(&log).map(|m| m.len() as usize).unwrap_or(0);
        let was = self.boot_id(member).unwrap_or_default();
        let plugged = self.cable_up(member)?;
        progress(&format!("{member}: power off (init pid {init}, boot id {was}, and every process of the host)"));
        // The init, and every process in the host's network namespace: the holders outside its
        // PID namespace too (`unshare`, and the `nsenter` waiting for the agent), which could
        // otherwise keep a dead agent unreaped and the namespace from emptying.
        let kill_all = || {
            let mut pids: Vec<u32> = run("ip", &["netns", "pids", &m.netns])
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect();
            let left = pids.len();
            // Checked each time, so a reused PID is never killed.
            if is_host_init(init) {
                pids.push(init);
            }
            for pid in &pids {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), nix::sys::signal::Signal::SIGKILL);
            }
            left
        };
        kill_all();
        wait_until(&format!("{member}'s processes to exit"), timeout, || Ok(kill_all() == 0 && !is_host_init(init)))?;
        let cut = if plugged { "" } else { "; its cable stays cut" };
        progress(&format!("{member}: network reset (namespace {} and its cable made anew{cut})", m.netns));
        // The cable goes first, both ends at once: the namespace itself may outlive its
        // processes for a while (the kernel keeps it for sockets still closing, such as a
        // connection whose FIN is retransmitted through a cut cable), and the new cable needs
        // the old one's name.
        let fab = self.layout.fabric_netns.clone();
        let _ = run("ip", &["-n", &fab, "link", "del", &m.port]);
        run("ip", &["netns", "del", &m.netns])?;
        wait_until(&format!("{member}'s old cable ({}) to go", m.port), timeout, || {
            Ok(run("ip", &["-n", &fab, "link", "show", "dev", &m.port]).is_err())
        })?;
        self.plug(&m, plugged)?;
        let pid = self.start_init(&m, timeout)?;
        self.inits.insert(m.name.clone(), pid);
        self.save()?;
        let now = self.boot_id(member)?;
        if now == was {
            bail!("{member} booted with its old boot id {now}");
        }
        progress(&format!("{member}: booted (init pid {pid}, boot id {now})"));
        self.start_agent(&m, None)?;
        progress(&format!("{member}: agent started ({:.1} s after power off)", t.elapsed().as_secs_f64()));
        if wait {
            wait_until(&format!("{member}'s new agent to link"), timeout, || {
                let text = std::fs::read(&log).unwrap_or_default();
                Ok(String::from_utf8_lossy(text.get(log_from..).unwrap_or_default()).contains("linked to the server"))
            })?;
            self.wait_hosts_ready(std::slice::from_ref(&m.name), timeout)?;
            progress(&format!("{member}: Ready ({:.1} s after power off)", t.elapsed().as_secs_f64()));
        }
        Ok(now)
    }

    /// Runs a herd client command against the cluster's server, from the server's namespace;
    /// its JSON output.
    pub fn client(&self, args: &[&str]) -> Result<serde_json::Value> {
        let s = self.layout.server();
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", s.netns))
            .arg("--")
            .arg(&self.herd)
            .args(["--server", &self.layout.server_url(), "--token-dir"])
            .arg(&s.data_dir)
            .args(args)
            .args(["--output", "json"])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!("herd {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("herd {}: not JSON: {text}", args.join(" ")))
    }

    /// Waits until the server answers API calls.
    pub fn wait_server(&self, timeout: Duration) -> Result<()> {
        let log = self.layout.data_dir.join("server.log");
        let mut last = String::new();
        wait_until("the server to answer", timeout, || {
            if self.herd_process("server").ok().flatten().is_none() {
                return Err(anyhow!("the server exited: {}", tail(&log)));
            }
            match self.client(&["host", "list"]) {
                Ok(_) => Ok(true),
                Err(e) => {
                    last = e.to_string();
                    Ok(false)
                }
            }
        })
        .map_err(|e| anyhow!("{e}; last answer: {last}"))
    }

    /// Waits until every host in `names` is Ready.
    pub fn wait_hosts_ready(&self, names: &[String], timeout: Duration) -> Result<()> {
        let mut seen = serde_json::Value::Null;
        wait_until(&format!("hosts {} to be Ready", names.join(", ")), timeout, || {
            for n in names {
                if self.herd_process(n).ok().flatten().is_none() {
                    return Err(anyhow!(
                        "{n}'s agent exited: {}",
                        tail(&self.layout.data_dir.join(format!("{n}.log")))
                    ));
                }
            }
            seen = self.client(&["host", "list"]).unwrap_or_default();
            let ready = |n: &String| {
                seen.as_array().into_iter().flatten().any(|h| h["name"] == n.as_str() && h["state"] == "Ready")
            };
            Ok(names.iter().all(ready))
        })
        .map_err(|e| anyhow!("{e}; hosts: {seen}"))
    }

    /// Removes everything of this cluster: its processes (every member's PID namespace dies
    /// with its init), its namespaces, its state file, and its data unless `keep_data`.
    pub fn down(&self, keep_data: bool) -> Result<()> {
        teardown(&self.layout.name, &self.inits, Some(&self.layout), keep_data)
    }
}

/// Takes cluster `name` down from whatever is left of it: its recorded inits, else every
/// namespace named after it.
pub fn down_by_name(name: &str, keep_data: bool) -> Result<()> {
    crate::layout::check_name(name)?;
    match Cluster::load(name) {
        Ok(c) => c.down(keep_data),
        Err(_) => {
            let prefix = format!("herd-{name}-");
            if !netns_list().iter().any(|n| n.starts_with(&prefix)) {
                bail!("no cluster '{name}' is up here (no state file, no namespace named {prefix}*)");
            }
            teardown(name, &Default::default(), None, true)
        }
    }
}

fn teardown(
    name: &str,
    inits: &std::collections::BTreeMap<String, u32>,
    layout: Option<&Layout>,
    keep_data: bool,
) -> Result<()> {
    let prefix = format!("herd-{name}-");
    let ours: Vec<String> = netns_list().into_iter().filter(|n| n.starts_with(&prefix)).collect();
    // Every process left in the cluster's namespaces: the inits (whose PID namespaces take
    // every herd, QEMU and instance with them), and anything run there with `ip netns exec`.
    let mut victims: Vec<u32> = inits.values().copied().filter(|p| is_host_init(*p)).collect();
    for ns in &ours {
        victims.extend(
            run("ip", &["netns", "pids", ns])
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    victims.sort();
    victims.dedup();
    for pid in &victims {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), nix::sys::signal::Signal::SIGKILL);
    }
    wait_until(&format!("cluster {name}'s processes to exit"), Duration::from_secs(60), || {
        let left: Vec<u32> = ours
            .iter()
            .flat_map(|ns| {
                run("ip", &["netns", "pids", ns])
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        for pid in &left {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
        Ok(left.is_empty() && victims.iter().all(|p| !alive(*p)))
    })?;
    // Members first, the fabric last: deleting a member's namespace takes its cable with it.
    let mut order = ours.clone();
    order.sort_by_key(|n| n.ends_with("-fabric"));
    for ns in &order {
        run("ip", &["netns", "del", ns])?;
    }
    let _ = std::fs::remove_file(Cluster::state_path(name));
    if let (false, Some(l)) = (keep_data, layout) {
        if l.data_dir.exists() {
            std::fs::remove_dir_all(&l.data_dir).with_context(|| format!("removing {}", l.data_dir.display()))?;
        }
    }
    progress(&format!("cluster '{name}' is down ({} namespaces removed)", order.len()));
    Ok(())
}

/// Polls `f` until it says true, it fails, or `timeout` passes (then the error names `what`).
fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let t = Instant::now();
    loop {
        if f()? {
            return Ok(());
        }
        if t.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn alive(pid: u32) -> bool {
    // A zombie is dead for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|st| st != "Z" && st != "X")
    })
}

/// The parent of `pid` (as the root namespace sees it).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` is (still) a rig host's init, so a reused PID is never killed.
fn is_host_init(pid: u32) -> bool {
    alive(pid) && {
        let c = cmdline(pid);
        c.len() >= 3 && c[1] == "dev" && c[2] == "host-init"
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
