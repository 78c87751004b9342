//! The HTTP surface of one instance's listener, following Azure IMDS.
//!
//! Every request is checked the way IMDS checks it, in this order: no `X-Forwarded-For`
//! (a request relayed by a proxy is refused), the header `Metadata: true`, then the path, the
//! method, and `api-version` (required except on `/metadata/versions`). Errors are JSON
//! `{"error": "..."}` with IMDS's status codes; they name what is wrong and never carry
//! internals.

use crate::document;
use crate::service::Shared;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use herd_model::activity::{ActivityEvent, Actor};
use herd_model::instance::InstanceRecord;
use herd_model::InstanceKey;
use herd_state::keys::{InstanceRecordKey, SetKey};
use herd_state::{Expected, Records, StateError, Versioned};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The `api-version` values accepted (Azure IMDS's published versions; herd serves the same
/// documents whichever is named). Oldest first.
pub const API_VERSIONS: &[&str] = &[
    "2017-03-01",
    "2017-04-02",
    "2017-08-01",
    "2017-10-01",
    "2017-11-01",
    "2017-12-01",
    "2018-02-01",
    "2018-04-02",
    "2018-10-01",
    "2019-01-01",
    "2019-02-01",
    "2019-03-11",
    "2019-04-30",
    "2019-06-01",
    "2019-06-04",
    "2019-08-01",
    "2019-08-15",
    "2019-11-01",
    "2020-06-01",
    "2020-07-01",
    "2020-07-15",
    "2020-09-01",
    "2020-10-01",
    "2020-12-01",
    "2021-01-01",
    "2021-02-01",
    "2021-03-01",
    "2021-05-01",
    "2021-08-01",
    "2021-10-01",
    "2021-11-01",
    "2021-11-15",
    "2021-12-13",
    "2023-07-01",
];

/// How often an acknowledgement retries its compare-and-swap when the record keeps changing.
const ACK_ATTEMPTS: usize = 8;

/// One listener's view: the instance it serves.
#[derive(Debug)]
pub(crate) struct InstanceCtx {
    pub shared: Arc<Shared>,
    /// The instance's store key (`group/set/0000000007`).
    pub key: String,
    pub instance: InstanceKey,
}

pub(crate) fn router(ctx: Arc<InstanceCtx>) -> Router {
    Router::new().fallback(handle).with_state(ctx)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn bad_request(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, format!("Bad request. {}", message.into()))
}

fn internal(ctx: &InstanceCtx, e: StateError) -> Response {
    tracing::warn!(instance = %ctx.instance, error = %e, "metadata endpoint: store read failed");
    error(StatusCode::INTERNAL_SERVER_ERROR, "Internal error. The metadata service could not read this instance; retry")
}

fn method_not_allowed(allowed: &'static str) -> Response {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, format!("Method not allowed. This path accepts {allowed}"));
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allowed));
    r
}

fn newest_versions() -> Vec<&'static str> {
    API_VERSIONS.iter().rev().take(3).copied().collect()
}

/// Checks `api-version` like IMDS: required, and one of [`API_VERSIONS`].
fn check_api_version(query: &[(String, String)]) -> Result<(), Box<Response>> {
    let given = query.iter().find(|(k, _)| k == "api-version").map(|(_, v)| v.as_str());
    let message = match given {
        None | Some("") => "api-version was not specified in the request",
        Some(v) if API_VERSIONS.contains(&v) => return Ok(()),
        Some(_) => "api-version is invalid",
    };
    let body = json!({
        "error": format!("Bad request. {message}; use one of newest-versions (every accepted version: GET /metadata/versions)"),
        "newest-versions": newest_versions(),
    });
    Err(Box::new((StatusCode::BAD_REQUEST, Json(body)).into_response()))
}

/// Why a path is not served, for the IMDS categories herd does not offer.
fn not_offered(path: &str) -> Option<&'static str> {
    let under = |root: &str| path == root || path.starts_with(&format!("{root}/"));
    if under("/metadata/identity") {
        Some("herd does not offer managed identities (/metadata/identity): no tokens are issued here")
    } else if under("/metadata/attested") {
        Some("herd does not offer attested data (/metadata/attested)")
    } else if under("/metadata/loadbalancer") {
        Some("herd does not offer load-balancer metadata (/metadata/loadbalancer)")
    } else {
        None
    }
}

