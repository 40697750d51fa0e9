//! One loaded version of a plugin, as every world sees it: its sandbox, its
//! linked component (typed per world, so a world's code never checks at run
//! time what it was given), and its liveness — connections pinned to it,
//! requests in flight, and the two signals a reload sends it: `retired`
//! (drain deadline passed: close gracefully) and `successor` (raw QUIC
//! connections may move to the new version).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use wasmtime::component::Instance;
use wasmtime::Store;

use super::http3::host::Http3Pre;
use super::quic::host::QuicPre;
use super::sandbox::{call_export, PluginState, Sandbox};
use super::wasi_http::host::{Pool, ProxyPre};
use super::world::{World, INIT_EXPORT};

/// A component linked for its world, ready to instantiate.
pub(crate) enum Pre {
    Http3(Http3Pre),
    Quic(QuicPre),
    WasiHttp {
        pre: ProxyPre,
        /// Idle instances, when reuse is on; they go with the version.
        pool: Arc<Pool>,
    },
}

impl Pre {
    pub(crate) fn world(&self) -> World {
        match self {
            Pre::Http3(_) => World::Http3App,
            Pre::Quic(_) => World::QuicApp,
            Pre::WasiHttp { .. } => World::WasiHttp,
        }
    }
}

/// One loaded version.
pub(crate) struct Version {
    pub(crate) path: PathBuf,
    pub(crate) sandbox: Sandbox,
    pub(crate) pre: Pre,
    /// SHA-256 of the component's bytes, in hex.
    pub(crate) hash: String,
    pub(crate) loaded_at: SystemTime,
    /// How long compiling and linking took.
    pub(crate) compile_time: Duration,
    /// Whether it exports the optional `tq:plugin/init` / `tq:plugin/migrate`.
    pub(crate) has_init: bool,
    pub(crate) has_migrate: bool,
    pub(crate) live: Live,
}

/// The version a raw QUIC connection may move to.
#[derive(Clone)]
pub(crate) struct QuicSuccessor {
    pub(crate) version: Arc<Version>,
    pub(crate) pre: QuicPre,
}

/// What a version's connections share while it serves.
pub(crate) struct Live {
    connections: AtomicUsize,
    requests: AtomicUsize,
    /// Set when the version's drain deadline passes: its connections get a
    /// graceful close (GOAWAY for HTTP/3, `shutdown` for raw QUIC).
    pub(crate) retired: watch::Sender<bool>,
    /// The version its raw QUIC connections may move to (`migrate`).
    pub(crate) successor: watch::Sender<Option<QuicSuccessor>>,
}

impl Live {
    pub(crate) fn new() -> Self {
        Self {
            connections: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            retired: watch::Sender::new(false),
            successor: watch::Sender::new(None),
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
        let mut rx = self.retired.subscribe();
        if rx.wait_for(|r| *r).await.is_err() {
            std::future::pending::<()>().await;
        }
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
        match call_export::<C, (), Result<(), String>>(store, instance, INIT_EXPORT, "init", ())
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
