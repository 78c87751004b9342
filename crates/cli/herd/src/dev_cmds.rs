//! `herd dev cluster …`: the command line of the namespace cluster rig (`herd-dev-cluster`),
//! which tests, benchmarks and the demo use to run a server and several agent hosts on one
//! machine.

use crate::output::{Columns, Format};
use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use herd_dev_cluster::{Cluster, ClusterSpec, Layout, UpOptions};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum DevCmd {
    /// A cluster of herd hosts on this machine, each in its own network, mount, PID and UTS
    /// namespaces, joined on a fabric bridge (needs root, iproute2 and util-linux).
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Internal: PID 1 of a rig host (names the host, gives it a private /run/herd, reaps
    /// orphans).
    #[command(hide = true)]
    HostInit {
        #[arg(long)]
        hostname: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Build a cluster: a fabric bridge, a server and N agent hosts, every host Ready.
    Up(Box<UpArgs>),
    /// Remove a cluster: every process in it, its namespaces, its state, and its data (unless
    /// --keep-data).
    Down {
        #[arg(long, default_value = "dev")]
        name: String,
        /// Keep the data dir (server store, agents' instances and logs).
        #[arg(long)]
        keep_data: bool,
    },
    /// The members of a cluster: namespaces, addresses, zones, and whether each one's herd
    /// process runs.
    Status {
        #[arg(long, default_value = "dev")]
        name: String,
    },
    /// Run a command inside a member's namespaces, with HERD_SERVER and HERD_DATA_DIR set so
    /// `herd` commands reach the cluster's server: `herd dev cluster exec -- herd host list`.
    Exec {
        #[arg(long, default_value = "dev")]
        name: String,
        /// The member: `server`, or a host (`h1`, `h2`, …).
        #[arg(long = "on", default_value = "server")]
        member: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Signal a member's herd process (server or agent): crash it (kill), freeze it (stop),
    /// or let it go on (cont). The member's instances are not signalled.
    Signal {
        #[arg(long, default_value = "dev")]
        name: String,
        /// `server`, or a host (`h1`, `h2`, …).
        member: String,
        #[arg(long, value_enum, default_value = "kill")]
        signal: RigSignal,
    },
    /// Cut a member's cable to the fabric (down) or restore it (up): its port on the fabric
    /// bridge goes down, so nothing crosses and nobody is told, as with a pulled cable. Its
    /// processes and instances go on.
    Link {
        #[arg(long, default_value = "dev")]
        name: String,
        /// `server`, or a host (`h1`, `h2`, …).
        #[arg(long = "member")]
        member: String,
        #[arg(value_enum)]
        state: LinkState,
    },
    /// Reboot a host: every process of it dies (agent, VMs, process instances), its network is
    /// made anew as at power-on (a cut cable stays cut), and it boots with a new boot id and
    /// starts its agent again. Its data dir (its disk) stays.
    Reboot {
        #[arg(long, default_value = "dev")]
        name: String,
        /// The host (`h1`, `h2`, …).
        #[arg(long = "member")]
        member: String,
        /// Wait until its new agent has linked and the host is Ready again.
        #[arg(long)]
        wait: bool,
    },
    /// Start a member's herd process again (after `signal kill`); an agent uses the identity
    /// in its data dir, so it needs no join token.
    Start {
        #[arg(long, default_value = "dev")]
        name: String,
        /// `server`, or a host (`h1`, `h2`, …).
        member: String,
        /// Wait until it serves again (the server answers; the host is Ready).
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LinkState {
    Up,
    Down,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RigSignal {
    Kill,
    Stop,
    Cont,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// The cluster's name (1–12 of a-z, 0-9, '-'): its namespaces are `herd-NAME-*`, so
    /// clusters with different names run side by side.
    #[arg(long, default_value = "dev")]
    pub name: String,
    /// How many agent hosts (h1, h2, …).
    #[arg(long, default_value_t = 3)]
    pub hosts: u32,
    /// Zone of each host in turn, repeating (h1 the first, h2 the second, …).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub zones: Vec<String>,
    /// Rack (fault-domain label) of each host in turn, repeating. Default: each host is its
    /// own fault domain.
    #[arg(long, value_delimiter = ',')]
    pub racks: Vec<String>,
    /// The fabric network (a private /24); the server is .2, hosts .10 on.
    #[arg(long, default_value = "10.250.0.0/24")]
    pub subnet: String,
    /// Where the server's and hosts' data and logs go. Default: /var/lib/herd-dev/NAME.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The server's --driver (`qemu` when the hosts are to run VMs).
    #[arg(long, default_value = "process")]
    pub driver: String,
    /// Extra server settings (TOML) appended to the config the rig writes.
    #[arg(long)]
    pub server_config: Option<PathBuf>,
    /// Extra `herd server` arguments, e.g. `--server-arg=--accel --server-arg=tcg`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// A zone the server's own machine serves as well (default: it takes no instances).
    #[arg(long)]
    pub local_zone: Option<String>,
    /// Seconds to wait for the server and for every host to be Ready.
    #[arg(long, default_value_t = 180)]
    pub wait_secs: u64,
}

const MEMBER_TABLE: Columns<'static> = &[
    ("Member", "name"),
    ("Role", "role"),
    ("Namespace", "netns"),
    ("Address", "address"),
    ("Zone", "zone"),
    ("FaultDomain", "faultDomain"),
    ("Herd", "herd"),
    ("Pid", "pid"),
];

/// Runs `herd dev …` (every form but `host-init`, which `main` runs before any runtime).
pub fn run(cmd: DevCmd, output: Format, query: Option<&str>) -> Result<()> {
    let DevCmd::Cluster(cmd) = cmd else { bail!("herd dev host-init is run by the rig only") };
    match cmd {
        ClusterCmd::Up(a) => {
            let a = *a;
            let data_dir = match a.data_dir {
                Some(d) => std::path::absolute(d)?,
                None => ClusterSpec::default_data_dir(&a.name),
            };
            let spec = ClusterSpec {
                name: a.name,
                hosts: a.hosts,
                zones: a.zones,
                racks: a.racks,
                subnet: herd_dev_cluster::layout::parse_subnet(&a.subnet)?,
                data_dir,
            };
            let layout = Layout::plan(&spec)?;
            let server_config = match &a.server_config {
                Some(p) => {
                    std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("--server-config {}: {e}", p.display()))?
                }
                None => String::new(),
            };
            let opts = UpOptions {
                driver: a.driver,
                server_args: a.server_args,
                server_config,
                local_zone: a.local_zone,
                timeout: Duration::from_secs(a.wait_secs),
            };
            let cluster = Cluster::up(layout, &opts)?;
            print_status(&cluster, output, query)?;
            if matches!(output, Format::Table) {
                println!(
                    "\nUse it: herd dev cluster exec --name {} -- herd host list\nRemove it: herd dev cluster down --name {}",
                    cluster.layout.name, cluster.layout.name
                );
            }
            Ok(())
        }
        ClusterCmd::Down { name, keep_data } => herd_dev_cluster::rig::down_by_name(&name, keep_data),
        ClusterCmd::Status { name } => print_status(&Cluster::load(&name)?, output, query),
        ClusterCmd::Exec { name, member, command } => {
            let cluster = Cluster::load(&name)?;
            let (program, args) = command.split_first().expect("required");
            let program = resolve_program(program, &cluster);
            let status = cluster.command_in(&member, &program, args)?.status()?;
            if !status.success() {
                std::process::exit(status.code().unwrap_or(1));
            }
            Ok(())
        }
        ClusterCmd::Signal { name, member, signal } => {
            let cluster = Cluster::load(&name)?;
            let sig = match signal {
                RigSignal::Kill => nix::sys::signal::Signal::SIGKILL,
                RigSignal::Stop => nix::sys::signal::Signal::SIGSTOP,
                RigSignal::Cont => nix::sys::signal::Signal::SIGCONT,
            };
            let pid = cluster.signal(&member, sig)?;
            eprintln!("herd dev cluster: sent {sig} to {member}'s herd (pid {pid})");
            Ok(())
        }
        ClusterCmd::Link { name, member, state } => {
            Cluster::load(&name)?.link(&member, state == LinkState::Up)?;
            eprintln!("herd dev cluster: {member}'s link is {}", if state == LinkState::Up { "up" } else { "down" });
            Ok(())
        }
        ClusterCmd::Reboot { name, member, wait } => {
            let mut cluster = Cluster::load(&name)?;
            let within = Duration::from_secs(180);
            let boot_id = cluster.reboot(&member, wait, within)?;
            eprintln!("herd dev cluster: {member} rebooted (boot id {boot_id})");
            Ok(())
        }
        ClusterCmd::Start { name, member, wait } => {
            let cluster = Cluster::load(&name)?;
            cluster.start(&member)?;
            if wait {
                let within = Duration::from_secs(180);
                if member == "server" {
                    cluster.wait_server(within)?;
                } else {
                    cluster.wait_hosts_ready(std::slice::from_ref(&member), within)?;
                }
            }
            eprintln!("herd dev cluster: started {member}'s herd");
            Ok(())
        }
    }
}

/// `herd` in an exec'd command means this very binary, so a cluster built by one build is
/// driven by the same build.
fn resolve_program(program: &str, cluster: &Cluster) -> PathBuf {
    if program == "herd" {
        cluster.herd.clone()
    } else {
        PathBuf::from(program)
    }
}

fn status_value(c: &Cluster) -> Value {
    let members: Vec<Value> = c
        .layout
        .members
        .iter()
        .map(|m| {
            let pid = c.herd_process(&m.name).ok().flatten();
            json!({
                "name": m.name,
                "role": m.role,
                "netns": m.netns,
                "address": m.address.to_string(),
                "zone": m.zone,
                "faultDomain": m.fault_domain,
                "dataDir": m.data_dir,
                "init": c.inits.get(&m.name),
                "bootId": c.boot_id(&m.name).ok(),
                "herd": if pid.is_some() { "running" } else { "stopped" },
                "pid": pid,
            })
        })
        .collect();
    json!({
        "name": c.layout.name,
        "serverUrl": c.layout.server_url(),
        "fabric": { "netns": c.layout.fabric_netns, "subnet": c.layout.subnet, "bridge": herd_dev_cluster::layout::FABRIC_BRIDGE },
        "dataDir": c.layout.data_dir,
        "driver": c.driver,
        "members": members,
    })
}

fn print_status(c: &Cluster, output: Format, query: Option<&str>) -> Result<()> {
    let v = status_value(c);
    if matches!(output, Format::Table) && query.is_none() {
        println!(
            "Cluster {} · server {} · fabric {} in {}",
            c.layout.name,
            c.layout.server_url(),
            c.layout.subnet,
            c.layout.fabric_netns
        );
        print!("{}", crate::output::render(&v["members"], output, None, Some(MEMBER_TABLE))?);
        return Ok(());
    }
    print!("{}", crate::output::render(&v, output, query, None)?);
    Ok(())
}
