//! Hot reload: a [`LivePlugin`] holds the version new connections get, and
//! replaces it without failing a request or dropping a connection.
//!
//! A reload reads the file, skips it if the bytes are the running ones,
//! compiles it on a blocking thread (off the serving threads), checks it
//! implements the running world, instantiates it once and runs its optional
//! `init`, and only then swaps. New connections get the new version;
//! existing ones stay pinned to theirs (raw QUIC ones that export
//! `tq:plugin/migrate` move over). An old version is freed when its last
//! connection ends; if connections remain when the drain deadline passes,
//! they are asked to close gracefully ([`Plugin::retire`]). A version that
//! fails any step is refused: the error is logged and kept for
//! [`LivePlugin::last_error`], and the running version keeps serving.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use tq_host::plugin::{LivePlugin, PluginGrants, PluginLimits, Reloaded};
//! let live = LivePlugin::load(
//!     "app.wasm".as_ref(),
//!     PluginLimits::default(),
//!     PluginGrants::default(),
//!     Duration::from_secs(60),
//! )
//! .await?;
//! // ... serve with `live.current()` per new connection ...
//! match live.reload().await? {
//!     Reloaded::New(v) => println!("now serving {}", v.hash()),
//!     Reloaded::Unchanged => println!("same bytes; nothing to do"),
//! }
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinSet;
use tracing::{info, warn};

use super::error::PluginError;
use super::handle::{hex, Plugin, WeakPlugin};
use super::sandbox::{PluginGrants, PluginLimits};
use super::version::Version;
use crate::metrics::{NoMetrics, ReloadOutcome, ServiceMetrics};

/// A plugin whose version can be replaced while it serves. Cheap to clone.
#[derive(Clone)]
pub struct LivePlugin {
    inner: Arc<LiveInner>,
}

struct LiveInner {
    path: PathBuf,
    limits: PluginLimits,
    grants: PluginGrants,
    drain_timeout: Duration,
    metrics: Arc<dyn ServiceMetrics>,
    current: RwLock<Current>,
    /// Every version loaded before the current one that is still alive.
    old: Mutex<Vec<(u64, WeakPlugin)>>,
    last_error: Mutex<Option<(SystemTime, String)>>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<u64>,
    /// Drain deadlines of replaced versions; aborted with the last clone.
    drains: Mutex<JoinSet<()>>,
}

/// The version new connections get, and its number.
#[derive(Clone)]
struct Current {
    id: u64,
    plugin: Plugin,
}

/// What a reload did.
#[derive(Debug)]
pub enum Reloaded {
    /// A new version serves new connections.
    New(Plugin),
    /// The file holds the bytes already serving: nothing changed.
    Unchanged,
}

/// One loaded version, for listings (the admin endpoint).
#[derive(Debug, Clone, serde::Serialize)]
pub struct VersionInfo {
    /// 1 for the first version loaded, then counting up.
    pub id: u64,
    /// The file it was loaded from.
    pub file: PathBuf,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
    /// When it was loaded (RFC 3339).
    pub loaded_at: String,
    /// Whether new connections get it.
    pub current: bool,
    /// Whether its drain deadline passed (its connections were asked to
    /// close).
    pub retired: bool,
    /// Connections it serves.
    pub connections: usize,
    /// HTTP/3 requests it is answering.
    pub requests_in_flight: usize,
    /// How long compiling it took, in milliseconds.
    pub compile_ms: f64,
    /// Whether its code came from the compilation cache.
    pub from_cache: bool,
}

impl std::fmt::Debug for LivePlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LivePlugin")
            .field("path", &self.inner.path)
            .field("current", &self.current().hash())
            .finish()
    }
}

impl LivePlugin {
    /// Loads and validates the first version.
    ///
    /// # Errors
    /// As [`Plugin::load_with_grants`] and [`Plugin::validate`].
    pub async fn load(
        path: &Path,
        limits: PluginLimits,
        grants: PluginGrants,
        drain_timeout: Duration,
    ) -> Result<Self, PluginError> {
        Self::load_with_metrics(path, limits, grants, drain_timeout, Arc::new(NoMetrics)).await
    }

