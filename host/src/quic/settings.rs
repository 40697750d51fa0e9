//! Transport settings and their translation into a `quiche::Config`.
//!
//! [`QuicSettings`] holds every transport knob an operator sets; it is
//! serde-deserialisable (durations as `"30s"`, `"250ms"`) and every field has a
//! documented default, so a config file names only what it changes.
//! [`ConnectionParams`] adds what differs per side: TLS material for servers,
//! peer verification for clients. The cascade into `quiche::Config` lives here
//! and nowhere else.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::error::QuicError;
use super::tickets::SessionTicketKey;
pub(crate) use super::tickets::TicketKeys;

/// Congestion controller, as understood by quiche.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CongestionControl {
    /// CUBIC (RFC 9438): the default of most stacks.
    #[default]
    Cubic,
    /// NewReno (RFC 9002).
    Reno,
    /// BBRv2: better on lossy, long paths.
    Bbr2,
}

impl CongestionControl {
    fn to_quiche(self) -> quiche::CongestionControlAlgorithm {
        match self {
            CongestionControl::Cubic => quiche::CongestionControlAlgorithm::CUBIC,
            CongestionControl::Reno => quiche::CongestionControlAlgorithm::Reno,
            CongestionControl::Bbr2 => quiche::CongestionControlAlgorithm::Bbr2Gcongestion,
        }
    }
}

