//! NATS JetStream: a consumer's pending messages, from `$JS.API.CONSUMER.INFO.<stream>.<consumer>`.
//!
//! The NATS client protocol is a handful of text lines (INFO, CONNECT, PING/PONG, SUB, UNSUB,
//! PUB, MSG/HMSG, +OK/-ERR), so it is spoken directly: a JetStream API call is a request on a
//! subject with a reply inbox, answered with JSON.
//!
//! Measurement: `num_pending`, the messages in the stream that match the consumer and have not
//! been delivered to it yet — the queue still to be worked on. With `"includePending": true`
//! `num_ack_pending` (delivered, not yet acknowledged) is added: use that when in-flight work
//! must keep the set from scaling to zero. A missing stream or consumer is an error
//! (`NotFound`), a misconfiguration to report rather than an empty queue.
//!
//! Auth goes in protected settings: `{"token": "..."}` or `{"user": "...", "password": "..."}`.
//! TLS (`tls://`, or a server that requires it) is not supported yet.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herd_model::FieldError;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::error::io_failure;
use crate::spec::{connect_host_port, parse_host_port, Fields};
use crate::{ErrorKind, SourceError, SourceKind, SourceSpec};

/// The longest control line accepted.
const MAX_LINE: u64 = 64 << 10;
/// The largest message accepted when the server does not announce `max_payload`.
const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

/// How to authenticate in `CONNECT`. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Auth {
    /// No credentials.
    #[default]
    None,
    /// `auth_token`.
    Token(String),
    /// `user` and `pass`.
    UserPassword { user: String, password: String },
}

impl Auth {
    fn secrets(&self) -> Vec<String> {
        match self {
            Auth::None => Vec::new(),
            Auth::Token(t) => vec![t.clone()],
            Auth::UserPassword { password, .. } => vec![password.clone()],
        }
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Token(_) => f.write_str("Token(***)"),
            Auth::UserPassword { user, .. } => write!(f, "UserPassword {{ user: {user:?}, password: *** }}"),
        }
    }
}

/// One operation read from the server.
enum Op {
    Msg { sid: u64, headers: Option<Vec<u8>>, payload: Vec<u8> },
    Pong,
    Other,
}

/// A minimal NATS client on one connection: publish, request/reply and flush. No timeouts
/// of its own: wrap calls in `tokio::time::timeout` (sources do).
pub struct Client {
    stream: BufReader<TcpStream>,
    context: String,
    max_payload: usize,
    headers: bool,
    inbox: String,
    next_sid: u64,
    secrets: Vec<String>,
}

fn nonce() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}{:x}{:x}", std::process::id(), nanos, COUNTER.fetch_add(1, Ordering::Relaxed))
}

impl Client {
    /// Connects to `nats://host:port` (or `host:port`), sends CONNECT with `auth`, and waits
    /// for the PONG that proves the server accepted it.
    pub async fn connect(endpoint: &str, auth: &Auth) -> Result<Self, SourceError> {
        let (tcp, context) = connect_host_port(endpoint, "nats", &["tls"], 4222, "pass them as Auth").await?;
        let mut c = Client {
            stream: BufReader::new(tcp),
            context,
            max_payload: DEFAULT_MAX_PAYLOAD,
            headers: false,
            inbox: format!("_INBOX.herd.{}", nonce()),
            next_sid: 0,
            secrets: auth.secrets(),
        };
        let line = c.read_line().await?;
        let info = line
            .strip_prefix("INFO ")
            .and_then(|j| serde_json::from_str::<Value>(j).ok())
            .ok_or_else(|| c.err(ErrorKind::Protocol, "the server did not greet with INFO; is this a NATS server?"))?;
        if info.get("tls_required").and_then(Value::as_bool) == Some(true) {
            return Err(c.err(ErrorKind::Config, "the server requires TLS, which is not supported yet"));
        }
        if let Some(m) = info.get("max_payload").and_then(Value::as_u64) {
            c.max_payload = usize::try_from(m).unwrap_or(DEFAULT_MAX_PAYLOAD);
        }
        c.headers = info.get("headers").and_then(Value::as_bool) == Some(true);
        let mut connect = json!({
            "verbose": false,
            "pedantic": false,
            "tls_required": false,
            "name": "herd-metric-sources",
            "lang": "rust",
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": 1,
            "headers": c.headers,
            "no_responders": c.headers,
        });
        match auth {
            Auth::None => {}
            Auth::Token(t) => connect["auth_token"] = json!(t),
            Auth::UserPassword { user, password } => {
                connect["user"] = json!(user);
                connect["pass"] = json!(password);
            }
        }
        c.write(format!("CONNECT {connect}\r\nPING\r\n").as_bytes()).await?;
        loop {
            if let Op::Pong = c.read_op().await? {
                return Ok(c);
            }
        }
    }

