//! Network security groups on the host: one nftables table (family `ip`) that holds every
//! filtered NIC's rules, written whole in one transaction whenever they change.
//!
//! Why family `ip`, keyed by the NIC's address, and not the `bridge` family keyed by its port:
//! NSG rules are stateful (replies to an allowed flow pass), which needs conntrack, and many
//! kernels (this project's CI kernel among them) are built without bridge-family conntrack
//! (`CONFIG_NF_CONNTRACK_BRIDGE`). With `br_netfilter`, bridged IPv4 passes the `ip` family's
//! hooks with conntrack (`net.bridge.bridge-nf-call-iptables`, which this module turns on in
//! the server's namespace). An address identifies a NIC because the anti-spoofing guard
//! (`guard.rs`) drops anything a port sends from another address.
//!
//! Where each direction is checked:
//!
//! ```text
//!   instance ──▶ instance (bridged)      forward:  source's outbound, then destination's inbound
//!   instance ──▶ beyond the host         forward:  source's outbound
//!   beyond the host ──▶ instance         forward:  destination's inbound
//!   the host (LB, probes) ──▶ instance   output:   destination's inbound
//!   instance ──▶ the host                input:    source's outbound (DHCP, DNS and
//!                                                  169.254.169.254 are always allowed, as in Azure)
//! ```
//!
//! Each NIC has one chain per NSG stage and direction. A verdict map sends a packet to the
//! first stage of its NIC; an Allow in a stage goes on to the next stage (or returns, so the
//! other direction's NIC is checked too), a Deny drops. Replies pass before any of it.

use crate::guard::{nft_lists, run_nft};
use crate::NetError;
use herd_model::nsg::{AddrSet, NicSecurity, PortRange, Protocol, ResolvedRule};
use std::fmt::Write;

/// The nftables table of one server's NSGs.
#[derive(Debug, Clone)]
pub struct Security {
    pub table: String,
}

/// Where bridged IPv4 is handed to the `ip` family's hooks (br_netfilter).
pub(crate) const BRIDGE_NF_CALL: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

fn cidrs(v: &[herd_model::cidr::Cidr]) -> String {
    let items: Vec<String> = v.iter().map(|c| c.to_string()).collect();
    format!("{{ {} }}", items.join(", "))
}

/// The matches of one address term on `field` (`saddr` or `daddr`); None if it matches nothing.
fn addr_match(field: &str, a: &AddrSet) -> Option<String> {
    if a.is_empty() {
        return None;
    }
    let mut out = String::new();
    if let Some(inside) = &a.inside {
        let _ = write!(out, "ip {field} {} ", cidrs(inside));
    }
    if !a.except.is_empty() {
        let _ = write!(out, "ip {field} != {} ", cidrs(&a.except));
    }
    Some(out)
}

fn port_match(field: &str, ports: &[PortRange]) -> String {
    if ports.is_empty() {
        return String::new();
    }
    let items: Vec<String> = ports
        .iter()
        .map(|p| if p.low == p.high { p.low.to_string() } else { format!("{}-{}", p.low, p.high) })
        .collect();
    format!("th {field} {{ {} }} ", items.join(", "))
}

/// The nft rules of one resolved rule (one per pair of source and destination terms), each
/// ending in `verdict`.
fn rule_lines(r: &ResolvedRule, verdict: &str) -> Vec<String> {
    let has_ports = !r.source_ports.is_empty() || !r.destination_ports.is_empty();
    let proto = match (r.protocol, has_ports) {
        (Protocol::Any, false) => String::new(),
        (Protocol::Any, true) => "meta l4proto { tcp, udp } ".to_string(),
        (Protocol::Tcp, _) => "meta l4proto tcp ".to_string(),
        (Protocol::Udp, _) => "meta l4proto udp ".to_string(),
        (Protocol::Icmp, _) => "meta l4proto icmp ".to_string(),
    };
    let ports = format!("{}{}", port_match("sport", &r.source_ports), port_match("dport", &r.destination_ports));
    let mut out = Vec::new();
    for s in &r.source {
        let Some(sm) = addr_match("saddr", s) else { continue };
        for d in &r.destination {
            let Some(dm) = addr_match("daddr", d) else { continue };
            out.push(format!("\t\t{proto}{sm}{dm}{ports}counter {verdict} comment \"{}\"\n", r.name));
        }
    }
    out
}

