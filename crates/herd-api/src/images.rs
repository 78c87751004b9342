//! The local image gallery: import, list, show, delete (refused while a scale set uses it).

use crate::{
    error::{ApiError, ErrorBody},
    state::AppState,
    views::{self, ImageImportRequest},
};
use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use herd_model::{
    image::{self, Image, ImageSource},
    scale_set::StoredScaleSet,
    FieldError, ImageUrn,
};
use herd_store::{Expect, Kind, StoreExt, WriteOp};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path as FsPath, PathBuf};

/// Lists images.
#[utoipa::path(get, path = "/v1/images", tag = "images", responses((status = 200, body = Vec<Image>)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<Image>>, ApiError> {
    Ok(Json(state.store.list_as::<Image>(Kind::Image, "")?.into_iter().map(|o| o.value).collect()))
}

fn parse_urn(urn: &str) -> Result<ImageUrn, ApiError> {
    Ok(ImageUrn::parse(urn).map_err(|mut e| {
        e.field = e.field.replace("image", "urn");
        e
    })?)
}

fn copy_dir(from: &FsPath, to: &FsPath) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let dest = to.join(entry.file_name());
        if kind.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

/// Imports an image: the directory is copied into the server's gallery, so later changes to
/// the source do not change instances.
#[utoipa::path(put, path = "/v1/images/{urn}", tag = "images",
    params(("urn" = String, Path, description = "publisher:offer:sku:version")),
    request_body = ImageImportRequest,
    responses((status = 201, body = Image), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn import(
    State(state): State<AppState>,
    Path(urn): Path<String>,
    Json(req): Json<ImageImportRequest>,
) -> Result<(StatusCode, Json<Image>), ApiError> {
    let u = parse_urn(&urn)?;
    if u.is_latest() {
        return Err(ApiError::invalid("urn", "an imported image needs a concrete version such as 1.0.0, not 'latest'"));
    }
    let key = Image::key(&u);
    if state.store.get(Kind::Image, &key)?.is_some() {
        return Err(ApiError::Conflict(format!("image {u} already exists; delete it first or use a new version")));
    }
    let dest = state.config.image_dir.join(key.replace(':', "_"));
    let (source, guest_agent, from) = stage(&req, &dest).await?;
    let img = Image {
        id: format!("/images/{u}"),
        urn: u.to_string(),
        publisher: u.publisher.clone(),
        offer: u.offer.clone(),
        sku: u.sku.clone(),
        version: u.version.clone(),
        source,
        guest_agent,
        created_at: state.clock.now(),
    };
    state.store.txn(vec![
        WriteOp::put(Kind::Image, key, &img, Expect::Absent)?,
        WriteOp::Activity(views::user_event(
            &state,
            "",
            &img.urn,
            "ImportImage",
            format!("{} image imported from {from}", img.source.kind()),
        )),
    ])?;
    Ok((StatusCode::CREATED, Json(img)))
}

/// An absolute path to an existing file or directory, checked for `field`.
fn source_path(field: &str, p: &str, dir: bool) -> Result<PathBuf, ApiError> {
    let path = PathBuf::from(p);
    if !path.is_absolute() {
        return Err(ApiError::invalid(field, "must be an absolute path on the server's host"));
    }
    let ok = if dir { path.is_dir() } else { path.is_file() };
    if !ok {
        let what = if dir { "a directory" } else { "a file" };
        return Err(ApiError::invalid(field, format!("'{}' is not {what}", path.display())));
    }
    Ok(path)
}

/// Checks the request and copies its files into `dest` (the image's own directory in the
/// gallery, so later changes to the sources do not change instances). Returns the source as
/// stored, whether the image has the guest agent, and where it came from (for the log).
async fn stage(req: &ImageImportRequest, dest: &FsPath) -> Result<(ImageSource, bool, String), ApiError> {
    let given = [req.directory.is_some(), req.disk.is_some(), req.kernel.is_some()].iter().filter(|x| **x).count();
    if given != 1 {
        return Err(ApiError::invalid(
            "directory",
            "give exactly one of directory (process driver), disk or kernel (qemu driver)",
        ));
    }
    if req.kernel.is_none() && (req.initrd.is_some() || req.cmdline.is_some()) {
        return Err(ApiError::invalid("initrd", "initrd and cmdline go with kernel"));
    }
    let dest = dest.to_path_buf();
    let blocking = |f: Box<dyn FnOnce() -> std::io::Result<()> + Send>| async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| ApiError::io("copying the image into the gallery failed", &e))
    };
    if let Some(d) = &req.directory {
        let src = source_path("directory", d, true)?;
        let init = src.join("init");
        let executable =
            std::fs::metadata(&init).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false);
        if !executable {
            return Err(ApiError::Invalid(FieldError::new(
                "directory",
                format!("'{}' must hold an executable file named 'init' (the instance's first process)", src.display()),
            )));
        }
        let (from, to) = (src.clone(), dest.clone());
        blocking(Box::new(move || {
            let _ = std::fs::remove_dir_all(&to);
            copy_dir(&from, &to)
        }))
        .await?;
        let source = ImageSource::Directory { path: dest.to_string_lossy().into_owned() };
        return Ok((source, req.guest_agent.unwrap_or(false), src.display().to_string()));
    }
    if let Some(d) = &req.disk {
        let src = source_path("disk", d, false)?;
        let mut magic = [0u8; 4];
        let format = match std::fs::File::open(&src).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic)) {
            Ok(()) if &magic == b"QFI\xfb" => "qcow2",
            Ok(()) => "raw",
            Err(e) => return Err(ApiError::invalid("disk", format!("'{}' cannot be read: {e}", src.display()))),
        };
        let target = dest.join(format!("disk.{format}"));
        let (from, to, dir) = (src.clone(), target.clone(), dest.clone());
        blocking(Box::new(move || {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            std::fs::copy(&from, &to)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o444))
        }))
        .await?;
        let source = ImageSource::Disk { path: target.to_string_lossy().into_owned(), format: format.into() };
        return Ok((source, req.guest_agent.unwrap_or(false), src.display().to_string()));
    }
    let kernel = source_path("kernel", req.kernel.as_deref().unwrap_or_default(), false)?;
    let initrd = req.initrd.as_deref().map(|p| source_path("initrd", p, false)).transpose()?;
    if let Some(c) = &req.cmdline {
        if c.len() > 4096 || c.contains(['\n', '\0']) {
            return Err(ApiError::invalid("cmdline", "must be one line of at most 4096 characters"));
        }
    }
    let guest_agent = match (req.guest_agent, &initrd) {
        (Some(g), _) => g,
        (None, Some(i)) => {
            let i = i.clone();
            tokio::task::spawn_blocking(move || initrd_has_agent(&i)).await.unwrap_or(false)
        }
        (None, None) => false,
    };
    let (k_to, i_to) = (dest.join("vmlinuz"), initrd.as_ref().map(|_| dest.join("initrd.img")));
    let (k_from, i_from, dir, k2, i2) = (kernel.clone(), initrd.clone(), dest.clone(), k_to.clone(), i_to.clone());
    blocking(Box::new(move || {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(&k_from, &k2)?;
        if let (Some(f), Some(t)) = (i_from, i2) {
            std::fs::copy(f, t)?;
        }
        Ok(())
    }))
    .await?;
    let source = ImageSource::Kernel {
        kernel: k_to.to_string_lossy().into_owned(),
        initrd: i_to.map(|p| p.to_string_lossy().into_owned()),
        cmdline: req.cmdline.clone(),
    };
    Ok((source, guest_agent, kernel.display().to_string()))
}

