//! The bridge between a connection's IO worker and a raw-QUIC plugin that
//! runs in its own task.
//!
//! A plugin call is async (it yields to the runtime every epoch tick) and
//! must never be dropped midway, while the worker's `wait_for_data` is
//! dropped whenever a packet wins its race. So the plugin cannot run inside
//! the worker's hooks. Instead:
//!
//! - [`QuicPluginApp`] is the connection's [`ApplicationOverQuic`]. It reads
//!   streams and datagrams from quiche and sends them to the plugin task as
//!   batches, within a byte budget (the rest stays in quiche, so the client
//!   is held back by flow control), and it applies what the plugin queued.
//! - [`Shared`] is what the plugin's host functions write to: bytes per
//!   stream (each bounded, which is the back-pressure the plugin sees),
//!   resets, datagrams, a close. The plugin task wakes the worker after each
//!   call; the worker applies it all in `process_writes`.
//!
//! A stream whose last write was accepted only in part is not read again
//! until the plugin has caught up (a write accepted whole, or a `writable`
//! call that ends without being held back again), so a plugin that echoes
//! or transforms a stream buffers at most what one batch delivered.
//! Nothing here knows of wasm; the plugin side is in `mod.rs`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::sync::mpsc;
use tracing::debug;

use crate::metrics::Metrics;
use crate::quic::{
    ApplicationClose, ApplicationOverQuic, HandshakeInfo, QuicResult, INTERNAL_ERROR_CODE,
};

/// Bytes a plugin may queue on one stream beyond what quiche has taken.
pub(crate) const STREAM_BUDGET: usize = 256 << 10;
/// Bytes a plugin may queue on all its streams together beyond what quiche
/// has taken, unless the plugin's limits say otherwise
/// (`PluginLimits::queued_bytes`): with the per-stream budget alone,
/// writing on many streams pinned host memory outside the plugin's own cap.
pub(crate) const CONNECTION_BUDGET: usize = 4 << 20;

/// The connection-wide budget in force ([`CONNECTION_BUDGET`] by default).
#[derive(Debug, Clone, Copy)]
struct Budget(usize);

impl Default for Budget {
    fn default() -> Self {
        Self(CONNECTION_BUDGET)
    }
}
/// Streams with bytes queued at once. A write that would start one more is
/// held back (0 accepted, `writable` later), like a full stream's.
pub(crate) const MAX_QUEUED_STREAMS: usize = 1024;
/// Bytes of incoming data delivered to the plugin and not yet handled.
const INBOUND_BUDGET: usize = 1 << 20;
/// The most bytes one `stream-data` event carries.
const READ_CHUNK: usize = 64 << 10;
/// An event without bytes counts as this many against the budget, so a flood
/// of empty events is bounded too.
const EVENT_COST: usize = 64;
/// Datagrams a plugin may queue within one turn.
const DATAGRAM_QUEUE: usize = 1024;

/// Incoming data for the plugin.
#[derive(Debug)]
pub(crate) enum Incoming {
    Data {
        stream: u64,
        data: Vec<u8>,
        fin: bool,
    },
    Reset {
        stream: u64,
        code: u64,
    },
    Datagram(Vec<u8>),
}

/// Other news for the plugin.
#[derive(Debug)]
pub(crate) enum Notice {
    Writable(u64),
    Stopped { stream: u64, code: u64 },
}

/// What the worker sends the plugin task.
#[derive(Debug)]
pub(crate) enum ToPlugin {
    Established(HandshakeInfo),
    /// Incoming data, and what it counts against the inbound budget.
    Read(Vec<Incoming>, usize),
    Notice(Notice),
    Closed,
}

/// Why a host function refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    InvalidStream,
    Blocked,
    Closed,
    InvalidArgument,
}

/// Transport statistics as of the worker's last turn.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Stats {
    pub(crate) rtt_us: u64,
    pub(crate) cwnd: u64,
    pub(crate) sent_bytes: u64,
    pub(crate) recv_bytes: u64,
    pub(crate) sent_packets: u64,
    pub(crate) recv_packets: u64,
    pub(crate) lost_packets: u64,
}

