//! A lossy UDP relay for tests: sits between one client and a server on
//! loopback and drops and reorders a share of the datagrams each way, as a
//! bad network would (the QUIC Interop Runner's simulator, in miniature).
//! Seeded, so a failure can be replayed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::task::AbortOnDrop;

/// How the relay treats datagrams, in percent, each way.
#[derive(Debug, Clone, Copy)]
pub struct Impairment {
    /// Share of datagrams dropped.
    pub drop_percent: u64,
    /// Share of datagrams held back and sent after the next one.
    pub reorder_percent: u64,
    /// Seed of the relay's random choices.
    pub seed: u64,
}

/// What the relay did, for the test's report.
#[derive(Debug, Default)]
pub struct RelayCounts {
    /// Datagrams relayed.
    pub forwarded: AtomicU64,
    /// Datagrams dropped.
    pub dropped: AtomicU64,
    /// Datagrams sent out of order.
    pub reordered: AtomicU64,
}

/// A running relay; stops when dropped.
pub struct LossyRelay {
    _task: AbortOnDrop,
    /// Where the client sends: the relay's client-facing address.
    pub addr: SocketAddr,
    /// What the relay did so far.
    pub counts: Arc<RelayCounts>,
}

struct Rng(u64);

impl Rng {
    fn percent(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % 100
    }
}

/// One direction's choices: forward, drop, or hold back for later.
struct Lane {
    rng: Rng,
    held: Option<Vec<u8>>,
    how: Impairment,
}

impl Lane {
    /// The datagrams to send now for one that arrived, in order.
    fn pass(&mut self, d: Vec<u8>, counts: &RelayCounts) -> Vec<Vec<u8>> {
        let roll = self.rng.percent();
        if roll < self.how.drop_percent {
            counts.dropped.fetch_add(1, Ordering::Relaxed);
            return Vec::new();
        }
        if roll < self.how.drop_percent + self.how.reorder_percent && self.held.is_none() {
            counts.reordered.fetch_add(1, Ordering::Relaxed);
            self.held = Some(d);
            return Vec::new();
        }
        let mut out = vec![d];
        out.extend(self.held.take());
        counts
            .forwarded
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        out
    }
}

impl LossyRelay {
    /// Relays between the first client that sends to [`addr`](Self::addr)
    /// and `server`.
    pub async fn start(server: SocketAddr, how: Impairment) -> Self {
        let front = UdpSocket::bind("127.0.0.1:0").await.expect("relay socket");
        let back = UdpSocket::bind("127.0.0.1:0").await.expect("relay socket");
        back.connect(server).await.expect("relay connect");
        let addr = front.local_addr().expect("relay address");
        let counts = Arc::new(RelayCounts::default());
        let task = tokio::spawn(run(front, back, how, counts.clone()));
        Self {
            _task: AbortOnDrop(task),
            addr,
            counts,
        }
    }
}

async fn run(front: UdpSocket, back: UdpSocket, how: Impairment, counts: Arc<RelayCounts>) {
    // A datagram held back is sent after the next one, or after this long.
    const HOLD: Duration = Duration::from_millis(5);
    let mut up = Lane {
        rng: Rng(how.seed | 1),
        held: None,
        how,
    };
    let mut down = Lane {
        rng: Rng(how.seed.rotate_left(17) | 1),
        held: None,
        how,
    };
    let mut client: Option<SocketAddr> = None;
    let (mut a, mut b) = (vec![0u8; 65_536], vec![0u8; 65_536]);
    let mut flush_at: Option<tokio::time::Instant> = None;
    loop {
        if up.held.is_none() && down.held.is_none() {
            flush_at = None;
        } else if flush_at.is_none() {
            flush_at = Some(tokio::time::Instant::now() + HOLD);
        }
        let flush = async {
            match flush_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = front.recv_from(&mut a) => {
                let Ok((n, from)) = r else { return };
                client = Some(from);
                for d in up.pass(a[..n].to_vec(), &counts) {
                    let _ = back.send(&d).await;
                }
            }
            r = back.recv(&mut b) => {
                let Ok(n) = r else { return };
                let Some(to) = client else { continue };
                for d in down.pass(b[..n].to_vec(), &counts) {
                    let _ = front.send_to(&d, to).await;
                }
            }
            () = flush => {
                flush_at = None;
                if let Some(d) = up.held.take() {
                    let _ = back.send(&d).await;
                }
                if let (Some(d), Some(to)) = (down.held.take(), client) {
                    let _ = front.send_to(&d, to).await;
                }
            }
        }
    }
}
