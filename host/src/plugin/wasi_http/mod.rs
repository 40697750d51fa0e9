//! Serves standard `wasi:http/proxy` components (those `wasmtime serve`
//! runs) over HTTP/3, with `wasmtime-wasi-http` as the host side.
//!
//! Each request gets a fresh instance (the pooling allocator makes that
//! cheap), so a trap answers 500 for that request only. The request body is
//! handed to the guest as an `http_body::Body` over the stream's bounded
//! channel, read only as the guest reads; the response body is pulled from
//! the guest frame by frame into the stream's bounded channel. Neither ever
//! sits whole in memory. Outgoing requests (`wasi:http/outgoing-handler`)
//! are refused with `HTTP-request-denied` unless their authority is granted.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::task::JoinSet;
use tracing::{debug, warn, Instrument};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use super::instance::{describe, log_output, new_store};
use super::state::PluginState;
use super::{ConnectionMeta, ConnectionPin, Inner, Pre};
use crate::http3::{
    BodyReceiver, H3Controller, H3Event, InboundFrame, IncomingRequest, NameValue, OutboundFrame,
    OutboundSender,
};

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
    store: wasmtime::Store<PluginState<HttpConn>>,
    proxy: wasmtime_wasi_http::p2::bindings::Proxy,
    /// Requests it has served.
    served: u32,
}

/// The pool of idle instances of a wasi:http version.
pub(crate) type Pool = std::sync::Mutex<Vec<Idle>>;

fn lock(pool: &Pool) -> std::sync::MutexGuard<'_, Vec<Idle>> {
    pool.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request body read from the H3 stream as the guest reads it.
struct H3Body(Option<BodyReceiver>);

impl http_body::Body for H3Body {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let Some(rx) = self.0.as_mut() else {
            return Poll::Ready(None);
        };
        match std::task::ready!(rx.poll_recv(cx)) {
            Some(InboundFrame::Body(b)) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Some(InboundFrame::Headers(h)) => {
                let mut map = http::HeaderMap::new();
                for f in &h {
                    if let (Ok(n), Ok(v)) = (
                        http::HeaderName::from_bytes(f.name()),
                        http::HeaderValue::from_bytes(f.value()),
                    ) {
                        map.append(n, v);
                    }
                }
                Poll::Ready(Some(Ok(Frame::trailers(map))))
            }
            Some(InboundFrame::Reset(code)) => {
                self.0 = None;
                Poll::Ready(Some(Err(HttpError::InternalError(Some(format!(
                    "the client abandoned the request body (code {code:#x})"
                ))))))
            }
            Some(InboundFrame::Finished) | None => {
                self.0 = None;
                Poll::Ready(None)
            }
        }
    }
}

/// Serves one HTTP/3 connection: each request on its own instance.
pub(super) async fn serve(
    plugin: Arc<Inner>,
    mut controller: H3Controller,
    meta: ConnectionMeta,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let span = tracing::info_span!("plugin", file = %plugin.path.display(), peer = %meta.peer);
    async move {
        let _pin = ConnectionPin::new(plugin.clone());
        let handle = controller.handle();
        let mut retired = plugin.live.retired.subscribe();
        let mut shutdown = std::pin::pin!(shutdown);
        let mut going_away = false;
        let mut requests = JoinSet::new();
        loop {
            tokio::select! {
                ev = controller.next_event() => match ev {
                    None | Some(H3Event::ConnectionShutdown { .. }) => break,
                    Some(H3Event::IncomingRequest(req)) => {
                        let plugin = plugin.clone();
                        requests.spawn(handle_request(plugin, req).in_current_span());
                    }
                    Some(_) => {}
                },
                Some(_) = requests.join_next(), if !requests.is_empty() => {}
                Ok(()) = async { retired.wait_for(|r| *r).await.map(|_| ()) }, if !going_away => {
                    going_away = true;
                    handle.goaway();
                }
                () = &mut shutdown, if !going_away => {
                    going_away = true;
                    handle.goaway();
                }
            }
        }
        // The connection is gone: requests still running have nowhere to
        // answer.
        requests.shutdown().await;
    }
    .instrument(span)
    .await
}

