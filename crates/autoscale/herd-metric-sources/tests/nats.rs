//! The NATS JetStream source against a real `nats-server -js` (Debian package `nats-server`)
//! started by each test on a free loopback port. Streams and consumers are made through the
//! JetStream API with the crate's own minimal client.

use std::time::{Duration, Instant};

use herd_metric_sources::nats::{Auth, Client};
use herd_metric_sources::testkit::{free_port, NatsServer};
use herd_metric_sources::{build, validate, ErrorKind, SourceKind, SourceSpec};
use serde_json::{json, Value};

const TOKEN: &str = "tok-Nats-s3cret";
/// Each request's timeout (times `HERD_TEST_TIME_SCALE`).
fn t() -> Duration {
    herd_test_support::scaled(Duration::from_secs(5))
}

fn spec(endpoint: &str, settings: Value, protected: Value) -> SourceSpec {
    SourceSpec { kind: SourceKind::NatsJetstream, endpoint: endpoint.into(), settings, protected }
}

async fn api(c: &mut Client, subject: &str, body: Value) -> Value {
    let reply = c.request(subject, body.to_string().as_bytes()).await.unwrap();
    let v: Value = serde_json::from_slice(&reply).unwrap();
    assert!(v.get("error").is_none(), "{subject}: {v}");
    v
}

/// A stream JOBS on `jobs.>` and a durable pull consumer `workers`.
async fn setup(c: &mut Client) {
    api(c, "$JS.API.STREAM.CREATE.JOBS", json!({"name": "JOBS", "subjects": ["jobs.>"], "storage": "memory"})).await;
    api(
        c,
        "$JS.API.CONSUMER.DURABLE.CREATE.JOBS.workers",
        json!({"stream_name": "JOBS", "config": {"durable_name": "workers", "ack_policy": "explicit"}}),
    )
    .await;
}

/// Publishes with a reply inbox, so JetStream's ack says each message is stored.
async fn publish(c: &mut Client, n: usize) {
    for i in 0..n {
        let ack = api_raw(c, &format!("jobs.item{}", i % 3), format!("job {i}").as_bytes()).await;
        assert!(ack.get("seq").is_some(), "{ack}");
    }
}

async fn api_raw(c: &mut Client, subject: &str, payload: &[u8]) -> Value {
    serde_json::from_slice(&c.request(subject, payload).await.unwrap()).unwrap()
}

#[tokio::test]
async fn consumer_pending_counts_published_messages_with_token_auth() {
    let auth = Auth::Token(TOKEN.into());
    let srv = NatsServer::start(&auth).await.unwrap();
    let mut c = Client::connect(&srv.endpoint(), &auth).await.unwrap();
    setup(&mut c).await;

    let s = spec(&srv.endpoint(), json!({"stream": "JOBS", "consumer": "workers"}), json!({"token": TOKEN}));
    validate(&s).unwrap();
    let src = build(&s, t()).unwrap();
    assert_eq!(src.describe(), format!("nats-jetstream 127.0.0.1:{} stream JOBS consumer workers", srv.port()));
    assert_eq!(src.sample().await.unwrap(), Some(0.0));

    publish(&mut c, 25).await;
    assert_eq!(src.sample().await.unwrap(), Some(25.0));

    // A worker pulls two: they leave num_pending and are in flight (ack pending).
    for _ in 0..2 {
        c.request("$JS.API.CONSUMER.MSG.NEXT.JOBS.workers", br#"{"batch":1}"#).await.unwrap();
    }
    assert_eq!(src.sample().await.unwrap(), Some(23.0));
    let mut with_pending = s.clone();
    with_pending.settings["includePending"] = json!(true);
    let src2 = build(&with_pending, t()).unwrap();
    assert_eq!(src2.sample().await.unwrap(), Some(25.0));
    assert!(src2.describe().ends_with("(pending + ack pending)"));
}

#[tokio::test]
async fn user_password_auth_and_bad_credentials() {
    let pw = "pw-Nats-s3cret";
    let auth = Auth::UserPassword { user: "herd".into(), password: pw.into() };
    let srv = NatsServer::start(&auth).await.unwrap();
    let mut c = Client::connect(&srv.endpoint(), &auth).await.unwrap();
    setup(&mut c).await;
    publish(&mut c, 4).await;
    let settings = json!({"stream": "JOBS", "consumer": "workers"});

    let ok = build(&spec(&srv.endpoint(), settings.clone(), json!({"user": "herd", "password": pw})), t()).unwrap();
    assert_eq!(ok.sample().await.unwrap(), Some(4.0));

    let wrong = "wrong-Nats-pw";
    let bad = build(&spec(&srv.endpoint(), settings.clone(), json!({"user": "herd", "password": wrong})), t()).unwrap();
    let e = bad.sample().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    assert!(e.to_string().contains("authentication failed: Authorization Violation"), "{e}");
    for text in [e.to_string(), format!("{e:?}"), bad.describe()] {
        assert!(!text.contains(wrong) && !text.contains(pw), "{text}");
    }

    let none = build(&spec(&srv.endpoint(), settings.clone(), json!(null)), t()).unwrap();
    assert_eq!(none.sample().await.unwrap_err().kind(), ErrorKind::Auth);

    let token = build(&spec(&srv.endpoint(), settings, json!({"token": TOKEN})), t()).unwrap();
    let e = token.sample().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth);
    assert!(!e.to_string().contains(TOKEN) && !token.describe().contains(TOKEN), "{e}");
}

