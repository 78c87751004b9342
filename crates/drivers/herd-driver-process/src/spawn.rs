//! Starting an instance's `init`: its command line, environment, stdio and hostname.
//!
//! Why: this is the one place that decides what an instance sees of the host. [`plan`] reads
//! it from the instance's directory; the driver hands the plan to its spawner (see the
//! `spawner` module) or, without one, to [`launch`], which starts `init` from this process. The environment
//! is built from the spec once (at create and reimage time) and kept in the instance's record
//! (its `state` file), because `set_power` and `restart` get only a key and must still start the instance
//! exactly as it was built.
//!
//! When the spec names a metadata endpoint (`InstanceSpec::metadata_endpoint`), the instance
//! gets `HERD_METADATA_URL=http://<addr>/metadata`: its own instance metadata endpoint (herd's
//! Azure IMDS), where `GET $HERD_METADATA_URL/scheduledevents?api-version=2020-07-01` with the
//! header `Metadata: true` shows the events posted to this instance (a Spot eviction's
//! Preempt, a Terminate) and `GET $HERD_METADATA_URL/instance?api-version=2021-02-01` its
//! identity. A VM reaches the same service at a fixed address instead (see the qemu driver).

use crate::init::Launcher;
use crate::layout::{check_image, InstanceDir};
use crate::procfs::{read_stat, ProcId};
use crate::spawner::wire::Request;
use herd_driver::InstanceSpec;
use herd_model::InstanceKey;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use tokio::process::{Child, Command};

