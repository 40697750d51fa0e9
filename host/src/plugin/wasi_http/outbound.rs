//! Outgoing wasi:http requests, sent by tq-host rather than by
//! `wasmtime_wasi_http::default_send_request`, so that the address a granted
//! name resolves to is checked, and is the address connected to.
//!
//! wasmtime's default connects with `TcpStream::connect("host:port")`, which
//! resolves the name itself: whatever the name points at (loopback, a cloud
//! metadata address) is reached. Here the name is resolved once, every
//! address is checked against the grant that let the request through
//! ([`address_allowed`]), and the connection goes only to an address that
//! passed, never resolving again: the name cannot be re-pointed between the
//! check and the connect (DNS rebinding). The rest follows wasmtime-wasi-http
//! 48.0.8's `default_send_request`: the same TLS (rustls with ring and the
//! webpki-roots, SNI the request's host), HTTP/1.1 through hyper, the same
//! three timeouts and error codes.

use std::future::{poll_fn, Future};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::{pin, Pin};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;
use tracing::debug;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// What the `--allow-http` grant that matched a request lets it reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grant {
    /// The grant names this IP address: that address only, whatever range
    /// it is in.
    Ip(IpAddr),
    /// The grant names a host: the public addresses it resolves to, and its
    /// internal ones too if `allow_private`.
    Name {
        /// The operator passed `--allow-http-private`.
        allow_private: bool,
    },
}

/// Where an address leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    /// Routable on the public internet.
    Public,
    /// This host or a network near it, or a range never routed publicly:
    /// loopback, private, link-local, CGNAT, unique-local, documentation,
    /// benchmarking and other special-purpose unicast.
    Internal,
    /// Not a unicast destination at all: unspecified, multicast, broadcast.
    Never,
}

/// Whether a request let through by `grant` may connect to `ip`.
pub(crate) fn address_allowed(grant: &Grant, ip: IpAddr) -> bool {
    match *grant {
        Grant::Ip(granted) => ip == granted,
        Grant::Name { allow_private } => match reach(ip) {
            Reach::Public => true,
            Reach::Internal => allow_private,
            Reach::Never => false,
        },
    }
}

/// Where `ip` leads. IPv4 carried in IPv6 (mapped, NAT64, 6to4) counts as
/// that IPv4 address.
pub(crate) fn reach(ip: IpAddr) -> Reach {
    match ip {
        IpAddr::V4(v4) => reach_v4(v4),
        IpAddr::V6(v6) => reach_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], len: u32) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u32) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    u128::from(ip) & mask == u128::from(net) & mask
}

fn reach_v4(ip: Ipv4Addr) -> Reach {
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
        return Reach::Never;
    }
    const INTERNAL: &[([u8; 4], u32)] = &[
        ([0, 0, 0, 0], 8),       // "this network"; 0.x reaches the local host on Linux
        ([10, 0, 0, 0], 8),      // private (RFC 1918)
        ([100, 64, 0, 0], 10),   // shared address space, CGNAT (RFC 6598)
        ([127, 0, 0, 0], 8),     // loopback
        ([169, 254, 0, 0], 16),  // link-local, cloud metadata (169.254.169.254)
        ([172, 16, 0, 0], 12),   // private
        ([192, 0, 0, 0], 24),    // IETF protocol assignments (RFC 6890)
        ([192, 0, 2, 0], 24),    // documentation (TEST-NET-1)
        ([192, 88, 99, 0], 24),  // 6to4 relay anycast, deprecated (RFC 7526)
        ([192, 168, 0, 0], 16),  // private
        ([198, 18, 0, 0], 15),   // benchmarking (RFC 2544)
        ([198, 51, 100, 0], 24), // documentation (TEST-NET-2)
        ([203, 0, 113, 0], 24),  // documentation (TEST-NET-3)
        ([240, 0, 0, 0], 4),     // reserved
    ];
    if INTERNAL.iter().any(|&(net, len)| in_v4(ip, net, len)) {
        Reach::Internal
    } else {
        Reach::Public
    }
}

