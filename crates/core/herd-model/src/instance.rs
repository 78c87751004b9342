//! Instances: one VM of a scale set, its lifecycle state machine, and how the API shows it.
//!
//! ```text
//!                 create                     boot observed
//!   (new) ──────────────────▶ Creating ─────────────────────▶ Running ◀──────────┐
//!                               │  ▲                            │ │ │            │
//!                   create fails│  │retry (backoff)        stop │ │ │restart     │boot observed
//!                               ▼  │                            ▼ │ ▼            │
//!                              Failed ◀──── crashed ──── Stopping │ Restarting ───┤
//!                                                           │     │              │
//!                                                           ▼     │dealloc       │
//!                    start ┌────────────────────────────── Stopped│              │
//!                          ▼                                │     ▼              │
//!                      Starting ◀──── start ──── Deallocated ◀─ Deallocating      │
//!                          └──────────────────────────────────────────────────────┘
//!
//!   any state ── reimage ──▶ Reimaging ── boot observed ──▶ Running
//!   any state ── recreate (its host failed) ──▶ Creating (built anew on another host)
//!   Running, Stopped, Starting, Failed ── redeploy (drain, `vmss redeploy`) ──▶ Redeploying
//!        Redeploying ── moved and boot observed ──▶ Running   (a failed move is retried:
//!        it never goes to Failed, whose repair would build it anew and lose its disks)
//!   any state ── delete ───▶ Deleting ── destroyed ──▶ (record removed)
//! ```
//! One transition function, [`InstanceState::on`], holds every legal move; anything else is
//! an [`InvalidTransition`] error rather than a silently inconsistent record.

use crate::{extension::ExtensionStatus, ids::InstanceId, scale_set::StoredScaleSet};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

string_enum!(
    /// Where an instance is in its lifecycle (see the module diagram).
    InstanceState {
        Creating = "Creating",
        Running = "Running",
        Stopping = "Stopping",
        Stopped = "Stopped",
        Starting = "Starting",
        Deallocating = "Deallocating",
        Deallocated = "Deallocated",
        Restarting = "Restarting",
        Reimaging = "Reimaging",
        /// Moving to another host with its disks (cold migration: drain, `vmss redeploy`).
        Redeploying = "Redeploying",
        Deleting = "Deleting",
        Failed = "Failed",
    } default Creating
);

/// What happens to an instance; the input of the transition function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A retry of a failed creation begins.
    Retry,
    /// The driver reports the instance running.
    BootObserved,
    /// Creation, start or reimage failed.
    ProvisionFailed,
    /// The instance stopped without being asked to.
    Crashed,
    StopRequested,
    StopDone,
    StartRequested,
    DeallocateRequested,
    DeallocateDone,
    RestartRequested,
    ReimageRequested,
    /// A cold move to another host begins (drain, `vmss redeploy`): stopped, its disks
    /// copied, started there.
    RedeployRequested,
    /// Its host failed: it is built anew on another host (a new placement, see
    /// `crate::host`), so it starts over as a creation.
    Recreate,
    DeleteRequested,
}

/// A move the state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("instance cannot go from {from} on {event:?}")]
pub struct InvalidTransition {
    pub from: InstanceState,
    pub event: Event,
}

impl InstanceState {
    /// The one transition function of the instance lifecycle.
    pub fn on(self, event: Event) -> Result<InstanceState, InvalidTransition> {
        use Event as E;
        use InstanceState as S;
        let next = match (self, event) {
            (S::Deleting, E::DeleteRequested) => S::Deleting,
            (S::Deleting, _) => return Err(InvalidTransition { from: self, event }),
            (_, E::DeleteRequested) => S::Deleting,
            (_, E::ReimageRequested) => S::Reimaging,
            (_, E::Recreate) => S::Creating,
            (S::Failed, E::Retry) => S::Creating,
            (
                S::Creating | S::Starting | S::Restarting | S::Reimaging | S::Redeploying | S::Running,
                E::BootObserved,
            ) => S::Running,
            (S::Creating | S::Starting | S::Restarting | S::Reimaging | S::Redeploying, E::ProvisionFailed) => {
                S::Failed
            }
            (S::Running, E::Crashed) => S::Failed,
            (S::Running | S::Starting | S::Failed, E::StopRequested) => S::Stopping,
            (S::Stopping, E::StopDone) => S::Stopped,
            (S::Stopped | S::Deallocated, E::StartRequested) => S::Starting,
            (S::Running | S::Stopped | S::Stopping | S::Starting | S::Failed, E::DeallocateRequested) => {
                S::Deallocating
            }
            (S::Deallocating, E::DeallocateDone) => S::Deallocated,
            (S::Running, E::RestartRequested) => S::Restarting,
            (S::Running | S::Stopped | S::Starting | S::Failed | S::Redeploying, E::RedeployRequested) => {
                S::Redeploying
            }
            _ => return Err(InvalidTransition { from: self, event }),
        };
        Ok(next)
    }

