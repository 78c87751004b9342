//! `herd server`: the API, the reconciler and the embedded store in one process. Its settings
//! (`herd.toml`) are in [`config`]; this module opens the store, builds the driver, the
//! controllers and the API, and serves.

use anyhow::{bail, Context, Result};
use herd_api::{ApiConfig, AppState};
use herd_driver::{
    sim::{SimConfig, SimDriver},
    Driver,
};
use herd_hostnet::HostNet;
use herd_model::{clock::SystemClock, sku::SkuTable, InstanceKey};
use herd_reconciler::{ExtensionConfig, Limits, Reconciler, ReconcilerConfig};
use herd_state::Records;
use herd_store::SqliteStore;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

mod config;
mod hostnet;
mod metadata_net;
pub mod network_mode;
mod security;
mod tls;
pub use config::*;
pub use tls::Transport;

/// Everything `herd server` needs to start.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub driver: DriverKind,
    pub config: Option<PathBuf>,
    /// QEMU acceleration for the qemu driver.
    pub accel: crate::cli::AccelChoice,
    /// What to do at start with instances the store has no record of.
    pub orphans: crate::cluster::OrphanStart,
    /// The sealing key's file (`--seal-key-file`); overrides `[secrets] seal_key_file`.
    pub seal_key_file: Option<PathBuf>,
    /// HTTPS under the cluster CA (default), the operator's certificate, or plain HTTP.
    pub transport: Transport,
}

/// A running server (used in-process by `herd bench` and tests).
pub struct RunningServer {
    pub addr: SocketAddr,
    pub token: String,
    /// The CA bundle clients trust (PEM); `None` for plain HTTP or the operator's certificate.
    pub ca_bundle: Option<String>,
    /// True when the API is served over TLS.
    pub https: bool,
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningServer {
    pub fn url(&self) -> String {
        format!("{}://{}", if self.https { "https" } else { "http" }, self.addr)
    }

    pub async fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

/// The default data dir: `/var/lib/herd` for root, else `$XDG_DATA_HOME/herd` or `~/.local/share/herd`.
pub fn default_data_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/herd");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(x).join("herd");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/herd")
}

