//! HTTP/3 over [`ApplicationOverQuic`](crate::quic::ApplicationOverQuic).
//!
//! [`H3Driver`] runs `quiche::h3` on a connection, in the server or the client
//! role, and talks to the application through an [`H3Controller`] (events
//! and commands) and per-stream bounded channels ([`BodyReceiver`],
//! [`OutboundSender`]). On top sit one HTTP front-end — request heads to
//! `http::Request` ([`request_from_head`]), bodies as `http_body::Body`
//! ([`RequestBody`]), one response path ([`send_response`]) and one
//! connection loop ([`serve_requests`]) — which both the native handler API
//! ([`RequestHandler`], [`serve_connection`]) and the plugin runtime's
//! wasi:http world use, and a small client ([`H3Client`]). This layer knows
//! nothing about WebAssembly.
//!
//! # Example: serve a handler
//!
//! ```no_run
//! # async fn demo(params: tq_host::quic::ConnectionParams) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use tq_host::http3::{serve_connection, Http3Settings, RequestBody, RequestHandler, ResponseBody, ServerH3Driver};
//! use tq_host::metrics::DefaultMetrics;
//! use tq_host::quic;
//!
//! struct Hello;
//! impl RequestHandler for Hello {
//!     async fn handle(&self, _req: http::Request<RequestBody>) -> http::Response<ResponseBody> {
//!         http::Response::new("hello\n".into())
//!     }
//! }
//!
//! let socket = tokio::net::UdpSocket::bind("127.0.0.1:4433").await?;
//! let mut listener = quic::listen([socket], params, DefaultMetrics::default())?;
//! let handler = Arc::new(Hello);
//! while let Some(incoming) = listener.accept().await {
//!     let (driver, controller) = ServerH3Driver::new_server(Http3Settings::default());
//!     incoming.start(driver);
//!     tokio::spawn(serve_connection(controller, handler.clone()));
//! }
//! # Ok(()) }
//! ```

mod body;
mod client;
mod controller;
mod driver;
mod error;
mod frames;
mod head;
mod service;
mod settings;

pub use body::{BodyChunk, BodyWriter, RequestBody, ResponseBody};
pub use client::{H3Client, Response};
pub use controller::{
    H3Controller, H3Event, H3Handle, IncomingRequest, PendingRequest, RequestStream,
};
pub use driver::{
    header_value, ClientH3Driver, ClientHooks, DriverCore, DriverHooks, H3Driver, ServerH3Driver,
    ServerHooks,
};
pub use error::{
    H3Error, H3_EXCESSIVE_LOAD, H3_INTERNAL_ERROR, H3_NO_ERROR, H3_REQUEST_CANCELLED,
    H3_REQUEST_INCOMPLETE, H3_REQUEST_REJECTED,
};
pub use frames::{headers, BodyReceiver, InboundFrame, OutboundFrame, OutboundSender, TrySend};
pub use head::{header_list, header_map, request_from_head, ConnectProtocol};
pub use quiche::h3::{Header, NameValue};
pub(crate) use service::{
    declared_length, pipe_body, respond_error, send_end, send_head, PipeError,
};
pub use service::{
    send_response, serve_connection, serve_connection_until, serve_requests, RequestHandler,
};
pub use settings::Http3Settings;
