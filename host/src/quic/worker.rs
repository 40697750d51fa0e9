//! The IO worker: one task per connection that owns the `quiche::Connection`
//! and its application, and drives both.
//!
//! The worker never reads the socket (the router does, and hands it datagrams
//! over a bounded channel); it sends directly, GSO-batched. Its loop order is
//! the contract documented on [`ApplicationOverQuic`].

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn, Instrument};

use super::cid::ConnectionIdGenerator;
use super::connection::{
    ApplicationClose, ApplicationOverQuic, CloseReason, ConnectionOutcome, ConnectionState,
    ConnectionStats, HandshakeInfo, INTERNAL_ERROR_CODE,
};
use super::error::{BoxError, QuicResult};
use super::router::{Datagram, RouterCommand};
use super::socket::QuicSocket;
use crate::metrics::{HandshakeFailure, Metrics, PacketDropReason};

/// Datagrams fed to quiche per turn before the worker lets the application
/// and the send path run: under a flood of inbound packets one connection
/// still acknowledges and answers promptly. 128 covers two full GRO batches.
const RECV_PER_TURN: usize = 128;

/// Packets built per turn before the worker checks its inbox again, so a large
/// congestion window on loopback does not delay processing acknowledgements.
const SEND_PER_TURN: usize = 512;

/// Everything a worker needs besides the application.
pub(crate) struct WorkerParts<M: Metrics> {
    pub(crate) conn: quiche::Connection,
    pub(crate) conn_id: u64,
    pub(crate) peer_addr: std::net::SocketAddr,
    pub(crate) inbox: mpsc::Receiver<Datagram>,
    pub(crate) socket: Arc<QuicSocket>,
    pub(crate) router: mpsc::UnboundedSender<RouterCommand>,
    pub(crate) cid_generator: Arc<dyn ConnectionIdGenerator>,
    pub(crate) metrics: M,
    pub(crate) state: watch::Sender<ConnectionState>,
    pub(crate) started_at: Instant,
    pub(crate) max_spare_cids: usize,
    /// Client connections: set by the router when the kernel reports the
    /// server's port unreachable (ICMP) during the handshake.
    pub(crate) unreachable: Option<Arc<ClientSignals>>,
}

/// What a client socket's router and its connection's worker share.
#[derive(Debug, Default)]
pub(crate) struct ClientSignals {
    pub(crate) established: std::sync::atomic::AtomicBool,
    pub(crate) unreachable: std::sync::atomic::AtomicBool,
}

enum Wake {
    Timer,
    Packet(Option<Datagram>),
    App(QuicResult<()>),
}

impl<M: Metrics> WorkerParts<M> {
    /// Runs the connection to its end. Spawned by `start`/`connect`.
    pub(crate) async fn run<A: ApplicationOverQuic>(self, app: A) {
        let span = tracing::info_span!(
            "conn",
            id = %self.conn.trace_id(),
            peer = %self.peer_addr,
            side = if self.conn.is_server() { "server" } else { "client" },
        );
        self.run_inner(app).instrument(span).await
    }

