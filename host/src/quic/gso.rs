//! GSO batching: which outgoing packets may share one `sendmsg`.
//!
//! The kernel splits a GSO buffer into equal-sized segments, all to one
//! destination; only the last segment may be shorter. [`GsoBatch`] tracks a
//! batch being built at the front of the worker's send buffer and says when a
//! packet cannot join it. It does no IO, so the rules are unit-tested here and
//! the worker only sends what [`GsoBatch::take`] hands it.

use std::net::SocketAddr;
use std::time::Instant;

use super::socket::MAX_DATAGRAM;

/// How far apart the release times of one paced batch's packets may be.
pub(crate) const PACED_SPREAD: std::time::Duration = std::time::Duration::from_millis(1);

/// A batch of packets being written at the front of a send buffer.
#[derive(Debug)]
pub(crate) struct GsoBatch {
    max_segments: usize,
    /// Bytes written so far.
    len: usize,
    /// The size of every packet but possibly the last.
    segment: usize,
    count: usize,
    to: Option<SocketAddr>,
    from: Option<SocketAddr>,
    /// The release time quiche's pacer gave the batch's first packet.
    at: Option<Instant>,
}

/// A finished batch: the first `len` bytes of the send buffer, for one send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GsoSend {
    pub(crate) len: usize,
    /// The segment size to hand the kernel; `None` for a single packet.
    pub(crate) segment: Option<usize>,
    pub(crate) count: usize,
    pub(crate) to: SocketAddr,
    pub(crate) from: SocketAddr,
    /// When the batch may leave (with `SO_TXTIME`): its first packet's
    /// release time. (quiche works a packet's time out after counting it
    /// sent, so it is really the next packet's slot: the earliest time is
    /// the one to honour, as quiche's own example servers do.)
    pub(crate) at: Option<Instant>,
}

impl GsoBatch {
    /// An empty batch of at most `max_segments` packets (at least one).
    pub(crate) fn new(max_segments: usize) -> Self {
        Self {
            max_segments: max_segments.max(1),
            len: 0,
            segment: 0,
            count: 0,
            to: None,
            from: None,
            at: None,
        }
    }

    /// Where the next packet is to be written: the batch's bytes so far.
    pub(crate) fn offset(&self) -> usize {
        self.len
    }

    /// Whether a packet of up to `max` bytes may still be written into a
    /// buffer of `capacity` bytes and join this batch.
    pub(crate) fn has_room(&self, capacity: usize, max: usize) -> bool {
        capacity - self.len >= max && self.count < self.max_segments
    }

    /// Whether a packet of `n` bytes from `from` to `to`, just written at
    /// [`offset`](Self::offset), may join: one send has one destination and
    /// one source (a migrating client has packets for two paths). If not,
    /// the caller sends the batch ([`take`](Self::take)) and moves the
    /// packet to the front of the buffer.
    pub(crate) fn admits(&self, n: usize, to: SocketAddr, from: SocketAddr) -> bool {
        let same_path = self.to.is_none_or(|t| t == to) && self.from.is_none_or(|f| f == from);
        same_path && !(self.count > 0 && n > self.segment)
    }

    /// Adds the packet of `n` bytes written at [`offset`](Self::offset). Returns
    /// true when it ends the batch: a packet shorter than the segment size
    /// must be the last of a GSO send.
    pub(crate) fn push(&mut self, n: usize, to: SocketAddr, from: SocketAddr) -> bool {
        if self.count == 0 {
            self.segment = n;
            self.to = Some(to);
            self.from = Some(from);
        }
        self.len += n;
        self.count += 1;
        n < self.segment
    }

    /// With pacing offloaded, whether a packet of `n` bytes with release
    /// time `at` may join. The batch leaves as one burst at its first
    /// packet's time, so it takes only packets due within
    /// [`PACED_SPREAD`] of that, and at most `quantum` bytes: quiche's
    /// send quantum, the burst its pacer allows (under bbr2, the pacing
    /// rate times 50 us, one or two datagrams at least, 64 KiB at most).
    /// A 64 KiB burst would undo the pacing on a slow path.
    pub(crate) fn paced_admits(&self, at: Instant, n: usize, quantum: usize) -> bool {
        match self.at {
            None => true,
            Some(first) => at <= first + PACED_SPREAD && self.len + n <= quantum,
        }
    }

    /// Notes the release time quiche's pacer gave the packet about to be
    /// pushed: the batch leaves at the earliest.
    pub(crate) fn pace(&mut self, at: Instant) {
        self.at = Some(self.at.map_or(at, |a| a.min(at)));
    }

