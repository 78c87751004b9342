//! The server's pool of public addresses (`[network] public_ip_pool = "CIDR"`): where instance
//! public IPs (`publicIPAddressConfiguration`) come from, as Azure hands each VMSS instance a
//! public IP from its regional pool.
//!
//! Why a type of its own, in the model crate: the configuration reads it, the API checks models
//! and vnets against it (and the public-IP resources and load-balancer frontends will take
//! addresses from it), and the reconciler allocates from it; all of them must agree on which
//! addresses of the prefix are usable. The operator routes the prefix to the host (the host does
//! not answer ARP for it): a routed pool, so herd owns every address in it.
//!
//! Usable addresses: every address of the prefix but the first and the last (the network and
//! broadcast addresses, which some clients treat specially even on a routed prefix), so a /30
//! (the longest prefix allowed) holds two.

use crate::cidr::Cidr;
use crate::network::VirtualNetwork;
use std::net::Ipv4Addr;

/// The setting's name, as errors name it.
pub const SETTING: &str = "[network] public_ip_pool";

/// The longest prefix a pool may have (a /30 holds two usable addresses).
pub const LONGEST_PREFIX: u8 = 30;

/// A validated public pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicIpPool {
    pub cidr: Cidr,
}

impl PublicIpPool {
    /// Parses and checks the setting's value: an IPv4 prefix no longer than /30, outside
    /// loopback, link-local, multicast and 0.0.0.0/8. The error names the setting.
    pub fn parse(s: &str) -> Result<Self, String> {
        let cidr = Cidr::parse(SETTING, s.trim()).map_err(|e| format!("{SETTING}: {}", e.message))?;
        if cidr.len > LONGEST_PREFIX {
            return Err(format!(
                "{SETTING}: {cidr} is too small; allowed prefixes are /{LONGEST_PREFIX} or shorter (a /30 holds 2 addresses)"
            ));
        }
        let reserved = [
            ("loopback", "127.0.0.0/8"),
            ("link-local", "169.254.0.0/16"),
            ("multicast", "224.0.0.0/4"),
            ("'this network'", "0.0.0.0/8"),
            ("reserved", "240.0.0.0/4"),
        ];
        for (what, prefix) in reserved {
            let r = Cidr::parse("", prefix).expect("a valid prefix");
            if r.overlaps(&cidr) {
                return Err(format!(
                    "{SETTING}: {cidr} overlaps the {what} range {r}; use addresses the operator routes to this host"
                ));
            }
        }
        Ok(PublicIpPool { cidr })
    }

    /// Whether `ip` is one of the pool's addresses (usable or not): what the public-IP resources
    /// and load-balancer frontends check an address against.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.cidr.contains(ip)
    }

    /// How many addresses the pool hands out.
    pub fn usable(&self) -> u64 {
        self.cidr.size().saturating_sub(2)
    }

    /// The usable addresses, lowest first.
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        (1..self.cidr.size().saturating_sub(1)).filter_map(|n| self.cidr.nth(n))
    }

    /// The pool overlaps none of `vnets`' address spaces (the NAT could not tell an instance's
    /// public address from another's private one). The error names the setting and the vnet.
    pub fn check_vnets(&self, vnets: &[VirtualNetwork]) -> Result<(), String> {
        for v in vnets {
            if let Some(p) = v.address_space.address_prefixes.iter().find(|p| p.overlaps(&self.cidr)) {
                return Err(format!(
                    "{SETTING}: {} overlaps virtual network '{}' in resource group '{}' ({p}); the pool must be outside every vnet",
                    self.cidr, v.name, v.resource_group
                ));
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for PublicIpPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.cidr.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_is_checked_and_named() {
        let p = PublicIpPool::parse("198.51.100.0/28").unwrap();
        assert_eq!(p.usable(), 14);
        let all: Vec<Ipv4Addr> = p.addresses().collect();
        assert_eq!(all.first(), Some(&Ipv4Addr::new(198, 51, 100, 1)));
        assert_eq!(all.last(), Some(&Ipv4Addr::new(198, 51, 100, 14)));
        assert!(p.contains(Ipv4Addr::new(198, 51, 100, 15)) && !p.contains(Ipv4Addr::new(198, 51, 100, 16)));
        assert_eq!(PublicIpPool::parse("198.51.100.0/30").unwrap().usable(), 2);
        for (bad, why) in [
            ("198.51.100.0/31", "too small"),
            ("127.64.0.0/16", "loopback"),
            ("169.254.0.0/24", "link-local"),
            ("198.51.100.1/28", "host bits"),
            ("nonsense", "not an IPv4 prefix"),
        ] {
            let e = PublicIpPool::parse(bad).unwrap_err();
            assert!(e.starts_with(SETTING) && e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_pool_inside_a_vnet_is_refused() {
        let p = PublicIpPool::parse("10.1.0.0/28").unwrap();
        let v: VirtualNetwork = serde_json::from_value(serde_json::json!({
            "name": "v", "resourceGroup": "rg", "addressSpace": {"addressPrefixes": ["10.0.0.0/15"]}}))
        .unwrap();
        let e = p.check_vnets(std::slice::from_ref(&v)).unwrap_err();
        assert!(e.contains("virtual network 'v'") && e.contains(SETTING), "{e}");
        assert!(PublicIpPool::parse("10.2.0.0/28").unwrap().check_vnets(&[v]).is_ok());
    }
}
