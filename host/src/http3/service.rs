//! Serving requests: the one connection loop ([`serve_requests`]: a task
//! per request, GOAWAY on shutdown, every task ended with the connection),
//! the one response path ([`send_response`], any `http_body::Body`), and
//! the native handler API on top ([`RequestHandler`], [`serve_connection`]).
//! The plugin runtime's wasi:http world sits on the same pieces.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, Instrument};

use super::body::{RequestBody, ResponseBody};
use super::controller::{H3Controller, H3Event, IncomingRequest};
use super::error::{H3Error, H3_INTERNAL_ERROR};
use super::frames::{OutboundFrame, OutboundSender};
use super::head::{header_list, request_from_head};

/// Handles HTTP/3 requests in plain Rust.
///
/// ```
/// use tq_host::http3::{RequestBody, RequestHandler, ResponseBody};
///
/// struct Hello;
///
/// impl RequestHandler for Hello {
///     async fn handle(&self, req: http::Request<RequestBody>) -> http::Response<ResponseBody> {
///         http::Response::new(format!("hello from {}", req.uri().path()).into())
///     }
/// }
/// ```
pub trait RequestHandler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(
        &self,
        req: http::Request<RequestBody>,
    ) -> impl Future<Output = http::Response<ResponseBody>> + Send;
}

/// Runs one connection's requests until it closes: each request goes to
/// `on_request` on a task of its own, owned here. A request the client
/// resets is aborted at once (its answer could not be sent anyway, and a
/// client resetting requests as fast as it opens them — the "rapid reset"
/// attack — must not leave their handlers running); tasks still running
/// when the connection ends are aborted too. When `shutdown` completes the
/// connection gets GOAWAY: requests in flight finish, new ones are refused,
/// and the driver closes once idle.
pub async fn serve_requests<F, Fut>(
    mut controller: H3Controller,
    shutdown: impl Future<Output = ()> + Send,
    mut on_request: F,
) where
    F: FnMut(IncomingRequest) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handle = controller.handle();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut going_away = false;
    let mut tasks = JoinSet::new();
    // Each live request's task, both ways, so a reset finds it and a
    // finished task frees its entry.
    let mut by_stream: crate::quic::id_map::IdMap<AbortHandle> = Default::default();
    let mut by_task: HashMap<tokio::task::Id, u64> = HashMap::new();
    loop {
        tokio::select! {
            ev = controller.next_event() => match ev {
                Some(H3Event::IncomingRequest(req)) => {
                    let id = req.stream_id;
                    let span = tracing::debug_span!("request", stream = id);
                    let task = tasks.spawn(on_request(req).instrument(span));
                    by_task.insert(task.id(), id);
                    by_stream.insert(id, task);
                }
                Some(H3Event::StreamReset { stream_id, code }) => {
                    if let Some(task) = by_stream.remove(&stream_id) {
                        debug!(stream = stream_id, code, "request reset by the client; its handler is stopped");
                        task.abort();
                    }
                }
                Some(H3Event::ConnectionShutdown { error }) => {
                    if let Some(e) = error {
                        debug!(error = %e, "connection ended");
                    }
                    break;
                }
                Some(_) => {}
                None => break,
            },
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let task = match done {
                    Ok((task, ())) => task,
                    Err(e) => e.id(),
                };
                if let Some(stream) = by_task.remove(&task) {
                    by_stream.remove(&stream);
                }
            }
            () = &mut shutdown, if !going_away => {
                going_away = true;
                handle.goaway();
            }
        }
    }
    tasks.shutdown().await;
}

/// Serves every request of one connection with `handler`, until the
/// connection closes.
pub async fn serve_connection<H: RequestHandler>(controller: H3Controller, handler: Arc<H>) {
    serve_connection_until(controller, handler, std::future::pending()).await
}

/// As [`serve_connection`], sending GOAWAY when `shutdown` completes.
pub async fn serve_connection_until<H: RequestHandler>(
    controller: H3Controller,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()> + Send,
) {
    serve_requests(controller, shutdown, move |req| {
        serve_request(req, handler.clone())
    })
    .await
}

