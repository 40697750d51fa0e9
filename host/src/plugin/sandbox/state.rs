//! What one plugin instance's `Store` holds: the WASI context, the memory
//! limiter, the CPU-deadline bookkeeping and the captured output, common to
//! every world, plus `conn`, the world's own view of its connection.

use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::StoreLimits;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The data of one plugin instance's store.
pub(crate) struct PluginState<C> {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limits: StoreLimits,
    /// When the connection was established: the clock of `now-ms`.
    pub(crate) established: Instant,
    /// Epoch ticks at which the current call was found running guest code
    /// (so time spent waiting in the host does not count), and how long it
    /// may run.
    pub(crate) call_ticks: u32,
    pub(crate) call_deadline: Duration,
    /// Wall-clock time one call may take, whatever it waits on.
    pub(crate) call_timeout: Duration,
    /// What the plugin printed and was not logged yet.
    pub(crate) output: super::output::OutputCapture,
    /// Where calls and instances are reported, and the version's name.
    pub(crate) metrics: std::sync::Arc<dyn crate::metrics::ServiceMetrics>,
    pub(crate) version: std::sync::Arc<str>,
    /// The world's side of the connection (host-function state).
    pub(crate) conn: C,
}

impl<C> Drop for PluginState<C> {
    fn drop(&mut self) {
        self.metrics.plugin_instances(&self.version, -1);
    }
}

impl<C: Send> WasiView for PluginState<C> {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl<C> PluginState<C> {
    /// A call into the plugin starts: its CPU budget is whole again.
    pub(crate) fn start_call(&mut self) {
        self.call_ticks = 0;
    }

    /// Whether the current call has run guest code for its deadline.
    pub(crate) fn past_deadline(&self) -> bool {
        super::engine::EPOCH_TICK * self.call_ticks >= self.call_deadline
    }

    /// Milliseconds since the connection was established.
    pub(crate) fn now_ms(&self) -> u64 {
        self.established.elapsed().as_millis() as u64
    }
}
