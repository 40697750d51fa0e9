//! HTTP/3 plugins: implement [`App`], export it with
//! [`export_http3_app!`](crate::export_http3_app).

use std::collections::HashMap;

use crate::bindings::tq::plugin::h3_connection as host;
use crate::bindings::tq::plugin::types::{ErrorCode, Header};

pub use crate::bindings::tq::plugin::types::ConnectionInfo;

/// A QUIC stream id: one request and its response.
pub type StreamId = u64;

/// A request's head, with the pseudo-headers picked out.
#[derive(Debug, Clone)]
pub struct Request {
    /// The request's stream; answer on it.
    pub stream: StreamId,
    /// `:method`.
    pub method: String,
    /// `:path` (with the query).
    pub path: String,
    /// `:authority`.
    pub authority: String,
    /// The other fields, names lower-case.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Whether a body follows (through [`App::on_body`]).
    pub has_body: bool,
}

impl Request {
    /// A header's value as text, if present and UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::header_text(&self.headers, name)
    }
}

/// Why the host refused a call.
pub type Error = ErrorCode;

/// An HTTP/3 application. Every method has a default, so implement only what
/// you need. The default `on_request` answers 404.
pub trait App: Default + 'static {
    /// Runs once when tq-host loads or reloads the plugin, before any
    /// connection: an error refuses this version (on a reload the running
    /// one keeps serving). The default accepts.
    fn init() -> Result<(), String> {
        Ok(())
    }

    /// The connection is established.
    fn on_connect(&mut self, _conn: &mut Conn, _info: &ConnectionInfo) {}

    /// A request arrived. Answer now with [`Conn::respond`], or later (after
    /// its body, or a timer).
    fn on_request(&mut self, conn: &mut Conn, req: Request) {
        conn.respond(
            req.stream,
            404,
            &[("content-type", "text/plain")],
            b"not found\n",
        );
    }

    /// Body bytes of a request.
    fn on_body(&mut self, _conn: &mut Conn, _stream: StreamId, _data: &[u8]) {}

    /// A request's trailers.
    fn on_trailers(
        &mut self,
        _conn: &mut Conn,
        _stream: StreamId,
        _trailers: Vec<(String, Vec<u8>)>,
    ) {
    }

    /// A request's body ended.
    fn on_body_end(&mut self, _conn: &mut Conn, _stream: StreamId) {}

    /// The client abandoned a request.
    fn on_reset(&mut self, _conn: &mut Conn, _stream: StreamId, _code: u64) {}

    /// A stream drained: what [`Conn::write_body`] buffered has been sent
    /// as far as possible before this is called.
    fn on_writable(&mut self, _conn: &mut Conn, _stream: StreamId) {}

    /// The deadline from [`App::next_deadline`] passed.
    fn on_timer(&mut self, _conn: &mut Conn) {}

    /// The connection is going away.
    fn on_goaway(&mut self, _conn: &mut Conn) {}

    /// When to be woken with `on_timer`, in [`Conn::now_ms`] milliseconds.
    fn next_deadline(&self) -> Option<u64> {
        None
    }

    /// The connection has closed.
    fn on_close(&mut self) {}
}

/// How far [`send_chunks`] got.
enum Sent {
    /// Everything, with the end if asked for.
    All,
    /// The first so many bytes; the host takes no more for now.
    Upto(usize),
    /// The stream is gone (reset, closed): nothing more will be taken.
    Gone,
}

/// Sends `data` (then the end, if `end`) in chunks the host takes whole or
/// not at all, until it pushes back.
fn send_chunks(stream: StreamId, data: &[u8], end: bool) -> Sent {
    /// This size keeps each chunk within the host's per-frame budget.
    const CHUNK: usize = 64 * 1024;
    let mut sent = 0;
    loop {
        let rest = &data[sent..];
        let take = rest.len().min(CHUNK);
        let last = take == rest.len();
        if take == 0 && !end {
            return Sent::All;
        }
        match host::send_body(stream, &rest[..take], last && end) {
            Ok(n) if n as usize == take => {
                sent += take;
                if last {
                    return Sent::All;
                }
            }
            Ok(_) | Err(ErrorCode::Blocked) => return Sent::Upto(sent), // wait for `writable`
            Err(_) => return Sent::Gone,
        }
    }
}

