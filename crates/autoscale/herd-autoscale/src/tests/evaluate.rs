//! The evaluator's Azure semantics as tables: rule combination, bounds, steps, cooldowns,
//! missing data, the flapping guard (with totals and scale-to-zero) and target tracking.

use super::fixtures::*;
use crate::evaluate::{AutoscaleState, LastScale};
use crate::model::*;
use chrono::Duration;
use std::collections::BTreeMap;

fn last(minutes_ago: i64, direction: ScaleDirection) -> Option<LastScale> {
    Some(LastScale { at: t0() - Duration::minutes(minutes_ago), direction })
}

#[test]
fn reason_strings_read_well() {
    let s = one(1, 10, 1, vec![out(CPU, 70.0, 1), inn(CPU, 30.0, 1)]);
    let d = eval(&s, 3, &Fixed::new().with(CPU, 82.3));
    assert_eq!(d.new_capacity, 4);
    assert_eq!(d.direction, ScaleDirection::Increase);
    assert_eq!(d.reason, "Percentage CPU avg 5m = 82.3 > 70: +1 (3 → 4)");
    assert_eq!(d.acted_rules, vec![0]);
    assert_eq!(d.profile, "default");
    assert_eq!(d.evaluations.len(), 2);
    assert!(d.evaluations[0].fired && !d.evaluations[1].fired);
    assert_eq!(d.evaluations[0].condition, "Percentage CPU > 70 avg 5m");
    assert_eq!(d.evaluations[0].value, Some(82.3));

    let d = eval(&s, 3, &Fixed::new().with(CPU, 12.0));
    assert_eq!((d.new_capacity, d.direction), (2, ScaleDirection::Decrease));
    assert_eq!(d.reason, "Percentage CPU avg 5m = 12 < 30: -1 (3 → 2)");

    let d = eval(&s, 3, &Fixed::new().with(CPU, 50.0));
    assert!(!d.changed());
    assert_eq!(d.direction, ScaleDirection::None);
    assert!(d.reason.contains("Percentage CPU avg 5m = 50, not > 70"), "{}", d.reason);
    assert!(d.reason.contains("no scale-in: Percentage CPU avg 5m = 50, not < 30"), "{}", d.reason);
}

