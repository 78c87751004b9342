//! Counters of the data plane, their serialisable snapshot and Prometheus rendering.
//!
//! Why it exists: the autoscaler (connections per instance), the API (`lb show --stats`) and
//! operators (Prometheus scrapes) all read the same numbers. The hot path only does relaxed
//! atomic adds on counters owned by the rule and the backend; everything else happens when
//! somebody asks.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Counters shared by rules and backends.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub active: AtomicU64,
    pub total: AtomicU64,
    pub failed_connects: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// Rule-level counters: the shared ones plus rejections by reason.
#[derive(Debug, Default)]
pub(crate) struct RuleCounters {
    pub c: Counters,
    pub rejected_limit: AtomicU64,
    pub rejected_no_backend: AtomicU64,
    pub rejected_connect_failed: AtomicU64,
    pub rejected_denied: AtomicU64,
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Whether a rule is a load-balancing rule or an inbound NAT rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RuleKind {
    Rule,
    Nat,
}

impl RuleKind {
    fn as_str(self) -> &'static str {
        match self {
            RuleKind::Rule => "rule",
            RuleKind::Nat => "nat",
        }
    }
}

/// A backend's place in its rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BackendStatus {
    /// In the Maglev table: receives new connections.
    Active,
    /// Marked draining in the snapshot: existing connections only.
    Draining,
    /// No longer in the snapshot but still has connections (shown until they are gone and the
    /// next apply prunes it).
    Removed,
}

/// Snapshot of all counters, for the API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LbStats {
    /// Sorted by rule name.
    pub rules: Vec<RuleStats>,
}

/// Counters of one rule (or NAT rule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleStats {
    pub name: String,
    pub kind: RuleKind,
    pub frontend: SocketAddr,
    /// Client connections open now (including those still connecting to a backend).
    pub active_connections: u64,
    /// Client connections accepted since the listener started.
    pub connections_total: u64,
    /// Accepted connections closed at once because of `max_connections`.
    pub rejected_limit_total: u64,
    /// Accepted connections closed at once because no backend was active.
    pub rejected_no_backend_total: u64,
    /// Accepted connections closed because every connect attempt failed.
    pub rejected_connect_failed_total: u64,
    /// Accepted connections closed at once because the chosen backend's network security
    /// groups do not admit the client (see `config::Route`).
    #[serde(default)]
    pub rejected_denied_total: u64,
    /// Failed connect attempts to backends (a client connection may make several).
    pub failed_connects_total: u64,
    /// Bytes copied client → backend.
    pub bytes_in_total: u64,
    /// Bytes copied backend → client.
    pub bytes_out_total: u64,
    /// Sorted by id.
    pub backends: Vec<BackendStats>,
}

/// Counters of one backend within one rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendStats {
    pub id: String,
    pub addr: SocketAddr,
    pub status: BackendStatus,
    pub active_connections: u64,
    /// Successful connects to this backend.
    pub connections_total: u64,
    pub failed_connects_total: u64,
    pub bytes_in_total: u64,
    pub bytes_out_total: u64,
}

fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

