//! Rolling upgrades: the policy (Azure's `rollingUpgradePolicy`, with its defaults) and the
//! state of one upgrade as the reconciler records it and `rolling-upgrade get-latest` shows it.
//!
//! Why here: the policy is part of the model users write, and the upgrade's state is what the
//! pure planner reads and advances, batch by batch, so both must live below the reconciler.
//!
//! ```text
//!               model change (Rolling)         every instance on the target
//!   (none) ──── or rolling-upgrade start ──▶ RollingForward ──────────────────▶ Completed
//!                                             │  ▲      │ │
//!                        canary batch done     │  │resume│ │ breach of a health limit
//!                        with --pause          ▼  │      │ ▼
//!                                             Paused ────┘ Faulted ── rollbackFailedInstances… ──▶ RollingBack
//!                                               │  rollback                                         │
//!                                               └────────────────────────────▶ RollingBack ──done──▶ RolledBack
//!   RollingForward | Paused ── rolling-upgrade cancel ──▶ Cancelled
//! ```

use crate::error::FieldError;
use crate::ids::InstanceId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `upgradePolicy.rollingUpgradePolicy`, with Azure's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollingUpgradePolicy {
    /// Largest share of instances upgraded in one batch (5–100, default 20).
    #[serde(default = "twenty")]
    pub max_batch_instance_percent: u32,
    /// Before each batch: abort if more than this share of all instances is unhealthy (5–100, default 20).
    #[serde(default = "twenty")]
    pub max_unhealthy_instance_percent: u32,
    /// After each batch: abort if more than this share of the upgraded instances is unhealthy (0–100, default 20).
    #[serde(default = "twenty")]
    pub max_unhealthy_upgraded_instance_percent: u32,
    /// Wait between batches, ISO 8601 (default PT0S).
    #[serde(default = "zero_duration")]
    pub pause_time_between_batches: String,
    /// Upgrade unhealthy instances first (default false).
    #[serde(default)]
    pub prioritize_unhealthy_instances: bool,
    /// Create new instances on the new model first, then delete old ones (default false): no
    /// instance is disrupted, at the cost of running more for a while.
    #[serde(default)]
    pub max_surge: bool,
    /// When the upgrade aborts on a breach, return the upgraded instances to the previous model.
    #[serde(default)]
    pub rollback_failed_instances_on_policy_breach: bool,
    /// Accepted for compatibility; herd's zones are on one host, so batches ignore them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_cross_zone_upgrade: Option<bool>,
}

fn twenty() -> u32 {
    20
}

fn zero_duration() -> String {
    "PT0S".into()
}

impl Default for RollingUpgradePolicy {
    fn default() -> Self {
        Self {
            max_batch_instance_percent: 20,
            max_unhealthy_instance_percent: 20,
            max_unhealthy_upgraded_instance_percent: 20,
            pause_time_between_batches: zero_duration(),
            prioritize_unhealthy_instances: false,
            max_surge: false,
            rollback_failed_instances_on_policy_breach: false,
            enable_cross_zone_upgrade: None,
        }
    }
}

impl RollingUpgradePolicy {
    pub fn validate(&self) -> Result<(), FieldError> {
        let f = "upgradePolicy.rollingUpgradePolicy";
        let pct = |name: &str, v: u32, min: u32| {
            if (min..=100).contains(&v) {
                Ok(())
            } else {
                Err(FieldError::new(format!("{f}.{name}"), format!("{v} is out of range; allowed {min} to 100")))
            }
        };
        pct("maxBatchInstancePercent", self.max_batch_instance_percent, 5)?;
        pct("maxUnhealthyInstancePercent", self.max_unhealthy_instance_percent, 5)?;
        pct("maxUnhealthyUpgradedInstancePercent", self.max_unhealthy_upgraded_instance_percent, 0)?;
        if self.pause().is_none() {
            return Err(FieldError::new(
                format!("{f}.pauseTimeBetweenBatches"),
                format!(
                    "'{}' is not an ISO 8601 duration of at most 1 hour (e.g. PT0S, PT30S, PT5M)",
                    self.pause_time_between_batches
                ),
            ));
        }
        Ok(())
    }

    /// `pauseTimeBetweenBatches` (0 to 1 hour).
    pub fn pause(&self) -> Option<chrono::Duration> {
        crate::duration::parse_iso8601(&self.pause_time_between_batches)
            .filter(|d| *d >= chrono::Duration::zero() && *d <= chrono::Duration::hours(1))
    }

