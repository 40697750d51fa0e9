//! Telemetry: the seam every layer reports through, and two implementations.
//!
//! The QUIC layer reports connections and packets through the [`Metrics`]
//! trait; the HTTP/3 driver and the plugin runtime report requests, plugin
//! calls and reloads through its object-safe half, [`ServiceMetrics`]. No
//! layer decides where figures go. [`DefaultMetrics`] keeps plain atomic
//! counters ([`DefaultMetrics::snapshot`]); [`PrometheusMetrics`] exports
//! everything in the Prometheus text format; [`AccessLog`] writes one log
//! line per request. This module depends on nothing else in the crate.

mod access;
mod prometheus;

pub use access::AccessLog;
pub use prometheus::PrometheusMetrics;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Why a packet was dropped before it reached a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PacketDropReason {
    /// The packet header could not be parsed.
    Malformed,
    /// A short-header or non-Initial packet named a connection id we do not know.
    UnknownConnection,
    /// An Initial packet arrived in a datagram smaller than the 1200 bytes RFC 9000 requires.
    InitialTooSmall,
    /// A Retry token was missing its authentication, expired, or bound to another address.
    InvalidToken,
    /// The connection's inbound queue was full (the worker is not keeping up).
    QueueFull,
    /// The accept backlog was full, or the listener no longer accepts connections.
    AcceptBacklogFull,
    /// quiche refused the packet (decryption failure, protocol violation, ...).
    Rejected,
    /// A new connection's Initial, refused because the listener holds
    /// `max_connections` in total, or `max_connections_per_address` from
    /// that client's address.
    ConnectionLimit,
}

/// Why a handshake did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// The idle timeout passed before the handshake finished.
    Timeout,
    /// A TLS alert ended the handshake (bad certificate, no common ALPN, ...).
    Tls,
    /// The peer closed the connection during the handshake.
    PeerClosed,
    /// Any other local error during the handshake.
    Other,
}

/// How a connection ended, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCause {
    /// The handshake never completed.
    HandshakeFailed,
    /// The idle timeout passed.
    IdleTimeout,
    /// The peer sent CONNECTION_CLOSE with no error (code 0).
    PeerClosed,
    /// The peer sent CONNECTION_CLOSE with an error code.
    PeerError,
    /// We sent CONNECTION_CLOSE with no error (code 0): a graceful end.
    LocalClosed,
    /// We sent CONNECTION_CLOSE with an error code (a protocol violation,
    /// a failed plugin, a local error).
    LocalError,
    /// Anything else (the socket went away, the process is stopping).
    Other,
}

impl CloseCause {
    /// A short label: `handshake_failed`, `idle_timeout`, `peer_closed`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            CloseCause::HandshakeFailed => "handshake_failed",
            CloseCause::IdleTimeout => "idle_timeout",
            CloseCause::PeerClosed => "peer_closed",
            CloseCause::PeerError => "peer_error",
            CloseCause::LocalClosed => "local_closed",
            CloseCause::LocalError => "local_error",
            CloseCause::Other => "other",
        }
    }
}

impl PacketDropReason {
    /// A short label: `malformed`, `unknown_connection`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            PacketDropReason::Malformed => "malformed",
            PacketDropReason::UnknownConnection => "unknown_connection",
            PacketDropReason::InitialTooSmall => "initial_too_small",
            PacketDropReason::InvalidToken => "invalid_token",
            PacketDropReason::QueueFull => "queue_full",
            PacketDropReason::AcceptBacklogFull => "accept_backlog_full",
            PacketDropReason::Rejected => "rejected",
            PacketDropReason::ConnectionLimit => "connection_limit",
        }
    }
}

impl HandshakeFailure {
    /// A short label: `timeout`, `tls`, `peer_closed`, `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Tls => "tls",
            HandshakeFailure::PeerClosed => "peer_closed",
            HandshakeFailure::Other => "other",
        }
    }
}