/// The chains of one NIC's direction (`dir` is `in` or `out`): one per stage. Returns the
/// name of the first chain, or None when the direction has no stage.
fn stage_chains(s: &mut String, nic: usize, dir: &str, stages: &[Vec<ResolvedRule>]) -> Option<String> {
    let name = |i: usize| format!("n{nic}_{dir}{i}");
    for (i, rules) in stages.iter().enumerate() {
        let allow = if i + 1 < stages.len() { format!("goto {}", name(i + 1)) } else { "return".to_string() };
        let _ = writeln!(s, "\tchain {} {{", name(i));
        for r in rules {
            for line in rule_lines(r, if r.allow { &allow } else { "drop" }) {
                s.push_str(&line);
            }
        }
        // A stage that no rule matched denies (with the default rules it cannot happen).
        let _ = writeln!(s, "\t\tcounter drop\n\t}}");
    }
    (!stages.is_empty()).then(|| name(0))
}

impl Security {
    /// The whole table for `nics`, replacing any table of that name.
    /// The whole table for `nics`; connections from `lb_sources` (each subnet's load-balancer
    /// source, whose clients the load balancer admitted by these same rules) pass the host's
    /// output chain.
    pub fn script(&self, nics: &[NicSecurity], lb_sources: &[std::net::Ipv4Addr]) -> String {
        let t = &self.table;
        let mut chains = String::new();
        let (mut inbound, mut outbound) = (Vec::new(), Vec::new());
        for (i, nic) in nics.iter().enumerate() {
            if let Some(c) = stage_chains(&mut chains, i, "in", &nic.inbound) {
                inbound.push(format!("{} : jump {c}", nic.address));
            }
            if let Some(c) = stage_chains(&mut chains, i, "out", &nic.outbound) {
                outbound.push(format!("{} : jump {c}", nic.address));
            }
        }
        let elements =
            |v: &[String]| if v.is_empty() { String::new() } else { format!(" elements = {{ {} }};", v.join(", ")) };
        format!(
            "add table ip {t}\ndelete table ip {t}\ntable ip {t} {{\n\
             \tmap nic_in {{ type ipv4_addr : verdict;{inb} }}\n\
             \tmap nic_out {{ type ipv4_addr : verdict;{outb} }}\n\
             \tset lb_sources {{ type ipv4_addr;{lbs} }}\n\
             {chains}\
             \tchain forward {{\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tct state established,related accept\n\
             \t\tip saddr vmap @nic_out\n\
             \t\tip daddr vmap @nic_in\n\
             \t}}\n\
             \tchain output {{\n\
             \t\ttype filter hook output priority filter; policy accept;\n\
             \t\tct state established,related accept\n\
             \t\tip saddr @lb_sources accept\n\
             \t\tip daddr vmap @nic_in\n\
             \t}}\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\tct state established,related accept\n\
             \t\tudp dport {{ 53, 67 }} accept\n\
             \t\ttcp dport 53 accept\n\
             \t\tct original ip daddr {md} accept\n\
             \t\tip saddr vmap @nic_out\n\
             \t}}\n}}\n",
            inb = elements(&inbound),
            outb = elements(&outbound),
            lbs = elements(&lb_sources.iter().map(|a| a.to_string()).collect::<Vec<_>>()),
            md = crate::metadata::ADDRESS,
        )
    }

    /// Whether the table exists.
    pub fn exists(&self) -> bool {
        nft_lists("ip", &self.table)
    }

