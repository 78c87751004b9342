//! The autoscale setting as users write it: Azure's `Microsoft.Insights/autoscaleSettings`
//! (API 2022-10-01) in camelCase JSON, plus herd's target-tracking extension.
//!
//! Why Azure's shape: users carry `az monitor autoscale` habits and ARM templates over, so the
//! JSON they export from Azure should load here (unknown fields are refused rather than
//! silently ignored, so a typo never turns a rule off). Counts are strings in Azure's API; we
//! accept numbers too and always write strings back.
//!
//! Validation lives next to the types so that the API, the CLI and the store all refuse the
//! same things with the same message: the JSON path of the bad field and the allowed values.

use crate::schedule::{parse_day, parse_fixed_date_time, parse_time_zone};
use chrono::Duration;
use herd_model::duration::parse_iso8601;
use herd_model::string_enum;
use herd_model::FieldError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

/// Most instances a profile may ask for (Azure's limit for a scale set).
pub const MAX_COUNT: i64 = 1000;
/// Most profiles in one setting (Azure's limit).
pub const MAX_PROFILES: usize = 20;
/// Most rules in one profile (Azure's limit).
pub const MAX_RULES: usize = 10;

string_enum!(
    /// `metricTrigger.statistic`: how the samples of all instances are combined within one time grain.
    Statistic { Average = "Average", Min = "Min", Max = "Max", Sum = "Sum", Count = "Count" } default Average
);
string_enum!(
    /// `metricTrigger.timeAggregation`: how the per-grain values are combined over the time window.
    TimeAggregation {
        Average = "Average", Minimum = "Minimum", Maximum = "Maximum", Total = "Total", Count = "Count", Last = "Last"
    } default Average
);
string_enum!(
    /// `metricTrigger.operator`.
    ComparisonOperator {
        GreaterThan = "GreaterThan",
        GreaterThanOrEqual = "GreaterThanOrEqual",
        LessThan = "LessThan",
        LessThanOrEqual = "LessThanOrEqual",
        Equals = "Equals",
        NotEquals = "NotEquals"
    } default GreaterThan
);
string_enum!(
    /// `scaleAction.direction`. `None` is what `az ... --scale to N` writes (with `ExactCount`).
    ScaleDirection { None = "None", Increase = "Increase", Decrease = "Decrease" } default None
);
string_enum!(
    /// `scaleAction.type`.
    ScaleType { ChangeCount = "ChangeCount", PercentChangeCount = "PercentChangeCount", ExactCount = "ExactCount" } default ChangeCount
);
string_enum!(
    /// `metricTrigger.dimensions[].operator`.
    DimensionOperator { Equals = "Equals", NotEquals = "NotEquals" } default Equals
);
string_enum!(
    /// `recurrence.frequency`: Azure autoscale only supports weekly schedules.
    RecurrenceFrequency { Week = "Week" } default Week
);
string_enum!(
    /// `notifications[].operation`.
    NotificationOperation { Scale = "Scale" } default Scale
);

impl ComparisonOperator {
    /// Whether `value OP threshold` holds.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Self::GreaterThan => value > threshold,
            Self::GreaterThanOrEqual => value >= threshold,
            Self::LessThan => value < threshold,
            Self::LessThanOrEqual => value <= threshold,
            Self::Equals => value == threshold,
            Self::NotEquals => value != threshold,
        }
    }

    /// The symbol of the `az` condition grammar (`>`, `>=`, ...).
    pub fn symbol(self) -> &'static str {
        match self {
            Self::GreaterThan => ">",
            Self::GreaterThanOrEqual => ">=",
            Self::LessThan => "<",
            Self::LessThanOrEqual => "<=",
            Self::Equals => "==",
            Self::NotEquals => "!=",
        }
    }
}

impl TimeAggregation {
    /// The word of the `az` condition grammar (`avg`, `total`, ...).
    pub fn short(self) -> &'static str {
        match self {
            Self::Average => "avg",
            Self::Minimum => "min",
            Self::Maximum => "max",
            Self::Total => "total",
            Self::Count => "count",
            Self::Last => "last",
        }
    }
}

