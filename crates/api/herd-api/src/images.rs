//! The local image gallery: import, list, show, delete (refused while a scale set uses it).
//!
//! Imports read nothing the API user could not give: the CLI uploads an image's files
//! (`PUT /v1/images/{urn}/files/{file}`, streamed, with a SHA-256 digest, a size cap and a
//! free-space check, written to a temporary file and renamed into place only once complete and
//! verified) and then asks for the import with `"uploaded": true`. A server-side path (`disk`,
//! `kernel`, `initrd`) is read only below a directory the operator allows (`[images]
//! import_roots`, default none), opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//! and only as a regular file. Content decides the format: a disk is qcow2 (without a backing
//! file or an external data file, which would make QEMU read another host file) or raw (not
//! qcow2, at least 1 MiB and a multiple of 512 bytes); a kernel is a Linux bzImage or arm64
//! Image; an initrd is a cpio archive, plain or compressed. A process image (a directory) is
//! uploaded as a tar archive (`files/directory`) or read below `import_roots`, and keeps only
//! regular files and directories ([`crate::image_tree`]). A failed import leaves no file behind.

use crate::{
    error::{ApiError, ErrorBody},
    image_tree,
    state::{ApiConfig, AppState},
    views::ImageImportRequest,
};
use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use herd_model::{
    image::{Image, ImageSource},
    FieldError, ImageUrn,
};
use herd_state::images;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path as FsPath, PathBuf};

/// Lists images.
#[utoipa::path(get, path = "/v1/images", tag = "images", responses((status = 200, body = Vec<Image>)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<Image>>, ApiError> {
    Ok(Json(state.run(|s| Ok(images::images(s)?)).await?))
}

fn parse_urn(urn: &str) -> Result<ImageUrn, ApiError> {
    Ok(ImageUrn::parse(urn).map_err(|mut e| {
        e.field = e.field.replace("image", "urn");
        e
    })?)
}

/// Where imports may read server-side files, and how large an upload may be.
#[derive(Debug, Clone)]
pub struct ImportConfig {
    /// Directories whose files a request may name (canonical, checked at startup).
    pub import_roots: Vec<PathBuf>,
    /// Largest file an upload or a server-side copy may have, in bytes.
    pub max_upload_bytes: u64,
}

impl Default for ImportConfig {
    fn default() -> Self {
        Self { import_roots: vec![], max_upload_bytes: 64 << 30 }
    }
}

/// The setting that allows server-side paths, named in refusals.
pub const IMPORT_ROOTS_SETTING: &str = "[images] import_roots";
/// The header carrying an upload's SHA-256 digest (lowercase hex).
pub const DIGEST_HEADER: &str = "x-content-sha256";
/// Where uploads wait for their import, under the gallery.
const UPLOADS: &str = ".uploads";

/// An import failure: an [`ApiError`], or a status it has no variant for (411, 413, 507), in the
/// same JSON body.
#[derive(Debug)]
pub enum ImportError {
    Api(ApiError),
    Status { status: StatusCode, code: &'static str, message: String },
}

impl From<ApiError> for ImportError {
    fn from(e: ApiError) -> Self {
        ImportError::Api(e)
    }
}

impl From<FieldError> for ImportError {
    fn from(e: FieldError) -> Self {
        ImportError::Api(e.into())
    }
}

impl axum::response::IntoResponse for ImportError {
    fn into_response(self) -> axum::response::Response {
        match self {
            ImportError::Api(e) => e.into_response(),
            ImportError::Status { status, code, message } => {
                let detail = crate::error::ErrorDetail { code: code.into(), message, target: None };
                (status, Json(ErrorBody { error: detail })).into_response()
            }
        }
    }
}

/// One file of an image, uploaded ahead of its import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Disk,
    Kernel,
    Initrd,
    /// A process-driver image directory, packed as a tar archive (see [`crate::image_tree`]).
    Directory,
}

