//! Pure edits of an autoscale setting's JSON for `herd monitor autoscale`: which profile a
//! flag names, the rules of a profile (and of the profiles ending a recurrence), weekly
//! profiles and their end, and the what-if simulation of a setting over a trace. Apart from
//! the commands (`autoscale_cmds`), which read and write the setting through the API.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// The default profile (the one without recurrence or fixed date) of a setting's JSON.
pub(crate) fn default_profile(v: &mut Value) -> Result<&mut Value> {
    let profiles = v["profiles"].as_array_mut().ok_or_else(|| anyhow!("the setting has no profiles"))?;
    profiles
        .iter_mut()
        .find(|p| p.get("recurrence").is_none_or(Value::is_null) && p.get("fixedDate").is_none_or(Value::is_null))
        .ok_or_else(|| anyhow!("the setting has no default profile"))
}

/// Whether a profile is one `profile create --end` wrote to end a recurrence (named
/// `{"name": "<default>", "for": "<profile>"}`, as az names it): a continuation of the default
/// profile, not one users address by name.
pub(crate) fn is_end_profile(p: &Value) -> bool {
    p["name"].as_str().and_then(|n| serde_json::from_str::<Value>(n).ok()).is_some_and(|j| j.get("for").is_some())
}

/// The profile `--profile-name` names (the default profile without it), by index.
pub(crate) fn profile_index(v: &Value, name: Option<&str>) -> Result<usize> {
    let profiles = v["profiles"].as_array().ok_or_else(|| anyhow!("the setting has no profiles"))?;
    let found = match name {
        None => profiles.iter().position(|p| {
            p.get("recurrence").is_none_or(Value::is_null) && p.get("fixedDate").is_none_or(Value::is_null)
        }),
        Some(n) => profiles.iter().position(|p| p["name"].as_str().is_some_and(|x| x.eq_ignore_ascii_case(n))),
    };
    found.ok_or_else(|| {
        let names: Vec<&str> =
            profiles.iter().filter(|p| !is_end_profile(p)).filter_map(|p| p["name"].as_str()).collect();
        match name {
            Some(n) => anyhow!("--profile-name: there is no profile '{n}'; the profiles are: {}", names.join(", ")),
            None => anyhow!(
                "the setting has no default profile (one without a schedule); name one with --profile-name: {}",
                names.join(", ")
            ),
        }
    })
}

/// Edits the rules of the profile `--profile-name` names. Editing the default profile also
/// edits the profiles that end a recurrence (`profile create --end`) while their rules are
/// still the default's copy: they stand for the default profile after the recurrence ends, so
/// a rule added to the default applies there too (az leaves them behind).
pub(crate) fn edit_rules(
    v: &mut Value,
    name: Option<&str>,
    f: impl FnOnce(&mut Vec<Value>) -> Result<()>,
) -> Result<()> {
    let idx = profile_index(v, name)?;
    let profiles = v["profiles"].as_array_mut().ok_or_else(|| anyhow!("the setting has no profiles"))?;
    let is_default = profiles[idx].get("recurrence").is_none_or(Value::is_null)
        && profiles[idx].get("fixedDate").is_none_or(Value::is_null);
    let before = profiles[idx]["rules"].clone();
    if !profiles[idx]["rules"].is_array() {
        profiles[idx]["rules"] = json!([]);
    }
    let rules = profiles[idx]["rules"].as_array_mut().ok_or_else(|| anyhow!("profile without rules"))?;
    f(rules)?;
    let after = profiles[idx]["rules"].clone();
    if is_default {
        let default_name = profiles[idx]["name"].as_str().unwrap_or_default().to_string();
        for p in profiles.iter_mut().filter(|p| is_end_profile(p)) {
            let of_default = p["name"]
                .as_str()
                .and_then(|n| serde_json::from_str::<Value>(n).ok())
                .is_some_and(|j| j["name"] == default_name.as_str());
            if of_default && p["rules"] == before {
                p["rules"] = after.clone();
            }
        }
    }
    Ok(())
}

