//! Each concern of the reconciler's pass has its own entry on the status board, backed by what
//! its planner did in the passes: runs, duration, last error and what it waits for.

use herd_controller_runtime::{Phase, Runtime, StatusBoard};
use herd_reconciler::testkit::{model, stored_set, t0, SimEnv};
use herd_reconciler::{Concern, ConcernBoard, FaultPoint, Faults, ReconcilerConfig};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// A set of `capacity` instances on image version `version`, no overprovisioning.
fn web(capacity: i64, version: &str) -> herd_model::scale_set::StoredScaleSet {
    let extra = json!({"overprovision": false,
        "virtualMachineProfile": {"storageProfile": {"imageReference": {"version": version}}}});
    stored_set("web", 1, model(capacity, extra))
}

fn board_for(env: &SimEnv, faults: Option<Arc<Faults>>) -> (StatusBoard, herd_reconciler::Reconciler) {
    let board = StatusBoard::default();
    let mut rec = env.reconciler(ReconcilerConfig::default());
    if let Some(f) = faults {
        rec = rec.with_faults(f);
    }
    let concerns = ConcernBoard::register(board.clone(), &["scaleSet".into()], Duration::from_secs(2));
    (board, rec.with_concern_board(concerns))
}

#[test]
fn registering_the_reconciler_adds_its_controller_and_one_entry_per_concern() {
    let env = SimEnv::new(t0());
    let mut runtime = Runtime::new(herd_state::State::in_memory().unwrap(), Arc::new(env.clock.clone()));
    herd_reconciler::register(&mut runtime, env.reconciler(ReconcilerConfig::default()));
    let names: Vec<String> = runtime.board().snapshot().into_iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            "reconciler",
            "reconciler.capacity",
            "reconciler.orphans",
            "reconciler.os-image",
            "reconciler.repair",
            "reconciler.rolling-upgrade",
            "reconciler.scale",
            "reconciler.strays"
        ]
    );
    let scale = runtime.board().get("reconciler.scale").unwrap();
    assert_eq!((scale.phase, scale.runs), (Phase::Starting, 0));
    assert_eq!(scale.watches, runtime.board().get("reconciler").unwrap().watches);
}

#[tokio::test]
async fn the_entries_show_what_each_concern_did_and_waits_for() {
    let env = SimEnv::new(t0());
    let (board, rec) = board_for(&env, None);
    env.put_set(&web(2, "latest"));

    // Pass 1 creates the two instances: the scale concern made a step and runs again at once.
    let report = rec.pass().await.unwrap();
    assert!(report.steps > 0);
    let scale = board.get(Concern::Scale.name()).unwrap();
    assert_eq!((scale.runs, scale.phase, scale.last_run_at), (1, Phase::Running, Some(t0())));
    assert!(scale.last_run_ms.is_some() && scale.last_error.is_none());
    assert_eq!(scale.waiting_for.as_deref(), Some("the next pass, at once (its last pass made 1 step(s))"));
    // The other concerns ran too, and found nothing to do: no set has a rolling policy or
    // repairs, no image is newer, no host is short, nothing is stray or unrecorded.
    for c in [
        Concern::RollingUpgrade,
        Concern::Repair,
        Concern::OsImage,
        Concern::Capacity,
        Concern::Strays,
        Concern::Orphans,
    ] {
        let s = board.get(c.name()).unwrap();
        assert_eq!((s.runs, s.phase), (1, Phase::Idle), "{}", c.name());
    }

    // Pass 2 sees them in flight.
    rec.pass().await.unwrap();
    let waiting = board.get(Concern::Scale.name()).unwrap().waiting_for.unwrap_or_default();
    assert!(waiting.starts_with("rg/web: 2 instance(s) in transition"), "{waiting}");

    // Until quiet: the scale concern ends idle, having made no step in its last pass.
    let mut passes = 2;
    while rec.pass().await.unwrap().steps > 0 {
        passes += 1;
        assert!(passes < 20, "no quiet pass");
    }
    let scale = board.get(Concern::Scale.name()).unwrap();
    assert_eq!((scale.runs, scale.phase), (passes + 1, Phase::Idle));
    assert_eq!(
        scale.waiting_for.as_deref(),
        Some("a change, or the reconciler's next pass (its last pass made 0 step(s))")
    );
}

#[tokio::test]
async fn a_failed_pass_is_the_last_error_of_the_concerns_whose_steps_it_carried() {
    let env = SimEnv::new(t0());
    let faults = Arc::new(Faults::default());
    faults.fail_at(0);
    let (board, rec) = board_for(&env, Some(faults));
    env.put_set(&web(1, "latest"));
    let err = rec.pass().await.unwrap_err();
    assert!(matches!(err, herd_reconciler::ReconcileError::Injected(FaultPoint::AfterIntent)), "{err}");
    let scale = board.get(Concern::Scale.name()).unwrap();
    assert_eq!((scale.phase, scale.failures, scale.consecutive_failures), (Phase::BackingOff, 1, 1));
    assert_eq!(scale.last_error.as_deref(), Some("injected fault at AfterIntent"));
    // A concern without steps in that pass did not fail.
    let orphans = board.get(Concern::Orphans.name()).unwrap();
    assert_eq!((orphans.failures, orphans.phase), (0, Phase::Idle));

    rec.pass().await.unwrap();
    let scale = board.get(Concern::Scale.name()).unwrap();
    assert_eq!((scale.failures, scale.consecutive_failures), (1, 0), "the next pass succeeded: {scale:?}");
    assert!(scale.last_success_at.is_some());
}

#[tokio::test]
async fn a_failed_driver_call_is_the_last_error_of_the_concern_whose_step_it_was() {
    let env = SimEnv::new(t0());
    let (board, rec) = board_for(&env, None);
    env.put_set(&web(1, "9.9.9"));
    rec.pass().await.unwrap();
    let scale = board.get(Concern::Scale.name()).unwrap();
    let error = scale.last_error.clone().unwrap_or_default();
    assert!(error.contains("rg/web instance 0: create:") && error.contains("not in the gallery"), "{error}");
    assert_eq!((scale.failures, scale.last_error_at), (1, Some(t0())));
    assert!(board.get(Concern::Capacity.name()).unwrap().last_error.is_none());
}
