//! TLS between `herd agent` and the server: the agent's own key, the certificate the cluster
//! CA signs for it at join, and the two ends' rustls configurations.
//!
//! Why it looks like this:
//! - **One port.** An agent dials the API's address (`https://SERVER:7900`) and asks for the
//!   application protocol [`AGENT_ALPN`]. The server looks at the client hello before it picks
//!   a configuration ([`crate::TlsListener::with_agents`]): agents get one that *requires* a
//!   client certificate of the cluster CA, everyone else (the CLI, curl, a browser) the API's,
//!   which asks for none. So a host needs no inbound port of its own, and API clients never
//!   see a certificate request.
//! - **The agent's key never leaves its host.** It makes a key pair, sends only the public key
//!   with its join token, and gets back a certificate whose subject is its host name.
//! - **First contact is pinned.** The join token carries the SHA-256 of the cluster CA. The
//!   agent fetches the CA bundle without trusting anyone ([`fetch_config`]), keeps it only if
//!   a certificate in it has that hash ([`pin_bundle`]), and from then on trusts exactly that
//!   bundle, so its token secret only ever goes to a server holding a certificate of the CA.
//! - **Rotation.** The CAs an agent certificate may chain to follow the server's bundle
//!   ([`AgentClients::replace`]), so a CA rotation's overlap keeps old agents in.

use crate::{Fingerprint, TlsError};
use rcgen::KeyPair;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::sync::{Arc, RwLock};

/// The application protocol an agent asks for on the API's port.
pub const AGENT_ALPN: &[u8] = b"herd-agent/1";

/// An agent's key pair (ECDSA P-256), made on its host.
pub struct AgentKey(KeyPair);

impl std::fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentKey").finish_non_exhaustive()
    }
}

impl AgentKey {
    pub fn generate() -> Result<Self, TlsError> {
        Ok(Self(KeyPair::generate()?))
    }

    /// The key from its PEM (PKCS#8), as [`Self::private_pem`] wrote it.
    pub fn load(pem: &str) -> Result<Self, TlsError> {
        Ok(Self(KeyPair::from_pem(pem)?))
    }

    /// The private key, PEM. Written only to the agent's key file (0600).
    pub fn private_pem(&self) -> String {
        self.0.serialize_pem()
    }

    /// The public key, PEM (SubjectPublicKeyInfo): what the agent sends at join.
    pub fn public_pem(&self) -> String {
        self.0.public_key_pem()
    }
}

/// The host name an agent certificate names (its subject's common name) and its fingerprint.
pub fn agent_identity(der: &CertificateDer<'_>) -> Result<(String, Fingerprint), TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::invalid("the agent certificate", e.to_string()))?;
    let host = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| TlsError::invalid("the agent certificate", "its subject has no common name"))?;
    Ok((host.to_string(), Fingerprint::of(der)))
}

/// Keeps the bundle only if one of its certificates has the SHA-256 `ca_sha256` (hex, either
/// case, colons allowed) — the one the join token names.
pub fn pin_bundle(bundle_pem: &str, ca_sha256: &str) -> Result<(), TlsError> {
    let want = Fingerprint::parse(ca_sha256)
        .ok_or_else(|| TlsError::invalid("the join token's CA fingerprint", "it is not a SHA-256 in hex"))?;
    let certs = crate::trust::certificates(bundle_pem, "the server's CA bundle")?;
    if certs.iter().any(|c| Fingerprint::of(c) == want) {
        return Ok(());
    }
    let got: Vec<String> = certs.iter().map(|c| Fingerprint::of(c).to_string()).collect();
    Err(TlsError::invalid(
        "the server's CA",
        format!(
            "its CA bundle ({}) does not hold the CA the join token names ({want}): this is not the server that made the token, or the token is for another cluster",
            got.join(", ")
        ),
    ))
}

/// The client configuration an agent dials with after join: trusts exactly `bundle_pem`,
/// presents `chain_pem`/`key_pem`, and asks for [`AGENT_ALPN`].
pub fn agent_client_config(bundle_pem: &str, chain_pem: &str, key_pem: &str) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for der in crate::trust::certificates(bundle_pem, "the CA bundle")? {
        roots.add(der).map_err(|e| TlsError::invalid("the CA bundle", e.to_string()))?;
    }
    let chain = crate::trust::certificates(chain_pem, "the agent certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|source| TlsError::Pem { what: "the agent key".into(), source })?;
    let mut config = rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![AGENT_ALPN.to_vec()];
    Ok(config)
}

