//! The application contract ([`ApplicationOverQuic`]) and the handles a
//! caller holds on a connection.
//!
//! A connection's IO worker owns the `quiche::Connection` and the application;
//! the caller keeps a [`ConnectionHandle`] to learn when the handshake
//! completes and how the connection ended. Talking to a running application is
//! the application's business (channels it creates itself, as `H3Driver` does).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::error::{QuicError, QuicResult};
use crate::metrics::Metrics;

/// An application that runs over one QUIC connection.
///
/// The connection's IO worker calls the hooks in a fixed order. Each turn of
/// its loop:
///
/// 1. feeds every datagram that has arrived (up to a bound) into quiche;
/// 2. once the handshake completes (or 0-RTT data arrives), calls
///    [`on_conn_established`](Self::on_conn_established) exactly once;
/// 3. if the application [`should_act`](Self::should_act): calls
///    [`process_reads`](Self::process_reads) when packets arrived this turn,
///    then [`process_writes`](Self::process_writes) every turn;
/// 4. issues spare connection ids and retires old ones, then flushes every
///    packet quiche has to send (GSO-batched);
/// 5. sleeps until the first of: quiche's timer, the next datagram, or
///    [`wait_for_data`](Self::wait_for_data) completing (only polled while the
///    application is running and `should_act`).
///
/// When the connection is closed (by either side, by idle timeout, or because
/// a hook returned an error), the worker flushes the final CONNECTION_CLOSE,
/// waits out the draining period and calls
/// [`on_conn_close`](Self::on_conn_close) last. No hook is called after it.
///
/// A hook that returns an error closes the connection. An
/// [`ApplicationClose`] is a deliberate close with its code and reason (not
/// reported as a failure); any other error is logged as one and closes with
/// application error code [`INTERNAL_ERROR_CODE`].
///
/// # Example
///
/// An application that closes every connection once established:
///
/// ```
/// use tq_host::quic::{ApplicationOverQuic, HandshakeInfo, QuicResult};
///
/// struct Goodbye;
///
/// impl ApplicationOverQuic for Goodbye {
///     fn on_conn_established(
///         &mut self,
///         qconn: &mut quiche::Connection,
///         _info: &HandshakeInfo,
///     ) -> QuicResult<()> {
///         qconn.close(true, 0, b"bye")?;
///         Ok(())
///     }
///     async fn wait_for_data(&mut self, _qconn: &mut quiche::Connection) -> QuicResult<()> {
///         std::future::pending().await
///     }
///     fn process_reads(&mut self, _qconn: &mut quiche::Connection) -> QuicResult<()> {
///         Ok(())
///     }
///     fn process_writes(&mut self, _qconn: &mut quiche::Connection) -> QuicResult<()> {
///         Ok(())
///     }
/// }
/// ```
pub trait ApplicationOverQuic: Send + 'static {
    /// Called once, when the handshake completes (or early data arrives).
    /// Default: does nothing.
    ///
    /// # Errors
    /// An error closes the connection before any other hook runs.
    fn on_conn_established(
        &mut self,
        _qconn: &mut quiche::Connection,
        _info: &HandshakeInfo,
    ) -> QuicResult<()> {
        Ok(())
    }

    /// Whether the worker should call `process_reads`, `process_writes` and
    /// `wait_for_data` now. An application that is waiting on something the
    /// worker cannot see returns `false` to pause; packets keep being
    /// processed by quiche meanwhile. Default: always `true`.
    fn should_act(&self) -> bool {
        true
    }

    /// Resolves when the application has work to do outside of packet arrival
    /// (a message from its controller, a timer of its own).
    ///
    /// # Cancel safety
    /// The worker drops this future whenever a packet or quiche's timer wins
    /// the race, and calls it again next turn. It must therefore be
    /// cancel-safe: no state may be lost if it is dropped before completing
    /// (receiving from a tokio mpsc channel is; reading half a frame is not).
    ///
    /// # Errors
    /// An error closes the connection.
    fn wait_for_data(
        &mut self,
        qconn: &mut quiche::Connection,
    ) -> impl Future<Output = QuicResult<()>> + Send;

    /// Reads whatever became readable (streams, datagrams). Called only in
    /// turns where packets arrived.
    ///
    /// # Errors
    /// An error closes the connection.
    fn process_reads(&mut self, qconn: &mut quiche::Connection) -> QuicResult<()>;

    /// Writes whatever the application has pending. Called every turn, after
    /// `process_reads`, before packets are flushed.
    ///
    /// # Errors
    /// An error closes the connection.
    fn process_writes(&mut self, qconn: &mut quiche::Connection) -> QuicResult<()>;

    /// Called once, last, after the connection is closed. `result` is the
    /// error of the hook that closed it, if any.
    fn on_conn_close<M: Metrics>(
        &mut self,
        _qconn: &mut quiche::Connection,
        _metrics: &M,
        _result: &QuicResult<()>,
    ) {
    }
}

