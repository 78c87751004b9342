//! The reconciler against the simulated driver: it converges, and it converges again after a
//! crash or a driver failure at every step of the way.

use herd_driver::{sim::SimDriver, Driver, ObservedPower};
use herd_model::health::HealthState;
use herd_model::{
    clock::ManualClock,
    instance::{InstanceGoal, InstanceRecord, InstanceState},
    scale_set::{ScaleSetStatus, StoredScaleSet},
    GroupName, ScaleSetName,
};
use herd_reconciler::testkit::{edit_instances, model, stored_set, t0, SimEnv};
use herd_reconciler::{summarize, Faults, Reconciler, ReconcilerConfig};
use herd_store::{Expect, Kind, Store, StoreExt, WriteOp};
use serde_json::json;
use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

struct Env {
    store: Arc<dyn Store>,
    sim: Arc<SimDriver>,
    clock: ManualClock,
    rec: Reconciler,
}

const SET_KEY: &str = "rg/web";

fn env(faults: Option<Arc<Faults>>) -> Env {
    let SimEnv { store, sim, clock } = SimEnv::new(t0());
    let mut rec = Reconciler::new(store.clone(), sim.clone(), Arc::new(clock.clone()), ReconcilerConfig::default());
    if let Some(f) = faults {
        rec = rec.with_faults(f);
    }
    Env { store, sim, clock, rec }
}

/// Instance `id` of set `web` in group `rg`.
fn web_key(id: herd_model::InstanceId) -> herd_model::InstanceKey {
    herd_model::InstanceKey { group: GroupName::new("rg").unwrap(), set: ScaleSetName::new("web").unwrap(), id }
}

fn new_set(capacity: i64) -> StoredScaleSet {
    let extra = json!({
        "zones": ["1", "2", "3"],
        "virtualMachineProfile": {
            "storageProfile": {"imageReference": {"version": "latest"}},
            "extensionProfile": {"extensions": [{"name": "setup", "properties": {
                "publisher": "Herd.Extensions", "type": "CustomScript", "typeHandlerVersion": "2.1",
                "settings": {"commandToExecute": "echo setup"}}}]}
        }
    });
    stored_set("web", 1, model(capacity, extra))
}

impl Env {
    fn edit_set(&self, f: impl Fn(&mut StoredScaleSet)) {
        let cur = self.store.get_as::<StoredScaleSet>(Kind::ScaleSet, SET_KEY).unwrap().unwrap();
        let mut v = cur.value;
        f(&mut v);
        self.store
            .txn(vec![WriteOp::put(Kind::ScaleSet, SET_KEY, &v, Expect::Revision(cur.revision)).unwrap()])
            .unwrap();
    }

    fn edit_instances(&self, f: impl Fn(&mut InstanceRecord)) {
        edit_instances(&*self.store, "web", f);
    }

    fn records(&self) -> Vec<InstanceRecord> {
        self.store.list_as::<InstanceRecord>(Kind::Instance, "rg/web/").unwrap().into_iter().map(|o| o.value).collect()
    }

    /// Runs passes until the set is converged and the driver matches the records, or panics.
    async fn converge(&self, what: &str) {
        for _ in 0..300 {
            let _ = self.rec.pass().await;
            // Extension runs are background tasks: let them get on.
            for _ in 0..5 {
                tokio::task::yield_now().await;
            }
            self.clock.advance(chrono::Duration::seconds(30));
            if self.converged().await {
                return;
            }
        }
        panic!("{what}: did not converge; records: {:#?}", self.records());
    }

