//! The autoscaler's capacity writer (`ApiCapacityWriter`) refuses what `herd vmss scale`
//! refuses: a scale-out with no room left in the public IP pool, naming the pool, while
//! scaling in (or out within the pool) goes through.

mod support;

use serde_json::json;
use std::sync::Arc;
use support::*;

#[tokio::test]
async fn a_scale_out_past_the_public_ip_pool_is_refused_and_a_scale_in_is_not() {
    let h = Harness::new();
    // A bridged server with a /29 pool: 6 usable addresses.
    let mut config = (*h.state.config).clone();
    config.bridged = true;
    config.public_ip_pool = Some(herd_model::public_pool::PublicIpPool::parse("198.51.100.0/29").unwrap());
    let mut state = h.state.clone();
    state.config = Arc::new(config);
    let h = Harness { router: herd_api::router(state.clone()), state, ..h };
    h.world().await;
    let mut body = set_body(2);
    body.pointer_mut("/virtualMachineProfile/networkProfile/networkInterfaceConfigurations/0/ipConfigurations/0")
        .and_then(|v| v.as_object_mut())
        .unwrap()
        .insert("publicIPAddressConfiguration".into(), json!({"name": "pub"}));
    h.put(&set_uri(""), body).await.expect(200);
    let writer = herd_api::autoscale::ApiCapacityWriter(h.state.clone());
    let e = writer.set_capacity("rg", "web", 7, "cpu high").unwrap_err();
    assert!(e.contains("198.51.100.0/29") && e.contains("public_ip_pool"), "{e}");
    assert_eq!(h.get(&set_uri("")).await.expect(200).json()["sku"]["capacity"], 2, "nothing half-applied");
    writer.set_capacity("rg", "web", 5, "cpu high").expect("5 fit in 6 addresses");
    writer.set_capacity("rg", "web", 1, "cpu low").expect("scaling in needs no room");
    assert_eq!(h.get(&set_uri("")).await.expect(200).json()["sku"]["capacity"], 1);
}