/// One HTTP/3 request, reported when the server forgets it: after its
/// response was sent, or when it was reset or its connection ended.
#[derive(Debug, Clone)]
pub struct RequestRecord<'a> {
    /// Who answered: `native`, `http3-app`, `wasi-http`.
    pub world: &'a str,
    /// The plugin version (a prefix of its SHA-256), if a plugin answered.
    pub version: Option<&'a str>,
    /// The request's `:method` (at most 32 bytes of it).
    pub method: &'a str,
    /// The request's `:path` without its query (at most 256 bytes of it).
    pub path: &'a str,
    /// The response's status, if a response head was sent.
    pub status: Option<u16>,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Response body bytes handed to QUIC for the client.
    pub bytes_out: u64,
    /// From the request's header section to its end.
    pub duration: Duration,
    /// Whether both directions ended cleanly (false: reset, or cut by the
    /// connection's end).
    pub completed: bool,
}

/// How a call into a plugin ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CallOutcome {
    /// It returned.
    Ok,
    /// It trapped (a panic, `unreachable`, a bad memory access).
    Trap,
    /// It ran guest code past its CPU deadline.
    Deadline,
    /// It hit its memory limit.
    Memory,
    /// It took longer than its wall-clock limit.
    Timeout,
}

impl CallOutcome {
    /// A short label: `ok`, `trap`, `deadline`, `memory`, `timeout`.
    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Ok => "ok",
            CallOutcome::Trap => "trap",
            CallOutcome::Deadline => "deadline",
            CallOutcome::Memory => "memory",
            CallOutcome::Timeout => "timeout",
        }
    }

    /// Every outcome, for code that walks the series.
    pub const ALL: [CallOutcome; 5] = [
        CallOutcome::Ok,
        CallOutcome::Trap,
        CallOutcome::Deadline,
        CallOutcome::Memory,
        CallOutcome::Timeout,
    ];
}

/// What a call into a plugin was, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallKind {
    /// Creating an instance (per connection for the tq worlds; per request
    /// for a fresh wasi:http instance, where it is also inside `Request`).
    Instantiate,
    /// The plugin's optional `init`.
    Init,
    /// `export-state` or `import-state`: a raw-QUIC connection moving to
    /// a new plugin version at a reload.
    Migrate,
    /// One hook of the raw-QUIC or HTTP/3 world (`on-event`,
    /// `wait-for-data`, ...).
    Hook,
    /// One wasi:http request, whole: instantiation where it happens, the
    /// handler, and the response body.
    Request,
}

impl CallKind {
    /// A short label: `instantiate`, `init`, `migrate`, `hook`, `request`.
    pub fn as_str(self) -> &'static str {
        match self {
            CallKind::Instantiate => "instantiate",
            CallKind::Init => "init",
            CallKind::Migrate => "migrate",
            CallKind::Hook => "hook",
            CallKind::Request => "request",
        }
    }

    /// Every kind, for code that walks the series.
    pub const ALL: [CallKind; 5] = [
        CallKind::Instantiate,
        CallKind::Init,
        CallKind::Migrate,
        CallKind::Hook,
        CallKind::Request,
    ];
}

/// What a reload did, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReloadOutcome {
    /// A new version now serves new connections.
    Reloaded,
    /// The file held the running bytes.
    Unchanged,
    /// The new file was refused; the running version keeps serving.
    Refused,
}

impl ReloadOutcome {
    /// A short label: `reloaded`, `unchanged`, `refused`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadOutcome::Reloaded => "reloaded",
            ReloadOutcome::Unchanged => "unchanged",
            ReloadOutcome::Refused => "refused",
        }
    }
}

