//! Runs a `quic-app` plugin on one connection: a task that owns the
//! instance's store, turns what the worker sends (through the bridge) into
//! `on-read` / `on-event` calls, and waits natively for what the plugin asked
//! for (`wait-for-data`).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn, Instrument};

use super::bindings::h3::tq::plugin::types::ConnectionInfo;
use super::bindings::quic::tq::plugin::quic_types::{Event, Incoming, StreamData};
use super::bindings::quic::QuicApp;
use super::instance::{call, describe, log_output, new_store, sleep_until};
use super::quic_bridge::{self, lock, Notice, QuicPluginSession, ToPlugin};
use super::quic_host::QuicConn;
use super::{Inner, Pre};

/// Serves one connection until it closes. A failure of the plugin closes the
/// connection with application error code `INTERNAL_ERROR_CODE` (0x1).
pub(super) async fn serve(
    plugin: Arc<Inner>,
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
        if run(&plugin, &mut session, &info, shutdown).await.is_err() {
            session.fail();
        } else {
            debug!("plugin connection finished");
        }
    }
    .instrument(span)
    .await
}

/// The connection's life in the plugin; an error means the plugin failed
/// (already logged).
async fn run(
    plugin: &Inner,
    session: &mut QuicPluginSession,
    info: &crate::quic::HandshakeInfo,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ()> {
    let Pre::Quic(pre) = &plugin.pre else {
        warn!("not a raw QUIC plugin; closing the connection");
        return Err(());
    };
    let conn = QuicConn {
        shared: session.shared.clone(),
    };
    let mut store = new_store(plugin, conn).map_err(|e| {
        warn!(error = %format!("{e:#}"), "cannot set up the plugin; closing the connection");
    })?;
    store.data_mut().call_started = Instant::now();
    let app = pre.instantiate_async(&mut store).await.map_err(|e| {
        log_output(&mut store);
        warn!(error = %describe(&e), "plugin failed to instantiate; closing the connection");
    })?;
    let info = ConnectionInfo {
        alpn: String::from_utf8_lossy(&info.alpn).into_owned(),
        server_name: info.server_name.clone(),
        peer_address: info.peer_addr.to_string(),
    };
    call(&mut store, &app, |s, a: &QuicApp| {
        Box::pin(async move {
            a.tq_plugin_quic_handler()
                .call_on_established(s, &info)
                .await
        })
    })
    .await
    .map_err(drop)?;

    let mut shutdown = std::pin::pin!(shutdown);
    let mut shutting_down = false;
    loop {
        // Let the worker apply what the last call queued.
        session.wake();
        let wait = call(&mut store, &app, |s, a: &QuicApp| {
            Box::pin(async move { a.tq_plugin_quic_handler().call_wait_for_data(s).await })
        })
        .await
        .map_err(drop)?;
        let deadline = wait
            .deadline_ms
            .map(|ms| store.data().established + Duration::from_millis(ms));
        let event = tokio::select! {
            msg = session.from_worker.recv() => match msg {
                None | Some(ToPlugin::Closed) => break,
                Some(ToPlugin::Established(_)) => continue,
                Some(ToPlugin::Read(batch, cost)) => {
                    let incoming: Vec<Incoming> = batch.into_iter().map(incoming).collect();
                    call(&mut store, &app, |s, a: &QuicApp| {
                        Box::pin(async move {
                            a.tq_plugin_quic_handler().call_on_read(s, &incoming).await
                        })
                    })
                    .await
                    .map_err(drop)?;
                    lock(&session.shared).release(cost);
                    continue;
                }
                Some(ToPlugin::Notice(Notice::Writable(id))) => {
                    call(&mut store, &app, |s, a: &QuicApp| {
                        Box::pin(async move {
                            a.tq_plugin_quic_handler().call_on_event(s, Event::Writable(id)).await
                        })
                    })
                    .await
                    .map_err(drop)?;
                    lock(&session.shared).writable_handled(id);
                    continue;
                }
                Some(ToPlugin::Notice(Notice::Stopped { stream, code })) => {
                    Event::StreamStopped((stream, code))
                }
            },
            () = sleep_until(deadline) => Event::Timer,
            () = &mut shutdown, if !shutting_down => {
                shutting_down = true;
                Event::Shutdown
            }
        };
        call(&mut store, &app, |s, a: &QuicApp| {
            Box::pin(async move { a.tq_plugin_quic_handler().call_on_event(s, event).await })
        })
        .await
        .map_err(drop)?;
    }
    let _ = call(&mut store, &app, |s, a: &QuicApp| {
        Box::pin(async move { a.tq_plugin_quic_handler().call_on_close(s).await })
    })
    .await;
    Ok(())
}

fn incoming(i: quic_bridge::Incoming) -> Incoming {
    match i {
        quic_bridge::Incoming::Data { stream, data, fin } => {
            Incoming::StreamData(StreamData { stream, data, fin })
        }
        quic_bridge::Incoming::Reset { stream, code } => Incoming::StreamReset((stream, code)),
        quic_bridge::Incoming::Datagram(d) => Incoming::Datagram(d),
    }
}
