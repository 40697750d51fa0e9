//! Runs a `quic-app` plugin on one connection: a task that owns the
//! instance's store, turns what the worker sends (through the bridge) into
//! `on-read` / `on-event` calls, and waits natively for what the plugin asked
//! for (`wait-for-data`).
//!
//! On a reload the connection may move to the new version between calls
//! (`tq:plugin/migrate`): the old instance exports its state, a fresh
//! instance of the new version imports it, and the loop goes on with the new
//! one. The bridge (streams, budgets) is the host's and does not move.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn, Instrument};
use wasmtime::component::Instance;
use wasmtime::Store;

mod bridge;
pub(crate) mod host;

pub use bridge::{QuicPluginApp, QuicPluginSession};

use super::bindings::h3::tq::plugin::types::ConnectionInfo;
use super::bindings::quic::tq::plugin::quic_types::{Event, Incoming, StreamData};
use super::bindings::quic::QuicApp;
use super::sandbox::{
    call, call_export, instantiate, log_final_output, new_store, sleep_until, timer_at, PluginState,
};
use super::version::{ConnectionPin, Version};
use super::world::MIGRATE_EXPORT;
use bridge::{lock, Notice, ToPlugin};
use host::{QuicConn, QuicPre};
use tokio::sync::watch;

/// What a raw-QUIC version holds beyond what every world does: its linked
/// component, and the version its connections may move to (`migrate`).
pub(crate) struct QuicWorld {
    pub(crate) pre: QuicPre,
    pub(crate) successor: watch::Sender<Option<QuicTarget>>,
}

impl QuicWorld {
    pub(crate) fn new(pre: QuicPre) -> Self {
        Self {
            pre,
            successor: watch::Sender::new(None),
        }
    }
}

/// A raw-QUIC version, as a connection moving to it needs it.
#[derive(Clone)]
pub(crate) struct QuicTarget {
    pub(crate) version: Arc<Version>,
    pub(crate) world: Arc<QuicWorld>,
}

/// A failure of the plugin, already logged: the connection closes with
/// application error code 0x1.
#[derive(Debug)]
struct Failed;

/// Serves one connection until it closes. A failure of the plugin closes the
/// connection with application error code `INTERNAL_ERROR_CODE` (0x1).
pub(super) async fn serve(
    plugin: Arc<Version>,
    world: Arc<QuicWorld>,
    mut session: QuicPluginSession,
    shutdown: impl Future<Output = ()> + Send,
) {
    // The instance is made once the handshake is done: a connection that
    // never completes one costs no instance.
    let info = loop {
        match session.from_worker.recv().await {
            Some(ToPlugin::Established(info)) => break info,
            Some(_) => continue,
            None => return,
        }
    };
    let span = tracing::info_span!("plugin", file = %plugin.path.display(), peer = %info.peer_addr);
    async {
        let target = QuicTarget {
            version: plugin,
            world,
        };
        if run(target, &mut session, &info, shutdown).await.is_err() {
            session.fail();
        } else {
            debug!("plugin connection finished");
        }
    }
    .instrument(span)
    .await
}

/// One version's instance serving the connection.
struct Running {
    plugin: Arc<Version>,
    world: Arc<QuicWorld>,
    store: Store<PluginState<QuicConn>>,
    instance: Instance,
    app: QuicApp,
    _pin: ConnectionPin,
}

/// A fresh instance of `plugin` for this connection's bridge.
async fn start(target: &QuicTarget, session: &QuicPluginSession) -> Result<Running, Failed> {
    let plugin = target.version.clone();
    let pre = &target.world.pre;
    let conn = QuicConn {
        shared: session.shared.clone(),
    };
    let mut store = new_store(&plugin.sandbox, conn).map_err(|e| {
        warn!(error = %format!("{e:#}"), "cannot set up the plugin; closing the connection");
        Failed
    })?;
    let instance = instantiate(pre.instance_pre(), &mut store)
        .await
        .map_err(|e| {
            warn!(error = %format!("{e:#}"), "plugin failed; closing the connection");
            Failed
        })?;
    let app = QuicApp::new(&mut store, &instance).map_err(|e| {
        warn!(error = ?e, "plugin exports do not match; closing the connection");
        Failed
    })?;
    Ok(Running {
        _pin: ConnectionPin::new(plugin.clone()),
        plugin,
        world: target.world.clone(),
        store,
        instance,
        app,
    })
}

