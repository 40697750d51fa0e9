//! Sandbox limits: every one a named default with its reason, and settable.

use std::time::Duration;

/// Limits applied to every plugin instance.
#[derive(Debug, Clone)]
pub struct PluginLimits {
    /// Linear memory per instance. Default 64 MiB: ample for request logic,
    /// small enough that a thousand connections fit in RAM.
    pub memory_bytes: usize,
    /// CPU time one hook call may take before it is cut off. Default 1 s: far
    /// above any sane handler, short enough that a stuck one is noticed.
    pub call_deadline: Duration,
    /// Instances (connections) alive at once. Default 1000; the pooling
    /// allocator reserves slots for all of them up front.
    pub max_instances: u32,
    /// Bytes of stdout plus stderr kept per instance; writes beyond fail in
    /// the plugin. Default 64 KiB.
    pub output_bytes: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            call_deadline: Duration::from_secs(1),
            max_instances: 1000,
            output_bytes: 64 << 10,
        }
    }
}
