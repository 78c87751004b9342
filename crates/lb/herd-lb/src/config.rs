//! The desired-state snapshot the control plane hands to [`crate::LoadBalancer::apply`].
//!
//! Why it exists: the control plane never mutates the data plane piecemeal; it recomputes the
//! whole configuration of one load balancer (rules, inbound NAT, backends with their draining
//! flag) and pushes it. These plain types are that contract, plus the validation that rejects a
//! snapshot which cannot mean anything (duplicate frontends, port 0, ...).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::error::LbError;

/// Azure's default idle timeout for rules and inbound NAT rules (4 minutes).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(4 * 60);

/// A full snapshot of one load balancer's data-plane configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbConfig {
    /// Load-balancing rules: one listener per frontend, spreading over `backends`.
    pub rules: Vec<RuleConfig>,
    /// Inbound NAT rules: one listener per frontend, forwarding to one fixed target.
    pub nat: Vec<NatConfig>,
}

/// How a rule picks a backend for a new connection (Azure `loadDistribution`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Distribution {
    /// 5-tuple hash: (source ip, source port, destination ip, destination port, protocol).
    #[default]
    Default,
    /// 2-tuple hash (Azure "SourceIP", portal "Client IP"): source ip only.
    SourceIp,
    /// 3-tuple hash (Azure "SourceIPProtocol"): (source ip, protocol).
    SourceIpProtocol,
}

/// One load-balancing rule: a TCP frontend spread over a backend pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleConfig {
    /// Rule name; used in errors, metrics labels and stats. Unique within a snapshot (rules and
    /// NAT rules share one namespace).
    pub name: String,
    /// Address to listen on (port must not be 0). The listener is keyed by this address: a rule
    /// that keeps its frontend keeps its listener and its established connections.
    pub frontend: SocketAddr,
    /// Port on every backend address.
    pub backend_port: u16,
    pub distribution: Distribution,
    /// A connection with no bytes flowing in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// How long connections to a draining or removed backend may linger before being closed.
    /// `None` uses [`LbOptions::default_drain_timeout`].
    pub drain_timeout: Option<Duration>,
    /// Concurrent connections through this rule; beyond it, new connections are accepted and
    /// closed at once. `None` = unlimited.
    pub max_connections: Option<usize>,
    pub backends: Vec<Backend>,
}

impl RuleConfig {
    /// A rule with Azure's defaults (5-tuple hash, 4 minute idle timeout, no limit).
    pub fn new(name: impl Into<String>, frontend: SocketAddr, backend_port: u16, backends: Vec<Backend>) -> Self {
        RuleConfig {
            name: name.into(),
            frontend,
            backend_port,
            distribution: Distribution::Default,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            drain_timeout: None,
            max_connections: None,
            backends,
        }
    }
}

/// How the data plane reaches one backend, and whom it lets through to it. The default: from
/// the kernel's choice of address, everyone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// The address connections to the backend come from. With bridged networking, the
    /// subnet's reserved `.3` (`herd_model::nsg::lb_source`), which the host's NSG table lets
    /// through, because the data plane has checked the client itself (below).
    pub source: Option<IpAddr>,
    /// The backend NIC's inbound network-security-group stages: a client connection is
    /// admitted only if they allow the **client's** address and port to the backend's address
    /// and port, as a Standard load balancer's backends see it in Azure (where the client's
    /// address reaches the NIC). `None`: no NSG, everyone is admitted.
    pub admission: Option<Arc<herd_model::nsg::Stages>>,
}

impl Route {
    /// Whether a connection from `client` may go to `backend` (see [`Route::admission`]). With
    /// rules to check, a client or backend that is not IPv4 is refused: vnets are IPv4.
    pub fn admits(&self, client: SocketAddr, backend: SocketAddr) -> bool {
        let Some(stages) = &self.admission else { return true };
        let v4 = |ip: IpAddr| match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(a) => a.to_ipv4_mapped(),
        };
        let (Some(source), Some(destination)) = (v4(client.ip()), v4(backend.ip())) else { return false };
        let flow = herd_model::nsg::Flow {
            protocol: herd_model::nsg::Protocol::Tcp,
            source,
            source_port: client.port(),
            destination,
            destination_port: backend.port(),
        };
        herd_model::nsg::allows(stages, &flow)
    }
}

/// One member of a rule's backend pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Stable identity (e.g. the instance id). The Maglev table is built from ids, so a backend
    /// keeps its flows when others come and go; unique within a rule.
    pub id: String,
    /// Reach address of the backend; the rule's `backend_port` is appended.
    pub addr: IpAddr,
    /// A draining backend gets no new connections; its existing ones may finish and are closed
    /// after the rule's drain timeout.
    pub draining: bool,
    pub route: Route,
}

