//! What each rule and the target tracking say in one round: the metric read over the rule's
//! window, whether it fired, the capacity its action asks for, its cooldown, and the texts
//! the history shows. The decision phases in the parent module weigh these against each other.

use super::{EvalInput, MetricAggregation};
use crate::condition::{format_number, format_period};
use crate::model::{Dimension, Rule, ScaleDirection, ScaleType, Statistic, TargetTracking, TimeAggregation};
use chrono::{DateTime, Duration, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Out,
    In,
    Neutral,
}

pub(super) struct Evaluated<'a> {
    pub(super) idx: usize,
    pub(super) rule: &'a Rule,
    pub(super) value: Option<f64>,
    pub(super) fired: bool,
    pub(super) role: Role,
    pub(super) per_instance: bool,
    /// Capacity the action asks for, clamped to the bounds.
    pub(super) result: u64,
    /// The same before clamping to the maximum (to say "capped").
    pub(super) wanted: u64,
    pub(super) cooling_until: Option<DateTime<Utc>>,
}

pub(super) fn hms(t: DateTime<Utc>) -> String {
    t.format("%H:%M:%S UTC").to_string()
}

/// `Percentage CPU avg 5m`.
pub(super) fn rule_label(r: &Rule) -> String {
    let m = &r.metric_trigger;
    format!("{} {} {}", m.metric_name, m.time_aggregation.short(), format_period(m.window()))
}

/// `Percentage CPU avg 5m = 82.3 > 70`, `... = 45, not > 70`, `...: no data`.
pub(super) fn observation(e: &Evaluated<'_>) -> String {
    let m = &e.rule.metric_trigger;
    let label = rule_label(e.rule);
    match e.value {
        None => format!("{label}: no data"),
        Some(v) if e.fired => {
            format!("{label} = {} {} {}", format_number(v), m.operator.symbol(), format_number(m.threshold))
        }
        Some(v) => {
            format!("{label} = {}, not {} {}", format_number(v), m.operator.symbol(), format_number(m.threshold))
        }
    }
}

/// `+1`, `-50%`, `to 5`.
pub(super) fn action_text(r: &Rule) -> String {
    let a = &r.scale_action;
    let sign = match a.direction {
        ScaleDirection::Increase => "+",
        ScaleDirection::Decrease => "-",
        ScaleDirection::None => "",
    };
    match a.kind {
        ScaleType::ChangeCount => format!("{sign}{}", a.value.trim()),
        ScaleType::PercentChangeCount => format!("{sign}{}%", a.value.trim()),
        ScaleType::ExactCount => format!("to {}", a.value.trim()),
    }
}

/// The capacity a rule's action asks for from `cur` (unclamped). Percent changes round
/// outwards when adding (ceil) and inwards when removing (floor), and always move by at least
/// one instance, so `+20%` of 0 or 3 is still +1.
pub(super) fn action_result(r: &Rule, cur: u64) -> Option<u64> {
    let a = &r.scale_action;
    let n = a.amount()?;
    let up = match a.direction {
        ScaleDirection::Increase => true,
        ScaleDirection::Decrease => false,
        ScaleDirection::None => return (a.kind == ScaleType::ExactCount).then_some(n),
    };
    let delta = match a.kind {
        ScaleType::ExactCount => return Some(n),
        ScaleType::ChangeCount => n,
        ScaleType::PercentChangeCount => {
            let exact = cur as f64 * n as f64 / 100.0;
            let d = if up { (exact - 1e-9).ceil() } else { (exact + 1e-9).floor() };
            (d.max(1.0)) as u64
        }
    };
    Some(if up { cur.saturating_add(delta) } else { cur.saturating_sub(delta) })
}

/// `ceil` that ignores float noise (`2.0000000001` is 2).
pub(super) fn ceil_count(x: f64) -> u64 {
    if !x.is_finite() || x <= 0.0 {
        return 0;
    }
    (x - 1e-9).ceil().max(0.0) as u64
}

/// The metric reads of one round, so that rules asking the same question (the usual
/// "> 70 avg 5m" / "< 30 avg 5m" pair) read the store once.
type QueryKey<'a> = (&'a str, &'a [Dimension], Statistic, Duration, Duration, TimeAggregation);

#[derive(Default)]
pub(super) struct Reads<'a> {
    pub(super) done: Vec<(QueryKey<'a>, Option<f64>)>,
}

impl<'a> Reads<'a> {
    pub(super) fn get(&mut self, input: &EvalInput<'_>, rule: &'a Rule) -> Option<f64> {
        let m = &rule.metric_trigger;
        let key: QueryKey<'a> =
            (m.metric_name.as_str(), m.dimensions.as_slice(), m.statistic, m.grain(), m.window(), m.time_aggregation);
        if let Some((_, v)) = self.done.iter().find(|(k, _)| *k == key) {
            return *v;
        }
        let how = MetricAggregation {
            statistic: key.2,
            time_grain: key.3,
            window_start: input.now - key.4,
            window_end: input.now,
            time_aggregation: key.5,
        };
        let v = input.metrics.aggregate(key.0, key.1, how);
        self.done.push((key, v));
        v
    }
}

