//! The app against a real PostgreSQL: the endpoints, two versions sharing one database, riding
//! out a database outage, and keeping the password out of argv and logs.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::app::{cmdline, get, post, AppProc, Password};
use support::postgres::PgCluster;

const WAIT: Duration = Duration::from_secs(30);

fn todos(app: &AppProc) -> Vec<Value> {
    let (status, body) = get(app.addr, "/api/todos");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap().as_array().expect("a JSON list").clone()
}

#[test]
fn endpoints_and_two_versions_share_the_database() {
    let pg = PgCluster::start();
    let v1 = AppProc::start(&pg, 1, "webscales000002", Password::File);
    assert_eq!(get(v1.addr, "/api/version"), (200, "Version 1 from webscales000002\n".into()));
    assert_eq!(get(v1.addr, "/healthz"), (200, "ok\n".into()));
    assert!(todos(&v1).is_empty());

    let (status, body) = post(v1.addr, "/api/todos", r#"{"title":"  buy <milk> & eggs "}"#);
    assert_eq!(status, 201, "{body}");
    let item: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(item["title"], "buy <milk> & eggs");
    assert!(item["id"].as_i64().is_some(), "{item}");
    let created = item["createdAt"].as_str().expect("createdAt");
    assert!(created.len() == 24 && created.ends_with('Z') && created.as_bytes()[10] == b'T', "{created}");
    assert_eq!(todos(&v1), vec![item.clone()]);

    // A second instance running version 2 sees the same items, and adds to them.
    let v2 = AppProc::start(&pg, 2, "webscales000003", Password::Env);
    assert_eq!(get(v2.addr, "/api/version"), (200, "Version 2 from webscales000003\n".into()));
    assert_eq!(todos(&v2), vec![item.clone()]);
    let (status, body) = post(v2.addr, "/api/todos", r#"{"title":"second"}"#);
    assert_eq!(status, 201, "{body}");
    let titles: Vec<_> = todos(&v1).iter().map(|t| t["title"].as_str().unwrap().to_string()).collect();
    assert_eq!(titles, ["buy <milk> & eggs", "second"]);

    // The page shows the version line and the (escaped) items.
    let (status, page) = get(v1.addr, "/");
    assert_eq!(status, 200);
    assert!(page.contains("Version 1 from webscales000002"), "{page}");
    assert!(page.contains("buy &lt;milk&gt; &amp; eggs") && page.contains("second"), "{page}");

    // Bad input is refused with a message naming the field.
    let (status, body) = post(v1.addr, "/api/todos", r#"{"title":"   "}"#);
    assert_eq!(status, 400);
    assert!(body.contains("title:"), "{body}");
    let (status, body) = post(v1.addr, "/api/todos", "not json");
    assert_eq!(status, 400);
    assert!(body.contains("body:"), "{body}");
    assert_eq!(get(v1.addr, "/nope").0, 404);
    assert_eq!(post(v1.addr, "/api/version", "{}").0, 405);
    assert_eq!(todos(&v2).len(), 2, "rejected posts stored nothing");
}

#[test]
fn rides_out_a_database_outage() {
    let pg = PgCluster::start();
    let app = AppProc::start(&pg, 1, "web-a", Password::File);
    assert_eq!(get(app.addr, "/healthz").0, 200);
    let (status, body) = post(app.addr, "/api/todos", r#"{"title":"before"}"#);
    assert_eq!(status, 201, "{body}");

    pg.stop();
    // The pooled connection is found dead and no new one can be made.
    assert_eq!(get(app.addr, "/healthz"), (503, "database unavailable\n".into()));
    assert_eq!(get(app.addr, "/api/version"), (200, "Version 1 from web-a\n".into()));
    assert_eq!(get(app.addr, "/api/todos").0, 503);
    assert_eq!(post(app.addr, "/api/todos", r#"{"title":"lost"}"#).0, 503);
    let (status, page) = get(app.addr, "/");
    assert_eq!(status, 200, "the page (a load balancer probe target) stays up");
    assert!(page.contains("database unavailable") && page.contains("Version 1 from web-a"), "{page}");

    pg.start_again();
    support::app::wait_until("/healthz to recover", WAIT, || (get(app.addr, "/healthz").0 == 200).then_some(()));
    let titles: Vec<_> = todos(&app).iter().map(|t| t["title"].as_str().unwrap().to_string()).collect();
    assert_eq!(titles, ["before"]);
    let log = app.log_text();
    assert!(log.contains("database unavailable") && log.contains("database reachable again"), "{log}");
    assert_eq!(log.matches("database unavailable").count(), 1, "an outage is logged once:\n{log}");
}

#[test]
fn the_password_stays_out_of_argv_and_logs() {
    let pg = PgCluster::start();
    let app = AppProc::start(&pg, 1, "web-a", Password::File);
    assert_eq!(get(app.addr, "/healthz").0, 200, "it logged in with the password");
    let argv = cmdline(app.pid());
    assert!(argv.contains("--db-password-file"), "{argv}");
    assert!(!argv.contains(&pg.password), "password in argv: {argv}");

    // A wrong password: the database refuses, the app says so without echoing either.
    let wrong = format!("wrong-{}", support::postgres::random_hex());
    let bad = AppProc::start_with(pg.port, &pg.user, &wrong, &pg.db, 1, "web-b", Password::Env);
    assert_eq!(get(bad.addr, "/healthz").0, 503);
    assert!(!cmdline(bad.pid()).contains(&wrong));
    for log in [app.log_text(), bad.log_text()] {
        assert!(!log.contains(&pg.password) && !log.contains(&wrong), "password in the log:\n{log}");
    }
    assert!(bad.log_text().contains("password authentication failed"), "{}", bad.log_text());
}

#[test]
fn answers_the_version_while_the_database_was_never_there() {
    // Nothing listens on this port: the app starts anyway.
    let port = support::postgres::free_port("127.0.0.1");
    let app = AppProc::start_with(port, "todo", "x", "todo", 7, "lonely", Password::File);
    assert_eq!(get(app.addr, "/api/version"), (200, "Version 7 from lonely\n".into()));
    assert_eq!(get(app.addr, "/healthz").0, 503);
    assert_eq!(get(app.addr, "/api/todos").0, 503);
    assert_eq!(support::app::http(app.addr, "HEAD", "/api/version", None).unwrap(), (200, String::new()));
}
