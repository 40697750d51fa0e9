//! The typed error of the plugin runtime's public API: why a plugin could
//! not be loaded, checked or reloaded. Each message names the file and what
//! to do about it; the CLI prints them as they are.

use std::path::PathBuf;

/// Why a plugin was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The file could not be read.
    #[error("cannot read plugin {}: {source}", path.display())]
    Read {
        /// The plugin file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A granted directory does not exist.
    #[error("cannot grant {}: {reason}", dir.display())]
    Grant {
        /// The directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// An `--allow-http` grant that names no destination.
    #[error("cannot grant outgoing HTTP to `{grant}`: expected HOST, HOST:PORT, an IPv6 address or [IPv6]:PORT")]
    HttpGrant {
        /// The grant as given.
        grant: String,
    },
    /// Not a WebAssembly file at all.
    #[error("{} is not a WebAssembly file", path.display())]
    NotWasm {
        /// The plugin file.
        path: PathBuf,
    },
    /// A core module where a component is needed.
    #[error(
        "{} is a core WebAssembly module, not a component: build it for wasm32-wasip2 \
         (or run `wasm-tools component new`) so that it implements {worlds}",
        path.display()
    )]
    CoreModule {
        /// The plugin file.
        path: PathBuf,
        /// The worlds tq-host serves, described.
        worlds: String,
    },
    /// It does not fit the sandbox's per-component limits (see
    /// [`ComponentLimits`](super::ComponentLimits)); the message names the
    /// limit, the component's need and the flag that raises it.
    #[error("{} does not fit the plugin sandbox: {explanation} (wasmtime: {reason})", path.display())]
    Limits {
        /// The plugin file.
        path: PathBuf,
        /// Which limit, the need, how to raise it.
        explanation: String,
        /// wasmtime's words.
        reason: String,
    },
    /// wasmtime could not compile it.
    #[error("{} is not a valid WebAssembly component: {reason}", path.display())]
    Invalid {
        /// The plugin file.
        path: PathBuf,
        /// wasmtime's reason.
        reason: String,
    },
    /// A component that implements no world tq-host serves.
    #[error(
        "{} implements none of the worlds tq-host serves: expected {expected}; it exports [{exports}]",
        path.display()
    )]
    NoWorld {
        /// The plugin file.
        path: PathBuf,
        /// The worlds tq-host serves, described.
        expected: String,
        /// What it exports.
        exports: String,
    },
    /// It imports something the host does not provide, or its exports do
    /// not have the world's types.
    #[error("{} {reason}", path.display())]
    Link {
        /// The plugin file.
        path: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// The engine could not be set up with these limits.
    #[error("cannot configure wasmtime: {0}")]
    Engine(String),
    /// The check before serving failed: instantiation, `init`, exports.
    #[error("{} failed its check: {reason}", path.display())]
    Check {
        /// The plugin file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A reload would change the world.
    #[error(
        "{} now implements {new}, but the running version implements {running}: \
         a reload cannot change the world (restart tq-host instead)",
        path.display()
    )]
    WorldChanged {
        /// The plugin file.
        path: PathBuf,
        /// The new file's world.
        new: super::world::World,
        /// The running version's world.
        running: super::world::World,
    },
    /// The compile task itself failed (it panicked or was cancelled).
    #[error("the compile task failed: {0}")]
    Task(String),
}
