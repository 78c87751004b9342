//! The meter against a real SQLite store and an injected clock: what bills, what does not,
//! across restarts, with spot schedules, hour buckets and report periods.

use chrono::{DateTime, Duration, Utc};
use herd_billing::{report, Meter, MeterDoc, PriceBook};
use herd_model::{
    clock::ManualClock,
    instance::{InstanceRecord, InstanceState},
    scale_set::StoredScaleSet,
    spot::{PriceTable, SkuPrice},
};
use herd_reconciler::testkit::{self, at as t, model, stored_set, t0};
use herd_store::{Expect, Kind, SqliteStore, Store, StoreExt, WriteOp};
use serde_json::json;
use std::path::Path;
use std::sync::{Arc, Mutex};

const REGULAR: f64 = 0.0207;
const SPOT: f64 = 0.0041;

fn table(schedule: Option<&Path>) -> PriceTable {
    let mut p = PriceTable::new();
    p.insert(
        "Standard_B1ms".into(),
        SkuPrice {
            regular: REGULAR,
            spot: if schedule.is_some() { None } else { Some(SPOT) },
            spot_schedule: schedule.map(|s| s.display().to_string()),
        },
    );
    p
}

struct Env {
    store: Arc<dyn Store>,
    clock: ManualClock,
    prices: Arc<Mutex<PriceBook>>,
    meter: Meter,
}

fn env_with(store: Arc<dyn Store>, clock: ManualClock, prices: PriceBook) -> Env {
    let prices = Arc::new(Mutex::new(prices));
    let meter = Meter::new(store.clone(), Arc::new(clock.clone()), prices.clone());
    Env { store, clock, prices, meter }
}

fn env() -> Env {
    env_with(
        Arc::new(SqliteStore::in_memory().unwrap()),
        ManualClock::new(t0()),
        PriceBook::new(&table(None), None).unwrap(),
    )
}

fn set(name: &str, capacity: i64, priority: &str) -> StoredScaleSet {
    let overlay = json!({"virtualMachineProfile": {
        "priority": priority,
        "osProfile": {"computerNamePrefix": name},
        "storageProfile": {"imageReference": {"version": "latest"}}
    }});
    stored_set(name, 1, model(capacity, overlay))
}

fn record(id: u64, state: InstanceState, overprovisioned: bool, now: DateTime<Utc>) -> InstanceRecord {
    InstanceRecord {
        computer_name: format!("web{id:06}"),
        overprovisioned,
        reach_address: format!("127.128.0.{}", id + 2),
        sku: Some("Standard_B1ms".into()),
        created_at: now,
        state_since: now,
        ..testkit::record(id, 1, state)
    }
}

impl Env {
    /// Set `web` of one Regular instance, running from now, and a first tick.
    fn start_one_regular(&self) {
        self.put_set(&set("web", 1, "Regular"));
        self.put("web", &record(0, InstanceState::Running, false, self.now()));
        self.tick();
    }

    fn now(&self) -> DateTime<Utc> {
        use herd_model::clock::Clock;
        self.clock.now()
    }

    fn put_set(&self, s: &StoredScaleSet) {
        self.store.txn(vec![WriteOp::put(Kind::ScaleSet, s.key(), s, Expect::Any).unwrap()]).unwrap();
    }

    fn delete_set(&self, name: &str) {
        self.store.txn(vec![WriteOp::delete(Kind::ScaleSet, format!("rg/{name}"), Expect::Any)]).unwrap();
    }

    fn put(&self, set: &str, r: &InstanceRecord) {
        let key = format!("rg/{set}/{:010}", r.instance_id.0);
        self.store.txn(vec![WriteOp::put(Kind::Instance, key, r, Expect::Any).unwrap()]).unwrap();
    }

    fn remove(&self, set: &str, id: u64) {
        self.store.txn(vec![WriteOp::delete(Kind::Instance, format!("rg/{set}/{id:010}"), Expect::Any)]).unwrap();
    }

    /// Changes the state of instances of `set`.
    fn state(&self, set: &str, ids: impl IntoIterator<Item = u64>, state: InstanceState) {
        for id in ids {
            let key = format!("rg/{set}/{id:010}");
            let mut r = self.store.get_as::<InstanceRecord>(Kind::Instance, &key).unwrap().unwrap().value;
            r.state = state;
            r.state_since = self.now();
            self.put(set, &r);
        }
    }

    fn advance(&self, secs: i64) {
        self.clock.advance(Duration::seconds(secs));
    }

    fn tick(&self) -> usize {
        self.meter.tick().unwrap()
    }

