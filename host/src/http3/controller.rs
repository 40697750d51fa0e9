//! The application's end of an [`H3Driver`](super::H3Driver): the events it
//! reports ([`H3Event`]) and the handle that commands it ([`H3Handle`]).
//!
//! Events travel on one channel per connection; commands on another, and
//! every command also wakes the driver through the shared `Notify`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use quiche::h3::Header;
use tokio::sync::{mpsc, oneshot};

use super::error::H3Error;
use super::frames::{BodyReceiver, OutboundSender, Shared};

/// A new request (servers): its headers, the receiver of the rest of the
/// stream (absent when the headers ended it), and the sender of the response.
#[derive(Debug)]
pub struct IncomingRequest {
    /// The stream id.
    pub stream_id: u64,
    /// The request's header section.
    pub headers: Vec<Header>,
    /// Body and trailers; `None` if the request had no body.
    pub body: Option<BodyReceiver>,
    /// Where the response goes.
    pub response: OutboundSender,
}

/// A request sent by a client: the sender of its body (if it has one) and
/// the receiver of the response (every head, body, trailers).
#[derive(Debug)]
pub struct RequestStream {
    /// The stream id.
    pub stream_id: u64,
    /// The request body's sender; `None` if the headers ended the request.
    pub body: Option<OutboundSender>,
    /// The response: `Headers` (1xx heads, then the final head), `Body`
    /// chunks, `Headers` again for trailers, then `Finished` or `Reset`.
    pub response: BodyReceiver,
}

/// What an H3 driver reports on its controller.
#[derive(Debug)]
#[non_exhaustive]
pub enum H3Event {
    /// Servers: a request arrived.
    IncomingRequest(IncomingRequest),
    /// The peer finished its side of a stream.
    StreamFinished {
        /// The stream.
        stream_id: u64,
    },
    /// The peer reset a stream, or the server cut it because the peer left
    /// it stalled (`Http3Settings::stream_stall_timeout`, code
    /// H3_REQUEST_CANCELLED). Either way its answer can no longer be sent.
    StreamReset {
        /// The stream.
        stream_id: u64,
        /// The peer's error code, or H3_REQUEST_CANCELLED.
        code: u64,
    },
    /// The peer sent GOAWAY: no new requests (clients) or pushes.
    GoAway {
        /// The first stream id the peer will not process.
        id: u64,
    },
    /// The peer's SETTINGS arrived.
    SettingsReceived {
        /// The raw settings, identifier and value.
        settings: Vec<(u64, u64)>,
    },
    /// An HTTP/3 protocol error ended the connection.
    ConnectionError(String),
    /// An HTTP datagram (RFC 9297) arrived for the request stream
    /// `stream_id`. Needs QUIC datagrams on both sides
    /// ([`QuicSettings::enable_datagrams`](crate::quic::QuicSettings)).
    Datagram {
        /// The request stream the datagram belongs to.
        stream_id: u64,
        /// The payload.
        payload: Bytes,
    },
    /// The connection closed; the last event.
    ConnectionShutdown {
        /// Why, if not gracefully.
        error: Option<String>,
    },
}

/// A client's request waiting to be opened.
#[derive(Debug)]
pub struct PendingRequest {
    pub(crate) headers: Vec<Header>,
    pub(crate) has_body: bool,
    pub(crate) reply: oneshot::Sender<Result<RequestStream, H3Error>>,
}

/// Events queued for the application before the driver stops reading the
/// peer's new requests: an application slower than a peer that opens and
/// resets requests (rapid reset) then holds the peer back through QUIC
/// stream credit, instead of queueing events without bound. Reading
/// resumes as the application takes them.
pub(crate) const EVENT_BACKLOG: usize = 1024;

/// Commands to a running driver.
#[derive(Debug)]
pub(crate) enum Command {
    GoAway,
    ShutdownStream {
        stream_id: u64,
        /// true: STOP_SENDING (read side); false: RESET_STREAM (write side).
        read: bool,
        code: u64,
    },
    Close {
        code: u64,
        reason: String,
    },
    SendDatagram {
        stream_id: u64,
        payload: Bytes,
    },
    SendRequest(PendingRequest),
}

/// The application's end of an H3 driver: events and commands.
#[derive(Debug)]
pub struct H3Controller {
    pub(crate) events: mpsc::UnboundedReceiver<H3Event>,
    pub(crate) handle: H3Handle,
}

/// A cloneable handle to command a driver.
#[derive(Debug, Clone)]
pub struct H3Handle {
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) shared: Arc<Shared>,
}

impl H3Controller {
    /// The next event; `None` after the connection is gone.
    ///
    /// Take events as they come, independently of reading bodies: while a
    /// server's application leaves 1,024 of them queued, its driver reads
    /// nothing more from the peer (bodies included) until some are taken.
    ///
    /// # Cancel safety
    /// Cancel-safe.
    pub async fn next_event(&mut self) -> Option<H3Event> {
        let ev = self.events.recv().await;
        self.took(ev)
    }

