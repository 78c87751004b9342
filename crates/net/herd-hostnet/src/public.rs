//! Public IPs: 1:1 NAT between an instance's public address (from the server's pool) and its
//! private IP, as Azure's instance-level public IPs do.
//!
//! Why an nftables `ip` table of its own: the mapping is per instance and comes and goes with
//! instances, while the outbound table (`outbound.rs`) changes with segments; keeping them
//! apart keeps each one simple to write from its own records. The table has
//!
//! ```text
//!   prerouting  (dstnat)      daddr PUBLIC           → dnat to PRIVATE   (from the uplink, or
//!   output      (dstnat)      daddr PUBLIC           → dnat to PRIVATE    from the host itself)
//!   postrouting (srcnat - 10) saddr PRIVATE, daddr outside every vnet → snat to PUBLIC
//!   prerouting, output (mangle) a connection's first packet → ct timeout idle<M>
//! ```
//!
//! The public IP's `idleTimeoutInMinutes` is real: each connection through the address gets a
//! conntrack timeout policy (`ct timeout`) whose established-TCP timeout is those minutes, set
//! on the connection's first packet after conntrack made its entry and before it is confirmed
//! (the kernel ignores the policy on a confirmed entry), so an idle flow is forgotten after
//! them (and then needs a new connection) as Azure's NAT forgets it, instead of after Linux's
//! five days.
//!
//! The SNAT chain runs before the outbound table's masquerade (priority `srcnat`): the kernel
//! sets a connection's source NAT in the first NAT chain that binds it, so an instance with a
//! public IP leaves with that address and never with the host's. Replies and the return
//! direction of inbound connections are translated back by conntrack. An instance on a subnet
//! without default outbound access still gets out with its public IP: the outbound table's
//! forward filter lets NATed addresses through (see [`crate::outbound`]), as a public IP gives
//! an Azure VM its own way out.
//!
//! Inbound traffic is DNATed before the forward hook, so the network security groups
//! (`security.rs`, keyed by the private IP) see it addressed to the instance's private IP and
//! from its real source: an NSG applies to traffic that came by the public IP as to any other.
//!
//! The host does not answer ARP for the pool: the operator routes the pool's prefix to the host
//! (its uplink address), as a provider routes a customer's prefix.
//!
//! Hairpin: an instance reaching another's public IP from inside the vnets is DNATed like
//! anyone, and its source is NATed too (to its own public IP, or masqueraded to the host's
//! address on the bridge), so the reply comes back through the host and is translated back.
//! The NSGs see that flow between private addresses (Azure's would see it come from the
//! Internet).
//!
//! Records: `public/<owner>` holds `PUBLIC PRIVATE IDLE_MINUTES`, one file per instance,
//! written at `attach` and removed at `detach`. A new mapping goes in as elements of the maps
//! (and of the outbound table's `natted` set) in one small transaction, a removed one comes out
//! the same way; whenever that cannot work (the table is missing, the mapping's timeout policy
//! is new, a record changed, a segment came or went, `repair()`), both tables are written whole
//! from all the records in one transaction. The table goes with the last mapping.

use crate::guard::{nft_lists, run_nft};
use crate::outbound::Prefix;
use crate::NetError;
use std::net::Ipv4Addr;

/// One instance's public address, the private address it maps to, and the minutes an idle TCP
/// connection through it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub public: Ipv4Addr,
    pub private: Ipv4Addr,
    pub idle_minutes: u16,
}

/// Azure's default idle timeout of a public IP, in minutes.
pub const DEFAULT_IDLE_MINUTES: u16 = 4;

impl Mapping {
    /// The record's one-line form (`PUBLIC PRIVATE IDLE_MINUTES`).
    pub fn render(&self) -> String {
        format!("{} {} {}\n", self.public, self.private, self.idle_minutes)
    }

    pub fn parse(s: &str) -> Option<Mapping> {
        let mut it = s.split_whitespace();
        Some(Mapping {
            public: it.next()?.parse().ok()?,
            private: it.next()?.parse().ok()?,
            idle_minutes: it.next().and_then(|m| m.parse().ok()).unwrap_or(DEFAULT_IDLE_MINUTES),
        })
    }
}

/// The NAT table (family `ip`) of one server.
#[derive(Debug, Clone)]
pub struct Public {
    pub table: String,
}

/// Where a connection's source NAT is bound first: before the outbound table's masquerade
/// (`srcnat`, 100).
const SNAT_PRIORITY: i32 = 90;