/// Transport settings shared by servers and clients.
///
/// ```
/// use tq_host::quic::QuicSettings;
/// let s = QuicSettings::default();
/// assert_eq!(s.max_idle_timeout, std::time::Duration::from_secs(30));
/// assert!(s.enable_retry);
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuicSettings {
    /// ALPN protocols offered (client) or accepted (server), most preferred
    /// first. Default: `["h3"]` (HTTP/3).
    pub alpn: Vec<String>,
    /// Close a connection after this long without traffic. Also bounds how long
    /// a handshake may take. Default: 30 s. Zero disables the timeout.
    #[serde(with = "humantime_serde")]
    pub max_idle_timeout: Duration,
    /// Connection-level flow-control window granted to the peer at start.
    /// Default: 10 MiB.
    pub initial_max_data: u64,
    /// Per-stream window for bidirectional streams we open. Default: 1 MiB.
    pub initial_max_stream_data_bidi_local: u64,
    /// Per-stream window for bidirectional streams the peer opens. Default: 1 MiB.
    pub initial_max_stream_data_bidi_remote: u64,
    /// Per-stream window for unidirectional streams. Default: 1 MiB.
    pub initial_max_stream_data_uni: u64,
    /// How many bidirectional streams the peer may open at once. Default: 100.
    pub initial_max_streams_bidi: u64,
    /// How many unidirectional streams the peer may open at once. Default: 100.
    pub initial_max_streams_uni: u64,
    /// Upper bound the connection window may auto-tune to. Default: 24 MiB.
    pub max_connection_window: u64,
    /// Upper bound a stream window may auto-tune to. Default: 16 MiB.
    pub max_stream_window: u64,
    /// Accept and send QUIC DATAGRAM frames (RFC 9221). Default: off.
    pub enable_datagrams: bool,
    /// Datagrams queued for the application before new ones are dropped. Default: 1024.
    pub datagram_recv_queue_len: usize,
    /// Datagrams queued for sending before new ones are refused. Default: 1024.
    pub datagram_send_queue_len: usize,
    /// Allow 0-RTT early data on resumed connections. Default: off (0-RTT data
    /// can be replayed, so an application must opt in knowingly).
    pub enable_early_data: bool,
    /// Congestion controller. Default: `cubic`.
    pub congestion_control: CongestionControl,
    /// Let quiche pace packets: under bbr2 it gives each packet a release
    /// time (under cubic and reno, quiche 0.30 does not pace). Default: on.
    /// The worker waits while the next packet is due later than
    /// `max_release_into_future` (1-5 ms) ahead;
    /// [`pacing_offload`](Self::pacing_offload) hands the exact times to
    /// the kernel.
    pub enable_pacing: bool,
    /// Linux: hand those release times to the kernel with `SO_TXTIME`
    /// (`CLOCK_MONOTONIC`), so that the `fq` qdisc holds each batch of
    /// packets until its time. Default: off. It needs the `fq` qdisc on the
    /// egress interface (`tc qdisc replace dev eth0 root fq`); other qdiscs
    /// ignore the times, and `etf`, which expects `CLOCK_TAI`, drops the
    /// packets. Where the kernel refuses `SO_TXTIME`, a warning, and sends
    /// stay unpaced.
    pub pacing_offload: bool,
    /// Largest UDP payload we accept. Default: 1472 (a 1500-byte Ethernet MTU).
    pub max_recv_udp_payload_size: usize,
    /// Largest UDP payload we send. Default: 1350, which fits most paths.
    pub max_send_udp_payload_size: usize,
    /// Servers: answer a new client with a stateless Retry to validate its
    /// address before keeping any state for it. Default: on.
    pub enable_retry: bool,
    /// Servers with Retry off: once this many handshakes from addresses
    /// not proven by Retry are in progress at once, new clients get a Retry
    /// anyway (RFC 9000 §8.1.2: validation under load), so Initials from
    /// spoofed addresses cannot make the server hold more than this many
    /// handshakes. Default: 512.
    pub max_unvalidated_handshakes: usize,
    /// How long a Retry token stays valid. Default: 10 s.
    #[serde(with = "humantime_serde")]
    pub retry_token_lifetime: Duration,
    /// Append TLS secrets in NSS key-log format here (for Wireshark). Default: none.
    pub keylog_file: Option<PathBuf>,
    /// Write one qlog file per connection into this directory. Default: none.
    pub qlog_dir: Option<PathBuf>,
    /// Refuse connection migration by the peer. Default: off.
    pub disable_active_migration: bool,
    /// How many connection ids the peer may keep issued for us. Default: 4.
    pub active_connection_id_limit: u64,
    /// Servers: connections accepted by the router but not yet taken by the
    /// application. Initials beyond it are dropped and counted. Default: 1024.
    pub accept_backlog: usize,
    /// Servers: connections held at once; a new one beyond is refused (its
    /// Initial dropped and counted). Default: 10,000.
    pub max_connections: usize,
    /// Servers: connections held at once from one client IP address (after
    /// Retry has proven the address, when Retry is on). Default: 128 —
    /// room for a NAT's worth of clients, not for one client to take every
    /// instance or connection slot. Raise it for load tests from one
    /// machine (every client then shares one address).
    pub max_connections_per_address: usize,
    /// Packets queued from the router to one connection before more are
    /// dropped. Default: 2048.
    pub connection_queue_len: usize,
    /// Kernel receive buffer asked for on each UDP socket (`SO_RCVBUF`). The
    /// kernel caps it at `net.core.rmem_max`. Default: 4 MiB: the kernel's
    /// usual 208 KiB overflows when a few dozen connections burst at once.
    pub socket_recv_buffer_size: usize,
    /// Kernel send buffer asked for on each UDP socket (`SO_SNDBUF`), capped
    /// at `net.core.wmem_max`. Default: 4 MiB.
    pub socket_send_buffer_size: usize,
}

