//! The server's side of segments stretched across hosts: from where the reconciler says every
//! bridged NIC is ([`PlacedNic`]) and where each host's VTEP is (the address its agent's link
//! comes from), each member's stretch of each segment ([`Span`]): its VXLAN peers and where
//! every remote MAC lives. The server sends each host its own (`Segments`), and applies its own.
//!
//! Who is a member of a segment: every joined host with a NIC on it, and the server (it runs
//! the load balancer and the probes, and its own instances). A segment with no NIC on a joined
//! host is not stretched at all. A host on the server's own machine (its link comes from
//! loopback or from the server's address) shares the server's bridges and is not a VTEP.
//!
//! A host's VTEP address is the one its link came from, remembered while the server runs (a
//! link that drops for a moment does not cut its instances off the segment); a host deleted
//! or refused for its certificate is forgotten, so it leaves every forwarding table and
//! every allow-list.

use herd_driver::fabric::{FabricSink, PlacedNic};
use herd_hostnet::fabric::{self, Span};
use herd_model::nsg::NicSecurity;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Whose stretch to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member<'a> {
    Server,
    Host(&'a str),
}

#[derive(Debug, Default)]
struct View {
    /// None until the reconciler's first publish: nothing is sent before the server knows.
    nics: Option<Arc<Vec<PlacedNic>>>,
    vteps: BTreeMap<String, Ipv4Addr>,
    server: Option<Ipv4Addr>,
    /// Bridges already reported as sharing a VNI (reported once).
    collisions: BTreeSet<String>,
    /// Every filtered NIC's security, by instance (`group/set/id`): each host enforces its own.
    security: BTreeMap<String, NicSecurity>,
    /// Hosts deleted or refused: their NICs are in no table (not taken for the server's).
    gone: BTreeSet<String>,
}

/// The server's fabric: the reconciler's NICs and the hosts' VTEPs (see the module docs).
#[derive(Debug)]
pub struct Fabric {
    view: Mutex<View>,
    changed: watch::Sender<u64>,
}

impl Default for Fabric {
    fn default() -> Self {
        Self { view: Mutex::default(), changed: watch::channel(0).0 }
    }
}

impl Fabric {
    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Changes whenever any member's stretch may have changed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Host `name`'s link came from `peer` to the server's `local` address.
    pub fn linked(&self, name: &str, peer: IpAddr, local: IpAddr) {
        let (IpAddr::V4(peer), IpAddr::V4(local)) = (peer, local) else { return };
        let mut v = self.view();
        v.gone.remove(name);
        let before = (v.vteps.get(name).copied(), v.server);
        if !local.is_loopback() {
            v.server = Some(local);
        }
        if peer.is_loopback() || peer == local {
            v.vteps.remove(name);
        } else {
            v.vteps.insert(name.to_string(), peer);
        }
        let changed = before != (v.vteps.get(name).copied(), v.server);
        drop(v);
        if changed {
            self.bump();
        }
    }

    /// Host `name`'s VTEP as recorded (before its link comes back after a server restart); a
    /// loopback address (an agent on the server's own machine) makes it no VTEP.
    pub fn remember(&self, name: &str, addr: IpAddr) {
        let IpAddr::V4(addr) = addr else { return };
        let mut v = self.view();
        if addr.is_loopback() || v.vteps.contains_key(name) {
            return;
        }
        v.vteps.insert(name.to_string(), addr);
        drop(v);
        self.bump();
    }

    /// Host `name` is no member any more (deleted, or its certificate refused).
    pub fn forget(&self, name: &str) {
        let mut v = self.view();
        let known = v.vteps.remove(name).is_some();
        if v.gone.insert(name.to_string()) || known {
            drop(v);
            self.bump();
        }
    }

    /// Every filtered NIC's security now (the security controller's answer), by instance.
    pub fn set_security(&self, nics: Vec<(String, NicSecurity)>) {
        let security: BTreeMap<String, NicSecurity> = nics.into_iter().collect();
        let mut v = self.view();
        if v.security == security {
            return;
        }
        v.security = security;
        drop(v);
        self.bump();
    }

