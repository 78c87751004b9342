//! The `Driver` trait: the only way herd touches instances.
//!
//! Why: the reconciler must not care whether an instance is a QEMU VM, a process tree or a
//! simulation. Every operation is idempotent and keyed by [`InstanceKey`], so the executor can
//! repeat any call after a crash and converge: `ensure` on an existing instance is a no-op,
//! `destroy` on a missing one is `Ok`. `list` is the observation that planning starts from, and
//! also how orphans left by a crash are found.
//!
//! Every call that acts on an instance carries a [`Fence`] (term, incarnation; see [`fence`]),
//! and a driver refuses a call lower than the highest it has seen for that instance. Errors are
//! typed, and [`DriverError::retryable`] tells the reconciler's backoff a transient failure (an
//! I/O hiccup, a busy host) from a permanent one (an invalid spec, a missing image, a fenced
//! call).

#![forbid(unsafe_code)]

pub mod by_image;
pub mod fabric;
pub mod fence;
pub mod host;
pub mod sim;
pub mod tag;

pub use fence::{Fence, Fenced, Incarnation, LeaderTerm, Term};

use async_trait::async_trait;
use herd_model::{image::ImageSource, sku::SkuSize, InstanceKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Everything a driver needs to build one instance. Serializable: the server sends it to a
/// host's agent (`herd-agent-wire`), over the link's TLS only; it is never logged (`custom_data`
/// and the guest setup may be sensitive).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Guest setup beyond the basics: access, disks, forwarded ports, the agent.
    pub guest: GuestSetup,
    /// This instance's own instance metadata endpoint (herd's equivalent of Azure IMDS, served
    /// by `herd-metadata` on the reach address): scheduled events and identity. Process
    /// instances get `HERD_METADATA_URL=http://<addr>/metadata`; VMs reach it through QEMU's
    /// `guestfwd`. `None`: no endpoint is offered (the guest is told nothing).
    pub metadata_endpoint: Option<std::net::SocketAddr>,
    /// The host the instance is placed on (`None`: the server's own machine). A driver that
    /// spans hosts (`herd_host_link::HostRouter`) sends the calls of a joined host's instances
    /// to its agent; every other driver ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl InstanceSpec {
    /// An instance of `size` from `image` reached on `reach_address`, with nothing else: model
    /// generation 1, admin user `u`, no custom data, metadata, bridge, guest setup or metadata
    /// endpoint (set the fields that matter afterwards).
    pub fn new(key: InstanceKey, computer_name: &str, image: ImageSource, size: SkuSize, reach_address: &str) -> Self {
        InstanceSpec {
            key,
            computer_name: computer_name.into(),
            image,
            size,
            reach_address: reach_address.into(),
            model_generation: 1,
            admin_username: "u".into(),
            custom_data: None,
            metadata: BTreeMap::new(),
            network: None,
            guest: GuestSetup::default(),
            metadata_endpoint: None,
            host: None,
        }
    }
}

/// What a VM driver needs beyond what every driver needs. The process and sim drivers may
/// ignore it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GuestSetup {
    /// `ssh-ed25519 AAAA… comment` lines for the admin user.
    pub ssh_public_keys: Vec<String>,
    /// The admin password as a crypt(3) SHA-512 hash (`$6$…`); never the password itself.
    pub admin_password_hash: Option<String>,
    /// Data disks, by LUN; each instance gets its own, kept across reimage.
    pub data_disks: Vec<DataDisk>,
    /// Guest TCP ports forwarded from the reach address (host-local networking): the model's
    /// LB backend and probe ports, NAT backend ports and the configured extra ports.
    pub forward_ports: Vec<u16>,
    /// Whether the image runs the QEMU guest agent (see `Image::guest_agent`); `None`: not
    /// known yet, so a VM driver detects it at boot and reports it through
    /// [`Driver::guest_agents_answered`].
    pub guest_agent: Option<bool>,
}

/// One data disk of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataDisk {
    pub lun: u32,
    pub size_gb: u64,
}

