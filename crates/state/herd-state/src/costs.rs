//! The cost meter as stored (one [`MeterDoc`] per scale set), and cost reports and Prometheus
//! counters read from it. The meter itself (`herd-billing`) writes the docs; the API reads the
//! reports, so both the stored type and the report live in the state layer.
//!
//! Why reports read the stored meters rather than the live records: what a set cost is what the
//! meter billed, including sets since deleted and time the server was down, and a report must
//! agree with the counters and with itself across restarts.
//!
//! A report over a period (`since`) sums the hourly buckets, so it starts at the hour `since`
//! falls in (`from` says so); without `since` it shows the lifetime totals, which are not
//! bounded by the buckets' retention.

use crate::keys::{GroupKey, SetKey};
use crate::records::{Records, StateError};
use chrono::{DateTime, Duration, Utc};
use herd_model::scale_set::Priority;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How long hourly buckets are kept.
pub const RETENTION_DAYS: i64 = 90;

/// One instance as the previous tick saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mark {
    /// Billed up to here.
    pub since: DateTime<Utc>,
    pub billable: bool,
    pub priority: Priority,
    pub sku: String,
}

/// Usage in one hour at one SKU and priority.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bucket {
    /// The start of the hour (UTC).
    pub hour: DateTime<Utc>,
    pub sku: String,
    pub priority: Priority,
    pub instance_seconds: f64,
    /// USD.
    pub cost: f64,
}

/// Usage since the meter began, per SKU and priority; never pruned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Total {
    pub sku: String,
    pub priority: Priority,
    pub instance_seconds: f64,
    pub cost: f64,
}

/// The meter of one scale set, stored under its set key (`group/set`; see
/// `herd_state::Records::put_meter`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeterDoc {
    pub resource_group: String,
    pub scale_set: String,
    /// When the meter last billed this set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_tick: Option<DateTime<Utc>>,
    /// When the meter first found the set gone (cleared if a set of that name returns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_deleted_at: Option<DateTime<Utc>>,
    /// Per instance id: its state at the last tick.
    #[serde(default)]
    pub marks: BTreeMap<u64, Mark>,
    /// Hourly usage, sorted by hour, SKU and priority; at most [`RETENTION_DAYS`] old.
    #[serde(default)]
    pub hours: Vec<Bucket>,
    /// Lifetime usage per SKU and priority.
    #[serde(default)]
    pub lifetime: Vec<Total>,
}

/// The start of the hour `t` falls in.
pub fn hour_of(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp().div_euclid(3600) * 3600, 0).unwrap_or(t)
}

/// The oldest hour bucket kept at `now`.
pub fn retention_start(now: DateTime<Utc>) -> DateTime<Utc> {
    hour_of(now) - Duration::days(RETENTION_DAYS)
}

/// The currency every price is in.
pub const CURRENCY: &str = "USD";

/// Usage of one set at one SKU and priority.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CostRow {
    pub resource_group: String,
    pub scale_set: String,
    pub sku: String,
    pub priority: Priority,
    /// Hours of billable instance time (4 decimals).
    pub instance_hours: f64,
    /// Cost in `currency` (6 decimals).
    pub cost: f64,
    /// The set has been deleted; its meter is kept so its cost stays visible.
    #[serde(default)]
    pub set_deleted: bool,
}

/// Sums over the rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CostTotal {
    pub instance_hours: f64,
    pub cost: f64,
}

/// Instance-hours and cost by set, SKU and priority, with totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CostReport {
    /// `USD`.
    pub currency: String,
    /// Where the period starts: `since` rounded down to the hour (the meter keeps hourly
    /// usage). Absent: everything metered since the meter began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<DateTime<Utc>>,
    /// Usage is counted up to here: the meter's latest tick over the reported sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub through: Option<DateTime<Utc>>,
    pub rows: Vec<CostRow>,
    pub total: CostTotal,
    /// Anything the reader should know about the numbers (a period beyond retention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

fn round(v: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (v * f).round() / f
}

