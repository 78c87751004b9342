//! Which profile is active at a given instant: fixed-date first, then recurrence, then default.
//!
//! Why its own module: schedules are where autoscalers get time zones and daylight-saving
//! changes wrong, so all wall-clock arithmetic lives here, is table-tested, and goes through
//! `chrono-tz`. Azure's semantics are kept: a recurrence profile has only start times and runs
//! until the next profile starts (`az monitor autoscale profile create --end` writes a second
//! profile at the end time, see [`end_profile`]).
//!
//! Daylight saving: a start time that falls in a spring-forward gap (02:30 on the last Sunday
//! of March in Europe/Prague) starts when the gap ends (03:00 local); one that falls in the
//! autumn overlap (02:30 on the last Sunday of October happens twice) starts at its first
//! occurrence.

use crate::model::{AutoscaleSetting, Profile, Recurrence, RecurrenceFrequency, RecurrentSchedule};
use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;

/// Windows time-zone names (as Azure's API writes them) mapped to IANA zones, following CLDR's
/// `windowsZones` table for the "001" territory.
const WINDOWS_ZONES: &[(&str, &str)] = &[
    ("Dateline Standard Time", "Etc/GMT+12"),
    ("UTC-11", "Etc/GMT+11"),
    ("Hawaiian Standard Time", "Pacific/Honolulu"),
    ("Alaskan Standard Time", "America/Anchorage"),
    ("Pacific Standard Time (Mexico)", "America/Tijuana"),
    ("Pacific Standard Time", "America/Los_Angeles"),
    ("US Mountain Standard Time", "America/Phoenix"),
    ("Mountain Standard Time", "America/Denver"),
    ("Central America Standard Time", "America/Guatemala"),
    ("Central Standard Time", "America/Chicago"),
    ("Central Standard Time (Mexico)", "America/Mexico_City"),
    ("Canada Central Standard Time", "America/Regina"),
    ("SA Pacific Standard Time", "America/Bogota"),
    ("Eastern Standard Time", "America/New_York"),
    ("Eastern Standard Time (Mexico)", "America/Cancun"),
    ("Atlantic Standard Time", "America/Halifax"),
    ("SA Western Standard Time", "America/La_Paz"),
    ("Pacific SA Standard Time", "America/Santiago"),
    ("Newfoundland Standard Time", "America/St_Johns"),
    ("E. South America Standard Time", "America/Sao_Paulo"),
    ("Argentina Standard Time", "America/Argentina/Buenos_Aires"),
    ("UTC-02", "Etc/GMT+2"),
    ("Azores Standard Time", "Atlantic/Azores"),
    ("Cape Verde Standard Time", "Atlantic/Cape_Verde"),
    ("UTC", "Etc/UTC"),
    ("Coordinated Universal Time", "Etc/UTC"),
    ("GMT Standard Time", "Europe/London"),
    ("Greenwich Standard Time", "Atlantic/Reykjavik"),
    ("W. Europe Standard Time", "Europe/Berlin"),
    ("Central Europe Standard Time", "Europe/Budapest"),
    ("Romance Standard Time", "Europe/Paris"),
    ("Central European Standard Time", "Europe/Warsaw"),
    ("W. Central Africa Standard Time", "Africa/Lagos"),
    ("GTB Standard Time", "Europe/Bucharest"),
    ("Middle East Standard Time", "Asia/Beirut"),
    ("Egypt Standard Time", "Africa/Cairo"),
    ("E. Europe Standard Time", "Europe/Chisinau"),
    ("South Africa Standard Time", "Africa/Johannesburg"),
    ("FLE Standard Time", "Europe/Kiev"),
    ("Israel Standard Time", "Asia/Jerusalem"),
    ("Arabic Standard Time", "Asia/Baghdad"),
    ("Turkey Standard Time", "Europe/Istanbul"),
    ("Arab Standard Time", "Asia/Riyadh"),
    ("Russian Standard Time", "Europe/Moscow"),
    ("E. Africa Standard Time", "Africa/Nairobi"),
    ("Iran Standard Time", "Asia/Tehran"),
    ("Arabian Standard Time", "Asia/Dubai"),
    ("Pakistan Standard Time", "Asia/Karachi"),
    ("India Standard Time", "Asia/Kolkata"),
    ("Nepal Standard Time", "Asia/Kathmandu"),
    ("Bangladesh Standard Time", "Asia/Dhaka"),
    ("SE Asia Standard Time", "Asia/Bangkok"),
    ("China Standard Time", "Asia/Shanghai"),
    ("Singapore Standard Time", "Asia/Singapore"),
    ("W. Australia Standard Time", "Australia/Perth"),
    ("Taipei Standard Time", "Asia/Taipei"),
    ("Tokyo Standard Time", "Asia/Tokyo"),
    ("Korea Standard Time", "Asia/Seoul"),
    ("Cen. Australia Standard Time", "Australia/Adelaide"),
    ("AUS Central Standard Time", "Australia/Darwin"),
    ("E. Australia Standard Time", "Australia/Brisbane"),
    ("AUS Eastern Standard Time", "Australia/Sydney"),
    ("Tasmania Standard Time", "Australia/Hobart"),
    ("New Zealand Standard Time", "Pacific/Auckland"),
    ("Tonga Standard Time", "Pacific/Tongatapu"),
];

/// An IANA zone name (`Europe/Prague`, exact or any case) or a Windows one
/// (`W. Europe Standard Time`, as Azure writes them).
pub fn parse_time_zone(name: &str) -> Option<Tz> {
    let name = name.trim();
    if let Ok(tz) = name.parse::<Tz>() {
        return Some(tz);
    }
    if let Some((_, iana)) = WINDOWS_ZONES.iter().find(|(w, _)| w.eq_ignore_ascii_case(name)) {
        return iana.parse().ok();
    }
    chrono_tz::TZ_VARIANTS.iter().copied().find(|tz| tz.name().eq_ignore_ascii_case(name))
}

