//! Networks and load balancers, shaped as Azure's `Microsoft.Network` resources: virtual
//! networks with subnets, public IP addresses, and load balancers with frontends, backend pools,
//! probes, rules and inbound NAT pools.
//!
//! Why here: the API validates these, the reconciler will allocate addresses from them, and the
//! load-balancer data plane is configured from them; all three need one definition. Every
//! reference between resources is an Azure resource id (`{"id": "/resourceGroups/..."}`), so
//! `--query` paths and JSON match what Azure users know.

use crate::{cidr::Cidr, FieldError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// A reference to another resource or sub-resource, by its resource id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubResource {
    pub id: String,
}

impl SubResource {
    /// The last path segment of the id (the sub-resource's name).
    pub fn name(&self) -> &str {
        self.id.rsplit('/').next().unwrap_or("")
    }
}

/// `/resourceGroups/{g}/providers/Microsoft.Network/{kind}/{name}`.
pub fn network_id(group: &str, kind: &str, name: &str) -> String {
    format!("/resourceGroups/{group}/providers/Microsoft.Network/{kind}/{name}")
}

/// Checks a network resource or sub-resource name (1–80 of letters, digits, `-_.`).
pub fn check_child_name(field: &str, name: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() <= 80
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(field, format!("'{name}' is not a valid name: 1 to 80 of letters, digits, '-', '_', '.', starting with a letter or digit")))
    }
}

/// `addressSpace`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddressSpace {
    #[schema(value_type = Vec<String>)]
    pub address_prefixes: Vec<Cidr>,
}

/// A subnet of a virtual network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subnet {
    #[serde(default)]
    pub id: String,
    pub name: String,
    #[schema(value_type = String)]
    pub address_prefix: Cidr,
    /// Whether instances without a public IP reach beyond the vnet through the host's address
    /// (SNAT), as Azure's default outbound access. `false` makes the subnet private: only the
    /// vnet is reachable. Default `true` (bridged networking; see the user guide on Azure's
    /// own change of default).
    #[serde(default = "yes")]
    pub default_outbound_access: bool,
    /// The network security group that filters every NIC on the subnet (before the NIC's own
    /// on the way in, after it on the way out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_security_group: Option<SubResource>,
    #[serde(default = "succeeded")]
    pub provisioning_state: String,
}

fn yes() -> bool {
    true
}

pub(crate) fn succeeded() -> String {
    "Succeeded".into()
}

/// A virtual network: address space and subnets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualNetwork {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub resource_group: String,
    #[serde(default = "local")]
    pub location: String,
    pub address_space: AddressSpace,
    #[serde(default)]
    pub subnets: Vec<Subnet>,
    #[serde(default = "succeeded")]
    pub provisioning_state: String,
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
}

pub(crate) fn local() -> String {
    "local".into()
}

impl VirtualNetwork {
    /// Fills ids and checks prefixes: every subnet inside the address space, no two overlapping.
    pub fn normalize(&mut self, group: &str, name: &str) -> Result<(), FieldError> {
        self.id = network_id(group, "virtualNetworks", name);
        self.name = name.into();
        self.resource_group = group.into();
        if self.address_space.address_prefixes.is_empty() {
            return Err(FieldError::new("addressSpace.addressPrefixes", "needs at least one prefix, e.g. 10.0.0.0/16"));
        }
        for (i, a) in self.address_space.address_prefixes.iter().enumerate() {
            for b in &self.address_space.address_prefixes[i + 1..] {
                if a.overlaps(b) {
                    return Err(FieldError::new("addressSpace.addressPrefixes", format!("{a} overlaps {b}")));
                }
            }
        }
        let mut names = BTreeSet::new();
        for i in 0..self.subnets.len() {
            let s = &self.subnets[i];
            let field = format!("subnets[{i}]");
            check_child_name(&format!("{field}.name"), &s.name)?;
            if !names.insert(s.name.to_ascii_lowercase()) {
                return Err(FieldError::new(format!("{field}.name"), format!("subnet '{}' exists already", s.name)));
            }
            if !self.address_space.address_prefixes.iter().any(|p| p.covers(&s.address_prefix)) {
                let space: Vec<String> = self.address_space.address_prefixes.iter().map(|p| p.to_string()).collect();
                return Err(FieldError::new(
                    format!("{field}.addressPrefix"),
                    format!(
                        "{} is outside the virtual network's address space ({})",
                        s.address_prefix,
                        space.join(", ")
                    ),
                ));
            }
            if s.address_prefix.len > 29 {
                return Err(FieldError::new(
                    format!("{field}.addressPrefix"),
                    "must be /29 or larger (Azure reserves 5 addresses per subnet)",
                ));
            }
            for other in &self.subnets[..i] {
                if other.address_prefix.overlaps(&s.address_prefix) {
                    return Err(FieldError::new(
                        format!("{field}.addressPrefix"),
                        format!("{} overlaps subnet '{}' ({})", s.address_prefix, other.name, other.address_prefix),
                    ));
                }
            }
        }
        for s in &mut self.subnets {
            s.id = format!("{}/subnets/{}", self.id, s.name);
        }
        Ok(())
    }
}