async fn serve_request<H: RequestHandler>(req: IncomingRequest, handler: Arc<H>) {
    let IncomingRequest {
        headers,
        body,
        response,
        ..
    } = req;
    let request = match request_from_head(&headers, RequestBody::new(body)) {
        Ok(r) => r,
        Err(e) => {
            debug!(error = %e, "malformed request");
            respond_error(&response, http::StatusCode::BAD_REQUEST, &e.to_string()).await;
            return;
        }
    };
    let resp = handler.handle(request).await;
    if let Err(e) = send_response(&response, resp).await {
        debug!(error = %e, "response abandoned");
    }
}

/// Answers with `status` and `message` as a plain-text body.
pub(crate) async fn respond_error(to: &OutboundSender, status: http::StatusCode, message: &str) {
    let resp = http::Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(ResponseBody::from(format!("{message}\n")))
        .unwrap_or_default();
    let _ = send_response(to, resp).await;
}

/// Why a body could not be piped to the stream.
#[derive(Debug)]
pub(crate) enum PipeError {
    /// The body itself failed (the stream should be reset).
    Body(String),
    /// The stream is gone.
    Gone,
}

/// Sends a response head; `end` when no body follows.
pub(crate) async fn send_head(
    to: &OutboundSender,
    parts: &http::response::Parts,
    end: bool,
) -> Result<(), H3Error> {
    to.send_headers(header_list(Some(parts.status), &parts.headers), end)
        .await
        .map_err(|_| H3Error::StreamClosed)
}

/// Moves a body into the stream a frame at a time, waiting for room, and
/// says how it ended without sending that end (the caller does, with
/// [`send_end`]) — unless `hold_end` is false and the body knows it has
/// ended with its last data, which then goes out with `fin`.
///
/// `declared` is the response's `content-length` (see [`declared_length`]):
/// a body that runs past it, or ends short of it, fails (the caller resets
/// the stream), since a response whose body and length disagree is
/// malformed (RFC 9114 §4.1.2) and a cache could keep it as complete.
pub(crate) async fn pipe_body<B>(
    to: &OutboundSender,
    body: &mut B,
    hold_end: bool,
    declared: Option<u64>,
) -> Result<BodyEnd, PipeError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut sent: u64 = 0;
    let short = |sent: u64| match declared {
        Some(n) if sent != n => Err(PipeError::Body(format!(
            "the body ended after {sent} of the {n} bytes its content-length declares"
        ))),
        _ => Ok(()),
    };
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| PipeError::Body(format!("{e:?}")))?;
        match frame.into_data() {
            Ok(data) => {
                sent = sent.saturating_add(data.len() as u64);
                if let Some(n) = declared.filter(|n| sent > *n) {
                    return Err(PipeError::Body(format!(
                        "the body runs past its content-length of {n} bytes"
                    )));
                }
                let fin = !hold_end && body.is_end_stream();
                if fin {
                    short(sent)?;
                }
                to.send_body(data, fin).await.map_err(|_| PipeError::Gone)?;
                if fin {
                    return Ok(BodyEnd::Sent);
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    short(sent)?;
                    return Ok(BodyEnd::Trailers(t));
                }
            }
        }
    }
    short(sent)?;
    Ok(BodyEnd::Open)
}

