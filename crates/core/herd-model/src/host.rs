//! Hosts that joined the cluster with `herd agent`: what the store keeps of each one, the state
//! `herd host list` shows, and the lease arithmetic of host failure (issue 21).
//!
//! Why the record holds so little that changes: liveness (heartbeats) lives in the server's
//! memory, not in the store, so a cluster of many hosts does not write the store every second,
//! and after a server restart every host's timer starts at zero (issue 21's rule). The store
//! keeps what must survive: labels, the capacity last reported, the fingerprint of the one
//! agent certificate accepted for the host, and whether it is cordoned.
//!
//! ```text
//!                 join (token)            heartbeat (and no stale copy left)
//!   (no record) ─────────────▶ NotReady ─────────────────────────────────────▶ Ready ◀──┐
//!                               │  ▲  ◀──────── silent for host_grace ────────  │  ▲     │
//!     silent past replace_after │  │                                   cordon │  │     │
//!     and the lease bound       ▼  │ heartbeat, copies                         ▼  │     │
//!                            Replacing ─────────────▶ Returning ─────────── Cordoned    │
//!                               its instances are       the server destroys          │
//!                               re-created elsewhere    the moved copies ────────────┘
//!   delete (no instances, or --force): the record goes; its certificate is refused from then on
//! ```
//! A cordoned host that stops heartbeating shows NotReady: not being able to reach it matters
//! more than not scheduling on it. A host heard again while some of its instances were moved
//! away is Returning (no new instances) until the server has destroyed those copies on it.
//!
//! **Leases.** Every heartbeat acknowledgement grants the host a lease of `L` (`[agents]
//! lease_secs`) for the instances it lists; the agent counts it from when it *sent* the
//! acknowledged heartbeat, on its monotonic clock. So on the server's side, the last lease a host
//! holds ends before `last heartbeat received + L`, and with clock drift `ρ` (1 %) and a margin
//! (2 s) before [`Silence::lease_bound`] = last heartbeat + `L_max`·(1+ρ) + margin, where `L_max`
//! is the largest lease ever granted to that host (lowering the setting never shortens a lease
//! already granted). Nothing of a silent host is replaced before that bound. After a server
//! restart no heartbeat is known: each host's silence counts from the server's start.
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
    /// The largest lease (ms) any server ever granted this host in a heartbeat acknowledgement
    /// (written only when it grows, before the ack that grants it): a server restarted with a
    /// lower `lease_secs` still waits out the leases granted before (see [`LeaseRecord::silence`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_lease_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
    /// Silent past `replace_after` and its lease bound: its instances are re-created on other
    /// hosts (Regular) or evicted (Spot).
    Replacing,
    /// Heard again, but copies of instances moved away while it was silent are still on it:
    /// the server destroys them first; it takes no new instances meanwhile.
    Returning,
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

impl HostState {
    /// The full state of a host, with host failure: `silence` is what the link knows of it
    /// (None: nothing, as without agents), `stale_copies` whether copies of instances moved
    /// away are still to be destroyed on it.
    pub fn with_failure(
        scheduling: Scheduling,
        silence: Option<&Silence>,
        now: DateTime<Utc>,
        timing: &FailureTiming,
        stale_copies: bool,
    ) -> HostState {
        let Some(s) = silence else { return HostState::NotReady };
        if s.live(now, timing.grace) {
            return match (stale_copies, scheduling) {
                (true, _) => HostState::Returning,
                (false, Scheduling::Cordoned) => HostState::Cordoned,
                (false, Scheduling::Schedulable) => HostState::Ready,
            };
        }
        if now >= s.replace_at(timing.replace_after) {
            HostState::Replacing
        } else {
            HostState::NotReady
        }
    }
}

/// The default lease a heartbeat acknowledgement grants (`[agents] lease_secs`).
pub const DEFAULT_LEASE_SECS: u64 = 10;

/// The clock drift allowed between server and agent, in parts per thousand (ρ = 1 %).
pub const LEASE_DRIFT_PERMILLE: i64 = 10;

/// Added to every lease bound, beyond the drift.
pub const LEASE_MARGIN: chrono::Duration = chrono::Duration::seconds(2);

