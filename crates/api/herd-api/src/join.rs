//! `GET /v1/join/ca` and `POST /v1/join`: how `herd agent` joins a host, before it has any
//! credential but its join token.
//!
//! Why outside the API token: an agent never holds the API token. It proves itself with the
//! join token (checked, and spent when single-use, in the same transaction that creates the
//! host), and gets back a client certificate for its own public key, with which it dials the
//! agent link. The CA bundle is public: an agent fetches it first and keeps it only if it has
//! the SHA-256 its token names, so the token's secret goes only to this cluster's server.
//! Refused joins count against the source address's failure budget, as bad API tokens do.

use crate::error::{ApiError, ErrorBody};
use crate::guard::ClientAddr;
use crate::state::AppState;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use herd_model::host::{HostRecord, JoinRequest};
use herd_model::tls::SignedAgent;
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr};

/// What a joined agent gets.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Joined {
    pub host: HostRecord,
    /// The cluster's id: the agent's driver marks this cluster's instances with it.
    pub cluster_id: String,
    #[serde(flatten)]
    pub signed: SignedAgent,
}

/// The cluster CA bundle (PEM): public, for an agent to pin against its join token.
#[utoipa::path(get, path = "/v1/join/ca", tag = "hosts", security(()),
    responses((status = 200, body = String, content_type = "application/x-pem-file"), (status = 409, body = ErrorBody)))]
pub async fn ca(State(state): State<AppState>) -> Result<Response, ApiError> {
    let status = state.tls.status().map_err(ApiError::Internal)?;
    let Some(bundle) = status.ca_bundle else {
        return Err(ApiError::Conflict(herd_model::tls::NO_CLUSTER_CA.into()));
    };
    Ok(([(axum::http::header::CONTENT_TYPE, "application/x-pem-file")], bundle).into_response())
}

/// Joins a host with a join token: creates the host and signs its agent's public key.
#[utoipa::path(post, path = "/v1/join", tag = "hosts", request_body = JoinRequest, security(()),
    responses((status = 201, body = Joined), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn join(
    State(state): State<AppState>,
    from: Option<axum::Extension<ConnectInfo<ClientAddr>>>,
    Json(req): Json<JoinRequest>,
) -> Result<Response, ApiError> {
    let from = from.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |axum::Extension(ConnectInfo(a))| a.0.ip());
    if let Some(limited) = crate::auth::limited(&state, from) {
        return Ok(limited);
    }
    if state.config.hosts.iter().any(|h| h.name.eq_ignore_ascii_case(&req.name)) {
        return Err(ApiError::Conflict(format!(
            "host name '{}' is taken: a [[hosts]] entry of the server's config has it; choose another --name",
            req.name
        )));
    }
    let tls = state.tls.clone();
    let now = state.clock.now();
    let name = req.name.clone();
    let joined = state
        .blocking(move |s| {
            let status = tls.status().map_err(ApiError::Internal)?;
            let Some(ca) = status.ca_fingerprint else {
                return Err(ApiError::Conflict(herd_model::tls::NO_CLUSTER_CA.into()));
            };
            let sign = |host: &str, key: &str| tls.sign_agent(host, key);
            Ok(herd_state::hosts::join(&**s.store.store(), &req, &ca, sign, now)?)
        })
        .await;
    match joined {
        Ok((host, signed)) => {
            tracing::info!(host = %host.name, zone = %host.zone, "host joined");
            Ok((StatusCode::CREATED, Json(Joined { host, cluster_id: state.config.cluster_id.clone(), signed }))
                .into_response())
        }
        Err(e) => {
            if matches!(e, ApiError::Forbidden(_)) {
                state.auth_limit.failed(from);
            }
            tracing::info!(host = %name, error = %e, "join refused");
            Err(e)
        }
    }
}
