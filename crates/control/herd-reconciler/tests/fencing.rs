//! Fencing and error classification at the reconciler: every driver call carries the leader's
//! term and the incarnation the store holds for the instance, written before the driver sees
//! it; a permanent driver error backs off differently from a transient one (time comes from
//! the manual clock; nothing sleeps).

use async_trait::async_trait;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use herd_driver::{
    sim::SimDriver, Driver, DriverError, Fence, Incarnation, InstanceSpec, InstanceStats, LeaderTerm, ObservedInstance,
    PowerTarget, ScriptOutcome, ScriptRun, Term,
};
use herd_model::{
    clock::ManualClock,
    instance::{InstanceGoal, InstanceRecord, InstanceState},
    GroupName, InstanceKey, ScaleSetName,
};
use herd_reconciler::testkit::{edit_instances, model, stored_set, t0, SimEnv};
use herd_reconciler::{Limits, Reconciler, ReconcilerConfig};
use herd_store::{Expect, Kind, Store, StoreExt, WriteOp};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PREFIX: &str = "rg/web/";

/// One acting call as the driver saw it, with the incarnation the store held at that moment.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    call: &'static str,
    key: InstanceKey,
    fence: Fence,
    stored: Option<u64>,
}

/// Wraps the sim driver and, on every acting call, reads the instance's record from the store
/// before passing the call on.
struct Witness {
    inner: Arc<SimDriver>,
    store: Arc<dyn Store>,
    seen: Mutex<Vec<Seen>>,
}

impl Witness {
    fn note(&self, call: &'static str, key: &InstanceKey, fence: Fence) {
        let stored = self
            .store
            .list_as::<InstanceRecord>(Kind::Instance, PREFIX)
            .unwrap()
            .into_iter()
            .find(|o| o.value.instance_id == key.id)
            .map(|o| o.value.incarnation);
        self.seen.lock().unwrap().push(Seen { call, key: key.clone(), fence, stored });
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

#[async_trait]
impl Driver for Witness {
    fn name(&self) -> &'static str {
        "witness"
    }
    async fn ensure(&self, spec: &InstanceSpec, fence: Fence) -> Result<(), DriverError> {
        self.note("ensure", &spec.key, fence);
        self.inner.ensure(spec, fence).await
    }
    async fn set_power(&self, key: &InstanceKey, target: PowerTarget, fence: Fence) -> Result<(), DriverError> {
        self.note("set_power", key, fence);
        self.inner.set_power(key, target, fence).await
    }
    async fn restart(&self, key: &InstanceKey, fence: Fence) -> Result<(), DriverError> {
        self.note("restart", key, fence);
        self.inner.restart(key, fence).await
    }
    async fn resize(&self, spec: &InstanceSpec, fence: Fence) -> Result<(), DriverError> {
        self.note("resize", &spec.key, fence);
        self.inner.resize(spec, fence).await
    }
    async fn reimage(&self, spec: &InstanceSpec, fence: Fence) -> Result<(), DriverError> {
        self.note("reimage", &spec.key, fence);
        self.inner.reimage(spec, fence).await
    }
    async fn destroy(&self, key: &InstanceKey, fence: Fence) -> Result<(), DriverError> {
        self.note("destroy", key, fence);
        self.inner.destroy(key, fence).await
    }
    async fn list(&self) -> Result<Vec<ObservedInstance>, DriverError> {
        self.inner.list().await
    }
    async fn stats(&self, key: &InstanceKey) -> Result<Option<InstanceStats>, DriverError> {
        self.inner.stats(key).await
    }
    async fn run_script(&self, key: &InstanceKey, run: &ScriptRun, fence: Fence) -> Result<ScriptOutcome, DriverError> {
        self.note("run_script", key, fence);
        self.inner.run_script(key, run, fence).await
    }
    async fn console_log(&self, key: &InstanceKey, max_bytes: usize) -> Result<Option<String>, DriverError> {
        self.inner.console_log(key, max_bytes).await
    }
}

struct Env {
    store: Arc<dyn Store>,
    sim: Arc<SimDriver>,
    clock: ManualClock,
    term: LeaderTerm,
    witness: Arc<Witness>,
    rec: Reconciler,
}

fn env() -> Env {
    env_with(json!(null))
}

/// An environment whose set has `extension_profile` (JSON null: none).
fn env_with(extension_profile: serde_json::Value) -> Env {
    let mut extra = json!({
        "overprovision": false,
        "virtualMachineProfile": {"storageProfile": {"imageReference": {"version": "latest"}}}
    });
    if !extension_profile.is_null() {
        extra["virtualMachineProfile"]["extensionProfile"] = extension_profile;
    }
    let sim_env = SimEnv::new(t0());
    sim_env.put_set(&stored_set("web", 1, model(2, extra)));
    let SimEnv { store, sim, clock } = sim_env;
    let witness = Arc::new(Witness { inner: sim.clone(), store: store.clone(), seen: Mutex::new(vec![]) });
    let term = LeaderTerm::single_server();
    let config = ReconcilerConfig { term: term.clone(), ..Default::default() };
    let rec = Reconciler::new(store.clone(), witness.clone(), Arc::new(clock.clone()), config);
    Env { store, sim, clock, term, witness, rec }
}

impl Env {
    fn records(&self) -> Vec<InstanceRecord> {
        self.store.list_as::<InstanceRecord>(Kind::Instance, PREFIX).unwrap().into_iter().map(|o| o.value).collect()
    }

