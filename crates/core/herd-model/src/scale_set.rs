//! Scale sets: the Azure-shaped model a user writes, the record herd stores, and validation.
//!
//! The JSON follows `az vmss show` (Azure's `properties` flattened), so that
//! `herd vmss update --set virtualMachineProfile.storageProfile.imageReference.version=1.0.1`
//! addresses exactly the path an Azure user knows. Fields that exist in Azure's model but whose
//! behaviour herd does not have yet are accepted by the parser only to be refused by
//! [`ScaleSetModel::validate`] with a "not supported yet" error: never silently ignored.

use crate::{
    extension::ExtensionProfile, ids::ImageUrn, network::SubResource, sku::SkuTable, FieldError, GroupName,
    ScaleSetName,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Capacity limit of one placement group (Azure's default `singlePlacementGroup=true`).
pub const SINGLE_PLACEMENT_GROUP_MAX: u64 = 100;
/// Capacity limit with `singlePlacementGroup=false`, unless the server config raises it.
pub const MULTI_PLACEMENT_GROUP_MAX: u64 = 1000;

string_enum!(
    /// `upgradePolicy.mode`.
    UpgradeMode { Manual = "Manual", Automatic = "Automatic", Rolling = "Rolling" } default Manual
);
string_enum!(
    /// `scaleInPolicy.rules[]`.
    ScaleInRule { Default = "Default", OldestVm = "OldestVM", NewestVm = "NewestVM" } default Default
);
string_enum!(
    /// `virtualMachineProfile.priority`.
    Priority { Regular = "Regular", Low = "Low", Spot = "Spot" } default Regular
);
string_enum!(
    /// `orchestrationMode`.
    OrchestrationMode { Uniform = "Uniform", Flexible = "Flexible" } default Uniform
);

fn yes() -> bool {
    true
}

/// `sku`: the VM size and how many instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sku {
    pub name: String,
    #[serde(default = "standard_tier")]
    pub tier: String,
    pub capacity: i64,
}

fn standard_tier() -> String {
    "Standard".into()
}

/// `upgradePolicy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpgradePolicy {
    #[serde(default)]
    pub mode: UpgradeMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_upgrade_policy: Option<crate::upgrade::RollingUpgradePolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "automaticOSUpgradePolicy")]
    pub automatic_os_upgrade_policy: Option<crate::upgrade::AutomaticOsUpgradePolicy>,
}

/// `scaleInPolicy`: which instances go first on scale-in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleInPolicy {
    #[serde(default = "default_rules")]
    pub rules: Vec<ScaleInRule>,
    #[serde(default)]
    pub force_deletion: bool,
}

fn default_rules() -> Vec<ScaleInRule> {
    vec![ScaleInRule::Default]
}

impl Default for ScaleInPolicy {
    fn default() -> Self {
        Self { rules: default_rules(), force_deletion: false }
    }
}

/// `virtualMachineProfile.storageProfile.imageReference`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageReference {
    pub publisher: String,
    pub offer: String,
    pub sku: String,
    pub version: String,
}

impl ImageReference {
    pub fn urn(&self) -> Result<ImageUrn, FieldError> {
        ImageUrn::parse(&format!("{}:{}:{}:{}", self.publisher, self.offer, self.sku, self.version)).map_err(|e| {
            FieldError::new(e.field.replace("image", "virtualMachineProfile.storageProfile.imageReference"), e.message)
        })
    }

    pub fn from_urn(u: &ImageUrn) -> Self {
        Self { publisher: u.publisher.clone(), offer: u.offer.clone(), sku: u.sku.clone(), version: u.version.clone() }
    }
}

/// `virtualMachineProfile.storageProfile`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageProfile {
    pub image_reference: ImageReference,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub os_disk: Option<Value>,
    /// Empty data disks, one qcow2 file each per instance (kept across reimage).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_disks: Vec<DataDisk>,
}

/// `storageProfile.dataDisks[]`: an empty disk per instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataDisk {
    pub lun: u32,
    #[serde(rename = "diskSizeGB")]
    pub disk_size_gb: u64,
    #[serde(default = "empty_option")]
    pub create_option: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caching: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub managed_disk: Option<Value>,
}

fn empty_option() -> String {
    "Empty".into()
}

