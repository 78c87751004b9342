//! Scale sets: create one, commit a change to its model, start its deletion.
//!
//! Why here: a model change is several records that must change together or not at all: the
//! set (its generation bumped when the VM model changes), its sealed secrets (merged, so a
//! request that omits a protected setting keeps the stored one), the model history of the new
//! generation and the activity-log line. The checks that refuse a change (zones and priority
//! are fixed, a Regular scale-out must fit on the hosts, extension commands must be complete)
//! run before that one transaction, so a refused change writes nothing.

use crate::activity::user_event;
use crate::keys::{GroupKey, SetKey};
use crate::lookup::LookupError;
use crate::model_refs::RefError;
use crate::quarantine::{failure_reason, quarantined_sets};
use crate::records::{Records, StateError, Versioned};
use crate::summary::{summarize, SetSummary};
use chrono::{DateTime, Utc};
use herd_model::activity::Actor;
use herd_model::instance::InstanceRecord;
use herd_model::scale_set::{ScaleSetModel, ScaleSetStatus, Secrets, StoredScaleSet, Suspension};
use herd_model::spot::is_spot;
use herd_model::{FieldError, GroupName, ScaleSetName};
use herd_store::seal::Sealer;
use herd_store::{Expect, Kind, Store, StoreError, StoreExt, WriteOp};

/// Why a scale-set operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScaleSetError {
    /// The request is not acceptable, naming the field.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("scale set '{set}' already exists in resource group '{group}'")]
    Exists { group: GroupName, set: ScaleSetName },
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error(transparent)]
    State(#[from] StateError),
}

crate::records::store_error_via_state!(ScaleSetError);

impl From<RefError> for ScaleSetError {
    fn from(e: RefError) -> Self {
        match e {
            RefError::Invalid(f) => ScaleSetError::Invalid(f),
            RefError::State(s) => ScaleSetError::State(s),
        }
    }
}

/// The hosts' answer to "may `set` gain `extra` instances?" (at create, `extra` is its whole
/// capacity, possibly 0): its zones and fault domains must exist on the hosts, and `extra` more
/// Regular instances must fit after evicting every Spot instance (the capacity arbiter's rules
/// live in herd-capacity; the server wires them in). A refusal is an
/// [`ScaleSetError::Invalid`] naming the field (`sku.capacity`, `zones[i]`,
/// `platformFaultDomainCount`) and saying what is short. Called for Regular and Spot sets.
pub trait Room: Sync {
    fn check(&self, store: &dyn Store, set: &StoredScaleSet, extra: i64) -> Result<(), ScaleSetError>;
}

/// No hosts declared: room is unlimited.
pub struct Unlimited;

impl Room for Unlimited {
    fn check(&self, _: &dyn Store, _: &StoredScaleSet, _: i64) -> Result<(), ScaleSetError> {
        Ok(())
    }
}

/// What a model change writes with: the sealer for its secrets, the room check, the time.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub sealer: &'a Sealer,
    pub room: &'a dyn Room,
    pub now: DateTime<Utc>,
}

/// The sets of group `group`, by key.
pub fn scale_sets_of(store: &dyn Store, group: &GroupName) -> Result<Vec<Versioned<StoredScaleSet>>, StateError> {
    Ok(store.list_as::<StoredScaleSet>(Kind::ScaleSet, &GroupKey::new(group.as_str()).children())?)
}

