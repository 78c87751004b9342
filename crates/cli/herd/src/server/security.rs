//! The `security` controller: network security groups, from the store to the host's nftables.
//!
//! Why a controller: a rule change must reach running instances within a second, without a
//! restart, and so must a new instance, a new association or a deleted group. Every commit
//! to instances, scale sets, vnets or NSGs wakes it (the change feed); each pass computes every
//! filtered NIC's rules (`herd_state::security::policies`, the same answer
//! `list-effective-nsg` shows) and hands them to `HostNet::secure`, which writes the table in
//! one transaction when they changed, and again when someone deleted it (the resync). With
//! hosts joined, each host gets its own NICs' rules through the fabric (`Segments`) and
//! enforces them itself. Only in bridged mode.

use herd_controller_runtime::{Controller, ControllerError, Next};
use herd_hostnet::HostNet;
use herd_state::feed::Kind;
use herd_store::Store;
use std::sync::Arc;
use std::time::Duration;

/// The safety net: commits wake the controller; this also re-creates a deleted table.
const RESYNC: Duration = Duration::from_secs(2);

pub(super) struct SecurityController {
    pub net: Arc<HostNet>,
    pub store: Arc<dyn Store>,
    /// With hosts joined: each host gets its own NICs' rules through the fabric.
    pub fabric: Option<Arc<herd_host_link::fabric::Fabric>>,
}

impl Controller for SecurityController {
    fn name(&self) -> &'static str {
        "security"
    }

    fn watches(&self) -> Vec<Kind> {
        vec![Kind::Instance, Kind::ScaleSet, Kind::VirtualNetwork, Kind::NetworkSecurityGroup]
    }

    fn resync(&self) -> Duration {
        RESYNC
    }

    async fn reconcile(&self) -> Result<Next, ControllerError> {
        let (net, store, fabric) = (self.net.clone(), self.store.clone(), self.fabric.clone());
        let wrote = tokio::task::spawn_blocking(move || -> Result<bool, ControllerError> {
            let policies = herd_state::security::policies(&*store)?;
            let nics: Vec<_> = policies.iter().map(|(_, s)| s.clone()).collect();
            if let Some(fabric) = fabric {
                fabric.set_security(policies);
            }
            Ok(net.secure(&nics)?)
        })
        .await??;
        if wrote {
            tracing::info!(table = self.net.security_table(), "network security rules written");
        }
        Ok(Next::Idle)
    }
}
