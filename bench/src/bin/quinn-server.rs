//! The quinn + h3 (hyperium) peer: serves the shared handler (see the
//! crate docs) over HTTP/3, one task per connection and per request, as h3's
//! own examples do.
//!
//! `quinn-server --listen 127.0.0.1:4433 --cert cert.pem --key key.pem`

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use clap::Parser;
use tq_bench::{route, Route};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = tq_bench::ServerArgs::parse();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(
            tq_bench::load_certs(&args.cert)?,
            tq_bench::load_key(&args.key)?,
        )?;
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(args.idle_secs).try_into()?));
    config.transport_config(Arc::new(transport));
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        tq_bench::udp_socket(args.listen)?,
        Arc::new(quinn::TokioRuntime),
    )?;
    eprintln!("quinn-server: listening on {}", endpoint.local_addr()?);
    let block = tq_bench::block();
    while let Some(incoming) = endpoint.accept().await {
        let block = block.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(incoming, block).await {
                eprintln!("quinn-server: connection: {e:#}");
            }
        });
    }
    Ok(())
}

async fn connection(incoming: quinn::Incoming, block: Bytes) -> anyhow::Result<()> {
    let conn = incoming.await?;
    let mut h3: h3::server::Connection<h3_quinn::Connection, Bytes> =
        h3::server::Connection::new(h3_quinn::Connection::new(conn)).await?;
    loop {
        match h3.accept().await {
            Ok(Some(resolver)) => {
                let block = block.clone();
                tokio::spawn(async move {
                    let Ok((req, stream)) = resolver.resolve_request().await else {
                        return;
                    };
                    if let Err(e) = request(req, stream, block).await {
                        eprintln!("quinn-server: request: {e}");
                    }
                });
            }
            Ok(None) => return Ok(()),
            Err(e) if e.is_h3_no_error() => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

async fn request(
    req: http::Request<()>,
    mut stream: h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    block: Bytes,
) -> anyhow::Result<()> {
    let path = req.uri().path().as_bytes().to_vec();
    match route(req.method().as_str().as_bytes(), &path) {
        Route::Bytes(n) => {
            let head = http::Response::builder()
                .status(200)
                .header("content-length", n)
                .body(())?;
            stream.send_response(head).await?;
            let mut left = n;
            while left > 0 {
                let take = left.min(block.len() as u64) as usize;
                stream.send_data(block.slice(..take)).await?;
                left -= take as u64;
            }
        }
        Route::Discard => {
            let mut n = 0u64;
            while let Some(chunk) = stream.recv_data().await? {
                n += chunk.remaining() as u64;
            }
            let text = Bytes::from(n.to_string());
            let head = http::Response::builder()
                .status(200)
                .header("content-length", text.len())
                .body(())?;
            stream.send_response(head).await?;
            stream.send_data(text).await?;
        }
        Route::NotFound => {
            let head = http::Response::builder().status(404).body(())?;
            stream.send_response(head).await?;
        }
    }
    stream.finish().await?;
    Ok(())
}
