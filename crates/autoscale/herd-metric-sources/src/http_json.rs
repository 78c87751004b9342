//! HTTP JSON: `GET` an endpoint and take the number at an RFC 6901 JSON pointer.
//!
//! This is the escape hatch for every queue herd does not speak natively (RabbitMQ's
//! management API, SQS-compatible gateways, a worker's own `/stats`). The value at the
//! pointer may be a JSON number or a string holding one (`"42"`); `null` is "no data". A
//! missing member, a non-numeric value, a non-2xx status or a body that is not JSON is an
//! error naming exactly that. Auth headers go in `protected.headers`; they are sent marked
//! sensitive and never shown. A query string in the endpoint is shown as `?…` in case it
//! carries an API key.

use std::time::Duration;

use herd_model::FieldError;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use serde_json::Value;

use crate::error::{chain_text, find_io_error, io_failure};
use crate::spec::{display_url, parse_http_url, Fields};
use crate::{ErrorKind, SourceError, SourceKind, SourceSpec};

/// The largest response body read.
const MAX_BODY: usize = 8 << 20;

/// Parses `protected.headers` into a header map, every value marked sensitive.
pub(crate) fn parse_headers(p: &Fields<'_>) -> Result<(HeaderMap, Vec<String>), FieldError> {
    let mut map = HeaderMap::new();
    let mut secrets = Vec::new();
    for (name, value) in p.string_map("headers")? {
        let field = format!("protected.headers.{name}");
        let hn = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| FieldError::new(&field, "is not a valid HTTP header name"))?;
        let mut hv = HeaderValue::from_str(&value)
            .map_err(|_| FieldError::new(&field, "is not a valid HTTP header value (printable ASCII only)"))?;
        hv.set_sensitive(true);
        map.insert(hn, hv);
        // The whole value and, for "Bearer xyz"/"Basic xyz", the credential alone.
        if let Some((_, cred)) = value.split_once(' ') {
            if cred.trim().len() >= 4 {
                secrets.push(cred.trim().to_string());
            }
        }
        secrets.push(value);
    }
    Ok((map, secrets))
}

/// A reqwest client for one source: few redirects. Its own timeouts are a backstop only
/// (twice the sample's): the sample's deadline, applied around the whole request and the
/// reading of the body, is what fires and what the error reports.
pub(crate) fn client(timeout: Duration, context: &str) -> Result<reqwest::Client, SourceError> {
    reqwest::Client::builder()
        .timeout(timeout.saturating_mul(2))
        .connect_timeout(timeout.saturating_mul(2))
        .redirect(reqwest::redirect::Policy::limited(5))
        .user_agent(concat!("herd-metric-sources/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            SourceError::new(ErrorKind::Config, context, format!("cannot make an HTTP client: {}", chain_text(&e)))
        })
}

/// A reqwest error as a kind and a short message (never the URL, which may hold a key).
pub(crate) fn http_failure(e: reqwest::Error) -> SourceError {
    let e = e.without_url();
    if e.is_timeout() {
        return SourceError::new(ErrorKind::Timeout, "", "the HTTP request timed out");
    }
    if let Some(io) = find_io_error(&e) {
        let (kind, msg) = io_failure(io);
        return SourceError::new(kind, "", msg);
    }
    let kind = if e.is_connect() { ErrorKind::Unreachable } else { ErrorKind::Protocol };
    SourceError::new(kind, "", chain_text(&e))
}

/// GETs `url` and returns the status and the body (at most [`MAX_BODY`] bytes).
pub(crate) async fn get(
    client: &reqwest::Client,
    url: Url,
    headers: &HeaderMap,
) -> Result<(StatusCode, Vec<u8>), SourceError> {
    let mut resp = client.get(url).headers(headers.clone()).send().await.map_err(http_failure)?;
    let status = resp.status();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(http_failure)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(SourceError::new(
                ErrorKind::Protocol,
                "",
                format!("the response is larger than {} MiB", MAX_BODY >> 20),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, body))
}

