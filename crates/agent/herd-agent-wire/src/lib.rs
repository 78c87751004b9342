//! What `herd agent` and the server say to each other over their one long-lived mutually
//! authenticated TLS connection, and how it is framed.
//!
//! Why a crate of its own: both ends (the agent in `herd-agent`, the server's side in
//! `herd-host-link`) must agree on every message and on the framing, and neither should pull
//! in the other. Each frame is a 4-byte big-endian length and a JSON message, at most
//! [`MAX_FRAME`] bytes: a peer that sends more is cut off, not followed into memory.
//!
//! The conversation:
//!
//! ```text
//!   agent                                   server
//!     │ ── TLS (ALPN herd-agent/1, client certificate) ──▶ │ certificate → host record?
//!     │ ── Hello {name, version, capacity, boot id} ─────▶ │
//!     │ ◀── Welcome {heartbeat interval} ─── or Refused {why} and close
//!     │ ── Heartbeat {seq, capacity} ────────────────────▶ │ last heartbeat = now
//!     │ ◀── Ack {seq, lease, instances} ─────────────────── │ grants a lease (see below)
//!     │        … every interval …                          │
//!     │ ◀── Refused {why} (host deleted meanwhile) and close
//!     │ ◀── Call {id, DriverCall} ───────────────────────── │ the Driver trait, over the wire
//!     │ ── Reply {id, DriverReply | CallError} ──────────▶ │
//! ```
//! Each acknowledgement is a lease: for `lease_ms`, counted from when the agent *sent* the
//! heartbeat `seq` (its monotonic clock), the host may run the instances `instances` lists
//! (`group/set/id`). The agent takes the length from the ack, never from its own settings; an
//! instance the ack leaves out gets no new lease (it was moved, or is not the host's). The
//! server never acts on a silent host's instances before its lease bound
//! (`herd_model::host::Silence::lease_bound`).
//!
//! Calls and replies interleave with heartbeats on the one connection; each call carries an
//! id, so several run at once on the host and their replies come back in any order. After an
//! acknowledgement the server may say which image digests the host should keep
//! (`Wanted {digests}`, sent when that set changes); the host removes the rest of its cache.
//! Whenever where bridged NICs are changes (and once after each Welcome), the server sends the
//! host its stretch of every segment (`Segments {spans, security}`: VXLAN peers and remote
//! MACs, see `herd_hostnet::fabric`, and its own NICs' security groups); the host makes its
//! VXLAN ports and its NSG table match.
//!
//! An image is pulled on a connection of its own (the same ALPN and client certificate), so a
//! large image never delays a heartbeat or a call on the link:
//!
//! ```text
//!   agent                                   server
//!     │ ── TLS (ALPN herd-agent/1, client certificate) ──▶ │ certificate → host record?
//!     │ ── Pull {digest} ────────────────────────────────▶ │ gallery image of that digest?
//!     │ ◀── PullStart {size} ─── or PullRefused {why} and close
//!     │ ◀── the image's content stream (herd_model::image::content), `size` bytes, close
//! ```
//!
//! Each connection an instance opens to its metadata endpoint (scheduled events, identity)
//! is relayed to the server on a connection of its own, so a host serves its instances'
//! metadata while the decisions stay the server's:
//!
//! ```text
//!     │ ── Relay {key} ──────────────────────────────────▶ │ is `key` placed on this host?
//!     │ ◀── RelayStart ─── or RelayRefused {why} and close   │ connect to its endpoint
//!     │ ◀─── the instance's HTTP bytes, both ways ───────▶ │
//! ```
//!
//! A cold move (redeploy, drain) copies a stopped instance's state files from one host to
//! another through the server, each way on a connection of its own that the host dials (hosts
//! have no inbound port). The server names the transfer in the calls and lets only the move's
//! source host upload it and only its target host fetch it:
//!
//! ```text
//!   source agent                            server                         target agent
//!     │ ◀── Call ExportState {key, fence, transfer} ─ │                          │
//!     │   state_files (stopped, fenced)                │                          │
//!     │ ── Upload {transfer, key, files} ───────────▶ │ source of transfer?      │
//!     │ ◀── UploadStart ─── or TransferRefused {why}   │ names relative, no ..    │
//!     │ ── every file's bytes, in order ────────────▶ │ transfers/<t>/…, sha256  │
//!     │ ◀── UploadDone {files + sha256} ────────────── │                          │
//!     │ ── Reply Exported(files) ───────────────────▶ │                          │
//!     │                                                │ ── Call EnsureMoved {spec, fence, image, transfer, files} ─▶ │
//!     │                                                │ ◀── Fetch {transfer, name} ── (per file, own connection) ── │
//!     │                                                │ ── FetchStart {size} + bytes, or TransferRefused ─────────▶ │
//!     │                                                │        size and sha256 checked, staged; ensure_moved         │
//!     │                                                │ ◀── Reply Done ───────────────────────────────────────────── │
//!     │ ◀── Call Destroy {key, fence} ──────────────── │                          │
//! ```
#![forbid(unsafe_code)]

