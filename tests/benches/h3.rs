//! HTTP/3 benchmarks on loopback. Prints figures; asserts nothing.
//!
//! - small GETs: requests/s for `GET /` (a 250-byte page from the native
//!   handler) over 10 connections with 16 requests in flight on each;
//! - download: one connection, one `GET /bytes/N`, in MB/s.
//!
//! Run: `cargo bench -p tq-e2e --bench h3 [-- --requests 20000 --mib 512]`

use std::sync::Arc;
use std::time::Instant;

use tq_e2e::{H3App, H3TestServer};
use tq_host::builtin::WelcomePage;
use tq_host::http3::Http3Settings;
use tq_host::quic::QuicSettings;

async fn small_gets(server: &H3TestServer, total: usize) {
    const CONNS: usize = 10;
    const IN_FLIGHT: usize = 16;
    let mut clients = Vec::new();
    for _ in 0..CONNS {
        clients.push(Arc::new(server.client().await));
    }
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (c, client) in clients.iter().enumerate() {
        for w in 0..IN_FLIGHT {
            let client = client.clone();
            let n = total / (CONNS * IN_FLIGHT)
                + usize::from(c * IN_FLIGHT + w < total % (CONNS * IN_FLIGHT));
            tasks.spawn(async move {
                for _ in 0..n {
                    let r = client.request("GET", "/", None).await.expect("GET /");
                    assert_eq!(r.status, 200);
                }
                n
            });
        }
    }
    let mut done = 0;
    while let Some(n) = tasks.join_next().await {
        done += n.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "small GETs (native handler), {CONNS} connections x {IN_FLIGHT} in flight: {done} requests in {secs:.2} s = {:.0} requests/s",
        done as f64 / secs
    );
}

async fn download(server: &H3TestServer, mib: usize) {
    let client = server.client().await;
    let start = Instant::now();
    let r = client
        .request("GET", &format!("/bytes/{}", mib << 20), None)
        .await
        .expect("download");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(r.body.len(), mib << 20);
    println!(
        "download, 1 connection, 1 request: {mib} MiB in {secs:.2} s = {:.0} MB/s",
        (mib << 20) as f64 / secs / 1e6
    );
}

fn main() {
    let requests = tq_e2e::bench_arg("--requests", 20_000);
    let mib = tq_e2e::bench_arg("--mib", 512);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = H3TestServer::start(
            QuicSettings::default(),
            Http3Settings::default(),
            H3App::Handler(Arc::new(WelcomePage)),
        )
        .await;
        small_gets(&server, requests).await;
        download(&server, mib).await;
    });
}
