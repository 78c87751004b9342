//! A small client for the QEMU Machine Protocol (QMP) over a Unix socket.
//!
//! herd drives each VM's lifecycle (status, pause/resume, ACPI power-down, reset, quit) through
//! the QMP socket QEMU opens with `-qmp unix:PATH,server=on,wait=off`. QMP mixes two kinds of
//! line on one stream: replies to commands and asynchronous events (`SHUTDOWN`, `POWERDOWN`,
//! `STOP`, ...) that may arrive at any time, even between a command and its reply. A reader
//! task therefore demultiplexes every line: events go to a [`broadcast`] channel
//! ([`Qmp::events`], [`Qmp::wait_event`]); replies answer the pending command whose `"id"`
//! they carry (each command gets a fresh numeric id), so concurrent callers never see each
//! other's replies or an event in place of a reply.
//!
//! Writes go through a writer task as whole lines, so a caller that is cancelled or times out
//! never leaves a half-written command in QEMU's parser. When the socket closes (QEMU exited),
//! every pending and later call fails with [`QmpError::Closed`] and event receivers see the
//! channel close after the last buffered event.
//!
//! QEMU serves one QMP client per socket at a time: a second connection is accepted by the
//! kernel but gets no greeting until the first one goes away, which [`Qmp::connect`] reports
//! as a timeout.

use serde_json::{Map, Value};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Default bound on one command round trip ([`Qmp::with_command_timeout`] changes it).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How many events a slow [`Qmp::events`] receiver may fall behind before it skips some.
const EVENT_CAPACITY: usize = 256;

/// The longest line accepted from QEMU (`query-qmp-schema` is the largest reply, well under
/// this); a longer one ends the connection rather than growing without bound.
pub(crate) const MAX_LINE: usize = 64 << 20;

/// How often a connect retries while the socket does not exist yet or refuses connections.
const CONNECT_POLL: Duration = Duration::from_millis(50);

/// Errors of the QMP client.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be connected to within the timeout.
    #[error("QMP socket {}: {source}", path.display())]
    Connect { path: PathBuf, source: io::Error },
    /// Reading or writing the socket failed.
    #[error("QMP I/O: {0}")]
    Io(#[from] io::Error),
    /// QEMU sent something that is not QMP as we know it.
    #[error("QMP protocol: {0}")]
    Protocol(String),
    /// QEMU answered the command with an error.
    #[error("QMP command failed: {class}: {desc}")]
    Command { class: String, desc: String },
    /// The connection is gone (QEMU exited or closed the socket).
    #[error("QMP connection closed (QEMU exited?)")]
    Closed,
    /// Nothing (or not the expected thing) arrived in time.
    #[error("QMP {what}: timed out after {timeout:?}")]
    Timeout { what: String, timeout: Duration },
}

/// An asynchronous QMP event, e.g. `SHUTDOWN` with `{"guest": true, "reason": "guest-shutdown"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    /// The event name (`SHUTDOWN`, `POWERDOWN`, `STOP`, `RESUME`, `RESET`, ...).
    pub event: String,
    /// The event's `data` member (`Value::Null` when it has none).
    pub data: Value,
    /// When QEMU emitted it (`None` if QEMU did not know the time).
    pub timestamp: Option<SystemTime>,
}

/// The VM's run state, from `query-status` (QEMU's `RunState`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmStatus {
    Running,
    Paused,
    Shutdown,
    Prelaunch,
    InMigrate,
    PostMigrate,
    FinishMigrate,
    Suspended,
    InternalError,
    IoError,
    GuestPanicked,
    Watchdog,
    Debug,
    RestoreVm,
    SaveVm,
    Colo,
    /// A state this client does not know by name.
    Other(String),
}

impl VmStatus {
    /// Parses QEMU's name of a run state.
    pub fn from_qemu(s: &str) -> VmStatus {
        match s {
            "running" => VmStatus::Running,
            "paused" => VmStatus::Paused,
            "shutdown" => VmStatus::Shutdown,
            "prelaunch" => VmStatus::Prelaunch,
            "inmigrate" => VmStatus::InMigrate,
            "postmigrate" => VmStatus::PostMigrate,
            "finish-migrate" => VmStatus::FinishMigrate,
            "suspended" => VmStatus::Suspended,
            "internal-error" => VmStatus::InternalError,
            "io-error" => VmStatus::IoError,
            "guest-panicked" => VmStatus::GuestPanicked,
            "watchdog" => VmStatus::Watchdog,
            "debug" => VmStatus::Debug,
            "restore-vm" => VmStatus::RestoreVm,
            "save-vm" => VmStatus::SaveVm,
            "colo" => VmStatus::Colo,
            other => VmStatus::Other(other.to_string()),
        }
    }

