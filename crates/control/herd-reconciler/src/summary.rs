//! A set's convergence at a glance: moved to the state layer ([`herd_state::summary`]), which
//! the API reads it from too.

pub use herd_state::summary::{summarize, SetSummary};
