//! Profile selection: priority, recurrences that run until the next start, IANA and Windows
//! time zones, and the Europe/Prague DST changes of March and October 2026.

use super::fixtures::*;
use crate::model::*;
use crate::schedule::*;
use chrono::{Duration, NaiveDate, Weekday};

/// az-style workhours: a recurrence at 08:00 Mon–Fri in Europe/Prague, plus the profile `az`
/// writes for `--end 18:00` (a copy of the default starting at 18:00), plus the default.
fn workhours() -> AutoscaleSetting {
    let default = profile("default", 2, 10, 2, vec![out(CPU, 70.0, 1)]);
    let mut work = profile("workhours", 4, 20, 4, vec![out(CPU, 70.0, 2)]);
    let days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"];
    work.recurrence = Some(recurrence("Europe/Prague", &days, 8, 0));
    let end = end_profile(&default, "workhours", &work.recurrence.as_ref().unwrap().schedule, 18, 0);
    setting(vec![default, work, end])
}

fn active(s: &AutoscaleSetting, at: chrono::DateTime<chrono::Utc>) -> String {
    select_profile(s, at).map(|(_, p, _)| p.name.clone()).unwrap_or_default()
}

const OFF: &str = r#"{"name":"default","for":"workhours"}"#;

#[test]
fn workhours_across_the_march_dst_change() {
    let s = workhours();
    s.validate().unwrap();
    // Friday 27 March 2026, CET (UTC+1): 08:00 local is 07:00 UTC.
    assert_eq!(active(&s, utc(2026, 3, 27, 6, 59)), OFF);
    assert_eq!(active(&s, utc(2026, 3, 27, 7, 0)), "workhours");
    // 18:00 CET is 17:00 UTC.
    assert_eq!(active(&s, utc(2026, 3, 27, 16, 59)), "workhours");
    assert_eq!(active(&s, utc(2026, 3, 27, 17, 0)), OFF);
    // The weekend, including Sunday 29 March when the clocks go forward: off.
    assert_eq!(active(&s, utc(2026, 3, 28, 12, 0)), OFF);
    assert_eq!(active(&s, utc(2026, 3, 29, 7, 30)), OFF);
    // Monday 30 March 2026, CEST (UTC+2): 08:00 local is 06:00 UTC.
    assert_eq!(active(&s, utc(2026, 3, 30, 5, 59)), OFF);
    assert_eq!(active(&s, utc(2026, 3, 30, 6, 0)), "workhours");
    assert_eq!(active(&s, utc(2026, 3, 30, 15, 59)), "workhours");
    assert_eq!(active(&s, utc(2026, 3, 30, 16, 0)), OFF);
}

#[test]
fn workhours_across_the_october_dst_change() {
    let s = workhours();
    // Friday 23 October 2026, CEST: 08:00 = 06:00 UTC.
    assert_eq!(active(&s, utc(2026, 10, 23, 5, 59)), OFF);
    assert_eq!(active(&s, utc(2026, 10, 23, 6, 0)), "workhours");
    // Sunday 25 October, the clocks go back: off all day.
    assert_eq!(active(&s, utc(2026, 10, 25, 9, 0)), OFF);
    // Monday 26 October, CET: 08:00 = 07:00 UTC.
    assert_eq!(active(&s, utc(2026, 10, 26, 6, 30)), OFF);
    assert_eq!(active(&s, utc(2026, 10, 26, 7, 0)), "workhours");
    assert_eq!(active(&s, utc(2026, 10, 26, 17, 0)), OFF);
}

#[test]
fn start_times_inside_dst_gaps_and_overlaps() {
    let base = profile("default", 1, 5, 1, vec![]);
    // 02:30 on Sunday 29 March 2026 does not exist in Prague: it starts when the gap ends,
    // 03:00 CEST = 01:00 UTC.
    let mut night = profile("night", 3, 5, 3, vec![]);
    night.recurrence = Some(recurrence("Europe/Prague", &["Sunday"], 2, 30));
    let r = night.recurrence.clone().unwrap();
    let s = setting(vec![base.clone(), night.clone()]);
    assert_eq!(last_recurrence_start(&r, utc(2026, 3, 29, 1, 0)), Some(utc(2026, 3, 29, 1, 0)));
    assert_eq!(last_recurrence_start(&r, utc(2026, 3, 29, 0, 59)), Some(utc(2026, 3, 22, 1, 30)));
    assert_eq!(active(&s, utc(2026, 3, 29, 1, 0)), "night");
    // 02:30 on Sunday 25 October 2026 happens twice: it starts at the first, 00:30 UTC (CEST).
    assert_eq!(last_recurrence_start(&r, utc(2026, 10, 25, 0, 30)), Some(utc(2026, 10, 25, 0, 30)));
    assert_eq!(last_recurrence_start(&r, utc(2026, 10, 25, 0, 29)), Some(utc(2026, 10, 18, 0, 30)));
    assert_eq!(last_recurrence_start(&r, utc(2026, 10, 25, 1, 45)), Some(utc(2026, 10, 25, 0, 30)));
    // And in a normal week it is 02:30 CET = 01:30 UTC.
    assert_eq!(last_recurrence_start(&r, utc(2026, 11, 2, 0, 0)), Some(utc(2026, 11, 1, 1, 30)));
}

