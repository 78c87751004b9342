//! Reading `/proc` and signalling process groups.
//!
//! Why: an instance is only a process group, and `/proc` is the one place that says whether that
//! group still lives, what it costs, and (through `environ`) which instance a stray process
//! belongs to. Processes vanish while we read, so every reader here returns `Option` and a scan
//! skips what it cannot read; nothing here panics on odd contents.
//!
//! Signals are only ever sent to a group after checking that the group is still ours (the
//! recorded start time matches), so a reused pid is never signalled.

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{getpgrp, Pid};
use std::collections::HashMap;
use std::path::Path;

pub(crate) use herd_driver::host::procfs::{clock_ticks, parse_stat, read_rss_bytes, read_stat, ProcId, ProcStat};

/// Bytes received and sent on every interface but loopback, from a `/proc/<pid>/net/dev` text.
/// `None` when no line could be read (an empty or unknown format): no data, not zero.
pub(crate) fn parse_net_dev(text: &str) -> Option<(u64, u64)> {
    let mut total: Option<(u64, u64)> = None;
    // Two header lines, then `iface: rx_bytes rx_packets ... (8 fields) tx_bytes ...`.
    for line in text.lines().skip(2) {
        let Some((name, fields)) = line.split_once(':') else { continue };
        let f: Vec<u64> = fields.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        if f.len() < 16 {
            continue;
        }
        let (rx, tx) = total.get_or_insert((0, 0));
        if name.trim() == "lo" {
            continue;
        }
        *rx = rx.saturating_add(f[0]);
        *tx = tx.saturating_add(f[8]);
    }
    total
}

/// Network counters of `pid`'s network namespace, but only when it is not ours: in host-local
/// networking an instance shares the host's namespace and its interfaces' counters are the
/// host's, not the instance's, so there is no data.
pub(crate) fn read_own_netns_traffic(pid: u32) -> Option<(u64, u64)> {
    let ns = namespace(pid, "net")?;
    if Some(&ns) == own_namespace("net").as_ref() {
        return None;
    }
    parse_net_dev(&std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok()?)
}

/// Every process that can be read right now. Entries that vanish mid-scan are skipped.
pub(crate) fn scan() -> Vec<ProcStat> {
    scan_dir(Path::new("/proc"))
}

fn scan_dir(proc_root: &Path) -> Vec<ProcStat> {
    let Ok(rd) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    rd.filter_map(|e| {
        let e = e.ok()?;
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let s = std::fs::read_to_string(e.path().join("stat")).ok()?;
        parse_stat(&s).filter(|p| p.pid == pid)
    })
    .collect()
}

/// The two variables that tie a process to this driver and to one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HerdEnv {
    pub tag: Option<String>,
    pub key: Option<String>,
}

/// Extracts `HERD_DRIVER_TAG` and `HERD_INSTANCE_KEY` from an `environ` blob (NUL-separated).
pub(crate) fn parse_environ(blob: &[u8]) -> HerdEnv {
    let mut env = HerdEnv::default();
    for entry in blob.split(|b| *b == 0) {
        if let Some(v) = entry.strip_prefix(b"HERD_DRIVER_TAG=") {
            env.tag = Some(String::from_utf8_lossy(v).into_owned());
        } else if let Some(v) = entry.strip_prefix(b"HERD_INSTANCE_KEY=") {
            env.key = Some(String::from_utf8_lossy(v).into_owned());
        }
    }
    env
}

/// Every readable process whose environment carries `HERD_DRIVER_TAG=<tag>`: how the
/// benchmarks and the walkthrough runner find the process instances a data dir left behind.
/// (One read per process: a process caught mid-`exec` is missed, and found by the next scan.)
pub fn tagged_pids(tag: &str) -> Vec<u32> {
    scan()
        .into_iter()
        .filter(|p| {
            let blob = std::fs::read(format!("/proc/{}/environ", p.pid)).unwrap_or_default();
            parse_environ(&blob).tag.as_deref() == Some(tag)
        })
        .map(|p| p.pid)
        .collect()
}

