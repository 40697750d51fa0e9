// Shared by the version-a and version-b test plugins, which define VERSION
// and include this file: an HTTP/3 plugin whose every answer says which
// version it is, so reload tests can tell the versions apart. `/hold` is
// never answered (a request that outlives any drain).

use tq_sdk::http3::{App, Conn, Request};

#[derive(Default)]
struct Versioned {
    served: u64,
}

impl App for Versioned {
    fn on_request(&mut self, conn: &mut Conn, req: Request) {
        if req.path == "/hold" {
            return;
        }
        self.served += 1;
        let body = format!("version {VERSION} request {}\n", self.served);
        conn.respond(req.stream, 200, &[("content-type", "text/plain")], body.as_bytes());
    }
}

tq_sdk::export_http3_app!(Versioned);
