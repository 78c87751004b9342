//! How a failed state operation is answered: a lost compare-and-swap (read again and retry), a
//! full disk (the operator must make room), a record in quarantine (that record is broken, not
//! the server) or anything else (internal).
//!
//! Why: a caller (the API maps these to 409/412, 507 and 500) decides from this alone, without
//! naming the store's error type.

use crate::records::StateError;
use herd_store::StoreError;

/// What kind of failure a [`StateError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Someone else wrote first: re-read and try again.
    Conflict,
    /// The store's disk is full.
    Full,
    /// A record does not decode (it is quarantined).
    Undecodable,
    /// Anything else: a backend failure, a bad key, a panicked task.
    Internal,
}

/// Classifies `e`.
pub fn failure(e: &StateError) -> Failure {
    match e {
        StateError::Store(StoreError::Conflict { .. }) => Failure::Conflict,
        StateError::Store(StoreError::Full(_)) => Failure::Full,
        StateError::Store(StoreError::Codec(_)) => Failure::Undecodable,
        _ => Failure::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_are_classified() {
        let full = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None);
        assert_eq!(failure(&StoreError::Full(herd_store::DiskFull(full)).into()), Failure::Full);
        let codec = herd_store::CodecError::UnknownKind("x".into());
        assert_eq!(failure(&StoreError::Codec(codec).into()), Failure::Undecodable);
        assert_eq!(failure(&StoreError::Backend(herd_store::BackendError::Closed).into()), Failure::Internal);
    }
}
