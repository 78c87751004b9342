//! The HTTP/JSON API of `herd server`.
//!
//! Why it is shaped this way: handlers never call drivers. A handler validates the request,
//! writes the desired state as a compare-and-swap on its revision (in one transaction with the
//! activity-log entry), wakes the reconciler and returns. Everything slow happens in the
//! reconciler, so the API stays fast and a crash never leaves a half-applied request.
//! Resource paths and JSON follow Azure's (`/resourceGroups/{g}/...virtualMachineScaleSets/{n}`,
//! camelCase bodies), and the OpenAPI document is generated from this code.

#![forbid(unsafe_code)]

pub mod auth;
pub mod auth_limit;
pub mod autoscale;
pub mod cost;
pub mod error;
mod extensions;
mod groups;
pub mod guard;
pub mod hosts;
pub mod image_tree;
pub mod images;
mod instances;
pub mod named;
mod network;
pub mod openapi;
mod rolling;
mod scale_sets;
pub mod server_tls;
pub mod services;
pub mod state;
pub mod store_status;
pub mod views;

pub use error::ApiError;
pub use state::{ApiConfig, AppState, ControllerBoard};

use axum::{
    middleware,
    routing::{get, post, put},
    Router,
};

/// Every route, with token authentication on all but `/healthz` and `/openapi.json`
/// (`/metrics` also takes the metrics token).
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/server", get(groups::server_info))
        .route("/v1/server/status", get(store_status::status))
        .route("/v1/server/controllers", get(store_status::controllers))
        .route("/v1/store/check", get(store_status::store_check))
        .route("/v1/server/tls", get(server_tls::show))
        .route("/v1/server/tls/rotateCertificate", post(server_tls::rotate_certificate))
        .route("/v1/server/tls/rotateCa", post(server_tls::rotate_ca))
        .route("/v1/resourceGroups", get(groups::list))
        .route("/v1/resourceGroups/{group}", put(groups::create).get(groups::show).delete(groups::delete))
        .route("/v1/resourceGroups/{group}/activityLog", get(groups::activity_log))
        .route("/v1/resourceGroups/{group}/virtualMachineScaleSets", get(scale_sets::list))
        .route(
            "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}",
            put(scale_sets::create_or_replace).get(scale_sets::show).delete(scale_sets::delete),
        )
        .route("/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/update", post(scale_sets::update))
        .route("/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/scale", post(scale_sets::scale))
        .route("/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/extensions", get(extensions::list))
        .route(
            "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/extensions/{ext}",
            put(extensions::put).get(extensions::show).delete(extensions::delete),
        )
        .route("/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/rollingUpgrades/latest", get(rolling::latest))
        .route(
            "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/setOrchestrationServiceState",
            post(rolling::orchestration_state),
        )
        .route(
            "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/rollingUpgrades/{action}",
            post(rolling::action),
        )
        .route(
            "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/virtualMachines/{id}/protectionPolicy",
            put(rolling::protect),
        )
        .route("/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/virtualMachines", get(instances::list))
        .route("/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/virtualMachines/{id}", get(instances::show))
        .route(
            "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/virtualMachines/{id}/instanceView",
            get(instances::instance_view),
        )
        .route(
            "/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/virtualMachines/{id}/bootLog",
            get(instances::boot_log),
        )
        .route("/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/{action}", post(instances::action))
        .route("/v1/resourceGroups/{group}/virtualNetworks", get(network::vnet_list))
        .route(
            "/v1/resourceGroups/{group}/virtualNetworks/{name}",
            put(network::vnet_put).get(network::vnet_show).delete(network::vnet_delete),
        )
        .route(
            "/v1/resourceGroups/{group}/virtualNetworks/{vnet}/subnets/{name}",
            put(network::subnet_put).delete(network::subnet_delete),
        )
        .route("/v1/resourceGroups/{group}/publicIPAddresses", get(network::pip_list))
        .route(
            "/v1/resourceGroups/{group}/publicIPAddresses/{name}",
            put(network::pip_put).get(network::pip_show).delete(network::pip_delete),
        )
        .route("/v1/resourceGroups/{group}/loadBalancers", get(network::lb_list))
        .route(
            "/v1/resourceGroups/{group}/loadBalancers/{name}",
            put(network::lb_put).get(network::lb_show).delete(network::lb_delete),
        )
        .route(
            "/v1/resourceGroups/{group}/loadBalancers/{name}/{collection}/{child}",
            put(network::lb_child_put).delete(network::lb_child_delete),
        )
        .route(
            "/v1/resourceGroups/{group}/loadBalancers/{name}/backendAddressPools/{pool}",
            get(network::pool_show).put(network::pool_put).delete(network::pool_delete),
        )
        .route("/v1/resourceGroups/{group}/autoscaleSettings", get(autoscale::list))
        .route(
            "/v1/resourceGroups/{group}/autoscaleSettings/{name}",
            put(autoscale::put).get(autoscale::show).delete(autoscale::delete),
        )
        .route("/v1/resourceGroups/{group}/autoscaleSettings/{name}/history", get(autoscale::history))
        .route("/v1/resourceGroups/{group}/metricSources", get(autoscale::source_list))
        .route(
            "/v1/resourceGroups/{group}/metricSources/{name}",
            put(autoscale::source_put).get(autoscale::source_show).delete(autoscale::source_delete),
        )
        .route("/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/metrics", get(autoscale::metrics))
        .route("/v1/hosts", get(hosts::list))
        .route("/v1/cost", get(cost::total_cost))
        .route("/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/cost", get(cost::set_cost))
        .route("/v1/images", get(images::list))
        .route("/v1/images/{urn}", put(images::import).get(images::show).delete(images::delete))
        .route("/v1/images/{urn}/files/{file}", put(images::upload).layer(axum::extract::DefaultBodyLimit::disable()))
        .layer(middleware::from_fn_with_state(state.clone(), auth::require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/openapi.json", get(openapi::serve))
        .route(
            "/metrics",
            get(network::metrics).layer(middleware::from_fn_with_state(state.clone(), auth::require_metrics_token)),
        )
        .merge(api)
        .fallback(guard::not_found)
        .layer(middleware::from_fn(guard::guard))
        .with_state(state)
}
