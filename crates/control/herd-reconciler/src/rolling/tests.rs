//! Table tests of the rolling planner.

use super::*;
use crate::testkit::{model, record, stored_set, t0};
use herd_model::{scale_set::StoredScaleSet, upgrade::RollingBatch};
use serde_json::json;

fn set(capacity: i64, generation: u64, policy: serde_json::Value) -> StoredScaleSet {
    let upgrade = json!({"upgradePolicy": {"mode": "Rolling", "rollingUpgradePolicy": policy}});
    stored_set("web", generation, model(capacity, upgrade))
}

fn rec(id: u64, generation: u64) -> InstanceRecord {
    record(id, generation, InstanceState::Running)
}

struct Case {
    set: StoredScaleSet,
    upgrade: Option<RollingUpgrade>,
    request: Option<UpgradeRequest>,
    instances: Vec<InstanceRecord>,
    health: BTreeMap<InstanceId, Health>,
    now: DateTime<Utc>,
}

impl Case {
    fn new(set: StoredScaleSet, instances: Vec<InstanceRecord>) -> Self {
        let health = instances.iter().map(|r| (r.instance_id, Health::Healthy)).collect();
        Self { set, upgrade: None, request: None, instances, health, now: t0() }
    }

    fn plan(&self) -> Vec<RollingStep> {
        plan_rolling(&RollingInput {
            set: &self.set,
            upgrade: self.upgrade.as_ref(),
            request: self.request.as_ref(),
            instances: &self.instances,
            health: &self.health,
            has_health_source: true,
            in_place_extensions: true,
            now: self.now,
            batch_timeout: Duration::minutes(10),
            health_grace: Duration::seconds(30),
        })
    }

    /// Applies the steps the way the executor does (statuses only; instance moves by hand).
    fn apply(&mut self, steps: &[RollingStep]) {
        for s in steps {
            match s {
                RollingStep::Begin(u) => self.upgrade = Some((**u).clone()),
                RollingStep::StartBatch(b) => {
                    let u = self.upgrade.as_mut().unwrap();
                    u.batches.push(RollingBatch {
                        instances: b.iter().map(|(i, _)| *i).collect(),
                        started_at: self.now,
                        finished_at: None,
                        unhealthy: vec![],
                    });
                }
                RollingStep::FinishBatch { unhealthy } => {
                    let u = self.upgrade.as_mut().unwrap();
                    let b = u.batches.last_mut().unwrap();
                    b.finished_at = Some(self.now);
                    b.unhealthy = unhealthy.clone();
                    u.failed.extend(unhealthy.iter().copied());
                }
                RollingStep::State { state, .. } => self.upgrade.as_mut().unwrap().state = *state,
                _ => {}
            }
        }
    }

    /// Upgrades the instances of the batch in flight, healthy or not.
    fn upgrade_batch(&mut self, healthy: bool) {
        let target = self.set.model_generation;
        let ids = self.upgrade.as_ref().unwrap().current_batch().unwrap().instances.clone();
        for r in &mut self.instances {
            if ids.contains(&r.instance_id) {
                r.model_generation = target;
                self.health.insert(r.instance_id, if healthy { Health::Healthy } else { Health::Unhealthy });
            }
        }
    }
}

fn batch_of(steps: &[RollingStep]) -> Vec<u64> {
    steps
        .iter()
        .find_map(
            |s| if let RollingStep::StartBatch(b) = s { Some(b.iter().map(|(i, _)| i.0).collect()) } else { None },
        )
        .unwrap_or_default()
}

#[test]
fn a_model_change_rolls_out_in_batches_of_twenty_percent() {
    let mut c = Case::new(set(6, 2, json!({})), (0..6).map(|i| rec(i, 1)).collect());
    let s = c.plan();
    assert!(matches!(&s[0], RollingStep::Begin(u) if u.batch_size == 1 && u.from_generation == 1), "{s:?}");
    c.apply(&s);
    let mut batches = vec![];
    for _ in 0..6 {
        let s = c.plan();
        let b = batch_of(&s);
        assert_eq!(b.len(), 1, "one instance per batch: {s:?}");
        batches.push(b[0]);
        c.apply(&s);
        assert!(c.plan().is_empty(), "the batch is in flight: wait");
        c.upgrade_batch(true);
        let s = c.plan();
        assert!(matches!(s[0], RollingStep::FinishBatch { .. }), "{s:?}");
        c.apply(&s);
    }
    assert_eq!(batches, [0, 1, 2, 3, 4, 5]);
    assert_eq!(c.upgrade.as_ref().unwrap().state, RollingState::Completed);
}

