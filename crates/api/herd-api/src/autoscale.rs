//! Autoscale settings (`.../autoscaleSettings/{name}`, Azure's shape), their history, named
//! metric sources (`.../metricSources/{name}`, secrets sealed apart), a set's metric series, and
//! the capacity writer the autoscaler uses: the same validated, logged path as `scale`.

use crate::{
    error::{ApiError, ErrorBody},
    named::Named,
    scale_sets::commit_replacing,
    services::{SourceDraft, SourceRefusal},
    state::AppState,
    views,
};
use axum::{
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    Json,
};
use herd_model::{activity::Actor, scale_set::Secrets};
use herd_state::autoscale_config::AutoscaleSetting;
use herd_state::autoscale_config::{self, Config, Logged};
use herd_state::autoscale_records::{self, HistoryEntry, SettingRuntime, StoredSource, METRIC_NAMES};
use herd_state::keys::{SeriesKey, SetKey, SourceSeriesKey};
use herd_state::metric_series::{Point, Series};
use herd_state::{AutoscaleRecords, Expected, Versioned as Object};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An autoscale setting as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscaleView {
    pub id: String,
    pub resource_group: String,
    pub etag: String,
    #[serde(flatten)]
    pub setting: AutoscaleSetting,
}

fn view(group: &str, o: &Object<AutoscaleSetting>) -> AutoscaleView {
    AutoscaleView {
        id: format!("/resourceGroups/{group}/providers/microsoft.insights/autoscalesettings/{}", o.value.name),
        resource_group: group.into(),
        etag: views::etag(o.revision),
        setting: o.value.clone(),
    }
}

/// Lists a group's autoscale settings.
#[utoipa::path(get, path = "/v1/resourceGroups/{group}/autoscaleSettings", tag = "autoscale",
    params(("group" = String, Path)), responses((status = 200, body = Vec<AutoscaleView>)))]
pub async fn list(n: Named<String>) -> Result<Json<Vec<AutoscaleView>>, ApiError> {
    n.in_group(|st, _, group| {
        let all = autoscale_config::of_group::<AutoscaleSetting>(&*st.store, Config::Setting, &group)?;
        Ok(Json(all.iter().map(|o| view(&group, o)).collect()))
    })
    .await
}

/// Shows one autoscale setting.
#[utoipa::path(get, path = "/v1/resourceGroups/{group}/autoscaleSettings/{name}", tag = "autoscale",
    params(("group" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = AutoscaleView), (status = 404, body = ErrorBody)))]
pub async fn show(n: Named<(String, String)>) -> Result<Json<AutoscaleView>, ApiError> {
    n.blocking(|st, (group, name)| Ok(Json(view(&group, &load(st, &group, &name)?)))).await
}

fn load(state: &AppState, group: &str, name: &str) -> Result<Object<AutoscaleSetting>, ApiError> {
    autoscale_config::named::<AutoscaleSetting>(&*state.store, Config::Setting, group, name)?.ok_or_else(|| {
        ApiError::NotFound(format!("autoscale setting '{name}' does not exist in resource group '{group}'"))
    })
}

/// Creates or replaces an autoscale setting (validated; its target must be a scale set of the group).
#[utoipa::path(put, path = "/v1/resourceGroups/{group}/autoscaleSettings/{name}", tag = "autoscale",
    params(("group" = String, Path), ("name" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = AutoscaleSetting,
    responses((status = 200, body = AutoscaleView), (status = 201, body = AutoscaleView), (status = 400, body = ErrorBody),
        (status = 412, body = ErrorBody, description = "If-Match names another etag")))]
