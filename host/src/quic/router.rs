//! The inbound packet router: the sole reader of one UDP socket.
//!
//! It reads datagrams in batches (GRO-split), finds each one's connection by
//! destination connection id, and hands it to that connection's worker over a
//! bounded channel. Datagrams for unknown ids go to the [`Acceptor`] on server
//! sockets and are dropped (and counted) elsewhere. Workers tell the router
//! which ids are theirs through [`RouterCommand`]s, which the router applies
//! before reading the socket again.

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::Arc;

use quinn_udp::RecvMeta;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, warn};

use super::acceptor::Acceptor;
use super::route::{ClientSignals, Datagram, RouterCommand, Routes};
use super::socket::{QuicSocket, MAX_DATAGRAM};
use crate::metrics::{Metrics, PacketDropReason};

/// Datagram buffers read per system call (recvmmsg); with GRO each may hold
/// several datagrams.
const RECV_BATCH: usize = 8;

/// One socket's router task.
pub(crate) struct Router<M: Metrics> {
    pub(crate) socket: Arc<QuicSocket>,
    pub(crate) routes: Routes,
    pub(crate) commands: mpsc::UnboundedReceiver<RouterCommand>,
    pub(crate) acceptor: Option<Acceptor<M>>,
    pub(crate) stop_accepting: CancellationToken,
    pub(crate) cid_len: usize,
    pub(crate) metrics: M,
    /// Client sockets: shared with the connection's worker.
    pub(crate) client: Option<Arc<ClientSignals>>,
}

enum Wake {
    Command(RouterCommand),
    StopAccepting,
    Received(std::io::Result<usize>),
}

impl<M: Metrics> Router<M> {
    /// Runs until the socket fails, or until no connection is left and no new
    /// one can come (client sockets, or a listener that stopped accepting).
    pub(crate) async fn run(mut self) {
        let gro = self.socket.gro_segments().max(1);
        let buf_len = (gro * 1500).clamp(MAX_DATAGRAM, 64 * 1500);
        let mut bufs: Vec<Vec<u8>> = (0..RECV_BATCH).map(|_| vec![0u8; buf_len]).collect();
        let mut meta = [RecvMeta::default(); RECV_BATCH];
        debug!(local = %self.socket.local_addr(), gro, gso = self.socket.max_gso_segments(), "router started");
        let mut consecutive_errors = 0u32;

        loop {
            if self.acceptor.is_none() && self.routes.is_empty() {
                break;
            }
            let wake = {
                let mut iovs: Vec<IoSliceMut<'_>> =
                    bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                let accepting = self.acceptor.is_some();
                tokio::select! {
                    biased;
                    // Commands first: an id a worker announced must be mapped
                    // before any datagram using it is read.
                    Some(cmd) = self.commands.recv() => Wake::Command(cmd),
                    () = self.stop_accepting.cancelled(), if accepting => Wake::StopAccepting,
                    r = self.socket.recv(&mut iovs, &mut meta) => Wake::Received(r),
                }
            };
            match wake {
                Wake::Command(cmd) => {
                    trace!(?cmd, "router command");
                    self.routes.apply(cmd);
                    while let Ok(cmd) = self.commands.try_recv() {
                        self.routes.apply(cmd);
                    }
                }
                Wake::StopAccepting => {
                    debug!("listener stopped accepting; router drains live connections");
                    self.acceptor = None;
                }
                Wake::Received(Ok(n)) => {
                    consecutive_errors = 0;
                    for (m, buf) in meta.iter().zip(bufs.iter_mut()).take(n) {
                        let to = self.socket.local_for(m);
                        let stride = m.stride.max(1);
                        for seg in buf[..m.len].chunks_mut(stride) {
                            self.route(seg, m.addr, to).await;
                        }
                    }
                }
                Wake::Received(Err(e))
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && self.client.as_ref().is_some_and(|c| {
                            !c.established.load(std::sync::atomic::Ordering::Relaxed)
                        }) =>
                {
                    // A client still handshaking hears that nothing listens
                    // at the server's address: fail now rather than at the
                    // idle timeout. Dropping the route tells the worker.
                    if let Some(c) = &self.client {
                        c.unreachable
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    debug!("server port unreachable during the handshake");
                    self.routes = Routes::new();
                }
                Wake::Received(Err(e)) => {
                    // ICMP errors (port unreachable) surface here on connected
                    // sockets; after the handshake they are not fatal. A
                    // socket that only errors is.
                    consecutive_errors += 1;
                    debug!(error = %e, "recv error");
                    if consecutive_errors > 1000 {
                        warn!(error = %e, "socket keeps failing; router stops");
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            }
        }
        debug!(local = %self.socket.local_addr(), "router stopped");
    }

    async fn route(&mut self, buf: &mut [u8], from: SocketAddr, to: SocketAddr) {
        self.metrics.packets_in(1, buf.len() as u64);
        let hdr = match quiche::Header::from_slice(buf, self.cid_len) {
            Ok(h) => h,
            Err(e) => {
                trace!(error = %e, %from, "malformed packet header");
                self.metrics.packet_dropped(PacketDropReason::Malformed);
                return;
            }
        };
        trace!(%from, ty = ?hdr.ty, dcid = ?hdr.dcid, len = buf.len(), "datagram");
        if let Some(route) = self.routes.get(hdr.dcid.as_ref()) {
            let d = Datagram {
                buf: buf.to_vec(),
                from,
                to,
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = route.inbox.try_send(d) {
                self.metrics.packet_dropped(PacketDropReason::QueueFull);
            }
            return;
        }
        if hdr.ty != quiche::Type::Initial {
            if let Some(inbox) = self.routes.shared().and_then(|s| s.get(hdr.dcid.as_ref())) {
                // Another socket's connection: its client's address changed
                // and the kernel hashed it here.
                trace!(%from, dcid = ?hdr.dcid, "handing a datagram to another socket's connection");
                self.metrics.packet_handed_over();
                let d = Datagram {
                    buf: buf.to_vec(),
                    from,
                    to,
                };
                if let Err(mpsc::error::TrySendError::Full(_)) = inbox.try_send(d) {
                    self.metrics.packet_dropped(PacketDropReason::QueueFull);
                }
                return;
            }
        }
        match &mut self.acceptor {
            Some(acceptor) => {
                acceptor
                    .on_unknown(hdr, buf, from, to, &mut self.routes)
                    .await
            }
            None => {
                // A stateless reset (RFC 9000 §10.3) carries a random id we
                // never issued. On a client socket there is one connection, so
                // hand it any unknown short-header packet: quiche recognises
                // the reset token and closes the connection.
                match self.routes.sole() {
                    Some(route) if hdr.ty == quiche::Type::Short => {
                        let _ = route.inbox.try_send(Datagram {
                            buf: buf.to_vec(),
                            from,
                            to,
                        });
                    }
                    _ => self
                        .metrics
                        .packet_dropped(PacketDropReason::UnknownConnection),
                }
            }
        }
    }
}