/// The connection's life in the plugin; an error means the plugin failed
/// (already logged).
async fn run(
    target: QuicTarget,
    session: &mut QuicPluginSession,
    info: &crate::quic::HandshakeInfo,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Failed> {
    let mut cur = start(&target, session).await?;
    let info = ConnectionInfo {
        alpn: String::from_utf8_lossy(&info.alpn).into_owned(),
        server_name: info.server_name.clone(),
        peer_address: info.peer_addr.to_string(),
    };
    call(&mut cur.store, &cur.app, |s, a: &QuicApp| {
        Box::pin(async move {
            a.tq_plugin_quic_handler()
                .call_on_established(s, &info)
                .await
        })
    })
    .await
    .map_err(|_| Failed)?;

    let mut shutdown = std::pin::pin!(shutdown);
    let mut shutting_down = false;
    let mut successor = cur.world.successor.subscribe();
    // A version that refused this connection's state is not asked again.
    // Held weakly: a refused version must not stay loaded for this.
    let mut refused: Option<std::sync::Weak<Version>> = None;
    let mut last_timer: Option<Instant> = None;
    loop {
        let next = successor.borrow_and_update().clone();
        if let Some(next) = next {
            let tried = refused
                .as_ref()
                .is_some_and(|r| std::ptr::eq(r.as_ptr(), Arc::as_ptr(&next.version)));
            if !tried && !Arc::ptr_eq(&next.version, &cur.plugin) {
                match migrate(&mut cur, &next, session).await? {
                    Moved::Yes => successor = cur.world.successor.subscribe(),
                    Moved::NotNow => {}
                    Moved::Refused => refused = Some(Arc::downgrade(&next.version)),
                }
            }
        }
        // Let the worker apply what the last call queued.
        session.wake();
        let wait = call(&mut cur.store, &cur.app, |s, a: &QuicApp| {
            Box::pin(async move { a.tq_plugin_quic_handler().call_wait_for_data(s).await })
        })
        .await
        .map_err(|_| Failed)?;
        let deadline = timer_at(cur.store.data().established, wait.deadline_ms, last_timer);
        let event = tokio::select! {
            // A new version first: data that arrives after a reload is
            // handled by it.
            biased;
            // The version's drain is over: what is left closes now (first,
            // so a busy client cannot keep a released version alive).
            () = cur.plugin.live.wait_killed() => {
                debug!("the plugin version is unloaded; closing the connection");
                session.close_now(0, "plugin version unloaded");
                log_final_output(&mut cur.store);
                return Ok(());
            }
            Ok(()) = successor.changed() => continue,
            msg = session.from_worker.recv() => match msg {
                None | Some(ToPlugin::Closed) => break,
                Some(ToPlugin::Established(_)) => continue,
                Some(ToPlugin::Read(batch, cost)) => {
                    let incoming: Vec<Incoming> = batch.into_iter().map(incoming).collect();
                    call(&mut cur.store, &cur.app, |s, a: &QuicApp| {
                        Box::pin(async move {
                            a.tq_plugin_quic_handler().call_on_read(s, &incoming).await
                        })
                    })
                    .await
                    .map_err(|_| Failed)?;
                    lock(&session.shared).release(cost);
                    continue;
                }
                Some(ToPlugin::Notice(Notice::Writable(id))) => {
                    call(&mut cur.store, &cur.app, |s, a: &QuicApp| {
                        Box::pin(async move {
                            a.tq_plugin_quic_handler().call_on_event(s, Event::Writable(id)).await
                        })
                    })
                    .await
                    .map_err(|_| Failed)?;
                    lock(&session.shared).writable_handled(id);
                    continue;
                }
                Some(ToPlugin::Notice(Notice::Stopped { stream, code })) => {
                    Event::StreamStopped((stream, code))
                }
            },
            () = sleep_until(deadline) => {
                last_timer = Some(Instant::now());
                Event::Timer
            }
            () = &mut shutdown, if !shutting_down => {
                shutting_down = true;
                Event::Shutdown
            }
            // The version was replaced and the drain deadline passed.
            () = cur.plugin.live.wait_retired(), if !shutting_down => {
                shutting_down = true;
                Event::Shutdown
            }
        };
        call(&mut cur.store, &cur.app, |s, a: &QuicApp| {
            Box::pin(async move { a.tq_plugin_quic_handler().call_on_event(s, event).await })
        })
        .await
        .map_err(|_| Failed)?;
    }
    let _ = call(&mut cur.store, &cur.app, |s, a: &QuicApp| {
        Box::pin(async move { a.tq_plugin_quic_handler().call_on_close(s).await })
    })
    .await;
    log_final_output(&mut cur.store);
    Ok(())
}

enum Moved {
    Yes,
    /// The plugin has no state to give now; ask again after the next event.
    NotNow,
    /// The new version failed to start or to take the state.
    Refused,
}

/// Moves the connection from `cur`'s version to `next`. An error means the
/// old instance failed while exporting its state.
async fn migrate(
    cur: &mut Running,
    next: &QuicTarget,
    session: &QuicPluginSession,
) -> Result<Moved, Failed> {
    let state = match call_export::<_, (), Option<Vec<u8>>>(
        &mut cur.store,
        &cur.instance,
        crate::metrics::CallKind::Migrate,
        MIGRATE_EXPORT,
        "export-state",
        (),
    )
    .await
    {
        None | Some(Ok(None)) => return Ok(Moved::NotNow),
        Some(Err(why)) => {
            warn!(error = %why, "plugin failed exporting its state; closing the connection");
            return Err(Failed);
        }
        Some(Ok(Some(state))) => state,
    };
    let Ok(mut new) = start(next, session).await else {
        return Ok(Moved::Refused);
    };
    // The connection's clock goes on.
    new.store.data_mut().established = cur.store.data().established;
    let len = state.len();
    match call_export::<_, (Vec<u8>,), Result<(), String>>(
        &mut new.store,
        &new.instance,
        crate::metrics::CallKind::Migrate,
        MIGRATE_EXPORT,
        "import-state",
        (state,),
    )
    .await
    {
        Some(Ok(Ok(()))) => {
            info!(
                from = %&cur.plugin.hash[..12],
                to = %&new.plugin.hash[..12],
                state_bytes = len,
                "connection moved to the new plugin version"
            );
            *cur = new;
            Ok(Moved::Yes)
        }
        Some(Ok(Err(msg))) => {
            warn!(reason = %msg, "the new version refused the connection's state; it stays on the old one");
            Ok(Moved::Refused)
        }
        Some(Err(why)) => {
            warn!(error = %why, "the new version failed importing the state; the connection stays on the old one");
            Ok(Moved::Refused)
        }
        None => Ok(Moved::Refused),
    }
}

fn incoming(i: bridge::Incoming) -> Incoming {
    match i {
        bridge::Incoming::Data { stream, data, fin } => {
            Incoming::StreamData(StreamData { stream, data, fin })
        }
        bridge::Incoming::Reset { stream, code } => Incoming::StreamReset((stream, code)),
        bridge::Incoming::Datagram(d) => Incoming::Datagram(d),
    }
}

/// Instantiates the plugin once in a scratch store, checks its exports and
/// runs its optional `init`.
pub(super) async fn validate(version: &Version, pre: &QuicPre) -> Result<(), String> {
    let conn = QuicConn {
        shared: Default::default(),
    };
    let mut store = new_store(&version.sandbox, conn).map_err(|e| format!("{e:#}"))?;
    let instance = instantiate(pre.instance_pre(), &mut store)
        .await
        .map_err(|e| format!("{e:#}"))?;
    QuicApp::new(&mut store, &instance).map_err(|e| format!("its exports do not match: {e:?}"))?;
    version.run_init(&mut store, &instance).await
}
