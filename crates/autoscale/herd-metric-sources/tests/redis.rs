//! The Redis source against a real `redis-server` (Debian package `redis-server`) started by
//! each test on a free loopback port with a password.

use std::time::{Duration, Instant};

use herd_metric_sources::redis::{Connection, Value};
use herd_metric_sources::testkit::{free_port, RedisServer};
use herd_metric_sources::{build, validate, ErrorKind, MetricSource, SourceError, SourceKind, SourceSpec};
use serde_json::json;

const PW: &str = "pw-Redis-s3cret";
/// Each request's timeout (times `HERD_TEST_TIME_SCALE`).
fn t() -> Duration {
    herd_test_support::scaled(Duration::from_secs(5))
}

fn spec(endpoint: &str, settings: serde_json::Value, protected: serde_json::Value) -> SourceSpec {
    SourceSpec { kind: SourceKind::Redis, endpoint: endpoint.into(), settings, protected }
}

fn source(endpoint: &str, settings: serde_json::Value) -> Box<dyn MetricSource> {
    let s = spec(endpoint, settings, json!({"password": PW}));
    validate(&s).unwrap();
    build(&s, t()).unwrap()
}

async fn client(srv: &RedisServer) -> Connection {
    let mut c = Connection::connect(&srv.endpoint()).await.unwrap();
    c.command(&["AUTH", PW]).await.unwrap();
    c
}

fn assert_no_secret(e: &SourceError, src: &dyn MetricSource, secret: &str) {
    for text in [e.to_string(), format!("{e:?}"), src.describe()] {
        assert!(!text.contains(secret), "secret leaked: {text}");
    }
}

#[tokio::test]
async fn list_length_follows_pushes_and_drains() {
    let srv = RedisServer::start(PW).await.unwrap();
    let src = source(&srv.endpoint(), json!({"key": "jobs"}));
    assert_eq!(src.describe(), format!("redis 127.0.0.1:{} list jobs", srv.port()));
    assert!(!src.describe().contains(PW));

    // Redis deletes an emptied list, so a missing key is an empty queue: 0, not "no data".
    assert_eq!(src.sample().await.unwrap(), Some(0.0));

    let mut c = client(&srv).await;
    let mut push: Vec<String> = vec!["RPUSH".into(), "jobs".into()];
    push.extend((0..100).map(|i| format!("job-{i}")));
    assert_eq!(c.command(&push).await.unwrap(), Value::Int(100));
    assert_eq!(src.sample().await.unwrap(), Some(100.0));

    // Drain it the way workers do.
    for _ in 0..100 {
        assert!(matches!(c.command(&["LPOP", "jobs"]).await.unwrap(), Value::Bulk(_)));
    }
    assert_eq!(src.sample().await.unwrap(), Some(0.0));

    // One new item is seen at once (scale from zero).
    c.command(&["LPUSH", "jobs", "one"]).await.unwrap();
    assert_eq!(src.sample().await.unwrap(), Some(1.0));
}

#[tokio::test]
async fn database_number_in_the_endpoint_is_selected() {
    let srv = RedisServer::start(PW).await.unwrap();
    let mut c = client(&srv).await;
    c.command(&["SELECT", "3"]).await.unwrap();
    c.command(&["RPUSH", "q", "a", "b", "c"]).await.unwrap();
    let in_db3 = source(&format!("{}/3", srv.endpoint()), json!({"key": "q"}));
    let in_db0 = source(&srv.endpoint(), json!({"key": "q"}));
    assert_eq!(in_db3.sample().await.unwrap(), Some(3.0));
    assert_eq!(in_db0.sample().await.unwrap(), Some(0.0));
    assert!(in_db3.describe().contains("/3 list q"), "{}", in_db3.describe());
}

