//! Bounded metric time series: points at a time grain, aggregated over a window on demand.
//!
//! A point holds the value for one sample time and how many instances it covers (for an
//! instance metric the value is the average over those instances). "No data" is no point, never
//! a zero: a window with no point aggregates to `None`.
//!
//! Counters (network bytes) are kept as increases: each point holds what the counter grew by
//! over the `seconds` before it, and [`Series::aggregate_per_grain`] turns those into totals
//! per time grain, as Azure's `Network In Total` is "bytes over the time grain".

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// One sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    pub time: DateTime<Utc>,
    pub value: f64,
    /// Instances the value covers (1 for a source such as a queue).
    pub count: u32,
    /// For a counter's increase: the seconds it was measured over (the time since the previous
    /// sample). Absent for instantaneous values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

impl Point {
    /// An instantaneous value (a gauge such as CPU or a queue's length).
    pub fn new(time: DateTime<Utc>, value: f64, count: u32) -> Self {
        Self { time, value, count, seconds: None }
    }

    /// A counter's increase over the `seconds` before `time`.
    pub fn increase(time: DateTime<Utc>, value: f64, count: u32, seconds: f64) -> Self {
        Self { time, value, count, seconds: Some(seconds) }
    }
}

/// How the points of a window combine (Azure's `timeAggregation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    Average,
    Minimum,
    Maximum,
    Total,
    Count,
    Last,
}

impl Aggregation {
    /// `avg|min|max|total|count|last` or Azure's names.
    pub fn parse(s: &str) -> Option<Aggregation> {
        Some(match s.to_ascii_lowercase().as_str() {
            "avg" | "average" => Aggregation::Average,
            "min" | "minimum" => Aggregation::Minimum,
            "max" | "maximum" => Aggregation::Maximum,
            "total" | "sum" => Aggregation::Total,
            "count" => Aggregation::Count,
            "last" => Aggregation::Last,
            _ => return None,
        })
    }
}

/// A bounded series: the newest `capacity` points, in time order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Series {
    pub points: VecDeque<Point>,
}

/// Points kept per series: two hours at a 15 s grain, a day at a 3-minute grain.
pub const MAX_POINTS: usize = 480;

impl Series {
    /// Appends a point (ignored if not newer than the last), dropping the oldest beyond the bound.
    pub fn push(&mut self, p: Point) {
        if self.points.back().is_some_and(|last| last.time >= p.time) {
            return;
        }
        self.points.push_back(p);
        while self.points.len() > MAX_POINTS {
            self.points.pop_front();
        }
    }

