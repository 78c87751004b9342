//! Samples instance and load-balancer metrics into per-set series.
//!
//! Every sample interval, for each scale set, the sampler asks the driver for each running
//! instance's stats and the load balancer for its members' counters, and appends one point per
//! metric to the set's series (see [`METRICS`] for what each one means):
//!
//! - `Percentage CPU`: the driver's own figure when it has one, otherwise the CPU time
//!   consumed between two samples of the same boot divided by the wall time and the vCPUs.
//! - `Memory Used Bytes`: resident memory.
//! - `Network In Total` / `Network Out Total`: Azure's names and meaning, the bytes received
//!   (sent) per instance over the time grain. The point holds each instance's counter increase
//!   since the previous sample (averaged over the instances, with the seconds it covers); a
//!   rule's window turns those into totals per grain ([`crate::series::Series::aggregate_per_grain`]).
//! - `LB New Connections Per Second`: connections the load balancer made to each instance in
//!   rotation, per second since the previous sample, averaged over those instances.
//! - `LB Active Connections`: connections open through the load balancer to the set's members
//!   now, summed over the set (a total, never projected by the flapping guard).
//!
//! Per-instance points are averages with the number of instances they cover. No data is never
//! zero: an instance seen for the first time gives no CPU, network or connection rate yet, a
//! driver that cannot see an instance's traffic gives no network value, and a set outside every
//! load balancer (or a server without one) gets no load-balancer point. Counters that go down
//! restarted (a guest reboot, a backend re-added): their new value is the increase.
//!
//! Load-balancer counters come through [`LbStatsProvider`], a small trait the server implements
//! over its load-balancer controller, so this crate neither calls a driver for them nor depends
//! on the load balancer.

use crate::series::{Point, Series};
use chrono::{DateTime, Utc};
use herd_driver::Driver;
use herd_model::{
    instance::{InstanceGoal, InstanceState},
    scale_set::StoredScaleSet,
    sku::SkuTable,
    InstanceKey,
};
use herd_state::keys::{SeriesKey, SetKey, SourceSeriesKey};
use herd_state::{AutoscaleRecords, Records, State, StateError, Store};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

// The metric names are the state layer's (the API validates settings against them).
pub use herd_state::autoscale_records::{CPU, LB_ACTIVE_CONNECTIONS, LB_NEW_CONNECTIONS, MEMORY, NET_IN, NET_OUT};

/// How a metric's points are combined over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// A value at each sample (CPU, memory, a rate): windows aggregate the points.
    Gauge,
    /// A counter's increase per sample: windows aggregate totals per time grain.
    PerGrainTotal,
    /// A value for the whole set (not per instance): the statistic does not scale it.
    SetTotal,
}

/// One metric herd samples: what `monitor metrics list-definitions` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDefinition {
    pub name: &'static str,
    pub unit: &'static str,
    pub kind: MetricKind,
    /// Measured per instance, so a different instance count changes it (the flapping guard
    /// projects it; target tracking multiplies it by the ready instances).
    pub per_instance: bool,
    pub description: &'static str,
}

/// Every metric the sampler records for a scale set.
pub const METRICS: &[MetricDefinition] = &[
    MetricDefinition {
        name: CPU,
        unit: "Percent",
        kind: MetricKind::Gauge,
        per_instance: true,
        description: "CPU use per instance, of all its vCPUs (average over the instances).",
    },
    MetricDefinition {
        name: MEMORY,
        unit: "Bytes",
        kind: MetricKind::Gauge,
        per_instance: true,
        description: "Resident memory per instance (average over the instances).",
    },
    MetricDefinition {
        name: NET_IN,
        unit: "Bytes",
        kind: MetricKind::PerGrainTotal,
        per_instance: true,
        description: "Bytes received per instance over the time grain, loopback excluded (qemu: from the guest \
                      agent; process: bridged instances only).",
    },
    MetricDefinition {
        name: NET_OUT,
        unit: "Bytes",
        kind: MetricKind::PerGrainTotal,
        per_instance: true,
        description: "Bytes sent per instance over the time grain, as Network In Total.",
    },
    MetricDefinition {
        name: LB_NEW_CONNECTIONS,
        unit: "CountPerSecond",
        kind: MetricKind::Gauge,
        per_instance: true,
        description: "New load-balancer connections per second to each instance in rotation (average over them).",
    },
    MetricDefinition {
        name: LB_ACTIVE_CONNECTIONS,
        unit: "Count",
        kind: MetricKind::SetTotal,
        per_instance: false,
        description: "Load-balancer connections open now to the set's members, summed over the set.",
    },
];