/// Reads the meters of every set (`group`: of one group; `group` and `set`: of one set) and
/// sums their usage at or after the hour of `since` (None: lifetime totals).
pub fn report<S: Records + ?Sized>(
    store: &S,
    group: Option<&str>,
    set: Option<&str>,
    since: Option<DateTime<Utc>>,
) -> Result<CostReport, StateError> {
    let docs: Vec<MeterDoc> = match (group, set) {
        (Some(g), Some(s)) => {
            // Names that are not valid cannot have a meter.
            match SetKey::from_parts(g, s) {
                Ok(k) => store.meter::<MeterDoc>(&k)?.map(|o| o.value).into_iter().collect(),
                Err(_) => Vec::new(),
            }
        }
        (Some(g), None) => store.meters_of_group::<MeterDoc>(&GroupKey::new(g))?.into_iter().map(|o| o.value).collect(),
        (None, s) => store
            .meters::<MeterDoc>()?
            .into_iter()
            .map(|o| o.value)
            .filter(|d| s.is_none_or(|s| d.scale_set == s))
            .collect(),
    };
    Ok(summarize(&docs, since))
}

/// [`report`] over meters already read.
pub fn summarize(docs: &[MeterDoc], since: Option<DateTime<Utc>>) -> CostReport {
    let from = since.map(hour_of);
    let through = docs.iter().filter_map(|d| d.last_tick).max();
    // (group, set, sku, priority) → (instance-seconds, cost, set deleted)
    type RowKey = (String, String, String, Priority);
    let mut sums: BTreeMap<RowKey, (f64, f64, bool)> = BTreeMap::new();
    for d in docs {
        let mut add =
            |sku: &str, priority: Priority, secs: f64, cost: f64| {
                let e = sums
                    .entry((d.resource_group.clone(), d.scale_set.clone(), sku.to_string(), priority))
                    .or_insert((0.0, 0.0, d.set_deleted_at.is_some()));
                e.0 += secs;
                e.1 += cost;
            };
        match from {
            Some(from) => {
                for b in d.hours.iter().filter(|b| b.hour >= from) {
                    add(&b.sku, b.priority, b.instance_seconds, b.cost);
                }
            }
            None => {
                for t in &d.lifetime {
                    add(&t.sku, t.priority, t.instance_seconds, t.cost);
                }
            }
        }
    }
    let mut total = CostTotal::default();
    let rows = sums
        .into_iter()
        .map(|((resource_group, scale_set, sku, priority), (secs, cost, set_deleted))| {
            total.instance_hours += secs / 3600.0;
            total.cost += cost;
            CostRow {
                resource_group,
                scale_set,
                sku,
                priority,
                instance_hours: round(secs / 3600.0, 4),
                cost: round(cost, 6),
                set_deleted,
            }
        })
        .collect();
    let total = CostTotal { instance_hours: round(total.instance_hours, 4), cost: round(total.cost, 6) };
    let note = match (from, through) {
        (Some(f), Some(t)) if f < retention_start(t) => Some(format!(
            "hourly usage is kept for {RETENTION_DAYS} days: this report covers {} onwards; omit since for lifetime totals",
            retention_start(t).to_rfc3339()
        )),
        _ => None,
    };
    CostReport { currency: CURRENCY.into(), from, through, rows, total, note }
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The report as Prometheus counters, `herd_instance_hours_total` and `herd_cost_total`,
/// labelled `group`, `set`, `sku` and `priority`. Give it a lifetime report (`since` None):
/// those totals only ever grow, as counters must.
pub fn prometheus(report: &CostReport) -> String {
    let mut out = String::new();
    let series = [
        (
            "herd_instance_hours_total",
            "Billable instance-hours (instances holding compute; overprovisioned extras excluded).",
            true,
        ),
        ("herd_cost_total", "Metered cost in USD.", false),
    ];
    for (name, help, hours) in series {
        out += &format!("# HELP {name} {help}\n# TYPE {name} counter\n");
        for r in &report.rows {
            out += &format!(
                "{name}{{group=\"{}\",set=\"{}\",sku=\"{}\",priority=\"{}\"}} {}\n",
                label(&r.resource_group),
                label(&r.scale_set),
                label(&r.sku),
                r.priority,
                if hours { r.instance_hours } else { r.cost }
            );
        }
    }
    out
}

/// `since` cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not allowed; use a duration back from now such as 90m, 24h or 7d (units s, m, h, d, w), or an RFC 3339 time such as 2026-01-01T00:00:00Z")]
pub struct SinceError(pub String);

/// Parses `since`: a duration back from `now` (`90m`, `24h`, `7d`, `2w`, `30s`) or an RFC 3339
/// instant.
pub fn parse_since(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, SinceError> {
    let s = s.trim();
    let bad = || SinceError(s.to_string());
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let unit_secs: i64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    let d = n.checked_mul(unit_secs).and_then(Duration::try_seconds).ok_or_else(bad)?;
    if n == 0 {
        return Err(bad());
    }
    now.checked_sub_signed(d).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_forms() {
        let now = DateTime::parse_from_rfc3339("2026-01-10T12:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(parse_since("24h", now).unwrap().to_rfc3339(), "2026-01-09T12:00:00+00:00");
        assert_eq!(parse_since("7d", now).unwrap().to_rfc3339(), "2026-01-03T12:00:00+00:00");
        assert_eq!(parse_since("90m", now).unwrap().to_rfc3339(), "2026-01-10T10:30:00+00:00");
        assert_eq!(parse_since("2026-01-01T00:00:00Z", now).unwrap().to_rfc3339(), "2026-01-01T00:00:00+00:00");
        for bad in ["", "h", "24", "24 hours", "-1h", "0h", "1y", "99999999999999999999d", "yesterday"] {
            let e = parse_since(bad, now).unwrap_err().to_string();
            assert!(e.contains("24h") && e.contains("RFC 3339"), "{bad}: {e}");
        }
    }

    #[test]
    fn prometheus_lines() {
        let r = CostReport {
            currency: CURRENCY.into(),
            from: None,
            through: None,
            rows: vec![CostRow {
                resource_group: "rg".into(),
                scale_set: "web".into(),
                sku: "Standard_B1ms".into(),
                priority: Priority::Spot,
                instance_hours: 2.5,
                cost: 0.01025,
                set_deleted: false,
            }],
            total: CostTotal { instance_hours: 2.5, cost: 0.01025 },
            note: None,
        };
        let text = prometheus(&r);
        assert!(text.contains(
            "herd_instance_hours_total{group=\"rg\",set=\"web\",sku=\"Standard_B1ms\",priority=\"Spot\"} 2.5\n"
        ));
        assert!(text
            .contains("herd_cost_total{group=\"rg\",set=\"web\",sku=\"Standard_B1ms\",priority=\"Spot\"} 0.01025\n"));
        assert!(text.contains("# TYPE herd_cost_total counter\n"));
    }

    #[test]
    fn report_reads_the_stored_meters() {
        use crate::records::Expected;
        use crate::testkit::{group, set_name};
        let store = crate::testkit::store();
        let doc = MeterDoc {
            resource_group: "rg".into(),
            scale_set: "web".into(),
            lifetime: vec![Total {
                sku: "Standard_B1ms".into(),
                priority: Priority::Regular,
                instance_seconds: 7200.0,
                cost: 0.5,
            }],
            ..Default::default()
        };
        store.put_meter(&SetKey::new(group("rg"), set_name("web")), &doc, Expected::Absent).unwrap();
        let r = report(&store, Some("rg"), Some("web"), None).unwrap();
        assert_eq!(r.rows.len(), 1);
        assert_eq!(r.total, CostTotal { instance_hours: 2.0, cost: 0.5 });
        assert_eq!(report(&store, Some("rg"), None, None).unwrap(), r, "the group's report is the set's");
        assert!(report(&store, Some("other"), None, None).unwrap().rows.is_empty());
        assert!(
            report(&store, Some("rg"), Some("bad name!"), None).unwrap().rows.is_empty(),
            "an invalid name has no meter"
        );
    }
}