/// A public IP address: the host address load-balancer frontends bind to. By default herd gives
/// each its own loopback address from 127.64.0.0/10.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublicIpAddress {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub resource_group: String,
    #[serde(default = "local")]
    pub location: String,
    /// The address; allocated by herd when absent.
    #[serde(default)]
    pub ip_address: Option<String>,
    #[serde(default = "static_alloc", rename = "publicIPAllocationMethod")]
    pub public_ip_allocation_method: String,
    /// The frontend using this address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_configuration: Option<SubResource>,
    #[serde(default = "succeeded")]
    pub provisioning_state: String,
}

fn static_alloc() -> String {
    "Static".into()
}

string_enum!(
    /// `probes[].protocol`.
    ProbeProtocol { Tcp = "Tcp", Http = "Http", Https = "Https" } default Tcp
);
string_enum!(
    /// `loadBalancingRules[].protocol` and NAT pools' protocol.
    TransportProtocol { Tcp = "Tcp", Udp = "Udp", All = "All" } default Tcp
);
string_enum!(
    /// `loadBalancingRules[].loadDistribution`.
    LoadDistribution { Default = "Default", SourceIp = "SourceIP", SourceIpProtocol = "SourceIPProtocol" } default Default
);

/// A frontend: the address rules listen on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FrontendIpConfiguration {
    #[serde(default)]
    pub id: String,
    pub name: String,
    #[serde(default, rename = "publicIPAddress", skip_serializing_if = "Option::is_none")]
    pub public_ip_address: Option<SubResource>,
}

/// A backend pool; scale sets join it through their network profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendAddressPool {
    #[serde(default)]
    pub id: String,
    pub name: String,
}

/// A health probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    #[serde(default)]
    pub id: String,
    pub name: String,
    pub protocol: ProbeProtocol,
    pub port: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_path: Option<String>,
    /// Seconds between probes (Azure's default 15; herd allows 1 to 3600).
    #[serde(default = "fifteen")]
    pub interval_in_seconds: i64,
    /// Consecutive results needed to change state (Azure's `numberOfProbes`/`probeThreshold`).
    #[serde(default = "two", alias = "numberOfProbes")]
    pub probe_threshold: i64,
}

fn fifteen() -> i64 {
    15
}
fn two() -> i64 {
    2
}
fn four() -> i64 {
    4
}

/// A load-balancing rule: frontend port → backend port on a pool's members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancingRule {
    #[serde(default)]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub protocol: TransportProtocol,
    pub frontend_port: i64,
    pub backend_port: i64,
    #[serde(rename = "frontendIPConfiguration")]
    pub frontend_ip_configuration: SubResource,
    pub backend_address_pool: SubResource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<SubResource>,
    #[serde(default)]
    pub load_distribution: LoadDistribution,
    #[serde(default = "four")]
    pub idle_timeout_in_minutes: i64,
    #[serde(default, rename = "enableFloatingIP")]
    pub enable_floating_ip: bool,
    #[serde(default)]
    pub enable_tcp_reset: bool,
    #[serde(default)]
    pub disable_outbound_snat: bool,
}

