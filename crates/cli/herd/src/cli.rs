//! The command line, spelled like `az` so Azure users can carry their habits over.

use crate::output::Format;
use crate::server::DriverKind;
use clap::{Args, Parser, Subcommand};
pub use herd_demo::DemoArgs;
use std::net::SocketAddr;
use std::path::PathBuf;

/// herd: scale sets of full virtual machines on your own Linux hosts.
///
/// Describe one VM model and a count; herd makes reality match. `herd server` runs the API,
/// the reconciler and the embedded store; every other command is a client of that server.
#[derive(Debug, Parser)]
#[command(name = "herd", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// The help heading of the options every client command takes; clap lists it after the
/// command's own options.
pub const GLOBAL_OPTIONS: &str = "Global options";

/// Commands that talk to no server, so the client options are hidden from their help and
/// refused on their command line.
const SERVERLESS: &[&str] = &["server", "demo", "bench"];

/// The ids of [`Global`]'s options (clap derives them from the field names).
const CLIENT_OPTIONS: &[&str] =
    &["server", "token", "token_dir", "ca_file", "output", "query", "no_wait", "timeout", "quiet"];

/// The command line as `herd` parses it: [`Cli`], with the client options hidden from the
/// commands in [`SERVERLESS`]. clap propagates global options to every subcommand when the
/// command is built, so they are hidden after that (in place: argument order is kept).
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    // Only on the serverless command itself: its own subcommands (`herd server status`) are
    // clients of a running server and keep the client options.
    fn hide_client_options(c: clap::Command) -> clap::Command {
        c.mut_args(|a| if CLIENT_OPTIONS.contains(&a.get_id().as_str()) { a.hide(true) } else { a })
    }
    let mut cmd = Cli::command();
    cmd.build();
    cmd.mut_subcommands(|s| if SERVERLESS.contains(&s.get_name()) { hide_client_options(s) } else { s })
}

/// Parses the process's arguments (exits with clap's message on bad input, or on a client
/// option given to a command that talks to no server).
pub fn parse() -> Cli {
    use clap::FromArgMatches;
    let mut cmd = command();
    let matches = cmd.clone().get_matches();
    // `herd server status` (a nested subcommand) is a client command: it takes them.
    let serverless = matches.subcommand().filter(|(n, sub)| SERVERLESS.contains(n) && sub.subcommand().is_none());
    if let Some((name, sub)) = serverless {
        if let Some(flag) = client_option_given(&cmd, &matches, sub) {
            let sub_cmd = cmd.find_subcommand_mut(name).expect("a subcommand clap just matched");
            sub_cmd.error(
                clap::error::ErrorKind::ArgumentConflict,
                format!("{flag} is an option of the client commands; 'herd {name}' talks to no server and does not take it"),
            )
            .exit();
        }
    }
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut cmd).exit())
}

/// The first client option given on the command line (not through the environment), as the
/// user spells it (`--query`).
fn client_option_given(cmd: &clap::Command, top: &clap::ArgMatches, sub: &clap::ArgMatches) -> Option<String> {
    use clap::parser::ValueSource;
    let mut all = vec![top];
    let mut m = sub;
    all.push(m);
    while let Some((_, next)) = m.subcommand() {
        all.push(next);
        m = next;
    }
    CLIENT_OPTIONS.iter().find_map(|id| {
        let given = all.iter().any(|m| {
            m.try_get_raw(id).ok().flatten().is_some() && m.value_source(id) == Some(ValueSource::CommandLine)
        });
        given.then(|| {
            cmd.get_arguments()
                .find(|a| a.get_id() == *id)
                .and_then(|a| a.get_long())
                .map_or_else(|| id.to_string(), |l| format!("--{l}"))
        })
    })
}

