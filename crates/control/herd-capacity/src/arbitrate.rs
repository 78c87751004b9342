//! The three entry points: [`arbitrate`] (placement and eviction), [`usage`] (what each host
//! holds) and [`check_regular_room`] (the API's up-front refusal).
//!
//! Why one cluster builder under all three: `herd host show`, the API's refusal and the
//! reconciler's placement must agree on what is free, including where legacy records without a
//! host are counted.

use crate::cluster::{vcpu_cap, Amount, Cluster};
use crate::model::{
    Decision, DomainShortfall, FaultDomain, Holder, HostUsage, Placement, Preemption, Refusal, Refused, Request,
    Shortfall, Size, Tier, UNLIMITED_HOST,
};
use herd_model::spot::{EvictionReason, HostSpec};
use herd_model::InstanceKey;
use std::collections::BTreeMap;

/// What may be allocated on a host: `floor(vcpus × overcommit)`.
pub fn vcpu_capacity(host: &HostSpec) -> u32 {
    vcpu_cap(host)
}

/// `Some((price, max_price))` when a Spot instance's `maxPrice` is below the current price.
fn over_price(max_price: Option<f64>, sku: &str, spot_price: &dyn Fn(&str) -> Option<f64>) -> Option<(f64, f64)> {
    let max = max_price.filter(|p| p.is_finite() && *p >= 0.0)?;
    let price = spot_price(sku)?;
    (max < price).then_some((price, max))
}

/// Overprovisioned extras last (they only take what is left); then Regular first; larger first
/// within a tier (hardest to fit); then by key.
fn request_order(requests: &[Request]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&requests[a], &requests[b]);
        x.extra
            .cmp(&y.extra)
            .then(x.tier.cmp(&y.tier))
            .then(y.size.vcpus.cmp(&x.size.vcpus))
            .then(y.size.memory_mib.cmp(&x.size.memory_mib))
            .then(x.key.cmp(&y.key))
    });
    order
}