impl FileKind {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "disk" => Some(FileKind::Disk),
            "kernel" => Some(FileKind::Kernel),
            "initrd" => Some(FileKind::Initrd),
            "directory" => Some(FileKind::Directory),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            FileKind::Disk => "disk",
            FileKind::Kernel => "kernel",
            FileKind::Initrd => "initrd",
            FileKind::Directory => "directory",
        }
    }
}

/// An uploaded file, waiting for `PUT /v1/images/{urn}` with `"uploaded": true`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UploadedFile {
    /// disk, kernel, initrd or directory.
    pub file: String,
    pub size: u64,
    pub sha256: String,
    /// What the content is: qcow2 or raw (disks), kernel, initrd, tar (directories).
    pub format: String,
}

/// A unique suffix for temporary and per-import names.
fn nonce() -> String {
    format!("{}-{:016x}", std::process::id(), rand::random::<u64>())
}

/// The gallery directory holding `key`'s staged uploads.
fn upload_dir(image_dir: &FsPath, key: &str) -> PathBuf {
    image_dir.join(UPLOADS).join(key.replace(':', "_"))
}

/// Refuses a write of `len` bytes when the gallery's file system has less room.
fn check_free_space(dir: &FsPath, len: u64) -> Result<(), ImportError> {
    let st = rustix::fs::statvfs(dir).map_err(|e| ApiError::internal(format!("statvfs {}: {e}", dir.display())))?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    if free < len {
        return Err(ImportError::Status {
            status: StatusCode::INSUFFICIENT_STORAGE,
            code: "InsufficientStorage",
            message: format!("the image gallery has {free} bytes free, less than the {len} bytes of this file"),
        });
    }
    Ok(())
}

fn too_large(field: &str, len: u64, max: u64) -> ImportError {
    ImportError::Status {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: "RequestEntityTooLarge",
        message: format!(
            "{field}: {len} bytes is more than the limit of {max} bytes; an operator can raise [images] max_upload_gib"
        ),
    }
}

/// Removes a temporary file or directory unless disarmed: a failed import leaves nothing.
struct Cleanup(Option<PathBuf>);

impl Cleanup {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(&p);
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

/// Uploads one file of an image (disk, kernel or initrd; or a process image's directory as a tar
/// archive) ahead of its import. The body is the file's bytes; `Content-Length` and `X-Content-SHA256` (lowercase hex) are required. The file
/// is checked (size cap, free space, digest, format by content) and kept only when all hold.
#[utoipa::path(put, path = "/v1/images/{urn}/files/{file}", tag = "images",
    params(
        ("urn" = String, Path, description = "publisher:offer:sku:version"),
        ("file" = String, Path, description = "disk, kernel, initrd or directory (a tar archive)"),
        ("X-Content-SHA256" = String, Header, description = "SHA-256 of the body, lowercase hex"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = UploadedFile), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 411, body = ErrorBody), (status = 413, body = ErrorBody), (status = 507, body = ErrorBody)))]
