//! Plugin runtime benchmarks. Prints figures; asserts nothing.
//!
//! - hook-call overhead: one `wait-for-data` call into the hello plugin;
//! - instantiation per connection;
//! - resident memory per idle connection, with the plugin and natively;
//! - requests/s of `GET /` from the hello plugin and from the same handler
//!   written natively, in the same run (10 connections x 16 in flight);
//! - the same with a standard wasi:http component (instance per request),
//!   WASI 0.2 (fresh and reused instances) and WASI 0.3 (fresh);
//! - raw QUIC: echo of 64 MiB on one stream through the echo plugin and
//!   through the native `EchoApplication`, in the same run.
//!
//! Needs the plugins built (`bash scripts/build-plugins.sh`). Run:
//! `cargo bench -p tq-e2e --bench plugin`

use std::sync::Arc;
use std::time::Instant;

use tq_e2e::{
    echo_with_our_client, payload, plugin_path, rss_kib, H3App, H3TestServer, PluginServer,
    QuicPluginServer, TestServer,
};
use tq_host::http3::{H3Client, Http3Settings, RequestBody, RequestHandler, ResponseBody};
use tq_host::plugin::{Plugin, PluginLimits};
use tq_host::quic::QuicSettings;

/// The hello plugin's `GET /`, natively.
struct NativeHello;

impl RequestHandler for NativeHello {
    async fn handle(&self, _req: http::Request<RequestBody>) -> http::Response<ResponseBody> {
        let mut r = http::Response::new(ResponseBody::from("hello from a tq-host plugin\n"));
        r.headers_mut()
            .insert("content-type", http::HeaderValue::from_static("text/plain"));
        r
    }
}

async fn requests_per_second(
    clients: &[Arc<H3Client>],
    total: usize,
    expect: &'static [u8],
) -> f64 {
    const IN_FLIGHT: usize = 16;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let per = total / (clients.len() * IN_FLIGHT);
    for c in clients {
        for _ in 0..IN_FLIGHT {
            let c = c.clone();
            tasks.spawn(async move {
                for _ in 0..per {
                    let r = c.request("GET", "/", None).await.expect("GET /");
                    assert_eq!(r.body, expect);
                }
            });
        }
    }
    while tasks.join_next().await.is_some() {}
    (per * clients.len() * IN_FLIGHT) as f64 / start.elapsed().as_secs_f64()
}

