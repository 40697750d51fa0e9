//! A raw-QUIC echo application (ALPN `tq-echo`): every byte received on a
//! bidirectional stream is sent back on the same stream, and the stream is
//! finished once the peer's side has finished and everything was echoed.
//! Datagrams, when enabled, are echoed too.
//!
//! Each stream buffers at most [`EchoApplication::MAX_PENDING`] bytes, and
//! the connection at most [`EchoApplication::MAX_PENDING_TOTAL`]; past that
//! it stops reading, so a peer that never reads its echoes stalls on flow
//! control instead of growing our memory.

use std::collections::HashMap;

use crate::quic::{ApplicationOverQuic, QuicResult};

/// Echoes streams and datagrams back to the peer.
#[derive(Debug, Default)]
pub struct EchoApplication {
    streams: HashMap<u64, EchoStream>,
    scratch: Vec<u8>,
    /// Bytes read and not yet handed back to quiche, all streams together.
    buffered: usize,
}

#[derive(Debug, Default)]
struct EchoStream {
    pending: Vec<u8>,
    sent: usize,
    fin_received: bool,
}

impl EchoStream {
    fn unsent(&self) -> usize {
        self.pending.len() - self.sent
    }
}

impl EchoApplication {
    /// Bytes buffered per stream before the echo stops reading it.
    pub const MAX_PENDING: usize = 1 << 20;
    /// Bytes buffered on one connection before the echo stops reading any
    /// of its streams (without it, 100 streams could hold 100 MiB).
    pub const MAX_PENDING_TOTAL: usize = 4 << 20;

    fn read_stream(&mut self, qconn: &mut quiche::Connection, id: u64) -> QuicResult<()> {
        if self.scratch.len() < 64 * 1024 {
            self.scratch.resize(64 * 1024, 0);
        }
        let stream = self.streams.entry(id).or_default();
        while stream.unsent() < Self::MAX_PENDING
            && self.buffered < Self::MAX_PENDING_TOTAL
            && !stream.fin_received
        {
            // Never more than the connection's budget allows.
            let room = (Self::MAX_PENDING_TOTAL - self.buffered).min(self.scratch.len());
            match qconn.stream_recv(id, &mut self.scratch[..room]) {
                Ok((n, fin)) => {
                    stream.pending.extend_from_slice(&self.scratch[..n]);
                    self.buffered += n;
                    stream.fin_received = fin;
                }
                Err(quiche::Error::Done) => break,
                Err(quiche::Error::StreamReset(_)) => {
                    // The peer abandoned the stream: abandon our side too.
                    let _ = qconn.stream_shutdown(id, quiche::Shutdown::Write, 0);
                    self.forget(id);
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Drops a stream and gives its unsent bytes back to the budget.
    fn forget(&mut self, id: u64) {
        if let Some(s) = self.streams.remove(&id) {
            self.buffered -= s.unsent();
        }
    }
}

impl ApplicationOverQuic for EchoApplication {
    async fn wait_for_data(&mut self, _qconn: &mut quiche::Connection) -> QuicResult<()> {
        // Echo only reacts to packets; it has nothing of its own to wait for.
        std::future::pending().await
    }

    fn process_reads(&mut self, qconn: &mut quiche::Connection) -> QuicResult<()> {
        let readable: Vec<u64> = qconn.readable().collect();
        for id in readable {
            self.read_stream(qconn, id)?;
        }
        let mut buf = [0u8; 1500];
        while let Ok(n) = qconn.dgram_recv(&mut buf) {
            // A full send queue drops the echo, as datagrams may be.
            let _ = qconn.dgram_send(&buf[..n]);
        }
        Ok(())
    }

    fn process_writes(&mut self, qconn: &mut quiche::Connection) -> QuicResult<()> {
        let mut finished = Vec::new();
        let ids: Vec<u64> = self.streams.keys().copied().collect();
        for id in ids {
            let Some(stream) = self.streams.get_mut(&id) else {
                continue;
            };
            if stream.unsent() > 0 || stream.fin_received {
                let fin = stream.fin_received;
                match qconn.stream_send(id, &stream.pending[stream.sent..], fin) {
                    Ok(n) => {
                        stream.sent += n;
                        self.buffered -= n;
                    }
                    Err(quiche::Error::Done) => {}
                    Err(quiche::Error::StreamStopped(_))
                    | Err(quiche::Error::InvalidStreamState(_)) => {
                        finished.push(id);
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
                if stream.sent > Self::MAX_PENDING / 2 {
                    stream.pending.drain(..stream.sent);
                    stream.sent = 0;
                }
                if stream.fin_received && stream.unsent() == 0 {
                    finished.push(id);
                    continue;
                }
            }
            if !stream.fin_received
                && stream.unsent() < Self::MAX_PENDING
                && self.buffered < Self::MAX_PENDING_TOTAL
                && qconn.stream_readable(id)
            {
                self.read_stream(qconn, id)?;
            }
        }
        for id in finished {
            self.forget(id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quic::test_pair::{connect, flush};
    use crate::quic::QuicSettings;

    #[test]
    fn a_client_that_never_reads_its_echoes_pins_at_most_the_connection_budget() {
        let (mut client, mut server) = connect(QuicSettings {
            alpn: vec!["tq-echo".into()],
            ..QuicSettings::default()
        });
        let mut echo = EchoApplication::default();
        let chunk = vec![7u8; 64 << 10];
        let mut quiet = 0;
        for _ in 0..2_000 {
            if client.is_established() {
                // 100 streams, each written as far as flow control allows;
                // nothing is ever read back.
                for i in 0..100u64 {
                    let _ = client.stream_send(i * 4, &chunk, false);
                }
            }
            if server.is_established() {
                echo.process_reads(&mut server).unwrap();
                echo.process_writes(&mut server).unwrap();
            }
            let moved = flush(&mut client, &mut server) + flush(&mut server, &mut client);
            quiet = if moved == 0 { quiet + 1 } else { 0 };
            if quiet > 3 {
                break;
            }
        }
        let unsent: usize = echo.streams.values().map(EchoStream::unsent).sum();
        assert_eq!(echo.buffered, unsent, "the budget's count is exact");
        assert!(
            echo.buffered <= EchoApplication::MAX_PENDING_TOTAL,
            "{} bytes buffered",
            echo.buffered
        );
        assert!(
            echo.buffered > EchoApplication::MAX_PENDING,
            "the echo read more than one stream's worth ({} bytes)",
            echo.buffered
        );
    }
}
