//! The cluster id and what the server does at start when its store and its instances disagree.
//!
//! Why: an empty or missing `herd.db` next to running instances used to make the first pass
//! destroy every one of them as orphans. Now the data dir records a random cluster id
//! (`cluster-id`, created once), the drivers mark every instance with it (directory `tag`
//! file, process environment, QEMU argv marker), and a server that finds instances of its
//! own cluster but an empty store refuses to start until the operator says what to do:
//! `--keep-orphans` (they keep running, listed as unmanaged) or `--destroy-orphans`.
//! Instances of another cluster, or without a cluster id (older than this), are never touched.

use anyhow::{bail, Context, Result};
use herd_driver::Driver;
use herd_model::InstanceKey;
use herd_reconciler::orphans::Unmanaged;
use herd_state::intents::Writes;
use herd_state::keys::CounterKey;
use herd_state::{Expected, Records, State, StateError, Store};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub use herd_driver::tag::{driver_tag, CLUSTER_ID_FILE};

/// What to do at start with instances of this cluster that the store has no record of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OrphanStart {
    /// Refuse to start if the store is empty while such instances exist (the default); with a
    /// non-empty store they are left to the reconciler's grace and hourly limit.
    #[default]
    Refuse,
    /// `--keep-orphans`: leave them running, listed as unmanaged, never destroyed.
    Keep,
    /// `--destroy-orphans`: destroy them (and the unmanaged ones) before starting.
    Destroy,
}

/// A data dir's cluster identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// 32 hex digits, random, created once.
    pub id: String,
    /// The driver tag: `herd:<id>`, except for a data dir that already had instances when it
    /// got its cluster id (an upgrade), which keeps the tag its running instances were started
    /// with (`herd:<data dir>`), so they stay recognised (a QEMU's argv marker cannot change).
    pub tag: String,
    /// Created by this start.
    pub created: bool,
}

/// Reads the data dir's cluster id, creating a random one (mode 0600) on first start. When
/// it is created for a store that already records instances, `legacy_tag` is kept as the
/// cluster's driver tag (second line `legacy-tag <tag>`).
pub fn load_or_create(data_dir: &Path, legacy_tag: Option<String>) -> Result<Cluster> {
    let path = data_dir.join(CLUSTER_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let (id, tag) = herd_driver::tag::parse_cluster_file(&text);
            if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!(
                    "{} does not hold a cluster id (32 hex digits); restore it from a backup, or remove it only if no instance of this server runs",
                    path.display()
                );
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            Ok(Cluster { id, tag, created: false })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut b = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
            let id: String = b.iter().map(|x| format!("{x:02x}")).collect();
            let mut text = format!("{id}\n");
            if let Some(t) = &legacy_tag {
                text.push_str(&format!("legacy-tag {t}\n"));
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            let tag = legacy_tag.unwrap_or_else(|| driver_tag(&id));
            Ok(Cluster { id, tag, created: true })
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Keys of every instance record in the store, including quarantined ones (which still count
/// as records), and whether the store holds no scale set and no instance at all.
fn recorded(store: &dyn Store) -> Result<(std::collections::BTreeSet<String>, bool), StateError> {
    // Store keys zero-pad the id (`rg/web/0000000007`); compare as `rg/web/7`.
    let norm = |k: &str| InstanceKey::parse_path(k).map_or_else(|| k.to_string(), |k| k.path());
    let mut keys: std::collections::BTreeSet<String> = store.instance_keys()?.iter().map(|k| norm(k)).collect();
    let sets = store.scale_set_keys()?.len();
    keys.extend(store.quarantined_instance_keys().iter().map(|k| norm(k)));
    let quarantined_any = store.any_quarantined();
    Ok((keys.clone(), keys.is_empty() && sets == 0 && !quarantined_any))
}

/// Checks the store against the instances the driver lists, before anything reconciles.
pub async fn check_orphans_at_start(
    state: &State,
    driver: &dyn Driver,
    policy: OrphanStart,
    cluster_id: &str,
    db: &Path,
    term: herd_driver::Term,
) -> Result<()> {
    let (recorded, store_empty) = state.run(recorded).await?;
    let listed = driver.list().await.map_err(|e| anyhow::anyhow!("listing instances at start: {e}"))?;
    let unrecorded: Vec<InstanceKey> =
        listed.into_iter().map(|o| o.key).filter(|k| !recorded.contains(&k.path())).collect();
    let mut unmanaged_obj = state.run(|s| s.counter::<Unmanaged>(CounterKey::UnmanagedInstances)).await?;
    match policy {
        OrphanStart::Refuse if store_empty && !unrecorded.is_empty() => {
            let sample: Vec<String> = unrecorded.iter().take(5).map(|k| k.path()).collect();
            bail!(
                "refusing to start: the store {} is empty (or was missing), but {} instance(s) of this cluster ({cluster_id}) exist on this host (such as {}). \
                 Starting would destroy them as orphans. Restore herd.db from a backup, or start with --keep-orphans to leave them running, \
                 listed as unmanaged in 'herd server status' (herd never destroys them), or with --destroy-orphans to destroy them.",
                db.display(),
                unrecorded.len(),
                sample.join(", ")
            );
        }
        OrphanStart::Refuse => {}
        OrphanStart::Keep => {
            if unrecorded.is_empty() {
                return Ok(());
            }
            let mut list = unmanaged_obj.as_ref().map(|o| o.value.clone()).unwrap_or_default();
            let now = chrono::Utc::now();
            for k in &unrecorded {
                if list.instances.insert(k.path(), now).is_none() {
                    tracing::warn!(instance = %k, "keeping an instance without a record: it runs unmanaged (--keep-orphans)");
                }
            }
            let expected = unmanaged_obj.as_ref().map_or(Expected::Absent, |o| Expected::Revision(o.revision));
            let mut w = Writes::new();
            w.put_counter(CounterKey::UnmanagedInstances, &list, expected)?;
            state.run(move |s| w.commit(s)).await?;
            eprintln!(
                "herd server: {} instance(s) without a record keep running unmanaged (--keep-orphans); see 'herd server status'",
                unrecorded.len()
            );
        }
        OrphanStart::Destroy => {
            let mut failed = 0;
            for k in &unrecorded {
                tracing::warn!(instance = %k, "destroying an instance without a record (--destroy-orphans)");
                // No record, so no incarnation: fenced by the term only.
                if let Err(e) = driver.destroy(k, herd_driver::Fence::sweep(term)).await {
                    tracing::error!(instance = %k, error = %e, "could not destroy an instance without a record");
                    failed += 1;
                }
            }
            if let Some(o) = unmanaged_obj.take() {
                let mut w = Writes::new();
                w.remove_counter(CounterKey::UnmanagedInstances, Expected::Revision(o.revision));
                state.run(move |s| w.commit(s)).await?;
            }
            if failed > 0 {
                bail!("--destroy-orphans: {failed} of {} instance(s) without a record could not be destroyed (see the log)", unrecorded.len());
            }
            if !unrecorded.is_empty() {
                eprintln!(
                    "herd server: destroyed {} instance(s) without a record (--destroy-orphans)",
                    unrecorded.len()
                );
            }
        }
    }
    Ok(())
}
