//! The `az monitor autoscale rule create` condition grammar, `--scale`, `--cooldown` and
//! `--timegrain`, parsed into the Azure-shaped [`Rule`].
//!
//! Why hand-written: users type these conditions, so an error must point at the token that is
//! wrong and list what would be accepted, which a generic parser does not do:
//!
//! ```text
//! invalid --condition: unknown aggregation 'average'; allowed values: avg, min, max, total, count, last
//!   Percentage CPU > 70 average 5m
//!                       ^^^^^^^
//! ```
//!
//! Grammar (as `az`, plus a quoted metric name):
//! `["NAMESPACE"] METRIC {>,>=,<,<=,==,!=} THRESHOLD {avg,min,max,total,count} PERIOD
//!  [where DIM {==,!=} V [or V ...] [and DIM {==,!=} V ...]]`.
//! Everything before the operator is the metric name, so `Percentage CPU` needs no quotes;
//! `source/NAME` names a metric source. PERIOD is `##h##m##s` (`5m`, `1h30m`, `30s`).

use crate::model::{
    ComparisonOperator, Dimension, DimensionOperator, MetricTrigger, Rule, ScaleAction, ScaleDirection, ScaleType,
    Statistic, TimeAggregation,
};
use chrono::Duration;
use herd_model::duration::{format_iso8601, parse_iso8601};
use std::fmt;

/// A bad `--condition` (or `--scale`, `--cooldown`, `--timegrain`): what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConditionError {
    /// The CLI argument the text came from (`--condition`, `--scale`, ...).
    pub argument: String,
    /// The whole text as given.
    pub input: String,
    /// What is wrong, with the allowed values.
    pub message: String,
    /// Column (in characters, from 0) of the offending token; `input`'s length when something
    /// is missing at the end.
    pub column: usize,
    /// The offending token; empty when something is missing.
    pub token: String,
}

impl fmt::Display for ConditionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid {}: {}", self.argument, self.message)?;
        writeln!(f, "  {}", self.input)?;
        let width = self.token.chars().count().max(1);
        write!(f, "  {}{}", " ".repeat(self.column), "^".repeat(width))
    }
}

const OPERATORS: &str = ">, >=, <, <=, ==, !=";
const AGGREGATIONS: &str = "avg, min, max, total, count, last";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Word,
    Quoted,
    Op,
    Comma,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    /// The text (without quotes for `Quoted`).
    text: String,
    /// Char columns `[start, end)` in the input, quotes included.
    start: usize,
    end: usize,
}

struct Input<'a> {
    argument: &'a str,
    text: &'a str,
    chars: Vec<char>,
}

impl Input<'_> {
    fn err_at(&self, t: &Token, message: impl Into<String>) -> ConditionError {
        let token: String = self.chars[t.start..t.end].iter().collect();
        ConditionError {
            argument: self.argument.into(),
            input: self.text.into(),
            message: message.into(),
            column: t.start,
            token,
        }
    }

    fn err_end(&self, message: impl Into<String>) -> ConditionError {
        ConditionError {
            argument: self.argument.into(),
            input: self.text.into(),
            message: message.into(),
            column: self.chars.len(),
            token: String::new(),
        }
    }

    fn slice(&self, start: usize, end: usize) -> String {
        self.chars[start..end].iter().collect()
    }
}

fn is_op_char(c: char) -> bool {
    matches!(c, '<' | '>' | '=' | '!')
}

fn tokenize(inp: &Input<'_>) -> Result<Vec<Token>, ConditionError> {
    let c = &inp.chars;
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '"' || ch == '\'' {
            let start = i;
            let close = c[i + 1..].iter().position(|&x| x == ch).map(|p| i + 1 + p);
            let Some(close) = close else {
                let t = Token { kind: Kind::Quoted, text: String::new(), start, end: start + 1 };
                return Err(inp.err_at(&t, format!("unterminated quote; close it with {ch}")));
            };
            out.push(Token { kind: Kind::Quoted, text: inp.slice(start + 1, close), start, end: close + 1 });
            i = close + 1;
        } else if ch == ',' {
            out.push(Token { kind: Kind::Comma, text: ",".into(), start: i, end: i + 1 });
            i += 1;
        } else if is_op_char(ch) {
            let start = i;
            while i < c.len() && is_op_char(c[i]) {
                i += 1;
            }
            out.push(Token { kind: Kind::Op, text: inp.slice(start, i), start, end: i });
        } else {
            let start = i;
            while i < c.len() && !c[i].is_whitespace() && !is_op_char(c[i]) && c[i] != ',' && c[i] != '"' {
                i += 1;
            }
            out.push(Token { kind: Kind::Word, text: inp.slice(start, i), start, end: i });
        }
    }
    Ok(out)
}

