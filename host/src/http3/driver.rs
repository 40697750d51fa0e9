//! The H3 driver: an [`ApplicationOverQuic`] that runs `quiche::h3` on a
//! connection and turns it into events and per-stream channels.
//!
//! The driver never blocks on the application: inbound body data is read
//! from quiche only while the stream's channel has room (otherwise quiche's
//! flow control holds the peer back), and outbound frames are taken from the
//! application only when quiche has accepted the previous one. So memory per
//! stream is bounded by the channel capacity plus one frame, both ways.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quiche::h3::{self, Header, NameValue};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, trace};

use super::frames::{BodyReceiver, InboundFrame, OutboundFrame, OutboundSender, Shared};
use super::settings::Http3Settings;
use crate::metrics::Metrics;
use crate::quic::{ApplicationClose, ApplicationOverQuic, HandshakeInfo, QuicResult};

/// H3_NO_ERROR: a graceful close.
pub const H3_NO_ERROR: u64 = 0x100;

/// The least a server waits after its GOAWAY before closing an idle
/// connection (three RTTs if longer).
const GOAWAY_LINGER: Duration = Duration::from_millis(25);

/// H3_INTERNAL_ERROR.
pub const H3_INTERNAL_ERROR: u64 = 0x102;
/// H3_REQUEST_REJECTED: the request was not processed and may be retried.
pub const H3_REQUEST_REJECTED: u64 = 0x10b;
/// H3_REQUEST_CANCELLED: the request or its response was abandoned.
pub const H3_REQUEST_CANCELLED: u64 = 0x10c;
/// H3_EXCESSIVE_LOAD: e.g. a header section over the advertised limit.
pub const H3_EXCESSIVE_LOAD: u64 = 0x107;

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
    /// The peer reset a stream.
    StreamReset {
        /// The stream.
        stream_id: u64,
        /// The peer's error code.
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

/// Commands to a running driver.
#[derive(Debug)]
enum Command {
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
    SendRequest {
        headers: Vec<Header>,
        has_body: bool,
        reply: oneshot::Sender<Result<RequestStream, String>>,
    },
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

/// The application's end of an H3 driver: events and commands.
#[derive(Debug)]
pub struct H3Controller {
    events: mpsc::UnboundedReceiver<H3Event>,
    handle: H3Handle,
}

/// A cloneable handle to command a driver.
#[derive(Debug, Clone)]
pub struct H3Handle {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
}

impl H3Controller {
    /// The next event; `None` after the connection is gone.
    ///
    /// # Cancel safety
    /// Cancel-safe.
    pub async fn next_event(&mut self) -> Option<H3Event> {
        self.events.recv().await
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
    /// STOP_SENDING, `Write` RESET_STREAM).
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

    /// Closes the connection with an application error code.
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
    /// Why the request could not be sent (GOAWAY received, connection closed,
    /// headers refused).
    pub async fn send_request(
        &self,
        headers: Vec<Header>,
        has_body: bool,
    ) -> Result<RequestStream, String> {
        let (reply, rx) = oneshot::channel();
        if !self.send(Command::SendRequest {
            headers,
            has_body,
            reply,
        }) {
            return Err("connection closed".into());
        }
        rx.await.map_err(|_| "connection closed".to_string())?
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
}

#[derive(Default)]
struct StreamCtx {
    // Peer → application.
    inbound: Option<mpsc::Sender<InboundFrame>>,
    pending_in: VecDeque<InboundFrame>,
    data_pending: bool,
    recv_done: bool,
    // Application → peer.
    outbound: Option<mpsc::Receiver<OutboundFrame>>,
    pending_out: Option<OutboundFrame>,
    heads_sent: usize,
    send_done: bool,
}

/// Runs HTTP/3 over one QUIC connection, as a server or a client.
pub struct H3Driver {
    is_server: bool,
    settings: Http3Settings,
    h3: Option<h3::Connection>,
    streams: HashMap<u64, StreamCtx>,
    events: mpsc::UnboundedSender<H3Event>,
    commands: mpsc::UnboundedReceiver<Command>,
    queued: VecDeque<Command>,
    waiting_requests: VecDeque<Command>,
    shared: Arc<Shared>,
    buf: Vec<u8>,
    settings_reported: bool,
    goaway_sent: Option<u64>,
    /// A server that sent GOAWAY closes once idle, but not before this:
    /// requests the client sent before it saw the GOAWAY are then refused
    /// with H3_REQUEST_REJECTED (which clients may retry) instead of dying
    /// with the connection.
    close_not_before: Option<Instant>,
    goaway_received: bool,
    next_request_id: u64,
    established_at: Option<Instant>,
    close_error: Option<String>,
    commands_closed: bool,
    goaway_wanted: bool,
}

/// The server flavour of [`H3Driver`].
pub type ServerH3Driver = H3Driver;
/// The client flavour of [`H3Driver`].
pub type ClientH3Driver = H3Driver;

impl H3Driver {
    /// A server driver and its controller.
    pub fn new_server(settings: Http3Settings) -> (Self, H3Controller) {
        Self::new(true, settings)
    }

    /// A client driver and its controller.
    pub fn new_client(settings: Http3Settings) -> (Self, H3Controller) {
        Self::new(false, settings)
    }

    fn new(is_server: bool, settings: Http3Settings) -> (Self, H3Controller) {
        let (etx, erx) = mpsc::unbounded_channel();
        let (ctx, crx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let chunk = settings.body_chunk_size.max(1024);
        (
            Self {
                is_server,
                settings,
                h3: None,
                streams: HashMap::new(),
                events: etx,
                commands: crx,
                queued: VecDeque::new(),
                waiting_requests: VecDeque::new(),
                shared: shared.clone(),
                buf: vec![0; chunk],
                settings_reported: false,
                goaway_sent: None,
                close_not_before: None,
                goaway_received: false,
                next_request_id: 0,
                established_at: None,
                close_error: None,
                commands_closed: false,
                goaway_wanted: false,
            },
            H3Controller {
                events: erx,
                handle: H3Handle {
                    commands: ctx,
                    shared,
                },
            },
        )
    }

    fn emit(&self, e: H3Event) {
        let _ = self.events.send(e);
    }

    fn channel_capacity(&self) -> usize {
        self.settings.stream_channel_capacity.max(1)
    }

    /// Creates the channels of a new stream; returns the application ends.
    fn open_stream(
        &mut self,
        id: u64,
        inbound: bool,
        outbound: bool,
    ) -> (Option<BodyReceiver>, Option<OutboundSender>) {
        let cap = self.channel_capacity();
        let ctx = self.streams.entry(id).or_default();
        let rx = inbound.then(|| {
            let (tx, rx) = mpsc::channel(cap);
            ctx.inbound = Some(tx);
            BodyReceiver {
                stream_id: id,
                rx,
                shared: self.shared.clone(),
            }
        });
        ctx.recv_done = !inbound;
        let tx = outbound.then(|| {
            let (tx, rx) = mpsc::channel(cap);
            ctx.outbound = Some(rx);
            OutboundSender {
                stream_id: id,
                tx,
                shared: self.shared.clone(),
            }
        });
        ctx.send_done = !outbound;
        (rx, tx)
    }

    fn on_headers(
        &mut self,
        qconn: &mut quiche::Connection,
        id: u64,
        list: Vec<Header>,
        more: bool,
    ) {
        if self.is_server && !self.streams.contains_key(&id) {
            if let Some(limit) = self.goaway_sent {
                if id >= limit {
                    debug!(stream = id, "request after GOAWAY rejected");
                    let _ = qconn.stream_shutdown(id, quiche::Shutdown::Read, H3_REQUEST_REJECTED);
                    let _ = qconn.stream_shutdown(id, quiche::Shutdown::Write, H3_REQUEST_REJECTED);
                    return;
                }
            }
            let n = self.shared.requests.fetch_add(1, Ordering::Relaxed) + 1;
            self.next_request_id = self.next_request_id.max(id + 4);
            let (body, response) = self.open_stream(id, more, true);
            let Some(response) = response else { return };
            trace!(stream = id, "request");
            self.emit(H3Event::IncomingRequest(IncomingRequest {
                stream_id: id,
                headers: list,
                body,
                response,
            }));
            if self
                .settings
                .max_requests_per_connection
                .is_some_and(|max| n >= max)
            {
                self.send_goaway(qconn);
            }
            return;
        }
        // A later header section: a client's response heads, or trailers.
        match self.streams.get_mut(&id) {
            // `Finished` follows as its own event when `more` is false.
            Some(ctx) => ctx.pending_in.push_back(InboundFrame::Headers(list)),
            None => trace!(stream = id, "headers for a forgotten stream"),
        }
    }

    fn send_goaway(&mut self, qconn: &mut quiche::Connection) {
        self.goaway_wanted = false;
        if self.goaway_sent.is_some() {
            return;
        }
        let id = if self.is_server {
            self.next_request_id
        } else {
            0
        };
        if let Some(h3) = self.h3.as_mut() {
            match h3.send_goaway(qconn, id) {
                Ok(()) => {
                    debug!(id, "GOAWAY sent");
                    self.goaway_sent = Some(id);
                    if self.is_server {
                        let rtt = qconn.path_stats().next().map_or(Duration::ZERO, |p| p.rtt);
                        self.close_not_before = Some(Instant::now() + (rtt * 3).max(GOAWAY_LINGER));
                    }
                    self.shared.going_away.store(true, Ordering::Relaxed);
                }
                Err(e) => {
                    // Usually StreamBlocked: no connection-level credit right
                    // now (a large response has used it). Try again next turn.
                    debug!(error = %e, "cannot send GOAWAY yet");
                    self.goaway_wanted = true;
                }
            }
        }
    }

    /// Moves what quiche has for the application into stream channels, as
    /// far as they have room.
    ///
    /// Returns whether body bytes were read: quiche reports a stream's end
    /// only from `poll`, so the caller must poll again after reading.
    fn deliver_inbound(&mut self, qconn: &mut quiche::Connection) -> QuicResult<bool> {
        let mut read_any = false;
        let Some(h3) = self.h3.as_mut() else {
            return Ok(false);
        };
        for (&id, ctx) in self.streams.iter_mut() {
            let Some(tx) = &ctx.inbound else {
                // The application does not want this stream's frames (or has
                // dropped its receiver): drain quiche so the stream can close.
                if ctx.data_pending {
                    while let Ok(n) = h3.recv_body(qconn, id, &mut self.buf) {
                        if n == 0 {
                            break;
                        }
                    }
                    ctx.data_pending = false;
                }
                continue;
            };
            if tx.is_closed() {
                // Receiver dropped: ask the peer to stop, once.
                if !ctx.recv_done {
                    let code = if ctx.send_done {
                        H3_NO_ERROR
                    } else {
                        H3_REQUEST_CANCELLED
                    };
                    let _ = qconn.stream_shutdown(id, quiche::Shutdown::Read, code);
                    ctx.recv_done = true;
                }
                ctx.inbound = None;
                ctx.pending_in.clear();
                continue;
            }
            while let Some(f) = ctx.pending_in.pop_front() {
                match tx.try_send(f) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(f)) => {
                        ctx.pending_in.push_front(f);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
            if ctx.pending_in.is_empty() && ctx.data_pending {
                loop {
                    let Ok(permit) = tx.try_reserve() else {
                        break; // full: resume when the application reads
                    };
                    match h3.recv_body(qconn, id, &mut self.buf) {
                        Ok(n) => {
                            read_any = true;
                            self.shared.add_inbound(n);
                            permit.send(InboundFrame::Body(Bytes::copy_from_slice(&self.buf[..n])));
                        }
                        Err(h3::Error::Done) => {
                            ctx.data_pending = false;
                            break;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok(read_any)
    }

    /// Takes every event quiche has, then moves data into stream channels;
    /// repeats while that reading uncovered more (a stream's end, trailers).
    fn pump(&mut self, qconn: &mut quiche::Connection) -> QuicResult<()> {
        loop {
            self.poll_events(qconn);
            if !self.deliver_inbound(qconn)? {
                return Ok(());
            }
        }
    }

    fn poll_events(&mut self, qconn: &mut quiche::Connection) {
        loop {
            let Some(h3) = self.h3.as_mut() else {
                return;
            };
            let (id, ev) = match h3.poll(qconn) {
                Ok(v) => v,
                Err(h3::Error::Done) => break,
                Err(e) => {
                    let msg = format!("HTTP/3 error: {e}");
                    self.emit(H3Event::ConnectionError(msg.clone()));
                    self.close_error = Some(msg);
                    // quiche has already closed the connection with the
                    // right code; nothing more to do here.
                    return;
                }
            };
            match ev {
                h3::Event::Headers { list, more_frames } => {
                    self.on_headers(qconn, id, list, more_frames)
                }
                h3::Event::Data => {
                    if let Some(ctx) = self.streams.get_mut(&id) {
                        ctx.data_pending = true;
                    } else if let Some(h3) = self.h3.as_mut() {
                        while h3.recv_body(qconn, id, &mut self.buf).is_ok() {}
                    }
                }
                h3::Event::Finished => {
                    if let Some(ctx) = self.streams.get_mut(&id) {
                        ctx.pending_in.push_back(InboundFrame::Finished);
                        ctx.recv_done = true;
                    }
                    self.emit(H3Event::StreamFinished { stream_id: id });
                }
                h3::Event::Reset(code) => {
                    if let Some(ctx) = self.streams.get_mut(&id) {
                        ctx.pending_in.push_back(InboundFrame::Reset(code));
                        ctx.recv_done = true;
                        ctx.data_pending = false;
                        // The peer abandoned the stream: stop answering it.
                        if !ctx.send_done {
                            let _ = qconn.stream_shutdown(
                                id,
                                quiche::Shutdown::Write,
                                H3_REQUEST_CANCELLED,
                            );
                            ctx.send_done = true;
                            ctx.pending_out = None;
                        }
                    }
                    self.emit(H3Event::StreamReset {
                        stream_id: id,
                        code,
                    });
                }
                h3::Event::GoAway => {
                    debug!(id, "GOAWAY received");
                    self.goaway_received = true;
                    self.shared.going_away.store(true, Ordering::Relaxed);
                    self.emit(H3Event::GoAway { id });
                }
                h3::Event::PriorityUpdate => {}
            }
        }
        while let Ok(n) = qconn.dgram_recv(&mut self.buf) {
            match read_varint(&self.buf[..n]) {
                Some((quarter, used)) => self.emit(H3Event::Datagram {
                    stream_id: quarter.saturating_mul(4),
                    payload: Bytes::copy_from_slice(&self.buf[used..n]),
                }),
                None => debug!("malformed HTTP datagram dropped"),
            }
        }
        if !self.settings_reported {
            if let Some(raw) = self.h3.as_ref().and_then(|h| h.peer_settings_raw()) {
                self.settings_reported = true;
                self.emit(H3Event::SettingsReceived {
                    settings: raw.to_vec(),
                });
            }
        }
    }

    /// Writes what the application queued, as far as quiche accepts it.
    fn deliver_outbound(&mut self, qconn: &mut quiche::Connection) {
        let Some(h3) = self.h3.as_mut() else {
            return;
        };
        let is_server = self.is_server;
        for (&id, ctx) in self.streams.iter_mut() {
            loop {
                if ctx.send_done {
                    ctx.outbound = None;
                    break;
                }
                if ctx.pending_out.is_none() {
                    let Some(rx) = ctx.outbound.as_mut() else {
                        break;
                    };
                    match rx.try_recv() {
                        Ok(f) => ctx.pending_out = Some(f),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            // Dropped without finishing: abandon the stream.
                            debug!(stream = id, "sender dropped before fin; resetting stream");
                            let _ = qconn.stream_shutdown(
                                id,
                                quiche::Shutdown::Write,
                                H3_REQUEST_CANCELLED,
                            );
                            ctx.send_done = true;
                            continue;
                        }
                    }
                }
                let Some(frame) = ctx.pending_out.take() else {
                    break;
                };
                let progress = match frame {
                    OutboundFrame::Headers { headers, fin } => {
                        let r = if is_server && ctx.heads_sent == 0 {
                            h3.send_response(qconn, id, &headers, fin)
                        } else {
                            h3.send_additional_headers(qconn, id, &headers, !is_server, fin)
                        };
                        match r {
                            Ok(()) => {
                                ctx.heads_sent += 1;
                                ctx.send_done |= fin;
                                true
                            }
                            Err(h3::Error::StreamBlocked) | Err(h3::Error::Done) => {
                                ctx.pending_out = Some(OutboundFrame::Headers { headers, fin });
                                false
                            }
                            Err(e) => {
                                abandon_stream(qconn, id, ctx, "headers", &e);
                                true
                            }
                        }
                    }
                    OutboundFrame::Body(mut bytes, fin) => {
                        match h3.send_body(qconn, id, &bytes, fin) {
                            Ok(n) => {
                                self.shared.sub_outbound(n);
                                if n < bytes.len() {
                                    let _ = bytes.split_to(n);
                                    ctx.pending_out = Some(OutboundFrame::Body(bytes, fin));
                                    false
                                } else {
                                    ctx.send_done |= fin;
                                    true
                                }
                            }
                            Err(h3::Error::Done) | Err(h3::Error::StreamBlocked) => {
                                ctx.pending_out = Some(OutboundFrame::Body(bytes, fin));
                                false
                            }
                            Err(e) => {
                                self.shared.sub_outbound(bytes.len());
                                abandon_stream(qconn, id, ctx, "body", &e);
                                true
                            }
                        }
                    }
                    OutboundFrame::Trailers(headers) => {
                        match h3.send_additional_headers(qconn, id, &headers, true, true) {
                            Ok(()) => {
                                ctx.send_done = true;
                                true
                            }
                            Err(h3::Error::StreamBlocked) | Err(h3::Error::Done) => {
                                ctx.pending_out = Some(OutboundFrame::Trailers(headers));
                                false
                            }
                            Err(e) => {
                                abandon_stream(qconn, id, ctx, "trailers", &e);
                                true
                            }
                        }
                    }
                    OutboundFrame::Reset(code) => {
                        let _ = qconn.stream_shutdown(id, quiche::Shutdown::Write, code);
                        ctx.send_done = true;
                        true
                    }
                    OutboundFrame::StopSending(code) => {
                        let _ = qconn.stream_shutdown(id, quiche::Shutdown::Read, code);
                        ctx.recv_done = true;
                        ctx.inbound = None;
                        true
                    }
                };
                if !progress {
                    break;
                }
            }
        }
    }

    fn run_commands(&mut self, qconn: &mut quiche::Connection) -> QuicResult<()> {
        while let Ok(c) = self.commands.try_recv() {
            self.queued.push_back(c);
        }
        if self.goaway_wanted {
            self.send_goaway(qconn);
        }
        while let Some(c) = self.queued.pop_front() {
            match c {
                Command::GoAway => self.send_goaway(qconn),
                Command::ShutdownStream {
                    stream_id,
                    read,
                    code,
                } => {
                    let direction = if read {
                        quiche::Shutdown::Read
                    } else {
                        quiche::Shutdown::Write
                    };
                    let _ = qconn.stream_shutdown(stream_id, direction, code);
                    if let Some(ctx) = self.streams.get_mut(&stream_id) {
                        if read {
                            ctx.recv_done = true;
                            ctx.inbound = None;
                        } else {
                            ctx.send_done = true;
                        }
                    }
                }
                Command::Close { code, reason } => {
                    return Err(Box::new(ApplicationClose { code, reason }));
                }
                Command::SendDatagram { stream_id, payload } => {
                    let mut d = Vec::with_capacity(payload.len() + 8);
                    write_varint(&mut d, stream_id / 4);
                    d.extend_from_slice(&payload);
                    if let Err(e) = qconn.dgram_send(&d) {
                        debug!(error = %e, "datagram dropped");
                    }
                }
                c @ Command::SendRequest { .. } => self.waiting_requests.push_back(c),
            }
        }
        self.send_waiting_requests(qconn);
        Ok(())
    }

    fn send_waiting_requests(&mut self, qconn: &mut quiche::Connection) {
        while let Some(c) = self.waiting_requests.pop_front() {
            let Command::SendRequest {
                headers,
                has_body,
                reply,
            } = c
            else {
                continue;
            };
            if self.goaway_received || self.goaway_sent.is_some() {
                let _ = reply.send(Err("the connection is going away (GOAWAY)".into()));
                continue;
            }
            if reply.is_closed() {
                continue;
            }
            if qconn.peer_streams_left_bidi() == 0 {
                // At the peer's limit: wait for a stream to free.
                self.waiting_requests.push_front(Command::SendRequest {
                    headers,
                    has_body,
                    reply,
                });
                return;
            }
            let Some(h3) = self.h3.as_mut() else { return };
            match h3.send_request(qconn, &headers, !has_body) {
                Ok(id) => {
                    self.shared.requests.fetch_add(1, Ordering::Relaxed);
                    let (response, body) = self.open_stream(id, true, has_body);
                    let Some(response) = response else { continue };
                    let _ = reply.send(Ok(RequestStream {
                        stream_id: id,
                        body,
                        response,
                    }));
                }
                Err(h3::Error::StreamBlocked)
                | Err(h3::Error::TransportError(quiche::Error::StreamLimit)) => {
                    self.waiting_requests.push_front(Command::SendRequest {
                        headers,
                        has_body,
                        reply,
                    });
                    return;
                }
                Err(e) => {
                    let _ = reply.send(Err(format!("request refused: {e}")));
                }
            }
        }
    }

    /// Forgets streams finished in both directions whose frames were all
    /// delivered; closes a going-away connection once nothing is left.
    fn collect_streams(&mut self, qconn: &mut quiche::Connection) -> QuicResult<()> {
        self.streams.retain(|_, ctx| {
            let inbound_done = ctx.recv_done && ctx.pending_in.is_empty();
            !(inbound_done && ctx.send_done && ctx.pending_out.is_none())
        });
        let going_away = self.goaway_sent.is_some() || self.goaway_received;
        let lingering = self.close_not_before.is_some_and(|t| Instant::now() < t);
        if going_away
            && !lingering
            && self.streams.is_empty()
            && self.waiting_requests.is_empty()
            && !qconn.is_closed()
        {
            debug!("going away and idle: closing with H3_NO_ERROR");
            qconn.close(true, H3_NO_ERROR, b"")?;
        }
        Ok(())
    }
}

impl ApplicationOverQuic for H3Driver {
    fn on_conn_established(
        &mut self,
        qconn: &mut quiche::Connection,
        _info: &HandshakeInfo,
    ) -> QuicResult<()> {
        let config = self.settings.to_quiche()?;
        self.h3 = Some(h3::Connection::with_transport(qconn, &config)?);
        self.established_at = Some(Instant::now());
        Ok(())
    }

    async fn wait_for_data(&mut self, _qconn: &mut quiche::Connection) -> QuicResult<()> {
        let deadline = match (
            self.is_server,
            self.settings.first_request_timeout,
            self.established_at,
        ) {
            (true, Some(t), Some(at)) if self.shared.requests.load(Ordering::Relaxed) == 0 => {
                Some(at + t)
            }
            _ => None,
        };
        // Wake when a going-away server's linger ends, to close if idle.
        let linger = self.close_not_before.filter(|t| *t > Instant::now());
        let deadline = match (deadline, linger) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        enum Wake {
            Command(Option<Command>),
            Notified,
            FirstRequestTimeout,
        }
        let wake = tokio::select! {
            c = self.commands.recv(), if !self.commands_closed => Wake::Command(c),
            () = self.shared.notify.notified() => Wake::Notified,
            () = timer => Wake::FirstRequestTimeout,
        };
        match wake {
            Wake::Command(Some(c)) => self.queued.push_back(c),
            // Every handle is gone: stop listening for commands, or this
            // future would be ready forever.
            Wake::Command(None) => self.commands_closed = true,
            Wake::Notified => {}
            Wake::FirstRequestTimeout if linger.is_some_and(|t| t <= Instant::now()) => {}
            Wake::FirstRequestTimeout => {
                debug!("no request within the first-request timeout; closing");
                return Err(Box::new(ApplicationClose {
                    code: H3_NO_ERROR,
                    reason: "no request".into(),
                }));
            }
        }
        Ok(())
    }

    fn process_reads(&mut self, qconn: &mut quiche::Connection) -> QuicResult<()> {
        self.pump(qconn)
    }

    fn process_writes(&mut self, qconn: &mut quiche::Connection) -> QuicResult<()> {
        self.run_commands(qconn)?;
        self.pump(qconn)?;
        self.deliver_outbound(qconn);
        self.collect_streams(qconn)
    }

    fn on_conn_close<M: Metrics>(
        &mut self,
        qconn: &mut quiche::Connection,
        _metrics: &M,
        result: &QuicResult<()>,
    ) {
        let error = self
            .close_error
            .take()
            .or_else(|| result.as_ref().err().map(|e| e.to_string()))
            .or_else(|| {
                qconn
                    .peer_error()
                    .or(qconn.local_error())
                    .filter(|e| !(e.is_app && (e.error_code == H3_NO_ERROR || e.error_code == 0)))
                    .map(|e| format!("closed with code {:#x}", e.error_code))
            });
        // Streams still open end here: their receivers see `None`.
        self.streams.clear();
        for c in self.waiting_requests.drain(..) {
            if let Command::SendRequest { reply, .. } = c {
                let _ = reply.send(Err("connection closed".into()));
            }
        }
        self.emit(H3Event::ConnectionShutdown { error });
    }
}

/// Gives up on our side of a stream after quiche refused a frame for it.
fn abandon_stream(
    qconn: &mut quiche::Connection,
    id: u64,
    ctx: &mut StreamCtx,
    what: &str,
    e: &h3::Error,
) {
    debug!(stream = id, error = %e, "cannot send {what}; resetting stream");
    let _ = qconn.stream_shutdown(id, quiche::Shutdown::Write, H3_INTERNAL_ERROR);
    ctx.send_done = true;
}

/// A QUIC variable-length integer (RFC 9000 §16): value and bytes used.
fn read_varint(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let len = 1usize << (first >> 6);
    let bytes = b.get(..len)?;
    Some((
        bytes[1..]
            .iter()
            .fold(u64::from(first & 0x3f), |v, &x| (v << 8) | u64::from(x)),
        len,
    ))
}

fn write_varint(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=63 => out.push(v as u8),
        64..=16_383 => out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
        16_384..=1_073_741_823 => out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}

/// Reads a header's value by name.
pub fn header_value<'a>(headers: &'a [Header], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name() == name.as_bytes())
        .map(|h| h.value())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 63, 64, 16_383, 16_384, 1 << 30, (1 << 62) - 1] {
            let mut b = Vec::new();
            write_varint(&mut b, v);
            assert_eq!(read_varint(&b), Some((v, b.len())), "{v}");
        }
        assert_eq!(read_varint(&[0x40]), None);
    }
}
