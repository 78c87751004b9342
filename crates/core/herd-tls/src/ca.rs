//! The cluster CA: an ECDSA P-256 key and a self-signed certificate that every herd TLS peer
//! trusts. It signs the server's certificate (and later agents' client certificates and other
//! replicas' server certificates), and, when it is rotated, its successor.

use crate::TlsError;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use time::{Duration, OffsetDateTime};

/// How long a CA is valid: long, because replacing it is a rotation every peer takes part in.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// How long a server or agent certificate is valid; the server renews its own at start when
/// less than [`RENEW_BEFORE`] is left, and `herd server rotate-cert` renews it at any time.
pub const LEAF_VALIDITY: Duration = Duration::days(365);
/// Renew a leaf certificate when less than this is left.
pub const RENEW_BEFORE: Duration = Duration::days(30);
/// Certificates start to be valid a little in the past, for peers whose clocks lag.
const BACKDATE: Duration = Duration::minutes(5);

/// A certificate's SHA-256 over its DER bytes, printed as colon-separated upper-case hex (as
/// `openssl x509 -fingerprint -sha256` prints it), so a user can compare it by eye.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }

    /// Parses the printed form, with or without colons, in either case.
    pub fn parse(s: &str) -> Option<Self> {
        let hex: String = s.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(hex.trim()).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|b| format!("{b:02X}")).collect();
        f.write_str(&parts.join(":"))
    }
}

/// What a certificate is for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Leaf {
    /// A herd server (API, and later replica to replica): valid for these DNS names and
    /// addresses.
    Server { names: Vec<String>, addresses: Vec<IpAddr> },
    /// A host agent, authenticated by the server with this client certificate (many-hosts
    /// work): its host name is the certificate's subject.
    Agent { host: String },
}

/// A certificate this CA signed, with its new private key.
pub struct Issued {
    pub cert_pem: String,
    pub der: CertificateDer<'static>,
    /// The private key, PEM (PKCS#8). Never logged or printed.
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").field("fingerprint", &Fingerprint::of(&self.der).to_string()).finish_non_exhaustive()
    }
}

/// The cluster CA: its certificate and its signing key.
pub struct ClusterCa {
    cert_pem: String,
    der: CertificateDer<'static>,
    key: KeyPair,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").field("fingerprint", &self.fingerprint().to_string()).finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new CA for the cluster `cluster` (its id), valid from `now`.
    pub fn create(cluster: &str, now: OffsetDateTime) -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let cert = ca_params(cluster, now)?.self_signed(&key)?;
        Ok(Self { cert_pem: cert.pem(), der: cert.der().clone(), key })
    }

    /// The CA from its certificate and key (PEM). Refuses a key that is not the certificate's.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|source| TlsError::Pem { what: "the CA certificate".into(), source })?;
        let key = KeyPair::from_pem(key_pem)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| TlsError::invalid("the CA certificate", e.to_string()))?;
        if cert.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
            return Err(TlsError::invalid("the CA key", "it is not the key of the CA certificate"));
        }
        if !cert.is_ca() {
            return Err(TlsError::invalid("the CA certificate", "it is not a CA certificate (no CA basic constraint)"));
        }
        Ok(Self { cert_pem: cert_pem.to_string(), der, key })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// The CA key, PEM. Written only to the CA key file.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.der)
    }

    /// When this CA stops being valid.
    pub fn not_after(&self) -> Result<OffsetDateTime, TlsError> {
        not_after(&self.der)
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, TlsError> {
        Ok(Issuer::from_ca_cert_der(&self.der, &self.key)?)
    }

    /// Signs a new certificate (with a new key) for `leaf`, valid from `now`.
    pub fn issue(&self, leaf: &Leaf, now: OffsetDateTime) -> Result<Issued, TlsError> {
        let key = KeyPair::generate()?;
        let (cert_pem, der) = self.sign(leaf, &key, now)?;
        Ok(Issued { cert_pem, der, key_pem: key.serialize_pem() })
    }

    /// Signs a certificate for `leaf` over a public key whose private half stays with its
    /// owner: an agent sends its public key (PEM, SubjectPublicKeyInfo) at join and keeps its
    /// key. Returns the certificate as PEM and DER.
    pub fn sign_public_key(
        &self,
        leaf: &Leaf,
        public_key_pem: &str,
        now: OffsetDateTime,
    ) -> Result<(String, CertificateDer<'static>), TlsError> {
        let public = rcgen::SubjectPublicKeyInfo::from_pem(public_key_pem)
            .map_err(|e| TlsError::invalid("the public key", e.to_string()))?;
        self.sign(leaf, &public, now)
    }

    fn sign(
        &self,
        leaf: &Leaf,
        key: &impl PublicKeyData,
        now: OffsetDateTime,
    ) -> Result<(String, CertificateDer<'static>), TlsError> {
        let mut params = CertificateParams::default();
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_VALIDITY;
        params.serial_number = Some(serial());
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "herd");
        match leaf {
            Leaf::Server { names, addresses } => {
                if names.is_empty() && addresses.is_empty() {
                    return Err(TlsError::invalid("a server certificate", "it needs at least one name or address"));
                }
                dn.push(DnType::CommonName, names.first().cloned().unwrap_or_else(|| addresses[0].to_string()));
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                for n in names {
                    params.subject_alt_names.push(SanType::DnsName(
                        n.clone()
                            .try_into()
                            .map_err(|_| TlsError::invalid("a TLS name", format!("'{n}' is not a DNS name")))?,
                    ));
                }
                params.subject_alt_names.extend(addresses.iter().map(|a| SanType::IpAddress(*a)));
            }
            Leaf::Agent { host } => {
                dn.push(DnType::CommonName, host.clone());
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
        }
        params.distinguished_name = dn;
        let cert = params.signed_by(key, &self.issuer()?)?;
        Ok((cert.pem(), cert.der().clone()))
    }

    /// A successor CA, and the successor's certificate cross-signed by this one: a server that
    /// sends the cross-signed certificate after its leaf is trusted by clients that know only
    /// this CA, for the rotation's overlap.
    pub fn successor(
        &self,
        cluster: &str,
        now: OffsetDateTime,
    ) -> Result<(ClusterCa, CertificateDer<'static>), TlsError> {
        let key = KeyPair::generate()?;
        let params = ca_params(cluster, now)?;
        let own = params.self_signed(&key)?;
        let cross = params.signed_by(&key, &self.issuer()?)?;
        let next = ClusterCa { cert_pem: own.pem(), der: own.der().clone(), key };
        Ok((next, cross.der().clone()))
    }
}

