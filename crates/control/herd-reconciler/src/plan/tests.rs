//! Table tests of the pure planner.

use super::*;
use crate::testkit::{model, record, stored_set, t0};
use herd_model::scale_set::Suspension;
use serde_json::json;

fn set(capacity: i64, zones: &[&str], overprovision: bool) -> StoredScaleSet {
    stored_set("web", 1, model(capacity, json!({"zones": zones, "overprovision": overprovision})))
}

fn rec(id: u64, state: InstanceState) -> InstanceRecord {
    record(id, 1, state)
}

fn zoned(mut r: InstanceRecord, z: &str) -> InstanceRecord {
    r.zone = Some(z.into());
    r
}

struct Case {
    set: StoredScaleSet,
    status: ScaleSetStatus,
    instances: Vec<InstanceRecord>,
    observed: BTreeMap<InstanceId, ObservedPower>,
    limits: Limits,
    drains: BTreeMap<InstanceId, DrainObservation>,
}

impl Case {
    fn new(set: StoredScaleSet, instances: Vec<InstanceRecord>) -> Self {
        let observed = instances
            .iter()
            .filter(|r| r.state == InstanceState::Running)
            .map(|r| (r.instance_id, ObservedPower::Running))
            .collect();
        let next = instances.iter().map(|r| r.instance_id.0 + 1).max().unwrap_or(0);
        Self {
            set,
            status: ScaleSetStatus { next_instance_id: next, ..Default::default() },
            instances,
            observed,
            limits: Limits::default(),
            drains: BTreeMap::new(),
        }
    }

    fn plan(&self) -> Vec<Step> {
        plan(&SetInput {
            in_place_extensions: true,
            set: &self.set,
            set_revision: 5,
            status: &self.status,
            instances: &self.instances,
            observed: &self.observed,
            now: t0(),
            limits: &self.limits,
            drains: &self.drains,
        })
        .steps
    }
}

fn creates(steps: &[Step]) -> Vec<NewInstance> {
    steps.iter().filter_map(|s| if let Step::Create(v) = s { Some(v.clone()) } else { None }).flatten().collect()
}

#[test]
fn scale_out_overprovisions_by_twenty_percent_and_spreads_zones() {
    let c = Case::new(set(10, &["1", "2", "3"], true), vec![]);
    let new = creates(&c.plan());
    assert_eq!(new.iter().filter(|n| !n.overprovisioned).count(), 10);
    assert_eq!(new.iter().filter(|n| n.overprovisioned).count(), 2);
    assert_eq!(new.iter().map(|n| n.id.0).collect::<Vec<_>>(), (0..12).collect::<Vec<_>>());
    let counted: Vec<_> = new.iter().filter(|n| !n.overprovisioned).collect();
    for z in ["1", "2", "3"] {
        let k = counted.iter().filter(|n| n.zone.as_deref() == Some(z)).count();
        assert!((3..=4).contains(&k), "zone {z} got {k}");
    }
}

#[test]
fn no_overprovision_when_disabled_and_ids_continue() {
    let mut c = Case::new(set(3, &[], false), vec![rec(0, InstanceState::Running)]);
    c.status.next_instance_id = 7;
    let new = creates(&c.plan());
    assert_eq!(new.iter().map(|n| (n.id.0, n.overprovisioned)).collect::<Vec<_>>(), [(7, false), (8, false)]);
}

#[test]
fn in_flight_cap_limits_creations_and_failed_count() {
    let mut c = Case::new(set(100, &[], false), vec![rec(0, InstanceState::Failed), rec(1, InstanceState::Creating)]);
    c.limits.max_in_flight_percent = 10;
    c.limits.min_in_flight = 1;
    // cap 10, two in flight (one Failed, one Creating) → 8 more.
    assert_eq!(creates(&c.plan()).len(), 8);
}

