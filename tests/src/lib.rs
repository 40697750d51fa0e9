//! Fixtures shared by the end-to-end tests and benchmarks: a test server on
//! loopback, an echo client application for our own QUIC stack, and a quinn
//! client as an independent peer.
//!
//! Everything is re-exported at the crate root, so tests use `tq_e2e::X`:
//! - [`data`]: payloads, hashes, request heads, plugin paths, bench arguments,
//!   memory and tracing;
//! - [`certs`]: per-server self-signed certificates;
//! - [`peers`]: the clients (ours, quinn, h3 over quinn);
//! - [`servers`]: the servers under test on 127.0.0.1;
//! - [`relay`]: a UDP relay that drops and reorders datagrams.

pub mod certs;
pub mod data;
pub mod peers;
pub mod relay;
pub mod servers;
mod task;

pub use certs::TestCert;
pub use data::{
    bench_arg, component_path, init_tracing, payload, plugin_path, request_head, rss_kib, sha256,
};
pub use peers::{assert_discards, latencies, percentile, reset_pairs};
pub use peers::{
    echo_with_our_client, h3_client, quinn_client, quinn_client_with, quinn_connect, quinn_echo,
    run_echo_client, EchoClient, H3QuinnClient, StreamResult,
};
pub use relay::{Impairment, LossyRelay};
pub use servers::{
    echo_alpn, loopback, H3App, H3TestServer, LiveServer, PluginServer, QuicPluginServer,
    TestServer,
};
pub use task::AbortOnDrop;
