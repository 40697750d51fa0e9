//! The built-in HTTP/3 site served when no plugin is given: a welcome page,
//! and two routes that make the server useful for trying clients and for
//! benchmarks.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /` | a short HTML page |
//! | `POST /echo` (or `PUT`) | the request body, streamed back as it arrives |
//! | `GET /bytes/N` | `N` bytes (up to 16 GiB), streamed in 64 KiB chunks |
//! | `POST /discard` | the request body's length in decimal, once all of it has arrived |
//! | anything else | 404 |

use bytes::Bytes;

use crate::http3::{RequestBody, RequestHandler, ResponseBody};

const PAGE: &str = "<!doctype html>
<html><head><meta charset=\"utf-8\"><title>tq-host</title></head>
<body><h1>tq-host is running</h1>
<p>This page came over HTTP/3. Try <code>POST /echo</code> or <code>GET /bytes/1048576</code>.</p>
</body></html>
";

/// Largest `/bytes/N` the page serves.
const MAX_BYTES: u64 = 16 << 30;
const CHUNK: usize = 64 * 1024;
/// The bytes of a short `/bytes/N` answer, never copied.
static XS: [u8; CHUNK] = [b'x'; CHUNK];

/// The built-in site.
#[derive(Debug, Default, Clone)]
pub struct WelcomePage;

fn status(code: u16, body: impl Into<ResponseBody>) -> http::Response<ResponseBody> {
    let mut r = http::Response::new(body.into());
    *r.status_mut() =
        http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    r
}

impl RequestHandler for WelcomePage {
    async fn handle(&self, req: http::Request<RequestBody>) -> http::Response<ResponseBody> {
        // HEAD is GET without the body (RFC 9110 §9.3.2): same status and
        // headers, Content-Length included.
        if req.method() == http::Method::HEAD {
            let (mut parts, body) = req.into_parts();
            parts.method = http::Method::GET;
            let resp = self.route(http::Request::from_parts(parts, body)).await;
            let (parts, _) = resp.into_parts();
            return http::Response::from_parts(parts, ResponseBody::Empty);
        }
        self.route(req).await
    }
}

impl WelcomePage {
    async fn route(&self, req: http::Request<RequestBody>) -> http::Response<ResponseBody> {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        match (method.as_str(), path.as_str()) {
            ("GET", "/") => {
                let mut r = status(200, PAGE);
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/html; charset=utf-8"),
                );
                r
            }
            ("POST" | "PUT", "/echo") => {
                let (writer, body) = ResponseBody::channel(8);
                let mut req_body = req.into_body();
                // Owned by the response: it ends when the body is done or the
                // client goes away (the writer's channel closes).
                tokio::spawn(async move {
                    while let Some(chunk) = req_body.chunk().await {
                        match chunk {
                            Ok(c) => {
                                if writer.write(c).await.is_err() {
                                    return;
                                }
                            }
                            Err(_) => return,
                        }
                    }
                });
                status(200, body)
            }
            ("POST" | "PUT", "/discard") => {
                let mut req_body = req.into_body();
                let mut n = 0u64;
                while let Some(chunk) = req_body.chunk().await {
                    match chunk {
                        Ok(c) => n += c.len() as u64,
                        Err(e) => return status(400, format!("the request body failed: {e}\n")),
                    }
                }
                status(200, n.to_string())
            }
            ("GET", p) if p.starts_with("/bytes/") => match p["/bytes/".len()..].parse::<u64>() {
                // One chunk or less: the whole body at once, no task.
                Ok(n) if n <= CHUNK as u64 => {
                    let mut r = status(200, Bytes::from_static(&XS[..n as usize]));
                    r.headers_mut()
                        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(n));
                    r
                }
                Ok(n) if n <= MAX_BYTES => {
                    let (writer, body) = ResponseBody::channel(4);
                    tokio::spawn(async move {
                        let block = Bytes::from(vec![b'x'; CHUNK]);
                        let mut left = n;
                        while left > 0 {
                            let take = left.min(CHUNK as u64) as usize;
                            if writer.write(block.slice(..take)).await.is_err() {
                                return;
                            }
                            left -= take as u64;
                        }
                    });
                    let mut r = status(200, body);
                    r.headers_mut()
                        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(n));
                    r
                }
                _ => status(400, format!("N must be a number up to {MAX_BYTES}\n")),
            },
            _ => status(404, "not found\n"),
        }
    }
}