    fn doc(&self, set: &str) -> Option<MeterDoc> {
        self.store.get_as::<MeterDoc>(Kind::Meter, &format!("rg/{set}")).unwrap().map(|o| o.value)
    }

    /// Lifetime instance-seconds and cost of a set.
    fn usage(&self, set: &str) -> (f64, f64) {
        let d = self.doc(set).unwrap_or_default();
        (d.lifetime.iter().map(|t| t.instance_seconds).sum(), d.lifetime.iter().map(|t| t.cost).sum())
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn capacity_zero_accrues_nothing() {
    let e = env();
    e.put_set(&set("web", 0, "Regular"));
    e.tick();
    for _ in 0..10 {
        e.advance(3600);
        e.tick();
    }
    assert_eq!(e.usage("web"), (0.0, 0.0));
    let r = report(&*e.store, Some("rg"), Some("web"), None).unwrap();
    assert!(r.rows.is_empty(), "{r:?}");
    assert_eq!(r.total.cost, 0.0);
    assert_eq!(r.currency, "USD");
    // An idle meter is written once, not on every tick.
    e.advance(60);
    assert_eq!(e.tick(), 0);
}

#[test]
fn overprovisioned_create_of_ten_bills_ten() {
    let e = env();
    e.put_set(&set("web", 10, "Regular"));
    // 10 counted + 2 extras, all creating.
    for id in 0..12 {
        e.put("web", &record(id, InstanceState::Creating, id >= 10, e.now()));
    }
    e.tick();
    e.advance(60);
    // Extra 10 is ready first and swaps places with instance 3, still creating.
    e.state("web", [10], InstanceState::Running);
    for (id, extra) in [(10, false), (3, true)] {
        let key = format!("rg/web/{id:010}");
        let mut r = e.store.get_as::<InstanceRecord>(Kind::Instance, &key).unwrap().unwrap().value;
        r.overprovisioned = extra;
        e.put("web", &r);
    }
    e.tick();
    e.advance(60);
    e.state("web", (0..12).filter(|i| *i != 3), InstanceState::Running);
    e.tick();
    e.advance(60);
    // The surplus extras (3 and 11) are deleted.
    e.state("web", [3, 11], InstanceState::Deleting);
    e.tick();
    e.advance(60);
    e.remove("web", 3);
    e.remove("web", 11);
    e.tick();
    e.advance(60);
    e.tick();
    let (secs, cost) = e.usage("web");
    let elapsed = 5.0 * 60.0;
    assert!(close(secs, 10.0 * elapsed), "billed {secs} s, expected exactly 10 instances x {elapsed} s");
    assert!(close(cost, 10.0 * elapsed / 3600.0 * REGULAR), "{cost}");
    assert!(e.doc("web").unwrap().marks.values().filter(|m| m.billable).count() == 10);
}

#[test]
fn stopped_bills_deallocated_does_not_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herd.db");
    let clock = ManualClock::new(t0());
    let prices = || PriceBook::new(&table(None), None).unwrap();
    {
        let e = env_with(Arc::new(SqliteStore::open(&path).unwrap()), clock.clone(), prices());
        e.put_set(&set("stop", 2, "Regular"));
        e.put_set(&set("dealloc", 2, "Regular"));
        for id in 0..2 {
            e.put("stop", &record(id, InstanceState::Running, false, e.now()));
            e.put("dealloc", &record(id, InstanceState::Running, false, e.now()));
        }
        e.tick();
        e.advance(600);
        e.state("stop", 0..2, InstanceState::Stopped);
        e.state("dealloc", 0..2, InstanceState::Deallocated);
        e.tick();
        e.advance(600);
        e.tick();
        assert!(close(e.usage("stop").0, 2.0 * 1200.0), "{:?}", e.usage("stop"));
        assert!(close(e.usage("dealloc").0, 2.0 * 600.0), "{:?}", e.usage("dealloc"));
    }
    // The server is down for an hour: nothing ticks. Then a new meter on the same store file.
    clock.advance(Duration::hours(1));
    let e = env_with(Arc::new(SqliteStore::open(&path).unwrap()), clock.clone(), prices());
    e.tick();
    e.advance(600);
    e.tick();
    // Stopped (still allocated) kept billing through the downtime; deallocated did not.
    assert!(close(e.usage("stop").0, 2.0 * (1200.0 + 3600.0 + 600.0)), "{:?}", e.usage("stop"));
    assert!(close(e.usage("dealloc").0, 2.0 * 600.0), "{:?}", e.usage("dealloc"));
    // Starting a deallocated instance bills again from the tick that sees it.
    e.state("dealloc", [0], InstanceState::Starting);
    e.tick();
    e.advance(300);
    e.tick();
    assert!(close(e.usage("dealloc").0, 2.0 * 600.0 + 300.0), "{:?}", e.usage("dealloc"));
}

#[test]
fn spot_schedule_changes_the_price_at_its_instant() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spot-prices.csv");
    std::fs::write(&file, "# spot prices\ntimestamp,price\n2026-01-01T00:00:00Z,0.01\n2026-01-01T00:30:00Z,0.05\n")
        .unwrap();
    let e = env_with(
        Arc::new(SqliteStore::in_memory().unwrap()),
        ManualClock::new(t0()),
        PriceBook::new(&table(Some(Path::new("spot-prices.csv"))), Some(dir.path())).unwrap(),
    );
    e.put_set(&set("spot", 1, "Spot"));
    e.put_set(&set("reg", 1, "Regular"));
    e.put("spot", &record(0, InstanceState::Running, false, e.now()));
    e.put("reg", &record(0, InstanceState::Running, false, e.now()));
    e.tick();
    // One tick interval spanning the change at 00:30: half an hour at each price.
    e.advance(3600);
    e.tick();
    let (secs, cost) = e.usage("spot");
    assert!(close(secs, 3600.0));
    assert!(close(cost, 0.5 * 0.01 + 0.5 * 0.05), "{cost}");
    assert!(close(e.usage("reg").1, REGULAR), "regular instances ignore the spot schedule");
    let d = e.doc("spot").unwrap();
    assert_eq!(d.marks[&0].priority, herd_model::scale_set::Priority::Spot);
}

