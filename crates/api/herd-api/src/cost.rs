//! Cost: instance-hours and money by set, SKU and priority, as the meter (`herd-billing`)
//! recorded them.
//!
//! Why these read the stored meters and not the live instances: a deleted set's cost, and the
//! time the server was down, are part of what was spent. A set that is gone but was metered
//! still answers; only a name that never had a set nor a meter is a 404.

use crate::{
    error::{ApiError, ErrorBody},
    state::AppState,
    views,
};
use axum::{
    extract::{Path, Query, State},
    Json,
};
use chrono::{DateTime, Utc};
use herd_state::cost_records;
use herd_state::costs::CostReport;
use herd_state::keys::{GroupKey, SetKey};
use serde::Deserialize;

/// Query of [`set_cost`].
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct SetCostQuery {
    /// The period: a duration back from now (`90m`, `24h`, `7d`) or an RFC 3339 time; it is
    /// rounded down to the hour. Absent: everything since the meter began.
    pub since: Option<String>,
}

/// Query of [`total_cost`].
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct CostQuery {
    /// Only this resource group's scale sets.
    pub group: Option<String>,
    /// As in the scale set's cost: `90m`, `24h`, `7d` or an RFC 3339 time.
    pub since: Option<String>,
}

fn since(state: &AppState, s: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    s.map(|s| {
        herd_state::costs::parse_since(s, state.clock.now()).map_err(|e| ApiError::invalid("since", e.to_string()))
    })
    .transpose()
}

/// A scale set's instance-hours and cost by SKU and priority (a deleted set's too).
#[utoipa::path(get, path = "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/cost", tag = "cost",
    params(("group" = String, Path), ("name" = String, Path), SetCostQuery),
    responses((status = 200, body = CostReport), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_cost(
    State(state): State<AppState>,
    Path((group, name)): Path<(String, String)>,
    Query(q): Query<SetCostQuery>,
) -> Result<Json<CostReport>, ApiError> {
    let g = views::group_name(&group)?;
    let n = views::set_name(&name)?;
    let since = since(&state, q.since.as_deref())?;
    state
        .run(move |s| {
            if !cost_records::set_has_cost_records(s, &SetKey::new(g.clone(), n.clone()))? {
                return Err(ApiError::NotFound(format!(
                    "scale set '{name}' does not exist in resource group '{group}' and has no cost recorded"
                )));
            }
            Ok(Json(herd_state::costs::report(s, Some(g.as_str()), Some(n.as_str()), since)?))
        })
        .await
}

/// Instance-hours and cost of every scale set (or one group's), by set, SKU and priority,
/// with totals.
#[utoipa::path(get, path = "/v1/cost", tag = "cost",
    params(CostQuery),
    responses((status = 200, body = CostReport), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn total_cost(
    State(state): State<AppState>,
    Query(q): Query<CostQuery>,
) -> Result<Json<CostReport>, ApiError> {
    let g = q.group.as_deref().map(views::group_name).transpose()?;
    let since = since(&state, q.since.as_deref())?;
    state
        .run(move |s| {
            let report = herd_state::costs::report(s, g.as_ref().map(|g| g.as_str()), None, since)?;
            if let Some(g) = &g {
                if report.rows.is_empty() && !cost_records::group_has_cost_records(s, &GroupKey::new(g.as_str()))? {
                    return Err(ApiError::NotFound(format!(
                        "resource group '{g}' does not exist and has no cost recorded"
                    )));
                }
            }
            Ok(Json(report))
        })
        .await
}
