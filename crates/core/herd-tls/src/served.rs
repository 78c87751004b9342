//! The server's TLS while it serves: the certificate it presents (from the cluster CA's files
//! or the operator's), its renewal and the CA's rotation, behind the model's
//! [`ServerTls`](herd_model::tls::ServerTls) contract that the API drives.
//!
//! Why here and not in the server binary: the handler tests drive the same implementation in
//! process, and later `herd agent` and replicas renew their own certificates the same way.
//!
//! ```text
//!               start                         rotate-cert / renewal due
//!  (files) ─────────────▶ Serving(leaf₁) ──────────────────────────────▶ Serving(leaf₂)
//!                            │   rotate-ca                                    ▲
//!                            ▼                                                │
//!                    Overlap(old CA, new CA) ───(overlap ends: retire)────────┘
//! ```

use crate::{Leaf, Rotation, ServerCerts, TlsError, TlsFiles};
use herd_model::clock::Clock;
use herd_model::tls::{CaRotation, CertificateView, ServerTls, SignedAgent, TlsMode, TlsRefusal, TlsStatus};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where the certificate comes from.
enum Source {
    Cluster { files: TlsFiles, leaf: Leaf, cluster: String, clock: Arc<dyn Clock> },
    Operator { cert: PathBuf, key: PathBuf },
}

/// The certificate a server presents, where it comes from, and its renewal.
pub struct ServedTls {
    source: Source,
    certs: Arc<ServerCerts>,
    /// Rotations and renewals one at a time (the API and the renewing controller may both ask).
    busy: Mutex<()>,
    /// Woken when a CA rotation's overlap gets a new end, for whoever calls [`Self::maintain`].
    wake: Arc<tokio::sync::Notify>,
    /// The CAs agent certificates may chain to (the cluster CA's bundle); none for the
    /// operator's certificate.
    agents: Option<Arc<crate::agent::AgentClients>>,
}

impl std::fmt::Debug for ServedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.source {
            Source::Cluster { .. } => "cluster CA",
            Source::Operator { .. } => "operator certificate",
        };
        f.debug_struct("ServedTls").field("mode", &mode).finish_non_exhaustive()
    }
}

/// When a CA rotation's overlap ends, the certificate's refresh is due; how often to look
/// otherwise.
pub const RESYNC: Duration = Duration::from_secs(60);

impl ServedTls {
    /// Serves a certificate of the cluster CA in `files` for `leaf`: makes the CA at first
    /// start, and (re)issues the certificate when missing, for other names, or near its end.
    pub fn cluster(files: TlsFiles, leaf: Leaf, cluster: &str, clock: Arc<dyn Clock>) -> Result<Self, TlsError> {
        let material = files.ensure(cluster, &leaf, to_time(clock.now()))?;
        let certs = ServerCerts::new(&material.chain_pem, &material.key_pem)?;
        tracing::info!(ca = %material.ca, bundle = %files.bundle_path().display(), "serving HTTPS under the cluster CA");
        let agents = Some(crate::agent::AgentClients::new(&material.bundle_pem)?);
        let source = Source::Cluster { files, leaf, cluster: cluster.to_string(), clock };
        Ok(Self { source, certs, busy: Mutex::new(()), wake: Default::default(), agents })
    }

    /// Serves the operator's chain and key (PEM files), read again at each rotation.
    pub fn operator(cert: PathBuf, key: PathBuf) -> Result<Self, TlsError> {
        let (chain_pem, key_pem) = read_operator(&cert, &key)?;
        let certs = ServerCerts::new(&chain_pem, &key_pem)?;
        Ok(Self {
            source: Source::Operator { cert, key },
            certs,
            busy: Mutex::new(()),
            wake: Default::default(),
            agents: None,
        })
    }

