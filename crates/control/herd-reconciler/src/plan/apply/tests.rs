//! Tests of applying lifecycle and scale steps to a draft: new records with their ids, names
//! and addresses; what an observed boot or failure does to a record and the set's counters.

use super::*;
use crate::draft::Ipam;
use crate::plan::Limits;
use crate::testkit::{draft, model, record, stored_set, t0};
use herd_model::network::VirtualNetwork;
use herd_state::transitions::InvalidTransitions;
use serde_json::json;

fn env(limits: &Limits, bridged: bool) -> ApplyEnv<'_> {
    ApplyEnv { now: t0(), limits, bridged, address_block: 3 }
}

fn new(id: u64, overprovisioned: bool) -> NewInstance {
    NewInstance { id: InstanceId(id), zone: Some("2".into()), overprovisioned, host: None, fault_domain: None }
}

#[test]
fn new_records_get_their_names_zones_and_the_next_host_local_addresses() {
    let set =
        stored_set("web", 4, model(2, json!({"virtualMachineProfile": {"osProfile": {"computerNamePrefix": "api"}}})));
    let t = InvalidTransitions::default();
    let mut w = draft(&set, vec![], &t);
    let limits = Limits::default();
    let mut addrs = Addresses { next: 5, ipam: Ipam::default() };
    apply_step(&mut w, &Step::Create(vec![new(0, false), new(1, true)]), &env(&limits, false), &mut addrs);

    assert_eq!(addrs.next, 7);
    let r0 = &w.records[&InstanceId(0)];
    assert_eq!((r0.revision, r0.dirty), (None, true), "a new record is written as a create");
    assert_eq!(r0.record.computer_name, InstanceRecord::computer_name_for("api", InstanceId(0)));
    assert_eq!(r0.record.reach_address, host_local_address(3, 5).to_string());
    assert_eq!((r0.record.state, r0.record.goal), (InstanceState::Creating, InstanceGoal::Running));
    assert_eq!((r0.record.model_generation, r0.record.zone.as_deref()), (4, Some("2")));
    assert_eq!((r0.record.attempts, r0.record.incarnation), (1, 1));
    let r1 = &w.records[&InstanceId(1)].record;
    assert_eq!((r1.overprovisioned, r1.reach_address.clone()), (true, host_local_address(3, 6).to_string()));
    assert_eq!(w.status.next_instance_id, 2);
    assert_eq!(w.log.len(), 1);
    assert_eq!(
        w.log[0].1,
        "creating 1 instance(s): 0; plus 1 overprovisioned extra(s) 1 (not counted, not billed; the first ready are kept)"
    );
}

