//! Real TLS handshakes over loopback: the server presents what `TlsFiles` wrote, clients trust
//! only the bundle they are given.

use herd_tls::files::Material;
use herd_tls::{client_config, untrusted_hint, ClusterCa, Leaf, Rotation, ServerCerts, TlsFiles, TlsListener};
use rustls_pki_types::ServerName;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn leaf() -> Leaf {
    Leaf::Server { names: vec!["localhost".into()], addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)] }
}

/// A TLS server on 127.0.0.1 (through [`TlsListener`]) that answers every connection with
/// "ok" and closes it.
async fn serve(certs: Arc<ServerCerts>) -> SocketAddr {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut listener = TlsListener::new(tcp, Arc::new(certs.config().unwrap())).unwrap();
    let addr = listener.local_addr();
    tokio::spawn(async move {
        while let Some((mut tls, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = tls.write_all(b"ok").await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// Connects trusting `bundle` only; the answer, or the handshake's error.
async fn ask(addr: SocketAddr, bundle: &str) -> Result<String, std::io::Error> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(bundle).unwrap()));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let mut tls = connector.connect(name, tcp).await?;
    let mut out = String::new();
    tls.read_to_string(&mut out).await?;
    Ok(out)
}

fn rustls_error(e: &std::io::Error) -> &rustls::Error {
    e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()).unwrap_or_else(|| panic!("not a TLS error: {e}"))
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn start(dir: &std::path::Path) -> (TlsFiles, Material) {
    let files = TlsFiles::new(dir, None);
    let m = files.ensure("cluster-1", &leaf(), OffsetDateTime::now_utc()).unwrap();
    (files, m)
}

/// A server (see [`serve`]) presenting what [`start`] writes under `dir`: the files, their
/// material, the certificates it serves (replaceable in place) and its address.
async fn start_serving(dir: &std::path::Path) -> (TlsFiles, Material, Arc<ServerCerts>, SocketAddr) {
    let (files, m) = start(dir);
    let certs = ServerCerts::new(&m.chain_pem, &m.key_pem).unwrap();
    let addr = serve(certs.clone()).await;
    (files, m, certs, addr)
}

#[tokio::test]
async fn a_client_trusting_the_bundle_connects_and_one_trusting_another_ca_is_refused_with_the_hint() {
    let dir = tempfile::tempdir().unwrap();
    let (files, m, _, addr) = start_serving(dir.path()).await;
    assert_eq!(mode(files.ca_key_path()), 0o600);
    assert_eq!(mode(&files.key_path()), 0o600);
    assert_eq!(m.rotation, Rotation::Single);
    assert_eq!(ask(addr, &m.bundle_pem).await.unwrap(), "ok");

    let other = ClusterCa::create("elsewhere", OffsetDateTime::now_utc()).unwrap();
    let err = ask(addr, other.cert_pem()).await.unwrap_err();
    let hint = untrusted_hint(rustls_error(&err), &files.bundle_path()).expect("a trust failure has a hint");
    assert!(hint.contains("not signed by the cluster CA"), "{hint}");
    assert!(hint.contains("herd server ca show") && hint.contains("--ca-file"), "{hint}");
}

#[tokio::test]
async fn ensure_keeps_a_current_certificate_and_reissues_for_new_names() {
    let dir = tempfile::tempdir().unwrap();
    let (files, first) = start(dir.path());
    let again = files.ensure("cluster-1", &leaf(), OffsetDateTime::now_utc()).unwrap();
    assert_eq!(again.chain_pem, first.chain_pem, "a current certificate was reissued");
    assert_eq!(again.ca, first.ca, "the CA changed across starts");
    let wider = Leaf::Server { names: vec!["localhost".into(), "herd.example".into()], addresses: vec![] };
    let third = files.ensure("cluster-1", &wider, OffsetDateTime::now_utc()).unwrap();
    assert_ne!(third.chain_pem, first.chain_pem, "new names did not reissue");
    assert_eq!(third.ca, first.ca);
    // A year on, the certificate is within its renewal window and is reissued.
    let later = OffsetDateTime::now_utc() + time::Duration::days(340);
    let renewed = files.ensure("cluster-1", &wider, later).unwrap();
    assert_ne!(renewed.chain_pem, third.chain_pem, "a certificate near its end was not renewed");
}

#[tokio::test]
async fn a_ca_key_without_its_certificate_is_refused_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = start(dir.path());
    std::fs::remove_file(files.bundle_path()).unwrap();
    let err = files.ensure("cluster-1", &leaf(), OffsetDateTime::now_utc()).unwrap_err().to_string();
    assert!(err.contains("a CA key exists but its certificate"), "{err}");
}

#[tokio::test]
async fn rotate_cert_under_a_stream_of_connections_fails_none() {
    let dir = tempfile::tempdir().unwrap();
    let (files, m, certs, addr) = start_serving(dir.path()).await;
    let before = certs.leaf();
    let bundle = m.bundle_pem.clone();
    let asking = tokio::spawn(async move {
        let mut failures = Vec::new();
        for _ in 0..200 {
            if let Err(e) = ask(addr, &bundle).await {
                failures.push(e.to_string());
            }
        }
        failures
    });
    for _ in 0..5 {
        let next = files.rotate_cert(&leaf(), OffsetDateTime::now_utc()).unwrap();
        certs.replace(&next.chain_pem, &next.key_pem).unwrap();
        tokio::task::yield_now().await;
    }
    let failures = asking.await.unwrap();
    assert!(failures.is_empty(), "{} connections failed: {:?}", failures.len(), failures.first());
    assert_ne!(certs.leaf(), before, "the certificate was not replaced");
    assert_eq!(
        ask(addr, &m.bundle_pem).await.unwrap(),
        "ok",
        "the old bundle must still trust the renewed certificate"
    );
}

#[tokio::test]
async fn a_bad_replacement_leaves_the_served_certificate_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let (_, m) = start(dir.path());
    let certs = ServerCerts::new(&m.chain_pem, &m.key_pem).unwrap();
    let before = certs.leaf();
    let other = ClusterCa::create("x", OffsetDateTime::now_utc()).unwrap();
    let stranger = other.issue(&leaf(), OffsetDateTime::now_utc()).unwrap();
    let err = certs.replace(&m.chain_pem, &stranger.key_pem).unwrap_err().to_string();
    assert!(err.contains("does not match"), "{err}");
    assert!(certs.replace("not pem", &m.key_pem).is_err());
    assert_eq!(certs.leaf(), before);
}

