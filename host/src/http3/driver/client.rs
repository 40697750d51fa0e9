//! The client role: requests are opened on the application's command, and
//! one beyond the peer's concurrent stream limit waits in a queue until a
//! stream frees (one with an unsafe method, while the connection is in
//! 0-RTT, until the handshake is done); GOAWAY (either way) fails what
//! still waits.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use quiche::h3::{self, Header};
use tracing::trace;

use super::core::DriverCore;
use super::hooks::{sealed, DriverHooks};
use crate::http3::controller::{PendingRequest, RequestStream};
use crate::http3::error::H3Error;
use crate::quic::QuicResult;

/// The client role of an [`H3Driver`](crate::http3::H3Driver).
#[derive(Debug, Default)]
pub struct ClientHooks {
    /// Requests waiting for a stream, oldest first.
    waiting: VecDeque<PendingRequest>,
}

impl sealed::Sealed for ClientHooks {}

impl DriverHooks for ClientHooks {
    const IS_SERVER: bool = false;

    /// A client's application has read everything once its streams are
    /// gone: it closes at once.
    const PEER_CLOSE_GRACE: Duration = Duration::ZERO;

    fn on_new_stream_headers(
        &mut self,
        _core: &mut DriverCore,
        _qconn: &mut quiche::Connection,
        id: u64,
        _list: Vec<Header>,
        _more_frames: bool,
    ) {
        // Server push is never enabled, so this is a stream we forgot.
        trace!(stream = id, "headers for a forgotten stream");
    }

    fn goaway_id(&self) -> u64 {
        // Clients refuse every push (RFC 9114 §5.2).
        0
    }

    fn on_goaway_sent(&mut self, _qconn: &mut quiche::Connection) {}

    fn on_send_request(&mut self, request: PendingRequest) {
        self.waiting.push_back(request);
    }

    fn flush(&mut self, core: &mut DriverCore, qconn: &mut quiche::Connection) {
        while let Some(r) = self.waiting.pop_front() {
            if core.goaway.any() {
                let _ = r.reply.send(Err(H3Error::GoingAway));
                continue;
            }
            if r.reply.is_closed() {
                continue;
            }
            // In 0-RTT only methods that change nothing go out: early data
            // can be replayed (RFC 8470). The rest wait for the handshake.
            if qconn.is_in_early_data() && !is_safe(&r.headers) {
                self.waiting.push_front(r);
                return;
            }
            if qconn.peer_streams_left_bidi() == 0 {
                // At the peer's limit: wait for a stream to free.
                self.waiting.push_front(r);
                return;
            }
            let Some(h3) = core.h3.as_mut() else {
                self.waiting.push_front(r);
                return;
            };
            match h3.send_request(qconn, &r.headers, !r.has_body) {
                Ok(id) => {
                    core.shared.requests.fetch_add(1, Ordering::Relaxed);
                    let (response, body) = core.streams.open(id, true, r.has_body);
                    let Some(response) = response else { continue };
                    let _ = r.reply.send(Ok(RequestStream {
                        stream_id: id,
                        body,
                        response,
                    }));
                }
                Err(h3::Error::StreamBlocked)
                | Err(h3::Error::TransportError(quiche::Error::StreamLimit)) => {
                    self.waiting.push_front(r);
                    return;
                }
                Err(e) => {
                    let _ = r.reply.send(Err(H3Error::RequestRefused(e)));
                }
            }
        }
    }

    fn is_idle(&self) -> bool {
        self.waiting.is_empty()
    }

    fn deadline(&self, _core: &DriverCore) -> Option<Instant> {
        None
    }

    fn on_deadline(&mut self, _core: &DriverCore) -> QuicResult<()> {
        Ok(())
    }

    fn on_close(&mut self) {
        for r in self.waiting.drain(..) {
            let _ = r.reply.send(Err(H3Error::ConnectionClosed));
        }
    }
}

/// Whether the request's method is safe (RFC 9110 §9.2.1): sent in 0-RTT.
fn is_safe(headers: &[Header]) -> bool {
    use quiche::h3::NameValue;
    headers.iter().any(|h| {
        h.name() == b":method" && matches!(h.value(), b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE")
    })
}
