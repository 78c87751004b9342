//! `herd agent`: the command line of an extra host's agent. The work is `herd-agent`'s; this
//! reads the flags, joins on first start, and runs the link until Ctrl-C or SIGTERM. After a
//! reboot of the host, its VMs wait for the server's first acknowledgement (see
//! `herd_agent::reboot`): unlike the server's own machine, a joined host may have had them
//! moved away meanwhile.

use anyhow::{anyhow, Result};
use clap::Args;
use herd_agent::identity::Identity;
use herd_agent::link::LinkState;
use herd_driver::Driver;
use std::path::PathBuf;
use std::sync::Arc;

/// `herd agent --server https://SERVER:7900 --join-token T --name h2 --zone 1` (`--server` is
/// the global option: the server to join, on first start).
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The token `herd host join-token create` printed. Needed on first start only.
    #[arg(long, env = "HERD_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// This host's name in the cluster (1–63 letters, digits and '-'). Default: the machine's
    /// hostname.
    #[arg(long)]
    pub name: Option<String>,
    /// The zone this host serves.
    #[arg(long, default_value = "1")]
    pub zone: String,
    /// The rack or other failure domain this host shares with others (default: its own).
    #[arg(long)]
    pub fault_domain: Option<String>,
    /// Where the agent keeps its identity (key, certificate, CA) and, later, its instances.
    #[arg(long, default_value = "/var/lib/herd-agent")]
    pub data_dir: PathBuf,
}

/// Runs the agent in the foreground. `server` is the global `--server` (`HERD_SERVER`): the
/// server to join, used on first start only (afterwards the data dir remembers it).
pub async fn run(a: AgentArgs, server: String) -> Result<()> {
    let identity = match Identity::load(&a.data_dir)? {
        Some(id) => {
            eprintln!(
                "herd agent: host '{}' (zone {}) of {}, identity in {}",
                id.membership.name,
                id.membership.zone,
                id.membership.server,
                a.data_dir.display()
            );
            id
        }
        None => {
            let token = a.join_token.clone().ok_or_else(|| {
                anyhow!(
                    "this host has not joined yet ({} holds no identity): give --server https://SERVER:7900 and --join-token (from `herd host join-token create` on the server)",
                    a.data_dir.display()
                )
            })?;
            let name = match &a.name {
                Some(n) => n.clone(),
                None => machine_hostname()?,
            };
            std::fs::create_dir_all(&a.data_dir)?;
            let join = herd_agent::join::JoinAs {
                server,
                token,
                name,
                zone: a.zone.clone(),
                fault_domain: a.fault_domain.clone(),
                capacity: herd_agent::capacity::measure(&a.data_dir),
            };
            eprintln!("herd agent: joining {} as host '{}' (zone {})", join.server, join.name, join.zone);
            let id = herd_agent::join::join(&join).await?;
            id.save(&a.data_dir)?;
            eprintln!("herd agent: joined; identity saved in {}", a.data_dir.display());
            id
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (state_tx, mut state_rx) = tokio::sync::watch::channel(LinkState::Connecting);
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => return,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = stop_tx.send(true);
    });
    // The link's changes, one line each, for the operator.
    tokio::spawn(async move {
        while state_rx.changed().await.is_ok() {
            let line = match &*state_rx.borrow_and_update() {
                LinkState::Connecting => continue,
                LinkState::Linked => "herd agent: linked to the server".to_string(),
                LinkState::Backoff { error } => format!("herd agent: link lost ({error}); dialling again"),
                LinkState::Refused { reason } => format!("herd agent: refused by the server: {reason}"),
            };
            eprintln!("{line}");
        }
    });
    let (driver, vms) = local_driver(&a.data_dir, &identity.membership.cluster_id).await?;
    // The VMs this host's reboot took down start again once the server lists them.
    let down = match &vms {
        Some(vms) => vms.down_after_host_reboot().await.iter().map(|k| k.path()).collect(),
        None => Vec::new(),
    };
    if !down.is_empty() {
        eprintln!(
            "herd agent: {} VM(s) down since this host rebooted; they start again once the server lists them as this host's",
            down.len()
        );
    }
    let resume: Arc<dyn herd_agent::reboot::Resume> = Arc::new(ResumeVms(vms));
    let after_reboot = herd_agent::reboot::AfterReboot::new(down, resume);
    // Bridged instances plug into this host's network as a host's (the gateway alone, with the
    // anycast MAC); the server stretches their segments to it.
    let tag = herd_driver::tag::driver_tag(&identity.membership.cluster_id);
    let net = herd_hostnet::HostNet::for_tag(&tag);
    net.set_role(herd_hostnet::Role::Host);
    // On a machine of its own (not linked over loopback, which shares the server's network),
    // every instance port forwards only while the server's lease on it lives.
    let fence = !links_over_loopback(&identity.membership.server);
    let network = herd_agent::network::HostNetwork::start(net, fence);
    herd_agent::link::run_after_reboot(&identity, &a.data_dir, driver, Some(network), after_reboot, stop_rx, state_tx)
        .await
}

