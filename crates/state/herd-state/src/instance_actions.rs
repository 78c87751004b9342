//! Instance actions (start, stop, deallocate, restart, reimage, update-instances,
//! delete-instances, simulate-eviction) as one state change each.
//!
//! Why here: an action on a set's instances is a change to many records that must agree: each
//! chosen instance's goal or pending action, the set's capacity when instances are deleted (as
//! Azure lowers it), and the activity line. Up to a transaction's size it commits atomically;
//! over it, in chunks whose every write is idempotent, so a request cut short and sent again
//! completes (docs/architecture.md, "Transaction limits").

use crate::actions::InstanceAction;
use crate::activity::user_event;
use crate::batch::{commit_chunks_reapplying, CHUNK_RETRIES};
use crate::keys::SetKey;
use crate::lookup::{self, LookupError};
use crate::records::{Expected, Records, StateError, Versioned};
use chrono::{DateTime, Utc};
use herd_model::instance::{InstanceGoal, InstanceRecord, InstanceState, PendingAction, ProtectionPolicy};
use herd_model::scale_set::StoredScaleSet;
use herd_model::{FieldError, InstanceId, ScaleSetName};
use herd_store::{CodecError, Expect, Kind, Store, StoreError, StoreExt, WriteOp};
use std::collections::BTreeMap;

/// Why an instance action, or a read of one instance, was refused.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("scale set '{0}' is being deleted")]
    SetDeleting(ScaleSetName),
    #[error("instance(s) {missing} do not exist in scale set '{set}'; its instances are: {existing}")]
    NoInstances { set: ScaleSetName, missing: String, existing: String },
    /// `id` as the request gave it.
    #[error("instance {id} does not exist in scale set '{set}'")]
    NoInstance { set: ScaleSetName, id: String },
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error(transparent)]
    State(#[from] StateError),
}

crate::records::store_error_via_state!(ActionError);

/// `0-4, 7, 9-10`: a compact list of ids for log lines and messages.
pub fn id_list(ids: &[InstanceId]) -> String {
    let mut v: Vec<u64> = ids.iter().map(|i| i.0).collect();
    v.sort_unstable();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        let mut end = start;
        while i + 1 < v.len() && v[i + 1] == end + 1 {
            i += 1;
            end = v[i];
        }
        parts.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
        i += 1;
    }
    parts.join(", ")
}

/// Instance `id` of `set` (`raw_id` as the request named it, for the message). A record that
/// does not decode is an error, and is not quarantined by this read.
pub fn instance(
    store: &dyn Store,
    set: &StoredScaleSet,
    id: InstanceId,
    raw_id: &str,
) -> Result<InstanceRecord, ActionError> {
    let key = SetKey::of(set).instance(id).to_string();
    let o = store
        .get(Kind::Instance, &key)?
        .ok_or_else(|| ActionError::NoInstance { set: set.name.clone(), id: raw_id.to_string() })?;
    Ok(serde_json::from_value(o.value).map_err(|source| StoreError::from(CodecError::JsonAt { what: key, source }))?)
}

/// Sets the protection policy of instance `id` of `set` (`raw_id` as the request named it) as
/// a compare-and-swap with its log line; an instance that is not counted (being deleted, an
/// overprovisioned extra) does not exist for this.
pub fn set_protection(
    store: &dyn Store,
    set: &StoredScaleSet,
    (id, raw_id): (InstanceId, &str),
    policy: &ProtectionPolicy,
    now: DateTime<Utc>,
) -> Result<(), ActionError> {
    let key = SetKey::of(set).instance(id);
    let cur = store
        .instance(&key)?
        .filter(|o| o.value.is_counted())
        .ok_or_else(|| ActionError::NoInstance { set: set.name.clone(), id: raw_id.to_string() })?;
    let mut rec = cur.value.clone();
    rec.protect_from_scale_in = policy.protect_from_scale_in;
    rec.protect_from_scale_set_actions = policy.protect_from_scale_set_actions;
    let message = format!(
        "instance {raw_id}: protectFromScaleIn={}, protectFromScaleSetActions={}",
        policy.protect_from_scale_in, policy.protect_from_scale_set_actions
    );
    let ev = user_event(now, set.group.as_str(), set.name.as_str(), "SetProtectionPolicy", message);
    store.update_instance(&key, &rec, Expected::Revision(cur.revision), Some(ev))?;
    Ok(())
}

