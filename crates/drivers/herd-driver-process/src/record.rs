//! The one state file of an instance: what the driver remembers about it, in one record.
//!
//! Why: an instance used to keep its tag, environment, desired power, pid, exit and network
//! attachment in six small files, each replaced through a temporary file and a rename. Every
//! replacement allocates an inode and frees one, and on ext4 without a journal each allocation
//! scans past the inodes freed in the last minutes: starting a thousand instances was mostly
//! that. Now the record lives in one [`slot_file`] (`state`), created with the directory and
//! changed in place; a change that changes nothing writes nothing.
//!
//! Directories written by an older server (the six files, no `state`) are read as they are
//! and migrated on their first change: the record is built from the old files, written as
//! `state`, and the old files removed. Until then nothing of them is rewritten.

use herd_driver::host::instance_dir::{ignore_missing, Power};
use herd_driver::host::procfs::ProcId;
use herd_driver::host::slot_file::{self, Updated};
use herd_driver::{Fence, NetworkAttachment};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::Path;

/// The name of the state file in an instance directory.
pub const STATE_FILE: &str = "state";
/// The files of the layout before the state file, in the order they are migrated.
const LEGACY_FILES: [&str; 6] = ["tag", "power", "env", "pid", "exit", "net"];

/// Everything the driver remembers about one instance. A field missing from the file takes
/// its default (`None`, or an empty environment).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceRecord {
    /// The tag of the cluster that created the instance; `None` for a directory created
    /// before cluster ids (nobody's until claimed).
    pub tag: Option<String>,
    /// Desired power.
    pub power: Option<Power>,
    /// The spec-derived environment (`KEY`, `VALUE`), fixed at create and reimage time.
    pub env: Vec<(String, String)>,
    /// The process group leader, once started.
    pub pid: Option<ProcId>,
    /// How the last process ended (pid 0 / start 0: a start that failed before any process).
    pub exit: Option<Exit>,
    /// The bridged-network attachment, if any.
    pub net: Option<NetworkAttachment>,
    /// The highest fence seen (see `herd_driver::fence`). Recorded when the instance is built
    /// and raised with [`edit_synced`]. `None` in records of servers before it moved here: their
    /// fence is in the `fence` file ([`herd_driver::fence::FENCE_FILE`]), until it is raised.
    pub fence: Option<Fence>,
}

/// How a process of the instance ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    pub process: ProcId,
    pub how: String,
}

fn invalid(dir: &Path, e: serde_json::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", dir.join(STATE_FILE).display()))
}

/// The record of the instance directory `dir`: its state file, or (a directory of an older
/// server) its separate files. A directory with neither reads as an empty record.
pub fn read(dir: &Path) -> io::Result<InstanceRecord> {
    let parse = |bytes: Vec<u8>| serde_json::from_slice(&bytes).map_err(|e| invalid(dir, e));
    if let Some(bytes) = slot_file::read(&dir.join(STATE_FILE))? {
        return parse(bytes);
    }
    let old = legacy(dir);
    // A migration removes the old files only after `state` exists: if it exists now, the old
    // files may have been read half removed, and `state` is the record.
    match slot_file::read(&dir.join(STATE_FILE))? {
        Some(bytes) => parse(bytes),
        None => Ok(old),
    }
}

/// Changes the record of `dir` atomically (see [`slot_file::update`]); writes nothing when
/// `change` leaves it as it was. Never creates the directory.
pub fn edit(dir: &Path, change: impl FnMut(&mut InstanceRecord)) -> io::Result<()> {
    edit_with(dir, change, false)
}

/// [`edit`] for a change that must never be undone, even by a power failure (a raised fence):
/// on disk when this returns, and never rolled back by a later torn write (see
/// [`slot_file::update_synced`]).
pub fn edit_synced(dir: &Path, change: impl FnMut(&mut InstanceRecord)) -> io::Result<()> {
    edit_with(dir, change, true)
}

fn edit_with(dir: &Path, mut change: impl FnMut(&mut InstanceRecord), sync: bool) -> io::Result<()> {
    let mut error = None;
    let mut apply = |current: Option<&[u8]>| {
        let mut rec = match current.map(serde_json::from_slice::<InstanceRecord>) {
            Some(Ok(rec)) => rec,
            Some(Err(e)) => {
                error = Some(invalid(dir, e));
                return None;
            }
            None => legacy(dir),
        };
        let before = rec.clone();
        change(&mut rec);
        if before == rec {
            return None;
        }
        match serde_json::to_vec(&rec) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                error = Some(invalid(dir, e));
                None
            }
        }
    };
    let path = dir.join(STATE_FILE);
    let updated =
        if sync { slot_file::update_synced(&path, &mut apply) } else { slot_file::update(&path, &mut apply) }?;
    if let Some(e) = error {
        return Err(e);
    }
    if updated == Updated::Created {
        // Migrated from the older layout: its files are now stale copies.
        for name in LEGACY_FILES {
            ignore_missing(fs::remove_file(dir.join(name)))?;
        }
    }
    Ok(())
}

/// Writes the record of a directory nobody sees yet (an instance being created).
pub(crate) fn create(dir: &Path, rec: &InstanceRecord) -> io::Result<()> {
    let bytes = serde_json::to_vec(rec).map_err(|e| invalid(dir, e))?;
    slot_file::create(&dir.join(STATE_FILE), &bytes)
}