pub async fn upload(
    State(state): State<AppState>,
    Path((urn, file)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<UploadedFile>), ImportError> {
    use futures::StreamExt;
    use sha2::Digest;
    use tokio::io::AsyncWriteExt;
    let u = parse_urn(&urn)?;
    if u.is_latest() {
        return Err(
            ApiError::invalid("urn", "an imported image needs a concrete version such as 1.0.0, not 'latest'").into()
        );
    }
    let kind = FileKind::parse(&file).ok_or_else(|| {
        ApiError::invalid(
            "file",
            format!("'{file}' is not an image file; allowed values: disk, kernel, initrd, directory"),
        )
    })?;
    let key = Image::key(&u);
    let urn = u.clone();
    state.run(move |s| Ok(images::check_new_image(s, &urn)?)).await?;
    let want = headers
        .get(DIGEST_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
        .filter(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| ApiError::invalid("X-Content-SHA256", "give the body's SHA-256 as 64 hex digits"))?;
    let len: u64 = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or(ImportError::Status {
            status: StatusCode::LENGTH_REQUIRED,
            code: "LengthRequired",
            message: "an upload needs a Content-Length header".into(),
        })?;
    let max = state.config.images.max_upload_bytes;
    if len > max {
        return Err(too_large(kind.name(), len, max));
    }
    let dir = upload_dir(&state.config.image_dir, &key);
    tokio::fs::create_dir_all(&dir).await.map_err(|e| ApiError::io(&format!("creating {}", dir.display()), &e))?;
    check_free_space(&dir, len)?;
    let tmp = dir.join(format!("{}.{}.part", kind.name(), nonce()));
    let guard = Cleanup(Some(tmp.clone()));
    let internal = |e: std::io::Error| ImportError::from(ApiError::io("writing an upload", &e));
    let mut out = tokio::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).await.map_err(internal)?;
    let mut hasher = sha2::Sha256::new();
    let mut got: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid("body", format!("the upload broke off: {e}")))?;
        got += chunk.len() as u64;
        if got > len {
            return Err(ApiError::invalid("body", "the body is longer than its Content-Length").into());
        }
        hasher.update(&chunk);
        out.write_all(&chunk).await.map_err(internal)?;
    }
    out.sync_all().await.map_err(internal)?;
    drop(out);
    if got != len {
        return Err(ApiError::invalid("body", format!("the upload broke off after {got} of {len} bytes")).into());
    }
    let digest = hex::encode(hasher.finalize());
    if digest != want {
        return Err(ApiError::invalid(
            "X-Content-SHA256",
            format!("the body's SHA-256 is {digest}, not {want}; nothing was kept"),
        )
        .into());
    }
    let check = tmp.clone();
    let format = tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&check)?;
        Ok::<_, std::io::Error>(detect(kind, &mut f, len))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(internal)?
    .map_err(|why| ApiError::invalid(kind.name(), why))?;
    tokio::fs::rename(&tmp, dir.join(kind.name())).await.map_err(internal)?;
    guard.disarm();
    let file = UploadedFile { file: kind.name().into(), size: len, sha256: digest, format: format.into() };
    Ok((StatusCode::CREATED, Json(file)))
}

/// What a file's content is, or why it is refused (see the module doc).
fn detect(kind: FileKind, f: &mut std::fs::File, len: u64) -> Result<&'static str, String> {
    use std::io::Read;
    let mut head = vec![0u8; 4096];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(format!("cannot be read: {e}")),
        }
    }
    let head = &head[..n];
    let be64 = |at: usize| head.get(at..at + 8).map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()));
    let be32 = |at: usize| head.get(at..at + 4).map(|b| u32::from_be_bytes(b.try_into().unwrap_or_default()));
    match kind {
        FileKind::Disk if head.starts_with(b"QFI\xfb") => {
            let version = be32(4).ok_or("is a truncated qcow2 image")?;
            if !(2..=3).contains(&version) {
                return Err(format!("is qcow2 version {version}; herd reads versions 2 and 3"));
            }
            if be64(8).ok_or("is a truncated qcow2 image")? != 0 {
                return Err("is a qcow2 image with a backing file; import a self-contained image (flatten it with 'qemu-img convert -O qcow2 IN OUT')".into());
            }
            // Incompatible feature bit 2: the data lives in an external file named in the image.
            if version == 3 && be64(72).ok_or("is a truncated qcow2 image")? & 0b100 != 0 {
                return Err("is a qcow2 image with an external data file; import a self-contained image (qemu-img convert -O qcow2 IN OUT)".into());
            }
            Ok("qcow2")
        }
        FileKind::Disk => {
            if len < 1 << 20 || !len.is_multiple_of(512) {
                return Err(format!(
                    "is neither qcow2 nor a raw disk ({len} bytes; a raw disk is at least 1 MiB and a multiple of 512 bytes)"
                ));
            }
            Ok("raw")
        }
        FileKind::Kernel => {
            let bzimage = head.get(0x202..0x206) == Some(b"HdrS");
            let arm64 = head.get(0x38..0x3c) == Some(b"ARM\x64");
            if !(bzimage || arm64) {
                return Err("is not a Linux kernel (an x86 bzImage or an arm64 Image)".into());
            }
            Ok("kernel")
        }
        FileKind::Initrd => {
            let known: [&[u8]; 9] = [
                b"070701",
                b"070702",
                b"070707",
                &[0x1f, 0x8b],
                &[0x28, 0xb5, 0x2f, 0xfd],
                &[0xfd, b'7', b'z', b'X', b'Z', 0],
                &[0x02, 0x21, 0x4c, 0x18],
                b"BZh",
                &[0x5d, 0, 0],
            ];
            if !known.iter().any(|m| head.starts_with(m)) {
                return Err("is not an initrd (a cpio archive, plain or gzip/zstd/xz/lz4/bzip2/lzma compressed)".into());
            }
            Ok("initrd")
        }
        FileKind::Directory => {
            // POSIX ustar ("ustar\0") and GNU ("ustar ") headers both start so at offset 257.
            if !len.is_multiple_of(512) || head.get(257..262) != Some(b"ustar") {
                return Err(
                    "is not a tar archive (pack the directory with 'tar -cf', or let 'herd image import --dir' do it)"
                        .into(),
                );
            }
            Ok("tar")
        }
    }
}

