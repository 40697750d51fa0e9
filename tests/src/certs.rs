//! Certificates for the loopback servers: a fresh self-signed certificate
//! per server, written to a temporary directory, which clients then trust.

use tq_host::quic::{self, ConnectionParams, QuicSettings};
use tq_host::tls::SelfSignedCertificate;

/// A certificate in a temporary directory, kept alive as long as this is.
pub struct TestCert {
    /// The certificate.
    pub cert: SelfSignedCertificate,
    /// Where `cert.pem` and `key.pem` are.
    pub paths: quic::TlsCertificatePaths,
    _dir: tempfile::TempDir,
}

impl TestCert {
    /// A fresh certificate for localhost and 127.0.0.1.
    pub fn new() -> Self {
        Self::for_names(&["localhost", "127.0.0.1"])
    }

    /// A fresh certificate for `names` (many names make a large one).
    pub fn for_names(names: &[&str]) -> Self {
        let cert = SelfSignedCertificate::generate(names).expect("cert");
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = cert.write_to(dir.path()).expect("write cert");
        Self {
            cert,
            paths,
            _dir: dir,
        }
    }

    /// Client parameters of ours with `settings` that trust this certificate.
    pub(crate) fn client_params(&self, settings: QuicSettings) -> ConnectionParams {
        ConnectionParams::new_client(settings).ca_file(&self.paths.cert)
    }
}

impl Default for TestCert {
    fn default() -> Self {
        Self::new()
    }
}
