//! Per-stream state of the driver and the two deliveries it runs each turn:
//! quiche → stream channels (inbound) and stream channels → quiche
//! (outbound), each only as far as the other side has room.
//!
//! A stream's entry lives from its first header section until both
//! directions are done and every frame for the application was handed
//! over; [`StreamTable::collect`] then removes it. Frames are queued for the
//! application only while it holds the stream's receiver, so a request
//! without a body, or whose receiver was dropped, leaves nothing behind.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quiche::h3::{self, Header, NameValue};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::super::error::{
    H3_INTERNAL_ERROR, H3_NO_ERROR, H3_REQUEST_CANCELLED, H3_REQUEST_INCOMPLETE,
};
use super::super::frames::{BodyReceiver, InboundFrame, OutboundFrame, OutboundSender, Shared};
use crate::metrics::{RequestRecord, ServiceMetrics};
use crate::quic::id_map::{IdMap, IdSet};
use crate::quic::scratch::Scratch;
use crate::quic::QuicResult;

/// Body bytes read and dropped for an application that no longer wants
/// them before the peer is asked to stop sending.
const DISCARD_MAX: usize = 64 << 10;

/// How long the peer's end may take to come once the application dropped
/// its receiver, before the peer is asked to stop sending. A request's end
/// is usually already on its way (a GET handler drops its empty body as
/// soon as it starts); asking a client to stop a request it was finishing
/// makes some stacks (the `h3` crate's `finish()`) fail the request.
pub(super) const UNWANTED_GRACE: Duration = Duration::from_secs(1);

/// One stream's state.
#[derive(Default)]
pub(super) struct StreamCtx {
    // Peer → application.
    inbound: Option<mpsc::Sender<InboundFrame>>,
    pending_in: VecDeque<InboundFrame>,
    data_pending: bool,
    recv_done: bool,
    // Application → peer.
    outbound: Option<mpsc::Receiver<OutboundFrame>>,
    pending_out: Option<OutboundFrame>,
    heads_sent: usize,
    send_done: bool,
    /// Since when the stream has waited on the peer without progress.
    stalled_since: Option<Instant>,
    /// Never cut for stalling: an extended CONNECT tunnel (RFC 9220), quiet
    /// in both directions by nature.
    no_stall: bool,
    /// We asked the peer to stop sending (STOP_SENDING), once.
    stop_asked: bool,
    /// The application dropped its receiver before the peer's end: what
    /// still comes is read and dropped (`discarded` bytes) until the end
    /// arrives, or until this instant (or more than [`DISCARD_MAX`]) when
    /// the peer is asked to stop.
    unwanted_since: Option<Instant>,
    discarded: usize,
    /// The stream's send capacity when quiche last refused a header
    /// section for want of room: it is not encoded again until the
    /// capacity grows (quiche encodes before it checks).
    head_blocked_at: Option<usize>,
    /// A server's request, while something listens for request records.
    req: Option<Box<RequestLog>>,
}

/// What a request record needs, gathered as the request goes.
struct RequestLog {
    started: Instant,
    method: String,
    path: String,
    status: Option<u16>,
    bytes_in: u64,
    bytes_out: u64,
    /// Our side ended with a fin (not a reset).
    fin_sent: bool,
    /// The peer reset its side.
    peer_reset: bool,
}

/// Where request records go, and how they are labelled.
pub(crate) struct RequestSink {
    pub(crate) sink: Arc<dyn ServiceMetrics>,
    pub(crate) world: &'static str,
    pub(crate) version: Option<String>,
}

impl RequestSink {
    fn report(&self, log: &RequestLog) {
        self.sink.request_finished(&RequestRecord {
            world: self.world,
            version: self.version.as_deref(),
            method: &log.method,
            path: &log.path,
            status: log.status,
            bytes_in: log.bytes_in,
            bytes_out: log.bytes_out,
            duration: log.started.elapsed(),
            completed: log.fin_sent && !log.peer_reset,
        });
    }
}

impl RequestLog {
    fn new(headers: &[Header]) -> Self {
        let field = |name: &[u8], max| {
            headers
                .iter()
                .find(|h| h.name() == name)
                .map_or_else(String::new, |h| truncated(h.value(), max))
        };
        // The query is left out: it often carries tokens that do not
        // belong in logs.
        let mut path = field(b":path", MAX_LOGGED_PATH);
        if let Some(q) = path.find('?') {
            path.truncate(q);
        }
        Self {
            started: Instant::now(),
            method: field(b":method", MAX_LOGGED_METHOD),
            path,
            status: None,
            bytes_in: 0,
            bytes_out: 0,
            fin_sent: false,
            peer_reset: false,
        }
    }
}