/// Imports an image into the gallery, from files uploaded ahead (`"uploaded": true`), from
/// server-side paths below `[images] import_roots`, or (process driver) from a directory. The
/// files are copied into the gallery, so later changes to the sources do not change instances.
#[utoipa::path(put, path = "/v1/images/{urn}", tag = "images",
    params(("urn" = String, Path, description = "publisher:offer:sku:version")),
    request_body = ImageImportRequest,
    responses((status = 201, body = Image), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 507, body = ErrorBody)))]
pub async fn import(
    State(state): State<AppState>,
    Path(urn): Path<String>,
    Json(req): Json<ImageImportRequest>,
) -> Result<(StatusCode, Json<Image>), ImportError> {
    let u = parse_urn(&urn)?;
    if u.is_latest() {
        return Err(
            ApiError::invalid("urn", "an imported image needs a concrete version such as 1.0.0, not 'latest'").into()
        );
    }
    let key = Image::key(&u);
    let urn = u.clone();
    state.run(move |s| Ok(images::check_new_image(s, &urn)?)).await?;
    // Each import writes a directory of its own: two imports never touch each other's files,
    // and a failed one removes its directory whole.
    let dest = state.config.image_dir.join(format!("{}.{}", key.replace(':', "_"), nonce()));
    let guard = Cleanup(Some(dest.clone()));
    let staged = upload_dir(&state.config.image_dir, &key);
    let (source, guest_agent, from) = stage(&req, &dest, &staged, &state.config).await?;
    // The content digest joined hosts fetch the image by (reads every file: off the runtime).
    let hashed = source.clone();
    let digest = tokio::task::spawn_blocking(move || herd_model::image::content::digest(&hashed))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::invalid("directory", format!("the imported image cannot be hashed: {e}")))?;
    let mut img = images::image_record(&u, source, guest_agent, state.clock.now());
    img.digest = Some(digest);
    let (record, now) = (img.clone(), state.clock.now());
    state.run(move |s| Ok(images::add_image(s, &record, &from, now)?)).await?;
    guard.disarm();
    if req.uploaded == Some(true) {
        let _ = tokio::fs::remove_dir_all(&staged).await;
    }
    Ok((StatusCode::CREATED, Json(img)))
}