/// Options every client command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// The herd server's URL.
    #[arg(long, global = true, help_heading = GLOBAL_OPTIONS, env = "HERD_SERVER", hide_env_values = true, default_value = "https://127.0.0.1:7900")]
    pub server: String,
    /// The CA bundle (PEM) that the server's certificate must chain to. Default: the cluster
    /// CA in the data dir (`tls/ca.pem` under --token-dir); without one, the platform's public
    /// roots (for a server using an operator's certificate from a public CA). Get it on the
    /// server with `herd server ca show`.
    #[arg(long = "ca-file", global = true, help_heading = GLOBAL_OPTIONS, env = "HERD_CA_FILE", hide_env_values = true)]
    pub ca_file: Option<PathBuf>,
    /// API token. Default: read from the server's data dir (api-token).
    #[arg(long, global = true, help_heading = GLOBAL_OPTIONS, env = "HERD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where to find the token file when --token is not given: the server's --data-dir.
    /// Default, as the server's: /var/lib/herd as root, else $XDG_DATA_HOME/herd or
    /// ~/.local/share/herd.
    #[arg(long = "token-dir", global = true, help_heading = GLOBAL_OPTIONS, env = "HERD_DATA_DIR", hide_env_values = true)]
    pub token_dir: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, global = true, help_heading = GLOBAL_OPTIONS, value_enum, default_value = "json")]
    pub output: Format,
    /// JMESPath query applied to the result, as in az (e.g. --query id -o tsv).
    #[arg(long, global = true, help_heading = GLOBAL_OPTIONS)]
    pub query: Option<String>,
    /// Return as soon as the request is accepted instead of waiting for it to take effect.
    #[arg(long, global = true, help_heading = GLOBAL_OPTIONS)]
    pub no_wait: bool,
    /// Seconds to wait for a change to take effect.
    #[arg(long, global = true, help_heading = GLOBAL_OPTIONS, default_value_t = 600)]
    pub timeout: u64,
    /// Do not show progress while waiting.
    #[arg(long, global = true, help_heading = GLOBAL_OPTIONS)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the herd server: API, reconcilers and the embedded store.
    Server(ServerArgs),
    /// Manage resource groups.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Manage virtual machine scale sets.
    #[command(subcommand)]
    Vmss(VmssCmd),
    /// Manage virtual networks, public IPs and load balancers.
    #[command(subcommand)]
    Network(crate::network_cmds::NetworkCmd),
    /// Manage the local image gallery.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Activity log, metrics and autoscale.
    #[command(subcommand)]
    Monitor(MonitorCmd),
    /// Hosts: those joined with `herd agent`, join tokens, and capacity.
    #[command(subcommand)]
    Host(HostCmd),
    /// Run the agent of an extra host: join it to a cluster (first start, with a join token),
    /// then keep its mutually authenticated link to the server.
    Agent(crate::agent_cmd::AgentArgs),
    /// Instance-hours and cost of every scale set (or one group's), by SKU and priority.
    Cost(crate::cost_cmds::CostArgs),
    /// Check the store: every record decodes, and the database's own integrity check.
    #[command(subcommand)]
    Store(crate::store_cmds::StoreCmd),
    /// Play the walkthrough (docs/user-guide.md) on real VMs, or process instances: every
    /// command printed with what came back, checked, timed, and cleaned up (unless --keep).
    Demo(DemoArgs),
    /// Measure herd: provisioning speed and API latency.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Developer tools: a whole cluster on this machine in namespaces (`herd dev cluster up`).
    #[command(subcommand)]
    Dev(crate::dev_cmds::DevCmd),
    /// Print generated reference material (docs/cli.md, docs/openapi.json).
    #[command(hide = true, subcommand)]
    Gen(GenCmd),
    /// Internal: how the process driver starts an instance with its own hostname.
    #[command(hide = true)]
    InstanceInit(InstanceInitArgs),
    /// Internal: QEMU runs this per guest connection to the metadata address; it relays the
    /// connection (stdin/stdout) to the instance's metadata endpoint. Prints nothing.
    #[command(hide = true)]
    MetadataRelay { addr: std::net::SocketAddr },
}

#[derive(Debug, Subcommand)]
pub enum HostCmd {
    /// Hosts joined with `herd agent`: zone, fault domain, state (Ready, NotReady, Cordoned),
    /// capacity and use, instances, agent version and last heartbeat.
    List,
    /// With NAME, one joined host; without, each declared host's capacity (vCPU, memory) and
    /// what is allocated to Regular and Spot instances.
    Show {
        /// A joined host's name.
        name: Option<String>,
    },
    /// Place no new instances on a host (those it runs stay).
    Cordon { name: String },
    /// Place new instances on a cordoned host again.
    Uncordon { name: String },
    /// Cordon a host and move every instance on it to another host of its zone, disks and all
    /// (each a redeploy: a Redeploy scheduled event, a load-balancer drain, stop, copy, start;
    /// Spot instances are evicted instead). Waits until the host is empty unless --no-wait.
    /// Refused, with nothing changed, when an instance has no room elsewhere in its zone, or
    /// when the host is the last Ready one of a zone a zoneBalance set uses.
    Drain { name: String },
    /// Remove a joined host: its agent is refused from then on. Refused while instances are
    /// placed on it, unless --force.
    Delete {
        name: String,
        /// Delete even while instances are placed on it.
        #[arg(long)]
        force: bool,
    },
    /// Tokens with which `herd agent` joins a host to the cluster.
    #[command(subcommand)]
    JoinToken(JoinTokenCmd),
}

