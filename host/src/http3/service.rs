//! The native request handler API: plain Rust functions from an
//! `http::Request` to an `http::Response`, served over an [`H3Controller`].
//!
//! Each request runs in its own task, owned by the connection's serve loop
//! (they end with the connection). Bodies stream both ways through the
//! driver's bounded channels.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use quiche::h3::{Header, NameValue};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, Instrument};

use super::driver::{H3Controller, H3Event, IncomingRequest};
use super::frames::{BodyReceiver, InboundFrame, OutboundFrame, OutboundSender};

/// A request body: streamed from the peer.
#[derive(Debug)]
pub struct RequestBody {
    rx: Option<BodyReceiver>,
    trailers: Vec<Header>,
}

impl RequestBody {
    /// The next chunk of body; `None` at the end.
    ///
    /// # Errors
    /// The peer reset the stream, or the connection closed.
    pub async fn chunk(&mut self) -> Option<Result<Bytes, String>> {
        let rx = self.rx.as_mut()?;
        loop {
            match rx.recv().await {
                Some(InboundFrame::Body(b)) => return Some(Ok(b)),
                Some(InboundFrame::Headers(h)) => self.trailers = h,
                Some(InboundFrame::Finished) => {
                    self.rx = None;
                    return None;
                }
                Some(InboundFrame::Reset(code)) => {
                    self.rx = None;
                    return Some(Err(format!(
                        "request reset by the client with code {code:#x}"
                    )));
                }
                None => {
                    self.rx = None;
                    return Some(Err("connection closed mid-request".into()));
                }
            }
        }
    }

    /// The whole body, refused past `limit` bytes.
    ///
    /// # Errors
    /// As [`chunk`](Self::chunk), or the body is over `limit`.
    pub async fn bytes(&mut self, limit: usize) -> Result<Bytes, String> {
        let mut out = Vec::new();
        while let Some(c) = self.chunk().await {
            let c = c?;
            if out.len() + c.len() > limit {
                return Err(format!("request body over {limit} bytes"));
            }
            out.extend_from_slice(&c);
        }
        Ok(out.into())
    }

    /// Trailers, once the body has been read to its end.
    pub fn trailers(&self) -> &[Header] {
        &self.trailers
    }
}

/// A response body.
#[derive(Debug, Default)]
pub enum ResponseBody {
    /// No body.
    #[default]
    Empty,
    /// A body in one piece.
    Full(Bytes),
    /// A body produced over time through a [`BodyWriter`].
    Stream(mpsc::Receiver<BodyChunk>),
}

impl ResponseBody {
    /// A streaming body and its writer; at most `capacity` chunks wait.
    pub fn channel(capacity: usize) -> (BodyWriter, ResponseBody) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (BodyWriter { tx }, ResponseBody::Stream(rx))
    }
}

impl From<&'static str> for ResponseBody {
    fn from(s: &'static str) -> Self {
        ResponseBody::Full(Bytes::from_static(s.as_bytes()))
    }
}

impl From<String> for ResponseBody {
    fn from(s: String) -> Self {
        ResponseBody::Full(Bytes::from(s))
    }
}

impl From<Vec<u8>> for ResponseBody {
    fn from(v: Vec<u8>) -> Self {
        ResponseBody::Full(Bytes::from(v))
    }
}

impl From<Bytes> for ResponseBody {
    fn from(b: Bytes) -> Self {
        ResponseBody::Full(b)
    }
}

/// A piece of a streamed response body.
#[derive(Debug)]
pub enum BodyChunk {
    /// Body bytes.
    Data(Bytes),
    /// Trailers; they end the body.
    Trailers(http::HeaderMap),
}

/// Writes a streamed response body. Dropping it ends the body.
#[derive(Debug, Clone)]
pub struct BodyWriter {
    tx: mpsc::Sender<BodyChunk>,
}

impl BodyWriter {
    /// Sends a chunk, waiting while the client is slow.
    ///
    /// # Errors
    /// The client went away.
    pub async fn write(&self, data: impl Into<Bytes>) -> Result<(), String> {
        self.tx
            .send(BodyChunk::Data(data.into()))
            .await
            .map_err(|_| "client went away".to_string())
    }

    /// Sends trailers, which end the body.
    ///
    /// # Errors
    /// The client went away.
    pub async fn trailers(self, t: http::HeaderMap) -> Result<(), String> {
        self.tx
            .send(BodyChunk::Trailers(t))
            .await
            .map_err(|_| "client went away".to_string())
    }
}