/// Copies the server-side file `p` (below `[images] import_roots`, opened safely) to `to`,
/// within the size cap. Returns the bytes copied.
fn copy_server_file(field: &str, p: &str, config: &ApiConfig, to: &FsPath) -> Result<u64, ImportError> {
    use std::io::Read;
    let path = PathBuf::from(p);
    let refuse = |msg: String| ImportError::from(ApiError::invalid(field, msg));
    if !path.is_absolute() {
        return Err(refuse("must be an absolute path on the server's host".into()));
    }
    let roots = &config.images.import_roots;
    let mut src = herd_state::beneath::open_beneath(IMPORT_ROOTS_SETTING, roots, &path).map_err(|e| match e {
        herd_state::beneath::FileFetchError::Off { .. } => refuse(format!(
            "reading '{}' on the server is off: the server reads only paths below {IMPORT_ROOTS_SETTING} (none are set); 'herd image import' uploads the file instead",
            path.display()
        )),
        other => refuse(other.to_string()),
    })?;
    let len = src.metadata().map(|m| m.len()).unwrap_or(0);
    let max = config.images.max_upload_bytes;
    if len > max {
        return Err(too_large(field, len, max));
    }
    check_free_space(to.parent().unwrap_or(to), len)?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|e| ApiError::io(&format!("creating {}", to.display()), &e))?;
    // The cap holds while copying, whatever the metadata said.
    let copied = std::io::copy(&mut (&mut src).take(max + 1), &mut out)
        .map_err(|e| ApiError::io(&format!("copying {} into the gallery", path.display()), &e))?;
    if copied > max {
        return Err(too_large(field, copied, max));
    }
    Ok(copied)
}

/// Puts one image file into `dest/name`: the staged upload when `uploaded`, else the server-side
/// path. Checks its format by content; returns it.
fn place(
    kind: FileKind,
    server_path: Option<&str>,
    staged: &FsPath,
    config: &ApiConfig,
    dest: &FsPath,
    name: &str,
) -> Result<(&'static str, PathBuf), ImportError> {
    let field = kind.name();
    let tmp = dest.join(format!("{name}.part"));
    let len = match server_path {
        Some(p) => copy_server_file(field, p, config, &tmp)?,
        None => {
            let from = staged.join(field);
            std::fs::rename(&from, &tmp).map_err(|_| {
                ApiError::invalid(
                    field,
                    format!("no {field} was uploaded for this image (PUT /v1/images/{{urn}}/files/{field} first)"),
                )
            })?;
            std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0)
        }
    };
    let mut f = std::fs::File::open(&tmp).map_err(ApiError::internal)?;
    let format = detect(kind, &mut f, len).map_err(|why| ApiError::invalid(field, why))?;
    let name = if kind == FileKind::Disk { format!("disk.{format}") } else { name.to_string() };
    let target = dest.join(name);
    std::fs::rename(&tmp, &target).map_err(ApiError::internal)?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o444)).map_err(ApiError::internal)?;
    Ok((format, target))
}

/// Checks the request and copies its files into `dest` (the import's own directory in the
/// gallery). Returns the source as stored, whether the image has the guest agent, and where it
/// came from (for the log).
async fn stage(
    req: &ImageImportRequest,
    dest: &FsPath,
    staged: &FsPath,
    config: &ApiConfig,
) -> Result<Staged, ImportError> {
    check_request(req)?;
    let uploaded = req.uploaded == Some(true);
    let staging = Staging { req, dest, staged, config };
    if req.directory.is_some() || (uploaded && staged.join(FileKind::Directory.name()).is_file()) {
        return stage_directory(staging).await;
    }
    stage_files(staging).await
}

/// One import being staged: the request, the import's directory in the gallery, where its
/// uploads wait, and the server's configuration.
#[derive(Clone, Copy)]
struct Staging<'a> {
    req: &'a ImageImportRequest,
    dest: &'a FsPath,
    staged: &'a FsPath,
    config: &'a ApiConfig,
}

/// What a staged import is: its source, whether it has a guest agent (None: detected at the
/// first boot), and where it came from (for the log).
type Staged = (ImageSource, Option<bool>, String);