/// A script to run inside a running instance: how the Custom Script extension is applied.
/// Serializable for the agent link only; its `Debug` redacts the command and the download URIs.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ScriptRun {
    /// The extension's name; its files go to a directory of that name in the instance
    /// (`/var/lib/herd/extensions/<name>/` in a VM, `work/.herd/extensions/<name>/` for a
    /// process instance), which is also the script's working directory.
    pub name: String,
    /// Files to place there first (name, content) that the caller already holds: a
    /// `file://` URI read on the server, the base64 `script`. Placed after [`Self::downloads`].
    pub files: Vec<(String, Vec<u8>)>,
    /// The `http(s)` `fileUris`, downloaded by the machine that runs the instance (the agent
    /// of a joined host, with its own network position) when a run starts: not when a run of
    /// the same identity is adopted. See [`ScriptRun::fetch_files`].
    #[serde(default, skip_serializing_if = "Downloads::is_empty")]
    pub downloads: Downloads,
    /// The shell command (`commandToExecute`). It may carry secrets: drivers write it to a
    /// mode-0600 file in the instance and run `/bin/sh <file>`; it never appears in any argv,
    /// log line or error message.
    pub command: String,
    /// The run is killed and reported failed after this long.
    pub timeout: std::time::Duration,
    /// Which run this is (the reconciler passes the extension's fingerprint). A driver records
    /// it with a run in progress; asked again for the same name and identity (a new server
    /// after a crash), it adopts the run still going instead of starting a second copy, and
    /// a run of another identity left behind is killed before this one starts. No secrets.
    pub identity: String,
}

/// Files a host downloads before a script starts, and the rules it downloads them under (the
/// server's `[extensions]` limits and address policy; see `herd_egress::fetch`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Downloads {
    pub files: Vec<Download>,
    pub rules: herd_egress::fetch::FetchRules,
}

impl Downloads {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// One `fileUris` entry to download.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Download {
    /// The file name it is saved under in the extension's directory.
    pub name: String,
    /// The URI, which may carry a token in its query string: never logged, never in an error.
    pub uri: String,
    /// How messages name it: the URI without its query string, with protected values masked
    /// (the caller decides; drivers and agents show only this).
    pub shown: String,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download").field("name", &self.name).field("shown", &self.shown).finish()
    }
}

impl ScriptRun {
    /// The names of every file the run places: downloads first, then [`Self::files`].
    pub fn file_names(&self) -> impl Iterator<Item = &str> {
        self.downloads.files.iter().map(|d| d.name.as_str()).chain(self.files.iter().map(|(n, _)| n.as_str()))
    }

    /// The files to place for a run that starts now: each download fetched on this machine
    /// under the run's rules (one at a time, each within the rules' deadline), then
    /// [`Self::files`]. The error names the download as [`Download::shown`] says, never its URI.
    pub async fn fetch_files(&self) -> Result<Vec<(String, Vec<u8>)>, String> {
        let mut out = Vec::with_capacity(self.downloads.files.len() + self.files.len());
        if !self.downloads.is_empty() {
            let http = herd_egress::fetch::HttpFetch::new(self.downloads.rules.clone());
            for d in &self.downloads.files {
                let bytes = http.get(&d.uri).await.map_err(|why| format!("downloading {} failed: {why}", d.shown))?;
                out.push((d.name.clone(), bytes));
            }
        }
        out.extend(self.files.iter().cloned());
        Ok(out)
    }

    /// The longest a call for this run may take: every download at its deadline, then the
    /// script at its own.
    pub fn longest(&self) -> std::time::Duration {
        let n = u32::try_from(self.downloads.files.len()).unwrap_or(u32::MAX);
        self.timeout.saturating_add(self.downloads.rules.timeout.saturating_mul(n))
    }
}

impl std::fmt::Debug for ScriptRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptRun")
            .field("name", &self.name)
            .field("files", &self.files.iter().map(|(n, c)| (n, c.len())).collect::<Vec<_>>())
            .field("downloads", &self.downloads.files)
            .field("command", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("identity", &self.identity)
            .finish()
    }
}

/// How a script run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptOutcome {
    /// The exit code; `None` when it was killed (timeout or signal).
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// The last bytes of its output (drivers keep at most [`SCRIPT_OUTPUT_TAIL`] of each).
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ScriptOutcome {
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }
}

/// How much of a script's stdout and stderr a driver keeps: the tail, this many bytes.
pub const SCRIPT_OUTPUT_TAIL: usize = 4096;

