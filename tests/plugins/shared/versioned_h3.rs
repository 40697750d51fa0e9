// Shared by the version-a and version-b test plugins, which define VERSION
// and include this file: an HTTP/3 plugin whose every answer says which
// version it is, so reload tests can tell the versions apart. `/hold` is
// never answered (a request that outlives any drain); `POST /echo` answers
// the request body, whole, with the version in `x-version`.

use std::collections::HashMap;

use tq_sdk::http3::{App, Conn, Request, StreamId};

#[derive(Default)]
struct Versioned {
    served: u64,
    echoes: HashMap<StreamId, Vec<u8>>,
}

impl App for Versioned {
    fn on_request(&mut self, conn: &mut Conn, req: Request) {
        if req.path == "/hold" {
            return;
        }
        self.served += 1;
        if req.method == "POST" && req.path == "/echo" {
            if req.has_body {
                self.echoes.insert(req.stream, Vec::new());
            } else {
                conn.respond(req.stream, 200, &[("x-version", VERSION)], b"");
            }
            return;
        }
        let body = format!("version {VERSION} request {}\n", self.served);
        conn.respond(req.stream, 200, &[("content-type", "text/plain")], body.as_bytes());
    }

    fn on_body(&mut self, _conn: &mut Conn, stream: StreamId, data: &[u8]) {
        if let Some(b) = self.echoes.get_mut(&stream) {
            b.extend_from_slice(data);
        }
    }

    fn on_body_end(&mut self, conn: &mut Conn, stream: StreamId) {
        if let Some(b) = self.echoes.remove(&stream) {
            conn.respond(stream, 200, &[("x-version", VERSION)], &b);
        }
    }

    fn on_reset(&mut self, _conn: &mut Conn, stream: StreamId, _code: u64) {
        self.echoes.remove(&stream);
    }
}

tq_sdk::export_http3_app!(Versioned);