/// Refuses a request that names no source, more than one, or options of another kind.
fn check_request(req: &ImageImportRequest) -> Result<(), ImportError> {
    let uploaded = req.uploaded == Some(true);
    let given =
        [req.directory.is_some(), req.disk.is_some(), req.kernel.is_some(), uploaded].iter().filter(|x| **x).count();
    if given != 1 {
        return Err(ApiError::invalid(
            "directory",
            "give exactly one of directory (process driver), disk or kernel (qemu driver), or uploaded: true after uploading the files",
        )
        .into());
    }
    if uploaded && req.initrd.is_some() {
        return Err(ApiError::invalid("initrd", "with uploaded: true the initrd is uploaded too, not named").into());
    }
    if req.kernel.is_none() && !uploaded && (req.initrd.is_some() || req.cmdline.is_some()) {
        return Err(ApiError::invalid("initrd", "initrd and cmdline go with kernel").into());
    }
    if let Some(c) = &req.cmdline {
        if c.len() > 4096 || c.contains(['\n', '\0']) {
            return Err(ApiError::invalid("cmdline", "must be one line of at most 4096 characters").into());
        }
    }
    Ok(())
}

/// Stages a process image: a server-side directory copied, or an uploaded tar unpacked.
async fn stage_directory(Staging { req, dest, staged, config }: Staging<'_>) -> Result<Staged, ImportError> {
    let uploaded = req.uploaded == Some(true);
    let staged_tree = staged.join(FileKind::Directory.name());
    if uploaded && [FileKind::Disk, FileKind::Kernel].iter().any(|k| staged.join(k.name()).is_file()) {
        return Err(ApiError::invalid(
            "uploaded",
            "both a directory and disk or kernel files were uploaded for this image; an image is one or the other (delete the image's uploads by importing under a new version)",
        )
        .into());
    }
    let limits = image_tree::TreeLimits::with_max_bytes(config.images.max_upload_bytes);
    let (dir, to, roots) = (req.directory.clone(), dest.to_path_buf(), config.images.import_roots.clone());
    let from = dir.clone().unwrap_or_else(|| "an upload".into());
    tokio::task::spawn_blocking(move || match dir {
        Some(d) => {
            let path = PathBuf::from(&d);
            if !path.is_absolute() {
                return Err(ApiError::invalid("directory", "must be an absolute path on the server's host"));
            }
            image_tree::copy_beneath(IMPORT_ROOTS_SETTING, &roots, &path, &to, limits).map(drop).map_err(|e| {
                match e {
                    image_tree::BeneathError::Off { .. } => ApiError::invalid(
                        "directory",
                        format!("reading '{d}' on the server is off: the server reads only directories below {IMPORT_ROOTS_SETTING} (none are set); 'herd image import --dir' uploads the directory instead"),
                    ),
                    image_tree::BeneathError::Tree(t) if !t.is_input() => ApiError::internal(t),
                    other => ApiError::invalid("directory", other.to_string()),
                }
            })
        }
        None => image_tree::unpack_tar(&staged_tree, &to, limits).map(drop).map_err(|e| {
            if e.is_input() {
                ApiError::invalid("directory", e.to_string())
            } else {
                ApiError::internal(e)
            }
        }),
    })
    .await
    .map_err(ApiError::internal)??;
    let init = dest.join("init");
    let executable =
        std::fs::metadata(&init).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false);
    if !executable {
        return Err(ApiError::Invalid(FieldError::new(
            "directory",
            format!("{from} must hold an executable file named 'init' (the instance's first process)"),
        ))
        .into());
    }
    let source = ImageSource::Directory { path: dest.to_string_lossy().into_owned() };
    // A process image runs no QEMU guest agent.
    Ok((source, Some(req.guest_agent.unwrap_or(false)), from))
}