fn reach_v6(ip: Ipv6Addr) -> Reach {
    if ip.is_unspecified() || ip.is_multicast() {
        return Reach::Never;
    }
    // ::ffff:a.b.c.d: a dual-stack socket connects to a.b.c.d.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return reach_v4(v4);
    }
    let bits = u128::from(ip);
    // NAT64 (64:ff9b::/96, RFC 6052) and 6to4 (2002::/16, RFC 3056) carry
    // an IPv4 destination: they lead where it does.
    if in_v6(ip, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        return reach_v4(Ipv4Addr::from(bits as u32));
    }
    if in_v6(ip, Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        return reach_v4(Ipv4Addr::from((bits >> 80) as u32));
    }
    // Outside global unicast (2000::/3): ::1, IPv4-compatible ::/96,
    // discard 100::/64, local-use NAT64 64:ff9b:1::/48, SRv6 5f00::/16,
    // unique-local fc00::/7, link-local fe80::/10, site-local fec0::/10 and
    // unallocated space.
    if ip.is_loopback() || !in_v6(ip, Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3) {
        return Reach::Internal;
    }
    const SPECIAL: &[(Ipv6Addr, u32)] = &[
        // IETF protocol assignments, Teredo (2001::/32) among them.
        (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23),
        // Documentation (RFC 3849, RFC 9637).
        (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),
        (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),
    ];
    if SPECIAL.iter().any(|&(net, len)| in_v6(ip, net, len)) {
        Reach::Internal
    } else {
        Reach::Public
    }
}

/// wasmtime's timeout when none is set; [`super::host`] always sets all
/// three (capped at 30 s), so this is only a fallback.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Sends `req` as `wasmtime_wasi_http::default_send_request` does, but only
/// to an address of its authority that `grant` allows: the response (its
/// body bounded by the between-bytes timeout) and the connection's I/O,
/// which must be driven for the body to arrive.
///
/// Resolving, connecting and the TLS handshake share the connect timeout
/// (wasmtime's default leaves the TLS handshake unbounded).
pub(crate) async fn send_request(
    mut req: http::Request<WasiBody>,
    options: RequestOptions,
    grant: Grant,
) -> Result<
    (
        http::Response<WasiBody>,
        impl Future<Output = Result<(), Error>> + Send,
    ),
    Error,
