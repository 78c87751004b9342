//! Reading `/proc`: which process a recorded pid still is, what it costs, whether it is gone.
//!
//! Processes vanish while we read, so every reader returns `Option`; nothing here panics on odd
//! contents. A process is named by its pid *and* start time ([`ProcId`]), so a reused pid is
//! never taken for the recorded process.

use std::sync::OnceLock;

/// A process as identified across time: pid plus its start time (field 22 of `stat`, in clock
/// ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ProcId {
    pub pid: u32,
    pub start: u64,
}

impl ProcId {
    /// `"<pid> <starttime>"`, as the drivers' `pid` files hold it.
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split_whitespace();
        let pid = it.next()?.parse().ok()?;
        let start = it.next()?.parse().ok()?;
        Some(Self { pid, start })
    }

    /// The [`ProcId::parse`] format, with a newline.
    pub fn render(self) -> String {
        format!("{} {}\n", self.pid, self.start)
    }
}

/// The fields of `/proc/<pid>/stat` the drivers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub state: char,
    pub ppid: u32,
    pub pgrp: i64,
    pub session: i64,
    pub utime: u64,
    pub stime: u64,
    pub starttime: u64,
}

impl ProcStat {
    /// A zombie (`Z`) or dead (`X`) entry.
    pub fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }

    pub fn is_group_leader(&self) -> bool {
        i64::from(self.pid) == self.pgrp
    }
}

/// Parses one `stat` line. The command name (field 2) is in parentheses and may itself hold
/// spaces and parentheses, so the fields after it are found from the *last* `)`.
pub fn parse_stat(s: &str) -> Option<ProcStat> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    if close < open {
        return None;
    }
    let pid = s[..open].trim().parse().ok()?;
    // Fields from 3 (state) on; index = field number - 3.
    let rest: Vec<&str> = s.get(close + 1..)?.split_whitespace().collect();
    let field = |n: usize| rest.get(n - 3).copied();
    Some(ProcStat {
        pid,
        state: field(3)?.chars().next()?,
        ppid: field(4)?.parse().ok()?,
        pgrp: field(5)?.parse().ok()?,
        session: field(6)?.parse().ok()?,
        utime: field(14)?.parse().ok()?,
        stime: field(15)?.parse().ok()?,
        starttime: field(22)?.parse().ok()?,
    })
}

/// `/proc/<pid>/stat`, if the process exists.
pub fn read_stat(pid: u32) -> Option<ProcStat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&s).filter(|p| p.pid == pid)
}

/// Whether `id` is gone: exited with all its threads (a zombie left for its parent to reap
/// counts), or its pid now belongs to another process.
///
/// A zombie *leader* is not enough: when a process is killed, its main thread may be a zombie
/// while another thread still finishes disk I/O, and until that thread exits the process keeps
/// its files open (a QEMU keeps its qcow2 locks: a second QEMU on the same disks then fails
/// with `Failed to get "write" lock`).
pub fn is_gone(id: ProcId) -> bool {
    match read_stat(id.pid) {
        Some(st) if st.starttime == id.start => st.is_zombie() && !other_threads_left(id.pid),
        _ => true,
    }
}

/// Whether `/proc/<pid>/task` lists a thread besides the leader (threads that exit leave the
/// list at once; a zombie leader stays in it until reaped).
pub fn other_threads_left(pid: u32) -> bool {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).any(|tid| tid != pid)
}

/// Resident memory of one process in bytes (`statm` field 2 × page size).
pub fn read_rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(page_size()))
}

/// Resident memory page size, from `sysconf` (4096 when unknown).
pub fn page_size() -> u64 {
    static V: OnceLock<u64> = OnceLock::new();
    *V.get_or_init(|| sysconf_or(nix::unistd::SysconfVar::PAGE_SIZE, 4096))
}

/// Clock ticks per second for `stat` times, from `sysconf` (100 when unknown).
pub fn clock_ticks() -> u64 {
    static V: OnceLock<u64> = OnceLock::new();
    *V.get_or_init(|| sysconf_or(nix::unistd::SysconfVar::CLK_TCK, 100))
}

fn sysconf_or(var: nix::unistd::SysconfVar, default: u64) -> u64 {
    match nix::unistd::sysconf(var) {
        Ok(Some(v)) if v > 0 => u64::try_from(v).unwrap_or(default),
        _ => default,
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
    fn stat_parses_odd_command_names() {
        let p = parse_stat(&stat_line(42, "we ird) (name", 'S', 40, 12345)).unwrap();
        assert_eq!(
            p,
            ProcStat { pid: 42, state: 'S', ppid: 1, pgrp: 40, session: 40, utime: 7, stime: 5, starttime: 12345 }
        );
        assert!(!p.is_group_leader());
        assert!(parse_stat("").is_none());
        assert!(parse_stat("12 (x) S 1 2").is_none());
        assert!(parse_stat(") 12 (x").is_none());
        assert!(parse_stat("abc (x) S 1 2 2 0 -1 0 0 0 0 0 1 1 0 0 0 0 1 0 9").is_none());
    }

    #[test]
    fn pid_file_round_trips() {
        let id = ProcId { pid: 10, start: 99 };
        assert_eq!(ProcId::parse(&id.render()), Some(id));
        assert_eq!(ProcId::parse("10"), None);
        assert_eq!(ProcId::parse("x 1"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        let st = read_stat(me).unwrap();
        assert!(!is_gone(ProcId { pid: me, start: st.starttime }));
        assert!(is_gone(ProcId { pid: me, start: st.starttime + 1 }));
        assert!(read_rss_bytes(me).unwrap() > 0);
        assert!(clock_ticks() > 0);
    }

    /// Regression: a process whose main thread has exited while another thread runs shows its
    /// leader as a zombie, yet still holds its files (for QEMU: the disk locks). It is not
    /// gone until that thread ends too.
    #[test]
    fn a_zombie_leader_with_a_live_thread_is_not_gone() {
        // The main thread leaves with the raw `exit` syscall (that thread only); a second
        // thread sleeps on. Needs python3 (scripts/packages.txt).
        let code = "import ctypes, os, threading, time\n\
                    nr = {'x86_64': 60, 'aarch64': 93}[os.uname().machine]\n\
                    threading.Thread(target=time.sleep, args=(120,), daemon=True).start()\n\
                    ctypes.CDLL(None).syscall(nr, 0)\n";
        let mut child = std::process::Command::new("python3")
            .args(["-c", code])
            .spawn()
            .expect("python3 (apt-get install python3)");
        let pid = child.id();
        let wait_for = |what: &str, cond: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while !cond() {
                assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        };
        wait_for("the leader is a zombie", &|| read_stat(pid).is_some_and(|s| s.is_zombie()));
        let st = read_stat(pid).unwrap();
        let id = ProcId { pid, start: st.starttime };
        assert!(other_threads_left(pid), "the sleeping thread is still listed");
        assert!(!is_gone(id), "a zombie leader with a running thread is not gone");
        let _ = child.kill();
        wait_for("the last thread exited", &|| is_gone(id));
        let _ = child.wait();
        assert!(is_gone(id));
    }
}
