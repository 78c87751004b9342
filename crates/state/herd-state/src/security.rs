//! The network security groups that apply at each instance's NIC: its subnet's and its scale
//! set's NIC configuration's, with the service tags resolved for where the NIC sits.
//!
//! Why here: two readers need the same answer from the same records. The server's security
//! controller turns every NIC's answer into nftables rules on the host (within a second of a
//! rule change), and `list-effective-nsg` shows one NIC's. Both go through [`Lookup`], so what
//! an operator sees is what the host enforces.

use crate::keys::SetKey;
use crate::records::{Records, StateError};
use herd_model::instance::InstanceRecord;
use herd_model::network::{SubResource, Subnet, VirtualNetwork};
use herd_model::nsg::{
    effective, EffectiveNetworkSecurityGroups, NetworkSecurityGroup, NicSecurity, NsgAssociation, TagContext,
};
use herd_model::scale_set::StoredScaleSet;
use herd_store::Store;
use std::net::Ipv4Addr;

/// The address herd's health probes to `subnet` come from ([`herd_model::nsg::probe_source`]).
pub fn probe_source(subnet: &Subnet) -> Option<Ipv4Addr> {
    herd_model::nsg::probe_source(&subnet.address_prefix)
}

/// The address the load balancer's connections to `subnet` come from
/// ([`herd_model::nsg::lb_source`]).
pub fn lb_source(subnet: &Subnet) -> Option<Ipv4Addr> {
    herd_model::nsg::lb_source(&subnet.address_prefix)
}

/// The vnets and NSGs, read once, to answer for many NICs.
pub struct Lookup {
    vnets: Vec<VirtualNetwork>,
    nsgs: Vec<NetworkSecurityGroup>,
}

/// The groups that apply at one set's NICs, and what the tags mean there.
pub struct NicGroups<'a> {
    pub ctx: TagContext,
    pub subnet: Option<(&'a Subnet, &'a NetworkSecurityGroup)>,
    pub nic: Option<&'a NetworkSecurityGroup>,
}

impl Lookup {
    pub fn load(store: &dyn Store) -> Result<Self, StateError> {
        Ok(Lookup {
            vnets: store.virtual_networks()?.into_iter().map(|v| v.value).collect(),
            nsgs: store.security_groups()?.into_iter().map(|v| v.value).collect(),
        })
    }

    /// Every vnet.
    pub fn vnets(&self) -> &[VirtualNetwork] {
        &self.vnets
    }

    /// The inbound stages at `set`'s NICs (its subnet's NSG, then its NIC's): what the load
    /// balancer admits clients by. None when no NSG applies.
    pub fn inbound_of(&self, set: &StoredScaleSet) -> Option<herd_model::nsg::Stages> {
        if self.nsgs.is_empty() {
            return None;
        }
        let g = self.for_set(set)?;
        NicSecurity::of(Ipv4Addr::UNSPECIFIED, g.subnet.map(|(_, n)| n), g.nic, &g.ctx).map(|s| s.inbound)
    }

    fn nsg(&self, r: &SubResource) -> Option<&NetworkSecurityGroup> {
        self.nsgs.iter().find(|g| g.id.eq_ignore_ascii_case(&r.id))
    }

    /// The groups of `set`'s NICs; None when the set has no subnet (host-local networking).
    pub fn for_set(&self, set: &StoredScaleSet) -> Option<NicGroups<'_>> {
        let np = set.model.virtual_machine_profile.network_profile.as_ref()?;
        let subnet_id = &np.primary()?.subnet.as_ref()?.id;
        let (vnet, subnet) = self
            .vnets
            .iter()
            .find_map(|v| v.subnets.iter().find(|s| s.id.eq_ignore_ascii_case(subnet_id)).map(|s| (v, s)))?;
        let ctx = TagContext {
            virtual_network: vnet.address_space.address_prefixes.clone(),
            load_balancer: probe_source(subnet).into_iter().collect(),
        };
        let sub = subnet.network_security_group.as_ref().and_then(|r| self.nsg(r)).map(|g| (subnet, g));
        let nic = np.network_interface_configurations.first().and_then(|n| n.network_security_group.as_ref());
        Some(NicGroups { ctx, subnet: sub, nic: nic.and_then(|r| self.nsg(r)) })
    }
}

/// Every instance NIC that an NSG filters, keyed by the instance's `group/set/id` (the owner
/// name the host network records its port under).
pub fn policies(store: &dyn Store) -> Result<Vec<(String, NicSecurity)>, StateError> {
    let lookup = Lookup::load(store)?;
    let mut out = Vec::new();
    if lookup.nsgs.is_empty() {
        // No group, no filtered NIC: the sets and instances (the costly reads, woken by every
        // instance commit) are not read at all.
        return Ok(out);
    }
    for set in store.scale_sets()? {
        let Some(groups) = lookup.for_set(&set.value) else { continue };
        if groups.subnet.is_none() && groups.nic.is_none() {
            continue;
        }
        for r in store.instances_of(&SetKey::of(&set.value))? {
            let Some(address) = r.value.private_ip.as_deref().and_then(|a| a.parse().ok()) else { continue };
            let sec = NicSecurity::of(address, groups.subnet.map(|(_, g)| g), groups.nic, &groups.ctx);
            if let Some(sec) = sec {
                out.push((format!("{}/{}/{}", set.value.group, set.value.name, r.value.instance_id), sec));
            }
        }
    }
    Ok(out)
}

/// The id Azure gives a scale-set instance's NIC.
pub fn nic_id(set: &StoredScaleSet, r: &InstanceRecord) -> String {
    let nic = set
        .model
        .virtual_machine_profile
        .network_profile
        .as_ref()
        .and_then(|n| n.network_interface_configurations.first())
        .map_or("nic", |n| n.name.as_str());
    format!(
        "{}/virtualMachines/{}/networkInterfaces/{nic}",
        StoredScaleSet::resource_id(set.group.as_str(), set.name.as_str()),
        r.instance_id
    )
}

/// What `list-effective-nsg` shows for instance `r` of `set`: the subnet's NSG then the NIC's.
pub fn effective_of(lookup: &Lookup, set: &StoredScaleSet, r: &InstanceRecord) -> EffectiveNetworkSecurityGroups {
    let mut value = Vec::new();
    if let Some(groups) = lookup.for_set(set) {
        if let Some((subnet, g)) = groups.subnet {
            let assoc = NsgAssociation { subnet: Some(SubResource { id: subnet.id.clone() }), network_interface: None };
            value.push(effective(g, assoc, &groups.ctx));
        }
        if let Some(g) = groups.nic {
            let assoc = NsgAssociation { subnet: None, network_interface: Some(SubResource { id: nic_id(set, r) }) };
            value.push(effective(g, assoc, &groups.ctx));
        }
    }
    EffectiveNetworkSecurityGroups { value }
}
