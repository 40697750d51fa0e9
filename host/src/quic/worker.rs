//! The IO worker: one task per connection that owns the `quiche::Connection`
//! and its application, and drives both.
//!
//! The worker never reads the socket (the router does, and hands it datagrams
//! over a bounded channel); it sends directly, GSO-batched (see `gso`). Its
//! loop order is the contract documented on [`ApplicationOverQuic`].

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, trace, warn, Instrument};

use super::cid::ConnectionIdGenerator;
use super::connection::{
    ApplicationClose, ApplicationOverQuic, CloseReason, ConnectionOutcome, ConnectionState,
    ConnectionStats, EarlyData, HandshakeInfo, INTERNAL_ERROR_CODE,
};
use super::error::{BoxError, QuicResult};
use super::gso::{self, GsoBatch, GsoSend};
use super::migrate::WorkerCommand;
use super::packet::coalesced_packet_len;
use super::route::{ClientSignals, Datagram, RouterCommand};
use super::socket::QuicSocket;
use crate::metrics::{HandshakeFailure, Metrics, PacketDropReason};

/// The longest close reason sent; the rest is cut (CONNECTION_CLOSE must
/// fit in one packet).
const MAX_CLOSE_REASON: usize = 256;

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
    /// Server connections: its place under the listener's caps, given back
    /// when the worker (or an incoming connection never started) ends.
    pub(crate) _admitted: Option<super::admission::Admitted>,
    /// Server connections accepted without Retry: counted as unvalidated
    /// until the handshake completes.
    pub(crate) unvalidated: Option<super::admission::UnvalidatedGuard>,
    /// What the application calls itself in the connection's log span
    /// (`app`), e.g. a plugin version.
    pub(crate) label: Option<String>,
    /// Listeners with several sockets: the table they share, and this
    /// connection's inbox (weakly: the worker must not keep its own inbox
    /// open). Ids are published here before the peer learns them, so a
    /// packet that reaches another socket with a new id is never taken for
    /// an unknown connection (and answered with a stateless reset).
    pub(crate) shared_routes: Option<(Arc<super::route::SharedRoutes>, mpsc::WeakSender<Datagram>)>,
    /// Client connections to an address rather than a name: the address
    /// the server's certificate must list (checked when the handshake
    /// completes; taken once checked).
    pub(crate) expect_ip: Option<std::net::IpAddr>,
    /// Client connections: where the TLS session goes once the server
    /// sends one, for the connector's next connection to it.
    pub(crate) session_sink: Option<super::session::SessionSink>,
    /// Client connections: the handle's requests to move to another
    /// socket, and the sockets moved to.
    pub(crate) migration: Option<Migration>,
}

/// How many sockets a client connection keeps reading after moving to
/// them (quiche keeps as many paths as `active_connection_id_limit`, 4 by
/// default): a client that moves again and again holds no more.
const MAX_MIGRATED_SOCKETS: usize = 4;

/// A client connection's means to move (see `migrate`).
pub(crate) struct Migration {
    commands: mpsc::UnboundedReceiver<WorkerCommand>,
    /// The connection's own inbox, for the forwarders of new sockets
    /// (weakly: the worker must not keep its own inbox open).
    inbox: mpsc::WeakSender<Datagram>,
    /// Sockets moved to, most recent last, each with its forwarder's stop;
    /// the first socket stays the worker's own. At most
    /// [`MAX_MIGRATED_SOCKETS`]: the oldest goes first.
    sockets: std::collections::VecDeque<(Arc<QuicSocket>, tokio_util::sync::CancellationToken)>,
    /// Buffer sizes asked for new sockets, as for the first.
    sockets_with: super::socket::SocketOptions,
    /// Stops the forwarders when the worker ends.
    stop: tokio_util::sync::CancellationToken,
    _stop_on_drop: tokio_util::sync::DropGuard,
}

