//! A driver that picks the real driver by the image: VMs for disk and kernel images, process
//! instances for directory images.
//!
//! Why: a server (and, with `herd agent`, every host) runs one `Driver`, but which backend an
//! instance needs is a property of its image, not of the server. A directory image cannot boot
//! as a VM, and a disk image cannot run as a process tree; a host that offers VMs should still
//! run the lightweight process instances next to them, on the same vnets. [`ByImage`] holds one
//! driver of each kind and routes every call to the one that owns the instance:
//!
//! ```text
//!   call with a spec (ensure, resize, reimage) ─▶ by spec.image:
//!        Directory ─────────▶ the process driver
//!        Disk | Kernel ─────▶ the VM driver
//!   call with a key only (set_power, restart, destroy, stats, run_script, console_log)
//!        ─▶ the owner map (filled by ensure/resize/reimage, rebuilt by every list)
//!        ─▶ on a miss: both drivers' lists (a fresh server after a restart)
//!        ─▶ still unknown: NotFound / None, and destroy asks both (it is idempotent)
//! ```
//!
//! An instance lives in exactly one of the two. If its image changes kind (a model update from
//! a directory image to a disk image), `reimage` moves it: it is destroyed in the old driver,
//! then built in the new one. `ensure` and `resize` keep an instance where it is and refuse a
//! spec of the other kind, so an instance is never built twice under one key.
//!
//! The owner map is a cache, never the truth: both drivers' own records are (each keeps its
//! instances on disk), which is why a new `ByImage` over drivers that already hold instances
//! routes correctly from the first call.

use crate::{
    Driver, DriverError, Fence, InstanceSpec, InstanceStats, ObservedInstance, PowerTarget, ScriptOutcome, ScriptRun,
};
use async_trait::async_trait;
use herd_model::{image::ImageSource, InstanceKey};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Which of the two drivers an instance belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The VM driver: disk and kernel images.
    Vm,
    /// The process driver: directory images.
    Process,
}

impl Side {
    /// The driver an image runs on.
    pub fn of(image: &ImageSource) -> Side {
        match image {
            ImageSource::Directory { .. } => Side::Process,
            ImageSource::Disk { .. } | ImageSource::Kernel { .. } => Side::Vm,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Side::Vm => "a VM",
            Side::Process => "a process instance",
        }
    }
}

/// Routes each instance to a VM driver or a process driver by its image (see the module docs).
pub struct ByImage {
    vms: Arc<dyn Driver>,
    processes: Arc<dyn Driver>,
    /// `vm+process`, for logs and `/v1/server`.
    name: &'static str,
    /// Which driver holds each instance, as last seen.
    owners: Mutex<HashMap<InstanceKey, Side>>,
    /// Whether a list has filled `owners` yet: after that, an instance missing from the map is
    /// taken as new by `ensure` (no list per new instance).
    listed: AtomicBool,
}

impl ByImage {
    pub fn new(vms: Arc<dyn Driver>, processes: Arc<dyn Driver>) -> Self {
        // One short string per server (`qemu+process`), so `name` can stay `&'static str`.
        let name: &'static str = Box::leak(format!("{}+{}", vms.name(), processes.name()).into_boxed_str());
        Self { vms, processes, name, owners: Mutex::new(HashMap::new()), listed: AtomicBool::new(false) }
    }

