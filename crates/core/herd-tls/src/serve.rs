//! The server's side: a rustls configuration whose certificate can be swapped while it serves.
//!
//! Why a resolver and not a fixed certificate: `herd server rotate-cert` and the CA rotation
//! replace the certificate under a running server. Each new handshake asks the resolver, so a
//! swap takes effect for the next connection, and connections already open are not touched.

use crate::TlsError;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::{Arc, RwLock};

/// The certificate chain and key a server presents, replaceable at any time.
#[derive(Debug)]
pub struct ServerCerts {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCerts {
    /// From a PEM chain (leaf first) and its PEM key.
    pub fn new(chain_pem: &str, key_pem: &str) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self { current: RwLock::new(certified(chain_pem, key_pem)?) }))
    }

    /// Swaps in a new chain and key; the next handshake presents them. A chain or key that
    /// does not parse, or a key that is not the leaf's, leaves the current one in place.
    pub fn replace(&self, chain_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let next = certified(chain_pem, key_pem)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }

    /// The leaf certificate presented now.
    pub fn leaf(&self) -> CertificateDer<'static> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).cert[0].clone()
    }

    /// A rustls server configuration that presents these certificates (TLS 1.2 and 1.3, no
    /// client certificates yet; agents will bring theirs), offering HTTP/1.1.
    pub fn config(self: &Arc<Self>) -> Result<rustls::ServerConfig, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for ServerCerts {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

fn certified(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what: "the server certificate chain".into(), source })?;
    if chain.is_empty() {
        return Err(TlsError::invalid("the server certificate chain", "it holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|source| TlsError::Pem { what: "the server key".into(), source })?;
    let key = crate::provider().key_provider.load_private_key(key)?;
    let certified = CertifiedKey::new(chain, key);
    certified
        .keys_match()
        .map_err(|e| TlsError::invalid("the server key", format!("it does not match the certificate: {e}")))?;
    Ok(Arc::new(certified))
}
