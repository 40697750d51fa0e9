//! HTTP/3 over [`ApplicationOverQuic`](crate::quic::ApplicationOverQuic).
//!
//! [`H3Driver`] runs `quiche::h3` on a connection, in the server or the client
//! role, and talks to the application through an [`H3Controller`] (events
//! and commands) and per-stream bounded channels ([`BodyReceiver`],
//! [`OutboundSender`]). On top sit a native request handler API
//! ([`RequestHandler`], [`serve_connection`]) and a small client
//! ([`H3Client`]). This layer knows nothing about WebAssembly.
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

mod client;
mod driver;
mod frames;
mod service;
mod settings;

pub use client::{H3Client, Response};
pub use driver::{
    header_value, ClientH3Driver, H3Controller, H3Driver, H3Event, H3Handle, IncomingRequest,
    RequestStream, ServerH3Driver, H3_EXCESSIVE_LOAD, H3_INTERNAL_ERROR, H3_NO_ERROR,
    H3_REQUEST_CANCELLED, H3_REQUEST_REJECTED,
};
pub use frames::{headers, BodyReceiver, InboundFrame, OutboundFrame, OutboundSender, TrySend};
pub use quiche::h3::{Header, NameValue};
pub use service::{
    serve_connection, BodyChunk, BodyWriter, RequestBody, RequestHandler, ResponseBody,
};
pub use settings::Http3Settings;