    fn edit_instances(&self, f: impl Fn(&mut InstanceRecord)) {
        edit_instances(&*self.store, "web", f);
    }

    /// Runs passes until every record is in `state`, or panics naming what was awaited.
    async fn until_all(&self, state: InstanceState, what: &str) {
        for _ in 0..100 {
            self.rec.pass().await.unwrap();
            let r = self.records();
            if !r.is_empty() && r.iter().all(|r| r.state == state) {
                return;
            }
        }
        panic!("{what}: records never all {state:?}: {:?}", self.records());
    }
}

#[tokio::test]
async fn the_incarnation_is_in_the_store_before_the_driver_sees_it() {
    let e = env();
    e.until_all(InstanceState::Running, "creation").await;
    let records = e.records();
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r.incarnation == 1), "creation is incarnation 1: {records:?}");
    let seen = e.witness.seen();
    let ensures: Vec<&Seen> = seen.iter().filter(|s| s.call == "ensure").collect();
    assert_eq!(ensures.len(), 2, "{seen:?}");
    for s in &seen {
        assert_eq!(s.stored, Some(s.fence.incarnation.0), "the store held the call's incarnation first: {s:?}");
        assert_eq!(s.fence, Fence::FIRST, "{s:?}");
    }
    for r in &records {
        let key = InstanceKey {
            group: GroupName::new("rg").unwrap(),
            set: ScaleSetName::new("web").unwrap(),
            id: r.instance_id,
        };
        assert_eq!(e.sim.fence_of(&key), Some(Fence::FIRST));
    }

    // A new placement (what replacement or redeploy will do): the store's incarnation rises,
    // and so does the fence of the next call, with the term the server holds now.
    e.term.raise(Term(3));
    e.edit_instances(|r| {
        r.incarnation = 2;
        r.goal = InstanceGoal::Stopped;
    });
    e.until_all(InstanceState::Stopped, "stop after the new placement").await;
    let stops: Vec<Seen> = e.witness.seen().into_iter().filter(|s| s.call == "set_power").collect();
    assert_eq!(stops.len(), 2, "{stops:?}");
    for s in &stops {
        assert_eq!(s.fence, Fence::new(Term(3), Incarnation(2)), "{s:?}");
        assert_eq!(s.stored, Some(2));
        assert_eq!(e.sim.fence_of(&s.key), Some(s.fence));
        // The old placement's caller is now refused.
        let stale = e.sim.restart(&s.key, Fence::FIRST).await.unwrap_err();
        assert!(matches!(&stale, DriverError::Fenced(f) if f.seen == s.fence), "{stale:?}");
    }
}

