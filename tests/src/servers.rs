//! Servers under test on 127.0.0.1, each with its own certificate: a native
//! echo server ([`TestServer`]), a native HTTP/3 server ([`H3TestServer`]),
//! and plugin servers as `tq-host --plugin` runs them ([`PluginServer`],
//! [`QuicPluginServer`], [`LiveServer`]), with their accept loops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tq_host::builtin::EchoApplication;
use tq_host::http3::Http3Settings;
use tq_host::metrics::DefaultMetrics;
use tq_host::quic::{self, ConnectionHandle, ConnectionParams, Listener, QuicSettings};
use tq_host::server::{serve, PluginSource, ServeOptions, Service};

use crate::certs::TestCert;
use crate::data::plugin_path;
use crate::peers::{h3_client, quinn_connect};
use crate::task::AbortOnDrop;

/// A fresh certificate and a listener on an ephemeral port of 127.0.0.1
/// presenting it with `settings`, counting into `metrics`; with the address
/// to connect to.
async fn loopback_listener(
    settings: QuicSettings,
    metrics: DefaultMetrics,
) -> (TestCert, Listener<DefaultMetrics>, SocketAddr) {
    loopback_listener_with(settings, metrics, TestCert::new()).await
}

async fn loopback_listener_with(
    settings: QuicSettings,
    metrics: DefaultMetrics,
    cert: TestCert,
) -> (TestCert, Listener<DefaultMetrics>, SocketAddr) {
    let settings = loopback(settings);
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let params = ConnectionParams::new_server(settings, cert.paths.clone());
    let listener = quic::listen([socket], params, metrics).expect("listen");
    let addr = listener.local_addrs()[0];
    (cert, listener, addr)
}

/// Server settings for loopback: every test client shares 127.0.0.1, so
/// unless a test sets its own per-address cap, the total cap applies
/// instead (benchmarks open thousands of connections).
pub fn loopback(mut settings: QuicSettings) -> QuicSettings {
    if settings.max_connections_per_address == QuicSettings::default().max_connections_per_address {
        settings.max_connections_per_address = settings.max_connections;
    }
    settings
}

/// The echo protocol's ALPN in place of the default (HTTP/3).
pub fn echo_alpn(mut settings: QuicSettings) -> QuicSettings {
    if settings.alpn == QuicSettings::default().alpn {
        settings.alpn = vec!["tq-echo".into()];
    }
    settings
}

/// An echo server on 127.0.0.1 with its own certificate and metrics. Every
/// accepted connection runs [`EchoApplication`]; its handle is sent on
/// `handles`.
pub struct TestServer {
    /// The address to connect to.
    pub addr: SocketAddr,
    /// The server's counters.
    pub metrics: DefaultMetrics,
    /// Handles of accepted connections, in order.
    pub handles: mpsc::UnboundedReceiver<ConnectionHandle>,
    /// The certificate the server presents.
    pub cert: TestCert,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server with `settings` (ALPN `tq-echo` unless set otherwise).
    pub async fn start(settings: QuicSettings) -> Self {
        let settings = echo_alpn(settings);
        let metrics = DefaultMetrics::default();
        let (cert, listener, addr) = loopback_listener(settings, metrics.clone()).await;
        let (htx, handles) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, htx, stop_rx));
        Self {
            addr,
            metrics,
            handles,
            cert,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    /// Stops accepting and waits until every connection and task has ended.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("accept loop panicked");
        }
    }

    /// Client parameters that trust this server's certificate.
    pub fn client_params(&self, settings: QuicSettings) -> ConnectionParams {
        self.cert.client_params(echo_alpn(settings))
    }
}

async fn accept_loop(
    mut listener: Listener<DefaultMetrics>,
    handles: mpsc::UnboundedSender<ConnectionHandle>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stop => break,
            c = listener.accept() => match c {
                Some(c) => { let _ = handles.send(c.start(EchoApplication::default())); }
                None => break,
            }
        }
    }
    listener.shutdown().await;
}

