//! The WebAssembly plugin runtime: loads a component, checks which world it
//! implements (`http3-app` or `quic-app`), and runs one sandboxed instance
//! per connection.
//!
//! It owns wasmtime. HTTP/3 plugins see the HTTP/3 layer through its public
//! API (controller, events, stream channels); raw QUIC plugins run behind
//! [`QuicPluginApp`], an `ApplicationOverQuic` that bridges the connection's
//! worker and the plugin's own task. Every store
//! gets a memory cap, a CPU deadline per call (epoch interruption, with a
//! yield to the runtime every tick so a busy plugin cannot stall others), and
//! WASI with nothing granted but what the operator lists ([`PluginGrants`]:
//! read-only directories, environment variables); no network; stdout and
//! stderr are captured (bounded) and logged with the connection.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use tq_host::plugin::{Plugin, PluginLimits};
//! let plugin = Plugin::load("hello.wasm".as_ref(), PluginLimits::default())?;
//! println!("{} implements {}", plugin.path().display(), plugin.world());
//! # Ok(()) }
//! ```

mod engine;
mod h3_host;
mod http3;
mod instance;
mod limits;
mod quic;
mod quic_bridge;
mod quic_host;
mod reload;
mod state;
mod wasi_http;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use anyhow::{bail, Context};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::Engine;

pub use limits::{DirGrant, PluginGrants, PluginLimits};
pub use quic_bridge::{QuicPluginApp, QuicPluginSession};
pub use reload::{LivePlugin, Reloaded, VersionInfo};

use engine::{build_engine, EpochTicker};
use h3_host::H3Conn;
use quic_host::QuicConn;
use state::PluginState;
use wasi_http::HttpConn;

/// Bindings generated from `wit/`, one module per world; private, so no raw
/// type leaks out.
mod bindings {
    pub(crate) mod h3 {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "http3-app",
            exports: { default: async },
        });
    }
    pub(crate) mod quic {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "quic-app",
            exports: { default: async },
            // One Rust type for the shared interface.
            with: { "tq:plugin/types": super::h3::tq::plugin::types },
        });
    }
}

/// Adds context to wasmtime's own error type (which is not anyhow's).
trait WasmtimeContext<T> {
    fn wt_context(self, f: impl FnOnce() -> String) -> anyhow::Result<T>;
}

impl<T> WasmtimeContext<T> for wasmtime::Result<T> {
    fn wt_context(self, f: impl FnOnce() -> String) -> anyhow::Result<T> {
        self.map_err(|e| anyhow::anyhow!("{}: {e:?}", f()))
    }
}

/// Which world a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum World {
    /// `tq:plugin/http3-app`: the plugin answers HTTP/3 requests.
    Http3App,
    /// `tq:plugin/quic-app`: the plugin is a raw QUIC connection's
    /// application.
    QuicApp,
    /// The standard `wasi:http/proxy` world (0.2.x): the plugin exports
    /// `wasi:http/incoming-handler` and is served over HTTP/3, one instance
    /// per request.
    WasiHttp,
}

impl World {
    /// Every world tq-host serves.
    pub const ALL: [World; 3] = [World::Http3App, World::QuicApp, World::WasiHttp];

    /// The interface a component of this world exports.
    pub fn export(self) -> &'static str {
        match self {
            World::Http3App => "tq:plugin/h3-handler@0.1.0",
            World::QuicApp => "tq:plugin/quic-handler@0.1.0",
            World::WasiHttp => "wasi:http/incoming-handler@0.2.x",
        }
    }

    /// Whether a component exporting `name` implements this world.
    fn exported_by(self, name: &str) -> bool {
        match self {
            World::WasiHttp => name.starts_with("wasi:http/incoming-handler@0.2."),
            w => name == w.export(),
        }
    }

    /// What the CLI and logs call it.
    fn describe_all() -> String {
        World::ALL
            .iter()
            .map(|w| format!("{w} (exporting {})", w.export()))
            .collect::<Vec<_>>()
            .join(" or ")
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            World::Http3App => f.write_str("tq:plugin/http3-app@0.1.0"),
            World::QuicApp => f.write_str("tq:plugin/quic-app@0.1.0"),
            World::WasiHttp => f.write_str("wasi:http/proxy@0.2"),
        }
    }
}

