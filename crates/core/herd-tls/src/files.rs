//! Where TLS material lives, and the operations that change it: first start, certificate
//! renewal, CA rotation and the end of its overlap.
//!
//! ```text
//! <data-dir>/tls/
//!   ca.pem            the trust bundle: the active CA first, then a retiring one (public)
//!   ca-key.pem        the active CA's key, 0600 (or wherever --ca-key-file says)
//!   server.pem        the server's chain: its leaf, then the cross-signed CA while rotating
//!   server-key.pem    the server's key, 0600
//!   server-leaf.json  what the leaf was issued for (names, addresses), to know when to reissue
//!   rotation.json     while a CA rotation overlaps: the retiring CA and when it retires
//! ```
//!
//! The CA key is apart from the store (`herd.db`): a copy of the store (a backup) holds no key
//! that can sign. Every file is replaced atomically (write, fsync, rename), keys created 0600.

use crate::ca::{not_after, ClusterCa, Fingerprint, Issued, Leaf, RENEW_BEFORE};
use crate::trust::certificates;
use crate::TlsError;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

/// The state of the cluster CA (see the crate's diagram).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// One CA, trusted alone.
    Single,
    /// A new CA is active; the old one is still trusted until `until`, and the server sends the
    /// new CA cross-signed by the old after its leaf.
    Overlap { retiring: Fingerprint, until: OffsetDateTime },
}

#[derive(Serialize, Deserialize)]
struct RotationFile {
    retiring_ca: String,
    cross_signed: String,
    #[serde(with = "time::serde::rfc3339")]
    until: OffsetDateTime,
}

/// The material a server needs, read from the files.
#[derive(Clone)]
pub struct Material {
    /// Every CA a client should trust now (PEM).
    pub bundle_pem: String,
    /// The server's chain (PEM, leaf first).
    pub chain_pem: String,
    /// The server's key (PEM). Never logged or printed.
    pub key_pem: String,
    pub ca: Fingerprint,
    pub rotation: Rotation,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("ca", &self.ca.to_string())
            .field("rotation", &self.rotation)
            .finish_non_exhaustive()
    }
}

/// The TLS files of one data dir.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    dir: PathBuf,
    ca_key: PathBuf,
}

impl TlsFiles {
    /// The files under `<data_dir>/tls`, with the CA key at `ca_key_file` if given.
    pub fn new(data_dir: &Path, ca_key_file: Option<&Path>) -> Self {
        let dir = data_dir.join("tls");
        let ca_key = ca_key_file.map_or_else(|| dir.join("ca-key.pem"), Path::to_path_buf);
        Self { dir, ca_key }
    }

    pub fn bundle_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn ca_key_path(&self) -> &Path {
        &self.ca_key
    }

    pub fn chain_path(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }

    fn leaf_spec_path(&self) -> PathBuf {
        self.dir.join("server-leaf.json")
    }

    fn rotation_path(&self) -> PathBuf {
        self.dir.join("rotation.json")
    }

