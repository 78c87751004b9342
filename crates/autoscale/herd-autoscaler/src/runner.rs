//! The autoscale loop: sample, evaluate each setting with the pure engine, write capacity.
//!
//! Each round re-reads everything from the store (settings, sets, instances, series, sources,
//! each setting's persisted engine state), so it takes no input and survives restarts. The
//! only write it makes to a scale set is its capacity, through a [`CapacityWriter`]: the same
//! path a user's `herd vmss scale` takes (validation, compare-and-swap, activity log). Every
//! evaluation is kept in the setting's history with its inputs and decision.

use crate::sampler::{self, LbStatsProvider, MetricKind, Sampler};
use crate::series::{Aggregation, Series};
use chrono::{DateTime, Utc};
use herd_autoscale::{
    evaluate,
    model::{Dimension, Statistic, TimeAggregation},
    AutoscaleSetting, Decision, MetricAggregation, MetricQuery,
};
use herd_driver::Driver;
use herd_model::{
    clock::Clock,
    instance::{InstanceGoal, InstanceState},
    scale_set::StoredScaleSet,
    sku::SkuTable,
};
// The stored autoscale records are the state layer's (the API shows them).
pub use herd_state::autoscale_records::{parse_target, HistoryEntry, SettingRuntime, StoredSource};
use herd_state::keys::{AutoscaleKey, SeriesKey, SetKey, SourceSecretKey, SourceSeriesKey};
use herd_state::{seal::Sealer, AutoscaleRecords, Expected, Records, State, StateError, Store};
use std::sync::Arc;
use std::time::Duration;

/// Writes a set's capacity the way a user's `scale` does. Implemented by the API layer.
pub trait CapacityWriter: Send + Sync {
    fn set_capacity(&self, group: &str, set: &str, capacity: u64, reason: &str) -> Result<(), String>;
}

/// The key of a source's sealed protected settings.
pub fn source_secret_key(group: &str, name: &str) -> String {
    herd_state::keys::SourceSecretKey::new(group, name).to_string()
}

/// Evaluations kept per setting.
pub const HISTORY_LEN: usize = 200;

/// Tunables of the loop.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// How often settings are evaluated (Azure: 30–60 s).
    pub interval: Duration,
    /// How often metrics are sampled (the finest time grain a rule can use).
    pub sample_interval: Duration,
    /// Deadline of one source sample.
    pub source_timeout: Duration,
    pub skus: SkuTable,
    /// Where webhook notifications may connect (loopback, link-local and herd's own ranges are
    /// refused unless `[autoscale] allow_webhooks_to` allows them).
    pub webhooks: herd_egress::AddressPolicy,
}

/// The config setting that allows more webhook addresses, named in refusals.
pub const WEBHOOK_ALLOW_SETTING: &str = "[autoscale] allow_webhooks_to";

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            sample_interval: Duration::from_secs(15),
            source_timeout: Duration::from_secs(5),
            skus: SkuTable::default(),
            webhooks: herd_egress::AddressPolicy::new(WEBHOOK_ALLOW_SETTING, vec![]),
        }
    }
}

/// The loop.
#[derive(Clone)]
pub struct Runner {
    store: State,
    driver: Arc<dyn Driver>,
    clock: Arc<dyn Clock>,
    sealer: Arc<Sealer>,
    writer: Arc<dyn CapacityWriter>,
    config: RunnerConfig,
    sampler: Arc<Sampler>,
}

/// Metrics read from the stored series of one set (and the group's named sources).
///
/// A window counts only once the series covers it: its first point inside the window must lie
/// within [`coverage_slack`] of the window's start. Until then (a new set, the first
/// minutes after a gap in sampling such as a server restart) the rule reads "no data", so a
/// `> 70 avg 5m` rule acts on five minutes of samples, never on the first one. No data never
/// scales in, and raises the capacity to the default if it is below it.
pub(crate) struct StoreMetrics<'a> {
    pub(crate) store: &'a dyn Store,
    pub(crate) set: &'a StoredScaleSet,
    /// How late after the window's start its first point may be.
    pub(crate) slack: chrono::Duration,
}

