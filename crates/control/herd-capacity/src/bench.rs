//! The benchmark's workload and its naive peer, as plain functions, so `herd bench spot` can
//! time them and the tests can check that herd's answer is never worse than the peer's.
//!
//! Why a naive peer: the goal (< 1 s to decide and carry out the evictions of a
//! regular scale-out over 10,000 instances on 50 hosts) says little alone. The obvious way to
//! write "evict the youngest Spot instances" is one global youngest-first list walked from the
//! start for every request until some eligible host has room; it is what [`naive_global`] does,
//! and the report gives the ratio of the two times and of the two eviction counts.

use crate::cluster::vcpu_cap;
use crate::model::{Holder, Request, Size, Tier};
use chrono::{DateTime, Duration, Utc};
use herd_model::spot::HostSpec;
use herd_model::{GroupName, InstanceId, InstanceKey, ScaleSetName};
use std::collections::BTreeMap;

/// The spot price of every SKU in the scenario.
pub const SPOT_PRICE: f64 = 0.01;

/// The price lookup the scenario uses.
pub fn spot_price(_sku: &str) -> Option<f64> {
    Some(SPOT_PRICE)
}

/// A cluster, nearly full, and a Regular scale-out that needs evictions.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub hosts: Vec<HostSpec>,
    pub holders: Vec<Holder>,
    pub requests: Vec<Request>,
    /// The instant the scenario's ages are measured from.
    pub now: DateTime<Utc>,
}

impl Scenario {
    pub fn regular_holders(&self) -> usize {
        self.holders.iter().filter(|h| h.tier == Tier::Regular).count()
    }

    pub fn spot_holders(&self) -> usize {
        self.holders.len() - self.regular_holders()
    }
}

/// The SKUs the scenario mixes: name, vCPUs, MiB.
pub const SKUS: &[(&str, u32, u64)] = &[
    ("Standard_B1s", 1, 1024),
    ("Standard_B1ms", 1, 2048),
    ("Standard_B2s", 2, 4096),
    ("Standard_D2s_v3", 2, 8192),
    ("Standard_B4ms", 4, 16384),
];

/// A small deterministic generator (no `rand`: the same scenario on every machine).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn key(set: &str, id: u64) -> InstanceKey {
    InstanceKey {
        group: GroupName::new("bench").expect("valid group name"),
        set: ScaleSetName::new(set).expect("valid set name"),
        id: InstanceId(id),
    }
}

/// `instances` holders (60% Regular, 40% Spot, in 20 + 20 sets of mixed SKUs) round-robin on
/// `hosts` hosts in `zones` zones (half of the hosts overcommit vCPUs 2×), each host sized to
/// what it holds plus 2 vCPU and 4 GiB; 0.5% of the Spot instances already have a Preempt
/// posted, 1% have a `maxPrice` (above the price). Then a Regular scale-out of `scale_out`
/// Standard_B2s instances spread over the zones.
pub fn scenario(instances: usize, hosts: usize, zones: usize, scale_out: usize) -> Scenario {
    let hosts_n = hosts.max(1);
    let zones = zones.max(1);
    let now = DateTime::from_timestamp(1_750_000_000, 0).unwrap_or_default();
    let mut rng = Lcg(0x5eed);
    let mut next_id: BTreeMap<String, u64> = BTreeMap::new();
    let mut holders = Vec::with_capacity(instances);
    let mut used = vec![(0u64, 0u64); hosts_n];
    for j in 0..instances {
        let regular = rng.below(10) < 6;
        let set_no = rng.below(20) as usize;
        let (sku, vcpus, mem) = SKUS[set_no % SKUS.len()];
        let set = if regular { format!("reg{set_no:02}") } else { format!("spot{set_no:02}") };
        let id = next_id.entry(set.clone()).or_default();
        let k = key(&set, *id);
        *id += 1;
        let hi = j % hosts_n;
        used[hi].0 += u64::from(vcpus);
        used[hi].1 += mem;
        let spot = !regular;
        holders.push(Holder {
            key: k,
            host: Some(host_name(hi)),
            zone: Some(zone_of(hi, zones)),
            size: Size::new(vcpus, mem),
            tier: if regular { Tier::Regular } else { Tier::Spot },
            sku: sku.to_string(),
            created_at: now - Duration::seconds(rng.below(30 * 86_400) as i64),
            max_price: (spot && rng.below(100) == 0).then_some(2.0 * SPOT_PRICE),
            preempting: spot && rng.below(200) == 0,
            fault_domain: None,
        });
    }
    let hosts = (0..hosts_n)
        .map(|hi| {
            let overcommit = if hi % 2 == 0 { 1.0 } else { 2.0 };
            let want = used[hi].0 + 2;
            HostSpec {
                name: host_name(hi),
                zone: Some(zone_of(hi, zones)),
                fault_domain: None,
                vcpus: (want as f64 / overcommit).ceil() as u32,
                memory_mib: used[hi].1 + 4096,
                overcommit,
                schedulable: true,
            }
        })
        .collect();
    let requests = (0..scale_out)
        .map(|i| Request {
            key: key("scaleout", i as u64),
            size: Size::new(2, 4096),
            tier: Tier::Regular,
            zone: Some(zone_of(i, zones)),
            sku: "Standard_B2s".into(),
            max_price: None,
            extra: false,
            fault_domains: 1,
            fault_domain: None,
            avoid_host: None,
        })
        .collect();
    Scenario { hosts, holders, requests, now }
}

