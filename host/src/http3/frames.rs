//! What flows between the H3 driver and the application, per stream: frames
//! in each direction over bounded channels, so neither side can make the
//! other buffer without limit.
//!
//! The application end of each channel is wrapped ([`BodyReceiver`],
//! [`OutboundSender`]) so that consuming or producing a frame, or dropping
//! the handle, wakes the driver: that is how a stream paused for back-pressure
//! resumes, and how a dropped handle becomes a reset or STOP_SENDING.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use quiche::h3::Header;
use tokio::sync::{mpsc, Notify};

use super::error::H3Error;

/// A frame from the peer on one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundFrame {
    /// A header section after the first: for clients each response head (1xx
    /// then final); for both sides, trailers after the body.
    Headers(Vec<Header>),
    /// Body bytes.
    Body(Bytes),
    /// The peer finished its side of the stream; nothing follows.
    Finished,
    /// The peer reset its side of the stream with this code; nothing follows.
    Reset(u64),
}

/// A frame the application sends on one stream.
#[derive(Debug, Clone)]
pub enum OutboundFrame {
    /// A header section. Servers send any number of 1xx heads, then one
    /// final head; `fin` ends the stream (a response without body).
    Headers {
        /// The fields, pseudo-headers first.
        headers: Vec<Header>,
        /// Whether the stream ends here.
        fin: bool,
    },
    /// Body bytes; `fin` ends the stream.
    Body(Bytes, bool),
    /// Trailers; they end the stream.
    Trailers(Vec<Header>),
    /// Abandon our side of the stream (RESET_STREAM) with this code.
    Reset(u64),
    /// Ask the peer to stop sending (STOP_SENDING) with this code.
    StopSending(u64),
}

/// Counters one driver shares with the handles of its streams.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) notify: Notify,
    /// Woken whenever the driver hands queued body bytes to quiche, for
    /// writers that wait on a connection-wide byte budget.
    pub(crate) drained: Notify,
    /// Body bytes handed to the application but not yet consumed.
    pub(crate) inbound_buffered: AtomicUsize,
    /// Body bytes taken from the application but not yet accepted by quiche.
    pub(crate) outbound_buffered: AtomicUsize,
    pub(crate) peak_inbound: AtomicUsize,
    pub(crate) peak_outbound: AtomicUsize,
    pub(crate) requests: AtomicU64,
    /// Entries in the driver's stream table.
    pub(crate) open_streams: AtomicUsize,
    /// Events sent to the application and not yet taken
    /// (bounded by `controller::EVENT_BACKLOG`).
    pub(crate) events_pending: AtomicUsize,
    pub(crate) going_away: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub(crate) fn add_inbound(&self, n: usize) {
        let now = self.inbound_buffered.fetch_add(n, Ordering::Relaxed) + n;
        self.peak_inbound.fetch_max(now, Ordering::Relaxed);
    }
    pub(crate) fn add_outbound(&self, n: usize) {
        let now = self.outbound_buffered.fetch_add(n, Ordering::Relaxed) + n;
        self.peak_outbound.fetch_max(now, Ordering::Relaxed);
    }
    pub(crate) fn sub_outbound(&self, n: usize) {
        self.outbound_buffered.fetch_sub(n, Ordering::Relaxed);
        if n > 0 {
            self.drained.notify_waiters();
        }
    }

    /// Waits until fewer than `budget` body bytes are queued for quiche.
    pub(crate) async fn below(&self, budget: usize) {
        loop {
            let drained = self.drained.notified();
            let mut drained = std::pin::pin!(drained);
            drained.as_mut().enable();
            if self.outbound_buffered.load(Ordering::Relaxed) < budget {
                return;
            }
            drained.await;
        }
    }
}

/// Receives the frames the peer sends on one stream. Dropping it before the
/// stream finished asks the peer to stop sending.
#[derive(Debug)]
pub struct BodyReceiver {
    pub(crate) stream_id: u64,
    pub(crate) rx: mpsc::Receiver<InboundFrame>,
    pub(crate) shared: Arc<Shared>,
}

impl BodyReceiver {
    /// The stream's id.
    pub fn stream_id(&self) -> u64 {
        self.stream_id
    }

    /// The next frame, or `None` once the stream ended (after `Finished` or
    /// `Reset`) or the connection closed.
    ///
    /// # Cancel safety
    /// Cancel-safe: no frame is lost if the future is dropped.
    pub async fn recv(&mut self) -> Option<InboundFrame> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next frame: [`recv`](Self::recv) for code that
    /// implements `poll` methods (an `http_body::Body`, say).
    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<InboundFrame>> {
        let f = std::task::ready!(self.rx.poll_recv(cx));
        if let Some(InboundFrame::Body(b)) = &f {
            self.shared
                .inbound_buffered
                .fetch_sub(b.len(), Ordering::Relaxed);
        }
        // The driver may be holding data back for lack of room: wake it.
        self.shared.notify.notify_one();
        std::task::Poll::Ready(f)
    }

