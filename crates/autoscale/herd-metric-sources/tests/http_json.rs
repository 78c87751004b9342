//! The HTTP JSON source against a tiny local HTTP server on a thread.

use std::time::{Duration, Instant};

use herd_metric_sources::testkit::{bearer_source, free_port, HttpServer};
use herd_metric_sources::{build, ErrorKind, MetricSource, SourceError, SourceKind, SourceSpec};
use serde_json::{json, Value};

const TOKEN: &str = "tok-Http-s3cret";
/// Each request's timeout (times `HERD_TEST_TIME_SCALE`).
fn t() -> Duration {
    herd_test_support::scaled(Duration::from_secs(5))
}

fn source(url: &str, pointer: &str) -> Box<dyn MetricSource> {
    bearer_source(SourceKind::HttpJson, url, json!({"pointer": pointer}), TOKEN, t())
}

async fn error(src: &dyn MetricSource) -> SourceError {
    let e = src.sample().await.unwrap_err();
    for text in [e.to_string(), format!("{e:?}"), src.describe()] {
        assert!(!text.contains(TOKEN), "secret leaked: {text}");
    }
    e
}

/// The error of reading `pointer` from `path` of `http` (checked for leaks by [`error`]).
async fn read_error(http: &HttpServer, path: &str, pointer: &str) -> SourceError {
    error(source(&http.url(path), pointer).as_ref()).await
}

/// A server that answers `path` with `status` and the JSON `body`.
fn serving(path: &str, status: u16, body: impl Into<String>) -> HttpServer {
    let http = HttpServer::start().unwrap();
    http.set(path, status, body);
    http
}

fn stats() -> Value {
    json!({
        "queue": {"depth": 17, "name": "jobs", "paused": false, "oldest": null},
        "workers": [{"busy": "3"}, {"busy": 4.5}]
    })
}

#[tokio::test]
async fn numbers_at_nested_pointers_with_the_auth_header() {
    let http = serving("/stats", 200, stats().to_string());
    let src = source(&http.url("/stats"), "/queue/depth");
    assert_eq!(src.describe(), format!("http-json http://127.0.0.1:{}/stats pointer /queue/depth", http.port()));
    assert_eq!(src.sample().await.unwrap(), Some(17.0));
    assert!(http.last_headers().contains(&("authorization".into(), format!("Bearer {TOKEN}"))));

    assert_eq!(source(&http.url("/stats"), "/workers/0/busy").sample().await.unwrap(), Some(3.0));
    assert_eq!(source(&http.url("/stats"), "/workers/1/busy").sample().await.unwrap(), Some(4.5));
    // An explicit null is "no data".
    assert_eq!(source(&http.url("/stats"), "/queue/oldest").sample().await.unwrap(), None);

    // The value moves with the server's.
    http.set("/stats", 200, r#"{"queue": {"depth": 0}}"#);
    assert_eq!(src.sample().await.unwrap(), Some(0.0));
}

#[tokio::test]
async fn missing_and_non_numeric_values_are_errors() {
    let http = serving("/stats", 200, stats().to_string());
    let e = read_error(&http, "/stats", "/queue/size").await;
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().ends_with("pointer /queue/size not found: /queue has no member \"size\""), "{e}");
    let e = read_error(&http, "/stats", "/workers/5/busy").await;
    assert!(e.message().contains("/workers has 2 elements, no index 5"), "{e}");
    let e = read_error(&http, "/stats", "/queue/name").await;
    assert_eq!(e.kind(), ErrorKind::NotANumber);
    assert!(e.message().contains("the value at /queue/name is the string \"jobs\", not a number"), "{e}");
    let e = read_error(&http, "/stats", "/queue").await;
    assert!(e.message().contains("is an object, not a number"), "{e}");
    let e = read_error(&http, "/stats", "/queue/paused").await;
    assert!(e.message().contains("is a boolean"), "{e}");

    http.set_typed("/html", 200, "text/html", "<html>busy</html>");
    let e = read_error(&http, "/html", "/x").await;
    assert_eq!(e.kind(), ErrorKind::Protocol);
    assert!(e.message().contains("the response is not JSON"), "{e}");
}

#[tokio::test]
async fn http_errors_name_the_status() {
    let http = serving("/boom", 500, r#"{"error": "database down"}"#);
    let e = read_error(&http, "/boom", "/depth").await;
    assert_eq!(e.kind(), ErrorKind::Server);
    assert!(e.message().starts_with("HTTP 500 Internal Server Error"), "{e}");
    assert!(e.message().contains("database down"), "{e}");
    let e = read_error(&http, "/nothing-here", "/depth").await;
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.message().starts_with("HTTP 404"), "{e}");
}

#[tokio::test]
async fn a_key_in_the_query_string_is_never_shown() {
    let http = serving("/boom", 500, "");
    let key = "Key-In-Url-42";
    let src = source(&http.url(&format!("/boom?api_key={key}")), "/depth");
    assert_eq!(src.describe(), format!("http-json http://127.0.0.1:{}/boom?… pointer /depth", http.port()));
    let e = error(src.as_ref()).await;
    assert!(!e.to_string().contains(key), "{e}");
    assert_eq!(e.message(), "HTTP 500 Internal Server Error");
}

#[tokio::test]
async fn unreachable_and_silent_servers() {
    let port = free_port().unwrap();
    let src = source(&format!("http://127.0.0.1:{port}/stats"), "/depth");
    let start = Instant::now();
    let e = error(src.as_ref()).await;
    assert!(start.elapsed() < herd_test_support::scaled(Duration::from_secs(1)));
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
    assert!(e.to_string().ends_with("pointer /depth: connection refused"), "{e}");

    // Accepts, never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}/stats", listener.local_addr().unwrap().port());
    let s = SourceSpec {
        kind: SourceKind::HttpJson,
        endpoint: url,
        settings: json!({"pointer": "/depth"}),
        protected: json!({"headers": {"Authorization": format!("Bearer {TOKEN}")}}),
    };
    let src = build(&s, Duration::from_millis(300)).unwrap();
    let start = Instant::now();
    let e = error(src.as_ref()).await;
    assert!(start.elapsed() < herd_test_support::scaled(Duration::from_secs(2)));
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(e.to_string().ends_with("timed out after 300ms"), "{e}");
}
