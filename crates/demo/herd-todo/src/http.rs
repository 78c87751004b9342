//! A deliberately small HTTP/1.1 server: one std thread per connection, one request per
//! connection (`Connection: close`), bounded sizes and timeouts.
//!
//! Why hand-written: the app must be one static binary that runs in a busybox guest, and the
//! walkthrough only needs a handful of routes answered to `curl` and to the load balancer's
//! probe. A framework would bring an async runtime and far more code than the routes. Limits
//! keep a slow or hostile client from pinning the process: the head must arrive within
//! [`HEAD_LIMIT`] bytes and the body within [`BODY_LIMIT`], the whole request within
//! [`REQUEST_DEADLINE`], and at most [`MAX_CONNECTIONS`] are served at once (more get `503` at
//! once). Chunked request bodies are refused (`411`): clients send `Content-Length` for JSON.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most bytes of request line plus headers.
pub const HEAD_LIMIT: usize = 16 * 1024;
/// Most bytes of a request body.
pub const BODY_LIMIT: usize = 64 * 1024;
/// Time allowed to receive a whole request.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(15);
/// Connections served at once; further ones are answered `503` by the accept loop.
pub const MAX_CONNECTIONS: usize = 64;
/// Time allowed for one socket read or write.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub body: Vec<u8>,
}

/// A response; `Content-Length` and `Connection: close` are added when it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self { status, content_type, headers: Vec::new(), body: body.into() }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status, "text/plain; charset=utf-8", body.into())
    }

    pub fn json(status: u16, value: &impl serde::Serialize) -> Self {
        // Serializing our own plain structs cannot fail.
        let body = serde_json::to_vec(value).unwrap_or_default();
        Self::new(status, "application/json", body)
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// Why a request could not be read; each maps to the status we answer with (if any).
#[derive(Debug, PartialEq, Eq)]
enum ReadError {
    /// The peer went away or timed out: nothing to answer.
    Gone,
    Bad(&'static str),
    HeadTooLarge,
    BodyTooLarge,
    LengthRequired,
}

impl ReadError {
    fn response(&self) -> Option<Response> {
        match self {
            ReadError::Gone => None,
            ReadError::Bad(why) => Some(Response::text(400, format!("bad request: {why}\n"))),
            ReadError::HeadTooLarge => Some(Response::text(431, "request head too large\n")),
            ReadError::BodyTooLarge => Some(Response::text(413, format!("body larger than {BODY_LIMIT} bytes\n"))),
            ReadError::LengthRequired => Some(Response::text(411, "send the body with Content-Length\n")),
        }
    }
}

/// Accepts connections forever, serving each on its own thread with `handler`.
pub fn serve<H>(listener: TcpListener, handler: H)
where
    H: Fn(&Request) -> Response + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off a little instead of spinning.
                eprintln!("herd-todo: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            write_response(&stream, &Response::text(503, "too many connections\n"), false);
            continue;
        }
        let guard = ActiveGuard(active.clone());
        let handler = handler.clone();
        let spawned = std::thread::Builder::new().name("conn".into()).spawn(move || {
            let _guard = guard;
            serve_one(stream, &*handler);
        });
        if let Err(e) = spawned {
            eprintln!("herd-todo: cannot start a connection thread: {e}");
        }
    }
}

/// Decrements the active-connection count when the connection's thread ends (even by panic).
struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve_one(stream: TcpStream, handler: &dyn Fn(&Request) -> Response) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let mut reader = &stream;
    let mut writer = &stream;
    let result = read_request(&mut reader, &mut writer, Instant::now() + REQUEST_DEADLINE);
    match result {
        Ok(req) => {
            let head_only = req.method == "HEAD";
            let resp = handler(&req);
            write_response(&stream, &resp, head_only);
        }
        Err(e) => {
            if let Some(resp) = e.response() {
                write_response(&stream, &resp, false);
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
    // Drain a little of what the client may still send, so closing does not reset the
    // connection before it has read our answer.
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 4096];
    let mut budget: usize = 64 * 1024;
    while budget > 0 {
        match reader.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => budget = budget.saturating_sub(n),
        }
    }
}

