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

/// What a freed slot keeps resident of its tables, reset by memset
/// instead of madvise (its memory: `PluginLimits::keep_resident_bytes`),
/// and how many freed slots stay warm (see `build_engine`).
const KEEP_RESIDENT_TABLE: usize = 64 << 10;
const WARM_SLOTS: u32 = 16;

/// Builds the engine: component model, async calls (so long-running guest
/// code yields), epoch interruption, and the pooling allocator sized by
/// `limits`. `concurrent` turns on the component model's concurrency (the
/// async ABI, `stream` and `future`) that WASI 0.3 components need; it is
/// off for every other world, whose stores then skip the concurrent
/// runtime's bookkeeping on each call.
pub(crate) fn build_engine(limits: &PluginLimits, concurrent: bool) -> anyhow::Result<Engine> {
    let c = &limits.component;
    let n = limits.max_instances;
    let mut pool = PoolingAllocationConfig::default();
    // Totals: core instance slots are only counters, so room for every
    // instance at its largest; memories and tables are mapped up front
    // (tables read-write: 8 bytes per element), so room for a typical
    // shape (2 memories, 4 tables) per instance, not the largest: a host
    // serving `max_instances` connections of a component with more runs
    // out of slots before instances, and that connection is refused.
    pool.total_component_instances(n);
    // A store keeps the fiber stack of its last async call for the next
    // one, so each live instance holds a stack: as many as instances.
    // Each pooled stack is two mappings (stack, guard page) from the start,
    // and a live instance maps about four more (memory and table slots
    // split by mprotect): 10,000 instances of one version take about
    // 61,500 of Linux's default 65,530 (vm.max_map_count), and a reload
    // holds two versions. Hence 1,000 by default; more need that raised.
    // A concurrent (WASI 0.3) store may run several fibers at once (a new
    // one whenever its worker fiber is busy): room for four each.
    pool.total_stacks(n.saturating_mul(if concurrent { 4 } else { 1 }));
    pool.total_core_instances(n.saturating_mul(c.core_instances));
    pool.total_memories(n.saturating_mul(c.memories.min(2)));
    pool.total_tables(n.saturating_mul(c.tables.min(4)));
    pool.max_memories_per_module(c.memories);
    pool.max_tables_per_module(c.tables);
    pool.max_memory_size(limits.memory_bytes);
    pool.max_memories_per_component(c.memories);
    pool.max_core_instances_per_component(c.core_instances);
    pool.max_tables_per_component(c.tables);
    pool.table_elements(c.table_elements);
    // A slot's memory and tables go back to zero when its instance ends.
    // By default that is an madvise per slot, and with it a TLB shootdown
    // on every core, for each request a wasi:http instance serves: most of
    // their cost (profiled). Up to these sizes the reset is a memset of
    // pages that stay resident instead, and the freed slots' madvises are
    // batched. wasi:http requests/s (fresh instance per request, Rust
    // component, in-process client, 2 cores, noisy): 18,300-19,400 ->
    // 21,700-28,700 (WASI 0.2), 9,200-9,800 -> 11,400-15,300 (WASI 0.3).
    // The cost: an idle warm slot stays
    // resident up to these sizes, so warm slots are capped at 16 (32 MiB
    // at most per version with the default 2 MiB, down from wasmtime's
    // 100 slots).
    //
    // Not PAGEMAP_SCAN, which resets only the pages it finds dirty (2.6x
    // faster here): in wasmtime 48 it skips dirty pages that are not
    // present (swapped out, or mid-migration), which would then carry one
    // request's memory, or a table's stale references, into the next
    // instance (wasmtime#14357). Isolation between requests comes first.
    pool.linear_memory_keep_resident(limits.keep_resident_bytes);
    pool.table_keep_resident(KEEP_RESIDENT_TABLE.min(limits.keep_resident_bytes));
    pool.max_unused_warm_slots(WARM_SLOTS);
    pool.decommit_batch_size(32);
    pool.pagemap_scan(wasmtime::Enabled::No);
    let mut cfg = Config::new();
    cfg.wasm_component_model(true)
        .concurrency_support(concurrent)
        .wasm_component_model_async(concurrent)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        // Reserve no more address space per memory than the cap needs.
        .memory_reservation(limits.memory_bytes as u64)
        .memory_guard_size(64 << 10);
    // For profiling plugins with `perf`: TQ_WASM_PROFILE=perfmap writes
    // /tmp/perf-PID.map, naming the guest's functions (BENCHMARKS.md).
    if std::env::var_os("TQ_WASM_PROFILE").is_some_and(|v| v == "perfmap") {
        cfg.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    Engine::new(&cfg).map_err(|e| {
        let e = format!("{e:?}");
        anyhow::anyhow!("cannot configure wasmtime: {e}{}", pool_hint(&e))
    })
}

/// What to do about a pooling allocator error that wasmtime's words leave
/// unexplained: a full pool (at instantiation) or a mapping it could not
/// make (ENOMEM from mprotect, at start or instantiation: the process's
/// mapping count, not memory). Empty for any other error.
pub(crate) fn pool_hint(message: &str) -> &'static str {
    if message.contains("concurrent limit of") {
        " (every instance slot is in use: raise --plugin-instances, or `instances` under [listener.limits])"
    } else if message.contains("os error 12") {
        " (the process may have reached vm.max_map_count: each instance slot maps about 6 regions; lower --plugin-instances or raise the sysctl, see the README)"
    } else {
        ""
    }
}