    /// QEMU's name of this state.
    pub fn as_str(&self) -> &str {
        match self {
            VmStatus::Running => "running",
            VmStatus::Paused => "paused",
            VmStatus::Shutdown => "shutdown",
            VmStatus::Prelaunch => "prelaunch",
            VmStatus::InMigrate => "inmigrate",
            VmStatus::PostMigrate => "postmigrate",
            VmStatus::FinishMigrate => "finish-migrate",
            VmStatus::Suspended => "suspended",
            VmStatus::InternalError => "internal-error",
            VmStatus::IoError => "io-error",
            VmStatus::GuestPanicked => "guest-panicked",
            VmStatus::Watchdog => "watchdog",
            VmStatus::Debug => "debug",
            VmStatus::RestoreVm => "restore-vm",
            VmStatus::SaveVm => "save-vm",
            VmStatus::Colo => "colo",
            VmStatus::Other(s) => s,
        }
    }
}

impl std::fmt::Display for VmStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

type Reply = Result<Value, QmpError>;

/// State shared by the handle and the reader/writer tasks.
struct Shared {
    state: Mutex<State>,
}

struct State {
    closed: bool,
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    /// Dropped on close, so receivers see `RecvError::Closed` after the buffered events.
    events: Option<broadcast::Sender<QmpEvent>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the map half-updated; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the connection closed and fails every pending command with `Closed`.
    fn close(&self) {
        let pending = {
            let mut st = self.lock();
            if st.closed {
                return;
            }
            st.closed = true;
            st.events = None;
            std::mem::take(&mut st.pending)
        };
        if !pending.is_empty() {
            tracing::debug!(pending = pending.len(), "qmp: connection closed with commands pending");
        }
        for (_, tx) in pending {
            let _ = tx.send(Err(QmpError::Closed));
        }
    }

    /// Routes one message from QEMU: an event to the event channel, a reply to its caller.
    fn dispatch(&self, msg: Value) {
        let Value::Object(mut obj) = msg else {
            tracing::warn!("qmp: ignoring a message that is not a JSON object");
            return;
        };
        if let Some(name) = obj.get("event").and_then(Value::as_str) {
            let event = QmpEvent {
                event: name.to_string(),
                data: obj.remove("data").unwrap_or(Value::Null),
                timestamp: parse_timestamp(obj.get("timestamp")),
            };
            tracing::debug!(event = %event.event, "qmp: event");
            let tx = self.lock().events.clone();
            if let Some(tx) = tx {
                // No receiver at the moment is fine: nobody is waiting for events.
                let _ = tx.send(event);
            }
            return;
        }
        if !obj.contains_key("return") && !obj.contains_key("error") {
            tracing::warn!("qmp: ignoring a message that is neither an event nor a reply");
            return;
        }
        let Some(id) = obj.get("id").and_then(Value::as_u64) else {
            // QEMU answers unparseable input with an error that has no id; nobody waits for it.
            tracing::warn!(error = %describe_error(&obj), "qmp: reply without a known id");
            return;
        };
        let tx = self.lock().pending.remove(&id);
        let Some(tx) = tx else {
            tracing::debug!(id, "qmp: late reply to a command that timed out");
            return;
        };
        let reply = match obj.remove("return") {
            Some(ret) => Ok(ret),
            None => Err(command_error(&obj)),
        };
        let _ = tx.send(reply);
    }
}

/// A QMP connection. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Qmp {
    shared: Arc<Shared>,
    writer: mpsc::UnboundedSender<Vec<u8>>,
    next_id: AtomicU64,
    command_timeout: Duration,
    greeting: Value,
    reader_task: JoinHandle<()>,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp").field("closed", &self.is_closed()).finish_non_exhaustive()
    }
}

