//! The CLI's HTTP client: finds the server and its token, and turns API errors into messages
//! that name the field and the allowed values.
//!
//! Why a crate of its own: the `herd` binary's commands, the benchmarks (`herd-bench`) and the
//! walkthrough runner (`herd-demo`) all talk to a server through it, and none of them may
//! depend on the `herd` binary crate. Its errors are `anyhow` ones ending at the user's
//! terminal, with the API's own failure kept as a typed [`ApiFailure`] to react to (404, 409).
//!
//! Trust: an `https://` server must present a certificate that chains to the cluster CA bundle
//! (`--ca-file`/`HERD_CA_FILE`, else `tls/ca.pem` in the data dir), and to nothing else; with
//! no bundle at all, to the platform's public roots (an operator's certificate from a public
//! CA). A refused certificate ends in a message that says how to fetch and pin the right CA.

#![forbid(unsafe_code)]

pub mod image_upload;

use anyhow::{anyhow, Result};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::path::PathBuf;

/// A connection to one herd server.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    token_source: String,
    /// The CA bundle file this client trusts (for the hint when a certificate is refused).
    trust: Trust,
    http: reqwest::Client,
}

/// What an `https://` server's certificate must chain to.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The CA bundle read from this file.
    File(PathBuf),
    /// A bundle handed over in memory (an in-process server under test or benchmark).
    Bundle(String),
    /// No bundle was found (at this path): the platform's public roots.
    PublicRoots(PathBuf),
}

impl Trust {
    /// The bundle `ca_file` names, else `tls/ca.pem` in `data_dir` if it exists, else the
    /// platform's roots.
    pub fn find(ca_file: Option<PathBuf>, data_dir: &std::path::Path) -> Self {
        match ca_file {
            Some(f) => Trust::File(f),
            None => {
                let f = data_dir.join("tls").join("ca.pem");
                if f.exists() {
                    Trust::File(f)
                } else {
                    Trust::PublicRoots(f)
                }
            }
        }
    }

    fn describe(&self) -> std::path::PathBuf {
        match self {
            Trust::File(p) | Trust::PublicRoots(p) => p.clone(),
            Trust::Bundle(_) => PathBuf::from("(the bundle of the server under test)"),
        }
    }
}

