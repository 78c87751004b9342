//! The host side of bridged networking: one Linux bridge per subnet with the subnet's gateway
//! (`.1`) on it, each instance's NIC as a port of that bridge (a TAP for a VM, a veth for a
//! process instance), and one `dnsmasq` per bridge that hands out herd's address reservations
//! by DHCP and answers DNS for the vnet's instance names.
//!
//! Why a crate of its own: both host drivers plug instances into the same segments, and the
//! many-hosts work stretches the same segments across hosts (VXLAN ports on these bridges),
//! run by `herd agent` on each host. Addresses are decided centrally (the reconciler's IPAM);
//! this crate only makes the host match them.
//!
//! Why a bridge per subnet (not per vnet): a subnet is what has a gateway, a prefix and a DHCP
//! range, so one bridge carries exactly one of each; subnets of one vnet are routed between
//! each other by the host, as Azure routes between subnets. DNS is per vnet: the dnsmasqs of
//! a vnet's subnets share one directory of names.
//!
//! Where its state lives: `/run/herd/net/<server>/`, because everything it describes
//! (bridges, TAPs, dnsmasq) is gone after a reboot too, and dnsmasq runs as `nobody`, which
//! must read the files (a data dir is private). Nothing in it is secret (MACs, addresses and
//! instance names):
//!
//! ```text
//!   /run/herd/net/<server>/
//!     <bridge>/segment          gateway, prefix, MTU and vnet: what repair needs
//!     <bridge>/dhcp/<owner>     "MAC,IP,NAME": one reservation per instance
//!     <bridge>/dnsmasq.pid, leases, dnsmasq.log
//!     dns-<vnet>/<owner>        "IP NAME": one name per instance, for the whole vnet
//!     ports/<owner>             "PORT MAC IP": what the port may send as (see [`guard`])
//!     public/<owner>            "PUBLIC PRIVATE MINUTES": the instance's public IP (see [`public`])
//!     <bridge>/span             the segment's VXLAN port and peers, as the server last said
//!                               (see [`fabric`])
//! ```
//!
//! Two roles: the server's host network ([`Role::Server`], the default) gives each bridge the
//! probe and load-balancer sources and a MAC of its own; a joined host's ([`Role::Host`])
//! gives each bridge the gateway alone, with the anycast gateway MAC (see [`fabric`]).
//!
//! A segment's life (the bridge and its dnsmasq together):
//!
//! ```text
//!   none ──attach (first instance)──▶ serving ──attach/detach (not the last)──▶ serving
//!     ▲                                  │
//!     └──detach of the last instance─────┘   (dnsmasq stopped, bridge deleted, files gone)
//!   serving, after a kill -9 of the server: still serving; the next server adopts it
//!   serving, after dnsmasq died or the bridge vanished: repair() restores both
//!   spanned (listed by the server's fabric): kept, even with no reservation, until unlisted
//! ```

#![forbid(unsafe_code)]

pub mod conflicts;
pub mod dnsmasq;
pub mod fabric;
pub mod guard;
pub mod lease;
pub mod link;
pub mod metadata;
mod names;
pub mod outbound;
pub mod public;
pub mod security;
pub mod tools;

pub use dnsmasq::Lease;
pub use names::{mac_for, short_name, stable_hash, tap_name};

use herd_driver::NetworkAttachment;
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// Where every server's host-network state lives (see the crate docs).
pub const RUN_ROOT: &str = "/run/herd/net";

pub use herd_driver::DEFAULT_MTU;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A command failed; the message says which and why.
    #[error("{0}")]
    Command(String),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Io { what, source }
}

/// One instance's entry in its segment's DHCP and DNS.
#[derive(Debug, Clone, Copy)]
pub struct Reservation<'a> {
    /// What the reservation belongs to, unique within the server (the instance key's path).
    pub owner: &'a str,
    pub mac: &'a str,
    /// The instance's computer name, served by DHCP and resolvable within the vnet.
    pub name: &'a str,
    /// The instance's port on the bridge (a TAP or the host end of a veth): it may send only as
    /// `mac` and the reserved address (see [`guard`]).
    pub port: &'a str,
}

