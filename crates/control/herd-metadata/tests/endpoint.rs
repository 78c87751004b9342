//! The metadata service against a real SQLite store and real listeners on loopback addresses:
//! each instance's endpoint speaks only for that instance, follows Azure IMDS's rules, and
//! listeners come and go with the records.
//!
//! Addresses are `127.20.<test>.<n>`: outside herd's instance (127.128.0.0/9) and public-IP
//! (127.64.0.0/10) ranges, so a herd server running on the same machine cannot collide.

use chrono::{DateTime, Duration, Utc};
use herd_metadata::{MetadataService, DEFAULT_PORT};
use herd_model::{
    clock::{Clock, ManualClock},
    instance::{InstanceRecord, InstanceState},
    spot::{EvictionReason, ScheduledEvent, ScheduledEventType},
};
use herd_reconciler::testkit::{model, stored_set};
use herd_store::{ActivityFilter, Expect, Kind, SqliteStore, Store, StoreExt, WriteOp};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::Notify;

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-02T10:00:00Z").unwrap().with_timezone(&Utc)
}

/// `herd_state::keys::InstanceRecordKey` of `rg/web/<id>`.
fn key(id: u64) -> String {
    format!("rg/web/{id:010}")
}

struct Env {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    clock: ManualClock,
    wake: Arc<Notify>,
    svc: MetadataService,
    net: u8,
    http: reqwest::Client,
}

impl Env {
    /// A store with set `rg/web` and instances 1 and 2 on `127.20.<net>.1` and `.2`.
    async fn new(net: u8) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("herd.db")).unwrap());
        let overlay = json!({
            "location": "lab",
            "zones": ["1", "2"],
            "tags": {"team": "web"},
            "virtualMachineProfile": {
                "priority": "Spot",
                "osProfile": {"adminPassword": "Sup3r-Secret!", "customData": "Y3VzdG9t"},
                "storageProfile": {"imageReference": {"version": "1.0.0"}}
            }
        });
        let mut set = stored_set("web", 4, model(2, overlay));
        set.time_created = t0();
        let mut ops = vec![WriteOp::put(Kind::ScaleSet, "rg/web", &set, Expect::Absent).unwrap()];
        for id in [1u64, 2] {
            let rec = record(id, &format!("127.20.{net}.{id}"));
            ops.push(WriteOp::put(Kind::Instance, key(id), &rec, Expect::Absent).unwrap());
        }
        store.txn(ops).unwrap();
        let clock = ManualClock::new(t0());
        let wake = Arc::new(Notify::new());
        let svc = MetadataService::new(store.clone(), Arc::new(clock.clone()), wake.clone(), DEFAULT_PORT);
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        Env { _dir: dir, store, clock, wake, svc, net, http }
    }

    fn addr(&self, id: u64) -> SocketAddr {
        format!("127.20.{}.{id}:{DEFAULT_PORT}", self.net).parse().unwrap()
    }

    fn url(&self, id: u64, path: &str) -> String {
        format!("http://{}{path}", self.addr(id))
    }

    async fn get(&self, id: u64, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(id, path)).header("Metadata", "true").send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, id: u64, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(id, "/metadata/scheduledevents?api-version=2020-07-01"))
            .header("Metadata", "true")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    fn record(&self, id: u64) -> (u64, InstanceRecord) {
        let o = self.store.get_as::<InstanceRecord>(Kind::Instance, &key(id)).unwrap().unwrap();
        (o.revision, o.value)
    }

    /// Read-modify-write of one record.
    fn update(&self, id: u64, f: impl FnOnce(&mut InstanceRecord)) {
        let (rev, mut rec) = self.record(id);
        f(&mut rec);
        self.store.txn(vec![WriteOp::put(Kind::Instance, key(id), &rec, Expect::Revision(rev)).unwrap()]).unwrap();
    }

    fn post_event(&self, id: u64, t: ScheduledEventType, reason: Option<EvictionReason>) -> String {
        let e =
            ScheduledEvent::new(t, self.clock.now(), Duration::seconds(30), format!("{t} of instance {id}"), reason);
        let event_id = e.event_id.clone();
        self.update(id, |r| r.scheduled_events.push(e));
        event_id
    }
}