> {
    let uri = req.uri();
    let authority = uri.authority().ok_or(Error::HttpRequestUriInvalid)?;
    let use_tls = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let port = authority
        .port_u16()
        .unwrap_or(if use_tls { 443 } else { 80 });
    // `Authority::host` keeps an IPv6 literal's brackets.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();

    let connect_timeout = options.connect_timeout.unwrap_or(DEFAULT_TIMEOUT);
    let first_byte_timeout = options.first_byte_timeout.unwrap_or(DEFAULT_TIMEOUT);
    let between_bytes_timeout = options.between_bytes_timeout.unwrap_or(DEFAULT_TIMEOUT);
    let deadline = Instant::now() + connect_timeout;

    let addrs = resolve(&host, port, grant, deadline).await?;
    let tcp = connect(&addrs, deadline).await?;
    let stream: Box<dyn Io> = if use_tls {
        // SNI and certificate check: the host the guest asked for, never
        // the address connected to.
        let name = server_name(&host)?;
        let tls = timeout_at(deadline, tls_connector().connect(name, tcp))
            .await
            .map_err(|_| Error::ConnectionTimeout)?
            .map_err(tls_error)?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) = timeout_at(
        deadline,
        hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;

    // The request carries the scheme and authority; to an origin (not a
    // proxy) the request line has only the path and query.
    *req.uri_mut() = http::Uri::builder()
        .path_and_query(req.uri().path_and_query().map_or("/", |p| p.as_str()))
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;

    let send = async move {
        let res = tokio::time::timeout(first_byte_timeout, sender.send_request(req))
            .await
            .map_err(|_| Error::ConnectionReadTimeout)?
            .map_err(Error::from)?;
        // Tokio panics on a zero interval: 1 ns is as good as zero.
        let between = between_bytes_timeout.max(Duration::from_nanos(1));
        let mut timeout = tokio::time::interval(between);
        timeout.reset();
        Ok::<_, Error>(res.map(|incoming| ResponseBody { incoming, timeout }.boxed_unsync()))
    };
    let mut send = pin!(send);
    let mut conn = Some(conn);
    // Wait for the response head while driving the connection's I/O.
    let res = poll_fn(|cx| match send.as_mut().poll(cx) {
        Poll::Ready(r) => Poll::Ready(r),
        Poll::Pending => {
            let Some(fut) = conn.as_mut() else {
                return Poll::Pending;
            };
            let r = ready!(Pin::new(fut).poll(cx));
            // Done: never poll it again.
            conn = None;
            match r {
                Ok(()) => send.as_mut().poll(cx),
                Err(e) => Poll::Ready(Err(Error::from(e))),
            }
        }
    })
    .await?;
    let io = async move {
        let Some(conn) = conn else {
            return Ok(());
        };
        match conn.await {
            Ok(()) => Ok(()),
            Err(e) if e.is_timeout() => Err(Error::HttpResponseTimeout),
            Err(e) => Err(e.into()),
        }
    };
    Ok((res, io))
}

/// The addresses of `host` that `grant` allows, resolved once.
async fn resolve(
    host: &str,
    port: u16,
    grant: Grant,
    deadline: Instant,
) -> Result<Vec<SocketAddr>, Error> {
    let resolved: Vec<SocketAddr> = match grant {
        // The grant's address is the destination: nothing to resolve.
        Grant::Ip(ip) => vec![SocketAddr::new(ip, port)],
        Grant::Name { .. } => {
            match timeout_at(deadline, tokio::net::lookup_host((host, port))).await {
                Err(_) => return Err(Error::DnsTimeout),
                Ok(Err(e)) => {
                    debug!(host, error = %e, "outgoing request: the name does not resolve");
                    return Err(dns_error());
                }
                Ok(Ok(addrs)) => addrs.collect(),
            }
        }
    };
    let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = resolved
        .into_iter()
        .partition(|a| address_allowed(&grant, a.ip()));
    if !refused.is_empty() {
        debug!(
            host,
            ?refused,
            "outgoing request: skipping addresses the grant does not cover"
        );
    }
    if allowed.is_empty() {
        return Err(if refused.is_empty() {
            dns_error()
        } else {
            Error::DestinationIpProhibited
        });
    }
    Ok(allowed)
}

/// What wasmtime answers for a name that does not resolve.
fn dns_error() -> Error {
    Error::DnsError {
        rcode: Some("address not available".into()),
        info_code: None,
    }
}

/// A connection to the first of `addrs` that accepts, in resolver order (as
/// `TcpStream::connect("host:port")` tries them).
async fn connect(addrs: &[SocketAddr], deadline: Instant) -> Result<TcpStream, Error> {
    let mut last = None;
    for &addr in addrs {
        match timeout_at(deadline, TcpStream::connect(addr)).await {
            Err(_) => return Err(Error::ConnectionTimeout),
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => {
                debug!(%addr, error = %e, "outgoing request: cannot connect");
                last = Some(e);
            }
        }
    }
    Err(last.map_or(Error::ConnectionRefused, connect_error))
}

/// A failed connect, named as precisely as its kind allows. Other kinds go on as
/// `Error::Connect`, which wasmtime turns into `connection-refused` (or `DNS-error`
/// for `AddrNotAvailable`), as it does today.
fn connect_error(e: std::io::Error) -> Error {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => Error::ConnectionRefused,
        ErrorKind::TimedOut => Error::ConnectionTimeout,
        ErrorKind::HostUnreachable => Error::DestinationUnavailable,
        ErrorKind::NetworkUnreachable => Error::DestinationIpUnroutable,
        _ => Error::Connect(e),
    }
}

