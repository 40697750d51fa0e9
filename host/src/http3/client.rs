//! A small HTTP/3 client on top of [`ClientH3Driver`]: connect, send
//! requests (many at once), read whole responses. Used by `tq-host get`, the
//! tests and the benchmarks.

use std::net::SocketAddr;

use bytes::Bytes;
use quiche::h3::{Header, NameValue};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::controller::{H3Event, H3Handle};
use super::driver::H3Driver;
use super::error::H3Error;
use super::frames::{headers, InboundFrame, OutboundFrame};
use super::settings::Http3Settings;
use crate::metrics::DefaultMetrics;
use crate::quic::{ConnectionHandle, ConnectionParams, Connector, QuicError};

/// A whole response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The final status.
    pub status: u16,
    /// Informational (1xx) heads received before the final one.
    pub informational: Vec<Vec<Header>>,
    /// The final head.
    pub headers: Vec<Header>,
    /// The body.
    pub body: Vec<u8>,
    /// Trailers, if any.
    pub trailers: Vec<Header>,
}

impl Response {
    /// A header of the final head by name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name() == name.as_bytes())
            .and_then(|h| std::str::from_utf8(h.value()).ok())
    }
}

/// One HTTP/3 client connection.
#[derive(Debug)]
pub struct H3Client {
    handle: H3Handle,
    conn: ConnectionHandle,
    authority: String,
    events: JoinHandle<()>,
}

impl Drop for H3Client {
    fn drop(&mut self) {
        self.events.abort();
    }
}

impl H3Client {
    /// Connects to `addr`, naming `server_name` for SNI and verification.
    ///
    /// # Errors
    /// Socket, TLS and handshake errors.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        params: &ConnectionParams,
        settings: Http3Settings,
    ) -> Result<Self, QuicError> {
        let connector = Connector::new(params.clone(), DefaultMetrics::default())?;
        Self::connect_with(&connector, addr, server_name, settings).await
    }

    /// Connects with a shared [`Connector`] (cheaper for many connections).
    ///
    /// # Errors
    /// Socket, TLS and handshake errors.
    pub async fn connect_with(
        connector: &Connector<DefaultMetrics>,
        addr: SocketAddr,
        server_name: &str,
        settings: Http3Settings,
    ) -> Result<Self, QuicError> {
        let socket = UdpSocket::bind(crate::quic::any_local_for(addr))
            .await
            .map_err(QuicError::io("bind"))?;
        Self::connect_from(connector, socket, addr, server_name, settings).await
    }

    /// Connects from a socket the caller bound (a chosen local address or
    /// interface).
    ///
    /// # Errors
    /// Socket, TLS and handshake errors.
    pub async fn connect_from(
        connector: &Connector<DefaultMetrics>,
        socket: UdpSocket,
        addr: SocketAddr,
        server_name: &str,
        settings: Http3Settings,
    ) -> Result<Self, QuicError> {
        socket
            .connect(addr)
            .await
            .map_err(QuicError::io("connect"))?;
        let (driver, mut controller) = H3Driver::new_client(settings);
        let handle = controller.handle();
        let conn = connector.connect(socket, Some(server_name), driver).await?;
        // The client has no use for connection events beyond logging them;
        // draining them keeps the event queue empty.
        let events = tokio::spawn(async move {
            while let Some(ev) = controller.next_event().await {
                if let H3Event::ConnectionShutdown { .. } = ev {
                    break;
                }
            }
        });
        Ok(Self {
            handle,
            conn,
            authority: server_name.to_owned(),
            events,
        })
    }

    /// The driver's command handle (GOAWAY, close, raw requests).
    pub fn handle(&self) -> &H3Handle {
        &self.handle
    }

    /// The QUIC connection.
    pub fn connection(&self) -> &ConnectionHandle {
        &self.conn
    }

    /// Sends `method path` with an optional body and reads the whole response.
    ///
    /// # Errors
    /// The request was refused or reset, or the connection closed.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Response, H3Error> {
        self.request_with(method, path, &[], body, Vec::new()).await
    }

    /// Like [`request`](Self::request), with extra headers and request trailers.
    ///
    /// # Errors
    /// As [`request`](Self::request).
    pub async fn request_with(
        &self,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: Option<Bytes>,
        trailers: Vec<Header>,
    ) -> Result<Response, H3Error> {
        let mut h = headers(&[
            (":method", method),
            (":scheme", "https"),
            (":authority", &self.authority),
            (":path", path),
        ]);
        h.extend(headers(extra));
        let has_body = body.is_some() || !trailers.is_empty();
        let stream = self.handle.send_request(h, has_body).await?;
        let mut rx = stream.response;
        let send = async {
            if let Some(tx) = stream.body {
                let gone = |_| H3Error::StreamClosed;
                let body = body.unwrap_or_default();
                let fin = trailers.is_empty();
                // Chunks of 64 KiB so the driver's channel bounds what waits.
                let mut rest = body;
                while rest.len() > 64 * 1024 {
                    let chunk = rest.split_to(64 * 1024);
                    tx.send_body(chunk, false).await.map_err(gone)?;
                }
                tx.send_body(rest, fin).await.map_err(gone)?;
                if !fin {
                    tx.send(OutboundFrame::Trailers(trailers))
                        .await
                        .map_err(gone)?;
                }
            }
            Ok::<(), H3Error>(())
        };
        let recv = async {
            let mut informational = Vec::new();
            let mut head: Option<Vec<Header>> = None;
            let mut body = Vec::new();
            let mut trailers = Vec::new();
            loop {
                match rx.recv().await {
                    Some(InboundFrame::Headers(h)) => {
                        if head.is_some() {
                            trailers = h;
                        } else if status_of(&h).is_some_and(|s| (100..200).contains(&s)) {
                            informational.push(h);
                        } else {
                            head = Some(h);
                        }
                    }
                    Some(InboundFrame::Body(b)) => body.extend_from_slice(&b),
                    Some(InboundFrame::Finished) => break,
                    Some(InboundFrame::Reset(code)) => return Err(H3Error::StreamReset { code }),
                    None => return Err(H3Error::ConnectionClosed),
                }
            }
            let headers =
                head.ok_or_else(|| H3Error::Malformed("response without headers".into()))?;
            let status = status_of(&headers)
                .ok_or_else(|| H3Error::Malformed("response without :status".into()))?;
            Ok(Response {
                status,
                informational,
                headers,
                body,
                trailers,
            })
        };
        let (sent, resp) = tokio::join!(send, recv);
        let resp = resp?;
        // A server may answer before reading the whole body and ask us to
        // stop sending it (RFC 9114 §4.1); a complete response stands.
        if let Err(e) = sent {
            tracing::debug!(error = %e, "request body cut short; the response is complete");
        }
        Ok(resp)
    }
}

fn status_of(h: &[Header]) -> Option<u16> {
    h.iter()
        .find(|h| h.name() == b":status")
        .and_then(|h| std::str::from_utf8(h.value()).ok())
        .and_then(|s| s.parse().ok())
}