#[derive(Debug, Default)]
struct Outgoing {
    buf: BytesMut,
    fin: bool,
}

#[derive(Debug)]
enum Op {
    Reset(u64, u64),
    StopSending(u64, u64),
    Datagram(Vec<u8>),
}

#[derive(Debug)]
struct Close {
    code: u64,
    reason: String,
    /// Send what the plugin queued first (a plugin's own close), or close
    /// at once (a failed plugin).
    graceful: bool,
}

/// How long a plugin's close waits for its queued bytes to leave and be
/// acknowledged.
const CLOSE_FLUSH_LIMIT: Duration = Duration::from_secs(1);

/// Once everything is acknowledged, the least a plugin's close still waits
/// (three RTTs if longer): acknowledged is not yet read by the client's
/// application, and a client stack may drop unread data on
/// CONNECTION_CLOSE.
const CLOSE_LINGER: Duration = Duration::from_millis(25);

/// A plugin's close in progress.
#[derive(Debug, Clone, Copy)]
struct Closing {
    since: Instant,
    /// Everything queued was handed to quiche at the end of a turn, and so
    /// flushed by the worker since.
    flushed: bool,
    /// Whether a turn has looked at the acknowledgements since `flushed`.
    checked: bool,
    /// When to close: everything was acknowledged, plus the linger.
    close_at: Option<Instant>,
}

/// What the plugin has queued for the worker, and what the worker tells the
/// plugin's host functions. Locked briefly by both, never across an await.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    out: HashMap<u64, Outgoing>,
    /// Bytes in all of `out`'s buffers.
    queued: usize,
    /// The most `queued` may reach.
    budget: Budget,
    ops: VecDeque<Op>,
    datagrams: usize,
    /// Streams whose last write was accepted only in part: not read until
    /// the plugin has caught up, and owed a `writable` notice once they
    /// drain to half the budget.
    blocked: HashSet<u64>,
    /// Blocked streams whose `writable` notice is on its way. If the
    /// plugin's `writable` call ends without another partial write, the
    /// stream is read again.
    notified: HashSet<u64>,
    /// Client-opened bidirectional streams we may still write on.
    peer_streams: HashSet<u64>,
    /// Our streams (server-opened) whose sending side ended.
    local_done: HashSet<u64>,
    /// The index one past the highest stream of ours (bidirectional,
    /// unidirectional) the plugin has written: QUIC opens streams in
    /// order, so a plugin may name the next one but not one far beyond
    /// (which could never open, and would hold its bytes forever).
    next_local: [u64; 2],
    /// Streams whose fin went to quiche and that quiche still holds (their
    /// bytes not all acknowledged): what a graceful close waits for.
    fin_sent: Vec<u64>,
    inbound_pending: usize,
    close: Option<Close>,
    closed: bool,
    stats: Stats,
    dgram_max: Option<usize>,
}

fn is_local(stream: u64) -> bool {
    stream & 1 == 1
}

fn is_bidi(stream: u64) -> bool {
    stream & 2 == 0
}

impl Shared {
    fn writable_stream(&self, stream: u64) -> Result<(), Refused> {
        if self.closed || self.close.is_some() {
            return Err(Refused::Closed);
        }
        let open = if is_local(stream) {
            stream >> 2 <= self.next_local[usize::from(!is_bidi(stream))]
                && !self.local_done.contains(&stream)
        } else {
            is_bidi(stream) && self.peer_streams.contains(&stream)
        };
        if !open || self.out.get(&stream).is_some_and(|o| o.fin) {
            return Err(Refused::InvalidStream);
        }
        Ok(())
    }

