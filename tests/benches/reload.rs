//! Hot-reload benchmarks. Prints figures; asserts nothing.
//!
//! - reload latency: from the plugin file being replaced (by rename) to the
//!   first response from the new version on a new connection, with the
//!   file watcher polling every 200 ms as `tq-host` does; compile time
//!   reported apart;
//! - memory released: resident memory before and after a version with idle
//!   connections is replaced and drains (client and server in one process;
//!   glibc's heap is trimmed before each reading).
//!
//! Needs the plugins built (`bash scripts/build-plugins.sh`). Run:
//! `cargo bench -p tq-e2e --bench reload`

use std::time::{Duration, Instant};

use tq_e2e::{bench_arg, rss_kib, LiveServer};

extern "C" {
    /// glibc: returns freed heap memory to the kernel, so RSS shows what was
    /// really released rather than what malloc keeps for reuse.
    fn malloc_trim(pad: usize) -> i32;
}

fn trimmed_rss_kib() -> u64 {
    // SAFETY: malloc_trim only walks glibc's own heap; no pointers are
    // passed and Debian's libc (glibc) provides it.
    unsafe {
        malloc_trim(0);
    }
    rss_kib()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let rounds = bench_arg("--rounds", 20);
        let server = LiveServer::start("version_a", Duration::from_millis(200)).await;
        let watcher = tokio::spawn(server.live.clone().watch_file(Duration::from_millis(200)));
        let mut latency = Vec::new();
        let mut compile = Vec::new();
        for i in 0..rounds {
            let (name, want) = if i % 2 == 0 { ("version_b", "version b ") } else { ("version_a", "version a ") };
            // Let the watcher see a settled file before changing it again.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let changed = Instant::now();
            server.install(name);
            loop {
                let c = server.client().await;
                let r = c.request("GET", "/", None).await.expect("GET /");
                if r.body.starts_with(want.as_bytes()) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            latency.push(changed.elapsed());
            compile.push(Duration::from_secs_f64(server.live.versions()[0].compile_ms / 1e3));
        }
        watcher.abort();
        latency.sort();
        compile.sort();
        println!(
            "reload latency, file replaced -> first answer from the new version ({rounds} reloads, 200 ms watcher poll): p50 {:?}, max {:?}; of which compiling: p50 {:?}, max {:?}",
            latency[rounds / 2], latency[rounds - 1], compile[rounds / 2], compile[rounds - 1]
        );

        // Memory released once a replaced version with idle connections
        // drains. The first server goes first, with everything it held.
        drop(server);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = bench_arg("--idle", 100);
        let before = trimmed_rss_kib();
        let server = LiveServer::start("version_a", Duration::from_millis(200)).await;
        let mut clients = Vec::new();
        for _ in 0..idle {
            let c = server.client().await;
            c.request("GET", "/", None).await.expect("GET /");
            clients.push(c);
        }
        let with_conns = trimmed_rss_kib();
        server.install("version_b");
        server.live.reload().await.expect("reload");
        // Drain deadline, GOAWAY, graceful closes.
        for c in &clients {
            let _ = tokio::time::timeout(Duration::from_secs(5), c.connection().closed()).await;
        }
        drop(clients);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = trimmed_rss_kib();
        let alive = server.live.versions().len();
        println!(
            "memory: loading the first version and {idle} idle connections on it took {} KiB (client and server side); after a reload drained them, {} KiB were released ({} version(s) still alive)",
            with_conns.saturating_sub(before),
            with_conns.saturating_sub(after),
            alive
        );
    });
}
