//! Request guards that run before routing, and the JSON error body for answers axum makes itself.
//!
//! Why: a request must never take the server down, and every failure must carry the documented
//! error body. serde_json stops at 128 levels, but much of what follows (typed
//! deserialisation from a `Value`, patching, cloning, dropping) recurses without a limit, so a
//! JSON body is checked for nesting depth here, by a flat scan, before anything parses it. The
//! same layer answers over-long URIs with 414, and rewrites the plain-text or empty bodies of
//! axum's own rejections (malformed JSON, a missing content type, a body over the limit, an
//! unknown route or method) into the `{"error": {...}}` body every handler uses.

use crate::error::{ErrorBody, ErrorDetail};
use axum::{
    body::{Body, Bytes},
    extract::Request,
    http::{header, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    Json,
};

/// The deepest JSON nesting a request body may have (objects and lists).
pub const MAX_JSON_DEPTH: usize = 64;
/// The largest JSON request body, in bytes (axum's default limit, stated once here).
pub const MAX_JSON_BODY: usize = 2 << 20;
/// The longest path and query a request may have, in bytes.
pub const MAX_URI_LEN: usize = 8 << 10;

fn error(status: StatusCode, code: &str, message: String, target: Option<String>) -> Response {
    (status, Json(ErrorBody { error: ErrorDetail { code: code.into(), message, target } })).into_response()
}

fn is_json(ct: Option<&HeaderValue>) -> bool {
    ct.and_then(|v| v.to_str().ok()).is_some_and(|v| {
        let mime = v.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
    })
}

/// Where a body nests deeper than `max`: the path to the first container past the limit,
/// shortened to its first segments. A flat scan: it never recurses, whatever the input.
pub fn too_deep(body: &[u8], max: usize) -> Option<String> {
    enum Seg {
        Key(String),
        Index(usize),
    }
    let mut stack: Vec<Seg> = Vec::new();
    let mut pending_key: Option<String> = None;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < body.len() && body[i] != b'"' {
                    if body[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                // A string directly inside an object, before ':', is a key.
                if matches!(stack.last(), Some(Seg::Key(_))) {
                    let mut j = i + 1;
                    while j < body.len() && body[j].is_ascii_whitespace() {
                        j += 1;
                    }
                    if j < body.len() && body[j] == b':' {
                        let end = i.min(body.len());
                        pending_key = Some(String::from_utf8_lossy(&body[start..end]).into_owned());
                    }
                }
            }
            open @ (b'{' | b'[') => {
                // An object parent records the key this container sits under.
                if let Some(Seg::Key(k)) = stack.last_mut() {
                    *k = pending_key.take().unwrap_or_default();
                }
                if stack.len() >= max {
                    let mut shown = String::new();
                    for seg in stack.iter().take(8) {
                        match seg {
                            Seg::Key(k) if k.is_empty() => {}
                            Seg::Key(k) => {
                                if !shown.is_empty() {
                                    shown.push('.');
                                }
                                shown.push_str(k);
                            }
                            Seg::Index(n) => shown.push_str(&format!("[{n}]")),
                        }
                    }
                    if stack.len() > 8 {
                        shown.push_str("...");
                    }
                    return Some(shown);
                }
                stack.push(if open == b'{' { Seg::Key(String::new()) } else { Seg::Index(0) });
            }
            b'}' | b']' => {
                stack.pop();
            }
            b',' => {
                if let Some(Seg::Index(n)) = stack.last_mut() {
                    *n += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// How much of an oversized body is read and thrown away before the 413 is sent, and for how
/// long. Closing a socket with unread bytes in it makes the kernel send a reset, and a reset
/// makes the client's kernel drop the answer it has not read yet: a client still writing its
/// body would see "connection reset" instead of the 413. Draining a bounded amount first (a
/// "lingering close", as web servers do) lets every client near the limit read the answer; a
/// body past both bounds is cut off as before.
const DRAIN_BYTES: usize = 16 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// The body, if it is at most `limit` bytes. Otherwise it is drained (within [`DRAIN_BYTES`]
/// and [`DRAIN_TIME`]) and `Err` is returned.
async fn read_limited(body: Body, limit: usize) -> Result<Bytes, ()> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { return Err(()) };
        if buf.len() + chunk.len() > limit {
            let mut drained = buf.len() + chunk.len();
            let drain = async {
                while drained < DRAIN_BYTES {
                    match stream.next().await {
                        Some(Ok(c)) => drained += c.len(),
                        _ => break,
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
            return Err(());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// Checks URI length and JSON nesting before routing; gives axum's own error answers the JSON body.
pub async fn guard(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI_LEN {
        return error(
            StatusCode::URI_TOO_LONG,
            "UriTooLong",
            format!("the request path and query are {uri_len} bytes; the limit is {MAX_URI_LEN}"),
            None,
        );
    }
    if let Some(e) = check_path_names(&path) {
        return crate::ApiError::Invalid(e).into_response();
    }
    let req = if is_json(req.headers().get(header::CONTENT_TYPE)) {
        let (parts, body) = req.into_parts();
        let bytes: Bytes = match read_limited(body, MAX_JSON_BODY).await {
            Ok(b) => b,
            Err(()) => {
                let mut r = error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestEntityTooLarge",
                    format!("the request body is larger than {MAX_JSON_BODY} bytes"),
                    None,
                );
                // Whatever of the body was not drained stays unread: the connection cannot
                // carry another request.
                r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                return r;
            }
        };
        if let Some(at) = too_deep(&bytes, MAX_JSON_DEPTH) {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContent",
                format!("the JSON body nests deeper than {MAX_JSON_DEPTH} levels (at '{at}'); the limit is {MAX_JSON_DEPTH}"),
                Some(at),
            );
        }
        Request::from_parts(parts, Body::from(bytes))
    } else {
        req
    };
    let resp = next.run(req).await;
    rewrite_error(resp, &method, &path).await
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The resource group and scale set names in a path, checked once for every route (so a list
/// under an invalid group name is a 400 naming it, not an empty list).
fn check_path_names(path: &str) -> Option<herd_model::FieldError> {
    let segs: Vec<&str> = path.split('/').collect();
    for (i, seg) in segs.iter().enumerate() {
        let Some(next) = segs.get(i + 1) else { break };
        let value = percent_decode(next);
        let checked = match *seg {
            "resourceGroups" if i == 2 && segs[1] == "v1" => herd_model::GroupName::new(value).err(),
            "virtualMachineScaleSets" if i == 4 => herd_model::ScaleSetName::new(value).err(),
            _ => None,
        };
        if let Some(mut e) = checked {
            if *seg == "resourceGroups" {
                e.field = "resourceGroup".into();
            }
            return Some(e);
        }
    }
    None
}

/// The answer for a path no route matches.
pub async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    error(StatusCode::NOT_FOUND, "NotFound", format!("no such resource: {method} {}", uri.path()), None)
}

/// Gives an error answer that is not JSON (axum's rejections, the fallback's 404, a 405) the
/// documented body. A JSON body that fails to parse or fit the type is a 400, as in Azure.
async fn rewrite_error(resp: Response, method: &Method, path: &str) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    if resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
    {
        return resp;
    }
    let allow = resp.headers().get(header::ALLOW).cloned();
    let text = match axum::body::to_bytes(resp.into_body(), 64 << 10).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => String::new(),
    };
    let (status, code, message, target) = match status {
        StatusCode::NOT_FOUND => (
            status,
            "NotFound",
            if text.is_empty() { format!("no such resource: {method} {path}") } else { text },
            None,
        ),
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = allow.as_ref().and_then(|a| a.to_str().ok()).unwrap_or("").to_string();
            (status, "MethodNotAllowed", format!("{method} is not allowed on {path}; allowed: {allowed}"), None)
        }
        StatusCode::PAYLOAD_TOO_LARGE => {
            (status, "RequestEntityTooLarge", format!("the request body is larger than {MAX_JSON_BODY} bytes"), None)
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            status,
            "UnsupportedMediaType",
            "send the body as JSON with 'Content-Type: application/json'".to_string(),
            None,
        ),
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
            let (message, target) = rejection_message(&text);
            (StatusCode::BAD_REQUEST, "InvalidRequestContent", message, target)
        }
        _ => {
            let code = status.canonical_reason().unwrap_or("Error").replace(' ', "");
            let message = if text.is_empty() { status.to_string() } else { text };
            (status, leak(code), message, None)
        }
    };
    let mut out = error(status, code, message, target);
    if let Some(a) = allow {
        out.headers_mut().insert(header::ALLOW, a);
    }
    out
}

fn leak(code: String) -> &'static str {
    match code.as_str() {
        "Forbidden" => "Forbidden",
        "Conflict" => "Conflict",
        "PreconditionFailed" => "PreconditionFailed",
        "TooManyRequests" => "TooManyRequests",
        "RequestHeaderFieldsTooLarge" => "RequestHeaderFieldsTooLarge",
        _ => "Error",
    }
}

/// axum's rejection text, e.g. `Failed to deserialize the JSON body into the target type:
/// operations[0]: missing field `path` at line 1 column 30`: the message, and the field path.
fn rejection_message(text: &str) -> (String, Option<String>) {
    if let Some(rest) = text.strip_prefix("Failed to deserialize the JSON body into the target type: ") {
        if let Some((path, why)) = rest.split_once(": ") {
            if !path.contains(' ') && path != "." {
                return (format!("{path}: {why}"), Some(path.to_string()));
            }
        }
        return (rest.to_string(), None);
    }
    if let Some(rest) = text.strip_prefix("Failed to parse the JSON body: ") {
        return (format!("the body is not valid JSON: {rest}"), None);
    }
    if text.is_empty() {
        return ("bad request".into(), None);
    }
    (text.to_string(), None)
}

/// A listener whose connections answer hyper's own protocol errors with the JSON error body.
///
/// hyper answers a request line over 64 KiB (414), a head over its buffer (431) or an
/// unparsable request (400) itself, with an empty body, before any middleware runs. Those are
/// the only responses with an error status and `content-length: 0` (every handler and the
/// guard above send a JSON body), so the connection rewrites exactly those as they are written.
///
/// It wraps any listener whose address is a `SocketAddr`: TCP (`--insecure-http`) or TLS (the
/// rewrite then sees the plaintext, below the encryption).
pub struct JsonErrorListener<L>(pub L);

impl<L> axum::serve::Listener for JsonErrorListener<L>
where
    L: axum::serve::Listener<Addr = std::net::SocketAddr>,
{
    type Io = JsonErrorIo<L::Io>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.0.accept().await;
        (JsonErrorIo { inner: io, pending: Vec::new(), sent: 0 }, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// The client's address (`ConnectInfo<ClientAddr>`), the same over TLS and plain HTTP, so
/// the authentication rate limit need not know which the server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::SocketAddr);

impl<L> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, JsonErrorListener<L>>> for ClientAddr
where
    L: axum::serve::Listener<Addr = std::net::SocketAddr>,
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, JsonErrorListener<L>>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// A connection that replaces hyper's empty error answers (see [`JsonErrorListener`]).
pub struct JsonErrorIo<T> {
    inner: T,
    /// A replacement answer still to be written, and how much of it is.
    pending: Vec<u8>,
    sent: usize,
}

/// The JSON answer for hyper's empty error response in `head`, if it is one.
fn replace_protocol_error(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let rest = text.strip_prefix("HTTP/1.1 ")?;
    let code: u16 = rest.get(..3)?.parse().ok()?;
    let lower = text.to_ascii_lowercase();
    if code < 400 || !lower.contains("\r\ncontent-length: 0\r\n") || lower.contains("\r\ncontent-type:") {
        return None;
    }
    let (code_name, message) = match code {
        414 => ("UriTooLong", "the request line is longer than the server reads (64 KiB)".to_string()),
        431 => ("RequestHeaderFieldsTooLarge", "the request head is larger than the server reads".to_string()),
        400 => ("BadRequest", "the request is not valid HTTP/1.1".to_string()),
        other => ("Error", format!("the request could not be read ({other})")),
    };
    let body =
        serde_json::to_string(&ErrorBody { error: ErrorDetail { code: code_name.into(), message, target: None } })
            .ok()?;
    let reason = StatusCode::from_u16(code).ok()?.canonical_reason().unwrap_or("Error");
    Some(
        format!(
            "HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<T: tokio::io::AsyncWrite + Unpin> JsonErrorIo<T> {
    fn poll_pending(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        while self.sent < self.pending.len() {
            match std::pin::Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes what is pending first, then `then` (a flush or a shutdown) on the inner stream.
    fn after_pending(
        &mut self,
        cx: &mut std::task::Context<'_>,
        then: fn(std::pin::Pin<&mut T>, &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        then(std::pin::Pin::new(&mut self.inner), cx)
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for JsonErrorIo<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for JsonErrorIo<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        match self.poll_pending(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        // Only hyper's own error answers are a whole head starting a write.
        if let Some(rep) = replace_protocol_error(buf) {
            self.pending = rep;
            self.sent = 0;
            return match self.poll_pending(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                // The rest is written by the next flush or shutdown.
                _ => Poll::Ready(Ok(buf.len())),
            };
        }
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.after_pending(cx, T::poll_flush)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.after_pending(cx, T::poll_shutdown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_measured_flat() {
        assert_eq!(too_deep(br#"{"a": [1, {"b": 2}]}"#, 3), None);
        assert_eq!(too_deep(br#"{"a": [1, {"b": [2]}]}"#, 3).as_deref(), Some("a[1].b"));
        assert_eq!(too_deep(br#"{"a": "[[[[[[[[[[["}"#, 2), None, "brackets in strings do not count");
        assert_eq!(too_deep(br#"{"a\"{": {"b": 1}}"#, 2), None, "escaped quotes do not end a string");
        let deep = "[".repeat(100_000);
        assert!(too_deep(deep.as_bytes(), MAX_JSON_DEPTH).is_some());
    }

    #[test]
    fn only_hypers_empty_error_answers_are_replaced() {
        let hyper = b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(replace_protocol_error(hyper).unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 414 URI Too Long\r\ncontent-type: application/json"), "{out}");
        assert!(out.ends_with("}}"), "{out}");
        let ours = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n";
        assert!(replace_protocol_error(ours).is_none());
        assert!(replace_protocol_error(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(replace_protocol_error(b"{\"a\": 1}").is_none());
    }

    #[test]
    fn rejection_text_names_the_field() {
        let (m, t) = rejection_message(
            "Failed to deserialize the JSON body into the target type: operations[0]: missing field `path` at line 1 column 30",
        );
        assert_eq!(t.as_deref(), Some("operations[0]"));
        assert!(m.contains("missing field"));
    }
}