/// Table: (rules, metrics, current) → new capacity.
#[test]
fn rule_combination_table() {
    struct Case {
        name: &'static str,
        rules: Vec<Rule>,
        metrics: Fixed,
        cur: u64,
        want: u64,
    }
    let cases = vec![
        Case {
            name: "any scale-out rule fires: the largest result wins",
            rules: vec![out(CPU, 70.0, 1), out(JOBS, 100.0, 3)],
            metrics: Fixed::new().with(CPU, 90.0).with(JOBS, 500.0),
            cur: 3,
            want: 6,
        },
        Case {
            name: "one of two scale-out rules is enough",
            rules: vec![out(CPU, 70.0, 1), out(JOBS, 100.0, 3)],
            metrics: Fixed::new().with(CPU, 90.0).with(JOBS, 5.0),
            cur: 3,
            want: 4,
        },
        Case {
            name: "scale-out beats scale-in",
            rules: vec![out(JOBS, 100.0, 2), inn(CPU, 30.0, 1)],
            metrics: Fixed::new().with(CPU, 10.0).with(JOBS, 500.0),
            cur: 3,
            want: 5,
        },
        Case {
            name: "scale-in needs every scale-in rule: one does not fire",
            rules: vec![inn(CPU, 30.0, 1), inn("Memory", 40.0, 2)],
            metrics: Fixed::new().with(CPU, 10.0).with("Memory", 60.0),
            cur: 5,
            want: 5,
        },
        Case {
            name: "all scale-in rules fire: the smallest reduction wins",
            rules: vec![inn(CPU, 30.0, 1), inn("Memory", 40.0, 2)],
            metrics: Fixed::new().with(CPU, 10.0).with("Memory", 20.0),
            cur: 5,
            want: 4,
        },
        Case {
            name: "percent out rounds up",
            rules: vec![rule(
                CPU,
                ComparisonOperator::GreaterThan,
                70.0,
                ScaleDirection::Increase,
                ScaleType::PercentChangeCount,
                50,
            )],
            metrics: Fixed::new().with(CPU, 90.0),
            cur: 3,
            want: 5,
        },
        Case {
            name: "percent in rounds down but moves at least one",
            rules: vec![rule(
                CPU,
                ComparisonOperator::LessThan,
                30.0,
                ScaleDirection::Decrease,
                ScaleType::PercentChangeCount,
                20,
            )],
            metrics: Fixed::new().with(CPU, 1.0),
            cur: 3,
            want: 2,
        },
        Case {
            name: "percent out from zero adds one",
            rules: vec![rule(
                JOBS,
                ComparisonOperator::GreaterThan,
                0.0,
                ScaleDirection::Increase,
                ScaleType::PercentChangeCount,
                20,
            )],
            metrics: Fixed::new().with(JOBS, 3.0),
            cur: 0,
            want: 1,
        },
        Case {
            name: "scale to N is a scale-out below N",
            rules: vec![rule(
                CPU,
                ComparisonOperator::GreaterThan,
                70.0,
                ScaleDirection::None,
                ScaleType::ExactCount,
                5,
            )],
            metrics: Fixed::new().with(CPU, 90.0),
            cur: 2,
            want: 5,
        },
        Case {
            name: "scale to N is a scale-in above N",
            rules: vec![rule(JOBS, ComparisonOperator::LessThan, 1.0, ScaleDirection::None, ScaleType::ExactCount, 1)],
            metrics: Fixed::new().with(JOBS, 0.0),
            cur: 4,
            want: 1,
        },
        Case {
            name: "scale-out is capped at the maximum",
            rules: vec![out(CPU, 70.0, 5)],
            metrics: Fixed::new().with(CPU, 90.0),
            cur: 8,
            want: 10,
        },
        Case {
            name: "already at the maximum",
            rules: vec![out(CPU, 70.0, 1)],
            metrics: Fixed::new().with(CPU, 90.0),
            cur: 10,
            want: 10,
        },
        Case {
            name: "scale-in stops at the minimum",
            rules: vec![inn(CPU, 30.0, 5)],
            metrics: Fixed::new().with(CPU, 0.0),
            cur: 3,
            want: 1,
        },
        Case {
            name: "below the minimum goes to the minimum whatever the rules",
            rules: vec![inn(CPU, 30.0, 1)],
            metrics: Fixed::new().with(CPU, 5.0),
            cur: 0,
            want: 1,
        },
        Case {
            name: "above the maximum goes to the maximum",
            rules: vec![out(CPU, 70.0, 1)],
            metrics: Fixed::new().with(CPU, 95.0),
            cur: 14,
            want: 10,
        },
        Case {
            name: "a profile without rules holds its default",
            rules: vec![],
            metrics: Fixed::new(),
            cur: 7,
            want: 3,
        },
        Case {
            name: "equals and not-equals operators",
            rules: vec![rule(
                JOBS,
                ComparisonOperator::Equals,
                0.0,
                ScaleDirection::Decrease,
                ScaleType::ChangeCount,
                1,
            )],
            metrics: Fixed::new().with(JOBS, 0.0),
            cur: 3,
            want: 2,
        },
    ];
    for c in cases {
        let s = one(1, 10, 3, c.rules);
        let d = eval(&s, c.cur, &c.metrics);
        assert_eq!(d.new_capacity, c.want, "{}: {}", c.name, d.reason);
        let dir = match c.want.cmp(&c.cur) {
            std::cmp::Ordering::Greater => ScaleDirection::Increase,
            std::cmp::Ordering::Less => ScaleDirection::Decrease,
            std::cmp::Ordering::Equal => ScaleDirection::None,
        };
        assert_eq!(d.direction, dir, "{}", c.name);
    }
}

#[test]
fn bounds_reasons() {
    let s = one(2, 10, 3, vec![out(CPU, 70.0, 5)]);
    let d = eval(&s, 8, &Fixed::new().with(CPU, 90.0));
    assert_eq!(d.reason, "Percentage CPU avg 5m = 90 > 70: +5 (8 → 10, capped at the maximum 10)");
    let d = eval(&s, 10, &Fixed::new().with(CPU, 90.0));
    assert!(d.reason.contains("already at the maximum 10"), "{}", d.reason);
    let d = eval(&s, 1, &Fixed::new().with(CPU, 50.0));
    assert_eq!(d.reason, "below the minimum 2 of profile 'default' (1 → 2)");
    let d = eval(&s, 12, &Fixed::new().with(CPU, 50.0));
    assert_eq!(d.reason, "above the maximum 10 of profile 'default' (12 → 10)");
}

