//! `herd monitor autoscale|metric-source|metrics`: autoscale as `az monitor autoscale` spells it.
//!
//! Rules are written in az's condition grammar and parsed here with the engine's parser, so a
//! bad condition gets a caret under the bad token before anything is sent. Edits to a setting
//! (rule create/delete, profile, target) are read-modify-write with `If-Match`, like az.

use crate::autoscale_setting::{
    default_profile, edit_rules, profile_index, remove_profile, simulate, weekly_profiles, Weekly,
};
use crate::output::{Columns, Print};
use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use herd_client::{enc, Client};
use serde_json::{json, Value};

#[derive(Debug, Subcommand)]
pub enum AutoscaleCmd {
    /// Create an autoscale setting for a scale set, with a default profile.
    #[command(mut_arg("count", |a| a.help("The default count (used when metrics are missing)")))]
    Create {
        #[arg(short = 'g', long = "resource-group")]
        group: String,
        /// The scale set's name (or its resource id).
        #[arg(long)]
        resource: String,
        /// Accepted for az compatibility: Microsoft.Compute/virtualMachineScaleSets.
        #[arg(long)]
        resource_type: Option<String>,
        #[arg(short = 'n', long)]
        name: String,
        #[command(flatten)]
        counts: Counts,
        /// Create it disabled (evaluated and recorded, but never scaling).
        #[arg(long)]
        disabled: bool,
    },
    /// Show a setting.
    Show(SettingRef),
    /// List the group's settings.
    List {
        #[arg(short = 'g', long = "resource-group")]
        group: String,
    },
    /// Change a setting's default profile counts or enable/disable it.
    Update {
        #[command(flatten)]
        s: SettingRef,
        #[arg(long)]
        min_count: Option<i64>,
        #[arg(long)]
        max_count: Option<i64>,
        #[arg(long)]
        count: Option<i64>,
        #[arg(long)]
        enabled: Option<bool>,
    },
    /// Delete a setting.
    Delete(SettingRef),
    /// Every recent evaluation: metric values, decision and reason.
    History(SettingRef),
    /// Rules of the default profile.
    #[command(subcommand)]
    Rule(RuleCmd),
    /// Target tracking (herd extension): keep a metric near a target per instance.
    #[command(subcommand)]
    Target(TargetCmd),
    /// Schedule profiles (recurrence in a time zone, or a fixed date).
    #[command(subcommand)]
    Profile(ProfileCmd),
    /// Webhooks called on every scale action (with retries).
    #[command(subcommand)]
    Notification(NotificationCmd),
    /// What-if: replay a metric trace (CSV: time,value) against the setting with the same
    /// evaluator, print capacity over time and the scale events, optionally plot an SVG.
    Simulate {
        #[command(flatten)]
        s: SettingRef,
        /// CSV of timestamp (RFC 3339 or unix seconds) and value.
        #[arg(long)]
        trace: std::path::PathBuf,
        /// Write an SVG chart of the metric and the capacity here.
        #[arg(long)]
        plot: Option<std::path::PathBuf>,
        /// Capacity at the start of the trace (default: the default count).
        #[arg(long)]
        start_capacity: Option<u64>,
        /// Seconds from creating an instance until it runs (default 60).
        #[arg(long, default_value_t = 60)]
        provisioning_latency: u64,
    },
}

#[derive(Debug, Args, Clone)]
pub struct SettingRef {
    #[arg(short = 'g', long = "resource-group")]
    pub group: String,
    #[arg(short = 'n', long = "name", visible_alias = "autoscale-name")]
    pub name: String,
}

/// `-g` and `--autoscale-name`: the setting a rule, profile, target or notification belongs to.
#[derive(Debug, Args, Clone)]
pub struct OfSetting {
    #[arg(short = 'g', long = "resource-group")]
    pub group: String,
    #[arg(long)]
    pub autoscale_name: String,
}

/// A profile's capacity: `--min-count`, `--max-count`, `--count` (the default).
#[derive(Debug, Args, Clone)]
pub struct Counts {
    #[arg(long)]
    pub min_count: i64,
    #[arg(long)]
    pub max_count: i64,
    #[arg(long)]
    pub count: i64,
}

