//! The arbiter's inputs and outputs.
//!
//! Why separate types rather than the stored records: the arbiter must stay pure and cheap to
//! table-test, and it needs only a few facts per instance (size, tier, host, age, price limit),
//! which the caller derives from records, the SKU table and the set's priority.

use chrono::{DateTime, Utc};
use herd_model::scale_set::Priority;
use herd_model::sku::SkuSize;
use herd_model::spot::EvictionReason;
use herd_model::InstanceKey;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The host name placements get when no hosts are declared (capacity is unlimited). The
/// caller stores it as "no host".
pub const UNLIMITED_HOST: &str = "";

/// What one instance reserves on its host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Size {
    pub vcpus: u32,
    pub memory_mib: u64,
}

impl Size {
    pub fn new(vcpus: u32, memory_mib: u64) -> Self {
        Self { vcpus, memory_mib }
    }
}

impl From<SkuSize> for Size {
    fn from(s: SkuSize) -> Self {
        Self { vcpus: s.vcpus, memory_mib: s.memory_mib }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} vCPU, {} MiB", self.vcpus, self.memory_mib)
    }
}

/// Which capacity an instance uses: Regular is guaranteed, Spot uses what Regular leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Tier {
    Regular,
    Spot,
}

impl From<Priority> for Tier {
    /// `Low` is Spot's older name.
    fn from(p: Priority) -> Self {
        if herd_model::spot::is_spot(p) {
            Tier::Spot
        } else {
            Tier::Regular
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Regular => "Regular",
            Tier::Spot => "Spot",
        })
    }
}

/// An instance holding compute now. The caller passes every record whose compute is reserved:
/// not Deallocated, and not yet removed (a Deleting instance still holds its room).
#[derive(Debug, Clone, PartialEq)]
pub struct Holder {
    pub key: InstanceKey,
    /// The host its compute is reserved on; `None` = a record from before hosts were declared,
    /// which the arbiter places now (see [`crate::Decision::adopted`]).
    pub host: Option<String>,
    /// The instance's zone (used only to place a holder whose host is `None`).
    pub zone: Option<String>,
    pub size: Size,
    pub tier: Tier,
    /// The SKU, for the spot price lookup.
    pub sku: String,
    /// Eviction order: the youngest Spot instance goes first.
    pub created_at: DateTime<Utc>,
    /// Spot only: the most it may cost per hour; `None` or `-1` = never evict for price.
    pub max_price: Option<f64>,
    /// A Preempt event is already posted: its room will be freed, and it is not chosen again.
    pub preempting: bool,
    /// The fault domain index recorded on the instance (`platformFaultDomain`); `None` for
    /// records placed before fault domains, which count only on their host.
    pub fault_domain: Option<u32>,
}

/// An instance wanting room: a new instance, or a Spot instance to restore.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub key: InstanceKey,
    pub size: Size,
    pub tier: Tier,
    /// The zone it must be in; `None` = any host.
    pub zone: Option<String>,
    /// The SKU, for the spot price lookup (Spot only).
    pub sku: String,
    /// Spot only: a request whose `maxPrice` is below the current price is refused for price.
    pub max_price: Option<f64>,
    /// An overprovisioned extra (`overprovision`): it is optional, so it is served after every
    /// other request, only from room that is free now. It never evicts a Spot instance and
    /// never waits; without free room it is skipped ([`Decision::skipped`]).
    pub extra: bool,
    /// The set's `platformFaultDomainCount`: 1 (or 0) = spread over as many hosts as possible;
    /// N = exactly N fault domains per zone, the instances balanced over them.
    pub fault_domains: u32,
    /// The fault domain index the instance already has (a deallocated instance starting
    /// again): it goes back to that domain. `None` = a new instance, given the least-used one.
    pub fault_domain: Option<u32>,
    /// A host it must not go on: the one it is moving away from (a redeploy).
    pub avoid_host: Option<String>,
}

