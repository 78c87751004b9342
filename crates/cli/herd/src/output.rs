//! Output formats as in `az`: `-o json|jsonc|table|tsv|none`, with `--query` taking a JMESPath
//! expression. Table output uses a per-command column shape unless `--query` is given.

use anyhow::{anyhow, Result};
use serde_json::Value;
use std::io::IsTerminal;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Pretty JSON (the default).
    Json,
    /// Pretty JSON, coloured on a terminal.
    Jsonc,
    /// Aligned columns for people.
    Table,
    /// Tab-separated values for scripts (`--query id -o tsv`).
    Tsv,
    /// Nothing.
    None,
}

/// How a command shows its result (the `-o` format and `--query` applied), given the table
/// columns to use for `-o table`.
pub type Print<'a> = &'a dyn Fn(&Value, Option<Columns<'_>>) -> anyhow::Result<()>;

/// Applies `query` (JMESPath) to `value`.
pub fn apply_query(value: &Value, query: &str) -> Result<Value> {
    let expr = jmespath::compile(query).map_err(|e| anyhow!("--query: {e}"))?;
    let data = jmespath::Variable::from_json(&value.to_string()).map_err(|e| anyhow!("--query: {e}"))?;
    let result = expr.search(data).map_err(|e| anyhow!("--query: {e}"))?;
    Ok(serde_json::to_value(&*result)?)
}

/// Table columns: a header and the JMESPath expression that fills it, per row.
pub type Columns<'a> = &'a [(&'a str, &'a str)];

fn project(v: &Value, cols: Columns<'_>) -> Result<Value> {
    let row = |item: &Value| -> Result<Value> {
        let mut m = serde_json::Map::new();
        for (head, expr) in cols {
            m.insert(head.to_string(), apply_query(item, expr)?);
        }
        Ok(Value::Object(m))
    };
    match v {
        Value::Array(items) => Ok(Value::Array(items.iter().map(row).collect::<Result<_>>()?)),
        other => row(other),
    }
}

/// Renders `value` in `format`. `columns` shape the table when the user gave no query.
pub fn render(value: &Value, format: Format, query: Option<&str>, columns: Option<Columns<'_>>) -> Result<String> {
    let mut v = match query {
        Some(q) => apply_query(value, q)?,
        None => value.clone(),
    };
    if format == Format::Table && query.is_none() {
        if let Some(cols) = columns {
            v = project(&v, cols)?;
        }
    }
    Ok(match format {
        Format::None => String::new(),
        Format::Json => format!("{}\n", serde_json::to_string_pretty(&v)?),
        Format::Jsonc => {
            let text = serde_json::to_string_pretty(&v)?;
            if std::io::stdout().is_terminal() {
                colour(&text)
            } else {
                text + "\n"
            }
        }
        Format::Tsv => tsv(&v),
        Format::Table => table(&v),
    })
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some(String::new()),
        Value::Bool(b) => Some(if *b { "True".into() } else { "False".into() }),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn tsv(v: &Value) -> String {
    let line = |v: &Value| -> String {
        match v {
            Value::Object(m) => m.values().filter_map(scalar).collect::<Vec<_>>().join("\t"),
            Value::Array(a) => a.iter().filter_map(scalar).collect::<Vec<_>>().join("\t"),
            other => scalar(other).unwrap_or_default(),
        }
    };
    match v {
        Value::Array(items) => items.iter().map(|i| line(i) + "\n").collect(),
        Value::Null => String::new(),
        other => line(other) + "\n",
    }
}

/// `provisioningState` → `ProvisioningState`.
fn header(key: &str) -> String {
    let mut c = key.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

fn table(v: &Value) -> String {
    let rows: Vec<&serde_json::Map<String, Value>> = match v {
        Value::Array(items) => items.iter().filter_map(Value::as_object).collect(),
        Value::Object(m) => vec![m],
        Value::Null => return String::new(),
        other => return scalar(other).unwrap_or_else(|| other.to_string()) + "\n",
    };
    if rows.is_empty() {
        if let Value::Array(items) = v {
            return items.iter().filter_map(scalar).map(|s| s + "\n").collect();
        }
        return String::new();
    }
    let mut cols: Vec<String> = Vec::new();
    for r in &rows {
        for (k, val) in r.iter() {
            if scalar(val).is_some() && !cols.contains(k) {
                cols.push(k.clone());
            }
        }
    }
    let cells: Vec<Vec<String>> =
        rows.iter().map(|r| cols.iter().map(|c| r.get(c).and_then(scalar).unwrap_or_default()).collect()).collect();
    let heads: Vec<String> = cols.iter().map(|c| header(c)).collect();
    let widths: Vec<usize> = (0..cols.len())
        .map(|i| cells.iter().map(|r| r[i].chars().count()).chain([heads[i].len()]).max().unwrap_or(0))
        .collect();
    let fmt_row = |r: &[String]| -> String {
        let mut line = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ");
        line.truncate(line.trim_end().len());
        line + "\n"
    };
    let mut out = fmt_row(&heads);
    out += &fmt_row(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>());
    for r in &cells {
        out += &fmt_row(r);
    }
    out
}

fn colour(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if let Some((k, rest)) = line.split_once("\": ") {
            out += &format!("\x1b[36m{k}\"\x1b[0m: \x1b[32m{rest}\x1b[0m\n");
        } else {
            out += line;
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn query_and_tsv() {
        let v = json!({"id": "/subscriptions/x", "name": "web"});
        assert_eq!(render(&v, Format::Tsv, Some("id"), None).unwrap(), "/subscriptions/x\n");
        let list = json!([{"a": 1, "b": "x", "c": {"d": 1}}, {"a": 2, "b": "y"}]);
        assert_eq!(render(&list, Format::Tsv, None, None).unwrap(), "1\tx\n2\ty\n");
        assert_eq!(render(&list, Format::Json, Some("[].a"), None).unwrap(), "[\n  1,\n  2\n]\n");
        assert!(render(&list, Format::Json, Some("[?"), None).is_err());
    }

    #[test]
    fn table_uses_shape_and_aligns() {
        let list = json!([{"instanceId": "0", "powerState": "running"}, {"instanceId": "12", "powerState": "stopped"}]);
        let t = render(&list, Format::Table, None, Some(&[("Id", "instanceId"), ("Power", "powerState")])).unwrap();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "Id  Power");
        assert_eq!(lines[2], "0   running");
        assert_eq!(lines[3], "12  stopped");
        let t = render(&list, Format::Table, None, None).unwrap();
        assert!(t.starts_with("InstanceId  PowerState"));
    }
}
