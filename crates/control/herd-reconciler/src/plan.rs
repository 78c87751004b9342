//! The pure planner: desired state + observed state → steps. No I/O, no clock reads: the time
//! is an input, so backoff and windows are tested with fixed instants.

use chrono::{DateTime, Duration, Utc};
use herd_driver::ObservedPower;
use herd_model::{
    duration::parse_iso8601,
    health::DrainObservation,
    instance::{Event, InstanceGoal, InstanceRecord, InstanceState, PendingAction},
    scale_set::{ScaleInRule, ScaleSetStatus, StoredScaleSet, UpgradeMode},
    spot::{is_spot, EvictionPolicy, EvictionReason, ScheduledEventType},
    InstanceId,
};
use std::collections::{BTreeMap, BTreeSet};

pub mod apply;

/// Safety limits on provisioning.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Creations in flight (Creating or Failed, counted or extra) are capped at this share of
    /// the set's capacity...
    pub max_in_flight_percent: u64,
    /// ...but never below this many.
    pub min_in_flight: u64,
    /// Consecutive failed creations after which the set stops creating.
    pub failure_threshold: u32,
    /// First retry delay after a transient failure; doubles per attempt up to `backoff_max`.
    pub backoff_base: Duration,
    /// The longest retry delay, and the delay after a permanent failure (see
    /// [`Limits::retry_delay`]).
    pub backoff_max: Duration,
    /// Extra instances created on scale-out when `overprovision` is on.
    pub overprovision_percent: u64,
    /// An instance the driver still reports `Starting` after this long gets its (idempotent)
    /// start call again, in case the first one was lost in a crash.
    pub boot_recheck: Duration,
    /// How long at most an instance in a load-balancer pool stops receiving new connections
    /// before it is stopped, deleted, restarted or re-imaged; the drain ends earlier once the
    /// load balancer reports it out of rotation with no connection open
    /// ([`SetInput::drains`]).
    pub drain_timeout: Duration,
    /// A rolling-upgrade batch whose health is still unknown after this long is judged as it
    /// stands (unknown counts as unhealthy).
    pub batch_timeout: Duration,
    /// In a rolling upgrade, a fresh boot failing its probe counts as unhealthy only after this.
    pub health_grace: Duration,
    /// Automatic repairs in a row that bring no instance back to health before repairs
    /// suspend themselves (the circuit breaker).
    pub repair_max_attempts: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_in_flight_percent: 100,
            min_in_flight: 20,
            failure_threshold: 10,
            backoff_base: Duration::seconds(2),
            backoff_max: Duration::minutes(5),
            overprovision_percent: 20,
            boot_recheck: Duration::seconds(30),
            drain_timeout: Duration::seconds(10),
            batch_timeout: Duration::minutes(10),
            health_grace: Duration::seconds(30),
            repair_max_attempts: 3,
        }
    }
}

impl Limits {
    /// Delay before attempt number `attempts + 1`.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let factor = 1i64 << attempts.saturating_sub(1).min(20);
        (self.backoff_base * factor as i32).min(self.backoff_max)
    }

    /// Delay before attempt number `attempts + 1` after a failed driver call, by the failure's
    /// kind (`herd_driver::DriverError::retryable`): a transient one (an I/O hiccup, a busy
    /// host) backs off exponentially from `backoff_base`; a permanent one (an invalid spec, a
    /// missing image, a fenced call) cannot succeed by repetition, so it waits `backoff_max` at
    /// once instead of hammering the host at 2, 4, 8 s. (An instance action such as reimage, or
    /// a model change that plans new work, is how a user gets an earlier attempt.)
    pub fn retry_delay(&self, retryable: bool, attempts: u32) -> Duration {
        if retryable {
            self.backoff(attempts)
        } else {
            self.backoff_max
        }
    }
}

/// A new instance the plan wants created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInstance {
    pub id: InstanceId,
    pub zone: Option<String>,
    pub overprovisioned: bool,
    /// The host whose capacity it reserves (set by the capacity arbiter; none without hosts).
    pub host: Option<String>,
    /// Its fault domain index (set by the capacity arbiter; none when it did not run: no
    /// hosts, shown as 0).
    pub fault_domain: Option<u32>,
}

