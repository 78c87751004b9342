//! Carrying out the server's driver calls on this host, with the host's own driver.
//!
//! Why nothing more than a dispatch: the drivers are already idempotent by instance id and
//! refuse a lower fence than they have seen, so a call repeated after a lost reply, or sent by
//! a stale server, is handled exactly as on the server's own machine.

use herd_agent_wire::{CallError, DriverCall, DriverReply};
use herd_driver::Driver;

/// Runs `call` on `driver`.
pub async fn execute(driver: &dyn Driver, call: DriverCall) -> Result<DriverReply, CallError> {
    let done = |r: Result<(), herd_driver::DriverError>| r.map(|()| DriverReply::Done);
    let result = match call {
        DriverCall::Ensure { spec, fence } => done(driver.ensure(&spec, fence).await),
        DriverCall::SetPower { key, target, fence } => done(driver.set_power(&key, target, fence).await),
        DriverCall::Restart { key, fence } => done(driver.restart(&key, fence).await),
        DriverCall::Resize { spec, fence } => done(driver.resize(&spec, fence).await),
        DriverCall::Reimage { spec, fence } => done(driver.reimage(&spec, fence).await),
        DriverCall::Destroy { key, fence } => done(driver.destroy(&key, fence).await),
        DriverCall::List => driver.list().await.map(DriverReply::Instances),
        DriverCall::Stats { key } => driver.stats(&key).await.map(DriverReply::Stats),
        DriverCall::RunScript { key, run, fence } => {
            driver.run_script(&key, &run, fence).await.map(DriverReply::Script)
        }
        DriverCall::ConsoleLog { key, max_bytes } => {
            driver.console_log(&key, max_bytes).await.map(DriverReply::Console)
        }
    };
    result.map_err(|e| CallError::from(&e))
}