pub use herd_state::autoscale_records::METRIC_NAMES;

/// The definition of a metric herd samples (names compare without case).
pub fn definition(metric: &str) -> Option<&'static MetricDefinition> {
    METRICS.iter().find(|d| d.name.eq_ignore_ascii_case(metric))
}

/// Whether `metric` is per instance: sources (`source/NAME`, queue lengths) and set totals are
/// not; everything else is.
pub fn is_per_instance(metric: &str) -> bool {
    if metric.starts_with("source/") {
        return false;
    }
    definition(metric).is_none_or(|d| d.per_instance)
}

/// The store key of a set's series for `metric`.
pub fn series_key(set: &StoredScaleSet, metric: &str) -> String {
    herd_state::keys::SeriesKey::new(herd_state::keys::SetKey::of(set), metric).to_string()
}

/// One instance's load-balancer counters, summed over the rules it is a backend of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LbCounters {
    /// Connections made to it (a counter; it may restart from zero).
    pub connections_total: u64,
    /// Connections open to it now.
    pub active_connections: u64,
    /// Receiving new connections in at least one rule (not only draining).
    pub in_rotation: bool,
}

/// Where load-balancer counters come from (the server's load-balancer controller). Never a
/// driver.
pub trait LbStatsProvider: Send + Sync {
    /// The counters of every instance that is a load-balancer backend now.
    fn member_counters(&self) -> BTreeMap<InstanceKey, LbCounters>;
}

/// The increase of a counter from `prev` to `cur`; one that went down restarted from zero.
fn counter_increase(prev: u64, cur: u64) -> u64 {
    if cur >= prev {
        cur - prev
    } else {
        cur
    }
}

fn seconds(d: chrono::Duration) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

/// The previous driver sample of an instance.
#[derive(Debug, Clone, Copy)]
struct LastSample {
    /// The boot it belongs to (the record's `state_since`).
    boot: DateTime<Utc>,
    at: DateTime<Utc>,
    cpu_seconds: f64,
    /// Received and sent bytes.
    net: Option<(u64, u64)>,
}

/// Per-instance values of one set in one round.
#[derive(Default)]
struct Round {
    cpu: Vec<f64>,
    mem: Vec<f64>,
    /// (received increase, sent increase, seconds).
    net: Vec<(f64, f64, f64)>,
    lb_rate: Vec<f64>,
}

fn mean(v: impl Iterator<Item = f64>) -> Option<(f64, u32)> {
    let (sum, n) = v.fold((0.0, 0u32), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| (sum / f64::from(n), n))
}

/// Remembers the previous sample of each instance, to turn counters into increases and rates.
#[derive(Default)]
pub struct Sampler {
    last: Mutex<BTreeMap<InstanceKey, LastSample>>,
    /// Previous load-balancer sample: when, and the connections counter.
    lb_last: Mutex<BTreeMap<InstanceKey, (DateTime<Utc>, u64)>>,
    lb: Option<Arc<dyn LbStatsProvider>>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler").field("lb", &self.lb.is_some()).finish_non_exhaustive()
    }
}

impl Sampler {
    /// A sampler that also records the load-balancer metrics from `lb`.
    pub fn with_lb_stats(lb: Arc<dyn LbStatsProvider>) -> Self {
        Self { lb: Some(lb), ..Self::default() }
    }