async fn handle(
    State(ctx): State<Arc<InstanceCtx>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if headers.contains_key("x-forwarded-for") {
        return bad_request("Requests relayed by a proxy (with an X-Forwarded-For header) are refused; call the metadata service directly, bypassing any proxy");
    }
    let metadata_true =
        headers.get_all("metadata").iter().any(|v| v.to_str().is_ok_and(|s| s.trim().eq_ignore_ascii_case("true")));
    if !metadata_true {
        return bad_request("Required metadata header not specified (send the header 'Metadata: true')");
    }
    let Ok(Query(query)) = Query::<Vec<(String, String)>>::try_from_uri(&uri) else {
        return bad_request("The query string could not be parsed");
    };
    let path = uri.path().trim_end_matches('/');
    if path == "/metadata/versions" {
        if method != Method::GET {
            return method_not_allowed("GET");
        }
        return Json(json!({ "apiVersions": API_VERSIONS })).into_response();
    }
    if path == "/metadata/scheduledevents" {
        if let Err(r) = check_api_version(&query) {
            return *r;
        }
        return match method {
            Method::GET => off_runtime(move || scheduled_events(&ctx)).await,
            Method::POST => off_runtime(move || start_events(&ctx, &body)).await,
            _ => method_not_allowed("GET, POST"),
        };
    }
    if let Some(sub) = path.strip_prefix("/metadata/instance").filter(|s| s.is_empty() || s.starts_with('/')) {
        if method != Method::GET {
            return method_not_allowed("GET");
        }
        if let Err(r) = check_api_version(&query) {
            return *r;
        }
        let sub = sub.to_string();
        return off_runtime(move || instance(&ctx, &sub, &query)).await;
    }
    if let Some(why) = not_offered(path) {
        return error(StatusCode::NOT_FOUND, format!("Not found. {why}"));
    }
    error(
        StatusCode::NOT_FOUND,
        "Not found. herd's metadata service serves /metadata/instance, /metadata/scheduledevents and /metadata/versions",
    )
}

/// Runs a handler body that reads or writes the (synchronous) store on the blocking pool, so
/// that it never stalls the async worker serving every other instance's endpoint.
async fn off_runtime(f: impl FnOnce() -> Response + Send + 'static) -> Response {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "metadata endpoint: a request did not finish");
            error(StatusCode::INTERNAL_SERVER_ERROR, "Internal error. The request did not finish; retry")
        }
    }
}

/// The instance record and its revision, or the response to give.
fn record(ctx: &InstanceCtx) -> Result<Versioned<InstanceRecord>, Box<Response>> {
    match ctx.shared.store.instance(&InstanceRecordKey::new(ctx.instance.clone())) {
        Ok(Some(o)) => Ok(o),
        Ok(None) => Err(Box::new(error(StatusCode::NOT_FOUND, "Not found. This instance no longer exists"))),
        Err(e) => Err(Box::new(internal(ctx, e))),
    }
}

fn scheduled_events(ctx: &InstanceCtx) -> Response {
    let rec = match record(ctx) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let events = document::events_json(&ctx.instance, &rec.value.scheduled_events);
    let incarnation = ctx.shared.incarnation(&ctx.key, document::digest(&events), rec.revision);
    Json(document::events_document(incarnation, events)).into_response()
}

#[derive(Deserialize)]
struct StartBody {
    #[serde(rename = "StartRequests")]
    start_requests: Vec<StartRequest>,
    /// Accepted as in Azure; not checked.
    #[serde(rename = "DocumentIncarnation", default)]
    _document_incarnation: Option<Value>,
}

#[derive(Deserialize)]
struct StartRequest {
    #[serde(rename = "EventId")]
    event_id: String,
}