/// True when running as root (effective uid 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// Starts the server's tasks and returns once it is listening. The steps, in order: open the
/// data dir and the store ([`open_store`]), start the driver ([`build_driver`]), check for
/// orphans, build the reconciler's and the API's settings ([`build_settings`]), build the
/// controllers and the API state ([`build_controllers`], [`build_api`]), then bind and serve
/// ([`serve`]; [`RunningServer::stop`] shuts it down).
pub async fn start(opts: ServerOptions) -> Result<RunningServer> {
    tls::check(&opts.transport, opts.listen)?;
    let cfg = load_config(opts.config.as_deref())?;
    let opened = open_store(&opts, &cfg).await?;
    let (skus, zones) = skus_and_zones(&cfg)?;
    let local_driver = build_driver(&opts, &cfg, &opened).await?;
    // Hosts join under the cluster CA: with it, instances placed on a joined host are driven
    // through its agent (herd_host_link::HostRouter), the rest by this machine's driver.
    let link_settings = herd_host_link::LinkSettings {
        heartbeat_interval_ms: cfg.agents.heartbeat_interval_ms()?,
        lease: cfg.agents.lease()?,
    };
    let failure = cfg.agents.failure_timing()?;
    let links = matches!(opts.transport, tls::Transport::ClusterCa { .. }).then(|| {
        let links =
            herd_host_link::HostLinks::with_settings(opened.start_state.clone(), Arc::new(SystemClock), link_settings);
        // Cold moves' state files are staged here on their way between hosts.
        links.transfers().set_root(opened.data_dir.join("transfers"));
        links
    });
    let driver: Arc<dyn Driver> = match &links {
        Some(links) => Arc::new(herd_host_link::HostRouter::new(local_driver, links.clone())),
        None => local_driver,
    };
    // The leadership term every driver call carries (see herd_driver::fence): 1 for the only
    // server. This is the one place it comes from; leader election (HA) will raise it here.
    let term = herd_driver::LeaderTerm::single_server();
    crate::cluster::check_orphans_at_start(
        &opened.start_state,
        &*driver,
        opts.orphans,
        &opened.cluster_id,
        &opened.db_path,
        term.current(),
    )
    .await?;
    let bridged = network_mode::resolve(
        cfg.network.mode.as_deref(),
        opts.driver,
        &opened.data_dir,
        !opened.recorded_keys.is_empty(),
    )?;
    let mut settings = build_settings(&opts, &cfg, (&opened.data_dir, bridged), &zones, &skus, term)?;
    let host_grace = failure.grace;
    let joined = links.as_ref().map(|links| herd_model::host::JoinedHosts {
        heartbeats: links.clone(),
        grace: host_grace,
        replace_after: failure.replace_after,
        local: detected_host(),
    });
    settings.rec_config.joined = joined.clone();
    let bridged = settings.rec_config.bridged;
    // With hosts joining, bridged segments stretch to the hosts their instances run on.
    let fabric = links.as_ref().filter(|_| bridged).map(|l| l.fabric().clone());
    settings.rec_config.fabric = fabric.clone().map(|f| f as Arc<dyn herd_driver::fabric::FabricSink>);
    if let Some(pool) = settings.public_ip_pool {
        let vnets: Vec<_> =
            opened.start_state.run(|s| s.virtual_networks()).await?.into_iter().map(|v| v.value).collect();
        pool.check_vnets(&vnets).map_err(|e| anyhow::anyhow!("config: {e}"))?;
    }
    let parts = build_controllers(&cfg, &opened, &driver, settings.rec_config, settings.ext_config)?;
    let image_dir = opened.data_dir.join("images");
    std::fs::create_dir_all(&image_dir)?;
    herd_api::images::clear_uploads(&image_dir);
    let api_config = ApiConfig {
        skus,
        zones,
        max_capacity: cfg.max_capacity.unwrap_or(herd_model::scale_set::MULTI_PLACEMENT_GROUP_MAX),
        image_dir,
        driver: driver.name().to_string(),
        public_ip_block: settings.block % 64,
        hosts: settings.hosts,
        prices: cfg.prices.clone(),
        images: herd_api::images::ImportConfig {
            import_roots: herd_reconciler::fetch::check_roots(
                "config: images.import_roots",
                cfg.images.import_roots.as_deref().unwrap_or_default(),
                &opened.data_dir,
            )
            .map_err(anyhow::Error::msg)?,
            max_upload_bytes: cfg.images.max_upload_gib.map_or(64 << 30, |g| g.saturating_mul(1 << 30)),
        },
        cluster_id: opened.cluster_id.clone(),
        bridged,
        public_ip_pool: settings.public_ip_pool,
    };
    // Bridged networking's host side (bridges, dnsmasq) is kept serving by its own controller.
    let hostnet = bridged.then(|| HostNet::for_tag(&opened.cluster.tag));
    let tls = tls::prepare(&opts.transport, opts.listen, &opened.data_dir, &opened.cluster_id, parts.clock.clone())?;
    let limiter = herd_api::auth_limit::AuthLimiter::new(cfg.auth.budget()?, parts.clock.clone());
    let mut state =
        build_api(opened, api_config, &driver, &parts, settings.spot_priced, (tls.service.clone(), limiter));
    state.host_grace = host_grace;
    // Agents dial the API's port (TLS with their own ALPN); their sessions and heartbeats.
    state.joined = joined;
    let agents = tls.agent_config.zip(links).map(|(config, links)| {
        state.heartbeats = links.clone();
        (config, links)
    });
    let listener =
        tokio::net::TcpListener::bind(opts.listen).await.with_context(|| format!("listening on {}", opts.listen))?;
    let (mut runtime, metadata) =
        register_controllers(&cfg, &state, driver, parts, settings.prices, settings.metadata_port);
    // Joined hosts relay their instances' metadata connections to the endpoints here.
    if let (Some((_, links)), Some(md)) = (&agents, &metadata) {
        links.set_metadata_endpoints(Arc::new(crate::services::MetadataEndpoints(md.clone())));
    }
    if let Some((controller, wake)) = tls.controller {
        runtime.add_with_wake(controller, wake);
    }
    if let (Some(net), Some(fabric)) = (&hostnet, fabric.clone()) {
        hostnet::stretch_own_segments(net.clone(), fabric);
    }
    if let Some(net) = hostnet {
        runtime.add(Arc::new(hostnet::HostNetController { net: net.clone(), conflicts: Default::default() }));
        let store = state.store.store().clone();
        runtime.add(Arc::new(security::SecurityController { net: net.clone(), store, fabric }));
        if let Some(metadata) = metadata {
            let wake = metadata.changes();
            runtime.add_with_wake(Arc::new(metadata_net::MetadataNetController { net, metadata }), wake);
        }
    }
    serve(listener, (tls.config, agents), state, runtime).await
}

