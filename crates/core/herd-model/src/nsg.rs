//! Network security groups, in Azure's semantics: prioritised Allow/Deny rules per direction,
//! with default rules that cannot be deleted, service tags, and the order in which a subnet's
//! and a NIC's groups are evaluated.
//!
//! Why here: the API validates groups and rules, the server turns a NIC's groups into nftables
//! rules on the host, `list-effective-nsg` shows them, and the load balancer admits a client
//! only if the backend NIC's rules allow it. All of them need one definition of what a rule
//! means, so the resolved form ([`ResolvedRule`]) and its evaluation ([`allows`]) live here too,
//! pure and testable without a kernel.
//!
//! ```text
//!   inbound packet ──▶ subnet NSG ──Allow──▶ NIC NSG ──Allow──▶ delivered
//!                          │ Deny               │ Deny
//!                          ▼                    ▼
//!                        dropped              dropped
//!   outbound: the NIC's NSG first, then the subnet's. A missing NSG is skipped; with none
//!   at all, everything passes. Within one NSG the lowest priority number that matches decides;
//!   the default rules (65000, 65001, 65500) always match last. Rules are stateful: replies to
//!   an allowed flow pass both ways.
//! ```

use crate::network::{local, network_id, succeeded, SubResource};
use crate::{cidr::Cidr, FieldError};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

string_enum!(
    /// `securityRules[].direction`.
    SecurityRuleDirection { Inbound = "Inbound", Outbound = "Outbound" } default Inbound
);
string_enum!(
    /// `securityRules[].access`.
    SecurityRuleAccess { Allow = "Allow", Deny = "Deny" } default Allow
);
string_enum!(
    /// `securityRules[].protocol`.
    SecurityRuleProtocol { Tcp = "Tcp", Udp = "Udp", Icmp = "Icmp", Any = "*" } default Any
);

/// The lowest and highest priority a user rule may have (Azure's range).
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i64> = 100..=4096;

/// The reserved address of a subnet that herd's health probes come from: its `.2` (Azure maps
/// `.2` and `.3` to its DNS; herd uses them for its own sources). Hosts put it on the subnet's
/// bridge; NSGs know it as `AzureLoadBalancer`.
pub fn probe_source(prefix: &Cidr) -> Option<Ipv4Addr> {
    prefix.nth(2)
}

/// The reserved address of a subnet that the load balancer's connections to its instances come
/// from: its `.3`. The load balancer admits each client by the backend NIC's inbound rules
/// itself (it sees the client's address; the NIC would see only this one), so the host's NSG
/// table lets connections from it through.
pub fn lb_source(prefix: &Cidr) -> Option<Ipv4Addr> {
    prefix.nth(3)
}

/// The service tags a rule's address prefixes may name.
pub const SERVICE_TAGS: &[&str] = &["VirtualNetwork", "AzureLoadBalancer", "Internet"];

/// One security rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecurityRule {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub protocol: SecurityRuleProtocol,
    /// One prefix (Azure's singular form); merged into `sourceAddressPrefixes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address_prefix: Option<String>,
    /// CIDR prefixes, addresses, `*`, or the service tags `VirtualNetwork`,
    /// `AzureLoadBalancer`, `Internet`.
    #[serde(default)]
    pub source_address_prefixes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_port_range: Option<String>,
    /// `*`, a port, or a range `low-high`.
    #[serde(default)]
    pub source_port_ranges: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_address_prefix: Option<String>,
    #[serde(default)]
    pub destination_address_prefixes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port_range: Option<String>,
    #[serde(default)]
    pub destination_port_ranges: Vec<String>,
    pub access: SecurityRuleAccess,
    /// 100 to 4096 for user rules; unique per direction within the group.
    pub priority: i64,
    pub direction: SecurityRuleDirection,
    #[serde(default = "succeeded")]
    pub provisioning_state: String,
}

/// A network security group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkSecurityGroup {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub resource_group: String,
    #[serde(default = "local")]
    pub location: String,
    #[serde(default)]
    pub security_rules: Vec<SecurityRule>,
    /// Filled by herd: the six rules every group has (read-only).
    #[serde(default)]
    pub default_security_rules: Vec<SecurityRule>,
    #[serde(default = "succeeded")]
    pub provisioning_state: String,
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
}

