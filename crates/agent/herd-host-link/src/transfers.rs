//! Transfers of a stopped instance's state files between hosts, staged on this server: the
//! bytes of a cold move (redeploy, drain; issue 21).
//!
//! Why through the server: hosts have no inbound port, so one host cannot reach another; every
//! byte travels on connections the agents dial, as image pulls do. The source host uploads the
//! files (`Upload`, a connection of its own), the server stores them under
//! `<data dir>/transfers/<transfer>/<name>`, hashing each as it arrives, and the target host
//! fetches them one by one (`Fetch`) and checks each against its size and SHA-256. A file
//! never sits half-written under the transfer's name: an upload fills
//! `transfers/.<transfer>.upload/` and renames it when every byte is in.
//!
//! Who may: the router opens a transfer before it asks the source to export ([`Transfers::open`]),
//! naming the move's source and target hosts; an upload from any other host, or a fetch by any
//! host but the target, is refused, as is a name that would leave the transfer's directory
//! (absolute, `..`). A transfer lives in memory: after a server restart the router opens it
//! again when the move is retried (the id is the same for the same instance and incarnation,
//! so the retry replaces what an earlier attempt left).
//!
//! ```text
//!   open(id, key, source, target) ──▶ upload from source ──▶ transfers/<id>/ (sha256 each)
//!        ──▶ fetches by target ──▶ close(id): directory removed, grant forgotten
//! ```

use crate::HostLinks;
use herd_agent_wire::{check_file_name, check_transfer_id, FileHeader, ServerMessage, TransferredFile};
use herd_driver::{Fence, StateFile};
use herd_model::InstanceKey;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long an upload or a fetch may wait for its next bytes.
pub const IDLE: Duration = Duration::from_secs(60);
/// The bytes of one read or write.
const CHUNK: usize = 256 << 10;

/// Who may upload and fetch one transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    /// `group/set/id` of the instance moved.
    key: String,
    /// The host that uploads (None: this machine, staged by the router itself).
    source: Option<String>,
    /// The host that fetches (None: this machine, which reads the directory itself).
    target: Option<String>,
}

/// The transfers of this server (see the module docs).
#[derive(Debug, Default)]
pub struct Transfers {
    root: std::sync::OnceLock<PathBuf>,
    grants: Mutex<HashMap<String, Grant>>,
}

/// The transfer id of the move of `key` under `fence`: the same for a retry of that move, a
/// new one for the next move of the instance (a new incarnation).
pub fn transfer_id(key: &InstanceKey, fence: Fence) -> String {
    let mut h = Sha256::new();
    h.update(format!("{}@{}.{}", key.path(), fence.term.0, fence.incarnation.0).as_bytes());
    format!("m{}", &hex::encode(h.finalize())[..24])
}

impl Transfers {
    /// Stages transfers under `dir` (the server's data dir's `transfers/`); set once, before
    /// the first move. What an earlier run left there is removed then: no transfer survives a
    /// restart.
    pub fn set_root(&self, dir: PathBuf) {
        if dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot clear the transfers an earlier run left");
            }
        }
        let _ = self.root.set(dir);
    }

    /// Where transfers are staged: as set, else a directory of this process under the
    /// system's temporary directory.
    pub fn root(&self) -> &Path {
        self.root.get_or_init(|| std::env::temp_dir().join(format!("herd-transfers-{}", std::process::id())))
    }

    /// The directory of transfer `id`'s files.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root().join(id)
    }

    fn grants(&self) -> std::sync::MutexGuard<'_, HashMap<String, Grant>> {
        self.grants.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens transfer `id` of instance `key` from host `source` to host `target` (None: this
    /// machine), replacing an earlier grant of the same id (a retried move).
    pub fn open(&self, id: &str, key: &InstanceKey, source: Option<&str>, target: Option<&str>) {
        let grant = Grant { key: key.path(), source: source.map(str::to_string), target: target.map(str::to_string) };
        self.grants().insert(id.to_string(), grant);
    }

    /// Closes transfer `id`: its files are removed and no host may use it any more.
    pub async fn close(&self, id: &str) {
        self.grants().remove(id);
        let (dir, partial) = (self.dir(id), self.root().join(format!(".{id}.upload")));
        let _ = tokio::task::spawn_blocking(move || {
            for d in [dir, partial] {
                if let Err(e) = std::fs::remove_dir_all(&d) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(dir = %d.display(), error = %e, "cannot remove a transfer's files");
                    }
                }
            }
        })
        .await;
    }

    /// Whether host `host` may upload transfer `id` of instance `key`.
    fn may_upload(&self, id: &str, host: &str, key: &str) -> Result<(), String> {
        check_transfer_id(id)?;
        match self.grants().get(id) {
            Some(g) if g.source.as_deref() == Some(host) && g.key == key => Ok(()),
            Some(g) if g.key != key => Err(format!("transfer {id} is not of instance {key}")),
            Some(_) => Err(format!("transfer {id} is not host {host}'s to upload (it is not the move's source)")),
            None => Err(format!("no transfer {id} is open on this server (finished, or the server restarted)")),
        }
    }

    /// Whether host `host` may fetch from transfer `id`.
    fn may_fetch(&self, id: &str, host: &str) -> Result<(), String> {
        check_transfer_id(id)?;
        match self.grants().get(id) {
            Some(g) if g.target.as_deref() == Some(host) => Ok(()),
            Some(_) => Err(format!("transfer {id} is not host {host}'s to fetch (it is not the move's target)")),
            None => Err(format!("no transfer {id} is open on this server (finished, or the server restarted)")),
        }
    }

    /// Stages `files` of this machine (the move's source is this server's own driver) as
    /// transfer `id`: copied and hashed, as an upload would be.
    pub async fn stage_local(&self, id: &str, files: Vec<StateFile>) -> Result<Vec<TransferredFile>, String> {
        for f in &files {
            check_file_name(&f.name)?;
        }
        let (root, id) = (self.root().to_path_buf(), id.to_string());
        tokio::task::spawn_blocking(move || {
            let partial = root.join(format!(".{id}.upload"));
            fresh_dir(&partial)?;
            let mut out = Vec::with_capacity(files.len());
            for f in files {
                let to = partial.join(&f.name);
                let mut from =
                    std::fs::File::open(&f.path).map_err(|e| format!("reading {}: {e}", f.path.display()))?;
                let (size, sha256) = copy_hashing(&mut from, &to, f.size, f.mode)?;
                out.push(TransferredFile { name: f.name, size, mode: f.mode, sha256 });
            }
            publish(&partial, &root.join(&id))?;
            Ok(out)
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

/// An empty directory at `dir` (what was there is removed).
fn fresh_dir(dir: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("clearing {}: {e}", dir.display())),
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))
}