pub(super) fn evaluate_rule<'a>(
    input: &EvalInput<'_>,
    reads: &mut Reads<'a>,
    idx: usize,
    rule: &'a Rule,
    bounds: (u64, u64),
) -> Evaluated<'a> {
    let m = &rule.metric_trigger;
    let cur = input.current_capacity;
    let raw = reads.get(input, rule);
    let divide = m.divide_per_instance == Some(true);
    let value = raw.filter(|v| v.is_finite()).map(|v| if divide { v / cur.max(1) as f64 } else { v });
    let fired = value.is_some_and(|v| m.operator.holds(v, m.threshold));
    let asked = action_result(rule, cur);
    // `to N` (direction None, what `az ... --scale to N` writes) has no direction of its own:
    // when it fires it scales out below N and in above N; when it does not fire it does not
    // vote (otherwise an idle "to 1 when the queue is not empty" would block every scale-in).
    let role = match (rule.scale_action.direction, asked) {
        (ScaleDirection::Increase, _) => Role::Out,
        (ScaleDirection::Decrease, _) => Role::In,
        (ScaleDirection::None, Some(n)) if fired && n > cur => Role::Out,
        (ScaleDirection::None, Some(n)) if fired && n < cur => Role::In,
        (ScaleDirection::None, _) => Role::Neutral,
    };
    let (min, max) = bounds;
    let wanted = match (role, asked) {
        (Role::Out, Some(n)) => n.max(cur),
        (Role::In, Some(n)) => n.min(cur),
        _ => cur,
    };
    let result = wanted.clamp(min, max);
    let cd = rule.scale_action.cooldown_duration();
    let from_last = input.last_scale.map(|l| l.at + cd);
    let from_self = input.rule_last_fired.get(&idx).map(|t| *t + cd);
    let until = from_last.into_iter().chain(from_self).max().filter(|u| *u > input.now);
    Evaluated {
        idx,
        rule,
        value,
        fired,
        role,
        per_instance: divide || input.metrics.is_per_instance(&m.metric_name),
        result,
        wanted,
        cooling_until: until,
    }
}

pub(super) struct Tracking {
    pub(super) value: Option<f64>,
    pub(super) per_instance: bool,
    /// Desired count, clamped to the bounds (None when it cannot be computed).
    pub(super) desired: Option<u64>,
    pub(super) out_blocked_until: Option<DateTime<Utc>>,
    pub(super) in_blocked_until: Option<DateTime<Utc>>,
    pub(super) note: String,
}

pub(super) fn evaluate_tracking(input: &EvalInput<'_>, tt: &TargetTracking, bounds: (u64, u64)) -> Tracking {
    let now = input.now;
    let value = input
        .metrics
        .aggregate(
            &tt.metric_name,
            &[],
            MetricAggregation {
                statistic: Statistic::Average,
                time_grain: Duration::minutes(1).min(tt.window()),
                window_start: now - tt.window(),
                window_end: now,
                time_aggregation: TimeAggregation::Average,
            },
        )
        .filter(|v| v.is_finite());
    let per_instance = input.metrics.is_per_instance(&tt.metric_name);
    let ready = input.instance_count_ready;
    let (desired, note) = match value {
        None => (None, "no data".to_string()),
        Some(_) if per_instance && ready == 0 => (None, "no instance is past its warm-up yet".to_string()),
        Some(v) => {
            let raw = if per_instance { ceil_count(ready as f64 * v / tt.target) } else { ceil_count(v / tt.target) };
            let d = raw.clamp(bounds.0, bounds.1);
            let how = if per_instance {
                format!("ceil({ready} ready × {} / {})", format_number(v), format_number(tt.target))
            } else {
                format!("ceil({} / {})", format_number(v), format_number(tt.target))
            };
            (
                Some(d),
                format!("desired {how} = {raw}{}", if d != raw { format!(", bounded to {d}") } else { String::new() }),
            )
        }
    };
    let out_blocked_until = input
        .last_scale
        .filter(|l| l.direction == ScaleDirection::Increase)
        .map(|l| l.at + tt.scale_out_cooldown_duration())
        .filter(|u| *u > now);
    let in_blocked_until = input.last_scale.map(|l| l.at + tt.scale_in_cooldown_duration()).filter(|u| *u > now);
    Tracking { value, per_instance, desired, out_blocked_until, in_blocked_until, note }
}

pub(super) fn tracking_label(tt: &TargetTracking, per_instance: bool) -> String {
    format!(
        "{} avg {} target {}{}",
        tt.metric_name,
        format_period(tt.window()),
        format_number(tt.target),
        if per_instance { "" } else { " per instance" }
    )
}
