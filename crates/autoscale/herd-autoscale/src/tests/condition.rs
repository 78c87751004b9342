//! The condition grammar: good inputs, bad inputs with the caret column and token, `--scale`,
//! `--cooldown`, `--timegrain`, and the formatter round trip.

use crate::condition::*;
use crate::model::*;
use chrono::Duration;

#[test]
fn good_conditions() {
    let c = parse_condition("Percentage CPU > 70 avg 5m").unwrap();
    assert_eq!(c.metric_name, "Percentage CPU");
    assert_eq!(c.metric_namespace, None);
    assert_eq!(c.operator, ComparisonOperator::GreaterThan);
    assert_eq!(c.threshold, 70.0);
    assert_eq!(c.time_aggregation, TimeAggregation::Average);
    assert_eq!(c.time_window, Duration::minutes(5));
    assert!(c.dimensions.is_empty());

    let c = parse_condition("\"Percentage CPU\" >= 70.5 max 1h30m").unwrap();
    assert_eq!(
        (c.metric_name.as_str(), c.operator, c.threshold),
        ("Percentage CPU", ComparisonOperator::GreaterThanOrEqual, 70.5)
    );
    assert_eq!((c.time_aggregation, c.time_window), (TimeAggregation::Maximum, Duration::minutes(90)));

    let c = parse_condition("source/jobs > 10 avg 1m").unwrap();
    assert_eq!(c.metric_name, "source/jobs");
    let c = parse_condition("Requests>100 total 30s").unwrap();
    assert_eq!((c.metric_name.as_str(), c.threshold, c.time_aggregation), ("Requests", 100.0, TimeAggregation::Total));
    assert_eq!(c.time_window, Duration::seconds(30));
    let c = parse_condition("  Disk Read Bytes/sec   <= -1.5 min 2h ").unwrap();
    assert_eq!((c.metric_name.as_str(), c.threshold), ("Disk Read Bytes/sec", -1.5));
    let c = parse_condition("Outbound Flows, per instance == 0 count 10m").unwrap();
    assert_eq!(c.metric_name, "Outbound Flows, per instance");
    assert_eq!((c.operator, c.time_aggregation), (ComparisonOperator::Equals, TimeAggregation::Count));

    let c = parse_condition(
        "\"Microsoft.Compute/virtualMachineScaleSets\" Percentage CPU < 30 min 15m where VMName == vm1 or vm2 and Zone != 3",
    )
    .unwrap();
    assert_eq!(c.metric_namespace.as_deref(), Some("Microsoft.Compute/virtualMachineScaleSets"));
    assert_eq!(c.metric_name, "Percentage CPU");
    assert_eq!(c.dimensions.len(), 2);
    assert_eq!(c.dimensions[0].dimension_name, "VMName");
    assert_eq!(c.dimensions[0].operator, DimensionOperator::Equals);
    assert_eq!(c.dimensions[0].values, vec!["vm1", "vm2"]);
    assert_eq!(
        (c.dimensions[1].dimension_name.as_str(), c.dimensions[1].operator),
        ("Zone", DimensionOperator::NotEquals)
    );
    assert_eq!(c.dimensions[1].values, vec!["3"]);
    // az's comma forms: `, V` continues the values, `, NAME ==` starts a new dimension.
    let c = parse_condition("Percentage CPU > 70 avg 5m where VMName == a, b, Zone == 1").unwrap();
    assert_eq!(c.dimensions.len(), 2);
    assert_eq!(c.dimensions[0].values, vec!["a", "b"]);
    assert_eq!(c.dimensions[1].values, vec!["1"]);
}

fn err(c: &str) -> ConditionError {
    parse_condition(c).expect_err(c)
}

/// Each case `(input, column, token, message fragment)` is refused by `parse`, with the caret at
/// the token, the argument named and the input kept whole.
fn points_at<T: std::fmt::Debug>(
    parse: fn(&str) -> Result<T, ConditionError>,
    argument: &str,
    cases: &[(&str, usize, &str, &str)],
) {
    for (c, col, tok, frag) in cases {
        let e = parse(c).expect_err(c);
        assert_eq!((e.column, e.token.as_str(), e.argument.as_str()), (*col, *tok, argument), "{c}: {e}");
        assert!(e.message.contains(frag), "{c}: {}", e.message);
        assert_eq!(e.input, *c);
    }
}

