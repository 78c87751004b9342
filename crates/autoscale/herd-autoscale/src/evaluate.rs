//! The evaluator: one pure function from (setting, time, capacity, metrics, cooldown state) to a
//! [`Decision`], with Azure's semantics.
//!
//! Why pure: the live autoscaler, the what-if simulator and the tests must make the same
//! decisions, so there is exactly one implementation and it does no I/O: metrics come through
//! [`MetricQuery`], time through [`EvalInput::now`], and the caller persists [`AutoscaleState`].
//!
//! The order of a round:
//! 1. A disabled setting changes nothing. The active profile is picked (fixed date, then
//!    recurrence, then default; see [`crate::schedule`]).
//! 2. Every rule is evaluated over its own window. "No data" is `None`, never zero.
//! 3. Scale out (or up to the bounds) if anything asks for more: the minimum, the default when
//!    metrics are missing (or when the profile has no rules at all), ANY scale-out rule that
//!    fired and is out of its cooldown, or target tracking. The largest result wins.
//! 4. Else clamp down to the maximum if above it.
//! 5. Else scale in only if ALL scale-in voters agree (every scale-in rule fired and is out of
//!    its cooldown; target tracking, if configured, wants fewer too), no metric is missing, and
//!    the flapping guard allows it. The smallest reduction wins.
//!
//! Cooldown (Azure's): a rule may act only when its `cooldown` has passed since the last scale
//! action in either direction, and since it last acted itself.
//!
//! Flapping guard (Azure's): before scaling in from `n` to `m`, each scale-out rule whose metric
//! is per instance is re-checked with `value × n / m`; if one would fire, try `m+1 … n-1` and
//! take the first that is safe, or skip. Totals (queue length) are never projected. A set whose
//! rules read a per-instance metric is never taken to 0 (the projection would divide by zero and
//! no instance would be left to report it); sets driven only by totals may go to 0.

use crate::condition::format_number;
use crate::model::{
    AutoscaleSetting, Dimension, Profile, ScaleDirection, ScaleType, Statistic, TargetTracking, TimeAggregation,
};
use crate::schedule::select_profile;
use chrono::{DateTime, Duration, Utc};
use rules::{
    action_result, action_text, evaluate_rule, evaluate_tracking, hms, observation, rule_label, tracking_label,
    Evaluated, Reads, Role, Tracking,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod rules;

/// How a metric's samples become one value: over `(window_start, window_end]`, samples are
/// grouped into `time_grain` buckets, combined across instances with `statistic`, then across
/// buckets with `time_aggregation` (Azure's two levels).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricAggregation {
    pub statistic: Statistic,
    pub time_grain: Duration,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub time_aggregation: TimeAggregation,
}

/// Where metric values come from. Implementations read the store (live) or memory (tests,
/// simulator). `None` means "no data" and is never treated as zero.
pub trait MetricQuery {
    /// The value of `metric` (its series that match `dimensions`), aggregated as `how` says.
    fn aggregate(&self, metric: &str, dimensions: &[Dimension], how: MetricAggregation) -> Option<f64>;

    /// Whether `metric` is measured per instance (CPU, requests per instance), so that a
    /// different instance count changes it; totals (queue length) are not.
    fn is_per_instance(&self, metric: &str) -> bool;
}

/// The last scale action this setting took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastScale {
    pub at: DateTime<Utc>,
    pub direction: ScaleDirection,
}

/// Everything one evaluation reads.
pub struct EvalInput<'a> {
    pub setting: &'a AutoscaleSetting,
    pub now: DateTime<Utc>,
    /// The set's capacity (desired count), including instances still booting.
    pub current_capacity: u64,
    /// Instances running and past target tracking's warm-up.
    pub instance_count_ready: u64,
    pub metrics: &'a dyn MetricQuery,
    pub last_scale: Option<LastScale>,
    /// When each rule of the active profile (by index) last acted.
    pub rule_last_fired: &'a BTreeMap<usize, DateTime<Utc>>,
}

