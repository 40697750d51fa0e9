//! Serves WASI 0.3 `wasi:http/service` components: `handle` is an
//! `async func`, request and response bodies are `stream<u8>`, and the host
//! side is `wasmtime-wasi-http`'s `p3` module (experimental in wasmtime 48).
//!
//! Each request gets a fresh instance on an engine with the component
//! model's concurrency, and everything the request does runs inside one
//! `run_concurrent` on that instance's store: the call to `handle`, then
//! the response body pulled from the guest's stream into the HTTP/3
//! stream's bounded channel, frame by frame. The guest's own tasks (a body
//! it goes on writing after `handle` returned) run only while that loop
//! does, so when the request ends (the body is done, the client left, the
//! connection closed), the store and every task of the guest go with it.
//! The whole request is one unit of the sandbox: one CPU budget, and the
//! version's wall-clock limit for a request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::p3::Request;
use wasmtime_wasi_http::WasiHttpView;

use super::super::sandbox::{bounded, instantiated, log_final_output, PluginState};
use super::super::version::Version;
use super::host::HttpConn;
use super::{fail, fresh_store, incoming, is_head, refused, Failure};
use crate::http3::{declared_length, pipe_body, send_end, send_head, IncomingRequest, PipeError};
use crate::metrics::CallKind;

/// A WASI 0.3 wasi:http component linked and ready to instantiate.
pub(crate) type ServicePre = wasmtime_wasi_http::p3::bindings::ServicePre<PluginState<HttpConn>>;

/// How a request went, once the guest's part is over.
enum Outcome {
    /// The response went out whole.
    Answered,
    /// `handle` returned an error code instead of a response.
    Refused(ErrorCode),
    /// The client left (the stream is gone).
    Gone,
    /// The response body failed after its head went out.
    BodyFailed(String),
}

/// Answers one request with a fresh instance.
pub(super) async fn run_request(
    plugin: &Arc<Version>,
    pre: ServicePre,
    req: IncomingRequest,
) -> Result<(), Failure> {
    let out = req.response;
    let head_request = is_head(&req.headers);
    let hreq = incoming(&req.headers, req.body)?;
    let mut store = fresh_store(plugin)?;
    // The future `from_http` returns reports the guest's verdict on the
    // request body; the stream's own state already tells the client.
    let (wreq, _verdict) = Request::from_http(store.data_mut().http().hooks, hreq);
    // Set once the head is handed to the stream: a failure after that
    // resets the stream instead of answering 500.
    let head_sent = Arc::new(AtomicBool::new(false));
    let sent = head_sent.clone();
    let limit = plugin.sandbox.limits.request_timeout;
    let res = bounded(&mut store, &pre, limit, CallKind::Request, |s, pre| {
        Box::pin(async move {
            // Counted on its own, failed or not (one cut short by the
            // request's wall-clock limit shows only as the request's timeout).
            let began = std::time::Instant::now();
            let service = pre.instantiate_async(&mut *s).await;
            instantiated(s.data(), began, &service);
            let service = service?;
            s.run_concurrent(async move |acc| -> wasmtime::Result<Outcome> {
                let res = match service.handle(acc, wreq).await? {
                    Ok(res) => res,
                    Err(code) => return Ok(Outcome::Refused(code)),
                };
                let res = acc.with(|s| res.into_http(s, async { Ok(()) }))?;
                let (parts, mut body) = res.into_parts();
                if send_head(&out, &parts, false).await.is_err() {
                    return Ok(Outcome::Gone);
                }
                sent.store(true, Ordering::Relaxed);
                // The end is held back until the body has ended well: a
                // guest trapping midway must reset the stream, not end it.
                let declared = declared_length(&parts, head_request);
                let ended = pipe_body(&out, &mut body, true, declared).await;
                drop(body);
                Ok(match ended {
                    Ok(end) => match send_end(&out, end).await {
                        Ok(()) => Outcome::Answered,
                        Err(_) => Outcome::Gone,
                    },
                    Err(PipeError::Gone) => Outcome::Gone,
                    Err(PipeError::Body(why)) => Outcome::BodyFailed(why),
                })
            })
            .await?
        })
    })
    .await;
    log_final_output(&mut store);
    let head_sent = head_sent.load(Ordering::Relaxed);
    let after_head = |message: String| Failure {
        status: http::StatusCode::INTERNAL_SERVER_ERROR,
        message,
        head_sent,
    };
    match res {
        Ok(Outcome::Answered) => Ok(()),
        Ok(Outcome::Refused(code)) => Err(fail(refused(format!("{code:?}")))),
        Ok(Outcome::Gone) => Err(Failure {
            head_sent: true,
            ..after_head("the client went away".into())
        }),
        Ok(Outcome::BodyFailed(why)) => {
            Err(after_head(format!("plugin failed mid-response: {why}")))
        }
        Err(why) => Err(after_head(format!("plugin failed: {why}"))),
    }
}
