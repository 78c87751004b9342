//! Instance health as load-balancer probes see it, shared between the controller that probes
//! and the API that shows it (and, later, rolling upgrades and repairs that act on it).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::RwLock;

string_enum!(
    /// What an instance's load-balancer probe says about it. The same three words on the wire
    /// (`health` of an instance) as when it was a string.
    ///
    /// ```text
    ///   Unknown ──threshold successes──▶ Healthy
    ///      │   ◀──── a new boot ────────┘  │ ▲
    ///      └──threshold failures──▶ Unhealthy ┘ (threshold results of the other kind)
    /// ```
    HealthState {
        Healthy = "Healthy",
        Unhealthy = "Unhealthy",
        /// Not yet `threshold` results of one kind since the instance booted.
        Unknown = "Unknown",
    } default Unknown
);

/// One instance's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceHealth {
    /// The probe that decides it.
    pub probe: String,
    /// `Healthy`, `Unhealthy` or `Unknown` (not yet `threshold` results since it booted).
    #[schema(value_type = String)]
    pub health: HealthState,
    /// The boot this is about: the instance's `state_since` (ms) when it became Running. A
    /// reader that sees another boot must treat the health as unknown.
    #[serde(default)]
    pub boot: i64,
}

/// Health of every instance that a probe covers, keyed by `group/set/id`.
#[derive(Debug, Default)]
pub struct HealthBoard(RwLock<BTreeMap<String, InstanceHealth>>);

impl HealthBoard {
    pub fn get(&self, key: &str) -> Option<InstanceHealth> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    /// Replaces the whole board (the controller computes it in full each pass).
    pub fn replace(&self, all: BTreeMap<String, InstanceHealth>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = all;
    }
}