#[tokio::test]
async fn missing_stream_or_consumer_is_not_found() {
    let srv = NatsServer::start(&Auth::None).await.unwrap();
    let mut c = Client::connect(&srv.endpoint(), &Auth::None).await.unwrap();
    setup(&mut c).await;
    let cases = [
        (json!({"stream": "JOBS", "consumer": "nobody"}), "consumer nobody: JetStream error 404: consumer not found"),
        (json!({"stream": "NOPE", "consumer": "workers"}), "stream not found"),
    ];
    for (settings, message) in cases {
        let e = build(&spec(&srv.endpoint(), settings, json!(null)), t()).unwrap().sample().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert!(e.to_string().contains(message), "{e}");
    }
}

#[tokio::test]
async fn unreachable_port_fails_fast_with_connection_refused() {
    let port = free_port().unwrap();
    let src = build(
        &spec(&format!("nats://127.0.0.1:{port}"), json!({"stream": "S", "consumer": "C"}), json!({"token": TOKEN})),
        t(),
    )
    .unwrap();
    let start = Instant::now();
    let e = src.sample().await.unwrap_err();
    assert!(start.elapsed() < herd_test_support::scaled(Duration::from_secs(1)));
    assert_eq!(e.to_string(), format!("nats-jetstream 127.0.0.1:{port} stream S consumer C: connection refused"));
}

#[tokio::test]
async fn a_server_that_is_not_nats_is_a_protocol_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::Write;
        if let Ok((mut c, _)) = listener.accept() {
            let _ = c.write_all(b"+OK redis says hi\r\n");
        }
    });
    let s = spec(&format!("nats://127.0.0.1:{port}"), json!({"stream": "S", "consumer": "C"}), json!({"token": TOKEN}));
    let e = build(&s, t()).unwrap().sample().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert!(e.message().contains("is this a NATS server?"), "{e}");
    assert!(!e.to_string().contains(TOKEN));
}

#[tokio::test]
async fn a_server_without_jetstream_says_so() {
    let srv = NatsServer::start_without_jetstream(&Auth::None).await.unwrap();
    let s = spec(&srv.endpoint(), json!({"stream": "S", "consumer": "C"}), json!(null));
    let e = build(&s, t()).unwrap().sample().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Server, "{e}");
    assert!(
        e.message().contains("no responders for $JS.API.CONSUMER.INFO.S.C; is JetStream enabled on the server (-js)?"),
        "{e}"
    );
}
