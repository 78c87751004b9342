//! Requests written into a scale set's status for the reconciler to act on: rolling-upgrade
//! requests (start, pause, resume, cancel, roll back) and the automatic-repairs service state.
//!
//! Why here: the status record is the reconciler's, written on every pass, so a user's request
//! is a compare-and-swap on it, retried on a fresh read when the reconciler wrote first; one
//! loop does that for every such request, with the request's own checks re-run each time.

use crate::activity::user_event;
use crate::keys::SetKey;
use crate::records::StateError;
use chrono::{DateTime, Utc};
use herd_model::scale_set::{ScaleSetStatus, StoredScaleSet, UpgradeRequest};
use herd_model::upgrade::{RollingState, RollingUpgrade};
use herd_model::ScaleSetName;
use herd_store::{Expect, Kind, Store, StoreError, StoreExt, WriteOp};

/// How many fresh reads a status request tries before giving up.
const STATUS_TRIES: usize = 10;

/// Why a status request was refused.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("scale set '{0}' has no rolling upgrade in progress")]
    NoUpgradeInProgress(ScaleSetName),
    #[error("scale set '{0}' has no paused rolling upgrade")]
    NoPausedUpgrade(ScaleSetName),
    #[error("scale set '{0}' has no rolling upgrade to roll back")]
    NoUpgradeToRollBack(ScaleSetName),
    /// Every try lost to a concurrent write.
    #[error("the scale set's status kept changing; try again")]
    KeptChanging,
    #[error(transparent)]
    State(#[from] StateError),
}

crate::records::store_error_via_state!(StatusError);

/// The set's latest rolling upgrade, if it had one.
pub fn latest_rolling_upgrade(store: &dyn Store, set: &StoredScaleSet) -> Result<Option<RollingUpgrade>, StateError> {
    let status = store.get_as::<ScaleSetStatus>(Kind::ScaleSetStatus, &SetKey::of(set).to_string())?;
    Ok(status.and_then(|s| s.value.rolling_upgrade))
}

/// Applies `change` to a fresh read of the set's status and writes it with a log line
/// (`operation`, `message`) as a compare-and-swap, re-reading when the reconciler wrote first.
fn update_status(
    store: &dyn Store,
    set: &StoredScaleSet,
    now: DateTime<Utc>,
    (operation, message): (&str, String),
    mut change: impl FnMut(&mut ScaleSetStatus) -> Result<(), StatusError>,
) -> Result<(), StatusError> {
    let key = SetKey::of(set).to_string();
    for _ in 0..STATUS_TRIES {
        let (mut status, expect) = match store.get_as::<ScaleSetStatus>(Kind::ScaleSetStatus, &key)? {
            Some(o) => (o.value, Expect::Revision(o.revision)),
            None => (ScaleSetStatus::default(), Expect::Absent),
        };
        change(&mut status)?;
        let ev = user_event(now, set.group.as_str(), set.name.as_str(), operation, message.clone());
        match store.txn(vec![WriteOp::put(Kind::ScaleSetStatus, key.clone(), &status, expect)?, WriteOp::Activity(ev)])
        {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StatusError::KeptChanging)
}

/// Asks the reconciler for `request` on the set's rolling upgrade (`action` names it in the
/// log). Pause and cancel need an upgrade in progress, resume a paused one, rollback any.
pub fn request_rolling_upgrade(
    store: &dyn Store,
    set: &StoredScaleSet,
    request: &UpgradeRequest,
    action: &str,
    now: DateTime<Utc>,
) -> Result<(), StatusError> {
    let log = ("RollingUpgradeRequest", format!("rolling-upgrade {action} requested"));
    update_status(store, set, now, log, |status| {
        let active = status.rolling_upgrade.as_ref().filter(|u| u.state.is_active());
        match (request, active) {
            (UpgradeRequest::Pause | UpgradeRequest::Cancel, None) => {
                return Err(StatusError::NoUpgradeInProgress(set.name.clone()))
            }
            (UpgradeRequest::Resume, a) if a.is_none_or(|u| u.state != RollingState::Paused) => {
                return Err(StatusError::NoPausedUpgrade(set.name.clone()))
            }
            (UpgradeRequest::Rollback, _) if status.rolling_upgrade.is_none() => {
                return Err(StatusError::NoUpgradeToRollBack(set.name.clone()))
            }
            _ => {}
        }
        status.upgrade_request = Some(request.clone());
        Ok(())
    })
}

/// Suspends the set's automatic repairs (by the user), or resumes them, clearing the circuit
/// breaker's count.
pub fn set_repairs_suspended(
    store: &dyn Store,
    set: &StoredScaleSet,
    suspend: bool,
    now: DateTime<Utc>,
) -> Result<(), StatusError> {
    let verb = if suspend { "suspended" } else { "resumed" };
    let log = ("SetOrchestrationServiceState", format!("automatic repairs {verb}"));
    update_status(store, set, now, log, |status| {
        if suspend {
            status.repairs.suspended = Some(herd_model::repair::RepairSuspension {
                reason: "suspended by user".into(),
                since: now,
                automatic: false,
            });
        } else {
            status.repairs.suspended = None;
            status.repairs.attempts.clear();
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{activity_count, now, store, stored_set};

    #[test]
    fn upgrade_requests_are_checked_against_the_status_and_written_with_a_log_line() {
        let store = store();
        let set = stored_set("rg", "web", 2);
        let err = request_rolling_upgrade(&store, &set, &UpgradeRequest::Pause, "pause", now()).unwrap_err();
        assert_eq!(err.to_string(), "scale set 'web' has no rolling upgrade in progress");
        let err = request_rolling_upgrade(&store, &set, &UpgradeRequest::Rollback, "rollback", now()).unwrap_err();
        assert!(matches!(err, StatusError::NoUpgradeToRollBack(_)), "{err:?}");
        assert_eq!(activity_count(&store), 0, "a refused request writes nothing");
        let start = UpgradeRequest::Start { canary: None, pause: false, reimage: false };
        request_rolling_upgrade(&store, &set, &start, "start", now()).unwrap();
        let status = store.get_as::<ScaleSetStatus>(Kind::ScaleSetStatus, "rg/web").unwrap().unwrap().value;
        assert_eq!(status.upgrade_request, Some(start));
        assert_eq!(latest_rolling_upgrade(&store, &set).unwrap(), None, "the reconciler has not started it yet");
        assert_eq!(activity_count(&store), 1);
    }

    #[test]
    fn repairs_are_suspended_and_resumed_in_the_status() {
        let store = store();
        let set = stored_set("rg", "web", 2);
        set_repairs_suspended(&store, &set, true, now()).unwrap();
        let status = store.get_as::<ScaleSetStatus>(Kind::ScaleSetStatus, "rg/web").unwrap().unwrap().value;
        assert_eq!(status.repairs.suspended.map(|s| s.reason), Some("suspended by user".to_string()));
        set_repairs_suspended(&store, &set, false, now()).unwrap();
        let status = store.get_as::<ScaleSetStatus>(Kind::ScaleSetStatus, "rg/web").unwrap().unwrap().value;
        assert!(status.repairs.suspended.is_none());
        assert_eq!(activity_count(&store), 2);
    }
}
