//! The activity-log entry a user's request writes in the same transaction as its change.
//!
//! Why: every operation a user asks for is logged the same way (`Accepted`, by the user), and
//! the entry commits with the change or not at all; building it in one place keeps the log
//! uniform.

use chrono::{DateTime, Utc};
use herd_model::activity::{ActivityEvent, ActivityStatus, Actor};

/// An entry for something a user asked for, at `now`.
pub fn user_event(now: DateTime<Utc>, group: &str, resource: &str, operation: &str, message: String) -> ActivityEvent {
    ActivityEvent {
        seq: 0,
        time: now,
        resource_group: group.into(),
        resource: resource.into(),
        operation: operation.into(),
        status: ActivityStatus::Accepted,
        actor: Actor::User,
        message,
    }
}
