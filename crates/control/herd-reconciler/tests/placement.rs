//! Placement over declared hosts on the simulated driver: maximum spreading, fault domains
//! (recorded on each instance, kept across deallocation) and zones without hosts.

use chrono::{DateTime, Utc};
use herd_model::{
    instance::{InstanceGoal, InstanceRecord, InstanceState},
    scale_set::{ScaleSetStatus, StoredScaleSet},
    spot::HostSpec,
};
use herd_reconciler::testkit::{at, merge, model, stored_set, SimEnv};
use herd_reconciler::{Reconciler, ReconcilerConfig};
use herd_store::{Expect, Kind, Store, StoreExt, WriteOp};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

fn t0() -> DateTime<Utc> {
    at("2026-03-01T00:00:00Z")
}

fn host(name: &str, zone: &str, rack: Option<&str>) -> HostSpec {
    HostSpec {
        name: name.into(),
        zone: Some(zone.into()),
        fault_domain: rack.map(Into::into),
        vcpus: 16,
        memory_mib: 65536,
        overcommit: 1.0,
        schedulable: true,
    }
}

struct Env {
    store: Arc<dyn Store>,
    rec: Reconciler,
}

fn env(hosts: Vec<HostSpec>) -> Env {
    let SimEnv { store, sim, clock } = SimEnv::new(t0());
    let config = ReconcilerConfig { hosts, ..Default::default() };
    let rec = Reconciler::new(store.clone(), sim, Arc::new(clock), config);
    Env { store, rec }
}

fn set(name: &str, capacity: i64, extra: Value) -> StoredScaleSet {
    let mut v = json!({
        "sku": {"name": "Standard_B1s"},
        "overprovision": false,
        "virtualMachineProfile": {
            "osProfile": {"computerNamePrefix": name},
            "storageProfile": {"imageReference": {"version": "latest"}}
        }
    });
    merge(&mut v, extra);
    let mut set = stored_set(name, 1, model(capacity, v));
    set.time_created = t0();
    set
}

impl Env {
    fn put_set(&self, s: &StoredScaleSet) {
        self.store.txn(vec![WriteOp::put(Kind::ScaleSet, s.key(), s, Expect::Absent).unwrap()]).unwrap();
    }

    fn edit_set(&self, key: &str, f: impl Fn(&mut StoredScaleSet)) {
        let cur = self.store.get_as::<StoredScaleSet>(Kind::ScaleSet, key).unwrap().unwrap();
        let mut v = cur.value;
        f(&mut v);
        self.store.txn(vec![WriteOp::put(Kind::ScaleSet, key, &v, Expect::Revision(cur.revision)).unwrap()]).unwrap();
    }

    fn edit_instance(&self, set: &str, id: u64, f: impl Fn(&mut InstanceRecord)) {
        let key = format!("rg/{set}/{id:010}");
        let cur = self.store.get_as::<InstanceRecord>(Kind::Instance, &key).unwrap().unwrap();
        let mut r = cur.value;
        f(&mut r);
        self.store.txn(vec![WriteOp::put(Kind::Instance, key, &r, Expect::Revision(cur.revision)).unwrap()]).unwrap();
    }

    fn records(&self, set: &str) -> Vec<InstanceRecord> {
        self.store
            .list_as::<InstanceRecord>(Kind::Instance, &format!("rg/{set}/"))
            .unwrap()
            .into_iter()
            .map(|o| o.value)
            .collect()
    }

    fn status(&self, set: &str) -> ScaleSetStatus {
        self.store
            .get_as::<ScaleSetStatus>(Kind::ScaleSetStatus, &format!("rg/{set}"))
            .unwrap()
            .map(|o| o.value)
            .unwrap_or_default()
    }

    /// (id, zone, host, fault domain) of every running instance.
    fn placed(&self, set: &str) -> Vec<(u64, String, String, Option<u32>)> {
        self.records(set)
            .iter()
            .filter(|r| r.state == InstanceState::Running && r.goal == InstanceGoal::Running)
            .map(|r| {
                (
                    r.instance_id.0,
                    r.zone.clone().unwrap_or_default(),
                    r.host.clone().unwrap_or_default(),
                    r.platform_fault_domain,
                )
            })
            .collect()
    }

    fn per_host(&self, set: &str) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for (_, _, h, _) in self.placed(set) {
            *m.entry(h).or_default() += 1;
        }
        m
    }

    /// Passes until nothing changes (bounded).
    async fn settle(&self) {
        for _ in 0..50 {
            match self.rec.pass().await {
                Ok(r) if r.steps == 0 => return,
                _ => tokio::task::yield_now().await,
            }
        }
        panic!("no quiet pass within 50");
    }
}