#[tokio::test]
async fn a_record_without_an_incarnation_reads_as_unrecorded_and_is_accepted() {
    let json = json!({
        "instanceId": 3, "computerName": "web000003", "modelGeneration": 1, "state": "Running",
        "goal": "Running", "reachAddress": "127.128.0.3", "createdAt": t0(), "stateSince": t0()
    });
    let old: InstanceRecord = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(old.incarnation, Incarnation::UNRECORDED.0);
    assert_eq!(serde_json::to_value(&old).unwrap().get("incarnation"), None, "an old record is written back as it was");
    let mut new = old.clone();
    new.incarnation = 1;
    assert_eq!(serde_json::to_value(&new).unwrap()["incarnation"], 1);
}

/// The delay a failed creation got, by error kind: `(next_attempt_at - now, build calls)`.
async fn first_failure(error: Option<DriverError>) -> (Env, ChronoDuration) {
    let e = env();
    e.sim.inject_error(error);
    e.sim.fail_always(true);
    e.rec.pass().await.unwrap();
    let records = e.records();
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r.state == InstanceState::Failed), "{records:?}");
    let delay = records[0].next_attempt_at.expect("a retry time") - t0();
    assert!(records.iter().all(|r| r.next_attempt_at == records[0].next_attempt_at));
    (e, delay)
}

#[tokio::test]
async fn a_permanent_error_backs_off_differently_from_a_transient_one() {
    let limits = Limits::default();
    let key = InstanceKey {
        group: GroupName::new("rg").unwrap(),
        set: ScaleSetName::new("web").unwrap(),
        id: herd_model::InstanceId(0),
    };
    let (transient, t_delay) = first_failure(None).await;
    let (permanent, p_delay) =
        first_failure(Some(DriverError::ImageUnavailable { key, reason: "image disk /x does not exist".into() })).await;
    assert_eq!(t_delay, limits.backoff(1), "transient: the exponential ramp's first step");
    assert_eq!(p_delay, limits.backoff_max, "permanent: straight to the longest delay");
    assert!(permanent.records()[0].last_error.as_deref().unwrap().contains("does not exist"));

    // Just past the transient delay: only the transient failure is tried again.
    let (t_calls, p_calls) = (transient.sim.build_calls(), permanent.sim.build_calls());
    for e in [&transient, &permanent] {
        e.clock.advance(t_delay + ChronoDuration::seconds(1));
        e.rec.pass().await.unwrap();
    }
    assert_eq!(transient.sim.build_calls(), t_calls + 2, "the transient failures were retried");
    assert_eq!(permanent.sim.build_calls(), p_calls, "the permanent failures were not");
    // The transient ramp goes on doubling; the permanent one waits out backoff_max.
    let r = &transient.records()[0];
    assert_eq!(r.next_attempt_at.unwrap() - transient.clock_now(), limits.backoff(2));
    permanent.clock.advance(p_delay);
    permanent.rec.pass().await.unwrap();
    assert_eq!(permanent.sim.build_calls(), p_calls + 2, "retried once backoff_max passed");
    let r = &permanent.records()[0];
    assert_eq!(r.next_attempt_at.unwrap() - permanent.clock_now(), limits.backoff_max);
}

