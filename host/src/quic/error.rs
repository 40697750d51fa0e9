//! Errors of the QUIC layer that a caller may want to branch on.
//!
//! Application hooks return [`BoxError`]: whatever an application fails with
//! ends its connection, and the layer only needs to log it. Errors from
//! [`listen`](super::listen) and [`connect`](super::connect) are typed.

use std::io;

/// An error an application hook returns. It closes the connection.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What an application hook returns.
pub type QuicResult<T> = Result<T, BoxError>;

/// Errors from setting up or running QUIC endpoints and connections.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuicError {
    /// A setting is out of range or inconsistent.
    #[error("invalid QUIC settings: {0}")]
    InvalidSettings(String),
    /// quiche refused a configuration value.
    #[error("quiche rejected the {what} setting: {source}")]
    Config {
        /// Which setting.
        what: String,
        /// quiche's error.
        #[source]
        source: quiche::Error,
    },
    /// TLS material could not be loaded or made.
    #[error("TLS: {0}")]
    Tls(String),
    /// A socket operation failed.
    #[error("socket {op}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// quiche failed to create or drive a connection.
    #[error("QUIC {what}: {source}")]
    Quiche {
        /// What we were doing.
        what: &'static str,
        /// quiche's error.
        #[source]
        source: quiche::Error,
    },
    /// The handshake did not complete; the text says why (peer's or our
    /// CONNECTION_CLOSE, TLS alert, timeout).
    #[error("handshake failed: {0}")]
    HandshakeFailed(String),
    /// The connection ended before the operation finished.
    #[error("connection closed: {0}")]
    Closed(String),
}

impl QuicError {
    pub(crate) fn io(op: &'static str) -> impl FnOnce(io::Error) -> QuicError {
        move |source| QuicError::Io { op, source }
    }
}
