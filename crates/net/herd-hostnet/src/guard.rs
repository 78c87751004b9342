//! Anti-spoofing on every instance NIC: an nftables `bridge` table that drops what a port
//! sends under another identity.
//!
//! Why: instances share a bridge, so without this one could take another's MAC or IP (and
//! with it its DHCP lease, its DNS name, its load-balancer traffic, and later its metadata,
//! which is told apart by address). For every port herd plugs in (a VM's TAP, a process
//! instance's veth) the table holds the one MAC and the one IPv4 address the port may send
//! from; a frame from that port with another source MAC, an ARP claiming another address, or
//! an IPv4 packet from another address is dropped. DHCP's discover (from 0.0.0.0) passes, and
//! nothing but IPv4 and ARP does (vnets are IPv4). Ports that are not herd's are untouched.
//!
//! The same table tags what a port sends to the metadata address (169.254.169.254) with the
//! port's identity (the packet mark, from the `marks` map: the port's address as a number), so
//! the metadata service can tell callers apart by the port a request came in on, never by the
//! address it claims (see `metadata.rs`). The tag is set only after the checks above, and a
//! port that is not in the map sends untagged requests, which reach no listener.
//!
//! The rules never change; the sets change one element per instance (`nft add element`, one
//! call), and the whole table is written at once (atomically, from the port records) when it
//! is missing: at the first instance, or after someone deleted it.

use crate::NetError;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// One guarded port: the interface and the identity it may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub name: String,
    pub mac: String,
    pub ip: Ipv4Addr,
}

impl Port {
    /// The record's one-line form (`NAME MAC IP`).
    pub fn render(&self) -> String {
        format!("{} {} {}\n", self.name, self.mac, self.ip)
    }

    pub fn parse(s: &str) -> Option<Port> {
        let mut it = s.split_whitespace();
        Some(Port { name: it.next()?.to_string(), mac: it.next()?.to_string(), ip: it.next()?.parse().ok()? })
    }

    /// The identity its requests to the metadata address carry (the packet mark): its address
    /// as a number, unique among this server's ports because vnets may not overlap.
    pub fn mark(&self) -> u32 {
        u32::from(self.ip)
    }