/// One thing to do. Record-only steps change the store; the others also call the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Allocate ids and write `Creating` records (then `Ensure` each, in the same pass).
    Create(Vec<NewInstance>),
    /// Apply an observed change to a record.
    Observe {
        id: InstanceId,
        event: Event,
        detail: Option<String>,
    },
    /// Set goal = Deleted (scale-in, overprovision surplus, set deletion).
    MarkDelete {
        id: InstanceId,
        reason: String,
    },
    /// An extra that became ready first takes the place of a counted one that is not ready yet.
    Swap {
        promote: InstanceId,
        demote: InstanceId,
    },
    /// Call `ensure` (first creation or a retry; a `Failed` record goes back to `Creating`).
    Ensure(InstanceId),
    Stop(InstanceId),
    Deallocate(InstanceId),
    Start(InstanceId),
    Restart(InstanceId),
    /// Restart with the model's new size, disks kept (a size-only change).
    Resize(InstanceId),
    /// Recreate from the current model (`update-instances`, `reimage`, Automatic upgrades).
    Reimage(InstanceId),
    /// Run the model's extensions in the running instance (after its first boot, or in place
    /// when only extensions changed). Runs in the background; see `extensions`.
    RunExtensions(InstanceId),
    /// Call `destroy`, then remove the record.
    Destroy(InstanceId),
    /// Take a serving instance out of its load-balancer pools before a disruptive step.
    Drain(InstanceId),
    /// The disruptive step was called off: the instance serves again.
    Undrain(InstanceId),
    /// A rolling-upgrade decision (see `rolling`).
    Rolling(crate::rolling::RollingStep),
    /// An automatic-repair decision (see `repair`).
    Repair(crate::repair::RepairStep),
    /// Post a scheduled event to the instance (its metadata endpoint shows it) ahead of the
    /// action it announces.
    PostEvent {
        id: InstanceId,
        kind: ScheduledEventType,
        notice: Duration,
        reason: Option<EvictionReason>,
        description: String,
    },
    /// A Spot instance's Preempt notice is over (or acknowledged): apply the eviction policy.
    Evict {
        id: InstanceId,
        reason: EvictionReason,
        policy: EvictionPolicy,
    },
    /// An evicted (deallocated) Spot instance gets its room back and starts (spotRestorePolicy).
    Restore(InstanceId),
    /// Reserve compute on a host for an instance about to start.
    Assign {
        id: InstanceId,
        host: Option<String>,
    },
    /// What keeps the set below its capacity on the hosts, and whether it is only waiting for
    /// announced evictions (None: nothing any more).
    CapacityNote(Option<(String, bool)>),
    /// Where new instances go other than the model says (None: nowhere any more); see
    /// `ScaleSetStatus::placement_note`.
    PlacementNote(Option<String>),
    /// Host failure (see `host_failure`): the instance's host went silent past `host_grace`
    /// (true: health Unknown, out of rotation) or is heard again (false).
    HostUnreachable {
        id: InstanceId,
        unreachable: bool,
    },
    /// A Regular instance whose host failed is re-created on another host of its zone (`to`,
    /// chosen by the capacity arbiter; None until then), at a new incarnation.
    Replace {
        id: InstanceId,
        from: String,
        to: Option<String>,
    },
    /// A cold move to another host of its zone, disks and all (see `redeploy`): `to` is
    /// chosen by the capacity arbiter (None until then); with `to`, the driver's `relocate`.
    Redeploy {
        id: InstanceId,
        from: String,
        to: Option<String>,
    },
    /// A Spot instance whose host failed is evicted instead.
    LoseSpot {
        id: InstanceId,
        from: String,
    },
    /// Stop creating: too many consecutive failures.
    Suspend(String),
    /// The set changed since suspension: try again.
    Resume,
    /// The set is being deleted and has no instances left: remove it.
    RemoveSet,
}

impl Step {
    /// The instance this step acts on, if it is a per-instance step.
    pub fn instance(&self) -> Option<InstanceId> {
        match self {
            Step::Observe { id, .. }
            | Step::MarkDelete { id, .. }
            | Step::PostEvent { id, .. }
            | Step::Evict { id, .. }
            | Step::Assign { id, .. }
            | Step::Drain(id)
            | Step::Undrain(id)
            | Step::Restore(id)
            | Step::Redeploy { id, .. }
            | Step::RunExtensions(id) => Some(*id),
            _ => self.driver_instance(),
        }
    }

