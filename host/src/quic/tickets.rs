//! Session-ticket keys: what encrypts the TLS session tickets a server
//! hands out, so that a client's next connection resumes (one round trip
//! less, and 0-RTT where early data is on). Random per listener unless the
//! operator gives a [`SessionTicketKey`], which a fleet of hosts shares so
//! that each resumes the sessions of the others.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::QuicError;

/// A secret from which a server derives its session-ticket keys. Hosts
/// behind one address that share it resume each other's sessions (and
/// take each other's 0-RTT); without it, each listener has random keys and
/// a client that lands on another host makes a full handshake.
///
/// Anyone holding the secret can decrypt the tickets it made, and with them
/// the traffic of resumed sessions (TLS 1.3 resumption without a fresh key
/// exchange is not forward secret against the ticket key), so keep the file
/// as private as the certificate's key, and rotate it.
///
/// ```
/// use tq_host::quic::SessionTicketKey;
/// let key = SessionTicketKey::new(&[7u8; 32]).unwrap();
/// assert!(SessionTicketKey::new(b"too short").is_err());
/// # drop(key);
/// ```
#[derive(Clone)]
pub struct SessionTicketKey {
    secret: Arc<[u8]>,
    /// Where it was read from: a certificate reload reads it again, which
    /// is how the key is rotated.
    file: Option<PathBuf>,
}

impl std::fmt::Debug for SessionTicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTicketKey")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl SessionTicketKey {
    /// A key from a secret of at least 32 bytes.
    ///
    /// # Errors
    /// A shorter secret.
    pub fn new(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < 32 {
            return Err(format!(
                "a session-ticket key needs at least 32 bytes; this one has {}",
                secret.len()
            ));
        }
        Ok(Self {
            secret: Arc::from(secret),
            file: None,
        })
    }

    /// Reads a key file: 64 or more hex digits, or 32 or more raw bytes.
    /// A certificate reload (SIGHUP) reads the file again.
    ///
    /// # Errors
    /// The file cannot be read or holds too short a key.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let text = std::str::from_utf8(&bytes).map(str::trim).ok();
        let secret = text.and_then(super::decode_hex).unwrap_or(bytes);
        let mut key = Self::new(&secret).map_err(|e| format!("{}: {e}", path.display()))?;
        key.file = Some(path.to_owned());
        Ok(key)
    }

    /// The key as it is now: read again from its file, if it has one.
    pub(crate) fn current(&self) -> Result<Self, QuicError> {
        match &self.file {
            Some(f) => Self::from_file(f).map_err(QuicError::Tls),
            None => Ok(self.clone()),
        }
    }

    /// BoringSSL's 48 bytes (16 of key name, 16 of HMAC key, 16 of AES
    /// key), each part derived from the secret under its own label, so the
    /// name that travels in every ticket says nothing of the keys.
    fn ticket_keys(&self) -> TicketKeys {
        let mut k = [0u8; 48];
        for (part, label) in k.chunks_mut(16).zip([
            &b"tq-host ticket name"[..],
            b"tq-host ticket hmac",
            b"tq-host ticket aes",
        ]) {
            let mac =
                boring::hmac::Hmac::init(&self.secret, &boring::hash::MessageDigest::sha256())
                    .and_then(|mut h| {
                        h.update(label)?;
                        h.finalize()
                    })
                    // HMAC with a valid key fails only when allocation does;
                    // a hash of the same inputs is as good a derivation.
                    .unwrap_or_else(|_| {
                        boring::sha::sha256(&[&self.secret[..], label].concat()).to_vec()
                    });
            part.copy_from_slice(&mac[..16]);
        }
        TicketKeys(k)
    }
}

/// The keys one listener's TLS contexts share (see
/// [`ConnectionParams::to_quiche_config_with`](super::ConnectionParams)):
/// every socket of a listener then resumes the sessions of the others.
pub(crate) struct TicketKeys([u8; 48]);

impl TicketKeys {
    /// Fresh random keys.
    pub(crate) fn random() -> Result<Self, QuicError> {
        let mut k = [0u8; 48];
        boring::rand::rand_bytes(&mut k)
            .map_err(|e| QuicError::Tls(format!("cannot make session-ticket keys: {e}")))?;
        Ok(Self(k))
    }

    /// The keys for a listener with `key`: derived from it (read again from
    /// its file), or random without one.
    pub(crate) fn for_listener(key: Option<&SessionTicketKey>) -> Result<Self, QuicError> {
        match key {
            Some(k) => Ok(k.current()?.ticket_keys()),
            None => Self::random(),
        }
    }

    pub(crate) fn install(
        &self,
        ctx: &mut boring::ssl::SslContextBuilder,
    ) -> Result<(), QuicError> {
        // SAFETY: the context pointer is live for the call, and BoringSSL
        // reads exactly the 48 bytes it documents for this function.
        let ok = unsafe {
            boring_sys::SSL_CTX_set_tlsext_ticket_keys(
                ctx.as_ptr(),
                self.0.as_ptr().cast(),
                self.0.len(),
            )
        };
        if ok == 1 {
            Ok(())
        } else {
            Err(QuicError::Tls("cannot set the session-ticket keys".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_secret_gives_one_set_of_keys_and_files_are_read_as_hex_or_bytes() {
        let a = SessionTicketKey::new(&[1; 32]).unwrap().ticket_keys().0;
        assert_eq!(a, SessionTicketKey::new(&[1; 32]).unwrap().ticket_keys().0);
        assert_ne!(a, SessionTicketKey::new(&[2; 32]).unwrap().ticket_keys().0);
        assert_ne!(a[..16], a[16..32], "name and keys are derived apart");

        let dir = std::env::temp_dir().join(format!("tq-stek-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hex = dir.join("hex");
        std::fs::write(&hex, format!("{}\n", "01".repeat(32))).unwrap();
        let raw = dir.join("raw");
        std::fs::write(&raw, [1u8; 32]).unwrap();
        for f in [&hex, &raw] {
            let k = SessionTicketKey::from_file(f).unwrap();
            assert_eq!(k.current().unwrap().ticket_keys().0, a, "{}", f.display());
        }
        // The file is read again: a new secret there is a new key.
        std::fs::write(&raw, [2u8; 40]).unwrap();
        let k = SessionTicketKey::from_file(&hex).unwrap();
        let rotated = SessionTicketKey::from_file(&raw).unwrap();
        assert_ne!(rotated.current().unwrap().ticket_keys().0, a);
        std::fs::write(&hex, "abcd").unwrap();
        let err = k.current().unwrap_err().to_string();
        assert!(
            err.contains("at least 32 bytes") && err.contains("hex"),
            "{err}"
        );
        std::fs::remove_file(&hex).unwrap();
        let err = k.current().unwrap_err().to_string();
        assert!(err.contains("cannot read"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