/// Decides placement and eviction for one round. See the crate docs for the rules.
///
/// `spot_price` gives the current spot price per hour of a SKU; `None` = unknown (nothing is
/// evicted or refused for price).
pub fn arbitrate(
    hosts: &[HostSpec],
    holders: &[Holder],
    requests: &[Request],
    spot_price: &dyn Fn(&str) -> Option<f64>,
) -> Decision {
    let mut c = Cluster::build(hosts, holders);
    // Price evictions first: the room they free can be waited on by Regular requests.
    let mut preempt = price_evictions(&mut c, holders, spot_price);
    c.seal(holders);

    let unlimited = c.hosts.is_empty();
    let mut placements = Vec::new();
    let mut waiting = Vec::new();
    let mut refused = Vec::new();
    let mut skipped = Vec::new();
    // Capacity refusals, grouped by (tier, zone) so each group gets one shared shortfall.
    let mut short: BTreeMap<(Tier, Option<String>), Vec<usize>> = BTreeMap::new();

    let mut regular_done = false;
    let mut extras_started = false;
    for ri in request_order(requests) {
        let r = &requests[ri];
        if (r.tier == Tier::Spot || r.extra) && !regular_done {
            // Regular shortfalls are measured before Spot requests take any room.
            regular_done = true;
            flush_shortfalls(&mut c, &mut short, requests, &mut refused);
        }
        if r.extra && !extras_started {
            // Spot shortfalls too are measured before extras take any room.
            extras_started = true;
            flush_shortfalls(&mut c, &mut short, requests, &mut refused);
        }
        if r.tier == Tier::Spot {
            if let Some((price, max_price)) = over_price(r.max_price, &r.sku, spot_price) {
                if r.extra {
                    skipped.push(r.key.clone());
                    continue;
                }
                refused.push(Refused {
                    key: r.key.clone(),
                    reason: Refusal::Price { sku: r.sku.clone(), price, max_price },
                });
                continue;
            }
        }
        if unlimited {
            if r.fault_domains > 1 {
                let why =
                    DomainShortfall { zone: r.zone.clone(), want: r.fault_domains, domains: vec![], unlimited: true };
                if r.extra {
                    skipped.push(r.key.clone());
                } else {
                    refused.push(Refused { key: r.key.clone(), reason: Refusal::FaultDomains(why) });
                }
                continue;
            }
            placements.push(Placement { key: r.key.clone(), host: UNLIMITED_HOST.to_string(), fault_domain: Some(0) });
            continue;
        }
        let size = r.size;
        let a = Amount::of(size);
        let set = c.set_of(&r.key);
        let candidates = match c.candidates(r, set) {
            Ok(v) => v,
            Err(why) => {
                if r.extra {
                    skipped.push(r.key.clone());
                } else {
                    refused.push(Refused { key: r.key.clone(), reason: Refusal::FaultDomains(why) });
                }
                continue;
            }
        };
        // Each candidate fault domain in turn (balance first): the first that can take the
        // request, by the stages below, gets it.
        let mut done = false;
        for (fd, pool) in &candidates {
            // 1. Fits now.
            if let Some(hi) = c.best_for(pool, size, Some(set), |h| h.free_now()) {
                match r.tier {
                    Tier::Regular => c.hosts[hi].committed += a,
                    Tier::Spot => c.hosts[hi].spot += a,
                }
                c.count(set, hi, &r.zone, Some(*fd));
                placements.push(Placement {
                    key: r.key.clone(),
                    host: c.hosts[hi].spec.name.clone(),
                    fault_domain: Some(*fd),
                });
                done = true;
                break;
            }
            // An extra only ever takes free room: it neither waits nor evicts; nor does Spot.
            if r.extra || r.tier == Tier::Spot {
                continue;
            }
            // 2. Fits once the Preempts already announced complete.
            if let Some(hi) = c.best_for(pool, size, Some(set), |h| h.room_after_leaving()) {
                c.hosts[hi].committed += a;
                c.count(set, hi, &r.zone, Some(*fd));
                waiting.push(r.key.clone());
                done = true;
                break;
            }
            // 3. Fits after evicting the youngest Spot instances of one host: the fewest evictions.
            if let Some(hi) = evict_for(&mut c, holders, pool, r, &mut preempt) {
                c.count(set, hi, &r.zone, Some(*fd));
                waiting.push(r.key.clone());
                done = true;
                break;
            }
        }
        if !done {
            if r.extra {
                skipped.push(r.key.clone());
            } else {
                // 4. Not even then.
                short.entry((r.tier, r.zone.clone())).or_default().push(ri);
            }
        }
    }

    flush_shortfalls(&mut c, &mut short, requests, &mut refused);

    let by_key = |a: &InstanceKey, b: &InstanceKey| a.cmp(b);
    placements.sort_by(|a, b| by_key(&a.key, &b.key));
    let mut adopted = std::mem::take(&mut c.adopted);
    adopted.sort_by(|a, b| by_key(&a.key, &b.key));
    waiting.sort();
    skipped.sort();
    refused.sort_by(|a, b| by_key(&a.key, &b.key));
    preempt.sort_by(|a, b| by_key(&a.key, &b.key));
    Decision { placements, adopted, waiting, refused, skipped, preempt, warnings: std::mem::take(&mut c.warnings) }
}

/// Marks every Spot holder whose SKU's price is above its max price as leaving.
fn price_evictions(
    c: &mut Cluster<'_>,
    holders: &[Holder],
    spot_price: &dyn Fn(&str) -> Option<f64>,
) -> Vec<Preemption> {
    let mut preempt = Vec::new();
    for (i, h) in holders.iter().enumerate() {
        if h.tier != Tier::Spot || c.leaving[i] {
            continue;
        }
        if let Some((price, max)) = over_price(h.max_price, &h.sku, spot_price) {
            c.mark_leaving(i, h);
            preempt.push(Preemption {
                key: h.key.clone(),
                reason: EvictionReason::Price,
                detail: format!("spot price {price:.4} for {} is above maxPrice {max:.4}", h.sku),
            });
        }
    }
    preempt
}

