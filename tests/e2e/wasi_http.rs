//! Standard `wasi:http/proxy` components served over HTTP/3: a component
//! written against the upstream bindings answers GET and POST (to our client
//! and to h3 + h3-quinn), a trap answers 500 for its request only, and
//! outgoing requests need a grant.

use std::time::Duration;

use bytes::Bytes;
use tq_e2e::{init_tracing, payload, sha256, H3QuinnClient, PluginServer};
use tq_host::plugin::{PluginGrants, PluginLimits};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standard_wasi_http_component_answers_get_and_post() {
    init_tracing();
    let server = PluginServer::start("wasi_hello", PluginLimits::default()).await;
    let client = server.client().await;
    let r = client.request("GET", "/", None).await.expect("GET /");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"hello from a wasi:http component\n"[..])
    );
    assert_eq!(r.header("content-type"), Some("text/plain"));
    for size in [0usize, 1, 100_000, 4 << 20] {
        let data = Bytes::from(payload(size, size as u64));
        let r = client
            .request("POST", "/echo", Some(data.clone()))
            .await
            .unwrap_or_else(|e| panic!("echo {size}: {e}"));
        assert_eq!(r.status, 200);
        assert_eq!(sha256(&r.body), sha256(&data), "echo of {size} bytes");
    }
    let r = client.request("GET", "/bytes/1000000", None).await.unwrap();
    assert_eq!(r.body.len(), 1_000_000);
    assert_eq!(r.header("content-length"), Some("1000000"));
    tq_e2e::assert_discards(&client, &[0, 3 << 20]).await;
    let r = client.request("GET", "/nope", None).await.unwrap();
    assert_eq!(r.status, 404);

    // An independent HTTP/3 stack agrees.
    let mut quinn = H3QuinnClient::connect(server.addr, &server.cert.cert)
        .await
        .expect("h3-quinn connects");
    let (status, body, _) = quinn.request("GET", "/", None).await.unwrap();
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"hello from a wasi:http component\n"[..])
    );
    let data = Bytes::from(payload(1 << 20, 9));
    let (status, body, _) = quinn
        .request("POST", "/echo", Some(data.clone()))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(sha256(&body), sha256(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_answers_500_for_its_request_while_others_on_the_connection_succeed() {
    init_tracing();
    let server = PluginServer::start("wasi_hello", PluginLimits::default()).await;
    let client = std::sync::Arc::new(server.client().await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let client = client.clone();
        tasks.spawn(async move {
            let path = if i == 10 { "/panic" } else { "/" };
            (
                path,
                client.request("GET", path, None).await.expect("answered"),
            )
        });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        let (path, r) = r.unwrap();
        if path == "/panic" {
            assert_eq!(r.status, 500);
            let body = String::from_utf8_lossy(&r.body);
            assert!(body.contains("panic"), "{body}");
        } else {
            assert_eq!(r.status, 200);
            ok += 1;
        }
    }
    assert_eq!(ok, 19);
    // The connection goes on.
    assert_eq!(client.request("GET", "/", None).await.unwrap().status, 200);
}

/// A one-route HTTP/1.1 server on loopback: answers `hello` to anything.
async fn http1_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    http1_server_after(Duration::ZERO).await
}

/// As [`http1_server`], answering each request only after `delay`.
async fn http1_server_after(
    delay: Duration,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                tokio::time::sleep(delay).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
                    )
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_requests_are_refused_without_a_grant_and_pass_with_one() {
    init_tracing();
    let (target, _http) = http1_server().await;
    let path = format!("/fetch?http://{target}/");

    let server = PluginServer::start("wasi_hello", PluginLimits::default()).await;
    let r = server
        .client()
        .await
        .request("GET", &path, None)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "refused: ErrorCode::HttpRequestDenied"
    );

    let grants = PluginGrants {
        http_hosts: vec![target.to_string()],
        ..Default::default()
    };
    let server =
        PluginServer::start_with_grants("wasi_hello", PluginLimits::default(), grants).await;
    let r = server
        .client()
        .await
        .request("GET", &path, None)
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&r.body), "fetched 200: hello");
    // Only that destination: another port is still refused.
    let other = format!("/fetch?http://127.0.0.1:{}/", target.port() + 1);
    let r = server
        .client()
        .await
        .request("GET", &other, None)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&r.body).starts_with("refused:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outgoing_fan_out_is_capped_at_16_in_flight_per_instance() {
    init_tracing();
    // Answers late, so every request the guest starts is still in flight
    // when it starts the next.
    let (target, _http) = http1_server_after(Duration::from_millis(500)).await;
    let grants = PluginGrants {
        http_hosts: vec![target.to_string()],
        ..Default::default()
    };
    let server =
        PluginServer::start_with_grants("wasi_fanout", PluginLimits::default(), grants).await;
    let client = server.client().await;
    let r = client
        .request("GET", &format!("/fanout?100&{target}"), None)
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&r.body), "ok 16 limited 84 other 0");
    // The next request (a fresh instance) has its own 16.
    let r = client
        .request("GET", &format!("/fanout?20&{target}"), None)
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&r.body), "ok 16 limited 4 other 0");
    // Meanwhile other requests are served.
    assert_eq!(
        client.request("GET", "/fanout", None).await.unwrap().status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_name_reaches_internal_addresses_only_when_allowed() {
    init_tracing();
    let (target, _http) = http1_server().await;
    // `localhost` is a name: what it resolves to (loopback) is checked, as
    // it would be for a public name re-pointed at an internal address.
    let path = format!("/fetch?http://localhost:{}/", target.port());
    let grants = PluginGrants {
        http_hosts: vec![format!("localhost:{}", target.port())],
        ..Default::default()
    };
    let server =
        PluginServer::start_with_grants("wasi_hello", PluginLimits::default(), grants.clone())
            .await;
    let r = server
        .client()
        .await
        .request("GET", &path, None)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "refused: ErrorCode::DestinationIpProhibited"
    );
    let grants = PluginGrants {
        http_private: true,
        ..grants
    };
    let server =
        PluginServer::start_with_grants("wasi_hello", PluginLimits::default(), grants).await;
    let r = server
        .client()
        .await
        .request("GET", &path, None)
        .await
        .unwrap();
    // `localhost` may resolve to ::1 first: nothing listens there, then
    // 127.0.0.1 answers.
    assert_eq!(String::from_utf8_lossy(&r.body), "fetched 200: hello");
}