    /// As [`load`](Self::load), reporting every version's plugin calls,
    /// instances and requests, and every reload, to `metrics`.
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub async fn load_with_metrics(
        path: &Path,
        limits: PluginLimits,
        grants: PluginGrants,
        drain_timeout: Duration,
        metrics: Arc<dyn ServiceMetrics>,
    ) -> Result<Self, PluginError> {
        let plugin =
            Plugin::load_with_metrics(path, limits.clone(), grants.clone(), metrics.clone())?;
        plugin.validate().await?;
        Ok(Self {
            inner: Arc::new(LiveInner {
                path: path.to_owned(),
                limits,
                grants,
                drain_timeout,
                metrics,
                current: RwLock::new(Current { id: 1, plugin }),
                old: Mutex::new(Vec::new()),
                last_error: Mutex::new(None),
                reloading: tokio::sync::Mutex::new(1),
                drains: Mutex::new(JoinSet::new()),
            }),
        })
    }

    /// The version new connections get.
    pub fn current(&self) -> Plugin {
        read(&self.inner.current).plugin.clone()
    }

    /// The file reloads read.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Reads the file again and, if it changed and passes every check,
    /// makes it the version new connections get.
    ///
    /// # Errors
    /// The file cannot be read, does not compile, implements another world
    /// than the running version, or fails instantiation or `init`. The
    /// running version is untouched; the error is logged and kept for
    /// [`last_error`](Self::last_error).
    pub async fn reload(&self) -> Result<Reloaded, PluginError> {
        let mut last_id = self.inner.reloading.lock().await;
        let started = Instant::now();
        let result = self.try_reload(*last_id + 1).await;
        let outcome = match &result {
            Ok(Reloaded::New(_)) => ReloadOutcome::Reloaded,
            Ok(Reloaded::Unchanged) => ReloadOutcome::Unchanged,
            Err(_) => ReloadOutcome::Refused,
        };
        self.inner.metrics.reload(outcome, started.elapsed());
        match result {
            Ok(Reloaded::New(plugin)) => {
                *last_id += 1;
                *lock(&self.inner.last_error) = None;
                info!(
                    file = %self.inner.path.display(),
                    version = *last_id,
                    sha256 = %plugin.hash(),
                    took = ?started.elapsed(),
                    "plugin reloaded; new connections get the new version"
                );
                Ok(Reloaded::New(plugin))
            }
            Ok(Reloaded::Unchanged) => Ok(Reloaded::Unchanged),
            Err(e) => {
                let msg = e.to_string();
                warn!(file = %self.inner.path.display(), error = %msg, "plugin reload refused; the running version keeps serving");
                *lock(&self.inner.last_error) = Some((SystemTime::now(), msg));
                Err(e)
            }
        }
    }

    async fn try_reload(&self, id: u64) -> Result<Reloaded, PluginError> {
        let path = self.inner.path.clone();
        let running = self.current();
        let Some(plugin) = compile(
            &path,
            &self.inner.limits,
            &self.inner.grants,
            running.hash(),
            self.inner.metrics.clone(),
        )
        .await?
        else {
            return Ok(Reloaded::Unchanged);
        };
        if plugin.world() != running.world() {
            return Err(PluginError::WorldChanged {
                path,
                new: plugin.world(),
                running: running.world(),
            });
        }
        plugin.validate().await?;

        let old = {
            let mut cur = write(&self.inner.current);
            std::mem::replace(
                &mut *cur,
                Current {
                    id,
                    plugin: plugin.clone(),
                },
            )
        };
        // Every version still alive may hand its raw QUIC connections over.
        let mut olds = lock(&self.inner.old);
        olds.retain(|(_, w)| w.version().is_some());
        olds.push((old.id, old.plugin.downgrade()));
        for (_, w) in olds.iter() {
            w.hand_over_to(&plugin);
        }
        drop(olds);
        // The drain deadline holds the old version only weakly: it is freed
        // as soon as its last connection ends.
        let weak = old.plugin.downgrade();
        let timeout = self.inner.drain_timeout;
        drop(old);
        let mut drains = lock(&self.inner.drains);
        while drains.try_join_next().is_some() {}
        drains.spawn(async move {
            // At the drain deadline, connections are asked to close; as long
            // again after, whatever is left is closed and the version freed.
            for step in [DrainStep::Retire, DrainStep::Kill] {
                tokio::time::sleep(timeout).await;
                let Some(old) = weak.version() else { return };
                step.apply(&old);
            }
        });
        Ok(Reloaded::New(plugin))
    }

