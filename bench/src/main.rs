//! `tq-bench`: tq-host side by side with tokio-quiche and quinn + h3.
//!
//! Each server runs as its own process (pinned to CPU 0 where the machine
//! has two or more), driven by `bench-load` in another process (pinned to
//! CPU 1). Every scenario runs every server once per round, servers
//! interleaved, a fresh server process each time; the summary gives the
//! median, min and max over rounds. Server CPU time and memory come from
//! the server process's own counters in /proc.
//!
//! Run it through `scripts/bench.sh`, which builds everything first; see
//! BENCHMARKS.md for the scenarios and the recorded results.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use serde::Serialize;
use tq_bench::LoadReport;

mod wasm;

#[derive(Parser, Clone)]
#[command(about = "tq-host side by side with tokio-quiche and quinn + h3 (see BENCHMARKS.md)")]
struct Args {
    /// Rounds: every scenario runs every server once per round.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Scenarios, comma-separated: small, bulk, handshakes, idle, wasm
    /// (plugin costs from tq-host's metrics, and reloads under load; run
    /// by the servers with a plugin).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "small,bulk,handshakes,idle,wasm"
    )]
    scenarios: Vec<String>,
    /// Servers, comma-separated (default: all): tq-native, tq-native-2w,
    /// tq-http3-plugin, tq-wasi-fresh, tq-wasi-reused, tokio-quiche, quinn.
    #[arg(long, value_delimiter = ',')]
    servers: Vec<String>,
    /// Small requests: how many in all (10 connections x 16 in flight).
    #[arg(long, default_value_t = 1_000_000)]
    requests: u64,
    /// Bulk: MiB downloaded, then uploaded, on one connection.
    #[arg(long, default_value_t = 1024)]
    bulk_mib: u64,
    /// Handshakes: new connections (each with one request) per run.
    #[arg(long, default_value_t = 2000)]
    handshakes: u64,
    /// Idle memory: connection counts held open, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    idle: Vec<u64>,
    /// A short run to check the set-up: 1 round, 100,000 requests, 256 MiB
    /// bulk, 500 handshakes, 1,000 idle connections.
    #[arg(long)]
    quick: bool,
    /// Where the JSON results go. Default: target/bench/results-DATE.json.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The repository root (tq-host's release binary and plugins are found
    /// under its target/). Default: the current directory.
    #[arg(long, default_value = ".")]
    repo: PathBuf,
}

/// A server under test: how to start it.
#[derive(Clone)]
struct ServerSpec {
    name: &'static str,
    what: &'static str,
    /// tq-host flags beyond the common ones, or None for a peer binary.
    tq_flags: Option<Vec<String>>,
    /// Pinned to CPU 0 (else free to use every CPU).
    pinned: bool,
}

fn servers(repo: &Path) -> Vec<ServerSpec> {
    let wasm = repo.join("target/wasm/wasm32-wasip2/release");
    let plugin = |name: &str| wasm.join(name).display().to_string();
    let s = |v: &[&str]| Some(v.iter().map(|x| x.to_string()).collect::<Vec<_>>());
    vec![
        ServerSpec {
            name: "tq-native",
            what: "tq-host, built-in site (native handler), --workers 1",
            tq_flags: s(&["--workers", "1"]),
            pinned: true,
        },
        ServerSpec {
            name: "tq-native-2w",
            what: "tq-host, native handler, --workers 2, not pinned (shares CPU 1 with the load generator)",
            tq_flags: s(&["--workers", "2"]),
            pinned: false,
        },
        ServerSpec {
            name: "tq-http3-plugin",
            what: "tq-host, plugins/hello (tq:plugin/http3-app, tq-sdk), an instance per connection",
            tq_flags: Some(vec!["--workers".into(), "1".into(), "--plugin".into(), plugin("hello.wasm"), "--no-watch".into(), "--plugin-instances".into(), "10100".into()]),
            pinned: true,
        },
        ServerSpec {
            name: "tq-wasi-fresh",
            what: "tq-host, plugins/wasi-hello (wasi:http/proxy, WASI 0.2), a fresh instance per request, --plugin-deadline 30s",
            // A 1 GiB body takes the guest more than the default 1 s of CPU
            // per request: the bulk scenarios measure throughput, not it.
            tq_flags: Some(vec!["--workers".into(), "1".into(), "--plugin".into(), plugin("wasi_hello.wasm"), "--no-watch".into(), "--plugin-instances".into(), "10100".into(), "--plugin-deadline".into(), "30s".into()]),
            pinned: true,
        },
        ServerSpec {
            name: "tq-wasi-reused",
            what: "tq-host, plugins/wasi-hello, --reuse-instances 100, --plugin-deadline 30s",
            tq_flags: Some(vec![
                "--workers".into(),
                "1".into(),
                "--plugin".into(),
                plugin("wasi_hello.wasm"),
                "--no-watch".into(), "--plugin-instances".into(), "10100".into(),
                "--reuse-instances".into(),
                "100".into(),
                "--plugin-deadline".into(),
                "30s".into(),
            ]),
            pinned: true,
        },
        ServerSpec {
            name: "tokio-quiche",
            what: "tokio-quiche 0.20 ServerH3Driver (quiche 0.30), bench/src/bin/tokio-quiche-server.rs",
            tq_flags: None,
            pinned: true,
        },
        ServerSpec {
            name: "quinn",
            what: "quinn 0.11 + h3 0.0.8, bench/src/bin/quinn-server.rs",
            tq_flags: None,
            pinned: true,
        },
    ]
}

