//! This host's stretch of the cluster's segments, as the server describes it (`Segments`):
//! VXLAN ports and their forwarding entries (see `herd_hostnet::fabric`), and the network
//! security groups of the NICs on this host; and, on a host of its own, forwarding by lease
//! (see `herd_hostnet::lease`): from the start every instance port is fenced, and each
//! acknowledgement's lease re-arms the ports of the instances it lists, until the lease's end
//! as this host counts it (from when the acknowledged heartbeat was sent).
//!
//! Why a task of its own, latest wins: each message is the whole set, so only the newest
//! matters, and applying one runs `ip`, `bridge` and `nft` (tens of milliseconds), which must
//! neither hold the link's loop (heartbeats) nor be overtaken by an older message.

use herd_hostnet::fabric::Span;
use herd_hostnet::HostNet;
use herd_model::nsg::NicSecurity;
use std::sync::Arc;
use tokio::sync::watch;

/// One description: the spans, and the NICs' security (None: not this applier's to write).
type Described = Option<(Vec<Span>, Option<Vec<NicSecurity>>)>;

/// The newest lease: the instances it lists and when it ends (this host's clock).
type LeaseEnd = Option<(Vec<String>, std::time::Instant)>;

/// Applies the server's latest description of this host's segments, in order.
pub struct HostNetwork {
    latest: watch::Sender<Described>,
    net: Arc<HostNet>,
    /// The newest lease to carry into the kernel (None: not fencing, or none yet).
    leased: Option<watch::Sender<LeaseEnd>>,
}

impl HostNetwork {
    /// Starts applying to `net` (the host network the host's drivers plug instances into);
    /// with `fence`, every instance port forwards only while its lease lives.
    pub fn start(net: Arc<HostNet>, fence: bool) -> Arc<Self> {
        let leased = fence.then(|| {
            let (tx, mut rx) = watch::channel::<LeaseEnd>(None);
            let net = net.clone();
            tokio::spawn(async move {
                let n = net.clone();
                match tokio::task::spawn_blocking(move || n.fence_by_lease()).await {
                    Ok(Ok(true)) => tracing::info!("instance ports fenced until the server's first lease"),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot fence this host's instance ports"),
                    Err(e) => tracing::warn!(error = %e, "fencing this host's instance ports panicked"),
                }
                while rx.changed().await.is_ok() {
                    let Some((instances, until)) = rx.borrow_and_update().clone() else { continue };
                    let left = until.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        continue;
                    }
                    let n = net.clone();
                    match tokio::task::spawn_blocking(move || n.renew_leases(&instances, left)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "renewing the instance ports' leases failed"),
                        Err(e) => tracing::warn!(error = %e, "renewing the instance ports' leases panicked"),
                    }
                }
            });
            tx
        });
        let (latest, mut rx) = watch::channel::<Described>(None);
        let applied = net.clone();
        tokio::spawn(async move {
            let net = applied;
            while rx.changed().await.is_ok() {
                let Some((spans, security)) = rx.borrow_and_update().clone() else { continue };
                let net = net.clone();
                let applied = tokio::task::spawn_blocking(move || {
                    let mut changes = net.span(&spans)?;
                    if let Some(security) = security {
                        if net.secure(&security)? {
                            changes.push(format!("network security rules written ({} NICs)", security.len()));
                        }
                    }
                    Ok::<_, herd_hostnet::NetError>(changes)
                });
                match applied.await {
                    Ok(Ok(changes)) => {
                        for c in changes {
                            tracing::info!("{c}");
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "stretching this host's segments failed; the next message retries")
                    }
                    Err(e) => tracing::warn!(error = %e, "stretching this host's segments panicked"),
                }
            }
        });
        Arc::new(Self { latest, net, leased })
    }

    /// The server leased `instances` until `until` (this host's clock): their ports forward
    /// until then (nothing when not fencing).
    pub fn lease(&self, instances: Vec<String>, until: std::time::Instant) {
        if let Some(tx) = &self.leased {
            let _ = tx.send(Some((instances, until)));
        }
    }

    /// The host network it applies to.
    pub fn net(&self) -> &Arc<HostNet> {
        &self.net
    }

    /// The server's newest description (replaces any not yet applied).
    pub fn apply(&self, spans: Vec<Span>, security: Vec<NicSecurity>) {
        let _ = self.latest.send(Some((spans, Some(security))));
    }

    /// The stretch alone (the server's own: its NSGs are its security controller's).
    pub fn stretch(&self, spans: Vec<Span>) {
        let _ = self.latest.send(Some((spans, None)));
    }
}