/// An inbound NAT pool: one frontend port per instance, forwarded to the instance's backend port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundNatPool {
    #[serde(default)]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub protocol: TransportProtocol,
    #[serde(rename = "frontendIPConfiguration")]
    pub frontend_ip_configuration: SubResource,
    pub frontend_port_range_start: i64,
    pub frontend_port_range_end: i64,
    pub backend_port: i64,
}

/// A load balancer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub resource_group: String,
    #[serde(default = "local")]
    pub location: String,
    #[serde(default, rename = "frontendIPConfigurations")]
    pub frontend_ip_configurations: Vec<FrontendIpConfiguration>,
    #[serde(default)]
    pub backend_address_pools: Vec<BackendAddressPool>,
    #[serde(default)]
    pub probes: Vec<Probe>,
    #[serde(default)]
    pub load_balancing_rules: Vec<LoadBalancingRule>,
    #[serde(default)]
    pub inbound_nat_pools: Vec<InboundNatPool>,
    #[serde(default = "succeeded")]
    pub provisioning_state: String,
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
}

/// Azure's instance metadata address. With bridged networking every vnet serves each instance
/// its own metadata there (port 80), as Azure does.
pub const METADATA_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 169, 254);

/// The sub-resource collections of a load balancer, as they appear in URLs and JSON.
pub const LB_COLLECTIONS: &[&str] =
    &["frontendIPConfigurations", "backendAddressPools", "probes", "loadBalancingRules", "inboundNatPools"];

fn port(field: String, p: i64) -> Result<(), FieldError> {
    if (1..=65535).contains(&p) {
        Ok(())
    } else {
        Err(FieldError::new(field, format!("{p} is not a port; allowed 1 to 65535")))
    }
}

fn unique<'a>(field: &str, names: impl Iterator<Item = &'a str>) -> Result<(), FieldError> {
    let mut seen = BTreeSet::new();
    for (i, n) in names.enumerate() {
        check_child_name(&format!("{field}[{i}].name"), n)?;
        if !seen.insert(n.to_ascii_lowercase()) {
            return Err(FieldError::new(format!("{field}[{i}].name"), format!("'{n}' is listed twice")));
        }
    }
    Ok(())
}

impl LoadBalancer {
    /// The id a sub-resource `name` of `collection` has in this load balancer.
    pub fn child_id(&self, collection: &str, name: &str) -> String {
        format!("{}/{collection}/{name}", self.id)
    }

    fn resolves(&self, field: &str, r: &SubResource, collection: &str, names: &[&str]) -> Result<(), FieldError> {
        let ok = names.iter().any(|n| r.id.eq_ignore_ascii_case(&self.child_id(collection, n)));
        if ok {
            Ok(())
        } else {
            let list =
                if names.is_empty() { "none exist".to_string() } else { format!("existing: {}", names.join(", ")) };
            Err(FieldError::new(
                field,
                format!("'{}' does not exist in load balancer '{}'; {list}", r.name(), self.name),
            ))
        }
    }