/// A component linked and ready to instantiate, per world.
enum Pre {
    Http3(bindings::h3::Http3AppPre<PluginState<H3Conn>>),
    Quic(bindings::quic::QuicAppPre<PluginState<QuicConn>>),
    WasiHttp(wasmtime_wasi_http::p2::bindings::ProxyPre<PluginState<HttpConn>>),
}

/// A loaded, validated plugin, ready to run on connections. Cheap to share.
pub struct Plugin {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    world: World,
    engine: Engine,
    pre: Pre,
    limits: PluginLimits,
    grants: PluginGrants,
    /// SHA-256 of the component's bytes, in hex.
    hash: String,
    loaded_at: SystemTime,
    /// How long compiling and linking took.
    compile_time: std::time::Duration,
    /// Whether it exports the optional `tq:plugin/init` / `tq:plugin/migrate`.
    has_init: bool,
    has_migrate: bool,
    live: Live,
    /// wasi:http: idle instances, when reuse is on.
    wasi_pool: wasi_http::Pool,
    _ticker: EpochTicker,
}

/// What a version's connections share while it serves.
struct Live {
    connections: AtomicUsize,
    requests: AtomicUsize,
    /// Set when the version's drain deadline passes: its connections get a
    /// graceful close (GOAWAY for HTTP/3, `shutdown` for raw QUIC).
    retired: watch::Sender<bool>,
    /// The version its raw QUIC connections may move to (`migrate`).
    successor: watch::Sender<Option<Plugin>>,
}

/// Counts a connection on a version for as long as it is held.
pub(crate) struct ConnectionPin(Arc<Inner>);

impl ConnectionPin {
    fn new(inner: Arc<Inner>) -> Self {
        inner.live.connections.fetch_add(1, Ordering::Relaxed);
        Self(inner)
    }
}

impl Drop for ConnectionPin {
    fn drop(&mut self) {
        self.0.live.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The optional exports, by name.
const INIT_EXPORT: &str = "tq:plugin/init@0.1.0";
const MIGRATE_EXPORT: &str = "tq:plugin/migrate@0.1.0";

impl Clone for Plugin {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.inner.path)
            .field("world", &self.inner.world)
            .finish()
    }
}

impl Plugin {
    /// Compiles the component at `path`, checks that it implements a world
    /// tq-host serves, and links it against the host's imports.
    ///
    /// # Errors
    /// A file that cannot be read, is not a WebAssembly component, or
    /// implements none of the worlds (the message names them), or imports
    /// something the host does not provide.
    pub fn load(path: &Path, limits: PluginLimits) -> anyhow::Result<Self> {
        Self::load_with_grants(path, limits, PluginGrants::default())
    }

    /// As [`load`](Self::load), granting the plugin directories and
    /// environment variables.
    ///
    /// # Errors
    /// As [`load`](Self::load), or a granted directory that does not exist.
    pub fn load_with_grants(
        path: &Path,
        limits: PluginLimits,
        grants: PluginGrants,
    ) -> anyhow::Result<Self> {
        for d in &grants.dirs {
            if !d.host.is_dir() {
                bail!("cannot grant {}: not a directory", d.host.display());
            }
        }
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read plugin {}", path.display()))?;
        Self::build(path, &bytes, limits, grants)
    }

    /// As [`load`](Self::load), from bytes already read.
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn from_bytes(path: &Path, bytes: &[u8], limits: PluginLimits) -> anyhow::Result<Self> {
        Self::build(path, bytes, limits, PluginGrants::default())
    }

