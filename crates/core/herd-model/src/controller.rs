//! What the server's background controllers are doing: the view that
//! `GET /v1/server/controllers` returns and `herd server status` shows.
//!
//! Why here: the API and the CLI show it, and the controller runtime (which fills it in) is a
//! crate neither of them should depend on.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where a controller is in its lifecycle (the diagram is in `herd-controller-runtime`'s docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// Registered; its first pass has not begun.
    Starting,
    /// A pass is running.
    Running,
    /// Waiting for a change to what it watches, or for its resync.
    Idle,
    /// Waiting a delay it asked for (a wake runs it sooner).
    Waiting,
    /// Waiting out the backoff after a failed pass.
    BackingOff,
    /// The server is shutting down; it will not run again.
    Stopped,
}

/// One controller's line on the board.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControllerStatus {
    pub name: String,
    /// The record kinds whose changes wake it.
    pub watches: Vec<String>,
    /// Its safety-net period, in seconds.
    pub resync_seconds: f64,
    pub phase: Phase,
    /// What it waits for, in words (`a change to instance, vmss; resync by 12:00:03Z`).
    pub waiting_for: Option<String>,
    /// When it runs next at the latest (absent while running or stopped).
    pub next_run_by: Option<DateTime<Utc>>,
    /// Passes completed (successful or not).
    pub runs: u64,
    /// Passes that failed, in all.
    pub failures: u64,
    /// Passes that failed in a row, up to the last one.
    pub consecutive_failures: u32,
    /// When the last pass began.
    pub last_run_at: Option<DateTime<Utc>>,
    /// How long the last completed pass took, in milliseconds.
    pub last_run_ms: Option<f64>,
    /// When the last successful pass ended.
    pub last_success_at: Option<DateTime<Utc>>,
    /// The last failure's message (with its sources), kept after later successes.
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}
