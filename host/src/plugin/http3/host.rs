//! The host side of the `h3-connection` interface an HTTP/3 plugin imports.
//!
//! Host functions never block: they queue frames on the request's bounded
//! channel if it has room and otherwise tell the plugin it is `blocked`,
//! remembering to send it a `writable` event once the stream drains.
//!
//! What a plugin can make the host hold is bounded in bytes, not only in
//! frames: a body chunk is at most [`MAX_BODY_CHUNK`] (more is accepted in
//! part), a header section at most [`MAX_HEAD`], and the connection's
//! queued body bytes at most `PluginLimits::queued_bytes` (past it, writes
//! wait for `writable` like a full stream).

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::super::bindings::h3::tq::plugin::h3_connection::Host as H3ConnectionHost;
use super::super::bindings::h3::tq::plugin::types::{ErrorCode, Header};
use super::super::bindings::h3::Http3AppPre;
use super::super::sandbox::PluginState;
use crate::http3::{H3Handle, OutboundFrame, OutboundSender, TrySend};
use crate::quic::id_map::{IdMap, IdSet};

/// The most body bytes one `send-body` call queues; the rest of a larger
/// chunk is left to the plugin (the call returns how much was taken).
pub(crate) const MAX_BODY_CHUNK: usize = 64 * 1024;

/// The largest header section (RFC 9114 size) a plugin may send; larger is
/// `invalid-argument`.
pub(crate) const MAX_HEAD: u64 = 64 * 1024;

/// An `http3-app` component linked and ready to instantiate.
pub(crate) type Http3Pre = Http3AppPre<PluginState<H3Conn>>;

/// An HTTP/3 plugin's view of its connection.
pub(crate) struct H3Conn {
    /// Response senders of requests the plugin may still answer.
    pub(crate) streams: IdMap<OutboundSender>,
    /// Streams the plugin found full; each gets a `writable` event.
    pub(crate) want_writable: IdSet,
    /// Requests whose body the plugin may still be sent: what
    /// `stop-sending` may name.
    pub(crate) reading: IdSet,
    /// The plugin asked to close the connection (once is enough).
    closing: bool,
    /// Body bytes all of the connection's responses may have queued in the
    /// host at once (`PluginLimits::queued_bytes`).
    pub(crate) budget: usize,
    pub(crate) handle: H3Handle,
}

impl H3Conn {
    pub(crate) fn new(handle: H3Handle, budget: usize) -> Self {
        Self {
            streams: IdMap::default(),
            want_writable: IdSet::default(),
            reading: IdSet::default(),
            closing: false,
            budget: budget.max(1),
            handle,
        }
    }

    fn queue(&mut self, stream: u64, frame: OutboundFrame, ends: bool) -> Result<bool, ErrorCode> {
        let sender = self.streams.get(&stream).ok_or(ErrorCode::InvalidStream)?;
        if matches!(&frame, OutboundFrame::Body(b, _) if !b.is_empty())
            && sender.shared.outbound_buffered.load(Ordering::Relaxed) >= self.budget
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
        self.want_writable.insert(stream);
    }
}

/// Checks a header section a plugin sends: bounded size, field names and
/// values HTTP/3 can carry (RFC 9114 §4.2: lower-case tokens; no CR, LF or
/// NUL in values), and no pseudo-header but, in a `response` head, a
/// leading `:status` of three digits from 100 to 599.
fn check_head(headers: &[Header], response: bool) -> Result<(), ErrorCode> {
    let size: u64 = headers
        .iter()
        .map(|h| (h.name.len() + h.value.len() + 32) as u64)
        .sum();
    if size > MAX_HEAD {
        return Err(ErrorCode::InvalidArgument);
    }
    let token =
        |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b);
    for (i, h) in headers.iter().enumerate() {
        let name = h.name.as_bytes();
        let pseudo_ok = response
            && i == 0
            && name == b":status"
            && h.value.len() == 3
            && h.value.iter().all(u8::is_ascii_digit)
            && (b'1'..=b'5').contains(&h.value[0]);
        let field_ok = !name.is_empty() && name.iter().all(|&b| token(b));
        let value_ok = !h.value.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0));
        if !(pseudo_ok || field_ok) || !value_ok {
            return Err(ErrorCode::InvalidArgument);
        }
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
        if headers.first().is_none_or(|h| h.name != ":status") {
            return Err(ErrorCode::InvalidArgument);
        }
        check_head(&headers, true)?;
        let frame = OutboundFrame::Headers {
            headers: to_h3(headers),
            fin: end,
        };
        match self.conn.queue(stream, frame, end)? {
            true => Ok(()),
            false => Err(ErrorCode::Blocked),
        }
    }

    fn send_body(&mut self, stream: u64, data: Vec<u8>, end: bool) -> Result<u64, ErrorCode> {
        // A chunk beyond the cap is taken in part (and `end` with it only
        // if all of it was); the plugin gets a `writable` to send the rest.
        if !self.conn.streams.contains_key(&stream) {
            return Err(ErrorCode::InvalidStream);
        }
        let partial = data.len() > MAX_BODY_CHUNK;
        let body = if partial {
            // A copy: the guest's whole list must not stay allocated behind
            // the 64 KiB counted.
            self.conn.blocked(stream);
            Bytes::copy_from_slice(&data[..MAX_BODY_CHUNK])
        } else {
            Bytes::from(data)
        };
        let end = end && !partial;
        let n = body.len() as u64;
        match self
            .conn
            .queue(stream, OutboundFrame::Body(body, end), end)?
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
        check_head(&trailers, false)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &[u8])]) -> Vec<Header> {
        pairs
            .iter()
            .map(|(n, v)| Header {
                name: (*n).into(),
                value: v.to_vec(),
            })
            .collect()
    }

    #[test]
    fn plugin_heads_are_checked_field_by_field() {
        let ok = |p: &[(&str, &[u8])], response| check_head(&h(p), response).is_ok();
        assert!(ok(
            &[(":status", b"200"), ("content-type", b"text/plain")],
            true
        ));
        assert!(ok(
            &[(":status", b"103"), ("link", b"</a>; rel=preload")],
            true
        ));
        assert!(ok(&[("x-trailer", b"1")], false));
        assert!(!ok(&[(":status", b"20")], true), "two digits");
        assert!(!ok(&[(":status", b"700")], true), "out of range");
        assert!(
            !ok(&[(":status", b"200"), (":path", b"/")], true),
            "a request pseudo-header"
        );
        assert!(
            !ok(&[("x", b"1"), (":status", b"200")], true),
            "pseudo after a field"
        );
        assert!(
            !ok(&[(":status", b"200")], false),
            "a pseudo-header in trailers"
        );
        assert!(
            !ok(&[(":status", b"200"), ("Content-Type", b"x")], true),
            "upper case"
        );
        assert!(
            !ok(&[(":status", b"200"), ("bad name", b"x")], true),
            "a space"
        );
        assert!(
            !ok(&[(":status", b"200"), ("", b"x")], true),
            "an empty name"
        );
        assert!(
            !ok(&[(":status", b"200"), ("x", b"a\r\nset-cookie: y")], true),
            "CRLF"
        );
        assert!(!ok(&[(":status", b"200"), ("x", b"a\0")], true), "NUL");
        let big = vec![b'v'; MAX_HEAD as usize];
        assert!(!ok(&[(":status", b"200"), ("x", &big)], true), "too big");
    }
}
