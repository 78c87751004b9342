//! Instance lifecycle events applied through one door that never drops a refusal silently.
//!
//! Why: [`InstanceRecord::apply`] refuses a move the lifecycle does not allow (see the diagram
//! in `herd_model::instance`). The reconciler used to discard that refusal (`let _ =`), so a
//! record that should have moved and did not left no trace. Every event the reconciler applies
//! now goes through [`apply_event`]: a refusal is still an `Err` for the caller to act on, and it
//! is also logged at WARN (instance, from-state, event) and counted in [`InvalidTransitions`],
//! which `/metrics` serves as `herd_reconciler_invalid_transitions_total`.

use chrono::{DateTime, Utc};
use herd_model::instance::{Event, InstanceRecord, InvalidTransition};
use herd_model::scale_set::StoredScaleSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How many lifecycle events were refused since the server started. Cheap to clone: clones
/// share one count (the reconciler counts, the API reads).
#[derive(Debug, Clone, Default)]
pub struct InvalidTransitions(Arc<AtomicU64>);

impl InvalidTransitions {
    /// The refusals counted so far.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn record(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The count in Prometheus text format.
    pub fn prometheus(&self) -> String {
        format!(
            "# HELP herd_reconciler_invalid_transitions_total Instance lifecycle events refused as invalid for the instance's state.\n\
             # TYPE herd_reconciler_invalid_transitions_total counter\n\
             herd_reconciler_invalid_transitions_total {}\n",
            self.count()
        )
    }
}

/// Applies `event` to `rec` (an instance of `set`). A refused event leaves the record as it
/// was, is logged at WARN and counted, and is returned as the error.
pub fn apply_event(
    counter: &InvalidTransitions,
    set: &StoredScaleSet,
    rec: &mut InstanceRecord,
    event: Event,
    now: DateTime<Utc>,
) -> Result<(), InvalidTransition> {
    rec.apply(event, now).inspect_err(|e| {
        counter.record();
        tracing::warn!(
            instance = %crate::keys::HealthKey::of(set, rec.instance_id),
            from = %e.from,
            event = ?e.event,
            "invalid instance transition refused"
        );
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_model::instance::InstanceState;

    fn set() -> StoredScaleSet {
        let model = herd_model::scale_set::ScaleSetModel::from_json(serde_json::json!({
            "location": "lab1",
            "sku": {"name": "Standard_B1ms", "capacity": 1},
            "virtualMachineProfile": {
                "osProfile": {"computerNamePrefix": "web", "adminUsername": "ops", "adminPassword": "S3cret!Passw0rd"},
                "storageProfile": {"imageReference": {"publisher": "P", "offer": "O", "sku": "S", "version": "1"}}
            }
        }))
        .expect("a minimal model");
        StoredScaleSet {
            name: herd_model::ScaleSetName::new("web").unwrap(),
            group: herd_model::GroupName::new("rg").unwrap(),
            model_generation: 1,
            time_created: Utc::now(),
            deleting: false,
            model,
        }
    }

    fn record(state: InstanceState) -> InstanceRecord {
        serde_json::from_value(serde_json::json!({
            "instanceId": 4, "computerName": "web000004", "modelGeneration": 1,
            "state": state, "goal": "Running", "reachAddress": "127.128.0.4",
            "createdAt": "2026-01-01T00:00:00Z", "stateSince": "2026-01-01T00:00:00Z",
        }))
        .expect("a minimal instance record")
    }

    #[test]
    fn an_invalid_transition_is_refused_counted_and_leaves_the_record() {
        let c = InvalidTransitions::default();
        let seen = c.clone();
        let mut r = record(InstanceState::Deleting);
        let before = r.clone();
        let e = apply_event(&c, &set(), &mut r, Event::StartRequested, Utc::now()).unwrap_err();
        assert_eq!(e.from, InstanceState::Deleting);
        assert_eq!(e.event, Event::StartRequested);
        assert_eq!(r, before, "a refused event changes nothing");
        assert_eq!(seen.count(), 1, "clones share the count");
        assert!(seen.prometheus().contains("\nherd_reconciler_invalid_transitions_total 1\n"), "{}", seen.prometheus());
    }

    #[test]
    fn a_valid_transition_is_applied_and_not_counted() {
        let c = InvalidTransitions::default();
        let mut r = record(InstanceState::Running);
        apply_event(&c, &set(), &mut r, Event::StopRequested, Utc::now()).unwrap();
        assert_eq!(r.state, InstanceState::Stopping);
        assert_eq!(c.count(), 0);
    }
}
