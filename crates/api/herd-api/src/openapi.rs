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
        crate::store_status::controllers,
        crate::store_status::store_check,
        crate::server_tls::show,
        crate::server_tls::rotate_certificate,
        crate::server_tls::rotate_ca,
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
        crate::network::nsg_list,
        crate::network::nsg_show,
        crate::network::nsg_put,
        crate::network::nsg_delete,
        crate::network::rule_list,
        crate::network::rule_show,
        crate::network::rule_put,
        crate::network::rule_delete,
        crate::instances::effective_nsgs,
        crate::instances::public_ips,
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
        crate::hosts::show,
        crate::hosts::action,
        crate::hosts::delete,
        crate::join::ca,
        crate::join::join,
        crate::join_tokens::create,
        crate::join_tokens::list,
        crate::join_tokens::delete,
        crate::cost::set_cost,
        crate::cost::total_cost,
        crate::images::list,
        crate::images::import,
        crate::images::upload,
        crate::images::show,
        crate::images::delete,
    ),
    components(schemas(herd_model::patch::PatchOp, herd_model::instance::InstanceState)),
    modifiers(&BearerAuth, &CommonAnswers),
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

/// Resource group names: Azure's rule, 1–90 of letters, digits and `-_.()`, starting with a
/// letter or digit, not ending with `.` (as `herd_model::GroupName` checks).
pub const GROUP_PATTERN: &str = r"^[A-Za-z0-9]([A-Za-z0-9_.()-]{0,88}[A-Za-z0-9_()-])?$";
/// Scale set names: 1–64 of letters, digits and `-_.`, starting with a letter or digit, not
/// ending with `.` (as `herd_model::ScaleSetName` checks).
pub const SET_PATTERN: &str = r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,62}[A-Za-z0-9_-])?$";
/// Host names: a DNS label, 1–63 of letters, digits and `-`, starting with a letter or digit
/// (as `herd_model::ids::HostName` checks).
pub const HOST_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$";
/// Network resources, their children, extensions, autoscale settings and metric sources: 1–80
/// of letters, digits and `-_.`, starting with a letter or digit (`check_child_name`).
pub const CHILD_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$";

/// What every operation can answer besides its own results, added to each one so the document
/// is complete: 401 (every route but `/healthz` and `/openapi.json` needs the token), 400 for a
/// malformed name or body, 404, 413/415 for a body that is too large or not JSON, 414 and 507.
/// Name parameters and the `name` fields of bodies get their patterns.
struct CommonAnswers;

impl utoipa::Modify for CommonAnswers {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{
            path::ParameterIn, schema::SchemaType, ContentBuilder, Ref, ResponseBuilder, Schema, Type,
        };
        let error = |what: &str| {
            ResponseBuilder::new()
                .description(what)
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
                )
                .build()
        };
        for (path, item) in doc.paths.paths.iter_mut() {
            let public = path == "/healthz" || path == "/openapi.json";
            // Joining needs no API token (the join token is in the body; refusals count against
            // the address's failure budget, so POST /v1/join documents its own 429).
            let tokenless = public || path.starts_with("/v1/join");
            let ops = [
                (false, item.get.as_mut()),
                (true, item.put.as_mut()),
                (true, item.post.as_mut()),
                (true, item.delete.as_mut()),
                (true, item.patch.as_mut()),
            ];
            for (writes, op) in ops {
                let Some(op) = op else { continue };
                let mut add = |code: &str, what: &str| {
                    op.responses.responses.entry(code.to_string()).or_insert_with(|| error(what).into());
                };
                if !tokenless {
                    add("401", "A valid API token is required (Authorization: Bearer <token>)");
                    add("429", "Too many failed authentications from this address; retry after `Retry-After` seconds");
                }
                add("400", "Bad input: the body, a name or a parameter; `target` names the field");
                add("404", "The resource (or its group) does not exist");
                add("414", "The request path and query are too long");
                if op.request_body.is_some() || writes {
                    add("413", "The body is larger than the limit");
                    add("415", "The body is not sent as application/json");
                }
                if writes {
                    add("507", "The data dir's disk is full; the message says which file");
                }
                for p in op.parameters.iter_mut().flatten() {
                    if !matches!(p.parameter_in, ParameterIn::Path) {
                        if p.name == "group" {
                            let mut o = utoipa::openapi::schema::Object::with_type(SchemaType::Type(Type::String));
                            o.pattern = Some(GROUP_PATTERN.to_string());
                            p.schema = Some(Schema::Object(o).into());
                        }
                        continue;
                    }
                    let pattern = match p.name.as_str() {
                        "group" => Some(GROUP_PATTERN),
                        "name" if path.contains("/virtualMachineScaleSets/{name}") => Some(SET_PATTERN),
                        "name" if path.starts_with("/v1/hosts/{name}") => Some(HOST_PATTERN),
                        "name" | "vnet" | "pool" | "child" | "ext" | "rule" => Some(CHILD_PATTERN),
                        "id" => Some(r"^[0-9]{1,19}$"),
                        _ => None,
                    };
                    let choices: Option<&[&str]> = match p.name.as_str() {
                        "action" if path.contains("rollingUpgrades") => Some(crate::rolling::ACTIONS),
                        "action" if path.starts_with("/v1/hosts/") => Some(crate::hosts::ACTIONS),
                        "action" => Some(crate::instances::ACTIONS),
                        "collection" => Some(herd_model::network::LB_COLLECTIONS),
                        _ => None,
                    };
                    if let Some(values) = choices {
                        let mut o = utoipa::openapi::schema::Object::with_type(SchemaType::Type(Type::String));
                        o.enum_values = Some(values.iter().map(|v| serde_json::Value::from(*v)).collect());
                        p.schema = Some(Schema::Object(o).into());
                    }
                    if let Some(pat) = pattern {
                        let mut o = utoipa::openapi::schema::Object::with_type(SchemaType::Type(Type::String));
                        o.pattern = Some(pat.to_string());
                        p.schema = Some(Schema::Object(o).into());
                    }
                }
            }
        }
        // `name` fields that are checked as child names.
        if let Some(c) = doc.components.as_mut() {
            for (schema, pattern) in [
                ("Subnet", CHILD_PATTERN),
                ("Extension", CHILD_PATTERN),
                ("FrontendIpConfiguration", CHILD_PATTERN),
                ("BackendAddressPool", CHILD_PATTERN),
                ("Probe", CHILD_PATTERN),
                ("LoadBalancingRule", CHILD_PATTERN),
                ("InboundNatPool", CHILD_PATTERN),
                ("SecurityRule", CHILD_PATTERN),
            ] {
                if let Some(utoipa::openapi::RefOr::T(Schema::Object(o))) = c.schemas.get_mut(schema) {
                    if let Some(utoipa::openapi::RefOr::T(Schema::Object(n))) = o.properties.get_mut("name") {
                        n.pattern = Some(pattern.to_string());
                    }
                }
            }
        }
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
