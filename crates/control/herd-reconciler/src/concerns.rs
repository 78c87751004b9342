//! The reconciler's concerns, each with its own entry on the controller status board.
//!
//! Why one pass and not one controller per concern: the concerns change the same records in
//! an order that matters. Scale, rolling upgrades, OS images and repairs are planned for a set
//! from one snapshot; capacity then rewrites every set's steps at once (placement, Spot
//! evictions); and all intents are committed in one transaction before any driver call, so a
//! crash never leaves one concern's half of a decision. Separate controllers with their own
//! snapshots would race on the same instance records (a repair's Restart against a rolling
//! batch's Reimage, a scale-in against a Spot eviction) and change what a pass decides. So the
//! executor runs the concern planners in a fixed order inside one pass (see the executor's
//! diagram), and each concern reports what it did in that pass here:
//!
//! - `runs` / last run: the passes in which it ran: it looks at every set in every pass and
//!   plans the sets it applies to (repairs only where a repair policy is on, rolling upgrades
//!   where the policy is Rolling or an upgrade is asked for or in flight);
//! - duration: the time its planning took in the pass (carrying the steps out is the shared
//!   executor's work, shown on the `reconciler` entry);
//! - last error: the pass's error when it failed with this concern's steps in it, or the
//!   driver calls of its steps that failed;
//! - what it waits for: what its planner left in flight (instances booting, a batch, a
//!   suspension, a capacity shortfall, orphans in their grace), or the next pass.

use crate::plan::Step;
use crate::rolling::RollingStep;
use chrono::{DateTime, Utc};
use herd_controller_runtime::{Phase, StatusBoard};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One concern of a reconcile pass, in the order a pass plans them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Concern {
    /// Instance lifecycle and scale: create, start, stop, delete, retries, overprovisioning.
    Scale,
    /// Rolling upgrades (batches, canary, surge, rollback).
    RollingUpgrade,
    /// Automatic OS image upgrades.
    OsImage,
    /// Automatic repairs.
    Repair,
    /// Placement on hosts, Spot evictions and restores, across sets.
    Capacity,
    /// Records whose set is gone, and resource groups being deleted.
    Strays,
    /// Instances the driver runs that have no record.
    Orphans,
}

impl Concern {
    pub const ALL: [Concern; 7] = [
        Concern::Scale,
        Concern::RollingUpgrade,
        Concern::OsImage,
        Concern::Repair,
        Concern::Capacity,
        Concern::Strays,
        Concern::Orphans,
    ];

    /// Its name on the status board.
    pub fn name(self) -> &'static str {
        match self {
            Concern::Scale => "reconciler.scale",
            Concern::RollingUpgrade => "reconciler.rolling-upgrade",
            Concern::OsImage => "reconciler.os-image",
            Concern::Repair => "reconciler.repair",
            Concern::Capacity => "reconciler.capacity",
            Concern::Strays => "reconciler.strays",
            Concern::Orphans => "reconciler.orphans",
        }
    }

    /// The concern that decided `step`. The lifecycle steps (a reimage, a restart) are the
    /// scale concern's even when a rolling upgrade or a repair asked for them through a pending
    /// action: they are carried out by the lifecycle planner.
    pub fn of(step: &Step) -> Concern {
        match step {
            Step::Rolling(RollingStep::OsImage { .. }) => Concern::OsImage,
            Step::Rolling(_) => Concern::RollingUpgrade,
            Step::Repair(_) => Concern::Repair,
            Step::PostEvent { .. }
            | Step::Evict { .. }
            | Step::Restore(_)
            | Step::Assign { .. }
            | Step::CapacityNote(_)
            | Step::PlacementNote(_) => Concern::Capacity,
            _ => Concern::Scale,
        }
    }
}

/// What one concern did in a pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConcernRun {
    /// Its planner ran.
    pub ran: bool,
    /// Time spent planning.
    pub took: Duration,
    /// Steps it decided (after capacity's rewrite, for the per-set concerns).
    pub steps: usize,
    /// What it left in flight, one line each.
    pub waiting: Vec<String>,
    /// Its driver calls that failed, one line each.
    pub failures: Vec<String>,
}

/// What every concern did in one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassConcerns(pub BTreeMap<Concern, ConcernRun>);

impl PassConcerns {
    pub fn get(&self, c: Concern) -> Option<&ConcernRun> {
        self.0.get(&c)
    }

    pub(crate) fn run(&mut self, c: Concern) -> &mut ConcernRun {
        let r = self.0.entry(c).or_default();
        r.ran = true;
        r
    }

    /// Runs `f` as part of concern `c`'s planning, timed.
    pub(crate) fn timed<T>(&mut self, c: Concern, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.run(c).took += t.elapsed();
        out
    }

