//! Every store key herd writes, as a type that formats it and parses it back.
//!
//! Why: the store is `Kind` + string key + JSON, and before this module each crate formatted its
//! keys by hand (`format!("{group}/{set}")`, a zero-padded id here, a lower-cased name there).
//! One typo and two crates read different records. Here each key format is written once; the
//! strings are exactly those already stored, so no data moves (the tests pin every format).
//!
//! | key type            | kinds                                            | format                          |
//! |---------------------|--------------------------------------------------|---------------------------------|
//! | [`GroupKey`]        | `Group`                                          | `group`                         |
//! | [`SetKey`]          | `ScaleSet`, `ScaleSetStatus`, `Secret`, `Meter`  | `group/set`                     |
//! | [`InstanceRecordKey`] | `Instance`                                     | `group/set/<id, 10 digits>`     |
//! | [`ModelHistoryKey`] | `ModelHistory`                                   | `group/set/<generation, 10 digits>` |
//! | [`HealthKey`]       | (the in-memory health board)                     | `group/set/<id>`                |
//! | [`ResourceKey`]     | `VirtualNetwork`, `PublicIp`, `LoadBalancer`     | `group/name`                    |
//! | [`AutoscaleKey`]    | `AutoscaleSetting`, `AutoscaleHistory`, `MetricSource` | `group/name`, lower-cased |
//! | [`SourceSecretKey`] | `Secret`                                         | `source/group/<name lower-cased>` |
//! | [`SeriesKey`]       | `MetricSeries`                                   | `vmss/group/set/<metric>`       |
//! | [`SourceSeriesKey`] | `MetricSeries`                                   | `source/group/<name lower-cased>` |
//! | [`ImageKey`]        | `Image`                                          | the URN, lower-cased            |
//! | [`CounterKey`]      | `Counter`                                        | a fixed name per counter        |
//!
//! Formatting never fails (a key is built from values the caller already holds); parsing a key
//! read back from the store does, with a [`KeyError`] naming the key and what is wrong.

use herd_model::ids::{GroupName, ImageUrn, InstanceId, InstanceKey, ScaleSetName};
use herd_model::scale_set::StoredScaleSet;
use std::fmt;
use std::str::FromStr;

/// A stored key that does not have the shape its type expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{key}' is not a {what} key: {reason}")]
pub struct KeyError {
    /// Which key type was parsed (`scale set`, `instance record`...).
    pub what: &'static str,
    pub key: String,
    pub reason: KeyErrorReason,
}

/// What is wrong with a key that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyErrorReason {
    #[error("expected {expected} '/'-separated parts, found {found}")]
    Parts { expected: usize, found: usize },
    #[error("part {part:?} is not a valid name: {source}")]
    Name {
        part: String,
        #[source]
        source: herd_model::FieldError,
    },
    #[error("part {part:?} is not a number: {source}")]
    Number {
        part: String,
        #[source]
        source: std::num::ParseIntError,
    },
    #[error("it must start with {0:?}")]
    Prefix(&'static str),
    #[error("it is not a known counter")]
    UnknownCounter,
}

fn split<'a>(what: &'static str, key: &'a str, n: usize) -> Result<Vec<&'a str>, KeyError> {
    let parts: Vec<&str> = key.split('/').collect();
    if parts.len() != n {
        return Err(KeyError {
            what,
            key: key.into(),
            reason: KeyErrorReason::Parts { expected: n, found: parts.len() },
        });
    }
    Ok(parts)
}

/// [`split`] of what follows `prefix` (errors name the whole key).
fn split_prefixed<'a>(
    what: &'static str,
    key: &'a str,
    prefix: &'static str,
    n: usize,
) -> Result<Vec<&'a str>, KeyError> {
    let rest = key.strip_prefix(prefix).ok_or_else(|| KeyError {
        what,
        key: key.into(),
        reason: KeyErrorReason::Prefix(prefix),
    })?;
    split(what, rest, n).map_err(|e| KeyError { key: key.into(), ..e })
}

/// A key type's text both ways: `Display` writes the key (`|key, f| ...`, the key as `key`)
/// and `FromStr` parses it back (`|s| ...`, answering `Result<Self, KeyError>`).
macro_rules! key_text {
    ($key:ty, |$k:ident, $f:ident| $write:expr, |$s:ident| $parse:expr) => {
        impl fmt::Display for $key {
            fn fmt(&self, $f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let $k = self;
                $write
            }
        }

        impl FromStr for $key {
            type Err = KeyError;
            fn from_str($s: &str) -> Result<Self, KeyError> {
                $parse
            }
        }
    };
}

