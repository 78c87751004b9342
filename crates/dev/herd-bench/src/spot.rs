//! `herd bench spot`: how long it takes to decide and carry out the Spot evictions that a
//! Regular scale-out needs (issue goal: < 1 s for 10,000 instances on 50 hosts).
//!
//! - **Decide**: [`herd_capacity::arbitrate`] over a nearly full cluster (Regular and Spot
//!   mixed, several SKUs, 3 zones) for a Regular scale-out that only fits by evicting; timed
//!   over R rounds (min / median / max), next to the obvious peer
//!   ([`herd_capacity::bench::naive_global`]: one global youngest-first list walked per
//!   request), so the report can state a ratio of times and of evictions.
//! - **Carry out**, through the server's own code: read every instance record from a SQLite
//!   store, run the reconciler's capacity pass (`herd_reconciler::capacity::arbitrate`: the
//!   holders from `capacity::holder`, the arbiter, the steps rewritten) with the scale-out as
//!   the planner's `Create` step, and write the Preempt events it posts onto the chosen
//!   records as compare-and-swap writes (in transactions of at most 128, the store's limit).
//!
//! Why no server: the decision is a pure function and the carry-out is store writes;
//! a server with 10,000 sim instances would add only the wait for them to boot.

use crate::{ms, spread};
use anyhow::{Context, Result};
use herd_capacity::bench::{naive_global, scenario, spot_price, Scenario};
use herd_capacity::{arbitrate, Tier};
use herd_model::instance::InstanceRecord;
use herd_model::scale_set::{ScaleSetModel, StoredScaleSet};
use herd_model::sku::SkuTable;
use herd_model::spot::{ScheduledEvent, ScheduledEventType, PREEMPT_NOTICE_SECS};
use herd_model::{GroupName, InstanceKey, ScaleSetName};
use herd_reconciler::capacity::{self, SetSteps, SpotPrice};
use herd_reconciler::plan::{NewInstance, Step};
use herd_state::intents::Writes;
use herd_state::keys::InstanceRecordKey;
use herd_state::{Expected, Records, Versioned};
use herd_store::SqliteStore;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `herd bench spot`.
#[derive(Debug, Clone, clap::Args)]
pub struct SpotBenchOpts {
    /// Instances holding compute (about 60% Regular, 40% Spot).
    #[arg(long, default_value_t = 10_000)]
    pub instances: usize,
    /// Declared hosts (each sized to be nearly full).
    #[arg(long, default_value_t = 50)]
    pub hosts: usize,
    /// Zones the hosts and the scale-out spread over.
    #[arg(long, default_value_t = 3)]
    pub zones: usize,
    /// Regular instances in the scale-out (Standard_B2s).
    #[arg(long, default_value_t = 500)]
    pub scale_out: usize,
    /// Timed rounds of each measurement.
    #[arg(long, default_value_t = 20)]
    pub rounds: u32,
    /// Decide only: skip reading and writing the SQLite store.
    #[arg(long)]
    pub no_store: bool,
}

impl Default for SpotBenchOpts {
    fn default() -> Self {
        Self { instances: 10_000, hosts: 50, zones: 3, scale_out: 500, rounds: 20, no_store: false }
    }
}

/// Runs `f` `rounds` times (at least once); returns each run's duration and the last result.
fn timed<T>(rounds: u32, mut f: impl FnMut() -> T) -> Result<(Vec<Duration>, T)> {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..rounds {
        let t0 = Instant::now();
        let r = f();
        times.push(t0.elapsed());
        last = Some(r);
    }
    Ok((times, last.context("no round ran")?))
}

/// Runs the benchmark and returns the report.
pub fn run(opts: &SpotBenchOpts) -> Result<String> {
    let rounds = opts.rounds.max(1);
    let s = scenario(opts.instances, opts.hosts, opts.zones, opts.scale_out);
    let mut out = String::new();
    writeln!(
        out,
        "spot arbitration: {} instances ({} Regular, {} Spot) on {} hosts in {} zones, nearly full; Regular scale-out of {} x Standard_B2s; {rounds} rounds",
        s.holders.len(),
        s.regular_holders(),
        s.spot_holders(),
        s.hosts.len(),
        opts.zones.max(1),
        s.requests.len(),
    )?;

    // Decide.
    let (mut times, d) = timed(rounds, || arbitrate(&s.hosts, &s.holders, &s.requests, &spot_price))?;
    let (min, med, max) = spread(&mut times);
    writeln!(
        out,
        "  decide (herd-capacity):      min {min:.2} ms, median {med:.2} ms, max {max:.2} ms; {} evictions chosen; {} waiting, {} placed, {} refused",
        d.preempt.len(),
        d.waiting.len(),
        d.placements.len(),
        d.refused.len()
    )?;

    // The naive peer.
    let (mut times, n) = timed(rounds, || naive_global(&s.hosts, &s.holders, &s.requests))?;
    let (nmin, nmed, nmax) = spread(&mut times);
    writeln!(
        out,
        "  naive global youngest-first: min {nmin:.2} ms, median {nmed:.2} ms, max {nmax:.2} ms; {} evictions; {} placed, {} refused",
        n.evictions, n.placed, n.refused
    )?;
    writeln!(
        out,
        "decide {}-instance regular scale-out on {} instances / {} hosts: median {med:.2} ms (naive global sort: {nmed:.2} ms, ratio {:.1}x); evictions {} vs naive {}",
        s.requests.len(),
        s.holders.len(),
        s.hosts.len(),
        nmed / med.max(1e-6),
        d.preempt.len(),
        n.evictions
    )?;

    if opts.no_store {
        writeln!(out, "carry out: skipped (--no-store)")?;
    } else {
        carry_out(&s, rounds, &mut out)?;
    }
    Ok(out)
}

