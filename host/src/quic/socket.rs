//! A UDP socket with the kernel's batching offloads.
//!
//! `quinn-udp` does the platform work: `recvmmsg` with GRO (several datagrams
//! coalesced into one buffer, split again by `stride`) and `sendmsg` with GSO
//! (one buffer of equal-sized segments sent as many datagrams). Where the
//! kernel lacks either, quinn-udp falls back to one datagram per call, so this
//! module never has to ask.
//!
//! With pacing offload on ([`QuicSocket::pace_with_txtime`]), a batch whose
//! release time (quiche's pacer) is still ahead goes out through our own
//! `sendmsg` with an `SCM_TXTIME` control message, which quinn-udp does not
//! write; the `fq` qdisc then holds it until that time.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::{debug, warn};

/// The largest UDP payload: a receive buffer of this size never truncates.
pub(crate) const MAX_DATAGRAM: usize = u16::MAX as usize;

/// How a socket is set up: kernel buffer sizes (0 keeps the default) and
/// pacing offload (see [`QuicSocket::new`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SocketOptions {
    pub(crate) recv_buffer: usize,
    pub(crate) send_buffer: usize,
    pub(crate) txtime: bool,
}

impl SocketOptions {
    pub(crate) fn from_settings(s: &super::QuicSettings) -> Self {
        Self {
            recv_buffer: s.socket_recv_buffer_size,
            send_buffer: s.socket_send_buffer_size,
            txtime: s.offloads_pacing(),
        }
    }
}

/// A tokio UDP socket plus quinn-udp's offload state.
pub(crate) struct QuicSocket {
    io: UdpSocket,
    state: UdpSocketState,
    local: SocketAddr,
    /// `SO_TXTIME` is set: batches carry their release time.
    txtime: bool,
}

impl QuicSocket {
    /// Wraps a bound socket; enables GRO and packet-info where available,
    /// asks for kernel buffers of the given sizes, and offloads pacing
    /// where asked ([`pace_with_txtime`](Self::pace_with_txtime)).
    pub(crate) fn new(io: UdpSocket, opts: &SocketOptions) -> io::Result<Self> {
        let (recv_buffer, send_buffer) = (opts.recv_buffer, opts.send_buffer);
        let state = UdpSocketState::new((&io).into())?;
        let local = io.local_addr()?;
        // The kernel clamps to its maximum rather than failing; a refusal is
        // not worth failing the listener for, only a note in the log.
        if recv_buffer > 0 {
            if let Err(e) = state.set_recv_buffer_size((&io).into(), recv_buffer) {
                debug!(error = %e, "cannot set SO_RCVBUF");
            }
        }
        if send_buffer > 0 {
            if let Err(e) = state.set_send_buffer_size((&io).into(), send_buffer) {
                debug!(error = %e, "cannot set SO_SNDBUF");
            }
        }
        debug!(
            %local,
            recv_buffer = state.recv_buffer_size((&io).into()).unwrap_or(0),
            send_buffer = state.send_buffer_size((&io).into()).unwrap_or(0),
            "UDP socket ready"
        );
        Ok(Self {
            io,
            state,
            local,
            txtime: false,
        }
        .pace_with_txtime(opts.txtime))
    }

    /// Hands quiche's packet release times to the kernel (`SO_TXTIME`,
    /// `CLOCK_MONOTONIC`): the `fq` qdisc holds each batch until its time,
    /// which paces a connection without a timer per packet. Other qdiscs
    /// ignore the times (and `etf`, which wants `CLOCK_TAI`, drops such
    /// packets). Where the kernel refuses the option, sends stay unpaced,
    /// with a warning.
    fn pace_with_txtime(mut self, on: bool) -> Self {
        if !on {
            return self;
        }
        match set_txtime(&self.io) {
            Ok(()) => {
                debug!(local = %self.local, "SO_TXTIME on: pacing offloaded to the kernel");
                self.txtime = true;
            }
            Err(e) => {
                warn!(local = %self.local, error = %e, "cannot set SO_TXTIME; packets are sent unpaced")
            }
        }
        self
    }

