//! `herd server`'s settings: the flags' companion file `herd.toml`, every section of it
//! optional, and the checks that refuse a setting before anything starts.

use anyhow::{bail, Context, Result};
use herd_model::sku::SkuSize;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Which driver runs instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DriverKind {
    /// Each instance is a process tree started from an image directory.
    Process,
    /// Simulated in-memory instances (tests, benchmarks, trying herd out).
    Sim,
    /// Real virtual machines under QEMU (KVM or TCG) for disk and kernel images; directory
    /// images run as process instances beside them (as with `process`), on the same subnets.
    Qemu,
}

/// `herd.toml`: server settings beyond the flags. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Zones this server offers (logical labels on one host). Default: 1 2 3.
    pub zones: Option<Vec<String>>,
    /// Capacity ceiling with singlePlacementGroup=false. Default: 1000.
    pub max_capacity: Option<u64>,
    /// Extra VM sizes: `[skus.Custom_Big] vcpus = 16, memory_mib = 65536`.
    #[serde(default)]
    pub skus: BTreeMap<String, SkuSize>,
    #[serde(default)]
    pub provisioning: ProvisioningConfig,
    #[serde(default)]
    pub sim: SimSettings,
    #[serde(default)]
    pub loadbalancer: LoadBalancerSettings,
    #[serde(default)]
    pub network: NetworkSettings,
    #[serde(default)]
    pub extensions: ExtensionSettings,
    #[serde(default)]
    pub qemu: QemuSettings,
    #[serde(default)]
    pub upgrades: UpgradeSettings,
    #[serde(default)]
    pub autoscale: AutoscaleSettings,
    /// `[[hosts]]`: each host's capacity. Without any, the qemu driver uses this machine's
    /// detected CPUs and memory, and sim and process are unlimited.
    #[serde(default)]
    pub hosts: Vec<herd_model::spot::HostSpec>,
    /// `[prices."Standard_B1ms"] regular = 0.0207, spot = 0.0041` (per hour), or
    /// `spot_schedule = "spot-prices.csv"` (timestamp,price lines; watched).
    #[serde(default)]
    pub prices: herd_model::spot::PriceTable,
    #[serde(default)]
    pub metadata: MetadataSettings,
    #[serde(default)]
    pub billing: BillingSettings,
    #[serde(default)]
    pub images: ImageSettings,
    #[serde(default)]
    pub metrics: MetricsSettings,
    #[serde(default)]
    pub secrets: SecretSettings,
    #[serde(default)]
    pub reconciler: ReconcilerSettings,
    #[serde(default)]
    pub auth: AuthSettings,
    #[serde(default)]
    pub agents: AgentSettings,
}

/// `[agents]`: hosts joined with `herd agent`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    /// Seconds a host may miss heartbeats before it shows NotReady (default 40; 5 to 3600).
    pub host_grace_secs: Option<u64>,
    /// Milliseconds between an agent's heartbeats (default 2000; 100 to 60000).
    pub heartbeat_interval_ms: Option<u64>,
    /// Seconds of the lease each heartbeat acknowledgement grants a host for its instances
    /// (default 10; 1 to 600).
    pub lease_secs: Option<u64>,
    /// Seconds a host may be silent before its instances are re-created on other hosts of their
    /// zone (default 300; at least 30, longer than host_grace_secs and than the lease bound,
    /// lease_secs × 1.01 + 2 s).
    pub replace_after_secs: Option<u64>,
}

impl AgentSettings {
    /// `host_grace_secs`, checked.
    pub fn host_grace(&self) -> Result<chrono::Duration> {
        let secs = self.host_grace_secs.unwrap_or(herd_model::host::DEFAULT_HOST_GRACE_SECS);
        if !(5..=3600).contains(&secs) {
            bail!("config: agents.host_grace_secs {secs} is out of range; allowed values: 5 to 3600");
        }
        Ok(chrono::Duration::seconds(secs as i64))
    }

    /// `lease_secs`, checked.
    pub fn lease(&self) -> Result<chrono::Duration> {
        let secs = self.lease_secs.unwrap_or(herd_model::host::DEFAULT_LEASE_SECS);
        if !(1..=600).contains(&secs) {
            bail!("config: agents.lease_secs {secs} is out of range; allowed values: 1 to 600");
        }
        let interval = self.heartbeat_interval_ms()?;
        if secs * 1000 < 2 * interval {
            bail!(
                "config: agents.lease_secs {secs} must cover two heartbeats (heartbeat_interval_ms {interval}), or leases lapse between acknowledgements; allowed values: {} to 600",
                (2 * interval).div_ceil(1000)
            );
        }
        Ok(chrono::Duration::seconds(secs as i64))
    }