/// What the HTTP/3 driver and the plugin runtime report: requests, plugin
/// calls and instances, reloads. Object-safe, so those layers hold it as
/// `Arc<dyn ServiceMetrics>` whatever the QUIC layer's [`Metrics`] type.
/// Every method has a default that does nothing.
///
/// ```
/// use std::sync::Arc;
/// use tq_host::metrics::{RequestRecord, ServiceMetrics};
/// struct Count(std::sync::atomic::AtomicU64);
/// impl ServiceMetrics for Count {
///     fn request_finished(&self, _r: &RequestRecord<'_>) {
///         self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///     }
/// }
/// let sink: Arc<dyn ServiceMetrics> = Arc::new(Count(Default::default()));
/// # let _ = sink;
/// ```
pub trait ServiceMetrics: Send + Sync + 'static {
    /// A request ended (see [`RequestRecord`]).
    fn request_finished(&self, _r: &RequestRecord<'_>) {}
    /// A call into plugin `version` (a hook, instantiation, `init`, a
    /// wasi:http request: `kind`) ended after `duration` of wall-clock time.
    fn plugin_call(
        &self,
        _version: &str,
        _kind: CallKind,
        _duration: Duration,
        _outcome: CallOutcome,
    ) {
    }
    /// An instance of plugin `version` was created (`+1`) or dropped (`-1`).
    fn plugin_instances(&self, _version: &str, _delta: i64) {}
    /// A reload ended, `latency` after it began.
    fn reload(&self, _outcome: ReloadOutcome, _latency: Duration) {}
    /// Plugin `version` was loaded (compiled). Two loads of the same bytes
    /// (two listeners, or a rollback while the old copy drains) are two
    /// loads of one version name.
    fn version_loaded(&self, _version: &str) {}
    /// A load of plugin `version` was dropped: once every load of it is,
    /// figures kept per version may go.
    fn version_unloaded(&self, _version: &str) {}
}

/// A [`ServiceMetrics`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMetrics;

impl ServiceMetrics for NoMetrics {}

/// Reports to several sinks (the Prometheus exporter and the access log,
/// say).
pub struct Tee(pub Vec<Arc<dyn ServiceMetrics>>);

impl ServiceMetrics for Tee {
    fn request_finished(&self, r: &RequestRecord<'_>) {
        self.0.iter().for_each(|s| s.request_finished(r));
    }
    fn plugin_call(&self, v: &str, k: CallKind, d: Duration, o: CallOutcome) {
        self.0.iter().for_each(|s| s.plugin_call(v, k, d, o));
    }
    fn plugin_instances(&self, v: &str, delta: i64) {
        self.0.iter().for_each(|s| s.plugin_instances(v, delta));
    }
    fn reload(&self, o: ReloadOutcome, l: Duration) {
        self.0.iter().for_each(|s| s.reload(o, l));
    }
    fn version_loaded(&self, v: &str) {
        self.0.iter().for_each(|s| s.version_loaded(v));
    }
    fn version_unloaded(&self, v: &str) {
        self.0.iter().for_each(|s| s.version_unloaded(v));
    }
}

/// Receives the events the QUIC layer counts, and (through its
/// supertrait [`ServiceMetrics`]) those of the layers above.
///
/// Implementations must be cheap: methods are called on the packet path. Every
/// method has a default that does nothing, so an implementation only overrides
/// what it exports.
///
/// ```
/// use tq_host::metrics::{DefaultMetrics, Metrics};
/// let m = DefaultMetrics::default();
/// m.connection_accepted();
/// assert_eq!(m.snapshot().connections_accepted, 1);
/// assert_eq!(m.snapshot().connections_active, 1);
/// ```
pub trait Metrics: ServiceMetrics + Clone {
    /// A server accepted a connection (its worker was started).
    fn connection_accepted(&self) {}
    /// A client connection was opened.
    fn connection_opened(&self) {}
    /// A connection ended, successfully or not.
    fn connection_closed(&self, _cause: CloseCause) {}
    /// A handshake completed, `duration` after the connection began.
    fn handshake_completed(&self, _duration: Duration) {}
    /// A handshake failed.
    fn handshake_failed(&self, _reason: HandshakeFailure) {}
    /// `count` datagrams totalling `bytes` were received on a socket.
    fn packets_in(&self, _count: u64, _bytes: u64) {}
    /// `count` datagrams totalling `bytes` were sent.
    fn packets_out(&self, _count: u64, _bytes: u64) {}
    /// A datagram was dropped before any connection processed it.
    fn packet_dropped(&self, _reason: PacketDropReason) {}
    /// A datagram reached another of the listener's sockets than its
    /// connection's (the client's address changed) and was handed over.
    fn packet_handed_over(&self) {}
    /// `count` datagrams just sent carried a release time for the kernel
    /// (pacing offload, `SO_TXTIME`; also counted by `packets_out`).
    fn packets_paced(&self, _count: u64) {}
    /// A connection began to wait for quiche's pacer to let its next
    /// packet go (bbr2).
    fn pacer_held(&self) {}
    /// A stateless reset was sent for a connection id no connection has.
    fn stateless_reset_sent(&self) {}
    /// A stateless Retry was sent.
    fn retry_sent(&self) {}
    /// A version negotiation packet was sent.
    fn version_negotiation_sent(&self) {}
}

