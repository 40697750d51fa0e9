//! Self-signed certificates, so a first run (and every test) needs no PKI.
//!
//! The certificate is an ECDSA P-256 one, valid from an hour ago (tolerating
//! clock skew) for [`SelfSignedCertificate::VALID_DAYS`] days, naming the
//! given DNS names and IP addresses in its subjectAltName.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use boring::asn1::Asn1Time;
use boring::bn::{BigNum, MsbOption};
use boring::ec::{EcGroup, EcKey};
use boring::hash::MessageDigest;
use boring::nid::Nid;
use boring::pkey::PKey;
use boring::x509::extension::{BasicConstraints, SubjectAlternativeName};
use boring::x509::{X509NameBuilder, X509};

use crate::quic::{QuicError, TlsCertificatePaths};

/// A freshly made certificate and its key.
#[derive(Clone)]
pub struct SelfSignedCertificate {
    /// The certificate, PEM.
    pub cert_pem: Vec<u8>,
    /// The private key, PKCS#8 PEM.
    pub key_pem: Vec<u8>,
    /// The certificate, DER (what rustls-based clients want to trust).
    pub cert_der: Vec<u8>,
    /// SHA-256 of the DER certificate (for pinning in clients).
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for SelfSignedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfSignedCertificate")
            .field("sha256", &hex(&self.sha256))
            .finish_non_exhaustive()
    }
}

fn tls_err(what: &'static str) -> impl Fn(boring::error::ErrorStack) -> QuicError {
    move |e| QuicError::Tls(format!("cannot make self-signed certificate ({what}): {e}"))
}

impl SelfSignedCertificate {
    /// How long a generated certificate is valid.
    pub const VALID_DAYS: u32 = 30;

    /// Makes a certificate for `names`: each is a DNS name, or an IP address
    /// when it parses as one.
    ///
    /// ```
    /// let c = tq_host::tls::SelfSignedCertificate::generate(&["localhost", "127.0.0.1"]).unwrap();
    /// assert!(String::from_utf8_lossy(&c.cert_pem).starts_with("-----BEGIN CERTIFICATE-----"));
    /// ```
    ///
    /// # Errors
    /// BoringSSL failures, reported as [`QuicError::Tls`].
    pub fn generate(names: &[&str]) -> Result<Self, QuicError> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(tls_err("curve"))?;
        let key = PKey::from_ec_key(EcKey::generate(&group).map_err(tls_err("key"))?)
            .map_err(tls_err("key"))?;

        let mut name = X509NameBuilder::new().map_err(tls_err("name"))?;
        name.append_entry_by_text("CN", names.first().copied().unwrap_or("tq-host"))
            .map_err(tls_err("name"))?;
        let name = name.build();

        let mut b = X509::builder().map_err(tls_err("builder"))?;
        b.set_version(2).map_err(tls_err("version"))?;
        let mut serial = BigNum::new().map_err(tls_err("serial"))?;
        serial
            .rand(127, MsbOption::MAYBE_ZERO, false)
            .map_err(tls_err("serial"))?;
        let serial = serial.to_asn1_integer().map_err(tls_err("serial"))?;
        b.set_serial_number(&serial).map_err(tls_err("serial"))?;
        b.set_subject_name(&name).map_err(tls_err("subject"))?;
        b.set_issuer_name(&name).map_err(tls_err("issuer"))?;
        b.set_pubkey(&key).map_err(tls_err("pubkey"))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let not_before = Asn1Time::from_unix(now - 3600).map_err(tls_err("validity"))?;
        let not_after = Asn1Time::days_from_now(Self::VALID_DAYS).map_err(tls_err("validity"))?;
        b.set_not_before(&not_before).map_err(tls_err("validity"))?;
        b.set_not_after(&not_after).map_err(tls_err("validity"))?;
        let mut san = SubjectAlternativeName::new();
        for n in names {
            if n.parse::<IpAddr>().is_ok() {
                san.ip(n);
            } else {
                san.dns(n);
            }
        }
        let san = san
            .build(&b.x509v3_context(None, None))
            .map_err(tls_err("SAN"))?;
        b.append_extension(&san).map_err(tls_err("SAN"))?;
        let bc = BasicConstraints::new()
            .critical()
            .build()
            .map_err(tls_err("constraints"))?;
        b.append_extension(&bc).map_err(tls_err("constraints"))?;
        b.sign(&key, MessageDigest::sha256())
            .map_err(tls_err("sign"))?;
        let cert = b.build();

        let cert_der = cert.to_der().map_err(tls_err("encode"))?;
        let digest =
            boring::hash::hash(MessageDigest::sha256(), &cert_der).map_err(tls_err("hash"))?;
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&digest);
        Ok(Self {
            cert_pem: cert.to_pem().map_err(tls_err("encode"))?,
            key_pem: key.private_key_to_pem_pkcs8().map_err(tls_err("encode"))?,
            cert_der,
            sha256,
        })
    }

    /// Writes `cert.pem` and `key.pem` into `dir` (the key readable by the
    /// owner only) and returns their paths.
    ///
    /// # Errors
    /// File-system errors.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<TlsCertificatePaths> {
        std::fs::create_dir_all(dir)?;
        let cert = dir.join("cert.pem");
        let key: PathBuf = dir.join("key.pem");
        std::fs::write(&cert, &self.cert_pem)?;
        write_private(&key, &self.key_pem)?;
        Ok(TlsCertificatePaths { cert, key })
    }

    /// The SHA-256 fingerprint as colon-separated hex, as browsers show it.
    pub fn fingerprint(&self) -> String {
        hex(&self.sha256)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(unix)]
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

#[cfg(not(unix))]
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, data)
}
