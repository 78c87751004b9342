//! Reading `/proc`: which QEMU processes are ours, whether one still lives, what it costs, and
//! who holds a port.
//!
//! Why: a daemonized QEMU is not our child, so `/proc` is the only place that says whether an
//! instance's VM still runs. Every QEMU the driver starts carries a marker in its argv
//! (`-name herd:<tag id>:<group>/<set>/<id>`, see [`crate::command_line`]), so a scan finds
//! every VM of this driver, including orphans whose instance directory is gone, and a recorded
//! pid is only trusted when its start time *and* its marker still match (pids are reused, and
//! after a host reboot a recorded pid may belong to anything).
//!
//! Processes vanish while we read, so every reader returns `Option` and a scan skips what it
//! cannot read; nothing here panics on odd contents. Zombies count as gone: a daemonized QEMU
//! is reparented to init (or a subreaper), which may reap it late or never.

use herd_model::InstanceKey;
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use herd_driver::host::procfs::parse_stat;
pub(crate) use herd_driver::host::procfs::{clock_ticks, is_gone, read_rss_bytes, read_stat, ProcId};

/// The short command name (`comm`) of a process.
pub(crate) fn read_comm(pid: u32) -> Option<String> {
    Some(std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim_end().to_string())
}

/// The instance key in a QEMU argv (NUL-separated, as in `/proc/<pid>/cmdline`) carrying
/// `-name <prefix><group>/<set>/<id>[,...]`.
pub(crate) fn marker_key(cmdline: &[u8], prefix: &str) -> Option<InstanceKey> {
    let mut args = cmdline.split(|b| *b == 0);
    while let Some(a) = args.next() {
        if a != b"-name" {
            continue;
        }
        let value = std::str::from_utf8(args.next()?).ok()?;
        let rest = value.strip_prefix(prefix)?;
        let key = rest.split(',').next()?;
        return InstanceKey::parse_path(key);
    }
    None
}

/// Every live (non-zombie) process whose argv carries `prefix` (our tag's marker), with the
/// instance it belongs to. Reads one `cmdline` per process, and `stat` only of the matches.
pub(crate) fn scan(prefix: &str) -> Vec<(InstanceKey, ProcId)> {
    scan_in(Path::new("/proc"), prefix)
}

fn scan_in(proc_root: &Path, prefix: &str) -> Vec<(InstanceKey, ProcId)> {
    let Ok(rd) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let needle = prefix.as_bytes();
    let me = std::process::id();
    rd.filter_map(|e| {
        let e = e.ok()?;
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        if pid == me {
            return None;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        if !cmdline.windows(needle.len()).any(|w| w == needle) {
            return None;
        }
        let key = marker_key(&cmdline, prefix)?;
        let st = parse_stat(&std::fs::read_to_string(e.path().join("stat")).ok()?).filter(|s| s.pid == pid)?;
        (!st.is_zombie()).then_some((key, ProcId { pid, start: st.starttime }))
    })
    .collect()
}

/// Whether `id` still runs (same start time, not a zombie) and is the QEMU of `key`.
pub(crate) fn is_instance_qemu(id: ProcId, prefix: &str, key: &InstanceKey) -> bool {
    if id.pid <= 1 {
        return false;
    }
    match read_stat(id.pid) {
        Some(st) if st.starttime == id.start && !st.is_zombie() => {}
        _ => return false,
    }
    std::fs::read(format!("/proc/{}/cmdline", id.pid)).ok().and_then(|c| marker_key(&c, prefix)).as_ref() == Some(key)
}

/// Sends `sig` to `id` if it is still that process. Never signals pid 0 or 1, nor ourselves.
pub(crate) fn signal(id: ProcId, sig: Signal) {
    let Ok(raw) = i32::try_from(id.pid) else { return };
    if raw <= 1 || id.pid == std::process::id() || is_gone(id) {
        return;
    }
    if let Err(e) = kill(Pid::from_raw(raw), sig) {
        if e != Errno::ESRCH {
            tracing::warn!(pid = id.pid, %sig, error = %e, "signalling QEMU failed");
        }
    }
}

/// Seconds since the host booted (`/proc/uptime`).
pub(crate) fn uptime_secs() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime").ok()?.split_whitespace().next()?.parse().ok()
}

/// How long ago (in seconds) the process `id` started, from its start time and the uptime.
pub(crate) fn age_secs(id: ProcId) -> Option<f64> {
    Some((uptime_secs()? - id.start as f64 / clock_ticks() as f64).max(0.0))
}

/// The host's boot id (`/proc/sys/kernel/random/boot_id`): new on every boot, so a recorded
/// one tells "QEMU crashed" (same boot) from "the host rebooted" (another boot).
pub(crate) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Who holds a port: /proc/net/tcp{,6} for the listening socket's inode, then /proc/*/fd.

/// `/proc/net/tcp` state of a listening socket.
const TCP_LISTEN: &str = "0A";

/// One socket line of `/proc/net/tcp` or `/proc/net/tcp6`: local address, port, state, inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TcpEntry {
    pub addr: std::net::IpAddr,
    pub port: u16,
    pub state: String,
    pub inode: u64,
}

