//! Cost reports and Prometheus counters, read from the meters in the store.
//!
//! Why reports read the stored meters rather than the live records: what a set cost is what the
//! meter billed, including sets since deleted and time the server was down, and a report must
//! agree with the counters and with itself across restarts.
//!
//! A report over a period (`since`) sums the hourly buckets, so it starts at the hour `since`
//! falls in (`from` says so); without `since` it shows the lifetime totals, which are not
//! bounded by the buckets' retention.

// The report reads the stored meters: it lives in the state layer with them.
pub use herd_state::costs::{
    parse_since, prometheus, report, summarize, CostReport, CostRow, CostTotal, SinceError, CURRENCY,
};
