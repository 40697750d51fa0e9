//! Soak benchmark: mixed load with connection churn, a plugin reload every
//! few seconds and a hostile client, for a configurable duration. Prints
//! resident memory as it goes and the totals at the end; exits non-zero if
//! a well-behaved client saw a failed request, a dropped connection or a
//! lost byte. (Server and clients share this process: the memory figures
//! are the whole process's, after a warm-up.)
//!
//! - well-behaved clients: GET `/` (the answer names version a or b) and
//!   `POST /echo` of 0-64 KiB (the answer must be the same bytes), a new
//!   connection every 500 requests; a request refused unprocessed because
//!   of a reload's GOAWAY (RFC 9114 §5.2) is retried and counted apart;
//! - reloads: the plugin file alternates between two versions every
//!   `--reload-ms`, picked up by the file watcher;
//! - a hostile client: rapid reset (HEADERS then RESET_STREAM, 200 per
//!   round) and requests whose bodies never finish (cut by the server's
//!   stall timeout), on fresh connections.
//!
//! Needs the plugins built (`bash scripts/build-plugins.sh`). Run:
//! `cargo bench -p tq-e2e --bench soak -- --secs 1800`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tq_e2e::{bench_arg, rss_kib, LiveServer};
use tq_host::http3::{H3Client, OutboundFrame, H3_NO_ERROR};

/// Requests per connection before a well-behaved client reconnects.
const CHURN: u64 = 500;

#[derive(Default)]
struct Totals {
    gets: AtomicU64,
    posts: AtomicU64,
    echoed: AtomicU64,
    retried: AtomicU64,
    reconnects: AtomicU64,
    reloads: AtomicU64,
    reset_pairs: AtomicU64,
    stalled: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Totals {
    fn fail(&self, why: String) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() < 100 {
            f.push(why);
        }
    }
}

fn body_for(k: u64) -> Vec<u8> {
    let n = (k.wrapping_mul(7919) % 65_536) as usize;
    (0..n).map(|i| (i as u64 ^ k) as u8).collect()
}

/// Whether an error means the request was refused unprocessed (safe to
/// retry): the client saw the GOAWAY, or the server answered
/// H3_REQUEST_REJECTED.
fn refused_unprocessed(e: &tq_host::http3::H3Error) -> bool {
    let s = e.to_string();
    s.contains("GOAWAY") || s.contains("0x10b")
}