#[test]
fn intervals_split_into_hour_buckets() {
    let e = env();
    e.clock.advance(Duration::minutes(30)); // 00:30
    e.start_one_regular();
    e.advance(6300); // 02:15
    e.tick();
    let d = e.doc("web").unwrap();
    let got: Vec<(String, f64)> = d.hours.iter().map(|b| (b.hour.to_rfc3339(), b.instance_seconds)).collect();
    assert_eq!(
        got,
        vec![
            ("2026-01-01T00:00:00+00:00".to_string(), 1800.0),
            ("2026-01-01T01:00:00+00:00".to_string(), 3600.0),
            ("2026-01-01T02:00:00+00:00".to_string(), 900.0),
        ]
    );
    assert!(close(d.hours[1].cost, REGULAR));
}

#[test]
fn a_bad_schedule_keeps_the_old_one_and_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spot.csv");
    std::fs::write(&file, "2026-01-01T00:00:00Z,0.01\n").unwrap();
    let mut book = PriceBook::new(&table(Some(&file)), None).unwrap();
    assert_eq!(book.spot_at("Standard_B1ms", t0()), Some(0.01));
    assert!(book.reload_if_changed().is_empty(), "unchanged: nothing to do");

    let touch = |text: &str, secs: u64| {
        std::fs::write(&file, text).unwrap();
        let f = std::fs::File::options().write(true).open(&file).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)).unwrap();
    };
    touch("timestamp,price\n2026-01-01T00:00:00Z,0.02\n2026-01-01T01:00:00Z,oops\n", 1_000);
    let problems = book.reload_if_changed();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains(&format!("{}:3", file.display())) && problems[0].contains("'oops'"), "{problems:?}");
    assert_eq!(book.spot_at("Standard_B1ms", t0()), Some(0.01), "the previous schedule stays");
    assert!(book.reload_if_changed().is_empty(), "a problem is reported once per change");

    touch("2026-01-01T00:00:00Z,0.02\n2026-01-01T01:00:00Z,0.03\n", 2_000);
    assert!(book.reload_if_changed().is_empty());
    assert_eq!(book.spot_at("Standard_B1ms", t0()), Some(0.02));
    assert_eq!(book.spot_at("Standard_B1ms", t("2026-01-01T01:00:00Z")), Some(0.03));
    assert_eq!(book.spot_at("Standard_B1ms", t("2025-12-31T00:00:00Z")), Some(0.02), "before the first: the first");
    std::fs::remove_file(&file).unwrap();
    let problems = book.reload_if_changed();
    assert!(problems.len() == 1 && problems[0].contains("cannot be read"), "{problems:?}");
    assert_eq!(book.spot_at("Standard_B1ms", t0()), Some(0.02));
    assert_eq!(book.spot_priced_skus(), vec!["Standard_B1ms".to_string()]);
}