impl Statistic {
    /// The word of `az ... --timegrain "avg 1m"`.
    pub fn short(self) -> &'static str {
        match self {
            Self::Average => "avg",
            Self::Min => "min",
            Self::Max => "max",
            Self::Sum => "sum",
            Self::Count => "count",
        }
    }
}

fn yes() -> bool {
    true
}
fn pt1m() -> String {
    "PT1M".into()
}
fn pt2m() -> String {
    "PT2M".into()
}
fn pt5m() -> String {
    "PT5M".into()
}
fn utc() -> String {
    "UTC".into()
}

/// `Microsoft.Insights/autoscaleSettings` properties (one setting per target resource).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AutoscaleSetting {
    pub name: String,
    /// A disabled setting is evaluated for history but never changes capacity (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The scale set this setting drives, e.g. `/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/web`.
    pub target_resource_uri: String,
    /// At most 20; the active one is picked fixed-date first, then recurrence, then default.
    pub profiles: Vec<Profile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<Notification>,
    /// herd extension (AWS/GCP style): keep a metric near a target per instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_tracking: Option<TargetTracking>,
}

/// `profiles[]`: capacity bounds, rules and when the profile applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    pub capacity: Capacity,
    /// At most 10.
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recurrence: Option<Recurrence>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_date: Option<FixedDate>,
}

impl Profile {
    /// The default profile: neither a recurrence nor a fixed date.
    pub fn is_default(&self) -> bool {
        self.recurrence.is_none() && self.fixed_date.is_none()
    }
}

/// `capacity`: instance-count bounds. Strings in Azure's API; numbers are accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Capacity {
    #[serde(serialize_with = "count_as_string", deserialize_with = "count_from_any")]
    #[schema(value_type = String, example = "2")]
    pub minimum: i64,
    #[serde(serialize_with = "count_as_string", deserialize_with = "count_from_any")]
    #[schema(value_type = String, example = "10")]
    pub maximum: i64,
    /// Used when metrics are missing: a set below it is raised to it.
    #[serde(serialize_with = "count_as_string", deserialize_with = "count_from_any")]
    #[schema(value_type = String, example = "3")]
    pub default: i64,
}

impl Capacity {
    /// `(minimum, maximum, default)` as counts, with negative values read as 0 and `default`
    /// kept inside `minimum..=maximum` (validation refuses anything else; this keeps the
    /// evaluator total even on an unvalidated setting).
    pub fn bounds(&self) -> (u64, u64, u64) {
        let min = self.minimum.max(0) as u64;
        let max = (self.maximum.max(0) as u64).max(min);
        let default = (self.default.max(0) as u64).clamp(min, max);
        (min, max, default)
    }
}

/// `rules[]`: one metric trigger and what to do when it fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    pub metric_trigger: MetricTrigger,
    pub scale_action: ScaleAction,
}

/// `metricTrigger`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricTrigger {
    /// `Percentage CPU`, a load-balancer metric, or `source/NAME` for a named metric source.
    pub metric_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_resource_uri: Option<String>,
    /// Sampling granularity, ISO 8601 (default PT1M).
    #[serde(default = "pt1m")]
    pub time_grain: String,
    /// How instances are combined within one grain (default Average).
    #[serde(default)]
    pub statistic: Statistic,
    /// Look-back window, ISO 8601 (default PT5M, as `az ... avg 5m`).
    #[serde(default = "pt5m")]
    pub time_window: String,
    /// How the grains of the window are combined (default Average).
    #[serde(default)]
    pub time_aggregation: TimeAggregation,
    pub operator: ComparisonOperator,
    #[serde(deserialize_with = "f64_from_any")]
    pub threshold: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dimensions: Vec<Dimension>,
    /// Divide the metric by the instance count (a queue length becomes "messages per instance").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub divide_per_instance: Option<bool>,
}

impl MetricTrigger {
    /// The metric source this trigger reads, for `source/NAME` metrics.
    pub fn source_name(&self) -> Option<&str> {
        self.metric_name.strip_prefix("source/")
    }

