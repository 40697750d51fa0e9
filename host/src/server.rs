//! Serving a listener until told to stop: the one accept loop that the
//! `tq-host` binary and the tests both run. Each accepted connection gets
//! what the [`Service`] says (a native HTTP/3 handler, the raw-QUIC echo,
//! or the plugin version current at that moment); on shutdown the listener
//! stops accepting, every live connection is asked to finish (GOAWAY for
//! HTTP/3, `shutdown` for raw-QUIC plugins; the built-in echo and
//! `hq-interop` have no such signal and simply run on), and they get a grace period.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn, Instrument};

use crate::builtin::{EchoApplication, HqApplication, WelcomePage};
use crate::http3::{serve_connection_until, Http3Settings, RequestHandler, ServerH3Driver};
use crate::metrics::{Metrics, NoMetrics, ServiceMetrics};
use crate::plugin::{LivePlugin, Plugin};
use crate::quic::Listener;

/// What every accepted connection runs.
pub enum Service<H: RequestHandler = WelcomePage> {
    /// A native HTTP/3 handler.
    Http3(Arc<H>),
    /// The built-in raw-QUIC echo (ALPN `tq-echo`).
    Echo,
    /// A directory's files over HTTP/0.9 on raw QUIC (ALPN `hq-interop`,
    /// the QUIC Interop Runner's protocol): [`HqApplication`].
    Hq(std::path::PathBuf),
    /// A plugin, whichever its world.
    Plugin(PluginSource),
}

/// Where a connection's plugin version comes from.
#[derive(Debug, Clone)]
pub enum PluginSource {
    /// Always this version.
    Fixed(Plugin),
    /// The version current when the connection is accepted (hot reload).
    Live(LivePlugin),
}

impl PluginSource {
    fn current(&self) -> Plugin {
        match self {
            PluginSource::Fixed(p) => p.clone(),
            PluginSource::Live(l) => l.current(),
        }
    }
}

/// How [`serve`] runs.
#[derive(Clone)]
pub struct ServeOptions {
    /// HTTP/3 settings of every connection.
    pub http3: Http3Settings,
    /// How long live connections may take to finish once asked. Default
    /// 10 s.
    pub grace: Duration,
    /// Where native HTTP/3 requests are reported (plugins report to the
    /// sink they were loaded with). Default: nowhere.
    pub metrics: Arc<dyn ServiceMetrics>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            http3: Http3Settings::default(),
            grace: Duration::from_secs(10),
            metrics: Arc::new(NoMetrics),
        }
    }
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("http3", &self.http3)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

/// How [`serve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Whether every connection finished within the grace period (false:
    /// the rest were cut).
    pub drained: bool,
}

/// Serves `listener` with `service` until `shutdown` completes (or the
/// listener ends), then drains: see the module docs. The per-connection
/// service tasks (handlers, plugins) are owned here: dropping the returned
/// future ends them, and with them their connections; the QUIC layer's own
/// tasks belong to the listener.
///
/// ```no_run
/// # async fn demo(listener: tq_host::quic::Listener<tq_host::metrics::DefaultMetrics>) {
/// use std::sync::Arc;
/// use tq_host::server::{serve, ServeOptions, Service};
/// let stopped = serve(listener, Service::Http3(Arc::new(tq_host::builtin::WelcomePage)),
///                     ServeOptions::default(), async { let _ = tokio::signal::ctrl_c().await; }).await;
/// assert!(stopped.drained);
/// # }
/// ```
pub async fn serve<M: Metrics, H: RequestHandler>(
    mut listener: Listener<M>,
    service: Service<H>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Stopped {
    let (stopping, stop_signal) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            incoming = listener.accept() => {
                let Some(c) = incoming else { break };
                // A plugin connection is pinned to the version current now.
                let pinned = match &service {
                    Service::Plugin(source) => Some(source.current()),
                    _ => None,
                };
                let app = pinned
                    .as_ref()
                    .map_or_else(String::new, |p| format!("plugin@{}", p.version_label()));
                // The application's task logs under the same span as the
                // connection's IO worker.
                let span = tracing::info_span!(
                    "conn",
                    id = %c.trace_id(),
                    peer = %c.peer_addr(),
                    side = "server",
                    app = %app,
                );
                info!(peer = %c.peer_addr(), socket = c.socket_index(), id = %c.trace_id(), "connection accepted");
                let mut stop = stop_signal.clone();
                let asked_to_finish = async move {
                    // A dropped sender means nobody will ever ask.
                    if stop.wait_for(|s| *s).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                };
                match &service {
                    Service::Echo => {
                        c.start(EchoApplication::default());
                    }
                    Service::Hq(root) => {
                        c.start(HqApplication::new(root.clone()));
                    }
                    Service::Http3(handler) => {
                        let (driver, controller) = ServerH3Driver::new_server(options.http3.clone());
                        let driver = driver.with_request_metrics(options.metrics.clone(), "native", None);
                        c.start(driver);
                        conns.spawn(serve_connection_until(controller, handler.clone(), asked_to_finish).instrument(span));
                    }
                    Service::Plugin(source) => {
                        let plugin = pinned.unwrap_or_else(|| source.current());
                        conns.spawn(plugin.start_connection(c, &options.http3, asked_to_finish).instrument(span));
                    }
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            () = &mut shutdown => {
                info!("shutting down: no new connections; waiting up to {:?} for live ones", options.grace);
                break;
            }
        }
    }
    stopping.send_replace(true);
    let drained = tokio::time::timeout(options.grace, async {
        listener.shutdown().await;
        while conns.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if !drained {
        warn!("connections still open after the grace period; closing them");
        conns.shutdown().await;
    }
    Stopped { drained }
}