/// Starts the host's VMs again after its reboot (the qemu driver's resume, for the instances
/// the server listed).
struct ResumeVms(Option<Arc<herd_driver_qemu::QemuDriver>>);

#[async_trait::async_trait]
impl herd_agent::reboot::Resume for ResumeVms {
    async fn resume(&self, keys: Vec<String>) -> Vec<String> {
        let Some(vms) = &self.0 else { return Vec::new() };
        let keys: Vec<herd_model::InstanceKey> =
            keys.iter().filter_map(|k| herd_model::InstanceKey::parse_path(k)).collect();
        vms.resume_after_reboot(Some(&keys)).await.iter().map(|k| k.path()).collect()
    }
}

/// This host's driver: process instances under `<data-dir>/instances`, and VMs under
/// `<data-dir>/vms` when QEMU is installed (KVM when usable, else TCG), each instance tagged
/// with the cluster's id, as on the server; and the VM driver alone, if there is one.
async fn local_driver(
    data_dir: &std::path::Path,
    cluster_id: &str,
) -> Result<(Arc<dyn Driver>, Option<Arc<herd_driver_qemu::QemuDriver>>)> {
    let tag = herd_driver::tag::driver_tag(cluster_id);
    let processes = herd_driver_process::ProcessDriver::new(data_dir.join("instances"), tag.clone())
        .map_err(|e| anyhow!("process driver: {e}"))?
        .with_launcher(std::env::current_exe()?);
    let mut qc = herd_driver_qemu::QemuConfig::new(data_dir.join("vms"), tag);
    if !qc.qemu.exists() {
        eprintln!(
            "herd agent: {} is not installed: this host runs process instances only (apt-get install qemu-system-x86 for VMs)",
            qc.qemu.display()
        );
        return Ok((Arc::new(processes), None));
    }
    qc.accel = herd_driver_qemu::accel::auto(&qc.qemu, data_dir).await;
    qc.metadata_relay = Some(std::env::current_exe()?);
    let vms = Arc::new(herd_driver_qemu::QemuDriver::new(qc).map_err(|e| anyhow!("qemu driver: {e}"))?);
    Ok((Arc::new(herd_driver::by_image::ByImage::new(vms.clone(), Arc::new(processes))), Some(vms)))
}

/// Whether the server URL names a loopback address (an agent on the server's own machine).
fn links_over_loopback(server: &str) -> bool {
    herd_agent::join::server_url(server)
        .ok()
        .and_then(|u| u.host_str().map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string()))
        .is_some_and(|h| h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback()))
}

fn machine_hostname() -> Result<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(|e| anyhow!("reading this machine's hostname (give --name): {e}"))?;
    Ok(h.trim().split('.').next().unwrap_or_default().to_string())
}