/// The scale sets of the scenario as the server stores them: each holder's set with its tier
/// (priority) and SKU, and the `scaleout` set the requests grow (Regular, Standard_B2s). What
/// an instance holds is then worked out by the reconciler's own `capacity::holder` from the
/// set and the record (Deallocated instances hold nothing; an evicted one's Preempt does not
/// count as announced). The scenario's per-instance `maxPrice` has no set-level equivalent
/// and is left out here (it is below no price of the scenario, so it decides nothing).
fn scenario_sets(s: &Scenario) -> Result<BTreeMap<ScaleSetName, StoredScaleSet>> {
    let mut facts: BTreeMap<ScaleSetName, (Tier, String)> = BTreeMap::new();
    for h in &s.holders {
        facts.entry(h.key.set.clone()).or_insert((h.tier, h.sku.clone()));
    }
    for r in &s.requests {
        facts.entry(r.key.set.clone()).or_insert((r.tier, r.sku.clone()));
    }
    let group = GroupName::new("bench").context("group name")?;
    let mut sets = BTreeMap::new();
    for (name, (tier, sku)) in facts {
        let mut profile = json!({
            "osProfile": {"computerNamePrefix": name.as_str()},
            "storageProfile": {"imageReference": {"publisher": "Bench", "offer": "Spot", "sku": "1", "version": "1"}}
        });
        if tier == Tier::Spot {
            profile["priority"] = json!("Spot");
            profile["evictionPolicy"] = json!("Delete");
        }
        let model =
            ScaleSetModel::from_json(json!({"sku": {"name": sku, "capacity": 0}, "virtualMachineProfile": profile}))
                .context("building a scale set model")?;
        let set = StoredScaleSet {
            name: name.clone(),
            group: group.clone(),
            model_generation: 1,
            time_created: s.now,
            deleting: false,
            model,
        };
        sets.insert(name, set);
    }
    Ok(sets)
}

/// Seeds a SQLite store with the scenario's instance records.
fn seed_store(s: &Scenario, store: &SqliteStore) -> Result<()> {
    let mut seed = Writes::new();
    for h in &s.holders {
        let mut v = json!({
            "instanceId": h.key.id.0,
            "computerName": format!("{}{}", h.key.set, h.key.id.base36()),
            "zone": h.zone,
            "modelGeneration": 1,
            "state": "Running",
            "goal": "Running",
            "reachAddress": "127.128.0.1",
            "sku": h.sku,
            "host": h.host,
            "createdAt": h.created_at,
            "stateSince": h.created_at,
        });
        if h.preempting {
            let ev = ScheduledEvent::new(
                ScheduledEventType::Preempt,
                s.now,
                chrono::Duration::seconds(PREEMPT_NOTICE_SECS),
                "announced before the benchmark",
                None,
            );
            v["scheduledEvents"] = json!([ev]);
        }
        let rec: InstanceRecord = serde_json::from_value(v).context("building an instance record")?;
        seed.put_instance(&InstanceRecordKey::new(h.key.clone()), &rec, Expected::Absent)?;
    }
    // Over the store's transaction limit: in chunks (each record is independent).
    seed.commit_in_chunks(store)?;
    Ok(())
}

/// The scale-out as the planner hands it to the capacity pass: one `Create` step of the
/// `scaleout` set.
fn scale_out_steps(s: &Scenario) -> Vec<Step> {
    let new = s.requests.iter().map(|r| NewInstance {
        id: r.key.id,
        zone: r.zone.clone(),
        overprovisioned: false,
        host: None,
        fault_domain: None,
    });
    vec![Step::Create(new.collect())]
}

