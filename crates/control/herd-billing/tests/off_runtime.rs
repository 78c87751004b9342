//! The meter's controller ticks on the blocking pool: on a current-thread runtime (the test's own
//! thread is its one async worker) no store call lands on this thread.

use herd_billing::controller::MeterController;
use herd_billing::{Meter, PriceBook};
use herd_controller_runtime::Runtime;
use herd_model::clock::ManualClock;
use herd_model::spot::PriceTable;
use herd_state::call_threads::CallThreads;
use herd_state::State;
use herd_store::SqliteStore;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "current_thread")]
async fn the_meter_loop_calls_the_store_off_the_async_worker() {
    let store = Arc::new(CallThreads::new(SqliteStore::in_memory().unwrap()));
    let prices = Arc::new(Mutex::new(PriceBook::new(&PriceTable::new(), None).unwrap()));
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let meter = Meter::new(store.clone(), clock.clone(), prices);
    let mut runtime = Runtime::new(State::from(store.clone()), clock);
    runtime.add(Arc::new(MeterController::new(meter, Duration::from_millis(5))));
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let me = std::thread::current().id();
    let tasks = runtime.start(shutdown).await;
    let run = async {
        for t in tasks {
            t.await.expect("the meter's controller task ended cleanly");
        }
    };
    let watch = async {
        // Three ticks read sets, instances and meters each.
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.calls() < 9 {
            assert!(Instant::now() < deadline, "the meter made {} store calls in 10 s, not 9", store.calls());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.send(true).unwrap();
    };
    tokio::join!(run, watch);
    assert_eq!(store.calls_on(me), 0, "a tick called the store on the async worker");
}