/// [`key_text!`] for a key of two free-form parts, `group/name`, made with `new`.
macro_rules! group_name_key {
    ($key:ty, $what:literal) => {
        key_text!($key, |k, f| write!(f, "{}/{}", k.group, k.name), |s| {
            let p = split($what, s, 2)?;
            Ok(Self::new(p[0], p[1]))
        });
    };
}

/// The set named by the parts `group` and `set` of `key`.
fn set_key(what: &'static str, key: &str, group: &str, set: &str) -> Result<SetKey, KeyError> {
    Ok(SetKey { group: self::group(what, key, group)?, set: set_name(what, key, set)? })
}

/// `group/set/<id>` (the id padded or not) as an instance key.
fn instance_key(what: &'static str, key: &str) -> Result<InstanceKey, KeyError> {
    let p = split(what, key, 3)?;
    Ok(InstanceKey {
        group: group(what, key, p[0])?,
        set: set_name(what, key, p[1])?,
        id: InstanceId(number(what, key, p[2])?),
    })
}

fn group(what: &'static str, key: &str, part: &str) -> Result<GroupName, KeyError> {
    GroupName::new(part).map_err(|source| KeyError {
        what,
        key: key.into(),
        reason: KeyErrorReason::Name { part: part.into(), source },
    })
}

fn set_name(what: &'static str, key: &str, part: &str) -> Result<ScaleSetName, KeyError> {
    ScaleSetName::new(part).map_err(|source| KeyError {
        what,
        key: key.into(),
        reason: KeyErrorReason::Name { part: part.into(), source },
    })
}

fn number(what: &'static str, key: &str, part: &str) -> Result<u64, KeyError> {
    part.parse().map_err(|source| KeyError {
        what,
        key: key.into(),
        reason: KeyErrorReason::Number { part: part.into(), source },
    })
}

/// Lists every key of a kind.
pub const ALL: &str = "";

/// A resource group (`Kind::Group`): its name as given.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey(pub String);

impl GroupKey {
    pub fn new(group: impl Into<String>) -> Self {
        Self(group.into())
    }

    /// The prefix under which every `group/...` key of this group lists (`group/`).
    pub fn children(&self) -> String {
        format!("{}/", self.0)
    }
}

impl fmt::Display for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A scale set (`group/set`): the key of its model (`ScaleSet`), its reconciler status
/// (`ScaleSetStatus`), its sealed secrets (`Secret`) and its cost meter (`Meter`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SetKey {
    pub group: GroupName,
    pub set: ScaleSetName,
}

impl SetKey {
    pub fn new(group: GroupName, set: ScaleSetName) -> Self {
        Self { group, set }
    }

    /// The key of a set named by unvalidated strings (a URI, a query): an error when either is
    /// not a valid name, and so cannot be stored.
    pub fn from_parts(group: &str, set: &str) -> Result<Self, KeyError> {
        set_key("scale set", &format!("{group}/{set}"), group, set)
    }

    pub fn of(set: &StoredScaleSet) -> Self {
        Self { group: set.group.clone(), set: set.name.clone() }
    }

    /// The set an instance belongs to.
    pub fn of_instance(key: &InstanceKey) -> Self {
        Self { group: key.group.clone(), set: key.set.clone() }
    }

    /// The prefix under which the set's instance records and model history list (`group/set/`).
    pub fn children(&self) -> String {
        format!("{self}/")
    }

    pub fn instance(&self, id: InstanceId) -> InstanceRecordKey {
        InstanceRecordKey(InstanceKey { group: self.group.clone(), set: self.set.clone(), id })
    }

    pub fn history(&self, generation: u64) -> ModelHistoryKey {
        ModelHistoryKey { set: self.clone(), generation }
    }
}

key_text!(SetKey, |k, f| write!(f, "{}/{}", k.group, k.set), |s| {
    let p = split("scale set", s, 2)?;
    set_key("scale set", s, p[0], p[1])
});

/// An instance record (`Kind::Instance`): `group/set/<id>` with the id zero-padded to 10
/// digits, so a set's records list in id order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceRecordKey(pub InstanceKey);

impl InstanceRecordKey {
    pub fn new(key: InstanceKey) -> Self {
        Self(key)
    }

    pub fn set(&self) -> SetKey {
        SetKey::of_instance(&self.0)
    }
}

key_text!(InstanceRecordKey, |k, f| write!(f, "{}/{}/{:010}", k.0.group, k.0.set, k.0.id.0), |s| {
    instance_key("instance record", s).map(Self)
});

/// One model generation of a set as it was (`Kind::ModelHistory`): `group/set/<generation>`,
/// zero-padded to 10 digits so keys sort by generation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModelHistoryKey {
    pub set: SetKey,
    pub generation: u64,
}