    async fn converged(&self) -> bool {
        let Some(set) = self.store.get_as::<StoredScaleSet>(Kind::ScaleSet, SET_KEY).unwrap() else {
            return self.sim.list().await.unwrap().is_empty() && self.records().is_empty();
        };
        let status = self.store.get_as::<ScaleSetStatus>(Kind::ScaleSetStatus, SET_KEY).unwrap().map(|o| o.value);
        let recs = self.records();
        if !summarize(&set.value, status.as_ref(), &recs).converged {
            return false;
        }
        let observed = self.sim.list().await.unwrap();
        let ids: BTreeSet<u64> = recs.iter().map(|r| r.instance_id.0).collect();
        let seen: BTreeSet<u64> = observed.iter().map(|o| o.key.id.0).collect();
        ids == seen
            && recs.iter().all(|r| {
                let power = observed.iter().find(|o| o.key.id == r.instance_id).map(|o| &o.power);
                match r.goal {
                    InstanceGoal::Running => power == Some(&ObservedPower::Running),
                    _ => power == Some(&ObservedPower::Stopped),
                }
            })
    }

    fn insert_set(&self, capacity: i64) {
        self.store
            .txn(vec![WriteOp::put(Kind::ScaleSet, SET_KEY, &new_set(capacity), Expect::Absent).unwrap()])
            .unwrap();
    }

    /// A lifecycle that touches every kind of step; asserts the invariants after each phase.
    async fn scenario(&self) {
        let mut seen_ids = BTreeSet::new();
        let mut check = |recs: &[InstanceRecord], capacity: usize| {
            assert_eq!(recs.len(), capacity, "exactly capacity instances: {recs:#?}");
            for r in recs {
                seen_ids.insert(r.instance_id.0);
                assert!(!r.overprovisioned);
            }
        };
        self.insert_set(5);
        self.converge("create 5").await;
        check(&self.records(), 5);
        for r in self.records() {
            assert_eq!(r.extensions.len(), 1, "the extension ran on first boot: {r:#?}");
            assert_eq!(r.extensions[0].state, herd_model::extension::ExtensionRunState::Succeeded);
            let key = web_key(r.instance_id);
            assert!(!self.sim.script_runs(&key).is_empty());
        }
        let first: BTreeSet<u64> = self.records().iter().map(|r| r.instance_id.0).collect();

        self.edit_set(|s| s.model.sku.capacity = 8);
        self.converge("scale to 8").await;
        check(&self.records(), 8);
        let after: BTreeSet<u64> = self.records().iter().map(|r| r.instance_id.0).collect();
        assert!(first.is_subset(&after), "scale-out keeps existing instances");

        self.edit_set(|s| s.model.sku.capacity = 3);
        self.converge("scale to 3").await;
        let recs = self.records();
        check(&recs, 3);
        for z in ["1", "2", "3"] {
            assert_eq!(recs.iter().filter(|r| r.zone.as_deref() == Some(z)).count(), 1, "zones stay balanced");
        }

        self.edit_instances(|r| r.goal = InstanceGoal::Deallocated);
        self.converge("deallocate").await;
        assert!(self.records().iter().all(|r| r.state == InstanceState::Deallocated));
        self.edit_instances(|r| r.goal = InstanceGoal::Running);
        self.converge("start").await;

        self.edit_set(|s| s.model_generation = 2);
        self.edit_instances(|r| r.pending = Some(herd_model::instance::PendingAction::Reimage));
        self.converge("reimage").await;
        for r in self.records() {
            assert_eq!(r.model_generation, 2);
            let key = web_key(r.instance_id);
            assert_eq!(self.sim.generation(&key), Some(2), "the driver really rebuilt instance {}", r.instance_id);
        }

        self.edit_set(|s| s.model.sku.capacity = 4);
        self.converge("scale to 4").await;
        let ids: Vec<u64> = self.records().iter().map(|r| r.instance_id.0).collect();
        let max_before = *seen_ids.iter().max().unwrap();
        assert!(ids.iter().filter(|i| !seen_ids.contains(i)).all(|i| *i > max_before), "ids are never reused");

        self.edit_set(|s| s.deleting = true);
        self.converge("delete set").await;
        assert!(self.store.get(Kind::ScaleSet, SET_KEY).unwrap().is_none());
        assert!(self.sim.list().await.unwrap().is_empty(), "no orphans");
    }
}

