//! The simulated driver: in-memory instances with a configurable boot latency and failure rate,
//! driven by a seeded random generator so a run can be repeated exactly.
//!
//! It is a first-class driver: integration tests run the real server against it, benchmarks use
//! it at 10k+ scale, and fault injection ([`SimDriver::fail_call`]) makes any numbered call fail
//! so every executor step can be broken and recovery checked.

use crate::{
    fence::Admission, Driver, DriverError, Fence, InstanceSpec, InstanceStats, ObservedInstance, ObservedPower,
    PowerTarget, ScriptOutcome, ScriptRun,
};
use async_trait::async_trait;
use herd_model::InstanceKey;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How simulated instances behave.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Boot latency is drawn uniformly from this range.
    pub boot_min: Duration,
    pub boot_max: Duration,
    /// Probability that a boot fails (the instance ends `Failed`).
    pub failure_rate: f64,
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self { boot_min: Duration::from_millis(50), boot_max: Duration::from_millis(200), failure_rate: 0.0, seed: 1 }
    }
}

#[derive(Debug, Clone)]
struct SimInstance {
    power: SimPower,
    generation: u64,
    cpu_percent: f64,
    /// Network counters (received, sent bytes); `None` until a test sets them: no data.
    net: Option<(u64, u64)>,
}

impl SimInstance {
    fn new(power: SimPower, generation: u64) -> Self {
        Self { power, generation, cpu_percent: 0.0, net: None }
    }
}

#[derive(Debug, Clone)]
enum SimPower {
    Booting { ready_at: Instant, fails: bool },
    Running,
    Stopped,
    Failed(String),
}

#[derive(Debug)]
struct State {
    rng: StdRng,
    instances: BTreeMap<InstanceKey, SimInstance>,
    calls: u64,
    ensures: u64,
    fail_calls: BTreeSet<u64>,
    fail_always: bool,
    /// Script runs per instance: (extension name, command), in order.
    scripts: BTreeMap<InstanceKey, Vec<(String, String)>>,
    /// The error injected failures return; `None`: a transient `Failed`.
    injected: Option<DriverError>,
    /// The highest fence seen per instance (removed with the instance, as a real driver's
    /// record goes with its directory).
    fences: BTreeMap<InstanceKey, Fence>,
}

/// The simulated driver.
#[derive(Debug)]
pub struct SimDriver {
    config: SimConfig,
    state: Mutex<State>,
}

