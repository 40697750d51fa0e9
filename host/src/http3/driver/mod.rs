//! The H3 driver: an [`ApplicationOverQuic`] that runs `quiche::h3` on a
//! connection and turns it into events and per-stream channels.
//!
//! The driver never blocks on the application: inbound body data is read
//! from quiche only while the stream's channel has room (otherwise quiche's
//! flow control holds the peer back), and outbound frames are taken from the
//! application only when quiche has accepted the previous one. So memory per
//! stream is bounded by the channel capacity plus one frame, both ways.
//!
//! ```text
//!   worker ─ process_reads ─▶ poll_events ─▶ StreamTable::deliver_inbound ─▶ BodyReceiver
//!          ─ process_writes ▶ run_commands ─▶ StreamTable::deliver_outbound ◀ OutboundSender
//!                           ▶ StreamTable::collect (drop finished streams; close if going away and idle)
//! ```
//!
//! The parts: [`streams`] (per-stream state and delivery), [`hooks`] (what
//! differs between roles), [`server`] and [`client`] (the two roles).

mod client;
mod hooks;
mod server;
mod streams;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quiche::h3::{self, Header};
use tokio::sync::mpsc;
use tracing::debug;

use super::controller::{Command, H3Controller, H3Event, H3Handle};
use super::error::H3_NO_ERROR;
use super::frames::Shared;
use super::settings::Http3Settings;
use crate::metrics::Metrics;
use crate::quic::{varint, ApplicationClose, ApplicationOverQuic, HandshakeInfo, QuicResult};

pub use client::ClientHooks;
pub use hooks::DriverHooks;
pub use server::ServerHooks;
use streams::{clamp_code, StreamTable};

/// How long a going-away, otherwise idle connection waits for the peer to
/// acknowledge its streams' last bytes before closing anyway (a peer that
/// never acknowledges must not hold the connection open).
const FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// The longest close reason sent: the rest is cut (a CONNECTION_CLOSE frame
/// must fit in one packet).
const MAX_REASON: usize = 256;

/// Runs HTTP/3 over one QUIC connection, in the server or the client role
/// (`H`: [`ServerHooks`] or [`ClientHooks`]; see [`ServerH3Driver`] and
/// [`ClientH3Driver`]).
pub struct H3Driver<H: DriverHooks> {
    hooks: H,
    settings: Http3Settings,
    h3: Option<h3::Connection>,
    streams: StreamTable,
    events: mpsc::UnboundedSender<H3Event>,
    commands: mpsc::UnboundedReceiver<Command>,
    queued: VecDeque<Command>,
    shared: Arc<Shared>,
    settings_reported: bool,
    goaway: GoAway,
    established_at: Option<Instant>,
    close_error: Option<String>,
    commands_closed: bool,
    /// Since when a going-away connection has had nothing left but
    /// unacknowledged data.
    flushing_since: Option<Instant>,
}

/// GOAWAY in either direction.
#[derive(Debug, Default)]
struct GoAway {
    /// The id our GOAWAY carried, once sent.
    sent: Option<u64>,
    /// Asked for, but quiche could not send it yet (no credit).
    wanted: bool,
    received: bool,
}

impl GoAway {
    fn any(&self) -> bool {
        self.sent.is_some() || self.received
    }
}

/// The server flavour of [`H3Driver`].
pub type ServerH3Driver = H3Driver<ServerHooks>;
/// The client flavour of [`H3Driver`].
pub type ClientH3Driver = H3Driver<ClientHooks>;

