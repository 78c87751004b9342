//! Networks: virtual networks and subnets, public IP addresses, load balancers and their
//! sub-resources (frontends, pools, probes, rules, NAT pools). Every write validates the whole
//! resource (references, ranges, overlaps) and is a compare-and-swap, so nothing half-applies.

use crate::{
    error::{ApiError, ErrorBody},
    state::AppState,
    views,
};
use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    Json,
};
use herd_model::health::HealthState;
use herd_model::{
    network::{network_id, LoadBalancer, PublicIpAddress, Subnet, VirtualNetwork, LB_COLLECTIONS},
    nsg::{NetworkSecurityGroup, SecurityRule},
    FieldError,
};
use herd_state::keys::HealthKey;
use herd_state::networks::{self, NetResource};
use herd_state::{Expected, Records, Versioned as Object};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use std::net::Ipv4Addr;

fn parse<T: DeserializeOwned>(body: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        ApiError::Invalid(FieldError::new(if path == "." { String::new() } else { path }, e.into_inner().to_string()))
    })
}

fn load<T: NetResource>(state: &AppState, group: &str, name: &str) -> Result<Object<T>, ApiError> {
    views::load_group(state, group)?;
    Ok(networks::resource::<T>(&*state.store, group, name)?)
}

fn list_all<T: NetResource>(state: &AppState, group: &str) -> Result<Vec<T>, ApiError> {
    views::load_group(state, group)?;
    Ok(networks::resources_of::<T>(&*state.store, group)?)
}

/// Writes `value` (already validated) as a create or a compare-and-swap update.
fn save<T: NetResource>(
    state: &AppState,
    group: &str,
    name: &str,
    value: &T,
    expected: Expected,
    message: String,
) -> Result<(), ApiError> {
    Ok(networks::put_resource(&*state.store, group, name, value, expected, message, state.clock.now())?)
}

fn delete_resource<T: NetResource>(state: &AppState, group: &str, name: &str) -> Result<StatusCode, ApiError> {
    // A concurrent write to the resource is re-applied to a fresh read (no If-Match here).
    views::retry(&HeaderMap::new(), || {
        views::load_group(state, group)?;
        networks::delete_resource::<T>(&*state.store, group, name, state.clock.now())?;
        state.wake();
        Ok(StatusCode::OK)
    })
}

fn expect_for<T>(
    headers: &HeaderMap,
    existing: &Option<Object<T>>,
    name: &str,
    noun: &str,
) -> Result<Expected, ApiError> {
    let create_only = headers.get(axum::http::header::IF_NONE_MATCH).is_some_and(|v| v == "*");
    match existing {
        Some(_) if create_only => Err(ApiError::Conflict(format!("{noun} '{name}' already exists"))),
        Some(o) => {
            views::check_if_match(headers, o.revision)?;
            Ok(Expected::Revision(o.revision))
        }
        None => Ok(Expected::Absent),
    }
}

/// What [`put_resource`] hands a resource's `fill`: the request and the stored resource.
struct PutCtx<'a, T> {
    s: &'a AppState,
    group: &'a str,
    name: &'a str,
    headers: &'a HeaderMap,
    existing: Option<&'a Object<T>>,
}

