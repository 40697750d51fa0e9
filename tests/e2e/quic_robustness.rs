//! Hostile input: a flood of malformed and unexpected datagrams at the
//! listening socket must never take the router down, and a real connection
//! opened during the flood must complete its transfer.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tq_e2e::{echo_with_our_client, init_tracing, payload, sha256, TestServer};
use tq_host::quic::QuicSettings;

/// A tiny deterministic generator, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A long-header packet: `first` byte, `version`, connection ids, then
/// `body`, padded to `pad_to`.
fn long_header(
    first: u8,
    version: u32,
    dcid: &[u8],
    scid: &[u8],
    body: &[u8],
    pad_to: usize,
) -> Vec<u8> {
    let mut p = vec![first];
    p.extend_from_slice(&version.to_be_bytes());
    p.push(dcid.len() as u8);
    p.extend_from_slice(dcid);
    p.push(scid.len() as u8);
    p.extend_from_slice(scid);
    p.extend_from_slice(body);
    if p.len() < pad_to {
        p.resize(pad_to, 0);
    }
    p
}

fn garbage(rng: &mut Rng, i: usize) -> Vec<u8> {
    let dcid = rng.bytes(8);
    let scid = rng.bytes(8);
    match i % 8 {
        // Random bytes of random length.
        0 => {
            let n = 1 + (rng.next() % 1500) as usize;
            rng.bytes(n)
        }
        // A long header cut off in the middle of its connection ids.
        1 => vec![0xc0, 0, 0, 0, 1, 20, 1, 2, 3],
        // An unknown version, large enough to deserve version negotiation.
        2 => long_header(0xc0, 0x1a2a_3a4a, &dcid, &scid, &[], 1200),
        // A short header naming a connection id nobody has.
        3 => {
            let mut p = vec![0x40];
            p.extend(rng.bytes(16 + 100));
            p
        }
        // An Initial that is too small to be one.
        4 => long_header(0xc0, 1, &dcid, &scid, &[0, 10, 0, 0], 300),
        // A full-size Initial with a forged Retry token (token length 40).
        5 => {
            let mut body = vec![40];
            body.extend(rng.bytes(40));
            body.extend_from_slice(&[0x44, 0x00]);
            long_header(0xc0, 1, &dcid, &scid, &body, 1200)
        }
        // A Handshake packet for an unknown connection.
        6 => long_header(0xe0, 1, &dcid, &scid, &rng.bytes(50), 0),
        // A zero-length datagram's nearest neighbour: one byte.
        _ => vec![rng.next() as u8],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_never_stops_the_router_and_a_real_transfer_completes() {
    init_tracing();
    let server = TestServer::start(QuicSettings::default()).await;
    let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    attacker.connect(server.addr).await.unwrap();

    const FLOOD: usize = 30_000;
    let flood = async {
        let mut rng = Rng(0x5eed);
        for i in 0..FLOOD {
            let p = garbage(&mut rng, i);
            // Loopback may briefly refuse when buffers fill: keep going.
            let _ = attacker.send(&p).await;
            if i % 256 == 0 {
                tokio::task::yield_now().await;
            }
        }
    };
    let params = server.client_params(QuicSettings::default());
    let data = Arc::new(payload(2 << 20, 42));
    let transfer = echo_with_our_client(server.addr, &params, vec![data.clone()]);
    let ((), res) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(flood, transfer)
    })
    .await
    .expect("flood and transfer finish within 60 s");
    let res = res.expect("the transfer during the flood completes");
    assert_eq!(res[0].sha256, sha256(&data));

    // The attacker got version negotiation for the unknown version.
    let mut buf = [0u8; 1500];
    let n = tokio::time::timeout(Duration::from_secs(2), attacker.recv(&mut buf))
        .await
        .expect("a reply to the flood")
        .expect("recv");
    assert!(n >= 7);
    let m = server.metrics.snapshot();
    assert!(m.version_negotiations_sent > 0, "{m:?}");
    assert!(m.dropped_malformed > 0, "{m:?}");
    assert!(m.dropped_unknown_connection > 0, "{m:?}");
    assert!(m.dropped_initial_too_small > 0, "{m:?}");
    assert!(m.dropped_invalid_token > 0, "{m:?}");
    assert_eq!(
        m.connections_accepted, 1,
        "garbage made no connection: {m:?}"
    );

    // And the server still accepts new connections afterwards.
    let again = echo_with_our_client(server.addr, &params, vec![Arc::new(payload(10_000, 1))])
        .await
        .expect("a connection after the flood");
    assert_eq!(again[0].len, 10_000);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_accept_backlog_drops_new_connections_and_counts_them() {
    init_tracing();
    let cert = tq_e2e::TestCert::new();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let metrics = tq_host::metrics::DefaultMetrics::default();
    let settings = tq_e2e::echo_alpn(QuicSettings {
        accept_backlog: 1,
        enable_retry: false,
        ..Default::default()
    });
    // A listener nobody accepts from: the backlog fills with one connection.
    let listener = tq_host::quic::listen(
        [socket],
        tq_host::quic::ConnectionParams::new_server(settings, cert.paths.clone()),
        metrics.clone(),
    )
    .unwrap();
    let client_params =
        tq_host::quic::ConnectionParams::new_client(tq_e2e::echo_alpn(QuicSettings {
            max_idle_timeout: Duration::from_millis(500),
            ..Default::default()
        }))
        .ca_file(&cert.paths.cert);
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let p = client_params.clone();
        attempts.spawn(async move {
            echo_with_our_client(addr, &p, vec![Arc::new(payload(10, 0))]).await
        });
    }
    while let Some(r) = attempts.join_next().await {
        assert!(
            r.unwrap().is_err(),
            "nobody accepts, so no echo can succeed"
        );
    }
    let m = metrics.snapshot();
    assert!(m.dropped_accept_backlog > 0, "{m:?}");
    assert_eq!(m.connections_accepted, 0);
    drop(listener);
}