    /// Samples every set once at `now` and appends to their series. Returns how many sets got a
    /// CPU point. The store is read and written on the blocking pool ([`State::run`]); the
    /// driver is asked here.
    pub async fn sample(
        &self,
        state: &State,
        driver: &dyn Driver,
        skus: &SkuTable,
        now: DateTime<Utc>,
    ) -> Result<usize, StateError> {
        let sets = state
            .run(|s| {
                let sets = s.scale_sets()?.into_iter().map(|o| o.value).filter(|set| !set.deleting);
                sets.map(|set| Ok((s.instances_of(&SetKey::of(&set))?, set))).collect::<Result<Vec<_>, StateError>>()
            })
            .await?;
        let lb = self.lb.as_ref().map(|p| p.member_counters());
        let mut points_by_series: Vec<(SeriesKey, Point)> = Vec::new();
        let mut sampled = 0;
        let mut seen = BTreeSet::new();
        for (records, set) in &sets {
            let vcpus = skus.lookup(&set.model.sku.name).map_or(1, |(_, s)| s.vcpus.max(1)) as f64;
            let mut round = Round::default();
            for r in records.iter().map(|o| &o.value) {
                if r.state != InstanceState::Running || r.goal == InstanceGoal::Deleted || r.overprovisioned {
                    continue;
                }
                let key = InstanceKey { group: set.group.clone(), set: set.name.clone(), id: r.instance_id };
                seen.insert(key.clone());
                // Load balancer first: its counters need no driver.
                if let Some(c) = lb.as_ref().and_then(|m| m.get(&key)) {
                    let prev = self
                        .lb_last
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key.clone(), (now, c.connections_total));
                    if let Some((t, n)) = prev.filter(|(t, _)| c.in_rotation && now > *t) {
                        round.lb_rate.push(counter_increase(n, c.connections_total) as f64 / seconds(now - t));
                    }
                }
                let Ok(Some(st)) = driver.stats(&key).await else { continue };
                round.mem.push(st.memory_bytes as f64);
                let net = st.net_rx_bytes.zip(st.net_tx_bytes);
                let prev = self
                    .last
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, LastSample { boot: r.state_since, at: now, cpu_seconds: st.cpu_seconds, net });
                let prev = prev.filter(|p| p.boot == r.state_since && now > p.at);
                let pct = match (st.cpu_percent, prev) {
                    (Some(p), _) => Some(p),
                    (None, Some(p)) if st.cpu_seconds >= p.cpu_seconds => {
                        let wall = seconds(now - p.at);
                        Some(((st.cpu_seconds - p.cpu_seconds) / wall / vcpus * 100.0).clamp(0.0, 100.0))
                    }
                    _ => None,
                };
                round.cpu.extend(pct);
                if let (Some((rx, tx)), Some(p)) = (net, prev) {
                    if let Some((prx, ptx)) = p.net {
                        round.net.push((
                            counter_increase(prx, rx) as f64,
                            counter_increase(ptx, tx) as f64,
                            seconds(now - p.at),
                        ));
                    }
                }
            }
            let mut points: Vec<(&str, Point)> = Vec::new();
            for (metric, vals) in [(CPU, &round.cpu), (MEMORY, &round.mem), (LB_NEW_CONNECTIONS, &round.lb_rate)] {
                if let Some((v, n)) = mean(vals.iter().copied()) {
                    points.push((metric, Point::new(now, v, n)));
                }
            }
            if let (Some((rx, n)), Some((tx, _)), Some((secs, _))) = (
                mean(round.net.iter().map(|x| x.0)),
                mean(round.net.iter().map(|x| x.1)),
                mean(round.net.iter().map(|x| x.2)),
            ) {
                points.push((NET_IN, Point::increase(now, rx, n, secs)));
                points.push((NET_OUT, Point::increase(now, tx, n, secs)));
            }
            // Every member of the set counts here, draining ones too: their connections are open.
            if let Some(m) = &lb {
                let members: Vec<&LbCounters> =
                    m.iter().filter(|(k, _)| k.group == set.group && k.set == set.name).map(|(_, c)| c).collect();
                if !members.is_empty() {
                    let active: u64 = members.iter().map(|c| c.active_connections).sum();
                    points.push((LB_ACTIVE_CONNECTIONS, Point::new(now, active as f64, members.len() as u32)));
                }
            }
            points_by_series.extend(points.into_iter().map(|(metric, p)| (SeriesKey::new(SetKey::of(set), metric), p)));
            if !round.cpu.is_empty() {
                sampled += 1;
            }
        }
        // Forget instances that are gone.
        self.last.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| seen.contains(k));
        self.lb_last.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| seen.contains(k));
        if !points_by_series.is_empty() {
            state.run(move |s| append_points(s, points_by_series)).await?;
        }
        Ok(sampled)
    }
}

/// Appends each point to its series (read, pushed, written whole: the sampler is their one writer).
fn append_points(store: &dyn Store, points: Vec<(SeriesKey, Point)>) -> Result<u64, StateError> {
    let mut out = Vec::with_capacity(points.len());
    for (key, point) in points {
        let mut series = store.series::<Series, _>(&key)?.map(|o| o.value).unwrap_or_default();
        series.push(point);
        out.push((key, series));
    }
    store.put_series(&out)
}

