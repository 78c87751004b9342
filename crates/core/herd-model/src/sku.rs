//! VM sizes. A SKU name maps to vCPUs and memory; the table has Azure's common sizes and the
//! server's config may add more.

use crate::FieldError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The size of one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SkuSize {
    pub vcpus: u32,
    #[serde(alias = "memory_mib")]
    pub memory_mib: u64,
}

/// The known SKUs, by name (case-insensitive lookup, canonical spelling kept).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SkuTable(BTreeMap<String, SkuSize>);

impl Default for SkuTable {
    fn default() -> Self {
        let mut t = BTreeMap::new();
        for (name, vcpus, gib) in [
            ("Standard_B1ls", 1, 0.5),
            ("Standard_B1s", 1, 1.0),
            ("Standard_B1ms", 1, 2.0),
            ("Standard_B2s", 2, 4.0),
            ("Standard_B2ms", 2, 8.0),
            ("Standard_B4ms", 4, 16.0),
            ("Standard_A1_v2", 1, 2.0),
            ("Standard_A2_v2", 2, 4.0),
            ("Standard_D2s_v3", 2, 8.0),
            ("Standard_D4s_v3", 4, 16.0),
            ("Standard_D8s_v3", 8, 32.0),
            ("Standard_DS1_v2", 1, 3.5),
            ("Standard_DS2_v2", 2, 7.0),
            ("Standard_F2s_v2", 2, 4.0),
            ("Standard_F4s_v2", 4, 8.0),
        ] {
            t.insert(name.to_string(), SkuSize { vcpus, memory_mib: (gib * 1024.0) as u64 });
        }
        Self(t)
    }
}

impl SkuTable {
    pub fn insert(&mut self, name: impl Into<String>, size: SkuSize) {
        self.0.insert(name.into(), size);
    }

    /// Finds a SKU by name, ignoring case as Azure does; returns the canonical name.
    pub fn lookup(&self, name: &str) -> Option<(&str, SkuSize)> {
        self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(k, v)| (k.as_str(), *v))
    }

    pub fn resolve(&self, field: &str, name: &str) -> Result<(&str, SkuSize), FieldError> {
        self.lookup(name).ok_or_else(|| {
            let names: Vec<&str> = self.0.keys().map(String::as_str).collect();
            FieldError::one_of(field, name, &names)
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &SkuSize)> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_is_case_insensitive_and_errors_list_names() {
        let t = SkuTable::default();
        assert_eq!(t.lookup("standard_b1ms").unwrap().0, "Standard_B1ms");
        assert_eq!(t.lookup("Standard_B1ms").unwrap().1.memory_mib, 2048);
        let e = t.resolve("sku.name", "Huge").unwrap_err();
        assert_eq!(e.field, "sku.name");
        assert!(e.message.contains("Standard_B1ms"));
    }
}