    /// Time grain as a duration (PT1M when unparsable; validation refuses that).
    pub fn grain(&self) -> Duration {
        parse_iso8601(&self.time_grain).filter(|d| *d > Duration::zero()).unwrap_or(Duration::minutes(1))
    }

    /// Time window as a duration (PT5M when unparsable; validation refuses that).
    pub fn window(&self) -> Duration {
        parse_iso8601(&self.time_window).filter(|d| *d > Duration::zero()).unwrap_or(Duration::minutes(5))
    }
}

/// `metricTrigger.dimensions[]`: a filter on one dimension of the metric.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Dimension {
    pub dimension_name: String,
    #[serde(default)]
    pub operator: DimensionOperator,
    pub values: Vec<String>,
}

/// `scaleAction`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleAction {
    pub direction: ScaleDirection,
    #[serde(rename = "type")]
    pub kind: ScaleType,
    /// A whole number, as a string in Azure's API (numbers accepted).
    #[serde(deserialize_with = "string_from_any")]
    pub value: String,
    /// Wait after any scale action before this rule may act again, ISO 8601 (default PT5M).
    #[serde(default = "pt5m")]
    pub cooldown: String,
}

impl ScaleAction {
    /// `value` as a count (None when not a whole non-negative number).
    pub fn amount(&self) -> Option<u64> {
        self.value.trim().parse::<u64>().ok()
    }

    /// Cooldown as a duration (PT5M when unparsable; validation refuses that).
    pub fn cooldown_duration(&self) -> Duration {
        parse_iso8601(&self.cooldown).unwrap_or(Duration::minutes(5))
    }
}

/// `recurrence`: a weekly schedule. The profile starts at each listed time and runs until the
/// next profile starts (Azure's semantics; `az ... profile create --end` writes a second
/// profile, see [`crate::schedule::end_profile`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Recurrence {
    #[serde(default)]
    pub frequency: RecurrenceFrequency,
    pub schedule: RecurrentSchedule,
}

/// `recurrence.schedule`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecurrentSchedule {
    /// IANA (`Europe/Prague`) or Windows (`W. Europe Standard Time`) time-zone name.
    pub time_zone: String,
    /// `Monday` ... `Sunday` (three-letter forms accepted).
    pub days: Vec<String>,
    /// 0–23.
    pub hours: Vec<u32>,
    /// 0–59.
    pub minutes: Vec<u32>,
}

/// `fixedDate`: a one-off window (`start` inclusive, `end` exclusive).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FixedDate {
    /// Zone for `start`/`end` written without an offset (default UTC).
    #[serde(default = "utc")]
    pub time_zone: String,
    /// RFC 3339 (`2026-12-24T08:00:00Z`) or local date-time (`2026-12-24T08:00:00`) in `timeZone`.
    pub start: String,
    pub end: String,
}

/// `notifications[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Notification {
    #[serde(default)]
    pub operation: NotificationOperation,
    /// Accepted so Azure exports load; herd sends no e-mail, so enabling any of it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailNotification>,
    #[serde(default)]
    pub webhooks: Vec<Webhook>,
}

/// `notifications[].email`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmailNotification {
    #[serde(default)]
    pub send_to_subscription_administrator: bool,
    #[serde(default)]
    pub send_to_subscription_co_administrators: bool,
    #[serde(default)]
    pub custom_emails: Vec<String>,
}

/// `notifications[].webhooks[]`: called on every scale action (with retries, by the caller).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Webhook {
    pub service_uri: String,
    /// Extra key/value pairs sent with the payload (`az ... --action webhook URL k=v`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

