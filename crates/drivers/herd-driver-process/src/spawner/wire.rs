//! The spawner's messages and their framing, shared by both ends of its socket.
//!
//! Why a hand-made format: the spawner is a tiny single-threaded program that must start and
//! answer fast, and every field is a byte string (paths, arguments and environment entries need
//! not be UTF-8). A frame is a little-endian `u32` length, then the body: a tag byte and fixed
//! fields (integers little-endian, byte strings as a `u32` length and the bytes).
//!
//! ```text
//!   herd ──▶ spawner   R id program argv[] env[] cwd console hostname?   start a process
//!   spawner ──▶ herd   H pid                                             ready (once, first)
//!                      S id pid starttime                                started (exec'd)
//!                      F id message                                      not started, and why
//!                      X pid wait-status                                 a started process ended
//! ```

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// The largest frame either end accepts (a request carries an environment; 16 MiB is far more
/// than any instance has).
pub const MAX_FRAME: usize = 16 << 20;

/// What herd asks the spawner to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Chosen by herd; the answer carries it back.
    pub id: u64,
    /// The file to execute (absolute, or relative to `cwd`).
    pub program: OsString,
    /// `argv`, `argv[0]` included.
    pub argv: Vec<OsString>,
    /// The whole environment, `KEY=VALUE` each.
    pub env: Vec<OsString>,
    /// The working directory.
    pub cwd: OsString,
    /// Opened for appending (created if absent) as stdout and stderr; stdin is `/dev/null`.
    pub console: OsString,
    /// A new UTS namespace with this hostname, or the spawner's own namespace.
    pub hostname: Option<OsString>,
}

/// What the spawner tells herd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The spawner runs (its pid), sent once before anything else.
    Hello { pid: u32 },
    /// Request `id` runs as `pid` (its `/proc` start time `start`): the program was executed.
    Started { id: u64, pid: u32, start: u64 },
    /// Request `id` started nothing: why, as a sentence.
    Failed { id: u64, message: String },
    /// A process the spawner started ended with the wait status `status` (as `waitpid` gives it).
    Exited { pid: u32, status: i32 },
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, u32::try_from(b.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(b);
}

fn put_list(out: &mut Vec<u8>, items: &[OsString]) {
    put_u32(out, u32::try_from(items.len()).unwrap_or(u32::MAX));
    for i in items {
        put_bytes(out, i.as_bytes());
    }
}

/// Wraps a body into a frame.
fn frame(body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    put_u32(&mut out, u32::try_from(body.len()).unwrap_or(u32::MAX));
    out.extend(body);
    out
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![b'R'];
        put_u64(&mut b, self.id);
        put_bytes(&mut b, self.program.as_bytes());
        put_list(&mut b, &self.argv);
        put_list(&mut b, &self.env);
        put_bytes(&mut b, self.cwd.as_bytes());
        put_bytes(&mut b, self.console.as_bytes());
        match &self.hostname {
            Some(h) => {
                b.push(1);
                put_bytes(&mut b, h.as_bytes());
            }
            None => b.push(0),
        }
        frame(b)
    }

    pub fn decode(body: &[u8]) -> Option<Self> {
        let mut r = Cursor(body);
        if r.u8()? != b'R' {
            return None;
        }
        let req = Request {
            id: r.u64()?,
            program: r.os()?,
            argv: r.list()?,
            env: r.list()?,
            cwd: r.os()?,
            console: r.os()?,
            hostname: match r.u8()? {
                0 => None,
                1 => Some(r.os()?),
                _ => return None,
            },
        };
        r.0.is_empty().then_some(req)
    }
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(24);
        match self {
            Reply::Hello { pid } => {
                b.push(b'H');
                put_u32(&mut b, *pid);
            }
            Reply::Started { id, pid, start } => {
                b.push(b'S');
                put_u64(&mut b, *id);
                put_u32(&mut b, *pid);
                put_u64(&mut b, *start);
            }
            Reply::Failed { id, message } => {
                b.push(b'F');
                put_u64(&mut b, *id);
                put_bytes(&mut b, message.as_bytes());
            }
            Reply::Exited { pid, status } => {
                b.push(b'X');
                put_u32(&mut b, *pid);
                b.extend_from_slice(&status.to_le_bytes());
            }
        }
        frame(b)
    }

    pub fn decode(body: &[u8]) -> Option<Self> {
        let mut r = Cursor(body);
        let reply = match r.u8()? {
            b'H' => Reply::Hello { pid: r.u32()? },
            b'S' => Reply::Started { id: r.u64()?, pid: r.u32()?, start: r.u64()? },
            b'F' => Reply::Failed { id: r.u64()?, message: String::from_utf8_lossy(&r.bytes()?).into_owned() },
            b'X' => Reply::Exited { pid: r.u32()?, status: i32::from_le_bytes(r.take(4)?.try_into().ok()?) },
            _ => return None,
        };
        r.0.is_empty().then_some(reply)
    }
}

