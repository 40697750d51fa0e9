//! The host side of the `quic-connection` interface a raw-QUIC plugin
//! imports: each call queues on the bridge's shared state, which the
//! connection's worker applies after the plugin's call returns.

use std::sync::{Arc, Mutex};

use super::super::bindings::h3::tq::plugin::types::ErrorCode;
use super::super::bindings::quic::tq::plugin::quic_connection::Host as QuicConnectionHost;
use super::super::bindings::quic::tq::plugin::quic_types::TransportStats as Stats;
use super::super::bindings::quic::QuicAppPre;
use super::super::sandbox::PluginState;
use super::bridge::{lock, Refused, Shared};

/// A raw-QUIC component linked and ready to instantiate.
pub(crate) type QuicPre = QuicAppPre<PluginState<QuicConn>>;

/// A raw-QUIC plugin's view of its connection.
pub(crate) struct QuicConn {
    pub(crate) shared: Arc<Mutex<Shared>>,
}

fn code(r: Refused) -> ErrorCode {
    match r {
        Refused::InvalidStream => ErrorCode::InvalidStream,
        Refused::Blocked => ErrorCode::Blocked,
        Refused::Closed => ErrorCode::Closed,
        Refused::InvalidArgument => ErrorCode::InvalidArgument,
    }
}

impl super::super::bindings::quic::tq::plugin::quic_types::Host for PluginState<QuicConn> {}

impl QuicConnectionHost for PluginState<QuicConn> {
    fn stream_send(&mut self, stream: u64, data: Vec<u8>, fin: bool) -> Result<u64, ErrorCode> {
        lock(&self.conn.shared)
            .stream_send(stream, &data, fin)
            .map(|n| n as u64)
            .map_err(code)
    }

    fn reset_stream(&mut self, stream: u64, c: u64) -> Result<(), ErrorCode> {
        lock(&self.conn.shared)
            .reset_stream(stream, c)
            .map_err(code)
    }

    fn stop_sending(&mut self, stream: u64, c: u64) -> Result<(), ErrorCode> {
        lock(&self.conn.shared)
            .stop_sending(stream, c)
            .map_err(code)
    }

    fn send_datagram(&mut self, data: Vec<u8>) -> Result<(), ErrorCode> {
        lock(&self.conn.shared).send_datagram(data).map_err(code)
    }

    fn close(&mut self, c: u64, reason: String) {
        lock(&self.conn.shared).close(c, reason);
    }

    fn stats(&mut self) -> Stats {
        let s = lock(&self.conn.shared).stats();
        Stats {
            rtt_us: s.rtt_us,
            cwnd: s.cwnd,
            sent_bytes: s.sent_bytes,
            recv_bytes: s.recv_bytes,
            sent_packets: s.sent_packets,
            recv_packets: s.recv_packets,
            lost_packets: s.lost_packets,
        }
    }

    fn now_ms(&mut self) -> u64 {
        PluginState::now_ms(self)
    }
}
