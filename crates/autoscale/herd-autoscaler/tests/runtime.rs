//! The autoscale runtime on an injected clock: the real [`Runner`] (sampler, store-backed
//! metrics, the engine, persisted cooldown state, history) over the sim driver and a SQLite
//! store, stepped one time grain at a time. Nothing sleeps: the clock moves only when the test
//! says so, and each step samples, evaluates and then plays the reconciler's part (instances
//! follow the capacity the runner wrote), so a 5-minute window and 5-minute cooldowns take
//! milliseconds.

use chrono::{DateTime, Duration, Utc};
use herd_autoscale::{AutoscaleSetting, Decision};
use herd_autoscaler::runner::{CapacityWriter, Runner, RunnerConfig, SettingRuntime};
use herd_driver::{
    sim::{SimConfig, SimDriver},
    Driver,
};
use herd_model::{clock::ManualClock, instance::InstanceRecord, scale_set::StoredScaleSet, InstanceKey};
use herd_store::{seal::Sealer, Expect, Kind, SqliteStore, Store, StoreExt, WriteOp};
use serde_json::json;
use std::sync::Arc;

const SET: &str = "rg/web";

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-02T10:00:00Z").unwrap().with_timezone(&Utc)
}

/// Writes capacity the way the API's writer does at its core: a compare-and-swap of the set.
struct StoreWriter(Arc<dyn Store>);

impl CapacityWriter for StoreWriter {
    fn set_capacity(&self, group: &str, set: &str, capacity: u64, _reason: &str) -> Result<(), String> {
        let key = format!("{group}/{set}");
        let o = self.0.get_as::<StoredScaleSet>(Kind::ScaleSet, &key).map_err(|e| e.to_string())?.ok_or("gone")?;
        let mut v = o.value;
        v.model.sku.capacity = capacity as i64;
        let op = WriteOp::put(Kind::ScaleSet, key, &v, Expect::Revision(o.revision)).map_err(|e| e.to_string())?;
        self.0.txn(vec![op]).map(drop).map_err(|e| e.to_string())
    }
}

struct World {
    store: Arc<dyn Store>,
    sim: Arc<SimDriver>,
    clock: ManualClock,
    runner: Runner,
    next_id: u64,
    /// The CPU every instance reports.
    cpu: f64,
}

fn key(id: u64) -> InstanceKey {
    InstanceKey::parse_path(&format!("{SET}/{id}")).unwrap()
}

fn capacity(store: &dyn Store) -> u64 {
    store.get_as::<StoredScaleSet>(Kind::ScaleSet, SET).unwrap().unwrap().value.model.sku.capacity as u64
}

impl World {
    async fn new(rules: &[(&str, &str)], min: u64, max: u64, default: u64) -> World {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        let sim = Arc::new(SimDriver::new(SimConfig {
            boot_min: std::time::Duration::ZERO,
            boot_max: std::time::Duration::ZERO,
            ..Default::default()
        }));
        let clock = ManualClock::new(t0());
        let set: StoredScaleSet = serde_json::from_value(json!({
            "name": "web", "group": "rg", "modelGeneration": 1, "timeCreated": t0(),
            "model": {
                "sku": {"name": "Standard_B1ms", "capacity": default},
                "virtualMachineProfile": {"osProfile": {"computerNamePrefix": "web"},
                    "storageProfile": {"imageReference": {"publisher": "P", "offer": "O", "sku": "S", "version": "1"}}}
            }
        }))
        .unwrap();
        let rules: Vec<_> = rules
            .iter()
            .map(|(cond, scale)| herd_autoscale::parse_rule(cond, scale, Some(5.0), None).unwrap())
            .collect();
        let setting: AutoscaleSetting = serde_json::from_value(json!({
            "name": "web-autoscale",
            "enabled": true,
            "targetResourceUri": "/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/web",
            "profiles": [{"name": "default", "rules": rules,
                "capacity": {"minimum": min.to_string(), "maximum": max.to_string(), "default": default.to_string()}}]
        }))
        .unwrap();
        setting.validate().unwrap();
        store
            .txn(vec![
                WriteOp::put(Kind::ScaleSet, SET, &set, Expect::Absent).unwrap(),
                WriteOp::put(Kind::AutoscaleSetting, "rg/web-autoscale", &setting, Expect::Absent).unwrap(),
            ])
            .unwrap();
        let config = RunnerConfig {
            interval: std::time::Duration::from_secs(60),
            sample_interval: std::time::Duration::from_secs(60),
            ..Default::default()
        };
        let runner = Runner::new(
            store.clone(),
            sim.clone(),
            Arc::new(clock.clone()),
            Arc::new(Sealer::ephemeral()),
            Arc::new(StoreWriter(store.clone())),
            config,
        );
        let mut w = World { store, sim, clock, runner, next_id: 0, cpu: 0.0 };
        w.converge().await;
        w
    }

