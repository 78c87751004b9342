//! Bounded metric time series: the stored type is the state layer's (the API shows a set's
//! series), re-exported here where the sampler and the runner name it.

pub use herd_state::metric_series::*;
