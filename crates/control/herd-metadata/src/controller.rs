//! The metadata service as a controller of the runtime (`herd-controller-runtime`).
//!
//! Why: its listeners follow the instance records, so a commit to an instance wakes it (a new
//! instance's endpoint is up before it boots) instead of waiting for its next period, which
//! stays as the safety net. At most one sync runs per [`MIN_INTERVAL`]: a burst of instance
//! commits (a thousand instances created in chunks) costs one listing of every instance per
//! interval, not one per commit. At shutdown it closes every listener.

use crate::MetadataService;
use herd_controller_runtime::{Controller, ControllerError, Next};
use herd_state::feed::Kind;
use std::time::Duration;

/// The pause after each sync before a wake runs the next one; far below any boot time.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

impl Controller for MetadataService {
    fn name(&self) -> &'static str {
        "metadata"
    }

    fn watches(&self) -> Vec<Kind> {
        vec![Kind::Instance]
    }

    fn resync(&self) -> Duration {
        self.interval()
    }

    fn min_interval(&self) -> Duration {
        MIN_INTERVAL
    }

    async fn reconcile(&self) -> Result<Next, ControllerError> {
        // A sync logs and keeps its listeners on a store failure; the next wake retries.
        self.sync().await;
        Ok(Next::Idle)
    }

    async fn stopped(&self) {
        self.close_all().await;
    }
}