pub async fn put(
    State(state): State<AppState>,
    Path((group, name)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<(StatusCode, Json<AutoscaleView>), ApiError> {
    state.blocking(move |state| {
        views::load_group(state, &group)?;
        views::check_child_name("name", &name)?;
        let mut body = body;
        if let Some(m) = body.as_object_mut() {
            m.insert("name".into(), Value::String(name.clone()));
        }
        let setting: AutoscaleSetting = serde_path_to_error::deserialize(body)
            .map_err(|e| ApiError::invalid(e.path().to_string(), e.inner().to_string()))?;
        setting.validate()?;
        let (g, n) = autoscale_records::parse_target(&setting.target_resource_uri).ok_or_else(|| {
            ApiError::invalid(
                "targetResourceUri",
                "must name a scale set: /resourceGroups/<group>/providers/Microsoft.Compute/virtualMachineScaleSets/<name>",
            )
        })?;
        if !g.eq_ignore_ascii_case(&group) {
            return Err(ApiError::invalid(
                "targetResourceUri",
                format!("the scale set must be in resource group '{group}'"),
            ));
        }
        let set = views::load_set(state, &g, &n).map_err(|_| {
            ApiError::invalid("targetResourceUri", format!("scale set '{n}' does not exist in resource group '{g}'"))
        })?;
        // Every metric must be one herd samples, or a named source of this group.
        let sources: Vec<String> = autoscale_config::of_group::<StoredSource>(&*state.store, Config::Source, &group)?
            .into_iter()
            .map(|o| o.value.name.to_ascii_lowercase())
            .collect();
        let known = |m: &str| match m.strip_prefix("source/") {
            Some(src) => sources.contains(&src.to_ascii_lowercase()),
            None => autoscale_records::is_sampled_metric(m),
        };
        let allowed = || {
            let mut a: Vec<String> = METRIC_NAMES.iter().map(|s| s.to_string()).collect();
            a.extend(sources.iter().map(|s| format!("source/{s}")));
            a.join(", ")
        };
        for (i, p) in setting.profiles.iter().enumerate() {
            for (j, r) in p.rules.iter().enumerate() {
                if !known(&r.metric_trigger.metric_name) {
                    return Err(ApiError::invalid(
                        format!("profiles[{i}].rules[{j}].metricTrigger.metricName"),
                        format!("'{}' is not a metric herd has; allowed: {}", r.metric_trigger.metric_name, allowed()),
                    ));
                }
            }
        }
        if let Some(t) = &setting.target_tracking {
            if !known(&t.metric_name) {
                return Err(ApiError::invalid(
                    "targetTracking.metricName",
                    format!("'{}' is not a metric herd has; allowed: {}", t.metric_name, allowed()),
                ));
            }
        }
        for (i, p) in setting.profiles.iter().enumerate() {
            let (_, max, _) = p.capacity.bounds();
            if max > state.config.max_capacity {
                return Err(ApiError::invalid(
                    format!("profiles[{i}].capacity.maximum"),
                    format!("{max} is above this server's capacity ceiling {}", state.config.max_capacity),
                ));
            }
        }
        views::retry(&headers, || {
            let existing = autoscale_config::named::<AutoscaleSetting>(&*state.store, Config::Setting, &group, &name)?;
            let expect = match &existing {
                Some(o) => {
                    views::check_if_match(&headers, o.revision)?;
                    Expected::Revision(o.revision)
                }
                None => Expected::Absent,
            };
            let verb = if existing.is_some() { "updated" } else { "created" };
            let log = Logged {
                resource: set.value.name.as_str(),
                message: format!("autoscale setting '{name}' {verb} ({} profile(s))", setting.profiles.len()),
                now: state.clock.now(),
            };
            let rev = autoscale_config::put_setting(&*state.store, (&group, &name), &setting, expect, log)?;
            let code = if existing.is_some() { StatusCode::OK } else { StatusCode::CREATED };
            Ok((
                code,
                Json(view(
                    &group,
                    &Object {
                        key: herd_state::keys::AutoscaleKey::new(&group, &name).to_string(),
                        revision: rev,
                        create_revision: existing.as_ref().map_or(rev, |o| o.create_revision),
                        value: setting.clone(),
                    },
                )),
            ))
        })
    })
    .await
}

/// Deletes an autoscale setting and its history.
#[utoipa::path(delete, path = "/v1/resourceGroups/{group}/autoscaleSettings/{name}", tag = "autoscale",
    params(("group" = String, Path), ("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(n: Named<(String, String)>) -> Result<StatusCode, ApiError> {
    // The runtime writes the setting's state too: a concurrent write is re-applied.
    n.blocking(|st, (group, name)| {
        views::retry(&HeaderMap::new(), || {
            let o = load(st, &group, &name)?;
            autoscale_config::delete_setting(&*st.store, &group, &name, &o, st.clock.now())?;
            Ok(StatusCode::NO_CONTENT)
        })
    })
    .await
}

/// Every recent evaluation: metric values, the decision and its reason.
#[utoipa::path(get, path = "/v1/resourceGroups/{group}/autoscaleSettings/{name}/history", tag = "autoscale",
    params(("group" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = Vec<HistoryEntry>), (status = 404, body = ErrorBody)))]
pub async fn history(n: Named<(String, String)>) -> Result<Json<Vec<HistoryEntry>>, ApiError> {
    n.blocking(|st, (group, name)| {
        load(st, &group, &name)?;
        let key = herd_state::keys::AutoscaleKey::new(&group, &name);
        let rt = st.store.autoscale_runtime::<SettingRuntime>(&key)?.map(|x| x.value).unwrap_or_default();
        Ok(Json(rt.history))
    })
    .await
}

/// A metric source as written (protected settings are write-only).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceRequest {
    /// `redis`, `nats-jetstream`, `postgresql`, `http-json`, `prometheus`.
    #[serde(rename = "type")]
    pub kind: String,
    pub endpoint: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub settings: Value,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub protected_settings: Value,
}

