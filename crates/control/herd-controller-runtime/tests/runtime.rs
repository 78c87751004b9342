//! The runtime's rules, each with a controller that records its passes: wakes from the change
//! feed, resync, backoff, coalescing, panics, shutdown and the status board. Timing tests run
//! on tokio's paused clock, so their durations are exact, not slept.

use herd_controller_runtime::{Controller, ControllerError, Next, Phase, Runtime, StatusBoard};
use herd_model::clock::SystemClock;
use herd_state::feed::Kind;
use herd_state::State;
use herd_store::{Expect, SqliteStore, WriteOp};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// A controller that plays back a script of results, one per pass (then `Idle`), and reports
/// each pass's start on a channel.
struct Scripted {
    name: &'static str,
    watches: Vec<Kind>,
    resync: Duration,
    min_interval: Duration,
    script: Mutex<VecDeque<Step>>,
    passes: mpsc::UnboundedSender<Instant>,
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

enum Step {
    Ok(Next),
    Fail(&'static str),
    Panic,
}

impl Scripted {
    fn new(name: &'static str, script: Vec<Step>) -> (Self, mpsc::UnboundedReceiver<Instant>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let c = Self {
            name,
            watches: vec![],
            resync: Duration::from_secs(60),
            min_interval: Duration::ZERO,
            script: Mutex::new(script.into()),
            passes: tx,
            gate: None,
        };
        (c, rx)
    }
}

impl Controller for Scripted {
    fn name(&self) -> &'static str {
        self.name
    }
    fn watches(&self) -> Vec<Kind> {
        self.watches.clone()
    }
    fn resync(&self) -> Duration {
        self.resync
    }
    fn min_interval(&self) -> Duration {
        self.min_interval
    }
    async fn reconcile(&self) -> Result<Next, ControllerError> {
        let _ = self.passes.send(Instant::now());
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("the gate is never closed").forget();
        }
        let step = self.script.lock().unwrap().pop_front().unwrap_or(Step::Ok(Next::Idle));
        match step {
            Step::Ok(next) => Ok(next),
            Step::Fail(why) => Err(why.into()),
            Step::Panic => panic!("boom"),
        }
    }
}

