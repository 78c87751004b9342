//! Errors of [`crate::LoadBalancer::apply`].
//!
//! Why it exists: the control plane must be able to tell an invalid snapshot (nothing applied)
//! from frontends that could not be bound (everything else applied), and show the user which
//! rule and address failed.

use std::fmt;
use std::net::SocketAddr;

/// A frontend that could not be bound; its rule is not running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindFailure {
    pub rule: String,
    pub frontend: SocketAddr,
    /// Short reason, e.g. "address in use".
    pub reason: String,
}

impl fmt::Display for BindFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "frontend {} of rule {}: {}", self.frontend, self.rule, self.reason)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LbError {
    /// The snapshot was rejected before anything changed.
    #[error("invalid load balancer config: {0}")]
    InvalidConfig(String),
    /// These frontends could not be bound. Every other part of the snapshot was applied; the
    /// failed rules are not running (a frontend that was running before at another address was
    /// stopped). Applying the snapshot again retries the binds.
    #[error("{}", join(.0))]
    Bind(Vec<BindFailure>),
}

fn join(failures: &[BindFailure]) -> String {
    failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}