use herd_driver::{
    DriverError, Fence, Fenced, InstanceSpec, InstanceStats, ObservedInstance, PowerTarget, ScriptOutcome, ScriptRun,
};
use herd_model::host::HostCapacity;
use herd_model::InstanceKey;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol's version; an agent and a server of different versions refuse each other
/// with a message naming both.
/// (4: `Segments` for vnets across hosts, and a `RunScript` carries the `http(s)` files for
/// the host to download, not their bytes. 5: cold moves: `ExportState`, `EnsureMoved`, and
/// the `Upload` and `Fetch` connections of a transfer.)
pub const PROTOCOL: u32 = 5;

/// The largest frame either end accepts.
pub const MAX_FRAME: usize = 16 << 20;

/// From the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum AgentMessage {
    #[serde(rename_all = "camelCase")]
    Hello { protocol: u32, name: String, agent_version: String, capacity: HostCapacity, boot_id: String },
    #[serde(rename_all = "camelCase")]
    Heartbeat { seq: u64, capacity: HostCapacity },
    /// The answer to the server's call `id`.
    #[serde(rename_all = "camelCase")]
    Reply { id: u64, result: Result<DriverReply, CallError> },
    /// The first and only message of a pull connection: send the content of the gallery image
    /// with this digest.
    #[serde(rename_all = "camelCase")]
    Pull { protocol: u32, digest: String },
    /// The first message of a metadata relay connection: a process or VM on this host opened
    /// a connection to its metadata endpoint (instance `key`, `group/set/id`); the bytes that
    /// follow, both ways, are that connection's.
    #[serde(rename_all = "camelCase")]
    Relay { protocol: u32, key: String },
    /// The first message of an upload connection: the state files of instance `key` (for
    /// transfer `transfer`), whose bytes follow, file after file in this order, once the
    /// server says `UploadStart`.
    #[serde(rename_all = "camelCase")]
    Upload { protocol: u32, transfer: String, key: String, files: Vec<FileHeader> },
    /// The first and only message of a fetch connection: send file `name` of transfer
    /// `transfer`.
    #[serde(rename_all = "camelCase")]
    Fetch { protocol: u32, transfer: String, name: String },
}

/// A state file as an upload announces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileHeader {
    /// Relative, `/`-separated (`os.qcow2`, `work/data/db`); never absolute, never `..`.
    pub name: String,
    pub size: u64,
    /// Unix permission bits.
    pub mode: u32,
}

/// A state file as the server stored it: what the target fetches and checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferredFile {
    pub name: String,
    pub size: u64,
    pub mode: u32,
    /// The hex SHA-256 of its bytes, computed by the server as they arrived.
    pub sha256: String,
}

