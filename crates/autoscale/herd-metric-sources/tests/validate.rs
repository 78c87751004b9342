//! `validate` and `build` without any server: kinds, field paths, refused kinds, and secrets
//! that must never appear in an error.

use std::time::Duration;

use herd_metric_sources::{build, validate, ErrorKind, SourceKind, SourceSpec};
use serde_json::{json, Value};

fn spec(kind: SourceKind, endpoint: &str, settings: Value, protected: Value) -> SourceSpec {
    SourceSpec { kind, endpoint: endpoint.into(), settings, protected }
}

#[test]
fn kinds_parse_case_insensitively() {
    let cases = [
        ("redis", SourceKind::Redis),
        ("NATS-JetStream", SourceKind::NatsJetstream),
        ("PostgreSQL", SourceKind::Postgresql),
        ("HTTP-JSON", SourceKind::HttpJson),
        ("RabbitMQ", SourceKind::Rabbitmq),
        ("prometheus", SourceKind::Prometheus),
    ];
    for (text, kind) in cases {
        assert_eq!(text.parse::<SourceKind>().unwrap(), kind);
        assert_eq!(kind.to_string(), text.to_ascii_lowercase());
    }
    let e = "sqs".parse::<SourceKind>().unwrap_err();
    assert_eq!(e.field, "kind");
    assert_eq!(
        e.message,
        "'sqs' is not allowed; allowed values: redis, nats-jetstream, postgresql, http-json, rabbitmq, prometheus"
    );
}

#[test]
fn spec_round_trips_as_json() {
    let s: SourceSpec = serde_json::from_value(json!({
        "kind": "Redis", "endpoint": "redis://h:1", "settings": {"key": "jobs"}
    }))
    .unwrap();
    assert_eq!(s.kind, SourceKind::Redis);
    assert_eq!(s.protected, Value::Null);
    let back = serde_json::to_value(&s).unwrap();
    assert_eq!(back["kind"], "redis");
}

#[test]
fn rabbitmq_is_not_supported_yet() {
    let s = spec(
        SourceKind::Rabbitmq,
        "http://127.0.0.1:15672",
        json!({"queue": "jobs"}),
        json!({"password": "rabbit-pw-1"}),
    );
    let e = validate(&s).unwrap_err();
    assert_eq!(e.field, "kind");
    assert!(e.message.starts_with("not supported yet: rabbitmq"), "{e}");
    assert!(e.message.contains("http-json"), "the message says what to use instead: {e}");
    let b = build(&s, Duration::from_secs(1)).err().unwrap();
    assert_eq!(b.kind(), ErrorKind::Config);
    assert!(b.to_string().contains("not supported yet") && !b.to_string().contains("rabbit-pw-1"), "{b}");
}

#[test]
fn field_paths_name_the_mistake() {
    let cases = [
        (spec(SourceKind::Redis, "redis://h:6379", json!({}), json!(null)), "settings.key"),
        (spec(SourceKind::Redis, "redis://h:6379", json!({"key": "k"}), json!("pw")), "protected"),
        (spec(SourceKind::Redis, "", json!({"key": "k"}), json!(null)), "endpoint"),
        (spec(SourceKind::NatsJetstream, "nats://h", json!({"stream": "S"}), json!(null)), "settings.consumer"),
        (
            spec(SourceKind::NatsJetstream, "tls://h:4222", json!({"stream": "S", "consumer": "C"}), json!(null)),
            "endpoint",
        ),
        (spec(SourceKind::Postgresql, "postgresql://h/db", json!({"user": "u"}), json!(null)), "settings.query"),
        (spec(SourceKind::HttpJson, "http://h/x", json!({"pointer": "/a", "extra": 1}), json!(null)), "settings.extra"),
        (spec(SourceKind::Prometheus, "http://h:9090", json!({"query": ""}), json!(null)), "settings.query"),
    ];
    for (s, field) in cases {
        let e = validate(&s).unwrap_err();
        assert_eq!(e.field, field, "{s:?}: {e}");
    }
    let e = validate(&spec(SourceKind::Redis, "redis://h", json!({"key": "k"}), json!({"password": "p", "pw": "x"})))
        .unwrap_err();
    assert_eq!(e.field, "protected.pw");
    assert_eq!(e.message, "unknown protected setting for redis; allowed: password");
}