/// herd extension: target tracking (AWS/GCP style). Keeps `metricName` near `target` per
/// instance: for a per-instance metric (CPU) the desired count is
/// `ceil(ready × value / target)`; for a total (queue length) it is `ceil(total / target)`,
/// so `target: 100` means "100 messages per instance".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetTracking {
    pub metric_name: String,
    #[serde(deserialize_with = "f64_from_any")]
    pub target: f64,
    /// Instances younger than this do not count as ready (default PT2M).
    #[serde(default = "pt2m")]
    pub warmup: String,
    /// Wait after any scale action before scaling in (default PT5M, as AWS).
    #[serde(default = "pt5m")]
    pub scale_in_cooldown: String,
    /// Wait after a scale-out before scaling out again (default PT5M, as AWS).
    #[serde(default = "pt5m")]
    pub scale_out_cooldown: String,
    /// Window the metric is averaged over (default PT5M).
    #[serde(default = "pt5m")]
    pub time_window: String,
    /// Only ever scale out (AWS `DisableScaleIn`).
    #[serde(default)]
    pub disable_scale_in: bool,
}

impl TargetTracking {
    pub fn warmup_duration(&self) -> Duration {
        parse_iso8601(&self.warmup).unwrap_or(Duration::minutes(2))
    }
    pub fn scale_in_cooldown_duration(&self) -> Duration {
        parse_iso8601(&self.scale_in_cooldown).unwrap_or(Duration::minutes(5))
    }
    pub fn scale_out_cooldown_duration(&self) -> Duration {
        parse_iso8601(&self.scale_out_cooldown).unwrap_or(Duration::minutes(5))
    }
    pub fn window(&self) -> Duration {
        parse_iso8601(&self.time_window).filter(|d| *d > Duration::zero()).unwrap_or(Duration::minutes(5))
    }
}

// ---------------------------------------------------------------------------------------------
// Validation

fn duration_field(field: &str, value: &str, min: Duration, max: Duration, range: &str) -> Result<Duration, FieldError> {
    let d = parse_iso8601(value).ok_or_else(|| {
        FieldError::new(field, format!("'{value}' is not an ISO 8601 duration; use e.g. PT30S, PT5M, PT1H"))
    })?;
    if d < min || d > max {
        return Err(FieldError::new(field, format!("'{value}' is out of range; allowed: {range}")));
    }
    Ok(d)
}

fn count_field(field: &str, value: i64) -> Result<(), FieldError> {
    if !(0..=MAX_COUNT).contains(&value) {
        return Err(FieldError::new(field, format!("{value} is out of range; allowed: 0 to {MAX_COUNT}")));
    }
    Ok(())
}

impl AutoscaleSetting {
    /// Checks everything the evaluator relies on; the error names the JSON path of the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.name.trim().is_empty() {
            return Err(FieldError::new("name", "must not be empty"));
        }
        if self.target_resource_uri.trim().is_empty() {
            return Err(FieldError::new("targetResourceUri", "must name the scale set this setting drives"));
        }
        if self.profiles.is_empty() {
            return Err(FieldError::new("profiles", "at least one profile is required"));
        }
        if self.profiles.len() > MAX_PROFILES {
            return Err(FieldError::new(
                "profiles",
                format!("{} profiles; at most {MAX_PROFILES} are allowed", self.profiles.len()),
            ));
        }
        let mut default_seen: Option<usize> = None;
        for (i, p) in self.profiles.iter().enumerate() {
            let f = format!("profiles[{i}]");
            p.validate(&f)?;
            if let Some(j) = self.profiles[..i].iter().position(|q| q.name == p.name) {
                return Err(FieldError::new(
                    format!("{f}.name"),
                    format!("'{}' is already the name of profiles[{j}]; profile names must be unique", p.name),
                ));
            }
            if p.is_default() {
                if let Some(j) = default_seen {
                    return Err(FieldError::new(
                        f.clone(),
                        format!(
                            "profiles[{j}] is already the default profile (no recurrence and no fixedDate); \
                             give this one a recurrence or a fixedDate"
                        ),
                    ));
                }
                default_seen = Some(i);
            }
        }
        for (i, n) in self.notifications.iter().enumerate() {
            n.validate(&format!("notifications[{i}]"))?;
        }
        if let Some(t) = &self.target_tracking {
            t.validate("targetTracking")?;
        }
        Ok(())
    }
}

