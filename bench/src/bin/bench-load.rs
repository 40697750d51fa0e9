//! The load generator: quinn with hyperium's h3, an HTTP/3 stack
//! independent of every server under test. It runs one scenario against
//! one server and prints one JSON line ([`tq_bench::LoadReport`]); the
//! harness (`tq-bench`) starts it as its own process, pinned to its own core.
//!
//! `bench-load --addr 127.0.0.1:4433 --ca cert.pem small --conns 10 --in-flight 16 --requests 1000000`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Buf, Bytes};
use clap::{Parser, Subcommand};
use tokio::io::AsyncBufReadExt;
use tq_bench::{own_cpu_seconds, percentile, LoadReport};

#[derive(Parser)]
struct Args {
    /// The server under test.
    #[arg(long)]
    addr: SocketAddr,
    /// The certificate the server presents (trusted as a root).
    #[arg(long)]
    ca: PathBuf,
    /// Give up on the scenario after this many seconds (a server that
    /// stops answering must not stall the harness).
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Waits until the server answers `GET /bytes/1`.
    Probe {
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
    /// Small requests: `GET /bytes/SIZE` over CONNS connections with
    /// IN_FLIGHT requests outstanding on each, REQUESTS in all.
    Small {
        #[arg(long, default_value_t = 10)]
        conns: usize,
        #[arg(long, default_value_t = 16)]
        in_flight: usize,
        #[arg(long)]
        requests: u64,
        #[arg(long, default_value_t = 100)]
        size: u64,
    },
    /// One connection, one `GET /bytes/BYTES`.
    Download {
        #[arg(long)]
        bytes: u64,
    },
    /// One connection, one `POST /discard` of BYTES.
    Upload {
        #[arg(long)]
        bytes: u64,
    },
    /// COUNT new connections, each with one `GET /bytes/100`, PARALLEL at a time.
    Handshakes {
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 1)]
        parallel: u64,
    },
    /// Opens CONNS connections, one `GET /bytes/100` on each, prints the
    /// report, then holds them idle until its standard input closes.
    Idle {
        #[arg(long)]
        conns: u64,
    },
}

/// One HTTP/3 connection from the shared endpoint.
struct Conn {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    quic: quinn::Connection,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.quic.close(0u32.into(), b"");
        self.driver.abort();
    }
}

fn endpoint(ca: &std::path::Path) -> anyhow::Result<quinn::Endpoint> {
    let mut roots = rustls::RootCertStore::empty();
    for c in tq_bench::load_certs(ca)? {
        roots.add(c)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    // Every handshake a full one: with tickets, all but the first of a
    // run would skip the certificate and its signature.
    tls.resumption = rustls::client::Resumption::disabled();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(120).try_into()?));
    // Windows large enough that the client never limits a bulk transfer.
    transport.stream_receive_window((16u32 << 20).into());
    transport.receive_window((32u32 << 20).into());
    transport.send_window(32 << 20);
    config.transport_config(Arc::new(transport));
    let socket = tq_bench::udp_socket(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let mut ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    ep.set_default_client_config(config);
    Ok(ep)
}

async fn connect(ep: &quinn::Endpoint, addr: SocketAddr) -> anyhow::Result<Conn> {
    let quic = ep.connect(addr, "localhost")?.await?;
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(quic.clone())).await?;
    let driver = tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    Ok(Conn { send, quic, driver })
}

/// What came back: the status, how many body bytes, and the first few of
/// them (enough for `/discard`'s count).
struct Answer {
    status: u16,
    len: u64,
    head: Vec<u8>,
}