    async fn run_inner<A: ApplicationOverQuic>(mut self, mut app: A) {
        let mut app_started = false;
        let mut closing = false;
        let mut result: QuicResult<()> = Ok(());
        let mut received = 0usize;
        let mut handshake: Option<HandshakeInfo> = None;
        let mut handshake_failed = false;
        let mut out = vec![0u8; send_buffer_len(&self.socket, &self.conn)];

        loop {
            received += self.drain_inbox();
            // A turn that follows a bounded flush did not wait on the timer,
            // so fire it here if it is due.
            if self
                .conn
                .timeout_instant()
                .is_some_and(|d| d <= Instant::now())
            {
                self.conn.on_timeout();
            }
            // Once the connection is closing (by the application's own
            // close() or an error), the application has nothing left to do.
            closing |= self.conn.local_error().is_some() || self.conn.is_draining();

            if !app_started && (self.conn.is_established() || self.conn.is_in_early_data()) {
                app_started = true;
                if let Some(sig) = &self.unreachable {
                    sig.established
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                let info = self.handshake_info();
                debug!(alpn = %String::from_utf8_lossy(&info.alpn), elapsed = ?info.handshake_duration, "handshake complete");
                self.state
                    .send_replace(ConnectionState::Established(info.clone()));
                if let Err(e) = app.on_conn_established(&mut self.conn, &info) {
                    self.fail(&mut result, &mut closing, e);
                }
                handshake = Some(info);
            }

            if app_started && !closing && app.should_act() {
                if received > 0 {
                    if let Err(e) = app.process_reads(&mut self.conn) {
                        self.fail(&mut result, &mut closing, e);
                    }
                }
                if !closing {
                    if let Err(e) = app.process_writes(&mut self.conn) {
                        self.fail(&mut result, &mut closing, e);
                    }
                }
            }
            received = 0;

            if app_started && !self.conn.is_closed() {
                self.refresh_connection_ids();
            } else if !app_started && !handshake_failed {
                handshake_failed = self.report_failed_handshake();
            }
            let more_to_send = self.flush(&mut out).await;
            if self.conn.is_closed() {
                break;
            }
            if !app_started && self.is_unreachable() {
                info!("nothing listens at the server's address (ICMP port unreachable)");
                break;
            }
            if more_to_send {
                // Yield so that a bulk sender shares the runtime fairly.
                tokio::task::yield_now().await;
                continue;
            }

            let deadline = self.conn.timeout_instant();
            let app_wait = app_started && !closing && app.should_act();
            let wake = {
                let timer = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d.into()).await,
                        None => std::future::pending().await,
                    }
                };
                let conn = &mut self.conn;
                tokio::select! {
                    biased;
                    // The timer first: a connection whose inbox never empties
                    // must still see its loss-detection and idle timers fire.
                    () = timer => Wake::Timer,
                    p = self.inbox.recv() => Wake::Packet(p),
                    r = app.wait_for_data(conn), if app_wait => Wake::App(r),
                }
            };
            match wake {
                Wake::Timer => self.conn.on_timeout(),
                Wake::Packet(Some(d)) => {
                    self.feed(d);
                    received += 1;
                }
                Wake::Packet(None) => {
                    // The router is gone, so is the socket: nothing can be sent.
                    if self.is_unreachable() {
                        info!("nothing listens at the server's address (ICMP port unreachable)");
                    } else {
                        warn!("endpoint shut down under a live connection");
                    }
                    break;
                }
                Wake::App(Ok(())) => {}
                Wake::App(Err(e)) => self.fail(&mut result, &mut closing, e),
            }
            if self.conn.is_closed() {
                break;
            }
        }

        let outcome = self.outcome(handshake, &result);
        if outcome.handshake.is_none() {
            if !handshake_failed {
                self.metrics
                    .handshake_failed(classify_handshake_failure(&outcome));
            }
            info!(reason = %outcome.describe(), "handshake failed");
        } else {
            info!(reason = %outcome.describe(), sent = outcome.stats.bytes_sent, received = outcome.stats.bytes_received, "connection closed");
        }
        app.on_conn_close(&mut self.conn, &self.metrics, &result);
        let _ = self.router.send(RouterCommand::Closed {
            conn_id: self.conn_id,
        });
        self.metrics.connection_closed();
        self.state
            .send_replace(ConnectionState::Closed(Arc::new(outcome)));
    }

    fn is_unreachable(&self) -> bool {
        self.unreachable
            .as_ref()
            .is_some_and(|s| s.unreachable.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Tells the handle at once when the handshake can no longer complete,
    /// rather than after the closing period. Returns whether it did.
    fn report_failed_handshake(&self) -> bool {
        let close = self
            .conn
            .peer_error()
            .map(|e| {
                format!(
                    "closed by peer with {}",
                    CloseReason::from_quiche(e).describe()
                )
            })
            .or_else(|| {
                self.conn.local_error().map(|e| {
                    format!(
                        "closed locally with {}",
                        CloseReason::from_quiche(e).describe()
                    )
                })
            });
        match close {
            Some(why) => {
                let outcome = self.outcome(None, &Ok(()));
                self.metrics
                    .handshake_failed(classify_handshake_failure(&outcome));
                self.state
                    .send_replace(ConnectionState::HandshakeFailed(why.into()));
                true
            }
            None => false,
        }
    }

    /// Feeds queued datagrams to quiche without waiting; returns how many.
    fn drain_inbox(&mut self) -> usize {
        let mut n = 0;
        while n < RECV_PER_TURN {
            match self.inbox.try_recv() {
                Ok(d) => {
                    self.feed(d);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        n
    }

    fn feed(&mut self, mut d: Datagram) {
        let info = quiche::RecvInfo {
            from: d.from,
            to: d.to,
        };
        // quiche drops the rest of a datagram when one packet in it cannot be
        // decrypted (say, a Handshake packet after the Handshake keys were
        // discarded), which loses a CONNECTION_CLOSE coalesced behind it.
        // Feeding each coalesced packet on its own keeps the rest.
        let mut rest: &mut [u8] = &mut d.buf;
        while !rest.is_empty() {
            let len = coalesced_packet_len(rest).unwrap_or(rest.len());
            let (pkt, tail) = rest.split_at_mut(len);
            match self.conn.recv(pkt, info) {
                Ok(_) | Err(quiche::Error::Done) => {}
                Err(e) => {
                    debug!(error = %e, "packet refused by quiche");
                    self.metrics.packet_dropped(PacketDropReason::Rejected);
                    return;
                }
            }
            rest = tail;
        }
    }

    fn fail(&mut self, result: &mut QuicResult<()>, closing: &mut bool, e: BoxError) {
        *closing = true;
        if let Some(c) = e.downcast_ref::<ApplicationClose>() {
            // A deliberate close by the application, not a failure.
            debug!(code = c.code, reason = %c.reason, "application closes the connection");
            if let Err(err) = self.conn.close(true, c.code, c.reason.as_bytes()) {
                debug!(error = %err, "close");
            }
            return;
        }
        warn!(error = %e, code = INTERNAL_ERROR_CODE, "application hook failed; closing connection");
        if let Err(err) = self
            .conn
            .close(true, INTERNAL_ERROR_CODE, b"internal error")
        {
            debug!(error = %err, "close after application error");
        }
        if result.is_ok() {
            *result = Err(e);
        }
    }

    /// Keeps the peer supplied with spare connection ids and tells the router
    /// which ids to route here. The router learns of an id before the packet
    /// announcing it leaves, so the peer can never use an unmapped id.
    fn refresh_connection_ids(&mut self) {
        let mut issued = 0;
        while self.conn.scids_left() > 0 && self.conn.active_scids() < self.max_spare_cids + 1 {
            let cid = self.cid_generator.new_connection_id();
            let token = self.cid_generator.new_reset_token(&cid);
            match self.conn.new_scid(&cid, token, false) {
                Ok(_) => {
                    let _ = self.router.send(RouterCommand::Map {
                        cid: cid.as_ref().into(),
                        conn_id: self.conn_id,
                    });
                    issued += 1;
                }
                Err(e) => {
                    debug!(error = %e, "cannot issue connection id");
                    break;
                }
            }
            if issued > 8 {
                break;
            }
        }
        while let Some(cid) = self.conn.retired_scid_next() {
            let _ = self.router.send(RouterCommand::Unmap {
                cid: cid.as_ref().into(),
            });
        }
    }

    /// Sends what quiche has, batching equal-sized packets to one destination
    /// into GSO sends. Returns true if it stopped at its per-turn bound.
    async fn flush(&mut self, out: &mut [u8]) -> bool {
        let max_segments = self.socket.max_gso_segments().max(1);
        let mut packets = 0;
        let mut len = 0usize;
        let mut segment = 0usize;
        let mut count = 0usize;
        let mut batch_to = None;
        let mut batch_from = None;
        loop {
            let room = out.len() - len;
            let max = self.conn.max_send_udp_payload_size();
            let done = if room < max || count >= max_segments {
                true
            } else {
                match self.conn.send(&mut out[len..len + max]) {
                    Ok((n, info)) => {
                        packets += 1;
                        let same_dest = batch_to.is_none_or(|t| t == info.to);
                        if !same_dest || (count > 0 && n > segment) {
                            // Cannot join this batch: send it, then start anew
                            // with this packet at the front.
                            self.send_batch(&out[..len], batch_to, batch_from, segment, count)
                                .await;
                            out.copy_within(len..len + n, 0);
                            len = 0;
                            count = 0;
                        }
                        if count == 0 {
                            segment = n;
                            batch_to = Some(info.to);
                            batch_from = Some(info.from);
                        }
                        len += n;
                        count += 1;
                        // A short packet must be the last of a GSO batch.
                        n < segment
                    }
                    Err(quiche::Error::Done) => {
                        self.send_batch(&out[..len], batch_to, batch_from, segment, count)
                            .await;
                        return false;
                    }
                    Err(e) => {
                        warn!(error = %e, "quiche failed to build a packet");
                        let _ = self.conn.close(false, 0x1, b"internal error");
                        self.send_batch(&out[..len], batch_to, batch_from, segment, count)
                            .await;
                        return false;
                    }
                }
            };
            if done {
                self.send_batch(&out[..len], batch_to, batch_from, segment, count)
                    .await;
                len = 0;
                count = 0;
                batch_to = None;
                if packets >= SEND_PER_TURN {
                    return true;
                }
            }
        }
    }

    async fn send_batch(
        &self,
        buf: &[u8],
        to: Option<std::net::SocketAddr>,
        from: Option<std::net::SocketAddr>,
        segment: usize,
        count: usize,
    ) {
        let (Some(to), false) = (to, buf.is_empty()) else {
            return;
        };
        let seg = (count > 1).then_some(segment);
        let src = from.and_then(|f| self.socket.source_ip(f));
        match self.socket.send(to, src, buf, seg).await {
            Ok(()) => self.metrics.packets_out(count as u64, buf.len() as u64),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                if let Some(sig) = &self.unreachable {
                    if !sig.established.load(std::sync::atomic::Ordering::Relaxed) {
                        sig.unreachable
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            Err(e) => debug!(error = %e, "send failed"),
        }
    }

    fn handshake_info(&self) -> HandshakeInfo {
        HandshakeInfo {
            alpn: self.conn.application_proto().to_vec(),
            server_name: self.conn.server_name().map(str::to_owned),
            peer_addr: self.peer_addr,
            local_addr: self.socket.local_addr(),
            handshake_duration: self.started_at.elapsed(),
            is_resumed: self.conn.is_resumed(),
        }
    }

    fn outcome(
        &self,
        handshake: Option<HandshakeInfo>,
        result: &QuicResult<()>,
    ) -> ConnectionOutcome {
        let s = self.conn.stats();
        ConnectionOutcome {
            handshake,
            local_close: self.conn.local_error().map(CloseReason::from_quiche),
            peer_close: self.conn.peer_error().map(CloseReason::from_quiche),
            timed_out: self.conn.is_timed_out(),
            unreachable: self.is_unreachable(),
            application_error: result.as_ref().err().map(|e| e.to_string()),
            stats: ConnectionStats {
                packets_sent: s.sent,
                packets_received: s.recv,
                packets_lost: s.lost,
                bytes_sent: s.sent_bytes,
                bytes_received: s.recv_bytes,
            },
        }
    }
}

/// The length of the first packet in `buf` if it is a long-header packet
/// that carries a Length field (Initial, 0-RTT, Handshake) and other packets
/// follow it; `None` when it is the only or last one, or cannot be parsed.
fn coalesced_packet_len(buf: &[u8]) -> Option<usize> {
    let first = *buf.first()?;
    if first & 0x80 == 0 {
        return None; // short header: always last in a datagram
    }
    let mut off = 5; // first byte + version
    let dcid_len = *buf.get(off)? as usize;
    off += 1 + dcid_len;
    let scid_len = *buf.get(off)? as usize;
    off += 1 + scid_len;
    match (first & 0x30) >> 4 {
        0 => {
            // Initial: a token precedes the length.
            let (token_len, n) = read_varint(buf.get(off..)?)?;
            off += n + usize::try_from(token_len).ok()?;
        }
        1 | 2 => {}
        _ => return None, // Retry has no Length field
    }
    let (len, n) = read_varint(buf.get(off..)?)?;
    let end = off
        .checked_add(n)?
        .checked_add(usize::try_from(len).ok()?)?;
    (end < buf.len()).then_some(end)
}

/// A QUIC variable-length integer (RFC 9000 §16): value and bytes used.
fn read_varint(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let len = 1usize << (first >> 6);
    let bytes = b.get(..len)?;
    let mut v = u64::from(first & 0x3f);
    for &x in &bytes[1..] {
        v = (v << 8) | u64::from(x);
    }
    Some((v, len))
}

fn classify_handshake_failure(o: &ConnectionOutcome) -> HandshakeFailure {
    let is_tls = |c: &Option<CloseReason>| {
        c.as_ref()
            .is_some_and(|c| !c.is_app && (0x100..=0x1ff).contains(&c.code))
    };
    if o.timed_out {
        HandshakeFailure::Timeout
    } else if is_tls(&o.local_close) || is_tls(&o.peer_close) {
        HandshakeFailure::Tls
    } else if o.peer_close.is_some() {
        HandshakeFailure::PeerClosed
    } else {
        HandshakeFailure::Other
    }
}

/// Room for one full GSO batch (at most 64 KiB, the kernel's limit).
fn send_buffer_len(socket: &QuicSocket, conn: &quiche::Connection) -> usize {
    let segs = socket.max_gso_segments().clamp(1, 64);
    (segs * conn.max_send_udp_payload_size().max(1500)).min(super::socket::MAX_DATAGRAM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_decode() {
        assert_eq!(read_varint(&[0x25]), Some((37, 1)));
        assert_eq!(read_varint(&[0x7b, 0xbd]), Some((15293, 2)));
        assert_eq!(
            read_varint(&[0x9d, 0x7f, 0x3e, 0x7d]),
            Some((494_878_333, 4))
        );
        assert_eq!(read_varint(&[0x7b]), None);
    }

    #[test]
    fn coalesced_packets_are_split_at_their_length() {
        // Handshake packet: dcid 2 bytes, scid 1 byte, length 3, then a short packet.
        let mut d = vec![0xe0, 0, 0, 0, 1, 2, 9, 9, 1, 8, 0x03, 1, 2, 3];
        let first = d.len();
        d.extend_from_slice(&[0x40, 1, 2, 3, 4]);
        assert_eq!(coalesced_packet_len(&d), Some(first));
        // Alone in its datagram: nothing to split.
        assert_eq!(coalesced_packet_len(&d[..first]), None);
        // Initial with a 2-byte token.
        let mut i = vec![0xc0, 0, 0, 0, 1, 1, 7, 0, 0x02, 5, 5, 0x01, 0xaa];
        let first = i.len();
        i.push(0x40);
        assert_eq!(coalesced_packet_len(&i), Some(first));
        // Truncated or short headers are not split.
        assert_eq!(coalesced_packet_len(&[0xc0, 0, 0]), None);
        assert_eq!(coalesced_packet_len(&[0x40, 1, 2]), None);
        // A length running past the datagram is not split either.
        assert_eq!(
            coalesced_packet_len(&[0xe0, 0, 0, 0, 1, 0, 0, 0x3f, 1]),
            None
        );
    }
}