/// `HTTP 500 Internal Server Error: <start of the body>`.
pub(crate) fn status_error(status: StatusCode, body: &[u8]) -> SourceError {
    let reason = status.canonical_reason().unwrap_or("");
    let text = String::from_utf8_lossy(body);
    let excerpt = crate::spec::shorten(&text, 200);
    let msg = if excerpt.is_empty() {
        format!("HTTP {} {reason}", status.as_u16())
    } else {
        format!("HTTP {} {reason}: {excerpt}", status.as_u16())
    };
    let kind = match status.as_u16() {
        401 | 403 => ErrorKind::Auth,
        404 => ErrorKind::NotFound,
        _ => ErrorKind::Server,
    };
    SourceError::new(kind, "", msg)
}

/// What a JSON value is, for messages.
pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Follows an RFC 6901 pointer, saying where it stopped when it cannot.
pub(crate) fn at_pointer<'a>(doc: &'a Value, pointer: &str) -> Result<&'a Value, String> {
    if pointer.is_empty() {
        return Ok(doc);
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(format!("pointer {pointer} must start with '/'"));
    };
    let mut cur = doc;
    let mut here = String::new();
    for raw in rest.split('/') {
        let token = raw.replace("~1", "/").replace("~0", "~");
        let place = if here.is_empty() { "the document".to_string() } else { here.clone() };
        cur = match cur {
            Value::Object(m) => m
                .get(&token)
                .ok_or_else(|| format!("pointer {pointer} not found: {place} has no member \"{token}\""))?,
            Value::Array(a) => {
                let idx = if token == "0" || (!token.starts_with('0') && token.bytes().all(|b| b.is_ascii_digit())) {
                    token.parse::<usize>().ok()
                } else {
                    None
                };
                let idx = idx.ok_or_else(|| {
                    format!("pointer {pointer} not found: {place} is an array and \"{token}\" is not an index")
                })?;
                a.get(idx).ok_or_else(|| {
                    format!("pointer {pointer} not found: {place} has {} elements, no index {idx}", a.len())
                })?
            }
            other => {
                return Err(format!(
                    "pointer {pointer} not found: {place} is {}, not an object or array",
                    json_type(other)
                ))
            }
        };
        here.push('/');
        here.push_str(raw);
    }
    Ok(cur)
}

/// A JSON number, or a string holding one; `null` is no data.
pub(crate) fn number(v: &Value, what: &str) -> Result<Option<f64>, SourceError> {
    let bad = |m: String| SourceError::new(ErrorKind::NotANumber, "", m);
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n.as_f64().map(Some).ok_or_else(|| bad(format!("{what} is not representable as a number"))),
        Value::String(s) => match s.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Some(f)),
            _ => Err(bad(format!("{what} is the string \"{}\", not a number", crate::spec::shorten(s, 40)))),
        },
        other => Err(bad(format!("{what} is {}, not a number", json_type(other)))),
    }
}

/// A validated HTTP JSON source.
#[derive(Clone)]
pub(crate) struct Config {
    url: Url,
    pointer: String,
    headers: HeaderMap,
    secrets: Vec<String>,
}

/// Reads and checks an HTTP JSON spec.
pub(crate) fn parse(spec: &SourceSpec) -> Result<Config, FieldError> {
    let url = parse_http_url(&spec.endpoint, "put an Authorization header in protected.headers")?;
    let s = Fields::settings(spec)?;
    s.only(SourceKind::HttpJson, &["pointer"])?;
    let pointer = s
        .str_opt("pointer")?
        .ok_or_else(|| FieldError::new("settings.pointer", "required: a JSON pointer such as /queue/depth"))?;
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(FieldError::new(
            "settings.pointer",
            format!("'{pointer}' is not a JSON pointer (RFC 6901): it must start with '/', like /queue/depth"),
        ));
    }
    let p = Fields::protected(spec)?;
    p.only(SourceKind::HttpJson, &["headers"])?;
    let (headers, secrets) = parse_headers(&p)?;
    Ok(Config { url, pointer: pointer.to_string(), headers, secrets })
}

/// Samples one HTTP JSON endpoint.
pub(crate) struct HttpJsonSource {
    config: Config,
    client: reqwest::Client,
    timeout: Duration,
    describe: String,
}

