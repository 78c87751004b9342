//! Where instances go and whether they fit: zone placement, and the capacity arbiter's view of
//! stored sets and instances (holders, requests, the hosts' usage, the room check).
//!
//! Why here: the reconciler arbitrates every pass and the API refuses, up front, a Regular
//! scale-out the hosts can never hold. Both must see a set and its instances the same way (the
//! same size per SKU, the same tier, the same zones for new instances), so the translation from
//! stored records to `herd-capacity`'s pure inputs lives once, next to the records it reads.

use crate::keys::SetKey;
use crate::records::{Records, StateError};
use crate::scale_sets::{Room, ScaleSetError};
pub use herd_capacity::HostUsage;
use herd_capacity::{Holder, Request, Size, Tier, UNLIMITED_HOST};
use herd_model::{
    instance::{InstanceRecord, InstanceState},
    scale_set::StoredScaleSet,
    sku::SkuTable,
    spot::{is_spot, HostSpec, ScheduledEventType},
    FieldError, InstanceId, InstanceKey,
};
use herd_store::Store;
use std::collections::BTreeMap;

/// Zones for `n` new instances: each goes to the zone with the fewest instances so far.
pub fn place(zones: &[String], existing: &[&InstanceRecord], n: usize) -> Vec<Option<String>> {
    if zones.is_empty() {
        return vec![None; n];
    }
    let mut counts: Vec<usize> =
        zones.iter().map(|z| existing.iter().filter(|r| r.zone.as_deref() == Some(z.as_str())).count()).collect();
    (0..n)
        .map(|_| {
            let (i, _) = counts.iter().enumerate().min_by_key(|(i, c)| (**c, *i)).expect("zones not empty");
            counts[i] += 1;
            Some(zones[i].clone())
        })
        .collect()
}

/// A set's tier: Spot sets are evicted to make room for Regular ones.
pub fn tier_of(set: &StoredScaleSet) -> Tier {
    if is_spot(set.model.virtual_machine_profile.priority) {
        Tier::Spot
    } else {
        Tier::Regular
    }
}

/// A Spot set's `billingProfile.maxPrice` (None: not Spot, or -1, "up to the regular price").
pub fn max_price(set: &StoredScaleSet) -> Option<f64> {
    let vp = &set.model.virtual_machine_profile;
    if !is_spot(vp.priority) {
        return None;
    }
    vp.billing_profile.as_ref().map(|b| b.max_price).filter(|p| *p != -1.0)
}

/// The compute a SKU reserves (an unknown SKU: 1 vCPU, 512 MiB).
pub fn size_of(skus: &SkuTable, sku: &str) -> Size {
    skus.lookup(sku)
        .map_or(Size { vcpus: 1, memory_mib: 512 }, |(_, s)| Size { vcpus: s.vcpus, memory_mib: s.memory_mib })
}

/// The compute an instance holds now: every record but a deallocated one (a record on its way
/// out holds its room until it is gone).
pub fn holder(set: &StoredScaleSet, r: &InstanceRecord, skus: &SkuTable, unlimited: bool) -> Option<Holder> {
    if r.state == InstanceState::Deallocated {
        return None;
    }
    let sku = r.sku.clone().unwrap_or_else(|| set.model.sku.name.clone());
    Some(Holder {
        key: InstanceKey { group: set.group.clone(), set: set.name.clone(), id: r.instance_id },
        host: if unlimited { Some(UNLIMITED_HOST.to_string()) } else { r.host.clone() },
        zone: r.zone.clone(),
        size: size_of(skus, &sku),
        tier: tier_of(set),
        sku,
        created_at: r.created_at,
        max_price: max_price(set),
        preempting: r.eviction.is_none()
            && r.scheduled_events.iter().any(|e| e.event_type == ScheduledEventType::Preempt),
        fault_domain: r.platform_fault_domain,
    })
}

/// A request for room for instance `id` of `set`.
pub fn request(set: &StoredScaleSet, id: InstanceId, zone: Option<String>, skus: &SkuTable) -> Request {
    Request {
        key: InstanceKey { group: set.group.clone(), set: set.name.clone(), id },
        size: size_of(skus, &set.model.sku.name),
        tier: tier_of(set),
        zone,
        sku: set.model.sku.name.clone(),
        max_price: max_price(set),
        extra: false,
        fault_domains: set.model.fault_domain_count(),
        fault_domain: None,
        avoid_host: None,
    }
}

