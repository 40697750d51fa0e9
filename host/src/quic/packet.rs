//! Reading incoming datagrams without decrypting them: what to do with a
//! datagram no connection claims, and where coalesced packets split.
//!
//! Pure functions over bytes and parsed headers, so the rules (what RFC 9000
//! lets a server answer, what it must drop) are unit-tested without sockets.

use super::varint;
use crate::metrics::PacketDropReason;

/// What a server does with a datagram whose destination id is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unrouted {
    /// A version we do not speak, in a datagram big enough to be an Initial:
    /// answer with version negotiation.
    NegotiateVersion,
    /// A well-formed client Initial: a new connection may start here.
    Initial,
    /// Nothing to answer; count it under this reason.
    Drop(PacketDropReason),
}

/// Classifies a datagram of `len` bytes, with header `hdr`, that matched no
/// connection.
pub(crate) fn classify_unrouted(hdr: &quiche::Header<'_>, len: usize) -> Unrouted {
    let long = hdr.ty != quiche::Type::Short;
    if long && !quiche::version_is_supported(hdr.version) {
        // RFC 9000 §6: answer only datagrams big enough to be an Initial,
        // so version negotiation cannot amplify an attack.
        return if len >= quiche::MIN_CLIENT_INITIAL_LEN {
            Unrouted::NegotiateVersion
        } else {
            Unrouted::Drop(PacketDropReason::Malformed)
        };
    }
    if hdr.ty != quiche::Type::Initial {
        return Unrouted::Drop(PacketDropReason::UnknownConnection);
    }
    // RFC 9000 §14.1: a client pads its first Initial to 1200 bytes, which is
    // what lets a server answer it without amplifying an attack.
    if len < quiche::MIN_CLIENT_INITIAL_LEN {
        return Unrouted::Drop(PacketDropReason::InitialTooSmall);
    }
    Unrouted::Initial
}

