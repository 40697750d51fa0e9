//! The Prometheus exporter: a [`Metrics`] (and so [`ServiceMetrics`])
//! implementation that keeps every figure in a `prometheus-client`
//! registry and renders it as Prometheus text for `GET /metrics`.
//!
//! Series labelled by plugin version are removed when the version is
//! unloaded, so a server reloaded every hour for a year does not grow a
//! series per reload.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::{
    CallKind, CallOutcome, CloseCause, HandshakeFailure, Metrics, PacketDropReason, ReloadOutcome,
    RequestRecord, ServiceMetrics,
};

/// Every figure tq-host exports, in one Prometheus registry. Cheap to
/// clone; clones share the figures.
///
/// ```
/// use tq_host::metrics::{Metrics, PrometheusMetrics};
/// let m = PrometheusMetrics::new();
/// m.connection_accepted();
/// let text = m.render();
/// assert!(text.contains("tq_connections_accepted_total 1"));
/// ```
#[derive(Clone)]
pub struct PrometheusMetrics {
    inner: Arc<Inner>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    world: String,
    method: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct World {
    world: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Version {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    version: String,
    call: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallKindLabels {
    version: String,
    call: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

type Hist = fn() -> Histogram;

struct Inner {
    registry: Registry,
    accepted: Counter,
    opened: Counter,
    active: Gauge,
    closed: Family<Reason, Counter>,
    handshakes: Counter,
    handshake_failures: Family<Reason, Counter>,
    handshake_seconds: Histogram,
    dropped: Family<Reason, Counter>,
    retries: Counter,
    version_negotiations: Counter,
    handed_over: Counter,
    paced: Counter,
    held: Counter,
    resets: Counter,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<World, Histogram, Hist>,
    plugin_calls: Family<CallLabels, Counter>,
    plugin_call_seconds: Family<CallKindLabels, Histogram, Hist>,
    plugin_instances: Family<Version, Gauge>,
    reloads: Family<ReloadLabels, Counter>,
    reload_seconds: Histogram,
    versions_loaded: Gauge,
    version_connections: Family<Version, Gauge>,
    /// Per version name: loads alive, and the unloaded versions whose
    /// series are still exported, oldest first.
    versions: std::sync::Mutex<Versions>,
    /// The direction series, resolved once: they move on every datagram.
    packets_in: Counter,
    packets_out: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    body_in: Counter,
    body_out: Counter,
}

#[derive(Default)]
struct Versions {
    loaded: std::collections::HashMap<String, usize>,
    unloaded: std::collections::VecDeque<String>,
}

/// How many unloaded versions keep their series: their counters stay for
/// dashboards and alerts a while after a reload, yet a server reloaded
/// every hour for a year does not grow a series per reload.
const UNLOADED_KEPT: usize = 8;

/// 100 µs to ~105 s, doubling: request and call latencies.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

/// 1 ms to ~65 s, doubling: handshakes and reloads.
fn slow() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Default for PrometheusMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for PrometheusMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusMetrics").finish_non_exhaustive()
    }
}

impl PrometheusMetrics {
    /// A registry with every tq-host metric at zero.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("tq");
        let accepted = Counter::default();
        r.register(
            "connections_accepted",
            "Server connections accepted",
            accepted.clone(),
        );
        let opened = Counter::default();
        r.register(
            "connections_opened",
            "Client connections opened",
            opened.clone(),
        );
        let active = Gauge::default();
        r.register(
            "connections_active",
            "Connections accepted or opened and not yet closed",
            active.clone(),
        );
        let closed = Family::default();
        r.register(
            "connections_closed",
            "Connections ended, by how they ended",
            closed.clone(),
        );
        let handshakes = Counter::default();
        r.register(
            "handshakes_completed",
            "QUIC handshakes completed",
            handshakes.clone(),
        );
        let handshake_failures = Family::default();
        r.register(
            "handshake_failures",
            "QUIC handshakes that failed, by reason",
            handshake_failures.clone(),
        );
        let handshake_seconds = slow();
        r.register(
            "handshake_duration_seconds",
            "Time from a connection's first packet to its completed handshake",
            handshake_seconds.clone(),
        );
        let packets = Family::default();
        r.register(
            "packets",
            "UDP datagrams received (in) and sent (out)",
            packets.clone(),
        );
        let bytes = Family::default();
        r.register(
            "bytes",
            "UDP payload bytes received (in) and sent (out)",
            bytes.clone(),
        );
        let dropped = Family::default();
        r.register(
            "packets_dropped",
            "Datagrams dropped before a connection processed them, by reason",
            dropped.clone(),
        );
        let retries = Counter::default();
        r.register(
            "retries_sent",
            "Stateless Retry packets sent",
            retries.clone(),
        );
        let version_negotiations = Counter::default();
        r.register(
            "version_negotiations_sent",
            "Version Negotiation packets sent",
            version_negotiations.clone(),
        );
        let handed_over = Counter::default();
        r.register(
            "packets_handed_over",
            "Datagrams that reached another worker's socket than their connection's \
             (the client's address changed) and were handed over",
            handed_over.clone(),
        );
        let paced = Counter::default();
        r.register(
            "packets_paced",
            "Datagrams sent with a release time for the kernel's pacing \
             (pacing_offload, SO_TXTIME); also counted in packets",
            paced.clone(),
        );
        let held = Counter::default();
        r.register(
            "pacer_holds",
            "Times a connection held its next packets back until quiche's pacer \
             let them go (bbr2)",
            held.clone(),
        );
        let resets = Counter::default();
        r.register(
            "stateless_resets_sent",
            "Stateless resets sent for connection ids no connection has",
            resets.clone(),
        );
        let requests = Family::default();
        r.register(
            "requests",
            "HTTP/3 requests ended, by who answered (world), method and status class \
             (status=\"none\": no response head was sent)",
            requests.clone(),
        );
        let request_seconds = Family::new_with_constructor(latency as Hist);
        r.register(
            "request_duration_seconds",
            "HTTP/3 request duration, from its header section to its end",
            request_seconds.clone(),
        );
        let request_body_bytes = Family::default();
        r.register(
            "request_body_bytes",
            "HTTP/3 body bytes read from clients (in) and sent to them (out)",
            request_body_bytes.clone(),
        );
        let plugin_calls = Family::default();
        r.register(
            "plugin_calls",
            "Calls into a plugin (hooks, instantiation, init), by version and outcome \
             (ok, trap, deadline, memory, timeout)",
            plugin_calls.clone(),
        );
        let plugin_call_seconds = Family::new_with_constructor(latency as Hist);
        r.register(
            "plugin_call_duration_seconds",
            "Wall-clock duration of calls into a plugin, by version",
            plugin_call_seconds.clone(),
        );
        let plugin_instances = Family::default();
        r.register(
            "plugin_instances",
            "Plugin instances alive, by version",
            plugin_instances.clone(),
        );
        let reloads = Family::default();
        r.register(
            "reloads",
            "Plugin reloads, by result (reloaded, unchanged, refused)",
            reloads.clone(),
        );
        let reload_seconds = slow();
        r.register(
            "reload_duration_seconds",
            "Time a reload took: read, compile, check, init, swap",
            reload_seconds.clone(),
        );
        let versions_loaded = Gauge::default();
        r.register(
            "plugin_versions_loaded",
            "Plugin versions in memory (the current one and those still draining)",
            versions_loaded.clone(),
        );
        let version_connections = Family::default();
        r.register(
            "plugin_connections",
            "Connections pinned to each loaded plugin version",
            version_connections.clone(),
        );
        let dir = |f: &Family<Direction, Counter>, d| {
            f.get_or_create(&Direction { direction: d }).clone()
        };
        let (packets_in, packets_out) = (dir(&packets, "in"), dir(&packets, "out"));
        let (bytes_in, bytes_out) = (dir(&bytes, "in"), dir(&bytes, "out"));
        let (body_in, body_out) = (
            dir(&request_body_bytes, "in"),
            dir(&request_body_bytes, "out"),
        );
        Self {
            inner: Arc::new(Inner {
                registry: r,
                accepted,
                opened,
                active,
                closed,
                handshakes,
                handshake_failures,
                handshake_seconds,
                dropped,
                retries,
                version_negotiations,
                handed_over,
                paced,
                held,
                resets,
                requests,
                request_seconds,
                plugin_calls,
                plugin_call_seconds,
                plugin_instances,
                reloads,
                reload_seconds,
                versions_loaded,
                version_connections,
                versions: Default::default(),
                packets_in,
                packets_out,
                bytes_in,
                bytes_out,
                body_in,
                body_out,
            }),
        }
    }

    /// Sets the per-version gauges from the loaded versions: `(version,
    /// connections pinned to it)` for each. Call before [`render`](Self::render)
    /// (the admin endpoint does, on every scrape).
    pub fn set_plugin_versions(&self, versions: impl IntoIterator<Item = (String, u64)>) {
        let i = &self.inner;
        // Two listeners may serve the same bytes: one version, their
        // connections summed.
        let mut by_version: std::collections::HashMap<String, u64> = Default::default();
        for (version, conns) in versions {
            *by_version.entry(version).or_default() += conns;
        }
        i.version_connections.clear();
        i.versions_loaded.set(by_version.len() as i64);
        for (version, conns) in by_version {
            i.version_connections
                .get_or_create(&Version { version })
                .set(conns as i64);
        }
    }

    /// Every metric in the Prometheus text exposition format (OpenMetrics
    /// flavour, which Prometheus reads), ending with `# EOF`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.inner.registry).is_err() {
            // Writing to a String cannot fail; say so in the output if it did.
            let _ = writeln!(out, "# encoding failed");
        }
        out
    }
}

