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
/// Anyone holding the secret can make tickets the servers accept, and so
/// impersonate them to every client holding one of their tickets (a
/// resumed handshake shows no certificate), and can read the 0-RTT data
/// sent under those tickets; resumed 1-RTT traffic stays forward secret
/// (BoringSSL resumes with a fresh key exchange). Keep the file as private
/// as a certificate's key, and rotate it with a compromised certificate.
/// Every host sharing it takes the 0-RTT data of the others, so a captured
/// 0-RTT flight can be replayed to each of them.
///
/// Keys are derived per listener ([`for_listener`](Self::for_listener)):
/// one listener does not resume another's sessions, whose certificate and
/// application may differ.
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
    /// Mixed into every derived key: the listener's name.
    context: String,
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
            context: String::new(),
        })
    }

    /// The same secret, with keys of their own for the listener `name`:
    /// hosts agree as long as they name their listeners alike (the same
    /// configuration file), and two listeners of a host never accept each
    /// other's tickets.
    pub fn for_listener(&self, name: &str) -> Self {
        Self {
            context: name.to_owned(),
            ..self.clone()
        }
    }

    /// Reads a key file: 64 or more hex digits, or 32 or more raw bytes.
    /// A certificate reload (SIGHUP) reads the file again.
    ///
    /// # Errors
    /// The file cannot be read or holds too short a key.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let secret = read_secret(path)?;
        let mut key = Self::new(&secret).map_err(|e| format!("{}: {e}", path.display()))?;
        key.file = Some(path.to_owned());
        Ok(key)
    }

    /// Whether `other` holds the same secret.
    pub(crate) fn same_secret_as(&self, other: &Self) -> bool {
        self.secret == other.secret
    }

    /// The key as it is now: read again from its file, if it has one.
    pub(crate) fn current(&self) -> Result<Self, QuicError> {
        match &self.file {
            Some(f) => Ok(Self {
                context: self.context.clone(),
                ..Self::from_file(f).map_err(QuicError::Tls)?
            }),
            None => Ok(self.clone()),
        }
    }

    /// BoringSSL's 48 bytes (16 of key name, 16 of HMAC key, 16 of AES
    /// key), each part derived from the secret under its own label, so the
    /// name that travels in every ticket says nothing of the keys. The
    /// labels are longer than any connection id (20 bytes), so these MACs
    /// can never be a stateless reset token made from the same secret.
    fn ticket_keys(&self) -> Result<TicketKeys, QuicError> {
        let mut k = [0u8; 48];
        for (part, label) in k.chunks_mut(16).zip([
            "tq-host session ticket key name v1",
            "tq-host session ticket hmac key v1",
            "tq-host session ticket aes key v1",
        ]) {
            let mac =
                boring::hmac::Hmac::init(&self.secret, &boring::hash::MessageDigest::sha256())
                    .and_then(|mut h| {
                        h.update(label.as_bytes())?;
                        h.update(&[0])?;
                        h.update(self.context.as_bytes())?;
                        h.finalize()
                    })
                    // A host that derived other keys than its fleet would turn
                    // every resumption there into a full handshake, silently.
                    .map_err(|e| {
                        QuicError::Tls(format!("cannot derive session-ticket keys: {e}"))
                    })?;
            part.copy_from_slice(&mac[..16]);
        }
        Ok(TicketKeys(k))
    }
}

/// A key file's secret: hex digits (whitespace between them allowed, as
/// `xxd -p` wraps them), else the raw bytes. Warns, once per file, when
/// anyone may read it.
pub(crate) fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        static WARNED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
        let mode = meta.permissions().mode();
        if mode & 0o004 != 0 {
            let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
            if !warned.iter().any(|p| p == path) {
                warned.push(path.to_owned());
                tracing::warn!(file = %path.display(), mode = format!("{:o}", mode & 0o777), "a key file anyone can read: chmod o-r it");
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(&bytes) {
        let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        if digits.is_empty() {
            return Err(format!("{}: holds no key", path.display()));
        }
        if digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return super::decode_hex(&digits).ok_or_else(|| {
                format!(
                    "{}: an odd number of hex digits ({}); expected raw bytes or pairs of hex digits",
                    path.display(),
                    digits.len()
                )
            });
        }
    }
    Ok(bytes)
}

/// The keys one listener's TLS contexts share (see
/// [`ConnectionParams::to_quiche_config_with`](super::ConnectionParams)):
/// every socket of a listener then resumes the sessions of the others.
#[derive(Clone)]
pub(crate) struct TicketKeys([u8; 48]);

impl TicketKeys {
    /// Fresh random keys.
    pub(crate) fn random() -> Result<Self, QuicError> {
        let mut k = [0u8; 48];
        boring::rand::rand_bytes(&mut k)
            .map_err(|e| QuicError::Tls(format!("cannot make session-ticket keys: {e}")))?;
        Ok(Self(k))
    }

