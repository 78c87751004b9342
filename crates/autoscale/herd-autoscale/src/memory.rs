//! An in-memory [`MetricQuery`]: per-instance time series with Azure's two-level aggregation.
//!
//! Why here: the simulator, the benchmarks and the tests need a metric store that behaves like
//! the live one (samples grouped into time grains, combined across instances by `statistic`,
//! then over the window by `timeAggregation`, and "no data" kept apart from zero), without a
//! database. The live store can reuse [`aggregate_series`] on the series it loads, so both
//! compute windows the same way.

use crate::evaluate::{MetricAggregation, MetricQuery};
use crate::model::{Dimension, DimensionOperator, Statistic, TimeAggregation};
use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// Whether a metric is per instance when nothing says otherwise: metric sources
/// (`source/NAME`, queue lengths) are totals; everything else (CPU, memory, network, requests
/// per instance) is per instance.
pub fn default_per_instance(metric: &str) -> bool {
    !metric.starts_with("source/")
}

#[derive(Debug, Clone, Default)]
struct Metric {
    per_instance: Option<bool>,
    /// One series per instance. A flat vector, because a round reads every series of a metric
    /// once per distinct query.
    series: Vec<Series>,
    /// Instance name → position in `series`.
    index: HashMap<String, usize>,
}

/// One instance's samples, sorted by time; times and values apart, so the binary search for
/// the window's start touches only the times.
#[derive(Debug, Clone, Default)]
struct Series {
    name: String,
    /// Unix milliseconds.
    times: Vec<i64>,
    values: Vec<f64>,
}

impl Metric {
    fn reindex(&mut self) {
        self.index = self.series.iter().enumerate().map(|(i, s)| (s.name.clone(), i)).collect();
    }
}

/// Time series in memory, keyed by metric and instance.
#[derive(Debug, Clone, Default)]
pub struct InMemoryMetrics {
    metrics: HashMap<String, Metric>,
}

/// Dimension names that filter on the instance (`VMName` is what Azure's VMSS metrics use).
const INSTANCE_DIMENSIONS: &[&str] = &["VMName", "Instance", "InstanceId", "InstanceName"];