impl Profile {
    fn validate(&self, f: &str) -> Result<(), FieldError> {
        if self.name.trim().is_empty() {
            return Err(FieldError::new(format!("{f}.name"), "must not be empty"));
        }
        let c = &self.capacity;
        count_field(&format!("{f}.capacity.minimum"), c.minimum)?;
        count_field(&format!("{f}.capacity.maximum"), c.maximum)?;
        count_field(&format!("{f}.capacity.default"), c.default)?;
        if c.minimum > c.maximum {
            return Err(FieldError::new(
                format!("{f}.capacity.minimum"),
                format!("minimum {} is greater than maximum {}; allowed: 0 to {}", c.minimum, c.maximum, c.maximum),
            ));
        }
        if c.default < c.minimum || c.default > c.maximum {
            return Err(FieldError::new(
                format!("{f}.capacity.default"),
                format!("{} is outside minimum..maximum; allowed: {} to {}", c.default, c.minimum, c.maximum),
            ));
        }
        if self.rules.len() > MAX_RULES {
            return Err(FieldError::new(
                format!("{f}.rules"),
                format!("{} rules; at most {MAX_RULES} are allowed per profile", self.rules.len()),
            ));
        }
        for (i, r) in self.rules.iter().enumerate() {
            r.validate(&format!("{f}.rules[{i}]"))?;
        }
        match (&self.recurrence, &self.fixed_date) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    format!("{f}.fixedDate"),
                    "a profile has either a recurrence or a fixedDate, not both",
                ))
            }
            (Some(r), None) => r.validate(&format!("{f}.recurrence"))?,
            (None, Some(d)) => d.validate(&format!("{f}.fixedDate"))?,
            (None, None) => {}
        }
        Ok(())
    }
}

impl Rule {
    /// A rule on the average of `metric` in 1-minute grains over 5 minutes, with a 5-minute
    /// cooldown: the shape of most rules (the benchmarks' and the tests').
    pub fn avg_5m(
        metric: &str,
        operator: ComparisonOperator,
        threshold: f64,
        direction: ScaleDirection,
        kind: ScaleType,
        value: u64,
    ) -> Rule {
        Rule {
            metric_trigger: MetricTrigger {
                metric_name: metric.into(),
                metric_namespace: None,
                metric_resource_uri: None,
                time_grain: "PT1M".into(),
                statistic: Statistic::Average,
                time_window: "PT5M".into(),
                time_aggregation: TimeAggregation::Average,
                operator,
                threshold,
                dimensions: vec![],
                divide_per_instance: None,
            },
            scale_action: ScaleAction { direction, kind, value: value.to_string(), cooldown: "PT5M".into() },
        }
    }