/// One rule (or target tracking) as evaluated this round, for history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleEvaluation {
    /// Index of the rule in the profile; `None` for target tracking.
    pub rule: Option<usize>,
    pub metric: String,
    /// The rule in the condition grammar (`Percentage CPU > 70 avg 5m`), or the target.
    pub condition: String,
    /// `None` = no data.
    pub value: Option<f64>,
    pub threshold: f64,
    pub fired: bool,
    /// Why it did or did not act (cooldown, bounds, flapping guard, ...).
    pub note: String,
}

/// The outcome of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// The active profile's name (empty when none applies).
    pub profile: String,
    pub current_capacity: u64,
    pub new_capacity: u64,
    /// Increase, Decrease or None (no change).
    pub direction: ScaleDirection,
    /// What users read in `autoscale history` and the activity log.
    pub reason: String,
    pub evaluations: Vec<RuleEvaluation>,
    /// Some metric had no data this round (so the set never scaled in).
    pub missing_data: bool,
    /// Rules (by index in the profile) whose action produced the change.
    pub acted_rules: Vec<usize>,
    /// Target tracking produced the change.
    pub target_tracking_acted: bool,
}

impl Decision {
    pub fn changed(&self) -> bool {
        self.new_capacity != self.current_capacity
    }
}

/// What the caller keeps between rounds (and persists, so cooldowns survive a restart).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscaleState {
    pub last_scale: Option<LastScale>,
    pub rule_last_fired: BTreeMap<usize, DateTime<Utc>>,
    /// The profile `rule_last_fired` refers to.
    pub profile: Option<String>,
}

impl AutoscaleState {
    /// Records a decision made at `now` (call it after the capacity was written).
    pub fn record(&mut self, now: DateTime<Utc>, decision: &Decision) {
        if self.profile.as_deref() != Some(decision.profile.as_str()) {
            self.rule_last_fired.clear();
            self.profile = Some(decision.profile.clone());
        }
        if decision.changed() {
            self.last_scale = Some(LastScale { at: now, direction: decision.direction });
            for &r in &decision.acted_rules {
                self.rule_last_fired.insert(r, now);
            }
        }
    }

    /// The input for one round with this state.
    pub fn input<'a>(
        &'a self,
        setting: &'a AutoscaleSetting,
        now: DateTime<Utc>,
        current_capacity: u64,
        instance_count_ready: u64,
        metrics: &'a dyn MetricQuery,
    ) -> EvalInput<'a> {
        EvalInput {
            setting,
            now,
            current_capacity,
            instance_count_ready,
            metrics,
            last_scale: self.last_scale,
            rule_last_fired: &self.rule_last_fired,
        }
    }
}

/// Evaluates one round. Pure: reads only `input`.
pub fn evaluate(input: &EvalInput<'_>) -> Decision {
    let cur = input.current_capacity;
    let mut d = Decision {
        profile: String::new(),
        current_capacity: cur,
        new_capacity: cur,
        direction: ScaleDirection::None,
        reason: String::new(),
        evaluations: Vec::new(),
        missing_data: false,
        acted_rules: Vec::new(),
        target_tracking_acted: false,
    };
    let Some((_, profile, _)) = select_profile(input.setting, input.now) else {
        d.reason = format!("no profile applies at {}; capacity left at {cur}", input.now.format("%Y-%m-%d %H:%M UTC"));
        return d;
    };
    d.profile = profile.name.clone();
    if !input.setting.enabled {
        d.reason = format!("autoscale setting is disabled; capacity left at {cur}");
        return d;
    }
    decide(input, profile, d)
}

fn decide(input: &EvalInput<'_>, profile: &Profile, d: Decision) -> Decision {
    let mut round = Round::new(input, profile, d);
    // The phases in order; the first that decides ends the round.
    let _decided = round.scale_out() || round.above_bounds() || round.scale_in();
    round.finish()
}