/// At most this much of a request's method and path is kept for its
/// record: a client's 16 KiB path must not become a 16 KiB log line.
const MAX_LOGGED_METHOD: usize = 32;
const MAX_LOGGED_PATH: usize = 256;

fn truncated(v: &[u8], max: usize) -> String {
    let v = &v[..v.len().min(max)];
    String::from_utf8_lossy(v).into_owned()
}

impl StreamCtx {
    /// Queues a frame for the application, if it still listens.
    fn push_in(&mut self, f: InboundFrame) {
        if self.inbound.is_some() {
            self.pending_in.push_back(f);
        }
    }

    /// Nothing more will be read for the application.
    fn end_inbound(&mut self) {
        self.recv_done = true;
        self.inbound = None;
        self.pending_in.clear();
    }

    /// Asks the peer to stop sending, once. A server uses H3_NO_ERROR, as
    /// RFC 9114 §4.1.1 says for one that does not need the rest of a
    /// request (its answer may still be complete, and a peer that echoes
    /// the code in its reset would otherwise cancel it); a client
    /// abandoning a response, H3_REQUEST_CANCELLED. The receive side is
    /// done (quiche then drops what still comes, the peer's reset too).
    fn ask_to_stop(&mut self, qconn: &mut quiche::Connection, id: u64, code: u64) {
        if !self.recv_done && !self.stop_asked {
            debug!(
                stream = id,
                discarded = self.discarded,
                code,
                "body not wanted; asking the peer to stop"
            );
            let _ = qconn.stream_shutdown(id, quiche::Shutdown::Read, code);
            self.stop_asked = true;
        }
        self.unwanted_since = None;
        self.end_inbound();
    }

    /// Nothing more will be sent; a frame held back is dropped.
    fn end_outbound(&mut self, shared: &Shared) {
        self.send_done = true;
        if let Some(OutboundFrame::Body(b, _)) = self.pending_out.take() {
            shared.sub_outbound(b.len());
        }
    }

    /// Drops the application's queue of frames for the peer, giving back
    /// the bytes still in it: they count against the connection's
    /// outbound total, which writers wait on.
    fn drop_outbound(&mut self, shared: &Shared) {
        if let Some(mut rx) = self.outbound.take() {
            rx.close();
            while let Ok(f) = rx.try_recv() {
                if let OutboundFrame::Body(b, _) = f {
                    shared.sub_outbound(b.len());
                }
            }
        }
    }

    /// Whether the application is ready for body bytes that do not come.
    fn wants_body(&self) -> bool {
        !self.recv_done
            && self.pending_in.is_empty()
            && !self.data_pending
            && self.inbound.as_ref().is_some_and(|tx| tx.capacity() > 0)
    }

    /// Whether the application has queued bytes quiche cannot take.
    fn cannot_send(&self) -> bool {
        !self.send_done && self.pending_out.is_some()
    }

    /// Whether we hold the peer's bytes back: quiche has body data the
    /// application's full channel cannot take. It counts against the
    /// connection's receive window, so the peer may be unable to send on
    /// other streams through no fault of its own.
    fn holds_back(&self) -> bool {
        self.data_pending && self.inbound.as_ref().is_some_and(|tx| tx.capacity() == 0)
    }

    fn is_done(&self) -> bool {
        self.recv_done && self.pending_in.is_empty() && self.send_done && self.pending_out.is_none()
    }
}

/// Every live stream of one connection.
pub(super) struct StreamTable {
    streams: IdMap<StreamCtx>,
    /// Streams done for the application whose data quiche may still be
    /// sending or waiting to see acknowledged: closing the connection
    /// before they are gone from quiche would lose their last bytes.
    unacked: Vec<u64>,
    capacity: usize,
    shared: Arc<Shared>,
    /// The read buffer for body chunks.
    /// Length of the read buffer lent for each round (`Scratch`).
    buf_len: usize,
    /// Where the next turn's outbound delivery starts (round robin).
    next_first: usize,
    /// Request streams the peer has sent on but whose header section is
    /// not complete yet, with when they were first seen: a client sending
    /// its headers a byte at a time (slowloris) is cut like a stalled
    /// body.
    unheaded: IdMap<Instant>,
    /// The peer's unidirectional streams quiche's HTTP/3 layer has read:
    /// its state for them is freed once quiche drops them.
    peer_uni: IdSet,
    /// Whether the last turn handed any stream's data to quiche.
    sent_in_turn: bool,
    /// Where request records go (servers, when asked for).
    pub(super) requests: Option<RequestSink>,
}