/// Sends one request (with `upload` bytes of body) and reads the answer.
async fn exchange(
    send: &mut h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    method: &str,
    path: &str,
    upload: u64,
) -> anyhow::Result<Answer> {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .body(())?;
    let mut stream = send.send_request(req).await?;
    let block = tq_bench::block();
    let mut left = upload;
    while left > 0 {
        let take = left.min(block.len() as u64) as usize;
        stream.send_data(block.slice(..take)).await?;
        left -= take as u64;
    }
    stream.finish().await?;
    let resp = stream.recv_response().await?;
    let (mut len, mut head) = (0u64, Vec::new());
    while let Some(chunk) = stream.recv_data().await? {
        len += chunk.remaining() as u64;
        if head.len() < 32 {
            let c = chunk.chunk();
            head.extend_from_slice(&c[..c.len().min(32 - head.len())]);
        }
    }
    Ok(Answer {
        status: resp.status().as_u16(),
        len,
        head,
    })
}

/// A body-less request: the status and how many body bytes came back.
async fn request(
    send: &mut h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    method: &str,
    path: &str,
) -> anyhow::Result<(u16, u64)> {
    let a = exchange(send, method, path, 0).await?;
    Ok((a.status, a.len))
}

/// Uploads `bytes` to `POST /discard`; returns the status and the count
/// the server answered.
async fn discard(
    send: &mut h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    bytes: u64,
) -> anyhow::Result<(u16, u64)> {
    let a = exchange(send, "POST", "/discard", bytes).await?;
    let counted = String::from_utf8_lossy(&a.head)
        .trim()
        .parse()
        .unwrap_or(u64::MAX);
    Ok((a.status, counted))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ep = endpoint(&args.ca)?;
    let limit = Duration::from_secs(args.timeout_secs);
    let report = tokio::time::timeout(limit, async {
        anyhow::Ok(match args.scenario {
            Scenario::Probe { timeout_secs } => Some(probe(&ep, args.addr, timeout_secs).await?),
            Scenario::Small {
                conns,
                in_flight,
                requests,
                size,
            } => Some(small(&ep, args.addr, conns, in_flight, requests, size).await?),
            Scenario::Download { bytes } => Some(bulk(&ep, args.addr, bytes, false).await?),
            Scenario::Upload { bytes } => Some(bulk(&ep, args.addr, bytes, true).await?),
            Scenario::Handshakes { count, parallel } => {
                Some(handshakes(&ep, args.addr, count, parallel).await?)
            }
            Scenario::Idle { conns } => {
                let (report, held) = idle(&ep, args.addr, conns).await?;
                println!("{}", serde_json::to_string(&report)?);
                // Hold the connections until the harness has read the server's
                // memory and closes our standard input.
                let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
                while lines.next_line().await?.is_some() {}
                drop(held);
                return Ok(None);
            }
        })
    })
    .await
    .map_err(|_| anyhow::anyhow!("gave up after {} s", args.timeout_secs))??;
    let Some(report) = report else {
        return Ok(());
    };
    println!("{}", serde_json::to_string(&report)?);
    ep.close(0u32.into(), b"");
    Ok(())
}

async fn probe(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    timeout_secs: u64,
) -> anyhow::Result<LoadReport> {
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(2), async {
            let mut c = connect(ep, addr).await?;
            request(&mut c.send, "GET", "/bytes/1").await
        })
        .await;
        match attempt {
            Ok(Ok((200, 1))) => {
                return Ok(LoadReport {
                    done: 1,
                    ..Default::default()
                })
            }
            Ok(Ok((status, n))) => bail!("GET /bytes/1 answered {status} with {n} bytes"),
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(Err(e)) => return Err(e.context("the server never answered")),
            Err(_) => bail!("the server never answered within {timeout_secs} s"),
        }
    }
}

