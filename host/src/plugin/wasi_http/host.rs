//! The host side of a wasi:http instance: its HTTP context, the policy for
//! outgoing requests (only granted destinations), and the pool of idle
//! instances a version keeps when reuse is on.

use std::sync::Arc;

use http_body_util::BodyExt;
use tracing::debug;
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use super::super::sandbox::PluginState;

/// A wasi:http component linked and ready to instantiate.
pub(crate) type ProxyPre = wasmtime_wasi_http::p2::bindings::ProxyPre<PluginState<HttpConn>>;

/// A wasi:http instance's side of the host: its HTTP context and the
/// outgoing-request policy.
pub(crate) struct HttpConn {
    http: WasiHttpCtx,
    hooks: OutboundPolicy,
}

impl HttpConn {
    pub(crate) fn new(allowed: Arc<Vec<String>>) -> Self {
        Self {
            http: WasiHttpCtx::new(),
            hooks: OutboundPolicy { allowed },
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

/// Outgoing requests go only to granted authorities (`host` or `host:port`).
pub(crate) struct OutboundPolicy {
    allowed: Arc<Vec<String>>,
}

impl OutboundPolicy {
    fn allows(&self, uri: &http::Uri) -> bool {
        let Some(auth) = uri.authority() else {
            return false;
        };
        let host = auth.host();
        let with_port = auth.as_str();
        self.allowed
            .iter()
            .any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(with_port))
    }
}

impl WasiHttpHooks for OutboundPolicy {
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
        if !self.allows(request.uri()) {
            debug!(uri = %request.uri(), "outgoing request refused: destination not granted");
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        debug!(uri = %request.uri(), "outgoing request");
        Box::new(async move {
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
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
