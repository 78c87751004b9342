//! `herd bench vm-net`: TCP throughput from one VM to another over herd's bridge, next to two
//! hand-run QEMUs on a hand-made bridge.
//!
//! Inside a network namespace it creates (see [`super::isolated`]):
//!
//! - **herd**: the real server on the qemu driver with `[network] mode = "bridged"`, a vnet,
//!   and a set of two TCG VMs of the test guest (`images/testguest`) on its subnet: each NIC
//!   is a TAP on the subnet's bridge, with herd's anti-spoofing and NSG tables in nftables, the
//!   address from herd's dnsmasq;
//! - **the peer**: a bridge with two TAPs made by hand in the same namespace (`ip link add type
//!   bridge`, `ip tuntap add`: no nftables, no dnsmasq), and two QEMUs started with **herd's
//!   exact QEMU argv**, read from `/proc/<pid>/cmdline` of herd's two running VMs, with only
//!   what must differ changed ([`peer_argv`]): the instance directory's paths (its own OS disk,
//!   seed, console, log and pid file), the sockets, the TAP name, the MAC and the `-name`
//!   marker (so herd's driver never takes a peer for one of its VMs). So a difference between
//!   the pairs is the network herd builds or herd's process, not a QEMU option. The peers'
//!   addresses are set through the guest agent, as there is no DHCP server on a hand-made
//!   bridge.
//!
//! **The transfer.** The test guest has busybox and no iperf3, and a program of ours would have
//! to be carried into the initramfs, so the transfer is busybox's own `nc` and `dd`, the same in
//! both pairs: the receiver is `nc -l -p 5001 -e sh -c '<uptime>; dd of=/dev/null bs=64k
//! iflag=fullblock; <uptime>'` (dd reads the socket itself: no pipe, no `wc`), the sender
//! `nc <receiver> 5001 -e dd if=/dev/zero bs=64k count=N`. The receiver's clock
//! (`/proc/uptime`, 10 ms steps) times from the accepted connection to the sender's close, and
//! its `dd` must count all N blocks, so a cut transfer fails instead of looking fast. N comes
//! from a first, unreported transfer on herd's pair, sized so that a transfer takes about
//! `--seconds`; every measured transfer moves the same N blocks.
//!
//! Both commands run through the guest agent (`guest-exec`), whose connection is dropped while
//! the transfer runs (so herd's own agent calls are not blocked); the bench polls for the end.
//! Runs alternate which pair goes first (ABBA). All four VMs stay up throughout, so the idle
//! pair's timer ticks cost both sides alike.

use super::{nic_on, put_vnet, Interrupt, Leftovers};
use crate::lb::isolate;
use crate::lb::load::Spread;
use crate::qemu::{chardev_path, marker_key, qemu_processes, Guest, KillQemus, QGA_CHARDEV};
use crate::{Driver, Launch, ServerSpec};
use anyhow::{anyhow, bail, Context, Result};
use herd_client::set_path;
use herd_driver_qemu::qga::{GuestCommand, Qga};
use herd_driver_qemu::seed::{self, SeedFiles, UserDataInput};
use herd_model::sku::SkuTable;
use serde::Serialize;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Issue 19's goal: herd's throughput at least this share of the peer's.
pub const GOAL_RATIO: f64 = 0.95;
const GROUP: &str = "bench";
const SET: &str = "vmnet";
pub(crate) const IMAGE_URN: &str = "Herd:TestGuest:1:1.0.0";
const PORT: u16 = 5001;
pub(crate) const BLOCK: u64 = 65536;
/// The calibration transfer (and warm-up): 128 MiB.
pub(crate) const CALIBRATION_BLOCKS: u64 = 2048;
pub(crate) const BOOT: Duration = Duration::from_secs(300);
const AGENT: Duration = Duration::from_secs(60);
/// How often the bench asks the receiver's agent whether the transfer ended.
const POLL: Duration = Duration::from_millis(500);
/// The peer's hand-made network (herd's subnet is 10.0.0.0/24).
const PEER_BRIDGE: &str = "peerbr0";
const PEER_GATEWAY: &str = "10.1.0.1/24";
const PEER_IPS: [&str; 2] = ["10.1.0.4", "10.1.0.5"];

/// What `herd bench vm-net` was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// About how long each transfer takes.
    pub seconds: u64,
    pub runs: u32,
    /// VM size of all four VMs.
    pub sku: String,
    /// The test guest build (`OUT` or `OUT/1.0.0`).
    pub testguest: PathBuf,
    pub inside: bool,
}

impl Options {
    pub fn inner_args(&self) -> Vec<String> {
        let mut a: Vec<String> =
            ["bench", "vm-net", "--seconds", &self.seconds.to_string()].into_iter().map(String::from).collect();
        a.extend(["--runs".into(), self.runs.to_string(), "--sku".into(), self.sku.clone()]);
        a.extend(["--testguest".into(), self.testguest.display().to_string(), "--inside".into()]);
        a
    }
}

