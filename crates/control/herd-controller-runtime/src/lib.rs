//! The controller runtime: every background concern of the server (scale, rolling upgrades,
//! repair, load-balancer membership, billing, metadata, autoscale...) is a [`Controller`] with
//! one shape, driven by one loop.
//!
//! Why: before this crate each concern hand-rolled its loop, and they differed in tick,
//! shutdown and error handling; each re-read the whole store on a timer (the LB controller
//! every 50 ms), and none said what it was doing. Here a controller only says what it watches
//! and how to make one pass; the runtime decides when it runs and shows how it went.
//!
//! The shape follows kube-rs's `Controller` (`reconcile` returning what to do next, an error
//! policy) and omicron's background tasks (one driver, each task's status visible):
//!
//! - **Woken by the change feed.** A controller names the record kinds it watches
//!   ([`Controller::watches`]); a commit that changes one of them wakes it
//!   ([`herd_state::feed`]). Wakes that arrive while it runs coalesce into one more run;
//!   [`Controller::min_interval`] spaces the passes of a burst.
//! - **A safety net.** It also runs at least every [`Controller::resync`], so a missed wake (or
//!   state outside the store, such as probe health) is never missed for long.
//! - **Takes no input.** A pass reads what it needs and returns [`Next`]: run again now, after
//!   a while, or when something changes.
//! - **Its own error policy.** A failed pass backs off by [`Controller::error_policy`]
//!   (exponential by default, [`Backoff`]); a panic in a pass is a failure, not a dead loop.
//! - **Visible.** [`StatusBoard`] holds each controller's last run, its duration, its last
//!   error and what it waits for (`GET /v1/server/controllers`, `herd server status`).
//!
//! One controller's lifecycle:
//!
//! ```text
//!   Starting ──► Running ──Ok(Now)──────────────────────────────► Running
//!                  │  ▲
//!                  │  ├── wake, or resync due ───── Idle ◄──── Ok(Idle)
//!                  │  ├── wake, or the delay ends ─ Waiting ◄─ Ok(After(d))
//!                  │  └── the backoff ends ──────── BackingOff ◄─ Err / panic
//!                  │
//!   any state ── shutdown ──► Stopped
//! ```
//!
//! Timing runs on tokio's clock (paused and advanced by hand in tests); the timestamps shown on
//! the board come from the injectable [`herd_model::clock::Clock`].

#![forbid(unsafe_code)]

mod backoff;
mod runtime;
mod status;

pub use backoff::Backoff;
pub use runtime::Runtime;
pub use status::{ControllerStatus, Phase, StatusBoard};

use herd_state::feed::Kind;
use std::future::Future;
use std::time::Duration;

/// What a failed pass returns: any error, with its sources (the error policy may downcast it to
/// tell a permanent failure from a transient one).
pub type ControllerError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// When a controller wants its next pass, at the latest (a wake from the change feed runs an
/// idle or waiting controller sooner).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// At once: the pass made progress and there is more to do.
    Now,
    /// After this long: something is in flight (a VM booting, a drain running).
    After(Duration),
    /// Nothing to do until something it watches changes, or its resync period passes.
    Idle,
}

/// One background concern of the server.
pub trait Controller: Send + Sync + 'static {
    /// A stable name: shown on the status board and in logs.
    fn name(&self) -> &'static str;

    /// The record kinds whose changes wake it. Empty: it runs on its own schedule only.
    fn watches(&self) -> Vec<Kind> {
        Vec::new()
    }

    /// The longest it stays idle: the safety net under the change feed, and the period of a
    /// controller that watches nothing.
    fn resync(&self) -> Duration;

    /// The shortest pause between the end of one pass and the start of the next, so that a
    /// burst of commits (a thousand instances created) coalesces into few passes and a slow
    /// pass (a full scan of a large store) leaves the store to others in between. Zero by
    /// default.
    fn min_interval(&self) -> Duration {
        Duration::ZERO
    }

    /// One pass: observe, decide, act.
    fn reconcile(&self) -> impl Future<Output = Result<Next, ControllerError>> + Send;

    /// How long to wait after a failed pass, given how many passes in a row have failed (1 for
    /// the first). Exponential from 200 ms to 30 s by default.
    fn error_policy(&self, _error: &ControllerError, consecutive_failures: u32) -> Duration {
        Backoff::DEFAULT.delay(consecutive_failures)
    }

    /// Runs once when the server shuts down, after the last pass (close listeners, flush).
    fn stopped(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// A controller that watches nothing and makes one pass every period (its windows are time:
/// sampling, evaluating, metering). Every such controller had the same [`Controller`] impl;
/// this trait says only what differs, and the blanket impl below supplies the rest.
pub trait Periodic: Send + Sync + 'static {
    /// The controller's stable name ([`Controller::name`]).
    const NAME: &'static str;

    /// How often it runs; also how long after a failed pass it retries.
    fn period(&self) -> Duration;

    /// One pass; it always ends [`Next::Idle`] (the next one is a period away).
    fn pass(&self) -> impl Future<Output = Result<(), ControllerError>> + Send;
}

impl<P: Periodic> Controller for P {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn resync(&self) -> Duration {
        self.period()
    }

    /// A failed pass is retried at the next period, as before the runtime.
    fn error_policy(&self, _error: &ControllerError, _consecutive_failures: u32) -> Duration {
        self.period()
    }

    async fn reconcile(&self) -> Result<Next, ControllerError> {
        self.pass().await?;
        Ok(Next::Idle)
    }
}

/// Keeps the store's change feed short ([`herd_state::feed::Compactor`]) every `every`.
pub struct CompactionController {
    state: herd_state::State,
    compactor: std::sync::Arc<herd_state::feed::Compactor>,
    every: Duration,
}

impl CompactionController {
    pub fn new(state: herd_state::State, every: Duration) -> Self {
        Self { state, compactor: Default::default(), every }
    }
}

impl Controller for CompactionController {
    fn name(&self) -> &'static str {
        "feed-compaction"
    }

    fn resync(&self) -> Duration {
        self.every
    }

    async fn reconcile(&self) -> Result<Next, ControllerError> {
        let compactor = self.compactor.clone();
        self.state.run(move |store| compactor.compact(store)).await?;
        Ok(Next::Idle)
    }
}
