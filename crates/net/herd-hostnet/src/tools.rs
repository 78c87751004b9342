//! The programs bridged networking runs, and the Debian packages that have them: what a
//! server checks before it picks bridged networking by default, and what the demo checks
//! before it plays on it.

use std::path::Path;

/// Each program, where Debian and Ubuntu put it, and its package.
const TOOLS: &[(&str, &[&str], &str)] = &[
    ("ip", &["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"], "iproute2"),
    ("nft", &["/usr/sbin/nft", "/sbin/nft"], "nftables"),
    ("dnsmasq", &["/usr/sbin/dnsmasq"], "dnsmasq-base"),
];

/// The programs that are missing, as `program (package)`; empty when all are there.
pub fn missing() -> Vec<String> {
    TOOLS
        .iter()
        .filter(|(_, paths, _)| !paths.iter().any(|p| Path::new(p).is_file()))
        .map(|(tool, _, package)| format!("{tool} ({package})"))
        .collect()
}
