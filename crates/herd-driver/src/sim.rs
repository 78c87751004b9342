//! The simulated driver: in-memory instances with a configurable boot latency and failure rate,
//! driven by a seeded random generator so a run can be repeated exactly.
//!
//! It is a first-class driver: integration tests run the real server against it, benchmarks use
//! it at 10k+ scale, and fault injection ([`SimDriver::fail_call`]) makes any numbered call fail
//! so every executor step can be broken and recovery checked.

use crate::{
    Driver, DriverError, InstanceSpec, InstanceStats, ObservedInstance, ObservedPower, PowerTarget, ScriptOutcome,
    ScriptRun,
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

    fn call(&self) -> Result<std::sync::MutexGuard<'_, State>, DriverError> {
        let mut s = self.lock();
        let n = s.calls;
        s.calls += 1;
        if s.fail_always || s.fail_calls.remove(&n) {
            return Err(DriverError::Failed(format!("injected failure on call {n}")));
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

    async fn ensure(&self, spec: &InstanceSpec) -> Result<(), DriverError> {
        self.lock().ensures += 1;
        let mut s = self.call()?;
        let power = match s.instances.get(&spec.key).map(|i| &i.power) {
            Some(SimPower::Running | SimPower::Booting { .. }) => return Ok(()),
            _ => self.boot(&mut s),
        };
        let generation = s.instances.get(&spec.key).map_or(spec.model_generation, |i| i.generation);
        s.instances.insert(spec.key.clone(), SimInstance::new(power, generation));
        Ok(())
    }

    async fn set_power(&self, key: &InstanceKey, target: PowerTarget) -> Result<(), DriverError> {
        let mut s = self.call()?;
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

    async fn restart(&self, key: &InstanceKey) -> Result<(), DriverError> {
        let mut s = self.call()?;
        let booted = self.boot(&mut s);
        let inst = s.instances.get_mut(key).ok_or_else(|| DriverError::NotFound(key.clone()))?;
        inst.power = booted;
        Ok(())
    }

    async fn resize(&self, spec: &InstanceSpec) -> Result<(), DriverError> {
        let mut s = self.call()?;
        let booted = self.boot(&mut s);
        let inst = s.instances.get_mut(&spec.key).ok_or_else(|| DriverError::NotFound(spec.key.clone()))?;
        inst.power = booted;
        inst.generation = spec.model_generation;
        Ok(())
    }

    async fn reimage(&self, spec: &InstanceSpec) -> Result<(), DriverError> {
        self.lock().ensures += 1;
        let mut s = self.call()?;
        let power = self.boot(&mut s);
        s.instances.insert(spec.key.clone(), SimInstance::new(power, spec.model_generation));
        Ok(())
    }

    async fn destroy(&self, key: &InstanceKey) -> Result<(), DriverError> {
        let mut s = self.call()?;
        s.instances.remove(key);
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
    /// (0 without one) and prints the extension's name; runs are recorded for tests.
    async fn run_script(&self, key: &InstanceKey, run: &ScriptRun) -> Result<ScriptOutcome, DriverError> {
        let mut s = self.lock();
        match s.instances.get(key).map(|i| &i.power) {
            None => return Err(DriverError::NotFound(key.clone())),
            Some(SimPower::Running) => {}
            Some(_) => return Err(DriverError::Failed(format!("instance {key} is not running"))),
        }
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
        InstanceSpec {
            key: InstanceKey {
                group: GroupName::new("g").unwrap(),
                set: ScaleSetName::new("s").unwrap(),
                id: InstanceId(id),
            },
            computer_name: format!("s{id}"),
            image: ImageSource::Directory { path: "/img".into() },
            size: SkuSize { vcpus: 1, memory_mib: 512 },
            reach_address: "127.128.0.1".into(),
            model_generation: 1,
            admin_username: "u".into(),
            custom_data: None,
            metadata: Default::default(),
            network: None,
            guest: Default::default(),
            metadata_endpoint: None,
        }
    }

    #[tokio::test]
    async fn idempotent_lifecycle_and_injected_failure() {
        let d = SimDriver::new(SimConfig { boot_min: Duration::ZERO, boot_max: Duration::ZERO, ..Default::default() });
        d.ensure(&spec(1)).await.unwrap();
        d.ensure(&spec(1)).await.unwrap();
        let l = d.list().await.unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].power, ObservedPower::Running);
        d.fail_call(0);
        assert!(d.destroy(&spec(1).key).await.is_err());
        d.destroy(&spec(1).key).await.unwrap();
        d.destroy(&spec(1).key).await.unwrap();
        assert!(d.list().await.unwrap().is_empty());
        assert_eq!(d.set_power(&spec(1).key, PowerTarget::Stopped).await, Err(DriverError::NotFound(spec(1).key)));
    }

    #[tokio::test]
    async fn same_seed_same_failures() {
        let cfg = SimConfig { boot_min: Duration::ZERO, boot_max: Duration::ZERO, failure_rate: 0.5, seed: 7 };
        let mut outcomes = vec![];
        for _ in 0..2 {
            let d = SimDriver::new(cfg.clone());
            for i in 0..20 {
                d.ensure(&spec(i)).await.unwrap();
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
}