    /// True for steps that call the driver.
    pub fn calls_driver(&self) -> bool {
        self.driver_instance().is_some()
    }

    /// The instance of a step that calls the driver; `None` for every other step.
    fn driver_instance(&self) -> Option<InstanceId> {
        match self {
            Step::Ensure(id)
            | Step::Stop(id)
            | Step::Deallocate(id)
            | Step::Start(id)
            | Step::Restart(id)
            | Step::Resize(id)
            | Step::Reimage(id)
            | Step::Destroy(id)
            | Step::Redeploy { id, to: Some(_), .. } => Some(*id),
            _ => None,
        }
    }
}

/// The steps for one set, in the order they must be applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
}

/// Everything the planner looks at for one set.
#[derive(Debug, Clone)]
pub struct SetInput<'a> {
    pub set: &'a StoredScaleSet,
    pub set_revision: u64,
    pub status: &'a ScaleSetStatus,
    /// This set's records, any order.
    pub instances: &'a [InstanceRecord],
    /// What the driver reports for this set's instances; absent = the driver has nothing.
    pub observed: &'a BTreeMap<InstanceId, ObservedPower>,
    pub now: DateTime<Utc>,
    pub limits: &'a Limits,
    /// Extensions can run in a running instance (the driver can, and the image has the guest
    /// agent where the driver needs one); otherwise an extension change means a reimage.
    pub in_place_extensions: bool,
    /// What the load balancer reports about this set's draining instances (none: it reports
    /// nothing, and a drain lasts `drain_timeout`).
    pub drains: &'a BTreeMap<InstanceId, DrainObservation>,
}

fn is_ready(r: &InstanceRecord) -> bool {
    r.state == InstanceState::Running
}

/// Plans one pass for one set. Pure: same input, same plan.
pub fn plan(input: &SetInput<'_>) -> Plan {
    let mut steps = Vec::new();
    let set = input.set;
    let mut touched: BTreeSet<InstanceId> = BTreeSet::new();

    // 1. Fold observations into records.
    for r in input.instances {
        if let Some(step) = observe(r, input.observed.get(&r.instance_id)) {
            touched.insert(r.instance_id);
            steps.push(step);
        }
    }

    // 2. Circuit breaker.
    let suspended = match &input.status.suspended {
        Some(s) if s.at_revision != input.set_revision => {
            steps.push(Step::Resume);
            false
        }
        Some(_) => true,
        None if input.status.consecutive_create_failures >= input.limits.failure_threshold => {
            steps.push(Step::Suspend(format!(
                "{} consecutive instance creations failed; creation is suspended until the scale set is changed",
                input.status.consecutive_create_failures
            )));
            true
        }
        None => false,
    };

    // 3. Membership: deletion, overprovisioning surplus, scale-out and scale-in.
    let live: Vec<&InstanceRecord> = input.instances.iter().filter(|r| r.goal != InstanceGoal::Deleted).collect();
    let mut marked: BTreeSet<InstanceId> = BTreeSet::new();
    if set.deleting {
        for r in &live {
            steps.push(Step::MarkDelete { id: r.instance_id, reason: "scale set deleted".into() });
            marked.insert(r.instance_id);
        }
        if input.instances.is_empty() {
            steps.push(Step::RemoveSet);
        }
    } else {
        membership(input, &live, suspended, &mut steps, &mut marked);
    }

    // 4. Per-instance actions toward each record's goal.
    for r in input.instances {
        if touched.contains(&r.instance_id) {
            continue;
        }
        let goal = if marked.contains(&r.instance_id) { InstanceGoal::Deleted } else { r.goal };
        if let Some(step) = act(input, r, goal, suspended) {
            steps.push(step);
        }
    }
    Plan { steps }
}

