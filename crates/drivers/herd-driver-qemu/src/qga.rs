//! A client for the QEMU guest agent (`qemu-ga`) on its virtio-serial channel.
//!
//! herd runs extensions and writes files inside a running VM without a reboot, through the
//! guest agent. QEMU exposes the guest's `org.qemu.guest_agent.0` port as a host Unix socket:
//!
//! ```text
//! -device virtio-serial
//! -chardev socket,path=QGA.sock,server=on,wait=off,id=qga0
//! -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0
//! ```
//!
//! Unlike QMP the channel has no greeting and no events, and it is a plain byte pipe into the
//! guest: bytes written while the agent is not running yet wait in the channel and are answered
//! once it starts, and a reply to a command whose caller gave up (timeout, cancellation) still
//! arrives later. So every connection is first resynchronised with `guest-sync-delimited`: we
//! send `0xFF` (which resets the agent's JSON parser) and the request with a random id, then
//! discard everything up to a `0xFF` byte (the agent prefixes that reply with one) followed by
//! the reply carrying our id. Commands carry an `"id"` the agent echoes, and replies with
//! another id (stale ones) are dropped. A call that times out or is cancelled marks the
//! connection unsynchronised, and the next call resynchronises first.
//!
//! Every call is bounded by a timeout. An agent that is not up yet (the socket accepts, nothing
//! answers) yields [`QgaError::Timeout`]; [`Qga::wait_ready`] retries until it answers. The
//! agent serves one request at a time, and so does a [`Qga`] (calls queue on a lock). QEMU
//! serves one client per socket; use one `Qga` per VM.
//!
//! **Secrets.** The standard input of [`Qga::exec`] / [`Qga::run`] is the channel for secrets:
//! it travels base64-encoded inside the request and is never written to disk or put on a
//! command line in the guest. This module never logs argv, environment or input contents, at
//! any level (only the command path, pids, sizes and exit codes), nor the contents of files it
//! writes or reads, nor reply payloads. Arguments and environment are visible to other
//! processes in the guest (`/proc/PID/cmdline`, `environ`): keep secrets out of them. Files
//! from [`Qga::write_file`] are created with the agent's umask; with `mode` given, they are
//! chmod-ed while still empty, before any byte is written.

use crate::qmp::{command_line, read_line_limited};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Default bound on one agent call ([`Qga::with_timeout`] changes it).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one `guest-sync-delimited` attempt waits before another is sent.
const SYNC_ATTEMPT: Duration = Duration::from_secs(1);

/// Bytes per `guest-file-write` / `guest-file-read` (64 KiB of base64 on the wire).
pub const FILE_CHUNK: usize = 48 * 1024;

/// The longest reply line accepted (`guest-exec-status` carries up to 16 MiB of output per
/// stream, base64-encoded).
const MAX_LINE: usize = crate::qmp::MAX_LINE;

/// How often [`Qga::wait_ready`] retries a connect while the socket is missing or refusing.
const CONNECT_POLL: Duration = Duration::from_millis(100);

/// Errors of the guest-agent client.
#[derive(Debug, thiserror::Error)]
pub enum QgaError {
    /// The socket could not be connected to.
    #[error("guest agent socket {}: {source}", path.display())]
    Connect { path: PathBuf, source: io::Error },
    /// Reading or writing the socket failed; the connection is unusable afterwards.
    #[error("guest agent I/O: {0}")]
    Io(#[from] io::Error),
    /// The agent sent something unexpected.
    #[error("guest agent protocol: {0}")]
    Protocol(String),
    /// The agent answered with an error.
    #[error("guest agent command failed: {class}: {desc}")]
    Command { class: String, desc: String },
    /// The connection is gone (QEMU exited).
    #[error("guest agent connection closed (QEMU exited?)")]
    Closed,
    /// No answer in time (also: the agent is not running yet).
    #[error("guest agent {what}: timed out after {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    /// A helper command run in the guest failed (e.g. `chmod` in [`Qga::write_file`]).
    #[error("in the guest: {0}")]
    Guest(String),
}

/// What [`Qga::exec`] starts in the guest: `path` with `args`. `env` (`KEY=VALUE` entries),
/// when not empty, replaces the agent's environment. `input` is written to the process's
/// standard input (then closed): the channel for secrets, never logged (so no `Debug`).
#[derive(Clone, Copy)]
pub struct GuestCommand<'a, A, E> {
    pub path: &'a str,
    pub args: &'a [A],
    pub env: &'a [E],
    pub input: Option<&'a [u8]>,
}

