//! Host capacity, Spot eviction, restore and scheduled events, on the simulated driver with
//! explicit passes and an injected clock: a 30-second notice or a 5-minute Terminate timeout
//! takes no real time.

use chrono::{DateTime, Duration as Span, Utc};
use herd_model::{
    clock::ManualClock,
    instance::{InstanceGoal, InstanceRecord, InstanceState},
    scale_set::{ScaleSetStatus, StoredScaleSet},
    spot::{EvictionReason, HostSpec, ScheduledEventType},
};
use herd_reconciler::testkit::{at, merge, model, stored_set, SimEnv};
use herd_reconciler::{capacity::SpotPrice, Reconciler, ReconcilerConfig};
use herd_store::{Expect, Kind, Store, StoreExt, WriteOp};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

fn t0() -> DateTime<Utc> {
    at("2026-03-01T00:00:00Z")
}

struct Env {
    store: Arc<dyn Store>,
    clock: ManualClock,
    rec: Reconciler,
    price: Arc<Mutex<f64>>,
}

/// One host of 8 vCPU (Standard_B1s is 1 vCPU, 1 GiB).
fn env() -> Env {
    let SimEnv { store, sim, clock } = SimEnv::new(t0());
    let price = Arc::new(Mutex::new(0.01));
    let p = price.clone();
    let config = ReconcilerConfig {
        hosts: vec![HostSpec {
            name: "h1".into(),
            zone: None,
            fault_domain: None,
            vcpus: 8,
            memory_mib: 16384,
            overcommit: 1.0,
            schedulable: true,
        }],
        spot_price: SpotPrice(Arc::new(move |_, _| Some(*p.lock().unwrap()))),
        ..Default::default()
    };
    let rec = Reconciler::new(store.clone(), sim, Arc::new(clock.clone()), config);
    Env { store, clock, rec, price }
}

fn set(name: &str, capacity: i64, extra: Value) -> StoredScaleSet {
    let mut v = json!({
        "sku": {"name": "Standard_B1s"},
        "overprovision": false,
        "virtualMachineProfile": {
            "osProfile": {"computerNamePrefix": name},
            "storageProfile": {"imageReference": {"version": "latest"}}
        }
    });
    merge(&mut v, extra);
    let mut set = stored_set(name, 1, model(capacity, v));
    set.time_created = t0();
    set
}

fn spot(extra: Value) -> Value {
    let mut v = json!({"virtualMachineProfile": {"priority": "Spot", "evictionPolicy": "Deallocate"}});
    merge(&mut v, extra);
    v
}

impl Env {
    fn put_set(&self, s: &StoredScaleSet) {
        self.store.txn(vec![WriteOp::put(Kind::ScaleSet, s.key(), s, Expect::Absent).unwrap()]).unwrap();
    }

    fn edit_set(&self, key: &str, f: impl Fn(&mut StoredScaleSet)) {
        let cur = self.store.get_as::<StoredScaleSet>(Kind::ScaleSet, key).unwrap().unwrap();
        let mut v = cur.value;
        f(&mut v);
        self.store.txn(vec![WriteOp::put(Kind::ScaleSet, key, &v, Expect::Revision(cur.revision)).unwrap()]).unwrap();
    }

    fn records(&self, set: &str) -> Vec<InstanceRecord> {
        self.store
            .list_as::<InstanceRecord>(Kind::Instance, &format!("rg/{set}/"))
            .unwrap()
            .into_iter()
            .map(|o| o.value)
            .collect()
    }

    fn status(&self, set: &str) -> ScaleSetStatus {
        self.store
            .get_as::<ScaleSetStatus>(Kind::ScaleSetStatus, &format!("rg/{set}"))
            .unwrap()
            .map(|o| o.value)
            .unwrap_or_default()
    }

    fn running(&self, set: &str) -> Vec<u64> {
        self.records(set)
            .iter()
            .filter(|r| r.state == InstanceState::Running && r.goal == InstanceGoal::Running)
            .map(|r| r.instance_id.0)
            .collect()
    }