/// An instance and the host it goes on (or is recorded on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub key: InstanceKey,
    /// A declared host's name, or [`UNLIMITED_HOST`].
    pub host: String,
    /// The fault domain index given to a placed request (0 with a count of 1); `None` for an
    /// adopted holder (its record keeps what it has).
    pub fault_domain: Option<u32>,
}

/// A Spot instance to post a Preempt event on now.
#[derive(Debug, Clone, PartialEq)]
pub struct Preemption {
    pub key: InstanceKey,
    pub reason: EvictionReason,
    /// Human-readable: which Regular instance needed the room, or the price against `maxPrice`.
    pub detail: String,
}

/// Why a request gets no room.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// Not enough room (for Regular: not even after evicting every Spot instance there).
    #[error("{0}")]
    Capacity(Shortfall),
    /// A Spot request whose `maxPrice` is below the current spot price.
    #[error("spot price {price:.4} for {sku} is above maxPrice {max_price:.4}")]
    Price { sku: String, price: f64, max_price: f64 },
    /// The set's `platformFaultDomainCount` is more than the zone's fault domains that take new
    /// instances.
    #[error("{0}")]
    FaultDomains(DomainShortfall),
}

/// A zone with fewer fault domains than a set's `platformFaultDomainCount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainShortfall {
    /// The zone; `None` = a set without zones (every host counts).
    pub zone: Option<String>,
    /// `platformFaultDomainCount`.
    pub want: u32,
    /// The zone's fault domains that take new instances, by name (a fault-domain label, or the
    /// name of a host without one).
    pub domains: Vec<String>,
    /// No hosts at all: everything runs on the server's own machine, one fault domain.
    pub unlimited: bool,
}

impl fmt::Display for DomainShortfall {
    /// e.g. `platformFaultDomainCount 3 needs 3 fault domains in zone 1, which has 2 that take
    /// new instances: rack-a, rack-b`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = match &self.zone {
            Some(z) => format!("in zone {z}"),
            None => "on the hosts".to_string(),
        };
        write!(f, "platformFaultDomainCount {} needs {} fault domains {place}", self.want, self.want)?;
        if self.unlimited {
            return write!(
                f,
                ", but no hosts are declared or joined: everything runs on this server's machine, one fault domain (use 1, or add hosts with [[hosts]] or herd agent)"
            );
        }
        let n = self.domains.len();
        let which = match &self.zone {
            Some(z) => format!("zone {z} has"),
            None => "the hosts have".to_string(),
        };
        if n == 0 {
            return write!(f, ", but {which} no fault domain that takes new instances");
        }
        const SHOWN: usize = 8;
        let mut names = self.domains.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
        if n > SHOWN {
            names.push_str(&format!(" and {} more", n - SHOWN));
        }
        write!(
            f,
            ", but {which} {n} that take{} new instances: {names} (a fault domain is a host, or the hosts sharing a fault-domain label; cordoned hosts and joined hosts not heard from do not count)",
            if n == 1 { "s" } else { "" }
        )
    }
}

impl std::error::Error for DomainShortfall {}

/// One fault domain of a zone: its name and its hosts (by name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FaultDomain {
    /// The hosts' shared fault-domain label, or the host's own name when it has none.
    pub name: String,
    pub hosts: Vec<String>,
}

/// A request that gets no room, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub key: InstanceKey,
    pub reason: Refusal,
}

/// What the arbiter decided. Every list is sorted by instance key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    /// Requests that fit now: create them on this host.
    pub placements: Vec<Placement>,
    /// Holders that had no host (placed before hosts were declared): record this host on them.
    pub adopted: Vec<Placement>,
    /// Regular requests that fit once announced Preempts complete: do not create them yet.
    pub waiting: Vec<InstanceKey>,
    /// Requests that get no room.
    pub refused: Vec<Refused>,
    /// Overprovisioned extras left out for want of free room (not a shortfall: do not report
    /// them, just do not create them).
    pub skipped: Vec<InstanceKey>,
    /// Spot instances to post a Preempt event on now.
    pub preempt: Vec<Preemption>,
    /// Things the operator should know (a legacy holder that did not fit, an undeclared host).
    pub warnings: Vec<String>,
}