#[derive(Debug, Subcommand)]
pub enum JoinTokenCmd {
    /// Create a token and print it (this once: the server keeps only its hash). It embeds the
    /// cluster CA's SHA-256, so an agent can check the server on first contact.
    Create {
        /// How long it is valid: 30m, 24h, 7d (at most 30 days).
        #[arg(long, default_value = "24h")]
        expires: String,
        /// Valid for one host only.
        #[arg(long)]
        single_use: bool,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// The tokens (ids, expiry, use; never secrets).
    List,
    /// Delete a token: no host can join with it any more (hosts that joined stay).
    Delete {
        /// The token's id (`list` shows it; the part after the CA fingerprint, before the dot).
        id: String,
    },
}

/// `herd instance-init --hostname NAME -- PROGRAM [ARGS]`: enter a new UTS namespace, set the
/// hostname, then exec PROGRAM (same pid, environment and working directory).
#[derive(Debug, Args)]
pub struct InstanceInitArgs {
    #[arg(long)]
    pub hostname: String,
    #[arg(last = true, required = true)]
    pub program: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Where the store, the API token, images and instance data live.
    /// Default: /var/lib/herd as root, else $XDG_DATA_HOME/herd or ~/.local/share/herd (the
    /// client commands look for the token there too).
    #[arg(long, env = "HERD_DATA_DIR", hide_env_values = true)]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on (HTTPS; plain HTTP only with --insecure-http, on loopback).
    #[arg(long, default_value = "127.0.0.1:7900")]
    pub listen: SocketAddr,
    /// Another name or address the server's certificate must be valid for (a DNS name, or the
    /// address of a load balancer in front of the server); repeat or separate with commas. The
    /// listen address, localhost, the loopback addresses (and, listening on 0.0.0.0, every
    /// address and the host name of this machine) are always included.
    #[arg(long = "tls-san", value_delimiter = ',')]
    pub tls_san: Vec<String>,
    /// The cluster CA's private key (created 0600 at first start if absent). Keep it off the
    /// data dir's disk and backups: whoever holds it can sign server and agent certificates.
    /// Default: tls/ca-key.pem in the data dir.
    #[arg(long = "ca-key-file", conflicts_with_all = ["tls_cert", "insecure_http"])]
    pub ca_key_file: Option<PathBuf>,
    /// Serve your own certificate chain (PEM, leaf first) instead of one from the cluster CA;
    /// `herd server rotate-cert` reads the files again. Needs --tls-key.
    #[arg(long = "tls-cert", requires = "tls_key", conflicts_with_all = ["tls_san", "insecure_http"])]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long = "tls-key", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP instead of HTTPS. Refused unless --listen is a loopback address: the API
    /// token must not cross a network in clear text.
    #[arg(long = "insecure-http", conflicts_with = "tls_san")]
    pub insecure_http: bool,
    /// What runs instances.
    #[arg(long, value_enum, default_value = "process")]
    pub driver: DriverKind,
    /// Server settings file (TOML): zones, extra SKUs, provisioning limits, sim behaviour.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// QEMU acceleration (qemu driver): `auto` boots a tiny canary under KVM and uses KVM only
    /// if it really runs, else TCG.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelChoice,
    /// Start even though the store is empty while instances of this cluster exist: they keep
    /// running, listed as unmanaged (`herd server status`), and herd never destroys them.
    #[arg(long, conflicts_with = "destroy_orphans")]
    pub keep_orphans: bool,
    /// Destroy every instance of this cluster that the store has no record of (and the
    /// unmanaged ones) before starting.
    #[arg(long)]
    pub destroy_orphans: bool,
    /// The key that seals protected settings and passwords (32 bytes; created 0600 if absent
    /// and nothing is sealed yet). Keep it off the data dir's disk or backups to keep a copy of
    /// the database useless without it. Default: `secret.key` in the data dir, or
    /// `[secrets] seal_key_file` in the config.
    #[arg(long)]
    pub seal_key_file: Option<PathBuf>,
    #[command(subcommand)]
    pub action: Option<ServerCmd>,
}

/// `herd server <command>`: questions to a running server.
#[derive(Debug, Subcommand)]
pub enum ServerCmd {
    /// The running server's cluster id, quarantined records (cannot be decoded), unmanaged
    /// instances (kept with --keep-orphans), and each background controller: its phase, last
    /// run and duration, failures, last error and what it waits for.
    Status,
    /// How the running server serves its API: the mode (ClusterCa, OperatorCertificate or
    /// InsecureHttp), the CA's fingerprint and bundle, a CA rotation's overlap, and the
    /// certificate it presents (fingerprint, end, names).
    Tls,
    /// The cluster CA.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Renew the server's certificate under the same CA (with --tls-cert: read the files
    /// again). No restart; clients and open connections are not affected.
    RotateCert,
    /// Make a new cluster CA. The old one stays trusted for --overlap (the server presents the
    /// new CA cross-signed by the old, so clients that know only the old one keep working), then
    /// is retired. Clients on other machines fetch the new bundle with `herd server ca show`.
    RotateCa {
        /// How long the old CA stays trusted (e.g. 30m, 24h, 7d; at most a year).
        #[arg(long, default_value = "24h")]
        overlap: String,
    },
}

/// `herd server ca <command>`.
#[derive(Debug, Subcommand)]
pub enum CaCmd {
    /// Print the cluster CA bundle (PEM) and each CA's SHA-256 fingerprint, read from the
    /// server's data dir, so a user on another machine can check and pin it
    /// (`--ca-file`/HERD_CA_FILE). Run it where the server runs.
    Show {
        /// The server's data dir. Default: as `herd server`'s.
        #[arg(long, env = "HERD_DATA_DIR", hide_env_values = true)]
        data_dir: Option<PathBuf>,
    },
}

/// `--accel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// Create a resource group (or update its tags).
    Create {
        #[arg(short, long)]
        name: String,
        /// Location label; herd runs on your hosts, so this is informational.
        #[arg(short, long, default_value = "local")]
        location: String,
        /// Tags as key=value.
        #[arg(long, num_args = 1..)]
        tags: Vec<String>,
    },
    /// List resource groups.
    List,
    /// Show a resource group.
    Show {
        #[arg(short, long)]
        name: String,
    },
    /// Delete a resource group and every scale set in it.
    Delete {
        #[arg(short, long)]
        name: String,
        /// Do not ask for confirmation (accepted for az compatibility; herd does not prompt).
        #[arg(short, long)]
        yes: bool,
    },
}

/// `-g` and `-n` for one scale set.
#[derive(Debug, Args, Clone)]
pub struct SetRef {
    /// Resource group.
    #[arg(short = 'g', long = "resource-group")]
    pub group: String,
    /// Scale set name.
    #[arg(short, long, visible_alias = "vmss-name")]
    pub name: String,
}

/// Which instances an action applies to.
#[derive(Debug, Args, Clone)]
pub struct InstanceIds {
    /// Instance ids as list-instances shows them, or '*' for all. Default: all.
    #[arg(long = "instance-ids", num_args = 1..)]
    pub ids: Vec<String>,
}

