//! `herd store check` and `herd server status`: the store's health, for the operator.
//!
//! Why offline too: the moment a store is in doubt is often the moment its server does not
//! start (or should not), so `herd store check --data-dir DIR` opens the database read-only
//! and runs the same check as the API's `GET /v1/store/check`, without a server.

use crate::output::{Columns, Format, Print};
use anyhow::{bail, Result};
use clap::Subcommand;
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub enum StoreCmd {
    /// Verify that every stored record decodes and run SQLite's `PRAGMA integrity_check`.
    /// Exits non-zero when anything is wrong. Records that fail are named with their key (a
    /// running server quarantines them: see `herd server status`).
    Check {
        /// Check the database in this data dir directly (read-only; the server may be stopped)
        /// instead of asking the server.
        #[arg(long = "data-dir")]
        data_dir: Option<PathBuf>,
    },
}

const PROBLEM_TABLE: Columns<'static> = &[("Kind", "kind"), ("Key", "key"), ("Reason", "reason")];
const UNMANAGED_TABLE: Columns<'static> = &[("Instance", "key"), ("Since", "since")];
const CONTROLLER_TABLE: Columns<'static> = &[
    ("Controller", "name"),
    ("Phase", "phase"),
    ("Runs", "runs"),
    ("Failures", "failures"),
    ("LastRun", "lastRunAt"),
    ("LastRunMs", "lastRunMs"),
    ("WaitingFor", "waitingFor"),
    ("LastError", "lastError"),
];

/// `herd store check --data-dir DIR`.
pub fn check_offline(dir: &Path, format: Format) -> Result<()> {
    let db = dir.join("herd.db");
    let store = herd_store::SqliteStore::open_read_only(&db).map_err(|e| anyhow::anyhow!("{e}"))?;
    let report =
        herd_api::store_status::check(&store).map_err(|e| anyhow::anyhow!("checking {}: {e}", db.display()))?;
    print_check(&serde_json::to_value(report)?, format, &|v, t| {
        print!("{}", crate::output::render(v, format, None, t)?);
        Ok(())
    })
}

/// Prints a store check; an error (non-zero exit) when it found problems.
pub fn print_check(v: &Value, format: Format, print: Print<'_>) -> Result<()> {
    if matches!(format, Format::Json | Format::Jsonc) {
        print(v, None)?;
    } else {
        println!("Records checked: {}", v["records"]);
        let integrity = v["integrity"].as_array().cloned().unwrap_or_default();
        if integrity.is_empty() {
            println!("SQLite integrity_check: ok");
        } else {
            println!("SQLite integrity_check found {} problem(s):", integrity.len());
            for l in &integrity {
                println!("  {}", l.as_str().unwrap_or_default());
            }
        }
        let header = |n| format!("{n} record(s) cannot be decoded:");
        print_rows(print, &v["undecodable"], "Every record decodes.", header, PROBLEM_TABLE)?;
    }
    if v["ok"] != Value::Bool(true) {
        bail!("the store check found problems");
    }
    Ok(())
}

/// Prints the array `rows` as a table under the line `header(count)`, or the line `none` when
/// it is empty (or absent).
fn print_rows(
    print: Print<'_>,
    rows: &Value,
    none: &str,
    header: impl FnOnce(usize) -> String,
    table: Columns<'_>,
) -> Result<()> {
    match rows.as_array().map_or(0, Vec::len) {
        0 => println!("{none}"),
        n => {
            println!("{}", header(n));
            print(rows, Some(table))?;
        }
    }
    Ok(())
}

/// Prints `herd server status`.
pub fn print_status(v: &Value, format: Format, print: Print<'_>) -> Result<()> {
    if matches!(format, Format::Json | Format::Jsonc) {
        return print(v, None);
    }
    println!("Cluster id: {}", v["clusterId"].as_str().unwrap_or_default());
    println!("Driver: {}", v["driver"].as_str().unwrap_or_default());
    let header =
        |n| format!("Quarantined records ({n}): cannot be decoded; their scale sets are Failed and not reconciled");
    print_rows(print, &v["quarantined"], "Quarantined records: none", header, PROBLEM_TABLE)?;
    let header = |n| format!("Unmanaged instances ({n}): running without a record, never destroyed by herd");
    print_rows(print, &v["unmanagedInstances"], "Unmanaged instances: none", header, UNMANAGED_TABLE)?;
    let c = v["controllers"].as_array().map_or(0, Vec::len);
    println!("Controllers ({c}): each background concern, its last run and what it waits for");
    print(&v["controllers"], Some(CONTROLLER_TABLE))
}