#[tokio::test]
async fn six_over_three_zones_is_two_per_host_in_fault_domain_zero() {
    let e = env(vec![host("a", "1", None), host("b", "2", None), host("c", "3", None)]);
    e.put_set(&set("web", 6, json!({"zones": ["1", "2", "3"]})));
    e.settle().await;
    let per: Vec<usize> = e.per_host("web").into_values().collect();
    assert_eq!(per, vec![2, 2, 2], "{:?}", e.placed("web"));
    assert!(e.placed("web").iter().all(|p| p.3 == Some(0)), "count 1: fault domain 0: {:?}", e.placed("web"));
}

#[tokio::test]
async fn two_fault_domains_alternate_and_an_instance_keeps_its_domain() {
    // Zone 1 has two hosts; `big` has far more room, yet the set alternates.
    let mut big = host("big", "1", None);
    big.vcpus = 64;
    let e = env(vec![big, host("small", "1", None)]);
    e.put_set(&set("web", 4, json!({"zones": ["1"], "platformFaultDomainCount": 2})));
    e.settle().await;
    let placed = e.placed("web");
    let want: Vec<(u64, String, String, Option<u32>)> = (0..4)
        .map(|i| (i, "1".to_string(), if i % 2 == 0 { "big" } else { "small" }.to_string(), Some((i % 2) as u32)))
        .collect();
    assert_eq!(placed, want);

    // Deallocate instance 1 (domain 1) and start it again: it goes back to domain 1.
    e.edit_instance("web", 1, |r| r.goal = InstanceGoal::Deallocated);
    e.settle().await;
    let r1 = e.records("web").into_iter().find(|r| r.instance_id.0 == 1).unwrap();
    assert_eq!(r1.state, InstanceState::Deallocated);
    // Meanwhile the set grows by one: domain 1 is now the least used, so the new one goes there.
    e.edit_set("rg/web", |s| s.model.sku.capacity = 5);
    e.settle().await;
    let new = e.records("web").into_iter().find(|r| r.instance_id.0 == 4).unwrap();
    assert_eq!((new.host.as_deref(), new.platform_fault_domain), (Some("small"), Some(1)));
    e.edit_instance("web", 1, |r| r.goal = InstanceGoal::Running);
    e.settle().await;
    let r1 = e.records("web").into_iter().find(|r| r.instance_id.0 == 1).unwrap();
    assert_eq!(
        (r1.state, r1.host.as_deref(), r1.platform_fault_domain),
        (InstanceState::Running, Some("small"), Some(1))
    );
}

#[tokio::test]
async fn too_few_fault_domains_leave_the_set_short_with_a_note_naming_them() {
    // Racks: two hosts sharing a label are one domain.
    let e = env(vec![host("h1", "1", Some("rack-a")), host("h2", "1", Some("rack-a"))]);
    e.put_set(&set("web", 2, json!({"zones": ["1"], "platformFaultDomainCount": 2})));
    e.settle().await;
    assert!(e.records("web").is_empty());
    let note = e.status("web").capacity_note.expect("a capacity note");
    assert!(
        note.message.contains("platformFaultDomainCount 2 needs 2 fault domains in zone 1")
            && note.message.contains("rack-a"),
        "{}",
        note.message
    );
}

#[tokio::test]
async fn a_zone_without_hosts_sends_new_instances_to_the_others_with_a_note() {
    let e = env(vec![host("a", "1", None), host("b", "2", None)]);
    e.put_set(&set("web", 6, json!({"zones": ["1", "2", "3"]})));
    e.settle().await;
    let placed = e.placed("web");
    assert_eq!(placed.len(), 6, "{placed:?}");
    assert_eq!(e.per_host("web").into_values().collect::<Vec<_>>(), vec![3, 3]);
    assert!(placed.iter().all(|p| p.1 != "3"), "{placed:?}");
    let note = e.status("web").placement_note.expect("a placement note");
    assert_eq!(
        note.message,
        "zone 3 has no host that takes new instances; new instances go to zones 1, 2 (zoneBalance is off)"
    );
    assert!(e.status("web").capacity_note.is_none(), "not a shortfall");
    // With zone balance, zone 3's instances are not placed elsewhere: the set is short.
    e.put_set(&set("bal", 3, json!({"zones": ["1", "2", "3"], "zoneBalance": true})));
    e.settle().await;
    assert_eq!(e.placed("bal").len(), 2);
    let note = e.status("bal").capacity_note.expect("a capacity note");
    assert!(note.message.contains("zone 3"), "{}", note.message);
    assert!(e.status("bal").placement_note.is_none());
}