/// The one configuration that trusts any server certificate: only for fetching the public CA
/// bundle at first contact, whose hash [`pin_bundle`] then checks against the token. Nothing
/// secret is ever sent over it.
pub fn fetch_config() -> Result<rustls::ClientConfig, TlsError> {
    let provider = crate::provider();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts any server certificate (signatures are still checked against it).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The server's check of agent certificates: they must chain to a CA of the current bundle.
/// The bundle can be replaced while the server runs (a CA rotation).
#[derive(Debug)]
pub struct AgentClients {
    current: RwLock<Arc<dyn ClientCertVerifier>>,
}

impl AgentClients {
    pub fn new(bundle_pem: &str) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self { current: RwLock::new(verifier(bundle_pem)?) }))
    }

    /// Trusts the CAs of `bundle_pem` from the next handshake on.
    pub fn replace(&self, bundle_pem: &str) -> Result<(), TlsError> {
        let next = verifier(bundle_pem)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }

    fn get(&self) -> Arc<dyn ClientCertVerifier> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn verifier(bundle_pem: &str) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for der in crate::trust::certificates(bundle_pem, "the CA bundle")? {
        roots.add(der).map_err(|e| TlsError::invalid("the CA bundle", e.to_string()))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::provider())
        .build()
        .map_err(|e| TlsError::invalid("the agent certificate check", e.to_string()))
}

impl ClientCertVerifier for AgentClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; an agent has exactly one certificate to offer.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.get().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.get().supported_verify_schemes()
    }
}

/// The server configuration for agent connections: the server's own certificates, a client
/// certificate of the cluster CA required, and [`AGENT_ALPN`] only.
pub fn agent_server_config(
    certs: &Arc<crate::ServerCerts>,
    clients: Arc<AgentClients>,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(clients)
        .with_cert_resolver(certs.clone());
    config.alpn_protocols = vec![AGENT_ALPN.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClusterCa, Leaf};
    use time::OffsetDateTime;

    #[test]
    fn an_agent_certificate_is_signed_over_its_own_public_key_and_names_its_host() {
        let now = OffsetDateTime::now_utc();
        let ca = ClusterCa::create("c1", now).unwrap();
        let key = AgentKey::generate().unwrap();
        let (pem, der) = ca.sign_public_key(&Leaf::Agent { host: "h2".into() }, &key.public_pem(), now).unwrap();
        let (host, fp) = agent_identity(&der).unwrap();
        assert_eq!(host, "h2");
        assert_eq!(fp, Fingerprint::of(&der));
        // The certificate and the agent's own key make a client configuration.
        agent_client_config(ca.cert_pem(), &pem, &key.private_pem()).unwrap();
        // The CA's clients check accepts it; another CA's refuses it.
        let clients = AgentClients::new(ca.cert_pem()).unwrap();
        assert!(clients.verify_client_cert(&der, &[], UnixTime::now()).is_ok());
        let other = ClusterCa::create("c2", now).unwrap();
        let foreign = AgentClients::new(other.cert_pem()).unwrap();
        assert!(foreign.verify_client_cert(&der, &[], UnixTime::now()).is_err());
        // After a replace with both CAs, it is accepted again.
        foreign.replace(&format!("{}{}", other.cert_pem(), ca.cert_pem())).unwrap();
        assert!(foreign.verify_client_cert(&der, &[], UnixTime::now()).is_ok());
        let err = ca.sign_public_key(&Leaf::Agent { host: "h2".into() }, "not a key", now).unwrap_err();
        assert!(err.to_string().contains("public key"), "{err}");
    }

    #[test]
    fn a_bundle_is_kept_only_with_the_tokens_ca_in_it() {
        let now = OffsetDateTime::now_utc();
        let ca = ClusterCa::create("c1", now).unwrap();
        let other = ClusterCa::create("c1", now).unwrap();
        pin_bundle(ca.cert_pem(), &ca.fingerprint().to_string()).unwrap();
        pin_bundle(ca.cert_pem(), &ca.fingerprint().to_string().replace(':', "").to_lowercase()).unwrap();
        let err = pin_bundle(other.cert_pem(), &ca.fingerprint().to_string()).unwrap_err().to_string();
        assert!(err.contains("does not hold the CA the join token names"), "{err}");
        assert!(pin_bundle(ca.cert_pem(), "zz").is_err());
    }
}