#[test]
fn before_the_schedule_the_fixed_spot_price_applies() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spot.csv");
    std::fs::write(&file, "2026-01-02T00:00:00Z,0.02\n").unwrap();
    let mut p = table(Some(&file));
    p.get_mut("Standard_B1ms").unwrap().spot = Some(SPOT);
    let book = PriceBook::new(&p, None).unwrap();
    assert_eq!(book.spot_at("Standard_B1ms", t0()), Some(SPOT));
    assert_eq!(book.spot_at("Standard_B1ms", t("2026-01-02T00:00:00Z")), Some(0.02));
}

#[test]
fn since_filters_by_hour_and_deleted_sets_stay_reportable() {
    let e = env();
    e.put_set(&set("web", 2, "Regular"));
    e.put_set(&set("api", 1, "Spot"));
    for id in 0..2 {
        e.put("web", &record(id, InstanceState::Running, false, e.now()));
    }
    e.put("api", &record(0, InstanceState::Running, false, e.now()));
    e.tick();
    e.advance(3 * 3600); // 03:00
    e.tick();
    e.advance(1800); // 03:30
    e.tick();

    let all = report(&*e.store, Some("rg"), None, None).unwrap();
    assert_eq!(all.rows.len(), 2);
    assert!(close(all.total.instance_hours, 3.5 * 3.0), "{all:?}");
    let web = report(&*e.store, Some("rg"), Some("web"), None).unwrap();
    assert_eq!(web.rows.len(), 1);
    assert!(close(web.rows[0].instance_hours, 7.0));
    assert!(close(web.rows[0].cost, (7.0 * REGULAR * 1e6).round() / 1e6));

    // 02:10 rounds down to 02:00: the 02:00 and 03:00 hours.
    let since = herd_billing::parse_since("80m", e.now()).unwrap();
    let recent = report(&*e.store, Some("rg"), Some("web"), Some(since)).unwrap();
    assert_eq!(recent.from.unwrap().to_rfc3339(), "2026-01-01T02:00:00+00:00");
    assert!(close(recent.rows[0].instance_hours, 2.0 * 1.5), "{recent:?}");
    assert_eq!(recent.through, Some(e.now()));
    let api = report(&*e.store, Some("rg"), Some("api"), Some(since)).unwrap();
    assert!(close(api.total.cost, (1.5 * SPOT * 1e6).round() / 1e6), "{api:?}");

    // The set is deleted while its instances run: billed up to the tick that sees it gone.
    e.delete_set("web");
    e.remove("web", 0);
    e.remove("web", 1);
    e.advance(600);
    e.tick();
    let d = e.doc("web").unwrap();
    assert!(d.marks.is_empty() && d.set_deleted_at.is_some());
    let web = report(&*e.store, Some("rg"), Some("web"), None).unwrap();
    // Reports round instance-hours to 4 decimals.
    assert!((web.total.instance_hours - 2.0 * (3.5 + 600.0 / 3600.0)).abs() < 1e-4, "{web:?}");
    assert!(web.rows[0].set_deleted);
    e.advance(600);
    assert_eq!(e.tick(), 1, "only the live set's meter is written; the closed one stays as it is");

    let text = herd_billing::prometheus(&report(&*e.store, None, None, None).unwrap());
    assert!(text.contains("herd_cost_total{group=\"rg\",set=\"web\",sku=\"Standard_B1ms\",priority=\"Regular\"}"));
    assert!(
        text.contains("herd_instance_hours_total{group=\"rg\",set=\"api\",sku=\"Standard_B1ms\",priority=\"Spot\"}")
    );
}

#[test]
fn two_meters_never_bill_an_interval_twice() {
    let e = env();
    e.start_one_regular();
    e.advance(60);
    // Another meter (a second replica, or a restarted one) ticks first; each tick re-reads the
    // stored marks, so the same interval is not billed again.
    let other = Meter::new(e.store.clone(), Arc::new(e.clock.clone()), e.prices.clone());
    assert_eq!(other.tick().unwrap(), 1);
    assert_eq!(e.tick(), 1);
    assert!(close(e.usage("web").0, 60.0));
}

#[test]
fn hourly_buckets_are_bounded() {
    let e = env();
    e.start_one_regular();
    // A long outage: 200 days with nothing ticking, then one tick.
    e.advance(200 * 86_400);
    e.tick();
    let d = e.doc("web").unwrap();
    assert_eq!(d.hours.len(), 90 * 24, "at most 90 days of hours");
    assert!(close(d.lifetime[0].instance_seconds, 200.0 * 86_400.0), "lifetime keeps everything");
    let r = report(&*e.store, None, None, Some(t0())).unwrap();
    assert!(r.note.as_deref().is_some_and(|n| n.contains("90 days")), "{r:?}");
}
