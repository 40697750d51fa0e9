//! Binding the UDP sockets of a multi-core listener: several sockets on
//! one address with SO_REUSEPORT, so the kernel spreads clients over them
//! and each socket's router runs on its own thread. Pass them all to one
//! [`listen`](super::listen): a packet that lands on another socket than
//! its connection's is handed over.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// One worker per CPU: the default of `tq-host --workers`.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Binds `workers` UDP sockets on `addr` (a plain socket when `workers` is
/// 1); port 0 picks one free port for all of them. Must be called within a
/// tokio runtime.
///
/// SO_REUSEPORT would also let another process of the same user join a
/// fixed port unnoticed and take a share of its traffic, so a fixed port
/// is first bound once without it: that fails, as an operator expects, if
/// anything already listens there.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// let sockets = tq_host::quic::bind_workers("0.0.0.0:443".parse().unwrap(), 4)?;
/// assert_eq!(sockets.len(), 4);
/// # Ok(()) }
/// ```
///
/// # Errors
/// The address is taken, or a socket cannot be set up; the error names the
/// address.
pub fn bind_workers(addr: SocketAddr, workers: usize) -> io::Result<Vec<tokio::net::UdpSocket>> {
    let ctx = |what: String| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let workers = workers.max(1);
    if workers > 1 && addr.port() != 0 {
        drop(std::net::UdpSocket::bind(addr).map_err(ctx(format!("cannot bind UDP {addr}")))?);
    }
    let mut out = Vec::with_capacity(workers);
    let mut at = addr;
    for _ in 0..workers {
        let s = Socket::new(Domain::for_address(at), Type::DGRAM, Some(Protocol::UDP))
            .map_err(ctx("cannot create a UDP socket".into()))?;
        if workers > 1 {
            s.set_reuse_port(true)
                .map_err(ctx("cannot set SO_REUSEPORT".into()))?;
        }
        s.set_nonblocking(true)
            .map_err(ctx("cannot make the socket non-blocking".into()))?;
        s.bind(&at.into())
            .map_err(ctx(format!("cannot bind UDP {at}")))?;
        let std: std::net::UdpSocket = s.into();
        // The first socket fixed the port (when 0 was asked for).
        at = std.local_addr()?;
        out.push(tokio::net::UdpSocket::from_std(std)?);
    }
    Ok(out)
}

/// The wildcard address (any port) of `peer`'s family: where a client
/// socket to `peer` binds when the caller has no preference.
pub(crate) fn any_local_for(peer: SocketAddr) -> SocketAddr {
    if peer.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn workers_share_one_port_and_a_taken_port_is_refused() {
        let socks = bind_workers("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let port = socks[0].local_addr().unwrap().port();
        assert!(socks.iter().all(|s| s.local_addr().unwrap().port() == port));
        // Another server started on the same port fails, it does not join.
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let err = bind_workers(addr, 2).unwrap_err();
        assert!(err.to_string().contains("cannot bind UDP"), "{err}");
    }
}
