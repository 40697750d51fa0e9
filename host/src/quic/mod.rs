//! QUIC over tokio: a bridge between `quiche` (a sans-IO QUIC state machine)
//! and tokio sockets and timers.
//!
//! ```text
//!   UDP socket ──► router task ──(bounded channel per connection)──► IO worker task
//!        ▲           │  unknown ids                                    │ owns quiche::Connection
//!        │           ▼                                                 │ drives ApplicationOverQuic
//!        │        acceptor ── Retry / version negotiation / accept     │
//!        │           │                                                 │
//!        │           ▼                                                 │
//!        │     Listener (accept backlog) ──► IncomingConnection::start ┘
//!        └──────────────────────── GSO sends ◄──────────────────────────┘
//! ```
//!
//! One router per socket is the only reader of that socket; one worker per
//! connection owns its quiche state and sends directly. Workers tell their
//! router which connection ids are theirs. This layer knows nothing about
//! HTTP/3 or WebAssembly: applications plug in through [`ApplicationOverQuic`].
//!
//! # Example: an echo server and a client
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tq_host::metrics::DefaultMetrics;
//! use tq_host::quic::{self, ConnectionParams, QuicSettings, TlsCertificatePaths};
//! use tq_host::builtin::EchoApplication;
//!
//! let socket = tokio::net::UdpSocket::bind("127.0.0.1:4433").await?;
//! let params = ConnectionParams::new_server(
//!     QuicSettings::default(),
//!     TlsCertificatePaths { cert: "cert.pem".into(), key: "key.pem".into() },
//! );
//! let mut listener = quic::listen([socket], params, DefaultMetrics::default())?;
//! while let Some(incoming) = listener.accept().await {
//!     incoming.start(EchoApplication::default());
//! }
//! # Ok(()) }
//! ```

mod acceptor;
mod admission;
mod bind;
mod cid;
mod connection;
mod error;
mod gso;
pub(crate) mod id_map;
mod migrate;
mod packet;
mod retry;
mod route;
mod router;
pub(crate) mod scratch;
mod session;
mod settings;
mod socket;
#[cfg(test)]
pub(crate) mod test_pair;
mod tickets;
pub mod varint;
mod worker;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use acceptor::IncomingConnection;
pub(crate) use bind::any_local_for;
pub use bind::{bind_workers, default_workers};
pub(crate) use cid::decode_hex;
pub use cid::{
    ConnectionIdGenerator, ServerIdConnectionIdGenerator, SimpleConnectionIdGenerator,
    StatelessResetKey,
};
pub use connection::{
    ApplicationClose, ApplicationOverQuic, CloseReason, ConnectionHandle, ConnectionOutcome,
    ConnectionStats, EarlyData, HandshakeInfo, INTERNAL_ERROR_CODE,
};
pub use error::{BoxError, QuicError, QuicResult};
pub use settings::{CongestionControl, ConnectionParams, QuicSettings, TlsCertificatePaths};
pub use tickets::SessionTicketKey;

use crate::metrics::Metrics;
use acceptor::{attach_logs, Acceptor};
use admission::{Admission, Unvalidated};
use connection::ConnectionState;
use retry::RetryTokens;
use route::{next_conn_id, ClientSignals, Routes};
use router::Router;
use socket::QuicSocket;
use worker::WorkerParts;

/// Listens for QUIC connections on each of `sockets`, with random connection
/// ids. See [`listen_with_generator`].
///
/// # Errors
/// Bad settings or TLS files, or a socket that cannot be set up, are reported
/// before anything runs.
pub fn listen<M: Metrics>(
    sockets: impl IntoIterator<Item = UdpSocket>,
    params: ConnectionParams,
    metrics: M,
) -> Result<Listener<M>, QuicError> {
    listen_with_generator(
        sockets,
        params,
        Arc::new(SimpleConnectionIdGenerator::default()),
        metrics,
    )
}

