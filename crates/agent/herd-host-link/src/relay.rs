//! Metadata for instances on joined hosts: each connection an instance opens to its metadata
//! endpoint is relayed by its host's agent, on a connection of its own, to the instance's
//! endpoint on this server.
//!
//! Why a relay and not a metadata service on every host: what the endpoint serves (scheduled
//! events, identity) is the server's decision and lives in its store, and the endpoint knows
//! which instance asks from the listener a connection arrives on (`herd_metadata`). The host's
//! agent listens where the instance looks (its reach address), and the server connects the
//! relayed bytes to that instance's own listener, so the identity rule holds unchanged. A host
//! may relay only for instances placed on it: a compromised host cannot read another host's
//! instances' events or acknowledge them.

use crate::HostLinks;
use herd_agent_wire::ServerMessage;
use herd_model::InstanceKey;
use herd_state::keys::InstanceRecordKey;
use herd_state::Records;
use std::net::SocketAddr;

/// Where an instance's metadata endpoint listens on this server.
#[async_trait::async_trait]
pub trait MetadataEndpoints: Send + Sync + std::fmt::Debug {
    /// The listening address of instance `key`'s endpoint, if it has one now.
    async fn endpoint(&self, key: &InstanceKey) -> Option<SocketAddr>;
}

/// Serves one relay for host `host` of instance `key` (`group/set/id`), until either side
/// closes.
pub(crate) async fn serve(
    links: &HostLinks,
    mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    host: &str,
    key: &str,
) -> Result<(), String> {
    match endpoint_for(links, host, key).await {
        Ok(addr) => match tokio::net::TcpStream::connect(addr).await {
            Ok(mut local) => {
                herd_agent_wire::write(&mut tls, &ServerMessage::RelayStart).await.map_err(|e| e.to_string())?;
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut local).await;
                Ok(())
            }
            Err(e) => refuse(&mut tls, host, format!("instance {key}'s metadata endpoint {addr}: {e}")).await,
        },
        Err(why) => refuse(&mut tls, host, why).await,
    }
}

/// The endpoint of `key`, if it is an instance placed on `host` that has one.
async fn endpoint_for(links: &HostLinks, host: &str, key: &str) -> Result<SocketAddr, String> {
    let ikey = InstanceKey::parse_path(key).ok_or_else(|| format!("'{key}' is not an instance key"))?;
    let k = InstanceRecordKey(ikey.clone());
    let placed = links
        .state
        .run(move |s| Ok(s.instance(&k)?.and_then(|r| r.value.host)))
        .await
        .map_err(|e| format!("reading instance {key}: {e}"))?;
    if placed.as_deref() != Some(host) {
        return Err(format!("instance {key} is not placed on host {host}"));
    }
    let endpoints = links.metadata.get().ok_or("the metadata service is not running on this server")?;
    endpoints.endpoint(&ikey).await.ok_or_else(|| format!("instance {key} has no metadata endpoint now"))
}

async fn refuse<S: tokio::io::AsyncWrite + Unpin>(tls: &mut S, host: &str, reason: String) -> Result<(), String> {
    tracing::warn!(%host, %reason, "a metadata relay refused");
    let _ = herd_agent_wire::write(tls, &ServerMessage::RelayRefused { reason: reason.clone() }).await;
    Err(reason)
}
