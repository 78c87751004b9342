//! `herd bench lb --lb-cpu F`: the same CPU budget for each load balancer under test, so that
//! the load balancer, not the load, limits the throughput.
//!
//! Why: on the standard two-CPU machine the load balancer gets one CPU and `wrk` and both
//! backends share the other. `mpstat -P ALL 1` during the rounds shows that other CPU 97–99 %
//! busy, so both load balancers are fed about the same request rate whatever each costs per
//! request, and a cheaper data plane shows only as CPU per request, not as requests per second
//! or p99. With a budget below what the load asks of it, each load balancer serves what its
//! budget buys: requests per second ≈ budget ÷ CPU per request, and waiting for its CPU shows
//! in p99.
//!
//! How: one cgroup per load balancer (`herd-bench-lb-<pid>-herd` and `…-haproxy`), side by
//! side under the bench's own cgroup, each with quota F × period over a short period
//! ([`PERIOD_US`], 10 ms, so that a throttled load balancer waits at most a few milliseconds
//! and throttling does not dominate p99). HAProxy's process and the bench's own process (herd's
//! server and data plane run in it; its control plane is idle during the rounds, and it spends
//! its budget too) are moved in after the backends started, so the backends stay outside. `wrk`
//! is started by the bench but must not share the budget: it moves itself back to the bench's
//! original cgroup before it `exec`s ([`Budget::wrk_prefix`]). Both load balancers therefore
//! get exactly the same budget, the same period and the same pinning.
//!
//! Where: cgroup v1 with the `cpu` controller (`cpu.cfs_period_us`, `cpu.cfs_quota_us`) or
//! cgroup v2 with `cpu` delegated to the bench's cgroup (`cpu.max`); anything else fails with
//! what is missing. The cgroups are created by the outer bench (the one that also owns the
//! network namespace) and removed when it ends, also after a failure of the inner one. The
//! inner bench reaches them through `/proc/<outer pid>/root/...`: `ip netns exec` gives it a
//! fresh `/sys` without the cgroup file systems.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The CFS period of the budget, in microseconds.
pub const PERIOD_US: u64 = 10_000;

/// Which cgroup interface holds the `cpu` controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    V1,
    V2,
}

/// The two budgeted cgroups and where the rest stays. Created by [`Budget::create`], found
/// again by the inner bench with [`Budget::at`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// The cgroup the bench started in; `wrk` goes back there.
    pub home: PathBuf,
    /// herd's side: the bench's own process.
    pub herd: PathBuf,
    pub haproxy: PathBuf,
}

impl Budget {
    /// The two cgroups of prefix `prefix` (`<home>/herd-bench-lb-<pid>`), as the inner bench
    /// is told with `--lb-cgroups`.
    pub fn at(prefix: &Path) -> Result<Budget> {
        let home = prefix.parent().context("--lb-cgroups has no parent directory")?.to_path_buf();
        let name = prefix.file_name().and_then(|n| n.to_str()).context("--lb-cgroups has no name")?;
        let b = Budget { herd: home.join(format!("{name}-herd")), haproxy: home.join(format!("{name}-haproxy")), home };
        for dir in [&b.herd, &b.haproxy] {
            if !dir.join("cgroup.procs").exists() {
                bail!("no cgroup at {}", dir.display());
            }
        }
        Ok(b)
    }

