//! The autoscaler as two controllers of the runtime (`herd-controller-runtime`): the sampler
//! and the evaluator.
//!
//! Why two: they run on different periods (a sample every `sample_interval`, the finest grain
//! a rule can use; an evaluation every `interval`, as Azure's 30–60 s), and a slow metric
//! source must not delay evaluations. Both are periodic (their windows are time), so they watch
//! nothing. An evaluation is synchronous (store reads and capacity writes) and runs on the
//! blocking pool.

use crate::runner::Runner;
use herd_controller_runtime::{Controller, ControllerError, Next};
use std::sync::Arc;
use std::time::Duration;

/// Samples instance metrics and named sources.
pub struct SamplerController(pub Arc<Runner>);

/// Evaluates every autoscale setting and applies its decisions.
pub struct EvaluatorController(pub Arc<Runner>);

impl Controller for SamplerController {
    fn name(&self) -> &'static str {
        "autoscale-sampler"
    }

    fn resync(&self) -> Duration {
        self.0.config().sample_interval
    }

    /// A failed pass is retried at the next period, as before the runtime.
    fn error_policy(&self, _error: &ControllerError, _consecutive_failures: u32) -> Duration {
        self.resync()
    }

    async fn reconcile(&self) -> Result<Next, ControllerError> {
        self.0.sample_once().await?;
        Ok(Next::Idle)
    }
}

impl Controller for EvaluatorController {
    fn name(&self) -> &'static str {
        "autoscale"
    }

    fn resync(&self) -> Duration {
        self.0.config().interval
    }

    /// A failed pass is retried at the next period, as before the runtime.
    fn error_policy(&self, _error: &ControllerError, _consecutive_failures: u32) -> Duration {
        self.resync()
    }

    async fn reconcile(&self) -> Result<Next, ControllerError> {
        let runner = self.0.clone();
        tokio::task::spawn_blocking(move || runner.evaluate_once()).await??;
        Ok(Next::Idle)
    }
}
