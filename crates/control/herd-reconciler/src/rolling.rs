//! The rolling-upgrade planner: pure, like [`crate::plan`](mod@crate::plan), from the set, its status, its
//! instances and their health to the next rolling step.
//!
//! Why a module of its own: a rolling upgrade is a small state machine layered over the
//! instance lifecycle (see the diagram in `herd_model::upgrade`). This module only decides;
//! the executor records the decision in the set's status and marks the chosen instances with
//! the pending action that moves them (`Reimage`, or `RunExtensions` when only extensions
//! changed), and the ordinary planner carries that out, draining pool members first. One batch
//! is in flight at a time, and the next one starts only once every instance of the last is on
//! the target generation and its health is known, so a crash at any point resumes where it was
//! without upgrading an instance twice or exceeding a batch.

use chrono::{DateTime, Duration, Utc};
use herd_model::{
    instance::{InstanceGoal, InstanceRecord, InstanceState, PendingAction},
    scale_set::{StoredScaleSet, UpgradeMode, UpgradeRequest},
    upgrade::{RollingState, RollingUpgrade, RollingUpgradePolicy},
    InstanceId,
};
use std::collections::BTreeMap;

mod apply;
pub use apply::apply_step;

/// An instance's health as its load-balancer probe sees it: the model's one health enum.
pub use herd_model::health::HealthState as Health;

/// What the rolling planner reads.
#[derive(Debug, Clone, Copy)]
pub struct RollingInput<'a> {
    pub set: &'a StoredScaleSet,
    pub upgrade: Option<&'a RollingUpgrade>,
    pub request: Option<&'a UpgradeRequest>,
    pub instances: &'a [InstanceRecord],
    /// Probe health by instance; absent = no probe covers it.
    pub health: &'a BTreeMap<InstanceId, Health>,
    /// The set has a health source (an LB probe); without one, Running counts as healthy.
    pub has_health_source: bool,
    pub in_place_extensions: bool,
    pub now: DateTime<Utc>,
    /// A batch whose health is still unknown after this long is judged as it stands.
    pub batch_timeout: Duration,
    /// A fresh boot that fails its probe counts as unhealthy only after this long (an app
    /// needs a moment to start listening); healthy counts at once.
    pub health_grace: Duration,
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollingStep {
    /// Begin a new upgrade (replacing the finished one in the status).
    Begin(Box<RollingUpgrade>),
    /// Change the canary options of the upgrade in flight.
    Canary { canary: Option<u64>, pause: bool },
    /// Start a batch: these instances get these pending actions.
    StartBatch(Vec<(InstanceId, PendingAction)>),
    /// Start a surge batch: as many new instances are created beside these old ones, which
    /// are deleted once the new ones are healthy.
    SurgeBatch(Vec<InstanceId>),
    /// A surge batch's new instances are healthy: delete its old ones.
    RetireOld(Vec<InstanceId>),
    /// The batch in flight is done; these of its instances are unhealthy.
    FinishBatch { unhealthy: Vec<InstanceId> },
    /// Move the upgrade to `state` (with a reason for Faulted, Cancelled, Paused).
    State { state: RollingState, reason: Option<String> },
    /// Return to the generation the instances came from: the model reverts (a new generation)
    /// and the upgrade continues as `RollingBack`.
    Rollback { reason: String },
    /// The user's request has been acted on.
    ClearRequest,
    /// `latest` now resolves to `version`: remember it, and with `upgrade` (a newer version
    /// under an automatic OS upgrade policy) bump the model generation and roll it out.
    OsImage { version: String, upgrade: bool },
}

/// Automatic OS image upgrades: compares the version `latest` resolves to now with the one the
/// set last took.
pub fn plan_os_image(set: &StoredScaleSet, known: Option<&str>, latest: Option<&str>) -> Option<RollingStep> {
    let enabled =
        set.model.upgrade_policy.automatic_os_upgrade_policy.as_ref().is_some_and(|p| p.enable_automatic_os_upgrade);
    let image = &set.model.virtual_machine_profile.storage_profile.image_reference;
    if !enabled || !image.version.eq_ignore_ascii_case("latest") {
        return None;
    }
    let latest = latest?;
    match known {
        None => Some(RollingStep::OsImage { version: latest.to_string(), upgrade: false }),
        Some(k) if herd_model::ids::Version::parse(latest) > herd_model::ids::Version::parse(k) => {
            Some(RollingStep::OsImage { version: latest.to_string(), upgrade: true })
        }
        _ => None,
    }
}