/// Keeps the last `max` bytes of `buf`.
pub fn keep_tail(mut buf: Vec<u8>, max: usize) -> Vec<u8> {
    if buf.len() > max {
        buf.drain(..buf.len() - max);
    }
    buf
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
    /// The subnet's MTU (advertised by DHCP option 26 and written into the seed).
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// A short, stable name of the instance's vnet: its instance names resolve within it.
    /// Empty in records written before vnet DNS existed.
    #[serde(default)]
    pub vnet: String,
    /// Whether the instance reaches beyond the vnet through the host (the subnet's default
    /// outbound access).
    #[serde(default = "outbound_default")]
    pub outbound: bool,
    /// The instance's public IP, NATed 1:1 to `address` on the host (inbound to it reaches the
    /// instance; the instance's outbound traffic leaves from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_address: Option<std::net::Ipv4Addr>,
    /// Minutes an idle TCP connection through the public IP is kept (the model's
    /// `idleTimeoutInMinutes`); None: Azure's default, 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_idle_timeout_minutes: Option<u16>,
}

fn outbound_default() -> bool {
    true
}

/// FNV-1a, 64 bits: a stable, dependency-free hash for the names of what drivers make on the
/// host (bridges, TAPs, namespaces), which must come out the same after a restart. Not for
/// security.
pub fn stable_hash(bytes: impl AsRef<[u8]>) -> u64 {
    bytes.as_ref().iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// A subnet's MTU unless something lowers it: Ethernet's.
pub const DEFAULT_MTU: u16 = 1500;

fn default_mtu() -> u16 {
    DEFAULT_MTU
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

/// What a driver saw: the instances, and the hosts it could not see (their instances are
/// neither listed nor gone).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub instances: Vec<ObservedInstance>,
    pub unreachable_hosts: std::collections::BTreeSet<String>,
}

/// One instance as observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedInstance {
    pub key: InstanceKey,
    pub power: ObservedPower,
}

/// CPU, memory and network use of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct InstanceStats {
    /// CPU time consumed since start, in seconds (all vCPUs summed).
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
    /// The CPU use right now, when the driver knows it directly (the sim driver); otherwise the
    /// sampler derives it from `cpu_seconds` between two samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    /// Bytes received on the instance's network interfaces (loopback excluded), a counter
    /// since some point the driver chose (boot of the guest, creation of the namespace); it
    /// may restart from zero. `None` when the driver cannot see the instance's own traffic
    /// (no guest agent, host-local process networking): no data, never zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_rx_bytes: Option<u64>,
    /// Bytes sent, as `net_rx_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_tx_bytes: Option<u64>,
}

