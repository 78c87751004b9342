//! [`HostRouter`]: the server's one driver once hosts can join. Each instance's calls go to the
//! driver of the host it is placed on: the server's own driver for instances on this machine
//! (no host recorded, `local`, or a declared `[[hosts]]` entry), a [`RemoteDriver`] for an
//! instance on a joined host.
//!
//! Why the store decides and not a cache: an instance's host is in its record, written before
//! the instance is built (placement is Phase A of the reconciler's pass), so a call for a key
//! alone (power, restart, destroy, stats, scripts, console) reads the record and goes where the
//! instance is, after a server restart too. `list` is this machine's list and every joined
//! host's; a host that is not linked or does not answer within [`LIST_TIMEOUT`] is reported
//! unreachable ([`Listing::unreachable_hosts`]), so its instances are unknown this pass, not
//! gone (a server that has just restarted, before its agents dial in again, must not conclude
//! that every remote instance disappeared).

use crate::remote::RemoteDriver;
use crate::HostLinks;
use async_trait::async_trait;
use herd_driver::{
    Driver, DriverError, Fence, InstanceSpec, InstanceStats, Listing, ObservedInstance, PowerTarget, ScriptOutcome,
    ScriptRun,
};
use herd_model::image::ImageSource;
use herd_model::InstanceKey;
use herd_state::keys::InstanceRecordKey;
use herd_state::Records;
use std::sync::Arc;

/// How long a linked host has to list its instances before this pass takes it as unreachable.
pub const LIST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Routes each instance's calls to its host's driver (see the module docs).
pub struct HostRouter {
    local: Arc<dyn Driver>,
    links: Arc<HostLinks>,
}

impl HostRouter {
    pub fn new(local: Arc<dyn Driver>, links: Arc<HostLinks>) -> Self {
        Self { local, links }
    }

    /// The driver of host `host` (`None`: this machine): remote only for a joined host.
    async fn driver_of(&self, host: Option<&str>) -> Result<Arc<dyn Driver>, DriverError> {
        // This machine's own names need no lookup: no joined host can take them.
        let Some(host) = host.filter(|h| !h.is_empty() && *h != herd_model::host::LOCAL_HOST) else {
            return Ok(self.local.clone());
        };
        let name = host.to_string();
        let joined = self
            .links
            .state
            .run(move |s| herd_state::hosts::get(s, &name))
            .await
            .map_err(|e| DriverError::Failed(format!("reading host {host}: {e}")))?;
        Ok(match joined {
            Some(_) => Arc::new(RemoteDriver::new(self.links.clone(), host)),
            None => self.local.clone(),
        })
    }

    /// The driver of the host instance `key` is placed on, by its record.
    async fn driver_for(&self, key: &InstanceKey) -> Result<Arc<dyn Driver>, DriverError> {
        let k = InstanceRecordKey(key.clone());
        let host = self
            .links
            .state
            .run(move |s| Ok(s.instance(&k)?.and_then(|r| r.value.host)))
            .await
            .map_err(|e| DriverError::Failed(format!("reading instance {key}: {e}")))?;
        self.driver_of(host.as_deref()).await
    }
}

#[async_trait]
impl Driver for HostRouter {
    fn name(&self) -> &'static str {
        self.local.name()
    }

    async fn ensure(&self, spec: &InstanceSpec, fence: Fence) -> Result<(), DriverError> {
        self.driver_of(spec.host.as_deref()).await?.ensure(spec, fence).await
    }

    async fn set_power(&self, key: &InstanceKey, target: PowerTarget, fence: Fence) -> Result<(), DriverError> {
        self.driver_for(key).await?.set_power(key, target, fence).await
    }

    async fn restart(&self, key: &InstanceKey, fence: Fence) -> Result<(), DriverError> {
        self.driver_for(key).await?.restart(key, fence).await
    }

    async fn resize(&self, spec: &InstanceSpec, fence: Fence) -> Result<(), DriverError> {
        self.driver_of(spec.host.as_deref()).await?.resize(spec, fence).await
    }

    async fn reimage(&self, spec: &InstanceSpec, fence: Fence) -> Result<(), DriverError> {
        self.driver_of(spec.host.as_deref()).await?.reimage(spec, fence).await
    }

    async fn destroy(&self, key: &InstanceKey, fence: Fence) -> Result<(), DriverError> {
        self.driver_for(key).await?.destroy(key, fence).await
    }

    async fn list(&self) -> Result<Vec<ObservedInstance>, DriverError> {
        Ok(self.list_hosts().await?.instances)
    }

    async fn list_hosts(&self) -> Result<Listing, DriverError> {
        let mut listing = Listing { instances: self.local.list().await?, unreachable_hosts: Default::default() };
        // The joined hosts, and where each instance's record places it: a host's copy of an
        // instance placed elsewhere now (moved away while the host was silent, issue 21) is not
        // that instance; it is left out of the listing and destroyed when the host returns.
        let (joined, placed): (Vec<String>, std::collections::HashMap<String, Option<String>>) = self
            .links
            .state
            .run(|s| {
                let joined = herd_state::hosts::list(s)?.into_iter().map(|h| h.name).collect();
                let mut placed = std::collections::HashMap::new();
                for o in herd_state::Records::instances(s)? {
                    if let Ok(k) = o.key.parse::<herd_state::keys::InstanceRecordKey>() {
                        placed.insert(k.0.path(), o.value.host);
                    }
                }
                Ok((joined, placed))
            })
            .await
            .map_err(|e| DriverError::Failed(format!("reading the joined hosts: {e}")))?;
        let linked = self.links.linked();
        let remotes = joined.into_iter().map(|host| {
            let remote = RemoteDriver::new(self.links.clone(), host.clone());
            let is_linked = linked.contains(&host);
            async move {
                let listed = if is_linked {
                    remote.list_within(LIST_TIMEOUT).await
                } else {
                    Err(DriverError::Failed(format!("host {host} is not connected")))
                };
                (host, listed)
            }
        });
        for (host, listed) in futures::future::join_all(remotes).await {
            match listed {
                Ok(v) => listing.instances.extend(v.into_iter().filter(|o| match placed.get(&o.key.path()) {
                    Some(on) => on.as_deref() == Some(host.as_str()),
                    None => true, // no record: an orphan candidate, as on any host
                })),
                Err(e) => {
                    tracing::debug!(%host, error = %e, "a host's instances could not be listed");
                    listing.unreachable_hosts.insert(host);
                }
            }
        }
        Ok(listing)
    }

    async fn stats(&self, key: &InstanceKey) -> Result<Option<InstanceStats>, DriverError> {
        self.driver_for(key).await?.stats(key).await
    }

    async fn run_script(&self, key: &InstanceKey, run: &ScriptRun, fence: Fence) -> Result<ScriptOutcome, DriverError> {
        self.driver_for(key).await?.run_script(key, run, fence).await
    }

    fn guest_agents_answered(&self) -> Vec<(InstanceKey, ImageSource)> {
        self.local.guest_agents_answered()
    }

    async fn console_log(&self, key: &InstanceKey, max_bytes: usize) -> Result<Option<String>, DriverError> {
        self.driver_for(key).await?.console_log(key, max_bytes).await
    }
}
