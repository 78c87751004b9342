//! Validation errors name the JSON path and the allowed values; the JSON is Azure's shape.

use super::fixtures::*;
use crate::model::*;
use herd_model::FieldError;

fn fails(s: &AutoscaleSetting) -> FieldError {
    s.validate().expect_err("should be refused")
}

fn base() -> AutoscaleSetting {
    one(2, 10, 3, vec![out(CPU, 70.0, 1), inn(CPU, 30.0, 1)])
}

#[test]
fn a_good_setting_validates() {
    base().validate().unwrap();
}

/// A case of a table: (mutation of a part, field below the part, message fragment).
type Case<T> = (fn(&mut T), &'static str, &'static str);

/// Refuses `base()` changed by each case of a table of (mutation of the part `at` picks, field
/// below `prefix`, message fragment), naming the field and the allowed values.
fn refused<T>(prefix: &str, at: fn(&mut AutoscaleSetting) -> &mut T, cases: Vec<Case<T>>) {
    for (i, (mutate, field, frag)) in cases.into_iter().enumerate() {
        let mut s = base();
        mutate(at(&mut s));
        let e = fails(&s);
        assert_eq!(e.field, format!("{prefix}{field}"), "{prefix} case {i}: {e}");
        assert!(e.message.contains(frag), "{prefix} case {i}: {e}");
    }
}

/// Tables: (mutation, field, message fragment), of the whole setting, its capacity, a rule, a
/// recurrence.
#[test]
fn validation_errors_name_the_field_and_the_allowed_values() {
    let cases: Vec<Case<AutoscaleSetting>> = vec![
        (|s| s.profiles.clear(), "profiles", "at least one profile"),
        (|s| s.name = " ".into(), "name", "must not be empty"),
        (|s| s.target_resource_uri.clear(), "targetResourceUri", "must name the scale set"),
        (
            |s| s.profiles[0].rules[1].metric_trigger.time_window = "PT30S".into(),
            "profiles[0].rules[1].metricTrigger.timeWindow",
            "shorter than timeGrain PT1M",
        ),
        (|s| s.profiles[0].rules = vec![out(CPU, 70.0, 1); 11], "profiles[0].rules", "at most 10"),
        (
            |s| {
                s.profiles[0].fixed_date = Some(FixedDate {
                    time_zone: "UTC".into(),
                    start: "2026-12-24T10:00:00Z".into(),
                    end: "2026-12-24T09:00:00Z".into(),
                })
            },
            "profiles[0].fixedDate.end",
            "the end must come after the start",
        ),
        (
            |s| {
                s.profiles[0].fixed_date = Some(FixedDate {
                    time_zone: "UTC".into(),
                    start: "Christmas".into(),
                    end: "2026-12-24T09:00:00Z".into(),
                })
            },
            "profiles[0].fixedDate.start",
            "not a date-time",
        ),
        (
            |s| {
                s.profiles[0].fixed_date = Some(FixedDate {
                    time_zone: "Nowhere".into(),
                    start: "2026-12-24".into(),
                    end: "2026-12-25".into(),
                })
            },
            "profiles[0].fixedDate.timeZone",
            "unknown time zone",
        ),
        (
            |s| {
                s.profiles[0].recurrence = Some(recurrence("UTC", &["Mon"], 8, 0));
                s.profiles[0].fixed_date =
                    Some(FixedDate { time_zone: "UTC".into(), start: "2026-12-24".into(), end: "2026-12-25".into() });
            },
            "profiles[0].fixedDate",
            "not both",
        ),
        (
            |s| s.profiles.push(profile("second", 1, 2, 1, vec![])),
            "profiles[1]",
            "profiles[0] is already the default profile",
        ),
        (
            |s| {
                let mut p = profile("default", 1, 2, 1, vec![]);
                p.recurrence = Some(recurrence("UTC", &["Mon"], 8, 0));
                s.profiles.push(p)
            },
            "profiles[1].name",
            "must be unique",
        ),
        (
            |s| {
                s.notifications.push(Notification {
                    operation: NotificationOperation::Scale,
                    email: None,
                    webhooks: vec![Webhook { service_uri: "ftp://x".into(), properties: Default::default() }],
                })
            },
            "notifications[0].webhooks[0].serviceUri",
            "allowed schemes: http, https",
        ),
        (
            |s| {
                s.notifications.push(Notification {
                    operation: NotificationOperation::Scale,
                    email: Some(EmailNotification { send_to_subscription_administrator: true, ..Default::default() }),
                    webhooks: vec![],
                })
            },
            "notifications[0].email",
            "not supported yet",
        ),
        (
            |s| s.target_tracking = Some(TargetTracking { scale_out_cooldown: "PT5M".into(), ..tracking(CPU, 0.0) }),
            "targetTracking.target",
            "must be a number above 0",
        ),
    ];
    refused("", |s| s, cases);
    let capacity: Vec<Case<Capacity>> = vec![
        (|c| c.minimum = 11, "minimum", "greater than maximum 10; allowed: 0 to 10"),
        (|c| c.default = 1, "default", "outside minimum..maximum; allowed: 2 to 10"),
        (|c| c.default = 11, "default", "allowed: 2 to 10"),
        (|c| c.maximum = 1001, "maximum", "allowed: 0 to 1000"),
        (|c| c.minimum = -1, "minimum", "-1 is out of range; allowed: 0 to 1000"),
    ];
    refused("profiles[0].capacity.", |s| &mut s.profiles[0].capacity, capacity);
    let rule: Vec<Case<Rule>> = vec![
        (|r| r.metric_trigger.time_grain = "5 minutes".into(), "metricTrigger.timeGrain", "not an ISO 8601 duration"),
        (|r| r.metric_trigger.time_grain = "PT13H".into(), "metricTrigger.timeGrain", "allowed: PT1S to PT12H"),
        (|r| r.scale_action.cooldown = "P8D".into(), "scaleAction.cooldown", "allowed: PT0S to P7D"),
        (|r| r.scale_action.value = "two".into(), "scaleAction.value", "not a whole number"),
        (|r| r.scale_action.value = "0".into(), "scaleAction.value", "allowed: 1 to 1000"),
        (
            |r| r.scale_action.direction = ScaleDirection::None,
            "scaleAction.direction",
            "only goes with type ExactCount",
        ),
        (|r| r.metric_trigger.metric_name = "".into(), "metricTrigger.metricName", "must not be empty"),
        (|r| r.metric_trigger.threshold = f64::NAN, "metricTrigger.threshold", "finite"),
    ];
    refused("profiles[0].rules[0].", |s| &mut s.profiles[0].rules[0], rule);
    let schedule: Vec<Case<Option<Recurrence>>> = vec![
        (|r| *r = Some(recurrence("Mars/Olympus", &["Monday"], 8, 0)), "timeZone", "unknown time zone 'Mars/Olympus'"),
        (|r| *r = Some(recurrence("UTC", &["Funday"], 8, 0)), "days[0]", "allowed values: Monday, Tuesday"),
        (|r| *r = Some(recurrence("UTC", &["Mon"], 24, 0)), "hours[0]", "allowed: 0 to 23"),
        (|r| *r = Some(recurrence("UTC", &["Mon"], 8, 60)), "minutes[0]", "allowed: 0 to 59"),
    ];
    refused("profiles[0].recurrence.schedule.", |s| &mut s.profiles[0].recurrence, schedule);
}

