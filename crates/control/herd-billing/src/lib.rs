//! The cost meter: what herd's scale sets cost, by set, SKU and priority.
//!
//! Why herd meters at all: the point of Spot/Low-priority sets, of scaling to capacity 0 and of
//! overprovisioning without paying for the extras is money, and a user who cannot see the money
//! cannot trust any of it. herd runs on the user's own hosts, so "cost" is what the user says a
//! VM-hour is worth (`[prices."SKU"]` in the server config: a regular price and a fixed or
//! scheduled spot price), applied with Azure's billing rules.
//!
//! Why a crate of its own: the meter is a background loop beside the reconciler, not part of
//! it. It only reads the records the reconciler writes and writes its own meter records,
//! so it can never slow down or disturb provisioning, and its core ([`accrue`]) is a
//! pure function tested with an injected clock.
//!
//! - [`prices`]: the [`PriceBook`], with watched spot price schedule files.
//! - [`meter`]: which states bill, the per-set [`MeterDoc`], [`accrue`] and the [`Meter`] loop.
//! - [`report`]: [`CostReport`]s and Prometheus counters read from the stored meters.

#![forbid(unsafe_code)]

pub mod controller;
pub mod meter;
pub mod prices;
pub mod report;

pub use meter::{accrue, close, holds_compute, is_billable, Bucket, Mark, Meter, MeterDoc, Total};
pub use prices::{PriceBook, PriceError};
pub use report::{parse_since, prometheus, report, CostReport, CostRow, CostTotal, SinceError, CURRENCY};