/// How long a host may be silent before its instances are re-created elsewhere (issue 21: 5 min).
pub const DEFAULT_REPLACE_AFTER_SECS: u64 = 300;

/// The smallest `replace_after` accepted (it must also exceed the lease bound).
pub const MIN_REPLACE_AFTER_SECS: u64 = 30;

/// How long after its last heartbeat a host may still hold a lease of `lease`: `lease`·(1+ρ)
/// plus the margin (drift rounded up to the millisecond).
pub fn lease_span(lease: chrono::Duration) -> chrono::Duration {
    let ms = lease.num_milliseconds().max(0);
    let drift = (ms * LEASE_DRIFT_PERMILLE + 999) / 1000;
    chrono::Duration::milliseconds(ms + drift) + LEASE_MARGIN
}

/// The timing of host failure handling, as configured (`[agents]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureTiming {
    /// Silence after which a host is NotReady and its instances' health Unknown.
    pub grace: chrono::Duration,
    /// Silence after which its instances are re-created elsewhere (never before the lease bound).
    pub replace_after: chrono::Duration,
}

impl FailureTiming {
    /// `replace_after` must leave every lease of `lease` time to end: refused below the bound,
    /// with both values named.
    pub fn check(
        grace: chrono::Duration,
        replace_after: chrono::Duration,
        lease: chrono::Duration,
    ) -> Result<Self, FieldError> {
        let bound = lease_span(lease);
        if replace_after.num_seconds() < MIN_REPLACE_AFTER_SECS as i64 {
            return Err(FieldError::new(
                "agents.replace_after_secs",
                format!("{} s is below the minimum of {MIN_REPLACE_AFTER_SECS} s", replace_after.num_seconds()),
            ));
        }
        if replace_after <= bound {
            return Err(FieldError::new(
                "agents.replace_after_secs",
                format!(
                    "{} s is not above the lease bound of {:.3} s (lease_secs {} s × 1.01 + 2 s margin): an instance could be re-created while its old host still holds a lease; raise replace_after_secs or lower lease_secs",
                    replace_after.num_seconds(),
                    bound.num_milliseconds() as f64 / 1000.0,
                    lease.num_seconds()
                ),
            ));
        }
        if replace_after <= grace {
            return Err(FieldError::new(
                "agents.replace_after_secs",
                format!(
                    "{} s must be longer than host_grace_secs ({} s)",
                    replace_after.num_seconds(),
                    grace.num_seconds()
                ),
            ));
        }
        Ok(Self { grace, replace_after })
    }
}

/// What the server knows of how long a host has been silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Silence {
    /// Its last heartbeat received, or the server's start if none since.
    pub since: DateTime<Utc>,
    /// Whether a heartbeat came since the server started.
    pub heard: bool,
    /// The largest lease ever granted to the host (zero: none since the server started, then
    /// the configured lease counts, see [`Heartbeats::silence`]).
    pub max_lease: chrono::Duration,
}

impl Silence {
    /// The end of the last lease the host can hold: last heartbeat + `L_max`·(1+ρ) + margin.
    pub fn lease_bound(&self) -> DateTime<Utc> {
        self.since + lease_span(self.max_lease)
    }

    /// Heard within `grace`.
    pub fn live(&self, now: DateTime<Utc>, grace: chrono::Duration) -> bool {
        self.heard && now - self.since <= grace
    }

    /// Silent for longer than `grace` (counted from the server's start if never heard): its
    /// instances' health is Unknown and they leave rotation.
    pub fn unreachable(&self, now: DateTime<Utc>, grace: chrono::Duration) -> bool {
        now - self.since > grace
    }

    /// When its instances may be re-created elsewhere: `replace_after` into the silence, and
    /// never before the lease bound.
    pub fn replace_at(&self, replace_after: chrono::Duration) -> DateTime<Utc> {
        (self.since + replace_after).max(self.lease_bound())
    }
}

/// The largest lease granted to one host, and when it was last heard: kept by the server per
/// host, in memory, from its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRecord {
    pub last_heartbeat: DateTime<Utc>,
    pub max_lease: chrono::Duration,
}

