//! Shared by the benchmark binaries: the handler every server under test
//! serves ([`route`]), the certificate they present, and the JSON the load
//! generator prints for the harness.
//!
//! The handler contract (tq-host's built-in site, its example plugins and
//! the peers all serve it):
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /bytes/N` | 200, `N` bytes of `x`, with content-length |
//! | `POST /discard` | 200, the request body's length in decimal, once it has all arrived |

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The command line both peer servers take.
#[derive(Debug, clap::Parser)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long)]
    pub listen: std::net::SocketAddr,
    /// Certificate chain (PEM).
    #[arg(long)]
    pub cert: std::path::PathBuf,
    /// Private key (PEM).
    #[arg(long)]
    pub key: std::path::PathBuf,
    /// Close connections idle this long, in seconds.
    #[arg(long, default_value_t = 120)]
    pub idle_secs: u64,
}

/// What a request asks of the shared handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /bytes/N`.
    Bytes(u64),
    /// `POST /discard`.
    Discard,
    /// Anything else: 404.
    NotFound,
}

/// The route for a method and path.
pub fn route(method: &[u8], path: &[u8]) -> Route {
    match (method, path) {
        (b"GET", p) if p.starts_with(b"/bytes/") => std::str::from_utf8(&p[7..])
            .ok()
            .and_then(|n| n.parse().ok())
            .map_or(Route::NotFound, Route::Bytes),
        (b"POST", b"/discard") => Route::Discard,
        _ => Route::NotFound,
    }
}

/// How much of a `/bytes/N` body a server hands over at a time.
pub const CHUNK: usize = 64 * 1024;

/// A block of `x` to slice body chunks from.
pub fn block() -> bytes::Bytes {
    bytes::Bytes::from(vec![b'x'; CHUNK])
}

/// Writes a fresh self-signed certificate for `localhost` and its key (PEM).
pub fn write_certificate(cert: &Path, key: &Path) -> anyhow::Result<()> {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    std::fs::write(cert, c.cert.pem()).with_context(|| format!("writing {}", cert.display()))?;
    std::fs::write(key, c.signing_key.serialize_pem())
        .with_context(|| format!("writing {}", key.display()))?;
    Ok(())
}

/// The certificate chain in a PEM file, for rustls.
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", path.display()))
}

/// The private key in a PEM file, for rustls.
pub fn load_key(path: &Path) -> anyhow::Result<rustls::pki_types::PrivateKeyDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("reading the key in {}", path.display()))
}

/// A UDP socket bound to `addr` with 4 MiB receive and send buffers (the
/// kernel caps them at net.core.rmem_max / wmem_max): what tq-host asks for
/// by default, so that no server under test drops datagrams a bigger
/// buffer would have held.
pub fn udp_socket(addr: std::net::SocketAddr) -> anyhow::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_recv_buffer_size(4 << 20)?;
    socket.set_send_buffer_size(4 << 20)?;
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// CPU time this process has used (user + system), in seconds.
pub fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we pass and nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// What the load generator prints (one JSON line) after a scenario.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadReport {
    /// Requests (or connections, for handshakes) completed.
    pub done: u64,
    /// Requests that failed (each one is also printed on stderr).
    pub failed: u64,
    /// Bytes of response (download) or request (upload) body moved.
    pub bytes: u64,
    /// Wall-clock time of the measured part, in seconds.
    pub secs: f64,
    /// Latency percentiles in microseconds, where requests were timed.
    pub p50_us: Option<f64>,
    /// 99th percentile latency.
    pub p99_us: Option<f64>,
    /// The load generator's own CPU time over the measured part.
    pub cpu_secs: f64,
}

/// The `p`th percentile (0-100) of sorted samples.
pub fn percentile(sorted: &[u32], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * p / 100.0).round() as usize;
    Some(f64::from(sorted[i]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route(b"GET", b"/bytes/100"), Route::Bytes(100));
        assert_eq!(route(b"GET", b"/bytes/x"), Route::NotFound);
        assert_eq!(route(b"POST", b"/discard"), Route::Discard);
        assert_eq!(route(b"GET", b"/discard"), Route::NotFound);
    }

    #[test]
    fn percentiles() {
        let s: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&s, 50.0), Some(51.0));
        assert_eq!(percentile(&s, 99.0), Some(99.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
