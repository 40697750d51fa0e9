//! Clients that talk to the servers under test: an echo client application
//! on our own QUIC stack ([`EchoClient`], [`run_echo_client`],
//! [`echo_with_our_client`]), our HTTP/3 client ([`h3_client`]), and quinn
//! and h3 (hyperium) clients as independent peers ([`quinn_client`],
//! [`quinn_echo`], [`quinn_connect`], [`H3QuinnClient`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tq_host::metrics::DefaultMetrics;
use tq_host::quic::{
    self, ApplicationOverQuic, ConnectionParams, HandshakeInfo, QuicError, QuicResult, QuicSettings,
};
use tq_host::tls::SelfSignedCertificate;

use crate::certs::TestCert;
use crate::data::sha256;
use crate::task::AbortOnDrop;

/// What came back on one stream.
#[derive(Debug, Clone)]
pub struct StreamResult {
    /// The stream id.
    pub stream_id: u64,
    /// Bytes received.
    pub len: usize,
    /// Their SHA-256.
    pub sha256: [u8; 32],
}

struct Job {
    stream_id: u64,
    data: Arc<Vec<u8>>,
    sent: usize,
    fin_sent: bool,
    received: Vec<u8>,
    fin_received: bool,
}

/// A client application that sends each payload on its own bidirectional
/// stream, all at once, collects the echoes, reports them, and closes the
/// connection with code 0.
pub struct EchoClient {
    /// Destination connection ids retired so far (see [`EchoClient::rotate_ids`]).
    pub rotations: Arc<std::sync::atomic::AtomicUsize>,
    rotate_up_to: usize,
    jobs: Vec<Job>,
    by_id: HashMap<u64, usize>,
    done: Option<oneshot::Sender<Vec<StreamResult>>>,
    scratch: Vec<u8>,
}

impl EchoClient {
    /// A client for `payloads`; the receiver yields the results in order.
    pub fn new(payloads: Vec<Arc<Vec<u8>>>) -> (Self, oneshot::Receiver<Vec<StreamResult>>) {
        let (tx, rx) = oneshot::channel();
        let jobs: Vec<Job> = payloads
            .into_iter()
            .enumerate()
            .map(|(i, data)| Job {
                stream_id: 4 * i as u64,
                data,
                sent: 0,
                fin_sent: false,
                received: Vec::new(),
                fin_received: false,
            })
            .collect();
        let by_id = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (j.stream_id, i))
            .collect();
        (
            Self {
                rotations: Default::default(),
                rotate_up_to: 0,
                jobs,
                by_id,
                done: Some(tx),
                scratch: vec![0; 64 * 1024],
            },
            rx,
        )
    }

    /// Makes the client move to a fresh destination connection id (retiring
    /// the one in use) whenever the server has issued a spare, up to `n`
    /// times: the server's router must follow each change.
    pub fn rotate_ids(mut self, n: usize) -> Self {
        self.rotate_up_to = n;
        self
    }

    fn rotate(&mut self, q: &mut quiche::Connection) {
        use std::sync::atomic::Ordering;
        let done = self.rotations.load(Ordering::Relaxed);
        if done < self.rotate_up_to && q.available_dcids() > 0 && q.retire_dcid(done as u64).is_ok()
        {
            self.rotations.store(done + 1, Ordering::Relaxed);
        }
    }

    fn finish_if_done(&mut self, q: &mut quiche::Connection) -> QuicResult<()> {
        if self.done.is_some() && self.jobs.iter().all(|j| j.fin_received) {
            let results = self
                .jobs
                .iter()
                .map(|j| StreamResult {
                    stream_id: j.stream_id,
                    len: j.received.len(),
                    sha256: sha256(&j.received),
                })
                .collect();
            if let Some(tx) = self.done.take() {
                let _ = tx.send(results);
            }
            q.close(true, 0, b"done")?;
        }
        Ok(())
    }
}

impl ApplicationOverQuic for EchoClient {
    fn on_conn_established(
        &mut self,
        q: &mut quiche::Connection,
        _: &HandshakeInfo,
    ) -> QuicResult<()> {
        self.finish_if_done(q)
    }

    async fn wait_for_data(&mut self, _q: &mut quiche::Connection) -> QuicResult<()> {
        std::future::pending().await
    }

