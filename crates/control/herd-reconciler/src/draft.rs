//! A set's draft: the working copies of its records and status that a pass's steps change
//! before anything is written.
//!
//! Why: the planners decide *which* steps to take ([`crate::plan`](mod@crate::plan), [`crate::rolling`],
//! [`crate::repair`], [`crate::capacity`]); applying a step to the records (which instance gets
//! which goal, state or pending action, the counters in the set's status, the Spot eviction
//! gap, the activity lines) is a domain decision too, so it is also pure: each planner module
//! has an `apply` function from (draft, step) to the changed draft. The executor only turns a
//! finished draft into compare-and-swap writes ([`herd_state::intents::Writes`]) and driver
//! calls. A draft holds no store handle; tests build one from plain records.

use crate::plan::{Limits, Step};
use chrono::{DateTime, Utc};
use herd_model::{
    instance::{Event, InstanceRecord, InstanceState},
    scale_set::{ScaleSetModel, ScaleSetStatus, StoredScaleSet},
    InstanceId,
};
use herd_state::keys::ModelHistoryKey;
use herd_state::transitions::{apply_event, InvalidTransitions};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// One instance record as the pass changes it.
#[derive(Debug, Clone)]
pub struct Working {
    pub record: InstanceRecord,
    /// The revision it was read at (None: a new record).
    pub revision: Option<u64>,
    /// Changed by a step: it is written.
    pub dirty: bool,
}

/// A model write a step decided (a rolling upgrade's new generation). The executor writes the
/// set with a compare-and-swap on the revision it was read at, and records the model in the
/// set's history.
#[derive(Debug, Clone)]
pub enum ModelChange {
    /// An automatic OS image upgrade: the same model at the next generation (the history
    /// write must succeed too).
    OsImage(Box<StoredScaleSet>),
    /// A rollback: the old profile at the next generation (a failed history write is only
    /// logged).
    Rollback(Box<StoredScaleSet>),
}

/// One set's working copies in a pass.
pub struct SetDraft<'a> {
    pub set: &'a StoredScaleSet,
    pub set_revision: u64,
    pub status: ScaleSetStatus,
    pub status_revision: Option<u64>,
    pub status_dirty: bool,
    pub records: BTreeMap<InstanceId, Working>,
    pub steps: Vec<Step>,
    /// Activity lines: (operation, message).
    pub log: Vec<(String, String)>,
    pub transitions: &'a InvalidTransitions,
    /// The model a rollback returns to, read before Phase A (None: not on record).
    pub rollback_model: Option<ScaleSetModel>,
    /// The set's model history, read before Phase A when the set is removed.
    pub history: Vec<ModelHistoryKey>,
    /// Model writes the steps decided, in order.
    pub model_changes: Vec<ModelChange>,
}

impl<'a> SetDraft<'a> {
    /// A draft of `set` with these records (each with the revision it was read at) and status.
    pub fn new(
        set: &'a StoredScaleSet,
        set_revision: u64,
        status: Option<(ScaleSetStatus, u64)>,
        records: impl IntoIterator<Item = (InstanceRecord, Option<u64>)>,
        transitions: &'a InvalidTransitions,
    ) -> Self {
        let (status, status_revision) = status.map_or((ScaleSetStatus::default(), None), |(s, r)| (s, Some(r)));
        let records = records
            .into_iter()
            .map(|(record, revision)| (record.instance_id, Working { record, revision, dirty: false }))
            .collect();
        Self {
            set,
            set_revision,
            status,
            status_revision,
            status_dirty: status_revision.is_none(),
            records,
            steps: vec![],
            log: vec![],
            transitions,
            rollback_model: None,
            history: vec![],
            model_changes: vec![],
        }
    }

    /// Moves instance `id` to `target` through `ev`, unless it is there already.
    pub fn transition(&mut self, id: InstanceId, ev: Event, target: InstanceState, now: DateTime<Utc>) {
        if let Some(wr) = self.records.get_mut(&id) {
            if wr.record.state != target && apply_event(self.transitions, self.set, &mut wr.record, ev, now).is_ok() {
                wr.dirty = true;
            }
        }
    }

    /// Adds an activity line.
    pub fn note(&mut self, op: &str, message: String) {
        self.log.push((op.into(), message));
    }
}

/// What applying a step reads besides the draft.
#[derive(Debug, Clone, Copy)]
pub struct ApplyEnv<'a> {
    pub now: DateTime<Utc>,
    pub limits: &'a Limits,
    /// Bridged networking: an instance with a private IP is reached on it.
    pub bridged: bool,
    /// Which /16 of 127.128.0.0/9 this server's reach addresses start in.
    pub address_block: u8,
}

/// The pass's address allocators: the host-local counter and the private-IP pool.
#[derive(Debug, Default)]
pub struct Addresses {
    /// The next host-local address number (see [`host_local_address`]).
    pub next: u64,
    pub ipam: Ipam,
}

