//! Segments stretched across hosts: a VXLAN port on each host's bridge of a subnet, so
//! instances on different hosts share one layer-2 segment, and the server (which runs the load
//! balancer and the health probes) reaches every instance by its private IP.
//!
//! Why VXLAN with a static forwarding table, and nothing learned: the server knows where every
//! NIC is (it placed the instance), so it tells every host of a segment each remote NIC's MAC
//! and the host (VTEP) behind it, and one all-zero entry per peer for broadcast (ARP, and
//! frames for a MAC nobody announced yet). With `nolearning`, a frame from the fabric never
//! teaches a host where a MAC lives: a host that was cut off, or a spoofed encapsulated frame,
//! cannot take traffic meant for another.
//!
//! What stays on each host (an anycast gateway): every host's bridge of a subnet holds its
//! gateway `.1` with the same MAC ([`GATEWAY_MAC`]), so an instance's gateway, DHCP server and
//! metadata endpoint are its own host's, wherever it runs, and an instance moved to another
//! host finds the same gateway MAC. The VXLAN port drops what would let one host's gateway
//! answer for another's: ARP for or from a gateway, frames from the gateway MAC, DHCP (UDP 67
//! and 68) and traffic to 169.254.169.254. The server's bridges are the exception: they carry
//! the probe and load-balancer sources (`.2`, `.3`) beside the gateway, so they keep a MAC of
//! their own ([`server_bridge_mac`]) that remote instances can answer to.
//!
//! ```text
//!   host A                                   host B
//!   vm1 ─tap─┐                                ┌─tap─ vm2
//!            br (.1, GATEWAY_MAC) ── vx ═VXLAN═ vx ── br (.1, GATEWAY_MAC)
//!                                   ║ (drops: ARP .1, GATEWAY_MAC, DHCP, 169.254.169.254)
//!                        server: br (.1 .2 .3, its own MAC) ── vx
//! ```
//!
//! A span's life on one host (what the server last said, kept in `<bridge>/span`):
//!
//! ```text
//!   none ──span listed──▶ spanned (vx port, FDB, drop rules) ──listed again──▶ spanned (FDB diffed)
//!     ▲                        │
//!     └──not listed any more───┘  vx port deleted; the bridge goes with its last reservation
//! ```

use crate::guard::{nft_lists, run_nft};
use crate::link::ip;
use crate::NetError;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;

/// The UDP port VXLAN uses (IANA's).
pub const VXLAN_PORT: u16 = 4789;

/// What VXLAN adds to every frame: the vnet MTU is the fabric's minus this.
pub const VXLAN_OVERHEAD: u16 = 50;

/// The MAC of every herd gateway (`.1`) on hosts: locally administered, unicast.
pub const GATEWAY_MAC: &str = "02:68:72:64:00:01";

/// The MAC of the server's bridge `bridge`: its own (not the gateway's), stable across
/// restarts, so hosts can be told where it is.
pub fn server_bridge_mac(bridge: &str) -> String {
    let h = crate::stable_hash(format!("server|{bridge}")).to_be_bytes();
    format!("02:68:{:02x}:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2], h[3])
}

/// The VXLAN network identifier of the segment with bridge `bridge`: 24 bits of the hash of
/// its name (never 0). Two segments of one cluster share one with a probability of about
/// n²/2²⁵ for n segments; the server refuses to stretch both then (see
/// [`colliding_vnis`]).
pub fn vni_for(bridge: &str) -> u32 {
    ((crate::stable_hash(format!("vni|{bridge}")) & 0xff_ffff) as u32).max(1)
}

/// The bridges in `bridges` whose VNI another one has too.
pub fn colliding_vnis<'a>(bridges: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    let mut seen: std::collections::BTreeMap<u32, Vec<&str>> = Default::default();
    for b in bridges {
        seen.entry(vni_for(b)).or_default().push(b);
    }
    seen.into_values().filter(|v| v.len() > 1).flatten().map(str::to_string).collect()
}

/// The VXLAN port of bridge `bridge`.
pub fn vxlan_name(bridge: &str) -> String {
    crate::short_name("hx", bridge)
}

/// One segment as it spans hosts, from this host's side.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    pub bridge: String,
    pub vni: u32,
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    pub mtu: u16,
    /// The vnet's short name (its DNS directory).
    pub vnet: String,
    pub outbound: bool,
    /// This host's VTEP address (where peers send this segment's frames).
    pub local: Ipv4Addr,
    /// Every other VTEP of the segment: broadcast goes to each.
    pub peers: Vec<Ipv4Addr>,
    /// Every remote NIC (and the server's bridge): its MAC and the VTEP behind it.
    pub macs: Vec<(String, Ipv4Addr)>,
    /// Every remote NIC's address and computer name: this host's DNS for the vnet answers
    /// them too.
    #[serde(default)]
    pub names: Vec<(Ipv4Addr, String)>,
}

