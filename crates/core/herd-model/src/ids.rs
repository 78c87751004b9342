//! Typed identifiers. They cross every crate boundary instead of bare strings and integers,
//! and each one validates itself on construction.

use crate::FieldError;
use serde::{Deserialize, Serialize};
use std::fmt;

fn check_name(field: &str, s: &str, max: usize, extra: &[char]) -> Result<(), FieldError> {
    if s.is_empty() || s.len() > max {
        return Err(FieldError::new(field, format!("must be 1 to {max} characters, got {}", s.len())));
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || extra.contains(&c);
    if let Some(bad) = s.chars().find(|c| !ok_char(*c)) {
        let allowed: String = extra.iter().map(|c| format!(" '{c}'")).collect();
        return Err(FieldError::new(
            field,
            format!("character '{bad}' is not allowed; use letters, digits and{allowed}"),
        ));
    }
    if !s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        return Err(FieldError::new(field, "must start with a letter or digit"));
    }
    if s.ends_with('.') {
        return Err(FieldError::new(field, "must not end with '.'"));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $t:ident, $field:expr, $max:expr, $extra:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $t(String);

        impl $t {
            pub fn new(s: impl Into<String>) -> Result<Self, FieldError> {
                let s = s.into();
                check_name($field, &s, $max, $extra)?;
                Ok(Self(s))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $t {
            type Error = FieldError;
            fn try_from(s: String) -> Result<Self, FieldError> {
                Self::new(s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A resource group name (Azure's rule: 1–90 of letters, digits, `-_.()`).
    GroupName, "resourceGroup", 90, &['-', '_', '.', '(', ')']
);
name_type!(
    /// A scale set name (1–64 of letters, digits, `-_.`).
    ScaleSetName, "name", 64, &['-', '_', '.']
);
name_type!(
    /// A host's name (`herd agent --name`): a DNS label, 1–63 of letters, digits and `-`, as it
    /// is the subject of the host's agent certificate and shown in every placement.
    HostName, "name", 63, &['-']
);

/// A scale-set instance id: an integer that is never reused within its set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstanceId(pub u64);

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl InstanceId {
    /// The id in lower-case base 36, zero-padded to 6, as Azure's computer names use it
    /// (10 → `00000a`, 1146 → `0000vu`). Ids beyond `zzzzzz` wrap, as in Azure.
    pub fn base36(self) -> String {
        const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut n = self.0 % 36u64.pow(6);
        let mut out = [b'0'; 6];
        for slot in out.iter_mut().rev() {
            *slot = DIGITS[(n % 36) as usize];
            n /= 36;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Where one instance lives: group, set and id. Drivers key everything on this.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InstanceKey {
    pub group: GroupName,
    pub set: ScaleSetName,
    pub id: InstanceId,
}

impl InstanceKey {
    /// A flat, filesystem- and label-safe form: `group/set/id`.
    pub fn path(&self) -> String {
        format!("{}/{}/{}", self.group, self.set, self.id)
    }

    pub fn parse_path(s: &str) -> Option<Self> {
        let mut it = s.split('/');
        let group = GroupName::new(it.next()?).ok()?;
        let set = ScaleSetName::new(it.next()?).ok()?;
        let id = InstanceId(it.next()?.parse().ok()?);
        if it.next().is_some() {
            return None;
        }
        Some(Self { group, set, id })
    }
}

impl fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path())
    }
}

/// An image URN `publisher:offer:sku:version`; `version` may be `latest`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ImageUrn {
    pub publisher: String,
    pub offer: String,
    pub sku: String,
    pub version: String,
}

impl ImageUrn {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 4 || parts.iter().any(|p| p.is_empty()) {
            return Err(FieldError::new(
                "image",
                format!("'{s}' is not an image URN; expected publisher:offer:sku:version (version may be 'latest')"),
            ));
        }
        for (field, p) in ["publisher", "offer", "sku", "version"].iter().zip(&parts) {
            check_name(&format!("image.{field}"), p, 64, &['-', '_', '.'])?;
        }
        let version = parts[3].to_string();
        if version != "latest" && Version::parse(&version).is_none() {
            return Err(FieldError::new(
                "image.version",
                format!("'{version}' is not a version; use digits separated by dots (1.0.0) or 'latest'"),
            ));
        }
        Ok(Self { publisher: parts[0].into(), offer: parts[1].into(), sku: parts[2].into(), version })
    }

    pub fn is_latest(&self) -> bool {
        self.version == "latest"
    }

    /// The same image family at another version.
    pub fn with_version(&self, version: &str) -> Self {
        Self { version: version.into(), ..self.clone() }
    }

    /// True when `other` is the same publisher/offer/sku, any version.
    pub fn same_family(&self, other: &Self) -> bool {
        self.publisher.eq_ignore_ascii_case(&other.publisher)
            && self.offer.eq_ignore_ascii_case(&other.offer)
            && self.sku.eq_ignore_ascii_case(&other.sku)
    }
}

impl fmt::Display for ImageUrn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}:{}", self.publisher, self.offer, self.sku, self.version)
    }
}

/// A dotted numeric version, compared numerically (1.0.10 > 1.0.9).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub Vec<u64>);

impl Version {
    pub fn parse(s: &str) -> Option<Self> {
        let parts: Option<Vec<u64>> = s.split('.').map(|p| p.parse().ok()).collect();
        parts.filter(|p| !p.is_empty()).map(Version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_matches_azure_examples() {
        assert_eq!(InstanceId(10).base36(), "00000a");
        assert_eq!(InstanceId(1146).base36(), "0000vu");
        assert_eq!(InstanceId(0).base36(), "000000");
        assert_eq!(InstanceId(2_176_782_335).base36(), "zzzzzz");
        assert_eq!(InstanceId(2_176_782_336).base36(), "000000");
    }

    #[test]
    fn names_are_checked() {
        assert!(GroupName::new("web-rg").is_ok());
        assert!(GroupName::new("").is_err());
        assert!(GroupName::new("a b").unwrap_err().message.contains("' '"));
        assert!(ScaleSetName::new("x".repeat(65)).is_err());
        assert!(ScaleSetName::new("web.").is_err());
        assert!(ScaleSetName::new("-web").is_err());
    }

    #[test]
    fn urns_parse_and_reject() {
        let u = ImageUrn::parse("Herd:TestGuest:1:1.0.0").unwrap();
        assert_eq!(u.to_string(), "Herd:TestGuest:1:1.0.0");
        assert!(ImageUrn::parse("Herd:TestGuest:1:latest").unwrap().is_latest());
        assert_eq!(ImageUrn::parse("Herd:TestGuest:1").unwrap_err().field, "image");
        assert_eq!(ImageUrn::parse("a:b:c:1.x").unwrap_err().field, "image.version");
        assert!(Version::parse("1.0.10") > Version::parse("1.0.9"));
    }

    #[test]
    fn instance_key_round_trips() {
        let k = InstanceKey {
            group: GroupName::new("g").unwrap(),
            set: ScaleSetName::new("s").unwrap(),
            id: InstanceId(7),
        };
        assert_eq!(InstanceKey::parse_path(&k.path()), Some(k));
        assert_eq!(InstanceKey::parse_path("g/s"), None);
    }
}
