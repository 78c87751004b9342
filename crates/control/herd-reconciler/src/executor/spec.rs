//! Instance specs: what the driver is told to build for a record (image, size, addresses,
//! the guest's seed and forwarded ports, the bridge in bridged mode).

use super::Reconciler;
use crate::draft::{subnet_of, Ipam};
use herd_driver::{DriverError, InstanceSpec};
use herd_model::{
    image::{self, Image},
    instance::InstanceRecord,
    network::LoadBalancer,
    scale_set::StoredScaleSet,
    InstanceKey,
};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// What an instance spec is built from besides the set and the record.
pub(super) struct SpecInputs<'a> {
    pub(super) images: &'a [Image],
    pub(super) lbs: &'a [LoadBalancer],
    pub(super) secrets: &'a BTreeMap<String, Result<Option<serde_json::Value>, String>>,
}

impl Reconciler {
    pub(super) fn spec(
        &self,
        set: &StoredScaleSet,
        r: &InstanceRecord,
        inputs: &SpecInputs<'_>,
        ipam: &Ipam,
    ) -> Result<InstanceSpec, DriverError> {
        let key = InstanceKey { group: set.group.clone(), set: set.name.clone(), id: r.instance_id };
        // What the model itself gets wrong fails the same way every time: permanent.
        let invalid = |reason: String| DriverError::InvalidSpec { key: key.clone(), reason };
        let urn = set
            .model
            .virtual_machine_profile
            .storage_profile
            .image_reference
            .urn()
            .map_err(|e| invalid(e.to_string()))?;
        let img =
            image::resolve(inputs.images, &urn).ok_or_else(|| invalid(format!("image {urn} is not in the gallery")))?;
        let size = self
            .config
            .skus
            .lookup(&set.model.sku.name)
            .map(|(_, s)| s)
            .ok_or_else(|| invalid(format!("unknown SKU {}", set.model.sku.name)))?;
        let os = &set.model.virtual_machine_profile.os_profile;
        // Reading and opening the secrets can fail for a moment (the store): not classified.
        let guest = if self.config.runs_as_vm(&img.source) {
            self.guest_setup(set, img, inputs).map_err(DriverError::Failed)?
        } else {
            Default::default()
        };
        Ok(InstanceSpec {
            key,
            computer_name: r.computer_name.clone(),
            image: img.source.clone(),
            size,
            reach_address: r.reach_address.clone(),
            model_generation: set.model_generation,
            admin_username: os.admin_username.clone(),
            custom_data: os.custom_data.clone(),
            metadata: Default::default(),
            // Bridged instances ask at Azure's address on their vnet (the host sends each one's
            // requests to its own listener: herd_hostnet::metadata); others on their reach
            // address.
            metadata_endpoint: self.config.metadata_port.and_then(|port| {
                if self.config.bridged && r.private_ip.as_deref() == Some(r.reach_address.as_str()) {
                    return Some(std::net::SocketAddr::new(herd_model::network::METADATA_ADDRESS.into(), 80));
                }
                r.reach_address.parse::<std::net::IpAddr>().ok().map(|ip| std::net::SocketAddr::new(ip, port))
            }),
            network: self.attachment(set, r, ipam),
            guest,
            host: r.host.clone(),
        })
    }