fn comparison(op: &str) -> Option<ComparisonOperator> {
    Some(match op {
        ">" => ComparisonOperator::GreaterThan,
        ">=" => ComparisonOperator::GreaterThanOrEqual,
        "<" => ComparisonOperator::LessThan,
        "<=" => ComparisonOperator::LessThanOrEqual,
        "==" => ComparisonOperator::Equals,
        "!=" => ComparisonOperator::NotEquals,
        _ => return None,
    })
}

fn aggregation(word: &str) -> Option<TimeAggregation> {
    Some(match word.to_ascii_lowercase().as_str() {
        "avg" => TimeAggregation::Average,
        "min" => TimeAggregation::Minimum,
        "max" => TimeAggregation::Maximum,
        "total" => TimeAggregation::Total,
        "count" => TimeAggregation::Count,
        "last" => TimeAggregation::Last,
        _ => return None,
    })
}

/// `##h##m##s` (each part optional, at least one, in that order), or an ISO 8601 duration.
pub fn parse_period(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.starts_with(['P', 'p']) {
        return parse_iso8601(s);
    }
    let mut total = 0i64;
    let mut num = String::new();
    let mut last_unit = 0usize;
    let units = [('d', 86_400i64), ('h', 3600), ('m', 60), ('s', 1)];
    for ch in s.chars() {
        if ch.is_ascii_digit() {
            num.push(ch);
            continue;
        }
        let pos = units.iter().position(|(u, _)| u.eq_ignore_ascii_case(&ch))?;
        if num.is_empty() || pos < last_unit {
            return None;
        }
        last_unit = pos + 1;
        total = total.checked_add(num.parse::<i64>().ok()?.checked_mul(units[pos].1)?)?;
        num.clear();
    }
    if !num.is_empty() || last_unit == 0 {
        return None;
    }
    Some(Duration::seconds(total))
}

/// A duration the way the condition grammar writes it: `5m`, `1h30m`, `30s`, `0s`.
pub fn format_period(d: Duration) -> String {
    let mut secs = d.num_seconds().max(0);
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, len) in [('d', 86_400), ('h', 3600), ('m', 60), ('s', 1)] {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    out
}

/// A parsed condition: everything of a [`MetricTrigger`] except the time grain and statistic,
/// which come from `--timegrain`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub metric_namespace: Option<String>,
    pub metric_name: String,
    pub operator: ComparisonOperator,
    pub threshold: f64,
    pub time_aggregation: TimeAggregation,
    pub time_window: Duration,
    pub dimensions: Vec<Dimension>,
}

impl Condition {
    /// The trigger, with `statistic` and `time_grain` from `--timegrain`.
    pub fn into_trigger(self, statistic: Statistic, time_grain: Duration) -> MetricTrigger {
        MetricTrigger {
            metric_name: self.metric_name,
            metric_namespace: self.metric_namespace,
            metric_resource_uri: None,
            time_grain: format_iso8601(time_grain),
            statistic,
            time_window: format_iso8601(self.time_window),
            time_aggregation: self.time_aggregation,
            operator: self.operator,
            threshold: self.threshold,
            dimensions: self.dimensions,
            divide_per_instance: None,
        }
    }
}