key_text!(ModelHistoryKey, |k, f| write!(f, "{}/{:010}", k.set, k.generation), |s| {
    const W: &str = "model history";
    let p = split(W, s, 3)?;
    Ok(Self { set: set_key(W, s, p[0], p[1])?, generation: number(W, s, p[2])? })
});

/// An instance's entry on the health board: `group/set/<id>`, the id not padded (the same string
/// as [`InstanceKey::path`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HealthKey(pub InstanceKey);

impl HealthKey {
    pub fn of(set: &StoredScaleSet, id: InstanceId) -> Self {
        Self(InstanceKey { group: set.group.clone(), set: set.name.clone(), id })
    }
}

key_text!(HealthKey, |k, f| write!(f, "{}/{}/{}", k.0.group, k.0.set, k.0.id), |s| {
    instance_key("health", s).map(Self)
});

/// A network resource (`VirtualNetwork`, `PublicIp`, `LoadBalancer`): `group/name` as given.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    pub group: String,
    pub name: String,
}

impl ResourceKey {
    pub fn new(group: impl Into<String>, name: impl Into<String>) -> Self {
        Self { group: group.into(), name: name.into() }
    }
}

group_name_key!(ResourceKey, "network resource");

/// An autoscale setting, its evaluation history, or a metric source: `group/name`, both
/// lower-cased (names are case-insensitive there, as in Azure).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AutoscaleKey {
    group: String,
    name: String,
}

impl AutoscaleKey {
    pub fn new(group: &str, name: &str) -> Self {
        Self { group: group.to_ascii_lowercase(), name: name.to_ascii_lowercase() }
    }

    /// The prefix that lists a group's settings or sources (`group/`, lower-cased).
    pub fn group_prefix(group: &str) -> String {
        format!("{}/", group.to_ascii_lowercase())
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

group_name_key!(AutoscaleKey, "autoscale");

/// A metric source's protected settings (`Kind::Secret`): `source/group/<name lower-cased>`.
/// The group keeps its case, as it always has.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceSecretKey {
    group: String,
    name: String,
}

impl SourceSecretKey {
    const PREFIX: &'static str = "source/";

    pub fn new(group: &str, name: &str) -> Self {
        Self { group: group.into(), name: name.to_ascii_lowercase() }
    }
}

key_text!(SourceSecretKey, |k, f| write!(f, "{}{}/{}", Self::PREFIX, k.group, k.name), |s| {
    let p = split_prefixed("metric source secret", s, Self::PREFIX, 2)?;
    Ok(Self::new(p[0], p[1]))
});

/// A scale set's metric time series (`Kind::MetricSeries`): `vmss/group/set/<metric>`, the
/// metric lower-cased with spaces as dashes (`Percentage CPU` → `percentage-cpu`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    set: SetKey,
    metric: String,
}

impl SeriesKey {
    const PREFIX: &'static str = "vmss/";

    pub fn new(set: SetKey, metric: &str) -> Self {
        Self { set, metric: metric.to_ascii_lowercase().replace(' ', "-") }
    }

    pub fn set(&self) -> &SetKey {
        &self.set
    }

    pub fn metric(&self) -> &str {
        &self.metric
    }
}

key_text!(SeriesKey, |k, f| write!(f, "{}{}/{}", Self::PREFIX, k.set, k.metric), |s| {
    const W: &str = "metric series";
    let p = split_prefixed(W, s, Self::PREFIX, 3)?;
    Ok(Self::new(set_key(W, s, p[0], p[1])?, p[2]))
});

/// A named metric source's time series (`Kind::MetricSeries`): `source/group/<name
/// lower-cased>` (the same string as the source's [`SourceSecretKey`], under another kind).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceSeriesKey(SourceSecretKey);

impl SourceSeriesKey {
    pub fn new(group: &str, name: &str) -> Self {
        Self(SourceSecretKey::new(group, name))
    }
}

key_text!(SourceSeriesKey, |k, f| k.0.fmt(f), |s| {
    s.parse::<SourceSecretKey>().map(Self).map_err(|e| KeyError { what: "metric source series", ..e })
});

/// A gallery image (`Kind::Image`): its URN, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageKey(String);

impl ImageKey {
    pub fn new(urn: &ImageUrn) -> Self {
        Self(urn.to_string().to_ascii_lowercase())
    }
}

impl fmt::Display for ImageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The server-wide values under `Kind::Counter`, one fixed key each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CounterKey {
    /// The next host-local reach address (`hostlocal-address`).
    HostlocalAddress,
    /// The instances the driver runs that herd has no record of (`unmanaged-instances`).
    UnmanagedInstances,
}

impl CounterKey {
    pub const ALL: [CounterKey; 2] = [CounterKey::HostlocalAddress, CounterKey::UnmanagedInstances];

