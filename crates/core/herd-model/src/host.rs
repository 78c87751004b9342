//! Hosts that joined the cluster with `herd agent`: what the store keeps of each one, and the
//! state `herd host list` shows.
//!
//! Why the record holds so little that changes: liveness (heartbeats) lives in the server's
//! memory, not in the store, so a cluster of many hosts does not write the store every second,
//! and after a server restart every host's timer starts at zero (issue 21's rule). The store
//! keeps what must survive: labels, the capacity last reported, the fingerprint of the one
//! agent certificate accepted for the host, and whether it is cordoned.
//!
//! ```text
//!                 join (token)                 heartbeat within host_grace
//!   (no record) ──────────────▶ NotReady ─────────────────────────────────▶ Ready
//!                                  ▲   ◀──── no heartbeat for host_grace ────  │
//!                                  │                                          │ cordon
//!                                  │         uncordon                         ▼
//!                                  └──────────────────────────────────── Cordoned
//!   delete (no instances, or --force): the record goes; its certificate is refused from then on
//! ```
//! A cordoned host that stops heartbeating shows NotReady: not being able to reach it matters
//! more than not scheduling on it.

use crate::ids::HostName;
use crate::FieldError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Whether new instances may be placed on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Scheduling {
    #[default]
    Schedulable,
    /// `herd host cordon`: no new instances; those it runs stay.
    Cordoned,
}

/// What a host's agent reports it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostCapacity {
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Free space in the agent's data dir.
    pub disk_free_mib: u64,
}

/// A joined host, as stored (`Kind::Host`, keyed by name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostRecord {
    pub name: String,
    pub zone: String,
    /// The rack or other shared failure domain (`--fault-domain`); none = the host is its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_domain: Option<String>,
    pub scheduling: Scheduling,
    pub capacity: HostCapacity,
    pub agent_version: String,
    /// SHA-256 of the agent certificate issued at join: the only one accepted for this host.
    pub certificate_fingerprint: String,
    /// The join token it came with (its id, never its secret).
    pub join_token_id: String,
    pub joined_at: DateTime<Utc>,
    /// The address its agent's link last came from: where the other members of its segments
    /// send its VXLAN traffic. Kept so that a restarted server knows it before the host links
    /// again (no segment is cut meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub fabric_address: Option<std::net::IpAddr>,
}

impl HostRecord {
    /// The host as the capacity arbiter sees it: the capacity its agent reports, vCPUs
    /// overcommitted [`JOINED_OVERCOMMIT`]:1, memory less [`JOINED_RESERVED_MIB`].
    pub fn placement_spec(&self, schedulable: bool) -> crate::spot::HostSpec {
        crate::spot::HostSpec {
            name: self.name.clone(),
            zone: Some(self.zone.clone()),
            fault_domain: self.fault_domain.clone(),
            vcpus: self.capacity.vcpus,
            memory_mib: self.capacity.memory_mib.saturating_sub(JOINED_RESERVED_MIB),
            overcommit: JOINED_OVERCOMMIT,
            schedulable,
        }
    }
}

/// A host's state, as `herd host list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum HostState {
    /// Heartbeating, and schedulable.
    Ready,
    /// No heartbeat within `host_grace` (or not connected since the server started).
    NotReady,
    /// Heartbeating, and cordoned.
    Cordoned,
}

impl HostState {
    /// The state of a host whose last heartbeat was `last_heartbeat` (none since the server
    /// started), at `now`.
    pub fn of(
        scheduling: Scheduling,
        last_heartbeat: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        grace: chrono::Duration,
    ) -> HostState {
        let live = last_heartbeat.is_some_and(|t| now - t <= grace);
        match (live, scheduling) {
            (false, _) => HostState::NotReady,
            (true, Scheduling::Cordoned) => HostState::Cordoned,
            (true, Scheduling::Schedulable) => HostState::Ready,
        }
    }
}

