//! The load-balancer controller: the control plane of herd's L4 load balancer.
//!
//! Why: pool membership must be computed, never hand-kept. Each pass reads the load balancers,
//! public IPs, scale sets and instance records, keeps one prober per load-balancer probe aimed
//! at the Running instances that probe covers, and derives for every rule the backends that
//! are Running ∧ probe-healthy ∧ not draining (draining ones stay listed as draining so their
//! open connections finish). The result is a full snapshot pushed to the data plane
//! (`herd-lb`); nothing else ever edits a pool. [`desired`] is pure and tested on its own.
//!
//! A probe target is an instance *boot* (`group/set/id#<time it became Running>`), so an
//! instance that restarts or is re-imaged is Unknown again, and out of rotation, until its probe
//! passes again.

#![forbid(unsafe_code)]

use herd_lb::{Backend, Distribution, Health, LbConfig, NatConfig, ProbeRunner, RuleConfig};
use herd_model::{
    health::{HealthBoard, InstanceHealth},
    instance::{InstanceGoal, InstanceRecord, InstanceState},
    network::{LoadBalancer, LoadDistribution, ProbeProtocol, PublicIpAddress},
    scale_set::StoredScaleSet,
};
use herd_store::{Kind, Store, StoreExt};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// What the controller wants: the data-plane snapshot and the probe targets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    pub config: LbConfig,
    /// Probe id → (definition, targets).
    pub probes: BTreeMap<String, (herd_lb::Probe, Vec<(String, IpAddr)>)>,
    /// Instance key → (probe name, target id) used for its health.
    pub instance_targets: BTreeMap<String, (String, String)>,
    /// Problems worth telling (a rule without a public IP, a full NAT range...).
    pub notes: Vec<String>,
}

/// An instance record with the set it belongs to.
pub struct Member<'a> {
    pub set: &'a StoredScaleSet,
    pub record: &'a InstanceRecord,
}

fn target_id(set: &StoredScaleSet, r: &InstanceRecord) -> String {
    format!("{}/{}/{}#{}", set.group, set.name, r.instance_id, r.state_since.timestamp_millis())
}

fn instance_key(set: &StoredScaleSet, r: &InstanceRecord) -> String {
    format!("{}/{}/{}", set.group, set.name, r.instance_id)
}

fn serving(r: &InstanceRecord) -> bool {
    r.state == InstanceState::Running && r.goal != InstanceGoal::Deleted || r.draining_since.is_some()
}

fn joins(set: &StoredScaleSet, pool_id: &str) -> bool {
    set.model
        .virtual_machine_profile
        .network_profile
        .as_ref()
        .and_then(|n| n.primary())
        .is_some_and(|ip| ip.load_balancer_backend_address_pools.iter().any(|p| p.id.eq_ignore_ascii_case(pool_id)))
}

fn joins_nat(set: &StoredScaleSet, nat_id: &str) -> bool {
    set.model
        .virtual_machine_profile
        .network_profile
        .as_ref()
        .and_then(|n| n.primary())
        .is_some_and(|ip| ip.load_balancer_inbound_nat_pools.iter().any(|p| p.id.eq_ignore_ascii_case(nat_id)))
}

fn to_probe(p: &herd_model::network::Probe) -> herd_lb::Probe {
    let port = p.port as u16;
    let mut probe = match p.protocol {
        ProbeProtocol::Tcp => herd_lb::Probe::tcp(port),
        _ => herd_lb::Probe::http(port, p.request_path.clone().unwrap_or_else(|| "/".into())),
    };
    probe.interval = Duration::from_secs(p.interval_in_seconds.max(1) as u64);
    probe.threshold = p.probe_threshold.max(1) as u32;
    probe.timeout = probe.interval.min(Duration::from_secs(5));
    probe
}