#[test]
fn bad_conditions_point_at_the_token() {
    // (condition, column, token, message fragment)
    let cases = [
        ("Percentage CPU > 70 average 5m", 20, "average", "allowed values: avg, min, max, total, count, last"),
        ("Percentage CPU 70 avg 5m", 15, "70", "allowed values: >, >=, <, <=, ==, !="),
        ("Percentage CPU => 70 avg 5m", 15, "=>", "allowed values: >, >=, <, <=, ==, !="),
        ("Percentage CPU = 70 avg 5m", 15, "=", "unknown operator '='"),
        ("Percentage CPU > seventy avg 5m", 17, "seventy", "not a number"),
        ("Percentage CPU > 70 avg 5x", 24, "5x", "##h##m##s"),
        ("Percentage CPU > 70 avg 0m", 24, "0m", "not a period"),
        ("Percentage CPU > 70 avg 5m30", 24, "5m30", "not a period"),
        ("Percentage CPU > 70 avg", 23, "", "missing the period"),
        ("Percentage CPU > 70", 19, "", "missing the aggregation"),
        ("Percentage CPU >", 16, "", "missing the threshold"),
        ("Percentage CPU > 70 avg 5m when x == y", 27, "when", "expected 'where"),
        ("Percentage CPU > 70 avg 5m where VMName = a", 40, "=", "allowed values: ==, !="),
        ("Percentage CPU > 70 avg 5m where VMName ==", 42, "", "missing a dimension value"),
        ("Percentage CPU > 70 avg 5m where VMName == a b", 45, "b", "expected 'and', 'or' or the end"),
        ("> 70 avg 5m", 0, ">", "expected a metric name"),
        ("source/ > 3 avg 1m", 0, "source/", "write source/NAME"),
        ("\"Percentage CPU > 70 avg 5m", 0, "\"", "unterminated quote"),
        ("", 0, "", "empty condition"),
        ("Percentage CPU", 14, "", "expected a comparison operator"),
    ];
    points_at(parse_condition, "--condition", &cases);
}

#[test]
fn error_display_has_a_caret_under_the_token() {
    let e = err("Percentage CPU > 70 average 5m");
    assert_eq!(
        e.to_string(),
        "invalid --condition: unknown aggregation 'average'; allowed values: avg, min, max, total, count, last\n\
         \x20 Percentage CPU > 70 average 5m\n\
         \x20                     ^^^^^^^"
    );
    // Missing at the end: one caret past the last character.
    let e = err("CPU > 70 avg");
    assert!(e.to_string().ends_with("\n  CPU > 70 avg\n              ^"), "{e}");
}

#[test]
fn scale_actions() {
    let a = parse_scale("out 1").unwrap();
    assert_eq!((a.direction, a.kind, a.value.as_str()), (ScaleDirection::Increase, ScaleType::ChangeCount, "1"));
    let a = parse_scale("in 50%").unwrap();
    assert_eq!(
        (a.direction, a.kind, a.value.as_str()),
        (ScaleDirection::Decrease, ScaleType::PercentChangeCount, "50")
    );
    let a = parse_scale("to 5").unwrap();
    assert_eq!((a.direction, a.kind, a.value.as_str()), (ScaleDirection::None, ScaleType::ExactCount, "5"));
    let a = parse_scale("to 0").unwrap();
    assert_eq!(a.value, "0");
    assert_eq!(a.cooldown, "PT5M");
    // (scale, column, token, message fragment)
    let cases = [
        ("sideways 1", 0, "sideways", "allowed values: in, out, to"),
        ("out x", 4, "x", "not a whole number"),
        ("out -1", 4, "-1", "not a whole number"),
        ("to 5%", 3, "5%", "not a percentage"),
        ("out 0", 4, "0", "allowed: 1 or more"),
        ("out", 3, "", "missing the amount"),
        ("out 1 2", 6, "2", "unexpected '2'"),
        ("to 5000", 3, "5000", "allowed: 0 to 1000"),
    ];
    assert_eq!(
        parse_scale("to 5%").unwrap_err().to_string(),
        "invalid --scale: 'to' takes an instance count, not a percentage; e.g. 'to 5'\n  to 5%\n     ^^"
    );
    points_at(parse_scale, "--scale", &cases);
}

