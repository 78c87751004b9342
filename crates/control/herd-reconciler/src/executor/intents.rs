//! Phase A: every step applied to its set's draft (pure, see [`crate::draft`]), the drafts
//! turned into compare-and-swap writes and committed before any driver call, and the driver
//! calls the steps need.

use super::spec::SpecInputs;
use super::{DriverCall, ReconcileError, Reconciler};
use crate::draft::{Addresses, ApplyEnv, Ipam, ModelChange, SetDraft};
use crate::plan::apply::apply_step;
use crate::plan::Step;
use crate::rolling::RollingStep;
use chrono::{DateTime, Utc};
use herd_driver::Incarnation;
use herd_model::{
    activity::{ActivityEvent, ActivityStatus, Actor},
    image::Image,
    network::{LoadBalancer, VirtualNetwork},
    InstanceId, InstanceKey,
};
use herd_state::instance_actions::id_list;
use herd_state::intents::Writes;
use herd_state::keys::{CounterKey, ImageKey, SetKey};
use herd_state::{Expected, Records, StateError, Store, Versioned};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The server-wide counter that hands out host-local reach addresses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AddressCounter {
    next: u64,
}

/// What Phase A reads besides the snapshot (see [`Reconciler::prefetch`]).
struct Prefetched {
    address: Option<Versioned<AddressCounter>>,
    vnets: Vec<VirtualNetwork>,
    /// Sealed secrets by set key, for the sets whose instances are VMs (seeded with them).
    secrets: BTreeMap<String, Result<Option<serde_json::Value>, String>>,
}