/// The PUT of a top-level network resource: the group must exist and the name be valid; then,
/// under `If-None-Match`/`If-Match` ([`expect_for`]), the body is decoded, completed and
/// checked by `fill` (which answers the log message), and written as a create or a
/// compare-and-swap, re-applied on a concurrent write.
fn put_resource<T: NetResource>(
    s: &AppState,
    (group, name): (&str, &str),
    headers: &HeaderMap,
    body: &Value,
    fill: fn(&PutCtx<'_, T>, &mut T) -> Result<String, ApiError>,
) -> Result<Json<T>, ApiError> {
    views::load_group(s, group)?;
    views::check_child_name("name", name)?;
    views::retry(headers, || {
        let existing = networks::find_resource::<T>(&*s.store, group, name)?;
        let expect = expect_for(headers, &existing, name, T::NOUN)?;
        let mut v: T = parse(body.clone())?;
        let message = fill(&PutCtx { s, group, name, headers, existing: existing.as_ref() }, &mut v)?;
        save(s, group, name, &v, expect, message)?;
        Ok(Json(v))
    })
}

/// The handlers of the top-level network resources (virtual networks, public IPs, load
/// balancers), one table row each: list, show, create-or-replace and delete are the same for
/// every one but for its type, paths, tag and docs; what a PUT fills in and checks is the
/// row's `fill` function, and `then wake` wakes the reconciler after it. `routes` names the
/// function that routes the row's two paths to its handlers.
macro_rules! network_resources {
    ($(
        $(#[$list_doc:meta])* list $list:ident,
        $(#[$show_doc:meta])* show $show:ident,
        $(#[$put_doc:meta])* put $put:ident = $fill:ident $(then $wake:ident)?,
        $(#[$delete_doc:meta])* delete $delete:ident,
        of $t:ident, tag $tag:literal, at ($list_path:literal, $one_path:literal), routes $routes:ident;
    )*) => {$(
        /// The collection's routes, at the paths its handlers document: the list, and one
        /// resource's PUT, GET and DELETE.
        pub fn $routes() -> axum::Router<AppState> {
            use axum::routing::{get, put};
            axum::Router::new().route($list_path, get($list)).route($one_path, put($put).get($show).delete($delete))
        }

        $(#[$list_doc])*
        #[utoipa::path(get, path = $list_path, tag = $tag,
            params(("group" = String, Path)), responses((status = 200, body = Vec<$t>), (status = 404, body = ErrorBody)))]
        pub async fn $list(State(s): State<AppState>, Path(group): Path<String>) -> Result<Json<Vec<$t>>, ApiError> {
            s.blocking(move |s| Ok(Json(list_all(s, &group)?))).await
        }

        $(#[$show_doc])*
        #[utoipa::path(get, path = $one_path, tag = $tag,
            params(("group" = String, Path), ("name" = String, Path)), responses((status = 200, body = $t), (status = 404, body = ErrorBody)))]
        pub async fn $show(
            State(s): State<AppState>,
            Path((group, name)): Path<(String, String)>,
        ) -> Result<Json<$t>, ApiError> {
            s.blocking(move |s| Ok(Json(load::<$t>(s, &group, &name)?.value))).await
        }

        $(#[$put_doc])*
        #[utoipa::path(put, path = $one_path, tag = $tag,
            params(("group" = String, Path), ("name" = String, Path)), request_body = $t,
            responses((status = 200, body = $t), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
        pub async fn $put(
            State(s): State<AppState>,
            Path((group, name)): Path<(String, String)>,
            headers: HeaderMap,
            Json(body): Json<Value>,
        ) -> Result<Json<$t>, ApiError> {
            s.blocking(move |s| {
                let out = put_resource(s, (&group, &name), &headers, &body, $fill)?;
                $(s.$wake();)?
                Ok(out)
            })
            .await
        }

        $(#[$delete_doc])*
        #[utoipa::path(delete, path = $one_path, tag = $tag,
            params(("group" = String, Path), ("name" = String, Path)), responses((status = 200), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
        pub async fn $delete(
            State(s): State<AppState>,
            Path((group, name)): Path<(String, String)>,
        ) -> Result<StatusCode, ApiError> {
            s.blocking(move |s| delete_resource::<$t>(s, &group, &name)).await
        }
    )*};
}

network_resources! {
    /// Lists virtual networks.
    list vnet_list,
    /// Shows a virtual network.
    show vnet_show,
    /// Creates or replaces a virtual network (with its subnets).
    put vnet_put = fill_vnet,
    /// Deletes a virtual network, unless a scale set uses it.
    delete vnet_delete,
    of VirtualNetwork, tag "networks", at ("/v1/resourceGroups/{group}/virtualNetworks", "/v1/resourceGroups/{group}/virtualNetworks/{name}"), routes vnet_routes;

    /// Lists network security groups.
    list nsg_list,
    /// Shows a network security group with its rules and its default rules.
    show nsg_show,
    /// Creates or replaces a network security group (with its rules). Rule changes reach
    /// running instances within a second.
    put nsg_put = fill_nsg then wake,
    /// Deletes a network security group, unless a subnet or a scale set uses it.
    delete nsg_delete,
    of NetworkSecurityGroup, tag "networks", at ("/v1/resourceGroups/{group}/networkSecurityGroups", "/v1/resourceGroups/{group}/networkSecurityGroups/{name}"), routes nsg_routes;

    /// Lists public IP addresses.
    list pip_list,
    /// Shows a public IP address.
    show pip_show,
    /// Creates a public IP address. Without `ipAddress`, herd allocates a loopback address from
    /// 127.64.0.0/10; a non-loopback address must be asked for explicitly.
    put pip_put = fill_pip,
    /// Deletes a public IP address, unless a load balancer uses it.
    delete pip_delete,
    of PublicIpAddress, tag "networks", at ("/v1/resourceGroups/{group}/publicIPAddresses", "/v1/resourceGroups/{group}/publicIPAddresses/{name}"), routes pip_routes;

    /// Lists load balancers.
    list lb_list,
    /// Shows a load balancer.
    show lb_show,
    /// Creates or replaces a load balancer.
    put lb_put = fill_lb then wake,
    /// Deletes a load balancer, unless a scale set uses it.
    delete lb_delete,
    of LoadBalancer, tag "load balancers", at ("/v1/resourceGroups/{group}/loadBalancers", "/v1/resourceGroups/{group}/loadBalancers/{name}"), routes lb_routes;
}

// ---- virtual networks and subnets ----

/// A virtual network's PUT: normalized, and not overlapping the group's other vnets.
fn fill_vnet(c: &PutCtx<'_, VirtualNetwork>, v: &mut VirtualNetwork) -> Result<String, ApiError> {
    v.normalize(c.group, c.name)?;
    check_vnet_overlaps(c.s, c.group, c.name, v)?;
    for (i, sub) in v.subnets.iter().enumerate() {
        check_nsg_exists(c.s, &format!("subnets[{i}].networkSecurityGroup"), sub)?;
    }
    let prefixes: Vec<String> = v.address_space.address_prefixes.iter().map(|p| p.to_string()).collect();
    Ok(format!("virtual network {}", prefixes.join(", ")))
}

/// No two vnets of the server overlap, in any group: bridged networking routes every vnet in
/// the host's one routing table and filters NICs by address, so an address must name one NIC.
/// (Azure allows overlapping vnets that are not peered; herd refuses them rather than give each
/// its own namespace or VRF: see docs/architecture.md.)
fn check_vnet_overlaps(s: &AppState, group: &str, name: &str, v: &VirtualNetwork) -> Result<(), ApiError> {
    if let Some(pool) = s.config.public_ip_pool {
        if let Some(a) = v.address_space.address_prefixes.iter().find(|a| a.overlaps(&pool.cidr)) {
            return Err(ApiError::invalid(
                "addressSpace.addressPrefixes",
                format!(
                    "{a} overlaps the server's public IP pool {pool} ({}); a vnet must be outside it",
                    herd_model::public_pool::SETTING
                ),
            ));
        }
    }
    for other in s.store.virtual_networks()? {
        let other = other.value;
        if other.name == name && other.resource_group == group {
            continue;
        }
        for a in &v.address_space.address_prefixes {
            for b in &other.address_space.address_prefixes {
                if a.overlaps(b) {
                    let place = if other.resource_group == group {
                        String::new()
                    } else {
                        format!(" in resource group '{}'", other.resource_group)
                    };
                    return Err(ApiError::invalid(
                        "addressSpace.addressPrefixes",
                        format!(
                            "{a} overlaps virtual network '{}'{place} ({b}); vnets of one server must not overlap",
                            other.name
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Creates or replaces a subnet of a virtual network.
#[utoipa::path(put, path = "/v1/resourceGroups/{group}/virtualNetworks/{vnet}/subnets/{name}", tag = "networks",
    params(("group" = String, Path), ("vnet" = String, Path), ("name" = String, Path)), request_body = Subnet,
    responses((status = 200, body = Subnet), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn subnet_put(
    State(s): State<AppState>,
    Path((group, vnet, name)): Path<(String, String, String)>,
    Json(mut body): Json<Value>,
) -> Result<Json<Subnet>, ApiError> {
    s.blocking(move |s| {
        if let Some(o) = body.as_object_mut() {
            o.insert("name".into(), Value::String(name.clone()));
        }
        // Subnets share their vnet's revision: a concurrent write to a sibling is re-applied.
        views::retry(&HeaderMap::new(), || {
            let cur = load::<VirtualNetwork>(s, &group, &vnet)?;
            let sub: Subnet = parse(body.clone())?;
            let mut v = cur.value.clone();
            v.subnets.retain(|x| !x.name.eq_ignore_ascii_case(&name));
            v.subnets.push(sub);
            v.normalize(&group, &vnet).map_err(|mut e| {
                if e.field.starts_with("subnets[") {
                    e.field = e.field.split_once('.').map_or("addressPrefix".into(), |(_, f)| f.to_string());
                }
                ApiError::Invalid(e)
            })?;
            if let Some(sub) = v.subnets.iter().find(|x| x.name == name) {
                check_nsg_exists(s, "networkSecurityGroup", sub)?;
            }
            save(s, &group, &vnet, &v, Expected::Revision(cur.revision), format!("subnet '{name}' written"))?;
            s.wake();
            let out = v.subnets.into_iter().find(|x| x.name == name).expect("just added");
            Ok(Json(out))
        })
    })
    .await
}

/// Deletes a subnet, unless a scale set uses it.
#[utoipa::path(delete, path = "/v1/resourceGroups/{group}/virtualNetworks/{vnet}/subnets/{name}", tag = "networks",
    params(("group" = String, Path), ("vnet" = String, Path), ("name" = String, Path)),
    responses((status = 200), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn subnet_delete(
    State(s): State<AppState>,
    Path((group, vnet, name)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    s.blocking(move |s| views::retry(&HeaderMap::new(), || subnet_delete_once(s, &group, &vnet, &name))).await
}

fn subnet_delete_once(s: &AppState, group: &str, vnet: &str, name: &str) -> Result<StatusCode, ApiError> {
    let cur = load::<VirtualNetwork>(s, group, vnet)?;
    let Some(sub) = cur.value.subnets.iter().find(|x| x.name.eq_ignore_ascii_case(name)) else {
        return Err(ApiError::NotFound(format!("subnet '{name}' does not exist in virtual network '{vnet}'")));
    };
    let users = networks::users_of(&*s.store, &sub.id)?;
    if !users.is_empty() {
        return Err(ApiError::Conflict(format!("subnet '{name}' is used by scale set(s) {}", users.join(", "))));
    }
    let mut v = cur.value.clone();
    v.subnets.retain(|x| !x.name.eq_ignore_ascii_case(name));
    save(s, group, vnet, &v, Expected::Revision(cur.revision), format!("subnet '{name}' deleted"))?;
    Ok(StatusCode::OK)
}

/// A subnet's `networkSecurityGroup`, if any, names a group that exists.
fn check_nsg_exists(s: &AppState, field: &str, sub: &Subnet) -> Result<(), ApiError> {
    let Some(r) = &sub.network_security_group else { return Ok(()) };
    let groups = s.store.security_groups()?;
    if groups.iter().any(|g| g.value.id.eq_ignore_ascii_case(&r.id)) {
        return Ok(());
    }
    Err(ApiError::invalid(
        field,
        format!("network security group '{}' does not exist; create it with 'herd network nsg create'", r.id),
    ))
}

// ---- network security groups and their rules ----

/// A network security group's PUT: normalized (ids, default rules, every rule checked).
fn fill_nsg(c: &PutCtx<'_, NetworkSecurityGroup>, g: &mut NetworkSecurityGroup) -> Result<String, ApiError> {
    g.normalize(c.group, c.name)?;
    Ok(format!("network security group with {} rule(s)", g.security_rules.len()))
}

/// Lists a network security group's rules (not the default ones; `show` has those).
#[utoipa::path(get, path = "/v1/resourceGroups/{group}/networkSecurityGroups/{name}/securityRules", tag = "networks",
    params(("group" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = Vec<SecurityRule>), (status = 404, body = ErrorBody)))]
pub async fn rule_list(
    State(s): State<AppState>,
    Path((group, name)): Path<(String, String)>,
) -> Result<Json<Vec<SecurityRule>>, ApiError> {
    s.blocking(move |s| Ok(Json(load::<NetworkSecurityGroup>(s, &group, &name)?.value.security_rules))).await
}

fn find_rule(g: &NetworkSecurityGroup, rule: &str) -> Result<SecurityRule, ApiError> {
    g.security_rules.iter().find(|r| r.name.eq_ignore_ascii_case(rule)).cloned().ok_or_else(|| {
        let default = g.default_security_rules.iter().any(|r| r.name.eq_ignore_ascii_case(rule));
        ApiError::NotFound(if default {
            format!("'{rule}' is a default rule of '{}'; default rules cannot be changed or deleted", g.name)
        } else {
            format!("rule '{rule}' does not exist in network security group '{}'", g.name)
        })
    })
}

/// Shows one rule of a network security group.
#[utoipa::path(get, path = "/v1/resourceGroups/{group}/networkSecurityGroups/{name}/securityRules/{rule}", tag = "networks",
    params(("group" = String, Path), ("name" = String, Path), ("rule" = String, Path)),
    responses((status = 200, body = SecurityRule), (status = 404, body = ErrorBody)))]
pub async fn rule_show(
    State(s): State<AppState>,
    Path((group, name, rule)): Path<(String, String, String)>,
) -> Result<Json<SecurityRule>, ApiError> {
    s.blocking(move |s| Ok(Json(find_rule(&load::<NetworkSecurityGroup>(s, &group, &name)?.value, &rule)?))).await
}

/// Creates or replaces one rule; the whole group is checked again (a priority another rule of
/// the same direction holds is refused). Running instances get it within a second.
#[utoipa::path(put, path = "/v1/resourceGroups/{group}/networkSecurityGroups/{name}/securityRules/{rule}", tag = "networks",
    params(("group" = String, Path), ("name" = String, Path), ("rule" = String, Path)), request_body = SecurityRule,
    responses((status = 200, body = SecurityRule), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn rule_put(
    State(s): State<AppState>,
    Path((group, name, rule)): Path<(String, String, String)>,
    Json(mut body): Json<Value>,
) -> Result<Json<SecurityRule>, ApiError> {
    s.blocking(move |s| {
        views::check_child_name("rule", &rule)?;
        if let Some(o) = body.as_object_mut() {
            o.insert("name".into(), Value::String(rule.clone()));
        }
        let out = views::retry(&HeaderMap::new(), || {
            let cur = load::<NetworkSecurityGroup>(s, &group, &name)?;
            if cur.value.default_security_rules.iter().any(|r| r.name.eq_ignore_ascii_case(&rule)) {
                return Err(ApiError::invalid(
                    "name",
                    format!("'{rule}' is the name of a default rule; choose another"),
                ));
            }
            let new: SecurityRule = parse(body.clone())?;
            let mut g = cur.value.clone();
            g.security_rules.retain(|x| !x.name.eq_ignore_ascii_case(&rule));
            g.security_rules.push(new);
            let last = g.security_rules.len() - 1;
            g.normalize(&group, &name).map_err(|mut e| {
                let own = format!("securityRules[{last}].");
                if let Some(f) = e.field.strip_prefix(&own) {
                    e.field = f.to_string();
                }
                ApiError::Invalid(e)
            })?;
            save(s, &group, &name, &g, Expected::Revision(cur.revision), format!("security rule '{rule}' written"))?;
            find_rule(&g, &rule)
        })?;
        s.wake();
        Ok(Json(out))
    })
    .await
}

/// Deletes one rule (default rules cannot be deleted). Running instances lose it within a
/// second.
#[utoipa::path(delete, path = "/v1/resourceGroups/{group}/networkSecurityGroups/{name}/securityRules/{rule}", tag = "networks",
    params(("group" = String, Path), ("name" = String, Path), ("rule" = String, Path)),
    responses((status = 200), (status = 404, body = ErrorBody)))]
pub async fn rule_delete(
    State(s): State<AppState>,
    Path((group, name, rule)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    s.blocking(move |s| {
        views::retry(&HeaderMap::new(), || {
            let cur = load::<NetworkSecurityGroup>(s, &group, &name)?;
            find_rule(&cur.value, &rule)?;
            let mut g = cur.value.clone();
            g.security_rules.retain(|x| !x.name.eq_ignore_ascii_case(&rule));
            save(s, &group, &name, &g, Expected::Revision(cur.revision), format!("security rule '{rule}' deleted"))
        })?;
        s.wake();
        Ok(StatusCode::OK)
    })
    .await
}

// ---- public IP addresses ----

/// The first address public IPs are allocated from (127.64.0.0/10, skipping .0 and .255).
fn public_ip_candidates(block: u8) -> impl Iterator<Item = Ipv4Addr> {
    let base = u32::from(Ipv4Addr::new(127, 64, 0, 0));
    let start = u32::from(block % 64) << 16;
    (0..(1u32 << 22))
        .map(move |n| Ipv4Addr::from(base + ((start + n) % (1 << 22))))
        .filter(|a| a.octets()[3] != 0 && a.octets()[3] != 255)
}

/// A public IP's PUT: its ids, the load balancer using it (kept), and its address: the one
/// asked for (loopback unless allowed, and not another's) or the stored one, else a free one.
fn fill_pip(c: &PutCtx<'_, PublicIpAddress>, p: &mut PublicIpAddress) -> Result<String, ApiError> {
    let (s, group, name, existing) = (c.s, c.group, c.name, c.existing);
    p.id = network_id(group, "publicIPAddresses", name);
    p.name = name.to_string();
    p.resource_group = group.to_string();
    p.ip_configuration = existing.and_then(|e| e.value.ip_configuration.clone());
    let used = networks::public_ip_addresses_except(&*s.store, group, name)?;
    let addr = match p.ip_address.clone().or_else(|| existing.and_then(|e| e.value.ip_address.clone())) {
        Some(a) => {
            let ip: Ipv4Addr =
                a.parse().map_err(|_| ApiError::invalid("ipAddress", format!("'{a}' is not an IPv4 address")))?;
            let allow = c.headers.get("x-herd-allow-non-loopback").is_some_and(|v| v == "true");
            if !ip.is_loopback() && !allow {
                return Err(ApiError::invalid(
                    "ipAddress",
                    format!("{ip} is not a loopback address; binding a host address must be asked for explicitly (--allow-non-loopback)"),
                ));
            }
            if used.contains(&ip.to_string()) {
                return Err(ApiError::invalid(
                    "ipAddress",
                    format!("{ip} is already used by another public IP address"),
                ));
            }
            ip
        }
        None => public_ip_candidates(s.config.public_ip_block)
            .find(|c| !used.contains(&c.to_string()))
            .ok_or_else(|| ApiError::Conflict("no free address left in 127.64.0.0/10".into()))?,
    };
    p.ip_address = Some(addr.to_string());
    Ok(format!("public IP address {addr}"))
}

// ---- load balancers ----

/// Refuses a rule or NAT pool whose frontend port another process on this host already holds.
/// Ports herd's own data plane serves are fine (they are ours).
fn check_ports_free(s: &AppState, lb: &LoadBalancer) -> Result<(), ApiError> {
    let pips: Vec<PublicIpAddress> = s.store.public_ips()?.into_iter().map(|o| o.value).collect();
    let ours = s.lb.frontends();
    let ip_of = |fe_id: &str| -> Option<std::net::IpAddr> {
        let fe = lb.frontend_ip_configurations.iter().find(|f| f.id.eq_ignore_ascii_case(fe_id))?;
        let pip = fe.public_ip_address.as_ref()?;
        pips.iter().find(|p| p.id.eq_ignore_ascii_case(&pip.id))?.ip_address.as_ref()?.parse().ok()
    };
    let mut wanted: Vec<(String, std::net::SocketAddr)> = Vec::new();
    for (i, r) in lb.load_balancing_rules.iter().enumerate() {
        if let Some(ip) = ip_of(&r.frontend_ip_configuration.id) {
            wanted.push((
                format!("loadBalancingRules[{i}].frontendPort"),
                std::net::SocketAddr::new(ip, r.frontend_port as u16),
            ));
        }
    }
    for (i, n) in lb.inbound_nat_pools.iter().enumerate() {
        if let Some(ip) = ip_of(&n.frontend_ip_configuration.id) {
            for port in n.frontend_port_range_start..=n.frontend_port_range_end {
                wanted.push((
                    format!("inboundNatPools[{i}].frontendPortRangeStart"),
                    std::net::SocketAddr::new(ip, port as u16),
                ));
            }
        }
    }
    for (field, addr) in wanted {
        if ours.contains(&addr) {
            continue;
        }
        if let Err(e) = std::net::TcpListener::bind(addr) {
            return Err(ApiError::invalid(
                field,
                format!("{addr} cannot be used on this host: {e} (another process holds it)"),
            ));
        }
    }
    Ok(())
}

fn public_ip_ids(s: &AppState) -> Result<Vec<String>, ApiError> {
    Ok(s.store.public_ips()?.into_iter().map(|o| o.value.id).collect())
}

/// A load balancer's PUT: normalized against the stored public IPs, its frontend ports free.
fn fill_lb(c: &PutCtx<'_, LoadBalancer>, lb: &mut LoadBalancer) -> Result<String, ApiError> {
    lb.normalize(c.group, c.name, &public_ip_ids(c.s)?)?;
    check_ports_free(c.s, lb)?;
    Ok("load balancer written".into())
}

fn collection(c: &str) -> Result<&'static str, ApiError> {
    LB_COLLECTIONS.iter().find(|x| x.eq_ignore_ascii_case(c)).copied().ok_or_else(|| {
        ApiError::NotFound(format!("no collection '{c}'; load balancers have: {}", LB_COLLECTIONS.join(", ")))
    })
}

/// Creates or replaces one sub-resource (probe, rule, pool, frontend, NAT pool). The whole load
/// balancer is validated again, so a rule naming a missing probe is refused.
#[utoipa::path(put, path = "/v1/resourceGroups/{group}/loadBalancers/{name}/{collection}/{child}", tag = "load balancers",
    params(("group" = String, Path), ("name" = String, Path),
        ("collection" = String, Path, description = "frontendIPConfigurations, backendAddressPools, probes, loadBalancingRules or inboundNatPools"),
        ("child" = String, Path)),
    responses((status = 200, body = LoadBalancer), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn lb_child_put(
    State(s): State<AppState>,
    Path((group, name, coll, child)): Path<(String, String, String, String)>,
    Json(mut body): Json<Value>,
) -> Result<Json<LoadBalancer>, ApiError> {
    s.blocking(move |s| {
        let coll = collection(&coll)?;
        if let Some(o) = body.as_object_mut() {
            o.insert("name".into(), Value::String(child.clone()));
        }
        // Children share their load balancer's revision: a concurrent write to a sibling is
        // re-applied to a fresh read rather than answered 409.
        views::retry(&HeaderMap::new(), || {
            let body = body.clone();
            let cur = load::<LoadBalancer>(s, &group, &name)?;
            let mut doc = serde_json::to_value(&cur.value).map_err(ApiError::internal)?;
            let list = doc[coll].as_array_mut().ok_or_else(|| ApiError::internal(format!("{coll} is not a list")))?;
            list.retain(|x| !x["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(&child)));
            list.push(body);
            let mut lb: LoadBalancer = parse(doc)?;
            lb.normalize(&group, &name, &public_ip_ids(s)?)?;
            check_ports_free(s, &lb)?;
            save(s, &group, &name, &lb, Expected::Revision(cur.revision), format!("{coll} '{child}' written"))?;
            s.wake();
            Ok(Json(lb))
        })
    })
    .await
}

/// `PUT .../backendAddressPools/{pool}`: the static segment routes here, not to
/// [`lb_child_put`], so the pool route carries the child writes too.
pub async fn pool_put(
    s: State<AppState>,
    Path((group, name, pool)): Path<(String, String, String)>,
    body: Json<Value>,
) -> Result<Json<LoadBalancer>, ApiError> {
    lb_child_put(s, Path((group, name, "backendAddressPools".into(), pool)), body).await
}

/// `DELETE .../backendAddressPools/{pool}` (see [`pool_put`]).
pub async fn pool_delete(
    s: State<AppState>,
    Path((group, name, pool)): Path<(String, String, String)>,
) -> Result<Json<LoadBalancer>, ApiError> {
    lb_child_delete(s, Path((group, name, "backendAddressPools".into(), pool))).await
}

/// Deletes one sub-resource; refused while another sub-resource refers to it.
#[utoipa::path(delete, path = "/v1/resourceGroups/{group}/loadBalancers/{name}/{collection}/{child}", tag = "load balancers",
    params(("group" = String, Path), ("name" = String, Path), ("collection" = String, Path), ("child" = String, Path)),
    responses((status = 200, body = LoadBalancer), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Another sub-resource or a scale set uses it")))]
pub async fn lb_child_delete(
    State(s): State<AppState>,
    Path((group, name, coll, child)): Path<(String, String, String, String)>,
) -> Result<Json<LoadBalancer>, ApiError> {
    s.blocking(move |s| {
        let coll = collection(&coll)?;
        let lb = views::retry(&HeaderMap::new(), || lb_child_delete_once(s, &group, &name, coll, &child))?;
        s.wake();
        Ok(Json(lb))
    })
    .await
}

fn lb_child_delete_once(
    s: &AppState,
    group: &str,
    name: &str,
    coll: &'static str,
    child: &str,
) -> Result<LoadBalancer, ApiError> {
    let cur = load::<LoadBalancer>(s, group, name)?;
    let mut doc = serde_json::to_value(&cur.value).map_err(ApiError::internal)?;
    let list = doc[coll].as_array_mut().ok_or_else(|| ApiError::internal(format!("{coll} is not a list")))?;
    let before = list.len();
    list.retain(|x| !x["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(child)));
    if list.len() == before {
        return Err(ApiError::NotFound(format!("'{child}' does not exist in {coll} of load balancer '{name}'")));
    }
    let mut lb: LoadBalancer = parse(doc)?;
    lb.normalize(group, name, &public_ip_ids(s)?)
        .map_err(|e| ApiError::Conflict(format!("'{child}' is still in use: {}", e.message)))?;
    let users = networks::users_of(&*s.store, &cur.value.child_id(coll, child))?;
    if !users.is_empty() {
        return Err(ApiError::Conflict(format!("'{child}' is used by scale set(s) {}", users.join(", "))));
    }
    save(s, group, name, &lb, Expected::Revision(cur.revision), format!("{coll} '{child}' deleted"))?;
    Ok(lb)
}

/// One member of a backend pool, as `address-pool show` lists it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolMember {
    pub scale_set: String,
    pub instance_id: String,
    pub computer_name: String,
    pub reach_address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_ip_address: Option<String>,
    pub state: String,
    /// `Healthy`, `Unhealthy`, `Unknown`; absent when no rule's probe covers it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub health: Option<HealthState>,
    pub draining: bool,
    /// Receives new connections now: Running, healthy (or no probe) and not draining.
    pub in_rotation: bool,
}

/// A backend pool with its members and their health.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolView {
    pub id: String,
    pub name: String,
    pub members: Vec<PoolMember>,
}

/// Shows a backend pool: every instance that joins it, with health and whether it is in rotation.
#[utoipa::path(get, path = "/v1/resourceGroups/{group}/loadBalancers/{name}/backendAddressPools/{pool}", tag = "load balancers",
    params(("group" = String, Path), ("name" = String, Path), ("pool" = String, Path)),
    responses((status = 200, body = PoolView), (status = 404, body = ErrorBody)))]
pub async fn pool_show(
    State(s): State<AppState>,
    Path((group, name, pool)): Path<(String, String, String)>,
) -> Result<Json<PoolView>, ApiError> {
    s.blocking(move |s| {
        use herd_model::instance::InstanceState;
        let lb = load::<LoadBalancer>(s, &group, &name)?.value;
        let p = lb.backend_address_pools.iter().find(|p| p.name.eq_ignore_ascii_case(&pool)).ok_or_else(|| {
            ApiError::NotFound(format!("backend pool '{pool}' does not exist in load balancer '{name}'"))
        })?;
        let probed = lb
            .load_balancing_rules
            .iter()
            .any(|r| r.backend_address_pool.id.eq_ignore_ascii_case(&p.id) && r.probe.is_some());
        let mut members = Vec::new();
        for (set, records) in networks::pool_sets(&*s.store, &p.id)? {
            for r in records {
                let key = HealthKey::of(&set, r.instance_id).to_string();
                // Health recorded for an earlier boot says nothing about this one.
                let health = s.health.get(&key).map(|h| h.of_boot(r.state_since));
                let draining = r.draining_since.is_some();
                let running = r.state == InstanceState::Running;
                let healthy = !probed || health == Some(HealthState::Healthy);
                members.push(PoolMember {
                    scale_set: set.name.to_string(),
                    instance_id: r.instance_id.to_string(),
                    computer_name: r.computer_name.clone(),
                    reach_address: r.reach_address.clone(),
                    private_ip_address: r.private_ip.clone(),
                    state: r.state.to_string(),
                    health,
                    draining,
                    in_rotation: running && healthy && !draining,
                });
            }
        }
        Ok(Json(PoolView { id: p.id.clone(), name: p.name.clone(), members }))
    })
    .await
}

/// Load-balancer counters and the cost meter in Prometheus text format (no token needed; no
/// secrets in it).
#[utoipa::path(get, path = "/metrics", tag = "load balancers", responses((status = 200, body = String, content_type = "text/plain"), (status = 401, body = crate::error::ErrorBody, description = "Neither the API token nor the metrics token was given")))]
pub async fn metrics(State(s): State<AppState>) -> String {
    let mut out = s.lb.metrics();
    // The cost report and the quarantine read the store: on the blocking pool.
    let stored = s.run(|store| {
        let mut text = String::new();
        match herd_state::costs::report(store, None, None, None) {
            Ok(r) => text.push_str(&herd_state::costs::prometheus(&r)),
            Err(e) => tracing::warn!(error = %e, "cost metrics unavailable"),
        }
        text.push_str(&crate::store_status::metrics(store));
        Ok(text)
    });
    match stored.await {
        Ok(text) => out.push_str(&text),
        Err(e) => tracing::warn!(error = %e, "stored metrics unavailable"),
    }
    out.push_str(&s.invalid_transitions.prometheus());
    out
}
