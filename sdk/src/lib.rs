//! # tq-sdk: tq-host plugins in a few lines of Rust
//!
//! A plugin is a WebAssembly component that tq-host loads with
//! `tq-host --plugin app.wasm`. This crate hides the raw bindings: implement
//! a trait, export it with a macro, build for `wasm32-wasip2`.
//!
//! ## An HTTP/3 plugin
//!
//! One value of your type lives per connection, so fields keep state across
//! the requests of a connection.
//!
//! ```ignore
//! use tq_sdk::http3::{App, Conn, Request};
//!
//! #[derive(Default)]
//! struct Hello {
//!     served: u64,
//! }
//!
//! impl App for Hello {
//!     fn on_request(&mut self, conn: &mut Conn, req: Request) {
//!         self.served += 1;
//!         let body = format!("hello #{} from {}\n", self.served, req.path);
//!         conn.respond(req.stream, 200, &[("content-type", "text/plain")], body.as_bytes());
//!     }
//! }
//!
//! tq_sdk::export_http3_app!(Hello);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (the crate is
//! a `cdylib`), and serve `target/wasm32-wasip2/release/<name>.wasm`.
//!
//! Request bodies arrive through [`http3::App::on_body`]; responses can be
//! streamed with [`http3::Conn::write_body`], which buffers what the client
//! is not ready for and sends it as the stream drains, so a plugin never has
//! to handle back-pressure by hand (it may, through `on_writable`).
//!
//! ## A standard wasi:http handler
//!
//! [`http::Handler`] compiles to the standard `wasi:http/proxy` world, so
//! the same component runs on tq-host (over HTTP/3) and on any other
//! wasi:http host:
//!
//! ```ignore
//! use tq_sdk::http::{Handler, Request, Response};
//!
//! struct Hello;
//!
//! impl Handler for Hello {
//!     fn handle(req: Request) -> Response {
//!         Response::text(200, &format!("hello from {}\n", req.path))
//!     }
//! }
//!
//! tq_sdk::export_http_handler!(Hello);
//! ```
//!
//! ## A raw QUIC plugin
//!
//! The plugin is the connection's application: it sees stream bytes and
//! datagrams as they arrive and writes its own. An echo server:
//!
//! ```ignore
//! use tq_sdk::quic::{App, Conn, StreamId};
//!
//! #[derive(Default)]
//! struct Echo;
//!
//! impl App for Echo {
//!     fn on_stream_data(&mut self, conn: &mut Conn, stream: StreamId, data: &[u8], fin: bool) {
//!         conn.write(stream, data, fin);
//!     }
//! }
//!
//! tq_sdk::export_quic_app!(Echo);
//! ```
//!
//! Serve it with `tq-host --plugin echo.wasm --alpn my-proto`: clients must
//! offer that ALPN. [`quic::Conn::write`] buffers what the host cannot take
//! yet, and the host reads no more of a stream while its writes are held
//! back, so an echo never buffers more than a chunk.

// Lets generated code name this crate the same way inside and outside it.
extern crate self as tq_sdk;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "http3-app",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_http3_app_raw",
        default_bindings_module: "tq_sdk::bindings",
    });
}

// One module per world: each export macro carries its own world's exports,
// so a plugin exports only the world it names.
#[doc(hidden)]
pub mod quic_bindings {
    wit_bindgen::generate!({
        world: "quic-app",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_quic_app_raw",
        default_bindings_module: "tq_sdk::quic_bindings",
        with: { "tq:plugin/types@0.1.0": tq_sdk::bindings::tq::plugin::types },
    });
}

// The optional exports, each with its own export macro.
#[doc(hidden)]
pub mod init_bindings {
    wit_bindgen::generate!({
        world: "with-init",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_init_raw",
        default_bindings_module: "tq_sdk::init_bindings",
    });
}

#[doc(hidden)]
pub mod migrate_bindings {
    wit_bindgen::generate!({
        world: "with-migrate",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_migrate_raw",
        default_bindings_module: "tq_sdk::migrate_bindings",
    });
}

pub mod http;
pub mod http3;
pub mod quic;

#[doc(hidden)]
pub use wasi as __wasi;

/// A header's value as text, if present and UTF-8 (names match in any case).
fn header_text<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}
