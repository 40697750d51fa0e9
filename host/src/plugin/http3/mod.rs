//! Runs an `http3-app` plugin on one connection: turns H3 controller events
//! and request body frames into `on-event` calls, and waits natively for
//! what the plugin asked for (`wait-for-data`).
//!
//! The loop pulls: it polls the controller, each request's body receiver
//! and each blocked response's readiness itself, in one task, and hands
//! the plugin one event per call. Bodies stay in the driver's bounded
//! per-stream channels until the plugin takes them, so nothing queues in
//! between, and a request whose response is blocked is simply not polled
//! until the client reads: its channel fills and QUIC flow control holds
//! the uploader back (an echo cannot fill the plugin's memory).

pub(crate) mod host;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tracing::{debug, warn, Instrument};
use wasmtime::Store;

use super::bindings::h3::tq::plugin::h3_types::{Event, RequestHead};
use super::bindings::h3::tq::plugin::types::{ConnectionInfo, Header};
use super::bindings::h3::Http3App;
use super::sandbox::{
    call, instantiate, log_final_output, new_store, sleep_until, timer_at, PluginState,
};
use super::version::{ConnectionPin, RequestGauge, Version};
use super::world::ConnectionMeta;
use crate::http3::{
    BodyReceiver, H3Controller, H3Event, H3Handle, InboundFrame, NameValue, H3_INTERNAL_ERROR,
    H3_REQUEST_CANCELLED,
};
use crate::quic::id_map::IdMap;
use host::{H3Conn, Http3Pre};

enum Wake {
    Event(Option<H3Event>),
    Frame(u64, Option<InboundFrame>),
    Writable(u64),
    Timer,
    Retired,
    Killed,
}

fn headers(list: &[crate::http3::Header]) -> Vec<Header> {
    list.iter()
        .map(|h| Header {
            name: String::from_utf8_lossy(h.name()).into_owned(),
            value: h.value().to_vec(),
        })
        .collect()
}

pub(super) async fn serve(
    plugin: Arc<Version>,
    pre: Http3Pre,
    controller: H3Controller,
    meta: ConnectionMeta,
    shutdown: impl Future<Output = ()> + Send,
) {
    let span = tracing::info_span!("plugin", file = %plugin.path.display(), peer = %meta.peer);
    run(plugin, pre, controller, meta, shutdown)
        .instrument(span)
        .await
}

/// The request bodies the plugin has not finished reading, polled in turn
/// so that one busy upload cannot starve the others.
#[derive(Default)]
struct Bodies {
    streams: Vec<(u64, BodyReceiver)>,
    next: usize,
}

impl Bodies {
    fn insert(&mut self, id: u64, rx: BodyReceiver) {
        self.streams.push((id, rx));
    }

    fn remove(&mut self, id: u64) {
        self.streams.retain(|(s, _)| *s != id);
    }

    /// The next frame of any stream not in `paused`; a stream whose body
    /// ended (frame `Finished`, `Reset` or `None`) is dropped here.
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
        paused: &IdMap<WritableWait>,
    ) -> Poll<(u64, Option<InboundFrame>)> {
        let n = self.streams.len();
        for i in 0..n {
            let at = (self.next + i) % n;
            let (id, rx) = &mut self.streams[at];
            if paused.contains_key(id) {
                continue;
            }
            if let Poll::Ready(f) = rx.poll_recv(cx) {
                let id = *id;
                let ended = !matches!(f, Some(InboundFrame::Body(_) | InboundFrame::Headers(_)));
                if ended {
                    self.streams.swap_remove(at);
                }
                self.next = at + 1;
                return Poll::Ready((id, f));
            }
        }
        Poll::Pending
    }
}

/// A blocked response's wait for room in its stream channel.
type WritableWait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The first blocked response that has room again.
fn poll_writable(cx: &mut Context<'_>, waits: &mut IdMap<WritableWait>) -> Poll<u64> {
    let ready = waits
        .iter_mut()
        .find_map(|(id, w)| w.as_mut().poll(cx).is_ready().then_some(*id));
    match ready {
        Some(id) => {
            waits.remove(&id);
            Poll::Ready(id)
        }
        None => Poll::Pending,
    }
}