/// Listens for QUIC connections on each of `sockets`, issuing connection ids
/// from `cid_generator`. Must be called within a tokio runtime.
///
/// One router task per socket starts at once; connections it accepts wait in
/// the accept backlog ([`QuicSettings::accept_backlog`]) until the caller
/// takes them from the returned [`Listener`].
///
/// # Errors
/// Bad settings or TLS files, or a socket that cannot be set up, are reported
/// before anything runs.
pub fn listen_with_generator<M: Metrics>(
    sockets: impl IntoIterator<Item = UdpSocket>,
    params: ConnectionParams,
    cid_generator: Arc<dyn ConnectionIdGenerator>,
    metrics: M,
) -> Result<Listener<M>, QuicError> {
    let settings = Arc::new(params.settings.clone());
    let (backlog, incoming) = mpsc::channel(settings.accept_backlog.max(1));
    // Tokens exist with Retry off too: it is then used under load only.
    let tokens = Arc::new(RetryTokens::new(settings.retry_token_lifetime));
    let unvalidated = Arc::new(Unvalidated::default());
    let tracker = TaskTracker::new();
    let stop_accepting = CancellationToken::new();
    let admission = Admission::new(
        settings.max_connections,
        settings.max_connections_per_address,
    );
    let mut routers = Vec::new();
    let mut local_addrs = Vec::new();
    let sockets: Vec<UdpSocket> = sockets.into_iter().collect();
    let tls_slots = Arc::new(TlsSlots::default());
    let ticket_keys = settings::TicketKeys::for_listener(params.session_ticket_key.as_ref())?;
    let (tls_tx, tls_updates) = watch::channel(0u64);
    // With several sockets, a packet may reach another socket than its
    // connection's: the routers share their ids.
    let shared = (sockets.len() > 1).then(|| Arc::new(route::SharedRoutes::default()));
    if settings.pacing_offload && !settings.offloads_pacing() {
        tracing::warn!(
            "pacing_offload does nothing here: quiche gives packets release times only with \
             enable_pacing and congestion_control = \"bbr2\""
        );
    }
    for (index, s) in sockets.into_iter().enumerate() {
        let socket = Arc::new(
            QuicSocket::new(s, &socket::SocketOptions::from_settings(&settings))
                .map_err(QuicError::io("setup"))?,
        );
        local_addrs.push(socket.local_addr());
        let (router_tx, commands) = mpsc::unbounded_channel();
        let acceptor = Acceptor {
            config: params.to_quiche_config_with(true, Some(&ticket_keys))?,
            settings: settings.clone(),
            tokens: tokens.clone(),
            unvalidated: unvalidated.clone(),
            cid_generator: cid_generator.clone(),
            backlog: backlog.clone(),
            socket: socket.clone(),
            router: router_tx,
            tracker: tracker.clone(),
            metrics: metrics.clone(),
            admission: admission.clone(),
            socket_index: index,
            tls_updates: tls_updates.clone(),
            tls_slots: tls_slots.clone(),
            resets: (Instant::now(), 0),
        };
        routers.push(Router {
            socket,
            routes: Routes::with_shared(shared.clone()),
            commands,
            acceptor: Some(acceptor),
            stop_accepting: stop_accepting.clone(),
            cid_len: cid_generator.connection_id_len(),
            metrics: metrics.clone(),
            client: None,
        });
    }
    if routers.is_empty() {
        return Err(QuicError::InvalidSettings(
            "listen() needs at least one socket".into(),
        ));
    }
    for r in routers {
        tracker.spawn(r.run());
    }
    let local_addrs_len = local_addrs.len();
    Ok(Listener {
        incoming,
        stop_accepting,
        tracker,
        local_addrs,
        tls: TlsReloader {
            keys: Arc::new(std::sync::Mutex::new(ticket_keys)),
            params: Arc::new(params),
            updates: Arc::new(tls_tx),
            slots: tls_slots,
            sockets: local_addrs_len,
        },
    })
}

/// Reloads a listener's certificate and key from their files, for new
/// connections (live ones keep theirs). Cheap to clone; get one with
/// [`Listener::tls_reloader`].
#[derive(Clone)]
pub struct TlsReloader {
    params: Arc<ConnectionParams>,
    /// The session-ticket keys in use: kept when a key file cannot be
    /// read at a reload.
    keys: Arc<std::sync::Mutex<settings::TicketKeys>>,
    /// Bumped once the slots hold the new configurations.
    updates: Arc<watch::Sender<u64>>,
    slots: Arc<TlsSlots>,
    sockets: usize,
}