#[test]
fn ready_extra_swaps_with_unready_counted_then_surplus_is_deleted() {
    let mut extra = rec(3, InstanceState::Running);
    extra.overprovisioned = true;
    let mut c = Case::new(
        set(3, &[], true),
        vec![rec(0, InstanceState::Running), rec(1, InstanceState::Running), rec(2, InstanceState::Creating), extra],
    );
    c.observed.insert(InstanceId(2), ObservedPower::Starting);
    let steps = c.plan();
    assert!(steps.contains(&Step::Swap { promote: InstanceId(3), demote: InstanceId(2) }), "{steps:?}");
    assert!(creates(&steps).is_empty(), "a swap keeps capacity: {steps:?}");

    // All counted ready: the extra is surplus.
    let mut extra = rec(3, InstanceState::Creating);
    extra.overprovisioned = true;
    let c = Case::new(
        set(3, &[], true),
        vec![rec(0, InstanceState::Running), rec(1, InstanceState::Running), rec(2, InstanceState::Running), extra],
    );
    let steps = c.plan();
    assert!(steps
        .contains(&Step::MarkDelete { id: InstanceId(3), reason: "overprovisioned extra no longer needed".into() }));
    assert!(steps.contains(&Step::Destroy(InstanceId(3))));
}

#[test]
fn booting_extra_waits_while_counted_are_unready() {
    let mut extra = rec(1, InstanceState::Creating);
    extra.overprovisioned = true;
    let mut c = Case::new(set(1, &[], true), vec![rec(0, InstanceState::Creating), extra]);
    c.observed.insert(InstanceId(0), ObservedPower::Starting);
    c.observed.insert(InstanceId(1), ObservedPower::Starting);
    assert!(c.plan().is_empty());
}

#[test]
fn scale_in_balances_zones_then_highest_id() {
    let c = Case::new(
        set(3, &["1", "2"], false),
        vec![
            zoned(rec(0, InstanceState::Running), "1"),
            zoned(rec(1, InstanceState::Running), "2"),
            zoned(rec(2, InstanceState::Running), "1"),
            zoned(rec(3, InstanceState::Running), "2"),
            zoned(rec(4, InstanceState::Running), "1"),
        ],
    );
    let victims: Vec<_> = c
        .plan()
        .into_iter()
        .filter_map(|s| if let Step::MarkDelete { id, .. } = s { Some(id.0) } else { None })
        .collect();
    // Zone 1 has 3, zone 2 has 2: remove from zone 1 first (highest id 4), then zones are 2/2 and
    // the tie goes to the first zone again → 2.
    assert_eq!(victims, [4, 2]);
}

#[test]
fn scale_in_rules() {
    let all: Vec<_> = (0..5).map(|i| rec(i, InstanceState::Running)).collect();
    let refs: Vec<&InstanceRecord> = all.iter().collect();
    assert_eq!(scale_in_victims(&refs, 2, ScaleInRule::OldestVm, &[]), [InstanceId(0), InstanceId(1)]);
    assert_eq!(scale_in_victims(&refs, 2, ScaleInRule::NewestVm, &[]), [InstanceId(4), InstanceId(3)]);
    let mut mixed = all.clone();
    mixed[1].state = InstanceState::Failed;
    let refs: Vec<&InstanceRecord> = mixed.iter().collect();
    assert_eq!(scale_in_victims(&refs, 1, ScaleInRule::Default, &[])[0], InstanceId(1), "broken instances go first");
}

#[test]
fn default_scale_in_balances_fault_domains_then_takes_the_highest_id() {
    // Fault domains 0, 0, 0, 1: Default takes from domain 0 (its highest, 2), then the domains
    // are 2 and 1, so domain 0 again (1); NewestVM ignores domains.
    let all: Vec<_> = [0, 0, 0, 1]
        .into_iter()
        .enumerate()
        .map(|(i, fd)| InstanceRecord { platform_fault_domain: Some(fd), ..rec(i as u64, InstanceState::Running) })
        .collect();
    let refs: Vec<&InstanceRecord> = all.iter().collect();
    assert_eq!(scale_in_victims(&refs, 2, ScaleInRule::Default, &[]), [InstanceId(2), InstanceId(1)]);
    assert_eq!(scale_in_victims(&refs, 1, ScaleInRule::NewestVm, &[]), [InstanceId(3)]);
}

