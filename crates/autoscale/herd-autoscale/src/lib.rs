//! herd's autoscale engine, without I/O: the Azure-shaped autoscale setting and its
//! validation, the `az` condition grammar, the evaluator, target tracking, the what-if
//! simulator and the benchmarks.
//!
//! Why a crate of its own, and pure: the live autoscaler (in the server), `autoscale simulate`
//! (in the CLI) and the tests must make exactly the same decisions, so they share one
//! [`evaluate::evaluate`] that reads metrics through a trait and time from its input. The
//! server owns sampling, storage, notifications and writing capacity; this crate only decides.
//! Its one dependency on the rest of herd is `herd-model` (field errors, ISO durations).
//!
//! Azure's semantics are followed (see `evaluate`'s module doc); where herd deliberately
//! differs or fills a gap Azure leaves open, it is:
//! - grains, windows and cooldowns may be as short as 1 s (Azure: 1 min / 5 min / 1 min), so
//!   fast sets and tests need no 5-minute waits;
//! - `--scale to N` rules (direction `None`) scale out below N and in above N, and vote only
//!   when they fire, so "to 1 while the queue is not empty" never blocks "to 0 when empty";
//! - percentage steps round outwards when adding and inwards when removing, and always move at
//!   least one instance (`+20%` of 0 is 1: scale from zero works with percentages);
//! - a profile without rules (and without target tracking) holds its default count;
//! - a set whose rules read a per-instance metric is never taken to 0;
//! - time zones may be IANA or Windows names, and DST gaps and overlaps are defined
//!   (see `schedule`);
//! - target tracking (AWS/GCP style) is an extension that votes with the rules: it can scale
//!   out on its own, and scales in only when every scale-in rule agrees.

#![forbid(unsafe_code)]

pub mod bench;
pub mod condition;
pub mod evaluate;
pub mod memory;
pub mod model;
pub mod schedule;
pub mod simulate;

pub use condition::{parse_condition, parse_rule, parse_scale, ConditionError};
pub use evaluate::{
    evaluate, AutoscaleState, Decision, EvalInput, LastScale, MetricAggregation, MetricQuery, RuleEvaluation,
};
pub use memory::InMemoryMetrics;
pub use model::{AutoscaleSetting, Capacity, MetricTrigger, Profile, Rule, ScaleAction, TargetTracking};
pub use simulate::{parse_trace_csv, simulate, svg_plot, SimOptions, SimResult};

#[cfg(test)]
mod tests;