fn record(id: u64, reach: &str) -> InstanceRecord {
    serde_json::from_value(json!({
        "instanceId": id,
        "computerName": format!("web{:06}", id),
        "zone": id.to_string(),
        "modelGeneration": 4,
        "state": "Running",
        "goal": "Running",
        "reachAddress": reach,
        "createdAt": t0(),
        "stateSince": t0(),
    }))
    .unwrap()
}

async fn refused(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_err()
}

const EVENTS: &str = "/metadata/scheduledevents?api-version=2020-07-01";
const INSTANCE: &str = "/metadata/instance?api-version=2021-02-01";

#[tokio::test]
async fn each_endpoint_speaks_only_for_its_own_instance() {
    let env = Env::new(1).await;
    let preempt = env.post_event(1, ScheduledEventType::Preempt, Some(EvictionReason::Capacity));
    let terminate = env.post_event(2, ScheduledEventType::Terminate, None);
    env.svc.sync().await;
    assert_eq!(env.svc.listening().await.keys().cloned().collect::<Vec<_>>(), ["rg/web/1", "rg/web/2"]);

    let (status, doc) = env.get(1, EVENTS).await;
    assert_eq!(status, 200);
    let events = doc["Events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{doc}");
    assert_eq!(events[0]["EventId"], preempt.as_str());
    assert_eq!(events[0]["EventType"], "Preempt");
    assert_eq!(events[0]["EventStatus"], "Scheduled");
    assert_eq!(events[0]["Resources"], json!(["web_1"]));
    assert_eq!(events[0]["ResourceType"], "VirtualMachine");
    assert_eq!(events[0]["NotBefore"], "Mon, 02 Mar 2026 10:00:30 GMT");
    assert_eq!(events[0]["EventSource"], "Platform");
    assert_eq!(events[0]["DurationInSeconds"], -1);
    assert!(doc["DocumentIncarnation"].as_u64().unwrap() >= 1);

    let (_, doc) = env.get(2, EVENTS).await;
    let events = doc["Events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{doc}");
    assert_eq!(events[0]["EventId"], terminate.as_str());
    assert_eq!(events[0]["Resources"], json!(["web_2"]));
    assert_eq!(events[0]["EventSource"], "User");

    for id in [1u64, 2] {
        let (status, doc) = env.get(id, INSTANCE).await;
        assert_eq!(status, 200, "{doc}");
        let c = &doc["compute"];
        assert_eq!(c["name"], format!("web_{id}"));
        assert_eq!(c["instanceId"], id.to_string());
        assert_eq!(c["osProfile"]["computerName"], format!("web{id:06}"));
        assert_eq!(c["zone"], id.to_string());
        assert_eq!(c["vmScaleSetName"], "web");
        assert_eq!(c["resourceGroupName"], "rg");
        assert_eq!(c["location"], "lab");
        assert_eq!(c["vmSize"], "Standard_B1ms");
        assert_eq!(c["priority"], "Spot");
        assert_eq!(c["modelGeneration"], "4");
        assert_eq!(c["tags"], "team:web");
        assert_eq!(
            doc["network"]["interface"][0]["ipv4"]["ipAddress"][0]["privateIpAddress"],
            format!("127.20.1.{id}")
        );
        let text = doc.to_string();
        assert!(!text.contains("Sup3r") && !text.contains("Y3VzdG9t"), "no secrets, no customData: {text}");
    }
    let (_, a) = env.get(1, INSTANCE).await;
    let (_, b) = env.get(2, INSTANCE).await;
    assert_ne!(a["compute"]["vmId"], b["compute"]["vmId"]);

    // Paths into the document, as JSON or text.
    let r = env
        .http
        .get(env.url(2, "/metadata/instance/compute/name?api-version=2021-02-01&format=text"))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), "web_2");
    let (status, v) = env.get(1, "/metadata/instance/compute/zone?api-version=2021-02-01").await;
    assert_eq!((status, v), (200, json!("1")));
    let (status, v) = env.get(1, "/metadata/instance/compute/nothing?api-version=2021-02-01").await;
    assert_eq!(status, 404, "{v}");
}

