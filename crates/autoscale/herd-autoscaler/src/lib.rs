//! The autoscale runtime: what turns live metrics into capacity changes.
//!
//! Why a crate apart from the engine (`herd-autoscale`, pure): this one does I/O. It samples
//! instance metrics from the driver, load-balancer counters (through a small trait the server
//! implements, so no driver and no load-balancer dependency) and named sources every sample
//! interval into bounded series kept in the store, so a window such as `avg 5m` survives a
//! server restart, and it runs the loop that evaluates each autoscale setting and writes the
//! set's capacity through the same path a user's `scale` takes. It never calls a driver to
//! change anything.

#![forbid(unsafe_code)]

pub mod controller;
pub mod runner;
pub mod sampler;
pub mod series;