/// What opening the data dir yields: the token, the store, the cluster and the sealer.
struct Opened {
    data_dir: PathBuf,
    db_path: PathBuf,
    token: String,
    store: Arc<SqliteStore>,
    /// The typed layer over `store`, for startup reads.
    start_state: herd_state::State,
    /// Keys of the instances the store records.
    recorded_keys: Vec<String>,
    cluster: crate::cluster::Cluster,
    cluster_id: String,
    new_cluster: bool,
    sealer: Arc<herd_state::seal::Sealer>,
    metrics_token: Option<Arc<str>>,
}

/// Creates the data dir (0700), the API token and the store; loads the cluster id, the sealing
/// key and the metrics token.
async fn open_store(opts: &ServerOptions, cfg: &ServerConfig) -> Result<Opened> {
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating data dir {}", opts.data_dir.display()))?;
    std::fs::set_permissions(&opts.data_dir, std::fs::Permissions::from_mode(0o700))?;
    let data_dir = opts.data_dir.canonicalize()?;
    let (token, _) = herd_api::auth::load_or_create_token(&data_dir).context("writing the API token")?;
    let db_path = data_dir.join("herd.db");
    let store = Arc::new(SqliteStore::open(&db_path).context("opening the store")?);
    // Startup reads go through the typed layer on the blocking pool, as every async caller's do.
    let start_state = herd_state::State::from(store.clone());
    let recorded_keys = start_state.run(|s| s.instance_keys()).await?;
    // A store that already records instances but has no cluster id yet is an upgrade: its
    // instances were started with the data-dir tag, which the cluster keeps.
    let legacy_tag = (!data_dir.join(crate::cluster::CLUSTER_ID_FILE).exists() && !recorded_keys.is_empty())
        .then(|| format!("herd:{}", data_dir.display()));
    let cluster = crate::cluster::load_or_create(&data_dir, legacy_tag)?;
    let (cluster_id, new_cluster) = (cluster.id.clone(), cluster.created);
    let seal_key = opts
        .seal_key_file
        .clone()
        .or_else(|| cfg.secrets.seal_key_file.clone())
        .unwrap_or_else(|| data_dir.join("secret.key"));
    let sealed = start_state.run(|s| s.sealed_secrets()).await?;
    let sealer = Arc::new(load_sealer(&sealed, &seal_key)?);
    let metrics_token = match &cfg.metrics.token_file {
        Some(p) => Some(Arc::<str>::from(
            herd_api::auth::read_token_file(p).map_err(|e| anyhow::anyhow!("config: metrics.token_file: {e}"))?,
        )),
        None => None,
    };
    Ok(Opened {
        data_dir,
        db_path,
        token,
        store,
        start_state,
        recorded_keys,
        cluster,
        cluster_id,
        new_cluster,
        sealer,
        metrics_token,
    })
}

/// The configured SKUs and zones (at least one zone).
fn skus_and_zones(cfg: &ServerConfig) -> Result<(SkuTable, Vec<String>)> {
    let mut skus = SkuTable::default();
    for (name, size) in cfg.skus.clone() {
        skus.insert(name, size);
    }
    let zones = cfg.zones.clone().unwrap_or_else(|| vec!["1".into(), "2".into(), "3".into()]);
    if zones.is_empty() {
        bail!("config: zones must list at least one zone");
    }
    Ok((skus, zones))
}

/// Starts the driver `--driver` names. `qemu` runs disk and kernel images as VMs and directory
/// images as process instances beside them (data dir `instances/`, as `--driver process`), on
/// the same subnets: one driver per image kind (`herd_driver::by_image`).
async fn build_driver(opts: &ServerOptions, cfg: &ServerConfig, opened: &Opened) -> Result<Arc<dyn Driver>> {
    Ok(match opts.driver {
        DriverKind::Sim => {
            let d = SimConfig::default();
            Arc::new(SimDriver::new(SimConfig {
                boot_min: cfg.sim.boot_min_ms.map_or(d.boot_min, Duration::from_millis),
                boot_max: cfg.sim.boot_max_ms.map_or(d.boot_max, Duration::from_millis),
                failure_rate: cfg.sim.failure_rate.unwrap_or(d.failure_rate),
                seed: cfg.sim.seed.unwrap_or(d.seed),
            }))
        }
        DriverKind::Qemu => Arc::new(herd_driver::by_image::ByImage::new(
            Arc::new(qemu_driver(opts, cfg, opened).await?),
            Arc::new(process_driver(opened)?),
        )),
        DriverKind::Process => Arc::new(process_driver(opened)?),
    })
}

