//! The client's side: trust exactly the cluster CA bundle, and explain a refusal.
//!
//! Why no system roots: a herd server's certificate is signed by its cluster CA, not by a
//! public CA. Trusting only the bundle means a certificate from anywhere else is refused, and
//! the user is told how to fetch and pin the right CA (`herd server ca show` on the server).

use crate::TlsError;
use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::path::Path;

/// The certificates of a PEM bundle.
pub fn certificates(bundle_pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bundle_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what: what.into(), source })?;
    if certs.is_empty() {
        return Err(TlsError::invalid(what, "it holds no certificate"));
    }
    Ok(certs)
}

/// A rustls client configuration that trusts the CAs of `bundle_pem` and nothing else.
pub fn client_config(bundle_pem: &str) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for der in certificates(bundle_pem, "the CA bundle")? {
        roots.add(der).map_err(|e| TlsError::invalid("the CA bundle", e.to_string()))?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// What to tell a user whose client refused the server's certificate (`None` when the error
/// is not about trust). `ca_file` is the bundle the client trusted.
pub fn untrusted_hint(err: &rustls::Error, ca_file: &Path) -> Option<String> {
    let rustls::Error::InvalidCertificate(e) = err else { return None };
    let why = match e {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            "its certificate is not signed by the cluster CA this client trusts".to_string()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "its certificate is not valid for the address used (add it with `herd server --tls-san`)".to_string()
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "its certificate has expired (renew it with `herd server rotate-cert`)".to_string()
        }
        other => format!("its certificate was refused ({other:?})"),
    };
    Some(format!(
        "the server is not trusted: {why}. This client trusts the CA bundle {}. On the server, \
         `herd server ca show` prints the cluster CA and its SHA-256 fingerprint; check the \
         fingerprint, save the CA to a file and pass it with --ca-file (or HERD_CA_FILE)",
        ca_file.display()
    ))
}
