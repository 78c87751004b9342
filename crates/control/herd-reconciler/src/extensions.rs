//! Runs an instance's extensions in the background and records how they went.
//!
//! Why apart from the executor's driver calls: a script may run for minutes (installing an app
//! and waiting for it to answer), and a reconcile pass must not wait for it. The planner asks
//! for `RunExtensions` while an instance is `Running` with that pending action; the executor
//! hands the instance to this runner, which runs at most one task per instance and skips the
//! step while one is in flight. The task re-reads everything from the store (it takes no
//! input), runs each extension whose fingerprint changed, in `provisionAfterExtensions` order,
//! stopping at the first failure, and writes the statuses back with a compare-and-swap — only
//! if the instance is still the one it ran on (same state, same `state_since`, still pending).
//! A crash mid-run leaves the action pending, so the next server runs it again; Custom Script
//! commands must be idempotent, as in Azure.
//!
//! Files: `file://` URIs are read here (they name files on the server's machine); `http(s)`
//! ones travel in `ScriptRun::downloads` with the rules of this server's config, and the
//! machine that runs the instance (this one, or a joined host's agent) downloads them when the
//! run starts (see `herd_egress::fetch`).
//!
//! Secrets: protected settings are opened here, passed to the driver in `ScriptRun::command`
//! (which drivers never put in an argv), and masked in every message before it is written
//! back (stdout and stderr tails included; see `herd_model::extension::Redactor` for what is
//! masked), so neither the record nor the store's WAL ever holds them. A download's URI is
//! named in messages, here and on the host, without its query string and masked when it is
//! protected (`Download::shown`).

use crate::fetch::{self, FetchLimits, Fetcher};
use base64::Engine;
use herd_driver::{Download, Downloads, Driver, Fence, Incarnation, LeaderTerm, ScriptRun};
use herd_model::{
    activity::{ActivityEvent, ActivityStatus, Actor},
    clock::Clock,
    extension::{self, Command, Extension, ExtensionRunState, ExtensionStatus},
    instance::{InstanceRecord, InstanceState, PendingAction},
    scale_set::{Secrets, StoredScaleSet},
    InstanceKey,
};
use herd_state::keys::InstanceRecordKey;
use herd_state::seal::Sealer;
use herd_state::{Expected, Records, State, StateError, Store};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Tunables of extension runs.
#[derive(Debug, Clone)]
pub struct ExtensionConfig {
    pub fetch: FetchLimits,
    /// How long one script may run when the model sets no `extensionsTimeBudget`.
    pub run_timeout: Duration,
}

impl Default for ExtensionConfig {
    fn default() -> Self {
        Self { fetch: FetchLimits::default(), run_timeout: Duration::from_secs(30 * 60) }
    }
}

/// Background extension runs, one per instance at most.
pub struct ExtensionRunner {
    state: State,
    driver: Arc<dyn Driver>,
    clock: Arc<dyn Clock>,
    sealer: Arc<Sealer>,
    wake: Arc<Notify>,
    config: ExtensionConfig,
    fetcher: Fetcher,
    in_flight: Mutex<BTreeSet<InstanceKey>>,
    /// The leader's term, for the fence of each script run.
    term: LeaderTerm,
}

impl ExtensionRunner {
    pub fn new(
        state: State,
        driver: Arc<dyn Driver>,
        clock: Arc<dyn Clock>,
        sealer: Arc<Sealer>,
        wake: Arc<Notify>,
        config: ExtensionConfig,
        term: LeaderTerm,
    ) -> Self {
        Self {
            state,
            driver,
            clock,
            sealer,
            wake,
            fetcher: Fetcher::new(config.fetch.clone()),
            config,
            in_flight: Mutex::new(BTreeSet::new()),
            term,
        }
    }

    fn flights(&self) -> std::sync::MutexGuard<'_, BTreeSet<InstanceKey>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True while a run for `key` is under way.
    pub fn is_running(&self, key: &InstanceKey) -> bool {
        self.flights().contains(key)
    }

    /// Any run under way.
    pub fn busy(&self) -> bool {
        !self.flights().is_empty()
    }

