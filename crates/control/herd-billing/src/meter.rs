//! The meter: turns the instance records the reconciler keeps into billed instance-seconds and
//! money, per hour, SKU and priority, kept in the store beside each scale set.
//!
//! # What bills (Azure's rule)
//! An instance bills while it holds compute on a host:
//!
//! | state | bills | why |
//! |---|---|---|
//! | Creating, Starting, Running, Restarting, Reimaging, Redeploying | yes | the VM is allocated (and booting or running) |
//! | Stopping, Stopped | yes | stopped but still allocated: Azure bills "Stopped" VMs, only "Stopped (deallocated)" ones are free |
//! | Deallocating | yes | compute is held until deallocation completes |
//! | Deallocated | no | the compute is released; only the disk remains |
//! | Failed | no | herd failed to provision it or it crashed; herd re-creates it, and its failures are not the user's bill |
//! | Deleting | no | as in Azure, billing ends when deletion starts |
//!
//! An overprovisioned extra never bills, whatever its state: Azure does not bill the extras it
//! creates and deletes. When an extra is swapped in for a slower instance, the flags swap and
//! so does the billing, so a set of capacity N never bills more than N instances at once.
//!
//! # How time is attributed
//! Each tick (every `interval`, [`DEFAULT_INTERVAL`] = 15 s by default) the meter reads every set and its records and
//! runs the pure [`accrue`]:
//! ```text
//!   marks (state seen at the previous tick)          records (state now)
//!        │ billable? bill [mark.since, now)                │
//!        ▼                                                 ▼
//!   hourly buckets (hour, sku, priority) += seconds, cost   new marks {since: now, billable, ...}
//! ```
//! A state change is therefore attributed from the tick that saw it: the granularity is the
//! tick interval. A new instance starts billing at the first tick that sees it, and a deleted
//! one stops at the first tick that no longer sees it, so the two ends balance out. Intervals
//! are split at hour boundaries and at spot price changes, so a schedule's new price applies
//! from its exact instant.
//!
//! # Restarts and downtime
//! The marks are stored, so a restarted server bills the gap by the last marks it wrote: a VM
//! that kept running while the server was down kept billing, a deallocated one did not. The
//! meter of a deleted set is kept (its marks billed up to the tick that noticed and cleared),
//! so its costs stay reportable. Hourly buckets are kept for [`RETENTION_DAYS`]; lifetime totals
//! per SKU and priority are kept forever (they back the Prometheus counters).

use crate::prices::PriceBook;
use chrono::{DateTime, Duration, Utc};
use herd_model::{
    clock::Clock,
    instance::{InstanceRecord, InstanceState},
    scale_set::{Priority, StoredScaleSet},
};
use herd_state::keys::{InstanceRecordKey, SetKey};
use herd_state::{Expected, Records, State, StateError, Versioned};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

// The stored meter and its time buckets are the state layer's (cost reports read them there).
pub use herd_state::costs::{hour_of, retention_start, Bucket, Mark, MeterDoc, Total, RETENTION_DAYS};

/// The default time between ticks: the meter's granularity.
pub const DEFAULT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);

/// True for the states in which an instance holds compute (see the module table). Exhaustive
/// on purpose: a new state must decide whether it bills.
pub fn holds_compute(state: InstanceState) -> bool {
    use InstanceState as S;
    match state {
        S::Creating
        | S::Starting
        | S::Running
        | S::Stopping
        | S::Stopped
        | S::Restarting
        | S::Reimaging
        | S::Redeploying
        | S::Deallocating => true,
        S::Deallocated | S::Failed | S::Deleting => false,
    }
}

/// True if `r` bills now: it holds compute and is not an overprovisioned extra.
pub fn is_billable(r: &InstanceRecord) -> bool {
    !r.overprovisioned && holds_compute(r.state)
}

type UsageKey = (DateTime<Utc>, String, Priority);

/// The doc's usage as maps while a tick adds to it.
struct Ledger {
    hours: BTreeMap<UsageKey, (f64, f64)>,
    lifetime: BTreeMap<(String, Priority), (f64, f64)>,
}

impl Ledger {
    fn of(doc: &MeterDoc) -> Self {
        let mut hours = BTreeMap::new();
        for b in &doc.hours {
            let e = hours.entry((b.hour, b.sku.clone(), b.priority)).or_insert((0.0, 0.0));
            e.0 += b.instance_seconds;
            e.1 += b.cost;
        }
        let mut lifetime = BTreeMap::new();
        for t in &doc.lifetime {
            let e = lifetime.entry((t.sku.clone(), t.priority)).or_insert((0.0, 0.0));
            e.0 += t.instance_seconds;
            e.1 += t.cost;
        }
        Self { hours, lifetime }
    }

