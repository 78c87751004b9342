//! The executor: runs a pass's concern planners in a fixed order, then carries their steps out
//! in three phases.
//!
//! ```text
//!   read desired (store) + observed (driver list)
//!     │
//!     ├─ orphans ── unrecorded instances past their grace
//!     ├─ per set, from one snapshot:  scale ─▶ rolling upgrade ─▶ OS image ─▶ repair
//!     ├─ strays ── records of sets that are gone, groups being deleted
//!     └─ capacity ── across sets: placement, Spot evictions and restores (rewrites the steps)
//!     │
//!     ▼  steps (typed, pure) ──▶ apply to each set's draft (pure: `crate::draft`)
//!   A: persist intents (one txn) ──▶ B: driver calls ──▶ C: persist results
//!          ▲                                                  │
//!          └───────── wake (change feed, API) / resync ◀──────┘
//! ```
//! Each concern reports its part of the pass on the status board ([`crate::concerns`]).
//! A crash after A leaves intents that the next pass repeats (driver calls are idempotent);
//! a crash after B leaves results that the next pass re-observes through `Driver::list`.
//! Intents over the store's transaction limit commit in ordered chunks
//! ([`Writes::commit_intents`]): a failure between chunks is the same as a crash after part of A.
//! Every store call runs on tokio's blocking pool ([`State::run`]), never on the async worker
//! that plans and drives.
//! [`Faults`] injects exactly those crashes in tests.

mod config;
mod intents;
mod planning;
mod results;
mod spec;

pub use crate::draft::{host_local_address, Ipam};
pub use config::{FaultPoint, Faults, ReconcileError, ReconcilerConfig};
pub use herd_model::host::JoinedHosts;

use crate::concerns::{Concern, ConcernBoard, PassConcerns};
use crate::draft::SetDraft;
use crate::extensions::{ExtensionConfig, ExtensionRunner};
use crate::plan::Step;
use crate::rolling::Health;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use herd_driver::{Driver, DriverError, Fence, InstanceSpec, ObservedPower};
use herd_model::activity::ActivityStatus;
use herd_model::{
    clock::Clock,
    group::GroupProvisioningState,
    instance::{InstanceRecord, InstanceState},
    network::LoadBalancer,
    scale_set::{ScaleSetStatus, StoredScaleSet},
    InstanceId, InstanceKey,
};
use herd_state::intents::Writes;
use herd_state::keys::{CounterKey, GroupKey, HealthKey, InstanceRecordKey, SetKey};
use herd_state::records::Quarantined;
use herd_state::seal::Sealer;
use herd_state::transitions::InvalidTransitions;
use herd_state::{Expected, Records, State, StateError, Store, Versioned};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::sync::Notify;

/// A driver step and how it went.
type StepResult = (Step, Result<(), DriverError>);

/// A driver call to make in Phase B: the set it belongs to (index), the step, the instance, the
/// fence it carries and the spec (or why none could be made).
type DriverCall = (usize, Step, InstanceKey, Fence, Result<InstanceSpec, DriverError>);

