//! The cost meter as a controller of the runtime (`herd-controller-runtime`).
//!
//! Why: metering is periodic by nature (it bills time), so it watches nothing and runs every
//! `every`; the runtime gives it the same shutdown, backoff and status as every other
//! controller. A tick is synchronous (it reads and writes the store), so it runs on the
//! blocking pool.

use crate::meter::Meter;
use herd_controller_runtime::{ControllerError, Periodic};
use std::sync::Arc;
use std::time::Duration;

/// The meter and how often it ticks.
pub struct MeterController {
    meter: Arc<Meter>,
    every: Duration,
}

impl MeterController {
    pub fn new(meter: Meter, every: Duration) -> Self {
        Self { meter: Arc::new(meter), every }
    }
}

impl Periodic for MeterController {
    const NAME: &'static str = "billing";

    fn period(&self) -> Duration {
        self.every
    }

    async fn pass(&self) -> Result<(), ControllerError> {
        let meter = self.meter.clone();
        let written = tokio::task::spawn_blocking(move || {
            for p in meter.reload_prices() {
                tracing::warn!(problem = %p, "spot price schedule not reloaded");
            }
            meter.tick()
        })
        .await??;
        tracing::debug!(meters = written, "cost meter ticked");
        Ok(())
    }
}
