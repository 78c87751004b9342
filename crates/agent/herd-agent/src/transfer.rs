//! This host's half of a cold move's transfer (see `herd_agent_wire`'s conversation): as the
//! move's source it uploads a stopped instance's state files to the server; as its target it
//! fetches them, checks each file's size and SHA-256 against what the server recorded, and
//! stages them for `Driver::ensure_moved`.
//!
//! Why each file on a connection of its own, dialled by this host: hosts have no inbound
//! port, and gigabytes on the link would delay its heartbeats past the lease. A staging
//! directory is `<data dir>/transfers/<transfer>.<n>/`, one per call (a call the server
//! repeats while the first still runs does not share it), removed when the call ends, and
//! every leftover is removed when the agent starts.

use anyhow::{anyhow, Context, Result};
use herd_agent_wire::{
    check_file_name, check_transfer_id, AgentMessage, FileHeader, ServerMessage, TransferredFile, PROTOCOL,
};
use herd_driver::StateFile;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long the server may take to answer an upload's or a fetch's first message, and the
/// longest wait for the next bytes of a file.
pub const IDLE: Duration = Duration::from_secs(60);
/// The bytes of one read or write.
const CHUNK: usize = 256 << 10;

/// A connection to the server as this host.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Dials the server (mutually authenticated, as this host).
#[async_trait::async_trait]
pub trait Dialer: Send + Sync {
    async fn dial(&self) -> Result<Box<dyn Stream>>;
}

#[async_trait::async_trait]
impl Dialer for crate::link::Connect {
    async fn dial(&self) -> Result<Box<dyn Stream>> {
        Ok(Box::new(crate::link::Connect::dial(self).await?))
    }
}

/// Uploads and fetches transfers (see the module docs).
pub struct Mover {
    dir: PathBuf,
    dialer: Box<dyn Dialer>,
    next: AtomicU64,
}

/// A staging directory, removed when dropped.
pub struct Staged {
    pub path: PathBuf,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.path.display(), error = %e, "cannot remove a transfer's staging directory");
            }
        }
    }
}