#[test]
fn an_unhealthy_batch_aborts_and_rolls_back_when_asked() {
    for rollback in [false, true] {
        let mut c = Case::new(
            set(5, 2, json!({"rollbackFailedInstancesOnPolicyBreach": rollback})),
            (0..5).map(|i| rec(i, 1)).collect(),
        );
        let s = c.plan();
        c.apply(&s);
        let s = c.plan();
        assert_eq!(batch_of(&s), [0]);
        c.apply(&s);
        c.upgrade_batch(false);
        assert!(c.plan().is_empty(), "a fresh boot gets the health grace before it counts as unhealthy");
        c.now += Duration::seconds(30);
        let s = c.plan();
        assert!(matches!(&s[0], RollingStep::FinishBatch { unhealthy } if unhealthy == &[InstanceId(0)]), "{s:?}");
        if rollback {
            assert!(
                matches!(&s[1], RollingStep::Rollback { reason } if reason.contains("maxUnhealthyUpgradedInstancePercent")),
                "{s:?}"
            );
        } else {
            assert!(matches!(&s[1], RollingStep::State { state: RollingState::Faulted, .. }), "{s:?}");
            c.apply(&s);
            assert!(c.plan().is_empty(), "a faulted upgrade does nothing more");
        }
    }
}

#[test]
fn too_many_unhealthy_instances_stop_the_next_batch() {
    let mut c = Case::new(set(5, 2, json!({"maxUnhealthyInstancePercent": 20})), (0..5).map(|i| rec(i, 1)).collect());
    c.health.insert(InstanceId(3), Health::Unhealthy);
    c.health.insert(InstanceId(4), Health::Unhealthy);
    let s = c.plan();
    c.apply(&s);
    let s = c.plan();
    assert!(
        matches!(&s[0], RollingStep::State { state: RollingState::Faulted, reason: Some(r) } if r.contains("before the next batch")),
        "{s:?}"
    );
}

#[test]
fn canary_pauses_until_resumed_and_pause_between_batches_waits() {
    let mut c = Case::new(set(5, 2, json!({"pauseTimeBetweenBatches": "PT1M"})), (0..5).map(|i| rec(i, 1)).collect());
    c.request = Some(UpgradeRequest::Start { canary: Some(1), pause: true, reimage: false });
    // Rolling mode begins by itself on the model change; the request then only sets the canary.
    c.set.model.upgrade_policy.mode = UpgradeMode::Manual;
    let s = c.plan();
    assert!(matches!(&s[1], RollingStep::Begin(u) if u.canary == Some(1) && u.pause_after_canary), "{s:?}");
    c.apply(&s);
    c.request = None;
    let s = c.plan();
    assert_eq!(batch_of(&s), [0]);
    c.apply(&s);
    c.upgrade_batch(true);
    let s = c.plan();
    assert!(matches!(&s[1], RollingStep::State { state: RollingState::Paused, .. }), "{s:?}");
    c.apply(&s);
    assert!(c.plan().is_empty(), "paused");
    c.request = Some(UpgradeRequest::Resume);
    let s = c.plan();
    c.apply(&s);
    c.request = None;
    assert!(c.plan().is_empty(), "the pause between batches is not over");
    c.now += Duration::minutes(1);
    assert_eq!(batch_of(&c.plan()), [1]);
}

#[test]
fn protected_and_stopped_instances_are_left_alone() {
    let mut p = rec(0, 1);
    p.protect_from_scale_set_actions = true;
    let mut stopped = rec(1, 1);
    stopped.state = InstanceState::Stopped;
    stopped.goal = InstanceGoal::Stopped;
    let mut c = Case::new(set(3, 2, json!({})), vec![p, stopped, rec(2, 1)]);
    let s = c.plan();
    c.apply(&s);
    assert_eq!(batch_of(&c.plan()), [2]);
}

#[test]
fn max_surge_creates_new_instances_first_then_retires_the_old_ones() {
    let mut c = Case::new(set(5, 2, json!({"maxSurge": true})), (0..5).map(|i| rec(i, 1)).collect());
    let s = c.plan();
    assert!(matches!(&s[0], RollingStep::Begin(u) if u.surge), "{s:?}");
    c.apply(&s);
    let s = c.plan();
    assert_eq!(s, [RollingStep::SurgeBatch(vec![InstanceId(0)])]);
    // Recorded like a batch; the executor does the same.
    c.upgrade.as_mut().unwrap().batches.push(RollingBatch {
        instances: vec![InstanceId(0)],
        started_at: c.now,
        finished_at: None,
        unhealthy: vec![],
    });
    assert_eq!(c.upgrade.as_ref().unwrap().surge_extra(), 1, "one extra instance may run now");
    assert!(c.plan().is_empty(), "waiting for the new instance");
    // The new instance appears (created after the batch began) and becomes healthy.
    c.now += Duration::seconds(5);
    let mut fresh = rec(5, 2);
    fresh.created_at = c.now;
    c.instances.push(fresh);
    c.health.insert(InstanceId(5), Health::Unknown);
    assert!(c.plan().is_empty(), "its health is not decided yet");
    c.health.insert(InstanceId(5), Health::Healthy);
    let s = c.plan();
    assert!(matches!(&s[0], RollingStep::FinishBatch { unhealthy } if unhealthy.is_empty()), "{s:?}");
    assert_eq!(s[1], RollingStep::RetireOld(vec![InstanceId(0)]));
}