#[tokio::test]
async fn a_fenced_call_is_permanent_and_a_spec_that_cannot_be_made_is_too() {
    let e = env();
    e.until_all(InstanceState::Running, "creation").await;
    // Another control plane with a higher term took the instances over.
    for r in e.records() {
        let key = InstanceKey {
            group: GroupName::new("rg").unwrap(),
            set: ScaleSetName::new("web").unwrap(),
            id: r.instance_id,
        };
        e.sim.set_power(&key, PowerTarget::Running, Fence::new(Term(9), Incarnation(1))).await.unwrap();
    }
    e.edit_instances(|r| r.goal = InstanceGoal::Stopped);
    e.rec.pass().await.unwrap();
    let records = e.records();
    for r in &records {
        let err = r.last_error.as_deref().unwrap_or_default();
        assert!(err.contains("term 9 incarnation 1") && err.contains("term 1 incarnation 1"), "{err}");
        assert_eq!(r.next_attempt_at.unwrap() - e.clock_now(), Limits::default().backoff_max, "{r:?}");
    }

    // An image gone from the gallery: the spec cannot be made, the same way every time.
    let e = env();
    let img = e.store.get(Kind::Image, "p:o:s:1.0.0").unwrap().unwrap();
    e.store.txn(vec![WriteOp::delete(Kind::Image, "p:o:s:1.0.0", Expect::Revision(img.revision))]).unwrap();
    e.rec.pass().await.unwrap();
    for r in e.records() {
        assert!(r.last_error.as_deref().unwrap_or_default().contains("is not in the gallery"), "{r:?}");
        assert_eq!(r.next_attempt_at.unwrap() - e.clock_now(), Limits::default().backoff_max, "{r:?}");
    }
    assert_eq!(e.sim.build_calls(), 0, "the driver was never called");
}

impl Env {
    fn clock_now(&self) -> DateTime<Utc> {
        use herd_model::clock::Clock;
        self.clock.now()
    }
}

#[tokio::test]
async fn extension_runs_carry_the_fence_too() {
    let e = env_with(json!({"extensions": [{"name": "setup", "properties": {
        "publisher": "Herd.Extensions", "type": "CustomScript", "typeHandlerVersion": "2.1",
        "settings": {"commandToExecute": "echo setup"}}}]}));
    e.term.raise(Term(2));
    e.until_all(InstanceState::Running, "creation").await;
    // Extension runs are background tasks started by a pass: poll for both, passing time.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let runs = loop {
        let runs: Vec<Seen> = e.witness.seen().into_iter().filter(|s| s.call == "run_script").collect();
        if runs.len() >= 2 {
            break runs;
        }
        assert!(std::time::Instant::now() < deadline, "two extension runs never happened: {:?}", e.witness.seen());
        e.rec.pass().await.unwrap();
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    for s in &runs {
        assert_eq!(s.fence, Fence::new(Term(2), Incarnation::FIRST), "{s:?}");
        assert_eq!(s.stored, Some(1), "{s:?}");
    }
}

#[tokio::test]
async fn an_unreachable_host_leaves_the_instance_as_it_was_and_keeps_the_backoff_short() {
    let limits = Limits::default();
    let e = env();
    e.sim.inject_error(Some(DriverError::Unreachable {
        host: "h3".into(),
        reason: "host h3 has sent no heartbeat for 7 s (its agent is stopped or its link is cut)".into(),
    }));
    e.sim.fail_always(true);
    // Many passes while the host is away: the instances stay Creating (not Failed), with no
    // create failure counted, and the next try is always the base delay away.
    for _ in 0..6 {
        e.rec.pass().await.unwrap();
        for r in e.records() {
            assert_eq!(r.state, InstanceState::Creating, "{r:?}");
            assert_eq!(r.next_attempt_at.unwrap() - e.clock_now(), limits.backoff_base, "{r:?}");
            assert!(r.last_error.as_deref().unwrap().contains("no heartbeat"), "{r:?}");
        }
        e.clock.advance(limits.backoff_base + ChronoDuration::seconds(1));
    }
    // The host is back: the next pass builds them.
    e.sim.fail_always(false);
    e.sim.inject_error(None);
    e.until_all(InstanceState::Running, "creation once the host answers").await;
}
