//! Stateless Retry tokens (RFC 9000 §8.1.2).
//!
//! A token is sealed with AES-256-GCM under a key drawn when the listener
//! starts, so only this listener can mint or open it. It carries the time it
//! was issued, the client's original destination connection id (which quiche
//! needs to authenticate the handshake) and the id we told the client to use
//! next; the client's address and port are the AEAD's associated data, so a
//! token replayed from another address fails to open.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use boring::symm::{decrypt_aead, encrypt_aead, Cipher};
use quiche::ConnectionId;

use super::cid::fill_random;

const FORMAT: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("token is malformed or was not minted here")]
    Invalid,
    #[error("token has expired")]
    Expired,
    #[error("token was issued for another connection id")]
    WrongConnectionId,
}

/// Mints and opens Retry tokens for one listener.
pub(crate) struct RetryTokens {
    key: [u8; 32],
    lifetime: Duration,
}

impl RetryTokens {
    pub(crate) fn new(lifetime: Duration) -> Self {
        let mut key = [0u8; 32];
        fill_random(&mut key);
        Self { key, lifetime }
    }

    /// A token for `peer`, remembering `odcid` and the `retry_scid` we hand out.
    pub(crate) fn mint(
        &self,
        peer: SocketAddr,
        odcid: &ConnectionId<'_>,
        retry_scid: &ConnectionId<'_>,
    ) -> Vec<u8> {
        let mut plain = Vec::with_capacity(8 + 2 + odcid.len() + retry_scid.len());
        plain.extend_from_slice(&unix_millis(SystemTime::now()).to_be_bytes());
        plain.push(odcid.len() as u8);
        plain.extend_from_slice(odcid);
        plain.push(retry_scid.len() as u8);
        plain.extend_from_slice(retry_scid);

        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce);
        let mut tag = [0u8; TAG_LEN];
        let sealed = encrypt_aead(
            Cipher::aes_256_gcm(),
            &self.key,
            Some(&nonce),
            &aad(peer),
            &plain,
            &mut tag,
        );
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plain.len() + TAG_LEN);
        out.push(FORMAT);
        out.extend_from_slice(&nonce);
        // Sealing with a valid key and nonce length cannot fail; should it,
        // the client gets an empty-bodied token that will simply not validate.
        out.extend_from_slice(&sealed.unwrap_or_default());
        out.extend_from_slice(&tag);
        out
    }

    /// Opens `token` sent by `peer` in an Initial addressed to `dcid`, and
    /// returns the original destination connection id it carries.
    pub(crate) fn validate(
        &self,
        token: &[u8],
        peer: SocketAddr,
        dcid: &ConnectionId<'_>,
    ) -> Result<ConnectionId<'static>, TokenError> {
        if token.len() < 1 + NONCE_LEN + TAG_LEN || token[0] != FORMAT {
            return Err(TokenError::Invalid);
        }
        let nonce = &token[1..1 + NONCE_LEN];
        let (sealed, tag) = token[1 + NONCE_LEN..].split_at(token.len() - 1 - NONCE_LEN - TAG_LEN);
        let plain = decrypt_aead(
            Cipher::aes_256_gcm(),
            &self.key,
            Some(nonce),
            &aad(peer),
            sealed,
            tag,
        )
        .map_err(|_| TokenError::Invalid)?;

        let mut r = plain.as_slice();
        let issued = u64::from_be_bytes(
            take(&mut r, 8)?
                .try_into()
                .map_err(|_| TokenError::Invalid)?,
        );
        let odcid_len = take(&mut r, 1)?[0] as usize;
        let odcid = take(&mut r, odcid_len)?.to_vec();
        let scid_len = take(&mut r, 1)?[0] as usize;
        let scid = take(&mut r, scid_len)?;

        let now = unix_millis(SystemTime::now());
        if now.saturating_sub(issued) > self.lifetime.as_millis() as u64 {
            return Err(TokenError::Expired);
        }
        if scid != dcid.as_ref() {
            return Err(TokenError::WrongConnectionId);
        }
        Ok(ConnectionId::from_vec(odcid))
    }
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Result<&'a [u8], TokenError> {
    if r.len() < n {
        return Err(TokenError::Invalid);
    }
    let (head, tail) = r.split_at(n);
    *r = tail;
    Ok(head)
}