    /// The points with `start < time <= end`.
    pub fn window(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> impl Iterator<Item = &Point> {
        self.points.iter().filter(move |p| p.time > start && p.time <= end)
    }

    /// Aggregates the window; `None` when it holds no point.
    pub fn aggregate(&self, start: DateTime<Utc>, end: DateTime<Utc>, how: Aggregation) -> Option<f64> {
        let vals: Vec<f64> = self.window(start, end).map(|p| p.value).collect();
        if vals.is_empty() {
            return None;
        }
        Some(match how {
            Aggregation::Average => vals.iter().sum::<f64>() / vals.len() as f64,
            Aggregation::Minimum => vals.iter().copied().fold(f64::INFINITY, f64::min),
            Aggregation::Maximum => vals.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Aggregation::Total => vals.iter().sum(),
            Aggregation::Count => vals.len() as f64,
            Aggregation::Last => *vals.last().unwrap_or(&0.0),
        })
    }

    /// Aggregates a counter's increases as totals per `grain` (Azure's "Network In Total": the
    /// bytes over each time grain). The window is cut into grains ending at `end`; a grain's
    /// total is the increase of its points scaled to the whole grain (their sum when samples
    /// tile it, the rate times the grain when they are sparser or coarser than it); grains
    /// without a point are no data, not zero. Then `how` combines the grains (`Total` sums
    /// them, `Count` counts the points). `None` when the window holds no point.
    pub fn aggregate_per_grain(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        grain: chrono::Duration,
        how: Aggregation,
    ) -> Option<f64> {
        let grain_ms = grain.num_milliseconds().max(1);
        let grain_secs = grain_ms as f64 / 1000.0;
        // Grain index (0 = the newest, ending at `end`) → (increase, seconds covered).
        let mut grains: std::collections::BTreeMap<i64, (f64, f64)> = std::collections::BTreeMap::new();
        let mut points = 0usize;
        for p in self.window(start, end) {
            let idx = (end - p.time).num_milliseconds().max(0) / grain_ms;
            let secs = p.seconds.filter(|s| s.is_finite() && *s > 0.0).unwrap_or(grain_secs);
            let g = grains.entry(idx).or_insert((0.0, 0.0));
            g.0 += p.value;
            g.1 += secs;
            points += 1;
        }
        if points == 0 {
            return None;
        }
        // Newest grain first.
        let totals: Vec<f64> = grains.values().map(|(inc, secs)| inc * grain_secs / secs).collect();
        Some(match how {
            Aggregation::Average => totals.iter().sum::<f64>() / totals.len() as f64,
            Aggregation::Minimum => totals.iter().copied().fold(f64::INFINITY, f64::min),
            Aggregation::Maximum => totals.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Aggregation::Total => totals.iter().sum(),
            Aggregation::Count => points as f64,
            Aggregation::Last => totals[0],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn windows_aggregate_and_no_data_is_none() {
        let mut s = Series::default();
        for (i, v) in [10.0, 30.0, 20.0, 80.0].iter().enumerate() {
            s.push(Point::new(t(i as i64 * 60), *v, 2));
        }
        s.push(Point::new(t(60), 999.0, 1)); // not newer: ignored
        assert_eq!(s.aggregate(t(0), t(180), Aggregation::Average), Some(130.0 / 3.0));
        assert_eq!(s.aggregate(t(-1), t(180), Aggregation::Maximum), Some(80.0));
        assert_eq!(s.aggregate(t(-1), t(180), Aggregation::Minimum), Some(10.0));
        assert_eq!(s.aggregate(t(-1), t(180), Aggregation::Total), Some(140.0));
        assert_eq!(s.aggregate(t(-1), t(180), Aggregation::Count), Some(4.0));
        assert_eq!(s.aggregate(t(-1), t(180), Aggregation::Last), Some(80.0));
        assert_eq!(s.aggregate(t(200), t(400), Aggregation::Average), None, "no data is not zero");
        for i in 0..1000 {
            s.push(Point::new(t(1000 + i), 1.0, 1));
        }
        assert_eq!(s.points.len(), MAX_POINTS);
        assert_eq!(Aggregation::parse("avg"), Some(Aggregation::Average));
        assert_eq!(Aggregation::parse("median"), None);
    }

    #[test]
    fn counter_increases_become_totals_per_grain() {
        // 1000 bytes every 15 s: 4000 per 1-minute grain.
        let mut s = Series::default();
        for i in 1..=20 {
            s.push(Point::increase(t(i * 15), 1000.0, 2, 15.0));
        }
        let minute = chrono::Duration::minutes(1);
        assert_eq!(s.aggregate_per_grain(t(0), t(300), minute, Aggregation::Average), Some(4000.0));
        assert_eq!(s.aggregate_per_grain(t(0), t(300), minute, Aggregation::Total), Some(20_000.0));
        assert_eq!(s.aggregate_per_grain(t(0), t(300), minute, Aggregation::Maximum), Some(4000.0));
        assert_eq!(s.aggregate_per_grain(t(0), t(300), minute, Aggregation::Count), Some(20.0));
        // A grain finer than the sampling: the rate times the grain, never a whole sample's bytes.
        let second = chrono::Duration::seconds(1);
        assert_eq!(s.aggregate_per_grain(t(0), t(300), second, Aggregation::Average), Some(1000.0 / 15.0));
        // A missed sample inside a grain is made up from the rate of the others.
        let mut gap = Series::default();
        for i in [1, 2, 4] {
            gap.push(Point::increase(t(i * 15), 1000.0, 1, 15.0));
        }
        assert_eq!(gap.aggregate_per_grain(t(0), t(60), minute, Aggregation::Average), Some(4000.0));
        assert_eq!(s.aggregate_per_grain(t(400), t(700), minute, Aggregation::Average), None, "no data is not zero");
    }
}