/// Which pair of VMs a transfer ran on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Herd,
    Peer,
}

impl Side {
    /// The order in run `run` (1-based): ABBA.
    pub fn order(run: u32) -> [Side; 2] {
        if run % 2 == 1 {
            [Side::Herd, Side::Peer]
        } else {
            [Side::Peer, Side::Herd]
        }
    }
}

/// One transfer as the receiver saw it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Transfer {
    pub bytes: u64,
    /// By the receiver's clock, from the accepted connection to the sender's close.
    pub guest_seconds: f64,
    /// By the host's clock, from starting the sender to the agent reporting the receiver's end
    /// (includes the agent round trips and up to one poll interval).
    pub host_seconds: f64,
    /// CPU seconds this process (herd's server, in the herd runs idle but running) used
    /// meanwhile.
    pub server_cpu_seconds: f64,
}

impl Transfer {
    pub fn mbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / 1e6 / self.guest_seconds.max(1e-3)
    }
}

/// What the receiver's script printed: `start S end E` and dd's `N+M records in`.
pub fn parse_receiver(out: &str) -> Result<(f64, f64, u64)> {
    let times = out.lines().find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            ["start", s, "end", e] => Some((s.parse::<f64>().ok()?, e.parse::<f64>().ok()?)),
            _ => None,
        }
    });
    let Some((start, end)) = times else { bail!("no 'start S end E' in the receiver's output: {out:?}") };
    let full = out.lines().find_map(|l| l.strip_suffix(" records in")?.split_once('+')?.0.parse::<u64>().ok());
    let Some(full) = full else { bail!("no dd 'records in' line in the receiver's output: {out:?}") };
    Ok((start, end, full))
}

/// The summary over the runs.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub runs: usize,
    pub bytes_per_transfer: u64,
    pub herd_mbit_per_s: Spread,
    pub peer_mbit_per_s: Spread,
    /// herd / peer per run.
    pub ratio: Spread,
    /// The median of herd's over the median of the peer's.
    pub ratio_of_medians: f64,
    pub goal_ratio: f64,
    pub meets_goal: bool,
}

impl Summary {
    /// `pairs`: per run, (herd, peer).
    pub fn of(pairs: &[(Transfer, Transfer)]) -> Summary {
        let herd = Spread::of(pairs.iter().map(|(h, _)| h.mbit_per_s()));
        let peer = Spread::of(pairs.iter().map(|(_, p)| p.mbit_per_s()));
        let ratio_of_medians = herd.median / peer.median.max(1e-9);
        Summary {
            runs: pairs.len(),
            bytes_per_transfer: pairs.first().map_or(0, |(h, _)| h.bytes),
            herd_mbit_per_s: herd,
            peer_mbit_per_s: peer,
            ratio: Spread::of(pairs.iter().map(|(h, p)| h.mbit_per_s() / p.mbit_per_s().max(1e-9))),
            ratio_of_medians,
            goal_ratio: GOAL_RATIO,
            meets_goal: ratio_of_medians >= GOAL_RATIO,
        }
    }
}

/// Blocks for a transfer of about `seconds` at the rate the calibration saw.
pub fn blocks_for(seconds: u64, calibration: &Transfer) -> u64 {
    let bytes_per_s = calibration.bytes as f64 / calibration.guest_seconds.max(0.01);
    ((bytes_per_s * seconds as f64 / BLOCK as f64).round() as u64).clamp(CALIBRATION_BLOCKS, 1 << 20)
}

/// `herd bench vm-net`.
pub async fn run(launch: &dyn Launch, o: Options) -> Result<()> {
    if o.seconds == 0 || o.seconds > 600 || o.runs == 0 {
        bail!("--seconds must be 1 to 600 and --runs at least 1");
    }
    super::require_root("vm-net")?;
    Guest::find(&o.testguest)?;
    if !Path::new(herd_driver_qemu::DEFAULT_QEMU).exists() {
        bail!("{} is missing (apt-get install qemu-system-x86)", herd_driver_qemu::DEFAULT_QEMU);
    }
    if !o.inside {
        return super::isolated("vn", &o.inner_args()).await;
    }
    measure(launch, &o, &Interrupt::listen()).await
}

/// One VM as the transfer sees it: its agent socket and address.
#[derive(Debug, Clone)]
pub(crate) struct Vm {
    pub(crate) qga: PathBuf,
    pub(crate) ip: String,
}

/// A peer's QEMU argv made from herd's: what changed, for the printed line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerArgv {
    pub argv: Vec<String>,
    /// The arguments that differ from herd's, as `(herd's, the peer's)`.
    pub changed: Vec<(String, String)>,
}