#[test]
fn credentials_in_an_endpoint_are_refused_without_echoing_them() {
    let secret = "Endpoint-s3cret";
    let cases = [
        spec(SourceKind::Redis, &format!("redis://:{secret}@127.0.0.1:6379"), json!({"key": "k"}), json!(null)),
        spec(SourceKind::Redis, &format!("default:{secret}@127.0.0.1:6379"), json!({"key": "k"}), json!(null)),
        spec(
            SourceKind::NatsJetstream,
            &format!("nats://u:{secret}@127.0.0.1:4222"),
            json!({"stream": "S", "consumer": "C"}),
            json!(null),
        ),
        spec(
            SourceKind::Postgresql,
            &format!("postgresql://app:{secret}@127.0.0.1/db"),
            json!({"query": "SELECT 1"}),
            json!(null),
        ),
        spec(SourceKind::HttpJson, &format!("http://u:{secret}@127.0.0.1/x"), json!({"pointer": "/a"}), json!(null)),
        spec(SourceKind::Prometheus, &format!("http://u:{secret}@127.0.0.1:9090"), json!({"query": "up"}), json!(null)),
    ];
    for s in cases {
        let e = validate(&s).unwrap_err();
        assert_eq!(e.field, "endpoint", "{e}");
        assert!(!e.to_string().contains(secret), "{e}");
        assert!(e.message.contains("protected"), "says where credentials go: {e}");
        let b = build(&s, Duration::from_secs(1)).err().unwrap();
        assert_eq!(b.kind(), ErrorKind::Config);
        assert!(!b.to_string().contains(secret) && !format!("{b:?}").contains(secret), "{b}");
        assert!(!format!("{s:?}").contains(secret), "{s:?}");
    }
}

#[test]
fn protected_values_are_never_echoed() {
    let secret = "Protected-s3cret";
    let cases = [
        spec(SourceKind::Redis, "redis://h", json!({"key": "k"}), json!({"password": [secret]})),
        spec(SourceKind::HttpJson, "http://h/x", json!({"pointer": "/a"}), json!({"headers": {"X-Key": [secret]}})),
        spec(
            SourceKind::HttpJson,
            "http://h/x",
            json!({"pointer": "/a"}),
            json!({"headers": {"X-Key": format!("{secret}\n")}}),
        ),
        spec(
            SourceKind::NatsJetstream,
            "nats://h",
            json!({"stream": "S", "consumer": "C"}),
            json!({"token": secret, "user": "u", "password": "p"}),
        ),
    ];
    for s in cases {
        let e = validate(&s).unwrap_err();
        assert!(e.field.starts_with("protected"), "{e}");
        assert!(!e.to_string().contains(secret), "{e}");
    }
}

#[test]
fn describe_never_holds_a_secret() {
    let secret = "Describe-s3cret";
    let t = Duration::from_secs(1);
    let specs = [
        spec(
            SourceKind::Redis,
            "redis://127.0.0.1:6379/2",
            json!({"key": "jobs", "user": "herd"}),
            json!({"password": secret}),
        ),
        spec(
            SourceKind::NatsJetstream,
            "nats://127.0.0.1",
            json!({"stream": "S", "consumer": "C"}),
            json!({"token": secret}),
        ),
        spec(
            SourceKind::Postgresql,
            "postgresql://127.0.0.1/db",
            json!({"query": "SELECT 1", "user": "u"}),
            json!({"password": secret}),
        ),
        spec(
            SourceKind::HttpJson,
            "https://example.invalid/q",
            json!({"pointer": "/a"}),
            json!({"headers": {"Authorization": secret}}),
        ),
        spec(
            SourceKind::Prometheus,
            "http://127.0.0.1:9090",
            json!({"query": "up"}),
            json!({"headers": {"Authorization": secret}}),
        ),
    ];
    let expected = [
        "redis 127.0.0.1:6379/2 list jobs",
        "nats-jetstream 127.0.0.1:4222 stream S consumer C",
        "postgresql 127.0.0.1:5432/db user u query \"SELECT 1\"",
        "http-json https://example.invalid/q pointer /a",
        "prometheus http://127.0.0.1:9090/ query \"up\"",
    ];
    for (s, want) in specs.iter().zip(expected) {
        validate(s).unwrap();
        let src = build(s, t).unwrap();
        assert_eq!(src.describe(), want);
        assert!(!format!("{s:?}").contains(secret));
    }
}