    /// Counts the steps of one set's finished plan by concern.
    pub(crate) fn count(&mut self, steps: &[Step]) {
        for s in steps {
            self.0.entry(Concern::of(s)).or_default().steps += 1;
        }
    }
}

/// Publishes each pass's [`PassConcerns`] on the runtime's status board.
#[derive(Debug, Clone)]
pub struct ConcernBoard {
    board: StatusBoard,
}

impl ConcernBoard {
    /// Registers every concern's entry on `board` (watches and resync are the reconciler's).
    pub fn register(board: StatusBoard, watches: &[String], resync: Duration) -> Self {
        for c in Concern::ALL {
            board.register(c.name(), watches.to_vec(), resync);
        }
        Self { board }
    }

    /// Records a pass that started at `started` and ended at `now` with `error` (None: it
    /// succeeded).
    pub fn publish(&self, run: &PassConcerns, started: DateTime<Utc>, now: DateTime<Utc>, error: Option<&str>) {
        for c in Concern::ALL {
            let Some(r) = run.get(c).filter(|r| r.ran || r.steps > 0) else { continue };
            self.board.update(c.name(), |s| {
                s.runs += 1;
                s.last_run_at = Some(started);
                s.last_run_ms = Some(r.took.as_secs_f64() * 1000.0);
                s.next_run_by = None;
                let failed = match error {
                    Some(e) if r.steps > 0 => Some(e.to_string()),
                    _ => summary(&r.failures),
                };
                match failed {
                    Some(e) => {
                        s.failures += 1;
                        s.consecutive_failures += 1;
                        s.last_error = Some(e);
                        s.last_error_at = Some(now);
                    }
                    None => {
                        s.consecutive_failures = 0;
                        s.last_success_at = Some(now);
                    }
                }
                let what = summary(&r.waiting);
                let (phase, waiting) = if error.is_some() && r.steps > 0 {
                    (Phase::BackingOff, "the reconciler's retry after its failed pass".to_string())
                } else if r.steps > 0 {
                    // The reconciler runs again at once after a pass that made steps.
                    (Phase::Running, what.unwrap_or_else(|| "the next pass, at once".to_string()))
                } else if let Some(w) = what {
                    (Phase::Waiting, w)
                } else {
                    (Phase::Idle, "a change, or the reconciler's next pass".to_string())
                };
                s.phase = phase;
                s.waiting_for = Some(format!("{waiting} (its last pass made {} step(s))", r.steps));
            });
        }
    }

    /// Marks every concern stopped (the reconciler stopped).
    pub fn stopped(&self) {
        for c in Concern::ALL {
            self.board.update(c.name(), |s| {
                s.phase = Phase::Stopped;
                s.waiting_for = None;
                s.next_run_by = None;
            });
        }
    }
}

/// The first line, and how many more there are.
fn summary(lines: &[String]) -> Option<String> {
    match lines {
        [] => None,
        [one] => Some(one.clone()),
        [first, rest @ ..] => Some(format!("{first} (and {} more)", rest.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repair::RepairStep;
    use herd_model::InstanceId;

    #[test]
    fn each_step_belongs_to_the_concern_that_decides_it() {
        let os = Step::Rolling(RollingStep::OsImage { version: "2".into(), upgrade: true });
        assert_eq!(Concern::of(&os), Concern::OsImage);
        assert_eq!(Concern::of(&Step::Rolling(RollingStep::ClearRequest)), Concern::RollingUpgrade);
        assert_eq!(Concern::of(&Step::Repair(RepairStep::Reset)), Concern::Repair);
        assert_eq!(Concern::of(&Step::Restore(InstanceId(1))), Concern::Capacity);
        assert_eq!(Concern::of(&Step::CapacityNote(None)), Concern::Capacity);
        // A reimage is carried out by the lifecycle planner, whoever asked for it.
        assert_eq!(Concern::of(&Step::Reimage(InstanceId(1))), Concern::Scale);
        assert_eq!(Concern::of(&Step::Create(vec![])), Concern::Scale);
    }

    #[test]
    fn a_publish_counts_a_run_only_for_the_concerns_that_ran() {
        let board = StatusBoard::default();
        let concerns = ConcernBoard::register(board.clone(), &[], Duration::from_secs(2));
        let mut run = PassConcerns::default();
        run.run(Concern::Strays).failures.push("could not remove".into());
        let t = chrono::DateTime::<Utc>::UNIX_EPOCH;
        concerns.publish(&run, t, t, None);
        let strays = board.get(Concern::Strays.name()).unwrap();
        assert_eq!((strays.runs, strays.failures, strays.last_error.as_deref()), (1, 1, Some("could not remove")));
        assert_eq!(board.get(Concern::Scale.name()).unwrap().runs, 0);
        concerns.stopped();
        assert_eq!(board.get(Concern::Scale.name()).unwrap().phase, Phase::Stopped);
    }
}
