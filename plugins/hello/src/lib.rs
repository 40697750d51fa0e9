//! An HTTP/3 hello service for tq-host, written with tq-sdk.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /` | `hello from a tq-host plugin` |
//! | `GET /count` | how many requests this connection has made (per-connection state) |
//! | `POST /echo` | the request body, streamed back as it arrives |
//! | `GET /bytes/N` | N bytes, generated as the client reads (never all in memory) |
//! | `POST /discard` | the request body's length, once all of it has arrived (the benchmarks' upload) |
//! | anything else | 404 |

use std::collections::HashMap;

use tq_sdk::http3::{App, Conn, Request, StreamId};

/// How much of a `/bytes/N` response is generated at a time.
const CHUNK: usize = 16 * 1024;
/// The bytes of every chunk: in the data segment, not filled per call.
static CHUNK_BYTES: [u8; CHUNK] = [b'x'; CHUNK];

#[derive(Default)]
struct Hello {
    requests: u64,
    /// `/bytes/N` responses still being generated: bytes left per stream.
    generating: HashMap<StreamId, u64>,
    /// `/echo` requests in flight.
    echoing: Vec<StreamId>,
    /// `/discard` requests in flight: bytes counted so far.
    discarding: HashMap<StreamId, u64>,
}

impl Hello {
    /// Generates body for `stream` until the host pushes back.
    fn generate(&mut self, conn: &mut Conn, stream: StreamId) {
        while let Some(left) = self.generating.get_mut(&stream) {
            if conn.pending(stream) > 0 {
                return; // resume on `writable`
            }
            let n = (*left).min(CHUNK as u64);
            *left -= n;
            let end = *left == 0;
            if end {
                self.generating.remove(&stream);
            }
            conn.write_body(stream, &CHUNK_BYTES[..n as usize], end);
        }
    }
}

impl App for Hello {
    fn on_request(&mut self, conn: &mut Conn, req: Request) {
        self.requests += 1;
        let text = [("content-type", "text/plain")];
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/") => conn.respond(req.stream, 200, &text, b"hello from a tq-host plugin\n"),
            ("GET", "/count") => {
                let body = format!("request {} on this connection\n", self.requests);
                conn.respond(req.stream, 200, &text, body.as_bytes());
            }
            ("POST", "/echo") => {
                if conn.send_head(req.stream, 200, &[], !req.has_body).is_ok() && req.has_body {
                    self.echoing.push(req.stream);
                }
            }
            ("POST", "/discard") => {
                if req.has_body {
                    self.discarding.insert(req.stream, 0);
                } else {
                    conn.respond(req.stream, 200, &text, b"0");
                }
            }
            ("GET", p) if p.starts_with("/bytes/") => match p["/bytes/".len()..].parse::<u64>() {
                Ok(n) => {
                    let len = n.to_string();
                    if conn
                        .send_head(req.stream, 200, &[("content-length", &len)], n == 0)
                        .is_ok()
                        && n > 0
                    {
                        self.generating.insert(req.stream, n);
                        self.generate(conn, req.stream);
                    }
                }
                Err(_) => conn.respond(req.stream, 400, &text, b"N must be a number\n"),
            },
            _ => conn.respond(req.stream, 404, &text, b"not found\n"),
        }
    }

    fn on_body(&mut self, conn: &mut Conn, stream: StreamId, data: &[u8]) {
        if self.echoing.contains(&stream) {
            conn.write_body(stream, data, false);
        } else if let Some(n) = self.discarding.get_mut(&stream) {
            *n += data.len() as u64;
        }
    }

    fn on_body_end(&mut self, conn: &mut Conn, stream: StreamId) {
        if let Some(i) = self.echoing.iter().position(|s| *s == stream) {
            self.echoing.swap_remove(i);
            conn.write_body(stream, &[], true);
        } else if let Some(n) = self.discarding.remove(&stream) {
            let text = [("content-type", "text/plain")];
            conn.respond(stream, 200, &text, n.to_string().as_bytes());
        }
    }

    fn on_reset(&mut self, _conn: &mut Conn, stream: StreamId, _code: u64) {
        self.generating.remove(&stream);
        self.echoing.retain(|s| *s != stream);
        self.discarding.remove(&stream);
    }

    fn on_writable(&mut self, conn: &mut Conn, stream: StreamId) {
        self.generate(conn, stream);
    }
}

tq_sdk::export_http3_app!(Hello);
