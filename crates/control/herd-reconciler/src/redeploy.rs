//! Redeploy: a cold move of an instance to another host of its zone, with its disks (the
//! user's `vmss redeploy`, and every instance of a host being drained).
//!
//! Why the reconciler's and not the API's: a move takes minutes (stop, copy the disks, start)
//! and must survive a server crash in the middle without losing the disks or running the
//! instance twice. So the API only asks (`pending: Redeploy`, and a `Redeploy` scheduled event
//! the guest can read at 169.254.169.254), and passes carry it out in steps that are each safe
//! to repeat:
//!
//! ```text
//!   pending Redeploy, event not due ──▶ wait (the guest sees the event)
//!   event due (or acknowledged)      ──▶ Redeploy{to: None}: disruptive, so a serving pool
//!                                         member is drained from the load balancer first
//!   drained                          ──capacity──▶ Redeploy{to: host of the same zone, not
//!                                         its own}; no room: dropped, the set's note says why
//!   Phase A (before any host is called): state Redeploying, `moving: {from}`, host = to,
//!                                         incarnation + 1 (every later call is fenced by it)
//!   executor: Driver::relocate(spec, from) ── stop on `from`, copy its state files, build
//!                                         and start on `to` with them, destroy on `from`
//!       ok  ──▶ `moving` cleared, the copy on `from` noted as stale (destroyed by the
//!               return path if the move could not), event cleared; the boot is observed
//!               (Redeploying ──▶ Running) and the instance rejoins its pools
//!       err ──▶ stays Redeploying, retried after a backoff (never Failed: a Failed
//!               instance is rebuilt, which would lose its disks)
//!   a server crash anywhere ──▶ the next pass repeats the relocate (it is idempotent)
//!   `from` lost for good mid-move ──▶ the host-failure path re-creates it on `to` (a reimage)
//! ```
//! Spot instances are not moved: a drain evicts them (the API posts their Preempt).

use crate::draft::SetDraft;
use crate::plan::{SetInput, Step};
use chrono::{DateTime, Utc};
use herd_model::instance::{Event, InstanceRecord, InstanceState, Move, PendingAction};
use herd_model::spot::{ScheduledEventStatus, ScheduledEventType};
use herd_state::transitions::apply_event;

/// The redeploy step for `r`, if it is asked for or under way (see the module docs).
pub fn next_step(input: &SetInput<'_>, r: &InstanceRecord) -> Option<Step> {
    let id = r.instance_id;
    if r.state == InstanceState::Redeploying {
        // Under way: repeat the move (a failed try, or a crash before its result was written).
        let (Some(m), Some(to)) = (&r.moving, &r.host) else { return None };
        return Some(Step::Redeploy { id, from: m.from.clone(), to: Some(to.clone()) });
    }
    if r.pending != Some(PendingAction::Redeploy) {
        return None;
    }
    let from = r.host.as_ref()?;
    if !r.at_rest_for_move() {
        return None;
    }
    let due = r
        .scheduled_events
        .iter()
        .find(|e| e.event_type == ScheduledEventType::Redeploy)
        .is_none_or(|e| e.due(input.now));
    due.then(|| Step::Redeploy { id, from: from.clone(), to: None })
}

/// Applies a placed redeploy to the draft (Phase A): the new placement is written before any
/// host is called. A redeploy already under way (a retry) changes nothing here.
pub fn apply_step(w: &mut SetDraft<'_>, step: &Step, now: DateTime<Utc>) {
    let Step::Redeploy { id, from, to: Some(to) } = step else { return };
    let set = w.set;
    let Some(wr) = w.records.get_mut(id) else { return };
    let r = &mut wr.record;
    if r.moving.is_some() {
        return;
    }
    let reason = r
        .scheduled_events
        .iter()
        .find(|e| e.event_type == ScheduledEventType::Redeploy)
        .map(|e| e.description.clone())
        .unwrap_or_else(|| "redeploy".into());
    if apply_event(w.transitions, set, r, Event::RedeployRequested, now).is_err() {
        return;
    }
    r.moving = Some(Move { from: from.clone(), since: now, reason: reason.clone() });
    r.incarnation = r.incarnation.max(herd_driver::Incarnation::FIRST.0) + 1;
    r.host = Some(to.clone());
    r.pending = None;
    r.attempts = 1;
    r.last_error = None;
    r.next_attempt_at = None;
    for e in r.scheduled_events.iter_mut().filter(|e| e.event_type == ScheduledEventType::Redeploy) {
        e.status = ScheduledEventStatus::Started;
    }
    let incarnation = r.incarnation;
    wr.dirty = true;
    w.note(
        "RedeployInstance",
        format!(
            "instance {id} moves from host {from} to host {to} with its disks ({reason}): stopped, copied, started there; same instance id, MAC and private IP, incarnation {incarnation}"
        ),
    );
}

