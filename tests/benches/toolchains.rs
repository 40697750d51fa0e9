//! What a component costs by the toolchain that built it: Rust (WASI 0.2
//! and 0.3), Python (componentize-py) and JavaScript (ComponentizeJS), all
//! wasi:http handlers of `GET /`. For each: compile time cold (empty
//! compilation cache) and cached (the same bytes again), a fresh store and
//! instance (what every request pays before the guest runs), and requests/s
//! of `GET /` over 10 connections x 16 in flight, a fresh instance per
//! request and with instances reused for 100 requests (WASI 0.2 only).
//! Prints figures; asserts nothing.
//!
//! Needs the plugins and components built (`bash scripts/build-plugins.sh`,
//! `bash scripts/build-components.sh`). Run:
//! `cargo bench -p tq-e2e --bench toolchains`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tq_e2e::{component_path, plugin_path, PluginServer};
use tq_host::http3::{H3Client, Http3Settings};
use tq_host::plugin::{Plugin, PluginGrants, PluginLimits, World};
use tq_host::quic::{ConnectionParams, QuicSettings};

async fn requests_per_second(clients: &[Arc<H3Client>], total: usize, expect: &'static str) -> f64 {
    const IN_FLIGHT: usize = 16;
    let per = (total / (clients.len() * IN_FLIGHT)).max(1);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in clients {
        for _ in 0..IN_FLIGHT {
            let c = c.clone();
            tasks.spawn(async move {
                for _ in 0..per {
                    let r = c.request("GET", "/", None).await.expect("GET /");
                    assert_eq!(String::from_utf8_lossy(&r.body), expect);
                }
            });
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("a request task");
    }
    (per * clients.len() * IN_FLIGHT) as f64 / start.elapsed().as_secs_f64()
}

async fn serve_and_measure(
    path: &std::path::Path,
    limits: PluginLimits,
    total: usize,
    expect: &'static str,
) -> f64 {
    let server = PluginServer::start_file(path, limits, PluginGrants::default()).await;
    let params =
        ConnectionParams::new_client(QuicSettings::default()).ca_file(&server.cert.paths.cert);
    let connector =
        tq_host::quic::Connector::new(params, tq_host::metrics::DefaultMetrics::default())
            .expect("connector");
    let mut clients = Vec::new();
    for _ in 0..10 {
        let c = H3Client::connect_with(
            &connector,
            server.addr,
            "localhost",
            Http3Settings::default(),
        )
        .await
        .expect("connect");
        c.request("GET", "/", None).await.expect("first request");
        clients.push(Arc::new(c));
    }
    requests_per_second(&clients, total, expect).await
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cases: [(&str, PathBuf, &'static str); 4] = [
            ("Rust, WASI 0.2 (wasi-hello)", plugin_path("wasi_hello"), "hello from a wasi:http component\n"),
            ("Rust, WASI 0.3 (wasi-p3-hello)", plugin_path("wasi_p3_hello"), "hello from a WASI 0.3 component\n"),
            ("Python (componentize-py)", component_path("python"), "hello from a Python wasi:http component\n"),
            ("JavaScript (ComponentizeJS)", component_path("js"), "hello from a JavaScript wasi:http component\n"),
        ];
        println!("| component | size | compile cold | compile cached | fresh instance | GET / fresh | GET / reused x100 |");
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        for (what, path, expect) in cases {
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let cache = std::env::temp_dir().join(format!("tq-bench-cache-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&cache);
            let limits = PluginLimits { cache_dir: Some(cache.clone()), ..PluginLimits::default() };
            let t = Instant::now();
            let plugin = Plugin::load(&path, limits.clone()).expect("loads");
            let cold = t.elapsed();
            let t = Instant::now();
            let again = Plugin::load(&path, limits.clone()).expect("loads from the cache");
            let cached = t.elapsed();
            assert_eq!(again.compiled(), tq_host::plugin::Compiled::Cached, "{what}: not from the cache");
            let inst = plugin.measure_instantiation(200).await.expect("instantiates");
            let total = if inst > Duration::from_millis(1) { 2_000 } else { 20_000 };
            let fresh = serve_and_measure(&path, limits.clone(), total, expect).await;
            let reused = if plugin.world() == World::WasiHttp {
                let limits = PluginLimits { reuse_instances: 100, ..limits };
                format!("{:.0}/s", serve_and_measure(&path, limits, total, expect).await)
            } else {
                "-".into()
            };
            println!(
                "| {what} | {:.1} MB | {:.2} s | {:.0} ms | {:.0} us | {fresh:.0}/s | {reused} |",
                size as f64 / 1e6,
                cold.as_secs_f64(),
                cached.as_secs_f64() * 1e3,
                inst.as_secs_f64() * 1e6,
            );
            let _ = std::fs::remove_dir_all(&cache);
        }
    });
}