/// How late after a window's start its first sample may come for the window to count as
/// covered: one and a half sample intervals (samples are one interval apart, plus jitter), and
/// at least a second.
pub fn coverage_slack(sample_interval: Duration) -> chrono::Duration {
    let ms = (sample_interval.as_millis() as i64).saturating_mul(3) / 2;
    chrono::Duration::milliseconds(ms.max(1000))
}

impl MetricQuery for StoreMetrics<'_> {
    fn aggregate(&self, metric: &str, _dimensions: &[Dimension], how: MetricAggregation) -> Option<f64> {
        let MetricAggregation { statistic, time_grain, window_start, window_end, time_aggregation } = how;
        let series = match metric.strip_prefix("source/") {
            Some(name) => self.store.series::<Series, _>(&SourceSeriesKey::new(self.set.group.as_str(), name)),
            None => self.store.series::<Series, _>(&SeriesKey::new(SetKey::of(self.set), metric)),
        };
        let series = series.ok()??.value;
        let first = series.window(window_start, window_end).next()?;
        if first.time > window_start + self.slack {
            return None; // the series does not cover the window yet
        }
        let kind = sampler::definition(metric).map_or(MetricKind::Gauge, |d| d.kind);
        // Each point of a per-instance metric is already the set's average over its instances
        // at one sample time (with their count); `Sum` and `Count` undo that average. A set
        // total or a source is one value for the whole set: no statistic scales it.
        let how = match time_aggregation {
            TimeAggregation::Average => Aggregation::Average,
            TimeAggregation::Minimum => Aggregation::Minimum,
            TimeAggregation::Maximum => Aggregation::Maximum,
            TimeAggregation::Total => Aggregation::Total,
            TimeAggregation::Count => Aggregation::Count,
            TimeAggregation::Last => Aggregation::Last,
        };
        let scaled = Series {
            points: series
                .window(window_start, window_end)
                .map(|p| {
                    let mut q = *p;
                    q.value = match (statistic, kind) {
                        (Statistic::Count, _) => f64::from(p.count),
                        (Statistic::Sum, MetricKind::Gauge | MetricKind::PerGrainTotal) => p.value * f64::from(p.count),
                        _ => p.value,
                    };
                    q
                })
                .collect(),
        };
        match kind {
            MetricKind::PerGrainTotal => scaled.aggregate_per_grain(window_start, window_end, time_grain, how),
            MetricKind::Gauge | MetricKind::SetTotal => scaled.aggregate(window_start, window_end, how),
        }
    }

    fn is_per_instance(&self, metric: &str) -> bool {
        sampler::is_per_instance(metric)
    }
}

impl Runner {
    /// `store`: an `Arc<dyn Store>` (or any store handle) converts.
    pub fn new(
        store: impl Into<State>,
        driver: Arc<dyn Driver>,
        clock: Arc<dyn Clock>,
        sealer: Arc<Sealer>,
        writer: Arc<dyn CapacityWriter>,
        config: RunnerConfig,
    ) -> Self {
        Self { store: store.into(), driver, clock, sealer, writer, config, sampler: Arc::default() }
    }

    /// Also samples the load-balancer metrics (`LB New Connections Per Second`,
    /// `LB Active Connections`) from `lb`: the server passes its load-balancer controller's
    /// counters. Without it those metrics have no data.
    pub fn with_lb_stats(mut self, lb: Arc<dyn LbStatsProvider>) -> Self {
        self.sampler = Arc::new(Sampler::with_lb_stats(lb));
        self
    }

    /// Its periods and limits (the controller runtime reads them).
    pub fn config(&self) -> &RunnerConfig {
        &self.config
    }

