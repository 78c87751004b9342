//! Applying a rolling-upgrade decision to a set's draft: the upgrade's record in the set's
//! status, the pending actions that move the chosen instances, and the model writes of an
//! automatic OS upgrade or a rollback ([`ModelChange`]). Pure: see [`crate::draft`].

use crate::draft::{ModelChange, SetDraft};
use crate::rolling::RollingStep;
use chrono::{DateTime, Utc};
use herd_model::{
    instance::InstanceGoal,
    scale_set::UpgradeRequest,
    upgrade::{RollingBatch, RollingState},
    InstanceId,
};
use herd_state::instance_actions::id_list;

/// Records a rolling-upgrade decision in the set's status and marks the instances it moves.
pub fn apply_step(w: &mut SetDraft<'_>, step: &RollingStep, now: DateTime<Utc>) {
    w.status_dirty = true;
    match step {
        RollingStep::ClearRequest => w.status.upgrade_request = None,
        RollingStep::OsImage { version, upgrade } => os_image(w, version, *upgrade),
        RollingStep::Begin(u) => {
            let canary =
                u.canary.map(|c| format!(", canary of {c}{}", if u.pause_after_canary { " then pause" } else { "" }));
            w.note(
                "RollingUpgrade",
                format!(
                    "rolling upgrade to model generation {} started ({}): batches of {}{}",
                    u.target_generation,
                    u.trigger,
                    u.batch_size,
                    canary.unwrap_or_default()
                ),
            );
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
            let line = format!("{what} {}: instance(s) {}", u.batches.len(), id_list(&chosen));
            w.note("RollingUpgradeBatch", line);
        }
        RollingStep::SurgeBatch(old) => {
            let Some(u) = w.status.rolling_upgrade.as_mut() else { return };
            u.batches.push(RollingBatch {
                instances: old.clone(),
                started_at: now,
                finished_at: None,
                unhealthy: vec![],
            });
            let line = format!(
                "batch {} (maxSurge): {} new instance(s) on the new model first, then instance(s) {} go",
                u.batches.len(),
                old.len(),
                id_list(old)
            );
            w.note("RollingUpgradeBatch", line);
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
        RollingStep::FinishBatch { unhealthy } => finish_batch(w, unhealthy, now),
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
            w.note("RollingUpgrade", msg);
        }
        RollingStep::Rollback { reason } => rollback(w, reason, now),
    }
}

/// `latest` resolves to `version` now: remembered; with `upgrade`, the model goes to the next
/// generation and a rolling upgrade re-images every instance.
fn os_image(w: &mut SetDraft<'_>, version: &str, upgrade: bool) {
    let before = w.status.os_image_version.replace(version.to_string());
    if !upgrade {
        return;
    }
    let mut next = w.set.clone();
    next.model_generation += 1;
    let line = format!(
        "image version {version} was published (was {}); model generation {} → {}: a rolling upgrade re-images every instance",
        before.unwrap_or_default(),
        w.set.model_generation,
        next.model_generation
    );
    w.model_changes.push(ModelChange::OsImage(Box::new(next)));
    w.status.upgrade_request = Some(UpgradeRequest::Start { canary: None, pause: false, reimage: true });
    w.note("AutomaticOSUpgrade", line);
}

/// The batch in flight is done: its healthy instances succeeded, the others failed.
fn finish_batch(w: &mut SetDraft<'_>, unhealthy: &[InstanceId], now: DateTime<Utc>) {
    let Some(u) = w.status.rolling_upgrade.as_mut() else { return };
    let n = u.batches.len();
    let Some(b) = u.batches.last_mut() else { return };
    b.finished_at = Some(now);
    b.unhealthy = unhealthy.to_vec();
    let good: Vec<InstanceId> = b.instances.iter().filter(|i| !unhealthy.contains(i)).copied().collect();
    u.succeeded.extend(good.iter().copied());
    u.failed.extend(unhealthy.iter().copied());
    let msg = if unhealthy.is_empty() {
        format!("batch {n} done: instance(s) {} healthy", id_list(&good))
    } else {
        format!("batch {n} done: instance(s) {} unhealthy", id_list(unhealthy))
    };
    w.note("RollingUpgradeBatch", msg);
}

/// The model returns to the generation the instances came from (a new generation); the
/// instances the upgrade never touched are on it already, the others are re-imaged back. Without
/// that model on record the upgrade faults instead.
fn rollback(w: &mut SetDraft<'_>, reason: &str, now: DateTime<Utc>) {
    let Some(u) = w.status.rolling_upgrade.clone() else { return };
    let Some(old) = w.rollback_model.take() else {
        let why =
            format!("{reason}; but model generation {} is not on record, so it cannot roll back", u.from_generation);
        if let Some(u) = w.status.rolling_upgrade.as_mut() {
            u.state = RollingState::Faulted;
            u.error = Some(why.clone());
            u.ended_at = Some(now);
        }
        w.note("RollingUpgrade", why);
        return;
    };
    let mut next = w.set.clone();
    next.model.virtual_machine_profile = old.virtual_machine_profile;
    next.model.sku.name = old.sku.name;
    next.model_generation += 1;
    let new_gen = next.model_generation;
    w.model_changes.push(ModelChange::Rollback(Box::new(next)));
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
        st.error = Some(reason.to_string());
        st.target_generation = new_gen;
    }
    w.note(
        "RollingUpgrade",
        format!(
            "{reason}: the model returns to generation {}'s (now generation {new_gen}); upgraded instance(s) {} are re-imaged back",
            u.from_generation,
            id_list(&touched)
        ),
    );
}

#[cfg(test)]
mod tests;