impl Drop for Qmp {
    fn drop(&mut self) {
        // The writer task ends when `writer` is dropped; the reader would wait for QEMU.
        self.reader_task.abort();
    }
}

impl Qmp {
    /// Connects to QEMU's QMP socket, reads the greeting and leaves capabilities negotiation
    /// mode (`qmp_capabilities`), all within `timeout`. While the socket does not exist yet or
    /// refuses connections (QEMU still starting), the connect is retried until the deadline.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = connect_until(path, deadline).await?;
        let (rd, wr) = stream.into_split();
        let mut reader = BufReader::new(rd);
        let mut writer = wr;
        let handshake = async {
            let greeting = match read_message(&mut reader).await? {
                None => return Err(QmpError::Closed),
                Some(v) if v.get("QMP").is_some() => v,
                Some(_) => return Err(QmpError::Protocol("expected the QMP greeting".into())),
            };
            writer.write_all(b"{\"execute\":\"qmp_capabilities\",\"id\":0}\n").await?;
            loop {
                let Some(Value::Object(obj)) = read_message(&mut reader).await? else {
                    return Err(QmpError::Closed);
                };
                if obj.contains_key("event") {
                    continue;
                }
                if obj.get("id").and_then(Value::as_u64) != Some(0) {
                    continue;
                }
                if obj.contains_key("return") {
                    return Ok(greeting);
                }
                return Err(command_error(&obj));
            }
        };
        let greeting = match tokio::time::timeout_at(deadline, handshake).await {
            Ok(r) => r?,
            Err(_) => return Err(QmpError::Timeout { what: format!("greeting on {}", path.display()), timeout }),
        };
        tracing::debug!(path = %path.display(), "qmp: connected");

        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let shared = Arc::new(Shared {
            state: Mutex::new(State { closed: false, pending: HashMap::new(), events: Some(events) }),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(writer, rx, shared.clone()));
        let reader_task = tokio::spawn(read_loop(reader, shared.clone()));
        Ok(Qmp {
            shared,
            writer: tx,
            next_id: AtomicU64::new(1),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            greeting,
            reader_task,
        })
    }

    /// Sets the bound on each command round trip of [`Qmp::execute`] and the helpers.
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// QEMU's greeting (`{"QMP": {"version": ..., "capabilities": [...]}}`).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Whether the connection is known to be gone.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// Runs a QMP command and returns its `return` value, bounded by the command timeout.
    pub async fn execute(&self, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
        self.execute_with_timeout(command, args, self.command_timeout).await
    }