impl Default for QuicSettings {
    fn default() -> Self {
        Self {
            alpn: vec!["h3".to_owned()],
            max_idle_timeout: Duration::from_secs(30),
            initial_max_data: 10 << 20,
            initial_max_stream_data_bidi_local: 1 << 20,
            initial_max_stream_data_bidi_remote: 1 << 20,
            initial_max_stream_data_uni: 1 << 20,
            initial_max_streams_bidi: 100,
            initial_max_streams_uni: 100,
            max_connection_window: 24 << 20,
            max_stream_window: 16 << 20,
            enable_datagrams: false,
            datagram_recv_queue_len: 1024,
            datagram_send_queue_len: 1024,
            enable_early_data: false,
            congestion_control: CongestionControl::default(),
            enable_pacing: true,
            pacing_offload: false,
            max_recv_udp_payload_size: 1472,
            max_send_udp_payload_size: 1350,
            enable_retry: true,
            max_unvalidated_handshakes: 512,
            retry_token_lifetime: Duration::from_secs(10),
            keylog_file: None,
            qlog_dir: None,
            disable_active_migration: false,
            active_connection_id_limit: 4,
            accept_backlog: 1024,
            max_connections: 10_000,
            max_connections_per_address: 128,
            connection_queue_len: 2048,
            socket_recv_buffer_size: 4 << 20,
            socket_send_buffer_size: 4 << 20,
        }
    }
}

impl QuicSettings {
    /// Whether `pacing_offload` can do anything: quiche 0.30 gives packets
    /// release times only when pacing under bbr2 (gcongestion).
    pub(crate) fn offloads_pacing(&self) -> bool {
        self.pacing_offload
            && self.enable_pacing
            && self.congestion_control == CongestionControl::Bbr2
    }
}

/// PEM files holding a certificate chain and its private key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCertificatePaths {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of the leaf certificate.
    pub key: PathBuf,
}

/// Everything a connection needs to start: transport settings plus TLS.
///
/// ```no_run
/// use tq_host::quic::{ConnectionParams, TlsCertificatePaths};
/// let server = ConnectionParams::new_server(
///     Default::default(),
///     TlsCertificatePaths { cert: "cert.pem".into(), key: "key.pem".into() },
/// );
/// let client = ConnectionParams::new_client(Default::default()).verify_peer(false);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ConnectionParams {
    /// Transport settings.
    pub settings: QuicSettings,
    /// Server certificate and key; required by [`listen`](super::listen).
    pub tls: Option<TlsCertificatePaths>,
    /// Clients: verify the server's certificate. Default: on.
    pub verify_peer: bool,
    /// Clients: PEM file of CAs to trust instead of none (quiche has no system
    /// store); use with self-signed test certificates.
    pub ca_file: Option<PathBuf>,
    /// Servers: the secret session tickets are encrypted under, shared by
    /// hosts that should resume each other's sessions. Default: random keys
    /// per listener, new at every certificate reload.
    pub session_ticket_key: Option<SessionTicketKey>,
}

impl ConnectionParams {
    /// Parameters for a server with the given certificate.
    pub fn new_server(settings: QuicSettings, tls: TlsCertificatePaths) -> Self {
        Self {
            settings,
            tls: Some(tls),
            verify_peer: false,
            ca_file: None,
            session_ticket_key: None,
        }
    }

    /// Parameters for a client that verifies the server's certificate.
    pub fn new_client(settings: QuicSettings) -> Self {
        Self {
            settings,
            tls: None,
            verify_peer: true,
            ca_file: None,
            session_ticket_key: None,
        }
    }

    /// Turns certificate verification on or off (clients).
    pub fn verify_peer(mut self, verify: bool) -> Self {
        self.verify_peer = verify;
        self
    }

    /// Trusts the CAs in this PEM file (clients).
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Encrypts session tickets under `key` (servers), so that every host
    /// given the same key resumes the sessions of the others. Give each
    /// listener its own [`SessionTicketKey::for_listener`] of the shared
    /// key, so that one listener never resumes another's sessions.
    pub fn session_ticket_key(mut self, key: SessionTicketKey) -> Self {
        self.session_ticket_key = Some(key);
        self
    }

    /// Builds the quiche configuration for one side.
    pub(crate) fn to_quiche_config(&self, is_server: bool) -> Result<quiche::Config, QuicError> {
        self.to_quiche_config_with(is_server, None)
    }

