//! Capacity across scale sets: the one place a pass looks at every set at once.
//!
//! Per-set planning cannot see the hosts: two sets may each want the last free vCPU, and a
//! Regular scale-out may need room that Spot instances of another set are using. So after every
//! set is planned, this module turns the pass's instance-starting steps (`Create`, `Start` of a
//! deallocated instance, `Restore`) into requests for the pure arbiter in `herd-capacity`, and
//! rewrites the steps by its decision:
//!
//! ```text
//!   placed   ──▶ the step stays, with the host recorded (Create's NewInstance.host, or Assign)
//!   waiting  ──▶ dropped this pass; Spot instances got Preempt events and free the room later
//!   refused  ──▶ dropped; the set's CapacityNote says what is missing
//!   skipped  ──▶ an overprovisioned extra without free room: dropped, no note (it is optional;
//!                it never evicts Spot instances nor waits for room)
//!   preempt  ──▶ PostEvent(Preempt, 30 s) on the chosen Spot instances (capacity or price)
//! ```
//! A placed `Create` also records the fault domain index the arbiter chose; a deallocated
//! instance starting again asks for the one it has. Before arbitrating, the new instances of a
//! set without `zoneBalance` planned for a zone that no host takes new instances for go to the
//! set's remaining zones, and the set's `placementNote` says so (a `zoneBalance` set's are
//! refused instead, with a capacity note).
//! The arbiter is pure and the steps are data, so all of this is decided before any intent is
//! persisted: a crash leaves nothing half-applied.

use crate::plan::Step;

mod apply;
pub use apply::{apply_step, eviction_gap};
#[cfg(test)]
mod tests;
use chrono::{DateTime, Duration, Utc};
use herd_capacity::{Decision, Refusal, Request, UNLIMITED_HOST};
use herd_model::{
    instance::{InstanceRecord, InstanceState},
    scale_set::StoredScaleSet,
    sku::SkuTable,
    spot::{is_spot, HostSpec, ScheduledEventType, PREEMPT_NOTICE_SECS},
    InstanceId, InstanceKey,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A SKU's spot price at an instant (None: no spot price configured).
pub type SpotPriceFn = dyn Fn(&str, DateTime<Utc>) -> Option<f64> + Send + Sync;

/// The spot price of a SKU at an instant, shared with the server's price book.
#[derive(Clone)]
pub struct SpotPrice(pub Arc<SpotPriceFn>);

impl SpotPrice {
    /// No spot prices at all.
    pub fn none() -> Self {
        Self(Arc::new(|_, _| None))
    }
}

impl std::fmt::Debug for SpotPrice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpotPrice(..)")
    }
}

/// One set's part of the pass, as this module sees it.
pub struct SetSteps<'a> {
    pub set: &'a StoredScaleSet,
    pub records: Vec<&'a InstanceRecord>,
    pub steps: &'a mut Vec<Step>,
    /// The status's current note (and whether it only waits for evictions), to clear it when
    /// the shortfall is over.
    pub note: Option<(String, bool)>,
    /// The status's current placement note (zones without hosts), to clear it when over.
    pub placement_note: Option<String>,
}

// The arbiter's view of stored sets and instances lives in the state layer (the API's room
// check reads them the same way).
pub use herd_state::placement::{holder, max_price, request, size_of, tier_of};

