//! Echo over raw QUIC, checked byte for byte (by SHA-256) with our own client
//! and with quinn, an independent QUIC implementation.

use std::sync::Arc;
use std::time::Duration;

use tq_e2e::{
    echo_with_our_client, init_tracing, payload, quinn_client, quinn_echo, sha256, Impairment,
    LossyRelay, TestServer,
};
use tq_host::quic::{CongestionControl, QuicSettings};

const SIZES: [usize; 6] = [0, 1, 1200, 65_536, 1 << 20, 10 << 20];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_echoes_sizes_from_0_to_10_mib() {
    init_tracing();
    let server = TestServer::start(QuicSettings::default()).await;
    let params = server.client_params(QuicSettings::default());
    for (i, size) in SIZES.into_iter().enumerate() {
        let data = Arc::new(payload(size, i as u64));
        let res = echo_with_our_client(server.addr, &params, vec![data.clone()])
            .await
            .unwrap_or_else(|e| panic!("{size} bytes: {e}"));
        assert_eq!(res[0].len, size, "length of the echo of {size} bytes");
        assert_eq!(
            res[0].sha256,
            sha256(&data),
            "hash of the echo of {size} bytes"
        );
    }
    let m = server.metrics.snapshot();
    assert_eq!(m.connections_accepted, SIZES.len() as u64);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_runs_100_concurrent_streams_on_one_connection() {
    init_tracing();
    let server = TestServer::start(QuicSettings::default()).await;
    let params = server.client_params(QuicSettings::default());
    let payloads: Vec<_> = (0..100)
        .map(|i| Arc::new(payload(10_000 + i * 997, i as u64)))
        .collect();
    let res = echo_with_our_client(server.addr, &params, payloads.clone())
        .await
        .expect("echo");
    assert_eq!(res.len(), 100);
    for (r, p) in res.iter().zip(&payloads) {
        assert_eq!(
            (r.len, r.sha256),
            (p.len(), sha256(p)),
            "stream {}",
            r.stream_id
        );
    }
    assert_eq!(server.metrics.snapshot().connections_accepted, 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_runs_50_concurrent_connections() {
    init_tracing();
    let server = TestServer::start(QuicSettings::default()).await;
    let params = server.client_params(QuicSettings::default());
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..50u64 {
        let params = params.clone();
        let addr = server.addr;
        tasks.spawn(async move {
            let payloads: Vec<_> = (0..4)
                .map(|s| Arc::new(payload(32_768 + s, c * 10 + s as u64)))
                .collect();
            let res = echo_with_our_client(addr, &params, payloads.clone()).await?;
            for (r, p) in res.iter().zip(&payloads) {
                anyhow::ensure!(
                    r.sha256 == sha256(p),
                    "connection {c} stream {} corrupted",
                    r.stream_id
                );
            }
            anyhow::Ok(())
        });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        r.expect("task panicked").expect("connection failed");
        ok += 1;
    }
    assert_eq!(ok, 50);
    assert_eq!(server.metrics.snapshot().connections_accepted, 50);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quinn_echoes_sizes_from_0_to_10_mib() {
    init_tracing();
    let server = TestServer::start(QuicSettings::default()).await;
    let ep = quinn_client(&server.cert.cert, b"tq-echo");
    let conn = ep
        .connect(server.addr, "localhost")
        .expect("connect")
        .await
        .expect("handshake");
    for (i, size) in SIZES.into_iter().enumerate() {
        let data = payload(size, 100 + i as u64);
        let back = quinn_echo(&conn, &data)
            .await
            .unwrap_or_else(|e| panic!("{size} bytes: {e}"));
        assert_eq!(back.len(), size);
        assert_eq!(
            sha256(&back),
            sha256(&data),
            "hash of the echo of {size} bytes"
        );
    }
    conn.close(0u32.into(), b"done");
    ep.wait_idle().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quinn_runs_100_concurrent_streams_and_50_connections() {
    init_tracing();
    let server = TestServer::start(QuicSettings::default()).await;
    let ep = quinn_client(&server.cert.cert, b"tq-echo");

    // 100 streams at once on one connection.
    let conn = ep
        .connect(server.addr, "localhost")
        .expect("connect")
        .await
        .expect("handshake");
    let mut streams = tokio::task::JoinSet::new();
    for i in 0..100u64 {
        let conn = conn.clone();
        streams.spawn(async move {
            let data = payload(5_000 + i as usize * 131, i);
            let back = quinn_echo(&conn, &data).await?;
            anyhow::ensure!(sha256(&back) == sha256(&data), "stream {i} corrupted");
            anyhow::Ok(())
        });
    }
    let mut ok = 0;
    while let Some(r) = streams.join_next().await {
        r.expect("panicked").expect("stream failed");
        ok += 1;
    }
    assert_eq!(ok, 100);
    conn.close(0u32.into(), b"done");

    // 50 connections at once from one quinn endpoint.
    let mut conns = tokio::task::JoinSet::new();
    for c in 0..50u64 {
        let ep = ep.clone();
        let addr = server.addr;
        conns.spawn(async move {
            let conn = ep.connect(addr, "localhost")?.await?;
            let data = payload(20_000, 1000 + c);
            let back = quinn_echo(&conn, &data).await?;
            anyhow::ensure!(sha256(&back) == sha256(&data), "connection {c} corrupted");
            conn.close(0u32.into(), b"done");
            anyhow::Ok(())
        });
    }
    let mut ok = 0;
    while let Some(r) = conns.join_next().await {
        r.expect("panicked").expect("connection failed");
        ok += 1;
    }
    assert_eq!(ok, 50);
    ep.wait_idle().await;
    assert_eq!(server.metrics.snapshot().connections_accepted, 51);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_follows_connection_id_changes() {
    init_tracing();
    let server = TestServer::start(QuicSettings::default()).await;
    let params = server.client_params(QuicSettings::default());
    let data = Arc::new(payload(4 << 20, 9));
    let (app, rx) = tq_e2e::EchoClient::new(vec![data.clone()]);
    let app = app.rotate_ids(6);
    let rotations = app.rotations.clone();
    let res = tq_e2e::run_echo_client(server.addr, &params, app, rx)
        .await
        .expect("echo across id changes");
    assert_eq!(res[0].sha256, sha256(&data));
    // Each retirement makes the server issue a replacement id, which the
    // client then moves to: six moves mean six fresh ids were routed.
    assert!(
        rotations.load(std::sync::atomic::Ordering::Relaxed) >= 4,
        "only {} id changes happened",
        rotations.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert_eq!(server.metrics.snapshot().dropped_unknown_connection, 0);
    server.shutdown().await;
}

/// bbr2 over a link with a 20 ms round trip (on bare loopback quiche's
/// pacer almost never puts a packet in the future), paced in user space
/// (the worker waits while the next packet is not nearly due)
/// and then with the release times handed to the kernel as well
/// (`SO_TXTIME`): the echo is intact both ways, and only the second sends
/// datagrams with a release time. Loopback has no `fq` qdisc, so the
/// kernel does not enforce the times here: this checks the control
/// messages and the path, not the pacing itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_by_bbr2_an_echo_is_intact_with_and_without_the_kernel() {
    init_tracing();
    for offload in [false, true] {
        let paced = QuicSettings {
            pacing_offload: offload,
            congestion_control: CongestionControl::Bbr2,
            ..QuicSettings::default()
        };
        let server = TestServer::start(paced.clone()).await;
        let relay = LossyRelay::start(
            server.addr,
            Impairment {
                delay: Duration::from_millis(10),
                ..Default::default()
            },
        )
        .await;
        let params = server.client_params(paced);
        let data = Arc::new(payload(4 << 20, 7));
        // A hang guard, not a timing assertion: a pacer that never lets a
        // packet go would stall here.
        let res = tokio::time::timeout(
            Duration::from_secs(60),
            echo_with_our_client(relay.addr, &params, vec![data.clone()]),
        )
        .await
        .expect("the echo finishes")
        .expect("echo");
        assert_eq!((res[0].len, res[0].sha256), (data.len(), sha256(&data)));
        let m = server.metrics.snapshot();
        eprintln!(
            "offload {offload}: paced {} of {} datagrams, {} holds",
            m.packets_paced, m.packets_out, m.pacer_holds
        );
        assert!(m.pacer_holds > 0, "the server waited for its pacer");
        if offload {
            assert!(
                m.packets_paced > 0 && m.packets_paced <= m.packets_out,
                "paced {} of {} datagrams",
                m.packets_paced,
                m.packets_out
            );
        } else {
            assert_eq!(m.packets_paced, 0, "no release times without the offload");
        }
        server.shutdown().await;
    }
}