    /// Whether batches carry their release time to the kernel.
    pub(crate) fn paces(&self) -> bool {
        self.txtime
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub(crate) fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.io.peer_addr()
    }

    /// How many datagrams one GRO buffer may hold (1 without GRO).
    pub(crate) fn gro_segments(&self) -> usize {
        self.state.gro_segments()
    }

    /// How many segments one GSO send may carry (1 without GSO).
    pub(crate) fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Waits for datagrams and fills `bufs`, returning how many metas are set.
    pub(crate) async fn recv(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        self.io
            .async_io(Interest::READABLE, || {
                self.state.recv((&self.io).into(), bufs, meta)
            })
            .await
    }

    /// Sends `contents` to `to`, as `contents.len() / segment` datagrams when
    /// `segment` is given, no earlier than `at` where pacing is offloaded.
    /// Waits while the socket buffer is full. True when the send carried a
    /// release time. The kernel's "connection refused" (an ICMP port
    /// unreachable on a connected socket) is returned; other errors are
    /// logged and swallowed, since QUIC recovers lost packets.
    pub(crate) async fn send(
        &self,
        to: SocketAddr,
        from: Option<IpAddr>,
        contents: &[u8],
        segment: Option<usize>,
        at: Option<Instant>,
    ) -> io::Result<bool> {
        // A time already past needs no control message: the packet may
        // leave now, by quinn-udp's path.
        if let Some(at) = at.filter(|at| self.paces() && *at > Instant::now()) {
            let v6 = self.local.is_ipv6();
            // The time is read again on each try: a send that waited for
            // room keeps its release time rather than moving it later.
            let res = self
                .io
                .async_io(Interest::WRITABLE, || {
                    txtime::send(&self.io, v6, to, from, contents, segment, at)
                })
                .await;
            match res {
                Ok(paced) => return Ok(paced),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Err(e),
                // Too large for the path (a PMTU probe): quinn-udp's path
                // would fail the same way, and QUIC copes with the loss.
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                    debug!(error = %e, "UDP send failed");
                    return Ok(false);
                }
                // Whatever else the kernel refused (EINVAL for a GSO
                // batch this route cannot take, or a source address gone),
                // quinn-udp knows how to work around: this one goes
                // unpaced. Not a reason to stop pacing the socket's other
                // connections.
                Err(e) => debug!(error = %e, "paced send failed; sending unpaced"),
            }
        }
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: segment,
            src_ip: from,
        };
        let res = self
            .io
            .async_io(Interest::WRITABLE, || {
                match self.state.try_send((&self.io).into(), &transmit) {
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock
                            || e.kind() == io::ErrorKind::ConnectionRefused =>
                    {
                        Err(e)
                    }
                    Err(e) => {
                        debug!(error = %e, "UDP send failed");
                        Ok(())
                    }
                    Ok(()) => Ok(()),
                }
            })
            .await;
        res.map(|()| false)
    }

    /// The address a datagram was sent to: the socket's own address, with the
    /// destination IP the kernel reported when the socket is bound to a
    /// wildcard address.
    pub(crate) fn local_for(&self, meta: &RecvMeta) -> SocketAddr {
        match meta.dst_ip {
            Some(ip) if self.local.ip().is_unspecified() => SocketAddr::new(ip, self.local.port()),
            _ => self.local,
        }
    }

    /// The source IP to pin on sends from `from`, needed only on wildcard sockets.
    pub(crate) fn source_ip(&self, from: SocketAddr) -> Option<IpAddr> {
        if self.local.ip().is_unspecified() && !from.ip().is_unspecified() {
            Some(from.ip())
        } else {
            None
        }
    }
}

/// Sets `SO_TXTIME` with `CLOCK_MONOTONIC` (the clock of `Instant` on Linux).
#[cfg(target_os = "linux")]
fn set_txtime(io: &UdpSocket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let cfg = libc::sock_txtime {
        clockid: libc::CLOCK_MONOTONIC,
        flags: 0,
    };
    // SAFETY: a valid socket, and an option value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            io.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TXTIME,
            (&cfg as *const libc::sock_txtime).cast(),
            std::mem::size_of::<libc::sock_txtime>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn set_txtime(_io: &UdpSocket) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "SO_TXTIME is Linux-only",
    ))
}

