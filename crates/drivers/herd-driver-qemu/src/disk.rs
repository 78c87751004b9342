//! Instance disks: a qcow2 overlay per instance on the image's read-only disk (so a reimage is
//! "throw the overlay away, make a new one"), and empty qcow2 data disks that survive a
//! reimage. `qemu-img` does the work; these functions make the calls idempotent and their
//! errors readable.

use std::path::Path;
use tokio::process::Command;

/// A disk operation that failed, with what `qemu-img` said.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {detail}")]
pub struct DiskError {
    pub what: String,
    pub detail: String,
}

async fn qemu_img(args: &[&str], what: &str) -> Result<String, DiskError> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .await
        .map_err(|e| DiskError { what: what.into(), detail: format!("cannot run qemu-img: {e}") })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(DiskError { what: what.into(), detail: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}

/// The format `qemu-img` detects for `path` (`qcow2`, `raw`, ...).
pub async fn format_of(path: &Path) -> Result<String, DiskError> {
    let p = path.display().to_string();
    let info = qemu_img(&["info", "--output", "json", &p], &format!("inspecting {p}")).await?;
    let v: serde_json::Value = serde_json::from_str(&info)
        .map_err(|e| DiskError { what: format!("inspecting {p}"), detail: e.to_string() })?;
    Ok(v["format"].as_str().unwrap_or("raw").to_string())
}

/// Creates `overlay` as a qcow2 backed by `base` (read-only for the guest's writes), unless it
/// already exists. Written under a temporary name and renamed, so a crash never leaves a
/// half-made overlay that a later start would trust.
pub async fn ensure_overlay(base: &Path, overlay: &Path) -> Result<(), DiskError> {
    if overlay.exists() {
        return Ok(());
    }
    let fmt = format_of(base).await?;
    let tmp = overlay.with_extension("qcow2.tmp");
    let _ = std::fs::remove_file(&tmp);
    let (b, t) = (base.display().to_string(), tmp.display().to_string());
    qemu_img(&["create", "-q", "-f", "qcow2", "-b", &b, "-F", &fmt, &t], &format!("creating the overlay on {b}"))
        .await?;
    std::fs::rename(&tmp, overlay)
        .map_err(|e| DiskError { what: "installing the overlay".into(), detail: e.to_string() })
}

/// Points the qcow2 `overlay` at `base` (this host's copy of the image it was made on, on
/// another host) without touching its data: `qemu-img rebase -u` rewrites only the backing
/// file's name and format in the header. The base must hold the same content as the one the
/// overlay was made on (the gallery image of the same digest); that is the caller's to ensure.
pub async fn rebase_overlay(base: &Path, overlay: &Path) -> Result<(), DiskError> {
    let fmt = format_of(base).await?;
    let (b, o) = (base.display().to_string(), overlay.display().to_string());
    qemu_img(&["rebase", "-u", "-f", "qcow2", "-b", &b, "-F", &fmt, &o], &format!("rebasing {o} onto {b}")).await?;
    Ok(())
}

/// Creates an empty qcow2 data disk of `size_gb` GiB unless it exists (data disks survive
/// reimages and are removed only with the instance).
pub async fn ensure_data_disk(path: &Path, size_gb: u32) -> Result<(), DiskError> {
    if path.exists() {
        return Ok(());
    }
    let tmp = path.with_extension("qcow2.tmp");
    let _ = std::fs::remove_file(&tmp);
    let t = tmp.display().to_string();
    qemu_img(
        &["create", "-q", "-f", "qcow2", &t, &format!("{size_gb}G")],
        &format!("creating a {size_gb} GiB data disk"),
    )
    .await?;
    std::fs::rename(&tmp, path)
        .map_err(|e| DiskError { what: "installing the data disk".into(), detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overlays_point_at_their_base_and_data_disks_have_their_size() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
        let overlay = dir.path().join("os.qcow2");
        ensure_overlay(&base, &overlay).await.unwrap();
        let info = qemu_img(&["info", "--output", "json", &overlay.display().to_string()], "info").await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(v["format"], "qcow2");
        assert_eq!(v["backing-filename"], base.display().to_string());
        assert_eq!(v["backing-filename-format"], "raw");
        // Idempotent: a second call keeps the existing overlay (and what the guest wrote to it).
        let before = std::fs::metadata(&overlay).unwrap().modified().unwrap();
        ensure_overlay(&base, &overlay).await.unwrap();
        assert_eq!(std::fs::metadata(&overlay).unwrap().modified().unwrap(), before);

        let data = dir.path().join("data0.qcow2");
        ensure_data_disk(&data, 10).await.unwrap();
        let info = qemu_img(&["info", "--output", "json", &data.display().to_string()], "info").await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(v["virtual-size"], 10u64 << 30);
        assert!(std::fs::metadata(&data).unwrap().len() < 1 << 20, "thin: no space taken up front");

        // Moved to another host, the overlay is pointed at that host's copy of the base.
        let elsewhere = dir.path().join("elsewhere.raw");
        std::fs::copy(&base, &elsewhere).unwrap();
        rebase_overlay(&elsewhere, &overlay).await.unwrap();
        let info = qemu_img(&["info", "--output", "json", &overlay.display().to_string()], "info").await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(v["backing-filename"], elsewhere.display().to_string());
        assert_eq!(v["backing-filename-format"], "raw");
        let bad = rebase_overlay(&dir.path().join("gone.raw"), &overlay).await.unwrap_err();
        assert!(bad.to_string().contains("gone.raw"), "{bad}");

        let missing = ensure_overlay(&dir.path().join("nope.raw"), &dir.path().join("x.qcow2")).await.unwrap_err();
        assert!(missing.to_string().contains("nope.raw"), "{missing}");
        assert!(!dir.path().join("x.qcow2").exists() && !dir.path().join("x.qcow2.tmp").exists());
    }
}
