//! An extension's `fileUris`: the `file://` ones read here on the server, the `http(s)` ones
//! handed to the machine that runs the instance with the rules it downloads them under.
//!
//! Why the split: an `http(s)` file is fetched by the host that runs the instance (the server
//! for its own, `herd agent` for a joined host's), with that host's network position, by the
//! one implementation both use (`herd_egress::fetch`), under the rules this server's config
//! sets ([`FetchLimits`] → [`herd_egress::fetch::FetchRules`]). A `file://` URI names a file
//! below `[extensions] file_roots`, directories on the server's machine, so the server reads
//! it and sends the bytes.
//!
//! Why so guarded: the host fetches what an API user names, with herd's privileges.
//! - `http(s)`: see `herd_egress::fetch` (no loopback, link-local or herd-owned address, nor
//!   the virtual networks' address spaces, unless `[extensions] allow_fetch_from` allows it,
//!   checked on the address actually connected to, after DNS and on every redirect).
//! - `file://` is off unless `[extensions] file_roots` names directories. A path is opened with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` relative to the root's descriptor (never
//!   canonicalised first: a symlink swapped in between would win that race), non-blocking, and
//!   only a regular file is read.
//! - The size limit counts bytes as they are read (metadata can lie: `/proc` files and devices
//!   report 0), and one deadline covers the whole fetch: connect, redirects and body, or every
//!   read of a file.

use herd_egress::fetch::FetchRules;
use herd_egress::AddressPolicy;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

pub use herd_egress::fetch::{file_name, without_query, ALLOW_SETTING};

/// The config setting that turns `file://` on, named in refusals.
pub const FILE_ROOTS_SETTING: &str = "[extensions] file_roots";

/// Limits on one download, and where downloads may come from.
#[derive(Debug, Clone)]
pub struct FetchLimits {
    /// Largest file accepted, in bytes.
    pub max_bytes: u64,
    /// Whole-download deadline.
    pub timeout: Duration,
    /// Directories `file://` URIs may read below (absolute, without symlinks). Empty: `file://`
    /// is refused.
    pub file_roots: Vec<PathBuf>,
    /// Where `http(s)` URIs may connect.
    pub addresses: AddressPolicy,
}

impl Default for FetchLimits {
    fn default() -> Self {
        let rules = FetchRules::default();
        Self {
            max_bytes: rules.max_bytes,
            timeout: rules.timeout,
            file_roots: vec![],
            addresses: AddressPolicy::new(ALLOW_SETTING, vec![]),
        }
    }
}

/// True for a URI this server reads itself (`file:`); any other is downloaded by the host.
pub fn is_file_uri(url: &str) -> bool {
    url.starts_with("file:")
}

/// Reads `file://` URIs within limits, and names the rules `http(s)` downloads are held to.
#[derive(Clone)]
pub struct Fetcher {
    limits: FetchLimits,
}

impl Fetcher {
    pub fn new(limits: FetchLimits) -> Self {
        Self { limits }
    }

    /// A fetcher that also refuses `extra` ranges (the virtual networks' address spaces).
    pub fn refusing(&self, extra: Vec<(herd_egress::Net, String)>) -> Self {
        let mut limits = self.limits.clone();
        for (net, why) in extra {
            limits.addresses = limits.addresses.refuse(net, why);
        }
        Self::new(limits)
    }

    /// The rules a host downloads `http(s)` URIs under.
    pub fn rules(&self) -> FetchRules {
        FetchRules::new(self.limits.max_bytes, self.limits.timeout, &self.limits.addresses)
    }