    /// The next event if one is already queued, without waiting: for an
    /// application that handles events in batches (`None` also once the
    /// connection is gone; [`next_event`](Self::next_event) tells which).
    pub fn try_next_event(&mut self) -> Option<H3Event> {
        let ev = self.events.try_recv().ok();
        self.took(ev)
    }

    fn took(&self, ev: Option<H3Event>) -> Option<H3Event> {
        if ev.is_some() {
            let shared = &self.handle.shared;
            if shared.events_pending.fetch_sub(1, Ordering::Relaxed) == EVENT_BACKLOG {
                // Back below the backlog: the driver may read again.
                shared.notify.notify_one();
            }
        }
        ev
    }

    /// A cloneable handle for commands.
    pub fn handle(&self) -> H3Handle {
        self.handle.clone()
    }
}

impl H3Handle {
    fn send(&self, c: Command) -> bool {
        let ok = self.commands.send(c).is_ok();
        self.shared.notify.notify_one();
        ok
    }

    /// Sends GOAWAY: requests in flight finish, new ones are refused, and the
    /// connection closes with H3_NO_ERROR once idle.
    pub fn goaway(&self) {
        self.send(Command::GoAway);
    }

    /// Shuts one direction of a stream with an error code (`Read` sends
    /// STOP_SENDING, `Write` RESET_STREAM). A code above 2^62 - 1 (what a
    /// QUIC frame can carry) is sent as H3_INTERNAL_ERROR.
    pub fn shutdown_stream(&self, stream_id: u64, direction: quiche::Shutdown, code: u64) {
        self.send(Command::ShutdownStream {
            stream_id,
            read: matches!(direction, quiche::Shutdown::Read),
            code,
        });
    }

    /// Abandons our side of a stream (RESET_STREAM) with `code`.
    pub fn reset_stream(&self, stream_id: u64, code: u64) {
        self.shutdown_stream(stream_id, quiche::Shutdown::Write, code);
    }

    /// Asks the peer to stop sending on a stream (STOP_SENDING) with `code`.
    pub fn stop_sending(&self, stream_id: u64, code: u64) {
        self.shutdown_stream(stream_id, quiche::Shutdown::Read, code);
    }

    /// Closes the connection with an application error code. A code above
    /// 2^62 - 1 is sent as H3_INTERNAL_ERROR.
    pub fn close(&self, code: u64, reason: &str) {
        self.send(Command::Close {
            code,
            reason: reason.to_owned(),
        });
    }

    /// Sends an HTTP datagram (RFC 9297) tied to the request stream
    /// `stream_id`. Datagrams are unreliable: one that does not fit, or finds
    /// the send queue full, is dropped.
    pub fn send_datagram(&self, stream_id: u64, payload: impl Into<Bytes>) {
        self.send(Command::SendDatagram {
            stream_id,
            payload: payload.into(),
        });
    }

    /// Clients: sends a request. With `has_body`, the body follows through
    /// [`RequestStream::body`]. A request beyond the peer's concurrent stream
    /// limit waits until a stream frees.
    ///
    /// # Errors
    /// Why the request could not be sent: GOAWAY sent or received, the
    /// connection closed, quiche refused the headers, or this is a server.
    pub async fn send_request(
        &self,
        headers: Vec<Header>,
        has_body: bool,
    ) -> Result<RequestStream, H3Error> {
        let (reply, rx) = oneshot::channel();
        if !self.send(Command::SendRequest(PendingRequest {
            headers,
            has_body,
            reply,
        })) {
            return Err(H3Error::ConnectionClosed);
        }
        rx.await.map_err(|_| H3Error::ConnectionClosed)?
    }

    /// The most body bytes this connection has held for the application at
    /// once (inbound) and taken from it but not yet handed to QUIC
    /// (outbound): a check that back-pressure works.
    pub fn peak_buffered(&self) -> (usize, usize) {
        (
            self.shared.peak_inbound.load(Ordering::Relaxed),
            self.shared.peak_outbound.load(Ordering::Relaxed),
        )
    }

    /// Whether GOAWAY was sent or received on this connection.
    pub fn is_going_away(&self) -> bool {
        self.shared.going_away.load(Ordering::Relaxed)
    }

    /// Requests seen (servers) or sent (clients) on this connection.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Streams the driver still keeps state for: requests in flight, plus
    /// finished ones whose last frames the application has not read yet.
    /// Zero on an idle connection; a number that grows with the
    /// connection's age is a leak.
    pub fn open_streams(&self) -> usize {
        self.shared.open_streams.load(Ordering::Relaxed)
    }
}