/// The application error code used when a hook fails with an error that is
/// not an [`ApplicationClose`].
pub const INTERNAL_ERROR_CODE: u64 = 0x1;

/// An error a hook returns to close its connection with a chosen application
/// error code and reason.
#[derive(Debug, Clone, thiserror::Error)]
#[error("application closed the connection with code {code:#x}: {reason}")]
pub struct ApplicationClose {
    /// The application error code for CONNECTION_CLOSE.
    pub code: u64,
    /// The reason phrase sent to the peer.
    pub reason: String,
}

/// What the handshake established.
#[derive(Debug, Clone)]
pub struct HandshakeInfo {
    /// The negotiated application protocol.
    pub alpn: Vec<u8>,
    /// The server name the client asked for (SNI), if any.
    pub server_name: Option<String>,
    /// The peer's address.
    pub peer_addr: SocketAddr,
    /// Our address.
    pub local_addr: SocketAddr,
    /// From the first packet to handshake completion.
    pub handshake_duration: Duration,
    /// Whether the TLS session was resumed.
    pub is_resumed: bool,
    /// What became of 0-RTT data.
    pub early_data: EarlyData,
}

/// What became of 0-RTT data on a connection, as its handshake completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyData {
    /// None was sent or taken: no session to resume, one that allows no
    /// early data, or early data off on either side. (A server with early
    /// data off cannot tell this from early data it ignored.)
    #[default]
    NotUsed,
    /// Early data was taken.
    Accepted,
    /// Early data was sent and not taken: the server's settings changed
    /// under the same ticket keys, it could not read the ticket (another
    /// key: a full handshake), or it asked for another key share. On a
    /// client, quiche sends the data again once the handshake is done, so
    /// nothing is lost; it took a round trip longer.
    Refused,
}

impl EarlyData {
    /// From BoringSSL's `ssl_early_data_reason_t` as quiche reports it,
    /// whose meaning depends on the side.
    pub(crate) fn from_reason(reason: u32, is_server: bool) -> Self {
        match (reason, is_server) {
            // ssl_early_data_accepted
            (2, _) => Self::Accepted,
            // Clients: peer_declined, session_not_resumed (0-RTT under a
            // ticket the server did not take), hello_retry_request.
            (4 | 6 | 8, false) => Self::Refused,
            // Servers: session_not_resumed (a ticket it could not read),
            // hello_retry_request, alpn_mismatch, ticket_age_skew,
            // quic_parameter_mismatch, alps_mismatch: each reached only
            // when the client offered early data. (On a server,
            // peer_declined means the client offered none.)
            (6 | 8 | 9 | 12 | 13 | 14, true) => Self::Refused,
            _ => Self::NotUsed,
        }
    }
}

/// A CONNECTION_CLOSE sent or received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// Whether the application (not the transport) closed.
    pub is_app: bool,
    /// The error code.
    pub code: u64,
    /// The reason phrase (lossily decoded).
    pub reason: String,
}

impl CloseReason {
    pub(crate) fn from_quiche(e: &quiche::ConnectionError) -> Self {
        Self {
            is_app: e.is_app,
            code: e.error_code,
            reason: String::from_utf8_lossy(&e.reason).into_owned(),
        }
    }

    /// A human description, naming TLS alerts (codes 0x100..=0x1ff).
    pub fn describe(&self) -> String {
        let what = if self.is_app {
            format!("application error {:#x}", self.code)
        } else if (0x100..=0x1ff).contains(&self.code) {
            let alert = (self.code - 0x100) as u8;
            format!("TLS alert {} ({alert})", tls_alert_name(alert))
        } else {
            format!("transport error {:#x}", self.code)
        };
        if self.reason.is_empty() {
            what
        } else {
            format!("{what}: {}", self.reason)
        }
    }
}