/// One timed round: read every record, run the reconciler's capacity pass over every set
/// (`herd_reconciler::capacity::arbitrate`: holders from the records, the arbiter, the steps
/// rewritten), then write its Preempt events as compare-and-swap writes. Returns the three
/// durations, the number of events and the writes that undo them.
fn carry_out_round(
    s: &Scenario,
    store: &SqliteStore,
    sets: &BTreeMap<ScaleSetName, StoredScaleSet>,
) -> Result<([Duration; 3], usize, Writes)> {
    let skus = SkuTable::default();
    let price = SpotPrice(Arc::new(|sku: &str, _| spot_price(sku)));
    let t0 = Instant::now();
    let records = store.instances()?;
    let mut by_set: BTreeMap<&ScaleSetName, Vec<&Versioned<InstanceRecord>>> = BTreeMap::new();
    for o in &records {
        let Some(key) = InstanceKey::parse_path(&o.key) else { continue };
        if let Some((name, _)) = sets.get_key_value(&key.set) {
            by_set.entry(name).or_default().push(o);
        }
    }
    let t_read = t0.elapsed();

    let t1 = Instant::now();
    let mut steps: Vec<Vec<Step>> =
        sets.keys().map(|n| if n.as_str() == "scaleout" { scale_out_steps(s) } else { Vec::new() }).collect();
    let mut parts: Vec<SetSteps<'_>> = sets
        .iter()
        .zip(steps.iter_mut())
        .map(|((name, set), steps)| SetSteps {
            set,
            records: by_set.get(name).map(|v| v.iter().map(|o| &o.value).collect()).unwrap_or_default(),
            steps,
            note: None,
            placement_note: None,
        })
        .collect();
    capacity::arbitrate(&mut parts, &s.hosts, None, &skus, &price, s.now);
    drop(parts);
    let t_decide = t1.elapsed();

    let t2 = Instant::now();
    let (mut ops, mut restore) = (Writes::new(), Writes::new());
    for ((name, _), steps) in sets.iter().zip(&steps) {
        for step in steps {
            let Step::PostEvent { id, kind, notice, reason, description } = step else { continue };
            let Some(o) = by_set.get(name).and_then(|v| v.iter().find(|o| o.value.instance_id == *id)) else {
                continue;
            };
            let mut rec = o.value.clone();
            rec.scheduled_events.push(ScheduledEvent::new(*kind, s.now, *notice, description.clone(), *reason));
            let key = InstanceRecordKey::new(InstanceKey::parse_path(&o.key).context("an instance key")?);
            ops.put_instance(&key, &rec, Expected::Revision(o.revision))?;
            restore.put_instance(&key, &o.value, Expected::Any)?;
        }
    }
    let events = ops.len();
    // Each Preempt event is a compare-and-swap of its own record; in chunks that fit the
    // store's transaction limit.
    ops.commit_in_chunks(store)?;
    Ok(([t_read, t_decide, t2.elapsed()], events, restore))
}

/// Seeds a SQLite store with the scenario, then times read → decide → write the way the server
/// does, restoring the records between rounds.
fn carry_out(s: &Scenario, rounds: u32, out: &mut String) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(&dir.path().join("herd.db")).context("opening the store")?;
    let sets = scenario_sets(s)?;
    let t0 = Instant::now();
    seed_store(s, &store)?;
    let seeded = t0.elapsed();

    let (mut reads, mut decides, mut writes, mut totals) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut events = 0;
    for _ in 0..rounds {
        let ([t_read, t_decide, t_write], n, restore) = carry_out_round(s, &store, &sets)?;
        events = n;
        reads.push(t_read);
        decides.push(t_decide);
        writes.push(t_write);
        totals.push(t_read + t_decide + t_write);
        // Untimed: put the records back, so every round starts from the same state.
        restore.commit_in_chunks(&store)?;
    }
    let (_, read, _) = spread(&mut reads);
    let (_, decide, _) = spread(&mut decides);
    let (wmin, write, wmax) = spread(&mut writes);
    let (tmin, total, tmax) = spread(&mut totals);
    writeln!(
        out,
        "carry out (SQLite store, seeded with {} records in {:.0} ms): read median {read:.1} ms, the reconciler's capacity pass (holders, arbiter, steps) {decide:.2} ms, write {events} Preempt events in transactions of at most 128 median {write:.1} ms (min {wmin:.1}, max {wmax:.1})",
        s.holders.len(),
        ms(seeded)
    )?;
    writeln!(
        out,
        "decide and carry out end to end: median {total:.1} ms (min {tmin:.1}, max {tmax:.1}); goal < 1000 ms: {}",
        if tmax < 1000.0 { "met" } else { "NOT met" }
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_run_reports_every_line() {
        let opts = SpotBenchOpts { instances: 600, hosts: 5, zones: 3, scale_out: 30, rounds: 2, no_store: false };
        let report = run(&opts).unwrap();
        for needle in ["decide (herd-capacity)", "naive global", "ratio", "Preempt events", "end to end"] {
            assert!(report.contains(needle), "{needle}: {report}");
        }
    }
}
