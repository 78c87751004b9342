//! The loop that drives every controller, and the pump that turns the change feed into wakes.
//!
//! Why one loop: the rules (coalesced wakes, resync, backoff, panics as failures, shutdown,
//! the status board) are written and tested once, not per controller.

use crate::status::{error_chain, Phase, StatusBoard};
use crate::{Controller, ControllerError, Next};
use herd_model::clock::Clock;
use herd_state::feed::{ChangeFeed, FeedEvent, Kind};
use herd_state::State;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long the feed pump waits before retrying after the store failed it.
const FEED_RETRY: Duration = Duration::from_secs(1);

type Start = Box<dyn FnOnce(watch::Receiver<bool>) -> JoinHandle<()> + Send>;

/// The controllers of one server, before and while they run.
pub struct Runtime {
    state: State,
    clock: Arc<dyn Clock>,
    board: StatusBoard,
    routes: Vec<(Vec<Kind>, Arc<Notify>)>,
    starts: Vec<Start>,
}

impl Runtime {
    pub fn new(state: State, clock: Arc<dyn Clock>) -> Self {
        Self { state, clock, board: StatusBoard::default(), routes: Vec::new(), starts: Vec::new() }
    }

    /// The status board (clone it before [`Runtime::start`] to read it later).
    pub fn board(&self) -> StatusBoard {
        self.board.clone()
    }

    /// Registers a controller; returns the handle that wakes it (for causes outside the store,
    /// such as a probe seeing an instance go unhealthy).
    pub fn add<C: Controller>(&mut self, controller: Arc<C>) -> Arc<Notify> {
        let wake = Arc::new(Notify::new());
        self.add_with_wake(controller, wake.clone());
        wake
    }

    /// Registers a controller that is also woken through `wake`, a handle others already hold.
    pub fn add_with_wake<C: Controller>(&mut self, controller: Arc<C>, wake: Arc<Notify>) {
        let name = controller.name();
        let kinds = controller.watches();
        self.board.register(name, kinds.iter().map(|k| k.as_str().to_string()).collect(), controller.resync());
        if !kinds.is_empty() {
            self.routes.push((kinds, wake.clone()));
        }
        let board = self.board.clone();
        let clock = self.clock.clone();
        self.starts.push(Box::new(move |shutdown| tokio::spawn(drive(controller, wake, board, clock, shutdown))));
    }

    /// Starts the change-feed pump, then every controller; each stops when `shutdown` turns
    /// true. The pump starts first, so a commit made during a controller's first pass still
    /// wakes it.
    pub async fn start(self, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        if !self.routes.is_empty() {
            let feed = start_feed(&self.state, shutdown.clone()).await;
            if let Some(feed) = feed {
                tasks.push(tokio::spawn(pump(self.state.clone(), feed, self.routes, shutdown.clone())));
            }
        }
        tasks.extend(self.starts.into_iter().map(|start| start(shutdown.clone())));
        tasks
    }
}

/// The feed, retried until the store answers or the server stops.
async fn start_feed(state: &State, mut shutdown: watch::Receiver<bool>) -> Option<ChangeFeed> {
    loop {
        match ChangeFeed::start(state).await {
            Ok(feed) => return Some(feed),
            Err(e) => tracing::warn!(error = %e, "cannot start the change feed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(FEED_RETRY) => {}
            _ = shutdown.wait_for(|v| *v) => return None,
        }
    }
}

/// Wakes the controllers that watch what each commit changed (all of them when changes were
/// lost to compaction).
async fn pump(
    state: State,
    mut feed: ChangeFeed,
    routes: Vec<(Vec<Kind>, Arc<Notify>)>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let event = tokio::select! {
            e = feed.next() => e,
            _ = shutdown.wait_for(|v| *v) => return,
        };
        match event {
            Ok(FeedEvent::Changed(kinds)) => {
                tracing::trace!(?kinds, next = feed.next_revision(), "change feed");
                for (watched, wake) in &routes {
                    if watched.iter().any(|k| kinds.contains(k)) {
                        wake.notify_one();
                    }
                }
            }
            Ok(FeedEvent::Lost) => routes.iter().for_each(|(_, wake)| wake.notify_one()),
            Err(e) => {
                tracing::warn!(error = %e, "the change feed failed; waking every controller and retrying");
                routes.iter().for_each(|(_, wake)| wake.notify_one());
                tokio::select! {
                    _ = tokio::time::sleep(FEED_RETRY) => {}
                    _ = shutdown.wait_for(|v| *v) => return,
                }
                match ChangeFeed::start(&state).await {
                    Ok(f) => feed = f,
                    Err(e) => tracing::warn!(error = %e, "cannot restart the change feed; retrying"),
                }
            }
        }
    }
}

