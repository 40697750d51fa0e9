//! # tq-host
//!
//! A programmable QUIC and HTTP/3 server. This crate is built in layers, each
//! depending only on the ones before it:
//!
//! ```text
//!   metrics (leaf) · quic  →  http3  →  plugin  →  server  →  cli
//! ```
//!
//! - [`quic`]: a tokio bridge for quiche: [`quic::listen`], [`quic::connect`],
//!   and the [`quic::ApplicationOverQuic`] trait a connection's application
//!   implements.
//! - [`metrics`]: the [`metrics::Metrics`] trait the layers report through.
//! - [`builtin`]: applications that ship in the binary.
//! - [`http3`]: HTTP/3 over the QUIC layer: `H3Driver`, handlers, a client.
//! - [`plugin`]: the WebAssembly plugin runtime (wasmtime).
//! - [`server`]: the accept loop and graceful shutdown the binary and the
//!   tests share ([`server::serve`]).
//! - [`tls`]: self-signed certificates for a first run and for tests.
#![deny(missing_docs)]
#![warn(unreachable_pub)]

pub mod builtin;
pub mod cli;
pub mod http3;
pub mod metrics;
pub mod plugin;
pub mod quic;
pub mod server;
pub mod tls;
