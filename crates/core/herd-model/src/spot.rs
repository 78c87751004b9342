//! Spot priority, eviction, scheduled events, host capacity and prices: the model side.
//!
//! Why here: the planner, the capacity arbiter, the metadata endpoint, the meter and the API all
//! speak these types, and they follow Azure's JSON (`evictionPolicy`, `billingProfile.maxPrice`,
//! `scheduledEventsProfile.terminateNotificationProfile`, `spotRestorePolicy`, and the instance
//! metadata service's Scheduled Events document).
//!
//! A scheduled event's life:
//! ```text
//!   (posted) ──▶ Scheduled ──ack (POST StartRequests) or NotBefore passed──▶ Started ──▶ (removed
//!                                                                   with the action it announced)
//! ```

use crate::{duration::parse_iso8601, FieldError};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

string_enum!(
    /// `virtualMachineProfile.evictionPolicy`: what happens to an evicted Spot instance.
    EvictionPolicy { Deallocate = "Deallocate", Delete = "Delete" } default Deallocate
);

/// `virtualMachineProfile.billingProfile`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BillingProfile {
    /// The most this instance may cost per hour; `-1` = never evict for price.
    pub max_price: f64,
}

/// `scheduledEventsProfile.terminateNotificationProfile`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TerminateNotificationProfile {
    #[serde(default)]
    pub enable: bool,
    /// How long a Terminate event waits for acknowledgement: ISO 8601, 5 to 15 minutes.
    #[serde(default = "default_not_before")]
    pub not_before_timeout: String,
}

fn default_not_before() -> String {
    "PT5M".into()
}

/// `virtualMachineProfile.scheduledEventsProfile`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduledEventsProfile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminate_notification_profile: Option<TerminateNotificationProfile>,
}

impl ScheduledEventsProfile {
    /// The Terminate notice period, when terminate notifications are on.
    pub fn terminate_notice(&self) -> Option<Duration> {
        let p = self.terminate_notification_profile.as_ref().filter(|p| p.enable)?;
        parse_iso8601(&p.not_before_timeout)
    }
}

/// `spotRestorePolicy` (Azure's "Spot-Try-Restore").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpotRestorePolicy {
    #[serde(default)]
    pub enabled: bool,
    /// How long herd keeps trying to restore evicted instances: ISO 8601, default PT1H.
    #[serde(default = "default_restore_timeout")]
    pub restore_timeout: String,
}

fn default_restore_timeout() -> String {
    "PT1H".into()
}

/// Azure's allowed Terminate notice: 5 to 15 minutes.
pub const TERMINATE_NOTICE_MIN: i64 = 5 * 60;
pub const TERMINATE_NOTICE_MAX: i64 = 15 * 60;
/// The notice a Spot instance gets before eviction (Azure: "about 30 seconds").
pub const PREEMPT_NOTICE_SECS: i64 = 30;