    /// Starts a run for `key` unless one is under way.
    pub fn start(self: &Arc<Self>, key: InstanceKey) {
        if !self.flights().insert(key.clone()) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.run(&key).await {
                tracing::warn!(instance = %key, error = %e, "extension run could not be recorded; it will be retried");
            }
            me.flights().remove(&key);
            me.wake.notify_one();
        });
    }

    async fn run(&self, key: &InstanceKey) -> Result<(), String> {
        let rec_key = InstanceRecordKey::new(key.clone());
        let err = |e: StateError| e.to_string();
        let k = rec_key.clone();
        let read = self.state.run(move |s| read_run(s, &k)).await.map_err(err)?;
        let Some((set, rec, sealed)) = read else { return Ok(()) };
        let since = rec.value.state_since;
        let fence = self.term.fence(Incarnation(rec.value.incarnation));
        let generation = set.value.model_generation;
        let secrets: Secrets = match sealed {
            Some(v) => self.sealer.open(&v).map_err(|e| e.to_string())?,
            None => Secrets::default(),
        };
        let model = &set.value.model;
        let timeout = model
            .virtual_machine_profile
            .extension_profile
            .as_ref()
            .and_then(|p| p.extensions_time_budget.as_deref())
            .and_then(herd_model::duration::parse_iso8601)
            .and_then(|d| d.to_std().ok())
            .unwrap_or(self.config.run_timeout);
        let ordered: Vec<&Extension> =
            model.virtual_machine_profile.extension_profile.as_ref().map(|p| p.ordered()).unwrap_or_default();
        let mut statuses: Vec<ExtensionStatus> =
            rec.value.extensions.iter().filter(|s| ordered.iter().any(|e| e.name == s.name)).cloned().collect();
        let mut ran = Vec::new();
        let mut failure = None;
        for e in ordered {
            let prot = secrets.extension_protected_settings.get(&e.name.to_ascii_lowercase());
            let fp = format!(
                "{}-{}",
                e.public_fingerprint(),
                prot.map(|p| self.sealer.digest(p.to_string().as_bytes())).unwrap_or_default()
            );
            if statuses
                .iter()
                .any(|s| s.name == e.name && s.fingerprint == fp && s.state == ExtensionRunState::Succeeded)
            {
                continue;
            }
            let status = self.run_one(key, fence, e, prot, fp, timeout).await;
            let failed = status.state == ExtensionRunState::Failed;
            if failed {
                failure = Some(format!("extension {} failed: {}", e.name, first_line(&status.message)));
            }
            ran.push(e.name.clone());
            statuses.retain(|s| s.name != e.name);
            statuses.push(status);
            if failed {
                break;
            }
        }

        let outcome = RunOutcome { statuses, failure, ran, since, generation };
        let clock = self.clock.clone();
        let key = key.clone();
        self.state.run(move |s| record_run(s, &rec_key, &key, &outcome, &*clock)).await.map_err(err)?
    }

    /// The virtual networks' address spaces and the public IPs' addresses, refused to
    /// `fileUris` downloads (unless allowed): an instance's script must not reach other
    /// instances or their frontends through the host.
    async fn vnet_ranges(&self) -> Vec<(herd_egress::Net, String)> {
        let read =
            self.state.run(|s| Ok((s.public_ips().unwrap_or_default(), s.virtual_networks().unwrap_or_default())));
        let (pips, vnets) = read.await.unwrap_or_default();
        let pips = pips.into_iter().filter_map(|o| {
            let net = herd_egress::Net::parse(o.value.ip_address.as_deref()?).ok()?;
            Some((net, format!("herd public IP '{}'", o.value.name)))
        });
        vnets
            .into_iter()
            .flat_map(|o| {
                let name = o.value.name.clone();
                o.value.address_space.address_prefixes.into_iter().filter_map(move |p| {
                    let net = herd_egress::Net::parse(&p.to_string()).ok()?;
                    Some((net, format!("herd virtual network '{name}'")))
                })
            })
            .chain(pips)
            .collect()
    }

    /// Downloads the files and runs one extension's command; never fails, it reports.
    async fn run_one(
        &self,
        key: &InstanceKey,
        fence: Fence,
        e: &Extension,
        prot: Option<&Value>,
        fingerprint: String,
        timeout: Duration,
    ) -> ExtensionStatus {
        let uris = e.file_uris(prot);
        let keep: Vec<String> = uris.iter().filter_map(|u| fetch::file_name(u)).collect();
        let redactor = run_redactor(prot, &keep);
        let redact = |s: &str| redactor.redact(s);
        let mut status = ExtensionStatus {
            name: e.name.clone(),
            kind: e.full_type(),
            type_handler_version: e.properties.type_handler_version.clone(),
            state: ExtensionRunState::Failed,
            exit_code: None,
            message: String::new(),
            time: self.clock.now(),
            fingerprint,
        };
        let mut files = Vec::new();
        let mut downloads = Vec::new();
        let fetcher =
            if uris.is_empty() { self.fetcher.clone() } else { self.fetcher.refusing(self.vnet_ranges().await) };
        for u in &uris {
            // How messages (here, on the host, in its logs) name it: no query string (where a
            // SAS-like token lives), protected values masked.
            let shown = redact(fetch::without_query(u));
            let Some(name) = fetch::file_name(u) else {
                status.message = format!("Enable failed: cannot tell a file name from {shown}");
                return status;
            };
            if !fetch::is_file_uri(u) {
                // Downloaded by the machine that runs the instance, when the run starts.
                downloads.push(Download { name, uri: u.clone(), shown });
                continue;
            }
            match fetcher.read_file(u).await {
                Ok(bytes) => files.push((name, bytes)),
                Err(why) => {
                    status.message = redact(&format!("Enable failed: downloading {shown} failed: {why}"));
                    return status;
                }
            }
        }
        let downloads = Downloads { files: downloads, rules: fetcher.rules() };
        let command = match e.command(prot) {
            Some(Command::Shell(c)) => c,
            Some(Command::Script(b64)) => match base64::engine::general_purpose::STANDARD.decode(b64.trim()) {
                Ok(script) => {
                    files.push(("script.sh".into(), script));
                    "/bin/sh ./script.sh".into()
                }
                Err(_) => {
                    status.message = "Enable failed: settings.script is not valid base64".into();
                    return status;
                }
            },
            None => {
                status.message = "Enable failed: no commandToExecute or script".into();
                return status;
            }
        };
        let identity = status.fingerprint.clone();
        let run = ScriptRun { name: e.name.clone(), files, downloads, command, timeout, identity };
        match self.driver.run_script(key, &run, fence).await {
            Ok(out) => {
                status.exit_code = out.exit_code;
                let verdict = if out.succeeded() {
                    status.state = ExtensionRunState::Succeeded;
                    "Enable succeeded".to_string()
                } else if out.timed_out {
                    format!("Enable failed: timed out after {}s", timeout.as_secs())
                } else {
                    match out.exit_code {
                        Some(c) => format!("Enable failed: exit code {c}"),
                        None => "Enable failed: killed by a signal".into(),
                    }
                };
                let text = format!(
                    "{verdict}\n[stdout]\n{}\n[stderr]\n{}",
                    String::from_utf8_lossy(&out.stdout).trim_end(),
                    String::from_utf8_lossy(&out.stderr).trim_end()
                );
                status.message = redact(&text);
            }
            Err(why) => status.message = redact(&format!("Enable failed: {why}")),
        }
        status.time = self.clock.now();
        status
    }
}

