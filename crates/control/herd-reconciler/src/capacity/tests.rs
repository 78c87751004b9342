//! Tests of applying the capacity steps to a draft: scheduled events, Spot evictions and the
//! eviction gap they leave, restores, assignments and the capacity note.

use super::*;
use crate::testkit::{draft, model, record, stored_set, t0};
use herd_model::instance::InstanceGoal;
use herd_model::scale_set::SpotEvictionGap;
use herd_model::spot::{EvictionPolicy, EvictionReason, ScheduledEventStatus};
use herd_state::transitions::InvalidTransitions;
use serde_json::json;

fn spot_set() -> StoredScaleSet {
    stored_set("web", 1, model(3, json!({"virtualMachineProfile": {"priority": "Spot", "evictionPolicy": "Delete"}})))
}

fn preempt(id: u64) -> Step {
    Step::PostEvent {
        id: InstanceId(id),
        kind: ScheduledEventType::Preempt,
        notice: Duration::seconds(30),
        reason: Some(EvictionReason::Capacity),
        description: "a Regular instance needs the room".into(),
    }
}

fn evict(id: u64, policy: EvictionPolicy) -> Step {
    Step::Evict { id: InstanceId(id), reason: EvictionReason::Capacity, policy }
}

#[test]
fn an_eviction_gap_grows_at_the_same_revision_and_starts_over_after_a_change() {
    let first = eviction_gap(None, 7, t0());
    assert_eq!(first, SpotEvictionGap { deleted: 1, since: t0(), at_revision: 7 });
    let later = t0() + Duration::seconds(40);
    let second = eviction_gap(Some(first.clone()), 7, later);
    assert_eq!(second, SpotEvictionGap { deleted: 2, since: later, at_revision: 7 });
    // The user changed the set (revision 8): the old gap is closed, a new one begins.
    assert_eq!(eviction_gap(Some(second), 8, later), SpotEvictionGap { deleted: 1, since: later, at_revision: 8 });
}

#[test]
fn a_deleting_eviction_deletes_the_instance_starts_its_preempt_event_and_opens_a_gap() {
    let set = spot_set();
    let t = InvalidTransitions::default();
    let recs = vec![record(0, 1, InstanceState::Running), record(1, 1, InstanceState::Running)];
    let mut w = draft(&set, recs, &t);
    w.status_dirty = false;
    apply_step(&mut w, &preempt(0), t0());
    apply_step(&mut w, &preempt(1), t0());
    let at = t0() + Duration::seconds(30);
    apply_step(&mut w, &evict(0, EvictionPolicy::Delete), at);
    apply_step(&mut w, &evict(1, EvictionPolicy::Delete), at);

    for id in [0, 1] {
        let r = &w.records[&InstanceId(id)];
        assert!(r.dirty);
        assert_eq!(r.record.goal, InstanceGoal::Deleted);
        assert_eq!(r.record.delete_reason.as_deref(), Some("Spot eviction: a Regular instance needs the room"));
        assert_eq!(r.record.scheduled_events[0].status, ScheduledEventStatus::Started);
        assert!(r.record.eviction.is_none(), "a deleted evictee is not restorable");
    }
    assert!(w.status_dirty);
    assert_eq!(w.status.spot_eviction_gap, Some(SpotEvictionGap { deleted: 2, since: at, at_revision: 7 }));
    let ops: Vec<&str> = w.log.iter().map(|(op, _)| op.as_str()).collect();
    assert_eq!(ops, ["ScheduledEvent", "ScheduledEvent", "SpotEviction", "SpotEviction"]);
    assert!(w.log[2].1.contains("instance 0 evicted") && w.log[2].1.contains("evictionPolicy Delete"), "{:?}", w.log);
}

#[test]
fn a_deallocating_eviction_keeps_the_instance_restorable_and_opens_no_gap() {
    let set = spot_set();
    let t = InvalidTransitions::default();
    let mut w = draft(&set, vec![record(0, 1, InstanceState::Running)], &t);
    w.status_dirty = false;
    apply_step(&mut w, &evict(0, EvictionPolicy::Deallocate), t0());
    let r = &w.records[&InstanceId(0)].record;
    assert_eq!(r.goal, InstanceGoal::Deallocated);
    let e = r.eviction.as_ref().expect("the eviction is on record");
    assert_eq!((e.at, e.reason, e.detail.as_str()), (t0(), EvictionReason::Capacity, "Capacity eviction"));
    assert_eq!(w.status.spot_eviction_gap, None);
    assert!(!w.status_dirty);

    apply_step(&mut w, &Step::Restore(InstanceId(0)), t0());
    let r = &w.records[&InstanceId(0)].record;
    assert_eq!((r.goal, r.eviction.is_none()), (InstanceGoal::Running, true));
}

#[test]
fn an_event_is_posted_once_and_a_host_assignment_only_marks_a_change() {
    let set = spot_set();
    let t = InvalidTransitions::default();
    let mut w = draft(&set, vec![record(0, 1, InstanceState::Running)], &t);
    apply_step(&mut w, &preempt(0), t0());
    apply_step(&mut w, &preempt(0), t0() + Duration::seconds(5));
    assert_eq!(w.records[&InstanceId(0)].record.scheduled_events.len(), 1);
    assert_eq!(w.log.len(), 1);

    w.records.get_mut(&InstanceId(0)).unwrap().dirty = false;
    apply_step(&mut w, &Step::Assign { id: InstanceId(0), host: None }, t0());
    assert!(!w.records[&InstanceId(0)].dirty, "the same host is no change");
    apply_step(&mut w, &Step::Assign { id: InstanceId(0), host: Some("h1".into()) }, t0());
    let r = &w.records[&InstanceId(0)];
    assert_eq!((r.dirty, r.record.host.as_deref()), (true, Some("h1")));
}

#[test]
fn a_capacity_note_is_written_when_it_changes_and_cleared_with_a_line() {
    let set = spot_set();
    let t = InvalidTransitions::default();
    let mut w = draft(&set, vec![], &t);
    w.status_dirty = false;
    let note = Some(("no room for instance 3".to_string(), false));
    apply_step(&mut w, &Step::CapacityNote(note.clone()), t0());
    let n = w.status.capacity_note.clone().expect("a note");
    assert_eq!((n.message.as_str(), n.since, n.waiting), ("no room for instance 3", t0(), false));
    assert!(w.status_dirty);
    w.status_dirty = false;
    apply_step(&mut w, &Step::CapacityNote(note), t0() + Duration::seconds(9));
    assert!(!w.status_dirty, "the same note again changes nothing");
    assert_eq!(w.status.capacity_note.as_ref().map(|n| n.since), Some(t0()));
    apply_step(&mut w, &Step::CapacityNote(None), t0());
    assert_eq!(w.status.capacity_note, None);
    assert_eq!(w.log.last().map(|(_, m)| m.as_str()), Some("the set has the room it needs again"));
}