    /// At server start: makes the CA if there is none, ends a rotation's overlap that is over,
    /// and (re)issues the server's certificate when it is missing, issued for other names or
    /// addresses, not signed by the active CA, or near its end.
    pub fn ensure(&self, cluster: &str, leaf: &Leaf, now: OffsetDateTime) -> Result<Material, TlsError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| TlsError::Io { path: self.dir.clone(), source })?;
        if !self.bundle_path().exists() {
            if self.ca_key.exists() {
                return Err(TlsError::invalid(
                    self.ca_key.display().to_string(),
                    format!(
                        "a CA key exists but its certificate {} does not; restore it or remove the key",
                        self.bundle_path().display()
                    ),
                ));
            }
            let ca = ClusterCa::create(cluster, now)?;
            write_private(&self.ca_key, &ca.key_pem())?;
            write_public(&self.bundle_path(), ca.cert_pem())?;
            tracing::info!(fingerprint = %ca.fingerprint(), "made the cluster CA");
        }
        self.retire_if_due(now)?;
        let ca = self.ca()?;
        if self.leaf_is_current(&ca, leaf, now)? {
            return self.material();
        }
        self.write_leaf(&ca, leaf, now)?;
        self.material()
    }

    /// Renews the server's certificate under the same CA.
    pub fn rotate_cert(&self, leaf: &Leaf, now: OffsetDateTime) -> Result<Material, TlsError> {
        let ca = self.ca()?;
        self.write_leaf(&ca, leaf, now)?;
        self.material()
    }

    /// Makes a new CA active: the old one stays trusted (and cross-signs the new one) until
    /// `now + overlap`, then [`Self::retire_if_due`] drops it. Refused while an overlap runs.
    pub fn rotate_ca(
        &self,
        cluster: &str,
        leaf: &Leaf,
        overlap: time::Duration,
        now: OffsetDateTime,
    ) -> Result<Material, TlsError> {
        if let Rotation::Overlap { until, .. } = self.rotation()? {
            return Err(TlsError::invalid(
                "rotate-ca",
                format!("a CA rotation is already in its overlap until {until}; rotate again after it ends"),
            ));
        }
        let old = self.ca()?;
        let (new, cross) = old.successor(cluster, now)?;
        let record = RotationFile {
            retiring_ca: old.cert_pem().to_string(),
            cross_signed: pem("CERTIFICATE", &cross),
            until: now + overlap,
        };
        // Order matters for a crash between steps: the rotation record and the bundle that
        // trusts both CAs are written before the new key becomes the active one.
        write_public(&self.rotation_path(), &serde_json::to_string_pretty(&record).expect("plain data"))?;
        write_public(&self.bundle_path(), &format!("{}{}", new.cert_pem(), old.cert_pem()))?;
        write_private(&self.ca_key, &new.key_pem())?;
        self.write_leaf(&new, &self.leaf_spec()?.unwrap_or_else(|| leaf.clone()), now)?;
        tracing::info!(old = %old.fingerprint(), new = %new.fingerprint(), until = %record.until, "rotated the cluster CA");
        self.material()
    }

    /// Ends a CA rotation whose overlap is over: the bundle trusts the new CA alone and the
    /// server stops sending the cross-signed certificate. True when it ended one.
    pub fn retire_if_due(&self, now: OffsetDateTime) -> Result<bool, TlsError> {
        let Some(record) = self.rotation_record()? else { return Ok(false) };
        if now < record.until {
            return Ok(false);
        }
        let ca = self.ca()?;
        write_public(&self.bundle_path(), ca.cert_pem())?;
        let chain = std::fs::read_to_string(self.chain_path())
            .map_err(|source| TlsError::Io { path: self.chain_path(), source })?;
        let leaf = certificates(&chain, "the server certificate chain")?.remove(0);
        write_public(&self.chain_path(), &pem("CERTIFICATE", &leaf))?;
        std::fs::remove_file(self.rotation_path())
            .map_err(|source| TlsError::Io { path: self.rotation_path(), source })?;
        tracing::info!(fingerprint = %ca.fingerprint(), "the CA rotation's overlap ended; the old CA is no longer trusted");
        Ok(true)
    }

    /// The active CA (the bundle's first certificate, with the CA key).
    pub fn ca(&self) -> Result<ClusterCa, TlsError> {
        let bundle = read(&self.bundle_path())?;
        let first = certificates(&bundle, "the CA bundle")?.remove(0);
        ClusterCa::load(&pem("CERTIFICATE", &first), &read(&self.ca_key)?)
    }

    pub fn rotation(&self) -> Result<Rotation, TlsError> {
        Ok(match self.rotation_record()? {
            None => Rotation::Single,
            Some(r) => Rotation::Overlap {
                retiring: Fingerprint::of(
                    &CertificateDer::from_pem_slice(r.retiring_ca.as_bytes())
                        .map_err(|source| TlsError::Pem { what: "the retiring CA".into(), source })?,
                ),
                until: r.until,
            },
        })
    }

    /// What the files hold now.
    pub fn material(&self) -> Result<Material, TlsError> {
        Ok(Material {
            bundle_pem: read(&self.bundle_path())?,
            chain_pem: read(&self.chain_path())?,
            key_pem: read(&self.key_path())?,
            ca: self.ca()?.fingerprint(),
            rotation: self.rotation()?,
        })
    }

    fn rotation_record(&self) -> Result<Option<RotationFile>, TlsError> {
        let path = self.rotation_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(serde_json::from_str(&text).map_err(|source| TlsError::State { path, source })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TlsError::Io { path, source }),
        }
    }

    fn leaf_spec(&self) -> Result<Option<Leaf>, TlsError> {
        let path = self.leaf_spec_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(serde_json::from_str(&text).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TlsError::Io { path, source }),
        }
    }

    fn leaf_is_current(&self, ca: &ClusterCa, leaf: &Leaf, now: OffsetDateTime) -> Result<bool, TlsError> {
        if self.leaf_spec()?.as_ref() != Some(leaf) || !self.chain_path().exists() || !self.key_path().exists() {
            return Ok(false);
        }
        let chain = read(&self.chain_path())?;
        let Ok(mut certs) = certificates(&chain, "the server certificate chain") else { return Ok(false) };
        let der = certs.remove(0);
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| TlsError::invalid("the server certificate", e.to_string()))?;
        let (_, ca_cert) = x509_parser::parse_x509_certificate(ca.der())
            .map_err(|e| TlsError::invalid("the CA certificate", e.to_string()))?;
        let signed_by_active = cert.verify_signature(Some(ca_cert.public_key())).is_ok();
        Ok(signed_by_active && not_after(&der)? - now > RENEW_BEFORE)
    }

    fn write_leaf(&self, ca: &ClusterCa, leaf: &Leaf, now: OffsetDateTime) -> Result<(), TlsError> {
        let Issued { cert_pem, key_pem, .. } = ca.issue(leaf, now)?;
        let chain = match self.rotation_record()? {
            Some(r) => format!("{cert_pem}{}", r.cross_signed),
            None => cert_pem,
        };
        // The key first: a crash between the two leaves a new key with the old certificate,
        // which `ensure` finds not matching (keys_match) and reissues.
        write_private(&self.key_path(), &key_pem)?;
        write_public(&self.chain_path(), &chain)?;
        write_public(&self.leaf_spec_path(), &serde_json::to_string(leaf).expect("plain data"))?;
        Ok(())
    }
}

/// `der` as PEM with LF line endings (as rcgen writes its own).
fn pem(tag: &str, der: &[u8]) -> String {
    pem::encode_config(&pem::Pem::new(tag, der), pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF))
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io { path: path.to_path_buf(), source })
}

fn write_private(path: &Path, text: &str) -> Result<(), TlsError> {
    write_atomic(path, text, 0o600)
}

fn write_public(path: &Path, text: &str) -> Result<(), TlsError> {
    write_atomic(path, text, 0o644)
}

/// Writes `text` to a temporary file beside `path` with `mode`, syncs it, renames it over
/// `path` and syncs the directory.
fn write_atomic(path: &Path, text: &str, mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TlsError::Io { path: path.to_path_buf(), source };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("tls")));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips_through_the_parser() {
        for n in [0usize, 1, 2, 3, 64, 100] {
            let der: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
            let text = pem("CERTIFICATE", &der);
            if n == 0 {
                continue;
            }
            let back = CertificateDer::from_pem_slice(text.as_bytes()).unwrap();
            assert_eq!(back.as_ref(), der.as_slice(), "n={n}");
        }
    }
}