/// Parses `/proc/net/tcp` (IPv4) or `/proc/net/tcp6` contents. Addresses are printed as
/// 32-bit words in host byte order, so their bytes are those of each word in native order.
pub(crate) fn parse_net_tcp(text: &str) -> Vec<TcpEntry> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (addr_hex, port_hex) = f.get(1)?.split_once(':')?;
            let port = u16::from_str_radix(port_hex, 16).ok()?;
            let mut bytes = Vec::with_capacity(16);
            for i in (0..addr_hex.len()).step_by(8) {
                let word = u32::from_str_radix(addr_hex.get(i..i + 8)?, 16).ok()?;
                bytes.extend_from_slice(&word.to_ne_bytes());
            }
            let addr = match bytes.len() {
                4 => std::net::IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
                16 => {
                    let b: [u8; 16] = bytes.try_into().ok()?;
                    std::net::IpAddr::V6(Ipv6Addr::from(b))
                }
                _ => return None,
            };
            Some(TcpEntry { addr, port, state: f.get(3)?.to_string(), inode: f.get(9)?.parse().ok()? })
        })
        .collect()
}

/// Whether a listener on `entry` keeps `addr:port` from being bound: the same address, or a
/// wildcard (IPv4 `0.0.0.0`, IPv6 `::`, or `addr` mapped into IPv6).
fn blocks(entry: &TcpEntry, addr: Ipv4Addr, port: u16) -> bool {
    if entry.port != port || entry.state != TCP_LISTEN {
        return false;
    }
    match entry.addr {
        std::net::IpAddr::V4(a) => a == addr || a.is_unspecified(),
        std::net::IpAddr::V6(a) => a.is_unspecified() || a.to_ipv4_mapped() == Some(addr),
    }
}

/// The process holding a listening socket that blocks `addr:port`: `(pid, comm)`, if one is
/// visible from here.
pub(crate) fn port_holder(addr: Ipv4Addr, port: u16) -> Option<(u32, String)> {
    let mut inodes = HashSet::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        inodes.extend(parse_net_tcp(&text).into_iter().filter(|e| blocks(e, addr, port)).map(|e| e.inode));
    }
    inodes.remove(&0);
    if inodes.is_empty() {
        return None;
    }
    let wanted: HashSet<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            if wanted.contains(target.to_string_lossy().as_ref()) {
                return Some((pid, read_comm(pid).unwrap_or_else(|| "?".into())));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_name_the_instance() {
        let prefix = "herd:0123456789abcdef:";
        let argv = b"/usr/bin/qemu-system-x86_64\0-machine\0pc\0-name\0herd:0123456789abcdef:g(1)/web.set/12\0-m\0x\0";
        let key = marker_key(argv, prefix).unwrap();
        assert_eq!(key.path(), "g(1)/web.set/12");
        // Another tag, another driver: not ours.
        assert!(marker_key(argv, "herd:fedcba9876543210:").is_none());
        // Options after the name, and a marker that is not the -name value.
        let with_opts = b"qemu\0-name\0herd:0123456789abcdef:g/s/3,debug-threads=on\0";
        assert_eq!(marker_key(with_opts, prefix).unwrap().path(), "g/s/3");
        assert!(marker_key(b"sh\0-c\0-name herd:0123456789abcdef:g/s/3\0", prefix).is_none());
        assert!(marker_key(b"qemu\0-name\0herd:0123456789abcdef:not-a-key\0", prefix).is_none());
        assert!(marker_key(b"qemu\0-name\0", prefix).is_none());
    }

    #[test]
    fn net_tcp_lines_parse_and_wildcards_block() {
        // 127.200.4.1:80 listening (inode 111), 0.0.0.0:8080 listening, an established socket.
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0104C87F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0\n\
   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 100 0 0 10 0\n\
   2: 0100007F:0050 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0000000000000000 100 0 0 10 0\n";
        let entries = parse_net_tcp(v4);
        assert_eq!(entries.len(), 3);
        let a: Ipv4Addr = "127.200.4.1".parse().unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(entries[0].addr, std::net::IpAddr::V4(a));
        }
        assert_eq!((entries[0].port, entries[0].inode, entries[0].state.as_str()), (80, 111, "0A"));
        assert!(blocks(&entries[0], a, 80));
        assert!(!blocks(&entries[0], a, 81));
        assert!(blocks(&entries[1], a, 8080), "a wildcard listener blocks every address");
        assert!(!blocks(&entries[2], "127.0.0.1".parse().unwrap(), 80), "not listening");
        // IPv6 wildcard (::) on port 80.
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 444 1 0000000000000000 100 0 0 10 0\n";
        let e6 = parse_net_tcp(v6);
        assert_eq!(e6.len(), 1);
        assert!(blocks(&e6[0], a, 80));
    }

    #[test]
    fn the_holder_of_a_real_listener_is_found() {
        let l = std::net::TcpListener::bind("127.200.254.7:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (pid, comm) = port_holder("127.200.254.7".parse().unwrap(), port).expect("holder");
        assert_eq!(pid, std::process::id());
        assert!(!comm.is_empty());
        assert!(port_holder("127.200.254.8".parse().unwrap(), port).is_none());
    }

    #[test]
    fn own_age_and_boot_id_are_readable() {
        let me = std::process::id();
        let st = read_stat(me).unwrap();
        assert!(age_secs(ProcId { pid: me, start: st.starttime }).unwrap() >= 0.0);
        assert_eq!(boot_id().len(), 36);
    }
}