/// The qemu driver as `[qemu]` configures it; VMs that ran before a host reboot start again.
async fn qemu_driver(
    opts: &ServerOptions,
    cfg: &ServerConfig,
    opened: &Opened,
) -> Result<herd_driver_qemu::QemuDriver> {
    let data_dir = &opened.data_dir;
    let mut qc = herd_driver_qemu::QemuConfig::new(data_dir.join("vms"), opened.cluster.tag.clone());
    if let Some(b) = &cfg.qemu.binary {
        qc.qemu = b.clone();
    }
    if !qc.qemu.exists() {
        bail!(
            "the qemu driver needs {} (install it with 'apt-get install qemu-system-x86', or set [qemu] binary in the config)",
            qc.qemu.display()
        );
    }
    qc.accel = match opts.accel {
        crate::cli::AccelChoice::Kvm => herd_driver_qemu::Accel::Kvm,
        crate::cli::AccelChoice::Tcg => herd_driver_qemu::Accel::Tcg,
        crate::cli::AccelChoice::Auto => herd_driver_qemu::accel::auto(&qc.qemu, data_dir).await,
    };
    if let Some(t) = cfg.qemu.stop_timeout_secs {
        qc.stop_timeout = Duration::from_secs(t);
    }
    if let Some(t) = cfg.qemu.boot_timeout_secs {
        qc.boot_timeout = Duration::from_secs(t);
    }
    if let Some(p) = &cfg.qemu.forward_ports {
        qc.extra_ports = p.clone();
    }
    if cfg.metadata.enabled != Some(false) {
        qc.metadata_relay = Some(std::env::current_exe()?);
    }
    qc.metadata_address = match cfg.qemu.metadata_address.as_deref() {
        None | Some("10.0.2.100") => herd_driver_qemu::MetadataGuestAddress::InDefaultNetwork,
        Some("169.254.169.254") => herd_driver_qemu::MetadataGuestAddress::LinkLocal,
        Some(other) => bail!(
            "config: qemu.metadata_address '{other}' is not allowed; allowed values: 10.0.2.100 (default), 169.254.169.254 (moves the guest network to 169.254.169.0/24)"
        ),
    };
    tracing::info!(accel = qc.accel.as_str(), "qemu driver");
    let d = herd_driver_qemu::QemuDriver::new(qc).map_err(|e| anyhow::anyhow!("qemu driver: {e}"))?;
    let resumed = d.resume_after_host_reboot().await;
    if resumed > 0 {
        tracing::info!(resumed, "started VMs again after a host reboot");
    }
    Ok(d)
}

/// The process driver; on a new cluster it stamps the instances the store records as its own.
fn process_driver(opened: &Opened) -> Result<herd_driver_process::ProcessDriver> {
    let d = herd_driver_process::ProcessDriver::new(opened.data_dir.join("instances"), opened.cluster.tag.clone())
        .map_err(|e| anyhow::anyhow!("process driver: {e}"))?
        .with_launcher(std::env::current_exe()?);
    if opened.new_cluster {
        // First start with cluster ids on a data dir that has a store: the instances
        // the store records are this cluster's.
        let mut claimed = 0;
        for key in &opened.recorded_keys {
            if let Some(k) = InstanceKey::parse_path(key) {
                claimed += usize::from(d.claim_unstamped(&k).map_err(|e| anyhow::anyhow!("{e}"))?);
            }
        }
        if claimed > 0 {
            tracing::info!(claimed, cluster_id = %opened.cluster_id, "recorded instances stamped with the new cluster id");
        }
    }
    Ok(d)
}

