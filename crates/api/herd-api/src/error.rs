//! The one API error type. It maps to an HTTP status and an Azure-style body
//! (`{"error": {"code", "message", "target"}}`), and never carries internals or secrets:
//! backend errors are logged on the server and reported as a generic 500.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use herd_model::FieldError;
use herd_state::failure::Failure;
use serde::{Deserialize, Serialize};

/// The error body every failed request returns.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// Code, message and, for bad input, the field path.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// `InvalidParameter`, `InvalidRequestContent`, `NotFound`, `MethodNotAllowed`, `Conflict`,
    /// `PreconditionFailed`, `Unauthorized`, `Forbidden`, `LengthRequired`, `RequestEntityTooLarge`,
    /// `UriTooLong`, `UnsupportedMediaType`, `TooManyRequests`, `InsufficientStorage`, `InternalError`.
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
    /// A compare-and-swap lost to a concurrent write: re-applied by [`crate::views::retry`].
    #[error("{0}")]
    Changed(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("a valid API token is required (Authorization: Bearer <token>)")]
    Unauthorized,
    /// Credentials other than the API token were refused (a join token): the message says why
    /// without repeating them.
    #[error("{0}")]
    Forbidden(String),
    /// A failure of the server itself: its source is logged, the client hears only "internal error".
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The data dir's disk is full: the cause is told, as it helps the operator and leaks nothing.
    #[error("{0}")]
    InsufficientStorage(String),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid(FieldError::new(field, message))
    }

    /// An I/O failure while writing under the data dir: 507 when the disk is full, else 500.
    pub fn io(what: &str, e: &std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
            ApiError::InsufficientStorage(format!("the data dir's disk is full: {what}: {e}"))
        } else {
            ApiError::internal(format!("{what}: {e}"))
        }
    }

    /// An internal failure with `source` as its cause (logged, never shown).
    pub fn internal(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ApiError::Internal(source.into())
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::Invalid(e)
    }
}

impl From<herd_state::hosts::HostError> for ApiError {
    fn from(e: herd_state::hosts::HostError) -> Self {
        use herd_state::hosts::HostError;
        match e {
            HostError::Invalid(f) => ApiError::Invalid(f),
            HostError::Token(r) => ApiError::Forbidden(r.to_string()),
            HostError::NameTaken(_) | HostError::HasInstances { .. } => ApiError::Conflict(e.to_string()),
            HostError::NotFound(_) => ApiError::NotFound(e.to_string()),
            HostError::Tls(herd_model::tls::TlsRefusal::NotApplicable(why)) => ApiError::Conflict(why),
            HostError::Tls(herd_model::tls::TlsRefusal::Failed(e)) => ApiError::Internal(e),
            HostError::State(s) => s.into(),
        }
    }
}

impl From<herd_state::StateError> for ApiError {
    fn from(e: herd_state::StateError) -> Self {
        match herd_state::failure::failure(&e) {
            Failure::Conflict => ApiError::Changed(format!(
                "the resource changed while this request was applied ({e}); read it again and retry"
            )),
            Failure::Full => ApiError::InsufficientStorage(e.to_string()),
            Failure::Undecodable | Failure::Internal => ApiError::internal(e),
        }
    }
}

impl From<herd_state::lookup::LookupError> for ApiError {
    fn from(e: herd_state::lookup::LookupError) -> Self {
        use herd_state::lookup::LookupError as L;
        match e {
            L::NoGroup(_) | L::NoSet { .. } => ApiError::NotFound(e.to_string()),
            L::Quarantined { .. } => ApiError::Conflict(e.to_string()),
            L::State(e) => e.into(),
        }
    }
}

impl From<herd_state::groups::GroupError> for ApiError {
    fn from(e: herd_state::groups::GroupError) -> Self {
        use herd_state::groups::GroupError as G;
        match e {
            G::Deleting(_) => ApiError::Conflict(e.to_string()),
            G::Location => ApiError::invalid("location", e.to_string()),
            G::Lookup(e) => e.into(),
            G::State(e) => e.into(),
        }
    }
}

impl From<herd_state::model_refs::RefError> for ApiError {
    fn from(e: herd_state::model_refs::RefError) -> Self {
        match e {
            herd_state::model_refs::RefError::Invalid(f) => ApiError::Invalid(f),
            herd_state::model_refs::RefError::State(e) => e.into(),
        }
    }
}

impl From<herd_state::scale_sets::ScaleSetError> for ApiError {
    fn from(e: herd_state::scale_sets::ScaleSetError) -> Self {
        use herd_state::scale_sets::ScaleSetError as S;
        match e {
            S::Invalid(f) => ApiError::Invalid(f),
            S::Exists { .. } => ApiError::Conflict(e.to_string()),
            S::Lookup(e) => e.into(),
            S::State(e) => e.into(),
        }
    }
}

impl From<herd_state::images::ImageError> for ApiError {
    fn from(e: herd_state::images::ImageError) -> Self {
        use herd_state::images::ImageError as I;
        match e {
            I::NotInGallery(_) => ApiError::NotFound(e.to_string()),
            I::Exists(_) | I::InUse { .. } => ApiError::Conflict(e.to_string()),
            I::State(e) => e.into(),
        }
    }
}

impl From<herd_state::instance_actions::ActionError> for ApiError {
    fn from(e: herd_state::instance_actions::ActionError) -> Self {
        use herd_state::instance_actions::ActionError as A;
        match e {
            A::Invalid(f) => ApiError::Invalid(f),
            A::SetDeleting(_) => ApiError::Conflict(e.to_string()),
            A::NoInstances { .. } | A::NoInstance { .. } => ApiError::NotFound(e.to_string()),
            A::Lookup(e) => e.into(),
            A::State(e) => e.into(),
        }
    }
}

impl From<herd_state::networks::NetError> for ApiError {
    fn from(e: herd_state::networks::NetError) -> Self {
        use herd_state::networks::NetError as N;
        match e {
            N::NotFound { .. } => ApiError::NotFound(e.to_string()),
            N::UsedBySets { .. } | N::UsedByLoadBalancer { .. } | N::UsedBySubnets { .. } => {
                ApiError::Conflict(e.to_string())
            }
            N::State(e) => e.into(),
        }
    }
}

impl From<herd_state::set_status::StatusError> for ApiError {
    fn from(e: herd_state::set_status::StatusError) -> Self {
        match e {
            herd_state::set_status::StatusError::State(e) => e.into(),
            other => ApiError::Conflict(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, target) = match &self {
            ApiError::Invalid(f) => {
                (StatusCode::BAD_REQUEST, "InvalidParameter", Some(f.field.clone()).filter(|f| !f.is_empty()))
            }
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "NotFound", None),
            ApiError::Conflict(_) | ApiError::Changed(_) => (StatusCode::CONFLICT, "Conflict", None),
            ApiError::PreconditionFailed(_) => (StatusCode::PRECONDITION_FAILED, "PreconditionFailed", None),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized", None),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden", None),
            ApiError::InsufficientStorage(detail) => {
                tracing::error!(%detail, "disk full");
                (StatusCode::INSUFFICIENT_STORAGE, "InsufficientStorage", None)
            }
            ApiError::Internal(source) => {
                let detail = herd_model::error::chain_text(source.as_ref());
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
