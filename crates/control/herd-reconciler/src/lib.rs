//! The reconciler: makes instances match each scale set's model.
//!
//! Why it is built this way (after omicron's background tasks and kube-rs' controllers):
//! - It takes no input. Every pass re-reads the desired state (the store) and the observed state
//!   (the driver's `list`), so a missed signal or a crash only delays convergence.
//! - Deciding is pure, in two halves, both table-tested without I/O: the planners choose the
//!   steps ([`plan`](mod@plan) for scale and the instance lifecycle, [`rolling`], [`repair`], and
//!   [`capacity`] across sets), and each planner module's `apply_step` applies a step to the
//!   set's [`draft`] (which record gets which goal, state, address or pending action; the
//!   set's counters; the Spot eviction gap; the activity lines).
//! - The [`executor`] only carries steps out, in three phases: persist every draft as
//!   compare-and-swap writes in one transaction, make the idempotent driver calls, persist the
//!   results. A crash between any two phases is repaired by the next pass, because the intent
//!   is already on disk and every driver call can be repeated.
//! - Its concerns are one ordered pass, not separate controllers ([`concerns`]): scale, rolling
//!   upgrade, OS image and repair are planned from one snapshot of a set, capacity then
//!   rewrites every set's steps, and all of it commits at once. Separate controllers with their
//!   own snapshots would race on the same instance records and decide differently. Each concern
//!   still has its own entry on the runtime's status board (runs, duration, last error, what
//!   it waits for), filled from its part of each pass; [`register`] adds the controller and
//!   the entries to the runtime.
//! - Extensions run in the background ([`extensions`]), after downloading their files on the
//!   host ([`fetch`]), so a long script never holds up a pass.
//! - `testkit` (feature `testkit`) holds the fixtures its tests and other crates' tests share.

#![forbid(unsafe_code)]

pub mod capacity;
pub mod concerns;
pub mod controller;
pub mod draft;
pub mod executor;
pub mod extensions;
pub mod fetch;
pub mod guest_agent;
pub mod host_failure;
pub mod orphans;
pub mod plan;
pub mod redeploy;
pub mod repair;
pub mod rolling;
pub mod summary;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

pub use concerns::{Concern, ConcernBoard};
pub use controller::register;
pub use executor::{FaultPoint, Faults, JoinedHosts, PassReport, ReconcileError, Reconciler, ReconcilerConfig};
pub use extensions::ExtensionConfig;

pub use plan::{plan, Limits, Plan, SetInput, Step};
pub use summary::{summarize, SetSummary};