/// Makes room for Regular request `r` by evicting the youngest Spot instances of the host in
/// `pool` that needs the fewest evictions, and commits the room to `r`; returns that host.
/// None when no host can make room that way.
fn evict_for(
    c: &mut Cluster<'_>,
    holders: &[Holder],
    pool: &[usize],
    r: &Request,
    preempt: &mut Vec<Preemption>,
) -> Option<usize> {
    let size = r.size;
    let mut choice: Option<(usize, usize)> = None;
    for &hi in pool {
        if let Some(k) = c.hosts[hi].evictions_needed(size) {
            if choice.is_none_or(|(_, best)| k < best) {
                choice = Some((hi, k));
            }
        }
    }
    let (hi, k) = choice?;
    let spec = c.hosts[hi].spec;
    let name = &spec.name;
    let host = &mut c.hosts[hi];
    for j in host.cursor..host.cursor + k {
        let i = host.evictable[j];
        let victim = &holders[i];
        let va = Amount::of(victim.size);
        host.spot -= va;
        host.leaving += va;
        c.leaving[i] = true;
        preempt.push(Preemption {
            key: victim.key.clone(),
            reason: EvictionReason::Capacity,
            detail: format!(
                "evicted to make room for Regular instance {} ({size}) on host {name}; the youngest Spot instances there go first",
                r.key
            ),
        });
    }
    host.cursor += k;
    host.committed += Amount::of(size);
    Some(hi)
}

/// Turns the grouped capacity refusals into refusals sharing their group's shortfall.
fn flush_shortfalls(
    c: &mut Cluster<'_>,
    short: &mut BTreeMap<(Tier, Option<String>), Vec<usize>>,
    requests: &[Request],
    refused: &mut Vec<Refused>,
) {
    for ((tier, zone), members) in std::mem::take(short) {
        let shortfall = shortfall_of(c, tier, zone, members.iter().map(|&ri| requests[ri].size));
        for ri in members {
            refused.push(Refused { key: requests[ri].key.clone(), reason: Refusal::Capacity(shortfall.clone()) });
        }
    }
}

/// The shortfall of instances of one tier and zone, against the room left at the end.
fn shortfall_of(c: &mut Cluster<'_>, tier: Tier, zone: Option<String>, sizes: impl Iterator<Item = Size>) -> Shortfall {
    let mut need = Amount::default();
    let mut instances = 0u32;
    for s in sizes {
        need += Amount::of(s);
        instances += 1;
    }
    let pool = c.eligible(zone.as_deref());
    let mut free = Amount::default();
    for &hi in &pool {
        let h = &c.hosts[hi];
        free += match tier {
            Tier::Regular => h.room_regular(),
            Tier::Spot => h.free_now(),
        }
        .clamp0();
    }
    Shortfall {
        tier,
        instances,
        need: need.size(),
        missing: (need - free).size(),
        free: free.size(),
        zone,
        hosts: pool.iter().map(|&hi| c.hosts[hi].spec.name.clone()).collect(),
    }
}

/// Per declared host (by name): capacity, what Regular and Spot instances hold, what is free.
/// Holders without a host are counted where [`arbitrate`] would place them. Empty when no hosts
/// are declared (unlimited).
pub fn usage(hosts: &[HostSpec], holders: &[Holder]) -> Vec<HostUsage> {
    let c = Cluster::build(hosts, holders);
    c.hosts
        .iter()
        .map(|h| {
            let allocated = h.alloc_regular + h.alloc_spot;
            let free = h.cap - allocated;
            HostUsage {
                name: h.spec.name.clone(),
                zone: h.spec.zone.clone(),
                fault_domain: h.spec.fault_domain.clone(),
                physical_vcpus: h.spec.vcpus,
                overcommit: h.spec.overcommit,
                capacity: h.cap.size(),
                regular: h.alloc_regular.size(),
                spot: h.alloc_spot.size(),
                preempting: h.alloc_preempting.size(),
                free: free.size(),
                regular_instances: h.regular_n,
                spot_instances: h.spot_n,
                preempting_instances: h.preempting_n,
                overcommitted: free.v < 0 || free.m < 0,
            }
        })
        .collect()
}