/// Why a state file's name cannot be used as a path under a transfer's directory, if it
/// cannot: empty, absolute, a `.`/`..`/empty component, a backslash or a NUL, or longer than
/// 4096 bytes. Checked by the server (upload, fetch) and the target host (staging).
pub fn check_file_name(name: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("state file name '{name}' {why}"));
    if name.is_empty() || name.len() > 4096 {
        return bad("must be 1 to 4096 bytes long");
    }
    if name.starts_with('/') {
        return bad("must be relative, not absolute");
    }
    if name.contains('\\') || name.contains('\0') {
        return bad("must not contain a backslash or a NUL");
    }
    if name.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return bad("must not have an empty, '.' or '..' component");
    }
    Ok(())
}

/// Why a transfer id cannot name a directory, if it cannot: 1 to 64 of `[A-Za-z0-9_-]`.
pub fn check_transfer_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(format!("transfer id '{id}' must be 1 to 64 letters, digits, '-' or '_'"));
    }
    Ok(())
}

/// The gallery image a spec's paths came from, for a host that does not share the server's
/// files: it fetches the content by `digest` and uses its own copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRef {
    /// `publisher:offer:sku:version`, for messages.
    pub urn: String,
    /// `sha256:<hex>` (see `herd_model::image::content`).
    pub digest: String,
}

/// From the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ServerMessage {
    #[serde(rename_all = "camelCase")]
    Welcome { heartbeat_interval_ms: u64 },
    /// The acknowledgement of heartbeat `seq`, and the lease it grants (see the crate docs).
    #[serde(rename_all = "camelCase")]
    Ack {
        seq: u64,
        /// The lease's length; 0 grants none.
        #[serde(default)]
        lease_ms: u64,
        /// The instances (`group/set/id`) the host may run under this lease.
        #[serde(default)]
        instances: Vec<String>,
    },
    /// The server will not talk to this agent (and closes): not joined, deleted, another
    /// certificate, another protocol version. The agent must not retry with the same identity.
    #[serde(rename_all = "camelCase")]
    Refused { reason: String },
    /// Carry out a driver call on the host; answer with a Reply of the same id.
    #[serde(rename_all = "camelCase")]
    Call { id: u64, call: DriverCall },
    /// The image digests the host should keep (every version in the gallery); the host may
    /// remove any other from its cache.
    #[serde(rename_all = "camelCase")]
    Wanted { digests: Vec<String> },
    /// This host's stretch of every segment it must carry (the whole set: a segment not listed
    /// is no longer stretched here), and the network security of its own NICs (enforced here).
    #[serde(rename_all = "camelCase")]
    Segments {
        spans: Vec<herd_hostnet::fabric::Span>,
        #[serde(default)]
        security: Vec<herd_model::nsg::NicSecurity>,
    },
    /// On a pull connection: the content follows, `size` bytes, then the server closes.
    #[serde(rename_all = "camelCase")]
    PullStart { digest: String, size: u64 },
    /// On a pull connection: no content will come (no gallery image has the digest).
    #[serde(rename_all = "camelCase")]
    PullRefused { reason: String },
    /// On a relay connection: connected to the instance's metadata endpoint; relay from now on.
    RelayStart,
    /// On a relay connection: no endpoint for that instance here (not this host's, or none).
    #[serde(rename_all = "camelCase")]
    RelayRefused { reason: String },
    /// On an upload connection: send the files' bytes now.
    UploadStart,
    /// On an upload connection: every byte arrived and is stored, with each file's digest.
    #[serde(rename_all = "camelCase")]
    UploadDone { files: Vec<TransferredFile> },
    /// On a fetch connection: the file's bytes follow, `size` of them, then the server closes.
    #[serde(rename_all = "camelCase")]
    FetchStart { size: u64 },
    /// On an upload or fetch connection: refused (not this host's transfer, a bad name, no
    /// such file), and closed.
    #[serde(rename_all = "camelCase")]
    TransferRefused { reason: String },
}

