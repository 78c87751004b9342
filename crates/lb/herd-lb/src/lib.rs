//! The data plane of herd's L4 load balancer.
//!
//! Why a crate of its own: the proxy, its consistent-hash table and the health probes know
//! nothing about scale sets, stores or drivers. The control plane computes a full snapshot of
//! what each load balancer should do ([`LbConfig`]) and pushes it with one
//! [`LoadBalancer::apply`] call; this crate makes the sockets match without dropping
//! established connections on unchanged rules. Health probes ([`probe::ProbeRunner`]) are a
//! separate building block the control plane uses to decide which backends are in a pool.
//! The one thing it takes from herd's model is the data of network security rules
//! (`herd_model::nsg`), which a backend's [`Route`] may carry to admit clients by.
//!
//! Modules:
//! - [`config`]: the snapshot types the control plane fills in.
//! - [`maglev`]: the Maglev consistent-hash lookup table and flow hashing.
//! - [`metrics`]: per-rule and per-backend counters, `LbStats` and Prometheus text.
//! - [`probe`]: Tcp/Http health probes with threshold semantics.
//! - `dataplane` / `engine` / `proxy` / `timers` / `buffers` (private): snapshot swaps, the
//!   data-plane threads and their commands, the per-thread event loop that accepts and splices
//!   connections, its deadlines, the copy buffers reused per thread.

#![forbid(unsafe_code)]

mod buffers;
pub mod config;
mod dataplane;
mod engine;
pub mod error;
pub mod maglev;
pub mod metrics;
pub mod probe;
mod proxy;
mod timers;

pub use config::{Backend, Distribution, LbConfig, LbOptions, NatConfig, Route, RuleConfig};
pub use dataplane::LoadBalancer;
pub use error::{BindFailure, LbError};
pub use metrics::{BackendStats, BackendStatus, LbStats, RuleKind, RuleStats};
pub use probe::{Health, Probe, ProbeError, ProbeProtocol, ProbeRunner, ProbeTarget, TargetStatus};