    /// Fills ids and checks every field and reference. `public_ips` are the ids of the public
    /// IPs that exist.
    pub fn normalize(&mut self, group: &str, name: &str, public_ips: &[String]) -> Result<(), FieldError> {
        self.id = network_id(group, "loadBalancers", name);
        self.name = name.into();
        self.resource_group = group.into();
        let id = self.id.clone();
        unique("frontendIPConfigurations", self.frontend_ip_configurations.iter().map(|f| f.name.as_str()))?;
        unique("backendAddressPools", self.backend_address_pools.iter().map(|f| f.name.as_str()))?;
        unique("probes", self.probes.iter().map(|f| f.name.as_str()))?;
        unique("loadBalancingRules", self.load_balancing_rules.iter().map(|f| f.name.as_str()))?;
        unique("inboundNatPools", self.inbound_nat_pools.iter().map(|f| f.name.as_str()))?;
        for f in &mut self.frontend_ip_configurations {
            f.id = format!("{id}/frontendIPConfigurations/{}", f.name);
        }
        for (i, f) in self.frontend_ip_configurations.iter().enumerate() {
            if let Some(p) = &f.public_ip_address {
                if !public_ips.iter().any(|x| x.eq_ignore_ascii_case(&p.id)) {
                    return Err(FieldError::new(
                        format!("frontendIPConfigurations[{i}].publicIPAddress"),
                        format!("public IP '{}' does not exist", p.name()),
                    ));
                }
            }
        }
        for p in &mut self.backend_address_pools {
            p.id = format!("{id}/backendAddressPools/{}", p.name);
        }
        for (i, p) in self.probes.iter_mut().enumerate() {
            p.id = format!("{id}/probes/{}", p.name);
            check_probe(&format!("probes[{i}]"), p)?;
        }
        let fe: Vec<String> = self.frontend_ip_configurations.iter().map(|f| f.name.clone()).collect();
        let fe: Vec<&str> = fe.iter().map(String::as_str).collect();
        let pools: Vec<String> = self.backend_address_pools.iter().map(|f| f.name.clone()).collect();
        let pools: Vec<&str> = pools.iter().map(String::as_str).collect();
        let probes: Vec<String> = self.probes.iter().map(|f| f.name.clone()).collect();
        let probes: Vec<&str> = probes.iter().map(String::as_str).collect();
        let mut taken: Vec<(String, i64, i64, String)> = Vec::new();
        for i in 0..self.load_balancing_rules.len() {
            let r = self.load_balancing_rules[i].clone();
            let f = format!("loadBalancingRules[{i}]");
            if r.protocol != TransportProtocol::Tcp {
                return Err(FieldError::not_supported(format!("{f}.protocol"), "Udp and All rules; use Tcp"));
            }
            port(format!("{f}.frontendPort"), r.frontend_port)?;
            port(format!("{f}.backendPort"), r.backend_port)?;
            self.resolves(
                &format!("{f}.frontendIPConfiguration"),
                &r.frontend_ip_configuration,
                "frontendIPConfigurations",
                &fe,
            )?;
            self.resolves(&format!("{f}.backendAddressPool"), &r.backend_address_pool, "backendAddressPools", &pools)?;
            if let Some(p) = &r.probe {
                self.resolves(&format!("{f}.probe"), p, "probes", &probes)?;
            }
            if !(4..=30).contains(&r.idle_timeout_in_minutes) {
                return Err(FieldError::new(
                    format!("{f}.idleTimeoutInMinutes"),
                    format!("{} is out of range; allowed 4 to 30", r.idle_timeout_in_minutes),
                ));
            }
            if r.enable_floating_ip {
                return Err(FieldError::not_supported(
                    format!("{f}.enableFloatingIP"),
                    "floating IP (direct server return)",
                ));
            }
            claim(
                &mut taken,
                &format!("{f}.frontendPort"),
                r.frontend_ip_configuration.name(),
                r.frontend_port,
                r.frontend_port,
                &r.name,
            )?;
            self.load_balancing_rules[i].id = format!("{id}/loadBalancingRules/{}", r.name);
        }
        for i in 0..self.inbound_nat_pools.len() {
            let n = self.inbound_nat_pools[i].clone();
            let f = format!("inboundNatPools[{i}]");
            if n.protocol != TransportProtocol::Tcp {
                return Err(FieldError::not_supported(format!("{f}.protocol"), "Udp and All NAT pools; use Tcp"));
            }
            port(format!("{f}.frontendPortRangeStart"), n.frontend_port_range_start)?;
            port(format!("{f}.frontendPortRangeEnd"), n.frontend_port_range_end)?;
            port(format!("{f}.backendPort"), n.backend_port)?;
            if n.frontend_port_range_end < n.frontend_port_range_start {
                return Err(FieldError::new(
                    format!("{f}.frontendPortRangeEnd"),
                    "must not be below frontendPortRangeStart",
                ));
            }
            self.resolves(
                &format!("{f}.frontendIPConfiguration"),
                &n.frontend_ip_configuration,
                "frontendIPConfigurations",
                &fe,
            )?;
            claim(
                &mut taken,
                &format!("{f}.frontendPortRangeStart"),
                n.frontend_ip_configuration.name(),
                n.frontend_port_range_start,
                n.frontend_port_range_end,
                &n.name,
            )?;
            self.inbound_nat_pools[i].id = format!("{id}/inboundNatPools/{}", n.name);
        }
        Ok(())
    }
}