/// `sendmsg` with `SCM_TXTIME`, `UDP_SEGMENT` (GSO) and the source address
/// (`IP_PKTINFO` / `IPV6_PKTINFO`), the control messages quinn-udp would
/// write, plus the release time.
#[cfg(target_os = "linux")]
mod txtime {
    use std::io;
    use std::net::{IpAddr, SocketAddr};
    use std::os::fd::AsRawFd;
    use std::time::Instant;

    use tokio::net::UdpSocket;

    /// Sends `contents` to `to` (from a socket bound to an IPv6 address if
    /// `local_v6`), released at `at`; true if the release time was still
    /// ahead and went with it (else the packet leaves now).
    pub(super) fn send(
        io: &UdpSocket,
        local_v6: bool,
        to: SocketAddr,
        from: Option<IpAddr>,
        contents: &[u8],
        segment: Option<usize>,
        at: Instant,
    ) -> io::Result<bool> {
        // The kernel's time is read here, not converted from the
        // `Instant`, whose representation std does not promise.
        let ahead = at.saturating_duration_since(Instant::now());
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid clock id and a timespec to write.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        let release = (now.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(now.tv_nsec as u64)
            .saturating_add(ahead.as_nanos().min(u64::MAX as u128) as u64);
        // Peers of a dual-stack socket arrive with v4-mapped addresses
        // already; a plain IPv4 one given here is mapped the same way.
        let to = match to {
            SocketAddr::V4(v4) if local_v6 => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            other => other,
        };
        let dest = socket2::SockAddr::from(to);
        let mut iov = libc::iovec {
            iov_base: contents.as_ptr() as *mut libc::c_void,
            iov_len: contents.len(),
        };
        // Room for three control messages; u64s keep it aligned for cmsghdr.
        let mut control = [0u64; 16];
        // SAFETY: an all-zero msghdr is valid; the pointers set below
        // outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = dest.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = dest.len();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let mut used = 0usize;
        // SAFETY: each message is written within `control` (CMSG_NXTHDR
        // returns null past its end, checked), with the length the kernel
        // expects for its type.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            let mut put = |level: i32, kind: i32, data: &[u8]| -> io::Result<()> {
                if cmsg.is_null() {
                    return Err(io::Error::other("control buffer too small"));
                }
                (*cmsg).cmsg_level = level;
                (*cmsg).cmsg_type = kind;
                (*cmsg).cmsg_len = libc::CMSG_LEN(data.len() as u32) as _;
                std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(cmsg), data.len());
                used += libc::CMSG_SPACE(data.len() as u32) as usize;
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
                Ok(())
            };
            if !ahead.is_zero() {
                put(libc::SOL_SOCKET, libc::SCM_TXTIME, &release.to_ne_bytes())?;
            }
            if let Some(seg) = segment {
                let seg = u16::try_from(seg).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, "GSO segment over 64 KiB")
                })?;
                put(libc::SOL_UDP, libc::UDP_SEGMENT, &seg.to_ne_bytes())?;
            }
            match from {
                Some(IpAddr::V4(ip)) => {
                    let info = libc::in_pktinfo {
                        ipi_ifindex: 0,
                        ipi_spec_dst: libc::in_addr {
                            s_addr: u32::from_ne_bytes(ip.octets()),
                        },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    };
                    put(libc::IPPROTO_IP, libc::IP_PKTINFO, as_bytes(&info))?;
                }
                Some(IpAddr::V6(ip)) => {
                    let info = libc::in6_pktinfo {
                        ipi6_addr: libc::in6_addr {
                            s6_addr: ip.octets(),
                        },
                        ipi6_ifindex: 0,
                    };
                    put(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, as_bytes(&info))?;
                }
                None => {}
            }
        }
        msg.msg_controllen = used as _;
        if used == 0 {
            msg.msg_control = std::ptr::null_mut();
        }
        // SAFETY: msg points at live buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(io.as_raw_fd(), &msg, 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(!ahead.is_zero())
        }
    }

    /// The bytes of a plain C struct.
    fn as_bytes<T: Copy>(v: &T) -> &[u8] {
        // SAFETY: T is a plain-old-data libc struct with no padding read
        // as uninitialised by the kernel beyond its fields.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod txtime {
    use std::io;
    use std::net::{IpAddr, SocketAddr};
    use std::time::Instant;

    use tokio::net::UdpSocket;

    pub(super) fn send(
        _: &UdpSocket,
        _: bool,
        _: SocketAddr,
        _: Option<IpAddr>,
        _: &[u8],
        _: Option<usize>,
        _: Instant,
    ) -> io::Result<bool> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "SO_TXTIME is Linux-only",
        ))
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A paced socket and a receiver, or None (the test is skipped, with
    /// a note) where the machine has no such loopback address.
    async fn pair(local: &str) -> Option<(QuicSocket, UdpSocket)> {
        let (Ok(tx), Ok(rx)) = (UdpSocket::bind(local).await, UdpSocket::bind(local).await) else {
            eprintln!("skipped: cannot bind {local}");
            return None;
        };
        let opts = SocketOptions {
            txtime: true,
            ..Default::default()
        };
        let tx = QuicSocket::new(tx, &opts).unwrap();
        // Linux 4.19 and later take it: a refusal here is a bug in
        // `set_txtime`, not a kernel to skip.
        assert!(tx.paces(), "SO_TXTIME refused");
        Some((tx, rx))
    }

    /// The kernel checks every control message (a wrong length or level is
    /// EINVAL), and the GSO batch must arrive as its segments.
    #[tokio::test]
    async fn a_paced_gso_batch_arrives_as_its_segments() {
        for local in ["127.0.0.1:0", "[::1]:0"] {
            let Some((tx, rx)) = pair(local).await else {
                continue;
            };
            let to = rx.local_addr().unwrap();
            let mut batch = vec![b'a'; 1200];
            batch.extend(vec![b'b'; 1200]);
            batch.extend(vec![b'c'; 700]);
            let src = Some(tx.local_addr().ip());
            // Far enough ahead to still be ahead at the send on a busy
            // machine; loopback does not hold the packets that long.
            let at = Instant::now() + Duration::from_millis(200);
            let v6 = tx.local.is_ipv6();
            let paced = txtime::send(&tx.io, v6, to, src, &batch, Some(1200), at)
                .expect("the kernel accepts the control messages");
            assert!(paced, "sent with its release time");
            let paced = tx
                .send(
                    to,
                    src,
                    &batch,
                    Some(1200),
                    Some(Instant::now() + Duration::from_millis(200)),
                )
                .await
                .unwrap();
            assert!(paced, "a release time ahead takes the paced path");
            let mut buf = [0u8; 2000];
            for _ in 0..2 {
                for (fill, len) in [(b'a', 1200), (b'b', 1200), (b'c', 700)] {
                    let n = tokio::time::timeout(Duration::from_secs(5), rx.recv(&mut buf))
                        .await
                        .expect("a segment arrives")
                        .unwrap();
                    assert_eq!(n, len, "{local}");
                    assert!(buf[..n].iter().all(|&b| b == fill));
                }
            }
        }
    }

    #[tokio::test]
    async fn a_release_time_already_past_takes_the_plain_path() {
        let Some((tx, rx)) = pair("127.0.0.1:0").await else {
            return;
        };
        let to = rx.local_addr().unwrap();
        let paced = tx.send(to, None, b"now", None, Some(Instant::now()));
        assert!(
            !paced.await.unwrap(),
            "a time already past is not sent paced"
        );
        assert!(!tx.send(to, None, b"none", None, None).await.unwrap());
        let mut buf = [0u8; 16];
        assert_eq!(rx.recv(&mut buf).await.unwrap(), 3);
        assert_eq!(rx.recv(&mut buf).await.unwrap(), 4);
    }
}
