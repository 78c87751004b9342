//! The host's identity in the agent's data dir: its private key (0600, never sent anywhere),
//! the certificate the cluster CA signed for it, the CA bundle it trusts, and where and under
//! which name it joined. Written at join, atomically, and read at every start after.

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where and as what this host joined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Membership {
    /// The server's URL, `https://HOST:PORT`.
    pub server: String,
    /// The cluster's id (from the join answer): the host's driver tags instances with it.
    pub cluster_id: String,
    pub name: String,
    pub zone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_domain: Option<String>,
}

/// The identity files.
#[derive(Debug, Clone)]
pub struct Identity {
    pub membership: Membership,
    pub key_pem: String,
    pub certificate_pem: String,
    pub ca_bundle: String,
}

/// The files of an identity under `dir`.
pub struct Paths {
    pub membership: PathBuf,
    pub key: PathBuf,
    pub certificate: PathBuf,
    pub ca: PathBuf,
}

pub fn paths(dir: &Path) -> Paths {
    Paths {
        membership: dir.join("membership.json"),
        key: dir.join("agent.key"),
        certificate: dir.join("agent.crt"),
        ca: dir.join("ca.pem"),
    }
}

impl Identity {
    /// The identity in `dir`, or `None` when this host has not joined (no membership file).
    pub fn load(dir: &Path) -> Result<Option<Identity>> {
        let p = paths(dir);
        let membership = match std::fs::read(&p.membership) {
            Ok(b) => {
                serde_json::from_slice(&b).with_context(|| format!("{} does not parse", p.membership.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(anyhow!("reading {}: {e}", p.membership.display())),
        };
        let read = |f: &Path| std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()));
        Ok(Some(Identity {
            membership,
            key_pem: read(&p.key)?,
            certificate_pem: read(&p.certificate)?,
            ca_bundle: read(&p.ca)?,
        }))
    }

    /// Writes the identity to `dir` (created 0700): each file atomically, the key 0600, the
    /// membership last, so a crash mid-way leaves no half identity that [`Self::load`] accepts.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", dir.display()))?;
        let p = paths(dir);
        write_atomic(&p.key, self.key_pem.as_bytes(), 0o600)?;
        write_atomic(&p.certificate, self.certificate_pem.as_bytes(), 0o644)?;
        write_atomic(&p.ca, self.ca_bundle.as_bytes(), 0o644)?;
        write_atomic(&p.membership, &serde_json::to_vec_pretty(&self.membership)?, 0o644)?;
        Ok(())
    }
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_round_trips_with_a_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("agent");
        assert!(Identity::load(&d).unwrap().is_none());
        let id = Identity {
            membership: Membership {
                server: "https://s:7900".into(),
                cluster_id: "c1".into(),
                name: "h2".into(),
                zone: "1".into(),
                fault_domain: None,
            },
            key_pem: "KEY".into(),
            certificate_pem: "CERT".into(),
            ca_bundle: "CA".into(),
        };
        id.save(&d).unwrap();
        let back = Identity::load(&d).unwrap().unwrap();
        assert_eq!((back.membership, back.key_pem.as_str()), (id.membership, "KEY"));
        let mode = std::fs::metadata(paths(&d).key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
