//! The client role: requests are opened on the application's command, and
//! one beyond the peer's concurrent stream limit waits in a queue until a
//! stream frees; GOAWAY (either way) fails what still waits.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Instant;

use quiche::h3::{self, Header};
use tracing::trace;

use super::hooks::{sealed, DriverHooks};
use super::H3Driver;
use crate::http3::controller::{H3Controller, PendingRequest, RequestStream};
use crate::http3::error::H3Error;
use crate::http3::settings::Http3Settings;
use crate::quic::QuicResult;

/// The client role of an [`H3Driver`].
#[derive(Debug, Default)]
pub struct ClientHooks {
    /// Requests waiting for a stream, oldest first.
    waiting: VecDeque<PendingRequest>,
}

impl sealed::Sealed for ClientHooks {}

impl H3Driver<ClientHooks> {
    /// A client driver and its controller.
    pub fn new_client(settings: Http3Settings) -> (Self, H3Controller) {
        Self::new(settings)
    }
}

impl DriverHooks for ClientHooks {
    const IS_SERVER: bool = false;

    fn on_new_stream_headers(
        _d: &mut H3Driver<Self>,
        _qconn: &mut quiche::Connection,
        id: u64,
        _list: Vec<Header>,
        _more_frames: bool,
    ) {
        // Server push is never enabled, so this is a stream we forgot.
        trace!(stream = id, "headers for a forgotten stream");
    }

    fn goaway_id(_d: &H3Driver<Self>) -> u64 {
        // Clients refuse every push (RFC 9114 §5.2).
        0
    }

    fn on_goaway_sent(_d: &mut H3Driver<Self>, _qconn: &mut quiche::Connection) {}

    fn on_send_request(d: &mut H3Driver<Self>, request: PendingRequest) {
        d.hooks.waiting.push_back(request);
    }

    fn flush(d: &mut H3Driver<Self>, qconn: &mut quiche::Connection) {
        while let Some(r) = d.hooks.waiting.pop_front() {
            if d.goaway.any() {
                let _ = r.reply.send(Err(H3Error::GoingAway));
                continue;
            }
            if r.reply.is_closed() {
                continue;
            }
            if qconn.peer_streams_left_bidi() == 0 {
                // At the peer's limit: wait for a stream to free.
                d.hooks.waiting.push_front(r);
                return;
            }
            let Some(h3) = d.h3.as_mut() else {
                d.hooks.waiting.push_front(r);
                return;
            };
            match h3.send_request(qconn, &r.headers, !r.has_body) {
                Ok(id) => {
                    d.shared.requests.fetch_add(1, Ordering::Relaxed);
                    let (response, body) = d.streams.open(id, true, r.has_body);
                    let Some(response) = response else { continue };
                    let _ = r.reply.send(Ok(RequestStream {
                        stream_id: id,
                        body,
                        response,
                    }));
                }
                Err(h3::Error::StreamBlocked)
                | Err(h3::Error::TransportError(quiche::Error::StreamLimit)) => {
                    d.hooks.waiting.push_front(r);
                    return;
                }
                Err(e) => {
                    let _ = r.reply.send(Err(H3Error::RequestRefused(e)));
                }
            }
        }
    }

    fn is_idle(d: &H3Driver<Self>) -> bool {
        d.hooks.waiting.is_empty()
    }

    fn deadline(_d: &H3Driver<Self>) -> Option<Instant> {
        None
    }

    fn on_deadline(_d: &mut H3Driver<Self>) -> QuicResult<()> {
        Ok(())
    }

    fn on_close(d: &mut H3Driver<Self>) {
        for r in d.hooks.waiting.drain(..) {
            let _ = r.reply.send(Err(H3Error::ConnectionClosed));
        }
    }
}