fn aad(peer: SocketAddr) -> Vec<u8> {
    let mut a = match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
        std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    a.extend_from_slice(&peer.port().to_be_bytes());
    a
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (ConnectionId<'static>, ConnectionId<'static>) {
        (
            ConnectionId::from_vec(vec![1; 8]),
            ConnectionId::from_vec(vec![2; 16]),
        )
    }

    #[test]
    fn round_trip() {
        let t = RetryTokens::new(Duration::from_secs(10));
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let (odcid, scid) = ids();
        let tok = t.mint(peer, &odcid, &scid);
        assert_eq!(t.validate(&tok, peer, &scid).unwrap(), odcid);
    }

    #[test]
    fn other_address_other_id_or_tampering_fail() {
        let t = RetryTokens::new(Duration::from_secs(10));
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let (odcid, scid) = ids();
        let tok = t.mint(peer, &odcid, &scid);
        let other_port: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        assert_eq!(
            t.validate(&tok, other_port, &scid),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            t.validate(&tok, peer, &odcid),
            Err(TokenError::WrongConnectionId)
        );
        let mut bad = tok.clone();
        bad[20] ^= 1;
        assert_eq!(t.validate(&bad, peer, &scid), Err(TokenError::Invalid));
        assert_eq!(
            t.validate(&tok[..10], peer, &scid),
            Err(TokenError::Invalid)
        );
        let other_listener = RetryTokens::new(Duration::from_secs(10));
        assert_eq!(
            other_listener.validate(&tok, peer, &scid),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn expired_tokens_fail() {
        let t = RetryTokens::new(Duration::ZERO);
        let peer: SocketAddr = "[::1]:443".parse().unwrap();
        let (odcid, scid) = ids();
        let tok = t.mint(peer, &odcid, &scid);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(t.validate(&tok, peer, &scid), Err(TokenError::Expired));
    }
}

/// Randomised tokens (a short run here; `PROPTEST_CASES=N` for more).
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn tokens() -> &'static RetryTokens {
        static T: std::sync::OnceLock<RetryTokens> = std::sync::OnceLock::new();
        T.get_or_init(|| RetryTokens::new(Duration::from_secs(60)))
    }

    proptest! {
        #[test]
        fn made_up_tokens_never_validate(
            token in proptest::collection::vec(any::<u8>(), 0..200),
            dcid in proptest::collection::vec(any::<u8>(), 0..20),
            port in any::<u16>(),
        ) {
            let peer = SocketAddr::from(([127, 0, 0, 1], port));
            let r = tokens().validate(&token, peer, &ConnectionId::from_ref(&dcid));
            prop_assert!(r.is_err());
        }

        #[test]
        fn a_minted_token_validates_only_unchanged_for_its_peer(
            odcid in proptest::collection::vec(any::<u8>(), 0..20),
            scid in proptest::collection::vec(any::<u8>(), 1..20),
            port in 1..u16::MAX,
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let peer = SocketAddr::from(([10, 0, 0, 1], port));
            let scid = ConnectionId::from_ref(&scid);
            let tok = tokens().mint(peer, &ConnectionId::from_ref(&odcid), &scid);
            let back = tokens().validate(&tok, peer, &scid).expect("fresh token validates");
            prop_assert_eq!(back.as_ref(), odcid.as_slice());
            let mut bad = tok.clone();
            bad[flip.index(tok.len())] ^= 1 << bit;
            prop_assert!(tokens().validate(&bad, peer, &scid).is_err());
            let moved = SocketAddr::from(([10, 0, 0, 1], port - 1));
            prop_assert!(tokens().validate(&tok, moved, &scid).is_err());
        }
    }
}