impl Span {
    /// The forwarding entries the VXLAN port must hold: (MAC, VTEP).
    pub fn fdb(&self) -> BTreeSet<(String, Ipv4Addr)> {
        let mut out: BTreeSet<(String, Ipv4Addr)> = self.peers.iter().map(|p| (ZERO_MAC.to_string(), *p)).collect();
        out.extend(self.macs.iter().map(|(m, v)| (m.to_ascii_lowercase(), *v)));
        out
    }
}

const ZERO_MAC: &str = "00:00:00:00:00:00";

/// The VXLAN port of `span` exists with its VNI and local address, is a port of the bridge
/// with the segment's MTU, and is up. A port with another VNI or address is made again.
pub(crate) fn ensure_port(span: &Span, recorded: Option<&Span>) -> Result<(), NetError> {
    let name = vxlan_name(&span.bridge);
    let changed = recorded.is_some_and(|r| r.vni != span.vni || r.local != span.local);
    if changed || (recorded.is_none() && crate::link::exists(&name)) {
        crate::link::remove(&name)?;
    }
    if !crate::link::exists(&name) {
        ip(&[
            "link",
            "add",
            &name,
            "type",
            "vxlan",
            "id",
            &span.vni.to_string(),
            "local",
            &span.local.to_string(),
            "dstport",
            &VXLAN_PORT.to_string(),
            "nolearning",
        ])?;
    }
    ip(&["link", "set", &name, "master", &span.bridge, "mtu", &span.mtu.to_string(), "up"])
}

