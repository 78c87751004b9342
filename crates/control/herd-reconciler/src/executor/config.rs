//! The reconciler's settings, why a pass fails, and the fault points tests crash it at.

use crate::plan::Limits;
use herd_driver::{DriverError, LeaderTerm};
use herd_model::image::{self, Image, ImageSource};
use herd_model::scale_set::StoredScaleSet;
use herd_model::sku::SkuTable;
use herd_state::StateError;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Tunables of the reconcile loop.
#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    pub limits: Limits,
    /// Driver calls in flight at once.
    pub driver_concurrency: usize,
    /// Pause between passes when nothing is changing (crash detection still happens).
    pub idle_interval: Duration,
    /// Pause between passes while instances are booting or stopping.
    pub busy_interval: Duration,
    pub skus: SkuTable,
    /// Which /16 of 127.128.0.0/9 this server's reach addresses start in (0–127).
    pub address_block: u8,
    /// Bridged networking: instances with a subnet are reached on their private IP, through a
    /// bridge per subnet, instead of on a host-local loopback address.
    pub bridged: bool,
    /// The server's public pool (`[network] public_ip_pool`): instance public IPs come from it.
    pub public_ip_pool: Option<herd_model::public_pool::PublicIpPool>,
    /// The driver runs disk and kernel images as real VMs (qemu). For their instances, scripts
    /// go through the guest agent, so images without one cannot run extensions in place
    /// (extension changes reimage them), and each guest's seed gets the admin credentials,
    /// data disks and forwarded ports. Directory images are process instances on every
    /// server (the qemu server runs them beside its VMs: `herd_driver::by_image`), and none of
    /// this applies to them. False for the sim driver.
    pub runs_vms: bool,
    /// Guest ports forwarded to every instance besides the model's LB and NAT ports.
    pub extra_ports: Vec<u16>,
    /// The hosts whose capacity instances reserve; empty = unlimited.
    pub hosts: Vec<herd_model::spot::HostSpec>,
    /// The spot price of a SKU now (price evictions, spotRestorePolicy).
    pub spot_price: crate::capacity::SpotPrice,
    /// Each instance's metadata endpoint port (on its reach address); None = no endpoint.
    pub metadata_port: Option<u16>,
    /// When unrecorded instances are destroyed (see [`crate::orphans`]).
    pub orphans: crate::orphans::OrphanPolicy,
    /// The leadership term every driver call carries in its fence (with the instance record's
    /// incarnation). The server owns the one [`LeaderTerm`]; leader election raises it.
    pub term: LeaderTerm,
    /// Hosts joined with `herd agent`, when this server takes agents: new instances are placed
    /// on them as on declared hosts (see [`JoinedHosts`]).
    pub joined: Option<herd_model::host::JoinedHosts>,
    /// Where every bridged NIC is, published after each pass, when segments may span hosts
    /// (see [`herd_driver::fabric`]).
    pub fabric: Option<std::sync::Arc<dyn herd_driver::fabric::FabricSink>>,
    /// The MTU of every bridged subnet (the fabric's minus VXLAN's overhead on servers).
    pub vnet_mtu: u16,
}

impl ReconcilerConfig {
    /// Whether instances of `image` are VMs here: a disk or kernel image on a server whose
    /// driver runs them as VMs (see [`runs_vms`](Self::runs_vms)).
    pub fn runs_as_vm(&self, image: &ImageSource) -> bool {
        self.runs_vms && !matches!(image, ImageSource::Directory { .. })
    }

    /// Whether `set`'s instances are VMs here, by its model's image in `images`. An image not
    /// in the gallery counts as a VM on a VM server (its instances cannot be built anyway).
    pub fn set_runs_vms(&self, set: &StoredScaleSet, images: &[Image]) -> bool {
        let urn = set.model.virtual_machine_profile.storage_profile.image_reference.urn();
        match urn.ok().and_then(|u| image::resolve(images, &u)) {
            Some(img) => self.runs_as_vm(&img.source),
            None => self.runs_vms,
        }
    }
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            driver_concurrency: 64,
            idle_interval: Duration::from_secs(2),
            busy_interval: Duration::from_millis(50),
            skus: SkuTable::default(),
            address_block: 0,
            bridged: false,
            public_ip_pool: None,
            runs_vms: false,
            extra_ports: vec![80],
            hosts: vec![],
            spot_price: crate::capacity::SpotPrice::none(),
            metadata_port: None,
            orphans: Default::default(),
            term: LeaderTerm::single_server(),
            joined: None,
            fabric: None,
            vnet_mtu: herd_driver::DEFAULT_MTU,
        }
    }
}

/// Where a test may make a pass crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// Intents are persisted, no driver call made yet.
    AfterIntent,
    /// Driver calls made, results not persisted yet.
    AfterDriver,
}

/// Fault injection: makes the `n`th fault point reached fail the pass, as a crash would.
#[derive(Debug, Default)]
pub struct Faults {
    hits: AtomicU64,
    fail_at: Mutex<BTreeSet<u64>>,
}

impl Faults {
    pub fn fail_at(&self, n: u64) {
        self.fail_at.lock().unwrap_or_else(|e| e.into_inner()).insert(n);
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    pub(crate) fn check(&self, point: FaultPoint) -> Result<(), ReconcileError> {
        let n = self.hits.fetch_add(1, Ordering::SeqCst);
        if self.fail_at.lock().unwrap_or_else(|e| e.into_inner()).remove(&n) {
            return Err(ReconcileError::Injected(point));
        }
        Ok(())
    }
}

/// Why a pass failed. The next pass starts over from the store and the driver.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StateError),
    #[error("driver: {0}")]
    Driver(#[from] DriverError),
    #[error("injected fault at {0:?}")]
    Injected(FaultPoint),
}

impl ReconcileError {
    /// Whether the next pass may succeed with nothing changed: a driver error by its own kind
    /// ([`DriverError::retryable`]); a store error is retried by the next pass (which re-reads
    /// everything); an injected crash always is.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Store(_) => true,
            Self::Driver(e) => e.retryable(),
            Self::Injected(_) => true,
        }
    }
}
