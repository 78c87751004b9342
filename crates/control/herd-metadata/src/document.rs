//! The documents the endpoint serves, as pure functions of stored records.
//!
//! Why apart from the HTTP layer: what a guest sees is decided here and table-tested without a
//! listener, and this is the one place that chooses which stored fields may leave the host.
//! Nothing secret is read: the admin password and extension protected settings are not in the
//! records at all (they live sealed apart, in the set's secrets), and `customData` and `userData`,
//! which are in the model, are never copied into a document.

use chrono::{DateTime, Utc};
use herd_model::instance::InstanceRecord;
use herd_model::scale_set::StoredScaleSet;
use herd_model::spot::{EvictionReason, ScheduledEvent, ScheduledEventStatus, ScheduledEventType};
use herd_model::InstanceKey;
use serde_json::{json, Map, Value};

/// Azure's `Resources` entry and `compute.name` of an instance: `<set>_<id>`.
pub(crate) fn vm_name(key: &InstanceKey) -> String {
    format!("{}_{}", key.set, key.id)
}

/// RFC 1123 in GMT, as Scheduled Events writes `NotBefore`: `Mon, 19 Sep 2016 18:29:47 GMT`.
pub(crate) fn rfc1123(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// `EventSource`: `User` when a user's action caused the event (a Terminate comes from a
/// delete or scale-in, a Preempt from `simulate-eviction`), `Platform` otherwise (a Spot
/// eviction for capacity or price).
pub(crate) fn event_source(e: &ScheduledEvent) -> &'static str {
    match (e.event_type, e.reason) {
        (ScheduledEventType::Terminate, _) | (_, Some(EvictionReason::Simulated)) => "User",
        _ => "Platform",
    }
}

/// One entry of `Events`.
pub(crate) fn event_json(key: &InstanceKey, e: &ScheduledEvent) -> Value {
    let not_before = match e.status {
        // Azure leaves NotBefore blank once the event has started.
        ScheduledEventStatus::Started => String::new(),
        ScheduledEventStatus::Scheduled => rfc1123(e.not_before),
    };
    json!({
        "EventId": e.event_id,
        "EventStatus": e.status.as_str(),
        "EventType": e.event_type.as_str(),
        "ResourceType": "VirtualMachine",
        "Resources": [vm_name(key)],
        "NotBefore": not_before,
        "Description": e.description,
        "EventSource": event_source(e),
        "DurationInSeconds": -1,
    })
}

/// The `Events` array of an instance, in the record's order.
pub(crate) fn events_json(key: &InstanceKey, events: &[ScheduledEvent]) -> Vec<Value> {
    events.iter().map(|e| event_json(key, e)).collect()
}