/// Largest data disk, in GB (qcow2 files are thin: only written blocks use space).
pub const MAX_DATA_DISK_GB: u64 = 4095;

/// One SSH public key for the admin user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SshPublicKey {
    #[serde(default)]
    pub path: String,
    pub key_data: String,
}

/// `ssh` inside `linuxConfiguration`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SshConfiguration {
    #[serde(default)]
    pub public_keys: Vec<SshPublicKey>,
}

/// `osProfile.linuxConfiguration`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinuxConfiguration {
    #[serde(default)]
    pub disable_password_authentication: bool,
    #[serde(default)]
    pub ssh: SshConfiguration,
}

/// `virtualMachineProfile.osProfile`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OsProfile {
    #[serde(default)]
    pub computer_name_prefix: String,
    #[serde(default = "default_admin")]
    pub admin_username: String,
    /// Write-only: accepted on create/update, stored apart from the model, never returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linux_configuration: Option<LinuxConfiguration>,
}

fn default_admin() -> String {
    "azureuser".into()
}

/// One IP configuration of a NIC: its subnet, and the load-balancer pools it joins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpConfiguration {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<SubResource>,
    #[serde(default)]
    pub load_balancer_backend_address_pools: Vec<SubResource>,
    #[serde(default)]
    pub load_balancer_inbound_nat_pools: Vec<SubResource>,
    /// A public IP per instance, from the server's pool (`[network] public_ip_pool`), with
    /// 1:1 NAT to the instance's private IP. Bridged networking only.
    #[serde(default, rename = "publicIPAddressConfiguration", skip_serializing_if = "Option::is_none")]
    pub public_ip_address_configuration: Option<PublicIpAddressConfiguration>,
}

/// `ipConfigurations[].publicIPAddressConfiguration`: each instance gets its own public IP.
/// Azure nests `idleTimeoutInMinutes` under `properties`; herd's model flattens `properties`
/// everywhere, so it sits next to `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublicIpAddressConfiguration {
    pub name: String,
    /// Minutes an idle TCP flow through the address is kept (4 to 30, default 4).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_in_minutes: i64,
}

fn default_idle_timeout() -> i64 {
    4
}

/// Allowed `idleTimeoutInMinutes` of a public IP (Azure's).
pub const IDLE_TIMEOUT_MINUTES: std::ops::RangeInclusive<i64> = 4..=30;

/// One NIC of the VM model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkInterfaceConfiguration {
    pub name: String,
    #[serde(default = "yes")]
    pub primary: bool,
    pub ip_configurations: Vec<IpConfiguration>,
    /// The network security group of each instance's NIC (after the subnet's on the way in,
    /// before it on the way out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_security_group: Option<crate::network::SubResource>,
}

/// `virtualMachineProfile.networkProfile`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkProfile {
    /// The probe that reports instance health (for rolling upgrades and repairs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_probe: Option<SubResource>,
    #[serde(default)]
    pub network_interface_configurations: Vec<NetworkInterfaceConfiguration>,
}

impl NetworkProfile {
    /// The one IP configuration herd supports today (one NIC, one IP configuration).
    pub fn primary(&self) -> Option<&IpConfiguration> {
        self.network_interface_configurations.first().and_then(|n| n.ip_configurations.first())
    }