fn tls_alert_name(alert: u8) -> &'static str {
    match alert {
        10 => "unexpected_message",
        40 => "handshake_failure",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        48 => "unknown_ca",
        70 => "protocol_version",
        80 => "internal_error",
        109 => "missing_extension",
        112 => "unrecognized_name",
        116 => "certificate_required",
        120 => "no_application_protocol",
        _ => "alert",
    }
}

/// Counters of one connection, taken when it closed.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectionStats {
    /// Packets sent.
    pub packets_sent: usize,
    /// Packets received.
    pub packets_received: usize,
    /// Packets declared lost.
    pub packets_lost: usize,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
}

/// How a connection ended.
#[derive(Debug, Clone)]
pub struct ConnectionOutcome {
    /// Set if the handshake completed.
    pub handshake: Option<HandshakeInfo>,
    /// The CONNECTION_CLOSE we sent, if any.
    pub local_close: Option<CloseReason>,
    /// The CONNECTION_CLOSE the peer sent, if any.
    pub peer_close: Option<CloseReason>,
    /// Whether the idle timeout ended it.
    pub timed_out: bool,
    /// Clients: whether the server's address answered "port unreachable"
    /// during the handshake (nothing listens there).
    pub unreachable: bool,
    /// The error of the hook that closed it, as text.
    pub application_error: Option<String>,
    /// Final counters.
    pub stats: ConnectionStats,
}

impl ConnectionOutcome {
    /// A one-line explanation, suitable for logs and errors.
    pub fn describe(&self) -> String {
        if let Some(e) = &self.application_error {
            return format!("application failed: {e}");
        }
        if self.unreachable {
            return "the server is unreachable: nothing listens at its address (ICMP port unreachable)"
                .to_owned();
        }
        if self.timed_out {
            return "idle timeout".to_owned();
        }
        match (&self.peer_close, &self.local_close) {
            (Some(p), _) => format!("closed by peer with {}", p.describe()),
            (None, Some(l)) => format!("closed locally with {}", l.describe()),
            (None, None) => "closed without CONNECTION_CLOSE".to_owned(),
        }
    }

    /// Whether the connection ended without an error on either side.
    pub fn is_clean(&self) -> bool {
        let clean = |c: &Option<CloseReason>| c.as_ref().is_none_or(|c| c.code == 0);
        self.application_error.is_none()
            && !self.timed_out
            && self.handshake.is_some()
            && clean(&self.local_close)
            && clean(&self.peer_close)
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone)]
pub(crate) enum ConnectionState {
    Handshaking,
    Established(HandshakeInfo),
    /// The handshake will not complete; the connection is closing.
    HandshakeFailed(Arc<str>),
    Closed(Arc<ConnectionOutcome>),
}

/// A caller's view of a running connection. Cloning is cheap. Dropping it does
/// not close the connection: the application does that.
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    pub(crate) trace_id: Arc<str>,
    pub(crate) peer_addr: SocketAddr,
    pub(crate) local_addr: SocketAddr,
    pub(crate) state: watch::Receiver<ConnectionState>,
    /// Client connections: asks of the worker (migration).
    pub(crate) commands: Option<tokio::sync::mpsc::UnboundedSender<super::migrate::WorkerCommand>>,
}