/// Whether extension changes can run in place on this set's instances: every driver runs
/// scripts, but a VM of the qemu driver needs the image's guest agent to do it (a directory
/// image runs as a process instance there too, which needs none).
pub fn in_place_extensions(store: &dyn Store, set: &StoredScaleSet, qemu: bool) -> Result<bool, ActionError> {
    if !qemu {
        return Ok(true);
    }
    let images: Vec<herd_model::image::Image> =
        store.list_as(Kind::Image, crate::keys::ALL)?.into_iter().map(|o| o.value).collect();
    let urn = set.model.virtual_machine_profile.storage_profile.image_reference.urn()?;
    Ok(herd_model::image::resolve(&images, &urn)
        .is_some_and(|i| matches!(i.source, herd_model::image::ImageSource::Directory { .. }) || i.has_guest_agent()))
}

/// An instance action as a request asks it.
#[derive(Debug, Clone)]
pub struct ActionRequest {
    pub action: InstanceAction,
    /// The ids as given; `None` or `["*"]` is every instance, an empty list is refused.
    pub ids: Option<Vec<String>>,
    /// The server runs the qemu driver (extension changes in place need the guest agent).
    pub qemu: bool,
    pub now: DateTime<Utc>,
    /// Why, where the action records it (a redeploy's scheduled event: `drain of host h1`).
    pub reason: Option<String>,
}

/// What an instance action did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionOutcome {
    /// The instances the action applies to.
    pub applied: Vec<InstanceId>,
    /// Instances left alone, with why.
    pub skipped: Vec<String>,
}

/// The records of the live instances `ids` names (as an action would choose them).
pub fn chosen_records(
    store: &dyn Store,
    set: &StoredScaleSet,
    ids: Option<&[String]>,
) -> Result<Vec<InstanceRecord>, ActionError> {
    let records = store.instances_of(&SetKey::of(set))?;
    let live: BTreeMap<u64, &Versioned<InstanceRecord>> = records
        .iter()
        .filter(|o| o.value.goal != InstanceGoal::Deleted && !o.value.overprovisioned)
        .map(|o| (o.value.instance_id.0, o))
        .collect();
    Ok(choose(set, &live, ids)?.into_iter().map(|id| live[&id].value.clone()).collect())
}

/// The live instances (not being deleted, not overprovisioned extras) the request names.
fn choose(
    set: &StoredScaleSet,
    live: &BTreeMap<u64, &Versioned<InstanceRecord>>,
    ids: Option<&[String]>,
) -> Result<Vec<u64>, ActionError> {
    let list = match ids {
        // As in az: leaving the ids out means every instance; an empty list is a mistake
        // (a script's empty variable), never "all".
        None => return Ok(live.keys().copied().collect()),
        Some([]) => {
            return Err(FieldError::new(
                "instanceIds",
                "is empty; give instance ids (as list-instances shows them), [\"*\"] for all, or leave instanceIds out for all",
            )
            .into())
        }
        Some([star]) if star == "*" => return Ok(live.keys().copied().collect()),
        Some(list) => list,
    };
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let n: u64 = s.trim().parse().map_err(|_| {
            FieldError::new(
                format!("instanceIds[{i}]"),
                format!("'{s}' is not an instance id; give numbers as list-instances shows them, or '*'"),
            )
        })?;
        if live.contains_key(&n) {
            if !out.contains(&n) {
                out.push(n);
            }
        } else {
            missing.push(InstanceId(n));
        }
    }
    if !missing.is_empty() {
        let existing: Vec<InstanceId> = live.keys().map(|k| InstanceId(*k)).collect();
        return Err(ActionError::NoInstances {
            set: set.name.clone(),
            missing: id_list(&missing),
            existing: if existing.is_empty() { "none".into() } else { id_list(&existing) },
        });
    }
    Ok(out)
}