impl std::fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReloader")
            .field("sockets", &self.sockets)
            .finish_non_exhaustive()
    }
}

/// One freshly built TLS configuration per socket, for each socket's
/// acceptor to take. Built (files read) when the reload is asked for, so
/// every socket gets the same certificate, and a file broken later
/// changes nothing.
#[derive(Default)]
pub(crate) struct TlsSlots(std::sync::Mutex<std::collections::HashMap<usize, quiche::Config>>);

impl TlsSlots {
    pub(crate) fn take(&self, socket: usize) -> Option<quiche::Config> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&socket)
    }
}

impl TlsReloader {
    /// Reads the certificate and key files again and, if they load, makes
    /// every socket of the listener use them for new connections.
    ///
    /// # Errors
    /// A file that cannot be read or parsed, or a key that does not match
    /// the certificate: the running certificate stays.
    pub fn reload(&self) -> Result<(), QuicError> {
        // Fresh session-ticket keys too, shared by the sockets: a
        // certificate replaced (expired, revoked, compromised) must not go
        // on vouching for sessions resumed with the old keys. (BoringSSL's
        // own 48-hour rotation is off once keys are set; reloading, e.g.
        // daily by SIGHUP, is the rotation.) With an operator's key file,
        // the file read again: a fleet rotates by replacing it everywhere.
        // A key file that no longer reads keeps the keys in use: it must
        // not hold back a certificate's renewal.
        let keys = match settings::TicketKeys::for_reload(self.params.session_ticket_key.as_ref()) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "session-ticket keys not rotated; the ones in use stay");
                self.keys.lock().unwrap_or_else(|e| e.into_inner()).clone()
            }
        };
        let mut fresh = std::collections::HashMap::new();
        for i in 0..self.sockets {
            fresh.insert(i, self.params.to_quiche_config_with(true, Some(&keys))?);
        }
        // Only now in use: a certificate refused above leaves them unused.
        *self.keys.lock().unwrap_or_else(|e| e.into_inner()) = keys;
        *self.slots.0.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        self.updates.send_modify(|g| *g += 1);
        Ok(())
    }
}

/// Incoming connections from [`listen`]. Also a `Stream` of them.
///
/// Dropping the listener stops accepting; connections already accepted run
/// to their end. [`shutdown`](Self::shutdown) does the same and waits.
#[derive(Debug)]
pub struct Listener<M: Metrics> {
    incoming: mpsc::Receiver<IncomingConnection<M>>,
    stop_accepting: CancellationToken,
    tracker: TaskTracker,
    local_addrs: Vec<std::net::SocketAddr>,
    tls: TlsReloader,
}

impl<M: Metrics> Listener<M> {
    /// A handle that reloads the certificate (e.g. on SIGHUP).
    pub fn tls_reloader(&self) -> TlsReloader {
        self.tls.clone()
    }

    /// The next accepted connection, or `None` once the listener stopped.
    ///
    /// # Cancel safety
    /// Cancel-safe: a connection is never lost when this future is dropped.
    pub async fn accept(&mut self) -> Option<IncomingConnection<M>> {
        self.incoming.recv().await
    }

    /// The addresses of the listening sockets (useful after binding port 0).
    pub fn local_addrs(&self) -> &[std::net::SocketAddr] {
        &self.local_addrs
    }

