//! Resource groups: the namespace every resource lives in.

use serde::{Deserialize, Serialize};

/// A resource group as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceGroup {
    pub id: String,
    pub name: String,
    pub location: String,
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
    /// `Succeeded`, or `Deleting` while its resources are being removed.
    pub provisioning_state: String,
}

impl ResourceGroup {
    pub fn resource_id(name: &str) -> String {
        format!("/resourceGroups/{name}")
    }
}
