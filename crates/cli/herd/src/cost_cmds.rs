//! `herd vmss cost` and `herd cost`: instance-hours and money by set, SKU and priority, as the
//! server's meter recorded them.
//!
//! Why the table is built here rather than from column expressions: it ends with a total line
//! and shows numbers rounded for people (cost to 4 decimals), while `-o json` (and `--query`)
//! get the API's report untouched, with its exact figures.

use crate::cli::SetRef;
use crate::output::{self, Format};
use anyhow::{Context, Result};
use clap::Args;
use herd_billing::CostReport;
use herd_client::{enc, set_path, Client};
use serde_json::{json, Map, Value};

/// `herd vmss cost -g RG -n NAME [--since 24h]`.
#[derive(Debug, Args)]
pub struct VmssCostArgs {
    #[command(flatten)]
    pub set: SetRef,
    /// The period: back from now (90m, 24h, 7d) or since an RFC 3339 time; rounded down to the
    /// hour. Default: everything since the meter began.
    #[arg(long)]
    pub since: Option<String>,
}

/// `herd cost [--group RG] [--since 24h]`.
#[derive(Debug, Args)]
pub struct CostArgs {
    /// Only this resource group's scale sets.
    #[arg(short = 'g', long = "group", visible_alias = "resource-group")]
    pub group: Option<String>,
    /// The period: back from now (90m, 24h, 7d) or since an RFC 3339 time; rounded down to the
    /// hour. Default: everything since the meter began.
    #[arg(long)]
    pub since: Option<String>,
}

fn with_since(path: String, since: Option<&str>, first: bool) -> String {
    match since {
        Some(s) => format!("{path}{}since={}", if first { '?' } else { '&' }, enc(s)),
        None => path,
    }
}

/// Shows one scale set's cost.
pub async fn vmss_cost(client: &Client, format: Format, query: Option<&str>, a: VmssCostArgs) -> Result<()> {
    let path = with_since(format!("{}/cost", set_path(&a.set.group, &a.set.name)), a.since.as_deref(), true);
    let v = client.get(&path).await?;
    show(&v, format, query, false)
}

/// Shows the cost of every scale set, or of one group's.
pub async fn cost(client: &Client, format: Format, query: Option<&str>, a: CostArgs) -> Result<()> {
    let (path, first) = match &a.group {
        Some(g) => (format!("/v1/cost?group={}", enc(g)), false),
        None => ("/v1/cost".to_string(), true),
    };
    let v = client.get(&with_since(path, a.since.as_deref(), first)).await?;
    show(&v, format, query, true)
}

fn show(v: &Value, format: Format, query: Option<&str>, with_group: bool) -> Result<()> {
    if format != Format::Table || query.is_some() {
        print!("{}", output::render(v, format, query, None)?);
        return Ok(());
    }
    let report: CostReport = serde_json::from_value(v.clone()).context("the server's cost report is not understood")?;
    print!("{}", table(&report, with_group)?);
    Ok(())
}

/// The report as a table: Set, SKU, Priority, Instance-hours, Cost (USD), then a total line and
/// the period covered.
fn table(r: &CostReport, with_group: bool) -> Result<String> {
    let row = |group: &str, set: String, sku: &str, priority: &str, hours: f64, cost: f64| {
        let mut m = Map::new();
        if with_group {
            m.insert("Group".into(), json!(group));
        }
        m.insert("Set".into(), json!(set));
        m.insert("SKU".into(), json!(sku));
        m.insert("Priority".into(), json!(priority));
        m.insert("Instance-hours".into(), json!(format!("{hours:.4}")));
        m.insert(format!("Cost ({})", r.currency), json!(format!("{cost:.4}")));
        Value::Object(m)
    };
    let mut rows: Vec<Value> = r
        .rows
        .iter()
        .map(|x| {
            let set = if x.set_deleted { format!("{} (deleted)", x.scale_set) } else { x.scale_set.clone() };
            row(&x.resource_group, set, &x.sku, x.priority.as_str(), x.instance_hours, x.cost)
        })
        .collect();
    rows.push(row("", "Total".into(), "", "", r.total.instance_hours, r.total.cost));
    let mut out = output::render(&Value::Array(rows), Format::Table, None, None)?;
    match (r.from, r.through) {
        (Some(f), Some(t)) => out += &format!("From {} (the hour --since falls in) through {}.\n", rfc(f), rfc(t)),
        (Some(f), None) => out += &format!("From {} (the hour --since falls in).\n", rfc(f)),
        (None, Some(t)) => out += &format!("Everything metered, through {}.\n", rfc(t)),
        (None, None) => {}
    }
    if let Some(n) = &r.note {
        out += &format!("Note: {n}.\n");
    }
    Ok(out)
}

fn rfc(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_the_columns_and_a_total_line() {
        let v = json!({
            "currency": "USD",
            "through": "2026-01-02T00:00:00Z",
            "rows": [
                {"resourceGroup": "rg", "scaleSet": "web", "sku": "Standard_B1ms", "priority": "Regular",
                 "instanceHours": 10.0, "cost": 0.207, "setDeleted": false},
                {"resourceGroup": "rg", "scaleSet": "old", "sku": "Standard_B1ms", "priority": "Spot",
                 "instanceHours": 2.5, "cost": 0.01026, "setDeleted": true}
            ],
            "total": {"instanceHours": 12.5, "cost": 0.21726}
        });
        let r: CostReport = serde_json::from_value(v).unwrap();
        let t = table(&r, false).unwrap();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["Set", "SKU", "Priority", "Instance-hours", "Cost", "(USD)"]
        );
        assert!(lines[2].starts_with("web ") && lines[2].ends_with("0.2070"), "{t}");
        assert!(lines[3].starts_with("old (deleted)"), "{t}");
        assert!(lines[4].starts_with("Total") && lines[4].contains("12.50") && lines[4].ends_with("0.2173"), "{t}");
        assert!(lines[5].contains("through 2026-01-02T00:00:00Z"), "{t}");
        assert!(table(&r, true).unwrap().starts_with("Group"));
    }

    #[test]
    fn since_goes_in_the_query() {
        assert_eq!(with_since("/v1/cost".into(), Some("24h"), true), "/v1/cost?since=24h");
        assert_eq!(
            with_since("/v1/cost?group=rg".into(), Some("2026-01-01T00:00:00+01:00"), false),
            "/v1/cost?group=rg&since=2026-01-01T00:00:00%2B01:00"
        );
    }
}
