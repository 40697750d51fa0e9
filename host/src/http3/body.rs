//! Bodies on either side of a handler, as `http_body::Body`s: the request
//! body read from the stream's bounded channel only as the handler reads
//! (so a slow handler slows the client through flow control), and the
//! native response body (whole, or streamed through a [`BodyWriter`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use quiche::h3::Header;
use tokio::sync::mpsc;

use super::error::H3Error;
use super::frames::{BodyReceiver, InboundFrame};
use super::head::header_map;

/// A request body, streamed from the peer. An `http_body::Body` (with
/// `http-body-util`'s `BodyExt` for combinators), plus plain async methods.
#[derive(Debug, Default)]
pub struct RequestBody {
    rx: Option<BodyReceiver>,
    trailers: Vec<Header>,
}

impl RequestBody {
    /// The body of a stream (`None`: the request had none).
    pub(crate) fn new(rx: Option<BodyReceiver>) -> Self {
        Self {
            rx,
            trailers: Vec::new(),
        }
    }

    /// The next chunk of body; `None` at the end.
    ///
    /// # Errors
    /// The peer reset the stream, the connection closed, or the trailers
    /// were malformed.
    pub async fn chunk(&mut self) -> Option<Result<Bytes, H3Error>> {
        loop {
            match std::future::poll_fn(|cx| Pin::new(&mut *self).poll_frame(cx)).await? {
                Ok(f) => match f.into_data() {
                    Ok(d) => return Some(Ok(d)),
                    Err(_) => continue, // trailers: kept, see `trailers`
                },
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// The whole body, refused past `limit` bytes.
    ///
    /// # Errors
    /// As [`chunk`](Self::chunk), or [`H3Error::BodyTooLarge`].
    pub async fn bytes(&mut self, limit: usize) -> Result<Bytes, H3Error> {
        let mut out = Vec::new();
        while let Some(c) = self.chunk().await {
            let c = c?;
            if out.len() + c.len() > limit {
                return Err(H3Error::BodyTooLarge { limit });
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

impl Body for RequestBody {
    type Data = Bytes;
    type Error = H3Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H3Error>>> {
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = std::task::ready!(rx.poll_recv(cx));
        Poll::Ready(match frame {
            Some(InboundFrame::Body(b)) => Some(Ok(Frame::data(b))),
            Some(InboundFrame::Headers(h)) => {
                let map = header_map(&h);
                self.trailers = h;
                Some(map.map(Frame::trailers))
            }
            Some(InboundFrame::Finished) => {
                self.rx = None;
                None
            }
            Some(InboundFrame::Reset(code)) => {
                self.rx = None;
                Some(Err(H3Error::StreamReset { code }))
            }
            None => {
                self.rx = None;
                Some(Err(H3Error::ConnectionClosed))
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_none()
    }
}

/// A native handler's response body.
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

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut *self {
            ResponseBody::Empty => Poll::Ready(None),
            ResponseBody::Full(b) => {
                let b = std::mem::take(b);
                *self = ResponseBody::Empty;
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            ResponseBody::Stream(rx) => match std::task::ready!(rx.poll_recv(cx)) {
                Some(BodyChunk::Data(d)) => Poll::Ready(Some(Ok(Frame::data(d)))),
                Some(BodyChunk::Trailers(t)) => {
                    *self = ResponseBody::Empty;
                    Poll::Ready(Some(Ok(Frame::trailers(t))))
                }
                None => {
                    *self = ResponseBody::Empty;
                    Poll::Ready(None)
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ResponseBody::Empty)
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Empty => SizeHint::with_exact(0),
            ResponseBody::Full(b) => SizeHint::with_exact(b.len() as u64),
            ResponseBody::Stream(_) => SizeHint::default(),
        }
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
    /// [`H3Error::StreamClosed`]: the client went away.
    pub async fn write(&self, data: impl Into<Bytes>) -> Result<(), H3Error> {
        self.tx
            .send(BodyChunk::Data(data.into()))
            .await
            .map_err(|_| H3Error::StreamClosed)
    }

    /// Sends trailers, which end the body.
    ///
    /// # Errors
    /// [`H3Error::StreamClosed`]: the client went away.
    pub async fn trailers(self, t: http::HeaderMap) -> Result<(), H3Error> {
        self.tx
            .send(BodyChunk::Trailers(t))
            .await
            .map_err(|_| H3Error::StreamClosed)
    }
}