impl ConnectionHandle {
    /// quiche's trace id for this connection (appears in logs and qlogs).
    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// Our address when the connection started (see
    /// [`migrate`](Self::migrate) for where it may have moved).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Moves a client connection to `socket` (active migration, RFC 9000
    /// §9), as a browser does when its network changes: `socket` is bound
    /// to the new local address (any port) and is connected to the server
    /// here. The connection's packets go out from it at once; quiche
    /// validates the new path (PATH_CHALLENGE), and what arrives on either
    /// socket is taken until the connection ends. Returns the new local
    /// address.
    ///
    /// ```no_run
    /// # async fn demo(conn: tq_host::quic::ConnectionHandle) -> Result<(), tq_host::quic::QuicError> {
    /// let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
    /// let now_at = conn.migrate(socket).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`QuicError::InvalidSettings`] for a server's connection, or when the
    /// server asked clients not to migrate (`disable_active_migration`);
    /// quiche's refusal (no spare connection id yet, the handshake not
    /// done); socket errors; or the connection already closed.
    pub async fn migrate(&self, socket: tokio::net::UdpSocket) -> Result<SocketAddr, QuicError> {
        let commands = self.commands.as_ref().ok_or_else(|| {
            QuicError::InvalidSettings("only a client's connection can migrate".into())
        })?;
        socket
            .connect(self.peer_addr)
            .await
            .map_err(QuicError::io("connect"))?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let closed = || QuicError::Closed("the connection has ended".into());
        commands
            .send(super::migrate::WorkerCommand::Migrate { socket, reply })
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Waits for the handshake. A resuming client with early data on is
    /// "established" as soon as 0-RTT data can go; its
    /// [`early_data`](HandshakeInfo::early_data) says `NotUsed` until the
    /// handshake is done. The final info is published before the
    /// application sees anything the server sent after its handshake, so a
    /// call made once a response has arrived returns it.
    ///
    /// # Errors
    /// [`QuicError::HandshakeFailed`] with the reason, if the connection
    /// closed before the handshake completed.
    pub async fn established(&self) -> Result<HandshakeInfo, QuicError> {
        let mut rx = self.state.clone();
        let state = rx
            .wait_for(|s| !matches!(s, ConnectionState::Handshaking))
            .await
            .map(|s| s.clone())
            .map_err(|_| QuicError::HandshakeFailed("connection worker ended".into()))?;
        match state {
            ConnectionState::Established(info) => Ok(info),
            ConnectionState::HandshakeFailed(why) => {
                Err(QuicError::HandshakeFailed(why.to_string()))
            }
            ConnectionState::Closed(o) => match &o.handshake {
                Some(info) => Ok(info.clone()),
                None => Err(QuicError::HandshakeFailed(o.describe())),
            },
            ConnectionState::Handshaking => unreachable!("wait_for excluded it"),
        }
    }

    /// Waits until the connection has closed and returns how it ended.
    pub async fn closed(&self) -> Arc<ConnectionOutcome> {
        let mut rx = self.state.clone();
        let res = rx
            .wait_for(|s| matches!(s, ConnectionState::Closed(_)))
            .await
            .map(|s| s.clone());
        match res {
            Ok(ConnectionState::Closed(o)) => o,
            _ => Arc::new(ConnectionOutcome {
                handshake: None,
                local_close: None,
                peer_close: None,
                timed_out: false,
                unreachable: false,
                application_error: Some("connection worker ended unexpectedly".into()),
                stats: ConnectionStats::default(),
            }),
        }
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        matches!(*self.state.borrow(), ConnectionState::Closed(_))
    }
}

#[cfg(test)]
mod tests {
    use super::EarlyData;

    /// BoringSSL's reasons (`ssl_early_data_reason_t`), as each side reads
    /// them.
    #[test]
    fn early_data_reasons_are_read_per_side() {
        use EarlyData::{Accepted, NotUsed, Refused};
        // unknown, disabled, accepted, protocol_version, peer_declined,
        // no_session_offered, session_not_resumed, unsupported_for_session,
        // hello_retry_request, alpn_mismatch, channel_id, (11 unused),
        // ticket_age_skew, quic_parameter_mismatch, alps_mismatch.
        let client = [
            NotUsed, NotUsed, Accepted, NotUsed, Refused, NotUsed, Refused, NotUsed, Refused,
            NotUsed, NotUsed, NotUsed, NotUsed, NotUsed, NotUsed,
        ];
        let server = [
            NotUsed, NotUsed, Accepted, NotUsed, NotUsed, NotUsed, Refused, NotUsed, Refused,
            Refused, NotUsed, NotUsed, Refused, Refused, Refused,
        ];
        for (reason, (c, s)) in client.iter().zip(&server).enumerate() {
            let reason = reason as u32;
            assert_eq!(
                EarlyData::from_reason(reason, false),
                *c,
                "client, {reason}"
            );
            assert_eq!(EarlyData::from_reason(reason, true), *s, "server, {reason}");
        }
    }
}