/// The VXLAN port's own forwarding entries now: (MAC, VTEP).
fn fdb_now(port: &str) -> Result<BTreeSet<(String, Ipv4Addr)>, NetError> {
    let out = Command::new("bridge")
        .args(["fdb", "show", "dev", port])
        .output()
        .map_err(|e| NetError::Command(format!("cannot run bridge (install iproute2): {e}")))?;
    if !out.status.success() {
        return Err(NetError::Command(format!(
            "bridge fdb show dev {port}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(parse_fdb(&String::from_utf8_lossy(&out.stdout)))
}

/// The `dst` entries of `bridge fdb show` output (the bridge's own learned entries, which name
/// no `dst`, are not the port's).
fn parse_fdb(text: &str) -> BTreeSet<(String, Ipv4Addr)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let mac = it.next()?.to_ascii_lowercase();
            let mut dst = None;
            while let Some(w) = it.next() {
                if w == "dst" {
                    dst = it.next().and_then(|a| a.parse().ok());
                }
            }
            Some((mac, dst?))
        })
        .collect()
}

/// Makes the port's forwarding entries exactly `span.fdb()`, in one `bridge -batch`. Returns
/// how many entries it added and removed.
pub(crate) fn sync_fdb(span: &Span) -> Result<(usize, usize), NetError> {
    let port = vxlan_name(&span.bridge);
    let want = span.fdb();
    let have = fdb_now(&port)?;
    let mut lines = Vec::new();
    for (mac, dst) in have.difference(&want) {
        lines.push(format!("fdb del {mac} dev {port} dst {dst} self"));
    }
    let added = want.difference(&have).count();
    for (mac, dst) in want.difference(&have) {
        // All-zero entries are appended (one per peer); a MAC has one place: replaced.
        let verb = if mac == ZERO_MAC { "append" } else { "replace" };
        lines.push(format!("fdb {verb} {mac} dev {port} dst {dst} self permanent"));
    }
    let removed = lines.len() - added;
    if !lines.is_empty() {
        crate::link::batch("bridge", None, &lines)?;
    }
    Ok((added, removed))
}

/// The nftables tables that border the fabric: one (family `bridge`) keeps each host's
/// gateway, DHCP and metadata local (it drops them at every VXLAN port, both ways); the other
/// (family `ip`, the same name) lets VXLAN in only from the segments' current peers, so a host
/// that left the cluster (deleted, revoked) can no longer inject frames.
#[derive(Debug, Clone)]
pub struct Border {
    pub table: String,
}

impl Border {
    /// The whole table for these VXLAN ports and gateways, replacing any table of that name.
    pub fn script(&self, ports: &[String], gateways: &[Ipv4Addr], peers: &[Ipv4Addr]) -> String {
        let t = &self.table;
        let list = |items: Vec<String>| {
            if items.is_empty() {
                String::new()
            } else {
                format!(" elements = {{ {} }};", items.join(", "))
            }
        };
        let ports = list(ports.iter().map(|p| format!("\"{p}\"")).collect());
        let gateways = list(gateways.iter().map(|g| g.to_string()).collect());
        let mut peers: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
        peers.sort();
        peers.dedup();
        let peers = list(peers);
        let rules = |dir: &str| {
            format!(
                "\t\t{dir} != @fabric accept\n\
                 \t\tether saddr {GATEWAY_MAC} counter drop\n\
                 \t\tether type arp arp saddr ip @gateways counter drop\n\
                 \t\tether type arp arp daddr ip @gateways counter drop\n\
                 \t\tether type ip udp dport {{ 67, 68 }} counter drop\n\
                 \t\tether type ip ip daddr {md} counter drop\n",
                md = crate::metadata::ADDRESS,
            )
        };
        format!(
            "add table bridge {t}\ndelete table bridge {t}\ntable bridge {t} {{\n\
             \tset fabric {{ type ifname;{ports} }}\n\
             \tset gateways {{ type ipv4_addr;{gateways} }}\n\
             \tchain from_fabric {{\n\t\ttype filter hook prerouting priority -250; policy accept;\n{from}\t}}\n\
             \tchain to_fabric {{\n\t\ttype filter hook postrouting priority 0; policy accept;\n{to}\t}}\n}}\n\
             add table ip {t}\ndelete table ip {t}\ntable ip {t} {{\n\
             \tset peers {{ type ipv4_addr;{peers} }}\n\
             \tchain vxlan_in {{\n\t\ttype filter hook input priority -10; policy accept;\n\
             \t\tudp dport {VXLAN_PORT} ip saddr != @peers counter drop\n\t}}\n}}\n",
            from = rules("iifname"),
            to = rules("oifname"),
        )
    }

    pub fn exists(&self) -> bool {
        nft_lists("bridge", &self.table) && nft_lists("ip", &self.table)
    }

    /// Removes both tables. Ok if absent.
    pub fn remove(&self) -> Result<(), NetError> {
        run_nft(&format!(
            "add table bridge {t}\ndelete table bridge {t}\nadd table ip {t}\ndelete table ip {t}\n",
            t = self.table
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span() -> Span {
        Span {
            bridge: "hb0123456789ab".into(),
            vni: vni_for("hb0123456789ab"),
            gateway: Ipv4Addr::new(10, 0, 1, 1),
            prefix_len: 24,
            mtu: 1450,
            vnet: "hz0".into(),
            outbound: true,
            local: Ipv4Addr::new(10, 250, 0, 10),
            peers: vec![Ipv4Addr::new(10, 250, 0, 2), Ipv4Addr::new(10, 250, 0, 11)],
            macs: vec![("52:54:AA:00:00:01".into(), Ipv4Addr::new(10, 250, 0, 11))],
            names: vec![(Ipv4Addr::new(10, 0, 1, 5), "web000001".into())],
        }
    }

    #[test]
    fn the_forwarding_table_has_one_zero_entry_per_peer_and_one_per_remote_mac() {
        let f = span().fdb();
        assert_eq!(f.len(), 3);
        assert!(f.contains(&(ZERO_MAC.into(), Ipv4Addr::new(10, 250, 0, 2))));
        assert!(f.contains(&("52:54:aa:00:00:01".into(), Ipv4Addr::new(10, 250, 0, 11))), "lower-cased");
    }

    #[test]
    fn fdb_output_is_read_by_its_dst_entries_only() {
        let text = "00:00:00:00:00:00 dst 10.250.0.2 self permanent\n\
                    00:00:00:00:00:00 dst 10.250.0.11 self permanent\n\
                    52:54:aa:00:00:01 dst 10.250.0.11 self permanent\n\
                    ce:4f:11:22:33:44 master hb0123456789ab \n\
                    33:33:00:00:00:01 self permanent\n";
        let f = parse_fdb(text);
        assert_eq!(f.len(), 3, "{f:?}");
        assert_eq!(f, span().fdb());
    }

    #[test]
    fn vnis_are_24_bit_stable_and_collisions_are_found() {
        let v = vni_for("hb0123456789ab");
        assert!(v > 0 && v < (1 << 24));
        assert_eq!(v, vni_for("hb0123456789ab"));
        assert!(colliding_vnis(["a", "b", "c"]).is_empty());
        assert_eq!(colliding_vnis(["a", "a"]).len(), 1);
        assert_eq!(vxlan_name("hb0123456789ab").len(), 14);
        assert_ne!(server_bridge_mac("hb0"), GATEWAY_MAC);
        assert!(server_bridge_mac("hb0").starts_with("02:68:"));
    }

    #[test]
    fn the_border_drops_gateway_dhcp_and_metadata_both_ways() {
        let b = Border { table: "herd_t_vx".into() };
        let peer = Ipv4Addr::new(10, 250, 0, 11);
        let s = b.script(&[vxlan_name("hb0123456789ab")], &[Ipv4Addr::new(10, 0, 1, 1)], &[peer, peer]);
        assert!(s.contains("set peers { type ipv4_addr; elements = { 10.250.0.11 }; }"), "{s}");
        assert!(s.contains("udp dport 4789 ip saddr != @peers counter drop"), "{s}");
        assert!(s.contains("iifname != @fabric accept"), "{s}");
        assert!(s.contains("oifname != @fabric accept"), "{s}");
        assert_eq!(s.matches(&format!("ether saddr {GATEWAY_MAC} counter drop")).count(), 2, "{s}");
        assert_eq!(s.matches("udp dport { 67, 68 } counter drop").count(), 2, "{s}");
        assert_eq!(s.matches("ip daddr 169.254.169.254 counter drop").count(), 2, "{s}");
        crate::guard::check_script(&s);
        crate::guard::check_script(&b.script(&[], &[], &[]));
    }
}
