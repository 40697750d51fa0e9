//! The acceptor: what a server router does with datagrams for unknown ids.
//!
//! It answers unsupported versions with version negotiation, validates the
//! client's address with a stateless Retry (when on, or when off but too
//! many unproven handshakes are in progress), calls `quiche::accept`, and
//! queues the new connection in a bounded accept backlog as an
//! [`IncomingConnection`] for the application to start. Nothing is kept for
//! a client that has not proven its address when Retry is on; with it off,
//! at most `max_unvalidated_handshakes` such clients are.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;
use tracing::{debug, trace, warn};

use super::admission::{Admission, Refusal, Unvalidated};
use super::cid::ConnectionIdGenerator;
use super::connection::{ApplicationOverQuic, ConnectionHandle, ConnectionState};
use super::packet::{classify_unrouted, Unrouted};
use super::retry::RetryTokens;
use super::route::{next_conn_id, Datagram, RouterCommand, Routes};
use super::settings::QuicSettings;
use super::socket::QuicSocket;
use super::worker::WorkerParts;
use crate::metrics::{Metrics, PacketDropReason};

/// Stateless resets one socket sends per second at most.
const MAX_RESETS_PER_SEC: u32 = 1000;

/// Accepts new connections on one server socket.
pub(crate) struct Acceptor<M: Metrics> {
    pub(crate) config: quiche::Config,
    pub(crate) settings: Arc<QuicSettings>,
    pub(crate) tokens: Arc<RetryTokens>,
    /// Handshakes accepted without Retry and not yet complete.
    pub(crate) unvalidated: Arc<Unvalidated>,
    pub(crate) cid_generator: Arc<dyn ConnectionIdGenerator>,
    pub(crate) backlog: mpsc::Sender<IncomingConnection<M>>,
    pub(crate) socket: Arc<QuicSocket>,
    pub(crate) router: mpsc::UnboundedSender<RouterCommand>,
    pub(crate) tracker: TaskTracker,
    pub(crate) metrics: M,
    /// The caps on connections in total and per client address.
    pub(crate) admission: Arc<Admission>,
    /// Which of the listener's sockets this is.
    pub(crate) socket_index: usize,
    /// Certificate reloads: a new generation means a new configuration
    /// waits in `tls_slots`.
    pub(crate) tls_updates: watch::Receiver<u64>,
    pub(crate) tls_slots: Arc<super::TlsSlots>,
    /// Stateless resets sent in the current second: (since, count).
    pub(crate) resets: (Instant, u32),
}

impl<M: Metrics> Acceptor<M> {
    /// Answers an Initial with a stateless Retry carrying a token for
    /// `from`.
    async fn send_retry(&self, hdr: &quiche::Header<'_>, from: SocketAddr, to: SocketAddr) {
        let new_scid = self.cid_generator.new_connection_id();
        let token = self.tokens.mint(from, &hdr.dcid, &new_scid);
        let mut out = [0u8; 1350];
        match quiche::retry(
            &hdr.scid,
            &hdr.dcid,
            &new_scid,
            &token,
            hdr.version,
            &mut out,
        ) {
            Ok(n) => {
                self.send(&out[..n], from, to).await;
                self.metrics.retry_sent();
            }
            Err(e) => debug!(error = %e, "cannot build Retry"),
        }
    }