/// Where the value of `key=` lies in a QEMU option string (`a=1,key=value,b=2`), commas
/// doubled inside values being part of them.
fn option_span(opts: &str, key: &str) -> Option<(usize, usize)> {
    let pattern = format!("{key}=");
    let (at, _) = opts.match_indices(&pattern).find(|&(i, _)| i == 0 || opts[..i].ends_with(','))?;
    let start = at + pattern.len();
    let b = opts.as_bytes();
    let mut end = start;
    while end < b.len() {
        if b[end] == b',' {
            if b.get(end + 1) == Some(&b',') {
                end += 2;
                continue;
            }
            break;
        }
        end += 1;
    }
    Some((start, end))
}

/// The value of `key=` in a QEMU option string.
fn option_value<'a>(opts: &'a str, key: &str) -> Option<&'a str> {
    option_span(opts, key).map(|(s, e)| &opts[s..e])
}

/// `opts` with the value of `key=` replaced by `value` (which must hold no comma).
fn with_option(opts: &str, key: &str, value: &str) -> Option<String> {
    let (s, e) = option_span(opts, key)?;
    Some(format!("{}{value}{}", &opts[..s], &opts[e..]))
}

/// A peer's QEMU argv from `herd` (the argv of one of herd's VMs, without the program): the
/// same arguments in the same order, with only these changed, and nothing of herd's VM left
/// in it (else an error):
/// - every path in herd's instance directory (the directory of `-pidfile`) moved to `dir`;
/// - each `socket` chardev's path to `dir/<its file name>` (herd may put sockets elsewhere
///   when its directory is too long for a socket address);
/// - the `tap` netdev's `ifname=` to `tap`, the `virtio-net-pci` device's `mac=` to `mac`;
/// - `-name herd:<tag>:<instance>` (herd's driver's marker) to `-name name`.
pub fn peer_argv(herd: &[String], dir: &Path, tap: &str, mac: &str, name: &str) -> Result<PeerArgv> {
    let after = |flag: &str| herd.windows(2).find(|w| w[0] == flag).map(|w| w[1].as_str());
    let pidfile = after("-pidfile").ok_or_else(|| anyhow!("herd's QEMU argv has no -pidfile: {herd:?}"))?;
    let herd_dir = Path::new(pidfile).parent().map(|d| d.display().to_string()).unwrap_or_default();
    if herd_dir.len() < 2 || herd_dir.contains(',') {
        bail!("herd's instance directory {herd_dir:?} (from -pidfile) is not usable here");
    }
    let peer_dir = dir.display().to_string();
    if peer_dir.contains(',') {
        bail!("the peer's directory {peer_dir:?} holds a comma");
    }
    let old_tap = herd
        .windows(2)
        .find(|w| w[0] == "-netdev" && w[1].starts_with("tap,"))
        .and_then(|w| option_value(&w[1], "ifname"))
        .ok_or_else(|| anyhow!("herd's QEMU has no tap netdev with an ifname: {herd:?}"))?
        .to_string();
    let mut out = Vec::with_capacity(herd.len());
    let mut changed = Vec::new();
    for (i, a) in herd.iter().enumerate() {
        let flag = if i > 0 { herd[i - 1].as_str() } else { "" };
        let new = match flag {
            "-name" => name.to_string(),
            "-netdev" if a.starts_with("tap,") => {
                with_option(a, "ifname", tap).ok_or_else(|| anyhow!("cannot set ifname in {a}"))?
            }
            "-device" if a.starts_with("virtio-net-pci,") => {
                with_option(a, "mac", mac).ok_or_else(|| anyhow!("herd's NIC has no mac: {a}"))?
            }
            "-chardev" if a.starts_with("socket,") => {
                let path = option_value(a, "path").ok_or_else(|| anyhow!("a socket chardev without a path: {a}"))?;
                let file = Path::new(path).file_name().ok_or_else(|| anyhow!("socket path {path}"))?;
                with_option(a, "path", &dir.join(file).display().to_string())
                    .ok_or_else(|| anyhow!("cannot set the path in {a}"))?
            }
            _ => a.replace(&format!("{herd_dir}/"), &format!("{peer_dir}/")),
        };
        if new != *a {
            changed.push((a.clone(), new.clone()));
        }
        out.push(new);
    }
    let marker = crate::qemu::marker_key(herd);
    if let Some(left) = out.iter().find(|a| {
        a.contains(&herd_dir) || option_value(a, "ifname") == Some(old_tap.as_str()) || a.starts_with("herd:")
    }) {
        bail!("the peer's QEMU argv still names herd's VM ({marker:?}): {left}");
    }
    Ok(PeerArgv { argv: out, changed })
}