    /// As [`to_quiche_config`](Self::to_quiche_config); a server's TLS
    /// context encrypts session tickets with `ticket_keys` (BoringSSL's 48
    /// bytes: name, HMAC key, AES key) rather than keys of its own, so that
    /// every socket of a listener resumes the sessions of the others.
    pub(crate) fn to_quiche_config_with(
        &self,
        is_server: bool,
        ticket_keys: Option<&TicketKeys>,
    ) -> Result<quiche::Config, QuicError> {
        let s = &self.settings;
        let cfg_err = |what: &'static str| {
            move |e: quiche::Error| QuicError::Config {
                what: what.to_owned(),
                source: e,
            }
        };
        if s.alpn.is_empty() {
            return Err(QuicError::InvalidSettings(
                "alpn must name at least one protocol".into(),
            ));
        }
        if s.max_send_udp_payload_size < 1200 {
            return Err(QuicError::InvalidSettings(format!(
                "max_send_udp_payload_size {} is below QUIC's minimum of 1200",
                s.max_send_udp_payload_size
            )));
        }
        // A UDP payload is at most 65,527 bytes (RFC 9000 §18.2); a send
        // buffer (64 KiB) must hold at least one packet.
        if s.max_send_udp_payload_size > 65_527 {
            return Err(QuicError::InvalidSettings(format!(
                "max_send_udp_payload_size {} is above the largest UDP payload, 65527",
                s.max_send_udp_payload_size
            )));
        }
        let mut c = match ticket_keys.filter(|_| is_server) {
            Some(keys) => {
                let mut ctx = boring::ssl::SslContextBuilder::new(boring::ssl::SslMethod::tls())
                    .map_err(|e| QuicError::Tls(format!("cannot make a TLS context: {e}")))?;
                keys.install(&mut ctx)?;
                quiche::Config::with_boring_ssl_ctx_builder(quiche::PROTOCOL_VERSION, ctx)
                    .map_err(cfg_err("version"))?
            }
            None => quiche::Config::new(quiche::PROTOCOL_VERSION).map_err(cfg_err("version"))?,
        };
        if is_server {
            let tls = self.tls.as_ref().ok_or_else(|| {
                QuicError::InvalidSettings("a server needs a certificate and key".into())
            })?;
            let cert = path_str(&tls.cert)?;
            let key = path_str(&tls.key)?;
            c.load_cert_chain_from_pem_file(cert).map_err(|e| {
                QuicError::Tls(format!("cannot load certificate chain {cert}: {e}"))
            })?;
            c.load_priv_key_from_pem_file(key)
                .map_err(|e| QuicError::Tls(format!("cannot load private key {key}: {e}")))?;
            c.verify_peer(false);
        } else {
            c.verify_peer(self.verify_peer);
            if let Some(ca) = &self.ca_file {
                let ca = path_str(ca)?;
                c.load_verify_locations_from_file(ca)
                    .map_err(|e| QuicError::Tls(format!("cannot load CA file {ca}: {e}")))?;
            }
        }
        let protos: Vec<&[u8]> = s.alpn.iter().map(|p| p.as_bytes()).collect();
        c.set_application_protos(&protos).map_err(cfg_err("alpn"))?;
        c.set_max_idle_timeout(s.max_idle_timeout.as_millis() as u64);
        c.set_initial_max_data(s.initial_max_data);
        c.set_initial_max_stream_data_bidi_local(s.initial_max_stream_data_bidi_local);
        c.set_initial_max_stream_data_bidi_remote(s.initial_max_stream_data_bidi_remote);
        c.set_initial_max_stream_data_uni(s.initial_max_stream_data_uni);
        c.set_initial_max_streams_bidi(s.initial_max_streams_bidi);
        c.set_initial_max_streams_uni(s.initial_max_streams_uni);
        c.set_max_connection_window(s.max_connection_window);
        c.set_max_stream_window(s.max_stream_window);
        c.enable_dgram(
            s.enable_datagrams,
            s.datagram_recv_queue_len,
            s.datagram_send_queue_len,
        );
        if s.enable_early_data {
            c.enable_early_data();
        }
        c.set_cc_algorithm(s.congestion_control.to_quiche());
        c.enable_pacing(s.enable_pacing);
        c.set_max_recv_udp_payload_size(s.max_recv_udp_payload_size);
        c.set_max_send_udp_payload_size(s.max_send_udp_payload_size);
        c.set_disable_active_migration(s.disable_active_migration);
        c.set_active_connection_id_limit(s.active_connection_id_limit.max(2));
        if s.keylog_file.is_some() {
            c.log_keys();
        }
        Ok(c)
    }
}

