//! The host side of a wasi:http instance: its HTTP context, the policy for
//! outgoing requests (only granted destinations, and only addresses the
//! grant covers: see [`super::outbound`]), and the pool of idle instances a
//! version keeps when reuse is on.

use std::net::IpAddr;
use std::sync::Arc;

use tracing::debug;
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use super::super::sandbox::PluginState;
use super::outbound::Grant;

/// A wasi:http component linked and ready to instantiate.
pub(crate) type ProxyPre = wasmtime_wasi_http::p2::bindings::ProxyPre<PluginState<HttpConn>>;

/// A wasi:http instance's side of the host: its HTTP context and the
/// outgoing-request policy.
pub(crate) struct HttpConn {
    http: WasiHttpCtx,
    hooks: OutboundPolicy,
}

impl HttpConn {
    /// The outgoing policy: the operator's grants, and the limits on
    /// concurrency (`in_flight`) and waiting (`timeout`).
    pub(crate) fn new(
        allowed: Arc<Vec<String>>,
        allow_private: bool,
        in_flight: usize,
        timeout: std::time::Duration,
    ) -> Self {
        Self {
            http: WasiHttpCtx::new(),
            hooks: OutboundPolicy {
                allowed,
                allow_private,
                max_in_flight: in_flight,
                in_flight: Arc::new(tokio::sync::Semaphore::new(in_flight)),
                timeout,
            },
        }
    }
}

impl WasiHttpView for PluginState<HttpConn> {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.conn.http,
            table: &mut self.table,
            hooks: &mut self.conn.hooks,
        }
    }
}

/// Outgoing requests go only to granted destinations: `host:port` exactly,
/// or `host` on its scheme's default port (443 for https, 80 for http); and
/// only to an address the grant covers (see [`super::outbound`]).
pub(crate) struct OutboundPolicy {
    allowed: Arc<Vec<String>>,
    /// `--allow-http-private`: granted names may resolve to internal
    /// addresses.
    allow_private: bool,
    max_in_flight: usize,
    in_flight: Arc<tokio::sync::Semaphore>,
    /// The cap on the guest's timeouts, and their default.
    timeout: std::time::Duration,
}

impl OutboundPolicy {
    /// The grant that lets a request to `uri` through, if any.
    pub(crate) fn grant_for(&self, uri: &http::Uri) -> Option<Grant> {
        let auth = uri.authority()?;
        let default_port = match uri.scheme_str() {
            Some("https") => 443,
            Some("http") => 80,
            _ => return None,
        };
        let port = auth.port_u16().unwrap_or(default_port);
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        let host_ip = host.parse::<IpAddr>().ok();
        self.allowed.iter().find_map(|grant| {
            let (h, p) = grant_parts(grant)?;
            // A bare host grants its scheme's default port only: not every
            // service the host runs.
            if p.unwrap_or(default_port) != port {
                return None;
            }
            match h.parse::<IpAddr>() {
                // An address grant: that address, however the URI spells it.
                Ok(ip) => (host_ip == Some(ip)).then_some(Grant::Ip(ip)),
                Err(_) => h.eq_ignore_ascii_case(host).then_some(Grant::Name {
                    allow_private: self.allow_private,
                }),
            }
        })
    }
}

/// A grant's host (IPv6 without brackets) and port, if it names one:
/// `host`, `host:port`, `v6`, `[v6]` or `[v6]:port`; `None` if malformed.
pub(crate) fn grant_parts(grant: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = grant.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse().ok()?),
        };
        return Some((host, port));
    }
    match grant.matches(':').count() {
        0 => Some((grant, None)),
        1 => {
            let (h, p) = grant.split_once(':')?;
            Some((h, Some(p.parse().ok()?)))
        }
        // A bare IPv6 address.
        _ => Some((grant, None)),
    }
}

/// The guest's timeouts, none longer than `limit` (the default too).
fn capped(options: Option<RequestOptions>, limit: std::time::Duration) -> RequestOptions {
    let cap = |t: Option<std::time::Duration>| Some(t.map_or(limit, |t| t.min(limit)));
    let o = options.unwrap_or_default();
    RequestOptions {
        connect_timeout: cap(o.connect_timeout),
        first_byte_timeout: cap(o.first_byte_timeout),
        between_bytes_timeout: cap(o.between_bytes_timeout),
    }
}

/// The most a WASI 0.3 guest's body write hands the host at once: one
/// frame on the stream's channel (16 frames). wasmtime's default, 1 MiB,
/// would let a response wait in host memory 16 MiB deep for a slow client.
const P3_BODY_CHUNK: usize = 64 << 10;

impl WasiHttpHooks for OutboundPolicy {
    fn p3_outgoing_body_chunk_size(&mut self) -> usize {
        P3_BODY_CHUNK
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn std::future::Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn std::future::Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn std::future::Future<Output = Result<(), HttpError>> + Send>,
                    ),
                    HttpError,
                >,
            > + Send,
    > {
        drop(fut);
        let Some(grant) = self.grant_for(request.uri()) else {
            debug!(uri = %request.uri(), "outgoing request refused: destination not granted");
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        };
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            debug!(uri = %request.uri(), max = self.max_in_flight, "outgoing request refused: as many already in flight");
            return Box::new(async { Err(HttpError::ConnectionLimitReached) });
        };
        debug!(uri = %request.uri(), ?grant, "outgoing request");
        let options = capped(options, self.timeout);
        Box::new(async move {
            let (res, io) = super::outbound::send_request(request, options, grant).await?;
            // The permit is held until the response body is done.
            let io = async move {
                let r = io.await;
                drop(permit);
                r
            };
            Ok((
                res,
                Box::new(io) as Box<dyn std::future::Future<Output = _> + Send>,
            ))
        })
    }
}