#[tokio::test]
async fn converges_through_a_full_lifecycle() {
    let e = env(None);
    e.scenario().await;
    let log = e.store.activity(&Default::default()).unwrap();
    assert!(log.iter().any(|a| a.operation == "CreateInstances" && a.message.contains("overprovisioned extra")));
    assert!(log.iter().any(|a| a.operation == "DeleteInstances" && a.message.contains("scale-in")));
}

/// On a server whose driver runs disk and kernel images as VMs (qemu, with directory images as
/// process instances beside them), the guest agent matters per image: an extension change runs
/// in place on a directory image's instances (every process instance runs scripts), while the
/// same change reimages the instances of a disk image without a guest agent.
#[tokio::test]
async fn on_a_vm_server_only_vm_images_need_a_guest_agent_for_extensions_in_place() {
    let SimEnv { store, sim, clock } = SimEnv::new(t0());
    let config = ReconcilerConfig { runs_vms: true, ..Default::default() };
    let rec = Reconciler::new(store.clone(), sim.clone(), Arc::new(clock.clone()), config);
    let e = Env { store, sim, clock, rec };
    e.insert_set(2);
    e.edit_set(|s| s.model.upgrade_policy.mode = herd_model::scale_set::UpgradeMode::Automatic);
    e.converge("create 2").await;
    let change_extension = |command: &str| {
        e.edit_set(|s| {
            let ext = &mut s.model.virtual_machine_profile.extension_profile.as_mut().unwrap().extensions[0];
            ext.properties.settings = Some(json!({ "commandToExecute": command }));
            s.model_generation += 1;
        })
    };
    let ran = |command: &str| {
        e.records().iter().all(|r| e.sim.script_runs(&web_key(r.instance_id)).iter().any(|(_, c)| c == command))
    };
    // Passes until every record runs model generation `g`.
    let upgrade = |g: u64, what: &'static str| {
        let e = &e;
        async move {
            for _ in 0..100 {
                if let Err(err) = e.rec.pass().await {
                    eprintln!("pass: {err}");
                }
                for _ in 0..5 {
                    tokio::task::yield_now().await;
                }
                e.clock.advance(chrono::Duration::seconds(30));
                let recs = e.records();
                if recs.len() == 2 && recs.iter().all(|r| r.model_generation == g && r.pending.is_none()) {
                    return;
                }
            }
            let set = e.store.get_as::<StoredScaleSet>(Kind::ScaleSet, SET_KEY).unwrap().unwrap().value;
            let status = e.store.get_as::<ScaleSetStatus>(Kind::ScaleSetStatus, SET_KEY).unwrap().map(|o| o.value);
            panic!(
                "{what}: not every instance reached model generation {g}: {:?} {} {:?} {:#?}",
                set.model.upgrade_policy,
                set.model_generation,
                status,
                e.records().iter().map(|r| (r.model_generation, r.state, r.pending)).collect::<Vec<_>>()
            );
        }
    };
    let builds = e.sim.build_calls();
    change_extension("echo v2");
    upgrade(2, "extension change on a directory image").await;
    assert!(ran("echo v2"), "the new command ran on every instance");
    assert_eq!(e.sim.build_calls(), builds, "in place: no instance was rebuilt");

    // The same image as a disk without a guest agent: its VMs cannot run scripts in place.
    let cur = e.store.list_as::<herd_model::image::Image>(Kind::Image, "").unwrap().pop().expect("the test image");
    let mut img = cur.value.clone();
    img.source = herd_model::image::ImageSource::Disk { path: "/nowhere.qcow2".into(), format: "qcow2".into() };
    e.store.txn(vec![WriteOp::put(Kind::Image, &cur.key, &img, Expect::Revision(cur.revision)).unwrap()]).unwrap();
    change_extension("echo v3");
    upgrade(3, "extension change on a disk image without a guest agent").await;
    assert_eq!(e.sim.build_calls(), builds + 2, "both VMs were reimaged");
}