/// Renames the whole upload `partial` to `dir`, replacing an earlier one.
fn publish(partial: &Path, dir: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("clearing {}: {e}", dir.display())),
    }
    std::fs::rename(partial, dir).map_err(|e| format!("renaming {} to {}: {e}", partial.display(), dir.display()))
}

/// Creates `to` (and its parents) with `mode`, and fills it with exactly `size` bytes of
/// `from`; returns the size and the hex SHA-256.
fn copy_hashing(from: &mut impl std::io::Read, to: &Path, size: u64, mode: u32) -> Result<(u64, String), String> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    let mut file = std::fs::File::create(to).map_err(|e| format!("creating {}: {e}", to.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = size;
    while left > 0 {
        let want = (left as usize).min(CHUNK);
        let n = from.read(&mut buf[..want]).map_err(|e| format!("reading for {}: {e}", to.display()))?;
        if n == 0 {
            return Err(format!("{}: the file ended {left} bytes short of its {size}", to.display()));
        }
        h.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(|e| format!("writing {}: {e}", to.display()))?;
        left -= n as u64;
    }
    file.sync_all().map_err(|e| format!("writing {}: {e}", to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(|e| format!("setting the mode of {}: {e}", to.display()))?;
    Ok((size, hex::encode(h.finalize())))
}

/// Serves one upload by host `host`: checks the grant and the names, stores every file's
/// bytes as they come (hashing them), and answers `UploadDone`.
pub(crate) async fn serve_upload<S>(
    links: &HostLinks,
    tls: &mut S,
    host: &str,
    transfer: &str,
    key: &str,
    files: &[FileHeader],
) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let t = &links.transfers;
    if let Err(why) = t.may_upload(transfer, host, key) {
        return refuse(tls, host, why).await;
    }
    let mut seen = std::collections::HashSet::new();
    for f in files {
        if let Err(why) = check_file_name(&f.name) {
            return refuse(tls, host, why).await;
        }
        if !seen.insert(f.name.as_str()) {
            return refuse(tls, host, format!("state file '{}' is named twice", f.name)).await;
        }
    }
    let partial = t.root().join(format!(".{transfer}.upload"));
    let p2 = partial.clone();
    let cleared = match tokio::task::spawn_blocking(move || fresh_dir(&p2)).await {
        Ok(r) => r,
        Err(e) => Err(e.to_string()),
    };
    if let Err(why) = cleared {
        return refuse(tls, host, why).await;
    }
    herd_agent_wire::write(tls, &ServerMessage::UploadStart).await.map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    let total: u64 = files.iter().map(|f| f.size).sum();
    tracing::info!(%host, %transfer, instance = %key, files = files.len(), bytes = total, "receiving an instance's state");
    let mut out = Vec::with_capacity(files.len());
    let mut buf = vec![0u8; CHUNK];
    for f in files {
        let to = partial.join(&f.name);
        if let Some(parent) = to.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        let mut file = tokio::fs::File::create(&to).await.map_err(|e| format!("creating {}: {e}", to.display()))?;
        let mut h = Sha256::new();
        let mut left = f.size;
        while left > 0 {
            let want = (left as usize).min(CHUNK);
            // A whole chunk before it is hashed and written (TLS hands over 16 KiB at a time).
            let mut n = 0;
            while n < want {
                n += match tokio::time::timeout(IDLE, tls.read(&mut buf[n..want])).await {
                    Ok(Ok(0)) => {
                        return Err(format!(
                            "host {host} closed the upload {} bytes short in '{}'",
                            left - n as u64,
                            f.name
                        ))
                    }
                    Ok(Ok(got)) => got,
                    Ok(Err(e)) => return Err(format!("host {host}'s upload of '{}': {e}", f.name)),
                    Err(_) => return Err(format!("host {host}'s upload of '{}' sent nothing for {IDLE:?}", f.name)),
                };
            }
            h.update(&buf[..n]);
            file.write_all(&buf[..n]).await.map_err(|e| format!("writing {}: {e}", to.display()))?;
            left -= n as u64;
        }
        file.sync_all().await.map_err(|e| format!("writing {}: {e}", to.display()))?;
        drop(file);
        let perms = std::os::unix::fs::PermissionsExt::from_mode(f.mode & 0o7777);
        tokio::fs::set_permissions(&to, perms)
            .await
            .map_err(|e| format!("setting the mode of {}: {e}", to.display()))?;
        out.push(TransferredFile {
            name: f.name.clone(),
            size: f.size,
            mode: f.mode,
            sha256: hex::encode(h.finalize()),
        });
    }
    let dir = t.dir(transfer);
    tokio::task::spawn_blocking(move || publish(&partial, &dir)).await.map_err(|e| e.to_string())??;
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(%host, %transfer, instance = %key, bytes = total, seconds = format!("{secs:.2}"), "an instance's state received");
    herd_agent_wire::write(tls, &ServerMessage::UploadDone { files: out }).await.map_err(|e| e.to_string())?;
    let _ = tls.shutdown().await;
    Ok(())
}

/// Serves one fetch of file `name` of `transfer` by host `host`.
pub(crate) async fn serve_fetch<S>(
    links: &HostLinks,
    tls: &mut S,
    host: &str,
    transfer: &str,
    name: &str,
) -> Result<(), String>
where
    S: tokio::io::AsyncWrite + Unpin,
{
    let t = &links.transfers;
    if let Err(why) = t.may_fetch(transfer, host).and_then(|()| check_file_name(name)) {
        return refuse(tls, host, why).await;
    }
    let path = t.dir(transfer).join(name);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => return refuse(tls, host, format!("transfer {transfer} has no file '{name}': {e}")).await,
    };
    let size = file.metadata().await.map_err(|e| format!("{}: {e}", path.display()))?.len();
    herd_agent_wire::write(tls, &ServerMessage::FetchStart { size }).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; CHUNK];
    let mut left = size;
    while left > 0 {
        let want = (left as usize).min(CHUNK);
        let n = file.read(&mut buf[..want]).await.map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            return Err(format!("{} shrank while it was sent", path.display()));
        }
        match tokio::time::timeout(IDLE, tls.write_all(&buf[..n])).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("host {host} fetching '{name}' of {transfer}: {e}")),
            Err(_) => return Err(format!("host {host} took no bytes of '{name}' for {IDLE:?}")),
        }
        left -= n as u64;
    }
    tls.shutdown().await.map_err(|e| e.to_string())?;
    Ok(())
}

