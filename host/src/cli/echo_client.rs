//! `tq-host echo`: a small client for the built-in echo application, so a
//! user can try a server with nothing else installed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use crate::metrics::DefaultMetrics;
use crate::quic::{self, ApplicationOverQuic, ConnectionParams, QuicResult, QuicSettings};

/// Flags of `tq-host echo`.
#[derive(Debug, Args, Clone)]
pub(super) struct EchoArgs {
    /// Server address.
    #[arg(value_name = "ADDR", default_value = "127.0.0.1:4433")]
    server: SocketAddr,

    /// Text to send.
    #[arg(long, short = 'm', default_value = "hello, tq-host")]
    message: String,

    /// Server name for SNI and certificate checks. Default: localhost.
    #[arg(long, default_value = "localhost")]
    server_name: String,

    /// Trust this PEM CA file (e.g. the server's self-signed cert.pem).
    #[arg(long, value_name = "PEM", conflicts_with = "insecure")]
    ca: Option<PathBuf>,

    /// Do not verify the server's certificate.
    #[arg(long, short = 'k')]
    insecure: bool,

    /// Application protocol (ALPN) to offer. Default: tq-echo.
    #[arg(long, value_name = "NAME", default_value = "tq-echo")]
    alpn: String,

    /// Give up after this long, e.g. `5s`.
    #[arg(long, default_value = "5s", value_parser = humantime_serde::re::humantime::parse_duration)]
    timeout: Duration,
}

pub(super) async fn run(args: EchoArgs) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(crate::quic::any_local_for(args.server))
        .await
        .context("cannot bind a UDP socket")?;
    socket
        .connect(args.server)
        .await
        .with_context(|| format!("cannot reach {}", args.server))?;
    let settings = QuicSettings {
        alpn: vec![args.alpn.clone()],
        max_idle_timeout: args.timeout,
        ..Default::default()
    };
    let mut params = ConnectionParams::new_client(settings).verify_peer(!args.insecure);
    if let Some(ca) = &args.ca {
        params = params.ca_file(ca);
    }
    let (tx, rx) = oneshot::channel();
    let app = OneShotEcho {
        message: args.message.clone().into_bytes(),
        sent: 0,
        received: Vec::new(),
        done: Some(tx),
    };
    let start = Instant::now();
    let handle = tokio::time::timeout(
        args.timeout,
        quic::connect_with_config(
            socket,
            Some(&args.server_name),
            &params,
            app,
            DefaultMetrics::default(),
        ),
    )
    .await
    .context("timed out connecting")??;
    let reply = tokio::time::timeout(args.timeout, rx)
        .await
        .context("timed out waiting for the echo")?
        .context("connection ended before the echo arrived")?;
    println!("{}", String::from_utf8_lossy(&reply));
    eprintln!(
        "echoed {} bytes in {:?} (trace id {})",
        reply.len(),
        start.elapsed(),
        handle.trace_id()
    );
    if reply != args.message.as_bytes() {
        bail!("the echo differs from what was sent");
    }
    Ok(())
}

/// Sends one message on stream 0 and collects the echo.
struct OneShotEcho {
    message: Vec<u8>,
    sent: usize,
    received: Vec<u8>,
    done: Option<oneshot::Sender<Vec<u8>>>,
}

impl ApplicationOverQuic for OneShotEcho {
    async fn wait_for_data(&mut self, _q: &mut quiche::Connection) -> QuicResult<()> {
        std::future::pending().await
    }

    fn process_reads(&mut self, q: &mut quiche::Connection) -> QuicResult<()> {
        let mut buf = [0u8; 4096];
        if !q.stream_readable(0) {
            return Ok(());
        }
        loop {
            match q.stream_recv(0, &mut buf) {
                Ok((n, fin)) => {
                    self.received.extend_from_slice(&buf[..n]);
                    if fin {
                        if let Some(tx) = self.done.take() {
                            let _ = tx.send(std::mem::take(&mut self.received));
                        }
                        q.close(true, 0, b"done")?;
                        return Ok(());
                    }
                }
                Err(quiche::Error::Done) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn process_writes(&mut self, q: &mut quiche::Connection) -> QuicResult<()> {
        if self.sent < self.message.len() || self.sent == 0 {
            match q.stream_send(0, &self.message[self.sent..], true) {
                Ok(n) => self.sent += n.max(1),
                Err(quiche::Error::Done) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