async fn measure(launch: &dyn Launch, o: &Options, intr: &Interrupt) -> Result<()> {
    let guest = Guest::find(&o.testguest)?;
    let skus = SkuTable::default();
    let (sku, _) = skus.resolve("--sku", &o.sku).map_err(|e| anyhow!("{}", e.message))?;
    let tmp = tempfile::Builder::new().prefix("herd-bench-vn-").tempdir()?;
    let root = tmp.path().canonicalize()?;
    let _kill = KillQemus(root.display().to_string());
    let data = root.join("data");
    let config = root.join("herd.toml");
    let host = launch.host();
    std::fs::write(
        &config,
        format!(
            "[network]\nmode = \"bridged\"\n\n[qemu]\nboot_timeout_secs = 240\nstop_timeout_secs = 10\n\n[images]\nimport_roots = {}\n\n\
             [[hosts]]\nname = \"bench\"\nvcpus = {}\nmemory_mib = {}\novercommit = 16.0\n",
            crate::qemu::toml_paths(&[&guest.kernel, &guest.initrd]),
            host.vcpus.max(8),
            host.memory_mib
        ),
    )?;
    let spec = ServerSpec { data_dir: data.clone(), driver: Driver::Qemu, config: Some(config) };
    let mut server = intr.guard(launch.start(spec)).await?;
    let _leftovers = Leftovers { data: data.clone(), keys: vec![] };
    // The server stops before the VMs are killed and its state removed (the guards above,
    // dropped last), also after an error or Ctrl-C.
    let result = intr
        .guard(async {
            let c = server.client()?;
            eprintln!("vm-net: starting herd's two VMs ({sku}) and the two hand-run ones");
            let (herd, argvs): (Vec<Vm>, Vec<Vec<String>>) =
                herd_pair(&c, &guest, sku, &data).await?.into_iter().unzip();
            let peer = peer_pair(&argvs, &root).await?;
            for vm in herd.iter().chain(&peer) {
                Qga::wait_ready(&vm.qga, BOOT).await.map_err(|e| anyhow!("the agent of the VM at {}: {e}", vm.ip))?;
            }
            configure_peers(&peer).await?;
            eprintln!("vm-net: calibrating on herd's pair (128 MiB)");
            let cal = transfer(&herd, CALIBRATION_BLOCKS, Duration::from_secs(300)).await?;
            let blocks = blocks_for(o.seconds, &cal);
            eprintln!(
                "vm-net: calibration {:.0} Mbit/s; each transfer moves {} MiB",
                cal.mbit_per_s(),
                (blocks * BLOCK) >> 20
            );
            let limit = Duration::from_secs(o.seconds * 6 + 60);
            let mut pairs = Vec::new();
            for run in 1..=o.runs {
                let (mut h, mut p) = (None, None);
                for side in Side::order(run) {
                    let vms = if side == Side::Herd { &herd } else { &peer };
                    eprintln!("vm-net: run {run}/{}: {side:?}", o.runs);
                    let t = transfer(vms, blocks, limit).await.with_context(|| format!("run {run}, {side:?}"))?;
                    println!(
                        "{}",
                        json!({"bench": "vm-net", "run": run, "side": side, "bytes": t.bytes,
                        "guestSeconds": t.guest_seconds, "hostSeconds": t.host_seconds, "mbitPerS": t.mbit_per_s(),
                        "serverCpuSeconds": t.server_cpu_seconds})
                    );
                    match side {
                        Side::Herd => h = Some(t),
                        Side::Peer => p = Some(t),
                    }
                }
                if let (Some(h), Some(p)) = (h, p) {
                    pairs.push((h, p));
                }
            }
            let mut summary = serde_json::to_value(Summary::of(&pairs))?;
            summary["bench"] = json!("vm-net-summary");
            summary["sku"] = json!(sku);
            summary["calibrationMbitPerS"] = json!(cal.mbit_per_s());
            println!("{summary}");
            crate::delete_and_wait(&c, &set_path(GROUP, SET), BOOT, Duration::from_millis(100), "deleting the VMs")
                .await?;
            anyhow::Ok(())
        })
        .await;
    server.stop().await;
    result
}