    /// Samples instance metrics and every named source once. The store is read and written on
    /// the blocking pool; the sources are asked here.
    pub async fn sample_once(&self) -> Result<(), StateError> {
        let now = self.clock.now();
        self.sampler.sample(&self.store, &*self.driver, &self.config.skus, now).await?;
        let sources = self
            .store
            .run(|s| {
                let sources = s.metric_sources::<StoredSource>()?.into_iter();
                sources
                    .map(|o| Ok((s.sealed_source_secret(&SourceSecretKey::new(&o.value.group, &o.value.name))?, o)))
                    .collect::<Result<Vec<_>, StateError>>()
            })
            .await?;
        for (sealed, o) in sources {
            let mut src = o.value.clone();
            let protected: serde_json::Value = match sealed {
                Some(sealed) => self.sealer.open(&sealed).unwrap_or(serde_json::Value::Null),
                None => serde_json::Value::Null,
            };
            let spec = herd_metric_sources::SourceSpec {
                kind: match src.kind.parse() {
                    Ok(k) => k,
                    Err(_) => continue,
                },
                endpoint: src.endpoint.clone(),
                settings: src.settings.clone(),
                protected: if protected.is_null() { serde_json::json!({}) } else { protected },
            };
            let outcome = match herd_metric_sources::build(&spec, self.config.source_timeout) {
                Ok(s) => s.sample().await,
                Err(e) => Err(e),
            };
            let value = match outcome {
                Ok(Some(v)) => {
                    src.health = "ok".into();
                    src.last_value = Some(v);
                    Some(v)
                }
                Ok(None) => {
                    src.health = "ok (no data)".into();
                    None
                }
                Err(e) => {
                    src.health = e.to_string();
                    None
                }
            };
            src.last_sample_at = Some(now);
            self.store
                .run(move |s| {
                    if let Some(v) = value {
                        sampler::record_source(s, &src.group, &src.name, now, v)?;
                    }
                    // Best effort: a concurrent edit of the source wins.
                    if let Ok(key) = o.key.parse::<AutoscaleKey>() {
                        if let Err(e) = s.update_metric_source(&key, &src, Expected::Revision(o.revision)) {
                            tracing::debug!(source = %key, error = %e, "metric source health not recorded");
                        }
                    }
                    Ok(())
                })
                .await?;
        }
        Ok(())
    }

    /// Evaluates every setting once; returns the decisions made.
    pub fn evaluate_once(&self) -> Result<Vec<(String, Decision)>, StateError> {
        let now = self.clock.now();
        let mut out = Vec::new();
        for o in self.store.autoscale_settings::<AutoscaleSetting>()? {
            let setting = o.value;
            let Some((g, n)) = parse_target(&setting.target_resource_uri) else { continue };
            // A target that is not a valid set name cannot name a stored set.
            let Ok(set_key) = SetKey::from_parts(&g, &n) else { continue };
            let Some(set) = self.store.scale_set(&set_key)? else {
                continue;
            };
            if set.value.deleting {
                continue;
            }
            let records = self.store.instances_of(&set_key)?;
            let warmup = setting
                .target_tracking
                .as_ref()
                .and_then(|t| herd_model::duration::parse_iso8601(&t.warmup))
                .unwrap_or_else(chrono::Duration::zero);
            let ready = records
                .iter()
                .filter(|r| {
                    let r = &r.value;
                    r.is_counted()
                        && r.goal != InstanceGoal::Deleted
                        && r.state == InstanceState::Running
                        && r.state_since + warmup <= now
                })
                .count() as u64;
            let Ok(rt_key) = o.key.parse::<AutoscaleKey>() else {
                tracing::warn!(key = %o.key, "an autoscale setting's key is not group/name; skipping it");
                continue;
            };
            let mut rt = self.store.autoscale_runtime::<SettingRuntime>(&rt_key)?.map(|x| x.value).unwrap_or_default();
            let metrics = StoreMetrics {
                store: &*self.store,
                set: &set.value,
                slack: coverage_slack(self.config.sample_interval),
            };
            let current = set.value.model.sku.capacity.max(0) as u64;
            let decision = evaluate(&rt.state.input(&setting, now, current, ready, &metrics));
            let mut error = None;
            if decision.changed() && setting.enabled {
                let reason = format!("autoscale '{}': {}", setting.name, decision.reason);
                match self.writer.set_capacity(&g, &n, decision.new_capacity, &reason) {
                    Ok(()) => self.notify(&setting, &g, &n, &decision, now),
                    Err(e) => error = Some(e),
                }
            }
            if error.is_none() {
                rt.state.record(now, &decision);
            }
            rt.history.push(HistoryEntry { time: now, decision: decision.clone(), error });
            if rt.history.len() > HISTORY_LEN {
                let extra = rt.history.len() - HISTORY_LEN;
                rt.history.drain(..extra);
            }
            self.store.put_autoscale_runtime(&rt_key, &rt)?;
            out.push((setting.name.clone(), decision));
        }
        Ok(out)
    }