fn policy(set: &StoredScaleSet) -> RollingUpgradePolicy {
    set.model.upgrade_policy.rolling_upgrade_policy.clone().unwrap_or_default()
}

/// Healthy for the upgrade: running, nothing pending, and probe-healthy where a probe decides.
fn healthy(input: &RollingInput<'_>, r: &InstanceRecord) -> bool {
    r.state == InstanceState::Running
        && r.pending.is_none()
        && r.failed_extension().is_none()
        && (!input.has_health_source || input.health.get(&r.instance_id) == Some(&Health::Healthy))
}

/// Health is decided: healthy, or clearly not (failed, failed extension, or probe-unhealthy
/// for longer than the health grace after its boot).
fn decided(input: &RollingInput<'_>, r: &InstanceRecord) -> bool {
    healthy(input, r)
        || r.state == InstanceState::Failed
        || (r.state == InstanceState::Running && r.pending.is_none() && r.failed_extension().is_some())
        || (r.state == InstanceState::Running
            && r.pending.is_none()
            && input.has_health_source
            && input.health.get(&r.instance_id) == Some(&Health::Unhealthy)
            && input.now >= r.state_since + input.health_grace)
}

/// Counted instances that an upgrade moves: not on the target, running (or failed), and not
/// protected from scale-set actions.
fn outdated<'a>(input: &'a RollingInput<'_>, target: u64) -> Vec<&'a InstanceRecord> {
    input
        .instances
        .iter()
        .filter(|r| r.is_counted() && r.goal == InstanceGoal::Running)
        .filter(|r| r.model_generation < target && !r.protect_from_scale_set_actions)
        .filter(|r| matches!(r.state, InstanceState::Running | InstanceState::Failed))
        .collect()
}

/// The next rolling steps for one set.
pub fn plan_rolling(input: &RollingInput<'_>) -> Vec<RollingStep> {
    let set = input.set;
    let target = set.model_generation;
    let active = input.upgrade.filter(|u| u.state.is_active());

    if let Some(req) = input.request {
        let mut out = vec![RollingStep::ClearRequest];
        out.extend(user_request(input, req, active));
        return out;
    }

    // A model change under a Rolling policy starts an upgrade by itself.
    let Some(u) = active else {
        let newer = input.upgrade.is_none_or(|u| u.target_generation < target);
        if set.model.upgrade_policy.mode == UpgradeMode::Rolling && newer && !outdated(input, target).is_empty() {
            return vec![RollingStep::Begin(Box::new(begin(input, "model change", None, false)))];
        }
        return Vec::new();
    };
    if u.state == RollingState::Paused {
        return Vec::new();
    }
    match u.current_batch() {
        Some(batch) => batch_in_flight(input, u, batch),
        None => next_batch(input, u),
    }
}