#[test]
fn time_zones_iana_and_windows() {
    // The same 09:00 Monday start in three zones.
    let r = |tz: &str| recurrence(tz, &["Mon"], 9, 0);
    let monday = |h, m| utc(2026, 1, 5, h, m);
    assert_eq!(last_recurrence_start(&r("America/New_York"), monday(23, 0)), Some(monday(14, 0)));
    assert_eq!(last_recurrence_start(&r("Eastern Standard Time"), monday(23, 0)), Some(monday(14, 0)));
    assert_eq!(last_recurrence_start(&r("Asia/Tokyo"), monday(23, 0)), Some(monday(0, 0)));
    assert_eq!(last_recurrence_start(&r("W. Europe Standard Time"), monday(23, 0)), Some(monday(8, 0)));
    assert_eq!(last_recurrence_start(&r("UTC"), monday(23, 0)), Some(monday(9, 0)));
    assert_eq!(last_recurrence_start(&r("europe/prague"), monday(23, 0)), Some(monday(8, 0)));
    // One minute before Monday 09:00 in Tokyo (Monday 00:00 UTC), the last start is a week old.
    assert_eq!(last_recurrence_start(&r("Asia/Tokyo"), utc(2026, 1, 4, 23, 59)), Some(utc(2025, 12, 29, 0, 0)));
    assert!(parse_time_zone("Mars/Olympus_Mons").is_none());
    assert_eq!(parse_day("thu"), Some(Weekday::Thu));
    assert_eq!(parse_day("Sunday"), Some(Weekday::Sun));
    assert_eq!(parse_day("Sonntag"), None);
    // Three letters or the whole name, any case; nothing in between.
    assert_eq!(parse_day(" WEDnesday "), Some(Weekday::Wed));
    assert_eq!(parse_day("tues"), None);
}

#[test]
fn priority_fixed_date_then_recurrence_then_default() {
    let default = profile("default", 1, 5, 1, vec![]);
    let mut weekend = profile("weekend", 1, 2, 1, vec![]);
    weekend.recurrence = Some(recurrence("UTC", &["Saturday"], 0, 0));
    let mut weekdays = profile("weekdays", 2, 8, 2, vec![]);
    weekdays.recurrence = Some(recurrence("UTC", &["Monday"], 0, 0));
    let mut sale = profile("sale", 10, 50, 10, vec![]);
    sale.fixed_date = Some(FixedDate {
        time_zone: "Europe/Prague".into(),
        start: "2026-11-27T00:00:00".into(),
        end: "2026-11-30T00:00:00".into(),
    });
    // Only the default at first.
    let s = setting(vec![default.clone()]);
    assert_eq!(active(&s, utc(2026, 11, 28, 12, 0)), "default");
    let s = setting(vec![default, weekend, weekdays, sale]);
    s.validate().unwrap();
    // Saturday 28 November: inside the sale (fixed date beats the weekend recurrence).
    assert_eq!(active(&s, utc(2026, 11, 28, 12, 0)), "sale");
    // The sale starts at midnight Prague time = 23:00 UTC the day before.
    assert_eq!(active(&s, utc(2026, 11, 26, 22, 59)), "weekdays");
    assert_eq!(active(&s, utc(2026, 11, 26, 23, 0)), "sale");
    // The end is exclusive.
    assert_eq!(active(&s, utc(2026, 11, 29, 22, 59)), "sale");
    assert_eq!(active(&s, utc(2026, 11, 29, 23, 0)), "weekend");
    // Recurrences run until the next one starts.
    assert_eq!(active(&s, utc(2026, 12, 5, 0, 0)), "weekend");
    assert_eq!(active(&s, utc(2026, 12, 6, 23, 59)), "weekend");
    assert_eq!(active(&s, utc(2026, 12, 7, 0, 0)), "weekdays");
    assert_eq!(active(&s, utc(2026, 12, 11, 23, 0)), "weekdays");
    // The evaluator uses the active profile's bounds.
    let d = eval_full(&s, utc(2026, 11, 28, 12, 0), 3, 3, &Fixed::new(), None, &Default::default());
    assert_eq!((d.profile.as_str(), d.new_capacity), ("sale", 10));
    let d = eval_full(&s, utc(2026, 12, 5, 12, 0), 3, 3, &Fixed::new(), None, &Default::default());
    assert_eq!((d.profile.as_str(), d.new_capacity), ("weekend", 2));
}

#[test]
fn fixed_date_parsing() {
    let tz = parse_time_zone("Europe/Prague").unwrap();
    assert_eq!(parse_fixed_date_time("2026-07-01T10:00:00Z", tz), Some(utc(2026, 7, 1, 10, 0)));
    assert_eq!(parse_fixed_date_time("2026-07-01T10:00:00+02:00", tz), Some(utc(2026, 7, 1, 8, 0)));
    assert_eq!(parse_fixed_date_time("2026-07-01T10:00:00", tz), Some(utc(2026, 7, 1, 8, 0)));
    assert_eq!(parse_fixed_date_time("2026-01-01 10:00", tz), Some(utc(2026, 1, 1, 9, 0)));
    assert_eq!(parse_fixed_date_time("2026-01-01", tz), Some(utc(2025, 12, 31, 23, 0)));
    assert_eq!(parse_fixed_date_time("tomorrow", tz), None);
    let d = NaiveDate::from_ymd_opt(2026, 3, 29).unwrap().and_hms_opt(2, 30, 0).unwrap();
    assert_eq!(resolve_local(tz, d), utc(2026, 3, 29, 1, 0));
    assert_eq!(resolve_local(tz, d) - utc(2026, 3, 29, 0, 0), Duration::hours(1));
}