/// The reconciler's limits as `[provisioning]`, `[loadbalancer]` and `[upgrades]` set them.
fn reconciler_limits(cfg: &ServerConfig) -> Limits {
    let defaults = Limits::default();
    Limits {
        max_in_flight_percent: cfg.provisioning.max_in_flight_percent.unwrap_or(defaults.max_in_flight_percent),
        min_in_flight: cfg.provisioning.min_in_flight.unwrap_or(defaults.min_in_flight),
        failure_threshold: cfg.provisioning.failure_threshold.unwrap_or(defaults.failure_threshold),
        drain_timeout: cfg
            .loadbalancer
            .drain_timeout_secs
            .map_or(defaults.drain_timeout, |s| chrono::Duration::seconds(s.min(86_400) as i64)),
        health_grace: cfg
            .upgrades
            .health_grace_secs
            .map_or(defaults.health_grace, |s| chrono::Duration::seconds(s.min(86_400) as i64)),
        batch_timeout: cfg
            .upgrades
            .batch_timeout_mins
            .map_or(defaults.batch_timeout, |m| chrono::Duration::minutes(m.clamp(1, 1440) as i64)),
        repair_max_attempts: cfg.upgrades.repair_max_attempts.unwrap_or(defaults.repair_max_attempts).max(1),
        ..defaults
    }
}

/// What the configuration decides before any component is built.
struct Settings {
    /// This server's block of loopback addresses.
    block: u8,
    hosts: Vec<herd_model::spot::HostSpec>,
    prices: Arc<std::sync::Mutex<herd_billing::PriceBook>>,
    spot_priced: Arc<[String]>,
    metadata_port: Option<u16>,
    rec_config: ReconcilerConfig,
    ext_config: ExtensionConfig,
    public_ip_pool: Option<herd_model::public_pool::PublicIpPool>,
}

/// Reads the network, hosts, prices, metadata and extension settings into the reconciler's
/// configuration (and what the API and the controllers need of them).
fn build_settings(
    opts: &ServerOptions,
    cfg: &ServerConfig,
    (data_dir, bridged): (&Path, bool),
    zones: &[String],
    skus: &SkuTable,
    term: herd_driver::LeaderTerm,
) -> Result<Settings> {
    let limits = reconciler_limits(cfg);
    // Each server takes its own block of loopback addresses, derived from its data dir unless
    // the config names one, so two servers (or parallel tests) on a host never collide.
    let block = cfg
        .network
        .host_local_block
        .unwrap_or_else(|| (herd_driver::stable_hash(data_dir.to_string_lossy().as_bytes()) as u8) % 128);
    let public_ip_pool = cfg
        .network
        .public_ip_pool
        .as_deref()
        .map(herd_model::public_pool::PublicIpPool::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("config: {e}"))?;
    check_hosts(&cfg.hosts, zones)?;
    let hosts = if cfg.hosts.is_empty() && opts.driver == DriverKind::Qemu {
        let h = detected_host();
        tracing::info!(vcpus = h.vcpus, memory_mib = h.memory_mib, "no [[hosts]] declared: VMs fit this machine");
        vec![h]
    } else {
        cfg.hosts.clone()
    };
    let config_dir = opts.config.as_deref().and_then(Path::parent).map(Path::to_path_buf);
    let prices = herd_billing::PriceBook::new(&cfg.prices, config_dir.as_deref())
        .map_err(|e| anyhow::anyhow!("config: prices: {e}"))?;
    let spot_priced: Arc<[String]> = Arc::from(prices.spot_priced_skus());
    let prices = Arc::new(std::sync::Mutex::new(prices));
    let spot_price = {
        let prices = prices.clone();
        herd_reconciler::capacity::SpotPrice(Arc::new(move |sku, at| {
            prices.lock().unwrap_or_else(|e| e.into_inner()).spot_at(sku, at)
        }))
    };
    // On by default, except for sim instances (nothing runs in them to ask, and a listener per
    // instance would cost 10,000 sockets in a large simulation).
    let metadata_port = match (cfg.metadata.enabled, opts.driver) {
        (Some(false), _) | (None, DriverKind::Sim) => None,
        _ => Some(cfg.metadata.port.unwrap_or(herd_metadata::DEFAULT_PORT)),
    };
    let orphan_defaults = herd_reconciler::orphans::OrphanPolicy::default();
    let orphans = herd_reconciler::orphans::OrphanPolicy {
        grace: cfg
            .reconciler
            .orphan_grace_secs
            .map_or(orphan_defaults.grace, |s| chrono::Duration::seconds(s.min(30 * 86_400) as i64)),
        max_per_hour: cfg.reconciler.orphan_max_per_hour.unwrap_or(orphan_defaults.max_per_hour),
    };
    let rec_config = ReconcilerConfig {
        orphans,
        address_block: block,
        hosts: hosts.clone(),
        spot_price,
        metadata_port,
        bridged,
        public_ip_pool,
        limits,
        driver_concurrency: cfg.provisioning.driver_concurrency.unwrap_or(64),
        skus: skus.clone(),
        runs_vms: opts.driver == DriverKind::Qemu,
        extra_ports: if opts.driver == DriverKind::Qemu {
            cfg.qemu.forward_ports.clone().unwrap_or_else(|| herd_driver_qemu::DEFAULT_EXTRA_PORTS.to_vec())
        } else {
            vec![]
        },
        term,
        vnet_mtu: cfg.network.vnet_mtu()?,
        ..Default::default()
    };
    let ext_config = extension_config(cfg, data_dir)?;
    Ok(Settings { block, hosts, prices, spot_priced, metadata_port, rec_config, ext_config, public_ip_pool })
}