    /// Queues a prefix of `data` on `stream` within its budget; returns its
    /// length. `fin` counts only if all of `data` fit.
    pub(crate) fn stream_send(
        &mut self,
        stream: u64,
        data: &[u8],
        fin: bool,
    ) -> Result<usize, Refused> {
        self.writable_stream(stream)?;
        // Only a write that opens the stream (bytes or a fin) makes it
        // used: empty writes must not walk the bound forward.
        if is_local(stream) && (!data.is_empty() || fin) {
            let next = &mut self.next_local[usize::from(!is_bidi(stream))];
            *next = (*next).max((stream >> 2) + 1);
        }
        if !self.out.contains_key(&stream)
            && self.out.len() >= MAX_QUEUED_STREAMS
            && !data.is_empty()
        {
            // Held back like any full stream: `writable` follows once
            // other streams drain.
            self.blocked.insert(stream);
            self.notified.remove(&stream);
            return Ok(0);
        }
        let conn_room = self.budget.0.saturating_sub(self.queued);
        let out = self.out.entry(stream).or_default();
        let room = STREAM_BUDGET.saturating_sub(out.buf.len()).min(conn_room);
        let n = data.len().min(room);
        out.buf.extend_from_slice(&data[..n]);
        self.queued += n;
        if n < data.len() {
            self.blocked.insert(stream);
        } else {
            out.fin = fin;
            self.blocked.remove(&stream);
        }
        self.notified.remove(&stream);
        Ok(n)
    }

    pub(crate) fn reset_stream(&mut self, stream: u64, code: u64) -> Result<(), Refused> {
        valid_code(code)?;
        self.writable_stream(stream)?;
        if let Some(o) = self.out.remove(&stream) {
            self.queued -= o.buf.len();
        }
        self.blocked.remove(&stream);
        self.notified.remove(&stream);
        self.end_sending(stream);
        self.ops.push_back(Op::Reset(stream, code));
        Ok(())
    }

    pub(crate) fn stop_sending(&mut self, stream: u64, code: u64) -> Result<(), Refused> {
        valid_code(code)?;
        if self.closed || self.close.is_some() {
            return Err(Refused::Closed);
        }
        // Only streams the client sends on can be stopped.
        if is_local(stream) && !is_bidi(stream) {
            return Err(Refused::InvalidStream);
        }
        self.ops.push_back(Op::StopSending(stream, code));
        Ok(())
    }

    pub(crate) fn send_datagram(&mut self, data: Vec<u8>) -> Result<(), Refused> {
        if self.closed || self.close.is_some() {
            return Err(Refused::Closed);
        }
        match self.dgram_max {
            Some(max) if data.len() <= max => {}
            _ => return Err(Refused::InvalidArgument),
        }
        if self.datagrams >= DATAGRAM_QUEUE {
            return Err(Refused::Blocked);
        }
        self.datagrams += 1;
        self.ops.push_back(Op::Datagram(data));
        Ok(())
    }

    /// Closes the connection once what is queued has been handed to quiche.
    /// A code no QUIC frame can carry closes with the internal error code
    /// instead (the worker also cuts an over-long reason).
    pub(crate) fn close(&mut self, code: u64, reason: String) {
        let code = if valid_code(code).is_ok() {
            code
        } else {
            crate::quic::INTERNAL_ERROR_CODE
        };
        if self.close.is_none() {
            self.close = Some(Close {
                code,
                reason,
                graceful: true,
            });
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        self.stats
    }

    /// The plugin's `writable` call for `stream` returned: unless it wrote
    /// on the stream and was held back again, read the stream again.
    pub(crate) fn writable_handled(&mut self, stream: u64) {
        if self.notified.remove(&stream) {
            self.blocked.remove(&stream);
        }
    }

    /// The plugin handled a batch that counted `cost` against the budget.
    pub(crate) fn release(&mut self, cost: usize) {
        self.inbound_pending = self.inbound_pending.saturating_sub(cost);
    }

    fn end_sending(&mut self, stream: u64) {
        if is_local(stream) {
            self.local_done.insert(stream);
        } else {
            self.peer_streams.remove(&stream);
        }
    }
}

/// The plugin task's end of a [`QuicPluginApp`]: pass it to
/// [`Plugin::serve_quic`](crate::plugin::Plugin::serve_quic).
pub struct QuicPluginSession {
    pub(crate) shared: Arc<Mutex<Shared>>,
    pub(crate) from_worker: mpsc::UnboundedReceiver<ToPlugin>,
    wake: mpsc::Sender<()>,
}

impl std::fmt::Debug for QuicPluginSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicPluginSession").finish_non_exhaustive()
    }
}

impl QuicPluginSession {
    /// Tells the worker the plugin queued something (or ended).
    pub(crate) fn wake(&self) {
        let _ = self.wake.try_send(());
    }