/// The most events delivered between two `wait-for-data` calls: a bound,
/// so the plugin's idea of what it waits for is asked often enough.
const MAX_BATCH: usize = 32;

async fn run(
    plugin: Arc<Version>,
    pre: Http3Pre,
    mut controller: H3Controller,
    meta: ConnectionMeta,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let _pin = ConnectionPin::new(plugin.clone());
    let mut going_away = false;
    let mut requests = RequestGauge::new(&plugin.live);
    let handle = controller.handle();
    let mut store = match new_store(
        &plugin.sandbox,
        H3Conn::new(handle.clone(), plugin.sandbox.limits.queued_bytes),
    ) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %format!("{e:#}"), "cannot set up the plugin; closing the connection");
            handle.close(H3_INTERNAL_ERROR, "plugin setup failed");
            return;
        }
    };
    let app = match instantiate(pre.instance_pre(), &mut store)
        .await
        .and_then(|i| Http3App::new(&mut store, &i).map_err(|e| anyhow::anyhow!("{e:?}")))
    {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %format!("{e:#}"), "plugin failed to instantiate; closing the connection");
            handle.close(H3_INTERNAL_ERROR, "plugin failed");
            return;
        }
    };

    let info = ConnectionInfo {
        alpn: meta.alpn.clone(),
        server_name: meta.server_name.clone(),
        peer_address: meta.peer.clone(),
    };
    let mut failed = call(&mut store, &app, |s, a: &Http3App| {
        Box::pin(async move { a.tq_plugin_h3_handler().call_on_established(s, &info).await })
    })
    .await
    .is_err();

    let mut bodies = Bodies::default();
    // Streams whose response is blocked, each with its wait for room: their
    // bodies are not read meanwhile.
    let mut writable: IdMap<WritableWait> = IdMap::default();
    let mut last_timer: Option<Instant> = None;
    // Made once, not per event: each makes a watch subscription.
    let mut retired = std::pin::pin!(plugin.live.wait_retired());
    let mut killed = std::pin::pin!(plugin.live.wait_killed());
    // How many events went since `wait-for-data` was last asked: it is
    // asked once per batch (as the WIT says), not after every event, which
    // under load saves a call per request. A batch goes on while anything
    // is ready at once (see `ready_now`) and the plugin's timer is not due.
    let mut batch = 0usize;
    let mut deadline: Option<Instant> = None;
    while !failed {
        // Before anything is looked at, after every call: a stream found
        // full in any of them gets its wait, and its body is not read
        // meanwhile.
        let ready = if batch > 0 && batch < MAX_BATCH {
            arm_writable(&mut store, &mut writable);
            ready_now(
                &mut writable,
                &mut bodies,
                deadline,
                (&mut killed, &mut retired, &mut shutdown),
                going_away,
                &mut controller,
                batch % 2 == 1,
            )
        } else {
            None
        };
        let wake = match ready {
            Some(w) => w,
            None => {
                batch = 0;
                requests.set(store.data().conn.streams.len());
                let wait = match call(&mut store, &app, |s, a: &Http3App| {
                    Box::pin(async move { a.tq_plugin_h3_handler().call_wait_for_data(s).await })
                })
                .await
                {
                    Ok(w) => w,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                };
                deadline = timer_at(store.data().established, wait.deadline_ms, last_timer);
                arm_writable(&mut store, &mut writable);
                tokio::select! {
                    ev = controller.next_event() => Wake::Event(ev),
                    // Room first: it un-pauses a body.
                    w = std::future::poll_fn(|cx| {
                        if let Poll::Ready(id) = poll_writable(cx, &mut writable) {
                            return Poll::Ready(Wake::Writable(id));
                        }
                        bodies.poll_frame(cx, &writable).map(|(id, f)| Wake::Frame(id, f))
                    }) => w,
                    () = sleep_until(deadline) => Wake::Timer,
                    // Polled no more once done: `going_away` is set, or the loop ends.
                    () = &mut retired, if !going_away => Wake::Retired,
                    () = &mut killed => Wake::Killed,
                    () = &mut shutdown, if !going_away => Wake::Retired,
                }
            }
        };
        batch += 1;
        let event = match wake {
            // The version's drain is over: what is left closes now.
            Wake::Killed => {
                debug!("the plugin version is unloaded; closing the connection");
                handle.close(H3_REQUEST_CANCELLED, "plugin version unloaded");
                break;
            }
            Wake::Event(None) | Wake::Event(Some(H3Event::ConnectionShutdown { .. })) => break,
            Wake::Event(Some(H3Event::IncomingRequest(req))) => {
                let id = req.stream_id;
                store.data_mut().conn.streams.insert(id, req.response);
                let end = req.body.is_none();
                if let Some(body) = req.body {
                    bodies.insert(id, body);
                    store.data_mut().conn.reading.insert(id);
                }
                Event::Request(RequestHead {
                    stream: id,
                    headers: headers(&req.headers),
                    end,
                })
            }
            Wake::Event(Some(H3Event::GoAway { .. })) => Event::Goaway,
            Wake::Event(Some(H3Event::StreamReset { stream_id, code })) => {
                store.data_mut().conn.streams.remove(&stream_id);
                store.data_mut().conn.reading.remove(&stream_id);
                bodies.remove(stream_id);
                writable.remove(&stream_id);
                Event::Reset((stream_id, code))
            }
            Wake::Event(Some(_)) => continue,
            Wake::Frame(id, Some(InboundFrame::Body(b))) => Event::Body((id, b.to_vec())),
            Wake::Frame(id, Some(InboundFrame::Headers(h))) => Event::Trailers((id, headers(&h))),
            Wake::Frame(id, Some(InboundFrame::Finished)) => {
                store.data_mut().conn.reading.remove(&id);
                Event::Finished(id)
            }
            // Resets reach the plugin through the controller's StreamReset
            // event; a closed connection through ConnectionShutdown.
            Wake::Frame(id, Some(InboundFrame::Reset(_)) | None) => {
                store.data_mut().conn.reading.remove(&id);
                continue;
            }
            Wake::Writable(id) => Event::Writable(id),
            Wake::Timer => {
                last_timer = Some(Instant::now());
                // Fired: the next comes from the next `wait-for-data`.
                deadline = None;
                Event::Timer
            }
            // The server is stopping, or the version was replaced and its
            // drain deadline passed: stop taking requests; the driver
            // closes once these are answered.
            Wake::Retired => {
                going_away = true;
                handle.goaway();
                Event::Goaway
            }
        };
        failed = call(&mut store, &app, |s, a: &Http3App| {
            Box::pin(async move { a.tq_plugin_h3_handler().call_on_event(s, &event).await })
        })
        .await
        .is_err();
    }

    if failed {
        // The instance may be in any state: it gets no more calls. Its
        // requests' senders drop with the store, resetting their streams.
        handle.close(H3_INTERNAL_ERROR, "plugin failed");
    } else {
        let _ = call(&mut store, &app, |s, a: &Http3App| {
            Box::pin(async move { a.tq_plugin_h3_handler().call_on_close(s).await })
        })
        .await;
        debug!("plugin connection finished");
    }
    log_final_output(&mut store);
}