const UNSHARE: &str = "/usr/bin/unshare";
/// Run by `/bin/sh` inside the new UTS namespace; `exec` keeps the pid of the group leader.
const HOSTNAME_SCRIPT: &str = r#"hostname "$HERD_COMPUTER_NAME" && exec ./init"#;
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Whether instances can get their own hostname: we are root, `unshare` exists, and a probe
/// that does exactly what an instance start does succeeds (containers may forbid it).
pub(crate) fn can_set_hostname() -> bool {
    if !nix::unistd::geteuid().is_root() || !Path::new(UNSHARE).exists() {
        return false;
    }
    std::process::Command::new(UNSHARE)
        .args(["--uts", "--", "/bin/sh", "-c", r#"hostname "$HERD_COMPUTER_NAME""#])
        .env("HERD_COMPUTER_NAME", "herd-probe")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `metadata` key → environment variable name: upper-cased, anything but `[A-Z0-9_]` → `_`.
pub(crate) fn meta_var(key: &str) -> String {
    let name: String =
        key.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("HERD_META_{name}")
}

/// `HERD_METADATA_URL` for a metadata endpoint: `http://<addr>/metadata` (an IPv6 address in
/// brackets, as URLs need).
pub(crate) fn metadata_url(addr: std::net::SocketAddr) -> String {
    format!("http://{addr}/metadata")
}

/// The spec-derived environment (see the crate docs for each variable). `custom_data` is the
/// path the custom data was written to, if any.
pub(crate) fn spec_env(spec: &InstanceSpec, custom_data: Option<&Path>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("HERD_INSTANCE_ID".into(), spec.key.id.0.to_string()),
        ("HERD_COMPUTER_NAME".into(), spec.computer_name.clone()),
        ("HOSTNAME".into(), spec.computer_name.clone()),
        ("HERD_ADDRESS".into(), spec.reach_address.clone()),
        ("HERD_MODEL_GENERATION".into(), spec.model_generation.to_string()),
        ("HERD_ADMIN_USERNAME".into(), spec.admin_username.clone()),
        ("HERD_VCPUS".into(), spec.size.vcpus.to_string()),
        ("HERD_MEMORY_MIB".into(), spec.size.memory_mib.to_string()),
    ];
    env.extend(spec.metadata.iter().map(|(k, v)| (meta_var(k), v.clone())));
    if let Some(addr) = spec.metadata_endpoint {
        env.push(("HERD_METADATA_URL".into(), metadata_url(addr)));
    }
    if let Some(p) = custom_data {
        env.push(("HERD_CUSTOM_DATA".into(), p.display().to_string()));
    }
    // A NUL cannot be passed through exec; drop it rather than fail the start.
    env.into_iter().map(|(k, v)| (k, v.replace('\0', ""))).collect()
}

/// Everything a process of the instance in `d` sees as its environment, in order (a later
/// entry wins): `PATH` (the server's), `HOME` (`work/`), the recorded environment, then the tag
/// and the key. `init` is started with exactly this, and so are extension scripts.
pub(crate) fn instance_env(d: &InstanceDir, key: &InstanceKey, tag: &str) -> io::Result<Vec<(OsString, OsString)>> {
    Ok(full_env(d, d.read_env()?, key, tag))
}

/// [`instance_env`] around the recorded environment `recorded`.
fn full_env(
    d: &InstanceDir,
    recorded: Vec<(String, String)>,
    key: &InstanceKey,
    tag: &str,
) -> Vec<(OsString, OsString)> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    let mut env = vec![("PATH".into(), path), ("HOME".into(), d.work().into_os_string())];
    env.extend(recorded.into_iter().map(|(k, v)| (k.into(), v.into())));
    env.push(("HERD_DRIVER_TAG".into(), tag.into()));
    env.push(("HERD_INSTANCE_KEY".into(), key.path().into()));
    env
}

/// What starting the instance in `d` takes, read from its directory: checked once, then used
/// by the spawner or by [`launch`].
pub(crate) struct Plan {
    work: PathBuf,
    console: PathBuf,
    env: Vec<(OsString, OsString)>,
    /// The computer name, when the instance gets its own hostname.
    hostname: Option<String>,
    /// Bridged networking: the instance's network namespace (set up idempotently here).
    netns: Option<String>,
}

/// Checks the image and reads what a start of the instance in `d` needs.
pub(crate) fn plan(d: &InstanceDir, key: &InstanceKey, tag: &str, set_hostname: bool) -> Result<Plan, String> {
    // One read of the record for both the environment and the network attachment.
    let rec = crate::record::read(&d.dir).map_err(|e| format!("cannot read the instance's state file: {e}"))?;
    plan_with(d, key, tag, set_hostname, rec)
}

/// [`plan`] from `rec`, the instance's record as the caller has just read or written it.
pub(crate) fn plan_with(
    d: &InstanceDir,
    key: &InstanceKey,
    tag: &str,
    set_hostname: bool,
    rec: crate::record::InstanceRecord,
) -> Result<Plan, String> {
    let work = d.work();
    check_image(&work)?;
    let env = full_env(d, rec.env, key, tag);
    let computer_name = env
        .iter()
        .find(|(k, _)| k == "HERD_COMPUTER_NAME")
        .map(|(_, v)| v.to_string_lossy().into_owned())
        .unwrap_or_default();
    let netns = match rec.net {
        Some(att) => {
            let ns = crate::bridge::netns_name(tag, &key.path());
            crate::bridge::ensure(tag, &key.path(), &computer_name, &att, &ns)?;
            Some(ns)
        }
        None => None,
    };
    let hostname = set_hostname.then_some(computer_name);
    Ok(Plan { work, console: d.console(), env, hostname, netns })
}

impl Plan {
    /// The spawner's request for this start, when the spawner can do all of it: everything but
    /// a bridged instance's network namespace, which `ip netns exec` enters (with its own view
    /// of `/sys` and `/etc/netns/<name>`), so that start stays direct.
    pub fn request(&self) -> Option<Request> {
        if self.netns.is_some() {
            return None;
        }
        let env = self
            .env
            .iter()
            .map(|(k, v)| {
                let mut e = k.clone();
                e.push("=");
                e.push(v);
                e
            })
            .collect();
        Some(Request {
            id: 0,
            program: self.work.join("init").into_os_string(),
            argv: vec!["./init".into()],
            env,
            cwd: self.work.clone().into_os_string(),
            console: self.console.clone().into_os_string(),
            hostname: self.hostname.clone().map(OsString::from),
        })
    }
}

/// Starts the instance of `plan` from this process. Returns the group leader's identity and
/// the child handle (to be waited on, so its exit status is recorded and no zombie is left).
pub(crate) fn launch(plan: Plan, launcher: Option<&Launcher>) -> Result<(ProcId, Child), String> {
    let Plan { work, console, env, hostname, netns } = plan;
    let console = OpenOptions::new()
        .create(true)
        .append(true)
        .open(console)
        .map_err(|e| format!("cannot open console.log: {e}"))?;
    let console2 = console.try_clone().map_err(|e| format!("cannot open console.log: {e}"))?;
    let mut cmd = if let Some(ns) = &netns {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]);
        match (&hostname, launcher) {
            (Some(h), Some(l)) => {
                c.arg(l.program()).args(l.args(h, "./init"));
            }
            (Some(_), None) => {
                c.args([UNSHARE, "--uts", "--", "/bin/sh", "-c", HOSTNAME_SCRIPT]);
            }
            _ => {
                c.arg("./init");
            }
        }
        c
    } else if let (Some(h), Some(l)) = (&hostname, launcher) {
        let mut c = Command::new(l.program());
        c.args(l.args(h, "./init"));
        c
    } else if hostname.is_some() {
        let mut c = Command::new(UNSHARE);
        c.args(["--uts", "--", "/bin/sh", "-c", HOSTNAME_SCRIPT]);
        c
    } else {
        Command::new(work.join("init"))
    };
    cmd.current_dir(&work).env_clear().envs(env).stdin(Stdio::null()).stdout(console).stderr(console2).process_group(0);
    let mut child = cmd.spawn().map_err(|e| format!("cannot start init: {e}"))?;
    let Some(pid) = child.id() else {
        return Err("init vanished at start".into());
    };
    // The child is not reaped until we wait on it, so its stat is readable even if it exited.
    match read_stat(pid) {
        Some(st) => Ok((ProcId { pid, start: st.starttime }, child)),
        None => {
            let _ = child.start_kill();
            Err(format!("cannot read /proc/{pid}/stat of the new init"))
        }
    }
}