/// Observation → record transitions. Returns at most one step per instance.
fn observe(r: &InstanceRecord, seen: Option<&ObservedPower>) -> Option<Step> {
    use InstanceState as S;
    use ObservedPower as O;
    let id = r.instance_id;
    let ev = |event: Event, detail: Option<String>| Some(Step::Observe { id, event, detail });
    match (r.state, seen) {
        (S::Creating | S::Starting | S::Restarting, Some(O::Running)) => ev(Event::BootObserved, None),
        (S::Reimaging, Some(O::Running)) if r.pending.is_none() => ev(Event::BootObserved, None),
        // A move's result was written (`moving` cleared): the copy on the new host is the one.
        (S::Redeploying, Some(O::Running)) if r.moving.is_none() => ev(Event::BootObserved, None),
        (S::Redeploying, Some(O::Failed(m))) if r.moving.is_none() => ev(Event::ProvisionFailed, Some(m.clone())),
        (S::Creating | S::Starting | S::Restarting, Some(O::Failed(m))) => ev(Event::ProvisionFailed, Some(m.clone())),
        (S::Reimaging, Some(O::Failed(m))) if r.pending.is_none() => ev(Event::ProvisionFailed, Some(m.clone())),
        (S::Running, Some(O::Failed(m))) => ev(Event::Crashed, Some(m.clone())),
        (S::Running, Some(O::Stopped)) if r.goal == InstanceGoal::Running && r.pending.is_none() => {
            ev(Event::Crashed, Some("the instance stopped on its own".into()))
        }
        (S::Running, None) if r.goal == InstanceGoal::Running && r.pending.is_none() => {
            ev(Event::Crashed, Some("the instance disappeared from its host".into()))
        }
        (S::Stopping, Some(O::Stopped)) => ev(Event::StopDone, None),
        (S::Deallocating, Some(O::Stopped)) => ev(Event::DeallocateDone, None),
        _ => None,
    }
}

fn in_flight(r: &InstanceRecord) -> bool {
    r.goal != InstanceGoal::Deleted && matches!(r.state, InstanceState::Creating | InstanceState::Failed)
}

fn membership(
    input: &SetInput<'_>,
    live: &[&InstanceRecord],
    suspended: bool,
    steps: &mut Vec<Step>,
    marked: &mut BTreeSet<InstanceId>,
) {
    let set = input.set;
    // A surge batch runs its new instances beside the old ones until they are healthy.
    let surge = input.status.rolling_upgrade.as_ref().map_or(0, |u| u.surge_extra());
    let capacity = (set.model.capacity() as usize + surge).saturating_sub(eviction_gap(input) as usize);
    let mut counted: Vec<&InstanceRecord> = live.iter().copied().filter(|r| !r.overprovisioned).collect();
    let extras: Vec<&InstanceRecord> = live.iter().copied().filter(|r| r.overprovisioned).collect();

    // Overprovisioning: the first ones ready are kept. A ready extra swaps places with a counted
    // instance that is not ready yet; once the counted ones are all ready (or none is still
    // creating), the remaining extras are surplus.
    let mut ready_extras: Vec<&InstanceRecord> = extras.iter().copied().filter(|r| is_ready(r)).collect();
    let mut swapped: BTreeSet<InstanceId> = BTreeSet::new();
    let mut not_ready: Vec<&InstanceRecord> = counted
        .iter()
        .copied()
        .filter(|r| matches!(r.state, InstanceState::Creating | InstanceState::Failed))
        .collect();
    not_ready.sort_by_key(|r| std::cmp::Reverse(r.instance_id));
    while let (Some(extra), false) = (ready_extras.first().copied(), not_ready.is_empty()) {
        // Prefer a counted instance in the extra's zone, so zone balance holds.
        let pos = not_ready.iter().position(|c| c.zone == extra.zone).unwrap_or(0);
        let demote = not_ready.remove(pos);
        ready_extras.remove(0);
        steps.push(Step::Swap { promote: extra.instance_id, demote: demote.instance_id });
        swapped.insert(extra.instance_id);
        swapped.insert(demote.instance_id);
    }
    // An extra still booting may yet replace a counted instance that is not ready; a failed
    // extra, or any extra once every counted instance is ready, is surplus.
    let counted_unready = counted.iter().any(|r| {
        !swapped.contains(&r.instance_id) && matches!(r.state, InstanceState::Creating | InstanceState::Failed)
    });
    for e in extras.iter().filter(|e| !swapped.contains(&e.instance_id)) {
        if !counted_unready || e.state == InstanceState::Failed {
            steps.push(Step::MarkDelete { id: e.instance_id, reason: "overprovisioned extra no longer needed".into() });
            marked.insert(e.instance_id);
        }
    }
    // After swaps the counted membership changed; recompute it.
    if !swapped.is_empty() {
        // Counted after the swaps: a promoted extra, or a counted instance not demoted.
        counted = live.iter().copied().filter(|r| r.overprovisioned == swapped.contains(&r.instance_id)).collect();
    }

    if counted.len() < capacity && !suspended {
        let need = (capacity - counted.len()) as u64;
        let cap =
            (set.model.capacity() * input.limits.max_in_flight_percent).div_ceil(100).max(input.limits.min_in_flight);
        let busy = live.iter().filter(|r| in_flight(r)).count() as u64;
        let n = need.min(cap.saturating_sub(busy));
        if n > 0 {
            let extra =
                if set.model.overprovision { (n * input.limits.overprovision_percent).div_ceil(100) } else { 0 };
            let zones = place(&set.model.zones, &counted, n as usize);
            let mut next = input.status.next_instance_id;
            let mut new = Vec::new();
            for zone in zones {
                new.push(NewInstance {
                    id: InstanceId(next),
                    zone,
                    overprovisioned: false,
                    host: None,
                    fault_domain: None,
                });
                next += 1;
            }
            let extra_zones = place(&set.model.zones, &counted, extra as usize);
            for zone in extra_zones {
                new.push(NewInstance {
                    id: InstanceId(next),
                    zone,
                    overprovisioned: true,
                    host: None,
                    fault_domain: None,
                });
                next += 1;
            }
            steps.push(Step::Create(new));
        }
    } else if counted.len() > capacity {
        let victims =
            scale_in_victims(&counted, counted.len() - capacity, set.model.scale_in_policy.rules[0], &set.model.zones);
        for id in victims {
            steps.push(Step::MarkDelete { id, reason: "scale-in".into() });
            marked.insert(id);
        }
    }
}