    /// Passes without moving the clock, until nothing changes (bounded).
    /// Spot set `spot` grows to 4 instances one at a time, 10 s apart, so their ages differ
    /// (3 is the youngest).
    async fn spot_instances_of_different_ages(&self) {
        self.put_set(&set("spot", 1, spot(json!({}))));
        for n in 2..=4 {
            self.settle().await;
            self.clock.advance(Span::seconds(10));
            self.edit_set("rg/spot", |s| s.model.sku.capacity = n);
        }
        self.settle().await;
    }

    async fn settle(&self) {
        for _ in 0..50 {
            match self.rec.pass().await {
                Ok(r) if r.steps == 0 => return,
                _ => tokio::task::yield_now().await,
            }
        }
        panic!("no quiet pass within 50");
    }

    fn ack(&self, set: &str, id: u64, kind: ScheduledEventType) {
        let key = format!("rg/{set}/{id:010}");
        let cur = self.store.get_as::<InstanceRecord>(Kind::Instance, &key).unwrap().unwrap();
        let mut r = cur.value;
        let ev = r.scheduled_events.iter_mut().find(|e| e.event_type == kind).expect("an event to acknowledge");
        ev.acknowledged_at = Some(self.clock.now_utc());
        self.store.txn(vec![WriteOp::put(Kind::Instance, key, &r, Expect::Revision(cur.revision)).unwrap()]).unwrap();
    }

    fn activity(&self) -> Vec<String> {
        self.store
            .activity(&herd_store::ActivityFilter { resource_group: Some("rg".into()), ..Default::default() })
            .unwrap()
            .into_iter()
            .map(|e| format!("{} {}", e.operation, e.message))
            .collect()
    }
}

trait NowUtc {
    fn now_utc(&self) -> DateTime<Utc>;
}

impl NowUtc for ManualClock {
    fn now_utc(&self) -> DateTime<Utc> {
        use herd_model::clock::Clock;
        self.now()
    }
}

#[tokio::test]
async fn a_regular_scale_out_evicts_exactly_the_two_youngest_spot_instances_after_a_preempt_notice() {
    let e = env();
    e.put_set(&set("reg", 4, json!({})));
    e.settle().await;
    // Spot instances created one by one, so their ages differ: 3 is the youngest.
    e.spot_instances_of_different_ages().await;
    assert_eq!(e.running("reg").len(), 4);
    assert_eq!(e.running("spot"), vec![0, 1, 2, 3]);

    // The host is full (8 of 8 vCPU): 2 more Regular instances need 2 Spot ones evicted.
    e.edit_set("rg/reg", |s| s.model.sku.capacity = 6);
    e.settle().await;
    let spot = e.records("spot");
    let noticed: Vec<u64> = spot
        .iter()
        .filter(|r| r.scheduled_events.iter().any(|ev| ev.event_type == ScheduledEventType::Preempt))
        .map(|r| r.instance_id.0)
        .collect();
    assert_eq!(noticed, vec![2, 3], "the two youngest get a Preempt event first");
    assert_eq!(e.running("spot"), vec![0, 1, 2, 3], "nothing is evicted before the notice is over");
    assert_eq!(e.records("reg").len(), 4, "the Regular instances wait for the room");
    let note = e.status("reg").capacity_note.expect("the set reports why it is short");
    assert!(note.message.contains("waits for Spot"), "{}", note.message);

    // Instance 2 acknowledges early; 3 waits out its 30 s.
    e.ack("spot", 2, ScheduledEventType::Preempt);
    e.settle().await;
    let r2 = e.records("spot").into_iter().find(|r| r.instance_id.0 == 2).unwrap();
    assert_eq!(r2.goal, InstanceGoal::Deallocated, "an acknowledged Preempt evicts at once");
    assert_eq!(e.running("spot"), vec![0, 1, 3]);
    e.clock.advance(Span::seconds(30));
    e.settle().await;
    assert_eq!(e.running("reg").len(), 6);
    assert_eq!(e.running("spot"), vec![0, 1]);
    for r in e.records("spot").iter().filter(|r| r.instance_id.0 >= 2) {
        assert_eq!(r.state, InstanceState::Deallocated, "evictionPolicy Deallocate keeps the record");
        assert_eq!(r.eviction.as_ref().unwrap().reason, EvictionReason::Capacity);
    }
    assert!(e.status("reg").capacity_note.is_none(), "the shortfall is over");
    let log = e.activity();
    assert_eq!(log.iter().filter(|l| l.starts_with("SpotEviction")).count(), 2, "{log:#?}");

    // Regular demand beyond what evicting every Spot instance frees is refused by the arbiter.
    e.edit_set("rg/reg", |s| s.model.sku.capacity = 9);
    e.settle().await;
    e.clock.advance(Span::seconds(31));
    e.settle().await;
    assert_eq!(e.running("reg").len(), 8);
    assert!(e.running("spot").is_empty());
    let note = e.status("reg").capacity_note.expect("a shortfall is reported");
    assert!(note.message.contains("vCPU"), "{}", note.message);
}