/// How a process ended, for `Failed(..)` messages.
pub(crate) fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "ended".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_names_are_safe() {
        assert_eq!(meta_var("role"), "HERD_META_ROLE");
        assert_eq!(meta_var("app.tier-1"), "HERD_META_APP_TIER_1");
    }

    fn spec(metadata_endpoint: Option<std::net::SocketAddr>) -> InstanceSpec {
        use herd_model::{image::ImageSource, sku::SkuSize, GroupName, InstanceId, ScaleSetName};
        let key = InstanceKey {
            group: GroupName::new("rg").unwrap(),
            set: ScaleSetName::new("web").unwrap(),
            id: InstanceId(3),
        };
        let image = ImageSource::Directory { path: "/img".into() };
        let size = SkuSize { vcpus: 1, memory_mib: 512 };
        InstanceSpec {
            admin_username: "azureuser".into(),
            metadata_endpoint,
            ..InstanceSpec::new(key, "web000003", image, size, "127.128.0.3")
        }
    }

    #[test]
    fn metadata_url_only_with_an_endpoint() {
        let var = |s: &InstanceSpec| spec_env(s, None).into_iter().find(|(k, _)| k == "HERD_METADATA_URL");
        assert_eq!(var(&spec(None)), None);
        let with = spec(Some("127.128.0.3:16925".parse().unwrap()));
        assert_eq!(var(&with).map(|(_, v)| v).as_deref(), Some("http://127.128.0.3:16925/metadata"));
        assert_eq!(metadata_url("[::1]:80".parse().unwrap()), "http://[::1]:80/metadata");
    }

    #[test]
    fn exit_descriptions() {
        assert_eq!(describe(ExitStatus::from_raw(3 << 8)), "exit status 3");
        assert_eq!(describe(ExitStatus::from_raw(9)), "killed by signal 9");
    }
}
