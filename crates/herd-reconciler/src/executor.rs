//! The executor: applies plans in three phases, and the loop that runs passes.
//!
//! ```text
//!   read desired + observed ──▶ plan() ──▶ A: persist intents (one txn) ──▶ B: driver calls
//!          ▲                                                                     │
//!          └──────────── periodic tick / wake signal ◀── C: persist results ◀────┘
//! ```
//! A crash after A leaves intents that the next pass repeats (driver calls are idempotent);
//! a crash after B leaves results that the next pass re-observes through `Driver::list`.
//! Intents over the store's transaction limit commit in ordered chunks
//! ([`Writes::commit_intents`]): a failure between chunks is the same as a crash after part of A.
//! Every store call runs on tokio's blocking pool ([`State::run`]), never on the async worker
//! that plans and drives.
//! [`Faults`] injects exactly those crashes in tests.

use crate::extensions::{ExtensionConfig, ExtensionRunner};
use crate::plan::{plan, Limits, NewInstance, SetInput, Step};
use crate::repair::{plan_repairs, RepairInput, RepairStep};
use crate::rolling::{plan_rolling, Health, RollingInput, RollingStep};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use herd_driver::{Driver, DriverError, Fence, Incarnation, InstanceSpec, LeaderTerm, ObservedPower};
use herd_model::network::{LoadBalancer, VirtualNetwork};
use herd_model::scale_set::ScaleSetModel;
use herd_model::{
    activity::{ActivityEvent, ActivityStatus, Actor},
    clock::Clock,
    group::GroupProvisioningState,
    image::{self, Image},
    instance::{Event, InstanceGoal, InstanceRecord, InstanceState, PendingAction},
    scale_set::{ScaleSetStatus, StoredScaleSet, Suspension},
    sku::SkuTable,
    InstanceId, InstanceKey,
};
use herd_state::intents::Writes;
use herd_state::keys::{CounterKey, GroupKey, HealthKey, ImageKey, InstanceRecordKey, ModelHistoryKey, SetKey};
use herd_state::records::Quarantined;
use herd_state::seal::Sealer;
use herd_state::transitions::{apply_event, InvalidTransitions};
use herd_state::{Expected, Records, State, StateError, Store, Versioned};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// A driver step and how it went.
type StepResult = (Step, Result<(), DriverError>);

/// A driver call to make in Phase B: the set it belongs to (index), the step, the instance, the
/// fence it carries and the spec (or why none could be made).
type DriverCall = (usize, Step, InstanceKey, Fence, Result<InstanceSpec, DriverError>);

/// Tunables of the reconcile loop.
#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    pub limits: Limits,
    /// Driver calls in flight at once.
    pub driver_concurrency: usize,
    /// Pause between passes when nothing is changing (crash detection still happens).
    pub idle_interval: Duration,
    /// Pause between passes while instances are booting or stopping.
    pub busy_interval: Duration,
    pub skus: SkuTable,
    /// Which /16 of 127.128.0.0/9 this server's reach addresses start in (0–127).
    pub address_block: u8,
    /// Bridged networking: instances with a subnet are reached on their private IP, through a
    /// bridge per subnet, instead of on a host-local loopback address.
    pub bridged: bool,
    /// The driver runs real VMs (qemu): scripts go through the guest agent, so images without
    /// one cannot run extensions in place (extension changes reimage them), and each guest's
    /// seed gets the admin credentials, data disks and forwarded ports.
    pub vm_driver: bool,
    /// Guest ports forwarded to every instance besides the model's LB and NAT ports.
    pub extra_ports: Vec<u16>,
    /// The hosts whose capacity instances reserve; empty = unlimited.
    pub hosts: Vec<herd_model::spot::HostSpec>,
    /// The spot price of a SKU now (price evictions, spotRestorePolicy).
    pub spot_price: crate::capacity::SpotPrice,
    /// Each instance's metadata endpoint port (on its reach address); None = no endpoint.
    pub metadata_port: Option<u16>,
    /// When unrecorded instances are destroyed (see [`crate::orphans`]).
    pub orphans: crate::orphans::OrphanPolicy,
    /// The leadership term every driver call carries in its fence (with the instance record's
    /// incarnation). The server owns the one [`LeaderTerm`]; leader election raises it.
    pub term: LeaderTerm,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            driver_concurrency: 64,
            idle_interval: Duration::from_secs(2),
            busy_interval: Duration::from_millis(50),
            skus: SkuTable::default(),
            address_block: 0,
            bridged: false,
            vm_driver: false,
            extra_ports: vec![80],
            hosts: vec![],
            spot_price: crate::capacity::SpotPrice::none(),
            metadata_port: None,
            orphans: Default::default(),
            term: LeaderTerm::single_server(),
        }
    }
}

/// Where a test may make a pass crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// Intents are persisted, no driver call made yet.
    AfterIntent,
    /// Driver calls made, results not persisted yet.
    AfterDriver,
}

/// Fault injection: makes the `n`th fault point reached fail the pass, as a crash would.
#[derive(Debug, Default)]
pub struct Faults {
    hits: AtomicU64,
    fail_at: Mutex<BTreeSet<u64>>,
}

impl Faults {
    pub fn fail_at(&self, n: u64) {
        self.fail_at.lock().unwrap_or_else(|e| e.into_inner()).insert(n);
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    fn check(&self, point: FaultPoint) -> Result<(), ReconcileError> {
        let n = self.hits.fetch_add(1, Ordering::SeqCst);
        if self.fail_at.lock().unwrap_or_else(|e| e.into_inner()).remove(&n) {
            return Err(ReconcileError::Injected(point));
        }
        Ok(())
    }
}

/// Why a pass failed. The next pass starts over from the store and the driver.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StateError),
    #[error("driver: {0}")]
    Driver(#[from] DriverError),
    #[error("injected fault at {0:?}")]
    Injected(FaultPoint),
}

impl ReconcileError {
    /// Whether the next pass may succeed with nothing changed: a driver error by its own kind
    /// ([`DriverError::retryable`]); a store error is retried by the next pass (which re-reads
    /// everything); an injected crash always is.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Store(_) => true,
            Self::Driver(e) => e.retryable(),
            Self::Injected(_) => true,
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Steps applied.
    pub steps: usize,
    /// Some instance is in a transitional state, so the next pass should come soon.
    pub waiting: bool,
}

/// The server-wide counter that hands out host-local reach addresses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AddressCounter {
    next: u64,
}

/// Private IPs: which subnets exist and which of their addresses instances hold. Addresses are
/// handed out lowest first from the 5th address of the subnet (Azure reserves the first four
/// and the last), and return to the pool when the instance record is removed.
#[derive(Debug, Default)]
pub struct Ipam {
    subnets: BTreeMap<String, herd_model::cidr::Cidr>,
    used: BTreeMap<String, BTreeSet<Ipv4Addr>>,
}

impl Ipam {
    /// Builds the allocator from the virtual networks and every instance record.
    pub fn new<'a>(
        vnets: &[herd_model::network::VirtualNetwork],
        records: impl Iterator<Item = (&'a StoredScaleSet, &'a InstanceRecord)>,
    ) -> Self {
        let mut ipam = Ipam::default();
        for v in vnets {
            for s in &v.subnets {
                ipam.subnets.insert(s.id.to_ascii_lowercase(), s.address_prefix);
            }
        }
        for (set, r) in records {
            if let (Some(subnet), Some(ip)) = (subnet_of(set), r.private_ip.as_deref().and_then(|a| a.parse().ok())) {
                ipam.used.entry(subnet).or_default().insert(ip);
            }
        }
        ipam
    }

    /// The lowest free address of `subnet`, marked used; None if the subnet is unknown or full.
    pub fn allocate(&mut self, subnet: &str) -> Option<Ipv4Addr> {
        let cidr = *self.subnets.get(subnet)?;
        let used = self.used.entry(subnet.to_string()).or_default();
        let ip = (4..cidr.size().saturating_sub(1)).filter_map(|n| cidr.nth(n)).find(|ip| !used.contains(ip))?;
        used.insert(ip);
        Some(ip)
    }
}

/// The subnet id (lower case) a set's instances live in, if it has one.
fn subnet_of(set: &StoredScaleSet) -> Option<String> {
    let p = set.model.virtual_machine_profile.network_profile.as_ref()?;
    p.primary()?.subnet.as_ref().map(|s| s.id.to_ascii_lowercase())
}

/// The n-th host-local reach address of a server whose range starts at the /16 `block`
/// (0–127) of 127.128.0.0/9, skipping `.0` and `.255`. Servers on one host use different
/// blocks (the server derives its block from its data dir), so their instances never collide.
pub fn host_local_address(block: u8, n: u64) -> Ipv4Addr {
    let base = u32::from(Ipv4Addr::new(127, 128, 0, 0));
    // 254 usable addresses per /24; the 2^23 addresses of the /9 wrap around.
    let subnet = (u64::from(block % 128) * 256 + n / 254) % (128 * 256);
    let host = (n % 254) as u32 + 1;
    Ipv4Addr::from(base + subnet as u32 * 256 + host)
}

