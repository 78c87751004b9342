//! The load-balancer controller: the control plane of herd's L4 load balancer.
//!
//! Why: pool membership must be computed, never hand-kept. Each pass reads the load balancers,
//! public IPs, scale sets and instance records, keeps one prober per load-balancer probe aimed
//! at the Running instances that probe covers, and derives for every rule the backends that
//! are Running ∧ probe-healthy ∧ not draining (draining ones stay listed as draining so their
//! open connections finish). The result is a full snapshot pushed to the data plane
//! (`herd-lb`); nothing else ever edits a pool. [`desired`] is pure and tested on its own.
//!
//! Drains: after each pass the controller reports, for every draining instance that is a
//! backend of a running rule, the `draining_since` its drain was applied for and the
//! connections still open to it ([`herd_model::health::DrainBoard`]); the reconciler ends the
//! drain when that count is zero instead of waiting for the drain timeout. The data plane
//! wakes the controller when a draining backend's last connection closes, and the controller
//! wakes the reconciler when a drain is over.
//!
//! A probe target is an instance *boot* (`group/set/id#<time it became Running>`), so an
//! instance that restarts or is re-imaged is Unknown again, and out of rotation, until its probe
//! passes again.

#![forbid(unsafe_code)]

use herd_lb::{Backend, Distribution, Health, LbConfig, NatConfig, ProbeRunner, RuleConfig};
use herd_model::{
    health::{DrainBoard, DrainObservation, HealthBoard, HealthState, InstanceHealth},
    instance::{InstanceGoal, InstanceRecord, InstanceState},
    network::{LoadBalancer, LoadDistribution, ProbeProtocol, PublicIpAddress},
    scale_set::StoredScaleSet,
    InstanceKey,
};
use herd_state::keys::{HealthKey, InstanceRecordKey, SetKey};
use herd_state::{Records, State};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Server-wide settings applied to every rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// How long a draining backend keeps its open connections.
    pub drain_timeout: Duration,
    /// Connections a rule accepts at once; beyond it new ones are refused (none: unlimited).
    pub max_connections_per_rule: Option<usize>,
}

/// What the controller wants: the data-plane snapshot and the probe targets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    pub config: LbConfig,
    /// Probe id → (definition, targets).
    pub probes: BTreeMap<String, (herd_lb::Probe, Vec<(String, herd_lb::ProbeTarget)>)>,
    /// Instance key → (probe name, target id) used for its health.
    pub instance_targets: BTreeMap<String, (String, String)>,
    /// Problems worth telling (a rule without a public IP, a full NAT range...).
    pub notes: Vec<String>,
}

/// An instance record with the set it belongs to.
pub struct Member<'a> {
    pub set: &'a StoredScaleSet,
    pub record: &'a InstanceRecord,
    /// Where its probes come from: with bridged networking, its subnet's reserved `.2` (see
    /// [`herd_state::security::probe_source`]); None when it is reached on the host.
    pub probe_source: Option<IpAddr>,
    /// How client connections reach it: with bridged networking, from its subnet's reserved
    /// `.3`, admitted by its NIC's inbound NSG rules (see [`herd_lb::Route`]).
    pub route: herd_lb::Route,
}

fn target_id(set: &StoredScaleSet, r: &InstanceRecord) -> String {
    format!("{}#{}", HealthKey::of(set, r.instance_id), r.state_since.timestamp_millis())
}

fn instance_key(set: &StoredScaleSet, r: &InstanceRecord) -> String {
    HealthKey::of(set, r.instance_id).to_string()
}

fn serving(r: &InstanceRecord) -> bool {
    r.state == InstanceState::Running && r.goal != InstanceGoal::Deleted || r.draining_since.is_some()
}

/// The set's one IP configuration, which names the pools it joins.
fn primary_ip(set: &StoredScaleSet) -> Option<&herd_model::scale_set::IpConfiguration> {
    set.model.virtual_machine_profile.network_profile.as_ref().and_then(|n| n.primary())
}