/// What a finished move leaves on the record (Phase C): nothing under way any more, the event
/// gone, and the copy on the old host noted as stale (the move destroyed it unless that host
/// could not be reached; the return path then does, fenced by the new incarnation).
pub fn finished(r: &mut InstanceRecord, now: DateTime<Utc>) -> Option<String> {
    let m = r.moving.take()?;
    r.scheduled_events.retain(|e| e.event_type != ScheduledEventType::Redeploy);
    r.attempts = 0;
    r.last_error = None;
    r.next_attempt_at = None;
    if !r.host_failure.stale_copies.iter().any(|c| c.host == m.from) {
        r.host_failure.stale_copies.push(herd_model::instance::StaleCopy {
            host: m.from.clone(),
            incarnation: r.incarnation.saturating_sub(1),
            since: now,
        });
    }
    let secs = (now - m.since).num_milliseconds() as f64 / 1000.0;
    Some(format!(
        "instance {} moved from host {} to host {} in {secs:.1} s ({}), disks kept",
        r.instance_id,
        m.from,
        r.host.as_deref().unwrap_or("?"),
        m.reason
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::record;
    use herd_model::spot::ScheduledEvent;
    use herd_model::InstanceId;

    fn asked(state: InstanceState, notice_secs: i64, now: DateTime<Utc>) -> InstanceRecord {
        let mut r = record(0, 1, state);
        r.host = Some("h1".into());
        r.incarnation = 1;
        r.pending = Some(PendingAction::Redeploy);
        r.scheduled_events.push(ScheduledEvent::new(
            ScheduledEventType::Redeploy,
            now,
            chrono::Duration::seconds(notice_secs),
            "drain of host h1",
            None,
        ));
        r
    }

    fn input<'a>(
        set: &'a herd_model::scale_set::StoredScaleSet,
        status: &'a herd_model::scale_set::ScaleSetStatus,
        records: &'a [InstanceRecord],
        observed: &'a std::collections::BTreeMap<InstanceId, herd_driver::ObservedPower>,
        limits: &'a crate::plan::Limits,
        drains: &'a std::collections::BTreeMap<InstanceId, herd_model::health::DrainObservation>,
        now: DateTime<Utc>,
    ) -> SetInput<'a> {
        SetInput {
            set,
            set_revision: 1,
            status,
            instances: records,
            observed,
            now,
            limits,
            in_place_extensions: false,
            drains,
        }
    }

    #[test]
    fn a_redeploy_waits_for_its_event_then_asks_for_room_then_is_retried_as_placed() {
        let set = crate::testkit::stored_set("web", 1, crate::testkit::model(1, serde_json::Value::Null));
        let (status, observed, drains) = (Default::default(), Default::default(), Default::default());
        let limits = crate::plan::Limits::default();
        let now = Utc::now();
        let r = asked(InstanceState::Running, 10, now);
        let records = [r.clone()];
        let i = input(&set, &status, &records, &observed, &limits, &drains, now);
        assert_eq!(next_step(&i, &r), None, "the guest's notice is not over");
        let later = now + chrono::Duration::seconds(11);
        let i = input(&set, &status, &records, &observed, &limits, &drains, later);
        assert_eq!(next_step(&i, &r), Some(Step::Redeploy { id: InstanceId(0), from: "h1".into(), to: None }));

        // Placed on h2: Phase A writes the new placement first.
        let transitions = Default::default();
        let mut w = SetDraft::new(&set, 1, None, [(r, Some(1))], &transitions);
        let step = Step::Redeploy { id: InstanceId(0), from: "h1".into(), to: Some("h2".into()) };
        apply_step(&mut w, &step, later);
        let moved = w.records[&InstanceId(0)].record.clone();
        assert_eq!(
            (moved.state, moved.host.as_deref(), moved.incarnation),
            (InstanceState::Redeploying, Some("h2"), 2)
        );
        assert_eq!(moved.moving.as_ref().map(|m| m.from.as_str()), Some("h1"));
        assert_eq!(moved.pending, None);
        assert_eq!(moved.scheduled_events[0].status, ScheduledEventStatus::Started);
        assert!(w.log.iter().any(|(op, m)| op == "RedeployInstance" && m.contains("drain of host h1")));
        // Applied again (a retry's step): nothing changes, the incarnation is not raised twice.
        apply_step(&mut w, &step, later);
        assert_eq!(w.records[&InstanceId(0)].record.incarnation, 2);

        // The next pass (or after a crash) repeats the move to the same host.
        let records = [moved.clone()];
        let i = input(&set, &status, &records, &observed, &limits, &drains, later);
        assert_eq!(next_step(&i, &moved), Some(step));

        // Done: the copy on h1 is noted, the event and the move are gone.
        let mut done = moved;
        let line = finished(&mut done, later + chrono::Duration::seconds(30)).unwrap();
        assert!(line.contains("from host h1 to host h2"), "{line}");
        assert!(done.moving.is_none() && done.scheduled_events.is_empty());
        assert_eq!(done.host_failure.stale_copies.len(), 1);
        assert_eq!(
            (done.host_failure.stale_copies[0].host.as_str(), done.host_failure.stale_copies[0].incarnation),
            ("h1", 1)
        );
    }

    #[test]
    fn nothing_is_moved_while_another_change_is_under_way_or_without_a_host() {
        let set = crate::testkit::stored_set("web", 1, crate::testkit::model(1, serde_json::Value::Null));
        let (status, observed, drains) = (Default::default(), Default::default(), Default::default());
        let limits = crate::plan::Limits::default();
        let now = Utc::now();
        let creating = asked(InstanceState::Creating, 0, now);
        let mut nowhere = asked(InstanceState::Running, 0, now);
        nowhere.host = None;
        let records = [creating.clone(), nowhere.clone()];
        let i = input(&set, &status, &records, &observed, &limits, &drains, now);
        assert_eq!(next_step(&i, &creating), None);
        assert_eq!(next_step(&i, &nowhere), None);
    }
}
