//! Instance health as load-balancer probes see it, shared between the controller that probes
//! and the API that shows it (and rolling upgrades and repairs that act on it); and, beside it,
//! what the load balancer's data plane says about draining instances ([`DrainBoard`]), which
//! lets the reconciler end a drain as soon as nothing is left to drain.

use chrono::{DateTime, Utc};
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

impl InstanceHealth {
    /// The health of the boot that became Running at `state_since`: this entry's, when it is
    /// about that boot, else `Unknown` (the board lags a restart by a pass).
    pub fn of_boot(&self, state_since: chrono::DateTime<chrono::Utc>) -> HealthState {
        if self.boot == state_since.timestamp_millis() {
            self.health
        } else {
            HealthState::Unknown
        }
    }
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

/// What the load balancer's data plane says about one draining instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainObservation {
    /// The `draining_since` of the instance record whose drain the data plane has applied: the
    /// instance is out of rotation in every load-balancing rule it is a backend of, so no new
    /// connection can reach it.
    pub draining_since: DateTime<Utc>,
    /// Connections to it still open (or being opened), over all those rules.
    pub open_connections: u64,
}

impl DrainObservation {
    /// True when the drain that began at `since` is over: applied for that very drain (an
    /// observation made before it reached the data plane is about another `draining_since`,
    /// or none, and says nothing) and no connection is left.
    pub fn drained(&self, since: DateTime<Utc>) -> bool {
        self.open_connections == 0 && self.draining_since.timestamp_millis() == since.timestamp_millis()
    }
}

/// Drain observations of every draining instance that is a backend of at least one running
/// load-balancing rule, keyed by `group/set/id` like [`HealthBoard`]. Filled by the
/// load-balancer controller after each pass; read by the reconciler.
#[derive(Debug, Default)]
pub struct DrainBoard(RwLock<BTreeMap<String, DrainObservation>>);

impl DrainBoard {
    pub fn get(&self, key: &str) -> Option<DrainObservation> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).get(key).copied()
    }

    /// Replaces the whole board; returns the keys whose drain is over now and was not in the
    /// board it replaced (so the caller can wake whoever waits for them).
    pub fn replace(&self, all: BTreeMap<String, DrainObservation>) -> Vec<String> {
        let mut board = self.0.write().unwrap_or_else(|p| p.into_inner());
        let newly: Vec<String> = all
            .iter()
            .filter(|(k, o)| {
                o.drained(o.draining_since) && board.get(*k).is_none_or(|old| !old.drained(o.draining_since))
            })
            .map(|(k, _)| k.clone())
            .collect();
        *board = all;
        newly
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_is_over_only_for_the_drain_it_was_applied_for() {
        let t = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let later = t + chrono::Duration::seconds(5);
        let idle = DrainObservation { draining_since: t, open_connections: 0 };
        assert!(idle.drained(t));
        assert!(!idle.drained(later), "an observation of an earlier drain says nothing");
        assert!(!DrainObservation { open_connections: 1, ..idle }.drained(t));

        let board = DrainBoard::default();
        let busy = DrainObservation { open_connections: 2, ..idle };
        assert!(board.replace([("g/s/1".to_string(), busy)].into()).is_empty());
        assert_eq!(board.replace([("g/s/1".to_string(), idle)].into()), ["g/s/1"], "the count reached zero");
        assert!(board.replace([("g/s/1".to_string(), idle)].into()).is_empty(), "already known");
        let again = DrainObservation { draining_since: later, open_connections: 0 };
        assert_eq!(board.replace([("g/s/1".to_string(), again)].into()), ["g/s/1"], "a new drain");
        assert_eq!(board.get("g/s/1"), Some(again));
        assert_eq!(board.get("g/s/2"), None);
    }
}
