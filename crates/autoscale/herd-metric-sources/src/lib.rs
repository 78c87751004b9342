//! Queue-length metric sources for herd's autoscaler.
//!
//! Why this crate exists: the seed's "scale on a Service Bus queue" case has no Service Bus on
//! your own hosts, so herd reads the queue length from whatever queue you run — a Redis list
//! or stream group, a NATS JetStream consumer, a PostgreSQL `SELECT count(*)`, any HTTP
//! endpoint that answers JSON, or a Prometheus query — behind one [`MetricSource`] trait, so
//! the autoscaler's rules (`source/jobs > 10 avg 1m`) do not care which.
//!
//! The rules every source keeps, because the autoscaler's correctness depends on them:
//! - **"No data" is not zero.** `Ok(Some(v))` is a measurement; `Ok(None)` means the server
//!   answered but has no value (an SQL `NULL`, a JSON `null`, an empty Prometheus vector);
//!   `Err` means the sample failed. The autoscaler never scales in on `None` or `Err`.
//!   A Redis list that does not exist *is* zero: Redis deletes a list when its last item is
//!   popped, so a missing key is exactly an empty queue (and scale-to-zero depends on it).
//! - **Every sample is bounded** by the timeout given to [`build`] (connect, auth, query and
//!   reading the answer together): it never hangs and never panics. Redis, NATS and
//!   PostgreSQL samples open their own connection (at a 30 s evaluation interval that costs
//!   nothing and leaves no stale connection to repair); the HTTP sources keep reqwest's
//!   connection pool, which reconnects by itself.
//! - **Secrets stay secret.** Passwords, tokens and auth headers live in the spec's
//!   `protected` settings; they never appear in `describe()`, in a [`SourceError`], or in the
//!   spec's `Debug`. Endpoints with credentials in them are refused by [`validate`].
//!
//! The wire protocols of Redis (RESP) and NATS are small, so they are spoken directly
//! ([`redis::Connection`], [`nats::Client`]); those clients are public so that tests can fill
//! queues with them. The `testkit` feature starts real throw-away servers for tests.
#![forbid(unsafe_code)]

/// The [`MetricSource`] impl every source shares: a source struct with `describe`, `timeout`
/// and its secrets (the field path given) and an async `sample_now`; each sample is bounded by
/// the timeout and its errors are scrubbed of the secrets (see [`bounded`]).
macro_rules! bounded_metric_source {
    ($source:ty, $($secrets:ident).+) => {
        #[async_trait::async_trait]
        impl $crate::MetricSource for $source {
            async fn sample(&self) -> Result<Option<f64>, $crate::SourceError> {
                $crate::bounded(&self.describe, self.timeout, &self.$($secrets).+, self.sample_now()).await
            }

            fn describe(&self) -> String {
                self.describe.clone()
            }
        }
    };
}

mod error;
mod http_json;
pub mod nats;
mod postgres;
mod prometheus;
pub mod redis;
mod spec;
#[cfg(feature = "testkit")]
pub mod testkit;

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use herd_model::FieldError;

pub use error::{ErrorKind, SourceError};
pub use spec::{SourceKind, SourceSpec};

/// One source of a metric, sampled by the autoscaler every time grain.
#[async_trait]
pub trait MetricSource: Send + Sync {
    /// One sample now. `Ok(None)` = the source answered but has no value: "no data", never
    /// zero. Bounded by the timeout the source was built with.
    async fn sample(&self) -> Result<Option<f64>, SourceError>;

    /// What this source measures, e.g. `redis 127.0.0.1:6379 list jobs`. Never contains a
    /// secret.
    fn describe(&self) -> String;
}

/// Checks a spec without contacting anything. Errors name the field (`endpoint`,
/// `settings.key`, `protected.password`, ...) and, where there is a closed set, the allowed
/// values. Kinds herd cannot sample yet are refused as "not supported yet".
pub fn validate(spec: &SourceSpec) -> Result<(), FieldError> {
    match spec.kind {
        SourceKind::Redis => redis::parse(spec).map(drop),
        SourceKind::NatsJetstream => nats::parse(spec).map(drop),
        SourceKind::Postgresql => postgres::parse(spec).map(drop),
        SourceKind::HttpJson => http_json::parse(spec).map(drop),
        SourceKind::Prometheus => prometheus::parse(spec).map(drop),
        SourceKind::Rabbitmq => Err(rabbitmq_not_supported()),
    }
}

fn rabbitmq_not_supported() -> FieldError {
    FieldError::not_supported(
        "kind",
        "rabbitmq; its management API can be read with kind http-json \
         (endpoint http://HOST:15672/api/queues/%2F/QUEUE, settings {\"pointer\": \"/messages\"}, \
         protected {\"headers\": {\"Authorization\": \"Basic ...\"}})",
    )
}

/// Builds a source from a valid spec. Nothing is contacted here: the first sample connects.
/// Every sample is bounded by `timeout`.
pub fn build(spec: &SourceSpec, timeout: Duration) -> Result<Box<dyn MetricSource>, SourceError> {
    let invalid = |e: FieldError| {
        SourceError::new(
            ErrorKind::Config,
            format!("{} {}", spec.kind, spec::redact_url_text(&spec.endpoint)),
            format!("invalid: {e}"),
        )
    };
    let timeout = if timeout.is_zero() { Duration::from_millis(1) } else { timeout };
    Ok(match spec.kind {
        SourceKind::Redis => Box::new(redis::RedisSource::new(redis::parse(spec).map_err(invalid)?, timeout)),
        SourceKind::NatsJetstream => Box::new(nats::JetStreamSource::new(nats::parse(spec).map_err(invalid)?, timeout)),
        SourceKind::Postgresql => {
            Box::new(postgres::PostgresSource::new(postgres::parse(spec).map_err(invalid)?, timeout))
        }
        SourceKind::HttpJson => {
            Box::new(http_json::HttpJsonSource::new(http_json::parse(spec).map_err(invalid)?, timeout)?)
        }
        SourceKind::Prometheus => {
            Box::new(prometheus::PrometheusSource::new(prometheus::parse(spec).map_err(invalid)?, timeout)?)
        }
        SourceKind::Rabbitmq => return Err(invalid(rabbitmq_not_supported())),
    })
}

/// Runs one sample under its deadline and scrubs the source's secrets from any error.
pub(crate) async fn bounded<F>(
    describe: &str,
    timeout: Duration,
    secrets: &[String],
    fut: F,
) -> Result<Option<f64>, SourceError>
where
    F: Future<Output = Result<Option<f64>, SourceError>>,
{
    let result = match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(|e| e.with_context(describe)),
        Err(_) => Err(SourceError::timeout(describe, timeout)),
    };
    match result {
        Ok(Some(v)) if !v.is_finite() => {
            Err(SourceError::new(ErrorKind::NotANumber, describe, format!("the value {v} is not a finite number")))
        }
        Ok(v) => Ok(v),
        Err(e) => Err(e.redact(secrets)),
    }
}