impl Public {
    /// The whole table for `maps` (the vnets' prefixes in `vnets`), replacing any table of that
    /// name.
    pub fn script(&self, maps: &[Mapping], vnets: &[Prefix]) -> String {
        let t = &self.table;
        let elements = |items: Vec<String>| {
            if items.is_empty() {
                String::new()
            } else {
                format!(" elements = {{ {} }};", items.join(", "))
            }
        };
        let inbound = elements(maps.iter().map(|m| format!("{} : {}", m.public, m.private)).collect());
        let publics = elements(maps.iter().map(|m| m.public.to_string()).collect());
        let outbound = elements(maps.iter().map(|m| format!("{} : {}", m.private, m.public)).collect());
        let vnets = elements(vnets.iter().map(|p| format!("{}/{}", p.network, p.len)).collect());
        let mut minutes: Vec<u16> = maps.iter().map(|m| m.idle_minutes).collect();
        minutes.sort_unstable();
        minutes.dedup();
        // One timeout policy, and one chain that sets it, per distinct idle timeout; verdict
        // maps send a new connection to its address's chain in one lookup.
        let policies: String = minutes
            .iter()
            .map(|m| {
                format!(
                    "\tct timeout idle{m} {{ protocol tcp; l3proto ip; policy = {{ established: {} }}; }}\n\
                     \tchain set_idle{m} {{\n\t\tct timeout set \"idle{m}\"\n\t}}\n",
                    u32::from(*m) * 60
                )
            })
            .collect();
        let idle_in =
            elements(maps.iter().map(|m| format!("{} : jump set_idle{}", m.public, m.idle_minutes)).collect());
        let idle_out =
            elements(maps.iter().map(|m| format!("{} : jump set_idle{}", m.private, m.idle_minutes)).collect());
        format!(
            "add table ip {t}\ndelete table ip {t}\ntable ip {t} {{\n\
             \tmap inbound {{ type ipv4_addr : ipv4_addr;{inbound} }}\n\
             \tmap outbound {{ type ipv4_addr : ipv4_addr;{outbound} }}\n\
             \tset vnets {{ type ipv4_addr; flags interval;{vnets} }}\n\
             \tset publics {{ type ipv4_addr;{publics} }}\n\
             \tmap idle_in {{ type ipv4_addr : verdict;{idle_in} }}\n\
             \tmap idle_out {{ type ipv4_addr : verdict;{idle_out} }}\n\
             {policies}\
             \tchain idle_prerouting {{\n\
             \t\ttype filter hook prerouting priority mangle; policy accept;\n\
             \t\tct state != new return\n\
             \t\tip daddr vmap @idle_in\n\
             \t\tip daddr != @vnets ip saddr vmap @idle_out\n\
             \t}}\n\
             \tchain idle_output {{\n\
             \t\ttype filter hook output priority mangle; policy accept;\n\
             \t\tct state new ip daddr vmap @idle_in\n\
             \t}}\n\
             \tchain prerouting {{\n\
             \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\tdnat to ip daddr map @inbound\n\
             \t}}\n\
             \tchain output {{\n\
             \t\ttype nat hook output priority -100; policy accept;\n\
             \t\tdnat to ip daddr map @inbound\n\
             \t}}\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority {SNAT_PRIORITY}; policy accept;\n\
             \t\tip daddr != @vnets snat to ip saddr map @outbound\n\
             \t\tip saddr @vnets ct original ip daddr @publics snat to ip saddr map @outbound\n\
             \t\tip saddr @vnets ct original ip daddr @publics masquerade\n\
             \t}}\n}}\n"
        )
    }

    /// The table for `maps`, or (with none) its removal: a script that can share one
    /// transaction with others.
    pub fn script_or_removal(&self, maps: &[Mapping], vnets: &[Prefix]) -> String {
        if maps.is_empty() {
            format!("add table ip {t}\ndelete table ip {t}\n", t = self.table)
        } else {
            self.script(maps, vnets)
        }
    }

    /// Adds (`verb` "add") or removes ("delete") one mapping's elements, and its private
    /// address in the `natted` set of the outbound table `outbound`, as one nft script (one
    /// transaction). Adding fails when the table or the mapping's timeout policy is missing:
    /// then the tables are written whole.
    pub fn element_script(&self, verb: &str, m: &Mapping, outbound: &str) -> String {
        let t = &self.table;
        let (p, q, i) = (m.public, m.private, m.idle_minutes);
        let (to_q, to_p, idle) = if verb == "add" {
            (format!(" : {q}"), format!(" : {p}"), format!(" : jump set_idle{i}"))
        } else {
            Default::default()
        };
        format!(
            "{verb} element ip {t} inbound {{ {p}{to_q} }}\n\
             {verb} element ip {t} publics {{ {p} }}\n\
             {verb} element ip {t} outbound {{ {q}{to_p} }}\n\
             {verb} element ip {t} idle_in {{ {p}{idle} }}\n\
             {verb} element ip {t} idle_out {{ {q}{idle} }}\n\
             {verb} element ip {outbound} natted {{ {q} }}\n"
        )
    }

    /// Writes the table for `maps` in one transaction; with none, removes it.
    pub fn install(&self, maps: &[Mapping], vnets: &[Prefix]) -> Result<(), NetError> {
        run_nft(&self.script_or_removal(maps, vnets))
    }