/// Creates set `set` in `group` at model generation 1 with its history entry, its sealed
/// secrets and a log line; refused when the set exists (also when it is created concurrently)
/// or a Regular set does not fit on the hosts.
pub fn create_scale_set(
    store: &dyn Store,
    ctx: Ctx<'_>,
    group: &GroupName,
    set: &ScaleSetName,
    model: ScaleSetModel,
    secrets: &Secrets,
) -> Result<Versioned<StoredScaleSet>, ScaleSetError> {
    let stored = StoredScaleSet {
        name: set.clone(),
        group: group.clone(),
        model_generation: 1,
        time_created: ctx.now,
        deleting: false,
        model,
    };
    let m = &stored.model;
    let msg = format!(
        "scale set created: {} x {}, image {}, upgrade policy {}",
        m.sku.capacity,
        m.sku.name,
        m.virtual_machine_profile.storage_profile.image_reference.urn().map(|u| u.to_string()).unwrap_or_default(),
        m.upgrade_policy.mode
    );
    if let Some(p) = &m.virtual_machine_profile.extension_profile {
        p.check_commands(&secrets.extension_protected_settings)?;
    }
    ctx.room.check(store, &stored, m.capacity() as i64)?;
    let key = SetKey::new(group.clone(), set.clone());
    let mut ops = vec![
        WriteOp::put(Kind::ScaleSet, key.to_string(), &stored, Expect::Absent)?,
        WriteOp::put(Kind::ModelHistory, key.history(1).to_string(), &stored.model, Expect::Any)?,
    ];
    if !secrets.is_empty() {
        ops.push(WriteOp::Put {
            kind: Kind::Secret,
            key: key.to_string(),
            value: ctx.sealer.seal(secrets)?,
            expect: Expect::Any,
        });
    }
    ops.push(WriteOp::Activity(user_event(ctx.now, group.as_str(), set.as_str(), "CreateScaleSet", msg)));
    let rev = store.txn(ops).map_err(|e| match e {
        StoreError::Conflict { .. } => ScaleSetError::Exists { group: group.clone(), set: set.clone() },
        other => other.into(),
    })?;
    Ok(Versioned { key: key.to_string(), revision: rev, create_revision: rev, value: stored })
}

/// A change to a set's model, as [`commit_model`] writes it.
pub struct ModelChange<'a> {
    pub model: ScaleSetModel,
    /// The secrets the request carried (merged into the stored ones).
    pub secrets: Secrets,
    /// Extensions replaced whole (an extension PUT): their stored protected settings are
    /// dropped before the merge.
    pub replaced: &'a [String],
    /// The log line's operation and message, and who asked.
    pub operation: &'a str,
    pub message: String,
    pub actor: Actor,
}

/// Refuses what an existing set cannot change: its zones, its fault domain count, and Spot to
/// Regular or back.
fn check_fixed(old: &ScaleSetModel, new: &ScaleSetModel) -> Result<(), FieldError> {
    if new.zones != old.zones {
        return Err(FieldError::not_supported("zones", "changing the zones of an existing scale set"));
    }
    if new.fault_domain_count() != old.fault_domain_count() {
        return Err(FieldError::new(
            "platformFaultDomainCount",
            format!(
                "cannot change from {} to {} on an existing scale set (as in Azure, it is fixed at create); create a new scale set",
                old.fault_domain_count(),
                new.fault_domain_count()
            ),
        ));
    }
    let (old_vp, new_vp) = (&old.virtual_machine_profile, &new.virtual_machine_profile);
    if is_spot(old_vp.priority) != is_spot(new_vp.priority) {
        return Err(FieldError::new(
            "virtualMachineProfile.priority",
            format!(
                "cannot change from {} to {} on an existing scale set; create a new scale set",
                old_vp.priority, new_vp.priority
            ),
        ));
    }
    Ok(())
}

/// The set's stored secrets with `change`'s merged in: the protected settings of `replaced`
/// extensions dropped, then the new ones merged (an omitted one keeps its sealed value), then
/// those of extensions no longer in `model` dropped. Returns (stored, merged).
fn merged_secrets(
    store: &dyn Store,
    sealer: &Sealer,
    key: &SetKey,
    model: &ScaleSetModel,
    secrets: Secrets,
    replaced: &[String],
) -> Result<(Option<Secrets>, Secrets), ScaleSetError> {
    let stored: Option<Secrets> =
        store.get(Kind::Secret, &key.to_string())?.map(|o| sealer.open(&o.value)).transpose()?;
    let mut all = stored.clone().unwrap_or_default();
    for r in replaced {
        all.extension_protected_settings.remove(&r.to_ascii_lowercase());
    }
    all.merge(secrets);
    all.retain_extensions(model);
    if let Some(p) = &model.virtual_machine_profile.extension_profile {
        p.check_commands(&all.extension_protected_settings)?;
    }
    Ok((stored, all))
}

