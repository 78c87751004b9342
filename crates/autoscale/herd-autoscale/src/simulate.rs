//! The what-if simulator: replays a metric trace against an autoscale setting, through the
//! same [`evaluate`] the live autoscaler runs, so a user can try a policy before trusting it.
//!
//! Why it can be trusted: nothing here decides anything. Each evaluation tick builds the same
//! [`EvalInput`] the server builds, from an in-memory metric store that is filled the way the
//! server's sampler fills its store, and records the decision with the same
//! [`AutoscaleState::record`]. The equivalence test drives a live-style loop next to it.
//!
//! The model of the world:
//! - The trace is ONE metric, the one the rules read (`SimOptions::metric`, by default the
//!   first rule's). Its values are the **total load**: for a per-instance metric such as
//!   `Percentage CPU` each running instance reports `total / running` (so a trace value of 210
//!   is 70% on each of 3 instances; `Percentage …` metrics saturate at 100 per instance), and
//!   for a total such as a queue length (`source/…`) the value is used as is. With no running
//!   instance a per-instance metric has no data, as in real life.
//! - Samples are taken at the trace's timestamps; the evaluator runs every `interval`
//!   (default 30 s) from the first sample to the last.
//! - A scale-out adds instances at once to the capacity; each one runs (reports metrics and
//!   takes load) after `provisioning_latency` (default 60 s, like the sim driver's boot), and
//!   counts as ready for target tracking after its warm-up on top. A scale-in removes the
//!   newest instances first, booting ones before running ones.
//! - Metrics the trace does not provide have no data, so rules on them never fire and the set
//!   never scales in; [`SimResult::warnings`] says so.

use crate::condition::format_number;
use crate::evaluate::{evaluate, AutoscaleState, Decision, EvalInput};
use crate::memory::{default_per_instance, InMemoryMetrics};
use crate::model::{AutoscaleSetting, ScaleDirection};
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde::{Serialize, Serializer};

/// How to run a simulation.
#[derive(Debug, Clone, PartialEq)]
pub struct SimOptions {
    /// Evaluation cadence (default 30 s, as the live autoscaler).
    pub interval: Duration,
    /// Time from creating an instance until it runs (default 60 s).
    pub provisioning_latency: Duration,
    /// The metric the trace stands for (default: the first rule's metric, else target tracking's).
    pub metric: Option<String>,
    /// Whether that metric is per instance (default: totals for `source/…`, per instance otherwise).
    pub per_instance: Option<bool>,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            interval: Duration::seconds(30),
            provisioning_latency: Duration::seconds(60),
            metric: None,
            per_instance: None,
        }
    }
}

fn secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.num_milliseconds() as f64 / 1000.0)
}

/// One evaluation tick, after its decision was applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimPoint {
    pub time: DateTime<Utc>,
    /// The trace value in force (total load).
    pub metric: f64,
    /// The metric as one instance reports it (`metric / running` for per-instance metrics);
    /// `None` when no instance runs.
    pub observed: Option<f64>,
    pub capacity: u64,
    /// Running instances.
    pub ready: u64,
}

/// A capacity change.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimEvent {
    pub time: DateTime<Utc>,
    pub from: u64,
    pub to: u64,
    pub profile: String,
    pub reason: String,
}

/// The outcome of a simulation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimResult {
    pub metric_name: String,
    pub per_instance: bool,
    pub timeline: Vec<SimPoint>,
    pub scale_events: Vec<SimEvent>,
    /// Every decision, in order (what `autoscale history` would show).
    #[serde(skip)]
    pub decisions: Vec<(DateTime<Utc>, Decision)>,
    /// The first scale-out rule's threshold on the simulated metric, if any.
    pub threshold: Option<f64>,
    /// How long the observed metric was past that threshold.
    #[serde(serialize_with = "secs", rename = "timeAboveThresholdSeconds")]
    pub time_above_threshold: Duration,
    /// Capacity integrated over time (booting instances count: they are paid for).
    pub instance_hours: f64,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
struct SimInstance {
    name: String,
    runs_at: DateTime<Utc>,
}

/// The metric the trace stands for when `SimOptions::metric` is not given.
pub fn default_metric(setting: &AutoscaleSetting) -> Option<String> {
    setting
        .profiles
        .iter()
        .flat_map(|p| &p.rules)
        .map(|r| r.metric_trigger.metric_name.clone())
        .next()
        .or_else(|| setting.target_tracking.as_ref().map(|t| t.metric_name.clone()))
}

