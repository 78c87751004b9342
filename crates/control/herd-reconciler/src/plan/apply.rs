//! Applying a step to a set's draft: the instance lifecycle and scale decisions (which record
//! is created with which id, address and zone, what an observed boot or failure does to the
//! record and the set's counters, which goal a scale-in sets). Pure: see [`crate::draft`].
//!
//! [`apply_step`] is the one entry point for every step; rolling-upgrade, repair and capacity steps
//! go to their own modules' `apply`.

use crate::draft::{host_local_address, subnet_of, wants_public_ip, Addresses, ApplyEnv, SetDraft, Working};
use crate::plan::{NewInstance, Step};
use herd_model::{
    instance::{Event, InstanceGoal, InstanceRecord, InstanceState, PendingAction},
    scale_set::Suspension,
    InstanceId,
};
use herd_state::instance_actions::id_list;
use herd_state::transitions::apply_event;

/// Applies one step's decision to the draft.
pub fn apply_step(w: &mut SetDraft<'_>, step: &Step, env: &ApplyEnv<'_>, addrs: &mut Addresses) {
    let now = env.now;
    match step {
        Step::Create(new) => create(w, new, env, addrs),
        Step::Observe { id, event, detail } => observe(w, *id, *event, detail.as_deref(), env),
        Step::MarkDelete { id, reason } => {
            if let Some(wr) = w.records.get_mut(id) {
                wr.record.goal = InstanceGoal::Deleted;
                wr.record.delete_reason = Some(reason.clone());
                wr.dirty = true;
            }
        }
        Step::Swap { promote, demote } => {
            for (id, extra) in [(promote, false), (demote, true)] {
                if let Some(wr) = w.records.get_mut(id) {
                    wr.record.overprovisioned = extra;
                    wr.dirty = true;
                }
            }
            w.note(
                "Overprovisioning",
                format!("extra instance {promote} was ready first and takes the place of instance {demote}"),
            );
        }
        Step::Ensure(id) => {
            if let Some(wr) = w.records.get_mut(id) {
                if wr.record.state == InstanceState::Failed {
                    // A refusal is logged and counted by apply_event.
                    let _ = apply_event(w.transitions, w.set, &mut wr.record, Event::Retry, now);
                    wr.record.attempts += 1;
                    wr.dirty = true;
                }
            }
        }
        Step::Stop(id) => w.transition(*id, Event::StopRequested, InstanceState::Stopping, now),
        Step::Deallocate(id) => w.transition(*id, Event::DeallocateRequested, InstanceState::Deallocating, now),
        Step::Start(id) => {
            w.transition(*id, Event::StartRequested, InstanceState::Starting, now);
            // A started instance is no longer an evicted one.
            if let Some(wr) = w.records.get_mut(id) {
                if wr.record.eviction.take().is_some() | !wr.record.scheduled_events.is_empty() {
                    wr.record.scheduled_events.clear();
                    wr.dirty = true;
                }
            }
        }
        Step::Restart(id) | Step::Resize(id) => {
            w.transition(*id, Event::RestartRequested, InstanceState::Restarting, now)
        }
        Step::Reimage(id) => {
            w.transition(*id, Event::ReimageRequested, InstanceState::Reimaging, now);
            public_ip_for_model(w, *id, env, addrs);
            if let Some(wr) = w.records.get_mut(id) {
                if wr.record.pending != Some(PendingAction::Reimage) {
                    wr.record.pending = Some(PendingAction::Reimage);
                    wr.dirty = true;
                }
            }
        }
        Step::Destroy(id) => {
            w.transition(*id, Event::DeleteRequested, InstanceState::Deleting, now);
            if let Some(wr) = w.records.get_mut(id) {
                wr.record.goal = InstanceGoal::Deleted;
            }
        }
        Step::Drain(id) | Step::Undrain(id) => drain(w, *id, matches!(step, Step::Drain(_)), env),
        Step::Suspend(reason) => {
            w.status.suspended = Some(Suspension { reason: reason.clone(), at_revision: w.set_revision, since: now });
            w.status_dirty = true;
            w.note("ProvisioningSuspended", reason.clone());
        }
        Step::Resume => {
            w.status.suspended = None;
            w.status.consecutive_create_failures = 0;
            w.status_dirty = true;
            w.note("ProvisioningResumed", "the scale set changed; creation resumes".into());
        }
        Step::PostEvent { .. }
        | Step::Evict { .. }
        | Step::Restore(_)
        | Step::Assign { .. }
        | Step::CapacityNote(_)
        | Step::PlacementNote(_) => crate::capacity::apply_step(w, step, now),
        Step::HostUnreachable { .. } | Step::Replace { .. } | Step::LoseSpot { .. } => {
            crate::host_failure::apply_step(w, step, now)
        }
        Step::Redeploy { .. } => crate::redeploy::apply_step(w, step, now),
        Step::Rolling(r) => crate::rolling::apply_step(w, r, now),
        Step::Repair(r) => crate::repair::apply_step(w, r, now),
        // Started after the intents are persisted; the runner records the outcome. The runner
        // takes only instances whose pending action is RunExtensions: an Automatic upgrade's
        // in-place run is planned without one, so it is recorded here (and a crash repeats it).
        Step::RunExtensions(id) => {
            if let Some(wr) = w.records.get_mut(id) {
                if wr.record.pending.is_none() {
                    wr.record.pending = Some(PendingAction::RunExtensions);
                    wr.dirty = true;
                }
            }
        }
        Step::RemoveSet => {}
    }
}

