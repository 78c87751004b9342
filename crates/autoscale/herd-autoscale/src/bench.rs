//! Benchmarks as plain functions, so `herd bench autoscale` (and `cargo bench`) can run them
//! and `docs/benchmarks.md` can quote them.
//!
//! Why functions and not a benchmark framework: the numbers are goals from the issue (one
//! evaluation round over 100 settings × 10 rules × 1000 instances in < 50 ms; simulating 24 h
//! at 1-minute grain in < 1 s), checked from the CLI on the user's machine, not statistics.

use crate::evaluate::{evaluate, EvalInput};
use crate::memory::InMemoryMetrics;
use crate::model::{AutoscaleSetting, Capacity, ComparisonOperator, Profile, Rule, ScaleDirection, ScaleType};
use crate::simulate::{simulate, SimOptions};
use chrono::{DateTime, Duration, TimeZone, Utc};
use std::collections::BTreeMap;
use std::time::Instant;

fn rule(metric: &str, op: ComparisonOperator, threshold: f64, direction: ScaleDirection) -> Rule {
    Rule::avg_5m(metric, op, threshold, direction, ScaleType::ChangeCount, 1)
}

fn setting(name: &str, rules: Vec<Rule>, min: i64, max: i64, default: i64) -> AutoscaleSetting {
    AutoscaleSetting {
        name: name.into(),
        enabled: true,
        target_resource_uri: format!(
            "/resourceGroups/bench/providers/Microsoft.Compute/virtualMachineScaleSets/{name}"
        ),
        profiles: vec![Profile {
            name: "default".into(),
            capacity: Capacity { minimum: min, maximum: max, default },
            rules,
            recurrence: None,
            fixed_date: None,
        }],
        notifications: vec![],
        target_tracking: None,
    }
}

fn bench_epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 12, 0, 0).single().unwrap_or_default()
}

/// One evaluation round over `settings` autoscale settings, each with `rules` rules in the
/// usual shape: scale-out/scale-in pairs on the same metric and window (`> 80` → +1,
/// `< 20` → -1, `avg 5m` at 1-minute grain), so 10 rules read 5 metrics. Every read
/// aggregates the series of all `instances` instances (ten minutes of one sample a minute
/// each): an upper bound, since in a real deployment each setting reads only its own set's
/// instances. Returns the median of five rounds.
pub fn bench_evaluation(settings: usize, rules: usize, instances: usize) -> std::time::Duration {
    run_evaluation(settings, rules, instances, true)
}

/// The same with every rule on a metric of its own (10 rules read 10 metrics): the worst case.
pub fn bench_evaluation_distinct_metrics(settings: usize, rules: usize, instances: usize) -> std::time::Duration {
    run_evaluation(settings, rules, instances, false)
}

fn run_evaluation(settings: usize, rules: usize, instances: usize, pairs: bool) -> std::time::Duration {
    let now = bench_epoch();
    let metric_of = |r: usize| if pairs { r / 2 } else { r };
    let metric_names: Vec<String> = (0..=metric_of(rules.max(1) - 1)).map(|i| format!("Metric {i}")).collect();
    let mut metrics = InMemoryMetrics::new();
    for (mi, m) in metric_names.iter().enumerate() {
        for i in 0..instances {
            let name = format!("vm{i}");
            for s in 0..10i64 {
                let v = ((i * 37 + mi * 11 + s as usize * 7) % 100) as f64;
                metrics.record(m, &name, now - Duration::minutes(s), v);
            }
        }
    }
    let all: Vec<AutoscaleSetting> = (0..settings)
        .map(|s| {
            let rs = (0..rules)
                .map(|r| {
                    let m = &metric_names[metric_of(r)];
                    if r % 2 == 0 {
                        rule(m, ComparisonOperator::GreaterThan, 80.0, ScaleDirection::Increase)
                    } else {
                        rule(m, ComparisonOperator::LessThan, 20.0, ScaleDirection::Decrease)
                    }
                })
                .collect();
            setting(&format!("set{s}"), rs, 1, 1000, 10)
        })
        .collect();
    let fired = BTreeMap::new();
    let mut rounds: Vec<std::time::Duration> = (0..5)
        .map(|_| {
            let start = Instant::now();
            let mut changed = 0usize;
            for s in &all {
                let d = evaluate(&EvalInput {
                    setting: s,
                    now,
                    current_capacity: 10,
                    instance_count_ready: 10,
                    metrics: &metrics,
                    last_scale: None,
                    rule_last_fired: &fired,
                });
                changed += usize::from(d.changed());
            }
            std::hint::black_box(changed);
            start.elapsed()
        })
        .collect();
    rounds.sort();
    rounds[rounds.len() / 2]
}

/// A 24-hour trace at 1-minute grain: a daily load curve (total CPU percent across the set,
/// from ~100 at night to ~1000 at the afternoon peak) with a lunchtime spike.
pub fn synthetic_day(start: DateTime<Utc>) -> Vec<(DateTime<Utc>, f64)> {
    (0..=1440)
        .map(|m| {
            let hour = m as f64 / 60.0;
            let daily = 550.0 - 450.0 * ((hour - 3.0) / 24.0 * std::f64::consts::TAU).cos();
            let spike = if (12.0..12.5).contains(&hour) { 400.0 } else { 0.0 };
            let wobble = 30.0 * ((m * 7919 % 101) as f64 / 101.0 - 0.5);
            (start + Duration::minutes(m), (daily + spike + wobble).max(0.0))
        })
        .collect()
}

/// The setting `bench_simulate_24h` replays: CPU > 70 → +1, < 30 → -1, 2..20 instances.
pub fn cpu_setting() -> AutoscaleSetting {
    setting(
        "bench-cpu",
        vec![
            rule("Percentage CPU", ComparisonOperator::GreaterThan, 70.0, ScaleDirection::Increase),
            rule("Percentage CPU", ComparisonOperator::LessThan, 30.0, ScaleDirection::Decrease),
        ],
        2,
        20,
        2,
    )
}

/// Simulates 24 hours at 1-minute grain (evaluating every 30 s) with [`cpu_setting`].
pub fn bench_simulate_24h() -> std::time::Duration {
    let trace = synthetic_day(bench_epoch());
    let s = cpu_setting();
    let start = Instant::now();
    let r = simulate(&s, &trace, 2, &SimOptions::default());
    let took = start.elapsed();
    std::hint::black_box(r.scale_events.len());
    took
}