/// Observed power of recorded instances, by set key and id.
type ObservedBySet = BTreeMap<String, BTreeMap<InstanceId, ObservedPower>>;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Steps applied.
    pub steps: usize,
    /// Some instance is in a transitional state, so the next pass should come soon.
    pub waiting: bool,
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
    /// What the load balancer says about draining instances (ends drains early).
    drains: Option<Arc<herd_model::health::DrainBoard>>,
    orphan_guard: crate::orphans::OrphanGuard,
    /// Lifecycle events refused as invalid (logged and counted, served on `/metrics`).
    transitions: InvalidTransitions,
    /// Where each concern's part of a pass is shown (None: nowhere, as in most tests).
    concerns: Option<ConcernBoard>,
    /// Some record had copies left on a failed host at the last pass (or no pass ran yet): the
    /// next pass looks for returned hosts to destroy them on.
    stale_copies: std::sync::atomic::AtomicBool,
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
            drains: None,
            orphan_guard: Default::default(),
            transitions: InvalidTransitions::default(),
            concerns: None,
            stale_copies: std::sync::atomic::AtomicBool::new(true),
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
                // An instance whose host is silent counts as unhealthy for upgrades and repairs
                // (issue 21); the host-failure handling, not a repair, moves it.
                if r.host_failure.unreachable_since.is_some() {
                    return Some((r.instance_id, Health::Unhealthy));
                }
                let h = board.get(&HealthKey::of(set, r.instance_id).to_string())?;
                // Health from an earlier boot (the board lags a pass behind) says nothing yet.
                Some((r.instance_id, h.of_boot(r.state_since)))
            })
            .collect()
    }

    /// Reads the load balancer's drain observations from `board`: a drain ends as soon as the
    /// data plane has applied it and no connection is left, not only at `drain_timeout`.
    pub fn with_drains(mut self, board: Arc<herd_model::health::DrainBoard>) -> Self {
        self.drains = Some(board);
        self
    }

    /// The load balancer's observations of this set's draining instances.
    fn drains_of(
        &self,
        set: &StoredScaleSet,
        records: &[InstanceRecord],
    ) -> BTreeMap<InstanceId, herd_model::health::DrainObservation> {
        let Some(board) = &self.drains else { return BTreeMap::new() };
        records
            .iter()
            .filter(|r| r.draining_since.is_some())
            .filter_map(|r| Some((r.instance_id, board.get(&HealthKey::of(set, r.instance_id).to_string())?)))
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

    /// Shows each concern's part of every pass on `board` (see [`crate::concerns`]).
    pub fn with_concern_board(mut self, board: ConcernBoard) -> Self {
        self.concerns = Some(board);
        self
    }

    /// The reconciler stopped: so did its concerns.
    pub(crate) fn concerns_stopped(&self) {
        if let Some(b) = &self.concerns {
            b.stopped();
        }
    }

    /// One pass: observe, plan, and apply. Every store call runs on the blocking pool
    /// ([`State::run`]); planning and driver calls run here. Each concern's part of it goes to
    /// the concern board, if there is one.
    pub async fn pass(&self) -> Result<PassReport, ReconcileError> {
        let started = self.clock.now();
        let mut concerns = PassConcerns::default();
        let result = self.pass_with(&mut concerns).await;
        if let Some(board) = &self.concerns {
            let error = result.as_ref().err().map(|e| herd_model::error::chain_text(e));
            board.publish(&concerns, started, self.clock.now(), error.as_deref());
        }
        result
    }

    /// The pass, recording what each concern did in `concerns`.
    async fn pass_with(&self, concerns: &mut PassConcerns) -> Result<PassReport, ReconcileError> {
        let t_start = std::time::Instant::now();
        let now = self.clock.now();
        if self.config.joined.is_some() && self.stale_copies.load(std::sync::atomic::Ordering::Relaxed) {
            self.return_stale_copies(now, concerns).await?;
        }
        let Snapshot { sets, statuses, mut by_set, quarantined } = self.state.run(Snapshot::read).await?;
        let any_copies = by_set.values().flatten().any(|o| !o.value.host_failure.stale_copies.is_empty());
        self.stale_copies.store(any_copies, std::sync::atomic::Ordering::Relaxed);
        let returning = crate::host_failure::hosts_with_stale_copies(by_set.values().flatten().map(|o| &o.value));
        let t_read = t_start.elapsed();
        let listing = self.driver.list_hosts().await?;
        let t_list = t_start.elapsed();
        let (mut observed_by_set, unrecorded) = sort_observed(listing.instances, &by_set, &quarantined);
        assume_as_recorded(&mut observed_by_set, &by_set, &listing.unreachable_hosts);
        let mut orphans = self.ready_orphans(now, unrecorded, concerns).await;

        let answered = self.driver.guest_agents_answered();
        let with_joined = self.config.joined.is_some();
        let (images, lbs, joined) = self
            .state
            .run(move |s| {
                let mut images = s.images()?;
                if intents::record_guest_agents(s, now, &images, &answered)? {
                    images = s.images()?;
                }
                let joined = if with_joined { herd_state::hosts::list(s)? } else { Vec::new() };
                Ok((images.into_iter().map(|o| o.value).collect::<Vec<_>>(), s.load_balancers()?, joined))
            })
            .await?;
        let lbs: Vec<LoadBalancer> = lbs.into_iter().map(|o| o.value).collect();
        let mut waiting = self.extensions.busy();
        let failures = match &self.config.joined {
            Some(j) => {
                let timing = j.timing();
                crate::host_failure::HostFailures::of(&joined, |n| j.heartbeats.silence(n), now, &timing)
            }
            None => Default::default(),
        };
        // Host failure acts on time, not on a change: the idle resync (every `idle_interval`, 2 s)
        // is its clock, so a silent host does not turn every pass into a busy one.
        // The per-set concerns look at every set in every pass (and plan those they apply to).
        for c in [Concern::Scale, Concern::RollingUpgrade, Concern::OsImage, Concern::Repair] {
            concerns.run(c);
        }
        let mut works = Vec::new();
        for set in &sets {
            if quarantined.contains_key(&set.key) {
                by_set.remove(&set.key);
                continue;
            }
            let status = statuses.get(&set.key);
            let records = by_set.remove(&set.key).unwrap_or_default();
            let observed = observed_by_set.get(&set.key);
            let (mut work, busy) = self.plan_set(set, status, records, observed, &images, &lbs, now, concerns);
            // Also with no host silent now: marks of hosts heard again are cleared.
            if self.config.joined.is_some() {
                let recs: Vec<&InstanceRecord> = work.records.values().map(|w| &w.record).collect();
                let moves = crate::host_failure::plan(&set.value, &recs, &failures);
                crate::host_failure::apply_plan(&mut work.steps, moves);
            }
            waiting |= busy;
            works.push(work);
        }
        let t = std::time::Instant::now();
        let before = orphans.len();
        let removed = self.remove_strays_and_groups(by_set, &quarantined, &sets, &mut orphans, now).await;
        let strays = concerns.run(Concern::Strays);
        strays.took += t.elapsed();
        strays.steps += orphans.len() - before;
        removed?;
        self.arbitrate_capacity(&mut works, &joined, &returning, now, concerns);
        for w in &works {
            concerns.count(&w.steps);
        }

        let total: usize = works.iter().map(|w| w.steps.len()).sum::<usize>() + orphans.len();
        if total == 0 {
            self.publish_fabric_unchanged(&works).await?;
            return Ok(PassReport { steps: 0, waiting });
        }

        // Phase A: intents.
        let (calls, extension_runs) = self.intents(&mut works, now, &images, &lbs).await?;
        // Instances placed on another host: the hosts' leases must stop listing them from the
        // next acknowledgement on (the agent link caches where instances are for a second).
        let moved = works.iter().flat_map(|w| &w.steps).any(|s| {
            matches!(s, Step::Replace { to: Some(_), .. } | Step::Redeploy { to: Some(_), .. } | Step::LoseSpot { .. })
        });
        if let (true, Some(j)) = (moved, &self.config.joined) {
            j.heartbeats.placements_changed();
        }
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
        note_failures(concerns, &works, &results, &orphan_results);

        // Phase C: results, re-read and compare-and-swap so a concurrent user write is kept.
        let mut per_set: BTreeMap<usize, (StoredScaleSet, Vec<StepResult>)> = BTreeMap::new();
        for (wi, step, r) in results {
            per_set.entry(wi).or_insert_with(|| (works[wi].set.clone(), vec![])).1.push((step, r));
        }
        let (transitions, limits) = (self.transitions.clone(), self.config.limits.clone());
        self.state
            .run(move |s| {
                results::persist_results(
                    s,
                    &transitions,
                    &limits,
                    per_set.into_values().collect(),
                    &orphan_results,
                    now,
                )
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

    /// The capacity concern: placement on hosts, Spot evictions and restores, across sets.
    fn arbitrate_capacity(
        &self,
        works: &mut [SetDraft<'_>],
        joined: &[herd_model::host::HostRecord],
        returning: &BTreeSet<String>,
        now: DateTime<Utc>,
        concerns: &mut PassConcerns,
    ) {
        let t = std::time::Instant::now();
        // With hosts joined, the declared hosts (or this machine) and the joined ones heard from;
        // a host still holding copies of moved instances (Returning) takes nothing new.
        let with_joined = self.config.joined.as_ref().and_then(|j| j.hosts(&self.config.hosts, joined, now)).map(
            |(mut hosts, local)| {
                for h in hosts.iter_mut().filter(|h| returning.contains(&h.name)) {
                    h.schedulable = false;
                }
                (hosts, local)
            },
        );
        let (hosts, unplaced_on) = match &with_joined {
            Some((hosts, local)) => (hosts.as_slice(), Some(local.as_str())),
            None => (self.config.hosts.as_slice(), None),
        };
        {
            let mut parts: Vec<crate::capacity::SetSteps<'_>> = works
                .iter_mut()
                .map(|w| crate::capacity::SetSteps {
                    set: w.set,
                    records: w.records.values().map(|x| &x.record).collect(),
                    steps: &mut w.steps,
                    note: w.status.capacity_note.as_ref().map(|n| (n.message.clone(), n.waiting)),
                    placement_note: w.status.placement_note.as_ref().map(|n| n.message.clone()),
                })
                .collect();
            crate::capacity::arbitrate(&mut parts, hosts, unplaced_on, &self.config.skus, &self.config.spot_price, now);
        }
        let run = concerns.run(Concern::Capacity);
        run.took += t.elapsed();
        for w in works.iter() {
            // The note this pass leaves: its own CapacityNote step, else the one on record.
            let set_note = w.steps.iter().rev().find_map(|s| match s {
                Step::CapacityNote(n) => Some(n.as_ref().map(|(m, _)| m.as_str())),
                _ => None,
            });
            let note = set_note.unwrap_or(w.status.capacity_note.as_ref().map(|n| n.message.as_str()));
            if let Some(m) = note {
                run.waiting.push(format!("{}/{}: {m}", w.set.group, w.set.name));
            }
        }
    }

    /// The unrecorded instances whose time has come (see [`crate::orphans`]); the orphans
    /// concern. Without the list of kept instances, none is.
    async fn ready_orphans(
        &self,
        now: DateTime<Utc>,
        unrecorded: Vec<InstanceKey>,
        concerns: &mut PassConcerns,
    ) -> Vec<InstanceKey> {
        let t = std::time::Instant::now();
        let seen = unrecorded.len();
        let ready = if unrecorded.is_empty() {
            self.orphan_guard.ready(now, vec![], &Default::default(), self.config.orphans)
        } else {
            match self.state.run(|s| s.counter::<crate::orphans::Unmanaged>(CounterKey::UnmanagedInstances)).await {
                Ok(u) => self.orphan_guard.ready(
                    now,
                    unrecorded,
                    &u.map(|o| o.value).unwrap_or_default(),
                    self.config.orphans,
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the unmanaged-instance list; no orphan is destroyed");
                    vec![]
                }
            }
        };
        let run = concerns.run(Concern::Orphans);
        run.took += t.elapsed();
        run.steps += ready.len();
        if seen > ready.len() {
            run.waiting.push(format!(
                "{} instance(s) without a record: kept by the unmanaged list, in their orphan grace, or over the hourly limit",
                seen - ready.len()
            ));
        }
        ready
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
                        w.activity(intents::event(
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

    /// A returned host's copies of instances moved away while it was silent are destroyed on
    /// it, each fenced by the instance's new incarnation, and crossed off the record (see
    /// [`crate::host_failure`]). Copies on hosts not heard from stay listed.
    async fn return_stale_copies(&self, now: DateTime<Utc>, concerns: &mut PassConcerns) -> Result<(), ReconcileError> {
        let Some(joined) = &self.config.joined else { return Ok(()) };
        let with_copies = self
            .state
            .run(|s| {
                Ok(s.instances()?
                    .into_iter()
                    .filter(|o| !o.value.host_failure.stale_copies.is_empty())
                    .collect::<Vec<_>>())
            })
            .await?;
        let timing = joined.timing();
        let term = self.config.term.current().0;
        for o in with_copies {
            let Ok(key) = o.key.parse::<InstanceRecordKey>() else { continue };
            let copies: Vec<String> = o
                .value
                .host_failure
                .stale_copies
                .iter()
                .filter(|c| joined.heartbeats.silence(&c.host).is_some_and(|s| s.live(now, timing.grace)))
                .map(|c| c.host.clone())
                .collect();
            for host in copies {
                let done = joined.heartbeats.destroy_stale_copy(&host, &key.0, term, o.value.incarnation).await;
                if let Err(e) = done {
                    concerns
                        .run(Concern::Scale)
                        .failures
                        .push(format!("instance {}: the copy on returned host {host} not destroyed yet: {e}", key.0));
                    continue;
                }
                let (k, rev, incarnation) = (key.clone(), o.revision, o.value.incarnation);
                let mut rec = o.value.clone();
                rec.host_failure.stale_copies.retain(|c| c.host != host);
                let msg = format!(
                    "instance {}: its copy on host {host}, which failed and returned, was destroyed (the instance runs at incarnation {incarnation} on {})",
                    k.0.id,
                    rec.host.as_deref().unwrap_or("this server")
                );
                let (g, n) = (k.0.group.to_string(), k.0.set.to_string());
                self.state
                    .run(move |s| {
                        let mut w = Writes::new();
                        w.put_instance(&k, &rec, Expected::Revision(rev))?;
                        w.activity(intents::event(now, &g, &n, "StaleCopyDestroyed", ActivityStatus::Succeeded, msg));
                        w.commit(s)?;
                        Ok(())
                    })
                    .await?;
                // One copy per record per pass: the record's revision moved.
                break;
            }
        }
        Ok(())
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
}

/// Splits what the driver lists into the recorded instances' power by set, and the instances
/// without a record (candidate orphans). Instances of a quarantined set are neither.
fn sort_observed(
    observed: Vec<herd_driver::ObservedInstance>,
    by_set: &BTreeMap<String, Vec<Versioned<InstanceRecord>>>,
    quarantined: &BTreeMap<String, Vec<Quarantined>>,
) -> (ObservedBySet, Vec<InstanceKey>) {
    let mut observed_by_set: ObservedBySet = BTreeMap::new();
    let mut unrecorded = Vec::new();
    // Each set's recorded ids, once: a lookup per observed instance, not a scan of its set.
    let ids: BTreeMap<&str, BTreeSet<InstanceId>> =
        by_set.iter().map(|(k, v)| (k.as_str(), v.iter().map(|r| r.value.instance_id).collect())).collect();
    for o in observed {
        let set_key = SetKey::of_instance(&o.key).to_string();
        if quarantined.contains_key(&set_key) {
            continue;
        }
        let known = ids.get(set_key.as_str()).is_some_and(|v| v.contains(&o.key.id));
        if known {
            observed_by_set.entry(set_key).or_default().insert(o.key.id, o.power);
        } else {
            unrecorded.push(o.key);
        }
    }
    (observed_by_set, unrecorded)
}

/// Instances on a host that could not be listed this pass are taken as their records say:
/// nothing is concluded from a host's silence (no "disappeared", no "booted"). Calls to such
/// a host fail fast and are retried; declaring the host's instances lost is the host-failure
/// handling's decision, not one pass's.
fn assume_as_recorded(
    observed_by_set: &mut ObservedBySet,
    by_set: &BTreeMap<String, Vec<Versioned<InstanceRecord>>>,
    unreachable: &BTreeSet<String>,
) {
    if unreachable.is_empty() {
        return;
    }
    for (set_key, records) in by_set {
        for r in records {
            let r = &r.value;
            if !r.host.as_ref().is_some_and(|h| unreachable.contains(h)) {
                continue;
            }
            let seen = observed_by_set.entry(set_key.clone()).or_default();
            seen.entry(r.instance_id).or_insert_with(|| assumed_power(r.state));
        }
    }
}

/// The observation that moves no instance in `state` (see `plan::observe`).
fn assumed_power(state: InstanceState) -> ObservedPower {
    use InstanceState as S;
    match state {
        S::Running | S::Stopping | S::Deallocating | S::Deleting => ObservedPower::Running,
        S::Stopped | S::Deallocated => ObservedPower::Stopped,
        S::Creating | S::Starting | S::Restarting | S::Reimaging | S::Redeploying | S::Failed => {
            ObservedPower::Starting
        }
    }
}

/// The failed driver calls of the pass, on the concern whose step each was.
fn note_failures(
    concerns: &mut PassConcerns,
    works: &[SetDraft<'_>],
    results: &[(usize, Step, Result<(), DriverError>)],
    orphan_results: &[(InstanceKey, Result<(), DriverError>)],
) {
    for (wi, step, r) in results {
        if let (Err(e), Some(w)) = (r, works.get(*wi)) {
            let id = step.instance().map(|i| i.to_string()).unwrap_or_default();
            let line = format!("{}/{} instance {id}: {}: {e}", w.set.group, w.set.name, results::step_name(step));
            concerns.run(Concern::of(step)).failures.push(line);
        }
    }
    for (k, r) in orphan_results {
        if let Err(e) = r {
            concerns.run(Concern::Orphans).failures.push(format!("could not remove orphan instance {k}: {e}"));
        }
    }
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
        Step::Redeploy { from, to: Some(_), .. } => {
            let relocated = driver.relocate(&spec()?, from, fence).await?;
            tracing::info!(instance = %key, %from, bytes = relocated.bytes, source_destroyed = relocated.source_destroyed, "instance moved");
            Ok(())
        }
        _ => Ok(()),
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
    fn id_lists_compress_ranges() {
        let ids: Vec<InstanceId> = [0, 1, 2, 4, 7, 8].into_iter().map(InstanceId).collect();
        assert_eq!(id_list(&ids), "0-2, 4, 7-8");
    }

    #[test]
    fn instances_on_an_unreachable_host_are_taken_as_recorded_and_others_are_not() {
        use crate::testkit::record;
        let on = |id: u64, state: InstanceState, host: &str| {
            let mut r = record(id, 1, state);
            r.host = Some(host.into());
            Versioned { key: format!("i{id}"), revision: 1, create_revision: 1, value: r }
        };
        let by_set = BTreeMap::from([(
            "rg/web".to_string(),
            vec![
                on(0, InstanceState::Running, "h3"),
                on(1, InstanceState::Creating, "h3"),
                on(2, InstanceState::Stopped, "h3"),
                on(3, InstanceState::Running, "h1"),
                on(4, InstanceState::Running, "h3"),
            ],
        )]);
        // Instance 4 was listed after all (its host answered a moment earlier): kept as seen.
        let mut seen: ObservedBySet =
            BTreeMap::from([("rg/web".into(), BTreeMap::from([(InstanceId(4), ObservedPower::Failed("x".into()))]))]);
        assume_as_recorded(&mut seen, &by_set, &BTreeSet::from(["h3".to_string()]));
        let s = &seen["rg/web"];
        assert_eq!(s[&InstanceId(0)], ObservedPower::Running);
        assert_eq!(s[&InstanceId(1)], ObservedPower::Starting);
        assert_eq!(s[&InstanceId(2)], ObservedPower::Stopped);
        assert_eq!(s[&InstanceId(4)], ObservedPower::Failed("x".into()));
        assert!(!s.contains_key(&InstanceId(3)), "a reachable host's silence about an instance is news");
    }
}
