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
pub mod join;
pub mod join_tokens;
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

/// A route below resource group `{group}`.
macro_rules! group_path {
    ($rest:expr) => {
        concat!("/v1/resourceGroups/{group}", $rest)
    };
}

/// A route below scale set `{name}` of resource group `{group}`.
macro_rules! set_path {
    ($rest:literal) => {
        group_path!(concat!("/virtualMachineScaleSets/{name}", $rest))
    };
}

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
        .route(group_path!("/activityLog"), get(groups::activity_log))
        .route(group_path!("/virtualMachineScaleSets"), get(scale_sets::list))
        .route(set_path!(""), put(scale_sets::create_or_replace).get(scale_sets::show).delete(scale_sets::delete))
        .route(set_path!("/update"), post(scale_sets::update))
        .route(set_path!("/scale"), post(scale_sets::scale))
        .route(set_path!("/extensions"), get(extensions::list))
        .route(set_path!("/extensions/{ext}"), put(extensions::put).get(extensions::show).delete(extensions::delete))
        .route(set_path!("/rollingUpgrades/latest"), get(rolling::latest))
        .route(set_path!("/setOrchestrationServiceState"), post(rolling::orchestration_state))
        .route(set_path!("/rollingUpgrades/{action}"), post(rolling::action))
        .route(set_path!("/virtualMachines/{id}/protectionPolicy"), put(rolling::protect))
        .route(set_path!("/virtualMachines"), get(instances::list))
        .route(set_path!("/virtualMachines/{id}"), get(instances::show))
        .route(set_path!("/virtualMachines/{id}/instanceView"), get(instances::instance_view))
        .route(set_path!("/virtualMachines/{id}/bootLog"), get(instances::boot_log))
        .route(set_path!("/virtualMachines/{id}/effectiveNetworkSecurityGroups"), get(instances::effective_nsgs))
        .route(set_path!("/publicipaddresses"), get(instances::public_ips))
        .route(set_path!("/{action}"), post(instances::action))
        .merge(network::vnet_routes())
        .route(
            group_path!("/virtualNetworks/{vnet}/subnets/{name}"),
            put(network::subnet_put).delete(network::subnet_delete),
        )
        .merge(network::nsg_routes())
        .route(group_path!("/networkSecurityGroups/{name}/securityRules"), get(network::rule_list))
        .route(
            group_path!("/networkSecurityGroups/{name}/securityRules/{rule}"),
            put(network::rule_put).get(network::rule_show).delete(network::rule_delete),
        )
        .merge(network::pip_routes())
        .merge(network::lb_routes())
        .route(
            group_path!("/loadBalancers/{name}/{collection}/{child}"),
            put(network::lb_child_put).delete(network::lb_child_delete),
        )
        .route(
            group_path!("/loadBalancers/{name}/backendAddressPools/{pool}"),
            get(network::pool_show).put(network::pool_put).delete(network::pool_delete),
        )
        .route(group_path!("/autoscaleSettings"), get(autoscale::list))
        .route(
            group_path!("/autoscaleSettings/{name}"),
            put(autoscale::put).get(autoscale::show).delete(autoscale::delete),
        )
        .route(group_path!("/autoscaleSettings/{name}/history"), get(autoscale::history))
        .route(group_path!("/metricSources"), get(autoscale::source_list))
        .route(
            group_path!("/metricSources/{name}"),
            put(autoscale::source_put).get(autoscale::source_show).delete(autoscale::source_delete),
        )
        .route(set_path!("/metrics"), get(autoscale::metrics))
        .route("/v1/hosts", get(hosts::list))
        .route("/v1/hosts/joinTokens", get(join_tokens::list).post(join_tokens::create))
        .route("/v1/hosts/joinTokens/{id}", axum::routing::delete(join_tokens::delete))
        .route("/v1/hosts/{name}", get(hosts::show).delete(hosts::delete))
        .route("/v1/hosts/{name}/{action}", post(hosts::action))
        .route("/v1/cost", get(cost::total_cost))
        .route(set_path!("/cost"), get(cost::set_cost))
        .route("/v1/images", get(images::list))
        .route("/v1/images/{urn}", put(images::import).get(images::show).delete(images::delete))
        .route("/v1/images/{urn}/files/{file}", put(images::upload).layer(axum::extract::DefaultBodyLimit::disable()))
        .layer(middleware::from_fn_with_state(state.clone(), auth::require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/openapi.json", get(openapi::serve))
        .route("/v1/join/ca", get(join::ca))
        .route("/v1/join", post(join::join))
        .route(
            "/metrics",
            get(network::metrics).layer(middleware::from_fn_with_state(state.clone(), auth::require_metrics_token)),
        )
        .merge(api)
        .fallback(guard::not_found)
        .layer(middleware::from_fn(guard::guard))
        .with_state(state)
}