/// Commits `change` to the set read as `cur`, as one compare-and-swap on its revision: the
/// model generation is bumped (with a history entry) when the VM model or the secrets change,
/// the secrets are merged and sealed, and the change is logged. A Regular scale-out must fit on
/// the hosts. Returns the set as written.
pub fn commit_model(
    store: &dyn Store,
    ctx: Ctx<'_>,
    cur: &Versioned<StoredScaleSet>,
    change: ModelChange<'_>,
) -> Result<Versioned<StoredScaleSet>, ScaleSetError> {
    let ModelChange { model, secrets, replaced, operation, mut message, actor } = change;
    let old = &cur.value;
    check_fixed(&old.model, &model)?;
    if model.sku.capacity > old.model.sku.capacity {
        ctx.room.check(store, old, model.sku.capacity - old.model.sku.capacity)?;
    }
    let mut next = old.clone();
    let bump = old.model.vm_model_differs(&model) || !secrets.is_empty();
    if bump {
        next.model_generation += 1;
        message.push_str(&format!("; model generation {} → {}", old.model_generation, next.model_generation));
    }
    if model.sku.capacity != old.model.sku.capacity {
        message.push_str(&format!("; capacity {} → {}", old.model.sku.capacity, model.sku.capacity));
    }
    next.model = model;
    let key = SetKey::of(old);
    let mut ops = vec![WriteOp::put(Kind::ScaleSet, key.to_string(), &next, Expect::Revision(cur.revision))?];
    let (stored, all) = merged_secrets(store, ctx.sealer, &key, &next.model, secrets, replaced)?;
    if stored.as_ref() != Some(&all) && !(stored.is_none() && all.is_empty()) {
        ops.push(WriteOp::Put {
            kind: Kind::Secret,
            key: key.to_string(),
            value: ctx.sealer.seal(&all)?,
            expect: Expect::Any,
        });
    }
    if bump {
        ops.push(WriteOp::put(
            Kind::ModelHistory,
            key.history(next.model_generation).to_string(),
            &next.model,
            Expect::Any,
        )?);
    }
    let mut ev = user_event(ctx.now, old.group.as_str(), old.name.as_str(), operation, message);
    ev.actor = actor;
    ops.push(WriteOp::Activity(ev));
    let rev = store.txn(ops)?;
    Ok(Versioned { key: key.to_string(), revision: rev, create_revision: cur.create_revision, value: next })
}

/// Marks the set read as `cur` for deletion (the reconciler removes its instances, then it),
/// as a compare-and-swap. A set already being deleted is left as it is: returns whether it
/// was marked now.
pub fn delete_scale_set(
    store: &dyn Store,
    cur: &Versioned<StoredScaleSet>,
    now: DateTime<Utc>,
) -> Result<bool, StateError> {
    if cur.value.deleting {
        return Ok(false);
    }
    let mut next = cur.value.clone();
    next.deleting = true;
    let (g, n) = (next.group.to_string(), next.name.to_string());
    store.txn(vec![
        WriteOp::put(Kind::ScaleSet, cur.key.clone(), &next, Expect::Revision(cur.revision))?,
        WriteOp::Activity(user_event(now, &g, &n, "DeleteScaleSet", "scale set deletion started".into())),
    ])?;
    Ok(true)
}

herd_model::string_enum!(
    /// Where a set stands, as `vmss show` reports it (Azure's `provisioningState`).
    ///
    /// ```text
    ///   (PUT) ──▶ Creating ──converged──▶ Succeeded ◀──converged── Updating ◀──model or capacity change
    ///                 │                                                │
    ///                 └──────── creation suspended / record quarantined ──▶ Failed
    ///   any ──DELETE──▶ Deleting
    /// ```
    SetProvisioningState {
        Creating = "Creating",
        Updating = "Updating",
        Succeeded = "Succeeded",
        Failed = "Failed",
        Deleting = "Deleting",
    } default Creating
);

/// What the reconciler has made of a set: its status record, its instance summary (Failed with
/// the reason when a record of it is quarantined) and the provisioning state they give.
#[derive(Debug, Clone)]
pub struct Observed {
    pub status: Option<ScaleSetStatus>,
    pub summary: SetSummary,
    pub provisioning_state: SetProvisioningState,
}