/// Parses an `az monitor autoscale rule create --condition` string.
pub fn parse_condition(condition: &str) -> Result<Condition, ConditionError> {
    let inp = Input { argument: "--condition", text: condition, chars: condition.chars().collect() };
    let toks = tokenize(&inp)?;
    let usage = "expected: METRIC {>,>=,<,<=,==,!=} THRESHOLD {avg,min,max,total,count} PERIOD, e.g. 'Percentage CPU > 70 avg 5m'";
    if toks.is_empty() {
        return Err(inp.err_end(format!("empty condition; {usage}")));
    }
    let Some(k) = toks.iter().position(|t| t.kind == Kind::Op) else {
        // No operator: point at the first number after the metric, where it should have been.
        let at = toks.iter().skip(1).find(|t| t.kind == Kind::Word && t.text.parse::<f64>().is_ok());
        let msg = format!("expected a comparison operator after the metric name; allowed values: {OPERATORS}");
        return Err(match at {
            Some(t) => inp.err_at(t, msg),
            None => inp.err_end(msg),
        });
    };
    let op_tok = &toks[k];
    if k == 0 {
        return Err(inp.err_at(op_tok, format!("expected a metric name before '{}'; {usage}", op_tok.text)));
    }
    let (namespace, metric) = metric_name(&inp, &toks[..k])?;
    let operator = comparison(&op_tok.text).ok_or_else(|| {
        inp.err_at(op_tok, format!("unknown operator '{}'; allowed values: {OPERATORS}", op_tok.text))
    })?;

    let mut pos = k + 1;
    let next = |pos: usize, what: &str| -> Result<&Token, ConditionError> {
        toks.get(pos).ok_or_else(|| inp.err_end(format!("missing {what}; {usage}")))
    };
    let t = next(pos, "the threshold (a number)")?;
    let threshold = match t.text.parse::<f64>() {
        Ok(v) if t.kind == Kind::Word && v.is_finite() => v,
        _ => {
            return Err(inp
                .err_at(t, format!("'{}' is not a number; the threshold must be a number such as 70 or 0.5", t.text)))
        }
    };
    pos += 1;
    let t = next(pos, &format!("the aggregation ({AGGREGATIONS})"))?;
    let time_aggregation = aggregation(&t.text)
        .filter(|_| t.kind == Kind::Word)
        .ok_or_else(|| inp.err_at(t, format!("unknown aggregation '{}'; allowed values: {AGGREGATIONS}", t.text)))?;
    pos += 1;
    let t = next(pos, "the period (such as 5m, 1h or 1h30m)")?;
    let time_window =
        parse_period(&t.text).filter(|d| t.kind == Kind::Word && *d > Duration::zero()).ok_or_else(|| {
            inp.err_at(t, format!("'{}' is not a period; write ##h##m##s, such as 5m, 30s, 1h or 1h30m", t.text))
        })?;
    pos += 1;

    let mut dimensions = Vec::new();
    if let Some(t) = toks.get(pos) {
        if !(t.kind == Kind::Word && t.text.eq_ignore_ascii_case("where")) {
            return Err(
                inp.err_at(t, format!("unexpected '{}'; expected 'where DIMENSION == VALUE' or the end", t.text))
            );
        }
        pos += 1;
        loop {
            let t = next(pos, "a dimension name after 'where'/'and'")?;
            if !matches!(t.kind, Kind::Word | Kind::Quoted) {
                return Err(inp.err_at(t, format!("expected a dimension name, found '{}'", t.text)));
            }
            let dimension_name = t.text.clone();
            pos += 1;
            let t = next(pos, "the dimension operator (== or !=)")?;
            let operator = match (t.kind, t.text.as_str()) {
                (Kind::Op, "==") => DimensionOperator::Equals,
                (Kind::Op, "!=") => DimensionOperator::NotEquals,
                _ => {
                    return Err(
                        inp.err_at(t, format!("unknown dimension operator '{}'; allowed values: ==, !=", t.text))
                    )
                }
            };
            pos += 1;
            let mut values = Vec::new();
            loop {
                let t = next(pos, "a dimension value")?;
                if !matches!(t.kind, Kind::Word | Kind::Quoted) {
                    return Err(inp.err_at(t, format!("expected a dimension value, found '{}'", t.text)));
                }
                values.push(t.text.clone());
                pos += 1;
                // `or V` or `, V` continues the values, unless `, NAME ==` starts a new dimension.
                let more = match toks.get(pos) {
                    Some(s) if s.kind == Kind::Word && s.text.eq_ignore_ascii_case("or") => true,
                    Some(s) if s.kind == Kind::Comma => !toks.get(pos + 2).is_some_and(|o| o.kind == Kind::Op),
                    _ => false,
                };
                if !more {
                    break;
                }
                pos += 1;
            }
            dimensions.push(Dimension { dimension_name, operator, values });
            match toks.get(pos) {
                None => break,
                Some(s) if (s.kind == Kind::Word && s.text.eq_ignore_ascii_case("and")) || s.kind == Kind::Comma => {
                    pos += 1
                }
                Some(s) => {
                    return Err(inp.err_at(s, format!("unexpected '{}'; expected 'and', 'or' or the end", s.text)))
                }
            }
        }
    }
    Ok(Condition {
        metric_namespace: namespace,
        metric_name: metric,
        operator,
        threshold,
        time_aggregation,
        time_window,
        dimensions,
    })
}