    /// Writes `script` (see [`Self::script`]) in one transaction; an empty one removes the table.
    pub fn install(&self, script: &str) -> Result<(), NetError> {
        if script.is_empty() {
            return self.remove();
        }
        // Bridged traffic between instances reaches the `ip` hooks only with this on.
        if std::fs::read_to_string(BRIDGE_NF_CALL).is_ok_and(|v| v.trim() != "1") {
            tracing::warn!(
                "turning {BRIDGE_NF_CALL} on: network security groups filter bridged traffic in the ip family"
            );
            std::fs::write(BRIDGE_NF_CALL, "1")
                .map_err(|e| NetError::Command(format!("cannot turn {BRIDGE_NF_CALL} on: {e}")))?;
        } else if !std::path::Path::new(BRIDGE_NF_CALL).exists() {
            return Err(NetError::Command(format!(
                "{BRIDGE_NF_CALL} is missing: network security groups need br_netfilter (modprobe br_netfilter)"
            )));
        }
        run_nft(script)
    }

    /// Removes the table. Ok if absent.
    pub fn remove(&self) -> Result<(), NetError> {
        run_nft(&format!("add table ip {t}\ndelete table ip {t}\n", t = self.table))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_model::nsg::{NetworkSecurityGroup, TagContext};

    #[test]
    fn the_script_holds_every_stage_and_nft_accepts_it() {
        let mut subnet: NetworkSecurityGroup = serde_json::from_str(
            r#"{"securityRules": [{"name": "web", "priority": 100, "direction": "Inbound", "access": "Allow",
                "protocol": "Tcp", "sourceAddressPrefix": "Internet", "destinationPortRanges": ["8080", "9000-9100"]},
               {"name": "no-udp", "priority": 110, "direction": "Outbound", "access": "Deny",
                "protocol": "Udp", "destinationAddressPrefix": "198.51.100.0/24"}]}"#,
        )
        .unwrap();
        subnet.normalize("rg", "sub").unwrap();
        let mut nic: NetworkSecurityGroup = serde_json::from_str(r#"{"securityRules": []}"#).unwrap();
        nic.normalize("rg", "nic").unwrap();
        let ctx = TagContext {
            virtual_network: vec![herd_model::cidr::Cidr::parse("", "10.0.0.0/16").unwrap()],
            load_balancer: vec!["10.0.0.2".parse().unwrap()],
        };
        let a = NicSecurity::of("10.0.0.4".parse().unwrap(), Some(&subnet), Some(&nic), &ctx).unwrap();
        let b = NicSecurity::of("10.0.0.5".parse().unwrap(), None, Some(&nic), &ctx).unwrap();
        let s = Security { table: "herdsg_x".into() }.script(&[a, b], &["10.0.0.3".parse().unwrap()]);
        assert!(s.contains("10.0.0.4 : jump n0_in0, 10.0.0.5 : jump n1_in0"), "{s}");
        // The subnet's stage goes on to the NIC's; the NIC's (last) returns, so the other
        // NIC's direction is checked too.
        assert!(
            s.contains("meta l4proto tcp ip saddr != { 10.0.0.0/16 } th dport { 8080, 9000-9100 } counter goto n0_in1 comment \"securityRules/web\""),
            "{s}"
        );
        assert!(s.contains("ip saddr { 10.0.0.2/32 } counter return comment \"defaultSecurityRules/AllowAzureLoadBalancerInBound\""), "{s}");
        // Outbound: the NIC's stage (n0_out0) first, the subnet's Deny in the second.
        assert!(s.contains("chain n0_out1 {\n\t\tmeta l4proto udp ip daddr { 198.51.100.0/24 } counter drop"), "{s}");
        // VirtualNetwork leaves out the probe source.
        assert!(s.contains("ip saddr { 10.0.0.0/16 } ip saddr != { 10.0.0.2/32 } ip daddr { 10.0.0.0/16 }"), "{s}");
        assert!(s.contains("set lb_sources { type ipv4_addr; elements = { 10.0.0.3 }; }"), "{s}");
        assert!(s.contains("ip saddr @lb_sources accept\n\t\tip daddr vmap @nic_in"), "{s}");
        crate::guard::check_script(&s);
    }
}
