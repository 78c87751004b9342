//! The typed state layer: what herd keeps in its store, in types.
//!
//! Why: the store ([`herd_store::Store`]) is deliberately dumb — a `Kind`, a string key and a
//! JSON value, with revisions for compare-and-swap — so that another backend (etcd) can serve
//! it. Everything above it (API handlers, the reconciler, the load-balancer controller, the
//! autoscaler, billing, metadata) needs more: which key holds a set's instances, how an id is
//! padded, which record type lives under which kind. This crate is the one place that knows.
//!
//! ```text
//!   herd-api handlers   reconciler   lbctl   autoscaler   billing   metadata
//!            \              |          |          |          |         /
//!             └──────────── herd-state: keys, typed records, operations ┘
//!                                       │ Kind + key + JSON, CAS on revision
//!                                  herd-store (SQLite now, etcd later)
//! ```
//!
//! - [`keys`] owns every key format (and pins the stored strings in tests).
//! - [`actions`]: the user's instance and rolling-upgrade actions as enums, parsed at the edge.
//! - [`records`]: typed reads and compare-and-swap writes per record type ([`records::Records`],
//!   on the [`records::State`] handle or any store), with [`records::StateError`].
//! - [`feed`]: the change feed as controllers use it (which kinds changed; when changes were lost).
//! - [`transitions`]: lifecycle events applied so that a refused one is logged and counted.

#![forbid(unsafe_code)]

pub mod actions;
pub mod activity;
pub mod admin;
pub mod autoscale_config;
pub mod autoscale_records;
pub mod batch;
pub mod beneath;
pub mod call_threads;
pub mod cost_records;
pub mod costs;
pub mod failure;
pub mod feed;
pub mod groups;
pub mod hosts;
pub mod images;
pub mod instance_actions;
pub mod intents;
pub mod join_tokens;
pub mod keys;
pub mod lookup;
pub mod metric_series;
pub mod model_refs;
pub mod networks;
pub mod placement;
pub mod quarantine;
pub mod records;
pub mod scale_sets;
pub mod security;
pub mod set_status;
pub mod summary;
#[cfg(test)]
mod testkit;
pub mod transitions;

pub use herd_store::seal;
pub use records::{AutoscaleRecords, Expected, Records, State, StateError, Store, Versioned};