/// Plain counters, readable at any time through [`DefaultMetrics::snapshot`].
///
/// Cloning is cheap and every clone shares the same counters.
#[derive(Clone, Default)]
pub struct DefaultMetrics {
    inner: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    opened: AtomicU64,
    closed: AtomicU64,
    handshakes: AtomicU64,
    hs_timeout: AtomicU64,
    hs_tls: AtomicU64,
    hs_peer: AtomicU64,
    hs_other: AtomicU64,
    packets_in: AtomicU64,
    bytes_in: AtomicU64,
    packets_out: AtomicU64,
    bytes_out: AtomicU64,
    drop_malformed: AtomicU64,
    drop_unknown: AtomicU64,
    drop_small: AtomicU64,
    drop_token: AtomicU64,
    drop_queue: AtomicU64,
    drop_backlog: AtomicU64,
    drop_rejected: AtomicU64,
    drop_limit: AtomicU64,
    retries: AtomicU64,
    version_negotiations: AtomicU64,
    handed_over: AtomicU64,
    paced: AtomicU64,
    held: AtomicU64,
    resets: AtomicU64,
}

/// A copy of [`DefaultMetrics`]' counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Server connections accepted.
    pub connections_accepted: u64,
    /// Client connections opened.
    pub connections_opened: u64,
    /// Connections ended.
    pub connections_closed: u64,
    /// Connections accepted or opened and not yet closed.
    pub connections_active: u64,
    /// Handshakes completed.
    pub handshakes_completed: u64,
    /// Handshakes that timed out.
    pub handshake_timeouts: u64,
    /// Handshakes ended by a TLS alert.
    pub handshake_tls_failures: u64,
    /// Handshakes the peer closed.
    pub handshake_peer_closed: u64,
    /// Handshakes that failed for another reason.
    pub handshake_other_failures: u64,
    /// Datagrams received.
    pub packets_in: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Datagrams sent.
    pub packets_out: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Datagrams dropped because their header did not parse.
    pub dropped_malformed: u64,
    /// Datagrams dropped because they named an unknown connection.
    pub dropped_unknown_connection: u64,
    /// Initial datagrams dropped for being under 1200 bytes.
    pub dropped_initial_too_small: u64,
    /// Datagrams dropped for an invalid Retry token.
    pub dropped_invalid_token: u64,
    /// Datagrams dropped because a connection's queue was full.
    pub dropped_queue_full: u64,
    /// Initial datagrams dropped because the accept backlog was full.
    pub dropped_accept_backlog: u64,
    /// Datagrams quiche refused.
    pub dropped_rejected: u64,
    /// New connections refused at a connection cap.
    pub dropped_connection_limit: u64,
    /// Retry packets sent.
    pub retries_sent: u64,
    /// Version negotiation packets sent.
    pub version_negotiations_sent: u64,
    /// Datagrams handed from one socket's router to another's connection.
    pub packets_handed_over: u64,
    /// Datagrams sent with a release time (pacing offload).
    pub packets_paced: u64,
    /// Times a connection waited for quiche's pacer.
    pub pacer_holds: u64,
    /// Stateless resets sent.
    pub stateless_resets_sent: u64,
}

impl MetricsSnapshot {
    /// All packets dropped, whatever the reason.
    pub fn packets_dropped(&self) -> u64 {
        self.dropped_malformed
            + self.dropped_unknown_connection
            + self.dropped_initial_too_small
            + self.dropped_invalid_token
            + self.dropped_queue_full
            + self.dropped_accept_backlog
            + self.dropped_rejected
            + self.dropped_connection_limit
    }
}