    /// The reconciler's part, reduced to what the autoscaler sees: instances are created
    /// (Running at once) or removed (highest id first) until they match the capacity, and every
    /// instance reports the current CPU.
    async fn converge(&mut self) {
        let want = capacity(&*self.store);
        let records = self.store.list_as::<InstanceRecord>(Kind::Instance, &format!("{SET}/")).unwrap();
        let now = herd_model::clock::Clock::now(&self.clock);
        let mut ops = Vec::new();
        for _ in records.len() as u64..want {
            let id = self.next_id;
            self.next_id += 1;
            self.sim.plant_orphan(key(id)); // a running sim instance; the autoscaler needs no spec
            let rec: InstanceRecord = serde_json::from_value(json!({
                "instanceId": id, "computerName": format!("web{id}"), "modelGeneration": 1, "state": "Running",
                "goal": "Running", "reachAddress": "", "createdAt": now, "stateSince": now
            }))
            .unwrap();
            ops.push(WriteOp::put(Kind::Instance, format!("{SET}/{id:010}"), &rec, Expect::Absent).unwrap());
        }
        for o in records.iter().rev().take(records.len().saturating_sub(want as usize)) {
            self.sim.destroy(&key(o.value.instance_id.0), herd_driver::Fence::FIRST).await.unwrap();
            ops.push(WriteOp::delete(Kind::Instance, o.key.clone(), Expect::Revision(o.revision)));
        }
        if !ops.is_empty() {
            self.store.txn(ops).unwrap();
        }
        self.sim.list().await.unwrap(); // the sim boots what it created
        for id in 0..self.next_id {
            self.sim.set_cpu_percent(&key(id), self.cpu);
        }
    }

    /// One time grain: the clock moves a minute, the runner samples and evaluates, the set
    /// converges. Returns the capacity after it and the decision.
    async fn step(&mut self) -> (u64, Decision) {
        self.clock.advance(Duration::minutes(1));
        self.runner.sample_once().await.unwrap();
        let mut decisions = self.runner.evaluate_once().unwrap();
        assert_eq!(decisions.len(), 1);
        self.converge().await;
        (capacity(&*self.store), decisions.remove(0).1)
    }

    async fn set_cpu(&mut self, pct: f64) {
        self.cpu = pct;
        self.converge().await;
    }
}

