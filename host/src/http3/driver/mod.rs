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
//! The parts: `core.rs` (the state both roles share), `streams.rs`
//! (per-stream state and delivery), `hooks.rs` (what differs between
//! roles), `server.rs` and `client.rs` (the two roles). Imports run one
//! way: this module → hooks, server, client → core → streams.

mod client;
mod core;
mod hooks;
mod server;
mod streams;
#[cfg(test)]
mod tests;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quiche::h3::{self, Header};
use tokio::sync::mpsc;
use tracing::debug;

use super::controller::{Command, H3Controller, H3Event, H3Handle};
use super::error::{H3_NO_ERROR, H3_REQUEST_CANCELLED, H3_REQUEST_INCOMPLETE};
use super::frames::Shared;
use super::settings::Http3Settings;
use crate::metrics::Metrics;
use crate::quic::{varint, ApplicationClose, ApplicationOverQuic, HandshakeInfo, QuicResult};

use self::core::earliest;
pub use self::core::DriverCore;
pub use client::ClientHooks;
pub use hooks::DriverHooks;
pub use server::ServerHooks;
use streams::clamp_code;

/// How long a going-away, otherwise idle connection waits for the peer to
/// acknowledge its streams' last bytes before closing anyway (a peer that
/// never acknowledges must not hold the connection open).
const FLUSH_LIMIT: Duration = Duration::from_secs(3);

/// The longest close reason sent: the rest is cut (a CONNECTION_CLOSE frame
/// must fit in one packet).
const MAX_REASON: usize = 256;

/// Runs HTTP/3 over one QUIC connection, in the server or the client role
/// (`H`: [`ServerHooks`] or [`ClientHooks`]; see [`ServerH3Driver`] and
/// [`ClientH3Driver`]).
pub struct H3Driver<H: DriverHooks> {
    hooks: H,
    core: DriverCore,
}

/// The server flavour of [`H3Driver`].
pub type ServerH3Driver = H3Driver<ServerHooks>;
/// The client flavour of [`H3Driver`].
pub type ClientH3Driver = H3Driver<ClientHooks>;

impl H3Driver<ServerHooks> {
    /// A server driver and its controller.
    pub fn new_server(settings: Http3Settings) -> (Self, H3Controller) {
        Self::new(settings)
    }

    /// Reports every request to `sink` when it ends (finished, reset, or
    /// cut by the connection's end), labelled with who answers it
    /// (`world`: `native`, `http3-app`, `wasi-http`) and the plugin
    /// `version`, if any. This is what feeds request metrics and the
    /// access log.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tq_host::http3::{Http3Settings, ServerH3Driver};
    /// use tq_host::metrics::AccessLog;
    /// let (driver, _controller) = ServerH3Driver::new_server(Http3Settings::default());
    /// let _driver = driver.with_request_metrics(Arc::new(AccessLog), "native", None);
    /// ```
    pub fn with_request_metrics(
        mut self,
        sink: Arc<dyn crate::metrics::ServiceMetrics>,
        world: &'static str,
        version: Option<String>,
    ) -> Self {
        self.core.streams.requests = Some(streams::RequestSink {
            sink,
            world,
            version,
        });
        self
    }
}

impl H3Driver<ClientHooks> {
    /// A client driver and its controller.
    pub fn new_client(settings: Http3Settings) -> (Self, H3Controller) {
        Self::new(settings)
    }
}

