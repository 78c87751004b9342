//! First contact with the server: pin the cluster CA that the join token names, then join.
//!
//! 1. `GET /v1/join/ca` over TLS that trusts nothing yet ([`herd_tls::agent::fetch_config`]);
//!    the bundle is kept only if a certificate in it has the token's SHA-256.
//! 2. `POST /v1/join` over TLS that trusts exactly that bundle, with the token, the host's
//!    labels and a public key made here. The private key never leaves this host.
//!
//! The token's secret is sent only in step 2, so only a server that holds a certificate of the
//! pinned CA ever sees it.

use crate::identity::{Identity, Membership};
use anyhow::{anyhow, bail, Context, Result};
use herd_model::host::{HostCapacity, JoinRequest};
use herd_model::join_token::JoinToken;
use herd_tls::agent::{fetch_config, pin_bundle, AgentKey};
use std::time::Duration;

/// What `herd agent` was told to join as.
#[derive(Clone)]
pub struct JoinAs {
    pub server: String,
    pub token: String,
    pub name: String,
    pub zone: String,
    pub fault_domain: Option<String>,
    pub capacity: HostCapacity,
}

impl std::fmt::Debug for JoinAs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinAs").field("server", &self.server).field("name", &self.name).finish_non_exhaustive()
    }
}

/// `https://HOST:PORT` checked; the base the agent's requests go to.
pub fn server_url(server: &str) -> Result<url::Url> {
    let url = url::Url::parse(server).map_err(|e| anyhow!("--server '{server}': {e} (expected https://HOST:PORT)"))?;
    if url.scheme() != "https" {
        bail!("--server '{server}': agents join over HTTPS only (expected https://HOST:PORT)");
    }
    if url.host_str().is_none() {
        bail!("--server '{server}': no host (expected https://HOST:PORT)");
    }
    Ok(url)
}

fn client(config: rustls::ClientConfig) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .use_preconfigured_tls(config)
        .timeout(Duration::from_secs(30))
        .build()
        .context("making the HTTPS client")
}

/// Joins the host: returns its new identity (not yet saved).
pub async fn join(req: &JoinAs) -> Result<Identity> {
    let base = server_url(&req.server)?;
    let token = JoinToken::parse(&req.token).map_err(|e| anyhow!("--join-token: {e}"))?;
    // 1. The CA bundle, pinned to the token's fingerprint.
    let ca_url = base.join("/v1/join/ca")?;
    let fetched = client(fetch_config()?)?
        .get(ca_url.clone())
        .send()
        .await
        .with_context(|| format!("fetching the cluster CA from {ca_url}"))?;
    if !fetched.status().is_success() {
        let status = fetched.status();
        bail!("the server at {base} did not give its CA ({status}): {}", error_message(fetched).await);
    }
    let bundle = fetched.text().await.context("reading the cluster CA")?;
    pin_bundle(&bundle, &token.ca_sha256).map_err(|e| anyhow!("{e}"))?;
    // 2. The join, trusting only that CA.
    let key = AgentKey::generate().map_err(|e| anyhow!("making the host's key: {e}"))?;
    let body = JoinRequest {
        token: req.token.clone(),
        name: req.name.clone(),
        zone: req.zone.clone(),
        fault_domain: req.fault_domain.clone(),
        public_key_pem: key.public_pem(),
        agent_version: crate::VERSION.to_string(),
        capacity: req.capacity,
    };
    let trusted = herd_tls::client_config(&bundle).map_err(|e| anyhow!("the cluster CA: {e}"))?;
    let answer = client(trusted)?
        .post(base.join("/v1/join")?)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("joining at {base}"))?;
    if !answer.status().is_success() {
        let status = answer.status();
        bail!("the server refused the join ({status}): {}", error_message(answer).await);
    }
    let joined: serde_json::Value = answer.json().await.context("reading the join answer")?;
    let field =
        |name: &str| joined[name].as_str().map(str::to_string).ok_or_else(|| anyhow!("the join answer has no {name}"));
    Ok(Identity {
        membership: Membership {
            server: base.as_str().trim_end_matches('/').to_string(),
            cluster_id: field("clusterId")?,
            name: req.name.clone(),
            zone: req.zone.clone(),
            fault_domain: req.fault_domain.clone(),
        },
        key_pem: key.private_pem(),
        certificate_pem: field("certificatePem")?,
        ca_bundle: field("caBundle")?,
    })
}

/// The server's error message (`{"error": {"message"}}`), or the body as text.
async fn error_message(r: reqwest::Response) -> String {
    let text = r.text().await.unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or(text)
}