#[test]
fn steps_on_one_metric() {
    // "> 100 → +2" and "> 1000 → +5": the largest step that fires wins.
    let s = one(0, 50, 1, vec![out(JOBS, 100.0, 2), out(JOBS, 1000.0, 5)]);
    for (queue, want) in [(50.0, 4), (500.0, 6), (5000.0, 9)] {
        let d = eval(&s, 4, &Fixed::new().with(JOBS, queue));
        assert_eq!(d.new_capacity, want, "queue {queue}: {}", d.reason);
    }
    let d = eval(&s, 4, &Fixed::new().with(JOBS, 5000.0));
    assert_eq!(d.acted_rules, vec![1]);
    assert_eq!(d.reason, "source/jobs avg 5m = 5000 > 1000: +5 (4 → 9)");
}

#[test]
fn cooldowns() {
    let s = one(1, 10, 1, vec![out(CPU, 70.0, 1), inn(CPU, 30.0, 1)]);
    let none = BTreeMap::new();
    let hot = Fixed::new().with(CPU, 90.0);
    let cold = Fixed::new().with(CPU, 10.0);
    // Within 5 minutes of the last scale action (either direction) nothing acts.
    let d = eval_full(&s, t0(), 3, 3, &hot, last(2, ScaleDirection::Increase), &none);
    assert!(!d.changed());
    assert!(d.reason.contains("but cooling down until 12:03:00 UTC"), "{}", d.reason);
    assert!(d.evaluations[0].note.contains("cooling down"));
    let d = eval_full(&s, t0(), 3, 3, &hot, last(2, ScaleDirection::Decrease), &none);
    assert!(!d.changed(), "Azure: the cooldown follows any scale action");
    let d = eval_full(&s, t0(), 3, 3, &cold, last(4, ScaleDirection::Increase), &none);
    assert!(!d.changed(), "{}", d.reason);
    assert!(d.reason.contains("cooling down"), "{}", d.reason);
    // After it, both act.
    assert_eq!(eval_full(&s, t0(), 3, 3, &hot, last(5, ScaleDirection::Increase), &none).new_capacity, 4);
    assert_eq!(eval_full(&s, t0(), 3, 3, &cold, last(6, ScaleDirection::Increase), &none).new_capacity, 2);
    // A rule's own last firing also counts.
    let fired = BTreeMap::from([(0usize, t0() - Duration::minutes(1))]);
    assert!(!eval_full(&s, t0(), 3, 3, &hot, None, &fired).changed());
    assert_eq!(eval_full(&s, t0(), 3, 3, &cold, None, &fired).new_capacity, 2, "rule 1 is not cooling");
}

#[test]
fn each_rule_has_its_own_cooldown() {
    // Steps with their own cooldowns: 2 minutes after a scale-out, the big step (cooldown 1m)
    // may act while the small one (5m) may not.
    let s = one(0, 50, 1, vec![out(JOBS, 100.0, 2), cooldown(out(JOBS, 1000.0, 5), "PT1M")]);
    let none = BTreeMap::new();
    let d = eval_full(&s, t0(), 4, 4, &Fixed::new().with(JOBS, 5000.0), last(2, ScaleDirection::Increase), &none);
    assert_eq!(d.new_capacity, 9, "{}", d.reason);
    let d = eval_full(&s, t0(), 4, 4, &Fixed::new().with(JOBS, 500.0), last(2, ScaleDirection::Increase), &none);
    assert_eq!(d.new_capacity, 4, "{}", d.reason);
}