/// The connection: send responses through it.
#[derive(Default)]
pub struct Conn {
    /// Body bytes per stream not yet accepted by the host, with `end`.
    pending: HashMap<StreamId, (Vec<u8>, bool)>,
}

fn to_headers(pairs: &[(&str, &str)]) -> Vec<Header> {
    pairs
        .iter()
        .map(|(n, v)| Header {
            name: n.to_ascii_lowercase(),
            value: v.as_bytes().to_vec(),
        })
        .collect()
}

impl Conn {
    /// Sends a whole response: status, headers and body.
    pub fn respond(
        &mut self,
        stream: StreamId,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) {
        if self
            .send_head(stream, status, headers, body.is_empty())
            .is_ok()
            && !body.is_empty()
        {
            self.write_body(stream, body, true);
        }
    }

    /// Sends a response head (call several times for 1xx heads). `end`
    /// ends the response.
    ///
    /// # Errors
    /// The host's refusal.
    pub fn send_head(
        &mut self,
        stream: StreamId,
        status: u16,
        headers: &[(&str, &str)],
        end: bool,
    ) -> Result<(), Error> {
        let mut h = Vec::with_capacity(headers.len() + 1);
        h.push(Header {
            name: ":status".into(),
            value: status.to_string().into_bytes(),
        });
        h.extend(to_headers(headers));
        host::send_headers(stream, &h, end)
    }

    /// Queues body bytes; `end` ends the response after them. What the
    /// client cannot take yet is kept here and sent as the stream drains.
    pub fn write_body(&mut self, stream: StreamId, data: &[u8], end: bool) {
        if let Some(entry) = self.pending.get_mut(&stream) {
            entry.0.extend_from_slice(data);
            entry.1 |= end;
            self.flush(stream);
            return;
        }
        // Nothing queued before (the usual case): straight from `data`,
        // and only what the host does not take yet is copied.
        if let Sent::Upto(n) = send_chunks(stream, data, end) {
            self.pending.insert(stream, (data[n..].to_vec(), end));
        }
    }

    /// Bytes queued by [`write_body`](Self::write_body) and not yet sent.
    pub fn pending(&self, stream: StreamId) -> usize {
        self.pending.get(&stream).map_or(0, |p| p.0.len())
    }

    /// Sends trailers, which end the response.
    ///
    /// # Errors
    /// The host's refusal.
    pub fn send_trailers(
        &mut self,
        stream: StreamId,
        trailers: &[(&str, &str)],
    ) -> Result<(), Error> {
        host::send_trailers(stream, &to_headers(trailers))
    }

    /// Abandons a response with an HTTP/3 error code.
    pub fn reset(&mut self, stream: StreamId, code: u64) {
        self.pending.remove(&stream);
        host::reset_stream(stream, code);
    }

    /// Asks the client to stop sending a request body.
    pub fn stop_sending(&mut self, stream: StreamId, code: u64) {
        host::stop_sending(stream, code);
    }

    /// Closes the connection.
    pub fn close(&mut self, code: u64, reason: &str) {
        host::close(code, reason);
    }

    /// Milliseconds since the connection was established.
    pub fn now_ms(&self) -> u64 {
        host::now_ms()
    }

    /// Sends what the host accepts of the queued body; true when nothing is
    /// left.
    fn flush(&mut self, stream: StreamId) -> bool {
        let Some((buf, end)) = self.pending.get_mut(&stream) else {
            return true;
        };
        match send_chunks(stream, buf, *end) {
            Sent::Upto(n) => {
                buf.drain(..n);
                false
            }
            Sent::All | Sent::Gone => {
                self.pending.remove(&stream);
                true
            }
        }
    }

