//! Redis: a list's length (`LLEN`) or a stream consumer group's lag (`XINFO GROUPS`).
//!
//! The RESP2 protocol is spoken directly over a `TcpStream` (commands are arrays of bulk
//! strings; replies are simple strings, errors, integers, bulk strings and arrays), which is
//! all a queue-length probe needs and keeps a Redis client library out of herd.
//!
//! Measurements:
//! - `{"key": "jobs"}` → `LLEN jobs`. A missing key is `0`, not "no data": Redis deletes a list
//!   when its last item is popped, so a missing list is an empty queue.
//! - `{"stream": "s", "group": "g"}` → the group's `lag`: entries added to the stream that no
//!   consumer of the group has been delivered yet. Where Redis cannot tell the lag (it reports
//!   it as nil after some deletions, and Redis < 7 has no such field) the entries after the
//!   group's `last-delivered-id` are counted with `XRANGE`. With `"includePending": true` the
//!   group's pending entries (delivered, not yet acknowledged) are added: use that when
//!   in-flight work must keep the set from scaling to zero.
//!
//! A missing stream or group is an error (`NotFound`): it is a misconfiguration to report, not
//! an empty queue.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use herd_model::FieldError;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::error::io_failure;
use crate::spec::{connect_host_port, parse_host_port, Fields};
use crate::{ErrorKind, SourceError, SourceKind, SourceSpec};

/// The longest reply line and bulk string accepted (a queue probe needs far less).
const MAX_BULK: usize = 64 << 20;
/// The most elements of one reply array.
const MAX_ARRAY: usize = 1 << 20;
/// The deepest nesting of reply arrays.
const MAX_DEPTH: usize = 8;
/// Entries per `XRANGE` page when counting a stream's unread entries by hand.
const XRANGE_PAGE: usize = 1000;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+OK`
    Simple(String),
    /// `-ERR ...` inside an array (a top-level error reply is returned as an `Err`).
    Error(String),
    /// `:42`
    Int(i64),
    /// `$3\r\nabc`
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`
    Nil,
    /// `*2\r\n...`
    Array(Vec<Value>),
}

impl Value {
    /// The text of a simple or bulk string.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Value::Simple(s) => Some(s.clone()),
            Value::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

type Fail = (ErrorKind, String);

/// A minimal Redis connection: send a command, read its reply. No timeouts of its own: wrap
/// calls in `tokio::time::timeout` (sources do).
pub struct Connection {
    stream: BufReader<TcpStream>,
    context: String,
}

impl Connection {
    /// Connects to `host:port` or `redis://host:port`.
    pub async fn connect(endpoint: &str) -> Result<Self, SourceError> {
        let (tcp, context) = connect_host_port(endpoint, "redis", &["rediss"], 6379, "send AUTH as a command").await?;
        Ok(Self { stream: BufReader::new(tcp), context })
    }

    /// Sends one command and reads its reply. An error reply (`-WRONGTYPE ...`) is an `Err`
    /// whose message starts with the command's name (never its arguments, which may hold a
    /// password): `LLEN: WRONGTYPE Operation against a key holding the wrong kind of value`.
    pub async fn command<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Value, SourceError> {
        let name = args.first().map(|a| String::from_utf8_lossy(a.as_ref()).to_ascii_uppercase()).unwrap_or_default();
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            let a = a.as_ref();
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a);
            buf.extend_from_slice(b"\r\n");
        }
        let fail = |(kind, msg): Fail| SourceError::new(kind, &self.context, msg);
        if let Err(e) = self.stream.get_mut().write_all(&buf).await {
            return Err(fail(io_failure(&e)));
        }
        match read_value(&mut self.stream, 0).await {
            Ok(Value::Error(e)) => {
                let kind = if e.starts_with("NOAUTH") || e.starts_with("WRONGPASS") || e.starts_with("NOPERM") {
                    ErrorKind::Auth
                } else {
                    ErrorKind::Server
                };
                Err(SourceError::new(kind, &self.context, format!("{name}: {e}")))
            }
            Ok(v) => Ok(v),
            Err(f) => Err(SourceError::new(f.0, &self.context, f.1)),
        }
    }
}