/// The name to verify the server's certificate against (and send as SNI):
/// an IP literal as an address, anything else as a DNS name.
fn server_name(host: &str) -> Result<ServerName<'static>, Error> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::from(ip));
    }
    Ok(ServerName::try_from(host)?.to_owned())
}

/// wasmtime's client TLS: rustls with ring, TLS 1.2 and 1.3, the
/// webpki-roots, no client certificate. Built once rather than per request.
fn tls_connector() -> tokio_rustls::TlsConnector {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
        // wasmtime builds a fresh config per request, so nothing is ever
        // resumed; one config for the process would share sessions between
        // plugins.
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    });
    tokio_rustls::TlsConnector::from(Arc::clone(config))
}

/// A failed TLS handshake: a certificate we reject or an alert the server
/// sends, named; anything else as wasmtime does (`TLS-protocol-error`).
fn tls_error(e: std::io::Error) -> Error {
    let named = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => {
            Some(Error::TlsCertificateError)
        }
        Some(rustls::Error::AlertReceived(alert)) => Some(Error::TlsAlertReceived {
            alert_id: Some(u8::from(*alert)),
            alert_message: Some(format!("{alert:?}")),
        }),
        _ => None,
    };
    named.unwrap_or_else(|| Error::Tls(e))
}

/// The connection under hyper: TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> Io for T {}

/// The response body, failing with `connection-read-timeout` when no frame
/// arrives within the between-bytes timeout.
struct ResponseBody {
    incoming: hyper::body::Incoming,
    timeout: tokio::time::Interval,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(if e.is_timeout() {
                Error::HttpResponseTimeout
            } else {
                Error::from(e)
            }))),
            Poll::Ready(Some(Ok(frame))) => {
                self.timeout.reset();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(self.timeout.poll_tick(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_are_public_internal_or_never_destinations() {
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "11.0.0.1",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "192.169.0.1",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(reach(ip(a)), Reach::Public, "{a}");
        }
        for a in [
            "127.0.0.1",
            "127.255.255.254",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.1.2.3",
            "192.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.5",
            "240.0.0.1",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "2002:c0a8:101::1",
            "2002:7f00:1::",
            "100::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "2001::1",
            "2001:db8::1",
            "3fff::1",
            "5f00::1",
        ] {
            assert_eq!(reach(ip(a)), Reach::Internal, "{a}");
        }
        for a in [
            "0.0.0.0",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "::",
            "ff02::1",
            "::ffff:0.0.0.0",
            "::ffff:224.0.0.1",
        ] {
            assert_eq!(reach(ip(a)), Reach::Never, "{a}");
        }
    }

    #[test]
    fn an_address_grant_allows_that_address_only() {
        let g = Grant::Ip(ip("127.0.0.1"));
        assert!(address_allowed(&g, ip("127.0.0.1")));
        assert!(!address_allowed(&g, ip("127.0.0.2")));
        assert!(
            !address_allowed(&g, ip("::ffff:127.0.0.1")),
            "exactly, not another spelling"
        );
        assert!(!address_allowed(&g, ip("8.8.8.8")), "not even a public one");
        assert!(address_allowed(&Grant::Ip(ip("::1")), ip("::1")));
        assert!(address_allowed(&Grant::Ip(ip("10.0.0.1")), ip("10.0.0.1")));
        assert!(
            address_allowed(&Grant::Ip(ip("0.0.0.0")), ip("0.0.0.0")),
            "the operator's call"
        );
    }

    #[test]
    fn a_name_grant_allows_public_addresses_and_internal_ones_only_if_asked() {
        let strict = Grant::Name {
            allow_private: false,
        };
        let open = Grant::Name {
            allow_private: true,
        };
        for a in ["8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"] {
            assert!(address_allowed(&strict, ip(a)), "{a}");
            assert!(address_allowed(&open, ip(a)), "{a}");
        }
        for a in [
            "127.0.0.1",
            "10.0.0.1",
            "172.20.0.1",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:192.168.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:a00:1::",
        ] {
            assert!(!address_allowed(&strict, ip(a)), "{a}");
            assert!(address_allowed(&open, ip(a)), "{a}");
        }
        for a in ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255"] {
            assert!(!address_allowed(&strict, ip(a)), "{a}");
            assert!(!address_allowed(&open, ip(a)), "{a}");
        }
    }

    fn get(uri: &str) -> http::Request<WasiBody> {
        http::Request::get(uri)
            .body(
                http_body_util::Empty::<Bytes>::new()
                    .map_err(|never| -> Error { match never {} })
                    .boxed_unsync(),
            )
            .unwrap()
    }

    fn quick() -> RequestOptions {
        let t = Some(Duration::from_secs(5));
        RequestOptions {
            connect_timeout: t,
            first_byte_timeout: t,
            between_bytes_timeout: t,
        }
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_without_the_private_flag() {
        let r = send_request(
            get("http://localhost:9/"),
            quick(),
            Grant::Name {
                allow_private: false,
            },
        )
        .await;
        assert!(
            matches!(r, Err(Error::DestinationIpProhibited)),
            "{:?}",
            r.err()
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_connection_refused() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let r = send_request(
            get(&format!("http://127.0.0.1:{port}/")),
            quick(),
            Grant::Ip(ip("127.0.0.1")),
        )
        .await;
        assert!(matches!(r, Err(Error::ConnectionRefused)), "{:?}", r.err());
    }

    #[tokio::test]
    async fn a_granted_address_is_fetched_over_http1() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
                )
                .await;
        });
        let (res, io) = send_request(
            get(&format!("http://{addr}/x?y")),
            quick(),
            Grant::Ip(addr.ip()),
        )
        .await
        .unwrap();
        // The p2 layer spawns the I/O future; the body arrives only while it runs.
        let io = tokio::spawn(io);
        assert_eq!(res.status(), 200);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
        io.await.unwrap().unwrap();
    }
}

