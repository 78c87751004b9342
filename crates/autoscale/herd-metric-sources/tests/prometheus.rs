//! The Prometheus source against a real `prometheus` (Debian package `prometheus`) started by
//! the test on a free loopback port, scraping a tiny local HTTP server's `/metrics` every
//! second. Values are waited for by polling with a deadline.

use std::time::Duration;

use herd_metric_sources::testkit::{bearer_source, eventually, HttpServer, PrometheusServer};
use herd_metric_sources::{build, ErrorKind, MetricSource, SourceError, SourceKind, SourceSpec};
use serde_json::json;

const TOKEN: &str = "tok-Prom-s3cret";
/// Each request's timeout (times `HERD_TEST_TIME_SCALE`).
fn t() -> Duration {
    herd_test_support::scaled(Duration::from_secs(5))
}
const SCRAPE_DEADLINE: Duration = Duration::from_secs(60);

fn source(prom: &PrometheusServer, query: &str) -> Box<dyn MetricSource> {
    bearer_source(SourceKind::Prometheus, &prom.endpoint(), json!({"query": query}), TOKEN, t())
}

fn metrics(jobs: u32, other: u32) -> String {
    format!("# TYPE queue_depth gauge\nqueue_depth{{queue=\"jobs\"}} {jobs}\nqueue_depth{{queue=\"other\"}} {other}\n")
}

async fn error(src: &dyn MetricSource) -> SourceError {
    let e = src.sample().await.unwrap_err();
    for text in [e.to_string(), format!("{e:?}"), src.describe()] {
        assert!(!text.contains(TOKEN), "secret leaked: {text}");
    }
    e
}

/// Polls until the source reads `want`; a failure shows the last sample.
async fn reads(src: &dyn MetricSource, want: f64) {
    let last = std::sync::Mutex::new(String::new());
    let r = eventually(SCRAPE_DEADLINE, &format!("{} reads {want}", src.describe()), || async {
        let got = src.sample().await;
        let hit = matches!(got, Ok(Some(v)) if v == want);
        *last.lock().unwrap() = format!("{got:?}");
        hit.then_some(())
    })
    .await;
    if let Err(e) = r {
        panic!("{e}; last sample: {}", last.lock().unwrap());
    }
}

#[tokio::test]
async fn instant_queries_on_scraped_metrics() {
    let target = HttpServer::start().unwrap();
    target.set_typed("/metrics", 200, "text/plain; version=0.0.4", metrics(42, 5));
    let prom = PrometheusServer::start(&format!("127.0.0.1:{}", target.port())).await.unwrap();

    let jobs = source(&prom, "sum(queue_depth{queue=\"jobs\"})");
    assert_eq!(
        jobs.describe(),
        format!("prometheus http://127.0.0.1:{}/ query \"sum(queue_depth{{queue=\"jobs\"}})\"", prom.port())
    );
    reads(jobs.as_ref(), 42.0).await;

    // The queue drains; the next scrape shows it.
    target.set_typed("/metrics", 200, "text/plain; version=0.0.4", metrics(0, 5));
    reads(jobs.as_ref(), 0.0).await;

    assert_eq!(source(&prom, "scalar(sum(queue_depth))").sample().await.unwrap(), Some(5.0));
    assert_eq!(source(&prom, "queue_depth{queue=\"other\"}").sample().await.unwrap(), Some(5.0));

    // An absent metric is no data, not zero.
    assert_eq!(source(&prom, "sum(no_such_metric_xyz)").sample().await.unwrap(), None);
    assert_eq!(source(&prom, "no_such_metric_xyz").sample().await.unwrap(), None);

    let e = error(source(&prom, "queue_depth").as_ref()).await;
    assert_eq!(e.kind(), ErrorKind::NotANumber);
    assert!(e.message().contains("returned 2 series; aggregate them"), "{e}");

    let e = error(source(&prom, "queue_depth[1m]").as_ref()).await;
    assert!(e.message().contains("range vector"), "{e}");

    let e = error(source(&prom, "sum(queue_depth").as_ref()).await;
    assert_eq!(e.kind(), ErrorKind::Server);
    assert!(e.message().starts_with("HTTP 400: PromQL bad_data: "), "{e}");
}

#[tokio::test]
async fn unreachable_prometheus_is_connection_refused() {
    let port = herd_metric_sources::testkit::free_port().unwrap();
    let s = SourceSpec {
        kind: SourceKind::Prometheus,
        endpoint: format!("http://127.0.0.1:{port}"),
        settings: json!({"query": "up"}),
        protected: json!({"headers": {"Authorization": format!("Bearer {TOKEN}")}}),
    };
    let e = error(build(&s, t()).unwrap().as_ref()).await;
    assert_eq!(e.kind(), ErrorKind::Unreachable);
    assert!(e.to_string().ends_with("query \"up\": connection refused"), "{e}");
}