/// A set's zones split by whether any host takes new instances there: (usable, without
/// hosts). A set without `zoneBalance` puts its new instances in the usable ones while others
/// have no host (and its status says so); a `zoneBalance` set is refused instead. Without
/// hosts every zone is usable.
pub fn usable_zones(set: &StoredScaleSet, hosts: &[HostSpec]) -> (Vec<String>, Vec<String>) {
    let dead = herd_capacity::zones_without_hosts(hosts, &set.model.zones);
    let usable = set.model.zones.iter().filter(|z| !dead.contains(z)).cloned().collect();
    (usable, dead)
}

/// Every stored instance that holds compute, as the capacity arbiter sees it (`hosts` empty:
/// unlimited capacity, every holder on one pseudo-host).
pub fn holders(store: &dyn Store, hosts: &[HostSpec], skus: &SkuTable) -> Result<Vec<Holder>, StateError> {
    holders_on(store, hosts, None, skus)
}

/// [`holders`], counting instances with no host recorded on `unplaced_on` (the server's own
/// machine, once hosts have joined).
pub fn holders_on(
    store: &dyn Store,
    hosts: &[HostSpec],
    unplaced_on: Option<&str>,
    skus: &SkuTable,
) -> Result<Vec<Holder>, StateError> {
    let sets: BTreeMap<String, StoredScaleSet> = store.scale_sets()?.into_iter().map(|o| (o.key, o.value)).collect();
    let unlimited = hosts.is_empty();
    let mut out = Vec::new();
    for o in store.instances()? {
        let set_key = o.key.rsplit_once('/').map_or("", |(k, _)| k);
        if let Some(set) = sets.get(set_key) {
            out.extend(holder(set, &o.value, skus, unlimited).map(|mut h| {
                if let (None, Some(local)) = (&h.host, unplaced_on) {
                    h.host = Some(local.to_string());
                }
                h
            }));
        }
    }
    Ok(out)
}

/// Per declared host: its capacity and what the stored instances reserve on it (empty when no
/// hosts are declared).
pub fn host_usage(store: &dyn Store, hosts: &[HostSpec], skus: &SkuTable) -> Result<Vec<HostUsage>, StateError> {
    Ok(herd_capacity::usage(hosts, &holders(store, hosts, skus)?))
}

/// The hosts' answer for a set gaining instances (at create, or a scale-out), so nothing is
/// half-applied: refused when a zone of a `zoneBalance` set has no host that takes new
/// instances, when a zone has fewer fault domains than `platformFaultDomainCount`, or when
/// `extra` more Regular instances cannot fit even after evicting every Spot instance. Each
/// error names its field and says what is missing. Without declared or joined hosts room is
/// unlimited, and the server's machine is one fault domain.
pub struct HostRoom<'a> {
    pub hosts: &'a [HostSpec],
    pub skus: &'a SkuTable,
    /// Hosts joined with `herd agent`, when the server takes agents, and the time now: the
    /// same hosts the reconciler's placement uses (`JoinedHosts::hosts`).
    pub joined: Option<(&'a herd_model::host::JoinedHosts, chrono::DateTime<chrono::Utc>)>,
}

impl Room for HostRoom<'_> {
    fn check(&self, store: &dyn Store, set: &StoredScaleSet, extra: i64) -> Result<(), ScaleSetError> {
        if extra < 0 {
            return Ok(());
        }
        let with_joined = match self.joined {
            Some((joined, now)) => joined.hosts(self.hosts, &crate::hosts::list(store)?, now),
            None => None,
        };
        let (hosts, unplaced_on) = match &with_joined {
            Some((hosts, local)) => (hosts.as_slice(), Some(local.as_str())),
            None => (self.hosts, None),
        };
        let (usable, dead) = usable_zones(set, hosts);
        if let Some(z) = dead.first() {
            if set.model.zone_balance || usable.is_empty() {
                let i = set.model.zones.iter().position(|x| x == z).unwrap_or(0);
                let why = if set.model.zone_balance {
                    "zoneBalance is true, so every zone of the set must have one"
                } else {
                    "none of the set's zones has one"
                };
                return Err(ScaleSetError::Invalid(FieldError::new(
                    format!("zones[{i}]"),
                    format!(
                        "no host that takes new instances serves zone {z} (a host serves its own zone, or every zone when it has none; a cordoned host, or a joined one not heard from, takes none); {why}"
                    ),
                )));
            }
        }
        let zones = if usable.is_empty() { set.model.zones.clone() } else { usable };
        herd_capacity::check_fault_domains(hosts, &zones, set.model.fault_domain_count())
            .map_err(|e| ScaleSetError::Invalid(FieldError::new("platformFaultDomainCount", e.to_string())))?;
        if extra == 0 || is_spot(set.model.virtual_machine_profile.priority) || hosts.is_empty() {
            return Ok(());
        }
        let holders = holders_on(store, hosts, unplaced_on, self.skus)?;
        let own: Vec<InstanceRecord> =
            store.instances_of(&SetKey::of(set))?.into_iter().map(|o| o.value).filter(|r| r.is_counted()).collect();
        let refs: Vec<&InstanceRecord> = own.iter().collect();
        let zones = place(&zones, &refs, extra as usize);
        let requests: Vec<Request> = zones
            .into_iter()
            .enumerate()
            .map(|(i, z)| request(set, InstanceId(u64::MAX - i as u64), z, self.skus))
            .collect();
        herd_capacity::check_regular_room(hosts, &holders, &requests).map_err(|s| {
            ScaleSetError::Invalid(FieldError::new(
                "sku.capacity",
                format!("{} more Regular instance(s) of {} do not fit on the hosts: {s}", extra, set.model.sku.name),
            ))
        })
    }
}

