//! The `Driver` trait: the only way herd touches instances.
//!
//! Why: the reconciler must not care whether an instance is a QEMU VM, a process tree or a
//! simulation. Every operation is idempotent and keyed by [`InstanceKey`], so the executor can
//! repeat any call after a crash and converge: `ensure` on an existing instance is a no-op,
//! `destroy` on a missing one is `Ok`. `list` is the observation that planning starts from, and
//! also how orphans left by a crash are found.

#![forbid(unsafe_code)]

pub mod sim;

use async_trait::async_trait;
use herd_model::{image::ImageSource, sku::SkuSize, InstanceKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything a driver needs to build one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceSpec {
    pub key: InstanceKey,
    pub computer_name: String,
    pub image: ImageSource,
    pub size: SkuSize,
    /// The address the instance is reached on (host-local loopback address by default).
    pub reach_address: String,
    pub model_generation: u64,
    pub admin_username: String,
    pub custom_data: Option<String>,
    /// Extra environment/metadata for the guest.
    pub metadata: BTreeMap<String, String>,
    /// Bridged networking: the instance's own interface on a bridge carrying its subnet. None
    /// in host-local networking (the reach address is a loopback address).
    pub network: Option<NetworkAttachment>,
}

/// Where a bridged instance plugs in: the subnet's bridge and the instance's address on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachment {
    /// Linux bridge name (at most 15 characters).
    pub bridge: String,
    /// The bridge's own address in the subnet; the instance's default gateway.
    pub gateway: std::net::Ipv4Addr,
    pub prefix_len: u8,
    /// The instance's private IP.
    pub address: std::net::Ipv4Addr,
}

/// The power states a caller may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PowerTarget {
    Running,
    /// Halted but keeping its resources (still billed in Azure).
    Stopped,
    /// Halted with its compute released; the disk is kept.
    Deallocated,
}

/// What the driver sees of an instance right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObservedPower {
    /// Created and booting; not yet running.
    Starting,
    Running,
    /// Exists (disk kept) but not running.
    Stopped,
    /// Exists but broke: failed to boot, or exited on its own.
    Failed(String),
}

/// One instance as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedInstance {
    pub key: InstanceKey,
    pub power: ObservedPower,
}

/// CPU and memory use of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InstanceStats {
    /// CPU time consumed since start, in seconds (all vCPUs summed).
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
}

/// Driver failures. The message is shown to users: it must not contain secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    #[error("instance {0} does not exist")]
    NotFound(InstanceKey),
    #[error("{0}")]
    Failed(String),
}

/// A backend that runs instances. See the crate docs for the idempotency contract.
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// A short name for logs and `herd server` output.
    fn name(&self) -> &'static str;

    /// Creates the instance if absent and starts it. On an existing instance: starts it if
    /// stopped, otherwise does nothing.
    async fn ensure(&self, spec: &InstanceSpec) -> Result<(), DriverError>;

    /// Changes the power state of an existing instance.
    async fn set_power(&self, key: &InstanceKey, target: PowerTarget) -> Result<(), DriverError>;

    /// Stops and starts an existing instance.
    async fn restart(&self, key: &InstanceKey) -> Result<(), DriverError>;

    /// Discards the instance's OS disk (or working directory), recreates it from `spec`'s image
    /// and starts it. Creates the instance if it is absent.
    async fn reimage(&self, spec: &InstanceSpec) -> Result<(), DriverError>;

    /// Removes the instance and everything it owns. `Ok` if it does not exist.
    async fn destroy(&self, key: &InstanceKey) -> Result<(), DriverError>;

    /// Every instance this driver has, including ones herd no longer knows (orphans).
    async fn list(&self) -> Result<Vec<ObservedInstance>, DriverError>;

    /// Resource use of a running instance; `None` if it is absent or not running.
    async fn stats(&self, key: &InstanceKey) -> Result<Option<InstanceStats>, DriverError>;
}
