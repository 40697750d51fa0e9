//! The server role: request streams open on the peer's HEADERS, a request
//! after our GOAWAY is refused, a request that came in 0-RTT is marked
//! (or refused with 425 if its method is unsafe), `max_requests_per_connection`
//! and the first-request timeout apply, and a going-away connection lingers
//! a little before closing.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use quiche::h3::{Header, NameValue};
use tracing::{debug, trace};

use super::core::{earliest, DriverCore};
use super::hooks::{sealed, DriverHooks};
use crate::http3::controller::{H3Event, IncomingRequest, PendingRequest};
use crate::http3::error::{H3Error, H3_NO_ERROR, H3_REQUEST_REJECTED};
use crate::http3::frames::OutboundFrame;
use crate::quic::{ApplicationClose, QuicResult};

/// The least a server waits after its GOAWAY before closing an idle
/// connection (three RTTs if longer).
const GOAWAY_LINGER: Duration = Duration::from_millis(25);

/// The server role of an [`H3Driver`](crate::http3::H3Driver).
#[derive(Debug, Default)]
pub struct ServerHooks {
    /// One past the highest request stream seen: what our GOAWAY carries.
    next_request_id: u64,
    /// A server that sent GOAWAY closes once idle, but not before this:
    /// requests the client sent before it saw the GOAWAY are then refused
    /// with H3_REQUEST_REJECTED (which clients may retry) instead of dying
    /// with the connection.
    close_not_before: Option<Instant>,
}

impl sealed::Sealed for ServerHooks {}

fn first_request_deadline(core: &DriverCore) -> Option<Instant> {
    match (core.settings.first_request_timeout, core.established_at) {
        (Some(t), Some(at)) if core.shared.requests.load(Ordering::Relaxed) == 0 => Some(at + t),
        _ => None,
    }
}

impl DriverHooks for ServerHooks {
    const IS_SERVER: bool = true;

    /// A client that heard GOAWAY and is done closes by itself (ours does);
    /// one that does not gets a second to read what it has.
    const PEER_CLOSE_GRACE: Duration = Duration::from_secs(1);

    fn on_new_stream_headers(
        &mut self,
        core: &mut DriverCore,
        qconn: &mut quiche::Connection,
        id: u64,
        list: Vec<Header>,
        more_frames: bool,
    ) {
        if let Some(limit) = core.goaway.sent {
            if id >= limit {
                debug!(stream = id, "request after GOAWAY rejected");
                core.streams.report_refused(&list);
                let _ = qconn.stream_shutdown(id, quiche::Shutdown::Read, H3_REQUEST_REJECTED);
                let _ = qconn.stream_shutdown(id, quiche::Shutdown::Write, H3_REQUEST_REJECTED);
                core.streams.forget_later(id);
                return;
            }
        }
        self.next_request_id = self.next_request_id.max(id.saturating_add(4));
        let mut list = list;
        // While the handshake is incomplete, the request came in 0-RTT, and
        // an attacker who captured it can replay it (RFC 8470): a method
        // that changes state is refused with 425 Too Early (the client
        // retries once the handshake is done); the others reach the handler
        // marked `early-data: 1`, to refuse or serve as it knows best.
        if qconn.is_in_early_data() {
            let method = list
                .iter()
                .find(|h| h.name() == b":method")
                .map(|h| h.value().to_vec());
            if !matches!(
                method.as_deref(),
                Some(b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE")
            ) {
                debug!(stream = id, "unsafe request in 0-RTT: 425 Too Early");
                let (_, response) = core.streams.open(id, false, true);
                // After `open`: the access log and metrics see the 425.
                core.streams.track_request(id, &list);
                let _ = qconn.stream_shutdown(id, quiche::Shutdown::Read, H3_NO_ERROR);
                if let Some(r) = response {
                    let _ = r.try_send(OutboundFrame::Headers {
                        headers: vec![
                            Header::new(b":status", b"425"),
                            Header::new(b"content-length", b"0"),
                        ],
                        fin: true,
                    });
                }
                return;
            }
            list.retain(|h| !h.name().eq_ignore_ascii_case(b"early-data"));
            list.push(Header::new(b"early-data", b"1"));
        }
        let n = core.shared.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let (body, response) = core.streams.open(id, more_frames, true);
        let Some(response) = response else { return };
        core.streams.track_request(id, &list);
        let is_connect = list
            .iter()
            .any(|h| h.name() == b":method" && h.value() == b"CONNECT");
        if core.settings.enable_extended_connect
            && is_connect
            && list.iter().any(|h| h.name() == b":protocol")
        {
            // A tunnel (RFC 9220): quiet for as long as its user is.
            core.streams.never_stalls(id);
        }
        trace!(stream = id, "request");
        core.emit(H3Event::IncomingRequest(IncomingRequest {
            stream_id: id,
            headers: list,
            body,
            response,
        }));
        if core
            .settings
            .max_requests_per_connection
            .is_some_and(|max| n >= max)
            && core.send_goaway(qconn, self.goaway_id())
        {
            self.on_goaway_sent(qconn);
        }
    }

    fn goaway_id(&self) -> u64 {
        self.next_request_id
    }

    fn on_goaway_sent(&mut self, qconn: &mut quiche::Connection) {
        let rtt = qconn.path_stats().next().map_or(Duration::ZERO, |p| p.rtt);
        self.close_not_before = Some(Instant::now() + (rtt * 3).max(GOAWAY_LINGER));
    }

    fn on_send_request(&mut self, request: PendingRequest) {
        let _ = request.reply.send(Err(H3Error::NotAClient));
    }

    fn flush(&mut self, _core: &mut DriverCore, _qconn: &mut quiche::Connection) {}

    fn is_idle(&self) -> bool {
        self.close_not_before.is_none_or(|t| Instant::now() >= t)
    }

    fn deadline(&self, core: &DriverCore) -> Option<Instant> {
        // Wake when a going-away server's linger ends, to close if idle.
        let linger = self.close_not_before.filter(|t| *t > Instant::now());
        earliest(first_request_deadline(core), linger)
    }

    fn on_deadline(&mut self, core: &DriverCore) -> QuicResult<()> {
        if first_request_deadline(core).is_some_and(|t| t <= Instant::now()) {
            debug!("no request within the first-request timeout; closing");
            return Err(Box::new(ApplicationClose {
                code: H3_NO_ERROR,
                reason: "no request".into(),
            }));
        }
        Ok(())
    }

    fn on_close(&mut self) {}
}