/// `[extensions]`: fetch limits, the roots `file://` may read, the addresses downloads may reach.
fn extension_config(cfg: &ServerConfig, data_dir: &Path) -> Result<ExtensionConfig> {
    let ext_defaults = ExtensionConfig::default();
    Ok(ExtensionConfig {
        fetch: herd_reconciler::fetch::FetchLimits {
            max_bytes: cfg.extensions.max_file_mib.map_or(ext_defaults.fetch.max_bytes, |m| m.saturating_mul(1 << 20)),
            timeout: cfg.extensions.fetch_timeout_secs.map_or(ext_defaults.fetch.timeout, Duration::from_secs),
            file_roots: herd_reconciler::fetch::check_roots(
                "config: extensions.file_roots",
                cfg.extensions.file_roots.as_deref().unwrap_or_default(),
                data_dir,
            )
            .map_err(anyhow::Error::msg)?,
            addresses: herd_egress::AddressPolicy::new(
                herd_reconciler::fetch::ALLOW_SETTING,
                cfg.extensions.allow_fetch_from.clone().unwrap_or_default(),
            ),
        },
        run_timeout: cfg.extensions.run_timeout_secs.map_or(ext_defaults.run_timeout, Duration::from_secs),
    })
}

/// The reconciler, the load-balancer controller and what they share with the API.
struct Parts {
    clock: Arc<SystemClock>,
    health: Arc<herd_model::health::HealthBoard>,
    reconciler: Reconciler,
    lb: Arc<herd_lbctl::LbController>,
    /// The runtime the controllers run in; its status board is shown by the API.
    runtime: herd_controller_runtime::Runtime,
}

/// Builds the reconciler, the load-balancer controller and the controller runtime.
fn build_controllers(
    cfg: &ServerConfig,
    opened: &Opened,
    driver: &Arc<dyn Driver>,
    rec_config: ReconcilerConfig,
    ext_config: ExtensionConfig,
) -> Result<Parts> {
    let store = &opened.store;
    let clock = Arc::new(SystemClock);
    let drain = rec_config.limits.drain_timeout.to_std().unwrap_or(Duration::from_secs(10));
    let health = Arc::new(herd_model::health::HealthBoard::default());
    // The load balancer reports drains there; the reconciler ends a drain once no connection
    // is left (drain_timeout_secs is only the upper bound), woken when one is over.
    let drains = Arc::new(herd_model::health::DrainBoard::default());
    let reconciler = Reconciler::new(store.clone(), driver.clone(), clock.clone(), rec_config)
        .with_secrets(opened.sealer.clone(), ext_config)
        .with_health(health.clone())
        .with_drains(drains.clone());
    let lb = Arc::new(
        herd_lbctl::LbController::new(
            store.clone(),
            health.clone(),
            herd_lbctl::Limits {
                drain_timeout: drain,
                max_connections_per_rule: cfg.loadbalancer.max_connections_per_rule,
            },
        )
        .with_drains(drains, reconciler.waker()),
    );
    // Every background concern runs as a controller of one runtime (herd-controller-runtime):
    // woken by the store's change feed, resynced on a timer, backed off on failure, and shown
    // on the status board (`GET /v1/server/controllers`).
    let runtime = herd_controller_runtime::Runtime::new(herd_state::State::from(store.clone()), clock.clone());
    Ok(Parts { clock, health, reconciler, lb, runtime })
}

