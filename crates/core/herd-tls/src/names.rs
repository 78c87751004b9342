//! Which names and addresses the server's certificate is valid for.
//!
//! Why it is computed and not configured: a user who starts `herd server` and points the CLI at
//! the address it listens on must be trusted with no flag. So the certificate covers the listen
//! address (every address of this machine when it listens on `0.0.0.0` or `::`), `localhost`
//! and the loopback addresses, this machine's host name, and whatever `--tls-san` adds (a DNS
//! name or a load balancer's address in front of the server). The set is sorted, so the same
//! flags give the same certificate request and a restart does not reissue it.

use crate::{Leaf, TlsError};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The server certificate's subject for a server listening on `listen`, with the extra subject
/// alternative names `sans` (each a DNS name or an IP address).
pub fn server_leaf(listen: SocketAddr, sans: &[String]) -> Result<Leaf, TlsError> {
    let mut names = BTreeSet::from(["localhost".to_string()]);
    let mut addresses = BTreeSet::from([IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)]);
    if listen.ip().is_unspecified() {
        addresses.extend(local_addresses());
        if let Some(host) = host_name() {
            names.insert(host);
        }
    } else {
        addresses.insert(listen.ip());
    }
    for san in sans {
        let san = san.trim();
        if let Ok(ip) = san.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            addresses.insert(ip);
        } else if is_dns_name(san) {
            names.insert(san.to_ascii_lowercase());
        } else {
            return Err(TlsError::invalid(
                "--tls-san",
                format!("'{san}' is neither an IP address nor a DNS name (letters, digits, '-' and '.', labels of 1 to 63 characters, '*.' allowed first)"),
            ));
        }
    }
    Ok(Leaf::Server { names: names.into_iter().collect(), addresses: addresses.into_iter().collect() })
}

/// A DNS name as certificates carry them: labels of letters, digits and '-', not starting or
/// ending with '-', optionally a leading `*.` wildcard.
fn is_dns_name(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Every address configured on this machine's interfaces (this network namespace's).
fn local_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|s| {
            if let Some(v4) = s.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        // Link-local v6 addresses need a scope to be dialled: no client names them in a URL.
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
        .collect()
}

fn host_name() -> Option<String> {
    let h = nix::unistd::gethostname().ok()?.into_string().ok()?.to_ascii_lowercase();
    is_dns_name(&h).then_some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(leaf: Leaf) -> (Vec<String>, Vec<IpAddr>) {
        match leaf {
            Leaf::Server { names, addresses } => (names, addresses),
            Leaf::Agent { .. } => unreachable!(),
        }
    }

    #[test]
    fn a_loopback_listener_covers_loopback_and_the_extra_names() {
        let sans = vec!["herd.example.com".to_string(), "10.1.2.3".to_string(), "[fd00::5]".to_string()];
        let (names, addrs) = parts(server_leaf("127.0.0.1:7900".parse().unwrap(), &sans).unwrap());
        assert_eq!(names, vec!["herd.example.com", "localhost"]);
        let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        assert_eq!(shown, vec!["10.1.2.3", "127.0.0.1", "::1", "fd00::5"]);
        // The same flags give the same subject: no reissue at restart.
        assert_eq!(server_leaf("127.0.0.1:1".parse().unwrap(), &sans).unwrap(), {
            server_leaf("127.0.0.1:7900".parse().unwrap(), &sans).unwrap()
        });
    }

    #[test]
    fn a_wildcard_listener_covers_this_machines_addresses() {
        let (_, addrs) = parts(server_leaf("0.0.0.0:7900".parse().unwrap(), &[]).unwrap());
        assert!(addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{addrs:?}");
        assert!(!addrs.iter().any(IpAddr::is_unspecified), "{addrs:?}");
    }

    #[test]
    fn a_bad_name_is_refused_naming_the_flag() {
        for bad in ["bad name", "-x.example", "a..b", "ünï.example"] {
            let err = server_leaf("127.0.0.1:7900".parse().unwrap(), &[bad.to_string()]).unwrap_err();
            assert!(err.to_string().starts_with("--tls-san: '"), "{bad}: {err}");
        }
        assert!(server_leaf("127.0.0.1:7900".parse().unwrap(), &["*.herd.example".into()]).is_ok());
    }
}