#[test]
fn state_records_cooldowns() {
    let s = one(1, 10, 1, vec![out(CPU, 70.0, 1)]);
    let hot = Fixed::new().with(CPU, 90.0);
    let mut st = AutoscaleState::default();
    let d = crate::evaluate::evaluate(&st.input(&s, t0(), 3, 3, &hot));
    assert_eq!(d.new_capacity, 4);
    st.record(t0(), &d);
    assert_eq!(st.last_scale, Some(LastScale { at: t0(), direction: ScaleDirection::Increase }));
    assert_eq!(st.rule_last_fired.get(&0), Some(&t0()));
    let later = t0() + Duration::minutes(3);
    let d = crate::evaluate::evaluate(&st.input(&s, later, 4, 4, &hot));
    assert!(!d.changed());
    st.record(later, &d);
    assert_eq!(st.last_scale.map(|l| l.at), Some(t0()), "no change keeps the last scale");
    let d = crate::evaluate::evaluate(&st.input(&s, t0() + Duration::minutes(5), 4, 4, &hot));
    assert_eq!(d.new_capacity, 5);
    // Decisions are what history stores.
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!((v["newCapacity"].as_u64(), v["direction"].as_str()), (Some(5), Some("Increase")));
    assert_eq!(v["evaluations"][0]["condition"], "Percentage CPU > 70 avg 5m");
    // The state round-trips through JSON (the server persists it).
    let json = serde_json::to_string(&st).unwrap();
    assert_eq!(serde_json::from_str::<AutoscaleState>(&json).unwrap(), st);
}

#[test]
fn missing_data() {
    let s = one(1, 10, 3, vec![out(CPU, 70.0, 1), inn(CPU, 30.0, 1)]);
    // No data, below the default: raise to the default.
    let d = eval(&s, 1, &Fixed::new());
    assert_eq!(d.new_capacity, 3);
    assert!(d.missing_data);
    assert_eq!(d.reason, "no data for Percentage CPU avg 5m; raised to the default 3 (1 → 3)");
    assert_eq!(d.evaluations[0].value, None);
    assert_eq!(d.evaluations[0].note, "no data");
    // No data, at or above the default: leave it, never scale in.
    let d = eval(&s, 6, &Fixed::new());
    assert_eq!(d.new_capacity, 6);
    assert!(d.missing_data);
    assert!(d.reason.contains("never scales in on missing data"), "{}", d.reason);

    // One scale-in rule has data and fires, the other has none: no scale-in.
    let s = one(1, 10, 3, vec![inn(CPU, 30.0, 1), inn("Memory", 40.0, 1)]);
    let d = eval(&s, 6, &Fixed::new().with(CPU, 5.0));
    assert_eq!(d.new_capacity, 6, "{}", d.reason);
    assert!(d.missing_data);

    // A scale-out rule with data still acts when another metric is missing.
    let s = one(1, 10, 3, vec![out(CPU, 70.0, 2), out(JOBS, 10.0, 1), inn(CPU, 30.0, 1)]);
    let d = eval(&s, 5, &Fixed::new().with(CPU, 95.0));
    assert_eq!(d.new_capacity, 7, "{}", d.reason);
    assert!(d.missing_data);
    // ... and a missing metric with a fired scale-in rule never scales in.
    let d = eval(&s, 5, &Fixed::new().with(CPU, 5.0));
    assert_eq!(d.new_capacity, 5, "{}", d.reason);
    // Below the default with partial data: the default or the fired rule, whichever is larger.
    let d = eval(&s, 1, &Fixed::new().with(CPU, 95.0));
    assert_eq!(d.new_capacity, 3, "{}", d.reason);
}

#[test]
fn flapping_guard_defers_azures_example() {
    // Azure's documented example: 2 instances at 28% CPU; out > 50, in < 30 by 1. Going to 1
    // would project 56% > 50%, so the scale-in is skipped.
    let s = one(1, 10, 1, vec![out(CPU, 50.0, 1), inn(CPU, 30.0, 1)]);
    let d = eval(&s, 2, &Fixed::new().with(CPU, 28.0));
    assert_eq!(d.new_capacity, 2);
    assert_eq!(
        d.reason,
        "Percentage CPU avg 5m = 28 < 30: -1 deferred by the flapping guard (2 → 1 would project Percentage CPU avg 5m to 56 > 50); capacity left at 2"
    );
    assert_eq!(d.evaluations[1].note, "fired; deferred by the flapping guard");
    // At 20% the projection is 40%: fine.
    assert_eq!(eval(&s, 2, &Fixed::new().with(CPU, 20.0)).new_capacity, 1);
}

