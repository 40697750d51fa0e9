//! The host side of the `h3-connection` interface an HTTP/3 plugin imports.
//!
//! Host functions never block: they queue frames on the request's bounded
//! channel if it has room and otherwise tell the plugin it is `blocked`,
//! remembering to send it a `writable` event once the stream drains.
//!
//! What a plugin can make the host hold is bounded in bytes, not only in
//! frames: a body chunk is at most [`MAX_BODY_CHUNK`] (more is accepted in
//! part), a header section at most [`MAX_HEAD`], and the connection's
//! queued body bytes at most [`CONNECTION_BUDGET`] (past it, writes wait
//! for `writable` like a full stream).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::super::bindings::h3::tq::plugin::h3_connection::Host as H3ConnectionHost;
use super::super::bindings::h3::tq::plugin::types::{ErrorCode, Header};
use super::super::bindings::h3::Http3AppPre;
use super::super::sandbox::PluginState;
use crate::http3::{H3Handle, OutboundFrame, OutboundSender, TrySend};

/// The most body bytes one `send-body` call queues; the rest of a larger
/// chunk is left to the plugin (the call returns how much was taken).
pub(crate) const MAX_BODY_CHUNK: usize = 64 * 1024;

/// The largest header section (RFC 9114 size) a plugin may send; larger is
/// `invalid-argument`.
pub(crate) const MAX_HEAD: u64 = 64 * 1024;

/// Body bytes all of a connection's responses may have queued in the host
/// at once.
pub(crate) const CONNECTION_BUDGET: usize = 4 * 1024 * 1024;

/// An `http3-app` component linked and ready to instantiate.
pub(crate) type Http3Pre = Http3AppPre<PluginState<H3Conn>>;

/// An HTTP/3 plugin's view of its connection.
pub(crate) struct H3Conn {
    /// Response senders of requests the plugin may still answer.
    pub(crate) streams: HashMap<u64, OutboundSender>,
    /// Streams the plugin found full; each gets a `writable` event.
    pub(crate) want_writable: Vec<u64>,
    /// Requests whose body the plugin may still be sent: what
    /// `stop-sending` may name.
    pub(crate) reading: HashSet<u64>,
    /// The plugin asked to close the connection (once is enough).
    closing: bool,
    pub(crate) handle: H3Handle,
}

impl H3Conn {
    pub(crate) fn new(handle: H3Handle) -> Self {
        Self {
            streams: HashMap::new(),
            want_writable: Vec::new(),
            reading: HashSet::new(),
            closing: false,
            handle,
        }
    }

    fn queue(&mut self, stream: u64, frame: OutboundFrame, ends: bool) -> Result<bool, ErrorCode> {
        let sender = self.streams.get(&stream).ok_or(ErrorCode::InvalidStream)?;
        if matches!(&frame, OutboundFrame::Body(b, _) if !b.is_empty())
            && sender.shared.outbound_buffered.load(Ordering::Relaxed) >= CONNECTION_BUDGET
        {
            self.blocked(stream);
            return Ok(false);
        }
        match sender.try_send(frame) {
            Ok(()) => {
                if ends {
                    self.streams.remove(&stream);
                }
                Ok(true)
            }
            Err(TrySend::Full(_)) => {
                self.blocked(stream);
                Ok(false)
            }
            Err(TrySend::Closed) => {
                self.streams.remove(&stream);
                Err(ErrorCode::InvalidStream)
            }
        }
    }

    /// The plugin gets a `writable` event for `stream` once it may write.
    fn blocked(&mut self, stream: u64) {
        if !self.want_writable.contains(&stream) {
            self.want_writable.push(stream);
        }
    }
}

/// Checks a header section a plugin sends: bounded size, and names and
/// values HTTP/3 can carry.
fn check_head(headers: &[Header]) -> Result<(), ErrorCode> {
    let size: u64 = headers
        .iter()
        .map(|h| (h.name.len() + h.value.len() + 32) as u64)
        .sum();
    if size > MAX_HEAD {
        return Err(ErrorCode::InvalidArgument);
    }
    Ok(())
}

fn to_h3(headers: Vec<Header>) -> Vec<crate::http3::Header> {
    headers
        .into_iter()
        .map(|h| crate::http3::Header::new(h.name.as_bytes(), &h.value))
        .collect()
}

impl super::super::bindings::h3::tq::plugin::h3_types::Host for PluginState<H3Conn> {}

impl H3ConnectionHost for PluginState<H3Conn> {
    fn send_headers(
        &mut self,
        stream: u64,
        headers: Vec<Header>,
        end: bool,
    ) -> Result<(), ErrorCode> {
        if !headers.iter().any(|h| h.name == ":status") {
            return Err(ErrorCode::InvalidArgument);
        }
        check_head(&headers)?;
        let frame = OutboundFrame::Headers {
            headers: to_h3(headers),
            fin: end,
        };
        match self.conn.queue(stream, frame, end)? {
            true => Ok(()),
            false => Err(ErrorCode::Blocked),
        }
    }

    fn send_body(&mut self, stream: u64, mut data: Vec<u8>, end: bool) -> Result<u64, ErrorCode> {
        // A chunk beyond the cap is taken in part (and `end` with it only
        // if all of it was); the plugin gets a `writable` to send the rest.
        let partial = data.len() > MAX_BODY_CHUNK;
        if partial {
            data.truncate(MAX_BODY_CHUNK);
            self.conn.blocked(stream);
        }
        let end = end && !partial;
        let n = data.len() as u64;
        match self
            .conn
            .queue(stream, OutboundFrame::Body(Bytes::from(data), end), end)?
        {
            true => Ok(n),
            // An empty `end` that finds the stream full must not read as
            // "all 0 bytes accepted": the guest would think its response
            // ended and never send the end again (the stream then stalls).
            false if n == 0 => Err(ErrorCode::Blocked),
            false => Ok(0),
        }
    }

    fn send_trailers(&mut self, stream: u64, trailers: Vec<Header>) -> Result<(), ErrorCode> {
        check_head(&trailers)?;
        match self
            .conn
            .queue(stream, OutboundFrame::Trailers(to_h3(trailers)), true)?
        {
            true => Ok(()),
            false => Err(ErrorCode::Blocked),
        }
    }

    // Each of these reaches the driver as a command only for a request the
    // plugin may act on, once: a plugin naming made-up or finished streams
    // in a loop queues nothing. (Codes beyond 2^62 - 1 are clamped by the
    // driver.)
    fn reset_stream(&mut self, stream: u64, code: u64) {
        if self.conn.streams.remove(&stream).is_some() {
            self.conn.handle.reset_stream(stream, code);
        }
    }

    fn stop_sending(&mut self, stream: u64, code: u64) {
        if self.conn.reading.remove(&stream) {
            self.conn.handle.stop_sending(stream, code);
        }
    }

    fn close(&mut self, code: u64, reason: String) {
        if !std::mem::replace(&mut self.conn.closing, true) {
            self.conn.handle.close(code, &reason);
        }
    }

    fn now_ms(&mut self) -> u64 {
        PluginState::now_ms(self)
    }
}