/// What the wait in [`run`] would wake for at once, if anything, looked at
/// without waiting: room on a stream, a body frame, the version's end, and
/// the controller's next event, which comes first on every other call
/// (`first`) so that neither new requests nor bodies starve the other.
/// `None`: nothing is ready, or the plugin's timer is due, which ends the
/// batch (the plugin may have moved it since: the next `wait-for-data`
/// says).
fn ready_now(
    writable: &mut IdMap<WritableWait>,
    bodies: &mut Bodies,
    deadline: Option<Instant>,
    (killed, retired, shutdown): (
        &mut Pin<&mut impl Future<Output = ()>>,
        &mut Pin<&mut impl Future<Output = ()>>,
        &mut Pin<&mut impl Future<Output = ()>>,
    ),
    going_away: bool,
    controller: &mut H3Controller,
    events_first: bool,
) -> Option<Wake> {
    if deadline.is_some_and(|d| d <= Instant::now()) {
        return None;
    }
    // A no-op waker: whatever is pending is polled again by the real wait,
    // with the task's waker, before the task sleeps.
    let mut cx = Context::from_waker(std::task::Waker::noop());
    if killed.as_mut().poll(&mut cx).is_ready() {
        return Some(Wake::Killed);
    }
    if !going_away
        && (retired.as_mut().poll(&mut cx).is_ready() || shutdown.as_mut().poll(&mut cx).is_ready())
    {
        return Some(Wake::Retired);
    }
    if events_first {
        if let Some(ev) = controller.try_next_event() {
            return Some(Wake::Event(Some(ev)));
        }
    }
    if let Poll::Ready(id) = poll_writable(&mut cx, writable) {
        return Some(Wake::Writable(id));
    }
    if let Poll::Ready((id, f)) = bodies.poll_frame(&mut cx, writable) {
        return Some(Wake::Frame(id, f));
    }
    if events_first {
        return None;
    }
    controller.try_next_event().map(|ev| Wake::Event(Some(ev)))
}