    fn validate(&self) -> Result<(), FieldError> {
        let f = "virtualMachineProfile.networkProfile.networkInterfaceConfigurations";
        if self.network_interface_configurations.len() > 1 {
            return Err(FieldError::not_supported(f, "more than one NIC per VM"));
        }
        if let Some(nic) = self.network_interface_configurations.first() {
            if nic.ip_configurations.len() != 1 {
                return Err(FieldError::new(format!("{f}[0].ipConfigurations"), "needs exactly one IP configuration"));
            }
            let ip = &nic.ip_configurations[0];
            if let Some(p) = &ip.public_ip_address_configuration {
                let pf = format!("{f}[0].ipConfigurations[0].publicIPAddressConfiguration");
                if p.name.is_empty() || p.name.len() > 80 {
                    return Err(FieldError::new(
                        format!("{pf}.name"),
                        format!("must be 1 to 80 characters, got {}", p.name.len()),
                    ));
                }
                if !IDLE_TIMEOUT_MINUTES.contains(&p.idle_timeout_in_minutes) {
                    return Err(FieldError::new(
                        format!("{pf}.idleTimeoutInMinutes"),
                        format!(
                            "{} is out of range; allowed {} to {}",
                            p.idle_timeout_in_minutes,
                            IDLE_TIMEOUT_MINUTES.start(),
                            IDLE_TIMEOUT_MINUTES.end()
                        ),
                    ));
                }
                if ip.subnet.is_none() {
                    return Err(FieldError::new(
                        pf,
                        "needs a subnet in the same IP configuration: the public IP is NATed to the private IP",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The primary IP configuration's public IP configuration, if the model asks for one.
    pub fn public_ip(&self) -> Option<&PublicIpAddressConfiguration> {
        self.primary()?.public_ip_address_configuration.as_ref()
    }
}

/// The path of the public IP configuration in a scale-set model (for errors).
pub const PUBLIC_IP_FIELD: &str =
    "virtualMachineProfile.networkProfile.networkInterfaceConfigurations[0].ipConfigurations[0].publicIPAddressConfiguration";

/// `virtualMachineProfile`: everything that defines one VM. Changing it bumps `modelGeneration`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualMachineProfile {
    pub os_profile: OsProfile,
    pub storage_profile: StorageProfile,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_profile: Option<NetworkProfile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_profile: Option<ExtensionProfile>,
    /// Spot only: what eviction does (default Deallocate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eviction_policy: Option<crate::spot::EvictionPolicy>,
    /// Spot only: `maxPrice` per hour (-1 = never evict for price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_profile: Option<crate::spot::BillingProfile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_events_profile: Option<crate::spot::ScheduledEventsProfile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
}

/// The user-writable model of a scale set: what `PUT` accepts and `update --set` edits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleSetModel {
    #[serde(default = "default_location")]
    pub location: String,
    pub sku: Sku,
    #[serde(default)]
    pub zones: Vec<String>,
    #[serde(default)]
    pub zone_balance: bool,
    #[serde(default = "yes")]
    pub overprovision: bool,
    #[serde(default = "yes")]
    pub single_placement_group: bool,
    /// How many fault domains the set spreads over in each zone: 1 (the default when absent)
    /// = as widely as the hosts allow, best effort; N = exactly N (a host, or the hosts sharing
    /// a fault-domain label, is one domain). Fixed at create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_fault_domain_count: Option<i64>,
    #[serde(default)]
    pub orchestration_mode: OrchestrationMode,
    #[serde(default)]
    pub upgrade_policy: UpgradePolicy,
    #[serde(default)]
    pub scale_in_policy: ScaleInPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automatic_repairs_policy: Option<crate::repair::AutomaticRepairsPolicy>,
    /// Spot only: restore evicted instances when capacity (or a lower price) returns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_restore_policy: Option<crate::spot::SpotRestorePolicy>,
    pub virtual_machine_profile: VirtualMachineProfile,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// The largest `platformFaultDomainCount` herd accepts (Azure: 5). Whether a set's count can be
/// met depends on the hosts: each of its zones needs that many fault domains.
pub const MAX_FAULT_DOMAIN_COUNT: i64 = 100;

fn default_location() -> String {
    "local".into()
}

/// What validation needs to know about the server.
#[derive(Debug, Clone)]
pub struct ValidationContext<'a> {
    pub skus: &'a SkuTable,
    /// Zones this server offers (logical labels on one host).
    pub zones_offered: &'a [String],
    /// Capacity ceiling with `singlePlacementGroup=false` (1000 unless config raises it).
    pub max_capacity: u64,
    /// SKUs the server has a spot price for; `None` = not checked.
    pub spot_priced_skus: Option<&'a [String]>,
}

/// Top-level fields the server owns; a patch may not touch them.
pub const READ_ONLY_FIELDS: &[&str] =
    &["id", "name", "type", "resourceGroup", "etag", "modelGeneration", "provisioningState", "timeCreated", "status"];

impl ScaleSetModel {
    /// Parses a model from JSON, naming the exact path of the first bad field.
    pub fn from_json(v: Value) -> Result<Self, FieldError> {
        serde_path_to_error::deserialize::<_, Self>(v).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            FieldError::new(field, e.into_inner().to_string())
        })
    }

    /// Fills defaults that depend on the set's name (the computer name prefix).
    pub fn apply_defaults(&mut self, name: &ScaleSetName) {
        if self.virtual_machine_profile.os_profile.computer_name_prefix.is_empty() {
            self.virtual_machine_profile.os_profile.computer_name_prefix = default_prefix(name.as_str());
        }
    }

    /// `platformFaultDomainCount`, 1 when absent (herd's default: maximum spreading; Azure's
    /// regional default is 5). Only valid after [`validate`](Self::validate).
    pub fn fault_domain_count(&self) -> u32 {
        self.platform_fault_domain_count.map_or(1, |n| n.clamp(1, MAX_FAULT_DOMAIN_COUNT) as u32)
    }

    /// The capacity as an unsigned count; only valid after [`validate`](Self::validate).
    pub fn capacity(&self) -> u64 {
        self.sku.capacity.max(0) as u64
    }

    /// Checks every field, returning the first problem with its path and the allowed values.
    /// Also canonicalises the SKU name's spelling.
    pub fn validate(&mut self, ctx: &ValidationContext<'_>) -> Result<(), FieldError> {
        let (sku_name, _) = ctx.skus.resolve("sku.name", &self.sku.name)?;
        self.sku.name = sku_name.to_string();
        let max = if self.single_placement_group { SINGLE_PLACEMENT_GROUP_MAX } else { ctx.max_capacity };
        if self.sku.capacity < 0 || self.sku.capacity as u64 > max {
            let hint = if self.single_placement_group {
                format!("; up to {} with singlePlacementGroup=false", ctx.max_capacity)
            } else {
                String::new()
            };
            return Err(FieldError::new(
                "sku.capacity",
                format!("{} is out of range; allowed 0 to {max}{hint}", self.sku.capacity),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, z) in self.zones.iter().enumerate() {
            if !ctx.zones_offered.iter().any(|o| o == z) {
                let offered: Vec<&str> = ctx.zones_offered.iter().map(String::as_str).collect();
                return Err(FieldError::one_of(format!("zones[{i}]"), z, &offered));
            }
            if !seen.insert(z) {
                return Err(FieldError::new(format!("zones[{i}]"), format!("zone '{z}' is listed twice")));
            }
        }
        if self.zone_balance && self.zones.len() < 2 {
            return Err(FieldError::new("zoneBalance", "needs at least two zones in 'zones'"));
        }
        if let Some(n) = self.platform_fault_domain_count {
            if !(1..=MAX_FAULT_DOMAIN_COUNT).contains(&n) {
                return Err(FieldError::new(
                    "platformFaultDomainCount",
                    format!(
                        "{n} is out of range; allowed 1 to {MAX_FAULT_DOMAIN_COUNT} (1, the default, spreads as widely as the hosts allow; N needs N fault domains in every zone of the set)"
                    ),
                ));
            }
        }
        if self.orchestration_mode != OrchestrationMode::Uniform {
            return Err(FieldError::not_supported("orchestrationMode", "only Uniform scale sets"));
        }
        if let Some(p) = &self.upgrade_policy.rolling_upgrade_policy {
            p.validate()?;
        }
        if self.upgrade_policy.automatic_os_upgrade_policy.as_ref().is_some_and(|p| p.enable_automatic_os_upgrade)
            && !self.virtual_machine_profile.storage_profile.image_reference.version.eq_ignore_ascii_case("latest")
        {
            return Err(FieldError::new(
                "upgradePolicy.automaticOSUpgradePolicy.enableAutomaticOSUpgrade",
                "needs the image reference at version 'latest' (a newer imported version is what gets rolled out)",
            ));
        }
        if self.scale_in_policy.rules.is_empty() {
            return Err(FieldError::new(
                "scaleInPolicy.rules",
                "needs one rule; allowed values: Default, OldestVM, NewestVM",
            ));
        }
        if self.scale_in_policy.rules.len() > 1 {
            return Err(FieldError::new(
                "scaleInPolicy.rules",
                "takes exactly one rule (Default, OldestVM or NewestVM)",
            ));
        }
        if self.scale_in_policy.force_deletion {
            return Err(FieldError::not_supported("scaleInPolicy.forceDeletion", "force deletion"));
        }
        if let Some(p) = &self.automatic_repairs_policy {
            p.validate()?;
        }
        self.validate_profile(ctx)
    }

    fn validate_profile(&self, ctx: &ValidationContext<'_>) -> Result<(), FieldError> {
        let p = &self.virtual_machine_profile;
        let prefix = &p.os_profile.computer_name_prefix;
        let pf = "virtualMachineProfile.osProfile.computerNamePrefix";
        if prefix.is_empty() || prefix.len() > 15 {
            return Err(FieldError::new(pf, format!("must be 1 to 15 characters, got {}", prefix.len())));
        }
        if !prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') || prefix.starts_with('-') {
            return Err(FieldError::new(pf, "use letters, digits and '-', not starting with '-'"));
        }
        let user = &p.os_profile.admin_username;
        let uf = "virtualMachineProfile.osProfile.adminUsername";
        if user.is_empty()
            || user.len() > 32
            || !user.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(FieldError::new(uf, "must be 1 to 32 of letters, digits, '_' and '-'"));
        }
        if ["root", "admin", "administrator"].contains(&user.to_ascii_lowercase().as_str()) {
            return Err(FieldError::new(uf, format!("'{user}' is reserved; choose another name")));
        }
        if let Some(pw) = &p.os_profile.admin_password {
            if pw.len() < 12 || pw.len() > 123 {
                return Err(FieldError::new(
                    "virtualMachineProfile.osProfile.adminPassword",
                    "must be 12 to 123 characters",
                ));
            }
        }
        p.storage_profile.image_reference.urn()?;
        if let Some(n) = &p.network_profile {
            n.validate()?;
        }
        let mut luns = Vec::new();
        for (i, d) in p.storage_profile.data_disks.iter().enumerate() {
            let f = format!("virtualMachineProfile.storageProfile.dataDisks[{i}]");
            if d.lun > 63 || luns.contains(&d.lun) {
                return Err(FieldError::new(
                    format!("{f}.lun"),
                    format!("{} is not a free LUN; allowed: 0 to 63, each once", d.lun),
                ));
            }
            luns.push(d.lun);
            if !(1..=MAX_DATA_DISK_GB).contains(&d.disk_size_gb) {
                return Err(FieldError::new(
                    format!("{f}.diskSizeGB"),
                    format!("{} is out of range; allowed: 1 to {MAX_DATA_DISK_GB}", d.disk_size_gb),
                ));
            }
            if !d.create_option.eq_ignore_ascii_case("Empty") {
                return Err(FieldError::not_supported(
                    format!("{f}.createOption"),
                    "data disks from images or attached disks; use Empty",
                ));
            }
        }
        if let Some(e) = &p.extension_profile {
            e.validate()?;
        }
        let spot = crate::spot::is_spot(p.priority);
        crate::spot::validate(
            spot,
            p.eviction_policy,
            p.billing_profile.as_ref(),
            p.scheduled_events_profile.as_ref(),
            self.spot_restore_policy.as_ref(),
            &self.sku.name,
            ctx.spot_priced_skus.map(|s| s.iter().any(|k| k.eq_ignore_ascii_case(&self.sku.name))),
        )?;
        Ok(())
    }

    /// Removes write-only secrets from the model, returning them for separate, encrypted storage.
    pub fn take_secrets(&mut self) -> Secrets {
        let mut extension_protected_settings = BTreeMap::new();
        if let Some(p) = &mut self.virtual_machine_profile.extension_profile {
            for e in &mut p.extensions {
                if let Some(v) = e.properties.protected_settings.take().filter(|v| !v.is_null()) {
                    extension_protected_settings.insert(e.name.to_ascii_lowercase(), v);
                }
            }
        }
        Secrets {
            admin_password: self.virtual_machine_profile.os_profile.admin_password.take(),
            extension_protected_settings,
        }
    }

    /// The extensions of the model (none without an extension profile).
    pub fn extensions(&self) -> &[crate::extension::Extension] {
        self.virtual_machine_profile.extension_profile.as_ref().map_or(&[], |p| &p.extensions)
    }

    /// A digest of what defines a VM's disk apart from its extensions: the profile without
    /// `extensionProfile` (the size is recorded apart). Instances record it when built, so an
    /// update that changed only extensions or the size is applied without a reimage.
    pub fn base_fingerprint(&self) -> String {
        let mut p = self.virtual_machine_profile.clone();
        p.extension_profile = None;
        let doc = serde_json::json!([p]);
        format!("{:016x}", crate::extension::fnv64(doc.to_string().as_bytes()))
    }

    /// True when `other` differs in what defines a VM: the profile or the SKU's size.
    /// Only such changes bump `modelGeneration`; capacity and policy edits do not.
    pub fn vm_model_differs(&self, other: &Self) -> bool {
        self.virtual_machine_profile != other.virtual_machine_profile || self.sku.name != other.sku.name
    }
}

/// Write-only values kept apart from the model and never returned by the API.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secrets {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_password: Option<String>,
    /// `protectedSettings` per extension, keyed by the extension's name in lower case.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extension_protected_settings: BTreeMap<String, Value>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("admin_password", &self.admin_password.as_ref().map(|_| "<redacted>"))
            .field("extension_protected_settings", &self.extension_protected_settings.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Secrets {
    pub fn is_empty(&self) -> bool {
        self.admin_password.is_none() && self.extension_protected_settings.is_empty()
    }

    /// Overlays `newer` on `self`: a secret given again replaces the old one.
    pub fn merge(&mut self, newer: Secrets) {
        if newer.admin_password.is_some() {
            self.admin_password = newer.admin_password;
        }
        self.extension_protected_settings.extend(newer.extension_protected_settings);
    }

    /// Drops the protected settings of extensions the model no longer has.
    pub fn retain_extensions(&mut self, model: &ScaleSetModel) {
        let names: Vec<String> = model.extensions().iter().map(|e| e.name.to_ascii_lowercase()).collect();
        self.extension_protected_settings.retain(|k, _| names.contains(k));
    }
}

/// The default computer name prefix: the set's name cut to 9 characters, so the name plus six
/// base-36 digits fits Windows' 15-character limit (`webscaleset` → `webscales`).
pub fn default_prefix(name: &str) -> String {
    let cleaned: String = name.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(9).collect();
    if cleaned.is_empty() {
        "vm".into()
    } else {
        cleaned.to_ascii_lowercase()
    }
}

/// The scale set as herd stores it: the user's model plus what the server owns.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredScaleSet {
    pub name: ScaleSetName,
    pub group: GroupName,
    pub model_generation: u64,
    pub time_created: chrono::DateTime<chrono::Utc>,
    /// Set by `DELETE`; the reconciler removes every instance, then the set.
    #[serde(default)]
    pub deleting: bool,
    pub model: ScaleSetModel,
}

impl StoredScaleSet {
    pub fn resource_id(group: &str, name: &str) -> String {
        format!("/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachineScaleSets/{name}")
    }

    pub fn store_key(group: &GroupName, name: &ScaleSetName) -> String {
        format!("{group}/{name}")
    }

    pub fn key(&self) -> String {
        Self::store_key(&self.group, &self.name)
    }
}

/// What the reconciler owns about a set: the id counter and the provisioning circuit breaker.
/// Kept apart from the set so reconciler writes never collide with a user's compare-and-swap.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleSetStatus {
    /// The next instance id to hand out; ids are never reused.
    pub next_instance_id: u64,
    /// Creations that failed since the last success.
    pub consecutive_create_failures: u32,
    /// When set, creation is suspended: the reason, and the set revision it was suspended at.
    /// Any later change to the set (a new revision) resumes creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended: Option<Suspension>,
    /// The latest rolling upgrade (active or finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_upgrade: Option<crate::upgrade::RollingUpgrade>,
    /// Automatic repairs: recent attempts (the circuit breaker's count) and a suspension.
    #[serde(default, skip_serializing_if = "is_default_repairs")]
    pub repairs: crate::repair::RepairState,
    /// The image version `latest` resolved to when the set last took it (automatic OS upgrades
    /// start when a newer one is imported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_image_version: Option<String>,
    /// Options for the next rolling upgrade, set by `rolling-upgrade start` before it begins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_request: Option<UpgradeRequest>,
    /// Spot instances evicted with `Delete` that the set does not replace (see the planner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_eviction_gap: Option<SpotEvictionGap>,
    /// What keeps the set below capacity on the hosts right now (no room, waiting for Spot
    /// evictions, spot price above maxPrice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_note: Option<CapacityNote>,
    /// Where new instances go other than the model says, while it lasts: zones of a set
    /// without `zoneBalance` that have no host taking new instances (its new instances go to
    /// the remaining zones). Not a shortfall: the set may be at capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_note: Option<CapacityNote>,
}

/// Spot instances evicted with `Delete`: how many, since when, at which set revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpotEvictionGap {
    pub deleted: u64,
    pub since: chrono::DateTime<chrono::Utc>,
    pub at_revision: u64,
}