    pub(crate) async fn on_unknown(
        &mut self,
        hdr: quiche::Header<'_>,
        buf: &mut [u8],
        from: SocketAddr,
        to: SocketAddr,
        routes: &mut Routes,
    ) {
        match classify_unrouted(&hdr, buf.len()) {
            Unrouted::Initial => {}
            Unrouted::NegotiateVersion => {
                let mut out = [0u8; 1350];
                if let Ok(n) = quiche::negotiate_version(&hdr.scid, &hdr.dcid, &mut out) {
                    self.send(&out[..n], from, to).await;
                    self.metrics.version_negotiation_sent();
                }
                return;
            }
            Unrouted::Drop(reason) => {
                self.metrics.packet_dropped(reason);
                if reason == PacketDropReason::UnknownConnection && hdr.ty == quiche::Type::Short {
                    self.send_stateless_reset(&hdr.dcid, buf.len(), from, to)
                        .await;
                }
                return;
            }
        }
        self.apply_tls_update();
        if self.backlog.capacity() == 0 {
            warn!(%from, "accept backlog full; dropping new connection attempt");
            self.metrics
                .packet_dropped(PacketDropReason::AcceptBacklogFull);
            return;
        }

        let token = hdr.token.as_deref().unwrap_or_default();
        let validated = match token.is_empty() {
            true => None,
            false => match self.tokens.validate(token, from, &hdr.dcid) {
                Ok(odcid) => Some(odcid),
                // With Retry on, only our Retry tokens are expected.
                Err(e) if self.settings.enable_retry => {
                    debug!(%from, error = %e, "Retry token refused");
                    self.metrics.packet_dropped(PacketDropReason::InvalidToken);
                    return;
                }
                // With it off, a token we cannot use (another server's, an
                // old one) counts as none (RFC 9000 §8.1.3).
                Err(e) => {
                    debug!(%from, error = %e, "token ignored");
                    None
                }
            },
        };
        let (scid, odcid) = if let Some(odcid) = validated {
            (hdr.dcid.clone().into_owned(), Some(odcid))
        } else if self.settings.enable_retry
            || self.unvalidated.count() >= self.settings.max_unvalidated_handshakes
        {
            // Retry on, or off but at its cap of unproven handshakes:
            // prove the address first, keeping no state meanwhile.
            self.send_retry(&hdr, from, to).await;
            return;
        } else {
            (self.cid_generator.new_connection_id(), None)
        };
        let unvalidated = odcid.is_none().then(|| self.unvalidated.enter());

        // The address is proven now (when Retry is on): count it.
        let admitted = match self.admission.admit(from.ip()) {
            Ok(a) => a,
            Err(why) => {
                let cap = match why {
                    Refusal::Total => "max_connections",
                    Refusal::PerAddress => "max_connections_per_address",
                };
                debug!(%from, cap, "connection refused: at the cap");
                self.metrics
                    .packet_dropped(PacketDropReason::ConnectionLimit);
                return;
            }
        };

        // The token the client learns for our first id: keyed when the
        // generator has a key, so a restarted server's reset is believed.
        self.config
            .set_stateless_reset_token(self.cid_generator.reset_token_for(&scid));
        let mut conn = match quiche::accept(&scid, odcid.as_ref(), to, from, &mut self.config) {
            Ok(c) => c,
            Err(e) => {
                debug!(%from, error = %e, "quiche refused the connection");
                self.metrics.packet_dropped(PacketDropReason::Rejected);
                return;
            }
        };
        attach_logs(&mut conn, &self.settings, "server");

        let conn_id = next_conn_id();
        let (inbox_tx, inbox) = mpsc::channel(self.settings.connection_queue_len.max(16));
        let mut cids: Vec<Box<[u8]>> = vec![scid.as_ref().into()];
        if odcid.is_none() && hdr.dcid.as_ref() != scid.as_ref() {
            // Without Retry the client keeps using its own random id until it
            // hears from us, so route that id here too.
            cids.push(hdr.dcid.as_ref().into());
        }
        routes.insert(conn_id, cids, inbox_tx.clone());
        let _ = inbox_tx.try_send(Datagram {
            buf: buf.to_vec(),
            from,
            to,
        });

        let (state_tx, state_rx) = watch::channel(ConnectionState::Handshaking);
        let handle = ConnectionHandle {
            trace_id: conn.trace_id().into(),
            peer_addr: from,
            local_addr: to,
            state: state_rx,
            commands: None,
        };
        trace!(%from, trace_id = %handle.trace_id, "new connection");
        let incoming = IncomingConnection {
            parts: Some(WorkerParts {
                conn,
                conn_id,
                peer_addr: from,
                inbox,
                socket: self.socket.clone(),
                router: self.router.clone(),
                cid_generator: self.cid_generator.clone(),
                metrics: self.metrics.clone(),
                state: state_tx,
                started_at: Instant::now(),
                max_spare_cids: self.settings.active_connection_id_limit as usize,
                unreachable: None,
                _admitted: Some(admitted),
                label: None,
                shared_routes: routes.shared_arc().map(|t| (t, inbox_tx.downgrade())),
                expect_ip: None,
                unvalidated,
                session_sink: None,
                migration: None,
            }),
            handle,
            tracker: self.tracker.clone(),
            socket_index: self.socket_index,
        };
        if self.backlog.try_send(incoming).is_err() {
            // Raced with a full backlog or a closed listener: the dropped
            // IncomingConnection unmaps itself.
            self.metrics
                .packet_dropped(PacketDropReason::AcceptBacklogFull);
        }
    }

    /// Picks up a certificate reload ([`TlsReloader`](super::TlsReloader)):
    /// new connections get the new certificate.
    fn apply_tls_update(&mut self) {
        if !self.tls_updates.has_changed().unwrap_or(false) {
            return;
        }
        self.tls_updates.borrow_and_update();
        if let Some(c) = self.tls_slots.take(self.socket_index) {
            self.config = c;
            debug!("certificate reloaded for new connections");
        }
    }

