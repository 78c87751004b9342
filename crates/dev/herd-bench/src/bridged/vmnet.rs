//! `herd bench vm-net`: TCP throughput from one VM to another over herd's bridge, next to two
//! hand-run QEMUs on a hand-made bridge.
//!
//! Inside a network namespace it creates (see [`super::isolated`]):
//!
//! - **herd**: the real server on the qemu driver with `[network] mode = "bridged"`, a vnet,
//!   and a set of two TCG VMs of the test guest (`images/testguest`) on its subnet: each NIC
//!   is a TAP on the subnet's bridge, with herd's anti-spoofing and NSG tables in nftables, the
//!   address from herd's dnsmasq;
//! - **the peer**: what a person would set up by hand in the same namespace, a bridge with two
//!   TAPs (`ip link add type bridge`, `ip tuntap add`) and two QEMUs with the same kernel,
//!   initrd, command line, vCPUs, memory, TCG and virtio-net on a `tap` netdev (the same
//!   netdev and device options herd's driver gives QEMU); their addresses are set through the
//!   guest agent, as there is no DHCP server on a hand-made bridge.
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
use crate::qemu::{chardev_path, hand_qemu_args, marker_key, qemu_processes, Guest, KillQemus, QGA_CHARDEV};
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
const IMAGE_URN: &str = "Herd:TestGuest:1:1.0.0";
const PORT: u16 = 5001;
const BLOCK: u64 = 65536;
/// The calibration transfer (and warm-up): 128 MiB.
const CALIBRATION_BLOCKS: u64 = 2048;
const BOOT: Duration = Duration::from_secs(300);
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
struct Vm {
    qga: PathBuf,
    ip: String,
}

async fn measure(launch: &dyn Launch, o: &Options, intr: &Interrupt) -> Result<()> {
    let guest = Guest::find(&o.testguest)?;
    let skus = SkuTable::default();
    let (sku, size) = skus.resolve("--sku", &o.sku).map_err(|e| anyhow!("{}", e.message))?;
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
            let herd = herd_pair(&c, &guest, sku, &data).await?;
            let (peer, _children) = peer_pair(&guest, &size, &root).await?;
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

/// herd's set of two VMs on a bridged subnet, converged; returns them in instance order.
async fn herd_pair(c: &herd_client::Client, guest: &Guest, sku: &str, data: &Path) -> Result<Vec<Vm>> {
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
        vms.push(Vm { qga, ip: ip.to_string() });
    }
    Ok(vms)
}

/// The peer: a bridge and two TAPs made by hand, two QEMUs on them. The children are killed
/// when dropped.
async fn peer_pair(
    guest: &Guest,
    size: &herd_model::sku::SkuSize,
    root: &Path,
) -> Result<(Vec<Vm>, Vec<tokio::process::Child>)> {
    isolate::run("ip", &["link", "add", PEER_BRIDGE, "type", "bridge"])?;
    isolate::run("ip", &["addr", "add", PEER_GATEWAY, "dev", PEER_BRIDGE])?;
    isolate::run("ip", &["link", "set", PEER_BRIDGE, "up"])?;
    let mut vms = Vec::new();
    let mut children = Vec::new();
    for (i, ip) in PEER_IPS.iter().enumerate() {
        let tap = format!("peertap{i}");
        isolate::run("ip", &["tuntap", "add", "dev", &tap, "mode", "tap"])?;
        isolate::run("ip", &["link", "set", &tap, "master", PEER_BRIDGE, "up"])?;
        let dir = root.join(format!("peer{i}"));
        std::fs::create_dir_all(&dir)?;
        let host = format!("peer{i}");
        let files = SeedFiles {
            meta_data: seed::meta_data(&host, &host),
            user_data: seed::user_data(&UserDataInput {
                admin_username: "bench",
                password_hash: None,
                ssh_keys: &[],
                custom_data: None,
                hostname: &host,
            }),
            network_config: None,
        };
        seed::write_seed(&dir.join("seed.img"), &files)?;
        let netdev = format!("tap,id=net0,ifname={tap},script=no,downscript=no");
        let nic = format!("virtio-net-pci,netdev=net0,mac=52:54:00:be:00:0{i}");
        let args = hand_qemu_args(guest, size, &dir, &netdev, &nic);
        let child = tokio::process::Command::new(herd_driver_qemu::DEFAULT_QEMU)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("qemu.err"))?)
            .kill_on_drop(true)
            .spawn()
            .context("starting the hand-run QEMU")?;
        children.push(child);
        vms.push(Vm { qga: dir.join("qga.sock"), ip: ip.to_string() });
    }
    Ok((vms, children))
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
async fn transfer(vms: &[Vm], blocks: u64, limit: Duration) -> Result<Transfer> {
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

    #[test]
    fn the_inner_bench_gets_the_same_options() {
        let o = Options { seconds: 5, runs: 2, sku: "Standard_B1ls".into(), testguest: "/x/tg".into(), inside: false };
        assert_eq!(
            o.inner_args().join(" "),
            "bench vm-net --seconds 5 --runs 2 --sku Standard_B1ls --testguest /x/tg --inside"
        );
    }
}
