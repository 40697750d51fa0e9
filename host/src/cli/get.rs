//! `tq-host get URL...`: fetches URLs over HTTP/3 the way curl does, so a
//! user can try a server without other tools: the body streams to standard
//! output (or `-o FILE`; several URLs go at once over one connection, each
//! to a file in `--output-dir`), `-H` adds headers, `-I` asks for the head
//! only, `-w` prints timings, and the exit code tells a connection failure
//! from an HTTP error.

use std::io::IsTerminal;
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use tokio::io::AsyncWriteExt;

use super::Failure;
use crate::http3::{H3Client, Header, Http3Settings, InboundFrame, NameValue};
use crate::metrics::DefaultMetrics;
use crate::quic::{ConnectionParams, Connector, QuicSettings};

/// Flags of `tq-host get`.
#[derive(Debug, Args, Clone)]
pub(super) struct GetArgs {
    /// The URL, e.g. `https://127.0.0.1:4433/`. Several URLs (of one
    /// server) are fetched at once over one connection, each body to a
    /// file in --output-dir.
    #[arg(required = true, value_name = "URL")]
    urls: Vec<String>,

    /// Send this as the body with POST; `@FILE` reads it from a file, `@-`
    /// from standard input.
    #[arg(long, short = 'd', value_name = "DATA")]
    data: Option<String>,

    /// Method (default: GET, HEAD with --head, or POST with --data).
    #[arg(long, short = 'X')]
    method: Option<String>,

    /// Add a request header, `-H 'name: value'`; repeatable.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,

    /// Print the status and response headers before the body (to the
    /// output, as curl does).
    #[arg(long, short = 'i')]
    include: bool,

    /// Ask for the head only (HEAD) and print the status and headers.
    #[arg(long = "head", short = 'I')]
    head: bool,

    /// Write the body to FILE instead of standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,

    /// Write each body to a file in DIR named after the URL's last path
    /// segment (`index.html` for a path ending in `/`); needed with
    /// several URLs.
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,

    /// Speak HTTP/0.9 over QUIC (ALPN `hq-interop`, the QUIC Interop
    /// Runner's protocol) instead of HTTP/3: `GET /path` per stream, the
    /// body as the answer; no methods, headers or status.
    #[arg(long, conflicts_with_all = ["data", "method", "headers", "include", "head"])]
    hq: bool,

    /// Open a connection per URL, one after the other, instead of one for
    /// all; the later ones resume the first's TLS session.
    #[arg(long, conflicts_with = "reconnect_after_first")]
    connection_per_url: bool,

    /// Fetch the first URL on a connection of its own, then the rest
    /// together on a second one, which resumes the first's TLS session
    /// (and, with --early-data, sends them in 0-RTT).
    #[arg(long)]
    reconnect_after_first: bool,

    /// On a resumed connection, send the requests in 0-RTT, before the
    /// handshake completes (only GET, HEAD, OPTIONS and TRACE go early).
    #[arg(long)]
    early_data: bool,

    /// After the transfer, print FORMAT to standard output with
    /// `%{http_code}`, `%{time_connect}`, `%{time_starttransfer}`,
    /// `%{time_total}` (seconds), `%{size_download}` (bytes),
    /// `%{speed_download}` (bytes/s) replaced, and `\n` as a newline,
    /// e.g. `-w '%{http_code} %{time_total}\n'`.
    #[arg(long = "write-out", short = 'w', value_name = "FORMAT")]
    write_out: Option<String>,

    /// No progress line (shown on a terminal while a body of over 1 MiB
    /// goes to a file or a pipe).
    #[arg(long, short = 's')]
    silent: bool,

    /// Trust this PEM CA file (e.g. the server's self-signed cert.pem).
    #[arg(long, value_name = "PEM", conflicts_with = "insecure")]
    ca: Option<PathBuf>,

    /// Do not verify the server's certificate.
    #[arg(long, short = 'k')]
    insecure: bool,

