//! What every handler shares: the store, the reconciler's wake signal, the token and the
//! server's configuration (SKUs, zones, limits).

use crate::error::ApiError;
use herd_model::{clock::Clock, scale_set::ValidationContext, sku::SkuTable};
use herd_state::{State, Store};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Notify;

/// Server settings the API validates against.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub skus: SkuTable,
    pub zones: Vec<String>,
    /// Capacity ceiling with `singlePlacementGroup=false`.
    pub max_capacity: u64,
    /// Where imported images are copied.
    pub image_dir: PathBuf,
    /// The driver's name, shown by `/v1/server`.
    pub driver: String,
    /// Which /16 of 127.64.0.0/10 this server allocates public IPs from first (0–63).
    pub public_ip_block: u8,
    /// Declared (or detected) hosts; empty = unlimited capacity.
    pub hosts: Vec<herd_model::spot::HostSpec>,
    /// Prices per SKU (regular, spot).
    pub prices: herd_model::spot::PriceTable,
    /// Where image imports may read server-side files, and upload limits.
    pub images: crate::images::ImportConfig,
    /// The cluster id recorded in the data dir and in every instance (`/v1/server/status`).
    pub cluster_id: String,
    /// Bridged networking (`[network] mode = "bridged"`): instances live on real subnets.
    pub bridged: bool,
    /// The pool instance public IPs come from (`[network] public_ip_pool`), if configured.
    pub public_ip_pool: Option<herd_model::public_pool::PublicIpPool>,
}

impl ApiConfig {
    /// Whether the server's driver runs disk and kernel images as VMs (`qemu`, whose name is
    /// `qemu+process`: directory images run as process instances beside the VMs).
    pub fn runs_vms(&self) -> bool {
        self.driver.split('+').any(|d| d == "qemu")
    }

    /// Whether `ip` is in the server's public pool (false without one): an address a public-IP
    /// resource or a load-balancer frontend may take from the pool.
    pub fn in_public_pool(&self, ip: std::net::Ipv4Addr) -> bool {
        self.public_ip_pool.is_some_and(|p| p.contains(ip))
    }
}

/// Shared handler state.
#[derive(Clone)]
pub struct AppState {
    /// The typed state layer: handlers call its operations through [`AppState::run`].
    pub store: State,
    pub wake: Arc<Notify>,
    pub token: Arc<str>,
    pub clock: Arc<dyn Clock>,
    pub config: Arc<ApiConfig>,
    /// Seals write-only secrets before they reach the store.
    pub sealer: Arc<herd_state::seal::Sealer>,
    /// Instance health as the load-balancer probes see it.
    pub health: Arc<herd_model::health::HealthBoard>,
    /// The load balancer's data plane (frontends, counters).
    pub lb: Arc<dyn crate::services::LoadBalancerView>,
    /// Instance consoles, read through the driver: handlers never change instances through it.
    pub consoles: Arc<dyn crate::services::ConsoleLogs>,
    /// Validates metric sources (each kind's settings) without contacting them.
    pub sources: Arc<dyn crate::services::MetricSourceCheck>,
    /// SKUs with a spot price (fixed or scheduled), for validation.
    pub spot_priced: Arc<[String]>,
    /// A token that opens `/metrics` only (`[metrics] token_file`); the API token opens it too.
    pub metrics_token: Option<Arc<str>>,
    /// The reconciler's count of refused lifecycle events, for `/metrics`.
    pub invalid_transitions: herd_state::transitions::InvalidTransitions,
    /// What each background controller is doing (`GET /v1/server/controllers`).
    pub controllers: ControllerBoard,
    /// Failed authentications per source address (429 past the budget).
    pub auth_limit: crate::auth_limit::AuthLimiter,
    /// The server's TLS: what it presents, and its rotation.
    pub tls: Arc<dyn crate::services::ServerTls>,
    /// Joined hosts' heartbeats, as the agent link sees them.
    pub heartbeats: Arc<dyn herd_model::host::Heartbeats>,
    /// How long a host may miss heartbeats before it shows NotReady.
    pub host_grace: chrono::Duration,
    /// Placement on joined hosts, when this server takes agents (the reconciler's same view):
    /// scale-outs are checked against these hosts too.
    pub joined: Option<herd_model::host::JoinedHosts>,
    /// Each set's observed state, remembered by store revision (see
    /// [`herd_state::scale_sets::ObserveCache`]).
    pub observed: Arc<herd_state::scale_sets::ObserveCache>,
}

/// A view of the server's controller status board. The API shows it and does not know the
/// runtime that fills it in: the server hands over a function that reads the board.
#[derive(Clone)]
pub struct ControllerBoard(Arc<dyn Fn() -> Vec<herd_model::controller::ControllerStatus> + Send + Sync>);

impl ControllerBoard {
    pub fn new(read: impl Fn() -> Vec<herd_model::controller::ControllerStatus> + Send + Sync + 'static) -> Self {
        Self(Arc::new(read))
    }

    /// A board with no controllers (a server that runs none, as in-process handler tests).
    pub fn empty() -> Self {
        Self::new(Vec::new)
    }

    /// Every controller's status, by name.
    pub fn snapshot(&self) -> Vec<herd_model::controller::ControllerStatus> {
        (self.0)()
    }
}

impl AppState {
    pub fn validation(&self) -> ValidationContext<'_> {
        ValidationContext {
            skus: &self.config.skus,
            zones_offered: &self.config.zones,
            max_capacity: self.config.max_capacity,
            spot_priced_skus: Some(&self.spot_priced),
        }
    }

    /// Runs `f` (typed state operations) on tokio's blocking pool, so a store call never
    /// stalls the async runtime, and answers its result.
    pub async fn run<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&dyn Store) -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        self.store.run(move |s| Ok(f(s))).await?
    }

    /// Runs `f` with this state on tokio's blocking pool: for a handler whose whole request
    /// (validation against the stored records, the operation, the view of the result) reads and
    /// writes the store, so none of it stalls the async runtime.
    pub async fn blocking<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        let me = self.clone();
        self.run(move |_| f(&me)).await
    }

    /// Starts a reconcile pass soon.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}