impl HttpJsonSource {
    pub(crate) fn new(config: Config, timeout: Duration) -> Result<Self, SourceError> {
        let pointer = if config.pointer.is_empty() { "(the whole document)" } else { &config.pointer };
        let describe = format!("http-json {} pointer {pointer}", display_url(&config.url));
        let client = client(timeout, &describe)?;
        Ok(Self { config, client, timeout, describe })
    }

    async fn sample_now(&self) -> Result<Option<f64>, SourceError> {
        let (status, body) = get(&self.client, self.config.url.clone(), &self.config.headers).await?;
        if !status.is_success() {
            return Err(status_error(status, &body));
        }
        let doc: Value = serde_json::from_slice(&body)
            .map_err(|e| SourceError::new(ErrorKind::Protocol, "", format!("the response is not JSON: {e}")))?;
        let v = at_pointer(&doc, &self.config.pointer).map_err(|m| SourceError::new(ErrorKind::NotFound, "", m))?;
        let what = if self.config.pointer.is_empty() {
            "the document".to_string()
        } else {
            format!("the value at {}", self.config.pointer)
        };
        number(v, &what)
    }
}

bounded_metric_source!(HttpJsonSource, config.secrets);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointers_follow_rfc6901() {
        let doc = json!({"queue": {"depth": 7, "a/b": 1, "m~n": 2}, "list": [10, 20], "s": "3.5"});
        assert_eq!(at_pointer(&doc, "/queue/depth").unwrap(), &json!(7));
        assert_eq!(at_pointer(&doc, "/queue/a~1b").unwrap(), &json!(1));
        assert_eq!(at_pointer(&doc, "/queue/m~0n").unwrap(), &json!(2));
        assert_eq!(at_pointer(&doc, "/list/1").unwrap(), &json!(20));
        assert_eq!(at_pointer(&doc, "").unwrap(), &doc);
        let e = at_pointer(&doc, "/queue/size").unwrap_err();
        assert!(e.contains("pointer /queue/size not found") && e.contains("/queue has no member \"size\""), "{e}");
        let e = at_pointer(&doc, "/list/2").unwrap_err();
        assert!(e.contains("2 elements"), "{e}");
        assert!(at_pointer(&doc, "/list/01").is_err());
        let e = at_pointer(&doc, "/s/x").unwrap_err();
        assert!(e.contains("/s is a string"), "{e}");
    }

    #[test]
    fn numbers_and_numeric_strings() {
        assert_eq!(number(&json!(4), "v").unwrap(), Some(4.0));
        assert_eq!(number(&json!(" 2.5 "), "v").unwrap(), Some(2.5));
        assert_eq!(number(&json!(null), "v").unwrap(), None);
        assert_eq!(number(&json!("NaN"), "v").unwrap_err().kind(), ErrorKind::NotANumber);
        assert!(number(&json!({"a": 1}), "v").unwrap_err().message().contains("an object"));
        assert!(number(&json!(true), "v").is_err());
    }

    #[test]
    fn spec_fields() {
        let spec = |endpoint: &str, settings, protected| SourceSpec {
            kind: SourceKind::HttpJson,
            endpoint: endpoint.into(),
            settings,
            protected,
        };
        assert!(parse(&spec(
            "http://h/x",
            json!({"pointer": "/a"}),
            json!({"headers": {"Authorization": "Bearer t"}})
        ))
        .is_ok());
        let field = |e: &str, s, p| parse(&spec(e, s, p)).err().map(|e: FieldError| e.field).unwrap_or_default();
        assert_eq!(field("http://h/x", json!({}), json!(null)), "settings.pointer");
        assert_eq!(field("http://h/x", json!({"pointer": "a/b"}), json!(null)), "settings.pointer");
        assert_eq!(field("ftp://h/x", json!({"pointer": "/a"}), json!(null)), "endpoint");
        assert_eq!(field("http://u:p@h/x", json!({"pointer": "/a"}), json!(null)), "endpoint");
        assert_eq!(
            field("http://h/x", json!({"pointer": "/a"}), json!({"headers": {"Bad Name": "v"}})),
            "protected.headers.Bad Name"
        );
        let e = parse(&spec("http://h/x", json!({"pointer": "/a"}), json!({"headers": {"X": "bad\nvalue-secret"}})))
            .err()
            .unwrap();
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