/// `Monday` or `Mon` (any case): chrono's own weekday names.
pub fn parse_day(day: &str) -> Option<Weekday> {
    day.trim().parse().ok()
}

/// A `fixedDate.start/end`: RFC 3339 with an offset is absolute; a date-time without one
/// (`2026-12-24T08:00:00`, `2026-12-24 08:00`, or a bare date) is read in `tz`.
pub fn parse_fixed_date_time(s: &str, tz: Tz) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let naive = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .or_else(|| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)))?;
    Some(resolve_local(tz, naive))
}

/// A local wall-clock time as an instant, DST-correct: a time in a spring-forward gap maps to
/// the end of the gap; an ambiguous one (autumn overlap) to its first occurrence.
pub fn resolve_local(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        LocalResult::None => {
            // In a gap: walk forward minute by minute to the first wall-clock time that exists
            // (gaps are at most a few hours); that is the instant the clocks jumped.
            let mut probe = local;
            for _ in 0..(24 * 60) {
                probe += Duration::minutes(1);
                if let Some(t) = tz.from_local_datetime(&probe).earliest() {
                    return t.with_timezone(&Utc);
                }
            }
            Utc.from_utc_datetime(&local)
        }
    }
}

/// The latest start of `recurrence` at or before `now`, looking back eight days (a weekly
/// schedule always has one in that span). `None` when the schedule is empty or invalid.
pub fn last_recurrence_start(recurrence: &Recurrence, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let RecurrenceFrequency::Week = recurrence.frequency;
    let s: &RecurrentSchedule = &recurrence.schedule;
    let tz = parse_time_zone(&s.time_zone)?;
    let days: Vec<Weekday> = s.days.iter().filter_map(|d| parse_day(d)).collect();
    let today = now.with_timezone(&tz).date_naive();
    let mut best: Option<DateTime<Utc>> = None;
    for back in 0..=8 {
        let Some(date) = today.checked_sub_signed(Duration::days(back)) else { continue };
        if !days.contains(&date.weekday()) {
            continue;
        }
        for &h in &s.hours {
            for &m in &s.minutes {
                let Some(time) = NaiveTime::from_hms_opt(h, m, 0) else { continue };
                let start = resolve_local(tz, date.and_time(time));
                if start <= now && best.is_none_or(|b| start > b) {
                    best = Some(start);
                }
            }
        }
        if best.is_some() {
            // Earlier dates cannot hold a later start... except across a DST gap that shifted a
            // time forward, which moves it by at most a few hours within the same date.
            break;
        }
    }
    best
}

/// Why a profile is active, for history and `autoscale show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActiveBecause {
    /// Inside its fixed date (start inclusive, end exclusive).
    FixedDate,
    /// Its recurrence started last, at this instant.
    Recurrence(DateTime<Utc>),
    /// Nothing else applies.
    Default,
}

/// The profile in force at `now`: the first fixed-date profile whose window holds `now`; else
/// the recurrence profile that started most recently (ties go to the earlier profile); else the
/// default profile. `None` only when the setting has no profile that applies (no default and
/// no schedule covering `now`).
pub fn select_profile(setting: &AutoscaleSetting, now: DateTime<Utc>) -> Option<(usize, &Profile, ActiveBecause)> {
    for (i, p) in setting.profiles.iter().enumerate() {
        if let Some(fd) = &p.fixed_date {
            let Some(tz) = parse_time_zone(&fd.time_zone) else { continue };
            let (Some(start), Some(end)) = (parse_fixed_date_time(&fd.start, tz), parse_fixed_date_time(&fd.end, tz))
            else {
                continue;
            };
            if start <= now && now < end {
                return Some((i, p, ActiveBecause::FixedDate));
            }
        }
    }
    let mut best: Option<(usize, DateTime<Utc>)> = None;
    for (i, p) in setting.profiles.iter().enumerate() {
        if let Some(r) = &p.recurrence {
            if let Some(start) = last_recurrence_start(r, now) {
                if best.is_none_or(|(_, b)| start > b) {
                    best = Some((i, start));
                }
            }
        }
    }
    if let Some((i, start)) = best {
        return Some((i, &setting.profiles[i], ActiveBecause::Recurrence(start)));
    }
    setting.profiles.iter().enumerate().find(|(_, p)| p.is_default()).map(|(i, p)| (i, p, ActiveBecause::Default))
}

/// What `az monitor autoscale profile create --recurrence ... --end HH:MM` writes besides the
/// profile itself: a copy of the default profile that starts at the end time on the same days,
/// named the way `az` names it (`{"name": "<default>", "for": "<profile>"}`), so the
/// recurrence "ends" when this one starts.
pub fn end_profile(
    default: &Profile,
    for_profile: &str,
    schedule: &RecurrentSchedule,
    end_hour: u32,
    end_minute: u32,
) -> Profile {
    let name = serde_json::json!({ "name": default.name, "for": for_profile }).to_string();
    Profile {
        name,
        capacity: default.capacity,
        rules: default.rules.clone(),
        recurrence: Some(Recurrence {
            frequency: RecurrenceFrequency::Week,
            schedule: RecurrentSchedule {
                time_zone: schedule.time_zone.clone(),
                days: schedule.days.clone(),
                hours: vec![end_hour],
                minutes: vec![end_minute],
            },
        }),
        fixed_date: None,
    }
}