/// What every message about an extension run masks: each protected value (a protected URI
/// also in the form messages name it, without its query string) and what a protected script
/// would print; `keep` (the downloaded files' names) stays readable.
fn run_redactor(prot: Option<&Value>, keep: &[String]) -> extension::Redactor {
    let mut secrets: Vec<String> = prot.map(extension::secret_strings).unwrap_or_default();
    // A protected URI is shown without its query string: mask that form too.
    let bare: Vec<String> = secrets
        .iter()
        .filter(|s| s.contains("://") && fetch::without_query(s) != s.as_str())
        .map(|s| fetch::without_query(s).to_string())
        .collect();
    secrets.extend(bare);
    if let Some(Value::String(b64)) = prot.and_then(|p| p.get("script")) {
        // A protected script is as secret as a protected command: mask what it would print.
        if let Ok(script) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) {
            secrets.push(String::from_utf8_lossy(&script).into_owned());
        }
    }
    extension::Redactor::new(&secrets, keep)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// What a run starts from: the set, the instance record (when it is running and waits for its
/// extensions), and the set's sealed secrets. None when there is nothing to run.
type RunStart = Option<(herd_state::Versioned<StoredScaleSet>, herd_state::Versioned<InstanceRecord>, Option<Value>)>;

fn read_run(store: &dyn Store, key: &InstanceRecordKey) -> Result<RunStart, StateError> {
    let Some(set) = store.scale_set(&key.set())? else { return Ok(None) };
    let Some(rec) = store.instance(key)? else { return Ok(None) };
    if rec.value.state != InstanceState::Running || rec.value.pending != Some(PendingAction::RunExtensions) {
        return Ok(None);
    }
    let sealed = store.sealed_set_secrets(&key.set())?;
    Ok(Some((set, rec, sealed)))
}