#[test]
fn json_is_azure_shaped() {
    // An Azure export (counts as strings, operation/email present) loads.
    let azure = r#"{
      "name": "web-autoscale",
      "enabled": true,
      "targetResourceUri": "/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/web",
      "profiles": [{
        "name": "default",
        "capacity": {"minimum": "2", "maximum": "10", "default": "3"},
        "rules": [{
          "metricTrigger": {
            "metricName": "Percentage CPU",
            "metricNamespace": "microsoft.compute/virtualmachinescalesets",
            "metricResourceUri": "/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/web",
            "timeGrain": "PT1M", "statistic": "Average", "timeWindow": "PT5M", "timeAggregation": "Average",
            "operator": "GreaterThan", "threshold": 70, "dimensions": [], "dividePerInstance": false
          },
          "scaleAction": {"direction": "Increase", "type": "ChangeCount", "value": "1", "cooldown": "PT5M"}
        }]
      }],
      "notifications": [{
        "operation": "Scale",
        "email": {"sendToSubscriptionAdministrator": false, "sendToSubscriptionCoAdministrators": false, "customEmails": []},
        "webhooks": [{"serviceUri": "http://127.0.0.1:9000/hook", "properties": {"team": "web"}}]
      }]
    }"#;
    let s: AutoscaleSetting = serde_json::from_str(azure).unwrap();
    s.validate().unwrap();
    assert_eq!(s.profiles[0].capacity, Capacity { minimum: 2, maximum: 10, default: 3 });
    // Numbers are accepted too, and written back as strings.
    let minimal = r#"{"name":"a","targetResourceUri":"/x","profiles":[{"name":"default","capacity":{"minimum":0,"maximum":5,"default":1},
        "rules":[{"metricTrigger":{"metricName":"source/jobs","operator":"greaterThan","threshold":"10"},
                  "scaleAction":{"direction":"Increase","type":"ExactCount","value":5}}]}]}"#;
    let s: AutoscaleSetting = serde_json::from_str(minimal).unwrap();
    s.validate().unwrap();
    assert!(s.enabled);
    let t = &s.profiles[0].rules[0].metric_trigger;
    assert_eq!((t.time_grain.as_str(), t.time_window.as_str(), t.statistic), ("PT1M", "PT5M", Statistic::Average));
    assert_eq!(t.operator, ComparisonOperator::GreaterThan);
    assert_eq!(s.profiles[0].rules[0].scale_action.value, "5");
    assert_eq!(s.profiles[0].rules[0].scale_action.cooldown, "PT5M");
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["profiles"][0]["capacity"], serde_json::json!({"minimum": "0", "maximum": "5", "default": "1"}));
    assert_eq!(v["profiles"][0]["rules"][0]["scaleAction"]["type"], "ExactCount");
    let back: AutoscaleSetting = serde_json::from_value(v).unwrap();
    assert_eq!(back, s);

    // Unknown fields and bad enum values are refused with the allowed values.
    let e = serde_json::from_str::<AutoscaleSetting>(
        &minimal.replace("\"enabled\"", "\"x\"").replace("\"name\":\"a\"", "\"name\":\"a\",\"enabeld\":true"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown field `enabeld`"), "{e}");
    let e = serde_json::from_str::<AutoscaleSetting>(&minimal.replace("greaterThan", "Above")).unwrap_err().to_string();
    assert!(e.contains("allowed values: GreaterThan, GreaterThanOrEqual"), "{e}");
    let e = serde_json::from_str::<AutoscaleSetting>(&minimal.replace("\"maximum\":5", "\"maximum\":\"five\""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("'five' is not a whole number"), "{e}");
}

#[test]
fn openapi_schema_is_generated() {
    use utoipa::PartialSchema;
    let schema = serde_json::to_value(AutoscaleSetting::schema()).unwrap();
    assert!(schema.to_string().contains("targetResourceUri"), "{schema}");
    let cap = serde_json::to_value(Capacity::schema()).unwrap();
    assert_eq!(cap["properties"]["minimum"]["type"], "string", "{cap}");
}