    /// Give up when connecting, or waiting for the response head, or any
    /// silence on the connection, lasts this long, e.g. `10s`. The body is
    /// streamed as it arrives, however long it takes.
    #[arg(long, default_value = "10s", value_parser = humantime_serde::re::humantime::parse_duration)]
    timeout: Duration,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((n, v)) if !n.trim().is_empty() => {
            Ok((n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        }
        _ => Err(format!("`{s}` is not `name: value`")),
    }
}

/// The exit codes, curl's where curl has one.
mod exit {
    /// The host name does not resolve.
    pub(super) const RESOLVE: u8 = 6;
    /// No connection: nothing answers, the handshake failed.
    pub(super) const CONNECT: u8 = 7;
    /// The server answered 400 or above.
    pub(super) const HTTP: u8 = 22;
    /// The body could not be written out.
    pub(super) const WRITE: u8 = 23;
    /// Too long without progress (`--timeout`).
    pub(super) const TIMEOUT: u8 = 28;
    /// The response was cut: reset, or the connection ended early.
    pub(super) const RECEIVE: u8 = 56;
}

fn fail(code: u8, error: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(Failure { code, error })
}

/// What `-w` reports.
#[derive(Default)]
struct Timings {
    connect: Duration,
    first_byte: Duration,
    total: Duration,
    size: u64,
    status: u16,
}

pub(super) async fn run(args: GetArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let urls: Vec<http::Uri> = args
        .urls
        .iter()
        .map(|u| u.parse().with_context(|| format!("invalid URL {u}")))
        .collect::<anyhow::Result<_>>()?;
    let url = &urls[0];
    for u in &urls {
        if u.scheme_str() != Some("https") {
            anyhow::bail!("only https:// URLs can be fetched over HTTP/3: {u}");
        }
        if u.authority() != url.authority() {
            anyhow::bail!(
                "several URLs go over one connection, so they must name the same server: {} and {}",
                url,
                u
            );
        }
    }
    if urls.len() > 1 && args.output_dir.is_none() {
        anyhow::bail!(
            "several URLs need --output-dir DIR: each body goes to a file of its own there"
        );
    }
    if args.output.is_some() && args.output_dir.is_some() {
        anyhow::bail!("give -o FILE or --output-dir DIR, not both");
    }
    let host = url.host().context("the URL has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_u16().unwrap_or(443);
    let addr = (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| fail(exit::RESOLVE, anyhow::anyhow!("cannot resolve {host}")))?;
    // Where each body goes, decided before connecting: a bad name fails
    // without touching the network.
    let outputs: Vec<Output> = match &args.output_dir {
        None => vec![args.output.clone().map_or(Output::Stdout, Output::File)],
        Some(dir) => {
            let names: Vec<String> = urls
                .iter()
                .map(|u| file_name(u.path()))
                .collect::<anyhow::Result<_>>()?;
            let mut seen = std::collections::HashSet::new();
            if let Some(twice) = names.iter().find(|n| !seen.insert(n.as_str())) {
                anyhow::bail!(
                    "two URLs would be saved as {twice} in --output-dir: give each its own name"
                );
            }
            names
                .into_iter()
                .map(|n| Output::File(dir.join(n)))
                .collect()
        }
    };

    let body = match args.data.as_deref() {
        None => None,
        Some("@-") => {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)
                .context("cannot read standard input")?;
            Some(Bytes::from(v))
        }
        Some(d) if d.starts_with('@') => {
            let p = &d[1..];
            Some(Bytes::from(
                std::fs::read(p).with_context(|| format!("cannot read {p}"))?,
            ))
        }
        Some(d) => Some(Bytes::from(d.to_owned())),
    };
    let method = args.method.clone().unwrap_or_else(|| {
        if args.head {
            "HEAD".into()
        } else if body.is_some() {
            "POST".into()
        } else {
            "GET".into()
        }
    });

    let alpn = if args.hq { "hq-interop" } else { "h3" };
    let settings = QuicSettings {
        max_idle_timeout: args.timeout,
        alpn: vec![alpn.into()],
        enable_early_data: args.early_data,
        // As curl and the QUIC Interop Runner's clients do: TLS secrets and
        // qlogs where the environment asks for them.
        keylog_file: std::env::var_os("SSLKEYLOGFILE").map(Into::into),
        qlog_dir: std::env::var_os("QLOGDIR").map(Into::into),
        ..Default::default()
    };
    let mut params = ConnectionParams::new_client(settings).verify_peer(!args.insecure);
    if let Some(ca) = &args.ca {
        params = params.ca_file(ca);
    }
    // One TLS context for every connection; with --connection-per-url the
    // later connections resume the first's session.
    let connector = Connector::new(params, DefaultMetrics::default())
        .map_err(|e| fail(exit::CONNECT, anyhow::Error::new(e)))?;
    let groups: Vec<Vec<usize>> = if args.connection_per_url {
        (0..urls.len()).map(|i| vec![i]).collect()
    } else if args.reconnect_after_first && urls.len() > 1 {
        vec![vec![0], (1..urls.len()).collect()]
    } else {
        vec![(0..urls.len()).collect()]
    };
    let mut outputs: Vec<Option<Output>> = outputs.into_iter().map(Some).collect();
    let mut results: Vec<Option<anyhow::Result<Timings>>> = (0..urls.len()).map(|_| None).collect();
    let authority = url
        .authority()
        .map_or_else(String::new, |a| a.as_str().to_owned());
    let mut unreachable: Option<anyhow::Error> = None;
    for group in groups {
        let mut out_of = |i: usize| outputs[i].take().unwrap_or(Output::Stdout);
        let paths: Vec<(usize, String, Output)> = group
            .iter()
            .map(|&i| {
                let path = urls[i]
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                (i, path, out_of(i))
            })
            .collect();
        if let Some(e) = &unreachable {
            // No connection last time: the server is not there; the rest
            // fail the same way at once rather than a timeout each.
            for (i, r) in fail_all(paths.iter().map(|(i, ..)| *i), e) {
                results[i] = Some(r);
            }
            continue;
        }
        let (ended, connected) = if args.hq {
            hq_group(&connector, addr, host, args.timeout, started, paths).await
        } else {
            let request = RequestShape {
                method: method.clone(),
                authority: authority.clone(),
                headers: args.headers.clone(),
                body: body.clone(),
                include: args.include || args.head,
                timeout: args.timeout,
                // One progress line makes sense for one transfer.
                progress: urls.len() == 1 && !args.silent,
                started,
            };
            h3_group(&connector, addr, host, request, paths).await
        };
        if !connected {
            unreachable = ended.iter().find_map(|(_, r)| r.as_ref().err()).map(again);
        }
        for (i, r) in ended {
            results[i] = Some(r);
        }
    }
    let mut first_error = None;
    let mut failures = 0;
    for (u, r) in urls.iter().zip(results) {
        let r = r.unwrap_or_else(|| Err(anyhow::anyhow!("not fetched")));
        match r {
            Ok(t) => {
                if let Some(format) = &args.write_out {
                    print!("{}", write_out(format, &t));
                }
                if t.status >= 400 {
                    failures += 1;
                    if urls.len() > 1 {
                        eprintln!("tq-host get: {u}: server answered {}", t.status);
                    }
                    first_error.get_or_insert_with(|| {
                        fail(exit::HTTP, anyhow::anyhow!("server answered {}", t.status))
                    });
                }
            }
            Err(e) => {
                failures += 1;
                if urls.len() > 1 {
                    eprintln!("tq-host get: {u}: {e:#}");
                }
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        None => Ok(()),
        Some(e) if urls.len() == 1 => Err(e),
        // Each failure was printed above: the summary keeps the first's
        // exit code.
        Some(e) => {
            let code = e.downcast_ref::<Failure>().map_or(1, |f| f.code);
            let failed = failures.max(1);
            Err(fail(
                code,
                anyhow::anyhow!("{failed} of {} URLs failed", urls.len()),
            ))
        }
    }
}

/// A connection to `addr` for `host` within `timeout`, or why not.
async fn connect_within<T, F: std::future::Future<Output = Result<T, crate::quic::QuicError>>>(
    timeout: Duration,
    addr: std::net::SocketAddr,
    connecting: F,
) -> anyhow::Result<T> {
    match tokio::time::timeout(timeout, connecting).await {
        Err(_) => Err(fail(
            exit::TIMEOUT,
            anyhow::anyhow!("no connection to {addr} within {timeout:?}"),
        )),
        Ok(Err(e)) => Err(fail(exit::CONNECT, anyhow::Error::new(e))),
        Ok(Ok(c)) => Ok(c),
    }
}

/// Fetches `paths` over one HTTP/3 connection, all at once; whether the
/// connection was made.
async fn h3_group(
    connector: &Connector<DefaultMetrics>,
    addr: std::net::SocketAddr,
    host: &str,
    shape: RequestShape,
    paths: Vec<(usize, String, Output)>,
) -> (Vec<(usize, anyhow::Result<Timings>)>, bool) {
    let connecting = H3Client::connect_with(connector, addr, host, Http3Settings::default());
    let client = match connect_within(shape.timeout, addr, connecting).await {
        Ok(c) => c,
        Err(e) => return (fail_all(paths.iter().map(|(i, ..)| *i), &e), false),
    };
    let connect = shape.started.elapsed();
    let handle = client.handle();
    // Every URL at once on the connection.
    let mut fetches = tokio::task::JoinSet::new();
    for (i, path, out) in paths {
        let (shape, handle) = (shape.clone(), handle.clone());
        fetches.spawn(async move { (i, shape.fetch(&handle, &path, out).await) });
    }
    let mut ended = Vec::new();
    while let Some(done) = fetches.join_next().await {
        match done {
            Ok((i, r)) => ended.push((
                i,
                r.map(|mut t| {
                    t.connect = connect;
                    t
                }),
            )),
            Err(e) => tracing::warn!(error = %e, "a transfer's task failed"),
        }
    }
    client.handle().close(crate::http3::H3_NO_ERROR, "");
    // Let the CONNECTION_CLOSE go out before the process exits.
    let _ = tokio::time::timeout(Duration::from_secs(1), client.connection().closed()).await;
    (ended, true)
}

/// Fetches `paths` over one HTTP/0.9 connection (ALPN hq-interop), all
/// at once; whether the connection was made.
async fn hq_group(
    connector: &Connector<DefaultMetrics>,
    addr: std::net::SocketAddr,
    host: &str,
    timeout: Duration,
    started: Instant,
    paths: Vec<(usize, String, Output)>,
) -> (Vec<(usize, anyhow::Result<Timings>)>, bool) {
    use super::hq_client::{Fetch, HqFetch, Sink, Why};
    let order: Vec<usize> = paths.iter().map(|(i, ..)| *i).collect();
    let failed = |e: &anyhow::Error| fail_all(order.iter().copied(), e);
    let fetches: Vec<Fetch> = paths
        .into_iter()
        .map(|(_, path, out)| Fetch {
            path,
            sink: match out {
                Output::Stdout => Sink::Stdout,
                Output::File(p) => Sink::Path(p),
            },
        })
        .collect();
    let socket = match tokio::net::UdpSocket::bind(crate::quic::any_local_for(addr)).await {
        Ok(s) => s,
        Err(e) => {
            let e = fail(exit::CONNECT, anyhow::anyhow!("cannot bind: {e}"));
            return (failed(&e), false);
        }
    };
    if let Err(e) = socket.connect(addr).await {
        let e = fail(exit::CONNECT, anyhow::anyhow!("cannot reach {addr}: {e}"));
        return (failed(&e), false);
    }
    let (app, answers) = HqFetch::new(fetches, timeout);
    let handle =
        match connect_within(timeout, addr, connector.connect(socket, Some(host), app)).await {
            Ok(h) => h,
            Err(e) => return (failed(&e), false),
        };
    let connect = started.elapsed();
    // The app reports when every answer has ended, or when the connection
    // does (it goes with the connection).
    let Ok(outcomes) = answers.await else {
        let e = fail(
            exit::RECEIVE,
            anyhow::anyhow!("the connection ended before the answers"),
        );
        return (failed(&e), true);
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), handle.closed()).await;
    let ended = order
        .into_iter()
        .zip(outcomes)
        .map(|(i, o)| {
            let r = match o {
                Ok(size) => Ok(Timings {
                    connect,
                    first_byte: connect,
                    total: started.elapsed(),
                    size,
                    status: 200,
                }),
                Err(Why::Write(m)) => Err(fail(exit::WRITE, anyhow::anyhow!(m))),
                Err(Why::Cut(m)) => Err(fail(exit::RECEIVE, anyhow::anyhow!(m))),
                Err(Why::Timeout(m)) => Err(fail(exit::TIMEOUT, anyhow::anyhow!(m))),
            };
            (i, r)
        })
        .collect();
    (ended, true)
}

/// A copy of `e` with the same exit code (anyhow errors do not clone).
fn again(e: &anyhow::Error) -> anyhow::Error {
    let code = e.downcast_ref::<Failure>().map_or(1, |f| f.code);
    fail(code, anyhow::anyhow!("{e:#}"))
}

/// The same failure for every URL of a group (by index).
fn fail_all(
    indices: impl IntoIterator<Item = usize>,
    e: &anyhow::Error,
) -> Vec<(usize, anyhow::Result<Timings>)> {
    indices.into_iter().map(|i| (i, Err(again(e)))).collect()
}

/// Where one body goes.
enum Output {
    Stdout,
    File(PathBuf),
}

/// The file name `--output-dir` gives a URL's body: its path's last
/// segment, or `index.html` for a path ending in `/`. A name that would
/// leave the directory is refused.
fn file_name(path: &str) -> anyhow::Result<String> {
    let last = path.rsplit('/').next().unwrap_or_default();
    let name = if last.is_empty() { "index.html" } else { last };
    if name == "." || name == ".." || name.contains(['\\', '\0']) {
        anyhow::bail!("{path}: no file name to save it under in --output-dir");
    }
    Ok(name.to_owned())
}

/// What every HTTP/3 transfer of one invocation shares.
#[derive(Clone)]
struct RequestShape {
    method: String,
    authority: String,
    headers: Vec<(String, String)>,
    body: Option<Bytes>,
    include: bool,
    timeout: Duration,
    progress: bool,
    started: Instant,
}

impl RequestShape {
    /// One request for `path`, its answer written to `out`: the figures
    /// for `-w` (`connect` left for the caller), or why it failed.
    async fn fetch(
        &self,
        handle: &crate::http3::H3Handle,
        path: &str,
        out: Output,
    ) -> anyhow::Result<Timings> {
        let started = self.started;
        let mut timings = Timings::default();
        let mut h = vec![
            Header::new(b":method", self.method.as_bytes()),
            Header::new(b":scheme", b"https"),
            Header::new(b":authority", self.authority.as_bytes()),
            Header::new(b":path", path.as_bytes()),
            Header::new(
                b"user-agent",
                concat!("tq-host/", env!("CARGO_PKG_VERSION")).as_bytes(),
            ),
        ];
        if let Some(b) = &self.body {
            h.push(Header::new(
                b"content-length",
                b.len().to_string().as_bytes(),
            ));
        }
        for (n, v) in &self.headers {
            h.push(Header::new(n.as_bytes(), v.as_bytes()));
        }
        let stream = handle
            .send_request(h, self.body.is_some())
            .await
            .map_err(|e| fail(exit::CONNECT, anyhow::Error::new(e)))?;
        let mut rx = stream.response;
        // The upload runs on its own task, ended once the response is: a
        // server may answer (or fail) without reading the whole body.
        let body_tx = stream.body;
        let body = self.body.clone();
        let send = tokio::spawn(async move {
            if let (Some(tx), Some(mut rest)) = (body_tx, body) {
                // 64 KiB at a time: the driver's channel bounds what waits.
                while rest.len() > 64 * 1024 {
                    if tx.send_body(rest.split_to(64 * 1024), false).await.is_err() {
                        return;
                    }
                }
                let _ = tx.send_body(rest, true).await;
            }
        });
        let to_terminal = matches!(out, Output::Stdout) && std::io::stdout().is_terminal();
        let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &out {
            Output::File(p) => Box::new(tokio::fs::File::create(p).await.map_err(|e| {
                fail(
                    exit::WRITE,
                    anyhow::anyhow!("cannot create {}: {e}", p.display()),
                )
            })?),
            Output::Stdout => Box::new(tokio::io::stdout()),
        };
        let show_progress = self.progress && !to_terminal && std::io::stderr().is_terminal();
        let mut progress = Progress::new(show_progress);
        let recv = async {
            let write_err = |e: std::io::Error| {
                fail(exit::WRITE, anyhow::anyhow!("cannot write the body: {e}"))
            };
            let mut status = None;
            let mut length = None;
            loop {
                let frame = if status.is_none() {
                    tokio::time::timeout(self.timeout, rx.recv())
                        .await
                        .map_err(|_| {
                            fail(
                                exit::TIMEOUT,
                                anyhow::anyhow!("no response within {:?}", self.timeout),
                            )
                        })?
                } else {
                    rx.recv().await
                };
                match frame {
                    Some(InboundFrame::Headers(h)) if status.is_none() => {
                        let s = h
                            .iter()
                            .find(|f| f.name() == b":status")
                            .and_then(|f| std::str::from_utf8(f.value()).ok())
                            .and_then(|v| v.parse::<u16>().ok())
                            .ok_or_else(|| {
                                fail(exit::RECEIVE, anyhow::anyhow!("response without :status"))
                            })?;
                        if (100..200).contains(&s) {
                            continue;
                        }
                        status = Some(s);
                        timings.first_byte = started.elapsed();
                        length = h
                            .iter()
                            .find(|f| f.name() == b"content-length")
                            .and_then(|f| std::str::from_utf8(f.value()).ok())
                            .and_then(|v| v.parse::<u64>().ok());
                        if self.include {
                            let mut head = format!("HTTP/3 {s}\r\n");
                            for f in h.iter().filter(|f| f.name() != b":status") {
                                head.push_str(&format!(
                                    "{}: {}\r\n",
                                    String::from_utf8_lossy(f.name()),
                                    String::from_utf8_lossy(f.value())
                                ));
                            }
                            head.push_str("\r\n");
                            out.write_all(head.as_bytes()).await.map_err(write_err)?;
                        }
                    }
                    Some(InboundFrame::Headers(_)) => {} // trailers
                    Some(InboundFrame::Body(b)) => {
                        timings.size += b.len() as u64;
                        progress.update(timings.size, length, started);
                        out.write_all(&b).await.map_err(write_err)?;
                    }
                    Some(InboundFrame::Finished) => break,
                    Some(InboundFrame::Reset(code)) => {
                        return Err(fail(
                            exit::RECEIVE,
                            anyhow::anyhow!("the server reset the response (code {code:#x})"),
                        ))
                    }
                    None => {
                        return Err(fail(
                            exit::RECEIVE,
                            anyhow::anyhow!("the connection closed before the response ended"),
                        ))
                    }
                }
            }
            out.flush().await.map_err(write_err)?;
            status.ok_or_else(|| fail(exit::RECEIVE, anyhow::anyhow!("response without headers")))
        };
        let status = recv.await;
        progress.finish();
        send.abort();
        timings.status = status?;
        timings.total = started.elapsed();
        Ok(timings)
    }
}

/// `-w`'s format with the transfer's figures.
fn write_out(format: &str, t: &Timings) -> String {
    let secs = |d: Duration| format!("{:.6}", d.as_secs_f64());
    let speed = t.size as f64 / t.total.as_secs_f64().max(1e-9);
    format
        .replace("%{http_code}", &t.status.to_string())
        .replace("%{time_connect}", &secs(t.connect))
        .replace("%{time_starttransfer}", &secs(t.first_byte))
        .replace("%{time_total}", &secs(t.total))
        .replace("%{size_download}", &t.size.to_string())
        .replace("%{speed_download}", &format!("{speed:.0}"))
        .replace("\\n", "\n")
        .replace("\\t", "\t")
}

/// A progress line on stderr, redrawn at most every 200 ms, for bodies of
/// over 1 MiB.
struct Progress {
    on: bool,
    last: Option<Instant>,
    drawn: bool,
}

impl Progress {
    fn new(on: bool) -> Self {
        Self {
            on,
            last: None,
            drawn: false,
        }
    }

    fn update(&mut self, got: u64, total: Option<u64>, started: Instant) {
        if !self.on || got < (1 << 20) {
            return;
        }
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_millis(200))
        {
            return;
        }
        self.last = Some(now);
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        let rate = mib(got) / started.elapsed().as_secs_f64().max(1e-9);
        let of = total.map_or_else(String::new, |t| {
            format!(
                " of {:.1} MiB ({:.0}%)",
                mib(t),
                100.0 * got as f64 / t.max(1) as f64
            )
        });
        eprint!("\r{:.1} MiB{of}, {rate:.1} MiB/s   ", mib(got));
        self.drawn = true;
    }

    fn finish(&mut self) {
        if self.drawn {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_out_fills_the_variables() {
        let t = Timings {
            connect: Duration::from_millis(2),
            first_byte: Duration::from_millis(3),
            total: Duration::from_secs(2),
            size: 1000,
            status: 200,
        };
        assert_eq!(
            write_out(
                "%{http_code} %{size_download} %{speed_download} %{time_connect}\\n",
                &t
            ),
            "200 1000 500 0.002000\n"
        );
    }

    #[test]
    fn headers_parse_as_name_colon_value() {
        assert_eq!(
            parse_header("X-Test:  a b ").unwrap(),
            ("x-test".into(), "a b".into())
        );
        assert!(parse_header("nocolon").is_err());
        assert!(parse_header(": v").is_err());
    }
}