/// One evaluation round of one profile: the rules and target tracking evaluated once, then the
/// phases of the decision (scale out, bounds, scale in with the flapping guard), each of which
/// either decides (sets the reason and capacity on `d`) or passes to the next.
struct Round<'a> {
    input: &'a EvalInput<'a>,
    profile: &'a Profile,
    cur: u64,
    min: u64,
    max: u64,
    default: u64,
    rules: Vec<Evaluated<'a>>,
    tt: Option<&'a TargetTracking>,
    tracking: Option<Tracking>,
    /// The metrics without data, each once.
    missing: Vec<String>,
    /// Per rule, what became of it.
    notes: Vec<String>,
    tt_note: String,
    d: Decision,
}

/// Something that asks for more instances (step 3).
struct Up {
    to: u64,
    why: String,
    rules: Vec<usize>,
    tracking: bool,
}

impl<'a> Round<'a> {
    fn new(input: &'a EvalInput<'a>, profile: &'a Profile, mut d: Decision) -> Self {
        let (min, max, default) = profile.capacity.bounds();
        let bounds = (min, max);
        let mut reads = Reads::default();
        let rules: Vec<Evaluated<'a>> =
            profile.rules.iter().enumerate().map(|(i, r)| evaluate_rule(input, &mut reads, i, r, bounds)).collect();
        let tt = input.setting.target_tracking.as_ref();
        let tracking = tt.map(|t| evaluate_tracking(input, t, bounds));
        let mut missing: Vec<String> = rules
            .iter()
            .filter(|e| e.value.is_none())
            .map(|e| rule_label(e.rule))
            .chain(
                tracking
                    .iter()
                    .filter(|t| t.value.is_none())
                    .map(|_| tt.map(|t| t.metric_name.clone()).unwrap_or_default()),
            )
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        missing.retain(|m| seen.insert(m.clone()));
        d.missing_data = !missing.is_empty();
        let notes: Vec<String> = rules
            .iter()
            .map(|e| match (e.value, e.fired, e.cooling_until) {
                (None, _, _) => "no data".to_string(),
                (Some(_), false, _) => "not fired".to_string(),
                (Some(_), true, Some(u)) if e.role != Role::Neutral => {
                    format!("fired; cooling down until {}", hms(u))
                }
                (Some(_), true, _) if e.role == Role::Neutral => "fired; already at that count".to_string(),
                (Some(_), true, _) => "fired".to_string(),
            })
            .collect();
        let tt_note = tracking.as_ref().map(|t| t.note.clone()).unwrap_or_default();
        let cur = input.current_capacity;
        Self { input, profile, cur, min, max, default, rules, tt, tracking, missing, notes, tt_note, d }
    }

    fn no_rules(&self) -> bool {
        self.profile.rules.is_empty() && self.tt.is_none()
    }

    /// Decides with `reason`, leaving the capacity as it is; always true (so a phase can
    /// `return self.hold(..)`).
    fn hold(&mut self, reason: String) -> bool {
        self.d.reason = reason;
        true
    }

    /// Step 3: anything asking for more wins, the largest ask first.
    fn scale_out(&mut self) -> bool {
        let ups = self.ups();
        let (cur, max) = (self.cur, self.max);
        let Some(best) = ups.iter().map(|u| u.to.min(max)).max().filter(|b| *b > cur) else { return false };
        let winner = ups.iter().find(|u| u.to.min(max) == best).map(|u| u.why.clone()).unwrap_or_default();
        let capped = ups.iter().any(|u| u.to > max) && best == max;
        for u in ups.iter().filter(|u| u.to.min(max) == best) {
            self.d.acted_rules.extend(&u.rules);
            self.d.target_tracking_acted |= u.tracking;
        }
        self.d.acted_rules.sort_unstable();
        self.d.acted_rules.dedup();
        for &r in &self.d.acted_rules {
            self.notes[r] = "fired; acted".into();
        }
        self.d.new_capacity = best;
        self.d.direction = ScaleDirection::Increase;
        self.d.reason = format!(
            "{winner} ({cur} → {best}{})",
            if capped { format!(", capped at the maximum {max}") } else { String::new() }
        );
        true
    }

