//! Where every bridged NIC is, as the reconciler decided: what stretches segments across
//! hosts (`herd_hostnet::fabric`) is programmed from this, so no host learns a MAC's place from
//! the traffic itself.
//!
//! Why the reconciler publishes it: it is the one that places instances and allocates their
//! addresses, and it looks at every set in every pass, so its view is whole and current (a NIC
//! is published in the pass that creates its record, before its host is asked to build it).

use crate::NetworkAttachment;
use herd_model::InstanceKey;

/// One bridged NIC and the host it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedNic {
    pub key: InstanceKey,
    /// The joined host it is placed on; None (or a name that is not a joined host's): the
    /// server's own machine.
    pub host: Option<String>,
    pub net: NetworkAttachment,
    /// The instance's computer name (resolvable in its vnet on every host).
    pub name: String,
}

/// Takes the reconciler's view of every bridged NIC after each pass.
pub trait FabricSink: Send + Sync + std::fmt::Debug {
    /// Every bridged NIC now (the whole set, not a change).
    fn publish(&self, nics: Vec<PlacedNic>);
}