/// One call of the `Driver` trait, as the server sends it to a host. Every call that acts on
/// an instance carries its fence; the host's driver refuses a lower one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
/// The calls that build from an image carry the gallery image it came from (`image`), when
/// there is one: the host then uses its cached copy of that content, not the spec's paths.
pub enum DriverCall {
    Ensure {
        spec: Box<InstanceSpec>,
        fence: Fence,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<ImageRef>,
    },
    SetPower {
        key: InstanceKey,
        target: PowerTarget,
        fence: Fence,
    },
    Restart {
        key: InstanceKey,
        fence: Fence,
    },
    Resize {
        spec: Box<InstanceSpec>,
        fence: Fence,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<ImageRef>,
    },
    Reimage {
        spec: Box<InstanceSpec>,
        fence: Fence,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<ImageRef>,
    },
    Destroy {
        key: InstanceKey,
        fence: Fence,
    },
    List,
    Stats {
        key: InstanceKey,
    },
    RunScript {
        key: InstanceKey,
        run: Box<ScriptRun>,
        fence: Fence,
    },
    ConsoleLog {
        key: InstanceKey,
        max_bytes: usize,
    },
    /// Upload the stopped instance's state files (`Driver::state_files`) as transfer
    /// `transfer`; answered with `Exported`.
    ExportState {
        key: InstanceKey,
        fence: Fence,
        transfer: String,
    },
    /// Fetch `files` of transfer `transfer`, check them, and build and start the instance on
    /// them (`Driver::ensure_moved`); answered with `Done`.
    EnsureMoved {
        spec: Box<InstanceSpec>,
        fence: Fence,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<ImageRef>,
        transfer: String,
        files: Vec<TransferredFile>,
    },
}

impl DriverCall {
    /// The operation's name, for logs and errors (never its arguments: a spec or a script may
    /// carry secrets).
    pub fn op(&self) -> &'static str {
        match self {
            DriverCall::Ensure { .. } => "ensure",
            DriverCall::SetPower { .. } => "set_power",
            DriverCall::Restart { .. } => "restart",
            DriverCall::Resize { .. } => "resize",
            DriverCall::Reimage { .. } => "reimage",
            DriverCall::Destroy { .. } => "destroy",
            DriverCall::List => "list",
            DriverCall::Stats { .. } => "stats",
            DriverCall::RunScript { .. } => "run_script",
            DriverCall::ConsoleLog { .. } => "console_log",
            DriverCall::ExportState { .. } => "export_state",
            DriverCall::EnsureMoved { .. } => "ensure_moved",
        }
    }
}

/// What a call returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "camelCase")]
pub enum DriverReply {
    Done,
    Instances(Vec<ObservedInstance>),
    Stats(Option<InstanceStats>),
    Script(ScriptOutcome),
    Console(Option<String>),
    /// What `ExportState` uploaded.
    Exported(Vec<TransferredFile>),
}

/// A driver error as it crosses the link: the variants the server acts on keep their shape
/// (not found, fenced, a spec that cannot be built), the rest keep their message and whether
/// retrying may help.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum CallError {
    NotFound {
        key: InstanceKey,
    },
    Fenced {
        key: InstanceKey,
        seen: Fence,
        call: Fence,
    },
    InvalidSpec {
        key: InstanceKey,
        reason: String,
    },
    ImageUnavailable {
        key: InstanceKey,
        reason: String,
    },
    /// The host's fence record for the instance cannot be read: permanent until repaired.
    FenceRecord {
        key: InstanceKey,
        message: String,
    },
    /// Anything else: transient.
    Failed {
        message: String,
    },
}

impl From<&DriverError> for CallError {
    fn from(e: &DriverError) -> Self {
        match e {
            DriverError::NotFound(key) => CallError::NotFound { key: key.clone() },
            DriverError::Fenced(f) => CallError::Fenced { key: f.key.clone(), seen: f.seen, call: f.call },
            DriverError::InvalidSpec { key, reason } => {
                CallError::InvalidSpec { key: key.clone(), reason: reason.clone() }
            }
            DriverError::ImageUnavailable { key, reason } => {
                CallError::ImageUnavailable { key: key.clone(), reason: reason.clone() }
            }
            DriverError::FenceRecord { key, source } => {
                CallError::FenceRecord { key: key.clone(), message: source.to_string() }
            }
            other => CallError::Failed { message: herd_model::error::chain_text(other) },
        }
    }
}