/// The request head as an `http::Request` the guest can take.
fn to_http(req: &IncomingRequest) -> Result<http::request::Builder, String> {
    let mut method = None;
    let mut scheme = "https".to_owned();
    let mut authority = String::new();
    let mut path = "/".to_owned();
    let mut b = http::Request::builder();
    for h in &req.headers {
        let value = String::from_utf8_lossy(h.value()).into_owned();
        match h.name() {
            b":method" => method = Some(value),
            b":scheme" => scheme = value,
            b":authority" => authority = value,
            b":path" => path = value,
            n if n.starts_with(b":") => {}
            n => b = b.header(n, h.value()),
        }
    }
    let method = method.ok_or("no :method")?;
    if authority.is_empty() {
        authority = "localhost".into();
    }
    Ok(b.method(method.as_str())
        .uri(format!("{scheme}://{authority}{path}")))
}

/// Counts a request in flight on its version, also when its task is
/// aborted.
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(c: &'a std::sync::atomic::AtomicUsize) -> Self {
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The guest's task: aborted if the request ends first (the client left,
/// the connection closed), so a guest never outlives its request.
struct Guest(tokio::task::JoinHandle<Result<Idle, String>>);

impl Drop for Guest {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn handle_request(plugin: Arc<Inner>, req: IncomingRequest) {
    let stream = req.stream_id;
    let _in_flight = InFlight::new(&plugin.live.requests);
    let out = req.response.clone();
    if let Err(why) = run_request(&plugin, req).await {
        warn!(stream, error = %why.message, "plugin request failed");
        if why.head_sent {
            let _ = out
                .send(OutboundFrame::Reset(crate::http3::H3_INTERNAL_ERROR))
                .await;
        } else {
            respond_error(&out, why.status, &why.message).await;
        }
    }
}

struct Failure {
    status: u16,
    message: String,
    /// Whether the response head was already sent (then the stream is
    /// reset rather than answered).
    head_sent: bool,
}

fn fail(message: impl Into<String>) -> Failure {
    Failure {
        status: 500,
        message: message.into(),
        head_sent: false,
    }
}

async fn respond_error(out: &OutboundSender, status: u16, message: &str) {
    let head = crate::http3::headers(&[
        (":status", &status.to_string()),
        ("content-type", "text/plain"),
    ]);
    if out
        .send(OutboundFrame::Headers {
            headers: head,
            fin: false,
        })
        .await
        .is_ok()
    {
        let _ = out
            .send(OutboundFrame::Body(
                Bytes::from(format!("{message}\n")),
                true,
            ))
            .await;
    }
}

async fn run_request(plugin: &Arc<Inner>, req: IncomingRequest) -> Result<(), Failure> {
    let Pre::WasiHttp(pre) = &plugin.pre else {
        return Err(fail("not a wasi:http plugin"));
    };
    let builder = to_http(&req).map_err(|m| Failure {
        status: 400,
        message: m,
        head_sent: false,
    })?;
    let out = req.response;
    let body = H3Body(req.body);
    let hreq = builder.body(body).map_err(|e| Failure {
        status: 400,
        message: format!("bad request: {e}"),
        head_sent: false,
    })?;
    // A pooled instance if reuse is on and one is idle, else a fresh one.
    let pooled = lock(&plugin.wasi_pool).pop();
    let (mut store, proxy, served) = match pooled {
        Some(Idle {
            store,
            proxy,
            served,
        }) => (store, Some(proxy), served),
        None => {
            let conn = HttpConn::new(Arc::new(plugin.grants.http_hosts.clone()));
            let store = new_store(plugin, conn).map_err(|e| fail(format!("{e:#}")))?;
            (store, None, 0)
        }
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
    let pre = pre.clone();
    let mut guest = Guest(tokio::spawn(
        async move {
            store.data_mut().start_call();
            let res: wasmtime::Result<wasmtime_wasi_http::p2::bindings::Proxy> = async {
                let proxy = match proxy {
                    Some(p) => p,
                    None => pre.instantiate_async(&mut store).await?,
                };
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, r, o)
                    .await?;
                Ok(proxy)
            }
            .await;
            log_output(&mut store);
            match res {
                Ok(proxy) => Ok(Idle {
                    store,
                    proxy,
                    served: served + 1,
                }),
                Err(_) if store.data().past_deadline() => Err(format!(
                    "exceeded its CPU deadline of {:?}",
                    store.data().call_deadline
                )),
                Err(e) => Err(describe(&e)),
            }
        }
        .in_current_span(),
    ));
    let reuse = plugin.limits.reuse_instances;
    // The instance goes back to the pool only after a request that went
    // well from start to end.
    let give_back = |idle: Idle| {
        if idle.served <= reuse {
            let mut pool = lock(&plugin.wasi_pool);
            if pool.len() < POOL_MAX {
                pool.push(idle);
            }
        }
    };
    let guest_result = |r: Result<Result<Idle, String>, tokio::task::JoinError>| match r {
        Ok(r) => r,
        Err(e) => Err(format!("the plugin's task failed: {e}")),
    };

    let resp = match rx.await {
        Ok(Ok(resp)) => resp,
        Ok(Err(code)) => {
            return Err(fail(format!("the plugin answered with error {code:?}")));
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
    let mut head = vec![crate::http3::Header::new(
        b":status",
        parts.status.as_str().as_bytes(),
    )];
    for (n, v) in &parts.headers {
        head.push(crate::http3::Header::new(
            n.as_str().as_bytes(),
            v.as_bytes(),
        ));
    }
    let gone = || Failure {
        status: 500,
        message: "the client went away".into(),
        head_sent: true,
    };
    out.send(OutboundFrame::Headers {
        headers: head,
        fin: false,
    })
    .await
    .map_err(|_| gone())?;
    let ended = stream_body(&out, &mut body).await;
    // Done with the body: a guest still writing to it (the client left)
    // gets an error instead of waiting for a reader forever.
    drop(body);
    // A trap after the head can end the body early and look like a clean
    // end: trust the end only if the guest finished well.
    match (ended, guest_result((&mut guest.0).await)) {
        (Ok(trailers), Ok(idle)) => {
            let last = match trailers {
                Some(t) => OutboundFrame::Trailers(t),
                None => OutboundFrame::Body(Bytes::new(), true),
            };
            out.send(last).await.map_err(|_| gone())?;
            give_back(idle);
            Ok(())
        }
        (Err(why), _) | (_, Err(why)) => {
            warn!(error = %why, "plugin failed mid-response; resetting the stream");
            let _ = out
                .send(OutboundFrame::Reset(crate::http3::H3_INTERNAL_ERROR))
                .await;
            Ok(())
        }
    }
}

/// Moves the response body into the stream, a frame at a time, waiting for
/// room; returns the trailers, if any.
async fn stream_body(
    out: &OutboundSender,
    body: &mut HyperOutgoingBody,
) -> Result<Option<Vec<crate::http3::Header>>, String> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("the plugin's body failed: {e:?}"))?;
        match frame.into_data() {
            Ok(data) => {
                out.send(OutboundFrame::Body(data, false))
                    .await
                    .map_err(|_| "the client went away".to_string())?;
            }
            Err(frame) => {
                if let Ok(map) = frame.into_trailers() {
                    let t = map
                        .iter()
                        .map(|(n, v)| {
                            crate::http3::Header::new(n.as_str().as_bytes(), v.as_bytes())
                        })
                        .collect();
                    return Ok(Some(t));
                }
            }
        }
    }
    Ok(None)
}
