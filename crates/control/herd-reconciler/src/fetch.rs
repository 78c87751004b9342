//! Downloads an extension's `fileUris` on the host, before they are copied into the instance.
//!
//! Why on the host: a VM may have no route out and no download tool, and the host can apply one
//! size limit and one timeout to every file, with an error that names the URL (redacted by the
//! caller when it came from protected settings).
//!
//! Why so guarded: the host fetches what an API user names, with the server's privileges.
//! - `http(s)` goes through [`herd_egress::Egress`]: no loopback, link-local or herd-owned
//!   address (nor the virtual networks' address spaces) unless `[extensions] allow_fetch_from`
//!   allows it, checked on the address actually connected to, after DNS and on every redirect.
//! - `file://` is off unless `[extensions] file_roots` names directories. A path is opened with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` relative to the root's descriptor (never
//!   canonicalised first: a symlink swapped in between would win that race), non-blocking, and
//!   only a regular file is read.
//! - The size limit counts bytes as they are read (metadata can lie: `/proc` files and devices
//!   report 0), and one deadline covers the whole fetch: connect, redirects and body, or every
//!   read of a file.

use herd_egress::{AddressPolicy, Egress};
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// The config setting that turns `file://` on, named in refusals.
pub const FILE_ROOTS_SETTING: &str = "[extensions] file_roots";
/// The config setting that allows more addresses, named in refusals.
pub const ALLOW_SETTING: &str = "[extensions] allow_fetch_from";

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
        Self {
            max_bytes: 64 << 20,
            timeout: Duration::from_secs(60),
            file_roots: vec![],
            addresses: AddressPolicy::new(ALLOW_SETTING, vec![]),
        }
    }
}

/// The file name a URL is saved under: its last path segment, without query or fragment.
pub fn file_name(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next()?;
    let name = path.rsplit('/').next()?;
    let ok = !name.is_empty() && name != "." && name != ".." && !name.starts_with(".herd");
    ok.then(|| name.to_string())
}

/// Downloads within limits; one per extension runner (it holds the HTTP client).
#[derive(Clone)]
pub struct Fetcher {
    limits: FetchLimits,
    http: Egress,
}

impl Fetcher {
    pub fn new(limits: FetchLimits) -> Self {
        let http = Egress::new(limits.addresses.clone(), limits.timeout);
        Self { limits, http }
    }

    /// A fetcher that also refuses `extra` ranges (the virtual networks' address spaces).
    pub fn refusing(&self, extra: Vec<(herd_egress::Net, String)>) -> Self {
        if extra.is_empty() {
            return self.clone();
        }
        let mut limits = self.limits.clone();
        for (net, why) in extra {
            limits.addresses = limits.addresses.refuse(net, why);
        }
        Self::new(limits)
    }

    /// Fetches `url`; the error says why, without repeating the URL.
    pub async fn fetch(&self, url: &str) -> Result<Vec<u8>, String> {
        let limits = &self.limits;
        let deadline = Instant::now() + limits.timeout;
        if url.starts_with("file:") {
            let path = file_path(url)?;
            let (roots, max) = (limits.file_roots.clone(), limits.max_bytes);
            let read = tokio::task::spawn_blocking(move || read_beneath(&roots, &path, max, deadline));
            return match tokio::time::timeout(limits.timeout, read).await {
                Ok(r) => r.map_err(|e| e.to_string())?.map_err(|e| match e {
                    FileFetchError::Off { .. } => format!(
                        "file:// URIs are off on this server; an operator can allow directories with {FILE_ROOTS_SETTING} in herd.toml"
                    ),
                    other => other.to_string(),
                }),
                Err(_) => Err(timed_out(limits.timeout)),
            };
        }
        let too_big = || format!("is larger than the limit of {} bytes", limits.max_bytes);
        let work = async {
            let req = self.http.request(reqwest::Method::GET, url).map_err(|e| e.to_string())?;
            let mut resp = req.send().await.map_err(|e| describe(&e))?;
            if !resp.status().is_success() {
                return Err(format!("answered HTTP {}", resp.status()));
            }
            if resp.content_length().is_some_and(|n| n > limits.max_bytes) {
                return Err(too_big());
            }
            let mut out = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| describe(&e))? {
                if out.len() as u64 + chunk.len() as u64 > limits.max_bytes {
                    return Err(too_big());
                }
                out.extend_from_slice(&chunk);
            }
            Ok(out)
        };
        match tokio::time::timeout(limits.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(timed_out(limits.timeout)),
        }
    }
}

fn timed_out(t: Duration) -> String {
    format!("timed out after {}s", t.as_secs())
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

/// reqwest's error without the URL (the caller names it, redacted if need be); a refusal by the
/// address policy is told as such.
fn describe(e: &reqwest::Error) -> String {
    if let Some(why) = herd_egress::refusal_in(e) {
        return format!("refused: {why}");
    }
    let mut msg = e.without_url_ref().to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        if self.is_connect() {
            "could not connect".into()
        } else if self.is_timeout() {
            "timed out".into()
        } else if self.is_body() || self.is_decode() {
            "the download broke off".into()
        } else {
            "request failed".into()
        }
    }
}

#[cfg(test)]
mod tests;