impl LeaseRecord {
    /// A heartbeat at `now`, acknowledged with a lease of `lease`: the bound moves with the
    /// heartbeat; the lease remembered only grows.
    pub fn heartbeat(this: Option<LeaseRecord>, now: DateTime<Utc>, lease: chrono::Duration) -> LeaseRecord {
        match this {
            Some(r) => LeaseRecord { last_heartbeat: now.max(r.last_heartbeat), max_lease: r.max_lease.max(lease) },
            None => LeaseRecord { last_heartbeat: now, max_lease: lease },
        }
    }

    /// The host's silence, counted from `server_start` when it was never heard. `granted` is
    /// the largest lease any server ever granted it (the host record's `max_lease_ms`), so a
    /// restart with a lower setting never shortens a lease granted before.
    pub fn silence(
        this: Option<LeaseRecord>,
        server_start: DateTime<Utc>,
        configured: chrono::Duration,
        granted: chrono::Duration,
    ) -> Silence {
        match this {
            Some(r) => Silence { since: r.last_heartbeat, heard: true, max_lease: r.max_lease.max(granted) },
            // Never heard since the start: the last heartbeat any server received came before
            // it, under a lease of at most the largest ever granted.
            None => Silence { since: server_start, heard: false, max_lease: configured.max(granted) },
        }
    }
}

/// What the server knows of hosts' heartbeats (kept in memory by the agent link). The API
/// reads it through this trait, so it does not depend on the link.
pub trait Heartbeats: Send + Sync {
    /// When host `name` last heartbeated, if it has since this server started.
    fn last_heartbeat(&self, name: &str) -> Option<DateTime<Utc>>;

    /// How long host `name` has been silent and the largest lease it holds (None: this server
    /// has no agent link, so nothing is known and nothing is replaced).
    fn silence(&self, _name: &str) -> Option<Silence> {
        None
    }

    /// Destroys the copy of instance `key` left on host `name` after the instance was placed
    /// elsewhere, fenced by the new placement (`term`, `incarnation`), which the host's copy is
    /// below. Err: the host did not do it (not linked, or its driver failed).
    fn destroy_stale_copy<'a>(
        &'a self,
        name: &'a str,
        _key: &'a crate::InstanceKey,
        _term: u64,
        _incarnation: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move { Err(format!("host {name}: no agent link on this server")) })
    }

    /// Host `name`'s link figures, if it is linked now.
    fn link_stats(&self, _name: &str) -> Option<LinkStats> {
        None
    }

    /// Instances were just placed on other hosts (a re-creation, a redeploy, a Spot loss),
    /// written to the store: the next acknowledgement to any host must list what the store
    /// says now, not an earlier reading (a host must never be leased an instance moved away).
    fn placements_changed(&self) {}
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
    /// Silence after which a host's instances are re-created elsewhere (checked against the
    /// lease bound when the server starts: [`FailureTiming::check`]).
    pub replace_after: chrono::Duration,
    /// The server's own machine (named [`LOCAL_HOST`]), used when no hosts
    /// are declared: once a host has joined, placement is no longer unlimited, and instances
    /// with no host recorded are counted here, where they run.
    pub local: crate::spot::HostSpec,
}