/// Runs passes against a store and a driver.
pub struct Reconciler {
    state: State,
    driver: Arc<dyn Driver>,
    clock: Arc<dyn Clock>,
    config: ReconcilerConfig,
    wake: Arc<Notify>,
    faults: Option<Arc<Faults>>,
    extensions: Arc<ExtensionRunner>,
    sealer: Arc<Sealer>,
    health: Option<Arc<herd_model::health::HealthBoard>>,
    orphan_guard: crate::orphans::OrphanGuard,
    /// Lifecycle events refused as invalid (logged and counted, served on `/metrics`).
    transitions: InvalidTransitions,
}

struct Working {
    record: InstanceRecord,
    revision: Option<u64>,
    dirty: bool,
}

struct SetWork<'a> {
    set: &'a StoredScaleSet,
    set_revision: u64,
    status: ScaleSetStatus,
    status_revision: Option<u64>,
    status_dirty: bool,
    records: BTreeMap<InstanceId, Working>,
    steps: Vec<Step>,
    log: Vec<(String, String)>,
    transitions: &'a InvalidTransitions,
    /// The model a rollback returns to, read before Phase A (None: not on record).
    rollback_model: Option<ScaleSetModel>,
    /// The set's model history, read before Phase A when the set is removed.
    history: Vec<ModelHistoryKey>,
}

/// What a pass reads first, in one call on the blocking pool.
struct Snapshot {
    sets: Vec<Versioned<StoredScaleSet>>,
    /// Each set's status, by set key.
    statuses: BTreeMap<String, Versioned<ScaleSetStatus>>,
    /// Each set's instance records, by set key (a set that is gone may still have some).
    by_set: BTreeMap<String, Vec<Versioned<InstanceRecord>>>,
    /// Sets with a record that cannot be decoded are left alone (and shown Failed); their
    /// instances are not orphans. See `crate::orphans`.
    quarantined: BTreeMap<String, Vec<Quarantined>>,
}

impl Snapshot {
    fn read(store: &dyn Store) -> Result<Self, StateError> {
        let sets = store.scale_sets()?;
        let statuses = store.scale_set_statuses()?.into_iter().map(|o| (o.key.clone(), o)).collect();
        let mut by_set: BTreeMap<String, Vec<Versioned<InstanceRecord>>> = BTreeMap::new();
        for o in store.instances()? {
            let set_key = o.key.rsplit_once('/').map(|(s, _)| s.to_string()).unwrap_or_default();
            by_set.entry(set_key).or_default().push(o);
        }
        // After the lists: a record they could not decode is in quarantine now.
        let quarantined = crate::orphans::quarantined_sets(store);
        Ok(Self { sets, statuses, by_set, quarantined })
    }
}

/// What Phase A reads besides the snapshot (see [`Reconciler::prefetch`]).
struct Prefetched {
    address: Option<Versioned<AddressCounter>>,
    vnets: Vec<VirtualNetwork>,
    /// Sealed secrets by set key, for the sets whose instances a VM driver seeds.
    secrets: BTreeMap<String, Result<Option<serde_json::Value>, String>>,
}

/// What an instance spec is built from besides the set and the record.
struct SpecInputs<'a> {
    images: &'a [Image],
    lbs: &'a [LoadBalancer],
    secrets: &'a BTreeMap<String, Result<Option<serde_json::Value>, String>>,
}

impl Reconciler {
    /// `store`: an `Arc<dyn Store>` (or any store handle) converts.
    pub fn new(
        store: impl Into<State>,
        driver: Arc<dyn Driver>,
        clock: Arc<dyn Clock>,
        config: ReconcilerConfig,
    ) -> Self {
        let state = store.into();
        let wake = Arc::new(Notify::new());
        let sealer = Arc::new(Sealer::ephemeral());
        let extensions = Arc::new(ExtensionRunner::new(
            state.clone(),
            driver.clone(),
            clock.clone(),
            sealer.clone(),
            wake.clone(),
            ExtensionConfig::default(),
            config.term.clone(),
        ));
        Self {
            state,
            driver,
            clock,
            config,
            wake,
            faults: None,
            extensions,
            sealer,
            health: None,
            orphan_guard: Default::default(),
            transitions: InvalidTransitions::default(),
        }
    }

    /// The count of lifecycle events this reconciler refused as invalid (a shared handle, for
    /// `/metrics`).
    pub fn invalid_transitions(&self) -> InvalidTransitions {
        self.transitions.clone()
    }

    /// Reads instance health (load-balancer probes) from `board`, for rolling upgrades.
    pub fn with_health(mut self, board: Arc<herd_model::health::HealthBoard>) -> Self {
        self.health = Some(board);
        self
    }

    /// This set's instance health as the probes see it.
    fn health_of(&self, set: &StoredScaleSet, records: &[InstanceRecord]) -> BTreeMap<InstanceId, Health> {
        let Some(board) = &self.health else { return BTreeMap::new() };
        records
            .iter()
            .filter_map(|r| {
                let h = board.get(&HealthKey::of(set, r.instance_id).to_string())?;
                // Health from an earlier boot (the board lags a pass behind) says nothing yet.
                let this_boot = h.boot == r.state_since.timestamp_millis();
                let h = if this_boot { h.health } else { Health::Unknown };
                Some((r.instance_id, h))
            })
            .collect()
    }

    /// Opens secrets (admin passwords, protected settings) with the server's sealer, and runs
    /// extensions with `config`.
    pub fn with_secrets(mut self, sealer: Arc<Sealer>, config: ExtensionConfig) -> Self {
        self.sealer = sealer.clone();
        self.extensions = Arc::new(ExtensionRunner::new(
            self.state.clone(),
            self.driver.clone(),
            self.clock.clone(),
            sealer,
            self.wake.clone(),
            config,
            self.config.term.clone(),
        ));
        self
    }

    pub fn with_faults(mut self, faults: Arc<Faults>) -> Self {
        self.faults = Some(faults);
        self
    }

    /// The handle API handlers use to start a pass now.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Its timing settings (the controller runtime reads them).
    pub fn config(&self) -> &ReconcilerConfig {
        &self.config
    }

    fn fault(&self, p: FaultPoint) -> Result<(), ReconcileError> {
        self.faults.as_ref().map_or(Ok(()), |f| f.check(p))
    }

    /// One pass: observe, plan, and apply. Every store call runs on the blocking pool
    /// ([`State::run`]); planning and driver calls run here.
    pub async fn pass(&self) -> Result<PassReport, ReconcileError> {
        let t_start = std::time::Instant::now();
        let now = self.clock.now();
        let Snapshot { sets, statuses, mut by_set, quarantined } = self.state.run(Snapshot::read).await?;
        let t_read = t_start.elapsed();
        let observed = self.driver.list().await?;
        let t_list = t_start.elapsed();
        let mut observed_by_set: BTreeMap<String, BTreeMap<InstanceId, ObservedPower>> = BTreeMap::new();
        let mut unrecorded = Vec::new();
        for o in observed {
            let set_key = SetKey::of_instance(&o.key).to_string();
            if quarantined.contains_key(&set_key) {
                continue;
            }
            let known = by_set.get(&set_key).is_some_and(|v| v.iter().any(|r| r.value.instance_id == o.key.id));
            if known {
                observed_by_set.entry(set_key).or_default().insert(o.key.id, o.power);
            } else {
                unrecorded.push(o.key);
            }
        }
        let mut orphans = self.ready_orphans(now, unrecorded).await;

        let answered = self.driver.guest_agents_answered();
        let (images, lbs) = self
            .state
            .run(move |s| {
                let mut images = s.images()?;
                if record_guest_agents(s, now, &images, &answered)? {
                    images = s.images()?;
                }
                Ok((images.into_iter().map(|o| o.value).collect::<Vec<_>>(), s.load_balancers()?))
            })
            .await?;
        let lbs: Vec<LoadBalancer> = lbs.into_iter().map(|o| o.value).collect();
        let mut waiting = self.extensions.busy();
        let mut works = Vec::new();
        for set in &sets {
            if quarantined.contains_key(&set.key) {
                by_set.remove(&set.key);
                continue;
            }
            let status = statuses.get(&set.key);
            let records = by_set.remove(&set.key).unwrap_or_default();
            let observed = observed_by_set.get(&set.key);
            let (work, busy) = self.plan_set(set, status, records, observed, &images, &lbs, now);
            waiting |= busy;
            works.push(work);
        }
        self.remove_strays_and_groups(by_set, &quarantined, &sets, &mut orphans, now).await?;

        // Capacity across sets: placement on hosts, Spot evictions and restores.
        {
            let mut parts: Vec<crate::capacity::SetSteps<'_>> = works
                .iter_mut()
                .map(|w| crate::capacity::SetSteps {
                    set: w.set,
                    records: w.records.values().map(|x| &x.record).collect(),
                    steps: &mut w.steps,
                    note: w.status.capacity_note.as_ref().map(|n| (n.message.clone(), n.waiting)),
                })
                .collect();
            crate::capacity::arbitrate(&mut parts, &self.config.hosts, &self.config.skus, &self.config.spot_price, now);
        }

        let total: usize = works.iter().map(|w| w.steps.len()).sum::<usize>() + orphans.len();
        if total == 0 {
            return Ok(PassReport { steps: 0, waiting });
        }

        // Phase A: intents.
        let (calls, extension_runs) = self.intents(&mut works, now, &images, &lbs).await?;
        let n_calls = calls.len();
        let t_intent = t_start.elapsed();
        self.fault(FaultPoint::AfterIntent)?;
        for key in extension_runs {
            self.extensions.start(key);
        }

        // Phase B: driver calls.
        let (results, orphan_results) = self.driver_calls(calls, orphans).await;
        let t_driver = t_start.elapsed();
        self.fault(FaultPoint::AfterDriver)?;

        // Phase C: results, re-read and compare-and-swap so a concurrent user write is kept.
        let mut per_set: BTreeMap<usize, (StoredScaleSet, Vec<StepResult>)> = BTreeMap::new();
        for (wi, step, r) in results {
            per_set.entry(wi).or_insert_with(|| (works[wi].set.clone(), vec![])).1.push((step, r));
        }
        let (transitions, limits) = (self.transitions.clone(), self.config.limits.clone());
        self.state
            .run(move |s| {
                persist_results(s, &transitions, &limits, per_set.into_values().collect(), &orphan_results, now)
            })
            .await?;
        tracing::debug!(
            steps = total,
            driver_calls = n_calls,
            read_ms = t_read.as_millis() as u64,
            list_ms = (t_list - t_read).as_millis() as u64,
            intent_ms = (t_intent - t_list).as_millis() as u64,
            driver_ms = (t_driver - t_intent).as_millis() as u64,
            results_ms = (t_start.elapsed() - t_driver).as_millis() as u64,
            "reconcile pass"
        );
        Ok(PassReport { steps: total, waiting: true })
    }

