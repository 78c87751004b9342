//! The automatic-repairs planner: pure, from the set, its repair state, its instances and
//! their health to the repairs to make now.
//!
//! Rules (Azure's, plus herd's circuit breaker; see `herd_model::repair`):
//! - only with `automaticRepairsPolicy.enabled`, a health source, repairs not suspended, and no
//!   rolling upgrade in progress (the upgrade owns the instances then);
//! - an instance is repaired when its probe says Unhealthy for its current boot and the grace
//!   period since its last state change (`state_since`) is over;
//! - at most 5% of the capacity within one grace period (at least one), so below 20 instances
//!   one at a time;
//! - protected instances (`protectFromScaleSetActions`) are never repaired;
//! - the breaker: a repair counts until some instance is healthy on a boot that began after
//!   it; `max` repairs in a row without that suspend repairs with the reason.

use crate::draft::SetDraft;
use crate::rolling::Health;
use chrono::{DateTime, Duration, Utc};
use herd_model::{
    instance::{InstanceGoal, InstanceRecord, InstanceState, PendingAction},
    repair::{RepairAction, RepairState},
    scale_set::StoredScaleSet,
    InstanceId,
};
use std::collections::BTreeMap;

/// What the repair planner reads.
#[derive(Debug, Clone, Copy)]
pub struct RepairInput<'a> {
    pub set: &'a StoredScaleSet,
    pub state: &'a RepairState,
    pub instances: &'a [InstanceRecord],
    pub health: &'a BTreeMap<InstanceId, Health>,
    pub has_health_source: bool,
    pub upgrading: bool,
    pub now: DateTime<Utc>,
    /// Repairs in a row without a healthy fresh boot before the breaker trips.
    pub max_attempts: usize,
}

/// One repair decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepairStep {
    Repair {
        id: InstanceId,
        action: RepairAction,
        reason: String,
    },
    /// An instance became healthy on a boot after the last repairs: the count starts over.
    Reset,
    /// The circuit breaker trips.
    Suspend(String),
}

/// The repairs to make now.
pub fn plan_repairs(input: &RepairInput<'_>) -> Vec<RepairStep> {
    let Some(policy) = input.set.model.automatic_repairs_policy.as_ref().filter(|p| p.enabled) else {
        return vec![];
    };
    if !input.has_health_source || input.upgrading || input.state.suspended.is_some() {
        return vec![];
    }
    let grace = policy.grace().unwrap_or_else(|| Duration::minutes(10));
    let mut out = Vec::new();
    let healthy = |r: &InstanceRecord| {
        r.state == InstanceState::Running && input.health.get(&r.instance_id) == Some(&Health::Healthy)
    };
    let mut attempts = input.state.attempts.len();
    if let Some(first) = input.state.attempts.first() {
        if input.instances.iter().any(|r| healthy(r) && r.state_since > first.at) {
            out.push(RepairStep::Reset);
            attempts = 0;
        }
    }
    let counted: Vec<&InstanceRecord> =
        input.instances.iter().filter(|r| r.is_counted() && r.goal == InstanceGoal::Running).collect();
    let limit = (input.set.model.sku.capacity.max(0) as usize * 5 / 100).max(1);
    let recent =
        if attempts == 0 { 0 } else { input.state.attempts.iter().filter(|a| input.now < a.at + grace).count() };
    let mut budget = limit.saturating_sub(recent);
    for r in counted {
        if budget == 0 {
            break;
        }
        let unhealthy = r.state == InstanceState::Running
            && r.pending.is_none()
            && input.health.get(&r.instance_id) == Some(&Health::Unhealthy)
            && input.now >= r.state_since + grace
            && !r.protect_from_scale_set_actions
            // Its host is silent: the host-failure handling moves it, not a repair.
            && r.host_failure.unreachable_since.is_none();
        if !unhealthy {
            continue;
        }
        if attempts >= input.max_attempts {
            out.push(RepairStep::Suspend(format!(
                "{attempts} repairs in a row did not bring an instance back to health (the model may be broken); \
                 fix it, then 'herd vmss set-orchestration-service-state --service-name AutomaticRepairs --action Resume'"
            )));
            return out;
        }
        out.push(RepairStep::Repair {
            id: r.instance_id,
            action: policy.repair_action,
            reason: format!(
                "unhealthy for more than the grace period ({}s) since {}",
                grace.num_seconds(),
                r.state_since.format("%H:%M:%S")
            ),
        });
        attempts += 1;
        budget -= 1;
    }
    out
}