/// Driver failures. The message is shown to users: it must not contain secrets.
///
/// [`retryable`](Self::retryable) classifies them for backoff: the reconciler retries a
/// transient failure soon and a permanent one rarely (see `herd_reconciler::plan::Limits`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum DriverError {
    #[error("instance {0} does not exist")]
    NotFound(InstanceKey),
    /// A failure not classified further; treated as transient.
    #[error("{0}")]
    Failed(String),
    /// The call carries a lower term or incarnation than the driver has seen: the caller is
    /// stale. Permanent.
    #[error(transparent)]
    Fenced(#[from] Fenced),
    /// The instance's fence record exists but cannot be read; the driver refuses to guess.
    /// Permanent until someone repairs it.
    #[error("instance {key}: {source}")]
    FenceRecord {
        key: InstanceKey,
        #[source]
        source: Arc<fence::FenceRecordError>,
    },
    /// A file-system or process operation on the host failed. Transient.
    #[error("instance {key}: {context}: {source}")]
    Io {
        key: InstanceKey,
        context: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The spec asks for something this driver cannot build, or cannot be built at all (an
    /// image not in the gallery, an unknown size, an unsupported network). Permanent: the same
    /// spec fails the same way.
    #[error("{reason}")]
    InvalidSpec { key: InstanceKey, reason: String },
    /// The image the spec names is missing or unusable on this host. Permanent until the image
    /// is fixed.
    #[error("instance {key}: {reason}")]
    ImageUnavailable { key: InstanceKey, reason: String },
    /// A host-side step failed with a typed cause that belongs to no one instance file (the
    /// driver's own directory, a disk image made by `qemu-img`). Transient, as `Failed`.
    #[error("{context}: {source}")]
    Host {
        context: String,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The instance's host cannot be reached now: its agent is not linked, or has fallen
    /// silent (frozen, or its link cut). Transient, and not the instance's failure: the
    /// reconciler leaves the instance's state alone and tries again soon, without growing its
    /// backoff, so the host's return is noticed within seconds.
    #[error("{reason}")]
    Unreachable { host: String, reason: String },
    /// A blocking task of the driver died (panicked or was cancelled). Transient.
    #[error("internal task failed: {0}")]
    Task(#[source] Arc<tokio::task::JoinError>),
    /// Talking to the guest agent inside the instance failed (connect, timeout, protocol).
    /// Transient: the guest may still be booting or busy.
    #[error("instance {key}: guest agent: {source}")]
    GuestAgent {
        key: InstanceKey,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
}

impl DriverError {
    /// An I/O failure of `context` (what was being done) on instance `key`.
    pub fn io(key: &InstanceKey, context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { key: key.clone(), context: context.into(), source: Arc::new(source) }
    }

    /// A host-side failure of `context` (what was being done), keeping its cause.
    pub fn host(context: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Host { context: context.into(), source: Arc::new(source) }
    }

    /// Whether repeating the same call later may succeed without anyone changing anything.
    /// `NotFound` counts as retryable: the caller's observation may be stale, and the next
    /// reconcile pass re-observes before it acts again.
    pub fn retryable(&self) -> bool {
        match self {
            Self::NotFound(_)
            | Self::Failed(_)
            | Self::Io { .. }
            | Self::Host { .. }
            | Self::Task(_)
            | Self::Unreachable { .. }
            | Self::GuestAgent { .. } => true,
            Self::Fenced(_) | Self::FenceRecord { .. } | Self::InvalidSpec { .. } | Self::ImageUnavailable { .. } => {
                false
            }
        }
    }
}

/// Errors compare by kind and message (the typed sources are neither `Clone` nor `Eq`).
impl PartialEq for DriverError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::NotFound(a), Self::NotFound(b)) => a == b,
            (Self::Failed(a), Self::Failed(b)) => a == b,
            (Self::Fenced(a), Self::Fenced(b)) => a == b,
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b) && a.to_string() == b.to_string(),
        }
    }
}

impl Eq for DriverError {}

