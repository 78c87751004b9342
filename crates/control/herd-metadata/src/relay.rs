//! The stdio relay QEMU runs for each guest connection to the metadata address.
//!
//! Why: QEMU user networking can hand a guest's TCP connection to a program
//! (`guestfwd=tcp:<guest addr>:80-cmd:<program>`), one process per connection, with the
//! connection on the program's stdin and stdout. (The other form, `guestfwd=...-tcp:<host>`,
//! connects once when QEMU starts and carries a single stream, so it cannot serve one HTTP
//! request after another.) The program is `herd metadata-relay <addr>`, which calls
//! [`relay_stdio`] to join that connection to the instance's own metadata listener.
//!
//! Its stderr is the guest connection too, so nothing here writes to stderr: a failure is only
//! the return value (the caller exits non-zero, and the guest sees the connection close).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

/// How long connecting to the listener may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The relay ends when the listener sends nothing for this long (a guest that keeps a
/// connection open and idle does not keep a host process alive for ever).
pub const RELAY_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Joins stdin and stdout to a TCP connection to `addr` until the listener closes it: stdin is
/// copied to the socket (then its write side is shut), the socket to stdout. Blocking; meant
/// for a short-lived process that exits when this returns (the stdin copy runs on a thread
/// that is not joined).
pub fn relay_stdio(addr: SocketAddr) -> io::Result<()> {
    relay(addr, io::stdin(), io::stdout().lock())
}

/// [`relay_stdio`] over any reader and writer.
pub fn relay<R, W>(addr: SocketAddr, mut input: R, mut output: W) -> io::Result<()>
where
    R: Read + Send + 'static,
    W: Write,
{
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    let _ = stream.set_nodelay(true);
    stream.set_read_timeout(Some(RELAY_IDLE_TIMEOUT))?;
    let mut upstream = stream.try_clone()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match input.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if upstream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = upstream.shutdown(Shutdown::Write);
    });
    let mut downstream = stream;
    let mut buf = [0u8; 16 * 1024];
    let result = loop {
        match downstream.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if let Err(e) = output.write_all(&buf[..n]).and_then(|_| output.flush()) {
                    break Err(e);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let _ = downstream.shutdown(Shutdown::Both);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-connection echo server on loopback that upper-cases what it reads until EOF.
    fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            s.write_all(&all.to_ascii_uppercase()).unwrap();
        });
        addr
    }

    #[test]
    fn relays_both_ways_until_the_listener_closes() {
        let addr = echo();
        let mut out = Vec::new();
        relay(addr, io::Cursor::new(b"get /metadata".to_vec()), &mut out).unwrap();
        assert_eq!(out, b"GET /METADATA");
    }

    #[test]
    fn a_closed_port_is_an_error() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        assert!(relay(addr, io::empty(), Vec::new()).is_err());
    }
}
