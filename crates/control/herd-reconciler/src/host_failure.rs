//! Host failure: what a pass does about instances on a joined host that has gone silent, and
//! about the copies a returning host still has of instances that were moved away.
//!
//! Why a concern of its own, and why these rules: a host that hangs, dies or is cut off must
//! not take its instances' service down for longer than configured, and must never bring back
//! an instance that runs elsewhere now. Silence alone is not proof of death, so the pass acts in
//! steps that each wait for what makes them safe (times from `herd_model::host`):
//!
//! ```text
//!   host silent > host_grace            ──▶ HostUnreachable{true}: health Unknown, out of rotation
//!   host heard again                    ──▶ HostUnreachable{false}
//!   silent ≥ replace_after and past the lease bound (its agent's leases are over):
//!     Regular ──▶ Replace{to: None} ──capacity──▶ Replace{to: host of the same zone} + Ensure
//!                  (incarnation + 1, written in Phase A before the new host is called; state
//!                   Creating, so a crash or a failed call is retried as any creation; a
//!                   reimage in effect: data disks empty; same id and private IP; the old
//!                   copy noted)
//!                 └─ no room in the zone: dropped; the set's capacity note says why
//!     Spot    ──▶ LoseSpot: evicted (Deallocated, or deleted by its evictionPolicy)
//!   host linked again with stale copies ──▶ destroy each copy there, fenced by the new
//!                                            incarnation; the host is Returning until done
//! ```
//! The plan is pure ([`plan`], [`HostFailures::of`]); the return's destroys are the one async
//! part ([`crate::Reconciler`]'s pass runs them before reading its snapshot).

use crate::draft::SetDraft;
use crate::plan::Step;
use chrono::{DateTime, Utc};
use herd_model::host::{FailureTiming, HostRecord, Silence};
use herd_model::instance::{Event, InstanceGoal, InstanceRecord, InstanceState, Recreation, StaleCopy};
use herd_model::spot::{is_spot, EvictionPolicy, EvictionReason};
use herd_model::InstanceId;
use herd_state::transitions::apply_event;
use std::collections::BTreeSet;

/// What the pass knows of its joined hosts' failures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFailures {
    /// Silent for longer than `host_grace`.
    pub unreachable: BTreeSet<String>,
    /// Silent past `replace_after` and the lease bound: their instances are moved.
    pub lost: BTreeSet<String>,
    /// Heard within `host_grace`: copies left on them may be destroyed now.
    pub live: BTreeSet<String>,
    /// Not heard since the server started, and the grace since the start not over: nothing is
    /// known yet, so their instances' marks are left as they are.
    pub unheard: BTreeSet<String>,
}

impl HostFailures {
    /// From the joined hosts' records and their silences (None: nothing known, as without
    /// an agent link; such a host is never declared lost).
    pub fn of(
        hosts: &[HostRecord],
        silence: impl Fn(&str) -> Option<Silence>,
        now: DateTime<Utc>,
        timing: &FailureTiming,
    ) -> Self {
        let mut f = HostFailures::default();
        for h in hosts {
            let Some(s) = silence(&h.name) else { continue };
            if s.live(now, timing.grace) {
                f.live.insert(h.name.clone());
            } else if !s.heard && !s.unreachable(now, timing.grace) {
                f.unheard.insert(h.name.clone());
            }
            if s.unreachable(now, timing.grace) {
                f.unreachable.insert(h.name.clone());
                if now >= s.replace_at(timing.replace_after) {
                    f.lost.insert(h.name.clone());
                }
            }
        }
        f
    }

    pub fn is_empty(&self) -> bool {
        self.unreachable.is_empty() && self.lost.is_empty()
    }
}

