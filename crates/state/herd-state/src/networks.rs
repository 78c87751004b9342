//! Network resources (virtual networks with their subnets, public IP addresses, load balancers
//! with their sub-resources), each stored whole under `group/name`: read, write as a create or
//! a compare-and-swap with its log line, and delete unless something uses it.
//!
//! Why here: a network resource is referred to by scale-set models (subnets, pools) and by
//! other network resources (a load balancer's frontend names a public IP), so a delete is
//! checked against those stored records before it commits; the API validates the resource
//! itself (`normalize`) and calls these.

use crate::activity::user_event;
use crate::keys::{GroupKey, ResourceKey, SetKey, ALL};
use crate::records::{Expected, Records, StateError, Versioned};
use chrono::{DateTime, Utc};
use herd_model::instance::InstanceRecord;
use herd_model::network::{network_id, LoadBalancer, PublicIpAddress, VirtualNetwork};
use herd_model::nsg::NetworkSecurityGroup;
use herd_model::scale_set::StoredScaleSet;
use herd_store::{Expect, Kind, Store, StoreExt, WriteOp};
use serde::{de::DeserializeOwned, Serialize};

/// A network resource stored under `group/name`.
pub trait NetResource: Serialize + DeserializeOwned + Clone + Send + 'static {
    /// Its store kind (private to the state layer).
    #[doc(hidden)]
    const KIND: Kind;
    /// Azure's collection name, as in resource ids (`virtualNetworks`).
    const COLLECTION: &'static str;
    /// What users call it in messages.
    const NOUN: &'static str;
}

impl NetResource for VirtualNetwork {
    const KIND: Kind = Kind::VirtualNetwork;
    const COLLECTION: &'static str = "virtualNetworks";
    const NOUN: &'static str = "virtual network";
}
impl NetResource for PublicIpAddress {
    const KIND: Kind = Kind::PublicIp;
    const COLLECTION: &'static str = "publicIPAddresses";
    const NOUN: &'static str = "public IP address";
}
impl NetResource for LoadBalancer {
    const KIND: Kind = Kind::LoadBalancer;
    const COLLECTION: &'static str = "loadBalancers";
    const NOUN: &'static str = "load balancer";
}
impl NetResource for NetworkSecurityGroup {
    const KIND: Kind = Kind::NetworkSecurityGroup;
    const COLLECTION: &'static str = "networkSecurityGroups";
    const NOUN: &'static str = "network security group";
}

