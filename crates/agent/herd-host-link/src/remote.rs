//! [`RemoteDriver`]: the `Driver` trait for the instances of one joined host, carried out by
//! that host's agent over its link.
//!
//! Why a driver and not a new interface: the reconciler, the extension runner and the API all
//! speak `Driver`; an instance on another host must look to them exactly like a local one,
//! with the same idempotent calls, fences and typed errors. What the link adds is only
//! failure: a host that is not connected, or a call that gets no answer, is a transient
//! `Failed`, which the reconciler retries like any other.

use crate::HostLinks;
use async_trait::async_trait;
use herd_agent_wire::{DriverCall, DriverReply, ImageRef, TransferredFile};
use herd_driver::{
    Driver, DriverError, Fence, InstanceSpec, InstanceStats, ObservedInstance, PowerTarget, ScriptOutcome, ScriptRun,
};
use herd_model::InstanceKey;
use std::sync::Arc;
use std::time::Duration;

/// How long a call that builds or rebuilds an instance may take (a VM's first boot under TCG
/// on a loaded host takes minutes).
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How long a cold move's export (upload) or build from moved files (fetch, check, build, boot)
/// may take: the state of a VM is gigabytes.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How long any other call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// The driver of host `host`'s instances.
#[derive(Debug, Clone)]
pub struct RemoteDriver {
    links: Arc<HostLinks>,
    host: String,
}

impl RemoteDriver {
    pub fn new(links: Arc<HostLinks>, host: impl Into<String>) -> Self {
        Self { links, host: host.into() }
    }

    async fn call(&self, call: DriverCall, timeout: Duration) -> Result<DriverReply, DriverError> {
        self.links.call(&self.host, call, timeout).await
    }

    /// The host's instances, if it answers within `timeout`.
    pub async fn list_within(&self, timeout: Duration) -> Result<Vec<ObservedInstance>, DriverError> {
        match self.call(DriverCall::List, timeout).await? {
            DriverReply::Instances(all) => Ok(all),
            other => Err(self.unexpected("list", other)),
        }
    }

    fn unexpected(&self, op: &str, reply: DriverReply) -> DriverError {
        DriverError::Failed(format!("host {}: {op} answered {reply:?}", self.host))
    }

    /// The gallery image `spec` is built from, for the host to fetch by digest.
    async fn image_of(&self, spec: &InstanceSpec) -> Result<Option<ImageRef>, DriverError> {
        crate::pull::image_ref(&self.links.state, &spec.image)
            .await
            .map_err(|e| DriverError::Failed(format!("instance {}: {e}", spec.key)))
    }

    /// The host's name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Has the host upload the stopped instance's state files as transfer `transfer` (opened
    /// on this server first: see [`crate::transfers::Transfers::open`]); what it uploaded.
    pub async fn export_state(
        &self,
        key: &InstanceKey,
        fence: Fence,
        transfer: &str,
    ) -> Result<Vec<TransferredFile>, DriverError> {
        let call = DriverCall::ExportState { key: key.clone(), fence, transfer: transfer.to_string() };
        match self.call(call, TRANSFER_TIMEOUT).await? {
            DriverReply::Exported(files) => Ok(files),
            other => Err(self.unexpected("export_state", other)),
        }
    }

    /// Has the host fetch `files` of transfer `transfer`, check them, and build and start the
    /// instance on them (`Driver::ensure_moved` there).
    pub async fn ensure_moved_from(
        &self,
        spec: &InstanceSpec,
        fence: Fence,
        transfer: &str,
        files: Vec<TransferredFile>,
    ) -> Result<(), DriverError> {
        let image = self.image_of(spec).await?;
        let call = DriverCall::EnsureMoved {
            spec: Box::new(spec.clone()),
            fence,
            image,
            transfer: transfer.to_string(),
            files,
        };
        self.done(call, TRANSFER_TIMEOUT).await
    }

    async fn done(&self, call: DriverCall, timeout: Duration) -> Result<(), DriverError> {
        let op = call.op();
        match self.call(call, timeout).await? {
            DriverReply::Done => Ok(()),
            other => Err(self.unexpected(op, other)),
        }
    }
}

#[async_trait]
impl Driver for RemoteDriver {
    fn name(&self) -> &'static str {
        "remote"
    }

    async fn ensure(&self, spec: &InstanceSpec, fence: Fence) -> Result<(), DriverError> {
        let image = self.image_of(spec).await?;
        self.done(DriverCall::Ensure { spec: Box::new(spec.clone()), fence, image }, BUILD_TIMEOUT).await
    }

    async fn set_power(&self, key: &InstanceKey, target: PowerTarget, fence: Fence) -> Result<(), DriverError> {
        self.done(DriverCall::SetPower { key: key.clone(), target, fence }, BUILD_TIMEOUT).await
    }

    async fn restart(&self, key: &InstanceKey, fence: Fence) -> Result<(), DriverError> {
        self.done(DriverCall::Restart { key: key.clone(), fence }, BUILD_TIMEOUT).await
    }

    async fn resize(&self, spec: &InstanceSpec, fence: Fence) -> Result<(), DriverError> {
        let image = self.image_of(spec).await?;
        self.done(DriverCall::Resize { spec: Box::new(spec.clone()), fence, image }, BUILD_TIMEOUT).await
    }

    async fn reimage(&self, spec: &InstanceSpec, fence: Fence) -> Result<(), DriverError> {
        let image = self.image_of(spec).await?;
        self.done(DriverCall::Reimage { spec: Box::new(spec.clone()), fence, image }, BUILD_TIMEOUT).await
    }

    async fn destroy(&self, key: &InstanceKey, fence: Fence) -> Result<(), DriverError> {
        self.done(DriverCall::Destroy { key: key.clone(), fence }, CALL_TIMEOUT).await
    }

    async fn list(&self) -> Result<Vec<ObservedInstance>, DriverError> {
        self.list_within(CALL_TIMEOUT).await
    }

    async fn stats(&self, key: &InstanceKey) -> Result<Option<InstanceStats>, DriverError> {
        match self.call(DriverCall::Stats { key: key.clone() }, CALL_TIMEOUT).await? {
            DriverReply::Stats(s) => Ok(s),
            other => Err(self.unexpected("stats", other)),
        }
    }

    async fn run_script(&self, key: &InstanceKey, run: &ScriptRun, fence: Fence) -> Result<ScriptOutcome, DriverError> {
        // The host's downloads and the script's own timeout, plus room for the files to travel
        // and the answer to return.
        let timeout = run.longest() + CALL_TIMEOUT;
        match self.call(DriverCall::RunScript { key: key.clone(), run: Box::new(run.clone()), fence }, timeout).await? {
            DriverReply::Script(outcome) => Ok(outcome),
            other => Err(self.unexpected("run_script", other)),
        }
    }

    async fn console_log(&self, key: &InstanceKey, max_bytes: usize) -> Result<Option<String>, DriverError> {
        match self.call(DriverCall::ConsoleLog { key: key.clone(), max_bytes }, CALL_TIMEOUT).await? {
            DriverReply::Console(c) => Ok(c),
            other => Err(self.unexpected("console_log", other)),
        }
    }
}