#[test]
fn in_a_bridged_subnet_instances_are_reached_on_private_ips_until_the_subnet_is_full() {
    let nic = json!({"networkProfile": {"networkInterfaceConfigurations": [
        {"name": "nic", "ipConfigurations": [{"name": "ip", "subnet": {"id": "/Sub/A"}}]}]}});
    let set = stored_set("web", 1, model(4, json!({"virtualMachineProfile": nic})));
    let vnet: VirtualNetwork = serde_json::from_value(json!({
        "addressSpace": {"addressPrefixes": ["10.0.0.0/16"]},
        "subnets": [{"id": "/sub/a", "name": "a", "addressPrefix": "10.0.0.0/29"}]
    }))
    .unwrap();
    let t = InvalidTransitions::default();
    let mut w = draft(&set, vec![], &t);
    let limits = Limits::default();
    let mut addrs = Addresses { next: 0, ipam: Ipam::new(&[vnet], std::iter::empty()) };
    let create = Step::Create((0..4).map(|i| new(i, false)).collect());
    apply_step(&mut w, &create, &env(&limits, true), &mut addrs);

    // A /29 has .4, .5 and .6 to give (the first four and the last are reserved).
    let ips: Vec<_> =
        w.records.values().map(|r| (r.record.private_ip.clone().unwrap(), r.record.reach_address.clone())).collect();
    assert_eq!(
        ips,
        [("10.0.0.4", "10.0.0.4"), ("10.0.0.5", "10.0.0.5"), ("10.0.0.6", "10.0.0.6")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert_eq!(addrs.next, 0, "no host-local address is used in bridged mode");
    assert!(!w.records.contains_key(&InstanceId(3)));
    assert!(
        w.log.iter().any(|(op, m)| op == "CreateInstances"
            && m.contains("subnet /sub/a has no free address")
            && m.contains("instance 3 not created")),
        "{:?}",
        w.log
    );
}

/// A bridged set on subnet /sub/a (10.0.0.0/24) with a public IP per instance.
fn public_set() -> (herd_model::scale_set::StoredScaleSet, VirtualNetwork) {
    let nic = json!({"networkProfile": {"networkInterfaceConfigurations": [{"name": "nic", "ipConfigurations": [
        {"name": "ip", "subnet": {"id": "/Sub/A"}, "publicIPAddressConfiguration": {"name": "pub"}}]}]}});
    let set = stored_set("web", 1, model(4, json!({"virtualMachineProfile": nic})));
    let vnet: VirtualNetwork = serde_json::from_value(json!({
        "addressSpace": {"addressPrefixes": ["10.0.0.0/16"]},
        "subnets": [{"id": "/sub/a", "name": "a", "addressPrefix": "10.0.0.0/24"}]
    }))
    .unwrap();
    (set, vnet)
}

#[test]
fn public_ips_come_lowest_first_from_the_pool_skip_held_ones_and_a_full_pool_creates_nothing() {
    let (set, vnet) = public_set();
    let t = InvalidTransitions::default();
    // Instance 9 of another record already holds .1 (a record is the allocation).
    let mut held = record(9, 1, InstanceState::Running);
    held.public_ip = Some("198.51.100.1".into());
    let pool = herd_model::public_pool::PublicIpPool::parse("198.51.100.0/29").unwrap();
    let ipam = Ipam::new(std::slice::from_ref(&vnet), std::iter::once((&set, &held))).with_public_pool(Some(pool));
    let mut w = draft(&set, vec![], &t);
    let limits = Limits::default();
    let mut addrs = Addresses { next: 0, ipam };
    let create = Step::Create((0..7).map(|i| new(i, false)).collect());
    apply_step(&mut w, &create, &env(&limits, true), &mut addrs);
    // A /29 pool hands out .1 to .6; .1 is held.
    let ips: Vec<_> = w.records.values().map(|r| r.record.public_ip.clone().unwrap()).collect();
    assert_eq!(ips, (2..=6).map(|n| format!("198.51.100.{n}")).collect::<Vec<_>>());
    assert_eq!(w.records.len(), 5, "instances 5 and 6 are not created");
    assert!(
        w.log.iter().any(|(_, m)| m.contains("the public IP pool 198.51.100.0/29 is full (6 of 6 addresses in use)")
            && m.contains("instance 5 not created")),
        "{:?}",
        w.log
    );
    // Their private IPs were not taken either: the subnet's next address is still .9.
    assert_eq!(addrs.ipam.allocate("/sub/a"), Some("10.0.0.9".parse().unwrap()));

    // Without a pool, nothing is created and the log names the setting; host-local mode
    // allocates nothing.
    let mut w = draft(&set, vec![], &t);
    let mut addrs = Addresses { next: 0, ipam: Ipam::new(std::slice::from_ref(&vnet), std::iter::empty()) };
    apply_step(&mut w, &Step::Create(vec![new(0, false)]), &env(&limits, true), &mut addrs);
    assert!(w.records.is_empty());
    assert!(w.log.iter().any(|(_, m)| m.contains("[network] public_ip_pool")), "{:?}", w.log);
    let mut w = draft(&set, vec![], &t);
    apply_step(&mut w, &Step::Create(vec![new(0, false)]), &env(&limits, false), &mut addrs);
    assert_eq!(w.records[&InstanceId(0)].record.public_ip, None);
}

#[test]
fn a_reimage_gives_a_public_ip_to_a_model_that_asks_and_takes_it_back_from_one_that_does_not() {
    let (set, vnet) = public_set();
    let t = InvalidTransitions::default();
    let pool = herd_model::public_pool::PublicIpPool::parse("198.51.100.0/29").unwrap();
    let limits = Limits::default();
    let mut addrs = Addresses {
        next: 0,
        ipam: Ipam::new(std::slice::from_ref(&vnet), std::iter::empty()).with_public_pool(Some(pool)),
    };
    let mut w = draft(&set, vec![record(0, 1, InstanceState::Running)], &t);
    apply_step(&mut w, &Step::Reimage(InstanceId(0)), &env(&limits, true), &mut addrs);
    assert_eq!(w.records[&InstanceId(0)].record.public_ip.as_deref(), Some("198.51.100.1"));
    // A restart keeps it.
    let mut kept = w.records[&InstanceId(0)].record.clone();
    kept.state = InstanceState::Running;
    let mut w = draft(&set, vec![kept.clone()], &t);
    apply_step(&mut w, &Step::Restart(InstanceId(0)), &env(&limits, true), &mut addrs);
    assert_eq!(w.records[&InstanceId(0)].record.public_ip.as_deref(), Some("198.51.100.1"));
    // A model without publicIPAddressConfiguration takes it back at the next reimage.
    let plain = stored_set("web", 2, model(4, json!({})));
    let mut w = draft(&plain, vec![kept], &t);
    apply_step(&mut w, &Step::Reimage(InstanceId(0)), &env(&limits, true), &mut addrs);
    assert_eq!(w.records[&InstanceId(0)].record.public_ip, None);
}

#[test]
fn a_failed_creation_backs_off_and_counts_and_a_boot_resets_the_count_and_queues_extensions() {
    let ext = json!({"virtualMachineProfile": {"extensionProfile": {"extensions": [{"name": "setup", "properties": {
        "publisher": "Herd.Extensions", "type": "CustomScript", "typeHandlerVersion": "2.1",
        "settings": {"commandToExecute": "echo setup"}}}]}}});
    let set = stored_set("web", 1, model(2, ext));
    let t = InvalidTransitions::default();
    let recs = vec![record(0, 1, InstanceState::Creating), record(1, 1, InstanceState::Creating)];
    let mut w = draft(&set, recs, &t);
    w.records.get_mut(&InstanceId(0)).unwrap().record.attempts = 2;
    let limits = Limits::default();
    let mut addrs = Addresses::default();
    let failed = Step::Observe { id: InstanceId(0), event: Event::ProvisionFailed, detail: Some("no disk".into()) };
    apply_step(&mut w, &failed, &env(&limits, false), &mut addrs);
    let r = &w.records[&InstanceId(0)].record;
    assert_eq!((r.state, r.last_error.as_deref()), (InstanceState::Failed, Some("no disk")));
    assert_eq!(r.next_attempt_at, Some(t0() + limits.backoff(2)));
    assert_eq!(w.status.consecutive_create_failures, 1);
    assert_eq!(
        w.log[0],
        ("InstanceFailed".to_string(), "instance 0 failed (no disk) after attempt 2; retry in 4s".to_string())
    );

    let boot = Step::Observe { id: InstanceId(1), event: Event::BootObserved, detail: None };
    apply_step(&mut w, &boot, &env(&limits, false), &mut addrs);
    let r = &w.records[&InstanceId(1)].record;
    assert_eq!((r.state, r.attempts, r.pending), (InstanceState::Running, 0, Some(PendingAction::RunExtensions)));
    assert_eq!(w.status.consecutive_create_failures, 0, "a boot after a creation resets the count");
}

#[test]
fn suspension_and_resumption_are_recorded_on_the_status() {
    let set = stored_set("web", 1, model(2, serde_json::Value::Null));
    let t = InvalidTransitions::default();
    let mut w = draft(&set, vec![], &t);
    w.status.consecutive_create_failures = 10;
    let limits = Limits::default();
    let mut addrs = Addresses::default();
    apply_step(&mut w, &Step::Suspend("10 creations failed".into()), &env(&limits, false), &mut addrs);
    let s = w.status.suspended.clone().expect("suspended");
    assert_eq!((s.reason.as_str(), s.at_revision, s.since), ("10 creations failed", 7, t0()));
    apply_step(&mut w, &Step::Resume, &env(&limits, false), &mut addrs);
    assert_eq!((w.status.suspended.is_none(), w.status.consecutive_create_failures), (true, 0));
    let ops: Vec<&str> = w.log.iter().map(|(op, _)| op.as_str()).collect();
    assert_eq!(ops, ["ProvisioningSuspended", "ProvisioningResumed"]);
}
