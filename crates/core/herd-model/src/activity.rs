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

/// How an operation stands when its entry is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ActivityStatus {
    /// A user's request was accepted (the change is stored; the reconciler carries it out).
    Accepted,
    /// The reconciler started the operation.
    Started,
    Succeeded,
    Failed,
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
    // A user's request is `Accepted` too (see `ActivityStatus`); the documented text is kept as the
    // OpenAPI document has it.
    /// `Started`, `Succeeded` or `Failed`.
    #[schema(value_type = String)]
    pub status: ActivityStatus,
    pub actor: Actor,
    /// Human-readable detail: why, how many, which instances.
    pub message: String,
}
