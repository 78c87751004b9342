//! The Azure-shaped description of a source (kind, endpoint, public settings, protected
//! settings) and the small helpers every source uses to read it with field-path errors.

use std::fmt;
use std::str::FromStr;

use herd_model::FieldError;
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Which kind of server a source samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    /// Redis: a list's length or a stream consumer group's lag.
    Redis,
    /// NATS JetStream: a consumer's pending messages.
    NatsJetstream,
    /// PostgreSQL: a user-given `SELECT count(*) ...`.
    Postgresql,
    /// Any HTTP endpoint answering JSON: the number at a JSON pointer.
    HttpJson,
    /// RabbitMQ (not supported yet: `validate` refuses it).
    Rabbitmq,
    /// Prometheus: an instant PromQL query that yields one value.
    Prometheus,
}

impl SourceKind {
    /// Every kind, in the order they are documented.
    pub const ALL: [SourceKind; 6] = [
        SourceKind::Redis,
        SourceKind::NatsJetstream,
        SourceKind::Postgresql,
        SourceKind::HttpJson,
        SourceKind::Rabbitmq,
        SourceKind::Prometheus,
    ];

    /// The name used on the command line and in JSON: `redis`, `nats-jetstream`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Redis => "redis",
            SourceKind::NatsJetstream => "nats-jetstream",
            SourceKind::Postgresql => "postgresql",
            SourceKind::HttpJson => "http-json",
            SourceKind::Rabbitmq => "rabbitmq",
            SourceKind::Prometheus => "prometheus",
        }
    }

    /// The names of every kind.
    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|k| k.as_str()).collect()
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SourceKind {
    type Err = FieldError;

    /// Case-insensitive; the error lists every allowed name.
    fn from_str(s: &str) -> Result<Self, FieldError> {
        let lower = s.trim().to_ascii_lowercase();
        Self::ALL.into_iter().find(|k| k.as_str() == lower).ok_or_else(|| FieldError::one_of("kind", s, &Self::names()))
    }
}

impl Serialize for SourceKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SourceKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e: FieldError| serde::de::Error::custom(e.message))
    }
}

/// A metric source as the user wrote it, Azure-extension style: public `settings` that are
/// shown back, and `protected` settings (passwords, tokens, auth headers) that are never
/// returned, logged or put in an error. `Debug` prints the protected keys, not their values.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceSpec {
    pub kind: SourceKind,
    pub endpoint: String,
    #[serde(default)]
    pub settings: Value,
    #[serde(default)]
    pub protected: Value,
}

impl fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let protected: Vec<&str> = match &self.protected {
            Value::Object(m) => m.keys().map(String::as_str).collect(),
            _ => Vec::new(),
        };
        f.debug_struct("SourceSpec")
            .field("kind", &self.kind)
            .field("endpoint", &redact_url_text(&self.endpoint))
            .field("settings", &self.settings)
            .field("protected_keys", &protected)
            .finish()
    }
}

/// An endpoint as text that is safe to show: any `user:password@` is replaced by `***@`.
/// (Endpoints with credentials are refused by `validate`; this is for the error saying so.)
pub(crate) fn redact_url_text(endpoint: &str) -> String {
    let Some(scheme_end) = endpoint.find("://") else {
        return match endpoint.rfind('@') {
            Some(at) => format!("***@{}", &endpoint[at + 1..]),
            None => endpoint.to_string(),
        };
    };
    let rest = &endpoint[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***@{}", &endpoint[..scheme_end + 3], &rest[at + 1..]),
        None => endpoint.to_string(),
    }
}

/// Read access to `settings` or `protected` with errors that name the field path.
pub(crate) struct Fields<'a> {
    prefix: &'static str,
    map: Option<&'a Map<String, Value>>,
    /// Protected values are never echoed in errors.
    secret: bool,
}

impl<'a> Fields<'a> {
    pub(crate) fn settings(spec: &'a SourceSpec) -> Result<Self, FieldError> {
        Self::new("settings", &spec.settings, false)
    }

    pub(crate) fn protected(spec: &'a SourceSpec) -> Result<Self, FieldError> {
        Self::new("protected", &spec.protected, true)
    }

    fn new(prefix: &'static str, v: &'a Value, secret: bool) -> Result<Self, FieldError> {
        match v {
            Value::Null => Ok(Self { prefix, map: None, secret }),
            Value::Object(m) => Ok(Self { prefix, map: Some(m), secret }),
            _ => Err(FieldError::new(prefix, "must be a JSON object")),
        }
    }