#[test]
fn observations_fold_into_records() {
    let mut c = Case::new(
        set(3, &[], false),
        vec![rec(0, InstanceState::Creating), rec(1, InstanceState::Running), rec(2, InstanceState::Stopping)],
    );
    c.set.model.sku.capacity = 3;
    c.observed.insert(InstanceId(0), ObservedPower::Running);
    c.observed.insert(InstanceId(1), ObservedPower::Failed("boom".into()));
    c.observed.insert(InstanceId(2), ObservedPower::Stopped);
    let steps = c.plan();
    assert!(steps.contains(&Step::Observe { id: InstanceId(0), event: Event::BootObserved, detail: None }));
    assert!(steps.contains(&Step::Observe { id: InstanceId(1), event: Event::Crashed, detail: Some("boom".into()) }));
    assert!(steps.contains(&Step::Observe { id: InstanceId(2), event: Event::StopDone, detail: None }));
}

#[test]
fn failed_instances_retry_only_after_backoff() {
    let mut r = rec(0, InstanceState::Failed);
    r.next_attempt_at = Some(t0() + Duration::seconds(10));
    let c = Case::new(set(1, &[], false), vec![r.clone()]);
    assert!(!c.plan().contains(&Step::Ensure(InstanceId(0))));
    r.next_attempt_at = Some(t0() - Duration::seconds(1));
    let c = Case::new(set(1, &[], false), vec![r]);
    assert!(c.plan().contains(&Step::Ensure(InstanceId(0))));
    let l = Limits::default();
    assert_eq!(l.backoff(1), Duration::seconds(2));
    assert_eq!(l.backoff(3), Duration::seconds(8));
    assert_eq!(l.backoff(30), Duration::minutes(5));
}

#[test]
fn circuit_breaker_suspends_and_resumes_on_change() {
    let mut c = Case::new(set(5, &[], false), vec![]);
    c.status.consecutive_create_failures = 10;
    let steps = c.plan();
    assert!(matches!(steps[0], Step::Suspend(_)));
    assert!(creates(&steps).is_empty());
    c.status.suspended = Some(Suspension { reason: "x".into(), at_revision: 5, since: t0() });
    assert!(c.plan().is_empty(), "suspended at the current revision: nothing happens");
    c.status.suspended = Some(Suspension { reason: "x".into(), at_revision: 4, since: t0() });
    let steps = c.plan();
    assert_eq!(steps[0], Step::Resume);
    assert_eq!(creates(&steps).len(), 5);
}

#[test]
fn power_goals_and_pending_actions() {
    let mut a = rec(0, InstanceState::Running);
    a.goal = InstanceGoal::Stopped;
    let mut b = rec(1, InstanceState::Stopped);
    b.goal = InstanceGoal::Deallocated;
    let mut c_ = rec(2, InstanceState::Deallocated);
    c_.goal = InstanceGoal::Running;
    let mut d = rec(3, InstanceState::Running);
    d.pending = Some(PendingAction::Restart);
    let mut e = rec(4, InstanceState::Stopped);
    e.goal = InstanceGoal::Stopped;
    e.pending = Some(PendingAction::Reimage);
    let mut c = Case::new(set(5, &[], false), vec![a, b, c_, d, e]);
    c.observed.insert(InstanceId(1), ObservedPower::Stopped);
    c.observed.insert(InstanceId(2), ObservedPower::Stopped);
    c.observed.insert(InstanceId(4), ObservedPower::Stopped);
    let steps = c.plan();
    for s in [
        Step::Stop(InstanceId(0)),
        Step::Deallocate(InstanceId(1)),
        Step::Start(InstanceId(2)),
        Step::Restart(InstanceId(3)),
        Step::Reimage(InstanceId(4)),
    ] {
        assert!(steps.contains(&s), "missing {s:?} in {steps:?}");
    }
}

#[test]
fn automatic_mode_reimages_old_generations_manual_does_not() {
    let mut s = set(2, &[], false);
    s.model_generation = 2;
    let c = Case::new(s.clone(), vec![rec(0, InstanceState::Running), rec(1, InstanceState::Running)]);
    assert!(c.plan().is_empty(), "Manual: nothing happens");
    s.model.upgrade_policy.mode = UpgradeMode::Automatic;
    let mut protected = rec(1, InstanceState::Running);
    protected.protect_from_scale_set_actions = true;
    let c = Case::new(s, vec![rec(0, InstanceState::Running), protected]);
    assert_eq!(c.plan(), [Step::Reimage(InstanceId(0))], "protected instances are left alone");
}