async fn refuse<S: tokio::io::AsyncWrite + Unpin>(tls: &mut S, host: &str, reason: String) -> Result<(), String> {
    tracing::warn!(%host, %reason, "a state transfer refused");
    let _ = herd_agent_wire::write(tls, &ServerMessage::TransferRefused { reason: reason.clone() }).await;
    Err(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_moves_source_uploads_and_only_its_target_fetches() {
        let t = Transfers::default();
        let key = InstanceKey::parse_path("rg/web/1").unwrap();
        let fence = Fence::new(herd_driver::Term(1), herd_driver::Incarnation(4));
        let id = transfer_id(&key, fence);
        assert_eq!(id, transfer_id(&key, fence), "a retry reuses the id");
        assert_ne!(id, transfer_id(&key, Fence::new(herd_driver::Term(1), herd_driver::Incarnation(5))));
        check_transfer_id(&id).unwrap();
        assert!(t.may_upload(&id, "h1", "rg/web/1").unwrap_err().contains("no transfer"));
        t.open(&id, &key, Some("h1"), Some("h2"));
        t.may_upload(&id, "h1", "rg/web/1").unwrap();
        assert!(t.may_upload(&id, "h2", "rg/web/1").unwrap_err().contains("not the move's source"));
        assert!(t.may_upload(&id, "h1", "rg/web/2").unwrap_err().contains("not of instance"));
        t.may_fetch(&id, "h2").unwrap();
        assert!(t.may_fetch(&id, "h1").unwrap_err().contains("not the move's target"));
        assert!(t.may_fetch(&id, "h3").is_err());
        assert!(t.may_fetch("../etc", "h2").unwrap_err().contains("transfer id"));
    }
}
