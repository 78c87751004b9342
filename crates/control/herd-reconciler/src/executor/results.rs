//! Phase C: the driver calls' results, persisted on fresh reads of each record.

use super::intents::event;
use super::StepResult;
use crate::plan::{Limits, Step};
use chrono::{DateTime, Utc};
use herd_driver::DriverError;
use herd_model::activity::ActivityStatus;
use herd_model::{
    instance::{Event, InstanceState, PendingAction},
    scale_set::StoredScaleSet,
    InstanceId, InstanceKey,
};
use herd_state::instance_actions::id_list;
use herd_state::intents::Writes;
use herd_state::keys::SetKey;
use herd_state::transitions::{apply_event, InvalidTransitions};
use herd_state::{Expected, Records, StateError, Store};
use std::collections::BTreeMap;

/// Phase C: persists the driver results of each set and the orphan cleanups, on fresh reads
/// of each record. Over the transaction limit, results commit in chunks; after a conflict the
/// next attempt re-reads, and the results already committed then change nothing.
pub(super) fn persist_results(
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
    let mut moved = Vec::new();
    for (step, r) in res {
        let Some(id) = step.instance() else { continue };
        if matches!((step, r), (Step::Ensure(_) | Step::Start(_), Ok(()))) {
            // A build or start that went through changes no record (the next pass observes the
            // boot): no read, no write. 10,000 creates were 10,000 reads for nothing.
            continue;
        }
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
            (Step::Redeploy { .. }, Ok(())) => {
                if let Some(line) = crate::redeploy::finished(&mut rec, now) {
                    moved.push(line);
                }
            }
            (Step::Resize(_), Ok(())) => {
                if rec.pending == Some(PendingAction::Resize) {
                    rec.pending = None;
                }
                rec.model_generation = rec.model_generation.max(set.model_generation);
                rec.sku = Some(set.model.sku.name.clone());
            }
            (_, Err(e @ DriverError::Unreachable { .. })) => {
                // The host, not the instance: its state stays, and the next try comes at the
                // base delay however often the host was away.
                rec.last_error = Some(e.to_string());
                rec.next_attempt_at = Some(now + limits.backoff_base);
                failures.push(format!("instance {id}: {step_name} not done: {e}", step_name = step_name(step)));
            }
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
    for m in moved {
        ops.activity(event(now, g, n, "RedeployInstance", ActivityStatus::Succeeded, m));
    }
    Ok(())
}

pub(super) fn step_name(s: &Step) -> &'static str {
    match s {
        Step::Ensure(_) => "create",
        Step::Stop(_) => "stop",
        Step::Deallocate(_) => "deallocate",
        Step::Start(_) => "start",
        Step::Restart(_) => "restart",
        Step::Resize(_) => "resize",
        Step::Reimage(_) => "reimage",
        Step::Destroy(_) => "delete",
        Step::Redeploy { .. } => "redeploy",
        _ => "step",
    }
}
