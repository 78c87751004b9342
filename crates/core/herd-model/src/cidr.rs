//! IPv4 prefixes (`10.0.0.0/24`): parsing, containment, overlap, and host addresses. Vnets and
//! subnets are validated with these, and IPAM hands out addresses from them.

use crate::FieldError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;

/// An IPv4 network prefix whose address has no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Cidr {
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldError> {
        let bad = |why: &str| FieldError::new(field, format!("'{s}' is not an IPv4 prefix like 10.0.0.0/16: {why}"));
        let (a, l) = s.split_once('/').ok_or_else(|| bad("missing '/length'"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad("bad address"))?;
        let len: u8 = l.parse().map_err(|_| bad("bad length"))?;
        if len > 32 {
            return Err(bad("length must be 0 to 32"));
        }
        let c = Cidr { addr, len };
        if u32::from(addr) & !c.mask() != 0 {
            return Err(bad(&format!(
                "host bits are set; did you mean {}?",
                Cidr { addr: Ipv4Addr::from(u32::from(addr) & c.mask()), len }
            )));
        }
        Ok(c)
    }

    pub fn mask(&self) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - self.len)
        }
    }

    pub fn size(&self) -> u64 {
        1u64 << (32 - self.len)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// True if every address of `other` is inside `self`.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.covers(other) || other.covers(self)
    }

    /// The `n`th address of the prefix (0 = the network address).
    pub fn nth(&self, n: u64) -> Option<Ipv4Addr> {
        (n < self.size()).then(|| Ipv4Addr::from(u32::from(self.addr) + n as u32))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl TryFrom<String> for Cidr {
    type Error = FieldError;
    fn try_from(s: String) -> Result<Self, FieldError> {
        Cidr::parse("addressPrefix", &s)
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_contain_overlap() {
        let vnet = Cidr::parse("p", "10.0.0.0/16").unwrap();
        let a = Cidr::parse("p", "10.0.0.0/24").unwrap();
        let b = Cidr::parse("p", "10.0.1.0/24").unwrap();
        let outside = Cidr::parse("p", "10.1.0.0/24").unwrap();
        assert!(vnet.covers(&a) && vnet.covers(&b) && !vnet.covers(&outside));
        assert!(!a.overlaps(&b) && a.overlaps(&vnet));
        assert_eq!(a.nth(4), Some(Ipv4Addr::new(10, 0, 0, 4)));
        assert_eq!(a.size(), 256);
        assert!(Cidr::parse("p", "10.0.0.1/24").unwrap_err().message.contains("10.0.0.0/24"));
        assert!(Cidr::parse("p", "10.0.0.0").is_err());
        assert!(Cidr::parse("p", "10.0.0.0/33").is_err());
        assert!(Cidr::parse("p", "300.0.0.0/8").is_err());
    }
}
