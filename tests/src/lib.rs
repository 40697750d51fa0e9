//! Fixtures shared by the end-to-end tests and benchmarks: a test server on
//! loopback, an echo client application for our own QUIC stack, and a quinn
//! client as an independent peer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tq_host::builtin::EchoApplication;
use tq_host::metrics::DefaultMetrics;
use tq_host::quic::{
    self, ApplicationOverQuic, ConnectionHandle, ConnectionParams, HandshakeInfo, Listener,
    QuicError, QuicResult, QuicSettings,
};
use tq_host::tls::SelfSignedCertificate;

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = boring::hash::hash(boring::hash::MessageDigest::sha256(), data).expect("sha256");
    let mut out = [0u8; 32];
    out.copy_from_slice(&d);
    out
}

/// Deterministic pseudo-random bytes (xorshift), so a payload is cheap to
/// make and a corruption anywhere changes its hash.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Installs a tracing subscriber once (honours `RUST_LOG`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

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
        let cert = SelfSignedCertificate::generate(&["localhost", "127.0.0.1"]).expect("cert");
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = cert.write_to(dir.path()).expect("write cert");
        Self {
            cert,
            paths,
            _dir: dir,
        }
    }
}

impl Default for TestCert {
    fn default() -> Self {
        Self::new()
    }
}

/// An echo server on 127.0.0.1 with its own certificate and metrics. Every
/// accepted connection runs [`EchoApplication`]; its handle is sent on
/// `handles`.
pub struct TestServer {
    /// The address to connect to.
    pub addr: SocketAddr,
    /// The server's counters.
    pub metrics: DefaultMetrics,
    /// Handles of accepted connections, in order.
    pub handles: mpsc::UnboundedReceiver<ConnectionHandle>,
    /// The certificate the server presents.
    pub cert: TestCert,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server with `settings` (ALPN `tq-echo` unless set otherwise).
    pub async fn start(settings: QuicSettings) -> Self {
        let settings = echo_alpn(settings);
        let cert = TestCert::new();
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let metrics = DefaultMetrics::default();
        let params = ConnectionParams::new_server(settings, cert.paths.clone());
        let listener = quic::listen([socket], params, metrics.clone()).expect("listen");
        let addr = listener.local_addrs()[0];
        let (htx, handles) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, htx, stop_rx));
        Self {
            addr,
            metrics,
            handles,
            cert,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    /// Stops accepting and waits until every connection and task has ended.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("accept loop panicked");
        }
    }

    /// Client parameters that trust this server's certificate.
    pub fn client_params(&self, settings: QuicSettings) -> ConnectionParams {
        ConnectionParams::new_client(echo_alpn(settings)).ca_file(&self.cert.paths.cert)
    }
}

/// The echo protocol's ALPN in place of the default (HTTP/3).
pub fn echo_alpn(mut settings: QuicSettings) -> QuicSettings {
    if settings.alpn == QuicSettings::default().alpn {
        settings.alpn = vec!["tq-echo".into()];
    }
    settings
}

async fn accept_loop(
    mut listener: Listener<DefaultMetrics>,
    handles: mpsc::UnboundedSender<ConnectionHandle>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stop => break,
            c = listener.accept() => match c {
                Some(c) => { let _ = handles.send(c.start(EchoApplication::default())); }
                None => break,
            }
        }
    }
    listener.shutdown().await;
}

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

/// A quinn client endpoint that trusts `cert` and speaks `alpn`.
pub fn quinn_client(cert: &SelfSignedCertificate, alpn: &[u8]) -> quinn::Endpoint {
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

/// An HTTP/3 server on 127.0.0.1 running a native handler, with its server
/// connections' H3 handles sent on `handles` (for GOAWAY and buffer checks).
pub struct H3TestServer {
    /// The address to connect to.
    pub addr: SocketAddr,
    /// The certificate the server presents.
    pub cert: TestCert,
    /// One handle per accepted connection.
    pub handles: mpsc::UnboundedReceiver<tq_host::http3::H3Handle>,
    /// The server's QUIC counters.
    pub metrics: DefaultMetrics,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for H3TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What an [`H3TestServer`] runs per connection.
pub enum H3App<H: tq_host::http3::RequestHandler> {
    /// A native handler through `serve_connection`.
    Handler(Arc<H>),
    /// Raw controllers handed to the test.
    Raw(mpsc::UnboundedSender<tq_host::http3::H3Controller>),
}

impl H3TestServer {
    /// Starts a server answering with `handler`.
    pub async fn start<H: tq_host::http3::RequestHandler>(
        quic_settings: QuicSettings,
        h3: tq_host::http3::Http3Settings,
        app: H3App<H>,
    ) -> Self {
        let cert = TestCert::new();
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let metrics = DefaultMetrics::default();
        let params = ConnectionParams::new_server(quic_settings, cert.paths.clone());
        let mut listener = quic::listen([socket], params, metrics.clone()).expect("listen");
        let addr = listener.local_addrs()[0];
        let (htx, handles) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut services = tokio::task::JoinSet::new();
            while let Some(c) = listener.accept().await {
                let (driver, controller) = tq_host::http3::ServerH3Driver::new_server(h3.clone());
                let _ = htx.send(controller.handle());
                c.start(driver);
                match &app {
                    H3App::Handler(h) => {
                        services.spawn(tq_host::http3::serve_connection(controller, h.clone()));
                    }
                    H3App::Raw(tx) => {
                        let _ = tx.send(controller);
                    }
                }
            }
        });
        Self {
            addr,
            cert,
            handles,
            metrics,
            task,
        }
    }

    /// Starts a server that hands each connection's raw controller to the
    /// test instead of serving it.
    pub async fn start_raw(
        quic_settings: QuicSettings,
        h3: tq_host::http3::Http3Settings,
    ) -> (Self, mpsc::UnboundedReceiver<tq_host::http3::H3Controller>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let server = Self::start(
            quic_settings,
            h3,
            H3App::<tq_host::builtin::WelcomePage>::Raw(tx),
        )
        .await;
        (server, rx)
    }

    /// Client QUIC parameters trusting this server.
    pub fn client_params(&self) -> ConnectionParams {
        ConnectionParams::new_client(QuicSettings::default()).ca_file(&self.cert.paths.cert)
    }

    /// A connected client of ours.
    pub async fn client(&self) -> tq_host::http3::H3Client {
        tq_host::http3::H3Client::connect(
            self.addr,
            "localhost",
            &self.client_params(),
            tq_host::http3::Http3Settings::default(),
        )
        .await
        .expect("h3 client connects")
    }
}

