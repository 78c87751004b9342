//! The reconciler as a controller of the runtime (`herd-controller-runtime`).
//!
//! Why: the runtime owns when a pass runs (wakes, resync, backoff) and shows how it went; the
//! reconciler only says what wakes it and how a pass ended.
//!
//! - Woken by commits to what users change: groups, scale sets, images, networks, load
//!   balancers, public IPs. Instance records are left out on purpose: the reconciler writes
//!   them itself on nearly every step, and a pass that made steps runs again at once anyway;
//!   the API wakes it directly after an instance action.
//! - A pass that made steps runs again at once; one with something in flight (a VM booting)
//!   after `busy_interval`; an idle one at the latest after `idle_interval`.
//! - A failed pass is retried after `busy_interval` (at least 200 ms) when it may succeed
//!   unchanged ([`ReconcileError::retryable`]: a busy host, a store conflict), and with
//!   exponential backoff up to 30 s when it cannot (a missing image).
//! - Its concerns (scale, rolling upgrade, OS image, repair, capacity, strays, orphans) run in
//!   that one pass and show as entries of their own on the status board ([`crate::concerns`]);
//!   [`register`] adds the controller and those entries to a runtime.

use crate::concerns::ConcernBoard;
use crate::executor::{ReconcileError, Reconciler};
use herd_controller_runtime::{Backoff, Controller, ControllerError, Next, Runtime};
use herd_state::feed::Kind;
use std::sync::Arc;
use std::time::Duration;

/// Registers the reconciler with `runtime`: its one pass as the `reconciler` controller (woken
/// also through [`Reconciler::waker`], which the API holds), and an entry per concern that the
/// pass reports ([`crate::concerns::Concern`]).
pub fn register(runtime: &mut Runtime, reconciler: Reconciler) {
    let watches: Vec<String> = reconciler.watches().iter().map(|k| k.as_str().to_string()).collect();
    let board = ConcernBoard::register(runtime.board(), &watches, reconciler.resync());
    let reconciler = reconciler.with_concern_board(board);
    let wake = reconciler.waker();
    runtime.add_with_wake(Arc::new(reconciler), wake);
}

impl Controller for Reconciler {
    fn name(&self) -> &'static str {
        "reconciler"
    }

    fn watches(&self) -> Vec<Kind> {
        vec![Kind::Group, Kind::ScaleSet, Kind::Image, Kind::VirtualNetwork, Kind::LoadBalancer, Kind::PublicIp]
    }

    fn resync(&self) -> Duration {
        self.config().idle_interval
    }

    async fn reconcile(&self) -> Result<Next, ControllerError> {
        let report = self.pass().await?;
        Ok(if report.steps > 0 {
            Next::Now
        } else if report.waiting {
            Next::After(self.config().busy_interval)
        } else {
            Next::Idle
        })
    }

    fn error_policy(&self, error: &ControllerError, consecutive_failures: u32) -> Duration {
        let transient = error.downcast_ref::<ReconcileError>().is_none_or(ReconcileError::retryable);
        if transient {
            self.config().busy_interval.max(Duration::from_millis(200))
        } else {
            Backoff::DEFAULT.delay(consecutive_failures)
        }
    }

    async fn stopped(&self) {
        self.concerns_stopped();
    }
}