    /// Reads the rest of the body, up to `limit` bytes, and returns it with
    /// the trailers if any.
    ///
    /// # Errors
    /// [`H3Error::StreamReset`], [`H3Error::BodyTooLarge`] or
    /// [`H3Error::ConnectionClosed`].
    pub async fn read_to_end(&mut self, limit: usize) -> Result<(Vec<u8>, Vec<Header>), H3Error> {
        let mut body = Vec::new();
        let mut trailers = Vec::new();
        loop {
            match self.recv().await {
                Some(InboundFrame::Body(b)) => {
                    if body.len() + b.len() > limit {
                        return Err(H3Error::BodyTooLarge { limit });
                    }
                    body.extend_from_slice(&b);
                }
                Some(InboundFrame::Headers(h)) => trailers = h,
                Some(InboundFrame::Finished) => return Ok((body, trailers)),
                Some(InboundFrame::Reset(code)) => return Err(H3Error::StreamReset { code }),
                None => return Err(H3Error::ConnectionClosed),
            }
        }
    }
}

impl Drop for BodyReceiver {
    fn drop(&mut self) {
        self.shared.notify.notify_one();
    }
}

/// Sends frames on one stream. Dropping it before a frame with `fin` (or
/// trailers, or a reset) resets the stream with H3_REQUEST_CANCELLED.
#[derive(Debug, Clone)]
pub struct OutboundSender {
    pub(crate) stream_id: u64,
    pub(crate) tx: mpsc::Sender<OutboundFrame>,
    pub(crate) shared: Arc<Shared>,
}

impl OutboundSender {
    /// The stream's id.
    pub fn stream_id(&self) -> u64 {
        self.stream_id
    }

    /// Queues a frame, waiting while the stream's channel is full.
    ///
    /// # Errors
    /// The frame back if the stream or connection is gone.
    pub async fn send(&self, frame: OutboundFrame) -> Result<(), OutboundFrame> {
        let n = match &frame {
            OutboundFrame::Body(b, _) => b.len(),
            _ => 0,
        };
        // Count the bytes before the driver can see the frame (and subtract
        // them): counting after let the counter wrap below zero.
        let res = match self.tx.reserve().await {
            Ok(permit) => {
                self.shared.add_outbound(n);
                permit.send(frame);
                Ok(())
            }
            Err(_) => Err(frame),
        };
        self.shared.notify.notify_one();
        res
    }

    /// Queues a frame if the stream's channel has room, without waiting.
    ///
    /// # Errors
    /// [`TrySend::Full`] with the frame when the channel is full (wait with
    /// [`ready`](Self::ready)), [`TrySend::Closed`] when the stream is gone.
    pub fn try_send(&self, frame: OutboundFrame) -> Result<(), TrySend> {
        let n = match &frame {
            OutboundFrame::Body(b, _) => b.len(),
            _ => 0,
        };
        let res = match self.tx.try_reserve() {
            Ok(permit) => {
                self.shared.add_outbound(n);
                permit.send(frame);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(())) => Err(TrySend::Full(frame)),
            Err(mpsc::error::TrySendError::Closed(())) => Err(TrySend::Closed),
        };
        self.shared.notify.notify_one();
        res
    }

    /// Whether the stream is gone for sending: the peer reset or stopped
    /// it, or the connection closed.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Waits until the stream's channel has room for a frame (or is closed).
    ///
    /// # Cancel safety
    /// Cancel-safe.
    pub async fn ready(&self) {
        // Reserving and dropping the permit at once leaves the room free.
        let _ = self.tx.reserve().await;
    }

    /// Sends response or request headers.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn send_headers(&self, headers: Vec<Header>, fin: bool) -> Result<(), OutboundFrame> {
        self.send(OutboundFrame::Headers { headers, fin }).await
    }

    /// Sends body bytes.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn send_body(&self, body: impl Into<Bytes>, fin: bool) -> Result<(), OutboundFrame> {
        self.send(OutboundFrame::Body(body.into(), fin)).await
    }
}

/// Why [`OutboundSender::try_send`] did not queue a frame.
#[derive(Debug)]
pub enum TrySend {
    /// The channel is full; the frame is given back.
    Full(OutboundFrame),
    /// The stream or connection is gone.
    Closed,
}

impl Drop for OutboundSender {
    fn drop(&mut self) {
        self.shared.notify.notify_one();
    }
}

/// Builds a header list from name/value pairs.
///
/// ```
/// let h = tq_host::http3::headers(&[(":status", "200"), ("content-type", "text/plain")]);
/// assert_eq!(h.len(), 2);
/// ```
pub fn headers(pairs: &[(&str, &str)]) -> Vec<Header> {
    pairs
        .iter()
        .map(|(n, v)| Header::new(n.as_bytes(), v.as_bytes()))
        .collect()
}
