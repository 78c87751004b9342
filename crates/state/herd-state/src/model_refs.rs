//! Checking what a scale-set model refers to against what is stored: its image in the
//! gallery, its subnet (and the room left in it), its load-balancer pools, and a health source
//! when rolling upgrades or automatic repairs need one.
//!
//! Why here: these are not properties of the model alone (the model crate checks those) but of
//! the model next to the other stored records, so they read the store; a request is refused,
//! naming the field, before anything is written.

use crate::keys::ALL;
use crate::records::StateError;
use herd_model::image::{self, Image};
use herd_model::network::{LoadBalancer, VirtualNetwork};
use herd_model::public_pool::PublicIpPool;
use herd_model::scale_set::{ScaleSetModel, StoredScaleSet, UpgradeMode, PUBLIC_IP_FIELD};
use herd_model::{FieldError, ScaleSetName};
use herd_store::{Kind, Store, StoreExt};

/// Why a model's references do not hold.
#[derive(Debug, thiserror::Error)]
pub enum RefError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error(transparent)]
    State(#[from] StateError),
}

crate::records::store_error_via_state!(RefError);

const IP_CONFIG: &str = "virtualMachineProfile.networkProfile.networkInterfaceConfigurations[0].ipConfigurations[0]";

fn values<T: serde::de::DeserializeOwned>(store: &dyn Store, kind: Kind) -> Result<Vec<T>, RefError> {
    Ok(store.list_as::<T>(kind, ALL)?.into_iter().map(|o| o.value).collect())
}

/// Checks every reference of set `name`'s `model` (the model is already valid on its own).
pub fn check_references(store: &dyn Store, name: &ScaleSetName, model: &ScaleSetModel) -> Result<(), RefError> {
    check_image(store, model)?;
    check_network(store, name, model)?;
    check_health_source(store, model)
}

/// The model's image is in the gallery.
fn check_image(store: &dyn Store, model: &ScaleSetModel) -> Result<(), RefError> {
    let field = "virtualMachineProfile.storageProfile.imageReference";
    let urn = model.virtual_machine_profile.storage_profile.image_reference.urn()?;
    let images: Vec<Image> = values(store, Kind::Image)?;
    if image::resolve(&images, &urn).is_none() {
        let mut known: Vec<String> = images.iter().map(|i| i.urn.clone()).collect();
        known.sort();
        let hint = if known.is_empty() {
            "the gallery is empty; add one with 'herd image import'".to_string()
        } else {
            format!("available: {}", known.join(", "))
        };
        return Err(FieldError::new(field, format!("image {urn} is not in the gallery; {hint}")).into());
    }
    Ok(())
}

/// Rolling upgrades and automatic repairs need a health source.
fn check_health_source(store: &dyn Store, model: &ScaleSetModel) -> Result<(), RefError> {
    let repairs = model.automatic_repairs_policy.as_ref().is_some_and(|p| p.enabled);
    let rolling = model.upgrade_policy.mode == UpgradeMode::Rolling;
    let lbs: Vec<LoadBalancer> = if rolling || repairs { values(store, Kind::LoadBalancer)? } else { vec![] };
    if repairs && !herd_model::network::has_health_source(model, &lbs) {
        return Err(FieldError::new(
            "automaticRepairsPolicy.enabled",
            "automatic repairs need a health source: a load-balancer rule with a probe on the set's backend pool, \
             or virtualMachineProfile.networkProfile.healthProbe",
        )
        .into());
    }
    if rolling && !herd_model::network::has_health_source(model, &lbs) {
        return Err(FieldError::new(
            "upgradePolicy.mode",
            "Rolling needs a health source: a load-balancer rule with a probe on the set's backend pool \
             ('herd network lb probe create' and 'herd network lb rule create --probe-name'), or \
             virtualMachineProfile.networkProfile.healthProbe; allowed without one: Manual, Automatic",
        )
        .into());
    }
    Ok(())
}

