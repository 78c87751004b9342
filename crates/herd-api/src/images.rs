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
    let src = PathBuf::from(&req.directory);
    if !src.is_absolute() {
        return Err(ApiError::invalid("directory", "must be an absolute path on the server's host"));
    }
    if !src.is_dir() {
        return Err(ApiError::invalid("directory", format!("'{}' is not a directory", src.display())));
    }
    let init = src.join("init");
    let executable =
        std::fs::metadata(&init).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false);
    if !executable {
        return Err(ApiError::Invalid(FieldError::new(
            "directory",
            format!("'{}' must hold an executable file named 'init' (the instance's first process)", src.display()),
        )));
    }
    let dest = state.config.image_dir.join(key.replace(':', "_"));
    let (from, to) = (src.clone(), dest.clone());
    tokio::task::spawn_blocking(move || {
        let _ = std::fs::remove_dir_all(&to);
        copy_dir(&from, &to)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::invalid("directory", format!("could not copy '{}': {e}", src.display())))?;
    let img = Image {
        id: format!("/images/{u}"),
        urn: u.to_string(),
        publisher: u.publisher.clone(),
        offer: u.offer.clone(),
        sku: u.sku.clone(),
        version: u.version.clone(),
        source: ImageSource::Directory { path: dest.to_string_lossy().into_owned() },
        guest_agent: false,
        created_at: state.clock.now(),
    };
    state.store.txn(vec![
        WriteOp::put(Kind::Image, key, &img, Expect::Absent)?,
        WriteOp::Activity(views::user_event(
            &state,
            "",
            &img.urn,
            "ImportImage",
            format!("image imported from {}", src.display()),
        )),
    ])?;
    Ok((StatusCode::CREATED, Json(img)))
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