/// An HTTP/3 server on 127.0.0.1 running a native handler, with its server
/// connections' H3 handles sent on `handles` (for GOAWAY and buffer checks).
pub struct H3TestServer {
    // First, so the server is aborted before the rest drops.
    _task: AbortOnDrop,
    /// The address to connect to.
    pub addr: SocketAddr,
    /// The certificate the server presents.
    pub cert: TestCert,
    /// One handle per accepted connection.
    pub handles: mpsc::UnboundedReceiver<tq_host::http3::H3Handle>,
    /// The server's QUIC counters.
    pub metrics: DefaultMetrics,
}

/// What an [`H3TestServer`] runs per connection.
pub enum H3App<H: tq_host::http3::RequestHandler> {
    /// A native handler through `serve_connection`.
    Handler(Arc<H>),
    /// Raw controllers handed to the test.
    Raw(mpsc::UnboundedSender<tq_host::http3::H3Controller>),
}

impl H3TestServer {
    /// Starts a server answering with `handler`.
    pub async fn start<H: tq_host::http3::RequestHandler>(
        quic_settings: QuicSettings,
        h3: tq_host::http3::Http3Settings,
        app: H3App<H>,
    ) -> Self {
        Self::start_with_cert(TestCert::new(), quic_settings, h3, app).await
    }

    /// As [`start`](Self::start), presenting `cert`.
    pub async fn start_with_cert<H: tq_host::http3::RequestHandler>(
        cert: TestCert,
        quic_settings: QuicSettings,
        h3: tq_host::http3::Http3Settings,
        app: H3App<H>,
    ) -> Self {
        let metrics = DefaultMetrics::default();
        let (cert, mut listener, addr) =
            loopback_listener_with(quic_settings, metrics.clone(), cert).await;
        let (htx, handles) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut services = tokio::task::JoinSet::new();
            while let Some(c) = listener.accept().await {
                let (driver, controller) = tq_host::http3::ServerH3Driver::new_server(h3.clone());
                let _ = htx.send(controller.handle());
                c.start(driver);
                match &app {
                    H3App::Handler(h) => {
                        services.spawn(tq_host::http3::serve_connection(controller, h.clone()));
                    }
                    H3App::Raw(tx) => {
                        let _ = tx.send(controller);
                    }
                }
            }
        });
        Self {
            _task: AbortOnDrop(task),
            addr,
            cert,
            handles,
            metrics,
        }
    }

    /// Starts a server that hands each connection's raw controller to the
    /// test instead of serving it.
    pub async fn start_raw(
        quic_settings: QuicSettings,
        h3: tq_host::http3::Http3Settings,
    ) -> (Self, mpsc::UnboundedReceiver<tq_host::http3::H3Controller>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let server = Self::start(
            quic_settings,
            h3,
            H3App::<tq_host::builtin::WelcomePage>::Raw(tx),
        )
        .await;
        (server, rx)
    }

    /// Client QUIC parameters trusting this server.
    pub fn client_params(&self) -> ConnectionParams {
        self.cert.client_params(QuicSettings::default())
    }

    /// A connected client of ours.
    pub async fn client(&self) -> tq_host::http3::H3Client {
        h3_client(self.addr, &self.cert).await
    }
}

/// An HTTP/3 server running a plugin, as `tq-host --plugin` does.
pub struct PluginServer {
    // First, so the server is aborted before the rest drops.
    _task: AbortOnDrop,
    /// The address to connect to.
    pub addr: SocketAddr,
    /// The certificate the server presents.
    pub cert: TestCert,
    /// The plugin served (its counters: connections, requests in flight).
    pub plugin: tq_host::plugin::Plugin,
    stop: tokio::sync::watch::Sender<bool>,
}

impl PluginServer {
    /// Loads `plugins/<name>` (or a test plugin) with `limits` and serves it.
    pub async fn start(name: &str, limits: tq_host::plugin::PluginLimits) -> Self {
        Self::start_with_grants(name, limits, Default::default()).await
    }