/// New `Creating` records: ids, computer names, zones, hosts, private IPs and reach addresses.
/// An instance whose subnet has no free address is not created (and the log says so).
fn create(w: &mut SetDraft<'_>, new: &[NewInstance], env: &ApplyEnv<'_>, addrs: &mut Addresses) {
    let now = env.now;
    let prefix = w.set.model.virtual_machine_profile.os_profile.computer_name_prefix.clone();
    let subnet = subnet_of(w.set);
    let public = env.bridged && wants_public_ip(w.set);
    for NewInstance { id, zone, overprovisioned, host, fault_domain } in new {
        let public_ip = if public {
            match addrs.ipam.allocate_public() {
                Ok(ip) => Some(ip.to_string()),
                Err(why) => {
                    w.note("CreateInstances", format!("{why}; instance {id} not created"));
                    continue;
                }
            }
        } else {
            None
        };
        let private_ip = match &subnet {
            Some(sn) => match addrs.ipam.allocate(sn) {
                Some(ip) => Some(ip.to_string()),
                None => {
                    w.note(
                        "CreateInstances",
                        format!("subnet {sn} has no free address (or does not exist); instance {id} not created"),
                    );
                    continue;
                }
            },
            None => None,
        };
        let addr = match (&private_ip, env.bridged) {
            (Some(ip), true) => ip.clone(),
            _ => {
                addrs.next += 1;
                host_local_address(env.address_block, addrs.next - 1).to_string()
            }
        };
        let record = InstanceRecord {
            instance_id: *id,
            computer_name: InstanceRecord::computer_name_for(&prefix, *id),
            zone: zone.clone(),
            model_generation: w.set.model_generation,
            state: InstanceState::Creating,
            goal: InstanceGoal::Running,
            pending: None,
            overprovisioned: *overprovisioned,
            reach_address: addr,
            private_ip,
            public_ip,
            attempts: 1,
            next_attempt_at: None,
            last_error: None,
            delete_reason: None,
            draining_since: None,
            base_fingerprint: Some(w.set.model.base_fingerprint()),
            sku: Some(w.set.model.sku.name.clone()),
            extensions: vec![],
            protect_from_scale_in: false,
            protect_from_scale_set_actions: false,
            host: host.clone(),
            platform_fault_domain: *fault_domain,
            scheduled_events: vec![],
            eviction: None,
            // The first placement, in the store with this intent (Phase A) before the driver is
            // called for it.
            incarnation: herd_driver::Incarnation::FIRST.0,
            host_failure: Default::default(),
            moving: None,
            created_at: now,
            state_since: now,
        };
        w.records.insert(*id, Working { record, revision: None, dirty: true });
        w.status.next_instance_id = w.status.next_instance_id.max(id.0 + 1);
    }
    w.status_dirty = true;
    let counted: Vec<InstanceId> = new.iter().filter(|n| !n.overprovisioned).map(|n| n.id).collect();
    let extras: Vec<InstanceId> = new.iter().filter(|n| n.overprovisioned).map(|n| n.id).collect();
    let mut msg = format!("creating {} instance(s): {}", counted.len(), id_list(&counted));
    if !extras.is_empty() {
        msg.push_str(&format!(
            "; plus {} overprovisioned extra(s) {} (not counted, not billed; the first ready are kept)",
            extras.len(),
            id_list(&extras)
        ));
    }
    w.note("CreateInstances", msg);
}