    /// Creates both cgroups with `fraction` of a CPU each; they are removed when the returned
    /// guard is dropped. The prefix to pass to the inner bench is [`Guard::prefix_from_elsewhere`].
    pub fn create(fraction: f64) -> Result<Guard> {
        let quota = quota_us(fraction)?;
        let (kind, home) = find_home()?;
        let prefix = home.join(format!("herd-bench-lb-{}", std::process::id()));
        let budget = Budget::at_unchecked(&prefix, home);
        let mut guard = Guard { budget, prefix, made: Vec::new() };
        for dir in [guard.budget.herd.clone(), guard.budget.haproxy.clone()] {
            std::fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
            guard.made.push(dir.clone());
            match kind {
                Kind::V1 => {
                    write(&dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                    write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
                Kind::V2 => write(&dir.join("cpu.max"), &format!("{quota} {PERIOD_US}"))?,
            }
        }
        Ok(guard)
    }

    fn at_unchecked(prefix: &Path, home: PathBuf) -> Budget {
        let name = prefix.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        Budget { herd: home.join(format!("{name}-herd")), haproxy: home.join(format!("{name}-haproxy")), home }
    }

    /// Moves process `pid` (all its threads) into cgroup `dir`.
    pub fn enter(dir: &Path, pid: u32) -> Result<()> {
        write(&dir.join("cgroup.procs"), &pid.to_string())
    }

    /// A shell prefix for a command started from inside a budget that must run outside it:
    /// `sh -c 'echo $$ > HOME/cgroup.procs && exec "$@"' sh`, then the command.
    pub fn wrk_prefix(&self) -> Vec<String> {
        let procs = self.home.join("cgroup.procs");
        let script = format!("echo $$ > '{}' && exec \"$@\"", procs.display());
        vec!["sh".into(), "-c".into(), script, "sh".into()]
    }
}

/// The budget's cgroups; removes them when dropped (moving anything left in them home first).
pub struct Guard {
    pub budget: Budget,
    prefix: PathBuf,
    made: Vec<PathBuf>,
}

impl Guard {
    /// What the inner bench gets as `--lb-cgroups`: the prefix as seen through this
    /// process's root (`/proc/<pid>/root/...`), because `ip netns exec` mounts a fresh `/sys`
    /// for the inner bench, without the cgroup file systems.
    pub fn prefix_from_elsewhere(&self) -> PathBuf {
        let root = PathBuf::from(format!("/proc/{}/root", std::process::id()));
        root.join(self.prefix.strip_prefix("/").unwrap_or(&self.prefix))
    }

    /// Whether throttling happened: (periods, throttled periods) of each cgroup, from `cpu.stat`.
    pub fn throttled(&self) -> Vec<(u64, u64)> {
        self.made.iter().map(|d| throttling(d)).collect()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines() {
                let _ = write(&self.budget.home.join("cgroup.procs"), pid);
            }
            if let Err(e) = std::fs::remove_dir(dir) {
                eprintln!("herd bench lb: could not remove cgroup {}: {e}", dir.display());
            }
        }
    }
}

/// (periods, throttled periods) from a cgroup's `cpu.stat`.
fn throttling(dir: &Path) -> (u64, u64) {
    let stat = std::fs::read_to_string(dir.join("cpu.stat")).unwrap_or_default();
    let field =
        |name: &str| stat.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0);
    // Both interfaces name these two fields the same.
    (field("nr_periods "), field("nr_throttled "))
}

/// The quota for `fraction` of a CPU over [`PERIOD_US`]; the kernel takes 1 ms at least.
fn quota_us(fraction: f64) -> Result<u64> {
    if !(fraction.is_finite() && fraction > 0.0 && fraction <= 64.0) {
        bail!("--lb-cpu {fraction}: expected a share of a CPU, e.g. 0.5 (more than 0, at most 64)");
    }
    let quota = (fraction * PERIOD_US as f64).round() as u64;
    if quota < 1000 {
        bail!("--lb-cpu {fraction}: the quota would be {quota} µs per {PERIOD_US} µs; the kernel's minimum is 1000 µs (use at least 0.1)");
    }
    Ok(quota)
}

