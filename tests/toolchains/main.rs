//! Components from other toolchains than Rust, served with the default
//! limits: a Python wasi:http handler built by componentize-py and a
//! JavaScript one built by ComponentizeJS (scripts/build-components.sh
//! builds both). Each answers GET, echoes a 1 MiB POST byte-exact, and
//! serves 200 requests over several connections, with our client and an
//! independent one (h3 over quinn).
//!
//! A test binary of its own: compiling an 18 MB component takes seconds of
//! both cores, and test binaries run one after another, so this does not
//! overlap the end-to-end tests that measure latencies.

use std::sync::Arc;

use bytes::Bytes;
use tq_e2e::{component_path, payload, H3QuinnClient, PluginServer};
use tq_host::plugin::{PluginGrants, PluginLimits, World};

async fn serves(name: &str, greeting: &str) {
    let server = PluginServer::start_file(
        &component_path(name),
        PluginLimits::default(),
        PluginGrants::default(),
    )
    .await;
    assert_eq!(server.plugin.world(), World::WasiHttp, "{name}");

    let client = server.client().await;
    let r = client.request("GET", "/", None).await.expect("GET /");
    assert_eq!(r.status, 200, "{name}");
    assert_eq!(String::from_utf8_lossy(&r.body), greeting, "{name}");

    let body = payload(1 << 20, 7);
    let r = client
        .request("POST", "/echo", Some(Bytes::from(body.clone())))
        .await
        .expect("POST /echo");
    assert_eq!(r.status, 200, "{name}");
    assert!(
        r.body == body,
        "{name}: 1 MiB echo differs ({} bytes back)",
        r.body.len()
    );
    let r = client
        .request("GET", "/nope", None)
        .await
        .expect("GET /nope");
    assert_eq!(r.status, 404, "{name}");

    // 200 requests: 4 connections of ours, 50 each, 8 at a time, half of
    // them small echoes.
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..4 {
        let client = Arc::new(server.client().await);
        for w in 0..8usize {
            let client = client.clone();
            let n = 50 / 8 + usize::from(w < 50 % 8);
            tasks.spawn(async move {
                for i in 0..n {
                    if (c + w + i) % 2 == 0 {
                        let r = client.request("GET", "/", None).await.expect("GET");
                        assert_eq!(r.status, 200);
                    } else {
                        let b = format!("echo {c} {w} {i}").into_bytes();
                        let r = client
                            .request("POST", "/echo", Some(Bytes::from(b.clone())))
                            .await
                            .expect("echo");
                        assert_eq!((r.status, r.body), (200, b));
                    }
                }
                n
            });
        }
    }
    let mut done = 0;
    while let Some(n) = tasks.join_next().await {
        done += n.expect("a request task failed");
    }
    assert_eq!(done, 200, "{name}");

    // An independent client too.
    let mut q = H3QuinnClient::connect(server.addr, &server.cert.cert)
        .await
        .expect("quinn connects");
    let (status, body, _) = q.request("GET", "/", None).await.expect("quinn GET");
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (200, greeting)
    );
}

#[tokio::test]
async fn a_python_component_built_by_componentize_py_serves_with_the_defaults() {
    serves("python", "hello from a Python wasi:http component\n").await;
}

#[tokio::test]
async fn a_javascript_component_built_by_componentize_js_serves_with_the_defaults() {
    serves("js", "hello from a JavaScript wasi:http component\n").await;
}
