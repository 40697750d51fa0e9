//! Operating a fleet: several workers on one address (SO_REUSEPORT), a
//! client whose port changes reaching its connection on another worker,
//! connection ids that carry a server id (QUIC-LB), and stateless resets
//! from a key a restarted host shares.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tq_e2e::certs::TestCert;
use tq_e2e::peers::H3QuinnClient;
use tq_e2e::servers::loopback;
use tq_host::builtin::WelcomePage;
use tq_host::http3::{serve_connection, Http3Settings, ServerH3Driver};
use tq_host::metrics::DefaultMetrics;
use tq_host::quic::{
    self, ConnectionIdGenerator, ConnectionParams, QuicSettings, ServerIdConnectionIdGenerator,
    SimpleConnectionIdGenerator, StatelessResetKey,
};

/// Aborts a test server's task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves the built-in site on `sockets` with `cids`; records which socket
/// each connection arrived on.
fn serve_site(
    sockets: Vec<UdpSocket>,
    cert: &TestCert,
    cids: Arc<dyn ConnectionIdGenerator>,
    metrics: DefaultMetrics,
) -> (AbortOnDrop, SocketAddr, Arc<Mutex<Vec<usize>>>) {
    let params =
        ConnectionParams::new_server(loopback(QuicSettings::default()), cert.paths.clone());
    let mut listener = quic::listen_with_generator(sockets, params, cids, metrics).expect("listen");
    let addr = listener.local_addrs()[0];
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let task = tokio::spawn(async move {
        let mut services = tokio::task::JoinSet::new();
        while let Some(c) = listener.accept().await {
            log.lock().unwrap().push(c.socket_index());
            let (driver, controller) = ServerH3Driver::new_server(Http3Settings::default());
            c.start(driver);
            services.spawn(serve_connection(controller, Arc::new(WelcomePage)));
        }
    });
    (AbortOnDrop(task), addr, seen)
}

#[tokio::test]
async fn two_workers_share_connections_and_a_rebound_client_keeps_its_own() {
    let cert = TestCert::new();
    let metrics = DefaultMetrics::default();
    let sockets = quic::bind_workers("127.0.0.1:0".parse().unwrap(), 2).expect("bind");
    let (_server, addr, seen) = serve_site(
        sockets,
        &cert,
        Arc::new(SimpleConnectionIdGenerator::default()),
        metrics.clone(),
    );

    // Connections from many ports: the kernel spreads them over both.
    for _ in 0..24 {
        let mut c = H3QuinnClient::connect(addr, &cert.cert)
            .await
            .expect("connect");
        let (status, _, _) = c.request("GET", "/", None).await.expect("GET");
        assert_eq!(status, 200);
    }
    let sockets_used: HashSet<usize> = seen.lock().unwrap().iter().copied().collect();
    assert_eq!(
        sockets_used,
        HashSet::from([0, 1]),
        "24 connections all on one worker"
    );

    // A client moves to a new port mid-connection (NAT rebinding). The
    // kernel hashes its new address to either worker's socket; when it
    // picks the other one, that router hands the packets over. Fresh
    // connections move once each until one has landed on the other socket
    // (each does with probability 1/2): every request succeeds, on the
    // connection it started on.
    let mut handed_over = false;
    for i in 0..16 {
        let mut c = H3QuinnClient::connect(addr, &cert.cert)
            .await
            .expect("connect");
        let (status, _, _) = c.request("GET", "/", None).await.expect("GET");
        assert_eq!(status, 200);
        let accepted = seen.lock().unwrap().len();
        let before = metrics.snapshot().packets_handed_over;
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        c.endpoint.rebind(socket).expect("rebind");
        let (status, body, _) = c
            .request("GET", "/bytes/200000", None)
            .await
            .unwrap_or_else(|e| panic!("request after move {i}: {e:#}"));
        assert_eq!((status, body.len()), (200, 200000), "after move {i}");
        assert_eq!(
            seen.lock().unwrap().len(),
            accepted,
            "the move opened a new connection"
        );
        if metrics.snapshot().packets_handed_over > before {
            handed_over = true;
            break;
        }
    }
    assert!(handed_over, "16 moves and none reached the other worker");
}

/// A UDP relay between a client and a server that records the
/// destination connection id of every short-header packet the client
/// sends: the ids the server issued and the client uses.
async fn recording_relay(
    server: SocketAddr,
    cid_len: usize,
) -> (AbortOnDrop, SocketAddr, Arc<Mutex<HashSet<Vec<u8>>>>) {
    let front = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let back = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    back.connect(server).await.expect("connect");
    let addr = front.local_addr().expect("addr");
    let ids = Arc::new(Mutex::new(HashSet::new()));
    let seen = ids.clone();
    let task = tokio::spawn(async move {
        let mut client = None;
        let (mut a, mut b) = (vec![0u8; 65536], vec![0u8; 65536]);
        loop {
            tokio::select! {
                r = front.recv_from(&mut a) => {
                    let Ok((n, from)) = r else { return };
                    client = Some(from);
                    if n > cid_len && a[0] & 0x80 == 0 {
                        seen.lock().unwrap().insert(a[1..1 + cid_len].to_vec());
                    }
                    let _ = back.send(&a[..n]).await;
                }
                r = back.recv(&mut b) => {
                    let Ok(n) = r else { return };
                    if let Some(c) = client {
                        let _ = front.send_to(&b[..n], c).await;
                    }
                }
            }
        }
    });
    (AbortOnDrop(task), addr, ids)
}

