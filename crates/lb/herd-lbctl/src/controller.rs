//! The load-balancer controller as a controller of the runtime (`herd-controller-runtime`).
//!
//! Why: it used to re-read the whole store every 50 ms to notice changes. Its inputs are the
//! store's instances, scale sets, load balancers and public IPs (whose commits wake it through
//! the change feed) and its probers' results (each prober wakes it when a target's health
//! changes, see `LbController::pass`). With every input waking it, the timer is only a safety
//! net (1 s), and a membership change reaches the data plane as soon as the pass that sees it
//! ends. `min_interval` pauses 50 ms after each pass before the next, as the old loop slept
//! between passes: during a burst of commits (a thousand instances created) the controller's
//! full scans leave the store to the reconciler in between.

use crate::LbController;
use herd_controller_runtime::{Controller, ControllerError, Next};
use herd_state::feed::Kind;
use std::time::Duration;

/// The safety-net period: every input wakes the controller, so this only bounds the damage of
/// a wake that never came.
const RESYNC: Duration = Duration::from_secs(1);

impl Controller for LbController {
    fn name(&self) -> &'static str {
        "load-balancer"
    }

    fn watches(&self) -> Vec<Kind> {
        // Vnets and NSGs: a backend's route (source address, admission rules) follows them.
        vec![
            Kind::Instance,
            Kind::ScaleSet,
            Kind::LoadBalancer,
            Kind::PublicIp,
            Kind::VirtualNetwork,
            Kind::NetworkSecurityGroup,
        ]
    }

    fn resync(&self) -> Duration {
        RESYNC
    }

    fn min_interval(&self) -> Duration {
        self.interval
    }

    async fn reconcile(&self) -> Result<Next, ControllerError> {
        self.pass().await?;
        Ok(Next::Idle)
    }
}
