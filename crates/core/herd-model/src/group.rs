//! Resource groups: the namespace every resource lives in.

use serde::{Deserialize, Serialize};

string_enum!(
    /// Where a resource group is in its life: `Succeeded` once created, `Deleting` from
    /// `DELETE` until the reconciler has removed its scale sets and then the group.
    ///
    /// ```text
    ///   (PUT) ──▶ Succeeded ──DELETE──▶ Deleting ──last set removed──▶ (gone)
    /// ```
    GroupProvisioningState {
        Succeeded = "Succeeded",
        Deleting = "Deleting",
    } default Succeeded
);

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
    #[schema(value_type = String)]
    pub provisioning_state: GroupProvisioningState,
}

impl ResourceGroup {
    pub fn resource_id(name: &str) -> String {
        format!("/resourceGroups/{name}")
    }
}
