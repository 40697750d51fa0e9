//! A real browser as the client: headless Chromium (the README's test
//! command installs it) opens pages served by `tq-host` over HTTP/3, the
//! way the README's *Browsers* section says: the self-signed key trusted by
//! its SPKI hash, QUIC forced for the origin. tq-host has no TCP listener,
//! so a page that loads came over QUIC; its access log says so too.
//! Served: the built-in site, an `http3-app` plugin, and wasi:http
//! components of WASI 0.2 and 0.3, on a dual-stack `[::]` socket (Chromium
//! tries `localhost` as `::1` first).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{plugin_wasm, Logged};

/// The browser binary: `chromium` (Debian) or Google Chrome.
fn browser() -> PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in ["/usr/bin", "/usr/local/bin", "/opt/google/chrome"] {
            let p = Path::new(dir).join(name);
            if p.exists() {
                return p;
            }
        }
    }
    panic!(
        "no Chromium here: the README's test command installs it \
         (apt-get install -y chromium)"
    );
}

/// base64(SHA-256(SubjectPublicKeyInfo)) of the certificate at `pem`: what
/// `--ignore-certificate-errors-spki-list` takes (the README computes it
/// with openssl).
fn spki_hash(pem: &Path) -> String {
    let pem = std::fs::read(pem).expect("read the certificate");
    let cert = boring::x509::X509::from_pem(&pem).expect("a PEM certificate");
    let der = cert
        .public_key()
        .and_then(|k| k.public_key_to_der())
        .expect("its public key");
    boring::base64::encode_block(&boring::sha::sha256(&der))
}

/// Starts `tq-host` on an ephemeral dual-stack port with `extra`; returns
/// it with the port and its self-signed certificate's path.
fn start(extra: &[&str]) -> (Logged, u16, PathBuf) {
    let mut args = vec!["--listen", "[::]:0"];
    args.extend_from_slice(extra);
    let mut server = Logged::start(&args);
    let cert = server.find("naming the self-signed certificate", |l| {
        l.contains("self-signed") && l.contains("cert.pem")
    });
    let cert = cert
        .split(|c: char| c.is_whitespace() || c == '`' || c == ')')
        .find(|w| w.ends_with("cert.pem"))
        .map(PathBuf::from)
        .expect("the certificate's path");
    let addr = server.quic_addr();
    let port = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port");
    (server, port, cert)
}

/// Loads `https://localhost:PORT{path}` in headless Chromium and returns
/// the page's DOM as the browser rendered it.
fn browse(port: u16, cert: &Path, path: &str) -> String {
    // A fresh profile each time: nothing remembered between loads (QUIC
    // hints, broken-alternative-service marks).
    let profile = common::tempfile_dir(&format!("chromium-{port}"));
    let child = Command::new(browser())
        .args([
            "--headless=new",
            // Root in a container: Chromium's own sandbox cannot start.
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!(
            "--ignore-certificate-errors-spki-list={}",
            spki_hash(cert)
        ))
        .arg(format!("--origin-to-force-quic-on=localhost:{port}"))
        .arg("--dump-dom")
        .arg(format!("https://localhost:{port}{path}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start Chromium");
    // Read its output on a thread, so a large page cannot block it on a
    // full pipe while we wait.
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.expect("Chromium's output"),
        Err(_) => {
            // SAFETY: kill(2) on a child we started and have not reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("Chromium did not finish loading {path} within 60 s");
        }
    };
    let _ = std::fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !dom.trim().is_empty(),
        "Chromium rendered nothing for {path}; it said:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// The access-log line of `path`, once the server has logged it.
fn access_line(server: &mut Logged, path: &str) -> String {
    let needle = format!("path=\"{path}\"");
    server.wait_for("logging the browser's request", |l| {
        l.contains("tq_host::access") && l.contains(&needle)
    })
}

#[test]
fn chromium_opens_the_built_in_site_over_http3() {
    let (mut server, port, cert) = start(&[]);
    let dom = browse(port, &cert, "/");
    assert!(dom.contains("This page came over HTTP/3"), "{dom}");
    let line = access_line(&mut server, "/");
    assert!(line.contains("status=200"), "{line}");
    // Dual stack: the browser came as ::1 (or as an IPv4-mapped 127.0.0.1).
    assert!(
        line.contains("peer=[::1]") || line.contains("peer=[::ffff:127.0.0.1]"),
        "{line}"
    );
}

#[test]
fn chromium_opens_pages_from_every_http_plugin_world() {
    for (plugin, says) in [
        ("hello", "hello from a tq-host plugin"),
        ("wasi_hello", "hello from a wasi:http component"),
        ("wasi_p3_hello", "hello from a WASI 0.3 component"),
    ] {
        let wasm = plugin_wasm(plugin);
        let (mut server, port, cert) = start(&["--plugin", wasm.to_str().expect("a UTF-8 path")]);
        let dom = browse(port, &cert, "/");
        assert!(dom.contains(says), "{plugin}: {dom}");
        let line = access_line(&mut server, "/");
        assert!(line.contains("status=200"), "{plugin}: {line}");
    }
}
