//! What this host has: vCPUs, memory and the free space of the agent's data dir, read from the
//! kernel each time (a host's memory or disk can change under a running agent).

use herd_model::host::HostCapacity;
use std::path::Path;

/// The host's capacity now; a value the kernel does not give is reported as 0.
pub fn measure(data_dir: &Path) -> HostCapacity {
    let vcpus = std::thread::available_parallelism().map_or(0, |n| n.get() as u32);
    let memory_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024);
    let disk_free_mib = nix::sys::statvfs::statvfs(data_dir)
        .map_or(0, |s| s.blocks_available().saturating_mul(s.fragment_size()) >> 20);
    HostCapacity { vcpus, memory_mib, disk_free_mib }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_machine_has_cpus_memory_and_disk() {
        let c = super::measure(std::path::Path::new("/"));
        assert!(c.vcpus >= 1 && c.memory_mib >= 256 && c.disk_free_mib > 0, "{c:?}");
    }
}
