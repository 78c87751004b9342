//! What handlers need from running components, as small traits the server implements.
//!
//! Why traits: the API is a thin layer over the state layer (`herd-state`) and the model. A
//! few reads need a live process instead of the store: the load balancer's data plane (its
//! listening frontends and counters), a driver's console, and the metric-source clients that
//! know each source's settings. The server (`herd`'s `services` module) implements these over
//! the real components and hands them to [`crate::AppState`]; the API never names those crates.

use futures::future::BoxFuture;
use herd_model::{FieldError, InstanceKey};
use serde_json::Value;
use std::net::SocketAddr;

/// A running component's failure, with its own error as the source.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ServiceError(#[from] pub Box<dyn std::error::Error + Send + Sync>);

/// The load balancer's data plane, read-only.
pub trait LoadBalancerView: Send + Sync {
    /// The frontend addresses the data plane is listening on (herd's own ports).
    fn frontends(&self) -> Vec<SocketAddr>;
    /// Its counters in Prometheus text format.
    fn metrics(&self) -> String;
}

/// Instance consoles, read through the driver (reads only: handlers never change instances).
pub trait ConsoleLogs: Send + Sync {
    /// The last `max_bytes` of the instance's console; `None` if the instance does not exist.
    fn console_log<'a>(
        &'a self,
        key: &'a InstanceKey,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Option<String>, ServiceError>>;
}

/// A metric source as a request describes it, before it is stored.
#[derive(Debug, Clone, Copy)]
pub struct SourceDraft<'a> {
    pub kind: &'a str,
    pub endpoint: &'a str,
    pub settings: &'a Value,
    pub protected: &'a Value,
}

/// Why a metric source was refused.
#[derive(Debug, thiserror::Error)]
pub enum SourceRefusal {
    /// The kind is none herd knows.
    #[error(transparent)]
    Kind(FieldError),
    /// The endpoint or a setting is invalid for that kind.
    #[error(transparent)]
    Spec(FieldError),
}

/// Validates metric sources without contacting anything (each kind's client knows its settings).
pub trait MetricSourceCheck: Send + Sync {
    /// The kind's canonical name (`redis`, `postgresql`, ...), or why the draft is refused.
    fn check(&self, draft: SourceDraft<'_>) -> Result<String, SourceRefusal>;
}

pub use herd_model::tls::{CaRotation, CertificateView, PlainHttp, ServerTls, TlsMode, TlsRefusal, TlsStatus};
