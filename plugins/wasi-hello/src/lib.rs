//! A standard `wasi:http/proxy` component written against the upstream
//! bindings (the `wasi` crate), not tq-sdk: it runs unchanged on any
//! wasi:http host, and on tq-host over HTTP/3.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /` | `hello from a wasi:http component` |
//! | `POST /echo` | the request body, streamed back as it arrives |
//! | `GET /bytes/N` | N bytes, generated as the client reads |
//! | `POST /discard` | the request body's length, once all of it has arrived (the benchmarks' upload) |
//! | `GET /fetch?URL` | fetches URL (`http://...`) with `wasi:http/outgoing-handler` and answers `fetched STATUS: BODY`, or `refused: ERROR` (tq-host refuses destinations the operator did not grant with `--allow-http`) |
//! | `GET /count` | `request N on this instance`: always 1 on tq-host's default fresh instance per request, counting up with `--reuse-instances` |
//! | `GET /panic` | panics: the host answers 500 for this request only |

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};
use wasi::io::streams::StreamError;

struct Hello;

impl wasi::exports::http::incoming_handler::Guest for Hello {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let path = req.path_with_query().unwrap_or_default();
        match (req.method(), path.as_str()) {
            (Method::Get, "/") => respond(out, 200, b"hello from a wasi:http component\n"),
            (Method::Post, "/echo") => echo(req, out),
            (Method::Post, "/discard") => discard(req, out),
            (Method::Get, p) if p.starts_with("/bytes/") => match p[7..].parse::<u64>() {
                Ok(n) => bytes(out, n),
                Err(_) => respond(out, 400, b"N must be a number\n"),
            },
            (Method::Get, p) if p.starts_with("/fetch?") => fetch(out, &p[7..]),
            (Method::Get, "/count") => {
                static SERVED: AtomicU64 = AtomicU64::new(0);
                let n = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
                respond(
                    out,
                    200,
                    format!("request {n} on this instance\n").as_bytes(),
                )
            }
            (Method::Get, "/panic") => panic!("this component panics on purpose"),
            _ => respond(out, 404, b"not found\n"),
        }
    }
}

/// Starts a response and returns its body, after handing the head over.
fn start(out: ResponseOutparam, status: u16, len: Option<u64>) -> OutgoingBody {
    let mut fields = vec![("content-type".to_string(), b"text/plain".to_vec())];
    if let Some(n) = len {
        fields.push(("content-length".to_string(), n.to_string().into_bytes()));
    }
    let resp = OutgoingResponse::new(Fields::from_list(&fields).expect("valid fields"));
    resp.set_status_code(status).expect("valid status");
    let body = resp.body().expect("a body");
    ResponseOutparam::set(out, Ok(resp));
    body
}

fn respond(out: ResponseOutparam, status: u16, bytes: &[u8]) {
    let body = start(out, status, Some(bytes.len() as u64));
    {
        let mut s = body.write().expect("body stream");
        s.write_all(bytes).expect("write");
        s.flush().expect("flush");
    }
    OutgoingBody::finish(body, None).expect("finish");
}

fn echo(req: IncomingRequest, out: ResponseOutparam) {
    let incoming = req.consume().expect("request body");
    let body = start(out, 200, None);
    {
        let mut input = incoming.stream().expect("body stream");
        let mut output = body.write().expect("body stream");
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = Read::read(&mut input, &mut buf).expect("read body");
            if n == 0 {
                break;
            }
            output.write_all(&buf[..n]).expect("write body");
        }
        output.flush().expect("flush");
    }
    OutgoingBody::finish(body, None).expect("finish");
}

fn discard(req: IncomingRequest, out: ResponseOutparam) {
    let incoming = req.consume().expect("request body");
    let mut n = 0u64;
    {
        let input = incoming.stream().expect("body stream");
        loop {
            match input.blocking_read(64 * 1024) {
                Ok(chunk) => n += chunk.len() as u64,
                Err(StreamError::Closed) => break, // the body's end
                Err(StreamError::LastOperationFailed(e)) => {
                    let text = format!("the request body failed: {}\n", e.to_debug_string());
                    return respond(out, 500, text.as_bytes());
                }
            }
        }
    }
    respond(out, 200, n.to_string().as_bytes());
}

fn bytes(out: ResponseOutparam, n: u64) {
    let body = start(out, 200, Some(n));
    {
        let mut s = body.write().expect("body stream");
        // No larger than the body: a fresh instance per request starts
        // with little memory, and a 64 KiB buffer for 100 bytes would grow
        // it (and then be reset) every time.
        let chunk = vec![b'x'; n.min(64 * 1024) as usize];
        let mut left = n;
        while left > 0 {
            let take = left.min(chunk.len() as u64) as usize;
            s.write_all(&chunk[..take]).expect("write");
            left -= take as u64;
        }
        s.flush().expect("flush");
    }
    OutgoingBody::finish(body, None).expect("finish");
}

fn fetch(out: ResponseOutparam, url: &str) {
    let Some(rest) = url.strip_prefix("http://") else {
        return respond(out, 400, b"only http:// URLs\n");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let req = OutgoingRequest::new(Fields::new());
    req.set_scheme(Some(&Scheme::Http)).expect("scheme");
    req.set_authority(Some(authority)).expect("authority");
    req.set_path_with_query(Some(path)).expect("path");
    let answer = match wasi::http::outgoing_handler::handle(req, None) {
        Err(e) => format!("refused: {e:?}"),
        Ok(fut) => {
            fut.subscribe().block();
            match fut.get() {
                Some(Ok(Ok(resp))) => {
                    let status = resp.status();
                    let body = resp.consume().expect("response body");
                    let mut text = String::new();
                    {
                        let mut s = body.stream().expect("stream");
                        let _ = s.read_to_string(&mut text);
                    }
                    format!("fetched {status}: {text}")
                }
                Some(Ok(Err(e))) => format!("refused: {e:?}"),
                other => format!("failed: {other:?}"),
            }
        }
    };
    respond(out, 200, answer.as_bytes());
}

wasi::http::proxy::export!(Hello);
