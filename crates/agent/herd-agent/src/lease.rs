//! The leases the server grants this host, per instance: until when the host may run (and
//! forward traffic for) each instance.
//!
//! Why here and why this shape: a host cut off from the server, or an agent frozen by SIGSTOP,
//! must stop answering for its instances before the server re-creates them elsewhere, without
//! running any code at that moment. The server grants a lease `L` in every heartbeat
//! acknowledgement, for the instances the acknowledgement lists; the agent counts it from the
//! instant it *sent* that heartbeat, on its monotonic clock, so the lease always ends before
//! the server's bound (last heartbeat received + `L`·(1+ρ) + margin, see
//! `herd_model::host::Silence::lease_bound`): the heartbeat was sent before it was received.
//! The length comes from the acknowledgement, never from this host's settings.
//!
//! This module only keeps the books ([`Leases`], pure, on an injected `Instant`); what enforces
//! them (kernel-expiring nftables set entries on the instances' bridged ports, re-armed with each
//! lease) reads [`Leases::until`] and [`Leases::granted`]. An instance the acknowledgement leaves
//! out gets no new lease: it was moved away, or is not this host's.
//!
//! ```text
//!   heartbeat seq sent at t ──▶ ack {seq, L, instances} ──▶ until(i) = t + L  for i in instances
//!                                                            (never moved back: max with the old)
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// How many sent heartbeats are remembered while their acknowledgements are awaited.
const REMEMBERED: usize = 64;

/// The leases of one host's instances.
#[derive(Debug, Default)]
pub struct Leases {
    /// Heartbeats sent and not yet acknowledged: (seq, when sent).
    sent: VecDeque<(u64, Instant)>,
    /// Instance key (`group/set/id`) → end of its lease.
    until: BTreeMap<String, Instant>,
    /// The length of the last lease granted.
    last_lease: Option<Duration>,
}

/// What one acknowledgement changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Granted {
    /// The end of the lease granted (None: the ack granted nothing: unknown seq, or zero).
    pub until: Option<Instant>,
    /// Instances that held a lease and are not listed any more: theirs is not renewed.
    pub dropped: Vec<String>,
}

impl Leases {
    /// Heartbeat `seq` left at `at`.
    pub fn sent(&mut self, seq: u64, at: Instant) {
        self.sent.push_back((seq, at));
        while self.sent.len() > REMEMBERED {
            self.sent.pop_front();
        }
    }

    /// A new connection: sequence numbers start again; leases held stay (they end on their own).
    pub fn new_session(&mut self) {
        self.sent.clear();
    }

    /// The acknowledgement of `seq`: a lease of `lease` from when `seq` was sent, for
    /// `instances`. Acknowledgements of older heartbeats are dropped with it (the server
    /// answers in order).
    pub fn acked(&mut self, seq: u64, lease: Duration, instances: &[String]) -> Granted {
        let Some(pos) = self.sent.iter().position(|(s, _)| *s == seq) else { return Granted::default() };
        let (_, at) = self.sent[pos];
        self.sent.drain(..=pos);
        if lease.is_zero() {
            return Granted::default();
        }
        let end = at + lease;
        self.last_lease = Some(lease);
        let listed: std::collections::BTreeSet<&str> = instances.iter().map(String::as_str).collect();
        let dropped: Vec<String> = self.until.keys().filter(|k| !listed.contains(k.as_str())).cloned().collect();
        for k in &dropped {
            self.until.remove(k);
        }
        for k in instances {
            let e = self.until.entry(k.clone()).or_insert(end);
            *e = (*e).max(end);
        }
        Granted { until: Some(end), dropped }
    }

    /// Until when instance `key` may run and forward (None: no lease).
    pub fn until(&self, key: &str) -> Option<Instant> {
        self.until.get(key).copied()
    }

    /// Whether instance `key` holds a lease at `now`.
    pub fn live(&self, key: &str, now: Instant) -> bool {
        self.until(key).is_some_and(|t| now < t)
    }

    /// Every instance with a lease, and its end.
    pub fn granted(&self) -> &BTreeMap<String, Instant> {
        &self.until
    }

    /// The length of the last lease granted.
    pub fn last_lease(&self) -> Option<Duration> {
        self.last_lease
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_lease_runs_from_when_the_heartbeat_was_sent_not_when_the_ack_came() {
        let t0 = Instant::now();
        let mut l = Leases::default();
        l.sent(1, t0);
        // The ack arrives 3 s later; the lease still counts from t0.
        let g = l.acked(1, Duration::from_secs(10), &keys(&["rg/web/0", "rg/web/1"]));
        assert_eq!(g.until, Some(t0 + Duration::from_secs(10)));
        assert_eq!(l.until("rg/web/0"), Some(t0 + Duration::from_secs(10)));
        assert!(l.live("rg/web/1", t0 + Duration::from_secs(9)));
        assert!(!l.live("rg/web/1", t0 + Duration::from_secs(10)), "over at t0 + L exactly");
        assert!(!l.live("rg/web/2", t0), "never granted");
    }

    #[test]
    fn an_instance_the_ack_leaves_out_is_not_renewed_and_the_length_is_the_acks() {
        let t0 = Instant::now();
        let mut l = Leases::default();
        l.sent(1, t0);
        l.acked(1, Duration::from_secs(10), &keys(&["rg/web/0", "rg/web/1"]));
        l.sent(2, t0 + Duration::from_secs(2));
        // The server lowered the lease to 5 s and moved instance 1 away.
        let g = l.acked(2, Duration::from_secs(5), &keys(&["rg/web/0"]));
        assert_eq!(g.dropped, keys(&["rg/web/1"]));
        assert_eq!(l.until("rg/web/1"), None);
        // A shorter lease never shortens one already held.
        assert_eq!(l.until("rg/web/0"), Some(t0 + Duration::from_secs(10)));
        assert_eq!(l.last_lease(), Some(Duration::from_secs(5)));
    }

    #[test]
    fn an_unknown_or_repeated_seq_and_a_zero_lease_grant_nothing() {
        let t0 = Instant::now();
        let mut l = Leases::default();
        assert_eq!(l.acked(9, Duration::from_secs(10), &keys(&["a/b/0"])), Granted::default());
        l.sent(1, t0);
        l.sent(2, t0 + Duration::from_secs(2));
        // Acknowledging 2 forgets 1 (the server answers in order).
        l.acked(2, Duration::from_secs(10), &keys(&["a/b/0"]));
        assert_eq!(l.acked(1, Duration::from_secs(10), &keys(&["a/b/0"])), Granted::default());
        assert_eq!(l.until("a/b/0"), Some(t0 + Duration::from_secs(12)));
        l.sent(3, t0 + Duration::from_secs(4));
        assert_eq!(l.acked(3, Duration::ZERO, &keys(&[])), Granted::default(), "a server without leases");
        assert_eq!(l.until("a/b/0"), Some(t0 + Duration::from_secs(12)), "kept: nothing was granted or taken");
    }
}