/// The state of a process started by [`Qga::exec`] (`guest-exec-status`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecStatus {
    /// Whether the process has ended (the other fields are final only then).
    pub exited: bool,
    /// Its exit code, when it exited normally.
    pub exitcode: Option<i64>,
    /// The signal that killed it, if one did.
    pub signal: Option<i64>,
    /// Captured standard output (with `capture`).
    pub stdout: Vec<u8>,
    /// Captured standard error (with `capture`).
    pub stderr: Vec<u8>,
    /// Whether the agent cut off the captured output (16 MiB per stream).
    pub truncated: bool,
}

impl ExecStatus {
    /// Exited normally with code 0.
    pub fn success(&self) -> bool {
        self.exited && self.exitcode == Some(0)
    }
}

/// One connection to the agent socket.
struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// False until `guest-sync-delimited` succeeded, and again after an interrupted call.
    synced: bool,
}

/// A guest-agent connection; all methods take `&self` and are serialised internally.
pub struct Qga {
    path: PathBuf,
    timeout: Duration,
    /// `None` once the connection is gone: every later call fails with `Closed`.
    conn: Mutex<Option<Conn>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Qga {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qga").field("path", &self.path).field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl Qga {
    /// Connects to the agent socket and synchronises with the agent within `timeout`. An
    /// agent that does not answer in time (e.g. the guest is still booting) is a
    /// [`QgaError::Timeout`]; a missing socket is a [`QgaError::Connect`].
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qga, QgaError> {
        let deadline = Instant::now() + timeout;
        let stream = match tokio::time::timeout_at(deadline, UnixStream::connect(path)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(QgaError::Connect { path: path.to_path_buf(), source }),
            Err(_) => return Err(QgaError::Timeout { what: format!("connect to {}", path.display()), timeout }),
        };
        let mut conn = Conn::new(stream);
        match tokio::time::timeout_at(deadline, sync(&mut conn, deadline)).await {
            Ok(r) => r?,
            Err(_) => return Err(QgaError::Timeout { what: "guest-sync-delimited".into(), timeout }),
        }
        Ok(Qga::from_conn(path, conn))
    }

    /// Waits up to `timeout` for the agent to answer: retries the connect while the socket is
    /// missing or refusing (QEMU starting), and resends the sync while nothing answers (the
    /// guest booting; about 5–7 s under TCG for herd's test guest).
    pub async fn wait_ready(path: &Path, timeout: Duration) -> Result<Qga, QgaError> {
        let deadline = Instant::now() + timeout;
        let timed_out = || QgaError::Timeout { what: format!("waiting for the agent on {}", path.display()), timeout };
        loop {
            let stream = match tokio::time::timeout_at(deadline, UnixStream::connect(path)).await {
                Err(_) => return Err(timed_out()),
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::trace!(path = %path.display(), error = %e, "qga: socket not ready");
                    if Instant::now() + CONNECT_POLL >= deadline {
                        return Err(QgaError::Connect { path: path.to_path_buf(), source: e });
                    }
                    tokio::time::sleep(CONNECT_POLL).await;
                    continue;
                }
            };
            let mut conn = Conn::new(stream);
            match tokio::time::timeout_at(deadline, sync(&mut conn, deadline)).await {
                Ok(Ok(())) => return Ok(Qga::from_conn(path, conn)),
                Ok(Err(QgaError::Timeout { .. })) | Err(_) => return Err(timed_out()),
                Ok(Err(e)) => {
                    // The socket closed under us (e.g. another client's turn ended): retry.
                    tracing::debug!(path = %path.display(), error = %e, "qga: sync failed, reconnecting");
                    if Instant::now() + CONNECT_POLL >= deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(CONNECT_POLL).await;
                }
            }
        }
    }

    fn from_conn(path: &Path, conn: Conn) -> Qga {
        tracing::debug!(path = %path.display(), "qga: connected and synchronised");
        Qga {
            path: path.to_path_buf(),
            timeout: DEFAULT_TIMEOUT,
            conn: Mutex::new(Some(conn)),
            next_id: AtomicU64::new(random_id()),
        }
    }

    /// Sets the bound on each call (each chunk of a file transfer is one call).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The socket this client talks to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs an agent command and returns its `return` value, bounded by the call timeout.
    /// Only the command name is logged, never `args`.
    pub async fn execute(&self, command: &str, args: Option<Value>) -> Result<Value, QgaError> {
        self.call(command, args, self.timeout, true).await.map(|v| v.unwrap_or(Value::Null))
    }