/// An h3 (hyperium) client over quinn: an independent HTTP/3 stack.
pub struct H3QuinnClient {
    /// Sends requests.
    pub send: h3::client::SendRequest<h3_quinn::OpenStreams, bytes::Bytes>,
    /// The quinn endpoint (kept alive with the client).
    pub endpoint: quinn::Endpoint,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for H3QuinnClient {
    fn drop(&mut self) {
        self.driver.abort();
    }
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
            send,
            endpoint,
            driver,
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

/// Where `scripts/build-plugins.sh` puts a plugin's component.
pub fn plugin_path(name: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: build the plugins first (bash scripts/build-plugins.sh, which scripts/test.sh runs)",
        p.display()
    );
    p
}

/// An HTTP/3 server running a plugin, as `tq-host --plugin` does.
pub struct PluginServer {
    /// The address to connect to.
    pub addr: SocketAddr,
    /// The certificate the server presents.
    pub cert: TestCert,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PluginServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PluginServer {
    /// Loads `plugins/<name>` (or a test plugin) with `limits` and serves it.
    pub async fn start(name: &str, limits: tq_host::plugin::PluginLimits) -> Self {
        Self::start_with_grants(name, limits, Default::default()).await
    }

    /// As [`start`](Self::start), granting directories and environment.
    pub async fn start_with_grants(
        name: &str,
        limits: tq_host::plugin::PluginLimits,
        grants: tq_host::plugin::PluginGrants,
    ) -> Self {
        let plugin = tq_host::plugin::Plugin::load_with_grants(&plugin_path(name), limits, grants)
            .expect("plugin loads");
        let cert = TestCert::new();
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let params = ConnectionParams::new_server(QuicSettings::default(), cert.paths.clone());
        let listener = quic::listen([socket], params, DefaultMetrics::default()).expect("listen");
        let addr = listener.local_addrs()[0];
        // Nobody ever asks these connections to finish.
        let (_, never) = tokio::sync::watch::channel(false);
        let task = serve_plugin(listener, move || plugin.clone(), never);
        Self { addr, cert, task }
    }

    /// A connected client of ours.
    pub async fn client(&self) -> tq_host::http3::H3Client {
        h3_client(self.addr, &self.cert).await
    }
}

/// A raw QUIC server running a `quic-app` plugin, as `tq-host --plugin
/// x.wasm --alpn tq-echo` does, with datagrams enabled.
pub struct QuicPluginServer {
    /// The address to connect to.
    pub addr: SocketAddr,
    /// The certificate the server presents.
    pub cert: TestCert,
    /// Set to true to send every connection's plugin a `shutdown` event.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for QuicPluginServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl QuicPluginServer {
    /// Loads the plugin `name` with `limits` and serves it (ALPN `tq-echo`).
    pub async fn start(name: &str, limits: tq_host::plugin::PluginLimits) -> Self {
        let plugin =
            tq_host::plugin::Plugin::load(&plugin_path(name), limits).expect("plugin loads");
        assert_eq!(plugin.world(), tq_host::plugin::World::QuicApp);
        let cert = TestCert::new();
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let settings = echo_alpn(QuicSettings {
            enable_datagrams: true,
            ..QuicSettings::default()
        });
        let params = ConnectionParams::new_server(settings, cert.paths.clone());
        let listener = quic::listen([socket], params, DefaultMetrics::default()).expect("listen");
        let addr = listener.local_addrs()[0];
        let (shutdown, stop) = tokio::sync::watch::channel(false);
        let task = serve_plugin(listener, move || plugin.clone(), stop);
        Self {
            addr,
            cert,
            shutdown,
            task,
        }
    }