    fn build(
        path: &Path,
        bytes: &[u8],
        limits: PluginLimits,
        grants: PluginGrants,
    ) -> anyhow::Result<Self> {
        let started = std::time::Instant::now();
        if !bytes.starts_with(b"\0asm") {
            bail!("{} is not a WebAssembly file", path.display());
        }
        // A component's version field differs from a core module's.
        if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
            bail!(
                "{} is a core WebAssembly module, not a component: build it for wasm32-wasip2 \
                 (or run `wasm-tools component new`) so that it implements {}",
                path.display(),
                World::describe_all()
            );
        }
        let engine = build_engine(&limits)?;
        let component = Component::new(&engine, bytes)
            .wt_context(|| format!("{} is not a valid WebAssembly component", path.display()))?;
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let Some(world) = World::ALL
            .into_iter()
            .find(|w| exports.iter().any(|e| w.exported_by(e)))
        else {
            bail!(
                "{} implements none of the worlds tq-host serves: expected {}; it exports [{}]",
                path.display(),
                World::describe_all(),
                exports.join(", ")
            );
        };
        let matches = |e: wasmtime::Error| {
            anyhow::anyhow!("{} does not match {world}: {e:?}", path.display())
        };
        let pre = match world {
            World::Http3App => {
                let pre = link(&engine, &component, path, |l| {
                    bindings::h3::Http3App::add_to_linker::<_, HasSelf<_>>(l, |s| s)
                })?;
                Pre::Http3(bindings::h3::Http3AppPre::new(pre).map_err(matches)?)
            }
            World::QuicApp => {
                let pre = link(&engine, &component, path, |l| {
                    bindings::quic::QuicApp::add_to_linker::<_, HasSelf<_>>(l, |s| s)
                })?;
                Pre::Quic(bindings::quic::QuicAppPre::new(pre).map_err(matches)?)
            }
            World::WasiHttp => {
                let pre = link(&engine, &component, path, |l| {
                    wasmtime_wasi_http::p2::add_only_http_to_linker_async(l)
                })?;
                Pre::WasiHttp(
                    wasmtime_wasi_http::p2::bindings::ProxyPre::new(pre).map_err(matches)?,
                )
            }
        };
        let ticker = EpochTicker::start(engine.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                world,
                engine,
                pre,
                limits,
                grants,
                hash: hex(&boring::sha::sha256(bytes)),
                loaded_at: SystemTime::now(),
                compile_time: started.elapsed(),
                has_init: exports.iter().any(|e| e == INIT_EXPORT),
                has_migrate: exports.iter().any(|e| e == MIGRATE_EXPORT),
                live: Live {
                    connections: AtomicUsize::new(0),
                    requests: AtomicUsize::new(0),
                    retired: watch::Sender::new(false),
                    successor: watch::Sender::new(None),
                },
                wasi_pool: Default::default(),
                _ticker: ticker,
            }),
        })
    }

    /// The file the plugin came from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// SHA-256 of the component's bytes, in hex.
    pub fn hash(&self) -> &str {
        &self.inner.hash
    }

    /// When it was loaded.
    pub fn loaded_at(&self) -> SystemTime {
        self.inner.loaded_at
    }

    /// How long compiling and linking it took.
    pub fn compile_time(&self) -> std::time::Duration {
        self.inner.compile_time
    }

    /// Connections it serves now.
    pub fn connections(&self) -> usize {
        self.inner.live.connections.load(Ordering::Relaxed)
    }

    /// HTTP/3 requests it is answering now (responses not yet ended).
    pub fn requests_in_flight(&self) -> usize {
        self.inner.live.requests.load(Ordering::Relaxed)
    }

    /// Whether a raw QUIC plugin can carry live connections to a new version
    /// (it exports `tq:plugin/migrate`).
    pub fn can_migrate(&self) -> bool {
        self.inner.world == World::QuicApp && self.inner.has_migrate
    }

    /// Asks every connection on this version to close gracefully: HTTP/3
    /// ones get GOAWAY and end once their requests are answered; raw QUIC
    /// ones get the `shutdown` event.
    pub fn retire(&self) {
        self.inner.live.retired.send_replace(true);
    }

    /// Whether [`retire`](Self::retire) was called.
    pub fn is_retired(&self) -> bool {
        *self.inner.live.retired.borrow()
    }

    /// Offers this version's raw QUIC connections a move to `next` (both
    /// must export `tq:plugin/migrate`; see [`can_migrate`](Self::can_migrate)).
    pub fn hand_over_to(&self, next: &Plugin) {
        if self.can_migrate() && next.can_migrate() {
            self.inner.live.successor.send_replace(Some(next.clone()));
        }
    }

    /// Instantiates the plugin once, outside any connection, and runs its
    /// optional `init` export: what a reload checks before swapping.
    ///
    /// # Errors
    /// Instantiation traps, or `init` fails, traps or overruns its deadline.
    pub async fn validate(&self) -> anyhow::Result<()> {
        instance::validate(&self.inner).await
    }

    /// Whether two plugins are the same loaded version.
    pub fn same_version(&self, other: &Plugin) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The world it implements.
    pub fn world(&self) -> World {
        self.inner.world
    }

    /// Serves one raw QUIC connection (whose application is `session`'s
    /// [`QuicPluginApp`]) with a fresh instance until the connection closes.
    /// When `shutdown` completes the plugin gets a `shutdown` event. A trap,
    /// panic, deadline or memory overrun closes this connection with
    /// application error code [`INTERNAL_ERROR_CODE`](crate::quic::INTERNAL_ERROR_CODE)
    /// and is logged; nothing else is affected.
    pub async fn serve_quic(
        &self,
        session: QuicPluginSession,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) {
        quic::serve(self.inner.clone(), session, shutdown).await
    }

    /// Serves one HTTP/3 connection with a fresh instance until the
    /// connection closes. A trap, panic, deadline or memory overrun closes
    /// this connection with H3_INTERNAL_ERROR and is logged; nothing else is
    /// affected.
    pub async fn serve_http3(&self, controller: crate::http3::H3Controller, info: ConnectionMeta) {
        http3::serve(self.inner.clone(), controller, info, std::future::pending()).await
    }

    /// Serves an accepted connection with this version, whichever its world:
    /// starts the connection with the right application (the HTTP/3 driver,
    /// or [`QuicPluginApp`]) and returns the future that runs the plugin
    /// until the connection ends; spawn it on a task you own. When
    /// `shutdown` completes the connection is asked to finish: GOAWAY for
    /// HTTP/3, the `shutdown` event for raw QUIC.
    ///
    /// ```no_run
    /// # async fn demo(plugin: tq_host::plugin::Plugin, mut listener: tq_host::quic::Listener<tq_host::metrics::DefaultMetrics>) {
    /// let tasks = tokio_util::task::TaskTracker::new();
    /// while let Some(incoming) = listener.accept().await {
    ///     tasks.spawn(plugin.start_connection(incoming, &Default::default(), std::future::pending()));
    /// }
    /// # }
    /// ```
    pub fn start_connection<M: crate::metrics::Metrics>(
        &self,
        incoming: crate::quic::IncomingConnection<M>,
        h3: &crate::http3::Http3Settings,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let inner = self.inner.clone();
        let peer = incoming.peer_addr().to_string();
        let run: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = match inner.world
        {
            World::QuicApp => {
                let (app, session) = QuicPluginApp::new();
                incoming.start(app);
                Box::pin(quic::serve(inner, session, shutdown))
            }
            World::Http3App | World::WasiHttp => {
                let (driver, controller) = crate::http3::ServerH3Driver::new_server(h3.clone());
                let conn = incoming.start(driver);
                Box::pin(async move {
                    let Ok(hs) = conn.established().await else {
                        return;
                    };
                    let meta = ConnectionMeta {
                        alpn: String::from_utf8_lossy(&hs.alpn).into_owned(),
                        server_name: hs.server_name,
                        peer,
                    };
                    if inner.world == World::WasiHttp {
                        wasi_http::serve(inner, controller, meta, shutdown).await
                    } else {
                        http3::serve(inner, controller, meta, shutdown).await
                    }
                })
            }
        };
        run
    }
}

