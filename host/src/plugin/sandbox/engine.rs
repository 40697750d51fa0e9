//! Building one version's wasmtime engine (component model, async calls,
//! epoch interruption, pooling allocator), and the epoch ticker that gives
//! each call its CPU deadline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::limits::{PluginGrants, PluginLimits};
use crate::metrics::ServiceMetrics;

/// How often the epoch advances. A call's deadline is checked at each tick,
/// and a running call yields to the async runtime at each tick, so this is
/// also the longest a busy plugin holds a runtime thread: 10 ms.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Builds the engine: component model, async calls (so long-running guest
/// code yields), epoch interruption, and the pooling allocator sized by
/// `limits`.
pub(crate) fn build_engine(limits: &PluginLimits) -> anyhow::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(limits.max_instances);
    pool.total_core_instances(limits.max_instances * 4);
    pool.total_memories(limits.max_instances * 2);
    pool.total_tables(limits.max_instances * 4);
    pool.max_memory_size(limits.memory_bytes);
    pool.max_memories_per_component(2);
    pool.max_core_instances_per_component(8);
    pool.max_tables_per_component(8);
    let mut cfg = Config::new();
    cfg.wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        // Reserve no more address space per memory than the cap needs.
        .memory_reservation(limits.memory_bytes as u64)
        .memory_guard_size(64 << 10);
    Engine::new(&cfg).map_err(|e| anyhow::anyhow!("cannot configure wasmtime: {e:?}"))
}

/// A thread that advances the engine's epoch every [`EPOCH_TICK`] until
/// dropped.
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub(crate) fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tq-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .ok();
        Self { stop, thread }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One loaded version's engine and sandbox settings. Every version has its
/// own: a version's pooling allocator reserves its instances' memory up
/// front, and it must be released as a whole when the version is dropped
/// after a reload; one shared engine would keep every version's slots for
/// the life of the process and make the limits a global setting.
pub(crate) struct Sandbox {
    pub(crate) engine: Engine,
    pub(crate) limits: PluginLimits,
    pub(crate) grants: PluginGrants,
    /// Where calls, instances and requests are reported, and the version's
    /// name there.
    pub(crate) metrics: Arc<dyn ServiceMetrics>,
    pub(crate) version_label: Arc<str>,
    _ticker: EpochTicker,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.metrics.version_unloaded(&self.version_label);
    }
}

impl Sandbox {
    /// An engine sized by `limits`, with its epoch ticker running.
    pub(crate) fn new(
        limits: PluginLimits,
        grants: PluginGrants,
        metrics: Arc<dyn ServiceMetrics>,
        version_label: Arc<str>,
    ) -> anyhow::Result<Self> {
        let engine = build_engine(&limits)?;
        let ticker = EpochTicker::start(engine.clone());
        // Paired with `version_unloaded` when the sandbox drops.
        metrics.version_loaded(&version_label);
        Ok(Self {
            engine,
            limits,
            grants,
            metrics,
            version_label,
            _ticker: ticker,
        })
    }
}