    /// The keys for a listener with `key`: derived from it as given, or
    /// random without one.
    pub(crate) fn for_listener(key: Option<&SessionTicketKey>) -> Result<Self, QuicError> {
        match key {
            Some(k) => k.ticket_keys(),
            None => Self::random(),
        }
    }

    /// As [`for_listener`](Self::for_listener), for a reload: the key read
    /// again from its file, if it has one.
    pub(crate) fn for_reload(key: Option<&SessionTicketKey>) -> Result<Self, QuicError> {
        match key {
            Some(k) => k.current()?.ticket_keys(),
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

    fn keys(k: &SessionTicketKey) -> [u8; 48] {
        k.ticket_keys().unwrap().0
    }

    #[test]
    fn one_secret_and_listener_give_one_set_of_keys_and_files_are_read_as_hex_or_bytes() {
        let k1 = SessionTicketKey::new(&[1; 32]).unwrap();
        let a = keys(&k1.for_listener("web"));
        assert_eq!(
            a,
            keys(&SessionTicketKey::new(&[1; 32]).unwrap().for_listener("web"))
        );
        assert_ne!(
            a,
            keys(&SessionTicketKey::new(&[2; 32]).unwrap().for_listener("web"))
        );
        assert_ne!(
            a,
            keys(&k1.for_listener("api")),
            "listeners get keys of their own"
        );
        assert_ne!(a[..16], a[16..32], "name and keys are derived apart");

        let dir = std::env::temp_dir().join(format!("tq-stek-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hex = dir.join("key-as-text");
        // Wrapped, as `xxd -p` writes it.
        std::fs::write(&hex, format!("{}\n{}\n", "01".repeat(30), "01".repeat(2))).unwrap();
        let raw = dir.join("key-as-bytes");
        std::fs::write(&raw, [1u8; 32]).unwrap();
        for f in [&hex, &raw] {
            let k = SessionTicketKey::from_file(f).unwrap().for_listener("web");
            assert_eq!(keys(&k.current().unwrap()), a, "{}", f.display());
        }
        // The file is read again, the listener kept: a new secret there is
        // a new key.
        let k = SessionTicketKey::from_file(&hex)
            .unwrap()
            .for_listener("web");
        std::fs::write(&hex, "02".repeat(40)).unwrap();
        let rotated = k.current().unwrap();
        assert_ne!(keys(&rotated), a);
        assert_eq!(
            keys(&rotated),
            keys(&SessionTicketKey::new(&[2; 40]).unwrap().for_listener("web"))
        );
        std::fs::write(&hex, "abcd").unwrap();
        let err = k.current().unwrap_err().to_string();
        assert!(
            err.contains("at least 32 bytes") && err.contains(&hex.display().to_string()),
            "{err}"
        );
        std::fs::write(&hex, "abc").unwrap();
        let err = k.current().unwrap_err().to_string();
        assert!(err.contains("odd number of hex digits"), "{err}");
        std::fs::remove_file(&hex).unwrap();
        let err = k.current().unwrap_err().to_string();
        assert!(
            err.contains("cannot read") && err.contains(&hex.display().to_string()),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// What a certificate reload does to the ticket keys.
#[cfg(test)]
mod reload_tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::quic::{ConnectionParams, QuicSettings, TlsReloader};

    #[test]
    fn a_reload_reads_the_key_file_again_and_keeps_the_keys_when_it_cannot() {
        let (dir, paths) = crate::quic::test_pair::certificate_dir("stek-reload");
        let file = dir.join("ticket-key");
        std::fs::write(&file, [3u8; 32]).unwrap();
        let key = SessionTicketKey::from_file(&file)
            .unwrap()
            .for_listener("web");
        let first = key.ticket_keys().unwrap().0;
        let params = ConnectionParams::new_server(QuicSettings::default(), paths.clone())
            .session_ticket_key(key);
        let (updates, _rx) = tokio::sync::watch::channel(0u64);
        let reloader = TlsReloader {
            keys: Arc::new(Mutex::new(
                TicketKeys::for_listener(params.session_ticket_key.as_ref()).unwrap(),
            )),
            params: Arc::new(params),
            updates: Arc::new(updates),
            slots: Default::default(),
            sockets: 1,
        };
        let in_use = || reloader.keys.lock().unwrap().0;
        assert_eq!(in_use(), first);
        // The file unchanged: the same keys (sessions survive a reload).
        reloader.reload().unwrap();
        assert_eq!(in_use(), first);
        // Replaced: new keys.
        std::fs::write(&file, [4u8; 32]).unwrap();
        reloader.reload().unwrap();
        let second = in_use();
        assert_ne!(second, first);
        // Gone: the certificate still reloads, the keys in use stay.
        std::fs::remove_file(&file).unwrap();
        reloader.reload().unwrap();
        assert_eq!(in_use(), second);
        // A certificate refused: nothing changes, the new file's keys
        // included (they were never installed).
        std::fs::write(&file, [5u8; 32]).unwrap();
        std::fs::write(&paths.cert, "not a certificate").unwrap();
        assert!(reloader.reload().is_err());
        assert_eq!(in_use(), second);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