/// Pure: the data-plane snapshot and probe targets for the given state. `health` maps a probe id
/// and target id to the prober's verdict.
pub fn desired(
    lbs: &[LoadBalancer],
    pips: &[PublicIpAddress],
    members: &[Member<'_>],
    health: &dyn Fn(&str, &str) -> Health,
    drain_timeout: Duration,
) -> Desired {
    let mut d = Desired::default();
    for lb in lbs {
        let frontend_ip = |fe_id: &str| -> Option<IpAddr> {
            let fe = lb.frontend_ip_configurations.iter().find(|f| f.id.eq_ignore_ascii_case(fe_id))?;
            let pip = fe.public_ip_address.as_ref()?;
            pips.iter().find(|p| p.id.eq_ignore_ascii_case(&pip.id))?.ip_address.as_ref()?.parse().ok()
        };
        for probe in &lb.probes {
            let mut targets = Vec::new();
            for rule in lb
                .load_balancing_rules
                .iter()
                .filter(|r| r.probe.as_ref().is_some_and(|p| p.id.eq_ignore_ascii_case(&probe.id)))
            {
                for m in members.iter().filter(|m| joins(m.set, &rule.backend_address_pool.id)) {
                    if m.record.state != InstanceState::Running {
                        continue;
                    }
                    let Ok(ip) = m.record.reach_address.parse::<IpAddr>() else { continue };
                    let t = target_id(m.set, m.record);
                    if !targets.iter().any(|(x, _)| *x == t) {
                        d.instance_targets.insert(instance_key(m.set, m.record), (probe.name.clone(), t.clone()));
                        targets.push((t, ip));
                    }
                }
            }
            d.probes.insert(probe.id.to_ascii_lowercase(), (to_probe(probe), targets));
        }
        for rule in &lb.load_balancing_rules {
            let Some(ip) = frontend_ip(&rule.frontend_ip_configuration.id) else {
                d.notes.push(format!(
                    "rule '{}' of load balancer '{}' has no public IP address; it serves nothing",
                    rule.name, lb.name
                ));
                continue;
            };
            let mut backends = Vec::new();
            for m in members.iter().filter(|m| joins(m.set, &rule.backend_address_pool.id) && serving(m.record)) {
                let Ok(addr) = m.record.reach_address.parse::<IpAddr>() else { continue };
                let draining = m.record.draining_since.is_some() || m.record.state != InstanceState::Running;
                let healthy = match &rule.probe {
                    None => true,
                    Some(p) => health(&p.id.to_ascii_lowercase(), &target_id(m.set, m.record)) == Health::Healthy,
                };
                // Unhealthy members drain (open connections get the drain timeout); instances
                // not yet proven healthy since they booted stay out.
                let unhealthy = match &rule.probe {
                    None => false,
                    Some(p) => health(&p.id.to_ascii_lowercase(), &target_id(m.set, m.record)) == Health::Unhealthy,
                };
                if draining || unhealthy {
                    backends.push(Backend::new(instance_key(m.set, m.record), addr).draining());
                } else if healthy {
                    backends.push(Backend::new(instance_key(m.set, m.record), addr));
                }
            }
            let mut rc = RuleConfig::new(
                format!("{}/{}", lb.name, rule.name),
                SocketAddr::new(ip, rule.frontend_port as u16),
                rule.backend_port as u16,
                backends,
            );
            rc.distribution = match rule.load_distribution {
                LoadDistribution::Default => Distribution::Default,
                LoadDistribution::SourceIp => Distribution::SourceIp,
                LoadDistribution::SourceIpProtocol => Distribution::SourceIpProtocol,
            };
            rc.idle_timeout = Duration::from_secs(rule.idle_timeout_in_minutes.max(1) as u64 * 60);
            rc.drain_timeout = Some(drain_timeout);
            d.config.rules.push(rc);
        }
        for nat in &lb.inbound_nat_pools {
            let Some(ip) = frontend_ip(&nat.frontend_ip_configuration.id) else { continue };
            let mut users: Vec<&Member<'_>> = members
                .iter()
                .filter(|m| joins_nat(m.set, &nat.id) && m.record.goal != InstanceGoal::Deleted)
                .collect();
            users.sort_by_key(|m| (m.set.name.clone(), m.record.instance_id));
            let range = (nat.frontend_port_range_end - nat.frontend_port_range_start + 1) as usize;
            for (i, m) in users.iter().enumerate() {
                if i >= range {
                    d.notes.push(format!(
                        "inbound NAT pool '{}' has no frontend port left for instance {}",
                        nat.name,
                        instance_key(m.set, m.record)
                    ));
                    break;
                }
                let Ok(addr) = m.record.reach_address.parse::<IpAddr>() else { continue };
                let port = nat.frontend_port_range_start as u16 + i as u16;
                d.config.nat.push(NatConfig::new(
                    format!("{}/{}/{}", lb.name, nat.name, instance_key(m.set, m.record)),
                    SocketAddr::new(ip, port),
                    SocketAddr::new(addr, nat.backend_port as u16),
                ));
            }
        }
    }
    d
}

/// Runs the controller: probers, membership, and the data plane.
pub struct LbController {
    store: Arc<dyn Store>,
    dataplane: herd_lb::LoadBalancer,
    runners: Mutex<BTreeMap<String, (herd_lb::Probe, ProbeRunner)>>,
    health: Arc<HealthBoard>,
    wake: Arc<Notify>,
    last: Mutex<Option<LbConfig>>,
    drain_timeout: Duration,
    interval: Duration,
}

impl LbController {
    pub fn new(store: Arc<dyn Store>, health: Arc<HealthBoard>, drain_timeout: Duration) -> Self {
        Self {
            store,
            dataplane: herd_lb::LoadBalancer::new(),
            runners: Mutex::new(BTreeMap::new()),
            health,
            wake: Arc::new(Notify::new()),
            last: Mutex::new(None),
            drain_timeout,
            interval: Duration::from_millis(50),
        }
    }

    /// Wakes the controller for an immediate pass.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Prometheus text for every rule and backend.
    pub fn metrics(&self) -> String {
        self.dataplane.metrics()
    }

    /// The frontend addresses the data plane is listening on.
    pub fn frontends(&self) -> Vec<std::net::SocketAddr> {
        self.dataplane.frontends()
    }

    /// The data plane's counters.
    pub fn stats(&self) -> herd_lb::LbStats {
        self.dataplane.stats()
    }

    /// One pass: read, compute, apply.
    pub async fn pass(&self) -> Result<(), String> {
        let e = |x: herd_store::StoreError| x.to_string();
        let lbs: Vec<LoadBalancer> =
            self.store.list_as(Kind::LoadBalancer, "").map_err(e)?.into_iter().map(|o| o.value).collect();
        let pips: Vec<PublicIpAddress> =
            self.store.list_as(Kind::PublicIp, "").map_err(e)?.into_iter().map(|o| o.value).collect();
        let sets: Vec<StoredScaleSet> =
            self.store.list_as(Kind::ScaleSet, "").map_err(e)?.into_iter().map(|o| o.value).collect();
        let records = self.store.list_as::<InstanceRecord>(Kind::Instance, "").map_err(e)?;
        let by_key: BTreeMap<String, &StoredScaleSet> =
            sets.iter().map(|s| (format!("{}/{}", s.group, s.name), s)).collect();
        let mut members = Vec::new();
        for o in &records {
            // Records live under `group/set/<padded id>`.
            let set_key = o.key.rsplit_once('/').map_or("", |(k, _)| k);
            if let Some(set) = by_key.get(set_key) {
                members.push(Member { set, record: &o.value });
            }
        }
        let statuses: BTreeMap<String, BTreeMap<String, herd_lb::TargetStatus>> = {
            let runners = self.runners.lock().unwrap_or_else(|p| p.into_inner());
            runners.iter().map(|(k, (_, r))| (k.clone(), r.statuses())).collect()
        };
        let health = |probe: &str, target: &str| {
            statuses.get(probe).and_then(|m| m.get(target)).map_or(Health::Unknown, |s| s.health)
        };
        let want = desired(&lbs, &pips, &members, &health, self.drain_timeout);
        {
            let mut runners = self.runners.lock().unwrap_or_else(|p| p.into_inner());
            runners.retain(|k, (def, _)| want.probes.get(k).is_some_and(|(d, _)| d == def));
            for (k, (def, targets)) in &want.probes {
                if !runners.contains_key(k) {
                    match ProbeRunner::new(def.clone()) {
                        Ok(r) => {
                            runners.insert(k.clone(), (def.clone(), r));
                        }
                        Err(err) => {
                            tracing::warn!(probe = %k, error = %err, "probe cannot run");
                            continue;
                        }
                    }
                }
                if let Some((_, r)) = runners.get(k) {
                    r.set_targets(targets.clone());
                }
            }
        }
        let board: BTreeMap<String, InstanceHealth> = want
            .instance_targets
            .iter()
            .map(|(inst, (probe, target))| {
                let h = match statuses.values().find_map(|m| m.get(target)).map(|s| s.health) {
                    Some(Health::Healthy) => "Healthy",
                    Some(Health::Unhealthy) => "Unhealthy",
                    _ => "Unknown",
                };
                (inst.clone(), InstanceHealth { probe: probe.clone(), health: h.to_string() })
            })
            .collect();
        self.health.replace(board);
        let changed = self.last.lock().unwrap_or_else(|p| p.into_inner()).as_ref() != Some(&want.config);
        if changed {
            match self.dataplane.apply(want.config.clone()).await {
                Ok(()) => *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(want.config),
                Err(err) => {
                    tracing::warn!(error = %err, "load-balancer snapshot not fully applied");
                    return Err(err.to_string());
                }
            }
        }
        Ok(())
    }

    /// Runs passes until `shutdown` flips to true.
    pub async fn run(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut last_err = String::new();
        loop {
            if let Err(e) = self.pass().await {
                if e != last_err {
                    tracing::warn!(error = %e, "load-balancer controller pass failed");
                    last_err = e;
                }
            } else {
                last_err.clear();
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }
}
