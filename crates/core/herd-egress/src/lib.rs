//! Where herd's own outbound requests may connect.
//!
//! Why: herd fetches URLs that API users choose (an extension's `fileUris`, on the host that
//! runs the instance, the server's machine or a joined host's agent; an autoscale setting's
//! webhooks, on the server) with that machine's network position. Without a policy, a
//! user reaches what only the host should: the loopback addresses where herd's instances, load
//! balancer frontends and API listen (`127.0.0.0/8`, with herd's own ranges `127.128.0.0/9` and
//! `127.64.0.0/10` inside it), a cloud's metadata service on `169.254.169.254`, and link-local
//! neighbours. This crate holds the one [`AddressPolicy`] both callers use and an [`Egress`]
//! client that enforces it on the address actually connected to:
//!
//! - host names are resolved by herd itself (a `reqwest` DNS resolver) and every refused
//!   address is dropped before the connector sees it, so a name that resolves to `127.0.0.1`
//!   (`localhost`, or a DNS record made for the purpose) connects nowhere;
//! - IP-literal hosts skip DNS, so they are checked on the first URL and on every redirect hop
//!   (the redirect policy re-checks each hop; host names in a hop go through the resolver);
//! - proxies from the environment are ignored (through a proxy the check would see only the
//!   proxy's address).
//!
//! The operator opens holes with an allow list (`[extensions] allow_fetch_from`,
//! `[autoscale] allow_webhooks_to`), which wins over every refusal.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// An address range, `10.1.0.0/16`, `fe80::/10`, or a single address (`127.0.0.1` = `/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

/// A range that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not an address range; write one as 10.0.0.0/8, 127.0.0.1/32, ::1/128 or a single address")]
pub struct NetParseError(pub String);

impl Net {
    /// Parses `a.b.c.d/n`, `x::y/n` or a bare address.
    pub fn parse(s: &str) -> Result<Net, NetParseError> {
        let bad = || NetParseError(s.to_string());
        let (ip, prefix) = match s.trim().split_once('/') {
            Some((ip, p)) => (ip, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Net { addr, prefix })
    }

    /// True if `ip` lies in this range (IPv4 ranges never hold IPv6 addresses, and back).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Net {
    type Err = NetParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Net::parse(s)
    }
}

/// Written as the text [`Net::parse`] reads (`10.1.0.0/16`), so rules travel to an agent.
impl serde::Serialize for Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Net::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The ranges refused unless allowed, with why.
const REFUSED: &[(&str, &str)] = &[
    ("127.0.0.0/8", "loopback (herd's instances, public IPs and API live here)"),
    ("::1/128", "loopback"),
    ("0.0.0.0/8", "'this network'"),
    ("::/128", "unspecified"),
    ("169.254.0.0/16", "link-local (cloud metadata services live here)"),
    ("fe80::/10", "link-local"),
];

/// Which addresses an outbound request may connect to.
#[derive(Debug, Clone)]
pub struct AddressPolicy {
    /// The setting that allows more, named in every refusal (`[extensions] allow_fetch_from`).
    setting: &'static str,
    allowed: Vec<Net>,
    /// The default refusals ([`REFUSED`]) first, then those added with [`AddressPolicy::refuse`].
    refused: Vec<(Net, String)>,
}

/// An address the policy refuses.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{addr} is a {why} address, which herd does not connect to unless {setting} in herd.toml allows it")]
pub struct Refused {
    pub addr: IpAddr,
    pub why: String,
    pub setting: &'static str,
}