    /// Calls the setting's webhooks about a scale action, in the background: a JSON POST each,
    /// up to 3 attempts with a growing pause; a webhook that never answers 2xx is logged.
    fn notify(&self, setting: &AutoscaleSetting, group: &str, set: &str, d: &Decision, now: DateTime<Utc>) {
        let hooks: Vec<herd_autoscale::model::Webhook> =
            setting.notifications.iter().flat_map(|n| n.webhooks.iter().cloned()).collect();
        if hooks.is_empty() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let payload = serde_json::json!({
            "operation": "Scale",
            "context": {
                "autoscaleSettingName": setting.name,
                "resourceGroupName": group,
                "resourceName": set,
                "resourceType": "Microsoft.Compute/virtualMachineScaleSets",
                "oldCapacity": d.current_capacity.to_string(),
                "newCapacity": d.new_capacity.to_string(),
                "direction": d.direction.to_string(),
                "reason": d.reason,
                "timestamp": now,
            },
        });
        let store = self.store.clone();
        let (group, set) = (group.to_string(), set.to_string());
        let policy = self.config.webhooks.clone();
        tokio::spawn(async move {
            let client = herd_egress::Egress::new(policy, Duration::from_secs(5));
            for hook in hooks {
                let mut body = payload.clone();
                body["properties"] = serde_json::to_value(&hook.properties).unwrap_or_default();
                let mut last = String::new();
                let mut delivered = false;
                for attempt in 0..3u32 {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
                    }
                    let req = match client.request(reqwest::Method::POST, &hook.service_uri) {
                        Ok(r) => r,
                        Err(e) => {
                            // Refused before any traffic: retrying cannot help.
                            last = format!("refused: {e}");
                            break;
                        }
                    };
                    match req.json(&body).send().await {
                        Ok(r) if r.status().is_success() => {
                            delivered = true;
                            break;
                        }
                        Ok(r) => last = format!("HTTP {}", r.status()),
                        Err(e) => {
                            last = match herd_egress::refusal_in(&e) {
                                Some(why) => format!("refused: {why}"),
                                None if e.is_timeout() => "timed out".into(),
                                None => "could not connect".into(),
                            };
                            if last.starts_with("refused") {
                                break;
                            }
                        }
                    }
                }
                if !delivered {
                    let ev = herd_model::activity::ActivityEvent {
                        seq: 0,
                        time: Utc::now(),
                        resource_group: group.clone(),
                        resource: set.clone(),
                        operation: "AutoscaleNotification".into(),
                        status: herd_model::activity::ActivityStatus::Failed,
                        actor: herd_model::activity::Actor::Autoscale,
                        message: if last.starts_with("refused") {
                            format!("webhook {} not called: {last}", hook.service_uri)
                        } else {
                            format!("webhook {} failed after 3 attempts: {last}", hook.service_uri)
                        },
                    };
                    if let Err(e) = store.run(move |s| s.log_activity(ev)).await {
                        tracing::warn!(error = %e, "a failed webhook could not be logged");
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_from_resource_ids_and_short_forms() {
        assert_eq!(
            parse_target("/subscriptions/x/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/web"),
            Some(("rg".into(), "web".into()))
        );
        assert_eq!(parse_target("rg/web"), Some(("rg".into(), "web".into())));
        assert_eq!(parse_target("web"), None);
    }
}