    /// Every version alive: the current one first, then older ones still
    /// serving connections.
    pub fn versions(&self) -> Vec<VersionInfo> {
        let cur = read(&self.inner.current).clone();
        let mut out = vec![info_of(cur.id, &cur.plugin.inner, true)];
        let olds = lock(&self.inner.old);
        for (id, w) in olds.iter().rev() {
            if let Some(v) = w.version() {
                out.push(info_of(*id, &v, false));
            }
        }
        out
    }

    /// The last reload's error, if it failed, with when.
    pub fn last_error(&self) -> Option<(SystemTime, String)> {
        lock(&self.inner.last_error).clone()
    }

    /// Watches the file and reloads when it changes: every `poll` its size
    /// and modification time are checked, and a change is acted on once
    /// they have stayed the same for one more poll (so a file still being
    /// written is not read half-way; one that is read half-way anyway fails
    /// to compile and is refused, and the finished file is loaded at the
    /// next change). Runs until the returned future is dropped.
    pub async fn watch_file(self, poll: Duration) {
        let stamp = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.len(), m.modified().ok()))
        };
        let mut seen = stamp(&self.inner.path);
        let mut candidate: Option<Option<(u64, Option<SystemTime>)>> = None;
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = stamp(&self.inner.path);
            match candidate.take() {
                Some(c) if c == now => {
                    seen = now;
                    if seen.is_some() {
                        // Errors are logged and kept by `reload`.
                        let _ = self.reload().await;
                    }
                }
                _ if now != seen => candidate = Some(now),
                _ => {}
            }
        }
    }
}

/// The two ends of a replaced version's drain.
#[derive(Clone, Copy)]
enum DrainStep {
    /// Ask its connections to close gracefully.
    Retire,
    /// Close what is left at once.
    Kill,
}

impl DrainStep {
    fn apply(self, old: &Version) {
        let connections = old.live.connections();
        match self {
            DrainStep::Retire => {
                if connections > 0 {
                    info!(sha256 = %old.hash, connections, "drain deadline passed: asking the old version's connections to close");
                }
                old.live.retired.send_replace(true);
            }
            DrainStep::Kill => {
                if connections > 0 {
                    warn!(sha256 = %old.hash, connections, "connections still on a retired version after twice the drain timeout: closing them");
                }
                old.live.killed.send_replace(true);
            }
        }
    }
}

fn info_of(id: u64, v: &Version, current: bool) -> VersionInfo {
    VersionInfo {
        id,
        file: v.path.clone(),
        sha256: v.hash.clone(),
        loaded_at: humantime_serde::re::humantime::format_rfc3339_millis(v.loaded_at).to_string(),
        current,
        retired: v.live.is_retired(),
        connections: v.live.connections(),
        requests_in_flight: v.live.requests(),
        compile_ms: v.compile_time.as_secs_f64() * 1e3,
        from_cache: v.compiled == super::Compiled::Cached,
    }
}

/// Reads the file and, unless its bytes hash to `running`, compiles it on a
/// blocking thread (off the serving threads).
async fn compile(
    path: &Path,
    limits: &PluginLimits,
    grants: &PluginGrants,
    running: &str,
    metrics: Arc<dyn ServiceMetrics>,
) -> Result<Option<Plugin>, PluginError> {
    let (path, limits, grants) = (path.to_owned(), limits.clone(), grants.clone());
    let running = running.to_owned();
    tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(&path).map_err(|source| PluginError::Read {
            path: path.clone(),
            source,
        })?;
        if hex(&boring::sha::sha256(&bytes)) == running {
            return Ok(None);
        }
        Plugin::build(&path, &bytes, limits, grants, metrics).map(Some)
    })
    .await
    .map_err(|e| PluginError::Task(e.to_string()))?
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}