    fn validate(&self, f: &str) -> Result<(), FieldError> {
        let m = &self.metric_trigger;
        let mf = format!("{f}.metricTrigger");
        if m.metric_name.trim().is_empty() {
            return Err(FieldError::new(format!("{mf}.metricName"), "must not be empty"));
        }
        if let Some(src) = m.source_name() {
            if src.trim().is_empty() {
                return Err(FieldError::new(
                    format!("{mf}.metricName"),
                    "'source/' must be followed by a metric source name",
                ));
            }
        }
        // Grain and window: both at least a second, named below the trigger.
        let span = |name: &str, value: &str, max, range| {
            duration_field(&format!("{mf}.{name}"), value, Duration::seconds(1), max, range)
        };
        let grain = span("timeGrain", &m.time_grain, Duration::hours(12), "PT1S to PT12H (Azure: PT1M to PT12H)")?;
        let window = span("timeWindow", &m.time_window, Duration::hours(24), "PT1S to P1D (Azure: PT5M to PT12H)")?;
        if window < grain {
            return Err(FieldError::new(
                format!("{mf}.timeWindow"),
                format!(
                    "{} is shorter than timeGrain {}; the window must hold at least one grain",
                    m.time_window, m.time_grain
                ),
            ));
        }
        if !m.threshold.is_finite() {
            return Err(FieldError::new(format!("{mf}.threshold"), "must be a finite number"));
        }
        for (i, d) in m.dimensions.iter().enumerate() {
            let df = format!("{mf}.dimensions[{i}]");
            if d.dimension_name.trim().is_empty() {
                return Err(FieldError::new(format!("{df}.dimensionName"), "must not be empty"));
            }
            if d.values.is_empty() {
                return Err(FieldError::new(format!("{df}.values"), "at least one value is required"));
            }
        }
        let a = &self.scale_action;
        let af = format!("{f}.scaleAction");
        duration_field(
            &format!("{af}.cooldown"),
            &a.cooldown,
            Duration::zero(),
            Duration::weeks(1),
            "PT0S to P7D (Azure: PT1M to P7D)",
        )?;
        let Some(v) = a.amount() else {
            return Err(FieldError::new(
                format!("{af}.value"),
                format!("'{}' is not a whole number; allowed: 0 to {MAX_COUNT}", a.value),
            ));
        };
        match (a.direction, a.kind) {
            (ScaleDirection::None, ScaleType::ChangeCount | ScaleType::PercentChangeCount) => {
                return Err(FieldError::new(
                    format!("{af}.direction"),
                    format!("'None' only goes with type ExactCount; allowed with {}: Increase, Decrease", a.kind),
                ))
            }
            (_, ScaleType::ExactCount) if v > MAX_COUNT as u64 => {
                return Err(FieldError::new(
                    format!("{af}.value"),
                    format!("{v} is out of range; allowed: 0 to {MAX_COUNT}"),
                ))
            }
            (_, ScaleType::ChangeCount) if !(1..=MAX_COUNT as u64).contains(&v) => {
                return Err(FieldError::new(
                    format!("{af}.value"),
                    format!("{v} is out of range; allowed: 1 to {MAX_COUNT}"),
                ))
            }
            (_, ScaleType::PercentChangeCount) if !(1..=10_000).contains(&v) => {
                return Err(FieldError::new(
                    format!("{af}.value"),
                    format!("{v}% is out of range; allowed: 1 to 10000"),
                ))
            }
            _ => {}
        }
        Ok(())
    }
}