/// How much room instances of one tier and zone are missing.
///
/// `missing` is what the instances need beyond the free room in total; it is zero when the
/// room exists but is split across hosts so that no single host can take an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    pub tier: Tier,
    /// How many instances do not fit.
    pub instances: u32,
    /// What they need together.
    pub need: Size,
    /// `need` minus `free`, per resource, not below zero.
    pub missing: Size,
    /// The free room on the eligible hosts (for Regular, counting Spot instances as evictable).
    pub free: Size,
    /// The zone asked for; `None` = any.
    pub zone: Option<String>,
    /// The eligible hosts, by name.
    pub hosts: Vec<String>,
}

impl fmt::Display for Shortfall {
    /// e.g. `needs 2 vCPU and 1024 MiB more in zone 1; free there: 0 vCPU, 512 MiB (hosts h1, h2)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = match &self.zone {
            Some(z) => format!("in zone {z}"),
            None => "on the hosts".to_string(),
        };
        if self.hosts.is_empty() {
            return match &self.zone {
                Some(z) => write!(
                    f,
                    "no host that takes new instances serves zone {z} (a host serves its own zone, or every zone when it has none; a cordoned host, or a joined one not heard from, takes none)"
                ),
                None => write!(f, "no hosts are declared"),
            };
        }
        let many = if self.instances > 1 { format!(" for {} instances", self.instances) } else { String::new() };
        let m = self.missing;
        if m.vcpus == 0 && m.memory_mib == 0 {
            write!(
                f,
                "needs {} vCPU and {} MiB{many} {place}, but the free room is split so that no single host can take one; free there: {}",
                self.need.vcpus, self.need.memory_mib, self.free
            )?;
        } else {
            let parts = match (m.vcpus, m.memory_mib) {
                (v, 0) => format!("{v} vCPU"),
                (0, mem) => format!("{mem} MiB"),
                (v, mem) => format!("{v} vCPU and {mem} MiB"),
            };
            write!(f, "needs {parts} more{many} {place}; free there: {}", self.free)?;
        }
        const SHOWN: usize = 6;
        let mut names = self.hosts.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
        if self.hosts.len() > SHOWN {
            names.push_str(&format!(" and {} more", self.hosts.len() - SHOWN));
        }
        let label = if self.hosts.len() == 1 { "host" } else { "hosts" };
        match self.tier {
            Tier::Regular => write!(f, " ({label} {names}; Spot instances counted as evictable)"),
            Tier::Spot => write!(f, " ({label} {names})"),
        }
    }
}

impl std::error::Error for Shortfall {}

/// One host's capacity and what is allocated on it, for `herd host show`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostUsage {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Its fault-domain label (none: the host is a fault domain of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_domain: Option<String>,
    /// Real vCPUs as declared.
    pub physical_vcpus: u32,
    pub overcommit: f64,
    /// What may be allocated: `floor(vcpus × overcommit)` vCPUs and the declared memory.
    pub capacity: Size,
    /// Reserved by Regular instances.
    pub regular: Size,
    /// Reserved by Spot instances (including those with a Preempt posted).
    pub spot: Size,
    /// Of `spot`, what instances with a Preempt posted still hold.
    pub preempting: Size,
    /// `capacity` minus everything allocated, not below zero.
    pub free: Size,
    pub regular_instances: u32,
    pub spot_instances: u32,
    pub preempting_instances: u32,
    /// True when more is allocated than the capacity (e.g. a legacy record placed anyway, or a
    /// host declared smaller than what already runs on it).
    pub overcommitted: bool,
}