    /// `host_grace_secs` and `replace_after_secs`, checked against each other and the lease.
    pub fn failure_timing(&self) -> Result<herd_model::host::FailureTiming> {
        let secs = self.replace_after_secs.unwrap_or(herd_model::host::DEFAULT_REPLACE_AFTER_SECS);
        if secs > 86_400 {
            bail!("config: agents.replace_after_secs {secs} is out of range; allowed values: 30 to 86400");
        }
        herd_model::host::FailureTiming::check(
            self.host_grace()?,
            chrono::Duration::seconds(secs as i64),
            self.lease()?,
        )
        .map_err(|e| anyhow::anyhow!("config: {}: {}", e.field, e.message))
    }

    /// `heartbeat_interval_ms`, checked.
    pub fn heartbeat_interval_ms(&self) -> Result<u64> {
        let ms = self.heartbeat_interval_ms.unwrap_or(herd_model::host::HEARTBEAT_INTERVAL_MS);
        if !(100..=60_000).contains(&ms) {
            bail!("config: agents.heartbeat_interval_ms {ms} is out of range; allowed values: 100 to 60000");
        }
        Ok(ms)
    }
}

/// `[auth]`: how failed authentications are limited per source address.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Failed authentications an address may make at once before it is answered 429
    /// (default 20; 1 to 1000000).
    pub failure_burst: Option<u32>,
    /// Seconds for one more failure to be allowed again (default 1; 1 to 3600).
    pub failure_refill_secs: Option<u64>,
}

impl AuthSettings {
    /// The budget, or which setting is out of range.
    pub fn budget(&self) -> Result<herd_api::auth_limit::FailureBudget> {
        let d = herd_api::auth_limit::FailureBudget::default();
        let burst = self.failure_burst.unwrap_or(d.burst);
        if !(1..=1_000_000).contains(&burst) {
            bail!("config: auth.failure_burst {burst} is out of range; allowed 1 to 1000000");
        }
        let refill = self.failure_refill_secs.map_or(d.refill, std::time::Duration::from_secs);
        if !(1..=3600).contains(&refill.as_secs()) {
            bail!("config: auth.failure_refill_secs {} is out of range; allowed 1 to 3600", refill.as_secs());
        }
        Ok(herd_api::auth_limit::FailureBudget { burst, refill })
    }
}

/// `[images]`: image imports.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSettings {
    /// Directories whose files `PUT /v1/images/{urn}` may name as a server-side `disk`,
    /// `kernel` or `initrd` path (default none: the CLI uploads the bytes instead).
    pub import_roots: Option<Vec<PathBuf>>,
    /// Largest uploaded image file, in GiB (default 64).
    pub max_upload_gib: Option<u64>,
}

/// `[metrics]`: who may scrape `/metrics`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// A file holding a token that opens `/metrics` only (for Prometheus' `bearer_token_file`);
    /// the API token opens it too. Default: only the API token.
    pub token_file: Option<PathBuf>,
}

/// `[secrets]`: where the key that seals protected settings lives.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSettings {
    /// The sealing key's file (32 bytes, created 0600 on first start if absent and nothing is
    /// sealed yet). Default: `secret.key` in the data dir. `--seal-key-file` overrides it.
    pub seal_key_file: Option<PathBuf>,
}

/// `[reconciler]`: how unrecorded (orphan) instances are treated.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcilerSettings {
    /// Seconds an instance must be unrecorded before it is destroyed (default 600).
    pub orphan_grace_secs: Option<u64>,
    /// Orphans destroyed per hour at most (default 5; 0 = never destroy orphans).
    pub orphan_max_per_hour: Option<u32>,
}

/// `[metadata]`: the per-instance metadata endpoint (identity and scheduled events).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataSettings {
    /// The port each instance's endpoint listens on, on the instance's reach address.
    pub port: Option<u16>,
    /// Set false to run without metadata endpoints.
    pub enabled: Option<bool>,
}

/// `[billing]`: the cost meter.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingSettings {
    /// How often the meter bills instance time (its granularity). Default 15.
    pub meter_interval_secs: Option<u64>,
}