    /// Sends a command and, with `want_reply`, reads its reply; all within `timeout`.
    async fn call(
        &self,
        command: &str,
        args: Option<Value>,
        timeout: Duration,
        want_reply: bool,
    ) -> Result<Option<Value>, QgaError> {
        let deadline = Instant::now() + timeout;
        let timed_out = || QgaError::Timeout { what: command.to_string(), timeout };
        let mut slot = tokio::time::timeout_at(deadline, self.conn.lock()).await.map_err(|_| timed_out())?;
        let Some(conn) = slot.as_mut() else {
            return Err(QgaError::Closed);
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let line = command_line(command, args, id).map_err(|e| QgaError::Protocol(e.to_string()))?;
        tracing::debug!(command, id, "qga: execute");

        let round_trip = async {
            if !conn.synced {
                sync(conn, deadline).await?;
            }
            // Until the reply is read, an interruption leaves the stream in an unknown state.
            conn.synced = false;
            conn.writer.write_all(&line).await?;
            if !want_reply {
                // Any (error) reply would come later, unread: resynchronise before the next call.
                return Ok(None);
            }
            let reply = read_reply(conn, id).await?;
            conn.synced = true;
            reply.map(Some)
        };
        let result = match tokio::time::timeout_at(deadline, round_trip).await {
            Ok(r) => r,
            Err(_) => Err(timed_out()),
        };
        match result {
            Err(QgaError::Io(e)) if is_disconnect(&e) => {
                *slot = None;
                Err(QgaError::Closed)
            }
            Err(e @ (QgaError::Io(_) | QgaError::Closed)) => {
                *slot = None;
                Err(e)
            }
            other => other,
        }
    }

    /// `guest-ping`: whether the agent answers.
    pub async fn ping(&self) -> Result<(), QgaError> {
        self.execute("guest-ping", None).await.map(drop)
    }

    /// `guest-exec`: starts `cmd` in the guest and returns its pid. With `capture`, standard
    /// output and error are kept for [`Qga::exec_status`].
    pub async fn exec<A: AsRef<str>, E: AsRef<str>>(
        &self,
        cmd: GuestCommand<'_, A, E>,
        capture: bool,
    ) -> Result<i64, QgaError> {
        let GuestCommand { path, args, env, input } = cmd;
        let mut a = Map::new();
        a.insert("path".into(), Value::from(path));
        a.insert("arg".into(), args.iter().map(|s| Value::from(s.as_ref())).collect());
        if !env.is_empty() {
            a.insert("env".into(), env.iter().map(|s| Value::from(s.as_ref())).collect());
        }
        if let Some(input) = input {
            a.insert("input-data".into(), Value::from(B64.encode(input)));
        }
        a.insert("capture-output".into(), Value::from(capture));
        let ret = self.execute("guest-exec", Some(Value::Object(a))).await?;
        let pid =
            ret.get("pid").and_then(Value::as_i64).ok_or_else(|| QgaError::Protocol("guest-exec: no pid".into()))?;
        tracing::debug!(path, pid, "qga: guest-exec started");
        Ok(pid)
    }

    /// `guest-exec-status`: the state of a process from [`Qga::exec`]. Once it reports
    /// `exited`, the agent forgets the pid (asking again is an error).
    pub async fn exec_status(&self, pid: i64) -> Result<ExecStatus, QgaError> {
        let ret = self.execute("guest-exec-status", Some(json!({ "pid": pid }))).await?;
        let decode = |key: &str| -> Result<Vec<u8>, QgaError> {
            match ret.get(key).and_then(Value::as_str) {
                None => Ok(Vec::new()),
                Some(s) => B64.decode(s).map_err(|e| QgaError::Protocol(format!("guest-exec-status {key}: {e}"))),
            }
        };
        let flag = |key: &str| ret.get(key).and_then(Value::as_bool).unwrap_or(false);
        Ok(ExecStatus {
            exited: flag("exited"),
            exitcode: ret.get("exitcode").and_then(Value::as_i64),
            signal: ret.get("signal").and_then(Value::as_i64),
            stdout: decode("out-data")?,
            stderr: decode("err-data")?,
            truncated: flag("out-truncated") || flag("err-truncated"),
        })
    }

    /// Runs a command to completion with captured output: [`Qga::exec`], then polls
    /// [`Qga::exec_status`] until it exits, all within `timeout`. On timeout the process is
    /// left running in the guest (the agent cannot kill it).
    pub async fn run<A: AsRef<str>, E: AsRef<str>>(
        &self,
        path: &str,
        args: &[A],
        env: &[E],
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<ExecStatus, QgaError> {
        let deadline = Instant::now() + timeout;
        let remaining = || deadline.saturating_duration_since(Instant::now());
        let pid = tokio::time::timeout_at(deadline, self.exec(GuestCommand { path, args, env, input }, true))
            .await
            .map_err(|_| QgaError::Timeout { what: format!("guest-exec {path}"), timeout })??;
        let mut delay = Duration::from_millis(10);
        loop {
            let status = match tokio::time::timeout_at(deadline, self.exec_status(pid)).await {
                Ok(r) => r?,
                Err(_) => break,
            };
            if status.exited {
                tracing::debug!(path, pid, exitcode = ?status.exitcode, signal = ?status.signal, "qga: process exited");
                return Ok(status);
            }
            if remaining().is_zero() {
                break;
            }
            tokio::time::sleep(delay.min(remaining())).await;
            delay = (delay * 2).min(Duration::from_millis(200));
        }
        Err(QgaError::Timeout { what: format!("guest-exec {path} (pid {pid}) still running"), timeout })
    }

    /// Writes `bytes` to `path` in the guest (created or truncated) with `guest-file-open`
    /// (mode `w`), `guest-file-write` in [`FILE_CHUNK`] pieces and `guest-file-close`. With
    /// `mode`, the file is chmod-ed (via `chmod` on the guest's `PATH`) right after opening,
    /// while still empty. Each chunk is one call bounded by the call timeout.
    pub async fn write_file(&self, path: &str, bytes: &[u8], mode: Option<u32>) -> Result<(), QgaError> {
        tracing::debug!(path, len = bytes.len(), "qga: write file");
        let handle = self.file_open(path, "w").await?;
        let written = async {
            if let Some(mode) = mode {
                self.chmod(path, mode).await?;
            }
            let mut rest = bytes;
            while !rest.is_empty() {
                let chunk = &rest[..rest.len().min(FILE_CHUNK)];
                let args = json!({ "handle": handle, "buf-b64": B64.encode(chunk) });
                let ret = self.execute("guest-file-write", Some(args)).await?;
                let count = ret.get("count").and_then(Value::as_u64).unwrap_or(0) as usize;
                if count == 0 || count > chunk.len() {
                    return Err(QgaError::Protocol(format!(
                        "guest-file-write {path}: wrote {count} of {}",
                        chunk.len()
                    )));
                }
                rest = &rest[count..];
            }
            Ok(())
        }
        .await;
        let closed = self.file_close(handle).await;
        written?;
        closed
    }

    /// Reads the whole file `path` from the guest (`guest-file-read` until end of file).
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, QgaError> {
        let handle = self.file_open(path, "r").await?;
        let read = async {
            let mut out = Vec::new();
            loop {
                let args = json!({ "handle": handle, "count": FILE_CHUNK });
                let ret = self.execute("guest-file-read", Some(args)).await?;
                let count = ret.get("count").and_then(Value::as_u64).unwrap_or(0);
                if let Some(b64) = ret.get("buf-b64").and_then(Value::as_str) {
                    let chunk =
                        B64.decode(b64).map_err(|e| QgaError::Protocol(format!("guest-file-read {path}: {e}")))?;
                    out.extend_from_slice(&chunk);
                }
                if count == 0 || ret.get("eof").and_then(Value::as_bool).unwrap_or(false) {
                    return Ok::<_, QgaError>(out);
                }
            }
        }
        .await;
        let closed = self.file_close(handle).await;
        let out = read?;
        closed?;
        tracing::debug!(path, len = out.len(), "qga: read file");
        Ok(out)
    }

    async fn file_open(&self, path: &str, mode: &str) -> Result<i64, QgaError> {
        let ret = self.execute("guest-file-open", Some(json!({ "path": path, "mode": mode }))).await?;
        ret.as_i64().ok_or_else(|| QgaError::Protocol(format!("guest-file-open {path}: no handle")))
    }

    async fn file_close(&self, handle: i64) -> Result<(), QgaError> {
        self.execute("guest-file-close", Some(json!({ "handle": handle }))).await.map(drop)
    }

    async fn chmod(&self, path: &str, mode: u32) -> Result<(), QgaError> {
        let mode = format!("{mode:o}");
        let st = self.run("chmod", &[mode.as_str(), path], &[] as &[&str], None, self.timeout).await?;
        if st.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&st.stderr);
        Err(QgaError::Guest(format!(
            "chmod {mode} {path}: exit {:?}, signal {:?}: {}",
            st.exitcode,
            st.signal,
            stderr.trim()
        )))
    }

    /// `guest-get-host-name`: the guest's hostname.
    pub async fn get_host_name(&self) -> Result<String, QgaError> {
        let ret = self.execute("guest-get-host-name", None).await?;
        ret.get("host-name")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| QgaError::Protocol("guest-get-host-name: no host-name".into()))
    }