/// Spot instances evicted with `Delete` leave a gap the set does not fill again: at once without
/// `spotRestorePolicy`, or once its `restoreTimeout` has passed. Any change to the set (a new
/// revision, such as a `scale`) closes the gap.
fn eviction_gap(input: &SetInput<'_>) -> u64 {
    let Some(gap) = &input.status.spot_eviction_gap else { return 0 };
    if gap.at_revision != input.set_revision {
        return 0;
    }
    match restore_window(input.set) {
        Some(window) if input.now < gap.since + window => 0,
        _ => gap.deleted,
    }
}

/// How long evicted instances are restored for, when `spotRestorePolicy` is on.
pub fn restore_window(set: &StoredScaleSet) -> Option<Duration> {
    let p = set.model.spot_restore_policy.as_ref().filter(|p| p.enabled)?;
    parse_iso8601(&p.restore_timeout)
}

pub use herd_state::placement::place;

/// Picks `n` instances to remove. Instances that never became ready go first; then, as Azure
/// does, zones are balanced (take from the fullest zone), `Default` then balances fault domains
/// within it (take from the fullest), and the rule picks: `Default` and `NewestVM` the highest
/// id, `OldestVM` the lowest. Protected instances
/// (`protectFromScaleIn` or `protectFromScaleSetActions`) are never picked, as in Azure, so the
/// set may stay above capacity.
pub fn scale_in_victims(counted: &[&InstanceRecord], n: usize, rule: ScaleInRule, zones: &[String]) -> Vec<InstanceId> {
    let mut pool: Vec<&InstanceRecord> =
        counted.iter().copied().filter(|r| !r.protect_from_scale_in && !r.protect_from_scale_set_actions).collect();
    let mut out = Vec::new();
    for _ in 0..n {
        if pool.is_empty() {
            break;
        }
        let unready: Vec<usize> = (0..pool.len()).filter(|&i| !is_ready(pool[i])).collect();
        let pick = if let Some(&i) = unready.iter().max_by_key(|&&i| pool[i].instance_id) {
            i
        } else {
            let zone_of = |r: &InstanceRecord| r.zone.clone();
            let fullest = if zones.is_empty() {
                None
            } else {
                let mut best: Option<(usize, Option<String>)> = None;
                for z in zones {
                    let c = pool.iter().filter(|r| r.zone.as_deref() == Some(z.as_str())).count();
                    if best.as_ref().is_none_or(|(bc, _)| c > *bc) {
                        best = Some((c, Some(z.clone())));
                    }
                }
                best.and_then(|(_, z)| z)
            };
            let mut in_zone: Vec<usize> =
                (0..pool.len()).filter(|&i| fullest.is_none() || zone_of(pool[i]) == fullest).collect();
            if rule == ScaleInRule::Default {
                // Then fault domains (best effort): only the zone's fullest ones.
                let fd = |i: usize| pool[i].platform_fault_domain.unwrap_or(0);
                let mut per: BTreeMap<u32, usize> = BTreeMap::new();
                for &i in &in_zone {
                    *per.entry(fd(i)).or_default() += 1;
                }
                let most = per.values().copied().max().unwrap_or(0);
                in_zone.retain(|&i| per.get(&fd(i)) == Some(&most));
            }
            let in_zone = in_zone.into_iter();
            let chosen = match rule {
                ScaleInRule::OldestVm => in_zone.min_by_key(|&i| pool[i].instance_id),
                ScaleInRule::Default | ScaleInRule::NewestVm => in_zone.max_by_key(|&i| pool[i].instance_id),
            };
            chosen.unwrap_or(0)
        };
        out.push(pool.remove(pick).instance_id);
    }
    out
}