impl StreamTable {
    pub(super) fn new(capacity: usize, chunk: usize, shared: Arc<Shared>) -> Self {
        Self {
            streams: IdMap::default(),
            unacked: Vec::new(),
            capacity: capacity.max(1),
            shared,
            buf_len: chunk.max(1024),
            next_first: 0,
            sent_in_turn: false,
            unheaded: IdMap::default(),
            peer_uni: IdSet::default(),
            requests: None,
        }
    }

    /// Starts a request's record, if records are wanted.
    pub(super) fn track_request(&mut self, id: u64, headers: &[Header]) {
        if self.requests.is_none() {
            return;
        }
        let Some(ctx) = self.streams.get_mut(&id) else {
            return;
        };
        ctx.req = Some(Box::new(RequestLog::new(headers)));
    }

    /// Reports a request refused before it had a stream entry (after our
    /// GOAWAY): no response, not completed.
    pub(super) fn report_refused(&self, headers: &[Header]) {
        if let Some(sink) = &self.requests {
            sink.report(&RequestLog::new(headers));
        }
    }

    pub(super) fn contains(&self, id: u64) -> bool {
        self.streams.contains_key(&id)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    pub(super) fn count(&self) -> usize {
        self.streams.len()
    }

    /// Every per-stream entry the table keeps, in all its maps (tests of
    /// the stream lifecycle).
    #[cfg(test)]
    pub(super) fn entries(&self) -> usize {
        self.streams.len() + self.unacked.len() + self.unheaded.len()
    }

    /// The peer's unidirectional streams still tracked (tests).
    #[cfg(test)]
    pub(super) fn peer_uni_count(&self) -> usize {
        self.peer_uni.len()
    }

    /// A read buffer lent for one round, for reads outside any stream
    /// (datagrams, drains).
    pub(super) fn scratch(&self) -> Scratch {
        Scratch::take(self.buf_len)
    }

    /// Creates the channels of a new stream; returns the application ends.
    pub(super) fn open(
        &mut self,
        id: u64,
        inbound: bool,
        outbound: bool,
    ) -> (Option<BodyReceiver>, Option<OutboundSender>) {
        let cap = self.capacity;
        self.unheaded.remove(&id);
        let ctx = self.streams.entry(id).or_default();
        let rx = inbound.then(|| {
            let (tx, rx) = mpsc::channel(cap);
            ctx.inbound = Some(tx);
            BodyReceiver {
                stream_id: id,
                rx,
                shared: self.shared.clone(),
            }
        });
        ctx.recv_done = !inbound;
        let tx = outbound.then(|| {
            let (tx, rx) = mpsc::channel(cap);
            ctx.outbound = Some(rx);
            OutboundSender {
                stream_id: id,
                tx,
                shared: self.shared.clone(),
            }
        });
        ctx.send_done = !outbound;
        self.publish_len();
        (rx, tx)
    }

    fn publish_len(&self) {
        self.shared
            .open_streams
            .store(self.streams.len(), Ordering::Relaxed);
    }

    /// A later header section: a client's response heads, or trailers. The
    /// stream's end follows as its own event.
    pub(super) fn headers(&mut self, id: u64, list: Vec<Header>) {
        if let Some(ctx) = self.streams.get_mut(&id) {
            ctx.push_in(InboundFrame::Headers(list));
        }
    }

    /// quiche has body bytes for `id`; false if the stream is unknown.
    pub(super) fn data(&mut self, id: u64) -> bool {
        match self.streams.get_mut(&id) {
            Some(ctx) => {
                ctx.data_pending = true;
                true
            }
            None => false,
        }
    }

    /// The peer finished its side.
    pub(super) fn finished(&mut self, id: u64) {
        if let Some(ctx) = self.streams.get_mut(&id) {
            ctx.push_in(InboundFrame::Finished);
            ctx.recv_done = true;
            ctx.data_pending = false;
        }
    }

    /// The peer reset its side: tell the application, and stop answering.
    pub(super) fn reset(&mut self, qconn: &mut quiche::Connection, id: u64, code: u64) -> bool {
        if let Some(ctx) = self.streams.get_mut(&id) {
            // A reset with H3_NO_ERROR (what RFC 9114 §4.1.1 gives a
            // request cut short on purpose) ends the peer's side only and
            // leaves the answer going: clients must not discard a complete
            // response because their request was cut. A peer that wants no
            // answer cancels (H3_REQUEST_CANCELLED) or also stops our side,
            // which ends it. Returns whether the stream is cut.
            let solicited = code == H3_NO_ERROR;
            debug!(stream = id, code, solicited, "the peer reset its side");
            if let Some(r) = ctx.req.as_mut() {
                r.peer_reset |= !solicited;
            }
            ctx.push_in(InboundFrame::Reset(code));
            ctx.recv_done = true;
            ctx.data_pending = false;
            if !ctx.send_done && !solicited {
                let _ = qconn.stream_shutdown(id, quiche::Shutdown::Write, H3_REQUEST_CANCELLED);
                ctx.end_outbound(&self.shared);
            }
            return !solicited;
        }
        true
    }

    /// The application shut one direction of a stream: the read side
    /// (STOP_SENDING) when `read`, else the write side (RESET_STREAM).
    pub(super) fn shutdown(
        &mut self,
        qconn: &mut quiche::Connection,
        id: u64,
        read: bool,
        code: u64,
    ) {
        let direction = if read {
            quiche::Shutdown::Read
        } else {
            quiche::Shutdown::Write
        };
        let _ = qconn.stream_shutdown(id, direction, clamp_code(code));
        if let Some(ctx) = self.streams.get_mut(&id) {
            match read {
                true => ctx.end_inbound(),
                false => ctx.end_outbound(&self.shared),
            }
        }
    }

    /// Moves what quiche has for the application into stream channels, as
    /// far as they have room.
    ///
    /// Returns whether body bytes were read: quiche reports a stream's end
    /// only from `poll`, so the caller must poll again after reading.
    pub(super) fn deliver_inbound(
        &mut self,
        h3: &mut h3::Connection,
        qconn: &mut quiche::Connection,
        is_server: bool,
    ) -> QuicResult<bool> {
        let mut read_any = false;
        // Lent at the first read: most turns read no stream.
        let buf_len = self.buf_len;
        let mut lent: Option<Scratch> = None;
        for (&id, ctx) in self.streams.iter_mut() {
            if ctx.inbound.as_ref().is_some_and(|tx| tx.is_closed()) {
                // Receiver dropped. A server reads and drops what still
                // comes until the request's end arrives; a peer that goes
                // on sending, or takes longer than the grace, is asked to
                // stop (`stop_unwanted`). A client abandons the response:
                // it asks the server to stop at once.
                ctx.inbound = None;
                ctx.pending_in.clear();
                if !ctx.recv_done {
                    if is_server {
                        ctx.unwanted_since = Some(Instant::now());
                    } else {
                        ctx.ask_to_stop(qconn, id, H3_REQUEST_CANCELLED);
                    }
                }
            }
            let Some(tx) = &ctx.inbound else {
                // The application does not want this stream's frames (or has
                // dropped its receiver): drain quiche so the stream can close.
                if ctx.data_pending {
                    let buf = lent.get_or_insert_with(|| Scratch::take(buf_len));
                    while let Ok(n) = h3.recv_body(qconn, id, buf) {
                        if n == 0 {
                            break;
                        }
                        // Read: the caller polls again, and sees the end
                        // that reading may have reached.
                        read_any = true;
                        ctx.discarded = ctx.discarded.saturating_add(n);
                    }
                    ctx.data_pending = false;
                    if ctx.discarded > DISCARD_MAX {
                        ctx.ask_to_stop(qconn, id, H3_NO_ERROR);
                    }
                }
                continue;
            };
            while let Some(f) = ctx.pending_in.pop_front() {
                match tx.try_send(f) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(f)) => {
                        ctx.pending_in.push_front(f);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
            if ctx.pending_in.is_empty() && ctx.data_pending {
                let buf = lent.get_or_insert_with(|| Scratch::take(buf_len));
                loop {
                    let Ok(permit) = tx.try_reserve() else {
                        break; // full: resume when the application reads
                    };
                    match h3.recv_body(qconn, id, buf) {
                        Ok(n) => {
                            read_any = true;
                            ctx.stalled_since = None;
                            self.shared.add_inbound(n);
                            if let Some(r) = ctx.req.as_mut() {
                                r.bytes_in += n as u64;
                            }
                            permit.send(InboundFrame::Body(Bytes::copy_from_slice(&buf[..n])));
                        }
                        Err(h3::Error::Done) => {
                            ctx.data_pending = false;
                            break;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok(read_any)
    }

    /// Writes what the application queued, as far as quiche accepts it.
    /// `is_server` decides how a stream's first header section goes out.
    pub(super) fn deliver_outbound(
        &mut self,
        h3: &mut h3::Connection,
        qconn: &mut quiche::Connection,
        is_server: bool,
    ) {
        // Each turn starts one stream further on: the first stream served
        // takes what the congestion window allows, and must not always be
        // the same one.
        let n = self.streams.len().max(1);
        let first = self.next_first % n;
        self.next_first = self.next_first.wrapping_add(1);
        let mut turn = Turn {
            shared: &self.shared,
            sent: false,
        };
        for pass in [true, false] {
            for (i, (&id, ctx)) in self.streams.iter_mut().enumerate() {
                if (i >= first) == pass {
                    deliver_one(h3, qconn, id, ctx, is_server, &mut turn);
                }
            }
        }
        self.sent_in_turn = turn.sent;
    }

    /// Forgets streams finished in both directions whose frames were all
    /// delivered, and notes which of them quiche still holds.
    pub(super) fn collect(
        &mut self,
        h3: Option<&mut h3::Connection>,
        qconn: &mut quiche::Connection,
    ) {
        let unacked = &mut self.unacked;
        let shared = &self.shared;
        let requests = &self.requests;
        self.streams.retain(|&id, ctx| {
            let done = ctx.is_done();
            if done {
                ctx.drop_outbound(shared);
                unacked.push(id);
                if let (Some(sink), Some(log)) = (requests, ctx.req.take()) {
                    sink.report(&log);
                }
            }
            !done
        });
        // quiche drops a stream once everything sent on it was acknowledged
        // (and everything received was read); until then it still exists.
        let mut h3 = h3;
        let mut still_held = |id: u64| {
            let gone = dropped_by_quiche(qconn, id);
            if gone {
                if let Some(h3) = h3.as_deref_mut() {
                    forget_in_h3(h3, qconn, id);
                }
            }
            !gone
        };
        self.unacked.retain(|&id| still_held(id));
        self.peer_uni.retain(|&id| still_held(id));
        self.publish_len();
    }

    /// Asks the peers of streams whose body the application dropped to stop
    /// sending, once the grace for their end has passed. Returns when the
    /// next grace ends.
    pub(super) fn stop_unwanted(
        &mut self,
        qconn: &mut quiche::Connection,
        now: Instant,
    ) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for (&id, ctx) in self.streams.iter_mut() {
            let Some(since) = ctx.unwanted_since else {
                continue;
            };
            if ctx.recv_done {
                ctx.unwanted_since = None;
                continue;
            }
            let due = since + UNWANTED_GRACE;
            if now >= due {
                ctx.ask_to_stop(qconn, id, H3_NO_ERROR);
            } else {
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        next
    }

    /// Resets, both ways, every stream that has waited on the peer without
    /// progress for `timeout` (see `Http3Settings::stream_stall_timeout`).
    /// Returns the streams cut and when the next one would be due.
    pub(super) fn cut_stalled(
        &mut self,
        qconn: &mut quiche::Connection,
        now: Instant,
        timeout: Duration,
        backlogged: bool,
    ) -> (Vec<u64>, Option<Instant>) {
        let mut cut = Vec::new();
        let mut next: Option<Instant> = None;
        // A stream waits on the peer only if the connection as a whole is
        // not moving: while other streams' data goes out, one that waits
        // for room waits its turn under the congestion window or the
        // connection's flow control; while we hold back received data,
        // the peer may have no connection window left to send with.
        // While the application has not taken its events, the driver reads
        // nothing: the peer may well have sent what is waited for.
        let sending = self.sent_in_turn;
        let holding = backlogged || self.streams.values().any(StreamCtx::holds_back);
        for (&id, ctx) in self.streams.iter_mut() {
            let waits = !ctx.no_stall
                && ((ctx.wants_body() && !holding) || (ctx.cannot_send() && !sending));
            if !waits {
                ctx.stalled_since = None;
                continue;
            }
            // A timeout too large to add means no deadline.
            let Some(due) = ctx.stalled_since.get_or_insert(now).checked_add(timeout) else {
                continue;
            };
            if now < due {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            debug!(
                stream = id,
                ?timeout,
                "no progress from the peer; resetting the stream"
            );
            let _ = qconn.stream_shutdown(id, quiche::Shutdown::Read, H3_REQUEST_CANCELLED);
            let _ = qconn.stream_shutdown(id, quiche::Shutdown::Write, H3_REQUEST_CANCELLED);
            ctx.push_in(InboundFrame::Reset(H3_REQUEST_CANCELLED));
            ctx.recv_done = true;
            ctx.data_pending = false;
            ctx.stalled_since = None;
            ctx.end_outbound(&self.shared);
            cut.push(id);
        }
        let unheaded = match backlogged {
            true => None,
            false => self.cut_unheaded(qconn, now, timeout),
        };
        (cut, crate::http3::driver::core::earliest(next, unheaded))
    }

    /// Notes the peer's streams that quiche's HTTP/3 layer is about to
    /// read for the first time: request streams without a complete header
    /// section yet (servers), cut if it never completes; and the peer's
    /// unidirectional streams, whose HTTP/3 state is freed once quiche
    /// drops them (a reset one would otherwise stay there for good).
    pub(super) fn note_unseen(
        &mut self,
        qconn: &quiche::Connection,
        now: Instant,
        is_server: bool,
    ) {
        let peer_uni = if is_server { 2 } else { 3 };
        for id in qconn.readable() {
            if id % 4 == peer_uni {
                self.peer_uni.insert(id);
            } else if is_server && id % 4 == 0 && !self.streams.contains_key(&id) {
                self.unheaded.entry(id).or_insert(now);
            }
        }
    }

    /// A request stream the application never saw ended (reset, or
    /// finished without a full header section): close our side with
    /// `code` so quiche can free it, and free it in quiche's HTTP/3 layer
    /// once it has.
    pub(super) fn orphan(&mut self, qconn: &mut quiche::Connection, id: u64, code: u64) {
        if !id.is_multiple_of(4) {
            return;
        }
        debug!(
            stream = id,
            code, "request stream without a full header section: closing it"
        );
        let _ = qconn.stream_shutdown(id, quiche::Shutdown::Read, code);
        let _ = qconn.stream_shutdown(id, quiche::Shutdown::Write, code);
        self.unheaded.remove(&id);
        self.unacked.push(id);
    }

    /// Resets the request streams whose header section has not completed
    /// within `timeout`, and forgets those quiche no longer has; returns
    /// when the next one would be due.
    fn cut_unheaded(
        &mut self,
        qconn: &mut quiche::Connection,
        now: Instant,
        timeout: Duration,
    ) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let unacked = &mut self.unacked;
        self.unheaded.retain(|&id, since| {
            if dropped_by_quiche(qconn, id) {
                // quiche's HTTP/3 layer may still hold it: forgotten in the
                // next `collect`.
                unacked.push(id);
                return false;
            }
            match since.checked_add(timeout) {
                Some(due) if now >= due => {
                    debug!(
                        stream = id,
                        ?timeout,
                        "header section incomplete; resetting the stream"
                    );
                    let _ =
                        qconn.stream_shutdown(id, quiche::Shutdown::Read, H3_REQUEST_INCOMPLETE);
                    let _ =
                        qconn.stream_shutdown(id, quiche::Shutdown::Write, H3_REQUEST_INCOMPLETE);
                    unacked.push(id);
                    false
                }
                Some(due) => {
                    next = Some(next.map_or(due, |n| n.min(due)));
                    true
                }
                None => true,
            }
        });
        next
    }

    /// A stream that never got an entry (refused after GOAWAY) but that
    /// quiche's HTTP/3 layer holds: forgotten there once quiche drops it.
    pub(super) fn forget_later(&mut self, id: u64) {
        self.unacked.push(id);
    }

    /// Exempts a stream from the stall timeout (an extended CONNECT
    /// tunnel).
    pub(super) fn never_stalls(&mut self, id: u64) {
        if let Some(ctx) = self.streams.get_mut(&id) {
            ctx.no_stall = true;
        }
    }

    /// Whether every stream's data was acknowledged by the peer.
    pub(super) fn all_acked(&self) -> bool {
        self.unacked.is_empty()
    }

    /// The connection ended: every receiver sees `None`.
    pub(super) fn clear(&mut self) {
        for ctx in self.streams.values_mut() {
            ctx.end_outbound(&self.shared);
            ctx.drop_outbound(&self.shared);
            if let (Some(sink), Some(log)) = (&self.requests, ctx.req.take()) {
                sink.report(&log);
            }
        }
        self.streams.clear();
        self.publish_len();
    }
}

/// One turn of outbound delivery: the counters, and whether any stream's
/// data went out.
struct Turn<'a> {
    shared: &'a Shared,
    sent: bool,
}

/// Hands one stream's queued frames to quiche, as far as it takes them.
fn deliver_one(
    h3: &mut h3::Connection,
    qconn: &mut quiche::Connection,
    id: u64,
    ctx: &mut StreamCtx,
    is_server: bool,
    turn: &mut Turn<'_>,
) {
    let shared = turn.shared;
    loop {
        if ctx.send_done {
            ctx.drop_outbound(shared);
            return;
        }
        if ctx.pending_out.is_none() {
            let Some(rx) = ctx.outbound.as_mut() else {
                return;
            };
            match rx.try_recv() {
                Ok(f) => ctx.pending_out = Some(f),
                Err(mpsc::error::TryRecvError::Empty) => return,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    debug!(stream = id, "sender dropped before fin; resetting stream");
                    let _ =
                        qconn.stream_shutdown(id, quiche::Shutdown::Write, H3_REQUEST_CANCELLED);
                    ctx.send_done = true;
                    continue;
                }
            }
        }
        let Some(frame) = ctx.pending_out.take() else {
            return;
        };
        if !send_frame(h3, qconn, id, ctx, frame, is_server, turn) {
            return;
        }
    }
}

/// Hands one frame to quiche. Returns whether the stream may take another
/// now; a frame quiche cannot take yet is put back in `pending_out`.
fn send_frame(
    h3: &mut h3::Connection,
    qconn: &mut quiche::Connection,
    id: u64,
    ctx: &mut StreamCtx,
    frame: OutboundFrame,
    is_server: bool,
    turn: &mut Turn<'_>,
) -> bool {
    let shared = turn.shared;
    let blocked = |e: &h3::Error| matches!(e, h3::Error::StreamBlocked | h3::Error::Done);
    if let OutboundFrame::Headers { headers, .. } | OutboundFrame::Trailers(headers) = &frame {
        if let Some(at) = ctx.head_blocked_at {
            if qconn.stream_capacity(id).is_ok_and(|now| now <= at) {
                ctx.pending_out = Some(frame);
                return false;
            }
        }
        let size = field_section_size(headers);
        let limit = peer_field_section_limit(h3).min(MAX_FIELD_SECTION_OUT);
        if size > limit {
            warn!(
                stream = id,
                size, limit, "header section larger than the peer accepts; resetting the stream"
            );
            ctx.head_blocked_at = None;
            let e = h3::Error::ExcessiveLoad;
            return abandon_stream(qconn, id, ctx, "headers", &e);
        }
    }
    let refused_room = |ctx: &mut StreamCtx, qconn: &mut quiche::Connection, frame| {
        ctx.head_blocked_at = qconn.stream_capacity(id).ok();
        ctx.pending_out = Some(frame);
        false
    };
    match frame {
        OutboundFrame::Headers { headers, fin } => {
            let r = if is_server && ctx.heads_sent == 0 {
                h3.send_response(qconn, id, &headers, fin)
            } else {
                h3.send_additional_headers(qconn, id, &headers, !is_server, fin)
            };
            match r {
                Ok(()) => {
                    if let Some(r) = ctx.req.as_mut() {
                        // The final status: informational heads (103
                        // Early Hints) come first and are replaced.
                        if r.status.is_none_or(|s| (100..200).contains(&s)) {
                            let status = headers
                                .iter()
                                .find(|h| h.name() == b":status")
                                .and_then(|h| std::str::from_utf8(h.value()).ok())
                                .and_then(|v| v.parse().ok());
                            r.status = status.or(r.status);
                        }
                        r.fin_sent |= fin;
                    }
                    ctx.stalled_since = None;
                    turn.sent = true;
                    ctx.head_blocked_at = None;
                    ctx.heads_sent += 1;
                    ctx.send_done |= fin;
                    true
                }
                Err(e) if blocked(&e) => {
                    refused_room(ctx, qconn, OutboundFrame::Headers { headers, fin })
                }
                Err(e) => abandon_stream(qconn, id, ctx, "headers", &e),
            }
        }
        OutboundFrame::Body(mut bytes, fin) => match h3.send_body(qconn, id, &bytes, fin) {
            Ok(n) => {
                if n > 0 {
                    ctx.stalled_since = None;
                    turn.sent = true;
                }
                shared.sub_outbound(n);
                if let Some(r) = ctx.req.as_mut() {
                    r.bytes_out += n as u64;
                    r.fin_sent |= fin && n == bytes.len();
                }
                if n < bytes.len() {
                    let _ = bytes.split_to(n);
                    ctx.pending_out = Some(OutboundFrame::Body(bytes, fin));
                    false
                } else {
                    ctx.send_done |= fin;
                    true
                }
            }
            Err(e) if blocked(&e) => {
                ctx.pending_out = Some(OutboundFrame::Body(bytes, fin));
                false
            }
            Err(e) => {
                shared.sub_outbound(bytes.len());
                abandon_stream(qconn, id, ctx, "body", &e)
            }
        },
        OutboundFrame::Trailers(headers) => {
            match h3.send_additional_headers(qconn, id, &headers, true, true) {
                Ok(()) => {
                    if let Some(r) = ctx.req.as_mut() {
                        r.fin_sent = true;
                    }
                    ctx.head_blocked_at = None;
                    turn.sent = true;
                    ctx.send_done = true;
                    true
                }
                Err(e) if blocked(&e) => refused_room(ctx, qconn, OutboundFrame::Trailers(headers)),
                Err(e) => abandon_stream(qconn, id, ctx, "trailers", &e),
            }
        }
        OutboundFrame::Reset(code) => {
            let _ = qconn.stream_shutdown(id, quiche::Shutdown::Write, clamp_code(code));
            ctx.send_done = true;
            true
        }
        OutboundFrame::StopSending(code) => {
            let _ = qconn.stream_shutdown(id, quiche::Shutdown::Read, clamp_code(code));
            ctx.end_inbound();
            true
        }
    }
}

/// Whether quiche no longer has stream `id` (it drops a stream once
/// everything sent on it was acknowledged and everything received read).
fn dropped_by_quiche(qconn: &mut quiche::Connection, id: u64) -> bool {
    matches!(
        qconn.stream_capacity(id),
        Err(quiche::Error::InvalidStreamState(_))
    )
}

/// Makes quiche's HTTP/3 layer drop its state for a stream quiche itself
/// has forgotten. The layer frees a request stream only once our side was
/// finished through it (a fin from `send_body` or a header section); a
/// stream whose sending side we reset (a client's rapid reset, a cancelled
/// response) would stay in its map for the connection's life, a leak of a
/// few hundred bytes per reset request. Its only way out is a send attempt
/// that finds the QUIC stream gone, so we make one: on a stream quiche no
/// longer has nothing can be sent, and quiche removes the entry.
fn forget_in_h3(h3: &mut h3::Connection, qconn: &mut quiche::Connection, id: u64) {
    let head = [Header::new(b":status", b"500")];
    // No response sent yet (servers): the first head. Otherwise (or as a
    // client) a trailer section.
    if let Err(h3::Error::FrameUnexpected) = h3.send_response(qconn, id, &head, true) {
        let trailer = [Header::new(b"x", b"")];
        let _ = h3.send_additional_headers(qconn, id, &trailer, true, true);
    }
}

/// The largest header section the driver sends, whatever the peer allows:
/// quiche sizes its encoding buffer from the section, so an application's
/// (or a plugin's) 64 MiB header must not reach it.
pub(crate) const MAX_FIELD_SECTION_OUT: u64 = 256 * 1024;

/// A header section's size as RFC 9114 §4.2.2 counts it against
/// SETTINGS_MAX_FIELD_SECTION_SIZE: names and values plus 32 per field.
pub(crate) fn field_section_size(headers: &[Header]) -> u64 {
    headers
        .iter()
        .map(|h| (h.name().len() + h.value().len() + 32) as u64)
        .sum()
}

/// The peer's SETTINGS_MAX_FIELD_SECTION_SIZE (0x6), if it sent one.
fn peer_field_section_limit(h3: &h3::Connection) -> u64 {
    h3.peer_settings_raw()
        .and_then(|s| s.iter().find(|(id, _)| *id == 0x6).map(|(_, v)| *v))
        .unwrap_or(u64::MAX)
}

/// Gives up on our side of a stream after quiche refused a frame for it.
fn abandon_stream(
    qconn: &mut quiche::Connection,
    id: u64,
    ctx: &mut StreamCtx,
    what: &str,
    e: &h3::Error,
) -> bool {
    debug!(stream = id, error = %e, "cannot send {what}; resetting stream");
    let _ = qconn.stream_shutdown(id, quiche::Shutdown::Write, H3_INTERNAL_ERROR);
    ctx.send_done = true;
    true
}

/// An application error code as a QUIC frame can carry it: one above
/// 2^62 - 1 becomes H3_INTERNAL_ERROR rather than reaching quiche's varint
/// encoder, which panics on it.
pub(super) fn clamp_code(code: u64) -> u64 {
    if code > crate::quic::varint::MAX {
        debug!(
            code,
            "error code beyond 2^62 - 1; sending H3_INTERNAL_ERROR"
        );
        H3_INTERNAL_ERROR
    } else {
        code
    }
}