/// The qemu driver's default host: this machine's memory, less 512 MiB for the host itself, so
/// VMs never run it out of memory; vCPUs may be overcommitted 16 to 1 (idle guests cost little
/// CPU; memory is what runs out). Declare `[[hosts]]` for exact figures.
pub fn detected_host() -> herd_model::spot::HostSpec {
    let vcpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1 << 20);
    herd_model::spot::HostSpec {
        name: "local".into(),
        zone: None,
        fault_domain: None,
        vcpus,
        memory_mib: (mem_kib / 1024).saturating_sub(512).max(256),
        overcommit: 16.0,
        schedulable: true,
    }
}

/// Checks `[[hosts]]`: unique names, non-zero sizes, overcommit from 1 to 16, zones offered,
/// fault-domain labels.
pub(super) fn check_hosts(hosts: &[herd_model::spot::HostSpec], zones: &[String]) -> Result<()> {
    let mut names = std::collections::BTreeSet::new();
    for (i, h) in hosts.iter().enumerate() {
        if h.name.is_empty() || !names.insert(h.name.as_str()) {
            bail!("config: hosts[{i}].name '{}' must be non-empty and unique", h.name);
        }
        if h.vcpus == 0 || h.memory_mib == 0 {
            bail!("config: hosts[{i}] ({}) needs vcpus and memory_mib above 0", h.name);
        }
        if !(1.0..=16.0).contains(&h.overcommit) {
            bail!("config: hosts[{i}].overcommit {} is out of range; allowed 1.0 to 16.0", h.overcommit);
        }
        if let Some(z) = &h.zone {
            if !zones.contains(z) {
                bail!("config: hosts[{i}].zone '{z}' is not one of the zones offered: {}", zones.join(", "));
            }
        }
        if let Some(fd) = &h.fault_domain {
            if let Err(e) = herd_model::host::check_label(&format!("hosts[{i}].fault_domain"), fd) {
                bail!("config: {e}");
            }
        }
    }
    Ok(())
}

/// `[autoscale]`: the autoscaler's cadence.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleSettings {
    /// Seconds between evaluations of every autoscale setting (default 30, as Azure's 30–60 s).
    pub interval_secs: Option<u64>,
    /// Seconds between metric samples (default 15): the finest time grain rules can use.
    pub sample_interval_secs: Option<u64>,
    /// Deadline of one metric-source sample, in seconds (default 5).
    pub source_timeout_secs: Option<u64>,
    /// Address ranges webhook notifications may reach although refused by default (loopback,
    /// link-local, herd's own ranges), e.g. ["127.0.0.1/32"].
    pub allow_webhooks_to: Option<Vec<herd_egress::Net>>,
}

/// `[upgrades]`: rolling upgrades and repairs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeSettings {
    /// Seconds a freshly upgraded instance may fail its probe before it counts as unhealthy
    /// (default 30).
    pub health_grace_secs: Option<u64>,
    /// Minutes a batch may wait for its instances' health before it is judged as it stands
    /// (default 10).
    pub batch_timeout_mins: Option<u64>,
    /// Repairs in a row without an instance becoming healthy before repairs suspend
    /// themselves (default 3).
    pub repair_max_attempts: Option<usize>,
}

/// `[qemu]`: how the qemu driver runs VMs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuSettings {
    /// The QEMU binary (default /usr/bin/qemu-system-x86_64).
    pub binary: Option<PathBuf>,
    /// Seconds a guest gets to power off after the ACPI power button before QEMU is stopped
    /// hard (default 30).
    pub stop_timeout_secs: Option<u64>,
    /// Seconds a guest may take to get ready before it counts as failed (default 300).
    pub boot_timeout_secs: Option<u64>,
    /// Guest TCP ports forwarded from every instance's address besides the model's load
    /// balancer and NAT ports (default [80]).
    pub forward_ports: Option<Vec<u16>>,
    /// Where guests reach their metadata endpoint: 10.0.2.100 (default) or 169.254.169.254,
    /// Azure's address, which moves the guest network to 169.254.169.0/24 (the host is then
    /// 169.254.169.2 instead of 10.0.2.2).
    pub metadata_address: Option<String>,
}

/// `[extensions]`: limits on Custom Script runs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtensionSettings {
    /// Largest file a `fileUris` entry may download, in MiB (default 64).
    pub max_file_mib: Option<u64>,
    /// Deadline for one download, in seconds (default 60).
    pub fetch_timeout_secs: Option<u64>,
    /// How long a script may run when the model sets no `extensionsTimeBudget`, in seconds
    /// (default 1800).
    pub run_timeout_secs: Option<u64>,
    /// Directories `file://` fileUris may read below (default none: `file://` is refused).
    pub file_roots: Option<Vec<PathBuf>>,
    /// Address ranges http(s) fileUris may reach although refused by default (loopback,
    /// link-local, herd's own ranges), e.g. ["127.0.0.1/32"].
    pub allow_fetch_from: Option<Vec<herd_egress::Net>>,
}