    fn driver(&self, side: Side) -> &dyn Driver {
        match side {
            Side::Vm => &*self.vms,
            Side::Process => &*self.processes,
        }
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceKey, Side>> {
        self.owners.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The driver that holds `key`, from the owner map, else from both drivers' lists (which
    /// refresh the map). `None`: neither has it.
    async fn owner(&self, key: &InstanceKey) -> Result<Option<Side>, DriverError> {
        let known = self.owners().get(key).copied();
        if known.is_some() {
            return Ok(known);
        }
        self.list().await?;
        Ok(self.owners().get(key).copied())
    }

    /// The driver a spec's call goes to: the spec's image's, which must be the one holding the
    /// instance if any does (only `reimage` moves an instance; see the module docs).
    async fn keep_in_place(&self, spec: &InstanceSpec) -> Result<Side, DriverError> {
        let wanted = Side::of(&spec.image);
        let known = self.owners().get(&spec.key).copied();
        let held = match known {
            None if !self.listed.load(Ordering::Acquire) => self.owner(&spec.key).await?,
            known => known,
        };
        match held {
            Some(held) if held != wanted => Err(DriverError::InvalidSpec {
                key: spec.key.clone(),
                reason: format!(
                    "instance {} runs as {}, but its image ({} image) runs as {}: reimage it to move it",
                    spec.key,
                    held.as_str(),
                    spec.image.kind(),
                    wanted.as_str()
                ),
            }),
            _ => Ok(wanted),
        }
    }

    fn record(&self, key: &InstanceKey, side: Side) {
        self.owners().insert(key.clone(), side);
    }
}

#[async_trait]
impl Driver for ByImage {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn ensure(&self, spec: &InstanceSpec, fence: Fence) -> Result<(), DriverError> {
        let side = self.keep_in_place(spec).await?;
        // Recorded before the call: a failed ensure may still have left the instance there.
        self.record(&spec.key, side);
        self.driver(side).ensure(spec, fence).await
    }

    async fn set_power(&self, key: &InstanceKey, target: PowerTarget, fence: Fence) -> Result<(), DriverError> {
        let side = self.owner(key).await?.ok_or_else(|| DriverError::NotFound(key.clone()))?;
        self.driver(side).set_power(key, target, fence).await
    }

    async fn restart(&self, key: &InstanceKey, fence: Fence) -> Result<(), DriverError> {
        let side = self.owner(key).await?.ok_or_else(|| DriverError::NotFound(key.clone()))?;
        self.driver(side).restart(key, fence).await
    }

    async fn resize(&self, spec: &InstanceSpec, fence: Fence) -> Result<(), DriverError> {
        let side = self.keep_in_place(spec).await?;
        self.driver(side).resize(spec, fence).await
    }

    async fn reimage(&self, spec: &InstanceSpec, fence: Fence) -> Result<(), DriverError> {
        let wanted = Side::of(&spec.image);
        if let Some(held) = self.owner(&spec.key).await? {
            if held != wanted {
                // The image changed kind: the instance moves. The old one goes first, so the
                // two never run at once (they would share the instance's address).
                self.driver(held).destroy(&spec.key, fence).await?;
            }
        }
        self.record(&spec.key, wanted);
        self.driver(wanted).reimage(spec, fence).await
    }

    async fn destroy(&self, key: &InstanceKey, fence: Fence) -> Result<(), DriverError> {
        match self.owner(key).await? {
            Some(side) => self.driver(side).destroy(key, fence).await?,
            // Neither lists it: nothing to remove, but a build may be under way that no list
            // shows yet, and destroy is idempotent, so both are asked.
            None => {
                self.vms.destroy(key, fence).await?;
                self.processes.destroy(key, fence).await?;
            }
        }
        self.owners().remove(key);
        Ok(())
    }

    /// Both drivers' instances. Fails if either list fails: a partial list would make the
    /// other driver's instances look gone.
    async fn list(&self) -> Result<Vec<ObservedInstance>, DriverError> {
        let (vms, processes) = tokio::join!(self.vms.list(), self.processes.list());
        let (vms, processes) = (vms?, processes?);
        let mut owners = self.owners();
        owners.clear();
        owners.extend(vms.iter().map(|o| (o.key.clone(), Side::Vm)));
        owners.extend(processes.iter().map(|o| (o.key.clone(), Side::Process)));
        drop(owners);
        self.listed.store(true, Ordering::Release);
        Ok(vms.into_iter().chain(processes).collect())
    }

    async fn stats(&self, key: &InstanceKey) -> Result<Option<InstanceStats>, DriverError> {
        match self.owner(key).await? {
            Some(side) => self.driver(side).stats(key).await,
            None => Ok(None),
        }
    }

    async fn run_script(&self, key: &InstanceKey, run: &ScriptRun, fence: Fence) -> Result<ScriptOutcome, DriverError> {
        let side = self.owner(key).await?.ok_or_else(|| DriverError::NotFound(key.clone()))?;
        self.driver(side).run_script(key, run, fence).await
    }

    async fn state_files(&self, key: &InstanceKey, fence: Fence) -> Result<Vec<crate::StateFile>, DriverError> {
        let side = self.owner(key).await?.ok_or_else(|| DriverError::NotFound(key.clone()))?;
        self.driver(side).state_files(key, fence).await
    }

    /// Builds a moved instance in the driver of its image's kind (as `ensure`: an instance of
    /// the other kind under the key is refused, not replaced).
    async fn ensure_moved(&self, spec: &InstanceSpec, fence: Fence, dir: &std::path::Path) -> Result<(), DriverError> {
        let side = self.keep_in_place(spec).await?;
        self.record(&spec.key, side);
        self.driver(side).ensure_moved(spec, fence, dir).await
    }

    async fn relocate(&self, spec: &InstanceSpec, from: &str, fence: Fence) -> Result<crate::Relocated, DriverError> {
        self.driver(Side::of(&spec.image)).relocate(spec, from, fence).await
    }

    fn guest_agents_answered(&self) -> Vec<(InstanceKey, ImageSource)> {
        let mut out = self.vms.guest_agents_answered();
        out.extend(self.processes.guest_agents_answered());
        out
    }

    async fn console_log(&self, key: &InstanceKey, max_bytes: usize) -> Result<Option<String>, DriverError> {
        match self.owner(key).await? {
            Some(side) => self.driver(side).console_log(key, max_bytes).await,
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{SimConfig, SimDriver};
    use crate::{Incarnation, ObservedPower, Term};
    use herd_model::{sku::SkuSize, GroupName, InstanceId, ScaleSetName};
    use std::time::Duration;

    fn sim() -> Arc<SimDriver> {
        Arc::new(SimDriver::new(SimConfig { boot_min: Duration::ZERO, boot_max: Duration::ZERO, ..Default::default() }))
    }

    fn key(id: u64) -> InstanceKey {
        InstanceKey { group: GroupName::new("g").unwrap(), set: ScaleSetName::new("s").unwrap(), id: InstanceId(id) }
    }

    fn dir() -> ImageSource {
        ImageSource::Directory { path: "/img".into() }
    }

    fn disk() -> ImageSource {
        ImageSource::Disk { path: "/img.qcow2".into(), format: "qcow2".into() }
    }

    fn kernel() -> ImageSource {
        ImageSource::Kernel { kernel: "/vmlinuz".into(), initrd: None, cmdline: None }
    }

    fn spec(id: u64, image: ImageSource) -> InstanceSpec {
        InstanceSpec::new(key(id), &format!("s{id}"), image, SkuSize { vcpus: 1, memory_mib: 512 }, "127.128.0.1")
    }

    fn run() -> ScriptRun {
        ScriptRun {
            name: "e".into(),
            files: vec![],
            downloads: Default::default(),
            command: "exit 3".into(),
            timeout: Duration::from_secs(1),
            identity: "i".into(),
        }
    }

    fn keys(l: Vec<ObservedInstance>) -> Vec<u64> {
        let mut ids: Vec<u64> = l.into_iter().map(|o| o.key.id.0).collect();
        ids.sort_unstable();
        ids
    }

    #[tokio::test]
    async fn cold_move_calls_reach_the_driver_that_holds_or_will_hold_the_instance() {
        let (vms, procs) = (sim(), sim());
        let d = ByImage::new(vms.clone(), procs.clone());
        d.ensure(&spec(1, disk()), Fence::FIRST).await.unwrap();
        d.ensure(&spec(3, dir()), Fence::FIRST).await.unwrap();
        // Forwarded: the inner driver answers (the simulated one cannot move), not this one.
        for k in [1, 3] {
            match d.state_files(&key(k), Fence::FIRST).await {
                Err(DriverError::Failed(m)) => assert!(m.contains("the sim driver"), "{m}"),
                other => panic!("expected the inner driver's refusal, got {other:?}"),
            }
        }
        assert_eq!(d.state_files(&key(9), Fence::FIRST).await, Err(DriverError::NotFound(key(9))));
        let tmp = std::path::Path::new("/nonexistent");
        match d.ensure_moved(&spec(4, kernel()), Fence::FIRST, tmp).await {
            Err(DriverError::Failed(m)) => assert!(m.contains("the sim driver"), "{m}"),
            other => panic!("expected the inner driver's refusal, got {other:?}"),
        }
        // A moved instance of the other kind than the one under its key is refused, as ensure.
        assert!(d.ensure_moved(&spec(1, dir()), Fence::FIRST, tmp).await.is_err());
        assert_eq!(keys(procs.list().await.unwrap()), [3], "nothing was built beside the VM");
    }

    #[tokio::test]
    async fn each_image_kind_goes_to_its_driver_and_keyed_calls_follow() {
        let (vms, procs) = (sim(), sim());
        let d = ByImage::new(vms.clone(), procs.clone());
        assert_eq!(d.name(), "sim+sim");
        d.ensure(&spec(1, disk()), Fence::FIRST).await.unwrap();
        d.ensure(&spec(2, kernel()), Fence::FIRST).await.unwrap();
        d.ensure(&spec(3, dir()), Fence::FIRST).await.unwrap();
        assert_eq!(keys(vms.list().await.unwrap()), [1, 2], "disk and kernel images are VMs");
        assert_eq!(keys(procs.list().await.unwrap()), [3], "directory images are process instances");
        assert_eq!(keys(d.list().await.unwrap()), [1, 2, 3], "the list is both merged");

        // Key-only calls reach the driver that holds the instance.
        d.run_script(&key(1), &run(), Fence::FIRST).await.unwrap();
        d.run_script(&key(3), &run(), Fence::FIRST).await.unwrap();
        assert_eq!(vms.script_runs(&key(1)).len(), 1);
        assert_eq!(procs.script_runs(&key(3)).len(), 1);
        assert!(vms.script_runs(&key(3)).is_empty() && procs.script_runs(&key(1)).is_empty());
        d.set_power(&key(3), PowerTarget::Stopped, Fence::FIRST).await.unwrap();
        let power = |l: Vec<ObservedInstance>, id| l.into_iter().find(|o| o.key.id.0 == id).map(|o| o.power);
        assert_eq!(power(procs.list().await.unwrap(), 3), Some(ObservedPower::Stopped));
        assert_eq!(power(vms.list().await.unwrap(), 1), Some(ObservedPower::Running), "the VM was not touched");
        d.restart(&key(3), Fence::FIRST).await.unwrap();
        assert_eq!(power(procs.list().await.unwrap(), 3), Some(ObservedPower::Running));
        vms.set_cpu_percent(&key(2), 42.0);
        assert_eq!(d.stats(&key(2)).await.unwrap().and_then(|s| s.cpu_percent), Some(42.0));
        assert!(d.console_log(&key(3), 100).await.unwrap().is_some());
        d.resize(&spec(1, disk()), Fence::FIRST).await.unwrap();

        // Unknown keys: nothing to act on.
        assert_eq!(d.restart(&key(9), Fence::FIRST).await, Err(DriverError::NotFound(key(9))));
        assert_eq!(d.stats(&key(9)).await.unwrap(), None);
        assert_eq!(d.console_log(&key(9), 100).await.unwrap(), None);

        d.destroy(&key(1), Fence::FIRST).await.unwrap();
        d.destroy(&key(3), Fence::FIRST).await.unwrap();
        assert_eq!(keys(vms.list().await.unwrap()), [2]);
        assert!(procs.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_fresh_router_finds_instances_the_drivers_already_hold() {
        let (vms, procs) = (sim(), sim());
        vms.ensure(&spec(1, disk()), Fence::FIRST).await.unwrap();
        procs.ensure(&spec(2, dir()), Fence::FIRST).await.unwrap();
        // A server restart: a new router over drivers that kept their instances, and the first
        // call is a keyed one (no list, no ensure before it).
        let d = ByImage::new(vms.clone(), procs.clone());
        d.set_power(&key(2), PowerTarget::Stopped, Fence::FIRST).await.unwrap();
        d.run_script(&key(1), &run(), Fence::FIRST).await.unwrap();
        assert_eq!(vms.script_runs(&key(1)).len(), 1, "the VM ran the script");
        assert!(procs.script_runs(&key(1)).is_empty());
        let stopped = procs.list().await.unwrap().into_iter().find(|o| o.key == key(2)).map(|o| o.power);
        assert_eq!(stopped, Some(ObservedPower::Stopped), "the process driver stopped its instance");
        assert_eq!(d.owners().get(&key(1)), Some(&Side::Vm), "the miss filled the owner map");
        assert_eq!(d.owners().get(&key(2)), Some(&Side::Process));

        // The map is a cache: an instance that moved behind its back (destroyed in one driver,
        // built in the other) is found again by the next list.
        procs.destroy(&key(2), Fence::FIRST).await.unwrap();
        vms.ensure(&spec(2, disk()), Fence::FIRST).await.unwrap();
        d.list().await.unwrap();
        d.restart(&key(2), Fence::FIRST).await.unwrap();
        assert_eq!(d.owners().get(&key(2)), Some(&Side::Vm));
    }

    #[tokio::test]
    async fn destroying_an_unknown_key_asks_both_and_succeeds() {
        let (vms, procs) = (sim(), sim());
        let d = ByImage::new(vms.clone(), procs.clone());
        let (v0, p0) = (vms.calls(), procs.calls());
        d.destroy(&key(7), Fence::FIRST).await.unwrap();
        assert_eq!((vms.calls() - v0, procs.calls() - p0), (1, 1), "both drivers were asked");
        // An injected failure in either is reported, not swallowed.
        procs.fail_call(0);
        assert!(d.destroy(&key(7), Fence::FIRST).await.is_err());
        d.destroy(&key(7), Fence::FIRST).await.unwrap();
    }

    #[tokio::test]
    async fn fences_pass_through_to_the_owning_driver() {
        let (vms, procs) = (sim(), sim());
        let d = ByImage::new(vms.clone(), procs.clone());
        let f = |t, i| Fence::new(Term(t), Incarnation(i));
        d.ensure(&spec(1, dir()), f(2, 3)).await.unwrap();
        assert_eq!(procs.fence_of(&key(1)), Some(f(2, 3)), "the owning driver recorded the fence");
        assert_eq!(vms.fence_of(&key(1)), None);
        let e = d.restart(&key(1), f(1, 3)).await.unwrap_err();
        assert!(matches!(&e, DriverError::Fenced(x) if x.seen == f(2, 3) && x.call == f(1, 3)), "{e:?}");
        let e = d.destroy(&key(1), f(2, 2)).await.unwrap_err();
        assert!(matches!(e, DriverError::Fenced(_)), "{e:?}");
        assert_eq!(keys(d.list().await.unwrap()), [1], "refused calls changed nothing");
        d.set_power(&key(1), PowerTarget::Stopped, f(3, 3)).await.unwrap();
        assert_eq!(procs.fence_of(&key(1)), Some(f(3, 3)), "a higher fence is recorded");
        d.destroy(&key(1), Fence::sweep(Term(3))).await.unwrap();
        assert!(d.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_image_of_the_other_kind_moves_only_by_reimage() {
        let (vms, procs) = (sim(), sim());
        let d = ByImage::new(vms.clone(), procs.clone());
        d.ensure(&spec(1, dir()), Fence::FIRST).await.unwrap();
        let e = d.ensure(&spec(1, disk()), Fence::FIRST).await.unwrap_err();
        assert!(matches!(e, DriverError::InvalidSpec { .. }) && !e.retryable(), "{e:?}");
        assert!(e.to_string().contains("runs as a process instance") && e.to_string().contains("reimage"), "{e}");
        assert!(matches!(d.resize(&spec(1, disk()), Fence::FIRST).await, Err(DriverError::InvalidSpec { .. })));
        assert!(vms.list().await.unwrap().is_empty(), "no second instance under the same key");
        d.reimage(&spec(1, disk()), Fence::FIRST).await.unwrap();
        assert!(procs.list().await.unwrap().is_empty(), "the process instance is gone");
        assert_eq!(keys(vms.list().await.unwrap()), [1], "and the VM took its place");
        d.restart(&key(1), Fence::FIRST).await.unwrap();
    }
}