/// A capacity shortfall as the set reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapacityNote {
    pub message: String,
    pub since: chrono::DateTime<chrono::Utc>,
    /// Only waiting for announced Spot evictions: the room is coming.
    #[serde(default)]
    pub waiting: bool,
}

fn is_default_repairs(r: &crate::repair::RepairState) -> bool {
    r == &crate::repair::RepairState::default()
}

/// What `rolling-upgrade start|pause|resume|cancel|rollback` asks of the reconciler; it acts on
/// it in its next pass and clears it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", tag = "action")]
pub enum UpgradeRequest {
    /// Start (or restart) an upgrade to the latest model; `canary` instances first, then pause
    /// if `pause`.
    Start {
        canary: Option<u64>,
        pause: bool,
        /// An OS image upgrade: every instance is re-imaged.
        #[serde(default)]
        reimage: bool,
    },
    Pause,
    Resume,
    Cancel,
    Rollback,
}

/// Why creation stopped for a set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Suspension {
    pub reason: String,
    pub at_revision: u64,
    pub since: chrono::DateTime<chrono::Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx_parts() -> (SkuTable, Vec<String>) {
        (SkuTable::default(), vec!["1".into(), "2".into(), "3".into()])
    }

    fn model(v: Value) -> Result<ScaleSetModel, FieldError> {
        let (skus, zones) = ctx_parts();
        let ctx = ValidationContext { skus: &skus, zones_offered: &zones, max_capacity: 1000, spot_priced_skus: None };
        let mut m = ScaleSetModel::from_json(v)?;
        m.apply_defaults(&ScaleSetName::new("webscaleset").unwrap());
        m.validate(&ctx)?;
        Ok(m)
    }

    fn base() -> Value {
        json!({
            "sku": {"name": "standard_b1ms", "capacity": 3},
            "virtualMachineProfile": {
                "osProfile": {"adminUsername": "labuser"},
                "storageProfile": {"imageReference": {"publisher": "Herd", "offer": "TestGuest", "sku": "1", "version": "1.0.0"}}
            }
        })
    }

    #[test]
    fn a_public_ip_configuration_is_checked_naming_the_field() {
        let with = |pip: Value, subnet: bool| {
            let mut ipc = json!({"name": "ip", "publicIPAddressConfiguration": pip});
            if subnet {
                ipc["subnet"] =
                    json!({"id": "/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/s"});
            }
            let mut v = base();
            v["virtualMachineProfile"]["networkProfile"] =
                json!({"networkInterfaceConfigurations": [{"name": "nic", "ipConfigurations": [ipc]}]});
            model(v)
        };
        let m = with(json!({"name": "pub"}), true).unwrap();
        let p = m.virtual_machine_profile.network_profile.as_ref().unwrap().public_ip().unwrap();
        assert_eq!((p.name.as_str(), p.idle_timeout_in_minutes), ("pub", 4), "Azure's default idle timeout");
        let doc = serde_json::to_value(&m).unwrap();
        let ipc =
            &doc["virtualMachineProfile"]["networkProfile"]["networkInterfaceConfigurations"][0]["ipConfigurations"][0];
        assert_eq!(
            ipc["publicIPAddressConfiguration"],
            json!({"name": "pub", "idleTimeoutInMinutes": 4}),
            "Azure's spelling"
        );
        assert!(with(json!({"name": "pub", "idleTimeoutInMinutes": 30}), true).is_ok());
        for (pip, subnet, field, message) in [
            (json!({"name": "pub", "idleTimeoutInMinutes": 3}), true, ".idleTimeoutInMinutes", "allowed 4 to 30"),
            (json!({"name": "pub", "idleTimeoutInMinutes": 31}), true, ".idleTimeoutInMinutes", "31 is out of range"),
            (json!({"name": ""}), true, ".name", "1 to 80 characters"),
            (json!({"name": "pub"}), false, "", "needs a subnet"),
            (json!({"name": "pub", "dnsSettings": {}}), true, ".dnsSettings", "unknown field"),
        ] {
            let e = with(pip.clone(), subnet).unwrap_err();
            assert!(e.field.starts_with(PUBLIC_IP_FIELD) && e.field.ends_with(field), "{pip}: {e:?}");
            assert!(e.message.contains(message), "{pip}: {e:?}");
        }
    }

    #[test]
    fn defaults_follow_azure() {
        let m = model(base()).unwrap();
        assert_eq!(m.sku.name, "Standard_B1ms");
        assert!(m.overprovision);
        assert!(m.single_placement_group);
        assert_eq!(m.upgrade_policy.mode, UpgradeMode::Manual);
        assert_eq!(m.virtual_machine_profile.os_profile.computer_name_prefix, "webscales");
    }

    #[test]
    fn capacity_limits_depend_on_placement_groups() {
        let mut v = base();
        v["sku"]["capacity"] = json!(101);
        let e = model(v.clone()).unwrap_err();
        assert_eq!(e.field, "sku.capacity");
        assert!(e.message.contains("singlePlacementGroup=false"));
        v["singlePlacementGroup"] = json!(false);
        assert!(model(v.clone()).is_ok());
        v["sku"]["capacity"] = json!(1001);
        assert!(model(v.clone()).is_err());
        v["sku"]["capacity"] = json!(-1);
        assert_eq!(model(v).unwrap_err().field, "sku.capacity");
    }

    #[test]
    fn bad_fields_are_named_with_allowed_values() {
        let mut v = base();
        v["upgradePolicy"] = json!({"mode": "Sometimes"});
        let e = model(v).unwrap_err();
        assert_eq!(e.field, "upgradePolicy.mode");
        assert!(e.message.contains("Manual, Automatic, Rolling"), "{e}");

        let mut v = base();
        v["zones"] = json!(["1", "9"]);
        let e = model(v).unwrap_err();
        assert_eq!(e.field, "zones[1]");
        assert!(e.message.contains("1, 2, 3"));

        let mut v = base();
        v["virtualMachineProfile"]["bogus"] = json!(1);
        let e = model(v).unwrap_err();
        assert!(e.field.starts_with("virtualMachineProfile"), "{e:?}");
        assert!(e.message.contains("bogus"));

        let mut v = base();
        v["virtualMachineProfile"]["priority"] = json!("Spot");
        v["virtualMachineProfile"]["evictionPolicy"] = json!("Sometimes");
        let e = model(v).unwrap_err();
        assert_eq!(e.field, "virtualMachineProfile.evictionPolicy");
        assert!(e.message.contains("Deallocate, Delete"), "{e:?}");

        let mut v = base();
        v["virtualMachineProfile"]["billingProfile"] = json!({"maxPrice": 0.5});
        assert_eq!(model(v).unwrap_err().field, "virtualMachineProfile.billingProfile.maxPrice");

        let mut v = base();
        v["automaticRepairsPolicy"] = json!({"enabled": true, "gracePeriod": "PT5S"});
        assert_eq!(model(v).unwrap_err().field, "automaticRepairsPolicy.gracePeriod");
    }

    #[test]
    fn upgrade_mode_is_case_insensitive() {
        let mut v = base();
        v["upgradePolicy"] = json!({"mode": "automatic"});
        assert_eq!(model(v).unwrap().upgrade_policy.mode, UpgradeMode::Automatic);
    }

    #[test]
    fn only_profile_and_sku_changes_are_model_changes() {
        let a = model(base()).unwrap();
        let mut b = a.clone();
        b.sku.capacity = 10;
        b.upgrade_policy.mode = UpgradeMode::Automatic;
        assert!(!a.vm_model_differs(&b));
        b.virtual_machine_profile.storage_profile.image_reference.version = "1.0.1".into();
        assert!(a.vm_model_differs(&b));
        let mut c = a.clone();
        c.sku.name = "Standard_B2s".into();
        assert!(a.vm_model_differs(&c));
    }

    #[test]
    fn secrets_are_taken_out() {
        let mut v = base();
        v["virtualMachineProfile"]["osProfile"]["adminPassword"] = json!("a-long-password-1");
        let mut m = model(v).unwrap();
        let s = m.take_secrets();
        assert_eq!(s.admin_password.as_deref(), Some("a-long-password-1"));
        assert!(!serde_json::to_string(&m).unwrap().contains("a-long-password-1"));
    }
}
