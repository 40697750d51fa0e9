//! The host side of the `h3-connection` interface an HTTP/3 plugin imports.
//!
//! Host functions never block: they queue frames on the request's bounded
//! channel if it has room and otherwise tell the plugin it is `blocked`,
//! remembering to send it a `writable` event once the stream drains.

use std::collections::HashMap;

use bytes::Bytes;

use super::super::bindings::h3::tq::plugin::h3_connection::Host as H3ConnectionHost;
use super::super::bindings::h3::tq::plugin::types::{ErrorCode, Header};
use super::super::bindings::h3::Http3AppPre;
use super::super::sandbox::PluginState;
use crate::http3::{H3Handle, OutboundFrame, OutboundSender, TrySend};

/// An `http3-app` component linked and ready to instantiate.
pub(crate) type Http3Pre = Http3AppPre<PluginState<H3Conn>>;

/// An HTTP/3 plugin's view of its connection.
pub(crate) struct H3Conn {
    /// Response senders of requests the plugin may still answer.
    pub(crate) streams: HashMap<u64, OutboundSender>,
    /// Streams the plugin found full; each gets a `writable` event.
    pub(crate) want_writable: Vec<u64>,
    pub(crate) handle: H3Handle,
}

impl H3Conn {
    pub(crate) fn new(handle: H3Handle) -> Self {
        Self {
            streams: HashMap::new(),
            want_writable: Vec::new(),
            handle,
        }
    }

    fn queue(&mut self, stream: u64, frame: OutboundFrame, ends: bool) -> Result<bool, ErrorCode> {
        let sender = self.streams.get(&stream).ok_or(ErrorCode::InvalidStream)?;
        match sender.try_send(frame) {
            Ok(()) => {
                if ends {
                    self.streams.remove(&stream);
                }
                Ok(true)
            }
            Err(TrySend::Full(_)) => {
                if !self.want_writable.contains(&stream) {
                    self.want_writable.push(stream);
                }
                Ok(false)
            }
            Err(TrySend::Closed) => {
                self.streams.remove(&stream);
                Err(ErrorCode::InvalidStream)
            }
        }
    }
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
        match self
            .conn
            .queue(stream, OutboundFrame::Trailers(to_h3(trailers)), true)?
        {
            true => Ok(()),
            false => Err(ErrorCode::Blocked),
        }
    }

    fn reset_stream(&mut self, stream: u64, code: u64) {
        // A request stream (client-initiated, bidirectional), never one of
        // the connection's control or QPACK streams.
        if stream.is_multiple_of(4) {
            self.conn.streams.remove(&stream);
            self.conn.handle.reset_stream(stream, code);
        }
    }

    fn stop_sending(&mut self, stream: u64, code: u64) {
        // A request stream (client-initiated, bidirectional), never one of
        // the connection's unidirectional streams.
        if stream.is_multiple_of(4) {
            self.conn.handle.stop_sending(stream, code);
        }
    }

    fn close(&mut self, code: u64, reason: String) {
        self.conn.handle.close(code, &reason);
    }

    fn now_ms(&mut self) -> u64 {
        PluginState::now_ms(self)
    }
}
