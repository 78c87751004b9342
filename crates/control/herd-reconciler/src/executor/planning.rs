//! The per-set concern planners of a pass, in their fixed order: scale (the lifecycle planner,
//! [`crate::plan`]), rolling upgrade, OS image, repair. They plan from one snapshot of the set,
//! so a later concern sees what an earlier one decided only in the next pass, as before.

use super::Reconciler;
use crate::concerns::{Concern, PassConcerns};
use crate::draft::SetDraft;
use crate::plan::{plan, SetInput, Step};
use crate::repair::{plan_repairs, RepairInput};
use crate::rolling::{plan_rolling, RollingInput};
use chrono::{DateTime, Utc};
use herd_driver::ObservedPower;
use herd_model::{
    image::{self, Image},
    instance::{InstanceRecord, InstanceState},
    network::LoadBalancer,
    scale_set::{ScaleSetStatus, StoredScaleSet, UpgradeMode},
    InstanceId, InstanceKey,
};
use herd_state::Versioned;
use std::collections::BTreeMap;

impl Reconciler {
    /// Plans one set: its steps (scale, rolling upgrade, OS image, repairs) and its draft. Also
    /// returns whether something in it is under way.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn plan_set<'a>(
        &'a self,
        set: &'a Versioned<StoredScaleSet>,
        status: Option<&Versioned<ScaleSetStatus>>,
        records: Vec<Versioned<InstanceRecord>>,
        observed: Option<&BTreeMap<InstanceId, ObservedPower>>,
        images: &[Image],
        lbs: &[LoadBalancer],
        now: DateTime<Utc>,
        concerns: &mut PassConcerns,
    ) -> (SetDraft<'a>, bool) {
        let empty_obs = BTreeMap::new();
        let values: Vec<InstanceRecord> = records.iter().map(|o| o.value.clone()).collect();
        let mut draft = SetDraft::new(
            &set.value,
            set.revision,
            status.map(|o| (o.value.clone(), o.revision)),
            records.into_iter().map(|o| (o.value, Some(o.revision))),
            &self.transitions,
        );
        let (s, status) = (&set.value, &draft.status);
        let name = format!("{}/{}", s.group, s.name);
        let in_place_extensions = self.in_place_extensions(s, images);
        let drains = self.drains_of(s, &values);
        let mut steps = concerns.timed(Concern::Scale, || {
            plan(&SetInput {
                in_place_extensions,
                set: s,
                set_revision: set.revision,
                status,
                instances: &values,
                observed: observed.unwrap_or(&empty_obs),
                now,
                limits: &self.config.limits,
                drains: &drains,
            })
            .steps
        });
        let moving = values
            .iter()
            .filter(|r| r.state.is_transitional() || r.state == InstanceState::Failed || r.draining_since.is_some())
            .count();
        let mut waiting = moving > 0;
        let scale = concerns.run(Concern::Scale);
        if moving > 0 {
            scale.waiting.push(format!("{name}: {moving} instance(s) in transition, failed or draining"));
        }
        if let Some(sus) = &status.suspended {
            scale.waiting.push(format!("{name}: provisioning suspended ({})", sus.reason));
        }
        let rolling_relevant = s.model.upgrade_policy.mode == UpgradeMode::Rolling
            || status.upgrade_request.is_some()
            || status.rolling_upgrade.as_ref().is_some_and(|u| u.state.is_active());
        let repairs_on = s.model.automatic_repairs_policy.as_ref().is_some_and(|p| p.enabled) && !s.deleting;
        // Health and the health source, read once for both planners that need them.
        let (health, has_health_source) = if (rolling_relevant && !s.deleting) || repairs_on {
            (self.health_of(s, &values), herd_model::network::has_health_source(&s.model, lbs))
        } else {
            (BTreeMap::new(), false)
        };
        if rolling_relevant && !s.deleting {
            let rolling = concerns.timed(Concern::RollingUpgrade, || {
                plan_rolling(&RollingInput {
                    set: s,
                    upgrade: status.rolling_upgrade.as_ref(),
                    request: status.upgrade_request.as_ref(),
                    instances: &values,
                    health: &health,
                    has_health_source,
                    in_place_extensions,
                    now,
                    batch_timeout: self.config.limits.batch_timeout,
                    health_grace: self.config.limits.health_grace,
                })
            });
            if let Some(u) = status.rolling_upgrade.as_ref().filter(|u| u.state.is_active()) {
                waiting = true;
                concerns.run(Concern::RollingUpgrade).waiting.push(format!(
                    "{name}: rolling upgrade to generation {} {} (batch {})",
                    u.target_generation,
                    u.state,
                    u.batches.len()
                ));
            }
            steps.extend(rolling.into_iter().map(Step::Rolling));
        }
        if !s.deleting && status.upgrade_request.is_none() {
            let os = concerns.timed(Concern::OsImage, || {
                let urn = s.model.virtual_machine_profile.storage_profile.image_reference.urn();
                let latest = urn.ok().and_then(|u| image::resolve(images, &u).map(|i| i.version.clone()));
                crate::rolling::plan_os_image(s, status.os_image_version.as_deref(), latest.as_deref())
            });
            steps.extend(os.map(Step::Rolling));
        }
        if repairs_on {
            let repairs = concerns.timed(Concern::Repair, || {
                plan_repairs(&RepairInput {
                    set: s,
                    state: &status.repairs,
                    instances: &values,
                    health: &health,
                    has_health_source,
                    upgrading: status.rolling_upgrade.as_ref().is_some_and(|u| u.state.is_active()),
                    now,
                    max_attempts: self.config.limits.repair_max_attempts,
                })
            });
            if let Some(sus) = &status.repairs.suspended {
                concerns.run(Concern::Repair).waiting.push(format!("{name}: repairs suspended ({})", sus.reason));
            }
            steps.extend(repairs.into_iter().map(Step::Repair));
        }
        // A run under way is not a step: the runner wakes the loop when it is done.
        steps.retain(|st| match st {
            Step::RunExtensions(id) => {
                !self.extensions.is_running(&InstanceKey { group: s.group.clone(), set: s.name.clone(), id: *id })
            }
            _ => true,
        });
        draft.steps = steps;
        (draft, waiting)
    }

    /// Whether this set's extensions can run in place (see `SetInput::in_place_extensions`).
    fn in_place_extensions(&self, set: &StoredScaleSet, images: &[Image]) -> bool {
        if !self.config.set_runs_vms(set, images) {
            return true;
        }
        let urn = set.model.virtual_machine_profile.storage_profile.image_reference.urn();
        urn.ok().and_then(|u| image::resolve(images, &u)).is_some_and(Image::has_guest_agent)
    }
}