/// `GET`, `POST`, ... or `other`: a fixed set, so a client cannot grow the
/// series with made-up methods.
fn method_class(m: &str) -> &'static str {
    match m {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        _ => "other",
    }
}

fn status_class(s: Option<u16>) -> &'static str {
    match s {
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "other",
        None => "none",
    }
}

impl ServiceMetrics for PrometheusMetrics {
    fn request_finished(&self, r: &RequestRecord<'_>) {
        let i = &self.inner;
        i.requests
            .get_or_create(&RequestLabels {
                world: r.world.to_owned(),
                method: method_class(r.method),
                status: status_class(r.status),
            })
            .inc();
        i.request_seconds
            .get_or_create(&World {
                world: r.world.to_owned(),
            })
            .observe(r.duration.as_secs_f64());
        i.body_in.inc_by(r.bytes_in);
        i.body_out.inc_by(r.bytes_out);
    }

    fn plugin_call(&self, version: &str, kind: CallKind, duration: Duration, outcome: CallOutcome) {
        let i = &self.inner;
        i.plugin_calls
            .get_or_create(&CallLabels {
                version: version.to_owned(),
                call: kind.as_str(),
                outcome: outcome.as_str(),
            })
            .inc();
        i.plugin_call_seconds
            .get_or_create(&CallKindLabels {
                version: version.to_owned(),
                call: kind.as_str(),
            })
            .observe(duration.as_secs_f64());
    }