fn path_str(p: &std::path::Path) -> Result<&str, QuicError> {
    p.to_str()
        .ok_or_else(|| QuicError::InvalidSettings(format!("path {} is not UTF-8", p.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One client session, resumed against a second TLS context: with the
    /// same ticket keys (two sockets of one listener), and not without.
    #[test]
    fn sockets_of_one_listener_resume_each_other_s_sessions() {
        use crate::quic::test_pair::{flush, CLIENT, SERVER};
        let (dir, paths) = crate::quic::test_pair::certificate_dir("ticket");
        let server = ConnectionParams::new_server(QuicSettings::default(), paths);
        let keys = TicketKeys::random().unwrap();
        let mut ccfg = ConnectionParams::new_client(QuicSettings::default())
            .verify_peer(false)
            .to_quiche_config(false)
            .unwrap();
        let (c, s): (std::net::SocketAddr, std::net::SocketAddr) =
            (CLIENT.parse().unwrap(), SERVER.parse().unwrap());
        let handshake =
            |scfg: &mut quiche::Config, ccfg: &mut quiche::Config, session: Option<&[u8]>| {
                let mut client = quiche::connect(
                    Some("localhost"),
                    &quiche::ConnectionId::from_ref(&[1; 16]),
                    c,
                    s,
                    ccfg,
                )
                .unwrap();
                if let Some(sess) = session {
                    client.set_session(sess).unwrap();
                }
                let mut server =
                    quiche::accept(&quiche::ConnectionId::from_ref(&[2; 16]), None, s, c, scfg)
                        .unwrap();
                for _ in 0..10 {
                    flush(&mut client, &mut server);
                    flush(&mut server, &mut client);
                }
                assert!(client.is_established() && server.is_established());
                client
            };
        let mut first = server.to_quiche_config_with(true, Some(&keys)).unwrap();
        let session = handshake(&mut first, &mut ccfg, None)
            .session()
            .expect("a session ticket")
            .to_vec();
        let mut sibling = server.to_quiche_config_with(true, Some(&keys)).unwrap();
        assert!(handshake(&mut sibling, &mut ccfg, Some(&session)).is_resumed());
        let mut stranger = server.to_quiche_config_with(true, None).unwrap();
        assert!(!handshake(&mut stranger, &mut ccfg, Some(&session)).is_resumed());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn durations_and_defaults_deserialize() {
        let s: QuicSettings =
            toml::from_str("max_idle_timeout = \"250ms\"\ncongestion_control = \"bbr2\"").unwrap();
        assert_eq!(s.max_idle_timeout, Duration::from_millis(250));
        assert_eq!(s.congestion_control, CongestionControl::Bbr2);
        assert_eq!(s.initial_max_streams_bidi, 100);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = toml::from_str::<QuicSettings>("no_such_knob = 1").unwrap_err();
        assert!(err.to_string().contains("no_such_knob"), "{err}");
    }

    #[test]
    fn server_without_tls_is_refused() {
        let p = ConnectionParams::default();
        let Err(err) = p.to_quiche_config(true) else {
            panic!("accepted")
        };
        assert!(err.to_string().contains("certificate"), "{err}");
    }

    #[test]
    fn tiny_payload_is_refused() {
        let mut p = ConnectionParams::new_client(QuicSettings::default());
        p.settings.max_send_udp_payload_size = 1000;
        let Err(err) = p.to_quiche_config(false) else {
            panic!("accepted")
        };
        assert!(err.to_string().contains("1200"), "{err}");
    }
}