#[tokio::test]
async fn requests_follow_imds_rules() {
    let env = Env::new(2).await;
    env.svc.sync().await;
    // No Metadata header, or not "true".
    for header in [None, Some("false")] {
        let mut req = env.http.get(env.url(1, EVENTS));
        if let Some(h) = header {
            req = req.header("Metadata", h);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("Required metadata header not specified"), "{body}");
    }
    // api-version: required, and known.
    let (status, body) = env.get(1, "/metadata/scheduledevents").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("api-version was not specified"), "{body}");
    assert_eq!(body["newest-versions"].as_array().unwrap().len(), 3);
    let (status, body) = env.get(1, "/metadata/instance?api-version=1999-01-01").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("api-version is invalid"), "{body}");
    let (status, body) = env.get(1, "/metadata/versions").await;
    assert_eq!(status, 200);
    assert!(body["apiVersions"].as_array().unwrap().contains(&json!("2021-02-01")));
    // Through a proxy: refused.
    let r = env
        .http
        .get(env.url(1, EVENTS))
        .header("Metadata", "true")
        .header("X-Forwarded-For", "10.1.2.3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // What herd does not offer says so.
    let (status, body) = env.get(1, "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://x").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("herd does not offer managed identities"), "{body}");
    let (status, body) = env.get(1, "/metadata/nothing?api-version=2021-02-01").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("/metadata/scheduledevents"), "{body}");
    // Methods.
    let r = env.http.put(env.url(1, EVENTS)).header("Metadata", "true").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let r = env.http.post(env.url(1, INSTANCE)).header("Metadata", "true").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    // A body that is not StartRequests.
    let (status, body) = env.post(1, json!({"Start": []})).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("StartRequests"), "{body}");
}

#[tokio::test]
async fn acknowledging_starts_only_this_instances_event_and_wakes_the_reconciler() {
    let env = Env::new(3).await;
    let mine = env.post_event(1, ScheduledEventType::Preempt, Some(EvictionReason::Simulated));
    let theirs = env.post_event(2, ScheduledEventType::Preempt, Some(EvictionReason::Simulated));
    env.svc.sync().await;
    env.clock.advance(Duration::seconds(5));
    let (rev1, _) = env.record(1);
    let (rev2, before2) = env.record(2);

    // The other instance's event id is unknown here; nothing changes.
    let (status, body) = env.post(1, json!({"StartRequests": [{"EventId": mine}, {"EventId": theirs}]})).await;
    assert_eq!(status, 400);
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains(&theirs) && !msg.contains(&mine), "{msg}");
    assert_eq!(env.record(1).0, rev1, "nothing half-applied");
    assert_eq!(env.record(2).0, rev2);

    // Its own event: acknowledged at the clock's time, that record only, reconciler woken.
    let (status, body) = env.post(1, json!({"DocumentIncarnation": 1, "StartRequests": [{"EventId": mine}]})).await;
    assert_eq!(status, 200, "{body}");
    let (_, rec1) = env.record(1);
    assert_eq!(rec1.scheduled_events[0].acknowledged_at, Some(t0() + Duration::seconds(5)));
    assert!(rec1.scheduled_events[0].due(t0() + Duration::seconds(5)));
    assert_eq!(env.record(2), (rev2, before2), "the other instance is untouched");
    tokio::time::timeout(herd_test_support::scaled(std::time::Duration::from_secs(1)), env.wake.notified())
        .await
        .expect("the reconciler was woken");
    let log = env.store.activity(&ActivityFilter::default()).unwrap();
    assert!(log.iter().any(|e| e.operation == "AcknowledgeScheduledEvent" && e.message.contains(&mine)), "{log:?}");

    // Again: idempotent, the first acknowledgement time stays.
    env.clock.advance(Duration::seconds(5));
    let (status, _) = env.post(1, json!({"StartRequests": [{"EventId": mine}]})).await;
    assert_eq!(status, 200);
    assert_eq!(env.record(1).1.scheduled_events[0].acknowledged_at, Some(t0() + Duration::seconds(5)));

    // The other instance acknowledges its own on its own endpoint.
    let (status, _) = env.post(2, json!({"StartRequests": [{"EventId": theirs}]})).await;
    assert_eq!(status, 200);
    assert_eq!(env.record(2).1.scheduled_events[0].acknowledged_at, Some(t0() + Duration::seconds(10)));
}