impl SimDriver {
    pub fn new(config: SimConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        Self {
            config,
            state: Mutex::new(State {
                rng,
                instances: BTreeMap::new(),
                calls: 0,
                ensures: 0,
                fail_calls: BTreeSet::new(),
                fail_always: false,
                scripts: BTreeMap::new(),
                injected: None,
                fences: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the `n`th mutating call from now (0 = the next one) fail with an error.
    pub fn fail_call(&self, n: u64) {
        let mut s = self.lock();
        let at = s.calls + n;
        s.fail_calls.insert(at);
    }

    /// Makes every mutating call fail until turned off: a host that cannot create anything.
    pub fn fail_always(&self, on: bool) {
        self.lock().fail_always = on;
    }

    /// Makes injected failures ([`fail_call`](Self::fail_call), [`fail_always`](Self::fail_always))
    /// return `error` instead of a transient `Failed`: for example a permanent
    /// [`DriverError::ImageUnavailable`], to test how callers back off. `None` restores the default.
    pub fn inject_error(&self, error: Option<DriverError>) {
        self.lock().injected = error;
    }

    /// The highest fence this driver has seen for an instance.
    pub fn fence_of(&self, key: &InstanceKey) -> Option<Fence> {
        self.lock().fences.get(key).copied()
    }

    /// Mutating calls made so far.
    pub fn calls(&self) -> u64 {
        self.lock().calls
    }

    /// `ensure` and `reimage` calls so far (attempts to build an instance), failed ones included.
    pub fn build_calls(&self) -> u64 {
        self.lock().ensures
    }

    /// Sets the CPU use `stats` reports for an instance (for autoscale tests).
    pub fn set_cpu_percent(&self, key: &InstanceKey, pct: f64) {
        if let Some(i) = self.lock().instances.get_mut(key) {
            i.cpu_percent = pct;
        }
    }

    /// Sets the network counters `stats` reports for an instance (bytes received and sent since
    /// it started). Until this is called, `stats` reports no network data (`None`), not zero.
    pub fn set_net_bytes(&self, key: &InstanceKey, rx: u64, tx: u64) {
        if let Some(i) = self.lock().instances.get_mut(key) {
            i.net = Some((rx, tx));
        }
    }

    /// Adds traffic to an instance's network counters (starting them at zero if unset).
    pub fn add_net_bytes(&self, key: &InstanceKey, rx: u64, tx: u64) {
        if let Some(i) = self.lock().instances.get_mut(key) {
            let (r, t) = i.net.unwrap_or((0, 0));
            i.net = Some((r.saturating_add(rx), t.saturating_add(tx)));
        }
    }

    /// The scripts run on an instance so far: (extension name, command).
    pub fn script_runs(&self, key: &InstanceKey) -> Vec<(String, String)> {
        self.lock().scripts.get(key).cloned().unwrap_or_default()
    }

    /// Makes a running instance crash, as a VM would on a guest panic.
    pub fn crash(&self, key: &InstanceKey) {
        if let Some(i) = self.lock().instances.get_mut(key) {
            i.power = SimPower::Failed("simulated crash".into());
        }
    }

    /// Adds an instance herd does not know about, as a crash could leave behind.
    pub fn plant_orphan(&self, key: InstanceKey) {
        self.lock().instances.insert(key, SimInstance::new(SimPower::Running, 0));
    }

    /// The model generation an instance was built with.
    pub fn generation(&self, key: &InstanceKey) -> Option<u64> {
        self.lock().instances.get(key).map(|i| i.generation)
    }

    /// Starts a mutating call on `key`: checks and records the fence (a refused call counts as
    /// a call but changes nothing), then applies injected failures.
    fn call(&self, key: &InstanceKey, fence: Fence) -> Result<std::sync::MutexGuard<'_, State>, DriverError> {
        let mut s = self.lock();
        let n = s.calls;
        s.calls += 1;
        admit(&mut s, key, fence)?;
        if s.fail_always || s.fail_calls.remove(&n) {
            return Err(s
                .injected
                .clone()
                .unwrap_or_else(|| DriverError::Failed(format!("injected failure on call {n}"))));
        }
        Ok(s)
    }

    fn boot(&self, s: &mut State) -> SimPower {
        let span = self.config.boot_max.saturating_sub(self.config.boot_min);
        let extra = if span.is_zero() { Duration::ZERO } else { span.mul_f64(s.rng.random::<f64>()) };
        let fails = self.config.failure_rate > 0.0 && s.rng.random::<f64>() < self.config.failure_rate;
        SimPower::Booting { ready_at: Instant::now() + self.config.boot_min + extra, fails }
    }
}

/// Checks `fence` against the highest seen for `key` and records it if higher, for an instance
/// that exists (nothing is recorded for an absent one, as a real driver has no directory).
fn admit(s: &mut State, key: &InstanceKey, fence: Fence) -> Result<(), DriverError> {
    if let Admission::Raise(f) = fence.admit(key, s.fences.get(key).copied())? {
        if s.instances.contains_key(key) {
            s.fences.insert(key.clone(), f);
        }
    }
    Ok(())
}

fn settle(i: &mut SimInstance, now: Instant) {
    if let SimPower::Booting { ready_at, fails } = i.power {
        if now >= ready_at {
            i.power = if fails { SimPower::Failed("simulated boot failure".into()) } else { SimPower::Running };
        }
    }
}

#[async_trait]
impl Driver for SimDriver {
    fn name(&self) -> &'static str {
        "sim"
    }

    async fn ensure(&self, spec: &InstanceSpec, fence: Fence) -> Result<(), DriverError> {
        self.lock().ensures += 1;
        let mut s = self.call(&spec.key, fence)?;
        let power = match s.instances.get(&spec.key).map(|i| &i.power) {
            Some(SimPower::Running | SimPower::Booting { .. }) => return Ok(()),
            _ => self.boot(&mut s),
        };
        let generation = s.instances.get(&spec.key).map_or(spec.model_generation, |i| i.generation);
        s.instances.insert(spec.key.clone(), SimInstance::new(power, generation));
        admit(&mut s, &spec.key, fence)
    }

    async fn set_power(&self, key: &InstanceKey, target: PowerTarget, fence: Fence) -> Result<(), DriverError> {
        let mut s = self.call(key, fence)?;
        let booted = self.boot(&mut s);
        let inst = s.instances.get_mut(key).ok_or_else(|| DriverError::NotFound(key.clone()))?;
        match target {
            PowerTarget::Running => {
                if !matches!(inst.power, SimPower::Running | SimPower::Booting { .. }) {
                    inst.power = booted;
                }
            }
            PowerTarget::Stopped | PowerTarget::Deallocated => inst.power = SimPower::Stopped,
        }
        Ok(())
    }

    async fn restart(&self, key: &InstanceKey, fence: Fence) -> Result<(), DriverError> {
        let mut s = self.call(key, fence)?;
        let booted = self.boot(&mut s);
        let inst = s.instances.get_mut(key).ok_or_else(|| DriverError::NotFound(key.clone()))?;
        inst.power = booted;
        Ok(())
    }

    async fn resize(&self, spec: &InstanceSpec, fence: Fence) -> Result<(), DriverError> {
        let mut s = self.call(&spec.key, fence)?;
        let booted = self.boot(&mut s);
        let inst = s.instances.get_mut(&spec.key).ok_or_else(|| DriverError::NotFound(spec.key.clone()))?;
        inst.power = booted;
        inst.generation = spec.model_generation;
        Ok(())
    }

    async fn reimage(&self, spec: &InstanceSpec, fence: Fence) -> Result<(), DriverError> {
        self.lock().ensures += 1;
        let mut s = self.call(&spec.key, fence)?;
        let power = self.boot(&mut s);
        s.instances.insert(spec.key.clone(), SimInstance::new(power, spec.model_generation));
        admit(&mut s, &spec.key, fence)
    }

    async fn destroy(&self, key: &InstanceKey, fence: Fence) -> Result<(), DriverError> {
        let mut s = self.call(key, fence)?;
        s.instances.remove(key);
        s.fences.remove(key);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<ObservedInstance>, DriverError> {
        let now = Instant::now();
        let mut s = self.lock();
        Ok(s.instances
            .iter_mut()
            .map(|(k, i)| {
                settle(i, now);
                let power = match &i.power {
                    SimPower::Booting { .. } => ObservedPower::Starting,
                    SimPower::Running => ObservedPower::Running,
                    SimPower::Stopped => ObservedPower::Stopped,
                    SimPower::Failed(m) => ObservedPower::Failed(m.clone()),
                };
                ObservedInstance { key: k.clone(), power }
            })
            .collect())
    }

    async fn stats(&self, key: &InstanceKey) -> Result<Option<InstanceStats>, DriverError> {
        let s = self.lock();
        Ok(s.instances.get(key).filter(|i| matches!(i.power, SimPower::Running)).map(|i| InstanceStats {
            cpu_seconds: 0.0,
            memory_bytes: 256 << 20,
            cpu_percent: Some(i.cpu_percent),
            net_rx_bytes: i.net.map(|n| n.0),
            net_tx_bytes: i.net.map(|n| n.1),
        }))
    }

    /// Simulates a script: it "exits" with the number after the last `exit ` in the command
    /// (0 without one) and prints the extension's name; runs are recorded for tests. Its
    /// downloads are fetched as a real host fetches them (their content is not kept).
    async fn run_script(&self, key: &InstanceKey, run: &ScriptRun, fence: Fence) -> Result<ScriptOutcome, DriverError> {
        {
            let mut s = self.lock();
            admit(&mut s, key, fence)?;
            match s.instances.get(key).map(|i| &i.power) {
                None => return Err(DriverError::NotFound(key.clone())),
                Some(SimPower::Running) => {}
                Some(_) => return Err(DriverError::Failed(format!("instance {key} is not running"))),
            }
        }
        run.fetch_files()
            .await
            .map_err(|m| DriverError::Failed(format!("instance {key}: extension {}: {m}", run.name)))?;
        let mut s = self.lock();
        s.scripts.entry(key.clone()).or_default().push((run.name.clone(), run.command.clone()));
        let code = run
            .command
            .rsplit_once("exit ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        Ok(ScriptOutcome {
            exit_code: Some(code),
            timed_out: false,
            stdout: format!("simulated run of {}\n", run.name).into_bytes(),
            stderr: Vec::new(),
        })
    }

    async fn console_log(&self, key: &InstanceKey, _max_bytes: usize) -> Result<Option<String>, DriverError> {
        let s = self.lock();
        Ok(s.instances.get(key).map(|i| format!("simulated console: instance {key}, {:?}\n", i.power)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_model::{image::ImageSource, sku::SkuSize, GroupName, InstanceId, ScaleSetName};

    fn spec(id: u64) -> InstanceSpec {
        let key = InstanceKey {
            group: GroupName::new("g").unwrap(),
            set: ScaleSetName::new("s").unwrap(),
            id: InstanceId(id),
        };
        let image = ImageSource::Directory { path: "/img".into() };
        InstanceSpec::new(key, &format!("s{id}"), image, SkuSize { vcpus: 1, memory_mib: 512 }, "127.128.0.1")
    }

    #[tokio::test]
    async fn idempotent_lifecycle_and_injected_failure() {
        let d = SimDriver::new(SimConfig { boot_min: Duration::ZERO, boot_max: Duration::ZERO, ..Default::default() });
        d.ensure(&spec(1), Fence::FIRST).await.unwrap();
        d.ensure(&spec(1), Fence::FIRST).await.unwrap();
        let l = d.list().await.unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].power, ObservedPower::Running);
        d.fail_call(0);
        assert!(d.destroy(&spec(1).key, Fence::FIRST).await.is_err());
        d.destroy(&spec(1).key, Fence::FIRST).await.unwrap();
        d.destroy(&spec(1).key, Fence::FIRST).await.unwrap();
        assert!(d.list().await.unwrap().is_empty());
        assert_eq!(
            d.set_power(&spec(1).key, PowerTarget::Stopped, Fence::FIRST).await,
            Err(DriverError::NotFound(spec(1).key))
        );
    }

    #[tokio::test]
    async fn same_seed_same_failures() {
        let cfg = SimConfig { boot_min: Duration::ZERO, boot_max: Duration::ZERO, failure_rate: 0.5, seed: 7 };
        let mut outcomes = vec![];
        for _ in 0..2 {
            let d = SimDriver::new(cfg.clone());
            for i in 0..20 {
                d.ensure(&spec(i), Fence::FIRST).await.unwrap();
            }
            let failed: Vec<u64> = d
                .list()
                .await
                .unwrap()
                .into_iter()
                .filter(|o| matches!(o.power, ObservedPower::Failed(_)))
                .map(|o| o.key.id.0)
                .collect();
            outcomes.push(failed);
        }
        assert_eq!(outcomes[0], outcomes[1]);
        assert!(!outcomes[0].is_empty() && outcomes[0].len() < 20);
    }

    fn f(term: u64, incarnation: u64) -> Fence {
        Fence::new(crate::Term(term), crate::Incarnation(incarnation))
    }

    #[tokio::test]
    async fn lower_fences_are_refused_equal_and_higher_pass() {
        let d = SimDriver::new(SimConfig { boot_min: Duration::ZERO, boot_max: Duration::ZERO, ..Default::default() });
        let k = spec(1).key;
        let run = ScriptRun {
            name: "e".into(),
            files: vec![],
            downloads: Default::default(),
            command: "true".into(),
            timeout: Duration::from_secs(1),
            identity: "i".into(),
        };
        d.ensure(&spec(1), f(2, 3)).await.unwrap();
        assert_eq!(d.fence_of(&k), Some(f(2, 3)));
        // A lower term, then a lower incarnation: refused on every acting call, naming both.
        for low in [f(1, 3), f(2, 2), f(9, 1)] {
            let refusals = [
                d.ensure(&spec(1), low).await.unwrap_err(),
                d.set_power(&k, PowerTarget::Stopped, low).await.unwrap_err(),
                d.restart(&k, low).await.unwrap_err(),
                d.resize(&spec(1), low).await.unwrap_err(),
                d.reimage(&spec(1), low).await.unwrap_err(),
                d.run_script(&k, &run, low).await.unwrap_err(),
                d.destroy(&k, low).await.unwrap_err(),
            ];
            for e in refusals {
                assert!(matches!(&e, DriverError::Fenced(x) if x.call == low && x.seen == f(2, 3)), "{e:?}");
                assert!(!e.retryable());
                assert!(
                    e.to_string().contains(&low.to_string()) && e.to_string().contains("term 2 incarnation 3"),
                    "{e}"
                );
            }
        }
        assert_eq!(d.list().await.unwrap()[0].power, ObservedPower::Running, "refused calls changed nothing");
        assert_eq!(d.generation(&k), Some(1));
        // Equal passes; higher passes and is remembered.
        d.restart(&k, f(2, 3)).await.unwrap();
        d.set_power(&k, PowerTarget::Stopped, f(3, 3)).await.unwrap();
        assert_eq!(d.fence_of(&k), Some(f(3, 3)));
        assert!(matches!(d.ensure(&spec(1), f(2, 3)).await, Err(DriverError::Fenced(_))));
        d.ensure(&spec(1), f(3, 4)).await.unwrap();
        assert_eq!(d.fence_of(&k), Some(f(3, 4)));
        // An orphan sweep checks the term only.
        assert!(matches!(d.destroy(&k, Fence::sweep(crate::Term(2))).await, Err(DriverError::Fenced(_))));
        d.destroy(&k, Fence::sweep(crate::Term(3))).await.unwrap();
        // The record goes with the instance; a call on an absent instance records nothing.
        assert_eq!(d.fence_of(&k), None);
        assert_eq!(d.restart(&k, f(7, 7)).await, Err(DriverError::NotFound(k.clone())));
        assert_eq!(d.fence_of(&k), None);
        d.ensure(&spec(1), Fence::FIRST).await.unwrap();
        assert_eq!(d.fence_of(&k), Some(Fence::FIRST));
    }

    #[tokio::test]
    async fn injected_errors_keep_their_kind() {
        let d = SimDriver::new(SimConfig::default());
        d.inject_error(Some(DriverError::ImageUnavailable { key: spec(1).key, reason: "gone".into() }));
        d.fail_call(0);
        let e = d.ensure(&spec(1), Fence::FIRST).await.unwrap_err();
        assert!(!e.retryable(), "{e:?}");
        d.inject_error(None);
        d.fail_call(0);
        assert!(d.ensure(&spec(1), Fence::FIRST).await.unwrap_err().retryable());
    }
}