/// `autoscale simulate`: the setting `v` (as the API returns it) replayed over the CSV trace
/// in `trace`, its plot written to `plot`; returns the result.
pub(crate) fn simulate(
    mut v: Value,
    trace: &std::path::Path,
    plot: Option<&std::path::Path>,
    start_capacity: Option<u64>,
    provisioning_latency: u64,
) -> Result<Value> {
    if let Some(m) = v.as_object_mut() {
        for k in ["id", "resourceGroup", "etag"] {
            m.remove(k);
        }
    }
    let setting: herd_autoscale::AutoscaleSetting = serde_json::from_value(v)?;
    let text = std::fs::read_to_string(trace).with_context(|| format!("--trace {}", trace.display()))?;
    let points = herd_autoscale::parse_trace_csv(&text).map_err(|e| anyhow!("--trace: {e}"))?;
    let start = start_capacity.unwrap_or_else(|| setting.profiles.first().map_or(1, |p| p.capacity.bounds().2));
    let opts = herd_autoscale::SimOptions {
        provisioning_latency: chrono::Duration::seconds(provisioning_latency as i64),
        ..Default::default()
    };
    let result = herd_autoscale::simulate(&setting, &points, start, &opts);
    if let Some(p) = plot {
        std::fs::write(p, herd_autoscale::svg_plot(&result, &result.metric_name))
            .with_context(|| format!("--plot {}", p.display()))?;
    }
    Ok(serde_json::to_value(&result)?)
}

/// A weekly profile's schedule as `profile create` takes it.
pub(crate) struct Weekly<'a> {
    /// `week` then the days.
    pub(crate) days: &'a [String],
    pub(crate) start: &'a str,
    pub(crate) end: Option<&'a str>,
    pub(crate) timezone: &'a str,
}

/// `HH:MM` of `flag`.
pub(crate) fn hh_mm(flag: &str, t: &str) -> Result<(u32, u32)> {
    let (h, m) = t.split_once(':').ok_or_else(|| anyhow!("{flag}: '{t}' is not HH:MM"))?;
    match (h.parse::<u32>(), m.parse::<u32>()) {
        (Ok(h), Ok(m)) if h < 24 && m < 60 => Ok((h, m)),
        _ => bail!("{flag}: '{t}' is not HH:MM (00:00 to 23:59)"),
    }
}

/// A recurrent profile starting at `when.start` on `when.days`, and, with an end time, the
/// profile that returns to `default` then.
pub(crate) fn weekly_profiles(
    default: &herd_autoscale::Profile,
    name: &str,
    capacity: herd_autoscale::model::Capacity,
    rules: Vec<herd_autoscale::model::Rule>,
    when: &Weekly<'_>,
) -> Result<Vec<Value>> {
    let recurrence = when.days;
    if !recurrence[0].eq_ignore_ascii_case("week") || recurrence.len() < 2 {
        bail!("--recurrence: give 'week' and the days, e.g. --recurrence week mon tue wed thu fri");
    }
    let (h, m) = hh_mm("--start", when.start)?;
    let schedule: herd_autoscale::model::RecurrentSchedule = serde_json::from_value(
        json!({"timeZone": when.timezone, "days": recurrence[1..].to_vec(), "hours": [h], "minutes": [m]}),
    )?;
    let p = herd_autoscale::Profile {
        name: name.to_string(),
        capacity,
        rules,
        recurrence: Some(serde_json::from_value(json!({"frequency": "Week", "schedule": schedule}))?),
        fixed_date: None,
    };
    let mut profiles = vec![serde_json::to_value(&p)?];
    if let Some(e) = when.end {
        let (eh, em) = hh_mm("--end", e)?;
        let ender = herd_autoscale::schedule::end_profile(default, name, &schedule, eh, em);
        profiles.push(serde_json::to_value(&ender)?);
    }
    Ok(profiles)
}

/// Removes the profile `name` and the profile that ends it.
pub(crate) fn remove_profile(v: &mut Value, name: &str) -> Result<()> {
    let profiles = v["profiles"].as_array_mut().ok_or_else(|| anyhow!("the setting has no profiles"))?;
    let before = profiles.len();
    let ender = |p: &Value| {
        p["name"].as_str().and_then(|n| serde_json::from_str::<Value>(n).ok()).is_some_and(|j| j["for"] == name)
    };
    profiles.retain(|p| p["name"] != name && !ender(p));
    if profiles.len() == before {
        bail!("there is no profile '{name}'");
    }
    Ok(())
}