impl Plugin {
    /// For benchmarks: mean instantiation time and mean hook-call time
    /// (`wait-for-data`) over `n` runs, outside any connection.
    ///
    /// # Errors
    /// The plugin failed to instantiate or trapped.
    #[doc(hidden)]
    pub async fn measure_overheads(
        &self,
        n: u32,
    ) -> anyhow::Result<(std::time::Duration, std::time::Duration)> {
        let (_driver, controller) = crate::http3::ServerH3Driver::new_server(Default::default());
        http3::measure(&self.inner, controller.handle(), n).await
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Links a component against WASI and one world's host interfaces
/// (`add`), checking that every import it needs is provided.
fn link<C: Send + 'static>(
    engine: &Engine,
    component: &Component,
    path: &Path,
    add: impl FnOnce(&mut Linker<PluginState<C>>) -> wasmtime::Result<()>,
) -> anyhow::Result<wasmtime::component::InstancePre<PluginState<C>>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).wt_context(|| "cannot link WASI".into())?;
    add(&mut linker).wt_context(|| "cannot link the host interfaces".into())?;
    linker.instantiate_pre(component).wt_context(|| {
        format!(
            "{} imports something tq-host does not provide",
            path.display()
        )
    })
}

/// What the host tells a plugin about its connection.
#[derive(Debug, Clone, Default)]
pub struct ConnectionMeta {
    /// Negotiated ALPN.
    pub alpn: String,
    /// SNI, if any.
    pub server_name: Option<String>,
    /// Peer address.
    pub peer: String,
}