/// Appends one sample of a named source to its series (`source/<group>/<name>`).
pub fn record_source<S: Records + ?Sized>(
    store: &S,
    group: &str,
    name: &str,
    now: DateTime<Utc>,
    value: f64,
) -> Result<(), StateError> {
    let key = SourceSeriesKey::new(group, name);
    let mut series = store.series::<Series, _>(&key)?.map(|o| o.value).unwrap_or_default();
    series.push(Point::new(now, value, 1));
    store.put_series(&[(key, series)])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::StoreMetrics;
    use herd_autoscale::{
        model::{Statistic, TimeAggregation},
        MetricQuery,
    };
    use herd_driver::sim::{SimConfig, SimDriver};
    use herd_model::instance::InstanceRecord;
    use herd_model::InstanceId;
    use herd_state::{intents::Writes, Expected};
    use serde_json::json;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    /// A store holding scale set `rg/web` with Running instances `ids`, each also running in
    /// the sim driver.
    async fn fixture(ids: &[u64]) -> (State, SimDriver, StoredScaleSet) {
        let store = State::in_memory().unwrap();
        let sim = SimDriver::new(SimConfig {
            boot_min: std::time::Duration::ZERO,
            boot_max: std::time::Duration::ZERO,
            ..Default::default()
        });
        let set: StoredScaleSet = serde_json::from_value(json!({
            "name": "web", "group": "rg", "modelGeneration": 1, "timeCreated": t(0),
            "model": {
                "sku": {"name": "Standard_B1ms", "capacity": ids.len()},
                "virtualMachineProfile": {"osProfile": {"computerNamePrefix": "w"},
                    "storageProfile": {"imageReference": {"publisher": "P", "offer": "O", "sku": "S", "version": "1"}}}
            }
        }))
        .unwrap();
        let mut ops = Writes::new();
        ops.put_scale_set(&SetKey::of(&set), &set, Expected::Absent).unwrap();
        for &id in ids {
            sim.plant_orphan(key(id)); // a running sim instance; the sampler needs no spec
            let rec: InstanceRecord = serde_json::from_value(json!({
                "instanceId": id, "computerName": format!("w{id}"), "modelGeneration": 1, "state": "Running",
                "goal": "Running", "reachAddress": "", "createdAt": t(0), "stateSince": t(0)
            }))
            .unwrap();
            ops.put_instance(&SetKey::of(&set).instance(InstanceId(id)), &rec, Expected::Absent).unwrap();
        }
        ops.commit(&*store).unwrap();
        sim.list().await.unwrap(); // the sim boots instances when it is observed
        (store, sim, set)
    }

    fn key(id: u64) -> InstanceKey {
        InstanceKey::parse_path(&format!("rg/web/{id}")).unwrap()
    }

    fn series(store: &State, set: &StoredScaleSet, metric: &str) -> Series {
        store
            .series::<Series, _>(&SeriesKey::new(SetKey::of(set), metric))
            .unwrap()
            .map(|o| o.value)
            .unwrap_or_default()
    }

    /// The live autoscaler's view: `metric` over `(start, end]`, sampled every 15 s.
    fn query(
        store: &State,
        set: &StoredScaleSet,
        metric: &str,
        statistic: Statistic,
        grain: i64,
        (start, end): (i64, i64),
        agg: TimeAggregation,
    ) -> Option<f64> {
        let slack = crate::runner::coverage_slack(std::time::Duration::from_secs(15));
        let m = StoreMetrics { store: &**store, set, slack };
        let how = herd_autoscale::MetricAggregation {
            statistic,
            time_grain: chrono::Duration::seconds(grain),
            window_start: t(start),
            window_end: t(end),
            time_aggregation: agg,
        };
        m.aggregate(metric, &[], how)
    }

    /// A round reads and writes the store on the blocking pool: on a current-thread runtime
    /// (this thread is its one async worker) no store call lands here.
    #[tokio::test(flavor = "current_thread")]
    async fn a_round_calls_the_store_off_the_async_worker() {
        let (fixture_store, sim, set) = fixture(&[0, 1]).await;
        let counted = Arc::new(herd_state::call_threads::CallThreads::in_memory().unwrap());
        let mut ops = Writes::new();
        ops.put_scale_set(&SetKey::of(&set), &set, Expected::Absent).unwrap();
        for o in fixture_store.instances().unwrap() {
            ops.put_instance(&o.key.parse().unwrap(), &o.value, Expected::Absent).unwrap();
        }
        ops.commit(&*counted).unwrap();
        let store = State::from(counted.clone());
        let me = std::thread::current().id();
        let (here, before) = (counted.calls_on(me), counted.calls());
        let sampler = Sampler::default();
        sampler.sample(&store, &sim, &SkuTable::default(), t(60)).await.unwrap();
        assert_eq!(sampler.sample(&store, &sim, &SkuTable::default(), t(120)).await.unwrap(), 1);
        assert!(counted.calls() - before >= 4, "two rounds read sets and instances and wrote series");
        assert_eq!(counted.calls_on(me), here, "a round called the store on the async worker");
    }

    #[tokio::test]
    async fn the_set_average_cpu_lands_in_its_series_and_survives_in_the_store() {
        let (store, sim, set) = fixture(&[0, 1]).await;
        sim.set_cpu_percent(&key(0), 20.0);
        sim.set_cpu_percent(&key(1), 60.0);
        let sampler = Sampler::default();
        assert_eq!(sampler.sample(&store, &sim, &SkuTable::default(), t(60)).await.unwrap(), 1);
        assert_eq!(sampler.sample(&store, &sim, &SkuTable::default(), t(120)).await.unwrap(), 1);
        let cpu = series(&store, &set, CPU);
        assert_eq!(cpu.points.len(), 2);
        assert_eq!(cpu.points[0].value, 40.0, "the average over the set's instances");
        assert_eq!(cpu.points[0].count, 2);
        let avg = cpu.aggregate(t(0), t(120), crate::series::Aggregation::Average);
        assert_eq!(avg, Some(40.0));
        // The sim reports no network counters until a test sets them: no data, not zero; and
        // without a load balancer there are no load-balancer points.
        for m in [NET_IN, NET_OUT, LB_NEW_CONNECTIONS, LB_ACTIVE_CONNECTIONS] {
            assert!(series(&store, &set, m).points.is_empty(), "{m} has no data");
            let v = query(&store, &set, m, Statistic::Average, 60, (0, 120), TimeAggregation::Average);
            assert_eq!(v, None, "{m}: no data is not zero");
        }
    }

    #[tokio::test]
    async fn network_counters_become_bytes_per_instance_per_time_grain() {
        let (store, sim, set) = fixture(&[0, 1, 2]).await;
        sim.set_net_bytes(&key(0), 1_000_000, 50_000);
        sim.set_net_bytes(&key(1), 0, 0);
        // Instance 2 reports no network data (like a VM without a guest agent).
        let sampler = Sampler::default();
        let skus = SkuTable::default();
        sampler.sample(&store, &sim, &skus, t(0)).await.unwrap();
        assert!(series(&store, &set, NET_IN).points.is_empty(), "a first sample has no increase yet");
        // Every 15 s: instance 0 receives 3000 and sends 1500 bytes, instance 1 receives 1000.
        for i in 1..=8 {
            sim.add_net_bytes(&key(0), 3000, 1500);
            sim.add_net_bytes(&key(1), 1000, 0);
            sampler.sample(&store, &sim, &skus, t(i * 15)).await.unwrap();
        }
        let net_in = series(&store, &set, NET_IN);
        assert_eq!(net_in.points.len(), 8);
        let p = net_in.points[0];
        assert_eq!((p.value, p.count, p.seconds), (2000.0, 2, Some(15.0)), "the instances' mean increase");
        assert_eq!(series(&store, &set, NET_OUT).points[0].value, 750.0);
        // Azure's "Network In Total": bytes per instance over the grain (1 min = 4 samples).
        let per_instance_minute =
            query(&store, &set, NET_IN, Statistic::Average, 60, (0, 120), TimeAggregation::Average);
        assert_eq!(per_instance_minute, Some(8000.0));
        let set_minute = query(&store, &set, NET_IN, Statistic::Sum, 60, (0, 120), TimeAggregation::Average);
        assert_eq!(set_minute, Some(16_000.0), "statistic Sum: over the instances");
        let window_total = query(&store, &set, NET_IN, Statistic::Average, 60, (0, 120), TimeAggregation::Total);
        assert_eq!(window_total, Some(16_000.0), "total over the window: two grains");
        let out = query(&store, &set, NET_OUT, Statistic::Average, 60, (0, 120), TimeAggregation::Maximum);
        assert_eq!(out, Some(3000.0));
        assert!(is_per_instance(NET_IN) && is_per_instance("network out total"));
        // A counter that went down restarted (a guest reboot): its value is the increase.
        sim.set_net_bytes(&key(0), 500, 0);
        sim.set_net_bytes(&key(1), 8_000 + 500, 0);
        sampler.sample(&store, &sim, &skus, t(135)).await.unwrap();
        let last = *series(&store, &set, NET_IN).points.back().unwrap();
        assert_eq!(last.value, 500.0, "instance 0 restarted at 0 and got 500; instance 1 got 500");
    }

    /// Load-balancer counters a test sets.
    #[derive(Default)]
    struct FakeLb(Mutex<BTreeMap<InstanceKey, LbCounters>>);

    impl FakeLb {
        fn set(&self, id: u64, total: u64, active: u64, in_rotation: bool) {
            let c = LbCounters { connections_total: total, active_connections: active, in_rotation };
            self.0.lock().unwrap().insert(key(id), c);
        }
    }

    impl LbStatsProvider for Arc<FakeLb> {
        fn member_counters(&self) -> BTreeMap<InstanceKey, LbCounters> {
            self.0.lock().unwrap().clone()
        }
    }

    #[tokio::test]
    async fn load_balancer_counters_give_connection_rates_and_active_connections() {
        let (store, sim, set) = fixture(&[0, 1, 2, 3]).await;
        let lb = Arc::new(FakeLb::default());
        let sampler = Sampler::with_lb_stats(Arc::new(lb.clone()));
        let skus = SkuTable::default();
        // 0 and 1 in rotation, 2 draining, 3 outside every pool.
        lb.set(0, 100, 5, true);
        lb.set(1, 40, 1, true);
        lb.set(2, 70, 3, false);
        sampler.sample(&store, &sim, &skus, t(0)).await.unwrap();
        assert!(series(&store, &set, LB_NEW_CONNECTIONS).points.is_empty(), "no rate from one sample");
        let active = series(&store, &set, LB_ACTIVE_CONNECTIONS);
        assert_eq!((active.points[0].value, active.points[0].count), (9.0, 3), "summed over the members");
        lb.set(0, 100 + 300, 7, true); // 30/s
        lb.set(1, 40 + 100, 2, true); // 10/s
        lb.set(2, 70, 1, false);
        sampler.sample(&store, &sim, &skus, t(10)).await.unwrap();
        let rate = series(&store, &set, LB_NEW_CONNECTIONS);
        assert_eq!((rate.points[0].value, rate.points[0].count), (20.0, 2), "per instance in rotation");
        let v = query(&store, &set, LB_NEW_CONNECTIONS, Statistic::Average, 10, (0, 10), TimeAggregation::Average);
        assert_eq!(v, Some(20.0));
        let v = query(&store, &set, LB_NEW_CONNECTIONS, Statistic::Sum, 10, (0, 10), TimeAggregation::Average);
        assert_eq!(v, Some(40.0), "Sum: the set's connections per second");
        // A set total is one value for the set: the statistic does not scale it.
        for stat in [Statistic::Average, Statistic::Sum, Statistic::Max] {
            let v = query(&store, &set, LB_ACTIVE_CONNECTIONS, stat, 10, (0, 10), TimeAggregation::Average);
            assert_eq!(v, Some(10.0), "{stat:?}");
        }
        assert!(is_per_instance(LB_NEW_CONNECTIONS));
        assert!(!is_per_instance(LB_ACTIVE_CONNECTIONS), "a total is never projected");
        // A backend re-added to the pool starts its counter again.
        lb.set(0, 50, 7, true);
        lb.set(1, 140, 2, true);
        sampler.sample(&store, &sim, &skus, t(20)).await.unwrap();
        assert_eq!(series(&store, &set, LB_NEW_CONNECTIONS).points[1].value, 2.5, "(50 + 0) / 10 s / 2");
        // Out of every pool: no load-balancer points at all.
        lb.0.lock().unwrap().clear();
        sampler.sample(&store, &sim, &skus, t(30)).await.unwrap();
        assert_eq!(series(&store, &set, LB_ACTIVE_CONNECTIONS).points.len(), 3);
        assert_eq!(series(&store, &set, LB_NEW_CONNECTIONS).points.len(), 2);
    }

    #[test]
    fn every_metric_has_a_definition() {
        assert_eq!(METRIC_NAMES.len(), METRICS.len());
        for (n, d) in METRIC_NAMES.iter().zip(METRICS) {
            assert_eq!(*n, d.name);
            assert_eq!(definition(&n.to_ascii_uppercase()), Some(d));
        }
        assert_eq!(definition("Disk Queue"), None);
        assert!(!is_per_instance("source/jobs"));
        assert_eq!(counter_increase(10, 15), 5);
        assert_eq!(counter_increase(10, 3), 3);
    }
}