impl std::fmt::Debug for JoinedHosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinedHosts")
            .field("grace", &self.grace)
            .field("replace_after", &self.replace_after)
            .field("local", &self.local)
            .finish_non_exhaustive()
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

    /// The failure timing (`host_grace`, `replace_after`).
    pub fn timing(&self) -> FailureTiming {
        FailureTiming { grace: self.grace, replace_after: self.replace_after }
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

    fn secs(n: i64) -> chrono::Duration {
        chrono::Duration::seconds(n)
    }

    #[test]
    fn the_lease_bound_is_the_last_heartbeat_plus_the_largest_lease_with_drift_and_margin() {
        assert_eq!(lease_span(secs(10)), chrono::Duration::milliseconds(10_100) + LEASE_MARGIN);
        assert_eq!(
            lease_span(chrono::Duration::milliseconds(1)),
            chrono::Duration::milliseconds(2) + LEASE_MARGIN,
            "drift rounds up"
        );
        let t0 = Utc::now();
        // Granted 20 s, then the setting was lowered to 5 s: the bound keeps the 20 s.
        let r = LeaseRecord::heartbeat(None, t0, secs(20));
        let r = LeaseRecord::heartbeat(Some(r), t0 + secs(2), secs(5));
        assert_eq!(r, LeaseRecord { last_heartbeat: t0 + secs(2), max_lease: secs(20) });
        let s = LeaseRecord::silence(Some(r), t0 - secs(100), secs(5), secs(0));
        assert_eq!(s.lease_bound(), t0 + secs(2) + chrono::Duration::milliseconds(20_200) + LEASE_MARGIN);
        // replace_after shorter than the bound waits for the bound; longer wins.
        assert_eq!(s.replace_at(secs(10)), s.lease_bound());
        assert_eq!(s.replace_at(secs(60)), t0 + secs(62));
        // A heartbeat arriving out of order never moves the silence back.
        let late = LeaseRecord::heartbeat(Some(r), t0, secs(5));
        assert_eq!(late.last_heartbeat, t0 + secs(2));
    }

    #[test]
    fn after_a_server_start_silence_counts_from_the_start_with_the_configured_lease() {
        let start = Utc::now();
        // A server before this one granted 20 s; this one is configured with 10 s.
        let earlier = LeaseRecord::silence(None, start, secs(10), secs(20));
        assert_eq!(earlier.lease_bound(), start + lease_span(secs(20)), "a lowered setting shortens nothing");
        let s = LeaseRecord::silence(None, start, secs(10), secs(0));
        assert!(!s.heard);
        assert_eq!(s.since, start);
        assert_eq!(s.lease_bound(), start + lease_span(secs(10)));
        let timing = FailureTiming { grace: secs(5), replace_after: secs(30) };
        // Never heard: NotReady at once (placement trusts nothing), but its instances are only
        // unreachable once the grace has passed since the start, and replaced after 30 s.
        assert_eq!(
            HostState::with_failure(Scheduling::Schedulable, Some(&s), start + secs(1), &timing, false),
            HostState::NotReady
        );
        assert!(!s.unreachable(start + secs(5), timing.grace));
        assert!(s.unreachable(start + secs(6), timing.grace));
        assert_eq!(
            HostState::with_failure(Scheduling::Schedulable, Some(&s), start + secs(29), &timing, false),
            HostState::NotReady
        );
        assert_eq!(
            HostState::with_failure(Scheduling::Schedulable, Some(&s), start + secs(30), &timing, false),
            HostState::Replacing
        );
    }

    #[test]
    fn a_heard_host_with_stale_copies_is_returning_until_they_are_gone() {
        let t0 = Utc::now();
        let timing = FailureTiming { grace: secs(5), replace_after: secs(30) };
        let s = Silence { since: t0, heard: true, max_lease: secs(10) };
        let at = |stale, sched| HostState::with_failure(sched, Some(&s), t0 + secs(1), &timing, stale);
        assert_eq!(at(true, Scheduling::Schedulable), HostState::Returning);
        assert_eq!(at(true, Scheduling::Cordoned), HostState::Returning);
        assert_eq!(at(false, Scheduling::Schedulable), HostState::Ready);
        assert_eq!(at(false, Scheduling::Cordoned), HostState::Cordoned);
        assert_eq!(HostState::with_failure(Scheduling::Schedulable, None, t0, &timing, false), HostState::NotReady);
    }

    #[test]
    fn replace_after_below_the_lease_bound_or_the_minimum_is_refused_naming_both_values() {
        let e = FailureTiming::check(secs(5), secs(30), secs(30)).unwrap_err();
        assert_eq!(e.field, "agents.replace_after_secs");
        assert!(
            e.message.contains("30 s") && e.message.contains("32.300 s") && e.message.contains("lease_secs 30 s"),
            "{e}"
        );
        let e = FailureTiming::check(secs(5), secs(29), secs(1)).unwrap_err();
        assert!(e.message.contains("minimum of 30 s"), "{e}");
        let e = FailureTiming::check(secs(40), secs(30), secs(10)).unwrap_err();
        assert!(e.message.contains("host_grace_secs"), "{e}");
        assert_eq!(
            FailureTiming::check(secs(5), secs(30), secs(10)).unwrap(),
            FailureTiming { grace: secs(5), replace_after: secs(30) }
        );
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
