//! The reconciler's passes make every store call on the blocking pool, never on the async
//! worker that runs them (a synchronous store call there would stall every task queued on it).
//!
//! The passes run on a current-thread runtime, whose one async worker is the test's own thread,
//! over a store that records the thread of each call.

use chrono::{DateTime, Utc};
use herd_driver::sim::{SimConfig, SimDriver};
use herd_model::{clock::ManualClock, image::Image, instance::InstanceState, scale_set::StoredScaleSet, ImageUrn};
use herd_reconciler::{Reconciler, ReconcilerConfig};
use herd_state::call_threads::CallThreads;
use herd_state::intents::Writes;
use herd_state::keys::{ImageKey, SetKey};
use herd_state::{Expected, Records};
use herd_store::SqliteStore;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc)
}

#[tokio::test(flavor = "current_thread")]
async fn a_pass_calls_the_store_only_off_the_async_worker() {
    let store = Arc::new(CallThreads::new(SqliteStore::in_memory().unwrap()));
    let sim = Arc::new(SimDriver::new(SimConfig {
        boot_min: Duration::ZERO,
        boot_max: Duration::ZERO,
        ..Default::default()
    }));
    let clock = ManualClock::new(t0());
    let rec = Reconciler::new(store.clone(), sim, Arc::new(clock.clone()), ReconcilerConfig::default());

    // An image and a set of 3 on it, as the API stores them.
    let urn = ImageUrn::parse("P:O:S:1.0.0").unwrap();
    let image: Image = serde_json::from_value(json!({
        "id": "img", "urn": "P:O:S:1.0.0", "publisher": "P", "offer": "O", "sku": "S", "version": "1.0.0",
        "source": {"kind": "directory", "path": "/nowhere"}, "guestAgent": false, "createdAt": t0(),
    }))
    .unwrap();
    let set: StoredScaleSet = serde_json::from_value(json!({
        "name": "web", "group": "rg", "modelGeneration": 1, "timeCreated": t0(), "model": {
            "sku": {"name": "Standard_B1ms", "capacity": 3},
            "virtualMachineProfile": {"osProfile": {"computerNamePrefix": "web"}, "storageProfile":
                {"imageReference": {"publisher": "P", "offer": "O", "sku": "S", "version": "latest"}}},
        },
    }))
    .unwrap();
    let key = SetKey::of(&set);
    let mut w = Writes::new();
    w.put_image(&ImageKey::new(&urn), &image, Expected::Absent).unwrap();
    w.put_scale_set(&key, &set, Expected::Absent).unwrap();
    w.commit(&*store).unwrap();

    let me = std::thread::current().id();
    let mut running = 0;
    let mut pass_calls = 0;
    for n in 0..20 {
        let (before_here, before) = (store.calls_on(me), store.calls());
        rec.pass().await.unwrap();
        assert_eq!(store.calls_on(me), before_here, "pass {n} called the store on the async worker");
        pass_calls += store.calls() - before;
        clock.advance(chrono::Duration::seconds(1));
        running = store.instances_of(&key).unwrap().iter().filter(|o| o.value.state == InstanceState::Running).count();
        if running == 3 {
            break;
        }
    }
    assert_eq!(running, 3, "the set did not converge to 3 running instances in 20 passes");
    assert!(pass_calls > 5, "the passes made store calls (reads, intents, results): {pass_calls}");
}