    /// Azure's `provisioningState` for this state.
    pub fn provisioning_state(self) -> &'static str {
        match self {
            Self::Creating => "Creating",
            Self::Failed => "Failed",
            Self::Deleting => "Deleting",
            Self::Reimaging
            | Self::Restarting
            | Self::Starting
            | Self::Stopping
            | Self::Deallocating
            | Self::Redeploying => "Updating",
            Self::Running | Self::Stopped | Self::Deallocated => "Succeeded",
        }
    }

    /// Azure's power state code (`PowerState/running`, ...).
    pub fn power_state(self) -> &'static str {
        match self {
            Self::Creating | Self::Starting | Self::Reimaging | Self::Restarting | Self::Redeploying => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Stopped | Self::Failed => "stopped",
            Self::Deallocating | Self::Deleting => "deallocating",
            Self::Deallocated => "deallocated",
        }
    }

    /// True for states in which the driver is busy making a change.
    pub fn is_transitional(self) -> bool {
        !matches!(self, Self::Running | Self::Stopped | Self::Deallocated | Self::Failed)
    }
}

string_enum!(
    /// What the user (or the set) wants this instance to be.
    InstanceGoal { Running = "Running", Stopped = "Stopped", Deallocated = "Deallocated", Deleted = "Deleted" } default Running
);

string_enum!(
    /// A one-shot action requested on an instance, done once and then cleared.
    PendingAction {
        Restart = "Restart",
        Reimage = "Reimage",
        RunExtensions = "RunExtensions",
        Resize = "Resize",
        /// Move to another host of its zone with its disks (drain, `vmss redeploy`).
        Redeploy = "Redeploy",
    } default Restart
);