impl Reconciler {
    /// Phase A: applies every step's intent to the working copies and commits them (with the
    /// address counter) before any driver call. Returns the driver calls to make and the
    /// extension runs to start.
    pub(super) async fn intents(
        &self,
        works: &mut [SetDraft<'_>],
        now: DateTime<Utc>,
        images: &[Image],
        lbs: &[LoadBalancer],
    ) -> Result<(Vec<DriverCall>, Vec<InstanceKey>), ReconcileError> {
        let pre = self.prefetch(works, images).await?;
        let mut ops = Writes::new();
        let addr_before = pre.address.as_ref().map_or(0, |o| o.value.next);
        let mut calls: Vec<DriverCall> = Vec::new();
        let mut extension_runs = Vec::new();
        let ipam =
            Ipam::new(&pre.vnets, works.iter().flat_map(|w| w.records.values().map(move |r| (w.set, &r.record))))
                .with_public_pool(self.config.public_ip_pool);
        let mut addrs = Addresses { next: addr_before, ipam };
        let env = ApplyEnv {
            now,
            limits: &self.config.limits,
            bridged: self.config.bridged,
            address_block: self.config.address_block,
        };
        let ctx = SpecInputs { images, lbs, secrets: &pre.secrets };
        for (wi, w) in works.iter_mut().enumerate() {
            let steps = std::mem::take(&mut w.steps);
            for step in &steps {
                apply_step(w, step, &env, &mut addrs);
            }
            model_writes(w, &mut ops)?;
            for step in &steps {
                if let Step::RunExtensions(id) = step {
                    extension_runs.push(InstanceKey { group: w.set.group.clone(), set: w.set.name.clone(), id: *id });
                }
            }
            for step in steps.iter().filter(|s| s.calls_driver()) {
                let Some(id) = step.instance() else { continue };
                let Some(r) = w.records.get(&id) else { continue };
                let key = InstanceKey { group: w.set.group.clone(), set: w.set.name.clone(), id };
                let fence = self.config.term.fence(Incarnation(r.record.incarnation));
                calls.push((wi, step.clone(), key, fence, self.spec(w.set, &r.record, &ctx, &addrs.ipam)));
            }
            // Creates also need an ensure call in this pass.
            for step in &steps {
                if let Step::Create(new) = step {
                    for n in new {
                        let Some(r) = w.records.get(&n.id) else { continue };
                        let key = InstanceKey { group: w.set.group.clone(), set: w.set.name.clone(), id: n.id };
                        let fence = self.config.term.fence(Incarnation(r.record.incarnation));
                        calls.push((
                            wi,
                            Step::Ensure(n.id),
                            key,
                            fence,
                            self.spec(w.set, &r.record, &ctx, &addrs.ipam),
                        ));
                    }
                }
            }
            if steps.contains(&Step::RemoveSet) {
                for h in std::mem::take(&mut w.history) {
                    ops.forget_model(&h);
                }
            }
            w.steps = steps;
            collect_writes(w, &mut ops, now)?;
        }
        if addrs.next != addr_before {
            let expected = pre.address.as_ref().map_or(Expected::Absent, |o| Expected::Revision(o.revision));
            ops.put_counter(CounterKey::HostlocalAddress, &AddressCounter { next: addrs.next }, expected)?;
        }
        if !ops.is_empty() {
            self.state.run(move |s| ops.commit_intents(s)).await?;
        }
        // Peers learn a new NIC's place before its host builds it.
        self.publish_fabric(works, &addrs.ipam);
        Ok((calls, extension_runs))
    }

    /// Tells the fabric sink where every bridged NIC of `works` is (see
    /// [`herd_driver::fabric`]); nothing without a sink or bridged networking.
    pub(super) fn publish_fabric(&self, works: &[SetDraft<'_>], ipam: &Ipam) {
        let Some(sink) = self.config.fabric.as_ref().filter(|_| self.config.bridged) else { return };
        let mut nics = Vec::new();
        for w in works {
            for (id, r) in &w.records {
                if let Some(net) = self.attachment(w.set, &r.record, ipam) {
                    let key = InstanceKey { group: w.set.group.clone(), set: w.set.name.clone(), id: *id };
                    let (host, name) = (r.record.host.clone(), r.record.computer_name.clone());
                    nics.push(herd_driver::fabric::PlacedNic { key, host, net, name });
                }
            }
        }
        sink.publish(nics);
    }

    /// [`publish_fabric`](Self::publish_fabric) for a pass with nothing to do (the addresses
    /// are the records' own).
    pub(super) async fn publish_fabric_unchanged(&self, works: &[SetDraft<'_>]) -> Result<(), ReconcileError> {
        if self.config.fabric.is_none() || !self.config.bridged {
            return Ok(());
        }
        let vnets: Vec<VirtualNetwork> =
            self.state.run(|s| Ok(s.virtual_networks()?.into_iter().map(|o| o.value).collect())).await?;
        let ipam = Ipam::new(&vnets, works.iter().flat_map(|w| w.records.values().map(move |r| (w.set, &r.record))));
        self.publish_fabric(works, &ipam);
        Ok(())
    }

    /// What Phase A reads besides the snapshot, in one call on the blocking pool: the address
    /// counter, the virtual networks, the sealed secrets of sets that will make driver calls
    /// and whose instances are VMs (their seeds carry them), the model a rollback returns to, and the model history of sets
    /// being removed. The last two are put on their set's work.
    async fn prefetch(&self, works: &mut [SetDraft<'_>], images: &[Image]) -> Result<Prefetched, ReconcileError> {
        let wanted: Vec<(SetKey, bool, Option<u64>, bool)> = works
            .iter()
            .map(|w| {
                let rollback = w.steps.iter().any(|s| matches!(s, Step::Rolling(RollingStep::Rollback { .. })));
                (
                    SetKey::of(w.set),
                    !w.steps.is_empty() && self.config.set_runs_vms(w.set, images),
                    w.status.rolling_upgrade.as_ref().filter(|_| rollback).map(|u| u.from_generation),
                    w.steps.contains(&Step::RemoveSet),
                )
            })
            .collect();
        let (pre, per_set) = self
            .state
            .run(move |s| {
                let mut pre = Prefetched {
                    address: s.counter(CounterKey::HostlocalAddress)?,
                    vnets: s.virtual_networks()?.into_iter().map(|o| o.value).collect(),
                    secrets: BTreeMap::new(),
                };
                let mut per_set = Vec::new();
                for (key, secrets, rollback, removed) in wanted {
                    if secrets {
                        pre.secrets.insert(key.to_string(), s.sealed_set_secrets(&key).map_err(|e| e.to_string()));
                    }
                    // A model not on record (or not readable) cannot be rolled back to.
                    let model = rollback.and_then(|g| s.model_at(&key.history(g)).ok().flatten()).map(|o| o.value);
                    let history = if removed { s.model_history_keys(&key)? } else { vec![] };
                    per_set.push((model, history));
                }
                Ok((pre, per_set))
            })
            .await?;
        for (w, (model, history)) in works.iter_mut().zip(per_set) {
            w.rollback_model = model;
            w.history = history;
        }
        Ok(pre)
    }
}

/// The model writes a set's steps decided (see [`ModelChange`]), compare-and-swap on the set's
/// revision as read.
fn model_writes(w: &mut SetDraft<'_>, ops: &mut Writes) -> Result<(), StateError> {
    let set_key = SetKey::of(w.set);
    for change in std::mem::take(&mut w.model_changes) {
        match change {
            ModelChange::OsImage(next) => {
                ops.put_scale_set(&set_key, &next, Expected::Revision(w.set_revision))?;
                ops.record_model(&set_key.history(next.model_generation), &next.model)?;
            }
            ModelChange::Rollback(next) => {
                ops.put_scale_set(&set_key, &next, Expected::Revision(w.set_revision))?;
                if let Err(e) = ops.record_model(&set_key.history(next.model_generation), &next.model) {
                    tracing::warn!(set = %set_key, error = %e, "the rolled-back model could not be recorded in the history");
                }
            }
        }
    }
    Ok(())
}

/// Records on their images the guest agents the driver saw answer (`answered`, see
/// `guest_agent`); returns whether it wrote any. A write that loses its compare-and-swap is
/// retried by the next pass.
pub(super) fn record_guest_agents(
    store: &dyn Store,
    now: DateTime<Utc>,
    images: &[Versioned<Image>],
    answered: &[(InstanceKey, herd_model::image::ImageSource)],
) -> Result<bool, StateError> {
    let mut wrote = false;
    for r in crate::guest_agent::records(images, answered) {
        let message = format!(
            "the QEMU guest agent answered on instance {} at boot: recorded on the image; its VMs now wait for \
         the agent, and extension changes run in place",
            r.instance
        );
        let key = match herd_model::ImageUrn::parse(&r.image.urn) {
            Ok(urn) => ImageKey::new(&urn),
            Err(e) => {
                tracing::warn!(image = %r.key, error = %e, "an image's URN does not parse; its guest agent is not recorded");
                continue;
            }
        };
        let mut w = Writes::new();
        w.put_image(&key, &r.image, Expected::Revision(r.revision))?;
        w.activity(event(now, "", &r.image.urn, "GuestAgentDetected", ActivityStatus::Succeeded, message));
        match w.commit(store) {
            Ok(_) => {
                wrote = true;
                tracing::info!(image = %r.image.urn, instance = %r.instance, "guest agent detected")
            }
            Err(e) if e.is_conflict() => {
                tracing::debug!(image = %r.image.urn, "recording the guest agent lost a race: next pass")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(wrote)
}

/// Turns a set's working copies into writes (Phase A), plus its activity log lines.
fn collect_writes(w: &mut SetDraft<'_>, ops: &mut Writes, now: DateTime<Utc>) -> Result<(), StateError> {
    let set_key = SetKey::of(w.set);
    let (g, n) = (w.set.group.as_str(), w.set.name.as_str());
    for (id, wr) in &w.records {
        if !wr.dirty {
            continue;
        }
        let expected = wr.revision.map_or(Expected::Absent, Expected::Revision);
        ops.put_instance(&set_key.instance(*id), &wr.record, expected)?;
    }
    if w.steps.contains(&Step::RemoveSet) {
        ops.remove_scale_set(&set_key, Expected::Revision(w.set_revision));
        ops.activity(event(now, g, n, "DeleteScaleSet", ActivityStatus::Succeeded, "scale set deleted".into()));
    } else if w.status_dirty {
        let expected = w.status_revision.map_or(Expected::Absent, Expected::Revision);
        ops.put_status(&set_key, &w.status, expected)?;
    }
    let marked: Vec<(InstanceId, String)> = w
        .steps
        .iter()
        .filter_map(|s| if let Step::MarkDelete { id, reason } = s { Some((*id, reason.clone())) } else { None })
        .collect();
    let mut by_reason: BTreeMap<String, Vec<InstanceId>> = BTreeMap::new();
    for (id, reason) in marked {
        by_reason.entry(reason).or_default().push(id);
    }
    for (reason, ids) in by_reason {
        w.log.push(("DeleteInstances".into(), format!("deleting instance(s) {}: {reason}", id_list(&ids))));
    }
    // Merge repetitive lines (e.g. many instances running) into one per operation.
    let mut running = Vec::new();
    for (op, msg) in std::mem::take(&mut w.log) {
        if op == "InstanceRunning" {
            running.push(msg.trim_start_matches("instance ").trim_end_matches(" is running").to_string());
            continue;
        }
        let status = if op == "InstanceFailed" || op == "ProvisioningSuspended" {
            ActivityStatus::Failed
        } else {
            ActivityStatus::Started
        };
        ops.activity(event(now, g, n, &op, status, msg));
    }
    if !running.is_empty() {
        let ids: Vec<InstanceId> = running.iter().filter_map(|s| s.parse().ok().map(InstanceId)).collect();
        ops.activity(event(
            now,
            g,
            n,
            "InstanceRunning",
            ActivityStatus::Succeeded,
            format!("instance(s) {} running", id_list(&ids)),
        ));
    }
    Ok(())
}

pub(super) fn event(
    now: DateTime<Utc>,
    group: &str,
    resource: &str,
    op: &str,
    status: ActivityStatus,
    message: String,
) -> ActivityEvent {
    ActivityEvent {
        seq: 0,
        time: now,
        resource_group: group.into(),
        resource: resource.into(),
        operation: op.into(),
        status,
        actor: Actor::Reconciler,
        message,
    }
}
