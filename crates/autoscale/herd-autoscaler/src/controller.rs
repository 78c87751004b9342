//! The autoscaler as two controllers of the runtime (`herd-controller-runtime`): the sampler
//! and the evaluator.
//!
//! Why two: they run on different periods (a sample every `sample_interval`, the finest grain
//! a rule can use; an evaluation every `interval`, as Azure's 30–60 s), and a slow metric
//! source must not delay evaluations. Both are periodic (their windows are time), so they watch
//! nothing. An evaluation is synchronous (store reads and capacity writes) and runs on the
//! blocking pool.

use crate::runner::Runner;
use herd_controller_runtime::{ControllerError, Periodic};
use std::sync::Arc;
use std::time::Duration;

/// Samples instance metrics and named sources.
pub struct SamplerController(pub Arc<Runner>);

/// Evaluates every autoscale setting and applies its decisions.
pub struct EvaluatorController(pub Arc<Runner>);

impl Periodic for SamplerController {
    const NAME: &'static str = "autoscale-sampler";

    fn period(&self) -> Duration {
        self.0.config().sample_interval
    }

    async fn pass(&self) -> Result<(), ControllerError> {
        self.0.sample_once().await?;
        Ok(())
    }
}

impl Periodic for EvaluatorController {
    const NAME: &'static str = "autoscale";

    fn period(&self) -> Duration {
        self.0.config().interval
    }

    async fn pass(&self) -> Result<(), ControllerError> {
        let runner = self.0.clone();
        tokio::task::spawn_blocking(move || runner.evaluate_once()).await??;
        Ok(())
    }
}
