//! The metadata address on every vnet: `169.254.169.254:80`, Azure's, where each bridged
//! instance reaches its own metadata listener.
//!
//! Why this shape: the metadata service gives every instance its own listener (its socket *is*
//! the caller's identity; see the `herd-metadata` crate), here a port of its own on the host.
//! An instance asks for `169.254.169.254:80`; which listener answers is decided by the bridge
//! port the request came in on, never by the address it claims:
//!
//! ```text
//!   instance ──▶ its TAP/veth ──▶ bridge guard (family bridge, guard.rs):
//!       spoofed source MAC/IP dropped; to 169.254.169.254: mark := the port's identity
//!   ──▶ this table's prerouting (family ip, nat): 169.254.169.254:80 with mark M
//!       ──▶ redirect to <the bridge's gateway>:<the listener of the instance whose identity is M>
//!   ──▶ input: from outside the host, a listener's port takes only redirected connections;
//!       a request straight to it, or one with no identity, is dropped
//! ```
//!
//! Why a redirect and not the address itself on the host: a host that holds 169.254.169.254
//! (on a bridge or `lo`) answers its own requests to that address, and a host that is itself a
//! cloud VM would lose its own metadata service. The redirect goes to the address of the bridge
//! the request came in on (its gateway, the first address), so nothing else on the host
//! changes. The table is small and written whole, in one transaction, whenever the listeners
//! change.

use crate::guard::{nft_lists, run_nft};
use crate::NetError;
use std::fmt::Write;
use std::net::Ipv4Addr;

/// Azure's instance metadata address, on every vnet.
pub const ADDRESS: Ipv4Addr = herd_model::network::METADATA_ADDRESS;

/// The port instances ask on.
pub const PORT: u16 = 80;

/// One bridged instance's listener: the identity of its bridge port (its private address) and
/// the port its listener has on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listener {
    pub instance: Ipv4Addr,
    pub port: u16,
}

/// The nftables table (family `ip`) of one server's metadata address.
#[derive(Debug, Clone)]
pub struct Metadata {
    pub table: String,
}

impl Metadata {
    /// The whole table for `listeners`, replacing any table of that name.
    pub fn script(&self, listeners: &[Listener]) -> String {
        let t = &self.table;
        let mut elements = String::new();
        for (i, l) in listeners.iter().enumerate() {
            let sep = if i == 0 { " elements = { " } else { ", " };
            let _ = write!(elements, "{sep}{:#010x} : {}", u32::from(l.instance), l.port);
        }
        if !elements.is_empty() {
            elements.push_str(" };");
        }
        let ports: Vec<String> = listeners.iter().map(|l| l.port.to_string()).collect();
        let ports = if ports.is_empty() { String::new() } else { format!(" elements = {{ {} }};", ports.join(", ")) };
        format!(
            "add table ip {t}\ndelete table ip {t}\ntable ip {t} {{\n\
             \tmap listeners {{ type mark : inet_service;{elements} }}\n\
             \tset ports {{ type inet_service;{ports} }}\n\
             \tchain prerouting {{\n\
             \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\tip daddr {ADDRESS} tcp dport {PORT} redirect to : meta mark map @listeners\n\
             \t}}\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\ttcp dport @ports ct status dnat accept\n\
             \t\tiif != \"lo\" tcp dport @ports counter drop\n\
             \t}}\n}}\n"
        )
    }

    /// Writes the table for `listeners`; removes it when there are none.
    pub fn install(&self, listeners: &[Listener]) -> Result<(), NetError> {
        if listeners.is_empty() {
            return self.remove();
        }
        run_nft(&self.script(listeners))
    }

    /// Removes the table. Ok if absent.
    pub fn remove(&self) -> Result<(), NetError> {
        run_nft(&format!("add table ip {t}\ndelete table ip {t}\n", t = self.table))
    }

    /// Whether the table exists.
    pub fn exists(&self) -> bool {
        nft_lists("ip", &self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_identity_is_sent_to_its_own_listener() {
        let m = Metadata { table: "herd_x_md".into() };
        let s = m.script(&[
            Listener { instance: Ipv4Addr::new(10, 0, 0, 4), port: 40001 },
            Listener { instance: Ipv4Addr::new(10, 0, 0, 5), port: 40002 },
        ]);
        assert!(s.contains("elements = { 0x0a000004 : 40001, 0x0a000005 : 40002 };"), "{s}");
        assert!(s.contains("redirect to : meta mark map @listeners"), "{s}");
        assert!(s.contains("set ports { type inet_service; elements = { 40001, 40002 }; }"), "{s}");
        crate::guard::check_script(&s);
        crate::guard::check_script(&m.script(&[]));
    }
}