    /// The unrecorded instances whose time has come (see [`crate::orphans`]). Without the list
    /// of kept instances, none is.
    async fn ready_orphans(&self, now: DateTime<Utc>, unrecorded: Vec<InstanceKey>) -> Vec<InstanceKey> {
        if unrecorded.is_empty() {
            return self.orphan_guard.ready(now, vec![], &Default::default(), self.config.orphans);
        }
        match self.state.run(|s| s.counter::<crate::orphans::Unmanaged>(CounterKey::UnmanagedInstances)).await {
            Ok(u) => {
                self.orphan_guard.ready(now, unrecorded, &u.map(|o| o.value).unwrap_or_default(), self.config.orphans)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the unmanaged-instance list; no orphan is destroyed");
                vec![]
            }
        }
    }

    /// Plans one set: its steps (scale, rolling upgrade, OS image, repairs) and its working
    /// copies. Also returns whether something in it is under way.
    #[allow(clippy::too_many_arguments)]
    fn plan_set<'a>(
        &'a self,
        set: &'a Versioned<StoredScaleSet>,
        status: Option<&Versioned<ScaleSetStatus>>,
        records: Vec<Versioned<InstanceRecord>>,
        observed: Option<&BTreeMap<InstanceId, ObservedPower>>,
        images: &[Image],
        lbs: &[LoadBalancer],
        now: DateTime<Utc>,
    ) -> (SetWork<'a>, bool) {
        let empty_obs = BTreeMap::new();
        let (status, status_revision) =
            status.map_or((ScaleSetStatus::default(), None), |o| (o.value.clone(), Some(o.revision)));
        let values: Vec<InstanceRecord> = records.iter().map(|o| o.value.clone()).collect();
        let mut waiting = values
            .iter()
            .any(|r| r.state.is_transitional() || r.state == InstanceState::Failed || r.draining_since.is_some());
        let in_place_extensions = self.in_place_extensions(&set.value, images);
        let mut steps = plan(&SetInput {
            in_place_extensions,
            set: &set.value,
            set_revision: set.revision,
            status: &status,
            instances: &values,
            observed: observed.unwrap_or(&empty_obs),
            now,
            limits: &self.config.limits,
        })
        .steps;
        let rolling_relevant = set.value.model.upgrade_policy.mode == herd_model::scale_set::UpgradeMode::Rolling
            || status.upgrade_request.is_some()
            || status.rolling_upgrade.as_ref().is_some_and(|u| u.state.is_active());
        let repairs_on =
            set.value.model.automatic_repairs_policy.as_ref().is_some_and(|p| p.enabled) && !set.value.deleting;
        // Health and the health source, read once for both planners that need them.
        let (health, has_health_source) = if (rolling_relevant && !set.value.deleting) || repairs_on {
            (self.health_of(&set.value, &values), herd_model::network::has_health_source(&set.value.model, lbs))
        } else {
            (BTreeMap::new(), false)
        };
        if rolling_relevant && !set.value.deleting {
            let rolling = plan_rolling(&RollingInput {
                set: &set.value,
                upgrade: status.rolling_upgrade.as_ref(),
                request: status.upgrade_request.as_ref(),
                instances: &values,
                health: &health,
                has_health_source,
                in_place_extensions,
                now,
                batch_timeout: self.config.limits.batch_timeout,
                health_grace: self.config.limits.health_grace,
            });
            waiting |= status.rolling_upgrade.as_ref().is_some_and(|u| u.state.is_active());
            steps.extend(rolling.into_iter().map(Step::Rolling));
        }
        if !set.value.deleting && status.upgrade_request.is_none() {
            let latest = set
                .value
                .model
                .virtual_machine_profile
                .storage_profile
                .image_reference
                .urn()
                .ok()
                .and_then(|u| image::resolve(images, &u).map(|i| i.version.clone()));
            if let Some(st) =
                crate::rolling::plan_os_image(&set.value, status.os_image_version.as_deref(), latest.as_deref())
            {
                steps.push(Step::Rolling(st));
            }
        }
        if repairs_on {
            let repairs = plan_repairs(&RepairInput {
                set: &set.value,
                state: &status.repairs,
                instances: &values,
                health: &health,
                has_health_source,
                upgrading: status.rolling_upgrade.as_ref().is_some_and(|u| u.state.is_active()),
                now,
                max_attempts: self.config.limits.repair_max_attempts,
            });
            steps.extend(repairs.into_iter().map(Step::Repair));
        }
        // A run under way is not a step: the runner wakes the loop when it is done.
        steps.retain(|s| match s {
            Step::RunExtensions(id) => !self.extensions.is_running(&InstanceKey {
                group: set.value.group.clone(),
                set: set.value.name.clone(),
                id: *id,
            }),
            _ => true,
        });
        let records = records
            .into_iter()
            .map(|o| (o.value.instance_id, Working { record: o.value, revision: Some(o.revision), dirty: false }))
            .collect();
        let work = SetWork {
            set: &set.value,
            set_revision: set.revision,
            status,
            status_revision,
            status_dirty: status_revision.is_none(),
            records,
            steps,
            log: vec![],
            transitions: &self.transitions,
            rollback_model: None,
            history: vec![],
        };
        (work, waiting)
    }

    /// Removes instance records whose set is gone (a crash mid-delete), adding their instances
    /// to `orphans`, and resource groups being deleted whose last set is gone.
    async fn remove_strays_and_groups(
        &self,
        strays: BTreeMap<String, Vec<Versioned<InstanceRecord>>>,
        quarantined: &BTreeMap<String, Vec<Quarantined>>,
        sets: &[Versioned<StoredScaleSet>],
        orphans: &mut Vec<InstanceKey>,
        now: DateTime<Utc>,
    ) -> Result<(), ReconcileError> {
        let mut removals = Vec::new();
        for (set_key, stray) in strays {
            if quarantined.contains_key(&set_key) {
                continue; // the set's record is quarantined, not gone
            }
            for o in stray {
                if let Some(k) = parse_instance_key(&set_key, o.value.instance_id) {
                    orphans.push(k);
                }
                match o.key.parse::<InstanceRecordKey>() {
                    Ok(k) => removals.push((k, o.revision)),
                    Err(e) => tracing::warn!(error = %e, "a stray instance record has a malformed key; left alone"),
                }
            }
        }
        let groups_with_sets: BTreeSet<String> = sets.iter().map(|s| s.value.group.to_string()).collect();
        self.state
            .run(move |s| {
                for (k, revision) in removals {
                    let mut w = Writes::new();
                    w.delete_instance(&k, Expected::Revision(revision));
                    w.commit(s)?;
                }
                // A resource group being deleted goes once its last scale set is gone.
                for g in s.groups()? {
                    let has_sets = groups_with_sets.contains(&g.value.name);
                    if g.value.provisioning_state == GroupProvisioningState::Deleting && !has_sets {
                        let mut w = Writes::new();
                        w.remove_group(&GroupKey::new(g.key.clone()), Expected::Revision(g.revision));
                        w.activity(event(
                            now,
                            &g.value.name,
                            "",
                            "DeleteResourceGroup",
                            ActivityStatus::Succeeded,
                            "resource group deleted".into(),
                        ));
                        w.commit(s)?;
                    }
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Phase A: applies every step's intent to the working copies and commits them (with the
    /// address counter) before any driver call. Returns the driver calls to make and the
    /// extension runs to start.
    async fn intents(
        &self,
        works: &mut [SetWork<'_>],
        now: DateTime<Utc>,
        images: &[Image],
        lbs: &[LoadBalancer],
    ) -> Result<(Vec<DriverCall>, Vec<InstanceKey>), ReconcileError> {
        let pre = self.prefetch(works).await?;
        let mut ops = Writes::new();
        let mut next_addr = pre.address.as_ref().map_or(0, |o| o.value.next);
        let addr_before = next_addr;
        let mut calls: Vec<DriverCall> = Vec::new();
        let mut extension_runs = Vec::new();
        let mut ipam =
            Ipam::new(&pre.vnets, works.iter().flat_map(|w| w.records.values().map(move |r| (w.set, &r.record))));
        let ctx = SpecInputs { images, lbs, secrets: &pre.secrets };
        for (wi, w) in works.iter_mut().enumerate() {
            let steps = std::mem::take(&mut w.steps);
            for step in &steps {
                self.intent(w, step, now, &mut next_addr, &mut ipam, &mut ops);
            }
            for step in &steps {
                if let Step::RunExtensions(id) = step {
                    extension_runs.push(InstanceKey { group: w.set.group.clone(), set: w.set.name.clone(), id: *id });
                }
            }
            for step in steps.iter().filter(|s| s.calls_driver()) {
                let Some(id) = step.instance() else { continue };
                let Some(r) = w.records.get(&id) else { continue };
                let key = InstanceKey { group: w.set.group.clone(), set: w.set.name.clone(), id };
                let fence = self.config.term.fence(Incarnation(r.record.incarnation));
                calls.push((wi, step.clone(), key, fence, self.spec(w.set, &r.record, &ctx, &ipam)));
            }
            // Creates also need an ensure call in this pass.
            for step in &steps {
                if let Step::Create(new) = step {
                    for n in new {
                        let Some(r) = w.records.get(&n.id) else { continue };
                        let key = InstanceKey { group: w.set.group.clone(), set: w.set.name.clone(), id: n.id };
                        let fence = self.config.term.fence(Incarnation(r.record.incarnation));
                        calls.push((wi, Step::Ensure(n.id), key, fence, self.spec(w.set, &r.record, &ctx, &ipam)));
                    }
                }
            }
            if steps.contains(&Step::RemoveSet) {
                for h in std::mem::take(&mut w.history) {
                    ops.forget_model(&h);
                }
            }
            w.steps = steps;
            collect_writes(w, &mut ops, now)?;
        }
        if next_addr != addr_before {
            let expected = pre.address.as_ref().map_or(Expected::Absent, |o| Expected::Revision(o.revision));
            ops.put_counter(CounterKey::HostlocalAddress, &AddressCounter { next: next_addr }, expected)?;
        }
        if !ops.is_empty() {
            self.state.run(move |s| ops.commit_intents(s)).await?;
        }
        Ok((calls, extension_runs))
    }

    /// What Phase A reads besides the snapshot, in one call on the blocking pool: the address
    /// counter, the virtual networks, the sealed secrets of sets that will make driver calls
    /// (VM drivers seed them), the model a rollback returns to, and the model history of sets
    /// being removed. The last two are put on their set's work.
    async fn prefetch(&self, works: &mut [SetWork<'_>]) -> Result<Prefetched, ReconcileError> {
        let vm_driver = self.config.vm_driver;
        let wanted: Vec<(SetKey, bool, Option<u64>, bool)> = works
            .iter()
            .map(|w| {
                let rollback = w.steps.iter().any(|s| matches!(s, Step::Rolling(RollingStep::Rollback { .. })));
                (
                    SetKey::of(w.set),
                    vm_driver && !w.steps.is_empty(),
                    w.status.rolling_upgrade.as_ref().filter(|_| rollback).map(|u| u.from_generation),
                    w.steps.contains(&Step::RemoveSet),
                )
            })
            .collect();
        let (pre, per_set) = self
            .state
            .run(move |s| {
                let mut pre = Prefetched {
                    address: s.counter(CounterKey::HostlocalAddress)?,
                    vnets: s.virtual_networks()?.into_iter().map(|o| o.value).collect(),
                    secrets: BTreeMap::new(),
                };
                let mut per_set = Vec::new();
                for (key, secrets, rollback, removed) in wanted {
                    if secrets {
                        pre.secrets.insert(key.to_string(), s.sealed_set_secrets(&key).map_err(|e| e.to_string()));
                    }
                    // A model not on record (or not readable) cannot be rolled back to.
                    let model = rollback.and_then(|g| s.model_at(&key.history(g)).ok().flatten()).map(|o| o.value);
                    let history = if removed { s.model_history_keys(&key)? } else { vec![] };
                    per_set.push((model, history));
                }
                Ok((pre, per_set))
            })
            .await?;
        for (w, (model, history)) in works.iter_mut().zip(per_set) {
            w.rollback_model = model;
            w.history = history;
        }
        Ok(pre)
    }

    /// Phase B: the driver calls, and the destroys of orphans, `driver_concurrency` at a time.
    async fn driver_calls(
        &self,
        calls: Vec<DriverCall>,
        orphans: Vec<InstanceKey>,
    ) -> (Vec<(usize, Step, Result<(), DriverError>)>, Vec<(InstanceKey, Result<(), DriverError>)>) {
        let driver = self.driver.clone();
        let results = futures::stream::iter(calls)
            .map(|(wi, step, key, fence, spec)| {
                let driver = driver.clone();
                async move {
                    let r = call(&*driver, &step, &key, fence, spec).await;
                    (wi, step, r)
                }
            })
            .buffer_unordered(self.config.driver_concurrency.max(1))
            .collect()
            .await;
        // An orphan has no record, hence no incarnation: its destroy is fenced by the term only.
        let sweep = Fence::sweep(self.config.term.current());
        let orphan_results = futures::stream::iter(orphans)
            .map(|k| {
                let driver = driver.clone();
                async move {
                    let r = driver.destroy(&k, sweep).await;
                    (k, r)
                }
            })
            .buffer_unordered(self.config.driver_concurrency.max(1))
            .collect()
            .await;
        (results, orphan_results)
    }

    fn spec(
        &self,
        set: &StoredScaleSet,
        r: &InstanceRecord,
        inputs: &SpecInputs<'_>,
        ipam: &Ipam,
    ) -> Result<InstanceSpec, DriverError> {
        let key = InstanceKey { group: set.group.clone(), set: set.name.clone(), id: r.instance_id };
        // What the model itself gets wrong fails the same way every time: permanent.
        let invalid = |reason: String| DriverError::InvalidSpec { key: key.clone(), reason };
        let urn = set
            .model
            .virtual_machine_profile
            .storage_profile
            .image_reference
            .urn()
            .map_err(|e| invalid(e.to_string()))?;
        let img =
            image::resolve(inputs.images, &urn).ok_or_else(|| invalid(format!("image {urn} is not in the gallery")))?;
        let size = self
            .config
            .skus
            .lookup(&set.model.sku.name)
            .map(|(_, s)| s)
            .ok_or_else(|| invalid(format!("unknown SKU {}", set.model.sku.name)))?;
        let os = &set.model.virtual_machine_profile.os_profile;
        // Reading and opening the secrets can fail for a moment (the store): not classified.
        let guest = if self.config.vm_driver {
            self.guest_setup(set, img, inputs).map_err(DriverError::Failed)?
        } else {
            Default::default()
        };
        Ok(InstanceSpec {
            key,
            computer_name: r.computer_name.clone(),
            image: img.source.clone(),
            size,
            reach_address: r.reach_address.clone(),
            model_generation: set.model_generation,
            admin_username: os.admin_username.clone(),
            custom_data: os.custom_data.clone(),
            metadata: Default::default(),
            metadata_endpoint: self.config.metadata_port.and_then(|port| {
                r.reach_address.parse::<std::net::IpAddr>().ok().map(|ip| std::net::SocketAddr::new(ip, port))
            }),
            network: self.attachment(set, r, ipam),
            guest,
        })
    }

    /// What a VM's seed and command line need beyond the basics.
    fn guest_setup(
        &self,
        set: &StoredScaleSet,
        img: &Image,
        inputs: &SpecInputs<'_>,
    ) -> Result<herd_driver::GuestSetup, String> {
        let p = &set.model.virtual_machine_profile;
        let ssh_public_keys = p
            .os_profile
            .linux_configuration
            .as_ref()
            .map(|l| l.ssh.public_keys.iter().map(|k| k.key_data.trim().to_string()).collect())
            .unwrap_or_default();
        let secrets: herd_model::scale_set::Secrets = match inputs.secrets.get(&set.key()) {
            Some(Ok(Some(sealed))) => self.sealer.open(sealed).map_err(|e| e.to_string())?,
            Some(Ok(None)) | None => Default::default(),
            Some(Err(e)) => return Err(e.clone()),
        };
        let admin_password_hash = match &secrets.admin_password {
            Some(pw) => {
                let params =
                    sha_crypt::Sha512Params::new(5000).map_err(|_| "password hashing parameters".to_string())?;
                Some(
                    sha_crypt::sha512_simple(pw, &params)
                        .map_err(|_| "the admin password could not be hashed".to_string())?,
                )
            }
            None => None,
        };
        let data_disks = p
            .storage_profile
            .data_disks
            .iter()
            .map(|d| herd_driver::DataDisk { lun: d.lun, size_gb: d.disk_size_gb })
            .collect();
        let mut forward_ports: Vec<u16> = self.config.extra_ports.clone();
        forward_ports.extend(model_ports(set, inputs.lbs));
        forward_ports.sort_unstable();
        forward_ports.dedup();
        Ok(herd_driver::GuestSetup {
            ssh_public_keys,
            admin_password_hash,
            data_disks,
            forward_ports,
            guest_agent: img.guest_agent,
        })
    }

    /// Whether this set's extensions can run in place (see `SetInput::in_place_extensions`).
    fn in_place_extensions(&self, set: &StoredScaleSet, images: &[Image]) -> bool {
        if !self.config.vm_driver {
            return true;
        }
        let urn = set.model.virtual_machine_profile.storage_profile.image_reference.urn();
        urn.ok().and_then(|u| image::resolve(images, &u)).is_some_and(Image::has_guest_agent)
    }

    /// In bridged mode, the bridge of the set's subnet and the instance's address on it.
    fn attachment(
        &self,
        set: &StoredScaleSet,
        r: &InstanceRecord,
        ipam: &Ipam,
    ) -> Option<herd_driver::NetworkAttachment> {
        if !self.config.bridged {
            return None;
        }
        let subnet = subnet_of(set)?;
        let cidr = *ipam.subnets.get(&subnet)?;
        let address: Ipv4Addr = r.private_ip.as_deref()?.parse().ok()?;
        let h = format!("{}|{subnet}", self.config.address_block)
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        Some(herd_driver::NetworkAttachment {
            bridge: format!("hb{:012x}", h & 0xffff_ffff_ffff),
            gateway: cidr.nth(1)?,
            prefix_len: cidr.len,
            address,
        })
    }

    /// Applies one step's intent to the working copies (Phase A).
    fn intent(
        &self,
        w: &mut SetWork<'_>,
        step: &Step,
        now: DateTime<Utc>,
        next_addr: &mut u64,
        ipam: &mut Ipam,
        ops_extra: &mut Writes,
    ) {
        let limits = &self.config.limits;
        match step {
            Step::Create(new) => {
                let prefix = w.set.model.virtual_machine_profile.os_profile.computer_name_prefix.clone();
                let subnet = subnet_of(w.set);
                for NewInstance { id, zone, overprovisioned, host } in new {
                    let private_ip = match &subnet {
                        Some(sn) => match ipam.allocate(sn) {
                            Some(ip) => Some(ip.to_string()),
                            None => {
                                w.log.push(("CreateInstances".into(), format!("subnet {sn} has no free address (or does not exist); instance {id} not created")));
                                continue;
                            }
                        },
                        None => None,
                    };
                    let addr = match (&private_ip, self.config.bridged) {
                        (Some(ip), true) => ip.clone(),
                        _ => {
                            *next_addr += 1;
                            host_local_address(self.config.address_block, *next_addr - 1).to_string()
                        }
                    };
                    let record = InstanceRecord {
                        instance_id: *id,
                        computer_name: InstanceRecord::computer_name_for(&prefix, *id),
                        zone: zone.clone(),
                        model_generation: w.set.model_generation,
                        state: InstanceState::Creating,
                        goal: InstanceGoal::Running,
                        pending: None,
                        overprovisioned: *overprovisioned,
                        reach_address: addr,
                        private_ip,
                        attempts: 1,
                        next_attempt_at: None,
                        last_error: None,
                        delete_reason: None,
                        draining_since: None,
                        base_fingerprint: Some(w.set.model.base_fingerprint()),
                        sku: Some(w.set.model.sku.name.clone()),
                        extensions: vec![],
                        protect_from_scale_in: false,
                        protect_from_scale_set_actions: false,
                        host: host.clone(),
                        scheduled_events: vec![],
                        eviction: None,
                        // The first placement, in the store with this intent (Phase A) before
                        // the driver is called for it.
                        incarnation: Incarnation::FIRST.0,
                        created_at: now,
                        state_since: now,
                    };
                    w.records.insert(*id, Working { record, revision: None, dirty: true });
                    w.status.next_instance_id = w.status.next_instance_id.max(id.0 + 1);
                }
                w.status_dirty = true;
                let counted: Vec<InstanceId> = new.iter().filter(|n| !n.overprovisioned).map(|n| n.id).collect();
                let extras: Vec<InstanceId> = new.iter().filter(|n| n.overprovisioned).map(|n| n.id).collect();
                let mut msg = format!("creating {} instance(s): {}", counted.len(), id_list(&counted));
                if !extras.is_empty() {
                    msg.push_str(&format!(
                        "; plus {} overprovisioned extra(s) {} (not counted, not billed; the first ready are kept)",
                        extras.len(),
                        id_list(&extras)
                    ));
                }
                w.log.push(("CreateInstances".into(), msg));
            }
            Step::Observe { id, event: ev, detail } => {
                let Some(wr) = w.records.get_mut(id) else { return };
                let was = wr.record.state;
                if apply_event(w.transitions, w.set, &mut wr.record, *ev, now).is_err() {
                    return;
                }
                wr.dirty = true;
                match ev {
                    Event::BootObserved => {
                        wr.record.draining_since = None;
                        wr.record.last_error = None;
                        wr.record.attempts = 0;
                        wr.record.next_attempt_at = None;
                        if was == InstanceState::Creating {
                            w.status.consecutive_create_failures = 0;
                            w.status_dirty = true;
                        }
                        // A freshly built disk runs the model's extensions on first boot.
                        let built = matches!(was, InstanceState::Creating | InstanceState::Reimaging);
                        if built
                            && !w.set.model.extensions().is_empty()
                            && wr.record.model_generation == w.set.model_generation
                            && wr.record.pending.is_none()
                        {
                            wr.record.pending = Some(PendingAction::RunExtensions);
                        }
                        w.log.push(("InstanceRunning".into(), format!("instance {id} is running")));
                    }
                    Event::ProvisionFailed | Event::Crashed => {
                        let msg = detail.clone().unwrap_or_else(|| "failed".into());
                        wr.record.last_error = Some(msg.clone());
                        let delay = limits.backoff(wr.record.attempts.max(1));
                        wr.record.next_attempt_at = Some(now + delay);
                        if was == InstanceState::Creating {
                            w.status.consecutive_create_failures += 1;
                            w.status_dirty = true;
                        }
                        w.log.push((
                            "InstanceFailed".into(),
                            format!(
                                "instance {id} failed ({msg}) after attempt {}; retry in {}s",
                                wr.record.attempts,
                                delay.num_seconds()
                            ),
                        ));
                    }
                    _ => {}
                }
            }
            Step::MarkDelete { id, reason } => {
                if let Some(wr) = w.records.get_mut(id) {
                    wr.record.goal = InstanceGoal::Deleted;
                    wr.record.delete_reason = Some(reason.clone());
                    wr.dirty = true;
                }
            }
            Step::Swap { promote, demote } => {
                for (id, extra) in [(promote, false), (demote, true)] {
                    if let Some(wr) = w.records.get_mut(id) {
                        wr.record.overprovisioned = extra;
                        wr.dirty = true;
                    }
                }
                w.log.push((
                    "Overprovisioning".into(),
                    format!("extra instance {promote} was ready first and takes the place of instance {demote}"),
                ));
            }
            Step::Ensure(id) => {
                if let Some(wr) = w.records.get_mut(id) {
                    if wr.record.state == InstanceState::Failed {
                        // A refusal is logged and counted by apply_event.
                        let _ = apply_event(w.transitions, w.set, &mut wr.record, Event::Retry, now);
                        wr.record.attempts += 1;
                        wr.dirty = true;
                    }
                }
            }
            Step::Stop(id) => transition(w, *id, Event::StopRequested, InstanceState::Stopping, now),
            Step::Deallocate(id) => transition(w, *id, Event::DeallocateRequested, InstanceState::Deallocating, now),
            Step::Start(id) => {
                transition(w, *id, Event::StartRequested, InstanceState::Starting, now);
                // A started instance is no longer an evicted one.
                if let Some(wr) = w.records.get_mut(id) {
                    if wr.record.eviction.take().is_some() | !wr.record.scheduled_events.is_empty() {
                        wr.record.scheduled_events.clear();
                        wr.dirty = true;
                    }
                }
            }
            Step::PostEvent { id, kind, notice, reason, description } => {
                let Some(wr) = w.records.get_mut(id) else { return };
                if wr.record.scheduled_events.iter().any(|e| e.event_type == *kind) {
                    return;
                }
                let ev = herd_model::spot::ScheduledEvent::new(*kind, now, *notice, description.clone(), *reason);
                w.log.push((
                    "ScheduledEvent".into(),
                    format!(
                        "{kind} event {} posted to instance {id}: {description}; not before {} ({}s notice, sooner if the instance acknowledges)",
                        ev.event_id,
                        ev.not_before.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        notice.num_seconds()
                    ),
                ));
                wr.record.scheduled_events.push(ev);
                wr.dirty = true;
            }
            Step::Evict { id, reason, policy } => {
                let Some(wr) = w.records.get_mut(id) else { return };
                let mut detail = format!("{reason} eviction");
                for e in &mut wr.record.scheduled_events {
                    if e.event_type == herd_model::spot::ScheduledEventType::Preempt {
                        e.status = herd_model::spot::ScheduledEventStatus::Started;
                        detail = e.description.clone();
                    }
                }
                wr.dirty = true;
                match policy {
                    herd_model::spot::EvictionPolicy::Deallocate => {
                        wr.record.goal = InstanceGoal::Deallocated;
                        wr.record.eviction =
                            Some(herd_model::spot::Eviction { at: now, reason: *reason, detail: detail.clone() });
                    }
                    herd_model::spot::EvictionPolicy::Delete => {
                        wr.record.goal = InstanceGoal::Deleted;
                        wr.record.delete_reason = Some(format!("Spot eviction: {detail}"));
                        let gap = match w.status.spot_eviction_gap.take() {
                            Some(mut g) if g.at_revision == w.set_revision => {
                                g.deleted += 1;
                                g.since = now;
                                g
                            }
                            _ => herd_model::scale_set::SpotEvictionGap {
                                deleted: 1,
                                since: now,
                                at_revision: w.set_revision,
                            },
                        };
                        w.status.spot_eviction_gap = Some(gap);
                        w.status_dirty = true;
                    }
                }
                w.log.push((
                    "SpotEviction".into(),
                    format!("instance {id} evicted ({detail}); evictionPolicy {policy}"),
                ));
            }
            Step::Restore(id) => {
                if let Some(wr) = w.records.get_mut(id) {
                    wr.record.goal = InstanceGoal::Running;
                    wr.record.eviction = None;
                    wr.record.scheduled_events.clear();
                    wr.dirty = true;
                }
                w.log.push(("SpotRestore".into(), format!("evicted instance {id} has room again and is restored")));
            }
            Step::Assign { id, host } => {
                if let Some(wr) = w.records.get_mut(id) {
                    if wr.record.host != *host {
                        wr.record.host = host.clone();
                        wr.dirty = true;
                    }
                }
            }
            Step::CapacityNote(note) => {
                let before = w.status.capacity_note.as_ref().map(|n| (n.message.clone(), n.waiting));
                if before == *note {
                    return;
                }
                w.status.capacity_note = note.as_ref().map(|(m, waiting)| herd_model::scale_set::CapacityNote {
                    message: m.clone(),
                    since: now,
                    waiting: *waiting,
                });
                w.status_dirty = true;
                match note {
                    Some((m, _)) => w.log.push(("CapacityShortfall".into(), m.clone())),
                    None => w.log.push(("CapacityShortfall".into(), "the set has the room it needs again".into())),
                }
            }
            Step::Restart(id) | Step::Resize(id) => {
                transition(w, *id, Event::RestartRequested, InstanceState::Restarting, now)
            }
            Step::Reimage(id) => {
                transition(w, *id, Event::ReimageRequested, InstanceState::Reimaging, now);
                if let Some(wr) = w.records.get_mut(id) {
                    if wr.record.pending != Some(PendingAction::Reimage) {
                        wr.record.pending = Some(PendingAction::Reimage);
                        wr.dirty = true;
                    }
                }
            }
            Step::Destroy(id) => {
                transition(w, *id, Event::DeleteRequested, InstanceState::Deleting, now);
                if let Some(wr) = w.records.get_mut(id) {
                    wr.record.goal = InstanceGoal::Deleted;
                }
            }
            Step::Drain(id) => {
                if let Some(wr) = w.records.get_mut(id) {
                    wr.record.draining_since = Some(now);
                    wr.dirty = true;
                }
                w.log.push((
                    "Drain".into(),
                    format!(
                        "instance {id} leaves its load-balancer pools; open connections get {}s before it is disrupted",
                        limits.drain_timeout.num_seconds()
                    ),
                ));
            }
            Step::Undrain(id) => {
                if let Some(wr) = w.records.get_mut(id) {
                    wr.record.draining_since = None;
                    wr.dirty = true;
                }
            }
            Step::Suspend(reason) => {
                w.status.suspended =
                    Some(Suspension { reason: reason.clone(), at_revision: w.set_revision, since: now });
                w.status_dirty = true;
                w.log.push(("ProvisioningSuspended".into(), reason.clone()));
            }
            Step::Resume => {
                w.status.suspended = None;
                w.status.consecutive_create_failures = 0;
                w.status_dirty = true;
                w.log.push(("ProvisioningResumed".into(), "the scale set changed; creation resumes".into()));
            }
            Step::Rolling(r) => self.rolling_intent(w, r, now, ops_extra),
            Step::Repair(r) => repair_intent(w, r, now),
            // Started after the intents are persisted; the runner records the outcome.
            Step::RemoveSet | Step::RunExtensions(_) => {}
        }
    }

    /// Records a rolling-upgrade decision in the set's status and marks the instances it moves.
    fn rolling_intent(&self, w: &mut SetWork<'_>, step: &RollingStep, now: DateTime<Utc>, ops: &mut Writes) {
        use herd_model::upgrade::{RollingBatch, RollingState};
        w.status_dirty = true;
        let ids = |v: &[InstanceId]| id_list(v);
        match step {
            RollingStep::ClearRequest => w.status.upgrade_request = None,
            RollingStep::OsImage { version, upgrade } => {
                let before = w.status.os_image_version.replace(version.clone());
                if !upgrade {
                    return;
                }
                let mut next = w.set.clone();
                next.model_generation += 1;
                let set_key = SetKey::of(w.set);
                let written = ops
                    .put_scale_set(&set_key, &next, Expected::Revision(w.set_revision))
                    .and_then(|()| ops.record_model(&set_key.history(next.model_generation), &next.model));
                if written.is_err() {
                    return;
                }
                w.status.upgrade_request =
                    Some(herd_model::scale_set::UpgradeRequest::Start { canary: None, pause: false, reimage: true });
                w.log.push((
                    "AutomaticOSUpgrade".into(),
                    format!(
                        "image version {version} was published (was {}); model generation {} → {}: a rolling upgrade re-images every instance",
                        before.unwrap_or_default(),
                        w.set.model_generation,
                        next.model_generation
                    ),
                ));
            }
            RollingStep::Begin(u) => {
                let canary = u
                    .canary
                    .map(|c| format!(", canary of {c}{}", if u.pause_after_canary { " then pause" } else { "" }));
                w.log.push((
                    "RollingUpgrade".into(),
                    format!(
                        "rolling upgrade to model generation {} started ({}): batches of {}{}",
                        u.target_generation,
                        u.trigger,
                        u.batch_size,
                        canary.unwrap_or_default()
                    ),
                ));
                w.status.rolling_upgrade = Some((**u).clone());
            }
            RollingStep::Canary { canary, pause } => {
                if let Some(u) = w.status.rolling_upgrade.as_mut() {
                    u.canary = *canary;
                    u.pause_after_canary = *pause;
                }
            }
            RollingStep::StartBatch(batch) => {
                let Some(u) = w.status.rolling_upgrade.as_mut() else { return };
                let mut chosen = Vec::new();
                for (id, action) in batch {
                    if let Some(wr) = w.records.get_mut(id) {
                        wr.record.pending = Some(*action);
                        wr.dirty = true;
                        chosen.push(*id);
                    }
                }
                u.batches.push(RollingBatch {
                    instances: chosen.clone(),
                    started_at: now,
                    finished_at: None,
                    unhealthy: vec![],
                });
                let what = if u.state == RollingState::RollingBack { "rollback batch" } else { "batch" };
                w.log.push((
                    "RollingUpgradeBatch".into(),
                    format!("{what} {}: instance(s) {}", u.batches.len(), ids(&chosen)),
                ));
            }
            RollingStep::SurgeBatch(old) => {
                let Some(u) = w.status.rolling_upgrade.as_mut() else { return };
                u.batches.push(RollingBatch {
                    instances: old.clone(),
                    started_at: now,
                    finished_at: None,
                    unhealthy: vec![],
                });
                w.log.push((
                    "RollingUpgradeBatch".into(),
                    format!(
                        "batch {} (maxSurge): {} new instance(s) on the new model first, then instance(s) {} go",
                        u.batches.len(),
                        old.len(),
                        ids(old)
                    ),
                ));
            }
            RollingStep::RetireOld(old) => {
                for id in old {
                    if let Some(wr) = w.records.get_mut(id) {
                        wr.record.goal = InstanceGoal::Deleted;
                        wr.record.delete_reason = Some("rolling upgrade (maxSurge): replaced by a new instance".into());
                        wr.dirty = true;
                    }
                }
            }
            RollingStep::FinishBatch { unhealthy } => {
                let Some(u) = w.status.rolling_upgrade.as_mut() else { return };
                let n = u.batches.len();
                let Some(b) = u.batches.last_mut() else { return };
                b.finished_at = Some(now);
                b.unhealthy = unhealthy.clone();
                let good: Vec<InstanceId> = b.instances.iter().filter(|i| !unhealthy.contains(i)).copied().collect();
                u.succeeded.extend(good.iter().copied());
                u.failed.extend(unhealthy.iter().copied());
                let msg = if unhealthy.is_empty() {
                    format!("batch {n} done: instance(s) {} healthy", ids(&good))
                } else {
                    format!("batch {n} done: instance(s) {} unhealthy", ids(unhealthy))
                };
                w.log.push(("RollingUpgradeBatch".into(), msg));
            }
            RollingStep::State { state, reason } => {
                let Some(u) = w.status.rolling_upgrade.as_mut() else { return };
                u.state = *state;
                if reason.is_some() {
                    u.error = reason.clone();
                }
                if !state.is_active() {
                    u.ended_at = Some(now);
                }
                let mut msg = format!("rolling upgrade to generation {}: {state}", u.target_generation);
                if let Some(r) = reason {
                    msg.push_str(&format!(" ({r})"));
                }
                w.log.push(("RollingUpgrade".into(), msg));
            }
            RollingStep::Rollback { reason } => {
                let Some(u) = w.status.rolling_upgrade.clone() else { return };
                let old = match w.rollback_model.take() {
                    Some(model) => model,
                    None => {
                        let why = format!(
                            "{reason}; but model generation {} is not on record, so it cannot roll back",
                            u.from_generation
                        );
                        if let Some(u) = w.status.rolling_upgrade.as_mut() {
                            u.state = RollingState::Faulted;
                            u.error = Some(why.clone());
                            u.ended_at = Some(now);
                        }
                        w.log.push(("RollingUpgrade".into(), why));
                        return;
                    }
                };
                let mut next = w.set.clone();
                next.model.virtual_machine_profile = old.virtual_machine_profile;
                next.model.sku.name = old.sku.name;
                next.model_generation += 1;
                let new_gen = next.model_generation;
                let set_key = SetKey::of(w.set);
                if ops.put_scale_set(&set_key, &next, Expected::Revision(w.set_revision)).is_err() {
                    return;
                }
                if let Err(e) = ops.record_model(&set_key.history(new_gen), &next.model) {
                    tracing::warn!(set = %set_key, error = %e, "the rolled-back model could not be recorded in the history");
                }
                // Instances the upgrade never touched already run that model.
                let touched: Vec<InstanceId> = u.touched().collect();
                for wr in w.records.values_mut() {
                    if wr.record.model_generation == u.from_generation && !touched.contains(&wr.record.instance_id) {
                        wr.record.model_generation = new_gen;
                        wr.dirty = true;
                    }
                }
                if let Some(st) = w.status.rolling_upgrade.as_mut() {
                    if let Some(b) = st.batches.last_mut() {
                        b.finished_at.get_or_insert(now);
                    }
                    st.state = RollingState::RollingBack;
                    st.error = Some(reason.clone());
                    st.target_generation = new_gen;
                }
                w.log.push((
                    "RollingUpgrade".into(),
                    format!(
                        "{reason}: the model returns to generation {}'s (now generation {new_gen}); upgraded instance(s) {} are re-imaged back",
                        u.from_generation,
                        ids(&touched)
                    ),
                ));
            }
        }
    }
}

/// Phase C: persists the driver results of each set and the orphan cleanups, on fresh reads
/// of each record. Over the transaction limit, results commit in chunks; after a conflict the
/// next attempt re-reads, and the results already committed then change nothing.
fn persist_results(
    store: &dyn Store,
    transitions: &InvalidTransitions,
    limits: &Limits,
    per_set: Vec<(StoredScaleSet, Vec<StepResult>)>,
    orphan_results: &[(InstanceKey, Result<(), DriverError>)],
    now: DateTime<Utc>,
) -> Result<(), StateError> {
    for attempt in 0..5 {
        let mut ops = Writes::new();
        for (set, res) in &per_set {
            results(store, transitions, limits, set, res, now, &mut ops)?;
        }
        for (k, r) in orphan_results {
            let (status, message) = match r {
                Ok(()) => {
                    (ActivityStatus::Succeeded, format!("removed orphan instance {k} that herd had no record of"))
                }
                Err(e) => (ActivityStatus::Failed, format!("could not remove orphan instance {k}: {e}")),
            };
            ops.activity(event(now, k.group.as_str(), k.set.as_str(), "OrphanCleanup", status, message));
        }
        if ops.is_empty() {
            break;
        }
        match ops.commit_in_chunks(store) {
            Ok(()) => break,
            Err(e) if e.is_conflict() && attempt < 4 => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Persists driver results (Phase C) on fresh reads of each record.
fn results(
    store: &dyn Store,
    transitions: &InvalidTransitions,
    limits: &Limits,
    set: &StoredScaleSet,
    res: &[StepResult],
    now: DateTime<Utc>,
    ops: &mut Writes,
) -> Result<(), StateError> {
    let set_key = SetKey::of(set);
    let mut status = store.scale_set_status(&set_key)?;
    let mut status_dirty = false;
    let mut deleted = Vec::new();
    let mut failures = Vec::new();
    for (step, r) in res {
        let Some(id) = step.instance() else { continue };
        let key = set_key.instance(id);
        let Some(cur) = store.instance(&key)? else { continue };
        let mut rec = cur.value.clone();
        match (step, r) {
            (Step::Destroy(_), Ok(())) => {
                ops.delete_instance(&key, Expected::Revision(cur.revision));
                deleted.push((id, rec.delete_reason.clone().unwrap_or_default()));
                continue;
            }
            (Step::Stop(_), Ok(())) => {
                // A refusal is logged and counted by apply_event.
                let _ = apply_event(transitions, set, &mut rec, Event::StopDone, now);
            }
            (Step::Deallocate(_), Ok(())) => {
                let _ = apply_event(transitions, set, &mut rec, Event::DeallocateDone, now);
            }
            (Step::Restart(_), Ok(())) => {
                if rec.pending == Some(PendingAction::Restart) {
                    rec.pending = None;
                }
            }
            (Step::Reimage(_), Ok(())) => {
                if rec.pending == Some(PendingAction::Reimage) {
                    rec.pending = None;
                }
                rec.model_generation = set.model_generation;
                rec.base_fingerprint = Some(set.model.base_fingerprint());
                rec.sku = Some(set.model.sku.name.clone());
                rec.extensions.clear();
            }
            (Step::Resize(_), Ok(())) => {
                if rec.pending == Some(PendingAction::Resize) {
                    rec.pending = None;
                }
                rec.model_generation = rec.model_generation.max(set.model_generation);
                rec.sku = Some(set.model.sku.name.clone());
            }
            (Step::Ensure(_) | Step::Start(_), Ok(())) => {}
            (_, Err(e)) => {
                let msg = e.to_string();
                rec.last_error = Some(msg.clone());
                let delay = limits.retry_delay(e.retryable(), rec.attempts.max(1));
                rec.next_attempt_at = Some(now + delay);
                let provisioning = matches!(
                    step,
                    Step::Ensure(_) | Step::Start(_) | Step::Reimage(_) | Step::Restart(_) | Step::Resize(_)
                );
                if provisioning {
                    let was = rec.state;
                    // A failed restart is not retried (the instance is recovered by the
                    // Failed → Creating path); a failed reimage stays pending and is.
                    if apply_event(transitions, set, &mut rec, Event::ProvisionFailed, now).is_ok() {
                        if matches!(rec.pending, Some(PendingAction::Restart | PendingAction::Resize)) {
                            rec.pending = None;
                        }
                        if was == InstanceState::Creating {
                            if let Some(s) = status.as_mut() {
                                s.value.consecutive_create_failures += 1;
                                status_dirty = true;
                            }
                        }
                    }
                }
                failures.push(format!("instance {id}: {step_name} failed: {msg}", step_name = step_name(step)));
            }
            _ => continue,
        }
        if rec != cur.value {
            ops.put_instance(&key, &rec, Expected::Revision(cur.revision))?;
        }
    }
    if status_dirty {
        if let Some(s) = status {
            ops.put_status(&set_key, &s.value, Expected::Revision(s.revision))?;
        }
    }
    let (g, n) = (set.group.as_str(), set.name.as_str());
    let mut by_reason: BTreeMap<String, Vec<InstanceId>> = BTreeMap::new();
    for (id, reason) in deleted {
        by_reason.entry(reason).or_default().push(id);
    }
    for (reason, ids) in by_reason {
        let msg = format!(
            "deleted instance(s) {} ({})",
            id_list(&ids),
            if reason.is_empty() { "requested" } else { &reason }
        );
        ops.activity(event(now, g, n, "DeleteInstances", ActivityStatus::Succeeded, msg));
    }
    for f in failures {
        ops.activity(event(now, g, n, "DriverCall", ActivityStatus::Failed, f));
    }
    Ok(())
}

/// Guest ports the model's load balancers reach: backend and probe ports of the rules on
/// the pools the set joins, and backend ports of its NAT pools.
fn model_ports(set: &StoredScaleSet, lbs: &[LoadBalancer]) -> Vec<u16> {
    let Some(ip) = set.model.virtual_machine_profile.network_profile.as_ref().and_then(|n| n.primary()) else {
        return vec![];
    };
    let refers = |ids: &[herd_model::network::SubResource], lb: &LoadBalancer, coll: &str, name: &str| {
        ids.iter().any(|s| s.id.eq_ignore_ascii_case(&format!("{}/{coll}/{name}", lb.id)))
    };
    let mut out = Vec::new();
    for lb in lbs {
        for rule in &lb.load_balancing_rules {
            let pool = rule.backend_address_pool.id.rsplit('/').next().unwrap_or("");
            if refers(&ip.load_balancer_backend_address_pools, lb, "backendAddressPools", pool) {
                out.extend(u16::try_from(rule.backend_port).ok());
                if let Some(probe) = rule.probe.as_ref().and_then(|p| p.id.rsplit('/').next()) {
                    if let Some(pr) = lb.probes.iter().find(|x| x.name.eq_ignore_ascii_case(probe)) {
                        out.extend(u16::try_from(pr.port).ok());
                    }
                }
            }
        }
        for nat in &lb.inbound_nat_pools {
            if refers(&ip.load_balancer_inbound_nat_pools, lb, "inboundNatPools", &nat.name) {
                out.extend(u16::try_from(nat.backend_port).ok());
            }
        }
    }
    out
}

/// Records on their images the guest agents the driver saw answer (`answered`, see
/// `guest_agent`); returns whether it wrote any. A write that loses its compare-and-swap is
/// retried by the next pass.
fn record_guest_agents(
    store: &dyn Store,
    now: DateTime<Utc>,
    images: &[Versioned<Image>],
    answered: &[(InstanceKey, herd_model::image::ImageSource)],
) -> Result<bool, StateError> {
    let mut wrote = false;
    for r in crate::guest_agent::records(images, answered) {
        let message = format!(
            "the QEMU guest agent answered on instance {} at boot: recorded on the image; its VMs now wait for \
         the agent, and extension changes run in place",
            r.instance
        );
        let key = match herd_model::ImageUrn::parse(&r.image.urn) {
            Ok(urn) => ImageKey::new(&urn),
            Err(e) => {
                tracing::warn!(image = %r.key, error = %e, "an image's URN does not parse; its guest agent is not recorded");
                continue;
            }
        };
        let mut w = Writes::new();
        w.put_image(&key, &r.image, Expected::Revision(r.revision))?;
        w.activity(event(now, "", &r.image.urn, "GuestAgentDetected", ActivityStatus::Succeeded, message));
        match w.commit(store) {
            Ok(_) => {
                wrote = true;
                tracing::info!(image = %r.image.urn, instance = %r.instance, "guest agent detected")
            }
            Err(e) if e.is_conflict() => {
                tracing::debug!(image = %r.image.urn, "recording the guest agent lost a race: next pass")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(wrote)
}

/// Records an automatic-repair decision and marks the instance.
fn repair_intent(w: &mut SetWork<'_>, step: &RepairStep, now: DateTime<Utc>) {
    use herd_model::repair::{RepairAction, RepairAttempt, RepairSuspension};
    w.status_dirty = true;
    match step {
        RepairStep::Reset => w.status.repairs.attempts.clear(),
        RepairStep::Suspend(reason) => {
            w.status.repairs.suspended = Some(RepairSuspension { reason: reason.clone(), since: now, automatic: true });
            w.log.push(("AutomaticRepairsSuspended".into(), reason.clone()));
        }
        RepairStep::Repair { id, action, reason } => {
            let Some(wr) = w.records.get_mut(id) else { return };
            match action {
                RepairAction::Replace => {
                    wr.record.goal = InstanceGoal::Deleted;
                    wr.record.delete_reason = Some(format!("automatic repair (Replace): {reason}"));
                }
                RepairAction::Restart => wr.record.pending = Some(PendingAction::Restart),
                RepairAction::Reimage => wr.record.pending = Some(PendingAction::Reimage),
            }
            wr.dirty = true;
            let attempts = &mut w.status.repairs.attempts;
            attempts.push(RepairAttempt { instance: *id, action: *action, at: now });
            if attempts.len() > 20 {
                attempts.remove(0);
            }
            w.log.push(("AutomaticRepair".into(), format!("instance {id}: {action} ({reason})")));
        }
    }
}

fn step_name(s: &Step) -> &'static str {
    match s {
        Step::Ensure(_) => "create",
        Step::Stop(_) => "stop",
        Step::Deallocate(_) => "deallocate",
        Step::Start(_) => "start",
        Step::Restart(_) => "restart",
        Step::Resize(_) => "resize",
        Step::Reimage(_) => "reimage",
        Step::Destroy(_) => "delete",
        _ => "step",
    }
}

fn transition(w: &mut SetWork<'_>, id: InstanceId, ev: Event, target: InstanceState, now: DateTime<Utc>) {
    if let Some(wr) = w.records.get_mut(&id) {
        if wr.record.state != target && apply_event(w.transitions, w.set, &mut wr.record, ev, now).is_ok() {
            wr.dirty = true;
        }
    }
}

/// Turns a set's working copies into writes (Phase A), plus its activity log lines.
fn collect_writes(w: &mut SetWork<'_>, ops: &mut Writes, now: DateTime<Utc>) -> Result<(), StateError> {
    let set_key = SetKey::of(w.set);
    let (g, n) = (w.set.group.as_str(), w.set.name.as_str());
    for (id, wr) in &w.records {
        if !wr.dirty {
            continue;
        }
        let expected = wr.revision.map_or(Expected::Absent, Expected::Revision);
        ops.put_instance(&set_key.instance(*id), &wr.record, expected)?;
    }
    if w.steps.contains(&Step::RemoveSet) {
        ops.remove_scale_set(&set_key, Expected::Revision(w.set_revision));
        ops.activity(event(now, g, n, "DeleteScaleSet", ActivityStatus::Succeeded, "scale set deleted".into()));
    } else if w.status_dirty {
        let expected = w.status_revision.map_or(Expected::Absent, Expected::Revision);
        ops.put_status(&set_key, &w.status, expected)?;
    }
    let marked: Vec<(InstanceId, String)> = w
        .steps
        .iter()
        .filter_map(|s| if let Step::MarkDelete { id, reason } = s { Some((*id, reason.clone())) } else { None })
        .collect();
    let mut by_reason: BTreeMap<String, Vec<InstanceId>> = BTreeMap::new();
    for (id, reason) in marked {
        by_reason.entry(reason).or_default().push(id);
    }
    for (reason, ids) in by_reason {
        w.log.push(("DeleteInstances".into(), format!("deleting instance(s) {}: {reason}", id_list(&ids))));
    }
    // Merge repetitive lines (e.g. many instances running) into one per operation.
    let mut running = Vec::new();
    for (op, msg) in std::mem::take(&mut w.log) {
        if op == "InstanceRunning" {
            running.push(msg.trim_start_matches("instance ").trim_end_matches(" is running").to_string());
            continue;
        }
        let status = if op == "InstanceFailed" || op == "ProvisioningSuspended" {
            ActivityStatus::Failed
        } else {
            ActivityStatus::Started
        };
        ops.activity(event(now, g, n, &op, status, msg));
    }
    if !running.is_empty() {
        let ids: Vec<InstanceId> = running.iter().filter_map(|s| s.parse().ok().map(InstanceId)).collect();
        ops.activity(event(
            now,
            g,
            n,
            "InstanceRunning",
            ActivityStatus::Succeeded,
            format!("instance(s) {} running", id_list(&ids)),
        ));
    }
    Ok(())
}

/// Makes the driver call for `step`, fenced by `fence` (the leader's term and the record's
/// incarnation). Calls that build an instance need its spec; the others only its key, so an
/// instance can be stopped or deleted even if its image is gone.
async fn call(
    driver: &dyn Driver,
    step: &Step,
    key: &InstanceKey,
    fence: Fence,
    spec: Result<InstanceSpec, DriverError>,
) -> Result<(), DriverError> {
    use herd_driver::PowerTarget;
    let spec = || spec.clone();
    match step {
        Step::Ensure(_) | Step::Start(_) => driver.ensure(&spec()?, fence).await,
        Step::Reimage(_) => driver.reimage(&spec()?, fence).await,
        Step::Stop(_) => driver.set_power(key, PowerTarget::Stopped, fence).await,
        Step::Deallocate(_) => driver.set_power(key, PowerTarget::Deallocated, fence).await,
        Step::Restart(_) => driver.restart(key, fence).await,
        Step::Resize(_) => driver.resize(&spec()?, fence).await,
        Step::Destroy(_) => driver.destroy(key, fence).await,
        _ => Ok(()),
    }
}

fn event(
    now: DateTime<Utc>,
    group: &str,
    resource: &str,
    op: &str,
    status: ActivityStatus,
    message: String,
) -> ActivityEvent {
    ActivityEvent {
        seq: 0,
        time: now,
        resource_group: group.into(),
        resource: resource.into(),
        operation: op.into(),
        status,
        actor: Actor::Reconciler,
        message,
    }
}

fn parse_instance_key(set_key: &str, id: InstanceId) -> Option<InstanceKey> {
    InstanceKey::parse_path(&format!("{set_key}/{id}"))
}

pub use herd_state::instance_actions::id_list;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_skip_network_and_broadcast() {
        assert_eq!(host_local_address(0, 0), Ipv4Addr::new(127, 128, 0, 1));
        assert_eq!(host_local_address(0, 253), Ipv4Addr::new(127, 128, 0, 254));
        assert_eq!(host_local_address(0, 254), Ipv4Addr::new(127, 128, 1, 1));
        assert_eq!(host_local_address(5, 0), Ipv4Addr::new(127, 133, 0, 1));
        assert_eq!(host_local_address(127, 254 * 256), Ipv4Addr::new(127, 128, 0, 1), "wraps inside 127.128.0.0/9");
    }

    #[test]
    fn id_lists_compress_ranges() {
        let ids: Vec<InstanceId> = [0, 1, 2, 4, 7, 8].into_iter().map(InstanceId).collect();
        assert_eq!(id_list(&ids), "0-2, 4, 7-8");
    }
}
