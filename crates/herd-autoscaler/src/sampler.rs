//! Samples instance metrics from the driver into per-set series.
//!
//! Every time grain, for each scale set, the sampler asks the driver for each running
//! instance's stats and records the set's average `Percentage CPU` (per-instance metric: the
//! average over the instances sampled, with their count) and `Memory Used Bytes`. CPU use is the
//! driver's own figure when it has one, otherwise the CPU time consumed between two samples of
//! the same boot divided by the wall time and the vCPUs. An instance seen for the first time
//! gives no CPU value yet: no data, not zero.

use crate::series::{Point, Series};
use chrono::{DateTime, Utc};
use herd_driver::Driver;
use herd_model::{
    instance::{InstanceGoal, InstanceRecord, InstanceState},
    scale_set::StoredScaleSet,
    sku::SkuTable,
    InstanceKey,
};
use herd_store::{Expect, Kind, Store, StoreError, StoreExt, WriteOp};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// The metrics herd samples per scale set.
pub const CPU: &str = "Percentage CPU";
pub const MEMORY: &str = "Memory Used Bytes";
/// Every instance metric the sampler records (per-instance averages).
pub const INSTANCE_METRICS: &[&str] = &[CPU, MEMORY];

/// The store key of a set's series for `metric`.
pub fn series_key(set: &StoredScaleSet, metric: &str) -> String {
    format!("vmss/{}/{}/{}", set.group, set.name, metric.to_ascii_lowercase().replace(' ', "-"))
}

/// The previous CPU sample of an instance: its boot (`state_since`), when, and the CPU seconds.
type LastSample = (DateTime<Utc>, DateTime<Utc>, f64);

/// Remembers the previous CPU sample of each instance boot.
#[derive(Debug, Default)]
pub struct Sampler {
    last: Mutex<BTreeMap<InstanceKey, LastSample>>,
}

impl Sampler {
    /// Samples every set once at `now` and appends to their series. Returns how many sets got a point.
    pub async fn sample(
        &self,
        store: &dyn Store,
        driver: &dyn Driver,
        skus: &SkuTable,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let sets = store.list_as::<StoredScaleSet>(Kind::ScaleSet, "")?;
        let mut ops = Vec::new();
        let mut sampled = 0;
        let mut seen = Vec::new();
        for set in sets.iter().filter(|s| !s.value.deleting) {
            let set = &set.value;
            let vcpus = skus.lookup(&set.model.sku.name).map_or(1, |(_, s)| s.vcpus.max(1)) as f64;
            let records = store.list_as::<InstanceRecord>(Kind::Instance, &format!("{}/", set.key()))?;
            let mut cpu = Vec::new();
            let mut mem = Vec::new();
            for r in records.iter().map(|o| &o.value) {
                if r.state != InstanceState::Running || r.goal == InstanceGoal::Deleted || r.overprovisioned {
                    continue;
                }
                let key = InstanceKey { group: set.group.clone(), set: set.name.clone(), id: r.instance_id };
                seen.push(key.clone());
                let Ok(Some(st)) = driver.stats(&key).await else { continue };
                mem.push(st.memory_bytes as f64);
                let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
                let prev = last.insert(key, (r.state_since, now, st.cpu_seconds));
                let pct = match (st.cpu_percent, prev) {
                    (Some(p), _) => Some(p),
                    (None, Some((boot, t, secs))) if boot == r.state_since && now > t && st.cpu_seconds >= secs => {
                        let wall = (now - t).num_milliseconds() as f64 / 1000.0;
                        Some(((st.cpu_seconds - secs) / wall / vcpus * 100.0).clamp(0.0, 100.0))
                    }
                    _ => None,
                };
                cpu.extend(pct);
            }
            for (metric, vals) in [(CPU, &cpu), (MEMORY, &mem)] {
                if vals.is_empty() {
                    continue;
                }
                let key = series_key(set, metric);
                let mut series = store.get_as::<Series>(Kind::MetricSeries, &key)?.map(|o| o.value).unwrap_or_default();
                series.push(Point {
                    time: now,
                    value: vals.iter().sum::<f64>() / vals.len() as f64,
                    count: vals.len() as u32,
                });
                ops.push(WriteOp::put(Kind::MetricSeries, key, &series, Expect::Any)?);
            }
            if !cpu.is_empty() {
                sampled += 1;
            }
        }
        // Forget instances that are gone.
        self.last.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| seen.contains(k));
        if !ops.is_empty() {
            store.txn(ops)?;
        }
        Ok(sampled)
    }
}