/// One controller's loop: run a pass, record it, wait as its result says, repeat.
async fn drive<C: Controller>(
    controller: Arc<C>,
    wake: Arc<Notify>,
    board: StatusBoard,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = controller.name();
    let mut failures: u32 = 0;
    let mut last_end: Option<Instant> = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        // A burst of wakes waits min_interval after the last pass ended.
        let min = controller.min_interval();
        if let Some(at) = last_end.map(|t| t + min).filter(|at| *at > Instant::now()) {
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = shutdown.wait_for(|v| *v) => break,
            }
        }
        let started = Instant::now();
        let started_at = clock.now();
        board.update(name, |s| {
            s.phase = Phase::Running;
            s.waiting_for = None;
            s.next_run_by = None;
            s.last_run_at = Some(started_at);
        });
        let result = run_pass(controller.clone()).await;
        let took = started.elapsed();
        last_end = Some(Instant::now());
        tracing::debug!(controller = name, took_us = took.as_micros() as u64, ok = result.is_ok(), "controller pass");
        let (phase, wait) = match &result {
            Ok(Next::Now) => (Phase::Running, Duration::ZERO),
            Ok(Next::After(d)) => (Phase::Waiting, *d),
            Ok(Next::Idle) => (Phase::Idle, controller.resync()),
            Err(e) => {
                failures = failures.saturating_add(1);
                (Phase::BackingOff, controller.error_policy(e, failures))
            }
        };
        if result.is_ok() {
            failures = 0;
        }
        let now = clock.now();
        let next_run_by = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
        board.update(name, |s| {
            s.runs += 1;
            s.last_run_ms = Some(took.as_secs_f64() * 1000.0);
            s.consecutive_failures = failures;
            s.phase = phase;
            match &result {
                Ok(_) => s.last_success_at = Some(now),
                Err(e) => {
                    s.failures += 1;
                    s.last_error = Some(error_chain(e.as_ref()));
                    s.last_error_at = Some(now);
                }
            }
            if phase != Phase::Running {
                s.next_run_by = Some(next_run_by);
                s.waiting_for = Some(describe_wait(phase, &s.watches, next_run_by));
            }
        });
        if let Err(e) = &result {
            tracing::warn!(controller = name, error = %error_chain(e.as_ref()), consecutive_failures = failures, backoff_ms = wait.as_millis() as u64, "controller pass failed");
        }
        if wait.is_zero() {
            tokio::task::yield_now().await;
            continue;
        }
        let deadline = Instant::now() + wait;
        if phase == Phase::BackingOff {
            // A wake during the backoff is kept (the permit stays) and runs the pass after it,
            // not before: a failing pass is not retried at the rate of commits.
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = shutdown.wait_for(|v| *v) => break,
            }
        } else {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = shutdown.wait_for(|v| *v) => break,
            }
        }
    }
    controller.stopped().await;
    board.update(name, |s| {
        s.phase = Phase::Stopped;
        s.waiting_for = None;
        s.next_run_by = None;
    });
}

/// One pass in its own task, so that a panic in it is a failed pass and not a dead loop.
async fn run_pass<C: Controller>(controller: Arc<C>) -> Result<Next, ControllerError> {
    match tokio::spawn(async move { controller.reconcile().await }).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => Err(format!("the pass panicked: {}", panic_text(e.into_panic())).into()),
        Err(e) => Err(Box::new(e)),
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

fn describe_wait(phase: Phase, watches: &[String], by: chrono::DateTime<chrono::Utc>) -> String {
    let by = by.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    match phase {
        Phase::Idle if watches.is_empty() => format!("its next period, by {by}"),
        Phase::Idle => format!("a change to {}; resync by {by}", watches.join(", ")),
        Phase::Waiting => format!("work in flight; next pass by {by}"),
        Phase::BackingOff => format!("backoff after a failure, until {by}"),
        Phase::Starting | Phase::Running | Phase::Stopped => String::new(),
    }
}