    /// The plugin failed: close the connection with [`INTERNAL_ERROR_CODE`].
    pub(crate) fn fail(&self) {
        self.close_now(INTERNAL_ERROR_CODE, "plugin failed");
    }

    /// Closes the connection at once with `code` (the plugin gets no say).
    pub(crate) fn close_now(&self, code: u64, reason: &str) {
        let mut sh = lock(&self.shared);
        sh.close = Some(Close {
            code,
            reason: reason.into(),
            graceful: false,
        });
        drop(sh);
        self.wake();
    }
}

/// An application error code a QUIC frame can carry (at most 2^62 - 1);
/// quiche's encoder panics on a larger one, so it never gets there.
fn valid_code(code: u64) -> Result<(), Refused> {
    if code > crate::quic::varint::MAX {
        Err(Refused::InvalidArgument)
    } else {
        Ok(())
    }
}

pub(crate) fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic while holding the lock cannot leave `Shared` inconsistent in a
    // way that matters more than losing the connection would.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// The [`ApplicationOverQuic`] of a connection served by a raw-QUIC plugin.
///
/// ```no_run
/// # async fn demo(plugin: tq_host::plugin::Plugin, incoming: tq_host::quic::IncomingConnection<tq_host::metrics::DefaultMetrics>) {
/// use tq_host::plugin::QuicPluginApp;
/// let (app, session) = QuicPluginApp::new();
/// incoming.start(app);
/// plugin.serve_quic(session, std::future::pending()).await;
/// # }
/// ```
pub struct QuicPluginApp {
    shared: Arc<Mutex<Shared>>,
    to_plugin: mpsc::UnboundedSender<ToPlugin>,
    wake: mpsc::Receiver<()>,
    scratch: Vec<u8>,
    /// Set once the plugin asked to close: when, and whether everything it
    /// queued has been handed to quiche and flushed once.
    closing: Option<Closing>,
}

impl std::fmt::Debug for QuicPluginApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicPluginApp").finish_non_exhaustive()
    }
}

impl QuicPluginApp {
    /// An application and the session its plugin task serves, with the
    /// default limit on what the plugin may queue (4 MiB).
    pub fn new() -> (Self, QuicPluginSession) {
        Self::with_queue_limit(CONNECTION_BUDGET)
    }

    /// As [`new`](Self::new), the plugin's writes held back once `bytes`
    /// are queued on the connection (`PluginLimits::queued_bytes`).
    pub fn with_queue_limit(bytes: usize) -> (Self, QuicPluginSession) {
        let shared = Arc::new(Mutex::new(Shared {
            budget: Budget(bytes.max(1)),
            ..Shared::default()
        }));
        let (to_plugin, from_worker) = mpsc::unbounded_channel();
        let (wake_tx, wake) = mpsc::channel(1);
        (
            Self {
                shared: shared.clone(),
                to_plugin,
                wake,
                scratch: vec![0; READ_CHUNK],
                closing: None,
            },
            QuicPluginSession {
                shared,
                from_worker,
                wake: wake_tx,
            },
        )
    }

