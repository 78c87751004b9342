//! One extractor for what the resource handlers start with: the server state, the names the
//! path gives (`{group}/{name}`, and a child's name below them) and the request's headers (for
//! `If-Match` and `If-None-Match`), and the step most take next, running the request on the
//! blocking pool (often with the named scale set loaded first, or as a retried write).
//!
//! Why: every such handler took `State`, `Path` and `HeaderMap` apart and then called
//! [`AppState::blocking`] (and [`views::load_set`] or [`views::retry`]) the same way; here it
//! is written once.

use crate::{error::ApiError, state::AppState, views};
use axum::extract::{FromRequestParts, Path};
use axum::http::{request::Parts, HeaderMap};
use axum::response::{IntoResponse, Response};
use herd_model::{group::ResourceGroup, scale_set::StoredScaleSet};
use herd_state::Versioned;
use serde::de::DeserializeOwned;

/// The state, the path's names `P` (`(group, name)` or `(group, name, child)`) and the
/// request's headers.
pub struct Named<P> {
    pub state: AppState,
    pub path: P,
    pub headers: HeaderMap,
}

impl<P: DeserializeOwned + Send> FromRequestParts<AppState> for Named<P> {
    /// The path's own rejection, answered as `Path` would answer it.
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Path(path) = Path::<P>::from_request_parts(parts, state).await.map_err(IntoResponse::into_response)?;
        Ok(Named { state: state.clone(), path, headers: parts.headers.clone() })
    }
}

impl<P: Send + 'static> Named<P> {
    /// Runs `f` with the state and the names on the blocking pool ([`AppState::blocking`]).
    pub async fn blocking<T, F>(self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&AppState, P) -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        let Named { state, path, .. } = self;
        state.blocking(move |st| f(st, path)).await
    }

    /// Runs `f` on the blocking pool as a read-modify-write, re-run on a concurrent write
    /// unless `If-Match` pins an etag ([`views::retry`]); `f` gets the headers for its own
    /// `If-Match` and `If-None-Match` checks.
    pub async fn write<T, F>(self, mut f: F) -> Result<T, ApiError>
    where
        F: FnMut(&AppState, &P, &HeaderMap) -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        let Named { state, path, headers } = self;
        state.blocking(move |st| views::retry(&headers, || f(st, &path, &headers))).await
    }
}

impl Named<String> {
    /// Like [`blocking`](Self::blocking), with the resource group the path names loaded first (a
    /// 404 when it does not exist).
    pub async fn in_group<T, F>(self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&AppState, Versioned<ResourceGroup>, String) -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        self.blocking(|st, group| f(st, views::load_group(st, &group)?, group)).await
    }
}

/// A path that names a scale set first: its `(group, name)`.
pub trait SetNames {
    fn set_names(&self) -> (&str, &str);
}

impl SetNames for (String, String) {
    fn set_names(&self) -> (&str, &str) {
        (&self.0, &self.1)
    }
}

impl SetNames for (String, String, String) {
    fn set_names(&self) -> (&str, &str) {
        (&self.0, &self.1)
    }
}

impl<P: SetNames + Send + 'static> Named<P> {
    /// Like [`blocking`](Self::blocking), with the scale set the path names loaded first (a 404
    /// when the group or the set does not exist).
    pub async fn with_set<T, F>(self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&AppState, Versioned<StoredScaleSet>, P) -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        self.blocking(|st, path| {
            let (group, name) = path.set_names();
            let set = views::load_set(st, group, name)?;
            f(st, set, path)
        })
        .await
    }
}