/// The herd variables of a process. `environ` reads empty while the process is in the middle of
/// an `exec` (the file holds the old, released address space), and an instance's leader execs
/// up to three times as it starts (`unshare`, `sh`, `init`), so an empty read is retried.
pub(crate) fn read_herd_env(pid: u32) -> Option<HerdEnv> {
    let path = format!("/proc/{pid}/environ");
    for attempt in 0..4 {
        let blob = std::fs::read(&path).ok()?;
        if !blob.is_empty() {
            return Some(parse_environ(&blob));
        }
        if attempt < 3 {
            std::thread::sleep(std::time::Duration::from_micros(500));
        }
    }
    Some(HerdEnv::default())
}

/// One `/proc` scan, indexed for the questions the driver asks of it.
pub(crate) struct Snapshot {
    pub procs: Vec<ProcStat>,
    by_pid: HashMap<u32, usize>,
    by_pgrp: HashMap<i64, Vec<usize>>,
}

impl Snapshot {
    pub fn take() -> Self {
        Self::from_procs(scan())
    }

    pub fn from_procs(procs: Vec<ProcStat>) -> Self {
        let mut by_pid = HashMap::with_capacity(procs.len());
        let mut by_pgrp: HashMap<i64, Vec<usize>> = HashMap::new();
        for (i, p) in procs.iter().enumerate() {
            by_pid.insert(p.pid, i);
            by_pgrp.entry(p.pgrp).or_default().push(i);
        }
        Self { procs, by_pid, by_pgrp }
    }

    pub fn get(&self, pid: u32) -> Option<&ProcStat> {
        self.by_pid.get(&pid).map(|i| &self.procs[*i])
    }

    /// Live (non-zombie) processes of the group started by `id`, leader included.
    pub fn members(&self, id: ProcId) -> Vec<&ProcStat> {
        let leader = self.get(id.pid);
        if leader.is_some_and(|l| l.starttime != id.start) {
            // The pid was reused, which the kernel only does once our group is gone.
            return Vec::new();
        }
        let mut out: Vec<&ProcStat> = self
            .by_pgrp
            .get(&i64::from(id.pid))
            .into_iter()
            .flatten()
            .map(|i| &self.procs[*i])
            .filter(|p| !p.is_zombie() && p.starttime >= id.start)
            .collect();
        // A leader that moved itself to another group is still the instance's init.
        if let Some(l) = leader.filter(|l| !l.is_zombie() && !l.is_group_leader()) {
            out.push(l);
        }
        out
    }

    pub fn group_alive(&self, id: ProcId) -> bool {
        !self.members(id).is_empty()
    }

    /// `root` (if it is still the process started at `root.start`) and every live process
    /// descending from it through parent pids. A process whose parent exited was reparented
    /// (to pid 1 or a subreaper) and is no longer found.
    pub fn descendants(&self, root: ProcId) -> Vec<&ProcStat> {
        let Some(r) = self.get(root.pid).filter(|r| r.starttime == root.start) else {
            return Vec::new();
        };
        let mut children: HashMap<u32, Vec<&ProcStat>> = HashMap::new();
        for p in &self.procs {
            children.entry(p.ppid).or_default().push(p);
        }
        let mut out = vec![r];
        let mut i = 0;
        while i < out.len() {
            let pid = out[i].pid;
            // A child starts after its parent; anything else is a stale entry of a reused pid.
            out.extend(children.get(&pid).into_iter().flatten().filter(|c| c.starttime >= root.start && c.pid != pid));
            i += 1;
        }
        out.retain(|p| !p.is_zombie());
        out
    }
}

/// The namespace `kind` (`uts`, `net`, …) of a process as the kernel names it
/// (`uts:[4026531838]`); `None` if it cannot be read (gone, a zombie, no permission).
pub(crate) fn namespace(pid: u32, kind: &str) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok()
}