/// Checks one probe's port, path, interval and threshold; `f` is its field path.
fn check_probe(f: &str, p: &Probe) -> Result<(), FieldError> {
    port(format!("{f}.port"), p.port)?;
    match (&p.protocol, &p.request_path) {
        (ProbeProtocol::Http | ProbeProtocol::Https, None) => {
            return Err(FieldError::new(format!("{f}.requestPath"), "an Http(s) probe needs a path, e.g. /"))
        }
        (ProbeProtocol::Http | ProbeProtocol::Https, Some(path)) if !path.starts_with('/') => {
            return Err(FieldError::new(format!("{f}.requestPath"), format!("'{path}' must start with '/'")))
        }
        (ProbeProtocol::Tcp, Some(_)) => {
            return Err(FieldError::new(format!("{f}.requestPath"), "a Tcp probe takes no path"))
        }
        _ => {}
    }
    if !(1..=3600).contains(&p.interval_in_seconds) {
        return Err(FieldError::new(
            format!("{f}.intervalInSeconds"),
            format!("{} is out of range; allowed 1 to 3600", p.interval_in_seconds),
        ));
    }
    if !(1..=100).contains(&p.probe_threshold) {
        return Err(FieldError::new(
            format!("{f}.probeThreshold"),
            format!("{} is out of range; allowed 1 to 100", p.probe_threshold),
        ));
    }
    Ok(())
}

/// Records that `owner` uses ports `lo..=hi` on `frontend`, failing if another already does.
fn claim(
    taken: &mut Vec<(String, i64, i64, String)>,
    field: &str,
    frontend: &str,
    lo: i64,
    hi: i64,
    owner: &str,
) -> Result<(), FieldError> {
    for (f, a, b, o) in taken.iter() {
        if f.eq_ignore_ascii_case(frontend) && lo <= *b && *a <= hi {
            let what = if lo == hi { format!("port {lo}") } else { format!("ports {lo}-{hi}") };
            return Err(FieldError::new(field, format!("{what} on frontend '{frontend}' is already used by '{o}'")));
        }
    }
    taken.push((frontend.to_string(), lo, hi, owner.to_string()));
    Ok(())
}

