//! HTTP/3 settings, each with its default and the reason for it.

use std::time::Duration;

use serde::Deserialize;

/// Settings of one HTTP/3 connection.
///
/// ```
/// let s = tq_host::http3::Http3Settings::default();
/// assert_eq!(s.max_header_list_size, 16 * 1024);
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Http3Settings {
    /// Servers: after this many requests the connection sends GOAWAY, lets
    /// those requests finish and closes with H3_NO_ERROR. Default: none.
    pub max_requests_per_connection: Option<u64>,
    /// Largest header section (RFC 9114 SETTINGS_MAX_FIELD_SECTION_SIZE) we
    /// accept; a larger one closes the connection with H3_EXCESSIVE_LOAD.
    /// Default: 16 KiB, what common proxies allow.
    pub max_header_list_size: u64,
    /// QPACK dynamic table capacity. Default: 0 (static table only: no state
    /// for a peer to exhaust, at some cost in header compression).
    pub qpack_max_table_capacity: u64,
    /// Streams that may block on QPACK. Default: 0 (with no dynamic table,
    /// nothing can block).
    pub qpack_blocked_streams: u64,
    /// Servers: close a connection that has sent no request this long after
    /// the handshake. Default: 10 s.
    #[serde(with = "humantime_serde")]
    pub first_request_timeout: Option<Duration>,
    /// Servers: a request stream on which the peer makes no progress for
    /// this long is reset (H3_REQUEST_CANCELLED, both directions) and the
    /// application sees a reset; one whose header section never completes
    /// is reset with H3_REQUEST_INCOMPLETE. "No progress" counts only time
    /// spent waiting on the peer: for body bytes the application is ready
    /// to take (unless the server itself holds received data back), or for
    /// room to send response bytes while the connection sends nothing else
    /// (a stream waiting its turn behind others is not stalled). A slow
    /// handler is not cut, nor an extended CONNECT tunnel; a client that
    /// opens requests and never finishes them (slowloris) or never reads
    /// their answers is. A client sending `Expect: 100-continue` waits for
    /// the interim response: send it within this time. Default: 30 s;
    /// `None` turns it off.
    #[serde(with = "humantime_serde")]
    pub stream_stall_timeout: Option<Duration>,
    /// Accept extended CONNECT (RFC 9220). Default: off.
    pub enable_extended_connect: bool,
    /// Frames queued per stream in each direction between the driver and the
    /// application; the bound on what a slow side can make the other buffer.
    /// Default: 16.
    pub stream_channel_capacity: usize,
    /// Largest body chunk the driver reads from quiche in one go. Default: 64 KiB.
    pub body_chunk_size: usize,
}

impl Default for Http3Settings {
    fn default() -> Self {
        Self {
            max_requests_per_connection: None,
            max_header_list_size: 16 * 1024,
            qpack_max_table_capacity: 0,
            qpack_blocked_streams: 0,
            first_request_timeout: Some(Duration::from_secs(10)),
            stream_stall_timeout: Some(Duration::from_secs(30)),
            enable_extended_connect: false,
            stream_channel_capacity: 16,
            body_chunk_size: 64 * 1024,
        }
    }
}

impl Http3Settings {
    pub(crate) fn to_quiche(&self) -> Result<quiche::h3::Config, quiche::h3::Error> {
        let mut c = quiche::h3::Config::new()?;
        c.set_max_field_section_size(self.max_header_list_size);
        c.set_qpack_max_table_capacity(self.qpack_max_table_capacity);
        c.set_qpack_blocked_streams(self.qpack_blocked_streams);
        c.enable_extended_connect(self.enable_extended_connect);
        Ok(c)
    }
}