/// A bridge's `segment` file: what it takes to rebuild the bridge and restart its dnsmasq.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    gateway: Ipv4Addr,
    prefix_len: u8,
    mtu: u16,
    outbound: bool,
    vnet: String,
}

impl Segment {
    fn of(att: &NetworkAttachment) -> Self {
        Segment {
            gateway: att.gateway,
            prefix_len: att.prefix_len,
            mtu: att.mtu,
            outbound: att.outbound,
            vnet: att.vnet.clone(),
        }
    }

    /// `GATEWAY PREFIX_LEN MTU OUTBOUND(0|1) VNET` (the vnet last: it may be empty).
    fn render(&self) -> String {
        format!("{} {} {} {} {}\n", self.gateway, self.prefix_len, self.mtu, u8::from(self.outbound), self.vnet)
    }

    fn parse(s: &str) -> Option<Self> {
        let mut it = s.split_whitespace();
        Some(Segment {
            gateway: it.next()?.parse().ok()?,
            prefix_len: it.next()?.parse().ok()?,
            mtu: it.next()?.parse().ok()?,
            outbound: it.next()? != "0",
            vnet: it.next().unwrap_or_default().to_string(),
        })
    }

    fn of_span(s: &fabric::Span) -> Self {
        Segment { gateway: s.gateway, prefix_len: s.prefix_len, mtu: s.mtu, outbound: s.outbound, vnet: s.vnet.clone() }
    }

    fn prefix(&self) -> outbound::Prefix {
        let mask = u32::from(dnsmasq::netmask(self.prefix_len));
        outbound::Prefix {
            network: Ipv4Addr::from(u32::from(self.gateway) & mask),
            len: self.prefix_len,
            outbound: self.outbound,
        }
    }
}

/// Whose host network this is (see the crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The server's: bridges carry the probe and load-balancer sources, with their own MAC.
    Server,
    /// A joined host's: bridges carry the gateway alone, with [`fabric::GATEWAY_MAC`].
    Host,
}

/// The host network of one server (see the crate docs). Calls are serialized; each is
/// idempotent, so a call after a crash finishes what the crashed one started.
pub struct HostNet {
    root: PathBuf,
    guard: guard::Guard,
    outbound: outbound::Outbound,
    public: public::Public,
    security: security::Security,
    /// The NSG script last written ("" for none), so an unchanged set of rules costs nothing.
    secured: Mutex<Option<String>>,
    metadata: metadata::Metadata,
    /// The metadata listeners last written, likewise.
    served: Mutex<Option<Vec<metadata::Listener>>>,
    /// Bridges this process has seen serving: the common path checks only that the bridge and
    /// its dnsmasq still exist (a `stat` each), instead of running `ip`.
    state: Mutex<HashSet<String>>,
    role: Mutex<Role>,
    border: fabric::Border,
    leases: lease::Leases,
    /// The border table last written (its ports and gateways), likewise.
    bordered: Mutex<Option<String>>,
}

