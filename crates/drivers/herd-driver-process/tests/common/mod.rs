//! What the process driver's test files share: instance keys, specs of instances started
//! from an image directory, and the instance's recorded state.
#![allow(dead_code)]

use herd_driver::InstanceSpec;
use herd_model::{image::ImageSource, sku::SkuSize, GroupName, InstanceId, InstanceKey, ScaleSetName};
use std::path::Path;

/// Instance `id` of scale set `set` in group `rg`.
pub fn key(set: &str, id: u64) -> InstanceKey {
    InstanceKey { group: GroupName::new("rg").unwrap(), set: ScaleSetName::new(set).unwrap(), id: InstanceId(id) }
}

/// Instance `id` of `set` (computer name `<set><id, 6 digits>`) started from the image
/// directory `image`, reached on `reach_address`, model generation 1, nothing else set.
pub fn dir_spec(set: &str, id: u64, image: &Path, size: SkuSize, reach_address: String) -> InstanceSpec {
    InstanceSpec {
        key: key(set, id),
        computer_name: format!("{set}{id:06}"),
        image: ImageSource::Directory { path: image.display().to_string() },
        size,
        reach_address,
        model_generation: 1,
        admin_username: "azureuser".into(),
        custom_data: None,
        metadata: Default::default(),
        metadata_endpoint: None,
        network: None,
        guest: Default::default(),
        host: None,
    }
}

/// The state an instance directory records (its `state` file).
pub fn record(dir: &Path) -> herd_driver_process::record::InstanceRecord {
    herd_driver_process::record::read(dir).unwrap()
}

/// The recorded group leader's pid, if any.
pub fn recorded_pid(dir: &Path) -> Option<u32> {
    herd_driver_process::record::read(dir).ok()?.pid.map(|p| p.pid)
}

/// Changes the recorded state as a crash or an older server would have left it.
pub fn edit_record(dir: &Path, change: impl FnMut(&mut herd_driver_process::record::InstanceRecord)) {
    herd_driver_process::record::edit(dir, change).unwrap();
}