/// True when the set's instances join a load-balancer backend pool.
fn in_pool(set: &StoredScaleSet) -> bool {
    set.model
        .virtual_machine_profile
        .network_profile
        .as_ref()
        .and_then(|n| n.primary())
        .is_some_and(|ip| !ip.load_balancer_backend_address_pools.is_empty())
}

/// The next step for one record, with draining: a serving pool member first leaves its pools
/// (`Drain`) and gets `drain_timeout` for open connections before anything disrupts it, or less
/// when the load balancer reports that drain applied and no connection left
/// ([`DrainObservation::drained`]). A member the load balancer reports nothing about (its
/// pool has no rule running, or the report is about an earlier drain) waits the whole timeout.
fn act(input: &SetInput<'_>, r: &InstanceRecord, goal: InstanceGoal, suspended: bool) -> Option<Step> {
    let id = r.instance_id;
    let vp = &input.set.model.virtual_machine_profile;
    // A Spot instance whose Preempt notice is over (or acknowledged) is evicted.
    if goal != InstanceGoal::Deleted && r.eviction.is_none() && is_spot(vp.priority) {
        if let Some(ev) = r.scheduled_events.iter().find(|e| e.event_type == ScheduledEventType::Preempt) {
            if ev.due(input.now) {
                return Some(Step::Evict {
                    id,
                    reason: ev.reason.unwrap_or_default(),
                    policy: vp.eviction_policy.unwrap_or_default(),
                });
            }
        }
    }
    let step = act_on(input, r, goal, suspended);
    // Terminate notification: a Regular instance about to be deleted first gets a Terminate
    // event, and is kept until the guest acknowledges it or `notBeforeTimeout` passes.
    if matches!(step, Some(Step::Destroy(_))) && r.state == InstanceState::Running && !r.overprovisioned {
        if let Some(notice) = vp.scheduled_events_profile.as_ref().and_then(|p| p.terminate_notice()) {
            match r.scheduled_events.iter().find(|e| e.event_type == ScheduledEventType::Terminate) {
                None => {
                    return Some(Step::PostEvent {
                        id,
                        kind: ScheduledEventType::Terminate,
                        notice,
                        reason: None,
                        description: format!(
                            "instance {id} will be deleted ({})",
                            r.delete_reason.as_deref().unwrap_or("deletion")
                        ),
                    })
                }
                Some(e) if !e.due(input.now) => return None,
                Some(_) => {}
            }
        }
    }
    // An in-place extension run that upgrades a serving instance (its script may restart the
    // app) drains it too; the first run on a fresh boot does not (it is not serving yet).
    let in_place_upgrade =
        matches!(step, Some(Step::RunExtensions(_))) && r.model_generation < input.set.model_generation;
    // Every driver step but a create or a start (stop, deallocate, restart, resize, reimage,
    // destroy) takes it out of service.
    let disruptive = in_place_upgrade
        || step.as_ref().is_some_and(|s| {
            (s.calls_driver() || matches!(s, Step::Redeploy { .. })) && !matches!(s, Step::Ensure(_) | Step::Start(_))
        });
    if !disruptive {
        let serving = r.state == InstanceState::Running && goal != InstanceGoal::Deleted;
        return if r.draining_since.is_some() && serving && step.is_none() { Some(Step::Undrain(id)) } else { step };
    }
    if r.state == InstanceState::Running && in_pool(input.set) {
        match r.draining_since {
            None => return Some(Step::Drain(id)),
            Some(t)
                if input.now < t + input.limits.drain_timeout
                    && !input.drains.get(&id).is_some_and(|o| o.drained(t)) =>
            {
                return None
            }
            Some(_) => {}
        }
    }
    step
}

