//! HTTP/3 error codes (RFC 9114 §8.1) and the typed error of this layer's
//! public API.

/// H3_NO_ERROR: a graceful close.
pub const H3_NO_ERROR: u64 = 0x100;
/// H3_INTERNAL_ERROR.
pub const H3_INTERNAL_ERROR: u64 = 0x102;
/// H3_EXCESSIVE_LOAD: e.g. a header section over the advertised limit.
pub const H3_EXCESSIVE_LOAD: u64 = 0x107;
/// H3_REQUEST_REJECTED: the request was not processed and may be retried.
pub const H3_REQUEST_REJECTED: u64 = 0x10b;
/// H3_REQUEST_CANCELLED: the request or its response was abandoned.
pub const H3_REQUEST_CANCELLED: u64 = 0x10c;
/// The client's stream ended (or stalled) before a full request (RFC 9114).
pub const H3_REQUEST_INCOMPLETE: u64 = 0x10d;

/// What went wrong with a request, a response or a body.
///
/// ```
/// use tq_host::http3::{H3Error, H3_REQUEST_REJECTED};
/// let e = H3Error::StreamReset { code: H3_REQUEST_REJECTED };
/// assert!(e.is_retryable());
/// assert_eq!(e.to_string(), "stream reset by the peer with code 0x10b");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum H3Error {
    /// The connection closed before the exchange ended.
    #[error("connection closed")]
    ConnectionClosed,
    /// GOAWAY was sent or received: no new requests on this connection.
    #[error("the connection is going away (GOAWAY)")]
    GoingAway,
    /// quiche refused to open the request.
    #[error("request refused: {0}")]
    RequestRefused(#[source] quiche::h3::Error),
    /// The peer reset the stream.
    #[error("stream reset by the peer with code {code:#x}")]
    StreamReset {
        /// The peer's error code.
        code: u64,
    },
    /// The stream is gone (reset, stopped or finished) for writing.
    #[error("the peer went away")]
    StreamClosed,
    /// A body over the caller's limit.
    #[error("body larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit that was passed.
        limit: usize,
    },
    /// A body failed midway (the stream was reset).
    #[error("the body failed: {0}")]
    BodyFailed(String),
    /// A head that breaks RFC 9114's rules (§4.3).
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Only clients send requests.
    #[error("a server connection cannot send requests")]
    NotAClient,
}

impl H3Error {
    /// Whether the peer did not process the request, so that it is safe to
    /// send again on another connection (RFC 9114 §4.1.1, §5.2).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            H3Error::GoingAway
                | H3Error::StreamReset {
                    code: H3_REQUEST_REJECTED
                }
        )
    }
}