    /// [`Qmp::execute`] with an explicit bound on the round trip.
    pub async fn execute_with_timeout(
        &self,
        command: &str,
        args: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let line = command_line(command, args, id).map_err(|e| QmpError::Protocol(e.to_string()))?;

        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.shared.lock();
            if st.closed {
                return Err(QmpError::Closed);
            }
            st.pending.insert(id, tx);
        }
        // Removes the pending entry however this call ends (reply, timeout, cancellation).
        let _pending = PendingGuard { shared: &self.shared, id };
        tracing::debug!(command, id, "qmp: execute");
        if self.writer.send(line).is_err() {
            return Err(QmpError::Closed);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(QmpError::Closed),
            Err(_) => Err(QmpError::Timeout { what: format!("command {command}"), timeout }),
        }
    }

    /// A receiver of every event from now on (events before this call are not replayed). It
    /// reports `RecvError::Closed` once the connection is gone and the buffered events are read.
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        match &self.shared.lock().events {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// Waits for the next event called `name` that arrives after this call.
    pub async fn wait_event(&self, name: &str, timeout: Duration) -> Result<QmpEvent, QmpError> {
        let mut rx = self.events();
        wait_event_on(&mut rx, name, timeout).await
    }

    /// `query-status`: the VM's run state.
    pub async fn query_status(&self) -> Result<VmStatus, QmpError> {
        let ret = self.execute("query-status", None).await?;
        let status = ret
            .get("status")
            .and_then(Value::as_str)
            .ok_or_else(|| QmpError::Protocol("query-status reply has no status".into()))?;
        Ok(VmStatus::from_qemu(status))
    }

    /// `system_powerdown`: presses the ACPI power button. The guest may ignore it.
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// `stop`: pauses the VM's vCPUs.
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.execute("stop", None).await.map(drop)
    }

    /// `cont`: resumes a paused VM.
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(drop)
    }

    /// `system_reset`: a hard reset of the machine.
    pub async fn system_reset(&self) -> Result<(), QmpError> {
        self.execute("system_reset", None).await.map(drop)
    }

    /// `quit`: QEMU exits at once, without the guest shutting down. QEMU may close the socket
    /// before its reply is read; that counts as success.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Presses the ACPI power button and waits up to `timeout` for the guest to power off
    /// (the `SHUTDOWN` event). Returns whether it did so cleanly: `false` when the guest
    /// ignored the button, when it reset or panicked instead, or when QEMU went away without
    /// a `SHUTDOWN` event. The caller kills the QEMU process when this returns `false`.
    pub async fn powerdown_with_timeout(&self, timeout: Duration) -> Result<bool, QmpError> {
        // Subscribe first: a fast guest may power off before system_powerdown's reply is read.
        let mut rx = self.events();
        let started = Instant::now();
        self.system_powerdown().await?;
        let remaining = timeout.saturating_sub(started.elapsed());
        match wait_event_on(&mut rx, "SHUTDOWN", remaining).await {
            Ok(ev) => {
                let clean = shutdown_was_clean(&ev.data);
                tracing::debug!(clean, data = %ev.data, "qmp: guest shut down after system_powerdown");
                Ok(clean)
            }
            Err(QmpError::Timeout { .. }) => {
                tracing::info!(?timeout, "qmp: guest did not power off after system_powerdown");
                Ok(false)
            }
            Err(QmpError::Closed) => {
                tracing::info!("qmp: QEMU went away after system_powerdown without a SHUTDOWN event");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// Whether a `SHUTDOWN` event's data says the guest powered itself off (not a reset turned
/// into an exit by `-no-reboot`, a panic or a host-side quit).
fn shutdown_was_clean(data: &Value) -> bool {
    match data.get("reason").and_then(Value::as_str) {
        Some(reason) => reason == "guest-shutdown",
        // QEMU before 4.0 sends no reason; then only `guest` tells host and guest apart.
        None => data.get("guest").and_then(Value::as_bool) != Some(false),
    }
}

/// Removes a command's pending entry when its call ends.
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock().pending.remove(&self.id);
    }
}

async fn wait_event_on(
    rx: &mut broadcast::Receiver<QmpEvent>,
    name: &str,
    timeout: Duration,
) -> Result<QmpEvent, QmpError> {
    let deadline = Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => return Err(QmpError::Timeout { what: format!("event {name}"), timeout }),
            Ok(Ok(ev)) if ev.event == name => return Ok(ev),
            Ok(Ok(_)) => {}
            Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                tracing::warn!(skipped = n, "qmp: event receiver lagged");
            }
            Ok(Err(broadcast::error::RecvError::Closed)) => return Err(QmpError::Closed),
        }
    }
}

async fn connect_until(path: &Path, deadline: Instant) -> Result<UnixStream, QmpError> {
    loop {
        match UnixStream::connect(path).await {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused)
                    && Instant::now() + CONNECT_POLL < deadline =>
            {
                tokio::time::sleep(CONNECT_POLL).await;
            }
            Err(source) => return Err(QmpError::Connect { path: path.to_path_buf(), source }),
        }
    }
}

async fn read_loop(mut reader: BufReader<OwnedReadHalf>, shared: Arc<Shared>) {
    loop {
        match read_message(&mut reader).await {
            Ok(Some(msg)) => shared.dispatch(msg),
            Ok(None) => {
                tracing::debug!("qmp: QEMU closed the socket");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "qmp: reading the socket failed");
                break;
            }
        }
    }
    shared.close();
}

async fn write_loop(mut writer: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Vec<u8>>, shared: Arc<Shared>) {
    while let Some(line) = rx.recv().await {
        if let Err(e) = writer.write_all(&line).await {
            tracing::debug!(error = %e, "qmp: writing the socket failed");
            shared.close();
            return;
        }
    }
}

/// Reads the next JSON message (one per line), skipping blank lines and lines that do not
/// parse. `Ok(None)` at end of stream.
async fn read_message<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<Option<Value>, QmpError> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if !read_line_limited(reader, &mut line, MAX_LINE).await? {
            return Ok(None);
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        match serde_json::from_slice(text) {
            Ok(v) => return Ok(Some(v)),
            Err(e) => tracing::warn!(len = text.len(), error = %e, "qmp: skipping a line that is not JSON"),
        }
    }
}