/// What the user asked of the upgrade (start, pause, resume, cancel, roll back), when it can
/// be done now.
fn user_request(input: &RollingInput<'_>, req: &UpgradeRequest, active: Option<&RollingUpgrade>) -> Vec<RollingStep> {
    let target = input.set.model_generation;
    let mut out = Vec::new();
    match req {
        UpgradeRequest::Start { canary, pause, reimage } => match active {
            Some(u) if u.target_generation == target && u.batches.iter().all(|b| b.finished_at.is_none()) => {
                out.push(RollingStep::Canary { canary: *canary, pause: *pause });
            }
            Some(_) => {}
            None if !outdated(input, target).is_empty() => {
                let trigger = if *reimage { "automatic OS upgrade" } else { "user" };
                let mut u = begin(input, trigger, *canary, *pause);
                u.reimage = *reimage;
                out.push(RollingStep::Begin(Box::new(u)));
            }
            None => {}
        },
        UpgradeRequest::Pause => {
            if active.is_some_and(|u| u.state == RollingState::RollingForward) {
                out.push(RollingStep::State { state: RollingState::Paused, reason: Some("paused by user".into()) });
            }
        }
        UpgradeRequest::Resume => {
            if active.is_some_and(|u| u.state == RollingState::Paused) {
                out.push(RollingStep::State { state: RollingState::RollingForward, reason: None });
            }
        }
        UpgradeRequest::Cancel => {
            if active.is_some() {
                out.push(RollingStep::State {
                    state: RollingState::Cancelled,
                    reason: Some("cancelled by user; instances not yet upgraded stay on the old model".into()),
                });
            }
        }
        UpgradeRequest::Rollback => {
            let can = input.upgrade.is_some_and(|u| {
                matches!(
                    u.state,
                    RollingState::RollingForward
                        | RollingState::Paused
                        | RollingState::Faulted
                        | RollingState::Cancelled
                ) && u.target_generation == target
                    && u.touched().next().is_some()
            });
            if can {
                out.push(RollingStep::Rollback { reason: "rollback requested by user".into() });
            }
        }
    }
    out
}

/// The batch in flight: when every instance in it has moved and its health is decided (or the
/// batch timed out), finish it, then fault, roll back, finish, or pause after the canary.
fn batch_in_flight(
    input: &RollingInput<'_>,
    u: &RollingUpgrade,
    batch: &herd_model::upgrade::RollingBatch,
) -> Vec<RollingStep> {
    let mut out = Vec::new();
    let target = u.target_generation;
    let p = policy(input.set);
    let by_id: BTreeMap<InstanceId, &InstanceRecord> = input.instances.iter().map(|r| (r.instance_id, r)).collect();
    let finish_state =
        if u.state == RollingState::RollingBack { RollingState::RolledBack } else { RollingState::Completed };
    let timed_out = input.now - batch.started_at > input.batch_timeout;
    let mut done = true;
    let mut unhealthy = Vec::new();
    if u.surge && u.state == RollingState::RollingForward {
        // The new instances: on the target, created since the batch began.
        let fresh: Vec<&InstanceRecord> = input
            .instances
            .iter()
            .filter(|r| r.is_counted() && r.model_generation >= target && r.created_at >= batch.started_at)
            .collect();
        done = fresh.len() >= batch.instances.len() && fresh.iter().all(|r| decided(input, r) || timed_out);
        done |= timed_out;
        unhealthy.extend(fresh.iter().filter(|r| !healthy(input, r)).map(|r| r.instance_id));
    } else {
        for id in &batch.instances {
            let Some(r) = by_id.get(id) else { continue }; // deleted meanwhile: nothing to wait for
            let moved = r.model_generation >= target || r.state == InstanceState::Failed;
            if !moved || !(decided(input, r) || timed_out) {
                done = false;
                break;
            }
            if !healthy(input, r) {
                unhealthy.push(*id);
            }
        }
    }
    if !done {
        return out;
    }
    out.push(RollingStep::FinishBatch { unhealthy: unhealthy.clone() });
    let upgraded: Vec<InstanceId> = u.touched().collect();
    let bad = u.failed.len() + unhealthy.len();
    let pct = if upgraded.is_empty() { 0 } else { bad * 100 / upgraded.len() };
    if u.state == RollingState::RollingForward && pct > p.max_unhealthy_upgraded_instance_percent as usize {
        let reason = format!(
            "{bad} of {} upgraded instance(s) unhealthy ({pct}%) exceeds maxUnhealthyUpgradedInstancePercent {}%",
            upgraded.len(),
            p.max_unhealthy_upgraded_instance_percent
        );
        if p.rollback_failed_instances_on_policy_breach {
            out.push(RollingStep::Rollback {
                reason: format!("{reason}; rolling back (rollbackFailedInstancesOnPolicyBreach)"),
            });
        } else {
            out.push(RollingStep::State { state: RollingState::Faulted, reason: Some(reason) });
        }
        return out;
    }
    if u.surge && u.state == RollingState::RollingForward {
        out.push(RollingStep::RetireOld(batch.instances.clone()));
    }
    let first = u.batches.len() == 1;
    let remaining = outdated(input, target).into_iter().filter(|r| !batch.instances.contains(&r.instance_id)).count();
    if remaining == 0 {
        out.push(RollingStep::State { state: finish_state, reason: None });
    } else if first && u.pause_after_canary && u.state == RollingState::RollingForward {
        out.push(RollingStep::State {
            state: RollingState::Paused,
            reason: Some("canary batch done; 'rolling-upgrade resume' continues, 'rollback' reverts it".into()),
        });
    }
    out
}

