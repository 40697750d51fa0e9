//! [`Plugin`], the public handle of one loaded version: loading a file
//! (read, compile, tell the world, link), what an operator asks of a
//! version, and serving a connection with it, dispatched once to the
//! world's own code with the world's typed component.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use wasmtime::component::{Component, HasSelf, Linker};

use super::bindings;
use super::error::PluginError;
use super::http3::host::Http3Pre;
use super::quic::{QuicPluginApp, QuicPluginSession, QuicTarget, QuicWorld};
use super::sandbox::{PluginGrants, PluginLimits, PluginState, Sandbox};
use super::version::{Live, Version};
use super::wasi_http::host::Pool;
use super::wasi_http::Handler;
use super::world::{ConnectionMeta, World, INIT_EXPORT, MIGRATE_EXPORT};
use super::{http3, quic, wasi_http};
use crate::http3::{H3Controller, Http3Settings, ServerH3Driver};
use crate::metrics::Metrics;
use crate::metrics::{NoMetrics, ServiceMetrics};
use crate::quic::IncomingConnection;

/// A loaded, validated plugin version, ready to run on connections. Cheap
/// to clone (references).
#[derive(Clone)]
pub struct Plugin {
    pub(crate) inner: Arc<Version>,
    world: Linked,
}

/// The component linked for its world, ready to instantiate: each world's
/// code gets its own type from the dispatch here, never this enum.
#[derive(Clone)]
enum Linked {
    Http3(Http3Pre),
    Quic(Arc<QuicWorld>),
    /// Either WASI release of wasi:http.
    WasiHttp(Handler),
}

/// A version held without keeping it loaded (what `LivePlugin` keeps of
/// replaced versions): alive while a connection holds it.
pub(crate) struct WeakPlugin {
    version: std::sync::Weak<Version>,
    quic: Option<std::sync::Weak<QuicWorld>>,
}

impl WeakPlugin {
    /// The version, if a connection still holds it.
    pub(crate) fn version(&self) -> Option<Arc<Version>> {
        self.version.upgrade()
    }

    /// Offers this version's raw QUIC connections a move to `next`, if
    /// both can migrate and any is still alive.
    pub(crate) fn hand_over_to(&self, next: &Plugin) {
        let (Some(version), Some(quic)) = (
            self.version.upgrade(),
            self.quic.as_ref().and_then(|q| q.upgrade()),
        ) else {
            return;
        };
        if let (true, Linked::Quic(world)) =
            (version.has_migrate && next.can_migrate(), &next.world)
        {
            quic.successor.send_replace(Some(QuicTarget {
                version: next.inner.clone(),
                world: world.clone(),
            }));
        }
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.inner.path)
            .field("world", &self.world())
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
    pub fn load(path: &Path, limits: PluginLimits) -> Result<Self, PluginError> {
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
    ) -> Result<Self, PluginError> {
        Self::load_with_metrics(path, limits, grants, Arc::new(NoMetrics))
    }

    /// As [`load_with_grants`](Self::load_with_grants), reporting plugin
    /// calls, instances and requests to `metrics`.
    ///
    /// # Errors
    /// As [`load_with_grants`](Self::load_with_grants).
    pub fn load_with_metrics(
        path: &Path,
        limits: PluginLimits,
        grants: PluginGrants,
        metrics: Arc<dyn ServiceMetrics>,
    ) -> Result<Self, PluginError> {
        for d in &grants.dirs {
            if !d.host.is_dir() {
                return Err(PluginError::Grant {
                    dir: d.host.clone(),
                    reason: "not a directory".into(),
                });
            }
        }
        for grant in &grants.http_hosts {
            if super::wasi_http::host::grant_parts(grant).is_none() {
                return Err(PluginError::HttpGrant {
                    grant: grant.clone(),
                });
            }
        }
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::build(path, &bytes, limits, grants, metrics)
    }

    /// As [`load`](Self::load), from bytes already read.
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn from_bytes(
        path: &Path,
        bytes: &[u8],
        limits: PluginLimits,
    ) -> Result<Self, PluginError> {
        Self::build(
            path,
            bytes,
            limits,
            PluginGrants::default(),
            Arc::new(NoMetrics),
        )
    }

