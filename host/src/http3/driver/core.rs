//! The state every role shares ([`DriverCore`]): quiche's HTTP/3 connection,
//! the stream table, the event and command channels, GOAWAY in both
//! directions. The role hooks get it by reference, so they depend on this
//! module and the driver on both, with no way back.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use quiche::h3;
use tokio::sync::mpsc;
use tracing::debug;

use super::streams::StreamTable;
use crate::http3::controller::{Command, H3Event, EVENT_BACKLOG};
use crate::http3::frames::Shared;
use crate::http3::settings::Http3Settings;

/// What a server and a client driver have in common. Opaque outside the
/// driver: it appears only in the sealed [`DriverHooks`](super::DriverHooks).
pub struct DriverCore {
    pub(super) settings: Http3Settings,
    pub(super) h3: Option<h3::Connection>,
    pub(super) streams: StreamTable,
    pub(super) events: mpsc::UnboundedSender<H3Event>,
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    pub(super) queued: VecDeque<Command>,
    pub(super) shared: Arc<Shared>,
    pub(super) settings_reported: bool,
    pub(super) goaway: GoAway,
    pub(super) established_at: Option<Instant>,
    pub(super) close_error: Option<String>,
    pub(super) commands_closed: bool,
    /// Since when a going-away connection has had nothing left but
    /// unacknowledged data.
    pub(super) flushing_since: Option<Instant>,
    /// Since when, in that state, everything was acknowledged.
    pub(super) acked_since: Option<Instant>,
    /// When the next stalled stream is due to be cut.
    pub(super) stall_due: Option<Instant>,
    /// When the next stream whose body the application dropped has waited
    /// its grace for the peer's end (see `StreamTable::stop_unwanted`).
    pub(super) unwanted_due: Option<Instant>,
}

impl std::fmt::Debug for DriverCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverCore")
            .field("streams", &self.streams.count())
            .field("goaway", &self.goaway)
            .finish_non_exhaustive()
    }
}

/// GOAWAY in either direction.
#[derive(Debug, Default)]
pub(super) struct GoAway {
    /// The id our GOAWAY carried, once sent.
    pub(super) sent: Option<u64>,
    /// Asked for, but quiche could not send it yet (no credit).
    pub(super) wanted: bool,
    pub(super) received: bool,
}

impl GoAway {
    pub(super) fn any(&self) -> bool {
        self.sent.is_some() || self.received
    }
}

impl DriverCore {
    pub(super) fn new(
        settings: Http3Settings,
        events: mpsc::UnboundedSender<H3Event>,
        commands: mpsc::UnboundedReceiver<Command>,
        shared: Arc<Shared>,
    ) -> Self {
        let streams = StreamTable::new(
            settings.stream_channel_capacity,
            settings.body_chunk_size,
            shared.clone(),
        );
        Self {
            settings,
            h3: None,
            streams,
            events,
            commands,
            queued: VecDeque::new(),
            shared,
            settings_reported: false,
            goaway: GoAway::default(),
            established_at: None,
            close_error: None,
            commands_closed: false,
            flushing_since: None,
            acked_since: None,
            stall_due: None,
            unwanted_due: None,
        }
    }

    pub(super) fn emit(&self, e: H3Event) {
        // Counted before the application can take (and uncount) it; not
        // counted if nobody listens any more.
        self.shared.events_pending.fetch_add(1, Ordering::Relaxed);
        if self.events.send(e).is_err() {
            self.shared.events_pending.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether the application has the most events it may have queued.
    /// (An application that dropped its controller takes no more events,
    /// and holds nothing back.)
    pub(super) fn backlogged(&self) -> bool {
        self.shared.events_pending.load(Ordering::Relaxed) >= EVENT_BACKLOG
            && !self.events.is_closed()
    }

    /// Sends GOAWAY carrying `id` unless one went out already; returns
    /// whether it went out now. One quiche cannot send yet (no credit, or
    /// not established) is retried next turn.
    pub(super) fn send_goaway(&mut self, qconn: &mut quiche::Connection, id: u64) -> bool {
        self.goaway.wanted = false;
        if self.goaway.sent.is_some() {
            return false;
        }
        let Some(h3) = self.h3.as_mut() else {
            self.goaway.wanted = true;
            return false;
        };
        match h3.send_goaway(qconn, id) {
            Ok(()) => {
                debug!(id, "GOAWAY sent");
                self.goaway.sent = Some(id);
                self.shared.going_away.store(true, Ordering::Relaxed);
                true
            }
            Err(e) => {
                // Usually StreamBlocked: no connection-level credit right
                // now (a large response has used it).
                debug!(error = %e, "cannot send GOAWAY yet");
                self.goaway.wanted = true;
                false
            }
        }
    }
}

/// The earlier of two optional instants (either alone if the other is
/// absent).
pub(super) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
