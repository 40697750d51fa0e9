//! The tokio-quiche peer: Cloudflare's tokio bridge for quiche serving the
//! shared handler (see the crate docs) with its ready-made `ServerH3Driver`,
//! one task per connection as its own example server does. Small answers
//! are written from the connection's task; long ones (and `/discard`, which
//! reads the request body) get a task of their own.
//!
//! `tokio-quiche-server --listen 127.0.0.1:4433 --cert cert.pem --key key.pem`

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use tokio_quiche::http3::driver::{
    H3Event, InboundFrame, IncomingH3Headers, OutboundFrame, OutboundFrameSender, ServerH3Event,
};
use tokio_quiche::http3::settings::Http3Settings;
use tokio_quiche::metrics::DefaultMetrics;
use tokio_quiche::quiche::h3::{self, NameValue};
use tokio_quiche::settings::{CertificateKind, Hooks, QuicSettings, TlsCertificatePaths};
use tokio_quiche::{ConnectionParams, ServerH3Driver};
use tq_bench::{route, Route};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = tq_bench::ServerArgs::parse();
    let socket = tokio::net::UdpSocket::from_std(tq_bench::udp_socket(args.listen)?)?;
    let local = socket.local_addr()?;
    let mut settings = QuicSettings::default();
    settings.max_idle_timeout = Some(Duration::from_secs(args.idle_secs));
    // No Retry, as tq-host runs here (--no-retry): the same round trips.
    settings.disable_client_ip_validation = true;
    let cert = args.cert.to_str().context("certificate path")?;
    let key = args.key.to_str().context("key path")?;
    let mut listeners = tokio_quiche::listen(
        [socket],
        ConnectionParams::new_server(
            settings,
            TlsCertificatePaths {
                cert,
                private_key: key,
                kind: CertificateKind::X509,
            },
            Hooks::default(),
        ),
        DefaultMetrics,
    )?;
    eprintln!("tokio-quiche-server: listening on {local}");
    let block = tq_bench::block();
    let accept = &mut listeners[0];
    while let Some(conn) = accept.next().await {
        match conn {
            Ok(conn) => {
                let (driver, mut controller) = ServerH3Driver::new(Http3Settings::default());
                conn.start(driver);
                let block = block.clone();
                tokio::spawn(async move {
                    let events = controller.event_receiver_mut();
                    while let Some(event) = events.recv().await {
                        match event {
                            ServerH3Event::Headers {
                                incoming_headers, ..
                            } => headers(incoming_headers, &block).await,
                            ServerH3Event::Core(
                                H3Event::ConnectionShutdown(_) | H3Event::ConnectionError(_),
                            ) => break,
                            ServerH3Event::Core(_) => {}
                        }
                    }
                });
            }
            Err(e) => eprintln!("tokio-quiche-server: connection refused: {e}"),
        }
    }
    Ok(())
}

async fn headers(h: IncomingH3Headers, block: &Bytes) {
    let mut method: &[u8] = b"";
    let mut path: &[u8] = b"";
    for header in &h.headers {
        match header.name() {
            b":method" => method = header.value(),
            b":path" => path = header.value(),
            _ => {}
        }
    }
    let IncomingH3Headers {
        mut send,
        mut recv,
        read_fin,
        ..
    } = h;
    match route(method, path) {
        Route::Bytes(n) if n as usize <= block.len() => {
            let _ = respond(&mut send, block.slice(..n as usize)).await;
        }
        Route::Bytes(n) => {
            let block = block.clone();
            tokio::spawn(async move {
                let head = vec![
                    h3::Header::new(b":status", b"200"),
                    h3::Header::new(b"content-length", n.to_string().as_bytes()),
                ];
                if send.send(OutboundFrame::Headers(head, None)).await.is_err() {
                    return;
                }
                let mut left = n;
                while left > 0 {
                    let take = left.min(block.len() as u64) as usize;
                    left -= take as u64;
                    let frame = OutboundFrame::Body(block.slice(..take), left == 0);
                    if send.send(frame).await.is_err() {
                        return;
                    }
                }
            });
        }
        Route::Discard => {
            tokio::spawn(async move {
                let mut n = 0u64;
                if !read_fin {
                    while let Some(frame) = recv.recv().await {
                        if let InboundFrame::Body(b, fin) = frame {
                            n += b.len() as u64;
                            if fin {
                                break;
                            }
                        }
                    }
                }
                let _ = respond(&mut send, Bytes::from(n.to_string())).await;
            });
        }
        Route::NotFound => {
            let head = vec![h3::Header::new(b":status", b"404")];
            let _ = send.send(OutboundFrame::Headers(head, None)).await;
            let _ = send.send(OutboundFrame::Body(Bytes::new(), true)).await;
        }
    }
}

/// A 200 answer with `body`, all at once.
async fn respond(send: &mut OutboundFrameSender, body: Bytes) -> Result<(), ()> {
    let head = vec![
        h3::Header::new(b":status", b"200"),
        h3::Header::new(b"content-length", body.len().to_string().as_bytes()),
    ];
    send.send(OutboundFrame::Headers(head, None))
        .await
        .map_err(drop)?;
    send.send(OutboundFrame::Body(body, true))
        .await
        .map_err(drop)
}