/// Arbitrates the pass's instance-starting steps across all sets and rewrites them.
///
/// `unplaced_on`: the host that instances with no host recorded run on (the server's own
/// machine once hosts have joined), so they are counted there and never "adopted" elsewhere.
pub fn arbitrate(
    parts: &mut [SetSteps<'_>],
    hosts: &[HostSpec],
    unplaced_on: Option<&str>,
    skus: &SkuTable,
    price: &SpotPrice,
    now: DateTime<Utc>,
) {
    let unlimited = hosts.is_empty();
    // Without hosts and without Spot sets there is nothing to place, evict or restore, and no
    // note to clear: skip building holders for every instance on every pass.
    if unlimited
        && parts.iter().all(|p| {
            p.note.is_none()
                && p.placement_note.is_none()
                && !is_spot(p.set.model.virtual_machine_profile.priority)
                && p.set.model.fault_domain_count() == 1
        })
    {
        return;
    }
    let mut placement_notes: BTreeMap<usize, String> = BTreeMap::new();
    for (pi, p) in parts.iter_mut().enumerate() {
        if let Some(note) = redirect_zones(p, hosts) {
            placement_notes.insert(pi, note);
        }
    }
    let mut holders = Vec::new();
    let mut requests = Vec::new();
    // Which part each key belongs to.
    let mut owner: BTreeMap<InstanceKey, usize> = BTreeMap::new();
    for (pi, p) in parts.iter().enumerate() {
        let set = p.set;
        let key = |id: InstanceId| InstanceKey { group: set.group.clone(), set: set.name.clone(), id };
        // Instances re-created after a host failure ask for room anew (their old host is gone).
        let replacing: BTreeSet<InstanceId> = p
            .steps
            .iter()
            .filter_map(|s| if let Step::Replace { id, to: None, .. } = s { Some(*id) } else { None })
            .collect();
        for r in &p.records {
            owner.insert(key(r.instance_id), pi);
            if replacing.contains(&r.instance_id) {
                continue;
            }
            holders.extend(holder(set, r, skus, unlimited).map(|mut h| {
                if let (None, Some(local)) = (&h.host, unplaced_on) {
                    h.host = Some(local.to_string());
                }
                h
            }));
        }
        let zone_of = |id: InstanceId| p.records.iter().find(|r| r.instance_id == id).and_then(|r| r.zone.clone());
        for step in p.steps.iter() {
            let mut want = |id: InstanceId, zone: Option<String>, extra: bool| {
                owner.insert(key(id), pi);
                requests.push(Request { extra, ..request(set, id, zone, skus) });
            };
            match step {
                // An overprovisioned extra only takes free room (see herd-capacity's rules).
                Step::Create(new) => new.iter().for_each(|n| want(n.id, n.zone.clone(), n.overprovisioned)),
                // A host-failure replacement: the same zone, its own fault domain.
                Step::Replace { id, to: None, .. } => {
                    owner.insert(key(*id), pi);
                    let fd = p.records.iter().find(|r| r.instance_id == *id).and_then(|r| r.platform_fault_domain);
                    requests.push(Request { fault_domain: fd, ..request(set, *id, zone_of(*id), skus) });
                }
                // A move (redeploy): the same zone and fault domain, any host but its own (its
                // holder stays there until the move is done).
                Step::Redeploy { id, from, to: None } => {
                    owner.insert(key(*id), pi);
                    let fd = p.records.iter().find(|r| r.instance_id == *id).and_then(|r| r.platform_fault_domain);
                    requests.push(Request {
                        fault_domain: fd,
                        avoid_host: Some(from.clone()),
                        ..request(set, *id, zone_of(*id), skus)
                    });
                }
                Step::Start(id) | Step::Restore(id)
                    if p.records.iter().any(|r| r.instance_id == *id && r.state == InstanceState::Deallocated) =>
                {
                    // It goes back to the fault domain it has.
                    owner.insert(key(*id), pi);
                    let fd = p.records.iter().find(|r| r.instance_id == *id).and_then(|r| r.platform_fault_domain);
                    requests.push(Request { fault_domain: fd, ..request(set, *id, zone_of(*id), skus) });
                }
                _ => {}
            }
        }
    }
    let f = |sku: &str| (price.0)(sku, now);
    let mut decision: Decision = herd_capacity::arbitrate(hosts, &holders, &requests, &f);
    let out_of_zone = keep_replacements_in_zone(parts, hosts, &mut decision);
    rewrite_steps(parts, &owner, &decision, unlimited, &mut placement_notes, &out_of_zone);
}

/// A set without `zoneBalance` whose zones include some no host takes new instances for (but
/// not all): its new instances planned for those zones go to the remaining ones instead, each
/// to the one with the fewest of the set's instances (tie: the first listed). A zonal instance
/// never changes zone: only instances not created yet move. Returns the set's placement note.
fn redirect_zones(p: &mut SetSteps<'_>, hosts: &[HostSpec]) -> Option<String> {
    let set = p.set;
    if set.model.zone_balance || set.model.zones.is_empty() {
        return None;
    }
    let (usable, dead) = herd_state::placement::usable_zones(set, hosts);
    if dead.is_empty() || usable.is_empty() {
        return None;
    }
    let mut count: Vec<usize> = usable
        .iter()
        .map(|z| p.records.iter().filter(|r| r.is_counted() && r.zone.as_deref() == Some(z.as_str())).count())
        .collect();
    for step in p.steps.iter() {
        if let Step::Create(new) = step {
            for n in new {
                if let Some(i) = usable.iter().position(|z| Some(z) == n.zone.as_ref()) {
                    count[i] += 1;
                }
            }
        }
    }
    for step in p.steps.iter_mut() {
        if let Step::Create(new) = step {
            for n in new.iter_mut().filter(|n| n.zone.as_ref().is_some_and(|z| dead.contains(z))) {
                let (i, _) = count.iter().enumerate().min_by_key(|(i, c)| (**c, *i)).expect("usable is not empty");
                count[i] += 1;
                n.zone = Some(usable[i].clone());
            }
        }
    }
    // The note names the zones, not this pass's moves, so it changes only when the zones do.
    let zones = |v: &[String]| format!("{} {}", if v.len() == 1 { "zone" } else { "zones" }, v.join(", "));
    Some(format!(
        "{} {} no host that takes new instances; new instances go to {} (zoneBalance is off)",
        zones(&dead),
        if dead.len() == 1 { "has" } else { "have" },
        zones(&usable)
    ))
}

/// A zonal instance re-created after a host failure stays in its zone: a placement on a host
/// of no zone (the arbiter's fallback, the server's own machine) is undone, and the instance
/// stays down with a note saying why. Returns those notes, by instance.
fn keep_replacements_in_zone(
    parts: &[SetSteps<'_>],
    hosts: &[HostSpec],
    d: &mut Decision,
) -> Vec<(InstanceKey, String)> {
    // Replaced zonal instances: (zone, failed host).
    let mut zone_of: BTreeMap<InstanceKey, (String, String)> = BTreeMap::new();
    for p in parts.iter() {
        for s in p.steps.iter() {
            if let Step::Replace { id, from, to: None } | Step::Redeploy { id, from, to: None } = s {
                let zone = p.records.iter().find(|r| r.instance_id == *id).and_then(|r| r.zone.clone());
                if let Some(z) = zone {
                    let key = InstanceKey { group: p.set.group.clone(), set: p.set.name.clone(), id: *id };
                    zone_of.insert(key, (z, from.clone()));
                }
            }
        }
    }
    if zone_of.is_empty() {
        return vec![];
    }
    let host_zone: BTreeMap<&str, Option<&str>> = hosts.iter().map(|h| (h.name.as_str(), h.zone.as_deref())).collect();
    let mut notes = Vec::new();
    d.placements.retain(|p| {
        let Some((zone, from)) = zone_of.get(&p.key) else { return true };
        if host_zone.get(p.host.as_str()).copied().flatten() == Some(zone.as_str()) {
            return true;
        }
        let moving = parts.iter().any(|part| {
            part.set.group == p.key.group
                && part.set.name == p.key.set
                && part.steps.iter().any(|s| matches!(s, Step::Redeploy { id, .. } if *id == p.key.id))
        });
        let msg = if moving {
            format!("instance {} cannot move off host {from}: zone {zone} has no other host with room for it", p.key.id)
        } else {
            format!(
                "instance {} is down: its host {from} failed and zone {zone} has no other host with room for it",
                p.key.id
            )
        };
        notes.push((p.key.clone(), msg));
        false
    });
    notes
}

/// Rewrites each part's steps by the arbiter's decision (see the table above).
fn rewrite_steps(
    parts: &mut [SetSteps<'_>],
    owner: &BTreeMap<InstanceKey, usize>,
    d: &Decision,
    unlimited: bool,
    placement_notes: &mut BTreeMap<usize, String>,
    out_of_zone: &[(InstanceKey, String)],
) {
    let host = |h: &str| if unlimited || h == UNLIMITED_HOST { None } else { Some(h.to_string()) };
    let placed: BTreeMap<&InstanceKey, Option<String>> = d.placements.iter().map(|p| (&p.key, host(&p.host))).collect();
    let domain: BTreeMap<&InstanceKey, Option<u32>> = d.placements.iter().map(|p| (&p.key, p.fault_domain)).collect();
    let adopted: BTreeMap<&InstanceKey, Option<String>> = d.adopted.iter().map(|p| (&p.key, host(&p.host))).collect();
    // Per part: the reasons, and whether every one of them is only a wait for evictions.
    let mut notes: BTreeMap<usize, (Vec<String>, bool)> = BTreeMap::new();
    for k in &d.waiting {
        if let Some(pi) = owner.get(k) {
            let e = notes.entry(*pi).or_insert((vec![], true));
            e.0.push(format!("instance {} waits for Spot instances to be evicted", k.id));
        }
    }
    for refused in &d.refused {
        let k = &refused.key;
        if let Some(pi) = owner.get(k) {
            let replacing = parts_replacing(parts, *pi, k.id);
            let moving = parts
                .get(*pi)
                .is_some_and(|p| p.steps.iter().any(|s| matches!(s, Step::Redeploy { id, .. } if *id == k.id)));
            let msg = match &refused.reason {
                Refusal::Capacity(s) if moving => {
                    format!("instance {} cannot move to another host of its zone: {s}", k.id)
                }
                Refusal::Capacity(s) if replacing => {
                    format!("instance {} is down: its host failed and its zone has no room for it: {s}", k.id)
                }
                Refusal::Capacity(s) => format!("no room for instance {}: {s}", k.id),
                other => format!("instance {} not started: {other}", k.id),
            };
            let e = notes.entry(*pi).or_insert((vec![], true));
            e.0.push(msg);
            e.1 = false;
        }
    }
    for (k, msg) in out_of_zone {
        if let Some(pi) = owner.get(k) {
            let e = notes.entry(*pi).or_insert((vec![], true));
            e.0.push(msg.clone());
            e.1 = false;
        }
    }
    let mut preempt_by_part: BTreeMap<usize, Vec<(InstanceId, &herd_model::spot::EvictionReason, &String)>> =
        BTreeMap::new();
    for p in &d.preempt {
        if let Some(pi) = owner.get(&p.key) {
            preempt_by_part.entry(*pi).or_default().push((p.key.id, &p.reason, &p.detail));
        }
    }
    for (pi, p) in parts.iter_mut().enumerate() {
        let key = |id: InstanceId| InstanceKey { group: p.set.group.clone(), set: p.set.name.clone(), id };
        let old = std::mem::take(p.steps);
        let mut out = Vec::with_capacity(old.len());
        for step in old {
            match step {
                Step::Create(new) => {
                    let first = new.iter().map(|n| n.id.0).min().unwrap_or(0);
                    let mut kept = Vec::new();
                    for mut n in new {
                        if let Some(h) = placed.get(&key(n.id)) {
                            n.host = h.clone();
                            n.fault_domain = domain.get(&key(n.id)).copied().flatten();
                            kept.push(n);
                        }
                    }
                    // Ids stay dense: the kept instances take the first ids of the batch.
                    for (i, n) in kept.iter_mut().enumerate() {
                        n.id = InstanceId(first + i as u64);
                    }
                    if !kept.is_empty() {
                        out.push(Step::Create(kept));
                    }
                }
                // Placed: re-created there in this pass. Not placed: it stays down, and the
                // set's capacity note says why.
                Step::Replace { id, from, to: None } => {
                    if let Some(Some(h)) = placed.get(&key(id)) {
                        out.push(Step::Replace { id, from, to: Some(h.clone()) });
                        out.push(Step::Ensure(id));
                    }
                }
                // Placed: moved there in this pass. Not placed: it stays where it is, and
                // the set's capacity note says why.
                Step::Redeploy { id, from, to: None } => {
                    if let Some(Some(h)) = placed.get(&key(id)) {
                        out.push(Step::Redeploy { id, from, to: Some(h.clone()) });
                    }
                }
                Step::Start(id) | Step::Restore(id) if is_deallocated(&p.records, id) => {
                    // No room (or too dear): the step waits for a later pass.
                    if let Some(h) = placed.get(&key(id)) {
                        out.push(Step::Assign { id, host: h.clone() });
                        if matches!(step, Step::Restore(_)) {
                            out.push(Step::Restore(id));
                        }
                        out.push(Step::Start(id));
                    }
                }
                other => out.push(other),
            }
        }
        for (id, reason, detail) in preempt_by_part.remove(&pi).unwrap_or_default() {
            let has = p.records.iter().any(|r| {
                r.instance_id == id && r.scheduled_events.iter().any(|e| e.event_type == ScheduledEventType::Preempt)
            });
            if !has {
                out.push(Step::PostEvent {
                    id,
                    kind: ScheduledEventType::Preempt,
                    notice: Duration::seconds(PREEMPT_NOTICE_SECS),
                    reason: Some(*reason),
                    description: detail.clone(),
                });
            }
        }
        // Holders placed now for the first time (records from before hosts were declared).
        if !unlimited {
            let assigned: BTreeSet<InstanceId> =
                out.iter().filter_map(|s| if let Step::Assign { id, .. } = s { Some(*id) } else { None }).collect();
            for r in &p.records {
                if r.host.is_none() && r.state != InstanceState::Deallocated && !assigned.contains(&r.instance_id) {
                    if let Some(Some(h)) = adopted.get(&key(r.instance_id)) {
                        out.push(Step::Assign { id: r.instance_id, host: Some(h.clone()) });
                    }
                }
            }
        }
        let note = notes.remove(&pi).map(|(v, waiting)| (summarize(&v), waiting));
        if note != p.note {
            out.push(Step::CapacityNote(note));
        }
        let placement = placement_notes.remove(&pi);
        if placement != p.placement_note {
            out.push(Step::PlacementNote(placement));
        }
        *p.steps = out;
    }
}

/// Whether part `pi` asks to re-create instance `id` after a host failure this pass.
fn parts_replacing(parts: &[SetSteps<'_>], pi: usize, id: InstanceId) -> bool {
    parts.get(pi).is_some_and(|p| p.steps.iter().any(|s| matches!(s, Step::Replace { id: i, .. } if *i == id)))
}

fn is_deallocated(records: &[&InstanceRecord], id: InstanceId) -> bool {
    records.iter().any(|r| r.instance_id == id && r.state == InstanceState::Deallocated)
}

/// One line for the set: the first reason, and how many more instances share the problem.
fn summarize(v: &[String]) -> String {
    match v {
        [one] => one.clone(),
        [first, rest @ ..] => format!("{first} (and {} more instance(s))", rest.len()),
        [] => String::new(),
    }
}
