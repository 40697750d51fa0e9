//! `tq-host get URL`: fetches a URL over HTTP/3 and prints the body, so a
//! user can try a server without other tools.

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;

use crate::http3::{H3Client, Http3Settings, NameValue};
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

    /// Give up after this long, e.g. `10s`.
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
    let work = async {
        let client = H3Client::connect(addr, host, &params, Http3Settings::default()).await?;
        let resp = client
            .request(&method, path, body)
            .await
            .map_err(anyhow::Error::msg)?;
        client.handle().close(crate::http3::H3_NO_ERROR, "");
        // Let the CONNECTION_CLOSE go out before the process exits.
        let _ = tokio::time::timeout(Duration::from_secs(1), client.connection().closed()).await;
        anyhow::Ok(resp)
    };
    let resp = tokio::time::timeout(args.timeout, work)
        .await
        .context("timed out")??;
    if args.include {
        eprintln!("HTTP/3 {}", resp.status);
        for h in &resp.headers {
            if h.name() != b":status" {
                eprintln!(
                    "{}: {}",
                    String::from_utf8_lossy(h.name()),
                    String::from_utf8_lossy(h.value())
                );
            }
        }
        eprintln!();
    }
    use std::io::Write;
    std::io::stdout()
        .write_all(&resp.body)
        .context("cannot write to standard output")?;
    if !(200..400).contains(&resp.status) {
        bail!("server answered {}", resp.status);
    }
    Ok(())
}