async fn read_line(r: &mut BufReader<TcpStream>) -> Result<Vec<u8>, Fail> {
    let mut line = Vec::new();
    let n = (&mut *r).take(MAX_BULK as u64 + 2).read_until(b'\n', &mut line).await.map_err(|e| io_failure(&e))?;
    if n == 0 {
        return Err((ErrorKind::Protocol, "the server closed the connection".into()));
    }
    if !line.ends_with(b"\r\n") {
        return Err((ErrorKind::Protocol, "a reply line is not terminated by CRLF".into()));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn parse_len(s: &[u8]) -> Result<i64, Fail> {
    std::str::from_utf8(s)
        .ok()
        .and_then(|t| t.parse::<i64>().ok())
        .ok_or_else(|| (ErrorKind::Protocol, format!("bad length in reply: {}", String::from_utf8_lossy(s))))
}

/// The length of a bulk or array reply: `None` for RESP's null (a negative length), an error
/// beyond `max` (`kind` and `unit` name the reply and what it counts in that error).
fn parse_count(s: &[u8], max: usize, kind: &str, unit: &str) -> Result<Option<usize>, Fail> {
    let n = parse_len(s)?;
    if n < 0 {
        return Ok(None);
    }
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    if n > max {
        return Err((ErrorKind::Protocol, format!("{kind} reply of {n} {unit} is too large")));
    }
    Ok(Some(n))
}

fn read_value(
    r: &mut BufReader<TcpStream>,
    depth: usize,
) -> Pin<Box<dyn Future<Output = Result<Value, Fail>> + Send + '_>> {
    Box::pin(async move {
        if depth > MAX_DEPTH {
            return Err((ErrorKind::Protocol, "reply nested too deeply".into()));
        }
        let line = read_line(r).await?;
        let Some((&tag, rest)) = line.split_first() else {
            return Err((ErrorKind::Protocol, "empty reply line".into()));
        };
        match tag {
            b'+' => Ok(Value::Simple(String::from_utf8_lossy(rest).into_owned())),
            b'-' => Ok(Value::Error(String::from_utf8_lossy(rest).into_owned())),
            b':' => Ok(Value::Int(parse_len(rest)?)),
            b'$' => {
                let Some(n) = parse_count(rest, MAX_BULK, "bulk", "bytes")? else {
                    return Ok(Value::Nil);
                };
                let mut data = vec![0u8; n + 2];
                r.read_exact(&mut data).await.map_err(|e| io_failure(&e))?;
                if !data.ends_with(b"\r\n") {
                    return Err((ErrorKind::Protocol, "a bulk reply is not terminated by CRLF".into()));
                }
                data.truncate(n);
                Ok(Value::Bulk(data))
            }
            b'*' => {
                let Some(n) = parse_count(rest, MAX_ARRAY, "array", "elements")? else {
                    return Ok(Value::Nil);
                };
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    items.push(read_value(r, depth + 1).await?);
                }
                Ok(Value::Array(items))
            }
            other => Err((
                ErrorKind::Protocol,
                format!("not a Redis reply (starts with {:?}); is this a Redis server?", other as char),
            )),
        }
    })
}

/// What to measure.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    List { key: String },
    Stream { stream: String, group: String, include_pending: bool },
}

/// A validated Redis source.
#[derive(Clone)]
pub(crate) struct Config {
    addr: String,
    db: Option<u32>,
    user: Option<String>,
    password: Option<String>,
    target: Target,
}