#[test]
fn the_example_components_start_small() {
    // Built with a 128 KiB stack (the repository's .cargo/config.toml)
    // instead of Rust's 1 MiB: 3 pages of 64 KiB, not 17. A fresh instance
    // per request resets all of it, so this is most of that cost.
    for name in ["wasi_hello", "hello", "sdk_http"] {
        let path = tq_e2e::plugin_path(name);
        let plugin = tq_host::plugin::Plugin::load(&path, PluginLimits::default()).unwrap();
        let kib = plugin.initial_memory_bytes() >> 10;
        assert!((64..=256).contains(&kib), "{name} starts with {kib} KiB");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tq_sdk_http_handler_is_a_standard_wasi_http_component() {
    init_tracing();
    let path = tq_e2e::plugin_path("sdk_http");
    let plugin = tq_host::plugin::Plugin::load(&path, PluginLimits::default()).unwrap();
    assert_eq!(plugin.world(), tq_host::plugin::World::WasiHttp);
    let server = PluginServer::start("sdk_http", PluginLimits::default()).await;
    let client = server.client().await;
    let r = client.request("GET", "/", None).await.unwrap();
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"hello from tq-sdk over wasi:http\n"[..])
    );
    let data = Bytes::from(payload(2 << 20, 4));
    let r = client
        .request("POST", "/upper", Some(data.clone()))
        .await
        .unwrap();
    assert_eq!(sha256(&r.body), sha256(&data.to_ascii_uppercase()));
    let r = client.request("GET", "/count/100000", None).await.unwrap();
    let text = String::from_utf8(r.body).unwrap();
    assert_eq!(text.lines().count(), 100_000);
    assert_eq!(text.lines().last(), Some("100000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_fresh_per_request_unless_reuse_is_asked_for() {
    init_tracing();
    let fresh = PluginServer::start("wasi_hello", PluginLimits::default()).await;
    let client = fresh.client().await;
    for _ in 0..3 {
        let r = client.request("GET", "/count", None).await.unwrap();
        assert_eq!(r.body, b"request 1 on this instance\n");
    }

    // Reuse 2: an instance serves three requests in a row, then a new one
    // takes over; a trap retires its instance.
    let limits = PluginLimits {
        reuse_instances: 2,
        ..Default::default()
    };
    let reused = PluginServer::start("wasi_hello", limits).await;
    let client = reused.client().await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = client.request("GET", "/count", None).await.unwrap();
        seen.push(String::from_utf8(r.body).unwrap());
    }
    assert_eq!(
        seen,
        [1, 2, 3, 1].map(|n| format!("request {n} on this instance\n"))
    );
    assert_eq!(
        client.request("GET", "/panic", None).await.unwrap().status,
        500
    );
    let r = client.request("GET", "/count", None).await.unwrap();
    // The panic took the pooled instance (which had served one) and it is
    // gone: a fresh one answers.
    assert_eq!(
        r.body, b"request 1 on this instance\n",
        "a trapped instance was reused"
    );
}
