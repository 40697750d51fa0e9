//! Hash maps keyed by stream ids, with a cheap hash in place of SipHash:
//! they are looked up several times per request. The hash is fixed, so a
//! peer that keeps some streams open while opening others could pick ids
//! that collide; but a map holds only a connection's open streams, at
//! most the stream limit it was given (100 by default), so a lookup costs
//! at most that many probes, and only on that peer's own connection.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A map from a stream id.
pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;
/// A set of stream ids.
pub(crate) type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;

/// Hashes one `u64`: a multiply to spread it over the high bits, folded
/// back down, since stream ids of one kind differ only above their two
/// low bits (and hashbrown picks buckets from the low bits).
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        let h = (self.0 ^ (self.0 >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ (h >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; anything else still hashes.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn stream_ids_of_one_kind_spread_over_the_low_bits() {
        let b = BuildHasherDefault::<IdHasher>::default();
        // Client bidirectional ids: 0, 4, 8, ... The low 6 bits of their
        // hashes (64 buckets) must not leave most buckets empty.
        let mut used = [false; 64];
        for id in (0..64u64).map(|i| i * 4) {
            used[(b.hash_one(id) & 63) as usize] = true;
        }
        let n = used.iter().filter(|u| **u).count();
        assert!(n >= 32, "only {n} of 64 buckets");
        let mut m: IdMap<u64> = IdMap::default();
        for id in 0..10_000u64 {
            m.insert(id * 4 + 1, id);
        }
        assert_eq!(m.get(&(4 * 777 + 1)), Some(&777));
    }
}