fn metric_name(inp: &Input<'_>, toks: &[Token]) -> Result<(Option<String>, String), ConditionError> {
    let (namespace, rest) = match toks {
        [ns, rest @ ..] if ns.kind == Kind::Quoted && !rest.is_empty() => (Some(ns.text.clone()), rest),
        _ => (None, toks),
    };
    let metric = match rest {
        [only] if only.kind == Kind::Quoted => only.text.clone(),
        _ => {
            if let Some(q) = rest.iter().find(|t| t.kind == Kind::Quoted) {
                return Err(inp.err_at(q, "a quoted metric name must stand alone before the operator"));
            }
            // Everything before the operator, spaces and all, as az does.
            inp.slice(rest[0].start, rest[rest.len() - 1].end)
        }
    };
    let metric = metric.trim().to_string();
    let first = &rest[0];
    if metric.is_empty() {
        return Err(inp.err_at(first, "the metric name is empty"));
    }
    if let Some(src) = metric.strip_prefix("source/") {
        if src.trim().is_empty() || src.contains('/') {
            return Err(inp.err_at(first, format!("'{metric}' is not a metric source; write source/NAME")));
        }
    }
    Ok((namespace, metric))
}

/// Parses `--scale {in,out,to} N[%]` into a scale action (cooldown PT5M).
/// `out 1` = Increase/ChangeCount, `in 50%` = Decrease/PercentChangeCount,
/// `to 5` = None/ExactCount (what `az` writes).
pub fn parse_scale(scale: &str) -> Result<ScaleAction, ConditionError> {
    let inp = Input { argument: "--scale", text: scale, chars: scale.chars().collect() };
    let toks = tokenize(&inp)?;
    let usage = "expected {in,out,to} N[%], e.g. 'out 1', 'in 50%' or 'to 5'";
    let Some(d) = toks.first() else { return Err(inp.err_end(usage)) };
    let direction = match d.text.to_ascii_lowercase().as_str() {
        "out" => ScaleDirection::Increase,
        "in" => ScaleDirection::Decrease,
        "to" => ScaleDirection::None,
        _ => return Err(inp.err_at(d, format!("unknown direction '{}'; allowed values: in, out, to", d.text))),
    };
    let Some(v) = toks.get(1) else { return Err(inp.err_end(format!("missing the amount; {usage}"))) };
    // `50%` tokenizes as one word.
    let (number, percent) = match v.text.strip_suffix('%') {
        Some(n) => (n, true),
        None => (v.text.as_str(), false),
    };
    let Ok(n) = number.parse::<u64>() else {
        return Err(inp.err_at(v, format!("'{}' is not a whole number; {usage}", v.text)));
    };
    let kind = match (direction, percent) {
        (ScaleDirection::None, true) => {
            return Err(inp.err_at(v, "'to' takes an instance count, not a percentage; e.g. 'to 5'"))
        }
        (ScaleDirection::None, false) => ScaleType::ExactCount,
        (_, true) => ScaleType::PercentChangeCount,
        (_, false) => ScaleType::ChangeCount,
    };
    if kind == ScaleType::ExactCount && n > crate::model::MAX_COUNT as u64 {
        return Err(inp.err_at(v, format!("{n} is out of range; allowed: 0 to {}", crate::model::MAX_COUNT)));
    }
    if kind != ScaleType::ExactCount && n == 0 {
        return Err(inp.err_at(v, "scaling by 0 does nothing; allowed: 1 or more"));
    }
    if let Some(extra) = toks.get(2) {
        return Err(inp.err_at(extra, format!("unexpected '{}'; {usage}", extra.text)));
    }
    Ok(ScaleAction { direction, kind, value: n.to_string(), cooldown: "PT5M".into() })
}