    fn err(&self, kind: ErrorKind, msg: impl Into<String>) -> SourceError {
        SourceError::new(kind, &self.context, msg).redact(&self.secrets)
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), SourceError> {
        match self.stream.get_mut().write_all(data).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let (kind, msg) = io_failure(&e);
                Err(self.err(kind, msg))
            }
        }
    }

    async fn read_line(&mut self) -> Result<String, SourceError> {
        let mut line = Vec::new();
        let n = match (&mut self.stream).take(MAX_LINE).read_until(b'\n', &mut line).await {
            Ok(n) => n,
            Err(e) => {
                let (kind, msg) = io_failure(&e);
                return Err(self.err(kind, msg));
            }
        };
        if n == 0 {
            return Err(self.err(ErrorKind::Protocol, "the server closed the connection"));
        }
        if !line.ends_with(b"\r\n") {
            return Err(self.err(ErrorKind::Protocol, "a protocol line is not terminated by CRLF"));
        }
        line.truncate(line.len() - 2);
        Ok(String::from_utf8_lossy(&line).into_owned())
    }

    async fn read_exact(&mut self, n: usize) -> Result<Vec<u8>, SourceError> {
        if n > self.max_payload.saturating_add(64 << 10) {
            return Err(self.err(ErrorKind::Protocol, format!("a message of {n} bytes is larger than max_payload")));
        }
        let mut data = vec![0u8; n + 2];
        if let Err(e) = self.stream.read_exact(&mut data).await {
            let (kind, msg) = io_failure(&e);
            return Err(self.err(kind, msg));
        }
        if !data.ends_with(b"\r\n") {
            return Err(self.err(ErrorKind::Protocol, "a message is not terminated by CRLF"));
        }
        data.truncate(n);
        Ok(data)
    }

    /// Reads one operation, answering the server's PINGs on the way.
    async fn read_op(&mut self) -> Result<Op, SourceError> {
        let line = self.read_line().await?;
        let mut parts = line.split_ascii_whitespace();
        let verb = parts.next().unwrap_or("").to_ascii_uppercase();
        let args: Vec<&str> = parts.collect();
        let num = |s: Option<&&str>| s.and_then(|s| s.parse::<usize>().ok());
        match verb.as_str() {
            "PING" => {
                self.write(b"PONG\r\n").await?;
                Ok(Op::Other)
            }
            "PONG" => Ok(Op::Pong),
            "+OK" | "INFO" => Ok(Op::Other),
            "-ERR" => {
                let text = line[4..].trim().trim_matches('\'').to_string();
                let lower = text.to_ascii_lowercase();
                if lower.contains("authorization") || lower.contains("authentication") {
                    Err(self.err(ErrorKind::Auth, format!("authentication failed: {text}")))
                } else {
                    Err(self.err(ErrorKind::Server, format!("server error: {text}")))
                }
            }
            "MSG" => {
                // MSG <subject> <sid> [reply-to] <#bytes>
                let (Some(sid), Some(n)) = (num(args.get(1)), num(args.last())) else {
                    return Err(self.err(ErrorKind::Protocol, "a malformed MSG line"));
                };
                let payload = self.read_exact(n).await?;
                Ok(Op::Msg { sid: sid as u64, headers: None, payload })
            }
            "HMSG" => {
                // HMSG <subject> <sid> [reply-to] <#header bytes> <#total bytes>
                let (Some(sid), Some(h), Some(n)) =
                    (num(args.get(1)), num(args.get(args.len().wrapping_sub(2))), num(args.last()))
                else {
                    return Err(self.err(ErrorKind::Protocol, "a malformed HMSG line"));
                };
                if h > n || args.len() < 4 {
                    return Err(self.err(ErrorKind::Protocol, "a malformed HMSG line"));
                }
                let mut data = self.read_exact(n).await?;
                let payload = data.split_off(h);
                Ok(Op::Msg { sid: sid as u64, headers: Some(data), payload })
            }
            _ => Err(self.err(ErrorKind::Protocol, format!("unexpected protocol line {verb:?}"))),
        }
    }

    /// Publishes a message (fire and forget; follow with [`Client::flush`] to know the server
    /// has it).
    pub async fn publish(&mut self, subject: &str, payload: &[u8]) -> Result<(), SourceError> {
        check_subject(subject).map_err(|m| self.err(ErrorKind::Config, m))?;
        let mut buf = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
        buf.extend_from_slice(payload);
        buf.extend_from_slice(b"\r\n");
        self.write(&buf).await
    }

    /// A round trip (PING/PONG): everything sent before has been processed by the server.
    pub async fn flush(&mut self) -> Result<(), SourceError> {
        self.write(b"PING\r\n").await?;
        loop {
            if let Op::Pong = self.read_op().await? {
                return Ok(());
            }
        }
    }

    /// Sends `payload` to `subject` with a fresh reply inbox and returns the first reply's
    /// payload. "No responders" (nobody subscribed to `subject`) is an error.
    pub async fn request(&mut self, subject: &str, payload: &[u8]) -> Result<Vec<u8>, SourceError> {
        check_subject(subject).map_err(|m| self.err(ErrorKind::Config, m))?;
        self.next_sid += 1;
        let sid = self.next_sid;
        let inbox = format!("{}.{sid}", self.inbox);
        let mut buf =
            format!("SUB {inbox} {sid}\r\nUNSUB {sid} 1\r\nPUB {subject} {inbox} {}\r\n", payload.len()).into_bytes();
        buf.extend_from_slice(payload);
        buf.extend_from_slice(b"\r\n");
        self.write(&buf).await?;
        loop {
            if let Op::Msg { sid: got, headers, payload } = self.read_op().await? {
                if got != sid {
                    continue;
                }
                if let Some(h) = headers {
                    let status = String::from_utf8_lossy(&h);
                    let first = status.lines().next().unwrap_or("");
                    if first.starts_with("NATS/1.0 503") {
                        return Err(self.err(ErrorKind::Server, format!("no responders for {subject}")));
                    }
                }
                return Ok(payload);
            }
        }
    }
}