    /// What a VM's seed and command line need beyond the basics.
    fn guest_setup(
        &self,
        set: &StoredScaleSet,
        img: &Image,
        inputs: &SpecInputs<'_>,
    ) -> Result<herd_driver::GuestSetup, String> {
        let p = &set.model.virtual_machine_profile;
        let ssh_public_keys = p
            .os_profile
            .linux_configuration
            .as_ref()
            .map(|l| l.ssh.public_keys.iter().map(|k| k.key_data.trim().to_string()).collect())
            .unwrap_or_default();
        let secrets: herd_model::scale_set::Secrets = match inputs.secrets.get(&set.key()) {
            Some(Ok(Some(sealed))) => self.sealer.open(sealed).map_err(|e| e.to_string())?,
            Some(Ok(None)) | None => Default::default(),
            Some(Err(e)) => return Err(e.clone()),
        };
        let admin_password_hash = match &secrets.admin_password {
            Some(pw) => {
                let params =
                    sha_crypt::Sha512Params::new(5000).map_err(|_| "password hashing parameters".to_string())?;
                Some(
                    sha_crypt::sha512_simple(pw, &params)
                        .map_err(|_| "the admin password could not be hashed".to_string())?,
                )
            }
            None => None,
        };
        let data_disks = p
            .storage_profile
            .data_disks
            .iter()
            .map(|d| herd_driver::DataDisk { lun: d.lun, size_gb: d.disk_size_gb })
            .collect();
        let mut forward_ports: Vec<u16> = self.config.extra_ports.clone();
        forward_ports.extend(model_ports(set, inputs.lbs));
        forward_ports.sort_unstable();
        forward_ports.dedup();
        Ok(herd_driver::GuestSetup {
            ssh_public_keys,
            admin_password_hash,
            data_disks,
            forward_ports,
            guest_agent: img.guest_agent,
        })
    }

    /// In bridged mode, the bridge of the set's subnet and the instance's address on it.
    pub(super) fn attachment(
        &self,
        set: &StoredScaleSet,
        r: &InstanceRecord,
        ipam: &Ipam,
    ) -> Option<herd_driver::NetworkAttachment> {
        if !self.config.bridged {
            return None;
        }
        let subnet = subnet_of(set)?;
        let cidr = *ipam.subnets.get(&subnet)?;
        let address: Ipv4Addr = r.private_ip.as_deref()?.parse().ok()?;
        let name = |prefix: &str, of: &str| {
            let h = herd_driver::stable_hash(format!("{}|{of}", self.config.address_block));
            format!("{prefix}{:012x}", h & 0xffff_ffff_ffff)
        };
        // The vnet is the subnet id up to `/subnets/`: its instances share one DNS zone.
        let vnet = subnet.rsplit_once("/subnets/").map_or(subnet.as_str(), |(v, _)| v);
        Some(herd_driver::NetworkAttachment {
            bridge: name("hb", &subnet),
            vnet: name("hz", vnet),
            mtu: self.config.vnet_mtu,
            outbound: !ipam.private.contains(&subnet),
            gateway: cidr.nth(1)?,
            prefix_len: cidr.len,
            address,
            public_address: r.public_ip.as_deref().and_then(|a| a.parse().ok()),
            public_idle_timeout_minutes: set
                .model
                .virtual_machine_profile
                .network_profile
                .as_ref()
                .and_then(|n| n.public_ip())
                .and_then(|p| u16::try_from(p.idle_timeout_in_minutes).ok()),
        })
    }
}

/// Guest ports the model's load balancers reach: backend and probe ports of the rules on
/// the pools the set joins, and backend ports of its NAT pools.
fn model_ports(set: &StoredScaleSet, lbs: &[LoadBalancer]) -> Vec<u16> {
    let Some(ip) = set.model.virtual_machine_profile.network_profile.as_ref().and_then(|n| n.primary()) else {
        return vec![];
    };
    let refers = |ids: &[herd_model::network::SubResource], lb: &LoadBalancer, coll: &str, name: &str| {
        ids.iter().any(|s| s.id.eq_ignore_ascii_case(&format!("{}/{coll}/{name}", lb.id)))
    };
    let mut out = Vec::new();
    for lb in lbs {
        for rule in &lb.load_balancing_rules {
            let pool = rule.backend_address_pool.id.rsplit('/').next().unwrap_or("");
            if refers(&ip.load_balancer_backend_address_pools, lb, "backendAddressPools", pool) {
                out.extend(u16::try_from(rule.backend_port).ok());
                if let Some(probe) = rule.probe.as_ref().and_then(|p| p.id.rsplit('/').next()) {
                    if let Some(pr) = lb.probes.iter().find(|x| x.name.eq_ignore_ascii_case(probe)) {
                        out.extend(u16::try_from(pr.port).ok());
                    }
                }
            }
        }
        for nat in &lb.inbound_nat_pools {
            if refers(&ip.load_balancer_inbound_nat_pools, lb, "inboundNatPools", &nat.name) {
                out.extend(u16::try_from(nat.backend_port).ok());
            }
        }
    }
    out
}