/// A reimage builds the instance on the set's current model: it gets a public IP if that model
/// asks for one and it has none (an update that added `publicIPAddressConfiguration`), and
/// gives its address back if the model no longer asks. Without a free address it is rebuilt
/// without one, and the log says why.
fn public_ip_for_model(w: &mut SetDraft<'_>, id: InstanceId, env: &ApplyEnv<'_>, addrs: &mut Addresses) {
    let wants = env.bridged && wants_public_ip(w.set);
    let Some(wr) = w.records.get_mut(&id) else { return };
    match (wants, wr.record.public_ip.is_some()) {
        (true, false) => match addrs.ipam.allocate_public() {
            Ok(ip) => {
                wr.record.public_ip = Some(ip.to_string());
                wr.dirty = true;
            }
            Err(why) => w.note("Reimage", format!("{why}; instance {id} is rebuilt without a public IP")),
        },
        (false, true) => {
            wr.record.public_ip = None;
            wr.dirty = true;
        }
        _ => {}
    }
}

/// An observed change: a boot clears the failure count (and queues the model's extensions on a
/// freshly built disk); a failure or crash backs off and counts against the set's create
/// failures.
fn observe(w: &mut SetDraft<'_>, id: InstanceId, ev: Event, detail: Option<&str>, env: &ApplyEnv<'_>) {
    let now = env.now;
    let Some(wr) = w.records.get_mut(&id) else { return };
    let was = wr.record.state;
    if apply_event(w.transitions, w.set, &mut wr.record, ev, now).is_err() {
        return;
    }
    wr.dirty = true;
    match ev {
        Event::BootObserved => {
            wr.record.draining_since = None;
            wr.record.last_error = None;
            wr.record.attempts = 0;
            wr.record.next_attempt_at = None;
            if was == InstanceState::Creating {
                w.status.consecutive_create_failures = 0;
                w.status_dirty = true;
            }
            // A freshly built disk runs the model's extensions on first boot.
            let built = matches!(was, InstanceState::Creating | InstanceState::Reimaging);
            if built
                && !w.set.model.extensions().is_empty()
                && wr.record.model_generation == w.set.model_generation
                && wr.record.pending.is_none()
            {
                wr.record.pending = Some(PendingAction::RunExtensions);
            }
            w.note("InstanceRunning", format!("instance {id} is running"));
        }
        Event::ProvisionFailed | Event::Crashed => {
            let msg = detail.map_or_else(|| "failed".to_string(), str::to_string);
            wr.record.last_error = Some(msg.clone());
            let delay = env.limits.backoff(wr.record.attempts.max(1));
            wr.record.next_attempt_at = Some(now + delay);
            let attempts = wr.record.attempts;
            if was == InstanceState::Creating {
                w.status.consecutive_create_failures += 1;
                w.status_dirty = true;
            }
            w.note(
                "InstanceFailed",
                format!("instance {id} failed ({msg}) after attempt {attempts}; retry in {}s", delay.num_seconds()),
            );
        }
        _ => {}
    }
}

/// Takes an instance out of its pools before a disruptive step (`drain`), or back in.
fn drain(w: &mut SetDraft<'_>, id: InstanceId, drain: bool, env: &ApplyEnv<'_>) {
    if let Some(wr) = w.records.get_mut(&id) {
        wr.record.draining_since = drain.then_some(env.now);
        wr.dirty = true;
    }
    if drain {
        w.note(
            "Drain",
            format!(
                "instance {id} leaves its load-balancer pools; open connections get {}s before it is disrupted",
                env.limits.drain_timeout.num_seconds()
            ),
        );
    }
}

#[cfg(test)]
mod tests;
