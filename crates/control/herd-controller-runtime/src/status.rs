//! The status board: what each controller did last and what it waits for now.
//!
//! Why: a background loop that fails quietly is the hardest fault to see. The board is what
//! `GET /v1/server/controllers` and `herd server status` show, updated by the runtime around
//! every pass; it is in memory (it describes this process, and a restart begins it anew).

pub use herd_model::controller::{ControllerStatus, Phase};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Every controller's status, shared between the runtime (which writes it) and the API (which
/// reads it).
#[derive(Debug, Clone, Default)]
pub struct StatusBoard(Arc<Mutex<BTreeMap<&'static str, ControllerStatus>>>);

impl StatusBoard {
    /// Every controller's status, by name.
    pub fn snapshot(&self) -> Vec<ControllerStatus> {
        self.lock().values().cloned().collect()
    }

    /// One controller's status.
    pub fn get(&self, name: &str) -> Option<ControllerStatus> {
        self.lock().get(name).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, ControllerStatus>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds an entry. The runtime adds one per controller; a controller whose pass carries
    /// several concerns may add one per concern and report them itself (see `herd-reconciler`'s
    /// `concerns`).
    pub fn register(&self, name: &'static str, watches: Vec<String>, resync: Duration) {
        self.lock().insert(
            name,
            ControllerStatus {
                name: name.to_string(),
                watches,
                resync_seconds: resync.as_secs_f64(),
                phase: Phase::Starting,
                waiting_for: None,
                next_run_by: None,
                runs: 0,
                failures: 0,
                consecutive_failures: 0,
                last_run_at: None,
                last_run_ms: None,
                last_success_at: None,
                last_error: None,
                last_error_at: None,
            },
        );
    }

    /// Changes an entry (none if `name` is not registered).
    pub fn update(&self, name: &'static str, f: impl FnOnce(&mut ControllerStatus)) {
        if let Some(s) = self.lock().get_mut(name) {
            f(s);
        }
    }
}

/// An error and its chain of sources, on one line (one formatter for all of herd).
pub(crate) use herd_model::error::chain_text as error_chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("reading the image")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn an_error_is_shown_with_its_sources() {
        let e = Outer(std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"));
        assert_eq!(error_chain(&e), "reading the image: no such file");
    }

    #[test]
    fn the_board_serializes_in_camel_case_with_its_phase() {
        let board = StatusBoard::default();
        board.register("lb", vec!["instance".into()], Duration::from_secs(5));
        board.update("lb", |s| s.phase = Phase::BackingOff);
        let v = serde_json::to_value(board.snapshot()).unwrap();
        assert_eq!(v[0]["name"], "lb");
        assert_eq!(v[0]["phase"], "backingOff");
        assert_eq!(v[0]["resyncSeconds"], 5.0);
        assert!(board.get("nope").is_none());
    }
}