    /// `guest-network-get-interfaces`: bytes received and sent by the guest on every interface
    /// but loopback (see [`network_traffic`]).
    pub async fn network_traffic(&self) -> Result<Option<(u64, u64)>, QgaError> {
        Ok(network_traffic(&self.execute("guest-network-get-interfaces", None).await?))
    }

    /// `guest-shutdown` (mode `powerdown`): asks the guest to power off. The agent sends no
    /// reply on success, so none is awaited; watch QMP's `SHUTDOWN` event or the QEMU process
    /// (with `-no-reboot`, QEMU exits) to see it happen.
    pub async fn shutdown(&self) -> Result<(), QgaError> {
        self.call("guest-shutdown", Some(json!({ "mode": "powerdown" })), self.timeout, false).await.map(drop)
    }
}

/// Sums `statistics.rx-bytes` / `tx-bytes` of a `guest-network-get-interfaces` reply over every
/// interface but loopback (`lo`, Windows' `Loopback Pseudo-Interface`, or one whose addresses
/// are all loopback). `None` when no interface carries statistics (agents before QEMU 2.11
/// send none): no data, not zero.
pub fn network_traffic(reply: &Value) -> Option<(u64, u64)> {
    let mut total: Option<(u64, u64)> = None;
    for iface in reply.as_array()? {
        let Some(stats) = iface.get("statistics") else { continue };
        let (Some(rx), Some(tx)) =
            (stats.get("rx-bytes").and_then(Value::as_u64), stats.get("tx-bytes").and_then(Value::as_u64))
        else {
            continue;
        };
        let (sum_rx, sum_tx) = total.get_or_insert((0, 0));
        let name = iface.get("name").and_then(Value::as_str).unwrap_or_default();
        let addrs: Vec<&str> = iface
            .get("ip-addresses")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|x| x.get("ip-address").and_then(Value::as_str)).collect())
            .unwrap_or_default();
        let loopback_addr = |a: &&str| a.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if name == "lo"
            || name.to_ascii_lowercase().starts_with("loopback")
            || (!addrs.is_empty() && addrs.iter().all(loopback_addr))
        {
            continue;
        }
        *sum_rx = sum_rx.saturating_add(rx);
        *sum_tx = sum_tx.saturating_add(tx);
    }
    total
}