/// Explains a component refused by the pooling allocator's per-component
/// limits: which limit, what the component needs, and the flag (and config
/// key) that raises it. `None` if `message` (wasmtime's error, its whole
/// chain) is not about those limits.
pub(crate) fn explain_pool_limit(message: &str, limits: &PluginLimits) -> Option<String> {
    let c = &limits.component;
    // (what wasmtime says, what it is, flag, config key, the limit now)
    let known: [(&str, &str, &str, &str, u64); 7] = [
        (
            "core module instances, which exceeds",
            "core module instances per component",
            "--plugin-core-instances",
            "core_instances",
            u64::from(c.core_instances),
        ),
        (
            "Wasm linear memories, which exceeds",
            "linear memories per component",
            "--plugin-memories",
            "memories",
            u64::from(c.memories),
        ),
        (
            "defined memories count of",
            "linear memories per component",
            "--plugin-memories",
            "memories",
            u64::from(c.memories),
        ),
        (
            "defined tables count of",
            "tables per component",
            "--plugin-tables",
            "tables",
            u64::from(c.tables),
        ),
        (
            "tables, which exceeds",
            "tables per component",
            "--plugin-tables",
            "tables",
            u64::from(c.tables),
        ),
        (
            "minimum element size of",
            "elements per table",
            "--plugin-table-elements",
            "table_elements",
            c.table_elements as u64,
        ),
        (
            "memory has a minimum byte size of",
            "MiB of linear memory per instance",
            "--plugin-memory",
            "memory_mib",
            (limits.memory_bytes >> 20) as u64,
        ),
    ];
    let (_, what, flag, key, now) = known.iter().find(|(k, ..)| message.contains(k))?;
    let need = need_of(message);
    let need = match (*key, need) {
        ("memory_mib", Some(bytes)) => format!(" it needs {} MiB;", bytes.div_ceil(1 << 20)),
        (_, Some(n)) => format!(" it needs {n};"),
        (_, None) => String::new(),
    };
    Some(format!(
        "it needs more {what} than allowed ({now}):{need} raise the limit with {flag} N, \
         or `{key} = N` under [listener.limits] in the config file"
    ))
}

/// The component's need in one of wasmtime's limit messages: the first
/// number after "contains " or "size of ".
fn need_of(message: &str) -> Option<u64> {
    ["contains ", "size of ", "count of "].iter().find_map(|m| {
        let rest = &message[message.find(m)? + m.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
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
    /// An engine sized by `limits`, with its epoch ticker running, and
    /// the component model's concurrency if `concurrent` (WASI 0.3).
    pub(crate) fn new(
        limits: PluginLimits,
        grants: PluginGrants,
        metrics: Arc<dyn ServiceMetrics>,
        version_label: Arc<str>,
        concurrent: bool,
    ) -> anyhow::Result<Self> {
        let engine = build_engine(&limits, concurrent)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_limit_errors_name_the_flag_and_the_need() {
        let l = PluginLimits::default();
        let msg = "The component transitively contains 40 core module instances, which \
                   exceeds the configured maximum of 32 in the pooling allocator";
        let e = explain_pool_limit(msg, &l).unwrap();
        assert!(
            e.contains("it needs 40")
                && e.contains("--plugin-core-instances")
                && e.contains("(32)"),
            "{e}"
        );
        let msg = "memory index 0 is unsupported in this pooling allocator configuration: \
                   memory has a minimum byte size of 104857600 which exceeds the limit of 67108864 bytes";
        let e = explain_pool_limit(msg, &l).unwrap();
        assert!(
            e.contains("it needs 100 MiB")
                && e.contains("--plugin-memory")
                && e.contains("memory_mib"),
            "{e}"
        );
        let msg =
            "table index 0 has a minimum element size of 200000 which exceeds the limit of 100000";
        assert!(explain_pool_limit(msg, &l)
            .unwrap()
            .contains("--plugin-table-elements"));
        assert!(explain_pool_limit("unexpected end of file", &l).is_none());
    }
}
