//! The PostgreSQL source against a real throw-away cluster (Debian package `postgresql`),
//! started by each test through `images/app/pg-test-cluster.sh` on a free loopback port with
//! scram-sha-256 password auth.

use std::time::{Duration, Instant};

use herd_metric_sources::testkit::{free_port, PostgresCluster};
use herd_metric_sources::{build, validate, ErrorKind, MetricSource, SourceError, SourceKind, SourceSpec};
use serde_json::{json, Value};

const PW: &str = "pw-Pg-s3cret";
/// Each request's timeout (times `HERD_TEST_TIME_SCALE`).
fn t() -> Duration {
    herd_test_support::scaled(Duration::from_secs(5))
}

fn spec(endpoint: &str, query: &str, protected: Value) -> SourceSpec {
    SourceSpec {
        kind: SourceKind::Postgresql,
        endpoint: endpoint.into(),
        settings: json!({"query": query, "user": "app"}),
        protected,
    }
}

fn source(pg: &PostgresCluster, query: &str) -> Box<dyn MetricSource> {
    let s = spec(&pg.endpoint(), query, json!({"password": PW}));
    validate(&s).unwrap();
    build(&s, t()).unwrap()
}

async fn value(pg: &PostgresCluster, query: &str) -> Option<f64> {
    source(pg, query).sample().await.unwrap_or_else(|e| panic!("{query}: {e}"))
}

async fn error(pg: &PostgresCluster, query: &str) -> SourceError {
    let src = source(pg, query);
    let e = src.sample().await.expect_err(query);
    for text in [e.to_string(), format!("{e:?}"), src.describe()] {
        assert!(!text.contains(PW), "secret leaked: {text}");
    }
    e
}

fn cluster() -> PostgresCluster {
    let pg = PostgresCluster::start("app", PW, "jobs").unwrap();
    pg.psql(
        "CREATE TABLE jobs (id serial PRIMARY KEY, done boolean NOT NULL DEFAULT false, note text);
         INSERT INTO jobs (done) SELECT i > 42 FROM generate_series(1, 50) AS i;",
    )
    .unwrap();
    pg
}

#[tokio::test]
async fn count_query_follows_the_table() {
    let pg = cluster();
    let q = "SELECT count(*) FROM jobs WHERE done = false";
    let src = source(&pg, q);
    assert_eq!(src.describe(), format!("postgresql 127.0.0.1:{}/jobs user app query \"{q}\"", pg.port()));
    assert_eq!(src.sample().await.unwrap(), Some(42.0));
    pg.psql("UPDATE jobs SET done = true WHERE id <= 40;").unwrap();
    assert_eq!(src.sample().await.unwrap(), Some(2.0));
    pg.psql("UPDATE jobs SET done = true;").unwrap();
    assert_eq!(src.sample().await.unwrap(), Some(0.0));
}

#[tokio::test]
async fn every_numeric_type_reads_and_null_is_no_data() {
    let pg = cluster();
    assert_eq!(value(&pg, "SELECT 7::smallint").await, Some(7.0));
    assert_eq!(value(&pg, "SELECT 70000::integer").await, Some(70000.0));
    assert_eq!(value(&pg, "SELECT 9000000000::bigint").await, Some(9_000_000_000.0));
    assert_eq!(value(&pg, "SELECT 2.5::real").await, Some(2.5));
    assert_eq!(value(&pg, "SELECT 0.125::double precision").await, Some(0.125));
    assert_eq!(value(&pg, "SELECT 123456.789::numeric").await, Some(123456.789));
    assert_eq!(value(&pg, "SELECT -0.0001::numeric").await, Some(-0.0001));
    assert_eq!(value(&pg, "SELECT avg(id) FROM jobs").await, Some(25.5));
    assert_eq!(
        value(&pg, "WITH open AS (SELECT * FROM jobs WHERE NOT done) SELECT count(*) FROM open;").await,
        Some(42.0)
    );
    // max() over no rows is NULL: the source answered, but there is no value.
    assert_eq!(value(&pg, "SELECT max(id) FROM jobs WHERE false").await, None);
}