    /// As [`start`](Self::start), granting directories and environment.
    pub async fn start_with_grants(
        name: &str,
        limits: tq_host::plugin::PluginLimits,
        grants: tq_host::plugin::PluginGrants,
    ) -> Self {
        Self::start_file(&plugin_path(name), limits, grants).await
    }

    /// Loads the component at `path` and serves it.
    pub async fn start_file(
        path: &std::path::Path,
        limits: tq_host::plugin::PluginLimits,
        grants: tq_host::plugin::PluginGrants,
    ) -> Self {
        let plugin = tq_host::plugin::Plugin::load_with_grants(path, limits, grants)
            .unwrap_or_else(|e| panic!("{} loads: {e}", path.display()));
        let (cert, listener, addr) =
            loopback_listener(QuicSettings::default(), DefaultMetrics::default()).await;
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let task = serve_plugin(listener, PluginSource::Fixed(plugin.clone()), stopping);
        Self {
            _task: AbortOnDrop(task),
            addr,
            cert,
            plugin,
            stop,
        }
    }

    /// Shuts the server down as `tq-host` does on Ctrl-C (GOAWAY, drain,
    /// close) and waits for it to stop; returns how long that took, or
    /// `None` past `limit`.
    pub async fn shut_down(mut self, limit: std::time::Duration) -> Option<std::time::Duration> {
        let started = std::time::Instant::now();
        let _ = self.stop.send(true);
        tokio::time::timeout(limit, &mut self._task.0)
            .await
            .ok()?
            .ok()?;
        Some(started.elapsed())
    }

    /// A connected client of ours.
    pub async fn client(&self) -> tq_host::http3::H3Client {
        h3_client(self.addr, &self.cert).await
    }
}

/// A raw QUIC server running a `quic-app` plugin, as `tq-host --plugin
/// x.wasm --alpn tq-echo` does, with datagrams enabled.
pub struct QuicPluginServer {
    // First, so the server is aborted before the rest drops.
    _task: AbortOnDrop,
    /// The address to connect to.
    pub addr: SocketAddr,
    /// The certificate the server presents.
    pub cert: TestCert,
    /// Set to true to shut the server down as `tq-host` does on Ctrl-C: it
    /// stops accepting and every connection's plugin gets a `shutdown`
    /// event.
    pub shutdown: tokio::sync::watch::Sender<bool>,
}

impl QuicPluginServer {
    /// Loads the plugin `name` with `limits` and serves it (ALPN `tq-echo`).
    pub async fn start(name: &str, limits: tq_host::plugin::PluginLimits) -> Self {
        let plugin =
            tq_host::plugin::Plugin::load(&plugin_path(name), limits).expect("plugin loads");
        assert_eq!(plugin.world(), tq_host::plugin::World::QuicApp);
        let (cert, listener, addr) =
            loopback_listener(Self::settings(), DefaultMetrics::default()).await;
        let (shutdown, stop) = tokio::sync::watch::channel(false);
        let task = serve_plugin(listener, PluginSource::Fixed(plugin), stop);
        Self {
            _task: AbortOnDrop(task),
            addr,
            cert,
            shutdown,
        }
    }

    /// ALPN `tq-echo`, datagrams on: the server's settings and its clients'.
    fn settings() -> QuicSettings {
        echo_alpn(QuicSettings {
            enable_datagrams: true,
            ..QuicSettings::default()
        })
    }

    /// Client parameters of ours that trust this server (ALPN `tq-echo`,
    /// datagrams on).
    pub fn client_params(&self) -> ConnectionParams {
        self.cert.client_params(Self::settings())
    }

    /// A quinn connection to this server.
    pub async fn quinn(&self) -> (quinn::Endpoint, quinn::Connection) {
        quinn_connect(self.addr, &self.cert, b"tq-echo").await
    }
}