    /// Its element in each set or map: (set, key, value for a map).
    fn elements(&self) -> [(&'static str, String, Option<String>); 4] {
        let (n, m, ip) = (&self.name, &self.mac, self.ip);
        [
            ("ports", format!("\"{n}\""), None),
            ("macs", format!("\"{n}\" . {m}"), None),
            ("addrs", format!("\"{n}\" . {m} . {ip}"), None),
            ("marks", format!("\"{n}\""), Some(format!("{:#010x}", self.mark()))),
        ]
    }
}

/// The nftables table of one server (family `bridge`).
#[derive(Debug, Clone)]
pub struct Guard {
    pub table: String,
}

/// The nft program.
fn nft_binary() -> Result<&'static str, NetError> {
    ["/usr/sbin/nft", "/sbin/nft"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .ok_or_else(|| NetError::Command("nft is not installed: apt-get install nftables".into()))
}

/// Runs `nft -f -` with `script` as its input.
pub(crate) fn run_nft(script: &str) -> Result<(), NetError> {
    let mut child = Command::new(nft_binary()?)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Command(format!("cannot run nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(|e| NetError::Command(format!("writing to nft: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| NetError::Command(format!("nft: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Command(format!("nft: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

impl Guard {
    /// The whole table with `ports` in its sets, replacing any table of that name in one
    /// transaction.
    pub fn script(&self, ports: &[Port]) -> String {
        let t = &self.table;
        let mut s = format!(
            "add table bridge {t}\ndelete table bridge {t}\ntable bridge {t} {{\n\
             \tset ports {{ type ifname; }}\n\
             \tset macs {{ type ifname . ether_addr; }}\n\
             \tset addrs {{ type ifname . ether_addr . ipv4_addr; }}\n\
             \tmap marks {{ type ifname : mark; }}\n\
             \tchain guard {{\n\
             \t\ttype filter hook prerouting priority -200; policy accept;\n\
             \t\tiifname != @ports accept\n\
             \t\tiifname . ether saddr != @macs counter drop\n\
             \t\tether type arp iifname . arp saddr ether . arp saddr ip != @addrs counter drop\n\
             \t\tether type ip ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept\n\
             \t\tether type ip iifname . ether saddr . ip saddr != @addrs counter drop\n\
             \t\tether type ip ip daddr {md} meta mark set iifname map @marks\n\
             \t\tether type != {{ ip, arp }} counter drop\n\
             \t}}\n}}\n",
            md = crate::metadata::ADDRESS,
        );
        for p in ports {
            s.push_str(&self.element_lines("add", p));
        }
        s
    }

    /// One `add` (with map values) or `delete` (keys only) line per element of `p`.
    fn element_lines(&self, verb: &str, p: &Port) -> String {
        p.elements()
            .iter()
            .map(|(set, key, value)| match value.as_ref().filter(|_| verb == "add") {
                Some(v) => format!("{verb} element bridge {} {set} {{ {key} : {v} }}\n", self.table),
                None => format!("{verb} element bridge {} {set} {{ {key} }}\n", self.table),
            })
            .collect()
    }

    /// Whether the table exists.
    pub fn exists(&self) -> bool {
        nft_lists("bridge", &self.table)
    }

    /// Writes the whole table with `ports` (see [`script`](Self::script)).
    pub fn install(&self, ports: &[Port]) -> Result<(), NetError> {
        run_nft(&self.script(ports))
    }

    /// Guards one more port (idempotent).
    pub fn admit(&self, p: &Port) -> Result<(), NetError> {
        run_nft(&self.element_lines("add", p))
    }

    /// Stops guarding a port. Ok if it was not guarded.
    pub fn forget(&self, p: &Port) -> Result<(), NetError> {
        // `destroy` (nft 1.0.8) is not in Debian 12's nft. Adding each element before deleting
        // it makes the delete succeed whether or not it was there, so the whole port goes in
        // one transaction (one `nft` call, one kernel grace period, instead of one per set).
        let script = format!("{}{}", self.element_lines("add", p), self.element_lines("delete", p));
        match run_nft(&script) {
            Ok(()) => Ok(()),
            // No table: nothing is guarded.
            Err(_) if !self.exists() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes the table. Ok if absent.
    pub fn remove(&self) -> Result<(), NetError> {
        run_nft(&format!("add table bridge {t}\ndelete table bridge {t}\n", t = self.table))
    }
}

/// Whether `nft list table FAMILY TABLE` succeeds (the table exists).
pub(crate) fn nft_lists(family: &str, table: &str) -> bool {
    nft_binary().is_ok_and(|nft| {
        Command::new(nft)
            .args(["list", "table", family, table])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Asserts that nft accepts `script` (`nft -c`: checked, nothing is changed). For tests.
#[cfg(test)]
pub(crate) fn check_script(script: &str) {
    let nft = nft_binary().expect("nft is not installed: apt-get install nftables (./scripts/setup.sh installs it)");
    let mut child =
        Command::new(nft).args(["-c", "-f", "-"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "nft -c refused the script: {}\n{script}", String::from_utf8_lossy(&out.stderr));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_round_trip_and_the_script_names_every_element() {
        let p = Port { name: "ht0123".into(), mac: "52:54:00:00:00:01".into(), ip: Ipv4Addr::new(10, 0, 0, 4) };
        assert_eq!(Port::parse(&p.render()), Some(p.clone()));
        let g = Guard { table: "herd_x".into() };
        let s = g.script(std::slice::from_ref(&p));
        assert!(s.starts_with("add table bridge herd_x\ndelete table bridge herd_x\n"), "{s}");
        assert!(s.contains("add element bridge herd_x addrs { \"ht0123\" . 52:54:00:00:00:01 . 10.0.0.4 }"), "{s}");
        assert!(s.contains("add element bridge herd_x marks { \"ht0123\" : 0x0a000004 }"), "{s}");
        check_script(&s);
    }
}
