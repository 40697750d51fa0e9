//! Rapid reset (the CVE-2023-44487 pattern) against the plugin worlds: a
//! client opens requests and resets them as fast as stream credit comes
//! back. Each reset must end its request's work (instance, plugin state),
//! so what is alive stays within the stream limit and a bystander
//! connection keeps being served. (The native world's test is in `h3.rs`;
//! memory under rapid reset is checked in the memory test binary, where
//! the process is the test's alone.)

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tq_e2e::{init_tracing, latencies, percentile, reset_pairs, rss_kib, PluginServer};
use tq_host::plugin::PluginLimits;

const PAIRS: usize = 10_000;

async fn rapid_reset(plugin: &str) {
    init_tracing();
    let server = PluginServer::start(plugin, PluginLimits::default()).await;
    let bystander = server.client().await;
    let baseline = latencies(&bystander, "/", 300).await;

    // Sample what is alive while the attack runs.
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (peak, done, plugin) = (peak.clone(), done.clone(), server.plugin.clone());
        async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(plugin.requests_in_flight(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let rss_before = rss_kib();
    let attacker = server.client().await;
    let attack = tokio::spawn(async move {
        reset_pairs(&attacker, "/echo", PAIRS).await;
        attacker
    });
    let during = latencies(&bystander, "/", 300).await;
    let attacker = attack.await.unwrap();
    // Whatever the last resets started ends too.
    tokio::time::timeout(Duration::from_secs(10), async {
        while server.plugin.requests_in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{} requests still in flight after the resets",
            server.plugin.requests_in_flight()
        )
    });
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let grown = rss_kib().saturating_sub(rss_before);
    let peak = peak.load(Ordering::Relaxed);
    println!(
        "rapid reset vs {plugin}: {PAIRS} pairs, at most {peak} requests alive; \
         RSS +{grown} KiB; bystander p50/p99 {:?}/{:?} before, {:?}/{:?} during",
        percentile(&baseline, 50),
        percentile(&baseline, 99),
        percentile(&during, 50),
        percentile(&during, 99),
    );
    // The default limit is 100 concurrent streams; allow for resets in
    // flight between the client's and the server's view.
    assert!(peak <= 200, "{peak} requests alive at once");
    // The attacking connection itself still works.
    let r = attacker
        .request("GET", "/", None)
        .await
        .expect("still served");
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_against_an_http3_app_plugin_leaves_nothing_running() {
    rapid_reset("hello").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_against_a_wasi_http_component_leaves_nothing_running() {
    rapid_reset("wasi_hello").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_against_a_wasi_0_3_component_leaves_nothing_running() {
    rapid_reset("wasi_p3_hello").await;
}
