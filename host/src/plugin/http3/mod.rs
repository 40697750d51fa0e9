//! Runs an `http3-app` plugin on one connection: turns H3 controller events
//! and stream frames into `on-event` calls, and waits natively for what the
//! plugin asked for (`wait-for-data`).
//!
//! Request bodies are read by one small task per request (owned by this
//! loop's `JoinSet`) into a single bounded channel, so a plugin that is slow
//! to take events holds back the client through flow control.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::HashMap;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, warn, Instrument};
use wasmtime::Store;

use super::bindings::h3::tq::plugin::h3_types::{Event, RequestHead};
use super::bindings::h3::tq::plugin::types::{ConnectionInfo, Header};
use super::bindings::h3::Http3App;
use super::h3_host::H3Conn;
use super::instance::{call, log_output, new_store, sleep_until};
use super::state::PluginState;
use super::{ConnectionMeta, ConnectionPin, Inner, Pre};
use crate::http3::{H3Controller, H3Event, H3Handle, InboundFrame, NameValue, H3_INTERNAL_ERROR};

/// Frames of request bodies waiting for the plugin, across all requests of
/// the connection. Small, because frames already queued still reach a
/// plugin whose response is blocked (the pause stops only new reads): at 64
/// KiB a frame, 8 keep that under half a MiB of plugin memory where 64 let
/// an echo through a 16 MiB plugin hit its cap under load.
const INBOUND_QUEUE: usize = 8;

enum Wake {
    Event(Option<H3Event>),
    Frame(u64, InboundFrame),
    Writable(u64),
    Timer,
    Retired,
}

/// Keeps the version's count of requests in flight in step with this
/// connection's; gives its share back when dropped.
struct RequestGauge<'a> {
    plugin: &'a Inner,
    mine: usize,
}

impl<'a> RequestGauge<'a> {
    fn new(plugin: &'a Inner) -> Self {
        Self { plugin, mine: 0 }
    }

    fn set(&mut self, n: usize) {
        let counter = &self.plugin.live.requests;
        if n > self.mine {
            counter.fetch_add(n - self.mine, Ordering::Relaxed);
        } else {
            counter.fetch_sub(self.mine - n, Ordering::Relaxed);
        }
        self.mine = n;
    }
}

impl Drop for RequestGauge<'_> {
    fn drop(&mut self) {
        self.set(0);
    }
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
    plugin: Arc<Inner>,
    controller: H3Controller,
    meta: ConnectionMeta,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let span = tracing::info_span!("plugin", file = %plugin.path.display(), peer = %meta.peer);
    run(plugin, controller, meta, shutdown)
        .instrument(span)
        .await
}