/// What one running instance reports when the total load is `total` over `running` instances.
pub fn per_instance_value(metric: &str, total: f64, running: u64) -> Option<f64> {
    if running == 0 {
        return None;
    }
    let v = total / running as f64;
    Some(if metric.starts_with("Percentage") { v.min(100.0) } else { v })
}

/// Replays `trace` (timestamp, total load) against `setting`, starting with `start_capacity`
/// running instances.
pub fn simulate(
    setting: &AutoscaleSetting,
    trace: &[(DateTime<Utc>, f64)],
    start_capacity: u64,
    options: &SimOptions,
) -> SimResult {
    let metric = options.metric.clone().or_else(|| default_metric(setting)).unwrap_or_else(|| "Percentage CPU".into());
    let per_instance = options.per_instance.unwrap_or_else(|| default_per_instance(&metric));
    let interval = if options.interval > Duration::zero() { options.interval } else { Duration::seconds(30) };
    let latency = options.provisioning_latency.max(Duration::zero());
    let warmup = setting.target_tracking.as_ref().map(|t| t.warmup_duration()).unwrap_or_else(Duration::zero);

    let mut result = SimResult {
        metric_name: metric.clone(),
        per_instance,
        timeline: Vec::new(),
        scale_events: Vec::new(),
        decisions: Vec::new(),
        threshold: None,
        time_above_threshold: Duration::zero(),
        instance_hours: 0.0,
        warnings: warnings(setting, &metric),
    };
    let first_out = setting
        .profiles
        .iter()
        .flat_map(|p| &p.rules)
        .find(|r| r.scale_action.direction == ScaleDirection::Increase && r.metric_trigger.metric_name == metric)
        .map(|r| (r.metric_trigger.operator, r.metric_trigger.threshold));
    result.threshold = first_out.map(|(_, t)| t);
    let (Some(&(t0, _)), Some(&(t_end, _))) = (trace.first(), trace.last()) else {
        result.warnings.push("the trace is empty".into());
        return result;
    };

    let mut metrics = InMemoryMetrics::new();
    metrics.set_per_instance(&metric, per_instance);
    let max_window = setting
        .profiles
        .iter()
        .flat_map(|p| &p.rules)
        .map(|r| r.metric_trigger.window())
        .chain(setting.target_tracking.as_ref().map(|t| t.window()))
        .max()
        .unwrap_or_else(|| Duration::minutes(5));
    let mut next_id: u64 = 0;
    let mut instances: Vec<SimInstance> = (0..start_capacity)
        .map(|_| {
            next_id += 1;
            SimInstance { name: format!("sim-{next_id}"), runs_at: t0 - latency - warmup }
        })
        .collect();
    let mut state = AutoscaleState::default();
    let mut sample = 0usize;
    let mut now = t0;
    let mut ticks = 0u64;
    while now <= t_end {
        // Samples up to now, each with the instances running at its own time.
        while sample < trace.len() && trace[sample].0 <= now {
            let (at, value) = trace[sample];
            record_sample(&mut metrics, &metric, per_instance, &instances, at, value);
            sample += 1;
        }
        let current = instances.len() as u64;
        let ready = instances.iter().filter(|i| i.runs_at + warmup <= now).count() as u64;
        let decision = evaluate(&EvalInput {
            setting,
            now,
            current_capacity: current,
            instance_count_ready: ready,
            metrics: &metrics,
            last_scale: state.last_scale,
            rule_last_fired: &state.rule_last_fired,
        });
        state.record(now, &decision);
        if decision.changed() {
            resize(&mut instances, decision.new_capacity, now + latency, &mut next_id);
            result.scale_events.push(SimEvent {
                time: now,
                from: decision.current_capacity,
                to: decision.new_capacity,
                profile: decision.profile.clone(),
                reason: decision.reason.clone(),
            });
        }
        result.decisions.push((now, decision));

        let total = trace[..sample].last().map(|s| s.1).unwrap_or(0.0);
        let running = instances.iter().filter(|i| i.runs_at <= now).count() as u64;
        let observed = if per_instance { per_instance_value(&metric, total, running) } else { Some(total) };
        let capacity = instances.len() as u64;
        if let Some((op, threshold)) = first_out {
            // No running instance under load counts as past any upper threshold.
            let seen = observed.unwrap_or(if total > 0.0 { f64::INFINITY } else { 0.0 });
            if op.holds(seen, threshold) {
                result.time_above_threshold += interval;
            }
        }
        result.instance_hours += capacity as f64 * interval.num_milliseconds() as f64 / 3_600_000.0;
        result.timeline.push(SimPoint { time: now, metric: total, observed, capacity, ready: running });

        ticks += 1;
        if ticks >= 120 {
            ticks = 0;
            metrics.prune_before(now - max_window - Duration::minutes(1));
        }
        now += interval;
    }
    result
}