#[tokio::test]
async fn document_incarnation_grows_when_the_events_change() {
    let env = Env::new(4).await;
    env.svc.sync().await;
    let inc = |doc: &Value| doc["DocumentIncarnation"].as_u64().unwrap();
    let (_, d0) = env.get(1, EVENTS).await;
    assert_eq!(d0["Events"], json!([]));
    let (_, again) = env.get(1, EVENTS).await;
    assert_eq!(inc(&again), inc(&d0), "no change, same incarnation");

    // A write that does not touch the events keeps it.
    env.update(1, |r| r.state = InstanceState::Running);
    let (_, same) = env.get(1, EVENTS).await;
    assert_eq!(inc(&same), inc(&d0));

    env.post_event(1, ScheduledEventType::Preempt, None);
    let (_, d1) = env.get(1, EVENTS).await;
    assert_eq!(d1["Events"].as_array().unwrap().len(), 1);
    assert!(inc(&d1) > inc(&d0), "{d0} then {d1}");

    // The event starts (the reconciler's write): NotBefore goes blank, the number grows again.
    env.update(1, |r| r.scheduled_events[0].status = herd_model::spot::ScheduledEventStatus::Started);
    let (_, d2) = env.get(1, EVENTS).await;
    assert_eq!(d2["Events"][0]["EventStatus"], "Started");
    assert_eq!(d2["Events"][0]["NotBefore"], "");
    assert!(inc(&d2) > inc(&d1));

    // Removed with the action it announced.
    env.update(1, |r| r.scheduled_events.clear());
    let (_, d3) = env.get(1, EVENTS).await;
    assert_eq!(d3["Events"], json!([]));
    assert!(inc(&d3) > inc(&d2));

    // A new service (a server restart) never goes back.
    let fresh = MetadataService::new(env.store.clone(), Arc::new(env.clock.clone()), env.wake.clone(), DEFAULT_PORT);
    env.svc.close_all().await;
    fresh.sync().await;
    let (_, d4) = env.get(1, EVENTS).await;
    assert!(inc(&d4) >= inc(&d3));
    fresh.close_all().await;
}