/// Parses `--timegrain "avg 1m"` (`{avg,min,max,sum,count} PERIOD`, the statistic optional).
pub fn parse_time_grain(text: &str) -> Result<(Statistic, Duration), ConditionError> {
    let inp = Input { argument: "--timegrain", text, chars: text.chars().collect() };
    let toks = tokenize(&inp)?;
    let usage = "expected {avg,min,max,sum,count} PERIOD, e.g. 'avg 1m'";
    let (stat, period) = match toks.as_slice() {
        [p] => (Statistic::Average, p),
        [s, p] => {
            let stat = match s.text.to_ascii_lowercase().as_str() {
                "avg" | "average" => Statistic::Average,
                "min" => Statistic::Min,
                "max" => Statistic::Max,
                "sum" | "total" => Statistic::Sum,
                "count" => Statistic::Count,
                _ => {
                    return Err(inp.err_at(
                        s,
                        format!("unknown statistic '{}'; allowed values: avg, min, max, sum, count", s.text),
                    ))
                }
            };
            (stat, p)
        }
        [] => return Err(inp.err_end(usage)),
        [_, _, extra, ..] => return Err(inp.err_at(extra, format!("unexpected '{}'; {usage}", extra.text))),
    };
    let grain = parse_period(&period.text)
        .filter(|d| *d > Duration::zero())
        .ok_or_else(|| inp.err_at(period, format!("'{}' is not a period; {usage}", period.text)))?;
    Ok((stat, grain))
}

/// Builds a rule from `az monitor autoscale rule create` arguments: `--condition`, `--scale`,
/// `--cooldown` (minutes, default 5) and `--timegrain` (default `avg 1m`).
pub fn parse_rule(
    condition: &str,
    scale: &str,
    cooldown_minutes: Option<f64>,
    time_grain: Option<&str>,
) -> Result<Rule, ConditionError> {
    let cond = parse_condition(condition)?;
    let mut action = parse_scale(scale)?;
    let (statistic, grain) = match time_grain {
        Some(g) => parse_time_grain(g)?,
        None => (Statistic::Average, Duration::minutes(1)),
    };
    if cond.time_window < grain {
        let inp = Input { argument: "--condition", text: condition, chars: condition.chars().collect() };
        let toks = tokenize(&inp)?;
        let k = toks.iter().position(|t| t.kind == Kind::Op).unwrap_or(0);
        let msg = format!(
            "the period {} is shorter than the time grain {}; the window must hold at least one grain",
            format_period(cond.time_window),
            format_period(grain)
        );
        return Err(match toks.get(k + 3) {
            Some(t) => inp.err_at(t, msg),
            None => inp.err_end(msg),
        });
    }
    if let Some(m) = cooldown_minutes {
        if !m.is_finite() || !(0.0..=10_080.0).contains(&m) {
            let text = m.to_string();
            return Err(ConditionError {
                argument: "--cooldown".into(),
                input: text.clone(),
                message: format!("{text} minutes is out of range; allowed: 0 to 10080 (one week)"),
                column: 0,
                token: text,
            });
        }
        action.cooldown = format_iso8601(Duration::milliseconds((m * 60_000.0).round() as i64));
    }
    Ok(Rule { metric_trigger: cond.into_trigger(statistic, grain), scale_action: action })
}

/// Writes a trigger back in the condition grammar (for `rule list`):
/// `Percentage CPU > 70 avg 5m`.
pub fn format_condition(t: &MetricTrigger) -> String {
    let mut out = String::new();
    if let Some(ns) = &t.metric_namespace {
        out.push_str(&format!("\"{ns}\" "));
    }
    let plain = !t.metric_name.is_empty()
        && !t.metric_name.contains(|c: char| is_op_char(c) || c == '"' || c == '\'' || c == ',')
        && t.metric_name.trim() == t.metric_name;
    if plain {
        out.push_str(&t.metric_name);
    } else {
        out.push_str(&format!("\"{}\"", t.metric_name));
    }
    out.push_str(&format!(
        " {} {} {} {}",
        t.operator.symbol(),
        t.threshold,
        t.time_aggregation.short(),
        format_period(t.window())
    ));
    for (i, d) in t.dimensions.iter().enumerate() {
        out.push_str(if i == 0 { " where " } else { " and " });
        let op = match d.operator {
            DimensionOperator::Equals => "==",
            DimensionOperator::NotEquals => "!=",
        };
        let quote = |v: &str| {
            if v.is_empty() || v.contains(|c: char| c.is_whitespace() || is_op_char(c) || c == ',') {
                format!("\"{v}\"")
            } else {
                v.to_string()
            }
        };
        let values: Vec<String> = d.values.iter().map(|v| quote(v)).collect();
        out.push_str(&format!("{} {op} {}", quote(&d.dimension_name), values.join(" or ")));
    }
    out
}

/// A number for people: no trailing zeros, two decimals from 1 up, three significant digits
/// below (`70`, `82.3`, `0.05`, `0.00123`).
pub fn format_number(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    let decimals = if a == 0.0 || a >= 1.0 { 2 } else { ((-a.log10()).floor() as usize + 3).min(12) };
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { &s };
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}