    /// Instances per batch for a set of `capacity`: the percentage, rounded down, at least one.
    pub fn batch_size(&self, capacity: u64) -> u64 {
        (capacity * u64::from(self.max_batch_instance_percent) / 100).max(1)
    }
}

/// `upgradePolicy.automaticOSUpgradePolicy`: a newer version of the model's image (with the
/// image reference at `latest`) is rolled out by itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AutomaticOsUpgradePolicy {
    #[serde(default, rename = "enableAutomaticOSUpgrade")]
    pub enable_automatic_os_upgrade: bool,
    /// Accepted for compatibility: herd rolls back only with `rollbackFailedInstancesOnPolicyBreach`.
    #[serde(default)]
    pub disable_automatic_rollback: bool,
    /// Accepted for compatibility: the rollout always uses `rollingUpgradePolicy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_rolling_upgrade_policy: Option<bool>,
}

string_enum!(
    /// Where a rolling upgrade is (see the module diagram).
    RollingState {
        RollingForward = "RollingForward",
        Paused = "Paused",
        Completed = "Completed",
        Cancelled = "Cancelled",
        Faulted = "Faulted",
        RollingBack = "RollingBack",
        RolledBack = "RolledBack",
    } default RollingForward
);

impl RollingState {
    /// Still moving instances (or waiting to).
    pub fn is_active(self) -> bool {
        matches!(self, Self::RollingForward | Self::Paused | Self::RollingBack)
    }
}

/// One batch of a rolling upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollingBatch {
    #[schema(value_type = Vec<u64>)]
    pub instances: Vec<InstanceId>,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Instances of the batch that were unhealthy when it finished.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<u64>)]
    pub unhealthy: Vec<InstanceId>,
}

/// One rolling upgrade (the latest is kept in the set's status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpgrade {
    pub state: RollingState,
    /// The model generation instances are moved to.
    pub target_generation: u64,
    /// The generation the instances came from (where a rollback returns them).
    pub from_generation: u64,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// Who started it: `model change`, `user`, `automatic OS upgrade`.
    pub trigger: String,
    /// Instances per batch.
    pub batch_size: u64,
    /// Canary: the first batch has this many instances...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<u64>,
    /// ...and the upgrade pauses after it, until `resume` or `rollback`.
    #[serde(default)]
    pub pause_after_canary: bool,
    /// `maxSurge`: each batch first creates as many new instances on the target model, waits
    /// for them to be healthy, then deletes the batch's old instances.
    #[serde(default)]
    pub surge: bool,
    /// Every instance is re-imaged (an OS image upgrade: the model is unchanged but `latest`
    /// now means a newer image), even where only extensions seem to differ.
    #[serde(default)]
    pub reimage: bool,
    pub batches: Vec<RollingBatch>,
    /// Upgraded and healthy.
    #[serde(default)]
    #[schema(value_type = Vec<u64>)]
    pub succeeded: Vec<InstanceId>,
    /// Upgraded but unhealthy after their batch.
    #[serde(default)]
    #[schema(value_type = Vec<u64>)]
    pub failed: Vec<InstanceId>,
    /// Why it stopped, for Faulted, Cancelled and rollbacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RollingUpgrade {
    /// Extra instances to run beyond capacity now: the old instances of a surge batch in flight.
    pub fn surge_extra(&self) -> usize {
        match self.current_batch() {
            Some(b) if self.surge && self.state == RollingState::RollingForward => b.instances.len(),
            _ => 0,
        }
    }

    /// The batch in progress, if any.
    pub fn current_batch(&self) -> Option<&RollingBatch> {
        self.batches.last().filter(|b| b.finished_at.is_none())
    }

    /// Every instance this upgrade has touched (in any batch).
    pub fn touched(&self) -> impl Iterator<Item = InstanceId> + '_ {
        self.batches.iter().flat_map(|b| b.instances.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_defaults_and_limits() {
        let p: RollingUpgradePolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(p, RollingUpgradePolicy::default());
        assert_eq!(p.batch_size(6), 1);
        assert_eq!(p.batch_size(100), 20);
        assert_eq!(p.batch_size(0), 1);
        p.validate().unwrap();
        let bad = RollingUpgradePolicy { max_batch_instance_percent: 2, ..Default::default() };
        assert!(bad.validate().unwrap_err().field.ends_with("maxBatchInstancePercent"));
        let bad = RollingUpgradePolicy { pause_time_between_batches: "5 minutes".into(), ..Default::default() };
        assert!(bad.validate().unwrap_err().message.contains("ISO 8601"));
    }
}