/// `[network]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSettings {
    /// Which /16 of 127.128.0.0/9 instance reach addresses start in (0–127), and of
    /// 127.64.0.0/10 public IPs (this number mod 64). Default: derived from the data dir.
    pub host_local_block: Option<u8>,
    /// `host-local` (instances are reached on their own loopback address) or `bridged`
    /// (instances with a subnet live on a bridge per subnet and are reached on their private IP;
    /// root only). Unset: what the data dir recorded, or for a new data dir bridged when
    /// possible (see `network_mode`).
    pub mode: Option<String>,
    /// The prefix instance public IPs come from (`publicIPAddressConfiguration`), e.g.
    /// "198.51.100.0/28": routed to this host by the operator, outside loopback and every vnet,
    /// /30 or shorter. Each instance that asks gets one, 1:1 NATed to its private IP.
    pub public_ip_pool: Option<String>,
    /// The MTU of the network between hosts (default 1500). Bridged subnets get this minus 50
    /// (what VXLAN adds), so a segment stretched across hosts never fragments; 1330 to 9000.
    pub fabric_mtu: Option<u16>,
}

impl NetworkSettings {
    /// The MTU of every bridged subnet: `fabric_mtu` minus VXLAN's 50 bytes, checked.
    pub fn vnet_mtu(&self) -> Result<u16> {
        let fabric = self.fabric_mtu.unwrap_or(1500);
        if !(1330..=9000).contains(&fabric) {
            bail!("config: network.fabric_mtu {fabric} is out of range; allowed values: 1330 to 9000");
        }
        Ok(fabric - herd_hostnet::fabric::VXLAN_OVERHEAD)
    }
}

/// `[loadbalancer]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerSettings {
    /// Seconds a pool member drains (no new connections) before it is stopped, deleted,
    /// restarted or re-imaged (default 10).
    pub drain_timeout_secs: Option<u64>,
    /// Connections one rule accepts at once; beyond it new ones are refused (default: no limit).
    pub max_connections_per_rule: Option<usize>,
}

/// `[provisioning]`: the fail-safe on instance creation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningConfig {
    /// Creations in flight, as a percentage of capacity (default 100).
    pub max_in_flight_percent: Option<u64>,
    /// ...but at least this many (default 20).
    pub min_in_flight: Option<u64>,
    /// Consecutive failed creations before a set stops creating (default 10).
    pub failure_threshold: Option<u32>,
    /// Driver calls in flight at once (default 64).
    pub driver_concurrency: Option<usize>,
}

/// `[sim]`: how simulated instances behave.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimSettings {
    pub boot_min_ms: Option<u64>,
    pub boot_max_ms: Option<u64>,
    pub failure_rate: Option<f64>,
    pub seed: Option<u64>,
}

pub(super) fn load_config(path: Option<&Path>) -> Result<ServerConfig> {
    let Some(path) = path else { return Ok(ServerConfig::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
    let cfg: ServerConfig = toml::from_str(&text).with_context(|| format!("config {}", path.display()))?;
    cfg.auth.budget()?;
    Ok(cfg)
}

#[cfg(test)]
mod agent_settings_tests {
    use super::AgentSettings;

    fn agents(toml_text: &str) -> AgentSettings {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn replace_after_below_the_lease_bound_is_refused_naming_both_values() {
        let e = agents("host_grace_secs = 5\nlease_secs = 30\nreplace_after_secs = 30").failure_timing().unwrap_err();
        let m = e.to_string();
        assert!(m.contains("agents.replace_after_secs") && m.contains("30 s") && m.contains("lease_secs 30 s"), "{m}");
        let t = agents("host_grace_secs = 5\nlease_secs = 10\nreplace_after_secs = 30").failure_timing().unwrap();
        assert_eq!(t.replace_after, chrono::Duration::seconds(30));
        let d = agents("").failure_timing().unwrap();
        assert_eq!((d.grace.num_seconds(), d.replace_after.num_seconds()), (40, 300));
        let e = agents("lease_secs = 0").lease().unwrap_err();
        assert!(e.to_string().contains("allowed values: 1 to 600"), "{e}");
        let e = agents("lease_secs = 3\nheartbeat_interval_ms = 2000").lease().unwrap_err();
        assert!(e.to_string().contains("two heartbeats"), "{e}");
    }
}