fn record_sample(
    metrics: &mut InMemoryMetrics,
    metric: &str,
    per_instance: bool,
    instances: &[SimInstance],
    at: DateTime<Utc>,
    total: f64,
) {
    if !per_instance {
        metrics.record_total(metric, at, total);
        return;
    }
    let running: Vec<&SimInstance> = instances.iter().filter(|i| i.runs_at <= at).collect();
    if let Some(v) = per_instance_value(metric, total, running.len() as u64) {
        for i in running {
            metrics.record(metric, &i.name, at, v);
        }
    }
}

fn resize(instances: &mut Vec<SimInstance>, to: u64, runs_at: DateTime<Utc>, next_id: &mut u64) {
    let to = to as usize;
    if to < instances.len() {
        // Newest first: booting instances go before running ones.
        instances.truncate(to);
    }
    while instances.len() < to {
        *next_id += 1;
        instances.push(SimInstance { name: format!("sim-{next_id}"), runs_at });
    }
}

fn warnings(setting: &AutoscaleSetting, metric: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (pi, p) in setting.profiles.iter().enumerate() {
        for (ri, r) in p.rules.iter().enumerate() {
            let m = &r.metric_trigger.metric_name;
            if m != metric {
                out.push(format!(
                    "profiles[{pi}].rules[{ri}] reads '{m}', which the trace ('{metric}') does not provide: it has no data, \
                     so this simulation never scales in while profile '{}' is active",
                    p.name
                ));
            }
        }
    }
    if let Some(t) = &setting.target_tracking {
        if t.metric_name != metric {
            out.push(format!(
                "targetTracking reads '{}', which the trace ('{metric}') does not provide",
                t.metric_name
            ));
        }
    }
    if !setting.enabled {
        out.push("the setting is disabled: it never changes capacity".into());
    }
    out
}

/// Parses a trace: one `timestamp,value` per line. The timestamp is RFC 3339
/// (`2026-03-01T12:00:00Z`), `YYYY-MM-DD HH:MM[:SS]` (UTC) or unix seconds. A header line,
/// blank lines and `#` comments are skipped; `;` and tabs also separate. Timestamps must not
/// go backwards.
pub fn parse_trace_csv(text: &str) -> Result<Vec<(DateTime<Utc>, f64)>, String> {
    let mut out: Vec<(DateTime<Utc>, f64)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim().trim_start_matches('\u{feff}');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split([',', ';', '\t']).map(str::trim);
        let (ts, val) = match (parts.next(), parts.next()) {
            (Some(a), Some(b)) => (a.trim_matches('"'), b.trim_matches('"')),
            _ => return Err(format!("line {n}: expected 'timestamp,value', found '{line}'")),
        };
        let time = parse_timestamp(ts);
        if out.is_empty() && time.is_none() && val.parse::<f64>().is_err() {
            continue; // header
        }
        let time = time.ok_or_else(|| {
            format!("line {n}: '{ts}' is not a timestamp; use RFC 3339 (2026-03-01T12:00:00Z) or unix seconds")
        })?;
        let value = val
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| format!("line {n}: '{val}' is not a number"))?;
        if let Some((prev, _)) = out.last() {
            if time < *prev {
                return Err(format!("line {n}: {ts} is before the previous sample; the trace must be in time order"));
            }
        }
        out.push((time, value));
    }
    if out.is_empty() {
        return Err("the trace has no samples; expected lines of 'timestamp,value'".into());
    }
    Ok(out)
}

fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(n) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Some(Utc.from_utc_datetime(&n));
        }
    }
    let secs: f64 = s.parse().ok().filter(|v: &f64| v.is_finite() && *v >= 0.0)?;
    Utc.timestamp_millis_opt((secs * 1000.0).round() as i64).single()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

