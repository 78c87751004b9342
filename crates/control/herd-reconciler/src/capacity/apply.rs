//! Applying the capacity steps to a set's draft: scheduled events, Spot evictions (and the
//! eviction gap they leave), restores, host assignments and the set's capacity note. Pure: see
//! [`crate::draft`].

use crate::draft::SetDraft;
use crate::plan::Step;
use chrono::{DateTime, Utc};
use herd_model::{
    instance::InstanceGoal,
    scale_set::{CapacityNote, SpotEvictionGap},
    spot::{EvictionPolicy, EvictionReason, ScheduledEvent, ScheduledEventStatus, ScheduledEventType},
    InstanceId,
};

/// Applies a capacity step (`PostEvent`, `Evict`, `Restore`, `Assign`, `CapacityNote`,
/// `PlacementNote`); any
/// other step is left to [`crate::plan::apply::apply_step`].
pub fn apply_step(w: &mut SetDraft<'_>, step: &Step, now: DateTime<Utc>) {
    match step {
        Step::PostEvent { id, kind, notice, reason, description } => {
            let Some(wr) = w.records.get_mut(id) else { return };
            if wr.record.scheduled_events.iter().any(|e| e.event_type == *kind) {
                return;
            }
            let ev = ScheduledEvent::new(*kind, now, *notice, description.clone(), *reason);
            let line = format!(
                "{kind} event {} posted to instance {id}: {description}; not before {} ({}s notice, sooner if the instance acknowledges)",
                ev.event_id,
                ev.not_before.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                notice.num_seconds()
            );
            wr.record.scheduled_events.push(ev);
            wr.dirty = true;
            w.note("ScheduledEvent", line);
        }
        Step::Evict { id, reason, policy } => evict(w, *id, *reason, *policy, now),
        Step::Restore(id) => {
            if let Some(wr) = w.records.get_mut(id) {
                wr.record.goal = InstanceGoal::Running;
                wr.record.eviction = None;
                wr.record.scheduled_events.clear();
                wr.dirty = true;
            }
            w.note("SpotRestore", format!("evicted instance {id} has room again and is restored"));
        }
        Step::Assign { id, host } => {
            if let Some(wr) = w.records.get_mut(id) {
                if wr.record.host != *host {
                    wr.record.host = host.clone();
                    wr.dirty = true;
                }
            }
        }
        Step::PlacementNote(note) => {
            let before = w.status.placement_note.as_ref().map(|n| n.message.clone());
            if before == *note {
                return;
            }
            w.status.placement_note =
                note.as_ref().map(|m| CapacityNote { message: m.clone(), since: now, waiting: false });
            w.status_dirty = true;
            match note {
                Some(m) => w.note("Placement", m.clone()),
                None => w.note("Placement", "every zone of the set has a host that takes new instances again".into()),
            }
        }
        Step::CapacityNote(note) => {
            let before = w.status.capacity_note.as_ref().map(|n| (n.message.clone(), n.waiting));
            if before == *note {
                return;
            }
            w.status.capacity_note =
                note.as_ref().map(|(m, waiting)| CapacityNote { message: m.clone(), since: now, waiting: *waiting });
            w.status_dirty = true;
            match note {
                Some((m, _)) => w.note("CapacityShortfall", m.clone()),
                None => w.note("CapacityShortfall", "the set has the room it needs again".into()),
            }
        }
        _ => {}
    }
}

/// A Spot instance's notice is over: its Preempt event starts, and the eviction policy decides
/// whether it is deallocated (kept, restorable) or deleted (which opens an eviction gap).
fn evict(w: &mut SetDraft<'_>, id: InstanceId, reason: EvictionReason, policy: EvictionPolicy, now: DateTime<Utc>) {
    let Some(wr) = w.records.get_mut(&id) else { return };
    let mut detail = format!("{reason} eviction");
    for e in &mut wr.record.scheduled_events {
        if e.event_type == ScheduledEventType::Preempt {
            e.status = ScheduledEventStatus::Started;
            detail = e.description.clone();
        }
    }
    wr.dirty = true;
    match policy {
        EvictionPolicy::Deallocate => {
            wr.record.goal = InstanceGoal::Deallocated;
            wr.record.eviction = Some(herd_model::spot::Eviction { at: now, reason, detail: detail.clone() });
        }
        EvictionPolicy::Delete => {
            wr.record.goal = InstanceGoal::Deleted;
            wr.record.delete_reason = Some(format!("Spot eviction: {detail}"));
            w.status.spot_eviction_gap = Some(eviction_gap(w.status.spot_eviction_gap.take(), w.set_revision, now));
            w.status_dirty = true;
        }
    }
    w.note("SpotEviction", format!("instance {id} evicted ({detail}); evictionPolicy {policy}"));
}

/// The Spot eviction gap after one more deletion by eviction at set revision `set_revision`.
///
/// The planner does not fill the gap again while it stands (see `plan`'s use of it): any change
/// to the set closes it. So a gap recorded at the same revision grows by one; one from an older
/// revision is over, and a new one starts.
pub fn eviction_gap(gap: Option<SpotEvictionGap>, set_revision: u64, now: DateTime<Utc>) -> SpotEvictionGap {
    match gap {
        Some(mut g) if g.at_revision == set_revision => {
            g.deleted += 1;
            g.since = now;
            g
        }
        _ => SpotEvictionGap { deleted: 1, since: now, at_revision: set_revision },
    }
}