/// What an address prefix of a rule names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressMatch {
    Any,
    Prefix(Cidr),
    /// The NIC's virtual network's address space.
    VirtualNetwork,
    /// The addresses herd's health probes come from.
    AzureLoadBalancer,
    /// Everything outside the virtual network.
    Internet,
}

impl AddressMatch {
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldError> {
        let t = s.trim();
        if t == "*" {
            return Ok(AddressMatch::Any);
        }
        for (tag, m) in [
            ("VirtualNetwork", AddressMatch::VirtualNetwork),
            ("AzureLoadBalancer", AddressMatch::AzureLoadBalancer),
            ("Internet", AddressMatch::Internet),
        ] {
            if t.eq_ignore_ascii_case(tag) {
                return Ok(m);
            }
        }
        if let Ok(ip) = t.parse::<Ipv4Addr>() {
            return Ok(AddressMatch::Prefix(Cidr { addr: ip, len: 32 }));
        }
        if t.contains('/') {
            return Cidr::parse(field, t).map(AddressMatch::Prefix);
        }
        Err(FieldError::new(
            field,
            format!(
                "'{s}' is not an address prefix; allowed: '*', an IPv4 address or prefix (10.0.0.0/24), or a service tag ({})",
                SERVICE_TAGS.join(", ")
            ),
        ))
    }
}

/// A port range, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    pub const ALL: PortRange = PortRange { low: 0, high: 65535 };

    pub fn parse(field: &str, s: &str) -> Result<Self, FieldError> {
        let t = s.trim();
        if t == "*" {
            return Ok(PortRange::ALL);
        }
        let bad = || {
            FieldError::new(
                field,
                format!(
                    "'{s}' is not a port range; allowed: '*', a port (80) or a range (8000-8080) within 0 to 65535"
                ),
            )
        };
        let (a, b) = t.split_once('-').unwrap_or((t, t));
        let low: u16 = a.trim().parse().map_err(|_| bad())?;
        let high: u16 = b.trim().parse().map_err(|_| bad())?;
        if low > high {
            return Err(FieldError::new(field, format!("'{s}': the range's start is above its end")));
        }
        Ok(PortRange { low, high })
    }

    pub fn is_all(&self) -> bool {
        *self == PortRange::ALL
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.is_all(), self.low == self.high) {
            (true, _) => f.write_str("*"),
            (_, true) => write!(f, "{}", self.low),
            _ => write!(f, "{}-{}", self.low, self.high),
        }
    }
}

/// The singular and plural forms of one field, as one list (empty means `*`).
fn merged(single: &Option<String>, many: &[String]) -> Vec<String> {
    let mut out: Vec<String> = single.iter().cloned().collect();
    out.extend(many.iter().cloned());
    if out.is_empty() {
        out.push("*".into());
    }
    out
}

impl SecurityRule {
    pub fn source_addresses(&self) -> Vec<String> {
        merged(&self.source_address_prefix, &self.source_address_prefixes)
    }
    pub fn destination_addresses(&self) -> Vec<String> {
        merged(&self.destination_address_prefix, &self.destination_address_prefixes)
    }
    pub fn source_ports(&self) -> Vec<String> {
        merged(&self.source_port_range, &self.source_port_ranges)
    }
    pub fn destination_ports(&self) -> Vec<String> {
        merged(&self.destination_port_range, &self.destination_port_ranges)
    }

    /// Checks every field but the priority's range; `f` is its field path. Moves the singular
    /// forms into the plural lists, so a stored rule has one shape.
    fn check(&mut self, f: &str) -> Result<(), FieldError> {
        crate::network::check_child_name(&format!("{f}.name"), &self.name)?;
        let (sa, da, sp, dp) =
            (self.source_addresses(), self.destination_addresses(), self.source_ports(), self.destination_ports());
        for (i, a) in sa.iter().enumerate() {
            AddressMatch::parse(&format!("{f}.sourceAddressPrefixes[{i}]"), a)?;
        }
        for (i, a) in da.iter().enumerate() {
            AddressMatch::parse(&format!("{f}.destinationAddressPrefixes[{i}]"), a)?;
        }
        for (i, p) in sp.iter().enumerate() {
            PortRange::parse(&format!("{f}.sourcePortRanges[{i}]"), p)?;
        }
        for (i, p) in dp.iter().enumerate() {
            let r = PortRange::parse(&format!("{f}.destinationPortRanges[{i}]"), p)?;
            if self.protocol == SecurityRuleProtocol::Icmp && !r.is_all() {
                return Err(FieldError::new(
                    format!("{f}.destinationPortRanges[{i}]"),
                    "Icmp has no ports; use '*' or the protocol Tcp, Udp or '*'",
                ));
            }
        }
        (self.source_address_prefix, self.source_address_prefixes) = (None, sa);
        (self.destination_address_prefix, self.destination_address_prefixes) = (None, da);
        (self.source_port_range, self.source_port_ranges) = (None, sp);
        (self.destination_port_range, self.destination_port_ranges) = (None, dp);
        Ok(())
    }
}