#[tokio::test]
async fn connection_ids_carry_the_server_id_of_their_host() {
    let cert = TestCert::new();
    let mut hosts = Vec::new();
    for sid in [[0x0a, 0x01], [0x0b, 0x02]] {
        let g = ServerIdConnectionIdGenerator::new(sid.to_vec(), 0).expect("generator");
        let cid_len = g.connection_id_len();
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let (server, addr, _) =
            serve_site(vec![socket], &cert, Arc::new(g), DefaultMetrics::default());
        let (relay, relay_addr, ids) = recording_relay(addr, cid_len).await;
        hosts.push((sid, server, relay, relay_addr, ids));
    }
    // Both hosts serve their own connections, many requests each (quinn
    // moves to new ids of the host's as it goes).
    for (sid, _, _, relay_addr, ids) in &hosts {
        let mut c = H3QuinnClient::connect(*relay_addr, &cert.cert)
            .await
            .expect("connect");
        for _ in 0..50 {
            let (status, _, _) = c.request("GET", "/", None).await.expect("GET");
            assert_eq!(status, 200);
        }
        let ids = ids.lock().unwrap().clone();
        assert!(!ids.is_empty(), "no short-header packet seen");
        for id in &ids {
            assert_eq!(
                ServerIdConnectionIdGenerator::decode(id, 2),
                Some(&sid[..]),
                "id {id:02x?} of host {sid:02x?}"
            );
        }
    }
}

/// Runs a server on its own runtime (so that it can be killed outright,
/// sockets and all, as a crashed process would be) until `stop` fires.
fn host_on_thread(
    port: u16,
    cert: &TestCert,
    key: StatelessResetKey,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> (std::thread::JoinHandle<()>, DefaultMetrics) {
    let paths = cert.paths.clone();
    let metrics = DefaultMetrics::default();
    let m = metrics.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let socket = UdpSocket::bind(("127.0.0.1", port)).await.expect("bind");
            let params = ConnectionParams::new_server(loopback(QuicSettings::default()), paths);
            let g = SimpleConnectionIdGenerator::default().with_reset_key(key);
            let mut listener =
                quic::listen_with_generator([socket], params, Arc::new(g), m).expect("listen");
            let _ = ready_tx.send(listener.local_addrs()[0]);
            let serve = async {
                let mut services = tokio::task::JoinSet::new();
                while let Some(c) = listener.accept().await {
                    let (driver, controller) = ServerH3Driver::new_server(Http3Settings::default());
                    c.start(driver);
                    services.spawn(serve_connection(controller, Arc::new(WelcomePage)));
                }
            };
            tokio::select! {
                () = serve => {}
                _ = stop => {}
            }
        });
        // Dropping the runtime ends every task and closes the socket,
        // without a word to any client.
        drop(rt);
    });
    let _ = ready_rx.recv();
    (thread, metrics)
}

/// A free UDP port below the kernel's ephemeral range (32768 and up by
/// default). The port is free between the two hosts' lives: one the kernel
/// hands out for `:0` could go to another test's socket in between (the
/// tests run in parallel) and mix the two tests' packets.
fn port_outside_the_ephemeral_range() -> u16 {
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
    (0..200u64)
        .map(|i| 20_000 + ((seed.wrapping_mul(2654435761) + i * 7919) % 12_000) as u16)
        .find(|p| std::net::UdpSocket::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port between 20000 and 32000")
}

#[tokio::test]
async fn a_restarted_host_with_the_same_key_resets_old_connections() {
    let cert = TestCert::new();
    let key = StatelessResetKey::new(&[42u8; 32]).expect("key");
    let port = port_outside_the_ephemeral_range();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();

    let (stop_a, stop) = tokio::sync::oneshot::channel();
    let (a, _) = host_on_thread(port, &cert, key.clone(), stop);
    let mut client = H3QuinnClient::connect(addr, &cert.cert)
        .await
        .expect("connect");
    let (status, _, _) = client.request("GET", "/", None).await.expect("GET");
    assert_eq!(status, 200);

    // The host dies and a new one starts on the same port with the key.
    let _ = stop_a.send(());
    a.join().expect("host a ends");
    let (_stop_b, stop) = tokio::sync::oneshot::channel();
    let (_b, b_metrics) = host_on_thread(port, &cert, key, stop);

    // The old connection's next packet gets a stateless reset the client
    // believes: quinn reports Reset, not a timeout.
    let err = client
        .request("GET", "/", None)
        .await
        .expect_err("the old connection cannot work");
    assert!(
        format!("{err:#}").to_lowercase().contains("reset"),
        "expected a stateless reset, got: {err:#}"
    );
    // The host counts the reset once it is sent, which may be just after
    // the client has read it.
    let counted = async {
        while b_metrics.snapshot().stateless_resets_sent == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(2), counted)
            .await
            .is_ok(),
        "the new host sent no stateless reset; the client said: {err:#}"
    );
}
