//! One `dnsmasq` per subnet bridge: DHCP that hands out only herd's reservations, and DNS for
//! the vnet's instance names, forwarding every other name to the host's resolver (as libvirt
//! runs one per network).
//!
//! Why files and not a config per change: dnsmasq reads a directory of reservation files
//! (`--dhcp-hostsdir`) and a directory of host files (`--hostsdir`) and notices new or changed
//! files by itself (inotify), so adding an instance is one atomic file write with no restart
//! and no signal. Removing a file takes effect at the next `SIGHUP` ([`reload`]).
//!
//! dnsmasq daemonizes, drops to `nobody` and writes its pid file; herd finds it again after
//! its own restart through that file and the process's command line (which names the pid
//! file), so a `kill -9` of the server leaves DHCP and DNS serving, and the next server adopts
//! them. Its files live under `/run` (see [`crate::HostNet`]), readable by `nobody`.
//!
//! ```text
//!   absent ──ensure──▶ running ──file added──▶ running (reads it at once)
//!      ▲                  │ ──file removed + reload (SIGHUP)──▶ running
//!      └──stop (TERM)─────┘      died ──ensure/repair──▶ running
//! ```

use crate::NetError;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a lease lasts; clients renew at half of it. Reservations never change while the
/// instance exists, so a long lease costs nothing.
const LEASE: &str = "12h";

/// Everything one dnsmasq serves.
#[derive(Debug, Clone)]
pub struct Service<'a> {
    pub bridge: &'a str,
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    pub mtu: u16,
    /// The bridge's runtime directory: pid file, leases, log and the `dhcp/` reservations.
    pub dir: &'a Path,
    /// The vnet's DNS directory (shared by the dnsmasqs of all its subnets).
    pub names: &'a Path,
}

/// The subnet mask of a prefix length.
pub fn netmask(prefix_len: u8) -> Ipv4Addr {
    let bits = u32::MAX.checked_shl(32 - u32::from(prefix_len.min(32))).unwrap_or(0);
    Ipv4Addr::from(bits)
}

pub fn pid_file(dir: &Path) -> PathBuf {
    dir.join("dnsmasq.pid")
}

pub fn lease_file(dir: &Path) -> PathBuf {
    dir.join("leases")
}

pub fn reservations_dir(dir: &Path) -> PathBuf {
    dir.join("dhcp")
}

impl Service<'_> {
    /// dnsmasq's command line (no configuration file is read).
    pub fn args(&self) -> Vec<String> {
        let mask = netmask(self.prefix_len);
        let network = Ipv4Addr::from(u32::from(self.gateway) & u32::from(mask));
        let path = |p: PathBuf| p.display().to_string();
        vec![
            "--conf-file=/dev/null".into(),
            format!("--pid-file={}", path(pid_file(self.dir))),
            format!("--interface={}", self.bridge),
            "--except-interface=lo".into(),
            "--bind-interfaces".into(),
            // Only reserved addresses are handed out ("static"), and a client asking for an
            // address it does not own is told no at once (authoritative).
            format!("--dhcp-range={network},static,{mask},{LEASE}"),
            "--dhcp-authoritative".into(),
            format!("--dhcp-hostsdir={}", path(reservations_dir(self.dir))),
            format!("--dhcp-leasefile={}", path(lease_file(self.dir))),
            format!("--dhcp-option=option:router,{}", self.gateway),
            format!("--dhcp-option=option:dns-server,{}", self.gateway),
            // Option 26: the subnet's MTU.
            format!("--dhcp-option=option:mtu,{}", self.mtu),
            format!("--hostsdir={}", self.names.display()),
            // The host's /etc/hosts is not the vnet's; names without a dot and private
            // reverse lookups are not sent upstream.
            "--no-hosts".into(),
            "--domain-needed".into(),
            "--bogus-priv".into(),
            format!("--log-facility={}", path(self.dir.join("dnsmasq.log"))),
        ]
    }
}

