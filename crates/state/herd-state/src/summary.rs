//! A set's convergence at a glance, derived from its stored records: what `vmss show` reports
//! and what `vmss wait` waits on (the API and the reconciler both read it, so it lives here).

use herd_model::{
    instance::{InstanceGoal, InstanceRecord, InstanceState},
    scale_set::{ScaleSetStatus, StoredScaleSet, Suspension},
};
use serde::{Deserialize, Serialize};

/// Counts of a set's instances by what they are doing, and whether it has converged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetSummary {
    pub capacity: u64,
    /// Instances that count toward capacity.
    pub instances: u64,
    pub running: u64,
    pub creating: u64,
    pub updating: u64,
    pub stopped: u64,
    pub deallocated: u64,
    pub failed: u64,
    /// Instances on their way out (scale-in, deletes, surplus extras).
    pub deleting: u64,
    /// Overprovisioning extras still alive (not counted, not billed).
    pub overprovisioned: u64,
    /// Counted instances on the latest model.
    pub latest_model: u64,
    /// Every counted instance is in its goal state, there are exactly `capacity`, and nothing
    /// is pending.
    pub converged: bool,
    /// Set when creation is suspended after repeated failures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspended: Option<Suspension>,
    /// What keeps the set below capacity on the hosts (no room, waiting for Spot evictions,
    /// the spot price above maxPrice).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_note: Option<herd_model::scale_set::CapacityNote>,
    /// Where new instances go other than the model says (zones with no host that takes new
    /// instances, for a set without zone balance: they go to the remaining zones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_note: Option<herd_model::scale_set::CapacityNote>,
}

fn at_goal(r: &InstanceRecord) -> bool {
    r.pending.is_none()
        && match r.goal {
            InstanceGoal::Running => r.state == InstanceState::Running,
            InstanceGoal::Stopped => matches!(r.state, InstanceState::Stopped | InstanceState::Deallocated),
            InstanceGoal::Deallocated => r.state == InstanceState::Deallocated,
            InstanceGoal::Deleted => false,
        }
}

/// Summarises `instances` of `set`.
pub fn summarize(set: &StoredScaleSet, status: Option<&ScaleSetStatus>, instances: &[InstanceRecord]) -> SetSummary {
    let mut s = SetSummary { capacity: set.model.capacity(), ..Default::default() };
    let mut all_at_goal = true;
    for r in instances {
        if r.goal == InstanceGoal::Deleted || r.state == InstanceState::Deleting {
            s.deleting += 1;
            continue;
        }
        if r.overprovisioned {
            s.overprovisioned += 1;
            continue;
        }
        s.instances += 1;
        match r.state {
            InstanceState::Running => s.running += 1,
            InstanceState::Creating => s.creating += 1,
            InstanceState::Stopped => s.stopped += 1,
            InstanceState::Deallocated => s.deallocated += 1,
            InstanceState::Failed => s.failed += 1,
            _ => s.updating += 1,
        }
        if r.model_generation == set.model_generation {
            s.latest_model += 1;
        }
        all_at_goal &= at_goal(r);
    }
    s.suspended = status.and_then(|st| st.suspended.clone());
    s.capacity_note = status.and_then(|st| st.capacity_note.clone());
    s.placement_note = status.and_then(|st| st.placement_note.clone());
    // Short of capacity but settled: the hosts have no room (not merely waiting for Spot
    // evictions), or Spot instances evicted with Delete are not replaced.
    let gap = status.and_then(|st| st.spot_eviction_gap.as_ref()).map_or(0, |g| g.deleted);
    let settled_short = s.capacity_note.as_ref().is_some_and(|n| !n.waiting) && s.instances < s.capacity;
    let full = s.instances == s.capacity || (gap > 0 && s.instances == s.capacity.saturating_sub(gap));
    s.converged = !set.deleting && all_at_goal && (full || settled_short) && s.deleting == 0 && s.overprovisioned == 0;
    s
}