/// herd's set of two VMs on a bridged subnet, converged; returns them in instance order, each
/// with its QEMU's argv (without the program).
async fn herd_pair(c: &herd_client::Client, guest: &Guest, sku: &str, data: &Path) -> Result<Vec<(Vm, Vec<String>)>> {
    c.put(&format!("/v1/resourceGroups/{GROUP}"), &json!({})).await?;
    c.put(
        &format!("/v1/images/{IMAGE_URN}"),
        &json!({"kernel": guest.kernel, "initrd": guest.initrd, "cmdline": guest.cmdline}),
    )
    .await?;
    let subnet = put_vnet(c, GROUP, "vnet", "10.0.0.0/24").await?;
    let model = json!({
        "sku": {"name": sku, "capacity": 2},
        "overprovision": false,
        "upgradePolicy": {"mode": "Manual"},
        "virtualMachineProfile": {
            "osProfile": {"computerNamePrefix": "vn", "adminUsername": "bench"},
            "storageProfile": {"imageReference": {"publisher": "Herd", "offer": "TestGuest", "sku": "1", "version": "1.0.0"}},
            "networkProfile": nic_on(&subnet),
        }
    });
    let path = set_path(GROUP, SET);
    c.call(reqwest::Method::PUT, &path, Some(&model), &[("If-None-Match", "*")]).await?;
    crate::provision::wait_converged(c, &path, BOOT).await?;
    let list = c.get(&format!("{path}/virtualMachines")).await?;
    let qemus = qemu_processes(&data.join("vms").display().to_string());
    let mut vms = Vec::new();
    for id in ["0", "1"] {
        let inst = list
            .as_array()
            .and_then(|a| a.iter().find(|i| i["instanceId"] == id))
            .ok_or_else(|| anyhow!("instance {id} is not listed: {list}"))?;
        let ip = inst["privateIpAddress"].as_str().ok_or_else(|| anyhow!("instance {id} has no private IP: {inst}"))?;
        let key = format!("{GROUP}/{SET}/{id}");
        let argv = qemus
            .iter()
            .find(|(_, argv)| marker_key(argv).as_deref() == Some(key.as_str()))
            .map(|(_, a)| a)
            .ok_or_else(|| anyhow!("no QEMU process for {key}"))?;
        let qga = chardev_path(argv, QGA_CHARDEV).ok_or_else(|| anyhow!("no agent socket in {key}'s QEMU"))?;
        vms.push((Vm { qga, ip: ip.to_string() }, argv.iter().skip(1).cloned().collect()));
    }
    Ok(vms)
}