/// Handles HTTP/3 requests in plain Rust.
///
/// ```
/// use tq_host::http3::{RequestBody, RequestHandler, ResponseBody};
///
/// struct Hello;
///
/// impl RequestHandler for Hello {
///     async fn handle(&self, req: http::Request<RequestBody>) -> http::Response<ResponseBody> {
///         http::Response::new(format!("hello from {}", req.uri().path()).into())
///     }
/// }
/// ```
pub trait RequestHandler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(
        &self,
        req: http::Request<RequestBody>,
    ) -> impl Future<Output = http::Response<ResponseBody>> + Send;
}

/// Serves every request of one connection with `handler`, until the
/// connection closes. Request tasks are owned here and end with it.
pub async fn serve_connection<H: RequestHandler>(mut controller: H3Controller, handler: Arc<H>) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            ev = controller.next_event() => match ev {
                Some(H3Event::IncomingRequest(req)) => {
                    let handler = handler.clone();
                    let span = tracing::debug_span!("request", stream = req.stream_id);
                    tasks.spawn(serve_request(req, handler).instrument(span));
                }
                Some(H3Event::ConnectionShutdown { error }) => {
                    if let Some(e) = error {
                        debug!(error = %e, "connection ended");
                    }
                    break;
                }
                Some(_) => {}
                None => break,
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

async fn serve_request<H: RequestHandler>(req: IncomingRequest, handler: Arc<H>) {
    let IncomingRequest {
        headers,
        body,
        response,
        ..
    } = req;
    let request = match to_http_request(&headers, body) {
        Ok(r) => r,
        Err(e) => {
            debug!(error = %e, "malformed request");
            let _ = respond(
                &response,
                http::Response::builder()
                    .status(400)
                    .body(ResponseBody::from(format!("bad request: {e}\n")))
                    .unwrap_or_default(),
            )
            .await;
            return;
        }
    };
    let resp = handler.handle(request).await;
    if let Err(e) = respond(&response, resp).await {
        debug!(error = %e, "response abandoned");
    }
}

fn to_http_request(
    headers: &[Header],
    body: Option<BodyReceiver>,
) -> Result<http::Request<RequestBody>, String> {
    let mut b = http::Request::builder();
    let (mut method, mut scheme, mut authority, mut path) = (None, None, None, None);
    for h in headers {
        let v =
            std::str::from_utf8(h.value()).map_err(|_| "header value is not UTF-8".to_string())?;
        match h.name() {
            b":method" => method = Some(v),
            b":scheme" => scheme = Some(v),
            b":authority" => authority = Some(v),
            b":path" => path = Some(v),
            n if n.starts_with(b":") => {
                return Err(format!(
                    "unknown pseudo-header {}",
                    String::from_utf8_lossy(n)
                ))
            }
            n => b = b.header(n, h.value()),
        }
    }
    let method = method.ok_or("missing :method")?;
    let path = path.ok_or("missing :path")?;
    let uri = format!(
        "{}://{}{}",
        scheme.ok_or("missing :scheme")?,
        authority.unwrap_or("localhost"),
        path
    );
    b.method(method)
        .uri(uri)
        .version(http::Version::HTTP_3)
        .body(RequestBody {
            rx: body,
            trailers: Vec::new(),
        })
        .map_err(|e| e.to_string())
}

fn header_list(status: Option<http::StatusCode>, map: &http::HeaderMap) -> Vec<Header> {
    let mut out = Vec::with_capacity(map.len() + 1);
    if let Some(s) = status {
        out.push(Header::new(b":status", s.as_str().as_bytes()));
    }
    for (n, v) in map {
        out.push(Header::new(n.as_str().as_bytes(), v.as_bytes()));
    }
    out
}

async fn respond(to: &OutboundSender, resp: http::Response<ResponseBody>) -> Result<(), String> {
    let (parts, body) = resp.into_parts();
    let head = header_list(Some(parts.status), &parts.headers);
    let gone = |_| "client went away".to_string();
    match body {
        ResponseBody::Empty => to.send_headers(head, true).await.map_err(gone),
        ResponseBody::Full(b) => {
            to.send_headers(head, false).await.map_err(gone)?;
            to.send_body(b, true).await.map_err(gone)
        }
        ResponseBody::Stream(mut rx) => {
            to.send_headers(head, false).await.map_err(gone)?;
            loop {
                match rx.recv().await {
                    Some(BodyChunk::Data(d)) => to.send_body(d, false).await.map_err(gone)?,
                    Some(BodyChunk::Trailers(t)) => {
                        return to
                            .send(OutboundFrame::Trailers(header_list(None, &t)))
                            .await
                            .map_err(gone)
                    }
                    None => return to.send_body(Bytes::new(), true).await.map_err(gone),
                }
            }
        }
    }
}