impl DefaultMetrics {
    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let c = &self.inner;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let accepted = get(&c.accepted);
        let opened = get(&c.opened);
        let closed = get(&c.closed);
        MetricsSnapshot {
            connections_accepted: accepted,
            connections_opened: opened,
            connections_closed: closed,
            connections_active: (accepted + opened).saturating_sub(closed),
            handshakes_completed: get(&c.handshakes),
            handshake_timeouts: get(&c.hs_timeout),
            handshake_tls_failures: get(&c.hs_tls),
            handshake_peer_closed: get(&c.hs_peer),
            handshake_other_failures: get(&c.hs_other),
            packets_in: get(&c.packets_in),
            bytes_in: get(&c.bytes_in),
            packets_out: get(&c.packets_out),
            bytes_out: get(&c.bytes_out),
            dropped_malformed: get(&c.drop_malformed),
            dropped_unknown_connection: get(&c.drop_unknown),
            dropped_initial_too_small: get(&c.drop_small),
            dropped_invalid_token: get(&c.drop_token),
            dropped_queue_full: get(&c.drop_queue),
            dropped_accept_backlog: get(&c.drop_backlog),
            dropped_rejected: get(&c.drop_rejected),
            dropped_connection_limit: get(&c.drop_limit),
            retries_sent: get(&c.retries),
            version_negotiations_sent: get(&c.version_negotiations),
            packets_handed_over: get(&c.handed_over),
            packets_paced: get(&c.paced),
            pacer_holds: get(&c.held),
            stateless_resets_sent: get(&c.resets),
        }
    }
}

impl fmt::Debug for DefaultMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.snapshot().fmt(f)
    }
}

fn inc(a: &AtomicU64, by: u64) {
    a.fetch_add(by, Ordering::Relaxed);
}

impl ServiceMetrics for DefaultMetrics {}

impl Metrics for DefaultMetrics {
    fn connection_accepted(&self) {
        inc(&self.inner.accepted, 1);
    }
    fn connection_opened(&self) {
        inc(&self.inner.opened, 1);
    }
    fn connection_closed(&self, _cause: CloseCause) {
        inc(&self.inner.closed, 1);
    }
    fn handshake_completed(&self, _duration: Duration) {
        inc(&self.inner.handshakes, 1);
    }
    fn handshake_failed(&self, reason: HandshakeFailure) {
        let c = &self.inner;
        inc(
            match reason {
                HandshakeFailure::Timeout => &c.hs_timeout,
                HandshakeFailure::Tls => &c.hs_tls,
                HandshakeFailure::PeerClosed => &c.hs_peer,
                HandshakeFailure::Other => &c.hs_other,
            },
            1,
        );
    }
    fn packets_in(&self, count: u64, bytes: u64) {
        inc(&self.inner.packets_in, count);
        inc(&self.inner.bytes_in, bytes);
    }
    fn packets_out(&self, count: u64, bytes: u64) {
        inc(&self.inner.packets_out, count);
        inc(&self.inner.bytes_out, bytes);
    }
    fn packet_dropped(&self, reason: PacketDropReason) {
        let c = &self.inner;
        inc(
            match reason {
                PacketDropReason::Malformed => &c.drop_malformed,
                PacketDropReason::UnknownConnection => &c.drop_unknown,
                PacketDropReason::InitialTooSmall => &c.drop_small,
                PacketDropReason::InvalidToken => &c.drop_token,
                PacketDropReason::QueueFull => &c.drop_queue,
                PacketDropReason::AcceptBacklogFull => &c.drop_backlog,
                PacketDropReason::Rejected => &c.drop_rejected,
                PacketDropReason::ConnectionLimit => &c.drop_limit,
            },
            1,
        );
    }
    fn retry_sent(&self) {
        inc(&self.inner.retries, 1);
    }
    fn version_negotiation_sent(&self) {
        inc(&self.inner.version_negotiations, 1);
    }
    fn packet_handed_over(&self) {
        inc(&self.inner.handed_over, 1);
    }
    fn packets_paced(&self, count: u64) {
        inc(&self.inner.paced, count);
    }
    fn pacer_held(&self) {
        inc(&self.inner.held, 1);
    }
    fn stateless_reset_sent(&self) {
        inc(&self.inner.resets, 1);
    }
}