/// How a run went, to record on the instance.
struct RunOutcome {
    statuses: Vec<ExtensionStatus>,
    failure: Option<String>,
    ran: Vec<String>,
    /// The instance's `state_since` when the run started: a record that moved on since is left.
    since: chrono::DateTime<chrono::Utc>,
    generation: u64,
}

/// Records a run's outcome on the instance (compare-and-swap, re-read after a conflict), with
/// its activity line. Returns the error text when it could not.
fn record_run(
    store: &dyn Store,
    rec_key: &InstanceRecordKey,
    key: &InstanceKey,
    o: &RunOutcome,
    clock: &dyn Clock,
) -> Result<Result<(), String>, StateError> {
    for _ in 0..5 {
        let Some(cur) = store.instance(rec_key)? else {
            return Ok(Ok(()));
        };
        let r = &cur.value;
        if r.state != InstanceState::Running
            || r.state_since != o.since
            || r.pending != Some(PendingAction::RunExtensions)
        {
            return Ok(Ok(())); // The instance moved on (reimaged, stopped, deleted): the result is moot.
        }
        let mut next = r.clone();
        next.extensions = o.statuses.clone();
        next.pending = None;
        next.model_generation = next.model_generation.max(o.generation);
        let had_ext_error = r.last_error.as_deref().is_some_and(|m| m.starts_with("extension "));
        if let Some(f) = &o.failure {
            next.last_error = Some(f.clone());
        } else if had_ext_error {
            next.last_error = None;
        }
        let (status, message) = match &o.failure {
            Some(f) => (ActivityStatus::Failed, format!("instance {}: {f}", key.id)),
            None if o.ran.is_empty() => {
                (ActivityStatus::Succeeded, format!("instance {}: extensions already up to date", key.id))
            }
            None => {
                (ActivityStatus::Succeeded, format!("instance {}: extension(s) {} succeeded", key.id, o.ran.join(", ")))
            }
        };
        let ev = ActivityEvent {
            seq: 0,
            time: clock.now(),
            resource_group: key.group.to_string(),
            resource: key.set.to_string(),
            operation: "RunExtensions".into(),
            status,
            actor: Actor::Reconciler,
            message,
        };
        match store.update_instance(rec_key, &next, Expected::Revision(cur.revision), Some(ev)) {
            Ok(_) => return Ok(Ok(())),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Ok(Err(e.to_string())),
        }
    }
    Ok(Err("the instance record kept changing".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_download_is_named_without_its_query_and_masked_when_protected() {
        let public = "https://files.example/app/install.sh?sv=1&sig=SEKRIT";
        let protected = "https://files.example/private-area/setup.sh?sig=OTHER";
        let prot = json!({"fileUris": [protected], "commandToExecute": "sh setup.sh"});
        let keep = vec!["install.sh".to_string(), "setup.sh".to_string()];
        let r = run_redactor(Some(&prot), &keep);
        assert_eq!(r.redact(fetch::without_query(public)), "https://files.example/app/install.sh");
        assert_eq!(r.redact(fetch::without_query(protected)), "***", "a protected URI is not shown at all");
        assert_eq!(r.redact(protected), "***");
        // Without protected settings nothing is masked, and the query still never shows.
        assert_eq!(
            run_redactor(None, &keep).redact(fetch::without_query(public)),
            "https://files.example/app/install.sh"
        );
    }
}
