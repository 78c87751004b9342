//! The `metadata-net` controller: bridged instances' requests to 169.254.169.254, routed to
//! their own metadata listeners.
//!
//! Why a controller: the metadata service opens a listener (a port of its own on
//! 169.254.169.254) when an instance record appears, and the host's nftables must send that
//! instance's requests there before it asks (`herd_hostnet::metadata`). The service tells this
//! controller whenever a listener opens or closes; each pass writes the table when the
//! listeners changed, and again when someone deleted it (the resync). Only in bridged mode.

use herd_controller_runtime::{Controller, ControllerError, Next};
use herd_hostnet::{metadata::Listener, HostNet};
use herd_metadata::MetadataService;
use std::sync::Arc;
use std::time::Duration;

/// The safety net: the service's changes wake the controller; this re-creates a deleted table.
const RESYNC: Duration = Duration::from_secs(2);

pub(super) struct MetadataNetController {
    pub net: Arc<HostNet>,
    pub metadata: MetadataService,
}

impl Controller for MetadataNetController {
    fn name(&self) -> &'static str {
        "metadata-net"
    }

    fn resync(&self) -> Duration {
        RESYNC
    }

    async fn reconcile(&self) -> Result<Next, ControllerError> {
        let listeners: Vec<Listener> = self
            .metadata
            .vnet_listeners()
            .await
            .into_iter()
            .map(|(instance, port)| Listener { instance, port })
            .collect();
        let net = self.net.clone();
        let wrote = tokio::task::spawn_blocking(move || net.serve_metadata(&listeners)).await??;
        if wrote {
            tracing::info!(table = self.net.metadata_table(), "metadata routes written");
        }
        Ok(Next::Idle)
    }
}
