//! Tests of applying rolling-upgrade decisions to a draft: the upgrade in the status, the
//! pending actions of a batch, and the model writes of an OS image upgrade and a rollback.

use super::*;
use crate::draft::ModelChange;
use crate::rolling::{plan_rolling, Health, RollingInput};
use crate::testkit::{draft, model, record, stored_set, t0};
use chrono::Duration;
use herd_model::instance::{InstanceState, PendingAction};
use herd_state::transitions::InvalidTransitions;
use serde_json::json;
use std::collections::BTreeMap;

fn rolling_set(generation: u64) -> herd_model::scale_set::StoredScaleSet {
    stored_set("web", generation, model(4, json!({"upgradePolicy": {"mode": "Rolling", "rollingUpgradePolicy": {}}})))
}

/// The planner's first steps for a set on generation 2 whose instances run generation 1.
fn begin(w: &SetDraft<'_>) -> Vec<RollingStep> {
    let instances: Vec<_> = w.records.values().map(|r| r.record.clone()).collect();
    let health: BTreeMap<InstanceId, Health> = instances.iter().map(|r| (r.instance_id, Health::Healthy)).collect();
    let input = RollingInput {
        set: w.set,
        upgrade: None,
        request: None,
        instances: &instances,
        health: &health,
        has_health_source: true,
        in_place_extensions: true,
        now: t0(),
        batch_timeout: Duration::minutes(10),
        health_grace: Duration::seconds(30),
    };
    plan_rolling(&input)
}

#[test]
fn a_batch_marks_its_instances_and_is_recorded_in_the_upgrade() {
    let set = rolling_set(2);
    let t = InvalidTransitions::default();
    let mut w = draft(&set, (0..4).map(|i| record(i, 1, InstanceState::Running)).collect(), &t);
    let steps = begin(&w);
    assert!(matches!(&steps[0], RollingStep::Begin(_)), "{steps:?}");
    for s in &steps {
        apply_step(&mut w, s, t0());
    }
    let u = w.status.rolling_upgrade.clone().expect("the upgrade is on the status");
    assert_eq!((u.from_generation, u.target_generation, u.state), (1, 2, RollingState::RollingForward));
    apply_step(&mut w, &RollingStep::StartBatch(vec![(InstanceId(0), PendingAction::Reimage)]), t0());
    let u = w.status.rolling_upgrade.clone().unwrap();
    let batch = u.batches.last().unwrap();
    assert_eq!((batch.instances.clone(), batch.started_at, batch.finished_at), (vec![InstanceId(0)], t0(), None));
    let r = &w.records[&InstanceId(0)];
    assert_eq!((r.dirty, r.record.pending), (true, Some(PendingAction::Reimage)));
    assert!(w.log.iter().any(|(op, m)| op == "RollingUpgradeBatch" && m.ends_with("instance(s) 0")), "{:?}", w.log);

    let later = t0() + Duration::minutes(1);
    apply_step(&mut w, &RollingStep::FinishBatch { unhealthy: vec![] }, later);
    let u = w.status.rolling_upgrade.clone().unwrap();
    assert_eq!((u.batches.last().unwrap().finished_at, u.succeeded.clone()), (Some(later), vec![InstanceId(0)]));
}

#[test]
fn a_newer_os_image_bumps_the_generation_and_requests_a_reimaging_upgrade() {
    let set = rolling_set(3);
    let t = InvalidTransitions::default();
    let mut w = draft(&set, vec![], &t);
    w.status.os_image_version = Some("1.0.0".into());
    apply_step(&mut w, &RollingStep::OsImage { version: "1.1.0".into(), upgrade: true }, t0());
    assert_eq!(w.status.os_image_version.as_deref(), Some("1.1.0"));
    assert_eq!(w.status.upgrade_request, Some(UpgradeRequest::Start { canary: None, pause: false, reimage: true }));
    match w.model_changes.as_slice() {
        [ModelChange::OsImage(next)] => {
            assert_eq!(next.model_generation, 4);
            assert_eq!(next.model, set.model, "only the generation changes");
        }
        other => panic!("one OS image model change expected, got {other:?}"),
    }
    assert!(w.log[0].1.contains("model generation 3 → 4"), "{:?}", w.log);

    // The first version seen is only remembered.
    let mut w = draft(&set, vec![], &t);
    apply_step(&mut w, &RollingStep::OsImage { version: "1.0.0".into(), upgrade: false }, t0());
    assert_eq!((w.status.os_image_version.as_deref(), w.model_changes.len()), (Some("1.0.0"), 0));
    assert!(w.status.upgrade_request.is_none() && w.log.is_empty());
}

#[test]
fn a_rollback_returns_to_the_old_profile_and_moves_untouched_instances_or_faults_without_it() {
    let set = rolling_set(2);
    let t = InvalidTransitions::default();
    let recs = || (0..3).map(|i| record(i, 1, InstanceState::Running)).collect::<Vec<_>>();
    let started = |w: &mut SetDraft<'_>| {
        for s in begin(w) {
            apply_step(w, &s, t0());
        }
        apply_step(w, &RollingStep::StartBatch(vec![(InstanceId(0), PendingAction::Reimage)]), t0());
    };

    let mut w = draft(&set, recs(), &t);
    started(&mut w);
    apply_step(&mut w, &RollingStep::Rollback { reason: "too many unhealthy".into() }, t0());
    let u = w.status.rolling_upgrade.clone().unwrap();
    assert_eq!(u.state, RollingState::Faulted);
    assert!(u.error.as_deref().is_some_and(|e| e.contains("not on record")), "{u:?}");
    assert!(w.model_changes.is_empty());

    let mut w = draft(&set, recs(), &t);
    started(&mut w);
    let mut old = set.model.clone();
    old.sku.name = "Standard_B2s".into();
    w.rollback_model = Some(old);
    apply_step(&mut w, &RollingStep::Rollback { reason: "too many unhealthy".into() }, t0());
    let u = w.status.rolling_upgrade.clone().unwrap();
    assert_eq!((u.state, u.target_generation), (RollingState::RollingBack, 3));
    match w.model_changes.as_slice() {
        [ModelChange::Rollback(next)] => {
            assert_eq!((next.model_generation, next.model.sku.name.as_str()), (3, "Standard_B2s"))
        }
        other => panic!("one rollback model change expected, got {other:?}"),
    }
    // Instance 0 was in the batch and is re-imaged back; 1 and 2 already run the old model.
    let gens: Vec<u64> = w.records.values().map(|r| r.record.model_generation).collect();
    assert_eq!(gens, [1, 3, 3]);
}