async fn connect_many(
    addr: std::net::SocketAddr,
    params: &tq_host::quic::ConnectionParams,
    n: usize,
) -> Vec<Arc<H3Client>> {
    let connector =
        tq_host::quic::Connector::new(params.clone(), tq_host::metrics::DefaultMetrics::default())
            .unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let c = H3Client::connect_with(&connector, addr, "localhost", Http3Settings::default())
            .await
            .expect("connect");
        // One request so the server side is fully set up (plugin instantiated).
        c.request("GET", "/", None).await.expect("first request");
        out.push(Arc::new(c));
    }
    out
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // The sandbox's per-component slots, sized for other toolchains
        // (the default), against the smaller shape sized for Rust
        // components only: what larger limits cost each instantiation.
        let small = PluginLimits {
            component: tq_host::plugin::ComponentLimits { core_instances: 8, memories: 2, tables: 8, table_elements: 20_000 },
            ..PluginLimits::default()
        };
        for (what, limits) in [("default limits", PluginLimits::default()), ("Rust-sized limits (8 core instances, 2 memories, 8 tables)", small)] {
            let plugin = Plugin::load(&plugin_path("hello"), limits).expect("hello loads");
            let (inst, call) = plugin.measure_overheads(2000).await.expect("measure");
            println!("hello plugin, {what}: instantiation {:.1} us per connection, hook call (wait-for-data) {} ns", inst.as_secs_f64() * 1e6, call.as_nanos());
        }

        const IDLE: usize = 200;
        let native = H3TestServer::start(QuicSettings::default(), Http3Settings::default(), H3App::Handler(Arc::new(NativeHello))).await;
        let wasm = PluginServer::start("hello", PluginLimits::default()).await;
        let native_params = native.client_params();
        let wasm_params = tq_host::quic::ConnectionParams::new_client(QuicSettings::default()).ca_file(&wasm.cert.paths.cert);

        let before = rss_kib();
        let native_idle = connect_many(native.addr, &native_params, IDLE).await;
        let mid = rss_kib();
        let wasm_idle = connect_many(wasm.addr, &wasm_params, IDLE).await;
        let after = rss_kib();
        println!(
            "resident memory per idle connection (client and server side, one process): native {:.0} KiB, plugin {:.0} KiB",
            (mid - before) as f64 / IDLE as f64,
            (after - mid) as f64 / IDLE as f64
        );
        drop(native_idle);
        drop(wasm_idle);

        let total = 20_000;
        let native_clients = connect_many(native.addr, &native_params, 10).await;
        let wasm_clients = connect_many(wasm.addr, &wasm_params, 10).await;
        const HELLO: &[u8] = b"hello from a tq-host plugin\n";
        let n = requests_per_second(&native_clients, total, HELLO).await;
        let w = requests_per_second(&wasm_clients, total, HELLO).await;
        // The same GET / from a standard wasi:http component: a fresh
        // instance per request.
        let wasi = PluginServer::start("wasi_hello", PluginLimits::default()).await;
        let wasi_params = tq_host::quic::ConnectionParams::new_client(QuicSettings::default()).ca_file(&wasi.cert.paths.cert);
        let wasi_clients = connect_many(wasi.addr, &wasi_params, 10).await;
        const WASI_HELLO: &[u8] = b"hello from a wasi:http component\n";
        let h = requests_per_second(&wasi_clients, total, WASI_HELLO).await;
        // And with instances reused for up to 100 requests each.
        let limits = PluginLimits { reuse_instances: 100, ..Default::default() };
        let reuse = PluginServer::start("wasi_hello", limits).await;
        let reuse_params = tq_host::quic::ConnectionParams::new_client(QuicSettings::default()).ca_file(&reuse.cert.paths.cert);
        let reuse_clients = connect_many(reuse.addr, &reuse_params, 10).await;
        let r = requests_per_second(&reuse_clients, total, WASI_HELLO).await;
        // A WASI 0.3 component (async `handle`, stream bodies), fresh
        // instance per request on an engine with concurrency support.
        let p3 = PluginServer::start("wasi_p3_hello", PluginLimits::default()).await;
        let p3_params = tq_host::quic::ConnectionParams::new_client(QuicSettings::default()).ca_file(&p3.cert.paths.cert);
        let p3_clients = connect_many(p3.addr, &p3_params, 10).await;
        let p = requests_per_second(&p3_clients, total, b"hello from a WASI 0.3 component\n").await;
        println!("GET / over 10 connections x 16 in flight: native {n:.0}, tq http3-app plugin {w:.0}, wasi:http 0.2 component {h:.0} (fresh instance per request) / {r:.0} (instances reused), wasi:http 0.3 component {p:.0} (fresh) requests/s");
        println!("GET / over 10 connections x 16 in flight: native {n:.0} requests/s, hello plugin {w:.0} requests/s ({:.0}%)", w / n * 100.0);

        // Request bodies through the plugin: POST /echo of 16 MiB, one at a
        // time on one connection, through the hello plugin (http3-app) and
        // the built-in site's native echo.
        let upload = bytes::Bytes::from(payload(16 << 20, 5));
        let page = H3TestServer::start(QuicSettings::default(), Http3Settings::default(), H3App::Handler(Arc::new(tq_host::builtin::WelcomePage))).await;
        let page_client = connect_many(page.addr, &page.client_params(), 1).await;
        let mut echo_rates = Vec::new();
        for client in [&page_client[0], &wasm_clients[0]] {
            let start = Instant::now();
            for _ in 0..4 {
                let r = client.request("POST", "/echo", Some(upload.clone())).await.expect("POST /echo");
                assert_eq!(r.body.len(), upload.len());
            }
            echo_rates.push((4 * upload.len()) as f64 / start.elapsed().as_secs_f64() / 1e6);
        }
        println!("HTTP/3 POST /echo, 16 MiB x 4 on one connection: native {:.0} MB/s, hello plugin {:.0} MB/s ({:.0}%)", echo_rates[0], echo_rates[1], echo_rates[1] / echo_rates[0] * 100.0);

        let mib = tq_e2e::bench_arg("--echo-mib", 64);
        let data = Arc::new(payload(mib << 20, 9));
        let native = TestServer::start(QuicSettings::default()).await;
        let native_params = native.client_params(QuicSettings::default());
        let raw = QuicPluginServer::start("echo", PluginLimits::default()).await;
        let raw_params = raw.client_params();
        let mut rates = Vec::new();
        for (addr, params) in [(native.addr, &native_params), (raw.addr, &raw_params)] {
            let start = Instant::now();
            let r = echo_with_our_client(addr, params, vec![data.clone()]).await.expect("echo");
            assert_eq!(r[0].len, data.len());
            rates.push((mib << 20) as f64 / start.elapsed().as_secs_f64() / 1e6);
        }
        println!("raw QUIC echo, 1 stream, {mib} MiB each way: native {:.0} MB/s, echo plugin {:.0} MB/s ({:.0}%)", rates[0], rates[1], rates[1] / rates[0] * 100.0);
    });
}
