//! Waiting for convergence with a progress line, for every mutating command and `vmss wait`.

use anyhow::{bail, Result};
use herd_client::{is_not_found, set_path, Client};
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
///
/// During a scale-in the set briefly holds more instances than its capacity, before the
/// reconciler has marked the surplus for deletion: those are shown as deleting already, never
/// as "50/5 running". Which ones go is the scale-in policy's choice; instances that never got
/// ready go first, so the surplus is taken from the failed, creating and updating counts before
/// the running one.
pub fn describe(set: &Value) -> String {
    let s = &set["instanceSummary"];
    let capacity = n(s, "capacity");
    let mut surplus = n(s, "instances").saturating_sub(capacity);
    let mut count = |k: &str| {
        let c = n(s, k);
        let taken = c.min(surplus);
        surplus -= taken;
        c - taken
    };
    let failed = count("failed");
    let creating = count("creating");
    let updating = count("updating");
    let deallocated = count("deallocated");
    let stopped = count("stopped");
    let running = count("running");
    let deleting = n(s, "deleting") + n(s, "instances").saturating_sub(capacity);
    let mut parts = vec![format!("{running}/{capacity} running")];
    for (c, label) in [
        (creating, "creating"),
        (updating, "updating"),
        (stopped, "stopped"),
        (deallocated, "deallocated"),
        (failed, "failed"),
        (deleting, "deleting"),
        (n(s, "overprovisioned"), "overprovisioned extras"),
    ] {
        if c > 0 {
            parts.push(format!("{c} {label}"));
        }
    }
    let latest = n(s, "latestModel");
    let total = n(s, "instances").min(capacity);
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

#[cfg(test)]
mod tests {
    use super::describe;
    use serde_json::json;

    fn set(summary: serde_json::Value) -> serde_json::Value {
        json!({ "instanceSummary": summary })
    }

    #[test]
    fn scale_in_before_the_surplus_is_marked_shows_it_as_deleting() {
        // The capacity dropped from 50 to 5; the reconciler has not picked the 45 yet.
        let s = set(json!({"capacity": 5, "instances": 50, "running": 50, "latestModel": 50}));
        assert_eq!(describe(&s), "5/5 running, 45 deleting");
    }

    #[test]
    fn scale_in_under_way_counts_marked_and_unmarked_surplus_once() {
        let s = set(json!({"capacity": 5, "instances": 20, "running": 20, "deleting": 30, "latestModel": 20}));
        assert_eq!(describe(&s), "5/5 running, 45 deleting");
        let done = set(json!({"capacity": 5, "instances": 5, "running": 5, "deleting": 45, "latestModel": 5}));
        assert_eq!(describe(&done), "5/5 running, 45 deleting");
    }

    #[test]
    fn scale_in_takes_instances_that_never_got_ready_first() {
        let s = set(json!({"capacity": 5, "instances": 13, "running": 3, "creating": 10, "latestModel": 13}));
        assert_eq!(describe(&s), "3/5 running, 2 creating, 8 deleting");
    }

    #[test]
    fn scale_out_shows_what_is_being_created() {
        let s = set(json!({"capacity": 50, "instances": 50, "running": 3, "creating": 47,
                           "overprovisioned": 10, "latestModel": 50}));
        assert_eq!(describe(&s), "3/50 running, 47 creating, 10 overprovisioned extras");
        let start = set(json!({"capacity": 50, "instances": 5, "running": 5, "latestModel": 5}));
        assert_eq!(describe(&start), "5/50 running");
    }

    #[test]
    fn an_upgrade_shows_how_many_run_the_latest_model() {
        let s = set(json!({"capacity": 4, "instances": 4, "running": 3, "updating": 1, "latestModel": 2}));
        assert_eq!(describe(&s), "3/4 running, 1 updating, 2/4 on latest model");
    }
}