/// One instance as herd stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceRecord {
    pub instance_id: InstanceId,
    pub computer_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The model generation this instance runs (or is being built with).
    pub model_generation: u64,
    pub state: InstanceState,
    pub goal: InstanceGoal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingAction>,
    /// Created as an overprovisioning extra: not counted toward capacity, never billed, and
    /// deleted once enough of its batch is ready (unless it was ready first and swapped in).
    #[serde(default)]
    pub overprovisioned: bool,
    /// The host-local address this instance is reached on.
    pub reach_address: String,
    /// The private IP from the set's subnet (IPAM), when the set has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
    /// The public IP from the server's pool, when the set's model asks for one
    /// (`publicIPAddressConfiguration`): NATed 1:1 to the private IP, kept for the instance's
    /// lifetime as the private IP is, released when the record goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    /// Provisioning attempts so far (for backoff).
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Why the instance is being deleted (scale-in, user request, overprovisioning...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_reason: Option<String>,
    /// Set while the instance is out of its load-balancer pools ahead of a disruptive step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining_since: Option<DateTime<Utc>>,
    /// The set's base fingerprint (`ScaleSetModel::base_fingerprint`) when this instance was
    /// built: equal to the model's, an update changed only extensions and applies in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_fingerprint: Option<String>,
    /// The SKU (size) this instance was built or last resized with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    /// What each extension's last run did on this instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<ExtensionStatus>,
    /// Azure's `protectionPolicy.protectFromScaleIn`: scale-in never picks this instance.
    #[serde(default)]
    pub protect_from_scale_in: bool,
    /// Azure's `protectionPolicy.protectFromScaleSetActions`: upgrades, repairs and scale-in
    /// leave it alone.
    #[serde(default)]
    pub protect_from_scale_set_actions: bool,
    /// The host this instance's compute is reserved on: a declared host, `local`, or a joined
    /// host (whose agent then drives it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The fault domain index (0 to `platformFaultDomainCount` - 1) the capacity arbiter gave
    /// this instance when it was first placed; it never changes afterwards. None in records
    /// placed before fault domains (shown as 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_fault_domain: Option<u32>,
    /// Events posted to the instance ahead of what will take it away (metadata endpoint).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scheduled_events: Vec<crate::spot::ScheduledEvent>,
    /// Set when a Spot instance was evicted with `Deallocate` (cleared when restored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eviction: Option<crate::spot::Eviction>,
    /// The placement this record describes (`herd_driver::Incarnation`, the fence every driver
    /// call for the instance carries with the leader's term). 1 from creation; raised, and
    /// written here before any driver call for it, only when the instance is placed anew (built
    /// on another host: replacement, redeploy). Restart, power, resize and reimage keep it.
    /// 0 in records written before fencing (absent in their JSON; a driver with no record
    /// accepts it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub incarnation: u64,
    /// What host failure did to it (its host silent, copies left behind, re-created).
    #[serde(default, skip_serializing_if = "HostFailure::is_empty")]
    pub host_failure: HostFailure,
    /// Set while it moves to another host with its disks (state Redeploying; `host` is the
    /// new host already, written with the new incarnation before any host is called).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving: Option<Move>,
    pub created_at: DateTime<Utc>,
    pub state_since: DateTime<Utc>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A cold move under way (see [`InstanceRecord::moving`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Move {
    /// The host it moves from (its disks are copied from there).
    pub from: String,
    pub since: DateTime<Utc>,
    /// Why: `redeploy` (asked for the instance), or `drain of host h1`.
    pub reason: String,
}

/// What host failure did to an instance (issue 21; see `crate::host`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostFailure {
    /// Since when its host has been silent for longer than `host_grace`: its health is Unknown
    /// and it is out of load-balancer rotation until the host is heard again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable_since: Option<DateTime<Utc>>,
    /// Copies of it left on hosts it was moved away from; each is destroyed (fenced by the new
    /// incarnation) when its host links again, and that host is Returning until then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stale_copies: Vec<StaleCopy>,
    /// Its last re-creation on another host after its host failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recreated: Option<Recreation>,
}

impl HostFailure {
    pub fn is_empty(&self) -> bool {
        self.unreachable_since.is_none() && self.stale_copies.is_empty() && self.recreated.is_none()
    }
}

/// A copy of an instance on a host it was moved away from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StaleCopy {
    pub host: String,
    /// The placement the copy is (lower than the record's).
    pub incarnation: u64,
    pub since: DateTime<Utc>,
}

/// An instance re-created on another host because its host failed: a reimage (its data disks
/// start empty), with the same instance id and private IP and a new incarnation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Recreation {
    /// The host that failed.
    pub from_host: String,
    pub at: DateTime<Utc>,
    /// The incarnation it was re-created as.
    pub incarnation: u64,
}

impl InstanceRecord {
    /// The computer name: prefix + id in base 36, zero-padded to 6.
    pub fn computer_name_for(prefix: &str, id: InstanceId) -> String {
        format!("{prefix}{}", id.base36())
    }

    /// Applies `event` to the state, stamping the time of the change.
    pub fn apply(&mut self, event: Event, now: DateTime<Utc>) -> Result<(), InvalidTransition> {
        let next = self.state.on(event)?;
        if next != self.state {
            self.state = next;
            self.state_since = now;
        }
        Ok(())
    }

    /// The failed extension, if one's last run failed (the instance's provisioningState is then
    /// Failed, as in Azure).
    pub fn failed_extension(&self) -> Option<&ExtensionStatus> {
        self.extensions.iter().find(|e| e.state == crate::extension::ExtensionRunState::Failed)
    }

    /// What `update-instances` (or an Automatic or Rolling upgrade) does to bring this instance
    /// to the set's latest model: the least disruptive action that gets it there.
    /// - only extensions changed: run them in place (if the instance can);
    /// - only the size changed: restart with the new size, disks kept;
    /// - anything else (image, OS profile, data disks, network): reimage.
    pub fn upgrade_action(&self, set: &StoredScaleSet, in_place: bool) -> PendingAction {
        let same_base = self.base_fingerprint.as_deref() == Some(set.model.base_fingerprint().as_str());
        let same_size = self.sku.as_deref().is_none_or(|s| s.eq_ignore_ascii_case(&set.model.sku.name));
        match (same_base, same_size) {
            (true, true) if in_place => PendingAction::RunExtensions,
            (true, false) if self.extensions_match(set) => PendingAction::Resize,
            _ => PendingAction::Reimage,
        }
    }

