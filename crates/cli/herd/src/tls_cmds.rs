//! `herd server ca show`, `herd server rotate-cert` and `herd server rotate-ca`.
//!
//! Why `ca show` reads files and the rotations call the API: a user asks for the CA to trust
//! it, before the CLI can verify the server, so it is read from the data dir where the server
//! runs; a rotation must swap the certificate inside the running server, so it goes through the
//! API (`/v1/server/tls/...`).

use crate::output::{self, Columns, Format};
use anyhow::{anyhow, Context, Result};
use herd_client::Client;
use serde_json::{json, Value};
use std::path::Path;

const CA_TABLE: Columns<'static> =
    &[("Role", "role"), ("Subject", "subject"), ("NotAfter", "notAfter"), ("Sha256Fingerprint", "fingerprint")];
const TLS_TABLE: Columns<'static> = &[
    ("Mode", "mode"),
    ("CaFingerprint", "caFingerprint"),
    ("RotationUntil", "rotation.until"),
    ("CertificateNotAfter", "certificate.notAfter"),
    ("CertificateFingerprint", "certificate.fingerprint"),
];

/// `herd server ca show`: the bundle in `data_dir`, each CA with its role and fingerprint.
pub fn ca_show(data_dir: &Path, format: Format, query: Option<&str>) -> Result<()> {
    let files = herd_tls::TlsFiles::new(data_dir, None);
    let path = files.bundle_path();
    let bundle = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no cluster CA at {}: is this the server's data dir (--data-dir), and has the server started with TLS once?",
            path.display()
        )
    })?;
    let certs =
        herd_tls::trust::certificates(&bundle, "the CA bundle").map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut list = Vec::new();
    for (i, der) in certs.iter().enumerate() {
        let c = herd_tls::ca::describe(der).map_err(|e| anyhow!("{}: certificate {}: {e}", path.display(), i + 1))?;
        list.push(json!({
            "role": if i == 0 { "active" } else { "retiring" },
            "subject": c.subject,
            "notAfter": c.not_after.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "fingerprint": c.fingerprint.to_string(),
        }));
    }
    let v = json!({
        "bundleFile": path.display().to_string(),
        "fingerprint": herd_tls::Fingerprint::of(&certs[0]).to_string(),
        "certificates": list,
        "bundle": bundle,
    });
    if query.is_none() && matches!(format, Format::Table | Format::Tsv) {
        // As `openssl x509 -fingerprint -sha256` shows a certificate: fingerprint, then PEM.
        for c in v["certificates"].as_array().into_iter().flatten() {
            println!("# {} CA: {}", c["role"].as_str().unwrap_or_default(), c["subject"].as_str().unwrap_or_default());
            println!("# sha256 Fingerprint={}", c["fingerprint"].as_str().unwrap_or_default());
        }
        print!("{bundle}");
        println!("# Save the PEM above on the client and pass it with --ca-file (or HERD_CA_FILE), after checking the fingerprint.");
        return Ok(());
    }
    print!("{}", output::render(&v, format, query, Some(CA_TABLE))?);
    Ok(())
}

/// `herd server rotate-cert`.
pub async fn rotate_cert(client: &Client) -> Result<Value> {
    client.post("/v1/server/tls/rotateCertificate", &json!({})).await
}

/// `herd server rotate-ca --overlap D`.
pub async fn rotate_ca(client: &Client, overlap: &str) -> Result<Value> {
    let d = humantime::parse_duration(overlap)
        .map_err(|e| anyhow!("--overlap '{overlap}': {e}; use forms like 30m, 24h, 7d (1s to 365d)"))?;
    client.post("/v1/server/tls/rotateCa", &json!({"overlapSeconds": d.as_secs()})).await
}

/// The columns of a TLS status.
pub fn table() -> Columns<'static> {
    TLS_TABLE
}