/// Why a network operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{noun} '{name}' does not exist in resource group '{group}'")]
    NotFound { noun: &'static str, group: String, name: String },
    #[error("{noun} '{name}' is used by scale set(s) {}; change or delete them first", .sets.join(", "))]
    UsedBySets { noun: &'static str, name: String, sets: Vec<String> },
    #[error("public IP address '{name}' is used by load balancer '{lb}'")]
    UsedByLoadBalancer { name: String, lb: String },
    #[error("network security group '{name}' is associated with subnet(s) {}; dissociate them first ('herd network vnet subnet update --network-security-group \"\"')", .subnets.join(", "))]
    UsedBySubnets { name: String, subnets: Vec<String> },
    #[error(transparent)]
    State(#[from] StateError),
}

crate::records::store_error_via_state!(NetError);

fn key(group: &str, name: &str) -> String {
    ResourceKey::new(group, name).to_string()
}

/// Resource `name` of group `group`, if stored.
pub fn find_resource<T: NetResource>(
    store: &dyn Store,
    group: &str,
    name: &str,
) -> Result<Option<Versioned<T>>, StateError> {
    Ok(store.get_as::<T>(T::KIND, &key(group, name))?)
}

/// Resource `name` of group `group`.
pub fn resource<T: NetResource>(store: &dyn Store, group: &str, name: &str) -> Result<Versioned<T>, NetError> {
    find_resource::<T>(store, group, name)?.ok_or_else(|| NetError::NotFound {
        noun: T::NOUN,
        group: group.to_string(),
        name: name.to_string(),
    })
}

/// Every resource of the kind in group `group`.
pub fn resources_of<T: NetResource>(store: &dyn Store, group: &str) -> Result<Vec<T>, StateError> {
    Ok(store.list_as::<T>(T::KIND, &GroupKey::new(group).children())?.into_iter().map(|o| o.value).collect())
}

/// Writes `value` (already validated) as a create or a compare-and-swap update, logged as
/// `Write<collection>` with `message`.
pub fn put_resource<T: NetResource>(
    store: &dyn Store,
    group: &str,
    name: &str,
    value: &T,
    expected: Expected,
    message: String,
    now: DateTime<Utc>,
) -> Result<(), StateError> {
    store.txn(vec![
        WriteOp::put(T::KIND, key(group, name), value, Expect::from(expected))?,
        WriteOp::Activity(user_event(now, group, name, &format!("Write{}", T::COLLECTION), message)),
    ])?;
    Ok(())
}

/// Scale sets whose model mentions `id` (a network resource they use), by key.
pub fn users_of(store: &dyn Store, id: &str) -> Result<Vec<String>, StateError> {
    let needle = id.to_ascii_lowercase();
    Ok(store
        .scale_sets()?
        .into_iter()
        .filter(|s| serde_json::to_string(&s.value.model).unwrap_or_default().to_ascii_lowercase().contains(&needle))
        .map(|s| s.key)
        .collect())
}

/// Deletes resource `name` of group `group` unless a scale set (or, for a public IP, a load
/// balancer's frontend) uses it.
pub fn delete_resource<T: NetResource>(
    store: &dyn Store,
    group: &str,
    name: &str,
    now: DateTime<Utc>,
) -> Result<(), NetError> {
    let cur = resource::<T>(store, group, name)?;
    let id = network_id(group, T::COLLECTION, name);
    let sets = users_of(store, &id)?;
    if !sets.is_empty() {
        return Err(NetError::UsedBySets { noun: T::NOUN, name: name.to_string(), sets });
    }
    if T::KIND == Kind::NetworkSecurityGroup {
        let subnets = subnets_using(store, &id)?;
        if !subnets.is_empty() {
            return Err(NetError::UsedBySubnets { name: name.to_string(), subnets });
        }
    }
    if T::KIND == Kind::PublicIp {
        let lbs = store.load_balancers()?;
        if let Some(lb) = lbs.iter().find(|l| {
            l.value
                .frontend_ip_configurations
                .iter()
                .any(|f| f.public_ip_address.as_ref().is_some_and(|p| p.id.eq_ignore_ascii_case(&id)))
        }) {
            return Err(NetError::UsedByLoadBalancer { name: name.to_string(), lb: lb.value.name.clone() });
        }
    }
    store.txn(vec![
        WriteOp::delete(T::KIND, key(group, name), Expect::Revision(cur.revision)),
        WriteOp::Activity(user_event(
            now,
            group,
            name,
            &format!("Delete{}", T::COLLECTION),
            format!("{} deleted", T::NOUN),
        )),
    ])?;
    Ok(())
}

/// The subnets (`vnet/subnet`) associated with network security group `nsg_id`.
pub fn subnets_using(store: &dyn Store, nsg_id: &str) -> Result<Vec<String>, StateError> {
    let mut out = Vec::new();
    for v in store.virtual_networks()? {
        for s in &v.value.subnets {
            if s.network_security_group.as_ref().is_some_and(|g| g.id.eq_ignore_ascii_case(nsg_id)) {
                out.push(format!("{}/{}", v.value.name, s.name));
            }
        }
    }
    Ok(out)
}

/// The addresses every public IP but `group/name` holds.
pub fn public_ip_addresses_except(store: &dyn Store, group: &str, name: &str) -> Result<Vec<String>, StateError> {
    let own = key(group, name);
    Ok(store.public_ips()?.into_iter().filter(|o| o.key != own).filter_map(|o| o.value.ip_address).collect())
}

/// Every scale set joining backend pool `pool_id`, with its instance records.
pub fn pool_sets(store: &dyn Store, pool_id: &str) -> Result<Vec<(StoredScaleSet, Vec<InstanceRecord>)>, StateError> {
    let mut out = Vec::new();
    for set in store.list_as::<StoredScaleSet>(Kind::ScaleSet, ALL)? {
        let joins =
            set.value.model.virtual_machine_profile.network_profile.as_ref().and_then(|n| n.primary()).is_some_and(
                |ip| ip.load_balancer_backend_address_pools.iter().any(|x| x.id.eq_ignore_ascii_case(pool_id)),
            );
        if joins {
            let records = store.instances_of(&SetKey::of(&set.value))?.into_iter().map(|o| o.value).collect();
            out.push((set.value, records));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{activity_count, model, now, store, stored_set};
    use serde_json::json;

    fn vnet(group: &str, name: &str) -> VirtualNetwork {
        let mut v: VirtualNetwork =
            serde_json::from_value(json!({"addressSpace": {"addressPrefixes": ["10.0.0.0/16"]}})).unwrap();
        v.normalize(group, name).unwrap();
        v
    }

    #[test]
    fn a_resource_is_written_compare_and_swap_and_deleted_only_when_unused() {
        let store = store();
        let err = resource::<VirtualNetwork>(&store, "rg", "net").unwrap_err();
        assert_eq!(err.to_string(), "virtual network 'net' does not exist in resource group 'rg'");
        put_resource(&store, "rg", "net", &vnet("rg", "net"), Expected::Absent, "written".into(), now()).unwrap();
        let cur = resource::<VirtualNetwork>(&store, "rg", "net").unwrap();
        let stale =
            put_resource(&store, "rg", "net", &cur.value, Expected::Revision(cur.revision + 1), "again".into(), now());
        assert!(stale.unwrap_err().is_conflict());
        assert_eq!(resources_of::<VirtualNetwork>(&store, "rg").unwrap().len(), 1);
        assert_eq!(activity_count(&store), 1, "the lost write logged nothing");

        // A set that mentions the vnet keeps it.
        let mut set = stored_set("rg", "web", 1);
        set.model = model(1, json!({"tags": {"net": network_id("rg", "virtualNetworks", "net")}}));
        store.txn(vec![WriteOp::put(Kind::ScaleSet, set.key(), &set, Expect::Absent).unwrap()]).unwrap();
        let err = delete_resource::<VirtualNetwork>(&store, "rg", "net", now()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "virtual network 'net' is used by scale set(s) rg/web; change or delete them first"
        );
        store.txn(vec![WriteOp::delete(Kind::ScaleSet, set.key(), Expect::Any)]).unwrap();
        delete_resource::<VirtualNetwork>(&store, "rg", "net", now()).unwrap();
        assert!(find_resource::<VirtualNetwork>(&store, "rg", "net").unwrap().is_none());
    }
}