#[tokio::test]
async fn listeners_follow_the_records() {
    let env = Env::new(5).await;
    // Instance 2's address is taken: the sync goes on without it, and retries later.
    let squatter = std::net::TcpListener::bind(env.addr(2)).unwrap();
    env.svc.sync().await;
    assert_eq!(env.svc.listening().await.len(), 1);
    env.svc.sync().await;
    drop(squatter);
    env.svc.sync().await;
    assert_eq!(env.svc.listening().await.len(), 2);
    assert_eq!(env.get(2, EVENTS).await.0, 200);

    // Gone: its listener closes by the time sync returns; the other one stays.
    env.store.txn(vec![WriteOp::delete(Kind::Instance, key(2), Expect::Any)]).unwrap();
    env.svc.sync().await;
    assert!(refused(env.addr(2)).await, "the deleted instance's endpoint is closed");
    assert_eq!(env.get(1, EVENTS).await.0, 200);

    // Deallocated: no compute, no endpoint. Started again: back.
    env.update(1, |r| r.state = InstanceState::Deallocated);
    env.svc.sync().await;
    assert!(refused(env.addr(1)).await);
    env.update(1, |r| r.state = InstanceState::Starting);
    env.svc.sync().await;
    assert_eq!(env.get(1, EVENTS).await.0, 200);

    // A new reach address: the listener moves.
    env.update(1, |r| r.reach_address = "127.20.5.9".into());
    env.svc.sync().await;
    assert!(refused(env.addr(1)).await);
    assert_eq!(env.get(9, EVENTS).await.0, 200);
    assert_eq!(env.get(9, INSTANCE).await.1["compute"]["name"], "web_1");
}

/// A bridged instance (its reach address is its own private address) is served at the
/// metadata address: a listener with a port of its own, listed with its identity for the
/// host's nftables; it closes when the instance is deallocated, and each change is told.
#[tokio::test]
async fn a_bridged_instance_listens_on_the_metadata_address() {
    let env = Env::new(7).await;
    let changes = env.svc.changes();
    env.update(1, |r| {
        r.reach_address = "10.20.0.4".into();
        r.private_ip = Some("10.20.0.4".into());
    });
    env.svc.sync().await;
    tokio::time::timeout(std::time::Duration::from_secs(5), changes.notified()).await.expect("no change was told");
    let vnet = env.svc.vnet_listeners().await;
    assert_eq!(vnet.len(), 1, "{vnet:?}");
    assert_eq!(vnet[0].0, std::net::Ipv4Addr::new(10, 20, 0, 4));
    assert_ne!(vnet[0].1, 0, "a port of its own");
    let listening = env.svc.listening().await;
    assert_eq!(listening["rg/web/1"], SocketAddr::from(([0, 0, 0, 0], vnet[0].1)));
    assert_eq!(listening["rg/web/2"], env.addr(2), "the host-local instance keeps its reach address");
    env.svc.sync().await;
    assert_eq!(env.svc.vnet_listeners().await, vnet, "a second sync keeps the listener and its port");

    env.update(1, |r| r.state = InstanceState::Deallocated);
    env.svc.sync().await;
    assert!(env.svc.vnet_listeners().await.is_empty());
    tokio::time::timeout(std::time::Duration::from_secs(5), changes.notified()).await.expect("the close was not told");
}

#[tokio::test]
async fn the_runtime_syncs_it_until_shutdown() {
    let env = Env::new(6).await;
    let svc = MetadataService::with_interval(
        env.store.clone(),
        Arc::new(env.clock.clone()),
        env.wake.clone(),
        DEFAULT_PORT,
        std::time::Duration::from_millis(20),
    );
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut runtime = herd_controller_runtime::Runtime::new(env.store.clone().into(), Arc::new(env.clock.clone()));
    runtime.add(Arc::new(svc.clone()));
    let tasks = runtime.start(rx).await;
    let up = async {
        while svc.listening().await.len() < 2 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(herd_test_support::scaled(std::time::Duration::from_secs(5)), up).await.expect("listeners up");
    env.store.txn(vec![WriteOp::delete(Kind::Instance, key(1), Expect::Any)]).unwrap();
    let down = async {
        while svc.listening().await.len() > 1 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(herd_test_support::scaled(std::time::Duration::from_secs(5)), down)
        .await
        .expect("removed record's listener closed");
    tx.send(true).unwrap();
    for task in tasks {
        tokio::time::timeout(herd_test_support::scaled(std::time::Duration::from_secs(5)), task)
            .await
            .unwrap()
            .unwrap();
    }
    assert!(refused(env.addr(2)).await, "shutdown closes every listener");
}