    /// What asks for more instances: the minimum, the default (missing data, no rules), fired
    /// scale-out rules out of their cool-down, and target tracking.
    fn ups(&mut self) -> Vec<Up> {
        let (cur, min, max, default) = (self.cur, self.min, self.max, self.default);
        let name = &self.profile.name;
        let mut ups: Vec<Up> = Vec::new();
        let mut ask = |to: u64, why: String| ups.push(Up { to, why, rules: vec![], tracking: false });
        if cur < min {
            ask(min, format!("below the minimum {min} of profile '{name}'"));
        }
        if self.d.missing_data && cur < default {
            ask(default, format!("no data for {}; raised to the default {default}", self.missing.join(", ")));
        }
        if self.no_rules() && cur < default {
            ask(default, format!("profile '{name}' has no rules; holding the default {default}"));
        }
        for e in self.rules.iter().filter(|e| e.role == Role::Out && e.fired && e.cooling_until.is_none()) {
            if e.result > cur {
                let why = format!("{}: {}", observation(e), action_text(e.rule));
                ups.push(Up { to: e.wanted, why, rules: vec![e.idx], tracking: false });
            } else {
                self.notes[e.idx] = format!("fired; {}", no_room(e, cur, max));
            }
        }
        if let (Some(t), Some(tc)) = (self.tt, &self.tracking) {
            if let Some(want) = tc.desired.filter(|w| *w > cur) {
                match tc.out_blocked_until {
                    Some(u) => self.tt_note = format!("{}; scale-out cooling down until {}", tc.note, hms(u)),
                    None => ups.push(Up {
                        to: want,
                        why: format!(
                            "{} = {}: {}",
                            tracking_label(t, tc.per_instance),
                            format_number(tc.value.unwrap_or(0.0)),
                            tc.note
                        ),
                        rules: vec![],
                        tracking: true,
                    }),
                }
            }
        }
        ups
    }

    /// Step 4: above the maximum (or above the default of a profile without rules).
    fn above_bounds(&mut self) -> bool {
        let (cur, max, default) = (self.cur, self.max, self.default);
        let to = if cur > max {
            self.d.reason = format!("above the maximum {max} of profile '{}' ({cur} → {max})", self.profile.name);
            max
        } else if self.no_rules() && cur > default {
            self.d.reason = format!(
                "profile '{}' has no rules; holding the default {default} ({cur} → {default})",
                self.profile.name
            );
            default
        } else {
            return false;
        };
        self.d.new_capacity = to;
        self.d.direction = ScaleDirection::Decrease;
        true
    }

