//! Connection ids: how they are made, and the per-connection bookkeeping of
//! which ids the router must send to which worker.
//!
//! The router demultiplexes short-header packets by destination connection id,
//! and a short header does not carry the id's length, so every id a generator
//! makes must have the same length ([`ConnectionIdGenerator::connection_id_len`]).

use std::sync::Arc;

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

    /// A stateless reset token to pair with an id (RFC 9000 §10.3): the
    /// keyed one ([`reset_token_for`](Self::reset_token_for)) if there is
    /// one, else 16 random bytes.
    fn new_reset_token(&self, cid: &ConnectionId<'_>) -> u128 {
        self.reset_token_for(cid).unwrap_or_else(|| {
            let mut b = [0u8; 16];
            fill_random(&mut b);
            u128::from_be_bytes(b)
        })
    }

    /// The token of `cid` derived from a static key, if the generator has
    /// one: then the server can answer a packet for an id it no longer
    /// knows (after a restart, say) with a stateless reset the client
    /// believes. `None` (the default): tokens are random and no resets are
    /// sent.
    fn reset_token_for(&self, _cid: &[u8]) -> Option<u128> {
        None
    }
}

/// A static key for stateless reset tokens: token = the first 16 bytes of
/// HMAC-SHA256(key, connection id). Every host that shares the key (and
/// every restart of one) gives an id the same token.
#[derive(Clone)]
pub struct StatelessResetKey(Arc<[u8]>);

impl std::fmt::Debug for StatelessResetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatelessResetKey(..)")
    }
}

impl StatelessResetKey {
    /// A key of at least 32 bytes.
    ///
    /// # Errors
    /// A shorter key.
    pub fn new(key: &[u8]) -> Result<Self, String> {
        if key.len() < 32 {
            return Err(format!(
                "a stateless reset key needs at least 32 bytes; this one has {}",
                key.len()
            ));
        }
        Ok(Self(Arc::from(key)))
    }

    /// Reads a key file: 64 or more hex digits (whitespace between them
    /// allowed), or 32 or more raw bytes.
    ///
    /// # Errors
    /// The file cannot be read or holds too short a key.
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let key = super::tickets::read_secret(path)?;
        Self::new(&key).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The token of `cid`.
    pub fn token(&self, cid: &[u8]) -> u128 {
        let mac = boring::hmac::Hmac::init(&self.0, &boring::hash::MessageDigest::sha256())
            .and_then(|mut h| {
                h.update(cid)?;
                h.finalize()
            })
            // HMAC with a valid key cannot fail short of allocation
            // failure; fall back to a hash so a token still exists.
            .unwrap_or_else(|_| boring::sha::sha256(&[&self.0[..], cid].concat()).to_vec());
        let mut t = [0u8; 16];
        t.copy_from_slice(&mac[..16]);
        u128::from_be_bytes(t)
    }
}

/// Hex digits to bytes, or `None` if `s` is not an even run of them.
pub(crate) fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Connection ids that carry a server id in the plaintext form of QUIC-LB
/// (draft-ietf-quic-load-balancers §5.2): a first octet whose top three
/// bits are the config rotation codepoint and whose low five the id's
/// length minus one, then the server id, then a random nonce. A QUIC-LB
/// load balancer configured with the same server id length reads the
/// server id from any packet of the connection, from whatever address, and
/// routes it to its host.
///
/// ```
/// use tq_host::quic::{ConnectionIdGenerator, ServerIdConnectionIdGenerator};
/// let g = ServerIdConnectionIdGenerator::new(vec![0x0a, 0x01], 0).unwrap();
/// let cid = g.new_connection_id();
/// assert_eq!(ServerIdConnectionIdGenerator::decode(&cid, 2), Some(&[0x0a, 0x01][..]));
/// ```
#[derive(Debug, Clone)]
pub struct ServerIdConnectionIdGenerator {
    server_id: Vec<u8>,
    config_id: u8,
    nonce_len: usize,
    reset_key: Option<StatelessResetKey>,
}

impl ServerIdConnectionIdGenerator {
    /// Ids of `server_id` (1 to 15 bytes) under config rotation codepoint
    /// `config_id` (0 to 6; 7 means "unroutable" in QUIC-LB). Ids are 16
    /// bytes long when the server id leaves room for an 8-byte or longer
    /// nonce, else 1 + server id + 8 bytes.
    ///
    /// # Errors
    /// A server id or config id out of range.
    pub fn new(server_id: Vec<u8>, config_id: u8) -> Result<Self, String> {
        if server_id.is_empty() || server_id.len() > 15 {
            return Err(format!(
                "a server id has 1 to 15 bytes; this one has {}",
                server_id.len()
            ));
        }
        if config_id > 6 {
            return Err(format!(
                "the config rotation codepoint is 0 to 6 (7 is reserved); got {config_id}"
            ));
        }
        let nonce_len = (15 - server_id.len()).max(8);
        Ok(Self {
            server_id,
            config_id,
            nonce_len,
            reset_key: None,
        })
    }

    /// Derives reset tokens from `key` (see [`StatelessResetKey`]).
    pub fn with_reset_key(mut self, key: StatelessResetKey) -> Self {
        self.reset_key = Some(key);
        self
    }