    pub(crate) fn path(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    /// Refuses any key not in `allowed` (a typo must not be silently ignored).
    pub(crate) fn only(&self, kind: SourceKind, allowed: &[&str]) -> Result<(), FieldError> {
        if let Some(m) = self.map {
            for k in m.keys() {
                if !allowed.contains(&k.as_str()) {
                    let list = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
                    return Err(FieldError::new(
                        self.path(k),
                        format!(
                            "unknown {} for {kind}; allowed: {list}",
                            if self.secret { "protected setting" } else { "setting" }
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.and_then(|m| m.get(name)).filter(|v| !v.is_null())
    }

    pub(crate) fn str_opt(&self, name: &str) -> Result<Option<&'a str>, FieldError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(FieldError::new(self.path(name), "must be a string")),
        }
    }

    /// A required, non-empty string.
    pub(crate) fn str_req(&self, name: &str, what: &str) -> Result<&'a str, FieldError> {
        match self.str_opt(name)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            Some(_) => Err(FieldError::new(self.path(name), format!("must not be empty ({what})"))),
            None => Err(FieldError::new(self.path(name), format!("required: {what}"))),
        }
    }

    /// An optional non-empty string (a secret may not be empty either: that is a mistake).
    pub(crate) fn str_nonempty_opt(&self, name: &str) -> Result<Option<&'a str>, FieldError> {
        match self.str_opt(name)? {
            Some("") => Err(FieldError::new(self.path(name), "must not be empty")),
            other => Ok(other),
        }
    }

    pub(crate) fn bool_opt(&self, name: &str) -> Result<Option<bool>, FieldError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            // A protected value is never echoed, even a wrong one.
            Some(_) if self.secret => Err(FieldError::new(self.path(name), "must be true or false")),
            Some(other) => Err(FieldError::new(self.path(name), format!("must be true or false, not {other}"))),
        }
    }

    /// An object of string values (HTTP headers).
    pub(crate) fn string_map(&self, name: &str) -> Result<Vec<(String, String)>, FieldError> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    _ => Err(FieldError::new(format!("{}.{k}", self.path(name)), "must be a string")),
                })
                .collect(),
            Some(_) => Err(FieldError::new(self.path(name), "must be a JSON object of strings")),
        }
    }
}

/// A `host:port` endpoint (Redis, NATS), with an optional path after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostPort {
    /// As `TcpStream::connect` wants it: `host:port`, `[::1]:port`.
    pub(crate) addr: String,
    /// The path without its leading `/` (Redis: the database number).
    pub(crate) path: String,
}

/// Connects to a line-protocol source's endpoint (Redis, NATS), parsed as [`parse_host_port`]
/// does: a bad endpoint is a `Config` error of `scheme`, a failed connect is named
/// `scheme host:port` (the context every later error of the connection carries). Returns the
/// stream, without Nagle's delay, and that context.
pub(crate) async fn connect_host_port(
    endpoint: &str,
    scheme: &str,
    tls_schemes: &[&str],
    default_port: u16,
    credentials_go: &str,
) -> Result<(tokio::net::TcpStream, String), crate::SourceError> {
    let hp = parse_host_port(endpoint, scheme, tls_schemes, default_port, credentials_go)
        .map_err(|e| crate::SourceError::new(crate::ErrorKind::Config, scheme, e.to_string()))?;
    let context = format!("{scheme} {}", hp.addr);
    let tcp = tokio::net::TcpStream::connect(&hp.addr).await.map_err(|e| {
        let (kind, msg) = crate::error::io_failure(&e);
        crate::SourceError::new(kind, &context, msg)
    })?;
    let _ = tcp.set_nodelay(true);
    Ok((tcp, context))
}

/// Parses `scheme://host[:port][/path]` or a bare `host[:port]`. `tls_schemes` are known but
/// refused; credentials in the endpoint are refused with a pointer to where they belong.
pub(crate) fn parse_host_port(
    endpoint: &str,
    scheme: &str,
    tls_schemes: &[&str],
    default_port: u16,
    credentials_go: &str,
) -> Result<HostPort, FieldError> {
    let e = endpoint.trim();
    if e.is_empty() {
        return Err(FieldError::new("endpoint", format!("required: {scheme}://host:port")));
    }
    let full = if e.contains("://") { e.to_string() } else { format!("{scheme}://{e}") };
    let url = Url::parse(&full).map_err(|err| {
        FieldError::new("endpoint", format!("'{}' is not {scheme}://host:port: {err}", redact_url_text(e)))
    })?;
    if tls_schemes.contains(&url.scheme()) {
        return Err(FieldError::not_supported("endpoint", &format!("TLS ({}://); use {scheme}://", url.scheme())));
    }
    if url.scheme() != scheme {
        return Err(FieldError::one_of("endpoint", &format!("{}://", url.scheme()), &[&format!("{scheme}://")]));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FieldError::new(
            "endpoint",
            format!("credentials do not belong in the endpoint, which is shown and logged: {credentials_go}"),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(FieldError::new("endpoint", "must not have a ?query or #fragment; use settings"));
    }
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| {
        FieldError::new("endpoint", format!("'{}' has no host; expected {scheme}://host:port", redact_url_text(e)))
    })?;
    let port = url.port().unwrap_or(default_port);
    Ok(HostPort { addr: format!("{host}:{port}"), path: url.path().trim_start_matches('/').to_string() })
}