impl Recurrence {
    fn validate(&self, f: &str) -> Result<(), FieldError> {
        let s = &self.schedule;
        let sf = format!("{f}.schedule");
        if parse_time_zone(&s.time_zone).is_none() {
            return Err(unknown_zone(&format!("{sf}.timeZone"), &s.time_zone));
        }
        if s.days.is_empty() {
            return Err(FieldError::new(
                format!("{sf}.days"),
                "at least one day is required; allowed: Monday to Sunday",
            ));
        }
        for (i, d) in s.days.iter().enumerate() {
            if parse_day(d).is_none() {
                return Err(FieldError::one_of(
                    format!("{sf}.days[{i}]"),
                    d,
                    &["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
                ));
            }
        }
        if s.hours.is_empty() {
            return Err(FieldError::new(format!("{sf}.hours"), "at least one hour is required; allowed: 0 to 23"));
        }
        if let Some((i, h)) = s.hours.iter().enumerate().find(|(_, h)| **h > 23) {
            return Err(FieldError::new(format!("{sf}.hours[{i}]"), format!("{h} is out of range; allowed: 0 to 23")));
        }
        if s.minutes.is_empty() {
            return Err(FieldError::new(format!("{sf}.minutes"), "at least one minute is required; allowed: 0 to 59"));
        }
        if let Some((i, m)) = s.minutes.iter().enumerate().find(|(_, m)| **m > 59) {
            return Err(FieldError::new(
                format!("{sf}.minutes[{i}]"),
                format!("{m} is out of range; allowed: 0 to 59"),
            ));
        }
        Ok(())
    }
}

fn unknown_zone(field: &str, zone: &str) -> FieldError {
    FieldError::new(
        field,
        format!(
            "unknown time zone '{zone}'; allowed: an IANA name such as UTC, Europe/Prague, America/New_York, \
             or a Windows name such as 'W. Europe Standard Time'"
        ),
    )
}

impl FixedDate {
    fn validate(&self, f: &str) -> Result<(), FieldError> {
        let Some(tz) = parse_time_zone(&self.time_zone) else {
            return Err(unknown_zone(&format!("{f}.timeZone"), &self.time_zone));
        };
        let parse = |field: &str, v: &str| {
            parse_fixed_date_time(v, tz).ok_or_else(|| {
                FieldError::new(
                    format!("{f}.{field}"),
                    format!(
                        "'{v}' is not a date-time; use RFC 3339 (2026-12-24T08:00:00Z) or a local 2026-12-24T08:00:00"
                    ),
                )
            })
        };
        let start = parse("start", &self.start)?;
        let end = parse("end", &self.end)?;
        if end <= start {
            return Err(FieldError::new(
                format!("{f}.end"),
                format!("{} is not after start {}; the end must come after the start", self.end, self.start),
            ));
        }
        Ok(())
    }
}

impl Notification {
    fn validate(&self, f: &str) -> Result<(), FieldError> {
        if let Some(e) = &self.email {
            if e.send_to_subscription_administrator
                || e.send_to_subscription_co_administrators
                || !e.custom_emails.is_empty()
            {
                return Err(FieldError::not_supported(
                    format!("{f}.email"),
                    "e-mail notifications; use webhooks (and the activity log)",
                ));
            }
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            let uri = w.service_uri.trim();
            let scheme_ok = uri.starts_with("http://") || uri.starts_with("https://");
            if !scheme_ok || uri.len() <= "https://".len() {
                return Err(FieldError::new(
                    format!("{f}.webhooks[{i}].serviceUri"),
                    format!("'{uri}' is not a URL; allowed schemes: http, https"),
                ));
            }
        }
        Ok(())
    }
}

impl TargetTracking {
    fn validate(&self, f: &str) -> Result<(), FieldError> {
        if self.metric_name.trim().is_empty() {
            return Err(FieldError::new(format!("{f}.metricName"), "must not be empty"));
        }
        if !self.target.is_finite() || self.target <= 0.0 {
            return Err(FieldError::new(
                format!("{f}.target"),
                format!("{} is not allowed; must be a number above 0", self.target),
            ));
        }
        let (zero, week) = (Duration::zero(), Duration::weeks(1));
        // (field, value, min, max, the allowed range as the error says it), in this order.
        let spans = [
            ("warmup", &self.warmup, zero, Duration::hours(12), "PT0S to PT12H"),
            ("scaleInCooldown", &self.scale_in_cooldown, zero, week, "PT0S to P7D"),
            ("scaleOutCooldown", &self.scale_out_cooldown, zero, week, "PT0S to P7D"),
            ("timeWindow", &self.time_window, Duration::seconds(1), Duration::hours(24), "PT1S to P1D"),
        ];
        for (name, value, min, max, range) in spans {
            duration_field(&format!("{f}.{name}"), value, min, max, range)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Lenient number/string (de)serialisation: Azure writes counts and values as strings.

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Int(i64),
    Float(f64),
    Str(String),
}

fn count_as_string<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

fn count_from_any<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    use serde::de::Error;
    match NumOrStr::deserialize(d)? {
        NumOrStr::Int(i) => Ok(i),
        NumOrStr::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => Ok(f as i64),
        NumOrStr::Float(f) => Err(D::Error::custom(format!("{f} is not a whole number of instances"))),
        NumOrStr::Str(s) => {
            s.trim().parse::<i64>().map_err(|_| D::Error::custom(format!("'{s}' is not a whole number of instances")))
        }
    }
}

fn f64_from_any<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    use serde::de::Error;
    match NumOrStr::deserialize(d)? {
        NumOrStr::Int(i) => Ok(i as f64),
        NumOrStr::Float(f) => Ok(f),
        NumOrStr::Str(s) => s.trim().parse::<f64>().map_err(|_| D::Error::custom(format!("'{s}' is not a number"))),
    }
}

fn string_from_any<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match NumOrStr::deserialize(d)? {
        NumOrStr::Int(i) => i.to_string(),
        NumOrStr::Float(f) => f.to_string(),
        NumOrStr::Str(s) => s,
    })
}