#[tokio::test]
async fn rotate_ca_trusts_old_and_new_clients_through_the_overlap_then_only_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (files, old, certs, addr) = start_serving(dir.path()).await;

    let now = OffsetDateTime::now_utc();
    let new = files.rotate_ca("cluster-1", &leaf(), time::Duration::hours(24), now).unwrap();
    certs.replace(&new.chain_pem, &new.key_pem).unwrap();
    assert_ne!(new.ca, old.ca);
    assert_eq!(new.rotation, Rotation::Overlap { retiring: old.ca.clone(), until: now + time::Duration::hours(24) });
    assert_eq!(ask(addr, &old.bundle_pem).await.unwrap(), "ok", "a client knowing only the old CA, in the overlap");
    assert_eq!(ask(addr, &new.bundle_pem).await.unwrap(), "ok", "a client with the new bundle, in the overlap");
    let only_new = files.ca().unwrap();
    assert_eq!(ask(addr, only_new.cert_pem()).await.unwrap(), "ok", "a client knowing only the new CA, in the overlap");
    let err = files.rotate_ca("cluster-1", &leaf(), time::Duration::hours(1), now).unwrap_err().to_string();
    assert!(err.contains("already in its overlap"), "{err}");

    assert!(!files.retire_if_due(now + time::Duration::hours(23)).unwrap(), "retired before the overlap ended");
    assert!(files.retire_if_due(now + time::Duration::hours(25)).unwrap());
    let after = files.material().unwrap();
    certs.replace(&after.chain_pem, &after.key_pem).unwrap();
    assert_eq!(after.rotation, Rotation::Single);
    assert_eq!(ask(addr, &after.bundle_pem).await.unwrap(), "ok");
    let err = ask(addr, &old.bundle_pem).await.unwrap_err();
    assert!(
        matches!(rustls_error(&err), rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)),
        "the old CA is still trusted after the overlap: {err}"
    );
    assert_eq!(mode(files.ca_key_path()), 0o600);
}

#[tokio::test]
async fn a_ca_key_file_outside_the_data_dir_is_used_and_kept_private() {
    let data = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("herd-ca.key");
    let files = TlsFiles::new(data.path(), Some(&key));
    files.ensure("c", &leaf(), OffsetDateTime::now_utc()).unwrap();
    assert_eq!(mode(&key), 0o600);
    assert!(!data.path().join("tls/ca-key.pem").exists(), "the CA key was also written in the data dir");
}

/// OpenSSL (what curl uses) accepts the chain: the CA and the leaf are standard X.509.
#[test]
fn openssl_verifies_the_server_chain_against_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = start(dir.path());
    let out = std::process::Command::new("openssl")
        .args(["verify", "-purpose", "sslserver", "-CAfile"])
        .arg(files.bundle_path())
        .arg(files.chain_path())
        .output()
        .expect("openssl is needed for this test: apt-get install openssl");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains(": OK"), "{text}");
    let other = ClusterCa::create("elsewhere", OffsetDateTime::now_utc()).unwrap();
    let stranger = dir.path().join("other.pem");
    std::fs::write(&stranger, other.cert_pem()).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&stranger)
        .arg(files.chain_path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "openssl trusted a certificate from another CA");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_blocks_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_, m, _, addr) = start_serving(dir.path()).await;
    // Open connections that send nothing (a slow or hostile client).
    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let answer = tokio::time::timeout(std::time::Duration::from_secs(30), ask(addr, &m.bundle_pem))
        .await
        .expect("a real client waited behind stalled handshakes for 30 s");
    assert_eq!(answer.unwrap(), "ok");
    drop(stalled);
}