/// Reads and checks a Redis spec.
pub(crate) fn parse(spec: &SourceSpec) -> Result<Config, FieldError> {
    let hp = parse_host_port(
        &spec.endpoint,
        "redis",
        &["rediss"],
        6379,
        "put the password in protected.password and the ACL user in settings.user",
    )?;
    let db = match hp.path.as_str() {
        "" => None,
        p => Some(p.parse::<u32>().map_err(|_| {
            FieldError::new("endpoint", format!("the path '/{p}' must be a database number, like redis://host:6379/0"))
        })?),
    };
    let s = Fields::settings(spec)?;
    s.only(SourceKind::Redis, &["key", "stream", "group", "user", "includePending"])?;
    let p = Fields::protected(spec)?;
    p.only(SourceKind::Redis, &["password"])?;
    let key = s.str_opt("key")?;
    let stream = s.str_opt("stream")?;
    let group = s.str_opt("group")?;
    let include_pending = s.bool_opt("includePending")?;
    let target = match (key, stream) {
        (Some(_), Some(_)) => {
            return Err(FieldError::new(
                "settings.stream",
                "give either settings.key (a list) or settings.stream with settings.group, not both",
            ))
        }
        (Some(_), None) => {
            let key = s.str_req("key", "the list's key")?;
            if group.is_some() {
                return Err(FieldError::new("settings.group", "only with settings.stream"));
            }
            if include_pending.is_some() {
                return Err(FieldError::new("settings.includePending", "only with settings.stream"));
            }
            Target::List { key: key.to_string() }
        }
        (None, Some(_)) => Target::Stream {
            stream: s.str_req("stream", "the stream's key")?.to_string(),
            group: s.str_req("group", "the consumer group whose lag is measured")?.to_string(),
            include_pending: include_pending.unwrap_or(false),
        },
        (None, None) => {
            return Err(FieldError::new(
                "settings.key",
                "required: settings.key (a list's length) or settings.stream + settings.group (a group's lag)",
            ))
        }
    };
    Ok(Config {
        addr: hp.addr,
        db,
        user: s.str_nonempty_opt("user")?.map(str::to_string),
        password: p.str_nonempty_opt("password")?.map(str::to_string),
        target,
    })
}

/// Samples one Redis list or stream group.
pub(crate) struct RedisSource {
    config: Config,
    timeout: Duration,
    describe: String,
    secrets: Vec<String>,
}

impl RedisSource {
    pub(crate) fn new(config: Config, timeout: Duration) -> Self {
        let db = config.db.map(|d| format!("/{d}")).unwrap_or_default();
        let what = match &config.target {
            Target::List { key } => format!("list {key}"),
            Target::Stream { stream, group, include_pending } => {
                let extra = if *include_pending { " (lag + pending)" } else { "" };
                format!("stream {stream} group {group}{extra}")
            }
        };
        let describe = format!("redis {}{db} {what}", config.addr);
        let secrets = config.password.iter().cloned().collect();
        Self { config, timeout, describe, secrets }
    }

    async fn sample_now(&self) -> Result<Option<f64>, SourceError> {
        let c = &self.config;
        let mut conn = Connection::connect(&c.addr).await?;
        if let Some(pw) = &c.password {
            let mut args: Vec<&str> = vec!["AUTH"];
            if let Some(u) = &c.user {
                args.push(u);
            }
            args.push(pw);
            conn.command(&args).await.map_err(|e| match e.kind() {
                ErrorKind::Server | ErrorKind::Auth => {
                    SourceError::new(ErrorKind::Auth, "", format!("authentication failed: {}", e.message()))
                }
                _ => e,
            })?;
        }
        if let Some(db) = c.db {
            conn.command(&["SELECT", &db.to_string()]).await?;
        }
        match &c.target {
            Target::List { key } => match conn.command(&["LLEN", key]).await? {
                Value::Int(n) => Ok(Some(n as f64)),
                other => Err(unexpected("LLEN", &other)),
            },
            Target::Stream { stream, group, include_pending } => {
                let (lag, pending) = group_lag(&mut conn, stream, group).await?;
                Ok(Some(if *include_pending { lag + pending } else { lag } as f64))
            }
        }
    }
}

fn unexpected(cmd: &str, v: &Value) -> SourceError {
    let shape = match v {
        Value::Simple(_) => "a simple string",
        Value::Error(_) => "an error",
        Value::Int(_) => "an integer",
        Value::Bulk(_) => "a bulk string",
        Value::Nil => "nil",
        Value::Array(_) => "an array",
    };
    SourceError::new(ErrorKind::Protocol, "", format!("{cmd} answered {shape}, not what Redis answers"))
}