impl Mover {
    /// Stages under `dir` (cleared of what an earlier run left), dialling with `dialer`.
    pub fn new(dir: PathBuf, dialer: Box<dyn Dialer>) -> Self {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot clear the transfers an earlier run left");
            }
        }
        Self { dir, dialer, next: AtomicU64::new(0) }
    }

    /// Uploads `files` (of instance `key`, stopped) as transfer `transfer`; what the server
    /// stored, checked against what was sent.
    pub async fn upload(&self, transfer: &str, key: &str, files: &[StateFile]) -> Result<Vec<TransferredFile>> {
        check_transfer_id(transfer).map_err(|e| anyhow!(e))?;
        let headers: Vec<FileHeader> =
            files.iter().map(|f| FileHeader { name: f.name.clone(), size: f.size, mode: f.mode }).collect();
        let total: u64 = files.iter().map(|f| f.size).sum();
        let started = std::time::Instant::now();
        let mut tls = self.dialer.dial().await?;
        let ask = AgentMessage::Upload {
            protocol: PROTOCOL,
            transfer: transfer.to_string(),
            key: key.to_string(),
            files: headers.clone(),
        };
        herd_agent_wire::write(&mut tls, &ask).await?;
        match answer(&mut tls).await? {
            ServerMessage::UploadStart => {}
            other => return Err(anyhow!("expected UploadStart, got {other:?}")),
        }
        let mut buf = vec![0u8; CHUNK];
        for f in files {
            let mut file =
                tokio::fs::File::open(&f.path).await.with_context(|| format!("reading {}", f.path.display()))?;
            let mut left = f.size;
            while left > 0 {
                let want = (left as usize).min(CHUNK);
                let n = file.read(&mut buf[..want]).await.with_context(|| format!("reading {}", f.path.display()))?;
                if n == 0 {
                    return Err(anyhow!("{} shrank while it was uploaded ({left} bytes short)", f.path.display()));
                }
                tokio::time::timeout(IDLE, tls.write_all(&buf[..n]))
                    .await
                    .map_err(|_| anyhow!("the server took no bytes for {IDLE:?}"))??;
                left -= n as u64;
            }
        }
        tls.flush().await?;
        let stored = match answer(&mut tls).await? {
            ServerMessage::UploadDone { files } => files,
            other => return Err(anyhow!("expected UploadDone, got {other:?}")),
        };
        let same = stored.len() == headers.len()
            && stored.iter().zip(&headers).all(|(s, h)| s.name == h.name && s.size == h.size && s.mode == h.mode);
        if !same {
            return Err(anyhow!("the server stored other files than were sent"));
        }
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(%transfer, instance = %key, bytes = total, seconds = format!("{secs:.2}"), "an instance's state uploaded");
        Ok(stored)
    }

    /// Fetches `files` of transfer `transfer` into a new staging directory, each checked
    /// against its size and SHA-256 (a file that differs is refused, and nothing is kept).
    pub async fn fetch(&self, transfer: &str, files: &[TransferredFile]) -> Result<Staged> {
        check_transfer_id(transfer).map_err(|e| anyhow!(e))?;
        for f in files {
            check_file_name(&f.name).map_err(|e| anyhow!(e))?;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let staged = Staged { path: self.dir.join(format!("{transfer}.{n}")) };
        tokio::fs::create_dir_all(&staged.path).await.with_context(|| format!("creating {}", staged.path.display()))?;
        let started = std::time::Instant::now();
        for f in files {
            self.fetch_one(transfer, f, &staged.path.join(&f.name)).await?;
        }
        let total: u64 = files.iter().map(|f| f.size).sum();
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(%transfer, files = files.len(), bytes = total, seconds = format!("{secs:.2}"), "a moved instance's state fetched and checked");
        Ok(staged)
    }

    async fn fetch_one(&self, transfer: &str, f: &TransferredFile, to: &Path) -> Result<()> {
        let mut tls = self.dialer.dial().await?;
        let ask = AgentMessage::Fetch { protocol: PROTOCOL, transfer: transfer.to_string(), name: f.name.clone() };
        herd_agent_wire::write(&mut tls, &ask).await?;
        let size = match answer(&mut tls).await? {
            ServerMessage::FetchStart { size } => size,
            other => return Err(anyhow!("expected FetchStart for '{}', got {other:?}", f.name)),
        };
        if size != f.size {
            return Err(anyhow!("state file '{}' is {size} bytes on the server, not the {} exported", f.name, f.size));
        }
        if let Some(parent) = to.parent() {
            tokio::fs::create_dir_all(parent).await.with_context(|| format!("creating {}", parent.display()))?;
        }
        let mut file = tokio::fs::File::create(to).await.with_context(|| format!("creating {}", to.display()))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut left = size;
        while left > 0 {
            let want = (left as usize).min(CHUNK);
            // A whole chunk before it is hashed and written (TLS hands over 16 KiB at a time).
            let mut n = 0;
            while n < want {
                let got = tokio::time::timeout(IDLE, tls.read(&mut buf[n..want]))
                    .await
                    .map_err(|_| anyhow!("no bytes of '{}' for {IDLE:?}", f.name))??;
                if got == 0 {
                    return Err(anyhow!("the server closed '{}' {} bytes short", f.name, left - n as u64));
                }
                n += got;
            }
            h.update(&buf[..n]);
            file.write_all(&buf[..n]).await.with_context(|| format!("writing {}", to.display()))?;
            left -= n as u64;
        }
        let got = hex::encode(h.finalize());
        if got != f.sha256 {
            return Err(anyhow!(
                "state file '{}' arrived with SHA-256 {got}, not the {} the server recorded: refused",
                f.name,
                f.sha256
            ));
        }
        file.sync_all().await.with_context(|| format!("writing {}", to.display()))?;
        drop(file);
        let perms = std::os::unix::fs::PermissionsExt::from_mode(f.mode & 0o7777);
        tokio::fs::set_permissions(to, perms).await.with_context(|| format!("setting the mode of {}", to.display()))?;
        Ok(())
    }
}

/// The server's answer to an upload's or a fetch's first message.
async fn answer(tls: &mut Box<dyn Stream>) -> Result<ServerMessage> {
    match tokio::time::timeout(IDLE, herd_agent_wire::read::<_, ServerMessage>(tls)).await {
        Ok(Ok(Some(ServerMessage::TransferRefused { reason } | ServerMessage::Refused { reason }))) => {
            Err(anyhow!("the server refused the transfer: {reason}"))
        }
        Ok(Ok(Some(m))) => Ok(m),
        Ok(Ok(None)) => Err(anyhow!("the server closed the connection")),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(anyhow!("no answer from the server within {IDLE:?}")),
    }
}