impl InMemoryMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares whether `metric` is per instance (see [`default_per_instance`] otherwise).
    pub fn set_per_instance(&mut self, metric: &str, per_instance: bool) {
        self.metrics.entry(metric.to_string()).or_default().per_instance = Some(per_instance);
    }

    /// Records one sample of `instance`.
    pub fn record(&mut self, metric: &str, instance: &str, at: DateTime<Utc>, value: f64) {
        let m = self.metrics.entry(metric.to_string()).or_default();
        let pos = match m.index.get(instance) {
            Some(&p) => p,
            None => {
                m.series.push(Series { name: instance.to_string(), ..Default::default() });
                m.index.insert(instance.to_string(), m.series.len() - 1);
                m.series.len() - 1
            }
        };
        let s = &mut m.series[pos];
        let t = at.timestamp_millis();
        match s.times.last() {
            Some(last) if *last > t => {
                let pos = s.times.partition_point(|x| *x <= t);
                s.times.insert(pos, t);
                s.values.insert(pos, value);
            }
            _ => {
                s.times.push(t);
                s.values.push(value);
            }
        }
    }

    /// Records one sample of a total (a queue length): a series without instances.
    pub fn record_total(&mut self, metric: &str, at: DateTime<Utc>, value: f64) {
        self.record(metric, "", at, value);
    }

    /// Drops samples at or before `before` (keeps memory bounded in long runs).
    pub fn prune_before(&mut self, before: DateTime<Utc>) {
        let t = before.timestamp_millis();
        for m in self.metrics.values_mut() {
            for s in &mut m.series {
                let cut = s.times.partition_point(|x| *x <= t);
                s.times.drain(..cut);
                s.values.drain(..cut);
            }
            m.series.retain(|s| !s.times.is_empty());
            m.reindex();
        }
    }

    /// Forgets an instance (deleted): its samples no longer count.
    pub fn remove_instance(&mut self, instance: &str) {
        for m in self.metrics.values_mut() {
            if m.index.contains_key(instance) {
                m.series.retain(|s| s.name != instance);
                m.reindex();
            }
        }
    }

    /// Number of samples held (for tests and benchmarks).
    pub fn len(&self) -> usize {
        self.metrics.values().flat_map(|m| &m.series).map(|s| s.times.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl MetricQuery for InMemoryMetrics {
    fn aggregate(&self, metric: &str, dimensions: &[Dimension], how: MetricAggregation) -> Option<f64> {
        let m = self.metrics.get(metric)?;
        let mut filters = Vec::new();
        for d in dimensions {
            if !INSTANCE_DIMENSIONS.iter().any(|n| n.eq_ignore_ascii_case(&d.dimension_name)) {
                // A dimension this store does not have: no series matches it.
                return None;
            }
            filters.push(d);
        }
        let matches = |name: &str| {
            filters.iter().all(|d| {
                let hit = d.values.iter().any(|v| v == name || v == "*");
                match d.operator {
                    DimensionOperator::Equals => hit,
                    DimensionOperator::NotEquals => !hit,
                }
            })
        };
        let series = m
            .series
            .iter()
            .filter(|s| filters.is_empty() || matches(&s.name))
            .map(|s| (s.times.as_slice(), s.values.as_slice()));
        aggregate_series(series, how)
    }

    fn is_per_instance(&self, metric: &str) -> bool {
        self.metrics.get(metric).and_then(|m| m.per_instance).unwrap_or_else(|| default_per_instance(metric))
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Sum / min / max of the per-instance grain means; number of instances; raw samples.
    sum: f64,
    min: f64,
    max: f64,
    instances: u32,
    samples: u64,
}

impl Bucket {
    const EMPTY: Bucket = Bucket { sum: 0.0, min: f64::INFINITY, max: f64::NEG_INFINITY, instances: 0, samples: 0 };

    fn add(&mut self, instance_mean: f64, samples: u64) {
        self.sum += instance_mean;
        self.min = self.min.min(instance_mean);
        self.max = self.max.max(instance_mean);
        self.instances += 1;
        self.samples += samples;
    }

    fn value(&self, statistic: Statistic) -> f64 {
        match statistic {
            Statistic::Average => self.sum / f64::from(self.instances),
            Statistic::Min => self.min,
            Statistic::Max => self.max,
            Statistic::Sum => self.sum,
            Statistic::Count => self.samples as f64,
        }
    }
}

/// `sum / cnt` without a division in the usual one-sample-per-grain case.
#[inline]
fn mean(sum: f64, cnt: u64) -> f64 {
    if cnt == 1 {
        sum
    } else {
        sum / cnt as f64
    }
}

/// Azure's two-level aggregation over `(window_start, window_end]`. The window is cut into
/// grains ending at `window_end`; within a grain each instance's samples are averaged, the
/// instances are combined with `statistic` (Count = number of samples), and the grains that
/// have data are combined with `time_aggregation` (Count = number of samples, Last = the
/// latest grain). `None` when no sample falls in the window.
pub fn aggregate_series<'a>(
    series: impl Iterator<Item = (&'a [i64], &'a [f64])>,
    how: MetricAggregation,
) -> Option<f64> {
    let MetricAggregation { statistic, time_grain, window_start, window_end, time_aggregation } = how;
    let start = window_start.timestamp_millis();
    let end = window_end.timestamp_millis();
    let grain = time_grain.num_milliseconds().max(1);
    if end <= start {
        return None;
    }
    let n = ((end - start + grain - 1) / grain) as usize;
    // Grains are aligned to the end of the window: bucket n-1 is (end-grain, end], bucket b
    // ends at end - (n-1-b)·grain.
    let bucket_of = |t: i64| -> usize { n - 1 - ((end - t) / grain) as usize };
    let bucket_end = |b: usize| -> i64 { end - (n - 1 - b) as i64 * grain };
    let mut buckets = vec![Bucket::EMPTY; n];
    for (times, values) in series {
        let first = times.partition_point(|t| *t <= start);
        let Some(&t_first) = times.get(first) else { continue };
        if t_first > end {
            continue;
        }
        // Walk the sorted samples, moving the bucket boundary forward instead of dividing.
        let mut b = bucket_of(t_first);
        let mut b_end = bucket_end(b);
        let (mut sum, mut cnt) = (0.0, 0u64);
        for (&t, &v) in times[first..].iter().zip(&values[first..]) {
            if t > end {
                break;
            }
            if t > b_end {
                if cnt > 0 {
                    buckets[b].add(mean(sum, cnt), cnt);
                }
                (sum, cnt) = (0.0, 0);
                if t - b_end <= grain {
                    b += 1;
                    b_end += grain;
                } else {
                    b = bucket_of(t);
                    b_end = bucket_end(b);
                }
            }
            if v.is_finite() {
                sum += v;
                cnt += 1;
            }
        }
        if cnt > 0 {
            buckets[b].add(mean(sum, cnt), cnt);
        }
    }
    let filled = buckets.iter().filter(|b| b.instances > 0);
    match time_aggregation {
        TimeAggregation::Average => {
            let (sum, count) = filled.fold((0.0, 0u32), |(s, c), b| (s + b.value(statistic), c + 1));
            (count > 0).then(|| sum / f64::from(count))
        }
        TimeAggregation::Minimum => filled.map(|b| b.value(statistic)).reduce(f64::min),
        TimeAggregation::Maximum => filled.map(|b| b.value(statistic)).reduce(f64::max),
        TimeAggregation::Total => filled.map(|b| b.value(statistic)).reduce(|a, b| a + b),
        TimeAggregation::Count => filled.map(|b| b.samples as f64).reduce(|a, b| a + b),
        TimeAggregation::Last => buckets.iter().rev().find(|b| b.instances > 0).map(|b| b.value(statistic)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn t(min: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::minutes(min)
    }

    /// One-minute grains over `(t(start), t(end)]`.
    fn over(statistic: Statistic, (start, end): (i64, i64), time_aggregation: TimeAggregation) -> MetricAggregation {
        MetricAggregation {
            statistic,
            time_grain: Duration::minutes(1),
            window_start: t(start),
            window_end: t(end),
            time_aggregation,
        }
    }

    #[test]
    fn two_level_aggregation() {
        let mut m = InMemoryMetrics::new();
        // Two instances, one sample a minute for minutes 1..=5.
        for i in 1..=5 {
            m.record("cpu", "a", t(i), 10.0 * i as f64);
            m.record("cpu", "b", t(i), 30.0);
        }
        let q = |stat, agg| m.aggregate("cpu", &[], over(stat, (0, 5), agg));
        // Per-grain averages: 20, 25, 30, 35, 40.
        assert_eq!(q(Statistic::Average, TimeAggregation::Average), Some(30.0));
        assert_eq!(q(Statistic::Average, TimeAggregation::Maximum), Some(40.0));
        assert_eq!(q(Statistic::Average, TimeAggregation::Minimum), Some(20.0));
        assert_eq!(q(Statistic::Average, TimeAggregation::Last), Some(40.0));
        assert_eq!(q(Statistic::Max, TimeAggregation::Average), Some((30.0 + 30.0 + 30.0 + 40.0 + 50.0) / 5.0));
        assert_eq!(q(Statistic::Sum, TimeAggregation::Total), Some(150.0 + 150.0));
        assert_eq!(q(Statistic::Average, TimeAggregation::Count), Some(10.0));
        // The window is (start, end]: a sample at the start is outside.
        assert_eq!(m.aggregate("cpu", &[], over(Statistic::Average, (4, 5), TimeAggregation::Average)), Some(40.0));
        // No data is None, never zero.
        assert_eq!(m.aggregate("cpu", &[], over(Statistic::Average, (10, 15), TimeAggregation::Average)), None);
        assert_eq!(m.aggregate("mem", &[], over(Statistic::Average, (0, 5), TimeAggregation::Average)), None);
        // Instance dimension filters; unknown dimensions match nothing.
        let only_a = Dimension {
            dimension_name: "VMName".into(),
            operator: DimensionOperator::Equals,
            values: vec!["a".into()],
        };
        assert_eq!(
            m.aggregate("cpu", &[only_a], over(Statistic::Average, (0, 5), TimeAggregation::Maximum)),
            Some(50.0)
        );
        let other =
            Dimension { dimension_name: "Zone".into(), operator: DimensionOperator::Equals, values: vec!["1".into()] };
        assert_eq!(m.aggregate("cpu", &[other], over(Statistic::Average, (0, 5), TimeAggregation::Maximum)), None);
        assert!(m.is_per_instance("cpu"));
        assert!(!m.is_per_instance("source/jobs"));
        m.prune_before(t(3));
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn several_samples_in_one_grain_are_averaged_per_instance_first() {
        let mut m = InMemoryMetrics::new();
        m.record("cpu", "a", t(1) - Duration::seconds(30), 0.0);
        m.record("cpu", "a", t(1), 100.0);
        m.record("cpu", "b", t(1), 20.0);
        // a's grain mean is 50, b's 20: the instance average is 35, not (0+100+20)/3.
        assert_eq!(m.aggregate("cpu", &[], over(Statistic::Average, (0, 1), TimeAggregation::Average)), Some(35.0));
        assert_eq!(m.aggregate("cpu", &[], over(Statistic::Count, (0, 1), TimeAggregation::Average)), Some(3.0));
    }
}