#[tokio::test]
async fn overprovisioned_extras_are_removed_and_never_counted() {
    let e = env(None);
    e.insert_set(10);
    let _ = e.rec.pass().await.unwrap();
    let recs = e.records();
    assert_eq!(recs.len(), 12, "10 plus 20% extras");
    assert_eq!(recs.iter().filter(|r| r.overprovisioned).count(), 2);
    e.converge("create").await;
    assert_eq!(e.records().len(), 10);
}

/// Counts the fault points a clean run of `scenario` reaches (more than `min_points`), then
/// runs it again failing at each point in turn; the scenario asserts that it converges.
async fn crash_at_every_step(min_points: u64, scenario: impl Fn(&Env) -> Pin<Box<dyn Future<Output = ()> + '_>>) {
    let faults = Arc::new(Faults::default());
    let e = env(Some(faults.clone()));
    scenario(&e).await;
    let points = faults.hits();
    assert!(points > min_points, "the scenario reaches {points} fault points");
    for k in 0..points {
        let faults = Arc::new(Faults::default());
        faults.fail_at(k);
        let e = env(Some(faults.clone()));
        scenario(&e).await;
    }
}

#[tokio::test]
async fn crash_at_every_executor_step_then_converge() {
    crash_at_every_step(20, |e| Box::pin(e.scenario())).await;
}

#[tokio::test]
async fn driver_failure_at_every_call_then_converge() {
    let e = env(None);
    let start = e.sim.calls();
    e.scenario().await;
    let calls = e.sim.calls() - start;
    assert!(calls > 20);
    for k in 0..calls {
        let e = env(None);
        e.sim.fail_call(k);
        e.scenario().await;
    }
}

#[tokio::test]
async fn orphans_are_destroyed() {
    let e = env(None);
    e.insert_set(1);
    e.converge("create").await;
    let orphan = web_key(herd_model::InstanceId(999));
    e.sim.plant_orphan(orphan.clone());
    e.converge("orphan cleanup").await;
    assert!(e.sim.list().await.unwrap().iter().all(|o| o.key != orphan));
    let log = e.store.activity(&Default::default()).unwrap();
    assert!(log.iter().any(|a| a.operation == "OrphanCleanup"));
}

#[tokio::test]
async fn repeated_failures_suspend_creation_until_the_set_changes() {
    let e = env(None);
    e.sim.fail_always(true);
    e.insert_set(3);
    for _ in 0..100 {
        let _ = e.rec.pass().await;
        e.clock.advance(chrono::Duration::minutes(10));
    }
    let status = e.store.get_as::<ScaleSetStatus>(Kind::ScaleSetStatus, SET_KEY).unwrap().unwrap().value;
    let suspension = status.suspended.expect("creation is suspended");
    assert!(suspension.reason.contains("consecutive"));
    let builds = e.sim.build_calls();
    assert!(builds <= 15, "creation stopped after the threshold, not after {builds} attempts");
    for _ in 0..20 {
        let _ = e.rec.pass().await;
        e.clock.advance(chrono::Duration::minutes(10));
    }
    assert_eq!(e.sim.build_calls(), builds, "no creation while suspended: no runaway");
    assert!(e.records().len() <= 3 + 1, "never more records than capacity plus extras");
    let log = e.store.activity(&Default::default()).unwrap();
    assert!(log.iter().any(|a| a.operation == "ProvisioningSuspended"));

    e.sim.fail_always(false);
    e.edit_set(|s| s.model.tags.insert("touch".into(), "1".into()).map_or((), |_| ()));
    e.converge("resume").await;
}