    /// Empties the batch, returning what to send, if anything.
    pub(crate) fn take(&mut self) -> Option<GsoSend> {
        let send = match (self.to, self.from) {
            (Some(to), Some(from)) if self.len > 0 => Some(GsoSend {
                len: self.len,
                segment: (self.count > 1).then_some(self.segment),
                count: self.count,
                to,
                from,
                at: self.at,
            }),
            _ => None,
        };
        self.len = 0;
        self.count = 0;
        self.to = None;
        self.at = None;
        send
    }
}

/// A send buffer with room for one full GSO batch of `max_segments` packets
/// of `max_payload` bytes, within the kernel's 64 KiB limit.
pub(crate) fn send_buffer_len(max_segments: usize, max_payload: usize) -> usize {
    (max_segments.clamp(1, 64) * max_payload.max(1500)).min(MAX_DATAGRAM)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn equal_packets_share_a_send_and_a_short_one_ends_it() {
        let (a, me) = (addr(1), addr(9));
        let mut b = GsoBatch::new(8);
        assert!(b.admits(1200, a, me));
        assert!(!b.push(1200, a, me));
        assert_eq!(b.offset(), 1200);
        assert!(b.admits(1200, a, me));
        assert!(!b.push(1200, a, me));
        assert!(b.admits(500, a, me));
        assert!(b.push(500, a, me), "a short packet closes the batch");
        assert_eq!(
            b.take(),
            Some(GsoSend {
                len: 2900,
                segment: Some(1200),
                count: 3,
                to: a,
                from: me,
                at: None,
            })
        );
        assert_eq!(b.take(), None, "take empties the batch");
        assert_eq!(b.offset(), 0);
    }

    #[test]
    fn a_larger_packet_or_another_destination_starts_a_new_batch() {
        let (a, c, me) = (addr(1), addr(2), addr(9));
        let mut b = GsoBatch::new(8);
        b.push(1000, a, me);
        assert!(!b.admits(1200, a, me));
        assert!(!b.admits(1000, c, me));
        assert!(b.admits(1000, a, me));
        let sent = b.take().unwrap();
        assert_eq!((sent.len, sent.segment, sent.count), (1000, None, 1));
        assert!(b.admits(1200, c, me), "an empty batch takes anything");
        b.push(1200, c, me);
        assert!(
            !b.admits(1200, c, addr(8)),
            "another source starts a new batch"
        );
        assert_eq!(b.take().map(|s| s.to), Some(c));
    }

    #[test]
    fn a_paced_batch_leaves_at_its_first_time_and_stays_small() {
        use std::time::Duration;
        let (a, me) = (addr(1), addr(9));
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_micros(n * 1000);
        let mut b = GsoBatch::new(64);
        assert!(
            b.paced_admits(ms(2), 1200, 3000),
            "an empty batch takes any"
        );
        b.pace(ms(2));
        b.push(1200, a, me);
        assert!(b.paced_admits(ms(3), 1200, 3000), "within the spread");
        assert!(!b.paced_admits(ms(3) + Duration::from_micros(1), 1200, 3000));
        b.pace(ms(3));
        b.push(1200, a, me);
        assert!(!b.paced_admits(ms(3), 1200, 3000), "past the quantum");
        assert!(b.paced_admits(ms(3), 600, 3000));
        let sent = b.take().unwrap();
        assert_eq!(sent.at, Some(ms(2)), "the first packet's time");
        b.push(1200, a, me);
        assert_eq!(b.take().unwrap().at, None, "take forgets the time");
    }

    #[test]
    fn room_is_bounded_by_buffer_and_segment_count() {
        let (a, me) = (addr(1), addr(9));
        let mut b = GsoBatch::new(2);
        assert!(b.has_room(3000, 1500));
        b.push(1500, a, me);
        assert!(b.has_room(3000, 1500));
        assert!(!b.has_room(2999, 1500));
        b.push(1500, a, me);
        assert!(!b.has_room(1_000_000, 1500), "at most max_segments");
        assert!(GsoBatch::new(0).has_room(1500, 1500), "at least one");
    }

    #[test]
    fn send_buffer_holds_one_batch_within_64k() {
        assert_eq!(send_buffer_len(1, 1200), 1500);
        assert_eq!(send_buffer_len(0, 1350), 1500);
        assert_eq!(send_buffer_len(10, 1500), 15_000);
        assert_eq!(send_buffer_len(64, 1500), MAX_DATAGRAM);
    }
}