/// Parses an `http://` or `https://` URL with no credentials in it.
pub(crate) fn parse_http_url(endpoint: &str, credentials_go: &str) -> Result<Url, FieldError> {
    let e = endpoint.trim();
    if e.is_empty() {
        return Err(FieldError::new("endpoint", "required: an http:// or https:// URL"));
    }
    let url = Url::parse(e)
        .map_err(|err| FieldError::new("endpoint", format!("'{}' is not an http(s) URL: {err}", redact_url_text(e))))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FieldError::one_of("endpoint", &format!("{}://", url.scheme()), &["http://", "https://"]));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FieldError::new(
            "endpoint",
            format!("credentials do not belong in the endpoint, which is shown and logged: {credentials_go}"),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(FieldError::new("endpoint", "has no host"));
    }
    Ok(url)
}

/// A URL for showing: scheme, host, port and path; a query string (which may carry an API
/// key) is shown as `?…`.
pub(crate) fn display_url(url: &Url) -> String {
    let mut u = url.clone();
    let had_query = u.query().is_some();
    u.set_query(None);
    u.set_fragment(None);
    let mut s = u.to_string();
    if had_query {
        s.push_str("?…");
    }
    s
}

/// Shortens text for a description: at most `max` characters, with `…` when cut.
pub(crate) fn shorten(s: &str, max: usize) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let cut: String = one_line.chars().take(max).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_case_insensitively_and_round_trip() {
        for k in SourceKind::ALL {
            assert_eq!(k.as_str().parse::<SourceKind>().unwrap(), k);
            assert_eq!(k.as_str().to_uppercase().parse::<SourceKind>().unwrap(), k);
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(serde_json::from_str::<SourceKind>(&json).unwrap(), k);
        }
        let e = "kafka".parse::<SourceKind>().unwrap_err();
        assert_eq!(e.field, "kind");
        assert!(e.message.contains("nats-jetstream") && e.message.contains("http-json"), "{e}");
    }

    #[test]
    fn url_credentials_are_redacted() {
        assert_eq!(redact_url_text("redis://:pw@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact_url_text("postgresql://u:pw@h/db"), "postgresql://***@h/db");
        assert_eq!(redact_url_text("u:pw@h:1"), "***@h:1");
        assert_eq!(redact_url_text("http://h/a@b"), "http://h/a@b");
    }

    #[test]
    fn host_port_forms() {
        let hp = parse_host_port("redis://127.0.0.1:7000/2", "redis", &["rediss"], 6379, "x").unwrap();
        assert_eq!(hp, HostPort { addr: "127.0.0.1:7000".into(), path: "2".into() });
        let hp = parse_host_port("localhost", "redis", &["rediss"], 6379, "x").unwrap();
        assert_eq!(hp.addr, "localhost:6379");
        let hp = parse_host_port("[::1]:7", "redis", &[], 6379, "x").unwrap();
        assert_eq!(hp.addr, "[::1]:7");
        let e = parse_host_port("redis://:secretpw@h:1", "redis", &[], 6379, "use protected.password").unwrap_err();
        assert!(!e.to_string().contains("secretpw"), "{e}");
        assert!(e.message.contains("protected.password"), "{e}");
        let e = parse_host_port("rediss://h:1", "redis", &["rediss"], 6379, "x").unwrap_err();
        assert!(e.message.contains("not supported yet"), "{e}");
        let e = parse_host_port("http://h:1", "redis", &[], 6379, "x").unwrap_err();
        assert!(e.message.contains("redis://"), "{e}");
    }

    #[test]
    fn spec_debug_hides_protected_values() {
        let spec = SourceSpec {
            kind: SourceKind::Redis,
            endpoint: "redis://h:1".into(),
            settings: serde_json::json!({"key": "jobs"}),
            protected: serde_json::json!({"password": "hunter2"}),
        };
        let d = format!("{spec:?}");
        assert!(d.contains("password") && !d.contains("hunter2"), "{d}");
    }

    #[test]
    fn display_url_hides_query() {
        let u = Url::parse("http://h:8/a/b?api_key=zzz").unwrap();
        assert_eq!(display_url(&u), "http://h:8/a/b?…");
    }
}