/// A rolling upgrade of 10 instances in batches of 2 (20%): it completes, every instance is
/// rebuilt exactly once on the new generation, and no more than one batch is ever in flight.
async fn rolling_scenario(e: &Env) {
    e.insert_set(10);
    e.edit_set(|s| {
        s.model.overprovision = false;
        s.model.upgrade_policy.mode = herd_model::scale_set::UpgradeMode::Rolling;
    });
    e.converge("create 10").await;
    e.edit_set(|s| {
        s.model.virtual_machine_profile.os_profile.admin_username = "newadmin".into();
        s.model_generation = 2;
    });
    let mut max_in_flight = 0;
    for _ in 0..400 {
        let _ = e.rec.pass().await;
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        let in_flight = e
            .records()
            .iter()
            .filter(|r| {
                r.state == InstanceState::Reimaging
                    || r.pending == Some(herd_model::instance::PendingAction::Reimage)
                    || r.draining_since.is_some()
            })
            .count();
        max_in_flight = max_in_flight.max(in_flight);
        e.clock.advance(chrono::Duration::seconds(30));
        let status = e.store.get_as::<ScaleSetStatus>(Kind::ScaleSetStatus, SET_KEY).unwrap().unwrap().value;
        if status.rolling_upgrade.as_ref().is_some_and(|u| u.state == herd_model::upgrade::RollingState::Completed)
            && e.converged().await
        {
            break;
        }
    }
    let status = e.store.get_as::<ScaleSetStatus>(Kind::ScaleSetStatus, SET_KEY).unwrap().unwrap().value;
    let u = status.rolling_upgrade.expect("an upgrade ran");
    assert_eq!(u.state, herd_model::upgrade::RollingState::Completed, "{u:#?}");
    assert!(max_in_flight <= 2, "a batch limit was exceeded: {max_in_flight} instances in flight at once");
    let mut touched: Vec<u64> = u.touched().map(|i| i.0).collect();
    touched.sort_unstable();
    let before = touched.len();
    touched.dedup();
    assert_eq!(before, touched.len(), "no instance was upgraded twice: {u:#?}");
    assert_eq!(touched.len(), 10);
    for r in e.records() {
        assert_eq!(r.model_generation, 2);
        let key = web_key(r.instance_id);
        assert_eq!(e.sim.generation(&key), Some(2), "instance {} was really rebuilt", r.instance_id);
    }
}

#[tokio::test]
async fn rolling_upgrade_converges_after_a_crash_at_every_step() {
    crash_at_every_step(10, |e| Box::pin(rolling_scenario(e))).await;
}

/// Sets every instance's probe health (for its current boot) on `board`.
fn set_health(e: &Env, board: &herd_model::health::HealthBoard, unhealthy: &dyn Fn(u64) -> bool) {
    let all = e
        .records()
        .into_iter()
        .map(|r| {
            let h = if unhealthy(r.instance_id.0) { HealthState::Unhealthy } else { HealthState::Healthy };
            (
                format!("rg/web/{}", r.instance_id),
                herd_model::health::InstanceHealth {
                    probe: "p".into(),
                    health: h,
                    boot: r.state_since.timestamp_millis(),
                },
            )
        })
        .collect();
    board.replace(all);
}

fn repair_env(action: &str) -> (Env, Arc<herd_model::health::HealthBoard>) {
    let board = Arc::new(herd_model::health::HealthBoard::default());
    let mut e = env(None);
    e.rec = Reconciler::new(e.store.clone(), e.sim.clone(), Arc::new(e.clock.clone()), ReconcilerConfig::default())
        .with_health(board.clone());
    e.insert_set(3);
    let action = action.to_string();
    e.edit_set(move |s| {
        s.model.overprovision = false;
        s.model.automatic_repairs_policy = Some(herd_model::repair::AutomaticRepairsPolicy {
            enabled: true,
            grace_period: "PT1M".into(),
            repair_action: action.parse().unwrap(),
        });
        s.model.virtual_machine_profile.network_profile = Some(
            serde_json::from_value(json!({"healthProbe": {"id": "/probes/p"}, "networkInterfaceConfigurations": []}))
                .unwrap(),
        );
    });
    (e, board)
}

