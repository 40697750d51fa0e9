//! The WebAssembly plugin runtime: loads a component, checks which world it
//! implements, and runs one sandboxed instance per connection.
//!
//! It owns wasmtime and knows the HTTP/3 layer only through its public API
//! (controller, events, stream channels); it never names quiche. Every store
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
mod http3;
mod limits;
mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use wasmtime::component::{Component, Linker};
use wasmtime::Engine;

pub use limits::{DirGrant, PluginGrants, PluginLimits};

use engine::{build_engine, EpochTicker};
use state::PluginState;

/// Bindings generated from `wit/`; private, so no raw type leaks out.
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "http3-app",
        exports: { default: async },
    });
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

/// The worlds a plugin may implement, by the interface it exports.
const HTTP3_EXPORT: &str = "tq:plugin/h3-handler@0.1.0";

/// Which world a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum World {
    /// `tq:plugin/http3-app`: the plugin answers HTTP/3 requests.
    Http3App,
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            World::Http3App => f.write_str("tq:plugin/http3-app@0.1.0"),
        }
    }
}

/// A loaded, validated plugin, ready to run on connections. Cheap to share.
pub struct Plugin {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    world: World,
    engine: Engine,
    pre: bindings::Http3AppPre<PluginState>,
    limits: PluginLimits,
    grants: PluginGrants,
    _ticker: EpochTicker,
}

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
        if !bytes.starts_with(b"\0asm") {
            bail!("{} is not a WebAssembly file", path.display());
        }
        // A component's version field differs from a core module's.
        if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
            bail!(
                "{} is a core WebAssembly module, not a component: build it for wasm32-wasip2 \
                 (or run `wasm-tools component new`) so that it implements {}",
                path.display(),
                World::Http3App
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
        let world = if exports.iter().any(|e| e == HTTP3_EXPORT) {
            World::Http3App
        } else {
            bail!(
                "{} implements none of the worlds tq-host serves: expected {} (exporting {}); \
                 it exports [{}]",
                path.display(),
                World::Http3App,
                HTTP3_EXPORT,
                exports.join(", ")
            );
        };
        let mut linker: Linker<PluginState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .wt_context(|| "cannot link WASI".into())?;
        bindings::Http3App::add_to_linker::<PluginState, wasmtime::component::HasSelf<PluginState>>(
            &mut linker,
            |s| s,
        )
        .wt_context(|| "cannot link the host interfaces".into())?;
        let pre = linker.instantiate_pre(&component).wt_context(|| {
            format!(
                "{} imports something tq-host does not provide",
                path.display()
            )
        })?;
        let pre = bindings::Http3AppPre::new(pre)
            .wt_context(|| format!("{} does not match {}", path.display(), World::Http3App))?;
        let ticker = EpochTicker::start(engine.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                world,
                engine,
                pre,
                limits,
                grants,
                _ticker: ticker,
            }),
        })
    }

    /// The file the plugin came from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The world it implements.
    pub fn world(&self) -> World {
        self.inner.world
    }

    /// Serves one HTTP/3 connection with a fresh instance until the
    /// connection closes. A trap, panic, deadline or memory overrun closes
    /// this connection with H3_INTERNAL_ERROR and is logged; nothing else is
    /// affected.
    pub async fn serve_http3(&self, controller: crate::http3::H3Controller, info: ConnectionMeta) {
        http3::serve(self.inner.clone(), controller, info).await
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
