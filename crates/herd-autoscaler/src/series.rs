//! Bounded metric time series: points at a time grain, aggregated over a window on demand.
//!
//! A point holds the value for one sample time and how many instances it covers (for an
//! instance metric the value is the average over those instances). "No data" is no point, never
//! a zero: a window with no point aggregates to `None`.

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
            s.push(Point { time: t(i as i64 * 60), value: *v, count: 2 });
        }
        s.push(Point { time: t(60), value: 999.0, count: 1 }); // not newer: ignored
        assert_eq!(s.aggregate(t(0), t(180), Aggregation::Average), Some(130.0 / 3.0));
        assert_eq!(s.aggregate(t(-1), t(180), Aggregation::Maximum), Some(80.0));
        assert_eq!(s.aggregate(t(-1), t(180), Aggregation::Minimum), Some(10.0));
        assert_eq!(s.aggregate(t(-1), t(180), Aggregation::Total), Some(140.0));
        assert_eq!(s.aggregate(t(-1), t(180), Aggregation::Count), Some(4.0));
        assert_eq!(s.aggregate(t(-1), t(180), Aggregation::Last), Some(80.0));
        assert_eq!(s.aggregate(t(200), t(400), Aggregation::Average), None, "no data is not zero");
        for i in 0..1000 {
            s.push(Point { time: t(1000 + i), value: 1.0, count: 1 });
        }
        assert_eq!(s.points.len(), MAX_POINTS);
        assert_eq!(Aggregation::parse("avg"), Some(Aggregation::Average));
        assert_eq!(Aggregation::parse("median"), None);
    }
}