impl HostNet {
    /// The host network under `root` (tests); servers use [`HostNet::for_tag`].
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        // One name for both of the server's tables (families bridge and ip).
        let table = short_name("herd_", &root.display().to_string());
        let security = security::Security { table: format!("{table}_nsg") };
        let metadata = metadata::Metadata { table: format!("{table}_md") };
        let public = public::Public { table: format!("{table}_pub") };
        let border = fabric::Border { table: format!("{table}_vx") };
        let leases = lease::Leases { table: format!("{table}_lease") };
        let (guard, outbound) = (guard::Guard { table: table.clone() }, outbound::Outbound { table });
        HostNet {
            root,
            guard,
            outbound,
            public,
            security,
            secured: Mutex::new(None),
            metadata,
            served: Mutex::new(None),
            state: Mutex::new(HashSet::new()),
            role: Mutex::new(Role::Server),
            border,
            leases,
            bordered: Mutex::new(None),
        }
    }

    /// Makes this a joined host's network (see [`Role`]); call before the first attach.
    pub fn set_role(&self, role: Role) {
        *self.role.lock().unwrap_or_else(PoisonError::into_inner) = role;
    }

    pub fn role(&self) -> Role {
        *self.role.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The bridge MAC and whether it carries the service sources, by role.
    fn bridge_identity(&self, bridge: &str) -> (String, bool) {
        match self.role() {
            Role::Server => (fabric::server_bridge_mac(bridge), true),
            Role::Host => (fabric::GATEWAY_MAC.to_string(), false),
        }
    }

    fn ensure_bridge(&self, bridge: &str, seg: &Segment) -> Result<(), NetError> {
        let (mac, service) = self.bridge_identity(bridge);
        link::ensure_bridge(bridge, seg.gateway, seg.prefix_len, seg.mtu, &mac, service)
    }

    /// The host network of the server with driver tag `tag`, under [`RUN_ROOT`]: one value per
    /// tag in this process, shared by every driver of that tag, so their calls on it are
    /// serialized.
    pub fn for_tag(tag: &str) -> Arc<Self> {
        static NETS: OnceLock<Mutex<HashMap<String, Arc<HostNet>>>> = OnceLock::new();
        let mut nets = NETS.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
        let root = Path::new(RUN_ROOT).join(short_name("s", tag));
        nets.entry(tag.to_string()).or_insert_with(|| Arc::new(Self::new(root))).clone()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn bridge_dir(&self, bridge: &str) -> PathBuf {
        self.root.join(bridge)
    }

    fn names_dir(&self, vnet: &str) -> PathBuf {
        self.root.join(format!("dns-{vnet}"))
    }

    fn service<'a>(bridge: &'a str, seg: &Segment, dir: &'a Path, names: &'a Path) -> dnsmasq::Service<'a> {
        dnsmasq::Service { bridge, gateway: seg.gateway, prefix_len: seg.prefix_len, mtu: seg.mtu, dir, names }
    }

    /// The segment of `att` serves (bridge up with its gateway, dnsmasq running) and holds the
    /// reservation `r` for `att.address`. Call before the instance's NIC comes up, so its
    /// first DHCP request is answered.
    pub fn attach(&self, att: &NetworkAttachment, r: &Reservation<'_>) -> Result<(), NetError> {
        let mut seen = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let dir = self.bridge_dir(&att.bridge);
        let names = self.names_dir(&att.vnet);
        let seg = Segment::of(att);
        let known = seen.contains(&att.bridge) && link::exists(&att.bridge) && dnsmasq::running(&dir).is_some();
        if !known {
            for d in [&self.root, &dir, &dnsmasq::reservations_dir(&dir), &names] {
                make_dir(d)?;
            }
            write_atomic(&dir, &dir.join("segment"), &seg.render())?;
            self.ensure_bridge(&att.bridge, &seg)?;
            self.install_nat()?;
        }
        let file = names::owner_file(r.owner);
        // The port is guarded before the instance can send anything.
        let port = guard::Port { name: r.port.to_string(), mac: r.mac.to_string(), ip: att.address };
        make_dir(&self.ports_dir())?;
        write_atomic(&self.root, &self.ports_dir().join(&file), &port.render())?;
        // (A table deleted behind our back is written again whole.)
        if !known || self.guard.admit(&port).is_err() {
            self.guard.install(&self.ports())?;
        }
        // Its public IP is NATed before it can get traffic by it (and stops being NATed when
        // the instance no longer has one).
        let nat_file = self.public_dir().join(&file);
        let old = std::fs::read_to_string(&nat_file).ok().and_then(|t| public::Mapping::parse(&t));
        match att.public_address {
            Some(public) => {
                let m = public::Mapping {
                    public,
                    private: att.address,
                    idle_minutes: att.public_idle_timeout_minutes.unwrap_or(public::DEFAULT_IDLE_MINUTES),
                };
                make_dir(&self.public_dir())?;
                write_atomic(&self.root, &nat_file, &m.render())?;
                // A new mapping, or the same again (after a crash between the record and the
                // tables, or a table deleted behind our back), goes in as elements: one small,
                // idempotent transaction. A changed one, or one whose table or timeout policy
                // is missing, gets the tables written whole from the records.
                if old.is_some_and(|o| o != m)
                    || guard::run_nft(&self.public.element_script("add", &m, &self.outbound.table)).is_err()
                {
                    self.install_nat()?;
                }
            }
            None => {
                if let Some(o) = old {
                    self.unmap(&o, &nat_file)?;
                }
            }
        }
        write_atomic(
            &dir,
            &dnsmasq::reservations_dir(&dir).join(&file),
            &format!("{},{},{}\n", r.mac, att.address, r.name),
        )?;
        write_atomic(&self.root, &names.join(&file), &format!("{} {}\n", att.address, r.name))?;
        if !known {
            dnsmasq::ensure(&Self::service(&att.bridge, &seg, &dir, &names))?;
            seen.insert(att.bridge.clone());
        }
        Ok(())
    }

    /// Removes `owner`'s reservation and name wherever they are. When that was the last
    /// reservation of a segment, the segment goes: dnsmasq stopped, bridge deleted, files
    /// removed. Ok if there was nothing.
    pub fn detach(&self, owner: &str) -> Result<(), NetError> {
        let mut seen = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let file = names::owner_file(owner);
        let port_file = self.ports_dir().join(&file);
        if let Some(port) = std::fs::read_to_string(&port_file).ok().and_then(|t| guard::Port::parse(&t)) {
            self.guard.forget(&port)?;
        }
        let mut changed = remove_file(&port_file)?;
        let nat_file = self.public_dir().join(&file);
        if let Some(old) = std::fs::read_to_string(&nat_file).ok().and_then(|t| public::Mapping::parse(&t)) {
            self.unmap(&old, &nat_file)?;
            changed = true;
        }
        for (bridge, seg) in self.segments() {
            let dir = self.bridge_dir(&bridge);
            changed |= remove_file(&dnsmasq::reservations_dir(&dir).join(&file))?;
            changed |= remove_file(&self.names_dir(&seg.vnet).join(&file))?;
        }
        if changed {
            self.settle(&mut seen, true)?;
        }
        Ok(())
    }

    fn ports_dir(&self) -> PathBuf {
        self.root.join("ports")
    }

    fn public_dir(&self) -> PathBuf {
        self.root.join("public")
    }

    /// Every public IP's mapping (one per address; see [`public::distinct`]).
    fn mappings(&self) -> Vec<public::Mapping> {
        let Ok(dir) = std::fs::read_dir(self.public_dir()) else { return vec![] };
        let mut files: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        files.sort();
        public::distinct(
            files.iter().filter_map(|p| public::Mapping::parse(&std::fs::read_to_string(p).ok()?)).collect(),
        )
    }

    /// Takes mapping `m` out of the tables (its elements, in one transaction), then removes its
    /// record `file`. With the last mapping, or when the elements were not there (a crash
    /// between the two last time), the tables are written whole from the records left.
    fn unmap(&self, m: &public::Mapping, file: &Path) -> Result<(), NetError> {
        let deleted = guard::run_nft(&self.public.element_script("delete", m, &self.outbound.table)).is_ok();
        remove_file(file)?;
        if !deleted || self.mappings().is_empty() {
            self.install_nat()?;
        }
        Ok(())
    }

    /// Writes the outbound table (from the segment and public-IP records) and the public IPs'
    /// NAT table (removed with the last mapping) in one transaction: an address is NATed
    /// exactly when the outbound filter lets it through, and both know every vnet.
    fn install_nat(&self) -> Result<(), NetError> {
        let (maps, prefixes) = (self.mappings(), self.prefixes());
        let natted: Vec<Ipv4Addr> = maps.iter().map(|m| m.private).collect();
        let mut script = self.public.script_or_removal(&maps, &prefixes);
        script.push_str(&self.outbound.prepare(&prefixes, &natted)?);
        guard::run_nft(&script)
    }

    /// The nftables table (family `ip`) that NATs this server's public IPs.
    pub fn public_table(&self) -> &str {
        &self.public.table
    }

    /// Every guarded port's record.
    fn ports(&self) -> Vec<guard::Port> {
        let Ok(dir) = std::fs::read_dir(self.ports_dir()) else { return vec![] };
        dir.flatten().filter_map(|e| guard::Port::parse(&std::fs::read_to_string(e.path()).ok()?)).collect()
    }

    /// Every segment's prefix and outbound access.
    fn prefixes(&self) -> Vec<outbound::Prefix> {
        self.segments().iter().map(|(_, seg)| seg.prefix()).collect()
    }

    /// The nftables table that guards this server's ports.
    pub fn guard_table(&self) -> &str {
        &self.guard.table
    }

    /// Tears down segments with no reservation left (and, with `reload`, makes every other
    /// dnsmasq read its files again, after a reservation was removed).
    fn settle(&self, seen: &mut HashSet<String>, reload: bool) -> Result<(), NetError> {
        let mut gone = false;
        for (bridge, seg) in self.segments() {
            let dir = self.bridge_dir(&bridge);
            if is_empty(&dnsmasq::reservations_dir(&dir)) && self.spanned(&bridge).is_some() {
                // Still a stretch of a segment other hosts use: no DHCP to serve here.
                dnsmasq::stop(&dir);
                seen.remove(&bridge);
            } else if is_empty(&dnsmasq::reservations_dir(&dir)) {
                dnsmasq::stop(&dir);
                link::remove(&fabric::vxlan_name(&bridge))?;
                link::remove(&bridge)?;
                std::fs::remove_dir_all(&dir).map_err(io_err(format!("removing {}", dir.display())))?;
                seen.remove(&bridge);
                gone = true;
                let names = self.names_dir(&seg.vnet);
                if is_empty(&names) {
                    let _ = std::fs::remove_dir(&names);
                }
            } else if reload {
                dnsmasq::reload(&dir);
            }
        }
        if gone {
            self.install_nat()?;
        }
        if self.public_dir().exists() && is_empty(&self.public_dir()) {
            if self.public.exists() {
                self.public.remove()?;
            }
            let _ = std::fs::remove_dir(self.public_dir());
        }
        if self.ports_dir().exists() && is_empty(&self.ports_dir()) {
            if self.guard.exists() {
                self.guard.remove()?;
            }
            let _ = std::fs::remove_dir(self.ports_dir());
        }
        if is_empty(&self.root) {
            let _ = std::fs::remove_dir(&self.root);
        }
        Ok(())
    }

    /// Restores what should serve and removes what should not: a segment with reservations
    /// gets its bridge and dnsmasq back (after a reboot-less crash, a `kill` of dnsmasq, an
    /// `ip link del` by hand), and one without any is torn down (a crash in the middle of the
    /// last detach). Returns one line per thing it restored.
    pub fn repair(&self) -> Result<Vec<String>, NetError> {
        let mut seen = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut fixed = Vec::new();
        for (bridge, seg) in self.segments() {
            let dir = self.bridge_dir(&bridge);
            if is_empty(&dnsmasq::reservations_dir(&dir)) {
                continue;
            }
            if !link::exists(&bridge) {
                self.ensure_bridge(&bridge, &seg)?;
                dnsmasq::stop(&dir); // it was bound to the old bridge
                fixed.push(format!("bridge {bridge} re-created"));
            }
            if dnsmasq::running(&dir).is_none() {
                let names = self.names_dir(&seg.vnet);
                make_dir(&names)?;
                dnsmasq::ensure(&Self::service(&bridge, &seg, &dir, &names))?;
                fixed.push(format!("dnsmasq for bridge {bridge} restarted"));
            }
            seen.insert(bridge);
        }
        for span in self.spans() {
            if !link::exists(&span.bridge) {
                self.ensure_bridge(&span.bridge, &Segment::of_span(&span))?;
                fixed.push(format!("bridge {} re-created", span.bridge));
            }
            if !link::exists(&fabric::vxlan_name(&span.bridge)) {
                fabric::ensure_port(&span, Some(&span))?;
                fixed.push(format!("VXLAN port {} re-created", fabric::vxlan_name(&span.bridge)));
            }
            let (added, _) = fabric::sync_fdb(&span)?;
            if added > 0 {
                fixed.push(format!("{added} forwarding entries of {} restored", fabric::vxlan_name(&span.bridge)));
            }
        }
        if !self.spans().is_empty() && !self.border.exists() {
            self.install_border(&self.spans(), true)?;
            fixed.push(format!("nftables table bridge {} re-created", self.border.table));
        }
        let prefixes = self.prefixes();
        let outbound_gone = !prefixes.is_empty() && !self.outbound.exists();
        let public_gone = !self.mappings().is_empty() && !self.public.exists();
        if outbound_gone || public_gone {
            self.install_nat()?;
        }
        if outbound_gone {
            fixed.push(format!("nftables table ip {} re-created", self.outbound.table));
        }
        if public_gone {
            fixed.push(format!("nftables table ip {} re-created", self.public.table));
        }
        let ports = self.ports();
        if !ports.is_empty() && !self.guard.exists() {
            self.guard.install(&ports)?;
            fixed.push(format!("nftables table bridge {} re-created", self.guard.table));
        }
        self.settle(&mut seen, false)?;
        Ok(fixed)
    }

    /// Stretches this host's segments as the server says (see [`fabric`]): each of `spans` gets
    /// its bridge (even with no instance here), its VXLAN port and exactly its forwarding
    /// entries; segments no longer listed lose their port (and their bridge, when no instance
    /// here uses them); the border table drops gateway, DHCP and metadata traffic at every port,
    /// and is written before any new port comes up. Returns one line per change.
    pub fn span(&self, spans: &[fabric::Span]) -> Result<Vec<String>, NetError> {
        let mut seen = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut changes = Vec::new();
        let mut all: Vec<fabric::Span> = spans.to_vec();
        all.sort_by(|a, b| a.bridge.cmp(&b.bridge));
        if !all.is_empty() {
            self.install_border(&all, false)?;
        }
        let mut new_segment = false;
        for span in &all {
            let dir = self.bridge_dir(&span.bridge);
            for d in [&self.root, &dir, &dnsmasq::reservations_dir(&dir)] {
                make_dir(d)?;
            }
            let seg = Segment::of_span(span);
            new_segment |= !dir.join("segment").exists();
            write_atomic(&dir, &dir.join("segment"), &seg.render())?;
            let recorded = self.spanned(&span.bridge);
            if recorded.is_none() || !link::exists(&span.bridge) {
                self.ensure_bridge(&span.bridge, &seg)?;
            }
            if recorded.is_none() || recorded.as_ref() != Some(span) || !link::exists(&fabric::vxlan_name(&span.bridge))
            {
                fabric::ensure_port(span, recorded.as_ref())?;
            }
            let (added, removed) = fabric::sync_fdb(span)?;
            if recorded.is_none() {
                changes.push(format!(
                    "segment {} stretched (VNI {}, {} peers)",
                    span.bridge,
                    span.vni,
                    span.peers.len()
                ));
            } else if added + removed > 0 {
                changes.push(format!("segment {}: {added} forwarding entries added, {removed} removed", span.bridge));
            }
            let text = serde_json::to_string(span).map_err(|e| NetError::Command(format!("recording a span: {e}")))?;
            write_atomic(&dir, &dir.join("span"), &text)?;
            // The remote instances' names, in the vnet's DNS here (dnsmasq reads a changed
            // file of its hosts directory by itself).
            let names = self.names_dir(&span.vnet);
            make_dir(&names)?;
            let file = names.join(format!("remote-{}", span.bridge));
            if span.names.is_empty() {
                if remove_file(&file)? {
                    dnsmasq::reload(&dir);
                }
            } else {
                let text: String = span.names.iter().map(|(a, n)| format!("{a} {n}\n")).collect();
                write_atomic(&self.root, &file, &text)?;
            }
        }
        for (bridge, _) in self.segments() {
            if let Some(gone) = self.spanned(&bridge).filter(|_| !all.iter().any(|s| s.bridge == bridge)) {
                link::remove(&fabric::vxlan_name(&bridge))?;
                if remove_file(&self.names_dir(&gone.vnet).join(format!("remote-{bridge}")))? {
                    dnsmasq::reload(&self.bridge_dir(&bridge));
                }
                remove_file(&self.bridge_dir(&bridge).join("span"))?;
                changes.push(format!("segment {bridge} no longer stretched"));
            }
        }
        if all.is_empty() && self.bordered.lock().unwrap_or_else(PoisonError::into_inner).is_some()
            || all.is_empty() && self.border.exists()
        {
            self.border.remove()?;
            *self.bordered.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
        if new_segment {
            self.install_nat()?;
        }
        self.settle(&mut seen, false)?;
        Ok(changes)
    }

    /// What the server last said about `bridge`'s stretch, if it is stretched.
    fn spanned(&self, bridge: &str) -> Option<fabric::Span> {
        let text = std::fs::read_to_string(self.bridge_dir(bridge).join("span")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Every stretched segment's record.
    fn spans(&self) -> Vec<fabric::Span> {
        self.segments().into_iter().filter_map(|(b, _)| self.spanned(&b)).collect()
    }

    /// Writes the border table for `spans` unless it is what was last written (and still there).
    fn install_border(&self, spans: &[fabric::Span], force: bool) -> Result<(), NetError> {
        let ports: Vec<String> = spans.iter().map(|s| fabric::vxlan_name(&s.bridge)).collect();
        let gateways: Vec<Ipv4Addr> = spans.iter().map(|s| s.gateway).collect();
        let peers: Vec<Ipv4Addr> = spans.iter().flat_map(|s| s.peers.iter().copied()).collect();
        let script = self.border.script(&ports, &gateways, &peers);
        let mut last = self.bordered.lock().unwrap_or_else(PoisonError::into_inner);
        if !force && last.as_deref() == Some(script.as_str()) && self.border.exists() {
            return Ok(());
        }
        *last = None;
        guard::run_nft(&script)?;
        *last = Some(script);
        Ok(())
    }

    /// Fences every instance port of this host until its lease is renewed (see [`lease`]):
    /// writes the lease table, empty, unless it is there. Returns whether it wrote.
    pub fn fence_by_lease(&self) -> Result<bool, NetError> {
        self.leases.ensure()
    }

    /// Leases the ports of the instances `owners` (`group/set/id`) for `lease` from now, in
    /// one transaction; owners with no port here are skipped. Returns how many were leased.
    pub fn renew_leases(&self, owners: &[String], lease: std::time::Duration) -> Result<usize, NetError> {
        let ports: Vec<String> = owners
            .iter()
            .filter_map(|o| {
                let text = std::fs::read_to_string(self.ports_dir().join(names::owner_file(o))).ok()?;
                guard::Port::parse(&text).map(|p| p.name)
            })
            .collect();
        self.leases.renew(&ports, lease)?;
        Ok(ports.len())
    }

    /// The nftables table (family `bridge`) of the ports' leases.
    pub fn lease_table(&self) -> &str {
        &self.leases.table
    }

    /// The nftables tables (families `bridge` and `ip`) that keep gateways, DHCP and metadata
    /// off the fabric and let VXLAN in from current peers only.
    pub fn border_table(&self) -> &str {
        &self.border.table
    }

    /// Enforces the network security groups of `nics` (every filtered NIC of this server; see
    /// [`security`]) in one transaction. Writes nothing when they are what was last written
    /// and the table is still there. Returns whether it wrote.
    pub fn secure(&self, nics: &[herd_model::nsg::NicSecurity]) -> Result<bool, NetError> {
        let mut last = self.secured.lock().unwrap_or_else(PoisonError::into_inner);
        let lb_sources: Vec<Ipv4Addr> = self
            .segments()
            .iter()
            .filter_map(|(_, seg)| {
                let p = seg.prefix();
                herd_model::nsg::lb_source(&herd_model::cidr::Cidr { addr: p.network, len: p.len })
            })
            .collect();
        let script = if nics.is_empty() { String::new() } else { self.security.script(nics, &lb_sources) };
        let current = last.as_deref() == Some(script.as_str()) && (script.is_empty() || self.security.exists());
        if current {
            return Ok(false);
        }
        *last = None;
        self.security.install(&script)?;
        *last = Some(script);
        Ok(true)
    }

    /// Sends each bridged instance's requests to 169.254.169.254 to its own metadata listener
    /// (see [`metadata`]): writes the table in one transaction when `listeners` differ from what
    /// was last written or the table is gone, removes it when there are none. Returns whether
    /// it wrote.
    pub fn serve_metadata(&self, listeners: &[metadata::Listener]) -> Result<bool, NetError> {
        let mut last = self.served.lock().unwrap_or_else(PoisonError::into_inner);
        let mut wanted = listeners.to_vec();
        wanted.sort();
        let current = last.as_ref() == Some(&wanted) && (wanted.is_empty() || self.metadata.exists());
        if current {
            return Ok(false);
        }
        *last = None;
        self.metadata.install(&wanted)?;
        *last = Some(wanted);
        Ok(true)
    }

    /// The nftables table (family `ip`) that sends requests to 169.254.169.254 to listeners.
    pub fn metadata_table(&self) -> &str {
        &self.metadata.table
    }

    /// The nftables table (family `ip`) that holds this server's NSG rules.
    pub fn security_table(&self) -> &str {
        &self.security.table
    }

    /// The bridges this server's segments use, each with its `segment` record.
    fn segments(&self) -> Vec<(String, Segment)> {
        let Ok(dir) = std::fs::read_dir(&self.root) else { return vec![] };
        let mut out: Vec<(String, Segment)> = dir
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let seg = Segment::parse(&std::fs::read_to_string(e.path().join("segment")).ok()?)?;
                Some((name, seg))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The bridges of this server's segments.
    pub fn bridges(&self) -> Vec<String> {
        self.segments().into_iter().map(|(b, _)| b).collect()
    }

    /// The leases granted on `bridge`.
    pub fn leases(&self, bridge: &str) -> Vec<Lease> {
        dnsmasq::leases(&self.bridge_dir(bridge))
    }

    /// The dnsmasq serving `bridge`, if it runs.
    pub fn dnsmasq_pid(&self, bridge: &str) -> Option<i32> {
        dnsmasq::running(&self.bridge_dir(bridge)).map(|p| p.as_raw())
    }
}

fn make_dir(d: &Path) -> Result<(), NetError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(d)
        .map_err(io_err(format!("creating {}", d.display())))
}

fn is_empty(d: &Path) -> bool {
    std::fs::read_dir(d).map(|mut it| it.next().is_none()).unwrap_or(true)
}

fn remove_file(p: &Path) -> Result<bool, NetError> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(format!("removing {}", p.display()))(e)),
    }
}

/// Writes `text` to `path` through a temporary file in `tmp_dir` (not a directory dnsmasq
/// watches), renamed into place, so dnsmasq never reads half a line. Skips the write when the
/// file already holds `text`.
fn write_atomic(tmp_dir: &Path, path: &Path, text: &str) -> Result<(), NetError> {
    if std::fs::read_to_string(path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = tmp_dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).map_err(io_err(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io_err(format!("renaming {} to {}", tmp.display(), path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_records_round_trip() {
        let s = Segment {
            gateway: Ipv4Addr::new(10, 0, 1, 1),
            prefix_len: 24,
            mtu: 1450,
            outbound: false,
            vnet: "hz0123".into(),
        };
        assert_eq!(Segment::parse(&s.render()), Some(s.clone()));
        assert_eq!(s.prefix(), outbound::Prefix { network: Ipv4Addr::new(10, 0, 1, 0), len: 24, outbound: false });
        assert_eq!(Segment::parse("10.0.0.1 24"), None);
    }
}