/// Applies `req` to the instances of the set read as `cur` (at that revision): see the module
/// doc. Returns which instances it applies to and which it skipped.
pub fn apply_instance_action(
    store: &dyn Store,
    cur: &Versioned<StoredScaleSet>,
    req: &ActionRequest,
) -> Result<ActionOutcome, ActionError> {
    let (set, action, now) = (&cur.value, req.action, req.now);
    if set.deleting {
        return Err(ActionError::SetDeleting(set.name.clone()));
    }
    let records = store.instances_of(&SetKey::of(set))?;
    let live: BTreeMap<u64, &Versioned<InstanceRecord>> = records
        .iter()
        .filter(|o| o.value.goal != InstanceGoal::Deleted && !o.value.overprovisioned)
        .map(|o| (o.value.instance_id.0, o))
        .collect();
    let chosen = choose(set, &live, req.ids.as_deref())?;
    let in_place = in_place_extensions(store, set, req.qemu)?;
    if action == InstanceAction::SimulateEviction
        && !herd_model::spot::is_spot(set.model.virtual_machine_profile.priority)
    {
        return Err(FieldError::new(
            "virtualMachineProfile.priority",
            format!("simulate-eviction applies only to Spot (or Low) scale sets; '{}' is Regular", set.name),
        )
        .into());
    }
    let mut ops = Vec::new();
    let (mut applied, mut skipped, mut notes) = (Vec::new(), Vec::new(), Vec::<String>::new());
    for id in &chosen {
        let o = live[id];
        let mut r = o.value.clone();
        match apply_action(action, &mut r, set, in_place, now, req.reason.as_deref()) {
            Ok(Some(note)) => notes.push(format!("{id}: {note}")),
            Ok(None) => {}
            Err(why) => {
                skipped.push(format!("{id}: {why}"));
                continue;
            }
        }
        if r != o.value {
            ops.push(WriteOp::put(Kind::Instance, o.key.clone(), &r, Expect::Revision(o.revision))?);
        }
        applied.push(InstanceId(*id));
    }
    // The writes that close the request (the capacity, the activity line) go last.
    let n_instance_ops = ops.len();
    let mut lowered = None;
    let mut message =
        format!("{action} instance(s) {}", if applied.is_empty() { "none".into() } else { id_list(&applied) });
    if action == InstanceAction::DeleteInstances && !applied.is_empty() {
        // As in Azure, deleting instances lowers the capacity by as many.
        let mut next = set.clone();
        let before = next.model.sku.capacity;
        next.model.sku.capacity = (before - applied.len() as i64).max(0);
        lowered = Some(before - next.model.sku.capacity);
        if next.model.zone_balance {
            check_zone_balance(&next, &records, &applied)?;
        }
        message.push_str(&format!("; capacity {before} → {}", next.model.sku.capacity));
        ops.push(WriteOp::put(Kind::ScaleSet, cur.key.clone(), &next, Expect::Revision(cur.revision))?);
    }
    if !skipped.is_empty() {
        message.push_str(&format!("; skipped {}", skipped.join("; ")));
    }
    if let Some(n) = notes.first() {
        message.push_str(&format!("; {}", n.split_once(": ").map_or(n.as_str(), |(_, t)| t)));
    }
    ops.push(WriteOp::Activity(user_event(now, set.group.as_str(), set.name.as_str(), &action.operation(), message)));
    if ops.len() <= herd_store::MAX_TXN_OPS && herd_store::check_txn(&ops).is_ok() {
        store.txn(ops)?;
    } else {
        let chunked = Chunked { action, set, in_place, now, lowered, reason: req.reason.as_deref() };
        chunked.write(store, ops, n_instance_ops)?;
    }
    Ok(ActionOutcome { applied, skipped })
}