    /// Client parameters of ours that trust this server (ALPN `tq-echo`,
    /// datagrams on).
    pub fn client_params(&self) -> ConnectionParams {
        ConnectionParams::new_client(echo_alpn(QuicSettings {
            enable_datagrams: true,
            ..QuicSettings::default()
        }))
        .ca_file(&self.cert.paths.cert)
    }

    /// A quinn connection to this server.
    pub async fn quinn(&self) -> (quinn::Endpoint, quinn::Connection) {
        quinn_connect(self.addr, &self.cert, b"tq-echo").await
    }
}

/// A server running a [`LivePlugin`](tq_host::plugin::LivePlugin) from a
/// copy of a plugin in a temporary directory, as `tq-host --plugin` does,
/// so tests can replace the file and reload.
pub struct LiveServer {
    /// The address to connect to.
    pub addr: SocketAddr,
    /// The certificate the server presents.
    pub cert: TestCert,
    /// The plugin and its versions.
    pub live: tq_host::plugin::LivePlugin,
    /// The file the plugin is loaded from.
    pub file: std::path::PathBuf,
    /// Set to true to ask every connection to finish.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    alpn: String,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LiveServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LiveServer {
    /// Serves a copy of plugin `name` (ALPN `h3`, or `tq-echo` for a raw
    /// QUIC plugin); replaced versions drain for `drain`.
    pub async fn start(name: &str, drain: Duration) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("app.wasm");
        std::fs::copy(plugin_path(name), &file).expect("copy plugin");
        let live =
            tq_host::plugin::LivePlugin::load(&file, Default::default(), Default::default(), drain)
                .await
                .expect("plugin loads");
        let alpn = match live.current().world() {
            tq_host::plugin::World::QuicApp => "tq-echo",
            _ => "h3",
        };
        let cert = TestCert::new();
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let settings = QuicSettings {
            alpn: vec![alpn.into()],
            ..QuicSettings::default()
        };
        let params = ConnectionParams::new_server(settings, cert.paths.clone());
        let listener = quic::listen([socket], params, DefaultMetrics::default()).expect("listen");
        let addr = listener.local_addrs()[0];
        let (shutdown, stop) = tokio::sync::watch::channel(false);
        let l = live.clone();
        let task = serve_plugin(listener, move || l.current(), stop);
        Self {
            addr,
            cert,
            live,
            file,
            shutdown,
            alpn: alpn.into(),
            _dir: dir,
            task,
        }
    }

    /// Replaces the plugin file with plugin `name` (whole, by rename).
    pub fn install(&self, name: &str) {
        let tmp = self.file.with_extension("tmp");
        std::fs::copy(plugin_path(name), &tmp).expect("copy plugin");
        std::fs::rename(&tmp, &self.file).expect("rename plugin");
    }

    /// A connected HTTP/3 client of ours.
    pub async fn client(&self) -> tq_host::http3::H3Client {
        h3_client(self.addr, &self.cert).await
    }

    /// A quinn connection (for raw QUIC plugins).
    pub async fn quinn(&self) -> (quinn::Endpoint, quinn::Connection) {
        quinn_connect(self.addr, &self.cert, self.alpn.as_bytes()).await
    }
}

/// Serves every connection `listener` accepts with the plugin version
/// `pick` gives at that moment (as `tq-host --plugin` does); connections are
/// asked to finish once `stop` turns true. Aborting the returned task aborts
/// the connections' tasks too.
fn serve_plugin(
    mut listener: Listener<DefaultMetrics>,
    pick: impl Fn() -> tq_host::plugin::Plugin + Send + 'static,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Some(c) = listener.accept().await {
            while conns.try_join_next().is_some() {}
            let mut stop = stop.clone();
            let shutdown = async move {
                // A dropped sender means nobody will ever ask.
                if stop.wait_for(|s| *s).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            conns.spawn(pick().start_connection(c, &Default::default(), shutdown));
        }
    })
}

/// A connected HTTP/3 client of ours that trusts `cert`.
pub async fn h3_client(addr: SocketAddr, cert: &TestCert) -> tq_host::http3::H3Client {
    tq_host::http3::H3Client::connect(
        addr,
        "localhost",
        &ConnectionParams::new_client(QuicSettings::default()).ca_file(&cert.paths.cert),
        tq_host::http3::Http3Settings::default(),
    )
    .await
    .expect("h3 client connects")
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

/// Resident memory of this process, KiB (Linux).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The value after `--name` on a bench's command line, or `default`.
pub fn bench_arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The head of a request to `localhost`: `:method`, `:scheme`, `:authority`
/// and `:path`, for tests that drive `H3Handle::send_request` directly.
pub fn request_head(method: &str, path: &str) -> Vec<tq_host::http3::Header> {
    tq_host::http3::headers(&[
        (":method", method),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", path),
    ])
}