    /// Bills `[from, to)` of one instance, piece by piece: at every hour boundary (within the
    /// retention window) and every price change.
    fn bill(&mut self, mark: &Mark, to: DateTime<Utc>, prices: &PriceBook, cutoff: DateTime<Utc>) {
        let from = mark.since;
        if to <= from {
            return;
        }
        let changes = prices.changes_between(&mark.sku, mark.priority, from, to);
        let mut changes = changes.into_iter().peekable();
        let mut x = from;
        while x < to {
            while changes.peek().is_some_and(|c| *c <= x) {
                changes.next();
            }
            // Older than the retention window: only the lifetime total needs it, in one piece.
            let boundary = if x < cutoff { cutoff } else { hour_of(x) + Duration::hours(1) };
            let mut y = boundary.min(to);
            if let Some(c) = changes.peek() {
                y = y.min(*c);
            }
            let seconds = (y - x).num_milliseconds() as f64 / 1000.0;
            let cost = prices.hourly(&mark.sku, mark.priority, x) * seconds / 3600.0;
            let life = self.lifetime.entry((mark.sku.clone(), mark.priority)).or_insert((0.0, 0.0));
            life.0 += seconds;
            life.1 += cost;
            if x >= cutoff {
                let b = self.hours.entry((hour_of(x), mark.sku.clone(), mark.priority)).or_insert((0.0, 0.0));
                b.0 += seconds;
                b.1 += cost;
            }
            x = y;
        }
    }

    fn write_into(self, doc: &mut MeterDoc, cutoff: DateTime<Utc>) {
        doc.hours = self
            .hours
            .into_iter()
            .filter(|((hour, _, _), _)| *hour >= cutoff)
            .map(|((hour, sku, priority), (instance_seconds, cost))| Bucket {
                hour,
                sku,
                priority,
                instance_seconds,
                cost,
            })
            .collect();
        doc.lifetime = self
            .lifetime
            .into_iter()
            .map(|((sku, priority), (instance_seconds, cost))| Total { sku, priority, instance_seconds, cost })
            .collect();
    }
}

/// Bills every billable mark of `prev` up to `now` (never backwards: a clock that went back
/// bills nothing until it passes the last tick again). Returns the ledger and the effective now.
fn bill_marks(prev: &MeterDoc, prices: &PriceBook, now: DateTime<Utc>) -> (Ledger, DateTime<Utc>) {
    let now = prev.last_tick.map_or(now, |t| now.max(t));
    let cutoff = retention_start(now);
    let mut ledger = Ledger::of(prev);
    for mark in prev.marks.values().filter(|m| m.billable) {
        ledger.bill(mark, now, prices, cutoff);
    }
    (ledger, now)
}

/// One tick of the meter for one set, pure: bills the previous marks up to `now` and renews
/// the marks from `records` (see the module docs). Instances whose records disappeared are
/// billed up to now if they were billable, and their marks dropped.
pub fn accrue(
    prev: &MeterDoc,
    set: &StoredScaleSet,
    records: &[InstanceRecord],
    prices: &PriceBook,
    now: DateTime<Utc>,
) -> MeterDoc {
    let (ledger, now) = bill_marks(prev, prices, now);
    let mut doc = prev.clone();
    doc.resource_group = set.group.to_string();
    doc.scale_set = set.name.to_string();
    doc.set_deleted_at = None;
    let priority = set.model.virtual_machine_profile.priority;
    doc.marks = records
        .iter()
        .map(|r| {
            let sku = r.sku.as_deref().unwrap_or(&set.model.sku.name);
            let sku = prices.canonical(sku).unwrap_or(sku).to_string();
            (r.instance_id.0, Mark { since: now, billable: is_billable(r), priority, sku })
        })
        .collect();
    doc.last_tick = Some(now);
    ledger.write_into(&mut doc, retention_start(now));
    doc
}

/// The tick for a set that no longer exists: bills its billable marks up to `now`, clears
/// them, and keeps the usage.
pub fn close(prev: &MeterDoc, prices: &PriceBook, now: DateTime<Utc>) -> MeterDoc {
    let (ledger, now) = bill_marks(prev, prices, now);
    let mut doc = prev.clone();
    doc.marks.clear();
    doc.set_deleted_at = prev.set_deleted_at.or(Some(now));
    doc.last_tick = Some(now);
    ledger.write_into(&mut doc, retention_start(now));
    doc
}

/// Whether writing `next` over `prev` records anything: with no billable mark before or after
/// and the same marks and usage, only the `since` stamps moved, and those matter only for
/// billable marks. Skipping such writes keeps idle sets (capacity 0, all deallocated) free.
fn worth_writing(prev: Option<&MeterDoc>, next: &MeterDoc) -> bool {
    let Some(prev) = prev else { return true };
    let idle = |d: &MeterDoc| d.marks.values().all(|m| !m.billable);
    let same_marks = prev.marks.len() == next.marks.len()
        && prev.marks.iter().zip(&next.marks).all(|((a, ma), (b, mb))| {
            a == b && ma.billable == mb.billable && ma.sku == mb.sku && ma.priority == mb.priority
        });
    !(idle(prev)
        && idle(next)
        && same_marks
        && prev.hours == next.hours
        && prev.lifetime == next.lifetime
        && prev.set_deleted_at == next.set_deleted_at
        && prev.resource_group == next.resource_group
        && prev.scale_set == next.scale_set)
}