#[tokio::test]
async fn stream_group_lag_and_pending() {
    let srv = RedisServer::start(PW).await.unwrap();
    let mut c = client(&srv).await;
    c.command(&["XGROUP", "CREATE", "events", "workers", "$", "MKSTREAM"]).await.unwrap();
    let lag = source(&srv.endpoint(), json!({"stream": "events", "group": "workers"}));
    let outstanding = source(&srv.endpoint(), json!({"stream": "events", "group": "workers", "includePending": true}));
    assert_eq!(lag.sample().await.unwrap(), Some(0.0));

    for i in 0..10 {
        c.command(&["XADD", "events", "*", "n", &i.to_string()]).await.unwrap();
    }
    assert_eq!(lag.sample().await.unwrap(), Some(10.0));

    // A consumer takes 3: lag 7, and 3 pending until acknowledged.
    let read =
        c.command(&["XREADGROUP", "GROUP", "workers", "w1", "COUNT", "3", "STREAMS", "events", ">"]).await.unwrap();
    let ids: Vec<String> = match read {
        Value::Array(streams) => match &streams[0] {
            Value::Array(s) => match &s[1] {
                Value::Array(entries) => entries
                    .iter()
                    .map(|e| match e {
                        Value::Array(kv) => kv[0].as_text().unwrap(),
                        other => panic!("{other:?}"),
                    })
                    .collect(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    assert_eq!(ids.len(), 3);
    assert_eq!(lag.sample().await.unwrap(), Some(7.0));
    assert_eq!(outstanding.sample().await.unwrap(), Some(10.0));
    let mut ack = vec!["XACK", "events", "workers"];
    ack.extend(ids.iter().map(String::as_str));
    assert_eq!(c.command(&ack).await.unwrap(), Value::Int(3));
    assert_eq!(outstanding.sample().await.unwrap(), Some(7.0));
    assert!(outstanding.describe().ends_with("stream events group workers (lag + pending)"));

    // A missing group or stream is a clear error, not an empty queue.
    let e = source(&srv.endpoint(), json!({"stream": "events", "group": "nope"})).sample().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("group nope not found on stream events (it has workers)"), "{e}");
    let e = source(&srv.endpoint(), json!({"stream": "nostream", "group": "g"})).sample().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("stream nostream does not exist"), "{e}");
}

#[tokio::test]
async fn stream_lag_is_counted_when_redis_reports_it_as_nil() {
    let srv = RedisServer::start(PW).await.unwrap();
    let mut c = client(&srv).await;
    for id in ["1-1", "2-1", "3-1", "4-1"] {
        c.command(&["XADD", "s", id, "f", "v"]).await.unwrap();
    }
    c.command(&["XGROUP", "CREATE", "s", "g", "0"]).await.unwrap();
    // Deleting an entry the group has not read yet makes Redis report lag as nil.
    c.command(&["XDEL", "s", "2-1"]).await.unwrap();
    let info = c.command(&["XINFO", "GROUPS", "s"]).await.unwrap();
    let Value::Array(groups) = info else { panic!() };
    let Value::Array(kv) = &groups[0] else { panic!() };
    let lag_at = kv.iter().position(|v| v.as_text().as_deref() == Some("lag")).unwrap();
    assert_eq!(kv[lag_at + 1], Value::Nil, "this Redis reports a lag here; the fallback is not exercised");

    let src = source(&srv.endpoint(), json!({"stream": "s", "group": "g"}));
    assert_eq!(src.sample().await.unwrap(), Some(3.0));
    c.command(&["XREADGROUP", "GROUP", "g", "c", "COUNT", "1", "STREAMS", "s", ">"]).await.unwrap();
    assert_eq!(src.sample().await.unwrap(), Some(2.0));
}

#[tokio::test]
async fn wrong_or_missing_password_is_an_auth_error_without_the_password() {
    let srv = RedisServer::start(PW).await.unwrap();
    let wrong = "wrong-pw-Zq81";
    let src = build(&spec(&srv.endpoint(), json!({"key": "jobs"}), json!({"password": wrong})), t()).unwrap();
    let e = src.sample().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    assert!(e.to_string().contains("authentication failed"), "{e}");
    assert!(e.to_string().contains(&format!("redis 127.0.0.1:{} list jobs", srv.port())), "{e}");
    assert_no_secret(&e, src.as_ref(), wrong);
    assert_no_secret(&e, src.as_ref(), PW);

    let src = build(&spec(&srv.endpoint(), json!({"key": "jobs"}), json!(null)), t()).unwrap();
    let e = src.sample().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    assert!(e.to_string().contains("NOAUTH"), "{e}");
}

#[tokio::test]
async fn wrong_type_is_a_clear_server_error() {
    let srv = RedisServer::start(PW).await.unwrap();
    client(&srv).await.command(&["SET", "jobs", "not-a-list"]).await.unwrap();
    let src = source(&srv.endpoint(), json!({"key": "jobs"}));
    let e = src.sample().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Server);
    assert!(e.to_string().contains("LLEN: WRONGTYPE"), "{e}");
    assert_no_secret(&e, src.as_ref(), PW);
}

#[tokio::test]
async fn unreachable_port_fails_fast_with_connection_refused() {
    let port = free_port().unwrap();
    let src = source(&format!("127.0.0.1:{port}"), json!({"key": "jobs"}));
    let start = Instant::now();
    let e = src.sample().await.unwrap_err();
    assert!(start.elapsed() < herd_test_support::scaled(Duration::from_secs(1)), "{:?}", start.elapsed());
    assert_eq!(e.kind(), ErrorKind::Unreachable);
    assert_eq!(e.to_string(), format!("redis 127.0.0.1:{port} list jobs: connection refused"));
    assert_no_secret(&e, src.as_ref(), PW);
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    // Accepts connections (the kernel's backlog does) but never replies.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let s = spec(&format!("127.0.0.1:{port}"), json!({"key": "jobs"}), json!({"password": PW}));
    let src = build(&s, Duration::from_millis(300)).unwrap();
    let start = Instant::now();
    let e = src.sample().await.unwrap_err();
    assert!(start.elapsed() < herd_test_support::scaled(Duration::from_secs(2)), "{:?}", start.elapsed());
    assert_eq!(e.kind(), ErrorKind::Timeout);
    assert!(e.to_string().ends_with("timed out after 300ms"), "{e}");
    drop(listener);
}

/// A server that answers every connection with an HTTP error and hangs up.
fn not_redis() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::Write;
        if let Ok((mut c, _)) = listener.accept() {
            let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
        }
    });
    port
}

#[tokio::test]
async fn a_server_that_is_not_redis_is_a_protocol_error() {
    let port = not_redis();
    let e = source(&format!("127.0.0.1:{port}"), json!({"key": "jobs"})).sample().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert!(e.message().contains("is this a Redis server?"), "{e}");
    assert!(!e.to_string().contains(PW));
}
