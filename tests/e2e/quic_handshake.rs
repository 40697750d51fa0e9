//! Handshake behaviour: stateless Retry on and off, idle timeouts on both
//! sides, and a clear error when the client offers an ALPN the server lacks.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tq_e2e::{
    echo_with_our_client, init_tracing, payload, quinn_client, quinn_client_with, quinn_echo,
    sha256, TestServer,
};
use tq_host::metrics::DefaultMetrics;
use tq_host::quic::{self, QuicError, QuicSettings};

async fn echo_once(server: &TestServer) {
    let params = server.client_params(QuicSettings::default());
    let data = Arc::new(payload(100_000, 7));
    let res = echo_with_our_client(server.addr, &params, vec![data.clone()])
        .await
        .expect("echo");
    assert_eq!(res[0].sha256, sha256(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_on_validates_the_address_first() {
    init_tracing();
    let server = TestServer::start(QuicSettings::default()).await;
    echo_once(&server).await;
    let m = server.metrics.snapshot();
    // One Retry per token-less Initial datagram: a ClientHello with a
    // post-quantum key share spans two datagrams, so two may be sent.
    assert!(m.retries_sent >= 1, "no Retry sent: {m:?}");
    assert_eq!(m.dropped_invalid_token, 0);
    assert_eq!(m.connections_accepted, 1);

    // quinn follows the Retry too.
    let ep = quinn_client(&server.cert.cert, b"tq-echo");
    let conn = ep
        .connect(server.addr, "localhost")
        .unwrap()
        .await
        .expect("quinn handshake after Retry");
    conn.close(0u32.into(), b"");
    ep.wait_idle().await;
    let after = server.metrics.snapshot();
    assert!(
        after.retries_sent > m.retries_sent,
        "quinn got no Retry: {after:?}"
    );
    assert_eq!(after.connections_accepted, 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_data_is_served_with_and_without_a_retry() {
    init_tracing();
    // The runner's zerortt with Retry on, against an independent client
    // that keeps its 0-RTT data across the Retry (quinn; aioquic rebuilds
    // its packet spaces on a Retry and never resends what its 0-RTT packet
    // carried: see the README's interop table).
    for retry in [true, false] {
        let server = TestServer::start(QuicSettings {
            enable_early_data: true,
            enable_retry: retry,
            ..Default::default()
        })
        .await;
        let ep = quinn_client_with(&server.cert.cert, b"tq-echo", true);
        let conn = ep
            .connect(server.addr, "localhost")
            .unwrap()
            .await
            .expect("first handshake");
        assert_eq!(quinn_echo(&conn, b"first").await.unwrap(), b"first");
        conn.close(0u32.into(), b"");
        // The second connection resumes, and its stream goes out in 0-RTT
        // packets, before the handshake completes.
        let (conn, accepted) = ep
            .connect(server.addr, "localhost")
            .unwrap()
            .into_0rtt()
            .unwrap_or_else(|_| panic!("retry {retry}: no session ticket to offer 0-RTT with"));
        let back = tokio::time::timeout(Duration::from_secs(10), quinn_echo(&conn, b"early"))
            .await
            .unwrap_or_else(|_| panic!("retry {retry}: the early request was never answered"))
            .expect("echo in 0-RTT");
        assert_eq!(back, b"early");
        assert!(
            accepted.await,
            "retry {retry}: the server refused the early data"
        );
        let m = server.metrics.snapshot();
        assert_eq!(m.retries_sent > 0, retry, "{m:?}");
        conn.close(0u32.into(), b"");
        ep.wait_idle().await;
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_off_accepts_on_the_first_initial() {
    init_tracing();
    let settings = QuicSettings {
        enable_retry: false,
        ..Default::default()
    };
    let server = TestServer::start(settings).await;
    echo_once(&server).await;
    let m = server.metrics.snapshot();
    assert_eq!(m.retries_sent, 0, "{m:?}");
    assert_eq!(m.connections_accepted, 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_the_connection_on_both_sides() {
    init_tracing();
    let idle = QuicSettings {
        max_idle_timeout: Duration::from_millis(400),
        ..Default::default()
    };
    let mut server = TestServer::start(idle.clone()).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(server.addr).await.unwrap();
    // A client application that never sends: the connection goes idle at once.
    let client = quic::connect_with_config(
        socket,
        Some("localhost"),
        &server.client_params(idle),
        Silent,
        DefaultMetrics::default(),
    )
    .await
    .expect("handshake");
    let server_conn = server
        .handles
        .recv()
        .await
        .expect("server saw the connection");

    let started = std::time::Instant::now();
    let (c, s) = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::join!(client.closed(), server_conn.closed())
    })
    .await
    .expect("both sides close within 5 s");
    assert!(c.timed_out, "client: {}", c.describe());
    assert!(s.timed_out, "server: {}", s.describe());
    assert_eq!(c.describe(), "idle timeout");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed too early: {:?}",
        started.elapsed()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_alpn_is_refused_with_a_clear_error() {
    init_tracing();
    let server = TestServer::start(QuicSettings::default()).await;
    let wrong = QuicSettings {
        alpn: vec!["h9".into()],
        ..Default::default()
    };
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(server.addr).await.unwrap();
    let err = quic::connect_with_config(
        socket,
        Some("localhost"),
        &server.client_params(wrong),
        Silent,
        DefaultMetrics::default(),
    )
    .await
    .expect_err("handshake must fail");
    assert!(matches!(err, QuicError::HandshakeFailed(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("no_application_protocol"),
        "unclear error: {text}"
    );

    // quinn is refused the same way.
    let ep = quinn_client(&server.cert.cert, b"h9");
    let qerr = ep
        .connect(server.addr, "localhost")
        .unwrap()
        .await
        .expect_err("quinn must be refused");
    assert!(
        qerr.to_string().contains("120")
            || qerr.to_string().contains("no_application_protocol")
            || qerr.to_string().contains("0x178"),
        "quinn saw: {qerr}"
    );

    // The server counted TLS handshake failures, and still serves.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = server.metrics.snapshot();
    assert!(m.handshake_tls_failures >= 1, "{m:?}");
    echo_once(&server).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_is_refused_by_the_client() {
    init_tracing();
    let server = TestServer::start(QuicSettings::default()).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(server.addr).await.unwrap();
    let params = quic::ConnectionParams::new_client(tq_e2e::echo_alpn(QuicSettings::default()));
    let err = quic::connect_with_config(
        socket,
        Some("localhost"),
        &params,
        Silent,
        DefaultMetrics::default(),
    )
    .await
    .expect_err("an unknown CA must fail verification");
    assert!(err.to_string().contains("unknown_ca"), "{err}");
    server.shutdown().await;
}

/// An application that does nothing at all.
struct Silent;

impl quic::ApplicationOverQuic for Silent {
    async fn wait_for_data(&mut self, _: &mut quiche::Connection) -> quic::QuicResult<()> {
        std::future::pending().await
    }
    fn process_reads(&mut self, _: &mut quiche::Connection) -> quic::QuicResult<()> {
        Ok(())
    }
    fn process_writes(&mut self, _: &mut quiche::Connection) -> quic::QuicResult<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keylog_and_qlog_files_are_written_when_asked() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let settings = QuicSettings {
        keylog_file: Some(dir.path().join("keys.log")),
        qlog_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let server = TestServer::start(settings).await;
    echo_once(&server).await;
    server.shutdown().await;
    let keys = std::fs::read_to_string(dir.path().join("keys.log")).expect("key log written");
    assert!(keys.contains("CLIENT_TRAFFIC_SECRET_0"), "{keys}");
    let qlogs: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with("-server.sqlog"))
        .collect();
    assert_eq!(qlogs.len(), 1, "one qlog per server connection");
    let q = std::fs::read_to_string(qlogs[0].path()).unwrap();
    assert!(
        q.contains("packet_received") || q.contains("transport:packet_received"),
        "qlog has events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_where_nothing_listens_fails_fast_and_says_so() {
    init_tracing();
    // A port that was just free: nothing listens there now.
    let addr = {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.local_addr().unwrap()
    };
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    let params = quic::ConnectionParams::new_client(QuicSettings::default()).verify_peer(false);
    let err = quic::connect_with_config(
        socket,
        Some("localhost"),
        &params,
        Silent,
        DefaultMetrics::default(),
    )
    .await
    .expect_err("nobody answers");
    assert!(err.to_string().contains("unreachable"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}; the idle timeout is 30 s",
        started.elapsed()
    );
}

/// The first datagram of a fresh quiche client: a real Initial, from a
/// client that will never say anything more (as from a spoofed address).
fn lone_initial() -> Vec<u8> {
    let mut config = quiche::Config::new(quiche::PROTOCOL_VERSION).unwrap();
    config.set_application_protos(&[b"tq-echo"]).unwrap();
    config.verify_peer(false);
    let scid: Vec<u8> = (0..16).map(|_| rand_byte()).collect();
    let local = "127.0.0.1:1".parse().unwrap();
    let peer = "127.0.0.1:2".parse().unwrap();
    let mut conn = quiche::connect(
        Some("localhost"),
        &quiche::ConnectionId::from_ref(&scid),
        local,
        peer,
        &mut config,
    )
    .unwrap();
    let mut out = vec![0u8; 1500];
    let (n, _) = conn.send(&mut out).unwrap();
    out.truncate(n);
    out
}

fn rand_byte() -> u8 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .elapsed()
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish() as u8
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_off_still_validates_addresses_once_unproven_handshakes_pile_up() {
    init_tracing();
    const CAP: usize = 3;
    let settings = QuicSettings {
        enable_retry: false,
        max_unvalidated_handshakes: CAP,
        // The abandoned handshakes end at the idle timeout (long enough
        // that they are still held when the real client arrives).
        max_idle_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let server = TestServer::start(settings).await;
    // Ten clients that send an Initial and vanish: the first CAP are held
    // as handshakes, the rest get a Retry and cost nothing.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for _ in 0..10 {
        socket.send_to(&lone_initial(), server.addr).await.unwrap();
    }
    let m = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let m = server.metrics.snapshot();
            if m.retries_sent >= 10 - CAP as u64 {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("Retries go out once the cap is reached");
    assert_eq!(m.retries_sent, 10 - CAP as u64, "{m:?}");
    assert_eq!(m.connections_accepted, CAP as u64, "{m:?}");
    // A real client meanwhile goes through a Retry and is served.
    echo_once(&server).await;
    let m = server.metrics.snapshot();
    assert!(m.retries_sent > 10 - CAP as u64, "{m:?}");
    assert_eq!(m.connections_accepted, CAP as u64 + 1, "{m:?}");
    server.shutdown().await;
}