/// Paths everything runs with.
struct Setup {
    tq_host: PathBuf,
    bin_dir: PathBuf,
    work: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    tq_config: PathBuf,
    /// Servers and load generator pinned to CPUs 0 and 1: the process may
    /// use both and `taskset` is there.
    pin: bool,
}

/// One measurement: a server, a scenario, a round.
#[derive(Serialize, Clone)]
struct Sample {
    server: String,
    scenario: String,
    round: usize,
    metrics: BTreeMap<String, f64>,
    error: Option<String>,
}

/// Median, min and max of one metric over rounds.
#[derive(Serialize)]
struct Summary {
    scenario: String,
    metric: String,
    server: String,
    median: f64,
    min: f64,
    max: f64,
    rounds: usize,
}

/// A running server process, killed when dropped.
struct Running {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Whether this process may run on CPUs 0 and 1 and `taskset` runs.
fn can_pin() -> bool {
    Command::new("taskset")
        .args(["-c", "0,1", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// CPU seconds (user + system, all threads) a process has used.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("/proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<f64> {
    proc_kib(pid, "status", "VmRSS:")
}

/// Proportional set size of a process, in KiB: pages it shares with other
/// mappings (a plugin's memory image, mapped once per instance) count in
/// part, where RSS counts them whole in every mapping.
fn pss_kib(pid: u32) -> anyhow::Result<f64> {
    proc_kib(pid, "smaps_rollup", "Pss:")
}

/// The KiB figure on the line of `/proc/PID/FILE` that starts with `key`.
fn proc_kib(pid: u32, file: &str, key: &str) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with(key))
        .with_context(|| format!("no {key} in /proc/{pid}/{file}"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context(key.to_owned())?
        .parse()?)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `taskset -c CPU` in front of a command, where the machine has the CPUs.
fn pinned(setup: &Setup, cpu: Option<usize>, program: &Path) -> Command {
    match cpu {
        Some(c) if setup.pin => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c.to_string()).arg(program);
            cmd
        }
        _ => Command::new(program),
    }
}

fn start(setup: &Setup, spec: &ServerSpec, log: &Path) -> anyhow::Result<Running> {
    start_with(setup, spec, log, &[])
}

/// [`start`], with more flags for a tq-host server.
fn start_with(
    setup: &Setup,
    spec: &ServerSpec,
    log: &Path,
    extra: &[String],
) -> anyhow::Result<Running> {
    let port = free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let cpu = spec.pinned.then_some(0);
    let mut cmd = match &spec.tq_flags {
        Some(flags) => {
            let mut cmd = pinned(setup, cpu, &setup.tq_host);
            cmd.arg("--listen")
                .arg(addr.to_string())
                .arg("--cert")
                .arg(&setup.cert)
                .arg("--key")
                .arg(&setup.key)
                .arg("-c")
                .arg(&setup.tq_config)
                .arg("--no-access-log")
                .arg("--cache-dir")
                .arg(setup.work.join("cache"))
                .args(flags)
                .args(extra)
                .env("TQ_LOG", "warn")
                // The wasm scenario's admin calls carry no token.
                .env_remove("TQ_ADMIN_TOKEN");
            cmd
        }
        None => {
            let mut cmd = pinned(
                setup,
                cpu,
                &setup.bin_dir.join(format!("{}-server", spec.name)),
            );
            cmd.arg("--listen")
                .arg(addr.to_string())
                .arg("--cert")
                .arg(&setup.cert)
                .arg("--key")
                .arg(&setup.key);
            cmd
        }
    };
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", spec.name))?;
    let running = Running { child, addr };
    let probe = load(setup, addr, &["probe"])?;
    if probe.done != 1 {
        bail!("{} did not answer", spec.name);
    }
    Ok(running)
}

/// Runs the load generator (pinned to CPU 1) and parses its report.
fn load(setup: &Setup, addr: SocketAddr, scenario: &[&str]) -> anyhow::Result<LoadReport> {
    let mut cmd = pinned(setup, Some(1), &setup.bin_dir.join("bench-load"));
    cmd.arg("--addr")
        .arg(addr.to_string())
        .arg("--ca")
        .arg(&setup.cert)
        .args(scenario)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    let out = cmd.output().context("running bench-load")?;
    if !out.status.success() {
        bail!("bench-load {} failed ({})", scenario.join(" "), out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().context("bench-load printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("bench-load printed {line:?}"))
}

/// What one scenario measured on one server, as named metrics.
type Metrics = BTreeMap<String, f64>;

/// Starts a fresh server, runs one load-generator scenario against it, and
/// returns the load generator's report and the server's CPU seconds over it.
fn measured(
    setup: &Setup,
    spec: &ServerSpec,
    log: &Path,
    scenario: &[&str],
) -> anyhow::Result<(LoadReport, f64)> {
    let server = start(setup, spec, log)?;
    let before = cpu_seconds(server.pid())?;
    let r = load(setup, server.addr, scenario)?;
    Ok((r, cpu_seconds(server.pid())? - before))
}

/// bench-load's arguments for the small-request load: 10 connections x 16
/// in flight, `requests` in all.
fn small_load(requests: &str) -> [&str; 7] {
    [
        "small",
        "--conns",
        "10",
        "--in-flight",
        "16",
        "--requests",
        requests,
    ]
}

fn small(setup: &Setup, args: &Args, spec: &ServerSpec, log: &Path) -> anyhow::Result<Metrics> {
    let requests = args.requests.to_string();
    let (r, cpu) = measured(setup, spec, log, &small_load(&requests))?;
    let mut m = Metrics::new();
    m.insert("requests_per_s".into(), r.done as f64 / r.secs);
    m.insert(
        "server_cpu_us_per_request".into(),
        cpu * 1e6 / r.done.max(1) as f64,
    );
    m.insert("server_cpu_percent".into(), cpu / r.secs * 100.0);
    m.insert("load_cpu_percent".into(), r.cpu_secs / r.secs * 100.0);
    m.insert("p50_us".into(), r.p50_us.unwrap_or(f64::NAN));
    m.insert("p99_us".into(), r.p99_us.unwrap_or(f64::NAN));
    m.insert("failed".into(), r.failed as f64);
    Ok(m)
}

fn bulk(
    setup: &Setup,
    args: &Args,
    spec: &ServerSpec,
    log: &Path,
    upload: bool,
) -> anyhow::Result<Metrics> {
    let bytes = (args.bulk_mib << 20).to_string();
    let (r, cpu) = measured(
        setup,
        spec,
        log,
        &[
            if upload { "upload" } else { "download" },
            "--bytes",
            &bytes,
        ],
    )?;
    let mut m = Metrics::new();
    m.insert("mb_per_s".into(), r.bytes as f64 / r.secs / 1e6);
    m.insert("server_cpu_percent".into(), cpu / r.secs * 100.0);
    m.insert("load_cpu_percent".into(), r.cpu_secs / r.secs * 100.0);
    Ok(m)
}

fn handshakes(
    setup: &Setup,
    args: &Args,
    spec: &ServerSpec,
    log: &Path,
    parallel: u64,
) -> anyhow::Result<Metrics> {
    let count = args.handshakes.to_string();
    let par = parallel.to_string();
    let (r, cpu) = measured(
        setup,
        spec,
        log,
        &["handshakes", "--count", &count, "--parallel", &par],
    )?;
    let mut m = Metrics::new();
    m.insert("connections_per_s".into(), r.done as f64 / r.secs);
    m.insert(
        "server_cpu_us_per_connection".into(),
        cpu * 1e6 / r.done.max(1) as f64,
    );
    m.insert("load_cpu_percent".into(), r.cpu_secs / r.secs * 100.0);
    m.insert("failed".into(), r.failed as f64);
    Ok(m)
}

fn idle(setup: &Setup, spec: &ServerSpec, log: &Path, conns: u64) -> anyhow::Result<Metrics> {
    let server = start(setup, spec, log)?;
    // Let the probe's connection close and the allocator settle.
    std::thread::sleep(Duration::from_secs(1));
    let base = rss_kib(server.pid())?;
    let base_pss = pss_kib(server.pid())?;
    let mut cmd = pinned(setup, Some(1), &setup.bin_dir.join("bench-load"));
    let mut child = cmd
        .arg("--addr")
        .arg(server.addr.to_string())
        .arg("--ca")
        .arg(&setup.cert)
        .args(["idle", "--conns", &conns.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("running bench-load idle")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let held: Result<LoadReport, _> = serde_json::from_str(line.trim());
    let result = match held {
        Ok(r) if r.done == conns => {
            std::thread::sleep(Duration::from_secs(2));
            let rss = rss_kib(server.pid())?;
            let pss = pss_kib(server.pid())?;
            let mut m = Metrics::new();
            m.insert("kib_per_connection".into(), (rss - base) / conns as f64);
            m.insert(
                "pss_kib_per_connection".into(),
                (pss - base_pss) / conns as f64,
            );
            m.insert("server_rss_mib".into(), rss / 1024.0);
            m.insert("open_secs".into(), r.secs);
            Ok(m)
        }
        Ok(r) => Err(anyhow::anyhow!("held {} connections of {conns}", r.done)),
        Err(_) => Err(anyhow::anyhow!("bench-load idle failed: {line:?}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"");
    }
    let _ = child.wait();
    result
}

fn machine() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if let Some(model) = cpuinfo.lines().find_map(|l| l.strip_prefix("model name")) {
        m.insert(
            "cpu".into(),
            model.trim_start_matches([' ', '\t', ':']).to_string(),
        );
    }
    m.insert(
        "cpus".into(),
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .to_string(),
    );
    if let Ok(k) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        m.insert("kernel".into(), k.trim().to_string());
    }
    m
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn summarize(samples: &[Sample]) -> Vec<Summary> {
    let mut groups: BTreeMap<(String, String, String), Vec<f64>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.error.is_none()) {
        for (k, v) in &s.metrics {
            groups
                .entry((s.scenario.clone(), k.clone(), s.server.clone()))
                .or_default()
                .push(*v);
        }
    }
    groups
        .into_iter()
        .map(|((scenario, metric, server), mut v)| {
            v.sort_by(f64::total_cmp);
            Summary {
                scenario,
                metric,
                server,
                median: if v.len() % 2 == 1 {
                    v[v.len() / 2]
                } else {
                    (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
                },
                min: v[0],
                max: v[v.len() - 1],
                rounds: v.len(),
            }
        })
        .collect()
}

/// The headline metric of each scenario, compared across servers.
fn headline(scenario: &str) -> &'static str {
    match scenario {
        "small" => "requests_per_s",
        "download" | "upload" => "mb_per_s",
        s if s.starts_with("handshakes") => "connections_per_s",
        "wasm" => "instantiate_us",
        _ => "kib_per_connection",
    }
}

fn print_tables(
    summary: &[Summary],
    scenarios: &[String],
    servers: &[ServerSpec],
    samples: &[Sample],
) {
    for scenario in scenarios {
        let rows: Vec<&Summary> = summary.iter().filter(|s| &s.scenario == scenario).collect();
        let mut metrics: Vec<&str> = rows.iter().map(|s| s.metric.as_str()).collect();
        metrics.dedup();
        metrics.sort();
        metrics.dedup();
        println!("\n## {scenario}\n");
        print!("| server |");
        for m in &metrics {
            print!(" {m} |");
        }
        println!(" vs tokio-quiche |");
        println!("|---|{}---|", "---|".repeat(metrics.len()));
        let head = headline(scenario);
        let reference = rows
            .iter()
            .find(|s| s.server == "tokio-quiche" && s.metric == head)
            .map(|s| s.median);
        for spec in servers {
            let mine: Vec<&&Summary> = rows.iter().filter(|s| s.server == spec.name).collect();
            if mine.is_empty() {
                // A server the scenario does not apply to has no sample.
                if let Some(s) = samples
                    .iter()
                    .find(|s| s.server == spec.name && &s.scenario == scenario)
                {
                    let err = s.error.as_deref().unwrap_or("no figures");
                    println!("| {} | failed: {err} |", spec.name);
                }
                continue;
            }
            print!("| {} |", spec.name);
            for m in &metrics {
                match mine.iter().find(|s| s.metric == *m) {
                    Some(s) if s.rounds > 1 => {
                        print!(" {} ({}-{}) |", fmt(s.median), fmt(s.min), fmt(s.max))
                    }
                    Some(s) => print!(" {} |", fmt(s.median)),
                    None => print!(" |"),
                }
            }
            let ratio = mine
                .iter()
                .find(|s| s.metric == head)
                .zip(reference)
                .map(|(s, r)| format!("{:.2}x", s.median / r));
            let runs = samples
                .iter()
                .filter(|s| s.server == spec.name && &s.scenario == scenario)
                .count();
            let ok = mine.first().map_or(0, |s| s.rounds);
            let failed = if ok < runs {
                format!(" (failed in {} of {runs} rounds)", runs - ok)
            } else {
                String::new()
            };
            println!(" {}{failed} |", ratio.unwrap_or_default());
        }
    }
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.rounds = 1;
        args.requests = 100_000;
        args.bulk_mib = 256;
        args.handshakes = 500;
        args.idle = vec![1000];
    }
    let repo = args.repo.canonicalize().context("the repository root")?;
    let all = servers(&repo);
    let chosen: Vec<ServerSpec> = if args.servers.is_empty() {
        all.clone()
    } else {
        let mut v = Vec::new();
        for name in &args.servers {
            match all.iter().find(|s| s.name == name) {
                Some(s) => v.push(s.clone()),
                None => bail!(
                    "no server {name:?}; the servers are {}",
                    all.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
                ),
            }
        }
        v
    };
    let work = repo.join("target/bench");
    std::fs::create_dir_all(work.join("logs"))?;
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("the harness's directory")?
        .to_path_buf();
    let setup = Setup {
        tq_host: repo.join("target/release/tq-host"),
        bin_dir,
        cert: work.join("cert.pem"),
        key: work.join("key.pem"),
        tq_config: work.join("tq-host.toml"),
        work: work.clone(),
        pin: can_pin(),
    };
    if !setup.pin {
        eprintln!("tq-bench: not pinning (needs CPUs 0 and 1 and taskset): servers and load generator share the CPUs");
    }
    for (path, what) in [
        (&setup.tq_host, "tq-host (cargo build --release -p tq-host)"),
        (
            &setup.bin_dir.join("bench-load"),
            "bench-load (cargo build --release in bench/)",
        ),
    ] {
        if !path.exists() {
            bail!(
                "{} is missing: build {what}, or run scripts/bench.sh",
                path.display()
            );
        }
    }
    tq_bench::write_certificate(&setup.cert, &setup.key)?;
    // Limits raised for the idle scenario's 10,000 connections from one
    // address; Retry off as for the peers; the peers' idle timeout.
    std::fs::write(
        &setup.tq_config,
        "[quic]\nenable_retry = false\nmax_idle_timeout = \"120s\"\nmax_connections = 20000\nmax_connections_per_address = 20000\n",
    )?;
    let mut expanded = Vec::new();
    for s in &args.scenarios {
        match s.as_str() {
            "small" => expanded.push("small".to_string()),
            "bulk" => expanded.extend(["download".to_string(), "upload".to_string()]),
            "handshakes" => {
                expanded.extend(["handshakes-1".to_string(), "handshakes-50".to_string()])
            }
            "idle" => expanded.extend(args.idle.iter().map(|n| format!("idle-{n}"))),
            "wasm" => expanded.push("wasm".to_string()),
            other => {
                bail!(
                    "no scenario {other:?}; the scenarios are small, bulk, handshakes, idle, wasm"
                )
            }
        }
    }
    let started = Instant::now();
    let mut samples = Vec::new();
    for round in 1..=args.rounds {
        for scenario in &expanded {
            for spec in &chosen {
                if scenario == "wasm" && !wasm::applies(spec) {
                    continue;
                }
                let log = work
                    .join("logs")
                    .join(format!("{}-{scenario}-{round}.log", spec.name));
                let t = Instant::now();
                let result = match scenario.as_str() {
                    "small" => small(&setup, &args, spec, &log),
                    "download" => bulk(&setup, &args, spec, &log, false),
                    "upload" => bulk(&setup, &args, spec, &log, true),
                    "handshakes-1" => handshakes(&setup, &args, spec, &log, 1),
                    "handshakes-50" => handshakes(&setup, &args, spec, &log, 50),
                    "wasm" => wasm::run(&setup, spec, &log, round),
                    s => idle(&setup, spec, &log, s["idle-".len()..].parse()?),
                };
                let (metrics, error) = match result {
                    Ok(m) => (m, None),
                    Err(e) => (Metrics::new(), Some(format!("{e:#}"))),
                };
                let head = headline(scenario);
                eprintln!(
                    "[{:>5.0} s] round {round} {scenario:<14} {:<16} {} ({:.1} s)",
                    started.elapsed().as_secs_f64(),
                    spec.name,
                    match (&error, metrics.get(head)) {
                        (Some(e), _) => format!("FAILED: {e}"),
                        (None, Some(v)) => format!("{head} {}", fmt(*v)),
                        (None, None) => String::new(),
                    },
                    t.elapsed().as_secs_f64(),
                );
                samples.push(Sample {
                    server: spec.name.to_string(),
                    scenario: scenario.clone(),
                    round,
                    metrics,
                    error,
                });
            }
        }
    }
    let summary = summarize(&samples);
    let date = command_output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]);
    let commit = command_output(
        "git",
        &[
            "-C",
            &repo.display().to_string(),
            "describe",
            "--always",
            "--dirty",
        ],
    );
    println!("# tq-bench, {date}, commit {commit}");
    println!("\nmachine: {:?}", machine());
    println!("small: 10 connections x 16 in flight, GET /bytes/100, {} requests in all; bulk: {} MiB each way on one connection; handshakes: {} new connections with one GET each, 1 and 50 at a time; idle: server RSS (and PSS) growth per connection held after one GET; wasm (plugin servers): mean plugin call times from tq-host's metrics over 200,000 small requests (and 500 new connections for per-connection instantiation), and 3 reloads with changed bytes under load", args.requests, args.bulk_mib, args.handshakes);
    print_tables(&summary, &expanded, &chosen, &samples);
    println!("\nservers:");
    for s in &chosen {
        println!("- {}: {}", s.name, s.what);
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| work.join(format!("results-{}.json", date.replace(':', ""))));
    let json = serde_json::json!({
        "date": date,
        "commit": commit,
        "machine": machine(),
        "settings": {
            "rounds": args.rounds,
            "requests": args.requests,
            "bulk_mib": args.bulk_mib,
            "handshakes": args.handshakes,
            "idle": args.idle,
            "pinning": if setup.pin { "servers on CPU 0 (but tq-native-2w), bench-load on CPU 1" } else { "none (one CPU)" },
        },
        "servers": chosen.iter().map(|s| serde_json::json!({"name": s.name, "what": s.what})).collect::<Vec<_>>(),
        "samples": samples,
        "summary": summary,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&json)?)?;
    println!("\nJSON: {}", out.display());
    Ok(())
}
