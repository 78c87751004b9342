//! Issue 19's benchmarks of bridged networking, each next to its peer:
//!
//! - [`setup`] (`herd bench bridged-setup`): what bridging adds to creating and deleting a
//!   process instance, against the same set on host-local networking;
//! - [`vmnet`] (`herd bench vm-net`): TCP throughput between two VMs over herd's bridge,
//!   against two hand-run QEMUs on a hand-made bridge;
//! - the load balancer to private IPs is a backend placement of `herd bench lb`
//!   (`--backends bridged`, see [`crate::lb`]).
//!
//! Bridged networking changes the network it runs in (bridges, veths, TAPs, namespaces,
//! nftables, dnsmasq), so each of these runs itself again inside a network namespace it
//! creates and deletes ([`isolated`]), never in the root namespace. What only the inner bench
//! can name, its servers' instance namespaces, is removed by [`Leftovers`] when a run fails
//! or is interrupted; the outer one then kills whatever still runs in the bench's namespace
//! and deletes it.

pub mod across;
pub mod setup;
pub mod vmnet;

use crate::lb::isolate;
use anyhow::{bail, Result};
use herd_client::Client;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

/// How long an interrupted inner bench gets to remove its servers' leftovers.
const CLEANUP_GRACE: Duration = Duration::from_secs(60);

/// Fails unless this process is root: bridged networking needs it.
pub fn require_root(bench: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("herd bench {bench}: bridged networking needs root (network namespaces, bridges, nftables)");
    }
    Ok(())
}

/// Runs `herd <inner_args>` (the bench again, with `--inside`) in a network namespace made for
/// it (`herd-bench-<label>-<pid>`, deleted afterwards, also after an error or Ctrl-C).
pub async fn isolated(label: &str, inner_args: &[String]) -> Result<()> {
    let ns = isolate::Netns::create(label)?;
    eprintln!("herd bench: running in network namespace {}", ns.0);
    isolate::reexec_in(Some(ns), inner_args, None, CLEANUP_GRACE).await
}

/// Ctrl-C, as the inner bench sees it. The terminal interrupts the inner bench too (the outer
/// one gives it time to clean up, see [`isolated`]): it then stops the server it is using
/// before removing that server's [`Leftovers`], since a server left running would go on
/// creating what the clean-up just removed.
#[derive(Clone)]
pub struct Interrupt(tokio::sync::watch::Receiver<bool>);

impl Interrupt {
    /// Starts listening for Ctrl-C (for the rest of the process's life).
    pub fn listen() -> Interrupt {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                let _ = tx.send(true);
            }
        });
        Interrupt(rx)
    }

    /// Runs `fut` until it finishes or Ctrl-C arrives (also before this call); then it is
    /// dropped and this fails with "interrupted".
    pub async fn guard<T>(&self, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let mut rx = self.0.clone();
        tokio::select! {
            r = fut => r,
            _ = rx.wait_for(|interrupted| *interrupted) => bail!("interrupted"),
        }
    }
}

/// What a bridged server of the bench leaves if it stops half-way: its instance processes,
/// their network namespaces (named from the server's tag and the instance keys, so nobody
/// else's are touched) and its host-network state directory. Removed on drop.
pub struct Leftovers {
    pub data: PathBuf,
    /// The instance keys (`group/set/id`) the server may have given a namespace.
    pub keys: Vec<String>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        crate::kill_instances(&self.data);
        let Ok(dir) = self.data.canonicalize() else { return };
        let Some(tag) = herd_driver::tag::tag_of(&dir) else { return };
        for key in &self.keys {
            let ns = herd_driver_process::bridged_netns_name(&tag, key);
            let file = std::path::Path::new("/run/netns").join(&ns);
            if file.exists() {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &ns])
                    .stderr(std::process::Stdio::null())
                    .status();
                let _ = std::fs::remove_file(&file);
            }
        }
        let _ = std::fs::remove_dir_all(herd_hostnet::HostNet::for_tag(&tag).root());
    }
}

/// Creates the virtual network `name` in `group` with one subnet `sub` of `prefix` (the whole
/// vnet); returns the subnet's id for a NIC configuration.
pub async fn put_vnet(client: &Client, group: &str, name: &str, prefix: &str) -> Result<String> {
    client
        .put(
            &format!("/v1/resourceGroups/{group}/virtualNetworks/{name}"),
            &json!({"addressSpace": {"addressPrefixes": [prefix]}, "subnets": [{"name": "sub", "addressPrefix": prefix}]}),
        )
        .await?;
    Ok(format!("{}/subnets/sub", herd_model::network::network_id(group, "virtualNetworks", name)))
}

/// CPU time of this process so far, in seconds: (its own, its reaped children's), user + system
/// (`/proc/self/stat`). The bench's server runs in this process; the `ip`, `nft` and other
/// commands it runs are its children.
pub fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().skip(11).take(4).filter_map(|f| f.parse().ok()).collect())
        .unwrap_or_default();
    match fields.as_slice() {
        // utime, stime, cutime, cstime, in clock ticks (100 per second on Linux).
        [u, s, cu, cs] => ((u + s) as f64 / 100.0, (cu + cs) as f64 / 100.0),
        _ => (0.0, 0.0),
    }
}

/// A network profile with one NIC on `subnet`.
pub fn nic_on(subnet: &str) -> serde_json::Value {
    json!({"networkInterfaceConfigurations": [{"name": "nic", "ipConfigurations": [{"name": "ip", "subnet": {"id": subnet}}]}]})
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_time_of_this_process_grows_with_work() {
        let (own, _) = super::cpu_seconds();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(100) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        let (after, children) = super::cpu_seconds();
        assert!(after >= own + 0.02, "100 ms of spinning shows as CPU time: {own} -> {after}");
        assert!(children >= 0.0);
    }

    #[test]
    fn a_nic_on_a_subnet() {
        let v = super::nic_on("/resourceGroups/g/providers/Microsoft.Network/virtualNetworks/v/subnets/sub");
        let ipc = &v["networkInterfaceConfigurations"][0]["ipConfigurations"][0];
        assert_eq!(ipc["subnet"]["id"], "/resourceGroups/g/providers/Microsoft.Network/virtualNetworks/v/subnets/sub");
    }
}
