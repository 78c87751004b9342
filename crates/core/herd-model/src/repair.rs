//! Automatic repairs: the policy (Azure's `automaticRepairsPolicy`) and what the reconciler
//! remembers about repairs it made, for its circuit breaker.
//!
//! Why a circuit breaker: when the model itself is broken (an app that never passes its probe),
//! replacing unhealthy instances only replaces them with new unhealthy ones, forever. herd
//! counts repairs that were not followed by any instance becoming healthy on a fresh boot, and
//! after `max` of them in a row it suspends repairs, with the reason in the set's
//! `orchestrationServices`, until a user resumes them.
//!
//! ```text
//!            set-orchestration-service-state Suspend, or the circuit breaker trips
//!   Running ───────────────────────────────────────────────────────────────────────▶ Suspended
//!      ▲                                                                               │
//!      └────────────────── set-orchestration-service-state Resume ─────────────────────┘
//! ```

use crate::error::FieldError;
use crate::ids::InstanceId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

string_enum!(
    /// What a repair does to an unhealthy instance.
    RepairAction { Replace = "Replace", Restart = "Restart", Reimage = "Reimage" } default Replace
);

/// `automaticRepairsPolicy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AutomaticRepairsPolicy {
    #[serde(default)]
    pub enabled: bool,
    /// How long after a state change (boot, reimage) an instance may be unhealthy before it is
    /// repaired; ISO 8601, default PT10M as in Azure. herd accepts down to PT30S (Azure: PT10M).
    #[serde(default = "ten_minutes")]
    pub grace_period: String,
    #[serde(default)]
    pub repair_action: RepairAction,
}

fn ten_minutes() -> String {
    "PT10M".into()
}

impl Default for AutomaticRepairsPolicy {
    fn default() -> Self {
        Self { enabled: false, grace_period: ten_minutes(), repair_action: RepairAction::Replace }
    }
}

impl AutomaticRepairsPolicy {
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.grace().is_none() {
            return Err(FieldError::new(
                "automaticRepairsPolicy.gracePeriod",
                format!("'{}' is not an ISO 8601 duration from PT30S to PT90M (e.g. PT10M)", self.grace_period),
            ));
        }
        Ok(())
    }

    /// The grace period (30 s to 90 min).
    pub fn grace(&self) -> Option<chrono::Duration> {
        crate::duration::parse_iso8601(&self.grace_period)
            .filter(|d| *d >= chrono::Duration::seconds(30) && *d <= chrono::Duration::minutes(90))
    }
}

/// One repair the reconciler made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepairAttempt {
    #[schema(value_type = u64)]
    pub instance: InstanceId,
    pub action: RepairAction,
    pub at: DateTime<Utc>,
}

/// Why repairs are suspended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepairSuspension {
    pub reason: String,
    pub since: DateTime<Utc>,
    /// Suspended by the circuit breaker (not by a user).
    pub automatic: bool,
}

/// The state of the set's automatic-repairs service, as `orchestrationServices` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepairState {
    /// Repairs since an instance last became healthy on a fresh boot (the breaker's count).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<RepairAttempt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended: Option<RepairSuspension>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_grace_limits() {
        let p: AutomaticRepairsPolicy = serde_json::from_str(r#"{"enabled": true}"#).unwrap();
        assert_eq!(p.grace(), Some(chrono::Duration::minutes(10)));
        assert_eq!(p.repair_action, RepairAction::Replace);
        let p = AutomaticRepairsPolicy { grace_period: "PT30S".into(), ..Default::default() };
        p.validate().unwrap();
        let p = AutomaticRepairsPolicy { grace_period: "PT10S".into(), ..Default::default() };
        assert!(p.validate().unwrap_err().message.contains("PT30S"));
        let e = serde_json::from_str::<AutomaticRepairsPolicy>(r#"{"repairAction": "Explode"}"#).unwrap_err();
        assert!(e.to_string().contains("Replace"), "{e}");
    }
}