fn ca_params(cluster: &str, now: OffsetDateTime) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::default();
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    params.serial_number = Some(serial());
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "herd");
    dn.push(DnType::OrganizationalUnitName, cluster);
    // Each CA of a cluster has its own name, so the old and the new one are told apart in a
    // bundle and in a verifier's path building.
    let stamp = now.unix_timestamp();
    let tag: [u8; 4] = rand::random();
    dn.push(DnType::CommonName, format!("herd cluster CA {stamp}-{}", hex::encode(tag)));
    params.distinguished_name = dn;
    Ok(params)
}

fn serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

/// What a certificate says, for people: its subject, end, fingerprint and names.
#[derive(Debug, Clone)]
pub struct Summary {
    pub subject: String,
    pub not_after: chrono::DateTime<chrono::Utc>,
    pub fingerprint: Fingerprint,
    /// Its DNS names and IP addresses.
    pub names: Vec<String>,
}

/// Reads the certificate `der` for display.
pub fn describe(der: &[u8]) -> Result<Summary, TlsError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::invalid("a certificate", e.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_string()),
                GeneralName::IPAddress(b) => names.push(match <[u8; 4]>::try_from(*b) {
                    Ok(v4) => IpAddr::from(v4).to_string(),
                    Err(_) => {
                        <[u8; 16]>::try_from(*b).map_or_else(|_| hex::encode(b), |v6| IpAddr::from(v6).to_string())
                    }
                }),
                _ => {}
            }
        }
    }
    Ok(Summary {
        subject: cert.subject().to_string(),
        not_after: chrono::DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0).unwrap_or_default(),
        fingerprint: Fingerprint::of(der),
        names,
    })
}

/// When the certificate `der` stops being valid.
pub fn not_after(der: &[u8]) -> Result<OffsetDateTime, TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::invalid("a certificate", e.to_string()))?;
    Ok(cert.validity().not_after.to_datetime())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_print_as_openssl_does_and_parse_back() {
        let f = Fingerprint::of(b"abc");
        let s = f.to_string();
        assert_eq!(s.len(), 32 * 3 - 1);
        assert!(s.starts_with("BA:78:16:BF"), "{s}");
        assert_eq!(Fingerprint::parse(&s), Some(f.clone()));
        assert_eq!(Fingerprint::parse(&s.replace(':', "").to_lowercase()), Some(f));
        assert_eq!(Fingerprint::parse("AB:CD"), None);
    }

    #[test]
    fn a_loaded_ca_must_hold_its_own_key() {
        let now = OffsetDateTime::now_utc();
        let a = ClusterCa::create("c1", now).unwrap();
        let b = ClusterCa::create("c1", now).unwrap();
        let again = ClusterCa::load(a.cert_pem(), &a.key_pem()).unwrap();
        assert_eq!(again.fingerprint(), a.fingerprint());
        let err = ClusterCa::load(a.cert_pem(), &b.key_pem()).unwrap_err();
        assert!(err.to_string().contains("not the key of the CA certificate"), "{err}");
        let leaf = a.issue(&Leaf::Server { names: vec!["localhost".into()], addresses: vec![] }, now).unwrap();
        let err = ClusterCa::load(&leaf.cert_pem, &leaf.key_pem).unwrap_err();
        assert!(err.to_string().contains("not a CA certificate"), "{err}");
    }

    #[test]
    fn leaves_are_valid_for_a_year_and_cas_for_ten() {
        let now = OffsetDateTime::now_utc();
        let ca = ClusterCa::create("c1", now).unwrap();
        let leaf = ca.issue(&Leaf::Agent { host: "h2".into() }, now).unwrap();
        let left = not_after(&leaf.der).unwrap() - now;
        assert!((left - LEAF_VALIDITY).abs() < Duration::seconds(2), "{left}");
        let left = ca.not_after().unwrap() - now;
        assert!((left - CA_VALIDITY).abs() < Duration::seconds(2), "{left}");
        let err = ca.issue(&Leaf::Server { names: vec![], addresses: vec![] }, now).unwrap_err();
        assert!(err.to_string().contains("at least one name or address"), "{err}");
    }
}