    fn plugin_instances(&self, version: &str, delta: i64) {
        // An instance may outlive its version by a moment (a request task
        // aborted late): a version no longer loaded gets no new series.
        let loaded = self
            .inner
            .versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .loaded
            .contains_key(version);
        if loaded {
            self.inner
                .plugin_instances
                .get_or_create(&Version {
                    version: version.to_owned(),
                })
                .inc_by(delta);
        }
    }

    fn version_loaded(&self, version: &str) {
        let mut v = self
            .inner
            .versions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *v.loaded.entry(version.to_owned()).or_default() += 1;
        v.unloaded.retain(|u| u != version);
    }

    fn reload(&self, outcome: ReloadOutcome, latency: Duration) {
        let i = &self.inner;
        i.reloads
            .get_or_create(&ReloadLabels {
                result: outcome.as_str(),
            })
            .inc();
        i.reload_seconds.observe(latency.as_secs_f64());
    }

    fn version_unloaded(&self, version: &str) {
        let i = &self.inner;
        let evicted = {
            let mut v = i.versions.lock().unwrap_or_else(|e| e.into_inner());
            match v.loaded.get_mut(version) {
                Some(n) if *n > 1 => {
                    // Another load of the same bytes still serves.
                    *n -= 1;
                    return;
                }
                Some(_) => {
                    v.loaded.remove(version);
                }
                None => return,
            }
            v.unloaded.push_back(version.to_owned());
            if v.unloaded.len() > UNLOADED_KEPT {
                v.unloaded.pop_front()
            } else {
                None
            }
        };
        // An unloaded version has no instances or connections.
        let v = Version {
            version: version.to_owned(),
        };
        i.plugin_instances.remove(&v);
        i.version_connections.remove(&v);
        let Some(version) = evicted else { return };
        for kind in CallKind::ALL {
            i.plugin_call_seconds.remove(&CallKindLabels {
                version: version.clone(),
                call: kind.as_str(),
            });
            for outcome in CallOutcome::ALL {
                i.plugin_calls.remove(&CallLabels {
                    version: version.clone(),
                    call: kind.as_str(),
                    outcome: outcome.as_str(),
                });
            }
        }
    }
}