    /// Removes the table. Ok if absent.
    pub fn remove(&self) -> Result<(), NetError> {
        run_nft(&self.script_or_removal(&[], &[]))
    }

    /// Whether the table exists.
    pub fn exists(&self) -> bool {
        nft_lists("ip", &self.table)
    }
}

/// `maps` with at most one mapping per public and per private address (the first, in record
/// order): two records claiming one address (a stale record after a crash) must not keep the
/// whole table from being written.
pub(crate) fn distinct(maps: Vec<Mapping>) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::with_capacity(maps.len());
    for m in maps {
        if out.iter().any(|o| o.public == m.public || o.private == m.private) {
            tracing::warn!(public = %m.public, private = %m.private, "a second record claims a mapped address; ignored");
            continue;
        }
        out.push(m);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_round_trip_and_nft_accepts_the_table() {
        let m =
            Mapping { public: Ipv4Addr::new(198, 51, 100, 1), private: Ipv4Addr::new(10, 0, 0, 4), idle_minutes: 4 };
        assert_eq!(Mapping::parse(&m.render()), Some(m));
        assert_eq!(Mapping::parse("198.51.100.1 10.0.0.4"), Some(m), "Azure's default without the minutes");
        assert_eq!(Mapping::parse("198.51.100.1"), None);
        let p = Public { table: "herd_x_pub".into() };
        let vnets = [Prefix { network: Ipv4Addr::new(10, 0, 0, 0), len: 24, outbound: true }];
        let n =
            Mapping { public: Ipv4Addr::new(198, 51, 100, 2), private: Ipv4Addr::new(10, 0, 0, 5), idle_minutes: 30 };
        let s = p.script(&[m, n], &vnets);
        assert!(s.contains("map inbound { type ipv4_addr : ipv4_addr; elements = { 198.51.100.1 : 10.0.0.4, 198.51.100.2 : 10.0.0.5 }; }"), "{s}");
        assert!(s.contains("map outbound { type ipv4_addr : ipv4_addr; elements = { 10.0.0.4 : 198.51.100.1, 10.0.0.5 : 198.51.100.2 }; }"), "{s}");
        assert!(s.contains("priority 90;"), "source NAT binds before the masquerade (srcnat, 100): {s}");
        assert!(s.contains("ct timeout idle4 { protocol tcp; l3proto ip; policy = { established: 240 }; }"), "{s}");
        assert!(s.contains("ct timeout idle30 { protocol tcp; l3proto ip; policy = { established: 1800 }; }"), "{s}");
        assert!(s.contains("chain set_idle30 {\n\t\tct timeout set \"idle30\"\n\t}"), "{s}");
        assert!(s.contains("elements = { 198.51.100.1 : jump set_idle4, 198.51.100.2 : jump set_idle30 }"), "{s}");
        assert!(s.contains("elements = { 10.0.0.4 : jump set_idle4, 10.0.0.5 : jump set_idle30 }"), "{s}");
        crate::guard::check_script(&s);
        crate::guard::check_script(&p.script(&[m], &[]));
        let o = crate::outbound::Outbound { table: "herd_x".into() };
        let with_elements = |verb: &str| {
            format!("{}{}{}", p.script(&[m], &vnets), o.script(&vnets, &[]), p.element_script(verb, &n, "herd_x"))
        };
        let added = with_elements("add");
        assert!(added.contains("add element ip herd_x_pub idle_in { 198.51.100.2 : jump set_idle30 }"), "{added}");
        assert!(added.contains("add element ip herd_x natted { 10.0.0.5 }"), "{added}");
        // The new mapping's timeout policy is not in a table written without it: nft refuses,
        // and the tables are then written whole.
        let out = std::process::Command::new("nft")
            .args(["-c", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(added.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(!out.status.success(), "a jump to a missing chain is refused");
        let same_policy = Mapping { idle_minutes: 4, ..n };
        crate::guard::check_script(&format!(
            "{}{}{}",
            p.script(&[m], &vnets),
            o.script(&vnets, &[]),
            p.element_script("add", &same_policy, "herd_x")
        ));
        let removed = p.element_script("delete", &n, "herd_x");
        assert!(removed.contains("delete element ip herd_x_pub inbound { 198.51.100.2 }"), "{removed}");
    }

    #[test]
    fn a_second_claim_on_an_address_is_dropped() {
        let m = |p: u8, q: u8| Mapping {
            public: Ipv4Addr::new(198, 51, 100, p),
            private: Ipv4Addr::new(10, 0, 0, q),
            idle_minutes: DEFAULT_IDLE_MINUTES,
        };
        let (a, b, c, d) = (m(1, 4), m(1, 5), m(2, 4), m(3, 6));
        assert_eq!(distinct(vec![a, b, c, d]), vec![a, d]);
    }
}
