//! herd's capacity arbiter, without I/O: where instances go on the declared hosts, which
//! instances must wait, which are refused and why, and which Spot instances to evict, for room
//! or for price.
//!
//! Why a crate of its own, and pure: the API (refusing a Regular scale-out that can never fit),
//! the reconciler (placing new instances, posting Preempt events), `herd host show` and the
//! benchmarks must all make the same decision from the same facts. So the whole decision is one
//! function of its inputs — the hosts, every instance holding compute, the instances wanting
//! room and a spot price lookup — with no clock, no store and no hash-order leaks. The server
//! reads the records, calls [`arbitrate`], and writes what it says (see "What the caller does").
//!
//! # Rules
//! - **Capacity** of a host: `floor(vcpus × overcommit)` vCPUs and `memory_mib` MiB (memory is
//!   never overcommitted). Every instance reserves its SKU's size on one host.
//! - **No hosts declared = unlimited**: everything is placed on [`UNLIMITED_HOST`] (`""`, which
//!   the caller stores as "no host") and nothing is evicted for room; price evictions still
//!   apply.
//! - **Zones**: a host with no zone serves every zone; a request for zone `z` goes only to hosts
//!   of zone `z` or with no zone, those of zone `z` first (each stage below is tried on them
//!   before any host with no zone: the server's own machine beside joined hosts is a fallback,
//!   not a host of every zone); a request without a zone goes anywhere.
//! - **Order**: Regular requests are served before Spot ones; within a tier, larger instances
//!   first (they are the hardest to fit), then by key.
//! - **Spreading** (maximum spreading, `platformFaultDomainCount` 1, the default): of the hosts
//!   with room, the one holding the fewest instances of the request's scale set, then the one
//!   with the most free vCPU, then memory, then the first by name. Best effort: a set goes
//!   where the room is.
//! - **Fault domains** (Azure's semantics, with herd's departure on the allowed counts): within
//!   a zone, a fault domain is a host, or the hosts sharing a `fault_domain` label (a rack). The
//!   zone's fault domains are those with a host that takes new instances (labelled with the
//!   zone, or, only in a zone without such hosts, serving every zone; not cordoned, heard
//!   from), sorted by name; with `platformFaultDomainCount` N, fault domain `i`
//!   (0 ≤ i < N) is the `i`-th of them ([`fault_domains`]). A zone with fewer than N is refused
//!   ([`Refusal::FaultDomains`], and [`check_fault_domains`] for the API). A new instance is
//!   given the index its set uses least in its zone (tie → lowest), so with two hosts and N=2
//!   instances alternate between them; if that domain cannot take it (by the stages below), the
//!   next least-used one is tried. Within the domain the host is chosen as in Spreading. The
//!   index is returned with the placement ([`Placement::fault_domain`], 0 with a count of 1), and
//!   the caller records it on the instance: it never changes, and an instance that has one
//!   (a deallocated instance starting again) goes back to that domain only. Holders without one
//!   (placed before fault domains) count on their host only. With no hosts at all (unlimited),
//!   there is one domain, so only a count of 1 is placed.
//! - **Zones without hosts**: [`zones_without_hosts`] names a set's zones that no host takes new
//!   instances for; the callers refuse a `zoneBalance` set there, and send the new instances of
//!   other sets to their remaining zones.
//! - **Regular needing room**, in this order (in each candidate fault domain in turn):
//!   1. fits now → placed;
//!   2. fits once the Preempts already announced complete → waiting (no new eviction);
//!   3. fits after evicting Spot instances on *one* eligible host, youngest first (latest
//!      `created_at`, tie → highest id): the host needing the fewest evictions (tie → name) is
//!      chosen, those instances get a Capacity Preempt, and the request is waiting;
//!   4. otherwise refused with a [`Shortfall`] (even evicting every Spot instance there would
//!      not make room).
//!
//!   Room freed by earlier choices in the same call is counted, so a batch never evicts more
//!   than it needs.
//! - **Overprovisioned extras** (`Request::extra`) are optional: they are served last, after
//!   every Regular and Spot request, and only from room that is free now. An extra never
//!   evicts a Spot instance and never waits for room; without free room it is skipped
//!   ([`Decision::skipped`], not reported as a shortfall). So a scale-out with `overprovision`
//!   evicts exactly what its counted instances need, on one host or across several.
//! - **Spot requests never evict**: no free room now → refused (the caller shows "waiting for
//!   Spot capacity"). Room being freed by a Preempt is kept for the Regular instance that caused
//!   it.
//! - **Price**: a Spot holder whose `maxPrice` is below the current spot price of its SKU gets a
//!   Price Preempt (`-1`, any negative, or no `maxPrice` = never for price). A Spot request in
//!   the same position is refused with [`Refusal::Price`], so restores wait for the price to
//!   fall again (Azure's `spotRestorePolicy`).
//! - **Legacy holders** (host unknown: placed before hosts were declared) are placed first, as
//!   instances that may not be refused: where they fit, or else on the least-loaded eligible
//!   host, with a warning. Holders on a host that is no longer declared are not counted, with a
//!   warning.
//!
//! # A Spot instance's life, as the arbiter sees it
//! ```text
//!                    placed (free room, price ok)
//!   Spot request ──────────────────────────────────▶ Holder (running, evictable)
//!        ▲  │ no room / price above maxPrice                  │
//!        │  ▼                                                 │ arbitrate → preempt
//!     refused (caller retries later:                          ▼  (Capacity | Price)
//!     spotRestorePolicy)                       Holder{preempting} ── still holds its room;
//!        ▲                                            │          Regular requests wait on it
//!        │ evictionPolicy: Deallocate keeps record     │ notice over / acknowledged
//!        └──────────── Delete removes it ◀─────────────┘ (caller evicts; not a holder any more)
//! ```
//! A Regular request:
//! ```text
//!   request ──fits now──▶ placed
//!      │──fits once announced Preempts finish──▶ waiting ──(next call)──▶ placed
//!      │──fits after evicting Spot on one host──▶ preempt chosen + waiting ──▶ ... placed
//!      └──not even then──▶ refused (Shortfall)
//! ```
//!
//! # What the caller does
//! - Pass every record that holds compute (not Deallocated, not yet removed) as a [`Holder`],
//!   with `preempting` set when a Preempt event is already posted on it.
//! - Pass the instances that want room and hold none yet as [`Request`]s.
//! - Create the instances in [`Decision::placements`] on their host; write the host of every
//!   [`Decision::adopted`] record; post a Preempt event (with [`herd_model::spot::PREEMPT_NOTICE_SECS`])
//!   on each of [`Decision::preempt`]; leave [`Decision::waiting`] for the next call; report
//!   [`Decision::refused`]; drop [`Decision::skipped`] silently.
//!
//! Where herd differs from Azure, deliberately: Azure does not say which Spot VM it evicts;
//! herd evicts the youngest on one host, the fewest it can, and says so in the event's
//! description. Azure evicts without telling which Regular VM needed the room; herd's detail
//! names it.

#![forbid(unsafe_code)]

mod arbitrate;
pub mod bench;
mod cluster;
mod model;

pub use arbitrate::{
    arbitrate, check_fault_domains, check_regular_room, fault_domains, usage, vcpu_capacity, zones_without_hosts,
};
pub use model::{
    Decision, DomainShortfall, FaultDomain, Holder, HostUsage, Placement, Preemption, Refusal, Refused, Request,
    Shortfall, Size, Tier, UNLIMITED_HOST,
};

#[cfg(test)]
mod tests;