fn joins(set: &StoredScaleSet, pool_id: &str) -> bool {
    primary_ip(set)
        .is_some_and(|ip| ip.load_balancer_backend_address_pools.iter().any(|p| p.id.eq_ignore_ascii_case(pool_id)))
}

fn joins_nat(set: &StoredScaleSet, nat_id: &str) -> bool {
    primary_ip(set)
        .is_some_and(|ip| ip.load_balancer_inbound_nat_pools.iter().any(|p| p.id.eq_ignore_ascii_case(nat_id)))
}

fn to_probe(p: &herd_model::network::Probe) -> herd_lb::Probe {
    let port = p.port as u16;
    let path = p.request_path.clone().unwrap_or_else(|| "/".into());
    let mut probe = match p.protocol {
        ProbeProtocol::Tcp => herd_lb::Probe::tcp(port),
        ProbeProtocol::Http => herd_lb::Probe::http(port, path),
        ProbeProtocol::Https => {
            herd_lb::Probe { protocol: herd_lb::ProbeProtocol::Https { path }, ..herd_lb::Probe::tcp(port) }
        }
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
    limits: &Limits,
) -> Desired {
    let drain_timeout = limits.drain_timeout;
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
                        targets.push((t, herd_lb::ProbeTarget { addr: ip, source: m.probe_source }));
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
                // An instance whose host is silent past host_grace (issue 21) leaves rotation too.
                let draining = m.record.draining_since.is_some()
                    || m.record.state != InstanceState::Running
                    || m.record.host_failure.unreachable_since.is_some();
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
                let backend = Backend::new(instance_key(m.set, m.record), addr).with_route(m.route.clone());
                if draining || unhealthy {
                    backends.push(backend.draining());
                } else if healthy {
                    backends.push(backend);
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
            rc.max_connections = limits.max_connections_per_rule;
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
                let mut nc = NatConfig::new(
                    format!("{}/{}/{}", lb.name, nat.name, instance_key(m.set, m.record)),
                    SocketAddr::new(ip, port),
                    SocketAddr::new(addr, nat.backend_port as u16),
                );
                nc.route = m.route.clone();
                d.config.nat.push(nc);
            }
        }
    }
    d
}

/// One instance's load-balancer counters, summed over the load-balancing rules it is a backend
/// of (inbound NAT rules are not load balancing and are left out).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberCounters {
    /// Connections the data plane made to the instance since it became a backend (a counter:
    /// it restarts from zero when the instance leaves every pool and comes back).
    pub connections_total: u64,
    /// Connections open to it now.
    pub active_connections: u64,
    /// In rotation (Active, receiving new connections) in at least one rule; false while only
    /// draining.
    pub in_rotation: bool,
}

/// Pure: per-instance counters from the data plane's stats. Backends are keyed by instance
/// (`group/set/id`, see [`desired`]); ids that are not an instance key are skipped.
pub fn member_counters(stats: &herd_lb::LbStats) -> BTreeMap<InstanceKey, MemberCounters> {
    let mut out: BTreeMap<InstanceKey, MemberCounters> = BTreeMap::new();
    for rule in stats.rules.iter().filter(|r| r.kind == herd_lb::RuleKind::Rule) {
        for b in &rule.backends {
            let Some(key) = InstanceKey::parse_path(&b.id) else { continue };
            let c = out.entry(key).or_default();
            c.connections_total = c.connections_total.saturating_add(b.connections_total);
            c.active_connections = c.active_connections.saturating_add(b.active_connections);
            c.in_rotation |= b.status == herd_lb::BackendStatus::Active;
        }
    }
    out
}