/// The body length a response head declares, if its body must have one:
/// its `content-length`, unless the response has no body whatever it says
/// (to a HEAD request, 1xx, 204, 304). A missing or unparsable length
/// declares nothing.
pub(crate) fn declared_length(parts: &http::response::Parts, head_request: bool) -> Option<u64> {
    let s = parts.status.as_u16();
    if head_request || s < 200 || s == 204 || s == 304 {
        return None;
    }
    parts
        .headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// How a piped body ended.
#[derive(Debug)]
pub(crate) enum BodyEnd {
    /// `fin` went out with the last data.
    Sent,
    /// Trailers end it; not sent yet.
    Trailers(http::HeaderMap),
    /// The stream's end is still to send.
    Open,
}

/// Ends a stream after [`pipe_body`].
pub(crate) async fn send_end(to: &OutboundSender, end: BodyEnd) -> Result<(), H3Error> {
    let frame = match end {
        BodyEnd::Sent => return Ok(()),
        BodyEnd::Trailers(t) => OutboundFrame::Trailers(header_list(None, &t)),
        BodyEnd::Open => OutboundFrame::Body(Bytes::new(), true),
    };
    to.send(frame).await.map_err(|_| H3Error::StreamClosed)
}

/// Sends a whole response, head then body, with back-pressure. A body that
/// fails midway resets the stream with H3_INTERNAL_ERROR.
///
/// # Errors
/// The stream is gone (the client left or reset it), or the body failed.
pub async fn send_response<B>(to: &OutboundSender, resp: http::Response<B>) -> Result<(), H3Error>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let (parts, mut body) = resp.into_parts();
    let empty = body.is_end_stream();
    send_head(to, &parts, empty).await?;
    if empty {
        return Ok(());
    }
    match pipe_body(to, &mut body, false, declared_length(&parts, false)).await {
        Ok(end) => send_end(to, end).await,
        Err(PipeError::Gone) => Err(H3Error::StreamClosed),
        Err(PipeError::Body(why)) => {
            debug!(error = %why, "response body failed; resetting the stream");
            let _ = to.send(OutboundFrame::Reset(H3_INTERNAL_ERROR)).await;
            Err(H3Error::BodyFailed(why))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// A body of the given data frames.
    struct Frames(VecDeque<Bytes>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    fn frames(sizes: &[usize]) -> Frames {
        Frames(sizes.iter().map(|n| Bytes::from(vec![b'x'; *n])).collect())
    }

    fn sender() -> (OutboundSender, tokio::sync::mpsc::Receiver<OutboundFrame>) {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let out = OutboundSender {
            stream_id: 0,
            tx,
            shared: Default::default(),
        };
        (out, rx)
    }

    /// Body bytes that reached the stream.
    fn sent(rx: &mut tokio::sync::mpsc::Receiver<OutboundFrame>) -> usize {
        let mut n = 0;
        while let Ok(f) = rx.try_recv() {
            if let OutboundFrame::Body(b, _) = f {
                n += b.len();
            }
        }
        n
    }

    #[tokio::test]
    async fn a_body_must_match_its_declared_length() {
        let (out, mut rx) = sender();
        let r = pipe_body(&out, &mut frames(&[4, 6]), true, Some(10)).await;
        assert!(matches!(r, Ok(BodyEnd::Open)), "{r:?}");
        assert_eq!(sent(&mut rx), 10);

        let r = pipe_body(&out, &mut frames(&[4, 1]), true, Some(10)).await;
        match r {
            Err(PipeError::Body(why)) => assert!(why.contains("5 of the 10"), "{why}"),
            other => panic!("a short body passed: {other:?}"),
        }
        sent(&mut rx);

        // Past the length: refused before the excess goes out.
        let r = pipe_body(&out, &mut frames(&[4, 7]), true, Some(10)).await;
        assert!(matches!(r, Err(PipeError::Body(_))), "{r:?}");
        assert_eq!(sent(&mut rx), 4);

        // Ending with its last data (fin on it): checked before the fin.
        let r = pipe_body(&out, &mut frames(&[3]), false, Some(10)).await;
        assert!(matches!(r, Err(PipeError::Body(_))), "{r:?}");
        assert_eq!(sent(&mut rx), 0);

        // No declared length: any length.
        let r = pipe_body(&out, &mut frames(&[4, 7]), true, None).await;
        assert!(r.is_ok());
        assert_eq!(sent(&mut rx), 11);
    }

    #[test]
    fn responses_without_a_body_declare_no_length() {
        let parts = |status: u16, len: Option<&str>| {
            let mut b = http::Response::builder().status(status);
            if let Some(l) = len {
                b = b.header("content-length", l);
            }
            b.body(()).unwrap().into_parts().0
        };
        assert_eq!(declared_length(&parts(200, Some("12")), false), Some(12));
        assert_eq!(declared_length(&parts(200, Some("12")), true), None);
        assert_eq!(declared_length(&parts(204, Some("12")), false), None);
        assert_eq!(declared_length(&parts(304, Some("12")), false), None);
        assert_eq!(declared_length(&parts(200, None), false), None);
        assert_eq!(declared_length(&parts(200, Some("x")), false), None);
    }
}