/// Which instances an action applies to; required.
#[derive(Debug, Args, Clone)]
pub struct RequiredInstanceIds {
    /// Instance ids as list-instances shows them, or '*' for all.
    #[arg(long = "instance-ids", num_args = 1.., required = true)]
    pub ids: Vec<String>,
}

#[derive(Debug, Args)]
pub struct VmssCreate {
    #[command(flatten)]
    pub set: SetRef,
    /// Image URN publisher:offer:sku:version ('latest' picks the highest version).
    #[arg(long)]
    pub image: String,
    /// Number of instances (0 to 100; up to 1000 with --single-placement-group false).
    #[arg(long, default_value_t = 2, allow_negative_numbers = true)]
    pub instance_count: i64,
    /// VM size.
    #[arg(long, default_value = "Standard_DS1_v2")]
    pub vm_sku: String,
    #[arg(short, long, default_value = "local")]
    pub location: String,
    /// Admin user created in each VM.
    #[arg(long, default_value = "azureuser")]
    pub admin_username: String,
    /// Admin password (12–123 characters). Stored apart from the model and never shown back.
    #[arg(long)]
    pub admin_password: Option<String>,
    /// password, ssh or all.
    #[arg(long, value_parser = ["password", "ssh", "all"])]
    pub authentication_type: Option<String>,
    /// SSH public keys (key text or a path to a .pub file).
    #[arg(long = "ssh-key-values", visible_alias = "ssh-key-value", num_args = 1..)]
    pub ssh_key_values: Vec<String>,
    /// Computer name prefix (default: the set's name cut to 9 characters).
    #[arg(long)]
    pub computer_name_prefix: Option<String>,
    /// Custom data (cloud-init) as text or a path to a file.
    #[arg(long)]
    pub custom_data: Option<String>,
    /// Availability zones to spread instances over, e.g. --zones 1 2 3.
    #[arg(short, long, num_args = 1..)]
    pub zones: Vec<String>,
    /// Fail any operation that would leave zones unbalanced.
    #[arg(long)]
    pub zone_balance: bool,
    /// Manual, Automatic or Rolling.
    #[arg(long, default_value = "Manual")]
    pub upgrade_policy_mode: String,
    /// Do not create extra instances during scale-out.
    #[arg(long)]
    pub disable_overprovision: bool,
    /// true (max 100 instances) or false (max 1000).
    #[arg(long)]
    pub single_placement_group: Option<bool>,
    #[arg(long)]
    pub platform_fault_domain_count: Option<i64>,
    /// Default, OldestVM or NewestVM.
    #[arg(long)]
    pub scale_in_policy: Option<String>,
    /// Regular, Spot, or Low (Spot's older name). Spot instances use the capacity Regular ones
    /// leave free, cost the spot price, and are evicted when Regular demand needs the room.
    #[arg(long)]
    pub priority: Option<String>,
    /// Spot: Deallocate (keep the disk and the record; stop billing) or Delete.
    #[arg(long)]
    pub eviction_policy: Option<String>,
    /// Spot: the most to pay per hour; evicted when the spot price rises above it. -1 = never
    /// evict for price.
    #[arg(long, allow_negative_numbers = true)]
    pub max_price: Option<f64>,
    /// Spot: restore evicted instances when capacity (or a lower price) returns.
    #[arg(long)]
    pub enable_spot_restore: bool,
    /// Spot: how long to keep trying to restore, ISO 8601 (default PT1H).
    #[arg(long)]
    pub spot_restore_timeout: Option<String>,
    /// Regular: post a Terminate scheduled event this many minutes (5 to 15) before an instance
    /// is deleted; the guest may acknowledge it sooner.
    #[arg(long)]
    pub terminate_notification_time: Option<u32>,
    /// Tags as key=value.
    #[arg(long, num_args = 1..)]
    pub tags: Vec<String>,
    /// Uniform (Flexible comes later).
    #[arg(long)]
    pub orchestration_mode: Option<String>,
    /// Load balancer whose backend pool the instances join; created (with a frontend
    /// 'loadBalancerFrontEnd' and a pool '<lb>BEPool') if it does not exist. "" for none.
    #[arg(long)]
    pub lb: Option<String>,
    /// Backend pool to join (default: <lb>BEPool; created if missing).
    #[arg(long)]
    pub backend_pool_name: Option<String>,
    /// Public IP of a load balancer that --lb creates (created too if absent).
    #[arg(long)]
    pub public_ip_address: Option<String>,
    /// Virtual network of --subnet.
    #[arg(long)]
    pub vnet_name: Option<String>,
    /// Subnet (a name with --vnet-name, or an id) the instances get private IPs from.
    #[arg(long)]
    pub subnet: Option<String>,
    /// Network security group (a name in the set's group, or an id) of every instance's NIC.
    #[arg(long)]
    pub nsg: Option<String>,
    /// Give every instance its own public IP from the server's pool ([network] public_ip_pool),
    /// 1:1 NATed to its private IP (bridged networking; needs --subnet).
    #[arg(long)]
    pub public_ip_per_vm: bool,
    /// Empty data disks per instance, sizes in GB (LUNs 0, 1, ...); kept across reimage.
    #[arg(long, num_args = 1..)]
    pub data_disk_sizes_gb: Vec<u64>,
}