/// Stages a qemu image: a disk, or a kernel with an optional initrd.
async fn stage_files(Staging { req, dest, staged, config }: Staging<'_>) -> Result<Staged, ImportError> {
    let uploaded = req.uploaded == Some(true);
    std::fs::create_dir_all(dest).map_err(|e| ApiError::io(&format!("creating {}", dest.display()), &e))?;
    let (req, dest, staged, config) = (req.clone(), dest.to_path_buf(), staged.to_path_buf(), config.clone());
    tokio::task::spawn_blocking(move || {
        let has_staged = |k: FileKind| staged.join(k.name()).is_file();
        let disk_wanted = req.disk.is_some() || (uploaded && has_staged(FileKind::Disk));
        if disk_wanted {
            let (format, target) = place(FileKind::Disk, req.disk.as_deref(), &staged, &config, &dest, "disk")?;
            let source = ImageSource::Disk { path: target.to_string_lossy().into_owned(), format: format.into() };
            let from = req.disk.clone().unwrap_or_else(|| "an upload".into());
            // Unless told, the agent is detected when the image's first VM boots.
            return Ok((source, req.guest_agent, from));
        }
        if uploaded && !has_staged(FileKind::Kernel) {
            return Err(ApiError::invalid(
                "uploaded",
                "nothing was uploaded for this image: PUT /v1/images/{urn}/files/disk (or kernel, and initrd) first",
            )
            .into());
        }
        let (_, kernel) = place(FileKind::Kernel, req.kernel.as_deref(), &staged, &config, &dest, "vmlinuz")?;
        let initrd = if req.initrd.is_some() || (uploaded && has_staged(FileKind::Initrd)) {
            Some(place(FileKind::Initrd, req.initrd.as_deref(), &staged, &config, &dest, "initrd.img")?.1)
        } else {
            None
        };
        // Unless told: `qemu-ga` in the initrd says present; otherwise it is detected at boot (an
        // agent elsewhere, e.g. on a data disk, is not ruled out by a look at the initrd).
        let guest_agent = match (req.guest_agent, &initrd) {
            (Some(g), _) => Some(g),
            (None, Some(i)) => initrd_has_agent(i).then_some(true),
            (None, None) => None,
        };
        let source = ImageSource::Kernel {
            kernel: kernel.to_string_lossy().into_owned(),
            initrd: initrd.map(|p| p.to_string_lossy().into_owned()),
            cmdline: req.cmdline.clone(),
        };
        let from = req.kernel.clone().unwrap_or_else(|| "an upload".into());
        Ok((source, guest_agent, from))
    })
    .await
    .map_err(ApiError::internal)?
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
    Ok(Json(state.run(move |s| Ok(images::resolve_image(s, &u)?)).await?))
}

/// Deletes an image, unless a scale set's model uses it.
#[utoipa::path(delete, path = "/v1/images/{urn}", tag = "images",
    params(("urn" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(State(state): State<AppState>, Path(urn): Path<String>) -> Result<StatusCode, ApiError> {
    let u = parse_urn(&urn)?;
    let (urn, now) = (u.clone(), state.clock.now());
    let deleted = state.run(move |s| Ok(images::delete_image(s, &urn, now)?)).await?;
    // The gallery keeps each image's files in a directory of its own: remove it.
    let path = match &deleted.source {
        ImageSource::Directory { path } => PathBuf::from(path),
        ImageSource::Disk { path, .. } | ImageSource::Kernel { kernel: path, .. } => {
            PathBuf::from(path).parent().map(PathBuf::from).unwrap_or_default()
        }
    };
    if path.starts_with(&state.config.image_dir) && path != state.config.image_dir {
        let _ = std::fs::remove_dir_all(&path);
    }
    let _ = std::fs::remove_dir_all(upload_dir(&state.config.image_dir, &Image::key(&u)));
    Ok(StatusCode::NO_CONTENT)
}

/// Drops uploads that never became an image (a client that stopped between its uploads and its
/// import). Called at server start, when no upload can be under way.
pub fn clear_uploads(image_dir: &FsPath) {
    let _ = std::fs::remove_dir_all(image_dir.join(UPLOADS));
}