/// Whether the Regular instances in `extra` could fit if every Spot instance were evicted:
/// the API's up-front refusal of a scale-out that can never fit, so nothing is half-applied.
///
/// `extra` should hold every Regular instance wanted but not yet holding room (the new ones and
/// any still waiting); Spot entries and overprovisioned extras are ignored (they never make a
/// request fail). Placement is
/// first-fit, largest first, on the host with the most room, as [`arbitrate`] does. On failure
/// the shortfall is that of the first (by zone) group of instances that do not fit.
pub fn check_regular_room(hosts: &[HostSpec], holders: &[Holder], extra: &[Request]) -> Result<(), Shortfall> {
    let mut c = Cluster::build(hosts, holders);
    if c.hosts.is_empty() {
        return Ok(());
    }
    c.seal(holders);
    let mut short: BTreeMap<Option<String>, Vec<usize>> = BTreeMap::new();
    for ri in request_order(extra) {
        let r = &extra[ri];
        if r.tier != Tier::Regular || r.extra {
            continue;
        }
        let pool = c.pool_of(r);
        match c.best(&pool, r.size, |h| h.room_regular()) {
            Some(hi) => c.hosts[hi].committed += Amount::of(r.size),
            None => short.entry(r.zone.clone()).or_default().push(ri),
        }
    }
    match short.into_iter().next() {
        None => Ok(()),
        Some((zone, members)) => {
            Err(shortfall_of(&mut c, Tier::Regular, zone, members.iter().map(|&ri| extra[ri].size)))
        }
    }
}

/// The fault domains of `zone` (`None`: a set without zones) on `hosts`: the hosts that take
/// new instances there, grouped by fault-domain label, sorted by name. Index `i` of this list
/// is fault domain `i` of a set with `platformFaultDomainCount` above `i`.
pub fn fault_domains(hosts: &[HostSpec], zone: Option<&str>) -> Vec<FaultDomain> {
    let mut c = Cluster::build(hosts, &[]);
    let domains = c.domains(zone);
    domains
        .iter()
        .map(|d| FaultDomain {
            name: d.name.clone(),
            hosts: d.hosts.iter().map(|&hi| c.hosts[hi].spec.name.clone()).collect(),
        })
        .collect()
}

/// Whether every zone of a set (`zones` empty: the set has none) has at least `count` fault
/// domains that take new instances: the API's refusal of a `platformFaultDomainCount` the hosts
/// cannot meet. With no hosts (everything on the server's own machine) only a count of 1 can.
pub fn check_fault_domains(hosts: &[HostSpec], zones: &[String], count: u32) -> Result<(), DomainShortfall> {
    if count <= 1 {
        return Ok(());
    }
    let zones: Vec<Option<&str>> =
        if zones.is_empty() { vec![None] } else { zones.iter().map(|z| Some(z.as_str())).collect() };
    if hosts.is_empty() {
        return Err(DomainShortfall {
            zone: zones[0].map(str::to_string),
            want: count,
            domains: vec![],
            unlimited: true,
        });
    }
    let mut c = Cluster::build(hosts, &[]);
    for z in zones {
        let d = c.domains(z);
        if d.len() < count as usize {
            return Err(DomainShortfall {
                zone: z.map(str::to_string),
                want: count,
                domains: d.iter().map(|d| d.name.clone()).collect(),
                unlimited: false,
            });
        }
    }
    Ok(())
}

/// The zones of `zones` that no host takes new instances for (none is cordoned-free, heard
/// from, and labelled with the zone or with none). Empty without hosts: the server's own
/// machine serves every zone.
pub fn zones_without_hosts(hosts: &[HostSpec], zones: &[String]) -> Vec<String> {
    if hosts.is_empty() {
        return vec![];
    }
    let mut c = Cluster::build(hosts, &[]);
    zones.iter().filter(|z| c.eligible(Some(z.as_str())).is_empty()).cloned().collect()
}
