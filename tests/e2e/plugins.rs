//! WebAssembly plugins served over HTTP/3: the example hello plugin, and the
//! sandbox holding against plugins that misbehave.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tq_e2e::{init_tracing, payload, sha256, PluginServer};
use tq_host::plugin::PluginLimits;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hello_plugin_answers_its_routes() {
    init_tracing();
    let server = PluginServer::start("hello", PluginLimits::default()).await;
    let client = server.client().await;

    let r = client.request("GET", "/", None).await.expect("GET /");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"hello from a tq-host plugin\n"[..])
    );

    // One instance per connection: state carries across its requests.
    let r = client.request("GET", "/count", None).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "request 2 on this connection\n"
    );
    let other = server.client().await;
    let r = other.request("GET", "/count", None).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "request 1 on this connection\n"
    );

    for size in [0usize, 1000, 1 << 20] {
        let data = Bytes::from(payload(size, size as u64));
        let r = client
            .request("POST", "/echo", Some(data.clone()))
            .await
            .unwrap_or_else(|e| panic!("echo {size}: {e}"));
        assert_eq!(r.status, 200);
        assert_eq!(sha256(&r.body), sha256(&data), "echo of {size} bytes");
    }

    // 32 MiB generated as the client reads: more than the plugin's memory
    // cap could hold at once.
    let n = 32 << 20;
    let r = client
        .request("GET", &format!("/bytes/{n}"), None)
        .await
        .expect("stream");
    assert_eq!(r.body.len(), n);
    assert_eq!(r.header("content-length"), Some(n.to_string().as_str()));

    tq_e2e::assert_discards(&client, &[0, 3 << 20]).await;

    let r = client.request("GET", "/nope", None).await.unwrap();
    assert_eq!(r.status, 404);
}

/// Keeps requesting `/ok` on its own connection until told to stop; returns
/// how many were answered. Any failure panics.
async fn keep_asking(server: &PluginServer, stop: Arc<tokio::sync::Notify>) -> usize {
    let client = server.client().await;
    let mut ok = 0;
    loop {
        tokio::select! {
            () = stop.notified() => return ok,
            r = client.request("GET", "/ok", None) => {
                let r = r.expect("a well-behaved connection keeps being answered");
                assert_eq!(r.body, b"ok");
                ok += 1;
            }
        }
    }
}

