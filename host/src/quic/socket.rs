//! A UDP socket with the kernel's batching offloads.
//!
//! `quinn-udp` does the platform work: `recvmmsg` with GRO (several datagrams
//! coalesced into one buffer, split again by `stride`) and `sendmsg` with GSO
//! (one buffer of equal-sized segments sent as many datagrams). Where the
//! kernel lacks either, quinn-udp falls back to one datagram per call, so this
//! module never has to ask.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::debug;

/// The largest UDP payload: a receive buffer of this size never truncates.
pub(crate) const MAX_DATAGRAM: usize = u16::MAX as usize;

/// A tokio UDP socket plus quinn-udp's offload state.
pub(crate) struct QuicSocket {
    io: UdpSocket,
    state: UdpSocketState,
    local: SocketAddr,
}

impl QuicSocket {
    /// Wraps a bound socket; enables GRO and packet-info where available and
    /// asks for kernel buffers of the given sizes (0 keeps the default).
    pub(crate) fn new(io: UdpSocket, recv_buffer: usize, send_buffer: usize) -> io::Result<Self> {
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
        Ok(Self { io, state, local })
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
    /// `segment` is given. Waits while the socket buffer is full. The kernel's
    /// "connection refused" (an ICMP port unreachable on a connected socket)
    /// is returned; other errors are logged and swallowed, since QUIC
    /// recovers lost packets.
    pub(crate) async fn send(
        &self,
        to: SocketAddr,
        from: Option<IpAddr>,
        contents: &[u8],
        segment: Option<usize>,
    ) -> io::Result<()> {
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
        res
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
