//! `--workers` scaling: the `tq-host` binary, as its own process, serving
//! the built-in site with 1 worker and then 2 (several rounds, interleaved),
//! driven by small GETs from this process. Prints requests/s, the server's
//! CPU time per request (from /proc) and the machine's core count: on a
//! 2-core machine the load generator shares the cores with the server, so
//! read the CPU-per-request column too. Asserts nothing.
//!
//! Run: `cargo build --release -p tq-host && cargo bench -p tq-e2e --bench
//! workers [-- --secs 5 --rounds 3 --conns 16]`. The binary is
//! `target/release/tq-host` unless `TQ_HOST_BIN` names another.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tq_host::http3::{H3Client, Http3Settings};
use tq_host::quic::{ConnectionParams, QuicSettings};

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bin() -> PathBuf {
    std::env::var_os("TQ_HOST_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/tq-host"),
        PathBuf::from,
    )
}

fn start(workers: usize) -> Server {
    let mut child = Command::new(bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--workers",
            &workers.to_string(),
            "--no-access-log",
            "--no-retry",
            "--config",
        ])
        .arg(config())
        .env("TQ_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e}; build it first: cargo build --release -p tq-host",
                bin().display()
            )
        });
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let addr = loop {
        let line = lines.next().expect("server exited").expect("stderr");
        if let Some(i) = line.find("addr=") {
            break line[i + 5..]
                .split_whitespace()
                .next()
                .expect("addr")
                .parse()
                .expect("addr");
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Server { child, addr }
}

/// Every client here comes from 127.0.0.1: lift the per-address cap.
fn config() -> PathBuf {
    let p = std::env::temp_dir().join(format!("tq-bench-workers-{}.toml", std::process::id()));
    std::fs::write(&p, "[quic]\nmax_connections_per_address = 10000\n").expect("config");
    p
}

/// The process's CPU time (user + system) from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 (1-based) of the whole line,
    // 12 and 13 (1-based) after the name: indexes 11 and 12 here.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / 100.0)
}

/// The process's resident memory from /proc, in MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Small GETs on `conns` connections, 16 in flight each, for `secs`.
async fn load(addr: SocketAddr, conns: usize, secs: u64) -> (u64, f64) {
    let params = ConnectionParams::new_client(QuicSettings::default()).verify_peer(false);
    let mut clients = Vec::new();
    for _ in 0..conns {
        clients.push(Arc::new(
            H3Client::connect(addr, "localhost", &params, Http3Settings::default())
                .await
                .expect("connect"),
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in &clients {
        for _ in 0..16 {
            let (c, stop, done) = (c.clone(), stop.clone(), done.clone());
            tasks.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match c.request("GET", "/", None).await {
                        Ok(r) if r.status == 200 => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => return,
                    }
                }
            });
        }
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    let n = done.load(Ordering::Relaxed);
    (n, n as f64 / start.elapsed().as_secs_f64())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let secs = tq_e2e::bench_arg("--secs", 5) as u64;
    let rounds = tq_e2e::bench_arg("--rounds", 3);
    let conns = tq_e2e::bench_arg("--conns", 16);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "small GETs, {conns} connections x 16 in flight, {secs} s per run, {rounds} rounds, \
         {cores} cores shared by server and load generator"
    );
    let mut results: Vec<(usize, Vec<f64>, Vec<f64>)> =
        vec![(1, Vec::new(), Vec::new()), (2, Vec::new(), Vec::new())];
    for round in 0..rounds {
        for (workers, rates, cpu) in results.iter_mut() {
            let server = start(*workers);
            let cpu0 = cpu_time(server.child.id());
            let (n, rate) = rt.block_on(load(server.addr, conns, secs));
            let used = cpu_time(server.child.id()) - cpu0;
            let us = used.as_secs_f64() * 1e6 / n.max(1) as f64;
            println!(
                "round {round}: --workers {workers}: {rate:.0} requests/s, server CPU {us:.1} us/request ({:.2} cores), server RSS {:.1} MiB after {n} requests",
                used.as_secs_f64() / secs as f64,
                rss_mib(server.child.id())
            );
            rates.push(rate);
            cpu.push(us);
        }
    }
    let mut base = 0.0;
    for (workers, rates, cpu) in results.iter_mut() {
        let (min, max) = (
            rates.iter().copied().fold(f64::MAX, f64::min),
            rates.iter().copied().fold(0.0, f64::max),
        );
        let m = median(rates);
        if *workers == 1 {
            base = m;
        }
        println!(
            "--workers {workers}: median {m:.0} requests/s (min {min:.0}, max {max:.0}), {:.1} us server CPU/request, {:.2}x of 1 worker",
            median(cpu),
            m / base
        );
    }
}