    /// Reads what the budget allows from readable streams (skipping blocked
    /// ones) and datagrams, and sends it to the plugin as one batch.
    fn pump_reads(&mut self, qconn: &mut quiche::Connection, sh: &mut Shared) {
        let mut batch = Vec::new();
        let mut cost = 0;
        let readable: Vec<u64> = qconn.readable().collect();
        for stream in readable {
            if sh.blocked.contains(&stream) {
                continue;
            }
            if !is_local(stream) && is_bidi(stream) && !sh.peer_streams.contains(&stream) {
                sh.peer_streams.insert(stream);
            }
            while sh.inbound_pending + cost < INBOUND_BUDGET {
                match qconn.stream_recv(stream, &mut self.scratch) {
                    Ok((n, fin)) => {
                        batch.push(Incoming::Data {
                            stream,
                            data: self.scratch[..n].to_vec(),
                            fin,
                        });
                        cost += n.max(EVENT_COST);
                        if fin {
                            break;
                        }
                    }
                    Err(quiche::Error::StreamReset(code)) => {
                        batch.push(Incoming::Reset { stream, code });
                        cost += EVENT_COST;
                        break;
                    }
                    Err(quiche::Error::Done) => break,
                    Err(e) => {
                        debug!(stream, error = %e, "stream not readable");
                        break;
                    }
                }
            }
        }
        while sh.inbound_pending + cost < INBOUND_BUDGET {
            match qconn.dgram_recv(&mut self.scratch) {
                Ok(n) => {
                    batch.push(Incoming::Datagram(self.scratch[..n].to_vec()));
                    cost += n.max(EVENT_COST);
                }
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            sh.inbound_pending += cost;
            let _ = self.to_plugin.send(ToPlugin::Read(batch, cost));
        }
    }

    /// Hands queued operations and stream bytes to quiche.
    fn apply(&mut self, qconn: &mut quiche::Connection, sh: &mut Shared) -> QuicResult<()> {
        while let Some(op) = sh.ops.pop_front() {
            // Errors here concern one stream or datagram that is already
            // gone or refused; the connection goes on.
            let res = match op {
                Op::Reset(id, code) => qconn.stream_shutdown(id, quiche::Shutdown::Write, code),
                Op::StopSending(id, code) => {
                    qconn.stream_shutdown(id, quiche::Shutdown::Read, code)
                }
                Op::Datagram(d) => qconn.dgram_send(&d),
            };
            if let Err(e) = res {
                debug!(error = %e, "plugin operation not applied");
            }
        }
        sh.datagrams = 0;
        let mut ended = Vec::new();
        let mut emptied = Vec::new();
        for (&id, out) in sh.out.iter_mut() {
            if out.buf.is_empty() && !out.fin {
                emptied.push(id);
                continue;
            }
            match qconn.stream_send(id, &out.buf, out.fin) {
                Ok(n) => {
                    out.buf.advance(n);
                    sh.queued -= n;
                    if out.buf.is_empty() && out.fin {
                        ended.push((id, None));
                        sh.fin_sent.push(id);
                    } else if out.buf.is_empty() {
                        // Nothing left to send: the entry goes (a stream
                        // that is still open needs none), so entries count
                        // only streams holding bytes.
                        emptied.push(id);
                    }
                }
                // Gone already (quiche collects a stream once it is done
                // both ways, e.g. after the client's STOP_SENDING): what is
                // queued can never leave.
                Err(quiche::Error::Done) if qconn.stream_closed(id) => ended.push((id, Some(0))),
                Err(quiche::Error::Done) | Err(quiche::Error::StreamLimit) => {}
                Err(quiche::Error::StreamStopped(code)) => ended.push((id, Some(code))),
                Err(e @ (quiche::Error::InvalidStreamState(_) | quiche::Error::FinalSize)) => {
                    debug!(stream = id, error = %e, "plugin wrote on a stream it cannot");
                    ended.push((id, Some(0)));
                }
                Err(e) => return Err(e.into()),
            }
        }
        for id in emptied {
            sh.out.remove(&id);
        }
        for (id, stopped) in ended {
            if let Some(o) = sh.out.remove(&id) {
                sh.queued -= o.buf.len();
            }
            sh.end_sending(id);
            if let Some(code) = stopped {
                sh.blocked.remove(&id);
                sh.notified.remove(&id);
                let _ = self
                    .to_plugin
                    .send(ToPlugin::Notice(Notice::Stopped { stream: id, code }));
            }
        }
        let drained: Vec<u64> = sh
            .blocked
            .iter()
            .copied()
            .filter(|id| !sh.notified.contains(id))
            // Room on the connection too, or the plugin would be told to
            // write only to find it full again.
            .filter(|_| sh.queued <= sh.budget.0 / 2 && sh.out.len() < MAX_QUEUED_STREAMS)
            .filter(|id| {
                sh.out
                    .get(id)
                    .is_none_or(|o| o.buf.len() <= STREAM_BUDGET / 2)
            })
            .collect();
        for id in drained {
            sh.notified.insert(id);
            let _ = self.to_plugin.send(ToPlugin::Notice(Notice::Writable(id)));
        }
        Ok(())
    }
}

impl ApplicationOverQuic for QuicPluginApp {
    fn on_conn_established(
        &mut self,
        qconn: &mut quiche::Connection,
        info: &HandshakeInfo,
    ) -> QuicResult<()> {
        lock(&self.shared).dgram_max = qconn.dgram_max_writable_len();
        self.to_plugin
            .send(ToPlugin::Established(info.clone()))
            .map_err(|_| "the plugin's task is gone")?;
        Ok(())
    }

