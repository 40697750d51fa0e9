//! Active migration of a client connection (RFC 9000 §9): the application
//! hands over a new UDP socket (a new interface, a new address after a
//! network change), the worker moves the connection's active path to it
//! (quiche validates the path with PATH_CHALLENGE), and a forwarder feeds
//! what arrives on the new socket into the connection's inbox. The old
//! socket keeps being read until the connection ends, for packets still in
//! flight to it.

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::Arc;

use quinn_udp::RecvMeta;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::error::QuicError;
use super::route::Datagram;
use super::socket::{QuicSocket, MAX_DATAGRAM};

/// What a client connection's handle asks of its worker.
#[derive(Debug)]
pub(crate) enum WorkerCommand {
    /// Move to this socket (already connected to the server); the reply is
    /// the new local address.
    Migrate {
        socket: tokio::net::UdpSocket,
        reply: oneshot::Sender<Result<SocketAddr, QuicError>>,
    },
}

/// How many datagrams one receive call takes.
const RECV_BATCH: usize = 8;

/// Reads `socket` and queues what arrives for the connection, until `stop`
/// (the worker ended) or the inbox closes.
pub(crate) async fn forward(
    socket: Arc<QuicSocket>,
    inbox: mpsc::Sender<Datagram>,
    stop: CancellationToken,
) {
    let gro = socket.gro_segments().max(1);
    let buf_len = (gro * 1500).clamp(MAX_DATAGRAM, 64 * 1500);
    let mut bufs: Vec<Vec<u8>> = (0..RECV_BATCH).map(|_| vec![0u8; buf_len]).collect();
    let mut meta = [RecvMeta::default(); RECV_BATCH];
    let mut errors = 0u32;
    loop {
        let received = {
            let mut iovs: Vec<IoSliceMut<'_>> =
                bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            tokio::select! {
                () = stop.cancelled() => return,
                r = socket.recv(&mut iovs, &mut meta) => r,
            }
        };
        match received {
            Ok(n) => {
                errors = 0;
                for (m, buf) in meta.iter().zip(bufs.iter()).take(n) {
                    let to = socket.local_for(m);
                    for seg in buf[..m.len].chunks(m.stride.max(1)) {
                        let d = Datagram {
                            buf: seg.to_vec(),
                            from: m.addr,
                            to,
                        };
                        if inbox.send(d).await.is_err() {
                            return;
                        }
                    }
                }
            }
            // ICMP errors surface here on a connected socket; one that only
            // errors is given up.
            Err(e) => {
                errors += 1;
                debug!(error = %e, "recv error on a migrated socket");
                if errors > 1000 {
                    return;
                }
                tokio::task::yield_now().await;
            }
        }
    }
}