/// The host-failure steps for one set's instances. Instances a step moves have every other
/// step of the pass dropped (see [`apply_plan`]).
pub fn plan(set: &herd_model::scale_set::StoredScaleSet, records: &[&InstanceRecord], f: &HostFailures) -> Vec<Step> {
    let spot = is_spot(set.model.virtual_machine_profile.priority);
    let mut out = Vec::new();
    for r in records {
        let Some(host) = r.host.as_deref() else { continue };
        // A move whose source host is lost for good cannot copy the disks any more: it is
        // re-created on the host it was moving to (which keeps what the move brought, if the
        // copy was done).
        if let Some(m) = r.moving.as_ref().filter(|m| f.lost.contains(&m.from) && !spot) {
            out.push(Step::Replace { id: r.instance_id, from: m.from.clone(), to: Some(host.to_string()) });
            out.push(Step::Ensure(r.instance_id));
            continue;
        }
        let unreachable = f.unreachable.contains(host);
        // Right after a server start a host is not heard yet: a mark from before stays until
        // the host is heard (cleared) or the grace is over (kept).
        let unknown = f.unheard.contains(host);
        if !unknown && unreachable != r.host_failure.unreachable_since.is_some() {
            out.push(Step::HostUnreachable { id: r.instance_id, unreachable });
        }
        // Deallocated instances hold nothing on the host; those being deleted are removed by
        // the usual path once the host answers (or as orphans of a returning host).
        let movable = r.goal != InstanceGoal::Deleted && r.state != InstanceState::Deallocated;
        if f.lost.contains(host) && movable {
            out.push(if spot {
                Step::LoseSpot { id: r.instance_id, from: host.to_string() }
            } else {
                Step::Replace { id: r.instance_id, from: host.to_string(), to: None }
            });
        }
    }
    out
}

