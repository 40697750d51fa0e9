//! Handlers for the standard `wasi:http/proxy` world: implement [`Handler`],
//! export it with [`export_http_handler!`](crate::export_http_handler). The
//! component is a plain wasi:http component: tq-host serves it over HTTP/3
//! (an instance per request), and `wasmtime serve` or any other wasi:http
//! host runs it unchanged.
//!
//! ```ignore
//! use tq_sdk::http::{Handler, Request, Response};
//!
//! struct Upper;
//!
//! impl Handler for Upper {
//!     fn handle(mut req: Request) -> Response {
//!         match req.path.as_str() {
//!             "/" => Response::text(200, "hello\n"),
//!             "/upper" => {
//!                 let body = req.body().to_ascii_uppercase();
//!                 Response::new(200).body(body)
//!             }
//!             _ => Response::text(404, "not found\n"),
//!         }
//!     }
//! }
//!
//! tq_sdk::export_http_handler!(Upper);
//! ```
//!
//! Bodies stream both ways: [`Request::body_reader`] reads the request as
//! it arrives, [`Response::stream`] writes the response as the client takes
//! it; [`Request::body`] and [`Response::body`] are the whole-bytes
//! shortcuts.

use std::io::{Read, Write};

use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, InputStream, Method, OutgoingBody, OutgoingResponse,
    ResponseOutparam,
};

/// A request: its head, and its body still to read.
pub struct Request {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The path with the query.
    pub path: String,
    /// Every header, names lower-case.
    pub headers: Vec<(String, Vec<u8>)>,
    body: Option<IncomingBody>,
}

impl Request {
    /// A header's value as text, if present and UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::header_text(&self.headers, name)
    }

    /// Reads the whole body (empty if there is none, or it was read).
    pub fn body(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(mut r) = self.body_reader() {
            let _ = r.read_to_end(&mut out);
        }
        out
    }

    /// The body as a reader that streams it as it arrives; `None` once
    /// taken.
    pub fn body_reader(&mut self) -> Option<BodyReader> {
        let body = self.body.take()?;
        let stream = body.stream().ok()?;
        Some(BodyReader {
            stream: Some(stream),
            _body: body,
        })
    }
}

/// Streams a request body ([`Request::body_reader`]).
pub struct BodyReader {
    // Field order matters: the stream must go before its body.
    stream: Option<InputStream>,
    _body: IncomingBody,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.stream.as_mut() {
            Some(s) => Read::read(s, buf),
            None => Ok(0),
        }
    }
}

/// A response to build and return from [`Handler::handle`].
pub struct Response {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Body,
}

enum Body {
    Bytes(Vec<u8>),
    Stream(Box<dyn FnOnce(&mut dyn Write) -> std::io::Result<()>>),
}

impl Response {
    /// An empty response with this status.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Body::Bytes(Vec::new()),
        }
    }

    /// A `text/plain` response.
    pub fn text(status: u16, text: &str) -> Self {
        Self::new(status)
            .header("content-type", "text/plain")
            .body(text.as_bytes().to_vec())
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
        self
    }

    /// The whole body.
    pub fn body(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.body = Body::Bytes(bytes.into());
        self
    }

    /// A body written by `write` after the head is sent, as the client
    /// takes it (writes wait while the client is not ready).
    pub fn stream(
        mut self,
        write: impl FnOnce(&mut dyn Write) -> std::io::Result<()> + 'static,
    ) -> Self {
        self.body = Body::Stream(Box::new(write));
        self
    }
}

/// A wasi:http request handler. One call per request, each on a fresh
/// instance under tq-host, so keep no state between requests.
pub trait Handler {
    /// Answers one request.
    fn handle(req: Request) -> Response;
}

fn method_name(m: &Method) -> String {
    match m {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(s) => s.clone(),
    }
}

#[doc(hidden)]
pub fn __serve<H: Handler>(req: IncomingRequest, out: ResponseOutparam) {
    let request = Request {
        method: method_name(&req.method()),
        path: req.path_with_query().unwrap_or_else(|| "/".into()),
        headers: req.headers().entries(),
        body: req.consume().ok(),
    };
    let response = H::handle(request);
    let mut headers = response.headers;
    if let Body::Bytes(b) = &response.body {
        if !headers.iter().any(|(n, _)| n == "content-length") {
            headers.push(("content-length".into(), b.len().to_string().into_bytes()));
        }
    }
    let Ok(fields) = Fields::from_list(&headers) else {
        let resp = OutgoingResponse::new(Fields::new());
        let _ = resp.set_status_code(500);
        ResponseOutparam::set(out, Ok(resp));
        return;
    };
    let resp = OutgoingResponse::new(fields);
    let _ = resp.set_status_code(response.status);
    let Ok(body) = resp.body() else { return };
    ResponseOutparam::set(out, Ok(resp));
    let written = match body.write() {
        Ok(mut s) => {
            let r = match response.body {
                Body::Bytes(b) => s.write_all(&b),
                // Small writes are gathered: each write to the host is a
                // call and, on the wire, a frame.
                Body::Stream(f) => {
                    let mut w = std::io::BufWriter::with_capacity(64 << 10, &mut s);
                    f(&mut w).and_then(|()| w.flush())
                }
            };
            r.and_then(|()| Write::flush(&mut s))
        }
        Err(()) => Ok(()),
    };
    // A failed write leaves the body unfinished: the host resets the stream
    // rather than pass a truncated body off as whole.
    if written.is_ok() {
        let _ = OutgoingBody::finish(body, None);
    }
}

/// Exports a [`Handler`] type as the component's `wasi:http/incoming-handler`.
///
/// ```ignore
/// tq_sdk::export_http_handler!(MyHandler);
/// ```
#[macro_export]
macro_rules! export_http_handler {
    ($handler:ty) => {
        #[doc(hidden)]
        mod __tq_export_http {
            use super::*;

            pub struct TqHttpExport;

            impl $crate::__wasi::exports::http::incoming_handler::Guest for TqHttpExport {
                fn handle(
                    req: $crate::__wasi::http::types::IncomingRequest,
                    out: $crate::__wasi::http::types::ResponseOutparam,
                ) {
                    $crate::http::__serve::<$handler>(req, out)
                }
            }

            $crate::__wasi::http::proxy::export!(TqHttpExport);
        }
    };
}