    async fn wait_for_data(&mut self, _qconn: &mut quiche::Connection) -> QuicResult<()> {
        if let Some(c) = self.closing {
            // Flushed but not yet looked at: look now. Otherwise sending or
            // waiting for acknowledgements (packets wake the worker): wake
            // when the linger ends, or give up at the limit.
            if c.flushed && !c.checked {
                return Ok(());
            }
            let limit = c.since + CLOSE_FLUSH_LIMIT;
            let wake = c.close_at.map_or(limit, |t| t.min(limit));
            tokio::time::sleep_until(wake.into()).await;
            return Ok(());
        }
        // Receiving from an mpsc channel is cancel-safe.
        match self.wake.recv().await {
            Some(()) => Ok(()),
            None => Err("the plugin's task ended".into()),
        }
    }

    fn process_reads(&mut self, qconn: &mut quiche::Connection) -> QuicResult<()> {
        let shared = self.shared.clone();
        let mut sh = lock(&shared);
        self.pump_reads(qconn, &mut sh);
        Ok(())
    }

    fn process_writes(&mut self, qconn: &mut quiche::Connection) -> QuicResult<()> {
        let shared = self.shared.clone();
        let mut sh = lock(&shared);
        let stats = qconn.stats();
        let path = qconn.path_stats().next();
        sh.stats = Stats {
            rtt_us: path.as_ref().map_or(0, |p| p.rtt.as_micros() as u64),
            cwnd: path.as_ref().map_or(0, |p| p.cwnd as u64),
            sent_bytes: stats.sent_bytes,
            recv_bytes: stats.recv_bytes,
            sent_packets: stats.sent as u64,
            recv_packets: stats.recv as u64,
            lost_packets: stats.lost as u64,
        };
        sh.dgram_max = qconn.dgram_max_writable_len();
        self.apply(qconn, &mut sh)?;
        // quiche drops a stream once everything sent on it is acknowledged
        // (and everything received read).
        sh.fin_sent.retain(|&id| {
            !matches!(
                qconn.stream_capacity(id),
                Err(quiche::Error::InvalidStreamState(_))
            )
        });
        if let Some(c) = &sh.close {
            // A plugin's own close goes out once what it wrote was handed to
            // quiche, sent, and acknowledged, plus a short linger for the
            // client to read it (quiche would drop unsent data, and a client
            // may drop unread data, on CONNECTION_CLOSE), or at a limit; a
            // failed plugin's at once.
            let now = Instant::now();
            let closing = self.closing.get_or_insert(Closing {
                since: now,
                flushed: false,
                checked: false,
                close_at: None,
            });
            let drained = sh.out.values().all(|o| o.buf.is_empty() && !o.fin);
            if closing.flushed {
                closing.checked = true;
                if sh.fin_sent.is_empty() && closing.close_at.is_none() {
                    let rtt = qconn.path_stats().next().map_or(Duration::ZERO, |p| p.rtt);
                    closing.close_at = Some(now + (rtt * 3).max(CLOSE_LINGER));
                }
            }
            let lingered = closing.close_at.is_some_and(|t| now >= t);
            if !c.graceful || lingered || now >= closing.since + CLOSE_FLUSH_LIMIT {
                return Err(Box::new(ApplicationClose {
                    code: c.code,
                    reason: c.reason.clone(),
                }));
            }
            closing.flushed = drained;
            return Ok(());
        }
        // Streams that were blocked or over budget may be readable now.
        self.pump_reads(qconn, &mut sh);
        Ok(())
    }