/// Whether a scale set's instances have a health source for rolling upgrades and repairs: a
/// `networkProfile.healthProbe`, or a probe on a load-balancing rule of a pool the set joins.
pub fn has_health_source(model: &crate::scale_set::ScaleSetModel, lbs: &[LoadBalancer]) -> bool {
    let Some(np) = model.virtual_machine_profile.network_profile.as_ref() else { return false };
    if np.health_probe.is_some() {
        return true;
    }
    let Some(ip) = np.primary() else { return false };
    lbs.iter().any(|lb| {
        lb.load_balancing_rules.iter().any(|rule| {
            rule.probe.is_some()
                && ip
                    .load_balancer_backend_address_pools
                    .iter()
                    .any(|p| p.id.eq_ignore_ascii_case(&rule.backend_address_pool.id))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vnet(v: serde_json::Value) -> Result<VirtualNetwork, FieldError> {
        let mut n: VirtualNetwork = serde_json::from_value(v).map_err(|e| FieldError::new("", e.to_string()))?;
        n.normalize("rg", "mynet")?;
        Ok(n)
    }

    #[test]
    fn subnets_must_fit_and_not_overlap() {
        let ok = vnet(json!({"addressSpace": {"addressPrefixes": ["10.0.0.0/16"]}, "subnets": [{"name": "web", "addressPrefix": "10.0.0.0/24"}]})).unwrap();
        assert_eq!(
            ok.subnets[0].id,
            "/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/mynet/subnets/web"
        );
        let e = vnet(json!({"addressSpace": {"addressPrefixes": ["10.0.0.0/16"]}, "subnets": [{"name": "web", "addressPrefix": "10.1.0.0/24"}]})).unwrap_err();
        assert!(e.message.contains("outside"), "{e}");
        let e = vnet(json!({"addressSpace": {"addressPrefixes": ["10.0.0.0/16"]}, "subnets": [
            {"name": "a", "addressPrefix": "10.0.0.0/24"}, {"name": "b", "addressPrefix": "10.0.0.128/25"}]}))
        .unwrap_err();
        assert!(e.message.contains("overlaps subnet 'a'"), "{e}");
        assert!(vnet(json!({"addressSpace": {"addressPrefixes": ["10.0.0.1/16"]}})).is_err());
    }

    fn lb(extra: serde_json::Value) -> Result<LoadBalancer, FieldError> {
        let base = "/resourceGroups/rg/providers/Microsoft.Network/loadBalancers/web-lb";
        let mut v = json!({
            "frontendIPConfigurations": [{"name": "loadBalancerFrontEnd", "publicIPAddress": {"id": "/resourceGroups/rg/providers/Microsoft.Network/publicIPAddresses/ip"}}],
            "backendAddressPools": [{"name": "web-lbBEPool"}],
            "probes": [{"name": "webprobe", "protocol": "Http", "port": 80, "requestPath": "/"}],
            "loadBalancingRules": [{"name": "r1", "protocol": "tcp", "frontendPort": 80, "backendPort": 80,
                "frontendIPConfiguration": {"id": format!("{base}/frontendIPConfigurations/loadBalancerFrontEnd")},
                "backendAddressPool": {"id": format!("{base}/backendAddressPools/web-lbBEPool")},
                "probe": {"id": format!("{base}/probes/webprobe")}}]
        });
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        let mut l: LoadBalancer = serde_json::from_value(v).map_err(|e| FieldError::new("", e.to_string()))?;
        l.normalize("rg", "web-lb", &["/resourceGroups/rg/providers/Microsoft.Network/publicIPAddresses/ip".into()])?;
        Ok(l)
    }

    #[test]
    fn load_balancer_references_and_ranges() {
        let ok = lb(json!({})).unwrap();
        assert_eq!(ok.load_balancing_rules[0].load_distribution, LoadDistribution::Default);
        assert_eq!(ok.probes[0].interval_in_seconds, 15);
        let base = "/resourceGroups/rg/providers/Microsoft.Network/loadBalancers/web-lb";
        let e = lb(json!({"probes": [{"name": "p", "protocol": "Http", "port": 0, "requestPath": "/"}]})).unwrap_err();
        assert_eq!(e.field, "probes[0].port");
        let e = lb(json!({"probes": [{"name": "webprobe", "protocol": "Http", "port": 80, "requestPath": "/", "intervalInSeconds": 0}]})).unwrap_err();
        assert_eq!(e.field, "probes[0].intervalInSeconds");
        let e = lb(json!({"probes": [{"name": "webprobe", "protocol": "Icmp", "port": 80}]})).unwrap_err();
        assert!(e.message.contains("Tcp, Http, Https"), "{e}");
        let e = lb(json!({"probes": []})).unwrap_err();
        assert!(e.field.ends_with(".probe") && e.message.contains("does not exist"), "{e:?}");
        let e = lb(json!({"backendAddressPools": [{"name": "other"}]})).unwrap_err();
        assert!(e.message.contains("existing: other"), "{e}");
        let rule2 = json!({"name": "r2", "frontendPort": 80, "backendPort": 8080,
            "frontendIPConfiguration": {"id": format!("{base}/frontendIPConfigurations/loadBalancerFrontEnd")},
            "backendAddressPool": {"id": format!("{base}/backendAddressPools/web-lbBEPool")}});
        let mut rules = lb(json!({})).unwrap().load_balancing_rules;
        rules.push(serde_json::from_value(rule2).unwrap());
        let e = lb(json!({"loadBalancingRules": rules})).unwrap_err();
        assert!(e.message.contains("already used by 'r1'"), "{e}");
        let nat = json!([{"name": "ssh", "frontendIPConfiguration": {"id": format!("{base}/frontendIPConfigurations/loadBalancerFrontEnd")},
            "frontendPortRangeStart": 50000, "frontendPortRangeEnd": 50119, "backendPort": 22}]);
        assert!(lb(json!({"inboundNatPools": nat})).is_ok());
        let bad_nat = json!([{"name": "ssh", "frontendIPConfiguration": {"id": format!("{base}/frontendIPConfigurations/loadBalancerFrontEnd")},
            "frontendPortRangeStart": 79, "frontendPortRangeEnd": 81, "backendPort": 22}]);
        assert!(lb(json!({"inboundNatPools": bad_nat})).unwrap_err().message.contains("already used"));
    }
}
