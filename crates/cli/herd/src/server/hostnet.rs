//! The `hostnet` controller: keeps bridged networking's host side serving.
//!
//! Why a controller: drivers make a segment (bridge, dnsmasq) when an instance plugs in and
//! remove it with the last one, but between those calls a dnsmasq can die or a bridge be
//! deleted by hand, and a crash can stop a teardown half-way. Every few seconds this runs
//! `HostNet::repair`, which restores a segment that has reservations and removes one that has
//! none, and logs what it restored. It also looks for other firewalls that would silently drop
//! bridged traffic (a forward chain with policy drop, as Docker leaves, while br_netfilter hands
//! bridged traffic to it) and warns when what it finds changes. Only in bridged mode.

use herd_controller_runtime::{Controller, ControllerError, Next};
use herd_hostnet::HostNet;
use std::sync::Arc;
use std::time::Duration;

/// How often the host network is checked.
const EVERY: Duration = Duration::from_secs(5);

pub(super) struct HostNetController {
    pub net: Arc<HostNet>,
    /// What the last conflict check found, so each finding is logged once.
    pub conflicts: std::sync::Mutex<Vec<String>>,
}

impl Controller for HostNetController {
    fn name(&self) -> &'static str {
        "hostnet"
    }

    fn resync(&self) -> Duration {
        EVERY
    }

    async fn reconcile(&self) -> Result<Next, ControllerError> {
        let net = self.net.clone();
        let (fixed, conflicts) = tokio::task::spawn_blocking(move || {
            net.repair().map(|fixed| (fixed, herd_hostnet::conflicts::check("herd_")))
        })
        .await??;
        for line in fixed {
            tracing::warn!("host network repaired: {line}");
        }
        let mut last = self.conflicts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last != conflicts {
            for c in &conflicts {
                tracing::warn!("bridged traffic may be blocked: {c}");
            }
            *last = conflicts;
        }
        Ok(Next::After(EVERY))
    }
}

/// Keeps the server's own stretch of every segment (VXLAN ports, forwarding entries, the
/// border table) what the fabric says, applied in order, latest wins, for as long as the
/// server runs.
pub(super) fn stretch_own_segments(net: Arc<HostNet>, fabric: Arc<herd_host_link::fabric::Fabric>) {
    let network = herd_agent::network::HostNetwork::start(net, false);
    tokio::spawn(async move {
        let mut changes = fabric.changes();
        let mut told = None;
        loop {
            if let Some(spans) = fabric.spans_for(herd_host_link::fabric::Member::Server) {
                if told.as_ref() != Some(&spans) {
                    network.stretch(spans.clone());
                    told = Some(spans);
                }
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    });
}