/// A frame announced larger than [`MAX_FRAME`]: nothing sane sends one, so the peer is not a
/// spawner (or not herd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversized(pub usize);

/// Frames arriving on a stream, in pieces.
#[derive(Debug, Default)]
pub struct Frames {
    buf: Vec<u8>,
}

impl Frames {
    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame's body, if one has arrived.
    pub fn next_body(&mut self) -> Result<Option<Vec<u8>>, Oversized> {
        let Some(len) = self.buf.get(..4) else { return Ok(None) };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len > MAX_FRAME {
            return Err(Oversized(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let body = self.buf[4..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some(body))
    }
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        Some(self.take(n)?.to_vec())
    }
    fn os(&mut self) -> Option<OsString> {
        Some(OsString::from_vec(self.bytes()?))
    }
    fn list(&mut self) -> Option<Vec<OsString>> {
        let n = self.u32()? as usize;
        // Each item takes at least its 4-byte length: a count beyond that is a lie.
        if n > self.0.len() / 4 {
            return None;
        }
        (0..n).map(|_| self.os()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(frame: &[u8]) -> Vec<u8> {
        let mut f = Frames::default();
        f.push(frame);
        f.next_body().unwrap().unwrap()
    }

    #[test]
    fn requests_and_replies_round_trip_in_pieces() {
        let req = Request {
            id: 7,
            program: "/i/work/init".into(),
            argv: vec!["./init".into(), OsString::from_vec(vec![0xff, b'x'])],
            env: vec!["A=1".into(), "B=".into()],
            cwd: "/i/work".into(),
            console: "/i/console.log".into(),
            hostname: Some("web000001".into()),
        };
        assert_eq!(Request::decode(&body(&req.encode())), Some(req.clone()));
        let none = Request { hostname: None, argv: vec![], ..req.clone() };
        assert_eq!(Request::decode(&body(&none.encode())), Some(none));
        let replies = [
            Reply::Hello { pid: 9 },
            Reply::Started { id: 1, pid: 42, start: 1 << 40 },
            Reply::Failed { id: 2, message: "cannot start init: denied".into() },
            Reply::Exited { pid: 42, status: 9 },
        ];
        // All frames in one stream, fed a byte at a time: each comes out whole, in order.
        let stream: Vec<u8> = replies.iter().flat_map(Reply::encode).collect();
        let mut f = Frames::default();
        let mut got = Vec::new();
        for b in stream {
            f.push(&[b]);
            while let Some(body) = f.next_body().unwrap() {
                got.push(Reply::decode(&body).unwrap());
            }
        }
        assert_eq!(got, replies);
    }

    #[test]
    fn damaged_frames_are_refused() {
        let req = Request {
            id: 1,
            program: "p".into(),
            argv: vec![],
            env: vec![],
            cwd: "/".into(),
            console: "c".into(),
            hostname: None,
        };
        let b = body(&req.encode());
        assert_eq!(Request::decode(&b[..b.len() - 1]), None, "truncated");
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(Request::decode(&longer), None, "trailing bytes");
        assert_eq!(Reply::decode(&b), None, "a request is no reply");
        assert_eq!(Reply::decode(b"Q"), None);
        let mut f = Frames::default();
        f.push(&u32::MAX.to_le_bytes());
        assert!(f.next_body().is_err(), "an oversized frame");
        // A list count larger than the bytes left.
        let mut lie = vec![b'R'];
        lie.extend_from_slice(&1u64.to_le_bytes());
        lie.extend_from_slice(&1u32.to_le_bytes());
        lie.push(b'p');
        lie.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Request::decode(&lie), None);
    }
}
