//! The OpenAPI document, generated from the handlers' annotations. `docs/openapi.json` is a
//! committed copy; a test fails when the two drift apart.

use axum::Json;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "herd API", description = "Scale sets of full virtual machines on your own Linux hosts."),
    paths(
        crate::groups::server_info,
        crate::store_status::status,
        crate::store_status::store_check,
        crate::groups::list,
        crate::groups::create,
        crate::groups::show,
        crate::groups::delete,
        crate::groups::activity_log,
        crate::scale_sets::list,
        crate::scale_sets::create_or_replace,
        crate::scale_sets::show,
        crate::scale_sets::delete,
        crate::scale_sets::update,
        crate::scale_sets::scale,
        crate::instances::list,
        crate::instances::show,
        crate::instances::instance_view,
        crate::instances::boot_log,
        crate::instances::action,
        crate::rolling::latest,
        crate::rolling::action,
        crate::rolling::protect,
        crate::rolling::orchestration_state,
        crate::extensions::list,
        crate::extensions::show,
        crate::extensions::put,
        crate::extensions::delete,
        crate::network::vnet_list,
        crate::network::vnet_show,
        crate::network::vnet_put,
        crate::network::vnet_delete,
        crate::network::subnet_put,
        crate::network::subnet_delete,
        crate::network::pip_list,
        crate::network::pip_show,
        crate::network::pip_put,
        crate::network::pip_delete,
        crate::network::lb_list,
        crate::network::lb_show,
        crate::network::lb_put,
        crate::network::lb_delete,
        crate::network::lb_child_put,
        crate::network::lb_child_delete,
        crate::network::pool_show,
        crate::network::metrics,
        crate::autoscale::list,
        crate::autoscale::show,
        crate::autoscale::put,
        crate::autoscale::delete,
        crate::autoscale::history,
        crate::autoscale::source_list,
        crate::autoscale::source_show,
        crate::autoscale::source_put,
        crate::autoscale::source_delete,
        crate::autoscale::metrics,
        crate::hosts::list,
        crate::cost::set_cost,
        crate::cost::total_cost,
        crate::images::list,
        crate::images::import,
        crate::images::upload,
        crate::images::show,
        crate::images::delete,
    ),
    components(schemas(herd_model::patch::PatchOp, herd_model::instance::InstanceState)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as pretty JSON (what `docs/openapi.json` holds).
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc.to_pretty_json().expect("the OpenAPI document serialises")
}

pub async fn serve() -> Json<serde_json::Value> {
    Json(serde_json::from_str(&document()).expect("valid JSON"))
}