/// The six default rules, in Azure's names and priorities.
pub fn default_rules(nsg_id: &str) -> Vec<SecurityRule> {
    use SecurityRuleAccess::{Allow, Deny};
    use SecurityRuleDirection::{Inbound, Outbound};
    let rule = |name: &str, prio: i64, dir, access, src: &str, dst: &str, description: &str| SecurityRule {
        id: format!("{nsg_id}/defaultSecurityRules/{name}"),
        name: name.into(),
        description: Some(description.into()),
        protocol: SecurityRuleProtocol::Any,
        source_address_prefix: None,
        source_address_prefixes: vec![src.into()],
        source_port_range: None,
        source_port_ranges: vec!["*".into()],
        destination_address_prefix: None,
        destination_address_prefixes: vec![dst.into()],
        destination_port_range: None,
        destination_port_ranges: vec!["*".into()],
        access,
        priority: prio,
        direction: dir,
        provisioning_state: succeeded(),
    };
    vec![
        rule(
            "AllowVnetInBound",
            65000,
            Inbound,
            Allow,
            "VirtualNetwork",
            "VirtualNetwork",
            "Allow inbound traffic from all VMs in VNET",
        ),
        rule(
            "AllowAzureLoadBalancerInBound",
            65001,
            Inbound,
            Allow,
            "AzureLoadBalancer",
            "*",
            "Allow inbound traffic from azure load balancer",
        ),
        rule("DenyAllInBound", 65500, Inbound, Deny, "*", "*", "Deny all inbound traffic"),
        rule(
            "AllowVnetOutBound",
            65000,
            Outbound,
            Allow,
            "VirtualNetwork",
            "VirtualNetwork",
            "Allow outbound traffic from all VMs to all VMs in VNET",
        ),
        rule(
            "AllowInternetOutBound",
            65001,
            Outbound,
            Allow,
            "*",
            "Internet",
            "Allow outbound traffic from all VMs to Internet",
        ),
        rule("DenyAllOutBound", 65500, Outbound, Deny, "*", "*", "Deny all outbound traffic"),
    ]
}

impl NetworkSecurityGroup {
    /// Fills ids and the default rules, and checks every rule: a valid and unique name,
    /// priority within 100–4096 and unique per direction, valid prefixes and port ranges.
    pub fn normalize(&mut self, group: &str, name: &str) -> Result<(), FieldError> {
        self.id = network_id(group, "networkSecurityGroups", name);
        self.name = name.into();
        self.resource_group = group.into();
        let mut names = std::collections::BTreeSet::new();
        for i in 0..self.security_rules.len() {
            let f = format!("securityRules[{i}]");
            self.security_rules[i].check(&f)?;
            let r = &self.security_rules[i];
            if !names.insert(r.name.to_ascii_lowercase()) {
                return Err(FieldError::new(format!("{f}.name"), format!("rule '{}' is listed twice", r.name)));
            }
            if !PRIORITY_RANGE.contains(&r.priority) {
                return Err(FieldError::new(
                    format!("{f}.priority"),
                    format!(
                        "{} is out of range; allowed 100 to 4096 (65000 and above belong to the default rules)",
                        r.priority
                    ),
                ));
            }
            if let Some(o) =
                self.security_rules[..i].iter().find(|o| o.priority == r.priority && o.direction == r.direction)
            {
                return Err(FieldError::new(
                    format!("{f}.priority"),
                    format!(
                        "priority {} is already used by rule '{}' ({}); priorities are unique per direction",
                        r.priority, o.name, r.direction
                    ),
                ));
            }
        }
        let id = self.id.clone();
        for r in &mut self.security_rules {
            r.id = format!("{id}/securityRules/{}", r.name);
        }
        self.security_rules.sort_by_key(|r| (r.direction, r.priority));
        self.default_security_rules = default_rules(&self.id);
        Ok(())
    }