#[test]
fn extensions_run_in_place_only_on_running_instances_and_only_when_the_base_is_unchanged() {
    // A pending run happens on a running instance, not on a stopped one.
    let mut a = rec(0, InstanceState::Running);
    a.pending = Some(PendingAction::RunExtensions);
    let mut b = rec(1, InstanceState::Stopped);
    b.goal = InstanceGoal::Stopped;
    b.pending = Some(PendingAction::RunExtensions);
    let mut c = Case::new(set(2, &[], false), vec![a, b]);
    c.observed.insert(InstanceId(1), ObservedPower::Stopped);
    assert_eq!(c.plan(), [Step::RunExtensions(InstanceId(0))]);

    // Automatic mode: an extension-only change runs in place; a base change reimages; and an
    // instance that cannot run scripts in place (no guest agent) reimages too.
    let mut s = set(1, &[], false);
    s.model.upgrade_policy.mode = UpgradeMode::Automatic;
    s.model_generation = 2;
    let mut same = rec(0, InstanceState::Running);
    same.base_fingerprint = Some(s.model.base_fingerprint());
    let c = Case::new(s.clone(), vec![same.clone()]);
    assert_eq!(c.plan(), [Step::RunExtensions(InstanceId(0))]);
    let mut other = same.clone();
    other.base_fingerprint = Some("an older image".into());
    assert_eq!(Case::new(s.clone(), vec![other]).plan(), [Step::Reimage(InstanceId(0))]);
    let no_agent = Case::new(s, vec![same]);
    let steps = plan(&SetInput {
        in_place_extensions: false,
        set: &no_agent.set,
        set_revision: 5,
        status: &no_agent.status,
        instances: &no_agent.instances,
        observed: &no_agent.observed,
        now: t0(),
        limits: &no_agent.limits,
        drains: &no_agent.drains,
    })
    .steps;
    assert_eq!(steps, [Step::Reimage(InstanceId(0))]);
}

#[test]
fn deleting_set_destroys_everything_then_removes_itself() {
    let mut s = set(2, &[], false);
    s.deleting = true;
    let c = Case::new(s.clone(), vec![rec(0, InstanceState::Running)]);
    let steps = c.plan();
    assert!(steps.contains(&Step::Destroy(InstanceId(0))));
    assert!(!steps.contains(&Step::RemoveSet));
    let c = Case::new(s, vec![]);
    assert_eq!(c.plan(), [Step::RemoveSet]);
}

#[test]
fn crash_recovery_repeats_persisted_intents() {
    let mut a = rec(0, InstanceState::Creating);
    a.attempts = 1;
    let b = rec(1, InstanceState::Stopping);
    let mut d = rec(2, InstanceState::Deleting);
    d.goal = InstanceGoal::Deleted;
    let mut c = Case::new(set(2, &[], false), vec![a, b, d]);
    c.observed.insert(InstanceId(1), ObservedPower::Running);
    let steps = c.plan();
    assert!(steps.contains(&Step::Ensure(InstanceId(0))));
    assert!(steps.contains(&Step::Stop(InstanceId(1))));
    assert!(steps.contains(&Step::Destroy(InstanceId(2))));
}

#[test]
fn converged_set_plans_nothing() {
    let c = Case::new(set(2, &[], true), vec![rec(0, InstanceState::Running), rec(1, InstanceState::Running)]);
    assert!(c.plan().is_empty());
}

#[test]
fn a_boot_that_stays_starting_is_started_again() {
    let mut r = rec(0, InstanceState::Creating);
    r.state_since = t0() - Duration::seconds(5);
    let mut c = Case::new(set(1, &[], false), vec![r.clone()]);
    c.observed.insert(InstanceId(0), ObservedPower::Starting);
    assert!(c.plan().is_empty(), "a young boot is left alone");
    r.state_since = t0() - Duration::minutes(5);
    let mut c = Case::new(set(1, &[], false), vec![r]);
    c.observed.insert(InstanceId(0), ObservedPower::Starting);
    assert_eq!(c.plan(), [Step::Ensure(InstanceId(0))]);
}

