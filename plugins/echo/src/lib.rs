//! A raw QUIC echo server: every byte a client sends on a bidirectional
//! stream comes back on that stream, which is finished when the client
//! finishes. Datagrams are echoed too (when the operator enables them).
//!
//! Serve it with `tq-host --plugin echo.wasm --alpn tq-echo` and try it with
//! `tq-host echo -k`. Back-pressure is the host's: while a stream's echo is
//! held back, the host reads no more of it, so this plugin keeps at most a
//! chunk per stream.
//!
//! One more thing, to show per-connection state: a stream whose first bytes
//! are `STATS\n` is answered with how many streams and bytes this connection
//! has echoed so far, instead of an echo.

use std::collections::HashSet;

use tq_sdk::quic::{App, Conn, StreamId};

#[derive(Default)]
struct Echo {
    streams: u64,
    bytes: u64,
    /// Streams that started and are echoing (not asking for stats).
    seen: HashSet<StreamId>,
}

impl App for Echo {
    fn on_stream_data(&mut self, conn: &mut Conn, stream: StreamId, data: &[u8], fin: bool) {
        if self.seen.insert(stream) {
            if data.starts_with(b"STATS\n") {
                let answer = format!("streams={} bytes={}\n", self.streams, self.bytes);
                conn.write(stream, answer.as_bytes(), true);
                self.seen.remove(&stream);
                return;
            }
            self.streams += 1;
        }
        self.bytes += data.len() as u64;
        conn.write(stream, data, fin);
        if fin {
            self.seen.remove(&stream);
        }
    }

    fn on_stream_reset(&mut self, conn: &mut Conn, stream: StreamId, code: u64) {
        // The client abandoned the stream: abandon our side too.
        self.seen.remove(&stream);
        conn.reset(stream, code);
    }

    fn on_datagram(&mut self, conn: &mut Conn, data: &[u8]) {
        // Datagrams may be dropped; so may their echoes.
        let _ = conn.send_datagram(data);
    }
}

tq_sdk::export_quic_app!(Echo);