/// Starts a wait for room on every stream the plugin found full.
fn arm_writable(store: &mut Store<PluginState<H3Conn>>, waits: &mut IdMap<WritableWait>) {
    let s = &mut store.data_mut().conn;
    let budget = s.budget;
    for id in std::mem::take(&mut s.want_writable) {
        if let Some(sender) = s.streams.get(&id) {
            let sender = sender.clone();
            waits.entry(id).or_insert_with(|| {
                Box::pin(async move {
                    // Room in the stream's channel, and in the connection's
                    // byte budget.
                    sender.ready().await;
                    sender.shared.below(budget).await;
                })
            });
        }
    }
}

/// Instantiates the plugin once in a scratch store, checks its exports and
/// runs its optional `init`.
pub(super) async fn validate(version: &Version, pre: &Http3Pre) -> Result<(), String> {
    let (_driver, controller) = crate::http3::ServerH3Driver::new_server(Default::default());
    let mut store = new_store(
        &version.sandbox,
        H3Conn::new(controller.handle(), version.sandbox.limits.queued_bytes),
    )
    .map_err(|e| format!("{e:#}"))?;
    let instance = instantiate(pre.instance_pre(), &mut store)
        .await
        .map_err(|e| format!("{e:#}"))?;
    Http3App::new(&mut store, &instance).map_err(|e| format!("its exports do not match: {e:?}"))?;
    version.run_init(&mut store, &instance).await
}

/// Measures, for benchmarks: the mean time to instantiate the plugin, and
/// the mean time of one `wait-for-data` call (the cheapest hook), over `n`.
pub(super) async fn measure(
    plugin: &Version,
    pre: &Http3Pre,
    handle: H3Handle,
    n: u32,
) -> Result<(Duration, Duration), String> {
    let n = n.max(1);
    let err = |e: wasmtime::Error| format!("{e:?}");
    let started = Instant::now();
    for _ in 0..n {
        let mut store = new_store(
            &plugin.sandbox,
            H3Conn::new(handle.clone(), plugin.sandbox.limits.queued_bytes),
        )
        .map_err(|e| format!("{e:#}"))?;
        pre.instantiate_async(&mut store).await.map_err(err)?;
    }
    let instantiate = started.elapsed() / n;
    let mut store = new_store(
        &plugin.sandbox,
        H3Conn::new(handle, plugin.sandbox.limits.queued_bytes),
    )
    .map_err(|e| format!("{e:#}"))?;
    let app = pre.instantiate_async(&mut store).await.map_err(err)?;
    let started = Instant::now();
    for _ in 0..n {
        app.tq_plugin_h3_handler()
            .call_wait_for_data(&mut store)
            .await
            .map_err(err)?;
    }
    Ok((instantiate, started.elapsed() / n))
}