    /// Every extension of the model has run here as it is now (public settings and version).
    pub fn extensions_match(&self, set: &StoredScaleSet) -> bool {
        let model = set.model.extensions();
        model.len() == self.extensions.len()
            && model.iter().all(|e| {
                self.extensions.iter().any(|s| {
                    s.name == e.name
                        && s.fingerprint.starts_with(&e.public_fingerprint())
                        && s.state == crate::extension::ExtensionRunState::Succeeded
                })
            })
    }

    /// Settled on a host so that a cold move (redeploy) may start: running, stopped or failed
    /// (a start, stop or build under way finishes first).
    pub fn at_rest_for_move(&self) -> bool {
        matches!(self.state, InstanceState::Running | InstanceState::Stopped | InstanceState::Failed)
    }

    /// Counted toward capacity: not an extra and not on its way out.
    pub fn is_counted(&self) -> bool {
        !self.overprovisioned && self.goal != InstanceGoal::Deleted
    }

    /// The API view of this instance.
    pub fn view(&self, set: &StoredScaleSet) -> InstanceView {
        InstanceView {
            id: format!(
                "{}/virtualMachines/{}",
                StoredScaleSet::resource_id(set.group.as_str(), set.name.as_str()),
                self.instance_id
            ),
            instance_id: self.instance_id.0.to_string(),
            name: format!("{}_{}", set.name, self.instance_id),
            computer_name: self.computer_name.clone(),
            zones: self.zone.iter().cloned().collect(),
            sku: self.sku.clone().unwrap_or_else(|| set.model.sku.name.clone()),
            latest_model_applied: self.model_generation == set.model_generation,
            model_generation: self.model_generation,
            provisioning_state: if self.failed_extension().is_some() && self.state == InstanceState::Running {
                "Failed".into()
            } else {
                self.state.provisioning_state().into()
            },
            power_state: self.state.power_state().into(),
            state: self.state,
            goal: self.goal,
            pending_action: self.pending,
            overprovisioned: self.overprovisioned,
            reach_address: self.reach_address.clone(),
            private_ip_address: self.private_ip.clone(),
            public_ip_address: self.public_ip.clone(),
            attempts: self.attempts,
            next_attempt_at: self.next_attempt_at,
            last_error: self.last_error.clone(),
            delete_reason: self.delete_reason.clone(),
            draining: self.draining_since.is_some(),
            health: None,
            extensions: self.extensions.clone(),
            upgrade_action: None,
            protection_policy: ProtectionPolicy {
                protect_from_scale_in: self.protect_from_scale_in,
                protect_from_scale_set_actions: self.protect_from_scale_set_actions,
            },
            host: self.host.clone(),
            platform_fault_domain: self.platform_fault_domain.unwrap_or(0),
            eviction: self.eviction.clone(),
            scheduled_events: self.scheduled_events.clone(),
            host_failure: (!self.host_failure.is_empty()).then(|| self.host_failure.clone()),
            moving: self.moving.clone(),
            incarnation: self.incarnation,
            time_created: self.created_at,
            state_since: self.state_since,
        }
    }
}

/// Azure's `protectionPolicy` of an instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProtectionPolicy {
    pub protect_from_scale_in: bool,
    pub protect_from_scale_set_actions: bool,
}