    /// The security of host `name`'s own NICs: the host enforces NSGs on the traffic its
    /// instances send and receive (across hosts, each direction is checked on the host of
    /// the NIC it belongs to). Empty before the reconciler's first publish.
    pub fn security_for(&self, name: &str) -> Vec<NicSecurity> {
        let v = self.view();
        let Some(nics) = v.nics.clone() else { return vec![] };
        nics.iter()
            .filter(|n| n.host.as_deref() == Some(name) && v.vteps.contains_key(name))
            .filter_map(|n| v.security.get(&n.key.path()).cloned())
            .collect()
    }

    /// `member`'s stretch of every segment, or None before the reconciler's first publish or
    /// while the server's own VTEP address is unknown (no host has linked yet).
    pub fn spans_for(&self, member: Member<'_>) -> Option<Vec<Span>> {
        let v = self.view();
        let nics = v.nics.clone()?;
        let server = v.server?;
        Some(plan(&nics, &v.vteps, &v.gone, server, member))
    }
}

impl FabricSink for Fabric {
    fn publish(&self, nics: Vec<PlacedNic>) {
        let mut v = self.view();
        if v.nics.as_deref() == Some(&nics) {
            return;
        }
        let bridges: BTreeSet<&str> = nics.iter().map(|n| n.net.bridge.as_str()).collect();
        let colliding = fabric::colliding_vnis(bridges.iter().copied());
        for b in colliding.difference(&v.collisions.clone()) {
            tracing::error!(bridge = %b, vni = fabric::vni_for(b), "two segments share a VXLAN id: neither is stretched across hosts (recreate one subnet under another name)");
        }
        v.collisions = colliding;
        v.nics = Some(Arc::new(nics));
        drop(v);
        self.bump();
    }
}