    fn in_rules(&self) -> Vec<&Evaluated<'a>> {
        self.rules.iter().filter(|e| e.role == Role::In).collect()
    }

    fn tracking_votes(&self) -> bool {
        self.tt.is_some_and(|t| !t.disable_scale_in)
    }

    /// Step 5: scale in, when every voter agrees and the flapping guard allows it.
    fn scale_in(&mut self) -> bool {
        if self.scale_in_blocked() {
            return true;
        }
        let Some((want, causes, winner_action)) = self.scale_in_proposal() else { return true };
        let cur = self.cur;
        let (chosen, first_trip) = self.flapping_guard(want);
        let cause = causes.join(" and ");
        let in_idx: Vec<usize> = self.in_rules().iter().map(|e| e.idx).collect();
        match chosen {
            None => {
                let t = first_trip.unwrap_or_default();
                self.d.reason =
                    format!("{cause}: {winner_action} deferred by the flapping guard ({t}); capacity left at {cur}");
                for &i in &in_idx {
                    self.notes[i] = "fired; deferred by the flapping guard".into();
                }
            }
            Some(k) => {
                self.d.new_capacity = k;
                self.d.direction = ScaleDirection::Decrease;
                self.d.acted_rules = in_idx.clone();
                self.d.target_tracking_acted =
                    self.tracking_votes() && self.tracking.as_ref().is_some_and(|t| t.desired.is_some());
                for &i in &in_idx {
                    self.notes[i] = "fired; acted".into();
                }
                let shrunk = match (k != want, first_trip) {
                    (true, Some(t)) => format!(", shrunk from {want} by the flapping guard: {t}"),
                    _ => String::new(),
                };
                self.d.reason = format!("{cause}: {winner_action} ({cur} → {k}{shrunk})");
            }
        }
        true
    }

    /// What keeps capacity as it is before any scale-in is proposed (true: decided).
    fn scale_in_blocked(&mut self) -> bool {
        let (cur, max) = (self.cur, self.max);
        let out_fired_blocked: Vec<String> = self
            .rules
            .iter()
            .filter(|e| e.role == Role::Out && e.fired)
            .map(|e| match e.cooling_until {
                Some(u) => format!("{} but cooling down until {}", observation(e), hms(u)),
                None => format!("{} but {}", observation(e), no_room(e, cur, max)),
            })
            .collect();
        if !out_fired_blocked.is_empty() {
            return self.hold(format!("{}; capacity left at {cur}", out_fired_blocked.join("; ")));
        }
        if self.d.missing_data {
            let missing = self.missing.join(", ");
            return self
                .hold(format!("no data for {missing}; capacity left at {cur} (never scales in on missing data)"));
        }
        let in_rules = self.in_rules();
        if in_rules.is_empty() && !self.tracking_votes() {
            let summary: Vec<String> = self.rules.iter().map(observation).collect();
            let why = if summary.is_empty() {
                format!("profile '{}' holds {cur}", self.profile.name)
            } else {
                format!("no scale-out rule fired ({}); capacity left at {cur}", summary.join("; "))
            };
            return self.hold(why);
        }
        if let Some(e) = in_rules.iter().find(|e| !e.fired) {
            let summary: Vec<String> =
                self.rules.iter().filter(|e| e.role == Role::Out).map(|e| observation(e)).collect();
            let mut why = format!("no scale-in: {}", observation(e));
            if !summary.is_empty() {
                why = format!("no scale-out rule fired ({}); {why}", summary.join("; "));
            }
            return self.hold(format!("{why}; capacity left at {cur}"));
        }
        if let Some(e) = in_rules.iter().find(|e| e.cooling_until.is_some()) {
            let u = e.cooling_until.unwrap_or(self.input.now);
            let why = format!("{} but cooling down until {}; capacity left at {cur}", observation(e), hms(u));
            return self.hold(why);
        }
        false
    }

    /// The count the scale-in voters agree on (the largest of their asks), with its causes and
    /// the winning action in words; None when that decided the round (held, or at the minimum).
    fn scale_in_proposal(&mut self) -> Option<(u64, Vec<String>, String)> {
        let cur = self.cur;
        let in_rules = self.in_rules();
        let mut causes: Vec<String> = in_rules.iter().map(|e| observation(e)).collect();
        let mut winner_action = in_rules
            .iter()
            .max_by_key(|e| (e.result, std::cmp::Reverse(e.idx)))
            .map(|e| action_text(e.rule))
            .unwrap_or_default();
        let mut proposal: Option<u64> = in_rules.iter().map(|e| e.result).max();
        if let (true, Some(t), Some(tc)) = (self.tracking_votes(), self.tt, &self.tracking) {
            let ready_all = self.input.instance_count_ready >= cur;
            match tc.desired {
                Some(want) if want < cur && !ready_all && tc.per_instance => {
                    self.tt_note = format!("{}; no scale-in while instances warm up", tc.note);
                    self.hold(format!("target tracking: instances are warming up; capacity left at {cur}"));
                    return None;
                }
                Some(want) if want < cur => {
                    if let Some(u) = tc.in_blocked_until {
                        self.tt_note = format!("{}; scale-in cooling down until {}", tc.note, hms(u));
                        self.hold(format!(
                            "target tracking wants {want} but scale-in is cooling down until {}; capacity left at {cur}",
                            hms(u)
                        ));
                        return None;
                    }
                    causes.push(format!(
                        "{} = {}: {}",
                        tracking_label(t, tc.per_instance),
                        format_number(tc.value.unwrap_or(0.0)),
                        tc.note
                    ));
                    if proposal.is_none_or(|p| want > p) {
                        winner_action = format!("to {want}");
                    }
                    proposal = Some(proposal.map_or(want, |p| p.max(want)));
                }
                _ => {
                    let why = format!(
                        "no scale-in: {} = {}: {}",
                        tracking_label(t, tc.per_instance),
                        tc.value.map(format_number).unwrap_or_else(|| "no data".into()),
                        tc.note
                    );
                    self.hold(format!("{why}; capacity left at {cur}"));
                    return None;
                }
            }
        }
        match proposal.filter(|p| *p < cur) {
            Some(want) => Some((want, causes, winner_action)),
            None => {
                self.hold(format!("{}; already at the minimum {}", causes.join(" and "), self.min));
                None
            }
        }
    }

    /// The flapping guard: the largest count from `want` up at which no scale-out rule (or a
    /// `to N` rule already at N) would fire again on the projected metric. Returns that count
    /// (None: every count would trip) and the first trip, in words.
    fn flapping_guard(&self, want: u64) -> (Option<u64>, Option<String>) {
        let (cur, max) = (self.cur, self.max);
        let outs: Vec<&Evaluated<'_>> = self
            .rules
            .iter()
            .filter(|e| {
                e.role == Role::Out || (e.role == Role::Neutral && e.rule.scale_action.kind == ScaleType::ExactCount)
            })
            .collect();
        let zero_blocked =
            self.rules.iter().any(|e| e.per_instance) || self.tracking.as_ref().is_some_and(|t| t.per_instance);
        let mut first_trip: Option<String> = None;
        for k in want..cur {
            if k == 0 && zero_blocked {
                first_trip.get_or_insert_with(|| {
                    "not to 0: the rules read a per-instance metric that no instance would be left to report".into()
                });
                continue;
            }
            let trip = outs.iter().find_map(|e| {
                let v = e.value?;
                // Only a rule that would actually add instances at k counts (`to 1` does not at 1).
                if action_result(e.rule, k).is_none_or(|n| n.min(max) <= k) {
                    return None;
                }
                let projected = if e.per_instance { v * cur as f64 / k as f64 } else { v };
                let m = &e.rule.metric_trigger;
                m.operator.holds(projected, m.threshold).then(|| {
                    format!(
                        "{cur} → {k} would project {} to {} {} {}",
                        rule_label(e.rule),
                        format_number(projected),
                        m.operator.symbol(),
                        format_number(m.threshold)
                    )
                })
            });
            match trip {
                Some(t) => {
                    first_trip.get_or_insert(t);
                }
                None => return (Some(k), first_trip),
            }
        }
        (None, first_trip)
    }

    fn finish(self) -> Decision {
        finish(self.d, &self.rules, self.notes, self.tt, self.tracking.as_ref(), self.tt_note)
    }
}