/// A subject: non-empty tokens separated by `.`, no whitespace.
fn check_subject(s: &str) -> Result<(), String> {
    if s.is_empty() || s.split('.').any(str::is_empty) || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(format!("'{s}' is not a valid NATS subject"))
    } else {
        Ok(())
    }
}

/// A validated NATS JetStream source.
#[derive(Clone)]
pub(crate) struct Config {
    addr: String,
    stream: String,
    consumer: String,
    include_pending: bool,
    auth: Auth,
}

/// A stream or consumer name: it becomes one subject token.
fn check_name(field: &str, name: &str) -> Result<(), FieldError> {
    if name.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\')) {
        return Err(FieldError::new(field, "must not contain whitespace, '.', '*', '>', '/' or '\\'"));
    }
    Ok(())
}

/// Reads and checks a NATS JetStream spec.
pub(crate) fn parse(spec: &SourceSpec) -> Result<Config, FieldError> {
    let hp = parse_host_port(
        &spec.endpoint,
        "nats",
        &["tls"],
        4222,
        "put {\"token\": ...} or {\"user\": ..., \"password\": ...} in the protected settings",
    )?;
    if !hp.path.is_empty() {
        return Err(FieldError::new("endpoint", "must be nats://host:port, without a path"));
    }
    let s = Fields::settings(spec)?;
    s.only(SourceKind::NatsJetstream, &["stream", "consumer", "includePending"])?;
    let stream = s.str_req("stream", "the JetStream stream's name")?;
    check_name("settings.stream", stream)?;
    let consumer = s.str_req("consumer", "the durable consumer whose pending messages are measured")?;
    check_name("settings.consumer", consumer)?;
    let p = Fields::protected(spec)?;
    p.only(SourceKind::NatsJetstream, &["token", "user", "password"])?;
    let auth = match (p.str_nonempty_opt("token")?, p.str_nonempty_opt("user")?, p.str_nonempty_opt("password")?) {
        (None, None, None) => Auth::None,
        (Some(t), None, None) => Auth::Token(t.to_string()),
        (None, Some(u), Some(pw)) => Auth::UserPassword { user: u.to_string(), password: pw.to_string() },
        (Some(_), _, _) => {
            return Err(FieldError::new("protected.token", "give either a token or a user and password, not both"))
        }
        (None, Some(_), None) => return Err(FieldError::new("protected.password", "required with protected.user")),
        (None, None, Some(_)) => return Err(FieldError::new("protected.user", "required with protected.password")),
    };
    Ok(Config {
        addr: hp.addr,
        stream: stream.to_string(),
        consumer: consumer.to_string(),
        include_pending: s.bool_opt("includePending")?.unwrap_or(false),
        auth,
    })
}