/// Reads up to and including the next `\n` into `buf`. Returns `false` at end of stream with
/// nothing read; a final line without `\n` is returned as a line. A line longer than `max` is
/// an `InvalidData` error.
pub(crate) async fn read_line_limited<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<bool> {
    let n = reader.take(max as u64 + 1).read_until(b'\n', buf).await?;
    if n == 0 {
        return Ok(false);
    }
    if buf.len() > max && buf.last() != Some(&b'\n') {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("line longer than {max} bytes")));
    }
    Ok(true)
}

/// One command as a JSON line, `{"execute", "arguments" (when given), "id"}`: the framing
/// QMP and the guest agent share.
pub(crate) fn command_line(command: &str, args: Option<Value>, id: u64) -> serde_json::Result<Vec<u8>> {
    let mut msg = Map::new();
    msg.insert("execute".into(), Value::from(command));
    if let Some(args) = args {
        msg.insert("arguments".into(), args);
    }
    msg.insert("id".into(), Value::from(id));
    let mut line = serde_json::to_vec(&Value::Object(msg))?;
    line.push(b'\n');
    Ok(line)
}

/// `QmpError::Command` from a reply object's `error` member.
fn command_error(obj: &Map<String, Value>) -> QmpError {
    let err = obj.get("error");
    let field = |k: &str| err.and_then(|e| e.get(k)).and_then(Value::as_str).unwrap_or("").to_string();
    QmpError::Command { class: field("class"), desc: field("desc") }
}

fn describe_error(obj: &Map<String, Value>) -> String {
    match command_error(obj) {
        QmpError::Command { class, desc } => format!("{class}: {desc}"),
        other => other.to_string(),
    }
}

fn parse_timestamp(ts: Option<&Value>) -> Option<SystemTime> {
    let ts = ts?;
    let secs = ts.get("seconds")?.as_i64()?;
    let micros = ts.get("microseconds")?.as_i64()?;
    if secs < 0 || !(0..1_000_000).contains(&micros) {
        return None;
    }
    Some(UNIX_EPOCH + Duration::from_secs(secs as u64) + Duration::from_micros(micros as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn run_states_round_trip() {
        for s in ["running", "paused", "shutdown", "guest-panicked", "finish-migrate", "colo"] {
            assert_eq!(VmStatus::from_qemu(s).as_str(), s);
        }
        assert_eq!(VmStatus::from_qemu("brand-new"), VmStatus::Other("brand-new".into()));
    }

    #[test]
    fn clean_shutdown_is_told_from_reset_and_quit() {
        assert!(shutdown_was_clean(&json!({"guest": true, "reason": "guest-shutdown"})));
        assert!(!shutdown_was_clean(&json!({"guest": true, "reason": "guest-reset"})));
        assert!(!shutdown_was_clean(&json!({"guest": false, "reason": "host-qmp-quit"})));
        assert!(shutdown_was_clean(&json!({"guest": true})));
        assert!(!shutdown_was_clean(&json!({"guest": false})));
    }

    #[test]
    fn timestamps() {
        let t = parse_timestamp(Some(&json!({"seconds": 10, "microseconds": 5}))).unwrap();
        assert_eq!(t, UNIX_EPOCH + Duration::from_micros(10_000_005));
        assert_eq!(parse_timestamp(Some(&json!({"seconds": -1, "microseconds": -1}))), None);
        assert_eq!(parse_timestamp(None), None);
    }

    #[tokio::test]
    async fn long_lines_are_refused() {
        let data = [b'x'; 100];
        let mut r = BufReader::new(&data[..]);
        let mut buf = Vec::new();
        assert!(read_line_limited(&mut r, &mut buf, 10).await.is_err());
        let data = b"{\"a\":1}\r\n\nlast".to_vec();
        let mut r = BufReader::new(&data[..]);
        assert_eq!(read_message(&mut r).await.unwrap(), Some(json!({"a": 1})));
        // "last" is not JSON: skipped, then the end of the stream.
        assert_eq!(read_message(&mut r).await.unwrap(), None);
    }
}
