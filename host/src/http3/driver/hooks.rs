//! What differs between a server and a client driver, behind one sealed
//! trait: [`H3Driver`](super::H3Driver) runs the shared machinery and calls
//! these hooks at the points where the roles part (a new stream's first
//! header section, GOAWAY, deadlines, request queueing), handing them the
//! shared [`DriverCore`]. The shape follows tokio-quiche's `DriverHooks`.

use std::time::{Duration, Instant};

use quiche::h3::Header;

use super::core::DriverCore;
use crate::http3::controller::PendingRequest;
use crate::quic::QuicResult;

pub(super) mod sealed {
    /// Only this crate's roles implement [`DriverHooks`](super::DriverHooks).
    pub trait Sealed {}
}

/// The role of an [`H3Driver`](super::H3Driver):
/// [`ServerHooks`](super::ServerHooks) or [`ClientHooks`](super::ClientHooks).
/// Sealed: the driver's invariants depend on the exact points where these
/// are called.
pub trait DriverHooks: sealed::Sealed + Default + Send + 'static {
    /// Whether this is the server role (how a stream's first header section
    /// goes out, who opens request streams).
    const IS_SERVER: bool;

    /// Once a going-away connection's data is all acknowledged, how long
    /// the peer gets to close first. Acknowledged is not read: the peer's
    /// QUIC stack may still hold the tail of a response its application has
    /// not taken yet, and our CONNECTION_CLOSE would discard it there.
    const PEER_CLOSE_GRACE: Duration;

    /// The first header section on a stream the driver does not know.
    #[doc(hidden)]
    fn on_new_stream_headers(
        &mut self,
        core: &mut DriverCore,
        qconn: &mut quiche::Connection,
        id: u64,
        list: Vec<Header>,
        more_frames: bool,
    );

    /// The stream id to put in our GOAWAY.
    #[doc(hidden)]
    fn goaway_id(&self) -> u64;

    /// Our GOAWAY went out.
    #[doc(hidden)]
    fn on_goaway_sent(&mut self, qconn: &mut quiche::Connection);

    /// The application asked to send a request.
    #[doc(hidden)]
    fn on_send_request(&mut self, request: PendingRequest);

    /// Opens what is waiting, as far as the peer's limits allow.
    #[doc(hidden)]
    fn flush(&mut self, core: &mut DriverCore, qconn: &mut quiche::Connection);

    /// Whether the role has nothing pending of its own (beyond streams).
    #[doc(hidden)]
    fn is_idle(&self) -> bool;

    /// When the driver must wake even with nothing to do.
    #[doc(hidden)]
    fn deadline(&self, core: &DriverCore) -> Option<Instant>;

    /// The deadline passed: an error closes the connection.
    #[doc(hidden)]
    fn on_deadline(&mut self, core: &DriverCore) -> QuicResult<()>;

    /// The connection closed: answer whatever still waits.
    #[doc(hidden)]
    fn on_close(&mut self);
}