    /// The server id an id of this form carries, given the fleet's server
    /// id length; `None` if `cid` is too short or its first octet does not
    /// describe its length.
    pub fn decode(cid: &[u8], server_id_len: usize) -> Option<&[u8]> {
        let first = *cid.first()?;
        if usize::from(first & 0x1f) + 1 != cid.len() || (first >> 5) == 7 {
            return None;
        }
        cid.get(1..1 + server_id_len)
    }

    /// This generator's server id.
    pub fn server_id(&self) -> &[u8] {
        &self.server_id
    }
}

impl ConnectionIdGenerator for ServerIdConnectionIdGenerator {
    fn new_connection_id(&self) -> ConnectionId<'static> {
        let len = self.connection_id_len();
        let mut id = vec![0u8; len];
        id[0] = (self.config_id << 5) | ((len - 1) as u8 & 0x1f);
        id[1..1 + self.server_id.len()].copy_from_slice(&self.server_id);
        fill_random(&mut id[1 + self.server_id.len()..]);
        ConnectionId::from_vec(id)
    }

    fn connection_id_len(&self) -> usize {
        1 + self.server_id.len() + self.nonce_len
    }

    /// Only for ids that carry this host's server id: with a key shared
    /// by a fleet, a host must never hand out the token of another host's
    /// connection (anyone who saw the id on the wire could then reset it,
    /// RFC 9000 §10.3.2).
    fn reset_token_for(&self, cid: &[u8]) -> Option<u128> {
        let key = self.reset_key.as_ref()?;
        (Self::decode(cid, self.server_id.len()) == Some(&self.server_id[..]))
            .then(|| key.token(cid))
    }
}

/// Random ids of a fixed length (16 bytes by default) from BoringSSL's CSPRNG.
#[derive(Debug, Clone)]
pub struct SimpleConnectionIdGenerator {
    len: usize,
    reset_key: Option<StatelessResetKey>,
}

impl SimpleConnectionIdGenerator {
    /// A generator of `len`-byte ids; `len` is clamped to 4..=20.
    pub fn new(len: usize) -> Self {
        Self {
            len: len.clamp(4, quiche::MAX_CONN_ID_LEN),
            reset_key: None,
        }
    }

    /// Derives reset tokens from `key` (see [`StatelessResetKey`]).
    pub fn with_reset_key(mut self, key: StatelessResetKey) -> Self {
        self.reset_key = Some(key);
        self
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

    fn reset_token_for(&self, cid: &[u8]) -> Option<u128> {
        self.reset_key.as_ref().map(|k| k.token(cid))
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
    fn server_ids_decode_and_fleets_do_not_collide() {
        let a = ServerIdConnectionIdGenerator::new(vec![0x0a, 0x01], 1).unwrap();
        let b = ServerIdConnectionIdGenerator::new(vec![0x0b, 0x02], 1).unwrap();
        for _ in 0..1000 {
            let (ia, ib) = (a.new_connection_id(), b.new_connection_id());
            assert_eq!(ia.len(), a.connection_id_len());
            assert_eq!(ia[0] >> 5, 1, "config rotation bits");
            assert_eq!(
                ServerIdConnectionIdGenerator::decode(&ia, 2),
                Some(&[0x0a, 0x01][..])
            );
            assert_eq!(
                ServerIdConnectionIdGenerator::decode(&ib, 2),
                Some(&[0x0b, 0x02][..])
            );
        }
        assert_eq!(a.connection_id_len(), 16);
        let long = ServerIdConnectionIdGenerator::new(vec![7; 15], 0).unwrap();
        assert_eq!(long.connection_id_len(), 1 + 15 + 8);
        assert!(ServerIdConnectionIdGenerator::new(vec![], 0).is_err());
        assert!(ServerIdConnectionIdGenerator::new(vec![1; 16], 0).is_err());
        assert!(ServerIdConnectionIdGenerator::new(vec![1], 7).is_err());
        // Random ids mostly do not pass for QUIC-LB ones.
        assert_eq!(ServerIdConnectionIdGenerator::decode(&[0xff; 16], 2), None);
    }

    #[test]
    fn keyed_reset_tokens_are_stable_and_per_id() {
        let key = StatelessResetKey::new(&[7u8; 32]).unwrap();
        let g1 = SimpleConnectionIdGenerator::default().with_reset_key(key.clone());
        let g2 = SimpleConnectionIdGenerator::default().with_reset_key(key);
        let cid = g1.new_connection_id();
        assert_eq!(g1.new_reset_token(&cid), g2.new_reset_token(&cid));
        assert_ne!(
            g1.reset_token_for(b"one").unwrap(),
            g1.reset_token_for(b"two").unwrap()
        );
        assert!(SimpleConnectionIdGenerator::default()
            .reset_token_for(b"x")
            .is_none());
        // A fleet's host resets only its own connections.
        let key = StatelessResetKey::new(&[7u8; 32]).unwrap();
        let a = ServerIdConnectionIdGenerator::new(vec![1, 1], 0)
            .unwrap()
            .with_reset_key(key.clone());
        let b = ServerIdConnectionIdGenerator::new(vec![2, 2], 0)
            .unwrap()
            .with_reset_key(key);
        let ida = a.new_connection_id();
        assert!(a.reset_token_for(&ida).is_some());
        assert!(b.reset_token_for(&ida).is_none());
        assert!(StatelessResetKey::new(&[1; 31]).is_err());
        assert_eq!(decode_hex("0a1B"), Some(vec![0x0a, 0x1b]));
        assert_eq!(decode_hex("0a1"), None);
    }

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