/// The length of the first packet in `buf` if it is a long-header packet
/// that carries a Length field (Initial, 0-RTT, Handshake) and other packets
/// follow it; `None` when it is the only or last one, or cannot be parsed.
pub(crate) fn coalesced_packet_len(buf: &[u8]) -> Option<usize> {
    let first = *buf.first()?;
    if first & 0x80 == 0 {
        return None; // short header: always last in a datagram
    }
    let mut off = 5; // first byte + version
    let dcid_len = *buf.get(off)? as usize;
    off += 1 + dcid_len;
    let scid_len = *buf.get(off)? as usize;
    off += 1 + scid_len;
    match (first & 0x30) >> 4 {
        0 => {
            // Initial: a token precedes the length.
            let (token_len, n) = varint::read(buf.get(off..)?)?;
            off += n + usize::try_from(token_len).ok()?;
        }
        1 | 2 => {}
        _ => return None, // Retry has no Length field
    }
    let (len, n) = varint::read(buf.get(off..)?)?;
    let end = off
        .checked_add(n)?
        .checked_add(usize::try_from(len).ok()?)?;
    (end < buf.len()).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A long-header datagram of `len` bytes: first byte, version, 1-byte
    /// dcid and scid, an empty token for Initials, then zeros.
    fn long_header(first: u8, version: u32, len: usize) -> Vec<u8> {
        let mut d = vec![first];
        d.extend_from_slice(&version.to_be_bytes());
        d.extend_from_slice(&[1, 0xaa, 1, 0xbb]);
        if first & 0x30 == 0 {
            d.push(0); // token length
        }
        d.resize(len.max(d.len()), 0);
        d
    }

    fn classify(mut d: Vec<u8>) -> Unrouted {
        let len = d.len();
        let hdr = quiche::Header::from_slice(&mut d, 16).expect("header parses");
        classify_unrouted(&hdr, len)
    }

    #[test]
    fn unrouted_datagrams_are_classified() {
        let big = quiche::MIN_CLIENT_INITIAL_LEN;
        let v1 = quiche::PROTOCOL_VERSION;
        assert_eq!(classify(long_header(0xc0, v1, big)), Unrouted::Initial);
        assert_eq!(
            classify(long_header(0xc0, v1, big - 1)),
            Unrouted::Drop(PacketDropReason::InitialTooSmall)
        );
        assert_eq!(
            classify(long_header(0xe0, v1, big)),
            Unrouted::Drop(PacketDropReason::UnknownConnection)
        );
        assert_eq!(
            classify(long_header(0xc0, 0x1a2a_3a4a, big)),
            Unrouted::NegotiateVersion
        );
        assert_eq!(
            classify(long_header(0xc0, 0x1a2a_3a4a, big - 1)),
            Unrouted::Drop(PacketDropReason::Malformed)
        );
        let mut short = vec![0x40];
        short.resize(big, 0);
        assert_eq!(
            classify(short),
            Unrouted::Drop(PacketDropReason::UnknownConnection)
        );
    }

    #[test]
    fn coalesced_packets_are_split_at_their_length() {
        // Handshake packet: dcid 2 bytes, scid 1 byte, length 3, then a short packet.
        let mut d = vec![0xe0, 0, 0, 0, 1, 2, 9, 9, 1, 8, 0x03, 1, 2, 3];
        let first = d.len();
        d.extend_from_slice(&[0x40, 1, 2, 3, 4]);
        assert_eq!(coalesced_packet_len(&d), Some(first));
        // Alone in its datagram: nothing to split.
        assert_eq!(coalesced_packet_len(&d[..first]), None);
        // Initial with a 2-byte token.
        let mut i = vec![0xc0, 0, 0, 0, 1, 1, 7, 0, 0x02, 5, 5, 0x01, 0xaa];
        let first = i.len();
        i.push(0x40);
        assert_eq!(coalesced_packet_len(&i), Some(first));
        // Truncated or short headers are not split.
        assert_eq!(coalesced_packet_len(&[0xc0, 0, 0]), None);
        assert_eq!(coalesced_packet_len(&[0x40, 1, 2]), None);
        // A length running past the datagram is not split either.
        assert_eq!(
            coalesced_packet_len(&[0xe0, 0, 0, 0, 1, 0, 0, 0x3f, 1]),
            None
        );
    }
}

/// Randomised datagrams (a short run here; `PROPTEST_CASES=N` for more).
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    /// Long headers with plausible fields, so the cases reach past the
    /// first byte; plus anything at all.
    fn datagram() -> impl Strategy<Value = Vec<u8>> {
        let long = (
            any::<u8>(),
            prop_oneof![Just(quiche::PROTOCOL_VERSION), Just(0), any::<u32>()],
            proptest::collection::vec(any::<u8>(), 0..24),
            proptest::collection::vec(any::<u8>(), 0..24),
            proptest::collection::vec(any::<u8>(), 0..1400),
        )
            .prop_map(|(first, version, dcid, scid, rest)| {
                let mut d = vec![first | 0x80];
                d.extend_from_slice(&version.to_be_bytes());
                d.push(dcid.len() as u8);
                d.extend_from_slice(&dcid);
                d.push(scid.len() as u8);
                d.extend_from_slice(&scid);
                d.extend_from_slice(&rest);
                d
            });
        prop_oneof![long, proptest::collection::vec(any::<u8>(), 0..1500)]
    }

    proptest! {
        #[test]
        fn any_datagram_is_classified_or_refused_never_a_panic(d in datagram()) {
            let len = d.len();
            let mut b = d.clone();
            if let Ok(hdr) = quiche::Header::from_slice(&mut b, 16) {
                let class = classify_unrouted(&hdr, len);
                // Nothing below the anti-amplification floor is answered.
                if len < quiche::MIN_CLIENT_INITIAL_LEN {
                    prop_assert!(matches!(class, Unrouted::Drop(_)));
                }
            }
            if let Some(n) = coalesced_packet_len(&d) {
                // A split point lies strictly inside the datagram.
                prop_assert!(n > 0 && n < d.len());
            }
        }
    }
}
