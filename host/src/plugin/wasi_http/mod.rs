//! Serves standard `wasi:http/proxy` components (those `wasmtime serve`
//! runs) over HTTP/3, with `wasmtime-wasi-http` as the host side and the
//! HTTP/3 layer's front-end (the same request conversion, body type,
//! response path and connection loop as native handlers). WASI 0.3
//! `wasi:http/service` components are served by [`service`] on the same
//! connection loop.
//!
//! Each request gets a fresh instance (the pooling allocator makes that
//! cheap), so a trap answers 500 for that request only. The request body is
//! handed to the guest as the stream's [`RequestBody`], read only as the
//! guest reads; the response body is pulled from the guest frame by frame
//! into the stream's bounded channel. Neither ever sits whole in memory.
//! Outgoing requests (`wasi:http/outgoing-handler`) are refused with
//! `HTTP-request-denied` unless their authority is granted, and go only to
//! an address the grant covers ([`outbound`]).

pub(crate) mod host;
mod outbound;
pub(crate) mod service;

use std::sync::Arc;

use http_body_util::BodyExt;
use tracing::{debug, warn, Instrument};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{Error as HttpError, WasiHttpView};

use super::sandbox::{bounded, instantiate, instantiated, log_final_output, new_store};
use super::version::{ConnectionPin, RequestGauge, Version};
use super::world::ConnectionMeta;
use crate::http3::{
    declared_length, pipe_body, request_from_head, respond_error, send_end, send_head,
    serve_requests, H3Controller, IncomingRequest, OutboundFrame, OutboundSender, PipeError,
    RequestBody, H3_INTERNAL_ERROR, H3_REQUEST_CANCELLED,
};
use crate::metrics::CallKind;
use host::{HttpConn, Idle, Pool, ProxyPre};

/// A wasi:http component linked and ready to instantiate, by WASI release.
#[derive(Clone)]
pub(crate) enum Handler {
    /// WASI 0.2 `wasi:http/proxy`.
    Proxy {
        pre: ProxyPre,
        /// Idle instances, when reuse is on; they go with the version.
        pool: Arc<Pool>,
    },
    /// WASI 0.3 `wasi:http/service`.
    Service(service::ServicePre),
}

impl Handler {
    /// The linked component, whichever the release.
    fn instance_pre(
        &self,
    ) -> &wasmtime::component::InstancePre<super::sandbox::PluginState<HttpConn>> {
        match self {
            Handler::Proxy { pre, .. } => pre.instance_pre(),
            Handler::Service(pre) => pre.instance_pre(),
        }
    }
}

/// Serves one HTTP/3 connection: each request on its own instance.
pub(super) async fn serve(
    plugin: Arc<Version>,
    handler: Handler,
    controller: H3Controller,
    meta: ConnectionMeta,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let span = tracing::info_span!("plugin", file = %plugin.path.display(), peer = %meta.peer);
    async move {
        let _pin = ConnectionPin::new(plugin.clone());
        let live = plugin.clone();
        let stop = async move {
            let retired = live.live.wait_retired();
            tokio::select! {
                () = retired => {}
                () = shutdown => {}
            }
        };
        let handle = controller.handle();
        let killed = plugin.clone();
        let serve = serve_requests(controller, stop, |req| {
            handle_request(plugin.clone(), handler.clone(), req).in_current_span()
        });
        tokio::select! {
            () = serve => {}
            // The version's drain is over: what is left closes now (the
            // request tasks go with the loop).
            () = killed.live.wait_killed() => {
                debug!("the plugin version is unloaded; closing the connection");
                handle.close(H3_REQUEST_CANCELLED, "plugin version unloaded");
            }
        }
    }
    .instrument(span)
    .await
}

/// The guest's task: aborted if the request ends first (the client left,
/// the connection closed), so a guest never outlives its request.
struct Guest(tokio::task::JoinHandle<Result<Idle, String>>);