/// Adds the host-failure steps to a set's planned steps: an instance being moved has the
/// pass's other steps for it dropped (they were planned against the copy on the lost host).
pub fn apply_plan(steps: &mut Vec<Step>, failure_steps: Vec<Step>) {
    let moved: BTreeSet<InstanceId> = failure_steps
        .iter()
        .filter_map(|s| match s {
            Step::Replace { id, .. } | Step::LoseSpot { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    if !moved.is_empty() {
        steps.retain(|s| s.instance().is_none_or(|id| !moved.contains(&id)));
    }
    steps.extend(failure_steps);
}

/// Applies a host-failure step to the draft (pure).
pub fn apply_step(w: &mut SetDraft<'_>, step: &Step, now: DateTime<Utc>) {
    match step {
        Step::HostUnreachable { id, unreachable } => {
            let Some(wr) = w.records.get_mut(id) else { return };
            let host = wr.record.host.clone().unwrap_or_default();
            wr.record.host_failure.unreachable_since = unreachable.then_some(now);
            wr.dirty = true;
            let msg = if *unreachable {
                format!("instance {id}: host {host} is not heard from; its health is Unknown and it leaves load-balancer rotation")
            } else {
                format!("instance {id}: host {host} is heard again")
            };
            w.note("HostFailure", msg);
        }
        Step::Replace { id, from, to: Some(to) } => {
            let set = w.set;
            let Some(wr) = w.records.get_mut(id) else { return };
            let r = &mut wr.record;
            r.host_failure.stale_copies.push(StaleCopy { host: from.clone(), incarnation: r.incarnation, since: now });
            // A new placement: written with this intent, before the new host is called.
            r.incarnation = r.incarnation.max(herd_driver::Incarnation::FIRST.0) + 1;
            r.host = Some(to.clone());
            r.moving = None;
            r.host_failure.unreachable_since = None;
            r.host_failure.recreated =
                Some(Recreation { from_host: from.clone(), at: now, incarnation: r.incarnation });
            // Built anew on the new host (Creating: a crash before the build, or a failed
            // call, is retried by the usual creation path): from the current model, data disks
            // empty, the model's extensions run again after its first boot.
            let _ = apply_event(w.transitions, set, r, Event::Recreate, now);
            r.pending = None;
            r.draining_since = None;
            r.extensions.clear();
            r.model_generation = set.model_generation;
            r.base_fingerprint = Some(set.model.base_fingerprint());
            r.sku = Some(set.model.sku.name.clone());
            r.attempts = 1;
            r.last_error = None;
            r.next_attempt_at = None;
            let incarnation = r.incarnation;
            wr.dirty = true;
            w.note(
                "RecreateInstance",
                format!(
                    "instance {id} re-created on host {to} because host {from} failed: a reimage (data disks start empty), same instance id and private IP, incarnation {incarnation}; the copy on {from} is destroyed when it links again"
                ),
            );
        }
        Step::Replace { to: None, .. } => {}
        Step::LoseSpot { id, from } => {
            let set = w.set;
            let policy = set.model.virtual_machine_profile.eviction_policy.unwrap_or(EvictionPolicy::Deallocate);
            let Some(wr) = w.records.get_mut(id) else { return };
            let r = &mut wr.record;
            r.host_failure.stale_copies.push(StaleCopy { host: from.clone(), incarnation: r.incarnation, since: now });
            r.incarnation = r.incarnation.max(herd_driver::Incarnation::FIRST.0) + 1;
            r.host = None;
            r.moving = None;
            r.host_failure.unreachable_since = None;
            let detail = format!("host {from} failed");
            match policy {
                EvictionPolicy::Deallocate => {
                    // Nothing is left to stop here: the instance is deallocated in the record,
                    // and its copy on the failed host is destroyed when that host returns.
                    let _ = apply_event(w.transitions, set, r, Event::DeallocateRequested, now);
                    let _ = apply_event(w.transitions, set, r, Event::DeallocateDone, now);
                    r.goal = InstanceGoal::Deallocated;
                    r.eviction = Some(herd_model::spot::Eviction {
                        at: now,
                        reason: EvictionReason::Capacity,
                        detail: detail.clone(),
                    });
                }
                EvictionPolicy::Delete => {
                    r.goal = InstanceGoal::Deleted;
                    r.delete_reason = Some(format!("Spot eviction: {detail}"));
                }
            }
            wr.dirty = true;
            w.note("SpotEviction", format!("instance {id} evicted ({detail}); evictionPolicy {policy}"));
        }
        _ => {}
    }
}

/// Hosts that still have copies of instances moved away (Returning: no new instances).
pub fn hosts_with_stale_copies<'a>(records: impl IntoIterator<Item = &'a InstanceRecord>) -> BTreeSet<String> {
    records.into_iter().flat_map(|r| r.host_failure.stale_copies.iter().map(|c| c.host.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::record;
    use herd_model::host::Scheduling;

    fn secs(n: i64) -> chrono::Duration {
        chrono::Duration::seconds(n)
    }

    fn host(name: &str) -> HostRecord {
        HostRecord {
            name: name.into(),
            zone: "1".into(),
            fault_domain: None,
            scheduling: Scheduling::Schedulable,
            capacity: Default::default(),
            agent_version: String::new(),
            certificate_fingerprint: String::new(),
            join_token_id: String::new(),
            joined_at: Utc::now(),
            max_lease_ms: 0,
            fabric_address: None,
        }
    }

    #[test]
    fn a_silent_host_is_unreachable_after_the_grace_and_lost_only_past_replace_after_and_the_lease_bound() {
        let t0 = Utc::now();
        let timing = FailureTiming { grace: secs(5), replace_after: secs(30) };
        let hosts = [host("h1"), host("h2"), host("h3")];
        // h1 heard now; h2 silent 10 s with a 40 s lease granted once; h3 silent 31 s, lease 10 s.
        let silence = |n: &str| match n {
            "h1" => Some(Silence { since: t0, heard: true, max_lease: secs(10) }),
            "h2" => Some(Silence { since: t0 - secs(10), heard: true, max_lease: secs(40) }),
            "h3" => Some(Silence { since: t0 - secs(31), heard: true, max_lease: secs(10) }),
            _ => None,
        };
        let f = HostFailures::of(&hosts, silence, t0, &timing);
        assert_eq!(f.live, BTreeSet::from(["h1".to_string()]));
        assert_eq!(f.unreachable, BTreeSet::from(["h2".to_string(), "h3".to_string()]));
        assert_eq!(f.lost, BTreeSet::from(["h3".to_string()]));
        // h2 after 35 s: past replace_after, but its 40 s lease (bound 42.4 s) is not over.
        let f = HostFailures::of(&hosts, silence, t0 + secs(25), &timing);
        assert!(!f.lost.contains("h2"));
        let f = HostFailures::of(&hosts, silence, t0 + secs(33), &timing);
        assert!(f.lost.contains("h2"), "42.4 s into the silence");
        // Without a link nothing is known, and nothing is lost.
        assert!(HostFailures::of(&hosts, |_| None, t0 + secs(3600), &timing).is_empty());
        // Just after a server start, a host not heard yet is neither live nor unreachable.
        let start = |_: &str| Some(Silence { since: t0, heard: false, max_lease: secs(10) });
        let f = HostFailures::of(&hosts[..1], start, t0 + secs(2), &timing);
        assert_eq!((f.unheard.len(), f.live.len(), f.unreachable.len()), (1, 0, 0));
    }

    #[test]
    fn instances_on_a_lost_host_are_replaced_or_evicted_and_their_other_steps_dropped() {
        let set = crate::testkit::stored_set("web", 1, crate::testkit::model(3, serde_json::Value::Null));
        let on = |id: u64, h: &str| {
            let mut r = record(id, 1, InstanceState::Running);
            r.host = Some(h.into());
            r
        };
        let mut deleting = on(2, "h2");
        deleting.goal = InstanceGoal::Deleted;
        let records = [on(0, "h1"), on(1, "h2"), deleting];
        let f = HostFailures {
            unreachable: BTreeSet::from(["h2".to_string()]),
            lost: BTreeSet::from(["h2".to_string()]),
            live: BTreeSet::from(["h1".to_string()]),
            unheard: BTreeSet::new(),
        };
        let steps = plan(&set, &records.iter().collect::<Vec<_>>(), &f);
        assert_eq!(
            steps,
            vec![
                Step::HostUnreachable { id: InstanceId(1), unreachable: true },
                Step::Replace { id: InstanceId(1), from: "h2".into(), to: None },
                Step::HostUnreachable { id: InstanceId(2), unreachable: true },
            ]
        );
        // A mark from before a server restart stays while the host is not heard yet.
        let mut marked = on(0, "h1");
        marked.host_failure.unreachable_since = Some(Utc::now());
        let f2 = HostFailures { unheard: BTreeSet::from(["h1".to_string()]), ..Default::default() };
        assert!(plan(&set, &[&marked], &f2).is_empty());
        // Heard again before replace_after: the mark goes (health and rotation come back).
        let back = HostFailures { live: BTreeSet::from(["h1".to_string()]), ..Default::default() };
        assert_eq!(
            plan(&set, &[&marked], &back),
            vec![Step::HostUnreachable { id: InstanceId(0), unreachable: false }]
        );
        let mut planned = vec![Step::Restart(InstanceId(1)), Step::Restart(InstanceId(0))];
        apply_plan(&mut planned, steps);
        assert_eq!(planned[0], Step::Restart(InstanceId(0)), "instance 1's restart was planned on the lost copy");
        assert!(!planned.contains(&Step::Restart(InstanceId(1))));
    }

    #[test]
    fn a_replacement_is_a_new_incarnation_on_the_new_host_that_remembers_the_old_copy() {
        let set = crate::testkit::stored_set("web", 1, crate::testkit::model(2, serde_json::Value::Null));
        let mut r = record(0, 1, InstanceState::Running);
        r.host = Some("h2".into());
        r.private_ip = Some("10.0.0.4".into());
        r.host_failure.unreachable_since = Some(Utc::now());
        let transitions = Default::default();
        let mut w = SetDraft::new(&set, 1, None, [(r, Some(1))], &transitions);
        let now = Utc::now();
        apply_step(&mut w, &Step::Replace { id: InstanceId(0), from: "h2".into(), to: Some("h3".into()) }, now);
        let r = &w.records[&InstanceId(0)].record;
        assert_eq!((r.host.as_deref(), r.incarnation, r.state), (Some("h3"), 2, InstanceState::Creating));
        assert_eq!(r.private_ip.as_deref(), Some("10.0.0.4"), "the same private IP");
        assert_eq!(r.host_failure.stale_copies, vec![StaleCopy { host: "h2".into(), incarnation: 1, since: now }]);
        assert_eq!(r.host_failure.recreated, Some(Recreation { from_host: "h2".into(), at: now, incarnation: 2 }));
        assert_eq!(r.host_failure.unreachable_since, None);
        assert!(w.log.iter().any(|(op, m)| op == "RecreateInstance" && m.contains("data disks start empty")));
        assert_eq!(hosts_with_stale_copies([r]), BTreeSet::from(["h2".to_string()]));

        // A crash after this intent (or a failed build) leaves a Creating record the new host
        // does not have: the next pass builds it there, as any creation.
        let (status, observed, drains) = (Default::default(), Default::default(), Default::default());
        let limits = crate::plan::Limits::default();
        let records = [r.clone()];
        let next = crate::plan::plan(&crate::plan::SetInput {
            set: &set,
            set_revision: 1,
            status: &status,
            instances: &records,
            observed: &observed,
            now: now + secs(1),
            limits: &limits,
            in_place_extensions: false,
            drains: &drains,
        });
        assert!(next.steps.contains(&Step::Ensure(InstanceId(0))), "{:?}", next.steps);
    }
}