async fn next_pass(rx: &mut mpsc::UnboundedReceiver<Instant>, what: &str) -> Instant {
    tokio::time::timeout(Duration::from_secs(3600), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("the controller is alive")
}

fn state() -> State {
    State::from(Arc::new(SqliteStore::in_memory().unwrap()))
}

async fn start(
    c: Scripted,
) -> (StatusBoard, watch::Sender<bool>, Vec<tokio::task::JoinHandle<()>>, Arc<tokio::sync::Notify>) {
    let mut rt = Runtime::new(state(), Arc::new(SystemClock));
    let wake = rt.add(Arc::new(c));
    let board = rt.board();
    let (tx, rx) = watch::channel(false);
    let tasks = rt.start(rx).await;
    (board, tx, tasks, wake)
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_exponentially_then_it_waits_as_asked_then_resyncs() {
    let script = vec![Step::Fail("a"), Step::Fail("b"), Step::Fail("c"), Step::Ok(Next::After(Duration::from_secs(5)))];
    let (c, mut rx) = Scripted::new("scripted", script);
    let (board, _stop, _tasks, _) = start(c).await;
    let mut at = vec![];
    for i in 0..6 {
        at.push(next_pass(&mut rx, &format!("pass {i}")).await);
    }
    let gaps: Vec<u128> = at.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
    // Three failures back off 200, 400, 800 ms; the success asked for 5 s; then idle: resync 60 s.
    assert_eq!(gaps, [200, 400, 800, 5000, 60000]);
    let s = wait_for(&board, "the sixth pass to end", |s| s.runs == 6).await;
    assert_eq!((s.failures, s.consecutive_failures), (3, 0), "{s:?}");
    assert_eq!(s.last_error.as_deref(), Some("c"), "the last failure is kept after a success");
}

#[tokio::test(start_paused = true)]
async fn the_board_says_what_failed_and_what_it_waits_for() {
    let (c, mut rx) = Scripted::new("scripted", vec![Step::Fail("the image is missing")]);
    let (board, _stop, _tasks, _) = start(c).await;
    next_pass(&mut rx, "the failing pass").await;
    // The board is updated right after the pass; wait (on the paused clock) for that.
    let s = wait_for(&board, "the failure on the board", |s| s.failures == 1).await;
    assert_eq!(s.phase, Phase::BackingOff);
    assert_eq!(s.consecutive_failures, 1);
    assert_eq!(s.last_error.as_deref(), Some("the image is missing"));
    assert!(s.waiting_for.as_deref().unwrap().starts_with("backoff after a failure, until "), "{s:?}");
    assert!(s.next_run_by.is_some() && s.last_run_at.is_some() && s.last_run_ms.is_some());
    next_pass(&mut rx, "the pass after the backoff").await;
    let s = wait_for(&board, "the success", |s| s.runs == 2).await;
    assert_eq!((s.phase, s.consecutive_failures), (Phase::Idle, 0));
    assert_eq!(s.waiting_for.as_deref().map(|w| w.starts_with("its next period, by ")), Some(true), "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_pass_is_a_failure_and_the_controller_goes_on() {
    let (c, mut rx) = Scripted::new("scripted", vec![Step::Panic]);
    let (board, _stop, _tasks, _) = start(c).await;
    let first = next_pass(&mut rx, "the panicking pass").await;
    let second = next_pass(&mut rx, "the pass after the panic").await;
    assert_eq!((second - first).as_millis(), 200, "a panic backs off like any failure");
    let s = wait_for(&board, "the panic on the board", |s| s.runs == 2).await;
    assert_eq!(s.failures, 1);
    assert_eq!(s.last_error.as_deref(), Some("the pass panicked: boom"));
}

#[tokio::test(start_paused = true)]
async fn wakes_during_a_pass_coalesce_into_one_more_pass() {
    let (mut c, mut rx) = Scripted::new("scripted", vec![]);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    c.gate = Some(gate.clone());
    let (board, _stop, _tasks, wake) = start(c).await;
    let first = next_pass(&mut rx, "the first pass").await;
    for _ in 0..5 {
        wake.notify_one();
    }
    gate.add_permits(2);
    let second = next_pass(&mut rx, "the pass the wakes asked for").await;
    assert_eq!(second, first, "the paused clock did not move: the woken pass ran at once");
    // Then nothing until the resync (60 s): five wakes made one pass, not five.
    let third = next_pass(&mut rx, "the resync pass").await;
    gate.add_permits(1);
    assert_eq!((third - second).as_secs(), 60);
    assert_eq!(wait_for(&board, "three passes", |s| s.runs >= 2).await.failures, 0);
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_wakes_waits_min_interval_after_the_last_pass() {
    let (mut c, mut rx) = Scripted::new("scripted", vec![]);
    c.min_interval = Duration::from_millis(100);
    let (_board, _stop, _tasks, wake) = start(c).await;
    let first = next_pass(&mut rx, "the first pass").await;
    wake.notify_one();
    let second = next_pass(&mut rx, "the woken pass").await;
    assert_eq!((second - first).as_millis(), 100);
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_every_controller() {
    let (c, mut rx) = Scripted::new("scripted", vec![]);
    let (board, stop, tasks, _) = start(c).await;
    next_pass(&mut rx, "the first pass").await;
    stop.send(true).unwrap();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t).await.expect("a controller task ended").unwrap();
    }
    assert_eq!(board.get("scripted").unwrap().phase, Phase::Stopped);
}

/// Real store, real time: a commit to a watched kind wakes the controller long before its
/// resync, and a controller that watches another kind is not woken by it.
#[tokio::test]
async fn a_commit_to_a_watched_kind_wakes_the_controller() {
    let state = state();
    let (mut inst, mut inst_rx) = Scripted::new("instances", vec![]);
    inst.watches = vec![Kind::Instance];
    inst.resync = Duration::from_secs(3600);
    let (mut img, mut img_rx) = Scripted::new("images", vec![]);
    img.watches = vec![Kind::Image];
    img.resync = Duration::from_secs(3600);
    let mut rt = Runtime::new(state.clone(), Arc::new(SystemClock));
    rt.add(Arc::new(inst));
    rt.add(Arc::new(img));
    let board = rt.board();
    let (_stop, rx) = watch::channel(false);
    let _tasks = rt.start(rx).await;
    next_pass(&mut inst_rx, "the instances controller's first pass").await;
    next_pass(&mut img_rx, "the images controller's first pass").await;
    wait_for(&board, "the instances controller to go idle", |s| s.name == "instances" && s.phase == Phase::Idle).await;

    let put =
        |kind, key: &str| WriteOp::Put { kind, key: key.into(), value: serde_json::json!({}), expect: Expect::Any };
    state.txn(vec![put(Kind::Instance, "rg/web/0000000001")]).unwrap();
    tokio::time::timeout(Duration::from_secs(60), inst_rx.recv())
        .await
        .expect("the instances controller woken by the commit within 60 s (its resync is an hour)");
    let s = board.get("instances").unwrap();
    assert_eq!(s.watches, ["instance"]);
    // The images controller saw no commit of its kind: still one pass.
    assert!(img_rx.try_recv().is_err(), "the images controller was woken by an instance commit");
    let s = wait_for(&board, "the woken pass to end", |s| s.name == "instances" && s.runs == 2).await;
    assert!(s.waiting_for.unwrap().starts_with("a change to instance; resync by "));
}

/// Polls the board (a cheap in-memory read) until `done` holds for the named controller (the
/// closure sees each status in turn), on whichever clock the test runs.
async fn wait_for(
    board: &StatusBoard,
    what: &str,
    done: impl Fn(&herd_controller_runtime::ControllerStatus) -> bool,
) -> herd_controller_runtime::ControllerStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = board.snapshot().into_iter().find(&done) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {:?}", board.snapshot());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