async fn step(e: &Env) {
    let _ = e.rec.pass().await;
    for _ in 0..5 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn an_unhealthy_instance_is_replaced_after_the_grace_period_on_the_injected_clock() {
    let (e, board) = repair_env("Replace");
    e.converge("create").await;
    let ids: Vec<u64> = e.records().iter().map(|r| r.instance_id.0).collect();
    let victim = ids[1];
    set_health(&e, &board, &|id| id == victim);
    // The converge loop advanced the clock past every boot: make every boot start now.
    let base = herd_model::clock::Clock::now(&e.clock);
    e.edit_instances(move |r| r.state_since = base);
    e.clock.advance(chrono::Duration::seconds(30));
    set_health(&e, &board, &|id| id == victim);
    step(&e).await;
    assert_eq!(e.records().len(), 3, "inside the grace period nothing is repaired");
    assert!(e.records().iter().all(|r| r.goal == InstanceGoal::Running));
    e.clock.advance(chrono::Duration::seconds(31));
    step(&e).await;
    let marked = e.records().into_iter().find(|r| r.instance_id.0 == victim).unwrap();
    assert_eq!(marked.goal, InstanceGoal::Deleted, "replaced after the grace period");
    assert!(marked.delete_reason.unwrap().contains("automatic repair (Replace)"));
    for _ in 0..50 {
        set_health(&e, &board, &|_| false);
        step(&e).await;
        if e.converged().await {
            break;
        }
    }
    let now: Vec<u64> = e.records().iter().map(|r| r.instance_id.0).collect();
    assert_eq!(now.len(), 3);
    assert!(!now.contains(&victim), "the unhealthy instance is gone and replaced: {now:?}");
    let log = e.store.activity(&Default::default()).unwrap();
    assert!(log
        .iter()
        .any(|a| a.operation == "AutomaticRepair" && a.message.contains(&format!("instance {victim}: Replace"))));
}

#[tokio::test]
async fn a_model_that_never_gets_healthy_trips_the_circuit_breaker() {
    let (e, board) = repair_env("Reimage");
    e.converge("create").await;
    let mut repairs_seen = 0;
    for _ in 0..200 {
        set_health(&e, &board, &|_| true);
        step(&e).await;
        e.clock.advance(chrono::Duration::seconds(20));
        let status = e.store.get_as::<ScaleSetStatus>(Kind::ScaleSetStatus, SET_KEY).unwrap().unwrap().value;
        if status.repairs.suspended.is_some() {
            break;
        }
        repairs_seen = status.repairs.attempts.len();
    }
    let status = e.store.get_as::<ScaleSetStatus>(Kind::ScaleSetStatus, SET_KEY).unwrap().unwrap().value;
    let s = status.repairs.suspended.expect("the breaker tripped");
    assert!(s.automatic && s.reason.contains("3 repairs in a row"), "{s:?}");
    assert_eq!(repairs_seen, 3, "exactly the configured number of attempts");
    let log = e.store.activity(&Default::default()).unwrap();
    assert_eq!(log.iter().filter(|a| a.operation == "AutomaticRepair").count(), 3);
    assert!(log.iter().any(|a| a.operation == "AutomaticRepairsSuspended"));
    // Suspended: no more repairs, however long it stays unhealthy.
    let builds = e.sim.build_calls();
    for _ in 0..20 {
        set_health(&e, &board, &|_| true);
        step(&e).await;
        e.clock.advance(chrono::Duration::minutes(5));
    }
    assert_eq!(e.sim.build_calls(), builds, "no VM churn while suspended");
}

/// A whole lifecycle applies every event it plans: the counter `/metrics` serves stays at zero
/// (a refused event is logged at WARN and counted; see `herd_state::transitions`).
#[tokio::test]
async fn a_full_lifecycle_refuses_no_transition() {
    let e = env(None);
    let count = e.rec.invalid_transitions();
    e.scenario().await;
    assert_eq!(count.count(), 0, "refused transitions in a clean lifecycle");
    assert!(count.prometheus().contains("\nherd_reconciler_invalid_transitions_total 0\n"));
}
