//! TLS sessions a [`Connector`](super::Connector) keeps from its
//! connections, so the next connection to the same server resumes (one
//! round trip less of TLS, and 0-RTT when the settings allow early data).
//! Bounded: the oldest server's session goes first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// How many servers' sessions one connector keeps.
const MAX_SERVERS: usize = 256;
/// A session larger than this is not kept (BoringSSL's are a few hundred
/// bytes to a few KiB, with the server's certificate chain).
const MAX_SESSION: usize = 64 << 10;

/// The latest session per server, most recently stored last.
#[derive(Debug, Default)]
pub(crate) struct SessionCache {
    entries: Mutex<VecDeque<(String, Vec<u8>)>>,
}

impl SessionCache {
    /// Takes the session kept for `server`, if any: a ticket is used once.
    pub(crate) fn take(&self, server: &str) -> Option<Vec<u8>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let at = entries.iter().position(|(k, _)| k == server)?;
        entries.remove(at).map(|(_, s)| s)
    }

    /// Keeps `session` for `server`, in place of any before.
    pub(crate) fn put(&self, server: &str, session: &[u8]) {
        if session.len() > MAX_SESSION {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(k, _)| k != server);
        if entries.len() >= MAX_SERVERS {
            entries.pop_front();
        }
        entries.push_back((server.to_owned(), session.to_vec()));
    }

    /// How many servers have a session.
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A client connection's way back to its connector's cache: the worker
/// offers the connection's session whenever quiche has a new one (a
/// NewSessionTicket arrived).
#[derive(Debug)]
pub(crate) struct SessionSink {
    cache: Arc<SessionCache>,
    server: String,
    last: Vec<u8>,
}

impl SessionSink {
    pub(crate) fn new(cache: Arc<SessionCache>, server: String) -> Self {
        Self {
            cache,
            server,
            last: Vec::new(),
        }
    }

    /// Stores the connection's session if it changed since last time.
    /// Only once the handshake is complete: the server is authenticated
    /// then, and a session from 0-RTT is the one the connection started
    /// with (already used).
    pub(crate) fn observe(&mut self, conn: &quiche::Connection) {
        if !conn.is_established() {
            return;
        }
        if let Some(s) = conn.session() {
            if s != self.last.as_slice() {
                self.cache.put(&self.server, s);
                self.last = s.to_vec();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_session_per_server_and_the_oldest_server_goes_first() {
        let c = SessionCache::default();
        c.put("a", b"1");
        c.put("a", b"2");
        assert_eq!(c.take("a").as_deref(), Some(&b"2"[..]));
        assert!(c.take("a").is_none(), "a ticket is used once");
        c.put("a", b"3");
        for i in 0..MAX_SERVERS {
            c.put(&format!("s{i}"), b"x");
        }
        assert_eq!(c.len(), MAX_SERVERS);
        assert!(c.take("a").is_none(), "the oldest server was dropped");
        c.put("big", &vec![0; MAX_SESSION + 1]);
        assert!(c.take("big").is_none());
    }
}
