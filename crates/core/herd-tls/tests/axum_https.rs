//! axum served over [`TlsListener`]: a real HTTP/1.1 request over TLS gets its answer, and the
//! handler sees the client's address.
#![cfg(feature = "axum")]

use axum::extract::ConnectInfo;
use axum::routing::get;
use herd_tls::{client_config, Leaf, ServerCerts, TlsFiles, TlsListener};
use rustls_pki_types::ServerName;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The peer address as the listener reports it (axum's own `SocketAddr` connect info covers
/// only its TCP listener).
#[derive(Clone, Copy)]
struct Peer(std::net::SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

#[tokio::test]
async fn an_https_request_reaches_the_handler_with_the_peer_address() {
    let dir = tempfile::tempdir().unwrap();
    let leaf = Leaf::Server { names: vec!["localhost".into()], addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)] };
    let m = TlsFiles::new(dir.path(), None).ensure("c", &leaf, time::OffsetDateTime::now_utc()).unwrap();
    let certs = ServerCerts::new(&m.chain_pem, &m.key_pem).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener = TlsListener::new(tcp, Arc::new(certs.config().unwrap())).unwrap();
    let addr = listener.local_addr();
    let app = axum::Router::new()
        .route("/who", get(|ConnectInfo(Peer(peer)): ConnectInfo<Peer>| async move { peer.ip().to_string() }));
    tokio::spawn(async move { axum::serve(listener, app.into_make_service_with_connect_info::<Peer>()).await });

    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(&m.bundle_pem).unwrap()));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    tls.write_all(b"GET /who HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("127.0.0.1"), "the handler did not see the peer address: {answer}");
}