async fn well_behaved(server: Arc<LiveServer>, t: Arc<Totals>, stop: Arc<AtomicBool>, id: u64) {
    let mut client = server.client().await;
    let mut on_conn = 0;
    let mut k = id << 32;
    while !stop.load(Ordering::Relaxed) {
        if client.handle().is_going_away() || on_conn >= CHURN {
            if !client.handle().is_going_away() {
                client.handle().close(H3_NO_ERROR, "churn");
            }
            let outcome = client.connection().closed().await;
            let graceful = [&outcome.peer_close, &outcome.local_close]
                .into_iter()
                .flatten()
                .all(|c| c.is_app && c.code == H3_NO_ERROR);
            if !graceful {
                t.fail(format!("connection dropped: {}", outcome.describe()));
            }
            t.reconnects.fetch_add(1, Ordering::Relaxed);
            client = server.client().await;
            on_conn = 0;
            continue;
        }
        k += 1;
        on_conn += 1;
        if k.is_multiple_of(2) {
            match client.request("GET", "/", None).await {
                Ok(r) if r.status == 200 && r.body.starts_with(b"version ") => {
                    t.gets.fetch_add(1, Ordering::Relaxed);
                }
                Ok(r) => t.fail(format!(
                    "GET: status {} body {:?}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                )),
                Err(e) if refused_unprocessed(&e) => {
                    t.retried.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => t.fail(format!("GET: {e}")),
            }
        } else {
            let sent = body_for(k);
            match client
                .request("POST", "/echo", Some(Bytes::from(sent.clone())))
                .await
            {
                Ok(r) if r.status == 200 && r.body == sent => {
                    t.posts.fetch_add(1, Ordering::Relaxed);
                    t.echoed.fetch_add(sent.len() as u64, Ordering::Relaxed);
                }
                Ok(r) => t.fail(format!(
                    "POST: status {}, {} bytes back of {} sent",
                    r.status,
                    r.body.len(),
                    sent.len()
                )),
                Err(e) if refused_unprocessed(&e) => {
                    t.retried.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => t.fail(format!("POST: {e}")),
            }
        }
    }
}

/// Rapid reset and never-finished bodies, round after round, each round on
/// a fresh connection.
async fn hostile(server: Arc<LiveServer>, t: Arc<Totals>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let c: H3Client = server.client().await;
        for _ in 0..200 {
            let Ok(Ok(s)) = tokio::time::timeout(
                Duration::from_secs(5),
                c.handle()
                    .send_request(tq_e2e::request_head("POST", "/echo"), true),
            )
            .await
            else {
                break;
            };
            if let Some(body) = s.body {
                let _ = body.send(OutboundFrame::Reset(0x10c)).await;
            }
            t.reset_pairs.fetch_add(1, Ordering::Relaxed);
        }
        // Bodies that never finish, held for a while (the server cuts them
        // at its stall timeout).
        let mut held = Vec::new();
        for _ in 0..20 {
            if let Ok(s) = c
                .handle()
                .send_request(tq_e2e::request_head("POST", "/echo"), true)
                .await
            {
                if let Some(body) = &s.body {
                    let _ = body.send_body(Bytes::from_static(b"x"), false).await;
                }
                held.push(s);
                t.stalled.fetch_add(1, Ordering::Relaxed);
            }
        }
        for _ in 0..50 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(held);
        c.handle().close(H3_NO_ERROR, "round over");
    }
}

fn main() {
    let secs = bench_arg("--secs", 60);
    let clients = bench_arg("--clients", 8);
    let reload_ms = bench_arg("--reload-ms", 3_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let failed = rt.block_on(async move {
        // A short stall timeout, so the hostile client's never-finished
        // bodies are cut within each round.
        let h3 = tq_host::http3::Http3Settings {
            stream_stall_timeout: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        let server =
            Arc::new(LiveServer::start_with("version_a", Duration::from_secs(1), h3).await);
        let watcher = tokio::spawn(server.live.clone().watch_file(Duration::from_millis(200)));
        let t = Arc::new(Totals::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for id in 0..clients as u64 {
            tasks.push(tokio::spawn(well_behaved(
                server.clone(),
                t.clone(),
                stop.clone(),
                id,
            )));
        }
        tasks.push(tokio::spawn(hostile(
            server.clone(),
            t.clone(),
            stop.clone(),
        )));
        let reloader = tokio::spawn({
            let (server, t, stop) = (server.clone(), t.clone(), stop.clone());
            async move {
                let mut b = true;
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(reload_ms as u64)).await;
                    server.install(if b { "version_b" } else { "version_a" });
                    b = !b;
                    t.reloads.fetch_add(1, Ordering::Relaxed);
                }
            }
        });

        let started = Instant::now();
        let end = started + Duration::from_secs(secs as u64);
        // Memory after a warm-up (allocator pools, first instances).
        let warm_up = Duration::from_secs((secs as u64 / 10).clamp(1, 30));
        let mut first: Option<u64> = None;
        let mut max = 0;
        let mut last = 0;
        let mut next_print = started;
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_secs(1)).await;
            last = rss_kib();
            if started.elapsed() >= warm_up {
                first.get_or_insert(last);
                max = max.max(last);
            }
            if Instant::now() >= next_print {
                next_print += Duration::from_secs(60);
                println!(
                    "{:>5} s  RSS {:>7} KiB  requests {:>9}  reloads {:>4}  reset pairs {:>8}",
                    started.elapsed().as_secs(),
                    last,
                    t.gets.load(Ordering::Relaxed) + t.posts.load(Ordering::Relaxed),
                    t.reloads.load(Ordering::Relaxed),
                    t.reset_pairs.load(Ordering::Relaxed),
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
        reloader.abort();
        watcher.abort();
        let failures = t.failures.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        println!(
            "soak: {secs} s, {clients} clients + 1 hostile, a reload every {reload_ms} ms\n\
             requests answered: {} GET + {} POST /echo ({} MiB echoed byte-exact)\n\
             refused unprocessed by a GOAWAY and retried: {}; reconnects (churn and drains): {}\n\
             reloads: {}; hostile: {} HEADERS+RESET pairs, {} never-finished requests\n\
             RSS after warm-up {} KiB, at the end {} KiB, max {} KiB\n\
             failed requests or dropped connections among well-behaved clients: {}",
            g(&t.gets),
            g(&t.posts),
            g(&t.echoed) >> 20,
            g(&t.retried),
            g(&t.reconnects),
            g(&t.reloads),
            g(&t.reset_pairs),
            g(&t.stalled),
            first.unwrap_or(last),
            last,
            max,
            failures.len(),
        );
        for f in failures.iter().take(10) {
            println!("  {f}");
        }
        !failures.is_empty()
    });
    if failed {
        std::process::exit(1);
    }
}