#[test]
fn flapping_guard_shrinks_the_step() {
    // 4 instances at 20%, scale in by 3 to 1 would project 80% > 50%; 2 projects 40%: take 2.
    let s = one(1, 10, 1, vec![out(CPU, 50.0, 1), inn(CPU, 30.0, 3)]);
    let d = eval(&s, 4, &Fixed::new().with(CPU, 20.0));
    assert_eq!(d.new_capacity, 2, "{}", d.reason);
    assert_eq!(
        d.reason,
        "Percentage CPU avg 5m = 20 < 30: -3 (4 → 2, shrunk from 1 by the flapping guard: 4 → 1 would project Percentage CPU avg 5m to 80 > 50)"
    );
    // A percentage step is shrunk the same way.
    let s = one(
        1,
        10,
        1,
        vec![
            out(CPU, 60.0, 1),
            rule(CPU, ComparisonOperator::LessThan, 30.0, ScaleDirection::Decrease, ScaleType::PercentChangeCount, 75),
        ],
    );
    let d = eval(&s, 8, &Fixed::new().with(CPU, 25.0));
    // 8 → 2 would be 100%, → 3 is 66.7%, → 4 is 50%: take 4.
    assert_eq!(d.new_capacity, 4, "{}", d.reason);
}

#[test]
fn flapping_guard_never_projects_totals() {
    // A queue length does not change with the instance count: no projection.
    let s = one(0, 10, 1, vec![out(JOBS, 50.0, 1), inn(JOBS, 45.0, 3)]);
    let d = eval(&s, 4, &Fixed::new().with(JOBS, 40.0));
    assert_eq!(d.new_capacity, 1, "{}", d.reason);
    // Any metric the store declares a total is not projected either.
    let s = one(0, 10, 1, vec![out("Queue Length", 50.0, 1), inn("Queue Length", 45.0, 3)]);
    let d = eval(&s, 4, &Fixed::new().total("Queue Length", 40.0));
    assert_eq!(d.new_capacity, 1, "{}", d.reason);
    // The same numbers on a per-instance metric would be deferred (40 × 4 / k > 50 for k < 4).
    let s = one(0, 10, 1, vec![out(CPU, 50.0, 1), inn(CPU, 45.0, 3)]);
    let d = eval(&s, 4, &Fixed::new().with(CPU, 40.0));
    assert_eq!(d.new_capacity, 4, "{}", d.reason);
}

#[test]
fn scale_to_rules_vote_only_when_they_fire() {
    // "to 1 while the queue is not empty" does not fire on an empty queue, so it does not
    // block the drain rule ("to 0 when empty").
    let bring_back = rule(JOBS, ComparisonOperator::GreaterThan, 0.0, ScaleDirection::None, ScaleType::ExactCount, 1);
    let drain = rule(JOBS, ComparisonOperator::LessThanOrEqual, 0.0, ScaleDirection::None, ScaleType::ExactCount, 0);
    let s = one(0, 10, 0, vec![bring_back, drain]);
    assert_eq!(eval(&s, 6, &Fixed::new().with(JOBS, 0.0)).new_capacity, 0);
    assert_eq!(eval(&s, 0, &Fixed::new().with(JOBS, 3.0)).new_capacity, 1);
    // Both fire when windows differ (a message just arrived, the 5-minute average is still
    // low): the larger of the two targets wins, and the flapping guard keeps 1, since at 0
    // "to 1" would fire again at once.
    let mut drain_slow = rule(JOBS, ComparisonOperator::LessThan, 1.0, ScaleDirection::None, ScaleType::ExactCount, 0);
    drain_slow.metric_trigger.time_aggregation = TimeAggregation::Minimum;
    let s = one(0, 10, 0, vec![s.profiles[0].rules[0].clone(), drain_slow]);
    let d = eval(&s, 1, &Fixed::new().with(JOBS, 0.5));
    assert_eq!(d.new_capacity, 1, "{}", d.reason);
    assert!(d.reason.contains("deferred by the flapping guard"), "{}", d.reason);
    assert_eq!(eval(&s, 4, &Fixed::new().with(JOBS, 0.5)).new_capacity, 1);
}