    /// User rules then default rules of one direction, by priority.
    pub fn rules(&self, direction: SecurityRuleDirection) -> Vec<&SecurityRule> {
        let mut out: Vec<&SecurityRule> = self
            .security_rules
            .iter()
            .chain(self.default_security_rules.iter())
            .filter(|r| r.direction == direction)
            .collect();
        out.sort_by_key(|r| r.priority);
        out
    }
}

// ---- resolved rules: what the host enforces and the load balancer checks ----

/// A rule's protocol after resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    Any,
    Tcp,
    Udp,
    Icmp,
}

/// One address term of a resolved rule: inside `inside` (None: anywhere) and outside every
/// prefix of `except`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrSet {
    pub inside: Option<Vec<Cidr>>,
    pub except: Vec<Cidr>,
}

impl AddrSet {
    pub const ANY: AddrSet = AddrSet { inside: None, except: Vec::new() };

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.inside.as_ref().is_none_or(|v| v.iter().any(|c| c.contains(ip)))
            && !self.except.iter().any(|c| c.contains(ip))
    }

    /// Matches nothing (a tag that stands for no address here).
    pub fn is_empty(&self) -> bool {
        self.inside.as_ref().is_some_and(Vec::is_empty)
    }

    /// Azure's "expanded" prefixes, for `list-effective-nsg`.
    pub fn expanded(&self) -> Vec<String> {
        let mut out: Vec<String> = match &self.inside {
            None => vec!["0.0.0.0/0".into()],
            Some(v) => v.iter().map(|c| c.to_string()).collect(),
        };
        out.extend(self.except.iter().map(|c| format!("except {c}")));
        out
    }
}

/// A rule with its service tags replaced by the NIC's addresses: matched by [`allows`] and
/// rendered into nftables by the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedRule {
    /// `securityRules/NAME` or `defaultSecurityRules/NAME`.
    pub name: String,
    pub priority: i64,
    pub allow: bool,
    pub protocol: Protocol,
    /// Any one term matches.
    pub source: Vec<AddrSet>,
    /// Empty: any port.
    pub source_ports: Vec<PortRange>,
    pub destination: Vec<AddrSet>,
    pub destination_ports: Vec<PortRange>,
}

/// What the service tags stand for at one NIC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagContext {
    /// The NIC's virtual network's address space.
    pub virtual_network: Vec<Cidr>,
    /// The addresses herd's health probes come from: reserved addresses of the subnets
    /// (`.2`), so they are not `VirtualNetwork` (as Azure's 168.63.129.16 is not).
    pub load_balancer: Vec<Ipv4Addr>,
}

impl TagContext {
    fn probes(&self) -> Vec<Cidr> {
        self.load_balancer.iter().map(|a| Cidr { addr: *a, len: 32 }).collect()
    }

    fn resolve(&self, m: AddressMatch) -> AddrSet {
        match m {
            AddressMatch::Any => AddrSet::ANY,
            AddressMatch::Prefix(c) => AddrSet { inside: Some(vec![c]), except: vec![] },
            AddressMatch::VirtualNetwork => {
                AddrSet { inside: Some(self.virtual_network.clone()), except: self.probes() }
            }
            AddressMatch::AzureLoadBalancer => AddrSet { inside: Some(self.probes()), except: vec![] },
            AddressMatch::Internet => AddrSet { inside: None, except: self.virtual_network.clone() },
        }
    }
}

fn ports(list: &[String]) -> Vec<PortRange> {
    let v: Vec<PortRange> = list.iter().filter_map(|p| PortRange::parse("", p).ok()).collect();
    if v.iter().any(PortRange::is_all) {
        vec![]
    } else {
        v
    }
}

/// One NSG's rules of `direction`, resolved at a NIC, by priority (the defaults last).
pub fn resolve(nsg: &NetworkSecurityGroup, direction: SecurityRuleDirection, ctx: &TagContext) -> Vec<ResolvedRule> {
    nsg.rules(direction)
        .into_iter()
        .map(|r| {
            let default = r.priority > *PRIORITY_RANGE.end();
            let addrs = |list: Vec<String>| -> Vec<AddrSet> {
                list.iter().filter_map(|a| AddressMatch::parse("", a).ok()).map(|m| ctx.resolve(m)).collect()
            };
            ResolvedRule {
                name: format!("{}/{}", if default { "defaultSecurityRules" } else { "securityRules" }, r.name),
                priority: r.priority,
                allow: r.access == SecurityRuleAccess::Allow,
                protocol: match r.protocol {
                    SecurityRuleProtocol::Any => Protocol::Any,
                    SecurityRuleProtocol::Tcp => Protocol::Tcp,
                    SecurityRuleProtocol::Udp => Protocol::Udp,
                    SecurityRuleProtocol::Icmp => Protocol::Icmp,
                },
                source: addrs(r.source_addresses()),
                source_ports: ports(&r.source_ports()),
                destination: addrs(r.destination_addresses()),
                destination_ports: ports(&r.destination_ports()),
            }
        })
        .collect()
}