/// The API's state over the store, the controllers' shared parts and the server's services.
fn build_api(
    opened: Opened,
    config: ApiConfig,
    driver: &Arc<dyn Driver>,
    parts: &Parts,
    spot_priced: Arc<[String]>,
    (tls, auth_limit): (Arc<dyn herd_api::services::ServerTls>, herd_api::auth_limit::AuthLimiter),
) -> AppState {
    let board = parts.runtime.board();
    AppState {
        store: opened.store.into(),
        wake: parts.reconciler.waker(),
        token: opened.token.into(),
        clock: parts.clock.clone(),
        config: Arc::new(config),
        sealer: opened.sealer,
        health: parts.health.clone(),
        lb: Arc::new(crate::services::Lb(parts.lb.clone())),
        consoles: Arc::new(crate::services::Consoles(driver.clone())),
        sources: Arc::new(crate::services::SourceCheck),
        spot_priced,
        metrics_token: opened.metrics_token,
        invalid_transitions: parts.reconciler.invalid_transitions(),
        controllers: herd_api::ControllerBoard::new(move || board.snapshot()),
        auth_limit,
        tls,
        heartbeats: Arc::new(herd_model::host::NoHeartbeats),
        host_grace: chrono::Duration::seconds(herd_model::host::DEFAULT_HOST_GRACE_SECS as i64),
        joined: None,
        observed: Default::default(),
    }
}

/// `[autoscale]`: the loop's intervals, the SKUs and where webhooks may connect.
fn autoscale_config(cfg: &ServerConfig, skus: &SkuTable) -> herd_autoscaler::runner::RunnerConfig {
    let autoscale_defaults = herd_autoscaler::runner::RunnerConfig::default();
    herd_autoscaler::runner::RunnerConfig {
        interval: cfg.autoscale.interval_secs.map_or(autoscale_defaults.interval, |s| Duration::from_secs(s.max(1))),
        sample_interval: cfg
            .autoscale
            .sample_interval_secs
            .map_or(autoscale_defaults.sample_interval, |s| Duration::from_secs(s.max(1))),
        source_timeout: cfg
            .autoscale
            .source_timeout_secs
            .map_or(autoscale_defaults.source_timeout, |s| Duration::from_secs(s.max(1))),
        skus: skus.clone(),
        webhooks: herd_egress::AddressPolicy::new(
            herd_autoscaler::runner::WEBHOOK_ALLOW_SETTING,
            cfg.autoscale.allow_webhooks_to.clone().unwrap_or_default(),
        ),
    }
}

/// Registers every background controller with the runtime: the autoscaler's, the reconciler,
/// the load balancer, the metadata service (returned too, when enabled), the meter and the
/// change feed's compaction.
fn register_controllers(
    cfg: &ServerConfig,
    state: &AppState,
    driver: Arc<dyn Driver>,
    parts: Parts,
    prices: Arc<std::sync::Mutex<herd_billing::PriceBook>>,
    metadata_port: Option<u16>,
) -> (herd_controller_runtime::Runtime, Option<herd_metadata::MetadataService>) {
    let Parts { reconciler, lb, mut runtime, .. } = parts;
    let autoscaler = herd_autoscaler::runner::Runner::new(
        state.store.store().clone(),
        driver,
        state.clock.clone(),
        state.sealer.clone(),
        Arc::new(crate::services::CapacityWriter(herd_api::autoscale::ApiCapacityWriter(state.clone()))),
        autoscale_config(cfg, &state.config.skus),
    )
    .with_lb_stats(Arc::new(crate::services::Lb(lb.clone())));
    let autoscaler = Arc::new(autoscaler);
    runtime.add(Arc::new(herd_autoscaler::controller::SamplerController(autoscaler.clone())));
    runtime.add(Arc::new(herd_autoscaler::controller::EvaluatorController(autoscaler)));
    // The reconciler's pass, and an entry per concern of it (scale, rolling upgrade, ...).
    herd_reconciler::register(&mut runtime, reconciler);
    let lb_wake = lb.waker();
    runtime.add_with_wake(lb, lb_wake);
    let metadata = metadata_port.map(|port| {
        let md = herd_metadata::MetadataService::new(
            state.store.store().clone(),
            state.clock.clone(),
            state.wake.clone(),
            port,
        );
        runtime.add(Arc::new(md.clone()));
        md
    });
    let meter = herd_billing::Meter::new(state.store.clone(), state.clock.clone(), prices);
    let meter_every = Duration::from_secs(cfg.billing.meter_interval_secs.unwrap_or(15).clamp(1, 3600));
    runtime.add(Arc::new(herd_billing::controller::MeterController::new(meter, meter_every)));
    // The change feed keeps 5 to 10 minutes of history (see herd_store::COMPACTION_INTERVAL).
    runtime.add(Arc::new(herd_controller_runtime::CompactionController::new(
        state.store.clone(),
        herd_store::COMPACTION_INTERVAL,
    )));
    (runtime, metadata)
}

