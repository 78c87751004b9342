//! Orphans: instances the driver lists that herd has no record of.
//!
//! Why this is careful: an instance without a record is usually debris of a crash, but it may
//! also be the sign of a lost or damaged store, and then destroying it destroys the user's
//! workload. So in normal operation an unrecorded instance is destroyed only after it has been
//! unrecorded for [`OrphanPolicy::grace`] (default 10 minutes; a record appearing meanwhile saves
//! it), and at most [`OrphanPolicy::max_per_hour`] (default 5) are destroyed in any hour; each
//! step is logged at WARN. Instances the operator chose to keep (`herd server --keep-orphans`)
//! are listed in the store as unmanaged ([`Unmanaged`]) and never destroyed by the reconciler.
//! Instances whose record, set or set status is quarantined (cannot be decoded) are not
//! orphans: they have a record, just not a readable one.
//!
//! ```text
//!              listed, no record                grace elapsed, under the hourly limit
//!   (absent) ───────────────────▶ unrecorded ──────────────────────────────────────▶ destroyed
//!                                   │    ▲ │ record appears / instance gone
//!                                   │    │ └─────────────────────────────────▶ (forgotten)
//!                     over the limit│    │ next hour
//!                                   ▼    │
//!                                 rate-limited
//! ```

use chrono::{DateTime, Duration, Utc};
use herd_model::InstanceKey;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;

pub use herd_state::admin::{Unmanaged, UNMANAGED_KEY};

/// How unrecorded instances are treated in normal operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrphanPolicy {
    /// How long an instance must stay unrecorded before it is destroyed.
    pub grace: Duration,
    /// Orphans destroyed in any hour, at most.
    pub max_per_hour: u32,
}

impl Default for OrphanPolicy {
    fn default() -> Self {
        Self { grace: Duration::minutes(10), max_per_hour: 5 }
    }
}

pub use herd_state::quarantine::{failure_reason, quarantined_set_key, quarantined_sets};

/// The in-memory part: when each unrecorded instance was first seen, and recent destroys.
#[derive(Debug, Default)]
pub(crate) struct OrphanGuard {
    state: Mutex<GuardState>,
}

#[derive(Debug, Default)]
struct GuardState {
    first_seen: BTreeMap<InstanceKey, DateTime<Utc>>,
    destroyed: VecDeque<DateTime<Utc>>,
    limited: BTreeSet<InstanceKey>,
}

impl OrphanGuard {
    /// Of the instances listed without a record now, those to destroy in this pass.
    pub fn ready(
        &self,
        now: DateTime<Utc>,
        unrecorded: Vec<InstanceKey>,
        unmanaged: &Unmanaged,
        policy: OrphanPolicy,
    ) -> Vec<InstanceKey> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let current: BTreeSet<InstanceKey> = unrecorded.iter().cloned().collect();
        st.first_seen.retain(|k, _| current.contains(k));
        st.limited.retain(|k| current.contains(k));
        let hour_ago = now - Duration::hours(1);
        while st.destroyed.front().is_some_and(|t| *t <= hour_ago) {
            st.destroyed.pop_front();
        }
        let mut out = Vec::new();
        for k in unrecorded {
            if unmanaged.instances.contains_key(&k.path()) {
                continue;
            }
            let first = match st.first_seen.get(&k) {
                Some(t) => *t,
                None => {
                    tracing::warn!(
                        instance = %k,
                        grace_secs = policy.grace.num_seconds(),
                        "an instance of this cluster runs without a record in the store; it will be destroyed after the orphan grace unless a record appears"
                    );
                    st.first_seen.insert(k.clone(), now);
                    now
                }
            };
            if now - first < policy.grace {
                continue;
            }
            if st.destroyed.len() >= policy.max_per_hour as usize {
                if st.limited.insert(k.clone()) {
                    tracing::warn!(
                        instance = %k,
                        max_per_hour = policy.max_per_hour,
                        "orphan not destroyed yet: the hourly limit on orphan destruction is reached"
                    );
                }
                continue;
            }
            tracing::warn!(
                instance = %k,
                unrecorded_secs = (now - first).num_seconds(),
                "destroying an orphan instance: herd has had no record of it for the whole orphan grace"
            );
            st.destroyed.push_back(now);
            st.first_seen.remove(&k);
            st.limited.remove(&k);
            out.push(k);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_model::{GroupName, InstanceId, ScaleSetName};

    fn key(id: u64) -> InstanceKey {
        InstanceKey { group: GroupName::new("rg").unwrap(), set: ScaleSetName::new("web").unwrap(), id: InstanceId(id) }
    }

    #[test]
    fn grace_then_hourly_limit_then_unmanaged_kept() {
        let g = OrphanGuard::default();
        let p = OrphanPolicy { grace: Duration::minutes(10), max_per_hour: 2 };
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
        let all: Vec<InstanceKey> = (0..4).map(key).collect();
        let mut unmanaged = Unmanaged::default();
        unmanaged.instances.insert(key(3).path(), t0);
        assert!(g.ready(t0, all.clone(), &unmanaged, p).is_empty(), "nothing within the grace");
        assert!(g.ready(t0 + Duration::minutes(9), all.clone(), &unmanaged, p).is_empty());
        let first = g.ready(t0 + Duration::minutes(10), all.clone(), &unmanaged, p);
        assert_eq!(first, vec![key(0), key(1)], "two per hour");
        let rest: Vec<InstanceKey> = vec![key(2), key(3)];
        assert!(g.ready(t0 + Duration::minutes(30), rest.clone(), &unmanaged, p).is_empty(), "limit reached");
        assert_eq!(g.ready(t0 + Duration::minutes(71), rest.clone(), &unmanaged, p), vec![key(2)], "next hour");
        assert!(g.ready(t0 + Duration::hours(5), vec![key(3)], &unmanaged, p).is_empty(), "unmanaged: kept");
    }

    #[test]
    fn a_record_appearing_resets_the_grace() {
        let g = OrphanGuard::default();
        let p = OrphanPolicy::default();
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
        let none = Unmanaged::default();
        assert!(g.ready(t0, vec![key(1)], &none, p).is_empty());
        assert!(g.ready(t0 + Duration::minutes(5), vec![], &none, p).is_empty(), "recorded again");
        assert!(g.ready(t0 + Duration::minutes(11), vec![key(1)], &none, p).is_empty(), "grace restarts");
        assert_eq!(g.ready(t0 + Duration::minutes(21), vec![key(1)], &none, p), vec![key(1)]);
    }
}