    /// Stops accepting new connections, drops those waiting in the backlog,
    /// and waits until every accepted connection has ended and every router
    /// and worker task has finished. Connections are not closed by this: their
    /// applications (or idle timeouts) end them.
    pub async fn shutdown(mut self) {
        self.stop_accepting.cancel();
        self.incoming.close();
        while self.incoming.recv().await.is_some() {}
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl<M: Metrics> Drop for Listener<M> {
    fn drop(&mut self) {
        self.stop_accepting.cancel();
        self.tracker.close();
    }
}

impl<M: Metrics> futures_core::Stream for Listener<M> {
    type Item = IncomingConnection<M>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.incoming.poll_recv(cx)
    }
}

/// Opens a client connection with default transport settings and certificate
/// verification. See [`connect_with_config`].
///
/// # Errors
/// As [`connect_with_config`].
pub async fn connect<A: ApplicationOverQuic>(
    socket: UdpSocket,
    host: Option<&str>,
    app: A,
) -> Result<ConnectionHandle, QuicError> {
    let params = ConnectionParams::new_client(QuicSettings::default());
    connect_with_config(
        socket,
        host,
        &params,
        app,
        crate::metrics::DefaultMetrics::default(),
    )
    .await
}

/// Opens a client connection over `socket`, which must be connected to the
/// server's address (`UdpSocket::connect`), and waits for the handshake.
///
/// `host` is the server name for SNI and certificate verification. The
/// connection gets its own router and worker; open as many as you like, one
/// socket each. After the handshake, `app` runs the connection. To open many
/// connections with the same parameters, build a [`Connector`] once instead:
/// making a TLS context costs milliseconds.
///
/// # Errors
/// [`QuicError::HandshakeFailed`] says why a handshake failed (a TLS alert
/// such as `no_application_protocol`, a timeout, ...); other variants report
/// bad settings or socket errors.
pub async fn connect_with_config<A: ApplicationOverQuic, M: Metrics>(
    socket: UdpSocket,
    host: Option<&str>,
    params: &ConnectionParams,
    app: A,
    metrics: M,
) -> Result<ConnectionHandle, QuicError> {
    Connector::new(params.clone(), metrics)?
        .connect(socket, host, app)
        .await
}

/// Opens client connections that share one set of parameters and one TLS
/// context (BoringSSL reads the system's CA store each time a context is
/// made, about 4 ms, so reuse matters when opening many connections).
///
/// ```no_run
/// # async fn demo(app: tq_host::builtin::EchoApplication) -> Result<(), tq_host::quic::QuicError> {
/// use tq_host::metrics::DefaultMetrics;
/// use tq_host::quic::{ConnectionParams, Connector, QuicSettings};
/// let connector = Connector::new(
///     ConnectionParams::new_client(QuicSettings::default()).ca_file("ca.pem"),
///     DefaultMetrics::default(),
/// )?;
/// let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
/// socket.connect("127.0.0.1:4433").await.unwrap();
/// let handle = connector.connect(socket, Some("localhost"), app).await?;
/// # Ok(()) }
/// ```
pub struct Connector<M: Metrics> {
    params: ConnectionParams,
    config: std::sync::Mutex<quiche::Config>,
    /// Each server's latest TLS session, for the next connection to it.
    sessions: Arc<session::SessionCache>,
    cid_generator: Arc<dyn ConnectionIdGenerator>,
    metrics: M,
}

impl<M: Metrics> std::fmt::Debug for Connector<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl<M: Metrics> Connector<M> {
    /// Validates `params` and builds the TLS context.
    ///
    /// # Errors
    /// Bad settings or an unreadable CA file.
    pub fn new(params: ConnectionParams, metrics: M) -> Result<Self, QuicError> {
        let config = params.to_quiche_config(false)?;
        Ok(Self {
            params,
            config: std::sync::Mutex::new(config),
            sessions: Arc::new(session::SessionCache::default()),
            cid_generator: Arc::new(SimpleConnectionIdGenerator::default()),
            metrics,
        })
    }

    /// How many servers this connector holds a TLS session for: its next
    /// connection to any of them resumes (and may send early data if the
    /// settings allow it; only requests that change nothing go in it).
    pub fn resumable_servers(&self) -> usize {
        self.sessions.len()
    }

    /// Opens a connection over `socket` (connected to the server) and waits
    /// for the handshake; see [`connect_with_config`]. With a session from
    /// an earlier connection to the same server and `enable_early_data`,
    /// it returns as soon as 0-RTT data can be sent.
    ///
    /// # Errors
    /// As [`connect_with_config`].
    pub async fn connect<A: ApplicationOverQuic>(
        &self,
        socket: UdpSocket,
        host: Option<&str>,
        app: A,
    ) -> Result<ConnectionHandle, QuicError> {
        let handle = self.start(socket, host, app)?;
        handle.established().await?;
        Ok(handle)
    }