    fn process_reads(&mut self, q: &mut quiche::Connection) -> QuicResult<()> {
        let readable: Vec<u64> = q.readable().collect();
        for id in readable {
            let Some(&i) = self.by_id.get(&id) else {
                continue;
            };
            let job = &mut self.jobs[i];
            loop {
                match q.stream_recv(id, &mut self.scratch) {
                    Ok((n, fin)) => {
                        job.received.extend_from_slice(&self.scratch[..n]);
                        if fin {
                            // quiche may collect a finished stream at once:
                            // reading it again would be an error.
                            job.fin_received = true;
                            break;
                        }
                    }
                    Err(quiche::Error::Done) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.rotate(q);
        self.finish_if_done(q)
    }

    fn process_writes(&mut self, q: &mut quiche::Connection) -> QuicResult<()> {
        for job in self.jobs.iter_mut().filter(|j| !j.fin_sent) {
            match q.stream_send(job.stream_id, &job.data[job.sent..], true) {
                Ok(n) => {
                    job.sent += n;
                    job.fin_sent = job.sent == job.data.len();
                }
                // No capacity yet, or beyond the peer's stream limit: retry
                // on a later turn.
                Err(quiche::Error::Done) | Err(quiche::Error::StreamLimit) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Connects with our own client to `addr`, echoes `payloads` on parallel
/// streams, and returns what came back.
pub async fn echo_with_our_client(
    addr: SocketAddr,
    params: &ConnectionParams,
    payloads: Vec<Arc<Vec<u8>>>,
) -> Result<Vec<StreamResult>, QuicError> {
    let (app, rx) = EchoClient::new(payloads);
    run_echo_client(addr, params, app, rx).await
}

/// Runs a prepared [`EchoClient`] against `addr`.
pub async fn run_echo_client(
    addr: SocketAddr,
    params: &ConnectionParams,
    app: EchoClient,
    rx: oneshot::Receiver<Vec<StreamResult>>,
) -> Result<Vec<StreamResult>, QuicError> {
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| QuicError::Closed(e.to_string()))?;
    socket
        .connect(addr)
        .await
        .map_err(|e| QuicError::Closed(e.to_string()))?;
    let handle = quic::connect_with_config(
        socket,
        Some("localhost"),
        params,
        app,
        DefaultMetrics::default(),
    )
    .await?;
    match rx.await {
        Ok(r) => Ok(r),
        Err(_) => Err(QuicError::Closed(handle.closed().await.describe())),
    }
}

/// A connected HTTP/3 client of ours that trusts `cert`.
pub async fn h3_client(addr: SocketAddr, cert: &TestCert) -> tq_host::http3::H3Client {
    tq_host::http3::H3Client::connect(
        addr,
        "localhost",
        &cert.client_params(QuicSettings::default()),
        tq_host::http3::Http3Settings::default(),
    )
    .await
    .expect("h3 client connects")
}

/// A quinn client endpoint that trusts `cert` and speaks `alpn`.
pub fn quinn_client(cert: &SelfSignedCertificate, alpn: &[u8]) -> quinn::Endpoint {
    quinn_client_with(cert, alpn, false)
}

/// As [`quinn_client`], offering 0-RTT on resumed sessions if
/// `early_data` (the endpoint keeps its session tickets).
pub fn quinn_client_with(
    cert: &SelfSignedCertificate,
    alpn: &[u8],
    early_data: bool,
) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            cert.cert_der.clone(),
        ))
        .expect("add root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.enable_early_data = early_data;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(10).try_into().expect("idle")));
    cfg.transport_config(Arc::new(transport));
    let mut ep =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("quinn endpoint");
    ep.set_default_client_config(cfg);
    ep
}

/// Echoes `data` over one quinn bidirectional stream; returns the bytes back.
pub async fn quinn_echo(conn: &quinn::Connection, data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let write = async {
        send.write_all(data).await?;
        send.finish()?;
        anyhow::Ok(())
    };
    let read = async { anyhow::Ok(recv.read_to_end(64 << 20).await?) };
    let ((), back) = tokio::try_join!(write, read)?;
    Ok(back)
}

/// A quinn connection to `addr` that trusts `cert` and speaks `alpn`.
pub async fn quinn_connect(
    addr: SocketAddr,
    cert: &TestCert,
    alpn: &[u8],
) -> (quinn::Endpoint, quinn::Connection) {
    let ep = quinn_client(&cert.cert, alpn);
    let conn = ep
        .connect(addr, "localhost")
        .expect("connect")
        .await
        .expect("quinn handshake");
    (ep, conn)
}

/// An h3 (hyperium) client over quinn: an independent HTTP/3 stack.
pub struct H3QuinnClient {
    // First, so the driver is aborted before the rest drops.
    _driver: AbortOnDrop,
    /// Sends requests.
    pub send: h3::client::SendRequest<h3_quinn::OpenStreams, bytes::Bytes>,
    /// The quinn endpoint (kept alive with the client).
    pub endpoint: quinn::Endpoint,
}

impl H3QuinnClient {
    /// Connects to `addr` trusting `cert`.
    pub async fn connect(addr: SocketAddr, cert: &SelfSignedCertificate) -> anyhow::Result<Self> {
        let endpoint = quinn_client(cert, b"h3");
        let conn = endpoint.connect(addr, "localhost")?.await?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn)).await?;
        let driver = tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok(Self {
            _driver: AbortOnDrop(driver),
            send,
            endpoint,
        })
    }

    /// Sends a request and returns status, body and trailers.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<bytes::Bytes>,
    ) -> anyhow::Result<(u16, Vec<u8>, Option<http::HeaderMap>)> {
        use bytes::Buf;
        let req = http::Request::builder()
            .method(method)
            .uri(format!("https://localhost{path}"))
            .body(())?;
        let stream = self.send.send_request(req).await?;
        let (mut tx, mut rx) = stream.split();
        let send = async move {
            if let Some(mut b) = body {
                while b.len() > 64 * 1024 {
                    tx.send_data(b.split_to(64 * 1024)).await?;
                }
                tx.send_data(b).await?;
            }
            tx.finish().await?;
            anyhow::Ok(())
        };
        let recv = async move {
            let resp = rx.recv_response().await?;
            let mut out = Vec::new();
            while let Some(mut chunk) = rx.recv_data().await? {
                while chunk.has_remaining() {
                    let c = chunk.chunk();
                    out.extend_from_slice(c);
                    let n = c.len();
                    chunk.advance(n);
                }
            }
            let trailers = rx.recv_trailers().await?;
            anyhow::Ok((resp.status().as_u16(), out, trailers))
        };
        let (s, r) = tokio::join!(send, recv);
        let r = r?;
        s?;
        Ok(r)
    }
}

/// Checks `POST /discard` (the benchmarks' upload): for each size, the
/// body is read to its end and its length answered, 200.
pub async fn assert_discards(client: &tq_host::http3::H3Client, sizes: &[usize]) {
    for (i, &size) in sizes.iter().enumerate() {
        let body = bytes::Bytes::from(crate::data::payload(size, i as u64));
        let r = client
            .request("POST", "/discard", Some(body))
            .await
            .unwrap_or_else(|e| panic!("discard {size}: {e}"));
        assert_eq!((r.status, r.body), (200, size.to_string().into_bytes()));
    }
}

/// Opens `n` requests `POST path` on `client` and resets each at once
/// (HEADERS then RESET_STREAM: the rapid-reset pattern), as fast as stream
/// credit comes back.
pub async fn reset_pairs(client: &tq_host::http3::H3Client, path: &str, n: usize) {
    for _ in 0..n {
        let stream = tokio::time::timeout(
            Duration::from_secs(10),
            client
                .handle()
                .send_request(crate::data::request_head("POST", path), true),
        )
        .await
        .expect("stream credit comes back after each reset")
        .expect("request");
        let body = stream.body.expect("body sender");
        body.send(tq_host::http3::OutboundFrame::Reset(0x10c))
            .await
            .expect("reset sent");
    }
}

/// `n` GETs of `path` on `client`, one after another, each answered 200
/// within 10 s: their latencies, sorted.
pub async fn latencies(client: &tq_host::http3::H3Client, path: &str, n: usize) -> Vec<Duration> {
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let asked = std::time::Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(10), client.request("GET", path, None))
            .await
            .expect("answered within 10 s")
            .expect("answered");
        assert_eq!(r.status, 200);
        took.push(asked.elapsed());
    }
    took.sort();
    took
}

/// The `p`th percentile of sorted latencies.
pub fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}