async fn small(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    conns: usize,
    in_flight: usize,
    requests: u64,
    size: u64,
) -> anyhow::Result<LoadReport> {
    let mut held = Vec::new();
    for _ in 0..conns {
        held.push(connect(ep, addr).await?);
    }
    let workers = (conns * in_flight) as u64;
    let path = format!("/bytes/{size}");
    let cpu = own_cpu_seconds();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let mut send = held[w as usize % conns].send.clone();
        let n = requests / workers + u64::from(w < requests % workers);
        let path = path.clone();
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(n as usize);
            let mut failed = 0u64;
            for _ in 0..n {
                let t = Instant::now();
                match request(&mut send, "GET", &path).await {
                    Ok((200, got)) if got == size => {
                        lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32)
                    }
                    other => {
                        failed += 1;
                        if failed <= 3 {
                            eprintln!("bench-load: GET {path}: {other:?}");
                        }
                    }
                }
            }
            (lat, failed)
        });
    }
    let mut lat = Vec::with_capacity(requests as usize);
    let mut failed = 0;
    while let Some(r) = tasks.join_next().await {
        let (l, f) = r?;
        lat.extend(l);
        failed += f;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu_secs = own_cpu_seconds() - cpu;
    lat.sort_unstable();
    Ok(LoadReport {
        done: lat.len() as u64,
        failed,
        bytes: lat.len() as u64 * size,
        secs,
        p50_us: percentile(&lat, 50.0),
        p99_us: percentile(&lat, 99.0),
        cpu_secs,
    })
}

async fn bulk(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    bytes: u64,
    upload: bool,
) -> anyhow::Result<LoadReport> {
    let mut c = connect(ep, addr).await?;
    let cpu = own_cpu_seconds();
    let start = Instant::now();
    let (status, got) = if upload {
        let (status, counted) = discard(&mut c.send, bytes).await?;
        if counted != bytes {
            bail!("the server counted {counted} bytes of the {bytes} sent");
        }
        (status, counted)
    } else {
        request(&mut c.send, "GET", &format!("/bytes/{bytes}")).await?
    };
    let secs = start.elapsed().as_secs_f64();
    let cpu_secs = own_cpu_seconds() - cpu;
    if status != 200 {
        bail!("the server answered {status}");
    }
    if !upload && got != bytes {
        bail!("downloaded {got} bytes of {bytes}");
    }
    Ok(LoadReport {
        done: 1,
        bytes,
        secs,
        cpu_secs,
        ..Default::default()
    })
}

async fn handshakes(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    count: u64,
    parallel: u64,
) -> anyhow::Result<LoadReport> {
    let cpu = own_cpu_seconds();
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..parallel.max(1) {
        let ep = ep.clone();
        let next = next.clone();
        tasks.spawn(async move {
            let (mut done, mut failed) = (0u64, 0u64);
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count {
                let one = async {
                    let mut c = connect(&ep, addr).await?;
                    request(&mut c.send, "GET", "/bytes/100").await
                };
                match one.await {
                    Ok((200, 100)) => done += 1,
                    other => {
                        failed += 1;
                        if failed <= 3 {
                            eprintln!("bench-load: handshake + GET: {other:?}");
                        }
                    }
                }
            }
            (done, failed)
        });
    }
    let (mut done, mut failed) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let (d, f) = r?;
        done += d;
        failed += f;
    }
    Ok(LoadReport {
        done,
        failed,
        secs: start.elapsed().as_secs_f64(),
        cpu_secs: own_cpu_seconds() - cpu,
        ..Default::default()
    })
}

async fn idle(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    conns: u64,
) -> anyhow::Result<(LoadReport, Vec<Conn>)> {
    let start = Instant::now();
    let mut held = Vec::with_capacity(conns as usize);
    let mut tasks = tokio::task::JoinSet::new();
    let mut opened = 0;
    // 100 handshakes at a time: enough to be quick, few enough that no
    // server sees a burst it would answer with Retry or refuse.
    while opened < conns || !tasks.is_empty() {
        while opened < conns && tasks.len() < 100 {
            let ep = ep.clone();
            tasks.spawn(async move {
                let mut c = connect(&ep, addr).await?;
                match request(&mut c.send, "GET", "/bytes/100").await? {
                    (200, 100) => anyhow::Ok(c),
                    other => bail!("GET /bytes/100: {other:?}"),
                }
            });
            opened += 1;
        }
        if let Some(r) = tasks.join_next().await {
            held.push(r?.context("opening an idle connection")?);
        }
    }
    let report = LoadReport {
        done: held.len() as u64,
        secs: start.elapsed().as_secs_f64(),
        ..Default::default()
    };
    Ok((report, held))
}
