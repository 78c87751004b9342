//! Forwarding by lease, on a joined host: an instance's NIC forwards only while its entry in a
//! kernel-expiring nftables set is live. The server grants a lease of L seconds in each
//! acknowledgement of the agent's heartbeat, for the instances it lists; the agent renews
//! their entries with that L. So an agent that is frozen, hung or cut off from the server
//! fences its instances without running any code: the kernel lets the entries expire, and
//! from then on nothing the instance sends or is sent crosses its port, so an instance the
//! server has re-created elsewhere never answers from two hosts at once.
//!
//! ```text
//!   table bridge <t>_lease
//!     set leased { type ifname; flags timeout }       one element per leased port
//!     prerouting: from a herd port (ht* TAP, hv* veth): in @leased ─▶ counted, on; else dropped
//!     postrouting: to a herd port: in @leased ─▶ counted, on; else dropped
//! ```
//!
//! A port's entry:
//!
//! ```text
//!   absent (fenced) ──renew(L)──▶ leased until now+L ──renew(L)──▶ leased until now+L
//!        ▲                              │
//!        └──────── L passes (kernel) ───┘
//! ```
//!
//! Renewing is one transaction per call: for each port an `add`, a `delete` and an `add` with
//! the new timeout, so the timeout is re-armed whether or not the entry was there (an `add` of
//! a present element leaves its timeout as it was), and no port is ever briefly absent. The
//! table is written once, when missing; writing it again would empty the set (fence every
//! instance until the next renewal), so a present table is left as it is. At agent start (and
//! after a host reboot) the table starts empty: every NIC is fenced until the server's first
//! acknowledgement lists it.

use crate::guard::{nft_lists, run_nft};
use crate::NetError;
use std::time::Duration;

/// The interface names of herd's instance ports: a VM's TAP and a process instance's veth.
pub const PORT_PATTERNS: [&str; 2] = ["ht*", "hv*"];

/// The lease table of one host network.
#[derive(Debug, Clone)]
pub struct Leases {
    pub table: String,
}

impl Leases {
    /// The whole table, empty (every port fenced).
    pub fn script(&self) -> String {
        let t = &self.table;
        let mut from = String::new();
        let mut to = String::new();
        for p in PORT_PATTERNS {
            from.push_str(&format!(
                "\t\tiifname \"{p}\" iifname @leased counter accept comment \"leased\"\n\
                 \t\tiifname \"{p}\" counter drop comment \"fenced\"\n"
            ));
            to.push_str(&format!(
                "\t\toifname \"{p}\" oifname @leased counter accept comment \"leased\"\n\
                 \t\toifname \"{p}\" counter drop comment \"fenced\"\n"
            ));
        }
        format!(
            "add table bridge {t}\ndelete table bridge {t}\ntable bridge {t} {{\n\
             \tset leased {{ type ifname; flags timeout; }}\n\
             \tchain from_port {{\n\t\ttype filter hook prerouting priority -300; policy accept;\n{from}\t}}\n\
             \tchain to_port {{\n\t\ttype filter hook postrouting priority -300; policy accept;\n{to}\t}}\n}}\n"
        )
    }

    /// The renewal of `ports` for `lease`, as one transaction.
    pub fn renewal(&self, ports: &[String], lease: Duration) -> String {
        let ms = lease.as_millis().max(1);
        let t = &self.table;
        ports
            .iter()
            .map(|p| {
                format!(
                    "add element bridge {t} leased {{ \"{p}\" timeout {ms}ms }}\n\
                     delete element bridge {t} leased {{ \"{p}\" }}\n\
                     add element bridge {t} leased {{ \"{p}\" timeout {ms}ms }}\n"
                )
            })
            .collect()
    }

    pub fn exists(&self) -> bool {
        nft_lists("bridge", &self.table)
    }

    /// Writes the table (every port fenced) unless it is there. Returns whether it wrote.
    pub fn ensure(&self) -> Result<bool, NetError> {
        if self.exists() {
            return Ok(false);
        }
        run_nft(&self.script())?;
        Ok(true)
    }

    /// Leases `ports` for `lease` from now (see the module docs).
    pub fn renew(&self, ports: &[String], lease: Duration) -> Result<(), NetError> {
        if ports.is_empty() {
            return Ok(());
        }
        run_nft(&self.renewal(ports, lease))
    }

    /// Removes the table. Ok if absent.
    pub fn remove(&self) -> Result<(), NetError> {
        run_nft(&format!("add table bridge {t}\ndelete table bridge {t}\n", t = self.table))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_fences_every_herd_port_and_renewal_rearms_each_timeout() {
        let l = Leases { table: "herd_t_lease".into() };
        let s = l.script();
        for p in PORT_PATTERNS {
            assert!(s.contains(&format!("iifname \"{p}\" iifname @leased counter accept")), "{s}");
            assert!(s.contains(&format!("oifname \"{p}\" counter drop")), "{s}");
        }
        crate::guard::check_script(&s);
        let r = l.renewal(&["ht0".into()], Duration::from_millis(12_500));
        assert_eq!(r.matches("timeout 12500ms").count(), 2, "{r}");
        assert!(r.contains("delete element bridge herd_t_lease leased { \"ht0\" }"), "{r}");
        assert!(l.renewal(&[], Duration::from_secs(1)).is_empty());
    }
}
