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
use crate::quic::{ConnectionParams, QuicSettings};

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
        Some(dir) => urls
            .iter()
            .map(|u| file_name(u.path()).map(|n| Output::File(dir.join(n))))
            .collect::<anyhow::Result<_>>()?,
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

    let settings = QuicSettings {
        max_idle_timeout: args.timeout,
        ..Default::default()
    };
    let mut params = ConnectionParams::new_client(settings).verify_peer(!args.insecure);
    if let Some(ca) = &args.ca {
        params = params.ca_file(ca);
    }
    // The timeout bounds connecting and waiting for the response head,
    // and is the connection's idle timeout; a body that keeps flowing may
    // take as long as it takes (a 10 GiB download is not cut at 10 s).
    let client = match tokio::time::timeout(
        args.timeout,
        H3Client::connect(addr, host, &params, Http3Settings::default()),
    )
    .await
    {
        Err(_) => {
            return Err(fail(
                exit::TIMEOUT,
                anyhow::anyhow!("no connection to {addr} within {:?}", args.timeout),
            ))
        }
        Ok(Err(e)) => return Err(fail(exit::CONNECT, anyhow::Error::new(e))),
        Ok(Ok(c)) => c,
    };
    let connect = started.elapsed();
    let request = Request {
        handle: client.handle().clone(),
        method,
        authority: url
            .authority()
            .map_or_else(String::new, |a| a.as_str().to_owned()),
        headers: args.headers.clone(),
        body,
        include: args.include || args.head,
        timeout: args.timeout,
        // One progress line makes sense for one transfer.
        progress: urls.len() == 1 && !args.silent,
        started,
    };
    // Every URL at once on the connection; the answers in URL order.
    let mut fetches = tokio::task::JoinSet::new();
    for (i, (u, out)) in urls.iter().zip(outputs).enumerate() {
        let path = u.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let request = request.clone();
        fetches.spawn(async move { (i, request.fetch(&path, out).await) });
    }
    let mut results: Vec<Option<anyhow::Result<Timings>>> = (0..urls.len()).map(|_| None).collect();
    while let Some(done) = fetches.join_next().await {
        let (i, r) = done.context("a transfer's task failed")?;
        results[i] = Some(r);
    }
    client.handle().close(crate::http3::H3_NO_ERROR, "");
    // Let the CONNECTION_CLOSE go out before the process exits.
    let _ = tokio::time::timeout(Duration::from_secs(1), client.connection().closed()).await;
    let mut first_error = None;
    for (u, r) in urls.iter().zip(results) {
        let r = r.unwrap_or_else(|| Err(anyhow::anyhow!("not fetched")));
        match r {
            Ok(mut t) => {
                t.connect = connect;
                if let Some(format) = &args.write_out {
                    print!("{}", write_out(format, &t));
                }
                if t.status >= 400 && first_error.is_none() {
                    let what = if urls.len() > 1 {
                        format!("{u}: server answered {}", t.status)
                    } else {
                        format!("server answered {}", t.status)
                    };
                    first_error = Some(fail(exit::HTTP, anyhow::anyhow!(what)));
                }
            }
            Err(e) => {
                if urls.len() > 1 {
                    eprintln!("tq-host get: {u}: {e:#}");
                }
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
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

/// What every transfer of one invocation shares.
#[derive(Clone)]
struct Request {
    handle: crate::http3::H3Handle,
    method: String,
    authority: String,
    headers: Vec<(String, String)>,
    body: Option<Bytes>,
    include: bool,
    timeout: Duration,
    progress: bool,
    started: Instant,
}

impl Request {
    /// One request for `path`, its answer written to `out`: the figures
    /// for `-w` (`connect` left for the caller), or why it failed.
    async fn fetch(&self, path: &str, out: Output) -> anyhow::Result<Timings> {
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
        let stream = self
            .handle
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