impl HostRoom<'_> {
    /// Whether every instance of `moves` (a set and the ids of its instances, each placed on
    /// a host) can move to another host of its zone now: a Ready host that takes new instances
    /// (`draining`, about to be cordoned, counts as one that does not), not its own, with room
    /// beside what every stored instance holds (room a Spot eviction would free counts). The
    /// error names the first instance that cannot and why; nothing is changed either way.
    pub fn check_moves(
        &self,
        store: &dyn Store,
        moves: &[(StoredScaleSet, Vec<InstanceRecord>)],
        draining: Option<&str>,
    ) -> Result<(), ScaleSetError> {
        let with_joined = match self.joined {
            Some((joined, now)) => joined.hosts(self.hosts, &crate::hosts::list(store)?, now),
            None => None,
        };
        let Some((mut hosts, unplaced_on)) = with_joined else {
            return Err(ScaleSetError::Invalid(FieldError::new(
                "instanceIds",
                "no host has joined this server: there is no other host to move instances to (join one with `herd agent`)",
            )));
        };
        for h in hosts.iter_mut().filter(|h| Some(h.name.as_str()) == draining) {
            h.schedulable = false;
        }
        let holders = holders_on(store, &hosts, Some(&unplaced_on), self.skus)?;
        let mut requests = Vec::new();
        let mut from_of = BTreeMap::new();
        for (set, records) in moves {
            for r in records {
                let from = r.host.clone().unwrap_or_else(|| unplaced_on.clone());
                let mut req = request(set, r.instance_id, r.zone.clone(), self.skus);
                req.fault_domain = r.platform_fault_domain;
                req.avoid_host = Some(from.clone());
                from_of.insert(req.key.clone(), (from, r.zone.clone()));
                requests.push(req);
            }
        }
        let d = herd_capacity::arbitrate(&hosts, &holders, &requests, &|_| None);
        let zone_of_host: BTreeMap<&str, Option<&str>> =
            hosts.iter().map(|h| (h.name.as_str(), h.zone.as_deref())).collect();
        let others = |zone: &Option<String>, from: &str| -> String {
            let v: Vec<String> = hosts
                .iter()
                .filter(|h| h.name != from && (zone.is_none() || h.zone == *zone))
                .map(|h| if h.schedulable { h.name.clone() } else { format!("{} (takes no new instances)", h.name) })
                .collect();
            if v.is_empty() {
                "none".into()
            } else {
                v.join(", ")
            }
        };
        let refuse = |key: &herd_model::InstanceKey, why: String| {
            let (from, zone) = from_of.get(key).cloned().unwrap_or_default();
            let zone_text = zone.as_deref().map_or(String::new(), |z| format!(" of zone {z}"));
            FieldError::new(
                "instanceIds",
                format!(
                    "instance {} of scale set '{}' cannot move off host {from}: no other Ready host{zone_text} has room for it ({why}); other hosts{zone_text}: {}",
                    key.id,
                    key.set,
                    others(&zone, &from)
                ),
            )
        };
        if let Some(r) = d.refused.first() {
            return Err(ScaleSetError::Invalid(refuse(&r.key, r.reason.to_string())));
        }
        for p in &d.placements {
            let (_, zone) = from_of.get(&p.key).cloned().unwrap_or_default();
            if zone.is_some() && zone_of_host.get(p.host.as_str()).copied().flatten() != zone.as_deref() {
                return Err(ScaleSetError::Invalid(refuse(&p.key, "an instance never leaves its zone".into())));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{record, set_with_instances, store, stored_set};

    fn host(vcpus: u32) -> HostSpec {
        HostSpec {
            name: "h1".into(),
            zone: None,
            fault_domain: None,
            vcpus,
            memory_mib: 1 << 20,
            overcommit: 1.0,
            schedulable: true,
        }
    }

    #[test]
    fn place_fills_the_emptiest_zone_first() {
        let zones: Vec<String> = vec!["1".into(), "2".into()];
        let mut r = record(0);
        r.zone = Some("1".into());
        assert_eq!(place(&zones, &[&r], 3), vec![Some("2".into()), Some("1".into()), Some("2".into())]);
        assert_eq!(place(&[], &[&r], 2), vec![None, None]);
    }

    #[test]
    fn holders_and_usage_read_every_stored_instance() {
        let s = store();
        set_with_instances(&s, &stored_set("rg", "web", 3), 3);
        let skus = SkuTable::default();
        let unlimited = holders(&s, &[], &skus).unwrap();
        assert_eq!(unlimited.len(), 3);
        assert!(unlimited.iter().all(|h| h.host.as_deref() == Some(UNLIMITED_HOST)));
        assert!(host_usage(&s, &[], &skus).unwrap().is_empty(), "no hosts declared: no usage rows");
        let usage = host_usage(&s, &[host(64)], &skus).unwrap();
        assert_eq!(usage.len(), 1);
        assert_eq!(usage[0].regular_instances, 3, "{usage:?}");
    }

    #[test]
    fn host_room_refuses_a_scale_out_that_cannot_fit() {
        let s = store();
        let set = set_with_instances(&s, &stored_set("rg", "web", 2), 2).value;
        let skus = SkuTable::default();
        let per = size_of(&skus, &set.model.sku.name).vcpus;
        let hosts = [host(per * 3)];
        let room = HostRoom { hosts: &hosts, skus: &skus, joined: None };
        room.check(&s, &set, 1).expect("one more fits");
        let e = room.check(&s, &set, 2).unwrap_err();
        assert!(matches!(&e, ScaleSetError::Invalid(f) if f.field == "sku.capacity"), "{e:?}");
        HostRoom { hosts: &[], skus: &skus, joined: None }.check(&s, &set, 1000).expect("no hosts: unlimited");
    }

    fn zoned(name: &str, zone: &str, fd: Option<&str>) -> HostSpec {
        HostSpec { name: name.into(), zone: Some(zone.into()), fault_domain: fd.map(Into::into), ..host(64) }
    }

    #[test]
    fn host_room_refuses_missing_zones_with_zone_balance_and_too_few_fault_domains() {
        let s = store();
        let mut set = stored_set("rg", "web", 0);
        set.model.zones = vec!["1".into(), "2".into(), "3".into()];
        let skus = SkuTable::default();
        let hosts = [zoned("a", "1", None), zoned("b", "2", None), zoned("c", "2", None)];
        let room = HostRoom { hosts: &hosts, skus: &skus, joined: None };
        // Zone 3 has no host: without zone balance the set uses zones 1 and 2.
        room.check(&s, &set, 3).expect("the remaining zones take them");
        assert_eq!(usable_zones(&set, &hosts), (vec!["1".to_string(), "2".to_string()], vec!["3".to_string()]));
        set.model.zone_balance = true;
        let e = room.check(&s, &set, 0).unwrap_err();
        assert!(
            matches!(&e, ScaleSetError::Invalid(f) if f.field == "zones[2]" && f.message.contains("no host that takes new instances serves zone 3") && f.message.contains("zoneBalance")),
            "{e:?}"
        );
        set.model.zone_balance = false;
        // Two fault domains in zone 2 but one in zone 1.
        set.model.platform_fault_domain_count = Some(2);
        let e = room.check(&s, &set, 1).unwrap_err();
        assert!(
            matches!(&e, ScaleSetError::Invalid(f) if f.field == "platformFaultDomainCount" && f.message.contains("in zone 1") && f.message.contains(": a")),
            "{e:?}"
        );
        set.model.zones = vec!["2".into()];
        room.check(&s, &set, 1).expect("zone 2 has b and c");
        // Hosts sharing a label are one domain.
        let racked = [zoned("b", "2", Some("rack")), zoned("c", "2", Some("rack"))];
        let e = HostRoom { hosts: &racked, skus: &skus, joined: None }.check(&s, &set, 1).unwrap_err();
        assert!(e.to_string().contains("1 that takes new instances: rack"), "{e}");
        // Spot sets are checked too, and without hosts a count above 1 cannot be met.
        set.model.virtual_machine_profile.priority = herd_model::scale_set::Priority::Spot;
        assert!(HostRoom { hosts: &racked, skus: &skus, joined: None }.check(&s, &set, 1).is_err());
        let e = HostRoom { hosts: &[], skus: &skus, joined: None }.check(&s, &set, 0).unwrap_err();
        assert!(e.to_string().contains("one fault domain"), "{e}");
    }
}