impl Migration {
    pub(crate) fn new(
        commands: mpsc::UnboundedReceiver<WorkerCommand>,
        inbox: mpsc::WeakSender<Datagram>,
        sockets_with: super::socket::SocketOptions,
    ) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        Self {
            commands,
            inbox,
            sockets: std::collections::VecDeque::new(),
            sockets_with,
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
        }
    }
}

impl std::fmt::Debug for Migration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Migration")
            .field("sockets", &self.sockets.len())
            .finish_non_exhaustive()
    }
}

/// The next request from a client connection's handle; never, for a
/// server's, or once every handle is gone.
async fn next_command(m: &mut Option<Migration>) -> WorkerCommand {
    match m {
        Some(m) => match m.commands.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Where the connection is in its life, as the worker's loop sees it.
enum Stage {
    /// The handshake has not completed. `failure_reported`: the handle was
    /// already told that it never will, so the metric is not counted twice.
    Handshake { failure_reported: bool },
    /// The application runs.
    Running(HandshakeInfo),
    /// The connection is closing (by the application's own close(), a failed
    /// hook or the transport): the application has nothing left to do.
    Closing(HandshakeInfo),
}

impl Stage {
    fn is_handshake(&self) -> bool {
        matches!(self, Stage::Handshake { .. })
    }

    fn is_running(&self) -> bool {
        matches!(self, Stage::Running(_))
    }

    /// Moves a running connection to `Closing`. A connection that closes
    /// during the handshake stays in `Handshake`: the loop closes it as it
    /// completes, if it ever does.
    fn close(&mut self) {
        let placeholder = Stage::Handshake {
            failure_reported: false,
        };
        *self = match std::mem::replace(self, placeholder) {
            Stage::Running(info) => Stage::Closing(info),
            other => other,
        };
    }
}

/// How a flush ended.
enum Flushed {
    /// quiche has nothing more to send.
    Done,
    /// Stopped at the per-turn bound, with more to send.
    More,
    /// quiche's pacer holds the next packet for later than it lets a
    /// packet go early: flush again at this time (or on the next packet).
    HoldUntil(Instant),
}

enum Wake {
    Timer,
    Packet(Option<Datagram>),
    App(QuicResult<()>),
    Command(WorkerCommand),
}

impl<M: Metrics> WorkerParts<M> {
    /// Runs the connection to its end. Spawned by `start`/`connect`.
    ///
    /// Not an `async fn`: that would hold `self` and `app` in its own state
    /// beside the inner future that takes them, and the spawned task (most
    /// of an idle connection's memory) would be twice as large.
    pub(crate) fn run<A: ApplicationOverQuic>(
        self,
        app: A,
    ) -> impl std::future::Future<Output = ()> + Send {
        // No parent: the connection's span must not nest in (and keep
        // open) whatever span the caller of `start`/`connect` is in.
        let span = tracing::info_span!(
            parent: None,
            "conn",
            id = %self.conn.trace_id(),
            peer = %self.peer_addr,
            side = if self.conn.is_server() { "server" } else { "client" },
            app = self.label.as_deref().unwrap_or(""),
        );
        self.run_inner(app).instrument(span)
    }

    /// The connection's loop. An `async` block, not an `async fn`: an
    /// async fn's state keeps its arguments and the locals they move into
    /// apart (rust-lang/rust#62958), which doubled the task's size.
    #[allow(clippy::manual_async_fn)]
    fn run_inner<A: ApplicationOverQuic>(
        mut self,
        mut app: A,
    ) -> impl std::future::Future<Output = ()> + Send {
        async move {
            let mut stage = Stage::Handshake {
                failure_reported: false,
            };
            let mut result: QuicResult<()> = Ok(());
            let mut received = 0usize;
            // The application started in early data; the handshake is not done.
            let mut in_early_data = false;
            // The server's certificate did not list the address connected to:
            // the connection never counts as established.
            let mut cert_refused = false;
            // The pacer's last wait, so that it is counted once.
            let mut last_hold: Option<Instant> = None;

            loop {
                received += self.drain_inbox();
                // A migration asked for while the connection is busy (the wait
                // below may not be reached for many turns).
                while let Some(cmd) = self
                    .migration
                    .as_mut()
                    .and_then(|m| m.commands.try_recv().ok())
                {
                    self.on_command(cmd);
                }
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
                // Both conditions are sticky in quiche, so a connection that began
                // closing during the handshake is still seen closing below, when
                // its handshake completes.
                let conn_closing = self.conn.local_error().is_some() || self.conn.is_draining();
                if conn_closing {
                    stage.close();
                }

                // The address is proven by the client's Finished (not by 0-RTT,
                // which a client can replay from spoofed addresses).
                if self.unvalidated.is_some() && self.conn.is_established() {
                    self.unvalidated = None;
                }
                if stage.is_handshake() && self.conn.is_established() {
                    if let Some(ip) = self.expect_ip.take() {
                        if let Err(why) = certificate_covers(self.conn.peer_cert(), ip) {
                            info!(error = %why, "server certificate refused");
                            // TLS alert bad_certificate (42) as a QUIC
                            // CRYPTO_ERROR (0x100 + alert).
                            let reason = &why.as_bytes()[..why.len().min(MAX_CLOSE_REASON)];
                            let _ = self.conn.close(false, 0x100 + 42, reason);
                            cert_refused = true;
                            stage = Stage::Handshake {
                                failure_reported: self.report_failed_handshake(),
                            };
                        }
                    }
                }
                if stage.is_handshake()
                    && !cert_refused
                    && (self.conn.is_established() || self.conn.is_in_early_data())
                {
                    if let Some(sig) = &self.unreachable {
                        sig.established
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    let info = self.handshake_info();
                    // Started in early data: the handle learns the final word
                    // (0-RTT taken or refused, the real duration) once the
                    // handshake is done.
                    in_early_data = !self.conn.is_established();
                    self.metrics.handshake_completed(info.handshake_duration);
                    debug!(alpn = %String::from_utf8_lossy(&info.alpn), elapsed = ?info.handshake_duration, "handshake complete");
                    self.state
                        .send_replace(ConnectionState::Established(info.clone()));
                    let established = app.on_conn_established(&mut self.conn, &info);
                    stage = Stage::Running(info);
                    if conn_closing {
                        stage.close();
                    }
                    if let Err(e) = established {
                        self.fail(&mut result, &mut stage, e);
                    }
                }

                // Before the application reads what came with the end of the
                // handshake: whoever sees a response then sees the final info.
                if in_early_data && self.conn.is_established() {
                    in_early_data = false;
                    if let Stage::Running(info) | Stage::Closing(info) = &mut stage {
                        *info = self.handshake_info();
                        let done = ConnectionState::Established(info.clone());
                        self.state.send_if_modified(|s| {
                            let live = matches!(s, ConnectionState::Established(_));
                            if live {
                                *s = done;
                            }
                            live
                        });
                    }
                }
                if stage.is_running() && app.should_act() {
                    if received > 0 {
                        if let Err(e) = app.process_reads(&mut self.conn) {
                            self.fail(&mut result, &mut stage, e);
                        }
                    }
                    if stage.is_running() {
                        if let Err(e) = app.process_writes(&mut self.conn) {
                            self.fail(&mut result, &mut stage, e);
                        }
                    }
                }
                received = 0;

                match &mut stage {
                    Stage::Handshake { failure_reported } => {
                        if !*failure_reported {
                            *failure_reported = self.report_failed_handshake();
                        }
                    }
                    Stage::Running(_) | Stage::Closing(_) => {
                        if !self.conn.is_closed() {
                            self.refresh_connection_ids();
                        }
                        if let Some(sink) = &mut self.session_sink {
                            sink.observe(&self.conn);
                        }
                    }
                }
                self.drain_path_events();
                let flushed = {
                    // Lent for each flush (see `scratch`): an idle connection
                    // holds none. Sized now, not at the start: the packet size
                    // quiche may use grows once the peer's limits are known.
                    let out_len = gso::send_buffer_len(
                        self.socket.max_gso_segments(),
                        self.conn.max_send_udp_payload_size(),
                    );
                    let mut out = super::scratch::Scratch::take(out_len);
                    self.flush(&mut out).await
                };
                if self.conn.is_closed() {
                    break;
                }
                if stage.is_handshake() && self.is_unreachable() {
                    info!("nothing listens at the server's address (ICMP port unreachable)");
                    break;
                }
                let hold = match flushed {
                    Flushed::More => {
                        // Yield so that a bulk sender shares the runtime fairly.
                        tokio::task::yield_now().await;
                        continue;
                    }
                    Flushed::Done => None,
                    Flushed::HoldUntil(at) => {
                        // A flush while a wait is pending (a datagram came)
                        // finds the same one: counted once.
                        if last_hold != Some(at) {
                            self.metrics.pacer_held();
                        }
                        last_hold = Some(at);
                        Some(at)
                    }
                };
                // A resuming client enters 0-RTT once its ClientHello is out:
                // start the application now, not when the server answers, so
                // its first requests go in early data.
                if stage.is_handshake() && !self.conn.is_server() && self.conn.is_in_early_data() {
                    continue;
                }

                // quiche's on_timeout does nothing before one of its own
                // timers is due, so waking early for the pacer is harmless.
                let deadline = match (self.conn.timeout_instant(), hold) {
                    (Some(t), Some(h)) => Some(t.min(h)),
                    (t, h) => t.or(h),
                };
                let app_wait = stage.is_running() && app.should_act();
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
                        c = next_command(&mut self.migration) => Wake::Command(c),
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
                            info!(
                                "nothing listens at the server's address (ICMP port unreachable)"
                            );
                        } else {
                            warn!("endpoint shut down under a live connection");
                        }
                        break;
                    }
                    Wake::App(Ok(())) => {}
                    Wake::App(Err(e)) => self.fail(&mut result, &mut stage, e),
                    Wake::Command(cmd) => self.on_command(cmd),
                }
                if self.conn.is_closed() {
                    break;
                }
            }

            let (handshake, failure_reported) = match stage {
                Stage::Handshake { failure_reported } => (None, failure_reported),
                Stage::Running(info) | Stage::Closing(info) => (Some(info), false),
            };
            let outcome = self.outcome(handshake, &result);
            if outcome.handshake.is_none() {
                if !failure_reported {
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
            self.metrics.connection_closed(close_cause(&outcome));
            self.state
                .send_replace(ConnectionState::Closed(Arc::new(outcome)));
        }
    }

    fn on_command(&mut self, cmd: WorkerCommand) {
        match cmd {
            WorkerCommand::Migrate { socket, reply } => {
                let moved = self.migrate(socket);
                match &moved {
                    Ok(to) => info!(%to, "moving the connection to a new local address"),
                    Err(e) => info!(error = %e, "migration refused"),
                }
                let _ = reply.send(moved);
            }
        }
    }

    /// Moves the connection's active path to `socket` (see
    /// `ConnectionHandle::migrate`); the new local address.
    fn migrate(
        &mut self,
        socket: tokio::net::UdpSocket,
    ) -> Result<std::net::SocketAddr, super::error::QuicError> {
        use super::error::QuicError;
        let Some(m) = self.migration.as_mut() else {
            return Err(QuicError::InvalidSettings(
                "only a client's connection can migrate".into(),
            ));
        };
        if !self.conn.is_established() {
            return Err(QuicError::InvalidSettings(
                "the handshake is not done yet".into(),
            ));
        }
        // RFC 9000 §9: a client MUST NOT move when the server said so
        // (quiche 0.30 does not check).
        if self
            .conn
            .peer_transport_params()
            .is_some_and(|p| p.disable_active_migration)
        {
            return Err(QuicError::InvalidSettings(
                "the server asked clients not to migrate (disable_active_migration)".into(),
            ));
        }
        let qs =
            Arc::new(QuicSocket::new(socket, &m.sockets_with).map_err(QuicError::io("setup"))?);
        let local = qs.local_addr();
        // quiche keeps the old path (and a connection id on each side for
        // it), so the connection can fall back to it if the new one fails
        // validation: with the default limits (4 ids each way) that allows
        // three moves; past them quiche answers OutOfIdentifiers and the
        // connection stays where it is.
        self.conn
            .migrate_source(local)
            .map_err(|source| QuicError::Quiche {
                what: "migrate",
                source,
            })?;
        let inbox = m
            .inbox
            .upgrade()
            .ok_or_else(|| QuicError::Closed("the connection has ended".into()))?;
        // Owned by the worker: stopped when it ends, or when the socket is
        // the oldest of too many.
        let stop = m.stop.child_token();
        tokio::spawn(super::migrate::forward(qs.clone(), inbox, stop.clone()));
        m.sockets.push_back((qs, stop));
        if m.sockets.len() > MAX_MIGRATED_SOCKETS {
            if let Some((_, oldest)) = m.sockets.pop_front() {
                oldest.cancel();
            }
        }
        Ok(local)
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

    fn fail(&mut self, result: &mut QuicResult<()>, stage: &mut Stage, e: BoxError) {
        stage.close();
        if let Some(c) = e.downcast_ref::<ApplicationClose>() {
            // A deliberate close by the application, not a failure.
            debug!(code = c.code, reason = %c.reason, "application closes the connection");
            // Whatever the application chose, quiche must get a code a
            // varint can carry (its encoder panics on more) and a reason
            // that fits in a packet.
            let code = if c.code > super::varint::MAX {
                warn!(
                    code = c.code,
                    "close code beyond 2^62 - 1; closing with the internal error code"
                );
                INTERNAL_ERROR_CODE
            } else {
                c.code
            };
            let reason = &c.reason.as_bytes()[..c.reason.len().min(MAX_CLOSE_REASON)];
            if let Err(err) = self.conn.close(true, code, reason) {
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
    /// Logs quiche's path events (a new address seen, validated or not, the
    /// peer moved, a path dropped). quiche queues one per event until the
    /// application takes it, so they are taken every turn: a peer whose
    /// address keeps changing must not grow the queue.
    fn drain_path_events(&mut self) {
        while let Some(ev) = self.conn.path_event_next() {
            match ev {
                quiche::PathEvent::PeerMigrated(_, peer) => {
                    info!(from = %self.peer_addr, to = %peer, "the peer moved to a new address");
                    self.peer_addr = peer;
                }
                quiche::PathEvent::FailedValidation(_, peer) => {
                    debug!(%peer, "a new address of the peer failed validation");
                }
                other => debug!(event = ?other, "path event"),
            }
        }
    }

    fn refresh_connection_ids(&mut self) {
        let mut issued = 0;
        while self.conn.scids_left() > 0 && self.conn.active_scids() < self.max_spare_cids + 1 {
            let cid = self.cid_generator.new_connection_id();
            let token = self.cid_generator.new_reset_token(&cid);
            let published = self.shared_routes.as_ref().and_then(|(table, inbox)| {
                let inbox = inbox.upgrade()?;
                table.add(cid.as_ref(), self.conn_id, &inbox);
                Some(table)
            });
            match self.conn.new_scid(&cid, token, false) {
                Ok(_) => {
                    let _ = self.router.send(RouterCommand::Map {
                        cid: cid.as_ref().into(),
                        conn_id: self.conn_id,
                    });
                    issued += 1;
                }
                Err(e) => {
                    if let Some(table) = published {
                        table.remove(cid.as_ref(), self.conn_id);
                    }
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
                conn_id: self.conn_id,
            });
        }
    }

    /// Sends what quiche has, batching equal-sized packets to one destination
    /// into GSO sends, until quiche has nothing more, the per-turn bound,
    /// or (under a pacing congestion controller) a packet due later than it
    /// may go early.
    async fn flush(&mut self, out: &mut [u8]) -> Flushed {
        let mut batch = GsoBatch::new(self.socket.max_gso_segments());
        let mut packets = 0;
        // Under gcongestion (bbr2) with pacing, quiche's pacer gives every
        // packet a release time (under cubic and reno it gives none, and
        // nothing here applies). Before each packet, if the next one is
        // due later than quiche lets a packet go early
        // (`max_release_into_future`, 1/8 of the RTT, 1-5 ms), the batch
        // so far goes and the worker waits: without the offload, sends
        // are paced to within that. With it, each batch is also one burst
        // released by the kernel at its first packet's time, so it holds
        // at most quiche's send quantum and packets due within 1 ms of
        // that (`paced_admits`); without the offload such a cap would only
        // split back-to-back sends. (tokio-quiche paces only with its
        // offload on.) The wait applies to whatever quiche would send
        // next, ACKs and probes included: at most a few ms.
        let pace = self.conn.pacing_enabled() && self.conn.gcongestion_enabled() == Some(true);
        let burst = pace && self.socket.paces();
        let quantum = if burst { self.conn.send_quantum() } else { 0 };
        loop {
            if pace {
                if let Some(until) = self.pacer_hold() {
                    self.send_batch(out, batch.take()).await;
                    return Flushed::HoldUntil(until);
                }
            }
            let max = self.conn.max_send_udp_payload_size();
            let done = if !batch.has_room(out.len(), max) {
                true
            } else {
                let at = batch.offset();
                match self.conn.send(&mut out[at..at + max]) {
                    Ok((n, info)) => {
                        packets += 1;
                        if !batch.admits(n, info.to, info.from)
                            || (burst && !batch.paced_admits(info.at, n, quantum))
                        {
                            // Send the batch, then start anew with this packet
                            // at the front.
                            self.send_batch(out, batch.take()).await;
                            out.copy_within(at..at + n, 0);
                        }
                        batch.pace(info.at);
                        batch.push(n, info.to, info.from)
                    }
                    Err(quiche::Error::Done) => {
                        self.send_batch(out, batch.take()).await;
                        return Flushed::Done;
                    }
                    Err(e) => {
                        warn!(error = %e, "quiche failed to build a packet");
                        let _ = self.conn.close(false, 0x1, b"internal error");
                        self.send_batch(out, batch.take()).await;
                        return Flushed::Done;
                    }
                }
            };
            if done {
                self.send_batch(out, batch.take()).await;
            }
            if packets >= SEND_PER_TURN {
                self.send_batch(out, batch.take()).await;
                return Flushed::More;
            }
        }
    }

    /// When quiche's pacer holds the next packet longer than it lets one go
    /// early: the time to flush again, a little before the packet is due
    /// (one wake-up then lets it go).
    fn pacer_hold(&self) -> Option<Instant> {
        let now = Instant::now();
        let due = self.conn.get_next_release_time()?.time(now)?;
        let early = self.conn.max_release_into_future();
        if due.duration_since(now) < early {
            return None;
        }
        trace!(due_in = ?due.duration_since(now), "the pacer holds the next packet");
        Some(due - early.mul_f32(0.8))
    }

    /// Sends a finished batch from the front of `out`.
    async fn send_batch(&self, out: &[u8], send: Option<GsoSend>) {
        let Some(s) = send else {
            return;
        };
        // A migrated client sends from the socket of the path's address; a
        // path whose socket is no longer kept sends nothing (its packets
        // would leave from the wrong address).
        let socket = match &self.migration {
            Some(m) if !m.sockets.is_empty() && s.from != self.socket.local_addr() => {
                match m
                    .sockets
                    .iter()
                    .rev()
                    .map(|(q, _)| q)
                    .find(|q| q.local_addr() == s.from)
                {
                    Some(q) => q,
                    None => {
                        debug!(from = %s.from, "no socket for this path any more; packet dropped");
                        return;
                    }
                }
            }
            _ => &self.socket,
        };
        let src = socket.source_ip(s.from);
        match socket.send(s.to, src, &out[..s.len], s.segment, s.at).await {
            Ok(paced) => {
                self.metrics.packets_out(s.count as u64, s.len as u64);
                if paced {
                    self.metrics.packets_paced(s.count as u64);
                }
            }
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
            early_data: EarlyData::from_reason(
                self.conn.early_data_reason(),
                self.conn.is_server(),
            ),
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

/// How a connection ended, for the metrics.
fn close_cause(o: &ConnectionOutcome) -> crate::metrics::CloseCause {
    use crate::metrics::CloseCause;
    if o.handshake.is_none() {
        CloseCause::HandshakeFailed
    } else if o.timed_out {
        CloseCause::IdleTimeout
    } else if let Some(p) = &o.peer_close {
        if is_clean(p) {
            CloseCause::PeerClosed
        } else {
            CloseCause::PeerError
        }
    } else if let Some(l) = &o.local_close {
        if is_clean(l) {
            CloseCause::LocalClosed
        } else {
            CloseCause::LocalError
        }
    } else {
        CloseCause::Other
    }
}

/// Whether a close carried no error: code 0, or for an application close
/// also 0x100, HTTP/3's H3_NO_ERROR (RFC 9114 §8.1), how every HTTP/3
/// connection ends; counting those as errors would drown real ones.
fn is_clean(c: &CloseReason) -> bool {
    c.code == 0 || (c.is_app && c.code == 0x100)
}

/// Whether the server certificate (`der`, the leaf) lists `ip` among its
/// subject alternative names; the reason if not. The chain itself was
/// verified by BoringSSL during the handshake.
fn certificate_covers(der: Option<&[u8]>, ip: std::net::IpAddr) -> Result<(), String> {
    let der = der.ok_or("the server sent no certificate")?;
    let cert = boring::x509::X509::from_der(der)
        .map_err(|e| format!("cannot read the server certificate: {e}"))?;
    let want = ip.to_canonical();
    let listed = cert.subject_alt_names().is_some_and(|names| {
        names.iter().any(|n| {
            let got = match n.ipaddress() {
                Some(b) if b.len() == 4 => <[u8; 4]>::try_from(b).map(std::net::IpAddr::from),
                Some(b) if b.len() == 16 => {
                    <[u8; 16]>::try_from(b).map(|a| std::net::IpAddr::from(a).to_canonical())
                }
                _ => return false,
            };
            got.is_ok_and(|g| g == want)
        })
    });
    if listed {
        Ok(())
    } else {
        Err(format!("the server certificate is not valid for {ip}"))
    }
}

#[cfg(test)]
mod task_size {
    use super::WorkerParts;
    use crate::http3::ServerH3Driver;
    use crate::metrics::DefaultMetrics;

    /// The size of what `f` returns, without calling it.
    fn returned<A, B, Fut, F: FnOnce(A, B) -> Fut>(_: &F) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// An idle connection's memory is mostly its task, whose future holds
    /// the worker's parts (quiche's `Connection` inline) and the
    /// application. Written as `async fn`s, `run` and `run_inner` each
    /// kept a second copy of both (39 KiB a connection in all, for 9.7 KiB
    /// of parts and driver).
    #[test]
    fn a_connection_task_holds_its_parts_once() {
        type P = WorkerParts<DefaultMetrics>;
        let parts = std::mem::size_of::<P>() + std::mem::size_of::<ServerH3Driver>();
        let task = returned(&|p: P, a: ServerH3Driver| p.run(a));
        assert!(
            task < parts + 4096,
            "the task's future is {task} bytes for {parts} bytes of parts"
        );
    }
}
