//! `herd bench placement`: how long the capacity arbiter takes to place a large batch over
//! many hosts with fault domains (issue 20's goal: < 1 s to decide 10,000 instances over 500
//! simulated hosts in 3 zones with 5 fault domains each).
//!
//! - **Fault domains**: [`herd_capacity::arbitrate`] on empty hosts, each zone's hosts in 5
//!   racks (a `fault_domain` label), for 10,000 new Regular instances of 20 sets with
//!   `platformFaultDomainCount` 5, each set over the 3 zones.
//! - **Peer**: the same hosts and instances with no fault domains (no labels, count 1): the
//!   arbiter's maximum-spreading path, which is what placement did before fault domains. The
//!   ratio is what fault domains cost.
//!
//! The two alternate, round by round, so drift on the machine hits both alike. The report
//! gives min / median / max of each, the ratio of medians, and how even each set came out
//! (the largest difference between a set's most and least used fault domain in a zone, or
//! host for the peer): it must be at most 1.
//!
//! Why no server and no store: the goal is the decision, a pure function; the reconciler's
//! capacity pass adds only reading the records, which `herd bench spot` measures.

use crate::spread;
use anyhow::{ensure, Result};
use herd_capacity::arbitrate;
use herd_capacity::bench::{imbalance, placement_scenario};
use std::fmt::Write as _;
use std::time::Instant;

/// Options of `herd bench placement`.
#[derive(Debug, Clone, clap::Args)]
pub struct PlacementBenchOpts {
    /// New instances to place in one decision.
    #[arg(long, default_value_t = 10_000)]
    pub instances: usize,
    /// Simulated hosts (empty, sized so the instances fill about three quarters).
    #[arg(long, default_value_t = 500)]
    pub hosts: usize,
    /// Zones the hosts and every set spread over.
    #[arg(long, default_value_t = 3)]
    pub zones: usize,
    /// Fault domains (racks) per zone, and every set's `platformFaultDomainCount`.
    #[arg(long, default_value_t = 5)]
    pub fault_domains: u32,
    /// Scale sets the instances belong to.
    #[arg(long, default_value_t = 20)]
    pub sets: usize,
    /// Timed rounds of each (alternating).
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
}

impl Default for PlacementBenchOpts {
    fn default() -> Self {
        Self { instances: 10_000, hosts: 500, zones: 3, fault_domains: 5, sets: 20, rounds: 5 }
    }
}

/// Runs the benchmark and returns the report.
pub fn run(opts: &PlacementBenchOpts) -> Result<String> {
    ensure!(opts.fault_domains >= 1, "--fault-domains must be at least 1");
    let rounds = opts.rounds.max(1);
    let with = placement_scenario(opts.instances, opts.hosts, opts.zones, opts.fault_domains, opts.sets);
    let peer = placement_scenario(opts.instances, opts.hosts, opts.zones, 1, opts.sets);
    let mut out = String::new();
    writeln!(
        out,
        "placement: {} new Regular instances of {} sets over {} empty hosts in {} zones; {} fault domains per zone (platformFaultDomainCount {}); peer: the same without fault domains (count 1, no labels); {rounds} alternating rounds",
        with.requests.len(),
        opts.sets.max(1),
        with.hosts.len(),
        opts.zones.max(1),
        opts.fault_domains,
        opts.fault_domains,
    )?;
    let none = |_: &str| None;
    let (mut t_with, mut t_peer) = (Vec::new(), Vec::new());
    let (mut d_with, mut d_peer) = (None, None);
    for _ in 0..rounds {
        let t0 = Instant::now();
        let d = arbitrate(&with.hosts, &[], &with.requests, &none);
        t_with.push(t0.elapsed());
        d_with = Some(d);
        let t0 = Instant::now();
        let d = arbitrate(&peer.hosts, &[], &peer.requests, &none);
        t_peer.push(t0.elapsed());
        d_peer = Some(d);
    }
    let (d_with, d_peer) = (d_with.expect("a round ran"), d_peer.expect("a round ran"));
    let (a_min, a_med, a_max) = spread(&mut t_with);
    let (b_min, b_med, b_max) = spread(&mut t_peer);
    for (name, d, s, (min, med, max)) in
        [("fault domains", &d_with, &with, (a_min, a_med, a_max)), ("peer", &d_peer, &peer, (b_min, b_med, b_max))]
    {
        writeln!(
            out,
            "  {name:<13} decide: min {min:.1} ms, median {med:.1} ms, max {max:.1} ms; placed {}, refused {}; largest imbalance within a set and zone: {}",
            d.placements.len(),
            d.refused.len(),
            imbalance(s, d),
        )?;
    }
    writeln!(
        out,
        "  ratio (fault domains / peer, medians): {:.2}x; goal: fault domains < 1000 ms: {}",
        if b_med > 0.0 { a_med / b_med } else { 0.0 },
        if a_med < 1000.0 { "met" } else { "NOT met" }
    )?;
    Ok(out)
}
