//! `tq-host get URL`: fetches a URL over HTTP/3 and prints the body, so a
//! user can try a server without other tools.

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;

use crate::http3::{H3Client, Header, Http3Settings, InboundFrame, NameValue};
use crate::quic::{ConnectionParams, QuicSettings};

/// Flags of `tq-host get`.
#[derive(Debug, Args, Clone)]
pub(super) struct GetArgs {
    /// The URL, e.g. `https://127.0.0.1:4433/`.
    url: String,

    /// Send this as the body with POST; `@FILE` reads it from a file, `@-`
    /// from standard input.
    #[arg(long, short = 'd', value_name = "DATA")]
    data: Option<String>,

    /// Method (default: GET, or POST with --data).
    #[arg(long, short = 'X')]
    method: Option<String>,

    /// Print the status and response headers to stderr.
    #[arg(long, short = 'i')]
    include: bool,

    /// Trust this PEM CA file (e.g. the server's self-signed cert.pem).
    #[arg(long, value_name = "PEM", conflicts_with = "insecure")]
    ca: Option<PathBuf>,

    /// Do not verify the server's certificate.
    #[arg(long, short = 'k')]
    insecure: bool,

    /// Give up when connecting, or waiting for the response head, or any
    /// silence on the connection, lasts this long, e.g. `10s`. The body is
    /// streamed to standard output as it arrives, however long it takes.
    #[arg(long, default_value = "10s", value_parser = humantime_serde::re::humantime::parse_duration)]
    timeout: Duration,
}

pub(super) async fn run(args: GetArgs) -> anyhow::Result<()> {
    let url: http::Uri = args
        .url
        .parse()
        .with_context(|| format!("invalid URL {}", args.url))?;
    if url.scheme_str() != Some("https") {
        bail!("only https:// URLs can be fetched over HTTP/3");
    }
    let host = url.host().context("the URL has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_u16().unwrap_or(443);
    let addr = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    let path = url.path_and_query().map(|p| p.as_str()).unwrap_or("/");

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
        if body.is_some() {
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
    let client = tokio::time::timeout(
        args.timeout,
        H3Client::connect(addr, host, &params, Http3Settings::default()),
    )
    .await
    .context("timed out connecting")??;
    let mut h = vec![
        Header::new(b":method", method.as_bytes()),
        Header::new(b":scheme", b"https"),
        Header::new(b":authority", authority(&url).as_bytes()),
        Header::new(b":path", path.as_bytes()),
    ];
    if let Some(b) = &body {
        h.push(Header::new(
            b"content-length",
            b.len().to_string().as_bytes(),
        ));
    }
    let stream = client
        .handle()
        .send_request(h, body.is_some())
        .await
        .map_err(anyhow::Error::msg)?;
    let mut rx = stream.response;
    // The upload runs on its own task, ended once the response is: a
    // server may answer (or fail) without reading the whole body.
    let body_tx = stream.body;
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
    let recv = async {
        use tokio::io::AsyncWriteExt;
        let mut out = tokio::io::stdout();
        let mut status = None;
        loop {
            let frame = if status.is_none() {
                tokio::time::timeout(args.timeout, rx.recv())
                    .await
                    .context("timed out waiting for the response")?
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
                        .context("response without :status")?;
                    if (100..200).contains(&s) {
                        continue;
                    }
                    status = Some(s);
                    if args.include {
                        eprintln!("HTTP/3 {s}");
                        for f in h.iter().filter(|f| f.name() != b":status") {
                            eprintln!(
                                "{}: {}",
                                String::from_utf8_lossy(f.name()),
                                String::from_utf8_lossy(f.value())
                            );
                        }
                        eprintln!();
                    }
                }
                Some(InboundFrame::Headers(_)) => {} // trailers
                Some(InboundFrame::Body(b)) => out
                    .write_all(&b)
                    .await
                    .context("cannot write to standard output")?,
                Some(InboundFrame::Finished) => break,
                Some(InboundFrame::Reset(code)) => {
                    bail!("the server reset the response (code {code:#x})")
                }
                None => bail!("the connection closed before the response ended"),
            }
        }
        out.flush()
            .await
            .context("cannot write to standard output")?;
        status.context("response without headers")
    };
    let status = recv.await;
    send.abort();
    client.handle().close(crate::http3::H3_NO_ERROR, "");
    // Let the CONNECTION_CLOSE go out before the process exits.
    let _ = tokio::time::timeout(Duration::from_secs(1), client.connection().closed()).await;
    let status = status?;
    if !(200..400).contains(&status) {
        bail!("server answered {status}");
    }
    Ok(())
}

/// `host[:port]` as the URL gave it.
fn authority(url: &http::Uri) -> String {
    url.authority()
        .map_or_else(String::new, |a| a.as_str().to_owned())
}