/// `member`'s stretch of every segment (see the module docs); the NICs of `gone` hosts are
/// left out. Pure.
pub fn plan(
    nics: &[PlacedNic],
    vteps: &BTreeMap<String, Ipv4Addr>,
    gone: &BTreeSet<String>,
    server: Ipv4Addr,
    member: Member<'_>,
) -> Vec<Span> {
    // Where each NIC is: a joined host's VTEP, or the server.
    let place = |n: &PlacedNic| n.host.as_deref().and_then(|h| vteps.get(h).copied()).unwrap_or(server);
    let mut by_bridge: BTreeMap<&str, Vec<&PlacedNic>> = BTreeMap::new();
    for n in nics.iter().filter(|n| !n.host.as_ref().is_some_and(|h| gone.contains(h))) {
        by_bridge.entry(n.net.bridge.as_str()).or_default().push(n);
    }
    let colliding = fabric::colliding_vnis(by_bridge.keys().copied());
    let me = match member {
        Member::Server => Some(server),
        Member::Host(h) => vteps.get(h).copied(),
    };
    let Some(me) = me else { return vec![] };
    let mut out = Vec::new();
    for (bridge, members) in by_bridge {
        if colliding.contains(bridge) {
            continue;
        }
        let hosts: BTreeSet<Ipv4Addr> = members.iter().map(|n| place(n)).filter(|a| *a != server).collect();
        // Not stretched: no NIC on a joined host; or not this host's.
        if hosts.is_empty() || (me != server && !hosts.contains(&me)) {
            continue;
        }
        let mut peers: BTreeSet<Ipv4Addr> = hosts.clone();
        peers.insert(server);
        peers.remove(&me);
        let mut macs: Vec<(String, Ipv4Addr)> = members
            .iter()
            .filter(|n| place(n) != me)
            .map(|n| (herd_hostnet::mac_for(&n.key.path()), place(n)))
            .collect();
        if me != server {
            macs.push((fabric::server_bridge_mac(bridge), server));
        }
        macs.sort();
        let mut names: Vec<(Ipv4Addr, String)> =
            members.iter().filter(|n| place(n) != me).map(|n| (n.net.address, n.name.clone())).collect();
        names.sort();
        let net = &members[0].net;
        out.push(Span {
            bridge: bridge.to_string(),
            vni: fabric::vni_for(bridge),
            gateway: net.gateway,
            prefix_len: net.prefix_len,
            mtu: net.mtu,
            vnet: net.vnet.clone(),
            outbound: net.outbound,
            local: me,
            peers: peers.into_iter().collect(),
            macs,
            names,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_model::InstanceKey;

    fn nic(id: u32, host: Option<&str>, bridge: &str) -> PlacedNic {
        PlacedNic {
            key: InstanceKey::parse_path(&format!("rg/web/{id}")).unwrap(),
            host: host.map(str::to_string),
            net: herd_driver::NetworkAttachment {
                bridge: bridge.into(),
                gateway: "10.0.1.1".parse().unwrap(),
                prefix_len: 24,
                address: format!("10.0.1.{}", 4 + id).parse().unwrap(),
                mtu: 1450,
                vnet: "hz".into(),
                outbound: true,
                public_address: None,
                public_idle_timeout_minutes: None,
            },
            name: format!("web{id:06}"),
        }
    }

    #[test]
    fn each_member_gets_its_peers_and_every_remote_mac() {
        let server: Ipv4Addr = "10.250.0.2".parse().unwrap();
        let vteps: BTreeMap<String, Ipv4Addr> =
            [("h1".to_string(), "10.250.0.10".parse().unwrap()), ("h2".to_string(), "10.250.0.11".parse().unwrap())]
                .into();
        let nics = vec![nic(0, Some("h1"), "hbA"), nic(1, Some("h2"), "hbA"), nic(2, None, "hbA"), nic(3, None, "hbB")];
        let none = BTreeSet::new();
        let s = plan(&nics, &vteps, &none, server, Member::Server);
        assert_eq!(s.len(), 1, "hbB has no NIC on a joined host: not stretched");
        assert_eq!(s[0].local, server);
        assert_eq!(s[0].peers, vec![vteps["h1"], vteps["h2"]]);
        assert_eq!(s[0].macs.len(), 2, "the two remote NICs: {:?}", s[0].macs);
        let h1 = plan(&nics, &vteps, &none, server, Member::Host("h1"));
        assert_eq!(h1.len(), 1);
        assert_eq!(h1[0].local, vteps["h1"]);
        assert_eq!(h1[0].peers, vec![server, vteps["h2"]]);
        // h2's NIC, the server's NIC and the server's bridge.
        assert_eq!(h1[0].macs.len(), 3);
        assert!(h1[0].macs.contains(&(fabric::server_bridge_mac("hbA"), server)));
        assert!(h1[0].macs.contains(&(herd_hostnet::mac_for("rg/web/1"), vteps["h2"])));
        assert!(!h1[0].macs.iter().any(|(m, _)| *m == herd_hostnet::mac_for("rg/web/0")), "not its own");
        let names: Vec<&str> = h1[0].names.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["web000001", "web000002"], "the remote NICs' names, not its own");
        // A host with no NIC on the segment carries none of it; an unknown host nothing.
        assert!(plan(&[nic(0, Some("h1"), "hbA")], &vteps, &none, server, Member::Host("h2")).is_empty());
        assert!(plan(&nics, &vteps, &none, server, Member::Host("h9")).is_empty());
    }

    #[test]
    fn a_host_on_the_servers_machine_is_no_vtep_and_nothing_is_said_before_the_first_publish() {
        let f = Fabric::default();
        f.linked("h1", "10.250.0.10".parse().unwrap(), "10.250.0.2".parse().unwrap());
        assert_eq!(f.spans_for(Member::Host("h1")), None, "nothing before the reconciler's view");
        f.publish(vec![nic(0, Some("h1"), "hbA")]);
        assert_eq!(f.spans_for(Member::Host("h1")).unwrap().len(), 1);
        f.linked("h1", "127.0.0.1".parse().unwrap(), "127.0.0.1".parse().unwrap());
        assert!(f.spans_for(Member::Host("h1")).unwrap().is_empty(), "loopback: the server's own bridges");
        f.linked("h1", "10.250.0.10".parse().unwrap(), "10.250.0.2".parse().unwrap());
        let mut rx = f.changes();
        rx.mark_unchanged();
        f.publish(vec![nic(0, Some("h1"), "hbA"), nic(1, Some("h2"), "hbA")]);
        f.linked("h2", "10.250.0.11".parse().unwrap(), "10.250.0.2".parse().unwrap());
        rx.mark_unchanged();
        f.forget("h1");
        assert!(rx.has_changed().unwrap());
        let server = f.spans_for(Member::Server).unwrap();
        assert_eq!(server[0].peers, vec!["10.250.0.11".parse::<Ipv4Addr>().unwrap()], "{server:?}");
        assert!(
            !server[0].macs.iter().any(|(m, _)| *m == herd_hostnet::mac_for("rg/web/0")),
            "a forgotten host's NICs are in no table, not taken for the server's: {server:?}"
        );
    }
}