/// What `action` does to one instance record, in place: `Ok` with an optional note when it
/// applies (the record may be unchanged: it already had what the action asks), `Err` with the
/// reason when the instance is skipped. Applying it twice is applying it once, so a request
/// written in chunks can be re-applied (see [`write_in_chunks`]).
fn apply_action(
    action: InstanceAction,
    r: &mut InstanceRecord,
    set: &StoredScaleSet,
    in_place: bool,
    now: chrono::DateTime<chrono::Utc>,
    reason: Option<&str>,
) -> Result<Option<&'static str>, &'static str> {
    let mut note = None;
    match action {
        InstanceAction::Start => r.goal = InstanceGoal::Running,
        InstanceAction::Stop | InstanceAction::PowerOff => r.goal = InstanceGoal::Stopped,
        InstanceAction::Deallocate => r.goal = InstanceGoal::Deallocated,
        InstanceAction::Restart => {
            if r.state != InstanceState::Running {
                return Err("not running");
            }
            r.pending = Some(PendingAction::Restart);
        }
        InstanceAction::Reimage => r.pending = Some(PendingAction::Reimage),
        InstanceAction::UpdateInstances => {
            if r.model_generation == set.model_generation && r.pending != Some(PendingAction::Reimage) {
                return Err("already on the latest model");
            }
            if r.pending != Some(PendingAction::Reimage) {
                let action = r.upgrade_action(set, in_place);
                if action == PendingAction::Reimage && !in_place && r.upgrade_action(set, true) != action {
                    note = Some("the image has no guest agent, so the extension change is applied by a reimage");
                }
                r.pending = Some(action);
            }
        }
        InstanceAction::DeleteInstances => {
            r.goal = InstanceGoal::Deleted;
            r.delete_reason = Some("deleted by user".into());
        }
        InstanceAction::Redeploy => {
            use herd_model::spot::{EvictionReason, ScheduledEvent, ScheduledEventType, PREEMPT_NOTICE_SECS};
            if r.pending == Some(PendingAction::Redeploy) || r.state == InstanceState::Redeploying {
                return Ok(None); // asked already
            }
            if r.host.is_none() {
                return Err("not placed on a host");
            }
            if matches!(r.state, InstanceState::Deallocated | InstanceState::Deleting | InstanceState::Creating) {
                return Err("not built on a host (creating, deallocated or being deleted)");
            }
            let why = reason.unwrap_or("redeploy requested");
            if herd_model::spot::is_spot(set.model.virtual_machine_profile.priority) {
                // Spot instances are evicted, not moved.
                if r.eviction.is_some()
                    || r.scheduled_events.iter().any(|e| e.event_type == ScheduledEventType::Preempt)
                {
                    return Ok(None);
                }
                r.scheduled_events.push(ScheduledEvent::new(
                    ScheduledEventType::Preempt,
                    now,
                    chrono::Duration::seconds(PREEMPT_NOTICE_SECS),
                    format!("Spot instances are evicted, not moved ({why})"),
                    Some(EvictionReason::Capacity),
                ));
                note = Some("a Spot instance is evicted instead of moved");
            } else {
                r.pending = Some(PendingAction::Redeploy);
                r.scheduled_events.retain(|e| e.event_type != ScheduledEventType::Redeploy);
                // Due at once: the guest sees it while the load balancer drains it.
                r.scheduled_events.push(ScheduledEvent::new(
                    ScheduledEventType::Redeploy,
                    now,
                    chrono::Duration::zero(),
                    why.to_string(),
                    None,
                ));
            }
        }
        InstanceAction::SimulateEviction => {
            use herd_model::spot::{EvictionReason, ScheduledEvent, ScheduledEventType, PREEMPT_NOTICE_SECS};
            if r.state == InstanceState::Deallocated || r.eviction.is_some() {
                return Err("already evicted or deallocated");
            }
            if r.scheduled_events.iter().any(|e| e.event_type == ScheduledEventType::Preempt) {
                return Err("already has a Preempt event");
            }
            r.scheduled_events.push(ScheduledEvent::new(
                ScheduledEventType::Preempt,
                now,
                chrono::Duration::seconds(PREEMPT_NOTICE_SECS),
                "simulated eviction (simulate-eviction)",
                Some(EvictionReason::Simulated),
            ));
        }
    }
    r.next_attempt_at = None;
    Ok(note)
}

