//! The server's running components behind the API's service traits (`herd_api::services`), and
//! the API's capacity writer behind the autoscaler's.
//!
//! Why here: the API names only the state layer and the model. What needs a live process (the
//! load balancer's data plane, a driver's console, each metric source's own settings rules)
//! is wired in by the binary that starts those processes.

use futures::future::BoxFuture;
use futures::FutureExt;
use herd_api::services::{ConsoleLogs, LoadBalancerView, MetricSourceCheck, ServiceError, SourceDraft, SourceRefusal};
use herd_model::InstanceKey;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// The load-balancer controller, read by the API (frontends, counters) and by the autoscaler's
/// sampler (per-member counters; never a driver).
pub struct Lb(pub Arc<herd_lbctl::LbController>);

impl LoadBalancerView for Lb {
    fn frontends(&self) -> Vec<SocketAddr> {
        self.0.frontends()
    }

    fn metrics(&self) -> String {
        self.0.metrics()
    }
}

impl herd_autoscaler::sampler::LbStatsProvider for Lb {
    fn member_counters(&self) -> BTreeMap<InstanceKey, herd_autoscaler::sampler::LbCounters> {
        self.0
            .member_counters()
            .into_iter()
            .map(|(k, c)| {
                let counters = herd_autoscaler::sampler::LbCounters {
                    connections_total: c.connections_total,
                    active_connections: c.active_connections,
                    in_rotation: c.in_rotation,
                };
                (k, counters)
            })
            .collect()
    }
}

/// Consoles read through the driver.
pub struct Consoles(pub Arc<dyn herd_driver::Driver>);

impl ConsoleLogs for Consoles {
    fn console_log<'a>(
        &'a self,
        key: &'a InstanceKey,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Option<String>, ServiceError>> {
        async move { self.0.console_log(key, max_bytes).await.map_err(|e| ServiceError(Box::new(e))) }.boxed()
    }
}

/// Metric sources checked by their own clients' rules (`herd-metric-sources`), contacting nothing.
pub struct SourceCheck;

impl MetricSourceCheck for SourceCheck {
    fn check(&self, draft: SourceDraft<'_>) -> Result<String, SourceRefusal> {
        let kind = draft.kind.parse::<herd_metric_sources::SourceKind>().map_err(SourceRefusal::Kind)?;
        let spec = herd_metric_sources::SourceSpec {
            kind,
            endpoint: draft.endpoint.to_string(),
            settings: draft.settings.clone(),
            protected: draft.protected.clone(),
        };
        herd_metric_sources::validate(&spec).map_err(SourceRefusal::Spec)?;
        Ok(kind.as_str().to_string())
    }
}

/// The autoscaler's capacity writes go through the same commit as `herd vmss scale`.
pub struct CapacityWriter(pub herd_api::autoscale::ApiCapacityWriter);

impl herd_autoscaler::runner::CapacityWriter for CapacityWriter {
    fn set_capacity(&self, group: &str, set: &str, capacity: u64, reason: &str) -> Result<(), String> {
        self.0.set_capacity(group, set, capacity, reason)
    }
}

/// Where instances' metadata endpoints listen, for the hosts' relays
/// (`herd_host_link::relay`).
#[derive(Debug)]
pub struct MetadataEndpoints(pub herd_metadata::MetadataService);

#[async_trait::async_trait]
impl herd_host_link::relay::MetadataEndpoints for MetadataEndpoints {
    async fn endpoint(&self, key: &herd_model::InstanceKey) -> Option<std::net::SocketAddr> {
        self.0.endpoint_of(key).await
    }
}
