//! The reconciler: makes instances match each scale set's model.
//!
//! Why it is built this way (after omicron's background tasks and kube-rs' controllers):
//! - It takes no input. Every pass re-reads the desired state (the store) and the observed state
//!   (the driver's `list`), so a missed signal or a crash only delays convergence.
//! - [`plan`] is a pure, synchronous function from those two states to a list of steps; it is
//!   table-tested without any I/O.
//! - The [`executor`] applies a plan in three phases: persist every intent in one transaction,
//!   make the idempotent driver calls, persist the results. A crash between any two phases is
//!   repaired by the next pass, because the intent is already on disk and every driver call can
//!   be repeated.
//! - Capacity is the one cross-set decision ([`capacity`]): after every set is planned, the
//!   pure arbiter in `herd-capacity` places new instances on hosts and picks Spot evictions.
//! - Extensions run in the background ([`extensions`]), after downloading their files on the
//!   host ([`fetch`]), so a long script never holds up a pass.

#![forbid(unsafe_code)]

pub mod capacity;
pub mod concerns;
pub mod controller;
pub mod draft;
pub mod executor;
pub mod extensions;
pub mod fetch;
pub mod guest_agent;
pub mod orphans;
pub mod plan;
pub mod repair;
pub mod rolling;
pub mod summary;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

pub use concerns::{Concern, ConcernBoard};
pub use controller::register;
pub use executor::{FaultPoint, Faults, PassReport, ReconcileError, Reconciler, ReconcilerConfig};
pub use extensions::ExtensionConfig;

pub use plan::{plan, Limits, Plan, SetInput, Step};
pub use summary::{summarize, SetSummary};