/// One flow's first packet, as a rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub protocol: Protocol,
    pub source: Ipv4Addr,
    pub source_port: u16,
    pub destination: Ipv4Addr,
    pub destination_port: u16,
}

impl ResolvedRule {
    pub fn matches(&self, f: &Flow) -> bool {
        let proto = self.protocol == Protocol::Any || self.protocol == f.protocol;
        let has_ports = matches!(f.protocol, Protocol::Tcp | Protocol::Udp);
        let port_ok =
            |ranges: &[PortRange], p: u16| ranges.is_empty() || (has_ports && ranges.iter().any(|r| r.contains(p)));
        proto
            && self.source.iter().any(|s| s.contains(f.source))
            && self.destination.iter().any(|d| d.contains(f.destination))
            && port_ok(&self.source_ports, f.source_port)
            && port_ok(&self.destination_ports, f.destination_port)
    }
}

/// The NSGs a flow meets, in order (inbound: subnet then NIC; outbound: NIC then subnet), each
/// as its resolved rules of that direction.
pub type Stages = Vec<Vec<ResolvedRule>>;

/// Whether every stage lets `flow` through: in each, the first rule that matches decides (a
/// stage with no match denies; with the default rules that cannot happen). No stages: allowed.
pub fn allows(stages: &[Vec<ResolvedRule>], flow: &Flow) -> bool {
    stages.iter().all(|rules| rules.iter().find(|r| r.matches(flow)).is_some_and(|r| r.allow))
}

/// A NIC's security: its address and the stages of each direction (see [`Stages`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicSecurity {
    pub address: Ipv4Addr,
    pub inbound: Stages,
    pub outbound: Stages,
}

impl NicSecurity {
    /// The stages of `nsgs` (subnet's, NIC's; either may be absent) at a NIC with `address`.
    /// None if neither exists: the NIC is unfiltered.
    pub fn of(
        address: Ipv4Addr,
        subnet: Option<&NetworkSecurityGroup>,
        nic: Option<&NetworkSecurityGroup>,
        ctx: &TagContext,
    ) -> Option<NicSecurity> {
        if subnet.is_none() && nic.is_none() {
            return None;
        }
        let stages = |dir, order: [Option<&NetworkSecurityGroup>; 2]| -> Stages {
            order.into_iter().flatten().map(|g| resolve(g, dir, ctx)).collect()
        };
        Some(NicSecurity {
            address,
            inbound: stages(SecurityRuleDirection::Inbound, [subnet, nic]),
            outbound: stages(SecurityRuleDirection::Outbound, [nic, subnet]),
        })
    }
}

// ---- the effective view (`herd network nic list-effective-nsg`) ----

/// What an NSG is associated with, as Azure shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NsgAssociation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<SubResource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_interface: Option<SubResource>,
}

/// One rule as it applies at the NIC, with its tags expanded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveSecurityRule {
    pub name: String,
    pub protocol: String,
    pub source_address_prefixes: Vec<String>,
    pub expanded_source_address_prefix: Vec<String>,
    pub source_port_ranges: Vec<String>,
    pub destination_address_prefixes: Vec<String>,
    pub expanded_destination_address_prefix: Vec<String>,
    pub destination_port_ranges: Vec<String>,
    pub access: SecurityRuleAccess,
    pub priority: i64,
    pub direction: SecurityRuleDirection,
}

/// One NSG that applies at a NIC and its rules there, in evaluation order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveNetworkSecurityGroup {
    pub network_security_group: SubResource,
    pub association: NsgAssociation,
    pub effective_security_rules: Vec<EffectiveSecurityRule>,
}

/// `list-effective-nsg`'s answer: the subnet's NSG then the NIC's (either may be missing; an
/// empty list means the NIC is unfiltered).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EffectiveNetworkSecurityGroups {
    pub value: Vec<EffectiveNetworkSecurityGroup>,
}