impl<H: DriverHooks> H3Driver<H> {
    fn new(settings: Http3Settings) -> (Self, H3Controller) {
        let (etx, erx) = mpsc::unbounded_channel();
        let (ctx, crx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let streams = StreamTable::new(
            settings.stream_channel_capacity,
            settings.body_chunk_size,
            shared.clone(),
        );
        (
            Self {
                hooks: H::default(),
                settings,
                h3: None,
                streams,
                events: etx,
                commands: crx,
                queued: VecDeque::new(),
                shared: shared.clone(),
                settings_reported: false,
                goaway: GoAway::default(),
                established_at: None,
                close_error: None,
                commands_closed: false,
                flushing_since: None,
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

    /// Streams the driver keeps state for (tests of the stream lifecycle).
    #[cfg(test)]
    pub(crate) fn stream_count(&self) -> usize {
        self.streams.len()
    }

    fn emit(&self, e: H3Event) {
        let _ = self.events.send(e);
    }

    fn send_goaway(&mut self, qconn: &mut quiche::Connection) {
        self.goaway.wanted = false;
        if self.goaway.sent.is_some() {
            return;
        }
        let id = H::goaway_id(self);
        let Some(h3) = self.h3.as_mut() else {
            // Not established yet: send it once it is.
            self.goaway.wanted = true;
            return;
        };
        match h3.send_goaway(qconn, id) {
            Ok(()) => {
                debug!(id, "GOAWAY sent");
                self.goaway.sent = Some(id);
                self.shared.going_away.store(true, Ordering::Relaxed);
                H::on_goaway_sent(self, qconn);
            }
            Err(e) => {
                // Usually StreamBlocked: no connection-level credit right
                // now (a large response has used it). Try again next turn.
                debug!(error = %e, "cannot send GOAWAY yet");
                self.goaway.wanted = true;
            }
        }
    }

    /// Takes every event quiche has, then moves data into stream channels;
    /// repeats while that reading uncovered more (a stream's end, trailers).
    fn pump(&mut self, qconn: &mut quiche::Connection) -> QuicResult<()> {
        loop {
            self.poll_events(qconn);
            let Some(h3) = self.h3.as_mut() else {
                return Ok(());
            };
            if !self.streams.deliver_inbound(h3, qconn)? {
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
                    if self.streams.contains(id) {
                        self.streams.headers(id, list);
                    } else {
                        H::on_new_stream_headers(self, qconn, id, list, more_frames);
                    }
                }
                h3::Event::Data => {
                    if !self.streams.data(id) {
                        // Nobody wants it: drain so the stream can close.
                        while h3.recv_body(qconn, id, self.streams.buf()).is_ok() {}
                    }
                }
                h3::Event::Finished => {
                    self.streams.finished(id);
                    self.emit(H3Event::StreamFinished { stream_id: id });
                }
                h3::Event::Reset(code) => {
                    self.streams.reset(qconn, id, code);
                    self.emit(H3Event::StreamReset {
                        stream_id: id,
                        code,
                    });
                }
                h3::Event::GoAway => {
                    debug!(id, "GOAWAY received");
                    self.goaway.received = true;
                    self.shared.going_away.store(true, Ordering::Relaxed);
                    self.emit(H3Event::GoAway { id });
                }
                h3::Event::PriorityUpdate => {}
            }
        }
        self.recv_datagrams(qconn);
        if !self.settings_reported {
            if let Some(raw) = self.h3.as_ref().and_then(|h| h.peer_settings_raw()) {
                self.settings_reported = true;
                self.emit(H3Event::SettingsReceived {
                    settings: raw.to_vec(),
                });
            }
        }
    }

    /// HTTP datagrams (RFC 9297): a quarter stream id, then the payload.
    fn recv_datagrams(&mut self, qconn: &mut quiche::Connection) {
        loop {
            let buf = self.streams.buf();
            let Ok(n) = qconn.dgram_recv(buf) else {
                return;
            };
            match varint::read(&buf[..n]) {
                Some((quarter, used)) => {
                    let payload = Bytes::copy_from_slice(&buf[used..n]);
                    self.emit(H3Event::Datagram {
                        stream_id: quarter.saturating_mul(4),
                        payload,
                    });
                }
                None => debug!("malformed HTTP datagram dropped"),
            }
        }
    }

    fn run_commands(&mut self, qconn: &mut quiche::Connection) -> QuicResult<()> {
        while let Ok(c) = self.commands.try_recv() {
            self.queued.push_back(c);
        }
        if self.goaway.wanted {
            self.send_goaway(qconn);
        }
        while let Some(c) = self.queued.pop_front() {
            match c {
                Command::GoAway => self.send_goaway(qconn),
                Command::ShutdownStream {
                    stream_id,
                    read,
                    code,
                } => self.streams.shutdown(qconn, stream_id, read, code),
                Command::Close { code, mut reason } => {
                    if reason.len() > MAX_REASON {
                        let mut end = MAX_REASON;
                        while !reason.is_char_boundary(end) {
                            end -= 1;
                        }
                        reason.truncate(end);
                    }
                    return Err(Box::new(ApplicationClose {
                        code: clamp_code(code),
                        reason,
                    }));
                }
                Command::SendDatagram { stream_id, payload } => {
                    let mut d = Vec::with_capacity(payload.len() + 8);
                    // A quarter stream id is below 2^62 by construction.
                    let _ = varint::write(&mut d, stream_id / 4);
                    d.extend_from_slice(&payload);
                    if let Err(e) = qconn.dgram_send(&d) {
                        debug!(error = %e, "datagram dropped");
                    }
                }
                Command::SendRequest(r) => H::on_send_request(self, r),
            }
        }
        H::flush(self, qconn);
        Ok(())
    }

    /// Forgets finished streams; closes a going-away connection once nothing
    /// is left and the peer has acknowledged every stream's data (quiche
    /// drops unsent stream data when the connection closes), or
    /// [`FLUSH_LIMIT`] after only that was left.
    fn collect_streams(&mut self, qconn: &mut quiche::Connection) -> QuicResult<()> {
        self.streams.collect(qconn);
        if !self.goaway.any() || !self.streams.is_empty() || !H::is_idle(self) || qconn.is_closed()
        {
            self.flushing_since = None;
            return Ok(());
        }
        let since = *self.flushing_since.get_or_insert_with(Instant::now);
        if self.streams.all_acked() || since.elapsed() >= FLUSH_LIMIT {
            debug!("going away and idle: closing with H3_NO_ERROR");
            qconn.close(true, H3_NO_ERROR, b"")?;
        }
        Ok(())
    }

    /// When the driver must wake even with nothing else to do: the role's
    /// deadline, or the end of the wait for acknowledgements.
    fn deadline(&self) -> Option<Instant> {
        let flush = self.flushing_since.map(|t| t + FLUSH_LIMIT);
        match (H::deadline(self), flush) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl<H: DriverHooks> ApplicationOverQuic for H3Driver<H> {
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
        let deadline = self.deadline();
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        enum Wake {
            Command(Option<Command>),
            Notified,
            Deadline,
        }
        let wake = tokio::select! {
            c = self.commands.recv(), if !self.commands_closed => Wake::Command(c),
            () = self.shared.notify.notified() => Wake::Notified,
            () = timer => Wake::Deadline,
        };
        match wake {
            Wake::Command(Some(c)) => self.queued.push_back(c),
            // Every handle is gone: stop listening for commands, or this
            // future would be ready forever.
            Wake::Command(None) => self.commands_closed = true,
            Wake::Notified => {}
            Wake::Deadline => H::on_deadline(self)?,
        }
        Ok(())
    }

    fn process_reads(&mut self, qconn: &mut quiche::Connection) -> QuicResult<()> {
        self.pump(qconn)
    }

    fn process_writes(&mut self, qconn: &mut quiche::Connection) -> QuicResult<()> {
        self.run_commands(qconn)?;
        self.pump(qconn)?;
        if let Some(h3) = self.h3.as_mut() {
            self.streams.deliver_outbound(h3, qconn, H::IS_SERVER);
        }
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
        H::on_close(self);
        self.emit(H3Event::ConnectionShutdown { error });
    }
}

/// Reads a header's value by name.
///
/// ```
/// let h = tq_host::http3::headers(&[(":status", "200")]);
/// assert_eq!(tq_host::http3::header_value(&h, ":status"), Some(&b"200"[..]));
/// ```
pub fn header_value<'a>(headers: &'a [Header], name: &str) -> Option<&'a [u8]> {
    use quiche::h3::NameValue;
    headers
        .iter()
        .find(|h| h.name() == name.as_bytes())
        .map(|h| h.value())
}