/// Idle instances kept per plugin version when reuse is on.
const POOL_MAX: usize = 64;

/// An instance between two requests (reuse on).
pub(crate) struct Idle {
    pub(crate) store: wasmtime::Store<PluginState<HttpConn>>,
    pub(crate) proxy: wasmtime_wasi_http::p2::bindings::Proxy,
    /// Requests it has served.
    pub(crate) served: u32,
}

/// The idle instances of a wasi:http version.
#[derive(Default)]
pub(crate) struct Pool(std::sync::Mutex<Vec<Idle>>);

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle instance, if one waits.
    pub(crate) fn take(&self) -> Option<Idle> {
        self.lock().pop()
    }

    /// Keeps `idle` for a later request, if the pool has room.
    pub(crate) fn give_back(&self, idle: Idle) {
        let mut pool = self.lock();
        if pool.len() < POOL_MAX {
            pool.push(idle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_OUTGOING: usize = 16;
    const OUTGOING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

    fn policy(grants: &[&str], allow_private: bool) -> OutboundPolicy {
        HttpConn::new(
            Arc::new(grants.iter().map(|g| g.to_string()).collect()),
            allow_private,
            MAX_OUTGOING,
            OUTGOING_TIMEOUT,
        )
        .hooks
    }

    #[test]
    fn a_bare_host_grants_its_default_port_only() {
        let p = policy(&["example.com", "10.0.0.1:8080"], false);
        let ok = |u: &str| p.grant_for(&u.parse().unwrap()).is_some();
        assert!(ok("https://example.com/x"));
        assert!(ok("https://EXAMPLE.com:443/x"));
        assert!(ok("http://example.com/"));
        assert!(
            !ok("https://example.com:22/"),
            "another port of a granted host"
        );
        assert!(!ok("http://example.com:6379/"));
        assert!(ok("http://10.0.0.1:8080/"));
        assert!(
            !ok("http://10.0.0.1/"),
            "a host:port grant is that port only"
        );
        assert!(!ok("https://other.example/"));
        assert!(!ok("/relative"));
        let p6 = policy(&["::1", "[2001:db8::1]:8443"], false);
        let ok6 = |u: &str| p6.grant_for(&u.parse().unwrap()).is_some();
        assert!(ok6("https://[::1]/"));
        assert!(!ok6("https://[::1]:22/"));
        assert!(ok6("https://[2001:db8::1]:8443/"));
        assert!(!ok6("https://[2001:db8::1]/"));
        assert_eq!(grant_parts("example.com:x"), None);
    }

    #[test]
    fn the_matching_grant_says_which_addresses_may_be_reached() {
        let p = policy(&["example.com", "10.0.0.1:8080", "::1"], false);
        let g = |u: &str| p.grant_for(&u.parse().unwrap());
        assert_eq!(
            g("https://example.com/"),
            Some(Grant::Name {
                allow_private: false
            })
        );
        assert_eq!(
            g("http://10.0.0.1:8080/"),
            Some(Grant::Ip("10.0.0.1".parse().unwrap()))
        );
        // An address grant matches however the URI spells the address.
        assert_eq!(
            g("https://[0:0:0:0:0:0:0:1]/"),
            Some(Grant::Ip(std::net::Ipv6Addr::LOCALHOST.into()))
        );
        // A name grant does not cover an address literal.
        assert_eq!(g("https://93.184.215.14/"), None);
        let p = policy(&["example.com"], true);
        assert_eq!(
            p.grant_for(&"https://example.com/".parse().unwrap()),
            Some(Grant::Name {
                allow_private: true
            })
        );
    }

    #[test]
    fn guest_timeouts_are_capped() {
        let o = capped(
            Some(RequestOptions {
                connect_timeout: Some(std::time::Duration::from_secs(3600)),
                first_byte_timeout: Some(std::time::Duration::from_secs(1)),
                between_bytes_timeout: None,
            }),
            OUTGOING_TIMEOUT,
        );
        assert_eq!(o.connect_timeout, Some(OUTGOING_TIMEOUT));
        assert_eq!(
            o.first_byte_timeout,
            Some(std::time::Duration::from_secs(1))
        );
        assert_eq!(o.between_bytes_timeout, Some(OUTGOING_TIMEOUT));
    }

    #[test]
    fn in_flight_requests_are_limited_per_instance() {
        let p = policy(&[], false);
        let held: Vec<_> = (0..MAX_OUTGOING)
            .map(|_| p.in_flight.clone().try_acquire_owned().unwrap())
            .collect();
        assert!(p.in_flight.clone().try_acquire_owned().is_err());
        drop(held);
        assert!(p.in_flight.clone().try_acquire_owned().is_ok());
    }
}