/// The dnsmasq program: in `/usr/sbin` (Debian's `dnsmasq-base`) or on `PATH`.
pub fn binary() -> Result<PathBuf, NetError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["/usr/sbin".into(), "/sbin".into()]
        .into_iter()
        .chain(std::env::split_paths(&path))
        .map(|d: PathBuf| d.join("dnsmasq"))
        .find(|p| p.is_file())
        .ok_or_else(|| NetError::Command("dnsmasq is not installed: apt-get install dnsmasq-base".into()))
}

/// The dnsmasq serving `dir`, if it runs: its pid file names a live process whose command line
/// carries that pid file.
pub fn running(dir: &Path) -> Option<Pid> {
    let pid: i32 = std::fs::read_to_string(pid_file(dir)).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let want = format!("--pid-file={}", pid_file(dir).display());
    cmdline.split(|b| *b == 0).any(|arg| arg == want.as_bytes()).then_some(Pid::from_raw(pid))
}

/// Starts dnsmasq for `s` unless it runs. dnsmasq's parent returns once the daemon is serving
/// (or with the reason it cannot, such as a bind failure), so success means it is up.
pub fn ensure(s: &Service<'_>) -> Result<Pid, NetError> {
    if let Some(pid) = running(s.dir) {
        return Ok(pid);
    }
    let out = std::process::Command::new(binary()?)
        .args(s.args())
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| NetError::Command(format!("cannot start dnsmasq: {e}")))?;
    if !out.status.success() {
        return Err(NetError::Command(format!(
            "dnsmasq for bridge {} did not start: {}",
            s.bridge,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    running(s.dir).ok_or_else(|| NetError::Command(format!("dnsmasq for bridge {} started but is gone", s.bridge)))
}

/// Makes the dnsmasq of `dir` (if any) read its reservation and host files again.
pub fn reload(dir: &Path) {
    if let Some(pid) = running(dir) {
        let _ = kill(pid, Signal::SIGHUP);
    }
}

/// Stops the dnsmasq of `dir` (if any): `TERM`, then `KILL` after two seconds.
pub fn stop(dir: &Path) {
    let Some(pid) = running(dir) else { return };
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(2);
    while running(dir) == Some(pid) {
        if Instant::now() >= deadline {
            let _ = kill(pid, Signal::SIGKILL);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One line of dnsmasq's lease file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub mac: String,
    pub ip: Ipv4Addr,
    pub name: String,
}

/// The leases dnsmasq has granted on the bridge of `dir` (`<expiry> <mac> <ip> <name> <id>`).
pub fn leases(dir: &Path) -> Vec<Lease> {
    let text = std::fs::read_to_string(lease_file(dir)).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(Lease { mac: f.get(1)?.to_string(), ip: f.get(2)?.parse().ok()?, name: f.get(3)?.to_string() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_the_command_line() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(29), Ipv4Addr::new(255, 255, 255, 248));
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        let s = Service {
            bridge: "hb1",
            gateway: Ipv4Addr::new(10, 1, 2, 1),
            prefix_len: 24,
            mtu: 1450,
            dir: Path::new("/run/herd/net/x/hb1"),
            names: Path::new("/run/herd/net/x/dns-v"),
        };
        let args = s.args();
        for want in [
            "--dhcp-range=10.1.2.0,static,255.255.255.0,12h",
            "--dhcp-option=option:mtu,1450",
            "--interface=hb1",
            "--pid-file=/run/herd/net/x/hb1/dnsmasq.pid",
            "--hostsdir=/run/herd/net/x/dns-v",
            "--conf-file=/dev/null",
        ] {
            assert!(args.iter().any(|a| a == want), "missing {want} in {args:?}");
        }
    }

    #[test]
    fn lease_lines_are_parsed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            lease_file(dir.path()),
            "1796612446 52:54:00:aa:bb:01 10.9.0.4 vm-a 01:52:54:00:aa:bb:01\ngarbage\n",
        )
        .unwrap();
        assert_eq!(
            leases(dir.path()),
            vec![Lease { mac: "52:54:00:aa:bb:01".into(), ip: Ipv4Addr::new(10, 9, 0, 4), name: "vm-a".into() }]
        );
    }
}