/// Appends one sample of a named source to its series (`source/<group>/<name>`).
pub fn record_source(
    store: &dyn Store,
    group: &str,
    name: &str,
    now: DateTime<Utc>,
    value: f64,
) -> Result<(), StoreError> {
    let key = format!("source/{group}/{}", name.to_ascii_lowercase());
    let mut series = store.get_as::<Series>(Kind::MetricSeries, &key)?.map(|o| o.value).unwrap_or_default();
    series.push(Point { time: now, value, count: 1 });
    store.txn(vec![WriteOp::put(Kind::MetricSeries, key, &series, Expect::Any)?])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_driver::{
        sim::{SimConfig, SimDriver},
        InstanceSpec,
    };
    use herd_model::{image::ImageSource, scale_set::ScaleSetModel, sku::SkuSize, GroupName, InstanceId, ScaleSetName};
    use herd_store::SqliteStore;
    use serde_json::json;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[tokio::test]
    async fn the_set_average_cpu_lands_in_its_series_and_survives_in_the_store() {
        let store = SqliteStore::in_memory().unwrap();
        let sim = SimDriver::new(SimConfig {
            boot_min: std::time::Duration::ZERO,
            boot_max: std::time::Duration::ZERO,
            ..Default::default()
        });
        let model = ScaleSetModel::from_json(json!({
            "sku": {"name": "Standard_B1ms", "capacity": 2},
            "virtualMachineProfile": {"osProfile": {"computerNamePrefix": "w"},
                "storageProfile": {"imageReference": {"publisher": "P", "offer": "O", "sku": "S", "version": "1"}}}
        }))
        .unwrap();
        let set = StoredScaleSet {
            name: ScaleSetName::new("web").unwrap(),
            group: GroupName::new("rg").unwrap(),
            model_generation: 1,
            time_created: t(0),
            deleting: false,
            model,
        };
        let mut ops = vec![WriteOp::put(Kind::ScaleSet, set.key(), &set, Expect::Absent).unwrap()];
        for (id, pct) in [(0u64, 20.0), (1, 60.0)] {
            let key = InstanceKey { group: set.group.clone(), set: set.name.clone(), id: InstanceId(id) };
            sim.ensure(&InstanceSpec {
                key: key.clone(),
                computer_name: format!("w{id}"),
                image: ImageSource::Directory { path: "/x".into() },
                size: SkuSize { vcpus: 1, memory_mib: 512 },
                reach_address: "127.0.0.1".into(),
                model_generation: 1,
                admin_username: "u".into(),
                custom_data: None,
                metadata: Default::default(),
                network: None,
                guest: Default::default(),
            })
            .await
            .unwrap();
            sim.set_cpu_percent(&key, pct);
            let rec: InstanceRecord = serde_json::from_value(json!({
                "instanceId": id, "computerName": format!("w{id}"), "modelGeneration": 1, "state": "Running",
                "goal": "Running", "reachAddress": "", "createdAt": t(0), "stateSince": t(0)
            }))
            .unwrap();
            ops.push(WriteOp::put(Kind::Instance, format!("rg/web/{id:010}"), &rec, Expect::Absent).unwrap());
        }
        store.txn(ops).unwrap();
        sim.list().await.unwrap(); // the sim boots instances when it is observed
        let sampler = Sampler::default();
        assert_eq!(sampler.sample(&store, &sim, &SkuTable::default(), t(60)).await.unwrap(), 1);
        assert_eq!(sampler.sample(&store, &sim, &SkuTable::default(), t(120)).await.unwrap(), 1);
        let series = store.get_as::<Series>(Kind::MetricSeries, &series_key(&set, CPU)).unwrap().unwrap().value;
        assert_eq!(series.points.len(), 2);
        assert_eq!(series.points[0].value, 40.0, "the average over the set's instances");
        assert_eq!(series.points[0].count, 2);
        let avg = series.aggregate(t(0), t(120), crate::series::Aggregation::Average);
        assert_eq!(avg, Some(40.0));
    }
}