impl Conn {
    fn new(stream: UnixStream) -> Conn {
        let (rd, wr) = stream.into_split();
        Conn { reader: BufReader::new(rd), writer: wr, synced: false }
    }
}

/// Synchronises the stream: sends `0xFF` + `guest-sync-delimited` with a fresh random id and
/// discards input until the `0xFF`-prefixed reply with that id; resends every
/// [`SYNC_ATTEMPT`] until `deadline` (then `Timeout`).
async fn sync(conn: &mut Conn, deadline: Instant) -> Result<(), QgaError> {
    let started = Instant::now();
    loop {
        let sid = random_id();
        let mut msg = vec![0xFF];
        let req = json!({ "execute": "guest-sync-delimited", "arguments": { "id": sid } });
        msg.extend(serde_json::to_vec(&req).map_err(|e| QgaError::Protocol(e.to_string()))?);
        msg.push(b'\n');
        let attempt_deadline = deadline.min(Instant::now() + SYNC_ATTEMPT);
        let attempt = async {
            conn.writer.write_all(&msg).await?;
            wait_sync_reply(conn, sid).await
        };
        match tokio::time::timeout_at(attempt_deadline, attempt).await {
            Ok(Ok(())) => {
                conn.synced = true;
                return Ok(());
            }
            Ok(Err(e)) => return Err(e),
            Err(_) if Instant::now() >= deadline => {
                return Err(QgaError::Timeout { what: "guest-sync-delimited".into(), timeout: started.elapsed() })
            }
            Err(_) => tracing::trace!("qga: no answer to guest-sync-delimited yet, resending"),
        }
    }
}