    /// Reads a `file:` URI; the error says why, without repeating the URL.
    pub async fn read_file(&self, url: &str) -> Result<Vec<u8>, String> {
        let limits = &self.limits;
        let deadline = Instant::now() + limits.timeout;
        let path = file_path(url)?;
        let (roots, max) = (limits.file_roots.clone(), limits.max_bytes);
        let read = tokio::task::spawn_blocking(move || read_beneath(&roots, &path, max, deadline));
        match tokio::time::timeout(limits.timeout, read).await {
            Ok(r) => r.map_err(|e| e.to_string())?.map_err(|e| match e {
                FileFetchError::Off { .. } => format!(
                    "file:// URIs are off on this server; an operator can allow directories with {FILE_ROOTS_SETTING} in herd.toml"
                ),
                other => other.to_string(),
            }),
            Err(_) => Err(herd_egress::fetch::timed_out(limits.timeout)),
        }
    }
}

/// The absolute path a `file:` URL names: `file:///a/b` or `file://localhost/a/b`,
/// percent-decoded; `.` and `..` segments are refused (no URL needs them).
fn file_path(url: &str) -> Result<PathBuf, String> {
    let rest = url.strip_prefix("file://").ok_or("a file URI is written file:///absolute/path")?;
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let rest = rest.strip_prefix("localhost").unwrap_or(rest);
    if !rest.starts_with('/') {
        return Err("a file URI needs an absolute path (file:///dir/file); it has a host or a relative path".into());
    }
    let decoded = percent_decode(rest).ok_or("has a bad percent-escape")?;
    let path = PathBuf::from(decoded);
    if path.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return Err("may not contain '.' or '..' segments".into());
    }
    Ok(path)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    if out.contains(&0) {
        return None;
    }
    String::from_utf8(out).ok()
}

// Opening a file below allowed roots is shared with the API's server-side image imports.
pub use herd_state::beneath::{open_beneath, FileFetchError};

/// Reads `path`, which must lie below one of `roots`, opened safely (see the module doc).
pub fn read_beneath(roots: &[PathBuf], path: &Path, max: u64, deadline: Instant) -> Result<Vec<u8>, FileFetchError> {
    let mut file = open_beneath(FILE_ROOTS_SETTING, roots, path)?;
    let shown = path.display().to_string();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if Instant::now() > deadline {
            return Err(FileFetchError::TimedOut);
        }
        let n = file.read(&mut buf).map_err(|source| FileFetchError::Read { path: shown.clone(), source })?;
        if n == 0 {
            return Ok(out);
        }
        if out.len() as u64 + n as u64 > max {
            return Err(FileFetchError::TooBig(max));
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Checks the operator's `file_roots`-like setting at startup: each entry must be an existing
/// absolute directory, is canonicalised (the operator's own path, read once), and may neither
/// hold nor lie inside `data_dir` (the token, the sealing key and the store live there), nor
/// lie in `/proc`, `/sys` or `/dev`. `setting` names the setting in errors.
pub fn check_roots(setting: &str, roots: &[PathBuf], data_dir: &Path) -> Result<Vec<PathBuf>, String> {
    let data = data_dir.canonicalize().unwrap_or_else(|_| data_dir.to_path_buf());
    let mut out = Vec::new();
    for (i, r) in roots.iter().enumerate() {
        if !r.is_absolute() {
            return Err(format!("{setting}[{i}] '{}' must be an absolute path", r.display()));
        }
        let c = r.canonicalize().map_err(|e| format!("{setting}[{i}] '{}' cannot be used: {e}", r.display()))?;
        if !c.is_dir() {
            return Err(format!("{setting}[{i}] '{}' is not a directory", r.display()));
        }
        if data.starts_with(&c) || c.starts_with(&data) {
            return Err(format!(
                "{setting}[{i}] '{}' holds or lies inside the server's data dir {} (its API token, sealing key and store); name a directory apart from it",
                r.display(),
                data.display()
            ));
        }
        for special in ["/proc", "/sys", "/dev"] {
            if c.starts_with(special) {
                return Err(format!(
                    "{setting}[{i}] '{}' lies in {special}; name a directory of plain files",
                    r.display()
                ));
            }
        }
        out.push(c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
