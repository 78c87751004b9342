//! Carrying out the server's driver calls on this host, with the host's own driver.
//!
//! Why little more than a dispatch: the drivers are already idempotent by instance id and
//! refuse a lower fence than they have seen, so a call repeated after a lost reply, or sent by
//! a stale server, is handled exactly as on the server's own machine. What this adds is the
//! image: a call that builds from a gallery image names its digest, and the spec's paths (the
//! server's files) are replaced by this host's cached copy, pulled first if it is not here.
//!
//! A `RunScript` carries the extension's `http(s)` `fileUris` and the server's rules for them
//! (`ScriptRun::downloads`), not their bytes: this host's driver downloads them, from this
//! host's network position, when the run starts (`ScriptRun::fetch_files`, the same code the
//! server runs for its own instances), and not when it adopts a run of the same identity that
//! is still going.
//!
//! A cold move's two calls move bytes through the server ([`crate::transfer`]):
//! `ExportState` uploads the stopped instance's state files; `EnsureMoved` fetches and checks
//! them, localizes the image as `Ensure` does (a VM's moved overlay is rebased onto this
//! host's copy), builds the instance on them, and removes the staging directory. An instance
//! this host already has is not fetched again: the call is then an `Ensure`.

use crate::images::{ImageCache, Lease, PullError};
use crate::metadata_relay::Relays;
use crate::transfer::Mover;
use herd_agent_wire::{CallError, DriverCall, DriverReply, ImageRef};
use herd_driver::{Driver, InstanceSpec};
use std::sync::Arc;

/// Runs `call` on `driver`, with the images of `images`.
pub async fn execute(
    driver: &dyn Driver,
    images: &Arc<ImageCache>,
    relays: &Arc<Relays>,
    mover: &Arc<Mover>,
    call: DriverCall,
) -> Result<DriverReply, CallError> {
    let done = |r: Result<(), herd_driver::DriverError>| r.map(|()| DriverReply::Done);
    // An instance built here gets its metadata listener (where its spec says it will look).
    // The listener comes whatever the call's result: a build that failed late (a slow boot on
    // a loaded host) may still leave an instance that runs, is then seen running and never
    // built again, and must not be left without its metadata. A listener for an instance
    // that does not exist costs a socket until its Destroy.
    let built = |r: Result<(), herd_driver::DriverError>, spec: &InstanceSpec| {
        match (spec.metadata_endpoint, &spec.network) {
            // A bridged instance asks at 169.254.169.254: its listener is on its gateway.
            (Some(addr), Some(net)) if addr.ip() == herd_model::network::METADATA_ADDRESS => {
                relays.ensure_bridged(&spec.key.path(), net.gateway, net.address)
            }
            (Some(addr), _) => relays.ensure(&spec.key.path(), addr),
            _ => {}
        }
        done(r)
    };
    let result = match call {
        DriverCall::Ensure { mut spec, fence, image } => {
            let _lease = local_image(images, &mut spec, image).await?;
            built(driver.ensure(&spec, fence).await, &spec)
        }
        DriverCall::SetPower { key, target, fence } => done(driver.set_power(&key, target, fence).await),
        DriverCall::Restart { key, fence } => done(driver.restart(&key, fence).await),
        DriverCall::Resize { mut spec, fence, image } => {
            let _lease = local_image(images, &mut spec, image).await?;
            built(driver.resize(&spec, fence).await, &spec)
        }
        DriverCall::Reimage { mut spec, fence, image } => {
            let _lease = local_image(images, &mut spec, image).await?;
            built(driver.reimage(&spec, fence).await, &spec)
        }
        DriverCall::Destroy { key, fence } => {
            let r = driver.destroy(&key, fence).await;
            if r.is_ok() {
                relays.close(&key.path());
            }
            done(r)
        }
        DriverCall::List => driver.list().await.map(DriverReply::Instances),
        DriverCall::Stats { key } => driver.stats(&key).await.map(DriverReply::Stats),
        DriverCall::RunScript { key, run, fence } => {
            driver.run_script(&key, &run, fence).await.map(DriverReply::Script)
        }
        DriverCall::ConsoleLog { key, max_bytes } => {
            driver.console_log(&key, max_bytes).await.map(DriverReply::Console)
        }
        DriverCall::ExportState { key, fence, transfer } => {
            let files = driver.state_files(&key, fence).await.map_err(|e| CallError::from(&e))?;
            return match mover.upload(&transfer, &key.path(), &files).await {
                Ok(stored) => Ok(DriverReply::Exported(stored)),
                Err(e) => Err(CallError::Failed { message: format!("instance {key}: uploading its state: {e:#}") }),
            };
        }
        DriverCall::EnsureMoved { mut spec, fence, image, transfer, files } => {
            let _lease = local_image(images, &mut spec, image).await?;
            let here = driver.list().await.map_err(|e| CallError::from(&e))?.iter().any(|o| o.key == spec.key);
            if here {
                built(driver.ensure(&spec, fence).await, &spec)
            } else {
                let staged = mover.fetch(&transfer, &files).await.map_err(|e| CallError::Failed {
                    message: format!("instance {}: fetching its moved state: {e:#}", spec.key),
                })?;
                let r = driver.ensure_moved(&spec, fence, &staged.path).await;
                drop(staged);
                built(r, &spec)
            }
        }
    };
    result.map_err(|e| CallError::from(&e))
}

/// Points `spec` at this host's copy of `image` (pulled if missing), held by the returned lease
/// for the call. Without an image the spec's paths stay (a spec built from no gallery image).
async fn local_image(
    images: &Arc<ImageCache>,
    spec: &mut InstanceSpec,
    image: Option<ImageRef>,
) -> Result<Option<Lease>, CallError> {
    let Some(image) = image else { return Ok(None) };
    let lease = images.ensure(&image).await.map_err(|e| match e {
        PullError::Unavailable(reason) => CallError::ImageUnavailable { key: spec.key.clone(), reason },
        PullError::Failed(message) => CallError::Failed { message },
    })?;
    spec.image = herd_model::image::content::localize(&spec.image, &lease.path);
    Ok(Some(lease))
}