/// True if a (gzip'd or plain) cpio initrd contains the QEMU guest agent binary.
fn initrd_has_agent(path: &FsPath) -> bool {
    use std::io::Read;
    let Ok(bytes) = std::fs::read(path) else { return false };
    let mut data = Vec::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut gz = flate2::read::GzDecoder::new(bytes.as_slice()).take(1 << 30);
        if gz.read_to_end(&mut data).is_err() {
            return false;
        }
    } else {
        data = bytes;
    }
    let needle = b"usr/sbin/qemu-ga";
    data.windows(needle.len()).any(|w| w == needle) || data.windows(11).any(|w| w == b"bin/qemu-ga")
}

/// Shows an image; `latest` resolves to the highest version.
#[utoipa::path(get, path = "/v1/images/{urn}", tag = "images",
    params(("urn" = String, Path)),
    responses((status = 200, body = Image), (status = 404, body = ErrorBody)))]
pub async fn show(State(state): State<AppState>, Path(urn): Path<String>) -> Result<Json<Image>, ApiError> {
    let u = parse_urn(&urn)?;
    let all: Vec<Image> = state.store.list_as::<Image>(Kind::Image, "")?.into_iter().map(|o| o.value).collect();
    image::resolve(&all, &u)
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("image {u} is not in the gallery")))
}

/// Deletes an image, unless a scale set's model uses it.
#[utoipa::path(delete, path = "/v1/images/{urn}", tag = "images",
    params(("urn" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(State(state): State<AppState>, Path(urn): Path<String>) -> Result<StatusCode, ApiError> {
    let u = parse_urn(&urn)?;
    let key = Image::key(&u);
    let obj = state
        .store
        .get_as::<Image>(Kind::Image, &key)?
        .ok_or_else(|| ApiError::NotFound(format!("image {u} is not in the gallery")))?;
    let all: Vec<Image> = state.store.list_as::<Image>(Kind::Image, "")?.into_iter().map(|o| o.value).collect();
    let users: Vec<String> = state
        .store
        .list_as::<StoredScaleSet>(Kind::ScaleSet, "")?
        .into_iter()
        .filter(|s| {
            s.value
                .model
                .virtual_machine_profile
                .storage_profile
                .image_reference
                .urn()
                .ok()
                .and_then(|r| image::resolve(&all, &r).map(|i| Image::key(&i.urn()) == key))
                .unwrap_or(false)
        })
        .map(|s| s.key)
        .collect();
    if !users.is_empty() {
        return Err(ApiError::Conflict(format!(
            "image {u} is in use by scale set(s) {}; change their image first",
            users.join(", ")
        )));
    }
    state.store.txn(vec![
        WriteOp::delete(Kind::Image, key, Expect::Revision(obj.revision)),
        WriteOp::Activity(views::user_event(&state, "", &obj.value.urn, "DeleteImage", "image deleted".into())),
    ])?;
    // The gallery keeps each image's files in a directory of its own: remove it.
    let path = match &obj.value.source {
        ImageSource::Directory { path } => PathBuf::from(path),
        ImageSource::Disk { path, .. } | ImageSource::Kernel { kernel: path, .. } => {
            PathBuf::from(path).parent().map(PathBuf::from).unwrap_or_default()
        }
    };
    if path.starts_with(&state.config.image_dir) && path != state.config.image_dir {
        let _ = std::fs::remove_dir_all(&path);
    }
    Ok(StatusCode::NO_CONTENT)
}
