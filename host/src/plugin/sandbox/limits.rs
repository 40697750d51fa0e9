//! Sandbox limits and grants: every limit a named default with its reason,
//! and nothing granted unless the operator says so.

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
    /// Wall-clock time one call into a plugin may take — a hook, its
    /// instantiation, `init`, `on-close` — whatever it waits on (a guest
    /// sleeping in `wasi:io/poll` uses no CPU and so escapes
    /// `call_deadline`). Past it the call is abandoned and the instance is
    /// never called again; for a reload's check, the reload is refused.
    /// Default 10 s.
    pub call_timeout: Duration,
    /// wasi:http: wall-clock time one request may take, from instantiation
    /// to the end of the response body the guest writes. Past it the
    /// request is answered 500, or reset if its head went out. Default 60 s.
    pub request_timeout: Duration,
    /// Instances alive at once: an http3-app or quic-app plugin holds one
    /// per connection, a wasi:http component one per request in flight.
    /// Default 1,000. The pooling allocator reserves address space (not
    /// memory) for all of them up front, about `memory_bytes` each, and
    /// two memory mappings each for their fiber stacks, per plugin version
    /// (a reload holds two versions for a while); a live instance maps
    /// about four more. Linux allows 65,530 mappings per process by
    /// default (`vm.max_map_count`): raise that before going much past
    /// 5,000. A connection that finds every slot taken is closed, and the
    /// log names this limit.
    pub max_instances: u32,
    /// The shape of one component, which the pooling allocator sizes its
    /// slots by. Defaults fit what real toolchains emit: a Rust component
    /// has 1-4 core instances, one memory and one table; one made by
    /// componentize-py (CPython) 14 core instances; ComponentizeJS
    /// (StarlingMonkey) large tables. A component that needs more is
    /// refused at load with the limit, its need and the flag that raises it.
    pub component: ComponentLimits,
    /// The window of stdout plus stderr kept per instance between two log
    /// flushes (after every call): a plugin printing more than this in one
    /// call loses its oldest output (the log says how much), never its
    /// connection. Default 64 KiB.
    pub output_bytes: usize,
    /// wasi:http: how many more requests one instance may serve after its
    /// first, one after another (an instance that trapped or failed is never
    /// reused). Default 0: a fresh instance per request, so nothing leaks
    /// from one request to the next; reuse trades that for speed, as
    /// `wasmtime serve` can.
    pub reuse_instances: u32,
    /// Response and stream bytes one connection's plugin may have queued in
    /// host memory, not yet taken by QUIC (http3-app and raw QUIC plugins):
    /// past it, writes are held back and the plugin gets `writable` once
    /// the queue drains, as for a full stream. Outside the plugin's memory
    /// cap, so bounded here. Default 4 MiB.
    pub queued_bytes: usize,
    /// wasi:http: outgoing requests one instance may have in flight; more
    /// are refused with `connection-limit-reached`. Default 16.
    pub outgoing_in_flight: usize,
    /// wasi:http: the longest an outgoing request waits to connect, for
    /// the first byte of the answer and between two of its frames; what a
    /// guest asks for is capped at this. Default 30 s (wasmtime's own is
    /// 10 minutes).
    pub outgoing_timeout: Duration,
    /// Not a limit: how much of a freed instance slot's linear memory is
    /// reset by memset and kept resident, instead of returned to the
    /// kernel (madvise, which flushes every core's TLB). Faster fresh
    /// instances (wasi:http serves one per request: about 1.3x here) for
    /// memory that stays resident: up to 16 warm slots per version hold
    /// this much each. Default 2 MiB; 0 returns everything at once.
    pub keep_resident_bytes: usize,
    /// Not a limit: where compiled code is kept between starts and
    /// reloads (see [`default_cache_dir`](super::default_cache_dir)).
    /// Default `None` for the library (nothing written to disk); the
    /// `tq-host` binary sets it unless `--no-cache`.
    pub cache_dir: Option<std::path::PathBuf>,
}

/// Per-component maxima of the pooling allocator (see
/// [`PluginLimits::component`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComponentLimits {
    /// Core module instances one component may contain. Default 32.
    pub core_instances: u32,
    /// Linear memories one component may define. Default 4.
    pub memories: u32,
    /// Tables one component may define. Default 32.
    pub tables: u32,
    /// Elements one table may hold. Default 20,000 (a componentize-py
    /// component needs about 5,800, a ComponentizeJS one 7,800). Tables
    /// are mapped up front, 8 bytes an element.
    pub table_elements: usize,
}

impl Default for ComponentLimits {
    fn default() -> Self {
        Self {
            core_instances: 32,
            memories: 4,
            tables: 32,
            table_elements: 20_000,
        }
    }
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            call_deadline: Duration::from_secs(1),
            call_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            max_instances: 1000,
            component: ComponentLimits::default(),
            output_bytes: 64 << 10,
            reuse_instances: 0,
            queued_bytes: 4 << 20,
            outgoing_in_flight: 16,
            outgoing_timeout: Duration::from_secs(30),
            keep_resident_bytes: 2 << 20,
            cache_dir: None,
        }
    }
}

/// What the operator grants plugins beyond the sandbox. Nothing by default.
#[derive(Debug, Clone, Default)]
pub struct PluginGrants {
    /// Host directories visible to the plugin, read-only.
    pub dirs: Vec<DirGrant>,
    /// Environment variables the plugin sees.
    pub env: Vec<(String, String)>,
    /// Destinations a wasi:http plugin may send requests to, as `host` or
    /// `host:port`; every other outgoing request is refused with
    /// `HTTP-request-denied`. A granted name reaches only the public
    /// addresses it resolves to (unless [`http_private`](Self::http_private));
    /// a granted IP address exactly that address.
    pub http_hosts: Vec<String>,
    /// Whether a granted host name may lead to internal addresses
    /// (loopback, private, link-local, CGNAT, unique-local, ...); without
    /// it only to public ones, so a name re-pointed at an internal address
    /// (DNS rebinding) is refused with `destination-IP-prohibited`.
    pub http_private: bool,
}

/// A host directory made visible to plugins, read-only.
#[derive(Debug, Clone)]
pub struct DirGrant {
    /// The directory on the host.
    pub host: std::path::PathBuf,
    /// Where the plugin sees it, e.g. `/data`.
    pub guest: String,
}

impl std::str::FromStr for DirGrant {
    type Err = String;

    /// `HOST` (seen at the same path) or `HOST::GUEST`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (host, guest) = match s.split_once("::") {
            Some((h, g)) => (h, g.to_owned()),
            None => (s, s.to_owned()),
        };
        if host.is_empty() || guest.is_empty() {
            return Err(format!("`{s}` is not HOST or HOST::GUEST"));
        }
        Ok(Self {
            host: host.into(),
            guest,
        })
    }
}
