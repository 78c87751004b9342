//! Which networking a data dir runs with: `host-local` or `bridged` (see the user guide's
//! "Bridged networking").
//!
//! Why a record in the data dir: the mode decides where every instance with a subnet lives (a
//! loopback reach address, or its own namespace on a bridge with its private IP), so a data
//! dir must not change mode under its instances because the defaults changed or herd was run
//! by another user. The rule:
//!
//! ```text
//!   [network] mode in the config ──────────────▶ that mode (recorded)
//!   else the data dir's record (network-mode) ─▶ that mode
//!   else a data dir with instances ────────────▶ host-local (what it ran with before records)
//!   else (a new data dir):
//!       root, Linux, process or qemu driver, ip/nft/dnsmasq present ─▶ bridged (recorded)
//!       otherwise ─▶ host-local (recorded), and the log says why
//! ```

use super::{is_root, DriverKind};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// The record's file name in the data dir.
pub const RECORD: &str = "network-mode";

const BRIDGED: &str = "bridged";
const HOST_LOCAL: &str = "host-local";

/// Why bridged networking cannot be this server's default, or None when it can.
fn bridged_unavailable(driver: DriverKind) -> Option<String> {
    if !matches!(driver, DriverKind::Process | DriverKind::Qemu) {
        return Some("the sim driver has no network".into());
    }
    if !cfg!(target_os = "linux") || !is_root() {
        return Some("bridged networking needs root on Linux".into());
    }
    let missing = herd_hostnet::tools::missing();
    (!missing.is_empty()).then(|| format!("missing: {}", missing.join(", ")))
}

/// Whether this server runs bridged (see the module docs). `has_instances`: the store already
/// records instances. Records the decision in the data dir.
pub fn resolve(configured: Option<&str>, driver: DriverKind, data_dir: &Path, has_instances: bool) -> Result<bool> {
    let record = data_dir.join(RECORD);
    let recorded = std::fs::read_to_string(&record).ok().map(|s| s.trim().to_string());
    let bridged = match configured {
        Some(BRIDGED) => {
            if let Some(why) = bridged_unavailable(driver) {
                bail!("config: network.mode = \"bridged\" is not possible here: {why}");
            }
            true
        }
        Some(HOST_LOCAL) => false,
        Some(other) => bail!("config: network.mode '{other}' is not allowed; allowed values: host-local, bridged"),
        None => match recorded.as_deref() {
            Some(BRIDGED) => {
                if let Some(why) = bridged_unavailable(driver) {
                    bail!(
                        "this data dir runs bridged networking ({}), which is not possible here: {why}; \
                         set [network] mode = \"host-local\" to run it with host-local networking",
                        record.display()
                    );
                }
                true
            }
            Some(HOST_LOCAL) => false,
            Some(other) => bail!("{} holds '{other}'; allowed values: host-local, bridged", record.display()),
            None if has_instances => false,
            None => match bridged_unavailable(driver) {
                None => {
                    tracing::info!("new data dir: bridged networking (instances with a subnet get their own network)");
                    true
                }
                Some(why) => {
                    if driver != DriverKind::Sim {
                        tracing::info!("new data dir: host-local networking ({why})");
                    }
                    false
                }
            },
        },
    };
    let mode = if bridged { BRIDGED } else { HOST_LOCAL };
    if recorded.as_deref() != Some(mode) {
        if let Some(old) = &recorded {
            tracing::warn!(from = %old, to = mode, "the config changes this data dir's network mode");
        }
        std::fs::write(&record, format!("{mode}\n")).with_context(|| format!("writing {}", record.display()))?;
    }
    Ok(bridged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_wins_then_the_record_then_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(!resolve(None, DriverKind::Sim, d, false).unwrap(), "sim is never bridged");
        assert_eq!(std::fs::read_to_string(d.join(RECORD)).unwrap(), "host-local\n", "and the choice is recorded");
        std::fs::write(d.join(RECORD), "bridged\n").unwrap();
        let e = resolve(None, DriverKind::Sim, d, true).unwrap_err().to_string();
        assert!(e.contains("set [network] mode = \"host-local\""), "{e}");
        assert!(!resolve(Some("host-local"), DriverKind::Sim, d, true).unwrap(), "the config wins");
        assert_eq!(std::fs::read_to_string(d.join(RECORD)).unwrap(), "host-local\n");
        let e = resolve(Some("vxlan"), DriverKind::Process, d, false).unwrap_err().to_string();
        assert!(e.contains("allowed values: host-local, bridged"), "{e}");
        let other = tempfile::tempdir().unwrap();
        assert!(
            !resolve(None, DriverKind::Process, other.path(), true).unwrap(),
            "a data dir with instances and no record keeps host-local"
        );
    }

    /// Tests run as root with the tools installed (`./scripts/test.sh`), where a new data dir
    /// of the process driver defaults to bridged.
    #[test]
    fn a_new_data_dir_of_root_defaults_to_bridged() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            bridged_unavailable(DriverKind::Process),
            None,
            "run the tests as root with ./scripts/setup.sh's packages"
        );
        assert!(resolve(None, DriverKind::Process, dir.path(), false).unwrap());
        assert_eq!(std::fs::read_to_string(dir.path().join(RECORD)).unwrap(), "bridged\n");
        assert!(resolve(None, DriverKind::Process, dir.path(), true).unwrap(), "kept");
    }
}