    /// The configuration for agent connections (a client certificate of the cluster CA
    /// required), or `None` when this server has no cluster CA.
    pub fn agent_config(&self) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
        let Some(clients) = &self.agents else { return Ok(None) };
        Ok(Some(Arc::new(crate::agent::agent_server_config(&self.certs, clients.clone())?)))
    }

    /// The rustls configuration that presents the current certificate at every handshake.
    pub fn config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        Ok(Arc::new(self.certs.config()?))
    }

    /// Notified when a CA rotation starts (its overlap's end is the next thing due).
    pub fn waker(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.busy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves what the cluster files hold now.
    fn reload(&self, files: &TlsFiles) -> Result<(), TlsError> {
        let m = files.material()?;
        if let Some(agents) = &self.agents {
            agents.replace(&m.bundle_pem)?;
        }
        self.certs.replace(&m.chain_pem, &m.key_pem)
    }

    /// Ends a CA rotation's overlap that is over and renews a certificate near its end (for
    /// the cluster CA; nothing for the operator's). Returns how long until a running overlap
    /// ends, when one runs.
    pub fn maintain(&self) -> Result<Option<Duration>, TlsError> {
        let Source::Cluster { files, leaf, cluster, clock } = &self.source else { return Ok(None) };
        let _busy = self.lock();
        let now = to_time(clock.now());
        let retired = files.retire_if_due(now)?;
        let m = files.ensure(cluster, leaf, now)?;
        // Swap only what changed: a retirement drops the cross-signed CA from the chain, a
        // reissue brings a new leaf; otherwise the served certificate is already the file's.
        let reissued =
            crate::trust::certificates(&m.chain_pem, "the server certificate chain")?[0] != self.certs.leaf();
        if retired || reissued {
            if let Some(agents) = &self.agents {
                agents.replace(&m.bundle_pem)?;
            }
            self.certs.replace(&m.chain_pem, &m.key_pem)?;
            tracing::info!(retired, reissued, "the server certificate was renewed");
        }
        Ok(match files.rotation()? {
            Rotation::Overlap { until, .. } => {
                let left = (until - now).max(time::Duration::ZERO);
                Some(Duration::from_secs_f64(left.as_seconds_f64()) + Duration::from_millis(10))
            }
            Rotation::Single => None,
        })
    }

    fn status_now(&self) -> Result<TlsStatus, TlsError> {
        let certificate = Some(certificate_view(&self.certs.leaf())?);
        let Source::Cluster { files, .. } = &self.source else {
            return Ok(TlsStatus {
                mode: TlsMode::OperatorCertificate,
                ca_fingerprint: None,
                ca_bundle: None,
                rotation: None,
                certificate,
            });
        };
        let m = files.material()?;
        let rotation = match m.rotation {
            Rotation::Single => None,
            Rotation::Overlap { retiring, until } => {
                Some(CaRotation { retiring_fingerprint: retiring.to_string(), until: to_chrono(until) })
            }
        };
        Ok(TlsStatus {
            mode: TlsMode::ClusterCa,
            ca_fingerprint: Some(m.ca.to_string()),
            ca_bundle: Some(m.bundle_pem),
            rotation,
            certificate,
        })
    }
}

fn failed(e: TlsError) -> TlsRefusal {
    TlsRefusal::Failed(Box::new(e))
}

impl ServerTls for ServedTls {
    fn status(&self) -> Result<TlsStatus, BoxError> {
        // One rotation's files are written one after the other: read them between rotations,
        // never in the middle of one (a join token made meanwhile would carry a CA that is
        // not the bundle's yet, or the read would fail).
        let _busy = self.lock();
        Ok(self.status_now()?)
    }

    fn rotate_certificate(&self) -> Result<TlsStatus, TlsRefusal> {
        {
            let _busy = self.lock();
            match &self.source {
                Source::Cluster { files, leaf, clock, .. } => {
                    files.rotate_cert(leaf, to_time(clock.now())).map_err(failed)?;
                    self.reload(files).map_err(failed)?;
                }
                Source::Operator { cert, key } => {
                    let (chain_pem, key_pem) = read_operator(cert, key).map_err(failed)?;
                    self.certs.replace(&chain_pem, &key_pem).map_err(failed)?;
                }
            }
        }
        tracing::info!("rotated the server certificate");
        self.status_now().map_err(failed)
    }