/// Lists a group's metric sources.
#[utoipa::path(get, path = "/v1/resourceGroups/{group}/metricSources", tag = "autoscale",
    params(("group" = String, Path)), responses((status = 200, body = Vec<StoredSource>)))]
pub async fn source_list(n: Named<String>) -> Result<Json<Vec<StoredSource>>, ApiError> {
    // A missing group is a 404, as for every other list.
    n.in_group(|st, _, group| {
        let all = autoscale_config::of_group::<StoredSource>(&*st.store, Config::Source, &group)?;
        Ok(Json(all.into_iter().map(|o| o.value).collect()))
    })
    .await
}

/// Shows a metric source with its health (the last sample's outcome).
#[utoipa::path(get, path = "/v1/resourceGroups/{group}/metricSources/{name}", tag = "autoscale",
    params(("group" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = StoredSource), (status = 404, body = ErrorBody)))]
pub async fn source_show(
    State(state): State<AppState>,
    Path((group, name)): Path<(String, String)>,
) -> Result<Json<StoredSource>, ApiError> {
    state
        .run(move |s| {
            autoscale_config::named::<StoredSource>(s, Config::Source, &group, &name)?
                .map(|o| Json(o.value))
                .ok_or_else(|| {
                    ApiError::NotFound(format!("metric source '{name}' does not exist in resource group '{group}'"))
                })
        })
        .await
}

/// Creates or replaces a metric source (validated; secrets sealed apart, never returned).
#[utoipa::path(put, path = "/v1/resourceGroups/{group}/metricSources/{name}", tag = "autoscale",
    params(("group" = String, Path), ("name" = String, Path)),
    request_body = SourceRequest,
    responses((status = 200, body = StoredSource), (status = 400, body = ErrorBody)))]
pub async fn source_put(
    State(state): State<AppState>,
    Path((group, name)): Path<(String, String)>,
    Json(req): Json<SourceRequest>,
) -> Result<Json<StoredSource>, ApiError> {
    state
        .clone()
        .blocking(move |state| {
            views::load_group(state, &group)?;
            views::check_child_name("name", &name)?;
            let settings = if req.settings.is_null() { serde_json::json!({}) } else { req.settings };
            let protected =
                if req.protected_settings.is_null() { serde_json::json!({}) } else { req.protected_settings };
            let draft =
                SourceDraft { kind: &req.kind, endpoint: &req.endpoint, settings: &settings, protected: &protected };
            let kind = state.sources.check(draft).map_err(|e| match e {
                // The body names the field `type` (the Rust field is `kind`): the error names the body's.
                SourceRefusal::Kind(mut e) => {
                    e.field = "type".into();
                    ApiError::Invalid(e)
                }
                SourceRefusal::Spec(e) => ApiError::Invalid(e),
            })?;
            let src = StoredSource {
                name: name.clone(),
                group: group.clone(),
                kind: kind.clone(),
                endpoint: req.endpoint,
                settings,
                health: "not sampled yet".into(),
                last_value: None,
                last_sample_at: None,
            };
            let log = Logged {
                resource: &name,
                message: format!("metric source '{name}' ({kind}) written"),
                now: state.clock.now(),
            };
            autoscale_config::put_source(&*state.store, &state.sealer, (&group, &name), &src, &protected, log)?;
            Ok(Json(src))
        })
        .await
}

