//! End-to-end tests over real sockets on loopback: one test binary, one
//! module per area.

mod h3;
mod lossy;
mod migration;
mod operations;
mod plugins;
mod quic_echo;
mod quic_handshake;
mod quic_plugins;
mod quic_robustness;
mod quic_shutdown;
mod rapid_reset;
mod reload;
mod wasi_http;
mod wasi_p3;