/// Checks the Spot-related fields of a model together. `spot` is the set's priority being
/// Spot or Low; `spot_priced` is whether the server has a spot price for the set's SKU (None:
/// not checked).
pub fn validate(
    spot: bool,
    eviction_policy: Option<EvictionPolicy>,
    billing: Option<&BillingProfile>,
    events: Option<&ScheduledEventsProfile>,
    restore: Option<&SpotRestorePolicy>,
    sku: &str,
    spot_priced: Option<bool>,
) -> Result<(), FieldError> {
    let vp = "virtualMachineProfile";
    if !spot {
        if eviction_policy.is_some() {
            return Err(FieldError::new(
                format!("{vp}.evictionPolicy"),
                "applies only to Spot (or Low) priority; set virtualMachineProfile.priority=Spot or remove it",
            ));
        }
        if billing.is_some() {
            return Err(FieldError::new(
                format!("{vp}.billingProfile.maxPrice"),
                "applies only to Spot (or Low) priority; a Regular set is billed at the regular price",
            ));
        }
        if restore.is_some_and(|r| r.enabled) {
            return Err(FieldError::new("spotRestorePolicy.enabled", "applies only to Spot (or Low) priority"));
        }
    }
    if let Some(b) = billing {
        let f = format!("{vp}.billingProfile.maxPrice");
        if !(b.max_price == -1.0 || b.max_price > 0.0) || !b.max_price.is_finite() {
            return Err(FieldError::new(
                f,
                format!("{} is not allowed; use -1 (never evict for price) or a price above 0", b.max_price),
            ));
        }
        let scaled = b.max_price * 100_000.0;
        if (scaled - scaled.round()).abs() > 1e-6 {
            return Err(FieldError::new(f, "allows at most 5 decimal places"));
        }
    }
    if let Some(p) = events.and_then(|e| e.terminate_notification_profile.as_ref()) {
        let f = format!("{vp}.scheduledEventsProfile.terminateNotificationProfile");
        if p.enable && spot {
            return Err(FieldError::new(
                format!("{f}.enable"),
                "terminate notifications cannot be enabled on Spot (Spot instances get a Preempt event instead)",
            ));
        }
        let secs = parse_iso8601(&p.not_before_timeout).map(|d| d.num_seconds());
        if !secs.is_some_and(|s| (TERMINATE_NOTICE_MIN..=TERMINATE_NOTICE_MAX).contains(&s)) {
            return Err(FieldError::new(
                format!("{f}.notBeforeTimeout"),
                format!("'{}' is out of range; allowed: PT5M to PT15M (ISO 8601)", p.not_before_timeout),
            ));
        }
    }
    if let Some(r) = restore {
        let d = parse_iso8601(&r.restore_timeout);
        if !d.is_some_and(|d| d > Duration::zero() && d <= Duration::days(1)) {
            return Err(FieldError::new(
                "spotRestorePolicy.restoreTimeout",
                format!("'{}' is not allowed; an ISO 8601 duration from PT1S to P1D, e.g. PT1H", r.restore_timeout),
            ));
        }
    }
    if spot && spot_priced == Some(false) {
        return Err(FieldError::new(
            "virtualMachineProfile.priority",
            format!("Spot needs a spot price for '{sku}'; add [prices.\"{sku}\"] spot = ... (or spot_schedule) to the server config"),
        ));
    }
    Ok(())
}

string_enum!(
    /// A scheduled event's `EventType`, as Azure's metadata service names them.
    ScheduledEventType { Preempt = "Preempt", Terminate = "Terminate", Reboot = "Reboot", Redeploy = "Redeploy", Freeze = "Freeze" } default Preempt
);

string_enum!(
    /// A scheduled event's `EventStatus`.
    ScheduledEventStatus { Scheduled = "Scheduled", Started = "Started" } default Scheduled
);

/// One event posted to an instance ahead of something taking it away.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledEvent {
    pub event_id: String,
    pub event_type: ScheduledEventType,
    pub status: ScheduledEventStatus,
    /// The action does not happen before this, unless the instance acknowledges first.
    pub not_before: DateTime<Utc>,
    pub description: String,
    /// When the guest acknowledged (POST `StartRequests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// Why a Preempt was posted (capacity, price, simulated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<EvictionReason>,
}

impl ScheduledEvent {
    pub fn new(
        event_type: ScheduledEventType,
        now: DateTime<Utc>,
        notice: Duration,
        description: impl Into<String>,
        reason: Option<EvictionReason>,
    ) -> Self {
        // Unique enough and stable: type, instant and a counter of the nanoseconds.
        let event_id = format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (now.timestamp() as u64) & 0xffff_ffff,
            (now.timestamp_subsec_nanos() >> 16) & 0xffff,
            (now.timestamp_subsec_nanos() >> 4) & 0xfff,
            event_type as u16 as u32 & 0xfff,
            rand_tail(now)
        );
        Self {
            event_id,
            event_type,
            status: ScheduledEventStatus::Scheduled,
            not_before: now + notice,
            description: description.into(),
            acknowledged_at: None,
            reason,
        }
    }

    /// True once the action may go ahead: acknowledged, or the notice is over.
    pub fn due(&self, now: DateTime<Utc>) -> bool {
        self.acknowledged_at.is_some() || now >= self.not_before
    }
}

fn rand_tail(now: DateTime<Utc>) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    (now.timestamp_nanos_opt().unwrap_or_default() as u64 ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)) & 0xffff_ffff_ffff
}

string_enum!(
    /// Why a Spot instance was evicted.
    EvictionReason { Capacity = "Capacity", Price = "Price", Simulated = "Simulated" } default Capacity
);