/// Runs the meter against the store.
#[derive(Clone)]
pub struct Meter {
    store: State,
    clock: Arc<dyn Clock>,
    prices: Arc<Mutex<PriceBook>>,
}

impl Meter {
    /// `prices` is shared with whoever else reads prices (spot eviction, validation); the meter's
    /// loop also reloads changed schedule files into it.
    /// `store`: an `Arc<dyn Store>` (or any store handle) converts.
    pub fn new(store: impl Into<State>, clock: Arc<dyn Clock>, prices: Arc<Mutex<PriceBook>>) -> Self {
        Self { store: store.into(), clock, prices }
    }

    /// Reloads the spot price schedule files that changed since the last call; returns the
    /// problems of those that could not be reloaded (their old prices stay).
    pub fn reload_prices(&self) -> Vec<String> {
        self.prices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reload_if_changed()
            .into_iter()
            .map(|p| p.to_string())
            .collect()
    }

    /// One tick over every set (and every meter whose set is gone). Each meter is written with
    /// a compare-and-swap on its revision; a meter someone else wrote meanwhile is left for the
    /// next tick, which re-reads it. Returns how many meters were written.
    pub fn tick(&self) -> Result<usize, StateError> {
        let now = self.clock.now();
        let sets = self.store.scale_sets()?;
        let mut records: BTreeMap<String, Vec<InstanceRecord>> = BTreeMap::new();
        for o in self.store.instances()? {
            // Records live under `group/set/<id>`.
            if let Ok(key) = o.key.parse::<InstanceRecordKey>() {
                records.entry(key.set().to_string()).or_default().push(o.value);
            }
        }
        // A meter that does not decode is left as it is, for someone to look at; its set is not
        // metered meanwhile.
        let mut meters: BTreeMap<String, Versioned<Option<MeterDoc>>> = BTreeMap::new();
        for o in self.store.meters_or_undecodable::<MeterDoc>()? {
            meters.insert(o.key.clone(), o);
        }

        let mut writes: Vec<(String, MeterDoc, Expected)> = Vec::new();
        {
            let prices = self.prices.lock().unwrap_or_else(|e| e.into_inner());
            let empty = MeterDoc::default();
            for set in &sets {
                let key = set.value.key();
                let (prev, expect) = match meters.remove(&key) {
                    Some(Versioned { value: None, .. }) => continue,
                    Some(Versioned { value: Some(d), revision, .. }) => (Some(d), Expected::Revision(revision)),
                    None => (None, Expected::Absent),
                };
                let recs = records.get(&key).map_or(&[][..], Vec::as_slice);
                let next = accrue(prev.as_ref().unwrap_or(&empty), &set.value, recs, &prices, now);
                if worth_writing(prev.as_ref(), &next) {
                    writes.push((key, next, expect));
                }
            }
            // Meters whose set is gone.
            for (key, o) in meters {
                let Some(prev) = o.value else { continue };
                if prev.marks.is_empty() && prev.set_deleted_at.is_some() {
                    continue;
                }
                writes.push((key, close(&prev, &prices, now), Expected::Revision(o.revision)));
            }
        }

        let mut written = 0;
        for (key, doc, expect) in writes {
            // A meter under a key that is not a set's was not written by herd: left alone.
            let Ok(set) = key.parse::<SetKey>() else {
                tracing::warn!(%key, "a cost meter's key is not a scale set's; skipping it");
                continue;
            };
            match self.store.put_meter(&set, &doc, expect) {
                Ok(_) => written += 1,
                Err(e) if e.is_conflict() => {
                    tracing::debug!(%key, "cost meter changed meanwhile; the next tick re-reads it");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_has_a_billing_decision() {
        use InstanceState as S;
        let billed = [
            S::Creating,
            S::Starting,
            S::Running,
            S::Stopping,
            S::Stopped,
            S::Restarting,
            S::Reimaging,
            S::Redeploying,
            S::Deallocating,
        ];
        for s in billed {
            assert!(holds_compute(s), "{s}");
        }
        for s in [S::Deallocated, S::Failed, S::Deleting] {
            assert!(!holds_compute(s), "{s}");
        }
    }

    #[test]
    fn hours_floor() {
        let t = DateTime::parse_from_rfc3339("2026-01-01T10:59:59.9Z").unwrap().with_timezone(&Utc);
        assert_eq!(hour_of(t).to_rfc3339(), "2026-01-01T10:00:00+00:00");
    }
}