    /// Starts a connection without waiting for the handshake.
    ///
    /// # Errors
    /// Socket errors, or quiche refusing to create the connection.
    pub fn start<A: ApplicationOverQuic>(
        &self,
        socket: UdpSocket,
        host: Option<&str>,
        app: A,
    ) -> Result<ConnectionHandle, QuicError> {
        let s = &self.params.settings;
        let socket = Arc::new(
            QuicSocket::new(socket, &socket::SocketOptions::from_settings(s))
                .map_err(QuicError::io("setup"))?,
        );
        let peer = socket.peer_addr().map_err(|_| {
            QuicError::InvalidSettings(
                "connect() needs a UDP socket connected to the server".into(),
            )
        })?;
        let local = socket.local_addr();
        let scid = self.cid_generator.new_connection_id();
        // An address is not a name: quiche would send it as SNI (which
        // RFC 6066 forbids) and BoringSSL would match it against the
        // certificate's DNS names only. So no SNI, and the certificate's
        // IP addresses are checked once the handshake is done.
        let ip = host.and_then(|h| {
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .ok()
        });
        let expect_ip = ip.filter(|_| self.params.verify_peer);
        let host = if ip.is_some() { None } else { host };
        let mut conn = {
            // Held only for the synchronous quiche::connect call.
            let mut config = self
                .config
                .lock()
                .map_err(|_| QuicError::Tls("client TLS context poisoned".into()))?;
            quiche::connect(host, &scid, local, peer, &mut config).map_err(|source| {
                QuicError::Quiche {
                    what: "connect",
                    source,
                }
            })?
        };
        attach_logs(&mut conn, s, "client");
        // A session from an earlier connection to this server resumes it
        // (and, with `enable_early_data`, lets requests go in 0-RTT). Each
        // is used once (RFC 8446 §C.4: a reused ticket links connections);
        // the new connection brings its own. Not for a server dialled by
        // address: its certificate is checked against the address only
        // once the handshake completes, and early data would go out before.
        let server = format!("{}|{peer}", host.unwrap_or(""));
        let sessions = expect_ip.is_none().then_some(&self.sessions);
        if let Some(session) = sessions.and_then(|c| c.take(&server)) {
            // A session quiche cannot read means a full handshake.
            let _ = conn.set_session(&session);
        }

        let conn_id = next_conn_id();
        let (inbox_tx, inbox) = mpsc::channel(s.connection_queue_len.max(16));
        let own_inbox = inbox_tx.downgrade();
        let mut routes = Routes::new();
        routes.insert(conn_id, vec![scid.as_ref().into()], inbox_tx);
        let (router_tx, commands) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(ConnectionState::Handshaking);
        let (commands_tx, worker_commands) = mpsc::unbounded_channel();
        let handle = ConnectionHandle {
            trace_id: conn.trace_id().into(),
            peer_addr: peer,
            local_addr: local,
            state: state_rx,
            commands: Some(commands_tx),
        };
        let signals = Arc::new(ClientSignals::default());
        let router = Router {
            socket: socket.clone(),
            routes,
            commands,
            acceptor: None,
            stop_accepting: CancellationToken::new(),
            cid_len: self.cid_generator.connection_id_len(),
            metrics: self.metrics.clone(),
            client: Some(signals.clone()),
        };
        let parts = WorkerParts {
            conn,
            conn_id,
            peer_addr: peer,
            inbox,
            socket,
            router: router_tx,
            cid_generator: self.cid_generator.clone(),
            metrics: self.metrics.clone(),
            state: state_tx,
            started_at: Instant::now(),
            max_spare_cids: s.active_connection_id_limit as usize,
            unreachable: Some(signals),
            _admitted: None,
            label: None,
            shared_routes: None,
            unvalidated: None,
            expect_ip,
            session_sink: sessions.map(|c| session::SessionSink::new(c.clone(), server)),
            migration: Some(worker::Migration::new(
                worker_commands,
                own_inbox,
                socket::SocketOptions::from_settings(s),
            )),
        };
        self.metrics.connection_opened();
        // The router ends when its only connection does, the worker when the
        // connection closes: neither outlives the connection, which the idle
        // timeout bounds.
        tokio::spawn(router.run());
        tokio::spawn(parts.run(app));
        Ok(handle)
    }
}