/// A backend that runs instances. See the crate docs for the idempotency contract.
///
/// Every method that acts on an instance takes the caller's [`Fence`] and first checks it
/// against the highest fence the driver has seen for the instance, refusing a lower one with
/// [`DriverError::Fenced`] before doing anything; an accepted higher fence is recorded before the
/// call acts. The reads (`list`, `stats`, `console_log`, `guest_agents_answered`) take none:
/// they change nothing.
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// A short name for logs and `herd server` output.
    fn name(&self) -> &'static str;

    /// Creates the instance if absent and starts it. On an existing instance: starts it if
    /// stopped, otherwise does nothing.
    async fn ensure(&self, spec: &InstanceSpec, fence: Fence) -> Result<(), DriverError>;

    /// Changes the power state of an existing instance.
    async fn set_power(&self, key: &InstanceKey, target: PowerTarget, fence: Fence) -> Result<(), DriverError>;

    /// Stops and starts an existing instance.
    async fn restart(&self, key: &InstanceKey, fence: Fence) -> Result<(), DriverError>;

    /// Stops the instance, gives it `spec`'s size (vCPUs, memory) and starts it again, keeping
    /// its disks: how a size-only model change is applied.
    async fn resize(&self, spec: &InstanceSpec, fence: Fence) -> Result<(), DriverError>;

    /// Discards the instance's OS disk (or working directory), recreates it from `spec`'s image
    /// and starts it. Creates the instance if it is absent.
    async fn reimage(&self, spec: &InstanceSpec, fence: Fence) -> Result<(), DriverError>;

    /// Removes the instance and everything it owns. `Ok` if it does not exist.
    async fn destroy(&self, key: &InstanceKey, fence: Fence) -> Result<(), DriverError>;

    /// Every instance this driver has, including ones herd no longer knows (orphans).
    async fn list(&self) -> Result<Vec<ObservedInstance>, DriverError>;

    /// [`list`](Self::list), and the hosts that could not be listed: a driver spanning hosts
    /// may see only some of them, and an instance on a host that did not answer is unknown,
    /// not gone. Drivers of one machine see everything (the default).
    async fn list_hosts(&self) -> Result<Listing, DriverError> {
        Ok(Listing { instances: self.list().await?, unreachable_hosts: Default::default() })
    }

    /// Resource use of a running instance; `None` if it is absent or not running.
    async fn stats(&self, key: &InstanceKey) -> Result<Option<InstanceStats>, DriverError>;

    /// Runs a script inside a running instance (extensions). `Err` means it could not be run
    /// at all (not running, no agent, files could not be placed); a script that ran and failed
    /// is `Ok` with its exit code.
    async fn run_script(&self, key: &InstanceKey, run: &ScriptRun, fence: Fence) -> Result<ScriptOutcome, DriverError>;

    /// Instances whose image's guest agent was not known (`GuestSetup::guest_agent` `None`) and
    /// whose agent has answered, with the image they were built from: the reconciler records
    /// the agent on that image. Never lists an agent that did not answer. Drivers without
    /// guest agents list nothing.
    fn guest_agents_answered(&self) -> Vec<(InstanceKey, ImageSource)> {
        Vec::new()
    }

    /// The last `max_bytes` of the instance's console (serial console of a VM, stdout and
    /// stderr of a process instance). `None` if the instance does not exist.
    async fn console_log(&self, key: &InstanceKey, max_bytes: usize) -> Result<Option<String>, DriverError>;

    /// The files that hold a **stopped** instance's state, which a cold move copies to another
    /// host: a VM's OS disk overlay and data disks, a process instance's `work/` tree. Paths
    /// are on this driver's machine; names are relative and use `/`. Refused (`Failed`) while
    /// the instance runs; `NotFound` if it does not exist. Checks `fence` first, as every
    /// acting call: a stale mover cannot read a copy that has moved on.
    async fn state_files(&self, key: &InstanceKey, fence: Fence) -> Result<Vec<StateFile>, DriverError> {
        let _ = fence;
        Err(DriverError::Failed(format!(
            "instance {key}: the {} driver cannot move instances between hosts",
            self.name()
        )))
    }

    /// Creates the instance from `spec` with the state files in `dir` (as `state_files` named
    /// them, copied from another host) in place of a new OS disk, data disks or work tree, and
    /// starts it. On an instance that already exists: as `ensure` (the files are not used: a
    /// repeated call after a lost reply changes nothing).
    async fn ensure_moved(&self, spec: &InstanceSpec, fence: Fence, dir: &std::path::Path) -> Result<(), DriverError> {
        let _ = (fence, dir);
        Err(DriverError::Failed(format!(
            "instance {}: the {} driver cannot move instances between hosts",
            spec.key,
            self.name()
        )))
    }

    /// A cold move (redeploy) of the instance to `spec.host`, from host `from`: stop it there,
    /// copy its state files, build and start it on `spec.host` with them, then destroy the copy
    /// on `from`. Every call carries `fence` (the new placement's incarnation), so the copy on
    /// `from` refuses older calls from then on. Idempotent: repeated after a failure or a
    /// server crash, it finds the copy on `from` stopped, or already gone once the target has
    /// it. Only a driver that spans hosts can do it (the server's host router).
    async fn relocate(&self, spec: &InstanceSpec, from: &str, fence: Fence) -> Result<Relocated, DriverError> {
        let _ = (from, fence);
        Err(DriverError::Failed(format!(
            "instance {}: the {} driver runs instances on one machine and cannot move them",
            spec.key,
            self.name()
        )))
    }
}

/// One file of a stopped instance's state (see [`Driver::state_files`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateFile {
    /// Relative to the instance's state, with `/` separators (`os.qcow2`, `work/app/db`).
    pub name: String,
    /// Where it is on the driver's machine.
    pub path: std::path::PathBuf,
    pub size: u64,
    /// Unix permission bits (a process instance's scripts stay executable).
    pub mode: u32,
}

/// What a [`Driver::relocate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Relocated {
    /// Bytes of state copied between the hosts.
    pub bytes: u64,
    /// Whether the copy on the old host was destroyed (false: it could not be reached after
    /// the new one started; the caller records it as a stale copy to destroy later).
    pub source_destroyed: bool,
}
