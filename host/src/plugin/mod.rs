//! The WebAssembly plugin runtime: loads a component, tells which of four
//! worlds it implements, and serves connections with it in a sandbox.
//!
//! ```text
//!   handle (Plugin: load, link, dispatch) ──▶ http3/      http3-app: one instance per connection
//!        │                                 ├▶ quic/       quic-app: the connection's application (+ bridge)
//!        │                                 └▶ wasi_http/  wasi:http proxy (0.2) and service (0.3): one instance per request
//!        ▼                                         │
//!   version (one loaded version: typed component, liveness)   ◀┘
//!        ▼
//!   sandbox (engine, limits, store, calls under a CPU deadline)      reload (LivePlugin) ──▶ handle
//! ```
//!
//! It owns wasmtime. HTTP/3 plugins see the HTTP/3 layer only through its
//! public API (controller, events, stream channels); raw QUIC plugins run
//! behind [`QuicPluginApp`], an `ApplicationOverQuic` that bridges the
//! connection's worker and the plugin's own task. Every store gets a memory
//! cap, a CPU deadline per call (epoch interruption, with a yield to the
//! runtime every tick so a busy plugin cannot stall others), and WASI with
//! nothing granted but what the operator lists ([`PluginGrants`]: read-only
//! directories, environment variables, outgoing HTTP destinations); stdout
//! and stderr are captured (bounded) and logged with the connection.
//!
//! ```no_run
//! # fn demo() -> Result<(), tq_host::plugin::PluginError> {
//! use tq_host::plugin::{Plugin, PluginLimits};
//! let plugin = Plugin::load("hello.wasm".as_ref(), PluginLimits::default())?;
//! println!("{} implements {}", plugin.path().display(), plugin.world());
//! # Ok(()) }
//! ```

mod bindings;
mod error;
mod handle;
mod http3;
mod quic;
mod reload;
mod sandbox;
mod version;
mod wasi_http;
mod world;

pub use error::PluginError;
pub use handle::Plugin;
pub use quic::{QuicPluginApp, QuicPluginSession};
pub use reload::{LivePlugin, Reloaded, VersionInfo};
pub use sandbox::{
    default_cache_dir, Compiled, ComponentLimits, DirGrant, PluginGrants, PluginLimits,
};
pub(crate) use version::version_label;
pub use world::{ConnectionMeta, World};