/// What is recorded on an instance evicted with `Deallocate` (shown in `list-instances`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Eviction {
    pub at: DateTime<Utc>,
    pub reason: EvictionReason,
    pub detail: String,
}

/// One host as `[[hosts]]` in the server config declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    pub name: String,
    /// The zone label this host serves; none = any zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The rack or other shared failure domain; none = the host is a fault domain of its own.
    /// Hosts of one zone sharing a label are one fault domain (see herd-capacity's rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_domain: Option<String>,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Allowed ratio of allocated vCPUs to real ones (memory is never overcommitted).
    #[serde(default = "one")]
    pub overcommit: f64,
    /// Whether new instances may be placed here (default true). False for a cordoned joined
    /// host: what it holds still counts, nothing new goes there.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub schedulable: bool,
}

fn one() -> f64 {
    1.0
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// A SKU's prices per hour, as `[prices."SKU"]` in the server config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SkuPrice {
    #[serde(default)]
    pub regular: f64,
    /// A fixed spot price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot: Option<f64>,
    /// A CSV file of `timestamp,price` lines (RFC 3339), watched by the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_schedule: Option<String>,
}

/// The price table: SKU name (canonical spelling) → prices.
pub type PriceTable = BTreeMap<String, SkuPrice>;

/// The priority a record bills and is placed at: Low is Spot's older name.
pub fn is_spot(p: crate::scale_set::Priority) -> bool {
    !matches!(p, crate::scale_set::Priority::Regular)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(spot: bool, ep: Option<EvictionPolicy>, b: Option<f64>, tn: Option<(bool, &str)>) -> Result<(), FieldError> {
        let billing = b.map(|max_price| BillingProfile { max_price });
        let events = tn.map(|(enable, t)| ScheduledEventsProfile {
            terminate_notification_profile: Some(TerminateNotificationProfile { enable, not_before_timeout: t.into() }),
        });
        validate(spot, ep, billing.as_ref(), events.as_ref(), None, "Standard_B1s", Some(true))
    }

    #[test]
    fn regular_refuses_spot_fields() {
        let e = v(false, None, Some(0.02), None).unwrap_err();
        assert!(e.to_string().contains("billingProfile.maxPrice"), "{e}");
        let e = v(false, Some(EvictionPolicy::Delete), None, None).unwrap_err();
        assert!(e.to_string().contains("evictionPolicy"), "{e}");
        assert!(v(false, None, None, Some((true, "PT5M"))).is_ok());
    }

    #[test]
    fn spot_rules() {
        assert!(v(true, Some(EvictionPolicy::Delete), Some(-1.0), None).is_ok());
        assert!(v(true, None, Some(0.00001), None).is_ok());
        let e = v(true, None, Some(0.000001), None).unwrap_err();
        assert!(e.to_string().contains("5 decimal"), "{e}");
        let e = v(true, None, Some(0.0), None).unwrap_err();
        assert!(e.to_string().contains("-1"), "{e}");
        let e = v(true, None, None, Some((true, "PT5M"))).unwrap_err();
        assert!(e.to_string().contains("cannot be enabled on Spot"), "{e}");
        let e = validate(true, None, None, None, None, "Standard_B1s", Some(false)).unwrap_err();
        assert!(e.to_string().contains("spot price"), "{e}");
    }

    #[test]
    fn terminate_notice_range() {
        for bad in ["PT4M", "PT16M", "5 minutes", "PT0S"] {
            let e = v(false, None, None, Some((true, bad))).unwrap_err();
            assert!(e.to_string().contains("PT5M to PT15M"), "{bad}: {e}");
        }
        assert!(v(false, None, None, Some((true, "PT15M"))).is_ok());
    }

    #[test]
    fn events_come_due_on_ack_or_time() {
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let mut e = ScheduledEvent::new(ScheduledEventType::Preempt, t0, Duration::seconds(30), "spot eviction", None);
        assert!(!e.due(t0 + Duration::seconds(29)));
        assert!(e.due(t0 + Duration::seconds(30)));
        e.acknowledged_at = Some(t0);
        assert!(e.due(t0));
        let other = ScheduledEvent::new(ScheduledEventType::Preempt, t0, Duration::seconds(30), "x", None);
        assert_ne!(e.event_id, other.event_id);
    }
}