/// Our own namespace `kind`.
pub(crate) fn own_namespace(kind: &str) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/self/ns/{kind}")).ok()
}

/// Whether the group started by `id` has a live process. Cheap when the leader is alive or the
/// group is empty; scans `/proc` only when just zombies or stray members might remain.
pub(crate) fn group_alive(id: ProcId) -> bool {
    if id.pid <= 1 {
        return false;
    }
    match read_stat(id.pid) {
        Some(l) if l.starttime != id.start => return false,
        Some(l) if !l.is_zombie() => return true,
        _ => {}
    }
    if killpg(Pid::from_raw(id.pid as i32), None) == Err(Errno::ESRCH) {
        return false;
    }
    Snapshot::take().group_alive(id)
}

/// [`group_alive`] for a caller waiting for a group it signalled to go: a leader that is a
/// zombie *of ours* counts as not gone yet, since our exit watcher reaps it within moments, and
/// then the group is known gone by one `killpg` instead of a scan of every process in `/proc`.
/// (A thousand instances stopping at once made each poll of each of them such a scan.) A
/// zombie of our spawner (whose parent is us) counts the same: the spawner reaps it at once.
pub(crate) fn group_alive_until_reaped(id: ProcId) -> bool {
    let me = std::process::id();
    match read_stat(id.pid) {
        Some(l)
            if l.starttime == id.start
                && l.is_zombie()
                && (l.ppid == me || read_stat(l.ppid).is_some_and(|p| p.ppid == me)) =>
        {
            true
        }
        _ => group_alive(id),
    }
}