/// The group's lag and pending count.
async fn group_lag(conn: &mut Connection, stream: &str, group: &str) -> Result<(u64, u64), SourceError> {
    let groups = match conn.command(&["XINFO", "GROUPS", stream]).await {
        Ok(Value::Array(g)) => g,
        Ok(other) => return Err(unexpected("XINFO GROUPS", &other)),
        Err(e) if e.message().contains("no such key") => {
            return Err(SourceError::new(ErrorKind::NotFound, "", format!("stream {stream} does not exist")))
        }
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for g in &groups {
        let Value::Array(kv) = g else { return Err(unexpected("XINFO GROUPS", g)) };
        let field = |name: &str| {
            kv.chunks(2)
                .find(|pair| pair.first().and_then(Value::as_text).as_deref() == Some(name))
                .and_then(|pair| pair.get(1))
        };
        let this = field("name").and_then(Value::as_text).unwrap_or_default();
        if this != group {
            names.push(this);
            continue;
        }
        let pending = match field("pending") {
            Some(Value::Int(n)) => (*n).max(0) as u64,
            _ => 0,
        };
        let lag = match field("lag") {
            Some(Value::Int(n)) => (*n).max(0) as u64,
            // nil (Redis cannot tell after some deletions) or absent (Redis < 7): count.
            _ => {
                let last = field("last-delivered-id").and_then(Value::as_text).unwrap_or_else(|| "0-0".into());
                count_after(conn, stream, &last).await?
            }
        };
        return Ok((lag, pending));
    }
    let known = if names.is_empty() { "it has none".to_string() } else { format!("it has {}", names.join(", ")) };
    Err(SourceError::new(ErrorKind::NotFound, "", format!("group {group} not found on stream {stream} ({known})")))
}

/// The id right after `id` (`ms-seq` → `ms-(seq+1)`), for an exclusive `XRANGE` start that
/// works on every Redis version.
fn next_id(id: &str) -> Option<String> {
    let (ms, seq) = id.split_once('-')?;
    let ms: u64 = ms.parse().ok()?;
    let seq: u64 = seq.parse().ok()?;
    Some(match seq.checked_add(1) {
        Some(s) => format!("{ms}-{s}"),
        None => format!("{}-0", ms.checked_add(1)?),
    })
}

/// Counts the entries after `last` page by page (bounded by the sample's timeout).
async fn count_after(conn: &mut Connection, stream: &str, last: &str) -> Result<u64, SourceError> {
    let mut count = 0u64;
    let mut start = match next_id(last) {
        Some(s) => s,
        None => return Ok(0),
    };
    loop {
        let page = match conn.command(&["XRANGE", stream, &start, "+", "COUNT", &XRANGE_PAGE.to_string()]).await? {
            Value::Array(a) => a,
            other => return Err(unexpected("XRANGE", &other)),
        };
        count += page.len() as u64;
        if page.len() < XRANGE_PAGE {
            return Ok(count);
        }
        let last_id = match page.last() {
            Some(Value::Array(entry)) => entry.first().and_then(Value::as_text),
            _ => None,
        };
        match last_id.as_deref().and_then(next_id) {
            Some(n) => start = n,
            None => return Ok(count),
        }
    }
}

bounded_metric_source!(RedisSource, secrets);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(settings: serde_json::Value) -> SourceSpec {
        SourceSpec { kind: SourceKind::Redis, endpoint: "127.0.0.1:6379".into(), settings, protected: json!(null) }
    }

    #[test]
    fn settings_are_checked_with_field_paths() {
        assert!(parse(&spec(json!({"key": "jobs"}))).is_ok());
        assert!(parse(&spec(json!({"stream": "s", "group": "g", "includePending": true}))).is_ok());
        let e = |v| parse(&spec(v)).err().map(|e: FieldError| e.field).unwrap_or_default();
        assert_eq!(e(json!({})), "settings.key");
        assert_eq!(e(json!({"stream": "s"})), "settings.group");
        assert_eq!(e(json!({"key": "k", "stream": "s", "group": "g"})), "settings.stream");
        assert_eq!(e(json!({"key": ""})), "settings.key");
        assert_eq!(e(json!({"key": 5})), "settings.key");
        assert_eq!(e(json!({"kye": "jobs"})), "settings.kye");
        assert_eq!(e(json!({"key": "k", "includePending": true})), "settings.includePending");
        let mut s = spec(json!({"key": "k"}));
        s.protected = json!({"pasword": "x"});
        assert_eq!(parse(&s).err().unwrap().field, "protected.pasword");
        s.protected = json!({"password": 7});
        assert_eq!(parse(&s).err().unwrap().field, "protected.password");
        s.protected = json!(null);
        s.endpoint = "redis://h:1/x".into();
        assert_eq!(parse(&s).err().unwrap().field, "endpoint");
    }

    #[test]
    fn next_id_steps_past_the_last_entry() {
        assert_eq!(next_id("5-1").as_deref(), Some("5-2"));
        assert_eq!(next_id(&format!("5-{}", u64::MAX)).as_deref(), Some("6-0"));
        assert_eq!(next_id("bad"), None);
    }
}