/// A digest of the events as served: it changes exactly when the document a guest sees
/// changes (64-bit FNV-1a over the canonical JSON, stable across Rust versions).
pub(crate) fn digest(events: &[Value]) -> u64 {
    let text = serde_json::to_string(events).unwrap_or_default();
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The Scheduled Events document.
pub(crate) fn events_document(incarnation: u64, events: Vec<Value>) -> Value {
    json!({ "DocumentIncarnation": incarnation, "Events": events })
}

/// A stable, UUID-shaped id of an instance (`compute.vmId`): a hash of its key and creation
/// time, so it survives restarts, and a set re-created under the same name gives its
/// instances new ids. Version nibble 8 (RFC 9562 custom), variant 10.
pub(crate) fn vm_id(key: &InstanceKey, created_at: DateTime<Utc>) -> String {
    let seed = format!("{}|{}", key.path(), created_at.to_rfc3339());
    let h = |basis: u64| seed.bytes().fold(basis, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    let (a, b) = (h(0xcbf2_9ce4_8422_2325), h(0x6c62_272e_07bb_0142));
    let a = (a & !0xf000) | 0x8000; // version 8 in bits 12..16 of the third group
    let b = (b & !(0b11 << 62)) | (0b10 << 62); // variant 10
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// Azure's `tags` string: `key:value` pairs joined by `;`.
fn tags_string(set: Option<&StoredScaleSet>) -> String {
    set.map(|s| s.model.tags.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(";")).unwrap_or_default()
}

/// The `/metadata/instance` document: Azure's `compute` and `network` shape, with every value
/// a string as in Azure, plus two herd extensions in `compute`: `instanceId` and
/// `modelGeneration`. `set` is `None` only while a deleted set's last instances go away.
pub(crate) fn instance_document(key: &InstanceKey, rec: &InstanceRecord, set: Option<&StoredScaleSet>) -> Value {
    let vp = set.map(|s| &s.model.virtual_machine_profile);
    let image = vp.map(|v| &v.storage_profile.image_reference);
    let s = |v: Option<&str>| Value::String(v.unwrap_or_default().to_string());
    let vm_size = rec.sku.clone().or_else(|| set.map(|s| s.model.sku.name.clone())).unwrap_or_default();
    let resource_id =
        format!("{}/virtualMachines/{}", StoredScaleSet::resource_id(key.group.as_str(), key.set.as_str()), key.id);
    let mut compute = Map::new();
    let mut put = |k: &str, v: Value| {
        compute.insert(k.to_string(), v);
    };
    put("azEnvironment", "Herd".into());
    put("evictionPolicy", s(vp.and_then(|v| v.eviction_policy).map(|p| p.as_str())));
    put("location", s(set.map(|s| s.model.location.as_str())));
    put("name", vm_name(key).into());
    put("offer", s(image.map(|i| i.offer.as_str())));
    put(
        "osProfile",
        json!({
            "adminUsername": vp.map(|v| v.os_profile.admin_username.clone()).unwrap_or_default(),
            "computerName": rec.computer_name,
            "disablePasswordAuthentication": vp
                .and_then(|v| v.os_profile.linux_configuration.as_ref())
                .map(|l| l.disable_password_authentication)
                .unwrap_or(false)
                .to_string(),
        }),
    );
    put("osType", "Linux".into());
    // The fault domain the capacity arbiter gave the instance (0 with a count of 1, and in
    // records from before fault domains), a string as in Azure.
    put("platformFaultDomain", rec.platform_fault_domain.unwrap_or(0).to_string().into());
    put("platformUpdateDomain", "0".into());
    put("priority", s(vp.map(|v| v.priority.as_str())));
    put("provider", "Microsoft.Compute".into());
    put("publisher", s(image.map(|i| i.publisher.as_str())));
    put("resourceGroupName", key.group.as_str().into());
    put("resourceId", resource_id.into());
    put("sku", s(image.map(|i| i.sku.as_str())));
    put(
        "storageProfile",
        json!({
            "imageReference": {
                "offer": image.map(|i| i.offer.clone()).unwrap_or_default(),
                "publisher": image.map(|i| i.publisher.clone()).unwrap_or_default(),
                "sku": image.map(|i| i.sku.clone()).unwrap_or_default(),
                "version": image.map(|i| i.version.clone()).unwrap_or_default(),
            }
        }),
    );
    put("tags", tags_string(set).into());
    put(
        "tagsList",
        Value::Array(
            set.map(|s| s.model.tags.iter().map(|(k, v)| json!({"name": k, "value": v})).collect()).unwrap_or_default(),
        ),
    );
    put("version", s(image.map(|i| i.version.as_str())));
    put("vmId", vm_id(key, rec.created_at).into());
    put("vmScaleSetName", key.set.as_str().into());
    put("vmSize", vm_size.into());
    put("zone", s(rec.zone.as_deref()));
    // herd extensions.
    put("instanceId", key.id.to_string().into());
    put("modelGeneration", rec.model_generation.to_string().into());

    let private_ip = rec.private_ip.clone().unwrap_or_else(|| rec.reach_address.clone());
    json!({
        "compute": compute,
        "network": {
            "interface": [{
                "ipv4": {
                    "ipAddress": [{"privateIpAddress": private_ip, "publicIpAddress": rec.public_ip.clone().unwrap_or_default()}],
                    "subnet": [],
                },
                "ipv6": {"ipAddress": []},
                "macAddress": "",
            }]
        }
    })
}

/// Walks `/metadata/instance/<path>` into the document: object keys by name, array entries by
/// index (`network/interface/0/ipv4`), as Azure allows. `None` when nothing is there.
pub(crate) fn select<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('/').filter(|p| !p.is_empty()).try_fold(doc, |v, part| match v {
        Value::Object(m) => m.get(part),
        Value::Array(a) => a.get(part.parse::<usize>().ok()?),
        _ => None,
    })
}

/// `format=text`: a leaf as its bare value; an object lists its keys, an array its indexes,
/// one per line (Azure's text rendering of an inner node).
pub(crate) fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| if v.is_object() || v.is_array() { format!("{k}/") } else { k.clone() })
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Array(a) => (0..a.len()).map(|i| format!("{i}/")).collect::<Vec<_>>().join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use herd_model::instance::{InstanceGoal, InstanceState};
    use herd_model::scale_set::ScaleSetModel;
    use herd_model::{GroupName, InstanceId, ScaleSetName};

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2016-09-19T18:29:47Z").unwrap().with_timezone(&Utc)
    }

    fn key() -> InstanceKey {
        InstanceKey { group: GroupName::new("rg").unwrap(), set: ScaleSetName::new("web").unwrap(), id: InstanceId(7) }
    }

    fn record() -> InstanceRecord {
        serde_json::from_value(json!({
            "instanceId": 7, "computerName": "web000007", "zone": "2", "modelGeneration": 3,
            "state": InstanceState::Running, "goal": InstanceGoal::Running,
            "reachAddress": "127.128.0.7", "createdAt": t0(), "stateSince": t0(),
        }))
        .unwrap()
    }

    fn set() -> StoredScaleSet {
        let model = ScaleSetModel::from_json(json!({
            "location": "lab1",
            "sku": {"name": "Standard_B1ms", "capacity": 1},
            "tags": {"team": "web", "env": "prod"},
            "virtualMachineProfile": {
                "priority": "Spot",
                "evictionPolicy": "Delete",
                "osProfile": {"computerNamePrefix": "web", "adminUsername": "ops",
                              "adminPassword": "S3cret!Passw0rd", "customData": "c2VjcmV0"},
                "storageProfile": {"imageReference": {"publisher": "P", "offer": "O", "sku": "S", "version": "1.2.3"}},
                "userData": "dXNlcg=="
            }
        }))
        .unwrap();
        StoredScaleSet {
            name: ScaleSetName::new("web").unwrap(),
            group: GroupName::new("rg").unwrap(),
            model_generation: 3,
            time_created: t0(),
            deleting: false,
            model,
        }
    }

    #[test]
    fn events_follow_azure() {
        let mut e =
            ScheduledEvent::new(ScheduledEventType::Preempt, t0(), Duration::seconds(30), "spot eviction", None);
        let j = event_json(&key(), &e);
        assert_eq!(j["NotBefore"], "Mon, 19 Sep 2016 18:30:17 GMT");
        assert_eq!(j["Resources"], json!(["web_7"]));
        assert_eq!(j["ResourceType"], "VirtualMachine");
        assert_eq!(j["EventStatus"], "Scheduled");
        assert_eq!(j["EventSource"], "Platform");
        assert_eq!(j["DurationInSeconds"], -1);
        e.status = ScheduledEventStatus::Started;
        assert_eq!(event_json(&key(), &e)["NotBefore"], "");
        e.reason = Some(EvictionReason::Simulated);
        assert_eq!(event_source(&e), "User");
        let t = ScheduledEvent::new(ScheduledEventType::Terminate, t0(), Duration::minutes(5), "scale-in", None);
        assert_eq!(event_source(&t), "User");
        let before = digest(&events_json(&key(), std::slice::from_ref(&t)));
        assert_eq!(before, digest(&events_json(&key(), std::slice::from_ref(&t))), "stable");
        assert_ne!(before, digest(&events_json(&key(), &[t, e])));
    }

    #[test]
    fn identity_without_secrets() {
        let doc = instance_document(&key(), &record(), Some(&set()));
        let c = &doc["compute"];
        assert_eq!(c["name"], "web_7");
        assert_eq!(c["vmScaleSetName"], "web");
        assert_eq!(c["resourceGroupName"], "rg");
        assert_eq!(c["location"], "lab1");
        assert_eq!(c["zone"], "2");
        assert_eq!(c["vmSize"], "Standard_B1ms");
        assert_eq!(c["priority"], "Spot");
        assert_eq!(c["evictionPolicy"], "Delete");
        assert_eq!(c["osProfile"]["computerName"], "web000007");
        assert_eq!(c["osProfile"]["adminUsername"], "ops");
        assert_eq!(c["tags"], "env:prod;team:web");
        assert_eq!(c["instanceId"], "7");
        assert_eq!(c["modelGeneration"], "3");
        assert_eq!(c["platformFaultDomain"], "0", "no fault domain recorded: 0, as a count of 1 shows");
        let mut placed = record();
        placed.platform_fault_domain = Some(3);
        let doc3 = instance_document(&key(), &placed, Some(&set()));
        assert_eq!(doc3["compute"]["platformFaultDomain"], "3");
        assert_eq!(
            c["resourceId"],
            "/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/web/virtualMachines/7"
        );
        assert_eq!(doc["network"]["interface"][0]["ipv4"]["ipAddress"][0]["privateIpAddress"], "127.128.0.7");
        let text = doc.to_string();
        for secret in ["S3cret", "c2VjcmV0", "dXNlcg==", "customData", "userData", "adminPassword"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        // Stable and distinct ids.
        assert_eq!(c["vmId"], vm_id(&key(), t0()));
        assert_ne!(vm_id(&key(), t0()), vm_id(&key(), t0() + Duration::seconds(1)));
        let id = vm_id(&key(), t0());
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "8");
        // Without the set (being deleted), names still come from the key.
        let bare = instance_document(&key(), &record(), None);
        assert_eq!(bare["compute"]["name"], "web_7");
        assert_eq!(bare["compute"]["location"], "");
    }

    #[test]
    fn paths_and_text() {
        let doc = instance_document(&key(), &record(), Some(&set()));
        assert_eq!(select(&doc, "compute/vmSize"), Some(&json!("Standard_B1ms")));
        assert_eq!(
            select(&doc, "/network/interface/0/ipv4/ipAddress/0/privateIpAddress/"),
            Some(&json!("127.128.0.7"))
        );
        assert_eq!(select(&doc, "compute/nope"), None);
        assert_eq!(select(&doc, "network/interface/x"), None);
        assert_eq!(as_text(select(&doc, "compute/zone").unwrap()), "2");
        assert_eq!(as_text(select(&doc, "network").unwrap()), "interface/");
        assert_eq!(as_text(&json!(["a"])), "0/");
        assert_eq!(rfc1123(t0()), "Mon, 19 Sep 2016 18:29:47 GMT");
    }
}
