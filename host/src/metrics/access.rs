//! The access log: one `info` line per HTTP/3 request, under the log target
//! `tq_host::access`, written from inside the connection's span so it
//! carries the connection's id, peer and plugin version too.
//!
//! Filter it like any target (`RUST_LOG=info,tq_host::access=off`), or
//! leave it out (`tq-host --no-access-log`).

use super::{RequestRecord, ServiceMetrics};

/// Writes one log line per request: method, path, status, body bytes each
/// way, duration and the plugin version.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessLog;

impl ServiceMetrics for AccessLog {
    fn request_finished(&self, r: &RequestRecord<'_>) {
        tracing::info!(
            target: "tq_host::access",
            method = r.method,
            path = r.path,
            status = r.status.map_or(0, u64::from),
            bytes_in = r.bytes_in,
            bytes_out = r.bytes_out,
            duration_ms = r.duration.as_secs_f64() * 1e3,
            world = r.world,
            version = r.version.unwrap_or(""),
            completed = r.completed,
            "request"
        );
    }
}
