//! Sending an image's files to the server: `herd image import` and the benchmarks' images.
//!
//! Why: the server reads no path of the client's choosing (issue 13's rule), so every file of an
//! image travels in the request: a disk, a kernel and an initrd as they are, and a process
//! image's directory packed here as a tar archive. The archive holds only what the server keeps
//! (regular files and directories), so a tree with a symbolic link, a FIFO or a device is refused
//! before anything is sent, naming the entry.

use crate::{enc, Client};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::Path;

/// Packs the directory `dir` (for `--dir`) into a temporary tar archive: regular files with their
/// permission bits and directories, in name order.
pub fn pack_dir(dir: &Path) -> Result<tempfile::NamedTempFile> {
    let meta = std::fs::metadata(dir).with_context(|| format!("--dir {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("--dir {}: not a directory", dir.display());
    }
    let file = tempfile::Builder::new().prefix("herd-image-").suffix(".tar").tempfile()?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file.reopen()?));
    tar.mode(tar::HeaderMode::Complete);
    tar.follow_symlinks(false);
    add_dir(&mut tar, dir, Path::new(""))?;
    tar.into_inner()?.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(file)
}

fn add_dir<W: std::io::Write>(tar: &mut tar::Builder<W>, root: &Path, rel: &Path) -> Result<()> {
    let here = root.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&here)
        .with_context(|| format!("--dir: reading {}", here.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("--dir: reading {}", here.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = rel.join(e.file_name());
        let kind = e.file_type().with_context(|| format!("--dir: {}", path.display()))?;
        if kind.is_dir() {
            tar.append_dir(&name, &path).with_context(|| format!("--dir: packing {}", path.display()))?;
            add_dir(tar, root, &name)?;
        } else if kind.is_file() {
            let mut f = std::fs::File::open(&path).with_context(|| format!("--dir: reading {}", path.display()))?;
            tar.append_file(&name, &mut f).with_context(|| format!("--dir: packing {}", path.display()))?;
        } else {
            let what = if kind.is_symlink() { "a symbolic link" } else { "not a regular file or directory" };
            bail!(
                "--dir: {} is {what}; an image holds only regular files and directories (copy what it points to into the image instead)",
                path.display()
            );
        }
    }
    Ok(())
}

/// Imports the process image directory `dir` as `urn`: packs it, uploads it and asks for the
/// import. `extra` fields (e.g. `guestAgent`) go into the import request.
pub async fn import_directory(client: &Client, urn: &str, dir: &Path, extra: Value) -> Result<Value> {
    let d = dir.to_path_buf();
    let archive = tokio::task::spawn_blocking(move || pack_dir(&d)).await??;
    upload_file(client, urn, "directory", "dir", archive.path()).await?;
    let mut body = json!({"uploaded": true});
    if let (Value::Object(b), Value::Object(x)) = (&mut body, extra) {
        b.extend(x);
    }
    client.put(&format!("/v1/images/{}", enc(urn)), &body).await
}

/// Uploads one image file (`field`: disk, kernel, initrd or directory) for `urn`: hashes it, then streams
/// it with its SHA-256, showing progress on a terminal (and every 10% of a large file otherwise).
pub async fn upload_file(client: &Client, urn: &str, field: &str, flag: &str, path: &Path) -> Result<()> {
    use sha2::Digest;
    use std::io::{IsTerminal, Read};
    let len = std::fs::metadata(path).with_context(|| format!("--{flag} {}", path.display()))?.len();
    let tty = std::io::stderr().is_terminal();
    let show = tty || len >= 256 << 20;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let p = path.to_path_buf();
    let digest = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut f = std::fs::File::open(&p)?;
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(hex::encode(h.finalize()));
            }
            h.update(&buf[..n]);
        }
    })
    .await?
    .with_context(|| format!("--{flag} {}: reading", path.display()))?;
    let last = std::sync::Mutex::new((std::time::Instant::now(), 0u64));
    let label = format!("uploading {field} {name}");
    let progress = move |sent: u64| {
        if !show {
            return;
        }
        let mut l = last.lock().unwrap_or_else(|e| e.into_inner());
        let pct = (sent * 100).checked_div(len).unwrap_or(100);
        let due = if tty { l.0.elapsed() >= std::time::Duration::from_millis(200) } else { pct >= l.1 + 10 };
        if due || sent == len {
            let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
            if tty {
                eprint!("\r{label}: {:.1}/{:.1} MiB ({pct}%)", mib(sent), mib(len));
                if sent == len {
                    eprintln!();
                }
            } else {
                eprintln!("{label}: {:.1}/{:.1} MiB ({pct}%)", mib(sent), mib(len));
            }
            *l = (std::time::Instant::now(), pct);
        }
    };
    let route = format!("/v1/images/{}/files/{field}", enc(urn));
    client
        .upload(&route, path, &digest, progress)
        .await
        .with_context(|| format!("uploading --{flag} {}", path.display()))?;
    Ok(())
}