/// An instance action over the store's transaction limit (more than 126 instances), written in
/// chunks: the instance records first, each chunk atomic, and last the writes that close the
/// request (the capacity a deletion lowers, the activity line), after every instance is
/// marked. A chunk that meets a concurrent write (the reconciler moving an instance on) is
/// re-read and re-applied, up to [`CHUNK_RETRIES`] times. The rule, in docs/architecture.md
/// ("Transaction limits"): a request over the limit is not atomic, but each of its writes is
/// idempotent, so repeating a half-applied request completes it.
struct Chunked<'a> {
    action: InstanceAction,
    set: &'a StoredScaleSet,
    in_place: bool,
    now: DateTime<Utc>,
    /// How much a deletion lowers the capacity.
    lowered: Option<i64>,
    reason: Option<&'a str>,
}

impl Chunked<'_> {
    fn write(&self, store: &dyn Store, mut ops: Vec<WriteOp>, n_instance_ops: usize) -> Result<(), ActionError> {
        let mut tail = ops.split_off(n_instance_ops);
        // Re-read a record and apply the action again to it.
        commit_chunks_reapplying(store, ops, |key| -> Result<_, ActionError> {
            let Some(o) = store.get_as::<InstanceRecord>(Kind::Instance, key)? else { return Ok(None) };
            let mut r = o.value.clone();
            if apply_action(self.action, &mut r, self.set, self.in_place, self.now, self.reason).is_ok() && r != o.value
            {
                return Ok(Some(WriteOp::put(Kind::Instance, key, &r, Expect::Revision(o.revision))?));
            }
            Ok(None)
        })?;
        // The closing writes. A deletion's capacity is a compare-and-swap on the set: if the
        // set changed meanwhile, lower the capacity as fresh read by as many.
        let mut attempt = 0;
        loop {
            match store.txn(tail.clone()) {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict { .. }) if attempt < CHUNK_RETRIES && self.lowered.is_some() => {
                    attempt += 1;
                    let cur = lookup::scale_set(store, &self.set.group, &self.set.name)?;
                    if cur.value.deleting {
                        return Err(ActionError::SetDeleting(self.set.name.clone()));
                    }
                    let mut next = cur.value.clone();
                    next.model.sku.capacity = (next.model.sku.capacity - self.lowered.unwrap_or(0)).max(0);
                    for op in &mut tail {
                        if let WriteOp::Put { kind: Kind::ScaleSet, .. } = op {
                            *op = WriteOp::put(Kind::ScaleSet, cur.key.clone(), &next, Expect::Revision(cur.revision))?;
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// With `zoneBalance=true`, a delete that leaves zones more than one instance apart is refused.
fn check_zone_balance(
    set: &StoredScaleSet,
    records: &[Versioned<InstanceRecord>],
    removing: &[InstanceId],
) -> Result<(), FieldError> {
    let mut counts: BTreeMap<&str, i64> = set.model.zones.iter().map(|z| (z.as_str(), 0)).collect();
    for o in records {
        let r = &o.value;
        if r.is_counted() && !removing.contains(&r.instance_id) {
            if let Some(z) = r.zone.as_deref() {
                *counts.entry(z).or_default() += 1;
            }
        }
    }
    let (min, max) = (counts.values().min().copied().unwrap_or(0), counts.values().max().copied().unwrap_or(0));
    if max - min > 1 {
        let shape: Vec<String> = counts.iter().map(|(z, c)| format!("zone {z}: {c}")).collect();
        return Err(FieldError::new(
            "instanceIds",
            format!("zoneBalance=true: this delete would leave zones unbalanced ({})", shape.join(", ")),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{activity_count, now, set_with_instances, store, stored_set};

    fn req(action: InstanceAction, ids: Option<&[&str]>) -> ActionRequest {
        ActionRequest {
            action,
            ids: ids.map(|l| l.iter().map(|s| s.to_string()).collect()),
            qemu: false,
            now: now(),
            reason: None,
        }
    }

    #[test]
    fn id_lists_are_compact() {
        assert_eq!(id_list(&[InstanceId(4), InstanceId(0), InstanceId(1), InstanceId(2), InstanceId(9)]), "0-2, 4, 9");
        assert_eq!(id_list(&[]), "");
    }

    #[test]
    fn delete_instances_lowers_the_capacity_with_the_records_in_one_commit() {
        let store = store();
        let set = set_with_instances(&store, &stored_set("rg", "web", 3), 3);
        let out = apply_instance_action(&store, &set, &req(InstanceAction::DeleteInstances, Some(&["1"]))).unwrap();
        assert_eq!(out, ActionOutcome { applied: vec![InstanceId(1)], skipped: vec![] });
        let cur = lookup::scale_set(&store, &set.value.group, &set.value.name).unwrap();
        assert_eq!(cur.value.model.sku.capacity, 2);
        let r = store.instances_of(&SetKey::of(&set.value)).unwrap();
        assert_eq!(r[1].value.goal, InstanceGoal::Deleted);
        let log = store.activity(&Default::default()).unwrap();
        assert_eq!(log.last().unwrap().message, "deleteInstances instance(s) 1; capacity 3 → 2");
    }

    #[test]
    fn a_refused_or_stale_action_writes_nothing() {
        let store = store();
        let set = set_with_instances(&store, &stored_set("rg", "web", 2), 2);
        let err = apply_instance_action(&store, &set, &req(InstanceAction::Start, Some(&[]))).unwrap_err();
        assert!(matches!(&err, ActionError::Invalid(f) if f.field == "instanceIds"), "{err:?}");
        let err = apply_instance_action(&store, &set, &req(InstanceAction::Start, Some(&["1", "5", "6"]))).unwrap_err();
        assert_eq!(err.to_string(), "instance(s) 5-6 do not exist in scale set 'web'; its instances are: 0-1");
        let err = apply_instance_action(&store, &set, &req(InstanceAction::SimulateEviction, None)).unwrap_err();
        assert!(matches!(&err, ActionError::Invalid(f) if f.field == "virtualMachineProfile.priority"), "{err:?}");
        assert_eq!(activity_count(&store), 0);
        // The set changes after it was read: the deletion (a CAS on the set) loses whole.
        apply_instance_action(&store, &set, &req(InstanceAction::Stop, Some(&["0"]))).unwrap();
        let mut moved = lookup::scale_set(&store, &set.value.group, &set.value.name).unwrap();
        moved.value.model.sku.capacity = 5;
        store
            .txn(vec![WriteOp::put(Kind::ScaleSet, moved.key.clone(), &moved.value, Expect::Revision(moved.revision))
                .unwrap()])
            .unwrap();
        let before = activity_count(&store);
        let err = apply_instance_action(&store, &set, &req(InstanceAction::DeleteInstances, Some(&["1"]))).unwrap_err();
        assert!(matches!(&err, ActionError::State(e) if e.is_conflict()), "{err:?}");
        assert_eq!(activity_count(&store), before);
        assert_eq!(store.instances_of(&SetKey::of(&set.value)).unwrap()[1].value.goal, InstanceGoal::Running);
    }

    #[test]
    fn restart_skips_an_instance_that_is_not_running() {
        let store = store();
        let set = set_with_instances(&store, &stored_set("rg", "web", 2), 2);
        let key = SetKey::of(&set.value).instance(InstanceId(0));
        let mut r = store.instance(&key).unwrap().unwrap();
        r.value.state = InstanceState::Stopped;
        store.update_instance(&key, &r.value, crate::Expected::Revision(r.revision), None).unwrap();
        let out = apply_instance_action(&store, &set, &req(InstanceAction::Restart, None)).unwrap();
        assert_eq!(out.applied, vec![InstanceId(1)]);
        assert_eq!(out.skipped, vec!["0: not running".to_string()]);
    }

    #[test]
    fn an_action_on_more_instances_than_a_transaction_holds_applies_to_all() {
        let store = store();
        let n = herd_store::MAX_TXN_OPS as u64 + 20;
        let set = set_with_instances(&store, &stored_set("rg", "big", n as i64), n);
        let out = apply_instance_action(&store, &set, &req(InstanceAction::DeleteInstances, None)).unwrap();
        assert_eq!(out.applied.len() as u64, n);
        let records = store.instances_of(&SetKey::of(&set.value)).unwrap();
        assert!(records.iter().all(|r| r.value.goal == InstanceGoal::Deleted), "every chunk is written");
        assert_eq!(lookup::scale_set(&store, &set.value.group, &set.value.name).unwrap().value.model.sku.capacity, 0);
        assert_eq!(activity_count(&store), 1, "one log line, written last");
    }
}