    /// Answers a short-header packet for an id no connection has with a
    /// stateless reset (RFC 9000 §10.3), if reset tokens are keyed (else
    /// the client could not recognise it). The reset is shorter than the
    /// packet, so two endpoints cannot loop, and a spoofed source gets
    /// less than it sent; at most [`MAX_RESETS_PER_SEC`] go out per socket.
    async fn send_stateless_reset(
        &mut self,
        dcid: &quiche::ConnectionId<'_>,
        trigger_len: usize,
        from: SocketAddr,
        to: SocketAddr,
    ) {
        let Some(token) = self.cid_generator.reset_token_for(dcid) else {
            return;
        };
        if trigger_len <= 21 {
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.resets.0) >= std::time::Duration::from_secs(1) {
            self.resets = (now, 0);
        }
        if self.resets.1 >= MAX_RESETS_PER_SEC {
            return;
        }
        self.resets.1 += 1;
        let len = (trigger_len - 1).min(43);
        let mut pkt = vec![0u8; len];
        super::cid::fill_random(&mut pkt[..len - 16]);
        // Short header form, fixed bit set; the rest unpredictable.
        pkt[0] = 0x40 | (pkt[0] & 0x3f);
        pkt[len - 16..].copy_from_slice(&token.to_be_bytes());
        trace!(%from, "stateless reset");
        self.send(&pkt, from, to).await;
        self.metrics.stateless_reset_sent();
    }

    async fn send(&self, pkt: &[u8], to: SocketAddr, from: SocketAddr) {
        if let Err(e) = self
            .socket
            .send(to, self.socket.source_ip(from), pkt, None, None)
            .await
        {
            debug!(error = %e, "send failed");
        } else {
            self.metrics.packets_out(1, pkt.len() as u64);
        }
    }
}

/// Points quiche's key log and qlog at files when the settings ask for them.
/// Failure to open a file is logged and otherwise ignored: diagnostics must
/// not stop a connection.
pub(crate) fn attach_logs(conn: &mut quiche::Connection, settings: &QuicSettings, role: &str) {
    if let Some(path) = &settings.keylog_file {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => conn.set_keylog(Box::new(f)),
            Err(e) => warn!(path = %path.display(), error = %e, "cannot open key log file"),
        }
    }
    if let Some(dir) = &settings.qlog_dir {
        let path = dir.join(format!("{}-{role}.sqlog", conn.trace_id()));
        match std::fs::File::create(&path) {
            Ok(f) => conn.set_qlog(
                Box::new(std::io::BufWriter::new(f)),
                format!("tq-host {role}"),
                format!("tq-host {role} connection {}", conn.trace_id()),
            ),
            Err(e) => warn!(path = %path.display(), error = %e, "cannot create qlog file"),
        }
    }
}

/// A connection the router accepted, waiting for an application.
///
/// Start it with [`start`](Self::start). Dropping it without starting closes
/// it silently (the client will time out).
#[must_use = "an IncomingConnection does nothing until started"]
pub struct IncomingConnection<M: Metrics> {
    parts: Option<WorkerParts<M>>,
    handle: ConnectionHandle,
    tracker: TaskTracker,
    socket_index: usize,
}

impl<M: Metrics> IncomingConnection<M> {
    /// The client's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.handle.peer_addr()
    }

    /// The local address the client reached.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    /// The connection's id in logs and qlog files.
    pub fn trace_id(&self) -> &str {
        self.handle.trace_id()
    }

    /// Which of the listener's sockets (in the order given to
    /// [`listen`](super::listen)) the connection arrived on and stays on:
    /// with `--workers N`, its worker.
    pub fn socket_index(&self) -> usize {
        self.socket_index
    }

    /// Names the application in the connection's log span (field `app`;
    /// the server names a plugin version here), so every line the
    /// connection logs says what served it.
    pub fn set_label(&mut self, label: impl Into<String>) {
        if let Some(p) = self.parts.as_mut() {
            p.label = Some(label.into());
        }
    }

    /// Starts the connection's IO worker with `app` and returns a handle.
    pub fn start<A: ApplicationOverQuic>(mut self, app: A) -> ConnectionHandle {
        if let Some(parts) = self.parts.take() {
            parts.metrics.connection_accepted();
            self.tracker.spawn(parts.run(app));
        }
        self.handle.clone()
    }
}

impl<M: Metrics> Drop for IncomingConnection<M> {
    fn drop(&mut self) {
        if let Some(parts) = self.parts.take() {
            let _ = parts.router.send(RouterCommand::Closed {
                conn_id: parts.conn_id,
            });
        }
    }
}

impl<M: Metrics> std::fmt::Debug for IncomingConnection<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingConnection")
            .field("peer_addr", &self.handle.peer_addr)
            .field("trace_id", &self.handle.trace_id)
            .finish()
    }
}