#[tokio::test]
async fn a_price_above_max_price_evicts_and_spot_restore_brings_the_instances_back() {
    let e = env();
    e.put_set(&set(
        "spot",
        3,
        spot(json!({"virtualMachineProfile": {"billingProfile": {"maxPrice": 0.02}},
                    "spotRestorePolicy": {"enabled": true, "restoreTimeout": "PT1H"}})),
    ));
    e.settle().await;
    assert_eq!(e.running("spot").len(), 3);

    *e.price.lock().unwrap() = 0.03;
    e.settle().await;
    assert!(e.records("spot").iter().all(|r| r
        .scheduled_events
        .iter()
        .any(|ev| ev.event_type == ScheduledEventType::Preempt && ev.reason == Some(EvictionReason::Price))));
    e.clock.advance(Span::seconds(30));
    e.settle().await;
    assert!(e.running("spot").is_empty());
    assert!(e.records("spot").iter().all(|r| r.state == InstanceState::Deallocated));
    let note = e.status("spot").capacity_note.expect("the price is the reason");
    assert!(note.message.contains("price"), "{}", note.message);

    // Still too dear: nothing comes back.
    e.clock.advance(Span::minutes(5));
    e.settle().await;
    assert!(e.running("spot").is_empty());

    *e.price.lock().unwrap() = 0.015;
    e.settle().await;
    assert_eq!(e.running("spot").len(), 3, "spotRestorePolicy restores them once the price falls");
    assert!(e.records("spot").iter().all(|r| r.eviction.is_none() && r.scheduled_events.is_empty()));
    assert!(e.activity().iter().any(|l| l.starts_with("SpotRestore")));
}

#[tokio::test]
async fn evicted_with_delete_the_set_stays_short_without_restore() {
    let e = env();
    e.put_set(&set("reg", 6, json!({})));
    e.put_set(&set("spot", 2, spot(json!({"virtualMachineProfile": {"evictionPolicy": "Delete"}}))));
    e.settle().await;
    assert_eq!(e.running("spot").len(), 2);
    e.edit_set("rg/reg", |s| s.model.sku.capacity = 7);
    e.settle().await;
    e.clock.advance(Span::seconds(30));
    e.settle().await;
    assert_eq!(e.running("reg").len(), 7);
    assert_eq!(e.records("spot").len(), 1, "evictionPolicy Delete removes the instance");
    assert_eq!(e.status("spot").spot_eviction_gap.as_ref().map(|g| g.deleted), Some(1));
    // Room returns, but without spotRestorePolicy the set does not re-create it.
    e.edit_set("rg/reg", |s| s.model.sku.capacity = 5);
    e.settle().await;
    e.clock.advance(Span::minutes(10));
    e.settle().await;
    assert_eq!(e.records("spot").len(), 1);
    // A scale of the Spot set is a new request: it fills up again.
    e.edit_set("rg/spot", |s| s.model.sku.capacity = 2);
    e.settle().await;
    assert_eq!(e.running("spot").len(), 2);
}

