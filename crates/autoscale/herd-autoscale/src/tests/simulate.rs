//! The simulator: a synthetic day, scale to zero on a queue, target tracking, the SVG, the
//! trace parser, and the equivalence with a live-style loop that calls `evaluate` itself.

use super::fixtures::*;
use crate::bench::{cpu_setting, synthetic_day};
use crate::evaluate::{evaluate, AutoscaleState, Decision};
use crate::memory::{default_per_instance, InMemoryMetrics};
use crate::model::*;
use crate::simulate::*;
use chrono::{DateTime, Duration, Utc};
use herd_model::clock::{Clock, ManualClock};

#[test]
fn a_synthetic_day_at_one_minute_grain() {
    let trace = synthetic_day(t0());
    assert_eq!(trace.len(), 1441);
    let s = cpu_setting();
    s.validate().unwrap();
    let r = simulate(&s, &trace, 2, &SimOptions::default());
    assert_eq!(r.metric_name, CPU);
    assert!(r.per_instance);
    assert_eq!(r.timeline.len(), 2881, "every 30 s for 24 h, both ends included");
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert!(r.timeline.iter().all(|p| (2..=20).contains(&p.capacity)));
    let peak = r.timeline.iter().map(|p| p.capacity).max().unwrap();
    assert!(peak >= 14, "the afternoon peak (~1000% total) needs ≥ 15 instances at 70%: {peak}");
    // The trace starts at 12:00; its quiet hours are 3 h later (~100% total).
    let night = r.timeline.iter().find(|p| p.time == t0() + Duration::minutes(210)).unwrap();
    assert!(night.capacity <= 4, "back down in the quiet hours: {}", night.capacity);
    assert!(r.scale_events.len() >= 10, "{}", r.scale_events.len());
    assert!(r.scale_events.iter().any(|e| e.to > e.from) && r.scale_events.iter().any(|e| e.to < e.from));
    assert!(r.scale_events.iter().all(|e| !e.reason.is_empty()));
    assert!(r.instance_hours > 2.0 * 24.0 && r.instance_hours < 20.0 * 24.0, "{}", r.instance_hours);
    assert_eq!(r.threshold, Some(70.0));
    assert!(
        r.time_above_threshold > Duration::zero() && r.time_above_threshold < Duration::hours(6),
        "{}",
        r.time_above_threshold
    );
    // Cooldowns hold: two scale events are at least 5 minutes apart.
    for w in r.scale_events.windows(2) {
        assert!(w[1].time - w[0].time >= Duration::minutes(5), "{:?} then {:?}", w[0], w[1]);
    }
    // Instances take the provisioning latency to run.
    let first_out = r.scale_events.iter().find(|e| e.to > e.from).unwrap();
    let at = |t: DateTime<Utc>| r.timeline.iter().find(|p| p.time == t).unwrap();
    assert_eq!(at(first_out.time).ready, first_out.from);
    assert_eq!(
        at(first_out.time + Duration::seconds(60)).ready,
        first_out.to.min(at(first_out.time + Duration::seconds(60)).capacity)
    );

    let svg = svg_plot(&r, CPU);
    assert!(svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<path").count(), 2);
    assert!(!svg.contains("NaN") && !svg.contains("inf"));
    assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    assert!(!svg
        .replace("&amp;", "")
        .replace("&lt;", "")
        .replace("&gt;", "")
        .replace("&quot;", "")
        .replace("&apos;", "")
        .contains('&'));
    // JSON output for `--output json`.
    let v = serde_json::to_value(&r).unwrap();
    assert!(v["timeAboveThresholdSeconds"].as_f64().unwrap() > 0.0);
    assert_eq!(v["timeline"].as_array().unwrap().len(), 2881);
}

fn queue_setting() -> AutoscaleSetting {
    let mut bring_back =
        rule(JOBS, ComparisonOperator::GreaterThan, 0.0, ScaleDirection::None, ScaleType::ExactCount, 1);
    bring_back.metric_trigger.time_window = "PT1M".into();
    bring_back.scale_action.cooldown = "PT1M".into();
    let mut burst = cooldown(out(JOBS, 10.0, 2), "PT1M");
    burst.metric_trigger.time_window = "PT1M".into();
    let drain =
        cooldown(rule(JOBS, ComparisonOperator::LessThan, 1.0, ScaleDirection::None, ScaleType::ExactCount, 0), "PT1M");
    one(0, 10, 0, vec![bring_back, burst, drain])
}

fn queue_trace() -> Vec<(DateTime<Utc>, f64)> {
    (0..=70)
        .map(|m| {
            let v = match m {
                0..10 => 0.0,
                10..20 => 200.0,
                20..60 => 0.0,
                _ => 1.0,
            };
            (t0() + Duration::minutes(m), v)
        })
        .collect()
}

#[test]
fn queue_scales_to_zero_and_back() {
    let s = queue_setting();
    s.validate().unwrap();
    let r = simulate(&s, &queue_trace(), 0, &SimOptions::default());
    assert!(!r.per_instance, "source/ metrics are totals");
    let cap = |m: i64| r.timeline.iter().find(|p| p.time == t0() + Duration::minutes(m)).unwrap().capacity;
    assert_eq!(cap(5), 0);
    assert!(cap(19) >= 4, "the burst scales out: {}", cap(19));
    assert_eq!(cap(55), 0, "an empty queue takes the set to 0");
    assert_eq!(cap(61), 1, "the first message brings it back to 1");
    assert_eq!(cap(70), 1, "and one message keeps one instance");
}

#[test]
fn target_tracking_simulation_settles_on_the_target() {
    let mut s = one(1, 20, 1, vec![]);
    s.target_tracking = Some(TargetTracking {
        warmup: "PT1M".into(),
        scale_out_cooldown: "PT1M".into(),
        time_window: "PT2M".into(),
        ..tracking(CPU, 50.0)
    });
    s.validate().unwrap();
    let trace: Vec<_> = (0..=120).map(|m| (t0() + Duration::minutes(m), if m < 60 { 400.0 } else { 100.0 })).collect();
    let r = simulate(&s, &trace, 2, &SimOptions::default());
    let cap = |m: i64| r.timeline.iter().find(|p| p.time == t0() + Duration::minutes(m)).unwrap().capacity;
    assert_eq!(cap(55), 8, "400% total at 50% per instance");
    assert_eq!(cap(120), 2, "100% total at 50% per instance");
    assert!(r.timeline.iter().all(|p| p.capacity <= 8), "warm-up prevents overshoot");
}

/// The live autoscaler's loop, written the way the server runs it: an injected clock, a
/// sampler writing one sample per running instance into the metric store at each trace
/// timestamp, `evaluate` on the persisted state, and a "reconciler" that creates instances
/// (running after the boot latency) or deletes the newest.
fn live_loop(
    setting: &AutoscaleSetting,
    trace: &[(DateTime<Utc>, f64)],
    start: u64,
    interval: Duration,
    boot: Duration,
) -> Vec<(DateTime<Utc>, Decision)> {
    let metric = setting.profiles[0]
        .rules
        .first()
        .map(|r| r.metric_trigger.metric_name.clone())
        .or_else(|| setting.target_tracking.as_ref().map(|t| t.metric_name.clone()))
        .unwrap();
    let per_instance = default_per_instance(&metric);
    let warmup = setting.target_tracking.as_ref().map(|t| t.warmup_duration()).unwrap_or_default();
    let clock = ManualClock::new(trace[0].0);
    let mut store = InMemoryMetrics::new();
    // (name, running since)
    let mut vms: Vec<(String, DateTime<Utc>)> =
        (0..start).map(|i| (format!("vm{i}"), clock.now() - Duration::days(1))).collect();
    let mut created = start;
    let mut state = AutoscaleState::default();
    let mut sampled = 0;
    let mut out = Vec::new();
    while clock.now() <= trace[trace.len() - 1].0 {
        let now = clock.now();
        while sampled < trace.len() && trace[sampled].0 <= now {
            let (at, total) = trace[sampled];
            if per_instance {
                let running: Vec<&String> = vms.iter().filter(|(_, since)| *since <= at).map(|(n, _)| n).collect();
                if let Some(v) = per_instance_value(&metric, total, running.len() as u64) {
                    for n in running {
                        store.record(&metric, n, at, v);
                    }
                }
            } else {
                store.record_total(&metric, at, total);
            }
            sampled += 1;
        }
        let ready = vms.iter().filter(|(_, since)| *since + warmup <= now).count() as u64;
        let d = evaluate(&state.input(setting, now, vms.len() as u64, ready, &store));
        state.record(now, &d);
        while (vms.len() as u64) < d.new_capacity {
            vms.push((format!("vm{created}"), now + boot));
            created += 1;
        }
        vms.truncate(d.new_capacity as usize);
        out.push((now, d));
        clock.advance(interval);
    }
    out
}

#[test]
fn simulate_makes_the_same_decisions_as_the_live_loop() {
    let mut tracking = one(1, 20, 1, vec![]);
    tracking.target_tracking =
        Some(TargetTracking { scale_out_cooldown: "PT2M".into(), ..super::fixtures::tracking(CPU, 50.0) });
    let mut flappy = cpu_setting();
    flappy.profiles[0].rules[1] = cooldown(inn(CPU, 45.0, 3), "PT2M");
    flappy.profiles[0].rules[0] = cooldown(out(CPU, 60.0, 2), "PT3M");
    let day = synthetic_day(t0());
    type Trace = Vec<(DateTime<Utc>, f64)>;
    let cases: Vec<(&str, AutoscaleSetting, Trace, u64)> = vec![
        ("cpu rules over a day", cpu_setting(), day.clone(), 2),
        ("steps, cooldowns and the flapping guard", flappy, day.clone(), 3),
        ("queue to zero and back", queue_setting(), queue_trace(), 0),
        ("target tracking with warm-up", tracking, day, 1),
    ];
    for (name, s, trace, start) in cases {
        s.validate().unwrap();
        let opts = SimOptions {
            interval: Duration::seconds(30),
            provisioning_latency: Duration::seconds(90),
            ..Default::default()
        };
        let sim = simulate(&s, &trace, start, &opts);
        let live = live_loop(&s, &trace, start, opts.interval, opts.provisioning_latency);
        assert_eq!(sim.decisions.len(), live.len(), "{name}");
        for ((ts, a), (tl, b)) in sim.decisions.iter().zip(&live) {
            assert_eq!(ts, tl, "{name}");
            assert_eq!(a, b, "{name} at {ts}");
        }
        let changes = live.iter().filter(|(_, d)| d.changed()).count();
        assert_eq!(changes, sim.scale_events.len(), "{name}");
        assert!(changes > 0, "{name}: the trace should make it scale");
    }
}

#[test]
fn warnings_for_metrics_the_trace_lacks() {
    let s = one(1, 5, 1, vec![out(CPU, 70.0, 1), inn("Memory", 30.0, 1)]);
    let trace = vec![(t0(), 100.0), (t0() + Duration::minutes(10), 100.0)];
    let r = simulate(&s, &trace, 1, &SimOptions::default());
    assert_eq!(r.warnings.len(), 1);
    assert!(r.warnings[0].contains("'Memory'"), "{:?}", r.warnings);
    let r = simulate(&s, &[], 1, &SimOptions::default());
    assert!(r.timeline.is_empty());
    assert!(r.warnings.iter().any(|w| w.contains("empty")));
    assert!(svg_plot(&r, CPU).contains("no data"));
}

#[test]
fn trace_csv() {
    let t = parse_trace_csv(
        "timestamp,value\n2026-03-02T12:00:00Z,10\n2026-03-02T13:01:00+01:00,20.5\n\n# note\n1772452920,30\n",
    )
    .unwrap();
    assert_eq!(t.len(), 3);
    assert_eq!(t[0], (utc(2026, 3, 2, 12, 0), 10.0));
    assert_eq!(t[1], (utc(2026, 3, 2, 12, 1), 20.5));
    assert_eq!(t[2].0.timestamp(), 1772452920);
    // Without a header, with `;` and a space-separated date.
    let t = parse_trace_csv("2026-03-02 12:00:00;1\n2026-03-02 12:01;2").unwrap();
    assert_eq!(t[1], (utc(2026, 3, 2, 12, 1), 2.0));
    for (bad, frag) in [
        ("", "no samples"),
        ("time,value\n", "no samples"),
        ("2026-03-02T12:00:00Z,ten", "line 1: 'ten' is not a number"),
        ("t,v\n2026-03-02T12:00:00Z,1\nyesterday,2", "line 3: 'yesterday' is not a timestamp"),
        (
            "2026-03-02T12:00:00Z,1\n2026-03-02T11:00:00Z,2",
            "line 2: 2026-03-02T11:00:00Z is before the previous sample",
        ),
        ("2026-03-02T12:00:00Z", "line 1: expected 'timestamp,value'"),
    ] {
        let e = parse_trace_csv(bad).unwrap_err();
        assert!(e.contains(frag), "{bad:?}: {e}");
    }
}

#[test]
fn benchmarks_run() {
    // Tiny sizes: the real numbers come from `cargo bench` / `herd bench autoscale` in release.
    assert!(crate::bench::bench_evaluation(3, 4, 20) < std::time::Duration::from_secs(5));
}
