//! Connection ids: how they are made, and the per-connection bookkeeping of
//! which ids the router must send to which worker.
//!
//! The router demultiplexes short-header packets by destination connection id,
//! and a short header does not carry the id's length, so every id a generator
//! makes must have the same length ([`ConnectionIdGenerator::connection_id_len`]).

use quiche::ConnectionId;

/// Makes the connection ids a server or client issues for itself.
///
/// Implement it to encode routing information (a server id for a load
/// balancer, say) into ids. Ids must be unpredictable to off-path attackers
/// and all of the same length.
///
/// ```
/// use tq_host::quic::{ConnectionIdGenerator, SimpleConnectionIdGenerator};
/// let g = SimpleConnectionIdGenerator::default();
/// let a = g.new_connection_id();
/// assert_eq!(a.len(), g.connection_id_len());
/// assert_ne!(a, g.new_connection_id());
/// ```
pub trait ConnectionIdGenerator: Send + Sync + 'static {
    /// A fresh id of [`connection_id_len`](Self::connection_id_len) bytes.
    fn new_connection_id(&self) -> ConnectionId<'static>;

    /// The length of every id this generator makes (at most 20).
    fn connection_id_len(&self) -> usize;

    /// A stateless reset token to pair with an id (RFC 9000 §10.3). The
    /// default draws 16 random bytes.
    fn new_reset_token(&self, _cid: &ConnectionId<'_>) -> u128 {
        let mut b = [0u8; 16];
        fill_random(&mut b);
        u128::from_be_bytes(b)
    }
}

/// Random ids of a fixed length (16 bytes by default) from BoringSSL's CSPRNG.
#[derive(Debug, Clone)]
pub struct SimpleConnectionIdGenerator {
    len: usize,
}

impl SimpleConnectionIdGenerator {
    /// A generator of `len`-byte ids; `len` is clamped to 4..=20.
    pub fn new(len: usize) -> Self {
        Self {
            len: len.clamp(4, quiche::MAX_CONN_ID_LEN),
        }
    }
}

impl Default for SimpleConnectionIdGenerator {
    fn default() -> Self {
        Self::new(16)
    }
}

impl ConnectionIdGenerator for SimpleConnectionIdGenerator {
    fn new_connection_id(&self) -> ConnectionId<'static> {
        let mut id = vec![0u8; self.len];
        fill_random(&mut id);
        ConnectionId::from_vec(id)
    }

    fn connection_id_len(&self) -> usize {
        self.len
    }
}

/// Fills `buf` from BoringSSL's CSPRNG.
pub(crate) fn fill_random(buf: &mut [u8]) {
    // RAND_bytes only fails on allocation failure of its internal state,
    // which BoringSSL treats as fatal anyway (it aborts).
    if boring::rand::rand_bytes(buf).is_err() {
        panic!("BoringSSL's RAND_bytes failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_clamped() {
        assert_eq!(SimpleConnectionIdGenerator::new(1).connection_id_len(), 4);
        assert_eq!(SimpleConnectionIdGenerator::new(64).connection_id_len(), 20);
        assert_eq!(
            SimpleConnectionIdGenerator::new(8)
                .new_connection_id()
                .len(),
            8
        );
    }
}