/// Why a fired scale-out rule adds nothing.
fn no_room(e: &Evaluated<'_>, cur: u64, max: u64) -> String {
    if cur >= max {
        format!("already at the maximum {max}")
    } else {
        format!("already at {cur}, not below its target {}", e.wanted)
    }
}

fn finish(
    mut d: Decision,
    rules: &[Evaluated<'_>],
    notes: Vec<String>,
    tt: Option<&TargetTracking>,
    tracking: Option<&Tracking>,
    tt_note: String,
) -> Decision {
    d.evaluations = rules
        .iter()
        .zip(notes)
        .map(|(e, note)| RuleEvaluation {
            rule: Some(e.idx),
            metric: e.rule.metric_trigger.metric_name.clone(),
            condition: crate::condition::format_condition(&e.rule.metric_trigger),
            value: e.value,
            threshold: e.rule.metric_trigger.threshold,
            fired: e.fired,
            note,
        })
        .collect();
    if let (Some(t), Some(tc)) = (tt, tracking) {
        d.evaluations.push(RuleEvaluation {
            rule: None,
            metric: t.metric_name.clone(),
            condition: tracking_label(t, tc.per_instance),
            value: tc.value,
            threshold: t.target,
            fired: tc.desired.is_some_and(|w| w != d.current_capacity),
            note: tt_note,
        });
    }
    d
}