#[tokio::test]
async fn a_terminate_event_holds_a_scale_in_until_acknowledged_or_timed_out() {
    let e = env();
    e.put_set(&set(
        "reg",
        3,
        json!({"virtualMachineProfile": {"scheduledEventsProfile": {"terminateNotificationProfile":
            {"enable": true, "notBeforeTimeout": "PT5M"}}}}),
    ));
    e.settle().await;
    assert_eq!(e.running("reg"), vec![0, 1, 2]);

    e.edit_set("rg/reg", |s| s.model.sku.capacity = 2);
    e.settle().await;
    let r2 = e.records("reg").into_iter().find(|r| r.instance_id.0 == 2).unwrap();
    let ev = r2.scheduled_events.iter().find(|ev| ev.event_type == ScheduledEventType::Terminate).expect("Terminate");
    assert_eq!(ev.not_before, e.clock.now_utc() + Span::minutes(5));
    e.clock.advance(Span::minutes(4));
    e.settle().await;
    assert_eq!(e.records("reg").len(), 3, "kept until the notice is over");
    e.ack("reg", 2, ScheduledEventType::Terminate);
    e.settle().await;
    e.clock.advance(Span::seconds(1));
    e.settle().await;
    assert_eq!(e.running("reg"), vec![0, 1], "an acknowledged Terminate lets the delete go ahead");

    // Without an acknowledgement the timeout decides.
    e.edit_set("rg/reg", |s| s.model.sku.capacity = 1);
    e.settle().await;
    e.clock.advance(Span::minutes(4) + Span::seconds(59));
    e.settle().await;
    let ids = |e: &Env| e.records("reg").iter().map(|r| (r.instance_id.0, r.state)).collect::<Vec<_>>();
    assert_eq!(ids(&e), vec![(0, InstanceState::Running), (1, InstanceState::Running)], "still serving");
    e.clock.advance(Span::seconds(1));
    e.settle().await;
    assert_eq!(ids(&e), vec![(0, InstanceState::Running)]);
}

/// Issue 13, "Spot evicted for nothing": with `overprovision` on the Regular set, scaling it
/// 4 → 6 on a full 8-vCPU host (4 Regular + 4 Spot, 1 vCPU each) evicts exactly the 2 Spot
/// instances the 2 new instances need. Before the fix the overprovisioned extra evicted a third
/// one, and was then deleted as surplus.
#[tokio::test]
async fn an_overprovisioned_scale_out_evicts_only_what_its_counted_instances_need() {
    let e = env();
    e.put_set(&set("reg", 4, json!({"overprovision": true})));
    e.settle().await;
    assert_eq!(e.running("reg").len(), 4);
    assert_eq!(e.records("reg").len(), 4, "the first extra is gone once the counted ones are ready");
    e.spot_instances_of_different_ages().await;
    assert_eq!(e.running("spot"), vec![0, 1, 2, 3]);

    e.edit_set("rg/reg", |s| s.model.sku.capacity = 6);
    let noticed = |e: &Env| -> Vec<u64> {
        e.records("spot")
            .iter()
            .filter(|r| {
                r.eviction.is_some() || r.scheduled_events.iter().any(|ev| ev.event_type == ScheduledEventType::Preempt)
            })
            .map(|r| r.instance_id.0)
            .collect()
    };
    e.settle().await;
    assert_eq!(noticed(&e), vec![2, 3], "only the two youngest get a Preempt event");
    assert!(
        e.records("reg").iter().all(|r| !r.overprovisioned),
        "no extra is created without free room: {:?}",
        e.records("reg").iter().map(|r| (r.instance_id.0, r.overprovisioned)).collect::<Vec<_>>()
    );
    for _ in 0..4 {
        e.clock.advance(Span::seconds(10));
        e.settle().await;
        assert!(noticed(&e).len() <= 2, "a third Spot instance was chosen: {:?}", noticed(&e));
    }
    assert_eq!(e.running("reg").len(), 6);
    assert_eq!(e.records("reg").len(), 6, "6 Regular instances and no extra left");
    assert_eq!(e.running("spot"), vec![0, 1], "exactly 2 Spot instances were evicted");
    let log = e.activity();
    assert_eq!(log.iter().filter(|l| l.starts_with("SpotEviction")).count(), 2, "{log:#?}");
    assert!(e.status("reg").capacity_note.is_none(), "a skipped extra is no shortfall");
}
