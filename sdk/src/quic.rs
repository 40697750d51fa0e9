//! Raw QUIC plugins: implement [`App`], export it with
//! [`export_quic_app!`](crate::export_quic_app).
//!
//! The plugin is the whole application of a QUIC connection. The host reads
//! streams and datagrams for it and delivers them in order
//! ([`App::on_stream_data`], [`App::on_datagram`]); the plugin writes with
//! [`Conn::write`], which keeps what the host cannot take yet and sends it as
//! the stream drains.
//!
//! ```ignore
//! use tq_sdk::quic::{App, Conn, StreamId};
//!
//! /// Answers each stream with the number of bytes the client sent on it.
//! #[derive(Default)]
//! struct Count {
//!     seen: std::collections::HashMap<StreamId, usize>,
//! }
//!
//! impl App for Count {
//!     fn on_stream_data(&mut self, conn: &mut Conn, stream: StreamId, data: &[u8], fin: bool) {
//!         *self.seen.entry(stream).or_default() += data.len();
//!         if fin {
//!             let n = self.seen.remove(&stream).unwrap_or(0);
//!             conn.write(stream, format!("{n}\n").as_bytes(), true);
//!         }
//!     }
//! }
//!
//! tq_sdk::export_quic_app!(Count);
//! ```

use std::collections::HashMap;

use crate::bindings::tq::plugin::types::ErrorCode;
use crate::quic_bindings::tq::plugin::quic_connection as host;

pub use crate::bindings::tq::plugin::types::ConnectionInfo;
pub use crate::quic_bindings::tq::plugin::quic_types::TransportStats;

/// A QUIC stream id. Client-opened bidirectional streams are 0, 4, 8, ...;
/// the plugin opens its own with [`Conn::open_bidi`] / [`Conn::open_uni`].
pub type StreamId = u64;

/// Why the host refused a call.
pub type Error = ErrorCode;

/// A raw QUIC application. Every method has a default, so implement only
/// what you need.
pub trait App: Default + 'static {
    /// Runs once when tq-host loads or reloads the plugin, before any
    /// connection: an error refuses this version (on a reload the running
    /// one keeps serving). The default accepts.
    fn init() -> Result<(), String> {
        Ok(())
    }

    /// Opt in to moving live connections to a new version on a reload:
    /// return this connection's state as bytes ([`App::restore`] of the new
    /// version reads them). `None` (the default) keeps the connection on
    /// its version. Asked between events, never while [`Conn::write`] still
    /// holds bytes.
    fn save(&self) -> Option<Vec<u8>> {
        None
    }

    /// Rebuilds a connection's state from what [`App::save`] of the old
    /// version returned; an error keeps the connection on the old version.
    fn restore(_state: &[u8]) -> Result<Self, String> {
        Err("this plugin does not restore state".into())
    }

    /// The connection is established.
    fn on_connect(&mut self, _conn: &mut Conn, _info: &ConnectionInfo) {}

    /// Bytes arrived on a stream, in order; `fin` when the client finished
    /// its side (`data` may then be empty).
    fn on_stream_data(&mut self, _conn: &mut Conn, _stream: StreamId, _data: &[u8], _fin: bool) {}

    /// The client abandoned its side of a stream with an error code.
    fn on_stream_reset(&mut self, _conn: &mut Conn, _stream: StreamId, _code: u64) {}

    /// The client asked us to stop sending on a stream; what was queued on it
    /// is dropped.
    fn on_stream_stopped(&mut self, _conn: &mut Conn, _stream: StreamId, _code: u64) {}

    /// A datagram arrived.
    fn on_datagram(&mut self, _conn: &mut Conn, _data: &[u8]) {}

    /// A stream drained: what [`Conn::write`] kept has been sent as far as
    /// possible before this is called.
    fn on_writable(&mut self, _conn: &mut Conn, _stream: StreamId) {}

    /// The deadline from [`App::next_deadline`] passed.
    fn on_timer(&mut self, _conn: &mut Conn) {}

    /// The server is shutting down. The default closes the connection with
    /// code 0.
    fn on_shutdown(&mut self, conn: &mut Conn) {
        conn.close(0, "server shutting down");
    }

    /// When to be woken with `on_timer`, in [`Conn::now_ms`] milliseconds.
    fn next_deadline(&self) -> Option<u64> {
        None
    }

    /// The connection has closed.
    fn on_close(&mut self) {}
}

