//! Fixtures shared by the reconciler's tests (its unit tests, its integration tests, and other
//! crates' tests that drive a reconciler): a fixed instant, a scale-set model from a JSON
//! overlay, stored sets, instance records and a gallery image.
//!
//! Why a module: the same model and record literals had been written again in every test file.
//! It is compiled for this crate's tests and, for other crates, with the `testkit` feature.

use chrono::{DateTime, Utc};
use herd_model::{
    image::{Image, ImageSource},
    instance::{InstanceGoal, InstanceRecord, InstanceState},
    scale_set::{ScaleSetModel, StoredScaleSet},
    GroupName, ScaleSetName,
};
use serde_json::{json, Value};

/// The instant tests start at: 2026-01-01T00:00:00Z.
pub fn t0() -> DateTime<Utc> {
    at("2026-01-01T00:00:00Z")
}

/// An RFC 3339 instant.
pub fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339).expect("an RFC 3339 instant").with_timezone(&Utc)
}

/// Merges `b` into `a`: objects key by key, anything else replaced.
pub fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// A model of `capacity` Standard_B1ms instances named `web…` on image `P:O:S:1`, with `extra`
/// merged over it (JSON null: nothing).
pub fn model(capacity: i64, extra: Value) -> ScaleSetModel {
    let mut v = json!({
        "sku": {"name": "Standard_B1ms", "capacity": capacity},
        "virtualMachineProfile": {
            "osProfile": {"computerNamePrefix": "web"},
            "storageProfile": {"imageReference": {"publisher": "P", "offer": "O", "sku": "S", "version": "1"}}
        }
    });
    if !extra.is_null() {
        merge(&mut v, extra);
    }
    ScaleSetModel::from_json(v).expect("a valid test model")
}

/// Set `name` of group `rg` with `model` at `generation`, created at [`t0`].
pub fn stored_set(name: &str, generation: u64, model: ScaleSetModel) -> StoredScaleSet {
    StoredScaleSet {
        name: ScaleSetName::new(name).expect("a valid set name"),
        group: GroupName::new("rg").expect("a valid group name"),
        model_generation: generation,
        time_created: t0(),
        deleting: false,
        model,
    }
}

/// Instance `id` (computer name `web{id}`) in `state`, goal Running, on `generation`, since
/// [`t0`], first incarnation.
pub fn record(id: u64, generation: u64, state: InstanceState) -> InstanceRecord {
    // Every other field takes its default: no zone, host, address, error or pending action.
    serde_json::from_value(json!({
        "instanceId": id, "computerName": format!("web{id}"), "modelGeneration": generation,
        "state": state, "goal": InstanceGoal::Running, "reachAddress": "", "incarnation": 1,
        "createdAt": t0(), "stateSince": t0()
    }))
    .expect("a valid test record")
}

/// Gallery image `P:O:S:1.0.0` (a directory that need not exist; no guest agent), created at
/// `created_at`.
pub fn image(created_at: DateTime<Utc>) -> Image {
    Image {
        id: "img".into(),
        urn: "P:O:S:1.0.0".into(),
        publisher: "P".into(),
        offer: "O".into(),
        sku: "S".into(),
        version: "1.0.0".into(),
        source: ImageSource::Directory { path: "/nowhere".into() },
        guest_agent: Some(false),
        digest: None,
        created_at,
    }
}

/// A draft of `set` (revision 7, no status on record) with `records` as read at revision 1.
pub fn draft<'a>(
    set: &'a StoredScaleSet,
    records: Vec<InstanceRecord>,
    transitions: &'a herd_state::transitions::InvalidTransitions,
) -> crate::draft::SetDraft<'a> {
    crate::draft::SetDraft::new(set, 7, None, records.into_iter().map(|r| (r, Some(1))), transitions)
}

/// What a reconciler test runs against: an in-memory store holding image `P:O:S:1.0.0`, a
/// simulated driver whose instances boot at once, and a manual clock.
pub struct SimEnv {
    pub store: std::sync::Arc<dyn herd_state::Store>,
    pub sim: std::sync::Arc<herd_driver::sim::SimDriver>,
    pub clock: herd_model::clock::ManualClock,
}

impl SimEnv {
    /// The environment with its clock at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        use herd_driver::sim::{SimConfig, SimDriver};
        use std::time::Duration;
        let store = herd_state::State::in_memory().expect("an in-memory store").store().clone();
        let sim = std::sync::Arc::new(SimDriver::new(SimConfig {
            boot_min: Duration::ZERO,
            boot_max: Duration::ZERO,
            ..Default::default()
        }));
        let clock = herd_model::clock::ManualClock::new(start);
        let img = image(start);
        let urn = herd_model::ImageUrn::parse(&img.urn).expect("a valid URN");
        let mut w = herd_state::intents::Writes::new();
        w.put_image(&herd_state::keys::ImageKey::new(&urn), &img, herd_state::Expected::Absent).expect("an image");
        w.commit(&*store).expect("the image is stored");
        Self { store, sim, clock }
    }

    /// A reconciler on this store, driver and clock.
    pub fn reconciler(&self, config: crate::ReconcilerConfig) -> crate::Reconciler {
        crate::Reconciler::new(self.store.clone(), self.sim.clone(), std::sync::Arc::new(self.clock.clone()), config)
    }

    /// Stores a new scale set.
    pub fn put_set(&self, set: &StoredScaleSet) {
        let mut w = herd_state::intents::Writes::new();
        let key = herd_state::keys::SetKey::of(set);
        w.put_scale_set(&key, set, herd_state::Expected::Absent).expect("a set");
        w.commit(&*self.store).expect("the set is stored");
    }
}

/// Changes every record of set `rg/<set>` with `f`, in one transaction, compare-and-swap on
/// each record's revision.
pub fn edit_instances(store: &dyn herd_state::Store, set: &str, f: impl Fn(&mut InstanceRecord)) {
    use herd_state::Records;
    let key = herd_state::keys::SetKey::new(
        GroupName::new("rg").expect("a valid group name"),
        ScaleSetName::new(set).expect("a valid set name"),
    );
    let mut w = herd_state::intents::Writes::new();
    for o in store.instances_of(&key).expect("the set's records") {
        let mut r = o.value;
        f(&mut r);
        w.put_instance(&key.instance(r.instance_id), &r, herd_state::Expected::Revision(o.revision)).expect("a record");
    }
    w.commit(store).expect("the records are stored");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_record_has_only_the_fields_it_names() {
        let r = record(7, 3, InstanceState::Stopped);
        assert_eq!((r.instance_id.0, r.computer_name.as_str(), r.model_generation), (7, "web7", 3));
        assert_eq!((r.state, r.goal, r.incarnation, r.attempts), (InstanceState::Stopped, InstanceGoal::Running, 1, 0));
        assert!(r.zone.is_none() && r.host.is_none() && r.pending.is_none() && r.private_ip.is_none());
        assert!(!r.overprovisioned && r.extensions.is_empty() && r.scheduled_events.is_empty());
        assert_eq!((r.created_at, r.state_since), (t0(), t0()));
    }
}
