//! Passive migration: a client whose address changes under it (NAT
//! rebinding: same connection, new source port or address), many times
//! over one connection, keeps being served, with an independent client
//! (quinn).

use std::sync::Arc;

use tq_e2e::{init_tracing, H3App, H3QuinnClient, H3TestServer};
use tq_host::builtin::WelcomePage;
use tq_host::http3::Http3Settings;
use tq_host::quic::QuicSettings;

/// More moves than a connection has paths (quiche keeps at most
/// `active_connection_id_limit` of them, 4 by default).
const MOVES: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_rebinding_a_dozen_times_keeps_its_connection() {
    init_tracing();
    let mut server = H3TestServer::start(
        QuicSettings::default(),
        Http3Settings::default(),
        H3App::Handler(Arc::new(WelcomePage)),
    )
    .await;
    let mut c = H3QuinnClient::connect(server.addr, &server.cert.cert)
        .await
        .expect("connect");
    let (status, _, _) = c.request("GET", "/", None).await.expect("GET");
    assert_eq!(status, 200);
    let handle = server.handles.recv().await.expect("the server's handle");
    for i in 0..MOVES {
        // Port changes, and every other time the address too.
        let ip = if i % 2 == 0 { "127.0.0.1" } else { "127.0.0.2" };
        let socket = std::net::UdpSocket::bind((ip, 0)).expect("bind");
        let port = socket.local_addr().expect("address").port();
        c.endpoint.rebind(socket).expect("rebind");
        let (status, body, _) = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            c.request("GET", "/bytes/300000", None),
        )
        .await
        .unwrap_or_else(|_| panic!("the request after move {i} (to {ip}:{port}) stalled"))
        .unwrap_or_else(|e| panic!("request after move {i}: {e:#}"));
        assert_eq!((status, body.len()), (200, 300_000), "after move {i}");
    }
    // One connection all along.
    assert!(
        server.handles.try_recv().is_err(),
        "a move opened a new connection"
    );
    drop(handle);
}