/// Records an automatic-repair decision in the set's status and marks the instance (pure: see
/// [`crate::draft`]). The last 20 repairs are kept.
pub fn apply_step(w: &mut SetDraft<'_>, step: &RepairStep, now: DateTime<Utc>) {
    use herd_model::repair::{RepairAttempt, RepairSuspension};
    w.status_dirty = true;
    match step {
        RepairStep::Reset => w.status.repairs.attempts.clear(),
        RepairStep::Suspend(reason) => {
            w.status.repairs.suspended = Some(RepairSuspension { reason: reason.clone(), since: now, automatic: true });
            w.note("AutomaticRepairsSuspended", reason.clone());
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
            w.note("AutomaticRepair", format!("instance {id}: {action} ({reason})"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{model, record, stored_set, t0};
    use herd_model::repair::RepairAttempt;
    use serde_json::json;

    fn set(capacity: i64, action: &str) -> StoredScaleSet {
        let policy = json!({"enabled": true, "gracePeriod": "PT1M", "repairAction": action});
        stored_set("web", 1, model(capacity, json!({"automaticRepairsPolicy": policy})))
    }

    fn rec(id: u64) -> InstanceRecord {
        record(id, 1, InstanceState::Running)
    }

    fn plan(
        set: &StoredScaleSet,
        state: &RepairState,
        recs: &[InstanceRecord],
        sick: &[u64],
        now: DateTime<Utc>,
    ) -> Vec<RepairStep> {
        let health = recs
            .iter()
            .map(|r| (r.instance_id, if sick.contains(&r.instance_id.0) { Health::Unhealthy } else { Health::Healthy }))
            .collect();
        plan_repairs(&RepairInput {
            set,
            state,
            instances: recs,
            health: &health,
            has_health_source: true,
            upgrading: false,
            now,
            max_attempts: 3,
        })
    }

    #[test]
    fn repairs_wait_for_the_grace_period_and_go_one_at_a_time_below_twenty() {
        let s = set(5, "Reimage");
        let recs: Vec<_> = (0..5).map(rec).collect();
        let st = RepairState::default();
        assert!(plan(&s, &st, &recs, &[1, 2], t0() + Duration::seconds(59)).is_empty(), "inside the grace period");
        let steps = plan(&s, &st, &recs, &[1, 2], t0() + Duration::seconds(60));
        assert_eq!(steps.len(), 1, "one at a time: {steps:?}");
        assert!(matches!(steps[0], RepairStep::Repair { id: InstanceId(1), action: RepairAction::Reimage, .. }));
        // A repair just made uses up this grace period's budget.
        let st = RepairState {
            attempts: vec![RepairAttempt {
                instance: InstanceId(1),
                action: RepairAction::Reimage,
                at: t0() + Duration::seconds(60),
            }],
            suspended: None,
        };
        assert!(plan(&s, &st, &recs, &[2], t0() + Duration::seconds(90)).is_empty());
        assert_eq!(plan(&s, &st, &recs, &[2], t0() + Duration::seconds(121)).len(), 1);
    }

    #[test]
    fn protected_instances_are_never_repaired_and_large_sets_repair_five_percent() {
        let s = set(40, "Replace");
        let mut recs: Vec<_> = (0..40).map(rec).collect();
        recs[0].protect_from_scale_set_actions = true;
        let steps = plan(&s, &RepairState::default(), &recs, &[0, 1, 2, 3, 4], t0() + Duration::minutes(5));
        let ids: Vec<u64> = steps
            .iter()
            .filter_map(|s| if let RepairStep::Repair { id, .. } = s { Some(id.0) } else { None })
            .collect();
        assert_eq!(ids, [1, 2], "5% of 40, never the protected one");
    }

    #[test]
    fn the_breaker_trips_after_repairs_that_never_help_and_resets_on_a_healthy_boot() {
        let s = set(5, "Replace");
        let recs: Vec<_> = (0..5).map(rec).collect();
        let attempts: Vec<RepairAttempt> = (0..3)
            .map(|i| RepairAttempt {
                instance: InstanceId(10 + i),
                action: RepairAction::Replace,
                at: t0() + Duration::seconds(i as i64),
            })
            .collect();
        let st = RepairState { attempts: attempts.clone(), suspended: None };
        let steps = plan(&s, &st, &recs, &[1], t0() + Duration::minutes(10));
        assert!(matches!(&steps[0], RepairStep::Suspend(r) if r.contains("3 repairs in a row")), "{steps:?}");
        // A fresh boot after the repairs that is healthy resets the count.
        let mut recs2 = recs.clone();
        recs2[4].state_since = t0() + Duration::minutes(5);
        let steps = plan(&s, &st, &recs2, &[1], t0() + Duration::minutes(10));
        assert_eq!(steps[0], RepairStep::Reset);
        assert!(matches!(steps[1], RepairStep::Repair { id: InstanceId(1), .. }), "{steps:?}");
    }

    #[test]
    fn applying_repairs_marks_the_instance_and_keeps_the_last_twenty_attempts() {
        let set = set(3, "Replace");
        let t = herd_state::transitions::InvalidTransitions::default();
        let mut w = crate::testkit::draft(&set, vec![rec(0), rec(1)], &t);
        w.status.repairs.attempts = (0..20)
            .map(|i| RepairAttempt {
                instance: InstanceId(9),
                action: RepairAction::Restart,
                at: t0() - Duration::minutes(i),
            })
            .collect();
        let repair = |id, action| RepairStep::Repair { id: InstanceId(id), action, reason: "probe unhealthy".into() };
        apply_step(&mut w, &repair(0, RepairAction::Replace), t0());
        apply_step(&mut w, &repair(1, RepairAction::Reimage), t0());
        let r0 = &w.records[&InstanceId(0)].record;
        assert_eq!(r0.goal, InstanceGoal::Deleted);
        assert_eq!(r0.delete_reason.as_deref(), Some("automatic repair (Replace): probe unhealthy"));
        assert_eq!(w.records[&InstanceId(1)].record.pending, Some(PendingAction::Reimage));
        let attempts = &w.status.repairs.attempts;
        assert_eq!(attempts.len(), 20, "the oldest attempts make room");
        let last: Vec<_> = attempts[18..].iter().map(|a| (a.instance, a.action, a.at)).collect();
        assert_eq!(last, [(InstanceId(0), RepairAction::Replace, t0()), (InstanceId(1), RepairAction::Reimage, t0())]);
        assert_eq!(w.log[0], ("AutomaticRepair".to_string(), "instance 0: Replace (probe unhealthy)".to_string()));

        apply_step(&mut w, &RepairStep::Suspend("3 repairs in a row".into()), t0());
        let s = w.status.repairs.suspended.clone().expect("suspended");
        assert_eq!((s.reason.as_str(), s.since, s.automatic), ("3 repairs in a row", t0(), true));
        apply_step(&mut w, &RepairStep::Reset, t0());
        assert!(w.status.repairs.attempts.is_empty() && w.status_dirty);
    }
}