fn pooled(mut s: StoredScaleSet) -> StoredScaleSet {
    let np: herd_model::scale_set::NetworkProfile = serde_json::from_value(json!({
        "networkInterfaceConfigurations": [{"name": "nic", "ipConfigurations": [{"name": "ip",
            "loadBalancerBackendAddressPools": [{"id": "/resourceGroups/rg/providers/Microsoft.Network/loadBalancers/lb/backendAddressPools/be"}]}]}]
    }))
    .unwrap();
    s.model.virtual_machine_profile.network_profile = Some(np);
    s
}

#[test]
fn pool_members_drain_before_disruption() {
    let mut r = rec(0, InstanceState::Running);
    r.goal = InstanceGoal::Stopped;
    // Not in a pool: stop at once.
    let c = Case::new(set(1, &[], false), vec![r.clone()]);
    assert_eq!(c.plan(), [Step::Stop(InstanceId(0))]);
    // In a pool: drain first, wait the drain timeout, then stop.
    let c = Case::new(pooled(set(1, &[], false)), vec![r.clone()]);
    assert_eq!(c.plan(), [Step::Drain(InstanceId(0))]);
    r.draining_since = Some(t0() - Duration::seconds(3));
    let c = Case::new(pooled(set(1, &[], false)), vec![r.clone()]);
    assert!(c.plan().is_empty(), "still inside the drain timeout");
    r.draining_since = Some(t0() - Duration::seconds(11));
    let c = Case::new(pooled(set(1, &[], false)), vec![r.clone()]);
    assert_eq!(c.plan(), [Step::Stop(InstanceId(0))]);
    // Called off: the instance serves again.
    r.goal = InstanceGoal::Running;
    let c = Case::new(pooled(set(1, &[], false)), vec![r]);
    assert_eq!(c.plan(), [Step::Undrain(InstanceId(0))]);
}

#[test]
fn scale_in_of_pool_members_drains_first() {
    let c = Case::new(pooled(set(1, &[], false)), vec![rec(0, InstanceState::Running), rec(1, InstanceState::Running)]);
    let steps = c.plan();
    assert!(steps.contains(&Step::MarkDelete { id: InstanceId(1), reason: "scale-in".into() }));
    assert!(steps.contains(&Step::Drain(InstanceId(1))), "{steps:?}");
    assert!(!steps.contains(&Step::Destroy(InstanceId(1))));
}

#[test]
fn a_drain_ends_early_once_the_load_balancer_reports_it_applied_and_idle() {
    let since = t0() - Duration::seconds(3);
    let mut r = rec(0, InstanceState::Running);
    r.goal = InstanceGoal::Stopped;
    r.draining_since = Some(since);
    let obs = |draining_since, open_connections| DrainObservation { draining_since, open_connections };
    // (what the load balancer reports, the plan 3 s into a 10 s drain)
    let cases: [(Option<DrainObservation>, &[Step], &str); 5] = [
        (None, &[], "no report (no rule running): the whole timeout"),
        (Some(obs(since, 1)), &[], "a connection is still open"),
        (Some(obs(since - Duration::seconds(20), 0)), &[], "idle, but that was an earlier drain"),
        (
            Some(obs(since - Duration::milliseconds(1), 0)),
            &[],
            "idle before this drain reached the data plane (another draining_since)",
        ),
        (Some(obs(since, 0)), &[Step::Stop(InstanceId(0))], "applied for this drain, nothing open"),
    ];
    for (report, want, why) in cases {
        let mut c = Case::new(pooled(set(1, &[], false)), vec![r.clone()]);
        c.drains.extend(report.map(|o| (InstanceId(0), o)));
        assert_eq!(c.plan(), want, "{why}");
    }
    // The timeout stays the upper bound: a connection still open after it does not hold the stop.
    r.draining_since = Some(t0() - Duration::seconds(11));
    let mut c = Case::new(pooled(set(1, &[], false)), vec![r.clone()]);
    c.drains.insert(InstanceId(0), obs(t0() - Duration::seconds(11), 4));
    assert_eq!(c.plan(), [Step::Stop(InstanceId(0))]);
    // A report about a drain does not start one: a serving member still drains first.
    let mut fresh = rec(0, InstanceState::Running);
    fresh.goal = InstanceGoal::Stopped;
    let mut c = Case::new(pooled(set(1, &[], false)), vec![fresh]);
    c.drains.insert(InstanceId(0), obs(since, 0));
    assert_eq!(c.plan(), [Step::Drain(InstanceId(0))]);
}