impl Counts {
    /// The profile's `capacity` object (counts as strings, as Azure writes them).
    fn capacity(&self) -> Value {
        json!({"minimum": self.min_count.to_string(), "maximum": self.max_count.to_string(), "default": self.count.to_string()})
    }
}

#[derive(Debug, Subcommand)]
pub enum RuleCmd {
    /// Add a rule: --condition "Percentage CPU > 70 avg 5m" --scale out 1 [--cooldown 5].
    Create {
        #[command(flatten)]
        s: OfSetting,
        /// METRIC OP THRESHOLD AGG PERIOD [where DIM == V]; METRIC may be source/NAME.
        #[arg(long)]
        condition: String,
        /// {in,out,to} N[%].
        #[arg(long, num_args = 1..=2)]
        scale: Vec<String>,
        /// Minutes before another scale action (default 5).
        #[arg(long)]
        cooldown: Option<f64>,
        /// AGG PERIOD of the samples, e.g. "avg 1m" (default).
        #[arg(long)]
        timegrain: Option<String>,
        /// The profile to add the rule to (default: the default profile, the one without a
        /// schedule).
        #[arg(long)]
        profile_name: Option<String>,
    },
    /// List rules (with their index).
    List {
        #[command(flatten)]
        s: OfSetting,
        /// The profile whose rules to list (default: the default profile).
        #[arg(long)]
        profile_name: Option<String>,
    },
    /// Delete rules by index (as `rule list` numbers them), or '*'.
    Delete {
        #[command(flatten)]
        s: OfSetting,
        #[arg(long, num_args = 1..)]
        index: Vec<String>,
        /// The profile to delete rules from (default: the default profile).
        #[arg(long)]
        profile_name: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProfileCmd {
    /// A profile with its own counts: `--recurrence week mon tue ... --start 08:00 --end 18:00
    /// --timezone Europe/Prague`, or `--start 2026-12-24T00:00 --end 2026-12-27T00:00` (fixed date).
    /// It copies the default profile's rules unless --copy-rules none.
    Create {
        #[command(flatten)]
        s: OfSetting,
        #[arg(short = 'n', long)]
        name: String,
        /// `week DAY...` (mon..sun).
        #[arg(long, num_args = 1..)]
        recurrence: Vec<String>,
        /// HH:MM (recurrence) or a date-time (fixed date).
        #[arg(long)]
        start: String,
        /// HH:MM (recurrence: back to the default profile then) or a date-time (fixed date).
        #[arg(long)]
        end: Option<String>,
        #[arg(long, default_value = "UTC")]
        timezone: String,
        #[command(flatten)]
        counts: Counts,
        /// `default` (copy the default profile's rules) or `none`.
        #[arg(long, default_value = "default")]
        copy_rules: String,
    },
    /// List profiles.
    List {
        #[command(flatten)]
        s: OfSetting,
    },
    /// Delete a profile (and the one az writes to end it).
    Delete {
        #[command(flatten)]
        s: OfSetting,
        #[arg(short = 'n', long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum NotificationCmd {
    /// Call URL (POST, JSON) on every scale action; `k=v` pairs go along in the payload.
    Add {
        #[command(flatten)]
        s: OfSetting,
        #[arg(long)]
        webhook: String,
        #[arg(long, num_args = 0..)]
        properties: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TargetCmd {
    /// Keep METRIC near TARGET per instance (e.g. CPU 50, or 100 queue messages per instance).
    Create {
        #[command(flatten)]
        s: OfSetting,
        #[arg(long)]
        metric: String,
        #[arg(long)]
        target: f64,
        /// Seconds before a new instance counts (default 120).
        #[arg(long)]
        warmup: Option<u64>,
    },
    /// Remove target tracking.
    Delete {
        #[command(flatten)]
        s: OfSetting,
    },
}

#[derive(Debug, Subcommand)]
pub enum SourceCmd {
    /// Create or replace a named metric source (a queue's length, a query's count, ...).
    Create {
        #[arg(short = 'g', long = "resource-group")]
        group: String,
        #[arg(short = 'n', long)]
        name: String,
        /// redis, nats-jetstream, postgresql, http-json, prometheus.
        #[arg(long = "type")]
        kind: String,
        #[arg(long)]
        endpoint: String,
        /// Redis list key (shorthand for --settings '{"key": ...}').
        #[arg(long)]
        key: Option<String>,
        /// Public settings, JSON or @FILE.
        #[arg(long)]
        settings: Option<String>,
        /// Secrets (password, token), JSON or @FILE: sealed, never shown back.
        #[arg(long)]
        protected_settings: Option<String>,
    },
    Show {
        #[arg(short = 'g', long = "resource-group")]
        group: String,
        #[arg(short = 'n', long)]
        name: String,
    },
    List {
        #[arg(short = 'g', long = "resource-group")]
        group: String,
    },
    Delete {
        #[arg(short = 'g', long = "resource-group")]
        group: String,
        #[arg(short = 'n', long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum MetricsCmd {
    /// A scale set's sampled metric (or a source's: --metric source/NAME).
    List {
        #[arg(short = 'g', long = "resource-group")]
        group: String,
        #[arg(long)]
        resource: String,
        /// Percentage CPU, Memory Used Bytes, Network In Total, Network Out Total,
        /// LB New Connections Per Second, LB Active Connections, or source/NAME.
        #[arg(long, default_value = "Percentage CPU")]
        metric: String,
    },
    /// The metrics rules can use: those herd samples per scale set, and the group's sources.
    ListDefinitions {
        #[arg(short = 'g', long = "resource-group")]
        group: String,
        /// A scale set of the group (checked to exist; every set has the same metrics).
        #[arg(long)]
        resource: Option<String>,
    },
}

const SETTING_TABLE: Columns<'static> = &[
    ("Name", "name"),
    ("Enabled", "enabled"),
    ("Target", "targetResourceUri"),
    ("Min", "profiles[0].capacity.minimum"),
    ("Max", "profiles[0].capacity.maximum"),
    ("Default", "profiles[0].capacity.default"),
    ("Rules", "length(profiles[0].rules)"),
];
const HISTORY_TABLE: Columns<'static> = &[
    ("Time", "time"),
    ("Profile", "decision.profile"),
    ("From", "decision.currentCapacity"),
    ("To", "decision.newCapacity"),
    ("Reason", "decision.reason"),
];
/// A profile's name and counts (`profile list` adds more columns).
const PROFILE_TABLE: Columns<'static> =
    &[("Name", "name"), ("Min", "capacity.minimum"), ("Max", "capacity.maximum"), ("Default", "capacity.default")];
const SOURCE_TABLE: Columns<'static> =
    &[("Name", "name"), ("Type", "kind"), ("Endpoint", "endpoint"), ("LastValue", "lastValue"), ("Health", "health")];

fn setting_path(group: &str, name: &str) -> String {
    format!("/v1/resourceGroups/{}/autoscaleSettings/{}", enc(group), enc(name))
}

/// [`edit`], then shows the setting as a table.
async fn edit_show(
    client: &Client,
    print: Print<'_>,
    group: &str,
    name: &str,
    f: impl FnOnce(&mut Value) -> Result<()>,
) -> Result<()> {
    let v = edit(client, group, name, f).await?;
    print(&v, Some(SETTING_TABLE))
}

/// Reads a setting, lets `f` edit its JSON, writes it back if unchanged meanwhile.
async fn edit(client: &Client, group: &str, name: &str, f: impl FnOnce(&mut Value) -> Result<()>) -> Result<Value> {
    let path = setting_path(group, name);
    let mut cur = client.get(&path).await?;
    let etag = cur["etag"].as_str().unwrap_or_default().to_string();
    if let Some(m) = cur.as_object_mut() {
        for k in ["id", "resourceGroup", "etag"] {
            m.remove(k);
        }
    }
    f(&mut cur)?;
    client.call(reqwest::Method::PUT, &path, Some(&cur), &[("If-Match", &etag)]).await
}

pub async fn autoscale(client: &Client, print: Print<'_>, c: AutoscaleCmd) -> Result<()> {
    match c {
        AutoscaleCmd::Create { group, resource, resource_type, name, counts, disabled } => {
            if let Some(t) = &resource_type {
                if !t.eq_ignore_ascii_case("Microsoft.Compute/virtualMachineScaleSets") {
                    bail!(
                        "--resource-type: '{t}' is not supported; allowed: Microsoft.Compute/virtualMachineScaleSets"
                    );
                }
            }
            let target = if resource.contains('/') {
                resource.clone()
            } else {
                format!("/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachineScaleSets/{resource}")
            };
            let body = json!({
                "enabled": !disabled,
                "targetResourceUri": target,
                "profiles": [{"name": "default", "capacity": counts.capacity(), "rules": []}],
            });
            let path = setting_path(&group, &name);
            let v = client.call(reqwest::Method::PUT, &path, Some(&body), &[("If-None-Match", "*")]).await?;
            print(&v, Some(SETTING_TABLE))
        }
        AutoscaleCmd::Show(s) => print(&client.get(&setting_path(&s.group, &s.name)).await?, Some(SETTING_TABLE)),
        AutoscaleCmd::List { group } => print(
            &client.get(&format!("/v1/resourceGroups/{}/autoscaleSettings", enc(&group))).await?,
            Some(SETTING_TABLE),
        ),
        AutoscaleCmd::Update { s, min_count, max_count, count, enabled } => {
            edit_show(client, print, &s.group, &s.name, |v| {
                if let Some(e) = enabled {
                    v["enabled"] = json!(e);
                }
                let p = default_profile(v)?;
                for (k, val) in [("minimum", min_count), ("maximum", max_count), ("default", count)] {
                    if let Some(n) = val {
                        p["capacity"][k] = json!(n.to_string());
                    }
                }
                Ok(())
            })
            .await
        }
        AutoscaleCmd::Delete(s) => {
            client.delete(&setting_path(&s.group, &s.name)).await?;
            Ok(())
        }
        AutoscaleCmd::History(s) => {
            print(&client.get(&format!("{}/history", setting_path(&s.group, &s.name))).await?, Some(HISTORY_TABLE))
        }
        AutoscaleCmd::Rule(c) => rule(client, print, c).await,
        AutoscaleCmd::Target(c) => target(client, print, c).await,
        AutoscaleCmd::Profile(c) => profile(client, print, c).await,
        AutoscaleCmd::Notification(c) => notification(client, print, c).await,
        AutoscaleCmd::Simulate { s, trace, plot, start_capacity, provisioning_latency } => {
            let v = client.get(&setting_path(&s.group, &s.name)).await?;
            print(&simulate(v, &trace, plot.as_deref(), start_capacity, provisioning_latency)?, None)
        }
    }
}

/// `herd monitor autoscale rule ...`: rules of a profile, read-modify-write.
async fn rule(client: &Client, print: Print<'_>, c: RuleCmd) -> Result<()> {
    match c {
        RuleCmd::Create { s, condition, scale, cooldown, timegrain, profile_name } => {
            let rule = herd_autoscale::parse_rule(&condition, &scale.join(" "), cooldown, timegrain.as_deref())
                .map_err(|e| anyhow!("{e}"))?;
            let rule = serde_json::to_value(&rule)?;
            edit_show(client, print, &s.group, &s.autoscale_name, |v| {
                edit_rules(v, profile_name.as_deref(), |rules| {
                    rules.push(rule);
                    Ok(())
                })
            })
            .await
        }
        RuleCmd::List { s, profile_name } => {
            let v = client.get(&setting_path(&s.group, &s.autoscale_name)).await?;
            let idx = profile_index(&v, profile_name.as_deref())?;
            let rules = v["profiles"][idx]["rules"].as_array().cloned().unwrap_or_default();
            let out: Vec<Value> = rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let cond =
                        serde_json::from_value::<herd_autoscale::model::MetricTrigger>(r["metricTrigger"].clone())
                            .map(|t| herd_autoscale::condition::format_condition(&t))
                            .unwrap_or_default();
                    json!({"index": i, "condition": cond, "scaleAction": r["scaleAction"]})
                })
                .collect();
            print(
                &Value::Array(out),
                Some(&[
                    ("Index", "index"),
                    ("Condition", "condition"),
                    ("Direction", "scaleAction.direction"),
                    ("Type", "scaleAction.type"),
                    ("Value", "scaleAction.value"),
                    ("Cooldown", "scaleAction.cooldown"),
                ]),
            )
        }
        RuleCmd::Delete { s, index, profile_name } => {
            edit_show(client, print, &s.group, &s.autoscale_name, |v| {
                edit_rules(v, profile_name.as_deref(), |rules| {
                    if index.iter().any(|i| i == "*") {
                        rules.clear();
                        return Ok(());
                    }
                    let mut idx: Vec<usize> = index
                        .iter()
                        .map(|i| {
                            i.parse()
                                .map_err(|_| anyhow!("--index: '{i}' is not a rule index (see 'rule list') or '*'"))
                        })
                        .collect::<Result<_>>()?;
                    idx.sort_unstable_by(|a, b| b.cmp(a));
                    idx.dedup();
                    for i in idx {
                        if i >= rules.len() {
                            bail!("--index: there is no rule {i}; the profile has {} rule(s)", rules.len());
                        }
                        rules.remove(i);
                    }
                    Ok(())
                })
            })
            .await
        }
    }
}

/// `herd monitor autoscale target ...`: the setting's target tracking.
async fn target(client: &Client, print: Print<'_>, c: TargetCmd) -> Result<()> {
    match c {
        TargetCmd::Create { s, metric, target, warmup } => {
            edit_show(client, print, &s.group, &s.autoscale_name, |v| {
                let mut t = json!({"metricName": metric, "target": target});
                if let Some(w) = warmup {
                    t["warmup"] = json!(format!("PT{w}S"));
                }
                v["targetTracking"] = t;
                Ok(())
            })
            .await
        }
        TargetCmd::Delete { s } => {
            edit_show(client, print, &s.group, &s.autoscale_name, |v| {
                if let Some(m) = v.as_object_mut() {
                    m.remove("targetTracking");
                }
                Ok(())
            })
            .await
        }
    }
}

/// `herd monitor autoscale profile ...`: recurrent and fixed-date profiles.
async fn profile(client: &Client, print: Print<'_>, c: ProfileCmd) -> Result<()> {
    match c {
        ProfileCmd::Create { s, name, recurrence, start, end, timezone, counts, copy_rules } => {
            let v = edit(client, &s.group, &s.autoscale_name, |v| {
                let default: herd_autoscale::Profile = serde_json::from_value(default_profile(v)?.clone())?;
                let rules = match copy_rules.as_str() {
                    "default" => default.rules.clone(),
                    "none" => vec![],
                    other => bail!("--copy-rules: '{other}' is not allowed; allowed: default, none"),
                };
                let capacity = serde_json::from_value(counts.capacity())?;
                let mut profiles = vec![];
                if recurrence.is_empty() {
                    let end = end.clone().ok_or_else(|| anyhow!("--end is required for a fixed-date profile"))?;
                    let p = json!({"name": name, "capacity": capacity, "rules": rules,
                        "fixedDate": {"timeZone": timezone, "start": start, "end": end}});
                    profiles.push(p);
                } else {
                    let when = Weekly { days: &recurrence, start: &start, end: end.as_deref(), timezone: &timezone };
                    profiles.extend(weekly_profiles(&default, &name, capacity, rules, &when)?);
                }
                v["profiles"].as_array_mut().ok_or_else(|| anyhow!("the setting has no profiles"))?.extend(profiles);
                Ok(())
            })
            .await?;
            print(&v["profiles"], Some(PROFILE_TABLE))
        }
        ProfileCmd::List { s } => {
            let v = client.get(&setting_path(&s.group, &s.autoscale_name)).await?;
            print(
                &v["profiles"],
                Some(&[
                    ("Name", "name"),
                    ("Min", "capacity.minimum"),
                    ("Max", "capacity.maximum"),
                    ("Default", "capacity.default"),
                    ("Rules", "length(rules)"),
                    ("TimeZone", "recurrence.schedule.timeZone || fixedDate.timeZone"),
                ]),
            )
        }
        ProfileCmd::Delete { s, name } => {
            edit_show(client, print, &s.group, &s.autoscale_name, |v| remove_profile(v, &name)).await
        }
    }
}

/// `herd monitor autoscale notification ...`: webhooks called on a scale action.
async fn notification(client: &Client, print: Print<'_>, c: NotificationCmd) -> Result<()> {
    match c {
        NotificationCmd::Add { s, webhook, properties } => {
            let mut props = serde_json::Map::new();
            for kv in &properties {
                let (k, val) = kv.split_once('=').ok_or_else(|| anyhow!("--properties: '{kv}' is not KEY=VALUE"))?;
                props.insert(k.into(), json!(val));
            }
            let v = edit(client, &s.group, &s.autoscale_name, |v| {
                let hook = json!({"serviceUri": webhook, "properties": props});
                match v["notifications"].as_array_mut() {
                    Some(n) if !n.is_empty() => {
                        n[0]["webhooks"].as_array_mut().ok_or_else(|| anyhow!("bad notifications"))?.push(hook)
                    }
                    _ => v["notifications"] = json!([{"operation": "Scale", "webhooks": [hook]}]),
                }
                Ok(())
            })
            .await?;
            print(&v["notifications"], None)
        }
    }
}

pub async fn source(client: &Client, print: Print<'_>, c: SourceCmd) -> Result<()> {
    let path = |g: &str, n: &str| format!("/v1/resourceGroups/{}/metricSources/{}", enc(g), enc(n));
    match c {
        SourceCmd::Create { group, name, kind, endpoint, key, settings, protected_settings } => {
            let mut s = match &settings {
                Some(x) => crate::commands::json_arg("--settings", x)?,
                None => json!({}),
            };
            if let Some(k) = key {
                s["key"] = json!(k);
            }
            let p = match &protected_settings {
                Some(x) => crate::commands::json_arg("--protected-settings", x)?,
                None => json!({}),
            };
            let body = json!({"type": kind, "endpoint": endpoint, "settings": s, "protectedSettings": p});
            print(&client.put(&path(&group, &name), &body).await?, Some(SOURCE_TABLE))
        }
        SourceCmd::Show { group, name } => print(&client.get(&path(&group, &name)).await?, Some(SOURCE_TABLE)),
        SourceCmd::List { group } => {
            print(&client.get(&format!("/v1/resourceGroups/{}/metricSources", enc(&group))).await?, Some(SOURCE_TABLE))
        }
        SourceCmd::Delete { group, name } => {
            client.delete(&path(&group, &name)).await?;
            Ok(())
        }
    }
}

pub async fn metrics(client: &Client, print: Print<'_>, c: MetricsCmd) -> Result<()> {
    let (group, resource, metric) = match c {
        MetricsCmd::List { group, resource, metric } => (group, resource, metric),
        MetricsCmd::ListDefinitions { group, resource } => {
            if let Some(r) = &resource {
                client.get(&format!("/v1/resourceGroups/{}/virtualMachineScaleSets/{}", enc(&group), enc(r))).await?;
            }
            let mut out: Vec<Value> = herd_autoscaler::sampler::METRICS
                .iter()
                .map(|d| {
                    json!({"name": d.name, "unit": d.unit, "perInstance": d.per_instance,
                        "aggregation": match d.kind {
                            herd_autoscaler::sampler::MetricKind::PerGrainTotal => "total per time grain",
                            herd_autoscaler::sampler::MetricKind::SetTotal => "set total",
                            herd_autoscaler::sampler::MetricKind::Gauge => "sample",
                        },
                        "description": d.description})
                })
                .collect();
            let sources = client.get(&format!("/v1/resourceGroups/{}/metricSources", enc(&group))).await?;
            for src in sources.as_array().into_iter().flatten() {
                let name = src["name"].as_str().unwrap_or_default();
                out.push(json!({"name": format!("source/{name}"), "unit": "Count", "perInstance": false,
                    "aggregation": "sample",
                    "description": format!("metric source '{name}' ({})", src["kind"].as_str().unwrap_or_default())}));
            }
            return print(
                &Value::Array(out),
                Some(&[
                    ("Name", "name"),
                    ("Unit", "unit"),
                    ("PerInstance", "perInstance"),
                    ("Description", "description"),
                ]),
            );
        }
    };
    let path = format!(
        "/v1/resourceGroups/{}/virtualMachineScaleSets/{}/metrics?metric={}",
        enc(&group),
        enc(&resource),
        metric.replace(' ', "%20").replace('/', "%2F")
    );
    print(&client.get(&path).await?, Some(&[("Time", "time"), ("Value", "value"), ("Instances", "count")]))
}
