//! An impairing UDP relay for tests: sits between one client and a server
//! on loopback and does to the datagrams each way what a bad network
//! would, as the QUIC Interop Runner's simulator does (in miniature): it
//! drops, reorders, corrupts and delays them, blacks the link out for a
//! while, or drops a list of the client's datagrams by number. Seeded, so a
//! failure can be replayed.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::task::AbortOnDrop;

/// How the relay treats datagrams; percentages apply each way.
#[derive(Debug, Clone, Default)]
pub struct Impairment {
    /// Share of datagrams dropped.
    pub drop_percent: u64,
    /// Share of datagrams held back and sent after the next one.
    pub reorder_percent: u64,
    /// Share of datagrams with one byte flipped (the runner's
    /// `corrupt-rate`).
    pub corrupt_percent: u64,
    /// Added to every datagram's trip, each way (the runner's longrtt: 750
    /// ms, so an RTT of 1.5 s).
    pub delay: Duration,
    /// From the client's first datagram, the link works for the first
    /// duration, then drops everything for the second, and again (the
    /// runner's blackhole: 5 s on, 2 s off).
    pub blackout: Option<(Duration, Duration)>,
    /// The client's datagrams, numbered from 1, that never reach the
    /// server (the runner's amplificationlimit drops 2 to 7).
    pub drop_to_server: Vec<u64>,
    /// Seed of the relay's random choices.
    pub seed: u64,
}

/// What the relay did, for the test's report and checks.
#[derive(Debug, Default)]
pub struct RelayCounts {
    /// Datagrams relayed.
    pub forwarded: AtomicU64,
    /// Datagrams dropped (at random, by the list, or in a blackout).
    pub dropped: AtomicU64,
    /// Datagrams sent out of order.
    pub reordered: AtomicU64,
    /// Datagrams corrupted.
    pub corrupted: AtomicU64,
    /// Bytes delivered to the server.
    pub bytes_to_server: AtomicU64,
    /// Bytes the server sent (counted as they arrive, delivered or not).
    pub bytes_from_server: AtomicU64,
    /// With `drop_to_server`: when the first client datagram after the
    /// last listed one arrived, the bytes delivered to the server so far
    /// and the bytes it had sent. Until then the server has heard from the
    /// client only what was delivered, and RFC 9000 §8.1 holds what it
    /// sends to three times that.
    pub before_list_ends: std::sync::Mutex<Option<(u64, u64)>>,
    /// Every client address datagrams came from, in the order first seen
    /// (a client that migrates shows up twice).
    pub clients_seen: std::sync::Mutex<Vec<SocketAddr>>,
}

/// A running relay; stops when dropped.
pub struct LossyRelay {
    _task: AbortOnDrop,
    /// Where the client sends: the relay's client-facing address.
    pub addr: SocketAddr,
    /// What the relay did so far.
    pub counts: Arc<RelayCounts>,
    server: Arc<std::sync::Mutex<SocketAddr>>,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn percent(&mut self) -> u64 {
        self.next() % 100
    }
}

/// One direction's choices, and its datagrams waiting for their time.
struct Lane {
    rng: Rng,
    held: Option<Vec<u8>>,
    how: Impairment,
    queue: VecDeque<(Instant, Vec<u8>)>,
}

impl Lane {
    fn new(how: &Impairment, seed: u64) -> Self {
        Self {
            rng: Rng(seed | 1),
            held: None,
            how: how.clone(),
            queue: VecDeque::new(),
        }
    }

    /// Takes one datagram that arrived: dropped, held back, or queued
    /// (with anything held back after it) to leave after the delay.
    fn take(&mut self, mut d: Vec<u8>, counts: &RelayCounts) {
        let roll = self.rng.percent();
        if roll < self.how.drop_percent {
            counts.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if roll < self.how.drop_percent + self.how.reorder_percent && self.held.is_none() {
            counts.reordered.fetch_add(1, Ordering::Relaxed);
            self.held = Some(d);
            return;
        }
        if self.rng.percent() < self.how.corrupt_percent && !d.is_empty() {
            let at = (self.rng.next() % d.len() as u64) as usize;
            d[at] ^= 1 << (self.rng.next() % 8);
            counts.corrupted.fetch_add(1, Ordering::Relaxed);
        }
        let due = Instant::now() + self.how.delay;
        self.queue.push_back((due, d));
        if let Some(h) = self.held.take() {
            self.queue.push_back((due, h));
        }
    }

    /// The held-back datagram goes out after all.
    fn release_held(&mut self) {
        if let Some(h) = self.held.take() {
            self.queue.push_back((Instant::now() + self.how.delay, h));
        }
    }

    /// The datagrams due by now.
    fn due(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while self.queue.front().is_some_and(|(t, _)| *t <= now) {
            out.extend(self.queue.pop_front().map(|(_, d)| d));
        }
        out
    }

    fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|(t, _)| *t)
    }
}