/// An error the API returned, kept apart so callers can react to 404 and 409.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiFailure {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl Client {
    /// `server` and `token` come from flags or the environment; without a token the token file in
    /// `data_dir` is read (the CLI passes its default data dir when none was given).
    pub fn new(server: &str, token: Option<String>, data_dir: PathBuf, ca_file: Option<PathBuf>) -> Result<Self> {
        let trust = Trust::find(ca_file, &data_dir);
        let (token, token_source) = match token {
            Some(t) => (Some(t), "--token/HERD_TOKEN".to_string()),
            None => {
                let path = data_dir.join(herd_api::auth::TOKEN_FILE);
                let t = std::fs::read_to_string(&path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
                (t, path.display().to_string())
            }
        };
        Self::build(server, token, token_source, trust)
    }

    /// A client of a server whose token and CA bundle are known (an in-process server under
    /// test or benchmark; `ca_bundle` is `None` for plain HTTP).
    pub fn with_token(server: &str, token: String, ca_bundle: Option<&str>) -> Result<Self> {
        let trust = ca_bundle.map_or(Trust::PublicRoots(PathBuf::new()), |b| Trust::Bundle(b.to_string()));
        Self::build(server, Some(token), "--token/HERD_TOKEN".to_string(), trust)
    }

    fn build(server: &str, token: Option<String>, token_source: String, trust: Trust) -> Result<Self> {
        let http = http_client(&trust)?.timeout(std::time::Duration::from_secs(120)).build()?;
        Ok(Self { base: server.trim_end_matches('/').to_string(), token, token_source, trust, http })
    }

    /// The same client opening a new connection (and, over HTTPS, a new TLS handshake) for
    /// every request, as separate CLI invocations do.
    pub fn one_connection_per_request(&self) -> Result<Self> {
        let http =
            http_client(&self.trust)?.pool_max_idle_per_host(0).timeout(std::time::Duration::from_secs(120)).build()?;
        Ok(Self { http, ..self.clone() })
    }

    /// Sends a request; returns the JSON body (Null for empty bodies).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Value> {
        // `.` and `..` are never valid names, and a URL resolves them as "here" and "up", so
        // the request would reach another resource (or none): refuse before sending.
        let route = path.split('?').next().unwrap_or(path);
        if let Some(seg) = route.split('/').find(|s| {
            let l = s.to_ascii_lowercase();
            matches!(l.as_str(), "." | ".." | "%2e" | ".%2e" | "%2e." | "%2e%2e")
        }) {
            let shown = seg.to_ascii_lowercase().replace("%2e", ".");
            return Err(anyhow!(
                "'{shown}' is not a valid name: names start with a letter or digit and do not end with '.'"
            ));
        }
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        self.send(req, &url).await
    }

    /// Sends a built request and decodes the answer (an API error becomes an [`ApiFailure`]).
    async fn send(&self, req: reqwest::RequestBuilder, url: &str) -> Result<Value> {
        let resp = req.send().await.map_err(|e| {
            if let Some(hint) = untrusted(&e, &self.trust) {
                anyhow!("cannot talk to the herd server at {}: {hint}", self.base)
            } else if e.is_connect() {
                anyhow!(
                    "cannot reach the herd server at {} ({}); is 'herd server' running? Point to it with --server or HERD_SERVER",
                    self.base,
                    e
                )
            } else {
                anyhow!("request to {url} failed: {e}")
            }
        })?;
        let status = resp.status();
        let text = resp.text().await?;
        let value: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok(value);
        }
        let err = value.get("error");
        let code = err.and_then(|e| e.get("code")).and_then(Value::as_str).unwrap_or("Error").to_string();
        let mut message =
            err.and_then(|e| e.get("message")).and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| {
                match &value {
                    // An empty answer (or one from something that is not herd): say what came back.
                    Value::Null => format!("the server answered {status} with no error details"),
                    Value::String(t) => format!("the server answered {status}: {t}"),
                    other => format!("the server answered {status}: {other}"),
                }
            });
        if let Some(target) = err.and_then(|e| e.get("target")).and_then(Value::as_str).filter(|t| !t.is_empty()) {
            if !message.starts_with(target) {
                message = format!("{target}: {message}");
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            message = match &self.token {
                None => {
                    format!("{message}. No token was found in {}; pass --token or set HERD_TOKEN", self.token_source)
                }
                Some(_) => format!("{message}. The token from {} was refused", self.token_source),
            };
        }
        Err(ApiFailure { status, code, message }.into())
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.call(Method::GET, path, None, &[]).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.call(Method::POST, path, Some(body), &[]).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value> {
        self.call(Method::PUT, path, Some(body), &[]).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value> {
        self.call(Method::DELETE, path, None, &[]).await
    }

    /// PUTs `file`'s bytes to `path`, streamed, with its length and SHA-256 (`sha256`, hex);
    /// `progress` hears the bytes sent so far. No overall timeout: a large image takes long.
    pub async fn upload(
        &self,
        path: &str,
        file: &std::path::Path,
        sha256: &str,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<Value> {
        use tokio::io::AsyncReadExt;
        let f = tokio::fs::File::open(file).await?;
        let len = f.metadata().await?.len();
        let progress = std::sync::Arc::new(progress);
        let stream = futures::stream::unfold((f, 0u64), move |(mut f, sent)| {
            let progress = progress.clone();
            async move {
                let mut buf = vec![0u8; 1 << 20];
                match f.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        progress(sent + n as u64);
                        Some((Ok::<_, std::io::Error>(buf), (f, sent + n as u64)))
                    }
                    Err(e) => Some((Err(e), (f, sent))),
                }
            }
        });
        let url = format!("{}{}", self.base, path);
        let mut req = self
            .http
            .put(&url)
            .timeout(std::time::Duration::from_secs(7 * 24 * 3600))
            .header(reqwest::header::CONTENT_LENGTH, len)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(herd_api::images::DIGEST_HEADER, sha256)
            .body(reqwest::Body::wrap_stream(stream));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        self.send(req, &url).await
    }
}

/// A reqwest client builder that trusts `trust` (and nothing else) for `https://` servers.
pub fn http_client(trust: &Trust) -> Result<reqwest::ClientBuilder> {
    let bundle = match trust {
        Trust::File(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| anyhow!("cannot read the CA bundle {} (--ca-file/HERD_CA_FILE): {e}", path.display()))?,
        ),
        Trust::Bundle(b) => Some(b.clone()),
        Trust::PublicRoots(_) => None,
    };
    let builder = reqwest::Client::builder().no_proxy();
    Ok(match bundle {
        Some(b) => {
            let config = herd_tls::client_config(&b)
                .map_err(|e| anyhow!("the CA bundle {}: {e}", trust.describe().display()))?;
            builder.use_preconfigured_tls(config)
        }
        None => builder,
    })
}

/// The hint for a request that failed because the server's certificate was refused.
fn untrusted(e: &reqwest::Error, trust: &Trust) -> Option<String> {
    let tls = rustls_cause(e)?;
    herd_tls::untrusted_hint(tls, &trust.describe()).map(|h| match trust {
        Trust::PublicRoots(p) => {
            format!("{h} (no CA bundle was found at {}, so the platform's public roots were tried)", p.display())
        }
        _ => h,
    })
}

/// The TLS error under `e`: through its sources, and through the I/O errors that wrap one
/// another without being each other's source (an `io::Error`'s `source()` skips what it wraps).
fn rustls_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(t) = e.downcast_ref::<rustls::Error>() {
        return Some(t);
    }
    if let Some(inner) = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
        if let Some(t) = rustls_cause(inner) {
            return Some(t);
        }
    }
    e.source().and_then(rustls_cause)
}

/// True if `e` is an API 404.
pub fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ApiFailure>().is_some_and(|f| f.status == StatusCode::NOT_FOUND)
}

/// Path of a scale set.
pub fn set_path(group: &str, name: &str) -> String {
    format!("/v1/resourceGroups/{}/virtualMachineScaleSets/{}", enc(group), enc(name))
}

/// Percent-encodes a path segment (names are validated server-side; this keeps odd input harmless).
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.:()".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