/// The driver action that moves one record toward its goal, if any.
fn act_on(input: &SetInput<'_>, r: &InstanceRecord, goal: InstanceGoal, suspended: bool) -> Option<Step> {
    use InstanceState as S;
    let id = r.instance_id;
    let seen = input.observed.get(&id);
    // After a failed driver call, nothing is tried again before the backoff has passed.
    if r.next_attempt_at.is_some_and(|t| input.now < t) {
        return None;
    }
    if goal == InstanceGoal::Deleted || r.state == S::Deleting {
        return Some(Step::Destroy(id));
    }
    if let Some(step) = crate::redeploy::next_step(input, r) {
        return Some(step);
    }
    if r.pending == Some(PendingAction::Reimage) {
        return Some(Step::Reimage(id));
    }
    match r.state {
        S::Creating if seen.is_none() => (!suspended).then_some(Step::Ensure(id)),
        S::Creating | S::Starting
            if matches!(seen, Some(ObservedPower::Starting))
                && input.now - r.state_since > input.limits.boot_recheck =>
        {
            Some(if r.state == S::Creating { Step::Ensure(id) } else { Step::Start(id) })
        }
        S::Failed if goal == InstanceGoal::Running => (!suspended).then_some(Step::Ensure(id)),
        S::Failed if goal == InstanceGoal::Stopped => Some(Step::Stop(id)),
        S::Failed if goal == InstanceGoal::Deallocated => Some(Step::Deallocate(id)),
        S::Running | S::Starting if goal == InstanceGoal::Stopped => Some(Step::Stop(id)),
        S::Running | S::Starting | S::Stopped if goal == InstanceGoal::Deallocated => Some(Step::Deallocate(id)),
        S::Stopped | S::Deallocated if goal == InstanceGoal::Running => Some(Step::Start(id)),
        // spotRestorePolicy: an evicted instance asks for its room back within restoreTimeout
        // (the capacity arbiter drops the step while there is no room or the price is too high).
        S::Deallocated
            if goal == InstanceGoal::Deallocated
                && r.eviction
                    .as_ref()
                    .is_some_and(|e| restore_window(input.set).is_some_and(|w| input.now < e.at + w)) =>
        {
            Some(Step::Restore(id))
        }
        // Crash recovery: an intent was persisted but the driver call may not have happened.
        S::Stopping if !matches!(seen, Some(ObservedPower::Stopped)) => Some(Step::Stop(id)),
        S::Deallocating if !matches!(seen, Some(ObservedPower::Stopped)) => Some(Step::Deallocate(id)),
        S::Starting if matches!(seen, Some(ObservedPower::Stopped) | None) => Some(Step::Start(id)),
        S::Running if r.pending == Some(PendingAction::Restart) => Some(Step::Restart(id)),
        S::Restarting if r.pending == Some(PendingAction::Restart) => Some(Step::Restart(id)),
        S::Running | S::Restarting if r.pending == Some(PendingAction::Resize) => Some(Step::Resize(id)),
        S::Running if r.pending == Some(PendingAction::RunExtensions) => Some(Step::RunExtensions(id)),
        S::Running
            if input.set.model.upgrade_policy.mode == UpgradeMode::Automatic
                && r.model_generation < input.set.model_generation
                && !r.protect_from_scale_set_actions
                && input.status.upgrade_request.is_none()
                && input.status.rolling_upgrade.as_ref().is_none_or(|u| !u.state.is_active()) =>
        {
            Some(match r.upgrade_action(input.set, input.in_place_extensions) {
                PendingAction::RunExtensions => Step::RunExtensions(id),
                PendingAction::Resize => Step::Resize(id),
                _ => Step::Reimage(id),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