/// What the server knows of hosts' heartbeats (kept in memory by the agent link). The API
/// reads it through this trait, so it does not depend on the link.
pub trait Heartbeats: Send + Sync {
    /// When host `name` last heartbeated, if it has since this server started.
    fn last_heartbeat(&self, name: &str) -> Option<DateTime<Utc>>;

    /// Host `name`'s link figures, if it is linked now.
    fn link_stats(&self, _name: &str) -> Option<LinkStats> {
        None
    }
}

/// What the server saw of a linked host's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    /// The longest time between two heartbeats since the host's agent connected.
    pub max_heartbeat_gap_ms: u64,
    /// Image pulls the server served to the host since the server started.
    pub image_pulls: u64,
}

/// No agents (handler tests, a server without the cluster CA): no heartbeats.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHeartbeats;

impl Heartbeats for NoHeartbeats {
    fn last_heartbeat(&self, _name: &str) -> Option<DateTime<Utc>> {
        None
    }
}

/// How long a host may miss heartbeats before it is NotReady (issue 21: 40 s).
pub const DEFAULT_HOST_GRACE_SECS: u64 = 40;

/// How often an agent heartbeats.
pub const HEARTBEAT_INTERVAL_MS: u64 = 2000;

/// What an agent asks for when it joins. Its `Debug` leaves the token out.
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinRequest {
    /// `herd1::<CA SHA-256>::<id>.<secret>`. Never logged or stored.
    pub token: String,
    /// The host's name: 1–63 letters, digits and '-'.
    pub name: String,
    /// The zone label this host serves.
    pub zone: String,
    #[serde(default)]
    pub fault_domain: Option<String>,
    /// The agent's public key (PEM, SubjectPublicKeyInfo); its private key stays on the host.
    pub public_key_pem: String,
    #[serde(default)]
    pub agent_version: String,
    #[serde(default)]
    pub capacity: HostCapacity,
}

impl std::fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRequest")
            .field("name", &self.name)
            .field("zone", &self.zone)
            .field("fault_domain", &self.fault_domain)
            .finish_non_exhaustive()
    }
}

/// Checks a join request's labels; the error names the field.
pub fn check_join(req: &JoinRequest) -> Result<(), FieldError> {
    HostName::new(req.name.clone())?;
    if RESERVED_NAMES.iter().any(|r| r.eq_ignore_ascii_case(&req.name)) {
        return Err(FieldError::new("name", format!("'{}' is reserved (an API path); choose another name", req.name)));
    }
    check_label("zone", &req.zone)?;
    if let Some(fd) = &req.fault_domain {
        check_label("faultDomain", fd)?;
    }
    if req.agent_version.len() > 64 {
        return Err(FieldError::new("agentVersion", "at most 64 characters"));
    }
    if req.public_key_pem.len() > 4096 {
        return Err(FieldError::new("publicKeyPem", "at most 4096 bytes (a PEM public key)"));
    }
    Ok(())
}

/// Names no host may take: the API's own paths under `/v1/hosts/`, and [`LOCAL_HOST`].
pub const RESERVED_NAMES: &[&str] = &["joinTokens", LOCAL_HOST];

/// The server's own machine as a placement host, once hosts have joined: the qemu driver's
/// detected host has this name, and instances with no host recorded run here.
pub const LOCAL_HOST: &str = "local";

/// What placement needs to know of joined hosts besides their records: who is heard from (the
/// agent link's heartbeats), how long a host may be silent, and the server's own machine as a
/// host beside them.
#[derive(Clone)]
pub struct JoinedHosts {
    pub heartbeats: std::sync::Arc<dyn Heartbeats>,
    pub grace: chrono::Duration,
    /// The server's own machine (named [`LOCAL_HOST`]), used when no hosts
    /// are declared: once a host has joined, placement is no longer unlimited, and instances
    /// with no host recorded are counted here, where they run.
    pub local: crate::spot::HostSpec,
}

impl std::fmt::Debug for JoinedHosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinedHosts").field("grace", &self.grace).field("local", &self.local).finish_non_exhaustive()
    }
}