impl AddressPolicy {
    /// The default refusals, with `allowed` ranges let through; `setting` names the config
    /// setting that holds `allowed`.
    pub fn new(setting: &'static str, allowed: Vec<Net>) -> Self {
        let refused = REFUSED
            .iter()
            .map(|(n, why)| {
                (Net::parse(n).unwrap_or(Net { addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED), prefix: 8 }), why.to_string())
            })
            .collect();
        Self { setting, allowed, refused }
    }

    /// Also refuses `net` (a virtual network's address space, say), unless allowed.
    pub fn refuse(mut self, net: Net, why: impl Into<String>) -> Self {
        self.refused.push((net, why.into()));
        self
    }

    /// The setting named in refusals.
    pub fn setting(&self) -> &'static str {
        self.setting
    }

    /// The ranges the operator allowed.
    pub fn allowed(&self) -> &[Net] {
        &self.allowed
    }

    /// The refusals added to the defaults (with [`AddressPolicy::refuse`]), with why.
    pub fn added_refusals(&self) -> &[(Net, String)] {
        &self.refused[REFUSED.len().min(self.refused.len())..]
    }

    /// Ok if a connection to `ip` is allowed. An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`)
    /// is judged as the IPv4 address it maps.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        let ip = canonical(ip);
        if self.allowed.iter().any(|n| n.contains(ip)) {
            return Ok(());
        }
        match self.refused.iter().find(|(n, _)| n.contains(ip)) {
            Some((_, why)) => Err(Refused { addr: ip, why: why.clone(), setting: self.setting }),
            None => Ok(()),
        }
    }

    /// Checks a URL's host when it is an IP literal (host names are checked by the resolver).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Refused> {
        match url.host() {
            Some(url::Host::Ipv4(a)) => self.check(IpAddr::V4(a)),
            Some(url::Host::Ipv6(a)) => self.check(IpAddr::V6(a)),
            _ => Ok(()),
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Why a request was not sent.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("not a valid URL: {0}")]
    BadUrl(String),
    #[error("only http and https URLs can be fetched, not '{0}'")]
    Scheme(String),
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The HTTP client could not be built (its TLS backend failed to start, say): nothing is sent.
    #[error("the HTTP client could not be set up: {0}")]
    Client(String),
}

/// A host name whose every address the policy refuses.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to {refused}")]
struct NameRefused {
    host: String,
    refused: Refused,
}

struct PolicyResolver(Arc<AddressPolicy>);

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut first_refusal = None;
            let ok: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.check(a.ip()) {
                    Ok(()) => true,
                    Err(r) => {
                        first_refusal.get_or_insert(r);
                        false
                    }
                })
                .collect();
            if ok.is_empty() {
                return Err(match first_refusal {
                    Some(refused) => {
                        Box::new(NameRefused { host, refused }) as Box<dyn std::error::Error + Send + Sync>
                    }
                    None => format!("{host} has no address").into(),
                });
            }
            Ok(Box::new(ok.into_iter()) as Addrs)
        })
    }
}

/// Most redirects followed before a request fails.
pub const MAX_REDIRECTS: usize = 10;

/// An HTTP client that connects only where its policy allows.
#[derive(Clone)]
pub struct Egress {
    policy: Arc<AddressPolicy>,
    /// Never a client without the policy: if building fails, every request fails.
    client: Result<reqwest::Client, String>,
}

impl Egress {
    /// A client enforcing `policy`, with `timeout` over each whole request (connect, redirects
    /// and body).
    pub fn new(policy: AddressPolicy, timeout: Duration) -> Self {
        let policy = Arc::new(policy);
        let hops = policy.clone();
        let redirect = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            if !matches!(attempt.url().scheme(), "http" | "https") {
                let s = attempt.url().scheme().to_string();
                return attempt.error(EgressError::Scheme(s));
            }
            match hops.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(r) => attempt.error(r),
            }
        });
        let client = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(Arc::new(PolicyResolver(policy.clone())))
            .redirect(redirect)
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string());
        Self { policy, client }
    }

    /// The policy enforced.
    pub fn policy(&self) -> &AddressPolicy {
        &self.policy
    }

    /// A request to `url`, refused before any traffic when the URL's host is a refused address.
    pub fn request(&self, method: reqwest::Method, url: &str) -> Result<reqwest::RequestBuilder, EgressError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| EgressError::BadUrl(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(EgressError::Scheme(parsed.scheme().to_string()));
        }
        self.policy.check_url(&parsed)?;
        let client = self.client.as_ref().map_err(|e| EgressError::Client(e.clone()))?;
        Ok(client.request(method, parsed))
    }
}

/// The deepest cause of a reqwest error that herd itself raised (a refusal), if any.
pub fn refusal_in(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(r) = c.downcast_ref::<Refused>() {
            return Some(r.to_string());
        }
        if let Some(r) = c.downcast_ref::<NameRefused>() {
            return Some(r.to_string());
        }
        if let Some(EgressError::Refused(r)) = c.downcast_ref::<EgressError>() {
            return Some(r.to_string());
        }
        cur = c.source();
    }
    None
}

pub mod fetch;

#[cfg(test)]
mod tests;