/// The record an older server left in separate files (missing or unreadable ones read as
/// absent, as that server read them).
fn legacy(dir: &Path) -> InstanceRecord {
    let text = |name: &str| fs::read_to_string(dir.join(name)).ok();
    let env = fs::read(dir.join("env")).unwrap_or_default();
    InstanceRecord {
        tag: text("tag").map(|t| t.trim_end_matches('\n').to_string()),
        power: text("power").and_then(|p| Power::parse(&p)),
        env: env
            .split(|b| *b == 0)
            .filter_map(|e| {
                let e = String::from_utf8_lossy(e);
                let (k, v) = e.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect(),
        pid: text("pid").and_then(|p| ProcId::parse(&p)),
        exit: text("exit").and_then(|s| {
            let mut parts = s.splitn(3, ' ');
            let process = ProcId::parse(&format!("{} {}", parts.next()?, parts.next()?))?;
            Some(Exit { process, how: parts.next().unwrap_or("").trim().to_string() })
        }),
        net: text("net").and_then(|t| {
            let mut it = t.split_whitespace();
            Some(NetworkAttachment {
                bridge: it.next()?.to_string(),
                gateway: it.next()?.parse().ok()?,
                prefix_len: it.next()?.parse().ok()?,
                address: it.next()?.parse().ok()?,
                mtu: 1500,
                vnet: String::new(),
                outbound: true,
                public_address: None,
                public_idle_timeout_minutes: None,
            })
        }),
        // Kept in its own file, read by the fence check (it may be unreadable: that refuses).
        fence: None,
    }
}

/// Writes `rec` in the layout of servers before the state file, its fence in the `fence` file
/// (and removes the state file): what an instance directory looked like before an upgrade. For
/// tests of the migration.
#[doc(hidden)]
pub fn write_legacy(dir: &Path, rec: &InstanceRecord) -> io::Result<()> {
    let put = |name: &str, content: Option<Vec<u8>>| match content {
        Some(c) => fs::write(dir.join(name), c),
        None => ignore_missing(fs::remove_file(dir.join(name))),
    };
    put("tag", rec.tag.as_ref().map(|t| format!("{t}\n").into_bytes()))?;
    put("power", rec.power.map(|p| format!("{}\n", p.as_str()).into_bytes()))?;
    let mut env = Vec::new();
    for (k, v) in &rec.env {
        env.extend_from_slice(format!("{k}={v}").as_bytes());
        env.push(0);
    }
    put("env", Some(env))?;
    put("pid", rec.pid.map(|p| p.render().into_bytes()))?;
    put("exit", rec.exit.as_ref().map(|x| format!("{} {} {}\n", x.process.pid, x.process.start, x.how).into_bytes()))?;
    put(
        "net",
        rec.net.as_ref().map(|n| format!("{} {} {} {}\n", n.bridge, n.gateway, n.prefix_len, n.address).into_bytes()),
    )?;
    match rec.fence {
        Some(f) => herd_driver::fence::write_record(dir, f)?,
        None => ignore_missing(fs::remove_file(dir.join(herd_driver::fence::FENCE_FILE)))?,
    }
    ignore_missing(fs::remove_file(dir.join(STATE_FILE)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> InstanceRecord {
        InstanceRecord {
            tag: Some("herd:t".into()),
            power: Some(Power::Running),
            env: vec![("A".into(), "x=y\nz".into()), ("B".into(), String::new())],
            pid: Some(ProcId { pid: 5, start: 6 }),
            exit: Some(Exit { process: ProcId { pid: 4, start: 3 }, how: "exit status 3".into() }),
            net: Some(NetworkAttachment {
                bridge: "br0".into(),
                gateway: "10.0.0.1".parse().unwrap(),
                prefix_len: 24,
                address: "10.0.0.4".parse().unwrap(),
                mtu: 1500,
                vnet: String::new(),
                outbound: true,
                public_address: None,
                public_idle_timeout_minutes: None,
            }),
            fence: None,
        }
    }

    #[test]
    fn the_fence_is_part_of_the_record_and_older_records_have_none() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // A state file of the server before the fence moved into it (session 9) has no field.
        let mut old = serde_json::to_value(sample()).unwrap();
        old.as_object_mut().unwrap().remove("fence");
        slot_file::create(&dir.join(STATE_FILE), &serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(read(dir).unwrap(), sample());
        let f = Fence::new(herd_driver::Term(2), herd_driver::Incarnation(3));
        edit_synced(dir, |r| r.fence = Some(f)).unwrap();
        assert_eq!(read(dir).unwrap(), InstanceRecord { fence: Some(f), ..sample() });
        edit(dir, |r| r.pid = None).unwrap();
        assert_eq!(read(dir).unwrap().fence, Some(f), "other changes keep it");
    }

    #[test]
    fn an_older_servers_files_are_read_and_migrated_on_the_first_change() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert_eq!(read(dir).unwrap(), InstanceRecord::default());
        write_legacy(dir, &sample()).unwrap();
        assert_eq!(read(dir).unwrap(), sample());
        // A change that changes nothing migrates nothing.
        edit(dir, |_| {}).unwrap();
        assert!(!dir.join(STATE_FILE).exists() && dir.join("pid").exists());
        edit(dir, |r| r.power = Some(Power::Stopped)).unwrap();
        assert_eq!(read(dir).unwrap(), InstanceRecord { power: Some(Power::Stopped), ..sample() });
        let names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(STATE_FILE)], "the old files are gone");
    }

    #[test]
    fn created_records_change_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        create(dir, &sample()).unwrap();
        assert_eq!(read(dir).unwrap(), sample());
        edit(dir, |r| r.pid = None).unwrap();
        assert_eq!(read(dir).unwrap().pid, None);
        assert!(edit(&dir.join("gone"), |r| r.power = None).is_ok(), "no change, nothing written");
        assert!(edit(&dir.join("gone"), |r| r.power = Some(Power::Stopped)).is_err(), "never creates the directory");
        slot_file::update(&dir.join(STATE_FILE), |_| Some(b"{not json".to_vec())).unwrap();
        assert_eq!(read(dir).unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert_eq!(edit(dir, |r| r.pid = None).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
