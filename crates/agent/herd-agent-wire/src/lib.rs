//! What `herd agent` and the server say to each other over their one long-lived mutually
//! authenticated TLS connection, and how it is framed.
//!
//! Why a crate of its own: both ends (the agent in `herd-agent`, the server's side in
//! `herd-host-link`) must agree on every message and on the framing, and neither should pull
//! in the other. Each frame is a 4-byte big-endian length and a JSON message, at most
//! [`MAX_FRAME`] bytes: a peer that sends more is cut off, not followed into memory.
//!
//! The conversation:
//!
//! ```text
//!   agent                                   server
//!     │ ── TLS (ALPN herd-agent/1, client certificate) ──▶ │ certificate → host record?
//!     │ ── Hello {name, version, capacity, boot id} ─────▶ │
//!     │ ◀── Welcome {heartbeat interval} ─── or Refused {why} and close
//!     │ ── Heartbeat {seq, capacity} ────────────────────▶ │ last heartbeat = now
//!     │ ◀── Ack {seq} ──────────────────────────────────── │
//!     │        … every interval …                          │
//!     │ ◀── Refused {why} (host deleted meanwhile) and close
//! ```
#![forbid(unsafe_code)]

use herd_model::host::HostCapacity;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol's version; an agent and a server of different versions refuse each other
/// with a message naming both.
pub const PROTOCOL: u32 = 1;

/// The largest frame either end accepts.
pub const MAX_FRAME: usize = 16 << 20;

/// From the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum AgentMessage {
    #[serde(rename_all = "camelCase")]
    Hello { protocol: u32, name: String, agent_version: String, capacity: HostCapacity, boot_id: String },
    #[serde(rename_all = "camelCase")]
    Heartbeat { seq: u64, capacity: HostCapacity },
}

/// From the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ServerMessage {
    #[serde(rename_all = "camelCase")]
    Welcome { heartbeat_interval_ms: u64 },
    #[serde(rename_all = "camelCase")]
    Ack { seq: u64 },
    /// The server will not talk to this agent (and closes): not joined, deleted, another
    /// certificate, another protocol version. The agent must not retry with the same identity.
    #[serde(rename_all = "camelCase")]
    Refused { reason: String },
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer sent a frame of {0} bytes, more than the {MAX_FRAME} allowed")]
    TooLarge(usize),
    #[error("the peer sent a message that does not decode: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Writes one message as a frame.
pub async fn write<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, msg: &T) -> Result<(), WireError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_FRAME {
        return Err(WireError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one message; `None` when the peer closed cleanly between frames.
pub async fn read<R: AsyncRead + Unpin, T: DeserializeOwned>(r: &mut R) -> Result<Option<T>, WireError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(serde_json::from_slice(&body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_an_oversized_or_garbled_one_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let hb =
            AgentMessage::Heartbeat { seq: 7, capacity: HostCapacity { vcpus: 2, memory_mib: 1, disk_free_mib: 3 } };
        write(&mut a, &hb).await.unwrap();
        write(&mut a, &ServerMessage::Ack { seq: 7 }).await.unwrap();
        assert_eq!(read::<_, AgentMessage>(&mut b).await.unwrap(), Some(hb));
        assert_eq!(read::<_, ServerMessage>(&mut b).await.unwrap(), Some(ServerMessage::Ack { seq: 7 }));
        // A length past the limit is refused before anything is allocated.
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(read::<_, ServerMessage>(&mut b).await, Err(WireError::TooLarge(_))));
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&3u32.to_be_bytes()).await.unwrap();
        a.write_all(b"{x}").await.unwrap();
        assert!(matches!(read::<_, ServerMessage>(&mut b).await, Err(WireError::Decode(_))));
        drop(a);
        assert!(read::<_, ServerMessage>(&mut b).await.unwrap().is_none(), "a clean close");
    }
}