async fn run(
    plugin: Arc<Inner>,
    mut controller: H3Controller,
    meta: ConnectionMeta,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let _pin = ConnectionPin::new(plugin.clone());
    let mut retired = plugin.live.retired.subscribe();
    let mut going_away = false;
    let mut requests = RequestGauge::new(&plugin);
    let handle = controller.handle();
    let mut store = match new_store(&plugin, H3Conn::new(handle.clone())) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %format!("{e:#}"), "cannot set up the plugin; closing the connection");
            handle.close(H3_INTERNAL_ERROR, "plugin setup failed");
            return;
        }
    };

    let Pre::Http3(pre) = &plugin.pre else {
        warn!("not an HTTP/3 plugin; closing the connection");
        handle.close(H3_INTERNAL_ERROR, "plugin failed");
        return;
    };
    store.data_mut().start_call();
    let app = match pre.instantiate_async(&mut store).await {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %format!("{e:#}"), "plugin failed to instantiate; closing the connection");
            handle.close(H3_INTERNAL_ERROR, "plugin failed");
            return;
        }
    };

    let (frames_tx, mut frames) = mpsc::channel::<(u64, InboundFrame)>(INBOUND_QUEUE);
    let mut readers = JoinSet::new();
    let mut writable = JoinSet::new();
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

    // Per request with a body: whether its reader holds the body back.
    let mut pauses: HashMap<u64, watch::Sender<bool>> = HashMap::new();
    while !failed {
        requests.set(store.data().conn.streams.len());
        for id in arm_writable(&mut store, &mut writable) {
            if let Some(p) = pauses.get(&id) {
                p.send_replace(true);
            }
        }
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
        let deadline = wait
            .deadline_ms
            .map(|ms| store.data().established + Duration::from_millis(ms));
        let wake = tokio::select! {
            ev = controller.next_event() => Wake::Event(ev),
            Some((id, f)) = frames.recv() => Wake::Frame(id, f),
            Some(Ok(id)) = writable.join_next(), if !writable.is_empty() => Wake::Writable(id),
            () = sleep_until(deadline) => Wake::Timer,
            Some(_) = readers.join_next(), if !readers.is_empty() => continue,
            Ok(()) = async { retired.wait_for(|r| *r).await.map(|_| ()) }, if !going_away => Wake::Retired,
            () = &mut shutdown, if !going_away => Wake::Retired,
        };
        let event = match wake {
            Wake::Event(None) | Wake::Event(Some(H3Event::ConnectionShutdown { .. })) => break,
            Wake::Event(Some(H3Event::IncomingRequest(req))) => {
                let id = req.stream_id;
                store.data_mut().conn.streams.insert(id, req.response);
                let end = req.body.is_none();
                if let Some(mut body) = req.body {
                    let tx = frames_tx.clone();
                    let (pause_tx, mut paused) = watch::channel(false);
                    pauses.insert(id, pause_tx);
                    readers.spawn(async move {
                        while let Some(f) = body.recv().await {
                            // Hold the body while the plugin's response on
                            // this stream is blocked: a slow reader then
                            // slows the uploader instead of filling the
                            // plugin's memory (an echo, say).
                            while *paused.borrow_and_update() {
                                if paused.changed().await.is_err() {
                                    break;
                                }
                            }
                            match f {
                                // Resets reach the plugin through the
                                // controller's StreamReset event.
                                InboundFrame::Reset(_) => break,
                                InboundFrame::Finished => {
                                    let _ = tx.send((id, f)).await;
                                    break;
                                }
                                f => {
                                    if tx.send((id, f)).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    });
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
                pauses.remove(&stream_id);
                Event::Reset((stream_id, code))
            }
            Wake::Event(Some(_)) => continue,
            Wake::Frame(id, InboundFrame::Body(b)) => Event::Body((id, b.to_vec())),
            Wake::Frame(id, InboundFrame::Headers(h)) => Event::Trailers((id, headers(&h))),
            Wake::Frame(id, InboundFrame::Finished) => {
                pauses.remove(&id);
                Event::Finished(id)
            }
            Wake::Frame(_, InboundFrame::Reset(_)) => continue,
            Wake::Writable(id) => {
                if let Some(p) = pauses.get(&id) {
                    p.send_replace(false);
                }
                Event::Writable(id)
            }
            Wake::Timer => Event::Timer,
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
    log_output(&mut store);
    readers.abort_all();
    writable.abort_all();
}

/// Starts a wait for every stream the plugin found full; returns them.
fn arm_writable(store: &mut Store<PluginState<H3Conn>>, writable: &mut JoinSet<u64>) -> Vec<u64> {
    let s = &mut store.data_mut().conn;
    let ids = std::mem::take(&mut s.want_writable);
    for &id in &ids {
        if let Some(sender) = s.streams.get(&id) {
            let sender = sender.clone();
            writable.spawn(async move {
                sender.ready().await;
                id
            });
        }
    }
    ids
}

/// Measures, for benchmarks: the mean time to instantiate the plugin, and
/// the mean time of one `wait-for-data` call (the cheapest hook), over `n`.
pub(super) async fn measure(
    plugin: &Inner,
    handle: H3Handle,
    n: u32,
) -> anyhow::Result<(Duration, Duration)> {
    let Pre::Http3(pre) = &plugin.pre else {
        anyhow::bail!("{} is not an HTTP/3 plugin", plugin.path.display());
    };
    let n = n.max(1);
    let started = Instant::now();
    for _ in 0..n {
        let mut store = new_store(plugin, H3Conn::new(handle.clone()))?;
        pre.instantiate_async(&mut store)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    let instantiate = started.elapsed() / n;
    let mut store = new_store(plugin, H3Conn::new(handle))?;
    let app = pre
        .instantiate_async(&mut store)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let started = Instant::now();
    for _ in 0..n {
        app.tq_plugin_h3_handler()
            .call_wait_for_data(&mut store)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    Ok((instantiate, started.elapsed() / n))
}