    fn on_conn_close<M: Metrics>(
        &mut self,
        _qconn: &mut quiche::Connection,
        _metrics: &M,
        _result: &QuicResult<()>,
    ) {
        lock(&self.shared).closed = true;
        let _ = self.to_plugin.send(ToPlugin::Closed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_accepted_up_to_the_budget_and_fin_only_when_whole() {
        let mut sh = Shared::default();
        sh.peer_streams.insert(0);
        let big = vec![7u8; STREAM_BUDGET + 10];
        assert_eq!(sh.stream_send(0, &big, true), Ok(STREAM_BUDGET));
        assert!(sh.blocked.contains(&0), "a partial write blocks the stream");
        assert!(!sh.out[&0].fin, "fin counts only if every byte fit");
        assert_eq!(sh.stream_send(0, b"more", false), Ok(0));
    }

    #[test]
    fn only_open_streams_can_be_written() {
        let mut sh = Shared::default();
        // A client stream never seen, a client uni stream: refused.
        assert_eq!(sh.stream_send(4, b"x", false), Err(Refused::InvalidStream));
        assert_eq!(sh.stream_send(2, b"x", false), Err(Refused::InvalidStream));
        // Our own streams open on first write; finished ones stay closed.
        assert_eq!(sh.stream_send(1, b"x", true), Ok(1));
        assert_eq!(sh.stream_send(1, b"y", false), Err(Refused::InvalidStream));
        sh.end_sending(3);
        assert_eq!(sh.stream_send(3, b"x", false), Err(Refused::InvalidStream));
        sh.close(5, "bye".into());
        assert_eq!(sh.stream_send(5, b"x", false), Err(Refused::Closed));
    }

    #[test]
    fn a_blocked_stream_is_read_again_only_once_the_plugin_caught_up() {
        let mut sh = Shared::default();
        sh.peer_streams.insert(0);
        let big = vec![0u8; STREAM_BUDGET * 2];
        sh.stream_send(0, &big, false).unwrap();
        // The worker sent `writable`; the plugin's call writes and is held
        // back again: still blocked after the call.
        sh.notified.insert(0);
        let sent = std::mem::take(&mut sh.out.get_mut(&0).unwrap().buf);
        sh.queued -= sent.len();
        assert_eq!(sh.stream_send(0, &big, false), Ok(STREAM_BUDGET));
        sh.writable_handled(0);
        assert!(sh.blocked.contains(&0));
        // Next time its `writable` call returns without a partial write.
        sh.notified.insert(0);
        sh.writable_handled(0);
        assert!(!sh.blocked.contains(&0));
    }

    #[test]
    fn made_up_streams_cannot_pin_more_than_the_connection_budget() {
        let mut sh = Shared::default();
        let chunk = vec![1u8; STREAM_BUDGET];
        // Our stream ids far past the next one: refused.
        for id in [1_000_001, 1_000_003, u64::MAX, (1 << 62) + 1] {
            assert_eq!(sh.stream_send(id, b"x", false), Err(Refused::InvalidStream));
        }
        // The next one, then the next, ... as a plugin opening streams in
        // order does: bounded by the budgets.
        let mut accepted = 0;
        for i in 0..(MAX_QUEUED_STREAMS as u64 + 100) {
            accepted += sh.stream_send(3 + i * 4, &chunk, false).unwrap();
        }
        assert_eq!(accepted, CONNECTION_BUDGET);
        assert_eq!(sh.queued, CONNECTION_BUDGET);
        assert!(sh.out.len() <= MAX_QUEUED_STREAMS);
        // Resetting a stream gives its bytes back.
        let id = *sh.out.iter().find(|(_, o)| !o.buf.is_empty()).unwrap().0;
        sh.reset_stream(id, 0).unwrap();
        assert_eq!(sh.queued, CONNECTION_BUDGET - STREAM_BUDGET);
    }

    #[test]
    fn datagrams_need_support_a_size_and_room() {
        let mut sh = Shared::default();
        assert_eq!(sh.send_datagram(vec![1]), Err(Refused::InvalidArgument));
        sh.dgram_max = Some(10);
        assert_eq!(sh.send_datagram(vec![0; 11]), Err(Refused::InvalidArgument));
        for _ in 0..DATAGRAM_QUEUE {
            sh.send_datagram(vec![1]).unwrap();
        }
        assert_eq!(sh.send_datagram(vec![1]), Err(Refused::Blocked));
    }
}
