//! A WASI 0.3 `wasi:http/service` component (the async world: `handle` is
//! an `async func`, bodies are `stream<u8>`), written against the upstream
//! bindings (the `wasip3` crate): it runs unchanged on any WASI 0.3 host,
//! and on tq-host over HTTP/3.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /` | `hello from a WASI 0.3 component` |
//! | `POST /echo` | the request body, copied through the guest as it arrives |
//! | `POST /forward` | the request body, its stream handed straight to the response |
//! | `GET /bytes/N` | N bytes, written as the client reads |
//! | `GET /slow` | `waited`, after a 50 ms sleep on the WASI 0.3 clock (other requests go on meanwhile) |
//! | `GET /panic` | panics: the host answers 500 for this request only |

use wasip3::http::types::{ErrorCode, Fields, Method, Request, Response};
use wasip3::wit_bindgen::StreamWriter;
use wasip3::{wit_bindgen, wit_future, wit_stream};

wasip3::http::service::export!(Hello);

struct Hello;

impl wasip3::exports::http::handler::Guest for Hello {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let path = request.get_path_with_query().unwrap_or_default();
        match (request.get_method(), path.as_str()) {
            (Method::Get, "/") => Ok(text(200, "hello from a WASI 0.3 component\n")),
            (Method::Post, "/echo") => Ok(echo(request)),
            (Method::Post, "/forward") => Ok(forward(request)),
            (Method::Get, p) if p.starts_with("/bytes/") => match p[7..].parse::<u64>() {
                Ok(n) => Ok(bytes(n)),
                Err(_) => Ok(text(400, "N must be a number\n")),
            },
            (Method::Get, "/slow") => {
                wasip3::clocks::monotonic_clock::wait_for(50_000_000).await;
                Ok(text(200, "waited\n"))
            }
            (Method::Get, "/panic") => panic!("this component panics on purpose"),
            _ => Ok(text(404, "not found\n")),
        }
    }
}

/// A response whose body `fill` writes after the head has gone out.
fn streaming<F>(status: u16, len: Option<u64>, fill: impl FnOnce(StreamWriter<u8>) -> F) -> Response
where
    F: std::future::Future<Output = ()> + 'static,
{
    let mut fields = vec![("content-type".to_string(), b"text/plain".to_vec())];
    if let Some(n) = len {
        fields.push(("content-length".to_string(), n.to_string().into_bytes()));
    }
    let headers = Fields::from_list(&fields).expect("valid fields");
    let (tx, rx) = wit_stream::new();
    // No trailers: the future resolves to `Ok(None)` when dropped.
    let (_trailers, trailers_rx) = wit_future::new(|| Ok(None));
    let (response, _sent) = Response::new(headers, Some(rx), trailers_rx);
    response.set_status_code(status).expect("valid status");
    wit_bindgen::spawn_local(fill(tx));
    response
}

fn text(status: u16, body: &'static str) -> Response {
    streaming(status, Some(body.len() as u64), move |mut tx| async move {
        tx.write_all(body.as_bytes().to_vec()).await;
    })
}

/// Reads the request body chunk by chunk and writes each chunk back.
fn echo(request: Request) -> Response {
    let (_done, done_rx) = wit_future::new(|| Ok(()));
    let (mut body, _trailers) = Request::consume_body(request, done_rx);
    streaming(200, None, move |mut tx| async move {
        let mut buf = Vec::with_capacity(64 * 1024);
        loop {
            let (status, chunk) = body.read(buf).await;
            if chunk.is_empty() {
                if matches!(status, wit_bindgen::StreamResult::Complete(_)) {
                    buf = chunk;
                    continue;
                }
                // The client's body ended (or was dropped).
                break;
            }
            let left = tx.write_all(chunk).await;
            if !left.is_empty() {
                break; // the client stopped reading
            }
            buf = Vec::with_capacity(64 * 1024);
        }
    })
}

/// Hands the request body's stream to the response as it is: the host
/// moves the bytes without the guest copying them.
fn forward(request: Request) -> Response {
    let (_done, done_rx) = wit_future::new(|| Ok(()));
    let (body, trailers) = Request::consume_body(request, done_rx);
    let (response, _sent) = Response::new(Fields::new(), Some(body), trailers);
    response
}

fn bytes(n: u64) -> Response {
    streaming(200, Some(n), move |mut tx| async move {
        let mut left = n;
        while left > 0 {
            let take = left.min(64 * 1024) as usize;
            if !tx.write_all(vec![b'x'; take]).await.is_empty() {
                break;
            }
            left -= take as u64;
        }
    })
}