/// Pure: the drain of every draining member that the data plane has out of rotation in every
/// load-balancing rule it is a backend of (by `group/set/id`), with its open connections.
/// Members that are a backend of no running rule are left out: nothing reports on their drain.
pub fn drains(
    members: &[Member<'_>],
    counters: &BTreeMap<InstanceKey, MemberCounters>,
) -> BTreeMap<String, DrainObservation> {
    members
        .iter()
        .filter_map(|m| {
            let since = m.record.draining_since?;
            let key = InstanceKey { group: m.set.group.clone(), set: m.set.name.clone(), id: m.record.instance_id };
            let c = counters.get(&key).filter(|c| !c.in_rotation)?;
            Some((
                instance_key(m.set, m.record),
                DrainObservation { draining_since: since, open_connections: c.active_connections },
            ))
        })
        .collect()
}

/// Wakes the controller whenever one of `runner`'s targets changes health (or targets come and
/// go), so membership follows probes without a timer. The task ends with the runner.
fn wake_on_health_change(runner: &ProbeRunner, wake: Arc<Notify>) {
    let mut changes = runner.subscribe();
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            wake.notify_one();
        }
    });
}

/// Runs the controller: probers, membership, and the data plane.
pub struct LbController {
    state: State,
    dataplane: herd_lb::LoadBalancer,
    runners: Mutex<BTreeMap<String, (herd_lb::Probe, ProbeRunner)>>,
    health: Arc<HealthBoard>,
    /// Where drains are reported, and whom to wake when one is over (the reconciler).
    drains: Option<(Arc<DrainBoard>, Arc<Notify>)>,
    wake: Arc<Notify>,
    last: Mutex<Option<LbConfig>>,
    limits: Limits,
    interval: Duration,
}

impl LbController {
    /// `state` is the store (an `Arc<dyn Store>` converts), read through typed operations.
    pub fn new(state: impl Into<State>, health: Arc<HealthBoard>, limits: Limits) -> Self {
        let dataplane = herd_lb::LoadBalancer::new();
        // The data plane signals when a draining backend's last connection closes: a pass then
        // reports that drain as over.
        let wake = dataplane.drained();
        Self {
            state: state.into(),
            dataplane,
            runners: Mutex::new(BTreeMap::new()),
            health,
            drains: None,
            wake,
            last: Mutex::new(None),
            limits,
            interval: Duration::from_millis(50),
        }
    }

