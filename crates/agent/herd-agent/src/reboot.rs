//! After a reboot of this host: its VMs start again only once the server says they are still
//! this host's.
//!
//! Why wait: while the host was down (or cut off), the server may have re-created its
//! instances on another host, with the same ids and private IPs. A VM this host started on its
//! own after booting would then answer from two hosts at once, until the server's Return path
//! destroyed it. So nothing starts before an acknowledgement: the first one (its `instances`,
//! the `group/set/id` of every instance the server places here) decides. The VMs it lists start
//! again (in a task of their own: a boot must not hold up the heartbeats); the others are left
//! down, and the server destroys those copies (they were moved). While the server cannot be
//! reached, nothing starts.
//!
//! What waits is only what the reboot took down (the driver says which: desired power running,
//! not running, started under another boot id). An agent restarted without a reboot finds its
//! VMs running and waits for nothing: nothing is ever stopped for want of an acknowledgement
//! (only its NICs are fenced until then, see [`crate::network`]).
//!
//! ```text
//!   agent start ──▶ Unacknowledged{down}   (nothing starts; NICs fenced)
//!        first Ack{instances} ──▶ start down ∩ instances, leave down \ instances
//!                          ──▶ Acknowledged  (later acks change nothing here)
//! ```
//!
//! Process instances need nothing here: their driver starts nothing on its own after a reboot;
//! it reports them `Failed`, and the server's reconciler starts again those it still places
//! here, with a fenced call of its own.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// Starts again, after a reboot, the instances it is given (the host's VM driver).
#[async_trait::async_trait]
pub trait Resume: Send + Sync {
    /// Starts those of `keys` (`group/set/id`) that the reboot took down and that are still
    /// down (idempotent); returns those started.
    async fn resume(&self, keys: Vec<String>) -> Vec<String>;
}

/// Where the wait after a reboot is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// No acknowledgement yet: these instances (`group/set/id`) wait for one.
    Unacknowledged(BTreeSet<String>),
    /// The first acknowledgement came and decided.
    Acknowledged,
}

/// What one acknowledgement decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Listed by the server: start them again.
    pub start: Vec<String>,
    /// Not listed: left down (moved away, or no longer the server's).
    pub left_down: Vec<String>,
}

impl Phase {
    /// An acknowledgement listing `instances`: what to start and what to leave down. Only the
    /// first decides; after it the phase is [`Phase::Acknowledged`] and nothing more happens.
    pub fn acknowledged(&mut self, instances: &[String]) -> Decision {
        let Phase::Unacknowledged(down) = std::mem::replace(self, Phase::Acknowledged) else {
            return Decision::default();
        };
        let listed: BTreeSet<&str> = instances.iter().map(String::as_str).collect();
        let (start, left_down) = down.into_iter().partition(|k| listed.contains(k.as_str()));
        Decision { start, left_down }
    }
}

/// The host's wait after a reboot: the [`Phase`], and what starts the VMs.
pub struct AfterReboot {
    phase: Mutex<Phase>,
    resume: Arc<dyn Resume>,
}

impl AfterReboot {
    /// `down`: the instances the reboot took down (none after a mere agent restart).
    pub fn new(down: impl IntoIterator<Item = String>, resume: Arc<dyn Resume>) -> Arc<Self> {
        Arc::new(Self { phase: Mutex::new(Phase::Unacknowledged(down.into_iter().collect())), resume })
    }

    /// Where the wait is.
    pub fn phase(&self) -> Phase {
        self.phase.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The server acknowledged a heartbeat, listing `instances` as this host's: on the first
    /// one, the VMs it lists start again in a task of their own (this returns at once).
    pub fn acknowledged(&self, instances: &[String]) {
        let decision = self.phase.lock().unwrap_or_else(|e| e.into_inner()).acknowledged(instances);
        if !decision.left_down.is_empty() {
            tracing::info!(instances = ?decision.left_down, "down since this host's reboot and not listed by the server (moved away): left down");
        }
        if decision.start.is_empty() {
            return;
        }
        tracing::info!(instances = ?decision.start, "down since this host's reboot and listed by the server: starting them again");
        let resume = self.resume.clone();
        tokio::spawn(async move {
            let asked = decision.start.len();
            let started = resume.resume(decision.start).await;
            tracing::info!(started = started.len(), asked, "started again after this host's reboot");
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_first_acknowledgement_starts_what_it_lists_and_leaves_the_rest_down() {
        let mut p = Phase::Unacknowledged(keys(&["rg/web/0", "rg/web/1", "rg/web/2"]).into_iter().collect());
        // Instance 1 was moved away; instance 7 is new here (not down since the reboot).
        let d = p.acknowledged(&keys(&["rg/web/0", "rg/web/2", "rg/web/7"]));
        assert_eq!(d.start, keys(&["rg/web/0", "rg/web/2"]));
        assert_eq!(d.left_down, keys(&["rg/web/1"]));
        assert_eq!(p, Phase::Acknowledged);
        // A later acknowledgement listing the moved one back starts nothing: it was decided.
        assert_eq!(p.acknowledged(&keys(&["rg/web/1"])), Decision::default());
    }

    #[test]
    fn nothing_waits_after_an_agent_restart_without_a_reboot() {
        let mut p = Phase::Unacknowledged(BTreeSet::new());
        assert_eq!(p.acknowledged(&keys(&["rg/web/0"])), Decision::default());
        assert_eq!(p, Phase::Acknowledged);
    }

    struct Recorder(Mutex<Vec<Vec<String>>>, tokio::sync::Notify);

    #[async_trait::async_trait]
    impl Resume for Recorder {
        async fn resume(&self, keys: Vec<String>) -> Vec<String> {
            self.0.lock().unwrap().push(keys.clone());
            self.1.notify_one();
            keys
        }
    }

    #[tokio::test]
    async fn the_acknowledgement_starts_them_in_a_task_once() {
        let rec = Arc::new(Recorder(Mutex::new(Vec::new()), tokio::sync::Notify::new()));
        let after = AfterReboot::new(keys(&["rg/web/0", "rg/web/1"]), rec.clone());
        assert!(rec.0.lock().unwrap().is_empty(), "nothing starts before an acknowledgement");
        after.acknowledged(&keys(&["rg/web/1"]));
        tokio::time::timeout(std::time::Duration::from_secs(10), rec.1.notified()).await.expect("resumed");
        after.acknowledged(&keys(&["rg/web/0", "rg/web/1"]));
        assert_eq!(*rec.0.lock().unwrap(), vec![keys(&["rg/web/1"])]);
        assert_eq!(after.phase(), Phase::Acknowledged);
    }
}