async fn wait_sync_reply(conn: &mut Conn, sid: u64) -> Result<(), QgaError> {
    let mut skipped = Vec::new();
    let mut line = Vec::new();
    loop {
        // Everything before the delimiter is stale: replies for an earlier client or call.
        skipped.clear();
        let n = (&mut conn.reader).take(MAX_LINE as u64).read_until(0xFF, &mut skipped).await?;
        if n == 0 {
            return Err(QgaError::Closed);
        }
        if skipped.last() != Some(&0xFF) {
            continue;
        }
        line.clear();
        if !read_line_limited(&mut conn.reader, &mut line, MAX_LINE).await? {
            return Err(QgaError::Closed);
        }
        line.retain(|&b| b != 0xFF);
        let Ok(reply) = serde_json::from_slice::<Value>(line.trim_ascii()) else {
            continue;
        };
        if reply.get("return").and_then(Value::as_u64) == Some(sid) {
            return Ok(());
        }
        tracing::trace!("qga: skipping a stale sync reply");
    }
}

/// Reads until the reply to command `id`: `Ok(Ok(return))`, `Ok(Err(Command))` for an agent
/// error, `Err` for a broken stream. Replies with another id are stale and dropped; a reply
/// without an id is taken as ours (agents that do not echo ids).
async fn read_reply(conn: &mut Conn, id: u64) -> Result<Result<Value, QgaError>, QgaError> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if !read_line_limited(&mut conn.reader, &mut line, MAX_LINE).await? {
            return Err(QgaError::Closed);
        }
        line.retain(|&b| b != 0xFF);
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(text) else {
            // Never log the line: it may carry command output or file contents.
            tracing::warn!(len = text.len(), "qga: skipping a line that is not a JSON object");
            continue;
        };
        match obj.get("id") {
            None => {}
            Some(v) if v.as_u64() == Some(id) => {}
            Some(_) => {
                tracing::debug!("qga: dropping a stale reply");
                continue;
            }
        }
        if let Some(ret) = obj.remove("return") {
            return Ok(Ok(ret));
        }
        if let Some(err) = obj.get("error") {
            let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            return Ok(Err(QgaError::Command { class: field("class"), desc: field("desc") }));
        }
        tracing::debug!("qga: dropping a message that is not a reply");
    }
}

/// Whether an I/O error means the peer went away (QEMU exited).
fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected
    )
}

/// A random id in 1..2^53 (exact as a JSON number anywhere), from std's randomly keyed hasher.
fn random_id() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    (h.finish() & ((1 << 53) - 1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_differ_and_fit_json() {
        let a = random_id();
        let b = random_id();
        assert_ne!(a, b);
        assert!(a < (1 << 53) && a > 0);
    }

    #[test]
    fn network_traffic_sums_all_but_loopback() {
        let reply = json!([
            {"name": "lo", "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8}],
             "statistics": {"rx-bytes": 9000, "tx-bytes": 9000, "rx-packets": 1, "tx-packets": 1}},
            {"name": "eth0", "hardware-address": "52:54:00:12:34:56",
             "ip-addresses": [{"ip-address": "10.0.2.15", "ip-address-type": "ipv4", "prefix": 24}],
             "statistics": {"rx-bytes": 1500, "tx-bytes": 700, "rx-packets": 10, "tx-packets": 7}},
            {"name": "eth1", "statistics": {"rx-bytes": 500, "tx-bytes": 300}},
            {"name": "Loopback Pseudo-Interface 1", "statistics": {"rx-bytes": 1, "tx-bytes": 1}}
        ]);
        assert_eq!(network_traffic(&reply), Some((2000, 1000)));
        // Only loopback: the guest sent nothing (zero), which is data.
        assert_eq!(network_traffic(&json!([reply[0].clone()])), Some((0, 0)));
        // An old agent without statistics: no data.
        assert_eq!(network_traffic(&json!([{"name": "eth0", "hardware-address": "52:54:00:12:34:56"}])), None);
        assert_eq!(network_traffic(&json!({})), None);
    }

    #[test]
    fn exec_status_success() {
        let ok = ExecStatus { exited: true, exitcode: Some(0), ..Default::default() };
        assert!(ok.success());
        assert!(!ExecStatus { exited: false, ..ok.clone() }.success());
        assert!(!ExecStatus { exitcode: Some(3), ..ok }.success());
    }
}