/// Private IPs: which subnets exist and which of their addresses instances hold. Addresses are
/// handed out lowest first from the 5th address of the subnet (Azure reserves the first four
/// and the last), and return to the pool when the instance record is removed.
#[derive(Debug, Default)]
pub struct Ipam {
    pub(crate) subnets: BTreeMap<String, herd_model::cidr::Cidr>,
    /// Subnets without default outbound access (private subnets).
    pub(crate) private: BTreeSet<String>,
    used: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    /// The server's public pool (`[network] public_ip_pool`), if configured.
    public_pool: Option<herd_model::public_pool::PublicIpPool>,
    /// Public IPs instances hold, whatever the pool (one configured later must not hand out
    /// an address an instance still holds).
    public_used: BTreeSet<Ipv4Addr>,
}

/// Why an instance gets no public IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicIpRefusal {
    /// The server has no `[network] public_ip_pool`.
    NoPool,
    /// Every usable address of the pool is held.
    Full(herd_model::public_pool::PublicIpPool),
}

impl std::fmt::Display for PublicIpRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublicIpRefusal::NoPool => {
                write!(f, "no public IP pool is configured (add {})", herd_model::public_pool::SETTING)
            }
            PublicIpRefusal::Full(p) => {
                write!(f, "the public IP pool {p} is full ({} of {} addresses in use)", p.usable(), p.usable())
            }
        }
    }
}

impl Ipam {
    /// Builds the allocator from the virtual networks and every instance record.
    pub fn new<'a>(
        vnets: &[herd_model::network::VirtualNetwork],
        records: impl Iterator<Item = (&'a StoredScaleSet, &'a InstanceRecord)>,
    ) -> Self {
        let mut ipam = Ipam::default();
        for v in vnets {
            for s in &v.subnets {
                ipam.subnets.insert(s.id.to_ascii_lowercase(), s.address_prefix);
                if !s.default_outbound_access {
                    ipam.private.insert(s.id.to_ascii_lowercase());
                }
            }
        }
        for (set, r) in records {
            if let (Some(subnet), Some(ip)) = (subnet_of(set), r.private_ip.as_deref().and_then(|a| a.parse().ok())) {
                ipam.used.entry(subnet).or_default().insert(ip);
            }
            if let Some(ip) = r.public_ip.as_deref().and_then(|a| a.parse().ok()) {
                ipam.public_used.insert(ip);
            }
        }
        ipam
    }

    /// The allocator with the server's public pool.
    pub fn with_public_pool(mut self, pool: Option<herd_model::public_pool::PublicIpPool>) -> Self {
        self.public_pool = pool;
        self
    }

    /// The lowest free address of the public pool, marked used. Instance records are the
    /// allocation: the record holding the address is written (Phase A) before any driver call,
    /// so a crash cannot hand the address out twice.
    pub fn allocate_public(&mut self) -> Result<Ipv4Addr, PublicIpRefusal> {
        let pool = self.public_pool.ok_or(PublicIpRefusal::NoPool)?;
        let ip = pool.addresses().find(|ip| !self.public_used.contains(ip)).ok_or(PublicIpRefusal::Full(pool))?;
        self.public_used.insert(ip);
        Ok(ip)
    }

    /// The lowest free address of `subnet`, marked used; None if the subnet is unknown or full.
    pub fn allocate(&mut self, subnet: &str) -> Option<Ipv4Addr> {
        let cidr = *self.subnets.get(subnet)?;
        let used = self.used.entry(subnet.to_string()).or_default();
        let ip = (4..cidr.size().saturating_sub(1)).filter_map(|n| cidr.nth(n)).find(|ip| !used.contains(ip))?;
        used.insert(ip);
        Some(ip)
    }
}

/// Whether the set's model gives each instance a public IP.
pub fn wants_public_ip(set: &StoredScaleSet) -> bool {
    set.model.virtual_machine_profile.network_profile.as_ref().and_then(|n| n.public_ip()).is_some()
}

/// The subnet id (lower case) a set's instances live in, if it has one.
pub fn subnet_of(set: &StoredScaleSet) -> Option<String> {
    let p = set.model.virtual_machine_profile.network_profile.as_ref()?;
    p.primary()?.subnet.as_ref().map(|s| s.id.to_ascii_lowercase())
}

/// The n-th host-local reach address of a server whose range starts at the /16 `block`
/// (0–127) of 127.128.0.0/9, skipping `.0` and `.255`. Servers on one host use different
/// blocks (the server derives its block from its data dir), so their instances never collide.
pub fn host_local_address(block: u8, n: u64) -> Ipv4Addr {
    let base = u32::from(Ipv4Addr::new(127, 128, 0, 0));
    // 254 usable addresses per /24; the 2^23 addresses of the /9 wrap around.
    let subnet = (u64::from(block % 128) * 256 + n / 254) % (128 * 256);
    let host = (n % 254) as u32 + 1;
    Ipv4Addr::from(base + subnet as u32 * 256 + host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_skip_network_and_broadcast() {
        assert_eq!(host_local_address(0, 0), Ipv4Addr::new(127, 128, 0, 1));
        assert_eq!(host_local_address(0, 253), Ipv4Addr::new(127, 128, 0, 254));
        assert_eq!(host_local_address(0, 254), Ipv4Addr::new(127, 128, 1, 1));
        assert_eq!(host_local_address(5, 0), Ipv4Addr::new(127, 133, 0, 1));
        assert_eq!(host_local_address(127, 254 * 256), Ipv4Addr::new(127, 128, 0, 1), "wraps inside 127.128.0.0/9");
    }
}
