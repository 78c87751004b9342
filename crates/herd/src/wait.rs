//! Waiting for convergence with a progress line, for every mutating command and `vmss wait`.

use crate::client::{is_not_found, set_path, Client};
use anyhow::{bail, Result};
use serde_json::Value;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// What to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Exists and converged (every instance in its goal state, count = capacity).
    Created,
    /// Converged and every instance on the latest model.
    Updated,
    /// Gone.
    Deleted,
}

fn n(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

/// A one-line description of a set's progress.
pub fn describe(set: &Value) -> String {
    let s = &set["instanceSummary"];
    let mut parts = vec![format!("{}/{} running", n(s, "running"), n(s, "capacity"))];
    for (k, label) in [
        ("creating", "creating"),
        ("updating", "updating"),
        ("stopped", "stopped"),
        ("deallocated", "deallocated"),
        ("failed", "failed"),
        ("deleting", "deleting"),
        ("overprovisioned", "overprovisioned extras"),
    ] {
        if n(s, k) > 0 {
            parts.push(format!("{} {label}", n(s, k)));
        }
    }
    let latest = n(s, "latestModel");
    let total = n(s, "instances");
    if latest < total {
        parts.push(format!("{latest}/{total} on latest model"));
    }
    parts.join(", ")
}

fn done(set: &Value, until: Until) -> bool {
    let s = &set["instanceSummary"];
    let converged = s["converged"].as_bool().unwrap_or(false);
    match until {
        Until::Created => converged,
        Until::Updated => converged && n(s, "latestModel") == n(s, "instances"),
        Until::Deleted => false,
    }
}

/// Polls the set until `until` holds, printing progress to stderr. Fails on timeout, or at once
/// when creation is suspended.
pub async fn wait(
    client: &Client,
    group: &str,
    name: &str,
    until: Until,
    timeout: Duration,
    quiet: bool,
) -> Result<Option<Value>> {
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last = String::new();
    let spinner = ['|', '/', '-', '\\'];
    let mut tick = 0usize;
    let path = set_path(group, name);
    loop {
        let set = match client.get(&path).await {
            Ok(v) => Some(v),
            Err(e) if is_not_found(&e) => None,
            Err(e) => return Err(e),
        };
        let (finished, line) = match (&set, until) {
            (None, Until::Deleted) => (true, format!("{name}: deleted")),
            (None, _) => bail!("scale set '{name}' does not exist in resource group '{group}'"),
            (Some(s), Until::Deleted) => (false, format!("{name}: deleting ({})", describe(s))),
            (Some(s), u) => {
                if let Some(reason) = s["instanceSummary"]["suspended"]["reason"].as_str() {
                    if !quiet && tty {
                        eprintln!();
                    }
                    bail!("{name}: instance creation is suspended: {reason}. Fix the cause, then change the scale set (for example 'herd vmss update --set tags.retry=1') to resume");
                }
                (done(s, u), format!("{name}: {}", describe(s)))
            }
        };
        if !quiet {
            let secs = start.elapsed().as_secs();
            if tty {
                eprint!("\r\x1b[2K{} {line} ({secs}s)", if finished { '✓' } else { spinner[tick % 4] });
                if finished {
                    eprintln!();
                }
                let _ = std::io::stderr().flush();
            } else if line != last || finished {
                eprintln!("{line}");
            }
        }
        last = line;
        tick += 1;
        if finished {
            return Ok(set);
        }
        if start.elapsed() >= timeout {
            if !quiet && tty {
                eprintln!();
            }
            bail!("timed out after {}s waiting for {name}: {last}", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