    pub(crate) fn build(
        path: &Path,
        bytes: &[u8],
        limits: PluginLimits,
        grants: PluginGrants,
        metrics: Arc<dyn ServiceMetrics>,
    ) -> Result<Self, PluginError> {
        let started = std::time::Instant::now();
        let path_buf = || path.to_owned();
        if !bytes.starts_with(b"\0asm") {
            return Err(PluginError::NotWasm { path: path_buf() });
        }
        // A component's version field differs from a core module's.
        if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
            return Err(PluginError::CoreModule {
                path: path_buf(),
                worlds: World::describe_all(),
            });
        }
        let hash = hex(&boring::sha::sha256(bytes));
        let label = super::version::version_label(&hash);
        let concurrent = World::needs_concurrency(bytes);
        let sandbox = Sandbox::new(limits, grants, metrics, label, concurrent)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let engine = &sandbox.engine;
        let cache_dir = sandbox.limits.cache_dir.clone();
        let compiled = super::sandbox::load_or_compile(engine, bytes, &hash, cache_dir.as_deref());
        let (component, how) = compiled.map_err(|e| {
            let reason = format!("{e:#}");
            match super::sandbox::explain_pool_limit(&reason, &sandbox.limits) {
                Some(explanation) => PluginError::Limits {
                    path: path_buf(),
                    explanation,
                    reason,
                },
                None => PluginError::Invalid {
                    path: path_buf(),
                    reason: async_hint(format!("{e:?}"), concurrent),
                },
            }
        })?;
        let exports: Vec<String> = component
            .component_type()
            .exports(engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let Some(world) = World::detect(&exports) else {
            return Err(PluginError::NoWorld {
                path: path_buf(),
                expected: World::describe_all(),
                exports: exports.join(", "),
            });
        };
        let mismatch = |e: wasmtime::Error| PluginError::Link {
            path: path_buf(),
            reason: format!("does not match {world}: {e:?}"),
        };
        let linked = match world {
            World::Http3App => {
                let pre = link(engine, &component, path, |l| {
                    bindings::h3::Http3App::add_to_linker::<_, HasSelf<_>>(l, |s| s)
                })?;
                Linked::Http3(bindings::h3::Http3AppPre::new(pre).map_err(mismatch)?)
            }
            World::QuicApp => {
                let pre = link(engine, &component, path, |l| {
                    bindings::quic::QuicApp::add_to_linker::<_, HasSelf<_>>(l, |s| s)
                })?;
                let pre = bindings::quic::QuicAppPre::new(pre).map_err(mismatch)?;
                Linked::Quic(Arc::new(QuicWorld::new(pre)))
            }
            World::WasiHttp => {
                let pre = link(engine, &component, path, |l| {
                    wasmtime_wasi_http::p2::add_only_http_to_linker_async(l)
                })?;
                Linked::WasiHttp(Handler::Proxy {
                    pre: wasmtime_wasi_http::p2::bindings::ProxyPre::new(pre).map_err(mismatch)?,
                    pool: Arc::new(Pool::default()),
                })
            }
            World::WasiHttpService => {
                // Toolchains' standard libraries still import WASI 0.2
                // (linked by `link`) next to the 0.3 interfaces.
                let pre = link(engine, &component, path, |l| {
                    wasmtime_wasi::p3::add_to_linker(l)?;
                    wasmtime_wasi_http::p3::add_to_linker(l)
                })?;
                Linked::WasiHttp(Handler::Service(
                    wasmtime_wasi_http::p3::bindings::ServicePre::new(pre).map_err(mismatch)?,
                ))
            }
        };
        Ok(Self {
            world: linked,
            inner: Arc::new(Version {
                path: path.to_owned(),
                sandbox,
                world,
                hash,
                loaded_at: SystemTime::now(),
                compile_time: started.elapsed(),
                has_init: exports.iter().any(|e| e == INIT_EXPORT),
                has_migrate: exports.iter().any(|e| e == MIGRATE_EXPORT),
                compiled: how,
                initial_memory: initial_memory(&component),
                live: Live::new(),
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

    /// How logs and metrics name this version: the first 12 hex digits of
    /// its SHA-256.
    pub fn version_label(&self) -> &str {
        &self.inner.sandbox.version_label
    }

    /// The memory an instance starts with, in bytes: its largest linear
    /// memory's initial size. A fresh instance's start and reset cost
    /// grows with it (for a Rust plugin, mostly its stack: see the
    /// README's "Plugin memory").
    pub fn initial_memory_bytes(&self) -> u64 {
        self.inner.initial_memory
    }

    /// When it was loaded.
    pub fn loaded_at(&self) -> SystemTime {
        self.inner.loaded_at
    }

    /// Whether its code came from the compilation cache or was compiled.
    pub fn compiled(&self) -> super::Compiled {
        self.inner.compiled
    }

    /// How long compiling and linking it took.
    pub fn compile_time(&self) -> std::time::Duration {
        self.inner.compile_time
    }

    /// Connections it serves now.
    pub fn connections(&self) -> usize {
        self.inner.live.connections()
    }

    /// HTTP/3 requests it is answering now (responses not yet ended).
    pub fn requests_in_flight(&self) -> usize {
        self.inner.live.requests()
    }

    /// The world it implements.
    pub fn world(&self) -> World {
        self.inner.world
    }

    /// Whether a raw QUIC plugin can carry live connections to a new version
    /// (it exports `tq:plugin/migrate`).
    pub fn can_migrate(&self) -> bool {
        matches!(self.world, Linked::Quic(_)) && self.inner.has_migrate
    }

    /// Asks every connection on this version to close gracefully: HTTP/3
    /// ones get GOAWAY and end once their requests are answered; raw QUIC
    /// ones get the `shutdown` event.
    pub fn retire(&self) {
        self.inner.live.retired.send_replace(true);
    }

    /// Whether [`retire`](Self::retire) was called.
    pub fn is_retired(&self) -> bool {
        self.inner.live.is_retired()
    }

    /// Offers this version's raw QUIC connections a move to `next` (both
    /// must export `tq:plugin/migrate`; see [`can_migrate`](Self::can_migrate)).
    pub fn hand_over_to(&self, next: &Plugin) {
        self.downgrade().hand_over_to(next);
    }

    /// What `LivePlugin` keeps of a replaced version.
    pub(crate) fn downgrade(&self) -> WeakPlugin {
        WeakPlugin {
            version: Arc::downgrade(&self.inner),
            quic: match &self.world {
                Linked::Quic(w) => Some(Arc::downgrade(w)),
                _ => None,
            },
        }
    }

    /// Whether two plugins are the same loaded version.
    pub fn same_version(&self, other: &Plugin) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Instantiates the plugin once, outside any connection, checks its
    /// exports and runs its optional `init` export: what a reload checks
    /// before swapping.
    ///
    /// # Errors
    /// [`PluginError::Check`]: instantiation traps, the exports do not
    /// match, or `init` fails, traps or overruns its deadline.
    pub async fn validate(&self) -> Result<(), PluginError> {
        let v = &self.inner;
        let res = match &self.world {
            Linked::Http3(pre) => http3::validate(v, pre).await,
            Linked::Quic(w) => quic::validate(v, &w.pre).await,
            Linked::WasiHttp(handler) => wasi_http::validate(v, handler).await,
        };
        // Only instantiation errors are the sandbox's; `init`'s message is
        // the plugin's own words.
        res.map_err(|reason| {
            let explained = reason
                .starts_with("instantiating it failed")
                .then(|| super::sandbox::explain_pool_limit(&reason, &v.sandbox.limits))
                .flatten();
            match explained {
                Some(explanation) => PluginError::Limits {
                    path: v.path.clone(),
                    explanation,
                    reason,
                },
                None => PluginError::Check {
                    path: v.path.clone(),
                    reason,
                },
            }
        })
    }

    /// Serves one raw QUIC connection (whose application is `session`'s
    /// [`QuicPluginApp`]) with a fresh instance until the connection closes.
    /// When `shutdown` completes the plugin gets a `shutdown` event. A trap,
    /// panic, deadline or memory overrun closes this connection with
    /// application error code [`INTERNAL_ERROR_CODE`](crate::quic::INTERNAL_ERROR_CODE)
    /// and is logged; nothing else is affected. Does nothing for a plugin of
    /// another world.
    pub async fn serve_quic(
        &self,
        session: QuicPluginSession,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) {
        if let Linked::Quic(w) = &self.world {
            quic::serve(self.inner.clone(), w.clone(), session, shutdown).await
        }
    }

    /// Serves one HTTP/3 connection until it closes: with one instance for
    /// the connection (`http3-app`) or one per request (wasi:http). A trap,
    /// panic, deadline or memory overrun closes this connection with
    /// H3_INTERNAL_ERROR (`http3-app`) or answers that request with 500
    /// (wasi:http), and is logged; nothing else is affected. Does nothing
    /// for a raw QUIC plugin.
    pub async fn serve_http3(&self, controller: H3Controller, info: ConnectionMeta) {
        self.serve_h3(controller, info, std::future::pending())
            .await
    }

    async fn serve_h3(
        &self,
        controller: H3Controller,
        meta: ConnectionMeta,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) {
        let v = self.inner.clone();
        match &self.world {
            Linked::Http3(pre) => http3::serve(v, pre.clone(), controller, meta, shutdown).await,
            Linked::WasiHttp(handler) => {
                wasi_http::serve(v, handler.clone(), controller, meta, shutdown).await
            }
            Linked::Quic(_) => {}
        }
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
    pub fn start_connection<M: Metrics>(
        &self,
        incoming: IncomingConnection<M>,
        h3: &Http3Settings,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let plugin = self.clone();
        let mut incoming = incoming;
        incoming.set_label(format!("plugin@{}", self.version_label()));
        let peer = incoming.peer_addr().to_string();
        let run: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = match &self.world
        {
            Linked::Quic(w) => {
                let (app, session) =
                    QuicPluginApp::with_queue_limit(self.inner.sandbox.limits.queued_bytes);
                incoming.start(app);
                Box::pin(quic::serve(
                    self.inner.clone(),
                    w.clone(),
                    session,
                    shutdown,
                ))
            }
            Linked::Http3(_) | Linked::WasiHttp(_) => {
                let world = self.world().short_name();
                let sandbox = &self.inner.sandbox;
                let (driver, controller) = ServerH3Driver::new_server(h3.clone());
                let driver = driver.with_request_metrics(
                    sandbox.metrics.clone(),
                    world,
                    Some(sandbox.version_label.to_string()),
                );
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
                    plugin.serve_h3(controller, meta, shutdown).await
                })
            }
        };
        run
    }

    /// For benchmarks: mean instantiation time and mean hook-call time
    /// (`wait-for-data`) over `n` runs, outside any connection.
    ///
    /// # Errors
    /// The plugin is not an `http3-app` one, failed to instantiate or
    /// trapped.
    #[doc(hidden)]
    pub async fn measure_overheads(
        &self,
        n: u32,
    ) -> Result<(std::time::Duration, std::time::Duration), String> {
        let Linked::Http3(pre) = &self.world else {
            return Err(format!("{} is not an HTTP/3 plugin", self.path().display()));
        };
        let (_driver, controller) = ServerH3Driver::new_server(Default::default());
        http3::measure(&self.inner, pre, controller.handle(), n).await
    }
}

impl Plugin {
    /// For benchmarks: the mean time of a fresh store and instance of a
    /// wasi:http component (what each request costs before the guest
    /// runs), over `n` runs.
    ///
    /// # Errors
    /// The plugin is not a wasi:http one, or failed to instantiate.
    #[doc(hidden)]
    pub async fn measure_instantiation(&self, n: u32) -> Result<std::time::Duration, String> {
        let Linked::WasiHttp(handler) = &self.world else {
            return Err(format!(
                "{} is not a wasi:http plugin",
                self.path().display()
            ));
        };
        wasi_http::measure_instantiation(&self.inner, handler, n).await
    }
}

/// A compile error from a component that uses the component model's
/// async features without exporting the one world that gets them: says so,
/// since wasmtime's own words only name a feature.
fn async_hint(reason: String, concurrent: bool) -> String {
    let lower = reason.to_ascii_lowercase();
    if concurrent || !lower.contains("async") {
        return reason;
    }
    format!(
        "{reason}\n(it uses the component model's async features, which tq-host turns on only \
         for WASI 0.3 wasi:http/service components, exporting {})",
        World::WasiHttpService.export()
    )
}

/// The largest initial linear memory of `component`'s instances, in bytes.
fn initial_memory(component: &wasmtime::component::Component) -> u64 {
    component
        .resources_required()
        .and_then(|r| r.max_initial_memory_size)
        .unwrap_or(0)
        .saturating_mul(64 << 10)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Links a component against WASI and one world's host interfaces
/// (`add`), checking that every import it needs is provided.
fn link<C: Send + 'static>(
    engine: &wasmtime::Engine,
    component: &Component,
    path: &Path,
    add: impl FnOnce(&mut Linker<PluginState<C>>) -> wasmtime::Result<()>,
) -> Result<wasmtime::component::InstancePre<PluginState<C>>, PluginError> {
    let link_err = |what: &str, e: wasmtime::Error| PluginError::Link {
        path: path.to_owned(),
        reason: format!("{what}: {e:?}"),
    };
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|e| link_err("cannot link WASI", e))?;
    add(&mut linker).map_err(|e| link_err("cannot link the host interfaces", e))?;
    linker
        .instantiate_pre(component)
        .map_err(|e| link_err("imports something tq-host does not provide", e))
}