/// Where the budget's cgroups go: the bench's own cgroup in the hierarchy that has the `cpu`
/// controller (cgroup v1's `cpu`, else cgroup v2 with `cpu` enabled for children).
fn find_home() -> Result<(Kind, PathBuf)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let own = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let mounts = cgroup_mounts(&mountinfo);
    if let Some((_, mount)) = mounts.iter().find(|(fs, _)| has_cpu(fs)) {
        let path = own_path(&own, |controllers| controllers.split(',').any(|c| c == "cpu")).unwrap_or_default();
        let home = within(mount, &path);
        if !home.join("cpu.cfs_quota_us").exists() {
            bail!(
                "cgroup v1's cpu controller is mounted at {} but {} has no cpu.cfs_quota_us",
                mount.display(),
                home.display()
            );
        }
        return Ok((Kind::V1, home));
    }
    let Some((_, mount)) = mounts.iter().find(|(fs, _)| fs == "v2") else {
        bail!("--lb-cpu needs a cgroup `cpu` controller: neither cgroup v1's `cpu` nor cgroup v2 is mounted (/proc/self/mountinfo)");
    };
    let path = own_path(&own, str::is_empty).unwrap_or_default();
    let home = within(mount, &path);
    let controllers = std::fs::read_to_string(home.join("cgroup.controllers")).unwrap_or_default();
    if !controllers.split_whitespace().any(|c| c == "cpu") {
        bail!(
            "--lb-cpu needs the cpu controller in cgroup v2 at {}: its cgroup.controllers ({}) lacks `cpu` (delegate it from the parent's cgroup.subtree_control)",
            home.display(),
            controllers.trim()
        );
    }
    let subtree = home.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&subtree).unwrap_or_default();
    if !enabled.split_whitespace().any(|c| c == "cpu") {
        write(&subtree, "+cpu").with_context(|| {
            format!(
                "--lb-cpu: enabling the cpu controller for children of {} (cgroup v2 allows it only in a cgroup without processes of its own, or the root; run the bench from a cgroup that delegates `cpu`)",
                home.display()
            )
        })?;
    }
    Ok((Kind::V2, home))
}

/// Whether a mount of [`cgroup_mounts`] is cgroup v1 with the `cpu` controller.
fn has_cpu(fs: &str) -> bool {
    fs.strip_prefix("v1:").is_some_and(|c| c.split(',').any(|c| c == "cpu"))
}

/// `mount` joined with a cgroup path from `/proc/self/cgroup`; the mount itself when that
/// path is not visible under it (another cgroup namespace).
fn within(mount: &Path, path: &str) -> PathBuf {
    let inner = mount.join(path.trim_start_matches('/'));
    if inner.is_dir() {
        inner
    } else {
        mount.to_path_buf()
    }
}

/// The cgroup mounts in `/proc/self/mountinfo`: ("v1:<super options>" or "v2", mount point).
fn cgroup_mounts(mountinfo: &str) -> Vec<(String, PathBuf)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            let mut r = right.split_whitespace();
            let fstype = r.next()?;
            let _source = r.next()?;
            let options = r.next().unwrap_or_default();
            match fstype {
                "cgroup2" => Some(("v2".to_string(), PathBuf::from(mount_point))),
                "cgroup" => {
                    let controllers: Vec<&str> =
                        options.split(',').filter(|o| !matches!(*o, "rw" | "ro") && !o.contains('=')).collect();
                    Some((format!("v1:{}", controllers.join(",")), PathBuf::from(mount_point)))
                }
                _ => None,
            }
        })
        .collect()
}