#[test]
fn rules_from_cli_arguments() {
    let r = parse_rule("Percentage CPU > 70 avg 5m", "out 1", None, None).unwrap();
    let m = &r.metric_trigger;
    assert_eq!((m.time_grain.as_str(), m.statistic, m.time_window.as_str()), ("PT1M", Statistic::Average, "PT5M"));
    assert_eq!(r.scale_action.cooldown, "PT5M");
    let r = parse_rule("source/jobs > 10 total 10m", "out 20%", Some(10.0), Some("max 30s")).unwrap();
    assert_eq!(r.metric_trigger.time_grain, "PT30S");
    assert_eq!(r.metric_trigger.statistic, Statistic::Max);
    assert_eq!(r.scale_action.cooldown, "PT10M");
    let r = parse_rule("x > 1 avg 1m", "in 1", Some(0.5), Some("1m")).unwrap();
    assert_eq!(r.scale_action.cooldown, "PT30S");
    // A window shorter than the grain points at the period.
    let e = parse_rule("Percentage CPU > 70 avg 30s", "out 1", None, Some("avg 1m")).unwrap_err();
    assert_eq!((e.column, e.token.as_str()), (24, "30s"));
    assert!(e.message.contains("shorter than the time grain 1m"), "{}", e.message);
    let e = parse_rule("Percentage CPU > 70 avg 5m", "out 1", None, Some("median 1m")).unwrap_err();
    assert_eq!((e.argument.as_str(), e.column, e.token.as_str()), ("--timegrain", 0, "median"));
    let e = parse_rule("Percentage CPU > 70 avg 5m", "out 1", Some(-1.0), None).unwrap_err();
    assert_eq!(e.argument, "--cooldown");
    // Every rule the CLI builds validates.
    let mut s = super::fixtures::one(1, 10, 1, vec![]);
    s.profiles[0].rules.push(parse_rule("Percentage CPU > 70 avg 5m", "out 1", Some(5.0), None).unwrap());
    s.profiles[0].rules.push(parse_rule("source/jobs <= 0 avg 1m", "to 0", Some(1.0), Some("avg 15s")).unwrap());
    s.profiles[0].capacity.minimum = 0;
    s.validate().unwrap();
}

#[test]
fn conditions_round_trip_through_the_formatter() {
    for c in [
        "Percentage CPU > 70 avg 5m",
        "source/jobs >= 0.5 total 1h30m",
        "\"Microsoft.Compute/virtualMachineScaleSets\" Percentage CPU < 30 min 15m where VMName == vm1 or vm2 and Zone != 3",
        "\"a>b\" != -3 last 30s",
        "Requests == 1e3 count 2m where \"Backend Pool\" == \"pool one\"",
    ] {
        let t = parse_condition(c).unwrap().into_trigger(Statistic::Average, Duration::seconds(30));
        let again = parse_condition(&format_condition(&t)).unwrap().into_trigger(Statistic::Average, Duration::seconds(30));
        assert_eq!(t, again, "{c} → {}", format_condition(&t));
    }
    let t =
        parse_condition("Percentage CPU > 70 avg 5m").unwrap().into_trigger(Statistic::Average, Duration::minutes(1));
    assert_eq!(format_condition(&t), "Percentage CPU > 70 avg 5m");
}

#[test]
fn periods_and_numbers() {
    assert_eq!(parse_period("5m"), Some(Duration::minutes(5)));
    assert_eq!(parse_period("1h30m"), Some(Duration::minutes(90)));
    assert_eq!(parse_period("30s"), Some(Duration::seconds(30)));
    assert_eq!(parse_period("1d"), Some(Duration::days(1)));
    assert_eq!(parse_period("PT5M"), Some(Duration::minutes(5)));
    for bad in ["", "5", "m", "5m1h", "5x", "1.5m"] {
        assert_eq!(parse_period(bad), None, "{bad}");
    }
    assert_eq!(format_period(Duration::minutes(90)), "1h30m");
    assert_eq!(format_period(Duration::seconds(30)), "30s");
    assert_eq!(format_number(82.3), "82.3");
    assert_eq!(format_number(70.0), "70");
    assert_eq!(format_number(56.0000001), "56");
    assert_eq!(format_number(0.05), "0.05");
    assert_eq!(format_number(0.00123), "0.00123");
    assert_eq!(format_number(-0.0001), "-0.0001");
}