#[tokio::test]
async fn wrong_results_and_writes_are_clear_errors() {
    let pg = cluster();
    let e = error(&pg, "SELECT 'hello'::text AS greeting").await;
    assert_eq!(e.kind(), ErrorKind::NotANumber);
    assert!(e.to_string().contains("column \"greeting\" is text, not a number"), "{e}");
    let e = error(&pg, "SELECT count(*)::text FROM jobs").await;
    assert!(e.message().contains("is text, not a number"), "{e}");
    let e = error(&pg, "SELECT 1, 2").await;
    assert!(e.message().contains("returns 2 columns"), "{e}");
    let e = error(&pg, "SELECT id FROM jobs WHERE false").await;
    assert!(e.message().contains("no row"), "{e}");
    let e = error(&pg, "SELECT id FROM jobs").await;
    assert!(e.message().contains("more than one row"), "{e}");
    let e = error(&pg, "SELECT count(*) FROM missing_table").await;
    assert_eq!(e.kind(), ErrorKind::Server);
    assert!(e.message().contains("relation \"missing_table\" does not exist"), "{e}");
    let e = error(&pg, "SELECT 'NaN'::numeric").await;
    assert_eq!(e.kind(), ErrorKind::NotANumber, "{e}");

    // A write hidden in a WITH passes the lexical check but the read-only transaction stops it.
    let e = error(&pg, "WITH d AS (DELETE FROM jobs RETURNING 1) SELECT count(*) FROM d").await;
    assert!(e.message().contains("read-only transaction"), "{e}");
    assert_eq!(pg.psql("SELECT count(*) FROM jobs;").unwrap().trim(), "50");

    // Several statements never reach the server.
    let multi = spec(&pg.endpoint(), "SELECT 1; DELETE FROM jobs", json!({"password": PW}));
    let fe = validate(&multi).unwrap_err();
    assert_eq!(fe.field, "settings.query");
    assert!(fe.message.contains("single statement"), "{fe}");
    let be = build(&multi, t()).err().unwrap();
    assert_eq!(be.kind(), ErrorKind::Config);
    assert!(!be.to_string().contains(PW));
    let fe = validate(&spec(&pg.endpoint(), "DELETE FROM jobs", json!(null))).unwrap_err();
    assert!(fe.message.contains("SELECT or WITH"), "{fe}");
    assert_eq!(pg.psql("SELECT count(*) FROM jobs;").unwrap().trim(), "50");
}

#[tokio::test]
async fn bad_password_or_database_without_the_password() {
    let pg = PostgresCluster::start("app", PW, "jobs").unwrap();
    let wrong = "wrong-Pg-pw";
    let src = build(&spec(&pg.endpoint(), "SELECT 1", json!({"password": wrong})), t()).unwrap();
    let e = src.sample().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    assert!(e.to_string().contains("authentication failed: password authentication failed for user \"app\""), "{e}");
    for text in [e.to_string(), format!("{e:?}"), src.describe()] {
        assert!(!text.contains(wrong) && !text.contains(PW), "{text}");
    }

    let e = build(&spec(&pg.endpoint(), "SELECT 1", json!(null)), t()).unwrap().sample().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    assert!(e.message().contains("protected.password"), "{e}");

    let other_db = format!("postgresql://127.0.0.1:{}/nodb", pg.port());
    let e = build(&spec(&other_db, "SELECT 1", json!({"password": PW})), t()).unwrap().sample().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.message().contains("\"nodb\" does not exist"), "{e}");
    assert!(!e.to_string().contains(PW));
}

#[tokio::test]
async fn unreachable_port_fails_fast_with_connection_refused() {
    let port = free_port().unwrap();
    let src =
        build(&spec(&format!("postgresql://127.0.0.1:{port}/jobs"), "SELECT 1", json!({"password": PW})), t()).unwrap();
    let start = Instant::now();
    let e = src.sample().await.unwrap_err();
    assert!(start.elapsed() < herd_test_support::scaled(Duration::from_secs(1)));
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
    assert_eq!(
        e.to_string(),
        format!("postgresql 127.0.0.1:{port}/jobs user app query \"SELECT 1\": connection refused")
    );
}