/// An instance as `list-instances` and `get-instance-view` show it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceView {
    pub id: String,
    /// The instance id, as a string as in Azure.
    pub instance_id: String,
    /// `<set>_<id>`.
    pub name: String,
    pub computer_name: String,
    pub zones: Vec<String>,
    pub sku: String,
    pub latest_model_applied: bool,
    pub model_generation: u64,
    pub provisioning_state: String,
    /// `running`, `stopped`, `deallocated`, `starting`, `stopping`, `deallocating`.
    pub power_state: String,
    pub state: InstanceState,
    pub goal: InstanceGoal,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_action: Option<PendingAction>,
    /// An overprovisioning extra: not counted and not billed; it will be deleted.
    pub overprovisioned: bool,
    /// The address herd reaches this instance on.
    pub reach_address: String,
    /// Its private IP in the set's subnet, if the set has a network profile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_ip_address: Option<String>,
    /// Its public IP (NATed 1:1 to the private IP), when the set's model has a
    /// `publicIPAddressConfiguration`. Azure shows it under the NIC's
    /// `ipConfigurations[].publicIPAddress`; herd's view is flat, next to `privateIpAddress`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_ip_address: Option<String>,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_reason: Option<String>,
    /// Out of its load-balancer pools ahead of a stop, delete, restart or reimage.
    pub draining: bool,
    /// `Healthy`, `Unhealthy` or `Unknown` by its load-balancer probe; absent without a probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub health: Option<crate::health::HealthState>,
    /// Extension statuses: state, exit code and the output tails (secrets redacted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<ExtensionStatus>,
    pub protection_policy: ProtectionPolicy,
    /// Not on the latest model: what `update-instances` would do (`RunExtensions` in place,
    /// `Resize` with a restart, or `Reimage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_action: Option<PendingAction>,
    /// The host its compute is reserved on: a declared host, `local` (the server's machine once
    /// hosts have joined), or a host joined with `herd agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Its fault domain within its zone: 0 to `platformFaultDomainCount` - 1 (always 0 with a
    /// count of 1, maximum spreading), as Azure's instance view shows it.
    #[serde(default)]
    pub platform_fault_domain: u32,
    /// Set while a Spot instance is deallocated by eviction: when and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eviction: Option<crate::spot::Eviction>,
    /// Events posted to it (Preempt, Terminate...) that its metadata endpoint serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scheduled_events: Vec<crate::spot::ScheduledEvent>,
    /// What host failure did to it: its host silent (health Unknown), copies left on a host it
    /// was moved from, its re-creation elsewhere (a reimage: data disks start empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_failure: Option<HostFailure>,
    /// A move to another host under way (drain, redeploy): from where, since when, why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving: Option<Move>,
    /// Its placement: raised each time it is built on another host (re-creation, redeploy);
    /// every host call carries it, and a host refuses a lower one.
    #[serde(default)]
    pub incarnation: u64,
    pub time_created: DateTime<Utc>,
    pub state_since: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::{Event as E, InstanceState as S};

    #[test]
    fn transition_table() {
        let ok = [
            (S::Creating, E::BootObserved, S::Running),
            (S::Creating, E::ProvisionFailed, S::Failed),
            (S::Failed, E::Retry, S::Creating),
            (S::Running, E::StopRequested, S::Stopping),
            (S::Stopping, E::StopDone, S::Stopped),
            (S::Stopped, E::StartRequested, S::Starting),
            (S::Starting, E::BootObserved, S::Running),
            (S::Running, E::DeallocateRequested, S::Deallocating),
            (S::Stopped, E::DeallocateRequested, S::Deallocating),
            (S::Deallocating, E::DeallocateDone, S::Deallocated),
            (S::Deallocated, E::StartRequested, S::Starting),
            (S::Running, E::RestartRequested, S::Restarting),
            (S::Restarting, E::BootObserved, S::Running),
            (S::Stopped, E::ReimageRequested, S::Reimaging),
            (S::Reimaging, E::BootObserved, S::Running),
            (S::Running, E::Crashed, S::Failed),
            (S::Failed, E::DeleteRequested, S::Deleting),
            (S::Deleting, E::DeleteRequested, S::Deleting),
        ];
        for (from, ev, to) in ok {
            assert_eq!(from.on(ev), Ok(to), "{from} on {ev:?}");
        }
        let bad = [
            (S::Deleting, E::BootObserved),
            (S::Deleting, E::ReimageRequested),
            (S::Stopped, E::StopDone),
            (S::Deallocated, E::StopRequested),
            (S::Creating, E::RestartRequested),
            (S::Running, E::Retry),
            (S::Stopped, E::BootObserved),
        ];
        for (from, ev) in bad {
            assert!(from.on(ev).is_err(), "{from} on {ev:?} should be refused");
        }
    }

    #[test]
    fn azure_states() {
        assert_eq!(S::Running.provisioning_state(), "Succeeded");
        assert_eq!(S::Deallocated.power_state(), "deallocated");
        assert_eq!(S::Reimaging.provisioning_state(), "Updating");
    }
}