/// Samples one JetStream consumer.
pub(crate) struct JetStreamSource {
    config: Config,
    timeout: Duration,
    describe: String,
    secrets: Vec<String>,
}

impl JetStreamSource {
    pub(crate) fn new(config: Config, timeout: Duration) -> Self {
        let extra = if config.include_pending { " (pending + ack pending)" } else { "" };
        let describe =
            format!("nats-jetstream {} stream {} consumer {}{extra}", config.addr, config.stream, config.consumer);
        let secrets = config.auth.secrets();
        Self { config, timeout, describe, secrets }
    }

    async fn sample_now(&self) -> Result<Option<f64>, SourceError> {
        let c = &self.config;
        let mut client = Client::connect(&c.addr, &c.auth).await?;
        let subject = format!("$JS.API.CONSUMER.INFO.{}.{}", c.stream, c.consumer);
        let reply = client.request(&subject, b"").await.map_err(|e| {
            if e.message().starts_with("no responders") {
                SourceError::new(
                    ErrorKind::Server,
                    "",
                    format!("{}; is JetStream enabled on the server (-js)?", e.message()),
                )
            } else {
                e
            }
        })?;
        let info: Value = serde_json::from_slice(&reply)
            .map_err(|e| SourceError::new(ErrorKind::Protocol, "", format!("the JetStream reply is not JSON: {e}")))?;
        if let Some(err) = info.get("error") {
            let code = err.get("code").and_then(Value::as_u64).unwrap_or(0);
            let desc = err.get("description").and_then(Value::as_str).unwrap_or("unknown error");
            let kind = if code == 404 { ErrorKind::NotFound } else { ErrorKind::Server };
            return Err(SourceError::new(kind, "", format!("JetStream error {code}: {desc}")));
        }
        let field = |name: &str| {
            info.get(name)
                .and_then(Value::as_u64)
                .ok_or_else(|| SourceError::new(ErrorKind::Protocol, "", format!("the consumer info has no {name}")))
        };
        let pending = field("num_pending")?;
        let total = if c.include_pending { pending + field("num_ack_pending")? } else { pending };
        Ok(Some(total as f64))
    }
}

bounded_metric_source!(JetStreamSource, secrets);

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(settings: Value, protected: Value) -> SourceSpec {
        SourceSpec { kind: SourceKind::NatsJetstream, endpoint: "nats://127.0.0.1:4222".into(), settings, protected }
    }

    #[test]
    fn settings_are_checked_with_field_paths() {
        let ok = json!({"stream": "JOBS", "consumer": "workers"});
        assert!(parse(&spec(ok.clone(), json!({"token": "t"}))).is_ok());
        assert!(parse(&spec(ok.clone(), json!({"user": "u", "password": "p"}))).is_ok());
        let field = |s, p| parse(&spec(s, p)).err().map(|e: FieldError| e.field).unwrap_or_default();
        assert_eq!(field(json!({"consumer": "c"}), json!(null)), "settings.stream");
        assert_eq!(field(json!({"stream": "a.b", "consumer": "c"}), json!(null)), "settings.stream");
        assert_eq!(field(json!({"stream": "s", "consumer": "c>"}), json!(null)), "settings.consumer");
        assert_eq!(field(ok.clone(), json!({"user": "u"})), "protected.password");
        assert_eq!(field(ok.clone(), json!({"token": "t", "user": "u", "password": "p"})), "protected.token");
        assert_eq!(field(ok, json!({"tokn": "t"})), "protected.tokn");
    }

    #[test]
    fn auth_debug_hides_secrets() {
        let a = Auth::UserPassword { user: "u".into(), password: "hunter2".into() };
        assert!(!format!("{a:?}").contains("hunter2"));
        assert!(!format!("{:?}", Auth::Token("tok123".into())).contains("tok123"));
    }
}
