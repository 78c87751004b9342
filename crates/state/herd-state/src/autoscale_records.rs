//! The autoscaler's stored records as the API shows them: named metric sources, each
//! setting's runtime state and evaluation history, the metric names herd samples, and where a
//! setting's target lives.
//!
//! Why here: the autoscaler (`herd-autoscaler`) writes these records and the API reads and
//! validates against them; the state layer owns every stored type, so both name them here.

use chrono::{DateTime, Utc};
use herd_autoscale::{AutoscaleState, Decision};
use serde::{Deserialize, Serialize};

/// The metrics herd samples per scale set.
pub const CPU: &str = "Percentage CPU";
pub const MEMORY: &str = "Memory Used Bytes";
pub const NET_IN: &str = "Network In Total";
pub const NET_OUT: &str = "Network Out Total";
pub const LB_NEW_CONNECTIONS: &str = "LB New Connections Per Second";
pub const LB_ACTIVE_CONNECTIONS: &str = "LB Active Connections";

/// The names of the metrics herd samples, in the order `herd-autoscaler`'s `METRICS` defines them.
pub const METRIC_NAMES: &[&str] = &[CPU, MEMORY, NET_IN, NET_OUT, LB_NEW_CONNECTIONS, LB_ACTIVE_CONNECTIONS];

/// Whether `name` is a metric herd samples (names compare without case).
pub fn is_sampled_metric(name: &str) -> bool {
    METRIC_NAMES.iter().any(|m| m.eq_ignore_ascii_case(name))
}

/// A named metric source as stored (its protected settings are sealed apart, under
/// `Kind::Secret` at `source/<group>/<name>`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoredSource {
    pub name: String,
    pub group: String,
    /// `redis`, `nats-jetstream`, `postgresql`, `http-json`, `prometheus`.
    pub kind: String,
    pub endpoint: String,
    #[schema(value_type = Object)]
    pub settings: serde_json::Value,
    /// The last sample's outcome: `ok` or the error (never a secret).
    #[serde(default)]
    pub health: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sample_at: Option<DateTime<Utc>>,
}

/// One evaluation as `autoscale history` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub time: DateTime<Utc>,
    #[schema(value_type = Object)]
    pub decision: Decision,
    /// Set when the new capacity could not be written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A setting's persisted runtime state: the engine's state and the recent history.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SettingRuntime {
    #[schema(value_type = Object)]
    pub state: AutoscaleState,
    pub history: Vec<HistoryEntry>,
}

/// Where a setting's target lives: `.../resourceGroups/<g>/.../virtualMachineScaleSets/<n>`,
/// or plain `<g>/<n>`.
pub fn parse_target(uri: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = uri.trim_matches('/').split('/').collect();
    let g = parts.iter().position(|p| p.eq_ignore_ascii_case("resourceGroups")).and_then(|i| parts.get(i + 1));
    let n = parts.iter().position(|p| p.eq_ignore_ascii_case("virtualMachineScaleSets")).and_then(|i| parts.get(i + 1));
    match (g, n) {
        (Some(g), Some(n)) => Some((g.to_string(), n.to_string())),
        _ if parts.len() == 2 => Some((parts[0].to_string(), parts[1].to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_metric_names() {
        let uri = "/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/web";
        assert_eq!(parse_target(uri), Some(("rg".into(), "web".into())));
        assert_eq!(parse_target("rg/web"), Some(("rg".into(), "web".into())));
        assert_eq!(parse_target("a/b/c"), None);
        assert!(is_sampled_metric("percentage cpu"));
        assert!(!is_sampled_metric("Coffee"));
    }
}
