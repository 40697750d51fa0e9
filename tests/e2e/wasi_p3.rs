//! WASI 0.3 `wasi:http/service` components (async `handle`, `stream<u8>`
//! bodies) served over HTTP/3: detected by their export, served with
//! streaming bodies both ways, a panic answers 500 for its request only,
//! and a response the client abandons ends the guest's work.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tq_e2e::{init_tracing, payload, sha256, H3QuinnClient, PluginServer};
use tq_host::http3::{InboundFrame, NameValue};
use tq_host::plugin::{Plugin, PluginLimits, World};

const PLUGIN: &str = "wasi_p3_hello";
const HELLO: &[u8] = b"hello from a WASI 0.3 component\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasi_0_3_component_is_detected_and_streams_both_ways() {
    init_tracing();
    let plugin = Plugin::load(&tq_e2e::plugin_path(PLUGIN), PluginLimits::default())
        .expect("a WASI 0.3 component loads");
    assert_eq!(plugin.world(), World::WasiHttpService);
    assert_eq!(plugin.world().to_string(), "wasi:http/service@0.3");
    plugin.validate().await.expect("it validates");

    let server = PluginServer::start(PLUGIN, PluginLimits::default()).await;
    let client = server.client().await;
    let r = client.request("GET", "/", None).await.expect("GET /");
    assert_eq!((r.status, r.body.as_slice()), (200, HELLO));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    // Copied through the guest chunk by chunk, and handed over as a stream.
    for route in ["/echo", "/forward"] {
        for size in [0usize, 1, 100_000, 1 << 20, 4 << 20] {
            let data = Bytes::from(payload(size, size as u64 + 7));
            let r = client
                .request("POST", route, Some(data.clone()))
                .await
                .unwrap_or_else(|e| panic!("{route} of {size} bytes: {e}"));
            assert_eq!(r.status, 200, "{route} of {size} bytes");
            assert_eq!(r.body.len(), size, "{route} of {size} bytes");
            assert_eq!(sha256(&r.body), sha256(&data), "{route} of {size} bytes");
        }
    }
    let r = client.request("GET", "/bytes/1000000", None).await.unwrap();
    assert_eq!(r.body.len(), 1_000_000);
    assert_eq!(r.header("content-length"), Some("1000000"));
    assert!(r.body.iter().all(|b| *b == b'x'));
    let r = client.request("GET", "/nope", None).await.unwrap();
    assert_eq!(r.status, 404);

    // An independent HTTP/3 stack agrees.
    let mut quinn = H3QuinnClient::connect(server.addr, &server.cert.cert)
        .await
        .expect("h3-quinn connects");
    let (status, body, _) = quinn.request("GET", "/", None).await.unwrap();
    assert_eq!((status, body.as_slice()), (200, HELLO));
    let data = Bytes::from(payload(1 << 20, 3));
    let (status, body, _) = quinn
        .request("POST", "/echo", Some(data.clone()))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(sha256(&body), sha256(&data));
    assert_eq!(server.plugin.requests_in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_requests_over_four_connections_with_a_panic_among_them() {
    init_tracing();
    let server = PluginServer::start(PLUGIN, PluginLimits::default()).await;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..4u64 {
        let client = Arc::new(server.client().await);
        for i in 0..50u64 {
            let client = client.clone();
            tasks.spawn(async move {
                let n = c * 50 + i;
                let (path, body) = match n % 5 {
                    0 => ("/echo", Some(Bytes::from(payload(64 << 10, n)))),
                    1 => ("/slow", None),
                    _ if n == 77 => ("/panic", None),
                    _ => ("/", None),
                };
                let r = client.request(
                    if body.is_some() { "POST" } else { "GET" },
                    path,
                    body.clone(),
                );
                let r = r
                    .await
                    .unwrap_or_else(|e| panic!("request {n} {path}: {e}"));
                (n, path, body, r)
            });
        }
    }
    let mut answered = 0;
    while let Some(r) = tasks.join_next().await {
        let (n, path, sent, r) = r.unwrap();
        match path {
            "/panic" => {
                assert_eq!(r.status, 500);
                let body = String::from_utf8_lossy(&r.body);
                assert!(body.contains("panic"), "{body}");
            }
            "/echo" => {
                assert_eq!(r.status, 200, "request {n}");
                assert_eq!(sha256(&r.body), sha256(&sent.unwrap()), "request {n}");
            }
            "/slow" => assert_eq!((r.status, r.body.as_slice()), (200, &b"waited\n"[..])),
            _ => assert_eq!((r.status, r.body.as_slice()), (200, HELLO), "request {n}"),
        }
        answered += 1;
    }
    assert_eq!(answered, 200);
    assert_eq!(server.plugin.requests_in_flight(), 0);
    // The connections go on after the panic.
    let client = server.client().await;
    assert_eq!(client.request("GET", "/", None).await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_larger_than_the_guest_memory_streams_and_ends_when_abandoned() {
    init_tracing();
    // 1 GiB through a guest allowed 64 MiB of memory: it can only arrive
    // if it streams.
    let server = PluginServer::start(PLUGIN, PluginLimits::default()).await;
    let client = server.client().await;
    let stream = client
        .handle()
        .send_request(tq_e2e::request_head("GET", "/bytes/1073741824"), false)
        .await
        .expect("request sent");
    let mut rx = stream.response;
    let mut got = 0usize;
    let mut head = None;
    while got < 8 << 20 {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(InboundFrame::Headers(h))) => head = Some(h),
            Ok(Some(InboundFrame::Body(b))) => got += b.len(),
            other => panic!("the response stopped after {got} bytes: {other:?}"),
        }
    }
    let head = head.expect("a head before the body");
    let status = head
        .iter()
        .find(|h| h.name() == b":status")
        .map(|h| h.value().to_vec());
    assert_eq!(status.as_deref(), Some(&b"200"[..]));
    assert_eq!(server.plugin.requests_in_flight(), 1);
    // The client walks away: the guest's work ends with the request.
    drop(rx);
    tokio::time::timeout(Duration::from_secs(10), async {
        while server.plugin.requests_in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the abandoned request ended");
    assert_eq!(client.request("GET", "/", None).await.unwrap().status, 200);
}
