//! The QUIC Interop Runner's test cases (quic-interop-runner's
//! `testcases_quic.py`) against tq-host's built-in HTTP/3 site, with an
//! independent client: aioquic (`client.py` here; `scripts/interop-peers.sh`
//! installs it). Each case asserts what the runner checks: every file
//! arrives byte for byte, and the case's own condition (the cipher, a
//! Retry, a resumed session, early data, key updates, the version), with
//! a lossy relay between them for the loss cases. (Migration is tested
//! with quinn in the end-to-end tests; what cannot run here is in the
//! README's interop table.)
//!
//! A test binary of its own: each case starts a Python process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tq_e2e::{H3App, H3TestServer, Impairment, LossyRelay};
use tq_host::builtin::WelcomePage;
use tq_host::http3::Http3Settings;
use tq_host::quic::QuicSettings;

/// What the client reports (see client.py).
#[derive(Debug, serde::Deserialize)]
struct Report {
    #[serde(default)]
    responses: Vec<Response>,
    #[serde(default)]
    version: u32,
    #[serde(default)]
    retries: u32,
    #[serde(default)]
    session_resumed: bool,
    #[serde(default)]
    early_data_accepted: bool,
    #[serde(default)]
    cipher: Option<String>,
    #[serde(default)]
    key_updates: KeyUpdates,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct Response {
    path: String,
    status: Option<u16>,
    length: usize,
    sha256: String,
}

#[derive(Debug, Default, serde::Deserialize)]
struct KeyUpdates {
    client: u32,
    server: u32,
}

fn python() -> PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/toolchains/interop/bin/python");
    assert!(
        p.exists(),
        "aioquic is missing: bash scripts/interop-peers.sh (scripts/test.sh runs it)"
    );
    p
}

/// Runs `client.py CASE` against `addr` for `paths`; the report.
async fn run(case: &str, addr: SocketAddr, cert: &std::path::Path, paths: &[String]) -> Report {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/client.py");
    let out = tokio::process::Command::new(python())
        .arg(script)
        .args([case, &addr.ip().to_string(), &addr.port().to_string()])
        .arg(cert)
        .args(paths)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), out)
        .await
        .unwrap_or_else(|_| panic!("{case}: the client took over 2 minutes"))
        .expect("run the aioquic client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Report = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{case}: no report ({e}); stdout: {stdout}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(report.error.is_none(), "{case}: {:?}", report.error);
    report
}

/// The built-in site's `/bytes/N` is N times `x`.
fn expect_bytes(case: &str, report: &Report, paths: &[String]) {
    assert_eq!(report.responses.len(), paths.len(), "{case}: {report:?}");
    for (r, p) in report.responses.iter().zip(paths) {
        let n: usize = p.trim_start_matches("/bytes/").parse().unwrap();
        let sha: String = tq_e2e::sha256(&vec![b'x'; n])
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            (r.path.as_str(), r.status, r.length, r.sha256.as_str()),
            (p.as_str(), Some(200), n, sha.as_str()),
            "{case}"
        );
    }
    // Version 1 (RFC 9000) on every connection.
    assert_eq!(report.version, 1, "{case}");
}

fn files(sizes: &[usize]) -> Vec<String> {
    sizes.iter().map(|n| format!("/bytes/{n}")).collect()
}

async fn server(settings: QuicSettings) -> H3TestServer {
    H3TestServer::start(
        settings,
        Http3Settings::default(),
        H3App::Handler(Arc::new(WelcomePage)),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_transfer_multiplexing_chacha20_keyupdate_and_http3() {
    let s = server(QuicSettings::default()).await;
    let cert = &s.cert.paths.cert;
    let small = files(&[1024]);
    let r = run("handshake", s.addr, cert, &small).await;
    expect_bytes("handshake", &r, &small);

    // transfer / http3: several files, one of them large, on one connection.
    let several = files(&[1024, 100_000, 5_000_000, 3]);
    let r = run("transfer", s.addr, cert, &several).await;
    expect_bytes("transfer", &r, &several);

    // multiplexing: many small files at once (more than the stream limit).
    let many: Vec<String> = (0..300).map(|i| format!("/bytes/{}", 100 + i)).collect();
    let r = run("multiplexing", s.addr, cert, &many).await;
    expect_bytes("multiplexing", &r, &many);

    let r = run("chacha20", s.addr, cert, &several[..2]).await;
    expect_bytes("chacha20", &r, &several[..2]);
    assert_eq!(r.cipher.as_deref(), Some("CHACHA20_POLY1305_SHA256"));

    // keyupdate: the client updates its keys after the handshake; the
    // server follows (its key updated too) and the transfer completes.
    let r = run("keyupdate", s.addr, cert, &several[..3]).await;
    expect_bytes("keyupdate", &r, &several[..3]);
    assert!(
        r.key_updates.client >= 1 && r.key_updates.server >= 1,
        "{:?}",
        r.key_updates
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_is_sent_when_on_and_not_when_off() {
    for retry in [true, false] {
        let s = server(QuicSettings {
            enable_retry: retry,
            ..QuicSettings::default()
        })
        .await;
        let f = files(&[2000]);
        let r = run("retry", s.addr, &s.cert.paths.cert, &f).await;
        expect_bytes("retry", &r, &f);
        assert_eq!(r.retries, u32::from(retry), "Retry {retry}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumption() {
    let s = server(QuicSettings::default()).await;
    let f = files(&[1000, 2000]);
    let r = run("resumption", s.addr, &s.cert.paths.cert, &f).await;
    expect_bytes("resumption", &r, &f);
    assert!(r.session_resumed, "the second connection was not resumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rtt() {
    let f = files(&[1000, 2000]);
    // Retry off: with Retry on, aioquic's requests sent in 0-RTT are never
    // answered (the handshake completes, then nothing; not diagnosed yet,
    // see the README's interop table).
    let s = server(QuicSettings {
        enable_early_data: true,
        enable_retry: false,
        ..QuicSettings::default()
    })
    .await;
    let r = run("zerortt", s.addr, &s.cert.paths.cert, &f).await;
    expect_bytes("zerortt", &r, &f);
    assert!(r.session_resumed && r.early_data_accepted, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_client_is_answered_in_version_1() {
    // quiche 0.30 speaks only QUIC v1: a client that starts in v2 gets
    // Version Negotiation and goes on in v1 (the runner's v2 case, which
    // wants v2 itself, cannot pass: see the README's interop table).
    let s = server(QuicSettings::default()).await;
    let f = files(&[1000]);
    let r = run("v2", s.addr, &s.cert.paths.cert, &f).await;
    expect_bytes("v2", &r, &f);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_through_loss_and_reordering() {
    let s = server(QuicSettings::default()).await;
    for (case, drop_percent) in [("handshakeloss", 30), ("transferloss", 2)] {
        let relay = LossyRelay::start(
            s.addr,
            Impairment {
                drop_percent,
                reorder_percent: 5,
                seed: drop_percent,
            },
        )
        .await;
        let f = if case == "handshakeloss" {
            files(&[1000])
        } else {
            files(&[2_000_000])
        };
        let r = run("transfer", relay.addr, &s.cert.paths.cert, &f).await;
        expect_bytes(case, &r, &f);
    }
}
