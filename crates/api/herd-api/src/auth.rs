//! API tokens: a random token written at first start to a 0600 file in the data dir; every
//! request must present it as `Authorization: Bearer <token>`.
//!
//! Failed authentications are counted per source address ([`crate::auth_limit`]): an address
//! past its budget is answered 429 with `Retry-After` before its token is looked at, so a token
//! cannot be guessed at the speed of the network, and other addresses are not affected.

use crate::auth_limit::Admission;
use crate::error::{ApiError, ErrorBody, ErrorDetail};
use crate::state::AppState;
use axum::{
    extract::{ConnectInfo, Request, State},
    http::{header, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    Json,
};
use rand::Rng;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The token file's name inside the data dir.
pub const TOKEN_FILE: &str = "api-token";

/// Reads the token from `data_dir`, creating a new random one (mode 0600) if there is none.
pub fn load_or_create_token(data_dir: &Path) -> std::io::Result<(String, PathBuf)> {
    let path = data_dir.join(TOKEN_FILE);
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            return Ok((t, path));
        }
    }
    let mut rng = rand::rng();
    let token: String = (0..40).map(|_| format!("{:x}", rng.random_range(0..16u8))).collect();
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
    f.write_all(token.as_bytes())?;
    f.write_all(b"\n")?;
    Ok((token, path))
}

/// Compares in time independent of where the strings first differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The request's bearer token (empty if none).
fn bearer(req: &Request) -> &str {
    req.headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// Middleware: 401 unless the request carries the server's token (429 for an address that
/// failed too often).
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Result<Response, ApiError> {
    let token = state.token.clone();
    authenticate(&state, req, next, |given| same(given.as_bytes(), token.as_bytes())).await
}

/// Middleware for `/metrics`: 401 unless the request carries the API token or the metrics
/// token (`[metrics] token_file`), so a Prometheus server can scrape without the API token.
pub async fn require_metrics_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (token, metrics) = (state.token.clone(), state.metrics_token.clone());
    authenticate(&state, req, next, |given| {
        let api = same(given.as_bytes(), token.as_bytes());
        let metrics = metrics.as_deref().is_some_and(|t| same(given.as_bytes(), t.as_bytes()));
        api | metrics
    })
    .await
}

/// The one authentication step: 429 for an address past its failure budget, else 401 (and a
/// failure counted) unless `accepts` the bearer token, else the request goes on.
async fn authenticate(
    state: &AppState,
    req: Request,
    next: Next,
    accepts: impl Fn(&str) -> bool,
) -> Result<Response, ApiError> {
    let from = source(&req);
    if let Some(limited) = limited(state, from) {
        return Ok(limited);
    }
    if !accepts(bearer(&req)) {
        state.auth_limit.failed(from);
        return Err(ApiError::Unauthorized);
    }
    Ok(next.run(req).await)
}

/// The request's source address; a request that came through no listener (an in-process
/// test calling the router) counts as `0.0.0.0`.
fn source(req: &Request) -> IpAddr {
    req.extensions()
        .get::<ConnectInfo<crate::guard::ClientAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(a)| a.0.ip())
}

/// The 429 answer for an address whose failure budget is spent, if it is.
pub(crate) fn limited(state: &AppState, from: IpAddr) -> Option<Response> {
    let Admission::Limited { retry_after } = state.auth_limit.admit(from) else { return None };
    let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    tracing::debug!(%from, secs, "authentication refused: too many failures from this address");
    let body = ErrorBody {
        error: ErrorDetail {
            code: "TooManyRequests".into(),
            message: format!("too many failed authentications from {from}; retry after {secs} s"),
            target: None,
        },
    };
    Some((StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, secs.to_string())], Json(body)).into_response())
}

/// Reads a token file (`[metrics] token_file`): the first line, trimmed; at least 16
/// characters, so a guessable token is refused at start.
pub fn read_token_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let t = text.lines().next().unwrap_or("").trim().to_string();
    if t.len() < 16 {
        return Err(format!("{}: the token must be at least 16 characters on the first line", path.display()));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let (a, path) = load_or_create_token(dir.path()).unwrap();
        assert_eq!(a.len(), 40);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (b, _) = load_or_create_token(dir.path()).unwrap();
        assert_eq!(a, b);
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"abc", b"ab"));
    }
}