    pub const fn as_str(self) -> &'static str {
        match self {
            CounterKey::HostlocalAddress => "hostlocal-address",
            CounterKey::UnmanagedInstances => "unmanaged-instances",
        }
    }
}

key_text!(CounterKey, |k, f| f.write_str(k.as_str()), |s| {
    Self::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| KeyError {
        what: "counter",
        key: s.into(),
        reason: KeyErrorReason::UnknownCounter,
    })
});

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> SetKey {
        SetKey::new(GroupName::new("Web-RG").unwrap(), ScaleSetName::new("web").unwrap())
    }

    fn roundtrip<K: FromStr<Err = KeyError> + fmt::Display + PartialEq + fmt::Debug>(k: &K, s: &str) {
        assert_eq!(k.to_string(), s);
        assert_eq!(&s.parse::<K>().unwrap(), k);
    }

    /// The exact strings already in users' stores: changing any of them orphans stored data.
    #[test]
    fn formats_are_pinned() {
        assert_eq!(GroupKey::new("Web-RG").to_string(), "Web-RG");
        assert_eq!(GroupKey::new("Web-RG").children(), "Web-RG/");
        roundtrip(&set(), "Web-RG/web");
        assert_eq!(set().children(), "Web-RG/web/");
        roundtrip(&set().instance(InstanceId(42)), "Web-RG/web/0000000042");
        roundtrip(&set().history(7), "Web-RG/web/0000000007");
        roundtrip(&HealthKey(set().instance(InstanceId(42)).0), "Web-RG/web/42");
        roundtrip(&ResourceKey::new("Web-RG", "Front LB"), "Web-RG/Front LB");
        roundtrip(&AutoscaleKey::new("web-rg", "cpu"), "web-rg/cpu");
        assert_eq!(AutoscaleKey::new("Web-RG", "CPU").to_string(), "web-rg/cpu");
        assert_eq!(AutoscaleKey::group_prefix("Web-RG"), "web-rg/");
        roundtrip(&SourceSecretKey::new("Web-RG", "queue"), "source/Web-RG/queue");
        assert_eq!(SourceSecretKey::new("Web-RG", "Queue").to_string(), "source/Web-RG/queue");
        roundtrip(&SeriesKey::new(set(), "percentage-cpu"), "vmss/Web-RG/web/percentage-cpu");
        roundtrip(&SourceSeriesKey::new("Web-RG", "queue"), "source/Web-RG/queue");
        assert_eq!(SourceSeriesKey::new("Web-RG", "Queue").to_string(), "source/Web-RG/queue");
        assert_eq!(SeriesKey::new(set(), "Percentage CPU").to_string(), "vmss/Web-RG/web/percentage-cpu");
        let urn = ImageUrn::parse("Canonical:Ubuntu:22_04-LTS:22.04.1").unwrap();
        assert_eq!(ImageKey::new(&urn).to_string(), "canonical:ubuntu:22_04-lts:22.04.1");
        roundtrip(&CounterKey::HostlocalAddress, "hostlocal-address");
        roundtrip(&CounterKey::UnmanagedInstances, "unmanaged-instances");
        assert_eq!(ALL, "");
    }

    /// The keys agree with the model's own helpers they replace.
    #[test]
    fn agree_with_model_helpers() {
        let k = set().instance(InstanceId(3));
        assert_eq!(HealthKey(k.0.clone()).to_string(), k.0.path());
        assert_eq!(set().to_string(), StoredScaleSet::store_key(&set().group, &set().set));
        let urn = ImageUrn::parse("a:B:c:1.0").unwrap();
        assert_eq!(ImageKey::new(&urn).to_string(), herd_model::image::Image::key(&urn));
    }

    #[test]
    fn parse_errors_are_typed() {
        let e = "rg/web".parse::<InstanceRecordKey>().unwrap_err();
        assert_eq!(e.reason, KeyErrorReason::Parts { expected: 3, found: 2 });
        assert_eq!(e.key, "rg/web");
        let e = "rg/web/x1".parse::<InstanceRecordKey>().unwrap_err();
        assert!(matches!(e.reason, KeyErrorReason::Number { ref part, .. } if part == "x1"), "{e}");
        let e = "r g/web".parse::<SetKey>().unwrap_err();
        assert!(matches!(e.reason, KeyErrorReason::Name { ref part, .. } if part == "r g"), "{e}");
        assert!(std::error::Error::source(&e.reason).is_some());
        let e = "rg/web/cpu".parse::<SeriesKey>().unwrap_err();
        assert_eq!(e.reason, KeyErrorReason::Prefix("vmss/"));
        let e = "next-id".parse::<CounterKey>().unwrap_err();
        assert_eq!(e.reason, KeyErrorReason::UnknownCounter);
        assert_eq!(e.to_string(), "'next-id' is not a counter key: it is not a known counter");
    }
}