#[test]
fn flapping_guard_never_divides_by_zero() {
    // A per-instance metric set is never taken to 0 (projecting onto 0 instances would divide
    // by zero, and nothing would be left to report the metric).
    let s = one(0, 10, 0, vec![out(CPU, 70.0, 1), inn(CPU, 10.0, 1)]);
    let d = eval(&s, 1, &Fixed::new().with(CPU, 0.0));
    assert_eq!(d.new_capacity, 1, "{}", d.reason);
    assert!(d.reason.contains("not to 0"), "{}", d.reason);
    // Even with no scale-out rule at all.
    let s = one(0, 10, 0, vec![inn(CPU, 10.0, 5)]);
    let d = eval(&s, 3, &Fixed::new().with(CPU, 0.0));
    assert_eq!(d.new_capacity, 1, "{}", d.reason);
    // A queue-driven set may go to 0 ...
    let s = one(
        0,
        10,
        0,
        vec![
            out(JOBS, 0.0, 1),
            rule(JOBS, ComparisonOperator::LessThanOrEqual, 0.0, ScaleDirection::None, ScaleType::ExactCount, 0),
        ],
    );
    let d = eval(&s, 3, &Fixed::new().with(JOBS, 0.0));
    assert_eq!(d.new_capacity, 0, "{}", d.reason);
    // ... and the first message brings it back.
    let d = eval(&s, 0, &Fixed::new().with(JOBS, 1.0));
    assert_eq!(d.new_capacity, 1, "{}", d.reason);
    // A per-instance value at 0 instances is no data: raised to the default, not divided.
    let s = one(0, 10, 2, vec![out(CPU, 70.0, 1), inn(CPU, 10.0, 1)]);
    let d = eval(&s, 0, &Fixed::new());
    assert_eq!(d.new_capacity, 2);
}

#[test]
fn divide_per_instance_makes_a_total_per_instance() {
    let mut r = out(JOBS, 100.0, 1);
    r.metric_trigger.divide_per_instance = Some(true);
    let mut i = inn(JOBS, 20.0, 2);
    i.metric_trigger.divide_per_instance = Some(true);
    let s = one(1, 10, 1, vec![r, i]);
    // 450 messages over 4 instances = 112.5 each.
    assert_eq!(eval(&s, 4, &Fixed::new().with(JOBS, 450.0)).new_capacity, 5);
    // 60 over 4 = 15 each: in by 2 → 2 would be 30 each (fine), so 2.
    assert_eq!(eval(&s, 4, &Fixed::new().with(JOBS, 60.0)).new_capacity, 2);
    // 76 over 4 = 19: → 2 projects 38 < 100, fine.
    assert_eq!(eval(&s, 4, &Fixed::new().with(JOBS, 76.0)).new_capacity, 2);
}

#[test]
fn disabled_setting_and_no_profile() {
    let mut s = one(1, 10, 3, vec![out(CPU, 70.0, 1)]);
    s.enabled = false;
    let d = eval(&s, 1, &Fixed::new().with(CPU, 99.0));
    assert!(!d.changed());
    assert_eq!(d.reason, "autoscale setting is disabled; capacity left at 1");
    // Only a fixed-date profile, outside its window: nothing applies.
    let mut p = profile("xmas", 5, 10, 5, vec![]);
    p.fixed_date = Some(FixedDate {
        time_zone: "UTC".into(),
        start: "2026-12-24T00:00:00Z".into(),
        end: "2026-12-27T00:00:00Z".into(),
    });
    let s = setting(vec![p]);
    let d = eval(&s, 1, &Fixed::new());
    assert!(!d.changed());
    assert_eq!(d.profile, "");
    assert!(d.reason.starts_with("no profile applies"), "{}", d.reason);
}

#[test]
fn target_tracking_per_instance_with_warmup() {
    let mut s = one(1, 20, 2, vec![]);
    s.target_tracking = Some(tracking(CPU, 50.0));
    let none = BTreeMap::new();
    // 4 ready instances at 75%: ceil(4 × 75 / 50) = 6.
    let d = eval_full(&s, t0(), 4, 4, &Fixed::new().with(CPU, 75.0), None, &none);
    assert_eq!(d.new_capacity, 6, "{}", d.reason);
    assert!(d.target_tracking_acted);
    assert_eq!(d.reason, "Percentage CPU avg 5m target 50 = 75: desired ceil(4 ready × 75 / 50) = 6 (4 → 6)");
    // The two new ones are warming up: the average over the 4 ready ones is still 75, but the
    // desired 6 is already the capacity, so no second scale-out.
    let d = eval_full(&s, t0(), 6, 4, &Fixed::new().with(CPU, 75.0), None, &none);
    assert_eq!(d.new_capacity, 6, "{}", d.reason);
    // No scale-in while instances warm up, even on a low average.
    let d = eval_full(&s, t0(), 6, 4, &Fixed::new().with(CPU, 10.0), None, &none);
    assert_eq!(d.new_capacity, 6, "{}", d.reason);
    assert!(d.reason.contains("warming up"), "{}", d.reason);
    // Once all are ready: 6 × 20 / 50 = 2.4 → 3.
    let d = eval_full(&s, t0(), 6, 6, &Fixed::new().with(CPU, 20.0), None, &none);
    assert_eq!(d.new_capacity, 3, "{}", d.reason);
    assert_eq!(d.direction, ScaleDirection::Decrease);
    // Bounded by the profile.
    let d = eval_full(&s, t0(), 10, 10, &Fixed::new().with(CPU, 100.0), None, &none);
    assert_eq!(d.new_capacity, 20);
    // No ready instance: no target-tracking decision.
    let d = eval_full(&s, t0(), 3, 0, &Fixed::new().with(CPU, 90.0), None, &none);
    assert_eq!(d.new_capacity, 3, "{}", d.reason);
}

