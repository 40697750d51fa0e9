//! QUIC variable-length integers (RFC 9000 §16), for the few places that read
//! or write wire bytes themselves instead of through quiche: splitting
//! coalesced packets, HTTP/3 frames and stream types.
//!
//! The two high bits of the first byte give the length (1, 2, 4 or 8 bytes);
//! the remaining bits, big-endian, give the value.
//!
//! ```
//! use tq_host::quic::varint;
//! let mut b = Vec::new();
//! varint::write(&mut b, 15_293).unwrap();
//! assert_eq!(b, [0x7b, 0xbd]);
//! assert_eq!(varint::read(&b), Some((15_293, 2)));
//! ```

/// The largest value a varint holds: 2^62 - 1.
pub const MAX: u64 = (1 << 62) - 1;

/// A value above [`MAX`] was given to [`write()`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} does not fit in a QUIC varint (at most 2^62 - 1)")]
pub struct VarintTooLarge(pub u64);

/// Reads the varint at the start of `b`: its value and how many bytes it
/// used. `None` when `b` is shorter than the length its first byte announces
/// (or empty).
pub fn read(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let len = 1usize << (first >> 6);
    let bytes = b.get(..len)?;
    let v = bytes[1..]
        .iter()
        .fold(u64::from(first & 0x3f), |v, &x| (v << 8) | u64::from(x));
    Some((v, len))
}

/// Appends `v` to `out` in the shortest encoding.
///
/// # Errors
/// [`VarintTooLarge`] when `v` exceeds [`MAX`]; nothing is written then. An
/// error rather than a clamp or a panic: clamping would put a different
/// number on the wire, and a peer's input must not be able to panic us.
/// Stream ids and lengths from quiche are always below [`MAX`], so callers
/// writing those may treat the error as unreachable.
pub fn write(out: &mut Vec<u8>, v: u64) -> Result<(), VarintTooLarge> {
    match v {
        0..=63 => out.push(v as u8),
        64..=16_383 => out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
        16_384..=1_073_741_823 => out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
        1_073_741_824..=MAX => out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
        _ => return Err(VarintTooLarge(v)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_at_every_length_boundary() {
        for (v, len) in [
            (0, 1),
            (63, 1),
            (64, 2),
            (16_383, 2),
            (16_384, 4),
            (1_073_741_823, 4),
            (1_073_741_824, 8),
            (MAX, 8),
        ] {
            let mut b = Vec::new();
            write(&mut b, v).unwrap();
            assert_eq!(b.len(), len, "{v}");
            assert_eq!(read(&b), Some((v, len)), "{v}");
        }
    }

    #[test]
    fn reads_rfc_9000_examples() {
        assert_eq!(read(&[0x25]), Some((37, 1)));
        assert_eq!(read(&[0x7b, 0xbd]), Some((15_293, 2)));
        assert_eq!(read(&[0x9d, 0x7f, 0x3e, 0x7d]), Some((494_878_333, 4)));
        assert_eq!(
            read(&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]),
            Some((151_288_809_941_952_652, 8))
        );
        // Trailing bytes are not part of the varint.
        assert_eq!(read(&[0x25, 0xff]), Some((37, 1)));
    }

    #[test]
    fn truncated_input_reads_nothing() {
        assert_eq!(read(&[]), None);
        assert_eq!(read(&[0x7b]), None);
        assert_eq!(read(&[0x40]), None);
        assert_eq!(read(&[0xc2, 0x19, 0x7c]), None);
    }

    #[test]
    fn too_large_is_refused_and_writes_nothing() {
        let mut b = vec![7];
        assert_eq!(write(&mut b, MAX + 1), Err(VarintTooLarge(MAX + 1)));
        assert_eq!(write(&mut b, u64::MAX), Err(VarintTooLarge(u64::MAX)));
        assert_eq!(b, [7]);
    }
}