impl Metrics for PrometheusMetrics {
    fn connection_accepted(&self) {
        self.inner.accepted.inc();
        self.inner.active.inc();
    }
    fn connection_opened(&self) {
        self.inner.opened.inc();
        self.inner.active.inc();
    }
    fn connection_closed(&self, cause: CloseCause) {
        self.inner.active.dec();
        self.inner
            .closed
            .get_or_create(&Reason {
                reason: cause.as_str(),
            })
            .inc();
    }
    fn handshake_completed(&self, duration: Duration) {
        self.inner.handshakes.inc();
        self.inner.handshake_seconds.observe(duration.as_secs_f64());
    }
    fn handshake_failed(&self, reason: HandshakeFailure) {
        self.inner
            .handshake_failures
            .get_or_create(&Reason {
                reason: reason.as_str(),
            })
            .inc();
    }
    fn packets_in(&self, count: u64, bytes: u64) {
        self.inner.packets_in.inc_by(count);
        self.inner.bytes_in.inc_by(bytes);
    }
    fn packets_out(&self, count: u64, bytes: u64) {
        self.inner.packets_out.inc_by(count);
        self.inner.bytes_out.inc_by(bytes);
    }
    fn packet_dropped(&self, reason: PacketDropReason) {
        self.inner
            .dropped
            .get_or_create(&Reason {
                reason: reason.as_str(),
            })
            .inc();
    }
    fn retry_sent(&self) {
        self.inner.retries.inc();
    }
    fn version_negotiation_sent(&self) {
        self.inner.version_negotiations.inc();
    }
    fn packet_handed_over(&self) {
        self.inner.handed_over.inc();
    }
    fn packets_paced(&self, count: u64) {
        self.inner.paced.inc_by(count);
    }
    fn pacer_held(&self) {
        self.inner.held.inc();
    }
    fn stateless_reset_sent(&self) {
        self.inner.resets.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_loaded_twice_keeps_its_series_until_both_go() {
        let m = PrometheusMetrics::new();
        m.version_loaded("abc");
        m.version_loaded("abc");
        m.plugin_instances("abc", 1);
        m.version_unloaded("abc");
        assert!(m
            .render()
            .contains("tq_plugin_instances{version=\"abc\"} 1"));
        m.plugin_instances("abc", -1);
        m.version_unloaded("abc");
        // Late instance drops of an unloaded version make no series.
        m.plugin_instances("abc", -1);
        assert!(
            !m.render().contains("tq_plugin_instances{"),
            "{}",
            m.render()
        );
    }

    #[test]
    fn only_the_last_unloaded_versions_keep_their_series() {
        let m = PrometheusMetrics::new();
        m.version_loaded("abc");
        m.plugin_call(
            "abc",
            CallKind::Hook,
            Duration::from_millis(1),
            CallOutcome::Trap,
        );
        m.plugin_instances("abc", 1);
        m.plugin_instances("abc", -1);
        m.version_unloaded("abc");
        let text = m.render();
        assert!(
            text.contains("version=\"abc\",call=\"hook\",outcome=\"trap\"} 1"),
            "{text}"
        );
        assert!(
            !text.contains("tq_plugin_instances{version=\"abc\""),
            "{text}"
        );
        for n in 0..UNLOADED_KEPT {
            let v = format!("v{n}");
            m.version_loaded(&v);
            m.plugin_call(
                &v,
                CallKind::Hook,
                Duration::from_millis(1),
                CallOutcome::Ok,
            );
            m.version_unloaded(&v);
        }
        let text = m.render();
        assert!(!text.contains("version=\"abc\""), "{text}");
        assert!(text.contains("version=\"v0\""), "{text}");
    }

    #[test]
    fn made_up_methods_share_one_series() {
        let m = PrometheusMetrics::new();
        for method in ["BREW", "WHEN", "GET"] {
            m.request_finished(&RequestRecord {
                world: "native",
                version: None,
                method,
                path: "/",
                status: Some(200),
                bytes_in: 0,
                bytes_out: 1,
                duration: Duration::from_millis(1),
                completed: true,
            });
        }
        let text = m.render();
        assert!(
            text.contains("method=\"other\",status=\"2xx\"} 2"),
            "{text}"
        );
    }
}