fn host_name(i: usize) -> String {
    format!("host{i:03}")
}

fn zone_of(i: usize, zones: usize) -> String {
    (i % zones + 1).to_string()
}

/// What the naive peer decided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NaiveOutcome {
    pub evictions: usize,
    pub placed: usize,
    pub refused: usize,
}

/// The obvious approach: free room per host from all holders; all Spot instances sorted once,
/// globally, youngest first; for each Regular request that does not fit, walk that list from
/// the start, evicting every Spot instance on an eligible host until one of those hosts has
/// room. It ignores announced Preempts' room and spreads evictions over hosts.
pub fn naive_global(hosts: &[HostSpec], holders: &[Holder], requests: &[Request]) -> NaiveOutcome {
    let index: BTreeMap<&str, usize> = hosts.iter().enumerate().map(|(i, h)| (h.name.as_str(), i)).collect();
    let mut free: Vec<(i64, i64)> = hosts.iter().map(|h| (i64::from(vcpu_cap(h)), h.memory_mib as i64)).collect();
    let mut spot: Vec<usize> = Vec::new();
    for (i, h) in holders.iter().enumerate() {
        if let Some(&hi) = h.host.as_deref().and_then(|n| index.get(n)) {
            free[hi].0 -= i64::from(h.size.vcpus);
            free[hi].1 -= h.size.memory_mib as i64;
            if h.tier == Tier::Spot && !h.preempting {
                spot.push(i);
            }
        }
    }
    spot.sort_by(|&a, &b| holders[b].created_at.cmp(&holders[a].created_at));
    let mut evicted = vec![false; holders.len()];
    let mut out = NaiveOutcome::default();
    let fits = |f: (i64, i64), s: Size| f.0 >= i64::from(s.vcpus) && f.1 >= s.memory_mib as i64;
    for r in requests.iter().filter(|r| r.tier == Tier::Regular) {
        let eligible = |hi: usize| match (&r.zone, &hosts[hi].zone) {
            (Some(z), Some(hz)) => z == hz,
            _ => true,
        };
        let best = (0..hosts.len()).filter(|&hi| eligible(hi) && fits(free[hi], r.size)).max_by_key(|&hi| free[hi]);
        let mut target = best;
        if target.is_none() {
            for &i in &spot {
                let h = &holders[i];
                let Some(&hi) = h.host.as_deref().and_then(|n| index.get(n)) else { continue };
                if evicted[i] || !eligible(hi) {
                    continue;
                }
                evicted[i] = true;
                out.evictions += 1;
                free[hi].0 += i64::from(h.size.vcpus);
                free[hi].1 += h.size.memory_mib as i64;
                if fits(free[hi], r.size) {
                    target = Some(hi);
                    break;
                }
            }
        }
        match target {
            Some(hi) => {
                free[hi].0 -= i64::from(r.size.vcpus);
                free[hi].1 -= r.size.memory_mib as i64;
                out.placed += 1;
            }
            None => out.refused += 1,
        }
    }
    out
}