impl Backend {
    /// An active (non-draining) backend.
    pub fn new(id: impl Into<String>, addr: IpAddr) -> Self {
        Backend { id: id.into(), addr, draining: false, route: Route::default() }
    }

    /// The same backend, marked draining.
    pub fn draining(mut self) -> Self {
        self.draining = true;
        self
    }

    /// The same backend, reached and guarded by `route`.
    pub fn with_route(mut self, route: Route) -> Self {
        self.route = route;
        self
    }
}

/// An inbound NAT rule: one frontend port forwarded to one target (e.g. an instance's port 22).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatConfig {
    /// Name; unique within a snapshot together with the rule names.
    pub name: String,
    /// Address to listen on (port must not be 0).
    pub frontend: SocketAddr,
    /// Where connections go.
    pub target: SocketAddr,
    /// Idle timeout as for rules.
    pub idle_timeout: Duration,
    /// How the target is reached and whom it admits, as for a rule's backend.
    pub route: Route,
}

impl NatConfig {
    /// A NAT rule with the default idle timeout.
    pub fn new(name: impl Into<String>, frontend: SocketAddr, target: SocketAddr) -> Self {
        NatConfig { name: name.into(), frontend, target, idle_timeout: DEFAULT_IDLE_TIMEOUT, route: Route::default() }
    }
}

/// Process-wide knobs of a [`crate::LoadBalancer`] (not part of the per-LB snapshot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbOptions {
    /// Timeout of one connect attempt to a backend.
    pub connect_timeout: Duration,
    /// Distinct backends tried (in Maglev table order) before a client connection is given up.
    pub max_connect_attempts: usize,
    /// Drain timeout for rules that do not set one, and for NAT rules.
    pub default_drain_timeout: Duration,
    /// Copy buffer per direction per connection.
    pub buffer_size: usize,
    /// `listen(2)` backlog of frontend sockets (the kernel caps it at `net.core.somaxconn`).
    /// Large by default: clients that open many connections at once (10,000 in `herd bench
    /// lb`) must not find the accept queue full, or the kernel drops their SYNs and each such
    /// connection waits a second for the retransmission.
    pub listen_backlog: u32,
    /// Data-plane threads (each with its own listener per frontend); `None`: one per CPU
    /// this process may run on.
    pub threads: Option<usize>,
}

impl Default for LbOptions {
    fn default() -> Self {
        LbOptions {
            connect_timeout: Duration::from_secs(2),
            max_connect_attempts: 3,
            default_drain_timeout: Duration::from_secs(30),
            buffer_size: 16 * 1024,
            listen_backlog: 65_535,
            threads: None,
        }
    }
}

impl LbConfig {
    /// Rejects snapshots that cannot be applied meaningfully. Nothing is applied when this fails.
    pub fn validate(&self) -> Result<(), LbError> {
        let mut names = HashSet::new();
        let mut frontends = HashSet::new();
        let invalid = |msg: String| Err(LbError::InvalidConfig(msg));
        let mut check_common = |name: &str, frontend: SocketAddr, idle: Duration| -> Result<(), LbError> {
            if name.is_empty() {
                return invalid(format!("rule with frontend {frontend} has an empty name"));
            }
            if !names.insert(name.to_string()) {
                return invalid(format!("rule name {name} is used more than once"));
            }
            if frontend.port() == 0 {
                return invalid(format!("frontend {frontend} of rule {name}: port must not be 0"));
            }
            if !frontends.insert(frontend) {
                return invalid(format!("frontend {frontend} of rule {name} is used by another rule"));
            }
            if idle.is_zero() {
                return invalid(format!("rule {name}: idle timeout must be positive"));
            }
            Ok(())
        };
        for rule in &self.rules {
            check_common(&rule.name, rule.frontend, rule.idle_timeout)?;
            if rule.backend_port == 0 {
                return invalid(format!("rule {}: backend port must not be 0", rule.name));
            }
            let mut ids = HashSet::new();
            for b in &rule.backends {
                if !ids.insert(b.id.as_str()) {
                    return invalid(format!("rule {}: backend id {} is used more than once", rule.name, b.id));
                }
            }
        }
        for nat in &self.nat {
            check_common(&nat.name, nat.frontend, nat.idle_timeout)?;
            if nat.target.port() == 0 {
                return invalid(format!("NAT rule {}: target port must not be 0", nat.name));
            }
        }
        Ok(())
    }
}
