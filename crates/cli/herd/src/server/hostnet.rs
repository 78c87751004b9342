//! The `hostnet` controller: keeps bridged networking's host side serving.
//!
//! Why a controller: drivers make a segment (bridge, dnsmasq) when an instance plugs in and
//! remove it with the last one, but between those calls a dnsmasq can die or a bridge be
//! deleted by hand, and a crash can stop a teardown half-way. Every few seconds this runs
//! `HostNet::repair`, which restores a segment that has reservations and removes one that has
//! none, and logs what it restored. Only in bridged mode.

use herd_controller_runtime::{Controller, ControllerError, Next};
use herd_hostnet::HostNet;
use std::sync::Arc;
use std::time::Duration;

/// How often the host network is checked.
const EVERY: Duration = Duration::from_secs(5);

pub(super) struct HostNetController(pub Arc<HostNet>);

impl Controller for HostNetController {
    fn name(&self) -> &'static str {
        "hostnet"
    }

    fn resync(&self) -> Duration {
        EVERY
    }

    async fn reconcile(&self) -> Result<Next, ControllerError> {
        let net = self.0.clone();
        let fixed = tokio::task::spawn_blocking(move || net.repair()).await??;
        for line in fixed {
            tracing::warn!("host network repaired: {line}");
        }
        Ok(Next::After(EVERY))
    }
}
