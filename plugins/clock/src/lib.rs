//! Per-connection state and timers, without ever blocking: the plugin tells
//! the host its next deadline and the host wakes it.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /after/MS` | `waited MS ms` once MS milliseconds have passed (other requests are served meanwhile) |
//! | `GET /visits` | how many requests this connection has made, and how many are still waiting |
//! | anything else | 404 |

use tq_sdk::http3::{App, Conn, Request, StreamId};

#[derive(Default)]
struct Clock {
    visits: u64,
    /// Responses due at a connection time (ms), with what they waited.
    due: Vec<(u64, StreamId, u64)>,
}

impl App for Clock {
    fn on_request(&mut self, conn: &mut Conn, req: Request) {
        self.visits += 1;
        if let Some(ms) = req.path.strip_prefix("/after/") {
            match ms.parse::<u64>() {
                Ok(ms) if ms <= 60_000 => self.due.push((conn.now_ms() + ms, req.stream, ms)),
                _ => conn.respond(req.stream, 400, &[], b"MS must be a number up to 60000\n"),
            }
            return;
        }
        match req.path.as_str() {
            "/visits" => {
                let body = format!("{} requests, {} waiting\n", self.visits, self.due.len());
                conn.respond(
                    req.stream,
                    200,
                    &[("content-type", "text/plain")],
                    body.as_bytes(),
                );
            }
            _ => conn.respond(req.stream, 404, &[], b"not found\n"),
        }
    }

    fn on_timer(&mut self, conn: &mut Conn) {
        let now = conn.now_ms();
        let (ready, waiting): (Vec<_>, Vec<_>) =
            self.due.drain(..).partition(|(at, _, _)| *at <= now);
        self.due = waiting;
        for (_, stream, ms) in ready {
            let body = format!("waited {ms} ms\n");
            conn.respond(
                stream,
                200,
                &[("content-type", "text/plain")],
                body.as_bytes(),
            );
        }
    }

    fn on_reset(&mut self, _conn: &mut Conn, stream: StreamId, _code: u64) {
        self.due.retain(|(_, s, _)| *s != stream);
    }

    fn next_deadline(&self) -> Option<u64> {
        self.due.iter().map(|(at, _, _)| *at).min()
    }
}

tq_sdk::export_http3_app!(Clock);