/// `POST /metadata/scheduledevents`: the guest approves events so that they start before their
/// `NotBefore`. Every id must be one of this instance's events, or nothing is changed.
fn start_events(ctx: &InstanceCtx, body: &[u8]) -> Response {
    let req: StartBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => {
            return bad_request(format!(
                "The body must be JSON like {{\"StartRequests\": [{{\"EventId\": \"<id>\"}}]}} ({e})"
            ))
        }
    };
    let ids: Vec<String> = req.start_requests.into_iter().map(|r| r.event_id).collect();
    for _ in 0..ACK_ATTEMPTS {
        let Versioned { revision, value: mut rec, .. } = match record(ctx) {
            Ok(r) => r,
            Err(r) => return *r,
        };
        let mut unknown: Vec<&str> = Vec::new();
        for id in &ids {
            if !rec.scheduled_events.iter().any(|e| &e.event_id == id) && !unknown.contains(&id.as_str()) {
                unknown.push(id);
            }
        }
        if !unknown.is_empty() {
            return bad_request(format!(
                "Unknown EventId for this instance: {} (GET /metadata/scheduledevents lists its events)",
                unknown.join(", ")
            ));
        }
        let now = ctx.shared.clock.now();
        let mut acked = Vec::new();
        for e in rec.scheduled_events.iter_mut().filter(|e| ids.contains(&e.event_id)) {
            if e.acknowledged_at.is_none() {
                e.acknowledged_at = Some(now);
                acked.push(format!("{} event {}", e.event_type, e.event_id));
            }
        }
        if acked.is_empty() {
            // Already acknowledged (or nothing asked): nothing to change.
            return StatusCode::OK.into_response();
        }
        let activity = ActivityEvent {
            seq: 0,
            time: now,
            resource_group: ctx.instance.group.to_string(),
            resource: ctx.instance.set.to_string(),
            operation: "AcknowledgeScheduledEvent".into(),
            status: herd_model::activity::ActivityStatus::Succeeded,
            actor: Actor::User,
            message: format!(
                "instance {} acknowledged {} through its metadata endpoint; the action may start now",
                ctx.instance.id,
                acked.join(", ")
            ),
        };
        let key = InstanceRecordKey::new(ctx.instance.clone());
        match ctx.shared.store.update_instance(&key, &rec, Expected::Revision(revision), Some(activity)) {
            Ok(_) => {
                ctx.shared.wake.notify_one();
                return StatusCode::OK.into_response();
            }
            Err(e) if e.is_conflict() => continue,
            Err(e) => return internal(ctx, e),
        }
    }
    error(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable. The instance kept changing while acknowledging; retry")
}

/// `GET /metadata/instance[/<path>]`, JSON or (`format=text`) plain text.
fn instance(ctx: &InstanceCtx, sub: &str, query: &[(String, String)]) -> Response {
    let text = match query.iter().find(|(k, _)| k == "format").map(|(_, v)| v.as_str()) {
        None | Some("json") => false,
        Some("text") => true,
        Some(other) => return bad_request(format!("format '{other}' is not supported; use json or text")),
    };
    let rec = match record(ctx) {
        Ok(r) => r.value,
        Err(r) => return *r,
    };
    let set = match ctx.shared.store.scale_set(&SetKey::of_instance(&ctx.instance)) {
        Ok(s) => s.map(|o| o.value),
        Err(e) => return internal(ctx, e),
    };
    let doc = document::instance_document(&ctx.instance, &rec, set.as_ref());
    let Some(v) = document::select(&doc, sub) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("Not found. The instance document has no '{}'", sub.trim_start_matches('/')),
        );
    };
    if text {
        ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], document::as_text(v)).into_response()
    } else {
        Json(v.clone()).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn api_versions() {
        assert!(check_api_version(&q(&[("api-version", "2020-07-01")])).is_ok());
        assert!(check_api_version(&q(&[("api-version", "2021-02-01")])).is_ok());
        assert!(check_api_version(&q(&[])).is_err());
        assert!(check_api_version(&q(&[("api-version", "")])).is_err());
        assert!(check_api_version(&q(&[("api-version", "2099-01-01")])).is_err());
        assert_eq!(newest_versions(), ["2023-07-01", "2021-12-13", "2021-11-15"]);
        let mut sorted = API_VERSIONS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, API_VERSIONS, "sorted, no duplicates");
    }

    #[test]
    fn categories_not_offered() {
        assert!(not_offered("/metadata/identity/oauth2/token").is_some());
        assert!(not_offered("/metadata/identity").is_some());
        assert!(not_offered("/metadata/attested/document").is_some());
        assert!(not_offered("/metadata/identityx").is_none());
        assert!(not_offered("/metadata/instance").is_none());
    }
}