/// Randomised grants, URIs and resolved addresses: the address connected
/// to is always one the matching grant allows (a short run here;
/// `PROPTEST_CASES=N` for more).
#[cfg(test)]
mod fuzz {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    fn ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
            any::<[u8; 16]>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
            // IPv4-mapped IPv6, which a dual-stack socket connects to as IPv4.
            any::<[u8; 4]>().prop_map(|b| IpAddr::V6(Ipv4Addr::from(b).to_ipv6_mapped())),
        ]
    }

    proptest! {
        #[test]
        fn a_name_grant_never_reaches_an_internal_address_unless_allowed(a in ip(), private in any::<bool>()) {
            let allowed = address_allowed(&Grant::Name { allow_private: private }, a);
            match reach(a) {
                Reach::Public => prop_assert!(allowed),
                Reach::Internal => prop_assert_eq!(allowed, private),
                Reach::Never => prop_assert!(!allowed),
            }
            // Loopback, private and link-local never count as public, in
            // any spelling.
            let v4 = match a {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(v6) => v6.to_ipv4_mapped(),
            };
            if let Some(v4) = v4 {
                if v4.is_loopback() || v4.is_private() || v4.is_link_local() {
                    prop_assert_ne!(reach(a), Reach::Public);
                }
            }
            if let IpAddr::V6(v6) = a {
                if v6.is_loopback() || v6.is_unicast_link_local() || v6.is_unique_local() {
                    prop_assert_ne!(reach(a), Reach::Public);
                }
            }
        }

        #[test]
        fn an_address_grant_reaches_exactly_its_address(g in ip(), a in ip()) {
            prop_assert_eq!(address_allowed(&Grant::Ip(g), a), g == a);
        }
    }
}