#[derive(Debug, Subcommand)]
pub enum VmssCmd {
    /// Create a scale set and wait until its instances run.
    Create(Box<VmssCreate>),
    /// List the scale sets of a resource group.
    List {
        #[arg(short = 'g', long = "resource-group")]
        group: String,
    },
    /// Show a scale set's model and instance summary.
    Show(SetRef),
    /// Delete a scale set and all its instances.
    Delete(SetRef),
    /// Change the capacity.
    Scale {
        #[command(flatten)]
        set: SetRef,
        #[arg(long, allow_negative_numbers = true)]
        new_capacity: i64,
    },
    /// Change the model with az-style generic edits; all apply or none.
    Update {
        #[command(flatten)]
        set: SetRef,
        /// PATH=VALUE, e.g. --set upgradePolicy.mode=Automatic (VALUE is JSON or text).
        #[arg(long = "set", num_args = 1.., value_name = "PATH=VALUE")]
        set_ops: Vec<String>,
        /// PATH VALUE: append VALUE (JSON) to the list at PATH.
        #[arg(long, num_args = 2, value_names = ["PATH", "VALUE"], action = clap::ArgAction::Append)]
        add: Vec<String>,
        /// PATH [INDEX]: remove a list item, or the property at PATH.
        #[arg(long, num_args = 1..=2, value_names = ["PATH", "INDEX"], action = clap::ArgAction::Append)]
        remove: Vec<String>,
        /// Only apply if the set's etag still matches.
        #[arg(long)]
        if_match: Option<String>,
        /// Update one instance's protection policy instead of the model.
        #[arg(long)]
        instance_id: Option<String>,
        /// With --instance-id: scale-in never picks the instance.
        #[arg(long, requires = "instance_id")]
        protect_from_scale_in: Option<bool>,
        /// With --instance-id: upgrades, repairs and scale-in leave the instance alone.
        #[arg(long, requires = "instance_id")]
        protect_from_scale_set_actions: Option<bool>,
    },
    /// Rolling upgrades: start (with a canary), pause, resume, cancel, roll back, show the latest.
    #[command(subcommand)]
    RollingUpgrade(RollingCmd),
    /// Bring instances to the latest model.
    UpdateInstances {
        #[command(flatten)]
        set: SetRef,
        #[command(flatten)]
        ids: RequiredInstanceIds,
    },
    /// Recreate instances from the model's image.
    Reimage {
        #[command(flatten)]
        set: SetRef,
        #[command(flatten)]
        ids: InstanceIds,
    },
    /// Recreate every instance from the model's image.
    ReimageAll(SetRef),
    /// Suspend or resume the set's automatic repairs (resuming clears the circuit breaker).
    SetOrchestrationServiceState {
        #[command(flatten)]
        set: SetRef,
        /// AutomaticRepairs.
        #[arg(long)]
        service_name: String,
        /// Suspend or Resume.
        #[arg(long)]
        action: String,
    },
    /// Start instances.
    Start {
        #[command(flatten)]
        set: SetRef,
        #[command(flatten)]
        ids: InstanceIds,
    },
    /// Stop (power off) instances; they keep their resources.
    Stop {
        #[command(flatten)]
        set: SetRef,
        #[command(flatten)]
        ids: InstanceIds,
    },
    /// Stop instances and release their compute; disks are kept.
    Deallocate {
        #[command(flatten)]
        set: SetRef,
        #[command(flatten)]
        ids: InstanceIds,
    },
    /// Restart running instances.
    Restart {
        #[command(flatten)]
        set: SetRef,
        #[command(flatten)]
        ids: InstanceIds,
    },
    /// Move instances to another host of their zone with their disks, MAC, private IP and
    /// instance id (az's verb; a cold move: a Redeploy scheduled event, a load-balancer drain,
    /// stop, copy, start). Spot instances are evicted instead. Refused when an instance has no
    /// room on another Ready host of its zone.
    Redeploy {
        #[command(flatten)]
        set: SetRef,
        #[command(flatten)]
        ids: InstanceIds,
    },
    /// Delete instances; capacity drops by as many.
    DeleteInstances {
        #[command(flatten)]
        set: SetRef,
        #[command(flatten)]
        ids: RequiredInstanceIds,
    },
    /// List a set's instances.
    ListInstances(SetRef),
    /// List the public IPs of a set's instances (publicIPAddressConfiguration), with each
    /// instance's id and IP configuration.
    ListInstancePublicIps(SetRef),
    /// Instance-hours and cost of the set by SKU and priority, as the meter recorded them.
    Cost(crate::cost_cmds::VmssCostArgs),
    /// Evict a Spot instance as the platform would: a Preempt event first (30 s, or until the
    /// instance acknowledges it), then the eviction policy.
    SimulateEviction {
        #[command(flatten)]
        set: SetRef,
        #[arg(long)]
        instance_id: String,
    },
    /// Show the instance view of one instance (or the set's summary without --instance-id).
    GetInstanceView {
        #[command(flatten)]
        set: SetRef,
        #[arg(long)]
        instance_id: Option<String>,
    },
    /// Print an instance's console log (the serial console of a VM).
    GetBootLog {
        #[command(flatten)]
        set: SetRef,
        #[arg(long)]
        instance_id: String,
        /// Print at most this many bytes from the end.
        #[arg(long, default_value_t = 65536)]
        tail_bytes: usize,
    },
    /// Manage the scale set's extensions (Custom Script).
    #[command(subcommand)]
    Extension(ExtensionCmd),
    /// Wait for a condition on a scale set.
    Wait {
        #[command(flatten)]
        set: SetRef,
        /// Until it exists and has converged.
        #[arg(long, group = "until")]
        created: bool,
        /// Until it has converged with every instance on the latest model.
        #[arg(long, group = "until")]
        updated: bool,
        /// Until it is gone.
        #[arg(long, group = "until")]
        deleted: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RollingCmd {
    /// Start a rolling upgrade to the latest model (under a Rolling policy a model change starts
    /// one by itself; on one in progress, --canary/--pause apply if its first batch is running).
    Start {
        #[command(flatten)]
        set: SetRef,
        /// The first batch: N instances or P% of the capacity (herd's canary).
        #[arg(long)]
        canary: Option<String>,
        /// Pause after the canary batch until `resume` or `rollback`.
        #[arg(long)]
        pause: bool,
    },
    /// Stop the upgrade; instances not yet upgraded stay on the old model.
    Cancel(SetRef),
    /// Pause after the batch in flight.
    Pause(SetRef),
    /// Continue a paused upgrade.
    Resume(SetRef),
    /// Return the upgraded instances to the model they came from.
    Rollback(SetRef),
    /// Show the latest upgrade: state, batches, counts, the failure reason.
    GetLatest(SetRef),
}

/// A scale set named as `az vmss extension` names it (`--vmss-name`; `--name` is the extension).
#[derive(Debug, Args, Clone)]
pub struct VmssRef {
    #[arg(short = 'g', long = "resource-group")]
    pub group: String,
    #[arg(long = "vmss-name")]
    pub vmss_name: String,
}

#[derive(Debug, Subcommand)]
pub enum ExtensionCmd {
    /// Add or replace an extension. With a Manual upgrade policy, instances run it after
    /// `vmss update-instances`.
    #[command(disable_version_flag = true)]
    Set {
        #[command(flatten)]
        set: VmssRef,
        /// The extension type, e.g. CustomScript.
        #[arg(short = 'n', long = "name")]
        name: String,
        /// Microsoft.Azure.Extensions or Herd.Extensions.
        #[arg(long)]
        publisher: String,
        /// The handler version, e.g. 2.0.
        #[arg(long)]
        version: String,
        /// The extension's name in the set (default: --name).
        #[arg(long)]
        extension_instance_name: Option<String>,
        /// Public settings, JSON or '@FILE' (fileUris, commandToExecute, script).
        #[arg(long)]
        settings: Option<String>,
        /// Protected settings, JSON or '@FILE': sealed at rest, never shown back.
        #[arg(long)]
        protected_settings: Option<String>,
        /// Run it again even if nothing changed (sets a new forceUpdateTag).
        #[arg(long)]
        force_update: bool,
        /// Do not upgrade minor versions automatically.
        #[arg(long)]
        no_auto_upgrade_minor_version: bool,
        /// Extensions that must run before this one.
        #[arg(long, num_args = 1..)]
        provision_after_extensions: Vec<String>,
    },
    /// List the set's extensions.
    List(VmssRef),
    /// Show one extension.
    Show {
        #[command(flatten)]
        set: VmssRef,
        /// The extension's name.
        #[arg(short = 'n', long = "name")]
        name: String,
    },
    /// Remove an extension from the model (instances keep what it installed).
    Delete {
        #[command(flatten)]
        set: VmssRef,
        /// The extension's name.
        #[arg(short = 'n', long = "name")]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Import an image into the gallery.
    Import {
        /// publisher:offer:sku:version
        #[arg(long)]
        urn: String,
        /// Send --dir/--disk/--kernel/--initrd as paths for the server to read (it must allow
        /// them in [images] import_roots) instead of uploading the files.
        #[arg(long)]
        server_path: bool,
        /// A directory with an executable `init` (process-driver image). Uploaded as a tar
        /// archive; it may hold only regular files and directories.
        #[arg(long, group = "source")]
        dir: Option<PathBuf>,
        /// A bootable disk image, qcow2 or raw, e.g. a cloud image (qemu driver).
        #[arg(long, group = "source")]
        disk: Option<PathBuf>,
        /// A kernel for direct boot (qemu driver).
        #[arg(long, group = "source")]
        kernel: Option<PathBuf>,
        /// The initrd that goes with --kernel.
        #[arg(long, requires = "kernel")]
        initrd: Option<PathBuf>,
        /// The kernel command line that goes with --kernel ('@FILE' reads it from a file).
        #[arg(long, requires = "kernel")]
        cmdline: Option<String>,
        /// Whether the image runs the QEMU guest agent (in-place extension runs need it).
        /// Default: detected: in the initrd for kernel images, else at boot (the first VM whose
        /// agent answers records it on the image; no answer records nothing).
        #[arg(long)]
        guest_agent: Option<bool>,
    },
    /// List images.
    List,
    /// Show an image ('latest' resolves to the highest version).
    Show {
        #[arg(long)]
        urn: String,
    },
    /// Delete an image (refused while a scale set uses it).
    Delete {
        #[arg(long)]
        urn: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum MonitorCmd {
    /// The activity log.
    #[command(subcommand)]
    ActivityLog(ActivityLogCmd),
    /// Autoscale settings: rules, target tracking, history, what-if simulation.
    #[command(subcommand)]
    Autoscale(crate::autoscale_cmds::AutoscaleCmd),
    /// Named metric sources for autoscale (queue lengths, counts).
    #[command(subcommand)]
    MetricSource(crate::autoscale_cmds::SourceCmd),
    /// Sampled metrics of a scale set or a source.
    #[command(subcommand)]
    Metrics(crate::autoscale_cmds::MetricsCmd),
}

#[derive(Debug, Subcommand)]
pub enum ActivityLogCmd {
    /// List activity-log events of a resource group, oldest first.
    List {
        #[arg(short = 'g', long = "resource-group")]
        group: String,
        /// Only this resource (a scale set name).
        #[arg(long)]
        resource: Option<String>,
        /// Only events newer than this, e.g. 30m, 1h, 2d.
        #[arg(long)]
        since: Option<String>,
        /// At most this many events (the newest).
        #[arg(long, default_value_t = 500)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Spot eviction at scale: deciding and writing the evictions a Regular scale-out needs
    /// across 10,000 instances on 50 hosts, next to a naive global youngest-first peer.
    Spot(herd_bench::spot::SpotBenchOpts),
    /// Placement at scale: 10,000 new instances over 500 simulated hosts in 3 zones with 5
    /// fault domains each, next to the same without fault domains.
    Placement(herd_bench::placement::PlacementBenchOpts),
    /// Host failure with TCG VMs behind the load balancer, in a namespace cluster rig (`herd dev
    /// cluster`; root): a host's link cut -> its VMs out of rotation, and -> running on another
    /// host of the zone, each against its bound. `-o table` for a table, `-o json` (default)
    /// for one JSON line per run and a summary.
    HostFailure(herd_bench::host_failure::HostFailureOpts),
    /// Time from the API call to all instances running.
    Provision {
        #[arg(long, value_enum, default_value = "sim")]
        driver: DriverKind,
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Repeat and report each run.
        #[arg(long, default_value_t = 1)]
        runs: u32,
    },
    /// Throughput, p99 and errors through herd's load balancer and through HAProxy over the
    /// same backends, side by side in alternating rounds, per connection shape; plus how fast a
    /// change reaches the data plane. Needs `wrk` and `haproxy`. As root it runs in a network
    /// namespace of its own (widened port range, TIME_WAIT reuse, `ulimit -n 65536`); the load
    /// balancer under test is pinned to one CPU, `wrk` and the backends to the others.
    Lb {
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 5)]
        duration: u64,
        /// A connection shape: CONNECTIONS (keep-alive) or CONNECTIONS:close (one request per
        /// connection). Repeat for several; default: 64, 1000, 10000 and 64:close.
        #[arg(long = "shape", value_name = "SHAPE")]
        shapes: Vec<herd_bench::lb::load::Shape>,
        /// Alternating rounds per shape (each runs herd, then HAProxy); the median and the
        /// spread are reported.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
        rounds: u32,
        /// Measure in this process as it is: no namespace, no file limit, no CPU pinning.
        #[arg(long)]
        in_place: bool,
        /// Internal: set by the isolated re-run of the bench.
        #[arg(long, hide = true)]
        inside: bool,
        /// Internal: the CPUs for wrk and the backends in the isolated re-run.
        #[arg(long, hide = true)]
        load_cpus: Option<String>,
        /// A CPU budget for each load balancer under test, in CPUs (e.g. 0.5): a cgroup with
        /// that CFS quota per 10 ms period for herd's process and one for HAProxy, so that the
        /// load balancer, not the load generator, limits throughput. Needs root and cgroup v1's
        /// cpu controller or cgroup v2 with cpu delegated.
        #[arg(long, value_name = "CPUS")]
        lb_cpu: Option<f64>,
        /// Internal: the budget's cgroups (their common prefix) in the isolated re-run.
        #[arg(long, hide = true)]
        lb_cgroups: Option<std::path::PathBuf>,
        /// Where the backends sit: loopback (a host-local server, 127.x addresses) or bridged
        /// (a bridged server, each backend on its private IP behind the subnet's bridge; needs
        /// root). Repeat or comma-separate to measure both in one run and compare their
        /// herd/HAProxy ratios; default: loopback.
        #[arg(long = "backends", value_name = "PLACEMENT", value_delimiter = ',')]
        backends: Vec<herd_bench::lb::Placement>,
    },
    /// What bridged networking adds to creating and deleting a process instance: a set of N
    /// sleeper instances on a subnet, converged then deleted, on a bridged server and on a
    /// host-local one, alternating, each run with fresh servers. Prints per run and mode, then
    /// `(bridged - host-local) / N` in ms as a median and spread (issue 19's goal: <= 20 ms).
    /// Needs root and dnsmasq; runs in a network namespace it creates and deletes.
    BridgedSetup {
        /// Instances per set.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=herd_bench::bridged::setup::MAX_COUNT))]
        count: u64,
        /// Runs, each one bridged and one host-local set (the order alternates).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
        runs: u32,
        /// Internal: set by the re-run of the bench inside its namespace.
        #[arg(long, hide = true)]
        inside: bool,
    },
    /// TCP throughput from one VM to another over herd's bridge (two TCG VMs of the test guest
    /// in a bridged set) next to two QEMUs started by hand with herd's exact command line (only
    /// paths, sockets, TAP, MAC and name changed) on a hand-made bridge and TAPs, the same
    /// guest and transfer (busybox nc + dd, timed by the receiver), alternating runs. Prints
    /// Mbit/s per run and side, then the ratio herd/peer (issue 19's goal: >= 0.95). Needs root,
    /// dnsmasq and the test guest; runs in a network namespace it creates and deletes.
    VmNet {
        /// About how long each transfer takes (the byte count is sized from a first transfer).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
        seconds: u64,
        /// Runs, each one transfer on herd's pair and one on the peer (the order alternates).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
        runs: u32,
        /// VM size of all four VMs.
        #[arg(long, default_value = "Standard_B1ls")]
        sku: String,
        /// The test guest build (images/testguest/build.sh OUT): OUT, using OUT/1.0.0.
        #[arg(long, env = "HERD_TESTGUEST_OUT", hide_env_values = true, default_value = "target/testguest")]
        testguest: std::path::PathBuf,
        /// Internal: set by the re-run of the bench inside its namespace.
        #[arg(long, hide = true)]
        inside: bool,
    },
    /// Internal: a minimal HTTP server used as the backend of `bench lb`.
    #[command(hide = true)]
    Backend {
        #[arg(long)]
        bind: std::net::SocketAddr,
    },
    /// Latency of list-instances on a set of N instances (sim driver).
    Api {
        #[arg(long, default_value_t = 1000)]
        instances: u64,
        #[arg(long, default_value_t = 300)]
        requests: u32,
    },
    /// What TLS costs the API: list-instances on a set of sim instances over HTTPS next to
    /// the same server on --insecure-http, alternating rounds, with a kept connection and with
    /// a new connection (and handshake) per request. Prints p50/p99 and the p99 ratio.
    Tls {
        #[arg(long, default_value_t = 1000)]
        instances: u64,
        /// Requests per round and shape, on each server.
        #[arg(long, default_value_t = 200)]
        requests: u32,
        #[arg(long, default_value_t = 5)]
        rounds: u32,
    },
    /// Real VMs under QEMU (TCG) with the test guest: API call -> QEMU process (control-plane
    /// overhead), API call -> app answering next to hand-run QEMU boots of the same image, and
    /// each QEMU's memory beyond the guest's.
    Qemu {
        /// Repeat every measurement.
        #[arg(long, default_value_t = 2)]
        rounds: u32,
        /// Scale set sizes (VMs created in parallel), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        counts: Vec<u32>,
        /// The test guest build (images/testguest/build.sh OUT): OUT, using OUT/1.0.0.
        #[arg(long, env = "HERD_TESTGUEST_OUT", hide_env_values = true, default_value = "target/testguest")]
        testguest: std::path::PathBuf,
        /// VM size (vCPUs and memory of herd's VMs and of the hand-run QEMUs).
        #[arg(long, default_value = "Standard_B1ls")]
        sku: String,
        /// Print only the JSON summary.
        #[arg(long)]
        json: bool,
    },
    /// The cost of a joined host: API call -> a VM's QEMU exists, on a host joined with `herd
    /// agent` against the server's own machine, alternating, in a namespace cluster rig
    /// (`herd dev cluster`; root).
    Remote {
        /// Measured pairs (after one warm-up pair).
        #[arg(long, default_value_t = 9)]
        runs: u32,
        /// The test guest build (images/testguest/build.sh OUT): OUT, using OUT/1.0.0.
        #[arg(long, env = "HERD_TESTGUEST_OUT", hide_env_values = true, default_value = "target/testguest")]
        testguest: std::path::PathBuf,
        /// VM size.
        #[arg(long, default_value = "Standard_B1ls")]
        sku: String,
    },
    /// TCP throughput between two VMs on different hosts (a subnet stretched over VXLAN)
    /// against two VMs on one host, alternating, in a namespace cluster rig (`herd dev
    /// cluster`; root).
    VmNetHosts {
        /// About how long each transfer takes, in seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Measured pairs of transfers (after a calibration).
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// The test guest build (images/testguest/build.sh OUT): OUT, using OUT/1.0.0.
        #[arg(long, env = "HERD_TESTGUEST_OUT", hide_env_values = true, default_value = "target/testguest")]
        testguest: std::path::PathBuf,
        /// VM size.
        #[arg(long, default_value = "Standard_B1ls")]
        sku: String,
    },
    /// A rolling upgrade in 20% batches (100 sim instances, then 20 process instances behind
    /// the load balancer): total time against the sum of the batches' rebuild and health waits.
    Rolling {
        /// Instances of the sim run (0 skips it).
        #[arg(long, default_value_t = 100)]
        sim: u64,
        /// Instances of the process run (0 skips it).
        #[arg(long, default_value_t = 20)]
        process: u64,
        /// The server's drain timeout (`[loadbalancer] drain_timeout_secs`); the server's own
        /// default is 10 (issue 17's shape).
        #[arg(long = "drain-timeout", value_name = "SECS", default_value_t = 1)]
        drain_timeout: u64,
        /// The process run's HTTP probe threshold (its interval is 1 s).
        #[arg(long = "probe-threshold", default_value_t = 2)]
        probe_threshold: u32,
    },
    /// Autoscale: reaction time from a metric crossing its threshold to the capacity change
    /// (against one evaluation interval plus a sample interval), an evaluation round over 100
    /// settings × 10 rules × 1000 instances, and a 24 h what-if simulation.
    Autoscale {
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Evaluation interval of the server under test, in seconds.
        #[arg(long, default_value_t = 5)]
        interval: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum GenCmd {
    /// The CLI reference in Markdown.
    CliDocs,
    /// The OpenAPI document.
    Openapi,
}