/// Reads one request from `r`. `w` is only used to send `100 Continue` when asked.
fn read_request(r: &mut impl Read, w: &mut impl Write, deadline: Instant) -> Result<Request, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > HEAD_LIMIT {
            return Err(ReadError::HeadTooLarge);
        }
        if Instant::now() > deadline {
            return Err(ReadError::Gone);
        }
        match r.read(&mut chunk) {
            Ok(0) => return Err(if buf.is_empty() { ReadError::Gone } else { ReadError::Bad("incomplete head") }),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err(ReadError::Gone),
        }
    };
    if head_end > HEAD_LIMIT {
        return Err(ReadError::HeadTooLarge);
    }
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| ReadError::Bad("head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) if !m.is_empty() && !t.is_empty() => (m, t, v),
        _ => return Err(ReadError::Bad("malformed request line")),
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ReadError::Bad("only HTTP/1.x is served"));
    }
    if !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ReadError::Bad("malformed method"));
    }
    let mut content_length: Option<usize> = None;
    let mut expect_continue = false;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(ReadError::Bad("malformed header"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.parse().map_err(|_| ReadError::Bad("malformed Content-Length"))?;
            if content_length.is_some_and(|old| old != n) {
                return Err(ReadError::Bad("conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ReadError::LengthRequired);
        } else if name.eq_ignore_ascii_case("expect") && value.eq_ignore_ascii_case("100-continue") {
            expect_continue = true;
        }
    }
    let len = content_length.unwrap_or(0);
    if len > BODY_LIMIT {
        return Err(ReadError::BodyTooLarge);
    }
    let method = method.to_string();
    let path = target.split_once('?').map_or(target, |(p, _)| p).to_string();
    let mut body = buf.split_off(head_end + 4);
    if expect_continue && body.len() < len {
        let _ = w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    while body.len() < len {
        if Instant::now() > deadline {
            return Err(ReadError::Gone);
        }
        match r.read(&mut chunk) {
            Ok(0) => return Err(ReadError::Bad("body shorter than Content-Length")),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err(ReadError::Gone),
        }
    }
    body.truncate(len);
    Ok(Request { method, path, body })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// The bytes of `resp` on the wire; the body is left out for `HEAD`.
fn encode(resp: &Response, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    for (name, value) in &resp.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(&resp.body);
    }
    bytes
}

fn write_response(mut stream: &TcpStream, resp: &Response, head_only: bool) {
    let _ = stream.write_all(&encode(resp, head_only));
    let _ = stream.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Request, ReadError> {
        let mut out = Vec::new();
        read_request(&mut &raw[..], &mut out, Instant::now() + Duration::from_secs(5))
    }

    #[test]
    fn parses_get_and_strips_the_query() {
        let req = parse(b"GET /api/version?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(req, Request { method: "GET".into(), path: "/api/version".into(), body: vec![] });
    }

    #[test]
    fn reads_exactly_content_length_bytes() {
        let req = parse(b"POST /api/todos HTTP/1.1\r\ncontent-length: 5\r\n\r\nhelloEXTRA").unwrap();
        assert_eq!(req.body, b"hello");
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nshort"),
            Err(ReadError::Bad("body shorter than Content-Length"))
        );
    }

    #[test]
    fn sends_100_continue_when_asked() {
        let raw = b"POST /x HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n";
        let mut out = Vec::new();
        // The body arrives after the head, as a second read.
        let mut r = std::io::Read::chain(&raw[..], &b"ok"[..]);
        let req = read_request(&mut r, &mut out, Instant::now() + Duration::from_secs(5)).unwrap();
        assert_eq!(req.body, b"ok");
        assert_eq!(out, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn refuses_what_it_does_not_serve() {
        assert_eq!(parse(b"GET / HTTP/2.0\r\n\r\n"), Err(ReadError::Bad("only HTTP/1.x is served")));
        assert_eq!(parse(b"GET /\r\n\r\n"), Err(ReadError::Bad("malformed request line")));
        assert_eq!(parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), Err(ReadError::LengthRequired));
        let big = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", BODY_LIMIT + 1);
        assert_eq!(parse(big.as_bytes()), Err(ReadError::BodyTooLarge));
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(HEAD_LIMIT));
        assert_eq!(parse(long.as_bytes()), Err(ReadError::HeadTooLarge));
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
            Err(ReadError::Bad("conflicting Content-Length headers"))
        );
        assert_eq!(parse(b""), Err(ReadError::Gone));
    }

    #[test]
    fn head_responses_keep_the_length_but_drop_the_body() {
        let resp = Response::text(200, "hello\n").with_header("Allow", "GET");
        let full = String::from_utf8(encode(&resp, false)).unwrap();
        assert!(full.starts_with("HTTP/1.1 200 OK\r\n"), "{full}");
        assert!(full.contains("Content-Length: 6\r\n") && full.contains("Allow: GET\r\n"), "{full}");
        assert!(full.ends_with("\r\n\r\nhello\n"), "{full}");
        let head = String::from_utf8(encode(&resp, true)).unwrap();
        assert!(head.contains("Content-Length: 6\r\n") && head.ends_with("\r\n\r\n"), "{head}");
    }
}