/// The connection: write streams and datagrams through it.
#[derive(Default)]
pub struct Conn {
    /// Bytes per stream the host has not accepted yet, and whether `fin`
    /// follows them.
    pending: HashMap<StreamId, (Vec<u8>, bool)>,
    next_bidi: u64,
    next_uni: u64,
}

impl Conn {
    /// Writes bytes on a stream; `fin` finishes our side after them. What
    /// the host cannot take yet is kept and sent as the stream drains
    /// (see [`pending`](Self::pending)). Writing on a stream that is gone
    /// (reset, stopped, finished) drops the bytes.
    pub fn write(&mut self, stream: StreamId, data: &[u8], fin: bool) {
        if let Some((buf, f)) = self.pending.get_mut(&stream) {
            buf.extend_from_slice(data);
            *f |= fin;
            return;
        }
        match host::stream_send(stream, data, fin) {
            Ok(n) if n as usize == data.len() => {}
            Ok(n) => {
                self.pending
                    .insert(stream, (data[n as usize..].to_vec(), fin));
            }
            Err(_) => {}
        }
    }

    /// Like [`write`](Self::write), but without buffering: returns how many
    /// bytes the host accepted (0 when the stream is full; then wait for
    /// [`App::on_writable`]).
    ///
    /// # Errors
    /// The host's refusal: no such stream, or the connection is closing.
    pub fn try_write(&mut self, stream: StreamId, data: &[u8], fin: bool) -> Result<usize, Error> {
        host::stream_send(stream, data, fin).map(|n| n as usize)
    }

    /// Bytes kept by [`write`](Self::write) and not yet taken by the host.
    pub fn pending(&self, stream: StreamId) -> usize {
        self.pending.get(&stream).map_or(0, |p| p.0.len())
    }

    /// A new server-opened bidirectional stream id (1, 5, 9, ...); it opens
    /// with the first write.
    pub fn open_bidi(&mut self) -> StreamId {
        let id = self.next_bidi * 4 + 1;
        self.next_bidi += 1;
        id
    }

    /// A new server-opened unidirectional stream id (3, 7, 11, ...).
    pub fn open_uni(&mut self) -> StreamId {
        let id = self.next_uni * 4 + 3;
        self.next_uni += 1;
        id
    }

    /// Abandons our side of a stream with an error code (RESET_STREAM).
    pub fn reset(&mut self, stream: StreamId, code: u64) {
        self.pending.remove(&stream);
        let _ = host::reset_stream(stream, code);
    }

    /// Asks the client to stop sending on a stream (STOP_SENDING).
    pub fn stop_sending(&mut self, stream: StreamId, code: u64) {
        let _ = host::stop_sending(stream, code);
    }

    /// Sends a datagram (the operator must have enabled datagrams).
    ///
    /// # Errors
    /// `invalid-argument` when datagrams are off or it is too large,
    /// `blocked` when the send queue is full.
    pub fn send_datagram(&mut self, data: &[u8]) -> Result<(), Error> {
        host::send_datagram(data)
    }

    /// Closes the connection with an application error code.
    pub fn close(&mut self, code: u64, reason: &str) {
        host::close(code, reason);
    }

    /// Transport statistics (RTT, congestion window, bytes, packets).
    pub fn stats(&self) -> TransportStats {
        host::stats()
    }

    /// Milliseconds since the connection was established.
    pub fn now_ms(&self) -> u64 {
        host::now_ms()
    }

    /// Sends what the host takes of a stream's kept bytes.
    fn flush(&mut self, stream: StreamId) {
        let Some((buf, fin)) = self.pending.get_mut(&stream) else {
            return;
        };
        match host::stream_send(stream, buf, *fin) {
            Ok(n) if n as usize == buf.len() => {
                self.pending.remove(&stream);
            }
            Ok(n) => {
                buf.drain(..n as usize);
            }
            Err(_) => {
                self.pending.remove(&stream);
            }
        }
    }

    #[doc(hidden)]
    pub fn __on_writable(&mut self, stream: StreamId) {
        self.flush(stream);
    }

