//! The one API error type. It maps to an HTTP status and an Azure-style body
//! (`{"error": {"code", "message", "target"}}`), and never carries internals or secrets:
//! backend errors are logged on the server and reported as a generic 500.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use herd_model::FieldError;
use herd_store::StoreError;
use serde::{Deserialize, Serialize};

/// The error body every failed request returns.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// Code, message and, for bad input, the field path.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// `InvalidParameter`, `NotFound`, `Conflict`, `PreconditionFailed`, `Unauthorized`, `InternalError`.
    pub code: String,
    pub message: String,
    /// The JSON path of the offending field, for `InvalidParameter`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// An API failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(FieldError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("a valid API token is required (Authorization: Bearer <token>)")]
    Unauthorized,
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid(FieldError::new(field, message))
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::Invalid(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { .. } => ApiError::Conflict(format!(
                "the resource changed while this request was applied ({e}); read it again and retry"
            )),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, target) = match &self {
            ApiError::Invalid(f) => (StatusCode::BAD_REQUEST, "InvalidParameter", Some(f.field.clone())),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "NotFound", None),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "Conflict", None),
            ApiError::PreconditionFailed(_) => (StatusCode::PRECONDITION_FAILED, "PreconditionFailed", None),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized", None),
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "InternalError", None)
            }
        };
        let message = match &self {
            ApiError::Invalid(f) if f.field.is_empty() => f.message.clone(),
            other => other.to_string(),
        };
        (status, Json(ErrorBody { error: ErrorDetail { code: code.into(), message, target } })).into_response()
    }
}