#[test]
fn target_tracking_totals_and_cooldowns() {
    let mut s = one(0, 20, 0, vec![]);
    s.target_tracking = Some(tracking(JOBS, 100.0));
    let none = BTreeMap::new();
    // 950 messages, 100 per instance: 10.
    let d = eval_full(&s, t0(), 2, 2, &Fixed::new().with(JOBS, 950.0), None, &none);
    assert_eq!(d.new_capacity, 10, "{}", d.reason);
    assert_eq!(d.reason, "source/jobs avg 5m target 100 per instance = 950: desired ceil(950 / 100) = 10 (2 → 10)");
    // From zero: one message means one instance.
    assert_eq!(eval_full(&s, t0(), 0, 0, &Fixed::new().with(JOBS, 1.0), None, &none).new_capacity, 1);
    // An empty queue takes the set to zero.
    assert_eq!(eval_full(&s, t0(), 3, 3, &Fixed::new().with(JOBS, 0.0), None, &none).new_capacity, 0);
    // Scale-out cooldown only follows a scale-out.
    let q = Fixed::new().with(JOBS, 950.0);
    assert_eq!(eval_full(&s, t0(), 2, 2, &q, last(2, ScaleDirection::Increase), &none).new_capacity, 2);
    assert_eq!(eval_full(&s, t0(), 2, 2, &q, last(2, ScaleDirection::Decrease), &none).new_capacity, 10);
    assert_eq!(eval_full(&s, t0(), 2, 2, &q, last(3, ScaleDirection::Increase), &none).new_capacity, 10);
    // Scale-in cooldown follows any scale action.
    let q = Fixed::new().with(JOBS, 100.0);
    assert_eq!(eval_full(&s, t0(), 5, 5, &q, last(4, ScaleDirection::Increase), &none).new_capacity, 5);
    assert_eq!(eval_full(&s, t0(), 5, 5, &q, last(5, ScaleDirection::Decrease), &none).new_capacity, 1);
    // disableScaleIn.
    s.target_tracking.as_mut().unwrap().disable_scale_in = true;
    assert_eq!(eval_full(&s, t0(), 5, 5, &q, None, &none).new_capacity, 5);
}

#[test]
fn target_tracking_votes_with_scale_in_rules() {
    let mut s = one(1, 20, 1, vec![inn(CPU, 30.0, 1)]);
    s.target_tracking = Some(tracking(CPU, 50.0));
    let none = BTreeMap::new();
    // Tracking wants 3 (6 × 20 / 50 = 2.4), the rule fires: the smaller reduction (-1 → 5).
    let d = eval_full(&s, t0(), 6, 6, &Fixed::new().with(CPU, 20.0), None, &none);
    assert_eq!(d.new_capacity, 5, "{}", d.reason);
    // The rule does not fire (CPU 35): no scale-in even though tracking wants 5.
    let d = eval_full(&s, t0(), 6, 6, &Fixed::new().with(CPU, 35.0), None, &none);
    assert_eq!(d.new_capacity, 6, "{}", d.reason);
    // Scale-out: tracking or a rule, the larger.
    let mut s = one(1, 20, 1, vec![out(CPU, 90.0, 1)]);
    s.target_tracking = Some(tracking(CPU, 50.0));
    let d = eval_full(&s, t0(), 4, 4, &Fixed::new().with(CPU, 95.0), None, &none);
    assert_eq!(d.new_capacity, 8, "{}", d.reason);
    assert!(d.target_tracking_acted && d.acted_rules.is_empty());
    assert_eq!(d.evaluations.last().unwrap().rule, None);
}