impl LbStats {
    /// Renders Prometheus text exposition format (version 0.0.4).
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        type RuleMetric = (&'static str, &'static str, &'static str, fn(&RuleStats) -> u64);
        let rule_metrics: [RuleMetric; 6] = [
            ("herd_lb_rule_active_connections", "gauge", "Client connections open now.", |r| r.active_connections),
            ("herd_lb_rule_connections_total", "counter", "Client connections accepted.", |r| r.connections_total),
            ("herd_lb_rule_failed_connects_total", "counter", "Failed connect attempts to backends.", |r| {
                r.failed_connects_total
            }),
            ("herd_lb_rule_bytes_in_total", "counter", "Bytes copied client to backend.", |r| r.bytes_in_total),
            ("herd_lb_rule_bytes_out_total", "counter", "Bytes copied backend to client.", |r| r.bytes_out_total),
            ("herd_lb_rule_info", "gauge", "Frontend and kind of each rule (always 1).", |_| 1),
        ];
        for (name, kind, help, value) in rule_metrics {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for r in &self.rules {
                let rule = escape(&r.name);
                if name == "herd_lb_rule_info" {
                    let _ = writeln!(
                        out,
                        "{name}{{rule=\"{rule}\",frontend=\"{}\",kind=\"{}\"}} 1",
                        r.frontend,
                        r.kind.as_str()
                    );
                } else {
                    let _ = writeln!(out, "{name}{{rule=\"{rule}\"}} {}", value(r));
                }
            }
        }
        let name = "herd_lb_rule_rejected_connections_total";
        let _ = writeln!(out, "# HELP {name} Accepted connections closed at once, by reason.\n# TYPE {name} counter");
        for r in &self.rules {
            let rule = escape(&r.name);
            for (reason, v) in [
                ("limit", r.rejected_limit_total),
                ("no_backend", r.rejected_no_backend_total),
                ("connect_failed", r.rejected_connect_failed_total),
                ("denied", r.rejected_denied_total),
            ] {
                let _ = writeln!(out, "{name}{{rule=\"{rule}\",reason=\"{reason}\"}} {v}");
            }
        }

        type BackendMetric = (&'static str, &'static str, &'static str, fn(&BackendStats) -> u64);
        let backend_metrics: [BackendMetric; 6] = [
            ("herd_lb_backend_active_connections", "gauge", "Connections open now.", |b| b.active_connections),
            ("herd_lb_backend_connections_total", "counter", "Successful connects.", |b| b.connections_total),
            ("herd_lb_backend_failed_connects_total", "counter", "Failed connect attempts.", |b| {
                b.failed_connects_total
            }),
            ("herd_lb_backend_bytes_in_total", "counter", "Bytes copied client to backend.", |b| b.bytes_in_total),
            ("herd_lb_backend_bytes_out_total", "counter", "Bytes copied backend to client.", |b| b.bytes_out_total),
            (
                "herd_lb_backend_draining",
                "gauge",
                "1 when the backend gets no new connections (draining or removed).",
                |b| u64::from(b.status != BackendStatus::Active),
            ),
        ];
        for (name, kind, help, value) in backend_metrics {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for r in &self.rules {
                let rule = escape(&r.name);
                for b in &r.backends {
                    let _ = writeln!(out, "{name}{{rule=\"{rule}\",backend=\"{}\"}} {}", escape(&b.id), value(b));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn renders_help_type_and_samples() {
        let stats = LbStats {
            rules: vec![RuleStats {
                name: "web".into(),
                kind: RuleKind::Rule,
                frontend: "127.64.0.1:80".parse().unwrap(),
                active_connections: 3,
                connections_total: 10,
                rejected_limit_total: 1,
                rejected_no_backend_total: 0,
                rejected_connect_failed_total: 0,
                rejected_denied_total: 0,
                failed_connects_total: 2,
                bytes_in_total: 100,
                bytes_out_total: 200,
                backends: vec![BackendStats {
                    id: "vm-1".into(),
                    addr: "127.128.0.2:80".parse().unwrap(),
                    status: BackendStatus::Draining,
                    active_connections: 3,
                    connections_total: 9,
                    failed_connects_total: 2,
                    bytes_in_total: 100,
                    bytes_out_total: 200,
                }],
            }],
        };
        let text = stats.to_prometheus();
        assert!(text.contains("# TYPE herd_lb_backend_active_connections gauge"));
        assert!(text.contains("herd_lb_backend_active_connections{rule=\"web\",backend=\"vm-1\"} 3\n"));
        assert!(text.contains("herd_lb_rule_rejected_connections_total{rule=\"web\",reason=\"limit\"} 1\n"));
        assert!(text.contains("herd_lb_backend_draining{rule=\"web\",backend=\"vm-1\"} 1\n"));
        assert!(text.contains("herd_lb_rule_info{rule=\"web\",frontend=\"127.64.0.1:80\",kind=\"rule\"} 1\n"));
        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["rules"][0]["backends"][0]["status"], "draining");
        assert_eq!(json["rules"][0]["frontend"], "127.64.0.1:80");
    }
}