impl JoinedHosts {
    /// The hosts placement uses this pass: the declared ones (else the server's own machine)
    /// and the joined ones heard from, and the host that instances with none recorded are on.
    /// `None` while no host has joined: placement stays exactly as without agents.
    pub fn hosts(
        &self,
        declared: &[crate::spot::HostSpec],
        records: &[HostRecord],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<(Vec<crate::spot::HostSpec>, String)> {
        if records.is_empty() {
            return None;
        }
        let mut hosts = if declared.is_empty() { vec![self.local.clone()] } else { declared.to_vec() };
        let unplaced = hosts[0].name.clone();
        hosts.extend(placement_hosts(records, &*self.heartbeats, now, self.grace));
        Some((hosts, unplaced))
    }
}

/// vCPU overcommit of a joined host, as for the server's own detected machine.
pub const JOINED_OVERCOMMIT: f64 = 16.0;

/// Memory kept back on a joined host for the host itself.
pub const JOINED_RESERVED_MIB: u64 = 512;

/// The hosts new instances may be placed on, from the joined `records`: every host heard from
/// within `grace` (a silent host takes nothing new, and what it holds is not counted until it
/// is heard again), a cordoned one as not schedulable. Capacity is what its agent reports.
pub fn placement_hosts(
    records: &[HostRecord],
    heartbeats: &dyn Heartbeats,
    now: DateTime<Utc>,
    grace: chrono::Duration,
) -> Vec<crate::spot::HostSpec> {
    records
        .iter()
        .filter_map(|h| {
            let state = HostState::of(h.scheduling, heartbeats.last_heartbeat(&h.name), now, grace);
            (state != HostState::NotReady).then(|| h.placement_spec(state == HostState::Ready))
        })
        .collect()
}

/// A zone or fault-domain label: 1–64 of letters, digits, `-_.`.
pub fn check_label(field: &str, s: &str) -> Result<(), FieldError> {
    if s.is_empty() || s.len() > 64 {
        return Err(FieldError::new(field, format!("must be 1 to 64 characters, got {}", s.len())));
    }
    if let Some(bad) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(FieldError::new(
            field,
            format!("character '{bad}' is not allowed; use letters, digits, '-', '_' and '.'"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_is_ready_only_while_it_heartbeats_and_cordoned_only_while_ready() {
        let now = Utc::now();
        let grace = chrono::Duration::seconds(40);
        let recent = Some(now - chrono::Duration::seconds(3));
        let old = Some(now - chrono::Duration::seconds(41));
        assert_eq!(HostState::of(Scheduling::Schedulable, recent, now, grace), HostState::Ready);
        assert_eq!(HostState::of(Scheduling::Cordoned, recent, now, grace), HostState::Cordoned);
        assert_eq!(HostState::of(Scheduling::Schedulable, old, now, grace), HostState::NotReady);
        assert_eq!(HostState::of(Scheduling::Cordoned, old, now, grace), HostState::NotReady);
        assert_eq!(HostState::of(Scheduling::Schedulable, None, now, grace), HostState::NotReady);
    }

    #[test]
    fn join_labels_are_checked_by_field() {
        let req = |name: &str, zone: &str, fd: Option<&str>| JoinRequest {
            token: String::new(),
            name: name.into(),
            zone: zone.into(),
            fault_domain: fd.map(Into::into),
            public_key_pem: String::new(),
            agent_version: String::new(),
            capacity: HostCapacity::default(),
        };
        assert!(check_join(&req("h2", "1", Some("rack-a"))).is_ok());
        assert_eq!(check_join(&req("h_2", "1", None)).unwrap_err().field, "name");
        assert_eq!(check_join(&req("h2", "", None)).unwrap_err().field, "zone");
        assert_eq!(check_join(&req("h2", "1", Some("rack a"))).unwrap_err().field, "faultDomain");
        for reserved in ["local", "LOCAL", "joinTokens"] {
            let e = check_join(&req(reserved, "1", None)).unwrap_err();
            assert!(e.field == "name" && e.message.contains("is reserved"), "{e}");
        }
    }
}