    /// The connection's own state for a move: stream-id counters. None
    /// while bytes are held back.
    #[doc(hidden)]
    pub fn __save(&self) -> Option<[u8; 16]> {
        if !self.pending.is_empty() {
            return None;
        }
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.next_bidi.to_le_bytes());
        out[8..].copy_from_slice(&self.next_uni.to_le_bytes());
        Some(out)
    }

    #[doc(hidden)]
    pub fn __restore(state: &[u8]) -> Option<Self> {
        let bidi = state.get(..8)?.try_into().ok()?;
        let uni = state.get(8..16)?.try_into().ok()?;
        Some(Self {
            pending: HashMap::new(),
            next_bidi: u64::from_le_bytes(bidi),
            next_uni: u64::from_le_bytes(uni),
        })
    }

    #[doc(hidden)]
    pub fn __forget(&mut self, stream: StreamId) {
        self.pending.remove(&stream);
    }
}

/// Exports an [`App`] type as the plugin's raw QUIC application.
///
/// ```ignore
/// tq_sdk::export_quic_app!(MyApp);
/// ```
#[macro_export]
macro_rules! export_quic_app {
    ($app:ty) => {
        #[doc(hidden)]
        mod __tq_export_quic {
            use super::*;
            use $crate::bindings::tq::plugin::types::{ConnectionInfo, Wait};
            use $crate::quic::App as _;
            use $crate::quic_bindings::exports::tq::plugin::quic_handler::Guest;
            use $crate::quic_bindings::tq::plugin::quic_types::{Event, Incoming};

            ::std::thread_local! {
                static STATE: ::std::cell::RefCell<($app, $crate::quic::Conn)> =
                    ::std::cell::RefCell::new((<$app>::default(), $crate::quic::Conn::default()));
            }

            pub struct Export;

            impl Guest for Export {
                fn on_established(info: ConnectionInfo) {
                    STATE.with_borrow_mut(|(app, conn)| app.on_connect(conn, &info));
                }

                fn on_read(incoming: ::std::vec::Vec<Incoming>) {
                    STATE.with_borrow_mut(|(app, conn)| {
                        for i in incoming {
                            match i {
                                Incoming::StreamData(d) => {
                                    app.on_stream_data(conn, d.stream, &d.data, d.fin)
                                }
                                Incoming::StreamReset((stream, code)) => {
                                    app.on_stream_reset(conn, stream, code)
                                }
                                Incoming::Datagram(d) => app.on_datagram(conn, &d),
                            }
                        }
                    });
                }

                fn on_event(event: Event) {
                    STATE.with_borrow_mut(|(app, conn)| match event {
                        Event::Writable(stream) => {
                            conn.__on_writable(stream);
                            app.on_writable(conn, stream)
                        }
                        Event::StreamStopped((stream, code)) => {
                            conn.__forget(stream);
                            app.on_stream_stopped(conn, stream, code)
                        }
                        Event::Timer => app.on_timer(conn),
                        Event::Shutdown => app.on_shutdown(conn),
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
                    <$app as $crate::quic::App>::init()
                }
            }

            impl $crate::migrate_bindings::exports::tq::plugin::migrate::Guest for Export {
                fn export_state() -> ::std::option::Option<::std::vec::Vec<u8>> {
                    STATE.with_borrow(|(app, conn)| {
                        let head = conn.__save()?;
                        let body = app.save()?;
                        let mut out = head.to_vec();
                        out.extend_from_slice(&body);
                        Some(out)
                    })
                }

                fn import_state(state: ::std::vec::Vec<u8>) -> ::std::result::Result<(), ::std::string::String> {
                    let conn = $crate::quic::Conn::__restore(&state)
                        .ok_or_else(|| ::std::string::String::from("state too short"))?;
                    let app = <$app as $crate::quic::App>::restore(&state[16..])?;
                    STATE.with_borrow_mut(|s| *s = (app, conn));
                    Ok(())
                }
            }

            $crate::quic_bindings::__export_quic_app_raw!(Export with_types_in $crate::quic_bindings);
            $crate::init_bindings::__export_init_raw!(Export with_types_in $crate::init_bindings);
            $crate::migrate_bindings::__export_migrate_raw!(Export with_types_in $crate::migrate_bindings);
        }
    };
}