/// A self-contained SVG chart: the metric as instances see it (left axis, with the first
/// scale-out threshold dashed) and the capacity (right axis, a step line) over time.
pub fn svg_plot(result: &SimResult, metric_name: &str) -> String {
    let (w, h) = (960.0_f64, 420.0_f64);
    let (left, right, top, bottom) = (70.0, 70.0, 40.0, 50.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let mut svg = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n"
    );
    let title = format!("{metric_name}: metric and capacity over time");
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        w / 2.0,
        esc(&title)
    ));
    let pts = &result.timeline;
    let (Some(first), Some(last)) = (pts.first(), pts.last()) else {
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">no data</text>\n</svg>\n",
            w / 2.0,
            h / 2.0
        ));
        return svg;
    };
    let t0 = first.time.timestamp_millis() as f64;
    let span = ((last.time.timestamp_millis() as f64) - t0).max(1.0);
    let x = |t: DateTime<Utc>| left + (t.timestamp_millis() as f64 - t0) / span * pw;
    let seen = |p: &SimPoint| p.observed.unwrap_or(0.0);
    let mut mmax = pts.iter().map(seen).fold(0.0_f64, f64::max);
    if let Some(th) = result.threshold {
        mmax = mmax.max(th);
    }
    let mmax = nice_ceiling(mmax.max(1e-9));
    let cmax = nice_ceiling(pts.iter().map(|p| p.capacity).max().unwrap_or(1).max(1) as f64);
    let ym = |v: f64| top + ph - (v / mmax).clamp(0.0, 1.0) * ph;
    let yc = |v: f64| top + ph - (v / cmax).clamp(0.0, 1.0) * ph;

    // Axes, grid and labels.
    svg.push_str(&format!(
        "<rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#444\"/>\n"
    ));
    for i in 0..=5 {
        let f = i as f64 / 5.0;
        let y = top + ph - f * ph;
        svg.push_str(&format!(
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#1f77b4\">{}</text>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#d62728\">{}</text>\n",
            left + pw,
            left - 6.0,
            y + 4.0,
            format_number(mmax * f),
            left + pw + 6.0,
            y + 4.0,
            format_number(cmax * f),
        ));
    }
    for i in 0..=6 {
        let f = i as f64 / 6.0;
        let t = first.time + Duration::milliseconds((span * f) as i64);
        let xx = left + f * pw;
        svg.push_str(&format!(
            "<text x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            top + ph + 18.0,
            t.format("%m-%d %H:%M")
        ));
    }
    svg.push_str(&format!(
        "<text x=\"18\" y=\"{:.1}\" transform=\"rotate(-90 18 {:.1})\" text-anchor=\"middle\" fill=\"#1f77b4\">{}</text>\n",
        top + ph / 2.0,
        top + ph / 2.0,
        esc(&format!("{metric_name}{}", if result.per_instance { " (per instance)" } else { "" }))
    ));
    svg.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" transform=\"rotate(90 {:.1} {:.1})\" text-anchor=\"middle\" fill=\"#d62728\">capacity</text>\n",
        w - 18.0,
        top + ph / 2.0,
        w - 18.0,
        top + ph / 2.0
    ));
    if let Some(th) = result.threshold {
        svg.push_str(&format!(
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#1f77b4\" stroke-dasharray=\"6 4\" opacity=\"0.6\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#1f77b4\">threshold {}</text>\n",
            left + pw,
            left + 4.0,
            ym(th) - 4.0,
            format_number(th),
            y = ym(th)
        ));
    }
    // The metric as a line, the capacity as steps.
    let metric: Vec<(f64, f64)> = pts.iter().map(|p| (x(p.time), ym(seen(p)))).collect();
    svg.push_str(&format!(
        "<path d=\"{}\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.2\"/>\n",
        svg_path(&metric, false)
    ));
    let capacity: Vec<(f64, f64)> = pts.iter().map(|p| (x(p.time), yc(p.capacity as f64))).collect();
    svg.push_str(&format!(
        "<path d=\"{}\" fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\"/>\n",
        svg_path(&capacity, true)
    ));
    // Legend and summary.
    let summary = format!(
        "{} scale events · {} above threshold · {:.1} instance-hours",
        result.scale_events.len(),
        crate::condition::format_period(result.time_above_threshold),
        result.instance_hours
    );
    svg.push_str(&format!(
        "<text x=\"{left}\" y=\"{:.1}\"><tspan fill=\"#1f77b4\">— metric</tspan>  <tspan fill=\"#d62728\">— capacity</tspan>  {}</text>\n",
        h - 12.0,
        esc(&summary)
    ));
    svg.push_str("</svg>\n");
    svg
}

/// An SVG path through `points`: straight segments, or (`steps`) a horizontal run at the old
/// value before each change, so a count reads as the step function it is.
fn svg_path(points: &[(f64, f64)], steps: bool) -> String {
    let mut d = String::new();
    let mut prev: Option<f64> = None;
    for (i, &(x, y)) in points.iter().enumerate() {
        if i == 0 {
            d.push_str(&format!("M{x:.1},{y:.1} "));
        } else {
            if steps && prev != Some(y) {
                d.push_str(&format!("L{x:.1},{:.1} ", prev.unwrap_or(y)));
            }
            d.push_str(&format!("L{x:.1},{y:.1} "));
        }
        prev = Some(y);
    }
    d.trim_end().to_string()
}

/// 1, 2 or 5 times a power of ten, at or above `v`.
fn nice_ceiling(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}