    fn rotate_ca(&self, overlap: Duration) -> Result<TlsStatus, TlsRefusal> {
        let Source::Cluster { files, leaf, cluster, clock } = &self.source else {
            return Err(TlsRefusal::NotApplicable(
                "this server presents the operator's certificate (--tls-cert): its CA is not herd's to rotate; replace the files and run `herd server rotate-cert`".into(),
            ));
        };
        {
            let _busy = self.lock();
            let overlap = time::Duration::try_from(overlap).unwrap_or(time::Duration::days(365));
            if let Rotation::Overlap { until, .. } = files.rotation().map_err(failed)? {
                return Err(TlsRefusal::NotApplicable(format!(
                    "a CA rotation is already in its overlap until {}; rotate again after it ends",
                    to_chrono(until).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )));
            }
            files.rotate_ca(cluster, leaf, overlap, to_time(clock.now())).map_err(failed)?;
            self.reload(files).map_err(failed)?;
        }
        self.wake.notify_one();
        self.status_now().map_err(failed)
    }

    fn sign_agent(&self, host: &str, public_key_pem: &str) -> Result<SignedAgent, TlsRefusal> {
        let Source::Cluster { files, clock, .. } = &self.source else {
            return Err(TlsRefusal::NotApplicable(herd_model::tls::NO_CLUSTER_CA.into()));
        };
        let _busy = self.lock();
        let ca = files.ca().map_err(failed)?;
        let leaf = Leaf::Agent { host: host.to_string() };
        let (certificate_pem, der) = match ca.sign_public_key(&leaf, public_key_pem, to_time(clock.now())) {
            Ok(c) => c,
            Err(TlsError::Invalid { what, reason }) => {
                return Err(TlsRefusal::NotApplicable(format!("{what}: {reason}")));
            }
            Err(e) => return Err(failed(e)),
        };
        let ca_bundle = files.material().map_err(failed)?.bundle_pem;
        Ok(SignedAgent { certificate_pem, fingerprint: crate::Fingerprint::of(&der).to_string(), ca_bundle })
    }
}

fn read_operator(cert: &Path, key: &Path) -> Result<(String, String), TlsError> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|source| TlsError::Io { path: p.to_path_buf(), source });
    Ok((read(cert)?, read(key)?))
}

fn certificate_view(der: &[u8]) -> Result<CertificateView, TlsError> {
    let c = crate::ca::describe(der)?;
    Ok(CertificateView { fingerprint: c.fingerprint.to_string(), not_after: c.not_after, names: c.names })
}

/// The model's time (chrono) as the certificates' (time).
pub fn to_time(t: chrono::DateTime<chrono::Utc>) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.timestamp_nanos_opt().unwrap_or(0)))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn to_chrono(t: OffsetDateTime) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The API reads the TLS status (a join token carries the CA fingerprint from it) while a
    /// rotation rewrites the files: every read sees the files before or after a rotation,
    /// never between two of its writes (schemathesis found a 500 from such a read).
    #[test]
    fn status_reads_never_fail_while_rotations_rewrite_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let served = Arc::new(
            ServedTls::cluster(
                TlsFiles::new(dir.path(), None),
                crate::server_leaf("127.0.0.1:7900".parse().unwrap(), &[]).unwrap(),
                "c1",
                Arc::new(herd_model::clock::SystemClock),
            )
            .unwrap(),
        );
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (served, done) = (served.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut reads = 0u32;
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        let s = served.status().expect("a status read during rotations");
                        assert!(s.ca_fingerprint.is_some() && s.ca_bundle.is_some());
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        served.rotate_ca(Duration::from_secs(3600)).unwrap();
        for _ in 0..20 {
            served.rotate_certificate().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
    }
}