/// The peer: a bridge and two TAPs made by hand, and two QEMUs on them started with herd's
/// VMs' argv ([`peer_argv`]; `herd_argvs` in instance order), each in its own directory under
/// `root` with an OS disk like herd's VM's and its own seed. Like herd's, they daemonize; they
/// are killed with every QEMU naming `root` ([`KillQemus`]).
async fn peer_pair(herd_argvs: &[Vec<String>], root: &Path) -> Result<Vec<Vm>> {
    isolate::run("ip", &["link", "add", PEER_BRIDGE, "type", "bridge"])?;
    isolate::run("ip", &["addr", "add", PEER_GATEWAY, "dev", PEER_BRIDGE])?;
    isolate::run("ip", &["link", "set", PEER_BRIDGE, "up"])?;
    let mut vms = Vec::new();
    for (i, (ip, herd)) in PEER_IPS.iter().zip(herd_argvs).enumerate() {
        let tap = format!("peertap{i}");
        isolate::run("ip", &["tuntap", "add", "dev", &tap, "mode", "tap"])?;
        isolate::run("ip", &["link", "set", &tap, "master", PEER_BRIDGE, "up"])?;
        let dir = root.join(format!("peer{i}"));
        std::fs::create_dir_all(&dir)?;
        let host = format!("peer{i}");
        let peer = peer_argv(herd, &dir, &tap, &format!("52:54:00:be:00:0{i}"), &format!("herd-bench-{host}"))?;
        prepare_disks(herd, &peer.argv, &host)?;
        println!("{}", json!({"bench": "vm-net-peer", "peer": i, "argv": peer.argv, "changedFromHerds": peer.changed}));
        let out = tokio::process::Command::new(herd_driver_qemu::DEFAULT_QEMU)
            .args(&peer.argv)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .context("starting the peer's QEMU")?;
        if !out.status.success() {
            bail!("the peer's QEMU (herd's argv) did not start: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let qga = chardev_path(&peer.argv, QGA_CHARDEV).ok_or_else(|| anyhow!("no agent socket in the peer's argv"))?;
        vms.push(Vm { qga, ip: ip.to_string() });
    }
    Ok(vms)
}

/// The peer's disks, at the paths its argv names: for each qcow2 `-drive` one like herd's
/// (same backing file or, without one, the same virtual size, empty), and for the `seed`
/// drive a NoCloud seed of its own (hostname `host`, no network config: the address is set
/// through the agent).
fn prepare_disks(herd: &[String], peer: &[String], host: &str) -> Result<()> {
    let drives = |argv: &[String]| -> Vec<String> {
        argv.windows(2).filter(|w| w[0] == "-drive").map(|w| w[1].clone()).collect()
    };
    for (h, p) in drives(herd).iter().zip(drives(peer)) {
        let (Some(from), Some(to)) = (option_value(h, "file"), option_value(&p, "file")) else {
            bail!("a -drive without file=: {h}")
        };
        let to = PathBuf::from(to.replace(",,", ","));
        if option_value(&p, "id") == Some("seed") {
            let files = SeedFiles {
                meta_data: seed::meta_data(host, host),
                user_data: seed::user_data(&UserDataInput {
                    admin_username: "bench",
                    password_hash: None,
                    ssh_keys: &[],
                    custom_data: None,
                    hostname: host,
                }),
                network_config: None,
            };
            seed::write_seed(&to, &files)?;
        } else if option_value(&p, "format") == Some("qcow2") {
            let from = from.replace(",,", ",");
            let info = std::process::Command::new("qemu-img")
                .args(["info", "-U", "--output", "json", &from])
                .output()
                .context("running qemu-img (apt-get install qemu-utils)")?;
            if !info.status.success() {
                bail!("qemu-img info {from}: {}", String::from_utf8_lossy(&info.stderr).trim());
            }
            let v: serde_json::Value = serde_json::from_slice(&info.stdout)?;
            let to = to.display().to_string();
            let mut args = vec!["create".to_string(), "-q".into(), "-f".into(), "qcow2".into()];
            match (v["full-backing-filename"].as_str(), v["backing-filename-format"].as_str()) {
                (Some(b), Some(f)) => args.extend(["-b".into(), b.into(), "-F".into(), f.into(), to]),
                _ => {
                    let size = v["virtual-size"].as_u64().ok_or_else(|| anyhow!("no virtual-size for {from}: {v}"))?;
                    args.extend([to, size.to_string()]);
                }
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            isolate::run("qemu-img", &args)?;
        } else {
            bail!("the peer cannot make a disk like herd's {h}");
        }
    }
    Ok(())
}

/// The peers' addresses, through their agents: no DHCP server on the hand-made bridge, so
/// the guest's DHCP client is stopped and the address set by hand.
async fn configure_peers(peers: &[Vm]) -> Result<()> {
    for vm in peers {
        let script = format!(
            "[ -f /run/udhcpc.eth0.pid ] && kill $(cat /run/udhcpc.eth0.pid); ip addr flush dev eth0; \
             ip addr add {}/24 dev eth0 && ip link set eth0 up",
            vm.ip
        );
        let q = Qga::wait_ready(&vm.qga, AGENT).await?;
        let st = q.run("/bin/sh", &["-c", &script], &[] as &[&str], None, AGENT).await?;
        if !st.success() {
            bail!("configuring the peer at {}: {}", vm.ip, String::from_utf8_lossy(&st.stderr));
        }
    }
    Ok(())
}

/// Starts `cmd` through the agent at `sock` and lets go of the agent.
async fn start(sock: &Path, script: &str) -> Result<i64> {
    let q = Qga::wait_ready(sock, AGENT).await?;
    let cmd = GuestCommand { path: "/bin/sh", args: &["-c", script], env: &[] as &[&str], input: None };
    Ok(q.exec(cmd, true).await?)
}

/// Polls the agent at `sock` until process `pid` exits (or `deadline`).
async fn wait_exit(sock: &Path, pid: i64, deadline: Instant, what: &str) -> Result<herd_driver_qemu::qga::ExecStatus> {
    loop {
        let st = Qga::wait_ready(sock, AGENT).await?.exec_status(pid).await?;
        if st.exited {
            return Ok(st);
        }
        if Instant::now() > deadline {
            bail!("{what} did not finish in time");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `blocks` × 64 KiB from `vms[0]` to `vms[1]`.
pub(crate) async fn transfer(vms: &[Vm], blocks: u64, limit: Duration) -> Result<Transfer> {
    let [tx, rx] = vms else { bail!("a transfer needs two VMs") };
    let receive = format!(
        "nc -l -p {PORT} -e sh -c 'a=$(cut -d\" \" -f1 /proc/uptime); dd of=/dev/null bs={BLOCK} iflag=fullblock \
         2>/tmp/rx.dd; b=$(cut -d\" \" -f1 /proc/uptime); echo \"start $a end $b\" >/tmp/rx.time'; \
         cat /tmp/rx.time /tmp/rx.dd"
    );
    // The receiver may take a moment to listen: the sender retries the connection (bounded).
    let send = format!(
        "i=0; until nc {} {PORT} -e dd if=/dev/zero bs={BLOCK} count={blocks} 2>/dev/null; do \
         i=$((i + 1)); [ $i -ge 100 ] && exit 1; usleep 100000; done",
        rx.ip
    );
    let rx_pid = start(&rx.qga, &receive).await?;
    let cpu0 = super::cpu_seconds().0;
    let t0 = Instant::now();
    let tx_pid = start(&tx.qga, &send).await?;
    let deadline = t0 + limit;
    let got = wait_exit(&rx.qga, rx_pid, deadline, "the receiver").await?;
    let host_seconds = t0.elapsed().as_secs_f64();
    let server_cpu_seconds = super::cpu_seconds().0 - cpu0;
    let sent = wait_exit(&tx.qga, tx_pid, deadline, "the sender").await?;
    if !sent.success() {
        bail!("the sender to {} failed: {}", rx.ip, String::from_utf8_lossy(&sent.stderr));
    }
    let out = String::from_utf8_lossy(&got.stdout).into_owned() + &String::from_utf8_lossy(&got.stderr);
    let (start, end, full) = parse_receiver(&out)?;
    if full != blocks {
        bail!("the receiver at {} got {full} of {blocks} blocks", rx.ip);
    }
    Ok(Transfer { bytes: blocks * BLOCK, guest_seconds: end - start, host_seconds, server_cpu_seconds })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receivers_output_gives_its_times_and_full_blocks() {
        let out = "start 123.45 end 133.50\n16384+0 records in\n16384+0 records out\n";
        assert_eq!(parse_receiver(out).unwrap(), (123.45, 133.5, 16384));
        let cut = "start 1.00 end 2.00\n100+1 records in\n100+1 records out\n";
        assert_eq!(parse_receiver(cut).unwrap().2, 100, "a partial block is not counted");
        assert!(parse_receiver("16384+0 records in").is_err(), "no times");
        assert!(parse_receiver("start 1.00 end 2.00").is_err(), "no dd line");
    }

    #[test]
    fn throughput_ratio_and_goal() {
        let t = |mib: u64, s: f64| Transfer {
            bytes: mib << 20,
            guest_seconds: s,
            host_seconds: s + 0.5,
            server_cpu_seconds: 0.1,
        };
        // 100 MiB in 10 s is 83.886 Mbit/s.
        assert!((t(100, 10.0).mbit_per_s() - 83.886).abs() < 0.001);
        let pairs = [(t(100, 10.0), t(100, 10.0)), (t(100, 10.0), t(100, 9.0)), (t(100, 11.0), t(100, 10.0))];
        let s = Summary::of(&pairs);
        assert_eq!(s.runs, 3);
        // Per run: 1.0, 0.9 (the peer took 9 s) and 10/11 (herd took 11 s).
        assert!((s.ratio.median - 10.0 / 11.0).abs() < 1e-9, "{:?}", s.ratio);
        assert!((s.ratio.min - 0.9).abs() < 1e-9 && (s.ratio.max - 1.0).abs() < 1e-9, "{:?}", s.ratio);
        assert!((s.ratio_of_medians - 1.0).abs() < 1e-9, "medians 83.9 and 83.9");
        assert!(s.meets_goal);
        let slow = Summary::of(&[(t(90, 10.0), t(100, 10.0))]);
        assert!((slow.ratio_of_medians - 0.9).abs() < 1e-9 && !slow.meets_goal);
    }

    #[test]
    fn the_transfer_is_sized_from_the_calibration() {
        // 128 MiB in 2 s: 64 MiB/s, so 10 s is 640 MiB, 10240 blocks of 64 KiB.
        let cal = Transfer { bytes: 128 << 20, guest_seconds: 2.0, host_seconds: 2.2, server_cpu_seconds: 0.0 };
        assert_eq!(blocks_for(10, &cal), 10240);
        assert_eq!(blocks_for(1, &Transfer { guest_seconds: 100.0, ..cal }), CALIBRATION_BLOCKS, "at least 128 MiB");
        assert_eq!(Side::order(1), [Side::Herd, Side::Peer]);
        assert_eq!(Side::order(2), [Side::Peer, Side::Herd]);
    }

    /// An argv as herd's driver builds it for a bridged kernel-image VM (the shape of
    /// `herd_driver_qemu`'s command line), with the QMP socket moved out of a long directory.
    fn herds_argv() -> Vec<String> {
        let d = "/tmp/b/data/vms/bench/vmnet/0";
        [
            "-name",
            "herd:00ff00ff00ff00ff:bench/vmnet/0",
            "-machine",
            "pc",
            "-accel",
            "tcg,thread=multi",
            "-smp",
            "1",
            "-m",
            "512",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-daemonize",
            "-pidfile",
            &format!("{d}/qemu.pid"),
            "-D",
            &format!("{d}/qemu.log"),
            "-d",
            "plugin",
            "-chardev",
            &format!("file,id=serial0,path={d}/console.log,append=on"),
            "-serial",
            "chardev:serial0",
            "-chardev",
            "socket,id=qmp0,path=/run/herd/s/0a1b-qmp.sock,server=on,wait=off",
            "-mon",
            "chardev=qmp0,mode=control",
            "-device",
            "virtio-serial-pci,id=vser0",
            "-chardev",
            &format!("socket,id=qga0,path={d}/qga.sock,server=on,wait=off"),
            "-device",
            "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
            "-drive",
            &format!("file={d}/os.qcow2,if=none,id=os,format=qcow2"),
            "-device",
            "virtio-blk-pci,drive=os",
            "-drive",
            &format!("file={d}/seed.img,if=none,id=seed,format=raw,readonly=on"),
            "-device",
            "virtio-blk-pci,drive=seed",
            "-netdev",
            "tap,id=net0,ifname=ht0123456789ab,script=no,downscript=no",
            "-device",
            "virtio-net-pci,netdev=net0,mac=02:aa:bb:cc:dd:ee",
            "-device",
            "virtio-rng-pci",
            "-kernel",
            "/tmp/b/data/images/tg/vmlinuz",
            "-initrd",
            "/tmp/b/data/images/tg/initrd.img",
            "-append",
            "console=ttyS0 quiet",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn the_peer_runs_herds_argv_with_only_paths_sockets_tap_mac_and_name_changed() {
        let herd = herds_argv();
        let p =
            peer_argv(&herd, Path::new("/tmp/b/peer0"), "peertap0", "52:54:00:be:00:00", "herd-bench-peer0").unwrap();
        assert_eq!(p.argv.len(), herd.len(), "the same arguments in the same order");
        let value =
            |flag: &str| -> Vec<&str> { p.argv.windows(2).filter(|w| w[0] == flag).map(|w| w[1].as_str()).collect() };
        assert_eq!(value("-name"), ["herd-bench-peer0"]);
        assert_eq!(value("-pidfile"), ["/tmp/b/peer0/qemu.pid"]);
        assert_eq!(value("-netdev"), ["tap,id=net0,ifname=peertap0,script=no,downscript=no"]);
        assert!(value("-device").contains(&"virtio-net-pci,netdev=net0,mac=52:54:00:be:00:00"));
        let chardevs = value("-chardev");
        assert_eq!(chardevs[0], "file,id=serial0,path=/tmp/b/peer0/console.log,append=on");
        assert_eq!(chardevs[1], "socket,id=qmp0,path=/tmp/b/peer0/0a1b-qmp.sock,server=on,wait=off");
        assert_eq!(chardev_path(&p.argv, QGA_CHARDEV), Some(PathBuf::from("/tmp/b/peer0/qga.sock")));
        assert_eq!(value("-drive")[0], "file=/tmp/b/peer0/os.qcow2,if=none,id=os,format=qcow2");
        // Everything else is herd's, untouched: TCG, sizes, devices, kernel, initrd, command line.
        let same: Vec<&String> = herd.iter().zip(&p.argv).filter(|(h, q)| h == q).map(|(h, _)| h).collect();
        assert_eq!(same.len(), herd.len() - 10, "changed: {:#?}", p.changed);
        assert_eq!(
            p.changed.len(),
            10,
            "name, pid file, log, console, 2 sockets, 2 drives, TAP, MAC: {:#?}",
            p.changed
        );
        for kept in ["-daemonize", "plugin", "tcg,thread=multi", "/tmp/b/data/images/tg/vmlinuz", "console=ttyS0 quiet"]
        {
            assert!(p.argv.iter().any(|a| a == kept), "{kept}");
        }
        assert!(marker_key(&p.argv).is_none(), "herd's driver cannot take it for its own");

        let no_tap: Vec<String> =
            herd.iter().map(|a| if a.starts_with("tap,") { "user,id=net0".to_string() } else { a.clone() }).collect();
        let e = peer_argv(&no_tap, Path::new("/p"), "t", "m", "n").unwrap_err().to_string();
        assert!(e.contains("no tap netdev"), "{e}");
        let no_pid: Vec<String> =
            herd.iter().filter(|a| !a.ends_with("qemu.pid") && *a != "-pidfile").cloned().collect();
        assert!(peer_argv(&no_pid, Path::new("/p"), "t", "m", "n").unwrap_err().to_string().contains("-pidfile"));
    }

    #[test]
    fn qemu_option_values_are_read_and_replaced_with_doubled_commas_inside() {
        let o = "file=/a,,b/os.qcow2,if=none,id=os,format=qcow2";
        assert_eq!(option_value(o, "file"), Some("/a,,b/os.qcow2"));
        assert_eq!(option_value(o, "format"), Some("qcow2"));
        assert_eq!(option_value(o, "f"), None, "whole keys only");
        assert_eq!(option_value("if=none,f=1", "f"), Some("1"));
        assert_eq!(option_value("virtio-net-pci,netdev=net0,mac=x", "net"), None);
        assert_eq!(with_option(o, "id", "seed").unwrap(), "file=/a,,b/os.qcow2,if=none,id=seed,format=qcow2");
        assert_eq!(with_option("tap,id=net0,ifname=a", "ifname", "b").unwrap(), "tap,id=net0,ifname=b");
        assert_eq!(with_option("tap,id=net0", "ifname", "b"), None);
    }

    #[test]
    fn the_inner_bench_gets_the_same_options() {
        let o = Options { seconds: 5, runs: 2, sku: "Standard_B1ls".into(), testguest: "/x/tg".into(), inside: false };
        assert_eq!(
            o.inner_args().join(" "),
            "bench vm-net --seconds 5 --runs 2 --sku Standard_B1ls --testguest /x/tg --inside"
        );
    }
}
