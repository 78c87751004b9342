//! Validation errors that name the offending field and, where it helps, the allowed values.

use serde::Serialize;

/// One invalid field: its JSON path, what is wrong, and what would be accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }

    /// A value outside a closed set: the message lists every allowed value.
    pub fn one_of(field: impl Into<String>, got: &str, allowed: &[&str]) -> Self {
        Self::new(field, format!("'{got}' is not allowed; allowed values: {}", allowed.join(", ")))
    }

    /// A field that exists in the Azure model but whose behaviour herd does not have yet.
    /// Accepting it silently would lie to the user, so it is refused.
    pub fn not_supported(field: impl Into<String>, what: &str) -> Self {
        Self::new(field, format!("not supported yet: {what}"))
    }
}

/// Errors from model operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("{0}")]
    Invalid(#[from] FieldError),
}

/// An error and its sources joined with ": ", skipping a source whose text the previous one
/// already contains.
pub fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let t = err.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = err.source();
    }
    out
}
