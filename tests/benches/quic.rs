//! QUIC layer benchmarks on loopback. Prints figures; asserts nothing.
//!
//! - bulk: one connection, one stream, the client uploads N MiB to a server
//!   that discards it (and, separately, N MiB echoed back), in MB/s;
//! - handshakes: time to open (and close) 1,000 connections, one after the
//!   other and 50 at a time, with Retry on and off.
//!
//! Run: `cargo bench -p tq-e2e --bench quic [-- --mib 256]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tq_e2e::{echo_with_our_client, payload, EchoClient, TestCert};
use tq_host::metrics::DefaultMetrics;
use tq_host::quic::{
    self, ApplicationOverQuic, ConnectionParams, HandshakeInfo, QuicResult, QuicSettings,
};

/// Server side of the bulk test: reads and discards everything, then answers
/// with the byte count on the same stream.
#[derive(Default)]
struct Discard {
    received: u64,
    buf: Vec<u8>,
    fin: Option<u64>,
}

impl ApplicationOverQuic for Discard {
    fn on_conn_established(
        &mut self,
        _: &mut quiche::Connection,
        _: &HandshakeInfo,
    ) -> QuicResult<()> {
        self.buf = vec![0; 256 * 1024];
        Ok(())
    }
    async fn wait_for_data(&mut self, _: &mut quiche::Connection) -> QuicResult<()> {
        std::future::pending().await
    }
    fn process_reads(&mut self, q: &mut quiche::Connection) -> QuicResult<()> {
        let ids: Vec<u64> = q.readable().collect();
        for id in ids {
            while let Ok((n, fin)) = q.stream_recv(id, &mut self.buf) {
                self.received += n as u64;
                if fin {
                    self.fin = Some(id);
                    break;
                }
            }
        }
        Ok(())
    }
    fn process_writes(&mut self, q: &mut quiche::Connection) -> QuicResult<()> {
        if let Some(id) = self.fin {
            if q.stream_send(id, &self.received.to_be_bytes(), true)
                .is_ok()
            {
                self.fin = None;
            }
        }
        Ok(())
    }
}

struct Server {
    addr: std::net::SocketAddr,
    cert: TestCert,
    _task: tokio::task::JoinHandle<()>,
}

async fn server(settings: QuicSettings, discard: bool) -> Server {
    let cert = TestCert::new();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let params = ConnectionParams::new_server(
        tq_e2e::loopback(tq_e2e::echo_alpn(settings)),
        cert.paths.clone(),
    );
    let mut listener = quic::listen([socket], params, DefaultMetrics::default()).unwrap();
    let addr = listener.local_addrs()[0];
    let task = tokio::spawn(async move {
        while let Some(c) = listener.accept().await {
            if discard {
                c.start(Discard::default());
            } else {
                c.start(tq_host::builtin::EchoApplication::default());
            }
        }
    });
    Server {
        addr,
        cert,
        _task: task,
    }
}

fn client_params(cert: &TestCert, settings: QuicSettings) -> ConnectionParams {
    ConnectionParams::new_client(tq_e2e::echo_alpn(settings)).ca_file(&cert.paths.cert)
}

async fn bulk_upload(mib: usize) {
    let srv = server(QuicSettings::default(), true).await;
    let data = Arc::new(payload(mib << 20, 1));
    let start = Instant::now();
    let res = echo_with_our_client(
        srv.addr,
        &client_params(&srv.cert, QuicSettings::default()),
        vec![data],
    )
    .await
    .expect("upload");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        res[0].sha256,
        tq_e2e::sha256(&((mib as u64) << 20).to_be_bytes()),
        "the server must report every byte received"
    );
    println!(
        "bulk upload, 1 connection, 1 stream: {mib} MiB in {secs:.2} s = {:.0} MB/s",
        (mib << 20) as f64 / secs / 1e6
    );
}

async fn bulk_echo(mib: usize) {
    let srv = server(QuicSettings::default(), false).await;
    let data = Arc::new(payload(mib << 20, 2));
    let start = Instant::now();
    echo_with_our_client(
        srv.addr,
        &client_params(&srv.cert, QuicSettings::default()),
        vec![data],
    )
    .await
    .expect("echo");
    let secs = start.elapsed().as_secs_f64();
    println!(
        "bulk echo, 1 connection, 1 stream: {mib} MiB each way in {secs:.2} s = {:.0} MB/s each way",
        (mib << 20) as f64 / secs / 1e6
    );
}

async fn open_connections(total: usize, concurrency: usize, retry: bool) {
    let settings = QuicSettings {
        enable_retry: retry,
        ..Default::default()
    };
    let srv = server(settings, false).await;
    let connector = Arc::new(
        quic::Connector::new(
            client_params(&srv.cert, QuicSettings::default()),
            DefaultMetrics::default(),
        )
        .expect("connector"),
    );
    let addr = srv.addr;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let connector = connector.clone();
        let n = total / concurrency + usize::from(w < total % concurrency);
        tasks.spawn(async move {
            let mut worst = Duration::ZERO;
            for _ in 0..n {
                let t = Instant::now();
                let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                socket.connect(addr).await.unwrap();
                // An EchoClient with nothing to send closes once established.
                let (app, done) = EchoClient::new(vec![]);
                connector
                    .connect(socket, Some("localhost"), app)
                    .await
                    .expect("handshake");
                let _ = done.await;
                worst = worst.max(t.elapsed());
            }
            worst
        });
    }
    let mut worst = Duration::ZERO;
    while let Some(w) = tasks.join_next().await {
        worst = worst.max(w.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "open {total} connections, {concurrency} at a time, Retry {}: {secs:.2} s ({:.0} handshakes/s, slowest {worst:?})",
        if retry { "on " } else { "off" },
        total as f64 / secs
    );
}

fn main() {
    let mib = tq_e2e::bench_arg("--mib", 256);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        bulk_upload(mib).await;
        bulk_echo(mib / 4).await;
        open_connections(1000, 1, true).await;
        open_connections(1000, 1, false).await;
        open_connections(1000, 50, true).await;
        open_connections(1000, 50, false).await;
    });
}