    /// Reports drains to `board` after each pass and wakes `reconciler` when one is over (see
    /// the crate docs).
    pub fn with_drains(mut self, board: Arc<DrainBoard>, reconciler: Arc<Notify>) -> Self {
        self.drains = Some((board, reconciler));
        self
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

    /// The data plane's counters per instance (what the autoscaler's load-balancer metrics
    /// read; no driver is involved).
    pub fn member_counters(&self) -> BTreeMap<InstanceKey, MemberCounters> {
        member_counters(&self.dataplane.stats())
    }

    /// One pass: read (on the blocking pool), compute, apply.
    pub async fn pass(&self) -> Result<(), String> {
        // With no load balancer nothing can be a member, so the instances (the costly read:
        // every record decoded) are not read at all.
        let scan = |s: &dyn herd_state::Store| {
            let lbs = s.load_balancers()?;
            let records = if lbs.is_empty() { Vec::new() } else { s.instances()? };
            let lookup = if lbs.is_empty() { None } else { Some(herd_state::security::Lookup::load(s)?) };
            Ok((lbs, s.public_ips()?, s.scale_sets()?, records, lookup))
        };
        let (lbs, pips, sets, records, lookup) = self.state.run(scan).await.map_err(|x| x.to_string())?;
        // Each subnet's probe source and load-balancer source, by subnet id.
        let sources: BTreeMap<String, (IpAddr, IpAddr)> = lookup
            .iter()
            .flat_map(|l| l.vnets().iter().flat_map(|v| v.subnets.iter()))
            .filter_map(|sub| {
                let probe = herd_state::security::probe_source(sub)?;
                let lb = herd_state::security::lb_source(sub)?;
                Some((sub.id.to_ascii_lowercase(), (IpAddr::V4(probe), IpAddr::V4(lb))))
            })
            .collect();
        let lbs: Vec<LoadBalancer> = lbs.into_iter().map(|o| o.value).collect();
        let pips: Vec<PublicIpAddress> = pips.into_iter().map(|o| o.value).collect();
        let sets: Vec<StoredScaleSet> = sets.into_iter().map(|o| o.value).collect();
        let by_key: BTreeMap<String, &StoredScaleSet> = sets.iter().map(|s| (SetKey::of(s).to_string(), s)).collect();
        // Each set's inbound NSG stages, computed once per set (they do not depend on the NIC).
        let admission: BTreeMap<String, Arc<herd_model::nsg::Stages>> = match &lookup {
            Some(l) => by_key.iter().filter_map(|(k, s)| Some((k.clone(), Arc::new(l.inbound_of(s)?)))).collect(),
            None => BTreeMap::new(),
        };
        let mut members = Vec::new();
        for o in &records {
            // Records live under `group/set/<padded id>`.
            let Ok(key) = o.key.parse::<InstanceRecordKey>() else { continue };
            if let Some(set) = by_key.get(&key.set().to_string()) {
                // Bridged instances are reached on their private IP; their probes come from the
                // subnet's probe source.
                let bridged = o.value.private_ip.as_deref() == Some(o.value.reach_address.as_str());
                let subnet = primary_ip(set).and_then(|ip| ip.subnet.as_ref()).map(|s| s.id.to_ascii_lowercase());
                let (probe_source, lb_source) =
                    subnet.filter(|_| bridged).and_then(|s| sources.get(&s).copied()).unzip();
                let route = match lb_source {
                    Some(source) => herd_lb::Route {
                        source: Some(source),
                        admission: admission.get(&key.set().to_string()).cloned(),
                    },
                    None => herd_lb::Route::default(),
                };
                members.push(Member { set, record: &o.value, probe_source, route });
            }
        }
        let statuses: BTreeMap<String, BTreeMap<String, herd_lb::TargetStatus>> = {
            let runners = self.runners.lock().unwrap_or_else(|p| p.into_inner());
            runners.iter().map(|(k, (_, r))| (k.clone(), r.statuses())).collect()
        };
        let health = |probe: &str, target: &str| {
            statuses.get(probe).and_then(|m| m.get(target)).map_or(Health::Unknown, |s| s.health)
        };
        let want = desired(&lbs, &pips, &members, &health, &self.limits);
        {
            let mut runners = self.runners.lock().unwrap_or_else(|p| p.into_inner());
            runners.retain(|k, (def, _)| want.probes.get(k).is_some_and(|(d, _)| d == def));
            for (k, (def, targets)) in &want.probes {
                if !runners.contains_key(k) {
                    match ProbeRunner::new(def.clone()) {
                        Ok(r) => {
                            wake_on_health_change(&r, self.wake.clone());
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
                    Some(Health::Healthy) => HealthState::Healthy,
                    Some(Health::Unhealthy) => HealthState::Unhealthy,
                    Some(Health::Unknown) | None => HealthState::Unknown,
                };
                let boot = target.rsplit_once('#').and_then(|(_, b)| b.parse().ok()).unwrap_or(0);
                (inst.clone(), InstanceHealth { probe: probe.clone(), health: h, boot })
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
        // The data plane now runs what these records say (applied above, or unchanged since the
        // last apply that succeeded), so its counters are about their drains.
        if let Some((board, reconciler)) = &self.drains {
            let over = board.replace(drains(&members, &self.member_counters()));
            if !over.is_empty() {
                tracing::debug!(instances = ?over, "drains over: no connection left");
                reconciler.notify_one();
            }
        }
        Ok(())
    }
}

mod controller;

#[cfg(test)]
mod tests {
    use super::*;
    use herd_model::InstanceId;
    use herd_reconciler::testkit::{model, record, stored_set};
    use serde_json::json;

    const LB: &str = "/resourceGroups/rg/providers/Microsoft.Network/loadBalancers/lb";

    fn set() -> StoredScaleSet {
        stored_set(
            "web",
            1,
            model(
                3,
                json!({"virtualMachineProfile": {
                    "networkProfile": {"networkInterfaceConfigurations": [{"name": "nic", "ipConfigurations": [{"name": "ip",
                        "loadBalancerBackendAddressPools": [{"id": format!("{LB}/backendAddressPools/be")}],
                        "loadBalancerInboundNatPools": [{"id": format!("{LB}/inboundNatPools/ssh")}]}]}]}
                }}),
            ),
        )
    }

    fn rec(id: u64, state: InstanceState) -> InstanceRecord {
        InstanceRecord { reach_address: format!("127.128.0.{}", id + 1), ..record(id, 1, state) }
    }

    /// A store that counts its calls, holding [`set`] with instance 0 running.
    fn store_with_one_running() -> Arc<herd_state::call_threads::CallThreads<impl herd_state::Store>> {
        use herd_state::{call_threads::CallThreads, intents::Writes, Expected};
        let store = Arc::new(CallThreads::in_memory().unwrap());
        let key = SetKey::of(&set());
        let mut w = Writes::new();
        w.put_scale_set(&key, &set(), Expected::Absent).unwrap();
        w.put_instance(&key.instance(InstanceId(0)), &rec(0, InstanceState::Running), Expected::Absent).unwrap();
        w.commit(&*store).unwrap();
        store
    }

    fn lb(with_probe: bool) -> LoadBalancer {
        let mut l: LoadBalancer = serde_json::from_value(json!({
            "frontendIPConfigurations": [{"name": "fe", "publicIPAddress": {"id": "/resourceGroups/rg/providers/Microsoft.Network/publicIPAddresses/ip"}}],
            "backendAddressPools": [{"name": "be"}],
            "probes": [{"name": "p", "protocol": "Tcp", "port": 80, "intervalInSeconds": 1, "probeThreshold": 1}],
            "loadBalancingRules": [{"name": "r", "frontendPort": 80, "backendPort": 8080,
                "frontendIPConfiguration": {"id": format!("{LB}/frontendIPConfigurations/fe")},
                "backendAddressPool": {"id": format!("{LB}/backendAddressPools/be")}}],
            "inboundNatPools": [{"name": "ssh", "frontendIPConfiguration": {"id": format!("{LB}/frontendIPConfigurations/fe")},
                "frontendPortRangeStart": 50000, "frontendPortRangeEnd": 50001, "backendPort": 22}]
        }))
        .unwrap();
        if with_probe {
            l.load_balancing_rules[0].probe = Some(herd_model::network::SubResource { id: format!("{LB}/probes/p") });
        }
        l.normalize("rg", "lb", &["/resourceGroups/rg/providers/Microsoft.Network/publicIPAddresses/ip".into()])
            .unwrap();
        l
    }

    fn pip() -> PublicIpAddress {
        serde_json::from_value(json!({"id": "/resourceGroups/rg/providers/Microsoft.Network/publicIPAddresses/ip", "ipAddress": "127.64.0.1"})).unwrap()
    }

    fn limits() -> Limits {
        Limits { drain_timeout: Duration::from_secs(5), max_connections_per_rule: Some(10) }
    }

    #[test]
    fn membership_is_running_and_healthy_and_not_draining() {
        let s = set();
        let mut draining = rec(3, InstanceState::Running);
        draining.draining_since = Some(chrono::Utc::now());
        let records = [
            rec(0, InstanceState::Running),
            rec(1, InstanceState::Running),
            rec(2, InstanceState::Running),
            draining,
            rec(4, InstanceState::Creating),
        ];
        let members: Vec<Member<'_>> = records
            .iter()
            .map(|r| Member { set: &s, record: r, probe_source: None, route: Default::default() })
            .collect();
        let health = |_: &str, t: &str| match t.split('#').next().unwrap() {
            "rg/web/0" | "rg/web/3" => Health::Healthy,
            "rg/web/1" => Health::Unhealthy,
            _ => Health::Unknown,
        };
        let d = desired(&[lb(true)], &[pip()], &members, &health, &limits());
        let rule = &d.config.rules[0];
        assert_eq!(rule.frontend, "127.64.0.1:80".parse().unwrap());
        assert_eq!(rule.max_connections, Some(10));
        let got: Vec<(&str, bool)> = rule.backends.iter().map(|b| (b.id.as_str(), b.draining)).collect();
        assert_eq!(
            got,
            [("rg/web/0", false), ("rg/web/1", true), ("rg/web/3", true)],
            "healthy active; unhealthy and draining drain; unknown and creating out"
        );
        let (def, targets) = &d.probes[&format!("{LB}/probes/p").to_ascii_lowercase()];
        assert_eq!(def.threshold, 1);
        assert_eq!(targets.len(), 4, "every Running instance is probed");
        // NAT: one frontend port per instance in id order, until the range runs out.
        let nat: Vec<(u16, String)> = d.config.nat.iter().map(|n| (n.frontend.port(), n.target.to_string())).collect();
        assert_eq!(nat, [(50000, "127.128.0.1:22".to_string()), (50001, "127.128.0.2:22".to_string())]);
        assert!(d.notes.iter().any(|n| n.contains("no frontend port left")));
    }

    #[test]
    fn an_instance_whose_host_is_silent_leaves_rotation_even_if_its_probe_passed() {
        let s = set();
        let mut away = rec(1, InstanceState::Running);
        away.host_failure.unreachable_since = Some(chrono::Utc::now());
        let records = [rec(0, InstanceState::Running), away];
        let members: Vec<Member<'_>> = records
            .iter()
            .map(|r| Member { set: &s, record: r, probe_source: None, route: Default::default() })
            .collect();
        let d = desired(&[lb(true)], &[pip()], &members, &|_: &str, _: &str| Health::Healthy, &limits());
        let got: Vec<(&str, bool)> = d.config.rules[0].backends.iter().map(|b| (b.id.as_str(), b.draining)).collect();
        assert_eq!(got, [("rg/web/0", false), ("rg/web/1", true)], "the silent host's instance drains");
    }

    #[test]
    fn member_counters_sum_rules_per_instance_and_skip_nat() {
        use herd_lb::{BackendStats, BackendStatus, LbStats, RuleKind, RuleStats};
        let backend = |id: &str, status, active, total| BackendStats {
            id: id.into(),
            addr: "127.128.0.2:80".parse().unwrap(),
            status,
            active_connections: active,
            connections_total: total,
            failed_connects_total: 0,
            bytes_in_total: 0,
            bytes_out_total: 0,
        };
        let rule = |name: &str, kind, backends| RuleStats {
            name: name.into(),
            kind,
            frontend: "127.64.0.1:80".parse().unwrap(),
            active_connections: 0,
            connections_total: 0,
            rejected_limit_total: 0,
            rejected_no_backend_total: 0,
            rejected_connect_failed_total: 0,
            rejected_denied_total: 0,
            failed_connects_total: 0,
            bytes_in_total: 0,
            bytes_out_total: 0,
            backends,
        };
        let stats = LbStats {
            rules: vec![
                rule(
                    "lb/http",
                    RuleKind::Rule,
                    vec![
                        backend("rg/web/0", BackendStatus::Active, 2, 10),
                        backend("rg/web/1", BackendStatus::Draining, 1, 4),
                    ],
                ),
                rule("lb/https", RuleKind::Rule, vec![backend("rg/web/0", BackendStatus::Active, 1, 5)]),
                rule("lb/ssh/rg/web/0", RuleKind::Nat, vec![backend("rg/web/0", BackendStatus::Active, 7, 70)]),
                rule("lb/odd", RuleKind::Rule, vec![backend("not-an-instance", BackendStatus::Active, 1, 1)]),
            ],
        };
        let m = member_counters(&stats);
        assert_eq!(m.len(), 2);
        let k = |id| InstanceKey::parse_path(id).unwrap();
        assert_eq!(
            m[&k("rg/web/0")],
            MemberCounters { connections_total: 15, active_connections: 3, in_rotation: true },
            "both rules, not the NAT rule"
        );
        assert_eq!(
            m[&k("rg/web/1")],
            MemberCounters { connections_total: 4, active_connections: 1, in_rotation: false }
        );
    }

    #[test]
    fn drains_report_members_out_of_rotation_with_their_drain_and_connections() {
        let s = set();
        let since = chrono::Utc::now();
        let draining = |id| InstanceRecord { draining_since: Some(since), ..rec(id, InstanceState::Running) };
        let records = [draining(0), draining(1), draining(2), rec(3, InstanceState::Running)];
        let members: Vec<Member<'_>> = records
            .iter()
            .map(|r| Member { set: &s, record: r, probe_source: None, route: Default::default() })
            .collect();
        let k = |id: &str| InstanceKey::parse_path(id).unwrap();
        let c = |active, in_rotation| MemberCounters { connections_total: 9, active_connections: active, in_rotation };
        let counters = BTreeMap::from([
            (k("rg/web/0"), c(0, false)),
            (k("rg/web/1"), c(2, false)),
            // Still active in some rule: this snapshot predates the drain.
            (k("rg/web/2"), c(0, true)),
            (k("rg/web/3"), c(0, false)),
        ]);
        let got = drains(&members, &counters);
        let obs = |open_connections| DrainObservation { draining_since: since, open_connections };
        assert_eq!(
            got,
            BTreeMap::from([("rg/web/0".to_string(), obs(0)), ("rg/web/1".to_string(), obs(2))]),
            "only draining records, only when out of rotation everywhere"
        );
        assert!(drains(&members, &BTreeMap::new()).is_empty(), "a backend of no rule: nothing to report");
    }

    #[test]
    fn without_a_probe_running_instances_are_members() {
        let s = set();
        let records = [rec(0, InstanceState::Running), rec(1, InstanceState::Stopped)];
        let members: Vec<Member<'_>> = records
            .iter()
            .map(|r| Member { set: &s, record: r, probe_source: None, route: Default::default() })
            .collect();
        let d = desired(&[lb(false)], &[pip()], &members, &|_, _| Health::Unknown, &limits());
        assert_eq!(d.config.rules[0].backends.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(), ["rg/web/0"]);
        let no_ip = desired(&[lb(false)], &[], &members, &|_, _| Health::Unknown, &limits());
        assert!(no_ip.config.rules.is_empty() && no_ip.notes[0].contains("no public IP"));
    }

    /// Every store read of a pass runs on the blocking pool: on a current-thread runtime (the
    /// test's own thread is its one async worker) no call lands on this thread.
    #[tokio::test(flavor = "current_thread")]
    async fn a_pass_reads_the_store_off_the_async_worker() {
        use herd_state::{Expected, Records};
        let store = store_with_one_running();
        let key = SetKey::of(&set());
        herd_state::networks::put_resource(
            &*store,
            "rg",
            "lb",
            &lb(false),
            Expected::Absent,
            "test".into(),
            chrono::Utc::now(),
        )
        .unwrap();
        assert_eq!(store.instances_of(&key).unwrap().len(), 1);
        let ctl = LbController::new(store.clone(), Arc::new(HealthBoard::default()), limits());
        let me = std::thread::current().id();
        let (here, before) = (store.calls_on(me), store.calls());
        ctl.pass().await.unwrap();
        ctl.pass().await.unwrap();
        assert_eq!(
            store.calls() - before,
            12,
            "each pass reads load balancers, public IPs, sets, instances, vnets and NSGs"
        );
        assert_eq!(store.calls_on(me), here, "a pass called the store on the async worker");
    }

    /// With no load balancer there is nothing to be a member of: a pass reads the load
    /// balancers, public IPs and sets, and not the instances (the read that decodes every
    /// record, which ran every 50 ms during a 10,000-instance provisioning).
    #[tokio::test]
    async fn without_a_load_balancer_a_pass_reads_no_instance() {
        let store = store_with_one_running();
        let ctl = LbController::new(store.clone(), Arc::new(HealthBoard::default()), limits());
        let before = store.calls();
        ctl.pass().await.unwrap();
        assert_eq!(store.calls() - before, 3, "a pass with no load balancer read the instances");
    }
}
