//! Outbound access: instances reach beyond their vnet through the host's address (SNAT, as
//! Azure's default outbound access), unless their subnet is private
//! (`defaultOutboundAccess: false`), whose instances reach only the vnets.
//!
//! Why nftables `ip` family and masquerade: the host's outgoing address is whatever its route
//! picks, and masquerade follows it; replies find their way back through conntrack. The host
//! must forward IPv4 between the bridges and its uplink, so installing the table turns
//! `net.ipv4.ip_forward` on (in the server's network namespace), as libvirt does.
//!
//! Instances with a public IP (`public.rs`) leave with that address even on a private subnet:
//! the forward filter lets their private addresses (the `natted` set) through both ways, and
//! their source NAT is bound by the public table before this table's masquerade.
//!
//! The table is small and changes only when a segment or a public IP comes or goes, so it is
//! always written whole, in one transaction, from the segment and public-IP records.

use crate::guard::run_nft;
use crate::NetError;
use std::net::Ipv4Addr;

/// One segment as outbound access sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix {
    pub network: Ipv4Addr,
    pub len: u8,
    /// Default outbound access (SNAT to the host's address).
    pub outbound: bool,
}

/// The nftables table (family `ip`) of one server.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub table: String,
}

impl Outbound {
    /// The whole table for `prefixes` (and the private addresses that have a public IP,
    /// `natted`), replacing any table of that name.
    pub fn script(&self, prefixes: &[Prefix], natted: &[Ipv4Addr]) -> String {
        let t = &self.table;
        let list = |f: &dyn Fn(&Prefix) -> bool| {
            let items: Vec<String> =
                prefixes.iter().filter(|p| f(p)).map(|p| format!("{}/{}", p.network, p.len)).collect();
            if items.is_empty() {
                String::new()
            } else {
                format!(" elements = {{ {} }};", items.join(", "))
            }
        };
        format!(
            "add table ip {t}\ndelete table ip {t}\ntable ip {t} {{\n\
             \tset vnets {{ type ipv4_addr; flags interval;{all} }}\n\
             \tset outbound {{ type ipv4_addr; flags interval;{out} }}\n\
             \tset private {{ type ipv4_addr; flags interval;{private} }}\n\
             \tset natted {{ type ipv4_addr;{natted} }}\n\
             \tchain forward {{\n\
             \t\ttype filter hook forward priority 0; policy accept;\n\
             \t\tip saddr @private ip saddr != @natted ip daddr != @vnets counter drop\n\
             \t\tip daddr @private ip daddr != @natted ip saddr != @vnets ct state != {{ established, related }} counter drop\n\
             \t}}\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr @outbound ip daddr != @vnets counter masquerade\n\
             \t}}\n}}\n",
            all = list(&|_| true),
            out = list(&|p| p.outbound),
            private = list(&|p| !p.outbound),
            natted = if natted.is_empty() {
                String::new()
            } else {
                let items: Vec<String> = natted.iter().map(Ipv4Addr::to_string).collect();
                format!(" elements = {{ {} }};", items.join(", "))
            },
        )
    }

    /// Writes the table for `prefixes` and `natted` (removes it when there are no prefixes)
    /// and turns IPv4 forwarding on.
    pub fn install(&self, prefixes: &[Prefix], natted: &[Ipv4Addr]) -> Result<(), NetError> {
        run_nft(&self.prepare(prefixes, natted)?)
    }

    /// What [`install`](Self::install) writes, to run in one transaction with other tables:
    /// the table (IPv4 forwarding turned on first), or its removal when there are no prefixes.
    pub fn prepare(&self, prefixes: &[Prefix], natted: &[Ipv4Addr]) -> Result<String, NetError> {
        if prefixes.is_empty() {
            return Ok(format!("add table ip {t}\ndelete table ip {t}\n", t = self.table));
        }
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| NetError::Command(format!("cannot turn IPv4 forwarding on: {e}")))?;
        Ok(self.script(prefixes, natted))
    }

    /// Removes the table. Ok if absent.
    pub fn remove(&self) -> Result<(), NetError> {
        run_nft(&self.prepare(&[], &[])?)
    }

    /// Whether the table exists.
    pub fn exists(&self) -> bool {
        crate::guard::nft_lists("ip", &self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_subnets_are_kept_in_and_the_others_masqueraded() {
        let o = Outbound { table: "herd_x".into() };
        let s = o.script(
            &[
                Prefix { network: Ipv4Addr::new(10, 0, 0, 0), len: 24, outbound: true },
                Prefix { network: Ipv4Addr::new(10, 0, 1, 0), len: 24, outbound: false },
            ],
            &[Ipv4Addr::new(10, 0, 1, 4)],
        );
        assert!(
            s.contains("set vnets { type ipv4_addr; flags interval; elements = { 10.0.0.0/24, 10.0.1.0/24 }; }"),
            "{s}"
        );
        assert!(s.contains("set outbound { type ipv4_addr; flags interval; elements = { 10.0.0.0/24 }; }"), "{s}");
        assert!(s.contains("set private { type ipv4_addr; flags interval; elements = { 10.0.1.0/24 }; }"), "{s}");
        assert!(s.contains("set natted { type ipv4_addr; elements = { 10.0.1.4 }; }"), "{s}");
        assert!(s.contains("ip saddr @private ip saddr != @natted ip daddr != @vnets counter drop"), "{s}");
        crate::guard::check_script(&s);
        let none = o.script(&[Prefix { network: Ipv4Addr::new(10, 0, 0, 0), len: 24, outbound: true }], &[]);
        assert!(none.contains("set private { type ipv4_addr; flags interval; }"), "{none}");
        crate::guard::check_script(&none);
    }
}
