//! The enums that replaced strings keep the JSON they had: stored records written before them
//! read back, and what is written and served is byte for byte the same.

use herd_model::group::{GroupProvisioningState, ResourceGroup};
use herd_model::health::{HealthState, InstanceHealth};
use serde_json::json;

#[test]
fn health_serializes_as_the_words_it_was() {
    for (h, s) in
        [(HealthState::Healthy, "Healthy"), (HealthState::Unhealthy, "Unhealthy"), (HealthState::Unknown, "Unknown")]
    {
        assert_eq!(serde_json::to_value(h).unwrap(), json!(s));
        assert_eq!(serde_json::from_value::<HealthState>(json!(s)).unwrap(), h);
    }
    let ih = InstanceHealth { probe: "p".into(), health: HealthState::Unhealthy, boot: 7 };
    assert_eq!(serde_json::to_string(&ih).unwrap(), r#"{"probe":"p","health":"Unhealthy","boot":7}"#);
    assert!(serde_json::from_value::<HealthState>(json!("Sick")).is_err(), "an unknown word is refused");
}

#[test]
fn group_provisioning_state_reads_and_writes_the_stored_strings() {
    let stored = json!({
        "id": "/resourceGroups/rg",
        "name": "rg",
        "location": "local",
        "tags": {},
        "provisioningState": "Deleting"
    });
    let g: ResourceGroup = serde_json::from_value(stored.clone()).unwrap();
    assert_eq!(g.provisioning_state, GroupProvisioningState::Deleting);
    assert_eq!(serde_json::to_value(&g).unwrap(), stored);
    assert_eq!(serde_json::to_value(GroupProvisioningState::Succeeded).unwrap(), json!("Succeeded"));
    assert_eq!(GroupProvisioningState::default(), GroupProvisioningState::Succeeded);
}