/// Sends `sig` to the group started by `id`, if that group is still ours. Never signals pid 0
/// or 1, nor our own group.
pub(crate) fn signal_group(id: ProcId, sig: Signal) {
    let Ok(raw) = i32::try_from(id.pid) else { return };
    if raw <= 1 || Pid::from_raw(raw) == getpgrp() {
        return;
    }
    let leader = read_stat(id.pid);
    if leader.is_some_and(|l| l.starttime != id.start) {
        return;
    }
    if let Err(e) = killpg(Pid::from_raw(raw), sig) {
        if e != Errno::ESRCH {
            tracing::warn!(pid = id.pid, %sig, error = %e, "signalling process group failed");
        }
    }
    // A leader that left its group (setsid) is signalled directly.
    if leader.is_some_and(|l| !l.is_group_leader() && !l.is_zombie()) {
        let _ = kill(Pid::from_raw(raw), sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_line(pid: u32, comm: &str, state: char, pgrp: i64, start: u64) -> String {
        // Fields 1..=22 with utime=7, stime=5.
        format!("{pid} ({comm}) {state} 1 {pgrp} {pgrp} 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 {start} 1000 50")
    }

    #[test]
    fn environ_finds_herd_vars() {
        let env = parse_environ(b"PATH=/bin\0HERD_DRIVER_TAG=t1\0HERD_INSTANCE_KEY=g/s/1\0X=HERD_DRIVER_TAG=no\0");
        assert_eq!(env, HerdEnv { tag: Some("t1".into()), key: Some("g/s/1".into()) });
        assert_eq!(parse_environ(b""), HerdEnv::default());
    }

    #[test]
    fn snapshot_groups_ignore_zombies_and_reused_pids() {
        let procs = vec![
            parse_stat(&stat_line(100, "init", 'Z', 100, 50)).unwrap(),
            parse_stat(&stat_line(101, "sleep", 'S', 100, 51)).unwrap(),
            parse_stat(&stat_line(102, "dead", 'Z', 100, 52)).unwrap(),
            parse_stat(&stat_line(200, "other", 'S', 200, 90)).unwrap(),
        ];
        let snap = Snapshot::from_procs(procs);
        let members = snap.members(ProcId { pid: 100, start: 50 });
        assert_eq!(members.iter().map(|p| p.pid).collect::<Vec<_>>(), vec![101]);
        // Same pid, other start time: the group is not ours.
        assert!(!snap.group_alive(ProcId { pid: 200, start: 10 }));
        assert!(snap.group_alive(ProcId { pid: 200, start: 90 }));
        assert!(!snap.group_alive(ProcId { pid: 300, start: 1 }));
    }

    #[test]
    fn descendants_follow_parent_pids() {
        let line = |pid: u32, ppid: u32, state: char, start: u64| {
            format!("{pid} (p) {state} {ppid} 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 1000 50")
        };
        let procs = [
            line(10, 1, 'S', 100),
            line(11, 10, 'S', 101),
            line(12, 11, 'S', 102),
            line(13, 11, 'Z', 103),
            line(14, 1, 'S', 104),
            // A stale entry: its parent's pid was reused after it started.
            line(15, 10, 'S', 50),
        ];
        let snap = Snapshot::from_procs(procs.iter().map(|l| parse_stat(l).unwrap()).collect());
        let mut pids: Vec<u32> = snap.descendants(ProcId { pid: 10, start: 100 }).iter().map(|p| p.pid).collect();
        pids.sort();
        assert_eq!(pids, vec![10, 11, 12]);
        assert!(snap.descendants(ProcId { pid: 10, start: 99 }).is_empty());
        assert!(snap.descendants(ProcId { pid: 99, start: 1 }).is_empty());
    }

    #[test]
    fn net_dev_sums_every_interface_but_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  5000      50    0    0    0     0          0         0     5000      50    0    0    0     0       0          0
  eth0: 1200      10    0    0    0     0          0         0      800       9    0    0    0     0       0          0
  eth1:  300       3    0    0    0     0          0         0      100       1    0    0    0     0       0          0
";
        assert_eq!(parse_net_dev(text), Some((1500, 900)));
        let only_lo = text.lines().take(3).collect::<Vec<_>>().join("\n");
        assert_eq!(parse_net_dev(&only_lo), Some((0, 0)), "a namespace with only loopback sent nothing");
        assert_eq!(parse_net_dev(""), None, "nothing readable is no data");
        // Our own namespace is the host's: no per-instance data there.
        assert_eq!(read_own_netns_traffic(std::process::id()), None);
    }

    #[test]
    fn a_process_in_its_own_network_namespace_has_its_own_counters() {
        // As a bridged instance: a namespace of its own (here with loopback only, so it has
        // sent nothing: zero, which is data). Needs root; skipped otherwise.
        let Ok(mut child) = std::process::Command::new("unshare")
            .args(["--net", "--", "sleep", "30"])
            .stderr(std::process::Stdio::null())
            .spawn()
        else {
            return;
        };
        let pid = child.id();
        let mut got = None;
        for _ in 0..100 {
            got = read_own_netns_traffic(pid);
            if got.is_some() || child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let exited = child.try_wait().ok().flatten();
        let _ = child.kill();
        let _ = child.wait();
        if exited.is_some() {
            return; // unshare refused (not root)
        }
        assert_eq!(got, Some((0, 0)));
    }

    #[test]
    fn our_zombie_leader_counts_as_alive_until_reaped() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("/bin/true").process_group(0).spawn().unwrap();
        let pid = child.id();
        let id = ProcId { pid, start: read_stat(pid).unwrap().starttime };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !read_stat(pid).is_some_and(|s| s.is_zombie()) {
            assert!(std::time::Instant::now() < deadline, "the child never became a zombie");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!group_alive(id), "a zombie is not a live member");
        assert!(group_alive_until_reaped(id), "ours, not reaped yet");
        child.wait().unwrap();
        assert!(!group_alive_until_reaped(id) && !group_alive(id));
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        let s = read_stat(me).unwrap();
        assert_eq!(s.pid, me);
        assert!(read_rss_bytes(me).unwrap() > 0);
        assert!(scan().iter().any(|p| p.pid == me));
        assert!(!group_alive(ProcId { pid: 0, start: 0 }));
        assert!(!group_alive(ProcId { pid: me, start: s.starttime + 1 }));
    }
}