/// [`observe`] remembered by store revision: the result is a function of the store's contents
/// (and of `now` only for a quarantined set's start, which a quarantine write changes the
/// revision for), so while the store's revision and the set's stay the same, the last result
/// is the answer. Why: a client waiting for a large set (the CLI's `--wait`, a dashboard, the
/// provisioning benchmark every 20 ms) read and decoded every instance record on every poll,
/// most of them between two writes of the reconciler.
#[derive(Debug, Default)]
pub struct ObserveCache {
    /// Set key → (store revision, set revision, what it observed then).
    seen: std::sync::Mutex<std::collections::HashMap<String, (u64, u64, Observed)>>,
}

/// Sets remembered at most; past it the cache starts afresh.
const OBSERVE_CACHE_SETS: usize = 4096;

impl ObserveCache {
    /// [`observe`], or its last result if nothing in the store changed since.
    pub fn observe(
        &self,
        store: &dyn Store,
        set: &Versioned<StoredScaleSet>,
        now: DateTime<Utc>,
    ) -> Result<Observed, StateError> {
        let key = SetKey::of(&set.value).to_string();
        let head = store.revision()?;
        if let Some((rev, set_rev, o)) = self.seen.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            if *rev == head && *set_rev == set.revision {
                return Ok(o.clone());
            }
        }
        let o = observe(store, set, now)?;
        // The store may have moved on while this read; a result is kept under the revision read
        // first, so a later poll at a newer revision reads again.
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= OBSERVE_CACHE_SETS {
            seen.clear();
        }
        seen.insert(key, (head, set.revision, o.clone()));
        Ok(o)
    }
}