/// This process's path in the hierarchy whose controller list (the second field of a
/// `/proc/self/cgroup` line) satisfies `pick`.
fn own_path(own: &str, pick: impl Fn(&str) -> bool) -> Option<String> {
    own.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_id, controllers, path) = (f.next()?, f.next()?, f.next()?);
        pick(controllers).then(|| path.to_string())
    })
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value} to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
35 25 0:30 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
36 35 0:31 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
37 35 0:32 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
38 35 0:33 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
39 35 0:34 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn cgroup_mounts_are_found_with_their_controllers() {
        let m = cgroup_mounts(MOUNTINFO);
        assert_eq!(
            m,
            vec![
                ("v1:cpu".to_string(), PathBuf::from("/sys/fs/cgroup/cpu")),
                ("v1:cpuacct".to_string(), PathBuf::from("/sys/fs/cgroup/cpuacct")),
                ("v1:".to_string(), PathBuf::from("/sys/fs/cgroup/systemd")),
                ("v2".to_string(), PathBuf::from("/sys/fs/cgroup/unified")),
            ]
        );
        assert!(has_cpu("v1:cpu,cpuacct") && !has_cpu("v1:cpuacct") && !has_cpu("v1:cpuset") && !has_cpu("v2"));
    }

    #[test]
    fn own_cgroup_path_per_hierarchy() {
        let own = "4:memory:/a/b\n1:cpu,cpuacct:/bench\n0::/user.slice/x\n";
        assert_eq!(own_path(own, |c| c.split(',').any(|c| c == "cpu")).as_deref(), Some("/bench"));
        assert_eq!(own_path(own, str::is_empty).as_deref(), Some("/user.slice/x"));
        assert_eq!(own_path("1:cpuset:/\n", |c| c == "cpu"), None);
    }

    #[test]
    fn the_quota_is_the_share_of_the_period_and_nonsense_is_refused() {
        assert_eq!(quota_us(0.5).unwrap(), 5000);
        assert_eq!(quota_us(1.0).unwrap(), PERIOD_US);
        for bad in [0.0, -1.0, f64::NAN, 0.05, 100.0] {
            assert!(quota_us(bad).unwrap_err().to_string().contains("--lb-cpu"), "{bad}");
        }
    }

    /// On a machine with a usable `cpu` controller (as root): both cgroups get the quota, a
    /// process moved in is moved home again and the cgroups are gone after the guard. Elsewhere
    /// the error says what is missing.
    #[test]
    fn a_budget_gets_its_quota_and_is_removed_with_what_was_in_it() {
        let guard = match Budget::create(0.5) {
            Ok(g) => g,
            Err(e) => {
                let msg = format!("{e:#}");
                assert!(msg.contains("cgroup") || msg.contains("cpu"), "unclear error: {msg}");
                return;
            }
        };
        let b = guard.budget.clone();
        let seen = Budget::at(&guard.prefix_from_elsewhere()).unwrap();
        assert!(seen.herd.join("cgroup.procs").exists() && seen.herd.starts_with("/proc"), "{seen:?}");
        for dir in [&b.herd, &b.haproxy] {
            let v1 = std::fs::read_to_string(dir.join("cpu.cfs_quota_us"));
            let v2 = std::fs::read_to_string(dir.join("cpu.max"));
            match (v1, v2) {
                (Ok(q), _) => {
                    assert_eq!(q.trim(), "5000");
                    let period = std::fs::read_to_string(dir.join("cpu.cfs_period_us")).unwrap();
                    assert_eq!(period.trim(), PERIOD_US.to_string());
                }
                (_, Ok(max)) => assert_eq!(max.trim(), format!("5000 {PERIOD_US}")),
                (Err(e), Err(_)) => panic!("no quota file in {}: {e}", dir.display()),
            }
        }
        let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        Budget::enter(&b.herd, child.id()).unwrap();
        let procs = std::fs::read_to_string(b.herd.join("cgroup.procs")).unwrap();
        assert!(procs.lines().any(|p| p == child.id().to_string()), "{procs}");
        drop(guard);
        let home = std::fs::read_to_string(b.home.join("cgroup.procs")).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(!b.herd.exists() && !b.haproxy.exists(), "cgroups left behind");
        assert!(home.lines().any(|p| p == child.id().to_string()), "the process was not moved home");
    }

    #[test]
    fn the_inner_bench_finds_both_cgroups_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("herd-bench-lb-7");
        assert!(Budget::at(&prefix).unwrap_err().to_string().contains("no cgroup at"));
        for side in ["herd", "haproxy"] {
            let d = dir.path().join(format!("herd-bench-lb-7-{side}"));
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("cgroup.procs"), "").unwrap();
        }
        let b = Budget::at(&prefix).unwrap();
        assert_eq!(b.home, dir.path());
        assert_eq!(b.herd, dir.path().join("herd-bench-lb-7-herd"));
        assert_eq!(b.haproxy, dir.path().join("herd-bench-lb-7-haproxy"));
        let p = b.wrk_prefix();
        assert_eq!(p[0], "sh");
        assert!(p[2].contains(&format!("{}/cgroup.procs", dir.path().display())), "{p:?}");
    }
}
