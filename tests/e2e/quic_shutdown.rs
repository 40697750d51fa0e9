//! Shutdown: a listener that stops accepting lets live connections finish,
//! refuses new ones, and leaves nothing running (its socket is released).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tq_e2e::{echo_with_our_client, init_tracing, payload, sha256, TestCert};
use tq_host::builtin::EchoApplication;
use tq_host::metrics::DefaultMetrics;
use tq_host::quic::{self, ConnectionParams, QuicSettings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_live_connections_finish_then_releases_everything() {
    init_tracing();
    let cert = TestCert::new();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let metrics = DefaultMetrics::default();
    let mut listener = quic::listen(
        [socket],
        ConnectionParams::new_server(
            tq_e2e::echo_alpn(QuicSettings::default()),
            cert.paths.clone(),
        ),
        metrics.clone(),
    )
    .unwrap();
    let client_params = ConnectionParams::new_client(tq_e2e::echo_alpn(QuicSettings {
        max_idle_timeout: Duration::from_secs(2),
        ..Default::default()
    }))
    .ca_file(&cert.paths.cert);

    // A long transfer is in flight when the listener shuts down.
    let data = Arc::new(payload(8 << 20, 3));
    let transfer = tokio::spawn({
        let params = client_params.clone();
        let data = data.clone();
        async move { echo_with_our_client(addr, &params, vec![data]).await }
    });
    let incoming = listener.accept().await.expect("the transfer's connection");
    let server_conn = incoming.start(EchoApplication::default());
    server_conn.established().await.expect("established");

    let shutdown = tokio::spawn(listener.shutdown());
    let res = transfer
        .await
        .unwrap()
        .expect("the live connection finishes its transfer");
    assert_eq!(res[0].sha256, sha256(&data));

    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown completes once connections end")
        .unwrap();
    assert!(server_conn.is_closed());
    let m = metrics.snapshot();
    assert_eq!(m.connections_active, 0, "{m:?}");

    // Nothing holds the socket any more: the port can be bound again, and a
    // new connection attempt finds no server.
    let rebound = UdpSocket::bind(addr)
        .await
        .expect("port released after shutdown");
    drop(rebound);
    let late = echo_with_our_client(addr, &client_params, vec![Arc::new(payload(10, 1))]).await;
    assert!(late.is_err(), "no server should answer after shutdown");
}