impl LossyRelay {
    /// Relays between the first client that sends to [`addr`](Self::addr)
    /// and `server`.
    pub async fn start(server: SocketAddr, how: Impairment) -> Self {
        let front = UdpSocket::bind("127.0.0.1:0").await.expect("relay socket");
        let back = UdpSocket::bind("127.0.0.1:0").await.expect("relay socket");
        let addr = front.local_addr().expect("relay address");
        let counts = Arc::new(RelayCounts::default());
        let target = Arc::new(std::sync::Mutex::new(server));
        let task = tokio::spawn(run(front, back, target.clone(), how, counts.clone()));
        Self {
            _task: AbortOnDrop(task),
            addr,
            counts,
            server: target,
        }
    }

    /// Sends the client's datagrams to `server` from now on, and takes
    /// only its answers: to the client, another host behind the same
    /// address (as behind a load balancer).
    pub fn retarget(&self, server: SocketAddr) {
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = server;
    }
}

/// Whether the link is blacked out at `now`, the first datagram having
/// come at `started`.
fn dark(how: &Impairment, started: Option<Instant>, now: Instant) -> bool {
    let (Some((on, off)), Some(started)) = (how.blackout, started) else {
        return false;
    };
    let period = (on + off).as_nanos().max(1);
    let into = now.duration_since(started).as_nanos() % period;
    into >= on.as_nanos()
}

async fn run(
    front: UdpSocket,
    back: UdpSocket,
    server: Arc<std::sync::Mutex<SocketAddr>>,
    how: Impairment,
    counts: Arc<RelayCounts>,
) {
    let target = || *server.lock().unwrap_or_else(|e| e.into_inner());
    // A datagram held back is sent after the next one, or after this long.
    const HOLD: Duration = Duration::from_millis(5);
    let mut started: Option<Instant> = None;
    let mut up = Lane::new(&how, how.seed);
    let mut down = Lane::new(&how, how.seed.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15);
    let list_end = how.drop_to_server.iter().copied().max().unwrap_or(0);
    let mut from_client = 0u64;
    let mut client: Option<SocketAddr> = None;
    let (mut a, mut b) = (vec![0u8; 65_536], vec![0u8; 65_536]);
    let mut held_since: Option<Instant> = None;
    loop {
        if up.held.is_none() && down.held.is_none() {
            held_since = None;
        } else if held_since.is_none() {
            held_since = Some(Instant::now());
        }
        let wake = [held_since.map(|t| t + HOLD), up.next_due(), down.next_due()]
            .into_iter()
            .flatten()
            .min();
        let timer = async {
            match wake {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = front.recv_from(&mut a) => {
                // An error (ICMP unreachable for an earlier send) is not the
                // end of the relay: a test must fail on its own terms, not
                // hang on a relay that stopped.
                let Ok((n, from)) = r else { continue };
                if client != Some(from) {
                    let mut seen = counts.clients_seen.lock().unwrap_or_else(|e| e.into_inner());
                    if !seen.contains(&from) {
                        seen.push(from);
                    }
                }
                client = Some(from);
                started.get_or_insert_with(Instant::now);
                from_client += 1;
                if how.drop_to_server.contains(&from_client) || dark(&how, started, Instant::now()) {
                    counts.dropped.fetch_add(1, Ordering::Relaxed);
                } else {
                    if list_end > 0 && from_client > list_end {
                        let mut snap = counts.before_list_ends.lock().unwrap_or_else(|e| e.into_inner());
                        if snap.is_none() {
                            *snap = Some((
                                counts.bytes_to_server.load(Ordering::Relaxed),
                                counts.bytes_from_server.load(Ordering::Relaxed),
                            ));
                        }
                    }
                    up.take(a[..n].to_vec(), &counts);
                }
            }
            r = back.recv_from(&mut b) => {
                let Ok((n, from)) = r else { continue };
                if from != target() {
                    continue;
                }
                counts.bytes_from_server.fetch_add(n as u64, Ordering::Relaxed);
                if client.is_none() {
                    continue;
                }
                if dark(&how, started, Instant::now()) {
                    counts.dropped.fetch_add(1, Ordering::Relaxed);
                } else {
                    down.take(b[..n].to_vec(), &counts);
                }
            }
            () = timer => {
                if held_since.is_some_and(|t| t + HOLD <= Instant::now()) {
                    held_since = None;
                    up.release_held();
                    down.release_held();
                }
            }
        }
        let now = Instant::now();
        for d in up.due(now) {
            counts.forwarded.fetch_add(1, Ordering::Relaxed);
            counts
                .bytes_to_server
                .fetch_add(d.len() as u64, Ordering::Relaxed);
            let _ = back.send_to(&d, target()).await;
        }
        if let Some(to) = client {
            for d in down.due(now) {
                counts.forwarded.fetch_add(1, Ordering::Relaxed);
                let _ = front.send_to(&d, to).await;
            }
        }
    }
}