/// The network profile's subnet and load-balancer pools exist, and the subnet has room for the
/// set (with its overprovisioning extras) next to the other sets using it.
fn check_network(store: &dyn Store, name: &ScaleSetName, model: &ScaleSetModel) -> Result<(), RefError> {
    let Some(ip) = model.virtual_machine_profile.network_profile.as_ref().and_then(|n| n.primary()) else {
        return Ok(());
    };
    if let Some(sub) = &ip.subnet {
        check_subnet_room(store, name, model, &sub.id)?;
    }
    let nic =
        model.virtual_machine_profile.network_profile.as_ref().and_then(|n| n.network_interface_configurations.first());
    if let Some(g) = nic.and_then(|n| n.network_security_group.as_ref()) {
        let groups: Vec<herd_model::nsg::NetworkSecurityGroup> = values(store, Kind::NetworkSecurityGroup)?;
        if !groups.iter().any(|x| x.id.eq_ignore_ascii_case(&g.id)) {
            return Err(FieldError::new(
                "virtualMachineProfile.networkProfile.networkInterfaceConfigurations[0].networkSecurityGroup",
                format!("network security group '{}' does not exist; create it with 'herd network nsg create'", g.id),
            )
            .into());
        }
    }
    let lbs: Vec<LoadBalancer> = values(store, Kind::LoadBalancer)?;
    let pools = [
        (
            "loadBalancerBackendAddressPools",
            "backendAddressPools",
            "backend pool",
            &ip.load_balancer_backend_address_pools,
        ),
        ("loadBalancerInboundNatPools", "inboundNatPools", "inbound NAT pool", &ip.load_balancer_inbound_nat_pools),
    ];
    for (field, collection, what, refs) in pools {
        for (i, p) in refs.iter().enumerate() {
            if !pool_exists(&lbs, collection, &p.id) {
                let e =
                    FieldError::new(format!("{IP_CONFIG}.{field}[{i}]"), format!("{what} '{}' does not exist", p.id));
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// A model that gives instances public IPs (`publicIPAddressConfiguration`) needs bridged
/// networking and the server's public pool, with room in the pool for the set (with its
/// overprovisioning extras) next to the other sets with public IPs, as the subnet is checked.
pub fn check_public_ip(
    store: &dyn Store,
    name: &ScaleSetName,
    model: &ScaleSetModel,
    bridged: bool,
    pool: Option<PublicIpPool>,
) -> Result<(), RefError> {
    let asks =
        |m: &ScaleSetModel| m.virtual_machine_profile.network_profile.as_ref().and_then(|n| n.public_ip()).is_some();
    if !asks(model) {
        return Ok(());
    }
    if !bridged {
        return Err(FieldError::new(
            PUBLIC_IP_FIELD,
            "a public IP per instance needs bridged networking (the NAT is to the instance's private IP on its \
             subnet); this server runs host-local networking: set [network] mode = \"bridged\" or remove it",
        )
        .into());
    }
    let Some(pool) = pool else {
        return Err(FieldError::new(
            PUBLIC_IP_FIELD,
            format!(
                "this server has no public IP pool to take addresses from; add {} = \"CIDR\" (a prefix routed to \
                 this host) to its config",
                herd_model::public_pool::SETTING
            ),
        )
        .into());
    };
    let with_extras = |m: &ScaleSetModel| {
        let c = m.sku.capacity.max(0);
        if m.overprovision {
            c + (c * 20 + 99) / 100
        } else {
            c
        }
    };
    let others: i64 = values::<StoredScaleSet>(store, Kind::ScaleSet)?
        .iter()
        .filter(|s| s.name != *name && asks(&s.model))
        .map(|s| with_extras(&s.model))
        .sum();
    let mine = with_extras(model);
    let want = mine + others;
    let room = pool.usable() as i64;
    if want > room {
        let in_use = values::<herd_model::instance::InstanceRecord>(store, Kind::Instance)?
            .iter()
            .filter(|r| r.public_ip.is_some())
            .count();
        let extras = if model.overprovision { " with overprovisioning" } else { "" };
        return Err(FieldError::new(
            "sku.capacity",
            format!(
                "the public IP pool {pool} ({}) has {room} usable addresses, {in_use} in use; {want} are needed \
                 ({mine} for this set{extras}, {others} for the other sets with public IPs)",
                herd_model::public_pool::SETTING
            ),
        )
        .into());
    }
    Ok(())
}

/// The subnet `subnet_id` exists and holds the set next to the other sets on it.
fn check_subnet_room(
    store: &dyn Store,
    name: &ScaleSetName,
    model: &ScaleSetModel,
    subnet_id: &str,
) -> Result<(), RefError> {
    let vnets: Vec<VirtualNetwork> = values(store, Kind::VirtualNetwork)?;
    let found = vnets.iter().flat_map(|v| v.subnets.iter()).find(|s| s.id.eq_ignore_ascii_case(subnet_id));
    let Some(found) = found else {
        return Err(FieldError::new(
            format!("{IP_CONFIG}.subnet"),
            format!("subnet '{subnet_id}' does not exist; create it with 'herd network vnet subnet create'"),
        )
        .into());
    };
    let others: i64 = values::<StoredScaleSet>(store, Kind::ScaleSet)?
        .into_iter()
        .filter(|s| s.name != *name)
        .filter(|s| {
            s.model
                .virtual_machine_profile
                .network_profile
                .as_ref()
                .and_then(|n| n.primary())
                .and_then(|p| p.subnet.as_ref())
                .is_some_and(|s| s.id.eq_ignore_ascii_case(subnet_id))
        })
        .map(|s| s.model.sku.capacity)
        .sum();
    let room = found.address_prefix.size() as i64 - 5;
    let want = model.sku.capacity + (model.sku.capacity * 20 + 99) / 100 + others;
    if want > room {
        return Err(FieldError::new(
            "sku.capacity",
            format!(
                "subnet {} ({}) has {room} usable addresses; {want} are needed with overprovisioning and the other sets on it",
                found.name, found.address_prefix
            ),
        )
        .into());
    }
    Ok(())
}

/// Whether `id` names a child of collection `coll` (`backendAddressPools`, `inboundNatPools`)
/// of one of `lbs`.
fn pool_exists(lbs: &[LoadBalancer], coll: &str, id: &str) -> bool {
    lbs.iter().any(|l| {
        l.id.len() < id.len() && id.to_ascii_lowercase().starts_with(&l.id.to_ascii_lowercase()) && {
            let rest = &id[l.id.len()..];
            let child = rest.trim_start_matches('/').split_once('/').map(|(c, n)| (c.to_string(), n.to_string()));
            child.is_some_and(|(c, n)| {
                c.eq_ignore_ascii_case(coll)
                    && match coll {
                        "backendAddressPools" => {
                            l.backend_address_pools.iter().any(|p| p.name.eq_ignore_ascii_case(&n))
                        }
                        _ => l.inbound_nat_pools.iter().any(|p| p.name.eq_ignore_ascii_case(&n)),
                    }
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{model, set_name, store};
    use serde_json::json;

    #[test]
    fn public_ips_need_bridged_networking_a_pool_and_room_in_it() {
        let store = store();
        let asks = |capacity: i64, overprovision: bool| {
            model(
                capacity,
                json!({"overprovision": overprovision, "virtualMachineProfile": {
                    "osProfile": {"computerNamePrefix": "web"},
                    "storageProfile": {"imageReference": {"publisher": "P", "offer": "O", "sku": "S", "version": "1"}},
                    "networkProfile": {"networkInterfaceConfigurations": [{"name": "nic", "ipConfigurations": [{"name": "ip",
                        "subnet": {"id": "/s"}, "publicIPAddressConfiguration": {"name": "pub"}}]}]}}}),
            )
        };
        let pool = PublicIpPool::parse("198.51.100.0/28").ok();
        let web = set_name("web");
        assert!(check_public_ip(&store, &web, &model(20, json!({})), false, None).is_ok(), "not asked: not checked");
        let refused = |m: &ScaleSetModel, bridged: bool, pool: Option<PublicIpPool>| {
            let Err(RefError::Invalid(f)) = check_public_ip(&store, &web, m, bridged, pool) else { panic!("accepted") };
            f
        };
        let f = refused(&asks(1, false), false, pool);
        assert!(f.field == PUBLIC_IP_FIELD && f.message.contains("[network] mode = \"bridged\""), "{f:?}");
        let f = refused(&asks(1, false), true, None);
        assert!(f.field == PUBLIC_IP_FIELD && f.message.contains("add [network] public_ip_pool"), "{f:?}");
        // A /28 holds 14: 14 without overprovisioning fit, 12 with its 3 extras do not.
        assert!(check_public_ip(&store, &web, &asks(14, false), true, pool).is_ok());
        let f = refused(&asks(12, true), true, pool);
        assert_eq!(f.field, "sku.capacity");
        assert!(
            f.message.contains("the public IP pool 198.51.100.0/28 ([network] public_ip_pool) has 14 usable addresses, 0 in use; 15 are needed (15 for this set with overprovisioning, 0 for the other sets with public IPs)"),
            "{}",
            f.message
        );
    }

    #[test]
    fn a_missing_image_or_subnet_is_refused_naming_the_field() {
        let store = store();
        let err = check_references(&store, &set_name("web"), &model(1, json!({}))).unwrap_err();
        let RefError::Invalid(f) = err else { panic!("{err:?}") };
        assert_eq!(f.field, "virtualMachineProfile.storageProfile.imageReference");
        assert!(f.message.contains("the gallery is empty"), "{}", f.message);

        let with_subnet = model(1, json!({}));
        let mut doc = serde_json::to_value(&with_subnet).unwrap();
        doc["virtualMachineProfile"]["networkProfile"] = json!({"networkInterfaceConfigurations": [{"name": "nic",
            "ipConfigurations": [{"name": "ip", "subnet": {"id": "/resourceGroups/rg/virtualNetworks/v/subnets/s"}}]}]});
        let m = ScaleSetModel::from_json(doc).unwrap();
        let err = check_network(&store, &set_name("web"), &m).unwrap_err();
        let RefError::Invalid(f) = err else { panic!("{err:?}") };
        assert!(f.field.ends_with("ipConfigurations[0].subnet"), "{}", f.field);
        assert!(f.message.contains("does not exist"), "{}", f.message);
    }
}