/// Agents on the API's port: their TLS configuration and their sessions.
type AgentListening = (Arc<rustls::ServerConfig>, Arc<herd_host_link::HostLinks>);

/// Starts the controllers and the API server (HTTPS with `tls`, else plain HTTP); both stop
/// when [`RunningServer::stop`] is called.
async fn serve(
    listener: tokio::net::TcpListener,
    (tls, agents): (Option<Arc<rustls::ServerConfig>>, Option<AgentListening>),
    state: AppState,
    runtime: herd_controller_runtime::Runtime,
) -> Result<RunningServer> {
    let addr = listener.local_addr()?;
    let token = state.token.to_string();
    let ca_bundle = state.tls.status().ok().and_then(|s| s.ca_bundle);
    let https = tls.is_some();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut tasks = runtime.start(rx.clone()).await;
    let mut http_rx = rx;
    let app = herd_api::router(state).into_make_service_with_connect_info::<herd_api::guard::ClientAddr>();
    let http_task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = http_rx.wait_for(|v| *v).await;
        };
        let served = match (tls, agents) {
            (Some(config), agents) => {
                let listening = match agents {
                    Some((agent_config, links)) => {
                        let (tx, rx) = tokio::sync::mpsc::channel(64);
                        tokio::spawn(links.serve(rx));
                        herd_tls::TlsListener::with_agents(listener, config, agent_config, tx)
                    }
                    None => herd_tls::TlsListener::new(listener, config),
                };
                match listening {
                    Ok(l) => {
                        let l = herd_api::guard::JsonErrorListener(l);
                        axum::serve(l, app).with_graceful_shutdown(shutdown).await
                    }
                    Err(e) => Err(e),
                }
            }
            (None, _) => {
                let l = herd_api::guard::JsonErrorListener(listener);
                axum::serve(l, app).with_graceful_shutdown(shutdown).await
            }
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    tasks.push(http_task);
    Ok(RunningServer { addr, token, ca_bundle, https, shutdown: tx, tasks })
}

/// What `herd server --driver process` prints first: process instances isolate nothing yet.
pub const PROCESS_DRIVER_WARNING: &str = "WARNING: process instances run as root on this host (as the user running herd) and isolate nothing yet: an instance's init and extension scripts can read and change anything on the host, including this server's data dir (API token, seal key, database). Run only images and scripts you trust with --driver process; use --driver qemu to isolate instances.";

/// Opens the sealing key at `path`. A missing key is created only while nothing is sealed: with
/// sealed data in the store, a missing or wrong key is an error, never a silent new key.
fn load_sealer(sealed: &[serde_json::Value], path: &Path) -> Result<herd_state::seal::Sealer> {
    if !path.exists() && !sealed.is_empty() {
        bail!(
            "the seal key {} is missing, but the store holds {} sealed secret(s) made with it; restore the key file (or pass --seal-key-file with its location). herd will not create a new key, which would make them unreadable",
            path.display(),
            sealed.len()
        );
    }
    let sealer = herd_state::seal::Sealer::load_or_create(path).map_err(|e| anyhow::anyhow!("seal key: {e}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making the seal key {} private", path.display()))?;
    if !sealed.is_empty() && !sealed.iter().any(|v| sealer.open::<serde_json::Value>(v).is_ok()) {
        bail!(
            "the seal key {} does not open any of the {} sealed secret(s) in the store: it is not the key they were sealed with (wrong --seal-key-file?)",
            path.display(),
            sealed.len()
        );
    }
    Ok(sealer)
}

/// Runs `herd server` in the foreground until Ctrl-C or SIGTERM.
pub async fn run(opts: ServerOptions) -> Result<()> {
    let data_dir = opts.data_dir.clone();
    let driver = opts.driver;
    if driver == DriverKind::Process {
        eprintln!("{PROCESS_DRIVER_WARNING}");
    }
    if driver == DriverKind::Qemu {
        eprintln!("note: with --driver qemu, directory images run as process instances, which isolate nothing (see `herd server --driver process`); disk and kernel images run as VMs.");
    }
    let mut server = start(opts).await?;
    eprintln!(
        "herd server listening on {} (driver {:?}, data dir {}, API token in {})",
        server.url(),
        driver,
        data_dir.display(),
        data_dir.join(herd_api::auth::TOKEN_FILE).display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("herd server stopping; instances keep running and are re-adopted at the next start");
    server.stop().await;
    Ok(())
}