impl<H: DriverHooks> H3Driver<H> {
    fn new(settings: Http3Settings) -> (Self, H3Controller) {
        let (etx, erx) = mpsc::unbounded_channel();
        let (ctx, crx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        (
            Self {
                hooks: H::default(),
                core: DriverCore::new(settings, etx, crx, shared.clone()),
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
        self.core.streams.count()
    }

    /// Entries in every per-stream map of the driver (tests).
    #[cfg(test)]
    pub(crate) fn stream_entries(&self) -> usize {
        self.core.streams.entries()
    }

    /// The peer's unidirectional streams the driver tracks (tests).
    #[cfg(test)]
    pub(crate) fn peer_uni_count(&self) -> usize {
        self.core.streams.peer_uni_count()
    }

    fn send_goaway(&mut self, qconn: &mut quiche::Connection) {
        if self.core.send_goaway(qconn, self.hooks.goaway_id()) {
            self.hooks.on_goaway_sent(qconn);
        }
    }

    /// Takes every event quiche has, then moves data into stream channels;
    /// repeats while that reading uncovered more (a stream's end, trailers).
    /// While the application has `EVENT_BACKLOG` events queued, nothing
    /// is read: the peer's new requests wait in quiche, within its flow
    /// control and stream limits.
    fn pump(&mut self, qconn: &mut quiche::Connection) -> QuicResult<()> {
        loop {
            // Servers only: a client paces its own requests.
            if H::IS_SERVER && self.core.backlogged() {
                return Ok(());
            }
            self.core
                .streams
                .note_unseen(qconn, Instant::now(), H::IS_SERVER);
            self.poll_events(qconn);
            let core = &mut self.core;
            let Some(h3) = core.h3.as_mut() else {
                return Ok(());
            };
            if !core.streams.deliver_inbound(h3, qconn, H::IS_SERVER)? {
                return Ok(());
            }
        }
    }

    fn poll_events(&mut self, qconn: &mut quiche::Connection) {
        let core = &mut self.core;
        loop {
            let Some(h3) = core.h3.as_mut() else {
                return;
            };
            let (id, ev) = match h3.poll(qconn) {
                Ok(v) => v,
                Err(h3::Error::Done) => break,
                Err(e) => {
                    let msg = format!("HTTP/3 error: {e}");
                    core.emit(H3Event::ConnectionError(msg.clone()));
                    core.close_error = Some(msg);
                    // quiche has already closed the connection with the
                    // right code; nothing more to do here.
                    return;
                }
            };
            match ev {
                h3::Event::Headers { list, more_frames } => {
                    if core.streams.contains(id) {
                        core.streams.headers(id, list);
                    } else {
                        self.hooks
                            .on_new_stream_headers(core, qconn, id, list, more_frames);
                    }
                }
                h3::Event::Data => {
                    if !core.streams.data(id) {
                        // Nobody wants it: drain so the stream can close.
                        let mut buf = core.streams.scratch();
                        while h3.recv_body(qconn, id, &mut buf).is_ok() {}
                    }
                }
                h3::Event::Finished => {
                    if core.streams.contains(id) {
                        core.streams.finished(id);
                    } else if H::IS_SERVER {
                        // A request stream that ended before a full header
                        // section (RFC 9114 §4.1.2).
                        core.streams.orphan(qconn, id, H3_REQUEST_INCOMPLETE);
                    }
                    core.emit(H3Event::StreamFinished { stream_id: id });
                }
                h3::Event::Reset(code) => {
                    let cut = if core.streams.contains(id) {
                        core.streams.reset(qconn, id, code)
                    } else {
                        if H::IS_SERVER {
                            // Reset before its header section was read: our
                            // side is closed too, so quiche can free it.
                            core.streams.orphan(qconn, id, H3_REQUEST_CANCELLED);
                        }
                        true
                    };
                    // Only a reset that cuts the stream stops its handler:
                    // one with H3_NO_ERROR ends the request's body (the
                    // handler reads a reset) and leaves the answer going.
                    if cut {
                        core.emit(H3Event::StreamReset {
                            stream_id: id,
                            code,
                        });
                    }
                }
                h3::Event::GoAway => {
                    debug!(id, "GOAWAY received");
                    core.goaway.received = true;
                    core.shared.going_away.store(true, Ordering::Relaxed);
                    core.emit(H3Event::GoAway { id });
                }
                h3::Event::PriorityUpdate => {}
            }
        }
        recv_datagrams(core, qconn);
        if !core.settings_reported {
            if let Some(raw) = core.h3.as_ref().and_then(|h| h.peer_settings_raw()) {
                core.settings_reported = true;
                let settings = raw.to_vec();
                core.emit(H3Event::SettingsReceived { settings });
            }
        }
    }

    fn run_commands(&mut self, qconn: &mut quiche::Connection) -> QuicResult<()> {
        while let Ok(c) = self.core.commands.try_recv() {
            self.core.queued.push_back(c);
        }
        if self.core.goaway.wanted {
            self.send_goaway(qconn);
        }
        while let Some(c) = self.core.queued.pop_front() {
            match c {
                Command::GoAway => self.send_goaway(qconn),
                Command::ShutdownStream {
                    stream_id,
                    read,
                    code,
                } => self.core.streams.shutdown(qconn, stream_id, read, code),
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
                Command::SendRequest(r) => self.hooks.on_send_request(r),
            }
        }
        self.hooks.flush(&mut self.core, qconn);
        Ok(())
    }

    /// Forgets finished streams; closes a going-away connection once nothing
    /// is left, the peer has acknowledged every stream's data (quiche drops
    /// unsent stream data when the connection closes) and has had the
    /// role's [`DriverHooks::PEER_CLOSE_GRACE`] to close first; or
    /// [`FLUSH_LIMIT`] after only that was left.
    fn collect_streams(&mut self, qconn: &mut quiche::Connection) -> QuicResult<()> {
        let core = &mut self.core;
        core.streams.collect(core.h3.as_mut(), qconn);
        if !core.goaway.any()
            || !core.streams.is_empty()
            || !self.hooks.is_idle()
            || qconn.is_closed()
        {
            core.flushing_since = None;
            core.acked_since = None;
            return Ok(());
        }
        let now = Instant::now();
        core.flushing_since.get_or_insert(now);
        if core.streams.all_acked() {
            core.acked_since.get_or_insert(now);
        } else {
            core.acked_since = None;
        }
        if self.close_due().is_some_and(|t| now >= t) {
            debug!("going away and idle: closing with H3_NO_ERROR");
            qconn.close(true, H3_NO_ERROR, b"")?;
        }
        Ok(())
    }

    /// Servers: resets the request streams a peer has left stalled (a
    /// client is not cut off for waiting on a slow server).
    fn cut_stalled(&mut self, qconn: &mut quiche::Connection) {
        let core = &mut self.core;
        let Some(timeout) = core.settings.stream_stall_timeout.filter(|_| H::IS_SERVER) else {
            return;
        };
        let backlogged = core.backlogged();
        let (cut, next) = core
            .streams
            .cut_stalled(qconn, Instant::now(), timeout, backlogged);
        core.stall_due = next;
        for stream_id in cut {
            core.emit(H3Event::StreamReset {
                stream_id,
                code: H3_REQUEST_CANCELLED,
            });
        }
    }

    /// When a going-away, idle connection closes: after the grace once all
    /// is acknowledged, or at the flush limit.
    fn close_due(&self) -> Option<Instant> {
        let core = &self.core;
        earliest(
            core.flushing_since.map(|t| t + FLUSH_LIMIT),
            core.acked_since.map(|t| t + H::PEER_CLOSE_GRACE),
        )
    }

    /// When the driver must wake even with nothing else to do: the role's
    /// deadline, or the connection's close.
    fn deadline(&self) -> Option<Instant> {
        earliest(
            earliest(self.hooks.deadline(&self.core), self.close_due()),
            earliest(self.core.stall_due, self.core.unwanted_due),
        )
    }
}

/// HTTP datagrams (RFC 9297): a quarter stream id, then the payload.
fn recv_datagrams(core: &mut DriverCore, qconn: &mut quiche::Connection) {
    let mut buf = core.streams.scratch();
    loop {
        let Ok(n) = qconn.dgram_recv(&mut buf) else {
            return;
        };
        match varint::read(&buf[..n]) {
            Some((quarter, used)) => {
                let payload = Bytes::copy_from_slice(&buf[used..n]);
                core.emit(H3Event::Datagram {
                    stream_id: quarter.saturating_mul(4),
                    payload,
                });
            }
            None => debug!("malformed HTTP datagram dropped"),
        }
    }
}

impl<H: DriverHooks> ApplicationOverQuic for H3Driver<H> {
    fn on_conn_established(
        &mut self,
        qconn: &mut quiche::Connection,
        _info: &HandshakeInfo,
    ) -> QuicResult<()> {
        let config = self.core.settings.to_quiche()?;
        self.core.h3 = Some(h3::Connection::with_transport(qconn, &config)?);
        self.core.established_at = Some(Instant::now());
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
        let core = &mut self.core;
        let wake = tokio::select! {
            c = core.commands.recv(), if !core.commands_closed => Wake::Command(c),
            () = core.shared.notify.notified() => Wake::Notified,
            () = timer => Wake::Deadline,
        };
        match wake {
            Wake::Command(Some(c)) => core.queued.push_back(c),
            // Every handle is gone: stop listening for commands, or this
            // future would be ready forever.
            Wake::Command(None) => core.commands_closed = true,
            Wake::Notified => {}
            Wake::Deadline => self.hooks.on_deadline(&self.core)?,
        }
        Ok(())
    }

    fn process_reads(&mut self, qconn: &mut quiche::Connection) -> QuicResult<()> {
        self.pump(qconn)
    }

    fn process_writes(&mut self, qconn: &mut quiche::Connection) -> QuicResult<()> {
        self.run_commands(qconn)?;
        self.pump(qconn)?;
        let core = &mut self.core;
        if let Some(h3) = core.h3.as_mut() {
            core.streams.deliver_outbound(h3, qconn, H::IS_SERVER);
        }
        self.cut_stalled(qconn);
        self.core.unwanted_due = self.core.streams.stop_unwanted(qconn, Instant::now());
        self.collect_streams(qconn)
    }

    fn on_conn_close<M: Metrics>(
        &mut self,
        qconn: &mut quiche::Connection,
        _metrics: &M,
        result: &QuicResult<()>,
    ) {
        let core = &mut self.core;
        let error = core
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
        core.streams.clear();
        self.hooks.on_close();
        self.core.emit(H3Event::ConnectionShutdown { error });
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
