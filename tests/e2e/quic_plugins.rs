//! Raw QUIC plugins (`tq:plugin/quic-app`): the example echo plugin with our
//! client and quinn, timers, server streams, close, shutdown, and the sandbox
//! holding against a raw plugin that misbehaves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tq_e2e::{echo_with_our_client, init_tracing, payload, quinn_echo, sha256, QuicPluginServer};
use tq_host::plugin::PluginLimits;

/// Sends `cmd` on a new stream of `conn` and returns the answer as text.
async fn ask(conn: &quinn::Connection, cmd: &str) -> anyhow::Result<String> {
    let back = quinn_echo(conn, cmd.as_bytes()).await?;
    Ok(String::from_utf8_lossy(&back).into_owned())
}

/// The application error code a quinn connection was closed with.
async fn closed_with(conn: &quinn::Connection) -> Option<(u64, String)> {
    match tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("the connection closes")
    {
        quinn::ConnectionError::ApplicationClosed(c) => Some((
            c.error_code.into_inner(),
            String::from_utf8_lossy(&c.reason).into_owned(),
        )),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_plugin_echoes_streams_to_our_client_and_to_quinn() {
    init_tracing();
    let server = QuicPluginServer::start("echo", PluginLimits::default()).await;

    // Ours: sizes from empty to 8 MiB, plus 20 small streams, all at once.
    let mut payloads: Vec<Arc<Vec<u8>>> = [0usize, 1, 1000, 1 << 20, 8 << 20]
        .iter()
        .map(|&n| Arc::new(payload(n, n as u64)))
        .collect();
    payloads.extend((0..20).map(|i| Arc::new(payload(10_000 + i, i as u64))));
    let results = echo_with_our_client(server.addr, &server.client_params(), payloads.clone())
        .await
        .expect("echo with our client");
    assert_eq!(results.len(), payloads.len());
    for (r, p) in results.iter().zip(&payloads) {
        assert_eq!(r.len, p.len(), "stream {}", r.stream_id);
        assert_eq!(r.sha256, sha256(p), "stream {}", r.stream_id);
    }

    // quinn: 4 MiB, then the plugin's per-connection count of it.
    let (_ep, conn) = server.quinn().await;
    let data = payload(4 << 20, 7);
    let back = quinn_echo(&conn, &data).await.expect("quinn echo");
    assert_eq!(sha256(&back), sha256(&data));
    assert_eq!(
        ask(&conn, "STATS\n").await.unwrap(),
        format!("streams=1 bytes={}\n", 4 << 20)
    );

    // Datagrams come back too.
    conn.send_datagram(bytes::Bytes::from_static(b"ping"))
        .expect("datagram");
    let echoed = tokio::time::timeout(Duration::from_secs(5), conn.read_datagram())
        .await
        .expect("datagram echo in time")
        .expect("datagram");
    assert_eq!(&echoed[..], b"ping");
    conn.close(0u32.into(), b"done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_to_a_slow_reader_stays_within_plugin_memory() {
    init_tracing();
    // 48 MiB through a plugin capped at 8 MiB, read slowly: the host stops
    // reading the stream while its echo is held back, so the plugin never
    // holds more than a chunk. (Without that pause the SDK's buffer grows
    // past the cap and the plugin traps.)
    let limits = PluginLimits {
        memory_bytes: 8 << 20,
        ..Default::default()
    };
    let server = QuicPluginServer::start("echo", limits).await;
    let (_ep, conn) = server.quinn().await;
    let data = payload(48 << 20, 3);
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let write = async {
        send.write_all(&data).await?;
        send.finish()?;
        anyhow::Ok(())
    };
    let read = async {
        let mut got = Vec::with_capacity(data.len());
        let mut buf = vec![0u8; 256 << 10];
        while let Some(n) = recv.read(&mut buf).await? {
            got.extend_from_slice(&buf[..n]);
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        anyhow::Ok(got)
    };
    let ((), got) = tokio::try_join!(write, read).expect("slow echo completes");
    assert_eq!(got.len(), data.len());
    assert_eq!(sha256(&got), sha256(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_plugin_uses_timers_server_streams_stats_and_close() {
    init_tracing();
    let server = QuicPluginServer::start("quic_probe", PluginLimits::default()).await;
    let (_ep, conn) = server.quinn().await;

    // A timer does not hold up other streams.
    let started = Instant::now();
    let timer = ask(&conn, "after 300");
    let quick = async {
        let r = ask(&conn, "echo quick").await;
        (r, started.elapsed())
    };
    let (timer, (quick, quick_took)) = tokio::join!(timer, quick);
    assert_eq!(quick.unwrap(), "quick");
    assert!(quick_took < Duration::from_millis(300), "{quick_took:?}");
    assert_eq!(timer.unwrap(), "tick after 300");
    assert!(started.elapsed() >= Duration::from_millis(300));

    let stats = ask(&conn, "stats").await.unwrap();
    let field = |name: &str| -> u64 {
        stats
            .split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {stats}"))
    };
    assert!(field("rtt_us") > 0, "{stats}");
    assert!(field("recv_bytes") > 100, "{stats}");
    assert!(field("sent_packets") > 2, "{stats}");

    // A stream the plugin opens itself.
    let (answer, pushed) = tokio::join!(ask(&conn, "push"), async {
        let mut uni = conn.accept_uni().await?;
        anyhow::Ok(uni.read_to_end(1024).await?)
    });
    assert_eq!(answer.unwrap(), "ok");
    assert_eq!(pushed.expect("server stream"), b"pushed");

    // The plugin closes with its own code.
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(b"close 7").await.unwrap();
    send.finish().unwrap();
    assert_eq!(closed_with(&conn).await, Some((7, "asked to".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reaches_the_plugin_which_answers_and_closes() {
    init_tracing();
    let server = QuicPluginServer::start("quic_probe", PluginLimits::default()).await;
    let (_ep, conn) = server.quinn().await;
    // The waiting command is written (and finished) before the echo below
    // is even opened, so the plugin has it when the echo's answer comes
    // back; only its answer is awaited on another task. (Spawning the
    // whole exchange let the echo overtake it: the plugin then shut down
    // with nothing to answer.)
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"after 60000").await.unwrap();
    send.finish().unwrap();
    let waiting = tokio::spawn(async move {
        let back = recv.read_to_end(1024).await?;
        anyhow::Ok(String::from_utf8_lossy(&back).into_owned())
    });
    assert_eq!(ask(&conn, "echo ready").await.unwrap(), "ready");
    server.shutdown.send_replace(true);
    assert_eq!(waiting.await.unwrap().expect("answered on shutdown"), "bye");
    assert_eq!(
        closed_with(&conn).await,
        Some((0x42, "shutting down".into()))
    );
}

/// Runs `cmd` on one connection while another keeps echoing; returns how
/// the first connection was closed, how long that took, and how many echoes
/// the other got meanwhile.
async fn misbehave(cmd: &str, limits: PluginLimits) -> (Option<(u64, String)>, Duration, usize) {
    let server = QuicPluginServer::start("quic_probe", limits).await;
    let (_ep1, bystander) = server.quinn().await;
    let (_ep2, victim) = server.quinn().await;
    let stop = Arc::new(tokio::sync::Notify::new());
    let echoes = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut ok = 0;
            loop {
                tokio::select! {
                    () = stop.notified() => return ok,
                    r = ask(&bystander, "echo alive") => {
                        assert_eq!(r.expect("the other connection keeps working"), "alive");
                        ok += 1;
                    }
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let (mut send, _recv) = victim.open_bi().await.unwrap();
    send.write_all(cmd.as_bytes()).await.unwrap();
    send.finish().unwrap();
    let how = closed_with(&victim).await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.notify_one();
    let answered = echoes.await.expect("bystander panicked");
    // New connections are still served.
    let (_ep3, after) = server.quinn().await;
    assert_eq!(ask(&after, "echo still").await.unwrap(), "still");
    (how, took, answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_raw_plugin_is_cut_off_and_only_its_connection_closes() {
    init_tracing();
    let limits = PluginLimits {
        call_deadline: Duration::from_millis(300),
        ..Default::default()
    };
    let (how, took, answered) = misbehave("loop", limits).await;
    assert_eq!(how, Some((0x1, "plugin failed".into())));
    assert!(
        took < Duration::from_secs(3),
        "cut off after {took:?}, deadline 300 ms"
    );
    assert!(
        answered > 0,
        "the other connection got no echo during the loop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_plugin_panic_or_memory_bomb_ends_only_its_connection() {
    init_tracing();
    let (how, _, answered) = misbehave("panic", PluginLimits::default()).await;
    assert_eq!(how, Some((0x1, "plugin failed".into())));
    assert!(answered > 0);
    let limits = PluginLimits {
        memory_bytes: 16 << 20,
        ..Default::default()
    };
    let (how, _, answered) = misbehave("bomb", limits).await;
    assert_eq!(how, Some((0x1, "plugin failed".into())));
    assert!(answered > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_raw_plugin_arguments_are_refused_and_its_close_is_clamped() {
    init_tracing();
    let limits = PluginLimits {
        // Room for the plugin's own 64 MiB datagram and write.
        memory_bytes: 256 << 20,
        ..Default::default()
    };
    let server = QuicPluginServer::start("quic_probe", limits).await;
    let (_ep1, bystander) = server.quinn().await;
    let (_ep2, victim) = server.quinn().await;
    let (mut send, _recv) = victim.open_bi().await.unwrap();
    send.write_all(b"hostile").await.unwrap();
    send.finish().unwrap();
    let mut answer = tokio::time::timeout(Duration::from_secs(20), victim.accept_uni())
        .await
        .expect("the answer comes")
        .expect("a server stream");
    let answer = answer.read_to_end(1 << 16).await.expect("the answer");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    println!("hostile raw plugin: {answer}");
    // Every write, reset and stop of a made-up stream (ours far past the
    // next one, or the client's never opened), and every code beyond
    // 2^62 - 1, is refused; a 64 MiB datagram is refused; a 64 MiB write
    // is taken in part at most.
    assert!(answer.starts_with("ok 0 refused "), "{answer}");
    let field = |name: &str| -> u64 {
        let mut words = answer.split(' ');
        while let Some(w) = words.next() {
            if w == name {
                return words
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(u64::MAX);
            }
        }
        u64::MAX
    };
    assert!(field("refused") >= 400_000, "{answer}");
    assert_eq!(field("queued"), 0, "{answer}");
    assert!(answer.contains("datagram false"), "{answer}");
    let big = answer.split("big ").nth(1).unwrap_or_default();
    let taken: u64 = big
        .trim_start_matches("Ok(")
        .trim_end_matches(')')
        .parse()
        .unwrap_or(u64::MAX);
    assert!(taken <= 4 << 20, "a 64 MiB write was taken whole: {answer}");
    // close(u64::MAX, 1 MiB): closed with the internal error code and a
    // cut reason.
    let (code, reason) = closed_with(&victim).await.expect("closed by the plugin");
    assert_eq!(code, 0x1);
    assert!(
        reason.len() <= 1024,
        "a {} byte reason went out",
        reason.len()
    );
    // The other connection and new ones are served.
    assert_eq!(ask(&bystander, "echo alive").await.unwrap(), "alive");
    let (_ep3, after) = server.quinn().await;
    assert_eq!(ask(&after, "echo still").await.unwrap(), "still");
}
