//! `herd bench backend`: the smallest HTTP/1.1 server that answers `wrk`, so that the load
//! balancers under test, not the backends, are what the benchmark measures.

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok";
/// The answer before closing: it says so, so that `wrk` reconnects instead of counting an error.
const REPLY_CLOSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nok";

/// The listen backlog asked for (the kernel caps it at `net.core.somaxconn`, which the bench's
/// namespace raises to 65,535). A load balancer opens a backend connection per client
/// connection, so at 1,000 connections each backend gets hundreds of connects in a burst while
/// its CPU is shared with `wrk`: with the default backlog of 128 the accept queue overflowed,
/// the kernel dropped SYNs (`TcpExtListenOverflows`), and each such connection's first
/// request waited for the SYN's retransmission, a second later, which `wrk`'s correction for
/// coordinated omission turns into dozens of slow samples: herd's slow rounds at 1,000
/// connections (docs/benchmarks.md, session 14).
pub const BACKLOG: u32 = 65_535;

/// Answers every request with a short 200. Keeps the connection open unless the request says
/// `Connection: close`, then closes it after the answer (the short-lived connection shape).
pub async fn backend(bind: std::net::SocketAddr) -> Result<()> {
    let listener = listen(bind)?;
    loop {
        let (sock, _) = listener.accept().await?;
        tokio::spawn(serve(sock));
    }
}

/// A listener on `bind` with [`BACKLOG`].
fn listen(bind: std::net::SocketAddr) -> Result<tokio::net::TcpListener> {
    let socket = if bind.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(bind)?;
    Ok(socket.listen(BACKLOG)?)
}

async fn serve(mut sock: tokio::net::TcpStream) {
    let _ = sock.set_nodelay(true);
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending = 0usize;
    loop {
        let n = match sock.read(&mut buf[pending..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending += n;
        // Answer every complete request head in the buffer.
        let mut start = 0;
        while let Some(end) = buf[start..pending].windows(4).position(|w| w == b"\r\n\r\n") {
            if asks_to_close(&buf[start..start + end]) {
                let _ = sock.write_all(REPLY_CLOSE).await;
                return;
            }
            if sock.write_all(REPLY).await.is_err() {
                return;
            }
            start += end + 4;
        }
        buf.copy_within(start..pending, 0);
        pending -= start;
        if pending == buf.len() {
            return;
        }
    }
}

/// Whether a request head carries `Connection: close` (any case).
fn asks_to_close(head: &[u8]) -> bool {
    head.split(|&b| b == b'\n').any(|line| {
        let line = String::from_utf8_lossy(line).to_ascii_lowercase();
        line.strip_prefix("connection:").is_some_and(|v| v.trim() == "close")
    })
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_listener_asks_for_a_backlog_far_above_the_default_128() {
        let l = super::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = l.local_addr().unwrap().port();
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap().trim().parse().unwrap();
        // `ss -ltn` shows a listener's backlog as its Send-Q.
        let out = std::process::Command::new("ss").args(["-ltnH", &format!("sport = :{port}")]).output().unwrap();
        let out = String::from_utf8_lossy(&out.stdout);
        let backlog: u32 =
            out.split_whitespace().nth(2).and_then(|q| q.parse().ok()).unwrap_or_else(|| panic!("{out}"));
        assert_eq!(backlog, somaxconn.min(super::BACKLOG), "{out}");
        assert!(backlog > 128 || somaxconn <= 128, "{out}");
    }

    #[test]
    fn only_a_connection_close_header_closes() {
        assert!(super::asks_to_close(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r"));
        assert!(super::asks_to_close(b"GET / HTTP/1.1\r\nconnection:Close"));
        assert!(!super::asks_to_close(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive"));
        assert!(!super::asks_to_close(b"GET /connection:close HTTP/1.1\r\nHost: x"));
    }
}