/// A server running a [`LivePlugin`](tq_host::plugin::LivePlugin) from a
/// copy of a plugin in a temporary directory, as `tq-host --plugin` does,
/// so tests can replace the file and reload.
pub struct LiveServer {
    // First, so the server is aborted before the rest drops.
    _task: AbortOnDrop,
    /// The address to connect to.
    pub addr: SocketAddr,
    /// The certificate the server presents.
    pub cert: TestCert,
    /// The plugin and its versions.
    pub live: tq_host::plugin::LivePlugin,
    /// The file the plugin is loaded from.
    pub file: std::path::PathBuf,
    /// Set to true to shut the server down as `tq-host` does on Ctrl-C: it
    /// stops accepting and asks every connection to finish.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    alpn: String,
    _dir: tempfile::TempDir,
}

impl LiveServer {
    /// Serves a copy of plugin `name` (ALPN `h3`, or `tq-echo` for a raw
    /// QUIC plugin); replaced versions drain for `drain`.
    pub async fn start(name: &str, drain: Duration) -> Self {
        Self::start_with(name, drain, Http3Settings::default()).await
    }

    /// As [`start`](Self::start), with these HTTP/3 settings.
    pub async fn start_with(name: &str, drain: Duration, http3: Http3Settings) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("app.wasm");
        std::fs::copy(plugin_path(name), &file).expect("copy plugin");
        let live =
            tq_host::plugin::LivePlugin::load(&file, Default::default(), Default::default(), drain)
                .await
                .expect("plugin loads");
        let alpn = match live.current().world() {
            tq_host::plugin::World::QuicApp => "tq-echo",
            _ => "h3",
        };
        let settings = QuicSettings {
            alpn: vec![alpn.into()],
            ..QuicSettings::default()
        };
        let (cert, listener, addr) = loopback_listener(settings, DefaultMetrics::default()).await;
        let (shutdown, stop) = tokio::sync::watch::channel(false);
        let l = live.clone();
        let task = serve_plugin_with(listener, PluginSource::Live(l), stop, http3);
        Self {
            _task: AbortOnDrop(task),
            addr,
            cert,
            live,
            file,
            shutdown,
            alpn: alpn.into(),
            _dir: dir,
        }
    }

    /// Replaces the plugin file with plugin `name` (whole, by rename).
    pub fn install(&self, name: &str) {
        let tmp = self.file.with_extension("tmp");
        std::fs::copy(plugin_path(name), &tmp).expect("copy plugin");
        std::fs::rename(&tmp, &self.file).expect("rename plugin");
    }

    /// A connected HTTP/3 client of ours.
    pub async fn client(&self) -> tq_host::http3::H3Client {
        h3_client(self.addr, &self.cert).await
    }

    /// A quinn connection (for raw QUIC plugins).
    pub async fn quinn(&self) -> (quinn::Endpoint, quinn::Connection) {
        quinn_connect(self.addr, &self.cert, self.alpn.as_bytes()).await
    }
}

/// Serves every connection `listener` accepts with the plugin version
/// `source` gives at that moment, through the library's own accept loop
/// (the one `tq-host --plugin` runs); once `stop` turns true the server
/// stops accepting and asks every connection to finish. Aborting the
/// returned task aborts the connections' tasks too.
fn serve_plugin(
    listener: Listener<DefaultMetrics>,
    source: PluginSource,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    serve_plugin_with(listener, source, stop, Http3Settings::default())
}

/// As [`serve_plugin`], with these HTTP/3 settings.
fn serve_plugin_with(
    listener: Listener<DefaultMetrics>,
    source: PluginSource,
    mut stop: tokio::sync::watch::Receiver<bool>,
    http3: Http3Settings,
) -> tokio::task::JoinHandle<()> {
    let shutdown = async move {
        // A dropped sender means nobody will ever ask.
        if stop.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::spawn(async move {
        let service = Service::<tq_host::builtin::WelcomePage>::Plugin(source);
        let options = ServeOptions {
            http3,
            ..ServeOptions::default()
        };
        serve(listener, service, options, shutdown).await;
    })
}