    #[doc(hidden)]
    pub fn __on_writable(&mut self, stream: StreamId) {
        self.flush(stream);
    }

    #[doc(hidden)]
    pub fn __forget(&mut self, stream: StreamId) {
        self.pending.remove(&stream);
    }
}

#[doc(hidden)]
pub fn __request(head: crate::bindings::tq::plugin::h3_types::RequestHead) -> Request {
    let mut req = Request {
        stream: head.stream,
        method: String::new(),
        path: String::new(),
        authority: String::new(),
        headers: Vec::with_capacity(head.headers.len()),
        has_body: !head.end,
    };
    for h in head.headers {
        // The value's own buffer when it is UTF-8 (it nearly always is).
        let text = |v: Vec<u8>| {
            String::from_utf8(v)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
        };
        match h.name.as_str() {
            ":method" => req.method = text(h.value),
            ":path" => req.path = text(h.value),
            ":authority" => req.authority = text(h.value),
            n if n.starts_with(':') => {}
            _ => req.headers.push((h.name, h.value)),
        }
    }
    req
}

#[doc(hidden)]
pub fn __pairs(h: Vec<Header>) -> Vec<(String, Vec<u8>)> {
    h.into_iter().map(|h| (h.name, h.value)).collect()
}

/// Exports an [`App`] type as the plugin's HTTP/3 application.
///
/// ```ignore
/// tq_sdk::export_http3_app!(MyApp);
/// ```
#[macro_export]
macro_rules! export_http3_app {
    ($app:ty) => {
        #[doc(hidden)]
        mod __tq_export {
            use super::*;
            use $crate::bindings::exports::tq::plugin::h3_handler::Guest;
            use $crate::bindings::tq::plugin::h3_types::Event;
            use $crate::bindings::tq::plugin::types::{ConnectionInfo, Wait};
            use $crate::http3::App as _;

            ::std::thread_local! {
                static STATE: ::std::cell::RefCell<($app, $crate::http3::Conn)> =
                    ::std::cell::RefCell::new((<$app>::default(), $crate::http3::Conn::default()));
            }

            pub struct Export;

            impl Guest for Export {
                fn on_established(info: ConnectionInfo) {
                    STATE.with_borrow_mut(|(app, conn)| app.on_connect(conn, &info));
                }

                fn on_event(event: Event) {
                    STATE.with_borrow_mut(|(app, conn)| match event {
                        Event::Request(head) => app.on_request(conn, $crate::http3::__request(head)),
                        Event::Body((stream, data)) => app.on_body(conn, stream, &data),
                        Event::Trailers((stream, t)) => app.on_trailers(conn, stream, $crate::http3::__pairs(t)),
                        Event::Finished(stream) => app.on_body_end(conn, stream),
                        Event::Reset((stream, code)) => {
                            conn.__forget(stream);
                            app.on_reset(conn, stream, code)
                        }
                        Event::Writable(stream) => {
                            conn.__on_writable(stream);
                            app.on_writable(conn, stream)
                        }
                        Event::Timer => app.on_timer(conn),
                        Event::Goaway => app.on_goaway(conn),
                    });
                }

                fn wait_for_data() -> Wait {
                    STATE.with_borrow(|(app, _)| Wait {
                        deadline_ms: app.next_deadline(),
                    })
                }

                fn on_close() {
                    STATE.with_borrow_mut(|(app, _)| app.on_close());
                }
            }

            impl $crate::init_bindings::exports::tq::plugin::init::Guest for Export {
                fn init() -> ::std::result::Result<(), ::std::string::String> {
                    <$app as $crate::http3::App>::init()
                }
            }

            $crate::bindings::__export_http3_app_raw!(Export with_types_in $crate::bindings);
            $crate::init_bindings::__export_init_raw!(Export with_types_in $crate::init_bindings);
        }
    };
}
