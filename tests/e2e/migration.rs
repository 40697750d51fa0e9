//! Passive migration: a client whose address changes under it (NAT
//! rebinding: same connection, new source port or address), many times
//! over one connection, keeps being served, with an independent client
//! (quinn). Active migration: our own client moves to a new socket.

use std::sync::Arc;
use std::time::Duration;

use tq_e2e::{init_tracing, H3App, H3QuinnClient, H3TestServer, Impairment, LossyRelay};
use tq_host::builtin::WelcomePage;
use tq_host::http3::Http3Settings;
use tq_host::quic::QuicSettings;

/// More moves than a connection has paths (quiche keeps at most
/// `active_connection_id_limit` of them, 4 by default), then four back to
/// addresses used before.
const MOVES: usize = 12;

/// A server answering with the built-in site.
async fn site(settings: QuicSettings) -> H3TestServer {
    H3TestServer::start(
        settings,
        Http3Settings::default(),
        H3App::Handler(Arc::new(WelcomePage)),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_rebinding_a_dozen_times_keeps_its_connection() {
    init_tracing();
    let mut server = site(QuicSettings::default()).await;
    let mut c = H3QuinnClient::connect(server.addr, &server.cert.cert)
        .await
        .expect("connect");
    let (status, _, _) = c.request("GET", "/", None).await.expect("GET");
    assert_eq!(status, 200);
    let handle = server.handles.recv().await.expect("the server's handle");
    let mut used: Vec<std::net::SocketAddr> = Vec::new();
    for i in 0..MOVES + 4 {
        // Port changes, and every other time the address too; the last
        // four moves go back to addresses used before (a client returning
        // to an earlier network), where the port is still free.
        let ip = if i % 2 == 0 { "127.0.0.1" } else { "127.0.0.2" };
        let back = (i >= MOVES)
            .then(|| used[(i - MOVES) * 2 + 1])
            .and_then(|a| std::net::UdpSocket::bind(a).ok());
        let socket = match back {
            Some(s) => s,
            None => std::net::UdpSocket::bind((ip, 0)).expect("bind"),
        };
        let local = socket.local_addr().expect("address");
        let (ip, port) = (local.ip(), local.port());
        used.push(local);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_in_the_middle_of_downloads_lose_no_stream() {
    init_tracing();
    let server = site(QuicSettings::default()).await;
    let c = H3QuinnClient::connect(server.addr, &server.cert.cert)
        .await
        .expect("connect");
    let endpoint = c.endpoint.clone();
    let c = Arc::new(tokio::sync::Mutex::new(c));
    for i in 0..8 {
        let download = tokio::spawn({
            let c = c.clone();
            async move { c.lock().await.request("GET", "/bytes/32000000", None).await }
        });
        // Move while the download is under way.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        endpoint.rebind(socket).expect("rebind");
        let (status, body, _) = tokio::time::timeout(std::time::Duration::from_secs(30), download)
            .await
            .unwrap_or_else(|_| panic!("the download during move {i} stalled"))
            .expect("task")
            .unwrap_or_else(|e| panic!("download during move {i}: {e:#}"));
        assert_eq!((status, body.len()), (200, 32_000_000), "move {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_moves_to_a_new_socket_and_keeps_its_requests() {
    init_tracing();
    let server = site(QuicSettings::default()).await;
    // Straight to the server: it takes the client's new address.
    let c = server.client().await;
    let r = c.request("GET", "/bytes/1000", None).await.unwrap();
    assert_eq!(r.body.len(), 1000);
    let mut at = c.connection().local_addr();
    // Three moves: what the default connection-id limits allow (quiche
    // keeps each old path to fall back to); the fourth is refused and the
    // connection stays where it was.
    let ips = ["127.0.0.2", "127.0.0.1", "127.0.0.3"];
    for (i, ip) in ips.iter().copied().enumerate() {
        let socket = tokio::net::UdpSocket::bind((ip, 0)).await.unwrap();
        let moved = c
            .connection()
            .migrate(socket)
            .await
            .unwrap_or_else(|e| panic!("move {i}: {e}"));
        assert_eq!(moved.ip().to_string(), ip);
        assert_ne!(moved, at);
        at = moved;
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            c.request("GET", "/bytes/300000", None),
        )
        .await
        .unwrap_or_else(|_| panic!("the request after move {i} stalled"))
        .unwrap();
        assert_eq!((r.status, r.body.len()), (200, 300_000), "after move {i}");
    }
    let socket = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let refused = c
        .connection()
        .migrate(socket)
        .await
        .expect_err("a fourth move");
    assert!(
        refused.to_string().contains("OutOfIdentifiers"),
        "{refused}"
    );
    let r = c.request("GET", "/bytes/1000", None).await.unwrap();
    assert_eq!(r.body.len(), 1000, "served where it stayed");

    // Through a relay that notes every client address: the packets come
    // from the new socket once the client has moved.
    let relay = LossyRelay::start(server.addr, Impairment::default()).await;
    let c = tq_host::http3::H3Client::connect(
        relay.addr,
        "localhost",
        &server.client_params(),
        Http3Settings::default(),
    )
    .await
    .expect("connect through the relay");
    assert_eq!(c.request("GET", "/", None).await.unwrap().status, 200);
    let socket = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let moved = c.connection().migrate(socket).await.expect("migrate");
    let r = c.request("GET", "/bytes/100000", None).await.unwrap();
    assert_eq!(r.body.len(), 100_000);
    let seen = relay.counts.clients_seen.lock().unwrap().clone();
    assert_eq!(seen.last(), Some(&moved), "{seen:?}");
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_does_not_move_when_the_server_says_not_to() {
    init_tracing();
    let server = site(QuicSettings {
        disable_active_migration: true,
        ..QuicSettings::default()
    })
    .await;
    let c = server.client().await;
    assert_eq!(c.request("GET", "/", None).await.unwrap().status, 200);
    let socket = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let refused = c.connection().migrate(socket).await.expect_err("the move");
    assert!(
        refused.to_string().contains("disable_active_migration"),
        "{refused}"
    );
    // Still served where it was.
    assert_eq!(
        c.request("GET", "/bytes/1000", None)
            .await
            .unwrap()
            .body
            .len(),
        1000
    );
}
