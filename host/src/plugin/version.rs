//! One loaded version of a plugin, as every world sees it: its file, its
//! sandbox, and its liveness — connections pinned to it, requests in
//! flight, and `retired`, the signal a reload sends when its drain deadline
//! passes (close gracefully). The linked component itself is typed per
//! world and kept by the world's own code (see `handle.rs`), so this module
//! knows no world.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use wasmtime::component::Instance;
use wasmtime::Store;

use super::sandbox::{call_export, PluginState, Sandbox};
use super::world::{World, INIT_EXPORT};

/// How metrics and logs name a version: the first 12 hex digits of its
/// SHA-256 (what `GET /versions` shows in full).
pub(crate) fn version_label(hash: &str) -> std::sync::Arc<str> {
    std::sync::Arc::from(&hash[..hash.len().min(12)])
}

/// One loaded version.
pub(crate) struct Version {
    pub(crate) path: PathBuf,
    pub(crate) sandbox: Sandbox,
    pub(crate) world: World,
    /// SHA-256 of the component's bytes, in hex.
    pub(crate) hash: String,
    pub(crate) loaded_at: SystemTime,
    /// How long compiling and linking took.
    pub(crate) compile_time: Duration,
    /// Whether it exports the optional `tq:plugin/init` / `tq:plugin/migrate`.
    pub(crate) has_init: bool,
    pub(crate) has_migrate: bool,
    /// Whether its code came from the compilation cache.
    pub(crate) compiled: super::Compiled,
    /// The largest linear memory an instance starts with, in bytes.
    pub(crate) initial_memory: u64,
    pub(crate) live: Live,
}

/// What a version's connections share while it serves.
pub(crate) struct Live {
    connections: AtomicUsize,
    requests: AtomicUsize,
    /// Set when the version's drain deadline passes: its connections get a
    /// graceful close (GOAWAY for HTTP/3, `shutdown` for raw QUIC).
    pub(crate) retired: watch::Sender<bool>,
    /// Set when a retired version's connections have had their time: the
    /// rest are closed at once, so the version (its engine, instance pool
    /// and ticker thread) is released.
    pub(crate) killed: watch::Sender<bool>,
}

impl Live {
    pub(crate) fn new() -> Self {
        Self {
            connections: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            retired: watch::Sender::new(false),
            killed: watch::Sender::new(false),
        }
    }

    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    pub(crate) fn is_retired(&self) -> bool {
        *self.retired.borrow()
    }

    /// Resolves once the version is retired.
    pub(crate) async fn wait_retired(&self) {
        wait_true(&self.retired).await
    }

    /// Resolves once the version's remaining connections must close now.
    pub(crate) async fn wait_killed(&self) {
        wait_true(&self.killed).await
    }
}

async fn wait_true(flag: &watch::Sender<bool>) {
    let mut rx = flag.subscribe();
    if rx.wait_for(|r| *r).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Counts a connection on a version for as long as it is held, and keeps
/// the version loaded that long.
pub(crate) struct ConnectionPin(Arc<Version>);

impl ConnectionPin {
    pub(crate) fn new(version: Arc<Version>) -> Self {
        version.live.connections.fetch_add(1, Ordering::Relaxed);
        Self(version)
    }
}

impl Drop for ConnectionPin {
    fn drop(&mut self) {
        self.0.live.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Keeps the version's count of requests in flight in step with one
/// connection's (or one request's); gives its share back when dropped, also
/// when its task is aborted.
pub(crate) struct RequestGauge<'a> {
    live: &'a Live,
    mine: usize,
}

impl<'a> RequestGauge<'a> {
    pub(crate) fn new(live: &'a Live) -> Self {
        Self { live, mine: 0 }
    }

    pub(crate) fn set(&mut self, n: usize) {
        let counter = &self.live.requests;
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

impl Version {
    /// Runs the optional `init` export on a fresh instance (what a reload
    /// checks before swapping).
    pub(crate) async fn run_init<C: Send>(
        &self,
        store: &mut Store<PluginState<C>>,
        instance: &Instance,
    ) -> Result<(), String> {
        if !self.has_init {
            return Ok(());
        }
        match call_export::<C, (), Result<(), String>>(
            store,
            instance,
            crate::metrics::CallKind::Init,
            INIT_EXPORT,
            "init",
            (),
        )
        .await
        {
            None => Err(format!(
                "it exports {INIT_EXPORT} without an `init` function"
            )),
            Some(Err(why)) => Err(format!("its init failed: {why}")),
            Some(Ok(Err(msg))) => Err(format!("its init refused to start: {msg}")),
            Some(Ok(Ok(()))) => Ok(()),
        }
    }
}