impl CallError {
    /// The driver error the server's side reports for it, on host `host`.
    pub fn into_driver_error(self, host: &str) -> DriverError {
        match self {
            CallError::NotFound { key } => DriverError::NotFound(key),
            CallError::Fenced { key, seen, call } => DriverError::Fenced(Fenced { key, seen, call }),
            CallError::InvalidSpec { key, reason } => DriverError::InvalidSpec { key, reason },
            CallError::ImageUnavailable { key, reason } => DriverError::ImageUnavailable { key, reason },
            CallError::FenceRecord { key, message } => DriverError::FenceRecord {
                key,
                source: std::sync::Arc::new(herd_driver::fence::FenceRecordError::Remote {
                    host: host.into(),
                    message,
                }),
            },
            CallError::Failed { message } => DriverError::Failed(format!("host {host}: {message}")),
        }
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer sent a frame of {0} bytes, more than the {MAX_FRAME} allowed")]
    TooLarge(usize),
    #[error("the peer sent a message that does not decode: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Writes one message as a frame.
pub async fn write<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, msg: &T) -> Result<(), WireError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_FRAME {
        return Err(WireError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one message; `None` when the peer closed cleanly between frames.
pub async fn read<R: AsyncRead + Unpin, T: DeserializeOwned>(r: &mut R) -> Result<Option<T>, WireError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(serde_json::from_slice(&body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_an_oversized_or_garbled_one_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let hb =
            AgentMessage::Heartbeat { seq: 7, capacity: HostCapacity { vcpus: 2, memory_mib: 1, disk_free_mib: 3 } };
        write(&mut a, &hb).await.unwrap();
        let ack = ServerMessage::Ack { seq: 7, lease_ms: 10_000, instances: vec!["rg/web/0".into()] };
        write(&mut a, &ack).await.unwrap();
        assert_eq!(read::<_, AgentMessage>(&mut b).await.unwrap(), Some(hb));
        assert_eq!(read::<_, ServerMessage>(&mut b).await.unwrap(), Some(ack));
        // A length past the limit is refused before anything is allocated.
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(read::<_, ServerMessage>(&mut b).await, Err(WireError::TooLarge(_))));
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&3u32.to_be_bytes()).await.unwrap();
        a.write_all(b"{x}").await.unwrap();
        assert!(matches!(read::<_, ServerMessage>(&mut b).await, Err(WireError::Decode(_))));
        drop(a);
        assert!(read::<_, ServerMessage>(&mut b).await.unwrap().is_none(), "a clean close");
    }

    #[test]
    fn a_script_run_carries_its_downloads_and_rules_and_debug_shows_no_uri() {
        let key = InstanceKey::parse_path("rg/web/1").unwrap();
        let rules = herd_egress::fetch::FetchRules {
            max_bytes: 1000,
            allowed: vec![herd_egress::Net::parse("127.0.0.1").unwrap()],
            ..Default::default()
        };
        let run = ScriptRun {
            name: "cs".into(),
            files: vec![],
            downloads: herd_driver::Downloads {
                files: vec![herd_driver::Download {
                    name: "install.sh".into(),
                    uri: "http://10.1.0.5/install.sh?sig=SECRET".into(),
                    shown: "http://10.1.0.5/install.sh".into(),
                }],
                rules,
            },
            command: "sh install.sh".into(),
            timeout: std::time::Duration::from_secs(9),
            identity: "fp".into(),
        };
        let fence = Fence { term: herd_driver::Term::SINGLE_SERVER, incarnation: herd_driver::Incarnation(1) };
        let call = DriverCall::RunScript { key, run: Box::new(run.clone()), fence };
        let text = serde_json::to_value(&call).unwrap();
        assert_eq!(text["run"]["downloads"]["rules"]["allowed"][0], "127.0.0.1/32", "{text}");
        assert_eq!(serde_json::from_value::<DriverCall>(text).unwrap(), call);
        let debug = format!("{call:?}");
        assert!(
            debug.contains("install.sh") && !debug.contains("SECRET") && !debug.contains("sh install.sh"),
            "{debug}"
        );
        // The longest the call may take: the download's deadline and the script's.
        assert_eq!(run.longest(), std::time::Duration::from_secs(69));
        // Without downloads, nothing of them is sent.
        let bare = ScriptRun { downloads: Default::default(), ..run };
        assert!(serde_json::to_value(&bare).unwrap().get("downloads").is_none());
    }

    #[test]
    fn state_file_names_and_transfer_ids_are_checked() {
        for ok in ["os.qcow2", "work/data/db", "work/.herd/custom-data", "a..b"] {
            assert_eq!(check_file_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "/etc/passwd", "../x", "work/../../x", "work//x", "./x", "work/", "a\\b", "a\0b"] {
            let e = check_file_name(bad).unwrap_err();
            assert!(e.contains("state file name"), "{bad}: {e}");
        }
        assert_eq!(check_transfer_id("m0123abc-9_x"), Ok(()));
        for bad in ["", "../x", "a/b", ".hidden", &"x".repeat(65)] {
            assert!(check_transfer_id(bad).is_err(), "{bad}");
        }
        let up = AgentMessage::Upload {
            protocol: PROTOCOL,
            transfer: "t1".into(),
            key: "rg/web/1".into(),
            files: vec![FileHeader { name: "os.qcow2".into(), size: 3, mode: 0o600 }],
        };
        let text = serde_json::to_string(&up).unwrap();
        assert_eq!(serde_json::from_str::<AgentMessage>(&text).unwrap(), up);
        let done = DriverReply::Exported(vec![TransferredFile {
            name: "os.qcow2".into(),
            size: 3,
            mode: 0o600,
            sha256: "ab".into(),
        }]);
        assert_eq!(serde_json::from_str::<DriverReply>(&serde_json::to_string(&done).unwrap()).unwrap(), done);
    }

    #[test]
    fn a_build_call_names_its_image_only_when_it_has_one() {
        let key = InstanceKey::parse_path("rg/web/1").unwrap();
        let image = herd_model::image::ImageSource::Directory { path: "/srv/gallery/x".into() };
        let spec = InstanceSpec::new(
            key,
            "web000001",
            image,
            herd_model::sku::SkuSize { vcpus: 1, memory_mib: 64 },
            "127.0.0.2",
        );
        let fence = Fence { term: herd_driver::Term::SINGLE_SERVER, incarnation: herd_driver::Incarnation(1) };
        let bare = DriverCall::Ensure { spec: Box::new(spec.clone()), fence, image: None };
        let text = serde_json::to_value(&bare).unwrap();
        assert!(text.get("image").is_none(), "{text}");
        assert_eq!(serde_json::from_value::<DriverCall>(text).unwrap(), bare);
        let named = DriverCall::Reimage {
            spec: Box::new(spec),
            fence,
            image: Some(ImageRef { urn: "P:O:S:1".into(), digest: format!("sha256:{}", "a".repeat(64)) }),
        };
        let text = serde_json::to_value(&named).unwrap();
        assert_eq!(text["image"]["digest"], format!("sha256:{}", "a".repeat(64)));
        assert_eq!(serde_json::from_value::<DriverCall>(text).unwrap(), named);
        let wanted = ServerMessage::Wanted { digests: vec!["sha256:1".into()] };
        assert_eq!(serde_json::from_str::<ServerMessage>(&serde_json::to_string(&wanted).unwrap()).unwrap(), wanted);
    }
}