impl Drop for Guest {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn handle_request(plugin: Arc<Version>, handler: Handler, req: IncomingRequest) {
    let stream = req.stream_id;
    let mut in_flight = RequestGauge::new(&plugin.live);
    in_flight.set(1);
    let out = req.response.clone();
    let result = match handler {
        Handler::Proxy { pre, pool } => run_request(&plugin, pre, &pool, req).await,
        Handler::Service(pre) => service::run_request(&plugin, pre, req).await,
    };
    if let Err(why) = result {
        // A guest failing once its client left (a reset body read as an
        // error, often unwrapped) is the client's doing, and a client
        // resetting requests in a loop must not flood the log.
        if out.is_closed() {
            debug!(stream, error = %why.message, "plugin request ended after the client left");
        } else {
            warn!(stream, error = %why.message, "plugin request failed");
        }
        if why.head_sent {
            let _ = out.send(OutboundFrame::Reset(H3_INTERNAL_ERROR)).await;
        } else {
            respond_error(&out, why.status, &why.message).await;
        }
    }
}

/// Why a request failed, and whether it can still be answered.
pub(crate) struct Failure {
    status: http::StatusCode,
    message: String,
    /// Whether the response head was already sent (then the stream is
    /// reset rather than answered).
    head_sent: bool,
}

fn fail(message: impl Into<String>) -> Failure {
    Failure {
        status: http::StatusCode::INTERNAL_SERVER_ERROR,
        message: message.into(),
        head_sent: false,
    }
}

async fn run_request(
    plugin: &Arc<Version>,
    pre: ProxyPre,
    pool: &Arc<Pool>,
    req: IncomingRequest,
) -> Result<(), Failure> {
    let out: OutboundSender = req.response;
    let head_request = is_head(&req.headers);
    let hreq = incoming(&req.headers, req.body)?;
    // A pooled instance if reuse is on and one is idle, else a fresh one.
    let (mut store, proxy, served) = match pool.take() {
        Some(Idle {
            store,
            proxy,
            served,
        }) => (store, Some(proxy), served),
        None => (fresh_store(plugin)?, None, 0),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (r, o) = {
        let mut http = store.data_mut().http();
        let r = http
            .new_incoming_request(Scheme::Https, hreq)
            .map_err(|e| fail(format!("{e:?}")))?;
        let o = http
            .new_response_outparam(tx)
            .map_err(|e| fail(format!("{e:?}")))?;
        (r, o)
    };
    // The guest runs on its own task: it goes on writing the body after it
    // has handed over the response head.
    let request_timeout = plugin.sandbox.limits.request_timeout;
    let mut guest = Guest(tokio::spawn(
        async move {
            // A guest may wait without using CPU (on the client's body, on
            // outgoing HTTP, in a `wasi:io/poll` sleep): the wall clock
            // bounds the whole request too.
            let res = bounded(
                &mut store,
                &pre,
                request_timeout,
                CallKind::Request,
                |s, pre| {
                    Box::pin(async move {
                        let proxy = match proxy {
                            Some(p) => p,
                            None => {
                                // Counted on its own, failed or not (one cut short by the
                                // request's wall-clock limit shows only as the request's timeout).
                                let began = std::time::Instant::now();
                                let proxy = pre.instantiate_async(&mut *s).await;
                                instantiated(s.data(), began, &proxy);
                                proxy?
                            }
                        };
                        proxy
                            .wasi_http_incoming_handler()
                            .call_handle(&mut *s, r, o)
                            .await?;
                        Ok(proxy)
                    })
                },
            )
            .await;
            log_final_output(&mut store);
            res.map(|proxy| Idle {
                store,
                proxy,
                served: served + 1,
            })
        }
        .in_current_span(),
    ));
    let reuse = plugin.sandbox.limits.reuse_instances;
    let guest_result = |r: Result<Result<Idle, String>, tokio::task::JoinError>| match r {
        Ok(r) => r,
        Err(e) => Err(format!("the plugin's task failed: {e}")),
    };

    let resp = match rx.await {
        Ok(Ok(resp)) => resp,
        Ok(Err(code)) => {
            return Err(fail(refused(format!("{code:?}"))));
        }
        // It never set a response: it trapped, or returned without one.
        Err(_) => {
            return Err(match guest_result((&mut guest.0).await) {
                Err(why) => fail(format!("plugin failed: {why}")),
                Ok(_) => fail("the plugin returned without a response"),
            })
        }
    };
    let (parts, mut body) = resp.into_parts();
    let gone = || Failure {
        status: http::StatusCode::INTERNAL_SERVER_ERROR,
        message: "the client went away".into(),
        head_sent: true,
    };
    send_head(&out, &parts, false).await.map_err(|_| gone())?;
    // The end is held back: a trap after the head can end the body early
    // and look like a clean end, so it is trusted only once the guest has
    // finished well.
    let declared = declared_length(&parts, head_request);
    let ended = pipe_body(&out, &mut body, true, declared).await;
    // Done with the body: a guest still writing to it (the client left)
    // gets an error instead of waiting for a reader forever.
    drop(body);
    match (ended, guest_result((&mut guest.0).await)) {
        (Ok(end), Ok(idle)) => {
            // The instance goes back to the pool only after a request that
            // went well from start to end: the guest has finished, so it is
            // idle before the end goes out (and a request the client sends
            // once it sees the end finds it pooled).
            if idle.served <= reuse {
                pool.give_back(idle);
            }
            send_end(&out, end).await.map_err(|_| gone())?;
            Ok(())
        }
        (Err(PipeError::Gone), _) => Err(gone()),
        (Err(PipeError::Body(_)), _) | (Ok(_), Err(_)) if out.is_closed() => Err(gone()),
        (Err(PipeError::Body(why)), _) | (Ok(_), Err(why)) => {
            warn!(error = %why, "plugin failed mid-response; resetting the stream");
            let _ = out.send(OutboundFrame::Reset(H3_INTERNAL_ERROR)).await;
            Ok(())
        }
    }
}

/// What the client and the log are told of an error code the guest
/// answered with: at most 200 bytes of it, since an error code may carry
/// the guest's own text, of any length.
fn refused(code: String) -> String {
    let mut end = code.len().min(200);
    while !code.is_char_boundary(end) {
        end -= 1;
    }
    let more = if end < code.len() { "..." } else { "" };
    format!("the plugin answered with error {}{more}", &code[..end])
}

/// Whether the request is a HEAD (whose response has no body, whatever
/// length it declares).
fn is_head(headers: &[crate::http3::Header]) -> bool {
    use crate::http3::NameValue;
    headers
        .iter()
        .any(|h| h.name() == b":method" && h.value() == b"HEAD")
}

/// A request body as `wasmtime-wasi-http` takes it.
pub(crate) type GuestRequestBody =
    http_body_util::combinators::MapErr<RequestBody, fn(crate::http3::H3Error) -> HttpError>;

/// The request as `wasmtime-wasi-http` takes it, its body read from the
/// stream only as the guest reads; a malformed head answers 400.
fn incoming(
    headers: &[crate::http3::Header],
    body: Option<crate::http3::BodyReceiver>,
) -> Result<http::Request<GuestRequestBody>, Failure> {
    let hreq = request_from_head(headers, RequestBody::new(body)).map_err(|e| Failure {
        status: http::StatusCode::BAD_REQUEST,
        message: e.to_string(),
        head_sent: false,
    })?;
    let to_http: fn(crate::http3::H3Error) -> HttpError =
        |e| HttpError::InternalError(Some(e.to_string()));
    Ok(hreq.map(|b| b.map_err(to_http)))
}

/// A fresh store for one request's instance, with the version's outgoing
/// policy.
fn fresh_store(
    plugin: &Version,
) -> Result<wasmtime::Store<super::sandbox::PluginState<HttpConn>>, Failure> {
    let conn = HttpConn::new(
        Arc::new(plugin.sandbox.grants.http_hosts.clone()),
        plugin.sandbox.grants.http_private,
        plugin.sandbox.limits.outgoing_in_flight,
        plugin.sandbox.limits.outgoing_timeout,
    );
    new_store(&plugin.sandbox, conn).map_err(|e| fail(format!("{e:#}")))
}

/// For benchmarks: the mean time of a fresh store and instance, what each
/// request costs before the guest runs, over `n` runs.
pub(super) async fn measure_instantiation(
    plugin: &Version,
    handler: &Handler,
    n: u32,
) -> Result<std::time::Duration, String> {
    let n = n.max(1);
    let started = std::time::Instant::now();
    for _ in 0..n {
        let mut store = fresh_store(plugin).map_err(|f| f.message)?;
        handler
            .instance_pre()
            .instantiate_async(&mut store)
            .await
            .map_err(|e| format!("{e:?}"))?;
    }
    Ok(started.elapsed() / n)
}

/// Instantiates the plugin once in a scratch store, checks its exports and
/// runs its optional `init`.
pub(super) async fn validate(version: &Version, handler: &Handler) -> Result<(), String> {
    let conn = HttpConn::new(
        Default::default(),
        false,
        version.sandbox.limits.outgoing_in_flight,
        version.sandbox.limits.outgoing_timeout,
    );
    let mut store = new_store(&version.sandbox, conn).map_err(|e| format!("{e:#}"))?;
    let instance = instantiate(handler.instance_pre(), &mut store)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let exports = match handler {
        Handler::Proxy { .. } => {
            wasmtime_wasi_http::p2::bindings::Proxy::new(&mut store, &instance).map(drop)
        }
        Handler::Service(_) => {
            wasmtime_wasi_http::p3::bindings::Service::new(&mut store, &instance).map(drop)
        }
    };
    exports.map_err(|e| format!("its exports do not match: {e:?}"))?;
    version.run_init(&mut store, &instance).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_guest_error_code_reaches_the_client_cut_to_200_bytes() {
        assert_eq!(
            super::refused("DnsTimeout".into()),
            "the plugin answered with error DnsTimeout"
        );
        let long = format!("InternalError(Some(\"{}\"))", "é".repeat(10_000));
        let said = super::refused(long);
        assert!(said.len() < 260 && said.ends_with("..."), "{said}");
    }
}
