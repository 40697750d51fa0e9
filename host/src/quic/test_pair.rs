//! For unit tests: a quiche client and server connected in memory (no
//! sockets), whose packets the test moves by hand, so every step of an
//! application's hooks can be driven and inspected.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{ConnectionParams, QuicSettings, TlsCertificatePaths};
use crate::tls::SelfSignedCertificate;

/// The client's and the server's addresses.
pub(crate) const CLIENT: &str = "127.0.0.1:1111";
pub(crate) const SERVER: &str = "127.0.0.1:2222";

/// A fresh self-signed certificate for `localhost`, written to a new
/// directory of the temp dir named for `tag` (and this process, and a
/// count): the directory, for the test to remove, and the paths.
pub(crate) fn certificate_dir(tag: &str) -> (PathBuf, TlsCertificatePaths) {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tq-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let paths = SelfSignedCertificate::generate(&["localhost"])
        .unwrap()
        .write_to(&dir)
        .unwrap();
    (dir, paths)
}

/// A client and a server connection (handshake not yet run) with `settings`
/// on both sides; the server has a fresh self-signed certificate and the
/// client does not verify it.
pub(crate) fn connect(settings: QuicSettings) -> (quiche::Connection, quiche::Connection) {
    let (dir, paths) = certificate_dir("test-pair");
    let mut scfg = ConnectionParams::new_server(settings.clone(), paths)
        .to_quiche_config(true)
        .unwrap();
    let mut ccfg = ConnectionParams::new_client(settings)
        .verify_peer(false)
        .to_quiche_config(false)
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let (c, s): (SocketAddr, SocketAddr) = (CLIENT.parse().unwrap(), SERVER.parse().unwrap());
    let cid = quiche::ConnectionId::from_ref(&[1; 16]);
    let sid = quiche::ConnectionId::from_ref(&[2; 16]);
    let client = quiche::connect(Some("localhost"), &cid, c, s, &mut ccfg).unwrap();
    let server = quiche::accept(&sid, None, s, c, &mut scfg).unwrap();
    (client, server)
}

/// Moves every packet `from` has to send into `to`; returns how many.
pub(crate) fn flush(from: &mut quiche::Connection, to: &mut quiche::Connection) -> usize {
    let mut buf = [0u8; 65536];
    let mut n = 0;
    while let Ok((len, info)) = from.send(&mut buf) {
        let recv = quiche::RecvInfo {
            from: info.from,
            to: info.to,
        };
        let _ = to.recv(&mut buf[..len], recv);
        n += 1;
    }
    n
}
