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

/// Table: (mutation, field, message fragment).
#[test]
fn validation_errors_name_the_field_and_the_allowed_values() {
    type Mutate = fn(&mut AutoscaleSetting);
    let cases: Vec<(Mutate, &str, &str)> = vec![
        (
            |s| s.profiles[0].capacity.minimum = 11,
            "profiles[0].capacity.minimum",
            "greater than maximum 10; allowed: 0 to 10",
        ),
        (
            |s| s.profiles[0].capacity.default = 1,
            "profiles[0].capacity.default",
            "outside minimum..maximum; allowed: 2 to 10",
        ),
        (|s| s.profiles[0].capacity.default = 11, "profiles[0].capacity.default", "allowed: 2 to 10"),
        (|s| s.profiles[0].capacity.maximum = 1001, "profiles[0].capacity.maximum", "allowed: 0 to 1000"),
        (
            |s| s.profiles[0].capacity.minimum = -1,
            "profiles[0].capacity.minimum",
            "-1 is out of range; allowed: 0 to 1000",
        ),
        (|s| s.profiles.clear(), "profiles", "at least one profile"),
        (|s| s.name = " ".into(), "name", "must not be empty"),
        (|s| s.target_resource_uri.clear(), "targetResourceUri", "must name the scale set"),
        (
            |s| s.profiles[0].rules[0].metric_trigger.time_grain = "5 minutes".into(),
            "profiles[0].rules[0].metricTrigger.timeGrain",
            "not an ISO 8601 duration",
        ),
        (
            |s| s.profiles[0].rules[1].metric_trigger.time_window = "PT30S".into(),
            "profiles[0].rules[1].metricTrigger.timeWindow",
            "shorter than timeGrain PT1M",
        ),
        (
            |s| s.profiles[0].rules[0].metric_trigger.time_grain = "PT13H".into(),
            "profiles[0].rules[0].metricTrigger.timeGrain",
            "allowed: PT1S to PT12H",
        ),
        (
            |s| s.profiles[0].rules[0].scale_action.cooldown = "P8D".into(),
            "profiles[0].rules[0].scaleAction.cooldown",
            "allowed: PT0S to P7D",
        ),
        (
            |s| s.profiles[0].rules[0].scale_action.value = "two".into(),
            "profiles[0].rules[0].scaleAction.value",
            "not a whole number",
        ),
        (
            |s| s.profiles[0].rules[0].scale_action.value = "0".into(),
            "profiles[0].rules[0].scaleAction.value",
            "allowed: 1 to 1000",
        ),
        (
            |s| s.profiles[0].rules[0].scale_action.direction = ScaleDirection::None,
            "profiles[0].rules[0].scaleAction.direction",
            "only goes with type ExactCount",
        ),
        (
            |s| s.profiles[0].rules[0].metric_trigger.metric_name = "".into(),
            "profiles[0].rules[0].metricTrigger.metricName",
            "must not be empty",
        ),
        (
            |s| s.profiles[0].rules[0].metric_trigger.threshold = f64::NAN,
            "profiles[0].rules[0].metricTrigger.threshold",
            "finite",
        ),
        (|s| s.profiles[0].rules = vec![out(CPU, 70.0, 1); 11], "profiles[0].rules", "at most 10"),
        (
            |s| s.profiles[0].recurrence = Some(recurrence("Mars/Olympus", &["Monday"], 8, 0)),
            "profiles[0].recurrence.schedule.timeZone",
            "unknown time zone 'Mars/Olympus'",
        ),
        (
            |s| s.profiles[0].recurrence = Some(recurrence("UTC", &["Funday"], 8, 0)),
            "profiles[0].recurrence.schedule.days[0]",
            "allowed values: Monday, Tuesday",
        ),
        (
            |s| s.profiles[0].recurrence = Some(recurrence("UTC", &["Mon"], 24, 0)),
            "profiles[0].recurrence.schedule.hours[0]",
            "allowed: 0 to 23",
        ),
        (
            |s| s.profiles[0].recurrence = Some(recurrence("UTC", &["Mon"], 8, 60)),
            "profiles[0].recurrence.schedule.minutes[0]",
            "allowed: 0 to 59",
        ),
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
    for (i, (mutate, field, frag)) in cases.into_iter().enumerate() {
        let mut s = base();
        mutate(&mut s);
        let e = fails(&s);
        assert_eq!(e.field, field, "case {i}: {e}");
        assert!(e.message.contains(frag), "case {i}: {e}");
    }
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