#[tokio::test]
async fn cpu_scales_out_after_the_window_is_covered_with_cooldowns_then_back_to_the_minimum() {
    let mut w =
        World::new(&[("Percentage CPU > 70 avg 5m", "out 1"), ("Percentage CPU < 30 avg 5m", "in 1")], 2, 4, 2).await;
    w.set_cpu(90.0).await;

    // Minutes 1–4: the 5-minute window is not covered yet: no data, nothing moves (and no data
    // never scales in).
    for minute in 1..=4 {
        let (cap, d) = w.step().await;
        assert_eq!(cap, 2, "minute {minute}: {}", d.reason);
        assert!(d.missing_data, "minute {minute}: the window is not covered yet: {}", d.reason);
        assert_eq!(d.evaluations[0].value, None, "minute {minute}");
    }
    // Minute 5: five samples at 90 % cover the window: +1.
    let (cap, d) = w.step().await;
    assert_eq!(cap, 3, "{}", d.reason);
    assert!(!d.missing_data);
    assert_eq!(d.evaluations[0].value, Some(90.0));
    // The rule keeps firing, but its 5-minute cooldown holds the next step until minute 10.
    for minute in 6..=9 {
        let (cap, d) = w.step().await;
        assert_eq!(cap, 3, "minute {minute}: cooling down: {}", d.reason);
        assert!(d.reason.contains("cooling down"), "minute {minute}: {}", d.reason);
    }
    let (cap, d) = w.step().await;
    assert_eq!(cap, 4, "minute 10: the cooldown is over: {}", d.reason);
    // At the maximum it stays there, however hot.
    for minute in 11..=14 {
        assert_eq!(w.step().await.0, 4, "minute {minute}: the maximum");
    }

    // Idle from minute 15 on. The average falls below 30 only once four of the five samples in
    // the window are idle ((4 × 10 + 90) / 5 = 26): minute 18.
    w.set_cpu(10.0).await;
    for minute in 15..=17 {
        let (cap, d) = w.step().await;
        assert_eq!(cap, 4, "minute {minute}: the window still remembers the load: {}", d.reason);
    }
    let (cap, d) = w.step().await;
    assert_eq!(cap, 3, "minute 18: -1: {}", d.reason);
    assert_eq!(d.evaluations[1].value, Some(26.0));
    // Cooldown again: the next step in waits until minute 23, which reaches the minimum.
    for minute in 19..=22 {
        assert_eq!(w.step().await.0, 3, "minute {minute}: cooling down");
    }
    assert_eq!(w.step().await.0, 2, "minute 23: back to the minimum");
    for minute in 24..=30 {
        let (cap, d) = w.step().await;
        assert_eq!(cap, 2, "minute {minute}: never below the minimum: {}", d.reason);
    }

    // The runtime persisted every evaluation with its decision, and the cooldown state.
    let rt = w.store.get_as::<SettingRuntime>(Kind::AutoscaleHistory, "rg/web-autoscale").unwrap().unwrap().value;
    assert_eq!(rt.history.len(), 30);
    let changes: Vec<(i64, u64)> = rt
        .history
        .iter()
        .filter(|h| h.decision.changed())
        .map(|h| ((h.time - t0()).num_minutes(), h.decision.new_capacity))
        .collect();
    assert_eq!(changes, [(5, 3), (10, 4), (18, 3), (23, 2)]);
    assert_eq!(rt.state.last_scale.map(|l| (l.at - t0()).num_minutes()), Some(23));
}

#[tokio::test]
async fn a_gap_in_sampling_makes_the_window_uncovered_again() {
    let mut w = World::new(&[("Percentage CPU > 70 avg 5m", "out 1")], 1, 3, 1).await;
    w.set_cpu(90.0).await;
    for _ in 1..=4 {
        w.step().await;
    }
    // The server was down for ten minutes: the series has a hole, so the next evaluations read
    // no data until five fresh minutes are sampled, and nothing scales on one new sample.
    w.clock.advance(Duration::minutes(10));
    for minute in 1..=4 {
        let (cap, d) = w.step().await;
        assert_eq!(cap, 1, "minute {minute} after the gap: {}", d.reason);
        assert!(d.missing_data);
    }
    let (cap, d) = w.step().await;
    assert_eq!(cap, 2, "five fresh minutes: {}", d.reason);
}

/// A webhook on loopback is refused by default (no connection is made) and the activity log
/// says why, naming the setting that would allow it.
#[tokio::test]
async fn a_webhook_to_a_refused_address_is_not_called() {
    let hook = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    hook.set_nonblocking(true).unwrap();
    let url = format!("http://{}/scaled", hook.local_addr().unwrap());
    let mut w = World::new(&[("Percentage CPU > 70 avg 5m", "out 1")], 1, 3, 1).await;
    let o = w.store.get_as::<AutoscaleSetting>(Kind::AutoscaleSetting, "rg/web-autoscale").unwrap().unwrap();
    let mut setting = o.value;
    setting.notifications =
        serde_json::from_value(json!([{"operation": "Scale", "webhooks": [{"serviceUri": url}]}])).unwrap();
    w.store
        .txn(vec![
            WriteOp::put(Kind::AutoscaleSetting, "rg/web-autoscale", &setting, Expect::Revision(o.revision)).unwrap()
        ])
        .unwrap();
    w.set_cpu(90.0).await;
    for _ in 0..5 {
        w.step().await;
    }
    assert_eq!(capacity(&*w.store), 2, "the scale-out that notifies");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let event = loop {
        let events = w.store.activity(&herd_store::ActivityFilter::default()).unwrap();
        if let Some(e) = events.into_iter().find(|e| e.operation == "AutoscaleNotification") {
            break e;
        }
        assert!(std::time::Instant::now() < deadline, "no AutoscaleNotification event within 20 s");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        event.message.contains("not called") && event.message.contains("[autoscale] allow_webhooks_to"),
        "{}",
        event.message
    );
    assert!(hook.accept().is_err(), "the refused webhook was connected to");
}