/// Reads what the reconciler has made of the set stored as `set` (a quarantined status reads
/// as none; the set is then shown Failed).
pub fn observe(store: &dyn Store, set: &Versioned<StoredScaleSet>, now: DateTime<Utc>) -> Result<Observed, StateError> {
    let key = SetKey::of(&set.value);
    let status = match store.get_as::<ScaleSetStatus>(Kind::ScaleSetStatus, &key.to_string()) {
        Ok(o) => o.map(|o| o.value),
        Err(StoreError::Codec(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let records: Vec<InstanceRecord> = store.instances_of(&key)?.into_iter().map(|o| o.value).collect();
    let mut summary = summarize(&set.value, status.as_ref(), &records);
    if let Some(q) = quarantined_sets(store).get(&key.to_string()) {
        summary.suspended = Some(Suspension {
            reason: failure_reason(q),
            at_revision: set.revision,
            since: q.iter().map(|r| r.since).min().unwrap_or(now),
        });
        summary.converged = false;
    }
    let provisioning_state = if set.value.deleting {
        SetProvisioningState::Deleting
    } else if summary.suspended.is_some() {
        SetProvisioningState::Failed
    } else if summary.converged {
        SetProvisioningState::Succeeded
    } else if status.is_none() || (summary.running == 0 && set.value.model_generation == 1 && summary.capacity > 0) {
        SetProvisioningState::Creating
    } else {
        SetProvisioningState::Updating
    };
    Ok(Observed { status, summary, provisioning_state })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{activity_count, group, model, now, raw, set_name, store};
    use serde_json::json;

    /// Refuses every scale-out, as hosts with no room do.
    struct Full;

    impl Room for Full {
        fn check(&self, _: &dyn Store, _: &StoredScaleSet, extra: i64) -> Result<(), ScaleSetError> {
            Err(FieldError::new("sku.capacity", format!("{extra} more do not fit")).into())
        }
    }

    fn ctx<'a>(sealer: &'a Sealer, room: &'a dyn Room) -> Ctx<'a> {
        Ctx { sealer, room, now: now() }
    }

    fn password(p: &str) -> Secrets {
        Secrets { admin_password: Some(p.into()), ..Default::default() }
    }

    fn change(capacity: i64, secrets: Secrets) -> ModelChange<'static> {
        ModelChange {
            model: model(capacity, json!({})),
            secrets,
            replaced: &[],
            operation: "Scale",
            message: "scale requested".into(),
            actor: Actor::User,
        }
    }

    /// Creates `rg/web` of `capacity` with `secrets`, as far as `room` allows.
    fn create(
        store: &dyn Store,
        sealer: &Sealer,
        room: &dyn Room,
        capacity: i64,
        secrets: &Secrets,
    ) -> Result<Versioned<StoredScaleSet>, ScaleSetError> {
        create_scale_set(store, ctx(sealer, room), &group("rg"), &set_name("web"), model(capacity, json!({})), secrets)
    }

    fn created(store: &dyn Store, sealer: &Sealer) -> Versioned<StoredScaleSet> {
        create(store, sealer, &Unlimited, 2, &password("s3cret")).unwrap()
    }

    #[test]
    fn create_writes_the_set_its_history_its_sealed_secrets_and_a_log_line_once() {
        let (store, sealer) = (store(), Sealer::ephemeral());
        let set = created(&store, &sealer);
        assert_eq!((set.value.model_generation, set.key.as_str()), (1, "rg/web"));
        assert!(raw(&store, Kind::ModelHistory, &SetKey::of(&set.value).history(1).to_string()).is_some());
        let sealed = raw(&store, Kind::Secret, "rg/web").expect("the secrets are stored");
        assert!(!sealed.to_string().contains("s3cret"), "the secret is sealed at rest");
        assert_eq!(sealer.open::<Secrets>(&sealed).unwrap().admin_password.as_deref(), Some("s3cret"));
        assert_eq!(activity_count(&store), 1);
        let again = create(&store, &sealer, &Unlimited, 1, &Secrets::default()).unwrap_err();
        assert_eq!(again.to_string(), "scale set 'web' already exists in resource group 'rg'");
        assert_eq!(activity_count(&store), 1, "the refused create wrote nothing");
    }

    #[test]
    fn a_create_refused_for_room_writes_nothing() {
        let (store, sealer) = (store(), Sealer::ephemeral());
        let err = create(&store, &sealer, &Full, 3, &password("p")).unwrap_err();
        assert!(matches!(&err, ScaleSetError::Invalid(f) if f.field == "sku.capacity"), "{err:?}");
        assert!(raw(&store, Kind::ScaleSet, "rg/web").is_none());
        assert!(raw(&store, Kind::Secret, "rg/web").is_none());
        assert_eq!(activity_count(&store), 0);
    }

    #[test]
    fn commit_keeps_the_sealed_secret_a_request_omits_and_bumps_only_for_the_vm_model() {
        let (store, sealer) = (store(), Sealer::ephemeral());
        let set = created(&store, &sealer);
        // Capacity alone: no new generation, the stored password kept.
        let scaled = commit_model(&store, ctx(&sealer, &Unlimited), &set, change(4, Secrets::default())).unwrap();
        assert_eq!((scaled.value.model_generation, scaled.value.model.sku.capacity), (1, 4));
        let kept: Secrets = sealer.open(&raw(&store, Kind::Secret, "rg/web").unwrap()).unwrap();
        assert_eq!(kept.admin_password.as_deref(), Some("s3cret"), "the omitted secret keeps its sealed value");
        // A new password is a model change: generation 2, with its history.
        let next = commit_model(&store, ctx(&sealer, &Unlimited), &scaled, change(4, password("n3w"))).unwrap();
        assert_eq!(next.value.model_generation, 2);
        assert!(raw(&store, Kind::ModelHistory, &SetKey::of(&next.value).history(2).to_string()).is_some());
        let newer: Secrets = sealer.open(&raw(&store, Kind::Secret, "rg/web").unwrap()).unwrap();
        assert_eq!(newer.admin_password.as_deref(), Some("n3w"));
        let log = store.activity(&Default::default()).unwrap();
        assert!(log.last().unwrap().message.ends_with("model generation 1 → 2"), "{:?}", log.last());
    }

    #[test]
    fn commit_is_compare_and_swap_and_a_refusal_writes_nothing() {
        let (store, sealer) = (store(), Sealer::ephemeral());
        let set = created(&store, &sealer);
        commit_model(&store, ctx(&sealer, &Unlimited), &set, change(3, Secrets::default())).unwrap();
        // `set` is now stale: the commit loses, whole.
        let stale = commit_model(&store, ctx(&sealer, &Unlimited), &set, change(5, password("x"))).unwrap_err();
        assert!(matches!(&stale, ScaleSetError::State(e) if e.is_conflict()), "{stale:?}");
        let cur = crate::lookup::scale_set(&store, &group("rg"), &set_name("web")).unwrap();
        assert_eq!(cur.value.model.sku.capacity, 3);
        let secrets: Secrets = sealer.open(&raw(&store, Kind::Secret, "rg/web").unwrap()).unwrap();
        assert_eq!(secrets.admin_password.as_deref(), Some("s3cret"), "the lost commit's secret was not written");
        // A scale-out the hosts cannot hold: nothing written, not even the log line.
        let before = activity_count(&store);
        let err = commit_model(&store, ctx(&sealer, &Full), &cur, change(9, Secrets::default())).unwrap_err();
        assert_eq!(err.to_string(), "sku.capacity: 6 more do not fit");
        assert_eq!(crate::lookup::scale_set(&store, &group("rg"), &set_name("web")).unwrap().revision, cur.revision);
        assert_eq!(activity_count(&store), before);
        // A scale-in needs no room.
        commit_model(&store, ctx(&sealer, &Full), &cur, change(1, Secrets::default())).unwrap();
        // Zones are fixed.
        let mut zoned = change(1, Secrets::default());
        zoned.model.zones = vec!["1".into()];
        let cur = crate::lookup::scale_set(&store, &group("rg"), &set_name("web")).unwrap();
        let err = commit_model(&store, ctx(&sealer, &Unlimited), &cur, zoned).unwrap_err();
        assert!(matches!(&err, ScaleSetError::Invalid(f) if f.field == "zones"), "{err:?}");
        // So is the fault domain count; absent and 1 are the same count.
        let mut counted = change(1, Secrets::default());
        counted.model.platform_fault_domain_count = Some(2);
        let err = commit_model(&store, ctx(&sealer, &Unlimited), &cur, counted).unwrap_err();
        assert!(
            matches!(&err, ScaleSetError::Invalid(f) if f.field == "platformFaultDomainCount" && f.message.contains("cannot change from 1 to 2")),
            "{err:?}"
        );
        let before = activity_count(&store);
        let mut same = change(1, Secrets::default());
        same.model.platform_fault_domain_count = Some(1);
        commit_model(&store, ctx(&sealer, &Unlimited), &cur, same).unwrap();
        assert_eq!(activity_count(&store), before + 1);
    }

    #[test]
    fn delete_marks_once_and_observe_reports_deleting() {
        let (store, sealer) = (store(), Sealer::ephemeral());
        let set = created(&store, &sealer);
        assert_eq!(observe(&store, &set, now()).unwrap().provisioning_state, SetProvisioningState::Creating);
        assert!(delete_scale_set(&store, &set, now()).unwrap());
        let cur = crate::lookup::scale_set(&store, &group("rg"), &set_name("web")).unwrap();
        assert!(!delete_scale_set(&store, &cur, now()).unwrap(), "already being deleted: nothing written");
        assert!(delete_scale_set(&store, &set, now()).unwrap_err().is_conflict(), "a stale read loses");
        assert_eq!(observe(&store, &cur, now()).unwrap().provisioning_state, SetProvisioningState::Deleting);
        assert_eq!(scale_sets_of(&store, &group("rg")).unwrap().len(), 1);
    }

    #[test]
    fn the_observe_cache_answers_as_observe_does_and_sees_every_write() {
        use crate::testkit::{record, set_with_instances, stored_set};
        use herd_store::{Expect, WriteOp};
        let store = store();
        let set = set_with_instances(&store, &stored_set("rg", "web", 3), 3);
        let cache = ObserveCache::default();
        let first = cache.observe(&store, &set, now()).unwrap();
        assert_eq!(first.summary.running, 3);
        // Nothing written: the same answer (from memory).
        assert_eq!(cache.observe(&store, &set, now()).unwrap().summary, first.summary);
        // An instance stops: the next read sees it, as observe does.
        let key = SetKey::of(&set.value).instance(herd_model::InstanceId(1)).to_string();
        let cur = store.get_as::<herd_model::instance::InstanceRecord>(Kind::Instance, &key).unwrap().unwrap();
        let mut stopped = record(1);
        stopped.state = herd_model::instance::InstanceState::Stopped;
        stopped.goal = herd_model::instance::InstanceGoal::Stopped;
        store.txn(vec![WriteOp::put(Kind::Instance, key, &stopped, Expect::Revision(cur.revision)).unwrap()]).unwrap();
        let after = cache.observe(&store, &set, now()).unwrap();
        assert_eq!(after.summary, observe(&store, &set, now()).unwrap().summary);
        assert_eq!(after.summary.running, 2, "{:?}", after.summary);
    }
}