/// `herd bench placement`'s workload: `hosts` empty hosts round-robin over `zones` zones, the
/// hosts of each zone labelled round-robin into `fault_domains` racks (none when
/// `fault_domains` is 1: each host is its own domain), and `instances` new Regular instances of
/// `sets` sets (mixed SKUs), each set over every zone, with `platformFaultDomainCount`
/// `fault_domains`. Hosts are sized so the instances fill about three quarters of them.
#[derive(Debug, Clone)]
pub struct PlacementScenario {
    pub hosts: Vec<HostSpec>,
    pub requests: Vec<Request>,
}

pub fn placement_scenario(
    instances: usize,
    hosts: usize,
    zones: usize,
    fault_domains: u32,
    sets: usize,
) -> PlacementScenario {
    let hosts_n = hosts.max(1);
    let zones = zones.max(1);
    let sets = sets.max(1);
    let fd = fault_domains.max(1);
    let mut requests = Vec::with_capacity(instances);
    let (mut vcpus, mut mem) = (0u64, 0u64);
    for i in 0..instances {
        let set_no = i % sets;
        let (sku, v, m) = SKUS[set_no % SKUS.len()];
        vcpus += u64::from(v);
        mem += m;
        requests.push(Request {
            key: key(&format!("set{set_no:03}"), (i / sets) as u64),
            size: Size::new(v, m),
            tier: Tier::Regular,
            zone: Some(zone_of(i / sets, zones)),
            sku: sku.to_string(),
            max_price: None,
            extra: false,
            fault_domains: fd,
            fault_domain: None,
            avoid_host: None,
        });
    }
    // Three quarters full on average.
    let per_host_vcpus = (vcpus * 4 / 3).div_ceil(hosts_n as u64).max(1) as u32;
    let per_host_mem = (mem * 4 / 3).div_ceil(hosts_n as u64).max(1);
    let hosts = (0..hosts_n)
        .map(|hi| {
            let zone = zone_of(hi, zones);
            let nth_in_zone = hi / zones;
            HostSpec {
                name: host_name(hi),
                fault_domain: (fd > 1).then(|| format!("z{zone}-rack{}", nth_in_zone % fd as usize)),
                zone: Some(zone),
                vcpus: per_host_vcpus,
                memory_mib: per_host_mem,
                overcommit: 1.0,
                schedulable: true,
            }
        })
        .collect();
    PlacementScenario { hosts, requests }
}

/// How evenly a decision spread each set: the largest difference, over every set and zone,
/// between its most and least used fault domains (with a count of 1: hosts of the zone that
/// took any of the set, and the zone's other hosts count as 0).
pub fn imbalance(s: &PlacementScenario, d: &crate::Decision) -> u32 {
    let zone_of_host: BTreeMap<&str, &str> =
        s.hosts.iter().map(|h| (h.name.as_str(), h.zone.as_deref().unwrap_or(""))).collect();
    let hosts_in_zone = |z: &str| s.hosts.iter().filter(|h| h.zone.as_deref() == Some(z)).count();
    let fd_n = s.requests.first().map_or(1, |r| r.fault_domains.max(1));
    // (set, zone) → per bucket (fault domain index, or host) counts.
    let mut counts: BTreeMap<(String, String), BTreeMap<String, u32>> = BTreeMap::new();
    for p in &d.placements {
        let zone = zone_of_host.get(p.host.as_str()).copied().unwrap_or("").to_string();
        let bucket = if fd_n > 1 { p.fault_domain.unwrap_or(0).to_string() } else { p.host.clone() };
        *counts.entry((p.key.set.to_string(), zone)).or_default().entry(bucket).or_default() += 1;
    }
    counts
        .iter()
        .map(|((_, zone), c)| {
            let buckets = if fd_n > 1 { fd_n as usize } else { hosts_in_zone(zone) };
            let max = c.values().copied().max().unwrap_or(0);
            let min = if c.len() < buckets { 0 } else { c.values().copied().min().unwrap_or(0) };
            max - min
        })
        .max()
        .unwrap_or(0)
}