/// `nsg`'s rules at a NIC where the tags mean `ctx`, both directions, by priority.
pub fn effective(
    nsg: &NetworkSecurityGroup,
    association: NsgAssociation,
    ctx: &TagContext,
) -> EffectiveNetworkSecurityGroup {
    let mut rules = Vec::new();
    for dir in [SecurityRuleDirection::Inbound, SecurityRuleDirection::Outbound] {
        for r in nsg.rules(dir) {
            let expand = |list: &[String]| -> Vec<String> {
                list.iter()
                    .filter_map(|a| AddressMatch::parse("", a).ok())
                    .flat_map(|m| ctx.resolve(m).expanded())
                    .collect()
            };
            let default = r.priority > *PRIORITY_RANGE.end();
            let (sa, da) = (r.source_addresses(), r.destination_addresses());
            rules.push(EffectiveSecurityRule {
                name: format!("{}/{}", if default { "defaultSecurityRules" } else { "securityRules" }, r.name),
                protocol: r.protocol.to_string(),
                expanded_source_address_prefix: expand(&sa),
                source_address_prefixes: sa,
                source_port_ranges: r.source_ports(),
                expanded_destination_address_prefix: expand(&da),
                destination_address_prefixes: da,
                destination_port_ranges: r.destination_ports(),
                access: r.access,
                priority: r.priority,
                direction: r.direction,
            });
        }
    }
    EffectiveNetworkSecurityGroup {
        network_security_group: SubResource { id: nsg.id.clone() },
        association,
        effective_security_rules: rules,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nsg(rules: serde_json::Value) -> Result<NetworkSecurityGroup, FieldError> {
        let mut g: NetworkSecurityGroup = serde_json::from_value(json!({ "securityRules": rules }))
            .map_err(|e| FieldError::new("", e.to_string()))?;
        g.normalize("rg", "web-nsg")?;
        Ok(g)
    }

    fn rule(name: &str, prio: i64, dir: &str, access: &str, src: &str, port: &str) -> serde_json::Value {
        json!({"name": name, "priority": prio, "direction": dir, "access": access, "protocol": "Tcp",
               "sourceAddressPrefix": src, "destinationPortRange": port})
    }

    fn ctx() -> TagContext {
        TagContext {
            virtual_network: vec![Cidr::parse("", "10.0.0.0/16").unwrap()],
            load_balancer: vec![Ipv4Addr::new(10, 0, 0, 2)],
        }
    }

    fn tcp(src: [u8; 4], dst: [u8; 4], dport: u16) -> Flow {
        Flow {
            protocol: Protocol::Tcp,
            source: src.into(),
            source_port: 40000,
            destination: dst.into(),
            destination_port: dport,
        }
    }

    #[test]
    fn bad_rules_are_refused_naming_the_field() {
        let e = nsg(json!([rule("a", 99, "Inbound", "Allow", "*", "80")])).unwrap_err();
        assert_eq!(e.field, "securityRules[0].priority");
        assert!(e.message.contains("allowed 100 to 4096"), "{e}");
        let e = nsg(json!([rule("a", 4097, "Inbound", "Allow", "*", "80")])).unwrap_err();
        assert_eq!(e.field, "securityRules[0].priority");
        let e =
            nsg(json!([rule("a", 100, "Inbound", "Allow", "*", "80"), rule("b", 100, "Inbound", "Deny", "*", "81")]))
                .unwrap_err();
        assert_eq!(e.field, "securityRules[1].priority");
        assert!(e.message.contains("already used by rule 'a'"), "{e}");
        // The same priority in the other direction is fine.
        nsg(json!([rule("a", 100, "Inbound", "Allow", "*", "80"), rule("b", 100, "Outbound", "Deny", "*", "81")]))
            .unwrap();
        let e = nsg(json!([rule("a", 100, "Inbound", "Allow", "*", "90-80")])).unwrap_err();
        assert_eq!(e.field, "securityRules[0].destinationPortRanges[0]");
        let e = nsg(json!([rule("a", 100, "Inbound", "Allow", "*", "70000")])).unwrap_err();
        assert!(e.message.contains("within 0 to 65535"), "{e}");
        let e = nsg(json!([rule("a", 100, "Inbound", "Allow", "Intranet", "80")])).unwrap_err();
        assert_eq!(e.field, "securityRules[0].sourceAddressPrefixes[0]");
        assert!(e.message.contains("VirtualNetwork, AzureLoadBalancer, Internet"), "{e}");
        let e = nsg(json!([rule("a", 100, "Sideways", "Allow", "*", "80")])).unwrap_err();
        assert!(e.message.contains("Inbound, Outbound"), "{e}");
    }

    #[test]
    fn defaults_are_filled_and_singular_forms_merge() {
        let g = nsg(json!([rule("web", 100, "Inbound", "Allow", "Internet", "8080")])).unwrap();
        let names: Vec<&str> = g.default_security_rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "AllowVnetInBound",
                "AllowAzureLoadBalancerInBound",
                "DenyAllInBound",
                "AllowVnetOutBound",
                "AllowInternetOutBound",
                "DenyAllOutBound"
            ]
        );
        let r = &g.security_rules[0];
        assert_eq!(
            r.id,
            "/resourceGroups/rg/providers/Microsoft.Network/networkSecurityGroups/web-nsg/securityRules/web"
        );
        assert_eq!(
            (r.source_address_prefix.as_deref(), r.source_address_prefixes.as_slice()),
            (None, &["Internet".to_string()][..])
        );
        assert_eq!(r.destination_address_prefixes, ["*"]);
        assert_eq!(g.rules(SecurityRuleDirection::Inbound).len(), 4);
    }

    #[test]
    fn evaluation_follows_priority_tags_and_stage_order() {
        let vm = [10, 0, 0, 5];
        let peer = [10, 0, 0, 4];
        let outside = [192, 0, 2, 7];
        let probe = [10, 0, 0, 2];
        // Deny 8080 from the vnet; the load balancer's probes still pass by the default rule.
        let g = nsg(json!([rule("no-vnet-8080", 200, "Inbound", "Deny", "VirtualNetwork", "8080")])).unwrap();
        let s = NicSecurity::of(vm.into(), Some(&g), None, &ctx()).unwrap();
        assert!(!allows(&s.inbound, &tcp(peer, vm, 8080)));
        assert!(allows(&s.inbound, &tcp(peer, vm, 22)), "AllowVnetInBound");
        // The probe source is reserved, not VirtualNetwork: AllowAzureLoadBalancerInBound.
        assert!(allows(&s.inbound, &tcp(probe, vm, 8080)));
        assert!(!allows(&s.inbound, &tcp(outside, vm, 8080)), "DenyAllInBound");
        assert!(allows(&s.outbound, &tcp(vm, outside, 443)), "AllowInternetOutBound");

        let open = nsg(json!([rule("internet-8080", 100, "Inbound", "Allow", "Internet", "8080")])).unwrap();
        let s = NicSecurity::of(vm.into(), None, Some(&open), &ctx()).unwrap();
        assert!(allows(&s.inbound, &tcp(outside, vm, 8080)));
        assert!(!allows(&s.inbound, &tcp(outside, vm, 8081)));
        assert!(allows(&s.inbound, &tcp(peer, vm, 8080)), "from the vnet: AllowVnetInBound");

        // Inbound: subnet then NIC; both must allow.
        let deny_all_web = nsg(json!([rule("deny", 100, "Inbound", "Deny", "*", "8080")])).unwrap();
        let s = NicSecurity::of(vm.into(), Some(&open), Some(&deny_all_web), &ctx()).unwrap();
        assert!(!allows(&s.inbound, &tcp(outside, vm, 8080)), "the NIC's Deny after the subnet's Allow");
        let s = NicSecurity::of(vm.into(), Some(&deny_all_web), Some(&open), &ctx()).unwrap();
        assert!(!allows(&s.inbound, &tcp(outside, vm, 8080)), "the subnet's Deny stops it before the NIC");
        assert_eq!(s.inbound[0][0].name, "securityRules/deny");
        // Outbound: NIC first.
        let no_out = nsg(json!([{"name": "no-out", "priority": 100, "direction": "Outbound", "access": "Deny",
            "protocol": "*", "destinationAddressPrefix": "Internet"}]))
        .unwrap();
        let s = NicSecurity::of(vm.into(), None, Some(&no_out), &ctx()).unwrap();
        assert!(!allows(&s.outbound, &tcp(vm, outside, 443)));
        assert!(allows(&s.outbound, &tcp(vm, peer, 443)));
        assert!(NicSecurity::of(vm.into(), None, None, &ctx()).is_none(), "no NSG: unfiltered");
    }
}
