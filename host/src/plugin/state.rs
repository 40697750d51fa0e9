//! What one plugin instance's `Store` holds, and the host side of the
//! `h3-connection` interface the plugin imports.
//!
//! Host functions never block: they queue frames on the request's bounded
//! channel if it has room and otherwise tell the plugin it is `blocked`,
//! remembering to send it a `writable` event once the stream drains.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::component::ResourceTable;
use wasmtime::StoreLimits;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::tq::plugin::h3_connection::Host as H3ConnectionHost;
use super::bindings::tq::plugin::types::{ErrorCode, Header};
use crate::http3::{H3Handle, OutboundFrame, OutboundSender, TrySend};

/// The data of one plugin instance's store.
pub(crate) struct PluginState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limits: StoreLimits,
    /// Response senders of requests the plugin may still answer.
    pub(crate) streams: HashMap<u64, OutboundSender>,
    /// Streams the plugin found full; each gets a `writable` event.
    pub(crate) want_writable: Vec<u64>,
    pub(crate) handle: H3Handle,
    pub(crate) established: Instant,
    /// When the current hook call started, and how long it may run.
    pub(crate) call_started: Instant,
    pub(crate) call_deadline: Duration,
    pub(crate) output: MemoryOutputPipe,
    /// How much of `output` has been logged.
    pub(crate) output_logged: usize,
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl PluginState {
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

impl super::bindings::tq::plugin::types::Host for PluginState {}
impl super::bindings::tq::plugin::h3_types::Host for PluginState {}

impl H3ConnectionHost for PluginState {
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
        match self.queue(stream, frame, end)? {
            true => Ok(()),
            false => Err(ErrorCode::Blocked),
        }
    }

    fn send_body(&mut self, stream: u64, data: Vec<u8>, end: bool) -> Result<u64, ErrorCode> {
        let n = data.len() as u64;
        match self.queue(stream, OutboundFrame::Body(Bytes::from(data), end), end)? {
            true => Ok(n),
            false => Ok(0),
        }
    }

    fn send_trailers(&mut self, stream: u64, trailers: Vec<Header>) -> Result<(), ErrorCode> {
        match self.queue(stream, OutboundFrame::Trailers(to_h3(trailers)), true)? {
            true => Ok(()),
            false => Err(ErrorCode::Blocked),
        }
    }

    fn reset_stream(&mut self, stream: u64, code: u64) {
        self.streams.remove(&stream);
        self.handle.reset_stream(stream, code);
    }

    fn stop_sending(&mut self, stream: u64, code: u64) {
        self.handle.stop_sending(stream, code);
    }

    fn close(&mut self, code: u64, reason: String) {
        self.handle.close(code, &reason);
    }

    fn now_ms(&mut self) -> u64 {
        self.established.elapsed().as_millis() as u64
    }
}
