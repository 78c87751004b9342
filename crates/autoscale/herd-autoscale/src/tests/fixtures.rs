//! Builders shared by the tests.

use crate::evaluate::{evaluate, Decision, EvalInput, LastScale, MetricAggregation, MetricQuery};
use crate::model::*;
use chrono::{DateTime, TimeZone, Utc};
use std::collections::{BTreeMap, HashMap};

/// A metric store that answers every window with a fixed value per metric (`None` = no data).
#[derive(Debug, Default, Clone)]
pub struct Fixed {
    pub values: HashMap<String, f64>,
    pub totals: Vec<String>,
}

impl Fixed {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn with(mut self, metric: &str, v: f64) -> Self {
        self.values.insert(metric.into(), v);
        self
    }
    pub fn total(mut self, metric: &str, v: f64) -> Self {
        self.values.insert(metric.into(), v);
        self.totals.push(metric.into());
        self
    }
}

impl MetricQuery for Fixed {
    fn aggregate(&self, metric: &str, _dimensions: &[Dimension], _how: MetricAggregation) -> Option<f64> {
        self.values.get(metric).copied()
    }
    fn is_per_instance(&self, metric: &str) -> bool {
        !self.totals.iter().any(|t| t == metric) && !metric.starts_with("source/")
    }
}

pub const CPU: &str = "Percentage CPU";
pub const JOBS: &str = "source/jobs";

/// Target tracking of `metric` at `target`: warm-up 2 min, cooldowns 5 min in and 3 min out,
/// a 5-minute window.
pub fn tracking(metric: &str, target: f64) -> TargetTracking {
    TargetTracking {
        metric_name: metric.into(),
        target,
        warmup: "PT2M".into(),
        scale_in_cooldown: "PT5M".into(),
        scale_out_cooldown: "PT3M".into(),
        time_window: "PT5M".into(),
        disable_scale_in: false,
    }
}

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 12, 0, 0).unwrap()
}

pub fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

pub fn rule(
    metric: &str,
    op: ComparisonOperator,
    threshold: f64,
    direction: ScaleDirection,
    kind: ScaleType,
    value: u64,
) -> Rule {
    Rule::avg_5m(metric, op, threshold, direction, kind, value)
}

pub fn out(metric: &str, threshold: f64, by: u64) -> Rule {
    rule(metric, ComparisonOperator::GreaterThan, threshold, ScaleDirection::Increase, ScaleType::ChangeCount, by)
}

pub fn inn(metric: &str, threshold: f64, by: u64) -> Rule {
    rule(metric, ComparisonOperator::LessThan, threshold, ScaleDirection::Decrease, ScaleType::ChangeCount, by)
}

pub fn cooldown(mut r: Rule, iso: &str) -> Rule {
    r.scale_action.cooldown = iso.into();
    r
}

pub fn profile(name: &str, min: i64, max: i64, default: i64, rules: Vec<Rule>) -> Profile {
    Profile {
        name: name.into(),
        capacity: Capacity { minimum: min, maximum: max, default },
        rules,
        recurrence: None,
        fixed_date: None,
    }
}

pub fn setting(profiles: Vec<Profile>) -> AutoscaleSetting {
    AutoscaleSetting {
        name: "web-autoscale".into(),
        enabled: true,
        target_resource_uri: "/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/web".into(),
        profiles,
        notifications: vec![],
        target_tracking: None,
    }
}

pub fn one(min: i64, max: i64, default: i64, rules: Vec<Rule>) -> AutoscaleSetting {
    setting(vec![profile("default", min, max, default, rules)])
}

/// Evaluates with no cooldown history.
pub fn eval(s: &AutoscaleSetting, cur: u64, m: &dyn MetricQuery) -> Decision {
    eval_full(s, t0(), cur, cur, m, None, &BTreeMap::new())
}

pub fn eval_full(
    s: &AutoscaleSetting,
    now: DateTime<Utc>,
    cur: u64,
    ready: u64,
    m: &dyn MetricQuery,
    last: Option<LastScale>,
    fired: &BTreeMap<usize, DateTime<Utc>>,
) -> Decision {
    evaluate(&EvalInput {
        setting: s,
        now,
        current_capacity: cur,
        instance_count_ready: ready,
        metrics: m,
        last_scale: last,
        rule_last_fired: fired,
    })
}

pub fn recurrence(tz: &str, days: &[&str], hour: u32, minute: u32) -> Recurrence {
    Recurrence {
        frequency: RecurrenceFrequency::Week,
        schedule: RecurrentSchedule {
            time_zone: tz.into(),
            days: days.iter().map(|d| d.to_string()).collect(),
            hours: vec![hour],
            minutes: vec![minute],
        },
    }
}
