//! The activity log: what happened to each resource, when, who did it and why.

use serde::{Deserialize, Serialize};

/// Who caused an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Actor {
    /// A user, through the API.
    User,
    /// herd's reconciler making reality match the model.
    Reconciler,
    /// An autoscale setting changing a set's capacity.
    Autoscale,
}

/// One entry of the activity log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActivityEvent {
    /// Monotonic sequence number assigned by the store.
    #[serde(default)]
    pub seq: u64,
    pub time: chrono::DateTime<chrono::Utc>,
    pub resource_group: String,
    /// The resource name (a scale set, an image...), empty for group-level events.
    pub resource: String,
    /// What happened, e.g. `Microsoft.Compute/virtualMachineScaleSets/write`, `Scale`, `InstanceCreated`.
    pub operation: String,
    /// `Started`, `Succeeded` or `Failed`.
    pub status: String,
    pub actor: Actor,
    /// Human-readable detail: why, how many, which instances.
    pub message: String,
}
