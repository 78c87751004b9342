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
//!
//! [`HostRouter::relocate`] is the cold move (redeploy, drain) between two hosts, either of
//! which may be this machine; the state files travel through [`crate::transfers`]:
//!
//! ```text
//!   set_power(Stopped, fence) on the source ─┬─ NotFound: target has it? ── yes: ensure there, done
//!                                            │                          └─ no: permanent error
//!   open transfer (id of key + fence) ◀──────┘
//!   export: source's state files ──▶ transfers/<id>/ (a remote source uploads them)
//!   ensure_moved on the target (a remote target fetches and checks them)
//!   destroy(fence) on the source (unreachable now: source_destroyed = false, not an error)
//!   close transfer (its files removed), whatever happened
//! ```

use crate::remote::RemoteDriver;
use crate::HostLinks;
use async_trait::async_trait;
use herd_driver::{
    Driver, DriverError, Fence, InstanceSpec, InstanceStats, Listing, ObservedInstance, PowerTarget, Relocated,
    ScriptOutcome, ScriptRun,
};
use herd_model::image::ImageSource;
use herd_model::InstanceKey;
use herd_state::keys::InstanceRecordKey;
use herd_state::Records;
use std::sync::Arc;

/// How long a linked host has to list its instances before this pass takes it as unreachable.
pub const LIST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where a host is, for the router.
enum Place {
    /// This machine: its own driver.
    Local,
    /// A joined host, through its agent.
    Remote(RemoteDriver),
}

impl Place {
    /// The joined host's name (None: this machine).
    fn host(&self) -> Option<&str> {
        match self {
            Place::Local => None,
            Place::Remote(r) => Some(r.host()),
        }
    }

    fn name(&self) -> &str {
        self.host().unwrap_or("this server's machine")
    }
}

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
        Ok(match self.place_of(host).await? {
            Place::Local => self.local.clone(),
            Place::Remote(r) => Arc::new(r),
        })
    }

    /// Where host `host` (`None`: this machine) is: this machine, or a joined host.
    async fn place_of(&self, host: Option<&str>) -> Result<Place, DriverError> {
        // This machine's own names need no lookup: no joined host can take them.
        let Some(host) = host.filter(|h| !h.is_empty() && *h != herd_model::host::LOCAL_HOST) else {
            return Ok(Place::Local);
        };
        let name = host.to_string();
        let joined = self
            .links
            .state
            .run(move |s| herd_state::hosts::get(s, &name))
            .await
            .map_err(|e| DriverError::Failed(format!("reading host {host}: {e}")))?;
        Ok(match joined {
            Some(_) => Place::Remote(RemoteDriver::new(self.links.clone(), host)),
            None => Place::Local,
        })
    }

    fn driver_at(&self, place: &Place) -> Arc<dyn Driver> {
        match place {
            Place::Local => self.local.clone(),
            Place::Remote(r) => Arc::new(r.clone()),
        }
    }

    /// Whether the host at `place` has instance `key` now.
    async fn has(&self, place: &Place, key: &InstanceKey) -> Result<bool, DriverError> {
        let listed = match place {
            Place::Local => self.local.list().await?,
            Place::Remote(r) => r.list_within(LIST_TIMEOUT).await?,
        };
        Ok(listed.iter().any(|o| &o.key == key))
    }

    /// The copy of a relocation, under transfer `id` (opened): export from the source, build
    /// on the target. The bytes copied.
    async fn copy_over(
        &self,
        spec: &InstanceSpec,
        fence: Fence,
        id: &str,
        source: &Place,
        target: &Place,
    ) -> Result<u64, DriverError> {
        let key = &spec.key;
        let started = std::time::Instant::now();
        let files = match source {
            Place::Local => {
                let files = self.local.state_files(key, fence).await?;
                self.links
                    .transfers
                    .stage_local(id, files)
                    .await
                    .map_err(|e| DriverError::Failed(format!("instance {key}: staging its state files: {e}")))?
            }
            Place::Remote(r) => r.export_state(key, fence, id).await?,
        };
        let bytes: u64 = files.iter().map(|f| f.size).sum();
        tracing::info!(instance = %key, transfer = %id, files = files.len(), bytes, seconds = format!("{:.2}", started.elapsed().as_secs_f64()), "a moved instance's state is staged");
        let building = std::time::Instant::now();
        match target {
            Place::Local => self.local.ensure_moved(spec, fence, &self.links.transfers.dir(id)).await?,
            Place::Remote(r) => r.ensure_moved_from(spec, fence, id, files).await?,
        }
        tracing::info!(instance = %key, transfer = %id, bytes, seconds = format!("{:.2}", building.elapsed().as_secs_f64()), "a moved instance is built and started on its new host");
        Ok(bytes)
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

    /// The cold move of `spec.key` from host `from` to `spec.host` (see the module docs).
    async fn relocate(&self, spec: &InstanceSpec, from: &str, fence: Fence) -> Result<Relocated, DriverError> {
        let key = &spec.key;
        let (source, target) = (self.place_of(Some(from)).await?, self.place_of(spec.host.as_deref()).await?);
        if source.host() == target.host() {
            return Err(DriverError::InvalidSpec {
                key: key.clone(),
                reason: format!(
                    "instance {key}: its old host {from} and its new host {} are the same machine: nothing to move",
                    spec.host.as_deref().unwrap_or(herd_model::host::LOCAL_HOST)
                ),
            });
        }
        let started = std::time::Instant::now();
        let on_source = self.driver_at(&source);
        // Stopped under the move's fence: from here on the old copy refuses every older call.
        match on_source.set_power(key, PowerTarget::Stopped, fence).await {
            Ok(()) => {}
            Err(DriverError::NotFound(_)) => {
                // Gone from the source: an earlier attempt got as far as the destroy, or the
                // instance is lost.
                if self.has(&target, key).await? {
                    self.driver_at(&target).ensure(spec, fence).await?;
                    tracing::info!(instance = %key, from = %source.name(), to = %target.name(), "the instance was moved before; it is on its new host");
                    return Ok(Relocated { bytes: 0, source_destroyed: true });
                }
                return Err(DriverError::InvalidSpec {
                    key: key.clone(),
                    reason: format!(
                        "instance {key} is neither on its old host {} nor on its new host {}: there is nothing to move (create it anew)",
                        source.name(),
                        target.name()
                    ),
                });
            }
            Err(e) => return Err(e),
        }
        let id = crate::transfers::transfer_id(key, fence);
        self.links.transfers.open(&id, key, source.host(), target.host());
        tracing::info!(instance = %key, from = %source.name(), to = %target.name(), transfer = %id, "moving a stopped instance");
        let copied = self.copy_over(spec, fence, &id, &source, &target).await;
        self.links.transfers.close(&id).await;
        let bytes = copied?;
        let source_destroyed = match on_source.destroy(key, fence).await {
            Ok(()) | Err(DriverError::NotFound(_)) => true,
            Err(e) => {
                tracing::warn!(instance = %key, host = %source.name(), error = %e, "the moved instance's old copy could not be destroyed; it is stale there");
                false
            }
        };
        tracing::info!(instance = %key, from = %source.name(), to = %target.name(), bytes, seconds = format!("{:.2}", started.elapsed().as_secs_f64()), source_destroyed, "instance moved");
        Ok(Relocated { bytes, source_destroyed })
    }
}
