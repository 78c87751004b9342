//! `POST|GET /v1/hosts/joinTokens`, `DELETE /v1/hosts/joinTokens/{id}`: the tokens with which
//! `herd agent` joins a host to the cluster (see `herd_model::join_token`).
//!
//! Why the token text appears only in the create answer: the store keeps its secret as a hash,
//! so nothing can show it again; a lost token is deleted and a new one created.

use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use herd_model::join_token::{check_ttl, JoinTokenRecord, DEFAULT_TTL_SECS};
use serde::{Deserialize, Serialize};

/// `POST /v1/hosts/joinTokens`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateJoinToken {
    /// Seconds the token is valid (1 to 2592000, 30 days; default 86400).
    pub expires_in_seconds: Option<u64>,
    /// Valid for one host only (default false).
    #[serde(default)]
    pub single_use: bool,
    #[serde(default)]
    pub description: String,
}

/// A new token: its record, and its text, which is shown this once.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedJoinToken {
    #[serde(flatten)]
    pub record: JoinTokenRecord,
    /// `herd1::<CA SHA-256>::<id>.<secret>`: give it to `herd agent --join-token`.
    pub token: String,
}

/// Creates a join token.
#[utoipa::path(post, path = "/v1/hosts/joinTokens", tag = "hosts", request_body = CreateJoinToken,
    responses((status = 201, body = CreatedJoinToken), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Json(req): Json<CreateJoinToken>,
) -> Result<(StatusCode, Json<CreatedJoinToken>), ApiError> {
    let ttl = check_ttl("expiresInSeconds", req.expires_in_seconds.unwrap_or(DEFAULT_TTL_SECS))?;
    if req.description.chars().count() > 256 {
        return Err(ApiError::invalid("description", "at most 256 characters"));
    }
    let tls = state.tls.clone();
    let now = state.clock.now();
    let created = state
        .blocking(move |s| {
            let status = tls.status().map_err(ApiError::Internal)?;
            let Some(ca) = status.ca_fingerprint else {
                return Err(ApiError::Conflict(
                    "join tokens carry the cluster CA's fingerprint, and this server has no CA (it serves plain HTTP or the operator's own certificate)".into(),
                ));
            };
            let new = herd_state::join_tokens::NewToken {
                ttl: chrono::Duration::seconds(ttl as i64),
                single_use: req.single_use,
                description: &req.description,
                ca_fingerprint: &ca,
            };
            Ok(herd_state::join_tokens::create(&**s.store.store(), &new, now)?)
        })
        .await?;
    let (record, token) = created;
    Ok((StatusCode::CREATED, Json(CreatedJoinToken { record, token })))
}

/// Lists the join tokens (never their secrets).
#[utoipa::path(get, path = "/v1/hosts/joinTokens", tag = "hosts",
    responses((status = 200, body = [JoinTokenRecord])))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<JoinTokenRecord>>, ApiError> {
    Ok(Json(state.run(|s| Ok(herd_state::join_tokens::list(s)?)).await?))
}

/// Deletes a join token: hosts can no longer join with it (hosts that joined stay).
#[utoipa::path(delete, path = "/v1/hosts/joinTokens/{id}", tag = "hosts",
    params(("id" = String, Path, description = "the token's id (its public part)")),
    responses((status = 200), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::invalid("id", format!("'{id}' is not a join token id (16 hex digits)")));
    }
    let id2 = id.clone();
    if state.run(move |s| Ok(herd_state::join_tokens::delete(s, &id2)?)).await? {
        Ok(Json(serde_json::json!({})))
    } else {
        Err(ApiError::NotFound(format!("join token '{id}' does not exist")))
    }
}
