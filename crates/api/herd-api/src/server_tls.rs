//! `GET /v1/server/tls`, `POST /v1/server/tls/rotateCertificate` and
//! `POST /v1/server/tls/rotateCa`: the server's TLS material, and renewing it without a restart.
//!
//! Why through the API: the running server holds the certificate it presents, so only it can
//! swap it for the next handshake. The work itself (files, signing) is the server's
//! [`ServerTls`](crate::services::ServerTls); these handlers validate, run it off the async
//! runtime and map refusals.

use crate::error::{ApiError, ErrorBody};
use crate::services::{TlsRefusal, TlsStatus};
use crate::state::AppState;
use axum::{extract::State, Json};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The default overlap of a CA rotation: a day, for every client to fetch the new bundle.
pub const DEFAULT_OVERLAP_SECS: u64 = 24 * 3600;
/// The longest overlap: a year.
pub const MAX_OVERLAP_SECS: u64 = 365 * 24 * 3600;

/// `POST /v1/server/tls/rotateCa`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotateCaRequest {
    /// Seconds the old CA stays trusted beside the new one (1 to 31536000; default 86400).
    pub overlap_seconds: Option<u64>,
}

/// The server's TLS mode, CA bundle and fingerprint, and its certificate (public parts only).
#[utoipa::path(get, path = "/v1/server/tls", tag = "server", responses((status = 200, body = TlsStatus)))]
pub async fn show(State(state): State<AppState>) -> Result<Json<TlsStatus>, ApiError> {
    let tls = state.tls.clone();
    Ok(Json(state.blocking(move |_| tls.status().map_err(ApiError::Internal)).await?))
}

/// Renews the server certificate under the same CA (or reads the operator's files again);
/// clients and open connections are not affected.
#[utoipa::path(post, path = "/v1/server/tls/rotateCertificate", tag = "server",
    responses((status = 200, body = TlsStatus), (status = 409, body = ErrorBody)))]
pub async fn rotate_certificate(State(state): State<AppState>) -> Result<Json<TlsStatus>, ApiError> {
    let tls = state.tls.clone();
    Ok(Json(state.blocking(move |_| tls.rotate_certificate().map_err(refused)).await?))
}

/// Makes a new cluster CA active; the old one stays trusted through the overlap (the server
/// presents the new CA cross-signed by the old), then is retired.
#[utoipa::path(post, path = "/v1/server/tls/rotateCa", tag = "server", request_body = RotateCaRequest,
    responses((status = 200, body = TlsStatus), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn rotate_ca(
    State(state): State<AppState>,
    Json(req): Json<RotateCaRequest>,
) -> Result<Json<TlsStatus>, ApiError> {
    let secs = req.overlap_seconds.unwrap_or(DEFAULT_OVERLAP_SECS);
    if !(1..=MAX_OVERLAP_SECS).contains(&secs) {
        return Err(ApiError::invalid(
            "overlapSeconds",
            format!("{secs} is out of range; allowed 1 to {MAX_OVERLAP_SECS} (a year)"),
        ));
    }
    let tls = state.tls.clone();
    Ok(Json(state.blocking(move |_| tls.rotate_ca(Duration::from_secs(secs)).map_err(refused)).await?))
}

fn refused(e: TlsRefusal) -> ApiError {
    match e {
        TlsRefusal::NotApplicable(why) => ApiError::Conflict(why),
        // The TLS files live in the data dir: a full disk is told as the store's is.
        TlsRefusal::Failed(e) if disk_full(e.as_ref()) => ApiError::InsufficientStorage(format!(
            "the data dir's disk is full: {}",
            herd_model::error::chain_text(e.as_ref())
        )),
        TlsRefusal::Failed(e) => ApiError::Internal(e),
    }
}

fn disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull) {
            return true;
        }
        cur = err.source();
    }
    false
}