async fn misbehaving_request(
    path: &str,
    limits: PluginLimits,
) -> (Result<tq_host::http3::Response, String>, Duration, usize) {
    let server = Arc::new(PluginServer::start("misbehave", limits).await);
    let stop = Arc::new(tokio::sync::Notify::new());
    let bystander = {
        let server = server.clone();
        let stop = stop.clone();
        tokio::spawn(async move { keep_asking(&server, stop).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let client = server.client().await;
    let started = Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(20), client.request("GET", path, None))
        .await
        .expect("the misbehaving request ends")
        .map_err(|e| e.to_string());
    let took = started.elapsed();
    // The bystander goes on a little longer, then reports.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.notify_one();
    let answered = bystander.await.expect("bystander panicked");
    // And the server still takes new connections.
    let after = server.client().await;
    assert_eq!(
        after
            .request("GET", "/ok", None)
            .await
            .expect("server still serves")
            .body,
        b"ok"
    );
    (res, took, answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_is_cut_off_while_other_connections_keep_being_answered() {
    init_tracing();
    let limits = PluginLimits {
        call_deadline: Duration::from_millis(300),
        ..Default::default()
    };
    let (res, took, answered) = misbehaving_request("/loop", limits).await;
    let err = res.expect_err("the looping request fails");
    assert!(err.contains("closed") || err.contains("reset"), "{err}");
    assert!(
        took < Duration::from_secs(3),
        "cut off after {took:?}, deadline 300 ms"
    );
    assert!(
        answered > 0,
        "the other connection got no answer during the loop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_sleeps_is_cut_off_by_the_wall_clock() {
    init_tracing();
    // Sleeping uses no CPU, so only the wall-clock limit can end it.
    let limits = PluginLimits {
        call_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let (res, took, answered) = misbehaving_request("/sleep", limits).await;
    let err = res.expect_err("the sleeping request fails");
    assert!(err.contains("closed") || err.contains("reset"), "{err}");
    assert!(
        took < Duration::from_secs(3),
        "cut off after {took:?}, limit 300 ms"
    );
    assert!(answered > 0, "the other connection got no answer meanwhile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_fails_at_the_cap() {
    init_tracing();
    let limits = PluginLimits {
        memory_bytes: 16 << 20,
        ..Default::default()
    };
    let (res, _, answered) = misbehaving_request("/bomb", limits).await;
    res.expect_err("the bomb's request fails");
    assert!(answered > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_ends_only_its_connection() {
    init_tracing();
    let (res, _, answered) = misbehaving_request("/panic", PluginLimits::default()).await;
    res.expect_err("the panicking request fails");
    assert!(answered > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_past_the_stack_traps_and_ends_only_its_connection() {
    init_tracing();
    // The example plugins are built with a 128 KiB stack (.cargo/config.toml)
    // placed below their data: 1,000 frames of 1 KiB run past it, below
    // address 0, and trap; nothing else in the instance is overwritten.
    let (res, _, answered) = misbehaving_request("/deep/1000", PluginLimits::default()).await;
    res.expect_err("the request that overflows its stack fails");
    assert!(answered > 0);
    // 64 frames fit.
    let server = PluginServer::start("misbehave", PluginLimits::default()).await;
    let r = server.client().await.request("GET", "/deep/64", None).await;
    assert_eq!(r.expect("64 KiB of stack fits").body, b"deep 64");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_output_is_bounded_and_never_fatal() {
    init_tracing();
    // 1 MiB of stdout in one call against a 64 KiB window: the oldest
    // output is dropped (and the log says so); the request is answered.
    let (res, _, answered) = misbehaving_request("/output", PluginLimits::default()).await;
    let r = res.expect("printing past the window is not fatal");
    assert_eq!(r.body, b"printed");
    assert!(answered > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_logs_every_request_keeps_its_connection() {
    init_tracing();
    // 1 KiB logged per request: with a lifetime cap of 64 KiB this
    // connection used to die after about 64 requests.
    let server = PluginServer::start("misbehave", PluginLimits::default()).await;
    let client = server.client().await;
    for i in 0..10_000 {
        let r = client
            .request("GET", "/log", None)
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.body, b"logged", "request {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_out_of_reach_without_a_grant() {
    init_tracing();
    let server = PluginServer::start("misbehave", PluginLimits::default()).await;
    let client = server.client().await;
    let r = client
        .request("GET", "/file/etc/hostname", None)
        .await
        .expect("answered");
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.starts_with("error:"), "the plugin read a file: {body}");
    let r = client.request("GET", "/env/HOME", None).await.unwrap();
    assert_eq!(r.body, b"unset", "the host's environment leaked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granted_directories_and_environment_are_visible_read_only() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "granted content").unwrap();
    let grants = tq_host::plugin::PluginGrants {
        dirs: vec![format!("{}::/data", dir.path().display()).parse().unwrap()],
        env: vec![("GREETING".into(), "hi".into())],
        ..Default::default()
    };
    let server =
        PluginServer::start_with_grants("misbehave", PluginLimits::default(), grants).await;
    let client = server.client().await;
    let r = client
        .request("GET", "/file/data/hello.txt", None)
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&r.body), "read: granted content");
    // Only the granted directory: the rest of the host stays out of reach.
    let r = client
        .request("GET", "/file/etc/hostname", None)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&r.body).starts_with("error:"));
    let r = client.request("GET", "/env/GREETING", None).await.unwrap();
    assert_eq!(r.body, b"hi");
}

#[test]
fn files_that_are_not_plugins_are_refused_with_the_worlds_named() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm at all").unwrap();
    let err = tq_host::plugin::Plugin::load(&junk, PluginLimits::default()).unwrap_err();
    assert!(
        format!("{err:#}").contains("is not a WebAssembly file"),
        "{err:#}"
    );

    // A core module (the 8-byte header of an empty one).
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let err = tq_host::plugin::Plugin::load(&core, PluginLimits::default()).unwrap_err();
    assert!(format!("{err:#}").contains("not a component"), "{err:#}");
    assert!(
        format!("{err:#}").contains("tq:plugin/http3-app"),
        "{err:#}"
    );

    // A valid component that implements no world of ours (an empty one).
    let empty = dir.path().join("empty.wasm");
    std::fs::write(&empty, b"\0asm\x0d\0\x01\0").unwrap();
    let err = tq_host::plugin::Plugin::load(&empty, PluginLimits::default()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("implements none of the worlds") && msg.contains("tq:plugin/http3-app"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clock_plugin_answers_after_its_timers_and_keeps_per_connection_state() {
    init_tracing();
    let server = PluginServer::start("clock", PluginLimits::default()).await;
    let client = Arc::new(server.client().await);
    let started = Instant::now();
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { client.request("GET", "/after/400", None).await })
    };
    let fast = {
        let client = client.clone();
        tokio::spawn(async move { client.request("GET", "/after/100", None).await })
    };
    // While both wait, the plugin still answers: it never blocks.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let visits = client.request("GET", "/visits", None).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&visits.body),
        "3 requests, 2 waiting\n"
    );

    let fast = fast.await.unwrap().expect("fast timer");
    let fast_at = started.elapsed();
    assert_eq!(String::from_utf8_lossy(&fast.body), "waited 100 ms\n");
    let slow = slow.await.unwrap().expect("slow timer");
    let slow_at = started.elapsed();
    assert_eq!(String::from_utf8_lossy(&slow.body), "waited 400 ms\n");
    assert!(
        fast_at >= Duration::from_millis(100) && fast_at < Duration::from_millis(390),
        "{fast_at:?}"
    );
    assert!(
        slow_at >= Duration::from_millis(400) && slow_at < Duration::from_secs(3),
        "{slow_at:?}"
    );

    // Another connection has its own state.
    let other = server.client().await;
    let v = other.request("GET", "/visits", None).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&v.body), "1 requests, 0 waiting\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echo_to_a_slow_reader_is_paced_by_back_pressure_not_plugin_memory() {
    init_tracing();
    // 16 MiB of plugin memory against a 48 MiB echo read slowly: without
    // back-pressure into the request body, the plugin would have to hold
    // most of it and hit its cap.
    let limits = PluginLimits {
        memory_bytes: 16 << 20,
        ..Default::default()
    };
    let server = PluginServer::start("hello", limits).await;
    let client = server.client().await;
    let data = Bytes::from(payload(48 << 20, 5));
    let stream = client
        .handle()
        .send_request(tq_e2e::request_head("POST", "/echo"), true)
        .await
        .expect("request");
    let body = stream.body.expect("body sender");
    let upload = {
        let data = data.clone();
        tokio::spawn(async move {
            let mut rest = data;
            while !rest.is_empty() {
                let chunk = rest.split_to(rest.len().min(64 * 1024));
                let fin = rest.is_empty();
                body.send_body(chunk, fin).await.expect("upload");
            }
        })
    };
    let mut rx = stream.response;
    let mut got = Vec::with_capacity(data.len());
    let mut chunks = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("progress")
        {
            Some(tq_host::http3::InboundFrame::Body(b)) => {
                got.extend_from_slice(&b);
                chunks += 1;
                if chunks.is_multiple_of(8) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Some(tq_host::http3::InboundFrame::Headers(_)) => {}
            Some(tq_host::http3::InboundFrame::Finished) => break,
            Some(tq_host::http3::InboundFrame::Reset(c)) => {
                panic!("echo reset with {c:#x} (plugin out of memory?)")
            }
            None => panic!("connection closed mid-echo (plugin out of memory?)"),
        }
    }
    upload.await.unwrap();
    assert_eq!(got.len(), data.len());
    assert_eq!(sha256(&got), sha256(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_uploads_echo_through_the_plugin_one_after_another() {
    init_tracing();
    // The plugin streams each body back as it arrives; a response that is
    // blocked holds the upload back, so nothing piles up in the plugin.
    let server = PluginServer::start("hello", PluginLimits::default()).await;
    let client = server.client().await;
    let data = Bytes::from(payload(16 << 20, 3));
    for i in 0..4 {
        let r = client
            .request("POST", "/echo", Some(data.clone()))
            .await
            .unwrap_or_else(|e| panic!("echo #{i}: {e}"));
        assert_eq!(r.status, 200);
        assert_eq!(sha256(&r.body), sha256(&data), "echo #{i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_arguments_get_errors_and_nothing_else_is_disturbed() {
    init_tracing();
    let limits = PluginLimits {
        // Room for the plugin's own 64 MiB header and body.
        memory_bytes: 256 << 20,
        call_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let server = PluginServer::start("misbehave", limits).await;
    let bystander = server.client().await;
    let ok = |r: Result<tq_host::http3::Response, tq_host::http3::H3Error>| {
        let r = r.expect("a well-behaved connection keeps being answered");
        assert_eq!(r.body, b"ok");
    };
    let text = |r: tq_host::http3::Response| String::from_utf8_lossy(&r.body).into_owned();
    let hostile = server.client().await;

    // Made-up streams and codes no QUIC frame can carry: refused, never a
    // panic, and nothing queued for them.
    let r = hostile
        .request("GET", "/codes", None)
        .await
        .expect("/codes");
    assert_eq!(text(r), "accepted 0 refused 100004");
    ok(bystander.request("GET", "/ok", None).await);

    // A 64 MiB header section: invalid-argument.
    let r = hostile
        .request("GET", "/big-head", None)
        .await
        .expect("/big-head");
    let answer = text(r);
    assert!(answer.contains("invalid-argument"), "{answer}");

    // A 64 MiB body chunk in one call: 64 KiB taken, the rest left to the
    // plugin.
    let r = hostile
        .request("GET", "/big-body", None)
        .await
        .expect("/big-body");
    let tail = b"accepted Ok(65536)";
    assert_eq!(r.body.len(), 65536 + tail.len());
    assert!(
        r.body.ends_with(tail),
        "{:?}",
        String::from_utf8_lossy(&r.body[65536..])
    );
    ok(bystander.request("GET", "/ok", None).await);

    // A plugin that asks to be woken at once, every time: one tick per
    // millisecond at most, and the others are served as before.
    let spinner = server.client().await;
    let started = Instant::now();
    let r = spinner
        .request("GET", "/spin-timer", None)
        .await
        .expect("/spin-timer");
    assert_eq!(r.body, b"spinning");
    for _ in 0..50 {
        ok(bystander.request("GET", "/ok", None).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = spinner
        .request("GET", "/timer-count", None)
        .await
        .expect("/timer-count");
    let elapsed = started.elapsed();
    let ticks: u128 = text(r).parse().expect("a count");
    println!("a spinning timer: {ticks} timer events in {elapsed:?}");
    assert!(ticks > 0, "the timer never fired");
    assert!(
        ticks <= elapsed.as_millis() + 10,
        "{ticks} timer events in {elapsed:?}: more than one per millisecond"
    );

    // Sleeping in on-close: cut at the call timeout.
    let sleeper = server.client().await;
    let r = sleeper
        .request("GET", "/sleep-on-close", None)
        .await
        .expect("/sleep-on-close");
    assert_eq!(r.body, b"will sleep");
    sleeper.handle().close(tq_host::http3::H3_NO_ERROR, "bye");
    drop(sleeper);

    // close(u64::MAX, 1 MiB of reason): the connection closes with an
    // internal error, the process does not.
    let closer = server.client().await;
    let err = closer
        .request("GET", "/close-max", None)
        .await
        .expect_err("the connection closes");
    println!("close-max: {err}");
    tokio::time::timeout(Duration::from_secs(5), closer.connection().closed())
        .await
        .expect("the closed connection ends");
    ok(bystander.request("GET", "/ok", None).await);
    ok(server.client().await.request("GET", "/ok", None).await);

    // And the server shuts down promptly, the spinner still connected.
    drop(hostile);
    let took = server
        .shut_down(Duration::from_secs(8))
        .await
        .expect("the server stops within 8 s");
    println!("shutdown with a spinning plugin connected: {took:?}");
    drop(spinner);
}

/// The pool holds `max_instances` plugin instances (one per connection): a
/// connection past it is closed, not left hanging (the log names
/// --plugin-instances), and the slot of a closed connection serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_instance_limit_are_closed_and_freed_slots_serve_again() {
    init_tracing();
    let limits = PluginLimits {
        max_instances: 2,
        ..PluginLimits::default()
    };
    let server = PluginServer::start("hello", limits).await;
    let one = || async {
        let mut c = tq_e2e::H3QuinnClient::connect(server.addr, &server.cert.cert).await?;
        let r = c.request("GET", "/", None).await?;
        anyhow::Ok((c, r.0))
    };
    let mut held = Vec::new();
    for _ in 0..2 {
        let (c, status) = one().await.expect("within the limit");
        assert_eq!(status, 200);
        held.push(c);
    }
    let third = tokio::time::timeout(Duration::from_secs(10), one())
        .await
        .expect("the third connection is closed, not left hanging");
    assert!(
        third.is_err(),
        "a third instance was served: {:?}",
        third.map(|r| r.1)
    );

    let first = held.remove(0);
    first.endpoint.close(0u32.into(), b"done");
    first.endpoint.wait_idle().await;
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout(Duration::from_secs(5), one()).await {
            Ok(Ok((_, 200))) => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!(
                "a freed slot never served again: {:?}",
                other.map(|r| r.map(|x| x.1))
            ),
        }
    }
}