/// No batch in flight: finished, waiting out the pause between batches, faulted by unhealthy
/// instances, or the next batch.
fn next_batch(input: &RollingInput<'_>, u: &RollingUpgrade) -> Vec<RollingStep> {
    let mut out = Vec::new();
    let set = input.set;
    let target = u.target_generation;
    let p = policy(set);
    let finish_state =
        if u.state == RollingState::RollingBack { RollingState::RolledBack } else { RollingState::Completed };
    let todo = outdated(input, target);
    if todo.is_empty() {
        out.push(RollingStep::State { state: finish_state, reason: None });
        return out;
    }
    if let Some(last) = u.batches.last().and_then(|b| b.finished_at) {
        if input.now < last + p.pause().unwrap_or_else(Duration::zero) {
            return out;
        }
    }
    // Instances the user stopped are not unhealthy.
    let counted: Vec<&InstanceRecord> =
        input.instances.iter().filter(|r| r.is_counted() && r.goal == InstanceGoal::Running).collect();
    if u.state == RollingState::RollingForward && !counted.is_empty() {
        let sick = counted.iter().filter(|r| !healthy(input, r)).count();
        let pct = sick * 100 / counted.len();
        if pct > p.max_unhealthy_instance_percent as usize {
            out.push(RollingStep::State {
                state: RollingState::Faulted,
                reason: Some(format!(
                    "{sick} of {} instance(s) unhealthy ({pct}%) before the next batch exceeds maxUnhealthyInstancePercent {}%",
                    counted.len(),
                    p.max_unhealthy_instance_percent
                )),
            });
            return out;
        }
    }
    let size = match (u.batches.is_empty(), u.canary) {
        (true, Some(c)) => c.max(1),
        _ => u.batch_size.max(1),
    } as usize;
    let mut order = todo;
    order.sort_by_key(|r| {
        let sick = p.prioritize_unhealthy_instances && !healthy(input, r);
        (!sick, r.instance_id)
    });
    if u.surge && u.state == RollingState::RollingForward {
        out.push(RollingStep::SurgeBatch(order.into_iter().take(size).map(|r| r.instance_id).collect()));
        return out;
    }
    let batch: Vec<(InstanceId, PendingAction)> = order
        .into_iter()
        .take(size)
        .map(|r| {
            let action = if u.state == RollingState::RollingBack || u.reimage {
                PendingAction::Reimage
            } else {
                r.upgrade_action(set, input.in_place_extensions)
            };
            (r.instance_id, action)
        })
        .collect();
    out.push(RollingStep::StartBatch(batch));
    out
}

fn begin(input: &RollingInput<'_>, trigger: &str, canary: Option<u64>, pause: bool) -> RollingUpgrade {
    let set = input.set;
    let from = input
        .instances
        .iter()
        .filter(|r| r.is_counted() && r.model_generation < set.model_generation)
        .map(|r| r.model_generation)
        .max()
        .unwrap_or(set.model_generation.saturating_sub(1));
    RollingUpgrade {
        state: RollingState::RollingForward,
        target_generation: set.model_generation,
        from_generation: from,
        started_at: input.now,
        ended_at: None,
        trigger: trigger.into(),
        batch_size: policy(set).batch_size(set.model.sku.capacity.max(0) as u64),
        canary,
        pause_after_canary: pause,
        reimage: false,
        surge: policy(set).max_surge,
        batches: vec![],
        succeeded: vec![],
        failed: vec![],
        error: None,
    }
}

#[cfg(test)]
mod tests;