/// Deletes a metric source and its secrets.
#[utoipa::path(delete, path = "/v1/resourceGroups/{group}/metricSources/{name}", tag = "autoscale",
    params(("group" = String, Path), ("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn source_delete(
    State(state): State<AppState>,
    Path((group, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    // The sampler writes the source's health: a concurrent write is re-applied.
    let now = state.clock.now();
    state
        .run(move |s| {
            views::retry(&HeaderMap::new(), || {
                if !autoscale_config::delete_source(s, &group, &name, now)? {
                    return Err(ApiError::NotFound(format!(
                        "metric source '{name}' does not exist in resource group '{group}'"
                    )));
                }
                Ok(StatusCode::NO_CONTENT)
            })
        })
        .await
}

/// Query of [`metrics`].
#[derive(Debug, Deserialize)]
pub struct MetricsQuery {
    pub metric: String,
}

/// A set's sampled metric series, or a source's (`source/NAME`).
///
/// The metrics are `Percentage CPU`, `Memory Used Bytes`, `Network In Total`,
/// `Network Out Total`, `LB New Connections Per Second` and `LB Active Connections`. A network
/// point is each sample's increase per instance, with the seconds it covers.
#[utoipa::path(get, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/metrics", tag = "autoscale",
    params(("group" = String, Path), ("name" = String, Path), ("metric" = String, Query)),
    responses((status = 200, body = Vec<Point>), (status = 404, body = ErrorBody)))]
pub async fn metrics(n: Named<(String, String)>, Query(q): Query<MetricsQuery>) -> Result<Json<Vec<Point>>, ApiError> {
    n.with_set(move |state, set, _| {
        let k = match q.metric.strip_prefix("source/") {
            Some(src) => SeriesOf::Source(SourceSeriesKey::new(set.value.group.as_str(), src)),
            None => {
                if !autoscale_records::is_sampled_metric(&q.metric) {
                    return Err(ApiError::invalid(
                        "metric",
                        format!(
                            "'{}' is not a metric herd samples; allowed: {}, or source/<name>",
                            q.metric,
                            METRIC_NAMES.join(", ")
                        ),
                    ));
                }
                SeriesOf::Set(SeriesKey::new(SetKey::of(&set.value), &q.metric))
            }
        };
        let series = match k {
            SeriesOf::Source(k) => state.store.series::<Series, _>(&k)?,
            SeriesOf::Set(k) => state.store.series::<Series, _>(&k)?,
        }
        .map(|o| o.value)
        .unwrap_or_default();
        Ok(Json(series.points.into_iter().collect()))
    })
    .await
}

/// Which series a metrics request reads: a set's own metric, or a named source's.
enum SeriesOf {
    Set(SeriesKey),
    Source(SourceSeriesKey),
}

/// The autoscaler's capacity writes go through the same commit as `herd vmss scale`.
/// (The server wires it into the autoscaler's `CapacityWriter`.)
pub struct ApiCapacityWriter(pub AppState);

impl ApiCapacityWriter {
    /// Sets the set's capacity as `herd vmss scale` would, logged as the autoscaler's, for `reason`.
    pub fn set_capacity(&self, group: &str, set: &str, capacity: u64, reason: &str) -> Result<(), String> {
        let state = &self.0;
        let cur = views::load_set(state, group, set).map_err(|e| e.to_string())?;
        if cur.value.deleting {
            return Err(format!("scale set '{set}' is being deleted"));
        }
        let mut model = cur.value.model.clone();
        let growing = model.sku.capacity < capacity as i64;
        model.sku.capacity = capacity as i64;
        model.validate(&state.validation()).map_err(|e| e.to_string())?;
        // A scale-out needs room in the public IP pool as `herd vmss scale` does; shrinking
        // never does.
        if growing {
            let (bridged, pool) = (state.config.bridged, state.config.public_ip_pool);
            herd_state::model_refs::check_public_ip(&*state.store, &cur.value.name, &model, bridged, pool)
                .map_err(|e| e.to_string())?;
        }
        commit_replacing(state, &cur, model, Secrets::default(), &[], "Autoscale", reason.to_string(), Actor::Autoscale)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
